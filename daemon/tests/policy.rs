//! NetworkPolicy end to end: real daemons on three nodes, pods wired through the CNI
//! binary, policies applied with `netctl apply`, and connections between pods on
//! different nodes: a policy takes effect on every node within a second, a relabel
//! revokes an established connection, and deleting the policy opens the pod again.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    cni::{self, Outcome as _},
    daemon::Twilld,
    require_root,
    scripts::{ECHO, PROBE},
};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";
/// How fast a policy change must be enforced on every node.
const CONVERGENCE: Duration = Duration::from_secs(1);

fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

/// From the moment it starts (before the pod has an interface): tries to reach the
/// server over and over, for `seconds`; prints `reached` if any attempt got an echo.
const RACER: &str = "import socket,sys,time\n\
end = time.monotonic() + float(sys.argv[2]); reached = 0; tries = 0\n\
while time.monotonic() < end:\n\
\x20   tries += 1\n\
\x20   try:\n\
\x20       c = socket.create_connection((sys.argv[1], 8080), timeout=0.2)\n\
\x20       c.sendall(b'x\\n'); reached += c.recv(10) == b'x\\n'; c.close()\n\
\x20   except OSError:\n\
\x20       time.sleep(0.001)\n\
print('reached' if reached else 'never', tries, flush=True)\n";

/// A long-lived connection: a line every 50 ms, printing `echo <monotonic>` for each
/// answer, until one takes longer than 0.5 s.
const STREAM: &str = "import socket,sys,time\n\
c = socket.create_connection((sys.argv[1], 8080), timeout=2); c.settimeout(0.5)\n\
print('connected', flush=True)\n\
try:\n\
\x20   while True:\n\
\x20       c.sendall(b'x\\n'); c.recv(10); print('echo', time.monotonic(), flush=True); time.sleep(0.05)\n\
except Exception as e:\n\
\x20   print('stopped', time.monotonic(), e, flush=True)\n";

struct Pod {
    netns: String,
    ip: std::net::Ipv4Addr,
}

impl Pod {
    fn python(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).args(args);
        cmd
    }

    fn spawn(&self, mut cmd: Command) -> Child {
        let ns = NetNs::from_path(&self.netns).unwrap();
        ns.run(move || cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn())
            .unwrap()
            .unwrap()
    }

    /// Whether one connection to `to` gets its line back within `timeout`.
    fn reaches(&self, to: &Pod, timeout: Duration) -> bool {
        let cmd = self.python(
            PROBE,
            &[&to.ip.to_string(), &timeout.as_secs_f64().to_string()],
        );
        let out = self.spawn(cmd).wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).starts_with("ok")
    }
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

fn pod_object(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c}}]}}\n---\n"
    )
}

const ALLOW_CLIENT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: web-from-client}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n";

/// Polls `check` until it holds; returns how long that took.
fn until(what: &str, limit: Duration, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

/// `netctl why` names the rule that allows client -> web and the policy that isolates web
/// from other; it notices a node whose maps were changed behind the daemon's back; the
/// counters show the allowed and denied attempts.
fn explain_and_count(lab: &Lab, web: &Pod, other: &Pod) {
    let why = |from: &str| {
        netctl(
            lab,
            &["why", "--from", from, "--to", "default/web:8080"],
            "",
        )
    };
    let allowed = why("default/client");
    for want in [
        "ALLOWED",
        "rule default/web-from-client ingress[0]: from[0]: pods app=client in namespace default, 8080/TCP",
        "node2 (default/web ingress): maps agree",
    ] {
        assert!(allowed.contains(want), "{want:?} in:\n{allowed}");
    }
    assert!(!allowed.contains("MAPS DIFFER"), "{allowed}");
    let denied = why("default/other");
    eprintln!("{allowed}\n{denied}");
    for want in [
        "DENIED",
        "denied: isolated for ingress by default/web-from-client, and no rule matches",
        "node2 (default/web ingress): maps agree",
    ] {
        assert!(denied.contains(want), "{want:?} in:\n{denied}");
    }

    // By address, and through a Service: the verdict is the backend's, after translation.
    let by_ip = netctl(
        lab,
        &[
            "why",
            "--from",
            &other.ip.to_string(),
            "--to",
            &format!("{}:8080", web.ip),
        ],
        "",
    );
    assert!(
        by_ip.contains("DENIED") && by_ip.contains("default/other"),
        "{by_ip}"
    );
    netctl(
        lab,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: websvc}\n\
         spec: {clusterIP: 10.96.0.80, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    );
    let service = netctl(
        lab,
        &["why", "--from", "default/client", "--to", "10.96.0.80:80"],
        "",
    );
    let translated = format!(
        "through Service default/websvc 10.96.0.80:80, to backend {}:8080",
        web.ip
    );
    for want in [
        translated.as_str(),
        "ALLOWED",
        "rule default/web-from-client ingress[0]",
    ] {
        assert!(service.contains(want), "{want:?} in:\n{service}");
    }

    // Someone opens web's entry on node2 behind the daemon: why says node2 differs (tried
    // again if the daemon's repair came first), and the daemon's next pass repairs it.
    let pins = &lab.nodes()[1].bpffs_dir;
    let key = twill_abi::lb::wire_ip(web.ip.octets());
    let mut dp = twill_bpf::Datapath::load(pins).expect("load node2's programs");
    let tampered = (0..5)
        .map(|_| {
            dp.set_policy_endpoint(key, twill_abi::policy::PolicyEndpoint::default())
                .unwrap();
            why("default/other")
        })
        .find(|w| w.contains("MAPS DIFFER"))
        .expect("why notices the changed entry");
    assert!(
        tampered.contains("node2's entry for default/web says ingress open, should be enforce"),
        "{tampered}"
    );
    until("twilld repairs the entry", Duration::from_secs(3), || {
        why("default/other").contains("node2 (default/web ingress): maps agree")
    });

    // Counted: client's allowed connections under the rule, other's denied attempts.
    let counters = netctl(lab, &["bpf", "policy", "--node", "node2"], "");
    eprintln!("{counters}");
    let rule_line = counters
        .lines()
        .find(|l| l.starts_with("default/web-from-client ingress[0]"))
        .unwrap_or_else(|| panic!("no rule line in:\n{counters}"));
    let allowed: u64 = rule_line
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(allowed >= 1, "{counters}");
    let shown = netctl(lab, &["get", "netpol"], "");
    let row: Vec<&str> = shown
        .lines()
        .find(|l| l.contains("web-from-client"))
        .unwrap()
        .split_whitespace()
        .collect();
    // NAMESPACE NAME POD-SELECTOR TYPES MODE ALLOWED DENIED PODS
    let (row_allowed, row_denied): (u64, u64) = (row[5].parse().unwrap(), row[6].parse().unwrap());
    assert!(row_allowed >= allowed && row_denied >= 1, "{shown}");
}

#[test]
fn a_policy_is_enforced_on_every_node_within_a_second_and_revokes_established_connections() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);
    let mut objects = pod_object("web", "web");
    objects.push_str(&pod_object("client", "client"));
    objects.push_str(&pod_object("other", "other"));
    netctl(&lab, &["apply", "-f", "-"], &objects);
    let web = add_pod(&mut lab, &nodes[1], &daemons[1], "web");
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
    let other = add_pod(&mut lab, &nodes[2], &daemons[2], "other");
    let mut server = web.spawn(web.python(ECHO, &[]));
    let probe = Duration::from_millis(300);
    until("the server answers", Duration::from_secs(10), || {
        client.reaches(&web, probe) && other.reaches(&web, probe)
    });

    // A client on node1 with a connection open before the policy.
    let mut stream = client.spawn(client.python(STREAM, &[&web.ip.to_string()]));
    let mut lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");

    netctl(&lab, &["apply", "-f", "-"], ALLOW_CLIENT);
    let took = until("the policy denies other", CONVERGENCE + probe, || {
        !other.reaches(&web, probe)
    });
    eprintln!("policy enforced after {took:?}");
    assert!(client.reaches(&web, probe), "client is allowed on 8080");
    let shown = netctl(&lab, &["get", "netpol"], "");
    assert!(
        shown.contains("web-from-client") && shown.contains("web"),
        "{shown}"
    );
    explain_and_count(&lab, &web, &other);

    // A pod added on another node, which the policy's peer selects: web's node lets it in
    // within a second of its ADD (its record reaches etcd, node2 recompiles web's table).
    netctl(
        &lab,
        &["apply", "-f", "-"],
        &pod_object("client2", "client"),
    );
    let client2 = add_pod(&mut lab, &nodes[2], &daemons[2], "client2");
    let took = until("the new client is allowed", CONVERGENCE, || {
        client2.reaches(&web, probe)
    });
    eprintln!("a new peer pod allowed after {took:?}");
    // Deleted again: within a second its address is out of web's table on node2 (what
    // `netctl why` checks against node2's maps: the address is no pod now, so denied).
    cni::invoke(
        &sibling("twill"),
        &nodes[2],
        &cni::vars("DEL", "client2", &client2.netns, "eth0"),
        &cni::config("1.1.0", &daemons[2]).to_string(),
    )
    .ok();
    let gone = client2.ip.to_string();
    let took = until(
        "the deleted pod's address is out of web's table",
        CONVERGENCE,
        || {
            let why = netctl(
                &lab,
                &["why", "--from", &gone, "--to", "default/web:8080"],
                "",
            );
            why.contains("DENIED") && why.contains("node2 (default/web ingress): maps agree")
        },
    );
    eprintln!("a deleted peer pod's address removed after {took:?}");

    // The established connection is allowed: still echoing.
    for _ in 0..3 {
        assert!(lines.next().unwrap().unwrap().starts_with("echo"));
    }
    // client loses its label: the next packets of its open connection are dropped.
    let relabelled = Instant::now();
    netctl(&lab, &["apply", "-f", "-"], &pod_object("client", "other"));
    let stopped = lines
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("stopped"))
        .expect("the stream stops");
    let _ = stream.wait();
    let after = relabelled.elapsed();
    assert!(
        after < CONVERGENCE + Duration::from_millis(600),
        "revoked after {after:?} ({stopped})"
    );
    assert!(
        !client.reaches(&web, probe),
        "new connections are denied too"
    );

    // Deleting the policy opens the pod again.
    netctl(&lab, &["delete", "-f", "-"], ALLOW_CLIENT);
    until("the pod is open again", CONVERGENCE + probe, || {
        other.reaches(&web, probe) && client.reaches(&web, probe)
    });

    // No gap at pod start: a pod that a policy isolates, with a process already trying to
    // reach the server before and while ADD wires it, never gets through.
    netctl(
        &lab,
        &["apply", "-f", "-"],
        &format!(
            "{}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: racer-no-egress}}\n\
             spec: {{podSelector: {{matchLabels: {{app: racer}}}}, policyTypes: [Egress]}}\n",
            pod_object("racer", "racer")
        ),
    );
    thread::sleep(CONVERGENCE);
    let netns = lab
        .create_netns("racer")
        .unwrap()
        .path()
        .display()
        .to_string();
    let racer_ns = Pod {
        netns: netns.clone(),
        ip: std::net::Ipv4Addr::UNSPECIFIED,
    };
    let racing = racer_ns.spawn(racer_ns.python(RACER, &[&web.ip.to_string(), "3"]));
    thread::sleep(Duration::from_millis(200));
    // Pods no policy selects, added just before: their programs are attached in the
    // background, one after another, so a racer whose attach were queued behind them
    // would have a wide window. It is not queued: it is isolated.
    let fillers: Vec<String> = (0..8)
        .map(|i| {
            lab.create_netns(&format!("filler{i}"))
                .unwrap()
                .path()
                .display()
                .to_string()
        })
        .collect();
    thread::scope(|s| {
        for (i, netns) in fillers.iter().enumerate() {
            let (node, daemon) = (&nodes[0], &daemons[0]);
            s.spawn(move || {
                let name = format!("filler{i}");
                let mut vars = cni::vars("ADD", &name, netns, "eth0");
                let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
                vars.push(("CNI_ARGS", &args));
                let _ = cni::invoke(
                    &sibling("twill"),
                    node,
                    &vars,
                    &cni::config("1.1.0", daemon).to_string(),
                );
            });
        }
    });
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=racer";
    let racer_ip = cni::add_in(
        &sibling("twill"),
        &nodes[0],
        &daemons[0],
        "racer",
        &netns,
        args,
    );
    let out = racing.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(verdict.starts_with("never"), "racer {racer_ip}: {verdict}");
    // The same pod reaches the server once the policy is gone: the probe could see it.
    netctl(
        &lab,
        &["delete", "-f", "-"],
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: racer-no-egress}\nspec: {podSelector: {}}\n",
    );
    let racer = Pod {
        netns,
        ip: racer_ip,
    };
    until("racer reaches the server", CONVERGENCE + probe, || {
        racer.reaches(&web, probe)
    });
    let _ = server.kill();
    let _ = server.wait();
}

/// A table that does not fit the peer trie (sized small here) is never half-written: the
/// pod it is for is denied, even to a peer a rule allows, and the node's status says which
/// map is full. Removing the policy opens the pod again and clears the problem.
#[test]
fn a_full_policy_map_denies_the_pod_and_says_so() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let config = format!("{CONFIG}[policy]\npeer_entries = 1024\n");
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, &config);
    let mut objects = pod_object("web", "web");
    objects.push_str(&pod_object("client", "client"));
    netctl(&lab, &["apply", "-f", "-"], &objects);
    let web = add_pod(&mut lab, &node, &daemons[0], "web");
    let client = add_pod(&mut lab, &node, &daemons[0], "client");
    let mut server = web.spawn(web.python(ECHO, &[]));
    let probe = Duration::from_millis(300);
    until("the server answers", Duration::from_secs(10), || {
        client.reaches(&web, probe)
    });

    // 10.0.0.0/8 minus 1,100 single addresses: an entry for each hole, over 1,024.
    let except: Vec<String> = (0..1100)
        .map(|i| format!("10.{}.{}.7/32", i / 200, i % 200))
        .collect();
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: big}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  \
         - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}, \
         {{ipBlock: {{cidr: 10.0.0.0/8, except: [{}]}}}}]\n",
        except.join(", ")
    );
    netctl(&lab, &["apply", "-f", "-"], &policy);
    let status = daemons[0].wait_status("reporting the full map", Duration::from_secs(5), |s| {
        s.policy
            .problems
            .iter()
            .any(|p| p.contains("TWILL_POL_PEER is full"))
    });
    eprintln!("{:?}", status.policy.problems);
    assert!(
        !client.reaches(&web, Duration::from_millis(500)),
        "a pod whose table did not fit is denied, even to an allowed peer"
    );
    let why = netctl(
        &lab,
        &[
            "why",
            "--from",
            "default/client",
            "--to",
            "default/web:8080",
        ],
        "",
    );
    assert!(why.contains("MAPS DIFFER"), "{why}");
    let out = Command::new(sibling("netctl"))
        .args(["lab", "status", lab.name()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("TWILL_POL_PEER is full"), "{shown}");

    netctl(&lab, &["delete", "-f", "-"], &policy);
    until("the pod is open again", CONVERGENCE + probe, || {
        client.reaches(&web, probe)
    });
    daemons[0].wait_status("clear of problems", Duration::from_secs(5), |s| {
        s.policy.problems.is_empty()
    });
    let _ = server.kill();
    let _ = server.wait();
}

//! Upgrading twilld over a running node: a TCP stream through a ClusterIP Service keeps
//! flowing while the client node's daemon is restarted with the same build and then with
//! a build whose conntrack layout changed (the entries are migrated into new maps on the
//! kernel, the programs swapped onto them); a policy map whose pinned sizes this build
//! cannot read is reset, says so, and the pod it isolates stays isolated throughout.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    cni,
    daemon::Twilld,
    require_root,
    scripts::{ECHO, PROBE, STREAMER},
};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";

fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

/// Reads from argv[1]:80 for argv[2] seconds; prints its local port, then (at the end)
/// the bytes, the longest silence and any error.
const READER: &str = "import socket,sys,json,time\n\
c = socket.create_connection((sys.argv[1], 80), timeout=5)\n\
print(c.getsockname()[1], flush=True)\n\
end = time.monotonic() + float(sys.argv[2]); last = time.monotonic(); gap = 0.0; n = 0; err = None\n\
try:\n\
\x20   while time.monotonic() < end:\n\
\x20       b = c.recv(65536)\n\
\x20       if not b:\n\
\x20           err = 'closed by the peer'; break\n\
\x20       now = time.monotonic(); gap = max(gap, now - last); last = now; n += len(b)\n\
except OSError as e:\n\
\x20   err = repr(e)\n\
print(json.dumps({'bytes': n, 'max_gap': gap, 'error': err}))\n";

/// Tries to reach argv[1]:8080 over and over for argv[2] seconds; prints `reached` if any
/// attempt got its line back, else `never`, and the number of attempts.
const RACER: &str = "import socket,sys,time\n\
end = time.monotonic() + float(sys.argv[2]); reached = 0; tries = 0\n\
while time.monotonic() < end:\n\
\x20   tries += 1\n\
\x20   try:\n\
\x20       c = socket.create_connection((sys.argv[1], 8080), timeout=0.2)\n\
\x20       c.sendall(b'x\\n'); reached += c.recv(10) == b'x\\n'; c.close()\n\
\x20   except OSError:\n\
\x20       time.sleep(0.01)\n\
print('reached' if reached else 'never', tries, flush=True)\n";

struct Pod {
    netns: String,
    ip: std::net::Ipv4Addr,
}

impl Pod {
    fn python(&self, script: &str, args: &[&str]) -> Child {
        let ns = NetNs::from_path(&self.netns).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ns.run(move || cmd.spawn()).unwrap().unwrap()
    }

    fn reaches(&self, to: &Pod) -> bool {
        let out = self
            .python(PROBE, &[&to.ip.to_string(), "1"])
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).starts_with("ok")
    }
}

fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

fn pod_object(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\n\
         spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n---\n"
    )
}

/// Polls `check` until it holds, for at most `limit`.
fn until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// What the daemon logged since `from` bytes into its log.
fn log_since(daemon: &Twilld, from: usize) -> String {
    daemon.log_text().get(from..).unwrap_or_default().to_owned()
}

/// Starts the daemons of a 2-node lab, each ready.
fn daemons(lab: &Lab) -> Vec<Twilld> {
    let daemons: Vec<Twilld> = lab
        .nodes()
        .iter()
        .map(|n| Twilld::start(Path::new(TWILLD), lab, n, CONFIG, &[]))
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    daemons
}

#[test]
fn a_stream_through_a_cluster_ip_survives_a_restart_and_a_conntrack_layout_migration() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let mut daemons = daemons(&lab);

    // The version: `--version`, the daemon's status and the node record agree.
    let out = Command::new(TWILLD).arg("--version").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = daemons[0].status().version.expect("status has the version");
    assert_eq!(printed, format!("twilld {version}"));
    assert!(
        version.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (")),
        "{version}"
    );
    let wide = netctl(&lab, &["get", "nodes", "-o", "wide"], "");
    assert!(wide.lines().next().unwrap().contains("VERSION"), "{wide}");
    let row = wide.lines().find(|l| l.starts_with("node1")).unwrap();
    assert!(row.contains(&version), "{wide}");

    let backend = add_pod(&mut lab, &nodes[1], &daemons[1], "web-1");
    let mut server = backend.python(STREAMER, &[]);
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
    netctl(
        &lab,
        &["apply", "-f", "-"],
        &format!(
            "{}apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
             clusterIP: 10.96.0.90\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n",
            pod_object("web-1", "web")
        ),
    );
    let vip = "10.96.0.90";
    let probe = || {
        client
            .python("import socket,sys\nc = socket.create_connection((sys.argv[1], 80), timeout=1)\nassert c.recv(1024)\n", &[vip])
            .wait()
            .unwrap()
            .success()
    };
    until("the ClusterIP answers", Duration::from_secs(10), probe);

    // A 14-second stream from the backend on node2 to the client on node1, whose node
    // translates it (its conntrack and reverse-NAT entries are on node1).
    let mut reader = client.python(READER, &[vip, "14"]);
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(reader.stdout.as_mut().unwrap()),
        &mut first_line,
    )
    .unwrap();
    let client_port = first_line.trim().to_owned();
    let flow = format!("{}:{client_port}", client.ip);
    thread::sleep(Duration::from_secs(1));

    // (a) The same build again (SIGKILL, no cleanup): every map is reused as it is.
    let mark = daemons[0].log_text().len();
    daemons[0].restart();
    daemons[0].wait_status("ready after a restart", Duration::from_secs(10), |s| {
        s.not_ready.is_none()
    });
    thread::sleep(Duration::from_secs(2));
    let log = log_since(&daemons[0], mark);
    assert!(
        !log.contains("migrated") && !log.contains("reset to empty"),
        "a restart of the same build reuses every map:\n{log}"
    );

    // (b) A build whose conntrack layout changed: new maps, entries carried through the
    // conversion, the pinned links moved to programs using the new maps.
    let mark = daemons[0].log_text().len();
    daemons[0].restart_with(&["--test-layout-bump", "TWILL_CT,TWILL_REVNAT"]);
    daemons[0].wait_status("ready after the upgrade", Duration::from_secs(10), |s| {
        s.not_ready.is_none()
    });
    until("the migration ends", Duration::from_secs(10), || {
        log_since(&daemons[0], mark).contains("migration done")
    });
    let log = log_since(&daemons[0], mark);
    for map in ["TWILL_CT", "TWILL_REVNAT"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{map}: migrated (layout version 2 -> 3)")))
            .unwrap_or_else(|| panic!("{map} migrated:\n{log}"));
        let carried: u64 = line
            .split(": ")
            .last()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        eprintln!("{line}");
        assert!(carried >= 1, "{line}");
    }
    let conntrack = netctl(&lab, &["bpf", "conntrack", "--node", "node1"], "");
    let row = conntrack
        .lines()
        .find(|l| l.starts_with(&flow))
        .unwrap_or_else(|| panic!("the stream's flow {flow} in the new map:\n{conntrack}"));
    eprintln!("after the migration: {row}");
    assert!(
        row.contains("10.96.0.90:80") && row.contains(&backend.ip.to_string()),
        "{row}"
    );
    assert!(probe(), "a new connection after the upgrade");

    let out = reader.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("stream across both restarts: {result}");
    assert_eq!(result["error"], serde_json::Value::Null, "{result}");
    // 14 s at ~100 KiB/s less what the first line took: most of it, and no silence of a
    // second (a lost translation would stall it into retransmissions or reset it).
    assert!(result["bytes"].as_u64().unwrap() > 600 * 1024, "{result}");
    assert!(result["max_gap"].as_f64().unwrap() < 1.0, "{result}");
}

const ALLOW_CLIENT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: web-from-client}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n";

#[test]
fn a_policy_map_this_build_cannot_read_is_reset_and_the_pod_stays_isolated() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let mut daemons = daemons(&lab);
    let web = add_pod(&mut lab, &nodes[0], &daemons[0], "web");
    let mut server = web.python(ECHO, &[]);
    let client = add_pod(&mut lab, &nodes[1], &daemons[1], "client");
    let other = add_pod(&mut lab, &nodes[1], &daemons[1], "other");
    let objects = format!(
        "{}{}{}{ALLOW_CLIENT}",
        pod_object("web", "web"),
        pod_object("client", "client"),
        pod_object("other", "other")
    );
    netctl(&lab, &["apply", "-f", "-"], &objects);
    until("the policy holds", Duration::from_secs(10), || {
        client.reaches(&web) && !other.reaches(&web)
    });

    // node1's daemon stops; its pinned endpoint map is replaced by one of other sizes, as
    // a build with another layout and no record of it would have left it. The programs
    // attached keep the map they were loaded with.
    daemons[0].kill();
    let pin = nodes[0].bpffs_dir.join(twill_abi::maps::POLICY_ENDPOINTS);
    std::fs::remove_file(&pin).unwrap();
    let foreign = aya::maps::HashMap::<aya::maps::MapData, u32, [u8; 8]>::create(64, 0)
        .expect("create a map");
    // Pinning consumes (and closes) our handle; the pin keeps the map.
    foreign
        .pin(&pin)
        .expect("pin it in the endpoint map's place");

    // From before the start until well after: `other` never gets through.
    let racer = other.python(RACER, &[&web.ip.to_string(), "8"]);
    let mark = daemons[0].log_text().len();
    daemons[0].restart();
    daemons[0].wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    until(
        "the programs are taken over",
        Duration::from_secs(10),
        || log_since(&daemons[0], mark).contains("policy maps refilled"),
    );
    let log = log_since(&daemons[0], mark);
    let reset = log
        .lines()
        .find(|l| l.contains("TWILL_POL_EP: reset to empty"))
        .unwrap_or_else(|| panic!("the reset is logged:\n{log}"));
    assert!(
        reset.contains("ERROR")
            && reset.contains("its sizes (4/8 bytes) disagree with layout version 1 (4/32)"),
        "{reset}"
    );
    eprintln!("{reset}");
    // The programs of this run were attached only after the first policy pass (the
    // daemon waits for it under the dataplane's lock); until then the earlier run's kept
    // enforcing, and `other` never got through (below).
    assert!(log.contains("policy maps start empty"), "{log}");
    until("client reaches web again", Duration::from_secs(5), || {
        client.reaches(&web)
    });
    assert!(!other.reaches(&web), "other is still denied");

    let out = racer.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout);
    eprintln!("other's attempts across the restart: {verdict}");
    assert!(verdict.starts_with("never"), "other got through: {verdict}");
    let _ = server.kill();
    let _ = server.wait();
}

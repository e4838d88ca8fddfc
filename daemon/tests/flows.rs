//! Flow records end to end: real daemons on two nodes, pods wired through the CNI binary,
//! a Service, a Service without backends and a NetworkPolicy applied with `netctl apply`,
//! and `netctl monitor` finding each kind of record with its names: a connection through
//! a ClusterIP (Service and backend pod), a refused connection, a malformed packet (the
//! pod named by its interface), a policy drop (the isolating policy) and an allowed one
//! (the rule); filters (OR within a flag, AND across, `--not`), `-f`, `--top`. Then a
//! ring of one page flooded in per-packet mode: the loss is counted, said by `netctl
//! monitor` and in `/metrics`, and the JSON lines file is rotated. Last, three nodes
//! serving their records over TCP with a token: `netctl monitor --node node2` and
//! `--all-nodes` from node1, as on a real cluster, and a wrong token refused.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use twill_api::flow::FlowEvent;
use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld, require_root, scripts::ECHO};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";

fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

/// Connects to `argv[1]:argv[2]`, sends a line and reads it back; prints `ok`, or the
/// error's class and how long it took.
const CONNECT: &str = "import socket,sys,time\n\
t = time.monotonic()\n\
try:\n\
\x20   c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n\
\x20   c.sendall(b'x\\n'); assert c.recv(10) == b'x\\n'; print('ok')\n\
except Exception as e:\n\
\x20   print('%s %.3f' % (e.__class__.__name__, time.monotonic() - t))\n";

/// One IPv4 packet to `argv[1]` that says TCP and carries 2 bytes of it: too short for
/// its ports, which the pod program drops as malformed.
const MALFORMED: &str = "import socket,sys\n\
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
dst = socket.inet_aton(sys.argv[1])\n\
header = bytes([0x45, 0, 0, 22, 0, 1, 0, 0, 64, 6, 0, 0, 0, 0, 0, 0]) + dst\n\
s.sendto(header + b'\\x9c\\x40', (sys.argv[1], 0))\n\
print('sent')\n";

struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

impl Pod {
    fn python(&self, script: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).args(args);
        let ns = NetNs::from_path(&self.netns).unwrap();
        let out = ns.run(move || cmd.output()).unwrap().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn connect(&self, ip: &str, port: u16) -> String {
        self.python(CONNECT, &[ip, &port.to_string()])
    }
}

fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

fn pod_object(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c}}]}}\n---\n"
    )
}

const OBJECTS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: websvc}\n\
spec: {clusterIP: 10.96.0.80, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: empty}\n\
spec: {clusterIP: 10.96.0.81, selector: {app: nobody}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n";

/// The records `netctl monitor -o json` prints with `args`.
fn monitor(lab: &Lab, args: &[&str]) -> Vec<FlowEvent> {
    let mut all = vec!["monitor", "-o", "json"];
    all.extend_from_slice(args);
    netctl(lab, &all, "")
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls `netctl monitor` with `args` until a record satisfies `check`.
fn find(lab: &Lab, what: &str, args: &[&str], check: impl Fn(&FlowEvent) -> bool) -> FlowEvent {
    let start = Instant::now();
    loop {
        let records = monitor(lab, args);
        if let Some(r) = records.iter().find(|r| check(r)) {
            eprintln!("{what}: {}", serde_json::to_string(r).unwrap());
            return r.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: no such record in {args:?}:\n{}",
            records
                .iter()
                .map(|r| serde_json::to_string(r).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn is_pod(end: &twill_api::flow::FlowEndpoint, name: &str) -> bool {
    end.namespace.as_deref() == Some("default") && end.pod.as_deref() == Some(name)
}

#[test]
fn monitor_finds_each_kind_of_record_with_its_names_and_filters_them() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);
    let mut objects = pod_object("web", "web");
    objects.push_str(&pod_object("client", "client"));
    objects.push_str(&pod_object("other", "other"));
    objects.push_str(OBJECTS);
    netctl(&lab, &["apply", "-f", "-"], &objects);
    let web = add_pod(&mut lab, &nodes[1], &daemons[1], "web");
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
    let other = add_pod(&mut lab, &nodes[0], &daemons[0], "other");
    let web_ns = NetNs::from_path(&web.netns).unwrap();
    let mut server = web_ns
        .run(|| {
            Command::new("python3")
                .args(["-c", ECHO])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .unwrap()
        .unwrap();
    let web_ip = web.ip.to_string();
    until(
        "the Service answers the client",
        Duration::from_secs(10),
        || client.connect("10.96.0.80", 80) == "ok",
    );
    until("the policy denies other", Duration::from_secs(5), || {
        other.connect(&web_ip, 8080) != "ok"
    });

    // `-f` from now on: the next connection through the Service comes out of it.
    let mut follow = Command::new(sibling("netctl"))
        .args([
            "monitor",
            "-f",
            "-o",
            "json",
            "--node",
            "node1",
            "--service",
            "default/websvc",
            "--lab",
        ])
        .arg(lab.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run netctl monitor -f");
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    thread::sleep(Duration::from_millis(500));
    assert_eq!(client.connect("10.96.0.80", 80), "ok");
    let followed: FlowEvent = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(10))
            .expect("monitor -f prints the new connection"),
    )
    .unwrap();
    assert!(
        is_pod(&followed.source, "client") && followed.kind == "new",
        "{followed:?}"
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // Through the ClusterIP: the Service, the backend pod on node2, forwarded.
    let translated = find(
        &lab,
        "the ClusterIP connection",
        &["--node", "node1", "--service", "default/websvc"],
        |r| is_pod(&r.source, "client"),
    );
    // Its reason is the program's last step (sent straight to the overlay device:
    // `pod-redirected`); the translation shows in `service` and `backend`.
    assert_eq!(
        (translated.kind.as_str(), translated.verdict.as_str()),
        ("new", "forwarded")
    );
    assert_eq!(
        (translated.program.as_str(), translated.direction.as_str()),
        ("twill_from_pod", "from-pod")
    );
    let service = translated.service.as_ref().unwrap();
    assert_eq!(
        (service.name.as_str(), service.ip, service.port),
        ("websvc", Some("10.96.0.80".parse().unwrap()), 80)
    );
    let backend = translated.backend.as_ref().unwrap();
    assert!(is_pod(backend, "web"), "{backend:?}");
    assert_eq!(
        (backend.ip, backend.port, backend.node.as_deref()),
        (Some(web.ip), Some(8080), Some("node2"))
    );
    assert_eq!(translated.source.labels["app"], "client");
    assert_eq!(translated.source.node.as_deref(), Some("node1"));
    assert_eq!(translated.reply, Some(false));
    assert_eq!(translated.policy.egress.as_ref().unwrap().verdict, "open");
    // The same connection on web's node: allowed by the policy's rule.
    let allowed = find(
        &lab,
        "the allowed connection on node2",
        &["--node", "node2", "--to", "default/web"],
        |r| is_pod(&r.source, "client") && r.kind == "new",
    );
    let ingress = allowed.policy.ingress.as_ref().unwrap();
    assert_eq!(
        (
            ingress.verdict.as_str(),
            ingress.policy.as_deref(),
            ingress.rule
        ),
        ("allowed", Some("default/web-from-client"), Some(0))
    );
    assert_eq!(allowed.program, "twill_from_overlay");

    // A Service without backends: refused.
    let said = client.connect("10.96.0.81", 80);
    assert!(
        !said.starts_with("ok") && !said.starts_with("TimeoutError"),
        "{said}"
    );
    let refused = find(
        &lab,
        "the refused connection",
        &["--node", "node1", "--service", "default/empty"],
        |r| is_pod(&r.source, "client"),
    );
    assert_eq!(
        (
            refused.kind.as_str(),
            refused.verdict.as_str(),
            refused.reason.as_str()
        ),
        ("refused", "refused", "no-backend")
    );
    assert!(refused.backend.is_none());

    // A malformed packet: no addresses to read, but the interface is the client's.
    assert_eq!(client.python(MALFORMED, &[&web_ip]), "sent");
    let malformed = find(
        &lab,
        "the malformed packet",
        &["--node", "node1", "--reason", "drop-malformed"],
        |_| true,
    );
    assert_eq!(
        (malformed.kind.as_str(), malformed.verdict.as_str()),
        ("drop", "dropped")
    );
    assert!(is_pod(&malformed.source, "client"), "{malformed:?}");
    assert_eq!(
        (malformed.source.ip, malformed.protocol.as_deref()),
        (None, None)
    );
    assert!(
        malformed.interface.starts_with("tw"),
        "{}",
        malformed.interface
    );

    // A NetworkPolicy drop on web's node, with the policy isolating web.
    assert_ne!(other.connect(&web_ip, 8080), "ok");
    let denied = find(
        &lab,
        "the policy drop",
        &["--node", "node2", "--reason", "drop-policy-denied"],
        |r| is_pod(&r.source, "other"),
    );
    assert!(is_pod(&denied.destination, "web"), "{denied:?}");
    assert_eq!(denied.kind, "drop");
    let ingress = denied.policy.ingress.as_ref().unwrap();
    assert_eq!(ingress.verdict, "denied");
    assert_eq!(ingress.policy.as_deref(), Some("default/web-from-client"));
    assert_eq!(ingress.isolated_by, ["default/web-from-client"]);

    // Filters: OR within a flag, AND across flags, --not.
    let either = monitor(
        &lab,
        &[
            "--node",
            "node1",
            "--reason",
            "no-backend",
            "--reason",
            "drop-malformed",
        ],
    );
    assert!(
        either.iter().any(|r| r.reason == "no-backend")
            && either.iter().any(|r| r.reason == "drop-malformed")
            && either
                .iter()
                .all(|r| r.reason == "no-backend" || r.reason == "drop-malformed"),
        "{either:?}"
    );
    let both = monitor(
        &lab,
        &[
            "--node",
            "node1",
            "--from",
            "default/client",
            "--verdict",
            "forwarded",
        ],
    );
    assert!(!both.is_empty());
    assert!(
        both.iter()
            .all(|r| is_pod(&r.source, "client") && r.verdict == "forwarded"),
        "{both:?}"
    );
    let not = monitor(
        &lab,
        &[
            "--node",
            "node1",
            "--not",
            "--reason",
            "service-translated",
            "--from",
            "default/client",
        ],
    );
    assert!(not.iter().any(|r| r.reason == "no-backend"), "{not:?}");
    assert!(
        not.iter()
            .all(|r| r.reason != "service-translated" && is_pod(&r.source, "client")),
        "{not:?}"
    );
    let by_policy = monitor(
        &lab,
        &["--all-nodes", "--policy", "default/web-from-client"],
    );
    assert!(by_policy.iter().any(|r| r.verdict == "dropped"));
    assert!(by_policy.iter().any(|r| r.verdict == "forwarded"));
    assert!(by_policy.iter().all(|r| r.node == "node2"), "{by_policy:?}");
    let last = monitor(&lab, &["--node", "node1", "--last", "2"]);
    assert_eq!(last.len(), 2);
    assert!(monitor(&lab, &["--node", "node1", "--since", "1h"]).len() > 2);

    // The human line and the summary.
    let lines = netctl(
        &lab,
        &["monitor", "--node", "node1", "--service", "default/websvc"],
        "",
    );
    assert!(
        lines.contains("default/client(")
            && lines.contains("-> svc/default/websvc(10.96.0.80:80) -> default/web("),
        "{lines}"
    );
    let top = netctl(&lab, &["monitor", "--all-nodes", "--top"], "");
    eprintln!("{top}");
    for want in [
        "NOT FORWARDED BY REASON",
        "drop-malformed",
        "no-backend",
        "drop-policy-denied",
        "TOP TALKERS",
    ] {
        assert!(top.contains(want), "{want:?} in:\n{top}");
    }

    // STATUS: records read, none lost, no problems.
    let status = daemons[0].status().flows;
    assert_eq!(status.mode, "connections");
    assert!(status.read >= 4 && status.kept == status.read, "{status:?}");
    assert_eq!((status.lost, status.problems.len()), (0, 0), "{status:?}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_full_ring_is_counted_and_reported_and_the_file_rotates() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let dir = std::env::temp_dir().join(format!("twill-flows-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("flows.jsonl");
    let config = format!(
        "{CONFIG}[flows]\nmode = \"packets\"\nring_bytes = 4096\nkeep = 100\nfile = \"{}\"\n\
         file_max_bytes = 65536\n[metrics]\nlisten = \"{}:9962\"\n",
        file.display(),
        node.plan.underlay_ip
    );
    let daemon = Twilld::start(Path::new(TWILLD), &lab, &node, &config, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    let a = add_pod(&mut lab, &node, &daemon, "a");
    let b = add_pod(&mut lab, &node, &daemon, "b");

    // A flood from a to b: each packet a record, far more than one page holds.
    let to = (b.ip, 9);
    let sent = NetNs::from_path(&a.netns)
        .unwrap()
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut sent = 0u32;
            for _ in 0..100_000 {
                sent += u32::from(socket.send_to(b"flood", to).is_ok());
            }
            sent
        })
        .unwrap();
    assert!(sent > 50_000, "sent {sent}");
    let status = daemon.wait_status("lost counted", Duration::from_secs(5), |s| s.flows.lost > 0);
    eprintln!("sent {sent}: {:?}", status.flows);
    assert!(
        status.flows.read > 0 && status.flows.kept == 100,
        "{:?}",
        status.flows
    );
    let said = netctl(&lab, &["monitor", "--node", "node1", "--last", "1"], "");
    assert!(said.contains("flow record(s) lost"), "{said}");
    // Prometheus sees the same loss (the daemon reads the count every second, so a
    // scrape may be a little ahead of the status above, never behind it), and the
    // records pushed out of the daemon's 100.
    let metrics = scrape(&node, SocketAddr::new(node.plan.underlay_ip.into(), 9962));
    let lost = sample(&metrics, "twill_flow_records_lost_total");
    assert!(
        lost >= status.flows.lost as f64,
        "lost {lost}: {:?}",
        status.flows
    );
    assert!(
        sample(&metrics, "twill_flow_records_read_total") >= status.flows.read as f64,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "twill_flow_records_evicted_total") > 0.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "twill_flow_records_kept"), 100.0);

    // The file holds the newest records, the rotated one those before; neither is past
    // the limit; every line is a record.
    let rotated = dir.join("flows.jsonl.1");
    for path in [&file, &rotated] {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.len() <= 65536,
            "{}: {} bytes",
            path.display(),
            text.len()
        );
        for l in text.lines() {
            let e: FlowEvent = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(e.node, "node1");
        }
    }
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `GET /metrics` from inside `host`'s namespace: the body.
fn scrape(host: &Host, to: SocketAddr) -> String {
    let raw = host
        .run(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("GET http://{to}/metrics: {e}"));
    let (_, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {raw}"));
    body.to_owned()
}

/// The value of the series named exactly `series` (with its labels, if any).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Runs netctl inside `host`'s namespace as an operator on that node of a real cluster
/// would: etcd given, no lab. Its exit status, stdout and stderr.
fn netctl_on(host: &Host, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(sibling("netctl"));
    cmd.args(args);
    let out = host
        .run(move || cmd.output())
        .expect("enter the namespace")
        .expect("run netctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn other_nodes_serve_their_records_over_tcp_to_the_token_only() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let dir = lab.manifest().state_dir.clone();
    let token = dir.join("flows.token");
    std::fs::write(&token, "5e1f0c2a9b7d4e3f8a6c1b0d2e4f6a8c\n").unwrap();
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "00000000000000000000000000000000\n").unwrap();
    let config = format!(
        "{CONFIG}[flows]\nlisten = \"0.0.0.0:9963\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, &config);
    netctl(
        &lab,
        &["apply", "-f", "-"],
        &format!("{}{}", pod_object("a", "a"), pod_object("b", "b")),
    );
    let a = add_pod(&mut lab, &nodes[1], &daemons[1], "a");
    let b = add_pod(&mut lab, &nodes[1], &daemons[1], "b");

    // A UDP flow between two pods of node2: one record, on node2 only.
    let to = (b.ip, 9);
    NetNs::from_path(&a.netns)
        .unwrap()
        .run(move || {
            UdpSocket::bind("0.0.0.0:0")
                .unwrap()
                .send_to(b"hello", to)
                .unwrap()
        })
        .unwrap();
    let etcd = lab.etcd_endpoint();
    let token_arg = token.display().to_string();
    let on_node1 = |extra: &[&str], token: &str| {
        let mut args = vec![
            "monitor",
            "-o",
            "json",
            "--etcd-endpoints",
            &etcd,
            "--token-file",
            token,
        ];
        args.extend_from_slice(extra);
        netctl_on(&nodes[0], &args)
    };
    let records = |stdout: &str| -> Vec<FlowEvent> {
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let is_flow = |r: &FlowEvent| {
        r.node == "node2"
            && is_pod(&r.source, "a")
            && is_pod(&r.destination, "b")
            && r.protocol.as_deref() == Some("UDP")
    };
    let start = Instant::now();
    let found = loop {
        let (ok, stdout, stderr) = on_node1(&["--node", "node2"], &token_arg);
        assert!(ok, "netctl monitor --node node2 from node1: {stderr}");
        let got = records(&stdout);
        if let Some(r) = got.iter().find(|r| is_flow(r)) {
            break r.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no record of a -> b from node2 over TCP:\n{stdout}{stderr}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (found.kind.as_str(), found.verdict.as_str()),
        ("new", "forwarded")
    );

    // Every node: the node records say where each one listens; node2's record is there,
    // merged by time with the others' (none here but the pods' own traffic, if any).
    let (ok, stdout, stderr) = on_node1(&["--all-nodes"], &token_arg);
    assert!(ok, "netctl monitor --all-nodes from node1: {stderr}");
    let all = records(&stdout);
    assert!(all.iter().any(is_flow), "{stdout}{stderr}");
    assert!(
        all.windows(2).all(|w| w[0].time <= w[1].time),
        "not in time order:\n{stdout}"
    );
    assert!(!stderr.contains("left out"), "{stderr}");

    // A wrong token: refused, and said so.
    let (ok, stdout, stderr) = on_node1(&["--node", "node2"], &wrong.display().to_string());
    assert!(!ok, "a wrong token was served: {stdout}");
    assert!(stderr.contains("node2: wrong flow API token"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(daemons[1].log_text().contains("wrong token"));

    // With the right token, the listener still serves flow requests only.
    let listen = SocketAddr::new(nodes[1].plan.underlay_ip.into(), 9963);
    let token_text = std::fs::read_to_string(&token).unwrap();
    let answer = nodes[0]
        .run(move || {
            twill_api::remote::call_tcp(
                listen,
                token_text.trim(),
                &twill_api::Request::Status,
                Duration::from_secs(5),
            )
        })
        .unwrap()
        .unwrap();
    match answer {
        twill_api::Response::Error { kind, message } => {
            assert_eq!(kind, twill_api::ErrorKind::BadRequest);
            assert!(message.contains("only flow requests"), "{message}");
        }
        other => panic!("STATUS over TCP answered {other:?}"),
    }
}

//! ClusterIP load balancing end to end: real pods on three nodes, a Service applied with
//! `netctl apply`, and connections from a client pod to the ClusterIP, balanced by the
//! eBPF programs the CNI binary had attached.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    cni::{self, Outcome as _},
    daemon::Twilld,
    require_root,
    scripts::STREAMER,
};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";

/// A binary built next to twilld by the same `cargo test`.
fn sibling(name: &str) -> PathBuf {
    let p = Path::new(TWILLD).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo test` at the workspace root",
        p.display()
    );
    p
}

/// Replies to every TCP connection on 8080 and every UDP datagram on 5353 with
/// `<name> <peer address>`.
const SERVER: &str = "import socket,sys,threading\n\
def udp():\n\
\x20   u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 5353))\n\
\x20   while True:\n\
\x20       d, a = u.recvfrom(200); u.sendto(('%s %s' % (sys.argv[1], a[0])).encode(), a)\n\
threading.Thread(target=udp, daemon=True).start()\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080)); s.listen(256)\n\
while True:\n\
\x20   c, a = s.accept()\n\
\x20   c.sendall(('%s %s\\n' % (sys.argv[1], a[0])).encode()); c.close()\n";

/// Connects N times to host:port, prints {name: count} and the peer addresses seen.
const CLIENT: &str = "import socket,sys,json,collections,time\n\
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n\
counts = collections.Counter(); peers = set(); failures = 0\n\
for _ in range(n):\n\
\x20   try:\n\
\x20       c = socket.create_connection((host, port), timeout=2)\n\
\x20       name, peer = c.recv(200).decode().split()\n\
\x20       c.close(); counts[name] += 1; peers.add(peer)\n\
\x20   except OSError:\n\
\x20       failures += 1\n\
print(json.dumps({'counts': counts, 'peers': sorted(peers), 'failures': failures}))\n";

/// Sends N datagrams to host:port from one unconnected socket; prints {name: count}, the
/// addresses the replies came from, and how many got none.
const UDP_CLIENT: &str = "import socket,sys,json,collections\n\
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n\
counts = collections.Counter(); sources = set(); failures = 0\n\
for _ in range(n):\n\
\x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)\n\
\x20   try:\n\
\x20       u.sendto(b'hi', (host, port)); d, a = u.recvfrom(200)\n\
\x20       counts[d.decode().split()[0]] += 1; sources.add(a[0])\n\
\x20   except OSError:\n\
\x20       failures += 1\n\
\x20   u.close()\n\
print(json.dumps({'counts': counts, 'sources': sorted(sources), 'failures': failures}))\n";

/// Connects 10 times to host:port (argv 3: tcp, or udp for a connected UDP socket that
/// sends and waits for the answer) and prints the peers `getpeername` gave.
const PEER_CLIENT: &str = "import socket,sys,json\n\
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n\
peers = set()\n\
for _ in range(10):\n\
\x20   if proto == 'tcp':\n\
\x20       c = socket.create_connection((host, port), timeout=2); c.recv(200)\n\
\x20   else:\n\
\x20       c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)\n\
\x20       c.connect((host, port)); c.send(b'hi'); c.recv(200)\n\
\x20   peers.add('%s:%d' % c.getpeername()); c.close()\n\
print(json.dumps({'peers': sorted(peers)}))\n";

/// Runs python3 `script` on `host` as one of its host processes: in its network
/// namespace and cgroup (joined before the script starts).
fn host_python(host: &Host, script: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = host.spawn(cmd).unwrap().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

/// The ClusterIP `netctl get services` shows for Service `name`.
fn cluster_ip(lab: &Lab, name: &str) -> String {
    let services: serde_json::Value =
        serde_json::from_str(&netctl(lab, &["get", "services", "-A", "-o", "json"], "")).unwrap();
    services["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .and_then(|s| s["spec"]["clusterIP"].as_str())
        .unwrap_or_else(|| panic!("no ClusterIP for {name}: {services}"))
        .to_owned()
}

/// Runs python3 `script` in the pod's network namespace; its JSON output.
fn pod_python(pod: &Pod, script: &str, args: &[&str]) -> serde_json::Value {
    let ns = NetNs::from_path(&pod.netns).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    let out = ns.run(move || cmd.output()).unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn connect_many(client: &Pod, vip: &str, n: u32) -> serde_json::Value {
    connect_port(client, vip, 80, n)
}

fn connect_port(client: &Pod, vip: &str, port: u16, n: u32) -> serde_json::Value {
    pod_python(client, CLIENT, &[vip, &port.to_string(), &n.to_string()])
}

fn backend_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\n\
         spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n---\n"
    )
}

#[test]
fn connections_to_a_cluster_ip_spread_over_backends_on_every_node() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);

    // A backend on each node, serving its name; a client on node1.
    let mut servers = Vec::new();
    let mut backend_pods = Vec::new();
    let mut yaml = String::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("web-{}", i + 1);
        let pod = add_pod(&mut lab, node, &daemons[i], &name);
        backend_pods.push(Pod {
            netns: pod.netns.clone(),
            ip: pod.ip,
        });
        let ns = NetNs::from_path(&pod.netns).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SERVER, &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        servers.push(ns.run(move || cmd.spawn()).unwrap().unwrap());
        yaml.push_str(&backend_pod(&name));
    }
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");

    yaml.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n");
    netctl(&lab, &["apply", "-f", "-"], &yaml);
    let vip = cluster_ip(&lab, "web");

    // The Service reaches the client's node within moments.
    let start = Instant::now();
    loop {
        let probe = connect_many(&client, &vip, 1);
        if probe["failures"] == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the ClusterIP never answered: {probe}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    let result = connect_many(&client, &vip, 300);
    assert_eq!(result["failures"], 0, "{result}");
    let counts: BTreeMap<String, u64> = serde_json::from_value(result["counts"].clone()).unwrap();
    assert_eq!(
        counts.len(),
        3,
        "every backend gets connections: {counts:?}"
    );
    for (backend, n) in &counts {
        assert!(
            (60..=141).contains(n),
            "{backend} got {n} of 300 (want 20%-47%)"
        );
    }
    // Backends see the client pod's own address (no SNAT for pod clients).
    assert_eq!(
        result["peers"],
        serde_json::json!([client.ip.to_string()]),
        "{result}"
    );

    // A host process on node2 (its namespace and cgroup) reaches the ClusterIP too,
    // through the socket programs, spread over the backends.
    let from_host = host_python(&nodes[1], CLIENT, &[&vip, "80", "60"]);
    assert_eq!(from_host["failures"], 0, "{from_host}");
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(from_host["counts"].clone()).unwrap();
    assert!(counts.len() >= 2, "host connections spread: {counts:?}");
    // Its sockets' peer is the ClusterIP, not the backend they were translated to.
    let peers = host_python(&nodes[1], PEER_CLIENT, &[&vip, "80", "tcp"]);
    assert_eq!(
        peers["peers"],
        serde_json::json!([format!("{vip}:80")]),
        "getpeername: {peers}"
    );

    // UDP, from the pod and from a host process: replies come from the ClusterIP.
    yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  selector: {app: web}\n  \
         ports: [{port: 53, targetPort: 5353, protocol: UDP}]\n",
    );
    netctl(&lab, &["apply", "-f", "-"], &yaml);
    let dns_vip = cluster_ip(&lab, "dns");
    let udp_from_pod = |n: u32| {
        let ns = NetNs::from_path(&client.netns).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", UDP_CLIENT, &dns_vip, "53", &n.to_string()]);
        let out = ns.run(move || cmd.output()).unwrap().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let start = Instant::now();
    while udp_from_pod(1)["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the UDP Service never answered"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let udp = udp_from_pod(60);
    assert_eq!(udp["failures"], 0, "{udp}");
    assert_eq!(udp["sources"], serde_json::json!([dns_vip]), "{udp}");
    assert_eq!(
        udp["counts"].as_object().unwrap().len(),
        3,
        "UDP spreads over the backends: {udp}"
    );
    let udp_host = host_python(&nodes[2], UDP_CLIENT, &[&dns_vip, "53", "30"]);
    assert_eq!(udp_host["failures"], 0, "{udp_host}");
    assert_eq!(
        udp_host["sources"],
        serde_json::json!([dns_vip]),
        "{udp_host}"
    );
    let peers = host_python(&nodes[2], PEER_CLIENT, &[&dns_vip, "53", "udp"]);
    assert_eq!(
        peers["peers"],
        serde_json::json!([format!("{dns_vip}:53")]),
        "getpeername of a connected UDP socket: {peers}"
    );

    // Hairpin: a pod that is its Service's only backend reaches itself through it, and
    // sees the Service's address as the peer (kube-proxy masquerades this case too).
    let web1 = &backend_pods[0];
    netctl(
        &lab,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: itself}}\nspec:\n  type: NodePort\n  \
             ports: [{{port: 80, targetPort: 8080, nodePort: 30090}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: itself-1\n  \
             labels: {{kubernetes.io/service-name: itself}}\naddressType: IPv4\n\
             endpoints: [{{addresses: [\"{}\"]}}]\nports: [{{port: 8080}}]\n",
            web1.ip
        ),
    );
    let self_vip = cluster_ip(&lab, "itself");
    let start = Instant::now();
    while connect_many(web1, &self_vip, 1)["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a pod never reached itself through its Service"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let hairpin = connect_many(web1, &self_vip, 20);
    assert_eq!(hairpin["failures"], 0, "{hairpin}");
    assert_eq!(
        hairpin["counts"],
        serde_json::json!({"web-1": 20}),
        "{hairpin}"
    );
    assert_eq!(hairpin["peers"], serde_json::json!([self_vip]), "{hairpin}");
    // The same through its node's address at the NodePort: it sees the node's address.
    let node1_ip = nodes[0].plan.underlay_ip.to_string();
    let hairpin = connect_port(web1, &node1_ip, 30090, 20);
    assert_eq!(
        hairpin["failures"], 0,
        "hairpin through the NodePort: {hairpin}"
    );
    assert_eq!(
        hairpin["counts"],
        serde_json::json!({"web-1": 20}),
        "{hairpin}"
    );
    assert_eq!(hairpin["peers"], serde_json::json!([node1_ip]), "{hairpin}");

    // What the node's maps hold, as an operator sees it.
    let bpf = |what: &str| netctl(&lab, &["bpf", what, "--node", "node1"], "");
    let frontends = bpf("services");
    let line = frontends
        .lines()
        .find(|l| l.starts_with(&format!("{vip}:80")))
        .unwrap_or_else(|| panic!("{frontends}"));
    assert_eq!(line.matches(":8080").count(), 3, "three backends: {line}");
    let flows = bpf("conntrack");
    assert!(
        flows
            .lines()
            .filter(|l| l.contains(&format!("{vip}:80")))
            .count()
            >= 300,
        "{flows}"
    );
    let counters = bpf("metrics");
    assert!(
        counters.contains("service-translated") && counters.contains("reply-translated"),
        "{counters}"
    );

    // A backend removed: within a second, no new connections go to it.
    netctl(&lab, &["delete", "-f", "-"], &backend_pod("web-3"));
    thread::sleep(Duration::from_secs(1));
    let after = connect_many(&client, &vip, 60);
    let counts: BTreeMap<String, u64> = serde_json::from_value(after["counts"].clone()).unwrap();
    assert!(
        !counts.contains_key("web-3"),
        "web-3 still gets connections: {counts:?}"
    );
    assert_eq!(after["failures"], 0, "{after}");

    // Scaled to zero: a new connection is refused at once (ICMP unreachable from the
    // node), not left to time out.
    let all: String = ["web-1", "web-2"].iter().map(|n| backend_pod(n)).collect();
    netctl(&lab, &["delete", "-f", "-"], &all);
    thread::sleep(Duration::from_secs(1));
    let refused = "import socket,sys,time\n\
        t = time.monotonic()\n\
        try:\n\
        \x20   socket.create_connection((sys.argv[1], 80), timeout=5); print('connected')\n\
        except OSError as e:\n\
        \x20   print('%s %.3f' % (e.__class__.__name__, time.monotonic() - t))\n";
    let ns = NetNs::from_path(&client.netns).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", refused, &vip]);
    let out = ns.run(move || cmd.output()).unwrap().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (error, seconds) = said.split_once(' ').unwrap_or((&said, "99"));
    assert_ne!(error, "connected");
    assert_ne!(error, "TimeoutError", "refusal must be immediate: {said}");
    assert!(
        seconds.parse::<f64>().unwrap() < 1.0,
        "refused after {seconds}s: {said}"
    );

    // Scaled up again: it answers.
    netctl(&lab, &["apply", "-f", "-"], &all);
    let start = Instant::now();
    while connect_many(&client, &vip, 1)["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no backend came back"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // Session affinity, on a Service with two ports (a named and a numbered targetPort):
    // every connection from the client goes to one backend, on either port.
    netctl(
        &lab,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  \
         sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n  \
         ports: [{name: a, port: 80, targetPort: http}, {name: b, port: 81, targetPort: 8080}]\n",
    );
    let sticky_vip = cluster_ip(&lab, "sticky");
    let start = Instant::now();
    while connect_many(&client, &sticky_vip, 1)["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the sticky Service never answered"
        );
        thread::sleep(Duration::from_millis(50));
    }
    for port in [80, 81] {
        let stuck = connect_port(&client, &sticky_vip, port, 40);
        assert_eq!(stuck["failures"], 0, "{stuck}");
        let counts: BTreeMap<String, u64> =
            serde_json::from_value(stuck["counts"].clone()).unwrap();
        assert_eq!(
            counts.len(),
            1,
            "port {port}: one backend for the client: {counts:?}"
        );
    }
    let frontends = netctl(&lab, &["bpf", "services", "--node", "node1"], "");
    assert!(
        frontends
            .lines()
            .any(|l| l.starts_with(&format!("{sticky_vip}:81")) && l.contains(" 30s ")),
        "{frontends}"
    );

    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// Reads from host:80 for N seconds; prints the bytes, the longest silence and any error.
const READER: &str = "import socket,sys,json,time\n\
c = socket.create_connection((sys.argv[1], 80), timeout=5)\n\
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

/// One connection that must deliver data within 2 s.
const PROBE: &str = "import socket,sys\n\
c = socket.create_connection((sys.argv[1], 80), timeout=2)\n\
assert c.recv(1024)\n";

fn python_in(pod: &Pod, script: &str, args: &[&str]) -> std::process::Child {
    let ns = NetNs::from_path(&pod.netns).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns.run(move || cmd.spawn()).unwrap().unwrap()
}

fn probe(client: &Pod, vip: &str) -> Result<(), String> {
    let out = python_in(client, PROBE, &[vip]).wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_stream_through_a_cluster_ip_survives_a_twilld_restart_and_new_connections_work_meanwhile() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let mut daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| Twilld::start(Path::new(TWILLD), &lab, n, CONFIG, &[]))
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    let backend = add_pod(&mut lab, &nodes[1], &daemons[1], "web-1");
    let mut server = python_in(&backend, STREAMER, &[]);
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
    netctl(
        &lab,
        &["apply", "-f", "-"],
        &format!(
            "{}apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
             selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n",
            backend_pod("web-1")
        ),
    );
    let vip = cluster_ip(&lab, "web");
    let start = Instant::now();
    while let Err(e) = probe(&client, &vip) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the ClusterIP never answered: {e}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // A 6-second stream from the backend on node2 to the client on node1. The client's
    // node translates it; its twilld is killed (SIGKILL: no cleanup) and started again.
    let reader = python_in(&client, READER, &[&vip, "6"]);
    thread::sleep(Duration::from_secs(1));
    daemons[0].kill();
    // While node1's daemon is down, a new connection still works: the pinned programs
    // and maps carry on without it.
    let down = probe(&client, &vip);
    daemons[0].restart();
    daemons[0].wait_status("ready again", Duration::from_secs(10), |s| {
        s.not_ready.is_none()
    });
    let after = probe(&client, &vip);

    let out = reader.wait_with_output().unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(result["error"], serde_json::Value::Null, "{result}");
    // 6 s at ~100 KiB/s: most of it arrives, with no silence near a retransmission.
    assert!(result["bytes"].as_u64().unwrap() > 400 * 1024, "{result}");
    assert!(result["max_gap"].as_f64().unwrap() < 0.5, "{result}");
    assert_eq!(down, Ok(()), "a new connection while twilld was down");
    assert_eq!(after, Ok(()), "a new connection after the restart");
    let log = daemons[0].log_text();
    assert!(
        !log.contains("re-attaching the pod programs"),
        "the pinned links were reused:\n{log}"
    );
}

fn external_python(host: &Host, script: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    let out = host.run(move || cmd.output()).unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn node_ports_answer_on_every_node_and_the_local_policy_keeps_the_client_address() {
    node_ports_cluster_ips_and_policy(Overlay::Vxlan);
}

/// The same Services and policy over the BGP-routed overlay: nothing in the Service or
/// policy path depends on how pod subnets are reached.
#[test]
fn node_ports_cluster_ips_and_policy_work_the_same_in_bgp_mode() {
    node_ports_cluster_ips_and_policy(Overlay::Bgp);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overlay {
    Vxlan,
    Bgp,
}

/// twilld's configuration in `BGP` mode: the iBGP mesh with short timers.
const BGP_CONFIG: &str = "[network]\noverlay = \"bgp\"\nresync_seconds = 1\n\
[lease]\nttl_seconds = 60\n[bgp]\nhold_seconds = 3\nkeepalive_seconds = 1\n";

/// NodePorts (Cluster and Local, TCP and UDP) from an outside host, a ClusterIP from a pod
/// on a node without backends, and a NetworkPolicy that isolates the backends, on a
/// 3-node lab over `overlay`.
fn node_ports_cluster_ips_and_policy(overlay: Overlay) {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 1)).expect("lab up");
    let nodes = lab.nodes();
    let outside = lab.externals().remove(0);
    let config = match overlay {
        Overlay::Vxlan => CONFIG,
        Overlay::Bgp => BGP_CONFIG,
    };
    let daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| Twilld::start(Path::new(TWILLD), &lab, n, config, &[]))
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(20), |s| {
            s.not_ready.is_none()
                && match overlay {
                    Overlay::Vxlan => s.overlay.peers == 2,
                    Overlay::Bgp => s.bgp.as_ref().is_some_and(|b| {
                        b.peers.len() == 2 && b.peers.iter().all(|p| p.state == "Established")
                    }),
                }
        });
    }
    if overlay == Overlay::Bgp {
        // Pod subnets are routed natively: no VXLAN device on any node.
        for node in &nodes {
            let links = node.output("ip", &["-d", "link", "show"]).unwrap();
            let links = String::from_utf8_lossy(&links.stdout).into_owned();
            assert!(!links.contains("vxlan id"), "{}: {links}", node.name());
        }
    }
    // Backends on node2 and node3; none on node1.
    let mut servers = Vec::new();
    let mut yaml = String::new();
    for i in [1, 2] {
        let name = format!("web-{}", i + 1);
        let pod = add_pod(&mut lab, &nodes[i], &daemons[i], &name);
        servers.push(python_in(&pod, SERVER, &[&name]));
        yaml.push_str(&backend_pod(&name));
    }
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  \
         selector: {app: web}\n  ports: [{port: 80, targetPort: http, nodePort: 30080}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: np-local}\nspec:\n  type: NodePort\n  \
         externalTrafficPolicy: Local\n  selector: {app: web}\n  \
         ports: [{port: 80, targetPort: http, nodePort: 30081}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: np-udp}\nspec:\n  type: NodePort\n  \
         selector: {app: web}\n  ports: [{port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}]\n",
    );
    netctl(&lab, &["apply", "-f", "-"], &yaml);
    let outside_ip = outside.plan.underlay_ip.to_string();
    let counts_of = |v: &serde_json::Value| -> BTreeMap<String, u64> {
        serde_json::from_value(v["counts"].clone()).unwrap()
    };

    // externalTrafficPolicy: Cluster, on every node's address, backends on other nodes
    // included; the backends see the receiving node's address, not the client's.
    for node in &nodes {
        let ip = node.plan.underlay_ip.to_string();
        let start = Instant::now();
        while external_python(&outside, CLIENT, &[&ip, "30080", "1"])["failures"] != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "NodePort 30080 on {} never answered",
                node.name()
            );
            thread::sleep(Duration::from_millis(100));
        }
        let got = external_python(&outside, CLIENT, &[&ip, "30080", "40"]);
        assert_eq!(got["failures"], 0, "{}: {got}", node.name());
        assert_eq!(
            counts_of(&got).len(),
            2,
            "{}: both backends: {got}",
            node.name()
        );
        assert!(
            !got["peers"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(outside_ip)),
            "{}: translated to the node's address: {got}",
            node.name()
        );
    }

    // UDP: replies come from the address and port the client sent to.
    let node1 = nodes[0].plan.underlay_ip.to_string();
    let udp = external_python(&outside, UDP_CLIENT, &[&node1, "30053", "20"]);
    assert_eq!(udp["failures"], 0, "{udp}");
    assert_eq!(udp["sources"], serde_json::json!([node1]), "{udp}");
    assert_eq!(counts_of(&udp).len(), 2, "{udp}");

    // externalTrafficPolicy: Local: only the receiving node's backend, which sees the
    // client's own address; a node without one refuses.
    for (i, backend) in [(1, "web-2"), (2, "web-3")] {
        let ip = nodes[i].plan.underlay_ip.to_string();
        let got = external_python(&outside, CLIENT, &[&ip, "30081", "20"]);
        assert_eq!(got["failures"], 0, "{got}");
        assert_eq!(
            counts_of(&got).keys().collect::<Vec<_>>(),
            [backend],
            "{got}"
        );
        assert_eq!(got["peers"], serde_json::json!([outside_ip]), "{got}");
    }
    let none = external_python(
        &outside,
        CLIENT,
        &[&nodes[0].plan.underlay_ip.to_string(), "30081", "3"],
    );
    assert_eq!(none["failures"], 3, "node1 has no local backend: {none}");

    // A ClusterIP from a pod on node1, whose backends are both on other nodes.
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
    let vip = cluster_ip(&lab, "np");
    let start = Instant::now();
    while connect_many(&client, &vip, 1)["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the ClusterIP never answered the pod"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let got = connect_many(&client, &vip, 40);
    assert_eq!(got["failures"], 0, "{got}");
    assert_eq!(counts_of(&got).len(), 2, "both remote backends: {got}");
    assert_eq!(
        got["peers"],
        serde_json::json!([client.ip.to_string()]),
        "the backends see the pod's own address: {got}"
    );

    // NodePorts from inside the cluster. To its own node's address the pod is translated
    // on its veth: both backends (on other nodes), which see the pod's own address, and
    // UDP replies from the address and port it sent to.
    let got = pod_python(&client, CLIENT, &[&node1, "30080", "40"]);
    assert_eq!(got["failures"], 0, "pod -> own node's NodePort: {got}");
    assert_eq!(counts_of(&got).len(), 2, "both remote backends: {got}");
    assert_eq!(
        got["peers"],
        serde_json::json!([client.ip.to_string()]),
        "the backends see the pod's own address: {got}"
    );
    let udp = pod_python(&client, UDP_CLIENT, &[&node1, "30053", "20"]);
    assert_eq!(udp["failures"], 0, "{udp}");
    assert_eq!(udp["sources"], serde_json::json!([node1]), "{udp}");
    assert_eq!(counts_of(&udp).len(), 2, "{udp}");
    // To another node's address it leaves like any traffic to a node and is translated
    // where it arrives.
    let node2 = nodes[1].plan.underlay_ip.to_string();
    let got = pod_python(&client, CLIENT, &[&node2, "30080", "20"]);
    assert_eq!(got["failures"], 0, "pod -> another node's NodePort: {got}");
    assert_eq!(counts_of(&got).len(), 2, "{got}");
    // externalTrafficPolicy: Local on a node without a backend of its own: from inside
    // the node every ready backend serves, as kube-proxy sends the node's own traffic.
    let got = pod_python(&client, CLIENT, &[&node1, "30081", "20"]);
    assert_eq!(
        got["failures"], 0,
        "pod -> own node's Local NodePort: {got}"
    );
    assert_eq!(counts_of(&got).len(), 2, "{got}");
    // A NodePort without backends: refused at once (the node's stack answers), not a
    // timeout.
    let no_backends = "apiVersion: v1\nkind: Service\nmetadata: {name: np-none}\nspec:\n  \
                       type: NodePort\n  selector: {app: nothing}\n  \
                       ports: [{port: 80, targetPort: http, nodePort: 30082}]\n";
    netctl(&lab, &["apply", "-f", "-"], no_backends);
    thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let got = pod_python(&client, CLIENT, &[&node1, "30082", "2"]);
    assert_eq!(got["failures"], 2, "{got}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refused, not timed out: {:?}",
        start.elapsed()
    );
    netctl(&lab, &["delete", "-f", "-"], no_backends);
    let got = host_python(&nodes[0], CLIENT, &[&node1, "30081", "10"]);
    assert_eq!(
        got["failures"], 0,
        "host -> own node's Local NodePort: {got}"
    );
    // A host process of node1 (its namespace and cgroup): translated per socket.
    let got = host_python(&nodes[0], CLIENT, &[&node1, "30080", "20"]);
    assert_eq!(got["failures"], 0, "host -> own node's NodePort: {got}");
    assert_eq!(counts_of(&got).len(), 2, "{got}");
    let udp = host_python(&nodes[0], UDP_CLIENT, &[&node1, "30053", "10"]);
    assert_eq!(udp["failures"], 0, "{udp}");
    assert_eq!(udp["sources"], serde_json::json!([node1]), "{udp}");
    // And at localhost, as with kube-proxy's iptables mode.
    let got = host_python(&nodes[0], CLIENT, &["127.0.0.1", "30080", "20"]);
    assert_eq!(got["failures"], 0, "host -> localhost NodePort: {got}");
    assert_eq!(counts_of(&got).len(), 2, "{got}");
    let udp = host_python(&nodes[0], UDP_CLIENT, &["127.0.0.1", "30053", "10"]);
    assert_eq!(udp["failures"], 0, "{udp}");
    assert_eq!(udp["sources"], serde_json::json!(["127.0.0.1"]), "{udp}");

    // A NetworkPolicy isolating the backends' ingress: the pod is refused across nodes,
    // and reaches them again when it goes.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                metadata: {name: web-deny, namespace: default}\n\
                spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}\n";
    netctl(&lab, &["apply", "-f", "-"], deny);
    let start = Instant::now();
    loop {
        let got = connect_many(&client, &vip, 2);
        if got["failures"] == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the policy never took: {got}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    netctl(&lab, &["delete", "-f", "-"], deny);
    let start = Instant::now();
    while connect_many(&client, &vip, 1)["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the backends stayed isolated after the policy went"
        );
        thread::sleep(Duration::from_millis(100));
    }

    let counters = netctl(&lab, &["bpf", "metrics", "--node", "node1"], "");
    assert!(counters.contains("nodeport-redirected"), "{counters}");
    // What `netctl describe` expects each node to hold (the ClusterIP, the NodePort and
    // the Local NodePort's frontend for the node's own clients) is what the nodes hold.
    let described = netctl(&lab, &["describe", "service", "np-local"], "");
    for node in &nodes {
        assert!(
            described.lines().any(|l| {
                l.split_whitespace().collect::<Vec<_>>() == [node.name(), "3", "match"]
            }),
            "{described}"
        );
    }
    let frontends = netctl(&lab, &["bpf", "services", "--node", "node2"], "");
    assert!(
        frontends
            .lines()
            .any(|l| l.starts_with("<node>:30081 NodePort") && l.contains("local")),
        "{frontends}"
    );
    // NodePort flows to other nodes' backends leave from the VTEP address over VXLAN, from
    // the node's own address when pod subnets are routed.
    let flows = netctl(&lab, &["bpf", "conntrack", "--node", "node1"], "");
    let source = match overlay {
        Overlay::Vxlan => "NodePort, from 10.244.".to_owned(),
        Overlay::Bgp => format!("NodePort, from {}:", nodes[0].plan.underlay_ip),
    };
    assert!(flows.contains(&source), "{source:?} not in:\n{flows}");

    // Without NodePort Services the programs leave the underlay and VXLAN devices (they
    // would cost every packet the node receives).
    let node_links = nodes[0].bpffs_dir.join(twill_bpf::NODE_LINKS);
    assert!(node_links.exists());
    netctl(&lab, &["delete", "-f", "-"], &yaml);
    let start = Instant::now();
    while node_links.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "NodePort programs still attached"
        );
        thread::sleep(Duration::from_millis(50));
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// On a real node, pods' processes live under `paths.cgroup_root` (the cgroup root by
/// default), so the socket programs translate their connects to a ClusterIP before any
/// packet is sent, and `ClientIP` affinity must still be each pod's own, not the node's:
/// the CNI binary records each pod's network namespace for them.
#[test]
fn pods_in_the_nodes_cgroup_are_translated_per_socket_with_their_own_affinity() {
    use twill_abi::metrics::{Direction, Reason};
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let daemon = Twilld::start(Path::new(TWILLD), &lab, &node, CONFIG, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());

    let mut servers = Vec::new();
    let mut yaml = String::new();
    for name in ["web-1", "web-2"] {
        let pod = add_pod(&mut lab, &node, &daemon, name);
        let ns = NetNs::from_path(&pod.netns).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", SERVER, name])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        servers.push(ns.run(move || cmd.spawn()).unwrap().unwrap());
        yaml.push_str(&backend_pod(name));
    }
    let clients = [
        add_pod(&mut lab, &node, &daemon, "client-a"),
        add_pod(&mut lab, &node, &daemon, "client-b"),
    ];
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  \
         sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  \
         ports: [{port: 80, targetPort: http}]\n",
    );
    netctl(&lab, &["apply", "-f", "-"], &yaml);
    let vip = cluster_ip(&lab, "sticky");
    let pin_dir = node.bpffs_dir.clone();
    let start = Instant::now();
    while !twill_bpf::read_services(&pin_dir)
        .unwrap()
        .iter()
        .any(|f| f.backends.len() == 2)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the Service never reached the maps"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // Each client, run as a real node runs pods: its namespace, the node's cgroup.
    let connect_in_cgroup = |client: &Pod, to: &str, port: &str, n: u32| -> serde_json::Value {
        let ns = NetNs::from_path(&client.netns).unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-c", CLIENT, to, port, &n.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = node.spawn_in(&ns, cmd).unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let in_cgroup = |client: &Pod, n: u32| connect_in_cgroup(client, &vip, "80", n);
    let per_packet_before = twill_bpf::read_metrics(&pin_dir)
        .unwrap()
        .get(Direction::FromPod, Reason::ServiceTranslated)
        .packets;
    for client in &clients {
        let result = in_cgroup(client, 20);
        assert_eq!(result["failures"], 0, "{result}");
        let counts: BTreeMap<String, u64> =
            serde_json::from_value(result["counts"].clone()).unwrap();
        assert_eq!(counts.len(), 1, "one backend per client: {counts:?}");
        assert_eq!(
            result["peers"],
            serde_json::json!([client.ip.to_string()]),
            "the backend sees the pod's address"
        );
    }
    // Translated at connect, not per packet...
    let metrics = twill_bpf::read_metrics(&pin_dir).unwrap();
    assert!(
        metrics
            .get(Direction::HostSocket, Reason::ServiceTranslated)
            .packets
            >= 40,
        "{metrics:?}"
    );
    assert_eq!(
        metrics
            .get(Direction::FromPod, Reason::ServiceTranslated)
            .packets,
        per_packet_before,
        "no packet of these connections needed translating"
    );
    // ...and remembered per pod: one affinity entry for each client's address, none for
    // the node.
    let mut clients_seen: Vec<Ipv4Addr> = twill_bpf::read_affinity(&pin_dir)
        .unwrap()
        .iter()
        .map(|(key, _)| Ipv4Addr::from(key.client_ip.to_ne_bytes()))
        .collect();
    clients_seen.sort();
    let mut want: Vec<Ipv4Addr> = clients.iter().map(|c| c.ip).collect();
    want.sort();
    assert_eq!(clients_seen, want, "affinity entries by client");

    // localhost NodePorts are the node's: a host process reaches one, a pod's loopback
    // stays its own.
    let node_port = "apiVersion: v1\nkind: Service\nmetadata: {name: np-loop}\nspec:\n  \
                     type: NodePort\n  selector: {app: web}\n  \
                     ports: [{port: 80, targetPort: http, nodePort: 30085}]\n";
    netctl(&lab, &["apply", "-f", "-"], node_port);
    let start = Instant::now();
    while host_python(&node, CLIENT, &["127.0.0.1", "30085", "1"])["failures"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "localhost:30085 never answered the node"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let from_pod = connect_in_cgroup(&clients[1], "127.0.0.1", "30085", 2);
    assert_eq!(from_pod["failures"], 2, "a pod's localhost: {from_pod}");

    // A deleted pod's namespace is forgotten.
    let recorded = |ip: Ipv4Addr| {
        twill_bpf::read_pod_netns(&pin_dir)
            .unwrap()
            .iter()
            .any(|(_, pod)| Ipv4Addr::from(pod.ip.to_ne_bytes()) == ip)
    };
    assert!(recorded(clients[0].ip));
    let conf = cni::config("1.1.0", &daemon);
    cni::invoke(
        &sibling("twill"),
        &node,
        &cni::vars("DEL", "client-a", &clients[0].netns, "eth0"),
        &conf.to_string(),
    )
    .ok();
    assert!(
        !recorded(clients[0].ip),
        "client-a's namespace is forgotten"
    );
    assert!(recorded(clients[1].ip));

    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

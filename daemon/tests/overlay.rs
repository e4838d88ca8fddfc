//! The VXLAN overlay across lab nodes: pods reach pods on other nodes, joins are fast,
//! dead nodes are removed after their lease, restarts do not flap routes, hand-made damage
//! is repaired, the MTU holds, and the wire carries what VXLAN should.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{
    cni::{self, Outcome as _},
    daemon::Twilld,
    require_root,
};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
/// Short lease, fast resync: the behaviours under test happen in seconds.
const CONFIG: &str =
    "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 3\nquarantine_seconds = 5\n";

fn twilld() -> &'static Path {
    Path::new(TWILLD)
}

fn twill() -> PathBuf {
    let p = Path::new(TWILLD).with_file_name("twill");
    assert!(
        p.exists(),
        "{} missing: run `cargo test` at the workspace root",
        p.display()
    );
    p
}

struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

struct Cluster {
    lab: Lab,
    daemons: Vec<Twilld>,
}

impl Cluster {
    fn new(nodes: u8) -> Self {
        Self::with_externals(nodes, 0)
    }

    fn with_externals(nodes: u8, externals: u8) -> Self {
        Self::configured(nodes, externals, CONFIG)
    }

    fn configured(nodes: u8, externals: u8, config: &str) -> Self {
        require_root();
        let lab = Lab::up(&LabSpec::for_test(nodes, externals)).expect("lab up");
        let daemons = lab
            .nodes()
            .iter()
            .map(|n| Twilld::start(twilld(), &lab, n, config, &[]))
            .collect::<Vec<_>>();
        for d in &daemons {
            d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
        }
        Self { lab, daemons }
    }

    fn node(&self, i: usize) -> Host {
        self.lab.nodes()[i].clone()
    }

    fn subnet(&self, i: usize) -> Ipv4Network {
        self.daemons[i].status().subnet.expect("a subnet")
    }

    /// A pod on node `i`, added through the CNI binary as a runtime would.
    fn pod(&mut self, i: usize, name: &str) -> Pod {
        let netns = self
            .lab
            .create_netns(name)
            .unwrap()
            .path()
            .display()
            .to_string();
        let conf = cni::config("1.1.0", &self.daemons[i]);
        let out = cni::invoke(
            &twill(),
            &self.node(i),
            &cni::vars("ADD", name, &netns, "eth0"),
            &conf.to_string(),
        );
        let result = out.ok();
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .parse()
            .unwrap();
        Pod { netns, ip }
    }
}

fn in_ns(netns: &str, program: &str, args: &[&str]) -> std::process::Output {
    let ns = twill_netns::NetNs::from_path(netns).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args);
    ns.run(move || cmd.output()).unwrap().unwrap()
}

fn ping(from: &Pod, to: Ipv4Addr) -> bool {
    in_ns(
        &from.netns,
        "ping",
        &["-c", "1", "-W", "2", &to.to_string()],
    )
    .status
    .success()
}

fn has_route(node: &Host, subnet: Ipv4Network) -> bool {
    let out = node
        .output(
            "ip",
            &["route", "show", &subnet.to_string(), "dev", "twill-vxlan"],
        )
        .unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn pods_on_every_node_reach_pods_on_every_other_node_with_their_own_addresses() {
    let mut c = Cluster::new(3);
    let pods: Vec<Pod> = (0..3).map(|i| c.pod(i, &format!("pod{i}"))).collect();
    // What an operator waits for: the programs attached and the overlay to both peers
    // programmed (on a loaded machine a node may still be reading the others' records).
    for d in &c.daemons {
        d.wait_status("pod programs attached", Duration::from_secs(10), |s| {
            s.background.attaching == 0
        });
        d.wait_status("both peers programmed", Duration::from_secs(10), |s| {
            s.overlay.peers == 2
        });
    }
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                assert!(
                    ping(from, to.ip),
                    "pod on node{} cannot reach pod on node{}",
                    i + 1,
                    j + 1
                );
            }
        }
    }

    // The receiver sees the sender's pod address (no masquerade between pods).
    let listener = peer_address_listener(&pods[2].netns);
    connect_from(&pods[0].netns, pods[2].ip);
    let seen = listener.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout).trim(),
        pods[0].ip.to_string()
    );

    // A TCP transfer across nodes.
    let ns = twill_netns::NetNs::from_path(&pods[1].netns).unwrap();
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-p", "5201"]).stdout(Stdio::null());
    let mut server = ns.run(move || cmd.spawn()).unwrap().unwrap();
    thread::sleep(Duration::from_millis(300));
    let out = in_ns(
        &pods[0].netns,
        "iperf3",
        &["-c", &pods[1].ip.to_string(), "-t", "1", "-J"],
    );
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(bytes > 1e6, "only {bytes} bytes crossed");
    let _ = server.wait();

    // The transfer took the short way: from the sender's veth straight to the overlay
    // device on node1, from the overlay device straight into the receiver on node2, past
    // both nodes' forwarding.
    use twill_abi::metrics::{Direction, Reason};
    let pin_dirs: Vec<_> = (0..3).map(|i| c.node(i).bpffs_dir).collect();
    let redirected = |node: usize, direction| {
        twill_bpf::read_metrics(&pin_dirs[node])
            .unwrap()
            .get(direction, Reason::PodRedirected)
            .packets
    };
    assert!(
        redirected(0, Direction::FromPod) > 100,
        "node1 did not send it on itself"
    );
    assert!(
        redirected(1, Direction::FromOverlay) > 100,
        "node2 did not deliver it itself"
    );

    // Between two pods of one node too: straight from one veth into the other pod.
    let neighbour = c.pod(0, "pod0b");
    let before = redirected(0, Direction::FromPod);
    let listener = peer_address_listener(&neighbour.netns);
    connect_from(&pods[0].netns, neighbour.ip);
    let seen = listener.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout).trim(),
        pods[0].ip.to_string()
    );
    assert!(
        redirected(0, Direction::FromPod) > before,
        "node1 did not deliver it itself"
    );
}

#[test]
fn a_joining_node_is_routed_from_every_node_within_a_second() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(3, 0)).unwrap();
    let nodes = lab.nodes();
    let d1 = Twilld::start(twilld(), &lab, &nodes[0], CONFIG, &[]);
    let d2 = Twilld::start(twilld(), &lab, &nodes[1], CONFIG, &[]);
    for d in [&d1, &d2] {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    let d3 = Twilld::start(twilld(), &lab, &nodes[2], CONFIG, &[]);
    let subnet = d3
        .wait_status("holding a subnet", Duration::from_secs(10), |s| {
            s.subnet.is_some()
        })
        .subnet
        .unwrap();
    // From the moment node3 reports its lease: every other node has the route.
    let took = wait_for(
        "node3's subnet routed on node1 and node2",
        Duration::from_secs(5),
        || has_route(&nodes[0], subnet) && has_route(&nodes[1], subnet),
    );
    assert!(took <= Duration::from_secs(1), "join took {took:?}");
    // Each daemon says so in its status: two peers reached, nothing failing.
    for d in [&d1, &d2, &d3] {
        d.wait_status("two overlay peers", Duration::from_secs(5), |s| {
            s.overlay.peers == 2 && s.overlay.problem.is_none()
        });
    }
}

#[test]
fn a_restart_keeps_routes_and_streams_and_a_dead_node_is_removed_after_its_lease() {
    let mut c = Cluster::new(2);
    let node1 = c.node(0);
    let subnet2 = c.subnet(1);
    assert!(has_route(&node1, subnet2));
    let a = c.pod(0, "stream-a");
    let b = c.pod(1, "stream-b");

    // A TCP stream from a pod on node1 to a pod on node2 runs through node2's restart.
    let server_ns = twill_netns::NetNs::from_path(&b.netns).unwrap();
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-p", "5202"]).stdout(Stdio::null());
    let mut server = server_ns.run(move || cmd.spawn()).unwrap().unwrap();
    thread::sleep(Duration::from_millis(300));
    let client_ns = twill_netns::NetNs::from_path(&a.netns).unwrap();
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &b.ip.to_string(),
        "-p",
        "5202",
        "-t",
        "8",
        "-b",
        "50M",
        "-J",
    ])
    .stdout(Stdio::piped());
    let stream = client_ns.run(move || cmd.spawn()).unwrap().unwrap();
    thread::sleep(Duration::from_secs(1));

    // Restart node2's daemon (SIGKILL, start again) while watching node1's route.
    let watching = std::sync::atomic::AtomicBool::new(true);
    let flapped = thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut flapped = false;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                flapped |= !has_route(&node1, subnet2);
                thread::sleep(Duration::from_millis(20));
            }
            flapped
        });
        c.daemons[1].restart();
        c.daemons[1].wait_status("ready", Duration::from_secs(10), |st| {
            st.not_ready.is_none()
        });
        thread::sleep(Duration::from_secs(4)); // past the old lease's TTL
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(
        !flapped,
        "node1 lost its route to node2 during node2's restart"
    );
    assert_eq!(c.subnet(1), subnet2, "the restarted node kept its subnet");
    let report = stream.wait_with_output().unwrap();
    assert!(
        report.status.success(),
        "the stream broke: {}",
        String::from_utf8_lossy(&report.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let intervals = report["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 7, "{} intervals", intervals.len());
    for (i, interval) in intervals.iter().enumerate() {
        let bytes = interval["sum"]["bytes"].as_f64().unwrap_or(0.0);
        assert!(
            bytes > 0.0,
            "the stream stalled in second {i} of the restart"
        );
    }
    let _ = server.wait();

    // Now node2 dies for good: after the TTL its route, neighbour and FDB entry go.
    c.daemons[1].kill();
    let gone = wait_for("node2's route removed", Duration::from_secs(15), || {
        !has_route(&node1, subnet2)
    });
    assert!(
        gone >= Duration::from_secs(1),
        "removed before the lease could expire ({gone:?})"
    );
    let neigh = node1
        .output("ip", &["neigh", "show", "dev", "twill-vxlan"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&neigh.stdout).trim().is_empty(),
        "{neigh:?}"
    );
    let fdb = node1
        .output("bridge", &["fdb", "show", "dev", "twill-vxlan"])
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&fdb.stdout).contains("dst "),
        "{fdb:?}"
    );
}

#[test]
fn entries_removed_by_hand_come_back_at_once_and_foreign_ones_stay() {
    // The periodic pass is a minute away: only the kernel's notifications can repair this
    // within the second the test allows.
    let c = Cluster::configured(
        2,
        0,
        "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 3\n",
    );
    let node1 = c.node(0);
    let subnet2 = c.subnet(1);
    let run = |args: &[&str]| {
        let out = node1.output(args[0], &args[1..]).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Someone else's route on the device: not twill's, so never removed.
    run(&["ip", "route", "add", "192.0.2.0/24", "dev", "twill-vxlan"]);
    run(&[
        "ip",
        "route",
        "del",
        &subnet2.to_string(),
        "dev",
        "twill-vxlan",
    ]);
    let fdb = String::from_utf8(
        node1
            .output("bridge", &["fdb", "show", "dev", "twill-vxlan"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mac = fdb.split_whitespace().next().unwrap().to_owned();
    run(&["bridge", "fdb", "del", &mac, "dev", "twill-vxlan", "self"]);

    wait_for("route restored", Duration::from_secs(1), || {
        has_route(&node1, subnet2)
    });
    wait_for("fdb entry restored", Duration::from_secs(1), || {
        String::from_utf8_lossy(
            &node1
                .output("bridge", &["fdb", "show", "dev", "twill-vxlan"])
                .unwrap()
                .stdout,
        )
        .contains(&mac)
    });
    thread::sleep(Duration::from_secs(2));
    let routes = node1
        .output("ip", &["route", "show", "dev", "twill-vxlan"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("192.0.2.0/24"),
        "a foreign route was removed"
    );
}

#[test]
fn the_pod_mtu_crosses_nodes_and_one_byte_more_is_refused() {
    let mut c = Cluster::new(2);
    let a = c.pod(0, "mtu-a");
    let b = c.pod(1, "mtu-b");
    // Pod MTU 1450 = underlay 1500 - 50; ICMP payload 1450 - 20 (IP) - 8 (ICMP) = 1422.
    let fits = in_ns(
        &a.netns,
        "ping",
        &[
            "-M",
            "do",
            "-s",
            "1422",
            "-c",
            "1",
            "-W",
            "2",
            &b.ip.to_string(),
        ],
    );
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stdout)
    );
    let too_big = in_ns(
        &a.netns,
        "ping",
        &[
            "-M",
            "do",
            "-s",
            "1423",
            "-c",
            "1",
            "-W",
            "2",
            &b.ip.to_string(),
        ],
    );
    assert!(!too_big.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&too_big.stdout),
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(
        said.contains("message too long") || said.contains("Frag needed"),
        "{said}"
    );
}

#[test]
fn the_underlay_carries_vxlan_with_the_configured_vni_and_port_and_pod_addresses_inside() {
    let mut c = Cluster::new(2);
    let a = c.pod(0, "cap-a");
    let b = c.pod(1, "cap-b");
    let underlay = c.lab.underlay().unwrap();
    let mut cmd = Command::new("tshark");
    cmd.args([
        "-i",
        "br0",
        "-f",
        "udp port 8472",
        "-c",
        "2",
        "-a",
        "duration:15",
        "-d",
        "udp.port==8472,vxlan",
        "-T",
        "fields",
        "-e",
        "vxlan.flag_i",
        "-e",
        "vxlan.vni",
        "-e",
        "udp.dstport",
        "-e",
        "ip.src",
        "-e",
        "ip.dst",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let capture = underlay.run(move || cmd.spawn()).unwrap().unwrap();
    thread::sleep(Duration::from_secs(2)); // tshark takes a moment to start capturing
    for _ in 0..5 {
        ping(&a, b.ip);
    }
    let out = capture.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("nothing captured: {out:?}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert!(matches!(fields[0], "1" | "True" | "true"), "I flag: {line}");
    assert_eq!(fields[1], "1", "VNI: {line}");
    assert_eq!(fields[2], "8472", "port: {line}");
    // Outer then inner addresses: the inner pair are the pods'.
    let (src, dst) = (fields[3], fields[4]);
    assert!(
        src.contains(&a.ip.to_string()) || src.contains(&b.ip.to_string()),
        "{line}"
    );
    assert!(
        dst.contains(&b.ip.to_string()) || dst.contains(&a.ip.to_string()),
        "{line}"
    );
    assert!(src.contains("172.30.0."), "outer source is a node: {line}");
}

/// Starts a TCP listener on `netns` port 7000 that prints the first peer's address.
fn peer_address_listener(netns: &str) -> std::process::Child {
    let server = "import socket\n\
        s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('0.0.0.0', 7000)); s.listen(1); s.settimeout(10)\n\
        c, a = s.accept(); print(a[0], flush=True)\n";
    let ns = twill_netns::NetNs::from_path(netns).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", server]).stdout(Stdio::piped());
    ns.run(move || cmd.spawn()).unwrap().unwrap()
}

fn connect_from(netns: &str, target: Ipv4Addr) {
    let client = "import socket,sys,time\n\
        for _ in range(50):\n\
        \x20   try:\n\
        \x20       socket.create_connection((sys.argv[1], 7000), timeout=2).close(); break\n\
        \x20   except OSError: time.sleep(0.1)\n\
        else: sys.exit('no connection')\n";
    let out = in_ns(netns, "python3", &["-c", client, &target.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn traffic_leaving_the_cluster_is_masqueraded_and_reaches_node_addresses() {
    let mut c = Cluster::with_externals(2, 1);
    let pod = c.pod(0, "out");
    let ext = c.lab.externals()[0].clone();
    let node1 = c.node(0);
    let node2 = c.node(1);
    // The pod reaches its own node's and another node's underlay address.
    for n in [&node1, &node2] {
        assert!(
            ping(&pod, n.plan.underlay_ip),
            "pod cannot reach {}",
            n.name()
        );
    }
    // A host on the underlay that is not a node sees the node's address, not the pod's.
    let ext_ns = format!("/run/netns/{}", ext.plan.netns);
    let listener = peer_address_listener(&ext_ns);
    connect_from(&pod.netns, ext.plan.underlay_ip);
    let seen = listener.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout).trim(),
        node1.plan.underlay_ip.to_string()
    );
    // The NAT lives in twill's own chain.
    let rules = node1
        .output("iptables", &["-t", "nat", "-S", "TWILL-POSTROUTING"])
        .unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains("MASQUERADE"));
}

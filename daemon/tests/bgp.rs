//! The BGP-routed mode end to end: real daemons on three nodes in `network.overlay =
//! "bgp"`, pods wired through the CNI binary. The iBGP mesh comes up; every node routes the
//! other nodes' pod subnets via their underlay addresses with twill's protocol; pods on
//! different nodes reach each other with plain IPv4 on the underlay (no VXLAN) at the
//! underlay's MTU, also past a node firewall that drops what conntrack calls INVALID
//! (twill leaves pod-to-pod traffic untracked); a `twilld` killed and restarted keeps
//! every route in every kernel and a TCP stream across nodes running; a node killed for
//! good is withdrawn after the graceful restart time, and a frozen one after the hold
//! time. A speaker with a node record of its own is peered with as soon as the record
//! appears; what it announces that etcd does not give it is refused and reported; drift
//! is repaired and foreign routes stay. MD5 passwords match or the mismatch is reported.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{daemon::Twilld, require_root, scripts::ECHO};

mod common;
use common::{Pod, add_pod, cmd, link_mtu, sibling, twill_routes, until};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
/// Hold 3 s (keepalive 1 s) so a frozen node goes quickly; graceful restart 15 s, longer
/// than a restart of the debug build takes; the lease outlives both, so what removes a
/// dead node's routes here is BGP, not its node record expiring.
const HOLD: Duration = Duration::from_secs(3);
const RESTART: Duration = Duration::from_secs(15);
const CONFIG: &str = "[network]\noverlay = \"bgp\"\nresync_seconds = 1\n\
[lease]\nttl_seconds = 60\n\
[bgp]\nhold_seconds = 3\nkeepalive_seconds = 1\nrestart_seconds = 15\n";

/// A line every 50 ms; prints `echo <monotonic>` for each answer, until one takes longer
/// than 0.5 s.
const STREAM: &str = "import socket,sys,time\n\
c = socket.create_connection((sys.argv[1], 8080), timeout=2); c.settimeout(0.5)\n\
print('connected', flush=True)\n\
try:\n\
\x20   while True:\n\
\x20       c.sendall(b'x\\n'); c.recv(10); print('echo', time.monotonic(), flush=True); time.sleep(0.05)\n\
except Exception as e:\n\
\x20   print('stopped', time.monotonic(), e, flush=True)\n";

/// What each node's kernel must hold: the other nodes' subnets via their underlay
/// addresses on eth0.
fn expected_routes(nodes: &[Host], subnets: &[Ipv4Network]) -> Vec<BTreeMap<String, String>> {
    (0..nodes.len())
        .map(|i| {
            (0..nodes.len())
                .filter(|j| *j != i)
                .map(|j| {
                    (
                        subnets[j].to_string(),
                        format!("via {} dev eth0", nodes[j].plan.underlay_ip),
                    )
                })
                .collect()
        })
        .collect()
}

fn all_established(d: &Twilld, peers: usize) -> bool {
    d.status()
        .bgp
        .is_some_and(|b| b.peers.len() == peers && b.peers.iter().all(|p| p.state == "Established"))
}

/// Polls every node's twill routes every 50 ms in the background and records every
/// moment one of the expected routes was missing.
struct RouteWatch {
    stop: Arc<AtomicBool>,
    missing: Arc<Mutex<Vec<String>>>,
    polls: Arc<Mutex<u32>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RouteWatch {
    fn start(nodes: Vec<Host>, expected: Vec<BTreeMap<String, String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(Mutex::new(0));
        let (s, m, p) = (stop.clone(), missing.clone(), polls.clone());
        let thread = thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) {
                for (node, want) in nodes.iter().zip(&expected) {
                    let have = twill_routes(node);
                    for (dst, via) in want {
                        if have.get(dst) != Some(via) {
                            m.lock().unwrap().push(format!(
                                "{} at {:?}: {dst} {via} missing (have {have:?})",
                                node.name(),
                                start.elapsed()
                            ));
                        }
                    }
                }
                *p.lock().unwrap() += 1;
                thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            missing,
            polls,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let polls = *self.polls.lock().unwrap();
        (polls, self.missing.lock().unwrap().clone())
    }
}

/// Reads the stream client's lines in the background: the times of its echoes, and how it
/// stopped.
fn collect_stream(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let l = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

fn largest_gap(lines: &[String]) -> f64 {
    let times: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("echo ")?.parse().ok())
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[test]
fn nodes_route_pods_over_an_ibgp_mesh_and_survive_restarts() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let started = Instant::now();
    let mut daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);

    // The mesh: two sessions per node, all established within a few seconds.
    let took = until("every session established", Duration::from_secs(10), || {
        daemons.iter().all(|d| all_established(d, 2))
    });
    eprintln!(
        "mesh established {:?} after the daemons were ready ({:?} after the first start)",
        took,
        started.elapsed()
    );
    let subnets: Vec<Ipv4Network> = daemons
        .iter()
        .map(|d| d.status().subnet.expect("a leased subnet"))
        .collect();
    for (d, subnet) in daemons.iter().zip(&subnets) {
        let bgp = d.status().bgp.unwrap();
        assert_eq!(bgp.announced, Some(*subnet));
        assert_eq!(bgp.as_number, 64512);
        assert!(bgp.refused.is_empty(), "{:?}", bgp.refused);
        for p in &bgp.peers {
            assert_eq!((p.prefixes_sent, p.prefixes_received), (1, 1), "{p:?}");
        }
    }

    // Kernel routes: protocol 66, via the other nodes' underlay addresses; no VXLAN device.
    let expected = expected_routes(&nodes, &subnets);
    until(
        "every node routes every other node's subnet",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .zip(&expected)
                .all(|(n, want)| twill_routes(n) == *want)
        },
    );
    for n in &nodes {
        let links = Command::new("ip")
            .args(["-n", &n.plan.netns, "link", "show"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&links.stdout).contains("twill-vxlan"),
            "{} has a VXLAN device",
            n.name()
        );
    }
    let peers_out = twill_tests::netctl(&sibling("netctl"), &lab, &["bgp", "peers"], "");
    eprintln!("{peers_out}");
    assert_eq!(
        peers_out
            .lines()
            .filter(|l| l.contains("Established"))
            .count(),
        6,
        "{peers_out}"
    );

    // Pods on different nodes.
    let a = add_pod(&mut lab, &nodes[0], &daemons[0], "a");
    let b = add_pod(&mut lab, &nodes[1], &daemons[1], "b");
    let c = add_pod(&mut lab, &nodes[2], &daemons[2], "c");
    let mut servers: Vec<Child> = [&a, &b, &c]
        .iter()
        .map(|p| p.spawn(Pod::python(ECHO, &[])))
        .collect();
    thread::sleep(Duration::from_millis(300));

    // A capture on the underlay while the pods talk: plain IPv4 between pod addresses.
    let underlay = lab.underlay().unwrap();
    let mut capture = underlay
        .run(|| {
            Command::new("tcpdump")
                .args([
                    "-nn", "-l", "-i", "any", "ip", "and", "not", "tcp", "port", "2379",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .unwrap()
        .unwrap();
    let captured = collect_stream(&mut capture);
    thread::sleep(Duration::from_secs(1));
    for (from, to) in [(&a, &b), (&b, &c), (&c, &a), (&a, &c)] {
        assert!(from.reaches(to), "{} does not reach {}", from.ip, to.ip);
    }
    // A node firewall that drops what conntrack calls INVALID (a common hardening rule)
    // lets pods on different nodes talk: the programs send each flow past one node's stack
    // in one direction, so a tracked flow would be one-way and its packets INVALID; twill
    // leaves pod-to-pod traffic untracked.
    let firewall = |op: &str| {
        for n in &nodes {
            let rule = format!("-w {op} FORWARD -m conntrack --ctstate INVALID -j DROP");
            let out = Command::new("ip")
                .args(["netns", "exec", &n.plan.netns, "iptables"])
                .args(rule.split(' '))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "iptables {rule}: {stderr}");
        }
    };
    firewall("-A");
    for (from, to) in [(&a, &b), (&b, &c), (&c, &a)] {
        assert!(
            from.reaches(to),
            "{} does not reach {} past a node's INVALID drop",
            from.ip,
            to.ip
        );
    }
    firewall("-D");
    // Pod MTU = underlay MTU, and a DF ping of that size passes.
    let underlay_mtu: u32 = {
        let out = Command::new("ip")
            .args(["-n", &nodes[0].plan.netns, "-o", "link", "show", "eth0"])
            .output()
            .unwrap();
        link_mtu(&String::from_utf8_lossy(&out.stdout))
    };
    assert_eq!(a.mtu(), underlay_mtu);
    assert_eq!(b.mtu(), underlay_mtu);
    let size = (underlay_mtu - 28).to_string();
    let ping = a.output(cmd(
        "ping",
        &[
            "-M",
            "do",
            "-s",
            &size,
            "-c",
            "2",
            "-W",
            "1",
            &b.ip.to_string(),
        ],
    ));
    assert!(
        ping.contains(" 0% packet loss"),
        "DF ping of {size}: {ping}"
    );
    let too_big = (underlay_mtu - 27).to_string();
    let ping = a.output(cmd(
        "ping",
        &[
            "-M",
            "do",
            "-s",
            &too_big,
            "-c",
            "1",
            "-W",
            "1",
            &b.ip.to_string(),
        ],
    ));
    assert!(
        !ping.contains(" 0% packet loss"),
        "{too_big} bytes fit: {ping}"
    );
    thread::sleep(Duration::from_millis(500));
    let _ = capture.kill();
    let _ = capture.wait();
    let lines = captured.lock().unwrap().clone();
    let pod_to_pod = format!("IP {}.", a.ip);
    let plain: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&pod_to_pod) && l.contains(&format!("> {}.8080", b.ip)))
        .collect();
    assert!(
        !plain.is_empty(),
        "no plain pod-to-pod TCP on the underlay:\n{lines:#?}"
    );
    let encapsulated: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("VXLAN") || l.contains(".4789") || l.contains(".8472"))
        .collect();
    assert!(encapsulated.is_empty(), "{encapsulated:#?}");
    let icmp = lines
        .iter()
        .any(|l| l.contains(&format!("{} > {}: ICMP echo request", a.ip, b.ip)));
    assert!(icmp, "no plain ICMP between the pods:\n{lines:#?}");
    eprintln!(
        "underlay capture: {} lines, {} of a -> b:8080, none encapsulated; pod MTU {underlay_mtu}",
        lines.len(),
        plain.len()
    );

    // kill -9 and restart node2's daemon during a TCP stream from node1's pod to node2's:
    // no route leaves any kernel, the stream has no gap over 0.5 s.
    let mut stream = a.spawn(Pod::python(STREAM, &[&b.ip.to_string()]));
    let stream_lines = collect_stream(&mut stream);
    until("the stream is connected", Duration::from_secs(3), || {
        stream_lines.lock().unwrap().len() > 3
    });
    let watch = RouteWatch::start(nodes.clone(), expected.clone());
    thread::sleep(Duration::from_millis(500));
    let restart_at = Instant::now();
    daemons[1].restart();
    let back = until("node2's sessions established again", RESTART, || {
        all_established(&daemons[1], 2)
    });
    let peers_back = until(
        "node1 and node3 see node2 again",
        Duration::from_secs(5),
        || {
            [&daemons[0], &daemons[2]]
                .iter()
                .all(|d| all_established(d, 2))
        },
    );
    let restart_took = restart_at.elapsed();
    thread::sleep(Duration::from_secs(1));
    let (polls, missing) = watch.finish();
    let _ = stream.kill();
    let _ = stream.wait();
    let lines = stream_lines.lock().unwrap().clone();
    let gap = largest_gap(&lines);
    eprintln!(
        "restart: node2 answered and re-established in {:?} (+{:?} for its peers), {restart_took:?} in all; \
         {polls} route polls of every node, {} misses; stream: {} echoes, largest gap {gap:.3} s",
        back,
        peers_back,
        missing.len(),
        lines.iter().filter(|l| l.starts_with("echo")).count()
    );
    assert!(
        missing.is_empty(),
        "routes missing during the restart:\n{missing:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("stopped")),
        "the stream stopped: {:?}",
        lines.last()
    );
    assert!(gap <= 0.5, "the stream had a gap of {gap:.3} s");
    assert!(polls > 20, "only {polls} polls");
    let log = daemons[1].log_text();
    assert!(
        log.contains("the kernel kept this node's routes"),
        "the restarted daemon did not see its routes:\n{log}"
    );

    // node3's daemon killed for good: its session drops without a NOTIFICATION, so the
    // others keep its route (stale) for the restart time, then remove it.
    daemons[2].kill();
    let killed = Instant::now();
    let node3_route = subnets[2].to_string();
    until(
        "node1 marks node3's route stale",
        Duration::from_secs(3),
        || {
            daemons[0]
                .status()
                .bgp
                .unwrap()
                .peers
                .iter()
                .any(|p| p.node == nodes[2].name() && p.prefixes_stale == 1)
        },
    );
    thread::sleep(Duration::from_secs(3));
    for n in &nodes[..2] {
        assert!(
            twill_routes(n).contains_key(&node3_route),
            "{} dropped node3's route before the restart time",
            n.name()
        );
    }
    until(
        "node3's route leaves node1 and node2",
        RESTART + Duration::from_secs(5),
        || {
            nodes[..2]
                .iter()
                .all(|n| !twill_routes(n).contains_key(&node3_route))
        },
    );
    let gone = killed.elapsed();
    eprintln!(
        "node3 killed: its route left the other nodes after {gone:?} (restart time {RESTART:?})"
    );
    assert!(gone >= RESTART - Duration::from_secs(1), "{gone:?}");

    // node2's daemon frozen (a node that stopped answering, connections open): the hold
    // timer expires and its route leaves node1 at once.
    let node2_route = subnets[1].to_string();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemons[1].child.id() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let frozen = Instant::now();
    until(
        "node2's route leaves node1",
        HOLD + Duration::from_secs(3),
        || !twill_routes(&nodes[0]).contains_key(&node2_route),
    );
    let gone = frozen.elapsed();
    let err = daemons[0]
        .status()
        .bgp
        .unwrap()
        .peers
        .iter()
        .find(|p| p.node == nodes[1].name())
        .and_then(|p| p.last_error.clone());
    eprintln!(
        "node2 frozen: its route left node1 after {gone:?} (hold time {HOLD:?}); last error {err:?}"
    );
    assert!(gone >= HOLD - Duration::from_millis(1500), "{gone:?}");
    assert_eq!(err.as_deref(), Some("hold timer expired"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemons[1].child.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    );

    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// A speaker on the external host ext1, with a node record of its own (node "fake",
/// 10.244.200.0/24): the nodes peer with it as soon as the record appears and install the
/// subnet etcd gives it; a second subnet it announces, which etcd gives nobody, is refused
/// and reported; when the record goes, so do its session and its route.
#[test]
fn a_route_etcd_does_not_assign_to_its_announcer_is_refused_and_reported() {
    use twill_bgp::{
        fsm,
        session::{Listener, Session, SessionConfig},
    };
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 1)).expect("lab up");
    let nodes = lab.nodes();
    let ext = lab.externals()[0].clone();
    let ext_ip = ext.plan.underlay_ip;
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);
    until("the mesh is established", Duration::from_secs(10), || {
        daemons.iter().all(|d| all_established(d, 1))
    });

    let assigned: Ipv4Network = "10.244.200.0/24".parse().unwrap();
    let foreign: Ipv4Network = "10.244.201.0/24".parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let node_ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.plan.underlay_ip).collect();
    let speaker = {
        let stop = stop.clone();
        thread::spawn(move || {
            ext.run(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let any = std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 179);
                        let listener = Listener::bind(any).unwrap();
                        let mut sessions = Vec::new();
                        for ip in node_ips {
                            let mut f = fsm::Config::new(64512, ext_ip, 64512);
                            f.passive = true;
                            f.hold_time = 3;
                            let (s, rx) =
                                Session::start(SessionConfig::new(f, ip), Some(&listener)).unwrap();
                            s.announce(assigned, ext_ip);
                            s.announce(foreign, ext_ip);
                            sessions.push((s, rx));
                        }
                        while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    })
            })
            .unwrap()
        })
    };
    thread::sleep(Duration::from_millis(300));

    let key = twill_api::cluster::node_key("fake");
    let record = serde_json::to_string(&twill_api::cluster::NodeRecord {
        name: "fake".into(),
        subnet: assigned,
        underlay_ip: ext_ip,
        vtep_mac: None,
    })
    .unwrap();
    let put = (key.clone(), record);
    twill_tests::bench::etcd(&lab, async move |mut c: etcd_client::Client| {
        c.put(put.0, put.1, None).await.unwrap();
    });
    let via = format!("via {ext_ip} dev eth0");
    let joined = until(
        "fake's subnet on every node",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .all(|n| twill_routes(n).get(&assigned.to_string()) == Some(&via))
        },
    );
    eprintln!("a new node record: its subnet routed on every node after {joined:?}");
    for (n, d) in nodes.iter().zip(&daemons) {
        assert!(!twill_routes(n).contains_key(&foreign.to_string()));
        let bgp = d.status().bgp.unwrap();
        let want = format!(
            "{foreign} from node fake ({ext_ip}): etcd assigns it to no node; fake holds {assigned}"
        );
        assert_eq!(bgp.refused, [want], "{}", n.name());
        let fake = bgp.peers.iter().find(|p| p.node == "fake").unwrap();
        assert_eq!(fake.prefixes_received, 2);
    }
    let out = twill_tests::netctl(&sibling("netctl"), &lab, &["bgp", "peers"], "");
    assert!(
        out.contains(&format!("refused {foreign} from node fake")),
        "{out}"
    );

    // Drift: twill's route deleted by hand comes back at once; a route of someone else's
    // in the cluster CIDR on the underlay stays.
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &nodes[0].plan.netns])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["route", "del", &assigned.to_string()]);
    let back = until("the deleted route is back", Duration::from_secs(2), || {
        twill_routes(&nodes[0]).get(&assigned.to_string()) == Some(&via)
    });
    eprintln!("a twill route deleted by hand: back after {back:?}");
    let ext_ip_text = ext_ip.to_string();
    ip(&[
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        &ext_ip_text,
        "dev",
        "eth0",
    ]);
    thread::sleep(Duration::from_millis(2500));
    let out = Command::new("ip")
        .args([
            "-n",
            &nodes[0].plan.netns,
            "route",
            "show",
            "10.244.250.0/24",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("via"),
        "a foreign route was removed"
    );

    twill_tests::bench::etcd(&lab, async move |mut c: etcd_client::Client| {
        c.delete(key, None).await.unwrap();
    });
    let left = until(
        "fake's route leaves every node",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .all(|n| !twill_routes(n).contains_key(&assigned.to_string()))
        },
    );
    eprintln!("the node record deleted: its route left every node after {left:?}");
    for d in &daemons {
        let bgp = d.status().bgp.unwrap();
        assert!(bgp.refused.is_empty(), "{:?}", bgp.refused);
        assert_eq!(bgp.peers.len(), 1);
    }
    stop.store(true, Ordering::Relaxed);
    speaker.join().unwrap();
}

/// `bgp.password_file`: the same password on both nodes establishes the session; a node
/// started again with another one never does, and says why.
#[test]
fn sessions_use_the_md5_password_and_a_mismatch_is_reported() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let password = |text: &str| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    };
    let (right, wrong) = (password("s3cret\n"), password("other\n"));
    let config = |f: &tempfile::NamedTempFile| {
        format!("{CONFIG}password_file = \"{}\"\n", f.path().display())
    };
    let mut daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| Twilld::start(Path::new(TWILLD), &lab, n, &config(&right), &[]))
        .collect();
    until(
        "established with matching passwords",
        Duration::from_secs(10),
        || daemons.iter().all(|d| all_established(d, 1)),
    );
    daemons.pop();
    daemons.push(Twilld::start(
        Path::new(TWILLD),
        &lab,
        &nodes[1],
        &config(&wrong),
        &[],
    ));
    let peer_error = |d: &Twilld| {
        d.status()
            .bgp
            .and_then(|b| b.peers.first().cloned())
            .map(|p| (p.state, p.last_error.unwrap_or_default()))
            .unwrap_or_default()
    };
    // node2 is the passive side: its kernel drops node1's SYNs and counts them.
    let took = until(
        "node2 reports the mismatch",
        Duration::from_secs(15),
        || peer_error(&daemons[1]).1.contains("MD5 mismatch"),
    );
    let (state1, error1) = peer_error(&daemons[0]);
    let (state2, error2) = peer_error(&daemons[1]);
    eprintln!("MD5 mismatch after {took:?}: node1 {state1} ({error1}); node2 {state2} ({error2})");
    assert_ne!(state1, "Established");
    assert_ne!(state2, "Established");
}

//! The BGP-routed mode across two underlay subnets: node1 and node2 on 172.30.0.0/24, node3
//! on 172.31.0.0/24, a router namespace between them (the lab's `second_subnet`). The
//! router forwards the underlay's packets but knows no pod routes.
//!
//! - With `bgp.cross_subnet = true`: node1 and node2 route each other's pod subnets as
//!   plain routes via their underlay addresses; node3's subnet, and from node3 both others,
//!   go through the VXLAN device; pods on all three nodes reach each other at the VXLAN MTU,
//!   and what crosses the router between pods is VXLAN.
//! - Without it: node3's subnet is not routed, the status says why, and there is no VXLAN
//!   device; node1 and node2 route each other plainly.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use twill_lab::{Lab, LabSpec};
use twill_tests::{daemon::Twilld, require_root, scripts::ECHO};

mod common;
use common::{add_pod, cmd, ip, link_mtu, twill_routes, until};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\noverlay = \"bgp\"\nresync_seconds = 1\n\
[bgp]\nhold_seconds = 3\nkeepalive_seconds = 1\nrestart_seconds = 15\n";
const DEVICE: &str = "twill-vxlan";

fn established(d: &Twilld, peers: usize) -> bool {
    d.status()
        .bgp
        .is_some_and(|b| b.peers.len() == peers && b.peers.iter().all(|p| p.state == "Established"))
}

/// A lab with node3 behind the router.
fn lab() -> Lab {
    Lab::up(&LabSpec {
        second_subnet: 1,
        ..LabSpec::for_test(3, 0)
    })
    .expect("lab up")
}

/// What a capture of `filter` on the router's second-subnet side printed while `during`
/// ran (`tcpdump -i eth1 -n`).
fn capture_at_router(lab: &Lab, filter: &str, during: impl FnOnce()) -> Vec<String> {
    let router = lab.manifest().plan.router.clone().expect("a router");
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &router.netns,
            "tcpdump",
            "-i",
            "eth1",
            "-n",
            "-l",
        ])
        .arg(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    thread::sleep(Duration::from_millis(700));
    during();
    thread::sleep(Duration::from_millis(300));
    let _ = tcpdump.kill();
    let out = tcpdump.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn nodes_on_another_subnet_are_reached_through_vxlan_and_the_others_plainly() {
    require_root();
    let mut lab = lab();
    let nodes = lab.nodes();
    assert_eq!(nodes[2].plan.underlay_ip, Ipv4Addr::new(172, 31, 0, 13));
    let config = format!("{CONFIG}cross_subnet = true\n");
    let mut daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, &config);
    let took = until(
        "every node's two sessions established (node3's across the router)",
        Duration::from_secs(15),
        || daemons.iter().all(|d| established(d, 2)),
    );
    eprintln!("mesh across the router established {took:?} after the daemons were ready");
    let subnets: Vec<Ipv4Network> = daemons
        .iter()
        .map(|d| d.status().subnet.expect("a leased subnet"))
        .collect();
    let vtep = |i: usize| twill_ipam::PodSubnet(subnets[i]).node_address();
    let plain = |i: usize| format!("via {} dev eth0", nodes[i].plan.underlay_ip);
    let tunnelled = |i: usize| format!("via {} dev {DEVICE} onlink", vtep(i));
    // node1 and node2: each other plainly, node3 through VXLAN; node3: both through VXLAN.
    let want: Vec<BTreeMap<String, String>> = vec![
        [(1, plain(1)), (2, tunnelled(2))].into(),
        [(0, plain(0)), (2, tunnelled(2))].into(),
        [(0, tunnelled(0)), (1, tunnelled(1))].into(),
    ]
    .into_iter()
    .map(|m: BTreeMap<usize, String>| {
        m.into_iter()
            .map(|(j, r)| (subnets[j].to_string(), r))
            .collect()
    })
    .collect();
    until(
        "every node routes the others: plainly on its segment, through VXLAN across",
        Duration::from_secs(10),
        || nodes.iter().zip(&want).all(|(n, w)| twill_routes(n) == *w),
    );
    for (n, w) in nodes.iter().zip(&want) {
        eprintln!("{}: {w:?}", n.name());
    }
    // On node1 the VXLAN device holds node3 only: its FDB entry points at node3's underlay
    // address; nothing of node2's is on it.
    let device_routes = ip(&nodes[0], &["-4", "route", "show", "dev", DEVICE]);
    assert!(
        device_routes.contains(&subnets[2].to_string())
            && !device_routes.contains(&subnets[1].to_string()),
        "{device_routes}"
    );
    let fdb = Command::new("bridge")
        .args(["-n", &nodes[0].plan.netns, "fdb", "show", "dev", DEVICE])
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(fdb.contains("dst 172.31.0.13"), "{fdb}");
    assert!(!fdb.contains("dst 172.30.0.12"), "{fdb}");
    for d in &daemons {
        let s = d.status();
        let bgp = s.bgp.as_ref().unwrap();
        assert!(bgp.refused.is_empty(), "{}: {:?}", d.node, bgp.refused);
        assert_eq!(bgp.problem, None, "{}", d.node);
        assert_eq!(bgp.routes, 2, "{}", d.node);
        let overlay = &s.overlay;
        assert_eq!((overlay.peers, &overlay.problem), (2, &None), "{}", d.node);
    }

    // Pods on the three nodes reach each other, at the VXLAN MTU.
    let a = add_pod(&mut lab, &nodes[0], &daemons[0], "a");
    let b = add_pod(&mut lab, &nodes[1], &daemons[1], "b");
    let c = add_pod(&mut lab, &nodes[2], &daemons[2], "c");
    let mut servers: Vec<Child> = [&a, &b, &c]
        .iter()
        .map(|p| p.spawn(cmd("python3", &["-c", ECHO])))
        .collect();
    thread::sleep(Duration::from_millis(300));
    for (from, to) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a), (&b, &c), (&c, &b)] {
        assert!(from.reaches(to), "{} does not reach {}", from.ip, to.ip);
    }
    let underlay_mtu = link_mtu(&ip(&nodes[0], &["-o", "link", "show", "eth0"]));
    let pod_mtu = underlay_mtu - 50;
    for p in [&a, &b, &c] {
        assert_eq!(p.mtu(), pod_mtu, "{}", p.ip);
    }
    // The largest DF packet a pod can send crosses the router in VXLAN, and goes plainly
    // on the segment.
    assert!(
        a.df_ping(&c, pod_mtu - 28),
        "DF ping of {} to node3",
        pod_mtu - 28
    );
    assert!(
        c.df_ping(&b, pod_mtu - 28),
        "DF ping of {} from node3",
        pod_mtu - 28
    );
    assert!(
        a.df_ping(&b, pod_mtu - 28),
        "DF ping of {} to node2",
        pod_mtu - 28
    );

    // Across the router: VXLAN between the nodes' underlay addresses, never a pod address
    // in the clear.
    let udp = capture_at_router(&lab, "udp", || {
        assert!(a.df_ping(&c, 100));
    });
    let icmp = capture_at_router(&lab, "icmp", || {
        assert!(a.df_ping(&c, 100));
    });
    eprintln!("at the router, udp:\n{}", udp.join("\n"));
    assert!(
        udp.iter()
            .any(|l| l.contains("172.30.0.11.") && l.contains("> 172.31.0.13.")),
        "{udp:?}"
    );
    assert!(
        udp.iter()
            .any(|l| l.contains("VXLAN") || l.contains(&format!("{} > {}", a.ip, c.ip))),
        "{udp:?}"
    );
    assert!(
        icmp.iter()
            .all(|l| !l.contains(&format!("IP {} > {}", a.ip, c.ip))),
        "pod ICMP crossed the router unencapsulated: {icmp:?}"
    );

    // node1's twilld killed and started again: the VXLAN device and its entries stay, so
    // node1's route to node3 is never missing (polled every 50 ms), and pods still reach.
    let node1 = &mut daemons[0];
    let watch = {
        let node = nodes[0].clone();
        let want = want[0].clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let poll = thread::spawn(move || {
            let mut missing = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = twill_routes(&node);
                if now != want {
                    missing.push(now);
                }
                thread::sleep(Duration::from_millis(50));
            }
            missing
        });
        (stop, poll)
    };
    let restarted_at = Instant::now();
    node1.restart();
    node1.wait_status("sessions up again", Duration::from_secs(15), |s| {
        s.bgp
            .as_ref()
            .is_some_and(|b| b.peers.len() == 2 && b.peers.iter().all(|p| p.state == "Established"))
    });
    eprintln!(
        "node1 restarted, sessions established again {:?} later",
        restarted_at.elapsed()
    );
    thread::sleep(Duration::from_secs(1));
    watch.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let changed = watch.1.join().unwrap();
    assert!(changed.is_empty(), "node1's routes changed: {changed:?}");
    assert!(
        node1
            .log_text()
            .contains("the kernel kept this node's routes"),
        "{}",
        node1.log_text()
    );
    assert!(a.reaches(&c) && c.reaches(&a));
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

#[test]
fn without_the_fallback_a_node_on_another_subnet_is_not_routed_and_the_status_says_why() {
    require_root();
    let lab = lab();
    let nodes = lab.nodes();
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);
    until(
        "every node's two sessions established",
        Duration::from_secs(15),
        || daemons.iter().all(|d| established(d, 2)),
    );
    let subnets: Vec<Ipv4Network> = daemons
        .iter()
        .map(|d| d.status().subnet.expect("a leased subnet"))
        .collect();
    let why = format!(
        "{} via node node3 (172.31.0.13): not on this node's underlay subnet 172.30.0.0/24; \
         bgp.cross_subnet = true reaches it through VXLAN",
        subnets[2]
    );
    let s = daemons[0].wait_status("reporting node3 unrouted", Duration::from_secs(10), |s| {
        s.bgp.as_ref().is_some_and(|b| b.refused.contains(&why))
    });
    let bgp = s.bgp.unwrap();
    assert_eq!(
        bgp.problem.as_deref(),
        Some(
            "not routed, not on this node's underlay subnet 172.30.0.0/24 (bgp.cross_subnet \
             is off): node node3 (172.31.0.13)"
        )
    );
    assert!(
        s.overlay
            .problem
            .as_ref()
            .is_some_and(|p| p.contains("node node3 (172.31.0.13)")),
        "{:?}",
        s.overlay
    );
    // node1 routes node2 plainly and node3 not at all; nobody has a VXLAN device.
    assert_eq!(
        twill_routes(&nodes[0]),
        BTreeMap::from([(
            subnets[1].to_string(),
            "via 172.30.0.12 dev eth0".to_owned()
        )])
    );
    assert!(twill_routes(&nodes[2]).is_empty());
    for n in &nodes {
        assert_eq!(ip(n, &["link", "show", DEVICE]), "", "{}", n.name());
    }
}

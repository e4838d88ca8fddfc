//! Pod-to-pod TCP throughput across two lab nodes with iperf3, in one run:
//! - twill: a pod on each node, wired by the CNI binary, over twill's VXLAN overlay;
//! - hand-built VXLAN: a kernel VXLAN device made with `ip link` between the same two node
//!   namespaces, nothing else (the anchor: what the kernel's VXLAN gives on this machine);
//! - plain: the node namespaces' underlay addresses, no encapsulation (the ceiling).
//!
//! Rounds are interleaved so drift on a noisy machine hits all three alike; medians are
//! printed with twill's ratio to hand-built VXLAN (target >= 0.95).
//! Run as root with `scripts/bench`. ROUNDS=N (default 9), SECONDS=S per run (default 5):
//! single runs here vary more than the gap being measured, so the medians need both.

use std::{path::Path, time::Duration};

use twill_lab::{Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{env_or, iperf, median},
    cni,
    daemon::Twilld,
    require_root,
};

fn ns_of(path: &str) -> NetNs {
    NetNs::from_path(path).unwrap()
}

fn run(host: &twill_lab::Host, args: &[&str]) {
    let out = host.output(args[0], &args[1..]).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    require_root();
    let rounds: usize = env_or("ROUNDS", 9);
    let seconds: u32 = env_or("SECONDS", 5);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let twill = twilld.with_file_name("twill");
    assert!(
        twill.exists(),
        "{} missing: run scripts/bench",
        twill.display()
    );

    // twill: a lab with daemons and a pod on each node.
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| Twilld::start(twilld, &lab, n, "", &[]))
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    let mut pods = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (netns, ip) = cni::add_pod(&twill, &mut lab, node, &daemons[i], &format!("tp{i}"), "");
        pods.push((netns, ip.to_string()));
    }

    // Hand-built VXLAN between the same two node namespaces: 10.99.0.1 <-> 10.99.0.2.
    for (i, node) in nodes.iter().enumerate() {
        let me = node.plan.underlay_ip.to_string();
        let peer = nodes[1 - i].plan.underlay_ip.to_string();
        run(
            node,
            &[
                "ip", "link", "add", "vx-hand", "type", "vxlan", "id", "42", "dev", "eth0",
                "local", &me, "remote", &peer, "dstport", "4789",
            ],
        );
        run(node, &["ip", "link", "set", "vx-hand", "mtu", "1450", "up"]);
        run(
            node,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                "vx-hand",
            ],
        );
    }

    let node_ns: Vec<NetNs> = nodes.iter().map(|n| n.netns().unwrap()).collect();
    let (mut twill_runs, mut hand_runs, mut plain_runs) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        twill_runs.push(iperf(
            &ns_of(&pods[1].0),
            &ns_of(&pods[0].0),
            &pods[1].1,
            seconds,
        ));
        hand_runs.push(iperf(&node_ns[1], &node_ns[0], "10.99.0.2", seconds));
        plain_runs.push(iperf(
            &node_ns[1],
            &node_ns[0],
            &nodes[1].plan.underlay_ip.to_string(),
            seconds,
        ));
    }
    let (t, h, p) = (
        median(twill_runs.clone()),
        median(hand_runs.clone()),
        median(plain_runs.clone()),
    );
    println!(
        "pod-to-pod TCP throughput across two lab nodes, iperf3 {seconds} s x {rounds} rounds (Gbit/s, median)"
    );
    println!("  twill (veth + VXLAN overlay):     {t:6.2}   runs {twill_runs:.2?}");
    println!("  hand-built kernel VXLAN:          {h:6.2}   runs {hand_runs:.2?}");
    println!("  plain routed, no encapsulation:   {p:6.2}   runs {plain_runs:.2?}");
    println!(
        "  twill / hand-built VXLAN: {:.2} (target >= 0.95); twill / plain: {:.2}",
        t / h,
        t / p
    );
    println!("target: {}", if t / h >= 0.95 { "met" } else { "MISSED" });
    drop(daemons);
    lab.down().unwrap();
}

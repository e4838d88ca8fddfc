//! Pod-to-pod TCP throughput across two nodes with iperf3, in one run, three two-node labs
//! side by side:
//! - twill BGP: `twilld` in BGP mode on both nodes, a pod on each wired by the CNI binary;
//!   pod -> veth -> node1 -> underlay (plain IP, pod addresses) -> node2 -> veth -> pod;
//! - plain routed veth (the limit): the same topology made by hand in a lab without any
//!   daemon: a namespace per node as the pod, a veth pair to the node, static routes to the
//!   other node's pod subnet via its underlay address; no encapsulation, no programs;
//! - twill VXLAN: `twilld` in its default VXLAN mode, a pod on each node.
//!
//! Rounds are interleaved, the order rotating each round, so drift on a noisy machine hits
//! all three alike; medians printed with BGP / plain (target >= 0.97) and BGP / VXLAN.
//! Run as root with `scripts/bench`. ROUNDS=N (default 9), SECONDS=S per run (default 5).

use std::{path::Path, time::Duration};

use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{env_or, iperf, median},
    cni,
    daemon::Twilld,
    require_root,
};

const BGP: &str = "[network]\noverlay = \"bgp\"\n";

fn run(host: &Host, args: &[&str]) {
    let out = host.output(args[0], &args[1..]).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lab whose daemons run `config`, with a pod on each node: the lab, the daemons, and
/// the pods' namespaces and addresses.
fn twill_lab(twilld: &Path, config: &str, name: &str) -> (Lab, Vec<Twilld>, Vec<(NetNs, String)>) {
    let twill = twilld.with_file_name("twill");
    assert!(
        twill.exists(),
        "{} missing: run scripts/bench",
        twill.display()
    );
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| Twilld::start(twilld, &lab, n, config, &[]))
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    let mut pods = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (netns, ip) = cni::add_pod(
            &twill,
            &mut lab,
            node,
            &daemons[i],
            &format!("{name}{i}"),
            "",
        );
        pods.push((NetNs::from_path(&netns).unwrap(), ip.to_string()));
    }
    (lab, daemons, pods)
}

/// The hand-built limit: on each node of a daemon-less lab, a pod namespace with
/// `10.98.(i+1).2/24` on a veth to the node (`10.98.(i+1).1`), and a route on the node to
/// the other pod subnet via the other node's underlay address.
fn plain_lab() -> (Lab, Vec<(NetNs, String)>) {
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let mut pods = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let pod = lab.create_netns(&format!("plain{i}")).unwrap();
        let pod_name = pod.name().expect("a named namespace").to_owned();
        let (net, other) = (i + 1, 2 - i);
        let peer = nodes[1 - i].plan.underlay_ip.to_string();
        run(node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(
            node,
            &[
                "ip", "link", "add", "vp0", "type", "veth", "peer", "name", "eth0", "netns",
                &pod_name,
            ],
        );
        run(
            node,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.98.{net}.1/24"),
                "dev",
                "vp0",
            ],
        );
        run(node, &["ip", "link", "set", "vp0", "up"]);
        run(
            node,
            &[
                "ip",
                "route",
                "add",
                &format!("10.98.{other}.0/24"),
                "via",
                &peer,
                "dev",
                "eth0",
            ],
        );
        let in_pod = |args: &[&str]| {
            let mut all = vec!["-n", pod_name.as_str()];
            all.extend_from_slice(args);
            let out = std::process::Command::new("ip")
                .args(&all)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {all:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        in_pod(&["link", "set", "lo", "up"]);
        in_pod(&["addr", "add", &format!("10.98.{net}.2/24"), "dev", "eth0"]);
        in_pod(&["link", "set", "eth0", "up"]);
        in_pod(&["route", "add", "default", "via", &format!("10.98.{net}.1")]);
        pods.push((pod, format!("10.98.{net}.2")));
    }
    (lab, pods)
}

fn main() {
    require_root();
    let rounds: usize = env_or("ROUNDS", 9);
    let seconds: u32 = env_or("SECONDS", 5);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));

    let (bgp_lab, bgp_daemons, bgp_pods) = twill_lab(twilld, BGP, "bgp");
    // The BGP lab's pods reach each other only once the sessions have carried the routes.
    bgp_daemons[0].wait_status("routing node2's pods", Duration::from_secs(20), |s| {
        s.bgp.as_ref().is_some_and(|b| b.routes == 1)
    });
    bgp_daemons[1].wait_status("routing node1's pods", Duration::from_secs(20), |s| {
        s.bgp.as_ref().is_some_and(|b| b.routes == 1)
    });
    let (vxlan_lab, vxlan_daemons, vxlan_pods) = twill_lab(twilld, "", "vx");
    let (plain, plain_pods) = plain_lab();

    let setups = [
        ("bgp", &bgp_pods),
        ("plain", &plain_pods),
        ("vxlan", &vxlan_pods),
    ];
    let mut runs: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    for round in 0..rounds {
        for k in 0..setups.len() {
            let s = (round + k) % setups.len();
            let pods = setups[s].1;
            let gbit = iperf(&pods[1].0, &pods[0].0, &pods[1].1, seconds);
            assert!(gbit > 0.0, "iperf3 over {} failed", setups[s].0);
            runs[s].push(gbit);
        }
    }
    let [b, p, v] = runs.clone().map(median);
    println!(
        "pod-to-pod TCP throughput across two nodes, iperf3 {seconds} s x {rounds} rounds (Gbit/s, median)"
    );
    println!(
        "  twill BGP (veth, routed, no encapsulation): {b:6.2}   runs {:.2?}",
        runs[0]
    );
    println!(
        "  plain routed veth, hand-built (the limit):  {p:6.2}   runs {:.2?}",
        runs[1]
    );
    println!(
        "  twill VXLAN:                                {v:6.2}   runs {:.2?}",
        runs[2]
    );
    println!(
        "  BGP / plain: {:.2} (target >= 0.97); BGP / VXLAN: {:.2}",
        b / p,
        b / v
    );
    println!("target: {}", if b / p >= 0.97 { "met" } else { "MISSED" });
    drop(bgp_daemons);
    drop(vxlan_daemons);
    bgp_lab.down().unwrap();
    vxlan_lab.down().unwrap();
    plain.down().unwrap();
}

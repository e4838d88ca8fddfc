//! Throughput of an allowed pod-to-pod TCP stream across two lab nodes with 10,000
//! NetworkPolicies in the cluster, against pods no policy selects, with iperf3, in one run.
//!
//! Both nodes run `twilld`; on each, two pods wired by the `twill` CNI binary: the client
//! (node1) and the server (node2) in namespace `bench`, which two policies select (the
//! server takes TCP 8080 from the client, the client may open TCP 8080 on the server), and
//! a client and a server in namespace `open` that no policy selects. The other 10,000
//! policies are those of `policy_connect` (see `common/policy.rs`). iperf3 runs on 8080.
//!
//! First, with no policy at all, both pairs are measured (their ratio says how alike the
//! two pairs are); then, with the policies in place and checked to be enforced (the flow
//! connects; a port no policy allows, a client the server's policy does not name and a
//! server the client's policy does not name are denied), both again. Rounds alternate the
//! pairs, starting with the other pair each round; medians and the ratio are printed
//! (target: policed / open >= 0.97 with 10,000 policies).
//! Run as root with `scripts/bench`. ROUNDS=N (default 7), SECONDS=S per run (default 5).

#[path = "common/policy.rs"]
mod common;

use std::{path::Path, time::Instant};

use common::{
    CLIENT, CLOSED_PORT, OPEN_CLIENT, OPEN_SERVER, PORT, Quartet, SERVER, allowing_policies,
    assert_isolated_by, median, namespace_wide, other_policy, store_entries, wait_reconciled,
};
use twill_k8s::Object;
use twill_lab::{Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{env_or, iperf, listener as listen, put_all},
    daemon::Twilld,
    require_root,
};

const CONFIG: &str = "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";
const POLICIES: u32 = 10_000;

/// Both pairs, `rounds` times, alternating which goes first: the runs of (policed, open).
fn measure(q: &Quartet, servers: [&NetNs; 2], rounds: usize, seconds: u32) -> [Vec<f64>; 2] {
    let pairs = [
        (servers[0], &q.client, q.server.to_string()),
        (servers[1], &q.open_client, q.open_server.to_string()),
    ];
    let mut runs: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        for k in 0..2 {
            let i = (round + k) % 2;
            let (server, client, ip) = &pairs[i];
            runs[i].push(iperf(server, client, ip, seconds));
        }
    }
    runs
}

fn main() {
    require_root();
    let rounds: usize = env_or("ROUNDS", 7);
    let seconds: u32 = env_or("SECONDS", 5);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let twill = twilld.with_file_name("twill");
    assert!(
        twill.exists(),
        "{} missing: `cargo build --release --bins` first (scripts/bench does)",
        twill.display()
    );
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemons = Twilld::start_on_every_node(twilld, &lab, CONFIG);
    let pods = [&CLIENT, &SERVER, &OPEN_CLIENT, &OPEN_SERVER];
    put_all(&lab, &store_entries(pods.iter().map(|p| p.object())));
    // Clients on node1, servers on node2.
    let [client, server, open_client, open_server] = pods.map(|p| {
        let n = usize::from(p.name.ends_with("server"));
        p.wire(&twill, &mut lab, &nodes[n], &daemons[n])
    });
    let client_ip = client.1;
    let q = Quartet {
        client: client.0,
        server: server.1,
        open_client: open_client.0,
        open_server: open_server.1,
    };
    let servers = [&server.0, &open_server.0];
    // The probes need listeners; iperf3 takes PORT over afterwards.
    let check = |side: &str, enforced: bool| {
        let _listeners = [
            listen(&server.0, PORT),
            listen(&server.0, CLOSED_PORT),
            listen(&open_server.0, PORT),
        ];
        q.assert_enforced(side, enforced);
    };

    assert_isolated_by(&daemons[1], q.server, 0, 0);
    check("twill with no policy", false);
    let none = measure(&q, servers, rounds, seconds);

    let mut objects: Vec<Object> = allowing_policies()
        .into_iter()
        .map(Object::NetworkPolicy)
        .collect();
    objects.extend((0..POLICIES).map(|i| Object::NetworkPolicy(other_policy(i))));
    let total = objects.len();
    let started = Instant::now();
    put_all(&lab, &store_entries(objects));
    for d in &daemons {
        wait_reconciled(d, total);
    }
    let wide = namespace_wide(POLICIES);
    assert_isolated_by(&daemons[1], q.server, 1 + wide, 0);
    assert_isolated_by(&daemons[0], client_ip, wide, 1);
    eprintln!(
        "{total} policies written and programmed on both nodes in {:.1?}",
        started.elapsed()
    );
    check(&format!("twill with {POLICIES} policies"), true);
    let with = measure(&q, servers, rounds, seconds);

    println!(
        "pod-to-pod TCP throughput across two lab nodes, iperf3 {seconds} s x {rounds} rounds (Gbit/s, median)"
    );
    let [none_policed, none_open] = none.clone().map(median);
    let [policed, open] = with.clone().map(median);
    println!(
        "  no policy:       client/server pair {none_policed:6.2}   open pair {none_open:6.2}   \
         ratio {:.2} (how alike the pairs are)",
        none_policed / none_open
    );
    println!("    runs {:.2?} / {:.2?}", none[0], none[1]);
    println!(
        "  {POLICIES} policies: client/server pair {policed:6.2}   open pair {open:6.2}   \
         ratio {:.2} (target >= 0.97)",
        policed / open
    );
    println!("    runs {:.2?} / {:.2?}", with[0], with[1]);
    println!(
        "  ratio with policies / ratio without: {:.2} (the same, less the pairs' difference)",
        (policed / open) / (none_policed / none_open)
    );
    println!(
        "  (the client/server pair is selected by the policies that allow its flow, and by \
         the 50 namespace-wide ones among the others; the open pair by none)"
    );
    println!(
        "target: {}",
        if policed / open >= 0.97 {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(daemons);
    lab.down().expect("lab down");
}

//! BGP convergence on a 3-node lab in BGP mode with twill's defaults (hold time 9 s,
//! keepalive 3 s, graceful restart 120 s, lease TTL 30 s):
//!
//! - death: a node's `eth0` is set down inside its own namespace and its `twilld` killed
//!   with SIGKILL, so its peers hear nothing more (no FIN, no NOTIFICATION); measured, from
//!   that moment, until its subnet's route has left the kernel of every other node. The
//!   hold timer removes it: expected between hold - keepalive and hold (6-9 s), as the
//!   peers' timers last restarted at the last KEEPALIVE they got. The victim rotates over
//!   the nodes; after each round its link comes back and its `twilld` starts again.
//! - join: a node's `twilld` starts (its earlier record deleted from etcd and its routes
//!   flushed, so it comes as a new node); measured from the moment its node record (its
//!   lease) appears in etcd, seen by a watch, until its subnet's route is in the kernel of
//!   every other node. Target: <= 1 s.
//!
//! The routes are polled with netlink in each node's namespace every 5 ms. Medians over
//! the rounds. Run as root with `scripts/bench`. ROUNDS=N (default 5) for each part.

#[path = "common/bgp.rs"]
mod common;

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use etcd_client::{EventType, WatchOptions};
use ipnetwork::Ipv4Network;
use twill_api::cluster;
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{
    bench::{env_or, etcd},
    daemon::Twilld,
    require_root,
};

use common::{Poller, median_max, ms, routes};

const CONFIG: &str = "[network]\noverlay = \"bgp\"\n";
const HOLD: Duration = Duration::from_secs(9);
const KEEPALIVE: Duration = Duration::from_secs(3);

fn run(host: &Host, args: &[&str]) {
    let out = host.output(args[0], &args[1..]).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn established(d: &Twilld, peers: usize) -> bool {
    d.try_request(&twill_api::Request::Status)
        .ok()
        .and_then(|r| match r {
            twill_api::Response::Status { status } => status.bgp,
            _ => None,
        })
        .is_some_and(|b| b.peers.len() == peers && b.peers.iter().all(|p| p.state == "Established"))
}

/// Waits until every daemon has every session up and every node routes every other
/// node's subnet; returns the subnets.
fn settle(nodes: &[Host], daemons: &[Twilld]) -> Vec<Ipv4Network> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let subnets: Vec<Option<Ipv4Network>> = daemons
            .iter()
            .map(|d| {
                d.try_request(&twill_api::Request::Status)
                    .ok()
                    .and_then(|r| match r {
                        twill_api::Response::Status { status } => status.subnet,
                        _ => None,
                    })
            })
            .collect();
        let up = daemons.iter().all(|d| established(d, nodes.len() - 1));
        if up && subnets.iter().all(Option::is_some) {
            let subnets: Vec<Ipv4Network> = subnets.into_iter().flatten().collect();
            let routed = nodes.iter().enumerate().all(|(i, n)| {
                let have = routes(&n.netns().unwrap());
                (0..nodes.len())
                    .filter(|j| *j != i)
                    .all(|j| have.get(&subnets[j]) == Some(&nodes[j].plan.underlay_ip))
            });
            if routed {
                return subnets;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the mesh did not settle in 60 s:\n{}",
            daemons
                .iter()
                .map(|d| d.log_text())
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A watch on `node`'s record in etcd, from a thread in the underlay namespace: sends
/// `()` once the watch is in place, then the moment the record is written.
fn watch_record(lab: &Lab, node: &str) -> (mpsc::Receiver<()>, mpsc::Receiver<Instant>) {
    let (ready_tx, ready) = mpsc::channel();
    let (at_tx, at) = mpsc::channel();
    let key = cluster::node_key(node);
    let endpoint = lab.etcd_endpoint();
    let underlay = lab.underlay().unwrap();
    thread::spawn(move || {
        underlay
            .run(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                            .await
                            .unwrap();
                        let mut stream = c
                            .watch(key.as_str(), Some(WatchOptions::new()))
                            .await
                            .unwrap();
                        let _ = ready_tx.send(());
                        while let Ok(Some(r)) = stream.message().await {
                            if r.events().iter().any(|e| e.event_type() == EventType::Put) {
                                let _ = at_tx.send(Instant::now());
                                return;
                            }
                        }
                    })
            })
            .unwrap();
    });
    (ready, at)
}

fn last_error(d: &Twilld, of: &str) -> Option<String> {
    d.status()
        .bgp?
        .peers
        .into_iter()
        .find(|p| p.node == of)
        .and_then(|p| p.last_error)
}

fn main() {
    require_root();
    let rounds: usize = env_or("ROUNDS", 5);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let mut daemons = Twilld::start_on_every_node(twilld, &lab, CONFIG);
    let mut subnets = settle(&nodes, &daemons);

    // Death: link down inside the node, then SIGKILL.
    let mut deaths = Vec::new();
    let mut errors = Vec::new();
    for round in 0..rounds {
        let v = round % nodes.len();
        let victim = &nodes[v];
        let subnet = subnets[v];
        let pollers: Vec<(String, Poller)> = (0..nodes.len())
            .filter(|i| *i != v)
            .map(|i| {
                (
                    nodes[i].name().to_owned(),
                    Poller::start(nodes[i].netns().unwrap(), HOLD * 3, move |r| {
                        !r.contains_key(&subnet)
                    }),
                )
            })
            .collect();
        let died = Instant::now();
        run(victim, &["ip", "link", "set", "eth0", "down"]);
        daemons[v].kill();
        let gone: Vec<(String, f64)> = pollers
            .into_iter()
            .map(|(n, p)| {
                let at = p.wait().unwrap_or_else(|| {
                    panic!(
                        "{}'s route still on {n} after {:?}",
                        victim.name(),
                        HOLD * 3
                    )
                });
                (n, ms(died, at))
            })
            .collect();
        let all = gone.iter().map(|(_, t)| *t).fold(0.0, f64::max);
        let err: Vec<String> = (0..nodes.len())
            .filter(|i| *i != v)
            .map(|i| {
                last_error(&daemons[i], victim.name()).unwrap_or_else(|| "no error".to_owned())
            })
            .collect();
        eprintln!(
            "death {}: {} gone from every other node after {all:.0} ms ({gone:?}); their last error: {err:?}",
            round + 1,
            victim.name()
        );
        deaths.push(all);
        errors.extend(err);
        // Back: link up, the default route again, twilld again.
        run(victim, &["ip", "link", "set", "eth0", "up"]);
        run(
            victim,
            &[
                "ip",
                "route",
                "replace",
                "default",
                "via",
                "172.30.0.1",
                "dev",
                "eth0",
            ],
        );
        daemons[v].restart();
        subnets = settle(&nodes, &daemons);
    }

    // Join: the last node comes as a new one.
    let j = nodes.len() - 1;
    let joiner = nodes[j].clone();
    let joiner_ip = joiner.plan.underlay_ip;
    let mut joins = Vec::new();
    for round in 0..rounds {
        daemons[j].kill();
        let key = cluster::node_key(joiner.name());
        etcd(&lab, async move |mut c: etcd_client::Client| {
            c.delete(key, None).await.unwrap();
        });
        run(&joiner, &["ip", "route", "flush", "proto", "66"]);
        let old = subnets[j];
        let deadline = Instant::now() + Duration::from_secs(10);
        while (0..j).any(|i| routes(&nodes[i].netns().unwrap()).contains_key(&old)) {
            assert!(
                Instant::now() < deadline,
                "{}'s route stayed after its record was deleted",
                joiner.name()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let pollers: Vec<(String, Poller)> = (0..j)
            .map(|i| {
                (
                    nodes[i].name().to_owned(),
                    Poller::start(
                        nodes[i].netns().unwrap(),
                        Duration::from_secs(30),
                        move |r| r.values().any(|via: &Ipv4Addr| *via == joiner_ip),
                    ),
                )
            })
            .collect();
        let (ready, written) = watch_record(&lab, joiner.name());
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the etcd watch starts");
        daemons[j].restart();
        let leased = written
            .recv_timeout(Duration::from_secs(30))
            .expect("the joining node writes its record");
        let routed: Vec<(String, f64)> = pollers
            .into_iter()
            .map(|(n, p)| {
                let at = p
                    .wait()
                    .unwrap_or_else(|| panic!("{}'s route never reached {n}", joiner.name()));
                (n, ms(leased, at))
            })
            .collect();
        let all = routed.iter().map(|(_, t)| *t).fold(0.0, f64::max);
        eprintln!(
            "join {}: {} routed on every other node {all:.0} ms after its lease ({routed:?})",
            round + 1,
            joiner.name()
        );
        joins.push(all);
        subnets = settle(&nodes, &daemons);
    }

    let (death_median, death_max) = median_max(&deaths);
    let (join_median, join_max) = median_max(&joins);
    let hold_expired = errors.iter().filter(|e| *e == "hold timer expired").count();
    println!(
        "BGP convergence, {} nodes, hold time {} s, keepalive {} s, {rounds} rounds each",
        nodes.len(),
        HOLD.as_secs(),
        KEEPALIVE.as_secs()
    );
    println!(
        "  node death (link down + kill -9) -> route gone from every other node: median {death_median:.0} ms, max {death_max:.0} ms, runs {deaths:.0?} (bounded by the hold time, {} ms)",
        HOLD.as_millis()
    );
    println!(
        "    peers' last error: \"hold timer expired\" {hold_expired} of {}",
        errors.len()
    );
    println!(
        "  node join (lease in etcd) -> route on every other node: median {join_median:.0} ms, max {join_max:.0} ms, runs {joins:.0?} (target <= 1000)"
    );
    println!(
        "targets: death {}, join {}",
        if death_max <= HOLD.as_secs_f64() * 1000.0 + 100.0 {
            "within the hold time"
        } else {
            "OVER THE HOLD TIME"
        },
        if join_median <= 1000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(daemons);
    lab.down().unwrap();
}

//! BGP scale: one `twilld` in BGP mode, and a scripted speaker on an external host of the
//! lab that plays 1,000 other nodes. Each simulated node has a lease in etcd (a node
//! record: its /24 and an underlay address of its own) and announces its subnet with that
//! address as next hop, so the ownership check accepts every route. The speaker's sessions
//! wait (passive) before the leases are written; `twilld` connects to each once it sees its
//! record. Measured from the first write of the leases: when the first and the last session
//! are established and when the node's kernel holds all 1,000 routes (polled with netlink
//! every 5 ms); then `twilld`'s RSS. The anchor, in the same run: `ip -batch` writing the
//! same 1,000 routes into another table of the same namespace, the kernel's own floor.
//!
//! Why 1,000 sessions and not one peer with 1,000 routes: in the full mesh (configured
//! peers, `BGPPeer`, were still being added when this was written), `twilld` installs a route only from the node etcd assigns it to
//! (`daemon/src/bgp/routes.rs`, `desired`), so one peer announcing 1,000 subnets would have
//! 999 of them refused. The speaker is twill-bgp's `Session` (one tokio task per peer in
//! one process) and not BIRD: it is the same speaker as `twilld`'s, needs no generated
//! configuration with 1,000 `protocol bgp` blocks, and reports when each session is up.
//!
//! The simulated nodes' addresses (172.30.4.1 upwards) are on the external host's `eth0`,
//! each with a listening socket of its own; the node's `eth0` address is made a /16 so
//! that they are on its underlay subnet (routes to nodes elsewhere go through VXLAN or are
//! refused: `bgp.cross_subnet`). They are higher than the node's, so `twilld` connects.
//!
//! Run as root with `scripts/bench`. NODES=N changes the count (default 1000, at most 1022).

#[path = "common/bgp.rs"]
mod common;

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use twill_api::cluster::{self, NodeRecord};
use twill_bgp::{
    fsm::{self, State},
    message::BGP_PORT,
    session::{Listener, Session, SessionConfig},
};
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{
    bench::{env_or, put_all, rss_mib},
    daemon::Twilld,
    require_root,
};

use common::{Poller, ms};

/// BGP mode with twill's BGP defaults (AS 64512, hold 9 s, keepalive 3 s, port 179); a
/// cluster CIDR with room for 1,000 /24s.
const CONFIG: &str = "[network]\noverlay = \"bgp\"\ncluster_cidr = \"10.0.0.0/8\"\n\
service_cidr = \"192.168.240.0/20\"\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";
const AS: u32 = 64512;

fn fake(i: u32) -> NodeRecord {
    // Subnets 10.0.1.0/24 upwards (the real node takes 10.0.0.0/24).
    let n = i + 1;
    NodeRecord {
        name: format!("sim{i:05}"),
        subnet: format!("10.{}.{}.0/24", n >> 8, n & 0xff).parse().unwrap(),
        underlay_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 4, 1)) + i),
        vtep_mac: None,
    }
}

fn run(host: &Host, args: &[&str]) {
    let out = host.output(args[0], &args[1..]).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -batch -` with `input`, inside `host`'s namespace; how long it took.
fn ip_batch(host: &Host, input: String) -> Duration {
    let mut cmd = Command::new("ip");
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    host.run(move || {
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "ip -batch failed");
        start.elapsed()
    })
    .unwrap()
}

/// When the speaker's sessions came up.
struct SpeakerTimes {
    first: Instant,
    last: Instant,
}

/// The simulated nodes' sessions, from a thread in `ext`'s namespace, until `stop`: each
/// listens on its own address for `node_ip` and announces its subnet. Sends `None` once
/// they all wait, then the times.
fn speaker(
    ext: Host,
    node_ip: Ipv4Addr,
    records: Vec<NodeRecord>,
    stop: Arc<AtomicBool>,
    times: mpsc::Sender<Option<SpeakerTimes>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        ext.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut sessions = Vec::new();
                    let mut listeners = Vec::new();
                    for r in &records {
                        let listener =
                            Listener::bind(SocketAddrV4::new(r.underlay_ip, BGP_PORT)).unwrap();
                        let mut f = fsm::Config::new(AS, r.underlay_ip, AS);
                        f.passive = true;
                        let (s, rx) =
                            Session::start(SessionConfig::new(f, node_ip), Some(&listener))
                                .unwrap();
                        s.announce(r.subnet, r.underlay_ip);
                        sessions.push((s, rx));
                        listeners.push(listener);
                    }
                    times.send(None).unwrap();
                    let (mut first, mut last) = (None, None);
                    for (s, rx) in &mut sessions {
                        // Drain route events so nothing piles up; the node sends one route.
                        while rx.try_recv().is_ok() {}
                        let mut status = s.watch_status();
                        status
                            .wait_for(|st| st.state == State::Established)
                            .await
                            .expect("the session runs");
                        let at = status.borrow().established_at.expect("established");
                        first = Some(first.map_or(at, |f: Instant| f.min(at)));
                        last = Some(last.map_or(at, |l: Instant| l.max(at)));
                    }
                    times
                        .send(Some(SpeakerTimes {
                            first: first.expect("at least one session"),
                            last: last.expect("at least one session"),
                        }))
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        for (_, rx) in &mut sessions {
                            while rx.try_recv().is_ok() {}
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
        })
        .unwrap();
    })
}

fn main() {
    require_root();
    let count: u32 = env_or("NODES", 1000);
    assert!((1..=1022).contains(&count), "NODES: 1..=1022");
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let lab = Lab::up(&LabSpec::for_test(1, 1)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let ext = lab.externals()[0].clone();
    let node_ip = node.plan.underlay_ip;
    let records: Vec<NodeRecord> = (0..count).map(fake).collect();

    // The simulated nodes' addresses on ext1, on-link for the node.
    let mut addrs = String::new();
    for r in &records {
        addrs.push_str(&format!("addr add {}/32 dev eth0\n", r.underlay_ip));
    }
    ip_batch(&ext, addrs);
    let node_cidr = format!("{node_ip}/24");
    let node_wide = format!("{node_ip}/16");
    run(&node, &["ip", "addr", "del", &node_cidr, "dev", "eth0"]);
    run(&node, &["ip", "addr", "add", &node_wide, "dev", "eth0"]);
    run(
        &node,
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
    let stop = Arc::new(AtomicBool::new(false));
    let (times_tx, times_rx) = mpsc::channel();
    let speaking = speaker(
        ext.clone(),
        node_ip,
        records.clone(),
        stop.clone(),
        times_tx,
    );
    let waiting = times_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the speaker's sessions wait");
    assert!(waiting.is_none());

    let daemon = Twilld::start(twilld, &lab, &node, CONFIG, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    // The leases: written after the node holds its own subnet, which they must not take.
    let kvs: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                cluster::node_key(&r.name),
                serde_json::to_string(r).unwrap(),
            )
        })
        .collect();
    let rss_idle = rss_mib(daemon.child.id());
    let want: Vec<(Ipv4Network, Ipv4Addr)> =
        records.iter().map(|r| (r.subnet, r.underlay_ip)).collect();
    let poller = Poller::start(node.netns().unwrap(), Duration::from_secs(60), move |r| {
        want.iter().all(|(d, v)| r.get(d) == Some(v))
    });
    let t0 = Instant::now();
    put_all(&lab, &kvs);
    let written = Instant::now();
    let times = times_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("every session established within 60 s")
        .expect("the times");
    let routed = poller.wait();
    let rss = rss_mib(daemon.child.id());
    let status = daemon.status().bgp.expect("BGP status");
    // Three more seconds with everything up: what the sessions' keepalives cost in memory.
    thread::sleep(Duration::from_secs(3));
    let rss_later = rss_mib(daemon.child.id());
    stop.store(true, Ordering::Relaxed);
    speaking.join().unwrap();

    // The anchor: the same routes by `ip -batch`, into table 100 of the node's namespace.
    let mut batch = String::new();
    for r in &records {
        batch.push_str(&format!(
            "route add {} via {} dev eth0 proto 67 table 100\n",
            r.subnet, r.underlay_ip
        ));
    }
    let anchor = ip_batch(&node, batch);

    let Some(routed) = routed else {
        let log = daemon.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "not all routes in the kernel within 60 s: {} there; twilld: {} installed, {} refused \
             ({:?}), problem {:?}, {} of {} peers established; log ends:\n{}",
            common::routes(&node.netns().unwrap()).len(),
            status.routes,
            status.refused.len(),
            status.refused.iter().take(3).collect::<Vec<_>>(),
            status.problem,
            status
                .peers
                .iter()
                .filter(|p| p.state == "Established")
                .count(),
            status.peers.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    println!(
        "BGP scale: {count} simulated nodes, one session each, announcing their subnets to one twilld"
    );
    println!(
        "  leases written to etcd:            {:>8.0} ms",
        ms(t0, written)
    );
    println!(
        "  first session established:        {:>8.0} ms after the first write",
        ms(t0, times.first)
    );
    println!(
        "  last session established:         {:>8.0} ms",
        ms(t0, times.last)
    );
    println!(
        "  all {count} routes in the kernel:    {:>8.0} ms ({:.0} ms after the first session, {:.0} ms after the last) (target <= 2000)",
        ms(t0, routed),
        ms(times.first, routed),
        ms(times.last, routed)
    );
    println!(
        "  ip -batch, the same routes:        {:>8.0} ms",
        anchor.as_secs_f64() * 1000.0
    );
    println!(
        "  twilld: {} routes installed, {} refused, {} peers established",
        status.routes,
        status.refused.len(),
        status
            .peers
            .iter()
            .filter(|p| p.state == "Established")
            .count()
    );
    println!(
        "  twilld RSS: {rss_idle:.1} MiB before the leases, {rss:.1} MiB with all routes, \
         {rss_later:.1} MiB 3 s later (target <= 50)"
    );
    let took = routed.saturating_duration_since(t0);
    println!(
        "targets: routes {}, RSS {}",
        if took <= Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        },
        if rss.max(rss_later) <= 50.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(daemon);
    lab.down().unwrap();
}

//! Cost of leaving flow records on, in one run on a 2-node lab with `twilld` on each node
//! and a client pod on node1, a server pod on node2 (wired by the `twill` CNI binary):
//!
//! - connections per second from the client to the server (a completed handshake closed
//!   with a reset) and iperf3 TCP throughput between them, with records in the default
//!   `connections` mode and with them `off`. The mode is flipped between runs by writing
//!   the pinned `TWILL_FLOW_CONF` of both nodes (what `twilld` writes at start), so the
//!   daemons keep running and reading the ring; on/off order alternates each round, and
//!   medians are compared (targets: >= 0.95 of the rate, >= 0.98 of the throughput). The
//!   records node1's daemon read during each connection run are counted, to show they
//!   were made (and not made when off);
//! - the programs' part alone: connections per second with records on and both daemons
//!   stopped (SIGSTOP) during the run, the records left in the ring until it ends;
//! - sustained records per second: node1 in per-packet mode, a UDP flood from the client
//!   paced at rising rates for a few seconds each; for each, the records node1's daemon
//!   read and those the ring had no room for (its STATUS's flows section). The highest
//!   rate without loss is the sustained figure;
//! - memory: the ring (`flows.ring_bytes`, kernel memory) and node1's daemon's resident
//!   memory from before any record to the end (its in-memory ring full at `flows.keep`).
//!
//! Run as root with `scripts/bench`. ROUNDS=N (default 7), SECONDS_PER_RUN=N for the
//! connection runs (default 3), IPERF_SECONDS=N (default 5), FLOOD_SECONDS=N (default 3).

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use twill_abi::flow::{FLOW_MODE_CONNECTIONS, FLOW_MODE_OFF, FLOW_MODE_PACKETS};
use twill_lab::{Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{accept_and_close, connect_rate, iperf, median, rss_mib},
    cni,
    daemon::Twilld,
    require_root,
};

const CONFIG: &str = "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n\
[flows]\nmode = \"connections\"\n";
const PORT: u16 = 8080;
const SINK_PORT: u16 = 9999;
/// Paced UDP flood rates, packets (and, in per-packet mode, records) per second.
const FLOOD_RATES: [u64; 7] = [10_000, 25_000, 50_000, 100_000, 200_000, 400_000, 800_000];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn set_mode(pins: &[PathBuf], mode: u32) {
    for p in pins {
        twill_bpf::set_flow_mode_pinned(p, mode)
            .unwrap_or_else(|e| panic!("setting the flow mode under {}: {e}", p.display()));
    }
}

/// Records node1's daemon read since it started, and those its ring had no room for.
fn counts(d: &Twilld) -> (u64, u64) {
    let f = d.status().flows;
    (f.read, f.lost)
}

/// CPU time (user and system) the processes have used, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command (which is in parentheses and may hold spaces).
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // utime and stime are fields 14 and 15 of the line: 12 and 13 after the command.
            (field(11) + field(12)) / ticks
        })
        .sum()
}

/// UDP to `to` from `ns` at `rate` packets a second for `seconds`: packets sent and the
/// time taken.
fn flood(ns: &NetNs, to: SocketAddrV4, rate: u64, seconds: f64) -> (u64, f64) {
    ns.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            let elapsed = start.elapsed().as_secs_f64();
            if elapsed >= seconds {
                return (sent, elapsed);
            }
            let due = (elapsed * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            for _ in 0..(due - sent).min(256) {
                if socket.send_to(b"flow-record-flood", to).is_ok() {
                    sent += 1;
                }
            }
        }
    })
    .expect("enter the namespace")
}

fn main() {
    require_root();
    let rounds: usize = env_or("ROUNDS", 7);
    let seconds: f64 = env_or("SECONDS_PER_RUN", 3.0);
    let iperf_seconds: u32 = env_or("IPERF_SECONDS", 5);
    let flood_seconds: f64 = env_or("FLOOD_SECONDS", 3.0);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
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
        .map(|n| Twilld::start(twilld, &lab, n, CONFIG, &[]))
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(20), |s| {
            s.not_ready.is_none() && s.overlay.peers == 1
        });
    }
    let pins: Vec<PathBuf> = nodes.iter().map(|n| n.bpffs_dir.clone()).collect();
    let status = daemons[0].status().flows;
    // A ring buffer map's max_entries is its size in bytes.
    let ring_bytes = aya::maps::MapData::from_pin(pins[0].join(twill_abi::maps::FLOWS))
        .and_then(|m| m.info())
        .map(|i| u64::from(i.max_entries()))
        .expect("the pinned ring's size");
    let keep = status.keep;
    let rss_before = rss_mib(daemons[0].child.id());

    let mut pods = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (netns, ip) = cni::add_pod(&twill, &mut lab, node, &daemons[i], &format!("fc{i}"), "");
        pods.push((NetNs::from_path(&netns).unwrap(), ip, netns));
    }
    let (client, server) = (&pods[0].0, &pods[1].0);
    let server_ip: Ipv4Addr = pods[1].1;
    accept_and_close(server, PORT);
    let target = SocketAddrV4::new(server_ip, PORT);
    // Warm up both ways (neighbours, conntrack, the page cache of iperf3).
    connect_rate(client, target, 0.5);

    let (mut on_rate, mut off_rate, mut on_tput, mut off_tput) = (vec![], vec![], vec![], vec![]);
    let (mut on_records, mut off_records) = (vec![], vec![]);
    let (mut on_cpu, mut off_cpu) = (vec![], vec![]);
    let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            set_mode(
                &pins,
                if on {
                    FLOW_MODE_CONNECTIONS
                } else {
                    FLOW_MODE_OFF
                },
            );
            let (read0, _) = counts(&daemons[0]);
            let cpu0 = cpu_seconds(&pids);
            let rate = connect_rate(client, target, seconds);
            let cpu = (cpu_seconds(&pids) - cpu0) / seconds;
            std::thread::sleep(Duration::from_millis(200));
            let (read1, _) = counts(&daemons[0]);
            let records = (read1 - read0) as f64 / seconds;
            let tput = iperf(server, client, &server_ip.to_string(), iperf_seconds);
            if on {
                on_rate.push(rate);
                on_tput.push(tput);
                on_records.push(records);
                on_cpu.push(cpu);
            } else {
                off_rate.push(rate);
                off_tput.push(tput);
                off_records.push(records);
                off_cpu.push(cpu);
            }
        }
    }

    // The programs' part alone: records on, both daemons stopped (SIGSTOP) for the run, so
    // the records wait in the ring (a run makes far fewer than it holds) and nobody reads
    // them until it ends.
    let mut stopped_rate = Vec::new();
    set_mode(&pins, FLOW_MODE_CONNECTIONS);
    for _ in 0..rounds {
        let signal = |sig| {
            for &pid in &pids {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
                    .expect("signal twilld");
            }
        };
        signal(nix::sys::signal::Signal::SIGSTOP);
        stopped_rate.push(connect_rate(client, target, seconds));
        signal(nix::sys::signal::Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (_, lost_after_stopped) = counts(&daemons[0]);

    // Sustained records per second: node1 records every packet; a paced flood to a UDP
    // socket on the server that nobody reads (the kernel drops what its buffer cannot
    // hold, without an ICMP error that would make more records).
    let _sink = server
        .run(|| UdpSocket::bind(("0.0.0.0", SINK_PORT)))
        .expect("enter the namespace")
        .expect("bind the sink");
    set_mode(&pins[..1], FLOW_MODE_PACKETS);
    set_mode(&pins[1..], FLOW_MODE_OFF);
    let to = SocketAddrV4::new(server_ip, SINK_PORT);
    let mut flood_rows = Vec::new();
    for rate in FLOOD_RATES {
        let (read0, lost0) = counts(&daemons[0]);
        let (sent, took) = flood(client, to, rate, flood_seconds);
        std::thread::sleep(Duration::from_millis(500));
        let (read1, lost1) = counts(&daemons[0]);
        flood_rows.push((
            rate,
            sent as f64 / took,
            (read1 - read0) as f64 / took,
            lost1 - lost0,
        ));
        if lost1 - lost0 > sent / 10 {
            break;
        }
    }
    // Flat out: two senders, as fast as they go (past what one paced sender reaches).
    {
        let (read0, lost0) = counts(&daemons[0]);
        let start = Instant::now();
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let ns = NetNs::from_path(&pods[0].2).unwrap();
                std::thread::spawn(move || flood(&ns, to, u64::MAX / 4, flood_seconds).0)
            })
            .collect();
        let sent: u64 = senders.into_iter().map(|t| t.join().unwrap()).sum();
        let took = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let (read1, lost1) = counts(&daemons[0]);
        flood_rows.push((
            0,
            sent as f64 / took,
            (read1 - read0) as f64 / took,
            lost1 - lost0,
        ));
    }
    set_mode(&pins, FLOW_MODE_CONNECTIONS);
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_mib(daemons[0].child.id());
    let kept = daemons[0].status().flows.kept;

    let (ron, roff, ton, toff) = (
        median(on_rate.clone()),
        median(off_rate.clone()),
        median(on_tput.clone()),
        median(off_tput.clone()),
    );
    println!(
        "flow records on (connections mode) vs off, 2 lab nodes, client pod on node1 -> server \
         pod on node2, {rounds} interleaved rounds (median)"
    );
    println!(
        "  connections/s ({seconds} s runs): on {ron:8.0}  off {roff:8.0}  on/off {:.3} (target >= 0.95)",
        ron / roff
    );
    println!("    runs on  {on_rate:.0?}");
    println!("    runs off {off_rate:.0?}");
    println!(
        "    records/s node1's daemon read during them: on {:.0}, off {:.0}",
        median(on_records),
        median(off_records)
    );
    println!(
        "    CPU of both daemons during them (cores): on {:.2}, off {:.2}",
        median(on_cpu),
        median(off_cpu)
    );
    let rstop = median(stopped_rate.clone());
    println!(
        "  records on, daemons stopped (the programs' part alone): {rstop:8.0}  /off {:.3}; \
         node1's lost records after: {lost_after_stopped}",
        rstop / roff
    );
    println!("    runs {stopped_rate:.0?}");
    println!(
        "  iperf3 Gbit/s ({iperf_seconds} s runs):  on {ton:8.2}  off {toff:8.2}  on/off {:.3} (target >= 0.98)",
        ton / toff
    );
    println!("    runs on  {on_tput:.2?}");
    println!("    runs off {off_tput:.2?}");
    println!(
        "target: {}",
        if ron / roff >= 0.95 && ton / toff >= 0.98 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "per-packet mode on node1, UDP flood paced for {flood_seconds} s per rate (ring {ring_bytes} bytes):"
    );
    println!(
        "  {:>10} {:>12} {:>12} {:>10}",
        "asked/s", "sent/s", "read/s", "lost"
    );
    let mut sustained = 0.0f64;
    for (rate, sent, read, lost) in &flood_rows {
        let asked = if *rate == 0 {
            "flat out".to_owned()
        } else {
            rate.to_string()
        };
        println!("  {asked:>10} {sent:>12.0} {read:>12.0} {lost:>10}");
        if *lost == 0 {
            sustained = sustained.max(*read);
        }
    }
    println!("  sustained without loss: {sustained:.0} records/s");
    println!(
        "memory: ring {:.1} MiB (kernel); twilld RSS {rss_before:.1} MiB before any record, \
         {rss_after:.1} MiB with {kept} of {keep} records kept: +{:.1} MiB",
        ring_bytes as f64 / 1_048_576.0,
        rss_after - rss_before
    );
    drop(daemons);
    lab.down().unwrap();
}

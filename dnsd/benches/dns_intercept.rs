//! The added latency of DNS interception: the same query from a pod, straight to
//! twill-dnsd's address against through the cluster DNS Service IP, which twilld's eBPF
//! programs hand to twill-dnsd (`[intercept]`), in the same run.
//!
//! A 1-node lab: twilld, the kube-system/kube-dns Service at 10.96.0.10 (no endpoints:
//! every answer from it is twill-dnsd's), a `web` Service whose name is the query, and
//! twill-dnsd on node1's address port 53 (pinned to CPU 1). A client pod wired by the CNI
//! plugin sends an A query for `web.default.svc.cluster.local` over an unconnected UDP
//! socket per path (`send_to`, then `recv_from`), one outstanding at a time, from a thread
//! in the pod's namespace (pinned to CPU 0), and times each round trip:
//!
//! - direct: to node1's address, port 53 (the backend the interception uses);
//! - intercepted: to 10.96.0.10:53.
//!
//! One socket per path, because with one socket for both the direct replies come back
//! from 10.96.0.10: they have the same addresses and ports as the intercepted flow's
//! replies, and the pod's programs translate them as such.
//!
//! The thread is not in the node's cgroup, so its packets take the per-packet path (the
//! pod's tc programs), not the socket programs. The paths alternate in ROUNDS rounds
//! (default 20) of QUERIES queries each (default 2,000), the first path alternating too.
//! Each path's answer is checked once (NOERROR, the Service's A record, from the address
//! asked) before anything is timed.
//!
//! Run as root after `cargo build --release --bins` (it runs the twilld, twill and netctl
//! binaries next to twill-dnsd): `cargo bench -p twill-dnsd --bench dns_intercept`.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr as _,
    thread,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use nix::sched::{CpuSet, sched_setaffinity};
use twill_lab::{Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{bench::median, cni, daemon::Twilld, require_root};

const DNSD: &str = env!("CARGO_BIN_EXE_twill-dnsd");
/// Periodic passes rarely: nothing changes during the run.
const TWILLD_CONFIG: &str = "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
const WEB_NAME: &str = "web.default.svc.cluster.local.";
/// A reply later than this counts as lost.
const TIMEOUT: Duration = Duration::from_secs(1);

fn objects() -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {DNS_VIP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {WEB_VIP}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(DNSD).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --bins` first",
        path.display()
    );
    path
}

/// twill-dnsd in node1's namespace and cgroup; killed when dropped.
struct Dnsd {
    child: Child,
    log: PathBuf,
}

impl Dnsd {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("twill-dnsd exited ({status}):\n{}", self.log_text());
        }
    }
}

impl Drop for Dnsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("twill-dnsd log:\n{}", self.log_text());
        }
    }
}

/// The A query for [`WEB_NAME`], encoded, id 0 (each send patches its own id in).
fn query_wire() -> Vec<u8> {
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_str(WEB_NAME).expect("a valid name"),
        RecordType::A,
    ));
    m.to_vec().expect("the query encodes")
}

/// One query to `to` with `id`: the reply's bytes, its source, and the round trip; None
/// if no reply with that id came within [`TIMEOUT`] (a stray reply is skipped).
fn ask(
    socket: &UdpSocket,
    wire: &mut [u8],
    buf: &mut [u8],
    to: SocketAddrV4,
    id: u16,
) -> Option<(usize, SocketAddr, Duration)> {
    wire[..2].copy_from_slice(&id.to_be_bytes());
    let start = Instant::now();
    socket.send_to(wire, to).expect("send the query");
    loop {
        match socket.recv_from(buf) {
            Ok((len, from)) if len >= 2 && buf[..2] == id.to_be_bytes() => {
                return Some((len, from, start.elapsed()));
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("receive from {to}: {e}"),
        }
    }
}

/// Panics unless `reply` is NOERROR with [`WEB_VIP`] as the only A record, from `to`.
fn check_answer(path: &str, to: SocketAddrV4, reply: &[u8], from: SocketAddr) {
    assert_eq!(
        from,
        SocketAddr::V4(to),
        "{path}: the reply comes from another address"
    );
    let m = Message::from_vec(reply).unwrap_or_else(|e| panic!("{path}: the reply: {e}"));
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{path}: {m:?}"
    );
    let a: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(a, [WEB_VIP], "{path}: the A records of {WEB_NAME}: {m:?}");
}

/// The `p`th percentile (nearest rank) of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Round trips in microseconds, per path and per round, and the queries lost per path.
#[derive(Default)]
struct Timings {
    rounds: [Vec<Vec<f64>>; 2],
    lost: [usize; 2],
}

fn main() {
    require_root();
    let env = |k: &str, d: usize| -> usize {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env("ROUNDS", 20).max(1);
    let queries = env("QUERIES", 2000).max(1);
    let (twilld, twill, netctl) = (sibling("twilld"), sibling("twill"), sibling("netctl"));

    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes().remove(0);
    let node_ip = node.plan.underlay_ip;
    let daemons = Twilld::start_on_every_node(&twilld, &lab, TWILLD_CONFIG);
    let (client_netns, _) = cni::add_pod(
        &twill,
        &mut lab,
        &node,
        &daemons[0],
        "client",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client",
    );
    twill_tests::netctl(&netctl, &lab, &["apply", "-f", "-"], &objects());

    let config = node.state_dir.join("dnsd.toml");
    fs::write(
        &config,
        format!(
            "listen = [\"{node_ip}:53\"]\n\
             [etcd]\nendpoints = [\"{}\"]\n\
             [intercept]\nservice_ip = \"{DNS_VIP}\"\npin_dir = \"{}\"\n",
            lab.etcd_endpoint(),
            node.bpffs_dir.display()
        ),
    )
    .expect("write the twill-dnsd config");
    let log = node.state_dir.join("dnsd.log");
    let out = fs::File::create(&log).expect("create the twill-dnsd log");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", DNSD, "run", "--config"])
        .arg(&config)
        .env("TWILL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup the log"))
        .stderr(out);
    let child = node.spawn(cmd).expect("start twill-dnsd");
    let mut dnsd = Dnsd { child, log };

    let direct = SocketAddrV4::new(node_ip, 53);
    let intercepted = SocketAddrV4::new(DNS_VIP, 53);
    let paths = [("direct", direct), ("intercepted", intercepted)];
    let pod = NetNs::from_path(&client_netns).expect("the client pod's namespace");

    // Until both paths give the right answer (the zone loaded, the entries written),
    // then the answer of each is checked in full once.
    let started = Instant::now();
    for (path, to) in paths {
        loop {
            let reply = pod
                .run(|| {
                    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind in the pod");
                    socket
                        .set_read_timeout(Some(Duration::from_millis(200)))
                        .expect("a read timeout");
                    let (mut wire, mut buf) = (query_wire(), vec![0u8; 4096]);
                    ask(&socket, &mut wire, &mut buf, to, 1)
                        .map(|(len, from, _)| (buf[..len].to_vec(), from))
                })
                .expect("enter the pod's namespace");
            let answered = reply.as_ref().is_some_and(|(wire, _)| {
                Message::from_vec(wire).is_ok_and(|m| !m.answers.is_empty())
            });
            if answered {
                let (wire, from) = reply.expect("answered");
                check_answer(path, to, &wire, from);
                break;
            }
            dnsd.assert_running();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{path} ({to}): no answer for {WEB_NAME} after 30 s:\n{}",
                dnsd.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    let ready = started.elapsed();

    let timings = pod
        .run(|| {
            let mut cpu = CpuSet::new();
            cpu.set(0).expect("CPU 0 exists");
            sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu).expect("pin to CPU 0");
            let sockets = paths.map(|_| {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("bind in the pod");
                socket
                    .set_read_timeout(Some(TIMEOUT))
                    .expect("a read timeout");
                socket
            });
            let (mut wire, mut buf) = (query_wire(), vec![0u8; 4096]);
            let mut id: u16 = 1;
            let mut next_id = || {
                id = id.wrapping_add(1);
                id
            };
            // Warm-up: caches, the intercepted flow's entry, the CPUs' frequency.
            for ((_, to), socket) in paths.iter().zip(&sockets) {
                for _ in 0..queries {
                    ask(socket, &mut wire, &mut buf, *to, next_id());
                }
            }
            let mut t = Timings::default();
            for round in 0..rounds {
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for p in order {
                    let (_, to) = paths[p];
                    let mut samples = Vec::with_capacity(queries);
                    for _ in 0..queries {
                        match ask(&sockets[p], &mut wire, &mut buf, to, next_id()) {
                            Some((_, from, rtt)) if from == SocketAddr::V4(to) => {
                                samples.push(rtt.as_secs_f64() * 1e6);
                            }
                            Some((_, from, _)) => panic!("a reply to {to} came from {from}"),
                            None => t.lost[p] += 1,
                        }
                    }
                    t.rounds[p].push(samples);
                }
            }
            t
        })
        .expect("enter the pod's namespace");
    dnsd.assert_running();

    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{rounds} rounds x {queries} queries per path, one outstanding, from the client pod \
         (CPU 0) to twill-dnsd (CPU 1); both paths answered {:.1} s after start; load average {}",
        ready.as_secs_f64(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:12} {:>22} {:>10} {:>10} {:>6}",
        "path", "to", "median us", "p99 us", "lost"
    );
    let mut medians = [0.0; 2];
    for (p, (path, to)) in paths.iter().enumerate() {
        let mut all: Vec<f64> = timings.rounds[p].iter().flatten().copied().collect();
        assert!(!all.is_empty(), "{path}: every query was lost");
        all.sort_by(f64::total_cmp);
        medians[p] = percentile(&all, 50.0);
        println!(
            "{path:12} {:>22} {:>10.1} {:>10.1} {:>6}",
            to.to_string(),
            medians[p],
            percentile(&all, 99.0),
            timings.lost[p]
        );
    }
    let per_round: Vec<f64> = timings.rounds[0]
        .iter()
        .zip(&timings.rounds[1])
        .map(|(d, i)| median(i.clone()) / median(d.clone()))
        .collect();
    let (lo, hi) = per_round
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "per-round ratio of medians: median {:.3} (range {lo:.3}-{hi:.3})",
        median(per_round.clone())
    );
    println!("ratio: {:.3} (target <= 1.05)", medians[1] / medians[0]);
    let total = rounds * queries;
    for (p, (path, _)) in paths.iter().enumerate() {
        assert!(
            timings.lost[p] * 100 <= total,
            "{path}: {} of {total} queries lost",
            timings.lost[p]
        );
    }
    drop(dnsd);
    drop(daemons);
}

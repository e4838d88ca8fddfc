//! Node-local DNS: twill-dnsd against Debian's unbound as a node-local cache, on the same
//! data, in the same run. A 1-node lab: etcd holds 10,000 ClusterIP Services; twill-dnsd
//! serves them from node1's address port 53; unbound serves the same names as
//! `local-data` from node1's address port 5353; both forward the rest to a dnsmasq on
//! ext1 (`*.ext.test` -> 192.0.2.1). Both servers are pinned to CPU 1, dnsperf to CPU 0,
//! and dnsperf runs in a pod-like namespace with a veth to node1. Servers are measured one
//! at a time (the other one idles), interleaved over ROUNDS rounds (default 3).
//!
//! For cluster names and for cached external names, per server: queries/s at full load
//! (dnsperf `-c 10 -q 500`), and p50/p99 latency at a fixed 10,000 queries/s (dnsperf
//! `-Q 10000 -v`: the latency of every answer). Also twill-dnsd's RSS with the Services.
//! Twilld's interception (Service IP -> this server) is not in this benchmark.
//!
//! The latency runs are set up so that they time the server and not the machine:
//! - dnsperf `-v` flushes stdout before every line, so each answer is one `write`. Into a
//!   pipe, each of those wakes the reader (this process, on either CPU) and the answers
//!   that arrive meanwhile are stamped late. Its stdout goes to a file on tmpfs instead.
//! - On a shared machine a compiler job on CPU 0 or 1 makes dnsperf or the server wait
//!   for the CPU, for milliseconds. For the latency runs only, dnsperf and every thread
//!   of both servers run SCHED_RR (priority 1), so other work cannot preempt them. At
//!   10,000 queries/s each uses a fraction of its CPU, and the kernel's RT throttling
//!   leaves the rest of the machine at least 5%. The full-load runs stay SCHED_OTHER.
//!   Not SCHED_FIFO: at the end of a run dnsperf's receive thread spins (its stop pipe
//!   stays readable) until the send thread has seen the end, and at FIFO on one CPU the
//!   send thread would never run again; at RR it runs after one time slice.
//! - What neither can remove is the hypervisor taking the vCPUs away (steal time): the
//!   steal during each latency run is printed next to its figures. Each latency run is
//!   SECONDS_PER_RUN dnsperf runs of 1 s (windows), and the steal of each window is read
//!   too: besides the p99 over every answer, the p99 over the answers of the windows with
//!   at most 20 ms of steal (and how many windows those were) times the servers alone.
//!
//! - On a VM whose idle vCPUs halt at once (cpuidle-haltpoll with `guest_halt_poll_ns=0`,
//!   as on this project's machines), every wakeup from idle waits for the hypervisor to
//!   run the vCPU again, and that wait is counted as steal. At 10,000 queries/s both
//!   processes idle between queries, so most of the steal of the latency runs is the
//!   workload's own wakeups. GUEST_HALT_POLL_NS=N sets the guest's idle polling for the
//!   run (the machine's value is printed, and restored at the end): a setting of the
//!   machine, as dedicated cores would be, the same for both servers.
//!
//! Run as root with `scripts/bench`. SERVICES=N, ROUNDS=N and SECONDS_PER_RUN=N change the
//! defaults (10000, 3, 5). LATENCY_SCHED=other runs the latency runs without SCHED_RR,
//! to see what the machine's other work adds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use rand::RngExt as _;
use twill_api::cluster;
use twill_k8s::{
    ClusterIp, Namespace, Object, Protocol, Service, ServicePort, ServiceType, TargetPort,
};
use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{median, put_all, rss_mib},
    require_root,
};

const DNSD: &str = env!("CARGO_BIN_EXE_twill-dnsd");
/// External names are `host-N.ext.test`, N below this; dnsmasq answers all of them.
const EXTERNAL_NAMES: u32 = 1000;
const EXTERNAL_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UNBOUND_PORT: u16 = 5353;
/// A latency window (1 s) in which the hypervisor took at most this much CPU time (over
/// both CPUs, in /proc/stat's 10 ms ticks) times the servers rather than the machine.
const QUIET_STEAL_MS: u64 = 20;
/// The pod side of the veth to node1.
const POD_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
const POD_GW: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
const FIXED_RATE: u32 = 10_000;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i)
}

fn service_name(i: u32) -> String {
    format!("svc-{i:05}")
}

fn objects(services: u32) -> Vec<Object> {
    let mut out = vec![Object::Namespace(Namespace {
        name: "bench".into(),
        labels: BTreeMap::new(),
    })];
    out.extend((0..services).map(|i| {
        Object::Service(Service {
            namespace: "bench".into(),
            name: service_name(i),
            labels: BTreeMap::new(),
            service_type: ServiceType::ClusterIP,
            cluster_ip: ClusterIp::Fixed(vip(i)),
            selector: None,
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target: TargetPort::Number(8080),
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            external_name: None,
        })
    }));
    out
}

/// A process in a lab namespace, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, host: &Host, mut cmd: Command, log: PathBuf) -> Proc {
        let out = fs::File::create(&log).expect("create a log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log"))
            .stderr(out);
        let child = host
            .spawn(cmd)
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name, child, log }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `program args` inside `ns` to completion; its output.
fn run_in(ns: &NetNs, program: &str, args: &[String]) -> std::process::Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    ns.run(move || cmd.output())
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn ip(ns: &NetNs, args: &str) {
    let args: Vec<String> = args.split(' ').map(str::to_owned).collect();
    let out = run_in(ns, "ip", &args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The A records `dig` gets for `name` from `server:port`, asked from `ns`.
fn dig(ns: &NetNs, server: Ipv4Addr, port: u16, name: &str) -> Vec<String> {
    let args = [
        format!("@{server}"),
        "-p".into(),
        port.to_string(),
        "+time=2".into(),
        "+tries=2".into(),
        "+short".into(),
        name.into(),
        "A".into(),
    ];
    let out = run_in(ns, "dig", &args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How dnsperf is run.
#[derive(Clone, Copy)]
enum Client<'a> {
    /// Output through a pipe, as any process: for the full-load runs.
    Plain,
    /// Output into the file `sink` (on tmpfs), and SCHED_RR when `realtime`: for the
    /// latency runs, where every answer is a line.
    Latency { sink: &'a Path, realtime: bool },
}

/// One dnsperf run from `ns`, on CPU 0; its stdout.
fn dnsperf(
    ns: &NetNs,
    server: Ipv4Addr,
    port: u16,
    data: &Path,
    extra: &[String],
    client: Client<'_>,
) -> String {
    let mut args: Vec<String> = vec![
        "taskset".into(),
        "-c".into(),
        "0".into(),
        "dnsperf".into(),
        "-s".into(),
        server.to_string(),
        "-p".into(),
        port.to_string(),
        "-d".into(),
        data.display().to_string(),
        "-t".into(),
        "2".into(),
    ];
    args.extend_from_slice(extra);
    let (sink, realtime) = match client {
        Client::Plain => {
            let out = run_in(ns, &args[0], &args[1..]);
            assert!(
                out.status.success(),
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        Client::Latency { sink, realtime } => (sink, realtime),
    };
    if realtime {
        args.splice(0..0, ["chrt", "-r", "1"].map(str::to_owned));
    }
    let file = fs::File::create(sink).expect("create dnsperf's output file");
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup dnsperf's output file"))
        .stderr(file);
    let status = ns
        .run(move || cmd.status())
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("run {}: {e}", args[0]));
    let out = fs::read_to_string(sink).expect("read dnsperf's output file");
    let _ = fs::remove_file(sink);
    assert!(status.success(), "{}: {out}", args.join(" "));
    out
}

/// Sets the scheduling policy of every thread of the processes `pids` (`chrt -a`); whether
/// it could.
fn set_sched(pids: &[u32], realtime: bool) -> bool {
    let policy: &[&str] = if realtime { &["-r", "1"] } else { &["-o", "0"] };
    pids.iter().all(|pid| {
        Command::new("chrt")
            .arg("-a")
            .arg("-p")
            .args(policy)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// SCHED_RR for the servers while it lives, SCHED_OTHER again when dropped.
struct Realtime<'a>(&'a [u32]);

impl<'a> Realtime<'a> {
    fn new(pids: &'a [u32]) -> Realtime<'a> {
        let raised = Realtime(pids);
        assert!(set_sched(pids, true), "chrt -a -r -p 1 {pids:?}");
        raised
    }
}

impl Drop for Realtime<'_> {
    fn drop(&mut self) {
        // The servers are killed at the end anyway; nothing to do if this fails.
        let _ = set_sched(self.0, false);
    }
}

/// The machine's steal time so far, in ms, over all CPUs (`/proc/stat`, in USER_HZ, which
/// is 100 on Linux).
fn steal_ms() -> u64 {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(8)?.parse::<u64>().ok())
        .map_or(0, |ticks| ticks * 10)
}

/// The guest kernel's idle polling (cpuidle-haltpoll): how long an idle vCPU polls for
/// work before it halts and the hypervisor gives its CPU away.
const HALT_POLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// The idle polling as the machine has it, or "none" without cpuidle-haltpoll.
fn halt_poll_ns() -> String {
    fs::read_to_string(HALT_POLL).map_or_else(|_| "none".to_owned(), |v| v.trim().to_owned())
}

/// GUEST_HALT_POLL_NS for the run: the machine's idle polling set while it lives, the
/// machine's own value again when dropped (also when the bench panics).
struct HaltPoll {
    old: String,
}

impl HaltPoll {
    fn set(ns: u64) -> HaltPoll {
        let old = fs::read_to_string(HALT_POLL).unwrap_or_else(|e| {
            panic!("GUEST_HALT_POLL_NS: reading {HALT_POLL}: {e} (no cpuidle-haltpoll here)")
        });
        fs::write(HALT_POLL, ns.to_string())
            .unwrap_or_else(|e| panic!("GUEST_HALT_POLL_NS: writing {HALT_POLL}: {e}"));
        HaltPoll {
            old: old.trim().to_owned(),
        }
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Err(e) = fs::write(HALT_POLL, &self.old) {
            eprintln!("restoring {HALT_POLL} to {}: {e}", self.old);
        }
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `(queries/s, lost fraction)` from dnsperf's summary.
fn summary(out: &str) -> (f64, f64) {
    let field = |label: &str| -> Option<f64> {
        let line = out.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let qps = field("Queries per second").unwrap_or_else(|| panic!("no queries/s in:\n{out}"));
    let sent = field("Queries sent").unwrap_or(0.0);
    let lost = field("Queries lost").unwrap_or(0.0);
    (qps, if sent > 0.0 { lost / sent } else { 0.0 })
}

/// Every answer's latency in ms from dnsperf `-v` lines (`> NOERROR name A 0.000123`).
fn latencies_ms(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.starts_with("> ") && !l.starts_with("> T "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    assert!(!v.is_empty(), "no latencies");
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

struct Server {
    name: &'static str,
    port: u16,
}

#[derive(Default)]
struct Figures {
    qps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    lost: Vec<f64>,
    /// Steal time during each latency run, ms.
    steal: Vec<f64>,
    /// Latency windows (1 s each) run, and those with at most QUIET_STEAL_MS of steal.
    windows: usize,
    quiet_windows: usize,
    /// Every answer's latency in the quiet windows, ms.
    quiet: Vec<f64>,
}

fn unbound_config(dir: &Path, node_ip: Ipv4Addr, upstream: Ipv4Addr, services: u32) -> String {
    let mut c = String::new();
    writeln!(
        c,
        "server:\n  interface: {node_ip}@{UNBOUND_PORT}\n  port: {UNBOUND_PORT}\n  \
         num-threads: 1\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  \
         directory: \"{}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  \
         verbosity: 0\n  do-ip6: no\n  do-tcp: yes\n  access-control: 0.0.0.0/0 allow\n  \
         module-config: \"iterator\"\n  msg-cache-size: 64m\n  rrset-cache-size: 128m\n  \
         prefetch: no\n  so-reuseport: no\n  local-zone: \"test.\" nodefault\n  local-zone: \"cluster.local.\" static",
        dir.display()
    )
    .unwrap();
    for i in 0..services {
        writeln!(
            c,
            "  local-data: \"{}.bench.svc.cluster.local. 30 IN A {}\"",
            service_name(i),
            vip(i)
        )
        .unwrap();
    }
    writeln!(
        c,
        "remote-control:\n  control-enable: no\nforward-zone:\n  name: \".\"\n  forward-addr: {upstream}"
    )
    .unwrap();
    c
}

fn main() {
    require_root();
    let env = |k: &str, d: u32| -> u32 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let services = env("SERVICES", 10_000);
    let rounds = env("ROUNDS", 3).max(1);
    let seconds = env("SECONDS_PER_RUN", 5).max(1).to_string();
    let realtime = std::env::var("LATENCY_SCHED").map_or(true, |v| v != "other");
    let _halt_poll = std::env::var("GUEST_HALT_POLL_NS").ok().map(|v| {
        HaltPoll::set(
            v.parse()
                .unwrap_or_else(|_| panic!("GUEST_HALT_POLL_NS={v}: not a number of ns")),
        )
    });
    let load_at_start = load_average();
    for tool in ["dnsperf", "unbound", "dnsmasq", "dig", "taskset", "chrt"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: run scripts/setup"
        );
    }

    let mut lab = Lab::up(&LabSpec::for_test(1, 1)).expect("lab up");
    let node = lab.nodes().remove(0);
    let ext = lab.externals().remove(0);
    let node_ip = node.plan.underlay_ip;
    let ext_ip = ext.plan.underlay_ip;
    let node_ns = node.netns().expect("node1's namespace");
    let dir = node.state_dir.clone();

    // The pod: its own namespace, a veth to node1, default route through it.
    let pod = lab.create_netns("dnsperf").expect("the pod's namespace");
    let pod_name = pod
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a named namespace")
        .to_owned();
    ip(
        &node_ns,
        &format!("link add vdnsperf type veth peer name eth0 netns {pod_name}"),
    );
    ip(&node_ns, &format!("addr add {POD_GW}/30 dev vdnsperf"));
    ip(&node_ns, "link set vdnsperf up");
    ip(&pod, "link set lo up");
    ip(&pod, &format!("addr add {POD_IP}/30 dev eth0"));
    ip(&pod, "link set eth0 up");
    ip(&pod, &format!("route add default via {POD_GW}"));

    // The Services, in etcd.
    let stored: Vec<(String, String)> = objects(services)
        .iter()
        .map(|o| {
            (
                cluster::object_key(o.resource(), o.namespace(), o.name()),
                serde_json::to_string(o).expect("an object as json"),
            )
        })
        .collect();
    put_all(&lab, &stored);

    // The upstream: dnsmasq on ext1, every *.ext.test name -> 192.0.2.1, TTL one hour.
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "-k",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        "--port=53",
        "--local-ttl=3600",
        "--cache-size=0",
    ])
    .arg(format!("--listen-address={ext_ip}"))
    .arg(format!("--address=/ext.test/{EXTERNAL_ANSWER}"));
    let mut dnsmasq = Proc::spawn("dnsmasq", &ext, cmd, ext.state_dir.join("dnsmasq.log"));

    // twill-dnsd, pinned to CPU 1.
    let config = dir.join("dnsd.toml");
    fs::write(
        &config,
        format!(
            "listen = [\"{node_ip}:53\"]\n\
             [etcd]\nendpoints = [\"{}\"]\n\
             [forward]\nupstreams = [\"{ext_ip}:53\"]\n",
            lab.etcd_endpoint()
        ),
    )
    .expect("write the twill-dnsd config");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", DNSD, "run", "--config"])
        .arg(&config)
        .env("TWILL_LOG", "warn");
    let mut dnsd = Proc::spawn("twill-dnsd", &node, cmd, dir.join("dnsd.log"));

    // unbound, pinned to CPU 1, with the same names as local data.
    let unbound_conf = dir.join("unbound.conf");
    fs::write(
        &unbound_conf,
        unbound_config(&dir, node_ip, ext_ip, services),
    )
    .expect("write the unbound config");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "unbound", "-d", "-c"])
        .arg(&unbound_conf);
    let mut unbound = Proc::spawn("unbound", &node, cmd, dir.join("unbound.log"));

    // Correctness first: the last Service's name (so the zone is complete) and an
    // external name, from each server, as the pod asks.
    let last = format!("{}.bench.svc.cluster.local", service_name(services - 1));
    let servers = [
        Server {
            name: "twill",
            port: 53,
        },
        Server {
            name: "unbound",
            port: UNBOUND_PORT,
        },
    ];
    let loaded = Instant::now();
    for server in &servers {
        loop {
            if dig(&pod, node_ip, server.port, &last) == [vip(services - 1).to_string()] {
                break;
            }
            dnsmasq.assert_running();
            dnsd.assert_running();
            unbound.assert_running();
            assert!(
                loaded.elapsed() < Duration::from_secs(120),
                "{}: {last} not answered with {} after 120 s",
                server.name,
                vip(services - 1)
            );
            thread::sleep(Duration::from_millis(200));
        }
        let answer = dig(&pod, node_ip, server.port, "host-7.ext.test");
        assert_eq!(
            answer,
            [EXTERNAL_ANSWER.to_string()],
            "{}: host-7.ext.test",
            server.name
        );
    }
    let zone_loaded = loaded.elapsed();
    let rss = rss_mib(dnsd.child.id());

    // Query files: random cluster names, random external names.
    let mut rng = rand::rng();
    let mut cluster_q = String::new();
    let mut external_q = String::new();
    for _ in 0..100_000 {
        let i = rng.random_range(0..services);
        writeln!(cluster_q, "{}.bench.svc.cluster.local A", service_name(i)).unwrap();
        let e = rng.random_range(0..EXTERNAL_NAMES);
        writeln!(external_q, "host-{e}.ext.test A").unwrap();
    }
    let cluster_file = dir.join("cluster.queries");
    let external_file = dir.join("external.queries");
    fs::write(&cluster_file, cluster_q).expect("write the cluster queries");
    fs::write(&external_file, external_q).expect("write the external queries");
    let mut warm = String::new();
    for e in 0..EXTERNAL_NAMES {
        writeln!(warm, "host-{e}.ext.test A").unwrap();
    }
    let warm_file = dir.join("warm.queries");
    fs::write(&warm_file, warm).expect("write the warm-up queries");
    // Warm both caches: every external name once, at a gentle rate.
    for server in &servers {
        let warm_args = ["-n", "1", "-Q", "2000"].map(str::to_owned);
        dnsperf(
            &pod,
            node_ip,
            server.port,
            &warm_file,
            &warm_args,
            Client::Plain,
        );
    }

    let kinds = [("cluster", &cluster_file), ("external", &external_file)];
    let mut figures: BTreeMap<(&str, &str), Figures> = BTreeMap::new();
    let server_pids = [dnsd.child.id(), unbound.child.id()];
    let sink = PathBuf::from(format!(
        "/dev/shm/twill-dns-perf-{}.out",
        std::process::id()
    ));
    let latency_client = Client::Latency {
        sink: &sink,
        realtime,
    };
    let full = ["-c", "10", "-T", "1", "-q", "500", "-l", &seconds].map(str::to_owned);
    let windows: u64 = seconds.parse().expect("SECONDS_PER_RUN");
    let fixed = [
        "-c",
        "10",
        "-T",
        "1",
        "-l",
        "1",
        "-Q",
        &FIXED_RATE.to_string(),
        "-v",
    ]
    .map(str::to_owned);
    for round in 0..rounds {
        // Alternate which server goes first.
        let order: Vec<&Server> = if round % 2 == 0 {
            servers.iter().collect()
        } else {
            servers.iter().rev().collect()
        };
        for (kind, file) in &kinds {
            for server in &order {
                let f = figures.entry((kind, server.name)).or_default();
                let out = dnsperf(&pod, node_ip, server.port, file, &full, Client::Plain);
                let (qps, lost) = summary(&out);
                f.qps.push(qps);
                f.lost.push(lost);
                let _raised = realtime.then(|| Realtime::new(&server_pids));
                let mut answers = Vec::new();
                let mut stolen_in_round = 0;
                for _ in 0..windows {
                    let stolen = steal_ms();
                    let out = dnsperf(&pod, node_ip, server.port, file, &fixed, latency_client);
                    let stolen = steal_ms() - stolen;
                    stolen_in_round += stolen;
                    let lat = latencies_ms(&out);
                    f.windows += 1;
                    if stolen <= QUIET_STEAL_MS {
                        f.quiet_windows += 1;
                        f.quiet.extend_from_slice(&lat);
                    }
                    answers.extend(lat);
                }
                f.steal.push(stolen_in_round as f64);
                f.p50.push(percentile(answers.clone(), 50.0));
                f.p99.push(percentile(answers, 99.0));
            }
        }
        dnsd.assert_running();
        unbound.assert_running();
    }
    let rss_after = rss_mib(dnsd.child.id());

    println!(
        "services: {services}; zone answered {:.1} s after start; rounds: {rounds} x {seconds} s per run; \
         servers on CPU 1, dnsperf on CPU 0, from a pod namespace; latency runs {}; \
         guest idle polling {} ns; load average {load_at_start} at the start, {} at the end",
        zone_loaded.as_secs_f64(),
        if realtime { "SCHED_RR" } else { "SCHED_OTHER" },
        halt_poll_ns(),
        load_average(),
    );
    for (kind, _) in &kinds {
        for server in &servers {
            let f = &figures[&(*kind, server.name)];
            let each = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "{kind:8} {:8} {:>9.0} q/s (lost {:.2}%); at {FIXED_RATE} q/s: p50 {:.3} ms, p99 {:.3} ms \
                 (p99 by round: {}; steal by round: {} ms); p99 in the windows with <= {QUIET_STEAL_MS} ms \
                 of steal: {} ({} of {} windows)",
                server.name,
                median(f.qps.clone()),
                100.0 * median(f.lost.clone()),
                median(f.p50.clone()),
                median(f.p99.clone()),
                each(&f.p99),
                f.steal
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if f.quiet.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{:.3} ms", percentile(f.quiet.clone(), 99.0))
                },
                f.quiet_windows,
                f.windows,
            );
        }
        let twill = median(figures[&(*kind, "twill")].qps.clone());
        let unbound = median(figures[&(*kind, "unbound")].qps.clone());
        println!(
            "ratio:   {kind} q/s twill / unbound = {:.2} (target >= 1; p99 <= 1 ms at {FIXED_RATE} q/s)",
            twill / unbound
        );
    }
    println!(
        "twill-dnsd RSS with {services} Services: {rss:.1} MiB after load, {rss_after:.1} MiB after the runs (target <= 64 MiB)"
    );
    drop(unbound);
    drop(dnsd);
    drop(dnsmasq);
}

//! Per-connection cost of a ClusterIP: TCP connections per second from a pod to one
//! Service while 1, 1,000 and 10,000 Services exist, against the same through kube-proxy's
//! iptables-mode ruleset, and against connecting to the backend's address directly (the
//! limit), all in one run.
//!
//! twill's side: node1 runs `twilld`; a client pod and a backend pod wired by the `twill`
//! CNI binary. The iptables side: node2 runs no daemon; a client and a backend namespace on
//! veths routed by node2, whose nat table holds kube-proxy's ruleset for the same number
//! of Services (`iptables-restore`). A connection is a completed handshake closed with a
//! reset (SO_LINGER 0), so no TIME_WAIT piles up on either side.
//!
//! Run as root with `scripts/bench`. SECONDS_PER_RUN=N (default 2), ROUNDS=N (default 3).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_api::cluster;
use twill_k8s::{
    ClusterIp, EndpointSlice, Object, Protocol, Service, ServicePort, ServiceType, SliceEndpoint,
    SlicePort, TargetPort,
};
use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{accept_and_close, connect_rate, env_or, median, put_all},
    cni,
    daemon::Twilld,
    require_root,
};

const CONFIG: &str = "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";
const SIZES: [u32; 3] = [1, 1000, 10_000];
/// The Service under test is the first; the others are there to be looked past.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PORT: u16 = 8080;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(VIP) + i)
}

/// Services `from..to`, each with one endpoint; service 0's endpoint is `backend`.
fn objects(from: u32, to: u32, backend: Ipv4Addr) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in from..to {
        let name = format!("svc-{i:05}");
        let address = if i == 0 {
            backend
        } else {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i)
        };
        let objects = [
            Object::Service(Service {
                namespace: "bench".into(),
                name: name.clone(),
                labels: BTreeMap::new(),
                service_type: ServiceType::ClusterIP,
                cluster_ip: ClusterIp::Fixed(vip(i)),
                selector: None,
                ports: vec![ServicePort {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target: TargetPort::Number(PORT),
                    node_port: None,
                }],
                affinity_timeout: None,
                external_local: false,
                internal_local: false,
                external_name: None,
            }),
            Object::EndpointSlice(EndpointSlice {
                namespace: "bench".into(),
                name: format!("{name}-abcde"),
                service: name,
                endpoints: vec![SliceEndpoint {
                    addresses: vec![address],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: None,
                    hostname: None,
                }],
                ports: vec![SlicePort {
                    name: String::new(),
                    port: PORT,
                    protocol: Protocol::Tcp,
                }],
            }),
        ];
        for o in objects {
            out.push((
                cluster::object_key(o.resource(), o.namespace(), o.name()),
                serde_json::to_string(&o).unwrap(),
            ));
        }
    }
    out
}

/// kube-proxy's iptables-mode nat ruleset for `services` Services of one endpoint each.
fn kube_proxy_rules(services: u32, backend: Ipv4Addr) -> String {
    let mut t = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    for i in 0..services {
        writeln!(t, ":KUBE-SVC-{i:012X} - [0:0]\n:KUBE-SEP-{i:012X} - [0:0]").unwrap();
    }
    t.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE\n",
    );
    // The Service under test last: the worst case of a linear chain, as a Service
    // created after the others is in kube-proxy's (its rules are sorted by name only for
    // output, evaluation walks them all).
    for i in (0..services).rev() {
        let svc = format!("bench/svc-{i:05}");
        let endpoint = if i == 0 {
            backend
        } else {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i)
        };
        writeln!(
            t,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{svc} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{i:012X}\n\
             -A KUBE-SVC-{i:012X} -m comment --comment \"{svc} -> {endpoint}:{PORT}\" -j KUBE-SEP-{i:012X}\n\
             -A KUBE-SEP-{i:012X} -s {endpoint}/32 -m comment --comment \"{svc}\" -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-{i:012X} -p tcp -m comment --comment \"{svc}\" -m tcp -j DNAT --to-destination {endpoint}:{PORT}",
            vip(i)
        )
        .unwrap();
    }
    t.push_str("COMMIT\n");
    t
}

fn ip(host: &Host, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = host.output("ip", &args).unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

fn in_ns(ns: &NetNs, args: &str) {
    let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    let out = ns
        .run(move || Command::new("ip").args(&args).output())
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Set in a child of this benchmark that measures from inside a pod and the node's
/// cgroup: `SECONDS TARGET`; it prints its rate.
const CHILD: &str = "TWILL_BENCH_CONNECT_CHILD";

/// Connections per second from `ns` to `target`, measured by a child process in the pod's
/// namespace and `node`'s cgroup: a pod's process on a real node, where the socket
/// programs translate at connect.
fn rate_in_cgroup(node: &Host, ns: &NetNs, target: SocketAddrV4, seconds: f64) -> f64 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, format!("{seconds} {target}"))
        .stdout(Stdio::piped());
    let out = node.spawn_in(ns, cmd).unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        // Already in the pod's namespace and the node's cgroup (see `rate_in_cgroup`).
        let (seconds, target) = spec.split_once(' ').unwrap();
        let target: SocketAddrV4 = target.parse().unwrap();
        let me = NetNs::from_path("/proc/self/ns/net").unwrap();
        println!("{}", connect_rate(&me, target, seconds.parse().unwrap()));
        return;
    }
    require_root();
    let seconds: f64 = env_or("SECONDS_PER_RUN", 2.0);
    let rounds: usize = env_or("ROUNDS", 3);
    let twilld_bin = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let cni_bin = twilld_bin.with_file_name("twill");
    assert!(
        cni_bin.exists(),
        "{} missing: `cargo build --release --bins` first (scripts/bench does)",
        cni_bin.display()
    );
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemon = Twilld::start(twilld_bin, &lab, &nodes[0], CONFIG, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());

    // twill: two pods through CNI.
    let mut pod = |name: &str| -> (NetNs, Ipv4Addr) {
        let (path, ip) = cni::add_pod(&cni_bin, &mut lab, &nodes[0], &daemon, name, "");
        (NetNs::from_path(&path).unwrap(), ip)
    };
    let (twill_client, _) = pod("client");
    let (twill_backend_ns, twill_backend) = pod("backend");

    // iptables: two namespaces on veths routed by node2.
    let anchor = nodes[1].clone();
    let ipt_client = lab.create_netns("ipt-client").unwrap();
    let ipt_backend_ns = lab.create_netns("ipt-backend").unwrap();
    let ipt_backend = Ipv4Addr::new(10, 250, 2, 2);
    for (ns, n) in [(&ipt_client, 1), (&ipt_backend_ns, 2)] {
        let name = ns
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        ip(
            &anchor,
            &format!("link add v{n} type veth peer name eth0 netns {name}"),
        );
        ip(&anchor, &format!("addr add 10.250.{n}.1/30 dev v{n}"));
        ip(&anchor, &format!("link set v{n} up"));
        in_ns(ns, &format!("addr add 10.250.{n}.2/30 dev eth0"));
        in_ns(ns, "link set eth0 up");
        in_ns(ns, "link set lo up");
        in_ns(ns, &format!("route add default via 10.250.{n}.1"));
    }
    anchor
        .run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();

    accept_and_close(&twill_backend_ns, PORT);
    accept_and_close(&ipt_backend_ns, PORT);
    let to_vip = SocketAddrV4::new(VIP, 80);

    println!(
        "{:>8}  {:>12} {:>12} {:>12} {:>12}  {:>14} {:>16}   {:>12} {:>12} {:>14} {:>16}",
        "services",
        "twill c/s",
        "direct c/s",
        "iptables c/s",
        "direct c/s",
        "twill/direct",
        "twill/iptables",
        "socket c/s",
        "direct c/s",
        "socket/direct",
        "socket/iptables"
    );
    let mut written = 0;
    for size in SIZES {
        // twill: add Services up to `size`, wait until node1's maps hold them.
        put_all(&lab, &objects(written, size, twill_backend));
        written = size;
        let start = Instant::now();
        while twill_bpf::read_services(&nodes[0].bpffs_dir).map_or(0, |f| f.len()) < size as usize {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "maps never filled"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // iptables: the whole ruleset for `size` Services.
        let rules = kube_proxy_rules(size, ipt_backend);
        let out = anchor
            .run(move || {
                let mut child = Command::new("iptables-restore")
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                child.stdin.take().unwrap().write_all(rules.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap()
            .unwrap();
        assert!(out.status.success(), "iptables-restore: {out:?}");

        let (mut tw, mut tw_direct, mut ipt, mut ipt_direct) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut sock, mut sock_direct) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            sock.push(rate_in_cgroup(&nodes[0], &twill_client, to_vip, seconds));
            sock_direct.push(rate_in_cgroup(
                &nodes[0],
                &twill_client,
                SocketAddrV4::new(twill_backend, PORT),
                seconds,
            ));
            tw.push(connect_rate(&twill_client, to_vip, seconds));
            tw_direct.push(connect_rate(
                &twill_client,
                SocketAddrV4::new(twill_backend, PORT),
                seconds,
            ));
            ipt.push(connect_rate(&ipt_client, to_vip, seconds));
            ipt_direct.push(connect_rate(
                &ipt_client,
                SocketAddrV4::new(ipt_backend, PORT),
                seconds,
            ));
        }
        let (tw, tw_direct, ipt, ipt_direct) = (
            median(tw),
            median(tw_direct),
            median(ipt),
            median(ipt_direct),
        );
        let (sock, sock_direct) = (median(sock), median(sock_direct));
        println!(
            "{size:>8}  {tw:>12.0} {tw_direct:>12.0} {ipt:>12.0} {ipt_direct:>12.0}  {:>14.2} {:>16.2}   {sock:>12.0} {sock_direct:>12.0} {:>14.2} {:>16.2}",
            tw / tw_direct,
            tw / ipt,
            sock / sock_direct,
            sock / ipt
        );
    }
    println!(
        "(medians of {rounds} runs of {seconds} s each; twill's and iptables' direct columns are \
         their own setups' limits; twill: the client pod translated per packet on its veth; \
         socket: the same pod with its process in the node's cgroup, as on a real node, \
         translated at connect; targets: twill/direct >= 0.90 at every size, \
         twill/iptables >= 5 at 10,000)"
    );
    drop(daemon);
}

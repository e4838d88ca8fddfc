//! Per-connection cost of NetworkPolicy: TCP connections per second from a client pod to
//! a server pod whose policies allow the flow, while 0, 100, 1,000 and 10,000 other
//! NetworkPolicies exist, against pods no policy selects (the limit) and against the same
//! policies as kube-router's iptables ruleset, all in one run.
//!
//! twill's side: node1 runs `twilld`; four pods wired by the `twill` CNI binary: a client
//! and a server in namespace `bench` that two policies select (the server takes TCP 8080
//! from the client, the client may open TCP 8080 on the server) and a client and a server
//! in namespace `open` that no policy selects. The other policies are in etcd (see
//! `common/policy.rs`); one in 200 of them also selects the `bench` pods.
//!
//! kube-router's side: node2 runs no daemon; the same four pods as namespaces on veths
//! routed by node2, whose filter table holds what kube-router's iptables mode makes of
//! the same policies and pods (built here from the objects, see [`kube_router`]): jumps
//! from FORWARD, INPUT and OUTPUT to KUBE-ROUTER-*, a KUBE-POD-FW-* chain per local pod
//! (stateful accept first, then a jump per policy selecting the pod, then reject what no
//! policy marked), a KUBE-NWPLCY-* chain per policy matching ipsets (`hash:ip` for pods,
//! `hash:net` for ipBlocks, loaded with `ipset restore`). node3 routes a client and a
//! server namespace with no rules at all, for context.
//!
//! Before each size is measured, both sides are checked to enforce the policies: the flow
//! connects, and a port no policy allows, a client the server's policy does not name and
//! a server the client's policy does not name are denied. The first row, before any
//! policy exists, checks that all of those connect.
//!
//! A connection is a completed handshake closed with a reset (SO_LINGER 0), so no
//! TIME_WAIT piles up. Runs are interleaved (their order rotates each round) and medians
//! printed. Run as root with `scripts/bench`. SECONDS_PER_RUN=N (default 2), ROUNDS=N
//! (default 5); RULES_DIR=DIR writes the kube-router side's `ipset restore` and
//! `iptables-restore` input of each size to DIR.

#[path = "common/policy.rs"]
mod common;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    BenchPod, CLIENT, CLOSED_PORT, OPEN_CLIENT, OPEN_SERVER, PORT, Quartet, SERVER,
    allowing_policies, assert_isolated_by, median, namespace_wide, other_policy, store_entries,
    wait_reconciled,
};
use twill_k8s::{NetworkPolicy, Object};
use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench::{accept_and_close, connect_rate, env_or, put_all},
    daemon::Twilld,
    require_root,
};

const CONFIG: &str = "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";
/// NetworkPolicies besides the two that allow the measured flow.
const SIZES: [u32; 4] = [0, 100, 1000, 10_000];

fn ip(host: &Host, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = host.output("ip", &args).expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

fn in_ns(ns: &NetNs, args: &str) {
    let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    let out = ns
        .run(move || Command::new("ip").args(&args).output())
        .expect("enter the namespace")
        .expect("run ip");
    assert!(out.status.success(), "{out:?}");
}

/// A namespace `name` on a veth to `node`, which routes for it: 10.250.`n`.2/30 behind
/// 10.250.`n`.1 on the node's `v<n>`. Returns it and its address.
fn routed_ns(lab: &mut Lab, node: &Host, name: &str, n: u8) -> (NetNs, Ipv4Addr) {
    let ns = lab.create_netns(name).expect("create a namespace");
    let file = ns.name().expect("a named namespace").to_owned();
    ip(
        node,
        &format!("link add v{n} type veth peer name eth0 netns {file}"),
    );
    ip(node, &format!("addr add 10.250.{n}.1/30 dev v{n}"));
    ip(node, &format!("link set v{n} up"));
    in_ns(&ns, &format!("addr add 10.250.{n}.2/30 dev eth0"));
    in_ns(&ns, "link set eth0 up");
    in_ns(&ns, "link set lo up");
    in_ns(&ns, &format!("route add default via 10.250.{n}.1"));
    (ns, Ipv4Addr::new(10, 250, n, 2))
}

/// Runs `program` with `input` on its stdin inside `host`; panics with its errors.
fn restore(host: &Host, program: &'static str, args: &'static [&'static str], input: String) {
    let out = host
        .run(move || {
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())?;
            child.wait_with_output()
        })
        .expect("enter the node")
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What kube-router's iptables mode (v2, the per-pod and per-policy chain layout of its
/// network policy controller) programs on a node for `policies` and the node's `pods`:
/// the `ipset restore` input and the `iptables-restore` filter table. Only what the
/// forwarded pod traffic here meets is reproduced in full; chains and sets are named as
/// kube-router names them (a hash of namespace and name), with a hash of our own.
mod kube_router {
    use super::*;

    /// A pod on the kube-router node.
    pub struct LocalPod<'a> {
        pub pod: &'a BenchPod,
        pub ip: Ipv4Addr,
    }

    /// 16 hex digits of FNV-1a over `parts`: chain and set names within iptables' 28 and
    /// ipset's 31 characters, as kube-router's 16 base32 digits of a SHA-256.
    fn hash(parts: &[&str]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in parts.iter().flat_map(|p| p.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016X}")
    }

    fn policy_chain(p: &NetworkPolicy) -> String {
        format!("KUBE-NWPLCY-{}", hash(&[&p.namespace, &p.name]))
    }

    fn pod_chain(pod: &BenchPod) -> String {
        format!("KUBE-POD-FW-{}", hash(&[pod.namespace, pod.name]))
    }

    fn selects(p: &NetworkPolicy, pod: &BenchPod) -> bool {
        p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels())
    }

    /// The addresses of the pods a rule's peers select and its ipBlocks. Namespaces
    /// carry no labels here (as in twill's store, which has no Namespace objects).
    fn peers(
        p: &NetworkPolicy,
        rule: &twill_k8s::PolicyRule,
        pods: &[LocalPod],
    ) -> (Vec<String>, Vec<String>) {
        let (mut ips, mut blocks) = (Vec::new(), Vec::new());
        for peer in &rule.peers {
            match peer {
                twill_k8s::PolicyPeer::Pods {
                    namespaces,
                    pods: selector,
                } => {
                    for l in pods {
                        let namespace_ok = match namespaces {
                            None => l.pod.namespace == p.namespace,
                            Some(s) => s.matches(&BTreeMap::new()),
                        };
                        if namespace_ok && selector.matches(&l.pod.labels()) {
                            ips.push(l.ip.to_string());
                        }
                    }
                }
                twill_k8s::PolicyPeer::IpBlock { cidr, .. } => blocks.push(cidr.to_string()),
            }
        }
        (ips, blocks)
    }

    /// The two inputs: (`ipset restore -exist`, `iptables-restore`).
    pub fn ruleset(policies: &[NetworkPolicy], pods: &[LocalPod]) -> (String, String) {
        let mut sets = String::new();
        let mut set = |name: &str, kind: &str, members: &[String]| {
            writeln!(
                sets,
                "create {name} {kind} family inet hashsize 1024 maxelem 65536 timeout 0\nflush {name}"
            )
            .unwrap();
            for m in members {
                writeln!(sets, "add {name} {m} timeout 0").unwrap();
            }
        };
        let mut chains = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :KUBE-ROUTER-INPUT - [0:0]\n:KUBE-ROUTER-FORWARD - [0:0]\n:KUBE-ROUTER-OUTPUT - [0:0]\n\
             :KUBE-NWPLCY-COMMON - [0:0]\n:KUBE-NWPLCY-DEFAULT - [0:0]\n",
        );
        let mut rules = String::new();
        for (builtin, own) in [
            ("INPUT", "KUBE-ROUTER-INPUT"),
            ("FORWARD", "KUBE-ROUTER-FORWARD"),
            ("OUTPUT", "KUBE-ROUTER-OUTPUT"),
        ] {
            let id = hash(&[builtin, own]);
            writeln!(
                rules,
                "-A {builtin} -m comment --comment \"kube-router netpol - {id}\" -j {own}"
            )
            .unwrap();
        }
        rules.push_str(
            "-A KUBE-ROUTER-INPUT -d 10.96.0.0/12 -m comment --comment \"allow traffic to primary/secondary cluster IP range\" -j RETURN\n\
             -A KUBE-ROUTER-INPUT -p tcp -m comment --comment \"allow LOCAL TCP traffic to node ports\" -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN\n\
             -A KUBE-ROUTER-INPUT -p udp -m comment --comment \"allow LOCAL UDP traffic to node ports\" -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN\n\
             -A KUBE-NWPLCY-COMMON -m comment --comment \"rule to drop invalid state for pod\" -m conntrack --ctstate INVALID -j DROP\n\
             -A KUBE-NWPLCY-COMMON -m comment --comment \"rule for stateful firewall for pod\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A KUBE-NWPLCY-COMMON -p icmp -m comment --comment \"allow icmp echo requests\" -m icmp --icmp-type 8 -j ACCEPT\n\
             -A KUBE-NWPLCY-COMMON -p icmp -m comment --comment \"allow icmp destination unreachable messages\" -m icmp --icmp-type 3 -j ACCEPT\n\
             -A KUBE-NWPLCY-COMMON -p icmp -m comment --comment \"allow icmp time exceeded messages\" -m icmp --icmp-type 11 -j ACCEPT\n\
             -A KUBE-NWPLCY-DEFAULT -m comment --comment \"rule to mark traffic matching a network policy\" -j MARK --set-xmark 0x10000/0x10000\n",
        );

        // A chain per policy, whatever it selects, with a mark-and-return rule pair per
        // rule and port; a rule whose peers select no pod and no block has no rule.
        for p in policies {
            let chain = policy_chain(p);
            writeln!(chains, ":{chain} - [0:0]").unwrap();
            let targets: Vec<String> = pods
                .iter()
                .filter(|l| selects(p, l.pod))
                .map(|l| l.ip.to_string())
                .collect();
            let comment = format!(
                "rule to ACCEPT traffic from source pods to dest pods selected by policy name {} namespace {}",
                p.name, p.namespace
            );
            let mut accept =
                |src: Option<&str>, dst: Option<&str>, ports: &[twill_k8s::PolicyPort]| {
                    let mut m = format!("-A {chain} -m comment --comment \"{comment}\"");
                    if let Some(s) = src {
                        write!(m, " -m set --match-set {s} src").unwrap();
                    }
                    if let Some(d) = dst {
                        write!(m, " -m set --match-set {d} dst").unwrap();
                    }
                    let mut with_ports: Vec<String> = ports
                        .iter()
                        .map(|port| {
                            let proto = match port.protocol {
                                twill_k8s::Protocol::Tcp => "tcp",
                                twill_k8s::Protocol::Udp => "udp",
                                twill_k8s::Protocol::Sctp => "sctp",
                            };
                            match &port.port {
                                Some(twill_k8s::PolicyPortNumber::Number(n)) => {
                                    format!("{m} -p {proto} --dport {n}")
                                }
                                _ => format!("{m} -p {proto}"),
                            }
                        })
                        .collect();
                    if with_ports.is_empty() {
                        with_ports.push(m);
                    }
                    for m in with_ports {
                        writeln!(rules, "{m} -j MARK --set-xmark 0x10000/0x10000").unwrap();
                        writeln!(rules, "{m} -m mark --mark 0x10000/0x10000 -j RETURN").unwrap();
                    }
                };
            if p.ingress_isolation {
                let dst = format!("KUBE-DST-{}", hash(&[&p.namespace, &p.name]));
                set(&dst, "hash:ip", &targets);
                for (r, rule) in p.ingress.iter().enumerate() {
                    let r = r.to_string();
                    let (ips, blocks) = peers(p, rule, pods);
                    if rule.peers.is_empty() {
                        accept(None, Some(&dst), &rule.ports);
                    }
                    if !ips.is_empty() {
                        let src = format!(
                            "KUBE-SRC-{}",
                            hash(&[&p.namespace, &p.name, "ingressrule", &r, "pod"])
                        );
                        set(&src, "hash:ip", &ips);
                        accept(Some(&src), Some(&dst), &rule.ports);
                    }
                    if !blocks.is_empty() {
                        let src = format!(
                            "KUBE-SRC-{}",
                            hash(&[&p.namespace, &p.name, "ingressrule", &r, "ipblock"])
                        );
                        set(&src, "hash:net", &blocks);
                        accept(Some(&src), Some(&dst), &rule.ports);
                    }
                }
            }
            if p.egress_isolation {
                let src = format!("KUBE-SRC-{}", hash(&[&p.namespace, &p.name]));
                set(&src, "hash:ip", &targets);
                for (r, rule) in p.egress.iter().enumerate() {
                    let r = r.to_string();
                    let (ips, blocks) = peers(p, rule, pods);
                    if rule.peers.is_empty() {
                        accept(Some(&src), None, &rule.ports);
                    }
                    if !ips.is_empty() {
                        let dst = format!(
                            "KUBE-DST-{}",
                            hash(&[&p.namespace, &p.name, "egressrule", &r, "pod"])
                        );
                        set(&dst, "hash:ip", &ips);
                        accept(Some(&src), Some(&dst), &rule.ports);
                    }
                    if !blocks.is_empty() {
                        let dst = format!(
                            "KUBE-DST-{}",
                            hash(&[&p.namespace, &p.name, "egressrule", &r, "ipblock"])
                        );
                        set(&dst, "hash:net", &blocks);
                        accept(Some(&src), Some(&dst), &rule.ports);
                    }
                }
            }
        }

        // A firewall chain per local pod, and the jumps to it.
        for l in pods {
            let (chain, ip) = (pod_chain(l.pod), l.ip);
            let (name, namespace) = (l.pod.name, l.pod.namespace);
            writeln!(chains, ":{chain} - [0:0]").unwrap();
            writeln!(rules, "-A {chain} -m comment --comment \"rule to jump to the common policy chain\" -j KUBE-NWPLCY-COMMON").unwrap();
            writeln!(rules, "-A {chain} -m comment --comment \"rule to permit the traffic traffic to pods when source is the pod's local node\" -m addrtype --src-type LOCAL -d {ip} -j ACCEPT").unwrap();
            let (mut ingress, mut egress) = (false, false);
            for p in policies.iter().filter(|p| selects(p, l.pod)) {
                let address = match (p.ingress_isolation, p.egress_isolation) {
                    (true, true) => String::new(),
                    (true, false) => format!(" -d {ip}"),
                    _ => format!(" -s {ip}"),
                };
                ingress |= p.ingress_isolation;
                egress |= p.egress_isolation;
                writeln!(
                    rules,
                    "-A {chain}{address} -m comment --comment \"run through nw policy {}\" -j {}",
                    p.name,
                    policy_chain(p)
                )
                .unwrap();
            }
            if !ingress {
                writeln!(rules, "-A {chain} -d {ip} -m comment --comment \"run through default ingress network policy chain\" -j KUBE-NWPLCY-DEFAULT").unwrap();
            }
            if !egress {
                writeln!(rules, "-A {chain} -s {ip} -m comment --comment \"run through default egress network policy chain\" -j KUBE-NWPLCY-DEFAULT").unwrap();
            }
            writeln!(
                rules,
                "-A {chain} -m comment --comment \"rule to log dropped traffic POD name:{name} namespace: {namespace}\" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/minute --limit-burst 10 -j NFLOG --nflog-group 100\n\
                 -A {chain} -m comment --comment \"rule to REJECT traffic destined for POD name:{name} namespace: {namespace}\" -m mark ! --mark 0x10000/0x10000 -j REJECT\n\
                 -A {chain} -j MARK --set-xmark 0x0/0x10000\n\
                 -A {chain} -m comment --comment \"set mark to ACCEPT traffic that comply to network policies\" -j MARK --set-xmark 0x20000/0x20000"
            )
            .unwrap();
            let to = format!(
                "rule to jump traffic destined to POD name:{name} namespace: {namespace} to chain {chain}"
            );
            let from = format!(
                "rule to jump traffic from POD name:{name} namespace: {namespace} to chain {chain}"
            );
            writeln!(
                rules,
                "-A KUBE-ROUTER-FORWARD -m comment --comment \"{to}\" -d {ip} -j {chain}\n\
                 -A KUBE-ROUTER-OUTPUT -m comment --comment \"{to}\" -d {ip} -j {chain}\n\
                 -A KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -m comment --comment \"{to}\" -d {ip} -j {chain}\n\
                 -A KUBE-ROUTER-INPUT -m comment --comment \"{from}\" -s {ip} -j {chain}\n\
                 -A KUBE-ROUTER-FORWARD -m comment --comment \"{from}\" -s {ip} -j {chain}\n\
                 -A KUBE-ROUTER-OUTPUT -m comment --comment \"{from}\" -s {ip} -j {chain}\n\
                 -A KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -m comment --comment \"{from}\" -s {ip} -j {chain}"
            )
            .unwrap();
        }
        for own in [
            "KUBE-ROUTER-INPUT",
            "KUBE-ROUTER-FORWARD",
            "KUBE-ROUTER-OUTPUT",
        ] {
            writeln!(rules, "-A {own} -m comment --comment \"rule to explicitly ACCEPT traffic that comply to network policies\" -m mark --mark 0x20000/0x20000 -j ACCEPT").unwrap();
        }
        chains.push_str(&rules);
        chains.push_str("COMMIT\n");
        (sets, chains)
    }
}

/// One measured setup: who connects to what.
struct Run<'a> {
    from: &'a NetNs,
    to: SocketAddrV4,
}

fn main() {
    require_root();
    let seconds: f64 = env_or("SECONDS_PER_RUN", 2.0);
    let rounds: usize = env_or("ROUNDS", 5);
    let twilld_bin = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let cni_bin = twilld_bin.with_file_name("twill");
    assert!(
        cni_bin.exists(),
        "{} missing: `cargo build --release --bins` first (scripts/bench does)",
        cni_bin.display()
    );
    let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let daemon = Twilld::start(twilld_bin, &lab, &nodes[0], CONFIG, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    let pods = [&CLIENT, &SERVER, &OPEN_CLIENT, &OPEN_SERVER];
    put_all(&lab, &store_entries(pods.iter().map(|p| p.object())));

    // twill: the four pods through CNI on node1.
    let [tw_client, tw_server, tw_open_client, tw_open_server] =
        pods.map(|p| p.wire(&cni_bin, &mut lab, &nodes[0], &daemon));
    // kube-router: the same four as namespaces routed by node2; node3: two, no rules.
    let kr = nodes[1].clone();
    let [kr_client, kr_server, kr_open_client, kr_open_server] = [0u8, 1, 2, 3].map(|i| {
        routed_ns(
            &mut lab,
            &kr,
            &format!("kr-{}", pods[i as usize].name),
            i + 1,
        )
    });
    let plain_client = routed_ns(&mut lab, &nodes[2], "plain-client", 1);
    let plain_server = routed_ns(&mut lab, &nodes[2], "plain-server", 2);
    for node in [&nodes[1], &nodes[2]] {
        node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("enter the node")
            .expect("enable forwarding");
    }
    for (ns, _) in [
        &tw_server,
        &tw_open_server,
        &kr_server,
        &kr_open_server,
        &plain_server,
    ] {
        accept_and_close(ns, PORT);
    }
    accept_and_close(&tw_server.0, CLOSED_PORT);
    accept_and_close(&kr_server.0, CLOSED_PORT);

    let twill = Quartet {
        client: tw_client.0.clone(),
        server: tw_server.1,
        open_client: tw_open_client.0.clone(),
        open_server: tw_open_server.1,
    };
    let kube_router = Quartet {
        client: kr_client.0.clone(),
        server: kr_server.1,
        open_client: kr_open_client.0.clone(),
        open_server: kr_open_server.1,
    };
    let local: Vec<kube_router::LocalPod> =
        [&kr_client, &kr_server, &kr_open_client, &kr_open_server]
            .iter()
            .zip(pods)
            .map(|((_, ip), pod)| kube_router::LocalPod { pod, ip: *ip })
            .collect();
    let runs = [
        Run {
            from: &tw_client.0,
            to: SocketAddrV4::new(tw_server.1, PORT),
        },
        Run {
            from: &tw_open_client.0,
            to: SocketAddrV4::new(tw_open_server.1, PORT),
        },
        Run {
            from: &kr_client.0,
            to: SocketAddrV4::new(kr_server.1, PORT),
        },
        Run {
            from: &plain_client.0,
            to: SocketAddrV4::new(plain_server.1, PORT),
        },
    ];
    let measure = || -> [f64; 4] {
        let mut samples: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            for k in 0..runs.len() {
                let i = (round + k) % runs.len();
                samples[i].push(connect_rate(runs[i].from, runs[i].to, seconds));
            }
        }
        samples.map(median)
    };

    println!(
        "{:>8}  {:>10} {:>10} {:>15} {:>12}   {:>10} {:>17} {:>20}",
        "policies",
        "twill c/s",
        "open c/s",
        "kube-router c/s",
        "no rules c/s",
        "twill/open",
        "twill/kube-router",
        "kube-router/no rules"
    );
    let row = |label: &str, m: [f64; 4]| {
        let [tw, open, kr, plain] = m;
        println!(
            "{label:>8}  {tw:>10.0} {open:>10.0} {kr:>15.0} {plain:>12.0}   {:>10.2} {:>17.2} {:>20.2}",
            tw / open,
            tw / kr,
            kr / plain
        );
    };

    // No policy anywhere: kube-router's ruleset for no policies, every probe connects.
    let (sets, filter) = kube_router::ruleset(&[], &local);
    restore(&kr, "ipset", &["restore", "-exist"], sets);
    restore(&kr, "iptables-restore", &[], filter);
    assert_isolated_by(&daemon, tw_server.1, 0, 0);
    twill.assert_enforced("twill with no policy", false);
    kube_router.assert_enforced("kube-router with no policy", false);
    row("none", measure());

    let mut policies = allowing_policies();
    put_all(
        &lab,
        &store_entries(policies.iter().cloned().map(Object::NetworkPolicy)),
    );
    let mut min_ratio = f64::INFINITY;
    for size in SIZES {
        let written = policies.len() - 2;
        let more: Vec<NetworkPolicy> = (written as u32..size).map(other_policy).collect();
        put_all(
            &lab,
            &store_entries(more.iter().cloned().map(Object::NetworkPolicy)),
        );
        policies.extend(more);
        let started = Instant::now();
        wait_reconciled(&daemon, policies.len());
        let programmed = started.elapsed();
        let wide = namespace_wide(size);
        assert_isolated_by(&daemon, tw_server.1, 1 + wide, 0);
        assert_isolated_by(&daemon, tw_client.1, wide, 1);
        let (sets, filter) = kube_router::ruleset(&policies, &local);
        if let Ok(dir) = std::env::var("RULES_DIR") {
            let dir = Path::new(&dir);
            std::fs::write(dir.join(format!("ipset-{size}.txt")), &sets).expect("write RULES_DIR");
            std::fs::write(dir.join(format!("iptables-{size}.txt")), &filter)
                .expect("write RULES_DIR");
        }
        let started = Instant::now();
        restore(&kr, "ipset", &["restore", "-exist"], sets);
        restore(&kr, "iptables-restore", &[], filter);
        let restored = started.elapsed();
        twill.assert_enforced(&format!("twill with {size} policies"), true);
        kube_router.assert_enforced(&format!("kube-router with {size} policies"), true);
        eprintln!(
            "{size} policies: twilld's pass over them logged {programmed:.1?} after the last write; ipset and iptables-restore took {restored:.1?}"
        );
        let m = measure();
        min_ratio = min_ratio.min(m[0] / m[1]);
        row(&size.to_string(), m);
    }
    println!(
        "(medians of {rounds} runs of {seconds} s each, order rotated each round; policies: \
         NetworkPolicies besides the two that allow the measured flow, none: not even those; \
         twill: client to server, both selected; open: the same node's pods that no policy \
         selects, the limit; kube-router: the same pods and policies as kube-router's \
         iptables ruleset, routed by a node; no rules: a node routing with an empty ruleset; \
         target: twill/open >= 0.95 at every size)"
    );
    println!(
        "target: {}",
        if min_ratio >= 0.95 { "met" } else { "MISSED" }
    );
    drop(daemon);
}

//! Service programming at scale: 10,000 Services with 10 endpoints each (EndpointSlices)
//! written to etcd; how long until one node's eBPF maps hold every frontend with all its
//! backends, and the daemon's memory afterwards. The anchor, in the same run, is
//! `iptables-restore` of the equivalent ruleset in kube-proxy's iptables-mode structure
//! (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*, statistic-mode random, DNAT, mark for
//! masquerade) into a fresh node namespace.
//!
//! Run as root with `scripts/bench`. SERVICES=N changes the count (default 10000).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use twill_api::cluster;
use twill_k8s::{
    ClusterIp, EndpointSlice, Object, Protocol, Service, ServicePort, ServiceType, SliceEndpoint,
    SlicePort, TargetPort,
};
use twill_lab::{Lab, LabSpec};
use twill_tests::{
    bench::{env_or, put_all, rss_mib},
    daemon::Twilld,
    require_root,
};

const CONFIG: &str = "[network]\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";
const ENDPOINTS: u32 = 10;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i)
}

fn endpoint(i: u32, j: u32) -> Ipv4Addr {
    // 10.200.0.0/16 upwards: addresses only, nothing needs to answer.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i * ENDPOINTS + j)
}

fn objects(services: u32) -> Vec<Object> {
    let mut out = Vec::new();
    for i in 0..services {
        let name = format!("svc-{i:05}");
        out.push(Object::Service(Service {
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
                target: TargetPort::Number(8080),
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            external_name: None,
        }));
        out.push(Object::EndpointSlice(EndpointSlice {
            namespace: "bench".into(),
            name: format!("{name}-abcde"),
            service: name,
            endpoints: (0..ENDPOINTS)
                .map(|j| SliceEndpoint {
                    addresses: vec![endpoint(i, j)],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: None,
                    hostname: None,
                })
                .collect(),
            ports: vec![SlicePort {
                name: String::new(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
        }));
    }
    out
}

/// kube-proxy's iptables-mode nat ruleset for the same Services, as `iptables-restore`
/// input (the structure its documentation and `iptables-save` on a cluster show).
fn kube_proxy_rules(services: u32) -> String {
    let mut t = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    for i in 0..services {
        writeln!(t, ":KUBE-SVC-{i:012X} - [0:0]").unwrap();
        for j in 0..ENDPOINTS {
            writeln!(t, ":KUBE-SEP-{i:08X}{j:04X} - [0:0]").unwrap();
        }
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
    for i in 0..services {
        let svc = format!("bench/svc-{i:05}");
        writeln!(
            t,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{svc} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{i:012X}",
            vip(i)
        )
        .unwrap();
        for j in 0..ENDPOINTS {
            let sep = format!("KUBE-SEP-{i:08X}{j:04X}");
            let left = ENDPOINTS - j;
            if left > 1 {
                writeln!(
                    t,
                    "-A KUBE-SVC-{i:012X} -m comment --comment \"{svc} -> {}:8080\" -m statistic --mode random --probability {:.11} -j {sep}",
                    endpoint(i, j),
                    1.0 / f64::from(left)
                )
                .unwrap();
            } else {
                writeln!(
                    t,
                    "-A KUBE-SVC-{i:012X} -m comment --comment \"{svc} -> {}:8080\" -j {sep}",
                    endpoint(i, j)
                )
                .unwrap();
            }
            writeln!(
                t,
                "-A {sep} -s {}/32 -m comment --comment \"{svc}\" -j KUBE-MARK-MASQ",
                endpoint(i, j)
            )
            .unwrap();
            writeln!(
                t,
                "-A {sep} -p tcp -m comment --comment \"{svc}\" -m tcp -j DNAT --to-destination {}:8080",
                endpoint(i, j)
            )
            .unwrap();
        }
    }
    t.push_str("COMMIT\n");
    t
}

fn main() {
    require_root();
    let services: u32 = env_or("SERVICES", 10_000);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let daemon = Twilld::start(twilld, &lab, &node, CONFIG, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    let rss_before = rss_mib(daemon.child.id());
    let stored: Vec<(String, String)> = objects(services)
        .iter()
        .map(|o| {
            (
                cluster::object_key(o.resource(), o.namespace(), o.name()),
                serde_json::to_string(o).unwrap(),
            )
        })
        .collect();

    // twill: write the objects (500 to a transaction), time until the maps are complete.
    let start = Instant::now();
    put_all(&lab, &stored);
    let written = start.elapsed();
    let want = services as usize;
    loop {
        let frontends = twill_bpf::read_services(&node.bpffs_dir).unwrap_or_default();
        let complete = frontends.len() == want
            && frontends
                .iter()
                .all(|f| f.backends.len() == ENDPOINTS as usize);
        if complete {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} frontends after 300 s",
            frontends.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let programmed = start.elapsed();
    let rss = rss_mib(daemon.child.id());

    // Anchor: kube-proxy's ruleset through iptables-restore on node2 (no daemon there).
    let rules = kube_proxy_rules(services);
    let anchor = lab.nodes()[1].clone();
    let rule_count = rules.lines().filter(|l| l.starts_with("-A")).count();
    let anchor_start = Instant::now();
    let out = anchor
        .run(move || {
            let mut child = Command::new("iptables-restore")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            child.stdin.take().unwrap().write_all(rules.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .unwrap();
    let anchor_took = anchor_start.elapsed();
    assert!(
        out.status.success(),
        "iptables-restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    println!(
        "services: {services} x {ENDPOINTS} endpoints ({} objects in etcd)",
        stored.len()
    );
    println!(
        "twill:    written to etcd in {:.2} s; maps complete {:.2} s after the first write; \
         twilld RSS {rss_before:.1} -> {rss:.1} MiB",
        written.as_secs_f64(),
        programmed.as_secs_f64()
    );
    println!(
        "iptables: iptables-restore of kube-proxy's ruleset ({rule_count} rules) took {:.2} s",
        anchor_took.as_secs_f64()
    );
    println!(
        "ratio:    twill end-to-end / iptables-restore alone = {:.2} (target: maps complete <= 2 s, RSS <= 100 MiB)",
        programmed.as_secs_f64() / anchor_took.as_secs_f64()
    );
    drop(daemon);
}

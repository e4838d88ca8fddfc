//! What the NetworkPolicy benchmarks (`policy_connect`, `policy_throughput`) share: the
//! four pods they measure between, the two policies that allow the measured flow, the
//! other policies that fill the cluster, and the probes that check, before any
//! measurement, that the policies are enforced (so no benchmark measures an open pod).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use ipnetwork::IpNetwork;
use twill_api::{Request, Response, cluster};
use twill_k8s::{
    Enforcement, LabelSelector, NetworkPolicy, Object, Pod, PolicyPeer, PolicyPort,
    PolicyPortNumber, PolicyRule, Protocol,
};
use twill_lab::{Host, Lab};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld};

/// The measured port: servers listen on it and the allowing policies name it.
pub const PORT: u16 = 8080;
/// A port the policed server also listens on that no policy allows.
pub const CLOSED_PORT: u16 = 8081;

/// A pod of the benchmarks: where it lives and its `app` label.
pub struct BenchPod {
    pub namespace: &'static str,
    pub name: &'static str,
    pub app: &'static str,
}

/// The policed pair (namespace `bench`: the allowing policies select both) and the open
/// pair (namespace `open`: no policy selects either, so their rate is the no-policy one).
pub const CLIENT: BenchPod = BenchPod {
    namespace: "bench",
    name: "client",
    app: "client",
};
pub const SERVER: BenchPod = BenchPod {
    namespace: "bench",
    name: "server",
    app: "server",
};
pub const OPEN_CLIENT: BenchPod = BenchPod {
    namespace: "open",
    name: "open-client",
    app: "client",
};
pub const OPEN_SERVER: BenchPod = BenchPod {
    namespace: "open",
    name: "open-server",
    app: "server",
};

impl BenchPod {
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_owned(), self.app.to_owned())])
    }

    pub fn object(&self) -> Object {
        Object::Pod(Pod {
            namespace: self.namespace.into(),
            name: self.name.into(),
            labels: self.labels(),
            named_ports: Vec::new(),
            hostname: None,
            subdomain: None,
        })
    }

    /// Wires the pod on `host` through the CNI binary `cni_bin`, as a runtime would (with
    /// its namespace and name in `CNI_ARGS`); its namespace and address.
    pub fn wire(
        &self,
        cni_bin: &Path,
        lab: &mut Lab,
        host: &Host,
        daemon: &Twilld,
    ) -> (NetNs, Ipv4Addr) {
        let args = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
            self.namespace, self.name
        );
        let (path, ip) = cni::add_pod(cni_bin, lab, host, daemon, self.name, &args);
        (NetNs::from_path(path).expect("the pod's namespace"), ip)
    }
}

fn app(value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::from([("app".to_owned(), value.to_owned())]),
        match_expressions: Vec::new(),
    }
}

fn tcp(port: u16) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port: Some(PolicyPortNumber::Number(port)),
        end_port: None,
    }
}

fn policy(namespace: &str, name: &str, selects: LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        pod_selector: selects,
        ingress_isolation: false,
        egress_isolation: false,
        ingress: Vec::new(),
        egress: Vec::new(),
        enforcement: Enforcement::Enforce,
    }
}

/// The two policies the measured flow passes: the server takes `PORT` from the client
/// (ingress), the client may open `PORT` on the server (egress). Each isolates its pod in
/// that direction, so anything else to the server and from the client is denied.
pub fn allowing_policies() -> Vec<NetworkPolicy> {
    let mut ingress = policy(CLIENT.namespace, "server-from-client", app(SERVER.app));
    ingress.ingress_isolation = true;
    ingress.ingress.push(PolicyRule {
        peers: vec![PolicyPeer::Pods {
            namespaces: None,
            pods: app(CLIENT.app),
        }],
        ports: vec![tcp(PORT)],
    });
    let mut egress = policy(CLIENT.namespace, "client-to-server", app(CLIENT.app));
    egress.egress_isolation = true;
    egress.egress.push(PolicyRule {
        peers: vec![PolicyPeer::Pods {
            namespaces: None,
            pods: app(SERVER.app),
        }],
        ports: vec![tcp(PORT)],
    });
    vec![ingress, egress]
}

/// Policy `i` of the others filling the cluster, the same on every run.
///
/// Most are as a cluster of many teams has them: 100 to a namespace `team-NNN`, each
/// selecting one app's pods (`app=svc-i`); even ones let `app=client-i` in on TCP 8080,
/// odd ones let `app=client-i` of namespaces labelled `tier=frontend` in and their pods
/// out to `app=db-i` on TCP 5432. None of those pods exist here: the measuring nodes hold
/// only the four pods above, and a node's datapath needs no rule of a pod elsewhere.
///
/// One in 200 (`i % 200 == 199`: 0, 0, 5 and 50 of 0, 100, 1,000 and 10,000) is a
/// namespace-wide rule in `bench`, where the measured pods are: every pod there takes TCP
/// 9100 from a /24 of 100.64.0.0/16 (a scraper's), so the measured server and client are
/// selected by more policies as the cluster grows (up to 51 rules on the server's
/// ingress; twill allows 64 per pod and direction).
pub fn other_policy(i: u32) -> NetworkPolicy {
    if i % 200 == 199 {
        let j = i / 200;
        let mut p = policy(
            CLIENT.namespace,
            &format!("scrape-{j:02}"),
            LabelSelector::default(),
        );
        p.ingress_isolation = true;
        p.ingress.push(PolicyRule {
            peers: vec![PolicyPeer::IpBlock {
                cidr: IpNetwork::V4(
                    ipnetwork::Ipv4Network::new(Ipv4Addr::new(100, 64, j as u8, 0), 24)
                        .expect("a /24 is a valid prefix"),
                ),
                except: Vec::new(),
            }],
            ports: vec![tcp(9100)],
        });
        return p;
    }
    let mut p = policy(
        &format!("team-{:03}", i / 100),
        &format!("svc-{i:05}"),
        app(&format!("svc-{i}")),
    );
    p.ingress_isolation = true;
    let namespaces = (i % 2 == 1).then(|| LabelSelector {
        match_labels: BTreeMap::from([("tier".to_owned(), "frontend".to_owned())]),
        match_expressions: Vec::new(),
    });
    p.ingress.push(PolicyRule {
        peers: vec![PolicyPeer::Pods {
            namespaces,
            pods: app(&format!("client-{i}")),
        }],
        ports: vec![tcp(PORT)],
    });
    if i % 2 == 1 {
        p.egress_isolation = true;
        p.egress.push(PolicyRule {
            peers: vec![PolicyPeer::Pods {
                namespaces: None,
                pods: app(&format!("db-{i}")),
            }],
            ports: vec![tcp(5432)],
        });
    }
    p
}

/// The store's keys and values for `objects`, as `netctl apply` writes them.
pub fn store_entries(objects: impl IntoIterator<Item = Object>) -> Vec<(String, String)> {
    objects
        .into_iter()
        .map(|o| {
            (
                cluster::object_key(o.resource(), o.namespace(), o.name()),
                serde_json::to_string(&o).expect("objects serialize"),
            )
        })
        .collect()
}

/// Waits until `daemon` has programmed a pass over exactly `policies` NetworkPolicies
/// (its log line for the pass names the count; etcd's order means every earlier write is
/// in it too).
pub fn wait_reconciled(daemon: &Twilld, policies: usize) {
    let line = format!("network policies reconciled policies={policies} ");
    let start = Instant::now();
    while !daemon.log_text().contains(&line) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}: no pass over {policies} policies after 300 s:\n{}",
            daemon.node,
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let status = daemon.status().policy;
    assert!(
        status.synced && status.problems.is_empty(),
        "{}: {status:?}",
        daemon.node
    );
}

/// How many of the policies `other_policy(0..others)` select the `bench` pods: one in 200.
pub fn namespace_wide(others: u32) -> usize {
    (others / 200) as usize
}

/// Asserts that `daemon` isolates the pod at `ip` by `ingress` and `egress` policies.
pub fn assert_isolated_by(daemon: &Twilld, ip: Ipv4Addr, ingress: usize, egress: usize) {
    let report = match daemon.request(&Request::Policy) {
        Response::Policy { report } => report,
        other => panic!("{}: policy answered {other:?}", daemon.node),
    };
    let pod = report
        .pods
        .iter()
        .find(|p| p.ip == ip)
        .unwrap_or_else(|| panic!("{}: no policy entry for {ip}", daemon.node));
    let counts = [pod.isolated_by[0].len(), pod.isolated_by[1].len()];
    assert_eq!(
        counts,
        [ingress, egress],
        "{}: the pod at {ip} is isolated by {:?}",
        daemon.node,
        pod.isolated_by
    );
}

/// Whether a connection from `ns` to `to` completes within 300 ms (a denied SYN is dropped
/// by twill, so it times out, or rejected by iptables, so it is refused).
pub fn reaches(ns: &NetNs, to: SocketAddrV4) -> bool {
    ns.run(move || TcpStream::connect_timeout(&to.into(), Duration::from_millis(300)).is_ok())
        .expect("enter the namespace")
}

/// One side's four pods as the probes see them.
pub struct Quartet {
    pub client: NetNs,
    pub server: Ipv4Addr,
    pub open_client: NetNs,
    pub open_server: Ipv4Addr,
}

impl Quartet {
    /// Asserts what a user would check: the measured flow and the open pair connect, and,
    /// when `enforced`, a port no policy allows, a client the server's policy does not
    /// name and a server the client's policy does not name are all denied (with no
    /// policy, all three connect: the probes can tell). The servers must listen on `PORT`
    /// and the policed one on `CLOSED_PORT` too. Retries for up to 10 s.
    pub fn assert_enforced(&self, side: &str, enforced: bool) {
        let probes = [
            ("the measured flow", &self.client, self.server, PORT, true),
            (
                "the open pair",
                &self.open_client,
                self.open_server,
                PORT,
                true,
            ),
            (
                "a port no policy allows",
                &self.client,
                self.server,
                CLOSED_PORT,
                !enforced,
            ),
            (
                "a client the server's policy does not name",
                &self.open_client,
                self.server,
                PORT,
                !enforced,
            ),
            (
                "a server the client's policy does not name",
                &self.client,
                self.open_server,
                PORT,
                !enforced,
            ),
        ];
        let start = Instant::now();
        loop {
            let wrong: Vec<String> = probes
                .iter()
                .filter(|(_, from, to, port, expect)| {
                    reaches(from, SocketAddrV4::new(*to, *port)) != *expect
                })
                .map(|(what, _, to, port, expect)| {
                    format!(
                        "{what} ({to}:{port}) {}",
                        if *expect { "is denied" } else { "connects" }
                    )
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{side}: {}",
                wrong.join("; ")
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

pub use twill_tests::bench::median;

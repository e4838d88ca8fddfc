//! The compiler against the NetworkPolicy semantics: each case states what the API says,
//! builds the cluster, compiles it and checks the verdict of the compiled tables, and a
//! reference evaluator written straight from the API's wording cross-checks every pair.

use std::collections::BTreeMap;

use super::*;
use twill_k8s::{LabelExpression, SelectorOperator};

fn labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn sel(s: &str) -> LabelSelector {
    LabelSelector {
        match_labels: labels(s),
        match_expressions: Vec::new(),
    }
}

fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelExpression {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

/// Namespaces x, y, z (labelled ns=<name>), pods a, b, c in each (labelled pod=<name>),
/// each serving "serve-80-tcp" on 80 and "serve-81-udp" on 81; x/a on node1, the rest
/// spread over node2 and node3. Addresses 10.244.<ns index>.<pod index + 1>.
fn cluster(policies: Vec<NetworkPolicy>) -> ClusterView {
    let mut pods = Vec::new();
    let mut namespaces = Vec::new();
    for (ni, ns) in ["x", "y", "z"].iter().enumerate() {
        namespaces.push(Namespace {
            name: ns.to_string(),
            labels: labels(&format!("ns={ns}")),
        });
        for (pi, pod) in ["a", "b", "c"].iter().enumerate() {
            pods.push(PodView {
                namespace: ns.to_string(),
                name: pod.to_string(),
                node: format!("node{}", (ni + pi) % 3 + 1),
                ip: Ipv4Addr::new(10, 244, ni as u8, pi as u8 + 1),
                labels: labels(&format!("pod={pod}")),
                named_ports: vec![
                    NamedPort {
                        name: "serve-80-tcp".into(),
                        port: 80,
                        protocol: Protocol::Tcp,
                    },
                    NamedPort {
                        name: "serve-81-udp".into(),
                        port: 81,
                        protocol: Protocol::Udp,
                    },
                ],
            });
        }
    }
    ClusterView::new(namespaces, pods, policies)
}

fn policy(ns: &str, name: &str, selector: LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        pod_selector: selector,
        ingress_isolation: true,
        egress_isolation: false,
        ingress: Vec::new(),
        egress: Vec::new(),
        enforcement: Enforcement::Enforce,
    }
}

fn pods_peer(pods: LabelSelector) -> PolicyPeer {
    PolicyPeer::Pods {
        namespaces: None,
        pods,
    }
}

fn ns_peer(namespaces: LabelSelector, pods: LabelSelector) -> PolicyPeer {
    PolicyPeer::Pods {
        namespaces: Some(namespaces),
        pods,
    }
}

fn block(cidr: &str, except: &[&str]) -> PolicyPeer {
    PolicyPeer::IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

fn tcp(port: u16) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port: Some(PolicyPortNumber::Number(port)),
        end_port: None,
    }
}

fn named(name: &str, protocol: Protocol) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PolicyPortNumber::Named(name.into())),
        end_port: None,
    }
}

fn rule(peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>) -> PolicyRule {
    PolicyRule { peers, ports }
}

/// The upstream semantics, evaluated directly from the objects (no compiled form).
mod reference {
    use super::*;

    fn peer_matches(
        view: &ClusterView,
        policy: &NetworkPolicy,
        peer: &PolicyPeer,
        ip: Ipv4Addr,
    ) -> bool {
        match peer {
            PolicyPeer::Pods { namespaces, pods } => view.pod_by_ip(ip).is_some_and(|p| {
                let ns_ok = match namespaces {
                    None => p.namespace == policy.namespace,
                    Some(s) => s.matches(view.namespace_labels(&p.namespace).unwrap()),
                };
                ns_ok && pods.matches(&p.labels)
            }),
            PolicyPeer::IpBlock { cidr, except } => {
                let IpNetwork::V4(c) = cidr else { return false };
                c.contains(ip)
                    && !except
                        .iter()
                        .any(|e| matches!(e, IpNetwork::V4(e) if e.contains(ip)))
            }
        }
    }

    fn port_matches(
        view: &ClusterView,
        p: &PolicyPort,
        dst: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> bool {
        if ip_protocol(p.protocol) != protocol {
            return false;
        }
        match &p.port {
            None => true,
            Some(PolicyPortNumber::Number(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&port),
            Some(PolicyPortNumber::Named(name)) => {
                view.pod_by_ip(dst)
                    .and_then(|d| named_port(d, name, p.protocol))
                    == Some(port)
            }
        }
    }

    /// Whether `pod`'s side allows the connection in direction `d` (enforced policies).
    fn side(
        view: &ClusterView,
        pod: &PodView,
        d: Direction,
        peer: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> bool {
        let isolating: Vec<&NetworkPolicy> = view
            .selecting(pod)
            .map(|(_, p)| p)
            .filter(|p| p.enforcement == Enforcement::Enforce && rules_of(p, d).0)
            .collect();
        isolating.is_empty()
            || isolating.iter().any(|p| {
                rules_of(p, d).1.iter().any(|r| {
                    (r.peers.is_empty() || r.peers.iter().any(|q| peer_matches(view, p, q, peer)))
                        && (r.ports.is_empty()
                            || r.ports
                                .iter()
                                .any(|q| port_matches(view, q, dst, protocol, port)))
                })
            })
    }

    pub fn allowed(
        view: &ClusterView,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> bool {
        let egress = view
            .pod_by_ip(src)
            .is_none_or(|s| side(view, s, Direction::Egress, dst, dst, protocol, port));
        let ingress = view
            .pod_by_ip(dst)
            .is_none_or(|d| side(view, d, Direction::Ingress, src, dst, protocol, port));
        egress && ingress
    }
}

/// The compiled verdict for a connection: the client's egress table and the server's
/// ingress table (an address that is no pod has no table).
fn compiled_allows(
    view: &ClusterView,
    compiled: &Compiled,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    port: u16,
) -> bool {
    let egress = compiled
        .endpoints
        .get(&src)
        .is_none_or(|e| evaluate(&e.policy.egress, dst, protocol, port).passes());
    let ingress = compiled
        .endpoints
        .get(&dst)
        .is_none_or(|e| evaluate(&e.policy.ingress, src, protocol, port).passes());
    let _ = view;
    egress && ingress
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// `x/a` style names to addresses.
fn pod_ip(view: &ClusterView, name: &str) -> Ipv4Addr {
    let (ns, pod) = name.split_once('/').unwrap();
    view.pods
        .iter()
        .find(|p| p.namespace == ns && p.name == pod)
        .unwrap()
        .ip
}

/// Every ordered pair of pods, on TCP 80, TCP 81, UDP 80, UDP 81 and ICMP, plus a few
/// outside addresses each way: compiled == reference, and returns the compiled matrix
/// on TCP 80 for the case's own expectations.
fn matrix(view: &ClusterView) -> BTreeMap<(String, String), bool> {
    let compiled = compile(view, |_| true);
    // The map entries as twilld writes them, each pod under its own table id.
    let entries: BTreeMap<Ipv4Addr, _> = compiled
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, e))| {
            let id = i as u32 + 1;
            (
                *ip,
                (
                    crate::entries::endpoint_entry(id, &e.policy, [0, 0]),
                    crate::entries::table_entries(id, &e.policy),
                ),
            )
        })
        .collect();
    let outside = [ip("192.0.2.7"), ip("172.30.0.11"), ip("10.244.9.9")];
    let mut addrs: Vec<Ipv4Addr> = view.pods.iter().map(|p| p.ip).collect();
    addrs.extend(outside);
    let mut out = BTreeMap::new();
    for &src in &addrs {
        for &dst in &addrs {
            if src == dst {
                continue;
            }
            for (protocol, port) in [(6, 80), (6, 81), (17, 80), (17, 81), (1, 0), (132, 80)] {
                let want = reference::allowed(view, src, dst, protocol, port);
                let got = compiled_allows(view, &compiled, src, dst, protocol, port);
                assert_eq!(got, want, "{src} -> {dst} proto {protocol} port {port}");
                let why =
                    crate::explain::why(view, &compiled, src, dst, protocol, port, |_| Vec::new());
                assert_eq!(why.allowed, want, "why {src} -> {dst} {protocol}/{port}");
                // The entries, looked up as the datapath does, give the compiled bits.
                for (pod, peer, d) in [
                    (src, dst, Direction::Egress),
                    (dst, src, Direction::Ingress),
                ] {
                    let (Some((ep, t)), Some(c)) =
                        (entries.get(&pod), compiled.endpoints.get(&pod))
                    else {
                        continue;
                    };
                    let table = c.policy.direction(d);
                    if table.mode == Mode::Open || table.error.is_some() {
                        continue;
                    }
                    let live =
                        crate::entries::live_bits(ep, &t.peers, &t.ports, d, peer, protocol, port);
                    let port = if has_ports(protocol) { port } else { 0 };
                    assert_eq!(
                        live,
                        matching_bits(table, peer, protocol, port),
                        "entries of {pod} {d} for {peer} {protocol}/{port}"
                    );
                }
            }
            let name = |a: Ipv4Addr| {
                view.pod_by_ip(a)
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_else(|| a.to_string())
            };
            out.insert(
                (name(src), name(dst)),
                compiled_allows(view, &compiled, src, dst, 6, 80),
            );
        }
    }
    out
}

fn allows(m: &BTreeMap<(String, String), bool>, from: &str, to: &str) -> bool {
    *m.get(&(from.to_owned(), to.to_owned()))
        .unwrap_or_else(|| panic!("no pair {from} -> {to}"))
}

#[test]
fn no_policy_allows_everything() {
    let m = matrix(&cluster(vec![]));
    assert!(m.values().all(|&v| v));
}

#[test]
fn an_ingress_policy_with_no_rules_denies_all_ingress_to_the_selected_pods_only() {
    let m = matrix(&cluster(vec![policy("x", "deny", sel("pod=a"))]));
    assert!(!allows(&m, "x/b", "x/a"));
    assert!(!allows(&m, "y/a", "x/a"));
    assert!(allows(&m, "x/a", "x/b"), "egress of x/a is not isolated");
    assert!(allows(&m, "x/b", "x/c"));
}

#[test]
fn an_empty_pod_selector_selects_every_pod_of_its_namespace_and_no_other() {
    let m = matrix(&cluster(vec![policy(
        "x",
        "deny",
        LabelSelector::default(),
    )]));
    for p in ["x/a", "x/b", "x/c"] {
        assert!(!allows(&m, "y/a", p));
    }
    assert!(allows(&m, "x/a", "y/a"));
}

#[test]
fn a_pod_selector_peer_is_limited_to_the_policys_namespace() {
    let mut p = policy("x", "from-b", sel("pod=a"));
    p.ingress = vec![rule(vec![pods_peer(sel("pod=b"))], vec![])];
    let m = matrix(&cluster(vec![p]));
    assert!(allows(&m, "x/b", "x/a"));
    assert!(
        !allows(&m, "y/b", "x/a"),
        "y/b has the label but not the namespace"
    );
    assert!(!allows(&m, "x/c", "x/a"));
}

#[test]
fn namespace_and_pod_selectors_in_one_peer_are_anded_and_separate_peers_ored() {
    let mut and = policy("x", "and", sel("pod=a"));
    and.ingress = vec![rule(vec![ns_peer(sel("ns=y"), sel("pod=b"))], vec![])];
    let m = matrix(&cluster(vec![and]));
    assert!(allows(&m, "y/b", "x/a"));
    assert!(!allows(&m, "y/c", "x/a"));
    assert!(!allows(&m, "x/b", "x/a"));

    let mut or = policy("x", "or", sel("pod=a"));
    or.ingress = vec![rule(
        vec![
            ns_peer(sel("ns=y"), LabelSelector::default()),
            pods_peer(sel("pod=b")),
        ],
        vec![],
    )];
    let m = matrix(&cluster(vec![or]));
    assert!(allows(&m, "y/c", "x/a"));
    assert!(allows(&m, "x/b", "x/a"));
    assert!(!allows(&m, "x/c", "x/a"));
    assert!(!allows(&m, "z/b", "x/a"));
}

#[test]
fn the_namespace_name_label_selects_a_namespace_without_labels_of_its_own() {
    let mut p = policy("x", "from-z", sel("pod=a"));
    p.ingress = vec![rule(
        vec![ns_peer(
            sel("kubernetes.io/metadata.name=z"),
            LabelSelector::default(),
        )],
        vec![],
    )];
    let m = matrix(&cluster(vec![p]));
    assert!(allows(&m, "z/c", "x/a"));
    assert!(!allows(&m, "y/c", "x/a"));
}

#[test]
fn match_expressions_in_notin_exists_doesnotexist() {
    for (selector, from_b, from_c, from_y) in [
        (
            expr("pod", SelectorOperator::In, &["b"]),
            true,
            false,
            false,
        ),
        (
            expr("pod", SelectorOperator::NotIn, &["b"]),
            false,
            true,
            false,
        ),
        (
            expr("pod", SelectorOperator::Exists, &[]),
            true,
            true,
            false,
        ),
        (
            expr("pod", SelectorOperator::DoesNotExist, &[]),
            false,
            false,
            false,
        ),
    ] {
        let mut p = policy("x", "exprs", sel("pod=a"));
        p.ingress = vec![rule(vec![pods_peer(selector.clone())], vec![])];
        let m = matrix(&cluster(vec![p]));
        assert_eq!(allows(&m, "x/b", "x/a"), from_b, "{selector}");
        assert_eq!(allows(&m, "x/c", "x/a"), from_c, "{selector}");
        assert_eq!(allows(&m, "y/b", "x/a"), from_y, "{selector}");
    }
}

#[test]
fn an_empty_from_matches_every_peer_and_an_empty_ingress_list_none() {
    let mut all = policy("x", "all", sel("pod=a"));
    all.ingress = vec![rule(vec![], vec![])];
    let m = matrix(&cluster(vec![all]));
    assert!(allows(&m, "z/c", "x/a"));
    assert!(allows(&m, "192.0.2.7", "x/a"));
    let none = policy("x", "none", sel("pod=a"));
    let m = matrix(&cluster(vec![none]));
    assert!(!allows(&m, "192.0.2.7", "x/a"));
}

#[test]
fn ports_numbers_ranges_and_protocols() {
    let mut p = policy("x", "ports", sel("pod=a"));
    p.ingress = vec![rule(
        vec![],
        vec![
            tcp(81),
            PolicyPort {
                protocol: Protocol::Udp,
                port: Some(PolicyPortNumber::Number(70)),
                end_port: Some(90),
            },
        ],
    )];
    let view = cluster(vec![p]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    let b = pod_ip(&view, "x/b");
    assert!(!evaluate(a, b, 6, 80).passes());
    assert!(evaluate(a, b, 6, 81).passes());
    assert!(evaluate(a, b, 17, 80).passes());
    assert!(evaluate(a, b, 17, 70).passes());
    assert!(evaluate(a, b, 17, 90).passes());
    assert!(!evaluate(a, b, 17, 91).passes());
    assert!(!evaluate(a, b, 17, 69).passes());
    assert!(
        !evaluate(a, b, 1, 0).passes(),
        "ICMP needs a rule without ports"
    );
    matrix(&view);
}

#[test]
fn sctp_in_a_policy_never_opens_tcp_or_udp() {
    let mut p = policy("x", "sctp", sel("pod=a"));
    p.ingress = vec![rule(
        vec![],
        vec![
            PolicyPort {
                protocol: Protocol::Sctp,
                port: Some(PolicyPortNumber::Number(80)),
                end_port: None,
            },
            PolicyPort {
                protocol: Protocol::Sctp,
                port: None,
                end_port: None,
            },
        ],
    )];
    let view = cluster(vec![p]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    let b = pod_ip(&view, "x/b");
    assert!(evaluate(a, b, IPPROTO_SCTP, 80).passes());
    assert!(evaluate(a, b, IPPROTO_SCTP, 9999).passes());
    for port in [80, 9999, 0] {
        assert!(!evaluate(a, b, IPPROTO_TCP, port).passes());
        assert!(!evaluate(a, b, IPPROTO_UDP, port).passes());
    }
    matrix(&view);
}

#[test]
fn a_protocol_without_a_port_allows_every_port_of_that_protocol_only() {
    let mut p = policy("x", "udp", sel("pod=a"));
    p.ingress = vec![rule(
        vec![],
        vec![PolicyPort {
            protocol: Protocol::Udp,
            port: None,
            end_port: None,
        }],
    )];
    let view = cluster(vec![p]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    let b = pod_ip(&view, "x/b");
    assert!(evaluate(a, b, 17, 1).passes());
    assert!(evaluate(a, b, 17, 65535).passes());
    assert!(!evaluate(a, b, 6, 80).passes());
}

#[test]
fn an_ingress_named_port_resolves_on_the_selected_pod_with_its_protocol() {
    let mut p = policy("x", "named", LabelSelector::default());
    p.ingress = vec![rule(
        vec![],
        vec![
            named("serve-80-tcp", Protocol::Tcp),
            named("serve-81-udp", Protocol::Tcp),
        ],
    )];
    let mut view = cluster(vec![p]);
    // x/b serves serve-80-tcp on 8080 instead.
    view.pods[1].named_ports[0].port = 8080;
    let compiled = compile(&view, |_| true);
    let from = pod_ip(&view, "y/a");
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    let b = &compiled.endpoints[&pod_ip(&view, "x/b")].policy.ingress;
    assert!(evaluate(a, from, 6, 80).passes());
    assert!(!evaluate(a, from, 6, 8080).passes());
    assert!(evaluate(b, from, 6, 8080).passes());
    assert!(!evaluate(b, from, 6, 80).passes());
    assert!(
        !evaluate(a, from, 6, 81).passes(),
        "serve-81-udp is UDP, the rule says TCP"
    );
    assert!(!evaluate(a, from, 17, 81).passes());
    matrix(&view);
}

#[test]
fn an_egress_named_port_resolves_on_each_destination_pod() {
    let mut p = policy("x", "egress-named", sel("pod=a"));
    p.ingress_isolation = false;
    p.egress_isolation = true;
    p.egress = vec![rule(
        vec![ns_peer(LabelSelector::default(), LabelSelector::default())],
        vec![named("serve-80-tcp", Protocol::Tcp)],
    )];
    let mut view = cluster(vec![p]);
    // y/b serves serve-80-tcp on 8080: the same name, another number.
    let yb = view
        .pods
        .iter()
        .position(|p| p.namespace == "y" && p.name == "b")
        .unwrap();
    view.pods[yb].named_ports[0].port = 8080;
    let compiled = compile(&view, |_| true);
    let xa = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.egress;
    let ya = pod_ip(&view, "y/a");
    let ybip = pod_ip(&view, "y/b");
    assert!(evaluate(xa, ya, 6, 80).passes());
    assert!(!evaluate(xa, ya, 6, 8080).passes());
    assert!(evaluate(xa, ybip, 6, 8080).passes());
    assert!(
        !evaluate(xa, ybip, 6, 80).passes(),
        "80 is not y/b's serve-80-tcp"
    );
    assert!(
        !evaluate(xa, ip("192.0.2.7"), 6, 80).passes(),
        "an address that is no pod resolves no name"
    );
    assert_eq!(xa.bits.len(), 2, "one bit per resolved number");
    matrix(&view);
}

#[test]
fn ip_blocks_with_except_match_pod_and_outside_addresses() {
    let mut p = policy("x", "cidr", sel("pod=a"));
    p.ingress = vec![rule(
        vec![
            block("10.244.1.0/24", &["10.244.1.2/32"]),
            block("192.0.2.0/24", &[]),
        ],
        vec![],
    )];
    let m = matrix(&cluster(vec![p]));
    assert!(allows(&m, "y/a", "x/a"));
    assert!(!allows(&m, "y/b", "x/a"), "the except");
    assert!(allows(&m, "y/c", "x/a"));
    assert!(allows(&m, "192.0.2.7", "x/a"));
    assert!(!allows(&m, "x/b", "x/a"));
    assert!(!allows(&m, "172.30.0.11", "x/a"));
}

#[test]
fn two_ip_blocks_do_not_share_their_excepts() {
    // The first block's except lies inside the second block: the second still allows it.
    let mut p = policy("x", "cidr", sel("pod=a"));
    p.ingress = vec![rule(
        vec![
            block("10.244.0.0/16", &["10.244.1.0/24"]),
            block("10.244.1.0/24", &[]),
        ],
        vec![],
    )];
    let m = matrix(&cluster(vec![p]));
    assert!(allows(&m, "y/b", "x/a"));
}

#[test]
fn ipv6_blocks_match_nothing() {
    let mut p = policy("x", "v6", sel("pod=a"));
    p.ingress = vec![rule(vec![block("::/0", &[])], vec![])];
    let m = matrix(&cluster(vec![p]));
    assert!(!allows(&m, "x/b", "x/a"));
    assert!(!allows(&m, "192.0.2.7", "x/a"));
}

#[test]
fn policies_are_unioned_and_a_connection_needs_egress_and_ingress() {
    let mut from_b = policy("x", "from-b", sel("pod=a"));
    from_b.ingress = vec![rule(vec![pods_peer(sel("pod=b"))], vec![])];
    let mut from_c = policy("x", "from-c", sel("pod=a"));
    from_c.ingress = vec![rule(vec![pods_peer(sel("pod=c"))], vec![tcp(80)])];
    let mut c_egress = policy("x", "c-egress", sel("pod=c"));
    c_egress.ingress_isolation = false;
    c_egress.egress_isolation = true;
    c_egress.egress = vec![rule(vec![pods_peer(sel("pod=b"))], vec![])];
    let m = matrix(&cluster(vec![from_b.clone(), from_c.clone()]));
    assert!(allows(&m, "x/b", "x/a"));
    assert!(allows(&m, "x/c", "x/a"));
    let m = matrix(&cluster(vec![from_b, from_c, c_egress]));
    assert!(
        !allows(&m, "x/c", "x/a"),
        "x/a's ingress allows it, x/c's egress does not"
    );
    assert!(allows(&m, "x/c", "x/b"));
}

#[test]
fn egress_isolation_without_rules_denies_all_egress() {
    let mut p = policy("x", "no-egress", sel("pod=a"));
    p.ingress_isolation = false;
    p.egress_isolation = true;
    let m = matrix(&cluster(vec![p]));
    assert!(!allows(&m, "x/a", "x/b"));
    assert!(!allows(&m, "x/a", "192.0.2.7"));
    assert!(allows(&m, "x/b", "x/a"));
}

#[test]
fn an_audit_policy_never_denies_and_records_what_it_would_have() {
    let mut audit = policy("x", "dry", sel("pod=a"));
    audit.enforcement = Enforcement::Audit;
    audit.ingress = vec![rule(vec![pods_peer(sel("pod=b"))], vec![])];
    let view = cluster(vec![audit.clone()]);
    let m = matrix(&view);
    assert!(m.values().all(|&v| v), "nothing is denied");
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    assert_eq!(a.mode, Mode::Audit);
    assert_eq!(
        evaluate(a, pod_ip(&view, "x/b"), 6, 80),
        Decision::AuditAllowed { bit: 0 }
    );
    assert_eq!(
        evaluate(a, pod_ip(&view, "x/c"), 6, 80),
        Decision::AuditDenied
    );

    // With an enforced policy isolating the pod too, the audit one changes nothing.
    let enforced = policy("x", "deny", sel("pod=a"));
    let view = cluster(vec![audit, enforced]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    assert_eq!(a.mode, Mode::Enforce);
    assert_eq!(a.shadowed_audits.len(), 1);
    assert_eq!(evaluate(a, pod_ip(&view, "x/b"), 6, 80), Decision::Denied);
}

#[test]
fn too_many_rule_bits_fail_closed_with_a_reason() {
    let mut p = policy("x", "wide", sel("pod=a"));
    p.ingress = (0..65)
        .map(|i| rule(vec![block(&format!("192.0.{i}.0/24"), &[])], vec![tcp(80)]))
        .collect();
    let view = cluster(vec![p]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    assert!(
        a.error.as_deref().unwrap().contains("65 rule bits"),
        "{:?}",
        a.error
    );
    assert_eq!(evaluate(a, ip("192.0.1.1"), 6, 80), Decision::Denied);
}

#[test]
fn the_lowest_matching_bit_names_the_rule() {
    let mut p = policy("x", "two", sel("pod=a"));
    p.ingress = vec![
        rule(vec![pods_peer(sel("pod=b"))], vec![tcp(81)]),
        rule(vec![pods_peer(sel("pod=b"))], vec![tcp(80)]),
    ];
    let view = cluster(vec![p]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy.ingress;
    let Decision::Allowed { bit } = evaluate(a, pod_ip(&view, "x/b"), 6, 80) else {
        panic!("allowed")
    };
    assert_eq!(a.bits[bit].rule.to_string(), "x/two ingress[1]");
}

#[test]
fn pods_with_the_same_policies_get_equal_tables() {
    let mut p = policy("x", "all", LabelSelector::default());
    p.ingress = vec![rule(vec![pods_peer(sel("pod=b"))], vec![tcp(80)])];
    let view = cluster(vec![p]);
    let compiled = compile(&view, |_| true);
    let a = &compiled.endpoints[&pod_ip(&view, "x/a")].policy;
    let c = &compiled.endpoints[&pod_ip(&view, "x/c")].policy;
    assert_eq!(a, c, "shareable: one table for both");
}

/// Random policies over the x/y/z cluster, from the generator `next` (a value below n).
fn random_policies(next: &mut impl FnMut(u64) -> u64) -> Vec<NetworkPolicy> {
    let pick_sel = |r: u64| match r {
        0 => LabelSelector::default(),
        1 => sel("pod=a"),
        2 => sel("pod=b"),
        3 => expr("pod", SelectorOperator::NotIn, &["c"]),
        4 => expr("pod", SelectorOperator::In, &["a", "c"]),
        _ => expr("other", SelectorOperator::DoesNotExist, &[]),
    };
    let mut policies = Vec::new();
    for i in 0..(1 + next(4)) {
        let ns = ["x", "y", "z"][next(3) as usize];
        let mut p = policy(ns, &format!("p{i}"), pick_sel(next(6)));
        p.ingress_isolation = next(3) != 0;
        p.egress_isolation = next(2) == 0;
        if next(5) == 0 {
            p.enforcement = Enforcement::Audit;
        }
        let mut rules = || {
            (0..next(3))
                .map(|_| {
                    let peers = (0..next(3))
                        .map(|_| match next(4) {
                            0 => pods_peer(pick_sel(next(6))),
                            1 => ns_peer(
                                sel(&format!("ns={}", ["x", "y", "z"][next(3) as usize])),
                                pick_sel(next(6)),
                            ),
                            2 => block("10.244.0.0/16", &["10.244.1.0/24", "10.244.2.3/32"]),
                            _ => block("0.0.0.0/0", &["10.244.0.0/24"]),
                        })
                        .collect();
                    let ports = (0..next(3))
                        .map(|_| match next(5) {
                            0 => tcp(80),
                            1 => named("serve-80-tcp", Protocol::Tcp),
                            2 => named("serve-81-udp", Protocol::Udp),
                            3 => PolicyPort {
                                protocol: Protocol::Udp,
                                port: Some(PolicyPortNumber::Number(79)),
                                end_port: Some(81),
                            },
                            _ => PolicyPort {
                                protocol: Protocol::Tcp,
                                port: None,
                                end_port: None,
                            },
                        })
                        .collect();
                    rule(peers, ports)
                })
                .collect::<Vec<_>>()
        };
        p.ingress = rules();
        p.egress = rules();
        policies.push(p);
    }
    policies
}

/// A small deterministic generator: many random policies, the compiled verdicts equal
/// the reference semantics on every pair and port.
#[test]
fn random_policies_agree_with_the_reference_semantics() {
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for case in 0..150 {
        let policies = random_policies(&mut next);
        let mut view = cluster(policies);
        // Vary named ports so egress resolution differs per pod.
        for (i, pod) in view.pods.iter_mut().enumerate() {
            if i % 4 == 1 {
                pod.named_ports[0].port = 81;
            }
        }
        let _ = case;
        matrix(&view);
    }
}

#[test]
fn why_names_the_rule_peer_and_port_or_the_isolating_policy() {
    let mut allow = policy("x", "allow-b", sel("pod=a"));
    allow.ingress = vec![rule(
        vec![block("192.0.2.0/24", &[]), pods_peer(sel("pod=b"))],
        vec![named("serve-80-tcp", Protocol::Tcp)],
    )];
    let view = cluster(vec![allow]);
    let (xa, xb, xc) = (
        pod_ip(&view, "x/a"),
        pod_ip(&view, "x/b"),
        pod_ip(&view, "x/c"),
    );
    let compiled = compile(&view, |_| true);
    let node_ips = |node: &str| match node {
        "node1" => vec![ip("172.31.0.11")],
        _ => Vec::new(),
    };
    let w = explain::why(&view, &compiled, xb, xa, IPPROTO_TCP, 80, node_ips);
    assert!(w.allowed);
    let ingress = w.ingress.as_ref().unwrap();
    assert_eq!(ingress.decision, Decision::Allowed { bit: 0 });
    assert_eq!(ingress.matches.len(), 1);
    let m = &ingress.matches[0];
    assert_eq!(m.rule.to_string(), "x/allow-b ingress[0]");
    assert_eq!(m.peer, "from[1]: pods pod=b in namespace x");
    assert_eq!(m.ports, "80/TCP");
    assert_eq!(w.egress.as_ref().unwrap().decision, Decision::Open);

    // Denied: the isolating policy is named, no rule matches.
    let w = explain::why(&view, &compiled, xc, xa, IPPROTO_TCP, 80, node_ips);
    assert!(!w.allowed);
    let ingress = w.ingress.as_ref().unwrap();
    assert_eq!(ingress.decision, Decision::Denied);
    assert!(ingress.matches.is_empty());
    assert_eq!(ingress.isolated_by[0].to_string(), "x/allow-b");

    // An outside address in the ipBlock; the pod's own node passes whatever the table says.
    let w = explain::why(
        &view,
        &compiled,
        ip("192.0.2.9"),
        xa,
        IPPROTO_TCP,
        80,
        node_ips,
    );
    assert!(w.allowed && w.egress.is_none());
    assert_eq!(
        w.ingress.unwrap().matches[0].peer,
        "from[0]: ipBlock 192.0.2.0/24"
    );
    let w = explain::why(
        &view,
        &compiled,
        ip("172.31.0.11"),
        xa,
        IPPROTO_TCP,
        9,
        node_ips,
    );
    let ingress = w.ingress.unwrap();
    assert!(w.allowed && ingress.decision == Decision::Denied && ingress.exempt.is_some());
}

/// After a random change (a pod relabelled, added, removed, readdressed or given other
/// named ports, a namespace relabelled, a policy changed or deleted), recompiling only
/// the pods `delta::affected` names gives exactly the tables of a full compile.
#[test]
fn recompiling_the_affected_pods_equals_a_full_compile() {
    let mut seed: u64 = 0xde17a;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut recompiled = 0;
    let mut total = 0;
    for case in 0..300 {
        let policies = random_policies(&mut next);
        let old = cluster(policies.clone());
        let mut pods = old.pods.clone();
        let mut namespaces: Vec<Namespace> = ["x", "y", "z"]
            .iter()
            .map(|n| Namespace {
                name: n.to_string(),
                labels: labels(&format!("ns={n}")),
            })
            .collect();
        let mut policies = policies;
        let i = next(pods.len() as u64) as usize;
        match next(8) {
            0 => pods[i].labels = labels(["pod=a", "pod=b", "pod=c", "other=1"][next(4) as usize]),
            1 => {
                let n = next(3) as usize;
                namespaces[n].labels = labels(["ns=w", "ns=x", "other=1"][next(3) as usize]);
            }
            2 => {
                pods.remove(i);
            }
            3 => {
                let mut p = pods[i].clone();
                p.name = "new".into();
                p.ip = Ipv4Addr::new(10, 244, 1, 200);
                pods.push(p);
            }
            4 => pods[i].named_ports[0].port = 8080,
            5 => pods[i].ip = Ipv4Addr::new(10, 244, 2, 201),
            6 if !policies.is_empty() => {
                let j = next(policies.len() as u64) as usize;
                policies.remove(j);
            }
            _ => {
                let extra = random_policies(&mut next);
                let j = next(policies.len() as u64 + 1) as usize;
                if j < policies.len() {
                    policies[j] = extra[0].clone();
                    policies[j].name = format!("p{j}");
                } else {
                    policies.push(extra[0].clone());
                    policies.last_mut().unwrap().name = "added".into();
                }
            }
        }
        let new = ClusterView::new(namespaces, pods, policies);
        let ips: Vec<Ipv4Addr> = old.pods.iter().chain(&new.pods).map(|p| p.ip).collect();
        let before = compile(&old, |_| true);
        let full = compile(&new, |_| true);
        let changed = delta::affected(&old, &new, &ips);
        let partial = compile(&new, |p| changed.contains(&p.ip));
        for pod in &new.pods {
            total += 1;
            let got = if changed.contains(&pod.ip) {
                recompiled += 1;
                &partial.endpoints[&pod.ip].policy
            } else {
                &before.endpoints[&pod.ip].policy
            };
            assert_eq!(
                got, &full.endpoints[&pod.ip].policy,
                "case {case}: {}/{} not recompiled but changed",
                pod.namespace, pod.name
            );
        }
    }
    // Not everything, every time: the point is to recompile less.
    assert!(recompiled * 2 < total, "{recompiled} of {total} recompiled");
}

//! The NetworkPolicy compiler: Kubernetes NetworkPolicies, pods and namespaces in, one
//! verdict table per local pod out. `twilld` writes the tables to the BPF maps; `netctl
//! why` evaluates the same tables to explain a verdict. Both call [`compile`], so what the
//! operator is told is what the kernel enforces.
//!
//! A pod's table, per direction, is a [`Mode`] (open, enforced, audited), up to
//! [`MAX_RULE_BITS`] rule bits (a rule of a policy that selects the pod; a rule with a
//! named port resolved to different numbers on different destination pods takes one bit
//! per number), and two longest-prefix partitions: peer addresses to bits, and
//! protocol/port to bits (see [`lpm`]). A connection is allowed when some bit is set both
//! for its peer and for its port (or the bit's rule has no ports).
//!
//! No identities: peers are addresses, so the number of label combinations in the cluster
//! costs nothing; the price is one peer entry per selected pod per distinct table, and
//! pods with equal tables share them (see `twilld`'s policy reconciler).
//!
//! Architecture invariant: pure. No I/O, no BPF, no etcd.
#![forbid(unsafe_code)]

pub mod delta;
pub mod entries;
pub mod explain;
pub mod lpm;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::Ipv4Addr,
};

use ipnetwork::IpNetwork;
use serde::Serialize;
use twill_k8s::{
    Enforcement, FqdnPolicy, LabelSelector, NamedPort, Namespace, NetworkPolicy, PolicyPeer,
    PolicyPort, PolicyPortNumber, PolicyRule, Protocol,
};

use crate::lpm::{Matcher, Prefix};

/// Rule bits per pod and direction: the width of the maps' values.
pub const MAX_RULE_BITS: usize = 64;
/// The label every namespace carries (the API server sets it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// Width of the protocol/port space: 8 bits of protocol, 16 of port.
pub const PORT_KEY_BITS: u8 = 24;

pub fn ip_protocol(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// Whether the protocol has ports that rules can name.
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The maps' index for the direction.
    pub fn index(self) -> u32 {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A pod as the compiler sees it: where it is, what it is labelled, its named ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub named_ports: Vec<NamedPort>,
}

/// Everything a compile reads.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// Namespace labels, each with [`NAMESPACE_NAME_LABEL`] added.
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Pods may be changed after [`ClusterView::new`], but not moved to another namespace
    /// (this index is built there).
    pub pods: Vec<PodView>,
    pub policies: Vec<NetworkPolicy>,
    /// Indexes into `pods`, by namespace: a peer's selection looks only at the
    /// namespaces it can select.
    by_namespace: BTreeMap<String, Vec<usize>>,
    /// Indexes into `policies`, by namespace (policies are not changed after `new`).
    policies_by_namespace: BTreeMap<String, Vec<usize>>,
    /// FQDNPolicies ([`ClusterView::with_fqdn_policies`]): they set
    /// [`EndpointPolicy::fqdn`] of the pods they select.
    pub fqdn_policies: Vec<FqdnPolicy>,
}

impl ClusterView {
    /// Namespaces named by pods or policies but not stored get only the name label, as a
    /// namespace always has it.
    pub fn new(
        namespaces: impl IntoIterator<Item = Namespace>,
        pods: Vec<PodView>,
        policies: Vec<NetworkPolicy>,
    ) -> ClusterView {
        let mut labels: BTreeMap<String, BTreeMap<String, String>> =
            namespaces.into_iter().map(|n| (n.name, n.labels)).collect();
        for ns in pods
            .iter()
            .map(|p| &p.namespace)
            .chain(policies.iter().map(|p| &p.namespace))
        {
            labels.entry(ns.clone()).or_default();
        }
        for (name, l) in labels.iter_mut() {
            l.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        }
        let mut by_namespace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_namespace.entry(p.namespace.clone()).or_default().push(i);
        }
        let mut policies_by_namespace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in policies.iter().enumerate() {
            policies_by_namespace
                .entry(p.namespace.clone())
                .or_default()
                .push(i);
        }
        ClusterView {
            namespaces: labels,
            pods,
            policies,
            by_namespace,
            policies_by_namespace,
            fqdn_policies: Vec::new(),
        }
    }

    /// The same view with `fqdn` as its FQDNPolicies.
    pub fn with_fqdn_policies(mut self, fqdn: Vec<FqdnPolicy>) -> ClusterView {
        self.fqdn_policies = fqdn;
        self
    }

    /// The FQDNPolicies that select `pod`.
    pub fn fqdn_selecting<'a>(&'a self, pod: &'a PodView) -> impl Iterator<Item = &'a FqdnPolicy> {
        self.fqdn_policies
            .iter()
            .filter(move |p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
    }

    /// The pods (indexes) a selector peer of a policy in `policy_ns` selects.
    fn peer_pods(
        &self,
        policy_ns: &str,
        namespaces: &Option<LabelSelector>,
        pods: &LabelSelector,
    ) -> Vec<usize> {
        let in_ns = |ns: &str| {
            self.by_namespace
                .get(ns)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| pods.matches(&self.pods[i].labels))
                .collect::<Vec<usize>>()
        };
        let mut out = match namespaces {
            None => in_ns(policy_ns),
            Some(sel) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .flat_map(|(ns, _)| in_ns(ns))
                .collect(),
        };
        out.sort_unstable();
        out
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    /// The policies (by index) that select `pod`.
    pub fn selecting(&self, pod: &PodView) -> impl Iterator<Item = (usize, &NetworkPolicy)> {
        self.policies_by_namespace
            .get(&pod.namespace)
            .into_iter()
            .flatten()
            .map(|&i| (i, &self.policies[i]))
            .filter(move |(_, p)| p.pod_selector.matches(&pod.labels))
    }

    /// Whether a `from`/`to` selector peer of a policy in `policy_ns` selects `pod`.
    fn peer_selects(
        &self,
        policy_ns: &str,
        namespaces: &Option<LabelSelector>,
        pods: &LabelSelector,
        pod: &PodView,
    ) -> bool {
        let in_scope = match namespaces {
            None => pod.namespace == policy_ns,
            Some(sel) => self
                .namespaces
                .get(&pod.namespace)
                .is_some_and(|l| sel.matches(l)),
        };
        in_scope && pods.matches(&pod.labels)
    }

    /// The pod with address `ip`, if any.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodView> {
        self.pods.iter().find(|p| p.ip == ip)
    }
}

/// `namespace/name` of a policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One rule of one policy: `ns/name ingress[2]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// Ports `first..=last` of an IP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = protocol_name(self.protocol);
        match (self.first, self.last) {
            (0, 65535) => write!(f, "any/{proto}"),
            (a, b) if a == b => write!(f, "{a}/{proto}"),
            (a, b) => write!(f, "{a}-{b}/{proto}"),
        }
    }
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        IPPROTO_TCP => "TCP".to_owned(),
        IPPROTO_UDP => "UDP".to_owned(),
        IPPROTO_SCTP => "SCTP".to_owned(),
        1 => "ICMP".to_owned(),
        other => format!("proto-{other}"),
    }
}

/// What one bit of a pod's table stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RuleBit {
    pub rule: RuleRef,
    /// Every port and protocol (the rule has no `ports`).
    pub any_port: bool,
    /// The ports it allows (empty with `any_port`).
    pub ports: Vec<PortRange>,
    /// A named port resolved on the destination pods this bit's peers are (egress).
    pub named: Option<String>,
}

/// How a direction of a pod is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No policy isolates it: everything is allowed.
    Open,
    /// An enforced policy isolates it: only what a bit allows passes.
    Enforce,
    /// Only audit (dry-run) policies isolate it: everything passes, what no bit allows is
    /// counted as would-be denied.
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Open => "open",
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

/// One direction of one pod's table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DirectionTable {
    pub mode: Mode,
    /// The policies isolating the pod in this direction with the mode's enforcement.
    pub isolated_by: Vec<PolicyRef>,
    /// Audit policies that select the pod in this direction while enforced ones isolate
    /// it: they change nothing (they could only allow more).
    pub shadowed_audits: Vec<PolicyRef>,
    /// Bit `i` of the values below is `bits[i]`.
    pub bits: Vec<RuleBit>,
    /// Peer addresses (IPv4 prefixes) to bits, most general first.
    pub peers: Vec<(Prefix, u64)>,
    /// `protocol << 16 | port` prefixes ([`PORT_KEY_BITS`] wide) to bits.
    pub ports: Vec<(Prefix, u64)>,
    /// Bits whose rule allows every port and protocol.
    pub any_ports: u64,
    /// Why the table could not be compiled. In enforce mode it then allows nothing.
    pub error: Option<String>,
}

impl DirectionTable {
    /// Not isolated: everything allowed.
    pub fn open() -> DirectionTable {
        DirectionTable {
            mode: Mode::Open,
            isolated_by: Vec::new(),
            shadowed_audits: Vec::new(),
            bits: Vec::new(),
            peers: Vec::new(),
            ports: Vec::new(),
            any_ports: 0,
            error: None,
        }
    }
}

/// A pod's whole table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointPolicy {
    pub ingress: DirectionTable,
    pub egress: DirectionTable,
    /// An FQDNPolicy selects the pod: its egress outside the cluster is limited to the
    /// addresses the node's DNS server learned for it (on top of `egress`).
    pub fqdn: bool,
}

impl EndpointPolicy {
    pub fn direction(&self, d: Direction) -> &DirectionTable {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Open both ways: a pod no policy (NetworkPolicy or FQDNPolicy) selects.
    pub fn is_open(&self) -> bool {
        self.ingress.mode == Mode::Open && self.egress.mode == Mode::Open && !self.fqdn
    }
}

/// The tables of the pods a compile was asked for.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// Keyed by pod address.
    pub endpoints: BTreeMap<Ipv4Addr, CompiledEndpoint>,
}

#[derive(Clone, Debug)]
pub struct CompiledEndpoint {
    pub namespace: String,
    pub name: String,
    pub policy: EndpointPolicy,
}

/// Compiles the tables of the pods `wanted` picks (a node's own pods; one pod for `netctl
/// why`). Work is proportional to the policies selecting those pods, not to all policies.
pub fn compile(view: &ClusterView, wanted: impl Fn(&PodView) -> bool) -> Compiled {
    let mut peers = PeerCache::default();
    let mut out = Compiled::default();
    for pod in view.pods.iter().filter(|p| wanted(p)) {
        let policy = EndpointPolicy {
            ingress: direction_table(view, &mut peers, pod, Direction::Ingress),
            egress: direction_table(view, &mut peers, pod, Direction::Egress),
            fqdn: view.fqdn_selecting(pod).next().is_some(),
        };
        out.endpoints.insert(
            pod.ip,
            CompiledEndpoint {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                policy,
            },
        );
    }
    out
}

/// The pods each selector peer selects, computed once per compile.
#[derive(Default)]
struct PeerCache {
    pods: HashMap<(usize, Direction, usize, usize), Vec<usize>>,
}

impl PeerCache {
    fn pods_of(
        &mut self,
        view: &ClusterView,
        key: (usize, Direction, usize, usize),
        namespaces: &Option<LabelSelector>,
        selector: &LabelSelector,
    ) -> &[usize] {
        let policy_ns = &view.policies[key.0].namespace;
        self.pods
            .entry(key)
            .or_insert_with(|| view.peer_pods(policy_ns, namespaces, selector))
    }
}

fn rules_of(p: &NetworkPolicy, d: Direction) -> (bool, &[PolicyRule]) {
    match d {
        Direction::Ingress => (p.ingress_isolation, &p.ingress),
        Direction::Egress => (p.egress_isolation, &p.egress),
    }
}

fn policy_ref(p: &NetworkPolicy) -> PolicyRef {
    PolicyRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
    }
}

/// A bit under construction: what it allows and which peers it applies to.
struct BitBuild {
    bit: RuleBit,
    peers: Vec<Matcher>,
}

fn direction_table(
    view: &ClusterView,
    cache: &mut PeerCache,
    pod: &PodView,
    d: Direction,
) -> DirectionTable {
    let mut enforced = Vec::new();
    let mut audited = Vec::new();
    for (i, p) in view.selecting(pod) {
        if rules_of(p, d).0 {
            match p.enforcement {
                Enforcement::Enforce => enforced.push(i),
                Enforcement::Audit => audited.push(i),
            }
        }
    }
    let (mode, group) = if !enforced.is_empty() {
        (Mode::Enforce, &enforced)
    } else if !audited.is_empty() {
        (Mode::Audit, &audited)
    } else {
        return DirectionTable::open();
    };
    let mut table = DirectionTable {
        mode,
        isolated_by: group
            .iter()
            .map(|&i| policy_ref(&view.policies[i]))
            .collect(),
        shadowed_audits: if mode == Mode::Enforce {
            audited
                .iter()
                .map(|&i| policy_ref(&view.policies[i]))
                .collect()
        } else {
            Vec::new()
        },
        ..DirectionTable::open()
    };
    let mut builds: Vec<BitBuild> = Vec::new();
    for &pi in group {
        let policy = &view.policies[pi];
        for (ri, rule) in rules_of(policy, d).1.iter().enumerate() {
            rule_bits(view, cache, pod, d, pi, ri, rule, &mut builds);
        }
    }
    if builds.len() > MAX_RULE_BITS {
        table.error = Some(format!(
            "{} rule bits select this pod's {d} (at most {MAX_RULE_BITS}): {}",
            builds.len(),
            if mode == Mode::Enforce {
                "all its traffic in this direction is denied"
            } else {
                "everything is counted as would-be denied"
            }
        ));
        return table;
    }
    let with_bits: Vec<(u64, &Matcher)> = builds
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.peers.iter().map(move |m| (1u64 << i, m)))
        .collect();
    table.peers = lpm::partition(&with_bits, 32);
    let port_matchers: Vec<(u64, Matcher)> = builds
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.bit.any_port)
        .map(|(i, b)| {
            let include = b
                .bit
                .ports
                .iter()
                .flat_map(|r| {
                    lpm::range_prefixes(u32::from(r.first), u32::from(r.last), 16)
                        .into_iter()
                        .map(|p| {
                            Prefix::new(
                                u32::from(r.protocol) << 16 | p.value,
                                8 + p.len,
                                PORT_KEY_BITS,
                            )
                        })
                })
                .collect();
            (
                1u64 << i,
                Matcher {
                    include,
                    exclude: Vec::new(),
                },
            )
        })
        .collect();
    let refs: Vec<(u64, &Matcher)> = port_matchers.iter().map(|(b, m)| (*b, m)).collect();
    table.ports = lpm::partition(&refs, PORT_KEY_BITS);
    table.any_ports = builds
        .iter()
        .enumerate()
        .filter(|(_, b)| b.bit.any_port)
        .fold(0, |acc, (i, _)| acc | 1 << i);
    table.bits = builds.into_iter().map(|b| b.bit).collect();
    table
}

fn host(ip: Ipv4Addr) -> Prefix {
    Prefix::new(u32::from(ip), 32, 32)
}

/// A rule's peers as matchers, and the pods among them (for named ports on egress).
fn rule_peers(
    view: &ClusterView,
    cache: &mut PeerCache,
    d: Direction,
    pi: usize,
    ri: usize,
    rule: &PolicyRule,
) -> (Vec<Matcher>, Vec<usize>) {
    if rule.peers.is_empty() {
        let all = Matcher {
            include: vec![Prefix::new(0, 0, 32)],
            exclude: Vec::new(),
        };
        return (vec![all], (0..view.pods.len()).collect());
    }
    let mut matchers = Vec::new();
    let mut pods: Vec<usize> = Vec::new();
    for (qi, peer) in rule.peers.iter().enumerate() {
        match peer {
            PolicyPeer::Pods {
                namespaces,
                pods: selector,
            } => {
                let selected = cache.pods_of(view, (pi, d, ri, qi), namespaces, selector);
                pods.extend_from_slice(selected);
                matchers.push(Matcher {
                    include: selected.iter().map(|&i| host(view.pods[i].ip)).collect(),
                    exclude: Vec::new(),
                });
            }
            PolicyPeer::IpBlock { cidr, except } => {
                let IpNetwork::V4(cidr) = cidr else {
                    continue; // IPv6: matches nothing here
                };
                let block = Matcher {
                    include: vec![Prefix::new(u32::from(cidr.network()), cidr.prefix(), 32)],
                    exclude: except
                        .iter()
                        .filter_map(|e| match e {
                            IpNetwork::V4(e) => {
                                Some(Prefix::new(u32::from(e.network()), e.prefix(), 32))
                            }
                            IpNetwork::V6(_) => None,
                        })
                        .collect(),
                };
                pods.extend(
                    view.pods
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| {
                            let a = u32::from(p.ip);
                            block.include.iter().any(|i| i.contains_value(a, 32))
                                && !block.exclude.iter().any(|e| e.contains_value(a, 32))
                        })
                        .map(|(i, _)| i),
                );
                matchers.push(block);
            }
        }
    }
    pods.sort_unstable();
    pods.dedup();
    (matchers, pods)
}

fn named_port(pod: &PodView, name: &str, protocol: Protocol) -> Option<u16> {
    pod.named_ports
        .iter()
        .find(|n| n.name == name && n.protocol == protocol)
        .map(|n| n.port)
}

/// Numeric ports of a `ports` entry (a whole protocol, one port or a range).
fn numeric(port: &PolicyPort) -> Option<PortRange> {
    let protocol = ip_protocol(port.protocol);
    match &port.port {
        None => Some(PortRange {
            protocol,
            first: 0,
            last: 65535,
        }),
        Some(PolicyPortNumber::Number(n)) => Some(PortRange {
            protocol,
            first: *n,
            last: port.end_port.unwrap_or(*n),
        }),
        Some(PolicyPortNumber::Named(_)) => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_bits(
    view: &ClusterView,
    cache: &mut PeerCache,
    pod: &PodView,
    d: Direction,
    pi: usize,
    ri: usize,
    rule: &PolicyRule,
    out: &mut Vec<BitBuild>,
) {
    let rule_ref = RuleRef {
        policy: policy_ref(&view.policies[pi]),
        direction: d,
        index: ri,
    };
    let (peers, peer_pods) = rule_peers(view, cache, d, pi, ri, rule);
    if rule.ports.is_empty() {
        out.push(BitBuild {
            bit: RuleBit {
                rule: rule_ref,
                any_port: true,
                ports: Vec::new(),
                named: None,
            },
            peers,
        });
        return;
    }
    let mut ports: Vec<PortRange> = rule.ports.iter().filter_map(numeric).collect();
    // Named ports: resolved on the destination. For ingress that is this pod, so they
    // join the rule's numeric ports; for egress each peer pod resolves them itself, and
    // each distinct number gets a bit of its own, applying to the pods that resolve to it.
    let mut variants: BTreeMap<(String, PortRange), Vec<Prefix>> = BTreeMap::new();
    for p in &rule.ports {
        let Some(PolicyPortNumber::Named(name)) = &p.port else {
            continue;
        };
        let protocol = ip_protocol(p.protocol);
        match d {
            Direction::Ingress => {
                if let Some(n) = named_port(pod, name, p.protocol) {
                    ports.push(PortRange {
                        protocol,
                        first: n,
                        last: n,
                    });
                }
            }
            Direction::Egress => {
                for &i in &peer_pods {
                    let peer = &view.pods[i];
                    if let Some(n) = named_port(peer, name, p.protocol) {
                        let range = PortRange {
                            protocol,
                            first: n,
                            last: n,
                        };
                        variants
                            .entry((name.clone(), range))
                            .or_default()
                            .push(host(peer.ip));
                    }
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    if !ports.is_empty() {
        out.push(BitBuild {
            bit: RuleBit {
                rule: rule_ref.clone(),
                any_port: false,
                ports,
                named: None,
            },
            peers,
        });
    }
    for ((name, range), hosts) in variants {
        out.push(BitBuild {
            bit: RuleBit {
                rule: rule_ref.clone(),
                any_port: false,
                ports: vec![range],
                named: Some(name),
            },
            peers: vec![Matcher {
                include: hosts,
                exclude: Vec::new(),
            }],
        });
    }
}

/// What a table says about one packet of a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Decision {
    /// Not isolated in this direction.
    Open,
    /// Allowed by bit `bit` (the lowest that matches).
    Allowed { bit: usize },
    /// Isolated and no bit matches: dropped.
    Denied,
    /// Audit mode: bit `bit` would allow it (it passes either way).
    AuditAllowed { bit: usize },
    /// Audit mode: no bit matches; it passes, counted as would-be denied.
    AuditDenied,
}

impl Decision {
    /// Whether the packet passes.
    pub fn passes(&self) -> bool {
        !matches!(self, Decision::Denied)
    }
}

/// The bits of `table` that allow a connection with `peer` to `port` (`protocol` an IP
/// protocol number; `port` the destination port, 0 for protocols without ports).
pub fn matching_bits(table: &DirectionTable, peer: Ipv4Addr, protocol: u8, port: u16) -> u64 {
    let peer_bits = lpm::lookup(&table.peers, u32::from(peer), 32);
    let port_bits = if has_ports(protocol) {
        lpm::lookup(
            &table.ports,
            u32::from(protocol) << 16 | u32::from(port),
            PORT_KEY_BITS,
        )
    } else {
        0
    };
    peer_bits & (port_bits | table.any_ports)
}

/// The verdict of `table` for a new connection with `peer`, exactly as the datapath
/// computes it (an LPM lookup each for the peer and the port, then the bits ANDed).
pub fn evaluate(table: &DirectionTable, peer: Ipv4Addr, protocol: u8, port: u16) -> Decision {
    if table.mode == Mode::Open {
        return Decision::Open;
    }
    let bits = if table.error.is_some() {
        0
    } else {
        matching_bits(table, peer, protocol, port)
    };
    match (table.mode, bits) {
        (Mode::Enforce, 0) => Decision::Denied,
        (Mode::Enforce, b) => Decision::Allowed {
            bit: b.trailing_zeros() as usize,
        },
        (_, 0) => Decision::AuditDenied,
        (_, b) => Decision::AuditAllowed {
            bit: b.trailing_zeros() as usize,
        },
    }
}

#[cfg(test)]
mod tests;

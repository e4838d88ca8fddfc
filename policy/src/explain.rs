//! Why a connection is allowed or denied: the verdict of each side's compiled table (the
//! same [`evaluate`] the datapath's lookups implement), with the rules behind it named.
//! `netctl why` prints this.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::Serialize;
use twill_k8s::PolicyPeer;

use crate::{
    ClusterView, Decision, Direction, DirectionTable, Mode, PodView, PolicyRef, RuleBit, RuleRef,
    evaluate, has_ports, matching_bits, rules_of,
};

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct End {
    pub ip: Ipv4Addr,
    /// `namespace/name` and node, when the address is a pod's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A rule that allows the connection, as the operator wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    pub rule: RuleRef,
    /// The `from`/`to` element that matched (`any peer` when the rule has none).
    pub peer: String,
    /// The ports the rule's bit allows.
    pub ports: String,
}

/// One side's verdict: the client's egress or the server's ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    pub direction: Direction,
    /// The pod whose table decides.
    pub pod: End,
    pub mode: Mode,
    pub isolated_by: Vec<PolicyRef>,
    /// Audit policies that change nothing because enforced ones isolate the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadowed_audits: Vec<PolicyRef>,
    pub decision: Decision,
    /// Every rule that allows it, the deciding one (the one counted) first.
    pub matches: Vec<RuleMatch>,
    /// Allowed whatever the table says (the pod itself, its own node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exempt: Option<String>,
    /// Why the table could not be compiled, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Side {
    pub fn passes(&self) -> bool {
        self.exempt.is_some() || self.decision.passes()
    }
}

/// A connection's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Why {
    pub from: End,
    pub to: End,
    pub protocol: u8,
    pub port: u16,
    /// The client's egress; `None` when the client is not a pod.
    pub egress: Option<Side>,
    /// The server's ingress; `None` when the server is not a pod.
    pub ingress: Option<Side>,
    pub allowed: bool,
}

/// The verdict for a new connection from `from` to `to` on `protocol`/`port` (0 for a
/// protocol without ports). `compiled` holds the tables of the pods among the two
/// (compile them with a filter on their addresses); `node_ips` gives a node's own
/// addresses (underlay, VTEP, the pods' gateway) by node name: traffic from them to the node's pods is
/// always allowed, as the datapath does.
pub fn why(
    view: &ClusterView,
    compiled: &crate::Compiled,
    from: Ipv4Addr,
    to: Ipv4Addr,
    protocol: u8,
    port: u16,
    node_ips: impl Fn(&str) -> Vec<Ipv4Addr>,
) -> Why {
    let end = |ip: Ipv4Addr| {
        let pod = view.pod_by_ip(ip);
        End {
            ip,
            pod: pod.map(|p| format!("{}/{}", p.namespace, p.name)),
            node: pod.map(|p| p.node.clone()),
        }
    };
    let port = if has_ports(protocol) { port } else { 0 };
    let side = |pod_ip: Ipv4Addr, peer: Ipv4Addr, d: Direction| -> Option<Side> {
        let pod = view.pod_by_ip(pod_ip)?;
        let policy = compiled.endpoints.get(&pod_ip)?;
        let table = policy.policy.direction(d);
        let exempt = if pod_ip == peer {
            Some("a pod's traffic to itself is always allowed".to_owned())
        } else if d == Direction::Ingress && node_ips(&pod.node).contains(&peer) {
            Some(format!(
                "traffic from the pod's own node ({}) is always allowed",
                pod.node
            ))
        } else {
            None
        };
        Some(side_of(view, pod, table, d, peer, protocol, port, exempt))
    };
    let egress = side(from, to, Direction::Egress);
    let ingress = side(to, from, Direction::Ingress);
    let allowed =
        egress.as_ref().is_none_or(Side::passes) && ingress.as_ref().is_none_or(Side::passes);
    Why {
        from: end(from),
        to: end(to),
        protocol,
        port,
        egress,
        ingress,
        allowed,
    }
}

#[allow(clippy::too_many_arguments)]
fn side_of(
    view: &ClusterView,
    pod: &PodView,
    table: &DirectionTable,
    d: Direction,
    peer: Ipv4Addr,
    protocol: u8,
    port: u16,
    exempt: Option<String>,
) -> Side {
    let decision = evaluate(table, peer, protocol, port);
    let bits = if table.mode == Mode::Open || table.error.is_some() {
        0
    } else {
        matching_bits(table, peer, protocol, port)
    };
    let mut seen = BTreeSet::new();
    let matches = (0..table.bits.len())
        .filter(|i| bits & (1u64 << i) != 0)
        .map(|i| &table.bits[i])
        .filter(|b| seen.insert((b.rule.clone(), b.named.clone(), b.ports.clone())))
        .map(|b| RuleMatch {
            rule: b.rule.clone(),
            peer: matched_peer(view, &b.rule, peer),
            ports: bit_ports(b),
        })
        .collect();
    Side {
        direction: d,
        pod: End {
            ip: pod.ip,
            pod: Some(format!("{}/{}", pod.namespace, pod.name)),
            node: Some(pod.node.clone()),
        },
        mode: table.mode,
        isolated_by: table.isolated_by.clone(),
        shadowed_audits: table.shadowed_audits.clone(),
        decision,
        matches,
        exempt,
        error: table.error.clone(),
    }
}

fn bit_ports(b: &RuleBit) -> String {
    if b.any_port {
        return "any port".to_owned();
    }
    let ports: Vec<String> = b.ports.iter().map(ToString::to_string).collect();
    match &b.named {
        Some(name) => format!("port \"{name}\" = {}", ports.join(",")),
        None => ports.join(","),
    }
}

/// The element of the rule's `from`/`to` that `peer` matches, in the operator's terms.
fn matched_peer(view: &ClusterView, rule: &RuleRef, peer: Ipv4Addr) -> String {
    let Some(policy) = view
        .policies
        .iter()
        .find(|p| p.namespace == rule.policy.namespace && p.name == rule.policy.name)
    else {
        return "?".to_owned();
    };
    let Some(r) = rules_of(policy, rule.direction).1.get(rule.index) else {
        return "?".to_owned();
    };
    if r.peers.is_empty() {
        return "any peer (no from/to)".to_owned();
    }
    let key = match rule.direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peer_pod = view.pod_by_ip(peer);
    for (i, p) in r.peers.iter().enumerate() {
        match p {
            PolicyPeer::Pods { namespaces, pods } => {
                if peer_pod
                    .is_some_and(|pp| view.peer_selects(&policy.namespace, namespaces, pods, pp))
                {
                    let ns = match namespaces {
                        None => format!("namespace {}", policy.namespace),
                        Some(sel) => format!("namespaces {sel}"),
                    };
                    return format!("{key}[{i}]: pods {pods} in {ns}");
                }
            }
            PolicyPeer::IpBlock { cidr, except } => {
                let IpNetwork::V4(c) = cidr else { continue };
                let inside = c.contains(peer)
                    && !except
                        .iter()
                        .any(|e| matches!(e, IpNetwork::V4(e) if e.contains(peer)));
                if inside {
                    let except = if except.is_empty() {
                        String::new()
                    } else {
                        let e: Vec<String> = except.iter().map(ToString::to_string).collect();
                        format!(" except {}", e.join(","))
                    };
                    return format!("{key}[{i}]: ipBlock {cidr}{except}");
                }
            }
        }
    }
    "?".to_owned()
}

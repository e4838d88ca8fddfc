//! `netctl why` for FQDNPolicy: a pod that one selects may open flows outside the cluster
//! only to addresses the node's DNS server learned for it from an allowed name. This reads
//! the client node's learned addresses (`TWILL_FQDN`, `TWILL_FQDN_NAME`) and says which
//! name resolved to the destination, when, and for how long it holds, or why nothing
//! allows it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;
use twill_abi::lb::wire_ip;
use twill_api::cluster::NodeRecord;
use twill_k8s::ClusterIp;
use twill_policy::{ClusterView, Compiled};

use crate::nodes::Nodes;

#[derive(Serialize)]
pub struct FqdnCheck {
    /// The FQDNPolicies selecting the client (`namespace/name`).
    pub policies: Vec<String>,
    pub allowed: bool,
    /// The verdict in words.
    pub reason: String,
    /// The name that resolved to the destination, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds since the answer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_seconds_ago: Option<f64>,
    /// Seconds the address holds for new flows (negative: expired that long ago).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds_seconds: Option<f64>,
}

/// Whether `ip` is inside the cluster as the datapath sees it: a pod subnet, a node, a
/// Service.
fn inside(
    ip: Ipv4Addr,
    nodes: &BTreeMap<String, NodeRecord>,
    services: &[twill_k8s::Service],
) -> bool {
    ip == twill_api::POD_GATEWAY
        || nodes
            .values()
            .any(|n| n.subnet.contains(ip) || n.underlay_ip == ip)
        || services
            .iter()
            .any(|s| s.cluster_ip == ClusterIp::Fixed(ip))
}

/// `HH:MM:SS` UTC of a Unix time.
fn clock(unix: f64) -> String {
    let secs = unix.max(0.0) as u64 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn ports_text(allow: &twill_abi::policy::FqdnAllow) -> String {
    if allow.any_port != 0 {
        return "every port".to_owned();
    }
    let ports: Vec<String> = allow.ports[..usize::from(allow.port_count)]
        .iter()
        .map(|p| {
            let proto = twill_policy::protocol_name(p.protocol);
            if p.lo == p.hi {
                format!("{}/{proto}", p.lo)
            } else {
                format!("{}-{}/{proto}", p.lo, p.hi)
            }
        })
        .collect();
    ports.join(", ")
}

/// The FQDN verdict of a flow from `from` to `to` (after Service translation), or `None`
/// when no FQDNPolicy selects the client or the destination is inside the cluster.
pub fn check(
    view: &ClusterView,
    compiled: &Compiled,
    node_records: &BTreeMap<String, NodeRecord>,
    services: &[twill_k8s::Service],
    nodes: &Nodes,
    (from, to, protocol, port): (Ipv4Addr, Ipv4Addr, u8, u16),
) -> Option<FqdnCheck> {
    let endpoint = compiled.endpoints.get(&from)?;
    if !endpoint.policy.fqdn || inside(to, node_records, services) {
        return None;
    }
    let pod = view.pod_by_ip(from)?;
    let policies: Vec<String> = view
        .fqdn_selecting(pod)
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut check = FqdnCheck {
        policies,
        allowed: false,
        reason: String::new(),
        name: None,
        resolved_seconds_ago: None,
        holds_seconds: None,
    };
    let learned = nodes.access(&pod.node).and_then(|a| {
        twill_bpf::read_fqdn(&a.pin_dir).map_err(|e| {
            format!(
                "reading {}'s learned addresses: {:#}",
                pod.node,
                anyhow::Error::new(e)
            )
        })
    });
    let learned = match learned {
        Ok(l) => l,
        Err(e) => {
            check.reason = format!("not checked: {e}");
            return Some(check);
        }
    };
    let key = twill_abi::policy::FqdnKey {
        pod_ip: wire_ip(from.octets()),
        peer_ip: wire_ip(to.octets()),
    };
    let Some(entry) = learned.iter().find(|l| l.key == key) else {
        check.reason = format!(
            "denied: no name these FQDNPolicies allow resolved to {to} for {}/{} \
             (or it expired and was swept)",
            pod.namespace, pod.name
        );
        return Some(check);
    };
    let now_mono = twill_bpf::monotonic_ns() as f64 / 1e9;
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ago = now_mono - entry.allow.learned_ns as f64 / 1e9;
    let holds = entry.allow.expires_ns as f64 / 1e9 - now_mono;
    let name = entry
        .name
        .clone()
        .unwrap_or_else(|| "(a name no longer recorded)".to_owned());
    check.name = Some(name.clone());
    check.resolved_seconds_ago = Some(ago);
    check.holds_seconds = Some(holds);
    let resolved = format!(
        "{name} resolved to {to} at {} ({ago:.0} s ago, TTL {} s)",
        clock(now_unix - ago),
        entry.allow.ttl
    );
    let port_ok = entry.allow.allows_port(protocol, port);
    check.allowed = holds > 0.0 && port_ok;
    check.reason = if holds <= 0.0 {
        format!(
            "denied: {resolved}, which expired {:.0} s ago for new flows",
            -holds
        )
    } else if !port_ok {
        format!(
            "denied: {resolved}, but its rules allow only {}",
            ports_text(&entry.allow)
        )
    } else {
        format!(
            "allowed: {resolved}; holds {holds:.0} s more, to {}",
            ports_text(&entry.allow)
        )
    };
    Some(check)
}

pub fn print(f: &FqdnCheck) {
    println!("  FQDNPolicy ({}): {}", f.policies.join(", "), f.reason);
}

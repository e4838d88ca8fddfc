//! Which pods' tables a change can alter, so a pass recompiles only those. A pod's table
//! reads: the policies selecting it (their selectors over its labels), its own named ports
//! (ingress), and, through those policies' peers, the pods and namespaces they select
//! (labels, addresses, named ports for egress). So a table can change only if the pod
//! itself changed, or a policy that selects it (before or after) changed or selects
//! something that changed, with a selector or an ipBlock.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::IpNetwork;
use twill_k8s::{NetworkPolicy, PolicyPeer, PolicyPortNumber};

use crate::{ClusterView, Direction, PodView, rules_of};

type Labels = BTreeMap<String, String>;

/// The pods among `candidates` whose tables may differ between `old` and `new`
/// (a superset of those that do). Pods are named by `namespace/name`; a candidate that
/// is in neither view has no table either way and is left out.
pub fn affected(
    old: &ClusterView,
    new: &ClusterView,
    candidates: &[Ipv4Addr],
) -> BTreeSet<Ipv4Addr> {
    let by_name = |v: &ClusterView| -> BTreeMap<(String, String), usize> {
        v.pods
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.namespace.clone(), p.name.clone()), i))
            .collect()
    };
    let (old_pods, new_pods) = (by_name(old), by_name(new));
    // Changed pods, each as it was (in `old`) and as it is (in `new`).
    let mut changed: Vec<(&ClusterView, &PodView)> = Vec::new();
    for (key, &i) in &old_pods {
        let before = &old.pods[i];
        match new_pods.get(key) {
            Some(&j) if new.pods[j] == *before => {}
            Some(&j) => {
                changed.push((old, before));
                changed.push((new, &new.pods[j]));
            }
            None => changed.push((old, before)),
        }
    }
    for (key, &j) in &new_pods {
        if !old_pods.contains_key(key) {
            changed.push((new, &new.pods[j]));
        }
    }
    // Namespaces whose labels changed, with both label sets (empty for one that is new
    // or gone).
    let empty = BTreeMap::new();
    let mut namespaces: Vec<(&Labels, &Labels)> = Vec::new();
    for name in old.namespaces.keys().chain(new.namespaces.keys()) {
        let (a, b) = (
            old.namespaces.get(name).unwrap_or(&empty),
            new.namespaces.get(name).unwrap_or(&empty),
        );
        if a != b {
            namespaces.push((a, b));
        }
    }
    let policy_key = |p: &NetworkPolicy| (p.namespace.clone(), p.name.clone());
    let old_policies: BTreeMap<_, &NetworkPolicy> =
        old.policies.iter().map(|p| (policy_key(p), p)).collect();
    let new_policies: BTreeMap<_, &NetworkPolicy> =
        new.policies.iter().map(|p| (policy_key(p), p)).collect();
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    for (key, p) in &old_policies {
        if new_policies.get(key) != Some(p) {
            touched.insert(key.clone());
        }
    }
    for key in new_policies.keys() {
        if !old_policies.contains_key(key) {
            touched.insert(key.clone());
        }
    }
    for (view, policies) in [(old, &old_policies), (new, &new_policies)] {
        for (key, p) in policies.iter() {
            if !touched.contains(key) && reads_something_changed(view, p, &changed, &namespaces) {
                touched.insert(key.clone());
            }
        }
    }
    // An FQDNPolicy changed (or came, or went): the pods of its namespace are affected
    // (its selector, old or new, reads only their labels).
    let fqdn_namespaces: BTreeSet<&str> = old
        .fqdn_policies
        .iter()
        .filter(|p| !new.fqdn_policies.contains(p))
        .chain(
            new.fqdn_policies
                .iter()
                .filter(|p| !old.fqdn_policies.contains(p)),
        )
        .map(|p| p.namespace.as_str())
        .collect();
    let in_fqdn_namespace = |view: &ClusterView, ip: Ipv4Addr| {
        view.pods
            .iter()
            .any(|p| p.ip == ip && fqdn_namespaces.contains(p.namespace.as_str()))
    };
    let changed_ips: BTreeSet<Ipv4Addr> = changed.iter().map(|(_, p)| p.ip).collect();
    let selected_by_touched = |view: &ClusterView, ip: Ipv4Addr| {
        view.pods.iter().filter(|p| p.ip == ip).any(|pod| {
            view.selecting(pod)
                .any(|(_, p)| touched.contains(&policy_key(p)))
        })
    };
    candidates
        .iter()
        .copied()
        .filter(|ip| {
            changed_ips.contains(ip)
                || in_fqdn_namespace(old, *ip)
                || in_fqdn_namespace(new, *ip)
                || selected_by_touched(old, *ip)
                || selected_by_touched(new, *ip)
        })
        .collect()
}

/// Whether the policy (as in `view`) selects, or has a peer that selects, a changed pod
/// or namespace.
fn reads_something_changed(
    view: &ClusterView,
    p: &NetworkPolicy,
    pods: &[(&ClusterView, &PodView)],
    namespaces: &[(&Labels, &Labels)],
) -> bool {
    let states = || {
        pods.iter()
            .filter(|(v, _)| std::ptr::eq(*v, view))
            .map(|(_, p)| *p)
    };
    if states().any(|pod| pod.namespace == p.namespace && p.pod_selector.matches(&pod.labels)) {
        return true;
    }
    for d in Direction::BOTH {
        for rule in rules_of(p, d).1 {
            // Address peers (every address, ipBlocks) read pods only for egress named
            // ports, resolved on the pods among them.
            let named = d == Direction::Egress
                && rule
                    .ports
                    .iter()
                    .any(|port| matches!(port.port, Some(PolicyPortNumber::Named(_))));
            if rule.peers.is_empty() {
                if named && states().next().is_some() {
                    return true;
                }
                continue;
            }
            for peer in &rule.peers {
                match peer {
                    PolicyPeer::Pods {
                        namespaces: ns,
                        pods: sel,
                    } => {
                        if states().any(|pod| view.peer_selects(&p.namespace, ns, sel, pod)) {
                            return true;
                        }
                        if let Some(ns) = ns
                            && namespaces
                                .iter()
                                .any(|(a, b)| ns.matches(a) || ns.matches(b))
                        {
                            return true;
                        }
                    }
                    PolicyPeer::IpBlock { cidr, .. } => {
                        if let IpNetwork::V4(c) = cidr
                            && named
                            && states().any(|pod| c.contains(pod.ip))
                        {
                            return true;
                        }
                    }
                }
            }
        }
    }
    false
}

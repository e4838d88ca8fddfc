//! What the BGP-routed mode should hold, as plain data: the mesh peers from etcd's node
//! records, which learned routes become kernel routes (and which are refused, and why), and
//! the difference from what the kernel holds. No I/O; [`crate::bgp::kernel`] applies the
//! difference.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use twill_api::cluster::NodeRecord;
use twill_ipam::ClusterCidr;

/// Routes learned per peer (its underlay address): prefix -> next hop. Stale routes of a
/// restarting peer are in here too, until the speaker withdraws them.
pub type Learned = BTreeMap<Ipv4Addr, BTreeMap<Ipv4Network, Ipv4Addr>>;

/// Kernel routes: subnet -> the peer's underlay address.
pub type Routes = BTreeMap<Ipv4Network, Ipv4Addr>;

/// A node this node keeps a session with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPeer {
    pub node: String,
    /// This side waits for the peer's connection: the node with the lower underlay address
    /// connects, so the two never open a connection each.
    pub passive: bool,
}

/// The full mesh of node `me` (underlay address `my_ip`): every other node whose record
/// has a subnet of the cluster, by underlay address. A record with an address already
/// seen, or with a subnet already seen (this node's too), is skipped: the first wins.
pub fn mesh<'a>(
    me: &str,
    my_ip: Ipv4Addr,
    cluster: &ClusterCidr,
    records: impl IntoIterator<Item = &'a NodeRecord>,
) -> BTreeMap<Ipv4Addr, MeshPeer> {
    let records: Vec<&NodeRecord> = records.into_iter().collect();
    // A record claiming this node's own subnet is no peer either.
    let mut subnets: BTreeSet<Ipv4Network> = records
        .iter()
        .filter(|r| r.name == me)
        .map(|r| r.subnet)
        .collect();
    let mut out = BTreeMap::new();
    for r in records {
        if r.name == me
            || r.underlay_ip == my_ip
            || cluster.check_subnet(r.subnet).is_err()
            || !subnets.insert(r.subnet)
            || out.contains_key(&r.underlay_ip)
        {
            continue;
        }
        out.insert(
            r.underlay_ip,
            MeshPeer {
                node: r.name.clone(),
                passive: my_ip > r.underlay_ip,
            },
        );
    }
    out
}

/// The kernel routes `learned` should become, and the routes refused with the reason. A
/// route is installed only when etcd assigns its prefix to the node that announced it (the
/// node record whose underlay address is the peer's) and its next hop is that node's
/// underlay address.
pub fn desired<'a>(
    learned: &Learned,
    records: impl IntoIterator<Item = &'a NodeRecord> + Clone,
) -> (Routes, Vec<String>) {
    let mut routes = Routes::new();
    let mut refused = Vec::new();
    for (peer, prefixes) in learned {
        let announcer = records.clone().into_iter().find(|r| r.underlay_ip == *peer);
        for (prefix, next_hop) in prefixes {
            let Some(node) = announcer else {
                refused.push(format!(
                    "{prefix} from {peer}: no node record has the underlay address {peer}"
                ));
                continue;
            };
            if node.subnet != *prefix {
                let holder = records
                    .clone()
                    .into_iter()
                    .find(|r| r.subnet == *prefix)
                    .map_or_else(|| "no node".to_owned(), |r| format!("node {}", r.name));
                refused.push(format!(
                    "{prefix} from node {} ({peer}): etcd assigns it to {holder}; {} holds {}",
                    node.name, node.name, node.subnet
                ));
                continue;
            }
            if next_hop != peer {
                refused.push(format!(
                    "{prefix} from node {} ({peer}): next hop {next_hop} is not the node's \
                     underlay address",
                    node.name
                ));
                continue;
            }
            routes.insert(*prefix, *next_hop);
        }
    }
    (routes, refused)
}

/// What to change so the kernel holds `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Written with replace: a route that changes its next hop is never missing.
    pub set: Vec<(Ipv4Network, Ipv4Addr)>,
    pub del: Vec<(Ipv4Network, Ipv4Addr)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.del.is_empty()
    }
}

/// The difference; with `remove` false (after a restart, before the sessions have
/// converged) nothing is removed, only added or rewritten.
pub fn diff(desired: &Routes, current: &Routes, remove: bool) -> Changes {
    Changes {
        set: desired
            .iter()
            .filter(|(k, v)| current.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect(),
        del: if remove {
            current
                .iter()
                .filter(|(k, _)| !desired.contains_key(k))
                .map(|(k, v)| (*k, *v))
                .collect()
        } else {
            Vec::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, subnet: &str, ip: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            underlay_ip: ip.parse().unwrap(),
            vtep_mac: None,
        }
    }

    fn cluster() -> ClusterCidr {
        ClusterCidr::new("10.244.0.0/16".parse().unwrap(), 24).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn the_mesh_is_every_other_node_and_the_lower_address_connects() {
        let records = [
            record("node1", "10.244.0.0/24", "172.30.0.11"),
            record("node2", "10.244.1.0/24", "172.30.0.12"),
            record("node3", "10.244.2.0/24", "172.30.0.13"),
            record("foreign", "10.99.0.0/24", "172.30.0.14"),
            record("same-subnet", "10.244.1.0/24", "172.30.0.15"),
        ];
        let m = mesh("node2", ip("172.30.0.12"), &cluster(), &records);
        assert_eq!(
            m,
            BTreeMap::from([
                (
                    ip("172.30.0.11"),
                    MeshPeer {
                        node: "node1".into(),
                        passive: true
                    }
                ),
                (
                    ip("172.30.0.13"),
                    MeshPeer {
                        node: "node3".into(),
                        passive: false
                    }
                ),
            ])
        );
    }

    #[test]
    fn only_the_subnet_etcd_assigns_to_the_announcer_is_installed() {
        let records = [
            record("node1", "10.244.0.0/24", "172.30.0.11"),
            record("node2", "10.244.1.0/24", "172.30.0.12"),
            record("node3", "10.244.2.0/24", "172.30.0.13"),
        ];
        let learned = Learned::from([
            (
                ip("172.30.0.12"),
                BTreeMap::from([
                    (net("10.244.1.0/24"), ip("172.30.0.12")),
                    // node3's subnet, announced by node2.
                    (net("10.244.2.0/24"), ip("172.30.0.12")),
                    (net("10.244.9.0/24"), ip("172.30.0.12")),
                ]),
            ),
            (
                ip("172.30.0.13"),
                BTreeMap::from([(net("10.244.2.0/24"), ip("172.30.0.99"))]),
            ),
            (
                ip("172.30.0.50"),
                BTreeMap::from([(net("10.244.5.0/24"), ip("172.30.0.50"))]),
            ),
        ]);
        let (routes, refused) = desired(&learned, &records);
        assert_eq!(
            routes,
            Routes::from([(net("10.244.1.0/24"), ip("172.30.0.12"))])
        );
        assert_eq!(
            refused,
            [
                "10.244.2.0/24 from node node2 (172.30.0.12): etcd assigns it to node node3; \
                 node2 holds 10.244.1.0/24",
                "10.244.9.0/24 from node node2 (172.30.0.12): etcd assigns it to no node; \
                 node2 holds 10.244.1.0/24",
                "10.244.2.0/24 from node node3 (172.30.0.13): next hop 172.30.0.99 is not the \
                 node's underlay address",
                "10.244.5.0/24 from 172.30.0.50: no node record has the underlay address \
                 172.30.0.50",
            ]
        );
    }

    #[test]
    fn diff_rewrites_in_place_and_removes_only_when_allowed() {
        let current = Routes::from([
            (net("10.244.1.0/24"), ip("172.30.0.12")),
            (net("10.244.2.0/24"), ip("172.30.0.13")),
        ]);
        let desired = Routes::from([
            (net("10.244.1.0/24"), ip("172.30.0.22")),
            (net("10.244.3.0/24"), ip("172.30.0.14")),
        ]);
        let c = diff(&desired, &current, true);
        assert_eq!(
            c.set,
            [
                (net("10.244.1.0/24"), ip("172.30.0.22")),
                (net("10.244.3.0/24"), ip("172.30.0.14"))
            ]
        );
        assert_eq!(c.del, [(net("10.244.2.0/24"), ip("172.30.0.13"))]);
        let held = diff(&desired, &current, false);
        assert_eq!(held.set, c.set);
        assert!(held.del.is_empty());
        assert!(diff(&desired, &desired, true).is_empty());
    }
}

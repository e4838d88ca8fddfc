//! What the BGP-routed mode should hold, as plain data: the mesh peers from etcd's node
//! records, the configured peers (`BGPPeer`) that select this node, which learned routes
//! become kernel routes (and which are refused, and why), and the difference from what the
//! kernel holds. No I/O; [`crate::bgp::kernel`] applies the difference.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::Ipv4Network;
use twill_api::cluster::NodeRecord;
use twill_ipam::ClusterCidr;
use twill_k8s::BgpPeer;

/// A `BGPPeer` this node keeps a session with, as the session needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredPeer {
    /// The BGPPeer's name.
    pub name: String,
    pub as_number: u32,
    pub passive: bool,
    pub hold_seconds: Option<u16>,
    pub keepalive_seconds: Option<u16>,
    pub password_file: Option<String>,
}

/// The BGPPeers node `me` (with `labels`, for their `nodeSelector`; underlay address
/// `my_ip`) peers with, by address, and why the
/// others that select it are not peered: an IPv6 address (the speaker is IPv4 only), this
/// node's own address, a mesh peer's address (the mesh session stands), or an address
/// another BGPPeer has (the first by name stands).
pub fn configured<'a>(
    labels: &BTreeMap<String, String>,
    my_ip: Ipv4Addr,
    peers: impl IntoIterator<Item = &'a BgpPeer>,
    mesh: &BTreeMap<Ipv4Addr, MeshPeer>,
) -> (BTreeMap<Ipv4Addr, ConfiguredPeer>, Vec<String>) {
    let mut peers: Vec<&BgpPeer> = peers.into_iter().filter(|p| p.selects(labels)).collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: BTreeMap<Ipv4Addr, ConfiguredPeer> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in peers {
        let address = match p.peer_ip {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => {
                problems.push(format!(
                    "BGPPeer {}: peerIP {a} is IPv6, which the speaker does not support yet",
                    p.name
                ));
                continue;
            }
        };
        if address == my_ip {
            problems.push(format!(
                "BGPPeer {}: peerIP {address} is this node's own address",
                p.name
            ));
            continue;
        }
        if let Some(m) = mesh.get(&address) {
            problems.push(format!(
                "BGPPeer {}: peerIP {address} is node {}, already a mesh peer",
                p.name, m.node
            ));
            continue;
        }
        if let Some(first) = out.get(&address) {
            problems.push(format!(
                "BGPPeer {}: peerIP {address} is BGPPeer {}'s too; that one is peered",
                p.name, first.name
            ));
            continue;
        }
        out.insert(
            address,
            ConfiguredPeer {
                name: p.name.clone(),
                as_number: p.as_number,
                passive: p.passive,
                hold_seconds: p.hold_seconds,
                keepalive_seconds: p.keepalive_seconds,
                password_file: p.password_file.clone(),
            },
        );
    }
    (out, problems)
}

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

/// The kernel routes `learned` should become, and the routes refused with the reason.
///
/// From a node (a mesh peer), a route is installed only when etcd assigns its prefix to
/// that node (the node record whose underlay address is the peer's) and its next hop is
/// that node's underlay address.
///
/// From a configured peer (`configured`: address -> BGPPeer name; a route reflector or a
/// top-of-rack router), a route is installed only when etcd assigns its prefix to the node
/// its next hop is the underlay address of: a reflected node subnet. The router's own
/// routes are refused. This node's own subnet reflected back to it (next hop `my_ip`) is
/// neither installed nor reported.
///
/// A route inside the Service CIDR (`service_cidr`; other nodes announce it to routers with
/// `bgp.announce_service_cidr`, and a route reflector passes it on) is refused from anyone:
/// every node answers Service addresses itself.
pub fn desired<'a>(
    learned: &Learned,
    records: impl IntoIterator<Item = &'a NodeRecord> + Clone,
    configured: &BTreeMap<Ipv4Addr, String>,
    my_ip: Ipv4Addr,
    service_cidr: Ipv4Network,
) -> (Routes, Vec<String>) {
    let mut routes = Routes::new();
    let mut refused = Vec::new();
    let service = |prefix: &Ipv4Network, from: String| {
        prefix.overlaps(service_cidr).then(|| {
            format!(
                "{prefix} from {from}: inside the Service CIDR {service_cidr}, which every \
                 node answers itself"
            )
        })
    };
    for (peer, prefixes) in learned {
        if let Some(name) = configured.get(peer) {
            for (prefix, next_hop) in prefixes {
                if *next_hop == my_ip {
                    continue;
                }
                if let Some(why) = service(prefix, format!("BGPPeer {name} ({peer})")) {
                    refused.push(why);
                    continue;
                }
                let holder = records.clone().into_iter().find(|r| r.subnet == *prefix);
                let via = records
                    .clone()
                    .into_iter()
                    .find(|r| r.underlay_ip == *next_hop);
                match (holder, via) {
                    (Some(h), Some(v)) if h.name == v.name => {
                        routes.insert(*prefix, *next_hop);
                    }
                    (_, None) => refused.push(format!(
                        "{prefix} from BGPPeer {name} ({peer}): next hop {next_hop} is no \
                         node's underlay address"
                    )),
                    (holder, Some(v)) => refused.push(format!(
                        "{prefix} from BGPPeer {name} ({peer}): etcd assigns it to {}, not to \
                         node {} (next hop {next_hop}), which holds {}",
                        holder.map_or_else(|| "no node".to_owned(), |h| format!("node {}", h.name)),
                        v.name,
                        v.subnet
                    )),
                }
            }
            continue;
        }
        let announcer = records.clone().into_iter().find(|r| r.underlay_ip == *peer);
        for (prefix, next_hop) in prefixes {
            let from =
                announcer.map_or_else(|| peer.to_string(), |n| format!("node {} ({peer})", n.name));
            if let Some(why) = service(prefix, from) {
                refused.push(why);
                continue;
            }
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

/// What this node announces to one peer: its pod subnet while it holds one, and, to a
/// configured peer (`to_router`) with `service_cidr` given (`bgp.announce_service_cidr`),
/// the Service CIDR too. Nothing without a lease: the Service CIDR goes with the subnet.
pub fn announcements(
    subnet: Option<Ipv4Network>,
    service_cidr: Option<Ipv4Network>,
    to_router: bool,
) -> Vec<Ipv4Network> {
    let Some(subnet) = subnet else {
        return Vec::new();
    };
    std::iter::once(subnet)
        .chain(service_cidr.filter(|_| to_router))
        .collect()
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
        let (routes, refused) = desired(
            &learned,
            &records,
            &BTreeMap::new(),
            ip("172.30.0.11"),
            net(SERVICES),
        );
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
    fn a_configured_peer_gives_node_subnets_via_their_nodes_and_nothing_else() {
        let records = [
            record("node1", "10.244.0.0/24", "172.30.0.11"),
            record("node2", "10.244.1.0/24", "172.30.0.12"),
            record("node3", "10.244.2.0/24", "172.30.0.13"),
        ];
        let rr = ip("172.30.0.101");
        let learned = Learned::from([(
            rr,
            BTreeMap::from([
                // Reflected: node2's and node3's subnets via themselves.
                (net("10.244.1.0/24"), ip("172.30.0.12")),
                (net("10.244.2.0/24"), ip("172.30.0.13")),
                // This node's own, reflected back: ignored.
                (net("10.244.0.0/24"), ip("172.30.0.11")),
                // The router's own routes, and a node subnet via the wrong node.
                (net("192.0.2.0/24"), rr),
                (net("10.244.7.0/24"), ip("172.30.0.12")),
            ]),
        )]);
        let configured = BTreeMap::from([(rr, "rr".to_owned())]);
        let (routes, refused) = desired(
            &learned,
            &records,
            &configured,
            ip("172.30.0.11"),
            net(SERVICES),
        );
        assert_eq!(
            routes,
            Routes::from([
                (net("10.244.1.0/24"), ip("172.30.0.12")),
                (net("10.244.2.0/24"), ip("172.30.0.13")),
            ])
        );
        assert_eq!(
            refused,
            [
                "10.244.7.0/24 from BGPPeer rr (172.30.0.101): etcd assigns it to no node, not \
                 to node node2 (next hop 172.30.0.12), which holds 10.244.1.0/24",
                "192.0.2.0/24 from BGPPeer rr (172.30.0.101): next hop 172.30.0.101 is no \
                 node's underlay address",
            ]
        );
    }

    const SERVICES: &str = "10.96.0.0/12";

    #[test]
    fn service_cidr_routes_are_refused_from_nodes_and_routers() {
        let records = [
            record("node1", "10.244.0.0/24", "172.30.0.11"),
            record("node2", "10.244.1.0/24", "172.30.0.12"),
        ];
        let rr = ip("172.30.0.101");
        let learned = Learned::from([
            // A mesh peer announcing it (twill sends it only to configured peers).
            (
                ip("172.30.0.12"),
                BTreeMap::from([
                    (net("10.244.1.0/24"), ip("172.30.0.12")),
                    (net(SERVICES), ip("172.30.0.12")),
                ]),
            ),
            (
                rr,
                BTreeMap::from([
                    // node2's announcement, reflected; and a part of it from the router.
                    (net(SERVICES), ip("172.30.0.12")),
                    (net("10.96.5.0/24"), rr),
                ]),
            ),
        ]);
        let configured = BTreeMap::from([(rr, "rr".to_owned())]);
        let (routes, refused) = desired(
            &learned,
            &records,
            &configured,
            ip("172.30.0.11"),
            net(SERVICES),
        );
        assert_eq!(
            routes,
            Routes::from([(net("10.244.1.0/24"), ip("172.30.0.12"))])
        );
        assert_eq!(
            refused,
            [
                "10.96.0.0/12 from node node2 (172.30.0.12): inside the Service CIDR \
                 10.96.0.0/12, which every node answers itself",
                "10.96.0.0/12 from BGPPeer rr (172.30.0.101): inside the Service CIDR \
                 10.96.0.0/12, which every node answers itself",
                "10.96.5.0/24 from BGPPeer rr (172.30.0.101): inside the Service CIDR \
                 10.96.0.0/12, which every node answers itself",
            ]
        );
    }

    #[test]
    fn the_service_cidr_goes_to_routers_only_and_only_with_a_lease() {
        let subnet = Some(net("10.244.1.0/24"));
        let services = Some(net(SERVICES));
        assert_eq!(
            announcements(subnet, services, true),
            [net("10.244.1.0/24"), net(SERVICES)]
        );
        assert_eq!(
            announcements(subnet, services, false),
            [net("10.244.1.0/24")]
        );
        assert_eq!(announcements(subnet, None, true), [net("10.244.1.0/24")]);
        assert_eq!(announcements(None, services, true), []);
    }

    fn peer(name: &str, text: &str) -> BgpPeer {
        let yaml = format!(
            "apiVersion: bgp.twill.io/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec:\n{text}"
        );
        let (objects, errors) = twill_k8s::parse("p.yaml", &yaml);
        assert_eq!(errors, []);
        match &objects[0].object {
            twill_k8s::Object::BgpPeer(p) => p.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn configured_peers_are_those_selecting_the_node_once_per_address() {
        let peers = [
            peer("rr", "  peerIP: 172.30.0.101\n  asNumber: 64512\n"),
            peer(
                "tor-node1",
                "  peerIP: 172.30.0.102\n  asNumber: 65001\n  passive: true\n  holdSeconds: 30\n  \
                 nodeSelector: {matchLabels: {kubernetes.io/hostname: node1}}\n",
            ),
            peer(
                "tor-node2",
                "  peerIP: 172.30.0.103\n  asNumber: 65001\n  \
                 nodeSelector: {matchLabels: {kubernetes.io/hostname: node2}}\n",
            ),
            peer(
                "tor-rack-b",
                "  peerIP: 172.30.0.104\n  asNumber: 65001\n  \
                 nodeSelector: {matchLabels: {rack: b}}\n",
            ),
            peer("v6", "  peerIP: fd00::1\n  asNumber: 65001\n"),
            peer("self", "  peerIP: 172.30.0.11\n  asNumber: 65001\n"),
            peer("node2", "  peerIP: 172.30.0.12\n  asNumber: 64512\n"),
            peer("rr-again", "  peerIP: 172.30.0.101\n  asNumber: 64512\n"),
        ];
        let mesh = BTreeMap::from([(
            ip("172.30.0.12"),
            MeshPeer {
                node: "node2".into(),
                passive: false,
            },
        )]);
        let node1 = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), "node1".to_owned()),
            ("rack".to_owned(), "a".to_owned()),
        ]);
        let (out, problems) = configured(&node1, ip("172.30.0.11"), &peers, &mesh);
        assert_eq!(
            out.keys().copied().collect::<Vec<_>>(),
            [ip("172.30.0.101"), ip("172.30.0.102")]
        );
        // A selector on a label the node's configuration gives it.
        let rack_b = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), "node1".to_owned()),
            ("rack".to_owned(), "b".to_owned()),
        ]);
        let (out_b, _) = configured(&rack_b, ip("172.30.0.11"), &peers, &mesh);
        assert_eq!(
            out_b.keys().copied().collect::<Vec<_>>(),
            [ip("172.30.0.101"), ip("172.30.0.102"), ip("172.30.0.104")]
        );
        assert_eq!(
            out[&ip("172.30.0.102")],
            ConfiguredPeer {
                name: "tor-node1".into(),
                as_number: 65001,
                passive: true,
                hold_seconds: Some(30),
                keepalive_seconds: None,
                password_file: None,
            }
        );
        assert_eq!(
            problems,
            [
                "BGPPeer node2: peerIP 172.30.0.12 is node node2, already a mesh peer",
                "BGPPeer rr-again: peerIP 172.30.0.101 is BGPPeer rr's too; that one is peered",
                "BGPPeer self: peerIP 172.30.0.11 is this node's own address",
                "BGPPeer v6: peerIP fd00::1 is IPv6, which the speaker does not support yet",
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

//! The cross-subnet fallback (Calico's CrossSubnet), as plain data: of the routes BGP
//! gives, those whose next hop (the announcing node's underlay address) is on this node's
//! underlay subnet stay plain routes via that address; the others, which only a router
//! can reach and which the router has no pod routes for, go through the VXLAN device as the
//! VXLAN mode programs a peer (route, neighbour, FDB entry), with the node's VTEP MAC from
//! its node record. No I/O; [`crate::bgp::kernel`] and [`crate::overlay::vxlan`] apply it.

use std::{collections::HashMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use twill_api::cluster::NodeRecord;
use twill_ipam::PodSubnet;

use crate::{
    bgp::routes::Routes,
    overlay::peers::{Peer, Programmed, parse_mac},
};

/// Whether `peer` is directly connected: inside the subnet of this node's underlay address
/// (`underlay`, the address with its prefix length on the interface).
pub fn on_segment(underlay: Ipv4Network, peer: Ipv4Addr) -> bool {
    underlay.contains(peer)
}

/// The routes of one pass, by the way they leave this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// `SUBNET via NODE_IP dev UNDERLAY`: nodes on this node's segment.
    pub plain: Routes,
    /// What the VXLAN device holds for the nodes on other subnets.
    pub vxlan: Programmed,
    /// Routes to nodes on other subnets that are not installed, with the reason.
    pub refused: Vec<String>,
    /// Why those nodes are not routed, for the status; `None` when all are.
    pub problem: Option<String>,
}

/// Splits `desired` (subnet -> the announcing node's underlay address) by whether the next
/// hop is on `underlay`'s segment. With `fallback` (`bgp.cross_subnet`) the others go
/// through VXLAN; a node whose record has no VTEP MAC (its fallback is off) cannot be
/// reached that way and is refused. Without `fallback` they are all refused.
pub fn split<'a>(
    desired: Routes,
    underlay: Ipv4Network,
    fallback: bool,
    records: impl IntoIterator<Item = &'a NodeRecord>,
) -> Split {
    let by_address: HashMap<Ipv4Addr, &NodeRecord> =
        records.into_iter().map(|r| (r.underlay_ip, r)).collect();
    // Named by its network address in messages, not by this node's.
    let segment = Ipv4Network::new(underlay.network(), underlay.prefix()).unwrap_or(underlay);
    let mut out = Split::default();
    let mut off_segment = Vec::new();
    let mut no_vtep = Vec::new();
    let mut tunnelled = Vec::new();
    for (subnet, via) in desired {
        if on_segment(underlay, via) {
            out.plain.insert(subnet, via);
            continue;
        }
        let record = by_address.get(&via).copied();
        let node = record.map_or_else(|| via.to_string(), |r| format!("node {} ({via})", r.name));
        if !fallback {
            out.refused.push(format!(
                "{subnet} via {node}: not on this node's underlay subnet {segment}; \
                 bgp.cross_subnet = true reaches it through VXLAN"
            ));
            off_segment.push(node);
            continue;
        }
        let Some(vtep_mac) = record.and_then(|r| r.vtep_mac.as_deref().and_then(parse_mac)) else {
            out.refused.push(format!(
                "{subnet} via {node}: on another subnet, and its node record has no VXLAN \
                 device (bgp.cross_subnet is off there)"
            ));
            no_vtep.push(node);
            continue;
        };
        tunnelled.push(Peer {
            subnet,
            vtep_ip: PodSubnet(subnet).node_address(),
            vtep_mac,
            underlay_ip: via,
        });
    }
    out.vxlan = Programmed::from_peers(&tunnelled);
    let mut problems = Vec::new();
    if !off_segment.is_empty() {
        problems.push(format!(
            "not routed, not on this node's underlay subnet {segment} (bgp.cross_subnet is \
             off): {}",
            off_segment.join(", ")
        ));
    }
    if !no_vtep.is_empty() {
        problems.push(format!(
            "not routed, on another subnet without a VXLAN device (bgp.cross_subnet is off \
             there): {}",
            no_vtep.join(", ")
        ));
    }
    out.problem = (!problems.is_empty()).then(|| problems.join("; "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, subnet: &str, ip: &str, mac: Option<&str>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            underlay_ip: ip.parse().unwrap(),
            vtep_mac: mac.map(str::to_owned),
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_is_on_the_segment_when_the_underlay_subnet_holds_its_address() {
        let underlay = net("172.30.0.11/24");
        for (peer, on) in [
            ("172.30.0.12", true),
            ("172.30.0.254", true),
            ("172.30.0.0", true),
            ("172.31.0.13", false),
            ("172.30.1.12", false),
            ("10.0.0.1", false),
        ] {
            assert_eq!(on_segment(underlay, ip(peer)), on, "{peer}");
        }
        // The prefix length decides, not the class of the address.
        assert!(on_segment(net("172.30.0.11/16"), ip("172.30.1.12")));
        assert!(!on_segment(net("172.30.0.11/32"), ip("172.30.0.12")));
    }

    fn three_nodes(node3_mac: Option<&str>) -> Vec<NodeRecord> {
        vec![
            record(
                "node1",
                "10.244.0.0/24",
                "172.30.0.11",
                Some("02:00:00:00:00:01"),
            ),
            record(
                "node2",
                "10.244.1.0/24",
                "172.30.0.12",
                Some("02:00:00:00:00:02"),
            ),
            record("node3", "10.244.2.0/24", "172.31.0.13", node3_mac),
        ]
    }

    fn learned() -> Routes {
        Routes::from([
            (net("10.244.1.0/24"), ip("172.30.0.12")),
            (net("10.244.2.0/24"), ip("172.31.0.13")),
        ])
    }

    #[test]
    fn same_segment_peers_keep_plain_routes_and_the_others_go_through_vxlan() {
        let records = three_nodes(Some("02:00:00:00:00:03"));
        let s = split(learned(), net("172.30.0.11/24"), true, &records);
        assert_eq!(
            s.plain,
            Routes::from([(net("10.244.1.0/24"), ip("172.30.0.12"))])
        );
        let mac = [2, 0, 0, 0, 0, 3];
        assert_eq!(
            s.vxlan,
            Programmed {
                routes: [(net("10.244.2.0/24"), ip("10.244.2.1"))].into(),
                neighbours: [(ip("10.244.2.1"), mac)].into(),
                fdb: [(mac, ip("172.31.0.13"))].into(),
            }
        );
        assert!(s.refused.is_empty());
        assert_eq!(s.problem, None);
    }

    #[test]
    fn without_the_fallback_or_a_vtep_a_peer_on_another_subnet_is_refused_and_said() {
        let records = three_nodes(Some("02:00:00:00:00:03"));
        let s = split(learned(), net("172.30.0.11/24"), false, &records);
        assert_eq!(s.plain.len(), 1);
        assert_eq!(s.vxlan, Programmed::default());
        assert_eq!(
            s.refused,
            [
                "10.244.2.0/24 via node node3 (172.31.0.13): not on this node's underlay subnet \
              172.30.0.0/24; bgp.cross_subnet = true reaches it through VXLAN"
            ]
        );
        assert_eq!(
            s.problem.as_deref(),
            Some(
                "not routed, not on this node's underlay subnet 172.30.0.0/24 \
                 (bgp.cross_subnet is off): node node3 (172.31.0.13)"
            )
        );

        let records = three_nodes(None);
        let s = split(learned(), net("172.30.0.11/24"), true, &records);
        assert_eq!(s.vxlan, Programmed::default());
        assert_eq!(
            s.refused,
            [
                "10.244.2.0/24 via node node3 (172.31.0.13): on another subnet, and its node \
              record has no VXLAN device (bgp.cross_subnet is off there)"
            ]
        );
        assert!(s.problem.unwrap().contains("node node3 (172.31.0.13)"));

        // Seen from node3: both others are across the router.
        let records = three_nodes(Some("02:00:00:00:00:03"));
        let from_node3 = Routes::from([
            (net("10.244.0.0/24"), ip("172.30.0.11")),
            (net("10.244.1.0/24"), ip("172.30.0.12")),
        ]);
        let s = split(from_node3, net("172.31.0.13/24"), true, &records);
        assert!(s.plain.is_empty());
        assert_eq!(s.vxlan.routes.len(), 2);
        assert_eq!(s.vxlan.fdb[&[2, 0, 0, 0, 0, 2]], ip("172.30.0.12"));
    }
}

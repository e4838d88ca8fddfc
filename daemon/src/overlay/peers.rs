//! What the overlay should hold, as plain data: the remote nodes (peers) from etcd's node
//! records, what that means for the VXLAN device (routes, neighbours, FDB entries), and the
//! difference from what the kernel holds. No I/O; [`crate::overlay::vxlan`] applies the difference.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use twill_api::cluster::NodeRecord;
use twill_ipam::{ClusterCidr, PodSubnet};

pub type Mac = [u8; 6];

/// A remote node, as the overlay reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Network,
    /// The peer's VTEP address: its node address in its pod subnet.
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    pub underlay_ip: Ipv4Addr,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The peers of node `me`: every other node whose record is complete and whose subnet is
/// one of the cluster's. Records that are not (no VTEP yet, a foreign subnet) are skipped,
/// as is a second record claiming a subnet already seen.
pub fn peers<'a>(
    me: &str,
    cluster: &ClusterCidr,
    records: impl IntoIterator<Item = &'a NodeRecord>,
) -> BTreeMap<String, Peer> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for r in records {
        if r.name == me || cluster.check_subnet(r.subnet).is_err() || !seen.insert(r.subnet) {
            continue;
        }
        let Some(vtep_mac) = r.vtep_mac.as_deref().and_then(parse_mac) else {
            continue;
        };
        out.insert(
            r.name.clone(),
            Peer {
                subnet: r.subnet,
                vtep_ip: PodSubnet(r.subnet).node_address(),
                vtep_mac,
                underlay_ip: r.underlay_ip,
            },
        );
    }
    out
}

/// The entries twill owns on its VXLAN device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// `ip route add SUBNET via VTEP_IP dev twill-vxlan onlink proto twill`
    pub routes: BTreeMap<Ipv4Network, Ipv4Addr>,
    /// `ip neigh add VTEP_IP lladdr VTEP_MAC dev twill-vxlan nud permanent`
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// `bridge fdb add VTEP_MAC dev twill-vxlan dst UNDERLAY_IP self permanent`
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
}

impl Programmed {
    pub fn from_peers<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Self {
        let mut p = Programmed::default();
        for peer in peers {
            p.routes.insert(peer.subnet, peer.vtep_ip);
            p.neighbours.insert(peer.vtep_ip, peer.vtep_mac);
            p.fdb.insert(peer.vtep_mac, peer.underlay_ip);
        }
        p
    }
}

/// What to change so the kernel holds `desired`. Entries that differ are rewritten in
/// place (replace), so traffic to a peer is never without a route during the change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub set_routes: Vec<(Ipv4Network, Ipv4Addr)>,
    pub del_routes: Vec<(Ipv4Network, Ipv4Addr)>,
    pub set_neighbours: Vec<(Ipv4Addr, Mac)>,
    pub del_neighbours: Vec<(Ipv4Addr, Mac)>,
    pub set_fdb: Vec<(Mac, Ipv4Addr)>,
    pub del_fdb: Vec<(Mac, Ipv4Addr)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    pub fn count(&self) -> usize {
        self.set_routes.len()
            + self.del_routes.len()
            + self.set_neighbours.len()
            + self.del_neighbours.len()
            + self.set_fdb.len()
            + self.del_fdb.len()
    }
}

/// Entries to write and entries to remove.
type SetAndDelete<K, V> = (Vec<(K, V)>, Vec<(K, V)>);

fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    desired: &BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
) -> SetAndDelete<K, V> {
    let set = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let del = current
        .iter()
        .filter(|(k, _)| !desired.contains_key(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    (set, del)
}

pub fn diff(desired: &Programmed, current: &Programmed) -> Changes {
    let (set_routes, del_routes) = diff_map(&desired.routes, &current.routes);
    let (set_neighbours, del_neighbours) = diff_map(&desired.neighbours, &current.neighbours);
    let (set_fdb, del_fdb) = diff_map(&desired.fdb, &current.fdb);
    Changes {
        set_routes,
        del_routes,
        set_neighbours,
        del_neighbours,
        set_fdb,
        del_fdb,
    }
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

    fn cluster() -> ClusterCidr {
        ClusterCidr::new("10.244.0.0/16".parse().unwrap(), 24).unwrap()
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(
            parse_mac("0a:1b:2c:3d:4e:5f"),
            Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])
        );
        assert_eq!(
            format_mac(&[0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
            "0a:1b:2c:3d:4e:5f"
        );
        for bad in ["", "0a:1b", "0a:1b:2c:3d:4e:5f:60", "zz:1b:2c:3d:4e:5f"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn peers_are_the_other_complete_nodes_of_the_cluster() {
        let records = [
            record(
                "me",
                "10.244.0.0/24",
                "172.30.0.11",
                Some("02:00:00:00:00:01"),
            ),
            record(
                "b",
                "10.244.1.0/24",
                "172.30.0.12",
                Some("02:00:00:00:00:02"),
            ),
            record("no-vtep-yet", "10.244.2.0/24", "172.30.0.13", None),
            record(
                "foreign",
                "10.99.0.0/24",
                "172.30.0.14",
                Some("02:00:00:00:00:04"),
            ),
            record(
                "duplicate",
                "10.244.1.0/24",
                "172.30.0.15",
                Some("02:00:00:00:00:05"),
            ),
        ];
        let p = peers("me", &cluster(), &records);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["b"]);
        let b = &p["b"];
        assert_eq!(b.vtep_ip, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(b.underlay_ip, Ipv4Addr::new(172, 30, 0, 12));
    }

    #[test]
    fn diff_adds_what_is_missing_rewrites_what_changed_and_removes_what_left() {
        let peer = |n: u8, ip: u8| Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            vtep_ip: Ipv4Addr::new(10, 244, n, 1),
            vtep_mac: [2, 0, 0, 0, 0, n],
            underlay_ip: Ipv4Addr::new(172, 30, 0, ip),
        };
        let current = Programmed::from_peers(&[peer(1, 11), peer(2, 12)]);
        // Node 2 moved to another underlay address, node 1 left, node 3 joined.
        let desired = Programmed::from_peers(&[peer(2, 22), peer(3, 13)]);
        let c = diff(&desired, &current);
        assert_eq!(
            c.set_routes,
            [(
                "10.244.3.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 244, 3, 1)
            )]
        );
        assert_eq!(
            c.del_routes,
            [(
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 244, 1, 1)
            )]
        );
        assert_eq!(
            c.set_fdb,
            [
                ([2, 0, 0, 0, 0, 2], Ipv4Addr::new(172, 30, 0, 22)),
                ([2, 0, 0, 0, 0, 3], Ipv4Addr::new(172, 30, 0, 13))
            ]
        );
        assert_eq!(
            c.del_fdb,
            [([2, 0, 0, 0, 0, 1], Ipv4Addr::new(172, 30, 0, 11))]
        );
        assert_eq!(c.set_neighbours.len(), 1);
        assert_eq!(c.del_neighbours.len(), 1);
        // Applying it converges: nothing left to do.
        assert!(diff(&desired, &desired).is_empty());
    }
}

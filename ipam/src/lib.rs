//! Pod address management as pure functions over plain data.
//!
//! [`ClusterCidr`] carves the cluster's pod CIDR into equal node subnets and picks a free
//! one; [`Allocations`] hands out pod addresses from one node's subnet.
//!
//! Architecture invariant: no I/O, no clocks, no etcd. The daemon stores these values and
//! decides when to call them; everything here is deterministic and unit-tested.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(
        "node subnet size /{node_prefix} does not fit cluster CIDR {cluster}: it must be longer \
         than /{} and at most /{MAX_NODE_PREFIX}", cluster.prefix()
    )]
    NodePrefix {
        cluster: Ipv4Network,
        node_prefix: u8,
    },
    #[error("cluster CIDR {0} is not a network address (host bits set); did you mean {1}?")]
    NotNetwork(Ipv4Network, Ipv4Network),
    #[error("subnet {subnet} is not a /{node_prefix} subnet of cluster CIDR {cluster}")]
    ForeignSubnet {
        subnet: Ipv4Network,
        cluster: Ipv4Network,
        node_prefix: u8,
    },
    #[error("pod subnet {subnet} has no free address ({capacity} in use)")]
    Exhausted { subnet: Ipv4Network, capacity: u32 },
}

/// Smallest node subnet: a /30 leaves one pod address after network, node and broadcast.
pub const MAX_NODE_PREFIX: u8 = 30;

/// The cluster's pod CIDR, divided into node subnets of one size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterCidr {
    network: Ipv4Network,
    node_prefix: u8,
}

impl ClusterCidr {
    pub fn new(network: Ipv4Network, node_prefix: u8) -> Result<Self, IpamError> {
        let canonical =
            Ipv4Network::new(network.network(), network.prefix()).expect("same prefix is valid");
        if canonical != network {
            return Err(IpamError::NotNetwork(network, canonical));
        }
        if node_prefix <= network.prefix() || node_prefix > MAX_NODE_PREFIX {
            return Err(IpamError::NodePrefix {
                cluster: network,
                node_prefix,
            });
        }
        Ok(Self {
            network,
            node_prefix,
        })
    }

    pub fn network(&self) -> Ipv4Network {
        self.network
    }

    pub fn node_prefix(&self) -> u8 {
        self.node_prefix
    }

    /// How many node subnets the cluster CIDR holds.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.node_prefix - self.network.prefix())
    }

    /// The `index`-th node subnet, in address order.
    pub fn subnet(&self, index: u64) -> Option<Ipv4Network> {
        if index >= self.subnet_count() {
            return None;
        }
        let size = 1u64 << (32 - self.node_prefix);
        let base = u64::from(u32::from(self.network.network()));
        let addr = Ipv4Addr::from((base + index * size) as u32);
        Ipv4Network::new(addr, self.node_prefix).ok()
    }

    /// Whether `subnet` is one of this cluster's node subnets.
    pub fn check_subnet(&self, subnet: Ipv4Network) -> Result<(), IpamError> {
        let aligned = subnet.network() == subnet.ip();
        if aligned && subnet.prefix() == self.node_prefix && self.network.contains(subnet.ip()) {
            Ok(())
        } else {
            Err(IpamError::ForeignSubnet {
                subnet,
                cluster: self.network,
                node_prefix: self.node_prefix,
            })
        }
    }

    /// A free node subnet: `preferred` when it is one of ours and not unavailable (a
    /// restarted node gets its old subnet back), otherwise the lowest free one. `None`
    /// when every subnet is taken.
    pub fn pick(
        &self,
        unavailable: &BTreeSet<Ipv4Network>,
        preferred: Option<Ipv4Network>,
    ) -> Option<Ipv4Network> {
        if let Some(p) = preferred
            && self.check_subnet(p).is_ok()
            && !unavailable.contains(&p)
        {
            return Some(p);
        }
        // Each unavailable subnet removes one candidate, so at most |unavailable| + 1
        // candidates are looked at, however large the cluster CIDR.
        (0..self.subnet_count())
            .map_while(|i| self.subnet(i))
            .find(|s| !unavailable.contains(s))
    }
}

/// One node's pod subnet and what it reserves: the network address, the node's own address
/// (the first host address: the node's end of the overlay) and the broadcast address are
/// never handed to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSubnet(pub Ipv4Network);

impl PodSubnet {
    /// The node's own address in its pod subnet.
    pub fn node_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 1)
    }

    /// Addresses a pod may get.
    pub fn capacity(&self) -> u32 {
        self.0.size().saturating_sub(3)
    }

    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(ip)
            && ip != self.0.network()
            && ip != self.0.broadcast()
            && ip != self.node_address()
    }

    /// The `n`-th assignable address (0-based), in address order.
    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 2 + n)
    }
}

/// What a pod attachment is keyed by, as the CNI runtime names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// One pod address in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// Kubernetes namespace and name of the pod, when the runtime said (CNI_ARGS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The pod addresses handed out from one node's subnet.
///
/// Addresses are handed out round-robin after the last one given, as host-local does, so a
/// released address is not reused at once (stale ARP and conntrack entries of the old pod
/// would otherwise hit the new one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredAllocations", into = "StoredAllocations")]
pub struct Allocations {
    pub subnet: PodSubnet,
    /// Index (0-based, among assignable addresses) where the next search starts.
    cursor: u32,
    allocations: BTreeMap<AttachmentKey, Allocation>,
}

/// How [`Allocations`] is stored: a list, since JSON object keys must be strings.
#[derive(Serialize, Deserialize)]
struct StoredAllocations {
    subnet: PodSubnet,
    #[serde(default)]
    cursor: u32,
    allocations: Vec<Allocation>,
}

impl From<StoredAllocations> for Allocations {
    fn from(s: StoredAllocations) -> Self {
        Self {
            subnet: s.subnet,
            cursor: s.cursor,
            allocations: s
                .allocations
                .into_iter()
                .map(|a| (a.key.clone(), a))
                .collect(),
        }
    }
}

impl From<Allocations> for StoredAllocations {
    fn from(a: Allocations) -> Self {
        Self {
            subnet: a.subnet,
            cursor: a.cursor,
            allocations: a.allocations.into_values().collect(),
        }
    }
}

impl Allocations {
    pub fn new(subnet: PodSubnet) -> Self {
        Self {
            subnet,
            cursor: 0,
            allocations: BTreeMap::new(),
        }
    }

    /// The address of `key`: its existing one, or a new one. Asking twice for the same
    /// attachment gives the same address (a retried ADD does not leak one).
    pub fn allocate(
        &mut self,
        key: AttachmentKey,
        pod: Option<String>,
    ) -> Result<Allocation, IpamError> {
        if let Some(existing) = self.allocations.get(&key) {
            return Ok(existing.clone());
        }
        let capacity = self.subnet.capacity();
        let used: BTreeSet<Ipv4Addr> = self.allocations.values().map(|a| a.ip).collect();
        let free = (0..capacity)
            .map(|i| (self.cursor + i) % capacity)
            .find(|&n| !used.contains(&self.subnet.nth(n)))
            .ok_or(IpamError::Exhausted {
                subnet: self.subnet.0,
                capacity,
            })?;
        self.cursor = (free + 1) % capacity;
        let allocation = Allocation {
            ip: self.subnet.nth(free),
            key: key.clone(),
            pod,
        };
        self.allocations.insert(key, allocation.clone());
        Ok(allocation)
    }

    /// Frees the address of `key`. `None` if it had none (releasing twice is fine).
    pub fn release(&mut self, key: &AttachmentKey) -> Option<Allocation> {
        self.allocations.remove(key)
    }

    /// Frees every address whose attachment `keep` rejects, and returns them (CNI GC).
    pub fn retain(&mut self, mut keep: impl FnMut(&AttachmentKey) -> bool) -> Vec<Allocation> {
        let gone: Vec<AttachmentKey> = self
            .allocations
            .keys()
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        gone.iter()
            .filter_map(|k| self.allocations.remove(k))
            .collect()
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// Free addresses left.
    pub fn available(&self) -> u32 {
        self.subnet.capacity() - self.allocations.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn key(id: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.to_owned(),
            ifname: "eth0".to_owned(),
        }
    }

    #[test]
    fn the_default_cluster_cidr_holds_256_node_subnets_in_order() {
        let c = ClusterCidr::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(c.subnet_count(), 256);
        assert_eq!(c.subnet(0), Some(net("10.244.0.0/24")));
        assert_eq!(c.subnet(1), Some(net("10.244.1.0/24")));
        assert_eq!(c.subnet(255), Some(net("10.244.255.0/24")));
        assert_eq!(c.subnet(256), None);
    }

    #[test]
    fn bad_cluster_shapes_are_refused_with_the_reason() {
        let cases = [
            (
                "10.244.0.0/16",
                16,
                "node subnet size /16 does not fit cluster CIDR 10.244.0.0/16",
            ),
            ("10.244.0.0/16", 31, "at most /30"),
            ("10.244.1.0/16", 24, "did you mean 10.244.0.0/16"),
        ];
        for (cidr, prefix, message) in cases {
            let err = ClusterCidr::new(net(cidr), prefix).unwrap_err();
            assert!(err.to_string().contains(message), "{cidr} /{prefix}: {err}");
        }
    }

    #[test]
    fn pick_prefers_the_old_subnet_then_the_lowest_free_one() {
        let c = ClusterCidr::new(net("10.244.0.0/16"), 24).unwrap();
        let taken: BTreeSet<_> = [net("10.244.0.0/24"), net("10.244.1.0/24")].into();
        assert_eq!(c.pick(&taken, None), Some(net("10.244.2.0/24")));
        assert_eq!(
            c.pick(&taken, Some(net("10.244.7.0/24"))),
            Some(net("10.244.7.0/24"))
        );
        // A preferred subnet that is taken, foreign or misaligned is not used.
        for p in [
            "10.244.1.0/24",
            "10.245.0.0/24",
            "10.244.3.0/25",
            "10.244.3.5/24",
        ] {
            assert_eq!(
                c.pick(&taken, Some(net(p))),
                Some(net("10.244.2.0/24")),
                "{p}"
            );
        }
    }

    #[test]
    fn pick_says_none_when_the_cluster_cidr_is_exhausted() {
        let c = ClusterCidr::new(net("10.244.0.0/23"), 24).unwrap();
        let taken: BTreeSet<_> = [net("10.244.0.0/24"), net("10.244.1.0/24")].into();
        assert_eq!(c.pick(&taken, None), None);
    }

    #[test]
    fn network_node_and_broadcast_addresses_are_never_handed_out() {
        let subnet = PodSubnet(net("10.244.3.0/29")); // 8 addresses, 5 for pods
        assert_eq!(subnet.node_address(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(subnet.capacity(), 5);
        let mut a = Allocations::new(subnet);
        let ips: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.allocate(key(&format!("c{i}")), None).unwrap().ip)
            .collect();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 244, 3, h)).collect();
        assert_eq!(ips, expected);
        for ip in ips {
            assert!(subnet.is_assignable(ip));
        }
        for reserved in [0, 1, 7] {
            assert!(!subnet.is_assignable(Ipv4Addr::new(10, 244, 3, reserved)));
        }
        let err = a.allocate(key("one-too-many"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod subnet 10.244.3.0/29 has no free address (5 in use)"
        );
    }

    #[test]
    fn the_same_attachment_gets_the_same_address_and_release_is_idempotent() {
        let mut a = Allocations::new(PodSubnet(net("10.244.3.0/24")));
        let first = a.allocate(key("c1"), Some("default/web".into())).unwrap();
        assert_eq!(a.allocate(key("c1"), None).unwrap(), first);
        assert_eq!(a.len(), 1);
        assert_eq!(a.release(&key("c1")), Some(first));
        assert_eq!(a.release(&key("c1")), None);
        assert!(a.is_empty());
    }

    #[test]
    fn a_released_address_is_not_reused_until_the_others_were_handed_out() {
        let mut a = Allocations::new(PodSubnet(net("10.244.3.0/29")));
        let c1 = a.allocate(key("c1"), None).unwrap().ip;
        a.release(&key("c1"));
        let c2 = a.allocate(key("c2"), None).unwrap().ip;
        assert_ne!(c1, c2);
        // Wraps around once the end of the subnet is reached.
        for i in 3..=5 {
            a.allocate(key(&format!("c{i}")), None).unwrap();
        }
        assert_eq!(a.allocate(key("c6"), None).unwrap().ip, c1);
        assert_eq!(a.available(), 0);
    }

    #[test]
    fn gc_frees_exactly_the_attachments_not_kept() {
        let mut a = Allocations::new(PodSubnet(net("10.244.3.0/24")));
        for id in ["keep1", "drop1", "keep2", "drop2"] {
            a.allocate(key(id), None).unwrap();
        }
        let mut freed: Vec<String> = a
            .retain(|k| k.container_id.starts_with("keep"))
            .into_iter()
            .map(|al| al.key.container_id)
            .collect();
        freed.sort();
        assert_eq!(freed, ["drop1", "drop2"]);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn allocations_survive_a_round_trip_through_their_stored_form() {
        let mut a = Allocations::new(PodSubnet(net("10.244.3.0/24")));
        a.allocate(key("c1"), Some("default/web".into())).unwrap();
        a.allocate(key("c2"), None).unwrap();
        let stored = serde_json::to_string(&a).unwrap();
        let mut back: Allocations = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, a);
        // The cursor is kept too: the next address continues the round.
        assert_eq!(
            back.allocate(key("c3"), None).unwrap().ip,
            a.allocate(key("c3"), None).unwrap().ip
        );
    }
}

//! Layout versions of the pinned maps: which key and value layout each map's entries have,
//! which earlier layouts this build can convert from, and the conversions.
//!
//! A pinned map outlives the daemon that created it, so a newer `twilld` may find maps an
//! older one filled. The kernel only knows a map's type and sizes; two layouts of equal
//! size would be misread silently. So each map's layout has a version, bumped whenever the
//! meaning of its key or value bytes changes (even at equal size), and the version each
//! pinned map was written with is recorded beside the pins, in [`crate::maps::LAYOUT`].
//!
//! Versions start at 1. Maps whose layout changed before the record existed list the
//! layouts they had as earlier versions, so pins of those daemons are recognised by size.

use crate::{
    lb::{Flow, RevNat},
    maps,
};

/// One layout of a map's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: u32,
    /// Bytes, as the kernel reports them (an LPM trie's key includes its prefix length).
    pub key_size: u32,
    pub value_size: u32,
}

/// Old key and value bytes (exactly the old layout's sizes) into the current layout's
/// buffers (zeroed, of the current sizes). Returns false to drop the entry.
pub type Convert = fn(old_key: &[u8], old_value: &[u8], key: &mut [u8], value: &mut [u8]) -> bool;

/// An earlier layout of a map, and how its entries become entries of the current one.
#[derive(Clone, Copy, Debug)]
pub struct Conversion {
    pub from: Layout,
    pub convert: Convert,
}

/// A pinned map's current layout and the earlier ones it can be migrated from.
#[derive(Clone, Copy, Debug)]
pub struct MapLayout {
    pub name: &'static str,
    pub current: Layout,
    pub conversions: &'static [Conversion],
}

impl MapLayout {
    /// The conversion from `version`, if this build has one.
    pub fn conversion_from(&self, version: u32) -> Option<&Conversion> {
        self.conversions.iter().find(|c| c.from.version == version)
    }
}

const fn v1(key_size: usize, value_size: usize) -> Layout {
    Layout {
        version: 1,
        key_size: key_size as u32,
        value_size: value_size as u32,
    }
}

const fn size<T>() -> usize {
    core::mem::size_of::<T>()
}

/// An LPM trie's key as the kernel sizes it: the prefix length, then the data.
const fn trie_key<T>() -> usize {
    4 + size::<T>()
}

/// Conntrack values before NodePort (2026-11-24): backend address and port, pad,
/// frontend address and port, pad (16 bytes). Version 2 reuses the first pad for `flags`
/// and the second for `snat_port`, and appends `snat_ip`; an old flow had none of them.
pub const CONNTRACK_V1: Layout = v1(size::<crate::lb::FlowKey>(), 16);
/// Reverse-NAT values before NodePort: frontend address and port, pad (8 bytes). Version
/// 2 reuses the pad for `flags` and appends the client's address and port.
pub const REVNAT_V1: Layout = v1(size::<crate::lb::FlowKey>(), 8);

/// Copies `old` into the start of `new` (the rest stays zero) and the key unchanged:
/// the conversion of a layout that only gained fields at the end or in former padding.
fn widen(old_key: &[u8], old_value: &[u8], key: &mut [u8], value: &mut [u8]) -> bool {
    if old_key.len() != key.len() || old_value.len() > value.len() {
        return false;
    }
    key.copy_from_slice(old_key);
    value[..old_value.len()].copy_from_slice(old_value);
    true
}

/// Version 1 conntrack: the pads were zero, so the widened value has no flags, no
/// source translation: what the flow was.
fn conntrack_v1(old_key: &[u8], old_value: &[u8], key: &mut [u8], value: &mut [u8]) -> bool {
    if !widen(old_key, old_value, key, value) {
        return false;
    }
    // flags (bytes 6..8) and snat_port (14..16) were pads: clear whatever they held.
    value[6..8].fill(0);
    value[14..16].fill(0);
    true
}

fn revnat_v1(old_key: &[u8], old_value: &[u8], key: &mut [u8], value: &mut [u8]) -> bool {
    if !widen(old_key, old_value, key, value) {
        return false;
    }
    value[6..8].fill(0);
    true
}

/// Every map pinned under a node's pin directory, with its layout. A test in `twill-bpf`
/// checks this table against the maps of the built object.
pub const MAPS: &[MapLayout] = {
    use crate::{flow::*, lb::*, metrics::MetricValue, policy::*};
    const fn map(name: &'static str, key_size: usize, value_size: usize) -> MapLayout {
        MapLayout {
            name,
            current: v1(key_size, value_size),
            conversions: &[],
        }
    }
    &[
        map(maps::METRICS, size::<u32>(), size::<MetricValue>()),
        map(maps::SERVICES, size::<FrontendKey>(), size::<Frontend>()),
        map(maps::BACKENDS, size::<BackendKey>(), size::<Backend>()),
        MapLayout {
            name: maps::CONNTRACK,
            current: Layout {
                version: 2,
                key_size: size::<FlowKey>() as u32,
                value_size: size::<Flow>() as u32,
            },
            conversions: &[Conversion {
                from: CONNTRACK_V1,
                convert: conntrack_v1,
            }],
        },
        MapLayout {
            name: maps::REVNAT,
            current: Layout {
                version: 2,
                key_size: size::<FlowKey>() as u32,
                value_size: size::<RevNat>() as u32,
            },
            conversions: &[Conversion {
                from: REVNAT_V1,
                convert: revnat_v1,
            }],
        },
        map(maps::MEMBERS, size::<MemberKey>(), size::<u32>()),
        map(maps::AFFINITY, size::<AffinityKey>(), size::<Affinity>()),
        map(maps::NODE, size::<u32>(), size::<NodeConfig>()),
        map(maps::SOCK_NAT, size::<SockKey>(), size::<RevNat>()),
        map(
            maps::DNS_LOCAL,
            size::<FrontendKey>(),
            size::<LocalBackend>(),
        ),
        map(maps::LOCAL_PODS, size::<u32>(), size::<LocalPod>()),
        map(maps::POD_NETNS, size::<u64>(), size::<PodSocket>()),
        map(
            maps::POLICY_ENDPOINTS,
            size::<u32>(),
            size::<PolicyEndpoint>(),
        ),
        map(maps::POLICY_PEERS, trie_key::<PeerPrefix>(), size::<u64>()),
        map(maps::POLICY_PORTS, trie_key::<PortPrefix>(), size::<u64>()),
        map(maps::POLICY_RULES, size::<RuleSlotKey>(), size::<u32>()),
        map(
            maps::POLICY_FLOWS,
            size::<PolicyFlowKey>(),
            size::<PolicyFlow>(),
        ),
        map(maps::POLICY_COUNTERS, size::<u32>(), size::<u64>()),
        map(maps::POLICY_STATE, size::<u32>(), size::<u32>()),
        map(maps::FQDN_ALLOWS, size::<FqdnKey>(), size::<FqdnAllow>()),
        map(maps::FQDN_NAMES, size::<u64>(), size::<FqdnName>()),
        // A ring buffer has no keys or values; the kernel reports both as 0.
        map(maps::FLOWS, 0, 0),
        map(maps::FLOWS_CONF, size::<u32>(), size::<u32>()),
        map(maps::FLOWS_LOST, size::<u32>(), size::<u64>()),
        map(maps::FLOWS_SEEN, size::<FlowSeenKey>(), size::<FlowSeen>()),
    ]
};

/// The layout of `name`, if it is one of [`MAPS`].
pub fn layout_of(name: &str) -> Option<&'static MapLayout> {
    MAPS.iter().find(|m| m.name == name)
}

/// The key of [`crate::maps::LAYOUT`]: a map's pin name in 16 bytes, zero-padded (every
/// name in [`MAPS`] fits). The record's own layout (this key, a `u32` version) never
/// changes.
pub fn record_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(16);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

const _: () = assert!(size::<Flow>() == 20 && size::<RevNat>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_conntrack_entry_becomes_a_flow_without_flags_or_translation() {
        // backend 10.244.1.5:8080, pad 0xffff (garbage must not become flags),
        // frontend 10.96.0.10:80, pad.
        let old_value = [
            10, 244, 1, 5, 0x1f, 0x90, 0xff, 0xff, 10, 96, 0, 10, 0, 80, 0xaa, 0xbb,
        ];
        let old_key = [7u8; 16];
        let (mut key, mut value) = ([0u8; 16], [0u8; 20]);
        assert!(conntrack_v1(&old_key, &old_value, &mut key, &mut value));
        assert_eq!(key, old_key);
        assert_eq!(
            value,
            [
                10, 244, 1, 5, 0x1f, 0x90, 0, 0, 10, 96, 0, 10, 0, 80, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn a_version_1_reverse_nat_entry_gains_an_empty_client() {
        let old_value = [10, 96, 0, 10, 0, 80, 0x12, 0x34];
        let (mut key, mut value) = ([0u8; 16], [0u8; 16]);
        assert!(revnat_v1(&[1; 16], &old_value, &mut key, &mut value));
        assert_eq!(value, [10, 96, 0, 10, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_conversion_given_other_sizes_drops_the_entry() {
        let (mut key, mut value) = ([0u8; 16], [0u8; 20]);
        assert!(!conntrack_v1(&[0; 12], &[0; 16], &mut key, &mut value));
        assert!(!conntrack_v1(&[0; 16], &[0; 24], &mut key, &mut value));
    }

    /// Every layout as released. A struct in `lb`, `policy` or `flow` that changes size
    /// fails here: bump the map's version (and add a conversion from the old one if its
    /// entries should survive an upgrade), then update this list. A change in meaning at
    /// the same size needs the same bump; no test can see that one.
    #[test]
    fn layouts_change_only_with_their_version() {
        let released: &[(&str, u32, u32, u32)] = &[
            ("TWILL_METRICS", 1, 4, 16),
            ("TWILL_SVC", 1, 8, 16),
            ("TWILL_BACKENDS", 1, 8, 8),
            ("TWILL_CT", 2, 16, 20),
            ("TWILL_REVNAT", 2, 16, 16),
            ("TWILL_MEMBERS", 1, 12, 4),
            ("TWILL_AFFINITY", 1, 8, 16),
            ("TWILL_NODE", 1, 4, 16),
            ("TWILL_SOCK_NAT", 1, 16, 16),
            ("TWILL_DNS_LOCAL", 1, 8, 16),
            ("TWILL_LOCAL_PODS", 1, 4, 16),
            ("TWILL_POD_NETNS", 1, 8, 8),
            ("TWILL_POL_EP", 1, 4, 32),
            ("TWILL_POL_PEER", 1, 12, 8),
            ("TWILL_POL_PORT", 1, 12, 8),
            ("TWILL_POL_RULE", 1, 12, 4),
            ("TWILL_POL_CT", 1, 16, 8),
            ("TWILL_POL_COUNT", 1, 4, 8),
            ("TWILL_POL_STATE", 1, 4, 4),
            ("TWILL_FQDN", 1, 8, 96),
            ("TWILL_FQDN_NAME", 1, 8, 256),
            ("TWILL_FLOWS", 1, 0, 0),
            ("TWILL_FLOW_CONF", 1, 4, 4),
            ("TWILL_FLOW_LOST", 1, 4, 8),
            ("TWILL_FLOW_SEEN", 1, 16, 16),
        ];
        assert_eq!(MAPS.len(), released.len());
        for (m, (name, version, key, value)) in MAPS.iter().zip(released) {
            assert_eq!(m.name, *name);
            assert_eq!(
                (m.current.version, m.current.key_size, m.current.value_size),
                (*version, *key, *value),
                "{name}: its layout changed; bump its version"
            );
        }
    }

    #[test]
    fn every_map_is_listed_once_and_conversions_come_from_older_versions() {
        for (i, m) in MAPS.iter().enumerate() {
            assert!(m.name.len() <= 16, "{}", m.name);
            assert!(
                MAPS[i + 1..].iter().all(|o| o.name != m.name),
                "{} twice",
                m.name
            );
            for c in m.conversions {
                assert!(c.from.version < m.current.version, "{}", m.name);
            }
        }
        assert_eq!(record_key("TWILL_CT")[..9], *b"TWILL_CT\0");
    }
}

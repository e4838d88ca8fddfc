//! NetworkPolicy maps: which table each local pod uses, the tables (two longest-prefix
//! tries: peers and ports, both to rule bits), policy conntrack, and per-rule counters.
//!
//! A table is content-addressed and never changed in place: a pod whose policies change
//! gets a new table id, written whole before the pod's endpoint entry points at it. A
//! packet therefore sees the old table or the new one, never half of either, and a
//! conntrack entry that remembers the table it was allowed under is re-evaluated when the
//! pod's table id differs (that is how a change revokes established connections).
//!
//! Addresses are in wire order, as in [`crate::lb`]. The tries' keys put the table and
//! direction first (big-endian, so the trie's byte-wise prefix covers them), then the
//! address or the protocol and port.

/// How a pod is treated in one direction ([`PolicyEndpoint::modes`]).
pub const MODE_OPEN: u8 = 0;
/// Only what a rule bit allows passes.
pub const MODE_ENFORCE: u8 = 1;
/// Everything passes; what no rule allows is counted as would-be denied.
pub const MODE_AUDIT: u8 = 2;

/// Index of a direction in [`PolicyEndpoint`]'s arrays and in keys.
pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

/// Capacity of the endpoint map: one entry per pod on the node.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Default capacity of the peer trie (tables x peers); configurable at load time.
pub const DEFAULT_PEER_ENTRIES: u32 = 1_048_576;
/// Default capacity of the port trie; configurable at load time.
pub const DEFAULT_PORT_ENTRIES: u32 = 262_144;
/// Capacity of the bit-to-counter map (tables x bits).
pub const MAX_RULE_SLOTS: u32 = 262_144;
/// Capacity of the policy conntrack (LRU).
pub const MAX_POLICY_FLOWS: u32 = 262_144;
/// Counters: one per (policy, direction, rule) plus one per (pod, direction) for denials.
pub const POLICY_COUNTERS: u32 = 65_536;

/// A local pod's policy: keyed by its address. Every local pod has one (open both ways
/// when no policy selects it); a packet of a local pod without one is dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEndpoint {
    /// The table in [`PeerPrefix`]/[`PortPrefix`]; 0 when both directions are open.
    pub table: u32,
    /// `MODE_*` per direction (`DIR_*`).
    pub modes: [u8; 2],
    /// 1 when an FQDNPolicy selects the pod: its new egress flows to destinations outside
    /// the cluster also need a learned address in [`FqdnKey`]'s map (see `FqdnAllow`).
    pub fqdn: u8,
    pub _pad: u8,
    /// Per direction, the bits whose rule allows every port and protocol.
    pub any_ports: [u64; 2],
    /// Per direction, the counter slot of denied (or, audited, would-be denied) packets.
    pub deny_counter: [u32; 2],
}

/// The data of a peer trie key (the trie's key is this behind a `u32` prefix length that
/// counts the scope word too: 32 + the address's prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerPrefix {
    /// `table << 1 | direction`, big-endian.
    pub scope: u32,
    /// The peer address, wire order.
    pub ip: u32,
}

/// The data of a port trie key: 32 bits of scope, 8 of protocol, 16 of port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPrefix {
    /// `table << 1 | direction`, big-endian.
    pub scope: u32,
    /// Protocol, port (big-endian), and a zero byte.
    pub proto_port: [u8; 4],
}

/// Which counter a table's bit adds to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSlotKey {
    pub table: u32,
    pub direction: u32,
    pub bit: u32,
}

/// A flow as seen from a local pod: both directions of its packets map to the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFlowKey {
    pub pod_ip: u32,
    pub peer_ip: u32,
    /// Ports in wire order; 0 for protocols without ports.
    pub pod_port: u16,
    pub peer_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Who opened a flow, and under which table it was allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFlow {
    pub table: u32,
    /// `DIR_INGRESS`: the peer opened it; `DIR_EGRESS`: the pod did.
    pub origin: u8,
    pub _pad: [u8; 3],
}

/// Capacity of the learned FQDN addresses map (pod, address) written by `twill-dnsd`.
pub const MAX_FQDN_ALLOWS: u32 = 65_536;
/// Capacity of the map of the names behind learned addresses (for `netctl why`).
pub const MAX_FQDN_NAMES: u32 = 16_384;
/// Port ranges one learned address can carry; rules beyond that allow fewer ports (never
/// more), and `twill-dnsd` says so.
pub const MAX_FQDN_PORTS: usize = 8;
/// The longest name kept in [`FqdnName`].
pub const MAX_FQDN_NAME: usize = 253;

/// An address a pod may reach because `twill-dnsd` answered it an allowed name that
/// resolved to it. Written by `twill-dnsd` only, before the answer is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FqdnKey {
    /// The asking pod, wire order.
    pub pod_ip: u32,
    /// The resolved address, wire order.
    pub peer_ip: u32,
}

/// A port range of a learned address: host-order ports, `lo..=hi`, of `protocol`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnPort {
    pub lo: u16,
    pub hi: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Until when, and to which ports, a pod may open flows to a learned address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnAllow {
    /// `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`): new flows are denied from then on.
    pub expires_ns: u64,
    /// When the answer was last given (`CLOCK_MONOTONIC` ns).
    pub learned_ns: u64,
    /// The key of the name in the names map ([`FqdnName`]).
    pub name: u64,
    /// The TTL of the answer, in seconds (before any configured minimum).
    pub ttl: u32,
    /// 1: every port and protocol; else only `ports[..port_count]`.
    pub any_port: u8,
    pub port_count: u8,
    pub _pad: [u8; 2],
    pub ports: [FqdnPort; MAX_FQDN_PORTS],
}

/// A name that addresses were learned for (the asked name, lower-case, no trailing dot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqdnName {
    pub len: u16,
    pub bytes: [u8; MAX_FQDN_NAME],
    pub _pad: [u8; 1],
}

impl Default for FqdnName {
    fn default() -> Self {
        FqdnName {
            len: 0,
            bytes: [0; MAX_FQDN_NAME],
            _pad: [0; 1],
        }
    }
}

impl FqdnAllow {
    /// Whether a flow of `protocol` to host-order `port` is allowed by the ports.
    #[inline(always)]
    pub fn allows_port(&self, protocol: u8, port: u16) -> bool {
        if self.any_port != 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_FQDN_PORTS {
            let p = &self.ports[i];
            if i < self.port_count as usize
                && p.protocol == protocol
                && p.lo <= port
                && port <= p.hi
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The scope word of the keys: table and direction, big-endian.
pub const fn scope(table: u32, direction: u32) -> u32 {
    ((table << 1) | (direction & 1)).to_be()
}

/// A peer trie key, as (prefix length, data): `ip` in host order with `len` bits of
/// prefix.
pub const fn peer_key(table: u32, direction: u32, ip: u32, len: u8) -> (u32, PeerPrefix) {
    (
        32 + len as u32,
        PeerPrefix {
            scope: scope(table, direction),
            ip: ip.to_be(),
        },
    )
}

/// A port trie key, as (prefix length, data): `proto_port` is `protocol << 16 | port`
/// (host order) with `len` bits of prefix over those 24 bits.
pub const fn port_key(table: u32, direction: u32, proto_port: u32, len: u8) -> (u32, PortPrefix) {
    let b = proto_port.to_be_bytes();
    (
        32 + len as u32,
        PortPrefix {
            scope: scope(table, direction),
            proto_port: [b[1], b[2], b[3], 0],
        },
    )
}

/// Prefix length of a full peer lookup (scope and a whole address).
pub const PEER_LOOKUP_LEN: u32 = 64;
/// Prefix length of a full port lookup (scope, protocol and port).
pub const PORT_LOOKUP_LEN: u32 = 56;

/// The largest table id (ids are shifted by one bit in the keys).
pub const MAX_TABLE_ID: u32 = u32::MAX >> 1;

const _: () = assert!(core::mem::size_of::<PolicyEndpoint>() == 32);
const _: () = assert!(core::mem::size_of::<PeerPrefix>() == 8);
const _: () = assert!(core::mem::size_of::<PortPrefix>() == 8);
const _: () = assert!(core::mem::size_of::<RuleSlotKey>() == 12);
const _: () = assert!(core::mem::size_of::<PolicyFlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyFlow>() == 8);
const _: () = assert!(core::mem::size_of::<FqdnKey>() == 8);
const _: () = assert!(core::mem::size_of::<FqdnPort>() == 8);
const _: () = assert!(core::mem::size_of::<FqdnAllow>() == 32 + 8 * MAX_FQDN_PORTS);
const _: () = assert!(core::mem::size_of::<FqdnName>() == 256);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (each): repr(C) structs of integers and byte arrays with explicit padding
    // fields, so no implicit padding bytes, and every bit pattern is a valid value.
    unsafe impl aya::Pod for PolicyEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerPrefix {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortPrefix {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RuleSlotKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyFlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FqdnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FqdnPort {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FqdnAllow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FqdnName {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_put_table_and_direction_first_in_network_order() {
        let (len, k) = peer_key(5, DIR_EGRESS, 0x0a00_0001, 32);
        assert_eq!(len, PEER_LOOKUP_LEN);
        assert_eq!(k.scope.to_ne_bytes(), [0, 0, 0, 11]);
        assert_eq!(k.ip.to_ne_bytes(), [10, 0, 0, 1]);
        let (len, p) = port_key(5, DIR_INGRESS, 6 << 16 | 8080, 24);
        assert_eq!(p.scope.to_ne_bytes(), [0, 0, 0, 10]);
        assert_eq!(p.proto_port, [6, 0x1f, 0x90, 0]);
        assert_eq!(len, PORT_LOOKUP_LEN);
    }

    #[test]
    fn learned_ports_match_protocol_and_range_only() {
        let mut a = FqdnAllow::default();
        assert!(
            !a.allows_port(6, 443),
            "no ports and not any_port allows nothing"
        );
        a.ports[0] = FqdnPort {
            lo: 443,
            hi: 445,
            protocol: 6,
            _pad: [0; 3],
        };
        a.ports[1] = FqdnPort {
            lo: 53,
            hi: 53,
            protocol: 132,
            _pad: [0; 3],
        };
        a.port_count = 2;
        assert!(a.allows_port(6, 443) && a.allows_port(6, 445));
        assert!(!a.allows_port(6, 446) && !a.allows_port(17, 443));
        // SCTP in a rule never opens TCP or UDP.
        assert!(a.allows_port(132, 53) && !a.allows_port(6, 53) && !a.allows_port(17, 53));
        // Entries past port_count do not count.
        a.port_count = 1;
        assert!(!a.allows_port(132, 53));
        a.any_port = 1;
        assert!(a.allows_port(17, 9));
    }
}

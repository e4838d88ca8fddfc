//! Service load balancing: frontends (a Service's VIP and port), their backends, and the
//! connection tracking that pins each flow to its backend and translates replies back.
//!
//! Addresses and ports are kept as they are on the wire (network byte order, read as
//! native integers), so programs compare and copy them without conversion. Userspace
//! builds them with [`wire_ip`] and [`wire_port`].
//!
//! Every struct is `repr(C)` with explicit padding: keys are hashed byte for byte, so
//! padding must be zero, and layouts are asserted below.

/// Frontend scopes: who may reach it.
pub const SCOPE_CLUSTER_IP: u8 = 0;
/// A NodePort: reached on the node's underlay address (the key's `ip` is 0) from outside.
pub const SCOPE_NODE_PORT: u8 = 1;
/// An `externalTrafficPolicy: Local` NodePort as the node's own pods and host processes
/// reach it at the node's address (the key's `ip` is 0): every ready backend, as kube-proxy
/// sends traffic from inside the node. Only Local NodePorts have one; for the others the
/// [`SCOPE_NODE_PORT`] entry serves both.
pub const SCOPE_NODE_PORT_INTERNAL: u8 = 2;

/// The NodePort range Kubernetes allocates from; only these ports are looked up on the
/// underlay, so other traffic to the node (VXLAN, etcd, ssh) pays a comparison, no lookup.
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

/// Whether `port` (wire order) is in the NodePort range.
#[inline(always)]
pub fn is_node_port(port: u16) -> bool {
    (NODE_PORT_MIN..=NODE_PORT_MAX).contains(&u16::from_be(port))
}

/// Source ports for NodePort flows translated to the node's VTEP address (above Linux's
/// default ephemeral range, so they do not collide with the node's own connections).
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_COUNT: u16 = 4536;

/// A Service frontend: VIP, port, protocol (IPPROTO_TCP / IPPROTO_UDP) and scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub ip: u32,
    pub port: u16,
    pub protocol: u8,
    pub scope: u8,
}

impl FrontendKey {
    /// The NodePort frontend of `port` (wire order): reached at a node address, so its
    /// key has no address.
    #[inline(always)]
    pub const fn node_port(port: u16, protocol: u8) -> FrontendKey {
        FrontendKey {
            ip: 0,
            port,
            protocol,
            scope: SCOPE_NODE_PORT,
        }
    }
}

/// What a frontend balances to: backends `0..backend_count` of `service_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    pub service_id: u32,
    pub backend_count: u32,
    /// `FRONTEND_*` flags.
    pub flags: u32,
    /// Seconds a client stays on its backend with session affinity.
    pub affinity_timeout: u32,
}

/// [`Frontend::flags`]: `sessionAffinity: ClientIP`. A client's new flows go to the backend
/// its last new flow went to, while that was less than `affinity_timeout` seconds ago and
/// the backend is still one of the frontend's.
pub const FRONTEND_AFFINITY: u32 = 1;
/// [`Frontend::flags`]: `externalTrafficPolicy: Local` on a NodePort: only this node's
/// backends, and the client's address is kept (no source translation).
pub const FRONTEND_LOCAL: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A backend as a member of its service: the programs check that a remembered backend
/// (session affinity) is still in the set before reusing it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberKey {
    pub service_id: u32,
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Session affinity: which client a remembered backend belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client_ip: u32,
}

/// The backend a client's last new flow went to, and when (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub backend_ip: u32,
    pub backend_port: u16,
    pub _pad: u16,
    pub last_used_ns: u64,
}

/// A node-local server that takes a frontend's new flows instead of its backends while
/// `alive_until_ns` (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`) is in the future; the
/// server renews it while it serves. Keyed by the frontend's [`FrontendKey`]. Used for the
/// cluster DNS Service: queries go to the node's `twill-dnsd`, and to the Service's own
/// backends once the entry is gone or stale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalBackend {
    /// Wire order.
    pub ip: u32,
    /// Wire order.
    pub port: u16,
    pub _pad: u16,
    pub alive_until_ns: u64,
}

/// Capacity of the node-local backend map (frontends with a node-local server).
pub const MAX_LOCAL_BACKENDS: u32 = 16;

/// A host socket's translated UDP destination: the socket (its cookie) and the backend it
/// sends to. `recvmsg4` finds the frontend to show as the reply's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// The pod a socket belongs to, found by its network namespace's cookie
/// (`bpf_get_netns_cookie`, never reused while the machine runs): the socket programs key
/// `ClientIP` affinity on the pod's address, as the per-packet path does. A namespace not
/// in the map is the node's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodSocket {
    pub ip: u32,
    pub _pad: u32,
}

/// A pod on this node, by address: where the overlay program delivers its packets
/// straight into it (`bpf_redirect_peer` to the host end `ifindex`), with the Ethernet
/// addresses a forwarding node would have written (zeros: left as they are).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPod {
    pub ifindex: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}

/// Capacity of the pod maps (pods on one node).
pub const MAX_PODS: u32 = 65536;

/// A flow as one side sent it: source, destination, protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Conntrack entry for a client's flow to a frontend: where it goes, and for NodePort
/// flows translated to the node's own address, the source they leave with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_ip: u32,
    pub backend_port: u16,
    /// `FLOW_*` flags.
    pub flags: u16,
    pub frontend_ip: u32,
    pub frontend_port: u16,
    pub snat_port: u16,
    pub snat_ip: u32,
}

/// [`Flow::flags`] and [`RevNat::flags`]: a NodePort flow; its packets are sent on by the
/// program (a FIB lookup and a redirect), not handed to the node's stack.
pub const FLOW_NODE_PORT: u16 = 1;
/// The flow's source was translated to `snat_ip:snat_port` (replies go back to the client).
pub const FLOW_SNAT: u16 = 2;
/// A pod reaching itself through a Service (hairpin): the source becomes the frontend's
/// address, so the pod does not receive a packet from its own address, and the program
/// sends the packets back out of the interface they came in on.
pub const FLOW_HAIRPIN: u16 = 4;

/// Reverse translation for replies (keyed by the backend's side of the flow): the
/// frontend the client spoke to and, for source-translated flows, the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    pub frontend_ip: u32,
    pub frontend_port: u16,
    pub flags: u16,
    pub client_ip: u32,
    pub client_port: u16,
    pub _pad: u16,
}

/// What the programs must know about their node, written by `twilld` (one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's underlay address: NodePorts are served on it.
    pub node_ip: u32,
    /// The source of NodePort flows translated for other nodes' backends: the node's VTEP
    /// address (its pod subnet's node address) over VXLAN, its underlay address (`node_ip`)
    /// in BGP-routed mode; 0 until the subnet is leased.
    pub vtep_ip: u32,
    /// The cluster CIDR (wire order): replies to it are not NodePort replies.
    pub cluster_net: u32,
    pub cluster_mask: u32,
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Capacity of the frontend map.
pub const MAX_FRONTENDS: u32 = 65536;
/// Capacity of the backend map (10,000 Services x 10 endpoints and room to spare).
pub const MAX_BACKENDS: u32 = 262_144;
/// Capacity of the conntrack and reverse-NAT maps (LRU: the oldest flows go first).
pub const MAX_FLOWS: u32 = 262_144;

/// An address as the programs hold it.
pub const fn wire_ip(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// A port as the programs hold it.
pub const fn wire_port(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The backend slot for a new flow: a hash of the client's side, so connections spread
/// over the backends and the choice can be checked in tests. Conntrack pins it afterwards.
#[inline(always)]
pub fn pick_slot(flow: &FlowKey, backend_count: u32) -> Option<u32> {
    let mut h = flow.src_ip ^ (u32::from(flow.src_port) << 16) ^ u32::from(flow.dst_port);
    h ^= flow.dst_ip;
    h = h.wrapping_mul(0x9E37_79B1);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85EB_CA77);
    h ^= h >> 13;
    h.checked_rem(backend_count)
}

const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);
const _: () = assert!(core::mem::size_of::<Frontend>() == 16);
const _: () = assert!(core::mem::size_of::<BackendKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<Flow>() == 20);
const _: () = assert!(core::mem::size_of::<RevNat>() == 16);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 16);
const _: () = assert!(core::mem::size_of::<MemberKey>() == 12);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<Affinity>() == 16);
const _: () = assert!(core::mem::size_of::<SockKey>() == 16);
const _: () = assert!(core::mem::size_of::<LocalBackend>() == 16);
const _: () = assert!(core::mem::size_of::<PodSocket>() == 8);
const _: () = assert!(core::mem::size_of::<LocalPod>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (each): repr(C) structs of integers and byte arrays with explicit padding
    // fields, so no implicit padding bytes, and every bit pattern is a valid value.
    unsafe impl aya::Pod for FrontendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Frontend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MemberKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Affinity {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalBackend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NodeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalPod {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_are_network_byte_order() {
        assert_eq!(wire_ip([10, 96, 0, 1]).to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(wire_port(80).to_ne_bytes(), [0, 80]);
    }

    #[test]
    fn slots_stay_in_range_spread_and_never_divide_by_zero() {
        let mut seen = [0u32; 3];
        for port in 30000..33000u16 {
            let flow = FlowKey {
                src_ip: wire_ip([10, 244, 0, 2]),
                dst_ip: wire_ip([10, 96, 0, 10]),
                src_port: wire_port(port),
                dst_port: wire_port(80),
                protocol: IPPROTO_TCP,
                _pad: [0; 3],
            };
            seen[pick_slot(&flow, 3).unwrap() as usize] += 1;
            assert_eq!(pick_slot(&flow, 0), None);
        }
        for n in seen {
            assert!((800..=1200).contains(&n), "{seen:?}");
        }
    }
}

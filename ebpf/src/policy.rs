//! NetworkPolicy verdicts (see `twill_abi::policy` for the maps and `twill-policy` for the
//! compiler that fills them).
//!
//! Egress is checked where a pod's packet enters the node (after Service translation, so
//! rules see the backend pod, never the ClusterIP); ingress where a packet enters a pod
//! (before a backend's reply is translated back to the frontend, for the same reason).
//! Each check first finds the pod's endpoint entry (none: dropped, never passed
//! unfiltered), then its flow in the policy conntrack: a flow allowed under the pod's
//! current table passes at the cost of that one lookup, in either direction. A new flow,
//! or one allowed under an older table (a policy or label changed), is evaluated: the
//! peer trie and the port trie each give rule bits, and the flow passes if a bit is set
//! in both (or in the peer's and the table's any-port bits).
//!
//! Always allowed, as the API says: a pod to and from its own node, and a pod to itself.

use aya_ebpf::programs::TcContext;
use twill_abi::{
    flow::{
        PolicyVerdict, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED, VERDICT_EXEMPT,
        VERDICT_FQDN_DENIED, VERDICT_KNOWN, VERDICT_OPEN,
    },
    lb::{IPPROTO_TCP, IPPROTO_UDP},
    metrics::{Direction, Reason},
    policy::{
        DIR_EGRESS, DIR_INGRESS, FqdnKey, MODE_AUDIT, MODE_OPEN, PEER_LOOKUP_LEN, PORT_LOOKUP_LEN,
        PeerPrefix, PolicyEndpoint, PolicyFlow, PolicyFlowKey, PortPrefix, RuleSlotKey, scope,
    },
};

use crate::{
    flow::Event,
    maps::{
        TWILL_FQDN, TWILL_POL_COUNT, TWILL_POL_CT, TWILL_POL_EP, TWILL_POL_PEER, TWILL_POL_PORT,
        TWILL_POL_RULE, in_service_cidr, lookup, node_config,
    },
    metrics::count,
    parse::L4,
};

const IPPROTO_SCTP: u8 = 132;
/// The pods' link-local gateway (169.254.1.1, wire order): the node as pods see it.
const GATEWAY: u32 = u32::from_be_bytes([169, 254, 1, 1]).to_be();

/// What policy reads of a packet: addresses and ports in wire order (ports 0 for
/// protocols without them and for later fragments).
#[derive(Clone, Copy)]
pub(crate) struct Packet {
    pub(crate) src: u32,
    pub(crate) dst: u32,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) protocol: u8,
    /// A TCP segment opening a connection (SYN without ACK): always a new flow.
    pub(crate) opens: bool,
}

const TCP_FLAGS_OFF: usize = 13;
const IPPROTO_ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

impl Packet {
    /// The packet of an already parsed TCP or UDP header.
    #[inline(always)]
    pub(crate) fn of(ctx: &TcContext, l4: &L4) -> Packet {
        Packet {
            src: l4.flow.src_ip,
            dst: l4.flow.dst_ip,
            src_port: l4.flow.src_port,
            dst_port: l4.flow.dst_port,
            protocol: l4.flow.protocol,
            opens: l4.opens_tcp(ctx),
        }
    }

    /// The packet of an already parsed TCP or UDP header, without reading its flags
    /// (`opens` false): for the flow record.
    #[inline(always)]
    pub(crate) fn bare(l4: &L4) -> Packet {
        Packet {
            src: l4.flow.src_ip,
            dst: l4.flow.dst_ip,
            src_port: l4.flow.src_port,
            dst_port: l4.flow.dst_port,
            protocol: l4.flow.protocol,
            opens: false,
        }
    }

    /// Reads the packet's addresses, protocol and ports. `None` for what is not IPv4 or
    /// is too short to hold its IPv4 header (the parser has already judged those).
    #[inline(always)]
    pub(crate) fn read(ctx: &TcContext) -> Option<Packet> {
        use crate::parse::{ETH_HDR_LEN, IP_DST_OFF, IP_FRAG_OFF, IP_PROTO_OFF, IP_SRC_OFF};
        let version_ihl = ctx.load::<u8>(ETH_HDR_LEN).ok()?;
        if version_ihl >> 4 != 4 {
            return None;
        }
        let protocol = ctx.load::<u8>(IP_PROTO_OFF).ok()?;
        let src = ctx.load::<u32>(IP_SRC_OFF).ok()?;
        let dst = ctx.load::<u32>(IP_DST_OFF).ok()?;
        let frag = u16::from_be(ctx.load::<u16>(IP_FRAG_OFF).ok()?);
        let mut p = Packet {
            src,
            dst,
            src_port: 0,
            dst_port: 0,
            protocol,
            opens: false,
        };
        let offset = ETH_HDR_LEN + usize::from(version_ihl & 0x0f) * 4;
        if frag & 0x1fff == 0
            && matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
            && let Ok(ports) = ctx.load::<[u16; 2]>(offset)
        {
            p.src_port = ports[0];
            p.dst_port = ports[1];
            if protocol == IPPROTO_TCP {
                p.opens = ctx
                    .load::<u8>(offset + TCP_FLAGS_OFF)
                    .is_ok_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN);
            }
        } else if frag & 0x1fff == 0
            && protocol == IPPROTO_ICMP
            && let Ok(header) = ctx.load::<[u8; 8]>(offset)
            && matches!(header[0], ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY)
        {
            // An echo is a flow of its own, named by its identifier (both ways, so the
            // request and its reply share the key); a request always opens one, as a SYN
            // does. Without the identifier every echo between two pods would be one flow,
            // and its opener's direction would decide later pings the other way.
            let id = u16::from_ne_bytes([header[4], header[5]]);
            p.src_port = id;
            p.dst_port = id;
            p.opens = header[0] == ICMP_ECHO_REQUEST;
        }
        Some(p)
    }
}

/// A packet leaving a local pod (its source). `Forwarded` when it may go on, else the
/// drop reason; `direction` is where the caller counts.
#[inline(always)]
pub(crate) fn egress(p: &Packet, direction: Direction, ev: &mut Event) -> Reason {
    let key = PolicyFlowKey {
        pod_ip: p.src,
        peer_ip: p.dst,
        pod_port: p.src_port,
        peer_port: p.dst_port,
        protocol: p.protocol,
        _pad: [0; 3],
    };
    check(
        &key,
        DIR_EGRESS,
        p.opens,
        direction,
        &mut ev.egress,
        &mut ev.new_flow,
    )
}

/// A packet entering a local pod (its destination).
#[inline(always)]
pub(crate) fn ingress(p: &Packet, direction: Direction, ev: &mut Event) -> Reason {
    let key = PolicyFlowKey {
        pod_ip: p.dst,
        peer_ip: p.src,
        pod_port: p.dst_port,
        peer_port: p.src_port,
        protocol: p.protocol,
        _pad: [0; 3],
    };
    check(
        &key,
        DIR_INGRESS,
        p.opens,
        direction,
        &mut ev.ingress,
        &mut ev.new_flow,
    )
}

/// `dir` is the way this packet travels relative to the pod. The verdict goes to `v` (for
/// the flow record), and `new` is set when the packet starts a flow.
#[inline(always)]
fn check(
    key: &PolicyFlowKey,
    dir: u32,
    opens: bool,
    direction: Direction,
    v: &mut PolicyVerdict,
    new: &mut bool,
) -> Reason {
    let Some(ep) = lookup!(TWILL_POL_EP, &key.pod_ip) else {
        v.verdict = VERDICT_DENIED;
        return Reason::DropPolicyNoEndpoint;
    };
    v.table = ep.table;
    let mode = if dir == DIR_INGRESS {
        ep.modes[0]
    } else {
        ep.modes[1]
    };
    // An FQDNPolicy selects the pod, and this packet goes outside the cluster: a flow
    // not known yet also needs an address learned from an allowed name.
    let fqdn = dir == DIR_EGRESS && ep.fqdn != 0 && outside_cluster(key.peer_ip);
    if mode == MODE_OPEN && fqdn {
        v.verdict = VERDICT_OPEN;
        if opens || lookup!(TWILL_POL_CT, key).is_none() {
            *new = true;
            if !fqdn_allows(key) {
                v.verdict = VERDICT_FQDN_DENIED;
                bump(ep.deny_counter[1]);
                return Reason::DropPolicyFqdn;
            }
            let flow = PolicyFlow {
                table: ep.table,
                origin: dir as u8,
                _pad: [0; 3],
            };
            let _ = TWILL_POL_CT.insert(key, flow, 0);
        }
        return Reason::Forwarded;
    }
    if mode == MODE_OPEN {
        v.verdict = VERDICT_OPEN;
        // Nothing to decide, but the flow is remembered with who opened it, so that a
        // policy isolating the pod later still lets this flow's replies through.
        // A lookup first for what is not a SYN: an LRU insert takes a free element (maybe
        // evicting one) even when the key is there, so it is made only for a new flow,
        // and the first packet seen decides the origin.
        if opens || (key.protocol != IPPROTO_TCP && lookup!(TWILL_POL_CT, key).is_none()) {
            *new = true;
            let flow = PolicyFlow {
                table: ep.table,
                origin: dir as u8,
                _pad: [0; 3],
            };
            let _ = TWILL_POL_CT.insert(key, flow, 0);
        }
        return Reason::Forwarded;
    }
    // The flow as known: allowed under the current table, whichever way this packet goes.
    let known = if opens {
        None
    } else {
        lookup!(TWILL_POL_CT, key)
    };
    let origin = match known {
        Some(flow) if flow.table == ep.table => {
            v.verdict = VERDICT_KNOWN;
            return Reason::Forwarded;
        }
        // Allowed under an older table: decided again, in the direction it was opened.
        // (Its FQDN check is not made again: a learned address holds for as long as a
        // connection to it is open.)
        Some(flow) => u32::from(flow.origin),
        None if fqdn && !fqdn_allows(key) => {
            *new = true;
            v.verdict = VERDICT_FQDN_DENIED;
            bump(ep.deny_counter[1]);
            return Reason::DropPolicyFqdn;
        }
        None => {
            *new = true;
            dir
        }
    };
    // The destination port of the flow's opening packet.
    let port = if origin == DIR_INGRESS {
        key.pod_port
    } else {
        key.peer_port
    };
    decide(&ep, key, origin, port, direction, v);
    if v.verdict == VERDICT_DENIED {
        return Reason::DropPolicyDenied;
    }
    let flow = PolicyFlow {
        table: ep.table,
        origin: origin as u8,
        _pad: [0; 3],
    };
    // A flow that cannot be remembered is decided again on its next packet.
    let _ = TWILL_POL_CT.insert(key, flow, 0);
    Reason::Forwarded
}

/// Whether the pod's table allows a flow opened in direction `origin` with the peer, to
/// `port` (the opening packet's destination port), as a `VERDICT_*` in `v`. Counts it.
#[inline(always)]
fn decide(
    ep: &PolicyEndpoint,
    key: &PolicyFlowKey,
    origin: u32,
    port: u16,
    direction: Direction,
    v: &mut PolicyVerdict,
) {
    let (mode, any_ports, deny_slot) = if origin == DIR_INGRESS {
        (ep.modes[0], ep.any_ports[0], ep.deny_counter[0])
    } else {
        (ep.modes[1], ep.any_ports[1], ep.deny_counter[1])
    };
    if mode == MODE_OPEN {
        v.verdict = VERDICT_OPEN;
        return;
    }
    if key.peer_ip == key.pod_ip || from_own_node(key.peer_ip) {
        v.verdict = VERDICT_EXEMPT;
        return;
    }
    let scope = scope(ep.table, origin);
    let peer = aya_ebpf::maps::lpm_trie::Key::new(
        PEER_LOOKUP_LEN,
        PeerPrefix {
            scope,
            ip: key.peer_ip,
        },
    );
    let peer_bits = match TWILL_POL_PEER.get(&peer) {
        Some(bits) => *bits,
        None => 0,
    };
    let mut bits = peer_bits & any_ports;
    if peer_bits != 0 && matches!(key.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        let p = port.to_ne_bytes();
        let ports = aya_ebpf::maps::lpm_trie::Key::new(
            PORT_LOOKUP_LEN,
            PortPrefix {
                scope,
                proto_port: [key.protocol, p[0], p[1], 0],
            },
        );
        if let Some(port_bits) = TWILL_POL_PORT.get(&ports) {
            bits |= peer_bits & *port_bits;
        }
    }
    if bits != 0 {
        let slot = RuleSlotKey {
            table: ep.table,
            direction: origin,
            bit: bits.trailing_zeros(),
        };
        if let Some(counter) = lookup!(TWILL_POL_RULE, &slot) {
            bump(counter);
        }
        v.verdict = VERDICT_ALLOWED;
        v.bit = bits.trailing_zeros() as u8;
        return;
    }
    bump(deny_slot);
    if mode == MODE_AUDIT {
        count(direction, Reason::PolicyAuditDenied, 0);
        v.verdict = VERDICT_AUDIT;
        return;
    }
    v.verdict = VERDICT_DENIED;
}

/// Whether a new egress flow of a pod is to an address learned for it, unexpired, at a
/// port the allowing rule names.
#[inline(always)]
fn fqdn_allows(key: &PolicyFlowKey) -> bool {
    let learned = FqdnKey {
        pod_ip: key.pod_ip,
        peer_ip: key.peer_ip,
    };
    let Some(allow) = lookup!(TWILL_FQDN, &learned) else {
        return false;
    };
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if now >= allow.expires_ns {
        return false;
    }
    allow.allows_port(key.protocol, u16::from_be(key.peer_port))
}

/// Outside the cluster: not a pod address (the cluster CIDR), not a Service address, not
/// this node. Without the node's configuration every address is outside (fails closed).
#[inline(always)]
fn outside_cluster(ip: u32) -> bool {
    if from_own_node(ip) || in_service_cidr(ip) {
        return false;
    }
    match node_config() {
        Some(node) => node.cluster_mask == 0 || ip & node.cluster_mask != node.cluster_net,
        None => true,
    }
}

/// The node's own addresses: its underlay address, its VTEP address, the pods' gateway.
#[inline(always)]
fn from_own_node(ip: u32) -> bool {
    if ip == GATEWAY {
        return true;
    }
    match node_config() {
        Some(node) => ip == node.node_ip || (node.vtep_ip != 0 && ip == node.vtep_ip),
        None => false,
    }
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(counter) = TWILL_POL_COUNT.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array: this
        // CPU's value for the slot, valid for the program's run; BPF programs run with
        // migration disabled, so no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

//! Flow records: what the tc programs tell userspace about connections and drops, through
//! the ring buffer `TWILL_FLOWS`.
//!
//! By default a record is written per new connection (the first packet of a flow the
//! policy conntrack had not seen: a TCP SYN, a new UDP or ICMP echo flow), with its
//! policy verdicts and its Service translation, and per dropped or refused packet, at
//! most one a second per flow and reason (the others counted in the next one's
//! `repeats`). In per-packet mode every packet gets one. A record the ring has no room for
//! is counted in `TWILL_FLOW_LOST`, never silently gone.
//!
//! Addresses and ports are in wire order, as elsewhere in this crate.

/// Off: no records (the programs skip every step of this).
pub const FLOW_MODE_OFF: u32 = 0;
/// New connections, drops and refusals (the default).
pub const FLOW_MODE_CONNECTIONS: u32 = 1;
/// Every packet (debugging: expensive).
pub const FLOW_MODE_PACKETS: u32 = 2;

/// [`FlowRecord::kind`]: the first packet of a new flow.
pub const KIND_NEW: u8 = 1;
/// A dropped packet (`reason` says why).
pub const KIND_DROP: u8 = 2;
/// A packet to a Service frontend without backends: handed to the node, which refuses it.
pub const KIND_REFUSED: u8 = 3;
/// Any other packet (per-packet mode only).
pub const KIND_PACKET: u8 = 4;

/// [`PolicyVerdict::verdict`]: the direction was not checked on this packet.
pub const VERDICT_NONE: u8 = 0;
/// No policy isolates the pod in this direction.
pub const VERDICT_OPEN: u8 = 1;
/// A rule allowed it (`bit` names the rule in the pod's table).
pub const VERDICT_ALLOWED: u8 = 2;
/// Isolated, and no rule allows it: dropped.
pub const VERDICT_DENIED: u8 = 3;
/// Isolated by audit policies only, and no rule allows it: passed, would be denied.
pub const VERDICT_AUDIT: u8 = 4;
/// Always allowed: to or from the pod's own node, or the pod itself.
pub const VERDICT_EXEMPT: u8 = 5;
/// A flow the policy conntrack knew, allowed under the pod's current table.
pub const VERDICT_KNOWN: u8 = 6;
/// FQDNPolicy: outside the cluster to an address no allowed name resolved to: dropped.
pub const VERDICT_FQDN_DENIED: u8 = 7;

/// [`FlowRecord::reply`]: not known whether the packet answers another.
pub const REPLY_UNKNOWN: u8 = 0;
/// It opens (a TCP SYN, an ICMP echo request, the first packet of a new flow).
pub const REPLY_NO: u8 = 1;
/// It answers (a TCP SYN-ACK, an ICMP echo reply).
pub const REPLY_YES: u8 = 2;

/// One direction's policy verdict on the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyVerdict {
    /// The pod's table id (`PolicyEndpoint::table`); 0 when none applied.
    pub table: u32,
    pub verdict: u8,
    /// The rule bit that allowed it (lowest matching), for [`VERDICT_ALLOWED`].
    pub bit: u8,
    pub _pad: [u8; 2],
}

/// A flow record, 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// `CLOCK_MONOTONIC` ns (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    /// The packet as it arrived (before any translation).
    pub src_ip: u32,
    pub dst_ip: u32,
    /// Where a Service translation sent it (the backend); 0 when not translated.
    pub xlate_ip: u32,
    /// The interface the program runs on.
    pub ifindex: u32,
    /// The packet's length in bytes.
    pub len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub xlate_port: u16,
    /// Records of this flow and reason left out since the last one (drops, refusals).
    pub repeats: u16,
    pub protocol: u8,
    /// `metrics::Direction` code: which program saw it.
    pub direction: u8,
    /// `metrics::Reason` code: what the program did with it.
    pub reason: u8,
    /// `KIND_*`.
    pub kind: u8,
    /// `REPLY_*`.
    pub reply: u8,
    pub _pad: [u8; 3],
    /// The source pod's egress verdict.
    pub egress: PolicyVerdict,
    /// The destination pod's ingress verdict.
    pub ingress: PolicyVerdict,
}

/// The flow and reason drops and refusals are rate-limited by (`TWILL_FLOW_SEEN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSeenKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub reason: u8,
    pub _pad: [u8; 2],
}

/// When the last record of a flow and reason went out, and how many were left out since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSeen {
    pub last_ns: u64,
    pub suppressed: u32,
    pub _pad: u32,
}

/// Default size of the ring buffer (bytes; a power of two, at least a page).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Capacity of `TWILL_FLOW_SEEN` (LRU).
pub const MAX_FLOW_SEEN: u32 = 65_536;
/// At most one drop or refusal record per flow and reason in this long.
pub const REPEAT_NS: u64 = 1_000_000_000;

const _: () = assert!(core::mem::size_of::<FlowRecord>() == 64);
const _: () = assert!(core::mem::size_of::<PolicyVerdict>() == 8);
const _: () = assert!(core::mem::size_of::<FlowSeenKey>() == 16);
const _: () = assert!(core::mem::size_of::<FlowSeen>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (each): repr(C) structs of integers with explicit padding fields, so no
    // implicit padding bytes, and every bit pattern is a valid value.
    unsafe impl aya::Pod for FlowRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowSeenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowSeen {}
}

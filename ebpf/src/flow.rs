//! Flow records (see `twill_abi::flow`): what a program did with a packet, written to the
//! ring buffer `TWILL_FLOWS` for the first packet of each new flow and for drops and
//! refusals (at most one a second per flow and reason), or for every packet in
//! per-packet mode. The decision to write one costs an array read and a branch per
//! packet; the record's own work happens only when one is written.

use aya_ebpf::programs::TcContext;
use twill_abi::{
    flow::{
        FLOW_MODE_OFF, FLOW_MODE_PACKETS, FlowRecord, FlowSeen, FlowSeenKey, KIND_DROP, KIND_NEW,
        KIND_PACKET, KIND_REFUSED, PolicyVerdict, REPEAT_NS, REPLY_NO, REPLY_UNKNOWN, REPLY_YES,
    },
    metrics::{Direction, Reason},
};

use crate::{
    maps::{TWILL_FLOW_CONF, TWILL_FLOW_LOST, TWILL_FLOW_SEEN, TWILL_FLOWS, lookup},
    policy::Packet,
};

/// What the checks of one program run found out, for its record.
#[derive(Default)]
pub(crate) struct Event {
    /// The source pod's egress verdict, when it was checked.
    pub(crate) egress: PolicyVerdict,
    /// The destination pod's ingress verdict, when it was checked.
    pub(crate) ingress: PolicyVerdict,
    /// The packet starts a flow (a policy check or a NodePort translation saw it first).
    pub(crate) new_flow: bool,
}

/// The record mode (`FLOW_MODE_*`), which twilld writes to `TWILL_FLOW_CONF` (an array
/// lookup the verifier turns into a pointer sum: no call per packet). Off until written.
#[inline(always)]
fn flow_mode() -> u32 {
    match TWILL_FLOW_CONF.get(0) {
        Some(mode) => *mode,
        None => FLOW_MODE_OFF,
    }
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether the packet in `ctx` answers another, from its TCP flags or ICMP type.
#[inline(always)]
fn reply_of(ctx: &TcContext, protocol: u8) -> u8 {
    use crate::parse::ETH_HDR_LEN;
    let Ok(version_ihl) = ctx.load::<u8>(ETH_HDR_LEN) else {
        return REPLY_UNKNOWN;
    };
    let offset = ETH_HDR_LEN + usize::from(version_ihl & 0x0f) * 4;
    match protocol {
        6 => match ctx.load::<u8>(offset + 13) {
            Ok(f) if f & (TCP_SYN | TCP_ACK) == TCP_SYN => REPLY_NO,
            Ok(f) if f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => REPLY_YES,
            _ => REPLY_UNKNOWN,
        },
        1 => match ctx.load::<u8>(offset) {
            Ok(8) => REPLY_NO,
            Ok(0) => REPLY_YES,
            _ => REPLY_UNKNOWN,
        },
        _ => REPLY_UNKNOWN,
    }
}

/// Writes the record of this program run, if one is due. `seen` is the packet as it came
/// in (before any translation); `None` for one that could not be read.
#[inline(always)]
pub(crate) fn record(
    ctx: &TcContext,
    direction: Direction,
    reason: Reason,
    ev: &Event,
    seen: Option<&Packet>,
) {
    let mode = flow_mode();
    if mode == FLOW_MODE_OFF {
        return;
    }
    let kind = if reason.is_drop() {
        KIND_DROP
    } else if reason == Reason::NoBackend {
        KIND_REFUSED
    } else if ev.new_flow {
        KIND_NEW
    } else if mode == FLOW_MODE_PACKETS {
        KIND_PACKET
    } else {
        return;
    };
    let mut r = FlowRecord {
        kind,
        reason: reason as u8,
        direction: direction as u8,
        len: ctx.len(),
        egress: ev.egress,
        ingress: ev.ingress,
        ..FlowRecord::default()
    };
    // SAFETY: the program's socket buffer, valid for its run.
    r.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(p) = seen {
        r.src_ip = p.src;
        r.dst_ip = p.dst;
        r.src_port = p.src_port;
        r.dst_port = p.dst_port;
        r.protocol = p.protocol;
        // Where a translation sent it: the packet as it is now.
        if let Some(now) = Packet::read(ctx)
            && (now.dst != p.dst || now.dst_port != p.dst_port)
        {
            r.xlate_ip = now.dst;
            r.xlate_port = now.dst_port;
        }
        r.reply = if kind == KIND_NEW {
            REPLY_NO
        } else {
            reply_of(ctx, p.protocol)
        };
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    r.time_ns = now;
    if (kind == KIND_DROP || kind == KIND_REFUSED) && mode != FLOW_MODE_PACKETS {
        let key = FlowSeenKey {
            src_ip: r.src_ip,
            dst_ip: r.dst_ip,
            src_port: r.src_port,
            dst_port: r.dst_port,
            protocol: r.protocol,
            reason: r.reason,
            _pad: [0; 2],
        };
        if let Some(seen) = lookup!(TWILL_FLOW_SEEN, &key)
            && now.wrapping_sub(seen.last_ns) < REPEAT_NS
        {
            if let Some(slot) = TWILL_FLOW_SEEN.get_ptr_mut(key) {
                // SAFETY: a pointer from a successful lookup, valid for this run; a
                // concurrent update of the count may be lost, which only makes
                // `repeats` smaller.
                unsafe { (*slot).suppressed = (*slot).suppressed.saturating_add(1) };
            }
            return;
        }
        let suppressed = lookup!(TWILL_FLOW_SEEN, &key).map_or(0, |s| s.suppressed);
        r.repeats = suppressed.min(u32::from(u16::MAX)) as u16;
        let _ = TWILL_FLOW_SEEN.insert(
            key,
            FlowSeen {
                last_ns: now,
                suppressed: 0,
                _pad: 0,
            },
            0,
        );
    }
    if TWILL_FLOWS.output::<FlowRecord>(&r, 0).is_err()
        && let Some(lost) = TWILL_FLOW_LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU array, from a successful lookup; BPF
        // programs run with migration disabled, so no other CPU writes it.
        unsafe { *lost += 1 };
    }
}

//! twill's eBPF programs, built for `bpfel-unknown-none` by `twill-bpf`'s build script.
//!
//! One program per attach point. Each is a thin `fn prog(ctx)` over `try_prog` that
//! returns the verdict and the reason for it; the reason is counted in the metrics map so
//! every pass and every drop is visible from userspace. No path can panic: packet reads go
//! through `bpf_skb_load_bytes` (bounds-checked by the kernel) and map slots are looked up,
//! never indexed.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use twill_abi::{
    metrics::{Direction, METRICS_ENTRIES, MetricValue, Reason, metric_index},
    tc::{TC_ACT_OK, TC_ACT_SHOT},
};

/// See [`twill_abi::metrics`]. Pinned by name so counters survive a daemon restart.
#[map(name = "TWILL_METRICS")]
static TWILL_METRICS: PerCpuArray<MetricValue> = PerCpuArray::pinned(METRICS_ENTRIES, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HDR_LEN: usize = 20;

#[classifier]
pub fn twill_from_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, Direction::FromPod)
}

#[classifier]
pub fn twill_to_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, Direction::ToPod)
}

#[inline(always)]
fn verdict(ctx: &TcContext, direction: Direction) -> i32 {
    let reason = classify(ctx);
    count(direction, reason, ctx.len());
    if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

/// What to do with the packet, and why.
#[inline(always)]
fn classify(ctx: &TcContext) -> Reason {
    let Ok(ethertype) = ctx.load::<u16>(12) else {
        return Reason::DropMalformed;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return Reason::NotIpv4;
    }
    let Ok(version_ihl) = ctx.load::<u8>(ETH_HDR_LEN) else {
        return Reason::DropMalformed;
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HDR_LEN {
        return Reason::DropMalformed;
    }
    // The whole header, options included, must be in the packet.
    if (ctx.len() as usize) < ETH_HDR_LEN + header_len {
        return Reason::DropMalformed;
    }
    Reason::Forwarded
}

#[inline(always)]
fn count(direction: Direction, reason: Reason, bytes: u32) {
    if let Some(slot) = TWILL_METRICS.get_ptr_mut(metric_index(direction, reason)) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it
        // points at this CPU's value for the slot, valid for the program's run; BPF
        // programs run with migration disabled, so no other CPU writes this value.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could get here. Nothing here may
    // panic; this exists because `no_std` binaries must name a handler.
    loop {}
}

/// GPL-compatible, so the kernel lets the programs call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

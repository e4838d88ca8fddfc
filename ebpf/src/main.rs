//! twill's eBPF programs, built for `bpfel-unknown-none` by `twill-bpf`'s build script.
//!
//! One program per attach point. Each is a thin `fn prog(ctx)` over the decision logic that
//! returns the verdict's reason; the reason is counted in the metrics map so every pass and
//! every drop is visible from userspace. No path can panic: packet reads are checked
//! against `data_end` (direct access) or go through `bpf_skb_load_bytes` (checked by the
//! kernel), map slots are looked up, never indexed, and divisions are `checked_rem` or by
//! non-zero constants.
//!
//! Service load balancing (see `twill_abi::lb`): on the way out of a pod, a packet to a
//! Service frontend is translated to a backend (DNAT), the flow pinned in conntrack and a
//! reverse entry recorded; on the way into a pod, a backend's reply is translated back to
//! the frontend, so the client only ever sees the ClusterIP.
//!
//! This file holds the programs' entry points and the tc programs' dispatch ([`verdict`]);
//! the logic lives in one module per concern. Every function they call is
//! `#[inline(always)]`, so each program stays one BPF function for the verifier.
#![no_std]
#![no_main]

// Shared by every program: the maps, the counters, the packet's headers.
mod flow;
mod maps;
mod metrics;
mod parse;

// One module per concern the programs decide on. DNS redirection (`dns`) joins them here,
// called from the entry points below.
mod delivery;
mod nat;
mod nodeport;
mod policy;
mod service;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use twill_abi::{
    metrics::{Direction, Reason},
    tc::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

use crate::{
    delivery::{pod_to_pod, to_local_pod},
    flow::Event,
    metrics::count,
    nat::forget_stale_reverse,
    nodeport::{node_port_reply, node_port_reply_from_world, node_port_request},
    parse::parse,
    policy::Packet,
    service::{from_backend, socket_from_backend, socket_to_backend, to_backend},
};

#[classifier]
pub fn twill_from_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, Direction::FromPod)
}

#[classifier]
pub fn twill_to_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, Direction::ToPod)
}

#[classifier]
pub fn twill_from_world(ctx: TcContext) -> i32 {
    verdict(&ctx, Direction::FromWorld)
}

#[classifier]
pub fn twill_from_overlay(ctx: TcContext) -> i32 {
    verdict(&ctx, Direction::FromOverlay)
}

#[inline(always)]
fn verdict(ctx: &TcContext, direction: Direction) -> i32 {
    let mut ev = Event::default();
    let parsed = parse(ctx);
    // The packet as it came in, for its flow record.
    let seen = match &parsed {
        Ok(Some(l4)) => Some(Packet::bare(l4)),
        Ok(None) => Packet::read(ctx),
        Err(_) => None,
    };
    let reason = match parsed {
        Err(reason) => reason,
        // Not TCP or UDP (ICMP, SCTP, a later fragment): only policy has a say.
        Ok(None) => match (direction, &seen) {
            (Direction::FromPod, Some(p)) => policy::egress(p, direction, &mut ev),
            (Direction::ToPod, Some(p)) => policy::ingress(p, direction, &mut ev),
            (Direction::FromPod | Direction::ToPod, None) => Reason::DropMalformed,
            _ => Reason::Forwarded,
        },
        Ok(Some(l4)) => match direction {
            // From a pod: to a Service, or a backend's reply to a NodePort client. Policy
            // sees the pod's own addresses: after a Service request is translated to its
            // backend, before a reply is translated back.
            Direction::FromPod => match to_backend(ctx, &l4) {
                Reason::Forwarded => {
                    match policy::egress(&Packet::of(ctx, &l4), direction, &mut ev) {
                        Reason::Forwarded => {
                            forget_stale_reverse(ctx, &l4);
                            match node_port_reply(ctx, &l4) {
                                Reason::Forwarded => pod_to_pod(ctx, &l4, &mut ev),
                                other => other,
                            }
                        }
                        denied => denied,
                    }
                }
                // Now to a backend, which is a pod: delivered the same way as pod-to-pod
                // traffic, and counted as translated.
                Reason::ServiceTranslated => match parse(ctx) {
                    Ok(Some(translated)) => {
                        match policy::egress(&Packet::of(ctx, &translated), direction, &mut ev) {
                            Reason::Forwarded => match pod_to_pod(ctx, &translated, &mut ev) {
                                Reason::Forwarded => Reason::ServiceTranslated,
                                delivered => {
                                    count(direction, Reason::ServiceTranslated, ctx.len());
                                    delivered
                                }
                            },
                            denied => denied,
                        }
                    }
                    // Our own rewrite cannot be read back: never let it pass unchecked.
                    _ => Reason::DropMalformed,
                },
                other => other,
            },
            Direction::FromOverlay => match node_port_reply(ctx, &l4) {
                Reason::Forwarded => to_local_pod(ctx, &l4, &mut ev),
                other => other,
            },
            Direction::FromWorld => match node_port_request(ctx, &l4, &mut ev) {
                Reason::Forwarded => node_port_reply_from_world(ctx, &l4),
                other => other,
            },
            Direction::ToPod => match policy::ingress(&Packet::of(ctx, &l4), direction, &mut ev) {
                Reason::Forwarded => from_backend(ctx, &l4),
                denied => denied,
            },
            Direction::HostSocket => from_backend(ctx, &l4),
        },
    };
    count(direction, reason, ctx.len());
    flow::record(ctx, direction, reason, &ev, seen.as_ref());
    match reason {
        // The packet already went where it was redirected to.
        Reason::NodePortRedirected | Reason::HairpinRedirected | Reason::PodRedirected => {
            TC_ACT_REDIRECT
        }
        r if r.is_drop() => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// A host process connecting (TCP, connected UDP) to a frontend connects to a backend
/// instead: the translation happens once per socket, not per packet.
#[cgroup_sock_addr(connect4)]
pub fn twill_connect4(ctx: SockAddrContext) -> i32 {
    count(Direction::HostSocket, socket_to_backend(&ctx), 0);
    SOCK_ALLOW
}

/// A host process sending unconnected UDP to a frontend sends to a backend instead.
#[cgroup_sock_addr(sendmsg4)]
pub fn twill_sendmsg4(ctx: SockAddrContext) -> i32 {
    count(Direction::HostSocket, socket_to_backend(&ctx), 0);
    SOCK_ALLOW
}

/// A host process receiving UDP from a backend it was sent to sees the frontend as the
/// source, so replies match what it sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn twill_recvmsg4(ctx: SockAddrContext) -> i32 {
    count(Direction::HostSocket, socket_from_backend(&ctx), 0);
    SOCK_ALLOW
}

/// A host process asking for the peer of a socket it connected to a frontend (TCP,
/// connected UDP) gets the frontend, not the backend it was translated to.
#[cgroup_sock_addr(getpeername4)]
pub fn twill_getpeername4(ctx: SockAddrContext) -> i32 {
    count(Direction::HostSocket, socket_from_backend(&ctx), 0);
    SOCK_ALLOW
}

/// Socket hooks return 1 to let the call proceed (0 would fail it with EPERM).
const SOCK_ALLOW: i32 = 1;

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

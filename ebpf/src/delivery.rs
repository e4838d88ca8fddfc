//! Where a packet goes past the node's stack: straight into a pod on this node, out of the
//! device the node routes it through (the overlay, the underlay), or back to the pod it
//! came from (hairpin).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use twill_abi::{
    lb::LocalPod,
    metrics::{Direction, Reason},
    tc::TC_ACT_REDIRECT,
};

use crate::{
    flow::Event,
    maps::{TWILL_LOCAL_PODS, lookup, node_config},
    metrics::count,
    parse::{IP_CSUM_OFF, IP_TTL_OFF, L4},
    policy::{self, Packet},
    service::from_backend,
};

/// From the overlay: a packet for a pod on this node goes straight into the pod, past
/// the node's forwarding and the veth's queue, after what the pod's `to_pod` program would
/// have done to it (a backend's reply comes from the frontend) and what a router does (one
/// hop off the TTL, the next hop's Ethernet addresses).
#[inline(always)]
pub(crate) fn to_local_pod(ctx: &TcContext, l4: &L4, ev: &mut Event) -> Reason {
    match lookup!(TWILL_LOCAL_PODS, &l4.flow.dst_ip) {
        Some(pod) => deliver(ctx, l4, &pod, ev),
        None => Reason::Forwarded,
    }
}

/// [`to_local_pod`]'s work, for a pod found in `TWILL_LOCAL_PODS`.
#[inline(always)]
fn deliver(ctx: &TcContext, l4: &L4, pod: &LocalPod, ev: &mut Event) -> Reason {
    // Policy first, on the addresses as they are (a backend's reply not yet translated
    // back to the frontend): counted as the pod's `to_pod` program would have.
    match policy::ingress(&Packet::of(ctx, l4), Direction::ToPod, ev) {
        Reason::Forwarded => {}
        denied => return denied,
    }
    if let Err(reason) = hop(ctx) {
        return reason;
    }
    match from_backend(ctx, l4) {
        Reason::Forwarded => {}
        // Counted as the pod's `to_pod` program would have.
        Reason::ReplyTranslated => count(Direction::ToPod, Reason::ReplyTranslated, 0),
        other => return other,
    }
    if pod.pod_mac != [0; 6]
        && (ctx.store(0, &pod.pod_mac, 0).is_err() || ctx.store(6, &pod.host_mac, 0).is_err())
    {
        return Reason::DropRewriteFailed;
    }
    // SAFETY: a helper taking plain integers.
    let ret = unsafe { aya_ebpf::helpers::bpf_redirect_peer(pod.ifindex, 0) };
    if ret == TC_ACT_REDIRECT as i64 {
        Reason::PodRedirected
    } else {
        // Not a veth any more (a pod deleted a moment ago): the node's stack decides.
        Reason::Forwarded
    }
}

/// From a pod, to another pod: one on this node gets it straight ([`deliver`]), one on
/// another node goes straight to the overlay device the node routes it through, past the
/// node's forwarding. Anything else (the node's own addresses, the world) goes on through
/// the node's stack.
#[inline(always)]
pub(crate) fn pod_to_pod(ctx: &TcContext, l4: &L4, ev: &mut Event) -> Reason {
    let Some(node) = node_config() else {
        return Reason::Forwarded;
    };
    let dst = l4.flow.dst_ip;
    if node.cluster_mask == 0 || dst & node.cluster_mask != node.cluster_net || dst == node.vtep_ip
    {
        return Reason::Forwarded;
    }
    if let Some(pod) = lookup!(TWILL_LOCAL_PODS, &dst) {
        return deliver(ctx, l4, &pod, ev);
    }
    // The TTL comes off only once the packet will go: one the node must answer (no
    // route, too big for the overlay: ICMP from its stack) goes on untouched.
    if fib_redirect(ctx, l4.flow.protocol, l4.flow.src_ip, dst, hop) {
        Reason::PodRedirected
    } else {
        // No route from here (a node gone): the node's stack answers the pod.
        Reason::Forwarded
    }
}

/// Sends the packet back out of the interface it came in on, towards the pod (the node's
/// stack would check the frontend's address as a source against its routes and drop it).
#[inline(always)]
pub(crate) fn hairpin(ctx: &TcContext) -> Reason {
    // The frame goes back where it came from: swap its Ethernet addresses, or the pod
    // would see a frame for the node's MAC and drop it.
    let (Ok(dst), Ok(src)) = (ctx.load::<[u8; 6]>(0), ctx.load::<[u8; 6]>(6)) else {
        return Reason::DropMalformed;
    };
    if ctx.store(0, &src, 0).is_err() || ctx.store(6, &dst, 0).is_err() {
        return Reason::DropRewriteFailed;
    }
    // SAFETY: the context's socket buffer, valid for this run; a plain field read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper taking plain integers.
    let ret = unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) };
    if ret == TC_ACT_REDIRECT as i64 {
        Reason::HairpinRedirected
    } else {
        Reason::DropNoRoute
    }
}

/// Takes one hop off the TTL, as forwarding would; `Err(Forwarded)` when it is out, for
/// the node's stack to answer (ICMP time exceeded).
#[inline(always)]
fn hop(ctx: &TcContext) -> Result<(), Reason> {
    let Ok(ttl_proto) = ctx.load::<u16>(IP_TTL_OFF) else {
        return Err(Reason::DropMalformed);
    };
    let [ttl, proto] = ttl_proto.to_ne_bytes();
    if ttl <= 1 {
        return Err(Reason::Forwarded);
    }
    let decremented = u16::from_ne_bytes([ttl - 1, proto]);
    if ctx
        .l3_csum_replace(IP_CSUM_OFF, u64::from(ttl_proto), u64::from(decremented), 2)
        .is_err()
        || ctx.store(IP_TTL_OFF, &decremented, 0).is_err()
    {
        return Err(Reason::DropRewriteFailed);
    }
    Ok(())
}

/// Sends the packet out of the interface the node routes `dst` through, with the
/// neighbour's address filled in by the kernel.
#[inline(always)]
pub(crate) fn redirect(ctx: &TcContext, protocol: u8, src: u32, dst: u32) -> Reason {
    if fib_redirect(ctx, protocol, src, dst, |_| Ok(())) {
        Reason::NodePortRedirected
    } else {
        Reason::DropNoRoute
    }
}

/// [`redirect`]'s work: whether the packet was redirected. `before` runs once the route
/// is known and the packet will go (a hop off the TTL, say); its error stops it.
#[inline(always)]
fn fib_redirect(
    ctx: &TcContext,
    protocol: u8,
    src: u32,
    dst: u32,
    before: impl FnOnce(&TcContext) -> Result<(), Reason>,
) -> bool {
    // SAFETY: all-zero bytes are a valid `bpf_fib_lookup` (integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    // SAFETY: the context's socket buffer, valid for this run; a plain field read.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the helper reads and writes `params`, a local of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || before(ctx).is_err() {
        return false;
    }
    let ret = match rc {
        // The next hop's neighbour is known: its Ethernet addresses go on the frame and
        // the packet goes out as it is, with no second lookup.
        BPF_FIB_LKUP_RET_SUCCESS => {
            if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
                return false;
            }
            // SAFETY: a helper taking plain integers.
            unsafe { aya_ebpf::helpers::bpf_redirect(params.ifindex, 0) }
        }
        // Not yet: the kernel resolves the next hop the lookup found.
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            let mut next_hop = bpf_redir_neigh {
                nh_family: u32::from(AF_INET),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    // SAFETY: the lookup wrote the next hop's IPv4 address into this union
                    // field (family AF_INET); reading it back is reading an integer.
                    ipv4_nh: unsafe { params.__bindgen_anon_4.ipv4_dst },
                },
            };
            // SAFETY: the helper reads `next_hop`, a local of the size passed.
            unsafe {
                bpf_redirect_neigh(
                    params.ifindex,
                    &mut next_hop,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            }
        }
        _ => return false,
    };
    ret == TC_ACT_REDIRECT as i64
}

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

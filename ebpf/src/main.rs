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
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_NO_COMMON_LRU, BPF_F_PSEUDO_HDR, bpf_fib_lookup,
        bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    macros::{cgroup_sock_addr, classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, TcContext},
};
use twill_abi::{
    lb::{
        Affinity, AffinityKey, Backend, BackendKey, FLOW_HAIRPIN, FLOW_NODE_PORT, FLOW_SNAT,
        FRONTEND_AFFINITY, FRONTEND_LOCAL, Flow, FlowKey, Frontend, FrontendKey, IPPROTO_TCP,
        IPPROTO_UDP, LocalPod, MAX_BACKENDS, MAX_FLOWS, MAX_FRONTENDS, MAX_PODS, MemberKey,
        NODE_PORT_MAX, NODE_PORT_MIN, NodeConfig, PodSocket, RevNat, SCOPE_CLUSTER_IP,
        SCOPE_NODE_PORT, SNAT_PORT_COUNT, SNAT_PORT_MIN, SockKey, pick_slot,
    },
    metrics::{Direction, METRICS_ENTRIES, MetricValue, Reason, metric_index},
    tc::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

/// See [`twill_abi::metrics`]. Pinned by name so counters survive a daemon restart.
#[map(name = "TWILL_METRICS")]
static TWILL_METRICS: PerCpuArray<MetricValue> = PerCpuArray::pinned(METRICS_ENTRIES, 0);
#[map(name = "TWILL_SVC")]
static TWILL_SVC: HashMap<FrontendKey, Frontend> = HashMap::pinned(MAX_FRONTENDS, 0);
#[map(name = "TWILL_BACKENDS")]
static TWILL_BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_BACKENDS, 0);
#[map(name = "TWILL_CT")]
static TWILL_CT: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(MAX_FLOWS, BPF_F_NO_COMMON_LRU);
#[map(name = "TWILL_REVNAT")]
static TWILL_REVNAT: LruHashMap<FlowKey, RevNat> =
    LruHashMap::pinned(MAX_FLOWS, BPF_F_NO_COMMON_LRU);
#[map(name = "TWILL_MEMBERS")]
static TWILL_MEMBERS: HashMap<MemberKey, u32> = HashMap::pinned(MAX_BACKENDS, 0);
#[map(name = "TWILL_AFFINITY")]
static TWILL_AFFINITY: LruHashMap<AffinityKey, Affinity> = LruHashMap::pinned(MAX_FLOWS, 0);
#[map(name = "TWILL_NODE")]
static TWILL_NODE: Array<NodeConfig> = Array::pinned(1, 0);
#[map(name = "TWILL_SOCK_NAT")]
static TWILL_SOCK_NAT: LruHashMap<SockKey, RevNat> = LruHashMap::pinned(MAX_FLOWS, 0);
#[map(name = "TWILL_LOCAL_PODS")]
static TWILL_LOCAL_PODS: HashMap<u32, LocalPod> = HashMap::pinned(MAX_PODS, 0);
#[map(name = "TWILL_POD_NETNS")]
static TWILL_POD_NETNS: HashMap<u64, PodSocket> = HashMap::pinned(MAX_PODS, 0);

/// The service CIDR, set at load time (wire order): destinations outside it skip the
/// Service lookups, so pod-to-pod traffic pays for none. A mask of 0 means "every
/// destination may be a Service".
#[unsafe(no_mangle)]
static SERVICE_NET: u32 = 0;
#[unsafe(no_mangle)]
static SERVICE_MASK: u32 = 0;

#[inline(always)]
fn maybe_service(dst: u32) -> bool {
    // SAFETY: reads of plain statics that the loader sets before the program runs and
    // that nothing writes afterwards; volatile, so the compiler does not fold the
    // compile-time zero.
    let (net, mask) = unsafe {
        (
            core::ptr::read_volatile(&SERVICE_NET),
            core::ptr::read_volatile(&SERVICE_MASK),
        )
    };
    dst & mask == net
}

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HDR_LEN: usize = 20;
const IP_TTL_OFF: usize = ETH_HDR_LEN + 8;
const IP_PROTO_OFF: usize = ETH_HDR_LEN + 9;
const IP_CSUM_OFF: usize = ETH_HDR_LEN + 10;
const IP_SRC_OFF: usize = ETH_HDR_LEN + 12;
const IP_DST_OFF: usize = ETH_HDR_LEN + 16;
const IP_FRAG_OFF: usize = ETH_HDR_LEN + 6;

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
    let reason = match parse(ctx) {
        Err(reason) => reason,
        Ok(None) => Reason::Forwarded,
        Ok(Some(l4)) => match direction {
            // From a pod: to a Service, or a backend's reply to a NodePort client.
            Direction::FromPod => match to_backend(ctx, &l4) {
                Reason::Forwarded => {
                    forget_stale_reverse(ctx, &l4);
                    match node_port_reply(ctx, &l4) {
                        Reason::Forwarded => pod_to_pod(ctx, &l4),
                        other => other,
                    }
                }
                // Now to a backend, which is a pod: delivered the same way as pod-to-pod
                // traffic, and counted as translated.
                Reason::ServiceTranslated => match parse(ctx) {
                    Ok(Some(translated)) => match pod_to_pod(ctx, &translated) {
                        Reason::Forwarded => Reason::ServiceTranslated,
                        delivered => {
                            count(direction, Reason::ServiceTranslated, ctx.len());
                            delivered
                        }
                    },
                    _ => Reason::ServiceTranslated,
                },
                other => other,
            },
            Direction::FromOverlay => match node_port_reply(ctx, &l4) {
                Reason::Forwarded => to_local_pod(ctx, &l4),
                other => other,
            },
            Direction::FromWorld => node_port_request(ctx, &l4),
            Direction::ToPod | Direction::HostSocket => from_backend(ctx, &l4),
        },
    };
    count(direction, reason, ctx.len());
    match reason {
        // The packet already went where it was redirected to.
        Reason::NodePortRedirected | Reason::HairpinRedirected | Reason::PodRedirected => {
            TC_ACT_REDIRECT
        }
        r if r.is_drop() => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// A TCP or UDP packet's flow and where its checksum is.
struct L4 {
    flow: FlowKey,
    /// Offset of the L4 header.
    offset: usize,
    /// Offset of the L4 checksum.
    csum: usize,
}

const TCP_FLAGS_OFF: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

impl L4 {
    /// A TCP segment opening a connection (SYN without ACK).
    #[inline(always)]
    fn opens_tcp(&self, ctx: &TcContext) -> bool {
        self.flow.protocol == IPPROTO_TCP
            && ctx
                .load::<u8>(self.offset + TCP_FLAGS_OFF)
                .is_ok_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }
}

/// Checks the headers. `Ok(Some)` for a TCP/UDP packet that is not a later fragment,
/// `Ok(None)` for other valid IPv4, `Err(reason)` for what is not IPv4 or is malformed.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<L4>, Reason> {
    match parse_direct(ctx) {
        Some(parsed) => parsed,
        None => parse_copied(ctx),
    }
}

/// [`parse`] reading the headers in place (direct packet access, no helper calls): the
/// common case, where they are in the packet's linear part. `None` when they are not (a
/// short or non-linear packet): [`parse_copied`] decides then.
#[inline(always)]
fn parse_direct(ctx: &TcContext) -> Option<Result<Option<L4>, Reason>> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HDR_LEN + IPV4_MIN_HDR_LEN > end {
        return None;
    }
    // SAFETY (each read below): the bytes lie between `data` and `data_end`, checked just
    // before (the verifier checks it again); unaligned reads, as headers are not aligned.
    let ethertype = unsafe { ((data + 12) as *const u16).read_unaligned() };
    if u16::from_be(ethertype) != ETH_P_IP {
        return Some(Err(Reason::NotIpv4));
    }
    // SAFETY: as above.
    let version_ihl = unsafe { *((data + ETH_HDR_LEN) as *const u8) };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HDR_LEN {
        return Some(Err(Reason::DropMalformed));
    }
    if (ctx.len() as usize) < ETH_HDR_LEN + header_len {
        return Some(Err(Reason::DropMalformed));
    }
    // SAFETY: as above.
    let protocol = unsafe { *((data + IP_PROTO_OFF) as *const u8) };
    let csum = match protocol {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return Some(Ok(None)),
    };
    // SAFETY: as above.
    let frag = unsafe { ((data + IP_FRAG_OFF) as *const u16).read_unaligned() };
    if u16::from_be(frag) & 0x1fff != 0 {
        return Some(Ok(None));
    }
    let offset = ETH_HDR_LEN + header_len;
    if data + offset + 4 > end {
        return None;
    }
    // SAFETY: as above (the ports: checked against `data_end` just before).
    let (src_ip, dst_ip, src_port, dst_port) = unsafe {
        (
            ((data + IP_SRC_OFF) as *const u32).read_unaligned(),
            ((data + IP_DST_OFF) as *const u32).read_unaligned(),
            ((data + offset) as *const u16).read_unaligned(),
            ((data + offset + 2) as *const u16).read_unaligned(),
        )
    };
    Some(Ok(Some(L4 {
        flow: FlowKey {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            protocol,
            _pad: [0; 3],
        },
        offset,
        csum: offset + csum,
    })))
}

/// [`parse`] through `bpf_skb_load_bytes`, which also reads non-linear packets.
#[inline(always)]
fn parse_copied(ctx: &TcContext) -> Result<Option<L4>, Reason> {
    let ethertype = ctx.load::<u16>(12).map_err(|_| Reason::DropMalformed)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return Err(Reason::NotIpv4);
    }
    let version_ihl = ctx
        .load::<u8>(ETH_HDR_LEN)
        .map_err(|_| Reason::DropMalformed)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HDR_LEN {
        return Err(Reason::DropMalformed);
    }
    // The whole header, options included, must be in the packet.
    if (ctx.len() as usize) < ETH_HDR_LEN + header_len {
        return Err(Reason::DropMalformed);
    }
    let protocol = ctx
        .load::<u8>(IP_PROTO_OFF)
        .map_err(|_| Reason::DropMalformed)?;
    let csum = match protocol {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return Ok(None),
    };
    // Later fragments carry no ports; they are not translated.
    let frag = ctx
        .load::<u16>(IP_FRAG_OFF)
        .map_err(|_| Reason::DropMalformed)?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return Ok(None);
    }
    let offset = ETH_HDR_LEN + header_len;
    let read32 = |off| ctx.load::<u32>(off).map_err(|_| Reason::DropMalformed);
    let read16 = |off| ctx.load::<u16>(off).map_err(|_| Reason::DropMalformed);
    Ok(Some(L4 {
        flow: FlowKey {
            src_ip: read32(IP_SRC_OFF)?,
            dst_ip: read32(IP_DST_OFF)?,
            src_port: read16(offset)?,
            dst_port: read16(offset + 2)?,
            protocol,
            _pad: [0; 3],
        },
        offset,
        csum: offset + csum,
    }))
}

/// Reads a map value out. The copy is taken at once; a concurrent update may replace the
/// entry, never free it under us.
macro_rules! lookup {
    ($map:expr, $key:expr) => {
        // SAFETY: the reference from a successful lookup points into the map's value
        // storage, valid for this program run; the value is plain data copied right away.
        unsafe { $map.get($key).copied() }
    };
}

/// From a pod: a packet to a frontend goes to a backend.
#[inline(always)]
fn to_backend(ctx: &TcContext, l4: &L4) -> Reason {
    // Conntrack entries exist only for flows to frontends, all inside the service CIDR.
    if !maybe_service(l4.flow.dst_ip) {
        return Reason::Forwarded;
    }
    // A connection opening (SYN) is a new flow even if its ports were used before: the
    // backend is chosen again (the same one, for a retransmitted SYN: the choice is a hash
    // of the flow) and both entries are written afresh.
    let known = if l4.opens_tcp(ctx) {
        None
    } else {
        lookup!(TWILL_CT, &l4.flow)
    };
    let flow = match known {
        Some(flow) => flow,
        None => {
            let frontend_key = FrontendKey {
                ip: l4.flow.dst_ip,
                port: l4.flow.dst_port,
                protocol: l4.flow.protocol,
                scope: SCOPE_CLUSTER_IP,
            };
            let Some(frontend) = lookup!(TWILL_SVC, &frontend_key) else {
                return Reason::Forwarded;
            };
            // No backend: the node's stack refuses it (unreachable route over the service
            // CIDR), so the client learns at once instead of timing out.
            let Some(backend) = choose_backend(&l4.flow, l4.flow.src_ip, &frontend) else {
                return Reason::NoBackend;
            };
            // Hairpin: the pod is its own backend. It sees the frontend's address as the
            // peer (its own would be dropped by its kernel).
            let (flags, snat) = if backend.ip == l4.flow.src_ip {
                (FLOW_HAIRPIN, (l4.flow.dst_ip, l4.flow.src_port))
            } else {
                (0, (0, 0))
            };
            match record_flow(l4, backend, flags, snat) {
                Ok(flow) => flow,
                Err(()) => return Reason::DropRewriteFailed,
            }
        }
    };
    if translate_request(ctx, l4, &flow).is_err() {
        return Reason::DropRewriteFailed;
    }
    if flow.flags & FLOW_HAIRPIN != 0 {
        hairpin(ctx)
    } else {
        Reason::ServiceTranslated
    }
}

/// Pins a new flow in conntrack and records its reverse entry: `flags` (`FLOW_*`) and, when
/// the source is translated, the address and port it leaves with (`snat`, else zeros).
/// Without both entries the flow's replies would not be translated back.
#[inline(always)]
fn record_flow(l4: &L4, backend: Backend, flags: u16, snat: (u32, u16)) -> Result<Flow, ()> {
    let (snat_ip, snat_port) = snat;
    let flow = Flow {
        backend_ip: backend.ip,
        backend_port: backend.port,
        flags,
        frontend_ip: l4.flow.dst_ip,
        frontend_port: l4.flow.dst_port,
        snat_port,
        snat_ip,
    };
    // The backend answers whoever it saw as the source.
    let (peer_ip, peer_port) = if snat_ip != 0 {
        (snat_ip, snat_port)
    } else {
        (l4.flow.src_ip, l4.flow.src_port)
    };
    let reply = FlowKey {
        src_ip: backend.ip,
        dst_ip: peer_ip,
        src_port: backend.port,
        dst_port: peer_port,
        protocol: l4.flow.protocol,
        _pad: [0; 3],
    };
    let revnat = RevNat {
        frontend_ip: l4.flow.dst_ip,
        frontend_port: l4.flow.dst_port,
        flags,
        client_ip: l4.flow.src_ip,
        client_port: l4.flow.src_port,
        _pad: 0,
    };
    TWILL_REVNAT.insert(reply, revnat, 0).map_err(|_| ())?;
    TWILL_CT.insert(l4.flow, flow, 0).map_err(|_| ())?;
    Ok(flow)
}

/// A client's packet of a flow: to the backend, and from the translated source if the
/// flow has one.
#[inline(always)]
fn translate_request(ctx: &TcContext, l4: &L4, flow: &Flow) -> Result<(), ()> {
    rewrite(
        ctx,
        l4,
        IP_DST_OFF,
        l4.flow.dst_ip,
        flow.backend_ip,
        l4.offset + 2,
        l4.flow.dst_port,
        flow.backend_port,
    )?;
    if flow.snat_ip != 0 {
        rewrite(
            ctx,
            l4,
            IP_SRC_OFF,
            l4.flow.src_ip,
            flow.snat_ip,
            l4.offset,
            l4.flow.src_port,
            flow.snat_port,
        )?;
    }
    Ok(())
}

/// A backend's reply: from the frontend the client spoke to, and to the client itself if
/// the flow's source was translated.
#[inline(always)]
fn translate_reply(ctx: &TcContext, l4: &L4, revnat: &RevNat) -> Result<(), ()> {
    rewrite(
        ctx,
        l4,
        IP_SRC_OFF,
        l4.flow.src_ip,
        revnat.frontend_ip,
        l4.offset,
        l4.flow.src_port,
        revnat.frontend_port,
    )?;
    if revnat.flags & (FLOW_SNAT | FLOW_HAIRPIN) != 0 {
        rewrite(
            ctx,
            l4,
            IP_DST_OFF,
            l4.flow.dst_ip,
            revnat.client_ip,
            l4.offset + 2,
            l4.flow.dst_port,
            revnat.client_port,
        )?;
    }
    Ok(())
}

/// Sends the packet back out of the interface it came in on, towards the pod (the node's
/// stack would check the frontend's address as a source against its routes and drop it).
#[inline(always)]
fn hairpin(ctx: &TcContext) -> Reason {
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

/// The backend for a new flow: the client's remembered one under session affinity, while
/// it is fresh and still a member; otherwise one picked by the flow's hash.
#[inline(always)]
fn choose_backend(flow: &FlowKey, client_ip: u32, frontend: &Frontend) -> Option<Backend> {
    if frontend.flags & FRONTEND_AFFINITY == 0 {
        return pick(flow, frontend);
    }
    let key = AffinityKey {
        service_id: frontend.service_id,
        client_ip,
    };
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let timeout = u64::from(frontend.affinity_timeout) * 1_000_000_000;
    let remembered = lookup!(TWILL_AFFINITY, &key).and_then(|a| {
        let member = MemberKey {
            service_id: frontend.service_id,
            ip: a.backend_ip,
            port: a.backend_port,
            _pad: 0,
        };
        let fresh = now.saturating_sub(a.last_used_ns) <= timeout;
        (fresh && lookup!(TWILL_MEMBERS, &member).is_some()).then_some(Backend {
            ip: a.backend_ip,
            port: a.backend_port,
            _pad: 0,
        })
    });
    let backend = match remembered {
        Some(b) => b,
        None => pick(flow, frontend)?,
    };
    let affinity = Affinity {
        backend_ip: backend.ip,
        backend_port: backend.port,
        _pad: 0,
        last_used_ns: now,
    };
    // Failing to remember only costs stickiness for the next flow, not this one.
    let _ = TWILL_AFFINITY.insert(key, affinity, 0);
    Some(backend)
}

#[inline(always)]
fn pick(flow: &FlowKey, frontend: &Frontend) -> Option<Backend> {
    let slot = pick_slot(flow, frontend.backend_count)?;
    let key = BackendKey {
        service_id: frontend.service_id,
        slot,
    };
    lookup!(TWILL_BACKENDS, &key)
}

/// A pod opening a TCP connection straight to an address and port may reuse the ports of
/// an earlier connection through a Service to the same backend. That flow's reverse entry
/// would then translate the new connection's replies to the Service's address: it goes.
#[inline(always)]
fn forget_stale_reverse(ctx: &TcContext, l4: &L4) {
    if l4.opens_tcp(ctx) {
        let reply = FlowKey {
            src_ip: l4.flow.dst_ip,
            dst_ip: l4.flow.src_ip,
            src_port: l4.flow.dst_port,
            dst_port: l4.flow.src_port,
            protocol: l4.flow.protocol,
            _pad: [0; 3],
        };
        let _ = TWILL_REVNAT.remove(reply);
    }
}

/// Into a pod: a backend's reply comes from the frontend the client spoke to.
#[inline(always)]
fn from_backend(ctx: &TcContext, l4: &L4) -> Reason {
    let Some(revnat) = lookup!(TWILL_REVNAT, &l4.flow) else {
        return Reason::Forwarded;
    };
    if revnat.flags & (FLOW_NODE_PORT | FLOW_HAIRPIN) != 0 {
        return Reason::Forwarded; // translated where it enters the node, not here
    }
    match translate_reply(ctx, l4, &revnat) {
        Ok(()) => Reason::ReplyTranslated,
        Err(()) => Reason::DropRewriteFailed,
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

/// Socket hooks return 1 to let the call proceed (0 would fail it with EPERM).
const SOCK_ALLOW: i32 = 1;

#[inline(always)]
fn socket_to_backend(ctx: &SockAddrContext) -> Reason {
    let sa = ctx.sock_addr;
    // SAFETY: `sock_addr` is the context the kernel passed in, valid for this run; the
    // verifier checks each field access (4-byte reads of user_ip4, user_port, protocol).
    let (ip, port, protocol) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port) as u16,
            core::ptr::read_volatile(&(*sa).protocol) as u8,
        )
    };
    if !maybe_service(ip) || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
        return Reason::Forwarded;
    }
    let frontend_key = FrontendKey {
        ip,
        port,
        protocol,
        scope: SCOPE_CLUSTER_IP,
    };
    let Some(frontend) = lookup!(TWILL_SVC, &frontend_key) else {
        return Reason::Forwarded;
    };
    // No source port yet: a random one spreads the sockets over the backends. The
    // affinity client is the pod the socket's namespace belongs to; host processes share
    // one (the node), as a backend would see them.
    // SAFETY: helpers without arguments or side effects.
    let (r1, r2) = unsafe {
        (
            aya_ebpf::helpers::bpf_get_prandom_u32(),
            aya_ebpf::helpers::bpf_get_prandom_u32(),
        )
    };
    let flow = FlowKey {
        src_ip: r1,
        dst_ip: ip,
        src_port: r2 as u16,
        dst_port: port,
        protocol,
        _pad: [0; 3],
    };
    // No backend: the call goes on to the VIP, which the node's unreachable route
    // refuses at once.
    let client_ip = if frontend.flags & FRONTEND_AFFINITY != 0 {
        // SAFETY: the helper reads the network namespace of this context's socket.
        let netns = unsafe { aya_ebpf::helpers::bpf_get_netns_cookie(ctx.sock_addr.cast()) };
        lookup!(TWILL_POD_NETNS, &netns).map_or(0, |pod| pod.ip)
    } else {
        0
    };
    let Some(backend) = choose_backend(&flow, client_ip, &frontend) else {
        return Reason::NoBackend;
    };
    if protocol == IPPROTO_UDP {
        // SAFETY: the helper reads the socket of this context; always valid here.
        let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let key = SockKey {
            cookie,
            ip: backend.ip,
            port: backend.port,
            _pad: 0,
        };
        let revnat = RevNat {
            frontend_ip: ip,
            frontend_port: port,
            ..RevNat::default()
        };
        if TWILL_SOCK_NAT.insert(key, revnat, 0).is_err() {
            return Reason::DropRewriteFailed;
        }
    }
    // SAFETY: as above; the verifier allows 4-byte writes of user_ip4 and user_port.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, backend.ip);
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(backend.port));
    }
    Reason::ServiceTranslated
}

#[inline(always)]
fn socket_from_backend(ctx: &SockAddrContext) -> Reason {
    let sa = ctx.sock_addr;
    // SAFETY: as in `socket_to_backend`.
    let (ip, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port) as u16,
        )
    };
    // SAFETY: the helper reads the socket of this context; always valid here.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockKey {
        cookie,
        ip,
        port,
        _pad: 0,
    };
    let Some(revnat) = lookup!(TWILL_SOCK_NAT, &key) else {
        return Reason::Forwarded;
    };
    // SAFETY: as in `socket_to_backend`.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, revnat.frontend_ip);
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(revnat.frontend_port));
    }
    Reason::ReplyTranslated
}

#[inline(always)]
fn node_config() -> Option<NodeConfig> {
    TWILL_NODE.get(0).copied()
}

/// On the underlay: a request to one of this node's NodePorts goes to a backend. With
/// `externalTrafficPolicy: Local` the backend is on this node and the client's address is
/// kept: the packet goes on through the node's stack. Otherwise its source becomes this
/// node's VTEP address (so the reply comes back here) and the program sends it on itself:
/// the stack would drop a packet arriving with one of its own addresses as the source.
#[inline(always)]
fn node_port_request(ctx: &TcContext, l4: &L4) -> Reason {
    let port = u16::from_be(l4.flow.dst_port);
    if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&port) {
        return Reason::Forwarded;
    }
    let Some(node) = node_config() else {
        return Reason::Forwarded;
    };
    if l4.flow.dst_ip != node.node_ip {
        return Reason::Forwarded;
    }
    let flow = match lookup!(TWILL_CT, &l4.flow) {
        Some(flow) => flow,
        None => {
            let frontend_key = FrontendKey {
                ip: 0,
                port: l4.flow.dst_port,
                protocol: l4.flow.protocol,
                scope: SCOPE_NODE_PORT,
            };
            let Some(frontend) = lookup!(TWILL_SVC, &frontend_key) else {
                return Reason::Forwarded;
            };
            // No backend: the node's stack answers (a TCP reset, an ICMP port unreachable).
            let Some(backend) = choose_backend(&l4.flow, l4.flow.src_ip, &frontend) else {
                return Reason::NoBackend;
            };
            let (flags, snat) = if frontend.flags & FRONTEND_LOCAL != 0 {
                (FLOW_NODE_PORT, (0, 0))
            } else {
                if node.vtep_ip == 0 {
                    return Reason::DropNoRoute;
                }
                let Some(port) = free_snat_port(&l4.flow, backend, node.vtep_ip) else {
                    return Reason::DropNoSnatPort;
                };
                (FLOW_NODE_PORT | FLOW_SNAT, (node.vtep_ip, port))
            };
            match record_flow(l4, backend, flags, snat) {
                Ok(flow) => flow,
                Err(()) => return Reason::DropRewriteFailed,
            }
        }
    };
    if translate_request(ctx, l4, &flow).is_err() {
        return Reason::DropRewriteFailed;
    }
    if flow.flags & FLOW_SNAT == 0 {
        return Reason::ServiceTranslated;
    }
    redirect(ctx, l4.flow.protocol, flow.snat_ip, flow.backend_ip)
}

/// A source port for a source-translated NodePort flow that no other flow to the same
/// backend uses: a few tries at hashed ports of the SNAT range.
#[inline(always)]
fn free_snat_port(flow: &FlowKey, backend: Backend, vtep_ip: u32) -> Option<u16> {
    let mut h = flow.src_ip ^ (u32::from(flow.src_port) << 16) ^ u32::from(flow.dst_port);
    h = h.wrapping_mul(0x9E37_79B1);
    let mut i = 0u32;
    while i < 4 {
        let candidate =
            SNAT_PORT_MIN + ((h >> 8).wrapping_add(i * 7919) % u32::from(SNAT_PORT_COUNT)) as u16;
        let port = candidate.to_be();
        let reply = FlowKey {
            src_ip: backend.ip,
            dst_ip: vtep_ip,
            src_port: backend.port,
            dst_port: port,
            protocol: flow.protocol,
            _pad: [0; 3],
        };
        if lookup!(TWILL_REVNAT, &reply).is_none() {
            return Some(port);
        }
        i += 1;
    }
    None
}

/// From a pod or the overlay: a backend's reply to a NodePort client leaves from the
/// NodePort, to the client, sent on by the program; a pod's reply to itself through a
/// Service (hairpin) goes back to it.
#[inline(always)]
fn node_port_reply(ctx: &TcContext, l4: &L4) -> Reason {
    // Pod-to-pod traffic is never a NodePort or hairpin reply: no lookup for it.
    if let Some(node) = node_config()
        && node.cluster_mask != 0
        && l4.flow.dst_ip & node.cluster_mask == node.cluster_net
        && l4.flow.dst_ip != node.vtep_ip
    {
        return Reason::Forwarded;
    }
    let Some(revnat) = lookup!(TWILL_REVNAT, &l4.flow) else {
        return Reason::Forwarded;
    };
    if revnat.flags & (FLOW_NODE_PORT | FLOW_HAIRPIN) == 0 {
        return Reason::Forwarded;
    }
    if translate_reply(ctx, l4, &revnat).is_err() {
        return Reason::DropRewriteFailed;
    }
    if revnat.flags & FLOW_HAIRPIN != 0 {
        hairpin(ctx)
    } else {
        redirect(ctx, l4.flow.protocol, revnat.frontend_ip, revnat.client_ip)
    }
}

/// From the overlay: a packet for a pod on this node goes straight into the pod, past
/// the node's forwarding and the veth's queue, after what the pod's `to_pod` program would
/// have done to it (a backend's reply comes from the frontend) and what a router does (one
/// hop off the TTL, the next hop's Ethernet addresses).
#[inline(always)]
fn to_local_pod(ctx: &TcContext, l4: &L4) -> Reason {
    match lookup!(TWILL_LOCAL_PODS, &l4.flow.dst_ip) {
        Some(pod) => deliver(ctx, l4, &pod),
        None => Reason::Forwarded,
    }
}

/// [`to_local_pod`]'s work, for a pod found in `TWILL_LOCAL_PODS`.
#[inline(always)]
fn deliver(ctx: &TcContext, l4: &L4, pod: &LocalPod) -> Reason {
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

/// From a pod, to another pod: one on this node gets it straight ([`deliver`]), one on another node goes straight to the overlay device the node routes it
/// through, past the node's forwarding. Anything else (the node's own addresses, the
/// world) goes on through the node's stack.
#[inline(always)]
fn pod_to_pod(ctx: &TcContext, l4: &L4) -> Reason {
    let Some(node) = node_config() else {
        return Reason::Forwarded;
    };
    let dst = l4.flow.dst_ip;
    if node.cluster_mask == 0 || dst & node.cluster_mask != node.cluster_net || dst == node.vtep_ip
    {
        return Reason::Forwarded;
    }
    if let Some(pod) = lookup!(TWILL_LOCAL_PODS, &dst) {
        return deliver(ctx, l4, &pod);
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
fn redirect(ctx: &TcContext, protocol: u8, src: u32, dst: u32) -> Reason {
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

/// Replaces an address and a port, keeping the IPv4 and L4 checksums right (the L4 one
/// covers the address through the pseudo-header; a UDP checksum of zero stays zero).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    ip_off: usize,
    old_ip: u32,
    new_ip: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), ()> {
    let udp = if l4.flow.protocol == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR);
    if old_ip != new_ip {
        ctx.l4_csum_replace(
            l4.csum,
            u64::from(old_ip),
            u64::from(new_ip),
            pseudo | udp | 4,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_ip), u64::from(new_ip), 4)
            .map_err(|_| ())?;
        ctx.store(ip_off, &new_ip, 0).map_err(|_| ())?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(l4.csum, u64::from(old_port), u64::from(new_port), udp | 2)
            .map_err(|_| ())?;
        ctx.store(port_off, &new_port, 0).map_err(|_| ())?;
    }
    Ok(())
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

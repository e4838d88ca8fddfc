//! Service load balancing: a packet (tc) or a socket call (cgroup hooks) to a ClusterIP
//! frontend goes to a backend, chosen by the flow's hash or the client's affinity, and a
//! backend's reply comes back from the frontend.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    cty::c_void,
    programs::{SockAddrContext, TcContext},
};
use twill_abi::{
    lb::{
        Affinity, AffinityKey, Backend, BackendKey, FLOW_HAIRPIN, FLOW_NODE_PORT,
        FRONTEND_AFFINITY, FlowKey, Frontend, FrontendKey, IPPROTO_TCP, IPPROTO_UDP, MemberKey,
        RevNat, SCOPE_CLUSTER_IP, SCOPE_NODE_PORT, SCOPE_NODE_PORT_INTERNAL, SockKey, is_node_port,
        pick_slot,
    },
    metrics::Reason,
};

use crate::{
    delivery::hairpin,
    maps::{
        TWILL_AFFINITY, TWILL_BACKENDS, TWILL_CT, TWILL_DNS_LOCAL, TWILL_MEMBERS, TWILL_POD_NETNS,
        TWILL_REVNAT, TWILL_SOCK_NAT, TWILL_SVC, lookup, maybe_service, node_config,
    },
    nat::{record_flow, translate_reply, translate_request},
    parse::L4,
};

/// The frontend a new flow to `ip:port` (wire order) looks for: a ClusterIP's, or, to the
/// node's own address at a port of the NodePort range, the NodePort's (pods and host
/// processes reach their own node's NodePorts, translated where they start instead of
/// where they enter the node). `None`: not a Service address.
#[inline(always)]
fn frontend_key(ip: u32, port: u16, protocol: u8) -> Option<FrontendKey> {
    if maybe_service(ip) {
        return Some(FrontendKey {
            ip,
            port,
            protocol,
            scope: SCOPE_CLUSTER_IP,
        });
    }
    if !is_node_port(port) {
        return None;
    }
    let node = node_config()?;
    (node.node_ip != 0 && ip == node.node_ip).then_some(FrontendKey::node_port(port, protocol))
}

/// The frontend of `key`. For the node's own clients a NodePort is its internal entry when
/// it has one (a Local NodePort: every ready backend), else the NodePort's own.
#[inline(always)]
fn frontend(key: &FrontendKey) -> Option<Frontend> {
    if key.scope == SCOPE_NODE_PORT {
        let internal = FrontendKey {
            scope: SCOPE_NODE_PORT_INTERNAL,
            ..*key
        };
        if let Some(found) = lookup!(TWILL_SVC, &internal) {
            return Some(found);
        }
    }
    lookup!(TWILL_SVC, key)
}

/// From a pod: a packet to a frontend goes to a backend.
#[inline(always)]
pub(crate) fn to_backend(ctx: &TcContext, l4: &L4) -> Reason {
    // Conntrack entries exist only for flows to frontends: inside the service CIDR, or to
    // the node's address in the NodePort range.
    let Some(frontend_key) = frontend_key(l4.flow.dst_ip, l4.flow.dst_port, l4.flow.protocol)
    else {
        return Reason::Forwarded;
    };
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
            let Some(frontend) = frontend(&frontend_key) else {
                return Reason::Forwarded;
            };
            let backend = match local_backend(ctx.as_ptr(), &frontend_key) {
                Some(local) => Some(local),
                None => choose_backend(&l4.flow, l4.flow.src_ip, &frontend),
            };
            let Some(backend) = backend else {
                // No backend: the node's stack refuses it (unreachable route over the
                // service CIDR), so the client learns at once instead of timing out. To
                // the node's address it goes on as any packet to the node does, through
                // the pod's egress policy, and the node's stack refuses it there.
                return if frontend_key.scope == SCOPE_NODE_PORT {
                    Reason::Forwarded
                } else {
                    Reason::NoBackend
                };
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

/// Into a pod: a backend's reply comes from the frontend the client spoke to.
#[inline(always)]
pub(crate) fn from_backend(ctx: &TcContext, l4: &L4) -> Reason {
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

/// The node-local server that takes the frontend's new flows, while its entry is fresh
/// (the server renews it while it serves) and a socket of the node takes its address and
/// port (a server that died has none: its kernel sockets go with the process, so the
/// fallback is at once, not when the entry expires). None: the frontend's own backends
/// take them. `ctx` is the program's context (a packet or a socket call).
#[inline(always)]
fn local_backend(ctx: *mut c_void, key: &FrontendKey) -> Option<Backend> {
    let local = lookup!(TWILL_DNS_LOCAL, key)?;
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if now >= local.alive_until_ns || !bound(ctx, key.protocol, local.ip, local.port) {
        return None;
    }
    Some(Backend {
        ip: local.ip,
        port: local.port,
        _pad: 0,
    })
}

/// Whether a socket in the node's network namespace receives `protocol` to `ip:port`
/// (wire order): a bound UDP socket, a listening TCP one.
#[inline(always)]
fn bound(ctx: *mut c_void, protocol: u8, ip: u32, port: u16) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: 0,
                daddr: ip,
                sport: 0,
                dport: port,
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: `ctx` is this program's context, `tuple` a valid IPv4 tuple of `size` bytes
    // on the stack; a socket found holds a reference, released right below.
    let sk = unsafe {
        if protocol == IPPROTO_TCP {
            aya_ebpf::helpers::bpf_sk_lookup_tcp(ctx, &mut tuple, size, netns, 0)
        } else {
            aya_ebpf::helpers::bpf_sk_lookup_udp(ctx, &mut tuple, size, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is the non-null socket the lookup returned, released once.
    unsafe { aya_ebpf::helpers::bpf_sk_release(sk.cast()) };
    true
}

/// The backend for a new flow: the client's remembered one under session affinity, while
/// it is fresh and still a member; otherwise one picked by the flow's hash.
#[inline(always)]
pub(crate) fn choose_backend(
    flow: &FlowKey,
    client_ip: u32,
    frontend: &Frontend,
) -> Option<Backend> {
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

/// 127.0.0.1 in wire order.
const LOOPBACK: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// A NodePort at `127.0.0.1`, for a socket of the node's own network namespace (a host
/// process; not a pod, whose loopback is its own): `localhost:30080` on a node reaches the
/// NodePort, as with kube-proxy's iptables mode.
#[inline(always)]
fn loopback_node_port(
    ctx: &SockAddrContext,
    ip: u32,
    port: u16,
    protocol: u8,
) -> Option<FrontendKey> {
    if ip != LOOPBACK || !is_node_port(port) {
        return None;
    }
    // SAFETY: the helper reads the network namespace of this context's socket.
    let netns = unsafe { aya_ebpf::helpers::bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if lookup!(TWILL_POD_NETNS, &netns).is_some() {
        return None;
    }
    Some(FrontendKey::node_port(port, protocol))
}

#[inline(always)]
pub(crate) fn socket_to_backend(ctx: &SockAddrContext) -> Reason {
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
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Reason::Forwarded;
    }
    let Some(frontend_key) =
        frontend_key(ip, port, protocol).or_else(|| loopback_node_port(ctx, ip, port, protocol))
    else {
        return Reason::Forwarded;
    };
    let Some(frontend) = frontend(&frontend_key) else {
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
    let backend = match local_backend(ctx.as_ptr(), &frontend_key) {
        Some(local) => Some(local),
        None => choose_backend(&flow, client_ip, &frontend),
    };
    let Some(backend) = backend else {
        return Reason::NoBackend;
    };
    // The socket's translation, for UDP replies (`recvmsg`) and for `getpeername`, which
    // show the frontend, not the backend, as an iptables DNAT's reverse translation does.
    {
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
pub(crate) fn socket_from_backend(ctx: &SockAddrContext) -> Reason {
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

//! NodePorts: a request from outside the cluster to this node's address goes to a
//! backend (with the source translated to the VTEP address unless the traffic policy is
//! Local), and the backend's reply goes back to the client from the NodePort.

use aya_ebpf::programs::TcContext;
use twill_abi::{
    lb::{
        Backend, FLOW_HAIRPIN, FLOW_NODE_PORT, FLOW_SNAT, FRONTEND_LOCAL, FlowKey, FrontendKey,
        SNAT_PORT_COUNT, SNAT_PORT_MIN, is_node_port,
    },
    metrics::Reason,
};

use crate::{
    delivery::{hairpin, redirect},
    flow::Event,
    maps::{TWILL_CT, TWILL_REVNAT, TWILL_SVC, lookup, node_config},
    nat::{record_flow, translate_reply, translate_request},
    parse::L4,
    service::choose_backend,
};

/// On the underlay: a request to one of this node's NodePorts goes to a backend. With
/// `externalTrafficPolicy: Local` the backend is on this node and the client's address is
/// kept: the packet goes on through the node's stack. Otherwise its source becomes this
/// node's VTEP address (so the reply comes back here) and the program sends it on itself:
/// the stack would drop a packet arriving with one of its own addresses as the source.
#[inline(always)]
pub(crate) fn node_port_request(ctx: &TcContext, l4: &L4, ev: &mut Event) -> Reason {
    if !is_node_port(l4.flow.dst_port) {
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
            let frontend_key = FrontendKey::node_port(l4.flow.dst_port, l4.flow.protocol);
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
            ev.new_flow = true;
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

/// On the underlay in BGP-routed mode, where other nodes' backends reply straight to this
/// node's own address (the source of its NodePort flows there): such a reply, at one of
/// the translated source ports, goes back to the client as [`node_port_reply`] sends it.
/// Nothing else arriving from the world is looked up.
#[inline(always)]
pub(crate) fn node_port_reply_from_world(ctx: &TcContext, l4: &L4) -> Reason {
    let Some(node) = node_config() else {
        return Reason::Forwarded;
    };
    if node.vtep_ip != node.node_ip
        || l4.flow.dst_ip != node.node_ip
        || u16::from_be(l4.flow.dst_port) < SNAT_PORT_MIN
    {
        return Reason::Forwarded;
    }
    node_port_reply(ctx, l4)
}

/// From a pod or the overlay: a backend's reply to a NodePort client leaves from the
/// NodePort, to the client, sent on by the program; a pod's reply to itself through a
/// Service (hairpin) goes back to it.
#[inline(always)]
pub(crate) fn node_port_reply(ctx: &TcContext, l4: &L4) -> Reason {
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

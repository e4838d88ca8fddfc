//! Address translation of a flow: its conntrack and reverse entries written and dropped,
//! and its packets rewritten to the backend and back (addresses, ports, checksums).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use twill_abi::lb::{Backend, FLOW_HAIRPIN, FLOW_SNAT, Flow, FlowKey, IPPROTO_UDP, RevNat};

use crate::{
    maps::{TWILL_CT, TWILL_REVNAT},
    parse::{IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4},
};

/// Pins a new flow in conntrack and records its reverse entry: `flags` (`FLOW_*`) and, when
/// the source is translated, the address and port it leaves with (`snat`, else zeros).
/// Without both entries the flow's replies would not be translated back.
#[inline(always)]
pub(crate) fn record_flow(
    l4: &L4,
    backend: Backend,
    flags: u16,
    snat: (u32, u16),
) -> Result<Flow, ()> {
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

/// A pod opening a TCP connection straight to an address and port may reuse the ports of
/// an earlier connection through a Service to the same backend. That flow's reverse entry
/// would then translate the new connection's replies to the Service's address: it goes.
#[inline(always)]
pub(crate) fn forget_stale_reverse(ctx: &TcContext, l4: &L4) {
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

/// A client's packet of a flow: to the backend, and from the translated source if the
/// flow has one.
#[inline(always)]
pub(crate) fn translate_request(ctx: &TcContext, l4: &L4, flow: &Flow) -> Result<(), ()> {
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
pub(crate) fn translate_reply(ctx: &TcContext, l4: &L4, revnat: &RevNat) -> Result<(), ()> {
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

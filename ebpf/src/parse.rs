//! Reading a packet's headers: Ethernet and IPv4 checked, a TCP or UDP flow found, and the
//! header offsets every rewrite uses.

use aya_ebpf::programs::TcContext;
use twill_abi::{
    lb::{FlowKey, IPPROTO_TCP, IPPROTO_UDP},
    metrics::Reason,
};

pub(crate) const ETH_HDR_LEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const IPV4_MIN_HDR_LEN: usize = 20;
pub(crate) const IP_TTL_OFF: usize = ETH_HDR_LEN + 8;
pub(crate) const IP_PROTO_OFF: usize = ETH_HDR_LEN + 9;
pub(crate) const IP_CSUM_OFF: usize = ETH_HDR_LEN + 10;
pub(crate) const IP_SRC_OFF: usize = ETH_HDR_LEN + 12;
pub(crate) const IP_DST_OFF: usize = ETH_HDR_LEN + 16;
pub(crate) const IP_FRAG_OFF: usize = ETH_HDR_LEN + 6;

/// A TCP or UDP packet's flow and where its checksum is.
pub(crate) struct L4 {
    pub(crate) flow: FlowKey,
    /// Offset of the L4 header.
    pub(crate) offset: usize,
    /// Offset of the L4 checksum.
    pub(crate) csum: usize,
}

const TCP_FLAGS_OFF: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

impl L4 {
    /// A TCP segment opening a connection (SYN without ACK).
    #[inline(always)]
    pub(crate) fn opens_tcp(&self, ctx: &TcContext) -> bool {
        self.flow.protocol == IPPROTO_TCP
            && ctx
                .load::<u8>(self.offset + TCP_FLAGS_OFF)
                .is_ok_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }
}

/// Checks the headers. `Ok(Some)` for a TCP/UDP packet that is not a later fragment,
/// `Ok(None)` for other valid IPv4, `Err(reason)` for what is not IPv4 or is malformed.
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext) -> Result<Option<L4>, Reason> {
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

//! The wire format: [`Message`] to bytes and back.
//!
//! OPEN and UPDATE go through `netgauze-bgp-pkt` (capabilities and path attributes are where
//! a codec is big and easy to get subtly wrong). The header, KEEPALIVE, NOTIFICATION and
//! ROUTE-REFRESH are fixed layouts framed here: netgauze's typed NOTIFICATION and
//! ROUTE-REFRESH refuse codes and address families it does not know, and a speaker must
//! still read a NOTIFICATION with a subcode from a newer RFC, and ignore a refresh request
//! for another family.
//!
//! Architecture invariant: no I/O here.

use std::{collections::HashMap, net::IpAddr};

use ipnet::Ipv4Net;
use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily,
        GracefulRestartCapability, MultiProtocolExtensionsCapability,
    },
    nlri::{Ipv4Unicast, Ipv4UnicastAddress},
    notification::BgpNotificationMessage,
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    path_attribute::{
        As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, LocalPreference,
        MpReach, MpUnreach, MultiExitDiscriminator, NextHop, Origin as NgOrigin, PathAttribute,
        PathAttributeValue,
    },
    update::BgpUpdateMessage,
    wire::deserializer::{BgpMessageParsingError, BgpParsingContext},
};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::{WritablePdu as _, reader::SliceReader, traits::ParseFromWithOneInput};

use crate::message::{
    AS_TRANS, AsSegment, Capabilities, GracefulRestart, Message, Notification, Open, Origin,
    PathAttributes, Prefix, Update, error_code,
};

/// Length of the message header: marker (16), length (2), type (1).
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended message capability (RFC 4271 section 4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;

const TYPE_OPEN: u8 = 1;
const TYPE_UPDATE: u8 = 2;
const TYPE_NOTIFICATION: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;
const TYPE_ROUTE_REFRESH: u8 = 5;

/// A received message that cannot be used, with the NOTIFICATION the receiver must send
/// before it closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct DecodeError {
    pub notification: Notification,
    pub detail: String,
}

impl DecodeError {
    fn new(code: u8, subcode: u8, data: Vec<u8>, detail: impl Into<String>) -> Self {
        Self {
            notification: Notification::new(code, subcode, data),
            detail: detail.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{kind} message of {len} bytes is longer than {MAX_MESSAGE_LEN}")]
    TooLong { kind: &'static str, len: usize },
    #[error("prefix {0} cannot be encoded as IPv4 unicast NLRI")]
    BadPrefix(Prefix),
    #[error("encoding the {kind} message: {message}")]
    Codec { kind: &'static str, message: String },
}

/// Checks a message header and returns the whole message's length and its type.
pub fn frame_header(header: &[u8; HEADER_LEN]) -> Result<(usize, u8), DecodeError> {
    if header[..16].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::new(
            error_code::MESSAGE_HEADER,
            1,
            Vec::new(),
            "message header: the marker is not all ones (connection not synchronized)",
        ));
    }
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    let kind = header[18];
    let min = match kind {
        TYPE_OPEN => 29,
        TYPE_UPDATE => 23,
        TYPE_NOTIFICATION => 21,
        TYPE_KEEPALIVE => HEADER_LEN,
        TYPE_ROUTE_REFRESH => 23,
        _ => {
            return Err(DecodeError::new(
                error_code::MESSAGE_HEADER,
                3,
                vec![kind],
                format!("message header: unknown message type {kind}"),
            ));
        }
    };
    let exact = matches!(kind, TYPE_KEEPALIVE | TYPE_ROUTE_REFRESH);
    if len < min || len > MAX_MESSAGE_LEN || (exact && len != min) {
        return Err(DecodeError::new(
            error_code::MESSAGE_HEADER,
            2,
            (len as u16).to_be_bytes().to_vec(),
            format!("message header: bad length {len} for message type {kind}"),
        ));
    }
    Ok((len, kind))
}

/// Decodes one whole message (header included). `asn4`: whether four-octet AS numbers were
/// negotiated, which decides the width of AS_PATH.
pub fn decode(frame: &[u8], asn4: bool) -> Result<Message, DecodeError> {
    let header: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            DecodeError::new(
                error_code::MESSAGE_HEADER,
                2,
                Vec::new(),
                "message shorter than its header",
            )
        })?;
    let (len, kind) = frame_header(header)?;
    if frame.len() != len {
        return Err(DecodeError::new(
            error_code::MESSAGE_HEADER,
            2,
            (len as u16).to_be_bytes().to_vec(),
            format!("message header says {len} bytes, got {}", frame.len()),
        ));
    }
    let body = &frame[HEADER_LEN..];
    match kind {
        TYPE_KEEPALIVE => Ok(Message::Keepalive),
        TYPE_NOTIFICATION => Ok(Message::Notification(Notification::new(
            body[0],
            body[1],
            body[2..].to_vec(),
        ))),
        TYPE_ROUTE_REFRESH => Ok(Message::RouteRefresh {
            afi: u16::from_be_bytes([body[0], body[1]]),
            safi: body[3],
        }),
        _ => {
            let mut ctx = BgpParsingContext::new(
                asn4,
                HashMap::new(),
                HashMap::new(),
                false,
                false,
                false,
                false,
            );
            let parsed = BgpMessage::parse(&mut SliceReader::new(frame), &mut ctx)
                .map_err(|e| from_netgauze_error(kind, e))?;
            let ignored_attributes = ctx.reset_parsing_errors().path_attr_errors().len();
            match parsed {
                BgpMessage::Open(open) => Ok(Message::Open(open_from_wire(&open))),
                BgpMessage::Update(update) => Ok(Message::Update(update_from_wire(
                    &update,
                    ignored_attributes,
                ))),
                other => Err(DecodeError::new(
                    error_code::MESSAGE_HEADER,
                    3,
                    vec![kind],
                    format!("message type {kind} decoded as {:?}", other.get_type()),
                )),
            }
        }
    }
}

fn from_netgauze_error(kind: u8, e: BgpMessageParsingError) -> DecodeError {
    let detail = format!(
        "{} message: {e}",
        if kind == TYPE_OPEN { "OPEN" } else { "UPDATE" }
    );
    let notification = raw_notification(BgpNotificationMessage::from(e));
    DecodeError {
        notification,
        detail,
    }
}

/// netgauze's typed NOTIFICATION as code, subcode and data, read back from its own encoding
/// so that the two can never disagree.
fn raw_notification(n: BgpNotificationMessage) -> Notification {
    let mut buf = Vec::new();
    match BgpMessage::Notification(n).write(&mut buf) {
        Ok(()) if buf.len() >= HEADER_LEN + 2 => Notification::new(
            buf[HEADER_LEN],
            buf[HEADER_LEN + 1],
            buf[HEADER_LEN + 2..].to_vec(),
        ),
        // Only a notification too long for a message fails; its code is all that matters.
        _ => Notification::new(error_code::MESSAGE_HEADER, 0, Vec::new()),
    }
}

fn open_from_wire(open: &BgpOpenMessage) -> Open {
    let mut capabilities = Capabilities::default();
    let mut asn4 = None;
    for BgpOpenMessageParameter::Capabilities(caps) in open.params() {
        for cap in caps.iter() {
            match cap {
                BgpCapability::MultiProtocolExtensions(mp)
                    if mp.address_type() == AddressType::Ipv4Unicast =>
                {
                    capabilities.ipv4_unicast = true;
                }
                BgpCapability::RouteRefresh => capabilities.route_refresh = true,
                BgpCapability::FourOctetAs(c) => asn4 = Some(c.asn4()),
                BgpCapability::GracefulRestartCapability(gr) => {
                    capabilities.graceful_restart = Some(GracefulRestart {
                        restarting: gr.restart(),
                        restart_time: gr.time(),
                        ipv4_unicast: gr
                            .address_families()
                            .iter()
                            .find(|f| f.address_type() == AddressType::Ipv4Unicast)
                            .map(|f| f.forwarding_state()),
                    });
                }
                other => capabilities.ignored.push(match other.code() {
                    Ok(code) => code as u8,
                    Err(code) => code,
                }),
            }
        }
    }
    capabilities.four_octet_as = asn4.is_some();
    Open {
        asn: asn4.unwrap_or(u32::from(open.my_as())),
        hold_time: open.hold_time(),
        router_id: open.bgp_id(),
        capabilities,
    }
}

fn prefix_from_wire(a: &Ipv4UnicastAddress) -> Prefix {
    let net = a.network().address();
    Prefix::new(net.addr(), net.prefix_len()).expect("netgauze checked the prefix length")
}

fn segments_from_as2(segments: &[As2PathSegment]) -> Vec<AsSegment> {
    segments
        .iter()
        .map(|s| {
            let asns = s.as_numbers().iter().map(|&a| u32::from(a)).collect();
            match s.segment_type() {
                AsPathSegmentType::AsSet => AsSegment::Set(asns),
                AsPathSegmentType::AsSequence => AsSegment::Sequence(asns),
            }
        })
        .collect()
}

fn segments_from_as4(segments: &[As4PathSegment]) -> Vec<AsSegment> {
    segments
        .iter()
        .map(|s| {
            let asns = s.as_numbers().to_vec();
            match s.segment_type() {
                AsPathSegmentType::AsSet => AsSegment::Set(asns),
                AsPathSegmentType::AsSequence => AsSegment::Sequence(asns),
            }
        })
        .collect()
}

/// Reconstructs the path from AS_PATH and AS4_PATH of a speaker without four-octet support
/// (RFC 6793 section 4.2.3): AS4_PATH replaces the tail of AS_PATH, unless it is longer.
fn merge_as4_path(as_path: Vec<AsSegment>, as4_path: Vec<AsSegment>) -> Vec<AsSegment> {
    let len = |p: &[AsSegment]| p.iter().map(AsSegment::path_length).sum::<usize>();
    let (old, new) = (len(&as_path), len(&as4_path));
    if new > old {
        return as_path;
    }
    let mut keep = old - new;
    let mut merged = Vec::new();
    for segment in as_path {
        if keep == 0 {
            break;
        }
        match segment {
            AsSegment::Sequence(v) if v.len() > keep => {
                merged.push(AsSegment::Sequence(v[..keep].to_vec()));
                keep = 0;
            }
            other => {
                keep -= other.path_length();
                merged.push(other);
            }
        }
    }
    merged.extend(as4_path);
    merged
}

fn update_from_wire(update: &BgpUpdateMessage, ignored_attributes: usize) -> Update {
    let mut withdrawn: Vec<Prefix> = update
        .withdraw_routes()
        .iter()
        .map(prefix_from_wire)
        .collect();
    let mut nlri: Vec<Prefix> = update.nlri().iter().map(prefix_from_wire).collect();
    let mut origin = None;
    let mut as_path = None;
    let mut as4_path = None;
    let mut next_hop = None;
    let mut med = None;
    let mut local_pref = None;
    for attribute in update.path_attributes() {
        match attribute.value() {
            PathAttributeValue::Origin(o) => {
                origin = Some(match o {
                    NgOrigin::IGP => Origin::Igp,
                    NgOrigin::EGP => Origin::Egp,
                    NgOrigin::Incomplete => Origin::Incomplete,
                });
            }
            PathAttributeValue::AsPath(AsPath::As2PathSegments(s)) => {
                as_path = Some(segments_from_as2(s))
            }
            PathAttributeValue::AsPath(AsPath::As4PathSegments(s)) => {
                as_path = Some(segments_from_as4(s))
            }
            PathAttributeValue::As4Path(p) => as4_path = Some(segments_from_as4(p.segments())),
            PathAttributeValue::NextHop(n) => next_hop = Some(n.next_hop()),
            PathAttributeValue::MultiExitDiscriminator(m) => med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => local_pref = Some(l.metric()),
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast {
                next_hop: mp_next_hop,
                nlri: mp_nlri,
                ..
            }) => {
                if let IpAddr::V4(v4) = mp_next_hop {
                    next_hop = Some(*v4);
                }
                nlri.extend(mp_nlri.iter().map(prefix_from_wire));
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri: mp_withdrawn }) => {
                withdrawn.extend(mp_withdrawn.iter().map(prefix_from_wire));
            }
            // Other families and attributes this speaker does not use.
            _ => {}
        }
    }
    if let Some(as4) = as4_path {
        as_path = as_path.map(|path| merge_as4_path(path, as4));
    }
    let mut treat_as_withdraw = None;
    let attributes = match (origin, as_path, next_hop) {
        (Some(origin), Some(as_path), Some(next_hop)) => Some(PathAttributes {
            origin,
            as_path,
            next_hop,
            med,
            local_pref,
        }),
        (origin, as_path, next_hop) => {
            if !nlri.is_empty() {
                let missing: Vec<&str> = [
                    (origin.is_none(), "ORIGIN"),
                    (as_path.is_none(), "AS_PATH"),
                    (next_hop.is_none(), "NEXT_HOP"),
                ]
                .into_iter()
                .filter_map(|(m, name)| m.then_some(name))
                .collect();
                treat_as_withdraw = Some(format!(
                    "UPDATE without {} for {} prefixes: treated as withdrawn",
                    missing.join(", "),
                    nlri.len()
                ));
            }
            None
        }
    };
    if attributes.is_some() && ignored_attributes > 0 && !nlri.is_empty() {
        // A malformed attribute was dropped by the parser; the path may be wrong.
        treat_as_withdraw = Some(format!(
            "UPDATE with {ignored_attributes} malformed path attributes for {} prefixes: \
             treated as withdrawn",
            nlri.len()
        ));
    }
    if treat_as_withdraw.is_some() {
        withdrawn.append(&mut nlri);
        return Update {
            withdrawn,
            attributes: None,
            nlri,
            treat_as_withdraw,
        };
    }
    Update {
        withdrawn,
        attributes,
        nlri,
        treat_as_withdraw: None,
    }
}

/// Encodes one message. `asn4`: whether four-octet AS numbers were negotiated; without it
/// AS_PATH carries AS_TRANS for large AS numbers and AS4_PATH the real path (RFC 6793).
pub fn encode(message: &Message, asn4: bool) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    match message {
        Message::Keepalive => write_header(&mut out, TYPE_KEEPALIVE, 0),
        Message::Notification(n) => {
            write_header(&mut out, TYPE_NOTIFICATION, 2 + n.data.len());
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
        }
        Message::RouteRefresh { afi, safi } => {
            write_header(&mut out, TYPE_ROUTE_REFRESH, 4);
            out.extend_from_slice(&afi.to_be_bytes());
            out.push(0);
            out.push(*safi);
        }
        Message::Open(open) => {
            BgpMessage::Open(open_to_wire(open))
                .write(&mut out)
                .map_err(|e| EncodeError::Codec {
                    kind: "OPEN",
                    message: format!("{e:?}"),
                })?;
        }
        Message::Update(update) => {
            BgpMessage::Update(update_to_wire(update, asn4)?)
                .write(&mut out)
                .map_err(|e| EncodeError::Codec {
                    kind: "UPDATE",
                    message: format!("{e:?}"),
                })?;
        }
    }
    if out.len() > MAX_MESSAGE_LEN {
        return Err(EncodeError::TooLong {
            kind: match message {
                Message::Update(_) => "UPDATE",
                Message::Open(_) => "OPEN",
                _ => "NOTIFICATION",
            },
            len: out.len(),
        });
    }
    Ok(out)
}

fn write_header(out: &mut Vec<u8>, kind: u8, body_len: usize) {
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&((HEADER_LEN + body_len) as u16).to_be_bytes());
    out.push(kind);
}

fn open_to_wire(open: &Open) -> BgpOpenMessage {
    let caps = &open.capabilities;
    let mut wire = Vec::new();
    if caps.ipv4_unicast {
        wire.push(BgpCapability::MultiProtocolExtensions(
            MultiProtocolExtensionsCapability::new(AddressType::Ipv4Unicast),
        ));
    }
    if caps.route_refresh {
        wire.push(BgpCapability::RouteRefresh);
    }
    if let Some(gr) = &caps.graceful_restart {
        let families: Vec<GracefulRestartAddressFamily> = gr
            .ipv4_unicast
            .map(|f| GracefulRestartAddressFamily::new(f, AddressType::Ipv4Unicast))
            .into_iter()
            .collect();
        wire.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(
                gr.restarting,
                false,
                gr.restart_time & 0x0fff,
                families,
            ),
        ));
    }
    if caps.four_octet_as {
        wire.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
            open.asn,
        )));
    }
    let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS);
    let params = if wire.is_empty() {
        Vec::new()
    } else {
        vec![BgpOpenMessageParameter::Capabilities(wire.into())]
    };
    BgpOpenMessage::new(my_as, open.hold_time, open.router_id, params)
}

fn prefix_to_wire(p: &Prefix) -> Result<Ipv4UnicastAddress, EncodeError> {
    let net = Ipv4Net::new(p.network(), p.prefix()).map_err(|_| EncodeError::BadPrefix(*p))?;
    Ok(Ipv4UnicastAddress::new_no_path_id(
        Ipv4Unicast::from_net(net).map_err(|_| EncodeError::BadPrefix(*p))?,
    ))
}

fn segment_type(s: &AsSegment) -> (AsPathSegmentType, &[u32]) {
    match s {
        AsSegment::Sequence(v) => (AsPathSegmentType::AsSequence, v),
        AsSegment::Set(v) => (AsPathSegmentType::AsSet, v),
    }
}

fn attribute(
    optional: bool,
    transitive: bool,
    extended_length: bool,
    value: PathAttributeValue,
) -> Result<PathAttribute, EncodeError> {
    PathAttribute::from(optional, transitive, false, extended_length, value).map_err(|(_, e)| {
        EncodeError::Codec {
            kind: "UPDATE",
            message: format!("{e:?}"),
        }
    })
}

fn update_to_wire(update: &Update, asn4: bool) -> Result<BgpUpdateMessage, EncodeError> {
    let withdrawn = update
        .withdrawn
        .iter()
        .map(prefix_to_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let nlri = update
        .nlri
        .iter()
        .map(prefix_to_wire)
        .collect::<Result<Vec<_>, _>>()?;
    let mut attributes = Vec::new();
    if let Some(a) = &update.attributes {
        let origin = match a.origin {
            Origin::Igp => NgOrigin::IGP,
            Origin::Egp => NgOrigin::EGP,
            Origin::Incomplete => NgOrigin::Incomplete,
        };
        attributes.push(attribute(
            false,
            true,
            false,
            PathAttributeValue::Origin(origin),
        )?);
        let width = if asn4 { 4 } else { 2 };
        let path_bytes: usize = a
            .as_path
            .iter()
            .map(|s| 2 + width * segment_type(s).1.len())
            .sum();
        let as_path = if asn4 {
            AsPath::As4PathSegments(
                a.as_path
                    .iter()
                    .map(|s| {
                        let (t, v) = segment_type(s);
                        As4PathSegment::new(t, v.to_vec())
                    })
                    .collect(),
            )
        } else {
            AsPath::As2PathSegments(
                a.as_path
                    .iter()
                    .map(|s| {
                        let (t, v) = segment_type(s);
                        let two: Vec<u16> = v
                            .iter()
                            .map(|&asn| u16::try_from(asn).unwrap_or(AS_TRANS))
                            .collect();
                        As2PathSegment::new(t, two)
                    })
                    .collect(),
            )
        };
        attributes.push(attribute(
            false,
            true,
            path_bytes > 255,
            PathAttributeValue::AsPath(as_path),
        )?);
        attributes.push(attribute(
            false,
            true,
            false,
            PathAttributeValue::NextHop(NextHop::new(a.next_hop)),
        )?);
        if let Some(med) = a.med {
            attributes.push(attribute(
                true,
                false,
                false,
                PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(med)),
            )?);
        }
        if let Some(lp) = a.local_pref {
            attributes.push(attribute(
                false,
                true,
                false,
                PathAttributeValue::LocalPreference(LocalPreference::new(lp)),
            )?);
        }
        if !asn4 && a.as_numbers().iter().any(|&asn| asn > u32::from(u16::MAX)) {
            let segments: Vec<As4PathSegment> = a
                .as_path
                .iter()
                .map(|s| {
                    let (t, v) = segment_type(s);
                    As4PathSegment::new(t, v.to_vec())
                })
                .collect();
            let bytes: usize = a
                .as_path
                .iter()
                .map(|s| 2 + 4 * segment_type(s).1.len())
                .sum();
            attributes.push(attribute(
                true,
                true,
                bytes > 255,
                PathAttributeValue::As4Path(As4Path::new(segments)),
            )?);
        }
    }
    Ok(BgpUpdateMessage::new(withdrawn, attributes, nlri))
}

/// The wire length of an UPDATE's NLRI or withdrawn entry for `prefix`.
pub fn prefix_wire_len(prefix: &Prefix) -> usize {
    1 + usize::from(prefix.prefix()).div_ceil(8)
}

/// The bytes an UPDATE takes besides its prefixes: header, the two length fields, and
/// room for this speaker's attributes with an AS_PATH of `path_len` numbers (four octets each,
/// and again in AS4_PATH in the worst case).
pub fn update_overhead(path_len: usize) -> usize {
    HEADER_LEN + 4 + 4 + (4 + 2 + 4 * path_len) * 2 + 7 + 7 + 7
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const MARKER: [u8; 16] = [0xff; 16];

    fn with_header(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = MARKER.to_vec();
        v.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
        v.push(kind);
        v.extend_from_slice(body);
        v
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn keepalive_is_a_bare_header() {
        let bytes = [
            MARKER.as_slice(),
            &[0x00, 0x13], // length 19
            &[0x04],       // type KEEPALIVE
        ]
        .concat();
        assert_eq!(encode(&Message::Keepalive, true).unwrap(), bytes);
        assert_eq!(decode(&bytes, true).unwrap(), Message::Keepalive);
    }

    fn bird_like_open_body() -> Vec<u8> {
        [
            &[0x04][..],                                       // version 4
            &[0xfd, 0xe9],                                     // My AS 65001
            &[0x00, 0x5a],                                     // hold time 90
            &[0xac, 0x1e, 0x00, 0x65],                         // BGP identifier 172.30.0.101
            &[0x1a],                                           // optional parameters length 26
            &[0x02, 0x18],                                     // parameter: capabilities, 24 bytes
            &[0x01, 0x04, 0x00, 0x01, 0x00, 0x01], // multiprotocol: AFI 1 (IPv4), SAFI 1 (unicast)
            &[0x02, 0x00],                         // route refresh
            &[0x40, 0x06, 0x00, 0x78, 0x00, 0x01, 0x01, 0x80], // graceful restart: R=0, 120 s; IPv4 unicast, F=1
            &[0x41, 0x04, 0x00, 0x00, 0xfd, 0xe9],             // four-octet AS 65001
            &[0x50, 0x00], // capability 80: unknown to this speaker
        ]
        .concat()
    }

    #[test]
    fn open_with_capabilities_decodes_and_unknown_ones_are_kept_aside() {
        let frame = with_header(TYPE_OPEN, &bird_like_open_body());
        let Message::Open(open) = decode(&frame, false).unwrap() else {
            panic!("not an OPEN");
        };
        assert_eq!(
            open,
            Open {
                asn: 65001,
                hold_time: 90,
                router_id: Ipv4Addr::new(172, 30, 0, 101),
                capabilities: Capabilities {
                    four_octet_as: true,
                    ipv4_unicast: true,
                    route_refresh: true,
                    graceful_restart: Some(GracefulRestart {
                        restarting: false,
                        restart_time: 120,
                        ipv4_unicast: Some(true),
                    }),
                    ignored: vec![80],
                },
            }
        );
    }

    #[test]
    fn open_encodes_byte_for_byte() {
        let open = Open {
            asn: 65001,
            hold_time: 90,
            router_id: Ipv4Addr::new(172, 30, 0, 101),
            capabilities: Capabilities {
                four_octet_as: true,
                ipv4_unicast: true,
                route_refresh: true,
                graceful_restart: Some(GracefulRestart {
                    restarting: false,
                    restart_time: 120,
                    ipv4_unicast: Some(true),
                }),
                ignored: vec![],
            },
        };
        let mut body = bird_like_open_body();
        body.truncate(body.len() - 2); // without the unknown capability
        body[9] = 0x18; // optional parameters length 24
        body[11] = 0x16; // capabilities 22 bytes
        assert_eq!(
            encode(&Message::Open(open.clone()), true).unwrap(),
            with_header(TYPE_OPEN, &body)
        );
        let Message::Open(back) = decode(&with_header(TYPE_OPEN, &body), false).unwrap() else {
            panic!("not an OPEN");
        };
        assert_eq!(back, open);
    }

    #[test]
    fn four_octet_as_goes_in_the_capability_with_as_trans_in_my_as() {
        let open = Open {
            asn: 4_200_000_000,
            hold_time: 9,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities: Capabilities {
                four_octet_as: true,
                ..Capabilities::default()
            },
        };
        let bytes = encode(&Message::Open(open.clone()), true).unwrap();
        let body = &bytes[HEADER_LEN..];
        assert_eq!(&body[1..3], &[0x5b, 0xa0], "My AS is AS_TRANS 23456");
        assert_eq!(
            &body[12..],
            &[0x41, 0x04, 0xfa, 0x56, 0xea, 0x00],
            "capability 65 carries 4200000000"
        );
        assert_eq!(decode(&bytes, false).unwrap(), Message::Open(open));
    }

    #[test]
    fn open_without_four_octet_capability_takes_my_as() {
        let body = [
            &[0x04][..],
            &[0xfd, 0xea], // My AS 65002
            &[0x00, 0x00], // hold time 0
            &[0x0a, 0x00, 0x00, 0x02],
            &[0x00], // no optional parameters
        ]
        .concat();
        let Message::Open(open) = decode(&with_header(TYPE_OPEN, &body), false).unwrap() else {
            panic!("not an OPEN");
        };
        assert_eq!(open.asn, 65002);
        assert_eq!(open.hold_time, 0);
        assert_eq!(open.capabilities, Capabilities::default());
    }

    #[test]
    fn open_with_version_3_is_refused_with_unsupported_version() {
        let mut body = bird_like_open_body();
        body[0] = 3;
        let err = decode(&with_header(TYPE_OPEN, &body), false).unwrap_err();
        assert_eq!((err.notification.code, err.notification.subcode), (2, 1));
    }

    fn ibgp_update_body() -> Vec<u8> {
        [
            &[0x00, 0x00][..],         // withdrawn routes length 0
            &[0x00, 0x1b],             // path attributes length 27
            &[0x40, 0x01, 0x01, 0x00], // ORIGIN (well-known transitive): IGP
            &[0x40, 0x02, 0x06, 0x02, 0x01, 0x00, 0x00, 0xfd, 0xe9], // AS_PATH: AS_SEQUENCE of 1: 65001 (4 octets)
            &[0x40, 0x03, 0x04, 0xac, 0x1e, 0x00, 0x0b],             // NEXT_HOP 172.30.0.11
            &[0x40, 0x05, 0x04, 0x00, 0x00, 0x00, 0x64],             // LOCAL_PREF 100
            &[0x18, 0x0a, 0xf4, 0x01],                               // NLRI 10.244.1.0/24
        ]
        .concat()
    }

    fn ibgp_update() -> Update {
        Update {
            withdrawn: vec![],
            attributes: Some(PathAttributes {
                origin: Origin::Igp,
                as_path: vec![AsSegment::Sequence(vec![65001])],
                next_hop: Ipv4Addr::new(172, 30, 0, 11),
                med: None,
                local_pref: Some(100),
            }),
            nlri: vec![p("10.244.1.0/24")],
            treat_as_withdraw: None,
        }
    }

    #[test]
    fn update_with_origin_as_path_next_hop_local_pref_round_trips() {
        let frame = with_header(TYPE_UPDATE, &ibgp_update_body());
        assert_eq!(frame.len(), 54);
        assert_eq!(
            encode(&Message::Update(ibgp_update()), true).unwrap(),
            frame
        );
        assert_eq!(
            decode(&frame, true).unwrap(),
            Message::Update(ibgp_update())
        );
    }

    #[test]
    fn two_octet_session_gets_as_trans_and_as4_path() {
        let mut update = ibgp_update();
        update.attributes.as_mut().unwrap().as_path =
            vec![AsSegment::Sequence(vec![4_200_000_000, 65001])];
        update.attributes.as_mut().unwrap().local_pref = None;
        let bytes = encode(&Message::Update(update.clone()), false).unwrap();
        let attrs = &bytes[HEADER_LEN + 4..bytes.len() - 4];
        assert_eq!(
            &attrs[4..4 + 9],
            &[0x40, 0x02, 0x06, 0x02, 0x02, 0x5b, 0xa0, 0xfd, 0xe9],
            "AS_PATH in two octets: AS_TRANS, 65001"
        );
        assert_eq!(
            &attrs[attrs.len() - 13..],
            &[
                0xc0, 0x11, 0x0a, // AS4_PATH, optional transitive, 10 bytes
                0x02, 0x02, 0xfa, 0x56, 0xea, 0x00, 0x00, 0x00, 0xfd, 0xe9
            ]
        );
        assert_eq!(decode(&bytes, false).unwrap(), Message::Update(update));
    }

    #[test]
    fn as4_path_replaces_the_tail_of_as_path() {
        let merged = merge_as4_path(
            vec![AsSegment::Sequence(vec![65010, 23456, 23456])],
            vec![AsSegment::Sequence(vec![4_200_000_000, 4_200_000_001])],
        );
        assert_eq!(
            merged,
            vec![
                AsSegment::Sequence(vec![65010]),
                AsSegment::Sequence(vec![4_200_000_000, 4_200_000_001])
            ]
        );
        // Longer than AS_PATH: ignored.
        let path = vec![AsSegment::Sequence(vec![23456])];
        assert_eq!(
            merge_as4_path(path.clone(), vec![AsSegment::Sequence(vec![1, 2])]),
            path
        );
    }

    #[test]
    fn withdrawal_and_end_of_rib() {
        let withdraw = with_header(
            TYPE_UPDATE,
            &[
                0x00, 0x04, // withdrawn routes length 4
                0x18, 0x0a, 0xf4, 0x01, // 10.244.1.0/24
                0x00, 0x00, // no path attributes
            ],
        );
        let update = Update {
            withdrawn: vec![p("10.244.1.0/24")],
            ..Update::default()
        };
        assert_eq!(
            encode(&Message::Update(update.clone()), true).unwrap(),
            withdraw
        );
        assert_eq!(decode(&withdraw, true).unwrap(), Message::Update(update));

        let eor = with_header(TYPE_UPDATE, &[0x00, 0x00, 0x00, 0x00]);
        assert_eq!(
            encode(&Message::Update(Update::end_of_rib()), true).unwrap(),
            eor
        );
        let Message::Update(back) = decode(&eor, true).unwrap() else {
            panic!("not an UPDATE");
        };
        assert!(back.is_end_of_rib());
    }

    #[test]
    fn multiprotocol_reach_and_unreach_for_ipv4_unicast() {
        let frame = with_header(
            TYPE_UPDATE,
            &[
                0x00, 0x00, // withdrawn routes length 0
                0x00, 0x28, // path attributes length 40
                0x40, 0x01, 0x01, 0x02, // ORIGIN incomplete
                0x40, 0x02, 0x00, // AS_PATH empty (iBGP)
                0x80, 0x0e, 0x0d, // MP_REACH_NLRI, optional, 13 bytes
                0x00, 0x01, 0x01, // AFI IPv4, SAFI unicast
                0x04, 0x0a, 0x00, 0x00, 0x01, // next hop 10.0.0.1
                0x00, // reserved
                0x18, 0x0a, 0xf4, 0x02, // 10.244.2.0/24
                0x80, 0x0f, 0x07, // MP_UNREACH_NLRI, optional, 7 bytes
                0x00, 0x01, 0x01, // AFI IPv4, SAFI unicast
                0x18, 0x0a, 0xf4, 0x03, // 10.244.3.0/24
                0x80, 0x04, 0x04, 0x00, 0x00, 0x00, 0x07, // MULTI_EXIT_DISC 7
            ],
        );
        let Message::Update(update) = decode(&frame, true).unwrap() else {
            panic!("not an UPDATE");
        };
        assert_eq!(update.nlri, vec![p("10.244.2.0/24")]);
        assert_eq!(update.withdrawn, vec![p("10.244.3.0/24")]);
        let attrs = update.attributes.unwrap();
        assert_eq!(attrs.next_hop, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(attrs.origin, Origin::Incomplete);
        assert_eq!(attrs.med, Some(7));
        assert!(attrs.as_path.is_empty());
    }

    #[test]
    fn update_without_next_hop_is_treated_as_withdraw() {
        let frame = with_header(
            TYPE_UPDATE,
            &[
                0x00, 0x00, // withdrawn routes length 0
                0x00, 0x07, // path attributes length 7
                0x40, 0x01, 0x01, 0x00, // ORIGIN IGP
                0x40, 0x02, 0x00, // AS_PATH empty
                0x18, 0x0a, 0xf4, 0x01, // NLRI 10.244.1.0/24
            ],
        );
        let Message::Update(update) = decode(&frame, true).unwrap() else {
            panic!("not an UPDATE");
        };
        assert_eq!(update.withdrawn, vec![p("10.244.1.0/24")]);
        assert!(update.nlri.is_empty());
        assert!(update.treat_as_withdraw.unwrap().contains("NEXT_HOP"));
    }

    #[test]
    fn notification_keeps_codes_it_does_not_know() {
        let hold = with_header(TYPE_NOTIFICATION, &[0x04, 0x00]);
        assert_eq!(
            encode(
                &Message::Notification(Notification::hold_timer_expired()),
                true
            )
            .unwrap(),
            hold
        );
        assert_eq!(
            decode(&hold, true).unwrap(),
            Message::Notification(Notification::hold_timer_expired())
        );
        // Cease with a subcode from after RFC 4486, and a shutdown message (RFC 9003).
        let later = with_header(TYPE_NOTIFICATION, &[0x06, 0x0b, 0x02, b'h', b'i']);
        assert_eq!(
            decode(&later, true).unwrap(),
            Message::Notification(Notification::new(6, 11, vec![2, b'h', b'i']))
        );
    }

    #[test]
    fn route_refresh_names_its_family() {
        let frame = with_header(TYPE_ROUTE_REFRESH, &[0x00, 0x01, 0x00, 0x01]);
        let rr = Message::RouteRefresh { afi: 1, safi: 1 };
        assert_eq!(encode(&rr, true).unwrap(), frame);
        assert_eq!(decode(&frame, true).unwrap(), rr);
        let ipv6 = with_header(TYPE_ROUTE_REFRESH, &[0x00, 0x02, 0x00, 0x01]);
        assert_eq!(
            decode(&ipv6, true).unwrap(),
            Message::RouteRefresh { afi: 2, safi: 1 }
        );
    }

    #[test]
    fn bad_headers_get_the_notification_rfc_4271_names() {
        let mut not_synced = with_header(TYPE_KEEPALIVE, &[]);
        not_synced[3] = 0;
        let long_keepalive = with_header(TYPE_KEEPALIVE, &[0]);
        let unknown_type = with_header(9, &[]);
        let mut too_long = with_header(TYPE_UPDATE, &[0, 0, 0, 0]);
        too_long[16..18].copy_from_slice(&4097u16.to_be_bytes());
        for (frame, subcode) in [
            (not_synced, 1),
            (long_keepalive, 2),
            (unknown_type, 3),
            (too_long, 2),
        ] {
            let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
            let err = frame_header(&header).unwrap_err();
            assert_eq!(
                (err.notification.code, err.notification.subcode),
                (1, subcode),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_attribute_list_gets_an_update_error() {
        // ORIGIN claims 5 bytes but the attribute list has only 1 left.
        let frame = with_header(
            TYPE_UPDATE,
            &[0x00, 0x00, 0x00, 0x04, 0x40, 0x01, 0x05, 0x00],
        );
        let err = decode(&frame, true).unwrap_err();
        assert_eq!(err.notification.code, 3, "{err}");
    }

    #[test]
    fn prefix_lengths_on_the_wire() {
        assert_eq!(prefix_wire_len(&p("10.244.1.0/24")), 4);
        assert_eq!(prefix_wire_len(&p("0.0.0.0/0")), 1);
        assert_eq!(prefix_wire_len(&p("10.1.2.3/32")), 5);
        assert_eq!(prefix_wire_len(&p("10.1.2.0/25")), 5);
    }
}

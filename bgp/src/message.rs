//! BGP messages as plain data: the subset twill speaks (RFC 4271 with IPv4 unicast, RFC 4760
//! multiprotocol IPv4 unicast, RFC 6793 four-octet AS numbers, RFC 2918 route refresh,
//! RFC 4724 graceful restart). The state machine works on these; `codec` turns them into
//! bytes and back.

use std::{fmt, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

/// An IPv4 unicast prefix (NLRI).
pub type Prefix = Ipv4Network;

/// The TCP port BGP speakers listen on.
pub const BGP_PORT: u16 = 179;

/// The two-octet AS number that stands in for a four-octet one (RFC 6793): in My AS of an
/// OPEN, and in AS_PATH towards a speaker without four-octet support.
pub const AS_TRANS: u16 = 23456;

/// The BGP version this speaker speaks.
pub const BGP_VERSION: u8 = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// A request to send the Adj-RIB-Out for one address family again (RFC 2918).
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
}

/// AFI and SAFI of IPv4 unicast, the one address family this speaker exchanges.
pub const AFI_IPV4: u16 = 1;
pub const SAFI_UNICAST: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The speaker's AS: the four-octet capability's when present, else My AS.
    pub asn: u32,
    /// Proposed hold time in seconds (0, or at least 3).
    pub hold_time: u16,
    /// BGP Identifier.
    pub router_id: Ipv4Addr,
    pub capabilities: Capabilities,
}

/// What an OPEN's capabilities say, for the ones this speaker uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Four-octet AS numbers (RFC 6793); the number itself is [`Open::asn`].
    pub four_octet_as: bool,
    /// Multiprotocol extensions for IPv4 unicast (RFC 4760).
    pub ipv4_unicast: bool,
    /// Route refresh (RFC 2918).
    pub route_refresh: bool,
    /// Graceful restart (RFC 4724).
    pub graceful_restart: Option<GracefulRestart>,
    /// Codes of the capabilities received that this speaker does not use (RFC 5492: they
    /// are ignored, not an error). Never encoded.
    pub ignored: Vec<u8>,
}

/// The graceful restart capability (RFC 4724 section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Restart State (R) bit: the speaker has just restarted.
    pub restarting: bool,
    /// Restart Time in seconds (12 bits): how long the peer should keep this speaker's routes
    /// after the session drops.
    pub restart_time: u16,
    /// For IPv4 unicast, when listed: whether its forwarding state was preserved (F bit).
    /// `None`: IPv4 unicast is not listed, so the speaker cannot restart gracefully for it.
    pub ipv4_unicast: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    /// The path of `nlri`; `None` when the update only withdraws.
    pub attributes: Option<PathAttributes>,
    pub nlri: Vec<Prefix>,
    /// Set when received NLRI were moved to `withdrawn` because their path was unusable
    /// (RFC 7606 treat-as-withdraw), saying why.
    pub treat_as_withdraw: Option<String>,
}

impl Update {
    /// The End-of-RIB marker for IPv4 unicast (RFC 4724 section 2): an UPDATE with nothing in
    /// it.
    pub fn end_of_rib() -> Self {
        Self::default()
    }

    pub fn is_end_of_rib(&self) -> bool {
        self.withdrawn.is_empty()
            && self.nlri.is_empty()
            && self.attributes.is_none()
            && self.treat_as_withdraw.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathAttributes {
    pub origin: Origin,
    pub as_path: Vec<AsSegment>,
    /// NEXT_HOP, or the next hop of MP_REACH_NLRI for IPv4 unicast.
    pub next_hop: Ipv4Addr,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF: only ever between iBGP peers.
    pub local_pref: Option<u32>,
}

impl PathAttributes {
    /// The AS numbers of the path in order, sets flattened.
    pub fn as_numbers(&self) -> Vec<u32> {
        self.as_path
            .iter()
            .flat_map(|s| match s {
                AsSegment::Sequence(v) | AsSegment::Set(v) => v.iter().copied(),
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsSegment {
    Sequence(Vec<u32>),
    Set(Vec<u32>),
}

impl AsSegment {
    /// How many AS numbers this segment adds to the path length (a set counts as one).
    pub fn path_length(&self) -> usize {
        match self {
            AsSegment::Sequence(v) => v.len(),
            AsSegment::Set(_) => 1,
        }
    }
}

/// A NOTIFICATION: error code, subcode and data, kept raw so that codes this speaker does
/// not know are still reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// Error codes (RFC 4271 section 4.5, RFC 7313).
pub mod error_code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;
}

/// OPEN message error subcodes (RFC 4271 section 6.2, RFC 5492).
pub mod open_error {
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
}

/// Cease subcodes (RFC 4486).
pub mod cease {
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const CONNECTION_COLLISION: u8 = 7;
}

/// Finite state machine error subcodes (RFC 6608).
pub mod fsm_error {
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Self {
            code,
            subcode,
            data,
        }
    }

    pub fn hold_timer_expired() -> Self {
        Self::new(error_code::HOLD_TIMER_EXPIRED, 0, Vec::new())
    }

    pub fn cease(subcode: u8) -> Self {
        Self::new(error_code::CEASE, subcode, Vec::new())
    }

    /// Bad Peer AS; the data is the My AS field the peer sent (RFC 4271 leaves it empty,
    /// common practice fills it in).
    pub fn bad_peer_as(received: u32) -> Self {
        let my_as = u16::try_from(received).unwrap_or(AS_TRANS);
        Self::new(
            error_code::OPEN_MESSAGE,
            open_error::BAD_PEER_AS,
            my_as.to_be_bytes().to_vec(),
        )
    }

    fn code_name(&self) -> &'static str {
        match self.code {
            error_code::MESSAGE_HEADER => "message header error",
            error_code::OPEN_MESSAGE => "OPEN message error",
            error_code::UPDATE_MESSAGE => "UPDATE message error",
            error_code::HOLD_TIMER_EXPIRED => "hold timer expired",
            error_code::FSM => "finite state machine error",
            error_code::CEASE => "cease",
            error_code::ROUTE_REFRESH => "ROUTE-REFRESH message error",
            _ => "unknown error code",
        }
    }

    fn subcode_name(&self) -> Option<&'static str> {
        Some(match (self.code, self.subcode) {
            (error_code::MESSAGE_HEADER, 1) => "connection not synchronized",
            (error_code::MESSAGE_HEADER, 2) => "bad message length",
            (error_code::MESSAGE_HEADER, 3) => "bad message type",
            (error_code::OPEN_MESSAGE, open_error::UNSUPPORTED_VERSION) => {
                "unsupported version number"
            }
            (error_code::OPEN_MESSAGE, open_error::BAD_PEER_AS) => "bad peer AS",
            (error_code::OPEN_MESSAGE, open_error::BAD_BGP_IDENTIFIER) => "bad BGP identifier",
            (error_code::OPEN_MESSAGE, 4) => "unsupported optional parameter",
            (error_code::OPEN_MESSAGE, open_error::UNACCEPTABLE_HOLD_TIME) => {
                "unacceptable hold time"
            }
            (error_code::OPEN_MESSAGE, 7) => "unsupported capability",
            (error_code::UPDATE_MESSAGE, 1) => "malformed attribute list",
            (error_code::UPDATE_MESSAGE, 2) => "unrecognized well-known attribute",
            (error_code::UPDATE_MESSAGE, 3) => "missing well-known attribute",
            (error_code::UPDATE_MESSAGE, 4) => "attribute flags error",
            (error_code::UPDATE_MESSAGE, 5) => "attribute length error",
            (error_code::UPDATE_MESSAGE, 6) => "invalid ORIGIN attribute",
            (error_code::UPDATE_MESSAGE, 8) => "invalid NEXT_HOP attribute",
            (error_code::UPDATE_MESSAGE, 9) => "optional attribute error",
            (error_code::UPDATE_MESSAGE, 10) => "invalid network field",
            (error_code::UPDATE_MESSAGE, 11) => "malformed AS_PATH",
            (error_code::FSM, fsm_error::UNEXPECTED_IN_OPEN_SENT) => {
                "unexpected message in OpenSent"
            }
            (error_code::FSM, fsm_error::UNEXPECTED_IN_OPEN_CONFIRM) => {
                "unexpected message in OpenConfirm"
            }
            (error_code::FSM, fsm_error::UNEXPECTED_IN_ESTABLISHED) => {
                "unexpected message in Established"
            }
            (error_code::CEASE, 1) => "maximum number of prefixes reached",
            (error_code::CEASE, cease::ADMINISTRATIVE_SHUTDOWN) => "administrative shutdown",
            (error_code::CEASE, cease::PEER_DECONFIGURED) => "peer de-configured",
            (error_code::CEASE, 4) => "administrative reset",
            (error_code::CEASE, cease::CONNECTION_REJECTED) => "connection rejected",
            (error_code::CEASE, 6) => "other configuration change",
            (error_code::CEASE, cease::CONNECTION_COLLISION) => "connection collision resolution",
            (error_code::CEASE, 8) => "out of resources",
            (error_code::CEASE, 9) => "hard reset",
            _ => return None,
        })
    }
}

impl fmt::Display for Notification {
    /// `hold timer expired`, `OPEN message error: bad peer AS`, `cease (subcode 42)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code_name())?;
        match self.subcode_name() {
            Some(name) => write!(f, ": {name}"),
            None if self.code == error_code::HOLD_TIMER_EXPIRED && self.subcode == 0 => Ok(()),
            None if self.subcode == 0 => Ok(()),
            None => write!(f, " (code {}, subcode {})", self.code, self.subcode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_read_as_the_rfc_names_them() {
        let cases = [
            (Notification::hold_timer_expired(), "hold timer expired"),
            (
                Notification::bad_peer_as(65003),
                "OPEN message error: bad peer AS",
            ),
            (
                Notification::cease(cease::ADMINISTRATIVE_SHUTDOWN),
                "cease: administrative shutdown",
            ),
            (
                Notification::new(6, 42, vec![]),
                "cease (code 6, subcode 42)",
            ),
            (
                Notification::new(99, 1, vec![]),
                "unknown error code (code 99, subcode 1)",
            ),
        ];
        for (n, text) in cases {
            assert_eq!(n.to_string(), text);
        }
    }

    #[test]
    fn bad_peer_as_carries_the_received_my_as() {
        assert_eq!(Notification::bad_peer_as(65003).data, vec![0xfd, 0xeb]);
        assert_eq!(
            Notification::bad_peer_as(4_200_000_000).data,
            vec![0x5b, 0xa0]
        );
    }
}

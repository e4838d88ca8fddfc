//! twill's BGP-4 speaker: announces prefixes to a peer and learns the peer's, over IPv4
//! unicast. Not yet wired into `twilld` (see `docs/bgp.md`).
//!
//! - [`message`]: the messages as plain data.
//! - [`codec`]: their wire format. OPEN and UPDATE are encoded and decoded by
//!   `netgauze-bgp-pkt`; the fixed-layout header, KEEPALIVE, NOTIFICATION and ROUTE-REFRESH
//!   are framed here (netgauze's typed NOTIFICATION and ROUTE-REFRESH refuse codes and
//!   families it does not know, which a speaker must still read).
//! - [`fsm`]: the session state machine of RFC 4271 section 8, pure: events in, actions out,
//!   time as timer events. Collision detection, capability negotiation, graceful restart
//!   (RFC 4724) and the Adj-RIBs live here.
//! - [`session`]: the tokio edge: sockets, timers, a listener shared by peers, TCP MD5.
//! - [`socket`]: `TCP_MD5SIG` and the kernel's MD5 drop counters.
//!
//! Why `netgauze-bgp-pkt` for the codec: of the candidates (netgauze-bgp-pkt, zettabgp,
//! routecore), it models every message and capability this speaker needs as types (four-octet
//! AS with AS4_PATH, multiprotocol IPv4 unicast with MP_REACH/MP_UNREACH, route refresh,
//! graceful restart with per-family flags), decodes AS_PATH by a context that says whether
//! four-octet AS numbers were negotiated, keeps unknown capabilities instead of failing
//! (RFC 5492), maps its parse errors to the NOTIFICATION to send, is Apache-2.0 like twill,
//! and brings few dependencies (`ipnet`, `serde`, `strum_macros`). routecore 0.7 needs
//! Rust 1.88, newer than the workspace's 1.87; zettabgp 0.6 would also do, and was passed
//! over for the points above.
//!
//! Architecture invariants: [`message`], [`codec`] and [`fsm`] do no I/O and read no clock.
//! The only `unsafe` is the `setsockopt(TCP_MD5SIG)` call in [`socket`].
#![deny(unsafe_code)]

pub mod codec;
pub mod fsm;
pub mod message;
pub mod session;
pub mod socket;

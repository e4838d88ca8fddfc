//! Answers DNS queries for the Kubernetes cluster zone, following the Kubernetes DNS-Based
//! Service Discovery specification 1.1.0 and, where it leaves room, CoreDNS's `kubernetes`
//! plugin. See `docs/dns.md` for the records served and the choices made.
//!
//! Architecture invariant: this crate does no I/O. It holds no sockets, reads no store and
//! loads no BPF; the DNS server builds a [`Zone`] from a [`ClusterSnapshot`] and asks it
//! [`Zone::answer`] (or [`Zone::answer_bytes`]) for every query. Names the zone does not own
//! come back as [`Outcome::Forward`] for the server to send upstream.
//!
//! All records are IPv4: the input model has no IPv6 addresses yet, so AAAA queries for
//! existing names are NODATA and `ip6.arpa` names are forwarded.
#![forbid(unsafe_code)]

mod model;
mod respond;
mod zone;

pub use hickory_proto;
pub use model::{
    ClusterSnapshot, Endpoint, Pod, PodsMode, Protocol, Service, ServiceKind, ServicePort,
    ZoneConfig,
};
pub use respond::{EncodeError, Outcome, SCHEMA_VERSION, Transport, WireOutcome, encode_within};
pub use zone::{ConfigError, Skipped, Zone};

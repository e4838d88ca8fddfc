//! twill's node-local cluster DNS server, as a library for the binary and its tests:
//! the cluster zone answered from etcd through `twill-dns`, everything else forwarded to
//! upstream resolvers through a cache.
//!
//! Architecture invariant: `twill-dns` decides every answer about the cluster zone; this
//! crate only moves bytes (sockets), keeps the zone current (`source`) and forwards what
//! is not the zone's (`forward`, `cache`).
#![forbid(unsafe_code)]

pub mod answers;
pub mod cache;
pub mod config;
pub mod forward;
pub mod fqdn;
pub mod intercept;
pub mod metrics;
pub mod records;
pub mod server;
pub mod source;

//! The node's pods beyond their addresses (which [`crate::node`] hands out): their records
//! in etcd ([`podsync`]) and the kernel work for them that no CNI call waits for
//! ([`podwork`]).

pub mod podsync;
pub mod podwork;

//! Forwarding names outside the cluster zone to upstream resolvers, through the cache.
//! (Interface fixed here; implementation to come.)

use std::{net::SocketAddr, time::Duration};

use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};

/// How to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Upstream resolvers, tried in order (the next one when one fails or times out).
    pub upstreams: Vec<SocketAddr>,
    /// How long to wait for one upstream's answer before the next.
    pub timeout: Duration,
    /// At most this many cached answers (the oldest used go first).
    pub cache_entries: usize,
    /// Answers are kept this long past their TTL, to serve when every upstream fails
    /// (RFC 8767); zero turns serving stale answers off.
    pub stale_for: Duration,
    /// TTL of a stale answer served (RFC 8767 suggests 30 s).
    pub stale_ttl: Duration,
}

impl ForwardConfig {
    /// `upstreams` with the defaults: 2 s per try, 10,000 cached answers, stale answers
    /// kept a day and served with a 30 s TTL.
    pub fn new(upstreams: Vec<SocketAddr>) -> ForwardConfig {
        ForwardConfig {
            upstreams,
            timeout: Duration::from_secs(2),
            cache_entries: 10_000,
            stale_for: Duration::from_secs(24 * 3600),
            stale_ttl: Duration::from_secs(30),
        }
    }
}

/// Forwards queries upstream, answering from its cache when it can.
pub struct Forwarder {
    config: ForwardConfig,
}

impl Forwarder {
    pub fn new(config: ForwardConfig) -> Forwarder {
        Forwarder { config }
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// The answer to `query` (a name outside the cluster zone): from the cache, or from the
    /// first upstream that answers. The reply carries the query's id and its question as
    /// asked (case kept). Never fails: SERVFAIL when no upstream answers and nothing, not
    /// even stale, is cached.
    pub async fn resolve(&self, query: &Message) -> Message {
        let mut reply = Message::new(0, MessageType::Response, query.metadata.op_code);
        reply.metadata = Metadata::response_from_request(&query.metadata);
        reply.metadata.response_code = ResponseCode::ServFail;
        reply.queries = query.queries.clone();
        reply
    }
}

//! Forwarding names outside the cluster zone to upstream resolvers, through the cache.
//!
//! Each upstream query gets a fresh random ID, a fresh UDP socket (so a fresh source port
//! chosen by the kernel) and a randomised letter case in its name (0x20). A reply counts
//! only if it comes from the upstream's address (the socket is connected), has that ID and
//! repeats the question with exactly that case; anything else is ignored and the wait goes
//! on until the timeout. A truncated UDP reply is asked again over TCP of the same
//! upstream. Timeouts, network errors, SERVFAIL and REFUSED move on to the next upstream;
//! when all fail, a stale cached answer is served (RFC 8767), else SERVFAIL.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use crate::cache::{Cache, CacheKey, CacheLimits, Lookup, recase};

/// The UDP payload size advertised upstream and to clients (DNS Flag Day 2020).
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// At most one "stale answer served" warning per this long; the others are counted.
const STALE_WARN_EVERY: Duration = Duration::from_secs(10);

/// How to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Upstream resolvers, tried in order (the next one when one fails or times out).
    pub upstreams: Vec<SocketAddr>,
    /// How long to wait for one upstream's answer before the next.
    pub timeout: Duration,
    /// At most this many cached answers (the oldest used go first).
    pub cache_entries: usize,
    /// At most this many bytes of cached answers (estimated: wire size, name and a fixed
    /// overhead per answer; the least recently used go first).
    pub cache_bytes: usize,
    /// Answers are kept this long past their TTL, to serve when every upstream fails
    /// (RFC 8767); zero turns serving stale answers off.
    pub stale_for: Duration,
    /// TTL of a stale answer served (RFC 8767 suggests 30 s).
    pub stale_ttl: Duration,
}

impl ForwardConfig {
    /// `upstreams` with the defaults: 2 s per try, 10,000 cached answers and at most
    /// 64 MiB, stale answers kept a day and served with a 30 s TTL.
    pub fn new(upstreams: Vec<SocketAddr>) -> ForwardConfig {
        ForwardConfig {
            upstreams,
            timeout: Duration::from_secs(2),
            cache_entries: 10_000,
            cache_bytes: 64 << 20,
            stale_for: Duration::from_secs(24 * 3600),
            stale_ttl: Duration::from_secs(30),
        }
    }
}

/// Why one upstream did not give a usable answer.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("no answer from {upstream} over {transport} within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        transport: &'static str,
        timeout: Duration,
    },
    #[error("{upstream} over {transport}: {source}")]
    Io {
        upstream: SocketAddr,
        transport: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{upstream} over tcp: reply does not match the query")]
    Mismatch { upstream: SocketAddr },
    #[error("cannot encode the query for {upstream}: {source}")]
    Encode {
        upstream: SocketAddr,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("{upstream} answered {code}")]
    Failed {
        upstream: SocketAddr,
        code: ResponseCode,
    },
}

/// Rate limit state of the stale-answer warning.
struct StaleWarning {
    last: Option<Instant>,
    suppressed: u64,
}

/// Forwards queries upstream, answering from its cache when it can.
pub struct Forwarder {
    config: ForwardConfig,
    cache: Mutex<Cache>,
    stale_warning: Mutex<StaleWarning>,
}

impl Forwarder {
    pub fn new(config: ForwardConfig) -> Forwarder {
        let cache = Cache::new(CacheLimits {
            entries: config.cache_entries,
            bytes: config.cache_bytes,
            stale_for: config.stale_for,
        });
        Forwarder {
            config,
            cache: Mutex::new(cache),
            stale_warning: Mutex::new(StaleWarning {
                last: None,
                suppressed: 0,
            }),
        }
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// Number of answers cached (fresh or stale) and their bytes, as counted against
    /// `cache_bytes`.
    pub fn cache_usage(&self) -> (usize, usize) {
        let cache = self.lock_cache();
        (cache.len(), cache.bytes())
    }

    /// The answer to `query` (a name outside the cluster zone): from the cache, or from the
    /// first upstream that answers. The reply carries the query's id and its question as
    /// asked (case kept). Never fails: SERVFAIL when no upstream answers and nothing, not
    /// even stale, is cached.
    /// The answer to `query` from the cache, while it is fresh; `None` when it must go
    /// upstream ([`Self::resolve`]). Lets the server answer cache hits without a task.
    pub fn cached(&self, query: &Message) -> Option<Message> {
        let [question] = query.queries.as_slice() else {
            return None;
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey::new(question, dnssec_ok, query.metadata.checking_disabled);
        match self.lock_cache().get(&key, Instant::now()) {
            Lookup::Fresh(cached) => Some(client_reply(query, &cached)),
            _ => None,
        }
    }

    pub async fn resolve(&self, query: &Message) -> Message {
        let [question] = query.queries.as_slice() else {
            return error_reply(query, ResponseCode::FormErr);
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey::new(question, dnssec_ok, query.metadata.checking_disabled);
        if let Lookup::Fresh(cached) = self.lock_cache().get(&key, Instant::now()) {
            return client_reply(query, &cached);
        }
        let failure = match self.ask_upstreams(query, question, dnssec_ok).await {
            Ok(answer) => {
                self.lock_cache().insert(key, &answer, Instant::now());
                return client_reply(query, &answer);
            }
            Err(failure) => failure,
        };
        let stale_ttl = u32::try_from(self.config.stale_ttl.as_secs()).unwrap_or(u32::MAX);
        let stale = if self.config.stale_for.is_zero() {
            None
        } else {
            self.lock_cache().get_stale(&key, Instant::now(), stale_ttl)
        };
        match stale {
            Some(stale) => {
                self.warn_stale(question, &failure);
                client_reply(query, &stale)
            }
            None => {
                tracing::debug!(name = %question.name(), qtype = %question.query_type(),
                    error = %failure, "every upstream failed, answering SERVFAIL");
                error_reply(query, ResponseCode::ServFail)
            }
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves at worst a half-updated LRU index; the
        // cache stays usable, so a poisoned lock is taken over.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn warn_stale(&self, question: &Query, failure: &UpstreamError) {
        let mut warning = self
            .stale_warning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if warning
            .last
            .is_some_and(|last| now.duration_since(last) < STALE_WARN_EVERY)
        {
            warning.suppressed += 1;
            return;
        }
        tracing::warn!(
            name = %question.name(),
            qtype = %question.query_type(),
            error = %failure,
            others_since_last_warning = warning.suppressed,
            "every upstream failed: served a stale answer (RFC 8767)"
        );
        warning.last = Some(now);
        warning.suppressed = 0;
    }

    /// The first usable upstream answer, or the last upstream's failure.
    async fn ask_upstreams(
        &self,
        query: &Message,
        question: &Query,
        dnssec_ok: bool,
    ) -> Result<Message, UpstreamError> {
        let mut last = None;
        for &upstream in &self.config.upstreams {
            match self.ask(upstream, query, question, dnssec_ok).await {
                Ok(answer) => match answer.metadata.response_code {
                    code @ (ResponseCode::ServFail | ResponseCode::Refused) => {
                        tracing::debug!(%upstream, %code, "upstream failed, trying the next");
                        last = Some(UpstreamError::Failed { upstream, code });
                    }
                    _ => return Ok(answer),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "upstream failed, trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(UpstreamError::Failed {
            upstream: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            code: ResponseCode::ServFail,
        }))
    }

    /// One upstream: over UDP, then over TCP if the UDP answer is truncated. Each try has
    /// the full timeout.
    async fn ask(
        &self,
        upstream: SocketAddr,
        query: &Message,
        question: &Query,
        dnssec_ok: bool,
    ) -> Result<Message, UpstreamError> {
        let timeout = self.config.timeout;
        let asked = UpstreamQuery::new(query, question, dnssec_ok, upstream)?;
        let answer = tokio::time::timeout(timeout, asked.over_udp(upstream))
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream,
                transport: "udp",
                timeout,
            })??;
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        tracing::debug!(%upstream, name = %question.name(), "truncated over udp, asking over tcp");
        let asked = UpstreamQuery::new(query, question, dnssec_ok, upstream)?;
        tokio::time::timeout(timeout, asked.over_tcp(upstream))
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream,
                transport: "tcp",
                timeout,
            })?
    }
}

/// One query as sent to one upstream: its own ID and its own case of the name.
struct UpstreamQuery {
    id: u16,
    question: Query,
    wire: Vec<u8>,
}

impl UpstreamQuery {
    fn new(
        client: &Message,
        question: &Query,
        dnssec_ok: bool,
        upstream: SocketAddr,
    ) -> Result<UpstreamQuery, UpstreamError> {
        let id: u16 = rand::random();
        let mut name = question.name().clone();
        name.randomize_label_case();
        let mut asked = question.clone();
        asked.set_name(name);
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        // Upstreams are recursive resolvers: always ask for recursion.
        message.metadata.recursion_desired = true;
        message.metadata.checking_disabled = client.metadata.checking_disabled;
        message.add_query(asked.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_PAYLOAD);
        edns.set_version(0);
        edns.set_dnssec_ok(dnssec_ok);
        message.set_edns(edns);
        let wire = message
            .to_vec()
            .map_err(|source| UpstreamError::Encode { upstream, source })?;
        Ok(UpstreamQuery {
            id,
            question: asked,
            wire,
        })
    }

    /// Whether `reply` answers this query: a response with our ID and our question,
    /// letter case included.
    fn accepts(&self, reply: &Message) -> bool {
        reply.metadata.id == self.id
            && reply.metadata.message_type == MessageType::Response
            && reply.metadata.op_code == OpCode::Query
            && matches!(reply.queries.as_slice(), [q]
                if q.name().eq_case(self.question.name())
                    && q.query_type() == self.question.query_type()
                    && q.query_class() == self.question.query_class())
    }

    async fn over_udp(&self, upstream: SocketAddr) -> Result<Message, UpstreamError> {
        let io = |source| UpstreamError::Io {
            upstream,
            transport: "udp",
            source,
        };
        let local = match upstream {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        // A new socket per query: a fresh source port, and connecting it makes the kernel
        // drop datagrams from any other address.
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(upstream).await.map_err(io)?;
        socket.send(&self.wire).await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let len = socket.recv(&mut buf).await.map_err(io)?;
            match Message::from_vec(&buf[..len]) {
                Ok(reply) if self.accepts(&reply) => return Ok(reply),
                Ok(reply) => {
                    tracing::debug!(%upstream, id = reply.metadata.id, "ignored a reply that does not match the query");
                }
                Err(e) => tracing::debug!(%upstream, error = %e, "ignored an unreadable reply"),
            }
        }
    }

    async fn over_tcp(&self, upstream: SocketAddr) -> Result<Message, UpstreamError> {
        let io = |source| UpstreamError::Io {
            upstream,
            transport: "tcp",
            source,
        };
        let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
        let len = u16::try_from(self.wire.len()).expect("a query with one question fits in 64 KiB");
        let mut framed = Vec::with_capacity(self.wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&self.wire);
        stream.write_all(&framed).await.map_err(io)?;
        let len = stream.read_u16().await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.map_err(io)?;
        match Message::from_vec(&buf) {
            Ok(reply) if self.accepts(&reply) => Ok(reply),
            _ => Err(UpstreamError::Mismatch { upstream }),
        }
    }
}

/// A reply header for `query`: its ID, opcode, RD and CD; RA set; with an OPT record
/// (version 0, our payload size, DO copied) if the query had one.
fn reply_shell(query: &Message) -> Message {
    let mut reply = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    reply.metadata = Metadata::response_from_request(&query.metadata);
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    if let Some(edns) = &query.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_UDP_PAYLOAD);
        ours.set_version(0);
        ours.set_dnssec_ok(edns.flags().dnssec_ok);
        reply.set_edns(ours);
    }
    reply
}

pub fn error_reply(query: &Message, code: ResponseCode) -> Message {
    let mut reply = reply_shell(query);
    reply.metadata.response_code = code;
    reply
}

/// The client's reply carrying `answer`'s RCODE and records, with the names written in the
/// question's case as the client asked. AA is not set (the answer comes from a
/// resolver); AD is passed on only if the client asked for DNSSEC (DO or AD, RFC 6840 5.8).
fn client_reply(query: &Message, answer: &Message) -> Message {
    let mut reply = reply_shell(query);
    reply.metadata.response_code = answer.metadata.response_code;
    let wants_ad =
        query.metadata.authentic_data || query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    reply.metadata.authentic_data = wants_ad && answer.metadata.authentic_data;
    let (Some(client_q), Some(answer_q)) = (query.queries.first(), answer.queries.first()) else {
        return reply;
    };
    let (from, to) = (answer_q.name(), client_q.name());
    let recased = |records: &[hickory_proto::rr::Record]| {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.name = recase(&r.name, from, to);
                r
            })
            .collect::<Vec<_>>()
    };
    reply.answers = recased(&answer.answers);
    reply.authorities = recased(&answer.authorities);
    reply.additionals = recased(&answer.additionals);
    reply
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(name: &str) -> Message {
        let mut m = Message::new(4321, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_str(name).expect("valid"),
            RecordType::A,
        ));
        m
    }

    /// The server spawns one task per query, so the future must be `Send` (no cache lock
    /// held across an await).
    #[test]
    fn resolve_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let forwarder = Forwarder::new(ForwardConfig::new(vec![]));
        let q = query("www.example.");
        is_send(&forwarder.resolve(&q));
    }

    #[test]
    fn no_upstreams_is_servfail_with_the_clients_id_and_case() {
        let forwarder = Forwarder::new(ForwardConfig::new(vec![]));
        let q = query("WwW.Example.");
        let reply = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(forwarder.resolve(&q));
        assert_eq!(reply.metadata.id, 4321);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.queries[0].name().eq_case(q.queries[0].name()));
    }

    #[test]
    fn upstream_queries_get_fresh_ids_and_mixed_case() {
        let client = query("abcdefghijklmnop.qrstuvwxyz.example.");
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
        let asked: Vec<UpstreamQuery> = (0..20)
            .map(|_| {
                UpstreamQuery::new(&client, &client.queries[0], false, upstream).expect("encodes")
            })
            .collect();
        let ids: std::collections::HashSet<u16> = asked.iter().map(|q| q.id).collect();
        assert!(ids.len() > 15, "ids repeat too often: {ids:?}");
        let names: std::collections::HashSet<String> = asked
            .iter()
            .map(|q| q.question.name().to_string())
            .collect();
        assert!(names.len() > 15, "case is not randomised: {names:?}");
        for q in &asked {
            assert_eq!(
                q.question.name(),
                client.queries[0].name(),
                "same name, ignoring case"
            );
            let sent = Message::from_vec(&q.wire).expect("decodes");
            assert!(sent.metadata.recursion_desired);
            assert_eq!(
                sent.edns.as_ref().map(Edns::max_payload),
                Some(EDNS_UDP_PAYLOAD)
            );
        }
    }

    #[test]
    fn replies_must_repeat_id_and_exact_case() {
        let client = query("www.example.");
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
        let asked =
            UpstreamQuery::new(&client, &client.queries[0], false, upstream).expect("encodes");
        let reply_to = |id: u16, name: &Name| {
            let mut m = Message::new(id, MessageType::Response, OpCode::Query);
            m.add_query(Query::query(name.clone(), RecordType::A));
            m
        };
        assert!(asked.accepts(&reply_to(asked.id, asked.question.name())));
        assert!(!asked.accepts(&reply_to(asked.id.wrapping_add(1), asked.question.name())));
        let mut other_case = asked.question.name().to_lowercase();
        if other_case.eq_case(asked.question.name()) {
            other_case = Name::from_str("WWW.EXAMPLE.").expect("valid");
        }
        assert!(!asked.accepts(&reply_to(asked.id, &other_case)));
        let mut not_a_response = reply_to(asked.id, asked.question.name());
        not_a_response.metadata.message_type = MessageType::Query;
        assert!(!asked.accepts(&not_a_response));
    }
}

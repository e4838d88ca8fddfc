//! Forwarding names outside the cluster zone to upstream resolvers, through the cache.
//!
//! Each upstream query gets a fresh random ID, a fresh UDP socket (so a fresh source port
//! chosen by the kernel) and a randomised letter case in its name (0x20). A reply counts
//! only if it comes from the upstream's address (the socket is connected), has that ID and
//! repeats the question with exactly that case; anything else is ignored and the wait goes
//! on until the timeout. A truncated UDP reply is asked again over TCP of the same
//! upstream. Timeouts, network errors, SERVFAIL and REFUSED move on to the next upstream;
//! when all fail, a stale cached answer is served (RFC 8767), else SERVFAIL.
//!
//! A query whose cached answer has expired does not wait for the upstreams longer than
//! the client response timer (RFC 8767 5): then the stale answer goes out, and the upstream
//! query goes on in a task of its own to refresh the cache. There is one such refresh per
//! answer at a time; queries meanwhile wait for it. When it fails, the stale answer is
//! served at once, without asking again, until the failure recheck timer runs out.

use std::{
    collections::HashMap,
    fmt::Display,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::Name;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::watch,
};
use twill_dns::encode_within;

use crate::answers;
use crate::cache::{Cache, CacheKey, CacheLimits, Lookup, recase};
use crate::metrics::{self, Stats};

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
    /// With an expired answer cached, a query waits this long for the upstreams, then gets
    /// the stale answer while the upstream query goes on (RFC 8767's client response timer,
    /// suggested 1.8 s); zero sends the stale answer at once.
    pub stale_client_timeout: Duration,
    /// After every upstream failed to refresh an expired answer, it is served stale at
    /// once, without asking them, for this long (RFC 8767's failure recheck timer,
    /// suggested 30 s); zero asks them every time.
    pub stale_recheck: Duration,
}

impl ForwardConfig {
    /// `upstreams` with the defaults: 2 s per try, 10,000 cached answers and at most
    /// 64 MiB, stale answers kept a day and served with a 30 s TTL after 400 ms without an
    /// upstream answer, or at once for 30 s after every upstream failed.
    pub fn new(upstreams: Vec<SocketAddr>) -> ForwardConfig {
        ForwardConfig {
            upstreams,
            timeout: Duration::from_secs(2),
            cache_entries: 10_000,
            cache_bytes: 64 << 20,
            stale_for: Duration::from_secs(24 * 3600),
            stale_ttl: Duration::from_secs(30),
            stale_client_timeout: Duration::from_millis(400),
            stale_recheck: Duration::from_secs(30),
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

/// What the refresh of an expired answer came to, once it is over: the upstream's answer,
/// or why every upstream failed.
type Refreshed = Option<Arc<Result<Message, UpstreamError>>>;

/// Forwards queries upstream, answering from its cache when it can.
pub struct Forwarder {
    config: ForwardConfig,
    cache: Mutex<Cache>,
    stale_warning: Mutex<StaleWarning>,
    /// The refreshes of expired answers under way, by key.
    refreshing: Mutex<HashMap<CacheKey, watch::Receiver<Refreshed>>>,
    /// What is counted for `/metrics` (shared with the server).
    stats: Arc<Stats>,
}

/// Takes a refresh off [`Forwarder::refreshing`] when it ends, also when its task is
/// dropped before it ends (the runtime stops).
struct RefreshDone {
    forwarder: Arc<Forwarder>,
    key: CacheKey,
}

impl Drop for RefreshDone {
    fn drop(&mut self) {
        lock(&self.forwarder.refreshing).remove(&self.key);
    }
}

/// `mutex`, locked. What the forwarder keeps behind locks stays usable after a panic
/// while a lock was held (at worst a half-updated LRU index), so a poisoned lock is taken
/// over.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            refreshing: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
        }
    }

    /// The counters of this forwarder and of the server that uses it.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// Number of answers cached (fresh or stale) and their bytes, as counted against
    /// `cache_bytes`.
    pub fn cache_usage(&self) -> (usize, usize) {
        let cache = lock(&self.cache);
        (cache.len(), cache.bytes())
    }

    /// The answer to `query` from the cache, while it is fresh; `None` when it must go
    /// upstream ([`Self::resolve`]). Lets the server answer cache hits without a task.
    pub fn cached(&self, query: &Message) -> Option<Message> {
        let [question] = query.queries.as_slice() else {
            return None;
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey::new(question, dnssec_ok, query.metadata.checking_disabled);
        match lock(&self.cache).get(&key, Instant::now()) {
            Lookup::Fresh(cached) => Some(client_reply(query, &cached)),
            _ => None,
        }
    }

    /// The encoded reply to `query` from a reply kept encoded ([`Self::cached_wire`]) for
    /// queries with its key, while the answer is fresh: `wire` is the query as received,
    /// `query_key` its key. The caller has checked that no FQDNPolicy selects the client.
    pub fn cached_encoded(&self, query_key: &answers::Key, wire: &[u8]) -> Option<Vec<u8>> {
        lock(&self.cache).get_encoded(query_key.bytes(), wire, Instant::now())
    }

    /// The reply to `query` (received as `wire`, with key `query_key`) from the cache while
    /// the answer is fresh, encoded within `limit` bytes; `None` when it must go upstream
    /// ([`Self::resolve`]), or does not encode. The reply is kept encoded for
    /// [`Self::cached_encoded`] when, patched, it says what this long way says whatever the
    /// letter case of the next query's name ([`encoded_reply`]); otherwise hits for that
    /// query key keep taking the long way.
    pub fn cached_wire(
        &self,
        query: &Message,
        wire: &[u8],
        query_key: &answers::Key,
        limit: usize,
    ) -> Option<Vec<u8>> {
        let [question] = query.queries.as_slice() else {
            return None;
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey::new(question, dnssec_ok, query.metadata.checking_disabled);
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        if let Some(bytes) = cache.get_encoded(query_key.bytes(), wire, now) {
            return Some(bytes);
        }
        if cache.may_keep_encoded(&key, query_key.bytes()) {
            let stored = cache.get_as_stored(&key, now)?;
            let name_end = query_key.name_end();
            let reply = encoded_reply(query, &stored, name_end, limit)
                .filter(|kept| kept[12..name_end].eq_ignore_ascii_case(&wire[12..name_end]));
            let kept = reply.is_some();
            if cache.keep_encoded(&key, query_key.bytes(), reply.map(|r| (r, name_end)))
                && kept
                && let Some(bytes) = cache.get_encoded(query_key.bytes(), wire, now)
            {
                return Some(bytes);
            }
        }
        let Lookup::Fresh(cached) = cache.get(&key, now) else {
            return None;
        };
        drop(cache);
        encode_within(&client_reply(query, &cached), limit).ok()
    }

    /// The answer to `query` (a name outside the cluster zone): from the cache, or from the
    /// first upstream that answers. The reply carries the query's id and its question as
    /// asked (case kept). Never fails: SERVFAIL when no upstream answers and nothing, not
    /// even stale, is cached. An expired answer is refreshed in a task of its own
    /// ([`Self::refresh`]), so that it can go on after the stale answer is sent.
    pub async fn resolve(self: &Arc<Self>, query: &Message) -> Message {
        let [question] = query.queries.as_slice() else {
            return error_reply(query, ResponseCode::FormErr);
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey::new(question, dnssec_ok, query.metadata.checking_disabled);
        let cached = lock(&self.cache).get(&key, Instant::now());
        match cached {
            Lookup::Fresh(cached) => return client_reply(query, &cached),
            Lookup::Stale => return self.resolve_expired(query, question, key).await,
            Lookup::Miss => {}
        }
        let failure = match self.ask_upstreams(query, question, dnssec_ok).await {
            Ok(answer) => {
                lock(&self.cache).insert(key, &answer, Instant::now());
                return client_reply(query, &answer);
            }
            Err(failure) => failure,
        };
        self.stale_or_servfail(query, question, &key, &failure)
    }

    /// [`Self::resolve`] for a query whose cached answer (under `key`) has expired: the
    /// refreshed answer if it comes within `stale_client_timeout`, else the stale one; the
    /// stale one at once if every upstream failed within `stale_recheck`.
    async fn resolve_expired(
        self: &Arc<Self>,
        query: &Message,
        question: &Query,
        key: CacheKey,
    ) -> Message {
        if lock(&self.cache).failed_recently(&key, Instant::now())
            && let Some(stale) = self.stale_reply(
                query,
                question,
                &key,
                &"every upstream failed within serve_stale_recheck_seconds",
            )
        {
            return stale;
        }
        let mut refreshed = self.refresh(&key, query);
        let timer = self.config.stale_client_timeout;
        let waited = tokio::time::timeout(timer, async {
            refreshed
                .wait_for(Option::is_some)
                .await
                .map(|outcome| outcome.clone())
        })
        .await;
        let outcome = match waited {
            Ok(Ok(outcome)) => outcome,
            // The refresh's task was dropped before it ended (the runtime stops).
            Ok(Err(_)) => None,
            Err(_) => {
                let why = format!("no upstream answered within {timer:?}");
                if let Some(stale) = self.stale_reply(query, question, &key, &why) {
                    return stale;
                }
                // Gone from the cache meanwhile: nothing to send but what comes.
                refreshed
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|outcome| outcome.clone())
            }
        };
        match outcome.as_deref() {
            Some(Ok(answer)) => client_reply(query, answer),
            Some(Err(failure)) => self.stale_or_servfail(query, question, &key, failure),
            None => self.stale_or_servfail(query, question, &key, &"the refresh was cancelled"),
        }
    }

    /// The refresh of the expired answer for `key` under way, or a new one asking the
    /// upstreams as `query` does. It runs in a task of its own, stores what the upstream
    /// answers (or notes that every upstream failed, for the recheck timer), and then tells
    /// every receiver of the channel returned.
    fn refresh(self: &Arc<Self>, key: &CacheKey, query: &Message) -> watch::Receiver<Refreshed> {
        let mut refreshing = lock(&self.refreshing);
        if let Some(under_way) = refreshing.get(key) {
            return under_way.clone();
        }
        let (done, refreshed) = watch::channel(None);
        refreshing.insert(key.clone(), refreshed.clone());
        drop(refreshing);
        let guard = RefreshDone {
            forwarder: Arc::clone(self),
            key: key.clone(),
        };
        let query = query.clone();
        tokio::spawn(async move {
            let forwarder = &guard.forwarder;
            let key = &guard.key;
            let Some(question) = query.queries.first() else {
                return;
            };
            let outcome = forwarder
                .ask_upstreams(&query, question, key.dnssec_ok)
                .await;
            let now = Instant::now();
            match &outcome {
                Ok(answer) => {
                    lock(&forwarder.cache).insert(key.clone(), answer, now);
                }
                Err(_) => {
                    lock(&forwarder.cache).note_failure(key, now, forwarder.config.stale_recheck)
                }
            }
            done.send_replace(Some(Arc::new(outcome)));
            drop(guard);
        });
        refreshed
    }

    /// The stale answer to `query` (under `key`) with `failure` logged, or SERVFAIL.
    fn stale_or_servfail(
        &self,
        query: &Message,
        question: &Query,
        key: &CacheKey,
        failure: &dyn Display,
    ) -> Message {
        if let Some(stale) = self.stale_reply(query, question, key, failure) {
            return stale;
        }
        tracing::debug!(name = %question.name(), qtype = %question.query_type(),
            error = %failure, "every upstream failed, answering SERVFAIL");
        error_reply(query, ResponseCode::ServFail)
    }

    /// The stale answer to `query` (under `key`), with every TTL `stale_ttl`, and a warning
    /// saying `why`; `None` when there is none, or serving stale answers is off.
    fn stale_reply(
        &self,
        query: &Message,
        question: &Query,
        key: &CacheKey,
        why: &dyn Display,
    ) -> Option<Message> {
        if self.config.stale_for.is_zero() {
            return None;
        }
        let stale_ttl = u32::try_from(self.config.stale_ttl.as_secs()).unwrap_or(u32::MAX);
        let stale = lock(&self.cache).get_stale(key, Instant::now(), stale_ttl)?;
        self.stats.stale();
        self.warn_stale(question, why);
        Some(client_reply(query, &stale))
    }

    fn warn_stale(&self, question: &Query, why: &dyn Display) {
        let mut warning = lock(&self.stale_warning);
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
            reason = %why,
            others_since_last_warning = warning.suppressed,
            "served a stale answer (RFC 8767)"
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
            let started = Instant::now();
            let asked = self.ask(upstream, query, question, dnssec_ok).await;
            let took = started.elapsed();
            match asked {
                Ok(answer) => match answer.metadata.response_code {
                    code @ (ResponseCode::ServFail | ResponseCode::Refused) => {
                        self.stats.upstream(metrics::Upstream::Failed, took);
                        tracing::debug!(%upstream, %code, "upstream failed, trying the next");
                        last = Some(UpstreamError::Failed { upstream, code });
                    }
                    _ => {
                        self.stats.upstream(metrics::Upstream::Answered, took);
                        return Ok(answer);
                    }
                },
                Err(e) => {
                    let outcome = match e {
                        UpstreamError::Timeout { .. } => metrics::Upstream::Timeout,
                        _ => metrics::Upstream::Error,
                    };
                    self.stats.upstream(outcome, took);
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

/// The reply to `query` from the cached answer `stored` (TTLs as stored), encoded to be
/// kept for every query with the same key (`answers::key`: the same header bits, question,
/// type, class and OPT record, over the same transport), to be sent with the asker's id
/// and question bytes patched in; `name_end` is where the query's name ends.
///
/// Made for the query in lower case, where every name the long way writes in the client's
/// case ([`client_reply`]: the question, and owner names at or below it) is compressed
/// against the question, so it takes the asker's case from the patched question. `None`
/// when that is not so, checked by patching in the question in upper case and comparing
/// with the long way's reply to it: the same message (names compared without case), and
/// those names in the same case. A name outside the question's that is compressed against
/// part of it also takes the asker's case there, where the long way keeps the upstream's;
/// names compare without case (RFC 4343), so that is the same answer. Also `None` when the
/// query has the DO bit or EDNS options, or when the reply does not fit in `limit` (the
/// long way cuts it, [`encode_within`]).
fn encoded_reply(
    query: &Message,
    stored: &Message,
    name_end: usize,
    limit: usize,
) -> Option<Vec<u8>> {
    const HEADER: usize = 12;
    if let Some(edns) = &query.edns
        && (edns.flags().dnssec_ok || !edns.options().as_ref().is_empty())
    {
        return None;
    }
    let [question] = query.queries.as_slice() else {
        return None;
    };
    let name = question.name();
    let upper_name = Name::from_labels(name.iter().map(|label| label.to_ascii_uppercase()))
        .ok()
        .map(|mut upper| {
            upper.set_fqdn(name.is_fqdn());
            upper
        })?;
    let asked = |name: Name| {
        let mut asked = query.clone();
        let mut question = question.clone();
        question.set_name(name);
        asked.queries = vec![question];
        client_reply(&asked, stored)
    };
    let lower = asked(name.to_lowercase()).to_vec().ok()?;
    if lower.len() > limit || lower.len() < name_end {
        return None;
    }
    let long_way = asked(upper_name.clone());
    let mut patched = lower.clone();
    patched[HEADER..name_end].make_ascii_uppercase();
    let patched = Message::from_vec(&patched).ok()?;
    let in_askers_case = |m: &Message| -> Vec<Name> {
        let records = m.answers.iter().chain(&m.authorities).chain(&m.additionals);
        m.queries
            .iter()
            .map(|q| q.name().clone())
            .chain(records.map(|r| r.name.clone()))
            .filter(|owner| upper_name.zone_of(owner))
            .collect()
    };
    let same = patched == long_way
        && in_askers_case(&patched)
            .iter()
            .zip(&in_askers_case(&long_way))
            .all(|(ours, theirs)| ours.eq_case(theirs));
    same.then_some(lower)
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

    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(name: &str) -> Message {
        let mut m = Message::new(4321, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("valid"),
            RecordType::A,
        ));
        m
    }

    /// The server spawns one task per query, so the future must be `Send` (no cache lock
    /// held across an await).
    #[test]
    fn resolve_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let forwarder = Arc::new(Forwarder::new(ForwardConfig::new(vec![])));
        let q = query("www.example.");
        is_send(&forwarder.resolve(&q));
    }

    #[test]
    fn no_upstreams_is_servfail_with_the_clients_id_and_case() {
        let forwarder = Arc::new(Forwarder::new(ForwardConfig::new(vec![])));
        let q = query("WwW.Example.");
        let reply = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(forwarder.resolve(&q));
        assert_eq!(reply.metadata.id, 4321);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.queries[0].name().eq_case(q.queries[0].name()));
    }

    /// An answer as an upstream sends it for `qname` (in the upstream's 0x20 case).
    fn upstream_answer(qname: &str, rcode: ResponseCode) -> Message {
        use hickory_proto::rr::{RData, Record, rdata};
        let name = |s: &str| Name::from_ascii(s).expect("valid");
        let mut m = Message::new(99, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.metadata.recursion_available = true;
        m.metadata.authentic_data = true;
        m.add_query(Query::query(name(qname), RecordType::A));
        if rcode == ResponseCode::NoError {
            m.add_answer(Record::from_rdata(
                name(qname),
                300,
                RData::CNAME(rdata::CNAME(name("edge.cdn.example.net."))),
            ));
            m.add_answer(Record::from_rdata(
                name("edge.cdn.example.net."),
                20,
                RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, 9))),
            ));
            m.add_additional(Record::from_rdata(
                name(&format!("extra.{qname}")),
                20,
                RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, 10))),
            ));
        } else {
            m.add_authority(Record::from_rdata(
                name("EXample.org."),
                300,
                RData::SOA(rdata::SOA::new(
                    name("ns.example.org."),
                    name("hostmaster.example.org."),
                    1,
                    3600,
                    600,
                    86400,
                    60,
                )),
            ));
        }
        m
    }

    /// What the server gets from the cache for `query` the fast way (`None`: no reply is
    /// kept) and the long way, both encoded within `limit`.
    fn both_ways(
        forwarder: &Forwarder,
        query: &Message,
        limit: usize,
    ) -> (Option<Vec<u8>>, Vec<u8>) {
        let wire = query.to_vec().expect("encodes");
        let key = answers::key(&wire, 0).expect("a plain question");
        let first = forwarder
            .cached_wire(query, &wire, &key, limit)
            .expect("fresh");
        let long_way =
            encode_within(&forwarder.cached(query).expect("fresh"), limit).expect("encodes");
        let fast = forwarder.cached_encoded(&key, &wire);
        if fast.is_none() {
            assert_eq!(first, long_way, "not kept: the long way");
        }
        (fast, long_way)
    }

    /// The names a client sees in the case it asked: the question, owners at or below it.
    fn in_askers_case(m: &Message) -> Vec<String> {
        let q = m.queries[0].name();
        let records = m.answers.iter().chain(&m.authorities).chain(&m.additionals);
        std::iter::once(q.clone())
            .chain(records.map(|r| r.name.clone()).filter(|n| q.zone_of(n)))
            .map(|n| n.to_string())
            .collect()
    }

    /// `name` with each letter's case drawn at random.
    fn random_case(name: &str) -> String {
        name.chars()
            .map(|c| {
                if rand::random::<bool>() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    }

    #[test]
    fn kept_replies_say_what_the_long_way_says() {
        let forwarder = Forwarder::new(ForwardConfig::new(vec![]));
        for (upstream_case, rcode) in [
            ("wWw.ExaMple.ORG.", ResponseCode::NoError),
            ("NoPe.example.Org.", ResponseCode::NXDomain),
        ] {
            let answer = upstream_answer(upstream_case, rcode);
            let asked = Query::query(Name::from_ascii(upstream_case).unwrap(), RecordType::A);
            lock(&forwarder.cache).insert(
                CacheKey::new(&asked, false, false),
                &answer,
                Instant::now(),
            );
            // Each shape of query (EDNS or not, RD, AD, payload sizes) in many cases: the
            // first asker's reply is kept, the others get it patched.
            for shape in 0..4 {
                for n in 0..20 {
                    let case = match n {
                        0 => upstream_case.to_ascii_lowercase(),
                        1 => upstream_case.to_ascii_uppercase(),
                        _ => random_case(upstream_case),
                    };
                    let mut q = query(&case);
                    q.metadata.id = 1000 + n;
                    q.metadata.recursion_desired = shape != 1;
                    q.metadata.authentic_data = shape == 2;
                    if shape >= 2 {
                        let mut edns = Edns::new();
                        edns.set_max_payload(1232 + shape);
                        q.set_edns(edns);
                    }
                    let (fast, long_way) = both_ways(&forwarder, &q, 1232);
                    let fast = Message::from_vec(&fast.expect("kept")).expect("decodes");
                    let long_way = Message::from_vec(&long_way).expect("decodes");
                    assert_eq!(fast, long_way, "{case} shape {shape}");
                    assert_eq!(in_askers_case(&fast), in_askers_case(&long_way));
                    assert_eq!(fast.queries[0].name().to_string(), case);
                    assert_eq!(fast.metadata.id, 1000 + n);
                }
            }
        }
    }

    #[test]
    fn replies_that_would_differ_are_not_kept() {
        use hickory_proto::rr::{RData, Record, rdata};
        let forwarder = Forwarder::new(ForwardConfig::new(vec![]));
        // 130 records for the name: past hickory's 120 compressed names, the owners are
        // written out, in the stored (lower) case, where the client's case is due.
        let mut many = upstream_answer("many.example.org.", ResponseCode::NoError);
        many.answers.clear();
        many.additionals.clear();
        for i in 0..130u8 {
            many.add_answer(Record::from_rdata(
                Name::from_ascii("many.example.org.").unwrap(),
                60,
                RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, i))),
            ));
        }
        let asked = Query::query(
            Name::from_ascii("many.example.org.").unwrap(),
            RecordType::A,
        );
        lock(&forwarder.cache).insert(CacheKey::new(&asked, false, false), &many, Instant::now());
        let (fast, long_way) = both_ways(&forwarder, &query("MaNy.example.org."), 65_535);
        assert_eq!(fast, None);
        let long_way = Message::from_vec(&long_way).unwrap();
        assert!(
            long_way.answers[129]
                .name
                .eq_case(&Name::from_ascii("MaNy.example.org.").unwrap())
        );

        // The DO bit, EDNS options, and replies that do not fit are not kept either.
        let answer = upstream_answer("www.example.org.", ResponseCode::NoError);
        let asked = Query::query(Name::from_ascii("www.example.org.").unwrap(), RecordType::A);
        for dnssec_ok in [true, false] {
            lock(&forwarder.cache).insert(
                CacheKey::new(&asked, dnssec_ok, false),
                &answer,
                Instant::now(),
            );
        }
        let mut with_do = query("www.example.org.");
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        with_do.set_edns(edns);
        assert_eq!(both_ways(&forwarder, &with_do, 1232).0, None);
        let mut with_cookie = query("www.example.org.");
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![7; 8],
            ));
        with_cookie.set_edns(edns);
        assert_eq!(both_ways(&forwarder, &with_cookie, 1232).0, None);
        let (fast, long_way) = both_ways(&forwarder, &query("www.example.org."), 60);
        assert_eq!(fast, None);
        assert!(Message::from_vec(&long_way).unwrap().metadata.truncation);
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
            other_case = Name::from_ascii("WWW.EXAMPLE.").expect("valid");
        }
        assert!(!asked.accepts(&reply_to(asked.id, &other_case)));
        let mut not_a_response = reply_to(asked.id, asked.question.name());
        not_a_response.metadata.message_type = MessageType::Query;
        assert!(!asked.accepts(&not_a_response));
    }
}

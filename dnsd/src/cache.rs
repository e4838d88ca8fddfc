//! The forwarder's answer cache: positive answers for their TTL, negative answers for the
//! SOA's negative TTL (RFC 2308), expired answers kept a while to serve when every upstream
//! fails (RFC 8767), bounded in entries (least recently used go first) and in bytes.
//!
//! Besides each answer, the replies sent to clients from it can be kept encoded, one per
//! query shape ([`Cache::keep_encoded`]): a later hit copies the bytes and patches the id,
//! the question's letter case and the TTLs ([`Cache::get_encoded`]) instead of decoding the
//! answer and encoding a reply again. They go with their answer.
//!
//! Architecture invariant: no I/O and no clock. The caller passes the time (`now`) to every
//! call, so tests move time by hand.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// TTLs are capped at 7 days (RFC 8767 section 4, and RFC 2181 section 8's advice against
/// very long TTLs).
pub const MAX_TTL: u32 = 7 * 24 * 3600;

/// Bytes counted per entry on top of the answer's wire size and the key's name: the hash
/// map slot, the recency index node and the entry's fields, rounded up. An estimate.
pub const ENTRY_OVERHEAD: usize = 160;

/// Bytes counted per kept reply on top of its wire size and its query key: the map slot,
/// the TTL offsets and the fields, rounded up. An estimate.
pub const ENCODED_OVERHEAD: usize = 96;

/// Most replies kept encoded per answer (query shapes: with or without EDNS, payload sizes,
/// header bits, transport).
pub const MAX_ENCODED_PER_ANSWER: usize = 4;

/// The DNS header's size; a query's name starts after it.
const HEADER: usize = 12;

/// What a cached answer is the answer to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The query name, lower-cased.
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// The client's DO bit (RFC 3225): it is forwarded, and it changes what the upstream
    /// sends (RRSIGs or not).
    pub dnssec_ok: bool,
    /// The client's CD bit (RFC 4035 3.2.2): it is forwarded, and a validating upstream
    /// answers differently with it.
    pub checking_disabled: bool,
}

impl CacheKey {
    /// The key of `question` asked with the given DO and CD bits.
    pub fn new(question: &Query, dnssec_ok: bool, checking_disabled: bool) -> CacheKey {
        CacheKey {
            name: question.name().to_lowercase(),
            qtype: question.query_type(),
            qclass: question.query_class(),
            dnssec_ok,
            checking_disabled,
        }
    }
}

/// How big the cache may grow, and how long past expiry answers are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// At most this many answers; zero turns the cache off.
    pub entries: usize,
    /// At most this many bytes, counted as each answer's wire size plus its name plus
    /// [`ENTRY_OVERHEAD`].
    pub bytes: usize,
    /// Answers are kept this long past expiry, only to be served stale.
    pub stale_for: Duration,
}

/// How long an answer may be cached, in seconds, or `None` when it must not be:
///
/// - truncated answers, and RCODEs other than NOERROR and NXDOMAIN (SERVFAIL included,
///   RFC 2308 7.1 allows but does not require caching it), are not cached;
/// - an answer with a record of the type asked (or any record, for CNAME and ANY
///   questions) is positive: the smallest TTL in the answer section;
/// - otherwise it is negative (NXDOMAIN, or NODATA: NOERROR without the type asked, maybe
///   after CNAMEs): the smallest of the answer section's TTLs, the SOA's TTL and the SOA's
///   MINIMUM (RFC 2308 section 5), with the SOA taken from the authority section. Without
///   an SOA it is not cached (RFC 2308 section 5: "SHOULD NOT be cached");
/// - a TTL of zero means "do not cache" (RFC 1035 3.2.1), so nothing is kept.
///
/// The result is capped at [`MAX_TTL`].
pub fn cache_ttl(answer: &Message) -> Option<u32> {
    if answer.metadata.truncation {
        return None;
    }
    answer.queries.first()?;
    let rcode = answer.metadata.response_code;
    if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
        return None;
    }
    let answers_min = answer.answers.iter().map(|r| r.ttl).min();
    let ttl = if is_positive(answer) {
        answers_min?
    } else {
        let negative = negative_ttl(answer)?;
        answers_min.map_or(negative, |a| a.min(negative))
    };
    (ttl > 0).then_some(ttl.min(MAX_TTL))
}

/// NOERROR with a record of the type asked (any record for CNAME and ANY questions).
fn is_positive(answer: &Message) -> bool {
    let Some(qtype) = answer.queries.first().map(|q| q.query_type()) else {
        return false;
    };
    answer.metadata.response_code == ResponseCode::NoError
        && answer.answers.iter().any(|r| {
            r.record_type() == qtype || matches!(qtype, RecordType::ANY | RecordType::CNAME)
        })
}

/// min(SOA TTL, SOA MINIMUM) of the first SOA in the authority section (RFC 2308 5).
fn negative_ttl(answer: &Message) -> Option<u32> {
    answer.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

/// What the cache has for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Within its TTL; every record's TTL reduced by the whole seconds spent in the cache.
    Fresh(Message),
    /// Expired, but within `stale_for`: only to be served when every upstream fails.
    Stale,
    Miss,
}

struct Entry {
    /// The answer as stored (no OPT record), encoded: compact, and its size is known.
    wire: Vec<u8>,
    stored: Instant,
    ttl: Duration,
    /// Position in `Cache::recency`.
    used: u64,
    /// Its own size, plus that of its kept replies.
    size: usize,
    /// The query keys of the replies kept encoded from it, in `Cache::encoded`.
    encoded: Vec<Vec<u8>>,
    /// Every upstream failed to refresh it; until then its stale answer is served without
    /// asking them again (RFC 8767's failure recheck timer).
    failed_until: Option<Instant>,
}

/// A reply to one query shape, encoded ([`Cache::keep_encoded`]); or, with an empty
/// `wire`, the fact that queries of that shape take the long way.
struct Encoded {
    /// The answer it was made from.
    key: CacheKey,
    wire: Vec<u8>,
    /// Where the question's name ends (it starts after the header).
    name_end: usize,
    /// Where the TTL fields of its records are (not the OPT record's), as stored.
    ttls: Vec<usize>,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.stored + self.ttl
    }
}

/// The cache. Not synchronised: the forwarder keeps it behind a mutex.
pub struct Cache {
    limits: CacheLimits,
    entries: HashMap<CacheKey, Entry>,
    /// Least recently used first: use counter -> key.
    recency: BTreeMap<u64, CacheKey>,
    /// Replies kept encoded, by the query they answer (as `answers::key` makes it).
    encoded: HashMap<Vec<u8>, Encoded>,
    counter: u64,
    bytes: usize,
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Cache {
        Cache {
            limits,
            entries: HashMap::new(),
            recency: BTreeMap::new(),
            encoded: HashMap::new(),
            counter: 0,
            bytes: 0,
        }
    }

    /// Number of answers held, fresh or stale.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, as counted against [`CacheLimits::bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `answer` (a response whose question is the key's) if [`cache_ttl`] allows,
    /// replacing what the key had, then evicts the least recently used answers until both
    /// limits hold. Names equal to or below the question name are stored in the key's
    /// (lower) case. Returns whether it was stored.
    pub fn insert(&mut self, key: CacheKey, answer: &Message, now: Instant) -> bool {
        if self.limits.entries == 0 {
            return false;
        }
        let Some(ttl) = cache_ttl(answer) else {
            return false;
        };
        let Some(asked) = answer.queries.first().map(|q| q.name().clone()) else {
            return false;
        };
        let mut stored = Message::new(
            answer.metadata.id,
            answer.metadata.message_type,
            answer.metadata.op_code,
        );
        stored.metadata = answer.metadata;
        stored.metadata.id = 0;
        let mut question = answer.queries[0].clone();
        question.set_name(key.name.clone());
        stored.queries = vec![question];
        let negative = !is_positive(answer);
        let neg_ttl = negative_ttl(answer);
        let recased = |r: &Record| {
            let mut r = r.clone();
            r.name = recase(&r.name, &asked, &key.name);
            r.ttl = r.ttl.min(MAX_TTL);
            r
        };
        stored.answers = answer.answers.iter().map(recased).collect();
        stored.authorities = answer
            .authorities
            .iter()
            .map(|r| {
                let mut r = recased(r);
                // RFC 2308 3: the SOA of a negative answer carries the negative TTL.
                if let (true, RData::SOA(_), Some(n)) = (negative, &r.data, neg_ttl) {
                    r.ttl = n;
                }
                r
            })
            .collect();
        stored.additionals = answer.additionals.iter().map(recased).collect();
        let Ok(wire) = stored.to_vec() else {
            return false;
        };
        let size = wire.len() + key.name.len() + ENTRY_OVERHEAD;
        if size > self.limits.bytes {
            self.remove(&key);
            return false;
        }
        self.remove(&key);
        let used = self.touch_counter();
        self.recency.insert(used, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                wire,
                stored: now,
                ttl: Duration::from_secs(u64::from(ttl)),
                used,
                size,
                encoded: Vec::new(),
                failed_until: None,
            },
        );
        self.evict();
        true
    }

    /// Evicts the least recently used answers until both limits hold.
    fn evict(&mut self) {
        while self.entries.len() > self.limits.entries || self.bytes > self.limits.bytes {
            let Some((_, oldest)) = self.recency.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.remove(&oldest);
        }
    }

    /// The fresh answer for `key`, or whether a stale one is there. An answer past
    /// `stale_for` is dropped here.
    pub fn get(&mut self, key: &CacheKey, now: Instant) -> Lookup {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let expires = entry.expires();
        if now >= expires + self.limits.stale_for {
            self.remove(key);
            return Lookup::Miss;
        }
        if now >= expires {
            return Lookup::Stale;
        }
        let elapsed = u32::try_from(now.saturating_duration_since(entry.stored).as_secs())
            .unwrap_or(u32::MAX);
        let Some(message) = self.decode_and_touch(key) else {
            return Lookup::Miss;
        };
        Lookup::Fresh(with_ttls(message, |ttl| ttl.saturating_sub(elapsed)))
    }

    /// The expired answer for `key`, with every TTL set to `stale_ttl` (RFC 8767 4), if it
    /// is within `stale_for` of its expiry. A fresh answer is returned too (with its TTLs
    /// counted down): it cannot be staler than a stale one.
    pub fn get_stale(&mut self, key: &CacheKey, now: Instant, stale_ttl: u32) -> Option<Message> {
        match self.get(key, now) {
            Lookup::Fresh(message) => Some(message),
            Lookup::Miss => None,
            Lookup::Stale => {
                let message = self.decode_and_touch(key)?;
                Some(with_ttls(message, |_| stale_ttl))
            }
        }
    }

    /// The fresh answer for `key` with its TTLs as stored, not counted down: what a reply
    /// to keep encoded is made from ([`Self::keep_encoded`]).
    pub fn get_as_stored(&mut self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires() {
            return None;
        }
        self.decode_and_touch(key)
    }

    /// Whether a reply to queries with key `query_key` (`answers::key`), answered from the
    /// fresh answer for `key`, may be kept ([`Self::keep_encoded`]): the answer is there,
    /// nothing is kept for that query key yet, and fewer than [`MAX_ENCODED_PER_ANSWER`].
    pub fn may_keep_encoded(&self, key: &CacheKey, query_key: &[u8]) -> bool {
        !self.encoded.contains_key(query_key)
            && self
                .entries
                .get(key)
                .is_some_and(|e| e.encoded.len() < MAX_ENCODED_PER_ANSWER)
    }

    /// Keeps `reply`: the encoded reply to queries with key `query_key`, made from the
    /// fresh answer for `key` as [`Self::get_as_stored`] gave it (TTLs not counted down),
    /// and where the question's name ends in it. The caller vouches that the reply to
    /// another query with that key differs only in its id and its question's letter case.
    /// `None` keeps the fact that such queries take the long way, so that it is not worked
    /// out again. Refused (false) when [`Self::may_keep_encoded`] does not hold or the
    /// reply cannot be walked. A reply kept counts against the byte limit with its answer,
    /// and goes with it.
    pub fn keep_encoded(
        &mut self,
        key: &CacheKey,
        query_key: &[u8],
        reply: Option<(Vec<u8>, usize)>,
    ) -> bool {
        if !self.may_keep_encoded(key, query_key) {
            return false;
        }
        let (wire, name_end, ttls) = match reply {
            Some((wire, name_end)) => {
                let Some(ttls) = ttl_offsets(&wire) else {
                    return false;
                };
                if name_end <= HEADER || name_end > wire.len() {
                    return false;
                }
                (wire, name_end, ttls)
            }
            None => (Vec::new(), 0, Vec::new()),
        };
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let size = wire.len() + query_key.len() + ENCODED_OVERHEAD;
        entry.encoded.push(query_key.to_vec());
        entry.size += size;
        self.bytes += size;
        self.encoded.insert(
            query_key.to_vec(),
            Encoded {
                key: key.clone(),
                wire,
                name_end,
                ttls,
            },
        );
        self.evict();
        true
    }

    /// The kept reply to `query` (whose key is `query_key`) while its answer is fresh: with
    /// the query's id and question bytes (so its letter case), and every TTL counted down
    /// by the whole seconds the answer has been cached, as [`Self::get`] does. `None` when
    /// nothing is kept, or the answer is stale or gone ([`Self::get`] then says which).
    pub fn get_encoded(&mut self, query_key: &[u8], query: &[u8], now: Instant) -> Option<Vec<u8>> {
        let Cache {
            entries,
            recency,
            encoded,
            counter,
            ..
        } = self;
        let kept = encoded.get(query_key)?;
        let entry = entries.get_mut(&kept.key)?;
        if kept.wire.is_empty() || now >= entry.expires() || query.len() < kept.name_end {
            return None;
        }
        let elapsed = u32::try_from(now.saturating_duration_since(entry.stored).as_secs())
            .unwrap_or(u32::MAX);
        let mut wire = kept.wire.clone();
        wire[..2].copy_from_slice(&query[..2]);
        wire[HEADER..kept.name_end].copy_from_slice(&query[HEADER..kept.name_end]);
        for &at in &kept.ttls {
            let field: &mut [u8; 4] = (&mut wire[at..at + 4])
                .try_into()
                .expect("ttl_offsets found four bytes there");
            *field = u32::from_be_bytes(*field)
                .saturating_sub(elapsed)
                .to_be_bytes();
        }
        *counter += 1;
        recency.remove(&entry.used);
        entry.used = *counter;
        recency.insert(entry.used, kept.key.clone());
        Some(wire)
    }

    /// Notes that every upstream failed to refresh the answer for `key` at `now`:
    /// [`Self::failed_recently`] holds for `recheck`, until a new answer is stored.
    pub fn note_failure(&mut self, key: &CacheKey, now: Instant, recheck: Duration) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failed_until = Some(now + recheck);
        }
    }

    /// Whether every upstream failed for `key` less than the recheck time before `now`.
    pub fn failed_recently(&self, key: &CacheKey, now: Instant) -> bool {
        self.entries
            .get(key)
            .and_then(|e| e.failed_until)
            .is_some_and(|until| now < until)
    }

    fn decode_and_touch(&mut self, key: &CacheKey) -> Option<Message> {
        let used = self.touch_counter();
        let entry = self.entries.get_mut(key)?;
        let Ok(message) = Message::from_vec(&entry.wire) else {
            // We encoded it ourselves, so this does not happen; if it did, forget it.
            self.remove(key);
            return None;
        };
        self.recency.remove(&entry.used);
        entry.used = used;
        self.recency.insert(used, key.clone());
        Some(message)
    }

    fn touch_counter(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.recency.remove(&entry.used);
            self.bytes -= entry.size;
            for query_key in &entry.encoded {
                self.encoded.remove(query_key);
            }
        }
    }
}

/// The offsets of the TTL fields of every record in the message `wire`, but the OPT
/// record's (whose TTL field holds EDNS flags); `None` when it does not parse to its end.
fn ttl_offsets(wire: &[u8]) -> Option<Vec<usize>> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *wire.get(at)?,
            *wire.get(at + 1)?,
        ])))
    };
    let questions = count(4)?;
    let records = count(6)? + count(8)? + count(10)?;
    let mut at = HEADER;
    for _ in 0..questions {
        at = skip_name(wire, at)? + 4;
    }
    let mut ttls = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(wire, at)?;
        let rtype = count(at)?;
        let rdata_len = count(at + 8)?;
        if rtype != usize::from(u16::from(RecordType::OPT)) {
            ttls.push(at + 4);
        }
        at += 10 + rdata_len;
    }
    (at == wire.len()).then_some(ttls)
}

/// Where the name at `at` ends: after its root label or its compression pointer.
fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *wire.get(at)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xc0 => return (at + 2 <= wire.len()).then_some(at + 2),
            _ => return None,
        }
    }
}

fn with_ttls(mut message: Message, ttl: impl Fn(u32) -> u32) -> Message {
    for record in message
        .answers
        .iter_mut()
        .chain(message.authorities.iter_mut())
        .chain(message.additionals.iter_mut())
    {
        record.ttl = ttl(record.ttl);
    }
    message
}

/// `name` with its `from` suffix (compared without case) written as `to`, which is `from`
/// in another case; other names unchanged. Upstream answers repeat the randomised case of
/// the question (0x20) in owner names, and in names compressed against it.
pub fn recase(name: &Name, from: &Name, to: &Name) -> Name {
    if !from.zone_of(name) {
        return name.clone();
    }
    let own = usize::from(name.num_labels() - from.num_labels());
    let labels: Vec<&[u8]> = name.iter().take(own).chain(to.iter()).collect();
    match Name::from_labels(labels) {
        Ok(mut recased) => {
            recased.set_fqdn(name.is_fqdn());
            recased
        }
        Err(_) => name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, CNAME, SOA, TXT};

    use super::*;

    /// `s` as a name, its letter case kept (`Name::from_str` makes it lower case).
    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test names are valid")
    }

    fn question(qname: &str, qtype: RecordType) -> Query {
        Query::query(name(qname), qtype)
    }

    fn key(qname: &str, qtype: RecordType) -> CacheKey {
        CacheKey::new(&question(qname, qtype), false, false)
    }

    fn response(qname: &str, qtype: RecordType, rcode: ResponseCode) -> Message {
        let mut m = Message::new(77, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(question(qname, qtype));
        m
    }

    fn a(owner: &str, ttl: u32, last: u8) -> Record {
        Record::from_rdata(
            name(owner),
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
        )
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            name(zone),
            ttl,
            RData::SOA(SOA::new(
                name("ns.example."),
                name("hostmaster.example."),
                1,
                3600,
                600,
                86400,
                minimum,
            )),
        )
    }

    fn positive(qname: &str, ttls: &[u32]) -> Message {
        let mut m = response(qname, RecordType::A, ResponseCode::NoError);
        for (i, ttl) in ttls.iter().enumerate() {
            m.add_answer(a(qname, *ttl, i as u8 + 1));
        }
        m
    }

    fn limits() -> CacheLimits {
        CacheLimits {
            entries: 100,
            bytes: 1 << 20,
            stale_for: Duration::from_secs(60),
        }
    }

    fn fresh(lookup: Lookup) -> Message {
        match lookup {
            Lookup::Fresh(m) => m,
            other => panic!("expected a fresh answer, got {other:?}"),
        }
    }

    #[test]
    fn ttl_rules() {
        let nx_soa = {
            let mut m = response("x.example.", RecordType::A, ResponseCode::NXDomain);
            m.add_authority(soa("example.", 300, 60));
            m
        };
        let nodata_soa = {
            let mut m = response("x.example.", RecordType::AAAA, ResponseCode::NoError);
            m.add_authority(soa("example.", 20, 600));
            m
        };
        let cname_then_nodata = {
            let mut m = response("x.example.", RecordType::AAAA, ResponseCode::NoError);
            m.add_answer(Record::from_rdata(
                name("x.example."),
                10,
                RData::CNAME(CNAME(name("y.example."))),
            ));
            m.add_authority(soa("example.", 300, 300));
            m
        };
        let cname_question = {
            let mut m = response("x.example.", RecordType::CNAME, ResponseCode::NoError);
            m.add_answer(Record::from_rdata(
                name("x.example."),
                42,
                RData::CNAME(CNAME(name("y.example."))),
            ));
            m
        };
        let truncated = {
            let mut m = positive("x.example.", &[30]);
            m.metadata.truncation = true;
            m
        };
        let cases: Vec<(&str, Message, Option<u32>)> = vec![
            (
                "positive: smallest answer ttl",
                positive("x.example.", &[30, 5, 60]),
                Some(5),
            ),
            (
                "positive ttl capped at 7 days",
                positive("x.example.", &[u32::MAX]),
                Some(MAX_TTL),
            ),
            ("zero ttl is not cached", positive("x.example.", &[0]), None),
            ("nxdomain: min(soa ttl, minimum)", nx_soa, Some(60)),
            ("nodata: min(soa ttl, minimum)", nodata_soa, Some(20)),
            (
                "cname then nodata: cname ttl counts",
                cname_then_nodata,
                Some(10),
            ),
            ("cname question answered by cname", cname_question, Some(42)),
            (
                "nxdomain without soa",
                response("x.example.", RecordType::A, ResponseCode::NXDomain),
                None,
            ),
            (
                "nodata without soa",
                response("x.example.", RecordType::A, ResponseCode::NoError),
                None,
            ),
            (
                "servfail",
                response("x.example.", RecordType::A, ResponseCode::ServFail),
                None,
            ),
            (
                "refused",
                response("x.example.", RecordType::A, ResponseCode::Refused),
                None,
            ),
            ("truncated", truncated, None),
        ];
        for (what, message, want) in cases {
            assert_eq!(cache_ttl(&message), want, "{what}");
        }
    }

    #[test]
    fn positive_answer_counts_down_then_goes_stale_then_away() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let k = key("www.example.", RecordType::A);
        assert!(cache.insert(k.clone(), &positive("www.example.", &[10, 20]), t0));

        let at0 = fresh(cache.get(&k, t0));
        assert_eq!(
            at0.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [10, 20]
        );
        let at3 = fresh(cache.get(&k, t0 + Duration::from_millis(3_900)));
        assert_eq!(
            at3.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [7, 17]
        );
        assert_eq!(at3.metadata.response_code, ResponseCode::NoError);

        let expired = t0 + Duration::from_secs(10);
        assert_eq!(cache.get(&k, expired), Lookup::Stale);
        let stale = cache.get_stale(&k, expired, 30).expect("stale answer kept");
        assert_eq!(
            stale.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [30, 30]
        );

        let gone = t0 + Duration::from_secs(10 + 60);
        assert_eq!(cache.get_stale(&k, gone, 30), None);
        assert_eq!(cache.get(&k, gone), Lookup::Miss);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn stale_off_drops_at_expiry() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheLimits {
            stale_for: Duration::ZERO,
            ..limits()
        });
        let k = key("www.example.", RecordType::A);
        cache.insert(k.clone(), &positive("www.example.", &[5]), t0);
        assert_eq!(cache.get_stale(&k, t0 + Duration::from_secs(5), 30), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn negative_answer_is_cached_with_the_soa_ttl() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let k = key("nope.example.", RecordType::A);
        let mut nx = response("nope.example.", RecordType::A, ResponseCode::NXDomain);
        nx.add_authority(soa("example.", 300, 8));
        assert!(cache.insert(k.clone(), &nx, t0));
        let hit = fresh(cache.get(&k, t0 + Duration::from_secs(2)));
        assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
        assert!(hit.answers.is_empty());
        // RFC 2308 3: the SOA's TTL is the negative TTL, counted down.
        assert_eq!(hit.authorities[0].ttl, 6);
        assert_eq!(cache.get(&k, t0 + Duration::from_secs(8)), Lookup::Stale);
    }

    #[test]
    fn servfail_is_not_cached() {
        let mut cache = Cache::new(limits());
        let k = key("x.example.", RecordType::A);
        let failed = response("x.example.", RecordType::A, ResponseCode::ServFail);
        assert!(!cache.insert(k.clone(), &failed, Instant::now()));
        assert_eq!(cache.get(&k, Instant::now()), Lookup::Miss);
    }

    #[test]
    fn key_ignores_case_but_not_type_class_or_bits() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let asked = positive("WwW.ExAmple.", &[10]);
        assert!(cache.insert(key("WwW.ExAmple.", RecordType::A), &asked, t0));
        let hit = fresh(cache.get(&key("www.EXAMPLE.", RecordType::A), t0));
        // Stored in the key's lower case, whatever case the upstream used.
        assert!(hit.queries[0].name().eq_case(&name("www.example.")));
        assert!(hit.answers[0].name.eq_case(&name("www.example.")));
        assert_eq!(
            cache.get(&key("www.example.", RecordType::AAAA), t0),
            Lookup::Miss
        );
        let with_do = CacheKey::new(&question("www.example.", RecordType::A), true, false);
        assert_eq!(cache.get(&with_do, t0), Lookup::Miss);
        let with_cd = CacheKey::new(&question("www.example.", RecordType::A), false, true);
        assert_eq!(cache.get(&with_cd, t0), Lookup::Miss);
        let mut chaos = question("www.example.", RecordType::A);
        chaos.set_query_class(DNSClass::CH);
        assert_eq!(
            cache.get(&CacheKey::new(&chaos, false, false), t0),
            Lookup::Miss
        );
    }

    #[test]
    fn entry_limit_evicts_least_recently_used() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheLimits {
            entries: 2,
            ..limits()
        });
        let (k1, k2, k3) = (
            key("one.example.", RecordType::A),
            key("two.example.", RecordType::A),
            key("three.example.", RecordType::A),
        );
        cache.insert(k1.clone(), &positive("one.example.", &[60]), t0);
        cache.insert(k2.clone(), &positive("two.example.", &[60]), t0);
        fresh(cache.get(&k1, t0)); // one is now the most recently used
        cache.insert(k3.clone(), &positive("three.example.", &[60]), t0);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&k2, t0), Lookup::Miss);
        fresh(cache.get(&k1, t0));
        fresh(cache.get(&k3, t0));
    }

    #[test]
    fn byte_limit_evicts_and_refuses_oversized_answers() {
        let t0 = Instant::now();
        let big = |qname: &str| {
            let mut m = response(qname, RecordType::TXT, ResponseCode::NoError);
            m.add_answer(Record::from_rdata(
                name(qname),
                60,
                RData::TXT(TXT::new(vec!["x".repeat(200); 5])),
            ));
            m
        };
        let one = big("one.example.").to_vec().expect("encodes").len();
        let per_entry = one + name("one.example.").len() + ENTRY_OVERHEAD;
        let mut cache = Cache::new(CacheLimits {
            bytes: per_entry * 2 + per_entry / 2,
            ..limits()
        });
        for qname in ["one.example.", "two.example.", "six.example."] {
            assert!(cache.insert(key(qname, RecordType::TXT), &big(qname), t0));
            assert!(cache.bytes() <= per_entry * 2 + per_entry / 2);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get(&key("one.example.", RecordType::TXT), t0),
            Lookup::Miss
        );

        let mut tiny = Cache::new(CacheLimits {
            bytes: per_entry - 1,
            ..limits()
        });
        assert!(!tiny.insert(
            key("one.example.", RecordType::TXT),
            &big("one.example."),
            t0
        ));
        assert_eq!(tiny.bytes(), 0);
    }

    #[test]
    fn replacing_an_entry_keeps_the_byte_count_right() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let k = key("www.example.", RecordType::A);
        cache.insert(k.clone(), &positive("www.example.", &[10]), t0);
        let once = cache.bytes();
        cache.insert(k.clone(), &positive("www.example.", &[20]), t0);
        assert_eq!(cache.bytes(), once);
        assert_eq!(cache.len(), 1);
        assert_eq!(fresh(cache.get(&k, t0)).answers[0].ttl, 20);
    }

    /// `answer` as a reply to a client with id `id`, in the wire form a kept reply has (an
    /// OPT record when `edns`); and where its question's name ends.
    fn reply_wire(answer: &Message, id: u16, edns: bool) -> (Vec<u8>, usize) {
        let mut reply = answer.clone();
        reply.metadata.id = id;
        if edns {
            let mut opt = hickory_proto::op::Edns::new();
            opt.set_max_payload(1232);
            reply.set_edns(opt);
        }
        let name_end = 12 + reply.queries[0].name().len() + 1;
        (reply.to_vec().expect("encodes"), name_end)
    }

    #[test]
    fn a_kept_reply_gets_the_askers_id_case_and_counted_down_ttls() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let k = key("www.example.", RecordType::A);
        let mut answer = positive("www.example.", &[10, 300]);
        answer.add_additional(a("ns.example.", 3, 9));
        assert!(cache.insert(k.clone(), &answer, t0));
        let stored = cache.get_as_stored(&k, t0).expect("fresh");
        let (wire, name_end) = reply_wire(&stored, 0, true);
        let entry_bytes = cache.bytes();
        assert!(cache.keep_encoded(&k, b"shape-1", Some((wire.clone(), name_end))));
        assert_eq!(
            cache.bytes(),
            entry_bytes + wire.len() + b"shape-1".len() + ENCODED_OVERHEAD
        );

        // Another client, another case, 4.5 s later.
        let mut asked = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        asked.add_query(question("WwW.ExAMPLE.", RecordType::A));
        let asked = asked.to_vec().expect("encodes");
        let got = cache
            .get_encoded(b"shape-1", &asked, t0 + Duration::from_millis(4_500))
            .expect("kept and fresh");
        assert_eq!(&got[..2], &[0xbe, 0xef]);
        assert_eq!(&got[12..name_end], &asked[12..name_end]);
        let got = Message::from_vec(&got).expect("decodes");
        assert!(got.queries[0].name().eq_case(&name("WwW.ExAMPLE.")));
        assert!(got.answers[0].name.eq_case(&name("WwW.ExAMPLE.")));
        assert_eq!(
            got.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [6, 296]
        );
        assert_eq!(got.additionals[0].ttl, 0, "counts down to 0, not below");
        assert_eq!(
            got.edns.as_ref().map(|e| e.max_payload()),
            Some(1232),
            "the OPT record's TTL field (EDNS flags) is left alone"
        );
        assert!(cache.get_encoded(b"shape-2", &asked, t0).is_none());

        // Expired: the long way says it is stale.
        assert!(
            cache
                .get_encoded(b"shape-1", &asked, t0 + Duration::from_secs(10))
                .is_none()
        );
        assert_eq!(cache.get(&k, t0 + Duration::from_secs(10)), Lookup::Stale);

        // A new answer for the key: the kept reply goes with the old one, and so do its bytes.
        assert!(cache.insert(k.clone(), &positive("www.example.", &[60]), t0));
        assert!(cache.get_encoded(b"shape-1", &asked, t0).is_none());
        let one_entry = cache.bytes();
        cache.remove(&k);
        assert_eq!(cache.bytes(), 0);
        assert!(one_entry > 0);
    }

    #[test]
    fn negative_kept_reply_counts_down_the_soa_ttl() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let k = key("nope.example.", RecordType::A);
        let mut nx = response("nope.example.", RecordType::A, ResponseCode::NXDomain);
        nx.add_authority(soa("example.", 300, 8));
        assert!(cache.insert(k.clone(), &nx, t0));
        let (wire, name_end) = reply_wire(&cache.get_as_stored(&k, t0).unwrap(), 0, false);
        assert!(cache.keep_encoded(&k, b"q", Some((wire, name_end))));
        let mut asked = Message::new(5, MessageType::Query, OpCode::Query);
        asked.add_query(question("nope.example.", RecordType::A));
        let asked = asked.to_vec().unwrap();
        let got = cache
            .get_encoded(b"q", &asked, t0 + Duration::from_secs(2))
            .unwrap();
        let got = Message::from_vec(&got).unwrap();
        assert_eq!(got.metadata.response_code, ResponseCode::NXDomain);
        // RFC 2308 3: the SOA carries the negative TTL, counted down like the long way.
        let long_way = fresh(cache.get(&k, t0 + Duration::from_secs(2)));
        assert_eq!(got.authorities[0].ttl, 6);
        assert_eq!(long_way.authorities[0].ttl, 6);
        assert!(
            cache
                .get_encoded(b"q", &asked, t0 + Duration::from_secs(8))
                .is_none()
        );
    }

    #[test]
    fn kept_replies_are_bounded_per_answer_and_go_when_it_is_evicted() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheLimits {
            entries: 1,
            ..limits()
        });
        let k = key("www.example.", RecordType::A);
        cache.insert(k.clone(), &positive("www.example.", &[60]), t0);
        let (wire, name_end) = reply_wire(&cache.get_as_stored(&k, t0).unwrap(), 0, false);
        assert!(!cache.keep_encoded(&k, b"x", Some((wire[..wire.len() - 1].to_vec(), name_end))));
        // A shape that takes the long way is kept as such, and counts.
        assert!(cache.keep_encoded(&k, b"long way", None));
        assert!(!cache.may_keep_encoded(&k, b"long way"));
        assert!(cache.get_encoded(b"long way", &wire, t0).is_none());
        for shape in 1..MAX_ENCODED_PER_ANSWER {
            assert!(cache.may_keep_encoded(&k, &[shape as u8]));
            assert!(cache.keep_encoded(&k, &[shape as u8], Some((wire.clone(), name_end))));
        }
        assert!(!cache.may_keep_encoded(&k, b"one too many"));
        assert!(!cache.keep_encoded(&k, b"one too many", Some((wire.clone(), name_end))));
        // The entry limit is 1: a second answer evicts the first, with its kept replies.
        let other = key("other.example.", RecordType::A);
        cache.insert(other.clone(), &positive("other.example.", &[60]), t0);
        assert!(cache.encoded.is_empty());
        let alone = cache.bytes();
        cache.remove(&other);
        assert!(alone > 0);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn failure_recheck_holds_until_its_time_or_a_new_answer() {
        let t0 = Instant::now();
        let mut cache = Cache::new(limits());
        let k = key("www.example.", RecordType::A);
        cache.insert(k.clone(), &positive("www.example.", &[1]), t0);
        assert!(!cache.failed_recently(&k, t0));
        cache.note_failure(&k, t0 + Duration::from_secs(2), Duration::from_secs(30));
        assert!(cache.failed_recently(&k, t0 + Duration::from_secs(31)));
        assert!(!cache.failed_recently(&k, t0 + Duration::from_secs(32)));
        cache.note_failure(&k, t0 + Duration::from_secs(2), Duration::from_secs(30));
        cache.insert(k.clone(), &positive("www.example.", &[1]), t0);
        assert!(!cache.failed_recently(&k, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn recase_rewrites_the_question_suffix_only() {
        let from = name("WwW.eXample.");
        let to = name("www.example.");
        assert!(recase(&name("WwW.eXample."), &from, &to).eq_case(&to));
        assert!(recase(&name("Cdn.WwW.eXample."), &from, &to).eq_case(&name("Cdn.www.example.")));
        assert!(recase(&name("Other.Example."), &from, &to).eq_case(&name("Other.Example.")));
    }
}

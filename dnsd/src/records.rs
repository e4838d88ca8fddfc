//! DNS query records: every answered query, in short, handed to the node's twilld, which
//! names the client and keeps the record with the datapath's flow records (`netctl
//! monitor` shows them as `dns` records).
//!
//! The serving threads only copy the answer into a bounded buffer ([`Recorder::record`]:
//! an uncontended lock, no system call, nothing at all while twilld is away); a thread of
//! its own takes the buffer every 20 ms, reads the answers, folds repeats and sends them to
//! twilld's socket
//! in batches ([`Request::DnsQueries`]). The same query from the same client with the same
//! answer is recorded once, then at most once a second with the number of repeats folded
//! into it, so a client asking in a loop costs a record a second, not one a query.
//!
//! Nothing is lost silently: a record the queue has no room for, or that twilld does not
//! take (it is not running, its flow records are off, its queue is full), is counted
//! (`twill_dns_query_records_total{outcome="lost"}`, and the count goes to twilld with the
//! next batch it takes). While twilld cannot be reached the answers are counted, not read,
//! and it is tried again once a second.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hickory_proto::{op::Message, rr::RData};
use tracing::{info, warn};
use twill_api::{
    Request, Response,
    flow::{DnsQueryRecord, FlowDns},
};
use twill_dns::Transport;

use crate::metrics::Source;

/// Answers waiting to be read, at most; more are counted as lost.
const QUEUE: usize = 16_384;
/// How often the sender takes the waiting answers.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often records are sent.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// The same query from the same client with the same answer is recorded at most this
/// often.
const FOLD_WINDOW: Duration = Duration::from_secs(1);
/// Queries whose repeats are being folded, at most; beyond it every query is a record.
const MAX_FOLDING: usize = 10_000;
/// Addresses and CNAMEs kept of one answer.
const MAX_ADDRESSES: usize = 16;
/// How long twilld is given to take a batch.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed send, how long until twilld is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One answer as the serving threads hand it over.
pub struct Answered {
    pub unix_ms: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    pub source: Source,
    pub answer: Vec<u8>,
    pub latency: Duration,
    /// `fqdn-denied`: the FQDNPolicies that select the client.
    pub fqdn_policies: Vec<String>,
}

/// Counts of records, for `/metrics`.
#[derive(Debug, Default)]
pub struct RecordCounts {
    /// Records twilld took.
    pub sent: AtomicU64,
    /// Records lost: no room in the queue, twilld unreachable or not taking them.
    pub lost: AtomicU64,
    /// Queries folded into another record as repeats.
    pub folded: AtomicU64,
}

/// What the serving threads and the sender share.
struct Shared {
    pending: Mutex<Vec<Answered>>,
    /// False while twilld does not take records: answers are then only counted.
    accepting: AtomicBool,
    counts: Arc<RecordCounts>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Answered>> {
        // The buffer holds only copies of answers: a poisoned lock is taken over.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The serving threads' end: cheap to call for every answer.
pub struct Recorder {
    shared: Arc<Shared>,
}

impl Recorder {
    /// Starts the thread that sends records to the twilld at `socket`.
    pub fn start(socket: PathBuf) -> std::io::Result<Arc<Recorder>> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            accepting: AtomicBool::new(true),
            counts: Arc::new(RecordCounts::default()),
        });
        let sender = Sender::new(socket, Arc::clone(&shared));
        std::thread::Builder::new()
            .name("dns-records".to_owned())
            .spawn(move || sender.run())?;
        Ok(Arc::new(Recorder { shared }))
    }

    pub fn counts(&self) -> &Arc<RecordCounts> {
        &self.shared.counts
    }

    /// Buffers the answer `make` gives; counts it as lost, without making it, when the
    /// buffer is full or twilld is not taking records.
    pub fn record(&self, make: impl FnOnce() -> Answered) {
        if self.shared.accepting.load(Ordering::Relaxed) {
            let mut pending = self.shared.pending();
            if pending.len() < QUEUE {
                pending.push(make());
                return;
            }
        }
        self.shared.counts.lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a record is folded by: the client, the question (lower case, as the answer
/// carries it), the answer's code and its source. Read from the answer's bytes without
/// decoding it, so a folded repeat costs no decoding at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FoldKey {
    client: IpAddr,
    question: Vec<u8>,
    rcode: u8,
    source: &'static str,
}

impl FoldKey {
    /// `None` for an answer without a plain question (no question, or a compressed name,
    /// which servers do not send in a question): such an answer is never folded.
    fn of(a: &Answered) -> Option<FoldKey> {
        let b = &a.answer;
        if b.len() < 12 || u16::from_be_bytes([b[4], b[5]]) == 0 {
            return None;
        }
        let end = crate::answers::question_name_end(b)?;
        // QTYPE and QCLASS.
        let question = b.get(12..end + 4)?.to_ascii_lowercase();
        Some(FoldKey {
            client: a.client.ip(),
            question,
            rcode: b[3] & 0x0f,
            source: a.source.name(),
        })
    }
}

struct Folding {
    since: Instant,
    /// Queries seen since `since` and not recorded yet, and the newest of them (read
    /// only when its record is made).
    repeats: u32,
    newest: Option<Answered>,
}

struct Sender {
    socket: PathBuf,
    shared: Arc<Shared>,
    counts: Arc<RecordCounts>,
    folding: HashMap<FoldKey, Folding>,
    ready: Vec<DnsQueryRecord>,
    /// twilld did not take the last batch: since when, and why (said once).
    down_since: Option<Instant>,
    retry_at: Instant,
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// A response code as dig names it.
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        other => return format!("RCODE{other}"),
    }
    .to_owned()
}

/// The record of one answer; `None` when the answer cannot be read (twill-dnsd wrote it,
/// so that does not happen) or its client is not an IPv4 one (pods are IPv4 only).
pub fn record_of(a: &Answered) -> Option<DnsQueryRecord> {
    let client = v4(a.client)?;
    let message = Message::from_vec(&a.answer).ok()?;
    let q = message.queries.first()?;
    let mut query = q.name().to_ascii().to_ascii_lowercase();
    if !query.ends_with('.') {
        query.push('.');
    }
    let mut dns = FlowDns {
        query,
        qtype: q.query_type().to_string(),
        rcode: rcode_name(u16::from(message.metadata.response_code)),
        answered_by: a.source.name().to_owned(),
        latency_us: u64::try_from(a.latency.as_micros()).unwrap_or(u64::MAX),
        truncated: message.metadata.truncation,
        ..FlowDns::default()
    };
    for r in &message.answers {
        dns.ttl = Some(dns.ttl.map_or(r.ttl, |t| t.min(r.ttl)));
        match &r.data {
            RData::A(x) if dns.addresses.len() < MAX_ADDRESSES => {
                dns.addresses.push(x.0.to_string())
            }
            RData::AAAA(x) if dns.addresses.len() < MAX_ADDRESSES => {
                dns.addresses.push(x.0.to_string())
            }
            RData::CNAME(x) if dns.cnames.len() < MAX_ADDRESSES => {
                dns.cnames.push(x.0.to_ascii().to_ascii_lowercase())
            }
            _ => {}
        }
    }
    Some(DnsQueryRecord {
        unix_ms: a.unix_ms,
        client: Some(client),
        server: v4(a.server),
        transport: match a.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
        .to_owned(),
        repeats: 0,
        fqdn_policies: a.fqdn_policies.clone(),
        dns,
    })
}

impl Sender {
    fn new(socket: PathBuf, shared: Arc<Shared>) -> Sender {
        Sender {
            socket,
            counts: Arc::clone(&shared.counts),
            shared,
            folding: HashMap::new(),
            ready: Vec::new(),
            down_since: None,
            retry_at: Instant::now(),
        }
    }

    fn run(mut self) {
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        let mut batch = Vec::new();
        // The recorder is gone (the server stops) when only this thread holds `shared`.
        while Arc::strong_count(&self.shared) > 1 {
            std::thread::sleep(DRAIN_EVERY);
            std::mem::swap(&mut batch, &mut *self.shared.pending());
            for a in batch.drain(..) {
                self.take(a);
            }
            let now = Instant::now();
            if self.down_since.is_some() && now >= self.retry_at {
                // Time to try twilld again, with an empty batch: answers are taken again
                // only once it takes that.
                let _ = self.send(Vec::new());
            }
            if now >= next_flush {
                self.flush();
                next_flush = Instant::now() + FLUSH_EVERY;
            }
        }
    }

    fn take(&mut self, a: Answered) {
        if self.down_since.is_some() && Instant::now() < self.retry_at {
            self.counts.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if v4(a.client).is_none() {
            return;
        }
        let now = Instant::now();
        let key = FoldKey::of(&a);
        if let Some(f) = key.as_ref().and_then(|k| self.folding.get_mut(k))
            && now.duration_since(f.since) < FOLD_WINDOW
        {
            f.repeats += 1;
            f.newest = Some(a);
            self.counts.folded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(record) = record_of(&a) else {
            return;
        };
        if let Some(key) = key
            && (self.folding.len() < MAX_FOLDING || self.folding.contains_key(&key))
        {
            self.folding.insert(
                key,
                Folding {
                    since: now,
                    repeats: 0,
                    newest: None,
                },
            );
        }
        self.ready.push(record);
    }

    /// Moves the folded repeats whose window is over to `ready`, and sends `ready`.
    fn flush(&mut self) {
        let now = Instant::now();
        let ready = &mut self.ready;
        self.folding.retain(|_, f| {
            if now.duration_since(f.since) < FOLD_WINDOW {
                return true;
            }
            if let Some(mut newest) = f.newest.take().as_ref().and_then(record_of) {
                // The newest stands for itself and the others of its window.
                newest.repeats = f.repeats - 1;
                ready.push(newest);
            }
            false
        });
        if self.ready.is_empty() {
            return;
        }
        if self.down_since.is_some() && now < self.retry_at {
            let n = self.ready.iter().map(|r| 1 + u64::from(r.repeats)).sum();
            self.ready.clear();
            self.counts.lost.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let mut batch = std::mem::take(&mut self.ready);
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(twill_api::MAX_DNS_QUERIES));
            let queries = std::mem::replace(&mut batch, rest);
            if let Err(()) = self.send(queries) {
                let n: u64 = batch.iter().map(|r| 1 + u64::from(r.repeats)).sum();
                self.counts.lost.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
    }

    fn send(&mut self, queries: Vec<DnsQueryRecord>) -> Result<(), ()> {
        // What each record stands for: itself and its repeats.
        let sizes: Vec<u64> = queries.iter().map(|r| 1 + u64::from(r.repeats)).collect();
        let total: u64 = sizes.iter().sum();
        let request = Request::DnsQueries {
            lost: self.counts.lost.load(Ordering::Relaxed),
            queries,
        };
        let problem = match twill_api::call(&self.socket, &request, CALL_TIMEOUT) {
            Ok(Response::Taken { taken }) => {
                let taken = (taken as usize).min(sizes.len());
                let sent: u64 = sizes[..taken].iter().sum();
                self.counts.sent.fetch_add(sent, Ordering::Relaxed);
                self.counts.lost.fetch_add(total - sent, Ordering::Relaxed);
                self.shared.accepting.store(true, Ordering::Relaxed);
                if let Some(since) = self.down_since.take() {
                    info!(
                        "twilld at {} takes DNS query records again (after {:.1} s)",
                        self.socket.display(),
                        since.elapsed().as_secs_f64()
                    );
                }
                return Ok(());
            }
            Ok(Response::Error { message, .. }) => message,
            Ok(other) => format!("answered {other:?}"),
            Err(e) => e.to_string(),
        };
        self.counts.lost.fetch_add(total, Ordering::Relaxed);
        if self.down_since.is_none() {
            warn!(
                "DNS query records are not recorded (counted as lost) until twilld takes them: {problem}"
            );
            self.down_since = Some(Instant::now());
        }
        self.retry_at = Instant::now() + RETRY_AFTER;
        self.shared.accepting.store(false, Ordering::Relaxed);
        Err(())
    }
}

/// Now, Unix milliseconds.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, RData, Record, RecordType, rdata},
    };

    use super::*;

    fn answer(name: &str, code: ResponseCode, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        m.queries
            .push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.answers = records;
        m.to_vec().unwrap()
    }

    fn answered(bytes: Vec<u8>, source: Source) -> Answered {
        Answered {
            unix_ms: 1_796_122_795_123,
            client: "10.244.1.5:41000".parse().unwrap(),
            server: "172.30.0.2:53".parse().unwrap(),
            transport: Transport::Udp,
            source,
            answer: bytes,
            latency: Duration::from_micros(85),
            fqdn_policies: Vec::new(),
        }
    }

    #[test]
    fn a_record_says_what_was_asked_and_answered() {
        let name = Name::from_ascii("Web.Default.svc.cluster.local.").unwrap();
        let bytes = answer(
            "Web.Default.svc.cluster.local.",
            ResponseCode::NoError,
            vec![
                Record::from_rdata(
                    name.clone(),
                    30,
                    RData::CNAME(rdata::CNAME(Name::from_ascii("Real.example.").unwrap())),
                ),
                Record::from_rdata(name, 5, RData::A(rdata::A("10.96.0.12".parse().unwrap()))),
            ],
        );
        let r = record_of(&answered(bytes, Source::Zone)).unwrap();
        assert_eq!(r.client, Some("10.244.1.5:41000".parse().unwrap()));
        assert_eq!(r.server, Some("172.30.0.2:53".parse().unwrap()));
        assert_eq!(r.transport, "UDP");
        assert_eq!(r.dns.query, "web.default.svc.cluster.local.");
        assert_eq!(r.dns.qtype, "A");
        assert_eq!(r.dns.rcode, "NOERROR");
        assert_eq!(r.dns.answered_by, "zone");
        assert_eq!(r.dns.addresses, ["10.96.0.12"]);
        assert_eq!(r.dns.cnames, ["real.example."]);
        assert_eq!(r.dns.ttl, Some(5));
        assert_eq!(r.dns.latency_us, 85);
    }

    #[test]
    fn a_denied_name_says_nxdomain_and_who_denied_it() {
        let mut a = answered(
            answer("x.example.", ResponseCode::NXDomain, Vec::new()),
            Source::FqdnDenied,
        );
        a.fqdn_policies = vec!["default/only-web".to_owned()];
        let r = record_of(&a).unwrap();
        assert_eq!(
            (r.dns.rcode.as_str(), r.dns.answered_by.as_str()),
            ("NXDOMAIN", "fqdn-denied")
        );
        assert_eq!(r.fqdn_policies, ["default/only-web"]);
        assert!(r.dns.addresses.is_empty() && r.dns.ttl.is_none());
    }

    #[test]
    fn ipv6_clients_are_not_recorded() {
        let mut a = answered(
            answer("a.", ResponseCode::NoError, Vec::new()),
            Source::Zone,
        );
        a.client = "[fd00::1]:5000".parse().unwrap();
        assert!(record_of(&a).is_none());
    }

    #[test]
    fn repeats_are_folded_and_counted_never_dropped() {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            accepting: AtomicBool::new(true),
            counts: Arc::new(RecordCounts::default()),
        });
        let mut s = Sender::new(
            PathBuf::from("/nonexistent/twilld.sock"),
            Arc::clone(&shared),
        );
        let bytes = answer("a.example.", ResponseCode::NoError, Vec::new());
        for _ in 0..4 {
            s.take(answered(bytes.clone(), Source::Cache));
        }
        // The same name in other case (0x20) is the same query.
        s.take(answered(
            answer("A.eXample.", ResponseCode::NoError, Vec::new()),
            Source::Cache,
        ));
        // Another answer code is another record.
        s.take(answered(
            answer("a.example.", ResponseCode::ServFail, Vec::new()),
            Source::Upstream,
        ));
        assert_eq!(s.ready.len(), 2);
        assert_eq!(s.counts.folded.load(Ordering::Relaxed), 4);
        // The window ends: the newest of the four folded queries stands for them all.
        for f in s.folding.values_mut() {
            f.since -= FOLD_WINDOW;
        }
        // twilld is not there: every query the records stand for is counted as lost.
        s.flush();
        assert!(s.ready.is_empty());
        assert_eq!(s.counts.lost.load(Ordering::Relaxed), 6);
        assert_eq!(s.counts.sent.load(Ordering::Relaxed), 0);
        assert!(s.down_since.is_some());
        // The serving threads stop copying answers until it is time to try again.
        assert!(!shared.accepting.load(Ordering::Relaxed));
        let recorder = Recorder {
            shared: Arc::clone(&shared),
        };
        recorder.record(|| unreachable!("not made while twilld is away"));
        assert_eq!(s.counts.lost.load(Ordering::Relaxed), 7);
        // While it is down, answers taken before are counted without being read.
        s.take(answered(bytes, Source::Cache));
        assert_eq!(s.counts.lost.load(Ordering::Relaxed), 8);
    }
}

//! DNS query records: every answered query, in short, handed to the node's twilld, which
//! names the client and keeps the record with the datapath's flow records (`netctl
//! monitor` shows them as `dns` records).
//!
//! The serving threads only copy the answer into a bounded queue ([`Recorder::record`]);
//! a thread of its own reads the answers, folds repeats and sends them to twilld's socket
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
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
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

/// The serving threads' end: cheap to call for every answer.
pub struct Recorder {
    queue: SyncSender<Answered>,
    counts: Arc<RecordCounts>,
}

impl Recorder {
    /// Starts the thread that sends records to the twilld at `socket`.
    pub fn start(socket: PathBuf) -> std::io::Result<Arc<Recorder>> {
        let (queue, answers) = std::sync::mpsc::sync_channel(QUEUE);
        let counts = Arc::new(RecordCounts::default());
        let sender = Sender {
            socket,
            answers,
            counts: Arc::clone(&counts),
            folding: HashMap::new(),
            ready: Vec::new(),
            down_since: None,
            retry_at: Instant::now(),
        };
        std::thread::Builder::new()
            .name("dns-records".to_owned())
            .spawn(move || sender.run())?;
        Ok(Arc::new(Recorder { queue, counts }))
    }

    pub fn counts(&self) -> &Arc<RecordCounts> {
        &self.counts
    }

    /// Queues one answer; counts it as lost when the queue is full.
    pub fn record(&self, answered: Answered) {
        match self.queue.try_send(answered) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What a record is folded by: the client, the question and the answer's code and source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FoldKey {
    client: IpAddr,
    query: String,
    qtype: String,
    rcode: String,
    answered_by: &'static str,
}

struct Folding {
    since: Instant,
    /// Queries seen since `since` and not recorded yet, and the newest of them.
    repeats: u32,
    newest: Option<DnsQueryRecord>,
}

struct Sender {
    socket: PathBuf,
    answers: Receiver<Answered>,
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
    fn run(mut self) {
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(wait) {
                Ok(a) => self.take(a),
                Err(RecvTimeoutError::Timeout) => {}
                // Every recorder is gone: the server stops.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_flush {
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
        let Some(record) = record_of(&a) else {
            return;
        };
        let key = FoldKey {
            client: a.client.ip(),
            query: record.dns.query.clone(),
            qtype: record.dns.qtype.clone(),
            rcode: record.dns.rcode.clone(),
            answered_by: a.source.name(),
        };
        let now = Instant::now();
        match self.folding.get_mut(&key) {
            Some(f) if now.duration_since(f.since) < FOLD_WINDOW => {
                f.repeats += 1;
                f.newest = Some(record);
                self.counts.folded.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                if self.folding.len() < MAX_FOLDING || self.folding.contains_key(&key) {
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
        }
    }

    /// Moves the folded repeats whose window is over to `ready`, and sends `ready`.
    fn flush(&mut self) {
        let now = Instant::now();
        let ready = &mut self.ready;
        self.folding.retain(|_, f| {
            if now.duration_since(f.since) < FOLD_WINDOW {
                return true;
            }
            if let Some(mut newest) = f.newest.take() {
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
        let (_queue, answers) = std::sync::mpsc::sync_channel(1);
        let mut s = Sender {
            socket: PathBuf::from("/nonexistent/twilld.sock"),
            answers,
            counts: Arc::new(RecordCounts::default()),
            folding: HashMap::new(),
            ready: Vec::new(),
            down_since: None,
            retry_at: Instant::now(),
        };
        let bytes = answer("a.example.", ResponseCode::NoError, Vec::new());
        for _ in 0..5 {
            s.take(answered(bytes.clone(), Source::Cache));
        }
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
        // While it is down, answers are counted without being read.
        s.take(answered(bytes, Source::Cache));
        assert_eq!(s.counts.lost.load(Ordering::Relaxed), 7);
    }
}

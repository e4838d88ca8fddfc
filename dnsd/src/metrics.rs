//! What twill-dnsd counts, and its `/metrics` page (`[metrics] listen`).
//!
//! Counting is a relaxed atomic add per query on the serving path; histograms only for
//! upstream queries, whose cost is a network round trip anyway. Gauges (cache fill, zone
//! state, learned FQDN addresses) are read when a scrape comes. Every label has a fixed,
//! small set of values: nothing per client, per name or per upstream address.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, histogram::Histogram},
    registry::{Registry, Unit},
};
use twill_dns::Transport;
use twill_metrics_http::{
    Format, Render,
    encode::{self, counter, gauge},
};

use crate::{forward::Forwarder, fqdn::Learner, records::RecordCounts, source::CurrentZone};

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The cluster zone (a Service, a pod, a name under the zone that does not exist).
    Zone,
    /// A cached answer to a name outside the zone.
    Cache,
    /// The upstreams (or, when they failed, a stale answer or SERVFAIL).
    Upstream,
    /// NXDOMAIN because no FQDNPolicy rule of the client allows the name.
    FqdnDenied,
    /// SERVFAIL because the zone is not read from etcd yet.
    NotReady,
}

impl Source {
    const ALL: [Source; 5] = [
        Source::Zone,
        Source::Cache,
        Source::Upstream,
        Source::FqdnDenied,
        Source::NotReady,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Source::Zone => "zone",
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::FqdnDenied => "fqdn-denied",
            Source::NotReady => "not-ready",
        }
    }
}

/// The response codes counted by name; the others are `other`.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

fn rcode_index(answer: &[u8]) -> usize {
    match answer.get(3).map(|b| b & 0x0f) {
        Some(code @ 0..=5) => usize::from(code),
        _ => RCODES.len() - 1,
    }
}

/// What happened to one query sent to one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// An answer (any code but SERVFAIL and REFUSED).
    Answered,
    /// SERVFAIL or REFUSED: the next upstream is asked.
    Failed,
    /// No answer within `forward.timeout_ms`.
    Timeout,
    /// A socket error, or a reply that does not match the query.
    Error,
}

impl Upstream {
    const ALL: [Upstream; 4] = [
        Upstream::Answered,
        Upstream::Failed,
        Upstream::Timeout,
        Upstream::Error,
    ];

    const fn name(self) -> &'static str {
        match self {
            Upstream::Answered => "answered",
            Upstream::Failed => "servfail-or-refused",
            Upstream::Timeout => "timeout",
            Upstream::Error => "error",
        }
    }
}

/// Why a query got no answer at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Not a DNS query twill-dnsd can read, without even a header to answer FORMERR to.
    Unreadable,
    /// Too many UDP queries waiting for the upstreams at once.
    Overload,
    /// A UDP datagram longer than a query can be.
    TooLong,
}

impl Dropped {
    const ALL: [Dropped; 3] = [Dropped::Unreadable, Dropped::Overload, Dropped::TooLong];

    const fn name(self) -> &'static str {
        match self {
            Dropped::Unreadable => "unreadable",
            Dropped::Overload => "overload",
            Dropped::TooLong => "too-long",
        }
    }
}

/// The counters of one twill-dnsd.
#[derive(Debug)]
pub struct Stats {
    queries: [AtomicU64; 2],
    answers: [AtomicU64; Source::ALL.len()],
    rcodes: [AtomicU64; RCODES.len()],
    dropped: [AtomicU64; Dropped::ALL.len()],
    upstream: [AtomicU64; Upstream::ALL.len()],
    stale: AtomicU64,
    upstream_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            queries: Default::default(),
            answers: Default::default(),
            rcodes: Default::default(),
            dropped: Default::default(),
            upstream: Default::default(),
            stale: AtomicU64::new(0),
            // 0.5 ms .. 4 s, doubling.
            upstream_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
            ),
        }
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Stats {
    /// A query came over `transport`.
    pub fn query(&self, transport: Transport) {
        add(&self.queries[usize::from(transport == Transport::Tcp)]);
    }

    /// `answer` goes out, from `source`.
    pub fn answered(&self, source: Source, answer: &[u8]) {
        add(&self.answers[source as usize]);
        add(&self.rcodes[rcode_index(answer)]);
    }

    pub fn dropped(&self, why: Dropped) {
        add(&self.dropped[why as usize]);
    }

    /// One upstream query ended as `outcome` after `took`.
    pub fn upstream(&self, outcome: Upstream, took: Duration) {
        add(&self.upstream[outcome as usize]);
        self.upstream_seconds.observe(took.as_secs_f64());
    }

    /// A stale answer was served (RFC 8767).
    pub fn stale(&self) {
        add(&self.stale);
    }

    /// Answers sent from `source` so far.
    pub fn answers_from(&self, source: Source) -> u64 {
        read(&self.answers[source as usize])
    }
}

/// The `/metrics` page: the counters and what is read at scrape time.
pub struct Page {
    pub stats: Arc<Stats>,
    pub forwarder: Arc<Forwarder>,
    pub learner: Arc<Learner>,
    pub zone: CurrentZone,
    /// Query records' counts (`None`: `records.enabled = false`).
    pub records: Option<Arc<RecordCounts>>,
}

impl Render for Page {
    fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot::of(self)));
        twill_metrics_http::encode(&registry, format)
    }
}

/// Everything a scrape shows, read at once.
#[derive(Debug)]
struct Snapshot {
    queries: [u64; 2],
    answers: [u64; Source::ALL.len()],
    rcodes: [u64; RCODES.len()],
    dropped: [u64; Dropped::ALL.len()],
    upstream: [u64; Upstream::ALL.len()],
    stale: u64,
    upstream_seconds: Histogram,
    cache_entries: usize,
    cache_bytes: usize,
    zone_loaded: bool,
    fqdn_denied: u64,
    fqdn_learned: u64,
    fqdn_failed: u64,
    /// Sent, lost, folded.
    records: Option<[u64; 3]>,
}

impl Snapshot {
    fn of(page: &Page) -> Snapshot {
        let s = &page.stats;
        let (cache_entries, cache_bytes) = page.forwarder.cache_usage();
        Snapshot {
            queries: s.queries.each_ref().map(read),
            answers: s.answers.each_ref().map(read),
            rcodes: s.rcodes.each_ref().map(read),
            dropped: s.dropped.each_ref().map(read),
            upstream: s.upstream.each_ref().map(read),
            stale: read(&s.stale),
            upstream_seconds: s.upstream_seconds.clone(),
            cache_entries,
            cache_bytes,
            zone_loaded: page.zone.borrow().is_some(),
            fqdn_denied: read(&page.learner.denied),
            fqdn_learned: read(&page.learner.learned),
            fqdn_failed: read(&page.learner.failed),
            records: page
                .records
                .as_ref()
                .map(|r| [read(&r.sent), read(&r.lost), read(&r.folded)]),
        }
    }
}

/// `rows` as a counter family with one label.
fn counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    encode::counters(
        enc,
        name,
        help,
        rows.into_iter()
            .map(|(value, count)| ([(label, value)], count)),
    )
}

fn gauge_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        counters(
            &mut enc,
            "twill_dns_queries",
            "Queries received, by transport",
            "transport",
            [("udp", self.queries[0]), ("tcp", self.queries[1])],
        )?;
        counters(
            &mut enc,
            "twill_dns_answers",
            "Answers sent, by where they came from",
            "source",
            Source::ALL
                .iter()
                .map(|s| (s.name(), self.answers[*s as usize])),
        )?;
        counters(
            &mut enc,
            "twill_dns_responses",
            "Answers sent, by response code",
            "rcode",
            RCODES.iter().copied().zip(self.rcodes),
        )?;
        counters(
            &mut enc,
            "twill_dns_dropped",
            "Queries that got no answer, by why",
            "reason",
            Dropped::ALL
                .iter()
                .map(|d| (d.name(), self.dropped[*d as usize])),
        )?;
        counters(
            &mut enc,
            "twill_dns_upstream_queries",
            "Queries sent to an upstream resolver, by what came of them",
            "result",
            Upstream::ALL
                .iter()
                .map(|u| (u.name(), self.upstream[*u as usize])),
        )?;
        if let Some([sent, lost, folded]) = self.records {
            counters(
                &mut enc,
                "twill_dns_query_records",
                "Answered queries recorded for twilld's flow records, by outcome: sent (twilld took them, repeats included) or lost (no room, or twilld did not take them); folded: of those, how many were counted as another record's repeats",
                "outcome",
                [("sent", sent), ("lost", lost), ("folded", folded)],
            )?;
        }
        {
            let metric = enc.encode_descriptor(
                "twill_dns_upstream_query_duration",
                "Time from sending a query to an upstream to its answer or failure",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            self.upstream_seconds.encode(metric)?;
        }
        counter(
            &mut enc,
            "twill_dns_stale_answers",
            "Expired cached answers served because no upstream answered in time (RFC 8767)",
            self.stale,
        )?;
        gauge(
            &mut enc,
            "twill_dns_cache_entries",
            "Answers to names outside the zone cached, fresh or stale",
            None,
            gauge_of(self.cache_entries),
        )?;
        gauge(
            &mut enc,
            "twill_dns_cache",
            "Estimated bytes of the cached answers (at most 64 MiB)",
            Some(&Unit::Bytes),
            gauge_of(self.cache_bytes),
        )?;
        gauge(
            &mut enc,
            "twill_dns_zone_loaded",
            "1 once the cluster zone is read from etcd; before, every query gets SERVFAIL",
            None,
            i64::from(self.zone_loaded),
        )?;
        counter(
            &mut enc,
            "twill_dns_fqdn_denied",
            "Queries answered NXDOMAIN because no FQDNPolicy rule of the pod allows the name",
            self.fqdn_denied,
        )?;
        counter(
            &mut enc,
            "twill_dns_fqdn_learned",
            "Addresses of allowed names written to TWILL_FQDN for the asking pod",
            self.fqdn_learned,
        )?;
        counter(
            &mut enc,
            "twill_dns_fqdn_learn_failures",
            "Allowed answers turned into SERVFAIL because their addresses could not be written",
            self.fqdn_failed,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_code_is_read_from_the_header() {
        let mut answer = [0u8; 12];
        assert_eq!(RCODES[rcode_index(&answer)], "NOERROR");
        answer[3] = 0x83;
        assert_eq!(RCODES[rcode_index(&answer)], "NXDOMAIN");
        answer[3] = 0x09;
        assert_eq!(RCODES[rcode_index(&answer)], "other");
        assert_eq!(RCODES[rcode_index(&answer[..2])], "other");
    }

    #[test]
    fn counts_appear_with_their_labels() {
        let stats = Stats::default();
        stats.query(Transport::Udp);
        stats.query(Transport::Udp);
        stats.query(Transport::Tcp);
        stats.answered(Source::Zone, &[0, 0, 0x81, 0x83]);
        stats.upstream(Upstream::Timeout, Duration::from_millis(2000));
        stats.dropped(Dropped::Overload);
        let snapshot = Snapshot {
            queries: stats.queries.each_ref().map(read),
            answers: stats.answers.each_ref().map(read),
            rcodes: stats.rcodes.each_ref().map(read),
            dropped: stats.dropped.each_ref().map(read),
            upstream: stats.upstream.each_ref().map(read),
            stale: 0,
            upstream_seconds: stats.upstream_seconds.clone(),
            cache_entries: 3,
            cache_bytes: 300,
            zone_loaded: true,
            fqdn_denied: 1,
            fqdn_learned: 2,
            fqdn_failed: 0,
            records: Some([7, 2, 4]),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let text = twill_metrics_http::encode(&registry, Format::Prometheus).unwrap();
        for line in [
            "twill_dns_queries_total{transport=\"udp\"} 2",
            "twill_dns_queries_total{transport=\"tcp\"} 1",
            "twill_dns_answers_total{source=\"zone\"} 1",
            "twill_dns_responses_total{rcode=\"NXDOMAIN\"} 1",
            "twill_dns_dropped_total{reason=\"overload\"} 1",
            "twill_dns_upstream_queries_total{result=\"timeout\"} 1",
            "twill_dns_upstream_query_duration_seconds_count 1",
            "twill_dns_cache_entries 3",
            "twill_dns_cache_bytes 300",
            "twill_dns_zone_loaded 1",
            "twill_dns_fqdn_learned_total 2",
            "twill_dns_query_records_total{outcome=\"sent\"} 7",
            "twill_dns_query_records_total{outcome=\"lost\"} 2",
            "twill_dns_query_records_total{outcome=\"folded\"} 4",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}

//! The node's records in memory: a bounded ring, numbered, that readers long-poll.
//!
//! Records are numbered from 1 in the order they were read; the ring keeps the newest
//! `flows.keep` and drops the oldest. A reader asks for the records after the last number
//! it saw; the answer says how many it missed (dropped before it asked) and how many the
//! datapath's ring lost, so neither kind of loss is silent.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use twill_api::{
    ErrorKind, Response,
    flow::{DnsQueryRecord, FlowStatus},
};

use super::{config::FlowMode, config::FlowsConfig, record::Kept};

/// Batches of DNS query records waiting for the reader to name them, at most.
const DNS_BATCHES: usize = 64;

pub struct FlowLog {
    node: String,
    config: FlowsConfig,
    inner: Mutex<Inner>,
    /// The newest record's number, for waiting readers.
    newest: tokio::sync::watch::Sender<u64>,
    /// To the reader, which names DNS query records with the datapath's (set when it
    /// starts).
    dns: std::sync::OnceLock<tokio::sync::mpsc::Sender<Vec<DnsQueryRecord>>>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<Kept>,
    /// The number of the next record.
    next: u64,
    /// Records read from the datapath.
    read: u64,
    /// `TWILL_FLOW_LOST` as last read.
    lost: u64,
    /// DNS query records taken, and twill-dnsd's count of those it could not hand over.
    dns_taken: u64,
    dns_lost: u64,
    /// What is wrong, by what it concerns (`ring`, `file`, ...).
    problems: BTreeMap<&'static str, String>,
}

impl FlowLog {
    pub fn new(node: String, config: FlowsConfig) -> FlowLog {
        FlowLog {
            node,
            config,
            inner: Mutex::new(Inner {
                next: 1,
                ..Inner::default()
            }),
            newest: tokio::sync::watch::Sender::new(0),
            dns: std::sync::OnceLock::new(),
        }
    }

    /// The reader's end of the DNS query records' queue; `None` once it is taken.
    pub fn dns_queue(&self) -> Option<tokio::sync::mpsc::Receiver<Vec<DnsQueryRecord>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(DNS_BATCHES);
        self.dns.set(tx).ok().map(|()| rx)
    }

    /// The answer to `Request::DnsQueries`: queued for the reader, or not taken at all
    /// when its queue is full (twill-dnsd counts them as lost).
    pub fn take_dns(&self, queries: Vec<DnsQueryRecord>, lost: u64) -> Response {
        if self.config.mode == FlowMode::Off {
            return Response::Error {
                kind: ErrorKind::BadRequest,
                message: format!(
                    "flow records are off on {} (flows.mode = \"off\" in its configuration)",
                    self.node
                ),
            };
        }
        let Some(tx) = self.dns.get() else {
            return Response::Error {
                kind: ErrorKind::Internal,
                message: format!("{} does not read flow records yet", self.node),
            };
        };
        self.lock().dns_lost = lost;
        if queries.len() > twill_api::MAX_DNS_QUERIES {
            return Response::Error {
                kind: ErrorKind::BadRequest,
                message: format!(
                    "{} DNS query records in one request; at most {}",
                    queries.len(),
                    twill_api::MAX_DNS_QUERIES
                ),
            };
        }
        let n = queries.len() as u32;
        match tx.try_send(queries) {
            Ok(()) => Response::Taken { taken: n },
            Err(_) => Response::Taken { taken: 0 },
        }
    }

    pub fn config(&self) -> &FlowsConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change below is complete before the lock is released.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the records and keeps them (dropping the oldest beyond `keep`).
    pub fn push(&self, batch: &mut [Kept]) {
        if batch.is_empty() {
            return;
        }
        let newest = {
            let mut inner = self.lock();
            for k in batch.iter_mut() {
                k.seq = inner.next;
                inner.next += 1;
                inner.records.push_back(k.clone());
                if k.dns.is_some() {
                    inner.dns_taken += 1;
                } else {
                    inner.read += 1;
                }
            }
            let keep = self.config.keep as usize;
            let excess = inner.records.len().saturating_sub(keep);
            inner.records.drain(..excess);
            inner.next - 1
        };
        self.newest.send_replace(newest);
    }

    /// Records the datapath's lost count; returns the increase since the last one.
    pub fn set_lost(&self, lost: u64) -> u64 {
        let mut inner = self.lock();
        let grown = lost.saturating_sub(inner.lost);
        inner.lost = lost;
        grown
    }

    /// Sets (`Some`) or clears (`None`) the problem about `what`.
    pub fn problem(&self, what: &'static str, problem: Option<String>) {
        let mut inner = self.lock();
        match problem {
            Some(p) => inner.problems.insert(what, p),
            None => inner.problems.remove(what),
        };
    }

    pub fn status(&self) -> FlowStatus {
        let inner = self.lock();
        FlowStatus {
            mode: self.config.mode.name().to_owned(),
            kept: inner.records.len() as u64,
            keep: u64::from(self.config.keep),
            newest: inner.next - 1,
            read: inner.read,
            lost: inner.lost,
            dns_taken: inner.dns_taken,
            dns_lost: inner.dns_lost,
            file: self.config.file.as_ref().map(|f| f.display().to_string()),
            problems: inner.problems.values().cloned().collect(),
        }
    }

    /// The answer to `Request::Flows` now, without waiting.
    pub fn after(&self, after: u64, max: u32) -> Response {
        let inner = self.lock();
        let newest = inner.next - 1;
        let oldest = inner.records.front().map_or(0, |k| k.seq);
        // Beyond the newest: a number of an earlier run of the daemon. From the start.
        let after = if after > newest { 0 } else { after };
        let skip = match oldest {
            0 => 0,
            o => (after + 1).saturating_sub(o) as usize,
        };
        let kept: Vec<Kept> = inner
            .records
            .iter()
            .skip(skip)
            .take(max as usize)
            .cloned()
            .collect();
        let lost = inner.lost;
        drop(inner);
        Response::Flows {
            next: kept.last().map_or(after, |k| k.seq),
            records: kept.iter().map(|k| k.event(&self.node)).collect(),
            oldest,
            newest,
            missed: oldest.saturating_sub(after + 1),
            lost,
        }
    }

    /// [`Self::after`], waiting up to `wait` for a record when there is none yet.
    pub async fn wait(&self, after: u64, max: u32, wait: Duration) -> Response {
        // Subscribed first: a record pushed after the look below wakes the wait.
        let mut newest = self.newest.subscribe();
        let answer = self.after(after, max);
        let empty = matches!(&answer, Response::Flows { records, .. } if records.is_empty());
        if !empty || max == 0 || wait.is_zero() {
            return answer;
        }
        let _ = tokio::time::timeout(wait, newest.changed()).await;
        self.after(after, max)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use twill_abi::flow::FlowRecord;

    use super::*;

    fn log(keep: u32) -> FlowLog {
        FlowLog::new(
            "node1".into(),
            FlowsConfig {
                keep,
                ..FlowsConfig::default()
            },
        )
    }

    fn records(n: usize) -> Vec<Kept> {
        (0..n)
            .map(|_| Kept {
                seq: 0,
                unix_ms: 0,
                record: FlowRecord::default(),
                source: None,
                destination: None,
                backend: None,
                service: None,
                egress: None,
                ingress: None,
                interface: Arc::from("eth0"),
                dns: None,
            })
            .collect()
    }

    fn seqs(r: &Response) -> (Vec<u64>, u64, u64, u64) {
        match r {
            Response::Flows {
                records,
                next,
                oldest,
                missed,
                ..
            } => (
                records.iter().map(|e| e.seq).collect(),
                *next,
                *oldest,
                *missed,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn readers_get_what_follows_their_last_number_and_are_told_what_they_missed() {
        let log = log(3);
        assert_eq!(seqs(&log.after(0, 10)), (vec![], 0, 0, 0));
        log.push(&mut records(2));
        assert_eq!(seqs(&log.after(0, 10)), (vec![1, 2], 2, 1, 0));
        assert_eq!(seqs(&log.after(1, 10)), (vec![2], 2, 1, 0));
        assert_eq!(seqs(&log.after(2, 10)), (vec![], 2, 1, 0));
        // 5 records in a ring of 3: 1 and 2 are gone; a reader at 1 missed one.
        log.push(&mut records(3));
        assert_eq!(seqs(&log.after(1, 10)), (vec![3, 4, 5], 5, 3, 1));
        assert_eq!(seqs(&log.after(3, 1)), (vec![4], 4, 3, 0));
        // A number from an earlier run of the daemon: from the start.
        assert_eq!(seqs(&log.after(99, 10)), (vec![3, 4, 5], 5, 3, 2));
        let status = log.status();
        assert_eq!(
            (status.kept, status.keep, status.newest, status.read),
            (3, 3, 5, 5)
        );
        assert_eq!(log.set_lost(10), 10);
        assert_eq!(log.set_lost(12), 2);
        assert_eq!(log.status().lost, 12);
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_next_record_or_the_timeout() {
        let log = Arc::new(log(10));
        log.push(&mut records(1));
        let started = std::time::Instant::now();
        let empty = log.wait(1, 10, Duration::from_millis(100)).await;
        assert_eq!(seqs(&empty).0, Vec::<u64>::new());
        assert!(started.elapsed() >= Duration::from_millis(100));
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.push(&mut records(1));
        });
        let started = std::time::Instant::now();
        let got = log.wait(1, 10, Duration::from_secs(5)).await;
        assert_eq!(seqs(&got).0, vec![2]);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

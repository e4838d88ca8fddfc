//! Reaching the cluster's store: connecting to etcd (with TLS when configured), and
//! following `/twill/v1/` as a map of parsed entries, with a pass after each change.
//! `twilld`'s Service and policy loops and `twill-dnsd` follow the store this way; they
//! differ only in what they parse and what a pass does.
//!
//! A pass runs at once for a change after a quiet spell, at most every [`DEBOUNCE`] during
//! a burst (a burst's changes are taken together), and, when asked, periodically.
//! Reconnects and starts over (a fresh snapshot) when the watch ends.
#![forbid(unsafe_code)]

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use tracing::warn;
use twill_api::cluster::{self, PodRecord};
use twill_k8s::Object;

/// Where etcd is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    /// Per request, and for connecting.
    pub timeout: Duration,
}

/// TLS to etcd: the CA to verify it, and optionally a client certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The `[etcd]` section of a daemon's configuration file, as written (twilld and
/// twill-dnsd read the same keys).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub timeout_seconds: Option<u64>,
}

impl EtcdSection {
    /// The checked settings; `endpoints` (from the command line) wins over the file's.
    /// An error names its key (`etcd.endpoints`, ...) and says what is wrong.
    pub fn check(self, endpoints: Option<Vec<String>>) -> Result<Etcd, (&'static str, String)> {
        let endpoints = endpoints
            .or(self.endpoints)
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".to_owned()]);
        if endpoints.is_empty() {
            return Err(("etcd.endpoints", "at least one endpoint is needed".into()));
        }
        for endpoint in &endpoints {
            let ok = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err((
                    "etcd.endpoints",
                    format!("{endpoint:?} is not an http:// or https:// host:port URL"),
                ));
            }
        }
        let tls = match (self.ca_file, self.cert_file, self.key_file) {
            (None, None, None) => None,
            (Some(ca_file), cert_file, key_file) => {
                if cert_file.is_some() != key_file.is_some() {
                    return Err((
                        "etcd.cert_file",
                        "cert_file and key_file go together".into(),
                    ));
                }
                Some(EtcdTls {
                    ca_file,
                    cert_file,
                    key_file,
                })
            }
            (None, _, _) => {
                return Err((
                    "etcd.ca_file",
                    "a client certificate needs ca_file as well".into(),
                ));
            }
        };
        let timeout = Duration::from_secs(self.timeout_seconds.unwrap_or(5));
        if timeout.is_zero() {
            return Err(("etcd.timeout_seconds", "must be at least 1".into()));
        }
        Ok(Etcd {
            endpoints,
            tls,
            timeout,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// A client of `etcd`.
pub async fn connect(etcd: &Etcd) -> Result<Client, StoreError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(etcd.timeout)
        .with_timeout(etcd.timeout);
    if let Some(tls) = &etcd.tls {
        let mut tls_options =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            tls_options = tls_options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls_options);
    }
    Client::connect(&etcd.endpoints, Some(options))
        .await
        .map_err(|source| StoreError::Connect {
            endpoints: etcd.endpoints.join(","),
            source,
        })
}

/// The shortest time between two passes for changes.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The entries a follower keeps, by key; what does not parse is not kept.
pub type Store<E> = BTreeMap<String, E>;

/// Kubernetes objects and pod records, parsed once when they arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Object(Box<Object>),
    Pod(PodRecord),
}

/// [`Entry`] from a key and its value; `None` for other keys and what does not parse.
pub fn parse(key: &str, value: &[u8]) -> Option<Entry> {
    if key.starts_with(cluster::OBJECTS) {
        serde_json::from_slice::<Object>(value)
            .ok()
            .map(|o| Entry::Object(Box::new(o)))
    } else if key.starts_with(cluster::PODS) {
        serde_json::from_slice::<PodRecord>(value)
            .ok()
            .map(Entry::Pod)
    } else {
        None
    }
}

/// Why a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// A fresh snapshot (start, or after the watch ended).
    Snapshot,
    /// Entries changed.
    Changed,
    /// The periodic pass (`resync`): read back what the kernel holds and repair it.
    Resync,
}

/// Where a pass's store came from.
#[derive(Clone, Copy, Debug)]
struct Seen {
    cluster_id: u64,
    revision: i64,
    /// It held Kubernetes objects.
    objects: bool,
}

/// Whether the snapshot `now` replaces a store that was wiped: another etcd cluster than
/// the last pass's, or the same one with its revision gone back (a fresh etcd with the
/// same flags has the same cluster id; revisions never go back otherwise), with no
/// objects where the last had some.
fn store_was_replaced(last: Option<Seen>, now: Seen) -> bool {
    match last {
        Some(l) if l.objects && !now.objects => {
            l.cluster_id != now.cluster_id || now.revision < l.revision
        }
        _ => false,
    }
}

/// Applies a put or delete; whether the store changed.
fn apply<E>(
    store: &mut Store<E>,
    parse: fn(&str, &[u8]) -> Option<E>,
    key: &str,
    value: Option<&[u8]>,
) -> bool {
    match value.and_then(|v| parse(key, v)) {
        Some(entry) => {
            store.insert(key.to_owned(), entry);
            true
        }
        None => store.remove(key).is_some(),
    }
}

/// Follows the store forever: `pass` gets the entries and the store's revision after the
/// snapshot, after changes, and every `resync` if given. `what` names the follower in logs.
pub async fn follow<E>(
    etcd: &Etcd,
    what: &str,
    resync: Option<Duration>,
    parse: fn(&str, &[u8]) -> Option<E>,
    mut pass: impl FnMut(&Store<E>, Pass, i64),
) {
    // The etcd cluster and revision the last pass came from, and whether its store held
    // objects.
    let mut last: Option<Seen> = None;
    let mut holding = false;
    loop {
        let mut client = match connect(etcd).await {
            Ok(c) => c,
            Err(e) => {
                warn!("{what}: {}", error_chain(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let snapshot = match client
            .get(cluster::ROOT, Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!("{what}: reading the store: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut revision = snapshot.header().map_or(0, |h| h.revision());
        let cluster_id = snapshot.header().map_or(0, |h| h.cluster_id());
        let has_objects = snapshot
            .kvs()
            .iter()
            .any(|kv| kv.key().starts_with(cluster::OBJECTS.as_bytes()));
        let now = Seen {
            cluster_id,
            revision,
            objects: has_objects,
        };
        if store_was_replaced(last, now) {
            // Another etcd cluster, or one whose revision went back, empty of objects
            // where the last had some: a store wiped or replaced, not a cluster whose
            // objects were deleted. Applying it would delete every Service and open every
            // pod a policy isolates; the last state stays until objects appear
            // (`netctl import`, or any `netctl apply`).
            if !holding {
                warn!(
                    "{what}: etcd was replaced (revision {revision}, was {}) and holds no \
                     objects: keeping the last state until objects are stored (netctl import)",
                    last.map_or(0, |l| l.revision)
                );
                holding = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if holding {
            warn!("{what}: the new store holds objects again; following it");
            holding = false;
        }
        let mut store = Store::new();
        for kv in snapshot.kvs() {
            if let Ok(key) = kv.key_str() {
                apply(&mut store, parse, key, Some(kv.value()));
            }
        }
        last = Some(now);
        pass(&store, Pass::Snapshot, revision);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = match client.watch(cluster::ROOT, Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                warn!("{what}: watching the store: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(resync.unwrap_or(Duration::from_secs(3600)));
        tick.tick().await;
        let mut pending: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut last_pass = tokio::time::Instant::now() - DEBOUNCE;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) if !r.canceled() => r,
                        Ok(_) => { warn!("{what}: the watch ended; starting over"); break; }
                        Err(e) => { warn!("{what}: watch: {e}; starting over"); break; }
                    };
                    if let Some(header) = response.header() {
                        revision = revision.max(header.revision());
                    }
                    let mut changed = false;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        let value = match event.event_type() {
                            EventType::Put => Some(kv.value()),
                            EventType::Delete => None,
                        };
                        changed |= apply(&mut store, parse, key, value);
                    }
                    if changed && pending.is_none() {
                        pending = Some(Box::pin(tokio::time::sleep_until(last_pass + DEBOUNCE)));
                    }
                }
                () = async {
                    match pending.as_mut() {
                        Some(s) => s.await,
                        None => std::future::pending().await,
                    }
                } => {
                    pending = None;
                    last = Some(Seen {
                        cluster_id,
                        revision,
                        objects: store.keys().any(|k| k.starts_with(cluster::OBJECTS)),
                    });
                    pass(&store, Pass::Changed, revision);
                    last_pass = tokio::time::Instant::now();
                }
                _ = tick.tick(), if resync.is_some() => {
                    pass(&store, Pass::Resync, revision);
                    last_pass = tokio::time::Instant::now();
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_empty_store_of_another_cluster_or_an_older_revision_is_held() {
        let seen = |cluster_id, revision, objects| super::Seen {
            cluster_id,
            revision,
            objects,
        };
        let replaced = super::store_was_replaced;
        assert!(
            replaced(Some(seen(1, 90, true)), seen(2, 95, false)),
            "another cluster"
        );
        assert!(
            replaced(Some(seen(1, 90, true)), seen(1, 4, false)),
            "a fresh etcd"
        );
        assert!(!replaced(None, seen(2, 4, false)), "first start");
        assert!(
            !replaced(Some(seen(1, 90, true)), seen(1, 95, false)),
            "all deleted"
        );
        assert!(
            !replaced(Some(seen(1, 90, false)), seen(2, 4, false)),
            "was empty"
        );
        assert!(
            !replaced(Some(seen(1, 90, true)), seen(1, 8, true)),
            "restored"
        );
    }

    use super::*;

    #[test]
    fn only_parsed_entries_are_kept_and_a_change_is_told() {
        let mut store: Store<Entry> = Store::new();
        let record = br#"{"namespace":"a","name":"b","node":"n","ip":"10.244.0.2","container_id":"c","ifname":"eth0"}"#;
        let key = cluster::pod_key("a", "b");
        assert!(apply(&mut store, parse, &key, Some(record)));
        assert!(matches!(store.get(&key), Some(Entry::Pod(p)) if p.name == "b"));
        // A node record is not an entry: no change.
        assert!(!apply(
            &mut store,
            parse,
            &cluster::node_key("n"),
            Some(b"{}")
        ));
        // A value that does not parse removes what was there.
        assert!(apply(&mut store, parse, &key, Some(b"not json")));
        assert!(store.is_empty());
        assert!(!apply(&mut store, parse, &key, None));
    }
}

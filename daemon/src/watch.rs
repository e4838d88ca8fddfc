//! Following the cluster's store: a snapshot of `/twill/v1/`, then its watch, kept as a
//! map of parsed entries; a pass runs at once for a change after a quiet spell, at most
//! every [`DEBOUNCE`] during a burst, and periodically. Reconnects and starts over (a fresh snapshot) when the watch ends.
//! Shared by the Service and NetworkPolicy loops, which differ only in what they parse
//! and what a pass does.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use tracing::warn;
use twill_api::cluster::{self, PodRecord};
use twill_k8s::Object;

use crate::config::Config;

/// The shortest time between two passes for changes: a burst's changes are taken together.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The entries a loop keeps, by key; what does not parse is not kept.
pub type Store<E> = BTreeMap<String, E>;

/// What the Service and policy loops read under `/twill/v1/`, parsed once when it
/// arrives: Kubernetes objects and pod records.
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
    /// Changes arrived.
    Changed,
    /// The periodic pass: read back what the kernel holds and repair it.
    Resync,
}

fn put<E>(store: &mut Store<E>, parse: fn(&str, &[u8]) -> Option<E>, key: &str, value: &[u8]) {
    match parse(key, value) {
        Some(entry) => {
            store.insert(key.to_owned(), entry);
        }
        None => {
            store.remove(key);
        }
    }
}

/// Follows the store forever. `what` names the loop in logs.
pub async fn follow<E>(
    config: &Config,
    what: &str,
    parse: fn(&str, &[u8]) -> Option<E>,
    mut pass: impl FnMut(&Store<E>, Pass),
) {
    loop {
        let mut client = match crate::connect(config).await {
            Ok(c) => c,
            Err(e) => {
                warn!("{what}: {e:#}");
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
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let mut store = Store::new();
        for kv in snapshot.kvs() {
            if let Ok(key) = kv.key_str() {
                put(&mut store, parse, key, kv.value());
            }
        }
        pass(&store, Pass::Snapshot);
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
        let mut tick = tokio::time::interval(config.resync);
        tick.tick().await;
        let mut pending: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // A change after a quiet spell is passed at once; then at most one pass per
        // DEBOUNCE, so a burst is taken together.
        let mut last_pass = tokio::time::Instant::now() - DEBOUNCE;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) if !r.canceled() => r,
                        Ok(_) => { warn!("{what}: the watch ended; starting over"); break; }
                        Err(e) => { warn!("{what}: watch: {e}; starting over"); break; }
                    };
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        match event.event_type() {
                            EventType::Put => put(&mut store, parse, key, kv.value()),
                            EventType::Delete => { store.remove(key); }
                        }
                    }
                    if pending.is_none() {
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
                    pass(&store, Pass::Changed);
                    last_pass = tokio::time::Instant::now();
                }
                _ = tick.tick() => {
                    pass(&store, Pass::Resync);
                    last_pass = tokio::time::Instant::now();
                }
            }
        }
    }
}

//! Keeps the node's Service maps equal to what etcd says: Services, pods and their
//! placements, and EndpointSlices are compiled ([`crate::lbplan`]) into frontends and
//! backends, diffed against the pinned maps, and only the difference is written. Runs on
//! every change (debounced) and periodically; a restarted daemon finds the maps as it left
//! them, keeps their service ids, and changes nothing that is still right.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use tracing::{info, warn};
use twill_abi::lb::{Frontend, FrontendKey};
use twill_api::cluster::{self, PodRecord};
use twill_k8s::{Object, endpoints::PodPlacement};

use crate::{config::Config, lbplan, node::Node};

/// How long to gather changes before one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Everything under `/twill/v1/` this loop reads, by key.
type Store = BTreeMap<String, Vec<u8>>;

fn decode(
    store: &Store,
) -> (
    Vec<twill_k8s::Service>,
    Vec<(twill_k8s::Pod, PodPlacement)>,
    Vec<twill_k8s::EndpointSlice>,
) {
    let mut services = Vec::new();
    let mut pod_objects = Vec::new();
    let mut slices = Vec::new();
    let mut placements = BTreeMap::new();
    for (key, value) in store {
        if key.starts_with(cluster::OBJECTS) {
            match serde_json::from_slice::<Object>(value) {
                Ok(Object::Service(s)) => services.push(s),
                Ok(Object::Pod(p)) => pod_objects.push(p),
                Ok(Object::EndpointSlice(s)) => slices.push(s),
                _ => {}
            }
        } else if key.starts_with(cluster::PODS)
            && let Ok(r) = serde_json::from_slice::<PodRecord>(value)
        {
            placements.insert(
                (r.namespace, r.name),
                PodPlacement {
                    ip: r.ip,
                    node: r.node,
                },
            );
        }
    }
    let pods = pod_objects
        .into_iter()
        .filter_map(|p| {
            let placement = placements
                .get(&(p.namespace.clone(), p.name.clone()))?
                .clone();
            Some((p, placement))
        })
        .collect();
    (services, pods, slices)
}

/// One pass: compile, diff against the maps, write the difference.
fn reconcile(node: &Node, store: &Store) {
    let (services, pods, slices) = decode(store);
    let pod_refs: Vec<(&twill_k8s::Pod, PodPlacement)> =
        pods.iter().map(|(p, pl)| (p, pl.clone())).collect();
    let slice_refs: Vec<&twill_k8s::EndpointSlice> = slices.iter().collect();
    let desired = lbplan::compile(node.name(), &services, &pod_refs, &slice_refs);
    let outcome = node.with_dataplane(|d| -> Result<usize, twill_bpf::DatapathError> {
        let current: BTreeMap<FrontendKey, Frontend> = d.datapath.frontends()?.into_iter().collect();
        let mut next_id = current.values().map(|f| f.service_id).max().unwrap_or(0) + 1;
        let mut changed = 0;
        for (key, want) in &desired {
            let service_id = match current.get(key) {
                Some(f) => f.service_id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            let frontend = Frontend {
                service_id,
                backend_count: want.backends.len() as u32,
                flags: want.flags,
                affinity_timeout: want.affinity_timeout,
            };
            let same = current.get(key) == Some(&frontend)
                && d.datapath.backends_of(&frontend)? == want.backends;
            if !same {
                d.datapath.set_frontend(*key, frontend, &want.backends)?;
                info!(service = %want.service, backends = want.backends.len(), "service frontend programmed");
                changed += 1;
            }
        }
        for key in current.keys().filter(|k| !desired.contains_key(k)) {
            d.datapath.remove_frontend(key)?;
            changed += 1;
        }
        Ok(changed)
    });
    match outcome {
        Some(Err(e)) => warn!("programming services: {e:#}"),
        Some(Ok(n)) if n > 0 => info!(
            frontends = desired.len(),
            changed = n,
            "services reconciled"
        ),
        _ => {}
    }
}

pub async fn run(config: Config, node: Arc<Node>) {
    loop {
        let mut client = match crate::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                warn!("services: {e:#}");
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
                warn!("services: reading the store: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let mut store: Store = snapshot
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), kv.value().to_vec())))
            .collect();
        reconcile(&node, &store);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = match client.watch(cluster::ROOT, Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                warn!("services: watching the store: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(config.resync);
        tick.tick().await;
        let mut pending: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) if !r.canceled() => r,
                        Ok(_) => { warn!("services: the watch ended; starting over"); break; }
                        Err(e) => { warn!("services: watch: {e}; starting over"); break; }
                    };
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        match event.event_type() {
                            EventType::Put => { store.insert(key.to_owned(), kv.value().to_vec()); }
                            EventType::Delete => { store.remove(key); }
                        }
                    }
                    if pending.is_none() {
                        pending = Some(Box::pin(tokio::time::sleep(DEBOUNCE)));
                    }
                }
                () = async {
                    match pending.as_mut() {
                        Some(s) => s.await,
                        None => std::future::pending().await,
                    }
                } => {
                    pending = None;
                    reconcile(&node, &store);
                }
                _ = tick.tick() => reconcile(&node, &store),
            }
        }
    }
}

//! Keeps the node's Service maps equal to what etcd says: Services, pods and their
//! placements, and EndpointSlices (parsed once, as they arrive) are compiled
//! ([`lbplan`]) into frontends and backends, diffed against what was last written
//! (read back from the pinned maps at start and at each periodic pass), and only the
//! difference is written. Runs on
//! every change (debounced) and periodically; a restarted daemon finds the maps as it left
//! them, keeps their service ids, and changes nothing that is still right.

mod lbplan;

use std::{collections::BTreeMap, sync::Arc};

use tracing::{info, warn};
use twill_abi::lb::{Backend, Frontend, FrontendKey, SCOPE_NODE_PORT};
use twill_k8s::{Object, endpoints::PodPlacement};

use crate::{
    config::Config,
    metrics::ServiceFill,
    node::Node,
    watch::{Entry, Pass, parse},
};

/// Everything this loop reads, by key.
type Store = crate::watch::Store<Entry>;

type Decoded<'a> = (
    Vec<&'a twill_k8s::Service>,
    Vec<(&'a twill_k8s::Pod, PodPlacement)>,
    Vec<&'a twill_k8s::EndpointSlice>,
);

fn decode(store: &Store) -> Decoded<'_> {
    let mut services = Vec::new();
    let mut pod_objects = Vec::new();
    let mut slices = Vec::new();
    let mut placements = BTreeMap::new();
    for entry in store.values() {
        match entry {
            Entry::Object(o) => match o.as_ref() {
                Object::Service(s) => services.push(s),
                Object::Pod(p) => pod_objects.push(p),
                Object::EndpointSlice(s) => slices.push(s),
                Object::Namespace(_)
                | Object::NetworkPolicy(_)
                | Object::FqdnPolicy(_)
                | Object::BgpPeer(_) => {}
            },
            Entry::Pod(r) => {
                placements.insert(
                    (r.namespace.as_str(), r.name.as_str()),
                    PodPlacement {
                        ip: r.ip,
                        node: r.node.clone(),
                    },
                );
            }
        }
    }
    let pods = pod_objects
        .into_iter()
        .filter_map(|p| {
            let placement = placements
                .get(&(p.namespace.as_str(), p.name.as_str()))?
                .clone();
            Some((p, placement))
        })
        .collect();
    (services, pods, slices)
}

/// What this daemon last wrote to the maps: frontends with their backends. `None` until
/// read back from the (pinned) maps, and again after a failed write or at each periodic
/// pass, so hand-made changes to the maps are found and repaired.
type Programmed = Option<BTreeMap<FrontendKey, (Frontend, Vec<Backend>)>>;

/// One pass: compile, diff against what the maps hold, write the difference.
fn reconcile(node: &Node, store: &Store, programmed: &mut Programmed) {
    let started = std::time::Instant::now();
    let (services, pods, slices) = decode(store);
    let desired = lbplan::compile(node.name(), &services, &pods, &slices);
    let outcome = node.with_dataplane(|d| -> Result<usize, twill_bpf::DatapathError> {
        let current = match programmed {
            Some(p) => p,
            None => {
                let mut read = BTreeMap::new();
                for (key, frontend) in d.datapath.frontends()? {
                    let backends = d.datapath.backends_of(&frontend)?;
                    read.insert(key, (frontend, backends));
                }
                programmed.insert(read)
            }
        };
        let mut next_id = current.values().map(|(f, _)| f.service_id).max().unwrap_or(0) + 1;
        let mut changed = 0;
        for (key, want) in &desired {
            let service_id = match current.get(key) {
                Some((f, _)) => f.service_id,
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
            let same = current
                .get(key)
                .is_some_and(|(f, b)| *f == frontend && *b == want.backends);
            if !same {
                d.datapath.set_frontend(*key, frontend, &want.backends)?;
                current.insert(*key, (frontend, want.backends.clone()));
                tracing::debug!(service = %want.service, backends = want.backends.len(), "service frontend programmed");
                changed += 1;
            }
        }
        d.node_programs(desired.keys().any(|k| k.scope == SCOPE_NODE_PORT))?;
        let gone: Vec<FrontendKey> = current
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            d.datapath.remove_frontend(&key)?;
            current.remove(&key);
            changed += 1;
        }
        Ok(changed)
    });
    if let Some(outcome) = &outcome {
        node.instruments.pass(
            crate::metrics::Loop::Services,
            started.elapsed(),
            outcome.is_ok(),
        );
    }
    if let (Some(Ok(_)), Some(current)) = (&outcome, programmed.as_ref()) {
        node.instruments.services_programmed(fill(current));
    }
    match outcome {
        Some(Err(e)) => {
            warn!("programming services: {e:#}");
            *programmed = None;
        }
        Some(Ok(n)) if n > 0 => info!(
            frontends = desired.len(),
            changed = n,
            "services reconciled"
        ),
        _ => {}
    }
}

/// How many entries the Service maps hold when they hold `programmed`.
fn fill(programmed: &BTreeMap<FrontendKey, (Frontend, Vec<Backend>)>) -> ServiceFill {
    let members: std::collections::BTreeSet<(u32, u32, u16)> = programmed
        .values()
        .flat_map(|(f, backends)| backends.iter().map(|b| (f.service_id, b.ip, b.port)))
        .collect();
    ServiceFill {
        frontends: programmed.len() as u64,
        backends: programmed.values().map(|(_, b)| b.len() as u64).sum(),
        members: members.len() as u64,
    }
}

pub async fn run(config: Config, node: Arc<Node>) {
    let mut programmed: Programmed = None;
    crate::watch::follow(&config, "services", parse, |store, pass| {
        if pass != Pass::Changed {
            // A fresh snapshot or the periodic pass: read the maps back, which repairs
            // what was changed behind our back.
            programmed = None;
        }
        reconcile(&node, store, &mut programmed);
    })
    .await
}

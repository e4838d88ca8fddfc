//! Flow records: what the datapath's programs report through the ring buffer
//! `TWILL_FLOWS` (see `twill_abi::flow`), named from this daemon's state and kept for
//! `netctl monitor`.
//!
//! At start the daemon writes the record mode (`flows.mode`) for the programs; the ring's
//! size (`flows.ring_bytes`) went to the loader with the other map sizes. A reader task
//! waits on the ring's file descriptor, drains it in batches and names each record: pods
//! by address (the store's placements and this node's own allocations), a translated
//! record's Service by its frontend, each policy verdict by the compiled table it came
//! from (the rule that allowed it, or the policies isolating the pod), and the interface.
//! The records go to a bounded in-memory ring ([`FlowLog`]) that the socket server answers
//! long polls from, and optionally to a JSON lines file. `TWILL_FLOW_LOST` (records the
//! ring had no room for) is read every second and reported with every answer and in
//! STATUS. With `flows.listen` the same answers are served over TCP to clients that send
//! the node's token ([`remote`]), for `netctl monitor` on other nodes.

pub mod config;
mod file;
mod log;
mod names;
mod record;
mod remote;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};
use twill_abi::flow::{FlowRecord, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED};
use twill_api::{ErrorKind, Response};

pub use self::log::FlowLog;
use self::{
    config::FlowMode,
    file::FlowFile,
    names::{Names, PodName},
    record::{Kept, TableNames, Who, delivered_to, has_addresses, ip},
};
use crate::{config::Config, node::Node};

/// Records drained from the ring before they are named and kept, at most.
const BATCH: usize = 1024;
/// After the ring is drained, the reader waits this long before it looks again: records
/// arriving meanwhile are read and named as one batch, not one wakeup each (at thousands
/// of new connections a second, the wakeups cost more than the naming).
const COALESCE: Duration = Duration::from_millis(20);
/// How often `TWILL_FLOW_LOST` is read.
const LOST_EVERY: Duration = Duration::from_secs(1);
/// Table names kept; beyond this the cache starts over (ids are never reused while the
/// daemon runs, so an entry never goes stale, only unused).
const TABLE_CACHE: usize = 4096;

/// Sets the record mode and starts the reader, the name follower and the TCP listener
/// (`flows.listen`). The log exists (for STATUS) even when records are off. Errs only when
/// the listener's token cannot be read or its address bound: the daemon does not start.
pub fn start(config: &Config, node: &Arc<Node>, handle: rtnetlink::Handle) -> anyhow::Result<()> {
    let flows = &config.flows;
    let log = Arc::new(FlowLog::new(config.node_name.clone(), flows.clone()));
    let _ = node.flows.set(log.clone());
    if let Some(remote) = &flows.remote {
        let (listener, token) = remote::bind(remote)?;
        tokio::spawn(remote::serve(listener, token, node.clone()));
    }
    start_reader(config, node, handle, log);
    Ok(())
}

fn start_reader(config: &Config, node: &Arc<Node>, handle: rtnetlink::Handle, log: Arc<FlowLog>) {
    let flows = &config.flows;
    match node.with_dataplane(|d| d.datapath.set_flow_mode(flows.mode.code())) {
        Some(Err(e)) => {
            let problem = format!(
                "setting the flow record mode ({}): {:#}",
                flows.mode.name(),
                anyhow::Error::new(e)
            );
            warn!("{problem}");
            log.problem("mode", Some(problem));
        }
        Some(Ok(())) => {}
        None => return,
    }
    if flows.mode == FlowMode::Off {
        info!("flow records are off (flows.mode)");
        return;
    }
    info!(
        mode = flows.mode.name(),
        ring_bytes = flows.ring_bytes,
        keep = flows.keep,
        file = ?flows.file,
        "flow records on"
    );
    let (names_tx, names_rx) = tokio::sync::watch::channel(Arc::new(Names::default()));
    let etcd = config.etcd();
    tokio::spawn(async move {
        twill_store::follow(&etcd, "flows", None, names::parse, |store, _, _| {
            names_tx.send_replace(Arc::new(Names::build(store)));
        })
        .await;
    });
    let dns = log.dns_queue().expect("the reader is started once");
    let reader = Reader {
        dns,
        log,
        node: node.clone(),
        names: names_rx,
        handle,
        pin_dir: config.bpffs_root.clone(),
        tables: HashMap::new(),
        interfaces: HashMap::new(),
        file: flows
            .file
            .clone()
            .map(|path| FlowFile::new(path, flows.file_max_bytes)),
    };
    tokio::spawn(reader.run());
}

/// The socket server's answer to `Request::Flows`.
pub async fn answer(node: &Node, after: u64, max: u32, wait_ms: u32) -> Response {
    let Some(log) = node.flows.get() else {
        return Response::Error {
            kind: ErrorKind::Internal,
            message: "this node keeps no flow records".to_owned(),
        };
    };
    if log.config().mode == FlowMode::Off {
        return Response::Error {
            kind: ErrorKind::BadRequest,
            message: format!(
                "flow records are off on {} (flows.mode = \"off\" in its configuration)",
                node.name()
            ),
        };
    }
    let wait = Duration::from_millis(u64::from(wait_ms.min(twill_api::MAX_FLOWS_WAIT_MS)));
    log.wait(after, max.min(twill_api::MAX_FLOWS), wait).await
}

struct Reader {
    /// DNS query records from twill-dnsd (`Request::DnsQueries`).
    dns: tokio::sync::mpsc::Receiver<Vec<twill_api::flow::DnsQueryRecord>>,
    log: Arc<FlowLog>,
    node: Arc<Node>,
    names: tokio::sync::watch::Receiver<Arc<Names>>,
    handle: rtnetlink::Handle,
    pin_dir: PathBuf,
    tables: HashMap<u32, Arc<TableNames>>,
    interfaces: HashMap<u32, Arc<str>>,
    file: Option<FlowFile>,
}

/// This node's pods by address and by host interface, from its allocations: fresher than
/// the store's placements, and the only name of a packet too malformed to have addresses.
#[derive(Default)]
struct LocalPods {
    by_ip: HashMap<Ipv4Addr, Arc<PodName>>,
    by_interface: HashMap<String, Arc<PodName>>,
}

impl LocalPods {
    fn of(node: &Node, names: &Names) -> LocalPods {
        let mut local = LocalPods::default();
        for r in node.pod_records() {
            let pod = Arc::new(PodName {
                labels: names.labels(&r.namespace, &r.name),
                namespace: r.namespace,
                name: r.name,
                node: r.node,
            });
            let key = twill_api::AttachmentKey {
                container_id: r.container_id,
                ifname: r.ifname,
            };
            local
                .by_interface
                .insert(twill_api::host_ifname(&key), pod.clone());
            local.by_ip.insert(r.ip, pod);
        }
        local
    }
}

/// Who is at `addr`: a pod by the store's placements or this node's allocations
/// (`local`, read once when first needed), else a node.
fn who(node: &Node, names: &Names, local: &mut Option<LocalPods>, addr: Ipv4Addr) -> Option<Who> {
    if let Some(p) = names.pod(addr) {
        return Some(Who::Pod(p.clone()));
    }
    let local = local.get_or_insert_with(|| LocalPods::of(node, names));
    if let Some(p) = local.by_ip.get(&addr) {
        return Some(Who::Pod(p.clone()));
    }
    names.node(addr).map(|n| Who::Node(n.clone()))
}

impl Reader {
    async fn run(mut self) {
        let ring = loop {
            match twill_bpf::open_flow_ring(&self.pin_dir) {
                Ok(ring) => break ring,
                Err(e) => {
                    let problem = format!("opening the flow ring: {:#}", anyhow::Error::new(e));
                    warn!("{problem}; trying again in 5 s");
                    self.log.problem("ring", Some(problem));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        // tokio deprecates this constructor because a type's `as_raw_fd` could return
        // another descriptor later; the ring owns its map's descriptor for its whole life
        // and always returns that one. (Its `unsafe` successor would lift this crate's
        // `forbid(unsafe_code)`.)
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(ring, Interest::READABLE);
        let mut ring = match registered {
            Ok(fd) => fd,
            Err(e) => {
                let problem = format!("waiting on the flow ring: {e}");
                warn!("{problem}");
                self.log.problem("ring", Some(problem));
                return;
            }
        };
        self.log.problem("ring", None);
        let mut lost_tick = tokio::time::interval(LOST_EVERY);
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                ready = ring.readable_mut() => {
                    let mut guard = match ready {
                        Ok(g) => g,
                        Err(e) => {
                            warn!("waiting on the flow ring: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    let mut batch = Vec::new();
                    let mut drained = false;
                    while batch.len() < BATCH {
                        match guard.get_inner_mut().next() {
                            Some(Some(r)) => batch.push(r),
                            // A record of another build's size: nothing to name.
                            Some(None) => {}
                            None => {
                                drained = true;
                                break;
                            }
                        }
                    }
                    if drained {
                        guard.clear_ready();
                    }
                    drop(guard);
                    self.keep(batch).await;
                    if drained {
                        tokio::time::sleep(COALESCE).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                Some(batch) = self.dns.recv() => self.keep_dns(batch),
                _ = lost_tick.tick() => {
                    match twill_bpf::read_flows_lost(&self.pin_dir) {
                        Ok(lost) => {
                            let grown = self.log.set_lost(lost);
                            if grown > 0 && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                                warn!(lost, "{grown} flow record(s) lost: the ring was full (flows.ring_bytes = {})", self.log.config().ring_bytes);
                                last_warning = Some(Instant::now());
                            }
                        }
                        Err(e) => warn!("reading the lost flow records: {:#}", anyhow::Error::new(e)),
                    }
                }
            }
        }
    }

    /// Names the records and keeps them.
    async fn keep(&mut self, batch: Vec<FlowRecord>) {
        if batch.is_empty() {
            return;
        }
        let names = self.names.borrow().clone();
        self.name_interfaces(&batch).await;
        let pod_tables = self.name_tables(&batch);
        let mut local: Option<LocalPods> = None;
        // CLOCK_MONOTONIC to the wall clock, as of now.
        let unix_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let offset = unix_ns - i128::from(twill_bpf::monotonic_ns());
        let kept: Vec<Kept> = batch
            .into_iter()
            .map(|r| {
                let interface = self
                    .interfaces
                    .get(&r.ifindex)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(format!("if{}", r.ifindex)));
                let mut who = |wire: u32| who(&self.node, &names, &mut local, ip(wire));
                let (mut source, mut destination, mut backend, mut service) =
                    (None, None, None, None);
                if has_addresses(&r) {
                    source = who(r.src_ip);
                    destination = who(r.dst_ip);
                    if r.xlate_ip != 0 {
                        backend = who(r.xlate_ip);
                    }
                    service = names
                        .service(ip(r.dst_ip), u16::from_be(r.dst_port), r.protocol)
                        .cloned();
                } else {
                    // Nothing could be read: the pod interface says whose packet it was.
                    let local = local.get_or_insert_with(|| LocalPods::of(&self.node, &names));
                    let pod = local.by_interface.get(&*interface).cloned().map(Who::Pod);
                    if r.direction == twill_abi::metrics::Direction::ToPod as u8 {
                        destination = pod;
                    } else if r.direction == twill_abi::metrics::Direction::FromPod as u8 {
                        source = pod;
                    }
                }
                let table = |v: &twill_abi::flow::PolicyVerdict, pod: u32| {
                    if v.table != 0 {
                        self.tables.get(&v.table).cloned()
                    } else {
                        pod_tables.get(&pod).cloned()
                    }
                };
                Kept {
                    seq: 0,
                    unix_ms: ((offset + i128::from(r.time_ns)).max(0) / 1_000_000) as u64,
                    egress: table(&r.egress, r.src_ip),
                    ingress: table(&r.ingress, delivered_to(&r)),
                    record: r,
                    source,
                    destination,
                    backend,
                    service,
                    interface,
                    dns: None,
                }
            })
            .collect();
        self.store(kept);
    }

    /// Names twill-dnsd's query records and keeps them.
    fn keep_dns(&mut self, batch: Vec<twill_api::flow::DnsQueryRecord>) {
        let names = self.names.borrow().clone();
        let mut local: Option<LocalPods> = None;
        let kept: Vec<Kept> = batch
            .into_iter()
            .filter_map(|q| Kept::of_dns(q, |addr| who(&self.node, &names, &mut local, addr)))
            .collect();
        self.store(kept);
    }

    /// Keeps named records, and writes them to the file.
    fn store(&mut self, mut kept: Vec<Kept>) {
        self.log.push(&mut kept);
        if let Some(file) = self.file.as_mut() {
            let node = self.node.name();
            let events: Vec<_> = kept.iter().map(|k| k.event(node)).collect();
            match file.write(&events) {
                Ok(()) => self.log.problem("file", None),
                Err(e) => {
                    let problem = format!("writing {}: {e}", file.path().display());
                    if self.log.status().problems.iter().all(|p| *p != problem) {
                        warn!("{problem}");
                    }
                    self.log.problem("file", Some(problem));
                }
            }
        }
    }

    /// Fills the interface names of the batch the cache does not have (one netlink
    /// request each).
    async fn name_interfaces(&mut self, batch: &[FlowRecord]) {
        let missing: HashSet<u32> = batch
            .iter()
            .map(|r| r.ifindex)
            .filter(|i| *i != 0 && !self.interfaces.contains_key(i))
            .collect();
        for index in missing {
            use futures::TryStreamExt as _;
            let link = self
                .handle
                .link()
                .get()
                .match_index(index)
                .execute()
                .try_next()
                .await;
            let name = match link {
                Ok(Some(l)) => twill_netlink::link_name(&l).map(str::to_owned),
                _ => None,
            };
            let name = name.unwrap_or_else(|| format!("if{index}"));
            if self.interfaces.len() >= TABLE_CACHE {
                self.interfaces.clear();
            }
            self.interfaces.insert(index, Arc::from(name));
        }
    }

    /// Fills the table names of the batch's policy verdicts the cache does not have, and
    /// returns the tables of pods denied with no table (by address, wire order): one
    /// look at the policy state, under the dataplane's lock, for the whole batch.
    fn name_tables(&mut self, batch: &[FlowRecord]) -> HashMap<u32, Arc<TableNames>> {
        let named = |v: u8| matches!(v, VERDICT_ALLOWED | VERDICT_DENIED | VERDICT_AUDIT);
        let mut ids = HashSet::new();
        let mut pods = HashSet::new();
        for r in batch {
            for (v, pod) in [(&r.egress, r.src_ip), (&r.ingress, delivered_to(r))] {
                if !named(v.verdict) {
                    continue;
                }
                if v.table != 0 {
                    if !self.tables.contains_key(&v.table) {
                        ids.insert(v.table);
                    }
                } else if v.verdict != VERDICT_ALLOWED {
                    pods.insert(pod);
                }
            }
        }
        if ids.is_empty() && pods.is_empty() {
            return HashMap::new();
        }
        let found = self.node.with_dataplane(|d| {
            let tables: Vec<(u32, TableNames)> = ids
                .iter()
                .filter_map(|id| Some((*id, TableNames::of(d.policy.table(*id)?))))
                .collect();
            let pods: Vec<(u32, TableNames)> = pods
                .iter()
                .filter_map(|p| Some((*p, TableNames::of(d.policy.pod_table(ip(*p))?))))
                .collect();
            (tables, pods)
        });
        let Some((tables, pods)) = found else {
            return HashMap::new();
        };
        if self.tables.len() + tables.len() > TABLE_CACHE {
            self.tables.clear();
        }
        for (id, t) in tables {
            self.tables.insert(id, Arc::new(t));
        }
        pods.into_iter().map(|(p, t)| (p, Arc::new(t))).collect()
    }
}

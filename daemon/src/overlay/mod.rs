//! The VXLAN overlay between nodes, and its control loop: node records from etcd (a
//! snapshot, then a watch) become routes, neighbours and FDB entries on the VXLAN device.
//! Each pass diffs what the kernel holds against what etcd says and changes only the
//! difference; a periodic pass also puts back anything removed by hand.
//!
//! The parts: [`peers`](mod@peers) (pure: what the device should hold, and the
//! difference), [`vxlan`] (the device and its entries, through netlink) and [`underlay`]
//! (the interface the overlay runs over).

pub mod peers;
pub mod underlay;
pub mod vxlan;

use std::{collections::BTreeMap, pin::Pin, sync::Arc, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt as _;
use rtnetlink::{
    constants::{RTMGRP_IPV4_ROUTE, RTMGRP_NEIGH},
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{RouteNetlinkMessage, route::RouteAttribute},
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::Mutex;
use tracing::{info, warn};
use twill_api::{
    OverlayStatus,
    cluster::{self, NodeRecord},
};
use twill_ipam::{ClusterCidr, PodSubnet};

use crate::{
    config::Config,
    overlay::{
        peers::{Programmed, diff, peers},
        vxlan::Device,
    },
};

pub struct Overlay {
    handle: rtnetlink::Handle,
    device: Device,
    cluster: ClusterCidr,
    me: String,
    records: Mutex<BTreeMap<String, NodeRecord>>,
    /// The outcome of the last pass, for the node's status.
    status: std::sync::Mutex<OverlayStatus>,
    instruments: crate::metrics::Instruments,
}

impl Overlay {
    pub fn new(
        handle: rtnetlink::Handle,
        device: Device,
        cluster: ClusterCidr,
        me: String,
        instruments: crate::metrics::Instruments,
    ) -> Self {
        Self {
            handle,
            device,
            cluster,
            me,
            records: Mutex::new(BTreeMap::new()),
            status: std::sync::Mutex::new(OverlayStatus::default()),
            instruments,
        }
    }

    /// The node's own subnet is leased: its VTEP address goes on the device.
    pub async fn local_subnet(&self, subnet: ipnetwork::Ipv4Network) {
        let ip = PodSubnet(subnet).node_address();
        if let Err(e) = vxlan::ensure_address(&self.handle, &self.device, ip).await {
            warn!("giving {} the address {ip}: {e}", vxlan::DEVICE);
        }
    }

    /// The outcome of the last pass.
    pub fn status(&self) -> OverlayStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record(&self, peers: usize, problem: Option<String>) -> bool {
        let ok = problem.is_none();
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = OverlayStatus {
            peers: u32::try_from(peers).unwrap_or(u32::MAX),
            problem,
        };
        ok
    }

    /// One pass: make the device hold what the current records say. Returns whether
    /// everything is in place; a pass that failed is retried soon, not at the next tick.
    async fn reconcile(&self) -> bool {
        let started = std::time::Instant::now();
        let ok = self.pass().await;
        self.instruments
            .pass(crate::metrics::Loop::Overlay, started.elapsed(), ok);
        ok
    }

    async fn pass(&self) -> bool {
        let desired = {
            let records = self.records.lock().await;
            let peers = peers(&self.me, &self.cluster, records.values());
            Programmed::from_peers(peers.values())
        };
        let current = match vxlan::read_programmed(&self.handle, &self.device, &self.cluster).await
        {
            Ok(c) => c,
            Err(e) => {
                let problem = format!("reading {}'s entries: {e}", vxlan::DEVICE);
                warn!("overlay: {problem}");
                // What the kernel held before is unknown; keep the last count.
                let before = self.status().peers as usize;
                return self.record(before, Some(problem));
            }
        };
        let changes = diff(&desired, &current);
        if changes.is_empty() {
            return self.record(desired.routes.len(), None);
        }
        tracing::debug!(?changes, "overlay changes");
        let failed = vxlan::apply(&self.handle, &self.device, &changes).await;
        info!(
            peers = desired.routes.len(),
            changed = changes.count(),
            failed = failed.len(),
            "overlay reconciled"
        );
        for f in &failed {
            warn!("overlay: {f}");
        }
        let problem = (!failed.is_empty()).then(|| failed.join("; "));
        let reached = desired.routes.len().saturating_sub(failed.len());
        self.record(reached, problem)
    }
}

/// How soon a pass that failed is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// How long to gather kernel notifications before one pass repairs what they reported.
const DRIFT_DEBOUNCE: Duration = Duration::from_millis(100);

type Notifications =
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Subscribes to route and neighbour changes, so an entry deleted by hand is put back at
/// once rather than at the next periodic pass.
fn subscribe() -> Option<Notifications> {
    let (mut connection, _handle, messages) = rtnetlink::new_connection()
        .map_err(|e| warn!("overlay: no netlink notifications ({e}); relying on the periodic pass"))
        .ok()?;
    let groups = SocketAddr::new(0, RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH);
    if let Err(e) = connection.socket_mut().socket_mut().bind(&groups) {
        warn!("overlay: no netlink notifications ({e}); relying on the periodic pass");
        return None;
    }
    tokio::spawn(connection);
    Some(messages)
}

/// Whether a notification says something was removed from `device`.
fn removed_from(message: &NetlinkMessage<RouteNetlinkMessage>, device: u32) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == device)),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
            n.header.ifindex == device
        }
        _ => false,
    }
}

fn parse(kv: &etcd_client::KeyValue) -> Option<(String, NodeRecord)> {
    let key = kv.key_str().ok()?;
    let name = key.strip_prefix(cluster::NODES)?.to_owned();
    let record: NodeRecord = serde_json::from_slice(kv.value()).ok()?;
    Some((name, record))
}

/// Runs forever: snapshot, watch, reconcile; reconnects when etcd goes away, while the
/// kernel keeps forwarding with what it has.
pub async fn run(config: Config, overlay: Arc<Overlay>, resync: Duration) {
    let mut notifications = subscribe();
    // A pending pass: after kernel notifications settle, or to retry a failed pass.
    let mut repair: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let retry_later = |ok: bool, repair: &mut Option<Pin<Box<tokio::time::Sleep>>>| {
        if !ok && repair.is_none() {
            *repair = Some(Box::pin(tokio::time::sleep(RETRY)));
        }
    };
    loop {
        let mut client = match crate::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                warn!("overlay: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let snapshot = match client
            .get(cluster::NODES, Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!("overlay: reading node records: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let revision = snapshot.header().map_or(0, |h| h.revision());
        *overlay.records.lock().await = snapshot.kvs().iter().filter_map(parse).collect();
        retry_later(overlay.reconcile().await, &mut repair);

        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = match client.watch(cluster::NODES, Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                warn!("overlay: watching node records: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(resync);
        tick.tick().await;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) if !r.canceled() => r,
                        Ok(_) => { warn!("overlay: the watch ended; starting over"); break; }
                        Err(e) => { warn!("overlay: watch: {e}; starting over"); break; }
                    };
                    {
                        let mut records = overlay.records.lock().await;
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            match event.event_type() {
                                EventType::Put => {
                                    if let Some((name, record)) = parse(kv) {
                                        records.insert(name, record);
                                    }
                                }
                                EventType::Delete => {
                                    if let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(cluster::NODES)) {
                                        records.remove(name);
                                    }
                                }
                            }
                        }
                    }
                    retry_later(overlay.reconcile().await, &mut repair);
                }
                _ = tick.tick() => retry_later(overlay.reconcile().await, &mut repair),
                Some((message, _)) = async {
                    match notifications.as_mut() {
                        Some(n) => n.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if repair.is_none() && removed_from(&message, overlay.device.index) {
                        repair = Some(Box::pin(tokio::time::sleep(DRIFT_DEBOUNCE)));
                    }
                }
                () = async {
                    match repair.as_mut() {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                } => {
                    repair = None;
                    retry_later(overlay.reconcile().await, &mut repair);
                }
            }
        }
    }
}

//! The overlay's control loop: node records from etcd (a snapshot, then a watch) become
//! routes, neighbours and FDB entries on the VXLAN device. Each pass diffs what the kernel
//! holds against what etcd says and changes only the difference; a periodic pass also puts
//! back anything removed by hand.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::Mutex;
use tracing::{info, warn};
use twill_api::cluster::{self, NodeRecord};
use twill_ipam::{ClusterCidr, PodSubnet};

use crate::{
    config::Config,
    peers::{Programmed, diff, peers},
    vxlan::{self, Device},
};

pub struct Overlay {
    handle: rtnetlink::Handle,
    device: Device,
    cluster: ClusterCidr,
    me: String,
    records: Mutex<BTreeMap<String, NodeRecord>>,
}

impl Overlay {
    pub fn new(
        handle: rtnetlink::Handle,
        device: Device,
        cluster: ClusterCidr,
        me: String,
    ) -> Self {
        Self {
            handle,
            device,
            cluster,
            me,
            records: Mutex::new(BTreeMap::new()),
        }
    }

    /// The node's own subnet is leased: its VTEP address goes on the device.
    pub async fn local_subnet(&self, subnet: ipnetwork::Ipv4Network) {
        let ip = PodSubnet(subnet).node_address();
        if let Err(e) = vxlan::ensure_address(&self.handle, &self.device, ip).await {
            warn!("giving {} the address {ip}: {e}", vxlan::DEVICE);
        }
    }

    /// One pass: make the device hold what the current records say.
    async fn reconcile(&self) {
        let desired = {
            let records = self.records.lock().await;
            let peers = peers(&self.me, &self.cluster, records.values());
            Programmed::from_peers(peers.values())
        };
        let current = match vxlan::read_programmed(&self.handle, &self.device, &self.cluster).await
        {
            Ok(c) => c,
            Err(e) => {
                warn!("reading {}'s entries: {e}", vxlan::DEVICE);
                return;
            }
        };
        let changes = diff(&desired, &current);
        if changes.is_empty() {
            return;
        }
        tracing::debug!(?changes, "overlay changes");
        let failed = vxlan::apply(&self.handle, &self.device, &changes).await;
        info!(
            peers = desired.routes.len(),
            changed = changes.count(),
            failed = failed.len(),
            "overlay reconciled"
        );
        for f in failed {
            warn!("overlay: {f}");
        }
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
        overlay.reconcile().await;

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
                    overlay.reconcile().await;
                }
                _ = tick.tick() => overlay.reconcile().await,
            }
        }
    }
}

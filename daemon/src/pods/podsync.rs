//! Publishes this node's pods (name, address) to etcd, so `netctl get pods` and, later,
//! Service endpoints see them cluster-wide. A reconciler like the others: desired (the
//! allocations) against current (the records in etcd that name this node), on every
//! change and periodically. One etcd write per pod added or removed, never per second.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use tracing::{info, warn};
use twill_api::cluster::{self, PodRecord};

use crate::{config::Config, node::Node};

async fn sync_once(client: &mut Client, node: &Node) -> Result<(), etcd_client::Error> {
    let desired: BTreeMap<String, PodRecord> = node
        .pod_records()
        .into_iter()
        .map(|r| (cluster::pod_key(&r.namespace, &r.name), r))
        .collect();
    let resp = client
        .get(cluster::PODS, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut current: BTreeMap<String, (PodRecord, i64)> = BTreeMap::new();
    for kv in resp.kvs() {
        if let (Ok(key), Ok(record)) = (
            kv.key_str(),
            serde_json::from_slice::<PodRecord>(kv.value()),
        ) && record.node == node.name()
        {
            current.insert(key.to_owned(), (record, kv.mod_revision()));
        }
    }
    let mut written = 0;
    for (key, record) in &desired {
        if current.get(key).map(|(r, _)| r) != Some(record) {
            let value = serde_json::to_string(record).expect("plain record");
            client.put(key.as_str(), value, None).await?;
            written += 1;
        }
    }
    for (key, (_, revision)) in &current {
        if !desired.contains_key(key) {
            // Only if nobody rewrote it since we read it (the pod may have moved).
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *revision,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            client.txn(txn).await?;
            written += 1;
        }
    }
    if written > 0 {
        info!(pods = desired.len(), written, "pod records synced");
    }
    Ok(())
}

pub async fn run(config: Config, node: Arc<Node>) {
    loop {
        let mut client = match crate::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                warn!("pod records: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let started = std::time::Instant::now();
            let synced = sync_once(&mut client, &node).await;
            node.instruments.pass(
                crate::metrics::Loop::PodRecords,
                started.elapsed(),
                synced.is_ok(),
            );
            if let Err(e) = synced {
                warn!("pod records: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
            tokio::select! {
                () = node.changed.notified() => {}
                () = tokio::time::sleep(config.resync) => {}
            }
        }
    }
}

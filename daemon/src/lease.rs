//! The node's pod-subnet lease in etcd.
//!
//! Two etcd leases per node, both kept alive by the daemon:
//! - *alive* (TTL = lease TTL) carries the node record: it disappears soon after the node
//!   stops renewing, so other nodes drop their routes to it;
//! - *hold* (TTL = lease TTL + quarantine) carries the subnet key: a dead node's subnet
//!   stays taken for the quarantine, so a node that was cut off from etcd for a while comes
//!   back to find its subnet still its own (Flannel's duplicate-subnet bugs).
//!
//! Subnets are claimed in a transaction that succeeds only if the key is absent (or, for a
//! node taking back its own subnet, unchanged since it was read), so two nodes never hold
//! one subnet. etcd writes are per node and per renewal, never per pod.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use twill_api::cluster::{self, NodeRecord, SubnetRecord, VersionedNodeRecord};
use twill_ipam::ClusterCidr;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: timed out after {0:?}")]
    Timeout(Duration),
    #[error("record under {key} is unreadable: {message}")]
    Record { key: String, message: String },
}

/// What the lease is for.
#[derive(Clone, Debug)]
pub struct LeaseSpec {
    pub node: String,
    pub cluster: ClusterCidr,
    pub ttl: Duration,
    pub quarantine: Duration,
    pub underlay_ip: Ipv4Addr,
    /// MAC of the node's VXLAN device, published in its node record.
    pub vtep_mac: Option<String>,
    pub timeout: Duration,
    /// Where the node serves flow records over TCP, published in its node record.
    pub flows_listen: Option<std::net::SocketAddr>,
    /// The node's configured labels, published in its node record.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A subnet this node holds, and the etcd leases that hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSubnet {
    pub subnet: Ipv4Network,
    pub alive_lease: i64,
    pub hold_lease: i64,
}

/// How an attempt to lease a subnet ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Held {
        held: HeldSubnet,
        /// The subnet this node had before (from its state directory) when another node
        /// holds it now: this node must not use it.
        lost: Option<(Ipv4Network, String)>,
    },
    /// Every subnet of the cluster CIDR is held or in quarantine.
    Exhausted { subnets: u64 },
}

async fn timed<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, LeaseError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| LeaseError::Timeout(timeout))?
        .map_err(LeaseError::Etcd)
}

/// Subnets currently held in etcd, with holder and the key's mod revision.
async fn held_subnets(
    client: &mut Client,
    timeout: Duration,
) -> Result<BTreeMap<Ipv4Network, (SubnetRecord, i64)>, LeaseError> {
    let resp = timed(
        timeout,
        client.get(cluster::SUBNETS, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut held = BTreeMap::new();
    for kv in resp.kvs() {
        let key = kv.key_str().unwrap_or_default().to_owned();
        let Some(subnet) = cluster::subnet_from_key(&key) else {
            continue; // Not a subnet key: someone else's data under our prefix.
        };
        let record: SubnetRecord =
            serde_json::from_slice(kv.value()).map_err(|e| LeaseError::Record {
                key: key.clone(),
                message: e.to_string(),
            })?;
        held.insert(subnet, (record, kv.mod_revision()));
    }
    Ok(held)
}

/// Leases a subnet for `spec.node`: the one etcd already says is this node's, else
/// `previous` (what the state directory remembers) if free, else the lowest free one.
/// Grants fresh etcd leases; the caller keeps them alive with [`renew`].
pub async fn acquire(
    client: &mut Client,
    spec: &LeaseSpec,
    previous: Option<Ipv4Network>,
) -> Result<Outcome, LeaseError> {
    let alive = timed(
        spec.timeout,
        client.lease_grant(spec.ttl.as_secs() as i64, None),
    )
    .await?
    .id();
    let hold_ttl = (spec.ttl + spec.quarantine).as_secs() as i64;
    let hold = timed(spec.timeout, client.lease_grant(hold_ttl, None))
        .await?
        .id();
    let result = claim(client, spec, previous, alive, hold).await;
    if !matches!(result, Ok(Outcome::Held { .. })) {
        // Leases of a failed attempt would only expire; revoke them now.
        let _ = timed(spec.timeout, client.lease_revoke(alive)).await;
        let _ = timed(spec.timeout, client.lease_revoke(hold)).await;
    }
    result
}

async fn claim(
    client: &mut Client,
    spec: &LeaseSpec,
    previous: Option<Ipv4Network>,
    alive: i64,
    hold: i64,
) -> Result<Outcome, LeaseError> {
    let mut lost = None;
    // Each round reads the table once and tries one subnet; a lost race means another node
    // took that subnet between our read and our write, so the next round skips it.
    for _ in 0..64 {
        let held = held_subnets(client, spec.timeout).await?;
        let ours = held
            .iter()
            .find(|(s, (r, _))| r.node == spec.node && spec.cluster.check_subnet(**s).is_ok())
            .map(|(s, (_, rev))| (*s, *rev));
        if let Some(p) = previous
            && let Some((record, _)) = held.get(&p)
            && record.node != spec.node
        {
            lost = Some((p, record.node.clone()));
        }
        let (subnet, guard) = match ours {
            // etcd says this subnet is ours (a restart within the quarantine): take it back,
            // provided nobody touched the key since we read it.
            Some((subnet, rev)) => (
                subnet,
                Compare::mod_revision(cluster::subnet_key(subnet), CompareOp::Equal, rev),
            ),
            None => {
                let taken: BTreeSet<Ipv4Network> = held.keys().copied().collect();
                let Some(subnet) = spec.cluster.pick(&taken, previous) else {
                    return Ok(Outcome::Exhausted {
                        subnets: spec.cluster.subnet_count(),
                    });
                };
                (
                    subnet,
                    Compare::create_revision(cluster::subnet_key(subnet), CompareOp::Equal, 0),
                )
            }
        };
        let subnet_value = serde_json::to_string(&SubnetRecord {
            node: spec.node.clone(),
        })
        .expect("plain record");
        let node_value = serde_json::to_string(&VersionedNodeRecord {
            record: NodeRecord {
                name: spec.node.clone(),
                subnet,
                underlay_ip: spec.underlay_ip,
                vtep_mac: spec.vtep_mac.clone(),
            },
            version: Some(crate::VERSION.to_owned()),
            flows_listen: spec.flows_listen,
            labels: spec.labels.clone(),
        })
        .expect("plain record");
        let txn = Txn::new().when([guard]).and_then([
            TxnOp::put(
                cluster::subnet_key(subnet),
                subnet_value,
                Some(PutOptions::new().with_lease(hold)),
            ),
            TxnOp::put(
                cluster::node_key(&spec.node),
                node_value,
                Some(PutOptions::new().with_lease(alive)),
            ),
        ]);
        if timed(spec.timeout, client.txn(txn)).await?.succeeded() {
            return Ok(Outcome::Held {
                held: HeldSubnet {
                    subnet,
                    alive_lease: alive,
                    hold_lease: hold,
                },
                lost,
            });
        }
    }
    Err(LeaseError::Record {
        key: cluster::SUBNETS.to_owned(),
        message: "lost the race for a subnet 64 times in a row".to_owned(),
    })
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Both leases renewed and the subnet key still names this node.
    Renewed,
    /// A lease expired (etcd answered TTL 0), or the subnet key no longer names this node:
    /// the subnet must be leased again.
    Lost(String),
}

/// Renews both leases once and checks that etcd still says the subnet is ours.
pub async fn renew(
    client: &mut Client,
    spec: &LeaseSpec,
    held: &HeldSubnet,
) -> Result<Renewal, LeaseError> {
    for (name, id) in [("alive", held.alive_lease), ("hold", held.hold_lease)] {
        let expired = || Renewal::Lost(format!("the {name} lease {id:x} expired"));
        let renewed = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match timed(spec.timeout, renewed).await {
            Ok(Some(resp)) if resp.ttl() > 0 => {}
            Ok(_) => return Ok(expired()),
            // etcd says so as an error when it already revoked the lease (for instance
            // after its own clock jumped past the TTL).
            Err(LeaseError::Etcd(etcd_client::Error::LeaseKeepAliveError(m)))
                if m.contains("not found") =>
            {
                return Ok(expired());
            }
            Err(e) => return Err(e),
        }
    }
    let key = cluster::subnet_key(held.subnet);
    let resp = timed(spec.timeout, client.get(key.clone(), None)).await?;
    match resp.kvs().first() {
        None => Ok(Renewal::Lost(format!("{key} is gone"))),
        Some(kv) => {
            let record: SubnetRecord =
                serde_json::from_slice(kv.value()).map_err(|e| LeaseError::Record {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            if record.node == spec.node && kv.lease() == held.hold_lease {
                Ok(Renewal::Renewed)
            } else {
                Ok(Renewal::Lost(format!(
                    "{key} now names node {} (lease {:x})",
                    record.node,
                    kv.lease()
                )))
            }
        }
    }
}

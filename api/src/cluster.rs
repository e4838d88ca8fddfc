//! What twill keeps in etcd: the key layout and the records under it. Every twill key lives
//! under [`ROOT`]; see `docs/architecture.md` for the table.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Every twill key starts with this.
pub const ROOT: &str = "/twill/v1/";
/// `SUBNETS` + `10.244.1.0-24`: which node holds a pod subnet. Bound to the holder's
/// "hold" lease, whose TTL is the lease TTL plus the quarantine, so a dead node's subnet is
/// kept from others for the quarantine after its node record is gone.
pub const SUBNETS: &str = "/twill/v1/subnets/";
/// `NODES` + node name: the node record other nodes build their routes from. Bound to the
/// node's "alive" lease (the lease TTL).
pub const NODES: &str = "/twill/v1/nodes/";

/// The etcd key of a pod subnet (`/` in the CIDR becomes `-`).
pub fn subnet_key(subnet: Ipv4Network) -> String {
    format!("{SUBNETS}{}-{}", subnet.network(), subnet.prefix())
}

/// The subnet a [`subnet_key`] names.
pub fn subnet_from_key(key: &str) -> Option<Ipv4Network> {
    let (ip, prefix) = key.strip_prefix(SUBNETS)?.rsplit_once('-')?;
    Ipv4Network::new(ip.parse().ok()?, prefix.parse().ok()?).ok()
}

/// `PODS` + `namespace/name`: a pod's address and node, published by the node's daemon
/// from its allocations (for pods whose runtime named them in CNI_ARGS).
pub const PODS: &str = "/twill/v1/pods/";

pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{PODS}{namespace}/{name}")
}

/// Value under a pod key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

/// `OBJECTS` + `<resource>/<namespace>/<name>` (`namespaces/<name>` for Namespaces): the
/// Kubernetes objects applied with `netctl apply`, as validated and completed (allocated
/// ClusterIP and NodePorts filled in).
pub const OBJECTS: &str = "/twill/v1/objects/";
/// `SERVICE_IPS` + ClusterIP: which Service holds it (`namespace/name`).
pub const SERVICE_IPS: &str = "/twill/v1/serviceips/";
/// `NODE_PORTS` + `<port>-<protocol>`: which Service holds it.
pub const NODE_PORTS: &str = "/twill/v1/nodeports/";

/// Every stored object of one resource (`services`, `pods`, ...).
pub fn objects_prefix(resource: &str) -> String {
    format!("{OBJECTS}{resource}/")
}

pub fn object_key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{OBJECTS}{resource}/{ns}/{name}"),
        None => format!("{OBJECTS}{resource}/{name}"),
    }
}

pub fn service_ip_key(ip: Ipv4Addr) -> String {
    format!("{SERVICE_IPS}{ip}")
}

pub fn node_port_key(port: u16, protocol: &str) -> String {
    format!("{NODE_PORTS}{port}-{protocol}")
}

pub fn node_key(node: &str) -> String {
    format!("{NODES}{node}")
}

/// Value under a subnet key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    /// The node holding the subnet.
    pub node: String,
}

/// Value under a node key: what other nodes need to reach this node's pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub subnet: Ipv4Network,
    /// The node's address on the underlay.
    pub underlay_ip: Ipv4Addr,
    /// MAC of the node's VXLAN device, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

/// The label every node has: its name, as Kubernetes sets it.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Node `name`'s labels: `kubernetes.io/hostname` (its name) and its `configured` ones
/// (twilld's `node_labels`, which cannot set the hostname label).
pub fn node_labels(
    name: &str,
    configured: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut labels = configured.clone();
    labels.insert(HOSTNAME_LABEL.to_owned(), name.to_owned());
    labels
}

/// A node record as `twilld` writes it: the record, and the version of the daemon that
/// wrote it (absent in records of daemons before it was added). Kept beside
/// [`NodeRecord`] rather than in it, so code that builds records field by field is not
/// concerned; readers of [`NodeRecord`] ignore the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedNodeRecord {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// `twilld --version` of the writer, e.g. `0.1.0 (9724cc7)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the node serves its flow records over TCP (`flows.listen`, an unspecified
    /// address replaced by the underlay address); absent when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_listen: Option<std::net::SocketAddr>,
    /// The node's labels from its configuration (`node_labels`), besides
    /// `kubernetes.io/hostname`, which every node has; absent when there are none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_record_carries_the_version_and_old_records_still_read() {
        let record = NodeRecord {
            name: "a".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            underlay_ip: "172.30.0.11".parse().unwrap(),
            vtep_mac: None,
        };
        let written = serde_json::to_string(&VersionedNodeRecord {
            record: record.clone(),
            version: Some("0.1.0 (abc1234)".into()),
            flows_listen: None,
            labels: Default::default(),
        })
        .unwrap();
        assert_eq!(
            written,
            r#"{"name":"a","subnet":"10.244.1.0/24","underlay_ip":"172.30.0.11","version":"0.1.0 (abc1234)"}"#
        );
        // Readers of the plain record are not bothered by the version.
        assert_eq!(
            serde_json::from_str::<NodeRecord>(&written).unwrap(),
            record
        );
        // A record of an older daemon has none.
        let old = r#"{"name":"a","subnet":"10.244.1.0/24","underlay_ip":"172.30.0.11"}"#;
        let read: VersionedNodeRecord = serde_json::from_str(old).unwrap();
        assert_eq!((read.record, read.version), (record, None));
    }

    #[test]
    fn subnet_keys_round_trip_and_reject_strangers() {
        let s: Ipv4Network = "10.244.7.0/24".parse().unwrap();
        assert_eq!(subnet_key(s), "/twill/v1/subnets/10.244.7.0-24");
        assert_eq!(subnet_from_key(&subnet_key(s)), Some(s));
        for bad in [
            "/twill/v1/nodes/x",
            "/twill/v1/subnets/10.244.7.0",
            "/twill/v1/subnets/x-24",
        ] {
            assert_eq!(subnet_from_key(bad), None, "{bad}");
        }
    }
}

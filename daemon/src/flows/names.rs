//! Names for flow records: pods by address, Services by frontend and nodes by address,
//! from the cluster's store. The follower keeps only what naming needs (a Pod's labels,
//! a Service's frontends, placements, node addresses), and each pass publishes a fresh
//! [`Names`] that the reader picks up with its next batch.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use twill_api::cluster::{self, NodeRecord, PodRecord};
use twill_k8s::{ClusterIp, Object};

/// A pod, as a record names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

/// A Service, as a record names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

/// What the follower keeps of one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Named {
    /// A Pod object: its labels.
    Pod {
        namespace: String,
        name: String,
        labels: BTreeMap<String, String>,
    },
    /// A Service object: its frontends.
    Service {
        namespace: String,
        name: String,
        cluster_ip: Option<Ipv4Addr>,
        /// `(port, IP protocol, node port)`.
        ports: Vec<(u16, u8, Option<u16>)>,
    },
    /// Where a pod runs.
    Placement(PodRecord),
    /// A node's underlay and VTEP addresses.
    Node {
        name: String,
        addresses: [Ipv4Addr; 2],
    },
}

/// The store follower's parser: `None` for what naming does not need.
pub fn parse(key: &str, value: &[u8]) -> Option<Named> {
    if key.starts_with(cluster::OBJECTS) {
        match serde_json::from_slice::<Object>(value).ok()? {
            Object::Pod(p) => Some(Named::Pod {
                namespace: p.namespace,
                name: p.name,
                labels: p.labels,
            }),
            Object::Service(s) => Some(Named::Service {
                cluster_ip: match s.cluster_ip {
                    ClusterIp::Fixed(ip) if s.external_name.is_none() => Some(ip),
                    _ => None,
                },
                ports: s
                    .ports
                    .iter()
                    .map(|p| (p.port, twill_policy::ip_protocol(p.protocol), p.node_port))
                    .collect(),
                namespace: s.namespace,
                name: s.name,
            }),
            _ => None,
        }
    } else if key.starts_with(cluster::PODS) {
        serde_json::from_slice::<PodRecord>(value)
            .ok()
            .map(Named::Placement)
    } else if key.starts_with(cluster::NODES) {
        let n = serde_json::from_slice::<NodeRecord>(value).ok()?;
        let vtep = twill_ipam::PodSubnet(n.subnet).node_address();
        Some(Named::Node {
            name: n.name,
            addresses: [n.underlay_ip, vtep],
        })
    } else {
        None
    }
}

/// Lookups by address, built from the store after each change.
#[derive(Debug, Default)]
pub struct Names {
    pods: HashMap<Ipv4Addr, Arc<PodName>>,
    /// Pod labels by namespace and name, for local pods the store has no placement of yet.
    labels: HashMap<(String, String), BTreeMap<String, String>>,
    /// `(ClusterIP, port, protocol)`.
    frontends: HashMap<(Ipv4Addr, u16, u8), Arc<ServiceName>>,
    /// `(node port, protocol)`.
    node_ports: HashMap<(u16, u8), Arc<ServiceName>>,
    nodes: HashMap<Ipv4Addr, Arc<str>>,
}

impl Names {
    pub fn build(store: &twill_store::Store<Named>) -> Names {
        let mut names = Names::default();
        for entry in store.values() {
            match entry {
                Named::Pod {
                    namespace,
                    name,
                    labels,
                } => {
                    names
                        .labels
                        .insert((namespace.clone(), name.clone()), labels.clone());
                }
                Named::Service {
                    namespace,
                    name,
                    cluster_ip,
                    ports,
                } => {
                    let service = Arc::new(ServiceName {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    });
                    for (port, protocol, node_port) in ports {
                        if let Some(ip) = cluster_ip {
                            names
                                .frontends
                                .insert((*ip, *port, *protocol), service.clone());
                        }
                        if let Some(np) = node_port {
                            names.node_ports.insert((*np, *protocol), service.clone());
                        }
                    }
                }
                Named::Placement(_) => {}
                Named::Node { name, addresses } => {
                    let name: Arc<str> = Arc::from(name.as_str());
                    for a in addresses {
                        names.nodes.insert(*a, name.clone());
                    }
                }
            }
        }
        for entry in store.values() {
            if let Named::Placement(r) = entry {
                let labels = names
                    .labels
                    .get(&(r.namespace.clone(), r.name.clone()))
                    .cloned()
                    .unwrap_or_default();
                names.pods.insert(
                    r.ip,
                    Arc::new(PodName {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        node: r.node.clone(),
                        labels,
                    }),
                );
            }
        }
        names
    }

    pub fn pod(&self, ip: Ipv4Addr) -> Option<&Arc<PodName>> {
        self.pods.get(&ip)
    }

    pub fn labels(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        self.labels
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn node(&self, ip: Ipv4Addr) -> Option<&Arc<str>> {
        self.nodes.get(&ip)
    }

    /// The Service whose frontend `(ip, port, protocol)` is: a ClusterIP, or else a node
    /// port (on whichever of the node's addresses).
    pub fn service(&self, ip: Ipv4Addr, port: u16, protocol: u8) -> Option<&Arc<ServiceName>> {
        self.frontends.get(&(ip, port, protocol)).or_else(|| {
            self.nodes
                .contains_key(&ip)
                .then(|| self.node_ports.get(&(port, protocol)))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(entries: &[(&str, &str)]) -> twill_store::Store<Named> {
        entries
            .iter()
            .filter_map(|(k, v)| Some(((*k).to_owned(), parse(k, v.as_bytes())?)))
            .collect()
    }

    #[test]
    fn pods_services_and_nodes_are_named_by_address() {
        let s = store(&[
            (
                "/twill/v1/objects/pods/default/web",
                r#"{"kind":"Pod","namespace":"default","name":"web","labels":{"app":"web"},"named_ports":[]}"#,
            ),
            (
                "/twill/v1/pods/default/web",
                r#"{"namespace":"default","name":"web","node":"node2","ip":"10.244.2.5","container_id":"c","ifname":"eth0"}"#,
            ),
            (
                "/twill/v1/objects/services/default/websvc",
                r#"{"kind":"Service","namespace":"default","name":"websvc","labels":{},"type":"NodePort","cluster_ip":{"fixed":"10.96.0.80"},"selector":{"app":"web"},"ports":[{"name":"","protocol":"TCP","port":80,"target":{"number":8080},"node_port":30080}],"affinity_timeout":null,"external_local":false,"internal_local":false}"#,
            ),
            (
                "/twill/v1/nodes/node2",
                r#"{"name":"node2","subnet":"10.244.2.0/24","underlay_ip":"172.30.0.12"}"#,
            ),
            ("/twill/v1/subnets/10.244.2.0-24", r#"{"node":"node2"}"#),
        ]);
        assert_eq!(s.len(), 4, "the subnet key is not kept");
        let names = Names::build(&s);
        let web = names.pod("10.244.2.5".parse().unwrap()).unwrap();
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str(), web.node.as_str()),
            ("default", "web", "node2")
        );
        assert_eq!(web.labels["app"], "web");
        let svc = names.service("10.96.0.80".parse().unwrap(), 80, 6).unwrap();
        assert_eq!(svc.name, "websvc");
        assert!(
            names
                .service("10.96.0.80".parse().unwrap(), 80, 17)
                .is_none()
        );
        // A node port on a node's address (underlay or VTEP), not on any other.
        let np = names.service("172.30.0.12".parse().unwrap(), 30080, 6);
        assert_eq!(np.map(|s| s.name.as_str()), Some("websvc"));
        assert!(
            names
                .service("10.244.2.1".parse().unwrap(), 30080, 6)
                .is_some()
        );
        assert!(
            names
                .service("8.8.8.8".parse().unwrap(), 30080, 6)
                .is_none()
        );
        assert_eq!(
            names.node("172.30.0.12".parse().unwrap()).map(|n| &**n),
            Some("node2")
        );
    }
}

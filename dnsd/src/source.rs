//! The cluster zone kept current from etcd: a snapshot of `/twill/v1/`, then its watch, kept
//! as a map of parsed entries; every change rebuilds the zone from the whole map and swaps
//! it in. Reconnects and starts over (a fresh snapshot) when the watch ends.
//!
//! [`snapshot`] is the pure part, the conversion of stored objects into a
//! [`ClusterSnapshot`]; [`follow`] is the etcd edge.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use tokio::sync::watch;
use tracing::{info, warn};
use twill_api::cluster::PodRecord;
use twill_dns::{ClusterSnapshot, Endpoint, Service, ServiceKind, ServicePort, Zone, ZoneConfig};
use twill_k8s::{
    ClusterIp, EndpointSlice, Object, TargetPort,
    endpoints::{PodPlacement, backends},
};

use crate::{config::Config, fqdn::FqdnRules};

pub use twill_store::{Entry, parse};

/// The parsed entries under `/twill/v1/` that matter to DNS, by key.
pub type Store = twill_store::Store<Entry>;

/// The zone's input from the stored objects, `serial` as the SOA serial.
///
/// - Services: `ClusterIp::Fixed` is a ClusterIP Service, `ClusterIp::Headless` a headless
///   one, an ExternalName Service (`external_name`) a CNAME; a Service whose ClusterIP was
///   never allocated (`Auto`) is left out.
/// - Endpoints (headless Services only; a ClusterIP Service answers with its ClusterIP):
///   for a Service with a selector, the selected Pods that have a pod record (address), as
///   `twill_k8s::endpoints::backends` finds them (the same as `netctl get endpoints`), all
///   ready, each with the target ports it resolves; for a Service without a selector, the
///   addresses of its EndpointSlices with their ready flags and the slices' ports. An
///   endpoint's hostname is the selected Pod's `spec.hostname` when its `spec.subdomain` is
///   the Service's name, or the slice endpoint's `hostname`; the zone names an endpoint
///   without one by its dashed address.
/// - Pods: the pod records (namespace, name, address), for `pods = "verified"`.
/// - Namespaces: the Namespace objects.
pub fn snapshot(store: &Store, serial: u32) -> ClusterSnapshot {
    let mut namespaces = Vec::new();
    let mut services = Vec::new();
    let mut pod_objects = Vec::new();
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    let mut records: HashMap<(&str, &str), &PodRecord> = HashMap::new();
    for entry in store.values() {
        match entry {
            Entry::Object(object) => match object.as_ref() {
                Object::Namespace(n) => namespaces.push(n.name.clone()),
                Object::Service(s) => services.push(s),
                Object::Pod(p) => pod_objects.push(p),
                Object::EndpointSlice(s) => slices
                    .entry((s.namespace.as_str(), s.service.as_str()))
                    .or_default()
                    .push(s),
                Object::NetworkPolicy(_) | Object::FqdnPolicy(_) | Object::BgpPeer(_) => {}
            },
            Entry::Pod(record) => {
                records.insert((record.namespace.as_str(), record.name.as_str()), record);
            }
        }
    }
    let placed: Vec<(&twill_k8s::Pod, PodPlacement)> = pod_objects
        .iter()
        .filter_map(|p| {
            let record = records.get(&(p.namespace.as_str(), p.name.as_str()))?;
            Some((
                *p,
                PodPlacement {
                    ip: record.ip,
                    node: record.node.clone(),
                },
            ))
        })
        .collect();
    let services = services
        .into_iter()
        .filter_map(|s| {
            let kind = match s.cluster_ip {
                _ if s.external_name.is_some() => {
                    ServiceKind::ExternalName(s.external_name.clone().unwrap_or_default())
                }
                ClusterIp::Fixed(ip) => ServiceKind::ClusterIp(ip),
                ClusterIp::Headless => ServiceKind::Headless,
                ClusterIp::Auto => return None,
            };
            let endpoints = if kind == ServiceKind::Headless {
                let own_slices = slices
                    .get(&(s.namespace.as_str(), s.name.as_str()))
                    .map_or(&[][..], Vec::as_slice);
                endpoints_of(s, &placed, own_slices)
            } else {
                Vec::new()
            };
            Some(Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                kind,
                ports: s.ports.iter().map(service_port).collect(),
                endpoints,
            })
        })
        .collect();
    let mut pods: Vec<twill_dns::Pod> = records
        .values()
        .map(|r| twill_dns::Pod {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            ip: r.ip,
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ClusterSnapshot {
        namespaces,
        services,
        pods,
        serial,
    }
}

fn protocol(p: twill_k8s::Protocol) -> twill_dns::Protocol {
    match p {
        twill_k8s::Protocol::Tcp => twill_dns::Protocol::Tcp,
        twill_k8s::Protocol::Udp => twill_dns::Protocol::Udp,
        twill_k8s::Protocol::Sctp => twill_dns::Protocol::Sctp,
    }
}

fn service_port(p: &twill_k8s::ServicePort) -> ServicePort {
    ServicePort {
        name: p.name.clone(),
        protocol: protocol(p.protocol),
        port: p.port,
    }
}

/// A headless Service's endpoints, one per address and hostname, ports merged.
fn endpoints_of(
    service: &twill_k8s::Service,
    pods: &[(&twill_k8s::Pod, PodPlacement)],
    slices: &[&EndpointSlice],
) -> Vec<Endpoint> {
    // Keyed by hostname too: two slice endpoints may give one address two names, and
    // the zone answers both.
    let mut by_ip: BTreeMap<(Ipv4Addr, Option<String>), Endpoint> = BTreeMap::new();
    let mut add =
        |ip: Ipv4Addr, hostname: &Option<String>, ready: bool, port: Option<ServicePort>| {
            let endpoint = by_ip
                .entry((ip, hostname.clone()))
                .or_insert_with(|| Endpoint {
                    ip,
                    hostname: hostname.clone(),
                    ready,
                    ports: Vec::new(),
                });
            endpoint.ready |= ready;
            if let Some(port) = port
                && !endpoint.ports.contains(&port)
            {
                endpoint.ports.push(port);
            }
        };
    if service.selector.as_ref().is_some_and(|s| !s.is_empty()) {
        if service.ports.is_empty() {
            // A headless Service may have no ports; its addresses are still its selected
            // pods. `backends` works per port, so ask it with a stand-in port.
            let mut probe = service.clone();
            probe.ports = vec![twill_k8s::ServicePort {
                name: String::new(),
                protocol: twill_k8s::Protocol::Tcp,
                port: 1,
                target: TargetPort::Number(1),
                node_port: None,
            }];
            for backend in backends(&probe, pods, &[]).into_iter().flatten() {
                add(backend.ip, &backend.hostname, backend.ready, None);
            }
        } else {
            for (port, found) in service.ports.iter().zip(backends(service, pods, &[])) {
                for backend in found {
                    let port = ServicePort {
                        name: port.name.clone(),
                        protocol: protocol(port.protocol),
                        port: backend.port,
                    };
                    add(backend.ip, &backend.hostname, backend.ready, Some(port));
                }
            }
        }
    } else {
        for slice in slices {
            for endpoint in &slice.endpoints {
                for ip in &endpoint.addresses {
                    add(*ip, &endpoint.hostname, endpoint.ready, None);
                    for port in &slice.ports {
                        add(
                            *ip,
                            &endpoint.hostname,
                            endpoint.ready,
                            Some(ServicePort {
                                name: port.name.clone(),
                                protocol: protocol(port.protocol),
                                port: port.port,
                            }),
                        );
                    }
                }
            }
        }
    }
    by_ip.into_values().collect()
}

/// The zone now served; `None` until the first snapshot of the store is in.
pub type CurrentZone = watch::Receiver<Option<Arc<Zone>>>;

/// The SOA serial for a store revision: its low 32 bits (serial arithmetic wraps, RFC 1982).
fn serial_of(revision: i64) -> u32 {
    (revision & 0xffff_ffff) as u32
}

/// Builds the zone off the async workers (a large cluster takes tens of milliseconds) and
/// publishes it.
async fn publish(
    zone_config: &ZoneConfig,
    snapshot: ClusterSnapshot,
    revision: i64,
    tx: &ZoneSender,
) {
    let zone_config = zone_config.clone();
    let built = tokio::task::spawn_blocking(move || Zone::build(&zone_config, &snapshot)).await;
    match built {
        Ok(Ok(zone)) => {
            let skipped = zone.skipped().len();
            let first = tx.borrow().is_none();
            tx.send_replace(Some(Arc::new(zone)));
            if first {
                info!("zone built from the store at revision {revision}; serving");
            }
            if skipped > 0 {
                warn!("revision {revision}: {skipped} objects left out of the zone");
            }
        }
        Ok(Err(e)) => warn!("building the zone: {e}"),
        Err(e) => warn!("building the zone: {e}"),
    }
}

/// Where [`follow`] publishes the zone.
pub type ZoneSender = watch::Sender<Option<Arc<Zone>>>;

/// Follows the store forever, publishing a new zone on `tx` after each change. The zone
/// is built off the follower (a large cluster takes tens of milliseconds): the follower
/// hands each new snapshot to a builder task, which always builds the latest one.
pub async fn follow(config: &Config, tx: ZoneSender, rules: watch::Sender<Arc<FqdnRules>>) {
    let etcd = twill_store::Etcd {
        endpoints: config.etcd_endpoints.clone(),
        tls: config.etcd_tls.clone(),
        timeout: config.etcd_timeout,
    };
    let (snap_tx, mut snap_rx) = watch::channel::<Option<(ClusterSnapshot, i64)>>(None);
    let zone_config = config.zone.clone();
    let builder = tokio::spawn(async move {
        while snap_rx.changed().await.is_ok() {
            let Some((snapshot, revision)) = snap_rx.borrow_and_update().clone() else {
                continue;
            };
            publish(&zone_config, snapshot, revision, &tx).await;
        }
    });
    twill_store::follow(&etcd, "dns", None, parse, |store, _, revision| {
        // FQDNPolicy rules first: a pod they newly select must not get an answer the
        // datapath will not let it use.
        let new_rules = FqdnRules::from_store(store);
        rules.send_if_modified(|current| {
            if **current == new_rules {
                return false;
            }
            *current = Arc::new(new_rules);
            true
        });
        snap_tx.send_replace(Some((snapshot(store, serial_of(revision)), revision)));
    })
    .await;
    builder.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::cluster;

    fn objects(text: &str) -> Store {
        let (parsed, errors) = twill_k8s::parse("t.yaml", text);
        assert_eq!(errors, []);
        parsed
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("{}{i}", cluster::OBJECTS),
                    Entry::Object(Box::new(p.object)),
                )
            })
            .collect()
    }

    fn record(store: &mut Store, namespace: &str, name: &str, ip: &str) {
        store.insert(
            cluster::pod_key(namespace, name),
            Entry::Pod(PodRecord {
                namespace: namespace.into(),
                name: name.into(),
                node: "node1".into(),
                ip: ip.parse().unwrap(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            }),
        );
    }

    fn service<'a>(snapshot: &'a ClusterSnapshot, name: &str) -> &'a Service {
        snapshot
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in {snapshot:#?}"))
    }

    fn tcp(name: &str, port: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol: twill_dns::Protocol::Tcp,
            port,
        }
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: pg}]
---
apiVersion: v1
kind: Service
metadata: {name: bare}
spec: {clusterIP: None, selector: {app: db}}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: http, port: 8081, protocol: TCP}]
endpoints:
- addresses: [192.0.2.1]
  conditions: {ready: true}
- addresses: [192.0.2.2]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: auto}
spec: {selector: {app: db}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5433}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-2, labels: {app: db}}
spec: {containers: [{name: c}]}
"#;

    #[test]
    fn services_endpoints_pods_and_namespaces() {
        let mut store = objects(CLUSTER);
        record(&mut store, "default", "db-0", "10.244.1.5");
        record(&mut store, "default", "db-1", "10.244.2.8");
        // db-2 has no pg port: it is an address of `bare` (no ports) but not of `db`.
        record(&mut store, "default", "db-2", "10.244.3.3");
        // A record without its Pod object: a pod for `verified`, selected by nothing.
        record(&mut store, "prod", "lone", "10.244.1.9");
        let snap = snapshot(&store, 42);
        assert_eq!(snap.serial, 42);
        assert_eq!(snap.namespaces, ["prod"]);

        let web = service(&snap, "web");
        assert_eq!(web.namespace, "prod");
        assert_eq!(
            web.kind,
            ServiceKind::ClusterIp("10.96.0.10".parse().unwrap())
        );
        assert_eq!(
            web.ports,
            [
                tcp("http", 80),
                ServicePort {
                    name: "dns".into(),
                    protocol: twill_dns::Protocol::Udp,
                    port: 53
                }
            ]
        );
        assert_eq!(web.endpoints, []);

        let db = service(&snap, "db");
        assert_eq!(db.kind, ServiceKind::Headless);
        assert_eq!(db.ports, [tcp("pg", 5432)]);
        assert_eq!(
            db.endpoints,
            [
                Endpoint {
                    ip: "10.244.1.5".parse().unwrap(),
                    hostname: None,
                    ready: true,
                    ports: vec![tcp("pg", 5433)],
                },
                Endpoint {
                    ip: "10.244.2.8".parse().unwrap(),
                    hostname: None,
                    ready: true,
                    ports: vec![tcp("pg", 5432)],
                },
            ]
        );

        let bare = service(&snap, "bare");
        let ips: Vec<String> = bare.endpoints.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["10.244.1.5", "10.244.2.8", "10.244.3.3"]);
        assert!(bare.endpoints.iter().all(|e| e.ready && e.ports.is_empty()));

        let ext = service(&snap, "ext");
        assert_eq!(
            ext.endpoints,
            [
                Endpoint {
                    ip: "192.0.2.1".parse().unwrap(),
                    hostname: None,
                    ready: true,
                    ports: vec![tcp("http", 8081)],
                },
                Endpoint {
                    ip: "192.0.2.2".parse().unwrap(),
                    hostname: None,
                    ready: false,
                    ports: vec![tcp("http", 8081)],
                },
            ]
        );

        // Never allocated: no address to give.
        assert!(snap.services.iter().all(|s| s.name != "auto"));

        let pods: Vec<(&str, &str, String)> = snap
            .pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str(), p.ip.to_string()))
            .collect();
        assert_eq!(
            pods,
            [
                ("default", "db-0", "10.244.1.5".into()),
                ("default", "db-1", "10.244.2.8".into()),
                ("default", "db-2", "10.244.3.3".into()),
                ("prod", "lone", "10.244.1.9".into()),
            ]
        );
    }

    #[test]
    fn a_statefulset_pod_is_named_by_its_hostname_only_under_its_subdomain() {
        let mut store = objects(
            r#"
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports: [{name: web, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec: {clusterIP: None, selector: {app: nginx}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: nginx}}
spec: {hostname: web-0, subdomain: nginx, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: nginx}}
spec: {hostname: web-1, subdomain: elsewhere, containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {clusterIP: None, ports: [{name: web, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
ports: [{name: web, port: 8080}]
endpoints: [{addresses: [192.0.2.1], hostname: db-0}]
"#,
        );
        record(&mut store, "default", "web-0", "10.244.1.10");
        record(&mut store, "default", "web-1", "10.244.1.11");
        let snap = snapshot(&store, 1);
        let endpoint = |ip: &str, hostname: Option<&str>, ports: Vec<ServicePort>| Endpoint {
            ip: ip.parse().unwrap(),
            hostname: hostname.map(str::to_owned),
            ready: true,
            ports,
        };
        // web-1's subdomain names no Service it is an endpoint of: no hostname.
        assert_eq!(
            service(&snap, "nginx").endpoints,
            [
                endpoint("10.244.1.10", Some("web-0"), vec![tcp("web", 80)]),
                endpoint("10.244.1.11", None, vec![tcp("web", 80)]),
            ]
        );
        // Another Service selecting web-0 (no ports): web-0's subdomain is not its name.
        assert_eq!(
            service(&snap, "other").endpoints,
            [
                endpoint("10.244.1.10", None, vec![]),
                endpoint("10.244.1.11", None, vec![]),
            ]
        );
        assert_eq!(
            service(&snap, "ext").endpoints,
            [endpoint("192.0.2.1", Some("db-0"), vec![tcp("web", 8080)])]
        );
    }

    #[test]
    fn parse_keeps_what_dns_uses() {
        let service = serde_json::to_vec(&Object::Namespace(twill_k8s::Namespace {
            name: "a".into(),
            labels: BTreeMap::new(),
        }))
        .unwrap();
        assert!(parse(&format!("{}namespaces/a", cluster::OBJECTS), &service).is_some());
        assert!(parse(&format!("{}namespaces/a", cluster::OBJECTS), b"{").is_none());
        assert!(parse(&format!("{}a", cluster::NODES), &service).is_none());
        assert!(parse(&cluster::pod_key("a", "b"), b"not json").is_none());
    }

    #[test]
    fn serial_wraps() {
        assert_eq!(serial_of(7), 7);
        assert_eq!(serial_of(0x1_0000_0005), 5);
    }
}

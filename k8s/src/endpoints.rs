//! A Service's backends, as Kubernetes' endpoints controller finds them: for a Service with
//! a selector, the pods of its namespace that carry every selector label and have an
//! address, with a named `targetPort` resolved in each pod (a pod without that port is not
//! a backend for it); for a Service without a selector, the addresses of its
//! EndpointSlices, matched to its ports by name and protocol.
//!
//! A backend carries the endpoint's hostname as the endpoints controller sets it: a
//! selected pod's `spec.hostname` when its `spec.subdomain` is the Service's name (how
//! StatefulSet pods get `web-0.nginx.<ns>.svc.<zone>`), or a slice endpoint's `hostname`.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::{EndpointSlice, Pod, Service, TargetPort};

/// Where a pod runs and its address (the pod records the daemons publish).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlacement {
    pub ip: Ipv4Addr,
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub node: Option<String>,
    /// Not-ready backends are listed but get no new connections.
    pub ready: bool,
    /// The endpoint's hostname, for DNS (`<hostname>.<svc>.<ns>.svc.<zone>` of a headless
    /// Service); the dataplane does not use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// The hostname the endpoints controller gives `pod` as an endpoint of `service`: its
/// `spec.hostname`, only when its `spec.subdomain` is the Service's name (Kubernetes'
/// `ShouldSetHostname`; the namespace is checked by the caller).
fn pod_hostname(pod: &Pod, service: &Service) -> Option<String> {
    pod.hostname
        .clone()
        .filter(|_| pod.subdomain.as_deref() == Some(service.name.as_str()))
}

/// The backends of each of `service`'s ports, in port order.
pub fn backends(
    service: &Service,
    pods: &[(&Pod, PodPlacement)],
    slices: &[&EndpointSlice],
) -> Vec<Vec<Backend>> {
    let selector = service.selector.as_ref().filter(|s| !s.is_empty());
    service
        .ports
        .iter()
        .map(|sp| {
            let mut out: Vec<Backend> = match selector {
                Some(selector) => pods
                    .iter()
                    .filter(|(pod, _)| {
                        pod.namespace == service.namespace
                            && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                    })
                    .filter_map(|(pod, placement)| {
                        let port = match &sp.target {
                            TargetPort::Number(n) => *n,
                            TargetPort::Named(name) => {
                                pod.named_ports
                                    .iter()
                                    .find(|np| &np.name == name && np.protocol == sp.protocol)?
                                    .port
                            }
                        };
                        Some(Backend {
                            ip: placement.ip,
                            port,
                            node: Some(placement.node.clone()),
                            ready: true,
                            hostname: pod_hostname(pod, service),
                        })
                    })
                    .collect(),
                None => slices
                    .iter()
                    .filter(|s| s.namespace == service.namespace && s.service == service.name)
                    .flat_map(|s| {
                        let port = s
                            .ports
                            .iter()
                            .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                            .map(|p| p.port);
                        s.endpoints.iter().flat_map(move |e| {
                            port.into_iter().flat_map(move |port| {
                                e.addresses.iter().map(move |ip| Backend {
                                    ip: *ip,
                                    port,
                                    node: e.node.clone(),
                                    ready: e.ready,
                                    hostname: e.hostname.clone(),
                                })
                            })
                        })
                    })
                    .collect(),
            };
            out.sort();
            out.dedup();
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Object, parse};

    fn objects(text: &str) -> Vec<Object> {
        let (parsed, errors) = parse("t.yaml", text);
        assert_eq!(errors, []);
        parsed.into_iter().map(|p| p.object).collect()
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web, tier: front}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, labels: {app: web}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other-ns, namespace: prod, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, labels: {app: db}}
spec: {containers: [{name: c}]}
"#;

    fn placements(objs: &[Object]) -> Vec<(&Pod, PodPlacement)> {
        objs.iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Object::Pod(p) => Some((
                    p,
                    PodPlacement {
                        ip: Ipv4Addr::new(10, 244, 0, 10 + i as u8),
                        node: format!("node{}", i % 2 + 1),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn selected_pods_of_the_namespace_with_named_ports_resolved_per_pod() {
        let objs = objects(&format!(
            "{PODS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{name: named, port: 80, targetPort: http}}\n  - {{name: numbered, port: 81, targetPort: 7000}}\n"
        ));
        let Some(Object::Service(svc)) = objs.last() else {
            panic!()
        };
        let b = backends(svc, &placements(&objs), &[]);
        // Named: pods a (8080) and b (9090); c has no port "http"; other-ns and db are out.
        let named: Vec<(Ipv4Addr, u16)> = b[0].iter().map(|x| (x.ip, x.port)).collect();
        assert_eq!(
            named,
            [
                (Ipv4Addr::new(10, 244, 0, 10), 8080),
                (Ipv4Addr::new(10, 244, 0, 11), 9090)
            ]
        );
        // Numbered: every selected pod of the namespace, c included.
        assert_eq!(b[1].len(), 3);
        assert!(b[1].iter().all(|x| x.port == 7000 && x.ready));
    }

    #[test]
    fn a_service_without_selector_takes_its_slices_matched_by_port_name() {
        let objs = objects(
            r#"
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints:
- {addresses: ["192.0.2.1"], conditions: {ready: true}, nodeName: node1}
- {addresses: ["192.0.2.2"], conditions: {ready: false}}
ports: [{name: https, port: 8443}, {name: other, port: 1}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: not-ours, labels: {kubernetes.io/service-name: elsewhere}}
addressType: IPv4
endpoints: [{addresses: ["192.0.2.9"]}]
ports: [{name: https, port: 8443}]
"#,
        );
        let Object::Service(svc) = &objs[0] else {
            panic!()
        };
        let slices: Vec<&EndpointSlice> = objs
            .iter()
            .filter_map(|o| match o {
                Object::EndpointSlice(s) => Some(s),
                _ => None,
            })
            .collect();
        let b = backends(svc, &[], &slices);
        assert_eq!(b[0].len(), 2);
        assert_eq!(
            (b[0][0].ip, b[0][0].port, b[0][0].ready),
            (Ipv4Addr::new(192, 0, 2, 1), 8443, true)
        );
        assert!(!b[0][1].ready);
    }

    #[test]
    fn a_backend_has_the_pods_hostname_only_when_its_subdomain_is_the_service() {
        let objs = objects(
            r#"
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec: {clusterIP: None, selector: {app: nginx}, ports: [{name: web, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: nginx}}
spec: {hostname: web-0, subdomain: nginx, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: nginx}}
spec: {hostname: web-1, subdomain: other, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: nginx}}
spec: {subdomain: nginx, containers: [{name: c}]}
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
endpoints:
- {addresses: ["192.0.2.1"], hostname: db-0}
- {addresses: ["192.0.2.2"]}
ports: [{name: web, port: 8080}]
"#,
        );
        let services: Vec<&Service> = objs
            .iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
            .collect();
        let slices: Vec<&EndpointSlice> = objs
            .iter()
            .filter_map(|o| match o {
                Object::EndpointSlice(s) => Some(s),
                _ => None,
            })
            .collect();
        let names = |b: Vec<Vec<Backend>>| -> Vec<(Ipv4Addr, Option<String>)> {
            b[0].iter().map(|x| (x.ip, x.hostname.clone())).collect()
        };
        // web-1's subdomain is another Service's, web-2 has no hostname: no name for them.
        assert_eq!(
            names(backends(services[0], &placements(&objs), &[])),
            [
                (Ipv4Addr::new(10, 244, 0, 11), Some("web-0".into())),
                (Ipv4Addr::new(10, 244, 0, 12), None),
                (Ipv4Addr::new(10, 244, 0, 13), None),
            ]
        );
        assert_eq!(
            names(backends(services[1], &[], &slices)),
            [
                (Ipv4Addr::new(192, 0, 2, 1), Some("db-0".into())),
                (Ipv4Addr::new(192, 0, 2, 2), None),
            ]
        );
    }
}

//! Service-to-map compilation, pure: Services, pods (with their placement) and
//! EndpointSlices become the frontends and backends the eBPF programs balance with.
//! [`crate::services`] diffs the result against the maps and applies the difference.

use std::collections::{BTreeMap, HashMap};

use twill_abi::lb::{
    Backend, FRONTEND_AFFINITY, FRONTEND_LOCAL, FrontendKey, IPPROTO_TCP, IPPROTO_UDP,
    SCOPE_CLUSTER_IP, SCOPE_NODE_PORT_INTERNAL, wire_ip, wire_port,
};
use twill_k8s::{
    ClusterIp, EndpointSlice, Pod, Protocol, Service,
    endpoints::{PodPlacement, backends},
};

/// What one frontend should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// `namespace/name:port/protocol`, for logs and `netctl`.
    pub service: String,
    /// Ready backends, in a stable order.
    pub backends: Vec<Backend>,
    pub affinity_timeout: u32,
    /// `FRONTEND_*` flags.
    pub flags: u32,
}

/// The frontends of every Service, as node `me` should balance them: one per ClusterIP
/// port (`internalTrafficPolicy: Local` keeps only `me`'s backends) and one per NodePort
/// (`externalTrafficPolicy: Local` keeps only `me`'s backends and the client's address; such
/// a NodePort has a second frontend with every ready backend, for the node's own clients).
pub fn compile(
    me: &str,
    services: &[&Service],
    pods: &[(&Pod, PodPlacement)],
    slices: &[&EndpointSlice],
) -> BTreeMap<FrontendKey, DesiredFrontend> {
    // Indexes, so each Service looks only at its namespace's pods and its own slices:
    // one pass is O(services + pods + slices), not their product.
    let mut pods_by_namespace: HashMap<&str, Vec<(&Pod, PodPlacement)>> = HashMap::new();
    for (pod, placement) in pods {
        pods_by_namespace
            .entry(pod.namespace.as_str())
            .or_default()
            .push((pod, placement.clone()));
    }
    let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        slices_by_service
            .entry((slice.namespace.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let ClusterIp::Fixed(vip) = svc.cluster_ip else {
            continue; // headless or not yet allocated: nothing to balance
        };
        let pods = pods_by_namespace
            .get(svc.namespace.as_str())
            .map_or(&[][..], Vec::as_slice);
        let slices = slices_by_service
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let affinity_timeout = svc.affinity_timeout.unwrap_or(0);
        let affinity = if affinity_timeout > 0 {
            FRONTEND_AFFINITY
        } else {
            0
        };
        for (port, found) in svc.ports.iter().zip(backends(svc, pods, slices)) {
            let protocol = match port.protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
                // IPPROTO_SCTP; twill-k8s refuses SCTP Services, so none reach here yet.
                Protocol::Sctp => 132,
            };
            let ready = |local: bool| -> Vec<Backend> {
                found
                    .iter()
                    .filter(|b| b.ready)
                    .filter(|b| !local || b.node.as_deref() == Some(me))
                    .map(|b| Backend {
                        ip: wire_ip(b.ip.octets()),
                        port: wire_port(b.port),
                        _pad: 0,
                    })
                    .collect()
            };
            let name = format!(
                "{}/{}:{}/{}",
                svc.namespace, svc.name, port.port, port.protocol
            );
            out.insert(
                FrontendKey {
                    ip: wire_ip(vip.octets()),
                    port: wire_port(port.port),
                    protocol,
                    scope: SCOPE_CLUSTER_IP,
                },
                DesiredFrontend {
                    service: name.clone(),
                    backends: ready(svc.internal_local),
                    affinity_timeout,
                    flags: affinity,
                },
            );
            let Some(node_port) = port.node_port else {
                continue;
            };
            let key = FrontendKey::node_port(wire_port(node_port), protocol);
            if svc.external_local {
                out.insert(
                    FrontendKey {
                        scope: SCOPE_NODE_PORT_INTERNAL,
                        ..key
                    },
                    DesiredFrontend {
                        service: format!("{name} (NodePort {node_port}, from this node)"),
                        backends: ready(false),
                        affinity_timeout,
                        flags: affinity,
                    },
                );
            }
            out.insert(
                key,
                DesiredFrontend {
                    service: format!("{name} (NodePort {node_port})"),
                    backends: ready(svc.external_local),
                    affinity_timeout,
                    flags: affinity
                        | if svc.external_local {
                            FRONTEND_LOCAL
                        } else {
                            0
                        },
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use twill_abi::lb::SCOPE_NODE_PORT;
    use twill_k8s::{Object, parse};

    use super::*;

    fn objects(text: &str) -> Vec<Object> {
        let (parsed, errors) = parse("t.yaml", text);
        assert_eq!(errors, []);
        parsed.into_iter().map(|p| p.object).collect()
    }

    #[test]
    fn a_service_compiles_to_one_frontend_per_port_with_ready_local_backends() {
        let objs = objects(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
"#,
        );
        let pods: Vec<(&Pod, PodPlacement)> = objs
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
            .zip([("node1", 5), ("node2", 6)])
            .map(|(p, (node, host))| {
                (
                    p,
                    PodPlacement {
                        ip: Ipv4Addr::new(10, 244, 1, host),
                        node: node.into(),
                    },
                )
            })
            .collect();
        let services: Vec<Service> = objs
            .iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let plan = compile("node1", &services.iter().collect::<Vec<_>>(), &pods, &[]);
        assert_eq!(
            plan.len(),
            2,
            "two ports of web; the headless Service has no frontend"
        );
        let http = &plan[&FrontendKey {
            ip: wire_ip([10, 96, 0, 10]),
            port: wire_port(80),
            protocol: IPPROTO_TCP,
            scope: SCOPE_CLUSTER_IP,
        }];
        assert_eq!(http.service, "default/web:80/TCP");
        // internalTrafficPolicy: Local on node1: only pod a.
        assert_eq!(
            http.backends,
            [Backend {
                ip: wire_ip([10, 244, 1, 5]),
                port: wire_port(8080),
                _pad: 0
            }]
        );
        // NodePorts: one frontend per port on every node; Local keeps only the node's own
        // backends and is flagged so the programs keep the client's address.
        let mut with_node_ports = services.clone();
        with_node_ports[0].ports[0].node_port = Some(30080);
        with_node_ports[0].external_local = true;
        let plan = compile(
            "node1",
            &with_node_ports.iter().collect::<Vec<_>>(),
            &pods,
            &[],
        );
        let node_port = &plan[&FrontendKey {
            ip: 0,
            port: wire_port(30080),
            protocol: IPPROTO_TCP,
            scope: SCOPE_NODE_PORT,
        }];
        assert_eq!(node_port.flags, FRONTEND_LOCAL);
        assert_eq!(node_port.backends.len(), 1);
        // The node's own clients reach a Local NodePort's every ready backend, as
        // kube-proxy sends them.
        let internal = &plan[&FrontendKey {
            ip: 0,
            port: wire_port(30080),
            protocol: IPPROTO_TCP,
            scope: SCOPE_NODE_PORT_INTERNAL,
        }];
        assert_eq!((internal.flags, internal.backends.len()), (0, 2));
        with_node_ports[0].external_local = false;
        let plan = compile(
            "node1",
            &with_node_ports.iter().collect::<Vec<_>>(),
            &pods,
            &[],
        );
        let cluster = plan
            .values()
            .find(|f| f.service.contains("NodePort"))
            .unwrap();
        assert_eq!((cluster.flags, cluster.backends.len()), (0, 2));
        // A Cluster NodePort serves the node's own clients with its one entry.
        assert!(plan.keys().all(|k| k.scope != SCOPE_NODE_PORT_INTERNAL));

        let on_node2 = compile("node2", &services.iter().collect::<Vec<_>>(), &pods, &[]);
        assert_eq!(
            on_node2.values().next().unwrap().backends[0].ip,
            wire_ip([10, 244, 1, 6])
        );
    }
}

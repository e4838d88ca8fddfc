//! The model back to the form Kubernetes writes it: `apiVersion`, `kind`, `metadata`,
//! `spec` (and a Pod's `status`), the inverse of [`crate::parse`]. For every object `x`
//! that `parse` returns, `parse(to_yaml(x)) == x`, so `netctl apply -f` takes
//! `netctl get -o yaml` back unchanged.
//!
//! The output is built from the same wire structs the parser reads, so it can only hold
//! fields the parser takes. Defaults the model filled in are written out where the API
//! server writes them too (a Service's `type`, its allocated `clusterIP` and `nodePort`s,
//! every `protocol`, a NetworkPolicy's `policyTypes`, an endpoint's conditions); what the
//! model does not keep is not invented: a Pod's containers are not stored, so its named
//! ports are shown under one container named after the pod, and an EndpointSlice shows
//! only its `kubernetes.io/service-name` label.
//!
//! Keys come out in alphabetical order (through `serde_json::Value`, whose maps are
//! sorted), as kubectl prints them.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::{
    ClusterIp, EndpointSlice, FqdnPolicy, FqdnSelector, LabelSelector, Namespace, NetworkPolicy,
    Object, Pod, PolicyPeer, PolicyPortNumber, PolicyRule, SERVICE_NAME_LABEL, SelectorOperator,
    Service, ServiceType, TargetPort, endpoints::PodPlacement, policy::ENFORCEMENT_ANNOTATION,
    wire,
};

/// The `apiVersion` of each kind twill handles.
pub fn api_version(kind: &str) -> Option<&'static str> {
    match kind {
        "Namespace" | "Pod" | "Service" | "List" => Some("v1"),
        "EndpointSlice" => Some("discovery.k8s.io/v1"),
        "NetworkPolicy" => Some("networking.k8s.io/v1"),
        "FQDNPolicy" => Some("policy.twill.io/v1alpha1"),
        "BGPPeer" => Some("bgp.twill.io/v1alpha1"),
        _ => None,
    }
}

/// `object` as Kubernetes writes it.
pub fn to_wire(object: &Object) -> Value {
    let value = match object {
        Object::Namespace(n) => serde_json::to_value(namespace(n)),
        Object::Pod(p) => serde_json::to_value(pod(p, None)),
        Object::Service(s) => serde_json::to_value(service(s)),
        Object::EndpointSlice(s) => serde_json::to_value(slice(s)),
        Object::NetworkPolicy(p) => serde_json::to_value(network_policy(p)),
        Object::FqdnPolicy(p) => serde_json::to_value(fqdn_policy(p)),
        Object::BgpPeer(b) => serde_json::to_value(crate::bgppeer::to_wire(b)),
    };
    value.expect("wire structs hold only strings, numbers and maps with string keys")
}

/// A Pod with where it runs: `spec.nodeName` and `status.podIP` (and `podIPs`).
pub fn pod_to_wire(p: &Pod, status: Option<&PodPlacement>) -> Value {
    serde_json::to_value(pod(p, status))
        .expect("wire structs hold only strings, numbers and maps with string keys")
}

/// `items` as one `kind: List`, as kubectl prints a list.
pub fn list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    })
}

/// `object` as one YAML document.
pub fn to_yaml(object: &Object) -> String {
    serde_yaml_ng::to_string(&to_wire(object)).expect("a JSON value is valid YAML")
}

fn metadata(
    name: &str,
    namespace: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
) -> wire::Metadata {
    wire::Metadata {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: labels.clone(),
        ..Default::default()
    }
}

fn namespace(n: &Namespace) -> wire::Namespace {
    wire::Namespace {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        metadata: metadata(&n.name, None, &n.labels),
        ..Default::default()
    }
}

fn pod(p: &Pod, status: Option<&PodPlacement>) -> wire::Pod {
    let container = wire::Container {
        name: p.name.clone(),
        ports: p
            .named_ports
            .iter()
            .map(|np| wire::ContainerPort {
                name: Some(np.name.clone()),
                container_port: i64::from(np.port),
                protocol: Some(np.protocol.to_string()),
                ..Default::default()
            })
            .collect(),
        other: Default::default(),
    };
    wire::Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: metadata(&p.name, Some(&p.namespace), &p.labels),
        spec: wire::PodSpec {
            containers: vec![container],
            node_name: status.map(|s| s.node.clone()),
            hostname: p.hostname.clone(),
            subdomain: p.subdomain.clone(),
            other: Default::default(),
        },
        status: status.map(|s| {
            json!({
                "podIP": s.ip.to_string(),
                "podIPs": [{"ip": s.ip.to_string()}],
            })
        }),
    }
}

fn service(s: &Service) -> wire::Service {
    let kind = match s.service_type {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::ExternalName => "ExternalName",
    };
    // An ExternalName Service has no cluster IP; the model marks it headless.
    let cluster_ip = match (s.service_type, s.cluster_ip) {
        (ServiceType::ExternalName, _) | (_, ClusterIp::Auto) => None,
        (_, ClusterIp::Headless) => Some("None".to_owned()),
        (_, ClusterIp::Fixed(ip)) => Some(ip.to_string()),
    };
    let local = |yes: bool| yes.then(|| "Local".to_owned());
    wire::Service {
        api_version: "v1".into(),
        kind: "Service".into(),
        metadata: metadata(&s.name, Some(&s.namespace), &s.labels),
        spec: wire::ServiceSpec {
            kind: Some(kind.into()),
            cluster_ips: cluster_ip
                .as_ref()
                .filter(|ip| *ip != "None")
                .map(|ip| vec![ip.clone()]),
            cluster_ip,
            selector: s.selector.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| wire::ServicePort {
                    name: Some(p.name.clone()).filter(|n| !n.is_empty()),
                    protocol: Some(p.protocol.to_string()),
                    port: i64::from(p.port),
                    target_port: Some(match &p.target {
                        TargetPort::Number(n) => wire::IntOrString::Int(i64::from(*n)),
                        TargetPort::Named(n) => wire::IntOrString::Str(n.clone()),
                    }),
                    node_port: p.node_port.map(i64::from),
                    app_protocol: None,
                })
                .collect(),
            session_affinity: s.affinity_timeout.map(|_| "ClientIP".to_owned()),
            session_affinity_config: s.affinity_timeout.map(|t| wire::SessionAffinityConfig {
                client_ip: Some(wire::ClientIpConfig {
                    timeout_seconds: Some(i64::from(t)),
                }),
            }),
            external_traffic_policy: local(s.external_local),
            internal_traffic_policy: local(s.internal_local),
            external_name: s.external_name.clone(),
            ..Default::default()
        },
        status: None,
    }
}

fn slice(s: &EndpointSlice) -> wire::EndpointSlice {
    let labels = [(SERVICE_NAME_LABEL.to_owned(), s.service.clone())].into();
    wire::EndpointSlice {
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
        metadata: metadata(&s.name, Some(&s.namespace), &labels),
        address_type: "IPv4".into(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| wire::Endpoint {
                addresses: e.addresses.iter().map(Ipv4Addr::to_string).collect(),
                conditions: Some(wire::EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                node_name: e.node.clone(),
                hostname: e.hostname.clone(),
                ..Default::default()
            })
            .collect(),
        ports: s
            .ports
            .iter()
            .map(|p| wire::EndpointPort {
                name: Some(p.name.clone()).filter(|n| !n.is_empty()),
                port: Some(i64::from(p.port)),
                protocol: Some(p.protocol.to_string()),
                app_protocol: None,
            })
            .collect(),
    }
}

pub(crate) fn selector(s: &LabelSelector) -> wire::LabelSelector {
    wire::LabelSelector {
        match_labels: Some(s.match_labels.clone()).filter(|m| !m.is_empty()),
        match_expressions: Some(
            s.match_expressions
                .iter()
                .map(|e| wire::LabelSelectorRequirement {
                    key: e.key.clone(),
                    operator: match e.operator {
                        SelectorOperator::In => "In",
                        SelectorOperator::NotIn => "NotIn",
                        SelectorOperator::Exists => "Exists",
                        SelectorOperator::DoesNotExist => "DoesNotExist",
                    }
                    .into(),
                    values: Some(e.values.clone()).filter(|v| !v.is_empty()),
                })
                .collect::<Vec<_>>(),
        )
        .filter(|e| !e.is_empty()),
    }
}

fn peer(p: &PolicyPeer) -> wire::PolicyPeer {
    match p {
        PolicyPeer::Pods { namespaces, pods } => wire::PolicyPeer {
            // `podSelector: {}` is left out beside a namespaceSelector (it means the same);
            // alone it must stay, or the peer would be empty.
            pod_selector: (namespaces.is_none() || !pods.is_empty()).then(|| selector(pods)),
            namespace_selector: namespaces.as_ref().map(selector),
            ip_block: None,
        },
        PolicyPeer::IpBlock { cidr, except } => wire::PolicyPeer {
            ip_block: Some(wire::IpBlock {
                cidr: cidr.to_string(),
                except: Some(except.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .filter(|e| !e.is_empty()),
            }),
            ..Default::default()
        },
    }
}

/// A rule's peers and ports: `None` for an empty list (it matches everything, as written
/// without the key).
fn rule(r: &PolicyRule) -> (Option<Vec<wire::PolicyPeer>>, Option<Vec<wire::PolicyPort>>) {
    let peers = Some(r.peers.iter().map(peer).collect::<Vec<_>>()).filter(|p| !p.is_empty());
    let ports = Some(
        r.ports
            .iter()
            .map(|p| wire::PolicyPort {
                protocol: Some(p.protocol.to_string()),
                port: p.port.as_ref().map(|n| match n {
                    PolicyPortNumber::Number(n) => wire::IntOrString::Int(i64::from(*n)),
                    PolicyPortNumber::Named(n) => wire::IntOrString::Str(n.clone()),
                }),
                end_port: p.end_port.map(i64::from),
            })
            .collect::<Vec<_>>(),
    )
    .filter(|p| !p.is_empty());
    (peers, ports)
}

fn network_policy(p: &NetworkPolicy) -> wire::NetworkPolicy {
    let mut metadata = metadata(&p.name, Some(&p.namespace), &p.labels);
    if p.enforcement == crate::Enforcement::Audit {
        metadata
            .annotations
            .insert(ENFORCEMENT_ANNOTATION.to_owned(), "audit".to_owned());
    }
    let mut types = Vec::new();
    if p.ingress_isolation {
        types.push("Ingress".to_owned());
    }
    if p.egress_isolation {
        types.push("Egress".to_owned());
    }
    let ingress: Vec<wire::IngressRule> = p
        .ingress
        .iter()
        .map(|r| {
            let (from, ports) = rule(r);
            wire::IngressRule { from, ports }
        })
        .collect();
    let egress: Vec<wire::EgressRule> = p
        .egress
        .iter()
        .map(|r| {
            let (to, ports) = rule(r);
            wire::EgressRule { to, ports }
        })
        .collect();
    wire::NetworkPolicy {
        api_version: "networking.k8s.io/v1".into(),
        kind: "NetworkPolicy".into(),
        metadata,
        spec: wire::NetworkPolicySpec {
            pod_selector: Some(selector(&p.pod_selector)),
            // Always written: the defaulted types are what the policy isolates.
            policy_types: Some(types),
            ingress: Some(ingress).filter(|r| !r.is_empty()),
            egress: Some(egress).filter(|r| !r.is_empty()),
        },
        status: None,
    }
}

fn fqdn_policy(p: &FqdnPolicy) -> wire::FqdnPolicy {
    let rules = p
        .egress
        .iter()
        .map(|r| wire::FqdnRule {
            to_fqdns: Some(
                r.to_fqdns
                    .iter()
                    .map(|s| match s {
                        FqdnSelector::Name(n) => wire::FqdnSelector {
                            match_name: Some(n.clone()),
                            match_pattern: None,
                        },
                        FqdnSelector::Pattern(n) => wire::FqdnSelector {
                            match_name: None,
                            match_pattern: Some(n.clone()),
                        },
                    })
                    .collect(),
            ),
            ports: Some(
                r.ports
                    .iter()
                    .map(|port| {
                        // An entry without a port stands for all of them.
                        let all = port.port == 1 && port.end_port == u16::MAX;
                        wire::FqdnPort {
                            protocol: Some(port.protocol.to_string()),
                            port: (!all).then(|| wire::IntOrString::Int(i64::from(port.port))),
                            end_port: (!all && port.end_port != port.port)
                                .then(|| i64::from(port.end_port)),
                        }
                    })
                    .collect::<Vec<_>>(),
            )
            .filter(|p| !p.is_empty()),
        })
        .collect();
    wire::FqdnPolicy {
        api_version: "policy.twill.io/v1alpha1".into(),
        kind: "FQDNPolicy".into(),
        metadata: metadata(&p.name, Some(&p.namespace), &p.labels),
        spec: wire::FqdnPolicySpec {
            pod_selector: Some(selector(&p.pod_selector)),
            // Written even when empty: no rules means no name outside the cluster.
            egress: Some(rules),
        },
        status: None,
    }
}

//! The Kubernetes objects twill understands: `Namespace`, `Pod`, `Service` (v1),
//! `EndpointSlice` (discovery.k8s.io/v1), `NetworkPolicy` (networking.k8s.io/v1) and twill's
//! own `FQDNPolicy` (policy.twill.io/v1alpha1) and `BGPPeer` (bgp.twill.io/v1alpha1),
//! parsed strictly from (multi-document) YAML (a `kind: List` document counts as its
//! items) and validated into a normalized model;
//! [`manifest`] writes the model back as Kubernetes-shaped objects.
//!
//! Every problem is reported with the file, the document's position in it and the field,
//! and [`parse`] reports all of them, so a caller can store all of a file or nothing.
//!
//! Architecture invariant: pure. No etcd, no I/O beyond the text handed in; ClusterIP and
//! NodePort allocation happen where the store is (netctl apply).
#![forbid(unsafe_code)]

pub mod bgppeer;
pub mod endpoints;
pub mod fqdn;
mod fqdn_parse;
pub mod manifest;
pub mod names;
pub mod policy;
mod policy_parse;
mod wire;

pub use bgppeer::BgpPeer;
pub use fqdn::*;
pub use policy::*;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

/// NodePorts are allocated from, and must lie in, this range unless configured otherwise.
pub const DEFAULT_NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (three hours, as Kubernetes).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    /// Pod container ports and NetworkPolicy ports; Services and EndpointSlices refuse it.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Container ports that have a name (what a Service's named `targetPort` resolves to).
    pub named_ports: Vec<NamedPort>,
    /// `spec.hostname` (a DNS-1123 label; empty is `None`). With `subdomain` naming a
    /// headless Service that selects the pod, the pod's DNS name is
    /// `<hostname>.<subdomain>.<namespace>.svc.<zone>`, as for StatefulSet pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `spec.subdomain` (a DNS-1123 label; empty is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    /// A DNS alias (`spec.externalName`): no ClusterIP, nothing in the dataplane; the
    /// cluster DNS answers it with a CNAME.
    ExternalName,
}

/// The Service's virtual IP, as asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterIp {
    /// Allocate one from the service CIDR.
    Auto,
    Fixed(Ipv4Addr),
    /// `clusterIP: None`: no VIP, no load balancing.
    Headless,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod.
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Named(n) => f.write_str(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Empty when the Service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    /// Asked for (and, once stored, allocated) for NodePort Services.
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub cluster_ip: ClusterIp,
    /// `None`: endpoints come from EndpointSlices.
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `spec.externalName` of an ExternalName Service (lower-case, no trailing dot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<Ipv4Addr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// `endpoints[].hostname` (a DNS-1123 label): the endpoint's name under a headless
    /// Service (`<hostname>.<service>.<namespace>.svc.<zone>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: String,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

/// One validated object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
    #[serde(rename = "FQDNPolicy")]
    FqdnPolicy(FqdnPolicy),
    #[serde(rename = "BGPPeer")]
    BgpPeer(BgpPeer),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::FqdnPolicy(_) => "FQDNPolicy",
            Object::BgpPeer(_) => "BGPPeer",
        }
    }

    /// The resource name used in store keys and CLI output (`services`, ...).
    pub fn resource(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "namespaces",
            Object::Pod(_) => "pods",
            Object::Service(_) => "services",
            Object::EndpointSlice(_) => "endpointslices",
            Object::NetworkPolicy(_) => "networkpolicies",
            Object::FqdnPolicy(_) => "fqdnpolicies",
            Object::BgpPeer(_) => "bgppeers",
        }
    }

    /// `None` for cluster-wide objects (Namespace, BGPPeer).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Object::Namespace(_) | Object::BgpPeer(_) => None,
            Object::Pod(p) => Some(&p.namespace),
            Object::Service(s) => Some(&s.namespace),
            Object::EndpointSlice(e) => Some(&e.namespace),
            Object::NetworkPolicy(n) => Some(&n.namespace),
            Object::FqdnPolicy(f) => Some(&f.namespace),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Object::Namespace(n) => &n.name,
            Object::Pod(p) => &p.name,
            Object::Service(s) => &s.name,
            Object::EndpointSlice(e) => &e.name,
            Object::NetworkPolicy(n) => &n.name,
            Object::FqdnPolicy(f) => &f.name,
            Object::BgpPeer(b) => &b.name,
        }
    }

    /// `Service default/web`, `Namespace prod`.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// A problem with one document of an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    /// The file (or `-` for stdin).
    pub source: String,
    /// 1-based position of the document in the file.
    pub document: usize,
    /// `Service default/web`, when known.
    pub object: Option<String>,
    /// The field, as a path (`spec.ports[1].port`); empty for the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects field errors for one document.
struct Problems<'a> {
    source: &'a str,
    document: usize,
    object: Option<String>,
    found: Vec<ObjectError>,
}

impl Problems<'_> {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.found.push(ObjectError {
            source: self.source.to_owned(),
            document: self.document,
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(m) = result {
            self.add(field, m);
        }
    }
}

/// An object and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// 1-based position of its document in the file.
    pub document: usize,
    pub object: Object,
}

/// Parses every document of `text` (named `source` in errors). Returns the objects in
/// document order and every problem found; empty documents are skipped. Two documents
/// naming the same object are an error.
pub fn parse(source: &str, text: &str) -> (Vec<Parsed>, Vec<ObjectError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = match serde_yaml_ng::Value::deserialize(document) {
            Ok(serde_yaml_ng::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(ObjectError {
                    source: source.to_owned(),
                    document: number,
                    object: None,
                    field: String::new(),
                    message: format!("not valid YAML: {e}"),
                });
                // The rest of the stream cannot be read reliably after a syntax error.
                break;
            }
        };
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            // What `kubectl get -o yaml` (and `netctl get`) print for several objects.
            match list_items(source, number, value) {
                Ok(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        match object(source, number, item) {
                            Ok(object) => objects.push(Parsed {
                                document: number,
                                object,
                            }),
                            Err(e) => errors.extend(e.into_iter().map(|mut e| {
                                e.field = if e.field.is_empty() {
                                    format!("items[{i}]")
                                } else {
                                    format!("items[{i}].{}", e.field)
                                };
                                e
                            })),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
            continue;
        }
        match object(source, number, value) {
            Ok(object) => objects.push(Parsed {
                document: number,
                object,
            }),
            Err(mut e) => errors.append(&mut e),
        }
    }
    let mut seen = BTreeSet::new();
    for Parsed {
        document,
        object: o,
    } in &objects
    {
        if !seen.insert((
            o.resource(),
            o.namespace().map(str::to_owned),
            o.name().to_owned(),
        )) {
            errors.push(ObjectError {
                source: source.to_owned(),
                document: *document,
                object: Some(o.describe()),
                field: String::new(),
                message: "the same object appears twice".to_owned(),
            });
        }
    }
    (objects, errors)
}

/// The items of a `kind: List` document (`apiVersion: v1`, `items`, and `metadata` that is
/// not read); empty items are skipped.
fn list_items(
    source: &str,
    number: usize,
    value: serde_yaml_ng::Value,
) -> Result<Vec<serde_yaml_ng::Value>, ObjectError> {
    let error = |field: &str, message: String| ObjectError {
        source: source.to_owned(),
        document: number,
        object: None,
        field: field.to_owned(),
        message,
    };
    let serde_yaml_ng::Value::Mapping(mut map) = value else {
        return Err(error("", "a List must be a mapping".into()));
    };
    match map.get("apiVersion").and_then(|v| v.as_str()) {
        Some("v1") => {}
        other => {
            return Err(error(
                "apiVersion",
                format!("List needs apiVersion v1, not {}", other.unwrap_or("none")),
            ));
        }
    }
    for key in map.keys() {
        match key.as_str() {
            Some("apiVersion" | "kind" | "items" | "metadata") => {}
            other => {
                return Err(error(
                    other.unwrap_or("?"),
                    "unknown field of a List (apiVersion, kind, items, metadata)".into(),
                ));
            }
        }
    }
    match map.remove("items") {
        None | Some(serde_yaml_ng::Value::Null) => Ok(Vec::new()),
        Some(serde_yaml_ng::Value::Sequence(items)) => {
            Ok(items.into_iter().filter(|i| !i.is_null()).collect())
        }
        Some(_) => Err(error("items", "must be a list of objects".into())),
    }
}

fn object(
    source: &str,
    number: usize,
    value: serde_yaml_ng::Value,
) -> Result<Object, Vec<ObjectError>> {
    let mut p = Problems {
        source,
        document: number,
        object: None,
        found: Vec::new(),
    };
    let text = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (Some(kind), Some(api_version)) = (text("kind"), text("apiVersion")) else {
        if !value.is_mapping() {
            p.add("", "a document must be a mapping with apiVersion and kind");
        } else {
            if text("kind").is_none() {
                p.add("kind", "missing (a string such as Service)");
            }
            if text("apiVersion").is_none() {
                p.add("apiVersion", "missing (a string such as v1)");
            }
        }
        return Err(p.found);
    };
    let expected = match manifest::api_version(&kind) {
        Some(v) if kind != "List" => v,
        _ => {
            let other = &kind;
            p.add(
                "kind",
                format!(
                    "{other} is not a kind twill handles (Namespace, Pod, Service, EndpointSlice, NetworkPolicy, FQDNPolicy, BGPPeer)"
                ),
            );
            return Err(p.found);
        }
    };
    if api_version != expected {
        p.add(
            "apiVersion",
            format!("{kind} needs apiVersion {expected}, not {api_version}"),
        );
        return Err(p.found);
    }
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    p.object = Some(if kind == "Namespace" || kind == "BGPPeer" {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    });
    let result = match kind.as_str() {
        "Namespace" => typed::<wire::Namespace>(&mut p, value).map(|w| namespace_obj(&mut p, w)),
        "Pod" => typed::<wire::Pod>(&mut p, value).map(|w| pod_obj(&mut p, w)),
        "Service" => typed::<wire::Service>(&mut p, value).map(|w| service_obj(&mut p, w)),
        "EndpointSlice" => {
            typed::<wire::EndpointSlice>(&mut p, value).map(|w| slice_obj(&mut p, w))
        }
        "NetworkPolicy" => typed::<wire::NetworkPolicy>(&mut p, value)
            .map(|w| Object::NetworkPolicy(policy_parse::policy_obj(&mut p, w))),
        "BGPPeer" => typed::<bgppeer::WireBgpPeer>(&mut p, value)
            .map(|w| Object::BgpPeer(bgppeer::bgp_peer_obj(&mut p, w))),
        // FQDNPolicy: the kinds were checked above.
        _ => typed::<wire::FqdnPolicy>(&mut p, value)
            .map(|w| Object::FqdnPolicy(fqdn_parse::fqdn_policy_obj(&mut p, w))),
    };
    match result {
        Some(o) if p.found.is_empty() => Ok(o),
        _ => Err(p.found),
    }
}

/// Deserializes with the failing field's path in the error.
fn typed<T: for<'de> Deserialize<'de>>(
    p: &mut Problems<'_>,
    value: serde_yaml_ng::Value,
) -> Option<T> {
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            p.add(field, e.into_inner().to_string());
            None
        }
    }
}

fn meta_name(
    p: &mut Problems<'_>,
    m: &wire::Metadata,
    rule: fn(&str) -> Result<(), String>,
) -> String {
    match &m.name {
        Some(n) => {
            p.check("metadata.name", rule(n));
            n.clone()
        }
        None => {
            p.add("metadata.name", "missing");
            String::new()
        }
    }
}

fn meta_namespace(p: &mut Problems<'_>, m: &wire::Metadata) -> String {
    let ns = m.namespace.clone().unwrap_or_else(|| "default".to_owned());
    p.check("metadata.namespace", names::dns1123_label(&ns));
    ns
}

fn labels(p: &mut Problems<'_>, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        p.check(format!("{field}.{k}"), names::label_key(k));
        p.check(format!("{field}.{k}"), names::label_value(v));
    }
}

fn port(p: &mut Problems<'_>, field: String, value: i64) -> u16 {
    match u16::try_from(value) {
        Ok(v) if v > 0 => v,
        _ => {
            p.add(field, format!("{value} is not a port (1-65535)"));
            0
        }
    }
}

/// Which protocols a field takes: Services and EndpointSlices do not take SCTP (yet).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocols {
    TcpUdp,
    WithSctp,
}

fn protocol(
    p: &mut Problems<'_>,
    field: String,
    value: Option<&str>,
    allowed: Protocols,
) -> Protocol {
    match (value.unwrap_or("TCP"), allowed) {
        ("TCP", _) => Protocol::Tcp,
        ("UDP", _) => Protocol::Udp,
        ("SCTP", Protocols::WithSctp) => Protocol::Sctp,
        ("SCTP", Protocols::TcpUdp) => {
            p.add(field, "SCTP is not supported yet (TCP, UDP)");
            Protocol::Tcp
        }
        (other, Protocols::TcpUdp) => {
            p.add(field, format!("{other:?} is not a protocol (TCP, UDP)"));
            Protocol::Tcp
        }
        (other, Protocols::WithSctp) => {
            p.add(
                field,
                format!("{other:?} is not a protocol (TCP, UDP, SCTP)"),
            );
            Protocol::Tcp
        }
    }
}

fn namespace_obj(p: &mut Problems<'_>, w: wire::Namespace) -> Object {
    if w.metadata.namespace.is_some() {
        p.add("metadata.namespace", "a Namespace has no namespace");
    }
    let name = meta_name(p, &w.metadata, names::dns1123_label);
    labels(p, "metadata.labels", &w.metadata.labels);
    Object::Namespace(Namespace {
        name,
        labels: w.metadata.labels,
    })
}

fn pod_obj(p: &mut Problems<'_>, w: wire::Pod) -> Object {
    let name = meta_name(p, &w.metadata, names::dns1123_subdomain);
    let namespace = meta_namespace(p, &w.metadata);
    labels(p, "metadata.labels", &w.metadata.labels);
    let mut named_ports: Vec<NamedPort> = Vec::new();
    for (c, container) in w.spec.containers.iter().enumerate() {
        for (i, cp) in container.ports.iter().enumerate() {
            let field = format!("spec.containers[{c}].ports[{i}]");
            let number = port(p, format!("{field}.containerPort"), cp.container_port);
            let proto = protocol(
                p,
                format!("{field}.protocol"),
                cp.protocol.as_deref(),
                Protocols::WithSctp,
            );
            if let Some(n) = &cp.name {
                p.check(format!("{field}.name"), names::iana_svc_name(n));
                if named_ports.iter().any(|np| &np.name == n) {
                    p.add(
                        format!("{field}.name"),
                        format!("port name {n:?} is used twice in the pod"),
                    );
                }
                named_ports.push(NamedPort {
                    name: n.clone(),
                    port: number,
                    protocol: proto,
                });
            }
        }
    }
    // As the API server: both optional, each a DNS-1123 label when not empty.
    let mut label_field = |field: &str, value: Option<String>| {
        let value = value.filter(|v| !v.is_empty())?;
        p.check(field, names::dns1123_label(&value));
        Some(value)
    };
    let hostname = label_field("spec.hostname", w.spec.hostname);
    let subdomain = label_field("spec.subdomain", w.spec.subdomain);
    Object::Pod(Pod {
        namespace,
        name,
        labels: w.metadata.labels,
        named_ports,
        hostname,
        subdomain,
    })
}

fn service_obj(p: &mut Problems<'_>, w: wire::Service) -> Object {
    let name = meta_name(p, &w.metadata, names::dns1035_label);
    let namespace = meta_namespace(p, &w.metadata);
    labels(p, "metadata.labels", &w.metadata.labels);
    let s = w.spec;
    let kind = match s.kind.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "ExternalName" => ServiceType::ExternalName,
        other @ "LoadBalancer" => {
            p.add(
                "spec.type",
                format!("{other} is not supported yet (ClusterIP, NodePort, ExternalName)"),
            );
            ServiceType::ClusterIP
        }
        other => {
            p.add(
                "spec.type",
                format!("{other:?} is not a Service type (ClusterIP, NodePort, ExternalName)"),
            );
            ServiceType::ClusterIP
        }
    };
    // As the API server: an ExternalName Service names a DNS name and has no ClusterIP.
    let external_name = match (kind, s.external_name.as_deref()) {
        (ServiceType::ExternalName, None | Some("")) => {
            p.add("spec.externalName", "required for type ExternalName");
            None
        }
        (ServiceType::ExternalName, Some(n)) => {
            let n = n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase();
            if names::dns1123_subdomain(&n).is_err() {
                p.add(
                    "spec.externalName",
                    format!("{n:?} is not a DNS name (RFC 1123 subdomain)"),
                );
            }
            Some(n)
        }
        (_, Some(_)) => {
            p.add(
                "spec.externalName",
                "only a Service of type ExternalName has one",
            );
            None
        }
        (_, None) => None,
    };
    if kind == ServiceType::ExternalName
        && s.cluster_ip
            .as_deref()
            .is_some_and(|ip| !ip.is_empty() && ip != "None")
    {
        p.add(
            "spec.clusterIP",
            "an ExternalName Service has no cluster IP (leave it out or \"None\")",
        );
    }
    let cluster_ip = match s.cluster_ip.as_deref() {
        _ if kind == ServiceType::ExternalName => ClusterIp::Headless,
        None | Some("") => ClusterIp::Auto,
        Some("None") => ClusterIp::Headless,
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(ip) => ClusterIp::Fixed(ip),
            Err(_) => {
                p.add(
                    "spec.clusterIP",
                    format!("{ip:?} is not an IPv4 address, \"None\" or empty"),
                );
                ClusterIp::Auto
            }
        },
    };
    if let Some(ips) = &s.cluster_ips {
        let single = s.cluster_ip.as_deref().filter(|v| !v.is_empty());
        if ips.len() > 1 || (single.is_some() && ips.first().map(String::as_str) != single) {
            p.add(
                "spec.clusterIPs",
                "only one IPv4 cluster IP is supported, equal to spec.clusterIP",
            );
        }
    }
    if let Some(families) = &s.ip_families
        && families.iter().any(|f| f != "IPv4")
    {
        p.add("spec.ipFamilies", "only IPv4 is supported");
    }
    if let Some(policy) = &s.ip_family_policy
        && policy != "SingleStack"
    {
        p.add(
            "spec.ipFamilyPolicy",
            format!("{policy} is not supported (SingleStack)"),
        );
    }
    if let Some(sel) = &s.selector {
        labels(p, "spec.selector", sel);
    }
    if s.ports.is_empty() && cluster_ip != ClusterIp::Headless {
        p.add("spec.ports", "a Service needs at least one port");
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    let many = s.ports.len() > 1;
    for (i, sp) in s.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = port(p, format!("{field}.port"), sp.port);
        let proto = protocol(
            p,
            format!("{field}.protocol"),
            sp.protocol.as_deref(),
            Protocols::TcpUdp,
        );
        let name = sp.name.clone().unwrap_or_default();
        if name.is_empty() {
            if many {
                p.add(
                    format!("{field}.name"),
                    "required when a Service has more than one port",
                );
            }
        } else {
            p.check(format!("{field}.name"), names::dns1123_label(&name));
            if ports.iter().any(|q| q.name == name) {
                p.add(
                    format!("{field}.name"),
                    format!("duplicate port name {name:?}"),
                );
            }
        }
        if ports
            .iter()
            .any(|q| q.port == number && q.protocol == proto)
        {
            p.add(
                format!("{field}.port"),
                format!("duplicate port {number}/{proto}"),
            );
        }
        let target = match &sp.target_port {
            None => TargetPort::Number(number),
            Some(wire::IntOrString::Int(n)) => {
                TargetPort::Number(port(p, format!("{field}.targetPort"), *n))
            }
            Some(wire::IntOrString::Str(s)) => match s.parse::<i64>() {
                Ok(n) => TargetPort::Number(port(p, format!("{field}.targetPort"), n)),
                Err(_) => {
                    p.check(format!("{field}.targetPort"), names::iana_svc_name(s));
                    TargetPort::Named(s.clone())
                }
            },
        };
        let node_port = match sp.node_port {
            None => None,
            Some(_) if kind != ServiceType::NodePort => {
                p.add(
                    format!("{field}.nodePort"),
                    "only a NodePort Service has node ports",
                );
                None
            }
            Some(n) => match u16::try_from(n) {
                Ok(n) if DEFAULT_NODE_PORTS.contains(&n) => {
                    if ports
                        .iter()
                        .any(|q| q.node_port == Some(n) && q.protocol == proto)
                    {
                        p.add(
                            format!("{field}.nodePort"),
                            format!("duplicate node port {n}/{proto}"),
                        );
                    }
                    Some(n)
                }
                _ => {
                    p.add(
                        format!("{field}.nodePort"),
                        format!(
                            "{n} is outside the node port range {}-{}",
                            DEFAULT_NODE_PORTS.start(),
                            DEFAULT_NODE_PORTS.end()
                        ),
                    );
                    None
                }
            },
        };
        if let Some(app) = &sp.app_protocol {
            p.check(format!("{field}.appProtocol"), names::label_key(app));
        }
        ports.push(ServicePort {
            name,
            protocol: proto,
            port: number,
            target,
            node_port,
        });
    }
    let affinity_timeout = match s.session_affinity.as_deref().unwrap_or("None") {
        "None" => {
            if s.session_affinity_config.is_some() {
                p.add(
                    "spec.sessionAffinityConfig",
                    "only with sessionAffinity: ClientIP",
                );
            }
            None
        }
        "ClientIP" => {
            let t = s
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(i64::from(DEFAULT_AFFINITY_TIMEOUT));
            if (1..=86400).contains(&t) {
                Some(t as u32)
            } else {
                p.add(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is outside 1-86400"),
                );
                None
            }
        }
        other => {
            p.add(
                "spec.sessionAffinity",
                format!("{other:?} is not None or ClientIP"),
            );
            None
        }
    };
    let policy = |p: &mut Problems<'_>, field: &str, v: Option<&str>| match v.unwrap_or("Cluster") {
        "Cluster" => false,
        "Local" => true,
        other => {
            p.add(
                field.to_owned(),
                format!("{other:?} is not Cluster or Local"),
            );
            false
        }
    };
    let external_local = policy(
        p,
        "spec.externalTrafficPolicy",
        s.external_traffic_policy.as_deref(),
    );
    if s.external_traffic_policy.is_some() && kind != ServiceType::NodePort {
        p.add(
            "spec.externalTrafficPolicy",
            "only a NodePort Service has external traffic",
        );
    }
    let internal_local = policy(
        p,
        "spec.internalTrafficPolicy",
        s.internal_traffic_policy.as_deref(),
    );
    Object::Service(Service {
        namespace,
        name,
        labels: w.metadata.labels,
        service_type: kind,
        cluster_ip,
        selector: s.selector,
        ports,
        affinity_timeout,
        external_local,
        internal_local,
        external_name,
    })
}

fn slice_obj(p: &mut Problems<'_>, w: wire::EndpointSlice) -> Object {
    let name = meta_name(p, &w.metadata, names::dns1123_subdomain);
    let namespace = meta_namespace(p, &w.metadata);
    labels(p, "metadata.labels", &w.metadata.labels);
    let service = match w.metadata.labels.get(SERVICE_NAME_LABEL) {
        Some(s) => s.clone(),
        None => {
            p.add(
                format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                "missing: it names the Service the slice belongs to",
            );
            String::new()
        }
    };
    if w.address_type != "IPv4" {
        p.add(
            "addressType",
            format!("{} is not supported (IPv4)", w.address_type),
        );
    }
    let mut endpoints = Vec::new();
    for (i, e) in w.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            match a.parse::<Ipv4Addr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => p.add(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IPv4 address"),
                ),
            }
        }
        if addresses.is_empty() {
            p.add(format!("endpoints[{i}].addresses"), "needs an address");
        }
        if let Some(h) = &e.hostname {
            p.check(format!("endpoints[{i}].hostname"), names::dns1123_label(h));
        }
        let c = e.conditions.as_ref();
        // As Kubernetes: an unknown `ready` counts as ready.
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            node: e.node_name.clone(),
            hostname: e.hostname.clone(),
        });
    }
    let mut ports = Vec::new();
    for (i, sp) in w.ports.iter().enumerate() {
        let field = format!("ports[{i}]");
        let Some(n) = sp.port else {
            p.add(format!("{field}.port"), "missing");
            continue;
        };
        let number = port(p, format!("{field}.port"), n);
        let name = sp.name.clone().unwrap_or_default();
        if !name.is_empty() {
            p.check(format!("{field}.name"), names::dns1123_label(&name));
        }
        ports.push(SlicePort {
            name,
            port: number,
            protocol: protocol(
                p,
                format!("{field}.protocol"),
                sp.protocol.as_deref(),
                Protocols::TcpUdp,
            ),
        });
    }
    Object::EndpointSlice(EndpointSlice {
        namespace,
        name,
        service,
        endpoints,
        ports,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod fqdn_tests;

#[cfg(test)]
mod bgppeer_tests;

#[cfg(test)]
mod manifest_tests;

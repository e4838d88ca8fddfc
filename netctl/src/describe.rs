//! `netctl describe`: one Service or pod in full, from the store and, where this machine
//! reaches them (every node of a lab; on a real cluster the local node), the nodes' pinned
//! maps and daemons.
//!
//! A Service: its type, ClusterIP, ports (target and node ports), selector, its ready and
//! not-ready endpoints with the pod and node of each, and whether each node's frontends
//! in the pinned Service map hold what they should (the same frontends twilld compiles:
//! one per ClusterIP port and NodePort, ready backends, `Local` traffic policies keeping
//! only the node's own).
//!
//! A pod: its node, address, host interface, whether its programs are attached (the
//! node's pinned links), the Services it backs, and the NetworkPolicies (per direction)
//! and FQDNPolicies that select it, as twill_policy's ClusterView selects.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::bail;
use clap::Args;
use twill_abi::lb::{
    FRONTEND_AFFINITY, FRONTEND_LOCAL, FrontendKey, IPPROTO_TCP, IPPROTO_UDP, SCOPE_CLUSTER_IP,
    SCOPE_NODE_PORT_INTERNAL, wire_ip, wire_port,
};
use twill_api::cluster::{self, PodRecord};
use twill_k8s::{ClusterIp, Object, Protocol, Service, ServiceType, TargetPort};
use twill_policy::{ClusterView, PodView};

use crate::{
    get::{Cluster, Kind, KindValues, kind_of},
    nodes::Nodes,
    store::StoreArgs,
};

#[derive(Args)]
pub struct DescribeArgs {
    /// `services` (`svc`) or `pods` (`po`), or KIND/NAME.
    #[arg(value_name = "KIND", value_parser = KindValues(&[Kind::Services, Kind::Pods]))]
    kind: String,
    /// The object; without it, every one of the namespace.
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// The object's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(args: DescribeArgs) -> anyhow::Result<()> {
    let (word, name) = match args.kind.split_once('/') {
        Some((k, n)) => (k, Some(n.to_owned())),
        None => (args.kind.as_str(), None),
    };
    let name = match (name, &args.name) {
        (Some(_), Some(_)) => bail!("give the name either as KIND/NAME or after KIND, not both"),
        (a, b) => a.or_else(|| b.clone()),
    };
    let kind = kind_of(word)?;
    let prefixes: Vec<String> = match kind {
        Kind::Services => vec![
            cluster::objects_prefix("services"),
            cluster::objects_prefix("pods"),
            cluster::objects_prefix("endpointslices"),
            cluster::PODS.into(),
            cluster::NODES.into(),
        ],
        // Everything a policy selection and the Services backed depend on.
        Kind::Pods => vec![
            cluster::OBJECTS.into(),
            cluster::PODS.into(),
            cluster::NODES.into(),
        ],
        _ => bail!("netctl describe knows services (svc) and pods (po)"),
    };
    let c = Cluster::read_prefixes(&args.store, prefixes)?;
    let nodes = Nodes::of(&args.store);
    let ns = &args.namespace;
    let mut texts = Vec::new();
    match kind {
        Kind::Services => {
            let mut services: Vec<&Service> = c
                .services()
                .filter(|s| &s.namespace == ns && name.as_ref().is_none_or(|n| &s.name == n))
                .collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            texts.extend(services.into_iter().map(|s| service(&c, &nodes, s)));
        }
        _ => {
            let mut pods: Vec<(String, Option<&twill_k8s::Pod>, Option<&PodRecord>)> = c
                .pods()
                .filter(|p| &p.namespace == ns)
                .map(|p| (p.name.clone(), Some(p), c.record(ns, &p.name)))
                .collect();
            for r in c.records.iter().filter(|r| &r.namespace == ns) {
                if !pods.iter().any(|(n, _, _)| n == &r.name) {
                    pods.push((r.name.clone(), None, Some(r)));
                }
            }
            pods.retain(|(n, _, _)| name.as_ref().is_none_or(|want| n == want));
            pods.sort_by(|a, b| a.0.cmp(&b.0));
            texts.extend(
                pods.into_iter()
                    .map(|(n, object, record)| pod(&c, &nodes, ns, &n, object, record)),
            );
        }
    }
    if texts.is_empty() {
        match name {
            Some(n) => bail!("{} {n:?} not found in namespace {ns}", kind.names().plural),
            None => {
                eprintln!("No resources found in {ns} namespace.");
                return Ok(());
            }
        }
    }
    print!("{}", texts.join("\n"));
    Ok(())
}

/// `Key:   value` lines, values aligned.
struct Lines {
    out: String,
}

impl Lines {
    fn new() -> Lines {
        Lines { out: String::new() }
    }

    fn field(&mut self, key: &str, value: impl std::fmt::Display) {
        self.out
            .push_str(&format!("{:<18}{value}\n", format!("{key}:")));
    }

    fn line(&mut self, text: impl std::fmt::Display) {
        self.out.push_str(&format!("{text}\n"));
    }

    /// An indented table: header and rows, columns padded.
    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: Vec<&str>| {
            let text = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("   ");
            format!("  {}\n", text.trim_end())
        };
        self.out.push_str(&line(header.to_vec()));
        for r in rows {
            self.out
                .push_str(&line(r.iter().map(String::as_str).collect()));
        }
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "<none>".into()
    } else {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => twill_policy::IPPROTO_SCTP,
    }
}

/// One frontend as a node should hold it.
struct Expected {
    /// `10.96.0.1:80/TCP`, `NodePort 30080/TCP`.
    label: String,
    key: FrontendKey,
    backends: Vec<(Ipv4Addr, u16)>,
    affinity_timeout: u32,
    flags: u32,
}

/// The frontends of `s` on node `node`, as twilld compiles them (daemon/src/services/
/// lbplan.rs): one per ClusterIP port with the ready backends (only `node`'s with
/// `internalTrafficPolicy: Local`), one per NodePort (only `node`'s with
/// `externalTrafficPolicy: Local`, which also sets the local flag, and then a second one
/// with every ready backend for the node's own clients).
fn expected_frontends(
    s: &Service,
    backends: &[Vec<twill_k8s::endpoints::Backend>],
    node: &str,
) -> Vec<Expected> {
    let ClusterIp::Fixed(vip) = s.cluster_ip else {
        return Vec::new();
    };
    let affinity_timeout = s.affinity_timeout.unwrap_or(0);
    let affinity = if affinity_timeout > 0 {
        FRONTEND_AFFINITY
    } else {
        0
    };
    let mut out = Vec::new();
    for (port, found) in s.ports.iter().zip(backends) {
        let ready = |local: bool| {
            let mut b: Vec<(Ipv4Addr, u16)> = found
                .iter()
                .filter(|b| b.ready && (!local || b.node.as_deref() == Some(node)))
                .map(|b| (b.ip, b.port))
                .collect();
            b.sort();
            b
        };
        let protocol = protocol_number(port.protocol);
        out.push(Expected {
            label: format!("{vip}:{}/{}", port.port, port.protocol),
            key: FrontendKey {
                ip: wire_ip(vip.octets()),
                port: wire_port(port.port),
                protocol,
                scope: SCOPE_CLUSTER_IP,
            },
            backends: ready(s.internal_local),
            affinity_timeout,
            flags: affinity,
        });
        if let Some(np) = port.node_port {
            let key = FrontendKey::node_port(wire_port(np), protocol);
            out.push(Expected {
                label: format!("NodePort {np}/{}", port.protocol),
                key,
                backends: ready(s.external_local),
                affinity_timeout,
                flags: affinity | if s.external_local { FRONTEND_LOCAL } else { 0 },
            });
            if s.external_local {
                out.push(Expected {
                    label: format!("NodePort {np}/{} from the node", port.protocol),
                    key: FrontendKey {
                        scope: SCOPE_NODE_PORT_INTERNAL,
                        ..key
                    },
                    backends: ready(false),
                    affinity_timeout,
                    flags: affinity,
                });
            }
        }
    }
    out
}

fn addresses(list: &[(Ipv4Addr, u16)]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.iter()
            .map(|(ip, port)| format!("{ip}:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether `pin_dir`'s Service map holds `expected`: `Ok(())`, or what differs.
fn check_frontends(pin_dir: &Path, expected: &[Expected]) -> Result<Vec<String>, String> {
    let entries = twill_bpf::read_services(pin_dir)
        .map_err(|e| format!("not checked: {:#}", anyhow::Error::new(e)))?;
    let mut differences = Vec::new();
    for want in expected {
        let Some(have) = entries.iter().find(|e| e.key == want.key) else {
            differences.push(format!("{} is missing", want.label));
            continue;
        };
        let mut backends: Vec<(Ipv4Addr, u16)> = have
            .backends
            .iter()
            .map(|b| {
                (
                    Ipv4Addr::from(b.ip.to_ne_bytes()),
                    u16::from_be_bytes(b.port.to_ne_bytes()),
                )
            })
            .collect();
        backends.sort();
        if backends != want.backends {
            differences.push(format!(
                "{} holds {}, should hold {}",
                want.label,
                addresses(&backends),
                addresses(&want.backends)
            ));
        }
        let flags = have.frontend.flags & (FRONTEND_AFFINITY | FRONTEND_LOCAL);
        if flags != want.flags
            || (want.flags & FRONTEND_AFFINITY != 0
                && have.frontend.affinity_timeout != want.affinity_timeout)
        {
            differences.push(format!(
                "{} has flags {flags} (affinity {}s), should have {} ({}s)",
                want.label, have.frontend.affinity_timeout, want.flags, want.affinity_timeout
            ));
        }
    }
    Ok(differences)
}

fn service(c: &Cluster, nodes: &Nodes, s: &Service) -> String {
    let mut l = Lines::new();
    l.field("Name", &s.name);
    l.field("Namespace", &s.namespace);
    l.field("Labels", labels_text(&s.labels));
    l.field("Type", format!("{:?}", s.service_type));
    if let Some(n) = &s.external_name {
        l.field("External Name", n);
    }
    l.field("ClusterIP", crate::get::cluster_ip_text(s));
    l.field(
        "Selector",
        s.selector
            .as_ref()
            .map_or("<none> (endpoints from EndpointSlices)".into(), labels_text),
    );
    l.field(
        "Session Affinity",
        s.affinity_timeout
            .map_or("None".into(), |t| format!("ClientIP ({t}s)")),
    );
    let policy = |local: bool| if local { "Local" } else { "Cluster" };
    l.field("Internal Traffic", policy(s.internal_local));
    if s.service_type == ServiceType::NodePort {
        l.field("External Traffic", policy(s.external_local));
    }
    if s.ports.is_empty() {
        l.field("Ports", "<none>");
    } else {
        l.line("Ports:");
        let rows: Vec<Vec<String>> = s
            .ports
            .iter()
            .map(|p| {
                vec![
                    if p.name.is_empty() {
                        "<unset>".into()
                    } else {
                        p.name.clone()
                    },
                    format!("{}/{}", p.port, p.protocol),
                    match &p.target {
                        TargetPort::Number(n) => format!("{n}/{}", p.protocol),
                        TargetPort::Named(n) => format!("{n} (named)"),
                    },
                    p.node_port
                        .map_or("-".into(), |n| format!("{n}/{}", p.protocol)),
                ]
            })
            .collect();
        l.table(&["NAME", "PORT", "TARGET-PORT", "NODE-PORT"], &rows);
    }
    let backends = c.backends(s);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (port, found) in s.ports.iter().zip(&backends) {
        for b in found {
            let pod = c.pod_at(b.ip).map_or("-".to_owned(), |r| r.name.clone());
            rows.push(vec![
                b.node.clone().unwrap_or_else(|| "<none>".into()),
                pod,
                format!("{}:{}", b.ip, b.port),
                if port.name.is_empty() {
                    format!("{}/{}", port.port, port.protocol)
                } else {
                    port.name.clone()
                },
                if b.ready { "yes" } else { "no" }.into(),
            ]);
        }
    }
    rows.sort();
    if rows.is_empty() {
        l.field("Endpoints", "<none>");
    } else {
        l.line("Endpoints:");
        l.table(&["NODE", "POD", "ADDRESS", "PORT", "READY"], &rows);
    }
    if !matches!(s.cluster_ip, ClusterIp::Fixed(_)) || s.service_type == ServiceType::ExternalName {
        l.field(
            "Node Frontends",
            "<none> (no ClusterIP: nothing is balanced)",
        );
        return l.out;
    }
    l.line("Node Frontends:");
    let mut rows = Vec::new();
    let mut names: Vec<&str> = c.nodes.iter().map(|n| n.record.name.as_str()).collect();
    names.sort_unstable();
    for node in names {
        let expected = expected_frontends(s, &backends, node);
        let state = match nodes
            .access(node)
            .map_err(|e| format!("not checked: {e}"))
            .and_then(|a| check_frontends(&a.pin_dir, &expected))
        {
            Ok(d) if d.is_empty() => "match".to_owned(),
            Ok(d) => format!("DIFFER: {}", d.join("; ")),
            Err(e) => e,
        };
        rows.push(vec![node.to_owned(), expected.len().to_string(), state]);
    }
    l.table(&["NODE", "FRONTENDS", "STATE"], &rows);
    l.out
}

/// Whether the pod programs are on the host end `host_if` of the pod on `node`: their
/// pinned tcx links (`<pins>/links/<host_if>/<program>`), and the daemon's queue.
fn programs(nodes: &Nodes, node: &str, host_if: &str) -> String {
    let access = match nodes.access(node) {
        Ok(a) => a,
        Err(e) => return format!("not checked: {e}"),
    };
    let dir = access.pin_dir.join(twill_bpf::LINKS).join(host_if);
    let pinned: Vec<&str> = twill_abi::programs::POD
        .iter()
        .copied()
        .filter(|p| dir.join(p).exists())
        .collect();
    if pinned.len() == twill_abi::programs::POD.len() {
        return format!("attached ({} pinned on {host_if})", pinned.join(", "));
    }
    let queued = match twill_api::call(
        &access.socket,
        &twill_api::Request::Status,
        Duration::from_secs(5),
    ) {
        Ok(twill_api::Response::Status { status }) => status.background.attaching,
        _ => 0,
    };
    let have = if pinned.is_empty() {
        "none".to_owned()
    } else {
        pinned.join(", ")
    };
    if queued > 0 {
        format!(
            "NOT YET ({have} of {} pinned; {node} is still attaching {queued} pod(s))",
            twill_abi::programs::POD.join(", ")
        )
    } else {
        format!(
            "NOT ATTACHED ({have} of {} pinned under {})",
            twill_abi::programs::POD.join(", "),
            dir.display()
        )
    }
}

fn pod(
    c: &Cluster,
    nodes: &Nodes,
    namespace: &str,
    name: &str,
    object: Option<&twill_k8s::Pod>,
    record: Option<&PodRecord>,
) -> String {
    let mut l = Lines::new();
    l.field("Name", name);
    l.field("Namespace", namespace);
    let labels = object.map(|o| o.labels.clone()).unwrap_or_default();
    l.field(
        "Labels",
        if object.is_none() {
            "<none> (no Pod object stored: apply one to give it labels)".into()
        } else {
            labels_text(&labels)
        },
    );
    match record {
        Some(r) => {
            let host_if = twill_api::host_ifname(&twill_api::AttachmentKey {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
            });
            l.field("Node", &r.node);
            l.field("IP", r.ip);
            l.field("Container ID", &r.container_id);
            l.field("Interface", format!("{} (host side {host_if})", r.ifname));
            l.field("Programs", programs(nodes, &r.node, &host_if));
        }
        None => {
            l.field("Node", "<none> (no node reported an address for it)");
            l.field("IP", "<none>");
        }
    }
    if let Some(o) = object
        && !o.named_ports.is_empty()
    {
        l.field(
            "Named Ports",
            o.named_ports
                .iter()
                .map(|p| format!("{} {}/{}", p.name, p.port, p.protocol))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    // Services whose endpoints include this pod's address.
    let mut backs = Vec::new();
    if let Some(r) = record {
        for s in c.services().filter(|s| s.namespace == namespace) {
            for (port, found) in s.ports.iter().zip(c.backends(s)) {
                for b in found.iter().filter(|b| b.ip == r.ip) {
                    backs.push(format!(
                        "{}/{} {}/{} -> {}{}",
                        s.namespace,
                        s.name,
                        port.port,
                        port.protocol,
                        b.port,
                        if b.ready { "" } else { " (not ready)" }
                    ));
                }
            }
        }
    }
    backs.sort();
    l.field(
        "Backs Services",
        if backs.is_empty() {
            "<none>".into()
        } else {
            backs.join(", ")
        },
    );
    // Selection as the policy compiler does it: by the pod's namespace and labels.
    let namespaces = c.objects.iter().filter_map(|o| match o {
        Object::Namespace(n) => Some(n.clone()),
        _ => None,
    });
    let policies: Vec<twill_k8s::NetworkPolicy> = c
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let fqdn: Vec<twill_k8s::FqdnPolicy> = c
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::FqdnPolicy(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let view = ClusterView::new(namespaces, Vec::new(), policies).with_fqdn_policies(fqdn);
    let me = PodView {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        node: record.map(|r| r.node.clone()).unwrap_or_default(),
        ip: record.map_or(Ipv4Addr::UNSPECIFIED, |r| r.ip),
        labels,
        named_ports: object.map(|o| o.named_ports.clone()).unwrap_or_default(),
    };
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    for (_, p) in view.selecting(&me) {
        let text = format!("{}/{} ({})", p.namespace, p.name, p.enforcement);
        if p.ingress_isolation {
            ingress.push(text.clone());
        }
        if p.egress_isolation {
            egress.push(text);
        }
    }
    let fqdn: Vec<String> = view
        .fqdn_selecting(&me)
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let list = |v: &[String], none: &str| {
        if v.is_empty() {
            none.to_owned()
        } else {
            v.join(", ")
        }
    };
    l.line("NetworkPolicies:");
    l.field("  Ingress", list(&ingress, "<none> (open)"));
    l.field("  Egress", list(&egress, "<none> (open)"));
    l.line("FQDNPolicies:");
    l.field(
        "  Egress",
        list(&fqdn, "<none> (outside names not restricted)"),
    );
    l.out
}

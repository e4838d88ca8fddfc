//! `netctl get`: what the cluster's etcd says about nodes, pods, services and policies
//! (NetworkPolicies and FQDNPolicies).

use std::collections::BTreeMap;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use etcd_client::GetOptions;
use ipnetwork::Ipv4Network;
use serde::Serialize;
use twill_api::cluster::{self, NodeRecord, PodRecord, SubnetRecord};

use crate::store::{StoreArgs, with_etcd};

#[derive(Subcommand)]
pub enum GetCommand {
    /// Nodes: live ones from their records, dead ones whose subnet is still held.
    Nodes(GetArgs),
    /// Pods with their addresses and nodes.
    Pods {
        #[command(flatten)]
        args: GetArgs,
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Services with their ClusterIPs and ports.
    Services {
        #[command(flatten)]
        args: GetArgs,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Each Service's backends: selected pods (named ports resolved) or its EndpointSlices.
    Endpoints {
        #[command(flatten)]
        args: GetArgs,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// NetworkPolicies: whom they select now, which directions they isolate, their mode.
    #[command(name = "networkpolicies", visible_alias = "netpol")]
    NetworkPolicies {
        #[command(flatten)]
        args: GetArgs,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// FQDNPolicies: whom they select and which outside names they let them resolve.
    #[command(name = "fqdnpolicies", visible_alias = "fqdnpol")]
    FqdnPolicies {
        #[command(flatten)]
        args: GetArgs,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

/// Stored objects of one kind.
fn objects(entries: &[(String, Vec<u8>)]) -> Vec<twill_k8s::Object> {
    entries
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice(v).ok())
        .collect()
}

/// The stored objects `pick` takes, in `namespace` (all when `None`), by namespace and
/// name.
fn namespaced<T>(
    entries: &[(String, Vec<u8>)],
    namespace: Option<&String>,
    pick: fn(twill_k8s::Object) -> Option<T>,
    key: fn(&T) -> (&str, &str),
) -> Vec<T> {
    let mut out: Vec<T> = objects(entries)
        .into_iter()
        .filter_map(pick)
        .filter(|o| namespace.is_none_or(|n| key(o).0 == n))
        .collect();
    out.sort_by(|a, b| key(a).cmp(&key(b)));
    out
}

fn services_of(
    entries: &[(String, Vec<u8>)],
    namespace: Option<&String>,
) -> Vec<twill_k8s::Service> {
    namespaced(
        entries,
        namespace,
        |o| match o {
            twill_k8s::Object::Service(s) => Some(s),
            _ => None,
        },
        |s| (&s.namespace, &s.name),
    )
}

fn policies_of(
    entries: &[(String, Vec<u8>)],
    namespace: Option<&String>,
) -> Vec<twill_k8s::NetworkPolicy> {
    namespaced(
        entries,
        namespace,
        |o| match o {
            twill_k8s::Object::NetworkPolicy(p) => Some(p),
            _ => None,
        },
        |p| (&p.namespace, &p.name),
    )
}

fn fqdn_policies_of(
    entries: &[(String, Vec<u8>)],
    namespace: Option<&String>,
) -> Vec<twill_k8s::FqdnPolicy> {
    namespaced(
        entries,
        namespace,
        |o| match o {
            twill_k8s::Object::FqdnPolicy(p) => Some(p),
            _ => None,
        },
        |p| (&p.namespace, &p.name),
    )
}

/// The `matchName` / `matchPattern` values of every rule, each once, in order: up to
/// three, then how many more; `<none>` for a policy that allows no name.
fn fqdn_names(p: &twill_k8s::FqdnPolicy) -> String {
    const SHOWN: usize = 3;
    let mut names: Vec<&str> = Vec::new();
    for s in p.egress.iter().flat_map(|r| &r.to_fqdns) {
        if !names.contains(&s.as_str()) {
            names.push(s.as_str());
        }
    }
    match names.len() {
        0 => "<none>".into(),
        n if n <= SHOWN => names.join(","),
        n => format!("{} +{}", names[..SHOWN].join(","), n - SHOWN),
    }
}

/// The ports of every rule, each once: `any` when a rule allows every port.
fn fqdn_ports(p: &twill_k8s::FqdnPolicy) -> String {
    if p.egress.is_empty() {
        return "<none>".into();
    }
    if p.egress.iter().any(twill_k8s::FqdnRule::any_port) {
        return "any".into();
    }
    let mut ports: Vec<String> = Vec::new();
    for port in p.egress.iter().flat_map(|r| &r.ports) {
        let text = port.to_string();
        if !ports.contains(&text) {
            ports.push(text);
        }
    }
    ports.join(",")
}

/// The stored pods a policy with `selector` in `namespace` selects now: up to three
/// names, then how many more.
fn selected(
    namespace: &str,
    selector: &twill_k8s::LabelSelector,
    pods: &[twill_k8s::Pod],
) -> String {
    const SHOWN: usize = 3;
    let mut names: Vec<&str> = pods
        .iter()
        .filter(|pod| pod.namespace == namespace && selector.matches(&pod.labels))
        .map(|pod| pod.name.as_str())
        .collect();
    names.sort_unstable();
    match names.len() {
        0 => "<none>".into(),
        n if n <= SHOWN => names.join(","),
        n => format!("{} +{}", names[..SHOWN].join(","), n - SHOWN),
    }
}

/// Per-policy counters summed over the nodes whose daemons answered.
struct PolicyCounts {
    /// By `namespace/name`: connections its rules allowed (as the deciding rule).
    allowed: BTreeMap<String, u64>,
    /// Connection attempts denied (enforce) or that would have been (audit) at pods it
    /// isolates: each isolating policy counts the attempt.
    denied: BTreeMap<String, u64>,
    /// Whether any node answered.
    any: bool,
}

impl PolicyCounts {
    fn allowed(&self, p: &twill_k8s::NetworkPolicy) -> String {
        if !self.any {
            return "-".into();
        }
        let key = format!("{}/{}", p.namespace, p.name);
        self.allowed.get(&key).copied().unwrap_or(0).to_string()
    }

    fn denied(&self, p: &twill_k8s::NetworkPolicy) -> String {
        if !self.any {
            return "-".into();
        }
        let key = format!("{}/{}", p.namespace, p.name);
        let n = self.denied.get(&key).copied().unwrap_or(0);
        match p.enforcement {
            twill_k8s::Enforcement::Audit => format!("{n} (would)"),
            twill_k8s::Enforcement::Enforce => n.to_string(),
        }
    }
}

/// Counters from every node's daemon this machine reaches; the others are named on stderr.
fn policy_counts(store: &StoreArgs, nodes: &[String]) -> PolicyCounts {
    let access = crate::nodes::Nodes::of(store);
    let mut counts = PolicyCounts {
        allowed: BTreeMap::new(),
        denied: BTreeMap::new(),
        any: false,
    };
    let mut missing = Vec::new();
    for node in nodes {
        let report = match access.policy_report(node) {
            Ok(r) => r,
            Err(e) => {
                missing.push(e);
                continue;
            }
        };
        counts.any = true;
        for r in &report.rules {
            *counts.allowed.entry(r.policy.clone()).or_default() += r.allowed;
        }
        for p in &report.pods {
            for d in 0..2 {
                for policy in &p.isolated_by[d] {
                    *counts.denied.entry(policy.clone()).or_default() += p.denied[d];
                }
            }
        }
    }
    // With no node answering, `-` in the table says it; with some, name the others.
    if counts.any && !missing.is_empty() {
        eprintln!("counters leave out: {}", missing.join("; "));
    }
    counts
}

/// `Ingress,Egress`: the directions a policy isolates.
fn policy_types(p: &twill_k8s::NetworkPolicy) -> String {
    let mut types = Vec::new();
    if p.ingress_isolation {
        types.push("Ingress");
    }
    if p.egress_isolation {
        types.push("Egress");
    }
    types.join(",")
}

/// The stored pods a policy selects now (its namespace, its pod selector): up to three
/// names, then how many more.
fn selected_pods(p: &twill_k8s::NetworkPolicy, pods: &[twill_k8s::Pod]) -> String {
    selected(&p.namespace, &p.pod_selector, pods)
}

#[derive(Serialize)]
struct EndpointsRow {
    namespace: String,
    name: String,
    ports: Vec<PortBackends>,
}

#[derive(Serialize)]
struct PortBackends {
    port: String,
    backends: Vec<twill_k8s::endpoints::Backend>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Args)]
pub struct GetArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    store: StoreArgs,
}

/// Reads every key under each prefix.
/// Keys and values under one prefix.
type Entries = Vec<(String, Vec<u8>)>;

fn fetch(args: &GetArgs, prefixes: &[&str]) -> anyhow::Result<Vec<Entries>> {
    let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    with_etcd(&args.store, |mut c| async move {
        let mut out = Vec::new();
        for p in prefixes {
            let resp = c
                .get(p.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .with_context(|| format!("reading {p}"))?;
            out.push(pairs(&resp));
        }
        Ok(out)
    })
}

pub fn run(cmd: GetCommand) -> anyhow::Result<()> {
    match cmd {
        GetCommand::Services { args, namespace } => {
            let got = fetch(&args, &[&cluster::objects_prefix("services")])?
                .pop()
                .unwrap_or_default();
            let rows = services_of(&got, namespace.as_ref());
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)"];
                if wide {
                    header.extend(["TARGETS", "SELECTOR", "AFFINITY"]);
                }
                let lines = rows
                    .iter()
                    .map(|s| {
                        let ip = match s.cluster_ip {
                            twill_k8s::ClusterIp::Fixed(ip) => ip.to_string(),
                            twill_k8s::ClusterIp::Headless => "None".into(),
                            twill_k8s::ClusterIp::Auto => "<pending>".into(),
                        };
                        let mut l = vec![
                            s.namespace.clone(),
                            s.name.clone(),
                            format!("{:?}", s.service_type),
                            ip,
                            crate::apply::service_ports(s),
                        ];
                        if wide {
                            l.push(
                                s.ports
                                    .iter()
                                    .map(|p| p.target.to_string())
                                    .collect::<Vec<_>>()
                                    .join(","),
                            );
                            l.push(s.selector.as_ref().map_or("<none>".into(), |sel| {
                                sel.iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            }));
                            l.push(
                                s.affinity_timeout
                                    .map_or("None".into(), |t| format!("ClientIP({t}s)")),
                            );
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
        GetCommand::Endpoints { args, namespace } => {
            let mut got = fetch(
                &args,
                &[
                    &cluster::objects_prefix("services"),
                    &cluster::objects_prefix("pods"),
                    &cluster::objects_prefix("endpointslices"),
                    cluster::PODS,
                ],
            )?;
            let records = got.pop().unwrap_or_default();
            let slices_raw = got.pop().unwrap_or_default();
            let pods_raw = got.pop().unwrap_or_default();
            let services = services_of(&got.pop().unwrap_or_default(), namespace.as_ref());
            let placements: BTreeMap<(String, String), twill_k8s::endpoints::PodPlacement> =
                records
                    .iter()
                    .filter_map(|(_, v)| serde_json::from_slice::<PodRecord>(v).ok())
                    .map(|r| {
                        (
                            (r.namespace, r.name),
                            twill_k8s::endpoints::PodPlacement {
                                ip: r.ip,
                                node: r.node,
                            },
                        )
                    })
                    .collect();
            let pod_objects: Vec<twill_k8s::Pod> = objects(&pods_raw)
                .into_iter()
                .filter_map(|o| match o {
                    twill_k8s::Object::Pod(p) => Some(p),
                    _ => None,
                })
                .collect();
            let pods: Vec<(&twill_k8s::Pod, twill_k8s::endpoints::PodPlacement)> = pod_objects
                .iter()
                .filter_map(|p| {
                    Some((
                        p,
                        placements
                            .get(&(p.namespace.clone(), p.name.clone()))?
                            .clone(),
                    ))
                })
                .collect();
            let slice_objects: Vec<twill_k8s::EndpointSlice> = objects(&slices_raw)
                .into_iter()
                .filter_map(|o| match o {
                    twill_k8s::Object::EndpointSlice(s) => Some(s),
                    _ => None,
                })
                .collect();
            let slices: Vec<&twill_k8s::EndpointSlice> = slice_objects.iter().collect();
            let rows: Vec<EndpointsRow> = services
                .iter()
                .map(|s| EndpointsRow {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    ports: s
                        .ports
                        .iter()
                        .zip(twill_k8s::endpoints::backends(s, &pods, &slices))
                        .map(|(p, backends)| PortBackends {
                            port: if p.name.is_empty() {
                                format!("{}/{}", p.port, p.protocol)
                            } else {
                                format!("{} ({}/{})", p.name, p.port, p.protocol)
                            },
                            backends,
                        })
                        .collect(),
                })
                .collect();
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAMESPACE", "NAME", "ENDPOINTS"];
                if wide {
                    header.push("NODES");
                }
                let lines = rows
                    .iter()
                    .map(|r| {
                        let all: Vec<&twill_k8s::endpoints::Backend> =
                            r.ports.iter().flat_map(|p| &p.backends).collect();
                        let mut l = vec![
                            r.namespace.clone(),
                            r.name.clone(),
                            if all.is_empty() {
                                "<none>".into()
                            } else {
                                all.iter()
                                    .map(|b| {
                                        format!(
                                            "{}:{}{}",
                                            b.ip,
                                            b.port,
                                            if b.ready { "" } else { " (not ready)" }
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join(",")
                            },
                        ];
                        if wide {
                            l.push(
                                all.iter()
                                    .map(|b| b.node.clone().unwrap_or_else(|| "-".into()))
                                    .collect::<Vec<_>>()
                                    .join(","),
                            );
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
        GetCommand::NetworkPolicies { args, namespace } => {
            let mut got = fetch(
                &args,
                &[
                    &cluster::objects_prefix("networkpolicies"),
                    &cluster::objects_prefix("pods"),
                    cluster::NODES,
                ],
            )?;
            let node_names: Vec<String> = got
                .pop()
                .unwrap_or_default()
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice::<NodeRecord>(v).ok())
                .map(|n| n.name)
                .collect();
            let counts = policy_counts(&args.store, &node_names);
            let pods: Vec<twill_k8s::Pod> = objects(&got.pop().unwrap_or_default())
                .into_iter()
                .filter_map(|o| match o {
                    twill_k8s::Object::Pod(p) => Some(p),
                    _ => None,
                })
                .collect();
            let rows = policies_of(&got.pop().unwrap_or_default(), namespace.as_ref());
            print(args.output, &rows, |wide| {
                let mut header = vec![
                    "NAMESPACE",
                    "NAME",
                    "POD-SELECTOR",
                    "TYPES",
                    "MODE",
                    "ALLOWED",
                    "DENIED",
                    "PODS",
                ];
                if wide {
                    header.extend(["INGRESS-RULES", "EGRESS-RULES"]);
                }
                let lines = rows
                    .iter()
                    .map(|p| {
                        let mut l = vec![
                            p.namespace.clone(),
                            p.name.clone(),
                            p.pod_selector.to_string(),
                            policy_types(p),
                            p.enforcement.to_string(),
                            counts.allowed(p),
                            counts.denied(p),
                            selected_pods(p, &pods),
                        ];
                        if wide {
                            l.extend([p.ingress.len().to_string(), p.egress.len().to_string()]);
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
        GetCommand::FqdnPolicies { args, namespace } => {
            let mut got = fetch(
                &args,
                &[
                    &cluster::objects_prefix("fqdnpolicies"),
                    &cluster::objects_prefix("pods"),
                ],
            )?;
            let pods: Vec<twill_k8s::Pod> = objects(&got.pop().unwrap_or_default())
                .into_iter()
                .filter_map(|o| match o {
                    twill_k8s::Object::Pod(p) => Some(p),
                    _ => None,
                })
                .collect();
            let rows = fqdn_policies_of(&got.pop().unwrap_or_default(), namespace.as_ref());
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAMESPACE", "NAME", "POD-SELECTOR", "NAMES"];
                if wide {
                    header.extend(["RULES", "PORTS", "PODS"]);
                }
                let lines = rows
                    .iter()
                    .map(|p| {
                        let mut l = vec![
                            p.namespace.clone(),
                            p.name.clone(),
                            p.pod_selector.to_string(),
                            fqdn_names(p),
                        ];
                        if wide {
                            l.extend([
                                p.egress.len().to_string(),
                                fqdn_ports(p),
                                selected(&p.namespace, &p.pod_selector, &pods),
                            ]);
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
        GetCommand::Nodes(args) => {
            let mut got = fetch(&args, &[cluster::NODES, cluster::SUBNETS])?;
            let subnets = got.pop().unwrap_or_default();
            let nodes = got.pop().unwrap_or_default();
            let rows = node_rows(&nodes, &subnets);
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAME", "STATUS", "UNDERLAY IP", "POD SUBNET"];
                if wide {
                    header.push("VTEP MAC");
                }
                let lines = rows
                    .iter()
                    .map(|r| {
                        let mut l = vec![
                            r.name.clone(),
                            r.status.clone(),
                            r.underlay_ip.clone().unwrap_or_else(|| "-".into()),
                            r.subnet.to_string(),
                        ];
                        if wide {
                            l.push(r.vtep_mac.clone().unwrap_or_else(|| "-".into()));
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
        GetCommand::Pods { args, namespace } => {
            let pods = fetch(&args, &[cluster::PODS])?.pop().unwrap_or_default();
            let mut rows: Vec<PodRecord> = pods
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .filter(|p: &PodRecord| namespace.as_ref().is_none_or(|n| &p.namespace == n))
                .collect();
            rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAMESPACE", "NAME", "IP", "NODE"];
                if wide {
                    header.extend(["CONTAINER", "INTERFACE"]);
                }
                let lines = rows
                    .iter()
                    .map(|p| {
                        let mut l = vec![
                            p.namespace.clone(),
                            p.name.clone(),
                            p.ip.to_string(),
                            p.node.clone(),
                        ];
                        if wide {
                            l.extend([p.container_id.clone(), p.ifname.clone()]);
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
    }
}

#[derive(Debug, Serialize)]
struct NodeRow {
    name: String,
    status: String,
    underlay_ip: Option<String>,
    subnet: Ipv4Network,
    vtep_mac: Option<String>,
}

/// Live nodes from their records; nodes whose record expired but whose subnet is still
/// held (the quarantine) as not ready.
fn node_rows(nodes: &[(String, Vec<u8>)], subnets: &[(String, Vec<u8>)]) -> Vec<NodeRow> {
    let mut rows: BTreeMap<String, NodeRow> = BTreeMap::new();
    for (_, v) in nodes {
        if let Ok(r) = serde_json::from_slice::<NodeRecord>(v) {
            rows.insert(
                r.name.clone(),
                NodeRow {
                    name: r.name,
                    status: "Ready".into(),
                    underlay_ip: Some(r.underlay_ip.to_string()),
                    subnet: r.subnet,
                    vtep_mac: r.vtep_mac,
                },
            );
        }
    }
    for (k, v) in subnets {
        if let (Some(subnet), Ok(r)) = (
            cluster::subnet_from_key(k),
            serde_json::from_slice::<SubnetRecord>(v),
        ) && !rows.contains_key(&r.node)
        {
            rows.insert(
                r.node.clone(),
                NodeRow {
                    name: r.node,
                    status: "NotReady (lease expired; subnet held for its quarantine)".into(),
                    underlay_ip: None,
                    subnet,
                    vtep_mac: None,
                },
            );
        }
    }
    rows.into_values().collect()
}

fn pairs(resp: &etcd_client::GetResponse) -> Vec<(String, Vec<u8>)> {
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

fn print<T: Serialize>(
    format: Format,
    rows: &T,
    table: impl FnOnce(bool) -> (Vec<&'static str>, Vec<Vec<String>>),
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(rows)?),
        Format::Table | Format::Wide => {
            let (header, lines) = table(format == Format::Wide);
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for l in &lines {
                for (w, cell) in widths.iter_mut().zip(l) {
                    *w = (*w).max(cell.len());
                }
            }
            let row = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("   ")
                    .trim_end()
                    .to_owned()
            };
            println!("{}", row(header.iter().map(|h| h.to_string()).collect()));
            for l in lines {
                println!("{}", row(l));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str, app: &str) -> twill_k8s::Pod {
        twill_k8s::Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            named_ports: Vec::new(),
            hostname: None,
            subdomain: None,
        }
    }

    #[test]
    fn a_policy_row_names_up_to_three_selected_pods_of_its_namespace() {
        let policy = |yaml: &str| {
            let (parsed, errors) = twill_k8s::parse("p.yaml", yaml);
            assert_eq!(errors, []);
            match &parsed[0].object {
                twill_k8s::Object::NetworkPolicy(p) => p.clone(),
                other => panic!("{other:?}"),
            }
        };
        let web = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, egress: [{}]}\n",
        );
        let mut pods = vec![
            pod("shop", "web-1", "web"),
            pod("shop", "web-0", "web"),
            pod("shop", "db-0", "db"),
            pod("other", "web-9", "web"),
        ];
        assert_eq!(selected_pods(&web, &pods), "web-0,web-1");
        assert_eq!(policy_types(&web), "Ingress,Egress");
        pods.extend([pod("shop", "web-2", "web"), pod("shop", "web-3", "web")]);
        pods.push(pod("shop", "web-4", "web"));
        assert_eq!(selected_pods(&web, &pods), "web-0,web-1,web-2 +2");
        let none = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: empty}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
        );
        assert_eq!(selected_pods(&none, &pods), "<none>");
        assert_eq!(policy_types(&none), "Egress");
    }

    #[test]
    fn an_fqdn_policy_row_names_its_names_once_and_its_ports() {
        let policy = |spec: &str| {
            let yaml = format!(
                "apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {{name: f, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n{spec}"
            );
            let (parsed, errors) = twill_k8s::parse("f.yaml", &yaml);
            assert_eq!(errors, []);
            match &parsed[0].object {
                twill_k8s::Object::FqdnPolicy(p) => p.clone(),
                other => panic!("{other:?}"),
            }
        };
        let two = policy(
            "  egress:\n  - toFQDNs: [{matchName: A.example.}, {matchPattern: \"*.example.org\"}]\n    ports: [{port: 443}, {port: 8000, endPort: 8080}]\n  - toFQDNs: [{matchName: a.example}]\n    ports: [{port: 443}, {port: 53, protocol: UDP}]\n",
        );
        assert_eq!(fqdn_names(&two), "a.example,*.example.org");
        assert_eq!(fqdn_ports(&two), "443/TCP,8000-8080/TCP,53/UDP");
        let many = policy(
            "  egress:\n  - toFQDNs: [{matchName: a.example}, {matchName: b.example}]\n  - toFQDNs: [{matchName: c.example}, {matchName: d.example}, {matchName: e.example}]\n    ports: [{port: 443}]\n",
        );
        assert_eq!(fqdn_names(&many), "a.example,b.example,c.example +2");
        assert_eq!(fqdn_ports(&many), "any");
        let none = policy("  egress: []\n");
        assert_eq!(fqdn_names(&none), "<none>");
        assert_eq!(fqdn_ports(&none), "<none>");
        let pods = [pod("shop", "web-0", "web"), pod("other", "web-1", "web")];
        assert_eq!(
            selected(&none.namespace, &none.pod_selector, &pods),
            "web-0"
        );
    }

    #[test]
    fn a_node_whose_record_expired_shows_as_not_ready_while_its_subnet_is_held() {
        let nodes = vec![(
            "/twill/v1/nodes/a".to_owned(),
            br#"{"name":"a","subnet":"10.244.0.0/24","underlay_ip":"172.30.0.11"}"#.to_vec(),
        )];
        let subnets = vec![
            (
                "/twill/v1/subnets/10.244.0.0-24".to_owned(),
                br#"{"node":"a"}"#.to_vec(),
            ),
            (
                "/twill/v1/subnets/10.244.1.0-24".to_owned(),
                br#"{"node":"b"}"#.to_vec(),
            ),
        ];
        let rows = node_rows(&nodes, &subnets);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, "Ready");
        assert_eq!(rows[1].name, "b");
        assert!(rows[1].status.starts_with("NotReady"));
        assert_eq!(rows[1].subnet.to_string(), "10.244.1.0/24");
    }
}

//! `netctl get`: what the cluster's etcd says, shown as kubectl shows it: a table (`-o
//! wide` for more columns), Kubernetes-shaped objects (`-o yaml|json`, which `netctl apply
//! -f` takes back unchanged), or `kind/name` lines (`-o name`); `-n`, `-A` and `-l` as
//! kubectl has them.
//!
//! Kinds: the stored objects (namespaces, pods, services, endpointslices, networkpolicies,
//! fqdnpolicies, bgppeers), and two read-only views: nodes (from the node records and subnet
//! leases) and endpoints (each Service's backends, as the load balancer uses them).

use std::{collections::BTreeMap, ffi::OsStr};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum, builder::PossibleValue};
use etcd_client::GetOptions;
use ipnetwork::Ipv4Network;
use serde_json::{Value, json};
use twill_api::cluster::{self, PodRecord, SubnetRecord};
use twill_k8s::{
    LabelSelector, Object,
    endpoints::{Backend, PodPlacement},
    manifest,
};

use crate::store::{StoreArgs, with_etcd};

/// What `netctl get` (and `describe`) can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nodes,
    Namespaces,
    Pods,
    Services,
    Endpoints,
    EndpointSlices,
    NetworkPolicies,
    FqdnPolicies,
    BgpPeers,
}

/// How a kind is named on the command line and in `-o name`, as kubectl names it.
pub struct KindNames {
    pub kind: Kind,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short: Option<&'static str>,
    /// The API group (`-o name` prints `singular.group/name` for non-core kinds).
    pub group: Option<&'static str>,
    pub namespaced: bool,
}

pub const KINDS: [KindNames; 9] = [
    KindNames {
        kind: Kind::Nodes,
        plural: "nodes",
        singular: "node",
        short: Some("no"),
        group: None,
        namespaced: false,
    },
    KindNames {
        kind: Kind::Namespaces,
        plural: "namespaces",
        singular: "namespace",
        short: Some("ns"),
        group: None,
        namespaced: false,
    },
    KindNames {
        kind: Kind::Pods,
        plural: "pods",
        singular: "pod",
        short: Some("po"),
        group: None,
        namespaced: true,
    },
    KindNames {
        kind: Kind::Services,
        plural: "services",
        singular: "service",
        short: Some("svc"),
        group: None,
        namespaced: true,
    },
    KindNames {
        kind: Kind::Endpoints,
        plural: "endpoints",
        singular: "endpoints",
        short: Some("ep"),
        group: None,
        namespaced: true,
    },
    KindNames {
        kind: Kind::EndpointSlices,
        plural: "endpointslices",
        singular: "endpointslice",
        short: None,
        group: Some("discovery.k8s.io"),
        namespaced: true,
    },
    KindNames {
        kind: Kind::NetworkPolicies,
        plural: "networkpolicies",
        singular: "networkpolicy",
        short: Some("netpol"),
        group: Some("networking.k8s.io"),
        namespaced: true,
    },
    KindNames {
        kind: Kind::FqdnPolicies,
        plural: "fqdnpolicies",
        singular: "fqdnpolicy",
        short: Some("fqdnpol"),
        group: Some("policy.twill.io"),
        namespaced: true,
    },
    KindNames {
        kind: Kind::BgpPeers,
        plural: "bgppeers",
        singular: "bgppeer",
        short: None,
        group: Some("bgp.twill.io"),
        namespaced: false,
    },
];

impl Kind {
    pub fn names(self) -> &'static KindNames {
        KINDS
            .iter()
            .find(|k| k.kind == self)
            .expect("every kind is in KINDS")
    }

    /// `service`, `networkpolicy.networking.k8s.io`: what `-o name` puts before the name.
    fn name_prefix(self) -> String {
        let n = self.names();
        match n.group {
            Some(g) => format!("{}.{g}", n.singular),
            None => n.singular.to_owned(),
        }
    }
}

/// `svc`, `Services`, `networkpolicy.networking.k8s.io`: a kind as kubectl accepts it
/// (plural, singular or short name, any case, optionally with its API group).
pub fn kind_of(word: &str) -> anyhow::Result<Kind> {
    let word = word.to_ascii_lowercase();
    KINDS
        .iter()
        .find(|k| {
            let bare = match k.group {
                Some(g) => word.strip_suffix(&format!(".{g}")).unwrap_or(&word),
                None => &word,
            };
            bare == k.plural || bare == k.singular || Some(bare) == k.short
        })
        .map(|k| k.kind)
        .with_context(|| {
            format!(
                "unknown kind {word:?}: the kinds are {} (singular names work too)",
                known_kinds()
            )
        })
}

/// `nodes (no), namespaces (ns), ...`.
pub fn known_kinds() -> String {
    KINDS
        .iter()
        .map(|k| match k.short {
            Some(s) => format!("{} ({s})", k.plural),
            None => k.plural.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Accepts any word (checked by [`kind_of`], which lists the kinds when it fails), and
/// offers these kinds to shell completion and `--help`.
#[derive(Clone)]
pub struct KindValues(pub &'static [Kind]);

impl KindValues {
    pub const ALL: KindValues = KindValues(&[
        Kind::Nodes,
        Kind::Namespaces,
        Kind::Pods,
        Kind::Services,
        Kind::Endpoints,
        Kind::EndpointSlices,
        Kind::NetworkPolicies,
        Kind::FqdnPolicies,
        Kind::BgpPeers,
    ]);
}

impl clap::builder::TypedValueParser for KindValues {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.0.iter().map(|k| {
            let k = k.names();
            let mut aliases = vec![k.singular];
            aliases.extend(k.short);
            PossibleValue::new(k.plural).aliases(aliases)
        })))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
    /// `kind/name`, one a line.
    Name,
}

#[derive(Args)]
pub struct GetArgs {
    /// What to show: a kind, or KIND/NAME. Singular and short names work too (`svc`,
    /// `po`, `netpol`), as in kubectl.
    #[arg(value_name = "KIND", value_parser = KindValues::ALL)]
    kind: String,
    /// Only these objects (of the namespace).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    /// The namespace of namespaced kinds (default `default`, as kubectl without a
    /// context namespace); ignored for nodes and namespaces.
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only objects whose labels match: `key=value`, `key!=value`, `key`, `!key`,
    /// `key in (a,b)`, `key notin (a,b)`; `,` joins requirements that must all hold.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    selector: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// What the store holds that `get` and `describe` show.
#[derive(Default)]
pub struct Cluster {
    pub objects: Vec<Object>,
    pub records: Vec<PodRecord>,
    /// Node records as their twilld wrote them: the record, and the daemon's version
    /// (records of older daemons have none), flow address and labels.
    pub nodes: Vec<cluster::VersionedNodeRecord>,
    /// Subnet key and holder.
    pub subnets: Vec<(String, SubnetRecord)>,
}

impl Cluster {
    /// Reads what `kind` needs.
    pub fn read(store: &StoreArgs, kind: Kind) -> anyhow::Result<Cluster> {
        let objects = |r: &str| cluster::objects_prefix(r);
        let prefixes: Vec<String> = match kind {
            Kind::Nodes => vec![cluster::NODES.into(), cluster::SUBNETS.into()],
            Kind::Namespaces => vec![objects("namespaces")],
            Kind::Pods => vec![objects("pods"), cluster::PODS.into()],
            Kind::Services | Kind::Endpoints => vec![
                objects("services"),
                objects("pods"),
                objects("endpointslices"),
                cluster::PODS.into(),
                cluster::NODES.into(),
            ],
            Kind::EndpointSlices => vec![objects("endpointslices")],
            // Counters come from every node's daemon.
            Kind::NetworkPolicies => vec![
                objects("networkpolicies"),
                objects("pods"),
                cluster::NODES.into(),
            ],
            Kind::FqdnPolicies => vec![objects("fqdnpolicies"), objects("pods")],
            Kind::BgpPeers => vec![objects("bgppeers")],
        };
        Cluster::read_prefixes(store, prefixes)
    }

    /// Reads every key under each prefix, at one revision.
    pub fn read_prefixes(store: &StoreArgs, prefixes: Vec<String>) -> anyhow::Result<Cluster> {
        let got: Vec<(String, Vec<u8>)> = with_etcd(store, |mut c| async move {
            let mut out = Vec::new();
            let mut revision = 0;
            for p in prefixes {
                let mut options = GetOptions::new().with_prefix();
                if revision > 0 {
                    options = options.with_revision(revision);
                }
                let resp = c
                    .get(p.as_str(), Some(options))
                    .await
                    .with_context(|| format!("reading {p}"))?;
                if revision == 0 {
                    revision = resp.header().map_or(0, |h| h.revision());
                }
                out.extend(resp.kvs().iter().map(|kv| {
                    (
                        kv.key_str().unwrap_or_default().to_owned(),
                        kv.value().to_vec(),
                    )
                }));
            }
            Ok(out)
        })?;
        let mut c = Cluster::default();
        for (key, value) in got {
            if key.starts_with(cluster::OBJECTS) {
                c.objects
                    .extend(serde_json::from_slice::<Object>(&value).ok());
            } else if key.starts_with(cluster::PODS) {
                c.records
                    .extend(serde_json::from_slice::<PodRecord>(&value).ok());
            } else if key.starts_with(cluster::NODES) {
                c.nodes
                    .extend(serde_json::from_slice::<cluster::VersionedNodeRecord>(&value).ok());
            } else if key.starts_with(cluster::SUBNETS) {
                c.subnets.extend(
                    serde_json::from_slice::<SubnetRecord>(&value)
                        .ok()
                        .map(|r| (key.clone(), r)),
                );
            }
        }
        Ok(c)
    }

    pub fn pods(&self) -> impl Iterator<Item = &twill_k8s::Pod> {
        self.objects.iter().filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = &twill_k8s::Service> {
        self.objects.iter().filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
    }

    pub fn slices(&self) -> Vec<&twill_k8s::EndpointSlice> {
        self.objects
            .iter()
            .filter_map(|o| match o {
                Object::EndpointSlice(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    pub fn record(&self, namespace: &str, name: &str) -> Option<&PodRecord> {
        self.records
            .iter()
            .find(|r| r.namespace == namespace && r.name == name)
    }

    /// The pods that have both an object (labels, ports) and a record (address, node):
    /// what the endpoints controller would see.
    pub fn placed_pods(&self) -> Vec<(&twill_k8s::Pod, PodPlacement)> {
        self.pods()
            .filter_map(|p| {
                let r = self.record(&p.namespace, &p.name)?;
                Some((
                    p,
                    PodPlacement {
                        ip: r.ip,
                        node: r.node.clone(),
                    },
                ))
            })
            .collect()
    }

    /// The backends of each of `service`'s ports.
    pub fn backends(&self, service: &twill_k8s::Service) -> Vec<Vec<Backend>> {
        twill_k8s::endpoints::backends(service, &self.placed_pods(), &self.slices())
    }

    /// `namespace/name` of the pod with address `ip`.
    pub fn pod_at(&self, ip: std::net::Ipv4Addr) -> Option<&PodRecord> {
        self.records.iter().find(|r| r.ip == ip)
    }
}

/// One object as `get` shows it.
struct Item {
    namespace: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
    /// Kubernetes-shaped, for `-o yaml|json`.
    wire: Value,
    /// Table cells after NAMESPACE and NAME.
    cells: Vec<String>,
    /// `-o wide`'s extra cells.
    wide: Vec<String>,
}

struct Table {
    header: &'static [&'static str],
    wide: &'static [&'static str],
}

pub fn run(args: GetArgs) -> anyhow::Result<()> {
    let (word, mut names) = match args.kind.split_once('/') {
        Some((kind, name)) => (kind, vec![name.to_owned()]),
        None => (args.kind.as_str(), Vec::new()),
    };
    let kind = kind_of(word)?;
    if !names.is_empty() && !args.names.is_empty() {
        bail!("give names either as KIND/NAME or after KIND, not both");
    }
    names.extend(args.names.iter().cloned());
    let kn = kind.names();
    // As kubectl: namespaced kinds are listed in one namespace unless -A.
    let scope: Option<String> = match (kn.namespaced, args.all_namespaces) {
        (false, _) => None,
        (true, true) => {
            if !names.is_empty() {
                bail!("a name cannot be looked up across all namespaces (-A): give -n NAMESPACE");
            }
            None
        }
        (true, false) => Some(args.namespace.clone().unwrap_or_else(|| "default".into())),
    };
    let selector: Option<LabelSelector> = args
        .selector
        .as_deref()
        .map(|s| s.parse().map_err(|e| anyhow::anyhow!("-l {s:?}: {e}")))
        .transpose()?;
    let table_wanted = matches!(args.output, Format::Table | Format::Wide);
    let c = Cluster::read(&args.store, kind)?;
    let (table, mut items) = match kind {
        Kind::Nodes => nodes(&c),
        Kind::Namespaces => namespaces(&c),
        Kind::Pods => pods(&c),
        Kind::Services => services(&c),
        Kind::Endpoints => endpoints(&c),
        Kind::EndpointSlices => endpoint_slices(&c),
        Kind::NetworkPolicies => network_policies(&c, &args.store, table_wanted),
        Kind::FqdnPolicies => fqdn_policies(&c),
        Kind::BgpPeers => bgp_peers(&c),
    };
    items.retain(|i| {
        scope
            .as_ref()
            .is_none_or(|ns| i.namespace.as_ref() == Some(ns))
            && (names.is_empty() || names.contains(&i.name))
            && selector.as_ref().is_none_or(|s| s.matches(&i.labels))
    });
    items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !items.iter().any(|i| &i.name == *n))
        .map(|n| format!("{} {n:?} not found", kn.plural))
        .collect();
    match args.output {
        Format::Name => {
            for i in &items {
                println!("{}/{}", kind.name_prefix(), i.name);
            }
        }
        Format::Json | Format::Yaml => {
            let single = names.len() == 1 && items.len() == 1;
            let mut wires: Vec<Value> = items.into_iter().map(|i| i.wire).collect();
            let out = if single {
                wires.pop().expect("one item")
            } else if !missing.is_empty() && wires.is_empty() {
                Value::Null
            } else {
                manifest::list(wires)
            };
            if !out.is_null() {
                if args.output == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    print!("{}", serde_yaml_ng::to_string(&out)?);
                }
            }
        }
        Format::Table | Format::Wide => {
            if items.is_empty() && names.is_empty() {
                match &scope {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else if !items.is_empty() {
                print_table(&table, items, kn.namespaced, args.output == Format::Wide);
            }
        }
    }
    if !missing.is_empty() {
        let place = scope.map_or(String::new(), |ns| format!(" in namespace {ns}"));
        bail!("{}{place}", missing.join(", "));
    }
    Ok(())
}

/// Columns padded to the widest cell, three spaces apart. Namespaced kinds keep their
/// NAMESPACE column with or without -A (kubectl shows it only with -A), so scripts that
/// read columns by position see one layout.
fn print_table(table: &Table, items: Vec<Item>, namespaced: bool, wide: bool) {
    let mut header: Vec<&str> = Vec::new();
    if namespaced {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    header.extend(table.header);
    if wide {
        header.extend(table.wide);
    }
    let lines: Vec<Vec<String>> = items
        .into_iter()
        .map(|i| {
            let mut l = Vec::new();
            if namespaced {
                l.push(i.namespace.unwrap_or_default());
            }
            l.push(i.name);
            l.extend(i.cells);
            if wide {
                l.extend(i.wide);
            }
            l
        })
        .collect();
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

fn item(o: &Object, wire: Value, cells: Vec<String>, wide: Vec<String>) -> Item {
    let labels = match o {
        Object::Namespace(n) => n.labels.clone(),
        Object::Pod(p) => p.labels.clone(),
        Object::Service(s) => s.labels.clone(),
        Object::EndpointSlice(s) => {
            BTreeMap::from([(twill_k8s::SERVICE_NAME_LABEL.to_owned(), s.service.clone())])
        }
        Object::NetworkPolicy(p) => p.labels.clone(),
        Object::FqdnPolicy(p) => p.labels.clone(),
        Object::BgpPeer(b) => b.labels.clone(),
    };
    Item {
        namespace: o.namespace().map(str::to_owned),
        name: o.name().to_owned(),
        labels,
        wire,
        cells,
        wide,
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn namespaces(c: &Cluster) -> (Table, Vec<Item>) {
    let items = c
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some(item(
                o,
                manifest::to_wire(o),
                vec!["Active".into()],
                vec![labels_text(&n.labels)],
            )),
            _ => None,
        })
        .collect();
    (
        Table {
            header: &["STATUS"],
            wide: &["LABELS"],
        },
        items,
    )
}

/// Pods with an object, with their address when a node reported one; pods a node
/// reported without an object (wired by CNI, never applied) with only that.
fn pods(c: &Cluster) -> (Table, Vec<Item>) {
    let mut items: Vec<Item> = c
        .pods()
        .map(|p| {
            let r = c.record(&p.namespace, &p.name);
            let placed = r.map(|r| PodPlacement {
                ip: r.ip,
                node: r.node.clone(),
            });
            item(
                &Object::Pod(p.clone()),
                manifest::pod_to_wire(p, placed.as_ref()),
                pod_cells(r),
                pod_wide(r),
            )
        })
        .collect();
    for r in &c.records {
        if !c
            .pods()
            .any(|p| p.namespace == r.namespace && p.name == r.name)
        {
            let bare = twill_k8s::Pod {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                labels: BTreeMap::new(),
                named_ports: Vec::new(),
                hostname: None,
                subdomain: None,
            };
            let placed = PodPlacement {
                ip: r.ip,
                node: r.node.clone(),
            };
            items.push(item(
                &Object::Pod(bare.clone()),
                manifest::pod_to_wire(&bare, Some(&placed)),
                pod_cells(Some(r)),
                pod_wide(Some(r)),
            ));
        }
    }
    (
        Table {
            header: &["IP", "NODE"],
            wide: &["CONTAINER", "INTERFACE"],
        },
        items,
    )
}

fn pod_cells(r: Option<&PodRecord>) -> Vec<String> {
    match r {
        Some(r) => vec![r.ip.to_string(), r.node.clone()],
        None => vec!["<none>".into(), "<none>".into()],
    }
}

fn pod_wide(r: Option<&PodRecord>) -> Vec<String> {
    match r {
        Some(r) => vec![r.container_id.clone(), r.ifname.clone()],
        None => vec!["<none>".into(), "<none>".into()],
    }
}

/// `10.96.0.1`, `None` (headless), `<pending>` (not allocated).
pub fn cluster_ip_text(s: &twill_k8s::Service) -> String {
    match (s.service_type, s.cluster_ip) {
        (twill_k8s::ServiceType::ExternalName, _) => "<none>".into(),
        (_, twill_k8s::ClusterIp::Fixed(ip)) => ip.to_string(),
        (_, twill_k8s::ClusterIp::Headless) => "None".into(),
        (_, twill_k8s::ClusterIp::Auto) => "<pending>".into(),
    }
}

fn services(c: &Cluster) -> (Table, Vec<Item>) {
    let items = c
        .services()
        .map(|s| {
            let cells = vec![
                format!("{:?}", s.service_type),
                cluster_ip_text(s),
                match &s.external_name {
                    Some(n) => n.clone(),
                    None => crate::apply::service_ports(s),
                },
            ];
            let wide = vec![
                s.ports
                    .iter()
                    .map(|p| p.target.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                s.selector.as_ref().map_or("<none>".into(), labels_text),
                s.affinity_timeout
                    .map_or("None".into(), |t| format!("ClientIP({t}s)")),
            ];
            let o = Object::Service(s.clone());
            item(&o, manifest::to_wire(&o), cells, wide)
        })
        .collect();
    (
        Table {
            header: &["TYPE", "CLUSTER-IP", "PORT(S)"],
            wide: &["TARGETS", "SELECTOR", "AFFINITY"],
        },
        items,
    )
}

/// Each Service's backends, as a v1 `Endpoints` object: one subset per Service port and
/// backend port (a named `targetPort` can resolve to different ports on different pods).
fn endpoints(c: &Cluster) -> (Table, Vec<Item>) {
    let items = c
        .services()
        .map(|s| {
            let backends = c.backends(s);
            let mut subsets = Vec::new();
            for (port, found) in s.ports.iter().zip(&backends) {
                let mut by_port: BTreeMap<u16, Vec<&Backend>> = BTreeMap::new();
                for b in found {
                    by_port.entry(b.port).or_default().push(b);
                }
                for (number, list) in by_port {
                    let address = |b: &&Backend| {
                        let mut a = json!({"ip": b.ip.to_string()});
                        if let Some(n) = &b.node {
                            a["nodeName"] = json!(n);
                        }
                        if let Some(h) = &b.hostname {
                            a["hostname"] = json!(h);
                        }
                        a
                    };
                    let mut subset = json!({
                        "ports": [{"port": number, "protocol": port.protocol.to_string()}],
                    });
                    if !port.name.is_empty() {
                        subset["ports"][0]["name"] = json!(port.name);
                    }
                    let ready: Vec<Value> = list.iter().filter(|b| b.ready).map(address).collect();
                    let not_ready: Vec<Value> =
                        list.iter().filter(|b| !b.ready).map(address).collect();
                    if !ready.is_empty() {
                        subset["addresses"] = json!(ready);
                    }
                    if !not_ready.is_empty() {
                        subset["notReadyAddresses"] = json!(not_ready);
                    }
                    subsets.push(subset);
                }
            }
            let mut metadata = json!({"name": s.name, "namespace": s.namespace});
            if !s.labels.is_empty() {
                metadata["labels"] = json!(s.labels);
            }
            let mut wire = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata});
            if !subsets.is_empty() {
                wire["subsets"] = json!(subsets);
            }
            let all: Vec<&Backend> = backends.iter().flatten().collect();
            let cells = vec![if all.is_empty() {
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
            }];
            let wide = vec![
                all.iter()
                    .map(|b| b.node.clone().unwrap_or_else(|| "-".into()))
                    .collect::<Vec<_>>()
                    .join(","),
            ];
            Item {
                namespace: Some(s.namespace.clone()),
                name: s.name.clone(),
                labels: s.labels.clone(),
                wire,
                cells,
                wide,
            }
        })
        .collect();
    (
        Table {
            header: &["ENDPOINTS"],
            wide: &["NODES"],
        },
        items,
    )
}

fn endpoint_slices(c: &Cluster) -> (Table, Vec<Item>) {
    let items = c
        .slices()
        .into_iter()
        .map(|s| {
            let ports = if s.ports.is_empty() {
                "<unset>".to_owned()
            } else {
                s.ports
                    .iter()
                    .map(|p| p.port.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let addresses: Vec<String> = s
                .endpoints
                .iter()
                .flat_map(|e| &e.addresses)
                .map(ToString::to_string)
                .collect();
            let cells = vec![
                s.service.clone(),
                "IPv4".into(),
                ports,
                if addresses.is_empty() {
                    "<unset>".into()
                } else {
                    addresses.join(",")
                },
            ];
            let wide = vec![
                s.endpoints
                    .iter()
                    .map(|e| e.node.clone().unwrap_or_else(|| "-".into()))
                    .collect::<Vec<_>>()
                    .join(","),
            ];
            let o = Object::EndpointSlice(s.clone());
            item(&o, manifest::to_wire(&o), cells, wide)
        })
        .collect();
    (
        Table {
            header: &["SERVICE", "ADDRESSTYPE", "PORTS", "ENDPOINTS"],
            wide: &["NODES"],
        },
        items,
    )
}

fn network_policies(c: &Cluster, store: &StoreArgs, table: bool) -> (Table, Vec<Item>) {
    let pods: Vec<twill_k8s::Pod> = c.pods().cloned().collect();
    // Only a table shows the counters; the daemons are not asked otherwise.
    let counts = if table {
        let names: Vec<String> = c.nodes.iter().map(|n| n.record.name.clone()).collect();
        policy_counts(store, &names)
    } else {
        PolicyCounts::default()
    };
    let items = c
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(item(
                o,
                manifest::to_wire(o),
                vec![
                    p.pod_selector.to_string(),
                    policy_types(p),
                    p.enforcement.to_string(),
                    counts.allowed(p),
                    counts.denied(p),
                    selected_pods(p, &pods),
                ],
                vec![p.ingress.len().to_string(), p.egress.len().to_string()],
            )),
            _ => None,
        })
        .collect();
    (
        Table {
            header: &["POD-SELECTOR", "TYPES", "MODE", "ALLOWED", "DENIED", "PODS"],
            wide: &["INGRESS-RULES", "EGRESS-RULES"],
        },
        items,
    )
}

fn fqdn_policies(c: &Cluster) -> (Table, Vec<Item>) {
    let pods: Vec<twill_k8s::Pod> = c.pods().cloned().collect();
    let items = c
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::FqdnPolicy(p) => Some(item(
                o,
                manifest::to_wire(o),
                vec![p.pod_selector.to_string(), fqdn_names(p)],
                vec![
                    p.egress.len().to_string(),
                    fqdn_ports(p),
                    selected(&p.namespace, &p.pod_selector, &pods),
                ],
            )),
            _ => None,
        })
        .collect();
    (
        Table {
            header: &["POD-SELECTOR", "NAMES"],
            wide: &["RULES", "PORTS", "PODS"],
        },
        items,
    )
}

fn bgp_peers(c: &Cluster) -> (Table, Vec<Item>) {
    let items = c
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::BgpPeer(b) => {
                let seconds = |s: Option<u16>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
                Some(item(
                    o,
                    manifest::to_wire(o),
                    vec![
                        b.peer_ip.to_string(),
                        b.as_number.to_string(),
                        b.node_selector.to_string(),
                    ],
                    vec![
                        seconds(b.hold_seconds),
                        seconds(b.keepalive_seconds),
                        b.passive.to_string(),
                        b.password_file.clone().unwrap_or_else(|| "-".into()),
                    ],
                ))
            }
            _ => None,
        })
        .collect();
    (
        Table {
            header: &["PEER-IP", "AS", "NODE-SELECTOR"],
            wide: &["HOLD", "KEEPALIVE", "PASSIVE", "PASSWORD-FILE"],
        },
        items,
    )
}

fn nodes(c: &Cluster) -> (Table, Vec<Item>) {
    let items = node_rows(&c.nodes, &c.subnets)
        .into_iter()
        .map(|r| {
            let labels = cluster::node_labels(&r.name, &r.labels);
            let ready = r.underlay_ip.is_some();
            let mut status = json!({
                "conditions": [{
                    "type": "Ready",
                    "status": if ready { "True" } else { "False" },
                    "reason": if ready { "TwilldLeaseHeld" } else { "LeaseExpired" },
                    "message": r.status,
                }],
            });
            if let Some(ip) = &r.underlay_ip {
                status["addresses"] = json!([{"type": "InternalIP", "address": ip}]);
            }
            let mut metadata = json!({"name": r.name, "labels": labels});
            let mut annotations = serde_json::Map::new();
            if let Some(mac) = &r.vtep_mac {
                annotations.insert("twill.io/vtep-mac".into(), json!(mac));
            }
            if let Some(version) = &r.version {
                annotations.insert("twill.io/twilld-version".into(), json!(version));
            }
            if let Some(flows) = &r.flows_listen {
                annotations.insert("twill.io/flows-listen".into(), json!(flows));
            }
            if !annotations.is_empty() {
                metadata["annotations"] = serde_json::Value::Object(annotations);
            }
            let subnet = r.subnet.to_string();
            let wire = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": metadata,
                "spec": {"podCIDR": subnet, "podCIDRs": [subnet]},
                "status": status,
            });
            Item {
                namespace: None,
                name: r.name.clone(),
                labels,
                wire,
                cells: vec![
                    r.status.clone(),
                    r.underlay_ip.clone().unwrap_or_else(|| "-".into()),
                    subnet,
                ],
                wide: vec![
                    r.vtep_mac.clone().unwrap_or_else(|| "-".into()),
                    r.version.clone().unwrap_or_else(|| "-".into()),
                    r.flows_listen.clone().unwrap_or_else(|| "-".into()),
                ],
            }
        })
        .collect();
    (
        Table {
            header: &["STATUS", "UNDERLAY IP", "POD SUBNET"],
            wide: &["VTEP MAC", "VERSION", "FLOWS"],
        },
        items,
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
#[derive(Default)]
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
    let mut counts = PolicyCounts::default();
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
pub fn policy_types(p: &twill_k8s::NetworkPolicy) -> String {
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

#[derive(Debug)]
struct NodeRow {
    name: String,
    status: String,
    underlay_ip: Option<String>,
    subnet: Ipv4Network,
    vtep_mac: Option<String>,
    /// The twilld version its record names.
    version: Option<String>,
    /// Its flow API over TCP (`flows.listen`).
    flows_listen: Option<String>,
    /// Its configured labels (`node_labels`), without `kubernetes.io/hostname`.
    labels: BTreeMap<String, String>,
}

/// Live nodes from their records; nodes whose record expired but whose subnet is still
/// held (the quarantine) as not ready.
fn node_rows(
    nodes: &[cluster::VersionedNodeRecord],
    subnets: &[(String, SubnetRecord)],
) -> Vec<NodeRow> {
    let mut rows: BTreeMap<String, NodeRow> = BTreeMap::new();
    for n in nodes {
        let r = &n.record;
        rows.insert(
            r.name.clone(),
            NodeRow {
                name: r.name.clone(),
                status: "Ready".into(),
                underlay_ip: Some(r.underlay_ip.to_string()),
                subnet: r.subnet,
                vtep_mac: r.vtep_mac.clone(),
                version: n.version.clone(),
                flows_listen: n.flows_listen.map(|a| a.to_string()),
                labels: n.labels.clone(),
            },
        );
    }
    for (k, r) in subnets {
        if let Some(subnet) = cluster::subnet_from_key(k)
            && !rows.contains_key(&r.node)
        {
            rows.insert(
                r.node.clone(),
                NodeRow {
                    name: r.node.clone(),
                    status: "NotReady (lease expired; subnet held for its quarantine)".into(),
                    underlay_ip: None,
                    subnet,
                    vtep_mac: None,
                    version: None,
                    flows_listen: None,
                    labels: BTreeMap::new(),
                },
            );
        }
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use twill_api::cluster::NodeRecord;

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
    fn kinds_are_named_as_kubectl_names_them() {
        for (word, kind) in [
            ("svc", Kind::Services),
            ("Services", Kind::Services),
            ("service", Kind::Services),
            ("po", Kind::Pods),
            ("ns", Kind::Namespaces),
            ("no", Kind::Nodes),
            ("ep", Kind::Endpoints),
            ("endpointslice.discovery.k8s.io", Kind::EndpointSlices),
            ("netpol", Kind::NetworkPolicies),
            ("networkpolicies.networking.k8s.io", Kind::NetworkPolicies),
            ("fqdnpol", Kind::FqdnPolicies),
            ("fqdnpolicy.policy.twill.io", Kind::FqdnPolicies),
            ("bgppeers", Kind::BgpPeers),
            ("BGPPeer", Kind::BgpPeers),
            ("bgppeer.bgp.twill.io", Kind::BgpPeers),
        ] {
            assert_eq!(kind_of(word).unwrap(), kind, "{word}");
        }
        let e = kind_of("foo").unwrap_err().to_string();
        assert!(
            e.contains("\"foo\"") && e.contains("services (svc)") && e.contains("endpointslices"),
            "{e}"
        );
        assert!(kind_of("svc.networking.k8s.io").is_err());
        assert_eq!(Kind::Services.name_prefix(), "service");
        assert_eq!(
            Kind::NetworkPolicies.name_prefix(),
            "networkpolicy.networking.k8s.io"
        );
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
        let nodes = vec![NodeRecord {
            name: "a".into(),
            subnet: "10.244.0.0/24".parse().unwrap(),
            underlay_ip: "172.30.0.11".parse().unwrap(),
            vtep_mac: None,
        }]
        .into_iter()
        .map(|record| cluster::VersionedNodeRecord {
            record,
            version: None,
            flows_listen: None,
            labels: BTreeMap::new(),
        })
        .collect::<Vec<_>>();
        let subnets = vec![
            (
                "/twill/v1/subnets/10.244.0.0-24".to_owned(),
                SubnetRecord { node: "a".into() },
            ),
            (
                "/twill/v1/subnets/10.244.1.0-24".to_owned(),
                SubnetRecord { node: "b".into() },
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

//! `netctl export` and `netctl import`: the cluster's network state (everything twill keeps
//! in etcd under [`cluster::ROOT`]) to a file and back, without a claim held twice.
//!
//! The file is YAML, several documents (format in `docs/operations.md`):
//! 1. a header (`kind: TwillExport`): format version, the etcd revision it was read at,
//!    the cluster and service CIDRs, the time, and the SHA-256 of everything after it;
//! 2. the state (`kind: TwillState`): subnet leases, node records, pod records, Service IP
//!    and NodePort claims, and any other key under the root, as data;
//! 3. the objects, one document each, as `netctl get -o yaml` prints them.
//!
//! Import writes in units that stand or fall together (an object with its claims; a
//! node's subnet lease with its node record; a pod record), so a conflict leaves out
//! exactly the part that conflicts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Args;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use twill_api::cluster::{self, NodeRecord, PodRecord, SubnetRecord};
use twill_k8s::{ClusterIp, Object, Service};

use crate::store::{StoreArgs, with_etcd};

/// The format this netctl writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_KIND: &str = "TwillExport";
const STATE_KIND: &str = "TwillState";
/// TTL for an imported lease whose TTL the export could not read (the lease expired
/// between the read and the TTL query).
const FALLBACK_TTL: i64 = 60;
/// etcd's default `--max-txn-ops`: no import transaction has more operations.
const MAX_TXN_OPS: usize = 128;

#[derive(Args)]
pub struct ExportArgs {
    /// Where to write the file (default: stdout).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The pod network the nodes' twilld run with (`network.cluster_cidr`; etcd does not
    /// keep it). Every subnet lease must lie in it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Network,
    /// Where ClusterIPs are allocated from (`netctl apply --service-cidr`; etcd does not
    /// keep it). Every ClusterIP must lie in it.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Ipv4Network,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A file written by `netctl export`.
    file: PathBuf,
    /// Check the file and print what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Merge into a store that already holds objects or claims; conflicting parts are
    /// reported and left out.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    kind: String,
    format_version: u32,
    /// The etcd revision everything was read at.
    revision: i64,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Ipv4Network,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Ipv4Network,
    /// RFC 3339, UTC.
    exported_at: String,
    /// SHA-256 (hex) of every byte after the header's `---` line.
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct State {
    kind: String,
    subnets: Vec<SubnetEntry>,
    nodes: Vec<NodeEntry>,
    pods: Vec<PodEntry>,
    #[serde(rename = "serviceIPs")]
    service_ips: Vec<ServiceIpEntry>,
    node_ports: Vec<NodePortEntry>,
    /// Keys under the root that are none of the above, kept as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    other: Vec<OtherEntry>,
}

/// An etcd lease a key was bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaseRef {
    /// The lease ID, hex as etcdctl prints it.
    #[serde(with = "hex_id")]
    id: i64,
    /// Its granted TTL.
    ttl_seconds: i64,
}

mod hex_id {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        i64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubnetEntry {
    subnet: Ipv4Network,
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseRef>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeEntry {
    name: String,
    subnet: Ipv4Network,
    #[serde(rename = "underlayIP")]
    underlay_ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vtep_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseRef>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodEntry {
    namespace: String,
    name: String,
    node: String,
    ip: Ipv4Addr,
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceIpEntry {
    ip: Ipv4Addr,
    /// `namespace/name`.
    service: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodePortEntry {
    port: u16,
    protocol: String,
    service: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtherEntry {
    key: String,
    value: String,
}

// ---------------------------------------------------------------------------------------
// Export.

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (cluster_cidr, service_cidr) = (args.cluster_cidr, args.service_cidr);
    let (revision, state, objects) = with_etcd(&args.store, |mut c| async move {
        read_state(&mut c, cluster_cidr, service_cidr).await
    })?;
    let text = render(
        revision,
        cluster_cidr,
        service_cidr,
        rfc3339(SystemTime::now()),
        &state,
        &objects,
    );
    let summary = format!(
        "exported {} object(s), {} subnet lease(s), {} node record(s), {} pod record(s), \
         {} Service IP and {} NodePort claim(s) at etcd revision {revision}",
        objects.len(),
        state.subnets.len(),
        state.nodes.len(),
        state.pods.len(),
        state.service_ips.len(),
        state.node_ports.len(),
    );
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            // Written whole or not at all: a partly written export is worse than none.
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            eprintln!("{summary} to {}", path.display());
        }
    }
    if args.output.is_none() {
        eprintln!("{summary}");
    }
    Ok(())
}

/// The file: header, state, objects.
fn render(
    revision: i64,
    cluster_cidr: Ipv4Network,
    service_cidr: Ipv4Network,
    exported_at: String,
    state: &State,
    objects: &[Object],
) -> String {
    let mut body = serde_yaml_ng::to_string(state).expect("plain data");
    for o in objects {
        body.push_str("---\n");
        body.push_str(&twill_k8s::manifest::to_yaml(o));
    }
    let header = Header {
        kind: HEADER_KIND.to_owned(),
        format_version: FORMAT_VERSION,
        revision,
        cluster_cidr,
        service_cidr,
        exported_at,
        sha256: sha256_hex(body.as_bytes()),
    };
    format!(
        "# twill cluster state, written by netctl export; read back with netctl import.\n\
         # The CIDRs are what export was told (etcd does not keep them).\n{}---\n{body}",
        serde_yaml_ng::to_string(&header).expect("plain data")
    )
}

/// Everything under the root, read with one range request (so at one revision); lease
/// TTLs are asked for afterwards.
async fn read_state(
    c: &mut Client,
    cluster_cidr: Ipv4Network,
    service_cidr: Ipv4Network,
) -> anyhow::Result<(i64, State, Vec<Object>)> {
    let resp = c
        .get(cluster::ROOT, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the store")?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut state = State {
        kind: STATE_KIND.to_owned(),
        ..State::default()
    };
    let mut objects = Vec::new();
    let mut ttls: BTreeMap<i64, i64> = BTreeMap::new();
    for kv in resp.kvs() {
        let key = kv.key_str().context("a key that is not UTF-8")?.to_owned();
        let value = kv.value();
        let unreadable = |e: &dyn std::fmt::Display| anyhow::anyhow!("{key}: unreadable: {e}");
        if kv.lease() != 0 {
            ttls.insert(kv.lease(), FALLBACK_TTL);
        }
        let lease = (kv.lease() != 0).then_some(LeaseRef {
            id: kv.lease(),
            ttl_seconds: FALLBACK_TTL,
        });
        if let Some(subnet) = cluster::subnet_from_key(&key) {
            let r: SubnetRecord = serde_json::from_slice(value).map_err(|e| unreadable(&e))?;
            if !cidr_contains(cluster_cidr, subnet) {
                bail!(
                    "{key}: subnet {subnet} is outside the cluster CIDR {cluster_cidr} \
                     (pass the nodes' --cluster-cidr)"
                );
            }
            state.subnets.push(SubnetEntry {
                subnet,
                node: r.node,
                lease,
            });
        } else if key.starts_with(cluster::NODES) {
            let r: NodeRecord = serde_json::from_slice(value).map_err(|e| unreadable(&e))?;
            state.nodes.push(NodeEntry {
                name: r.name,
                subnet: r.subnet,
                underlay_ip: r.underlay_ip,
                vtep_mac: r.vtep_mac,
                lease,
            });
        } else if key.starts_with(cluster::PODS) {
            let r: PodRecord = serde_json::from_slice(value).map_err(|e| unreadable(&e))?;
            state.pods.push(PodEntry {
                namespace: r.namespace,
                name: r.name,
                node: r.node,
                ip: r.ip,
                container_id: r.container_id,
                ifname: r.ifname,
            });
        } else if let Some(ip) = key.strip_prefix(cluster::SERVICE_IPS) {
            let ip: Ipv4Addr = ip.parse().map_err(|e| unreadable(&e))?;
            if !service_cidr.contains(ip) {
                bail!(
                    "{key}: ClusterIP {ip} is outside the service CIDR {service_cidr} \
                     (pass --service-cidr)"
                );
            }
            state.service_ips.push(ServiceIpEntry {
                ip,
                service: kv.value_str().map_err(|e| unreadable(&e))?.to_owned(),
            });
        } else if let Some(rest) = key.strip_prefix(cluster::NODE_PORTS) {
            let (port, protocol) = rest
                .rsplit_once('-')
                .ok_or_else(|| unreadable(&"not <port>-<protocol>"))?;
            state.node_ports.push(NodePortEntry {
                port: port.parse().map_err(|e| unreadable(&e))?,
                protocol: protocol.to_owned(),
                service: kv.value_str().map_err(|e| unreadable(&e))?.to_owned(),
            });
        } else if key.starts_with(cluster::OBJECTS) {
            let o: Object = serde_json::from_slice(value).map_err(|e| unreadable(&e))?;
            // The file must give back exactly what is stored.
            let (back, errors) = twill_k8s::parse(&key, &twill_k8s::manifest::to_yaml(&o));
            if !errors.is_empty() || back.len() != 1 || back[0].object != o {
                bail!("{key}: {} does not survive YAML and back", o.describe());
            }
            objects.push(o);
        } else {
            state.other.push(OtherEntry {
                key: key.clone(),
                value: kv
                    .value_str()
                    .map_err(|_| unreadable(&"the value is not UTF-8"))?
                    .to_owned(),
            });
        }
    }
    for (id, ttl) in &mut ttls {
        // A lease that expired since the read keeps the fallback TTL.
        if let Ok(r) = c.lease_time_to_live(*id, None).await
            && r.granted_ttl() > 0
            && r.ttl() > 0
        {
            *ttl = r.granted_ttl();
        }
    }
    let fill = |lease: &mut Option<LeaseRef>| {
        if let Some(l) = lease {
            l.ttl_seconds = ttls[&l.id];
        }
    };
    state.subnets.iter_mut().for_each(|s| fill(&mut s.lease));
    state.nodes.iter_mut().for_each(|n| fill(&mut n.lease));
    Ok((revision, state, objects))
}

fn cidr_contains(outer: Ipv4Network, inner: Ipv4Network) -> bool {
    inner.prefix() >= outer.prefix() && outer.contains(inner.network())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `2026-12-01T11:32:01Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// Reading a file back.

/// A checked export file.
struct Export {
    header: Header,
    state: State,
    objects: Vec<Object>,
}

/// Checks version and checksum, then parses and validates everything; every problem is
/// named.
fn read_export(path: &std::path::Path) -> anyhow::Result<Export> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let (head, body) = split_document(&text)
        .ok_or_else(|| anyhow::anyhow!("{name}: no header document (not a netctl export)"))?;
    let raw: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(head).with_context(|| format!("{name}: the header is not YAML"))?;
    if raw.get("kind").and_then(|k| k.as_str()) != Some(HEADER_KIND) {
        bail!("{name}: the first document is not kind {HEADER_KIND} (not a netctl export)");
    }
    match raw.get("formatVersion").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => bail!("{name}: format version {v}; this netctl reads version {FORMAT_VERSION}"),
        None => bail!("{name}: the header has no formatVersion"),
    }
    let header: Header =
        serde_yaml_ng::from_value(raw).with_context(|| format!("{name}: the header"))?;
    let actual = sha256_hex(body.as_bytes());
    if actual != header.sha256 {
        bail!(
            "{name}: checksum mismatch: the header says sha256 {}, the content after it hashes \
             to {actual}; the file was changed or cut short after export, nothing was imported",
            header.sha256
        );
    }
    let (state_text, objects_text) = split_document(body).unwrap_or((body, ""));
    let state: State =
        serde_yaml_ng::from_str(state_text).with_context(|| format!("{name}: the state"))?;
    if state.kind != STATE_KIND {
        bail!("{name}: the second document is not kind {STATE_KIND}");
    }
    let (parsed, errors) = twill_k8s::parse(&format!("{name} (objects)"), objects_text);
    let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let objects: Vec<Object> = parsed.into_iter().map(|p| p.object).collect();
    problems.extend(check(&header, &state, &objects));
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("netctl: {p}");
        }
        bail!(
            "{name}: {} problem(s); nothing was imported",
            problems.len()
        );
    }
    Ok(Export {
        header,
        state,
        objects,
    })
}

/// The text before the first `---` line and the text after it.
fn split_document(text: &str) -> Option<(&str, &str)> {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&text[..at], &text[at + line.len()..]));
        }
        at += line.len();
    }
    None
}

/// What `apply` would refuse, and claims that disagree with the objects or each other.
fn check(header: &Header, state: &State, objects: &[Object]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut subnet_of: BTreeMap<&str, Ipv4Network> = BTreeMap::new();
    let mut subnets = BTreeSet::new();
    for s in &state.subnets {
        if !cidr_contains(header.cluster_cidr, s.subnet) {
            problems.push(format!(
                "subnet {} is outside the cluster CIDR {}",
                s.subnet, header.cluster_cidr
            ));
        }
        if !subnets.insert(s.subnet) {
            problems.push(format!("subnet {} is leased twice", s.subnet));
        }
        if let Some(other) = subnet_of.insert(&s.node, s.subnet) {
            problems.push(format!(
                "node {} holds two subnets, {other} and {}",
                s.node, s.subnet
            ));
        }
    }
    for n in &state.nodes {
        if subnet_of.get(n.name.as_str()) != Some(&n.subnet) {
            problems.push(format!(
                "node record {} names subnet {}, which no subnet lease gives it",
                n.name, n.subnet
            ));
        }
    }
    let mut pod_ips = BTreeMap::new();
    for p in &state.pods {
        if let Some(other) = pod_ips.insert(p.ip, format!("{}/{}", p.namespace, p.name)) {
            problems.push(format!(
                "pod address {} is held by pod {other} and by pod {}/{}",
                p.ip, p.namespace, p.name
            ));
        }
        if let Some(s) = subnet_of.get(p.node.as_str())
            && !s.contains(p.ip)
        {
            problems.push(format!(
                "pod {}/{} has address {} outside its node {}'s subnet {s}",
                p.namespace, p.name, p.ip, p.node
            ));
        }
    }
    // The claims the Services hold must be exactly the claims recorded.
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for o in objects {
        if let Object::Service(s) = o {
            let owner = format!("{}/{}", s.namespace, s.name);
            match s.cluster_ip {
                ClusterIp::Auto => problems.push(format!(
                    "Service {owner} has no clusterIP (an export holds allocated Services)"
                )),
                ClusterIp::Fixed(ip)
                    if !header.service_cidr.contains(ip)
                        || ip == header.service_cidr.network()
                        || ip == header.service_cidr.broadcast() =>
                {
                    problems.push(format!(
                        "Service {owner}: {ip} is not a usable address of the service CIDR {}",
                        header.service_cidr
                    ));
                }
                _ => {}
            }
            for k in claims(s) {
                if let Some(other) = wanted.insert(k.clone(), owner.clone()) {
                    problems.push(format!("{k} is held by Service {other} and by {owner}"));
                }
            }
        }
    }
    let recorded: BTreeMap<String, String> = state
        .service_ips
        .iter()
        .map(|c| (cluster::service_ip_key(c.ip), c.service.clone()))
        .chain(state.node_ports.iter().map(|c| {
            (
                cluster::node_port_key(c.port, &c.protocol),
                c.service.clone(),
            )
        }))
        .collect();
    for (k, owner) in &wanted {
        if recorded.get(k) != Some(owner) {
            problems.push(format!(
                "Service {owner} holds {k} but the claims do not say so"
            ));
        }
    }
    for (k, owner) in &recorded {
        if wanted.get(k) != Some(owner) {
            problems.push(format!(
                "{k} is claimed for {owner}, which does not hold it"
            ));
        }
    }
    problems
}

/// The Service IP and NodePort keys a Service holds.
fn claims(s: &Service) -> Vec<String> {
    let mut keys = Vec::new();
    if let ClusterIp::Fixed(ip) = s.cluster_ip {
        keys.push(cluster::service_ip_key(ip));
    }
    for p in &s.ports {
        if let Some(n) = p.node_port {
            keys.push(cluster::node_port_key(n, &p.protocol.to_string()));
        }
    }
    keys
}

// ---------------------------------------------------------------------------------------
// Import.

/// Keys written together or not at all.
struct Unit {
    /// `service/default/web (clusterIP 10.96.0.10)`.
    what: String,
    /// Key, value, lease (as in the file).
    keys: Vec<(String, String, Option<LeaseRef>)>,
    /// A pod record's address and key: another pod key holding the address in the store
    /// is a conflict.
    pod_ip: Option<(Ipv4Addr, String)>,
}

enum Verdict {
    /// Every key is there with this value.
    Unchanged,
    /// Some or all keys are absent and will be written; the rest agree.
    Write(Vec<usize>),
    Conflict(String),
}

fn units(export: &Export) -> Vec<Unit> {
    let mut out = Vec::new();
    for o in &export.objects {
        let key = cluster::object_key(o.resource(), o.namespace(), o.name());
        let mut keys = vec![(key, serde_json::to_string(o).expect("plain data"), None)];
        let mut what = format!("{}/{}", o.kind().to_ascii_lowercase(), full_name(o));
        if let Object::Service(s) = o {
            let owner = format!("{}/{}", s.namespace, s.name);
            keys.extend(claims(s).into_iter().map(|k| (k, owner.clone(), None)));
            if let ClusterIp::Fixed(ip) = s.cluster_ip {
                let _ = write!(what, " (clusterIP {ip})");
            }
        }
        out.push(Unit {
            what,
            keys,
            pod_ip: None,
        });
    }
    for s in &export.state.subnets {
        let mut keys = vec![(
            cluster::subnet_key(s.subnet),
            serde_json::to_string(&SubnetRecord {
                node: s.node.clone(),
            })
            .expect("plain record"),
            s.lease,
        )];
        if let Some(n) = export.state.nodes.iter().find(|n| n.name == s.node) {
            keys.push((
                cluster::node_key(&n.name),
                serde_json::to_string(&NodeRecord {
                    name: n.name.clone(),
                    subnet: n.subnet,
                    underlay_ip: n.underlay_ip,
                    vtep_mac: n.vtep_mac.clone(),
                })
                .expect("plain record"),
                n.lease,
            ));
        }
        out.push(Unit {
            what: format!("subnet {} of node {}", s.subnet, s.node),
            keys,
            pod_ip: None,
        });
    }
    for p in &export.state.pods {
        let record = PodRecord {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node: p.node.clone(),
            ip: p.ip,
            container_id: p.container_id.clone(),
            ifname: p.ifname.clone(),
        };
        out.push(Unit {
            what: format!(
                "pod record {}/{} ({} on {})",
                p.namespace, p.name, p.ip, p.node
            ),
            keys: vec![(
                cluster::pod_key(&p.namespace, &p.name),
                serde_json::to_string(&record).expect("plain record"),
                None,
            )],
            pod_ip: Some((p.ip, cluster::pod_key(&p.namespace, &p.name))),
        });
    }
    for o in &export.state.other {
        out.push(Unit {
            what: format!("key {}", o.key),
            keys: vec![(o.key.clone(), o.value.clone(), None)],
            pod_ip: None,
        });
    }
    out
}

fn full_name(o: &Object) -> String {
    match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name()),
        None => o.name().to_owned(),
    }
}

/// The store as import sees it.
struct Store {
    values: BTreeMap<String, String>,
    /// Node -> the subnet a subnet key gives it.
    subnet_of: BTreeMap<String, Ipv4Network>,
    /// Pod address -> the pod key holding it.
    pod_ips: BTreeMap<Ipv4Addr, String>,
}

async fn read_store(c: &mut Client) -> anyhow::Result<Store> {
    let resp = c
        .get(cluster::ROOT, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the store")?;
    let mut store = Store {
        values: BTreeMap::new(),
        subnet_of: BTreeMap::new(),
        pod_ips: BTreeMap::new(),
    };
    for kv in resp.kvs() {
        let key = kv.key_str()?.to_owned();
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        if let Some(subnet) = cluster::subnet_from_key(&key)
            && let Ok(r) = serde_json::from_str::<SubnetRecord>(&value)
        {
            store.subnet_of.insert(r.node, subnet);
        }
        if key.starts_with(cluster::PODS)
            && let Ok(r) = serde_json::from_str::<PodRecord>(&value)
        {
            store.pod_ips.insert(r.ip, key.clone());
        }
        store.values.insert(key, value);
    }
    Ok(store)
}

/// Keys that say the store already holds state an operator put there (as opposed to what
/// running nodes write back on their own: subnet leases, node records, pod records).
fn operator_state(store: &Store) -> Vec<&str> {
    store
        .values
        .keys()
        .filter(|k| {
            !k.starts_with(cluster::SUBNETS)
                && !k.starts_with(cluster::NODES)
                && !k.starts_with(cluster::PODS)
        })
        .map(String::as_str)
        .collect()
}

fn judge(unit: &Unit, store: &Store) -> Verdict {
    let mut absent = Vec::new();
    for (i, (key, value, _)) in unit.keys.iter().enumerate() {
        match store.values.get(key) {
            None => absent.push(i),
            Some(v) if v == value || same_node_record(key, v, value) => {}
            Some(v) => {
                return Verdict::Conflict(describe_conflict(key, v));
            }
        }
        if let Some(subnet) = cluster::subnet_from_key(key)
            && let Ok(r) = serde_json::from_str::<SubnetRecord>(value)
            && let Some(held) = store.subnet_of.get(&r.node)
            && *held != subnet
        {
            return Verdict::Conflict(format!("node {} holds subnet {held} in the store", r.node));
        }
    }
    if let Some((ip, key)) = &unit.pod_ip
        && let Some(holder) = store.pod_ips.get(ip)
        && holder != key
    {
        return Verdict::Conflict(format!(
            "address {ip} is held by {} in the store",
            holder.strip_prefix(cluster::PODS).unwrap_or(holder)
        ));
    }
    if absent.is_empty() {
        Verdict::Unchanged
    } else {
        Verdict::Write(absent)
    }
}

/// Whether `stored` and `exported` are the same node record but for what its node adds
/// as it runs (its version, its flow API address): the node's identity, subnet and
/// addresses are what a restore must not change.
fn same_node_record(key: &str, stored: &str, exported: &str) -> bool {
    key.starts_with(cluster::NODES)
        && matches!(
            (
                serde_json::from_str::<NodeRecord>(stored),
                serde_json::from_str::<NodeRecord>(exported),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

fn describe_conflict(key: &str, stored: &str) -> String {
    if let Some(ip) = key.strip_prefix(cluster::SERVICE_IPS) {
        format!("Service IP {ip} is held by Service {stored} in the store")
    } else if let Some(port) = key.strip_prefix(cluster::NODE_PORTS) {
        format!("NodePort {port} is held by Service {stored} in the store")
    } else if let Some(subnet) = cluster::subnet_from_key(key) {
        let holder =
            serde_json::from_str::<SubnetRecord>(stored).map_or(stored.to_owned(), |r| r.node);
        format!("subnet {subnet} is held by node {holder} in the store")
    } else if key.starts_with(cluster::NODES) {
        let subnet = serde_json::from_str::<NodeRecord>(stored)
            .map_or_else(|_| stored.to_owned(), |r| r.subnet.to_string());
        format!("the store's node record {key} says subnet {subnet}")
    } else {
        format!("the store holds a different {key}")
    }
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let export = read_export(&args.file)?;
    let units = units(&export);
    let name = args.file.display().to_string();
    eprintln!(
        "{name}: format {}, etcd revision {}, exported {}, cluster CIDR {}, service CIDR {}: \
         checksum and {} object(s) valid",
        export.header.format_version,
        export.header.revision,
        export.header.exported_at,
        export.header.cluster_cidr,
        export.header.service_cidr,
        export.objects.len()
    );
    let (dry_run, force) = (args.dry_run, args.force);
    let lines = with_etcd(&args.store, |mut c| async move {
        let store = read_store(&mut c).await?;
        let held = operator_state(&store);
        if !held.is_empty() && !force {
            bail!(
                "the store already holds twill state ({} object or claim key(s), such as \
                 {}); import into an empty store, or merge with --force",
                held.len(),
                held[0]
            );
        }
        let verdicts: Vec<Verdict> = units.iter().map(|u| judge(u, &store)).collect();
        let conflicts = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Conflict(_)))
            .count();
        let mut lines = Vec::new();
        for (u, v) in units.iter().zip(&verdicts) {
            lines.push(match v {
                Verdict::Unchanged => format!("{} unchanged (the store agrees)", u.what),
                Verdict::Write(keys) if keys.len() == u.keys.len() => {
                    format!("{} created", u.what)
                }
                Verdict::Write(_) => format!("{} completed (part was in the store)", u.what),
                Verdict::Conflict(why) => format!("CONFLICT {}: {why}; not written", u.what),
            });
        }
        if conflicts > 0 && !force {
            for l in &lines {
                println!("{l}");
            }
            bail!(
                "{conflicts} conflict(s) with the store; nothing was imported (--force writes the rest)"
            );
        }
        if dry_run {
            lines.push("dry run: nothing was written".to_owned());
            return Ok((lines, conflicts));
        }
        let writes: Vec<(&Unit, &Vec<usize>)> = units
            .iter()
            .zip(&verdicts)
            .filter_map(|(u, v)| match v {
                Verdict::Write(keys) => Some((u, keys)),
                _ => None,
            })
            .collect();
        let leases = grant_leases(&mut c, &writes).await?;
        let raced = write_units(&mut c, &writes, &leases).await?;
        // Someone wrote some of these keys between the read and the write (a node leasing
        // its subnet again, publishing its pods): judged again against the store now.
        let mut lost = 0;
        if !raced.is_empty() {
            let now = read_store(&mut c).await?;
            for &i in &raced {
                let u = writes[i].0;
                lines.push(match judge(u, &now) {
                    Verdict::Unchanged => {
                        format!("{} unchanged (written meanwhile; the store agrees)", u.what)
                    }
                    Verdict::Conflict(why) => {
                        lost += 1;
                        format!(
                            "CONFLICT {}: {why} (written meanwhile); not written",
                            u.what
                        )
                    }
                    Verdict::Write(_) => {
                        lost += 1;
                        format!(
                            "CONFLICT {}: the store changed during the import; not written",
                            u.what
                        )
                    }
                });
            }
        }
        lines.push(format!(
            "imported: {} unit(s) written, {} conflict(s)",
            writes.len() - raced.len(),
            conflicts + lost
        ));
        Ok((lines, conflicts + lost))
    });
    let (lines, conflicts) = lines?;
    for l in lines {
        println!("{l}");
    }
    if conflicts > 0 {
        eprintln!(
            "netctl: {conflicts} part(s) of {name} conflict with the store and were left out"
        );
    }
    Ok(())
}

/// Grants the etcd leases the written keys were bound to: with the same ID where etcd
/// allows it (a running twilld renewing that ID then finds its lease again), else a new
/// one. File ID -> granted ID.
async fn grant_leases(
    c: &mut Client,
    writes: &[(&Unit, &Vec<usize>)],
) -> anyhow::Result<BTreeMap<i64, i64>> {
    let mut wanted: BTreeMap<i64, i64> = BTreeMap::new();
    for (u, keys) in writes {
        for &i in *keys {
            if let Some(l) = u.keys[i].2 {
                wanted.insert(l.id, l.ttl_seconds.max(1));
            }
        }
    }
    let mut granted = BTreeMap::new();
    for (id, ttl) in wanted {
        let same = c
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await;
        let got = match same {
            Ok(r) => r.id(),
            // The ID exists already (a store restored from a snapshot keeps its leases):
            // bind the keys to it, as they were.
            Err(_)
                if c.lease_time_to_live(id, None)
                    .await
                    .is_ok_and(|r| r.ttl() > 0) =>
            {
                id
            }
            Err(_) => c
                .lease_grant(ttl, None)
                .await
                .with_context(|| format!("granting a lease of {ttl}s"))?
                .id(),
        };
        granted.insert(id, got);
    }
    Ok(granted)
}

/// Writes the units in transactions of at most [`MAX_TXN_OPS`] operations, each key only
/// if still absent. A batch that fails the guard is retried unit by unit; the units that
/// fail alone are returned (their positions in `writes`).
async fn write_units(
    c: &mut Client,
    writes: &[(&Unit, &Vec<usize>)],
    leases: &BTreeMap<i64, i64>,
) -> anyhow::Result<Vec<usize>> {
    let ops_of = |u: &Unit, keys: &[usize]| -> (Vec<Compare>, Vec<TxnOp>) {
        keys.iter()
            .map(|&i| {
                let (key, value, lease) = &u.keys[i];
                let options = lease.map(|l| PutOptions::new().with_lease(leases[&l.id]));
                (
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    TxnOp::put(key.as_str(), value.as_str(), options),
                )
            })
            .unzip()
    };
    let mut batches: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, (_, keys)) in writes.iter().enumerate() {
        if size + keys.len() > MAX_TXN_OPS && size > 0 {
            batches.push(Vec::new());
            size = 0;
        }
        size += keys.len();
        batches.last_mut().expect("one batch at least").push(i);
    }
    let mut raced = Vec::new();
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        let (mut guards, mut ops) = (Vec::new(), Vec::new());
        for &i in &batch {
            let (g, o) = ops_of(writes[i].0, writes[i].1);
            guards.extend(g);
            ops.extend(o);
        }
        let done = c
            .txn(Txn::new().when(guards).and_then(ops))
            .await
            .context("writing to the store")?;
        if done.succeeded() {
            continue;
        }
        for i in batch {
            let (g, o) = ops_of(writes[i].0, writes[i].1);
            let done = c
                .txn(Txn::new().when(g).and_then(o))
                .await
                .context("writing to the store")?;
            if !done.succeeded() {
                raced.push(i);
            }
        }
    }
    Ok(raced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_124_721), "2026-12-01T11:32:01Z");
    }

    #[test]
    fn the_header_ends_at_the_first_separator_line() {
        assert_eq!(
            split_document("a: 1\n---\nb: '---'\n---\nc: 3\n"),
            Some(("a: 1\n", "b: '---'\n---\nc: 3\n"))
        );
        assert_eq!(split_document("a: 1\n"), None);
    }

    const OBJECTS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
        spec:\n  type: NodePort\n  clusterIP: 10.96.0.5\n  selector: {app: web}\n  \
        ports: [{port: 80, nodePort: 30080}]\n";

    fn objects() -> Vec<Object> {
        let (parsed, errors) = twill_k8s::parse("test", OBJECTS);
        assert!(errors.is_empty(), "{errors:?}");
        parsed.into_iter().map(|p| p.object).collect()
    }

    fn state() -> State {
        serde_yaml_ng::from_str(
            "kind: TwillState\n\
             subnets:\n\
             - {subnet: 10.244.1.0/24, node: a, lease: {id: 6a6c, ttlSeconds: 40}}\n\
             nodes:\n\
             - {name: a, subnet: 10.244.1.0/24, underlayIP: 172.30.0.11, lease: {id: 6a6b, ttlSeconds: 10}}\n\
             pods:\n\
             - {namespace: default, name: web, node: a, ip: 10.244.1.2, containerID: c, ifname: eth0}\n\
             serviceIPs: [{ip: 10.96.0.5, service: default/web}]\n\
             nodePorts: [{port: 30080, protocol: TCP, service: default/web}]\n",
        )
        .unwrap()
    }

    fn header() -> Header {
        Header {
            kind: HEADER_KIND.into(),
            format_version: FORMAT_VERSION,
            revision: 9,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            exported_at: "2026-12-01T11:41:15Z".into(),
            sha256: String::new(),
        }
    }

    /// A file in the temporary directory, removed when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn rendered() -> String {
        let h = header();
        render(
            h.revision,
            h.cluster_cidr,
            h.service_cidr,
            h.exported_at,
            &state(),
            &objects(),
        )
    }

    #[test]
    fn a_file_reads_back_and_a_changed_byte_or_version_is_refused() {
        let text = rendered();
        let good = Temp::new("good.yaml", &text);
        let back = read_export(&good.0).unwrap();
        assert_eq!(back.objects, objects());
        assert_eq!(back.state.subnets[0].lease.unwrap().id, 0x6a6c);

        let bad = Temp::new("bad.yaml", &text.replacen("10.244.1.2", "10.244.1.3", 1));
        let e = read_export(&bad.0).err().unwrap().to_string();
        assert!(
            e.contains("checksum mismatch: the header says sha256"),
            "{e}"
        );

        let newer = Temp::new(
            "newer.yaml",
            &text.replacen("formatVersion: 1", "formatVersion: 2", 1),
        );
        let e = read_export(&newer.0).err().unwrap().to_string();
        assert!(
            e.ends_with("format version 2; this netctl reads version 1"),
            "{e}"
        );
    }

    #[test]
    fn claims_must_be_what_the_services_hold_and_held_once() {
        assert_eq!(check(&header(), &state(), &objects()), Vec::<String>::new());
        let mut s = state();
        s.service_ips[0].service = "default/other".into();
        s.pods.push(PodEntry {
            namespace: "default".into(),
            name: "twin".into(),
            node: "a".into(),
            ip: "10.244.1.2".parse().unwrap(),
            container_id: "d".into(),
            ifname: "eth0".into(),
        });
        s.subnets.push(SubnetEntry {
            subnet: "10.244.1.0/24".parse().unwrap(),
            node: "b".into(),
            lease: None,
        });
        assert_eq!(
            check(&header(), &s, &objects()),
            [
                "subnet 10.244.1.0/24 is leased twice",
                "pod address 10.244.1.2 is held by pod default/web and by pod default/twin",
                "Service default/web holds /twill/v1/serviceips/10.96.0.5 but the claims do not say so",
                "/twill/v1/serviceips/10.96.0.5 is claimed for default/other, which does not hold it",
            ]
        );
    }

    #[test]
    fn a_unit_is_unchanged_completed_or_in_conflict_with_the_store() {
        let export = Export {
            header: header(),
            state: state(),
            objects: objects(),
        };
        let units = units(&export);
        let service = &units[0];
        let store = |pairs: &[(&str, &str)]| Store {
            values: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            subnet_of: BTreeMap::new(),
            pod_ips: BTreeMap::new(),
        };
        let all: Vec<(&str, &str)> = service
            .keys
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
            .collect();
        assert!(matches!(judge(service, &store(&all)), Verdict::Unchanged));
        assert!(matches!(judge(service, &store(&all[..1])), Verdict::Write(k) if k == [1, 2]));
        let taken = store(&[("/twill/v1/serviceips/10.96.0.5", "default/intruder")]);
        match judge(service, &taken) {
            Verdict::Conflict(why) => assert_eq!(
                why,
                "Service IP 10.96.0.5 is held by Service default/intruder in the store"
            ),
            _ => panic!("no conflict"),
        }
        // The node holds another subnet now: its old one is not given back to it.
        let mut moved = store(&[]);
        moved
            .subnet_of
            .insert("a".into(), "10.244.9.0/24".parse().unwrap());
        match judge(&units[1], &moved) {
            Verdict::Conflict(why) => {
                assert_eq!(why, "node a holds subnet 10.244.9.0/24 in the store")
            }
            _ => panic!("no conflict"),
        }
        // Another pod record holds the address.
        let mut twin = store(&[]);
        twin.pod_ips.insert(
            "10.244.1.2".parse().unwrap(),
            "/twill/v1/pods/default/twin".into(),
        );
        match judge(&units[2], &twin) {
            Verdict::Conflict(why) => {
                assert_eq!(
                    why,
                    "address 10.244.1.2 is held by default/twin in the store"
                )
            }
            _ => panic!("no conflict"),
        }
    }

    #[test]
    fn lease_ids_are_hex_as_etcdctl_prints_them() {
        let l = LeaseRef {
            id: 0x694d_7a1b_2c3d_4e5f,
            ttl_seconds: 20,
        };
        let text = serde_yaml_ng::to_string(&l).unwrap();
        assert_eq!(text, "id: 694d7a1b2c3d4e5f\nttlSeconds: 20\n");
        assert_eq!(serde_yaml_ng::from_str::<LeaseRef>(&text).unwrap(), l);
    }
}

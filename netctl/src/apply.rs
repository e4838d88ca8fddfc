//! `netctl apply -f` and `netctl delete -f`: Kubernetes YAML (Namespace, Pod, Service,
//! EndpointSlice, NetworkPolicy, FQDNPolicy, BGPPeer) into the cluster's store.
//!
//! All or nothing: every file is parsed and validated, and every ClusterIP and NodePort
//! checked, before anything is written; then everything is written in one etcd transaction
//! guarded by the revisions it was planned from, and planned again if another writer got
//! there first.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use twill_api::cluster;
use twill_k8s::{ClusterIp, DEFAULT_NODE_PORTS, Object, ObjectError, Parsed, Service, ServiceType};

use crate::store::{StoreArgs, with_etcd};

#[derive(Args)]
pub struct ApplyArgs {
    /// A YAML file, a directory of them (*.yaml, *.yml, *.json), or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Where ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Ipv4Network,
    #[command(flatten)]
    store: StoreArgs,
}

/// An object and where it came from.
struct Input {
    source: String,
    parsed: Parsed,
}

fn read_inputs(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in files {
        if f == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            out.push(("-".to_owned(), text));
        } else if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("reading directory {}", f.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            entries.sort();
            for p in entries {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                out.push((p.display().to_string(), text));
            }
        } else {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            out.push((f.display().to_string(), text));
        }
    }
    Ok(out)
}

/// Parses and validates everything; any problem anywhere and nothing is returned.
fn parse_all(files: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let mut errors: Vec<ObjectError> = Vec::new();
    for (source, text) in read_inputs(files)? {
        let (parsed, mut e) = twill_k8s::parse(&source, &text);
        errors.append(&mut e);
        inputs.extend(parsed.into_iter().map(|parsed| Input {
            source: source.clone(),
            parsed,
        }));
    }
    let mut seen = BTreeMap::new();
    for i in &inputs {
        let o = &i.parsed.object;
        let key = cluster::object_key(o.resource(), o.namespace(), o.name());
        if let Some((src, doc)) = seen.insert(key, (i.source.clone(), i.parsed.document)) {
            errors.push(ObjectError {
                source: i.source.clone(),
                document: i.parsed.document,
                object: Some(o.describe()),
                field: String::new(),
                message: format!("also in {src} document {doc}"),
            });
        }
    }
    if !errors.is_empty() {
        report(&errors);
    }
    if inputs.is_empty() {
        bail!(
            "no objects in {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(inputs)
}

fn report(errors: &[ObjectError]) -> ! {
    for e in errors {
        eprintln!("netctl: {e}");
    }
    eprintln!("netctl: nothing was stored ({} problem(s))", errors.len());
    std::process::exit(1);
}

/// What the store holds now, for planning.
struct Current {
    /// Object key -> (value, mod revision).
    objects: BTreeMap<String, (Vec<u8>, i64)>,
    /// Allocation key -> owner (`namespace/name`).
    allocations: BTreeMap<String, String>,
}

async fn read_current(c: &mut Client) -> anyhow::Result<Current> {
    let mut objects = BTreeMap::new();
    let resp = c
        .get(cluster::OBJECTS, Some(GetOptions::new().with_prefix()))
        .await?;
    for kv in resp.kvs() {
        objects.insert(
            kv.key_str()?.to_owned(),
            (kv.value().to_vec(), kv.mod_revision()),
        );
    }
    let mut allocations = BTreeMap::new();
    for prefix in [cluster::SERVICE_IPS, cluster::NODE_PORTS] {
        let resp = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        for kv in resp.kvs() {
            allocations.insert(kv.key_str()?.to_owned(), kv.value_str()?.to_owned());
        }
    }
    Ok(Current {
        objects,
        allocations,
    })
}

fn stored_service(current: &Current, key: &str) -> Option<Service> {
    match serde_json::from_slice::<Object>(&current.objects.get(key)?.0).ok()? {
        Object::Service(s) => Some(s),
        _ => None,
    }
}

/// Allocation keys a stored Service holds.
fn held_by(s: &Service) -> Vec<String> {
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

/// Fills in the ClusterIP and NodePorts: kept from the stored Service where possible,
/// else the lowest free. Errors name the field.
fn allocate(
    input: &Input,
    mut svc: Service,
    stored: Option<&Service>,
    cidr: Ipv4Network,
    taken: &mut BTreeMap<String, String>,
) -> Result<Service, ObjectError> {
    let owner = format!("{}/{}", svc.namespace, svc.name);
    let err = |field: String, message: String| ObjectError {
        source: input.source.clone(),
        document: input.parsed.document,
        object: Some(input.parsed.object.describe()),
        field,
        message,
    };
    let free =
        |taken: &BTreeMap<String, String>, key: &str| taken.get(key).is_none_or(|o| o == &owner);
    svc.cluster_ip = match svc.cluster_ip {
        ClusterIp::Headless => ClusterIp::Headless,
        ClusterIp::Fixed(ip) => {
            if !cidr.contains(ip) || ip == cidr.network() || ip == cidr.broadcast() {
                return Err(err(
                    "spec.clusterIP".into(),
                    format!("{ip} is not a usable address of the service CIDR {cidr}"),
                ));
            }
            if let Some(o) = taken
                .get(&cluster::service_ip_key(ip))
                .filter(|o| *o != &owner)
            {
                return Err(err(
                    "spec.clusterIP".into(),
                    format!("{ip} is already used by Service {o}"),
                ));
            }
            ClusterIp::Fixed(ip)
        }
        ClusterIp::Auto => match stored.map(|s| s.cluster_ip) {
            Some(ClusterIp::Fixed(ip)) if cidr.contains(ip) => ClusterIp::Fixed(ip),
            _ => {
                let first = u32::from(cidr.network()) + 1;
                let last = u32::from(cidr.broadcast()) - 1;
                let ip = (first..=last)
                    .map(Ipv4Addr::from)
                    .find(|ip| free(taken, &cluster::service_ip_key(*ip)))
                    .ok_or_else(|| {
                        err(
                            "spec.clusterIP".into(),
                            format!("the service CIDR {cidr} is full"),
                        )
                    })?;
                ClusterIp::Fixed(ip)
            }
        },
    };
    if let ClusterIp::Fixed(ip) = svc.cluster_ip {
        taken.insert(cluster::service_ip_key(ip), owner.clone());
    }
    if svc.service_type == ServiceType::NodePort {
        for i in 0..svc.ports.len() {
            let proto = svc.ports[i].protocol.to_string();
            let n = match svc.ports[i].node_port {
                Some(n) => {
                    if let Some(o) = taken
                        .get(&cluster::node_port_key(n, &proto))
                        .filter(|o| *o != &owner)
                    {
                        return Err(err(
                            format!("spec.ports[{i}].nodePort"),
                            format!("{n}/{proto} is already used by Service {o}"),
                        ));
                    }
                    n
                }
                None => {
                    let kept = stored.and_then(|s| {
                        s.ports
                            .iter()
                            .find(|p| {
                                p.name == svc.ports[i].name && p.protocol == svc.ports[i].protocol
                            })
                            .and_then(|p| p.node_port)
                    });
                    match kept {
                        Some(n) => n,
                        None => DEFAULT_NODE_PORTS
                            .clone()
                            .find(|n| free(taken, &cluster::node_port_key(*n, &proto)))
                            .ok_or_else(|| {
                                err(
                                    format!("spec.ports[{i}].nodePort"),
                                    "no node port is free".into(),
                                )
                            })?,
                    }
                }
            };
            taken.insert(cluster::node_port_key(n, &proto), owner.clone());
            svc.ports[i].node_port = Some(n);
        }
    }
    Ok(svc)
}

/// Applies the YAML files to the store, as `netctl apply -f` does (the lab stores its
/// cluster DNS Service this way).
pub fn apply_files(files: Vec<PathBuf>, store: StoreArgs) -> anyhow::Result<()> {
    apply(ApplyArgs {
        files,
        service_cidr: "10.96.0.0/12".parse().expect("a CIDR"),
        store,
    })
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let inputs = parse_all(&args.files)?;
    let cidr = args.service_cidr;
    let lines = with_etcd(&args.store, |mut c| async move {
        for _attempt in 0..5 {
            let current = read_current(&mut c).await.context("reading the store")?;
            let mut taken = current.allocations.clone();
            let mut errors = Vec::new();
            let mut plan: Vec<(String, String, &'static str, Vec<String>)> = Vec::new();
            let mut guards = Vec::new();
            let mut ops = Vec::new();
            for input in &inputs {
                let o = &input.parsed.object;
                let key = cluster::object_key(o.resource(), o.namespace(), o.name());
                let mut object = o.clone();
                let mut released = Vec::new();
                if let Object::Service(svc) = o {
                    let stored = stored_service(&current, &key);
                    match allocate(input, svc.clone(), stored.as_ref(), cidr, &mut taken) {
                        Ok(done) => {
                            let now: BTreeSet<String> = held_by(&done).into_iter().collect();
                            for k in now.iter().filter(|k| !current.allocations.contains_key(*k)) {
                                guards.push(Compare::create_revision(
                                    k.as_str(),
                                    CompareOp::Equal,
                                    0,
                                ));
                                ops.push(TxnOp::put(
                                    k.as_str(),
                                    format!("{}/{}", done.namespace, done.name),
                                    None,
                                ));
                            }
                            if let Some(s) = &stored {
                                released = held_by(s)
                                    .into_iter()
                                    .filter(|k| !now.contains(k))
                                    .collect();
                            }
                            object = Object::Service(done);
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
                let value = serde_json::to_string(&object).expect("plain data");
                let verb = match current.objects.get(&key) {
                    None => {
                        guards.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                        "created"
                    }
                    Some((old, rev)) => {
                        guards.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev));
                        if old == value.as_bytes() {
                            "unchanged"
                        } else {
                            "configured"
                        }
                    }
                };
                for k in &released {
                    ops.push(TxnOp::delete(k.as_str(), None));
                }
                ops.push(TxnOp::put(key.as_str(), value, None));
                plan.push((
                    o.kind().to_ascii_lowercase(),
                    describe_result(&object),
                    verb,
                    released,
                ));
            }
            if !errors.is_empty() {
                report(&errors);
            }
            let done = c.txn(Txn::new().when(guards).and_then(ops)).await.context(
                "writing to the store (a very large apply may exceed etcd's --max-txn-ops)",
            )?;
            if done.succeeded() {
                return Ok(plan
                    .into_iter()
                    .map(|(resource, what, verb, _)| format!("{resource}/{what} {verb}"))
                    .collect::<Vec<_>>());
            }
            // Someone else wrote meanwhile: plan again from what is there now.
        }
        bail!("the store kept changing under this apply; try again")
    })?;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// `web (10.96.0.1, 80:30080/TCP)`: the name and what was allocated.
fn describe_result(o: &Object) -> String {
    let name = match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name()),
        None => o.name().to_owned(),
    };
    match o {
        Object::Service(s) => {
            let ip = match s.cluster_ip {
                ClusterIp::Fixed(ip) => ip.to_string(),
                ClusterIp::Headless => "None".into(),
                ClusterIp::Auto => "?".into(),
            };
            format!("{name} (clusterIP {ip}, ports {})", service_ports(s))
        }
        _ => name,
    }
}

/// `80:30080/TCP,53/UDP`, as kubectl shows ports.
pub fn service_ports(s: &Service) -> String {
    s.ports
        .iter()
        .map(|p| match p.node_port {
            Some(n) => format!("{}:{n}/{}", p.port, p.protocol),
            None => format!("{}/{}", p.port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Args)]
pub struct DeleteArgs {
    /// A YAML file, a directory of them, or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let inputs = parse_all(&args.files)?;
    let lines = with_etcd(&args.store, |mut c| async move {
        let current = read_current(&mut c).await.context("reading the store")?;
        let mut ops = Vec::new();
        let mut lines = Vec::new();
        for input in &inputs {
            let o = &input.parsed.object;
            let key = cluster::object_key(o.resource(), o.namespace(), o.name());
            let what = format!(
                "{}/{}",
                o.kind().to_ascii_lowercase(),
                describe_result(o).split(' ').next().unwrap_or_default()
            );
            if !current.objects.contains_key(&key) {
                lines.push(format!("{what} not found"));
                continue;
            }
            if let Some(s) = stored_service(&current, &key) {
                for k in held_by(&s) {
                    ops.push(TxnOp::delete(k.as_str(), None));
                }
            }
            ops.push(TxnOp::delete(key.as_str(), None));
            lines.push(format!("{what} deleted"));
        }
        c.txn(Txn::new().and_then(ops))
            .await
            .context("deleting from the store")?;
        Ok(lines)
    })?;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

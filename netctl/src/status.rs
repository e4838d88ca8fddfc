//! `netctl status`: the whole cluster on one screen. Each node's daemon is asked for its
//! STATUS (ready, lease, etcd, peers, version, policy and flow state) and its pinned maps
//! are read (programs linked, map fill); etcd gives the node records and the object
//! counts; the nodes' flow records (`Request::Flows`) give the recent drops by reason,
//! or `TWILL_METRICS`'s totals on a node whose records are off. Whatever is wrong is said
//! in words at the end.
//!
//! Nodes: every node of a lab (their sockets and pins are on this machine), or on a real
//! cluster the node `netctl` runs on, with what etcd says of the others.

use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use anyhow::bail;
use clap::Args;
use etcd_client::GetOptions;
use serde::Serialize;
use twill_api::{
    MapFill, NodeStatus, Request, Response,
    cluster::{self, NodeRecord, SubnetRecord},
    flow::FlowStatus,
};

use crate::{
    monitor::parse_duration,
    nodes::{NodeAccess, Nodes},
    store::{StoreArgs, with_etcd},
};

/// A map this full or more is said to be nearly full.
const FULL_RATIO: f64 = 0.9;

#[derive(Args)]
pub struct StatusArgs {
    /// `json`: the report as one JSON object (fields in docs/observability.md).
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// How far back the drop reasons reach in the flow records (`30s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    since: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Everything `netctl status` says; `-o json` prints it as it is.
#[derive(Serialize)]
pub struct Report {
    /// True when `problems` is empty.
    pub healthy: bool,
    pub nodes: Vec<NodeReport>,
    /// Object counts from etcd; `null` when etcd could not be read.
    pub objects: Option<ObjectCounts>,
    pub drops: Drops,
    /// What is wrong, in words, one sentence each.
    pub problems: Vec<String>,
}

#[derive(Serialize, Default)]
pub struct ObjectCounts {
    pub namespaces: u64,
    pub pods: u64,
    pub services: u64,
    pub network_policies: u64,
    pub fqdn_policies: u64,
}

#[derive(Serialize)]
pub struct NodeReport {
    pub name: String,
    /// Whether its node record is in etcd (the node's lease is alive); `null` when etcd
    /// could not be read.
    pub in_etcd: Option<bool>,
    /// Whether its daemon answered STATUS.
    pub answered: bool,
    /// Why not, when it did not (or `not reachable from here` on a real cluster).
    pub error: Option<String>,
    /// The daemon's STATUS answer.
    pub status: Option<NodeStatus>,
    /// Remote nodes it should reach: the other node records in etcd.
    pub peers_expected: Option<u32>,
    /// Program links pinned on the node.
    pub programs: Option<Programs>,
    /// Fill of every map with a capacity that the node's maps or its daemon report.
    pub maps: Vec<MapFill>,
}

/// Program links pinned under the node's pin directory.
#[derive(Serialize, Default)]
pub struct Programs {
    /// `twill_from_overlay` on the VXLAN device.
    pub overlay: u32,
    /// `twill_from_world` on the underlay (there only while a Service has a NodePort).
    pub node_port: u32,
    /// The socket programs on the node's cgroup.
    pub socket: u32,
    /// Pod interfaces with both pod programs linked.
    pub pods: u32,
}

#[derive(Serialize, Default)]
pub struct Drops {
    /// Where each node's counts come from: `flow-records` (drops and refusals among the
    /// records of the last `since`, repeats included) or `metrics` (`TWILL_METRICS`
    /// packets since the map was made: that node's records are off, or its daemon did
    /// not answer).
    pub sources: BTreeMap<String, String>,
    pub since: String,
    /// By reason, the most first.
    pub reasons: Vec<ReasonCount>,
}

#[derive(Serialize, Clone)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
    /// Count per node.
    pub nodes: BTreeMap<String, u64>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let json = match args.output.as_deref() {
        None => false,
        Some("json") => true,
        Some(other) => bail!("-o {other:?}: the only output format is json"),
    };
    let window = parse_duration(&args.since).map_err(anyhow::Error::msg)?;
    let report = gather(&args.store, &args.since, window);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report is plain data")
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// What etcd holds that status shows.
struct Store {
    nodes: Vec<NodeRecord>,
    subnets: Vec<SubnetRecord>,
    counts: ObjectCounts,
}

fn read_store(store: &StoreArgs) -> anyhow::Result<Store> {
    with_etcd(store, |mut c| async move {
        let prefix = GetOptions::new().with_prefix();
        let mut nodes = Vec::new();
        for kv in c.get(cluster::NODES, Some(prefix.clone())).await?.kvs() {
            nodes.extend(serde_json::from_slice::<NodeRecord>(kv.value()).ok());
        }
        let mut subnets = Vec::new();
        for kv in c.get(cluster::SUBNETS, Some(prefix)).await?.kvs() {
            subnets.extend(serde_json::from_slice::<SubnetRecord>(kv.value()).ok());
        }
        let mut counts = ObjectCounts::default();
        for (resource, slot) in [
            ("namespaces", &mut counts.namespaces),
            ("pods", &mut counts.pods),
            ("services", &mut counts.services),
            ("networkpolicies", &mut counts.network_policies),
            ("fqdnpolicies", &mut counts.fqdn_policies),
        ] {
            let options = GetOptions::new().with_prefix().with_count_only();
            let resp = c
                .get(cluster::objects_prefix(resource), Some(options))
                .await?;
            *slot = resp.count().max(0) as u64;
        }
        Ok(Store {
            nodes,
            subnets,
            counts,
        })
    })
}

fn node_status(access: &NodeAccess) -> Result<NodeStatus, String> {
    match twill_api::call(&access.socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { status }) => Ok(status),
        Ok(Response::Error { message, .. }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Files under `dir`, at any depth (each a pinned link).
fn pinned_files(dir: &Path) -> u32 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => pinned_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

fn programs(pin_dir: &Path) -> Programs {
    let pods = fs::read_dir(pin_dir.join(twill_bpf::LINKS))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    twill_abi::programs::POD
                        .iter()
                        .all(|p| e.path().join(p).exists())
                })
                .count() as u32
        })
        .unwrap_or(0);
    Programs {
        overlay: pinned_files(&pin_dir.join(twill_bpf::OVERLAY_LINKS)),
        node_port: pinned_files(&pin_dir.join(twill_bpf::NODE_LINKS)),
        socket: pinned_files(&pin_dir.join(twill_bpf::CGROUP_LINKS)),
        pods,
    }
}

/// The maps the programs fill (a walk of each) and the policy maps the daemon reports.
fn map_fill(pin_dir: &Path, status: Option<&NodeStatus>) -> Vec<MapFill> {
    let mut maps: Vec<MapFill> = twill_bpf::COUNTED_MAPS
        .iter()
        .filter_map(|&name| {
            let (entries, capacity) = twill_bpf::count_pinned(pin_dir, name).ok()?;
            Some(MapFill {
                name: name.to_owned(),
                entries,
                capacity: u64::from(capacity),
            })
        })
        .collect();
    if let Some(s) = status {
        maps.extend(s.policy.maps.iter().cloned());
    }
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    maps
}

/// Drops and refusals among a node's records newer than `since` (RFC 3339), by reason.
fn drops_from_records(access: &NodeAccess, since: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    let mut after = 0;
    loop {
        let request = Request::Flows {
            after,
            max: twill_api::MAX_FLOWS,
            wait_ms: 0,
        };
        let (records, next, newest) =
            match twill_api::call(&access.socket, &request, Duration::from_secs(10)) {
                Ok(Response::Flows {
                    records,
                    next,
                    newest,
                    ..
                }) => (records, next, newest),
                Ok(Response::Error { message, .. }) => return Err(message),
                Ok(other) => return Err(format!("unexpected answer {other:?}")),
                Err(e) => return Err(e.to_string()),
            };
        let done = records.is_empty() || next >= newest;
        for r in records {
            if r.verdict != "forwarded" && r.time.as_str() >= since {
                *counts.entry(r.reason).or_insert(0) += 1 + u64::from(r.repeats);
            }
        }
        after = next;
        if done {
            return Ok(counts);
        }
    }
}

/// `TWILL_METRICS`'s packets of every `drop-*` reason and of `no-backend` (refused),
/// summed over directions, since the map was made.
fn drops_from_metrics(pin_dir: &Path) -> Result<BTreeMap<String, u64>, String> {
    let metrics = twill_bpf::read_metrics(pin_dir).map_err(|e| e.to_string())?;
    let mut counts = BTreeMap::new();
    for row in metrics.rows {
        if row.packets > 0 && (row.reason.is_drop() || row.reason.name() == "no-backend") {
            *counts.entry(row.reason.name().to_owned()).or_insert(0) += row.packets;
        }
    }
    Ok(counts)
}

fn gather(store_args: &StoreArgs, since_text: &str, window: Duration) -> Report {
    let nodes = Nodes::of(store_args);
    let mut problems = Vec::new();
    let store = match read_store(store_args) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("etcd cannot be read from here: {e:#}"));
            None
        }
    };
    // Lab nodes, or the local node; plus every node etcd knows (a record or a subnet).
    let mut names: Vec<String> = match &nodes {
        Nodes::Lab(m) => m.plan.nodes().map(|h| h.name.clone()).collect(),
        Nodes::Local { name } => vec![name.clone()],
    };
    if let Some(s) = &store {
        for n in s
            .nodes
            .iter()
            .map(|r| &r.name)
            .chain(s.subnets.iter().map(|r| &r.node))
        {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names.sort();
    let since = twill_api::flow::rfc3339_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(window.as_millis() as u64),
    );

    let mut reports = Vec::new();
    let mut drops = Drops {
        since: since_text.to_owned(),
        ..Drops::default()
    };
    let mut by_reason: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for name in &names {
        let in_etcd = store
            .as_ref()
            .map(|s| s.nodes.iter().any(|r| &r.name == name));
        let peers_expected = store
            .as_ref()
            .map(|s| s.nodes.iter().filter(|r| &r.name != name).count() as u32);
        let mut report = NodeReport {
            name: name.clone(),
            in_etcd,
            answered: false,
            error: None,
            status: None,
            peers_expected,
            programs: None,
            maps: Vec::new(),
        };
        let access = match nodes.access(name) {
            Ok(a) => a,
            Err(_) => {
                report.error = Some("not reachable from here (run netctl status on it)".into());
                reports.push(report);
                continue;
            }
        };
        match node_status(&access) {
            Ok(s) => {
                report.answered = true;
                report.status = Some(s);
            }
            Err(e) => {
                problems.push(format!("{name}: daemon not answering: {e}"));
                report.error = Some(e);
            }
        }
        if access.pin_dir.exists() {
            report.programs = Some(programs(&access.pin_dir));
            report.maps = map_fill(&access.pin_dir, report.status.as_ref());
        }
        // Drops: the records when the daemon keeps them, else the datapath's counters.
        let records_on = report
            .status
            .as_ref()
            .is_some_and(|s| s.flows.mode != "off" && !s.flows.mode.is_empty());
        let counted = if records_on {
            drops_from_records(&access, &since).map(|c| (c, "flow-records"))
        } else {
            drops_from_metrics(&access.pin_dir).map(|c| (c, "metrics"))
        };
        match counted {
            Ok((counts, source)) => {
                drops.sources.insert(name.clone(), source.to_owned());
                for (reason, n) in counts {
                    by_reason.entry(reason).or_default().insert(name.clone(), n);
                }
            }
            Err(e) if report.answered => problems.push(format!("{name}: drops not read: {e}")),
            Err(_) => {}
        }
        problems.extend(node_problems(&report));
        reports.push(report);
    }
    drops.reasons = by_reason
        .into_iter()
        .map(|(reason, nodes)| ReasonCount {
            count: nodes.values().sum(),
            reason,
            nodes,
        })
        .collect();
    drops
        .reasons
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    Report {
        healthy: problems.is_empty(),
        nodes: reports,
        objects: store.map(|s| s.counts),
        drops,
        problems,
    }
}

fn seconds(ms: u64) -> String {
    format!("{} s", ms.div_ceil(1000))
}

/// What is wrong with one node, in words.
fn node_problems(r: &NodeReport) -> Vec<String> {
    let name = &r.name;
    let mut out = Vec::new();
    if r.in_etcd == Some(false) {
        out.push(format!(
            "{name}: no node record in etcd (its lease expired, or it never registered)"
        ));
    }
    for m in &r.maps {
        if m.capacity > 0 && m.ratio() >= FULL_RATIO {
            out.push(format!(
                "{name}: {} {:.0}% full ({} of {})",
                m.name,
                m.ratio() * 100.0,
                m.entries,
                m.capacity
            ));
        }
    }
    let Some(s) = &r.status else {
        return out;
    };
    if !s.etcd_reachable {
        match s.etcd_silent_ms {
            Some(ms) => out.push(format!("{name}: etcd unreachable for {}", seconds(ms))),
            None => out.push(format!("{name}: etcd unreachable since the daemon started")),
        }
    }
    if let Some(why) = &s.not_ready {
        out.push(format!("{name}: not ready: {why}"));
    }
    out.extend(s.warnings.iter().map(|w| format!("{name}: {w}")));
    if let Some(p) = &s.overlay.problem {
        out.push(format!("{name}: overlay: {p}"));
    }
    if let Some(expected) = r.peers_expected
        && peers(s) < expected
    {
        out.push(format!(
            "{name}: reaches {} of {expected} peer node(s)",
            peers(s)
        ));
    }
    if !s.policy.synced {
        out.push(format!(
            "{name}: has not read the store's policies yet (new pods are denied both ways)"
        ));
    }
    out.extend(
        s.policy
            .problems
            .iter()
            .map(|p| format!("{name}: policy: {p}")),
    );
    if s.flows.lost > 0 {
        out.push(format!(
            "{name}: flow records lost: {} since its ring was made (the ring was full: raise \
             flows.ring_bytes, or use flows.mode = \"connections\")",
            s.flows.lost
        ));
    }
    if s.flows.dns_lost > 0 {
        out.push(format!(
            "{name}: DNS query records lost: {} (twill-dnsd could not hand them to twilld: \
             see its log and twill_dns_query_records_total)",
            s.flows.dns_lost
        ));
    }
    out.extend(
        s.flows
            .problems
            .iter()
            .map(|p| format!("{name}: flows: {p}")),
    );
    out
}

/// Remote nodes reached: the overlay's peers, or in the BGP-routed mode the established
/// sessions.
fn peers(s: &NodeStatus) -> u32 {
    match &s.bgp {
        Some(b) => b.peers.iter().filter(|p| p.state == "Established").count() as u32,
        None => s.overlay.peers,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn flows_text(f: &FlowStatus) -> String {
    if f.mode.is_empty() || f.mode == "off" {
        return "off".into();
    }
    if f.dns_taken > 0 || f.dns_lost > 0 {
        return format!(
            "{} (read {}, lost {}; dns {}, lost {})",
            f.mode, f.read, f.lost, f.dns_taken, f.dns_lost
        );
    }
    format!("{} (read {}, lost {})", f.mode, f.read, f.lost)
}

/// The report as a screen of text.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster: {}",
        if r.healthy {
            "healthy".to_owned()
        } else {
            format!("{} problem(s)", r.problems.len())
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "NODE       READY  LEASE              ETCD  PEERS  PODS  VERSION          PROGRAMS             \
         FULLEST MAP      FLOWS"
    );
    for n in &r.nodes {
        let Some(s) = &n.status else {
            let _ = writeln!(
                out,
                "{:<10} {:<6} {}",
                n.name,
                "?",
                n.error.as_deref().unwrap_or("no answer")
            );
            continue;
        };
        let lease = match (s.subnet, n.in_etcd) {
            (Some(net), Some(false)) => format!("{net} (no record)"),
            (Some(net), _) => net.to_string(),
            (None, _) => "none".into(),
        };
        let etcd = if s.etcd_reachable {
            "ok".to_owned()
        } else {
            "DOWN".to_owned()
        };
        let peers = match n.peers_expected {
            Some(e) => format!("{}/{e}", peers(s)),
            None => peers(s).to_string(),
        };
        let programs = n.programs.as_ref().map_or("-".into(), |p| {
            format!(
                "ov{} np{} sock{} pod{}",
                p.overlay, p.node_port, p.socket, p.pods
            )
        });
        let fullest = n
            .maps
            .iter()
            .filter(|m| m.capacity > 0)
            .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
            .map_or("-".into(), |m| {
                format!(
                    "{} {:.0}%",
                    m.name.trim_start_matches("TWILL_"),
                    m.ratio() * 100.0
                )
            });
        let _ = writeln!(
            out,
            "{:<10} {:<6} {:<18} {:<5} {:<6} {:<5} {:<16} {:<20} {:<16} {}",
            n.name,
            yes_no(s.not_ready.is_none()),
            lease,
            etcd,
            peers,
            s.pods,
            s.version.as_deref().unwrap_or("?"),
            programs,
            fullest,
            flows_text(&s.flows)
        );
    }
    let _ = writeln!(out);
    match &r.objects {
        Some(c) => {
            let _ = writeln!(
                out,
                "objects: {} namespace(s), {} pod object(s), {} service(s), {} network polic(ies), \
                 {} fqdn polic(ies)",
                c.namespaces, c.pods, c.services, c.network_policies, c.fqdn_policies
            );
        }
        None => {
            let _ = writeln!(out, "objects: etcd not readable");
        }
    }
    let _ = writeln!(out);
    let mut from: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, source) in &r.drops.sources {
        from.entry(source.as_str()).or_default().push(node);
    }
    let sources: Vec<String> = from
        .iter()
        .map(|(source, nodes)| match *source {
            "flow-records" => format!(
                "flow records of the last {} ({})",
                r.drops.since,
                nodes.join(", ")
            ),
            _ => format!(
                "TWILL_METRICS since the maps were made ({}: records off)",
                nodes.join(", ")
            ),
        })
        .collect();
    if r.drops.reasons.is_empty() {
        let _ = writeln!(out, "drops: none in {}", sources.join("; "));
    } else {
        let _ = writeln!(out, "drops, from {}:", sources.join("; "));
        let _ = writeln!(out, "  {:<26} {:>10}  NODES", "REASON", "COUNT");
        for d in &r.drops.reasons {
            let nodes: Vec<String> = d.nodes.iter().map(|(n, c)| format!("{n}={c}")).collect();
            let _ = writeln!(
                out,
                "  {:<26} {:>10}  {}",
                d.reason,
                d.count,
                nodes.join(" ")
            );
        }
    }
    if !r.problems.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "problems:");
        for p in &r.problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(status: serde_json::Value, maps: Vec<MapFill>) -> NodeReport {
        NodeReport {
            name: "node2".into(),
            in_etcd: Some(true),
            answered: true,
            error: None,
            status: Some(serde_json::from_value(status).unwrap()),
            peers_expected: Some(2),
            programs: None,
            maps,
        }
    }

    #[test]
    fn trouble_is_said_in_words() {
        let r = node(
            serde_json::json!({
                "node": "node2", "subnet": "10.244.1.0/24", "etcd_reachable": false,
                "etcd_silent_ms": 11_400, "available_addresses": 250, "not_ready": null,
                "overlay": {"peers": 1, "problem": null},
                "policy": {"synced": true, "problems": [], "maps": []},
                "flows": {"mode": "connections", "kept": 0, "keep": 10, "newest": 0,
                          "read": 0, "lost": 7, "dns_lost": 3, "file": null,
                          "problems": []},
            }),
            vec![MapFill {
                name: "TWILL_CT".into(),
                entries: 243_800,
                capacity: 262_144,
            }],
        );
        assert_eq!(
            node_problems(&r),
            [
                "node2: TWILL_CT 93% full (243800 of 262144)",
                "node2: etcd unreachable for 12 s",
                "node2: reaches 1 of 2 peer node(s)",
                "node2: flow records lost: 7 since its ring was made (the ring was full: raise \
                 flows.ring_bytes, or use flows.mode = \"connections\")",
                "node2: DNS query records lost: 3 (twill-dnsd could not hand them to twilld: \
                 see its log and twill_dns_query_records_total)",
            ]
        );
    }

    #[test]
    fn a_healthy_node_says_nothing() {
        let r = node(
            serde_json::json!({
                "node": "node2", "subnet": "10.244.1.0/24", "etcd_reachable": true,
                "etcd_silent_ms": 300, "available_addresses": 250, "not_ready": null,
                "overlay": {"peers": 2, "problem": null},
                "policy": {"synced": true, "problems": [], "maps": []},
            }),
            vec![MapFill {
                name: "TWILL_CT".into(),
                entries: 12,
                capacity: 262_144,
            }],
        );
        assert_eq!(node_problems(&r), Vec::<String>::new());
    }
}

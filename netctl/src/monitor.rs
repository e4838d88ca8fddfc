//! `netctl monitor`: the flow records nodes' daemons keep, filtered, as lines, JSON or a
//! summary; with `-f`, new ones as they come.
//!
//! Records come from each node's daemon (`Request::Flows`, a long poll): in a lab over
//! each node's unix socket (they are on this machine); on a real cluster over the unix
//! socket for the node `netctl` runs on and over TCP for the others, at the `flows_listen`
//! address of their node records, with the token of `--token-file`
//! (`twill_api::remote`). Records of several nodes are merged by time. Loss is said,
//! never hidden: records the datapath's ring had no room for (`lost`) and records a slow
//! reader missed in the daemon's memory (`missed`) are printed to stderr.

mod filter;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};
use twill_api::{
    Request, Response,
    flow::{FlowEndpoint, FlowEvent, PolicySide},
};

pub use self::filter::{Field, Filters};
use crate::{
    nodes::Nodes,
    store::{StoreArgs, with_etcd},
};

#[derive(Args)]
pub struct MonitorFlags {
    /// A node whose records to show (repeatable). Default: every node of a lab, or this
    /// node on a real cluster.
    #[arg(long, conflicts_with = "all_nodes")]
    node: Vec<String>,
    /// Every node: of the lab, or every node record in etcd (other nodes over TCP, at
    /// their flows.listen).
    #[arg(long)]
    all_nodes: bool,
    /// The flow API token for other nodes (their flows.token_file).
    #[arg(long, value_name = "PATH", default_value = twill_api::remote::DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,
    /// Keep printing new records as they come.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N matching records (with -f: before the new ones).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Only records of the last DURATION (`30s`, `5m`, `2h`, `1d`).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// A pod at either end (or the backend), NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pod: Vec<String>,
    /// A pod end in this namespace.
    #[arg(long, value_name = "NS")]
    namespace: Vec<String>,
    /// The source: an IPv4 address or NAMESPACE/POD.
    #[arg(long, value_name = "IP|NS/POD")]
    from: Vec<String>,
    /// The destination (or the backend): an IPv4 address or NAMESPACE/POD.
    #[arg(long, value_name = "IP|NS/POD")]
    to: Vec<String>,
    /// forwarded, dropped or refused.
    #[arg(long)]
    verdict: Vec<String>,
    /// A reason name (`netctl bpf metrics`: drop-policy-denied, no-backend, ...; DNS
    /// queries: dns-zone, dns-cache, dns-upstream, dns-fqdn-denied, dns-not-ready).
    #[arg(long)]
    reason: Vec<String>,
    /// TCP, UDP, ICMP, SCTP.
    #[arg(long)]
    protocol: Vec<String>,
    /// A port at either end (or the backend's).
    #[arg(long)]
    port: Vec<String>,
    /// The Service whose frontend was the destination, NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    service: Vec<String>,
    /// A policy that allowed or isolated it, NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    policy: Vec<String>,
    /// A DNS query for NAME (`*.NAME`: any name under it).
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// Negates the filter flag after it: `--not --reason no-backend`.
    #[arg(long, action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    not: Vec<bool>,
    /// `json`: one record a line, the documented shape (docs/observability.md).
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// A summary instead of the records: drops by reason, top talkers.
    #[arg(long, conflicts_with_all = ["follow", "output"])]
    top: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// The flags, and the filters in the order given (which `--not` needs).
pub struct MonitorArgs {
    /// Boxed: the command enum's other variants are far smaller.
    flags: Box<MonitorFlags>,
    filters: Vec<(Field, String, bool)>,
}

impl FromArgMatches for MonitorArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = Box::new(MonitorFlags::from_arg_matches(m)?);
        let mut values = Vec::new();
        for (field, id) in Field::ALL {
            if let (Some(indices), Some(given)) = (m.indices_of(id), m.get_many::<String>(id)) {
                values.extend(indices.zip(given).map(|(i, v)| (i, field, v.clone())));
            }
        }
        let nots: Vec<usize> = m
            .indices_of("not")
            .map(Iterator::collect)
            .unwrap_or_default();
        let filters = filter::in_order(values, &nots)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, e))?;
        Ok(MonitorArgs { flags, filters })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for MonitorArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        MonitorFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        MonitorFlags::augment_args_for_update(cmd)
    }
}

/// A duration as `--since` takes it: a number and a unit (`s`, `m`, `h`, `d`; seconds
/// without one).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("--since {text:?}: expected a duration like 30s, 5m, 2h or 1d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--since {text:?}: the unit is one of s, m, h, d")),
    };
    Ok(Duration::from_secs(n * seconds))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One answer to `Request::Flows`.
struct Batch {
    records: Vec<FlowEvent>,
    next: u64,
    newest: u64,
    missed: u64,
    lost: u64,
}

/// Where a node's records are asked for.
#[derive(Clone, Debug)]
enum Source {
    /// The node's unix socket, on this machine.
    Socket(PathBuf),
    /// The node's flow API over TCP, with the token.
    Tcp { addr: SocketAddr, token: Arc<str> },
}

fn fetch(source: &Source, node: &str, after: u64, max: u32, wait_ms: u32) -> anyhow::Result<Batch> {
    let request = Request::Flows {
        after,
        max,
        wait_ms,
    };
    let timeout = Duration::from_millis(u64::from(wait_ms)) + Duration::from_secs(10);
    let answer = match source {
        Source::Socket(socket) => twill_api::call(socket, &request, timeout),
        Source::Tcp { addr, token } => twill_api::remote::call_tcp(*addr, token, &request, timeout),
    };
    match answer {
        Ok(Response::Flows {
            records,
            next,
            newest,
            missed,
            lost,
            ..
        }) => Ok(Batch {
            records,
            next,
            newest,
            missed,
            lost,
        }),
        Ok(Response::Error { message, .. }) => bail!("{node}: {message}"),
        Ok(other) => bail!("{node}: unexpected answer {other:?}"),
        Err(e) => bail!("{node}: {e}"),
    }
}

/// Every record a node keeps now; the last number read and the lost count.
fn history(source: &Source, node: &str) -> anyhow::Result<(Vec<FlowEvent>, u64, u64)> {
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let batch = fetch(source, node, after, twill_api::MAX_FLOWS, 0)?;
        let done = batch.records.is_empty() || batch.next >= batch.newest;
        records.extend(batch.records);
        after = batch.next;
        if done {
            return Ok((records, after, batch.lost));
        }
    }
}

fn lost_note(node: &str, lost: u64) -> String {
    format!(
        "{node}: {lost} flow record(s) lost since its ring was created: the ring was full \
         (raise flows.ring_bytes, or use flows.mode = \"connections\")"
    )
}

/// The nodes to ask and how: in a lab, each node's unix socket; on a real cluster, this
/// node's unix socket and the others' flow API over TCP (their node records say where).
fn sources(flags: &MonitorFlags) -> anyhow::Result<Vec<(String, Source)>> {
    let nodes = Nodes::of(&flags.store);
    let local = match &nodes {
        Nodes::Lab(m) => {
            let names: Vec<String> = if flags.node.is_empty() {
                m.plan.nodes().map(|h| h.name.clone()).collect()
            } else {
                flags.node.clone()
            };
            return names
                .into_iter()
                .map(|n| {
                    let access = nodes.access(&n).map_err(anyhow::Error::msg)?;
                    Ok((n, Source::Socket(access.socket)))
                })
                .collect();
        }
        Nodes::Local { name } => name.clone(),
    };
    if flags.node.is_empty() && !flags.all_nodes {
        return Ok(vec![(
            local,
            Source::Socket(twill_api::DEFAULT_SOCKET.into()),
        )]);
    }
    let listens = if flags.all_nodes || flags.node.iter().any(|n| *n != local) {
        flow_listeners(&flags.store)?
    } else {
        BTreeMap::new()
    };
    let names: Vec<String> = if flags.all_nodes {
        listens.keys().cloned().collect()
    } else {
        flags.node.clone()
    };
    if names.is_empty() {
        bail!("etcd has no node records: no node to ask");
    }
    let mut token: Option<Arc<str>> = None;
    let mut out = Vec::new();
    for n in names {
        if n == local {
            out.push((n, Source::Socket(twill_api::DEFAULT_SOCKET.into())));
            continue;
        }
        let addr = match listens.get(&n) {
            Some(Some(addr)) => *addr,
            Some(None) => bail!(
                "{n} does not serve flow records over TCP (flows.listen is not set in its \
                 twilld.toml): run netctl monitor on {n}"
            ),
            None => bail!("{n} has no node record in etcd (is its twilld running?)"),
        };
        let token = match &token {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = twill_api::remote::read_token(&flags.token_file)
                    .map_err(anyhow::Error::msg)
                    .context("the flow API of other nodes needs their token (--token-file)")?
                    .into();
                token = Some(t.clone());
                t
            }
        };
        out.push((n, Source::Tcp { addr, token }));
    }
    Ok(out)
}

/// Every node record's flow API address, by node name (`None`: not served).
fn flow_listeners(store: &StoreArgs) -> anyhow::Result<BTreeMap<String, Option<SocketAddr>>> {
    with_etcd(store, |mut c| async move {
        let prefix = etcd_client::GetOptions::new().with_prefix();
        let mut out = BTreeMap::new();
        for kv in c.get(twill_api::cluster::NODES, Some(prefix)).await?.kvs() {
            if let Ok(r) =
                serde_json::from_slice::<twill_api::cluster::VersionedNodeRecord>(kv.value())
            {
                out.insert(r.record.name, r.flows_listen);
            }
        }
        Ok(out)
    })
    .context("reading the node records")
}

pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let MonitorArgs { flags, filters } = args;
    let flags = *flags;
    let filters = Filters::new(filters).map_err(anyhow::Error::msg)?;
    let json = match flags.output.as_deref() {
        None => false,
        Some("json") => true,
        Some(other) => bail!("-o {other:?}: the only output format is json"),
    };
    let since = flags
        .since
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .map(|d| twill_api::flow::rfc3339_ms(unix_ms_now().saturating_sub(d.as_millis() as u64)));
    let sockets = sources(&flags)?;

    // What is kept now (all of it, unless -f without --last or --since: only new ones).
    // A node that cannot answer is skipped, said, when others can.
    let mut shown = Vec::new();
    let mut resume = BTreeMap::new();
    let wants_history = !flags.follow || flags.last.is_some() || since.is_some();
    let mut failed = Vec::new();
    for (node, source) in &sockets {
        let got = if wants_history {
            history(source, node).map(|(records, after, lost)| {
                shown.extend(records);
                (after, lost)
            })
        } else {
            fetch(source, node, 0, 0, 0).map(|now| (now.newest, now.lost))
        };
        match got {
            Ok((after, lost)) => {
                if lost > 0 {
                    eprintln!("netctl: {}", lost_note(node, lost));
                }
                resume.insert(node.clone(), (after, lost));
            }
            Err(e) => failed.push(e),
        }
    }
    if resume.is_empty()
        && let Some(e) = failed.pop()
    {
        return Err(e);
    }
    for e in failed {
        eprintln!("netctl: {e:#}; left out");
    }
    let sockets: Vec<_> = sockets
        .into_iter()
        .filter(|(n, _)| resume.contains_key(n))
        .collect();
    shown.retain(|e| filters.matches(e) && since.as_ref().is_none_or(|s| e.time >= *s));
    shown.sort_by(|a, b| (&a.time, &a.node, a.seq).cmp(&(&b.time, &b.node, b.seq)));
    if let Some(n) = flags.last {
        let excess = shown.len().saturating_sub(n);
        shown.drain(..excess);
    }
    if flags.top {
        print!("{}", summary(&shown));
        return Ok(());
    }
    let print = |e: &FlowEvent| {
        if json {
            println!(
                "{}",
                serde_json::to_string(e).expect("flow events are plain data")
            );
        } else {
            println!("{}", line(e));
        }
    };
    shown.iter().for_each(print);
    if !flags.follow {
        return Ok(());
    }

    // Follow: a thread per node, long-polling its daemon; lines arrive here.
    let (tx, rx) = mpsc::channel::<Result<FlowEvent, String>>();
    for (node, source) in sockets {
        let (mut after, mut lost) = resume[&node];
        let tx = tx.clone();
        let filters = filters.clone();
        std::thread::spawn(move || {
            loop {
                match fetch(&source, &node, after, 1000, 2000) {
                    Ok(batch) => {
                        if batch.missed > 0 {
                            let _ = tx.send(Err(format!(
                                "{node}: {} record(s) missed: they were dropped from the \
                                 daemon's memory before this reader got them (flows.keep)",
                                batch.missed
                            )));
                        }
                        if batch.lost > lost {
                            let _ = tx.send(Err(format!(
                                "{node}: {} more flow record(s) lost: the ring was full \
                                 (flows.ring_bytes)",
                                batch.lost - lost
                            )));
                            lost = batch.lost;
                        }
                        after = batch.next;
                        for e in batch.records {
                            if filters.matches(&e) && tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        if tx.send(Err(format!("{e:#}; trying again"))).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        });
    }
    drop(tx);
    for message in rx {
        match message {
            Ok(e) => print(&e),
            Err(note) => eprintln!("netctl: {note}"),
        }
    }
    Ok(())
}

/// `namespace/pod`, or the node, or nothing known.
fn who(e: &FlowEndpoint) -> Option<String> {
    match (&e.namespace, &e.pod, &e.node) {
        (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
        (_, _, Some(node)) => Some(format!("node/{node}")),
        _ => None,
    }
}

fn address(e: &FlowEndpoint) -> String {
    match (e.ip, e.port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => "?".to_owned(),
    }
}

fn end(e: &FlowEndpoint) -> String {
    match who(e) {
        Some(name) => format!("{name}({})", address(e)),
        None => address(e),
    }
}

fn side(direction: &str, s: &PolicySide) -> Option<String> {
    match s.verdict.as_str() {
        "allowed" => Some(match (&s.policy, s.rule) {
            (Some(p), Some(r)) => format!("{direction} allowed by {p} {direction}[{r}]"),
            _ => format!("{direction} allowed"),
        }),
        "denied" | "audit" => Some(if s.isolated_by.is_empty() {
            format!("{direction} {}", s.verdict)
        } else {
            format!(
                "{direction} {} (isolated by {})",
                s.verdict,
                s.isolated_by.join(", ")
            )
        }),
        "fqdn-denied" => Some(format!("{direction} fqdn-denied")),
        _ => None,
    }
}

/// The human line of a record: time, node, from -> to with names, verdict, reason, and
/// the policy verdicts that say something (a rule allowed it, or it was denied).
pub fn line(e: &FlowEvent) -> String {
    let time = e.time.get(11..23).unwrap_or(&e.time);
    let mut out = format!("{time} {} {} -> ", e.node, end(&e.source));
    if let Some(s) = &e.service {
        out.push_str(&format!(
            "svc/{}/{}({}) -> ",
            s.namespace,
            s.name,
            address(&e.destination)
        ));
        match &e.backend {
            Some(b) => out.push_str(&end(b)),
            None => out.push_str("(no backend)"),
        }
    } else {
        out.push_str(&end(&e.destination));
        if let Some(b) = &e.backend {
            out.push_str(&format!(" -> {}", end(b)));
        }
    }
    out.push_str(&format!(
        " {} {} {}",
        e.protocol.as_deref().unwrap_or("?"),
        e.verdict.to_uppercase(),
        e.reason
    ));
    let policy: Vec<String> = [("egress", &e.policy.egress), ("ingress", &e.policy.ingress)]
        .into_iter()
        .filter_map(|(d, s)| side(d, s.as_ref()?))
        .collect();
    if let Some(d) = &e.dns {
        out.push_str(&format!(" {} {} {}", d.qtype, d.query, d.rcode));
        let answer: Vec<String> = d
            .cnames
            .iter()
            .map(|c| format!("cname {c}"))
            .chain(d.addresses.iter().cloned())
            .collect();
        if !answer.is_empty() {
            out.push_str(&format!(" {}", answer.join(",")));
        }
        if d.truncated {
            out.push_str(" truncated");
        }
    }
    if !policy.is_empty() {
        out.push_str(&format!(" [{}]", policy.join("; ")));
    }
    if e.reply == Some(true) {
        out.push_str(" reply");
    }
    if e.repeats > 0 {
        out.push_str(&format!(" (+{} like it)", e.repeats));
    }
    out
}

/// `--top`: records by verdict, drops by reason, and the pairs that made the most records.
pub fn summary(records: &[FlowEvent]) -> String {
    let mut verdicts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut drops: BTreeMap<&str, u64> = BTreeMap::new();
    let mut talkers: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for e in records {
        // A record stands for itself and the repeats folded into it.
        let n = 1 + u64::from(e.repeats);
        *verdicts.entry(e.verdict.as_str()).or_default() += n;
        if e.verdict != "forwarded" {
            *drops.entry(e.reason.as_str()).or_default() += n;
        }
        let from = who(&e.source).unwrap_or_else(|| {
            address(&FlowEndpoint {
                port: None,
                ..e.source.clone()
            })
        });
        let to = match &e.service {
            Some(s) => format!("svc/{}/{}", s.namespace, s.name),
            None => who(&e.destination).unwrap_or_else(|| {
                address(&FlowEndpoint {
                    port: None,
                    ..e.destination.clone()
                })
            }),
        };
        let t = talkers.entry((from, to)).or_default();
        t.0 += n;
        if e.verdict != "forwarded" {
            t.1 += n;
        }
    }
    let mut out = format!("{} record(s):", records.len());
    for (v, n) in &verdicts {
        out.push_str(&format!(" {v} {n}"));
    }
    out.push_str("\n\nNOT FORWARDED BY REASON\n");
    let mut drops: Vec<_> = drops.into_iter().collect();
    drops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    out.push_str(&format!("{:<28} {:>8}\n", "REASON", "COUNT"));
    for (reason, n) in drops {
        out.push_str(&format!("{reason:<28} {n:>8}\n"));
    }
    out.push_str("\nTOP TALKERS\n");
    let mut talkers: Vec<_> = talkers.into_iter().collect();
    talkers.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    out.push_str(&format!(
        "{:<36} {:<36} {:>8} {:>8}\n",
        "SOURCE", "DESTINATION", "RECORDS", "DROPPED"
    ));
    for ((from, to), (n, dropped)) in talkers.into_iter().take(10) {
        out.push_str(&format!("{from:<36} {to:<36} {n:>8} {dropped:>8}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use twill_api::flow::{FlowPolicy, FlowService};

    use super::*;

    fn event() -> FlowEvent {
        FlowEvent {
            seq: 1,
            time: "2026-12-01T10:59:55.123Z".into(),
            node: "node1".into(),
            kind: "new".into(),
            verdict: "forwarded".into(),
            reason: "service-translated".into(),
            protocol: Some("TCP".into()),
            source: FlowEndpoint {
                ip: Some("10.244.1.3".parse().unwrap()),
                port: Some(40000),
                pod: Some("client".into()),
                namespace: Some("default".into()),
                node: Some("node1".into()),
                ..FlowEndpoint::default()
            },
            destination: FlowEndpoint {
                ip: Some("10.96.0.80".parse().unwrap()),
                port: Some(80),
                ..FlowEndpoint::default()
            },
            service: Some(FlowService {
                namespace: "default".into(),
                name: "websvc".into(),
                ip: Some("10.96.0.80".parse().unwrap()),
                port: 80,
            }),
            backend: Some(FlowEndpoint {
                ip: Some("10.244.2.5".parse().unwrap()),
                port: Some(8080),
                pod: Some("web".into()),
                namespace: Some("default".into()),
                ..FlowEndpoint::default()
            }),
            ..FlowEvent::default()
        }
    }

    #[test]
    fn a_line_says_who_talked_to_whom_and_what_happened() {
        assert_eq!(
            line(&event()),
            "10:59:55.123 node1 default/client(10.244.1.3:40000) -> \
             svc/default/websvc(10.96.0.80:80) -> default/web(10.244.2.5:8080) TCP FORWARDED \
             service-translated"
        );
        let denied = FlowEvent {
            verdict: "dropped".into(),
            reason: "drop-policy-denied".into(),
            service: None,
            backend: None,
            destination: FlowEndpoint {
                ip: Some("10.244.2.5".parse().unwrap()),
                port: Some(8080),
                pod: Some("web".into()),
                namespace: Some("default".into()),
                ..FlowEndpoint::default()
            },
            policy: FlowPolicy {
                egress: Some(PolicySide {
                    verdict: "open".into(),
                    ..PolicySide::default()
                }),
                ingress: Some(PolicySide {
                    verdict: "denied".into(),
                    policy: Some("default/p".into()),
                    rule: None,
                    isolated_by: vec!["default/p".into()],
                }),
            },
            repeats: 4,
            ..event()
        };
        assert_eq!(
            line(&denied),
            "10:59:55.123 node1 default/client(10.244.1.3:40000) -> \
             default/web(10.244.2.5:8080) TCP DROPPED drop-policy-denied \
             [ingress denied (isolated by default/p)] (+4 like it)"
        );
        let malformed = FlowEvent {
            protocol: None,
            source: FlowEndpoint {
                pod: Some("client".into()),
                namespace: Some("default".into()),
                ..FlowEndpoint::default()
            },
            destination: FlowEndpoint::default(),
            service: None,
            backend: None,
            verdict: "dropped".into(),
            reason: "drop-malformed".into(),
            ..event()
        };
        assert_eq!(
            line(&malformed),
            "10:59:55.123 node1 default/client(?) -> ? ? DROPPED drop-malformed"
        );
        let dns = FlowEvent {
            kind: "dns".into(),
            verdict: "forwarded".into(),
            reason: "dns-upstream".into(),
            protocol: Some("UDP".into()),
            destination: FlowEndpoint {
                ip: Some("172.30.0.2".parse().unwrap()),
                port: Some(53),
                node: Some("node1".into()),
                ..FlowEndpoint::default()
            },
            service: None,
            backend: None,
            dns: Some(twill_api::flow::FlowDns {
                query: "www.example.com.".into(),
                qtype: "A".into(),
                rcode: "NOERROR".into(),
                cnames: vec!["web.example.net.".into()],
                addresses: vec!["192.0.2.7".into(), "192.0.2.8".into()],
                ..Default::default()
            }),
            ..event()
        };
        assert_eq!(
            line(&dns),
            "10:59:55.123 node1 default/client(10.244.1.3:40000) -> node/node1(172.30.0.2:53) UDP \
             FORWARDED dns-upstream A www.example.com. NOERROR cname web.example.net.,192.0.2.7,192.0.2.8"
        );
    }

    #[test]
    fn the_summary_counts_drops_by_reason_and_talkers_with_repeats() {
        let drop = FlowEvent {
            verdict: "dropped".into(),
            reason: "drop-policy-denied".into(),
            repeats: 2,
            ..event()
        };
        let text = summary(&[event(), drop.clone(), drop]);
        assert!(
            text.starts_with("3 record(s): dropped 6 forwarded 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drop-policy-denied                  6\n"),
            "{text}"
        );
        assert!(
            text.contains("default/client") && text.contains("svc/default/websvc"),
            "{text}"
        );
        assert!(text.contains("       7        6\n"), "{text}");
    }

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("5 minutes").unwrap_err().contains("unit"));
        assert!(parse_duration("m").unwrap_err().contains("expected"));
    }

    #[test]
    fn the_command_line_keeps_the_order_not_needs() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            monitor: MonitorArgs,
        }
        let cli = Cli::try_parse_from([
            "monitor",
            "--reason",
            "no-backend",
            "--node",
            "node1",
            "--not",
            "--reason",
            "drop-malformed",
            "--from=default/client",
            "-f",
            "--not",
            "--port",
            "53",
        ])
        .unwrap();
        assert_eq!(
            cli.monitor.filters,
            [
                (Field::Reason, "no-backend".to_owned(), false),
                (Field::Reason, "drop-malformed".to_owned(), true),
                (Field::From, "default/client".to_owned(), false),
                (Field::Port, "53".to_owned(), true),
            ]
        );
        assert!(cli.monitor.flags.follow);
        assert_eq!(cli.monitor.flags.node, ["node1"]);
        let trailing = Cli::try_parse_from(["monitor", "--reason", "no-backend", "--not"]);
        assert!(trailing.is_err());
    }
}

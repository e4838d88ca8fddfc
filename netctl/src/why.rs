//! `netctl why`: whether a connection is allowed, and the rules behind the verdict.
//!
//! The verdict comes from the same compiler and evaluation twilld uses
//! ([`twill_policy::compile`], [`twill_policy::explain::why`]) over what etcd holds. Then,
//! for each pod end whose node is reachable from here (every node of a lab; on a real
//! cluster the local one), the node's pinned maps are read and looked up the way the
//! datapath does: a node that holds something other than what it should is named, with
//! what differs. Counters come from the node's daemon.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, bail};
use clap::Args;
use etcd_client::GetOptions;
use serde::Serialize;
use twill_api::cluster::{self, NodeRecord, PodRecord};
use twill_k8s::{ClusterIp, Object};
use twill_policy::{
    ClusterView, Direction, EndpointPolicy, PodView,
    entries::{endpoint_entry, live_bits, table_differences, table_entries},
    explain::{Side, Why},
};

use crate::{
    nodes::Nodes,
    store::{StoreArgs, with_etcd},
};

#[derive(Args)]
pub struct WhyArgs {
    /// The client: `NAMESPACE/POD` or an IPv4 address.
    #[arg(long)]
    from: String,
    /// The server: `NAMESPACE/POD`, a pod or outside IPv4 address, or a Service's
    /// ClusterIP, optionally with `:PORT`.
    #[arg(long)]
    to: String,
    /// TCP, UDP, SCTP or ICMP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// The destination port (instead of `:PORT` in --to).
    #[arg(long)]
    port: Option<u16>,
    /// `json`: the verdicts as JSON.
    #[arg(short = 'o', long)]
    output: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// What the store holds that a verdict depends on.
struct Cluster {
    view: ClusterView,
    services: Vec<twill_k8s::Service>,
    slices: Vec<twill_k8s::EndpointSlice>,
    pod_objects: Vec<twill_k8s::Pod>,
    nodes: BTreeMap<String, NodeRecord>,
}

fn read_cluster(store: &StoreArgs) -> anyhow::Result<Cluster> {
    let (objects, records, nodes) = with_etcd(store, |mut c| async move {
        let mut got = Vec::new();
        for prefix in [cluster::OBJECTS, cluster::PODS, cluster::NODES] {
            let resp = c
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .with_context(|| format!("reading {prefix}"))?;
            got.push(
                resp.kvs()
                    .iter()
                    .map(|kv| kv.value().to_vec())
                    .collect::<Vec<_>>(),
            );
        }
        let nodes = got.pop().unwrap_or_default();
        let records = got.pop().unwrap_or_default();
        let objects = got.pop().unwrap_or_default();
        Ok((objects, records, nodes))
    })?;
    let objects: Vec<Object> = objects
        .iter()
        .filter_map(|v| serde_json::from_slice(v).ok())
        .collect();
    let records: Vec<PodRecord> = records
        .iter()
        .filter_map(|v| serde_json::from_slice(v).ok())
        .collect();
    let nodes = nodes
        .iter()
        .filter_map(|v| serde_json::from_slice::<NodeRecord>(v).ok())
        .map(|n| (n.name.clone(), n))
        .collect();
    let mut namespaces = Vec::new();
    let mut policies = Vec::new();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut pod_objects = Vec::new();
    let mut fqdn_policies = Vec::new();
    for o in objects {
        match o {
            Object::Namespace(n) => namespaces.push(n),
            Object::NetworkPolicy(p) => policies.push(p),
            Object::Service(s) => services.push(s),
            Object::EndpointSlice(s) => slices.push(s),
            Object::Pod(p) => pod_objects.push(p),
            Object::FqdnPolicy(p) => fqdn_policies.push(p),
            Object::BgpPeer(_) => {}
        }
    }
    let by_name: BTreeMap<(&str, &str), &twill_k8s::Pod> = pod_objects
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect();
    let pods = records
        .iter()
        .map(|r| {
            let o = by_name.get(&(r.namespace.as_str(), r.name.as_str()));
            PodView {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                node: r.node.clone(),
                ip: r.ip,
                labels: o.map(|o| o.labels.clone()).unwrap_or_default(),
                named_ports: o.map(|o| o.named_ports.clone()).unwrap_or_default(),
            }
        })
        .collect();
    Ok(Cluster {
        view: ClusterView::new(namespaces, pods, policies).with_fqdn_policies(fqdn_policies),
        services,
        slices,
        pod_objects,
        nodes,
    })
}

fn parse_protocol(p: &str) -> anyhow::Result<u8> {
    Ok(match p.to_ascii_uppercase().as_str() {
        "TCP" => twill_policy::IPPROTO_TCP,
        "UDP" => twill_policy::IPPROTO_UDP,
        "SCTP" => twill_policy::IPPROTO_SCTP,
        "ICMP" => 1,
        other => bail!("--protocol {other:?}: use TCP, UDP, SCTP or ICMP"),
    })
}

/// `ns/pod`, `ip`, with an optional `:port`.
fn split_port(s: &str) -> anyhow::Result<(&str, Option<u16>)> {
    match s.rsplit_once(':') {
        Some((target, port)) => {
            let port = port
                .parse()
                .with_context(|| format!("{s:?}: {port:?} is not a port number"))?;
            Ok((target, Some(port)))
        }
        None => Ok((s, None)),
    }
}

fn resolve(view: &ClusterView, what: &str, flag: &str) -> anyhow::Result<Ipv4Addr> {
    if let Ok(ip) = what.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let Some((ns, name)) = what.split_once('/') else {
        bail!("{flag} {what:?}: give NAMESPACE/POD or an IPv4 address");
    };
    view.pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .map(|p| p.ip)
        .with_context(|| format!("{flag} {what:?}: no pod {ns}/{name} has an address"))
}

/// One destination after Service translation.
#[derive(Serialize)]
struct Verdict {
    /// `namespace/name ClusterIP:port` when the destination was a Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(flatten)]
    why: Why,
    /// What the nodes' maps say, per pod end checked.
    live: Vec<LiveCheck>,
    /// Counters from the nodes' daemons.
    counted: Vec<String>,
    /// FQDNPolicy, when one selects the client and the destination is outside the
    /// cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    fqdn: Option<crate::why_fqdn::FqdnCheck>,
}

#[derive(Serialize)]
struct LiveCheck {
    node: String,
    pod: String,
    direction: Direction,
    /// Whether the node's maps agree with the compiled table.
    agrees: Option<bool>,
    notes: Vec<String>,
}

pub fn run(args: WhyArgs) -> anyhow::Result<()> {
    let c = read_cluster(&args.store)?;
    let protocol = parse_protocol(&args.protocol)?;
    let (to, to_port) = split_port(&args.to)?;
    let port = match (to_port, args.port) {
        (Some(a), Some(b)) if a != b => bail!("--to gives port {a} and --port {b}"),
        (Some(p), _) | (_, Some(p)) => p,
        (None, None) if twill_policy::has_ports(protocol) => {
            bail!(
                "--to {:?}: give a port (IP:PORT, NS/POD:PORT or --port)",
                args.to
            )
        }
        _ => 0,
    };
    let from = resolve(&c.view, &args.from, "--from")?;
    let to_ip = resolve(&c.view, to, "--to")?;

    // A ClusterIP: the verdict is about each backend, after translation.
    let mut targets: Vec<(Option<String>, Ipv4Addr, u16)> = Vec::new();
    if let Some(svc) = c
        .services
        .iter()
        .find(|s| s.cluster_ip == ClusterIp::Fixed(to_ip))
    {
        let Some(index) = svc
            .ports
            .iter()
            .position(|p| p.port == port && twill_policy::ip_protocol(p.protocol) == protocol)
        else {
            bail!(
                "{to_ip} is Service {}/{}'s ClusterIP, which has no port {port}/{}",
                svc.namespace,
                svc.name,
                args.protocol.to_ascii_uppercase()
            );
        };
        let placements: Vec<(&twill_k8s::Pod, twill_k8s::endpoints::PodPlacement)> = c
            .pod_objects
            .iter()
            .filter_map(|o| {
                let p = c
                    .view
                    .pods
                    .iter()
                    .find(|p| p.namespace == o.namespace && p.name == o.name)?;
                Some((
                    o,
                    twill_k8s::endpoints::PodPlacement {
                        ip: p.ip,
                        node: p.node.clone(),
                    },
                ))
            })
            .collect();
        let slices: Vec<&twill_k8s::EndpointSlice> = c.slices.iter().collect();
        let backends = twill_k8s::endpoints::backends(svc, &placements, &slices);
        let label = format!("{}/{} {to_ip}:{port}", svc.namespace, svc.name);
        for b in backends
            .get(index)
            .into_iter()
            .flatten()
            .filter(|b| b.ready)
        {
            targets.push((Some(label.clone()), b.ip, b.port));
        }
        if targets.is_empty() {
            println!("Service {label} has no ready backend: connections to it are refused");
            return Ok(());
        }
    } else {
        targets.push((None, to_ip, port));
    }

    let wanted: Vec<Ipv4Addr> = std::iter::once(from)
        .chain(targets.iter().map(|t| t.1))
        .collect();
    let compiled = twill_policy::compile(&c.view, |p| wanted.contains(&p.ip));
    let node_ips = |node: &str| {
        let mut ips = vec![twill_api::POD_GATEWAY];
        if let Some(n) = c.nodes.get(node) {
            ips.push(n.underlay_ip);
            ips.push(Ipv4Addr::from(u32::from(n.subnet.network()) + 1));
        }
        ips
    };
    let nodes = Nodes::of(&args.store);
    let mut reports = BTreeMap::new();
    let mut verdicts = Vec::new();
    for (service, ip, port) in targets {
        let why =
            twill_policy::explain::why(&c.view, &compiled, from, ip, protocol, port, node_ips);
        let mut live = Vec::new();
        let mut counted = Vec::new();
        for side in [&why.egress, &why.ingress].into_iter().flatten() {
            let (Some(node), Some(pod)) = (&side.pod.node, &side.pod.pod) else {
                continue;
            };
            let policy = &compiled.endpoints[&side.pod.ip].policy;
            let peer = if side.direction == Direction::Egress {
                ip
            } else {
                from
            };
            live.push(check_live(
                &nodes, node, pod, side, policy, peer, protocol, port,
            ));
            let report = reports
                .entry(node.clone())
                .or_insert_with(|| nodes.policy_report(node));
            if let Ok(r) = report {
                counted.extend(counters(r, side));
            }
        }
        let fqdn = crate::why_fqdn::check(
            &c.view,
            &compiled,
            &c.nodes,
            &c.services,
            &nodes,
            (from, ip, protocol, port),
        );
        let mut why = why;
        if fqdn.as_ref().is_some_and(|f| !f.allowed) {
            why.allowed = false;
        }
        verdicts.push(Verdict {
            service,
            why,
            live,
            counted,
            fqdn,
        });
    }
    if args.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&verdicts)?);
        return Ok(());
    }
    for v in &verdicts {
        print_verdict(v);
    }
    Ok(())
}

/// The counters that bear on this side's verdict.
fn counters(r: &twill_api::PolicyReport, side: &Side) -> Vec<String> {
    let mut out = Vec::new();
    let d = side.direction.to_string();
    if let Some(m) = side.matches.first()
        && let Some(rc) = r.rules.iter().find(|rc| {
            rc.policy == m.rule.policy.to_string() && rc.direction == d && rc.rule == m.rule.index
        })
    {
        out.push(format!(
            "{}: rule {} has allowed {} connections (as the deciding rule)",
            r.node, m.rule, rc.allowed
        ));
    }
    let index = usize::from(side.direction == Direction::Egress);
    if let Some(p) = r
        .pods
        .iter()
        .find(|p| p.ip == side.pod.ip && p.modes[index] != "open")
    {
        let what = if p.modes[index] == "audit" {
            "would have denied"
        } else {
            "denied"
        };
        out.push(format!(
            "{}: {} {d} {what} {} connection attempts",
            r.node,
            side.pod.pod.as_deref().unwrap_or("?"),
            p.denied[index]
        ));
    }
    out
}

/// Reads the node's maps and looks the connection up in them as the datapath does.
#[allow(clippy::too_many_arguments)]
fn check_live(
    nodes: &Nodes,
    node: &str,
    pod: &str,
    side: &Side,
    policy: &EndpointPolicy,
    peer: Ipv4Addr,
    protocol: u8,
    port: u16,
) -> LiveCheck {
    let mut check = LiveCheck {
        node: node.to_owned(),
        pod: pod.to_owned(),
        direction: side.direction,
        agrees: None,
        notes: Vec::new(),
    };
    let maps = match nodes.access(node).and_then(|a| {
        twill_bpf::read_policy(&a.pin_dir)
            .map_err(|e| format!("reading {node}'s maps: {:#}", anyhow::Error::new(e)))
    }) {
        Ok(m) => m,
        Err(e) => {
            check.notes.push(format!("not checked: {e}"));
            return check;
        }
    };
    let wire = twill_abi::lb::wire_ip(side.pod.ip.octets());
    let Some((_, ep)) = maps.endpoints.iter().find(|(ip, _)| *ip == wire) else {
        check.agrees = Some(false);
        check.notes.push(format!(
            "{node} has no policy entry for {pod}: its packets are dropped"
        ));
        return check;
    };
    let d = side.direction.index() as usize;
    let want = endpoint_entry(ep.table, policy, ep.deny_counter);
    let mut agrees = true;
    if want.modes[d] != ep.modes[d] || want.any_ports[d] != ep.any_ports[d] {
        agrees = false;
        check.notes.push(format!(
            "{node}'s entry for {pod} says {} {}, should be {}",
            side.direction,
            mode_name(ep.modes[d]),
            mode_name(want.modes[d])
        ));
    }
    if ep.modes[d] != twill_abi::policy::MODE_OPEN {
        let expected = table_entries(ep.table, policy);
        // Only this direction's entries matter here.
        let scope = twill_abi::policy::scope(ep.table, side.direction.index());
        let expected = twill_policy::entries::TableEntries {
            peers: expected
                .peers
                .into_iter()
                .filter(|((_, k), _)| k.scope == scope)
                .collect(),
            ports: expected
                .ports
                .into_iter()
                .filter(|((_, k), _)| k.scope == scope)
                .collect(),
        };
        let peers: Vec<_> = maps
            .peers
            .iter()
            .filter(|((_, k), _)| k.scope == scope)
            .copied()
            .collect();
        let ports: Vec<_> = maps
            .ports
            .iter()
            .filter(|((_, k), _)| k.scope == scope)
            .copied()
            .collect();
        for difference in table_differences(&expected, ep.table, &peers, &ports) {
            agrees = false;
            check.notes.push(format!(
                "{node}, table {} {}: {difference}",
                ep.table, side.direction
            ));
        }
        let bits = live_bits(
            ep,
            &maps.peers,
            &maps.ports,
            side.direction,
            peer,
            protocol,
            port,
        );
        let live_passes = bits != 0 || ep.modes[d] == twill_abi::policy::MODE_AUDIT;
        if live_passes != side.decision.passes() {
            agrees = false;
            check.notes.push(format!(
                "{node}'s maps {} this connection, the policies {} it",
                if live_passes { "allow" } else { "deny" },
                if side.decision.passes() {
                    "allow"
                } else {
                    "deny"
                },
            ));
        }
        check.notes.push(format!(
            "{node}: table {}, {} peer and {} port entries in {}",
            ep.table,
            peers.len(),
            ports.len(),
            side.direction
        ));
    }
    check.agrees = Some(agrees);
    check
}

fn mode_name(m: u8) -> &'static str {
    match m {
        twill_abi::policy::MODE_OPEN => "open",
        twill_abi::policy::MODE_ENFORCE => "enforce",
        twill_abi::policy::MODE_AUDIT => "audit",
        _ => "unknown",
    }
}

fn end_name(e: &twill_policy::explain::End) -> String {
    match (&e.pod, &e.node) {
        (Some(p), Some(n)) => format!("{p} ({}, {n})", e.ip),
        _ => format!("{} (not a pod)", e.ip),
    }
}

fn print_verdict(v: &Verdict) {
    let w = &v.why;
    let proto = twill_policy::protocol_name(w.protocol);
    let port = if twill_policy::has_ports(w.protocol) {
        format!(":{}", w.port)
    } else {
        String::new()
    };
    if let Some(s) = &v.service {
        println!("through Service {s}, to backend {}{port}", w.to.ip);
    }
    println!(
        "{} -> {}{port} {proto}: {}",
        end_name(&w.from),
        end_name(&w.to),
        if w.allowed { "ALLOWED" } else { "DENIED" }
    );
    for (label, side) in [
        ("egress of the client", &w.egress),
        ("ingress of the server", &w.ingress),
    ] {
        match side {
            None => println!("  {label}: not a pod, no policy applies"),
            Some(s) => print_side(label, s),
        }
    }
    for l in &v.live {
        let state = match l.agrees {
            Some(true) => "maps agree",
            Some(false) => "MAPS DIFFER",
            None => "maps not checked",
        };
        println!("  {} ({} {}): {state}", l.node, l.pod, l.direction);
        for n in &l.notes {
            println!("    {n}");
        }
    }
    if let Some(f) = &v.fqdn {
        crate::why_fqdn::print(f);
    }
    for c in &v.counted {
        println!("  counted on {c}");
    }
}

fn print_side(label: &str, s: &Side) {
    use twill_policy::Decision;
    let pod = s.pod.pod.as_deref().unwrap_or("?");
    let policies = || {
        s.isolated_by
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let verdict = match &s.decision {
        Decision::Open => format!("open: no NetworkPolicy selects {pod} for {}", s.direction),
        Decision::Allowed { .. } => format!("allowed (enforced by {})", policies()),
        Decision::Denied => format!(
            "denied: isolated for {} by {}, and no rule matches",
            s.direction,
            policies()
        ),
        Decision::AuditAllowed { .. } => {
            format!("allowed; audit only ({} would allow it)", policies())
        }
        Decision::AuditDenied => format!(
            "allowed, but audit policies {} would deny it (counted as would-be denied)",
            policies()
        ),
    };
    println!("  {label} {pod}: {verdict}");
    if let Some(e) = &s.exempt {
        println!("    but {e}");
    }
    if let Some(e) = &s.error {
        println!("    table not compiled: {e}");
    }
    for (i, m) in s.matches.iter().enumerate() {
        println!(
            "    {} {}: {}, {}",
            if i == 0 { "rule" } else { "also" },
            m.rule,
            m.peer,
            m.ports
        );
    }
    if !s.shadowed_audits.is_empty() {
        let a: Vec<String> = s.shadowed_audits.iter().map(ToString::to_string).collect();
        println!(
            "    audit policies {} change nothing here: enforced ones isolate the pod",
            a.join(", ")
        );
    }
}

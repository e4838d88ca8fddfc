//! `netctl bpf`: what a node's eBPF maps hold, read from their pins: Service frontends and
//! backends, conntrack, and the per-reason packet counters (every drop has a reason).

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use twill_abi::lb::{
    FLOW_NODE_PORT, FLOW_SNAT, FRONTEND_AFFINITY, FRONTEND_LOCAL, IPPROTO_TCP, SCOPE_NODE_PORT,
    SCOPE_NODE_PORT_INTERNAL,
};
use twill_lab::Manifest;

#[derive(Subcommand)]
pub enum BpfCommand {
    /// Service frontends and the backends they balance to.
    Services(Target),
    /// Flows pinned to a backend.
    Conntrack(Target),
    /// Packets and bytes by direction and reason.
    Metrics(Target),
    /// NetworkPolicy: each local pod's table and modes, denials, per-rule counters and
    /// map fill (names and counters from the node's daemon).
    Policy(Target),
    /// FQDNPolicy: the addresses twill-dnsd learned for each pod, the names behind them,
    /// and how long they hold for new flows.
    Fqdn(Target),
}

#[derive(Args)]
pub struct Target {
    /// A lab node (with --lab); its pins are under the lab's bpffs directory.
    #[arg(long)]
    node: Option<String>,
    #[arg(long, default_value = crate::lab::DEFAULT_LAB)]
    lab: String,
    /// The pin directory on a real node.
    #[arg(long, default_value = "/sys/fs/bpf/twill")]
    pin_dir: PathBuf,
}

impl Target {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        match &self.node {
            None => Ok(twill_api::DEFAULT_SOCKET.into()),
            Some(node) => {
                let m = Manifest::load(&self.lab)?;
                let host = m
                    .host(node)
                    .with_context(|| format!("lab {} has no node {node}", self.lab))?;
                Ok(twill_lab::workload::DaemonPaths::of(&host).socket)
            }
        }
    }

    fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.node {
            None => Ok(self.pin_dir.clone()),
            Some(node) => {
                let m = Manifest::load(&self.lab)?;
                let host = m
                    .host(node)
                    .with_context(|| format!("lab {} has no node {node}", self.lab))?;
                Ok(host.bpffs_dir)
            }
        }
    }
}

fn ip(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(wire.to_ne_bytes())
}

fn port(wire: u16) -> u16 {
    u16::from_be_bytes(wire.to_ne_bytes())
}

fn proto(p: u8) -> &'static str {
    if p == IPPROTO_TCP { "TCP" } else { "UDP" }
}

pub fn run(cmd: BpfCommand) -> anyhow::Result<()> {
    match cmd {
        BpfCommand::Policy(t) => policy(&t)?,
        BpfCommand::Fqdn(t) => {
            let dir = t.pin_dir()?;
            let mut learned = twill_bpf::read_fqdn(&dir)?;
            learned.sort_by_key(|l| (u32::from_be(l.key.pod_ip), u32::from_be(l.key.peer_ip)));
            let now = twill_bpf::monotonic_ns() as f64 / 1e9;
            println!(
                "{:<16} {:<16} {:<32} {:>6} {:>9} PORTS",
                "POD", "ADDRESS", "NAME", "TTL", "HOLDS"
            );
            for l in learned {
                let a = &l.allow;
                let holds = a.expires_ns as f64 / 1e9 - now;
                let ports = if a.any_port != 0 {
                    "any".to_owned()
                } else {
                    a.ports[..usize::from(a.port_count)]
                        .iter()
                        .map(|p| {
                            let range = if p.lo == p.hi {
                                p.lo.to_string()
                            } else {
                                format!("{}-{}", p.lo, p.hi)
                            };
                            format!("{range}/{}", twill_policy::protocol_name(p.protocol))
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:<16} {:<16} {:<32} {:>5}s {:>9} {}",
                    ip(l.key.pod_ip),
                    ip(l.key.peer_ip),
                    l.name.as_deref().unwrap_or("?"),
                    a.ttl,
                    if holds > 0.0 {
                        format!("{holds:.0}s")
                    } else {
                        "expired".to_owned()
                    },
                    ports
                );
            }
        }
        BpfCommand::Services(t) => {
            let dir = t.pin_dir()?;
            let entries = twill_bpf::read_services(&dir)?;
            println!(
                "{:<24} {:<6} {:<11} {:<9} BACKENDS",
                "FRONTEND", "PROTO", "SERVICE-ID", "AFFINITY"
            );
            for e in entries {
                let backends: Vec<String> = e
                    .backends
                    .iter()
                    .map(|b| format!("{}:{}", ip(b.ip), port(b.port)))
                    .collect();
                let mut affinity = if e.frontend.flags & FRONTEND_AFFINITY != 0 {
                    format!("{}s", e.frontend.affinity_timeout)
                } else {
                    "-".to_owned()
                };
                if e.frontend.flags & FRONTEND_LOCAL != 0 {
                    affinity.push_str(",local");
                }
                println!(
                    "{:<24} {:<6} {:<11} {:<9} {}",
                    if e.key.scope == SCOPE_NODE_PORT {
                        format!("<node>:{} NodePort", port(e.key.port))
                    } else if e.key.scope == SCOPE_NODE_PORT_INTERNAL {
                        format!("<node>:{} internal", port(e.key.port))
                    } else {
                        format!("{}:{}", ip(e.key.ip), port(e.key.port))
                    },
                    proto(e.key.protocol),
                    e.frontend.service_id,
                    affinity,
                    if backends.is_empty() {
                        "<none: refused>".to_owned()
                    } else {
                        backends.join(",")
                    }
                );
            }
        }
        BpfCommand::Conntrack(t) => {
            let dir = t.pin_dir()?;
            let mut flows = twill_bpf::read_conntrack(&dir)?;
            flows.sort_by_key(|(k, _)| (u32::from_be(k.src_ip), u16::from_be(k.src_port)));
            println!(
                "{:<22} {:<22} {:<22} {:<6} VIA",
                "CLIENT", "FRONTEND", "BACKEND", "PROTO"
            );
            for (k, f) in flows {
                let via = if f.flags & FLOW_SNAT != 0 {
                    format!("NodePort, from {}:{}", ip(f.snat_ip), port(f.snat_port))
                } else if f.flags & FLOW_NODE_PORT != 0 {
                    "NodePort, client address kept".to_owned()
                } else {
                    "ClusterIP".to_owned()
                };
                println!(
                    "{:<22} {:<22} {:<22} {:<6} {}",
                    format!("{}:{}", ip(k.src_ip), port(k.src_port)),
                    format!("{}:{}", ip(f.frontend_ip), port(f.frontend_port)),
                    format!("{}:{}", ip(f.backend_ip), port(f.backend_port)),
                    proto(k.protocol),
                    via
                );
            }
        }
        BpfCommand::Metrics(t) => {
            let dir = t.pin_dir()?;
            let metrics = twill_bpf::read_metrics(&dir)?;
            println!(
                "{:<13} {:<26} {:>12} {:>16}",
                "DIRECTION", "REASON", "PACKETS", "BYTES"
            );
            for row in metrics.rows.iter().filter(|r| r.packets > 0) {
                let verdict = if row.reason.is_drop() { " (drop)" } else { "" };
                println!(
                    "{:<13} {:<26} {:>12} {:>16}",
                    row.direction.name(),
                    format!("{}{verdict}", row.reason.name()),
                    row.packets,
                    row.bytes
                );
            }
        }
    }
    Ok(())
}

fn policy(t: &Target) -> anyhow::Result<()> {
    let socket = t.socket()?;
    let report = match twill_api::call(
        &socket,
        &twill_api::Request::Policy,
        std::time::Duration::from_secs(5),
    ) {
        Ok(twill_api::Response::Policy { report }) => report,
        Ok(twill_api::Response::Error { message, .. }) => anyhow::bail!("the daemon: {message}"),
        Ok(other) => anyhow::bail!("the daemon answered {other:?}"),
        Err(e) => {
            // The maps alone: no names, no counters.
            let maps = twill_bpf::read_policy(&t.pin_dir()?)?;
            println!(
                "the daemon at {} is not reachable ({e}): entries only, without names",
                socket.display()
            );
            println!(
                "{:<16} {:>6} {:<8} {:<8}",
                "IP", "TABLE", "INGRESS", "EGRESS"
            );
            for (wire, ep) in &maps.endpoints {
                println!(
                    "{:<16} {:>6} {:<8} {:<8}",
                    ip(*wire).to_string(),
                    ep.table,
                    mode(ep.modes[0]),
                    mode(ep.modes[1])
                );
            }
            println!(
                "{} peer entries, {} port entries, {} rule slots",
                maps.peers.len(),
                maps.ports.len(),
                maps.slots.len()
            );
            return Ok(());
        }
    };
    println!(
        "{:<28} {:<16} {:>6} {:<8} {:<8} {:>14}  ISOLATED BY (INGRESS; EGRESS)",
        "POD", "IP", "TABLE", "INGRESS", "EGRESS", "DENIED IN/EG"
    );
    let mut pods = report.pods.clone();
    pods.sort_by(|a, b| a.pod.cmp(&b.pod).then(a.ip.cmp(&b.ip)));
    for p in &pods {
        println!(
            "{:<28} {:<16} {:>6} {:<8} {:<8} {:>14}  {}; {}",
            p.pod.as_deref().unwrap_or("<unknown>"),
            p.ip.to_string(),
            p.table,
            p.modes[0],
            p.modes[1],
            format!("{}/{}", p.denied[0], p.denied[1]),
            none_if_empty(&p.isolated_by[0]),
            none_if_empty(&p.isolated_by[1]),
        );
    }
    println!();
    println!("{:<48} {:>12}", "RULE", "ALLOWED");
    for r in &report.rules {
        println!(
            "{:<48} {:>12}",
            format!("{} {}[{}]", r.policy, r.direction, r.rule),
            r.allowed
        );
    }
    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>7}",
        "MAP", "ENTRIES", "CAPACITY", "FILL"
    );
    for m in &report.status.maps {
        println!(
            "{:<18} {:>10} {:>10} {:>6.1}%",
            m.name,
            m.entries,
            m.capacity,
            m.ratio() * 100.0
        );
    }
    if !report.status.synced {
        println!("\nnot synced with the store yet: new pods are denied both ways");
    }
    for p in &report.status.problems {
        println!("problem: {p}");
    }
    Ok(())
}

fn none_if_empty(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(",")
    }
}

fn mode(m: u8) -> &'static str {
    match m {
        twill_abi::policy::MODE_OPEN => "open",
        twill_abi::policy::MODE_ENFORCE => "enforce",
        twill_abi::policy::MODE_AUDIT => "audit",
        _ => "?",
    }
}

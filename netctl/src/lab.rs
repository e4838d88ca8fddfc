//! `netctl lab`: bring a local lab up, show it, run commands on its hosts, take it down.

use std::{
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use nix::sys::signal::{SigSet, Signal};
use twill_lab::{Lab, LabSpec, Manifest, Role};

/// Name used when `--name` is not given.
const DEFAULT_LAB: &str = "twill";

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a lab: an underlay LAN, N node namespaces, external hosts and etcd.
    Up {
        /// Lab name (lower-case letters, digits, '-').
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Number of external (non-node) hosts on the underlay.
        #[arg(long, default_value_t = 1)]
        externals: u8,
        /// Stay in the foreground and take the lab down on Ctrl-C or SIGTERM. If this
        /// process is killed instead, `netctl lab cleanup` removes the lab.
        #[arg(long)]
        hold: bool,
        /// Serve etcd over TLS with client certificates (made with openssl, kept in the
        /// lab's state directory).
        #[arg(long)]
        etcd_tls: bool,
    },
    /// Remove a lab and everything it made.
    Down {
        #[arg(default_value = DEFAULT_LAB)]
        name: String,
    },
    /// Show a lab's hosts and etcd.
    Status {
        #[arg(default_value = DEFAULT_LAB)]
        name: String,
    },
    /// List the labs on this machine.
    List,
    /// Run a command on a lab host, e.g. `netctl lab exec node1 -- ip addr`.
    Exec {
        /// Host name: node1, node2, ..., ext1, ...
        host: String,
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove what killed runs left: labs whose owner process is gone, and lab
    /// namespaces, cgroups and bpffs pins that no lab claims.
    Cleanup {
        /// Also remove labs that are still in use, including `netctl lab up` ones.
        #[arg(long)]
        all: bool,
    },
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            name,
            nodes,
            externals,
            hold,
            etcd_tls,
        } => up(name, nodes, externals, hold, etcd_tls),
        LabCommand::Down { name } => {
            Lab::attach(&name)?.down()?;
            println!("lab {name} removed");
            Ok(())
        }
        LabCommand::Status { name } => {
            print_lab(&Manifest::load(&name)?);
            Ok(())
        }
        LabCommand::List => {
            let labs = Manifest::list();
            if labs.is_empty() {
                println!("no labs");
            }
            for m in labs {
                match m {
                    Ok(m) => println!(
                        "{:<18} {} nodes, {} hosts, {}",
                        m.plan.name,
                        m.plan.nodes().count(),
                        m.plan.hosts.len(),
                        lab_state(&m)
                    ),
                    Err(e) => println!("unreadable: {e}"),
                }
            }
            Ok(())
        }
        LabCommand::Exec { host, lab, command } => exec(&lab, &host, &command),
        LabCommand::Cleanup { all } => {
            let report = twill_lab::cleanup(all);
            for lab in &report.labs {
                println!("removed lab {lab}");
            }
            for orphan in &report.orphans {
                println!("removed orphaned {orphan}");
            }
            if report.labs.is_empty() && report.orphans.is_empty() {
                println!("nothing to clean up");
            }
            if !report.problems.is_empty() {
                bail!("cleanup left problems:\n  {}", report.problems.join("\n  "));
            }
            Ok(())
        }
    }
}

fn up(name: String, nodes: u8, externals: u8, hold: bool, etcd_tls: bool) -> anyhow::Result<()> {
    // Block the signals before any thread starts, so every thread inherits the mask and
    // `--hold` receives them below instead of dying mid-build.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if hold {
        signals
            .thread_block()
            .context("blocking SIGINT and SIGTERM")?;
    }
    let lab = Lab::up(&LabSpec {
        name,
        nodes,
        externals,
        persistent: !hold,
        etcd_tls,
    })?;
    print_lab(lab.manifest());
    if !hold {
        println!(
            "\nthe lab stays up; `netctl lab exec node1 -- ip addr` runs a command on a node, \
             `netctl lab down {}` removes it",
            lab.name()
        );
        lab.persist();
        return Ok(());
    }
    println!("\nholding the lab; Ctrl-C takes it down");
    let _ = std::io::stdout().flush();
    let signal = signals.wait().context("waiting for a signal")?;
    println!("{signal:?}: taking lab {} down", lab.name());
    lab.down()?;
    Ok(())
}

fn lab_state(m: &Manifest) -> &'static str {
    if m.is_stale() {
        "stale (its owner is gone; `netctl lab cleanup` removes it)"
    } else if !m.ready {
        "starting"
    } else if m.owner.is_some() {
        "up (held by a process)"
    } else {
        "up"
    }
}

fn print_lab(m: &Manifest) {
    println!("lab {}: {}", m.plan.name, lab_state(m));
    println!(
        "etcd: {} (netns {}, data in {})",
        m.etcd_endpoint(),
        m.plan.underlay_netns,
        m.state_dir.join("etcd").display()
    );
    println!();
    println!(
        "{:<8} {:<9} {:<14} {:<24} BPFFS PINS",
        "HOST", "ROLE", "UNDERLAY IP", "NETNS"
    );
    for host in m.hosts() {
        let role = match host.plan.role {
            Role::Node => "node",
            Role::External => "external",
        };
        let pins = if host.plan.role == Role::Node {
            host.bpffs_dir.display().to_string()
        } else {
            "-".to_owned()
        };
        println!(
            "{:<8} {:<9} {:<14} {:<24} {}",
            host.plan.name, role, host.plan.underlay_ip, host.plan.netns, pins
        );
    }
}

fn exec(lab: &str, host: &str, command: &[String]) -> anyhow::Result<()> {
    let manifest = Manifest::load(lab)?;
    let Some(host) = manifest.host(host) else {
        let names: Vec<_> = manifest
            .plan
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        bail!(
            "lab {lab} has no host {host}; its hosts are {}",
            names.join(", ")
        );
    };
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut child = host.spawn(cmd)?;
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"))?;
    std::process::exit(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    );
}

//! `netctl`: the operator's command line for twill.
#![forbid(unsafe_code)]

mod apply;
mod bgp;
mod bpf;
mod describe;
mod export;
mod get;
mod lab;
mod monitor;
mod nodes;
mod status;
mod store;
mod why;
mod why_fqdn;

use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "netctl", version, about = "Operate a twill cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A local multi-node cluster on network namespaces, with its own etcd.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Store Kubernetes objects (Namespace, Pod, Service, EndpointSlice, NetworkPolicy,
    /// FQDNPolicy, BGPPeer) from YAML.
    Apply(apply::ApplyArgs),
    /// Remove the objects named in YAML files from the store.
    Delete(apply::DeleteArgs),
    /// Show what the cluster's store says, as kubectl shows it: nodes, namespaces, pods,
    /// services, endpoints, endpointslices, networkpolicies, fqdnpolicies, bgppeers.
    Get(get::GetArgs),
    /// A Service (endpoints per node, whether the nodes' frontends match) or a pod (node,
    /// address, programs, Services it backs, policies selecting it) in full.
    Describe(describe::DescribeArgs),
    /// Show what a node's eBPF maps hold: services, conntrack, metrics, policy.
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
    /// BGP sessions of the nodes in the BGP-routed mode: `netctl bgp peers [--node N]`.
    #[command(subcommand)]
    Bgp(bgp::BgpCommand),
    /// Whether a connection is allowed by NetworkPolicy, the rules behind the verdict, and
    /// whether the nodes' maps agree.
    Why(why::WhyArgs),
    /// Flow records from the nodes' daemons: connections, drops and refusals with pod,
    /// Service and policy names; filters, `-f` to follow, `-o json`, `--top`.
    Monitor(monitor::MonitorArgs),
    /// The whole cluster on one screen: nodes (ready, lease, etcd, peers, version,
    /// programs, map fill, flow records), object counts, recent drops by reason, and
    /// what is wrong in words; `-o json`.
    Status(status::StatusArgs),
    /// Write everything twill keeps in etcd (objects, claims, subnet leases, node and pod
    /// records), read at one revision, to a checksummed file.
    Export(export::ExportArgs),
    /// Restore a `netctl export` file into the store, without a claim held twice.
    Import(export::ImportArgs),
    /// A shell completion script: `source <(netctl completion bash)`.
    Completion { shell: clap_complete::Shell },
    /// The man page (roff) of netctl, or of one command (`netctl man get`), generated from
    /// this command line's definition: `netctl man | man -l -`.
    Man {
        /// A command, for its own page (netctl-COMMAND(1)).
        command: Option<String>,
    },
}

/// Writes netctl(1), or netctl-COMMAND(1), to stdout.
fn man(command: Option<&str>) -> anyhow::Result<()> {
    let cli = Cli::command();
    let page = match command {
        None => cli,
        Some(name) => {
            let sub = cli
                .get_subcommands()
                .find(|c| c.get_name() == name)
                .ok_or_else(|| anyhow::anyhow!("no command {name:?} (see netctl --help)"))?;
            sub.clone().name(format!("netctl-{name}"))
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(cmd) => lab::run(cmd),
        Command::Get(args) => get::run(args),
        Command::Describe(args) => describe::run(args),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "netctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { command } => man(command.as_deref()),
        Command::Bpf(cmd) => bpf::run(cmd),
        Command::Bgp(cmd) => bgp::run(cmd),
        Command::Apply(args) => apply::apply(args),
        Command::Delete(args) => apply::delete(args),
        Command::Why(args) => why::run(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Export(args) => export::export(args),
        Command::Import(args) => export::import(args),
        Command::Status(args) => status::run(args),
    };
    if let Err(e) = result {
        eprintln!("netctl: {e:#}");
        std::process::exit(1);
    }
}

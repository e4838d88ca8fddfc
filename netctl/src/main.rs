//! `netctl`: the operator's command line for twill.
#![forbid(unsafe_code)]

mod apply;
mod bpf;
mod get;
mod lab;
mod nodes;
mod store;
mod why;
mod why_fqdn;

use clap::{Parser, Subcommand};

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
    /// FQDNPolicy) from YAML.
    Apply(apply::ApplyArgs),
    /// Remove the objects named in YAML files from the store.
    Delete(apply::DeleteArgs),
    /// Show what the cluster's store says: nodes, pods, services, endpoints, networkpolicies,
    /// fqdnpolicies.
    #[command(subcommand)]
    Get(get::GetCommand),
    /// Show what a node's eBPF maps hold: services, conntrack, metrics, policy.
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
    /// Whether a connection is allowed by NetworkPolicy, the rules behind the verdict, and
    /// whether the nodes' maps agree.
    Why(why::WhyArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(cmd) => lab::run(cmd),
        Command::Get(cmd) => get::run(cmd),
        Command::Bpf(cmd) => bpf::run(cmd),
        Command::Apply(args) => apply::apply(args),
        Command::Delete(args) => apply::delete(args),
        Command::Why(args) => why::run(args),
    };
    if let Err(e) = result {
        eprintln!("netctl: {e:#}");
        std::process::exit(1);
    }
}

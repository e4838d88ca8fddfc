//! `netctl`: the operator's command line for twill.
#![forbid(unsafe_code)]

mod get;
mod lab;

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
    /// Show what the cluster's store says: nodes, pods.
    #[command(subcommand)]
    Get(get::GetCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(cmd) => lab::run(cmd),
        Command::Get(cmd) => get::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("netctl: {e:#}");
        std::process::exit(1);
    }
}

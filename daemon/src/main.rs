//! `twilld`, twill's node daemon. It carries the eBPF object inside its binary (through
//! `twill-bpf`), so a node needs nothing else to run the dataplane.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use twill_bpf::{Datapath, OBJECT};

#[derive(Parser)]
#[command(name = "twilld", version, about = "twill node daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every embedded eBPF program into this kernel, report what loaded, and unload
    /// them: a quick "will twill's dataplane run on this node" check.
    Check {
        /// bpffs directory for the maps' pins during the check (removed afterwards).
        #[arg(long, default_value = "/sys/fs/bpf/twill-check")]
        pin_dir: PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("twilld: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { pin_dir } => {
            let existed = pin_dir.exists();
            let loaded = Datapath::load(&pin_dir);
            // Only remove what the check itself created.
            if !existed {
                let _ = std::fs::remove_dir_all(&pin_dir);
            }
            loaded.with_context(|| {
                format!(
                    "the eBPF dataplane does not load on this kernel (pins in {})",
                    pin_dir.display()
                )
            })?;
            println!("embedded eBPF object: {} bytes", OBJECT.len());
            for program in twill_abi::programs::ALL {
                println!("loaded and verified: {program}");
            }
            println!("dataplane check passed");
            Ok(())
        }
    }
}

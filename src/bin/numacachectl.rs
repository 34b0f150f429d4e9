//! numacachectl: the command-line client of numa-cached.

use clap::{Parser, Subcommand};
use numa_cache::cli;

#[derive(Parser)]
#[command(
    name = "numacachectl",
    version,
    about = "Inspect and use the numa-cache service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the NUMA topology (nodes, CPUs, memory, distances, allowed sets, warnings).
    Topology(cli::topology::TopologyArgs),
    /// Check that pinning and memory placement work on this host (needs no daemon).
    Diagnose(cli::diagnose::DiagnoseArgs),
}

fn main() {
    let args = Cli::parse();
    let result = match &args.command {
        Command::Topology(a) => cli::topology::run(a),
        Command::Diagnose(a) => cli::diagnose::run(a),
    };
    match result {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("numacachectl: {e}");
            std::process::exit(1);
        }
    }
}

//! numacachectl: the command-line client of numa-cached.
//!
//! Tables for people, `--json` for scripts; errors are printed as one sentence and the exit
//! status is 1. `topology --fs-root` and `diagnose` need no daemon.

use clap::{Parser, Subcommand};
use numa_cache::cli;
use numa_cache::cli::bus::{self, BusCommand};

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
    /// Show the placement strategy, or `set NAME [--node N]` (polkit: set-strategy).
    Strategy(bus::StrategyArgs),
    /// Tune placement for a workload type (polkit: optimize).
    Optimize(bus::OptimizeArgs),
    /// Pin a process to a node and migrate its pages there (polkit: bind-process).
    BindProcess(bus::BindArgs),
    /// Cache statistics per node (--json, or --prometheus for node_exporter's textfile collector).
    Stats(bus::StatsArgs),
    /// Stored statistics over time.
    History(bus::HistoryArgs),
    /// Read a value (to stdout or --output FILE).
    Get(bus::GetArgs),
    /// Store a value (from FILE or stdin).
    Put(bus::PutArgs),
    /// Delete an entry.
    Delete(bus::EntryArgs),
    /// Show what is known of an entry without reading it.
    Lookup(bus::EntryArgs),
    /// Remove every entry of a namespace (polkit: manage-cache).
    Clear(bus::ClearArgs),
    /// Create, list or delete snapshots (polkit: manage-cache).
    Snapshot(bus::SnapshotArgs),
    /// Print the daemon's signals and property changes as they happen.
    Monitor,
}

fn main() {
    let args = Cli::parse();
    let result = match args.command {
        Command::Topology(a) => {
            if a.fs_root.is_some() {
                cli::topology::run(&a)
            } else {
                // Ask the daemon first: it sees the topology through its own cpuset.
                match bus::topology_from_daemon(a.json) {
                    Ok(Some(out)) => Ok(out),
                    Ok(None) => cli::topology::run(&a),
                    Err(e) => Err(e),
                }
            }
        }
        Command::Diagnose(a) => cli::diagnose::run(&a),
        Command::Strategy(a) => bus::run(&BusCommand::Strategy(a)),
        Command::Optimize(a) => bus::run(&BusCommand::Optimize(a)),
        Command::BindProcess(a) => bus::run(&BusCommand::BindProcess(a)),
        Command::Stats(a) => bus::run(&BusCommand::Stats(a)),
        Command::History(a) => bus::run(&BusCommand::History(a)),
        Command::Get(a) => bus::run(&BusCommand::Get(a)),
        Command::Put(a) => bus::run(&BusCommand::Put(a)),
        Command::Delete(a) => bus::run(&BusCommand::Delete(a)),
        Command::Lookup(a) => bus::run(&BusCommand::Lookup(a)),
        Command::Clear(a) => bus::run(&BusCommand::Clear(a)),
        Command::Snapshot(a) => bus::run(&BusCommand::Snapshot(a)),
        Command::Monitor => bus::run(&BusCommand::Monitor),
    };
    match result {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("numacachectl: {e}");
            std::process::exit(1);
        }
    }
}

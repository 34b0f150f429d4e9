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

/// `topology [--fs-root DIR | --fs-root=DIR] [--json]`, the form scripts run in loops,
/// read without building clap's tree of every command (which costs this command most of
/// its start-up: ~40 of its ~80 page faults); anything else, `--help` included, is clap's.
fn quick_topology(args: &[std::ffi::OsString]) -> Option<cli::topology::TopologyArgs> {
    let (first, rest) = args.get(1..)?.split_first()?;
    if first != "topology" {
        return None;
    }
    let mut out = cli::topology::TopologyArgs {
        fs_root: None,
        json: false,
    };
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--json" && !out.json {
            out.json = true;
        } else if a == "--fs-root" && out.fs_root.is_none() {
            out.fs_root = Some(it.next()?.into());
        } else if let Some(dir) = a.strip_prefix("--fs-root=") {
            if out.fs_root.is_some() || dir.is_empty() {
                return None;
            }
            out.fs_root = Some(dir.into());
        } else {
            return None;
        }
    }
    Some(out)
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match quick_topology(&argv) {
        Some(a) => Command::Topology(a),
        None => Cli::parse_from(argv).command,
    };
    let result = match command {
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

#[cfg(test)]
mod tests {
    use super::quick_topology;
    use std::ffi::OsString;

    fn quick(args: &[&str]) -> Option<(Option<String>, bool)> {
        let argv: Vec<OsString> = std::iter::once("numacachectl")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        quick_topology(&argv).map(|a| (a.fs_root.map(|p| p.to_string_lossy().into_owned()), a.json))
    }

    #[test]
    fn the_quick_topology_path_takes_only_the_plain_forms() {
        let d = Some("/cap".to_string());
        assert_eq!(quick(&["topology"]), Some((None, false)));
        assert_eq!(quick(&["topology", "--json"]), Some((None, true)));
        assert_eq!(
            quick(&["topology", "--fs-root", "/cap", "--json"]),
            Some((d.clone(), true))
        );
        assert_eq!(
            quick(&["topology", "--json", "--fs-root=/cap"]),
            Some((d.clone(), true))
        );
        assert_eq!(quick(&["topology", "--fs-root", "/cap"]), Some((d, false)));
        // Everything else is clap's, so that it is refused, or helped, as before.
        for other in [
            &["stats"][..],
            &[],
            &["topology", "--help"],
            &["topology", "--fs-root"],
            &["topology", "--fs-root="],
            &["topology", "--json", "--json"],
            &["topology", "--fs-root", "/a", "--fs-root", "/b"],
            &["topology", "--bogus"],
            &["topology", "extra"],
        ] {
            assert_eq!(quick(other), None, "{other:?}");
        }
    }
}

//! `numacachectl topology`: the readable table and the JSON of a topology.

use crate::cli::CliError;
use crate::topology::{self, Topology, format_cpulist};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of `numacachectl topology`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Read a captured tree (DIR/sys, DIR/proc, DIR/dev/cpuset) instead of this machine.
    #[arg(long, value_name = "DIR")]
    pub fs_root: Option<PathBuf>,
    /// Print the Topology JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Detect locally and render; returns what to print.
pub fn run(args: &TopologyArgs) -> Result<String, CliError> {
    let topology = match &args.fs_root {
        Some(dir) => {
            // A typo in DIR would otherwise show as "a kernel without NUMA": say it plainly.
            if !dir.join("sys").is_dir() {
                return Err(format!(
                    "{} has no sys/ folder: --fs-root wants the root of a captured tree \
                     (DIR/sys, DIR/proc), like lstopo --input",
                    dir.display()
                )
                .into());
            }
            topology::detect(dir)
        }
        None => topology::detect_live(),
    };
    if args.json {
        let mut out = topology.to_json_string_pretty();
        out.push('\n');
        Ok(out)
    } else {
        Ok(render_table(&topology))
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// The readable form: one line per node, the distance matrix, the allowed sets, warnings.
pub fn render_table(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NUMA: {}   nodes: {}   memory: {}   optimal strategy: {}",
        if t.numa_available {
            "available"
        } else {
            "not available"
        },
        t.nodes.len(),
        mib(t.total_memory_bytes()),
        topology::optimal_strategy(t)
    );
    out.push('\n');
    let rows: Vec<[String; 6]> = t
        .nodes
        .iter()
        .map(|n| {
            let mut kind = Vec::new();
            if !n.has_cpu {
                kind.push("no CPUs");
            }
            if !n.has_memory {
                kind.push("no memory");
            }
            if !n.allowed {
                kind.push("memory not allowed");
            }
            [
                n.node_id.to_string(),
                format!("{} [{}]", n.cpus.len(), format_cpulist(&n.cpus)),
                format_cpulist(&n.allowed_cpus),
                mib(n.memory_total_bytes),
                mib(n.memory_free_bytes),
                kind.join(", "),
            ]
        })
        .collect();
    let header = ["node", "cpus", "allowed cpus", "memory", "free", "notes"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }

    out.push_str("\ndistances:\n");
    let ids = t.node_ids();
    let cell = ids
        .iter()
        .map(|i| i.to_string().len())
        .chain(
            t.nodes
                .iter()
                .flat_map(|n| n.distances.values().map(|d| d.to_string().len())),
        )
        .max()
        .unwrap_or(1)
        .max(3);
    let _ = write!(out, "{:>cell$}", "");
    for id in &ids {
        let _ = write!(out, " {id:>cell$}");
    }
    out.push('\n');
    for n in &t.nodes {
        let _ = write!(out, "{:>cell$}", n.node_id);
        for id in &ids {
            match n.distances.get(id) {
                Some(d) => {
                    let _ = write!(out, " {d:>cell$}");
                }
                None => {
                    let _ = write!(out, " {:>cell$}", "?");
                }
            }
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\nallowed nodes: {}", format_cpulist(&t.allowed_nodes));
    let _ = writeln!(out, "allowed cpus:  {}", format_cpulist(&t.allowed_cpus));
    if !t.warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for w in &t.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

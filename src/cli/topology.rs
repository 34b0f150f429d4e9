//! `numacachectl topology`: the readable table and the JSON of a topology.

use crate::cli::CliError;
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
pub fn run(_args: &TopologyArgs) -> Result<String, CliError> {
    Err("topology reading is not built yet".into())
}

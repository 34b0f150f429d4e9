//! `numacachectl diagnose`: a check, needing no daemon, that placement works on this host.

use crate::cli::CliError;

/// Arguments of `numacachectl diagnose`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiagnoseArgs {
    /// Print JSON instead of a readable summary.
    #[arg(long)]
    pub json: bool,
}

/// Run the checks; returns what to print.
pub fn run(_args: &DiagnoseArgs) -> Result<String, CliError> {
    Err("diagnose is not built yet".into())
}

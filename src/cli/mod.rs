//! What `numacachectl` runs: bus subcommands through the `numa-cache-client` crate, and the
//! local ones (a captured or live topology, the placement diagnosis). Nothing here imports
//! the daemon's service, gateway, store or application layer, so the CLI links none of it.

pub mod bus;
pub mod diagnose;
pub mod render;
pub mod topology;

/// The error type of local subcommands: printed to stderr as one sentence, exit status 1.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

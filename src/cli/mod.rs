//! What `numacachectl` renders or runs without a daemon.

pub mod bus;
pub mod client;
pub mod diagnose;
pub mod render;
pub mod topology;

/// The error type of local subcommands: printed to stderr as one sentence, exit status 1.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

//! What `numacachectl` renders or runs without a daemon.

pub mod diagnose;
pub mod topology;

/// The error type of local subcommands: printed to stderr as one sentence, exit status 1.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

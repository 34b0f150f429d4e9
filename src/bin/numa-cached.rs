//! numa-cached: the org.opdbus.NumaCache system service.
//!
//! Logs to the journal when systemd started us (JOURNAL_STREAM set), else to stderr;
//! `RUST_LOG` sets the level (default info).

use clap::Parser;
use numa_cache::service::config::DaemonArgs;
use numa_cache::service::daemon;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[derive(Parser)]
#[command(
    name = "numa-cached",
    version,
    about = "The numa-cache system service (org.opdbus.NumaCache on the system bus)"
)]
struct Cli {
    #[command(flatten)]
    args: DaemonArgs,
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journal)
                    .init();
                return;
            }
            Err(e) => eprintln!("numa-cached: journald unreachable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    // Check the configuration before anything else so a bad value is the only message.
    if let Err(e) = cli.args.resolve() {
        eprintln!("numa-cached: {e}");
        std::process::exit(2);
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("numa-cached: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(daemon::run(&cli.args)) {
        tracing::error!("{e}");
        eprintln!("numa-cached: {e}");
        std::process::exit(1);
    }
}

//! numa-cached: the org.opdbus.NumaCache system service.
//!
//! Logs to the journal when systemd started us (JOURNAL_STREAM set), else to stderr
//! (`service::logging`); `RUST_LOG` sets the level (default info).

use clap::Parser;
use numa_cache::service::config::DaemonArgs;
use numa_cache::service::daemon;

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

fn main() {
    let cli = Cli::parse();
    // Check the configuration before anything else so a bad value is the only message.
    if let Err(e) = cli.args.resolve() {
        eprintln!("numa-cached: {e}");
        std::process::exit(2);
    }
    numa_cache::service::logging::init();
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

//! The daemon's logging: to the journal when systemd started us (`JOURNAL_STREAM` set), else
//! to stderr without colours; `RUST_LOG` sets the level (default info). In the journal,
//! informational lines carry priority 6 (tracing-journald's default would make them 5,
//! "notice"), and each line's values are in its message text, so a plain `journalctl -u
//! numa-cached` shows them. Audit lines (polkit decisions, failed admin calls) have target
//! `audit`, which the journal keeps in the `TARGET` field.

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// How tracing levels map to journal priorities: info is "informational" (6).
pub fn priorities() -> PriorityMappings {
    PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        ..PriorityMappings::new()
    }
}

/// Install the logger; call once, early.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal
                    .with_syslog_identifier("numa-cached".to_string())
                    .with_priority_mappings(priorities());
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
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_informational_and_the_rest_keeps_its_rank() {
        let p = priorities();
        assert_eq!(p.info, Priority::Informational);
        // The journal protocol's PRIORITY digit, as sent.
        assert_eq!(p.info as u8, b'6');
        assert_eq!(p.warn as u8, b'4');
        assert_eq!(p.error as u8, b'3');
        assert_eq!(p.debug as u8, b'7');
    }
}

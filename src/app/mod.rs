//! The application layer: every use case of numa-cache once, between the transports
//! (`service/` for D-Bus, `gateway/` for HTTP) and the engine (topology, placement, store).
//!
//! Each use case takes typed arguments and a [`Requester`] the front-end identified, and runs
//! the same steps in the same order (as systemd's hostnamed and timedated do): validate,
//! authorize (polkit, for admin actions), act (engine work on the blocking pool), emit (an
//! [`Event`], or a tick of the statistics watch). Errors are one [`AppError`], which each
//! front-end maps once.
//!
//! State owners: the topology and its generation are the watcher's (the app only forwards a
//! new generation to the engine and announces it); the strategy is the engine's (persisted),
//! read-modify-written here under one lock, with the workload type and affected processes the
//! app owns; the latency histograms are the app's.

pub mod authz;
pub mod budget;
pub mod error;
pub mod events;
pub mod gate;
pub mod stats;

mod data;
pub mod lease;
pub mod reads;
mod strategy;
mod topology;

pub use authz::{Action, Polkit, Requester, Subject, UnixProcess};
pub use data::{EntryView, PutArgs};
pub use error::{AppError, AppResult, Invalid, Refusal};
pub use events::{Event, StrategyView};
pub use stats::{CacheLatency, StatsReport};
pub use strategy::{BindReply, StrategyReply, check_start_config};
pub use topology::{NodeFigures, NodeHardware, node_arg};

use crate::placement::WorkloadType;
use crate::store::Cache;
use crate::topology::Topology;
use crate::topology::watcher::TopologyWatcher;
use gate::{Gate, GateGuard};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Limits enforced before the engine sees a value.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest value accepted (the engine's `max_value_bytes`).
    pub max_value_bytes: u64,
    /// The largest value returned inline by `Get`; larger ones need `GetFd`, because the
    /// system bus refuses messages over 32 MiB by default.
    pub max_inline_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 256 << 20,
            max_inline_bytes: 16 << 20,
        }
    }
}

/// What the app owns of the strategy (the engine owns the configuration itself).
#[derive(Debug, Default)]
struct StrategyState {
    workload_type: Option<WorkloadType>,
    affected_processes: u32,
}

/// The application: the engine, the topology source, polkit and what the app owns.
pub struct App {
    /// The engine; taken out by [`App::close`] so that it is dropped (a clean stop).
    cache: RwLock<Option<Arc<Cache>>>,
    watcher: Arc<TopologyWatcher>,
    fs_root: PathBuf,
    polkit: Polkit,
    limits: Limits,
    latency: Arc<CacheLatency>,
    gate: Gate,
    strategy: Mutex<StrategyState>,
    strategy_rmw: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Event>,
    stats_changed: watch::Sender<u64>,
    leases: lease::Leases,
    /// Room for reading large values (one owner: reads take and give it back).
    reads: reads::ReadGate,
}

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 256;

impl App {
    /// The application over an open engine. `watcher` owns the topology (read under
    /// `fs_root`), `polkit` answers for admin actions.
    pub fn new(
        cache: Cache,
        watcher: Arc<TopologyWatcher>,
        fs_root: impl Into<PathBuf>,
        polkit: Polkit,
        limits: Limits,
    ) -> App {
        App {
            cache: RwLock::new(Some(Arc::new(cache))),
            watcher,
            fs_root: fs_root.into(),
            polkit,
            limits,
            latency: Arc::default(),
            gate: Gate::default(),
            strategy: Mutex::new(StrategyState::default()),
            strategy_rmw: tokio::sync::Mutex::new(()),
            events: broadcast::channel(EVENT_BACKLOG).0,
            stats_changed: watch::channel(0).0,
            leases: lease::Leases::default(),
            // As for puts in flight (the engine's bound): many reads of the largest value.
            reads: reads::ReadGate::new(
                limits.max_value_bytes.saturating_mul(2).max(64 << 20),
                reads::READ_WAIT,
            ),
        }
    }

    /// The engine, or Unavailable once closed.
    pub fn cache(&self) -> AppResult<Arc<Cache>> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                AppError::Unavailable("numa-cached is shutting down; retry when it is back".into())
            })
    }

    /// Admit one call, or refuse it while shutting down.
    pub fn enter(&self) -> AppResult<GateGuard<'_>> {
        self.gate.enter()
    }

    /// Refuse new calls and wait (at most `limit`) for those inside; true when all finished.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.gate.close_and_drain(limit).await
    }

    /// Calls inside now.
    pub fn inflight(&self) -> usize {
        self.gate.inflight()
    }

    /// Close the engine: write back, mark the index clean and stop its thread, so that the
    /// next start does not check the cache as after a crash. Call after [`App::drain`].
    pub fn close(&self) -> AppResult<()> {
        let taken = self.cache.write().unwrap_or_else(|p| p.into_inner()).take();
        let Some(cache) = taken else { return Ok(()) };
        // A call still running after the drain limit keeps a reference: then flush what can
        // be flushed and let its last reference stop the engine.
        match Arc::try_unwrap(cache) {
            // Writes back, records the clean stop and waits for the engine's thread.
            Ok(cache) => Ok(cache.close()?),
            Err(shared) => {
                tracing::warn!(
                    "a call still holds the cache at stop; flushing, but the next start may check the cache"
                );
                Ok(shared.flush()?)
            }
        }
    }

    /// Size limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The data-plane latency histograms.
    pub fn latency(&self) -> &CacheLatency {
        &self.latency
    }

    /// Typed change events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A counter bumped whenever cache figures may have changed (puts, gets, deletes, clears,
    /// resets, and the engine's own evictions and expiry: [`App::follow_removals`]); a watch,
    /// so a slow reader sees one change for many.
    pub fn stats_changes(&self) -> watch::Receiver<u64> {
        self.stats_changed.subscribe()
    }

    fn emit(&self, event: Event) {
        // No subscriber (no D-Bus front-end) is fine.
        let _ = self.events.send(event);
    }

    fn stats_touched(&self) {
        self.stats_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The topology as of the latest generation (the watcher's; the one copy the front-ends
    /// read).
    pub fn topology(&self) -> Arc<Topology> {
        self.watcher.current()
    }

    /// The topology generation.
    pub fn generation(&self) -> u64 {
        self.watcher.generation()
    }

    fn fs_root(&self) -> &Path {
        &self.fs_root
    }

    /// Ask polkit whether `who` may perform `action` (it logs the decision as an audit line).
    async fn authorize(&self, who: &Requester, action: Action) -> AppResult<()> {
        self.polkit.check(who, action).await
    }

    /// Log a failed admin call as an audit line (who, what, result); polkit's own refusals
    /// are already logged by [`Polkit::check`].
    fn audited<T>(&self, who: &Requester, action: Action, result: AppResult<T>) -> AppResult<T> {
        if let Err(e) = &result {
            let by_polkit = matches!(
                e,
                AppError::AccessDenied(Refusal::NotAuthorized | Refusal::AuthorityUnavailable, _)
                    | AppError::AuthenticationRequired(_)
            );
            if !by_polkit {
                tracing::warn!(
                    target: "audit",
                    "{} failed for {}: {e}",
                    action.id(),
                    who.describe()
                );
            }
        }
        result
    }
}

/// Run engine work on the blocking pool, so a slow disk never stalls the async executor.
pub(crate) async fn blocking<T, F>(f: F) -> AppResult<T>
where
    F: FnOnce() -> AppResult<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(AppError::Unavailable(format!(
            "the engine failed while handling the call: {e}"
        ))),
    }
}

/// Why the state directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Another process holds the lock.
    #[error(
        "{dir} is in use by another numa-cached (it holds the lock on the directory): stop it, or give this one another --cache-dir"
    )]
    InUse {
        /// The state directory.
        dir: PathBuf,
    },
    /// The directory could not be made or opened.
    #[error("cannot open the state directory {dir}: {source}")]
    Open {
        /// The state directory.
        dir: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Take an exclusive lock on the state directory before the engine opens it, so a second
/// daemon on the same directory stops before it runs recovery on a live store. Hold the
/// returned file for as long as the engine runs (the lock goes with it, also on a crash).
pub fn lock_state_dir(dir: &Path) -> Result<File, StateDirError> {
    let open = |source| StateDirError::Open {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(open)?;
    let file = File::open(dir).map_err(open)?;
    match crate::policy::flock::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(StateDirError::InUse {
            dir: dir.to_path_buf(),
        }),
        Err(e) => Err(open(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_state_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock_state_dir(&state).unwrap();
        let e = lock_state_dir(&state).unwrap_err();
        assert!(matches!(e, StateDirError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("another numa-cached"), "{e}");
        drop(first);
        lock_state_dir(&state).unwrap();
    }
}

//! The D-Bus adapter: org.opdbus.NumaCache interfaces over the engine.
//!
//! Every method does the same four steps in the same order: parse and validate arguments,
//! check polkit, act (engine work on the blocking pool, never on the async executor), emit
//! the change. The engine never sees D-Bus; errors are mapped once, in `errors`.

pub mod cache;
pub mod caller;
pub mod config;
pub mod daemon;
pub mod errors;
pub mod gate;
pub mod node;
pub mod notify;
pub mod polkit;
pub mod stats;
pub mod strategy;
pub mod topology;

use crate::gateway::metrics::CacheLatency;
use crate::placement::StrategyConfig;
use crate::service::caller::CallerCache;
use crate::service::errors::{ServiceError, ServiceResult};
use crate::service::gate::{Gate, GateGuard};
use crate::service::polkit::Polkit;
use crate::store::{Cache, Caller};
use crate::topology::Topology;
use crate::topology::watcher::TopologyWatcher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use zbus::Connection;
use zbus::message::Header;

/// The well-known bus name.
pub const BUS_NAME: &str = "org.opdbus.NumaCache";
/// The root object: Topology, Strategy, CacheStats, Cache and the ObjectManager.
pub const ROOT_PATH: &str = "/org/opdbus/NumaCache";

/// The object path of node `id`'s child object.
pub fn node_path(id: u32) -> String {
    format!("{ROOT_PATH}/node{id}")
}

/// Limits the adapter enforces before the engine sees a value.
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

/// What every interface of the daemon shares: the engine, the topology watcher, polkit and
/// the bookkeeping of callers and in-flight calls.
pub struct Service {
    /// The cache engine.
    pub cache: Arc<Cache>,
    /// The source of topology generations.
    pub watcher: Arc<TopologyWatcher>,
    /// The bus connection the service is served on.
    pub conn: Connection,
    /// polkit on that bus.
    pub polkit: Polkit,
    /// Caller credentials by unique name.
    pub callers: CallerCache,
    /// Open while calls are taken; closed at SIGTERM.
    pub gate: Gate,
    /// Size limits.
    pub limits: Limits,
    /// What the last SetStrategy/Optimize/BindProcess reported as affected.
    pub affected_processes: AtomicU32,
    /// The workload type of the last Optimize ("" before any).
    pub workload_type: Mutex<String>,
    /// Get/GetFd and Put/PutFd latencies, shared with the HTTP gateway's /metrics and
    /// published in GetStats under `gateway::metrics::STATS_LATENCY_KEY`.
    pub latency: Arc<CacheLatency>,
}

impl Service {
    /// Assemble the shared state for a connection.
    pub fn new(
        cache: Arc<Cache>,
        watcher: Arc<TopologyWatcher>,
        conn: Connection,
        limits: Limits,
    ) -> Service {
        Service {
            cache,
            watcher,
            polkit: Polkit::new(conn.clone()),
            conn,
            callers: CallerCache::default(),
            gate: Gate::default(),
            limits,
            affected_processes: AtomicU32::new(0),
            workload_type: Mutex::new(String::new()),
            latency: Arc::default(),
        }
    }

    /// The topology the engine works with now.
    pub fn topology(&self) -> Arc<Topology> {
        self.watcher.current()
    }

    /// The active strategy.
    pub fn strategy(&self) -> StrategyConfig {
        self.cache.strategy()
    }

    /// Admit one call, or refuse it while shutting down.
    pub fn enter(&self) -> ServiceResult<GateGuard<'_>> {
        self.gate.enter()
    }

    /// The engine's view of the caller of `header`.
    pub async fn caller(&self, header: &Header<'_>) -> ServiceResult<Caller> {
        self.callers.caller(&self.conn, header).await
    }

    /// Record what the last strategy change affected.
    pub fn set_affected(&self, n: usize) {
        self.affected_processes
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Record the workload type of an Optimize.
    pub fn set_workload_type(&self, w: &str) {
        if let Ok(mut cur) = self.workload_type.lock() {
            *cur = w.to_string();
        }
    }

    /// The workload type of the last Optimize.
    pub fn workload_type(&self) -> String {
        self.workload_type
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }
}

/// Run engine work on the blocking pool, so a slow disk never stalls the bus.
pub async fn blocking<T, F>(f: F) -> ServiceResult<T>
where
    F: FnOnce() -> ServiceResult<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ServiceError::Unavailable(format!(
            "the engine failed while handling the call: {e}"
        ))),
    }
}

/// A node argument: -1 means none; otherwise it must be a node of the current topology.
pub fn parse_node_arg(topology: &Topology, node: i32, what: &str) -> ServiceResult<Option<u32>> {
    if node == -1 {
        return Ok(None);
    }
    let ids: Vec<String> = topology
        .nodes
        .iter()
        .map(|n| n.node_id.to_string())
        .collect();
    let known = u32::try_from(node)
        .ok()
        .filter(|id| topology.nodes.iter().any(|n| n.node_id == *id));
    known.map(Some).ok_or_else(|| {
        ServiceError::invalid(format!(
            "{what} {node} is not a NUMA node of this machine: use one of {} or -1 for none",
            ids.join(", ")
        ))
    })
}

/// Send one PropertiesChanged for `iface` at `path` carrying every property in `changed`
/// (zbus's generated `*_changed` helpers send one signal per property).
pub async fn emit_properties(
    conn: &Connection,
    path: &str,
    iface: &'static str,
    changed: std::collections::HashMap<&str, zbus::Variant<'_>>,
) -> zbus::Result<()> {
    let emitter = zbus::object_server::SignalEmitter::new(conn, path.to_string())?;
    zbus::fdo::Properties::properties_changed(
        &emitter,
        zbus::names::InterfaceName::from_static_str_unchecked(iface),
        changed,
        std::borrow::Cow::Borrowed(&[]),
    )
    .await
}

//! The daemon's life: connect to the system bus, serve every interface (then take the name),
//! publish topology and statistics changes, tell systemd we are ready and alive, and on
//! SIGTERM stop taking calls, let running calls finish, flush the engine and exit.

use crate::gateway::{self, GatewayHandle, GatewayState};
use crate::service::cache::CacheIface;
use crate::service::config::DaemonArgs;
use crate::service::node::{CacheFigures, NodeIface};
use crate::service::stats::StatsIface;
use crate::service::strategy::{StrategyIface, announce_strategy_change, record_strategy_change};
use crate::service::topology::TopologyIface;
use crate::service::{BUS_NAME, Limits, ROOT_PATH, Service, emit_properties, node_path, notify};
use crate::store::{Cache, StatsTotals};
use crate::topology::watcher::TopologyWatcher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use zbus::Variant;

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] crate::service::config::ConfigError),
    /// The engine could not open its state.
    #[error("cannot open the cache: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The bus could not be reached or the name taken.
    #[error(
        "D-Bus: {0} (is the system bus running, and may this user own {BUS_NAME}? see dbus/org.opdbus.NumaCache.conf)"
    )]
    Bus(#[from] zbus::Error),
    /// The HTTP gateway could not start.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    /// Something else at start-up.
    #[error("{0}")]
    Other(String),
}

/// How long SIGTERM waits for running calls before flushing anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// The topology is re-read this often even without hotplug events (containers get none).
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Statistics properties are compared and signalled at most this often.
const STATS_PERIOD: Duration = Duration::from_secs(1);

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(args: &DaemonArgs) -> Result<(), DaemonError> {
    let config = args.resolve()?;
    let limits = Limits {
        max_value_bytes: config.max_value_bytes,
        ..Limits::default()
    };
    let fs_root = args.fs_root.clone().unwrap_or_else(|| "/".into());
    let watcher = Arc::new(TopologyWatcher::start(fs_root, RESCAN_INTERVAL));
    let topology = watcher.current();
    // Said once: when the topology carries its own warning (NUMA missing), that line is it.
    if (!topology.numa_available || topology.nodes.len() < 2) && topology.warnings.is_empty() {
        tracing::info!(
            nodes = topology.nodes.len(),
            "no usable NUMA topology here: the cache works without NUMA placement"
        );
    }
    for w in &topology.warnings {
        tracing::warn!("topology: {w}");
    }
    let dir = config.dir.clone();
    let cache = tokio::task::spawn_blocking(move || Cache::open(config, topology))
        .await
        .map_err(|e| DaemonError::Other(format!("opening the cache failed: {e}")))??;
    let cache = Arc::new(cache);
    tracing::info!(dir = %dir.display(), btrfs = cache.btrfs(), strategy = %cache.strategy().strategy, "cache open");

    // Connect without a name, serve everything, and only then ask for the name, so a caller
    // activated by the name never finds a half-served object.
    let conn = zbus::connection::Builder::system().build().await?;
    let svc = Arc::new(Service::new(
        Arc::clone(&cache),
        Arc::clone(&watcher),
        conn.clone(),
        limits,
    ));
    let server = conn.object_server();
    server.at(ROOT_PATH, zbus::fdo::ObjectManager).await?;
    server
        .at(ROOT_PATH, TopologyIface::new(Arc::clone(&svc)))
        .await?;
    server
        .at(ROOT_PATH, StrategyIface::new(Arc::clone(&svc)))
        .await?;
    server
        .at(ROOT_PATH, StatsIface::new(Arc::clone(&svc)))
        .await?;
    server
        .at(ROOT_PATH, CacheIface::new(Arc::clone(&svc)))
        .await?;
    let mut nodes = BTreeSet::new();
    sync_node_objects(&svc, &mut nodes).await;
    // Bind the HTTP listeners before taking the name, so a bad --http-* flag or a busy
    // socket stops start-up instead of leaving a half-configured service running.
    let gateway = start_gateway(args, &svc)?;
    conn.request_name(BUS_NAME).await?;
    tracing::info!(name = BUS_NAME, "serving on the system bus");

    let topo_task = tokio::spawn(watch_topology(Arc::clone(&svc), nodes));
    let stats_task = tokio::spawn(publish_stats(Arc::clone(&svc)));
    let dog_task = notify::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = notify::notify("WATCHDOG=1");
            }
        })
    });
    if let Err(e) = notify::notify("READY=1\nSTATUS=serving org.opdbus.NumaCache") {
        tracing::warn!(error = %e, "could not notify systemd");
    }

    wait_for_stop().await?;
    tracing::info!("stopping: no new calls, finishing the running ones");
    let _ = notify::notify("STOPPING=1");
    if let Some(gw) = gateway {
        // Stop HTTP first: it finishes in-flight requests and removes its socket file.
        if let Err(e) = gw.shutdown().await {
            tracing::warn!(error = %e, "the HTTP gateway did not stop cleanly");
        }
    }
    let drained = svc.gate.close_and_drain(DRAIN_LIMIT).await;
    if !drained {
        tracing::warn!(
            inflight = svc.gate.inflight(),
            "calls still running after {DRAIN_LIMIT:?}; flushing anyway"
        );
    }
    let _ = conn.release_name(BUS_NAME).await;
    topo_task.abort();
    stats_task.abort();
    if let Some(t) = dog_task {
        t.abort();
    }
    tokio::task::spawn_blocking(move || cache.flush())
        .await
        .map_err(|e| DaemonError::Other(format!("flushing the cache failed: {e}")))??;
    tracing::info!("flushed; bye");
    Ok(())
}

/// Start the HTTP gateway when `--http-socket`/`--http-listen` ask for it (off by default).
/// It shares the service's engine, topology generation and latency histograms, and every
/// strategy change it makes is recorded and announced on the bus through the same functions
/// SetStrategy/Optimize use.
fn start_gateway(
    args: &DaemonArgs,
    svc: &Arc<Service>,
) -> Result<Option<GatewayHandle>, DaemonError> {
    let watcher = Arc::clone(&svc.watcher);
    let announcer = Arc::clone(svc);
    let state = GatewayState::new(
        Arc::clone(&svc.cache),
        move || watcher.generation(),
        Arc::clone(&svc.latency),
    )
    .on_strategy_change(move |change| {
        record_strategy_change(
            &announcer,
            change.affected_processes,
            change.workload_type.map(|w| w.as_str()),
        );
        let svc = Arc::clone(&announcer);
        tokio::spawn(async move { announce_strategy_change(&svc).await });
    });
    let handle = gateway::spawn(&args.gateway, state)?;
    if let Some(h) = &handle {
        tracing::info!(
            socket = ?h.socket_path(),
            tcp = ?h.tcp_addr(),
            "HTTP gateway listening"
        );
    }
    Ok(handle)
}

async fn wait_for_stop() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| DaemonError::Other(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| DaemonError::Other(format!("cannot handle SIGINT: {e}")))?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// Make the node objects match the current topology: new nodes appear (InterfacesAdded
/// through the ObjectManager), vanished ones go (InterfacesRemoved).
async fn sync_node_objects(svc: &Arc<Service>, have: &mut BTreeSet<u32>) {
    let want: BTreeSet<u32> = svc.topology().nodes.iter().map(|n| n.node_id).collect();
    let server = svc.conn.object_server();
    for gone in have.difference(&want).copied().collect::<Vec<_>>() {
        if let Err(e) = server.remove::<NodeIface, _>(node_path(gone)).await {
            tracing::warn!(node = gone, error = %e, "could not remove the node object");
        }
        have.remove(&gone);
    }
    for new in want.difference(have).copied().collect::<Vec<_>>() {
        match server
            .at(node_path(new), NodeIface::new(Arc::clone(svc), new))
            .await
        {
            Ok(_) => {
                have.insert(new);
            }
            Err(e) => tracing::warn!(node = new, error = %e, "could not add the node object"),
        }
    }
}

/// Follow the watcher: on each new generation hand the topology to the engine, update node
/// objects, and emit PropertiesChanged + TopologyChanged.
async fn watch_topology(svc: Arc<Service>, mut nodes: BTreeSet<u32>) {
    let mut seen = svc.watcher.generation();
    loop {
        let listener = svc.watcher.listen();
        if svc.watcher.generation() == seen {
            listener.await;
        }
        let generation = svc.watcher.generation();
        if generation == seen {
            continue;
        }
        seen = generation;
        let topology = svc.watcher.current();
        let cache = Arc::clone(&svc.cache);
        let t2 = Arc::clone(&topology);
        let _ = tokio::task::spawn_blocking(move || cache.update_topology(t2)).await;
        sync_node_objects(&svc, &mut nodes).await;
        let ids: Vec<u32> = topology.nodes.iter().map(|n| n.node_id).collect();
        tracing::info!(generation, nodes = ?ids, "topology changed");
        if let Err(e) = emit_topology_changed(&svc, generation, ids).await {
            tracing::warn!(error = %e, "could not signal the topology change");
        }
    }
}

async fn emit_topology_changed(svc: &Service, generation: u64, ids: Vec<u32>) -> zbus::Result<()> {
    let iface = svc
        .conn
        .object_server()
        .interface::<_, TopologyIface>(ROOT_PATH)
        .await?;
    let emitter = iface.signal_emitter();
    {
        let t = iface.get().await;
        t.numa_available_changed(emitter).await?;
        t.node_ids_changed(emitter).await?;
        t.allowed_cpus_changed(emitter).await?;
        t.allowed_nodes_changed(emitter).await?;
        t.total_memory_bytes_changed(emitter).await?;
        t.distances_changed(emitter).await?;
        t.optimal_strategy_changed(emitter).await?;
        t.generation_changed(emitter).await?;
    }
    TopologyIface::topology_changed(emitter, generation, ids).await?;
    // Node hardware properties may have changed too (CPUs offlined).
    for n in svc.topology().nodes.iter() {
        if let Ok(node) = svc
            .conn
            .object_server()
            .interface::<_, NodeIface>(node_path(n.node_id))
            .await
        {
            let e = node.signal_emitter();
            let g = node.get().await;
            g.cpus_changed(e).await?;
            g.has_cpu_changed(e).await?;
            g.has_memory_changed(e).await?;
            g.memory_total_bytes_changed(e).await?;
            g.distances_changed(e).await?;
        }
    }
    Ok(())
}

/// Once a second, compare the statistics with what was last signalled and send one
/// PropertiesChanged per object holding every property that moved.
async fn publish_stats(svc: Arc<Service>) {
    let mut last_totals: Option<StatsTotals> = None;
    let mut last_nodes: BTreeMap<u32, CacheFigures> = BTreeMap::new();
    let mut tick = tokio::time::interval(STATS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cache = Arc::clone(&svc.cache);
        let Ok(totals) = tokio::task::spawn_blocking(move || cache.totals()).await else {
            continue;
        };
        let mut changed: HashMap<&str, Variant<'_>> = HashMap::new();
        let prev = last_totals.as_ref();
        macro_rules! diff {
            ($field:ident, $name:literal) => {
                if prev.is_none_or(|p| p.$field != totals.$field) {
                    changed.insert($name, Variant::from(totals.$field));
                }
            };
        }
        diff!(entries, "Entries");
        diff!(logical_bytes, "LogicalBytes");
        diff!(stored_bytes, "StoredBytes");
        diff!(hits, "Hits");
        diff!(misses, "Misses");
        diff!(hit_rate, "HitRate");
        diff!(evictions, "Evictions");
        diff!(local_hit_ratio, "LocalHitRatio");
        // The first round only records the baseline: nothing changed yet for anyone.
        if prev.is_some() && !changed.is_empty() {
            let _ = emit_properties(
                &svc.conn,
                ROOT_PATH,
                "org.opdbus.NumaCache.CacheStats",
                changed,
            )
            .await;
        }
        last_totals = Some(totals);

        for n in svc.topology().nodes.iter() {
            let figures = NodeIface::new(Arc::clone(&svc), n.node_id).stats();
            let before = last_nodes.insert(n.node_id, figures);
            let Some(before) = before else { continue };
            if before == figures {
                continue;
            }
            let mut c: HashMap<&str, Variant<'_>> = HashMap::new();
            if before.entries != figures.entries {
                c.insert("CacheEntries", Variant::from(figures.entries));
            }
            if before.logical_bytes != figures.logical_bytes {
                c.insert("CacheBytes", Variant::from(figures.logical_bytes));
            }
            if before.memory_tier_bytes != figures.memory_tier_bytes {
                c.insert("MemoryTierBytes", Variant::from(figures.memory_tier_bytes));
            }
            if before.hit_rate != figures.hit_rate {
                c.insert("HitRate", Variant::from(figures.hit_rate));
            }
            let _ = emit_properties(
                &svc.conn,
                &node_path(n.node_id),
                "org.opdbus.NumaCache.Node",
                c,
            )
            .await;
        }
    }
}

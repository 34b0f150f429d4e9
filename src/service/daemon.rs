//! The daemon's life: check no other instance serves the name, lock the state directory, open
//! the engine, serve every interface (then take the name, without replacing anyone), follow
//! the application's events with signals, tell systemd we are ready and alive, and on
//! SIGTERM stop taking calls, let running calls finish and close the engine (a clean stop).
//! Losing the bus name is fatal.

use crate::app::authz::Polkit;
use crate::app::{App, Event, Limits, StateDirError, lock_state_dir};
use crate::gateway::{self, GatewayHandle, GatewayState};
use crate::service::cache::CacheIface;
use crate::service::config::DaemonArgs;
use crate::service::direct::DirectServer;
use crate::service::node::NodeIface;
use crate::service::stats::StatsIface;
use crate::service::strategy::{StrategyIface, announce_strategy};
use crate::service::topology::TopologyIface;
use crate::service::{BUS_NAME, ROOT_PATH, Service, emit_properties, iface, node_path, notify};
use crate::store::Cache;
use crate::topology::watcher::TopologyWatcher;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use zbus::Variant;
use zbus::fdo::{RequestNameFlags, RequestNameReply};

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] crate::service::config::ConfigError),
    /// A configured value does not fit this machine (e.g. a node preference it lacks).
    #[error("invalid configuration: {0}")]
    Invalid(crate::app::AppError),
    /// The state directory is another daemon's, or unusable.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The engine could not open its state.
    #[error("cannot open the cache: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The bus could not be reached or the name taken.
    #[error(
        "D-Bus: {0} (is the system bus running, and may this user own {BUS_NAME}? see dbus/org.opdbus.NumaCache.conf)"
    )]
    Bus(#[from] zbus::Error),
    /// Another process serves the bus name.
    #[error(
        "{BUS_NAME} is already served on this bus by process {owner}: numa-cached is running; stop it first (systemctl stop numa-cached) instead of starting a second one"
    )]
    AlreadyRunning {
        /// The owner's pid, or "unknown".
        owner: String,
    },
    /// The bus told us the name is no longer ours (NameLost).
    #[error("lost the bus name {BUS_NAME} (the bus sent NameLost); stopping")]
    NameLost,
    /// The connection to the bus ended (the bus daemon stopped or restarted): the name went
    /// with it.
    #[error(
        "lost the bus name {BUS_NAME}: the connection to the system bus ended (the bus daemon stopped or restarted); stopping"
    )]
    BusGone,
    /// The HTTP gateway could not start.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    /// Something else at start-up.
    #[error("{0}")]
    Other(String),
}

impl From<zbus::fdo::Error> for DaemonError {
    fn from(e: zbus::fdo::Error) -> DaemonError {
        DaemonError::Bus(e.into())
    }
}

/// How long SIGTERM waits for running calls before closing anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// The topology is re-read this often even without hotplug events (containers get none).
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Statistics properties are signalled at most this often.
const STATS_PERIOD: Duration = Duration::from_secs(1);

/// The pid owning `BUS_NAME` on `conn`'s bus, when someone does.
async fn name_owner(dbus: &zbus::fdo::DBusProxy<'_>) -> Option<String> {
    let name = zbus::names::BusName::try_from(BUS_NAME).ok()?;
    let owner = dbus.get_name_owner(name).await.ok()?;
    let pid = dbus
        .get_connection_unix_process_id(owner.clone().into())
        .await
        .map_or_else(|_| "unknown".to_string(), |p| p.to_string());
    Some(format!("{pid} (connection {owner})"))
}

/// After this long opening the cache, the service manager hears that start-up goes on.
const OPEN_NOTE_AFTER: Duration = Duration::from_secs(1);
/// And again this often, each time asking for [`OPEN_EXTEND`] more.
const OPEN_NOTE_EVERY: Duration = Duration::from_secs(5);
const OPEN_EXTEND: Duration = Duration::from_secs(30);

/// Wait for the cache to open. An open can take long (recovery's scan after a crash, a
/// rebuild of a lost index: 12 s at 10M entries); while it runs, systemd is told so
/// (`EXTEND_TIMEOUT_USEC`, and a `STATUS` line with the time so far) and the journal gets a
/// line, so a start timeout does not kill a daemon that is working, into a restart loop.
async fn wait_for_open<T>(
    mut opening: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    let started = std::time::Instant::now();
    let mut next = tokio::time::Instant::now() + OPEN_NOTE_AFTER;
    loop {
        tokio::select! {
            done = &mut opening => return done,
            () = tokio::time::sleep_until(next) => {
                let s = started.elapsed().as_secs();
                tracing::info!("still opening the cache after {s} s (recovery or an index rebuild)");
                let _ = notify::notify(&format!(
                    "EXTEND_TIMEOUT_USEC={}\nSTATUS=opening the cache ({s} s so far)",
                    OPEN_EXTEND.as_micros()
                ));
                next += OPEN_NOTE_EVERY;
            }
        }
    }
}

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(args: &DaemonArgs) -> Result<(), DaemonError> {
    let config = args.resolve()?;
    let limits = Limits {
        max_value_bytes: config.max_value_bytes,
        ..Limits::default()
    };
    let fs_root = args.fs_root.clone().unwrap_or_else(|| "/".into());

    // Before anything touches the state: is the service already running on this bus?
    // Our own socket: it closes descriptors a message does not take, and a message whose
    // descriptors the kernel could not pass does not end the connection (issue 21).
    let conn = crate::service::bus_socket::connect_system().await?;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    if let Some(owner) = name_owner(&dbus).await {
        return Err(DaemonError::AlreadyRunning { owner });
    }

    let watcher = Arc::new(TopologyWatcher::start(fs_root.clone(), RESCAN_INTERVAL));
    let topology = watcher.current();
    crate::app::check_start_config(&config, &topology).map_err(DaemonError::Invalid)?;
    // Said once: when the topology carries its own warning (NUMA missing), that line is it.
    if (!topology.numa_available || topology.nodes.len() < 2) && topology.warnings.is_empty() {
        tracing::info!(
            "no usable NUMA topology here ({} nodes): the cache works without NUMA placement",
            topology.nodes.len()
        );
    }
    for w in &topology.warnings {
        tracing::warn!("topology: {w}");
    }
    // One daemon per state directory, checked before recovery could run on a live store.
    let state_lock = lock_state_dir(&config.dir)?;
    let dir = config.dir.clone();
    let opening = tokio::task::spawn_blocking(move || Cache::open(config, topology));
    let cache = wait_for_open(opening)
        .await
        .map_err(|e| DaemonError::Other(format!("opening the cache failed: {e}")))??;
    let s = cache.strategy();
    tracing::info!(
        "cache open in {} (btrfs: {}, strategy {}, node preference {}, memory policy {})",
        dir.display(),
        if cache.btrfs() { "yes" } else { "no" },
        s.strategy,
        s.node_preference
            .map_or_else(|| "none".to_string(), |n| n.to_string()),
        s.memory_policy
    );
    let app = Arc::new(App::new(
        cache,
        Arc::clone(&watcher),
        fs_root,
        Polkit::on(conn.clone()),
        limits,
    ));

    // Serve everything, and only then ask for the name, so a caller activated by the name
    // never finds a half-served object.
    let svc = Arc::new(Service::new(Arc::clone(&app), conn.clone()));
    let direct = DirectServer::new();
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
        .at(
            ROOT_PATH,
            CacheIface::with_direct(Arc::clone(&svc), Arc::clone(&direct)),
        )
        .await?;
    let mut nodes = BTreeSet::new();
    sync_node_objects(&svc, &mut nodes).await;
    // Bind the HTTP listeners before taking the name, so a bad --http-* flag or a busy
    // socket stops start-up instead of leaving a half-configured service running.
    let gateway = start_gateway(args, &app)?;
    let events = app.subscribe();
    let mut lost = dbus.receive_name_lost_with_args(&[(0, BUS_NAME)]).await?;
    // Never replace a running owner (the default would), and never wait in a queue.
    match conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await?
    {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {}
        RequestNameReply::Exists | RequestNameReply::InQueue => {
            let owner = name_owner(&dbus).await.unwrap_or_else(|| "unknown".into());
            return Err(DaemonError::AlreadyRunning { owner });
        }
    }
    tracing::info!("serving {BUS_NAME} on the system bus");

    let topo_task = tokio::spawn(Arc::clone(&app).follow_topology());
    let event_task = tokio::spawn(follow_events(Arc::clone(&svc), events, nodes));
    let stats_task = tokio::spawn(publish_stats(Arc::clone(&svc)));
    let removals_task = tokio::spawn(Arc::clone(&app).follow_removals());
    let dog_task = notify::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = notify::notify("WATCHDOG=1");
            }
        })
    });
    if let Err(e) = notify::notify("READY=1\nSTATUS=serving org.opdbus.NumaCache") {
        tracing::warn!("could not notify systemd: {e}");
    }

    let outcome = tokio::select! {
        r = wait_for_stop() => r,
        // Never replaced (no ALLOW_REPLACEMENT), the name can still go: the bus ends our
        // connection, or says NameLost. A daemon nobody can reach must not keep running.
        lost = lost.next() => Err(match lost {
            Some(_) => DaemonError::NameLost,
            None => {
                let (open, limit) = crate::service::bus_socket::descriptors();
                tracing::info!("numa-cached had {open} file descriptors open (limit {limit}) when the bus connection ended");
                DaemonError::BusGone
            }
        }),
    };
    match &outcome {
        Ok(()) => tracing::info!("stopping: no new calls, finishing the running ones"),
        Err(e) => tracing::error!("{e}"),
    }
    let _ = notify::notify("STOPPING=1");
    if let Some(gw) = gateway {
        // Stop HTTP first: it finishes in-flight requests and removes its socket file.
        if let Err(e) = gw.shutdown().await {
            tracing::warn!("the HTTP gateway did not stop cleanly: {e}");
        }
    }
    if !app.drain(DRAIN_LIMIT).await {
        tracing::warn!(
            "{} calls still running after {} s; closing anyway",
            app.inflight(),
            DRAIN_LIMIT.as_secs()
        );
    }
    // Running direct calls have finished (or the drain gave up): close the connections.
    direct.close_all().await;
    let _ = conn.release_name(BUS_NAME).await;
    for t in [topo_task, event_task, stats_task, removals_task] {
        t.abort();
    }
    if let Some(t) = dog_task {
        t.abort();
    }
    let closing = Arc::clone(&app);
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| DaemonError::Other(format!("closing the cache failed: {e}")))?
        .map_err(|e| DaemonError::Other(format!("closing the cache failed: {e}")))?;
    drop(state_lock);
    outcome?;
    tracing::info!("cache closed cleanly; bye");
    Ok(())
}

/// Start the HTTP gateway when `--http-socket`/`--http-listen` ask for it (off by default),
/// over the same application (its polkit client uses the daemon's bus connection).
fn start_gateway(args: &DaemonArgs, app: &Arc<App>) -> Result<Option<GatewayHandle>, DaemonError> {
    let handle = gateway::spawn(&args.gateway, GatewayState::new(Arc::clone(app)))?;
    if let Some(h) = &handle {
        let socket = h
            .socket_path()
            .map_or_else(|| "none".to_string(), |p| p.display().to_string());
        let tcp = h
            .tcp_addr()
            .map_or_else(|| "none".to_string(), |a| a.to_string());
        tracing::info!("HTTP gateway listening on socket {socket}, TCP {tcp}");
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
    let want: BTreeSet<u32> = svc.app.topology().nodes.iter().map(|n| n.node_id).collect();
    let server = svc.conn.object_server();
    for gone in have.difference(&want).copied().collect::<Vec<_>>() {
        if let Err(e) = server.remove::<NodeIface, _>(node_path(gone)).await {
            tracing::warn!("could not remove the object of node {gone}: {e}");
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
            Err(e) => tracing::warn!("could not add the object of node {new}: {e}"),
        }
    }
}

/// Turn the application's events into D-Bus objects and signals.
async fn follow_events(
    svc: Arc<Service>,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    mut nodes: BTreeSet<u32>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} change events were skipped; signals may lag");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match event {
            Event::TopologyChanged {
                generation,
                node_ids,
            } => {
                sync_node_objects(&svc, &mut nodes).await;
                if let Err(e) = emit_topology_changed(&svc, generation, node_ids).await {
                    tracing::warn!("could not signal the topology change: {e}");
                }
            }
            Event::StrategyChanged(view) => announce_strategy(&svc.conn, &view, true).await,
            Event::ProcessBound(view) => announce_strategy(&svc.conn, &view, false).await,
        }
    }
}

/// One PropertiesChanged with every Topology property, TopologyChanged, then the hardware
/// properties of each node object (CPUs may have gone offline).
async fn emit_topology_changed(svc: &Service, generation: u64, ids: Vec<u32>) -> zbus::Result<()> {
    let t = svc.app.topology();
    let changed = HashMap::from([
        ("NumaAvailable", Variant::from(t.numa_available)),
        ("NodeIds", Variant::from(ids.clone())),
        ("AllowedCpus", Variant::from(t.allowed_cpus.clone())),
        ("AllowedNodes", Variant::from(t.allowed_nodes.clone())),
        ("TotalMemoryBytes", Variant::from(t.total_memory_bytes())),
        (
            "Distances",
            Variant::from(crate::service::topology::distance_matrix(&t)),
        ),
        (
            "OptimalStrategy",
            Variant::from(svc.app.optimal_strategy().as_str()),
        ),
        ("Generation", Variant::from(generation)),
    ]);
    emit_properties(&svc.conn, ROOT_PATH, iface::TOPOLOGY, changed).await?;
    let emitter = zbus::object_server::SignalEmitter::new(&svc.conn, ROOT_PATH)?;
    TopologyIface::topology_changed(&emitter, generation, ids).await?;
    for n in t.nodes.iter() {
        let hw = svc.app.node_hardware(n.node_id);
        let distances: HashMap<u32, u32> = hw.distances.into_iter().collect();
        let changed = HashMap::from([
            ("Cpus", Variant::from(hw.cpus)),
            ("HasCpu", Variant::from(hw.has_cpu)),
            ("HasMemory", Variant::from(hw.has_memory)),
            ("MemoryTotalBytes", Variant::from(hw.memory_total_bytes)),
            ("Distances", Variant::from(distances)),
        ]);
        emit_properties(&svc.conn, &node_path(n.node_id), iface::NODE, changed).await?;
    }
    Ok(())
}

/// When the application says cache figures moved, send one PropertiesChanged per object
/// holding every property that changed since the last one, at most once per
/// [`STATS_PERIOD`]; nothing at all while the cache is idle.
async fn publish_stats(svc: Arc<Service>) {
    let mut changes = svc.app.stats_changes();
    let mut last_totals = svc.app.totals();
    let mut last_nodes: BTreeMap<u32, crate::app::NodeFigures> = svc
        .app
        .topology()
        .nodes
        .iter()
        .map(|n| (n.node_id, svc.app.node_figures(n.node_id)))
        .collect();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let totals = svc.app.totals();
        let mut changed: HashMap<&str, Variant<'_>> = HashMap::new();
        macro_rules! diff {
            ($field:ident, $name:literal) => {
                if last_totals.$field != totals.$field {
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
        if !changed.is_empty() {
            let _ = emit_properties(&svc.conn, ROOT_PATH, iface::CACHE_STATS, changed).await;
        }
        last_totals = totals;

        for n in svc.app.topology().nodes.iter() {
            let figures = svc.app.node_figures(n.node_id);
            let before = last_nodes.insert(n.node_id, figures).unwrap_or_default();
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
            let _ = emit_properties(&svc.conn, &node_path(n.node_id), iface::NODE, c).await;
        }
        // Coalesce: whatever happens in the next period is sent in one go after it.
        tokio::time::sleep(STATS_PERIOD).await;
    }
}

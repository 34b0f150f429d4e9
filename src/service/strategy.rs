//! org.opdbus.NumaCache.Strategy on the root object: the active placement strategy, and the
//! polkit-gated methods that change it (SetStrategy, Optimize) or act on another process
//! (BindProcess).

use crate::placement::{
    self, MemoryPolicy, PlacementError, Strategy, StrategyConfig, WorkloadType,
};
use crate::policy::PolicyError;
use crate::service::errors::ServiceError;
use crate::service::polkit::actions;
use crate::service::{ROOT_PATH, Service, blocking, emit_properties, parse_node_arg};
use std::collections::HashMap;
use std::sync::Arc;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Variant, interface};

/// The Strategy interface.
pub struct StrategyIface {
    svc: Arc<Service>,
}

/// An a{sv} reply.
pub type Reply = HashMap<String, Variant<'static>>;

impl StrategyIface {
    /// Serve the strategy of `svc`.
    pub fn new(svc: Arc<Service>) -> StrategyIface {
        StrategyIface { svc }
    }

    /// Act and emit: apply `cfg` in the engine, then PropertiesChanged and StrategyChanged.
    async fn apply(&self, cfg: StrategyConfig) -> Result<u32, ServiceError> {
        let cache = Arc::clone(&self.svc.cache);
        let affected = blocking(move || Ok(cache.set_strategy(cfg)?)).await?;
        record_strategy_change(&self.svc, affected, None);
        announce_strategy_change(&self.svc).await;
        Ok(u32::try_from(affected).unwrap_or(u32::MAX))
    }
}

/// Record what a strategy change already made in the engine affected (and, for an Optimize,
/// its workload type), so the Strategy properties report it. Used by SetStrategy/Optimize and
/// by the HTTP gateway's POSTs alike.
pub fn record_strategy_change(svc: &Service, affected: usize, workload_type: Option<&str>) {
    svc.set_affected(affected);
    if let Some(w) = workload_type {
        svc.set_workload_type(w);
    }
}

/// Announce the strategy now active: one PropertiesChanged with every Strategy property,
/// then StrategyChanged. The single emission path for SetStrategy, Optimize and the HTTP
/// gateway, so a client sees the same signals whichever way the change came.
pub async fn announce_strategy_change(svc: &Service) {
    let cfg = svc.strategy();
    let affected = svc
        .affected_processes
        .load(std::sync::atomic::Ordering::Relaxed);
    let changed = HashMap::from([
        ("Name", Variant::from(cfg.strategy.as_str())),
        (
            "NodePreference",
            Variant::from(node_pref_i32(cfg.node_preference)),
        ),
        ("MemoryPolicy", Variant::from(cfg.memory_policy.as_str())),
        ("WorkloadType", Variant::from(svc.workload_type())),
        ("AffectedProcesses", Variant::from(affected)),
    ]);
    // Signals are best effort: the change is made and persisted either way.
    let props = emit_properties(&svc.conn, ROOT_PATH, STRATEGY_IFACE, changed).await;
    let signal = match SignalEmitter::new(&svc.conn, ROOT_PATH) {
        Ok(emitter) => {
            StrategyIface::strategy_changed(
                &emitter,
                cfg.strategy.as_str(),
                node_pref_i32(cfg.node_preference),
                cfg.memory_policy.as_str(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    for r in [props, signal] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not emit a strategy change signal");
        }
    }
}

const STRATEGY_IFACE: &str = "org.opdbus.NumaCache.Strategy";

/// Map placement failures to the contract's errors: a vanished process is NotFound, a
/// missing privilege of the daemon is Unavailable (the caller cannot fix it), a bad node is
/// InvalidArgument.
fn placement_error(e: PlacementError) -> ServiceError {
    let msg = e.to_string();
    match e {
        PlacementError::NodeNotUsable { .. } => ServiceError::InvalidArgument(msg),
        PlacementError::NoCpus { .. } => ServiceError::InvalidArgument(msg),
        PlacementError::Policy(PolicyError::NoSuchProcess { .. }) => ServiceError::NotFound(msg),
        PlacementError::Policy(PolicyError::MissingCapability { .. }) => {
            ServiceError::Unavailable(format!(
                "{msg}; numa-cached needs CAP_SYS_NICE to move other processes (see systemd/numa-cached.service)"
            ))
        }
        PlacementError::Policy(_) => ServiceError::Unavailable(msg),
    }
}

fn node_pref_i32(n: Option<u32>) -> i32 {
    n.and_then(|n| i32::try_from(n).ok()).unwrap_or(-1)
}

fn parse_strategy(name: &str) -> Result<Strategy, ServiceError> {
    name.parse::<Strategy>()
        .map_err(|e| ServiceError::invalid(e.to_string()))
}

/// A memory-policy argument; "" keeps `current`.
fn parse_policy(name: &str, current: MemoryPolicy) -> Result<MemoryPolicy, ServiceError> {
    if name.is_empty() {
        return Ok(current);
    }
    name.parse::<MemoryPolicy>()
        .map_err(|e| ServiceError::invalid(e.to_string()))
}

fn v(s: impl Into<String>) -> Variant<'static> {
    Variant::from(s.into())
}

#[interface(name = "org.opdbus.NumaCache.Strategy")]
impl StrategyIface {
    /// The active strategy: local_node, round_robin, most_memory, interleave or disabled.
    #[zbus(property)]
    fn name(&self) -> String {
        self.svc.strategy().strategy.as_str().to_string()
    }

    /// The preferred node, or -1 for none.
    #[zbus(property)]
    fn node_preference(&self) -> i32 {
        node_pref_i32(self.svc.strategy().node_preference)
    }

    /// The memory policy of the worker threads: bind, preferred, interleaved or default.
    #[zbus(property)]
    fn memory_policy(&self) -> String {
        self.svc.strategy().memory_policy.as_str().to_string()
    }

    /// The workload type of the last Optimize ("" before any).
    #[zbus(property)]
    fn workload_type(&self) -> String {
        self.svc.workload_type()
    }

    /// How many threads or processes the last change re-pinned.
    #[zbus(property)]
    fn affected_processes(&self) -> u32 {
        self.svc
            .affected_processes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switch the placement strategy (persisted, restored at start). node_preference -1
    /// means none. Returns status ("applied"), strategy, node_preference, memory_policy and
    /// affected_processes. polkit action org.opdbus.NumaCache.set-strategy.
    #[zbus(out_args("result"))]
    async fn set_strategy(
        &self,
        strategy: &str,
        node_preference: i32,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Reply, ServiceError> {
        let _call = self.svc.enter()?;
        let parsed = parse_strategy(strategy)?;
        let node = parse_node_arg(&self.svc.topology(), node_preference, "node_preference")?;
        self.svc
            .polkit
            .check(&header, actions::SET_STRATEGY)
            .await?;
        let cfg = StrategyConfig {
            strategy: parsed,
            node_preference: node,
            ..self.svc.strategy()
        };
        let affected = self.apply(cfg).await?;
        tracing::info!(strategy, node_preference, affected, "strategy set");
        Ok(HashMap::from([
            ("status".to_string(), v("applied")),
            ("strategy".to_string(), v(parsed.as_str())),
            (
                "node_preference".to_string(),
                Variant::from(node_pref_i32(node)),
            ),
            ("memory_policy".to_string(), v(cfg.memory_policy.as_str())),
            ("affected_processes".to_string(), Variant::from(affected)),
        ]))
    }

    /// Tune placement for a workload: cpu_intensive, memory_intensive, io_intensive or
    /// balanced; target_node -1 for none; memory_policy "" to let the workload decide.
    /// Returns status ("optimized"), workload_type, strategy, node_preference,
    /// memory_policy and affected_processes. polkit action org.opdbus.NumaCache.optimize.
    #[zbus(out_args("result"))]
    async fn optimize(
        &self,
        workload_type: &str,
        target_node: i32,
        memory_policy: &str,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Reply, ServiceError> {
        let _call = self.svc.enter()?;
        let workload = workload_type
            .parse::<WorkloadType>()
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        let topology = self.svc.topology();
        let node = parse_node_arg(&topology, target_node, "target_node")?;
        let policy = if memory_policy.is_empty() {
            None
        } else {
            Some(parse_policy(memory_policy, MemoryPolicy::Default)?)
        };
        // The plan is pure computation that also validates the node: before polkit, so bad
        // input is InvalidArgument whoever asks.
        let cfg =
            placement::optimize_plan(workload, node, policy, &topology).map_err(placement_error)?;
        self.svc.polkit.check(&header, actions::OPTIMIZE).await?;
        let previous = self.svc.workload_type();
        self.svc.set_workload_type(workload_type);
        let affected = match self.apply(cfg).await {
            Ok(n) => n,
            Err(e) => {
                self.svc.set_workload_type(&previous);
                return Err(e);
            }
        };
        tracing::info!(workload_type, target_node, affected, "optimized");
        Ok(HashMap::from([
            ("status".to_string(), v("optimized")),
            ("workload_type".to_string(), v(workload_type)),
            ("strategy".to_string(), v(cfg.strategy.as_str())),
            (
                "node_preference".to_string(),
                Variant::from(node_pref_i32(cfg.node_preference)),
            ),
            ("memory_policy".to_string(), v(cfg.memory_policy.as_str())),
            ("affected_processes".to_string(), Variant::from(affected)),
        ]))
    }

    /// Pin every thread of process `pid` to the CPUs of `node` and, for bind and preferred,
    /// migrate its pages there (memory_policy bind, preferred, interleaved, default; "" for
    /// bind). Returns status ("bound"), pid, node, memory_policy, threads, cpus,
    /// memory_node, pages_on_node_before/after, pages_elsewhere, pages_not_migrated and
    /// affected_processes. polkit action org.opdbus.NumaCache.bind-process.
    #[zbus(out_args("result"))]
    async fn bind_process(
        &self,
        pid: u32,
        node: i32,
        memory_policy: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<Reply, ServiceError> {
        let _call = self.svc.enter()?;
        if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(ServiceError::NotFound(format!(
                "no process with pid {pid} is running"
            )));
        }
        let topology = self.svc.topology();
        let Some(node) = parse_node_arg(&topology, node, "node")? else {
            return Err(ServiceError::invalid(
                "node -1 is not allowed here: name the node to bind the process to",
            ));
        };
        let policy = parse_policy(memory_policy, MemoryPolicy::Bind)?;
        self.svc
            .polkit
            .check(&header, actions::BIND_PROCESS)
            .await?;
        let pid_arg = i32::try_from(pid)
            .map_err(|_| ServiceError::NotFound(format!("no process with pid {pid} is running")))?;
        let report = blocking(move || {
            placement::bind_process(&topology, pid_arg, node, policy).map_err(placement_error)
        })
        .await?;
        self.svc.set_affected(1);
        if let Err(e) = self.affected_processes_changed(&emitter).await {
            tracing::warn!(error = %e, "could not emit AffectedProcesses");
        }
        tracing::info!(pid, node, threads = report.threads_pinned, "process bound");
        Ok(HashMap::from([
            ("status".to_string(), v("bound")),
            ("pid".to_string(), Variant::from(pid)),
            ("node".to_string(), Variant::from(node)),
            ("memory_policy".to_string(), v(policy.as_str())),
            (
                "threads".to_string(),
                Variant::from(report.threads_pinned as u64),
            ),
            ("cpus".to_string(), Variant::from(report.cpus.clone())),
            ("memory_node".to_string(), Variant::from(report.memory_node)),
            (
                "pages_on_node_before".to_string(),
                Variant::from(report.pages_on_node_before),
            ),
            (
                "pages_on_node_after".to_string(),
                Variant::from(report.pages_on_node_after),
            ),
            (
                "pages_elsewhere".to_string(),
                Variant::from(report.pages_elsewhere_after),
            ),
            (
                "pages_not_migrated".to_string(),
                Variant::from(report.pages_not_migrated),
            ),
            ("affected_processes".to_string(), Variant::from(1u32)),
        ]))
    }

    /// The strategy changed (SetStrategy, Optimize): name, node preference (-1 none),
    /// memory policy.
    #[zbus(signal)]
    pub async fn strategy_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        node_preference: i32,
        memory_policy: &str,
    ) -> zbus::Result<()>;
}

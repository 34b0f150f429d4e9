//! org.opdbus.NumaCache.Strategy on the root object: the active placement strategy, and the
//! polkit-gated methods that change it (SetStrategy, Optimize) or act on another process
//! (BindProcess), each a call of the application layer. The signals are sent by
//! `announce_strategy`, from the application's events.

use crate::app::{StrategyReply, StrategyView};
use crate::service::errors::ServiceError;
use crate::service::{ROOT_PATH, Service, emit_properties, node_i32};
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

const STRATEGY_IFACE: &str = crate::service::iface::STRATEGY;

impl StrategyIface {
    /// Serve the strategy of `svc`.
    pub fn new(svc: Arc<Service>) -> StrategyIface {
        StrategyIface { svc }
    }
}

/// Announce `view`: one PropertiesChanged with every Strategy property and, when the strategy
/// itself changed, StrategyChanged. Signals are best effort: the change is made and persisted
/// either way.
pub async fn announce_strategy(conn: &zbus::Connection, view: &StrategyView, changed: bool) {
    let cfg = view.config;
    let props = HashMap::from([
        ("Name", Variant::from(cfg.strategy.as_str())),
        (
            "NodePreference",
            Variant::from(node_i32(cfg.node_preference)),
        ),
        ("MemoryPolicy", Variant::from(cfg.memory_policy.as_str())),
        (
            "WorkloadType",
            Variant::from(view.workload_type.map_or("", |w| w.as_str())),
        ),
        ("AffectedProcesses", Variant::from(view.affected_processes)),
    ]);
    let r = emit_properties(conn, ROOT_PATH, STRATEGY_IFACE, props).await;
    let s = if changed {
        match SignalEmitter::new(conn, ROOT_PATH) {
            Ok(emitter) => {
                StrategyIface::strategy_changed(
                    &emitter,
                    cfg.strategy.as_str(),
                    node_i32(cfg.node_preference),
                    cfg.memory_policy.as_str(),
                )
                .await
            }
            Err(e) => Err(e),
        }
    } else {
        Ok(())
    };
    for r in [r, s] {
        if let Err(e) = r {
            tracing::warn!("could not emit a strategy change signal: {e}");
        }
    }
}

fn v(s: impl Into<String>) -> Variant<'static> {
    Variant::from(s.into())
}

fn strategy_reply(r: &StrategyReply) -> Reply {
    let mut out = HashMap::from([
        ("status".to_string(), v(r.status)),
        ("strategy".to_string(), v(r.strategy.as_str())),
        (
            "node_preference".to_string(),
            Variant::from(i32::try_from(r.node_preference).unwrap_or(-1)),
        ),
        ("memory_policy".to_string(), v(r.memory_policy.as_str())),
        (
            "affected_processes".to_string(),
            Variant::from(r.affected_processes),
        ),
    ]);
    if let Some(w) = r.workload_type {
        out.insert("workload_type".to_string(), v(w.as_str()));
    }
    out
}

#[interface(name = "org.opdbus.NumaCache.Strategy")]
impl StrategyIface {
    /// The active strategy: local_node, round_robin, most_memory, interleave or disabled.
    #[zbus(property)]
    fn name(&self) -> String {
        self.svc
            .app
            .strategy_view()
            .config
            .strategy
            .as_str()
            .to_string()
    }

    /// The preferred node, or -1 for none.
    #[zbus(property)]
    fn node_preference(&self) -> i32 {
        node_i32(self.svc.app.strategy_view().config.node_preference)
    }

    /// The memory policy of the worker threads: bind, preferred, interleaved or default.
    #[zbus(property)]
    fn memory_policy(&self) -> String {
        self.svc
            .app
            .strategy_view()
            .config
            .memory_policy
            .as_str()
            .to_string()
    }

    /// The workload type of the last Optimize ("" before any).
    #[zbus(property)]
    fn workload_type(&self) -> String {
        self.svc
            .app
            .strategy_view()
            .workload_type
            .map_or("", |w| w.as_str())
            .to_string()
    }

    /// How many threads or processes the last change re-pinned.
    #[zbus(property)]
    fn affected_processes(&self) -> u32 {
        self.svc.app.strategy_view().affected_processes
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
        let who = self.svc.requester(&header).await?;
        let r = self
            .svc
            .app
            .set_strategy(&who, strategy, i64::from(node_preference))
            .await?;
        Ok(strategy_reply(&r))
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
        let who = self.svc.requester(&header).await?;
        let r = self
            .svc
            .app
            .optimize(
                &who,
                workload_type,
                i64::from(target_node),
                Some(memory_policy),
            )
            .await?;
        Ok(strategy_reply(&r))
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
    ) -> Result<Reply, ServiceError> {
        let who = self.svc.requester(&header).await?;
        let r = self
            .svc
            .app
            .bind_process(&who, pid, i64::from(node), Some(memory_policy))
            .await?;
        let report = &r.report;
        Ok(HashMap::from([
            ("status".to_string(), v("bound")),
            ("pid".to_string(), Variant::from(pid)),
            ("node".to_string(), Variant::from(report.node)),
            ("memory_policy".to_string(), v(r.memory_policy.as_str())),
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

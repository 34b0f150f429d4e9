//! SetStrategy, Optimize and BindProcess, and the Strategy properties. The strategy's
//! read-modify-write happens here only, under one lock; the engine persists the result.

use crate::app::authz::{Action, Requester};
use crate::app::error::{AppError, AppResult, Invalid, placement_error};
use crate::app::events::{Event, StrategyView};
use crate::app::topology::node_arg;
use crate::app::{App, StrategyState, blocking};
use crate::placement::{self, BindReport, MemoryPolicy, Strategy, StrategyConfig, WorkloadType};
use crate::store::CacheConfig;
use crate::topology::Topology;
use serde::Serialize;

/// The reply of SetStrategy and Optimize (the same fields over D-Bus and HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrategyReply {
    /// "applied" or "optimized".
    pub status: &'static str,
    /// The workload type (Optimize only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_type: Option<WorkloadType>,
    /// The strategy now active.
    pub strategy: Strategy,
    /// The node preference, -1 for none.
    pub node_preference: i64,
    /// The memory policy of the worker threads.
    pub memory_policy: MemoryPolicy,
    /// Worker threads re-pinned.
    pub affected_processes: u32,
}

/// The reply of BindProcess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindReply {
    /// The policy applied.
    pub memory_policy: MemoryPolicy,
    /// What the engine did.
    pub report: BindReport,
}

fn parse_strategy(name: &str) -> AppResult<Strategy> {
    name.parse().map_err(|e: crate::placement::UnknownName| {
        AppError::InvalidArgument(Invalid::Strategy, e.to_string())
    })
}

fn parse_workload(name: &str) -> AppResult<WorkloadType> {
    name.parse().map_err(|e: crate::placement::UnknownName| {
        AppError::InvalidArgument(Invalid::WorkloadType, e.to_string())
    })
}

/// A memory policy name; "" (or None) means `default`.
fn parse_policy(name: Option<&str>) -> AppResult<Option<MemoryPolicy>> {
    match name.filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(n) => n
            .parse()
            .map(Some)
            .map_err(|e: crate::placement::UnknownName| {
                AppError::InvalidArgument(Invalid::MemoryPolicy, e.to_string())
            }),
    }
}

fn pref_i64(n: Option<u32>) -> i64 {
    n.map_or(-1, i64::from)
}

/// Check the strategy configured at start against the topology, with the rule SetStrategy
/// uses: `--node-preference 99` on a two-node machine stops start-up.
pub fn check_start_config(config: &CacheConfig, topology: &Topology) -> AppResult<()> {
    if let Some(n) = config.strategy.node_preference {
        node_arg(
            topology,
            i64::from(n),
            "OPDBUS_NUMA_NODE_PREFERENCE (--node-preference)",
        )?;
    }
    Ok(())
}

impl App {
    fn strategy_state(&self) -> std::sync::MutexGuard<'_, StrategyState> {
        self.strategy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The strategy as the Strategy properties show it.
    pub fn strategy_view(&self) -> StrategyView {
        let config = self.cache().map(|c| c.strategy()).unwrap_or_default();
        let s = self.strategy_state();
        StrategyView {
            config,
            workload_type: s.workload_type,
            affected_processes: s.affected_processes,
        }
    }

    /// Replace the strategy (read-modify-write under the strategy lock, so two changes never
    /// interleave): `change` computes the new configuration from the current one.
    async fn apply_strategy(
        &self,
        workload: Option<WorkloadType>,
        change: impl FnOnce(StrategyConfig) -> StrategyConfig + Send + 'static,
    ) -> AppResult<StrategyView> {
        let cache = self.cache()?;
        // One change at a time, from reading the current strategy to the engine's write.
        let _rmw = self.strategy_rmw.lock().await;
        let (cfg, affected) = blocking(move || {
            let cfg = change(cache.strategy());
            Ok(cache.set_strategy(cfg).map(|n| (cfg, n))?)
        })
        .await?;
        let affected = u32::try_from(affected).unwrap_or(u32::MAX);
        let view = {
            let mut s = self.strategy_state();
            s.affected_processes = affected;
            if workload.is_some() {
                s.workload_type = workload;
            }
            StrategyView {
                config: cfg,
                workload_type: s.workload_type,
                affected_processes: affected,
            }
        };
        tracing::info!(
            "strategy set: {}, node preference {}, memory policy {}, {affected} threads re-pinned",
            cfg.strategy,
            cfg.node_preference
                .map_or_else(|| "none".to_string(), |n| n.to_string()),
            cfg.memory_policy
        );
        self.emit(Event::StrategyChanged(view));
        Ok(view)
    }

    /// SetStrategy: switch the placement strategy (persisted); `node_preference` -1 for none.
    pub async fn set_strategy(
        &self,
        who: &Requester,
        strategy: &str,
        node_preference: i64,
    ) -> AppResult<StrategyReply> {
        let _call = self.enter()?;
        let parsed = parse_strategy(strategy)?;
        let node = node_arg(&self.topology(), node_preference, "node_preference")?;
        let act = async {
            self.authorize(who, Action::SetStrategy).await?;
            self.apply_strategy(None, move |cur| StrategyConfig {
                strategy: parsed,
                node_preference: node,
                ..cur
            })
            .await
        };
        let view = self.audited(who, Action::SetStrategy, act.await)?;
        Ok(reply("applied", None, &view))
    }

    /// Optimize: tune placement for a workload; `target_node` -1 for none; `memory_policy`
    /// None (or "") lets the workload decide.
    pub async fn optimize(
        &self,
        who: &Requester,
        workload_type: &str,
        target_node: i64,
        memory_policy: Option<&str>,
    ) -> AppResult<StrategyReply> {
        let _call = self.enter()?;
        let workload = parse_workload(workload_type)?;
        let topology = self.topology();
        let node = node_arg(&topology, target_node, "target_node")?;
        let policy = parse_policy(memory_policy)?;
        // The plan is pure computation that also checks the node can hold data: before
        // polkit, so bad input is InvalidArgument whoever asks.
        let cfg = placement::optimize_plan(workload, node, policy, &topology)
            .map_err(|e| placement_error(e, None))?;
        let act = async {
            self.authorize(who, Action::Optimize).await?;
            self.apply_strategy(Some(workload), move |_| cfg).await
        };
        let view = self.audited(who, Action::Optimize, act.await)?;
        Ok(reply("optimized", Some(workload), &view))
    }

    /// BindProcess: pin every thread of `pid` to `node` and, for bind and preferred, migrate
    /// its pages there. The engine reports a missing process (no check-then-use here).
    pub async fn bind_process(
        &self,
        who: &Requester,
        pid: u32,
        node: i64,
        memory_policy: Option<&str>,
    ) -> AppResult<BindReply> {
        let _call = self.enter()?;
        let topology = self.topology();
        let Some(node) = node_arg(&topology, node, "node")? else {
            return Err(AppError::InvalidArgument(
                Invalid::Node,
                "node -1 is not allowed here: name the node to bind the process to".into(),
            ));
        };
        let policy = parse_policy(memory_policy)?.unwrap_or(MemoryPolicy::Bind);
        let result = async {
            self.authorize(who, Action::BindProcess).await?;
            let pid_arg = i32::try_from(pid)
                .map_err(|_| AppError::NotFound(format!("no process with pid {pid} is running")))?;
            blocking(move || {
                placement::bind_process(&topology, pid_arg, node, policy)
                    .map_err(|e| placement_error(e, Some(pid)))
            })
            .await
        }
        .await;
        let report = self.audited(who, Action::BindProcess, result)?;
        let view = {
            let mut s = self.strategy_state();
            s.affected_processes = 1;
            drop(s);
            self.strategy_view()
        };
        tracing::info!(
            "process {pid} bound to node {node} ({} threads, memory policy {policy}) for {}",
            report.threads_pinned,
            who.describe()
        );
        self.emit(Event::ProcessBound(view));
        Ok(BindReply {
            memory_policy: policy,
            report,
        })
    }
}

fn reply(
    status: &'static str,
    workload: Option<WorkloadType>,
    view: &StrategyView,
) -> StrategyReply {
    StrategyReply {
        status,
        workload_type: workload,
        strategy: view.config.strategy,
        node_preference: pref_i64(view.config.node_preference),
        memory_policy: view.config.memory_policy,
        affected_processes: view.affected_processes,
    }
}

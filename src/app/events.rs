//! What the application layer announces: typed events pushed by the owner of each piece of
//! state at the moment it changes (no polling), for the D-Bus signals and anyone else.

use crate::placement::{StrategyConfig, WorkloadType};

/// The strategy as the Strategy properties show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyView {
    /// The active strategy (the engine persists it).
    pub config: StrategyConfig,
    /// The workload type of the last Optimize.
    pub workload_type: Option<WorkloadType>,
    /// How many threads or processes the last change re-pinned.
    pub affected_processes: u32,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new topology generation reached the engine.
    TopologyChanged {
        /// The generation.
        generation: u64,
        /// The node ids now.
        node_ids: Vec<u32>,
    },
    /// SetStrategy or Optimize changed the strategy (over D-Bus or HTTP alike).
    StrategyChanged(StrategyView),
    /// BindProcess moved a process: only AffectedProcesses changed.
    ProcessBound(StrategyView),
}

//! Strategy and memory-policy names: the public vocabulary shared by the engine, the daemon,
//! its environment variables and the D-Bus API.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a new entry's node is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The caller's node.
    LocalNode,
    /// Nodes in turn.
    RoundRobin,
    /// The node with the most free memory.
    MostMemory,
    /// Spread by key hash.
    Interleave,
    /// No pinning, no memory policy, one shard.
    Disabled,
}

/// The memory policy worker threads run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryPolicy {
    /// MPOL_BIND to the worker's node.
    Bind,
    /// MPOL_PREFERRED for the worker's node.
    Preferred,
    /// MPOL_INTERLEAVE over the allowed nodes with memory.
    Interleaved,
    /// The kernel default (local allocation).
    Default,
}

/// The name was not one of the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: allowed values are {allowed}")]
pub struct UnknownName {
    /// What kind of name it was ("strategy", "memory policy").
    pub what: &'static str,
    /// What the caller gave.
    pub given: String,
    /// The allowed values, comma separated.
    pub allowed: &'static str,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 5] = [
        Strategy::LocalNode,
        Strategy::RoundRobin,
        Strategy::MostMemory,
        Strategy::Interleave,
        Strategy::Disabled,
    ];
    /// The allowed names, for error messages.
    pub const ALLOWED: &'static str = "local_node, round_robin, most_memory, interleave, disabled";

    /// The public name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LocalNode => "local_node",
            Strategy::RoundRobin => "round_robin",
            Strategy::MostMemory => "most_memory",
            Strategy::Interleave => "interleave",
            Strategy::Disabled => "disabled",
        }
    }
}

impl MemoryPolicy {
    /// Every policy, in documentation order.
    pub const ALL: [MemoryPolicy; 4] = [
        MemoryPolicy::Bind,
        MemoryPolicy::Preferred,
        MemoryPolicy::Interleaved,
        MemoryPolicy::Default,
    ];
    /// The allowed names, for error messages.
    pub const ALLOWED: &'static str = "bind, preferred, interleaved, default";

    /// The public name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryPolicy::Bind => "bind",
            MemoryPolicy::Preferred => "preferred",
            MemoryPolicy::Interleaved => "interleaved",
            MemoryPolicy::Default => "default",
        }
    }
}

impl FromStr for Strategy {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "strategy",
                given: s.to_string(),
                allowed: Strategy::ALLOWED,
            })
    }
}

impl FromStr for MemoryPolicy {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemoryPolicy::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "memory policy",
                given: s.to_string(),
                allowed: MemoryPolicy::ALLOWED,
            })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MemoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The active placement configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyConfig {
    /// How new entries are placed.
    pub strategy: Strategy,
    /// A node that overrides the strategy when it is allowed and has memory.
    pub node_preference: Option<u32>,
    /// The memory policy of the worker threads.
    pub memory_policy: MemoryPolicy,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig {
            strategy: Strategy::LocalNode,
            node_preference: None,
            memory_policy: MemoryPolicy::Bind,
        }
    }
}

/// The kind of workload `Optimize` tunes the cache for (see `placement::optimize_plan` for
/// what each one maps to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadType {
    /// Callers compute on what they read: keep data on the caller's node.
    CpuIntensive,
    /// Callers stream large values: spread over every memory controller.
    MemoryIntensive,
    /// Callers read and write much data: favour the node with the most free memory.
    IoIntensive,
    /// A mix: local placement that falls back rather than reclaims.
    Balanced,
}

impl WorkloadType {
    /// Every workload type, in documentation order.
    pub const ALL: [WorkloadType; 4] = [
        WorkloadType::CpuIntensive,
        WorkloadType::MemoryIntensive,
        WorkloadType::IoIntensive,
        WorkloadType::Balanced,
    ];
    /// The allowed names, for error messages.
    pub const ALLOWED: &'static str = "cpu_intensive, memory_intensive, io_intensive, balanced";

    /// The public name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::CpuIntensive => "cpu_intensive",
            WorkloadType::MemoryIntensive => "memory_intensive",
            WorkloadType::IoIntensive => "io_intensive",
            WorkloadType::Balanced => "balanced",
        }
    }
}

impl FromStr for WorkloadType {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadType::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "workload type",
                given: s.to_string(),
                allowed: WorkloadType::ALLOWED,
            })
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<crate::topology::SuggestedStrategy> for Strategy {
    fn from(s: crate::topology::SuggestedStrategy) -> Strategy {
        match s {
            crate::topology::SuggestedStrategy::LocalNode => Strategy::LocalNode,
            crate::topology::SuggestedStrategy::Interleave => Strategy::Interleave,
            crate::topology::SuggestedStrategy::Disabled => Strategy::Disabled,
        }
    }
}

/// The strategy that suits `topology` (see `topology::optimal_strategy` for the rules).
pub fn optimal_strategy(topology: &crate::topology::Topology) -> Strategy {
    crate::topology::optimal_strategy(topology).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        }
        for p in MemoryPolicy::ALL {
            assert_eq!(p.as_str().parse::<MemoryPolicy>().unwrap(), p);
        }
        for w in WorkloadType::ALL {
            assert_eq!(w.as_str().parse::<WorkloadType>().unwrap(), w);
        }
        for s in [
            crate::topology::SuggestedStrategy::LocalNode,
            crate::topology::SuggestedStrategy::Interleave,
            crate::topology::SuggestedStrategy::Disabled,
        ] {
            assert_eq!(Strategy::from(s).as_str(), s.as_str());
        }
        let e = "fastest".parse::<Strategy>().unwrap_err().to_string();
        assert!(e.contains("fastest") && e.contains("round_robin"), "{e}");
    }
}

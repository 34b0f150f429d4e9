//! Engine calls behind the Strategy interface's `BindProcess` and `Optimize`: move another
//! process to a node, and turn a workload description into a strategy.

use crate::placement::error::PlacementError;
use crate::placement::nodes;
use crate::placement::strategy::{MemoryPolicy, Strategy, StrategyConfig, WorkloadType};
use crate::policy::{self, id_list};
use crate::topology::Topology;
use serde::Serialize;

/// What `bind_process` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindReport {
    /// The process.
    pub pid: i32,
    /// The node asked for.
    pub node: u32,
    /// The CPUs its threads are now pinned to (the node's allowed CPUs, or those of the
    /// nearest node with CPUs when the node has none).
    pub cpus: Vec<u32>,
    /// How many threads were pinned.
    pub threads_pinned: usize,
    /// The node its pages were migrated to (`node`, or the nearest node with memory).
    pub memory_node: u32,
    /// Resident pages on `memory_node` before and after.
    pub pages_on_node_before: u64,
    /// Resident pages on `memory_node` afterwards.
    pub pages_on_node_after: u64,
    /// Resident pages left on other nodes afterwards.
    pub pages_elsewhere_after: u64,
    /// Pages the kernel reported it could not move.
    pub pages_not_migrated: u64,
}

/// Pin every thread of `pid` to `node`'s allowed CPUs and, for `bind` and `preferred`,
/// migrate its pages there with `migrate_pages`.
///
/// `interleaved` and `default` only pin: the kernel offers no call that sets another
/// process's memory policy, and moving its pages to one node would undo an interleave.
/// A node without CPUs pins to the nearest node with CPUs (its pages still go to the node);
/// a node without memory migrates to the nearest node with memory. Another user's process
/// needs CAP_SYS_NICE (`PolicyError::MissingCapability`); an unknown pid is
/// `PolicyError::NoSuchProcess` naming it.
pub fn bind_process(
    topology: &Topology,
    pid: i32,
    node: u32,
    memory_policy: MemoryPolicy,
) -> Result<BindReport, PlacementError> {
    // First, so a missing privilege is reported as such and not as an unreadable numa_maps.
    policy::check_other_process(pid, "binding another process to a node")?;
    let n = nodes::node(topology, node).ok_or_else(|| PlacementError::NodeNotUsable {
        node: i64::from(node),
        reason: "no such node",
        usable: id_list(&topology.allowed_nodes),
    })?;
    let allowed = n.allowed || topology.allowed_nodes.contains(&node);
    if !allowed && n.allowed_cpus.is_empty() {
        return Err(PlacementError::NodeNotUsable {
            node: i64::from(node),
            reason: "this process's cpuset excludes it",
            usable: id_list(&topology.allowed_nodes),
        });
    }
    let cpu_node = nodes::nearest(topology, node, &nodes::cpu_nodes(topology))
        .ok_or(PlacementError::NoCpus { node })?;
    let cpus = nodes::node(topology, cpu_node)
        .map(|c| c.allowed_cpus.clone())
        .unwrap_or_default();
    let mem = nodes::memory_nodes(topology);
    let memory_node = nodes::nearest(topology, node, &mem).unwrap_or(node);

    let before = policy::process_pages_per_node(pid)?;
    let threads_pinned = policy::set_process_affinity(pid, &cpus)?;
    let pages_not_migrated = match memory_policy {
        MemoryPolicy::Bind | MemoryPolicy::Preferred => {
            let from: Vec<u32> = mem.iter().copied().filter(|&m| m != memory_node).collect();
            if from.is_empty() {
                0
            } else {
                policy::migrate_pages(pid, &from, &[memory_node])?
            }
        }
        MemoryPolicy::Interleaved | MemoryPolicy::Default => 0,
    };
    let after = policy::process_pages_per_node(pid)?;
    let on = |m: &std::collections::BTreeMap<u32, u64>| m.get(&memory_node).copied().unwrap_or(0);
    Ok(BindReport {
        pid,
        node,
        cpus,
        threads_pinned,
        memory_node,
        pages_on_node_before: on(&before),
        pages_on_node_after: on(&after),
        pages_elsewhere_after: after
            .iter()
            .filter(|(k, _)| **k != memory_node)
            .map(|(_, v)| v)
            .sum(),
        pages_not_migrated,
    })
}

/// The strategy `Optimize(workload_type, target_node, memory_policy)` switches to.
///
/// | workload | strategy | memory policy | why |
/// |---|---|---|---|
/// | `cpu_intensive` | `local_node` | `bind` | callers compute on what they read; keep it strictly on their node |
/// | `memory_intensive` | `interleave` | `interleaved` | large values stream: use every node's memory bandwidth |
/// | `io_intensive` | `most_memory` | `preferred` | page cache volume matters; fall back instead of reclaiming |
/// | `balanced` | `local_node` | `preferred` | local when possible, never an allocation failure |
///
/// A given `memory_policy` replaces the table's; a `target_node` becomes the node
/// preference and must be an allowed node with memory.
pub fn optimize_plan(
    workload: WorkloadType,
    target_node: Option<u32>,
    memory_policy: Option<MemoryPolicy>,
    topology: &Topology,
) -> Result<StrategyConfig, PlacementError> {
    let (strategy, policy) = match workload {
        WorkloadType::CpuIntensive => (Strategy::LocalNode, MemoryPolicy::Bind),
        WorkloadType::MemoryIntensive => (Strategy::Interleave, MemoryPolicy::Interleaved),
        WorkloadType::IoIntensive => (Strategy::MostMemory, MemoryPolicy::Preferred),
        WorkloadType::Balanced => (Strategy::LocalNode, MemoryPolicy::Preferred),
    };
    if let Some(t) = target_node {
        let mem = nodes::memory_nodes(topology);
        if !mem.contains(&t) {
            let reason = match nodes::node(topology, t) {
                None => "no such node",
                Some(n) if !n.has_memory => "it has no memory",
                Some(_) => "this process's cpuset excludes it",
            };
            return Err(PlacementError::NodeNotUsable {
                node: i64::from(t),
                reason,
                usable: id_list(&mem),
            });
        }
    }
    Ok(StrategyConfig {
        strategy,
        node_preference: target_node,
        memory_policy: memory_policy.unwrap_or(policy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::nodes::this_machine;
    use crate::policy::PolicyError;
    use std::process::{Command, Stdio};

    #[test]
    fn binds_a_running_child_to_its_node() {
        let t = this_machine();
        let home = t.nodes[0].node_id;
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let r = bind_process(&t, pid, home, MemoryPolicy::Bind);
        let _ = child.kill();
        let _ = child.wait();
        let r = r.unwrap();
        assert_eq!(r.threads_pinned, 1);
        assert_eq!(r.cpus, t.nodes[0].allowed_cpus);
        assert!(r.pages_on_node_after > 0);
        assert_eq!(r.pages_elsewhere_after, 0);
    }

    #[test]
    fn a_missing_pid_or_node_is_named() {
        let t = this_machine();
        let home = t.nodes[0].node_id;
        let e = bind_process(&t, 4_194_333, home, MemoryPolicy::Bind).unwrap_err();
        assert!(
            matches!(
                e,
                PlacementError::Policy(PolicyError::NoSuchProcess { pid: 4_194_333 })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("4194333"));
        let e = bind_process(&t, std::process::id() as i32, 77, MemoryPolicy::Bind).unwrap_err();
        assert!(e.to_string().contains("77"), "{e}");
    }

    #[test]
    fn optimize_maps_workloads_and_checks_the_target() {
        let t = this_machine();
        let home = t.nodes[0].node_id;
        let c = optimize_plan(WorkloadType::CpuIntensive, Some(home), None, &t).unwrap();
        assert_eq!(
            (c.strategy, c.node_preference, c.memory_policy),
            (Strategy::LocalNode, Some(home), MemoryPolicy::Bind)
        );
        let c = optimize_plan(
            WorkloadType::MemoryIntensive,
            None,
            Some(MemoryPolicy::Preferred),
            &t,
        )
        .unwrap();
        assert_eq!(c.strategy, Strategy::Interleave);
        assert_eq!(c.memory_policy, MemoryPolicy::Preferred);
        let e = optimize_plan(WorkloadType::Balanced, Some(99), None, &t).unwrap_err();
        assert!(e.to_string().contains("99"), "{e}");
    }
}

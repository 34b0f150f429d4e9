//! The topology reads (Topology and Node properties, GetTopology, NodeOfCpu, Refresh, the
//! HTTP topology), the one node-argument check, and forwarding each new generation from the
//! watcher (its owner) to the engine, announced as [`Event::TopologyChanged`].

use crate::app::error::{AppError, AppResult, Invalid};
use crate::app::events::Event;
use crate::app::{App, blocking};
use crate::placement::Strategy;
use crate::topology::{NumaNode, Topology, parse_meminfo};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A node argument: -1 means none; otherwise it must be a node of `topology`. The one check
/// behind SetStrategy's node_preference, Optimize's target_node, BindProcess's node, the Put
/// option `node`, the HTTP bodies and `--node-preference` at start.
pub fn node_arg(topology: &Topology, node: i64, what: &str) -> AppResult<Option<u32>> {
    if node == -1 {
        return Ok(None);
    }
    let known = u32::try_from(node)
        .ok()
        .filter(|id| topology.nodes.iter().any(|n| n.node_id == *id));
    known.map(Some).ok_or_else(|| {
        let ids: Vec<String> = topology
            .nodes
            .iter()
            .map(|n| n.node_id.to_string())
            .collect();
        AppError::InvalidArgument(
            Invalid::Node,
            format!(
                "{what} {node} is not a NUMA node of this machine: use one of {} or -1 for none",
                ids.join(", ")
            ),
        )
    })
}

/// A node's hardware as the Node properties show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHardware {
    /// Online CPUs.
    pub cpus: Vec<u32>,
    /// Has online CPUs.
    pub has_cpu: bool,
    /// Has memory.
    pub has_memory: bool,
    /// MemTotal in bytes.
    pub memory_total_bytes: u64,
    /// SLIT distances by node id.
    pub distances: BTreeMap<u32, u32>,
}

/// The cache's share of one node, as the Node properties show it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeFigures {
    /// Entries in the node's shard.
    pub entries: u64,
    /// Their logical bytes.
    pub logical_bytes: u64,
    /// Bytes of the node's memory tier.
    pub memory_tier_bytes: u64,
    /// Hit rate of reads served there.
    pub hit_rate: f64,
}

impl From<&NumaNode> for NodeHardware {
    fn from(n: &NumaNode) -> NodeHardware {
        NodeHardware {
            cpus: n.cpus.clone(),
            has_cpu: n.has_cpu,
            has_memory: n.has_memory,
            memory_total_bytes: n.memory_total_bytes,
            distances: n.distances.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

impl App {
    /// The strategy the current topology calls for.
    pub fn optimal_strategy(&self) -> Strategy {
        crate::placement::optimal_strategy(&self.topology())
    }

    /// Node `id`'s hardware; defaults for a node that is gone.
    pub fn node_hardware(&self, id: u32) -> NodeHardware {
        self.topology()
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(NodeHardware::from)
            .unwrap_or_default()
    }

    /// MemFree of node `id` in bytes, read from its meminfo now (it changes all the time, so
    /// it is never cached); 0 when unreadable.
    pub fn memory_free_bytes(&self, id: u32) -> u64 {
        let path = self
            .fs_root()
            .join(format!("sys/devices/system/node/node{id}/meminfo"));
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| parse_meminfo(&t).ok())
            .map_or(0, |m| m.free_kib.saturating_mul(1024))
    }

    /// The cache's figures for node `id`; zeros for a node without a shard.
    pub fn node_figures(&self, id: u32) -> NodeFigures {
        self.cache()
            .ok()
            .and_then(|c| c.node_stats(id))
            .map(|s| NodeFigures {
                entries: s.entries,
                logical_bytes: s.logical_bytes,
                memory_tier_bytes: s.memory_tier_bytes,
                hit_rate: s.hit_rate,
            })
            .unwrap_or_default()
    }

    /// The topology JSON (the seed's "Get NUMA Topology" plus our fields).
    pub fn topology_json(&self) -> serde_json::Value {
        self.topology().to_json()
    }

    /// The node whose CPU list holds `cpu`.
    pub fn node_of_cpu(&self, cpu: u32) -> AppResult<u32> {
        let t = self.topology();
        t.node_of_cpu(cpu).ok_or_else(|| {
            let last = t.nodes.iter().flat_map(|n| n.cpus.iter()).max();
            AppError::invalid(format!(
                "CPU {cpu} is not an online CPU of any node (online CPUs go up to {})",
                last.map_or("none".to_string(), |c| c.to_string())
            ))
        })
    }

    /// Re-read the topology now; a change becomes a new generation (and an event).
    pub async fn refresh_topology(&self) -> AppResult<()> {
        let watcher = Arc::clone(&self.watcher);
        blocking(move || {
            watcher.refresh();
            Ok(())
        })
        .await
    }

    /// Follow the watcher for as long as the daemon runs: hand each new generation to the
    /// engine, then announce it. Subscribe before spawning this, or miss the first change.
    pub async fn follow_topology(self: Arc<Self>) {
        let mut seen = self.watcher.generation();
        loop {
            let listener = self.watcher.listen();
            if self.watcher.generation() == seen {
                listener.await;
            }
            let generation = self.watcher.generation();
            if generation == seen {
                continue;
            }
            seen = generation;
            let topology = self.watcher.current();
            if let Ok(cache) = self.cache() {
                let t = Arc::clone(&topology);
                let _ = tokio::task::spawn_blocking(move || cache.update_topology(t)).await;
            }
            let node_ids: Vec<u32> = topology.nodes.iter().map(|n| n.node_id).collect();
            let shown: Vec<String> = node_ids.iter().map(u32::to_string).collect();
            tracing::info!(
                "topology changed: generation {generation}, nodes {}",
                shown.join(", ")
            );
            self.emit(Event::TopologyChanged {
                generation,
                node_ids,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arguments_are_checked_against_the_topology() {
        let t = Topology::single_node(vec![0, 1]);
        assert_eq!(node_arg(&t, -1, "node").unwrap(), None);
        assert_eq!(node_arg(&t, 0, "node").unwrap(), Some(0));
        for bad in [1, 99, -2, i64::MAX, 1 << 40] {
            let e = node_arg(&t, bad, "target_node").unwrap_err();
            assert!(
                matches!(e, AppError::InvalidArgument(Invalid::Node, _)),
                "{e:?}"
            );
            assert!(e.to_string().contains(&format!("target_node {bad}")), "{e}");
        }
    }
}

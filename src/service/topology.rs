//! org.opdbus.NumaCache.Topology on the root object: the machine's NUMA layout as the
//! daemon sees it (limited by its cpuset), its generation, and TopologyChanged on hotplug.

use crate::service::errors::ServiceError;
use crate::service::{Service, blocking};
use crate::topology::Topology;
use std::collections::BTreeMap;
use std::sync::Arc;
use zbus::interface;
use zbus::object_server::SignalEmitter;

/// The Topology interface.
pub struct TopologyIface {
    svc: Arc<Service>,
}

impl TopologyIface {
    /// Serve the topology of `svc`.
    pub fn new(svc: Arc<Service>) -> TopologyIface {
        TopologyIface { svc }
    }
}

/// The JSON of GetTopology: the seed's shape (`nodes[]` with `node_id`, `cpu_count`,
/// `cpu_list`, `memory_mb`, `distances`; `total_memory_mb`, `optimal_strategy`) plus
/// `has_cpu`, `has_memory`, `allowed`, `allowed_nodes`, `allowed_cpus`, `numa_available`,
/// `warnings` (ARCHITECTURE.md, "Topology JSON").
pub fn topology_json(t: &Topology) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = t
        .nodes
        .iter()
        .map(|n| {
            let distances: BTreeMap<String, u32> = n
                .distances
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            serde_json::json!({
                "node_id": n.node_id,
                "cpu_count": n.cpus.len(),
                "cpu_list": n.cpus,
                "memory_mb": n.memory_total_bytes / (1024 * 1024),
                "distances": distances,
                "has_cpu": n.has_cpu,
                "has_memory": n.has_memory,
                "allowed": n.allowed,
            })
        })
        .collect();
    serde_json::json!({
        "nodes": nodes,
        "total_memory_mb": total_memory_bytes(t) / (1024 * 1024),
        "optimal_strategy": optimal_strategy(t),
        "allowed_nodes": t.allowed_nodes,
        "allowed_cpus": t.allowed_cpus,
        "numa_available": t.numa_available,
        "warnings": t.warnings,
    })
}

/// MemTotal summed over the nodes.
pub fn total_memory_bytes(t: &Topology) -> u64 {
    t.nodes.iter().map(|n| n.memory_total_bytes).sum()
}

/// The strategy the topology calls for: `local_node` where there are at least two allowed
/// nodes with memory to choose between, `disabled` where NUMA placement cannot help or
/// cannot be trusted.
pub fn optimal_strategy(t: &Topology) -> &'static str {
    let usable = t.nodes.iter().filter(|n| n.allowed && n.has_memory).count();
    if t.numa_available && usable >= 2 {
        "local_node"
    } else {
        "disabled"
    }
}

/// The distance matrix in `NodeIds` order (rows and columns); 0 where the firmware gave none.
pub fn distance_matrix(t: &Topology) -> Vec<Vec<u32>> {
    t.nodes
        .iter()
        .map(|row| {
            t.nodes
                .iter()
                .map(|col| row.distances.get(&col.node_id).copied().unwrap_or(0))
                .collect()
        })
        .collect()
}

#[interface(name = "org.opdbus.NumaCache.Topology")]
impl TopologyIface {
    /// False when there is no usable NUMA information or placement would be wrong; the cache
    /// then runs without NUMA placement.
    #[zbus(property)]
    fn numa_available(&self) -> bool {
        self.svc.topology().numa_available
    }

    /// The kernel's node numbers, ascending (may be sparse).
    #[zbus(property)]
    fn node_ids(&self) -> Vec<u32> {
        self.svc
            .topology()
            .nodes
            .iter()
            .map(|n| n.node_id)
            .collect()
    }

    /// The CPUs the daemon may run on (its affinity and cpuset), ascending.
    #[zbus(property)]
    fn allowed_cpus(&self) -> Vec<u32> {
        self.svc.topology().allowed_cpus.clone()
    }

    /// The nodes whose memory the daemon may use (its cpuset), ascending.
    #[zbus(property)]
    fn allowed_nodes(&self) -> Vec<u32> {
        self.svc.topology().allowed_nodes.clone()
    }

    /// MemTotal of all nodes, in bytes.
    #[zbus(property)]
    fn total_memory_bytes(&self) -> u64 {
        total_memory_bytes(&self.svc.topology())
    }

    /// SLIT distances, rows and columns in NodeIds order.
    #[zbus(property)]
    fn distances(&self) -> Vec<Vec<u32>> {
        distance_matrix(&self.svc.topology())
    }

    /// The strategy this topology calls for (local_node, or disabled without usable NUMA).
    #[zbus(property)]
    fn optimal_strategy(&self) -> String {
        optimal_strategy(&self.svc.topology()).to_string()
    }

    /// Bumped on every topology change (hotplug, cpuset change).
    #[zbus(property)]
    fn generation(&self) -> u64 {
        self.svc.watcher.generation()
    }

    /// The topology as JSON: the seed's "Get NUMA Topology" response plus has_cpu,
    /// has_memory, allowed, allowed_nodes, allowed_cpus, numa_available and warnings.
    #[zbus(out_args("topology_json"))]
    async fn get_topology(&self) -> Result<String, ServiceError> {
        let _call = self.svc.enter()?;
        serde_json::to_string(&topology_json(&self.svc.topology()))
            .map_err(|e| ServiceError::Unavailable(format!("could not encode the topology: {e}")))
    }

    /// The node whose CPU list holds `cpu`; InvalidArgument for a CPU that is not online.
    #[zbus(out_args("node"))]
    async fn node_of_cpu(&self, cpu: u32) -> Result<u32, ServiceError> {
        let _call = self.svc.enter()?;
        let t = self.svc.topology();
        t.nodes
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.node_id)
            .ok_or_else(|| {
                let last = t.nodes.iter().flat_map(|n| n.cpus.iter()).max();
                ServiceError::invalid(format!(
                    "CPU {cpu} is not an online CPU of any node (online CPUs go up to {})",
                    last.map_or("none".to_string(), |c| c.to_string())
                ))
            })
    }

    /// Re-read the topology now instead of waiting for a hotplug event; a change is
    /// published as a new Generation and TopologyChanged.
    async fn refresh(&self) -> Result<(), ServiceError> {
        let _call = self.svc.enter()?;
        let watcher = Arc::clone(&self.svc.watcher);
        blocking(move || {
            watcher.rescan();
            Ok(())
        })
        .await
    }

    /// The topology changed: its new generation and node ids.
    #[zbus(signal)]
    pub async fn topology_changed(
        emitter: &SignalEmitter<'_>,
        generation: u64,
        node_ids: Vec<u32>,
    ) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::NumaNode;

    fn node(id: u32, cpus: Vec<u32>, dist: &[(u32, u32)]) -> NumaNode {
        NumaNode {
            node_id: id,
            allowed_cpus: cpus.clone(),
            cpus,
            memory_total_bytes: 1 << 30,
            memory_free_bytes: 1 << 29,
            has_cpu: true,
            has_memory: true,
            allowed: true,
            distances: dist.iter().copied().collect(),
        }
    }

    #[test]
    fn json_has_the_seed_fields_and_sparse_distances_key_by_id() {
        let t = Topology {
            nodes: vec![
                node(0, vec![0, 1], &[(0, 10), (33, 21)]),
                node(33, vec![2, 3], &[(0, 21), (33, 10)]),
            ],
            allowed_cpus: vec![0, 1, 2, 3],
            allowed_nodes: vec![0, 33],
            numa_available: true,
            warnings: vec![],
        };
        let j = topology_json(&t);
        assert_eq!(j["nodes"][1]["node_id"], 33);
        assert_eq!(j["nodes"][1]["cpu_count"], 2);
        assert_eq!(j["nodes"][0]["memory_mb"], 1024);
        assert_eq!(j["nodes"][0]["distances"]["33"], 21);
        assert_eq!(j["total_memory_mb"], 2048);
        assert_eq!(j["optimal_strategy"], "local_node");
        assert_eq!(distance_matrix(&t), vec![vec![10, 21], vec![21, 10]]);
    }
}

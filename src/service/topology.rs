//! org.opdbus.NumaCache.Topology on the root object: the machine's NUMA layout as the
//! daemon sees it (limited by its cpuset), its generation, and TopologyChanged on hotplug.

use crate::service::Service;
use crate::service::errors::ServiceError;
use crate::topology::Topology;
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
        self.svc.app.topology().numa_available
    }

    /// The kernel's node numbers, ascending (may be sparse).
    #[zbus(property)]
    fn node_ids(&self) -> Vec<u32> {
        self.svc
            .app
            .topology()
            .nodes
            .iter()
            .map(|n| n.node_id)
            .collect()
    }

    /// The CPUs the daemon may run on (its affinity and cpuset), ascending.
    #[zbus(property)]
    fn allowed_cpus(&self) -> Vec<u32> {
        self.svc.app.topology().allowed_cpus.clone()
    }

    /// The nodes whose memory the daemon may use (its cpuset), ascending.
    #[zbus(property)]
    fn allowed_nodes(&self) -> Vec<u32> {
        self.svc.app.topology().allowed_nodes.clone()
    }

    /// MemTotal of all nodes, in bytes.
    #[zbus(property)]
    fn total_memory_bytes(&self) -> u64 {
        self.svc.app.topology().total_memory_bytes()
    }

    /// SLIT distances, rows and columns in NodeIds order.
    #[zbus(property)]
    fn distances(&self) -> Vec<Vec<u32>> {
        distance_matrix(&self.svc.app.topology())
    }

    /// The strategy this topology calls for (local_node; interleave when no node has both
    /// CPUs and memory; disabled when the NUMA data cannot be trusted).
    #[zbus(property)]
    fn optimal_strategy(&self) -> String {
        self.svc.app.optimal_strategy().as_str().to_string()
    }

    /// Bumped on every topology change (hotplug, cpuset change).
    #[zbus(property)]
    fn generation(&self) -> u64 {
        self.svc.app.generation()
    }

    /// The topology as JSON: the seed's "Get NUMA Topology" response plus has_cpu,
    /// has_memory, allowed, allowed_nodes, allowed_cpus, numa_available and warnings.
    #[zbus(out_args("topology_json"))]
    async fn get_topology(&self) -> Result<String, ServiceError> {
        let _call = self.svc.app.enter()?;
        serde_json::to_string(&self.svc.app.topology_json()).map_err(|e| {
            ServiceError(crate::app::AppError::Unavailable(format!(
                "could not encode the topology: {e}"
            )))
        })
    }

    /// The node whose CPU list holds `cpu`; InvalidArgument for a CPU that is not online.
    #[zbus(out_args("node"))]
    async fn node_of_cpu(&self, cpu: u32) -> Result<u32, ServiceError> {
        let _call = self.svc.app.enter()?;
        Ok(self.svc.app.node_of_cpu(cpu)?)
    }

    /// Re-read the topology now instead of waiting for a hotplug event; a change is
    /// published as a new Generation and TopologyChanged.
    async fn refresh(&self) -> Result<(), ServiceError> {
        let _call = self.svc.app.enter()?;
        Ok(self.svc.app.refresh_topology().await?)
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

    fn node(id: u32, dist: &[(u32, u32)]) -> NumaNode {
        NumaNode {
            node_id: id,
            cpus: vec![id],
            allowed_cpus: vec![id],
            memory_total_bytes: 1 << 30,
            memory_free_bytes: 1 << 29,
            has_cpu: true,
            has_memory: true,
            allowed: true,
            distances: dist.iter().copied().collect(),
            kind: Default::default(),
        }
    }

    #[test]
    fn distance_matrix_follows_node_ids_order_with_sparse_ids() {
        let t = Topology {
            nodes: vec![
                node(0, &[(0, 10), (33, 21)]),
                node(33, &[(0, 21), (33, 10)]),
            ],
            allowed_cpus: vec![0, 33],
            allowed_nodes: vec![0, 33],
            numa_available: true,
            warnings: vec![],
        };
        assert_eq!(distance_matrix(&t), vec![vec![10, 21], vec![21, 10]]);
        let mut missing = t.clone();
        missing.nodes[1].distances.clear();
        assert_eq!(distance_matrix(&missing), vec![vec![10, 21], vec![0, 0]]);
    }
}

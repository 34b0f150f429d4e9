//! Questions about a topology that placement asks: which nodes can hold memory, which can run
//! workers, the node of a CPU, and the nearest node of a set by SLIT distance.

use crate::topology::{NodeKind, NumaNode, Topology};

/// Allowed nodes with general memory, ascending: where entries and bound pages may go.
/// GPU memory nodes are left out (used only when a caller names one: `explicit_gpu_node`).
pub(crate) fn memory_nodes(t: &Topology) -> Vec<u32> {
    t.nodes
        .iter()
        .filter(|n| n.has_memory && n.kind == NodeKind::General && is_allowed(t, n))
        .map(|n| n.node_id)
        .collect()
}

/// Nodes with at least one allowed CPU, ascending: the nodes that get a worker pool.
pub(crate) fn cpu_nodes(t: &Topology) -> Vec<u32> {
    t.nodes
        .iter()
        .filter(|n| !n.allowed_cpus.is_empty())
        .map(|n| n.node_id)
        .collect()
}

/// True when `node_id` is a GPU memory node this process may use: placement never picks it,
/// a caller that names it gets it.
pub(crate) fn explicit_gpu_node(t: &Topology, node_id: u32) -> bool {
    t.node(node_id)
        .is_some_and(|n| n.kind == NodeKind::Gpu && n.has_memory && is_allowed(t, n))
}

fn is_allowed(t: &Topology, n: &NumaNode) -> bool {
    n.allowed || t.allowed_nodes.contains(&n.node_id)
}

/// The node `node_id`, if the topology has it.
pub(crate) fn node(t: &Topology, node_id: u32) -> Option<&NumaNode> {
    t.node(node_id)
}

/// The node whose CPU list holds `cpu`.
pub(crate) fn node_of_cpu(t: &Topology, cpu: u32) -> Option<u32> {
    t.node_of_cpu(cpu)
}

/// Of `candidates`, the one nearest to `from` by SLIT distance: itself when it is one;
/// `from`'s row, else the candidate's row towards `from` (as
/// `Topology::nearest_node_with_cpus` does); ties and unknown distances go to the lowest id.
pub(crate) fn nearest(t: &Topology, from: u32, candidates: &[u32]) -> Option<u32> {
    if candidates.contains(&from) {
        return Some(from);
    }
    let row = node(t, from).map(|n| &n.distances);
    candidates.iter().copied().min_by_key(|&c| {
        let d = row
            .and_then(|r| r.get(&c).copied())
            .or_else(|| node(t, c).and_then(|n| n.distances.get(&from).copied()))
            .unwrap_or(u32::MAX);
        (d, c)
    })
}

/// The CPUs every worker may use when nothing is pinned: the topology's allowed CPUs, or
/// this process's affinity when the topology has none.
pub(crate) fn all_allowed_cpus(t: &Topology) -> Vec<u32> {
    if !t.allowed_cpus.is_empty() {
        return t.allowed_cpus.clone();
    }
    crate::policy::get_affinity(0).unwrap_or_default()
}

/// This machine as a one-node topology (its first allowed memory node and every CPU this
/// thread may use): the fixture of placement's unit tests, which must run on real CPUs.
#[cfg(test)]
pub(crate) fn this_machine() -> Topology {
    let cpus = crate::policy::get_affinity(0).unwrap();
    let home = crate::policy::mems_allowed().unwrap()[0];
    Topology {
        nodes: vec![NumaNode {
            node_id: home,
            cpus: cpus.clone(),
            allowed_cpus: cpus.clone(),
            memory_total_bytes: 1 << 30,
            memory_free_bytes: 1 << 29,
            has_cpu: true,
            has_memory: true,
            allowed: true,
            distances: [(home, 10)].into(),
            kind: NodeKind::General,
        }],
        allowed_cpus: cpus,
        allowed_nodes: vec![home],
        numa_available: true,
        warnings: vec![],
    }
}

//! The topology as data: what detection produces and every other layer consumes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node's memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Ordinary system memory (DRAM, HBM, CXL): where placement puts entries.
    #[default]
    General,
    /// The memory of a GPU exposed as a NUMA node (NVIDIA GPUs on POWER9 with NVLink:
    /// `proc/driver/nvidia/gpus/*/numa_status` names it). Listed, never chosen by placement;
    /// used only when a caller names the node explicitly.
    Gpu,
}

impl NodeKind {
    /// The label in the Topology JSON and the CLI: `general` or `gpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::General => "general",
            NodeKind::Gpu => "gpu",
        }
    }

    /// The kind a label names; unknown labels (a newer daemon) read as `General`.
    pub fn from_label(label: &str) -> NodeKind {
        match label {
            "gpu" => NodeKind::Gpu,
            _ => NodeKind::General,
        }
    }
}

/// One NUMA node as the kernel numbers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// The kernel's node number (may be sparse: 0,1,2,33,...).
    pub node_id: u32,
    /// Online CPUs local to this node, ascending.
    pub cpus: Vec<u32>,
    /// The subset of `cpus` this process may run on (cpuset and sched_getaffinity), ascending.
    pub allowed_cpus: Vec<u32>,
    /// MemTotal of the node in bytes (0 when unknown or memory-less).
    pub memory_total_bytes: u64,
    /// MemFree of the node in bytes.
    pub memory_free_bytes: u64,
    /// The node has online CPUs.
    pub has_cpu: bool,
    /// The node has memory.
    pub has_memory: bool,
    /// The process's cpuset allows this node's memory.
    pub allowed: bool,
    /// SLIT distance to every node, keyed by node id.
    pub distances: BTreeMap<u32, u32>,
    /// What the node's memory is: placement uses only `General` nodes on its own.
    #[serde(default)]
    pub kind: NodeKind,
}

/// A consistent view of the machine's NUMA layout at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Topology {
    /// Nodes sorted by `node_id`.
    pub nodes: Vec<NumaNode>,
    /// Every CPU this process may run on, ascending.
    pub allowed_cpus: Vec<u32>,
    /// Every node whose memory this process may use, ascending.
    pub allowed_nodes: Vec<u32>,
    /// False when there is no usable NUMA information or placement would be wrong.
    pub numa_available: bool,
    /// Things read that could not be trusted or were missing, in words.
    pub warnings: Vec<String>,
}

impl Topology {
    /// One node 0 holding `cpus`, all allowed, memory unknown: what an in-process user or a
    /// benchmark passes when it does not want placement (the daemon uses the detected one).
    pub fn single_node(cpus: Vec<u32>) -> Topology {
        Topology {
            nodes: vec![NumaNode {
                node_id: 0,
                cpus: cpus.clone(),
                allowed_cpus: cpus.clone(),
                memory_total_bytes: 0,
                memory_free_bytes: 0,
                has_cpu: true,
                has_memory: true,
                allowed: true,
                distances: [(0, 10)].into(),
                kind: NodeKind::General,
            }],
            allowed_cpus: cpus,
            allowed_nodes: vec![0],
            numa_available: true,
            warnings: vec![],
        }
    }

    /// The node numbered `id`.
    pub fn node(&self, id: u32) -> Option<&NumaNode> {
        self.nodes
            .binary_search_by_key(&id, |n| n.node_id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// The node whose CPUs include `cpu` (online CPUs only).
    pub fn node_of_cpu(&self, cpu: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|n| n.cpus.binary_search(&cpu).is_ok())
            .map(|n| n.node_id)
    }

    /// Every node number, ascending.
    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.node_id).collect()
    }

    /// Total memory of every node, in bytes.
    pub fn total_memory_bytes(&self) -> u64 {
        // Saturating: a corrupt meminfo must not overflow (and panic) the sum.
        self.nodes
            .iter()
            .fold(0u64, |acc, n| acc.saturating_add(n.memory_total_bytes))
    }

    /// The node whose workers should serve node `id`: `id` itself when it has allowed CPUs,
    /// else the node with allowed CPUs at the smallest distance from it (ties: the lower
    /// node number). Uses `id`'s distance row, or the other nodes' rows towards `id` when
    /// that is unknown. `None` when no node has allowed CPUs or no distance is known.
    pub fn nearest_node_with_cpus(&self, id: u32) -> Option<u32> {
        let from = self.node(id)?;
        if !from.allowed_cpus.is_empty() {
            return Some(id);
        }
        self.nodes
            .iter()
            .filter(|n| !n.allowed_cpus.is_empty())
            .filter_map(|n| {
                let d = from
                    .distances
                    .get(&n.node_id)
                    .or_else(|| n.distances.get(&id))?;
                Some((*d, n.node_id))
            })
            .min()
            .map(|(_, node)| node)
    }

    /// The Topology JSON of ARCHITECTURE.md: the seed's `nodes[]` (`node_id`, `cpu_count`,
    /// `cpu_list`, `memory_mb`, `distances`), `total_memory_mb`, `optimal_strategy`, plus
    /// `has_cpu`, `has_memory`, `allowed`, `kind` (`general` or `gpu`) per node and
    /// `allowed_nodes`, `allowed_cpus`, `numa_available`, `warnings`.
    pub fn to_json(&self) -> serde_json::Value {
        // The view only borrows; serialising it cannot fail (no non-string map keys other
        // than integers, which serde_json turns into strings).
        serde_json::to_value(self.json_view()).unwrap_or(serde_json::Value::Null)
    }

    /// The same document as [`Topology::to_json`], pretty-printed, written straight from the
    /// topology (no intermediate `Value`: several times faster for 64 nodes, which matters
    /// to `numacachectl topology --json` and `GetTopology`).
    pub fn to_json_string_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.json_view()).unwrap_or_default()
    }

    fn json_view(&self) -> TopologyJson<'_> {
        const MIB: u64 = 1024 * 1024;
        TopologyJson {
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeJson {
                    node_id: n.node_id,
                    cpu_count: n.cpus.len(),
                    cpu_list: &n.cpus,
                    memory_mb: n.memory_total_bytes / MIB,
                    distances: &n.distances,
                    has_cpu: n.has_cpu,
                    has_memory: n.has_memory,
                    allowed: n.allowed,
                    kind: n.kind.as_str(),
                })
                .collect(),
            total_memory_mb: self.total_memory_bytes() / MIB,
            optimal_strategy: super::optimal_strategy(self).as_str(),
            allowed_nodes: &self.allowed_nodes,
            allowed_cpus: &self.allowed_cpus,
            numa_available: self.numa_available,
            warnings: &self.warnings,
        }
    }
}

/// The Topology JSON, field for field, borrowing from a [`Topology`].
#[derive(Serialize)]
struct TopologyJson<'a> {
    nodes: Vec<NodeJson<'a>>,
    total_memory_mb: u64,
    optimal_strategy: &'static str,
    allowed_nodes: &'a [u32],
    allowed_cpus: &'a [u32],
    numa_available: bool,
    warnings: &'a [String],
}

/// One node of the Topology JSON; `distances` keys become strings ("0": 10).
#[derive(Serialize)]
struct NodeJson<'a> {
    node_id: u32,
    cpu_count: usize,
    cpu_list: &'a [u32],
    memory_mb: u64,
    distances: &'a BTreeMap<u32, u32>,
    has_cpu: bool,
    has_memory: bool,
    allowed: bool,
    kind: &'static str,
}

//! The topology as data: what detection produces and every other layer consumes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

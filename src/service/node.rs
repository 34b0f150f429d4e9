//! org.opdbus.NumaCache.Node: one child object per NUMA node (/org/opdbus/NumaCache/nodeN)
//! under the root's ObjectManager, with the node's hardware and its share of the cache.

use crate::service::Service;
use std::collections::HashMap;
use std::sync::Arc;
use zbus::interface;

/// The Node interface of one node.
pub struct NodeIface {
    svc: Arc<Service>,
    id: u32,
}

impl NodeIface {
    /// Serve node `id` of `svc`'s topology.
    pub fn new(svc: Arc<Service>, id: u32) -> NodeIface {
        NodeIface { svc, id }
    }
}

#[interface(name = "org.opdbus.NumaCache.Node")]
impl NodeIface {
    /// The kernel's node number.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> u32 {
        self.id
    }

    /// Online CPUs of the node, ascending.
    #[zbus(property)]
    fn cpus(&self) -> Vec<u32> {
        self.svc.app.node_hardware(self.id).cpus
    }

    /// The node has online CPUs.
    #[zbus(property)]
    fn has_cpu(&self) -> bool {
        self.svc.app.node_hardware(self.id).has_cpu
    }

    /// The node has memory.
    #[zbus(property)]
    fn has_memory(&self) -> bool {
        self.svc.app.node_hardware(self.id).has_memory
    }

    /// MemTotal of the node in bytes.
    #[zbus(property)]
    fn memory_total_bytes(&self) -> u64 {
        self.svc.app.node_hardware(self.id).memory_total_bytes
    }

    /// MemFree of the node in bytes, read when asked (volatile: no change signal).
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_free_bytes(&self) -> u64 {
        self.svc.app.memory_free_bytes(self.id)
    }

    /// SLIT distance to every node, keyed by node id.
    #[zbus(property)]
    fn distances(&self) -> HashMap<u32, u32> {
        self.svc
            .app
            .node_hardware(self.id)
            .distances
            .into_iter()
            .collect()
    }

    /// Entries whose shard is this node's (changes coalesced: at most one signal a second).
    #[zbus(property)]
    fn cache_entries(&self) -> u64 {
        self.svc.app.node_figures(self.id).entries
    }

    /// Logical bytes of those entries.
    #[zbus(property)]
    fn cache_bytes(&self) -> u64 {
        self.svc.app.node_figures(self.id).logical_bytes
    }

    /// Bytes of this node's in-memory tier.
    #[zbus(property)]
    fn memory_tier_bytes(&self) -> u64 {
        self.svc.app.node_figures(self.id).memory_tier_bytes
    }

    /// Hits / (hits + misses) of reads served from this node (0 before any read).
    #[zbus(property)]
    fn hit_rate(&self) -> f64 {
        self.svc.app.node_figures(self.id).hit_rate
    }
}

//! org.opdbus.NumaCache.Node: one child object per NUMA node (/org/opdbus/NumaCache/nodeN)
//! under the root's ObjectManager, with the node's hardware and its share of the cache.

use crate::service::Service;
use crate::topology::NumaNode;
use std::collections::HashMap;
use std::sync::Arc;
use zbus::interface;

/// The cache's share of one node, as the Node properties show it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheFigures {
    /// Entries in the node's shard.
    pub entries: u64,
    /// Their logical bytes.
    pub logical_bytes: u64,
    /// Bytes of the node's memory tier.
    pub memory_tier_bytes: u64,
    /// Hit rate of reads served there.
    pub hit_rate: f64,
}

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

    fn with_node<T: Default>(&self, f: impl FnOnce(&NumaNode) -> T) -> T {
        let t = self.svc.topology();
        t.nodes
            .iter()
            .find(|n| n.node_id == self.id)
            .map(f)
            .unwrap_or_default()
    }

    /// (entries, logical bytes, memory-tier bytes, hit rate); zeros for a node the cache has
    /// no shard for yet.
    pub(crate) fn stats(&self) -> CacheFigures {
        self.svc
            .cache
            .node_stats(self.id)
            .map(|s| CacheFigures {
                entries: s.entries,
                logical_bytes: s.logical_bytes,
                memory_tier_bytes: s.memory_tier_bytes,
                hit_rate: s.hit_rate,
            })
            .unwrap_or_default()
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
        self.with_node(|n| n.cpus.clone())
    }

    /// The node has online CPUs.
    #[zbus(property)]
    fn has_cpu(&self) -> bool {
        self.with_node(|n| n.has_cpu)
    }

    /// The node has memory.
    #[zbus(property)]
    fn has_memory(&self) -> bool {
        self.with_node(|n| n.has_memory)
    }

    /// MemTotal of the node in bytes.
    #[zbus(property)]
    fn memory_total_bytes(&self) -> u64 {
        self.with_node(|n| n.memory_total_bytes)
    }

    /// MemFree of the node in bytes, read when asked (volatile: no change signal).
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_free_bytes(&self) -> u64 {
        self.with_node(|n| n.memory_free_bytes)
    }

    /// SLIT distance to every node, keyed by node id.
    #[zbus(property)]
    fn distances(&self) -> HashMap<u32, u32> {
        self.with_node(|n| n.distances.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// Entries whose shard is this node's (changes coalesced: at most one signal a second).
    #[zbus(property)]
    fn cache_entries(&self) -> u64 {
        self.stats().entries
    }

    /// Logical bytes of those entries.
    #[zbus(property)]
    fn cache_bytes(&self) -> u64 {
        self.stats().logical_bytes
    }

    /// Bytes of this node's in-memory tier.
    #[zbus(property)]
    fn memory_tier_bytes(&self) -> u64 {
        self.stats().memory_tier_bytes
    }

    /// Hits / (hits + misses) of reads served from this node (0 before any read).
    #[zbus(property)]
    fn hit_rate(&self) -> f64 {
        self.stats().hit_rate
    }
}

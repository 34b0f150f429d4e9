//! The memory tier of one node: decompressed hot values keyed by entry id, bounded in bytes,
//! with quick_cache's scan-resistant S3-FIFO-like policy.
//!
//! The values live in the node's own memory ([`arena::NodeArena`]): mappings whose policy
//! prefers the node, set with `mbind` before their first touch. So any thread may insert
//! (the pages still go to the node) and hits are served on the calling thread without a hop,
//! while automatic NUMA balancing (`kernel.numa_balancing=1`, Debian's default) cannot
//! migrate them toward the readers: it skips mappings with a policy of their own. The NUMA
//! lab (tests/numa_lab.rs, section `tier`) checks this with the kernel's counters.

mod arena;

pub use arena::{ArenaError, NodeArena, NodeBytes};

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Bytes charged per item on top of its footprint: the key, the Arc header, the slot.
const ITEM_OVERHEAD: u64 = 64;

/// Values as the tier holds them.
pub type TierValue = Arc<NodeBytes>;

#[derive(Clone)]
struct ByteWeighter {
    arena: NodeArena,
}

impl Weighter<u64, TierValue> for ByteWeighter {
    fn weight(&self, _key: &u64, val: &TierValue) -> u64 {
        self.arena.footprint(val.len()) as u64 + ITEM_OVERHEAD
    }
}

type ValueCache =
    Cache<u64, TierValue, ByteWeighter, DefaultHashBuilder, DefaultLifecycle<u64, TierValue>>;

/// One node's memory tier.
pub struct MemTier {
    cache: ValueCache,
    arena: NodeArena,
    capacity: u64,
}

impl MemTier {
    /// A tier holding at most `capacity` bytes whose memory is not tied to a node (hosts
    /// without NUMA placement, tests).
    pub fn new(capacity: u64) -> MemTier {
        MemTier::with_arena(NodeArena::new(None), capacity)
    }

    /// A tier holding at most `capacity` bytes in `node`'s memory.
    pub fn on_node(node: u32, capacity: u64) -> MemTier {
        MemTier::with_arena(NodeArena::new(Some(node)), capacity)
    }

    fn with_arena(arena: NodeArena, capacity: u64) -> MemTier {
        // Few shards: each shard gets capacity/shards, and a value larger than its shard's
        // share is never admitted.
        let shards = if capacity >= 64 << 20 { 8 } else { 1 };
        let options = OptionsBuilder::new()
            .estimated_items_capacity(((capacity / 4096) as usize).max(16))
            .weight_capacity(capacity.max(1))
            .shards(shards)
            .build();
        // build() only fails for hot/ghost allocations outside 0..1; we keep the defaults.
        let options = options.expect("default quick_cache allocations are valid");
        MemTier {
            cache: Cache::with_options(
                options,
                ByteWeighter {
                    arena: arena.clone(),
                },
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            arena,
            capacity,
        }
    }

    /// The node whose memory holds the values, if bound.
    pub fn node(&self) -> Option<u32> {
        self.arena.node()
    }

    /// The value of entry `id`, if held.
    #[inline]
    pub fn get(&self, id: u64) -> Option<TierValue> {
        self.cache.get(&id)
    }

    /// Hold a copy of `value` for entry `id` (may be refused, or evict others to stay in
    /// bounds). The copy is made into the node's memory whichever thread calls.
    pub fn insert(&self, id: u64, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        if self.arena.footprint(value.len()) as u64 + ITEM_OVERHEAD > self.capacity {
            return;
        }
        match self.arena.copy_in(value) {
            Ok(b) => self.cache.insert(id, Arc::new(b)),
            Err(e) => {
                // Out of mappings or address space: the value is simply not cached in
                // memory (the disk copy serves it); a stale copy must not survive.
                tracing::debug!("memory tier: entry {id:016x} not held: {e}");
                self.cache.remove(&id);
            }
        }
    }

    /// Forget entry `id`.
    pub fn remove(&self, id: u64) {
        self.cache.remove(&id);
    }

    /// Bytes held (footprints plus overhead).
    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }

    /// The byte bound.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Where the tier's pages are, as the kernel reports them (`move_pages` query): bytes of
    /// resident pages per node. Measured, not assumed: with the node's memory full the
    /// kernel may have placed some elsewhere. One syscall over every page the values touch.
    pub fn resident_bytes_by_node(&self) -> BTreeMap<u32, u64> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mut pages = BTreeSet::new();
        for (_, v) in self.cache.iter() {
            if v.is_empty() {
                continue;
            }
            let first = v.addr() / page;
            let last = (v.addr() + v.len() - 1) / page;
            pages.extend((first..=last).map(|p| p * page));
        }
        let addrs: Vec<usize> = pages.into_iter().collect();
        let mut out = BTreeMap::new();
        if let Ok(status) = crate::policy::page_nodes(0, &addrs) {
            for s in status.into_iter().filter(|&s| s >= 0) {
                *out.entry(s as u32).or_default() += page as u64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_bound() {
        let t = MemTier::on_node(0, 1 << 20);
        for id in 0..1000u64 {
            t.insert(id, vec![id as u8; 8192]);
            assert!(t.bytes() <= 1 << 20, "{} bytes after {id}", t.bytes());
        }
        assert!(t.len() > 50);
        let v = t.get(999).unwrap();
        assert_eq!(&v[..], &[999u64 as u8; 8192][..]);
    }

    /// Break check: counting one page per value instead of every page makes this fail.
    #[test]
    fn reports_where_the_kernel_put_its_pages() {
        let node = crate::policy::mems_allowed().unwrap()[0];
        let t = MemTier::on_node(node, 64 << 20);
        assert!(t.resident_bytes_by_node().is_empty());
        for id in 0..8u64 {
            t.insert(id, vec![id as u8 + 1; 1 << 20]);
        }
        t.insert(100, [1u8; 100]);
        let by_node = t.resident_bytes_by_node();
        let total: u64 = by_node.values().sum();
        // 8 MiB of values plus the page of the small one, all present and on the node.
        assert_eq!(total, (8 << 20) + 4096, "{by_node:?}");
        assert_eq!(by_node.get(&node), Some(&total), "{by_node:?}");
    }

    #[test]
    fn charges_the_footprint_not_the_length() {
        let t = MemTier::new(1 << 20);
        t.insert(1, [7u8; 100]);
        // A 100-byte value takes a 128-byte slot.
        assert_eq!(t.bytes(), 128 + ITEM_OVERHEAD);
        assert_eq!(&t.get(1).unwrap()[..], &[7u8; 100][..]);
        t.remove(1);
        assert!(t.get(1).is_none());
        assert!(t.is_empty());
    }
}

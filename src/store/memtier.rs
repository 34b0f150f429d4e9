//! The memory tier of one node: decompressed hot values keyed by entry id, bounded in bytes,
//! with quick_cache's scan-resistant S3-FIFO-like policy. Values are inserted by the thread
//! that read or wrote the node's shard (its worker, or a caller already on that node), so their
//! pages are that node's; hits are served on the calling thread without a hop.

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use std::sync::Arc;

/// Bytes charged per item on top of its value: the key, the Arc header, the slot.
const ITEM_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<u64, Arc<[u8]>> for ByteWeighter {
    fn weight(&self, _key: &u64, val: &Arc<[u8]>) -> u64 {
        val.len() as u64 + ITEM_OVERHEAD
    }
}

type ValueCache =
    Cache<u64, Arc<[u8]>, ByteWeighter, DefaultHashBuilder, DefaultLifecycle<u64, Arc<[u8]>>>;

/// One node's memory tier.
pub struct MemTier {
    cache: ValueCache,
    capacity: u64,
}

impl MemTier {
    /// A tier holding at most `capacity` bytes (values plus a small per-item overhead).
    pub fn new(capacity: u64) -> MemTier {
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
                ByteWeighter,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
            capacity,
        }
    }

    /// The value of entry `id`, if held.
    #[inline]
    pub fn get(&self, id: u64) -> Option<Arc<[u8]>> {
        self.cache.get(&id)
    }

    /// Hold `value` for entry `id` (may be refused or evict others to stay in bounds).
    pub fn insert(&self, id: u64, value: Arc<[u8]>) {
        if value.len() as u64 + ITEM_OVERHEAD <= self.capacity {
            self.cache.insert(id, value);
        }
    }

    /// Forget entry `id`.
    pub fn remove(&self, id: u64) {
        self.cache.remove(&id);
    }

    /// Bytes held (values plus overhead).
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_bound() {
        let t = MemTier::new(1 << 20);
        for id in 0..1000u64 {
            t.insert(id, Arc::from(vec![id as u8; 8192]));
            assert!(t.bytes() <= 1 << 20, "{} bytes after {id}", t.bytes());
        }
        assert!(t.len() > 50);
        let v = t.get(999).unwrap();
        assert_eq!(v.len(), 8192);
    }
}

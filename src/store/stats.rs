//! Counters of the engine, kept in atomics so the get path never takes a lock for them:
//! per node entries, bytes, hits and misses; evictions, corruptions, local hits; and the
//! measured latency of gets served on the caller's node against those served elsewhere,
//! which is where `numa_benefits` comes from (nothing assumed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Highest node number + 1 we keep counters for (Linux MAX_NUMNODES).
pub const MAX_NODES: usize = 1024;

/// Counters of one node.
#[derive(Default)]
pub struct NodeCounters {
    /// Entries whose shard is this node's.
    pub entries: AtomicU64,
    /// Their logical bytes.
    pub logical: AtomicU64,
    /// Their stored bytes.
    pub stored: AtomicU64,
    /// Hits on entries of this node.
    pub hits: AtomicU64,
    /// Misses of callers on this node.
    pub misses: AtomicU64,
}

/// Latency samples of one class of gets.
#[derive(Default)]
pub struct Latency {
    /// Sum of nanoseconds.
    pub sum_ns: AtomicU64,
    /// Count.
    pub count: AtomicU64,
}

impl Latency {
    fn add(&self, ns: u64) {
        self.sum_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn mean_ns(&self) -> Option<f64> {
        let c = self.count.load(Relaxed);
        (c > 0).then(|| self.sum_ns.load(Relaxed) as f64 / c as f64)
    }

    fn reset(&self) {
        self.sum_ns.store(0, Relaxed);
        self.count.store(0, Relaxed);
    }
}

/// Where a hit was served from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tier {
    /// The memory tier.
    Memory = 0,
    /// The shard's files.
    Disk = 1,
}

/// Entries the committer removed on its own (evicted for the byte bounds, expired by the TTL
/// sweep): a count and an event, so that whoever shows the figures learns of changes no call
/// made. Shared by `Arc`, so a listener does not keep the engine alive.
#[derive(Default)]
pub struct Removals {
    count: AtomicU64,
    event: event_listener::Event,
}

impl Removals {
    /// Called by the committer after a background removal is committed and applied.
    pub fn note(&self) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.event.notify(usize::MAX);
    }

    /// Background removals so far (each may remove many entries).
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait until [`Removals::count`] is no longer `seen`; returns the new count.
    pub async fn changed_from(&self, seen: u64) -> u64 {
        loop {
            // Listen first, then look: a removal between the two is never missed.
            let listener = self.event.listen();
            let now = self.count();
            if now != seen {
                return now;
            }
            listener.await;
        }
    }
}

/// All counters.
pub struct Stats {
    /// Background removals (see [`Removals`]).
    pub removals: Arc<Removals>,
    nodes: Box<[NodeCounters]>,
    /// Entries evicted (disk bound, TTL expiry, disk-full pressure).
    pub evictions: AtomicU64,
    /// Entries dropped because their bytes failed a check.
    pub corrupted: AtomicU64,
    /// Hits served on the caller's own node.
    pub local_hits: AtomicU64,
    /// Full flushes completed since the open: a default put answered while this read `n`
    /// is durable once it reads `n + 2` (a whole flush began after the put's answer).
    pub full_flushes: AtomicU64,
    /// [tier][remote as usize]
    latency: [[Latency; 2]; 2],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            removals: Arc::default(),
            nodes: (0..MAX_NODES).map(|_| NodeCounters::default()).collect(),
            evictions: AtomicU64::new(0),
            corrupted: AtomicU64::new(0),
            local_hits: AtomicU64::new(0),
            full_flushes: AtomicU64::new(0),
            latency: Default::default(),
        }
    }
}

/// Totals over all nodes (D-Bus CacheStats properties).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StatsTotals {
    /// Entries.
    pub entries: u64,
    /// Logical bytes.
    pub logical_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// hits / (hits + misses), 0 when nothing was asked.
    pub hit_rate: f64,
    /// Entries evicted.
    pub evictions: u64,
    /// Share of hits served on the caller's own node.
    pub local_hit_ratio: f64,
}

/// One node's figures (D-Bus Node properties).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct NodeStats {
    /// Entries in the node's shard.
    pub entries: u64,
    /// Their logical bytes (D-Bus CacheBytes).
    pub logical_bytes: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// Bytes held by the node's memory tier.
    pub memory_tier_bytes: u64,
    /// Hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
}

/// Every figure of the engine at one moment, typed (`Cache::stats`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheStats {
    /// Per node figures, by node number.
    pub node_distribution: std::collections::BTreeMap<u32, NodeStats>,
    /// Measured local against remote gets.
    pub numa_benefits: NumaBenefits,
    /// Totals over all nodes.
    pub totals: StatsTotals,
    /// Entries dropped because their bytes failed a check.
    pub corrupted: u64,
    /// The shards are btrfs subvolumes.
    pub btrfs: bool,
    /// The active strategy's name.
    pub strategy: String,
}

impl CacheStats {
    /// The seed's statistics JSON plus our extra fields (the shape `GetStats` returns).
    pub fn to_json(&self) -> serde_json::Value {
        let dist: serde_json::Map<String, serde_json::Value> = self
            .node_distribution
            .iter()
            .map(|(node, s)| {
                (
                    node.to_string(),
                    serde_json::json!({
                        "cache_entries": s.entries,
                        "memory_usage_mb": s.memory_tier_bytes >> 20,
                        "hit_rate": s.hit_rate,
                        "logical_bytes": s.logical_bytes,
                        "stored_bytes": s.stored_bytes,
                        "memory_tier_bytes": s.memory_tier_bytes,
                        "hits": s.hits,
                        "misses": s.misses,
                    }),
                )
            })
            .collect();
        let b = &self.numa_benefits;
        serde_json::json!({
            "node_distribution": dist,
            "numa_benefits": {
                "latency_improvement_ms": b.latency_improvement_ms,
                "memory_bandwidth_gain": b.memory_bandwidth_gain,
                "single_node": b.single_node,
                "local_samples": b.local_samples,
                "remote_samples": b.remote_samples,
            },
            "totals": self.totals,
            "corrupted": self.corrupted,
            "btrfs": self.btrfs,
            "strategy": self.strategy,
        })
    }
}

/// Measured difference between gets served on the caller's node and elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NumaBenefits {
    /// Mean remote-served minus mean local-served get latency, in ms (0 without both samples).
    pub latency_improvement_ms: f64,
    /// Mean remote latency / mean local latency (1.0 without both samples).
    pub memory_bandwidth_gain: f64,
    /// The machine has one node: nothing to compare.
    pub single_node: bool,
    /// Samples behind the figures: local, remote.
    pub local_samples: u64,
    /// Remote-served samples.
    pub remote_samples: u64,
}

pub(crate) fn rate(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

impl Stats {
    /// Counters of `node` (clamped into range).
    #[inline]
    pub fn node(&self, node: u32) -> &NodeCounters {
        &self.nodes[(node as usize).min(MAX_NODES - 1)]
    }

    /// Account an entry entering (+1) or leaving (-1) `node`.
    pub fn add_entry(&self, node: u32, logical: u64, stored: u64) {
        let n = self.node(node);
        n.entries.fetch_add(1, Relaxed);
        n.logical.fetch_add(logical, Relaxed);
        n.stored.fetch_add(stored, Relaxed);
    }

    /// Account an entry leaving `node`.
    pub fn remove_entry(&self, node: u32, logical: u64, stored: u64) {
        let n = self.node(node);
        n.entries.fetch_sub(1, Relaxed);
        n.logical.fetch_sub(logical, Relaxed);
        n.stored.fetch_sub(stored, Relaxed);
    }

    /// Record a hit on `node` served from `tier` in `ns` nanoseconds; `local` when the
    /// caller's node is the node that served it.
    #[inline]
    pub fn hit(&self, node: u32, tier: Tier, local: bool, ns: u64) {
        self.node(node).hits.fetch_add(1, Relaxed);
        if local {
            self.local_hits.fetch_add(1, Relaxed);
        }
        self.latency[tier as usize][usize::from(!local)].add(ns);
    }

    /// Record a miss by a caller on `node`.
    pub fn miss(&self, node: u32) {
        self.node(node).misses.fetch_add(1, Relaxed);
    }

    /// Total stored bytes of every node.
    pub fn stored_total(&self) -> u64 {
        self.nodes.iter().map(|n| n.stored.load(Relaxed)).sum()
    }

    /// Totals over all nodes.
    pub fn totals(&self) -> StatsTotals {
        let mut t = StatsTotals::default();
        for n in self.nodes.iter() {
            t.entries += n.entries.load(Relaxed);
            t.logical_bytes += n.logical.load(Relaxed);
            t.stored_bytes += n.stored.load(Relaxed);
            t.hits += n.hits.load(Relaxed);
            t.misses += n.misses.load(Relaxed);
        }
        t.hit_rate = rate(t.hits, t.misses);
        t.evictions = self.evictions.load(Relaxed);
        t.local_hit_ratio = if t.hits == 0 {
            0.0
        } else {
            self.local_hits.load(Relaxed) as f64 / t.hits as f64
        };
        t
    }

    /// Per-node figures without the memory tier (the engine adds it).
    pub fn node_stats(&self, node: u32) -> NodeStats {
        let n = self.node(node);
        let (hits, misses) = (n.hits.load(Relaxed), n.misses.load(Relaxed));
        NodeStats {
            entries: n.entries.load(Relaxed),
            logical_bytes: n.logical.load(Relaxed),
            stored_bytes: n.stored.load(Relaxed),
            memory_tier_bytes: 0,
            hits,
            misses,
            hit_rate: rate(hits, misses),
        }
    }

    /// numa_benefits from the measured latencies. Per tier, remote minus local, weighted by
    /// the samples of tiers that have both; where nothing can be compared, 0 and 1.0.
    pub fn benefits(&self, single_node: bool) -> NumaBenefits {
        let (mut diff, mut ratio, mut weight) = (0.0, 0.0, 0.0);
        let (mut local_n, mut remote_n) = (0, 0);
        for tier in &self.latency {
            local_n += tier[0].count.load(Relaxed);
            remote_n += tier[1].count.load(Relaxed);
            if let (Some(l), Some(r)) = (tier[0].mean_ns(), tier[1].mean_ns()) {
                let w = (tier[0].count.load(Relaxed) + tier[1].count.load(Relaxed)) as f64;
                diff += (r - l) * w;
                if l > 0.0 {
                    ratio += r / l * w;
                }
                weight += w;
            }
        }
        let comparable = !single_node && weight > 0.0;
        NumaBenefits {
            latency_improvement_ms: if comparable { diff / weight / 1e6 } else { 0.0 },
            memory_bandwidth_gain: if comparable { ratio / weight } else { 1.0 },
            single_node,
            local_samples: local_n,
            remote_samples: remote_n,
        }
    }

    /// Zero hits, misses, evictions, corruptions and latency samples (not entries or bytes).
    pub fn reset(&self) {
        for n in self.nodes.iter() {
            n.hits.store(0, Relaxed);
            n.misses.store(0, Relaxed);
        }
        self.evictions.store(0, Relaxed);
        self.corrupted.store(0, Relaxed);
        self.local_hits.store(0, Relaxed);
        for tier in &self.latency {
            for l in tier {
                l.reset();
            }
        }
    }
}

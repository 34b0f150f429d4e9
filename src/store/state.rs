//! State shared by the `Cache` (engine.rs) and its committer thread (commit.rs): the layout
//! (topology, strategy, placer, shards, tiers, pools, swapped as one), the entry map, the
//! counters and the bookkeeping of puts in flight. Both import this module; neither imports
//! the other's callers, so there is no engine <-> committer cycle.

use crate::placement::{NodePools, Placer, Strategy, StrategyConfig};
use crate::store::config::CacheConfig;
use crate::store::entries::EntryMap;
use crate::store::error::StoreError;
use crate::store::memtier::MemTier;
use crate::store::shard::Shard;
use crate::store::stats::{NodeStats, Stats};
use crate::topology::Topology;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The CPU this thread runs on (policy's getcpu wrapper), None when it fails.
pub fn current_cpu() -> Option<u32> {
    crate::policy::getcpu().ok().map(|(cpu, _)| cpu)
}

/// Everything that changes together when the topology or the strategy changes: the one copy
/// of the topology and the one strategy (with the placer built from both) the engine uses.
/// Readers hold it briefly; changes build a new one and swap it in.
pub struct Layout {
    /// The topology in force.
    pub topology: Arc<Topology>,
    /// CPU number -> node.
    pub cpu_node: Vec<u32>,
    /// Nodes new entries may go to (allowed, with memory), ascending.
    pub placeable: Vec<u32>,
    /// Every shard, including those of nodes that vanished (still readable).
    pub shards: BTreeMap<u32, Arc<Shard>>,
    /// Memory tiers by node.
    pub tiers: BTreeMap<u32, Arc<MemTier>>,
    /// Worker pools.
    pub pools: Arc<NodePools>,
    /// The active strategy.
    pub strategy: StrategyConfig,
    /// Chooses the node of new entries; built from this layout's topology and strategy, so
    /// it can never lag behind either.
    pub placer: Arc<Placer>,
}

impl Layout {
    /// The node of `cpu` (None: the first placeable node).
    pub fn node_of_cpu(&self, cpu: Option<u32>) -> u32 {
        cpu.and_then(|c| self.cpu_node.get(c as usize).copied())
            .unwrap_or_else(|| self.placeable.first().copied().unwrap_or(0))
    }

    /// Nodes stats are reported for: the topology's and any shard's.
    pub fn stat_nodes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .topology
            .nodes
            .iter()
            .map(|n| n.node_id)
            .chain(self.shards.keys().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Run `job` where the pages it touches belong to `node`: here when this thread is on
    /// that node's pool's node (or NUMA is off), else on the pool.
    pub fn on_node<R: Send + 'static>(
        &self,
        node: u32,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        if self.runs_inline(node) {
            job()
        } else {
            self.pools.run(node, job)
        }
    }

    /// Whether [`Layout::on_node`] runs a job for `node` on the calling thread (no hop to a
    /// pool, so no wait for another thread).
    pub fn runs_inline(&self, node: u32) -> bool {
        // Inline only when this thread is on the node itself: a memory-only node is served
        // by a CPU node's pool under a policy for the memory-only node, which the caller's
        // thread does not have (the NUMA lab saw node 2's page cache land on node 0). So the
        // pool gets the entry's own node, as `NodePools::run` asks.
        self.any_thread()
            || self.pools.serving_node(node) == node && self.node_of_cpu(current_cpu()) == node
    }

    /// Whether every thread may do every node's work: NUMA placement is off, or there is
    /// one node (with one shard).
    pub fn any_thread(&self) -> bool {
        self.strategy.strategy == Strategy::Disabled
            || self.placeable.len() <= 1 && self.shards.len() <= 1
    }
}

/// CPU number -> node of `t`.
pub fn cpu_map(t: &Topology) -> Vec<u32> {
    let max = t
        .nodes
        .iter()
        .flat_map(|n| n.cpus.iter())
        .copied()
        .max()
        .map(|m| m as usize + 1)
        .unwrap_or(0);
    let mut v = vec![t.nodes.first().map(|n| n.node_id).unwrap_or(0); max];
    for n in &t.nodes {
        for &c in &n.cpus {
            v[c as usize] = n.node_id;
        }
    }
    v
}

/// Nodes of `t` new entries may go to.
pub fn placeable(t: &Topology) -> Vec<u32> {
    let mut v: Vec<u32> = t
        .nodes
        .iter()
        .filter(|n| n.has_memory && (n.allowed || t.allowed_nodes.is_empty()))
        .map(|n| n.node_id)
        .collect();
    if !t.numa_available {
        v.truncate(1);
    }
    if v.is_empty() {
        v.push(t.nodes.first().map(|n| n.node_id).unwrap_or(0));
    }
    v
}

/// Bytes of puts in flight, bounded: a put beyond the bound waits a while, then is refused
/// with Unavailable (retry). A single put larger than the bound runs when nothing else does.
/// Waiting puts hold their values in memory too (a flood of pipelined calls on one
/// connection arrives faster than a slow disk drains it), so the bytes waiting are bounded
/// as well: a put that would take them past the bound is refused at once, without waiting.
pub struct InflightBytes {
    bound: u64,
    used: Mutex<Used>,
    freed: Condvar,
}

/// Admitted and waiting bytes.
#[derive(Default)]
struct Used {
    admitted: u64,
    waiting: u64,
}

/// How long a put waits for bytes in flight to drain before it is refused.
const INFLIGHT_WAIT: Duration = Duration::from_secs(5);

impl InflightBytes {
    /// A gate admitting `bound` bytes at once.
    pub fn new(bound: u64) -> InflightBytes {
        InflightBytes {
            bound,
            used: Mutex::new(Used::default()),
            freed: Condvar::new(),
        }
    }

    /// Admit `n` bytes (released when the guard drops).
    pub fn acquire(&self, n: u64) -> Result<InflightGuard<'_>, StoreError> {
        let deadline = std::time::Instant::now() + INFLIGHT_WAIT;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if self.must_wait(&used, n) {
            if used.waiting > 0 && used.waiting.saturating_add(n) > self.bound {
                return Err(StoreError::Unavailable(format!(
                    "{} bytes of puts are in flight and {} more are waiting (bound {} each); \
                     retry the put of {n} bytes later",
                    used.admitted, used.waiting, self.bound
                )));
            }
            used.waiting += n;
            while self.must_wait(&used, n) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    used.waiting -= n;
                    return Err(StoreError::Unavailable(format!(
                        "{} bytes of puts are in flight (bound {}); retry the put of {n} bytes later",
                        used.admitted, self.bound
                    )));
                }
                used = self
                    .freed
                    .wait_timeout(used, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            used.waiting -= n;
        }
        used.admitted += n;
        Ok(InflightGuard { gate: self, n })
    }

    fn must_wait(&self, used: &Used, n: u64) -> bool {
        used.admitted > 0 && used.admitted.saturating_add(n) > self.bound
    }

    /// Admit `n` bytes if that needs no wait; true when admitted. The caller gives them back
    /// with [`InflightBytes::release`] (for a put answered on another thread).
    pub fn try_admit(&self, n: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if self.must_wait(&used, n) {
            return false;
        }
        used.admitted += n;
        true
    }

    /// Give back `n` bytes admitted by [`InflightBytes::try_admit`].
    pub fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.admitted = used.admitted.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// Bytes admitted by [`InflightBytes::acquire`].
pub struct InflightGuard<'a> {
    gate: &'a InflightBytes,
    n: u64,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.gate.release(self.n);
    }
}

/// State shared by the Cache and its committer thread.
pub struct Shared {
    /// Configuration.
    pub cfg: CacheConfig,
    /// The state directory is on btrfs.
    pub btrfs: bool,
    /// The entry map.
    pub map: EntryMap,
    /// The layout in force (swapped whole).
    pub layout: RwLock<Arc<Layout>>,
    /// Counters.
    pub stats: Stats,
    /// Namespace -> owner uid. Written only by the committer, after its rows commit.
    pub namespaces: RwLock<HashMap<String, Option<u32>>>,
    /// Next entry id.
    pub next_id: AtomicU64,
    /// Entries with a TTL (the expiry sweep is skipped when 0).
    pub ttl_entries: AtomicU64,
    /// Puts writing their record or queued, not yet answered: the committer waits briefly
    /// for them so that they share one flush.
    pub puts_in_flight: AtomicU64,
    /// Ids of puts not yet answered: a flush makes everything below the smallest durable,
    /// which tells recovery where checking must start.
    pub inflight_ids: Mutex<BTreeSet<u64>>,
    /// Bytes of puts in flight, bounded.
    pub inflight_bytes: InflightBytes,
    /// Large-value files written but not yet made durable: (node, id).
    pub unsynced_blobs: Mutex<Vec<(u32, u64)>>,
}

impl Shared {
    /// The current layout.
    pub fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// One node's figures, memory tier included.
    pub fn node_stats_in(&self, layout: &Layout, node: u32) -> NodeStats {
        let mut s = self.stats.node_stats(node);
        s.memory_tier_bytes = layout.tiers.get(&node).map(|t| t.bytes()).unwrap_or(0);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn puts_waiting_for_room_are_bounded_too() {
        let gate = Arc::new(InflightBytes::new(100));
        let held = gate.acquire(100).expect("the first put");
        // One waiter of 60 bytes: it waits (room comes back when `held` drops).
        let g = Arc::clone(&gate);
        let waiter = std::thread::spawn(move || g.acquire(60).map(|_| ()));
        let t0 = Instant::now();
        while gate.used.lock().unwrap().waiting != 60 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the waiter never waited"
            );
            std::thread::yield_now();
        }
        // A second waiter would hold 120 bytes waiting, past the bound: refused at once,
        // so a flood of calls cannot park its values in memory.
        let t1 = Instant::now();
        let e = gate.acquire(60).map(|_| ()).unwrap_err();
        assert!(t1.elapsed() < Duration::from_secs(1), "it waited");
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("waiting")),
            "{e:?}"
        );
        drop(held);
        waiter
            .join()
            .unwrap()
            .expect("the first waiter gets its room");
        assert_eq!(gate.used.lock().unwrap().waiting, 0);
        assert_eq!(gate.used.lock().unwrap().admitted, 0);
    }
}

//! The node for a new entry, per strategy: the caller's node, nodes in turn, the node with
//! the most free memory, a key hash, or one shard when NUMA behaviour is disabled. Only
//! allowed nodes with memory are ever chosen.

use crate::placement::error::PlacementError;
use crate::placement::nodes;
use crate::placement::strategy::{Strategy, StrategyConfig};
use crate::policy::{self, id_list};
use crate::topology::Topology;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// MemFree is re-read at most this often: a put per microsecond must not read sysfs each time.
const MEMFREE_REFRESH: Duration = Duration::from_secs(1);

struct State {
    topology: Arc<Topology>,
    config: StrategyConfig,
    /// Allowed nodes with memory, ascending; never empty (falls back to the first node or 0).
    candidates: Vec<u32>,
}

struct MemFree {
    read_at: Option<Instant>,
    /// (node, MemFree bytes) for the candidates.
    free: Vec<(u32, u64)>,
}

/// Chooses the node of new entries. `Send + Sync`; cheap to call per put.
pub struct Placer {
    state: RwLock<State>,
    next: AtomicUsize,
    memfree: Mutex<MemFree>,
    fs_root: PathBuf,
}

fn candidates(t: &Topology) -> Vec<u32> {
    let mem = nodes::memory_nodes(t);
    if !mem.is_empty() {
        return mem;
    }
    vec![
        t.allowed_nodes
            .first()
            .copied()
            .or_else(|| t.nodes.first().map(|n| n.node_id))
            .unwrap_or(0),
    ]
}

impl Placer {
    /// A placer over `topology` that reads MemFree from this machine's sysfs.
    pub fn new(topology: Arc<Topology>, config: StrategyConfig) -> Placer {
        Placer::with_fs_root(topology, config, PathBuf::from("/"))
    }

    /// A placer that reads MemFree under `fs_root` (`fs_root/sys/devices/system/node`).
    pub fn with_fs_root(
        topology: Arc<Topology>,
        config: StrategyConfig,
        fs_root: PathBuf,
    ) -> Placer {
        let candidates = candidates(&topology);
        Placer {
            state: RwLock::new(State {
                topology,
                config,
                candidates,
            }),
            next: AtomicUsize::new(0),
            memfree: Mutex::new(MemFree {
                read_at: None,
                free: Vec::new(),
            }),
            fs_root,
        }
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// The active configuration.
    pub fn config(&self) -> StrategyConfig {
        self.read(|s| s.config)
    }

    /// Switch strategy; a `node_preference` that is not usable is refused.
    pub fn set_config(&self, config: StrategyConfig) -> Result<(), PlacementError> {
        if let Some(n) = config.node_preference {
            self.check_node(i64::from(n))?;
        }
        match self.state.write() {
            Ok(mut s) => s.config = config,
            Err(p) => p.into_inner().config = config,
        }
        Ok(())
    }

    /// Follow a topology change: new nodes become candidates, vanished ones stop being chosen.
    pub fn set_topology(&self, topology: Arc<Topology>) {
        let c = candidates(&topology);
        match self.state.write() {
            Ok(mut s) => {
                s.topology = topology;
                s.candidates = c;
            }
            Err(p) => {
                let mut s = p.into_inner();
                s.topology = topology;
                s.candidates = c;
            }
        }
        if let Ok(mut m) = self.memfree.lock() {
            m.read_at = None;
        }
    }

    /// The nodes entries may go to (allowed, with memory), ascending.
    pub fn candidates(&self) -> Vec<u32> {
        self.read(|s| s.candidates.clone())
    }

    /// Check an explicit node (a put's `node` option, a preference): it must be an allowed
    /// node with memory. Takes `i64` so a negative D-Bus value is reported as given.
    pub fn check_node(&self, node: i64) -> Result<u32, PlacementError> {
        self.read(|s| {
            let usable = id_list(&s.candidates);
            let id = u32::try_from(node).map_err(|_| PlacementError::NodeNotUsable {
                node,
                reason: "it is not a node number",
                usable: usable.clone(),
            })?;
            let reason = match nodes::node(&s.topology, id) {
                None => "no such node",
                Some(n) if !n.has_memory => "it has no memory",
                // GPU memory: never placed on its own, but a caller may name it.
                Some(_) if nodes::explicit_gpu_node(&s.topology, id) => return Ok(id),
                Some(_) if !s.candidates.contains(&id) => "this process's cpuset excludes it",
                Some(_) => return Ok(id),
            };
            Err(PlacementError::NodeNotUsable {
                node,
                reason,
                usable,
            })
        })
    }

    /// The node for a new entry with `key`, put by a caller last seen on `caller_cpu`
    /// (`None`: the calling thread's CPU from `getcpu`).
    pub fn place(&self, key: &[u8], caller_cpu: Option<u32>) -> u32 {
        let (strategy, preference, cands, topology) = self.read(|s| {
            (
                s.config.strategy,
                s.config.node_preference,
                s.candidates.clone(),
                Arc::clone(&s.topology),
            )
        });
        let first = cands[0];
        if strategy == Strategy::Disabled {
            return first;
        }
        if let Some(p) = preference
            && cands.contains(&p)
        {
            return p;
        }
        match strategy {
            Strategy::LocalNode => {
                let cpu = caller_cpu.or_else(|| policy::getcpu().ok().map(|(c, _)| c));
                cpu.and_then(|c| nodes::node_of_cpu(&topology, c))
                    .and_then(|n| nodes::nearest(&topology, n, &cands))
                    .unwrap_or(first)
            }
            Strategy::RoundRobin => cands[self.next.fetch_add(1, Ordering::Relaxed) % cands.len()],
            Strategy::MostMemory => self.most_free(&topology, &cands),
            Strategy::Interleave => {
                let h = xxhash_rust::xxh3::xxh3_64(key);
                cands[(h % cands.len() as u64) as usize]
            }
            Strategy::Disabled => first,
        }
    }

    fn most_free(&self, topology: &Topology, cands: &[u32]) -> u32 {
        let Ok(mut m) = self.memfree.lock() else {
            return cands[0];
        };
        let stale = m.read_at.is_none_or(|t| t.elapsed() >= MEMFREE_REFRESH);
        if stale {
            m.free = cands
                .iter()
                .map(|&n| {
                    let fallback = nodes::node(topology, n)
                        .map(|x| x.memory_free_bytes)
                        .unwrap_or(0);
                    (n, self.read_memfree(n).unwrap_or(fallback))
                })
                .collect();
            m.read_at = Some(Instant::now());
        }
        // Most free wins; equal free memory goes to the lowest node id.
        m.free
            .iter()
            .filter(|(n, _)| cands.contains(n))
            .max_by_key(|(n, free)| (*free, std::cmp::Reverse(*n)))
            .map(|(n, _)| *n)
            .unwrap_or(cands[0])
    }

    fn read_memfree(&self, node: u32) -> Option<u64> {
        let path = self
            .fs_root
            .join(format!("sys/devices/system/node/node{node}/meminfo"));
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().find(|l| l.contains("MemFree:"))?;
        let kb: u64 = line.split_whitespace().rev().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::strategy::MemoryPolicy;
    use crate::topology::NumaNode;
    use std::collections::BTreeMap;

    fn node(id: u32, cpus: Vec<u32>, mem_gib: u64, free_gib: u64, allowed: bool) -> NumaNode {
        NumaNode {
            node_id: id,
            cpus: cpus.clone(),
            allowed_cpus: if allowed { cpus.clone() } else { vec![] },
            memory_total_bytes: mem_gib << 30,
            memory_free_bytes: free_gib << 30,
            has_cpu: !cpus.is_empty(),
            has_memory: mem_gib > 0,
            allowed,
            distances: BTreeMap::new(),
            kind: Default::default(),
        }
    }

    /// Node 0 (cpus 0-1), node 1 (cpus 2-3, most free), node 2 (memory only, far from 0,
    /// near 1), node 3 (cpus 4-5, no memory), node 4 (outside the cpuset).
    fn four_nodes() -> Arc<Topology> {
        let mut nodes = vec![
            node(0, vec![0, 1], 4, 1, true),
            node(1, vec![2, 3], 4, 3, true),
            node(2, vec![], 8, 2, true),
            node(3, vec![4, 5], 0, 0, true),
            node(4, vec![6], 4, 4, false),
        ];
        let d = [
            [10, 20, 40, 30, 50],
            [20, 10, 25, 15, 50],
            [40, 25, 10, 35, 50],
            [30, 15, 35, 10, 50],
            [50, 50, 50, 50, 10],
        ];
        for (i, n) in nodes.iter_mut().enumerate() {
            n.distances = (0..5).map(|j| (j as u32, d[i][j])).collect();
        }
        Arc::new(Topology {
            nodes,
            allowed_cpus: vec![0, 1, 2, 3, 4, 5],
            allowed_nodes: vec![0, 1, 2, 3],
            numa_available: true,
            warnings: vec![],
        })
    }

    fn cfg(strategy: Strategy) -> StrategyConfig {
        StrategyConfig {
            strategy,
            node_preference: None,
            memory_policy: MemoryPolicy::Bind,
        }
    }

    #[test]
    fn local_node_follows_the_caller_cpu_and_skips_memoryless_nodes() {
        let p = Placer::with_fs_root(
            four_nodes(),
            cfg(Strategy::LocalNode),
            "/nonexistent".into(),
        );
        assert_eq!(p.candidates(), vec![0, 1, 2]);
        assert_eq!(p.place(b"k", Some(0)), 0);
        assert_eq!(p.place(b"k", Some(3)), 1);
        // CPU 4 is on node 3, which has no memory: nearest with memory is node 1 (15).
        assert_eq!(p.place(b"k", Some(4)), 1);
        // An unknown CPU falls back to the first candidate.
        assert_eq!(p.place(b"k", Some(99)), 0);
    }

    #[test]
    fn round_robin_interleave_most_memory_and_disabled() {
        let t = four_nodes();
        let p = Placer::with_fs_root(t.clone(), cfg(Strategy::RoundRobin), "/nonexistent".into());
        let seq: Vec<u32> = (0..6).map(|_| p.place(b"x", None)).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);

        p.set_config(cfg(Strategy::Interleave)).unwrap();
        let a = p.place(b"alpha", None);
        assert_eq!(a, p.place(b"alpha", None), "same key, same node");
        let spread: std::collections::BTreeSet<u32> = (0..300)
            .map(|i| p.place(format!("key{i}").as_bytes(), None))
            .collect();
        assert_eq!(spread.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);

        // No sysfs under the root: MemFree comes from the topology (node 1 has 3 GiB free).
        p.set_config(cfg(Strategy::MostMemory)).unwrap();
        assert_eq!(p.place(b"x", None), 1);

        p.set_config(cfg(Strategy::Disabled)).unwrap();
        assert_eq!(p.place(b"x", Some(3)), 0);
    }

    #[test]
    fn most_memory_reads_memfree_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        for (n, kb) in [(0, 100), (1, 50), (2, 900)] {
            let d = dir.path().join(format!("sys/devices/system/node/node{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("meminfo"),
                format!("Node {n} MemTotal: 1000 kB\nNode {n} MemFree:  {kb} kB\n"),
            )
            .unwrap();
        }
        let p = Placer::with_fs_root(
            four_nodes(),
            cfg(Strategy::MostMemory),
            dir.path().to_path_buf(),
        );
        assert_eq!(p.place(b"x", None), 2);
    }

    #[test]
    fn preference_overrides_only_when_usable() {
        let p = Placer::with_fs_root(
            four_nodes(),
            cfg(Strategy::LocalNode),
            "/nonexistent".into(),
        );
        let mut c = cfg(Strategy::LocalNode);
        c.node_preference = Some(2);
        p.set_config(c).unwrap();
        assert_eq!(p.place(b"k", Some(0)), 2);
        for (bad, why) in [(3, "no memory"), (4, "cpuset"), (9, "no such node")] {
            c.node_preference = Some(bad);
            let e = p.set_config(c).unwrap_err().to_string();
            assert!(e.contains(&bad.to_string()) && e.contains(why), "{e}");
        }
        let e = p.check_node(-1).unwrap_err().to_string();
        assert!(e.contains("-1") && e.contains("0-2"), "{e}");
    }
}

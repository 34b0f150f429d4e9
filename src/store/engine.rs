//! The `Cache`: ties the shards, the index, the memory tiers, the committer and the worker
//! pools together. Gets are served on the calling thread whenever that is already the right
//! node (always for memory-tier hits); otherwise the entry's node pool does the disk read,
//! so page-cache and memory-tier pages stay on the entry's node.

use crate::placement::{NodePools, Placer, Strategy, StrategyConfig};
use crate::store::blob;
use crate::store::commit::{Committer, Op, Why};
use crate::store::config::{
    CacheConfig, Caller, EntryInfo, PutOptions, validate_key, validate_namespace,
};
use crate::store::entries::{Entry, EntryMap};
use crate::store::error::StoreError;
use crate::store::index::{self, Row};
use crate::store::memtier::MemTier;
use crate::store::recovery;
use crate::store::shard::{self, Shard};
use crate::store::snapshot;
use crate::store::stats::{NodeStats, Stats, StatsTotals, Tier};
use crate::topology::Topology;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as u32)
}

/// Everything that changes together when the topology or the strategy changes. Readers
/// hold it briefly; changes build a new one and swap it in.
pub struct Layout {
    /// The topology in force.
    pub topology: Arc<Topology>,
    /// CPU number -> node.
    cpu_node: Vec<u32>,
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
}

impl Layout {
    fn node_of_cpu(&self, cpu: Option<u32>) -> u32 {
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
    fn on_node<R: Send + 'static>(&self, node: u32, job: impl FnOnce() -> R + Send + 'static) -> R {
        let serving = self.pools.serving_node(node);
        // Inline only when this thread is on the node itself: a memory-only node is served
        // by a CPU node's pool under a policy for the memory-only node, which the caller's
        // thread does not have (the NUMA lab saw node 2's page cache land on node 0). So the
        // pool gets the entry's own node, as `NodePools::run` asks.
        if self.strategy.strategy == Strategy::Disabled
            || self.placeable.len() <= 1 && self.shards.len() <= 1
            || serving == node && self.node_of_cpu(current_cpu()) == node
        {
            job()
        } else {
            self.pools.run(node, job)
        }
    }
}

fn cpu_map(t: &Topology) -> Vec<u32> {
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

fn placeable(t: &Topology) -> Vec<u32> {
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

/// State shared by the Cache and its committer thread.
pub struct Shared {
    /// Configuration.
    pub cfg: CacheConfig,
    /// The state directory is on btrfs.
    pub btrfs: bool,
    /// The entry map.
    pub map: EntryMap,
    layout: RwLock<Arc<Layout>>,
    /// Counters.
    pub stats: Stats,
    /// Namespace -> owner uid.
    pub namespaces: RwLock<HashMap<String, Option<u32>>>,
    /// Next entry id.
    pub next_id: AtomicU64,
    /// Entries with a TTL (the expiry sweep is skipped when 0).
    pub ttl_entries: AtomicU64,
    /// Puts writing their blob or queued, not yet answered: the committer waits briefly
    /// for them so that they share one flush.
    pub puts_in_flight: AtomicU64,
    /// Chooses the node of new entries (the placement module owns the strategies).
    pub placer: Placer,
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

/// The cache engine. `Send + Sync`; the daemon holds it in an `Arc`.
pub struct Cache {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Puts and deletes hold it shared; a snapshot holds it exclusively (writes paused).
    gate: RwLock<()>,
    dir: PathBuf,
}

fn tier_share(cfg: &CacheConfig, nodes: usize) -> u64 {
    cfg.memory_bytes / nodes.max(1) as u64
}

impl Cache {
    /// Open (creating or repairing) the cache in `config.dir` for `topology`.
    pub fn open(config: CacheConfig, topology: Arc<Topology>) -> Result<Cache, StoreError> {
        if config.zstd_level < 1 || config.zstd_level > 22 {
            return Err(StoreError::InvalidArgument(format!(
                "zstd level {} is outside 1-22",
                config.zstd_level
            )));
        }
        let dir = config.dir.clone();
        let shards_dir = dir.join("shards");
        for d in [&dir, &shards_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| StoreError::io(format!("creating {}", d.display()), e))?;
        }
        let btrfs = shard::is_btrfs(&dir)?;
        if !btrfs {
            tracing::warn!(
                "{} is not on btrfs: shards are plain folders and snapshots hard links",
                dir.display()
            );
        }
        snapshot::remove_partials(&dir.join("snapshots"));
        let placeable = placeable(&topology);
        let mut nodes: Vec<u32> = placeable.clone();
        if let Ok(rd) = std::fs::read_dir(&shards_dir) {
            for e in rd.filter_map(|e| e.ok()) {
                if let Some(n) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("node"))
                    .and_then(|n| n.parse().ok())
                {
                    nodes.push(n);
                }
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        let mut shards = BTreeMap::new();
        for n in nodes {
            shards.insert(n, Arc::new(Shard::open(&shards_dir, n, btrfs)?));
        }
        let list: Vec<Arc<Shard>> = shards.values().cloned().collect();
        let rec = recovery::recover(&dir, &list)?;
        let mut conn = rec.conn;
        let strategy = match index::active_strategy(&conn)
            .map_err(|e| StoreError::sql("reading the strategy", e))?
        {
            Some(s) => s,
            None => config.strategy,
        };
        {
            // This one commit is fsynced (a WAL fsync, far cheaper than a syncfs): the clean
            // flag must be cleared on disk before any write can happen.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| StoreError::sql("opening", e))?;
            let tx = conn
                .transaction()
                .map_err(|e| StoreError::sql("opening", e))?;
            index::write_topology(&tx, &topology)
                .map_err(|e| StoreError::sql("writing numa_topology", e))?;
            index::meta_set(&tx, "clean", 0).map_err(|e| StoreError::sql("opening", e))?;
            index::meta_set(&tx, "next_id", rec.next_id as i64)
                .map_err(|e| StoreError::sql("opening", e))?;
            tx.commit().map_err(|e| StoreError::sql("opening", e))?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| StoreError::sql("opening", e))?;
        }
        let tiers = if config.memory_bytes > 0 {
            let share = tier_share(&config, placeable.len());
            shards
                .keys()
                .map(|&n| (n, Arc::new(MemTier::on_node(n, share))))
                .collect()
        } else {
            BTreeMap::new()
        };
        let topology_for_placer = Arc::clone(&topology);
        let layout = Layout {
            cpu_node: cpu_map(&topology),
            placeable,
            shards,
            tiers,
            pools: Arc::new(NodePools::start(&topology, &strategy)),
            strategy,
            topology,
        };
        let shared = Arc::new(Shared {
            cfg: config,
            btrfs,
            map: EntryMap::default(),
            layout: RwLock::new(Arc::new(layout)),
            stats: Stats::default(),
            namespaces: RwLock::new(rec.namespaces.into_iter().collect()),
            next_id: AtomicU64::new(rec.next_id),
            ttl_entries: AtomicU64::new(0),
            puts_in_flight: AtomicU64::new(0),
            placer: Placer::new(Arc::clone(&topology_for_placer), strategy),
        });
        let now_ns = unix_ns();
        for r in &rec.rows {
            if r.expires.is_some() {
                shared.ttl_entries.fetch_add(1, Relaxed);
            }
            shared.stats.add_entry(r.node, r.size, r.stored);
        }
        shared.map.load(rec.rows, |r| {
            let expires_ns = r
                .expires
                .map(|s| s.saturating_mul(1_000_000_000))
                .unwrap_or(0);
            let la = r.last_access.saturating_mul(1_000_000_000).min(now_ns);
            Entry::new(
                r.id, r.node, r.size, r.stored, r.checksum, r.created, expires_ns, la, r.hits,
            )
        });
        let (tx, rx) = mpsc::channel();
        let committer = Committer::new(conn, Arc::clone(&shared));
        let handle = std::thread::Builder::new()
            .name("cache-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("starting the committer thread: {e}")))?;
        Ok(Cache {
            shared,
            tx,
            committer: Mutex::new(Some(handle)),
            gate: RwLock::new(()),
            dir,
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).map_err(|_| {
            StoreError::Unavailable("the cache is shutting down (committer stopped)".into())
        })
    }

    fn wait<T>(rx: mpsc::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the committer stopped before answering".into()))?
    }

    /// Run `f` on the committer thread and wait for its answer.
    fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Committer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Op::Exec(Box::new(move |c| {
            let _ = rtx.send(f(c));
        })))?;
        Self::wait(rrx)
    }

    /// Ownership check; for a new namespace, the owner to record.
    fn check_owner(
        &self,
        ns: &str,
        caller: &Caller,
        writing: bool,
    ) -> Result<Option<Option<u32>>, StoreError> {
        let owners = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match owners.get(ns) {
            Some(owner) => {
                if let (Some(uid), Some(owner)) = (caller.uid, owner)
                    && uid != 0
                    && uid != *owner
                {
                    return Err(StoreError::PermissionDenied(format!(
                        "namespace {ns:?} belongs to uid {owner}; uid {uid} may read it but not change it"
                    )));
                }
                Ok(None)
            }
            None if writing => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                Ok(Some(Some(caller.uid.unwrap_or(me))))
            }
            None => Ok(None),
        }
    }

    fn choose_node(&self, layout: &Layout, key: &str, caller: &Caller) -> u32 {
        let node = self.shared.placer.place(key.as_bytes(), caller.cpu);
        if layout.shards.contains_key(&node) {
            node
        } else {
            layout.placeable.first().copied().unwrap_or(node)
        }
    }

    /// Store `value` under `ns`/`key`; returns the node whose shard holds it. Durable when it
    /// returns (its blob and index row are on disk).
    pub fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<u32, StoreError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let limit = self.shared.cfg.max_value_bytes;
        if value.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                size: value.len() as u64,
                limit,
            });
        }
        let new_namespace = self.check_owner(ns, caller, true)?;
        let layout = self.shared.layout();
        let node = match opts.node {
            Some(n) => {
                let n = self
                    .shared
                    .placer
                    .check_node(i64::from(n))
                    .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
                if !layout.shards.contains_key(&n) {
                    return Err(StoreError::InvalidArgument(format!(
                        "node {n} has no shard; nodes with shards: {:?}",
                        layout.shards.keys().collect::<Vec<_>>()
                    )));
                }
                n
            }
            None => self.choose_node(&layout, key, caller),
        };
        let now = unix_ns();
        let created = now / 1_000_000_000;
        let expires = opts
            .ttl
            .map(|t| (now + t.as_nanos() as u64).div_ceil(1_000_000_000));
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let id = self.shared.next_id.fetch_add(1, Relaxed);
        let (bytes, checksum) = blob::encode(
            id,
            ns,
            key,
            value,
            self.shared.cfg.zstd_level,
            self.shared.cfg.compress_min_bytes,
            created,
            expires.unwrap_or(0),
        );
        let stored = bytes.len() as u64;
        if stored > self.shared.cfg.max_bytes {
            return Err(StoreError::TooLarge {
                size: value.len() as u64,
                limit: self.shared.cfg.max_bytes,
            });
        }
        let shard = layout
            .shards
            .get(&node)
            .cloned()
            .ok_or_else(|| StoreError::Unavailable(format!("no shard for node {node}")))?;
        let tier = layout.tiers.get(&node).cloned();
        let owned: Option<Vec<u8>> = tier.as_ref().map(|_| value.to_vec());
        // The committer answers (and un-counts) every put that reaches its queue.
        self.shared.puts_in_flight.fetch_add(1, Relaxed);
        let written = layout.on_node(node, move || {
            shard.write_blob(id, &bytes)?;
            if let (Some(t), Some(v)) = (tier, owned) {
                // Allocated here, on the node's thread, so the tier's pages are local.
                t.insert(id, Arc::from(v));
            }
            Ok::<(), StoreError>(())
        });
        if let Err(e) = written {
            self.shared.puts_in_flight.fetch_sub(1, Relaxed);
            if matches!(e, StoreError::NoSpace(_)) {
                // Make room for the next put: the least recently used entries go.
                let _ = self.send(Op::Pressure(
                    stored
                        .saturating_mul(4)
                        .max(self.shared.stats.stored_total() / 20),
                ));
            }
            return Err(e);
        }
        let row = Row {
            id,
            namespace: ns.to_string(),
            key: key.to_string(),
            node,
            size: value.len() as u64,
            stored,
            checksum,
            created,
            last_access: created,
            hits: 0,
            expires,
        };
        let (rtx, rrx) = mpsc::sync_channel(1);
        if let Err(e) = self.send(Op::Put {
            row,
            new_namespace,
            reply: rtx,
        }) {
            self.shared.puts_in_flight.fetch_sub(1, Relaxed);
            return Err(e);
        }
        Self::wait(rrx)?;
        Ok(node)
    }

    /// The value under `ns`/`key`. A value whose bytes fail their checksum is never returned:
    /// the entry is dropped and the error is Corrupted.
    pub fn get(&self, ns: &str, key: &str, caller: &Caller) -> Result<Vec<u8>, StoreError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let t0 = Instant::now();
        let guard = self.shared.layout.read().unwrap_or_else(|p| p.into_inner());
        let layout: &Layout = &guard;
        let here = layout.node_of_cpu(current_cpu());
        let caller_node = match caller.cpu {
            Some(c) => layout.node_of_cpu(Some(c)),
            None => here,
        };
        let now = unix_ns();
        let found = self.shared.map.with(ns, key, |e| {
            if e.expires_ns != 0 && e.expires_ns <= now {
                return Err(e.id);
            }
            self.shared.map.touch(e, now);
            Ok((e.id, e.node, e.stored, e.checksum))
        });
        let (id, node, stored, checksum) = match found {
            Some(Ok(f)) => f,
            Some(Err(expired)) => {
                let _ = self.send(Op::Delete {
                    ns: ns.into(),
                    key: key.into(),
                    only_id: Some(expired),
                    why: Why::Expired,
                    reply: None,
                });
                return Err(self.miss(caller_node, ns, key));
            }
            None => return Err(self.miss(caller_node, ns, key)),
        };
        let serving = layout.pools.serving_node(node);
        let local = caller_node == serving;
        let tier = layout.tiers.get(&node);
        if let Some(v) = tier.and_then(|t| t.get(id)) {
            let out = v.to_vec();
            self.shared
                .stats
                .hit(node, Tier::Memory, local, t0.elapsed().as_nanos() as u64);
            return Ok(out);
        }
        let Some(shard) = layout.shards.get(&node).cloned() else {
            return Err(self.broken(
                ns,
                key,
                id,
                caller_node,
                format!("entry is on node {node}, which has no shard"),
            ));
        };
        let tier = tier.cloned();
        let header_len = blob::FIXED_LEN + ns.len() + key.len() + 8;
        let payload_len = (stored as usize).saturating_sub(header_len);
        let read = layout.on_node(node, move || {
            let value = match shard.read_blob(id, header_len, payload_len) {
                Ok((header, payload)) => blob::decode_parts(&header, payload, id, checksum),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(
                    blob::BlobError::Payload(format!("file is shorter than indexed: {e}")),
                ),
                Err(e) => return Err(e),
            };
            if let (Ok(v), Some(t)) = (&value, tier) {
                t.insert(id, Arc::from(v.as_slice()));
            }
            Ok::<_, std::io::Error>(value)
        });
        drop(guard);
        match read {
            Ok(Ok(v)) => {
                self.shared
                    .stats
                    .hit(node, Tier::Disk, local, t0.elapsed().as_nanos() as u64);
                Ok(v)
            }
            Ok(Err(e)) => {
                tracing::error!(
                    "entry {ns}/{key} (blob {id:016x} on node {node}) failed its check and was dropped: {e}"
                );
                self.shared.stats.miss(caller_node);
                let _ = self.send(Op::Delete {
                    ns: ns.into(),
                    key: key.into(),
                    only_id: Some(id),
                    why: Why::Broken,
                    reply: None,
                });
                Err(StoreError::Corrupted(format!(
                    "{ns}/{key}: {e}; the entry was dropped, write it again"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted or replaced while we read, or lost: NotFound either way.
                let gone = self
                    .shared
                    .map
                    .with(ns, key, |e| e.id == id)
                    .unwrap_or(false);
                if gone {
                    return Err(self.broken(
                        ns,
                        key,
                        id,
                        caller_node,
                        "blob file is missing".into(),
                    ));
                }
                Err(self.miss(caller_node, ns, key))
            }
            Err(e) => Err(StoreError::io(format!("reading entry {ns}/{key}"), e)),
        }
    }

    fn miss(&self, node: u32, ns: &str, key: &str) -> StoreError {
        self.shared.stats.miss(node);
        StoreError::NotFound {
            namespace: ns.into(),
            key: key.into(),
        }
    }

    fn broken(&self, ns: &str, key: &str, id: u64, caller_node: u32, why: String) -> StoreError {
        tracing::warn!("dropping entry {ns}/{key}: {why}");
        let _ = self.send(Op::Delete {
            ns: ns.into(),
            key: key.into(),
            only_id: Some(id),
            why: Why::Broken,
            reply: None,
        });
        self.miss(caller_node, ns, key)
    }

    /// Remove `ns`/`key`; true when it existed.
    pub fn delete(&self, ns: &str, key: &str, caller: &Caller) -> Result<bool, StoreError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        self.check_owner(ns, caller, false)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Op::Delete {
            ns: ns.into(),
            key: key.into(),
            only_id: None,
            why: Why::User,
            reply: Some(rtx),
        })?;
        Self::wait(rrx)
    }

    /// What the index knows about `ns`/`key`.
    pub fn lookup(&self, ns: &str, key: &str) -> Result<EntryInfo, StoreError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let now = unix_ns();
        self.shared
            .map
            .with(ns, key, |e| {
                (e.expires_ns == 0 || e.expires_ns > now).then(|| EntryInfo {
                    size: e.size,
                    stored_size: e.stored,
                    node: e.node,
                    created: e.created,
                    last_access: e.last_access_ns.load(Relaxed) / 1_000_000_000,
                    hits: e.hits.load(Relaxed),
                    expires: (e.expires_ns != 0).then(|| e.expires_ns.div_ceil(1_000_000_000)),
                })
            })
            .flatten()
            .ok_or_else(|| StoreError::NotFound {
                namespace: ns.into(),
                key: key.into(),
            })
    }

    /// Remove every entry of `ns`; returns how many.
    pub fn clear(&self, ns: &str, caller: &Caller) -> Result<u64, StoreError> {
        validate_namespace(ns)?;
        self.check_owner(ns, caller, false)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Op::Clear {
            ns: ns.into(),
            reply: rtx,
        })?;
        Self::wait(rrx)
    }

    /// Snapshot every shard and the index at one instant (writes paused); returns its name
    /// (UTC time, e.g. `20261125T041500Z`). Older snapshots beyond `snapshots_keep` go.
    pub fn create_snapshot(&self) -> Result<String, StoreError> {
        let _paused = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let root = self.dir.join("snapshots");
        let btrfs = self.shared.btrfs;
        let keep = self.shared.cfg.snapshots_keep;
        self.exec(move |c| {
            c.flush()?;
            let shards: Vec<Arc<Shard>> = c.shared.layout().shards.values().cloned().collect();
            let name = snapshot::create(&root, &shards, &c.conn, btrfs, unix_ns() / 1_000_000_000)?;
            let gone = snapshot::rotate(&root, keep.max(1))?;
            tracing::info!("snapshot {name} taken; rotated out {gone:?}");
            Ok(name)
        })
    }

    /// Snapshot names, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<String>, StoreError> {
        snapshot::list(&self.dir.join("snapshots"))
    }

    /// Delete snapshot `name`.
    pub fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        snapshot::delete(&self.dir.join("snapshots"), name)
    }

    /// The seed's statistics JSON plus our extra fields.
    pub fn stats_json(&self) -> serde_json::Value {
        let layout = self.shared.layout();
        let mut dist = serde_json::Map::new();
        for node in layout.stat_nodes() {
            let s = self.shared.node_stats_in(&layout, node);
            dist.insert(
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
            );
        }
        let single = layout.topology.nodes.len() <= 1;
        let b = self.shared.stats.benefits(single);
        serde_json::json!({
            "node_distribution": dist,
            "numa_benefits": {
                "latency_improvement_ms": b.latency_improvement_ms,
                "memory_bandwidth_gain": b.memory_bandwidth_gain,
                "single_node": b.single_node,
                "local_samples": b.local_samples,
                "remote_samples": b.remote_samples,
            },
            "totals": self.totals(),
            "corrupted": self.shared.stats.corrupted.load(Relaxed),
            "btrfs": self.shared.btrfs,
            "strategy": layout.strategy.strategy.as_str(),
        })
    }

    /// Totals for the D-Bus CacheStats properties.
    pub fn totals(&self) -> StatsTotals {
        self.shared.stats.totals()
    }

    /// One node's figures; None for a node the cache has never known.
    pub fn node_stats(&self, node: u32) -> Option<NodeStats> {
        let layout = self.shared.layout();
        layout
            .stat_nodes()
            .contains(&node)
            .then(|| self.shared.node_stats_in(&layout, node))
    }

    /// `numa_cache_stats` rows between two unix times, as a JSON array.
    pub fn history(
        &self,
        since_unix: u64,
        until_unix: u64,
    ) -> Result<serde_json::Value, StoreError> {
        if since_unix > until_unix {
            return Err(StoreError::InvalidArgument(format!(
                "since {since_unix} is after until {until_unix}"
            )));
        }
        let rows = self.exec(move |c| {
            index::history(&c.conn, since_unix, until_unix)
                .map_err(|e| StoreError::sql("reading history", e))
        })?;
        serde_json::to_value(rows)
            .map_err(|e| StoreError::Unavailable(format!("encoding history: {e}")))
    }

    /// Write a `numa_cache_stats` row per node now (the committer also does it every
    /// `stats_interval`).
    pub fn record_stats(&self) -> Result<(), StoreError> {
        self.exec(|c| c.write_stats())
    }

    /// Zero hits, misses, evictions and latency samples.
    pub fn reset_counters(&self) {
        self.shared.stats.reset();
    }

    /// The active strategy.
    pub fn strategy(&self) -> StrategyConfig {
        self.shared.layout().strategy
    }

    /// Validate, persist and apply a strategy; existing entries stay where they are.
    /// Returns the number of worker threads re-applied.
    pub fn set_strategy(&self, cfg: StrategyConfig) -> Result<usize, StoreError> {
        if let Some(p) = cfg.node_preference {
            self.shared
                .placer
                .check_node(i64::from(p))
                .map_err(|e| StoreError::InvalidArgument(format!("node_preference: {e}")))?;
        }
        self.exec(move |c| {
            index::save_strategy(&mut c.conn, &cfg)
                .map_err(|e| StoreError::sql("saving the strategy", e))
        })?;
        let mut slot = self
            .shared
            .layout
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let pools = Arc::clone(&slot.pools);
        let n = pools.apply(&cfg);
        if let Err(e) = self.shared.placer.set_config(cfg) {
            // Checked above; only a topology change in between can get here.
            tracing::warn!("placement keeps its previous strategy: {e}");
        }
        let next = Layout {
            topology: Arc::clone(&slot.topology),
            cpu_node: slot.cpu_node.clone(),
            placeable: slot.placeable.clone(),
            shards: slot.shards.clone(),
            tiers: slot.tiers.clone(),
            pools,
            strategy: cfg,
        };
        *slot = Arc::new(next);
        tracing::info!(
            "strategy now {} (node preference {:?}, memory policy {})",
            cfg.strategy,
            cfg.node_preference,
            cfg.memory_policy
        );
        Ok(n)
    }

    /// The topology in force.
    pub fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.shared.layout().topology)
    }

    /// Hotplug: new nodes get shards, tiers and pools; a vanished node's entries stay
    /// readable (its shard is kept and served by the nearest pool).
    pub fn update_topology(&self, topology: Arc<Topology>) {
        let mut slot = self
            .shared
            .layout
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let placeable = placeable(&topology);
        let mut shards = slot.shards.clone();
        let mut tiers = slot.tiers.clone();
        let shards_dir = self.dir.join("shards");
        for &n in &placeable {
            if let std::collections::btree_map::Entry::Vacant(v) = shards.entry(n) {
                match Shard::open(&shards_dir, n, self.shared.btrfs) {
                    Ok(s) => {
                        v.insert(Arc::new(s));
                    }
                    Err(e) => {
                        tracing::error!("node {n} appeared but its shard could not be made: {e}")
                    }
                }
            }
            if self.shared.cfg.memory_bytes > 0 {
                tiers.entry(n).or_insert_with(|| {
                    Arc::new(MemTier::on_node(
                        n,
                        tier_share(&self.shared.cfg, placeable.len()),
                    ))
                });
            }
        }
        let strategy = slot.strategy;
        let repinned = slot.pools.update(&topology);
        self.shared.placer.set_topology(Arc::clone(&topology));
        tracing::info!("topology changed: {repinned} worker threads re-pinned");
        let next = Layout {
            cpu_node: cpu_map(&topology),
            placeable,
            shards,
            tiers,
            pools: Arc::clone(&slot.pools),
            strategy,
            topology: Arc::clone(&topology),
        };
        *slot = Arc::new(next);
        drop(slot);
        let _ = self.send(Op::Exec(Box::new(move |c| {
            let res = c.conn.transaction().and_then(|tx| {
                index::write_topology(&tx, &topology)?;
                tx.commit()
            });
            if let Err(e) = res {
                tracing::warn!("writing numa_topology: {e}");
            }
        })));
    }

    /// Whether the shards are btrfs subvolumes.
    pub fn btrfs(&self) -> bool {
        self.shared.btrfs
    }

    /// Finish queued work, write back access times, checkpoint the WAL and flush (SIGTERM).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.exec(|c| c.flush())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = self.tx.send(Op::Stop);
        if let Some(h) = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

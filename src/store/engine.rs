//! The `Cache`: ties the shards, the index, the memory tiers, the committer and the worker
//! pools together. Gets are served on the calling thread whenever that is already the right
//! node (always for memory-tier hits); otherwise the entry's node pool does the disk read,
//! so page-cache and memory-tier pages stay on the entry's node.

use crate::placement::{NodePools, Placer, StrategyConfig};
use crate::store::blob;
use crate::store::checkpoint;
use crate::store::commit::{self, CommitQueue, Committer, Op, PutReply, Record, Why, Writer};
use crate::store::config::{
    CacheConfig, Caller, EntryInfo, PutOptions, validate_key, validate_namespace,
};
use crate::store::entries::unpack_loc;
use crate::store::error::StoreError;
use crate::store::index::{self, RecordSize, Row};
use crate::store::memtier::MemTier;
use crate::store::recovery;
use crate::store::segment::{LARGE_RECORD, segment_bytes_for};
use crate::store::shard::{self, Shard};
use crate::store::snapshot;
use crate::store::state::{
    InflightBytes, Layout, Shared, cpu_map, current_cpu, placeable, unix_ns,
};
use crate::store::stats::{CacheStats, NodeStats, StatsTotals, Tier};
use crate::topology::Topology;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The cache engine. `Send + Sync`; the daemon holds it in an `Arc`.
pub struct Cache {
    shared: Arc<Shared>,
    /// The committer's queue (and state, for puts their callers run, see [`CommitQueue`]).
    queue: Arc<CommitQueue>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Puts and deletes hold it shared; a snapshot holds it exclusively (writes paused).
    gate: RwLock<()>,
    dir: PathBuf,
    /// The entry map was loaded from its checkpoint (not by scanning the index).
    from_checkpoint: bool,
}

/// Removes a put's id from the in-flight set when the put is over (answered or failed).
/// Owned, so that it can travel with a put's answer to the committer thread.
struct IdGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for IdGuard {
    fn drop(&mut self) {
        self.shared
            .inflight_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The largest value [`Cache::put_nowait`] writes on the calling thread: one small pwrite
/// into the page cache (microseconds); larger values go through a thread that may block.
pub const NOWAIT_MAX_BYTES: u64 = 64 << 10;

/// What [`Cache::put_nowait`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutStart {
    /// The record is written and its row queued: the answer comes through the callback.
    Queued,
    /// Nothing was done: this put must wait for another thread; use [`Cache::put`].
    WouldBlock,
}

/// What a put of bytes decided before writing anything.
struct PutPlan {
    writer: Writer,
    layout: Arc<Layout>,
    node: u32,
    created: u64,
    expires: Option<u64>,
}

/// Bytes of a put admitted under the in-flight bound, given back when it drops (with the
/// put's answer, on whichever thread gives it).
struct HeldBytes {
    shared: Arc<Shared>,
    n: u64,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.shared.inflight_bytes.release(self.n);
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the cache is shutting down (committer stopped)".into())
}

/// Expiry (unix seconds) of a put at `now_s` with `ttl`: saturating, and capped where the
/// index (SQLite INTEGER) can hold it, so a huge TTL means "practically never", never a wrap.
pub fn expiry(now_s: u64, ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| {
        let secs = t.as_secs().saturating_add(u64::from(t.subsec_nanos() > 0));
        now_s.saturating_add(secs).min(i64::MAX as u64)
    })
}

/// The bound on bytes of puts in flight: enough for many concurrent puts of the largest value.
fn inflight_bound(cfg: &CacheConfig) -> u64 {
    cfg.max_value_bytes.saturating_mul(2).max(64 << 20)
}

fn tier_share(cfg: &CacheConfig, nodes: usize) -> u64 {
    cfg.memory_bytes / nodes.max(1) as u64
}

/// What a blocking caller waits on: a channel, or a put's answer slot.
trait Answered<T> {
    fn answer(self) -> Result<T, StoreError>;
}

impl<T> Answered<T> for mpsc::Receiver<Result<T, StoreError>> {
    fn answer(self) -> Result<T, StoreError> {
        self.recv()
            .map_err(|_| StoreError::Unavailable("the committer stopped before answering".into()))?
    }
}

/// A blocking put's answer, once `done`.
#[derive(Default)]
struct AnswerSlot {
    done: std::sync::atomic::AtomicBool,
    result: Mutex<Option<Result<(), StoreError>>>,
}

/// The committer's end of an [`AnswerSlot`]: answered once, or, dropped unanswered (the
/// committer stopped), answered with that; either way the caller's bell rings.
struct Answering(Arc<AnswerSlot>);

impl Answering {
    fn set(&self, r: Result<(), StoreError>) {
        *self.0.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let mut slot = self.0.result.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Err(StoreError::Unavailable(
                "the committer stopped before answering".into(),
            )));
        }
        drop(slot);
        self.0.done.store(true, std::sync::atomic::Ordering::SeqCst);
        commit::BELL.ring_soon();
    }
}

/// The caller's end of an [`AnswerSlot`].
struct PutAnswer(Arc<AnswerSlot>);

impl Answered<()> for PutAnswer {
    fn answer(self) -> Result<(), StoreError> {
        let slot = &self.0;
        commit::BELL.wait_until(|| slot.done.load(std::sync::atomic::Ordering::SeqCst));
        slot.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Err(StoreError::Unavailable("a put was answered twice".into())))
    }
}

impl Cache {
    /// Open (creating or repairing) the cache in `config.dir` for `topology`. A v1 cache
    /// (one file per value) opens as it is: its files stay readable as large-value files and
    /// new values go to segments; the schema gains its location columns.
    pub fn open(config: CacheConfig, topology: Arc<Topology>) -> Result<Cache, StoreError> {
        if config.zstd_level < 1 || config.zstd_level > 22 {
            return Err(StoreError::InvalidArgument(format!(
                "zstd level {} is outside 1-22",
                config.zstd_level
            )));
        }
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        // Nothing inside the state directory may be a symlink: start-up removes and rewrites
        // files there and must never do it to a link's target.
        for (name, want_dir) in [
            ("shards", true),
            ("snapshots", true),
            ("index.db", false),
            ("index.db-wal", false),
            ("index.db-shm", false),
            ("index.db-journal", false),
            ("reserve", false),
            (checkpoint::FILE, false),
            (checkpoint::TMP_FILE, false),
        ] {
            shard::refuse_symlink(&dir.join(name), want_dir)?;
        }
        let shards_dir = dir.join("shards");
        match std::fs::create_dir(&shards_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::io(
                    format!("creating {}", shards_dir.display()),
                    e,
                ));
            }
            _ => {}
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
            shards.insert(
                n,
                Arc::new(Shard::open(
                    &shards_dir,
                    n,
                    btrfs,
                    segment_bytes_for(config.max_bytes),
                )?),
            );
        }
        let list: Vec<Arc<Shard>> = shards.values().cloned().collect();
        // After a clean stop the entry map comes from its checkpoint when that is current.
        let mut loaded = None;
        let rec = recovery::recover(&dir, &list, &mut |conn| {
            loaded = checkpoint::load(conn, &dir);
            loaded.is_some()
        })?;
        let mut conn = rec.conn;
        let strategy = match index::active_strategy(&conn)
            .map_err(|e| StoreError::sql("reading the strategy", e))?
        {
            Some(s) => s,
            None => config.strategy,
        };
        // Ids never repeat, even after a power loss lost the last ones: start above the
        // clock in microseconds too (puts run well below one per microsecond).
        let mut next_id = rec.next_id.max(unix_ns() / 1000);
        if let Some(l) = &loaded {
            next_id = next_id.max(l.max_id.saturating_add(1));
        }
        {
            // This one commit is fsynced: the clean flag must be cleared on disk before any
            // write can happen.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| StoreError::sql("opening", e))?;
            let tx = conn
                .transaction()
                .map_err(|e| StoreError::sql("opening", e))?;
            index::write_topology(&tx, &topology)
                .map_err(|e| StoreError::sql("writing numa_topology", e))?;
            index::meta_set(&tx, "clean", 0).map_err(|e| StoreError::sql("opening", e))?;
            // From here on the map will change: the checkpoint is stale.
            checkpoint::invalidate(&tx).map_err(|e| StoreError::sql("opening", e))?;
            index::meta_set(&tx, "next_id", next_id as i64)
                .map_err(|e| StoreError::sql("opening", e))?;
            index::meta_set(&tx, "verified_below", next_id as i64)
                .map_err(|e| StoreError::sql("opening", e))?;
            tx.commit().map_err(|e| StoreError::sql("opening", e))?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| StoreError::sql("opening", e))?;
        }
        checkpoint::remove_file(&dir);
        let from_checkpoint = loaded.is_some();
        // The rows were not read: the counts come from the checkpoint's sums.
        let (map, sums) = match loaded {
            Some(l) => (l.map, Some((l.with_ttl, l.per_node, l.live))),
            None => (Default::default(), None),
        };
        let tiers = if config.memory_bytes > 0 {
            let share = tier_share(&config, placeable.len());
            shards
                .keys()
                .map(|&n| (n, Arc::new(MemTier::on_node(n, share))))
                .collect()
        } else {
            BTreeMap::new()
        };
        let layout = Layout {
            cpu_node: cpu_map(&topology),
            placeable,
            shards,
            tiers,
            pools: Arc::new(NodePools::start(&topology, &strategy)),
            strategy,
            placer: Arc::new(Placer::new(Arc::clone(&topology), strategy)),
            topology,
        };
        let bound = inflight_bound(&config);
        let shared = Arc::new(Shared {
            cfg: config,
            btrfs,
            map,
            layout: RwLock::new(Arc::new(layout)),
            stats: Default::default(),
            namespaces: RwLock::new(rec.namespaces.into_iter().collect()),
            next_id: AtomicU64::new(next_id),
            ttl_entries: AtomicU64::new(0),
            puts_in_flight: AtomicU64::new(0),
            inflight_ids: Mutex::new(Default::default()),
            inflight_bytes: InflightBytes::new(bound),
            unsynced_blobs: Mutex::new(Vec::new()),
        });

        for r in &rec.rows {
            if r.expires.is_some() {
                shared.ttl_entries.fetch_add(1, Relaxed);
            }
            shared.stats.add_entry(r.node, r.size, r.stored);
        }
        let mut live = commit::live_of(&rec.rows);
        if let Some((with_ttl, per_node, from_map)) = sums {
            shared.ttl_entries.fetch_add(with_ttl, Relaxed);
            for (node, (n, logical, stored)) in per_node {
                let c = shared.stats.node(node);
                c.entries.fetch_add(n, Relaxed);
                c.logical.fetch_add(logical, Relaxed);
                c.stored.fetch_add(stored, Relaxed);
            }
            live = from_map;
        }
        // Access order from the index's last-access times (seconds), oldest first.
        let oldest = rec.rows.iter().map(|r| r.last_access).min().unwrap_or(0);
        shared.map.load(rec.rows, |r| {
            (r.last_access.saturating_sub(oldest) + 1).min(u64::from(u32::MAX / 2)) as u32
        });
        // The rows (keys as strings) are gone now; hand their heap back to the system so the
        // resident size is the map's own (glibc keeps freed small blocks otherwise).
        // SAFETY: malloc_trim only returns free heap pages; no live allocation is touched.
        unsafe {
            libc::malloc_trim(0);
        }
        let committer = Committer::new(conn, Arc::clone(&shared), live);
        let (queue, rx) = CommitQueue::new(committer);
        let served = Arc::clone(&queue);
        let handle = std::thread::Builder::new()
            .name("cache-committer".into())
            .spawn(move || Committer::run(served, rx))
            .map_err(|e| StoreError::Unavailable(format!("starting the committer thread: {e}")))?;
        Ok(Cache {
            shared,
            queue,
            committer: Mutex::new(Some(handle)),
            gate: RwLock::new(()),
            dir,
            from_checkpoint,
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.queue.send(op).map_err(|_| stopped())
    }

    /// A put's op: run on this thread when the committer is idle and the put needs nothing
    /// slow, else queued (see [`CommitQueue::offer`]).
    fn offer(&self, op: Op) -> Result<(), StoreError> {
        self.queue.offer(op).map_err(|_| stopped())
    }

    fn wait<T>(rx: impl Answered<T>) -> Result<T, StoreError> {
        rx.answer()
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

    /// Early ownership check (the committer checks again, and that check decides); returns
    /// the owner a record of `ns` carries: the current owner, or the caller's claim.
    fn check_owner(&self, ns: &str, caller: &Caller) -> Result<Writer, StoreError> {
        // Asked once: a syscall on every put otherwise (the daemon's uid does not change).
        static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = *EUID.get_or_init(|| unsafe { libc::geteuid() });
        let writer = Writer {
            uid: caller.uid,
            claim: caller.uid.unwrap_or(me),
        };
        let owners = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(Some(owner)) = owners.get(ns)
            && let Some(uid) = caller.uid
            && uid != 0
            && uid != *owner
        {
            return Err(StoreError::PermissionDenied(format!(
                "namespace {ns:?} belongs to uid {owner}; uid {uid} may read it but not change it"
            )));
        }
        Ok(writer)
    }

    /// PermissionDenied unless `caller` may write `ns` now (its owner, root, or a namespace
    /// without one). For steps that promise a write before making it, such as a fill lease.
    pub fn check_writer(&self, ns: &str, caller: &Caller) -> Result<(), StoreError> {
        self.check_owner(ns, caller).map(|_| ())
    }

    fn record_owner(&self, ns: &str, writer: &Writer) -> Option<u32> {
        match self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
        {
            Some(owner) => *owner,
            None => Some(writer.claim),
        }
    }

    fn choose_node(layout: &Layout, key: &str, caller: &Caller) -> u32 {
        let node = layout.placer.place(key.as_bytes(), caller.cpu);
        if layout.shards.contains_key(&node) {
            node
        } else {
            layout.placeable.first().copied().unwrap_or(node)
        }
    }

    fn target_node(
        layout: &Layout,
        key: &str,
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<u32, StoreError> {
        match opts.node {
            Some(n) => {
                let n = layout
                    .placer
                    .check_node(i64::from(n))
                    .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
                if !layout.shards.contains_key(&n) {
                    return Err(StoreError::InvalidArgument(format!(
                        "node {n} has no shard; nodes with shards: {:?}",
                        layout.shards.keys().collect::<Vec<_>>()
                    )));
                }
                Ok(n)
            }
            None => Ok(Self::choose_node(layout, key, caller)),
        }
    }

    /// A new entry id, registered as in flight until the guard drops (under one lock, so a
    /// flush never sees an id handed out but not yet registered).
    fn new_id(&self) -> IdGuard {
        self.new_ids(1)
    }

    /// `n` new entry ids that follow each other, `guard.id..guard.id + n` (a PutMany's batch,
    /// which its records name by its first id and count). Only the first is registered as in
    /// flight: the flush point stays below it, so below every id of the batch.
    fn new_ids(&self, n: u64) -> IdGuard {
        let mut set = self
            .shared
            .inflight_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let id = self.shared.next_id.fetch_add(n.max(1), Relaxed);
        set.insert(id);
        IdGuard {
            shared: Arc::clone(&self.shared),
            id,
        }
    }

    /// Hand a written record to the committer, which answers through `reply`.
    fn commit_put(
        &self,
        row: Row,
        record: Record,
        writer: Writer,
        sync: bool,
        reply: PutReply,
    ) -> Result<(), StoreError> {
        if let Err(e) = self.offer(Op::Put {
            row,
            record,
            writer,
            sync,
            reply,
        }) {
            self.shared.puts_in_flight.fetch_sub(1, Relaxed);
            return Err(e);
        }
        Ok(())
    }

    /// A reply that a blocking caller waits for with [`Cache::wait`]: a slot of its own,
    /// rung through [`commit::BELL`] (one wake-up call for a whole batch of answers).
    fn reply_channel() -> (PutReply, PutAnswer) {
        let slot = Arc::new(AnswerSlot::default());
        let sender = Answering(Arc::clone(&slot));
        (Box::new(move |r| sender.set(r)), PutAnswer(slot))
    }

    fn pressure(&self, stored: u64) {
        // Make room for the next put: the least recently used entries go.
        let _ = self.send(Op::Pressure(
            stored
                .saturating_mul(4)
                .max(self.shared.stats.stored_total() / 20),
        ));
    }

    /// Store `value` under `ns`/`key`; returns the node whose shard holds it. When it returns
    /// the value's record is in the kernel (it survives a crash of this process; its index
    /// row follows within `commit::DEFER_FOR`, and recovery restores the put from the record
    /// meanwhile); it reaches stable storage within `sync_interval`, or before it returns
    /// with `opts.sync` (ARCHITECTURE.md, "Durability contract", has the whole contract).
    pub fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<u32, StoreError> {
        let plan = self.plan_put(ns, key, value.len() as u64, opts, caller)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let _bytes = self.shared.inflight_bytes.acquire(value.len() as u64)?;
        let (reply, answer) = Self::reply_channel();
        let node = plan.node;
        self.write_put(plan, ns, key, value, opts.sync, reply)?;
        Self::wait(answer)?;
        Ok(node)
    }

    /// The same put as [`Cache::put`], for a caller that must not block (an async task):
    /// the record is made on the calling thread (and written there on a NUMA host; with one
    /// node the committer writes it with its batch) and its row queued for the committer,
    /// which calls `done` with the answer (on its own thread) once the put is done; the
    /// contract of `put` holds when `done` is called. Returns [`PutStart::WouldBlock`],
    /// with nothing done and `done` dropped, when the put would have to wait for another
    /// thread first: a value over [`NOWAIT_MAX_BYTES`], a record that must be written from
    /// another node's pool, or a snapshot pausing writes. Then use `put` on a thread that may
    /// block. Errors found before the record is written are returned (and `done` dropped).
    ///
    /// Its bytes count against the bound on bytes of puts in flight until it is answered;
    /// when the bound is reached it is declined (WouldBlock), so that `put` waits for room.
    pub fn put_nowait(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        opts: &PutOptions,
        caller: &Caller,
        done: impl FnOnce(Result<u32, StoreError>) + Send + 'static,
    ) -> Result<PutStart, StoreError> {
        if value.len() as u64 > NOWAIT_MAX_BYTES {
            return Ok(PutStart::WouldBlock);
        }
        let plan = self.plan_put(ns, key, value.len() as u64, opts, caller)?;
        if !plan.layout.runs_inline(plan.node) {
            return Ok(PutStart::WouldBlock);
        }
        // A snapshot holds the gate for as long as it takes: never wait for it here. The
        // gate is held until the row is queued, so a snapshot's flush (queued behind it)
        // still covers every record written before it.
        let _gate = match self.gate.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(PutStart::WouldBlock),
        };
        let len = value.len() as u64;
        if !self.shared.inflight_bytes.try_admit(len) {
            return Ok(PutStart::WouldBlock);
        }
        let held = HeldBytes {
            shared: Arc::clone(&self.shared),
            n: len,
        };
        let node = plan.node;
        self.write_put(
            plan,
            ns,
            key,
            value,
            opts.sync,
            Box::new(move |r: Result<(), StoreError>| {
                drop(held);
                done(r.map(|()| node))
            }),
        )?;
        Ok(PutStart::Queued)
    }

    /// The checks every put of bytes makes before anything is written: names, size, owner
    /// (the committer checks it again, and decides), target node, times.
    fn plan_put(
        &self,
        ns: &str,
        key: &str,
        len: u64,
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<PutPlan, StoreError> {
        self.plan_put_within(ns, key, len, self.shared.cfg.max_value_bytes, opts, caller)
    }

    /// [`Cache::plan_put`] with the size limit given.
    fn plan_put_within(
        &self,
        ns: &str,
        key: &str,
        len: u64,
        limit: u64,
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<PutPlan, StoreError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        if len > limit {
            return Err(StoreError::TooLarge { size: len, limit });
        }
        let writer = self.check_owner(ns, caller)?;
        let layout = self.shared.layout();
        let node = Self::target_node(&layout, key, opts, caller)?;
        let created = unix_ns() / 1_000_000_000;
        let expires = expiry(created, opts.ttl);
        Ok(PutPlan {
            writer,
            layout,
            node,
            created,
            expires,
        })
    }

    /// Encode the record of a planned put and write it (or leave it to the committer's batch
    /// write, see [`Record::Pending`]), then queue its row for the committer, which answers
    /// through `reply`. The caller holds the write gate. On an error returned
    /// here `reply` was dropped unanswered.
    fn write_put(
        &self,
        plan: PutPlan,
        ns: &str,
        key: &str,
        value: &[u8],
        sync: bool,
        reply: PutReply,
    ) -> Result<(), StoreError> {
        let PutPlan {
            writer,
            layout,
            node,
            created,
            expires,
        } = plan;
        let id = self.new_id();
        let (bytes, checksum) = blob::encode(
            id.id,
            ns,
            key,
            value,
            self.shared.cfg.zstd_level,
            self.shared.cfg.compress_min_bytes,
            created,
            expires.unwrap_or(0),
            self.record_owner(ns, &writer),
            None,
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
        let small = stored <= LARGE_RECORD;
        // The committer answers (and un-counts) every put that reaches its queue.
        self.shared.puts_in_flight.fetch_add(1, Relaxed);
        let idv = id.id;
        let (written, record) = if small && layout.any_thread() {
            // No thread placement to respect: the committer appends this record together
            // with the others of its batch, in one write, before it commits their rows.
            (Ok(None), Record::Pending(bytes))
        } else {
            let written = layout.on_node(node, move || {
                if small {
                    Ok(Some(shard.segments.append(&bytes)?))
                } else {
                    shard.write_blob(idv, &bytes)?;
                    Ok::<_, StoreError>(None)
                }
            });
            (written, Record::Written)
        };
        if written.is_ok()
            && let Some(t) = layout.tiers.get(&node)
        {
            // Every value put whole goes to the tier (as a read would put it there), large
            // ones too; the tier copies it into the node's memory whichever thread calls.
            t.insert(idv, value);
        }
        let size = RecordSize {
            size: value.len() as u64,
            stored,
            checksum,
        };
        let row = written.map(|loc| {
            Row::fresh(
                idv,
                ns,
                key.to_string(),
                node,
                size,
                (created, expires),
                loc,
            )
        });
        // The id stays in flight until the put is answered (the flusher's mark counts on it).
        self.finish_put(
            row,
            record,
            stored,
            writer,
            sync,
            Box::new(move |r| {
                drop(id);
                reply(r)
            }),
        )
    }

    /// The end every put shares once its record was written (or failed to be): a failure is
    /// un-counted and, on a full disk, asks eviction for `needed` bytes; a value in a file of
    /// its own waits for the next flush; the row goes to the committer.
    fn finish_put(
        &self,
        written: Result<Row, StoreError>,
        record: Record,
        needed: u64,
        writer: Writer,
        sync: bool,
        reply: PutReply,
    ) -> Result<(), StoreError> {
        let row = match written {
            Ok(row) => row,
            Err(e) => {
                self.shared.puts_in_flight.fetch_sub(1, Relaxed);
                if matches!(e, StoreError::NoSpace(_)) {
                    self.pressure(needed);
                }
                return Err(e);
            }
        };
        let node = row.node;
        if row.loc.is_none() && matches!(record, Record::Written) {
            self.shared
                .unsynced_blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((node, row.id));
        }
        self.commit_put(row, record, writer, sync, reply)
    }

    /// Store the contents of `file` (a PutFd's memfd) under `ns`/`key`, streaming it to the
    /// shard in 1 MiB pieces: the value is never held in memory whole, so a put of N bytes
    /// raises the resident memory by far less than N. Same contract and errors as `put`.
    pub fn put_file(
        &self,
        ns: &str,
        key: &str,
        file: &std::fs::File,
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<u32, StoreError> {
        use std::os::unix::fs::FileExt;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("reading the size of the value's descriptor", e))?
            .len();
        if len <= LARGE_RECORD {
            let mut v = vec![0u8; len as usize];
            file.read_exact_at(&mut v, 0)
                .map_err(|e| StoreError::io("reading the value's descriptor", e))?;
            return self.put(ns, key, &v, opts, caller);
        }
        // A file of its own must also fit the disk's whole budget.
        let limit = self
            .shared
            .cfg
            .max_value_bytes
            .min(self.shared.cfg.max_bytes);
        let PutPlan {
            writer,
            layout,
            node,
            created,
            expires,
        } = self.plan_put_within(ns, key, len, limit, opts, caller)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let _bytes = self.shared.inflight_bytes.acquire(len)?;
        let id = self.new_id();
        let shard = layout
            .shards
            .get(&node)
            .cloned()
            .ok_or_else(|| StoreError::Unavailable(format!("no shard for node {node}")))?;
        let level = self.shared.cfg.zstd_level;
        let mut sample = vec![0u8; (64usize << 10).min(len as usize)];
        file.read_exact_at(&mut sample, 0)
            .map_err(|e| StoreError::io("reading the value's descriptor", e))?;
        let compress = len >= self.shared.cfg.compress_min_bytes.max(64) as u64
            && blob::compression_pays(level, &sample);
        drop(sample);
        let hl = blob::header_len(ns, key);
        let owner = self.record_owner(ns, &writer);
        self.shared.puts_in_flight.fetch_add(1, Relaxed);
        let (ns2, key2) = (ns.to_string(), key.to_string());
        let src = file
            .try_clone()
            .map_err(|e| StoreError::io("duplicating the value's descriptor", e))?;
        let idv = id.id;
        let sh = Arc::clone(&shard);
        let written = layout.on_node(node, move || {
            let tmp = sh.create_tmp(idv)?;
            let res = stream_record(&src, &tmp, len, hl, compress, level).and_then(
                |(payload_len, checksum)| {
                    let header = blob::encode_header(
                        &blob::HeaderFields {
                            id: idv,
                            flags: if compress { blob::FLAG_ZSTD } else { 0 },
                            logical_len: len,
                            payload_len,
                            checksum,
                            created,
                            expires: expires.unwrap_or(0),
                            owner,
                            batch: None,
                        },
                        &ns2,
                        &key2,
                    );
                    tmp.write_all_at(&header, 0)
                        .map_err(|e| StoreError::io("writing a record header", e))?;
                    Ok((hl as u64 + payload_len, checksum))
                },
            );
            drop(tmp);
            match res {
                Ok(r) => sh.publish_tmp(idv).map(|()| r),
                Err(e) => {
                    sh.remove_tmp(idv);
                    Err(e)
                }
            }
        });
        let row = written.map(|(stored, checksum)| {
            let size = RecordSize {
                size: len,
                stored,
                checksum,
            };
            Row::fresh(
                idv,
                ns,
                key.to_string(),
                node,
                size,
                (created, expires),
                None,
            )
        });
        let (reply, answer) = Self::reply_channel();
        self.finish_put(row, Record::Written, len, writer, opts.sync, reply)?;
        Self::wait(answer)?;
        Ok(node)
    }

    /// Store every `(key, value)` of `entries` under `ns`, all or nothing: every record is
    /// written first, then ONE committer op indexes all rows in one SQLite transaction. A
    /// failure before that (a record that cannot be written, a full disk) discards the
    /// records already written and stores none; a refusal by the committer (the namespace is
    /// another uid's) or a failed commit stores none either. Returns how many were stored.
    /// A crash between its writes (one batch may take several `pwritev` calls, and shards)
    /// leaves it whole or absent too: each record names its batch, and recovery indexes the
    /// batch's records only when it finds all of them. Keys must be distinct (a later
    /// duplicate would win over an earlier one). Same options, contract and errors as `put`;
    /// the batch is not split into separate commits.
    pub fn put_many(
        &self,
        ns: &str,
        entries: Vec<(String, Vec<u8>)>,
        opts: &PutOptions,
        caller: &Caller,
    ) -> Result<u32, StoreError> {
        validate_namespace(ns)?;
        let limit = self.shared.cfg.max_value_bytes;
        let mut total = 0u64;
        for (key, value) in &entries {
            validate_key(key)?;
            if value.len() as u64 > limit {
                return Err(StoreError::TooLarge {
                    size: value.len() as u64,
                    limit,
                });
            }
            total = total.saturating_add(value.len() as u64);
        }
        let count = u32::try_from(entries.len()).map_err(|_| StoreError::TooLarge {
            size: entries.len() as u64,
            limit: u64::from(u32::MAX),
        })?;
        if entries.is_empty() {
            return Ok(0);
        }
        let writer = self.check_owner(ns, caller)?;
        let layout = self.shared.layout();
        let created = unix_ns() / 1_000_000_000;
        let expires = expiry(created, opts.ttl);
        let owner = self.record_owner(ns, &writer);
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let _bytes = self.shared.inflight_bytes.acquire(total)?;
        // Encode every record, grouped by node so each node's worker writes its records in
        // one trip. The batch's ids follow each other (in flight until the commit is
        // answered) and every record names the batch: recovery indexes them only all
        // together, so a crash between the writes leaves the batch whole or absent.
        let ids = self.new_ids(u64::from(count));
        let batch = blob::Batch {
            first: ids.id,
            count,
        };
        let mut rows = Vec::with_capacity(entries.len());
        // Per node: (row index, encoded record, the value for the memory tier).
        type Pending = (usize, Vec<u8>, Option<Vec<u8>>);
        let mut by_node: BTreeMap<u32, Vec<Pending>> = BTreeMap::new();
        for (key, value) in entries {
            let node = Self::target_node(&layout, &key, opts, caller)?;
            let id = batch.first + rows.len() as u64;
            let (bytes, checksum) = blob::encode(
                id,
                ns,
                &key,
                &value,
                self.shared.cfg.zstd_level,
                self.shared.cfg.compress_min_bytes,
                created,
                expires.unwrap_or(0),
                owner,
                Some(batch),
            );
            let stored = bytes.len() as u64;
            if stored > self.shared.cfg.max_bytes {
                return Err(StoreError::TooLarge {
                    size: value.len() as u64,
                    limit: self.shared.cfg.max_bytes,
                });
            }
            let size = value.len() as u64;
            // Every value put whole goes to the tier, as `put` does.
            let owned = layout.tiers.contains_key(&node).then_some(value);
            by_node
                .entry(node)
                .or_default()
                .push((rows.len(), bytes, owned));
            let record = RecordSize {
                size,
                stored,
                checksum,
            };
            rows.push(Row::fresh(
                id,
                ns,
                key,
                node,
                record,
                (created, expires),
                None,
            ));
        }
        // The committer answers (and un-counts) the one op this batch becomes.
        self.shared.puts_in_flight.fetch_add(1, Relaxed);
        let mut failed = None;
        let mut written: Vec<usize> = Vec::with_capacity(rows.len());
        for (node, records) in by_node {
            let Some(shard) = layout.shards.get(&node).cloned() else {
                failed = Some(StoreError::Unavailable(format!("no shard for node {node}")));
                break;
            };
            let tier = layout.tiers.get(&node).cloned();
            let meta: Vec<(usize, u64)> =
                records.iter().map(|(i, _, _)| (*i, rows[*i].id)).collect();
            // Written on the node's thread, so page cache and tier pages are the node's; stops
            // at the first failure and reports what it wrote before it.
            let (done, err) = layout.on_node(node, move || {
                let mut done = Vec::with_capacity(records.len());
                // The segment records in one write; then each large value's file.
                let small: Vec<&[u8]> = records
                    .iter()
                    .filter(|(_, b, _)| b.len() as u64 <= LARGE_RECORD)
                    .map(|(_, b, _)| b.as_slice())
                    .collect();
                let mut locs = match shard.segments.append_many(&small) {
                    Ok(locs) => locs.into_iter(),
                    Err(e) => return (done, Some(e)),
                };
                for ((i, bytes, owned), (_, id)) in records.into_iter().zip(meta) {
                    let loc = if bytes.len() as u64 <= LARGE_RECORD {
                        locs.next()
                    } else {
                        if let Err(e) = shard.write_blob(id, &bytes) {
                            return (done, Some(e));
                        }
                        None
                    };
                    if let (Some(t), Some(v)) = (&tier, owned) {
                        t.insert(id, &v);
                    }
                    done.push((i, loc));
                }
                (done, None)
            });
            for (i, loc) in done {
                rows[i].loc = loc;
                written.push(i);
            }
            if let Some(e) = err {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            // Nothing of the batch is indexed: the records written so far go (a large value's
            // file now, a segment record is dead space reclaimed with its segment; recovery
            // after a crash never indexes it, its batch being incomplete).
            self.shared.puts_in_flight.fetch_sub(1, Relaxed);
            for i in written {
                let row = &rows[i];
                if row.loc.is_none()
                    && let Some(s) = layout.shards.get(&row.node)
                {
                    let _ = s.remove_blob(row.id);
                }
                if let Some(t) = layout.tiers.get(&row.node) {
                    t.remove(row.id);
                }
            }
            if matches!(e, StoreError::NoSpace(_)) {
                self.pressure(total);
            }
            return Err(e);
        }
        {
            let mut blobs = self
                .shared
                .unsynced_blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            blobs.extend(
                rows.iter()
                    .filter(|r| r.loc.is_none())
                    .map(|r| (r.node, r.id)),
            );
        }
        // One answer per indexed row, all alike (the batch commits or fails whole): room for
        // all of them, so the committer never waits on this channel.
        let (rtx, rrx) = mpsc::sync_channel(rows.len());
        if let Err(e) = self.offer(Op::PutMany {
            rows,
            writer,
            sync: opts.sync,
            reply: rtx,
        }) {
            self.shared.puts_in_flight.fetch_sub(1, Relaxed);
            return Err(e);
        }
        Self::wait(rrx)?;
        drop(ids);
        Ok(count)
    }

    /// The value under `ns`/`key` when the memory tier holds it: no disk read and no wait, for
    /// callers that must not block (an async front-end's thread). Counted as a hit as `get`
    /// counts one. None in every other case (not in the tier, longer than `max_len`, expired,
    /// missing, a bad argument): `get` then decides.
    pub fn get_in_memory(
        &self,
        ns: &str,
        key: &str,
        caller: &Caller,
        max_len: usize,
    ) -> Option<Vec<u8>> {
        if validate_namespace(ns).is_err() || validate_key(key).is_err() {
            return None;
        }
        let t0 = Instant::now();
        let layout = self.shared.layout.read().unwrap_or_else(|p| p.into_inner());
        let now_s = unix_ns() / 1_000_000_000;
        let (id, node) = self.shared.map.with(ns, key, |e| {
            (!e.expired(now_s)).then(|| (e.id, u32::from(e.node)))
        })??;
        let held = layout.tiers.get(&node)?.get(id)?;
        if held.len() > max_len {
            return None;
        }
        let value = held.to_vec();
        self.shared.map.with(ns, key, |e| {
            if e.id == id {
                self.shared.map.touch(e);
            }
        });
        let caller_node = match caller.cpu {
            Some(c) => layout.node_of_cpu(Some(c)),
            None => layout.node_of_cpu(current_cpu()),
        };
        let local = caller_node == layout.pools.serving_node(node);
        self.shared
            .stats
            .hit(node, Tier::Memory, local, t0.elapsed().as_nanos() as u64);
        Some(value)
    }

    /// The logical size of the value under `ns`/`key` as the in-memory entry map has it: no
    /// I/O, no commit, no wait. None when the key is missing or expired, or a name is bad.
    /// An estimate for budgeting only (a put may change it at any moment, and it is not
    /// checked against the caller): never hand it out as an answer.
    pub fn size_hint(&self, ns: &str, key: &str) -> Option<u64> {
        if validate_namespace(ns).is_err() || validate_key(key).is_err() {
            return None;
        }
        let now_s = unix_ns() / 1_000_000_000;
        self.shared
            .map
            .with(ns, key, |e| (!e.expired(now_s)).then(|| u64::from(e.size)))
            .flatten()
    }

    /// The value under `ns`/`key`. A value whose bytes fail their checksum is never returned:
    /// the entry is dropped and the error is Corrupted.
    pub fn get(&self, ns: &str, key: &str, caller: &Caller) -> Result<Vec<u8>, StoreError> {
        self.get_within(ns, key, caller, u64::MAX)
    }

    /// [`Cache::get`] of a value of at most `max` bytes: a larger one is TooLarge (with its
    /// size) before any of it is read, so a caller that cannot use it (a Get whose reply
    /// must fit a message) costs neither the read nor the memory.
    pub fn get_within(
        &self,
        ns: &str,
        key: &str,
        caller: &Caller,
        max: u64,
    ) -> Result<Vec<u8>, StoreError> {
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
        let now_s = now / 1_000_000_000;
        let found = self.shared.map.with(ns, key, |e| {
            if e.expired(now_s) {
                return Err(e.id);
            }
            self.shared.map.touch(e);
            Ok((
                e.id,
                u32::from(e.node),
                u64::from(e.stored),
                e.loc.load(Relaxed),
                u64::from(e.size),
            ))
        });
        let (id, node, stored, loc) = match found {
            Some(Ok((_, _, _, _, size))) if size > max => {
                return Err(StoreError::TooLarge { size, limit: max });
            }
            Some(Ok((id, node, stored, loc, _))) => (id, node, stored, loc),
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
        let map_shard = Arc::clone(&shard);
        let hash = self.shared.map.key_hash(ns, key);
        let (ns2, key2) = (ns.to_string(), key.to_string());
        let me = Arc::clone(&self.shared);
        let read = layout.on_node(node, move || {
            let mut loc = loc;
            let mut tries = 0;
            let parts = loop {
                let r = match unpack_loc(loc) {
                    Some((seg, off)) => map_shard.segments.read(seg, off, header_len, payload_len),
                    None => shard.read_blob(id, header_len, payload_len),
                };
                // Compaction may have moved the record and dropped its old segment between
                // the map lookup and the read: look again.
                if let Err(e) = &r
                    && e.kind() == std::io::ErrorKind::NotFound
                    && tries < 3
                    && let Some(now_loc) = me
                        .map
                        .with_hash(hash, |e| (e.id == id).then(|| e.loc.load(Relaxed)))
                        .flatten()
                    && now_loc != loc
                {
                    loc = now_loc;
                    tries += 1;
                    continue;
                }
                break r;
            };
            let value = match parts {
                Ok((header, payload)) => blob::decode_record(&header, payload, id, &ns2, &key2),
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
                        "its record (file or segment) is missing".into(),
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
        self.check_owner(ns, caller)?;
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

    /// What the index knows about `ns`/`key` (last access is the index's, written back
    /// every few seconds).
    pub fn lookup(&self, ns: &str, key: &str) -> Result<EntryInfo, StoreError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let now_s = unix_ns() / 1_000_000_000;
        let found = self
            .shared
            .map
            .with(ns, key, |e| {
                (!e.expired(now_s)).then(|| {
                    (
                        e.id,
                        u64::from(e.size),
                        u64::from(e.stored),
                        u32::from(e.node),
                        e.hits(),
                    )
                })
            })
            .flatten();
        let not_found = || StoreError::NotFound {
            namespace: ns.into(),
            key: key.into(),
        };
        let (id, size, stored_size, node, hits) = found.ok_or_else(not_found)?;
        let times = self.exec(move |c| {
            index::entry_times(&c.conn, id).map_err(|e| StoreError::sql("reading an entry", e))
        })?;
        let (created, last_access, expires) = times.ok_or_else(not_found)?;
        Ok(EntryInfo {
            size,
            stored_size,
            node,
            created,
            last_access,
            hits,
            expires,
        })
    }

    /// Remove every entry of `ns`; returns how many.
    pub fn clear(&self, ns: &str, caller: &Caller) -> Result<u64, StoreError> {
        validate_namespace(ns)?;
        self.check_owner(ns, caller)?;
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
            tracing::info!(
                "snapshot {name} taken; rotated out: {}",
                if gone.is_empty() {
                    "none".to_string()
                } else {
                    gone.join(", ")
                }
            );
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

    /// Every figure of the engine, typed: the front-ends render it (the D-Bus JSON, the HTTP
    /// JSON and /metrics from this one value).
    pub fn stats(&self) -> CacheStats {
        let layout = self.shared.layout();
        let node_distribution = layout
            .stat_nodes()
            .into_iter()
            .map(|n| (n, self.shared.node_stats_in(&layout, n)))
            .collect();
        let single = layout.topology.nodes.len() <= 1;
        CacheStats {
            node_distribution,
            numa_benefits: self.shared.stats.benefits(single),
            totals: self.totals(),
            corrupted: self.shared.stats.corrupted.load(Relaxed),
            btrfs: self.shared.btrfs,
            strategy: layout.strategy.strategy.as_str().to_string(),
        }
    }

    /// The seed's statistics JSON plus our extra fields (rendered from [`Cache::stats`]).
    pub fn stats_json(&self) -> serde_json::Value {
        self.stats().to_json()
    }

    /// Totals for the D-Bus CacheStats properties.
    pub fn totals(&self) -> StatsTotals {
        self.shared.stats.totals()
    }

    /// Full flushes completed since the open (see `Stats::full_flushes`): what a caller
    /// watches to know that default puts it saw answered are durable.
    pub fn full_flushes(&self) -> u64 {
        self.shared
            .stats
            .full_flushes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Entries removed in the background (eviction, TTL expiry), to wait on.
    pub fn removals(&self) -> Arc<crate::store::Removals> {
        Arc::clone(&self.shared.stats.removals)
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
    /// Returns the number of worker threads re-applied. The layout (strategy, pools' settings
    /// and placer) changes in one swap, so placement can never lag behind the strategy.
    pub fn set_strategy(&self, cfg: StrategyConfig) -> Result<usize, StoreError> {
        if let Some(p) = cfg.node_preference {
            self.shared
                .layout()
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
        let next = Layout {
            topology: Arc::clone(&slot.topology),
            cpu_node: slot.cpu_node.clone(),
            placeable: slot.placeable.clone(),
            shards: slot.shards.clone(),
            tiers: slot.tiers.clone(),
            pools,
            strategy: cfg,
            placer: Arc::new(Placer::new(Arc::clone(&slot.topology), cfg)),
        };
        *slot = Arc::new(next);
        let preference = cfg
            .node_preference
            .map_or_else(|| "none".to_string(), |n| format!("node {n}"));
        tracing::info!(
            "strategy now {} (node preference {preference}, memory policy {})",
            cfg.strategy,
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
                match Shard::open(
                    &shards_dir,
                    n,
                    self.shared.btrfs,
                    segment_bytes_for(self.shared.cfg.max_bytes),
                ) {
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
        tracing::info!("topology changed: {repinned} worker threads re-pinned");
        let next = Layout {
            cpu_node: cpu_map(&topology),
            placeable,
            shards,
            tiers,
            pools: Arc::clone(&slot.pools),
            strategy,
            placer: Arc::new(Placer::new(Arc::clone(&topology), strategy)),
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

    /// Whether this open loaded the entry map from the checkpoint of a clean stop (rather
    /// than scanning the index).
    pub fn opened_from_checkpoint(&self) -> bool {
        self.from_checkpoint
    }

    /// Whether the shards are btrfs subvolumes.
    pub fn btrfs(&self) -> bool {
        self.shared.btrfs
    }

    /// Finish queued work, write back access times and make everything durable (records,
    /// files, index; a WAL checkpoint). Never `syncfs`.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.exec(|c| c.flush())
    }

    /// Stop the cache: finish queued work, flush, record a clean stop (the next open loads
    /// the index without checking records) and wait for the committer. Dropping the Cache
    /// does the same but cannot report a failure.
    pub fn close(self) -> Result<(), StoreError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Op::Stop(Some(rtx)))?;
        let res = Self::wait(rrx);
        if let Some(h) = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
        res
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(h) = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = self.queue.send(Op::Stop(None));
            let _ = h.join();
        }
    }
}

/// Copy `len` bytes of `src` into `dst` after a `header_len` gap, zstd-compressed when
/// `compress`, in 1 MiB pieces; returns (payload bytes written, xxh3-64 of the value).
fn stream_record(
    src: &std::fs::File,
    dst: &std::fs::File,
    len: u64,
    header_len: usize,
    compress: bool,
    level: i32,
) -> Result<(u64, u64), StoreError> {
    use std::io::{Seek, SeekFrom, Write};
    let wr = |e| StoreError::io("writing a streamed value", e);
    let mut out = dst;
    out.seek(SeekFrom::Start(header_len as u64)).map_err(wr)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut counting = CountingWriter { inner: out, n: 0 };
    if compress {
        let mut z = zstd::stream::Encoder::new(&mut counting, level).map_err(wr)?;
        copy_hashed(src, &mut z, len, &mut hasher)?;
        z.finish().map_err(wr)?;
    } else {
        copy_hashed(src, &mut counting, len, &mut hasher)?;
    }
    counting.flush().map_err(wr)?;
    Ok((counting.n, hasher.digest()))
}

fn copy_hashed(
    src: &std::fs::File,
    w: &mut impl std::io::Write,
    len: u64,
    hasher: &mut xxhash_rust::xxh3::Xxh3,
) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], at)
            .map_err(|e| StoreError::io("reading the value's descriptor", e))?;
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| StoreError::io("writing a streamed value", e))?;
        at += n as u64;
    }
    Ok(())
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    /// A blocking put gets the answer given, or an error naming the problem when its answer
    /// is dropped unanswered (the committer stopped): never a hang.
    #[test]
    fn a_put_answer_arrives_or_its_loss_is_an_error() {
        let (reply, answer) = Cache::reply_channel();
        let t = std::thread::spawn(move || Cache::wait(answer));
        reply(Err(StoreError::NoSpace("full".into())));
        assert!(matches!(t.join().unwrap(), Err(StoreError::NoSpace(_))));
        let (reply, answer) = Cache::reply_channel();
        let t = std::thread::spawn(move || Cache::wait(answer));
        reply(Ok(()));
        assert!(t.join().unwrap().is_ok());
        let (reply, answer) = Cache::reply_channel();
        let t = std::thread::spawn(move || Cache::wait(answer));
        drop(reply);
        match t.join().unwrap() {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("committer stopped"), "{m}"),
            other => panic!("a dropped answer gave {other:?}"),
        }
    }
}

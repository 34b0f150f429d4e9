//! The committer: the one thread that writes the index and changes the entry map. Puts,
//! deletes and clears queue here; whatever has queued while the previous batch was being made
//! durable becomes the next batch: one SQLite transaction, then one `syncfs` covering the
//! batch's blob files and the WAL, then every waiter is answered (group commit). It also runs
//! the periodic work: disk-bound eviction, TTL expiry, access-time write-back, stats rows.

use crate::store::engine::{Shared, unix_ns};
use crate::store::entries::Entry;
use crate::store::error::StoreError;
use crate::store::index::{self, Row};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// Where an answer goes.
pub type Reply<T> = SyncSender<Result<T, StoreError>>;

/// Why an entry is being removed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Why {
    /// The caller asked.
    User,
    /// Its TTL passed.
    Expired,
    /// Its bytes failed a check or its file is gone.
    Broken,
}

/// Work for the committer.
pub enum Op {
    /// Index a blob already written to its shard.
    Put {
        /// The row.
        row: Row,
        /// Set when the namespace is new: its owner.
        new_namespace: Option<Option<u32>>,
        /// Answer.
        reply: Reply<()>,
    },
    /// Remove an entry (only if it is still `only_id`, when given).
    Delete {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Only this id.
        only_id: Option<u64>,
        /// Why.
        why: Why,
        /// Answer: whether something was removed.
        reply: Option<Reply<bool>>,
    },
    /// Remove every entry of a namespace.
    Clear {
        /// Namespace.
        ns: String,
        /// Answer: entries removed.
        reply: Reply<u64>,
    },
    /// The disk filled up: evict this many bytes (least recently used first).
    Pressure(u64),
    /// Run with the committer (index access, snapshots).
    Exec(Box<dyn FnOnce(&mut Committer) + Send>),
    /// Write back, mark the index clean and stop.
    Stop,
}

/// The committer's state.
pub struct Committer {
    /// The index connection (only this thread uses it).
    pub conn: rusqlite::Connection,
    /// State shared with the Cache.
    pub shared: Arc<Shared>,
    last_touch_flush: Instant,
    last_stats: Instant,
    last_ttl: Instant,
    /// How long the last flush took (bounds how long a batch waits for stragglers).
    last_sync_time: Duration,
}

const TOUCH_EVERY: Duration = Duration::from_secs(5);
const TTL_EVERY: Duration = Duration::from_millis(500);
const MAX_BATCH: usize = 4096;
const MAX_GATHER: Duration = Duration::from_millis(4);

enum Change {
    Insert(Row),
    Remove { ns: String, key: String, id: u64 },
}

impl Committer {
    /// A committer over `conn`.
    pub fn new(conn: rusqlite::Connection, shared: Arc<Shared>) -> Committer {
        let now = Instant::now();
        Committer {
            conn,
            shared,
            last_touch_flush: now,
            last_stats: now,
            last_ttl: now,
            last_sync_time: Duration::ZERO,
        }
    }

    /// Serve `rx` until Stop or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Op>) {
        loop {
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut stop = false;
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                self.gather(&rx, &mut batch);
                stop = self.run_batch(batch);
            }
            self.periodic();
            if stop {
                break;
            }
        }
        self.shutdown();
    }

    /// Puts still writing their blob will be here in a moment: wait for them (at most half
    /// a flush) so they share this batch's flush instead of paying for the next one.
    fn gather(&mut self, rx: &Receiver<Op>, batch: &mut Vec<Op>) {
        let is_put = |op: &Op| matches!(op, Op::Put { .. });
        let mut queued = batch.iter().filter(|op| is_put(op)).count() as u64;
        if queued == 0 {
            return;
        }
        let deadline = Instant::now() + (self.last_sync_time / 2).min(MAX_GATHER);
        while queued < self.shared.puts_in_flight.load(Relaxed) && batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(op) => {
                    queued += u64::from(is_put(&op));
                    let stop = matches!(op, Op::Stop);
                    batch.push(op);
                    if stop {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let stats = self.last_stats + self.shared.cfg.stats_interval;
        let touch = self.last_touch_flush + TOUCH_EVERY;
        let ttl = self.last_ttl + TTL_EVERY;
        stats.min(touch).min(ttl)
    }

    fn periodic(&mut self) {
        let now = Instant::now();
        if now >= self.last_ttl + TTL_EVERY {
            self.last_ttl = now;
            if self.shared.ttl_entries.load(Relaxed) > 0 {
                self.expire();
            }
        }
        if now >= self.last_touch_flush + TOUCH_EVERY {
            self.last_touch_flush = now;
            if let Err(e) = self.write_back_touches() {
                tracing::warn!("writing back access times: {e}");
            }
        }
        if now >= self.last_stats + self.shared.cfg.stats_interval {
            self.last_stats = now;
            if let Err(e) = self.write_stats() {
                tracing::warn!("writing a numa_cache_stats row: {e}");
            }
        }
    }

    fn current(
        &self,
        pending: &HashMap<(String, String), Option<(u64, u32)>>,
        ns: &str,
        key: &str,
    ) -> Option<(u64, u32)> {
        match pending.get(&(ns.to_string(), key.to_string())) {
            Some(p) => *p,
            None => self.shared.map.with(ns, key, |e| (e.id, e.node)),
        }
    }

    /// Apply a batch; true when it held Stop.
    fn run_batch(&mut self, batch: Vec<Op>) -> bool {
        let mut stop = false;
        let mut execs = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut new_ns: Vec<(String, Option<u32>)> = Vec::new();
        let mut put_replies: Vec<(Reply<()>, u64, u32)> = Vec::new();
        let mut bool_replies: Vec<(Reply<bool>, bool)> = Vec::new();
        let mut count_replies: Vec<(Reply<u64>, u64)> = Vec::new();
        let mut pending: HashMap<(String, String), Option<(u64, u32)>> = HashMap::new();
        let mut pressure = 0u64;
        let mut broken = 0u64;
        let mut expired = 0u64;
        for op in batch {
            match op {
                Op::Put {
                    row,
                    new_namespace,
                    reply,
                } => {
                    if let Some((old, _)) = self.current(&pending, &row.namespace, &row.key) {
                        changes.push(Change::Remove {
                            ns: row.namespace.clone(),
                            key: row.key.clone(),
                            id: old,
                        });
                    }
                    if let Some(owner) = new_namespace {
                        new_ns.push((row.namespace.clone(), owner));
                    }
                    pending.insert(
                        (row.namespace.clone(), row.key.clone()),
                        Some((row.id, row.node)),
                    );
                    put_replies.push((reply, row.id, row.node));
                    changes.push(Change::Insert(row));
                }
                Op::Delete {
                    ns,
                    key,
                    only_id,
                    why,
                    reply,
                } => {
                    let cur = self.current(&pending, &ns, &key);
                    let hit = match (cur, only_id) {
                        (Some((id, _)), Some(want)) => id == want,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    if hit && let Some((id, _)) = cur {
                        match why {
                            Why::Broken => broken += 1,
                            Why::Expired => expired += 1,
                            Why::User => {}
                        }
                        pending.insert((ns.clone(), key.clone()), None);
                        changes.push(Change::Remove { ns, key, id });
                    }
                    if let Some(r) = reply {
                        bool_replies.push((r, hit));
                    }
                }
                Op::Clear { ns, reply } => {
                    let mut keys = self.shared.map.keys_of(&ns);
                    keys.extend(
                        pending
                            .keys()
                            .filter(|(n, _)| *n == ns)
                            .map(|(_, k)| k.clone()),
                    );
                    keys.sort();
                    keys.dedup();
                    let mut n = 0;
                    for key in keys {
                        if let Some((id, _)) = self.current(&pending, &ns, &key) {
                            pending.insert((ns.clone(), key.clone()), None);
                            changes.push(Change::Remove {
                                ns: ns.clone(),
                                key,
                                id,
                            });
                            n += 1;
                        }
                    }
                    count_replies.push((reply, n));
                }
                Op::Pressure(bytes) => pressure = pressure.max(bytes),
                Op::Exec(f) => execs.push(f),
                Op::Stop => stop = true,
            }
        }
        let wrote = !changes.is_empty();
        self.shared
            .puts_in_flight
            .fetch_sub(put_replies.len() as u64, Relaxed);
        let result = self.commit(&changes, &new_ns);
        match &result {
            Ok(()) => {
                self.apply(changes);
                self.shared.stats.corrupted.fetch_add(broken, Relaxed);
                self.shared.stats.evictions.fetch_add(expired, Relaxed);
                let max = self.shared.cfg.max_bytes;
                let stored = self.shared.stats.stored_total();
                if stored > max {
                    // Evict a little below the bound so eviction does not run on every put.
                    let need = stored - max + (max / 64).min(64 << 20);
                    self.evict(need);
                }
                if pressure > 0 {
                    self.evict(pressure);
                }
                if wrote && let Err(e) = self.sync() {
                    tracing::error!("making a batch durable: {e}");
                    for (r, _, _) in put_replies.drain(..) {
                        let _ = r.send(Err(StoreError::Unavailable(format!(
                            "flushing the cache filesystem: {e}"
                        ))));
                    }
                }
                for (r, _, _) in put_replies {
                    let _ = r.send(Ok(()));
                }
                for (r, v) in bool_replies {
                    let _ = r.send(Ok(v));
                }
                for (r, v) in count_replies {
                    let _ = r.send(Ok(v));
                }
            }
            Err(e) => {
                tracing::warn!("index commit failed: {e}");
                let layout = self.shared.layout();
                for (r, id, node) in put_replies {
                    if let Some(s) = layout.shards.get(&node) {
                        let _ = s.remove_blob(id);
                    }
                    let _ = r.send(Err(clone_err(e)));
                }
                for (r, _) in bool_replies {
                    let _ = r.send(Err(clone_err(e)));
                }
                for (r, _) in count_replies {
                    let _ = r.send(Err(clone_err(e)));
                }
            }
        }
        for f in execs {
            f(self);
        }
        stop
    }

    fn commit(
        &mut self,
        changes: &[Change],
        new_ns: &[(String, Option<u32>)],
    ) -> Result<(), StoreError> {
        if changes.is_empty() && new_ns.is_empty() {
            return Ok(());
        }
        let next_id = self.shared.next_id.load(Relaxed);
        let now = unix_ns() / 1_000_000_000;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::sql("starting a batch", e))?;
        for c in changes {
            match c {
                Change::Insert(r) => index::insert_entry(&tx, r),
                Change::Remove { id, .. } => index::delete_entry(&tx, *id),
            }
            .map_err(|e| StoreError::sql("writing a batch", e))?;
        }
        for (ns, owner) in new_ns {
            index::insert_namespace(&tx, ns, *owner, now)
                .map_err(|e| StoreError::sql("recording a namespace", e))?;
        }
        index::meta_set(&tx, "next_id", next_id as i64)
            .map_err(|e| StoreError::sql("writing a batch", e))?;
        tx.commit()
            .map_err(|e| StoreError::sql("committing a batch", e))?;
        let mut owners = self
            .shared
            .namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for (ns, owner) in new_ns {
            owners.entry(ns.clone()).or_insert(*owner);
        }
        Ok(())
    }

    /// Make committed changes visible: the map, the counters, the files of removed entries.
    fn apply(&self, changes: Vec<Change>) {
        let layout = self.shared.layout();
        let stats = &self.shared.stats;
        for c in changes {
            match c {
                Change::Insert(r) => {
                    let expires_ns = r
                        .expires
                        .map(|s| s.saturating_mul(1_000_000_000))
                        .unwrap_or(0);
                    let e = Entry::new(
                        r.id,
                        r.node,
                        r.size,
                        r.stored,
                        r.checksum,
                        r.created,
                        expires_ns,
                        unix_ns(),
                        r.hits,
                    );
                    if expires_ns != 0 {
                        self.shared.ttl_entries.fetch_add(1, Relaxed);
                    }
                    stats.add_entry(r.node, r.size, r.stored);
                    if let Some(old) = self.shared.map.insert(&r.namespace, &r.key, e) {
                        // Overwrite handled as a Remove change before this insert.
                        debug_assert!(old.id != r.id);
                    }
                }
                Change::Remove { ns, key, id } => {
                    let Some(e) = self.shared.map.remove(&ns, &key, Some(id)) else {
                        continue;
                    };
                    self.forget(&layout, &e);
                }
            }
        }
    }

    fn forget(&self, layout: &crate::store::engine::Layout, e: &Entry) {
        self.shared.stats.remove_entry(e.node, e.size, e.stored);
        if e.expires_ns != 0 {
            self.shared.ttl_entries.fetch_sub(1, Relaxed);
        }
        if let Some(t) = layout.tiers.get(&e.node) {
            t.remove(e.id);
        }
        if let Some(s) = layout.shards.get(&e.node)
            && let Err(err) = s.remove_blob(e.id)
        {
            tracing::warn!("removing blob {}: {err}", s.blob_path(e.id).display());
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let t0 = Instant::now();
        let res = self.sync_all();
        self.last_sync_time = t0.elapsed();
        res
    }

    fn sync_all(&self) -> Result<(), StoreError> {
        let layout = self.shared.layout();
        let mut devs = Vec::new();
        for s in layout.shards.values() {
            let d = s.dev();
            if !devs.contains(&d) {
                devs.push(d);
                s.syncfs()?;
            }
        }
        Ok(())
    }

    /// Remove the least recently used entries until `need` stored bytes are freed.
    pub fn evict(&mut self, need: u64) -> u64 {
        let map = &self.shared.map;
        let mut ages: Vec<(u64, u64)> = Vec::new();
        map.for_each(|_, _, e| ages.push((e.last_access_ns.load(Relaxed), e.stored)));
        ages.sort_unstable();
        let (mut freed, mut cut, mut at_cut) = (0u64, 0u64, 0u64);
        for (age, stored) in &ages {
            if freed >= need {
                break;
            }
            freed += stored;
            if *age != cut {
                at_cut = 0;
            }
            cut = *age;
            at_cut += 1;
        }
        let mut victims: Vec<(String, String, u64)> = Vec::new();
        let mut ties = at_cut;
        map.for_each(|ns, key, e| {
            let age = e.last_access_ns.load(Relaxed);
            if age < cut || (age == cut && ties > 0) {
                if age == cut {
                    ties -= 1;
                }
                victims.push((ns.to_string(), key.to_string(), e.id));
            }
        });
        let n = victims.len() as u64;
        if n == 0 {
            return 0;
        }
        let changes: Vec<Change> = victims
            .into_iter()
            .map(|(ns, key, id)| Change::Remove { ns, key, id })
            .collect();
        match self.commit(&changes, &[]) {
            Ok(()) => {
                self.apply(changes);
                self.shared.stats.evictions.fetch_add(n, Relaxed);
                tracing::debug!("evicted {n} entries to free {need} bytes");
                n
            }
            Err(e) => {
                tracing::warn!("eviction failed: {e}");
                0
            }
        }
    }

    fn expire(&mut self) {
        let now = unix_ns();
        let mut gone: Vec<Change> = Vec::new();
        self.shared.map.for_each(|ns, key, e| {
            if e.expires_ns != 0 && e.expires_ns <= now {
                gone.push(Change::Remove {
                    ns: ns.to_string(),
                    key: key.to_string(),
                    id: e.id,
                });
            }
        });
        if gone.is_empty() {
            return;
        }
        let n = gone.len() as u64;
        match self.commit(&gone, &[]) {
            Ok(()) => {
                self.apply(gone);
                self.shared.stats.evictions.fetch_add(n, Relaxed);
            }
            Err(e) => tracing::warn!("expiring entries: {e}"),
        }
    }

    /// Write access times and hit counts gathered since the last write-back.
    pub fn write_back_touches(&mut self) -> Result<(), StoreError> {
        let touched = self.shared.map.take_touched();
        if touched.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::sql("writing access times", e))?;
        for (id, la, hits) in touched {
            index::touch_entry(&tx, id, la, hits)
                .map_err(|e| StoreError::sql("writing access times", e))?;
        }
        tx.commit()
            .map_err(|e| StoreError::sql("writing access times", e))
    }

    /// Insert a `numa_cache_stats` row per node and apply the retention limit.
    pub fn write_stats(&mut self) -> Result<(), StoreError> {
        let now = unix_ns() / 1_000_000_000;
        let layout = self.shared.layout();
        let rows: Vec<index::StatsRow> = layout
            .stat_nodes()
            .into_iter()
            .map(|node| {
                let s = self.shared.node_stats_in(&layout, node);
                index::StatsRow {
                    node_id: node,
                    timestamp: index::sql_timestamp(now),
                    unix_time: now,
                    cache_entries: s.entries,
                    memory_usage_mb: s.memory_tier_bytes >> 20,
                    hit_rate: s.hit_rate,
                    logical_bytes: s.logical_bytes,
                    stored_bytes: s.stored_bytes,
                    memory_tier_bytes: s.memory_tier_bytes,
                    hits: s.hits,
                    misses: s.misses,
                }
            })
            .collect();
        let keep_after = now.saturating_sub(self.shared.cfg.stats_retention.as_secs());
        index::insert_stats(&mut self.conn, &rows, keep_after)
            .map_err(|e| StoreError::sql("writing stats", e))
    }

    /// Write everything back, checkpoint the WAL and flush the filesystem.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.write_back_touches()?;
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| StoreError::sql("checkpointing", e))?;
        self.sync()
    }

    fn shutdown(&mut self) {
        let res = self.flush().and_then(|()| {
            index::meta_set(&self.conn, "clean", 1)
                .map_err(|e| StoreError::sql("marking a clean stop", e))?;
            self.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .map_err(|e| StoreError::sql("checkpointing", e))?;
            self.sync()
        });
        if let Err(e) = res {
            tracing::error!(
                "stopping the cache cleanly failed; the next start will check every file: {e}"
            );
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::NoSpace(m) => StoreError::NoSpace(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

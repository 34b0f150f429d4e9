//! The in-memory entry map: (namespace, key) -> where the blob is and what it should hash to.
//! Gets read it under a shard's read lock and never touch SQLite; only the committer thread
//! changes it, after the index rows are committed. Access time and hits are atomics, written
//! back to the index in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use xxhash_rust::xxh3::xxh3_64;

const SHARDS: usize = 64;

/// One entry as the engine tracks it.
#[derive(Debug)]
pub struct Entry {
    /// Entry id, also the blob file name.
    pub id: u64,
    /// Node whose shard holds the blob.
    pub node: u32,
    /// Logical size.
    pub size: u64,
    /// Stored size (the whole file).
    pub stored: u64,
    /// xxh3-64 of the logical bytes.
    pub checksum: u64,
    /// Creation, unix seconds.
    pub created: u64,
    /// Expiry, unix nanoseconds (0: never).
    pub expires_ns: u64,
    /// Last access, unix nanoseconds (LRU order and `last_access`).
    pub last_access_ns: AtomicU64,
    /// Hits served.
    pub hits: AtomicU64,
    /// Touched since the last write-back of access times.
    pub dirty: AtomicBool,
}

impl Entry {
    /// The fixed fields of a new entry.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        node: u32,
        size: u64,
        stored: u64,
        checksum: u64,
        created: u64,
        expires_ns: u64,
        last_access_ns: u64,
        hits: u64,
    ) -> Entry {
        Entry {
            id,
            node,
            size,
            stored,
            checksum,
            created,
            expires_ns,
            last_access_ns: AtomicU64::new(last_access_ns),
            hits: AtomicU64::new(hits),
            dirty: AtomicBool::new(false),
        }
    }
}

type NsMap = HashMap<String, HashMap<String, Entry>>;

/// The map, split into shards by key hash.
pub struct EntryMap {
    shards: Box<[RwLock<NsMap>]>,
    /// Keys touched since the last write-back.
    touched: Mutex<Vec<(String, String)>>,
}

impl Default for EntryMap {
    fn default() -> Self {
        EntryMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            touched: Mutex::new(Vec::new()),
        }
    }
}

fn shard_of(ns: &str, key: &str) -> usize {
    (xxh3_64(key.as_bytes()) ^ xxh3_64(ns.as_bytes()).rotate_left(17)) as usize % SHARDS
}

impl EntryMap {
    /// Run `f` on the entry, under the shard's read lock.
    #[inline]
    pub fn with<R>(&self, ns: &str, key: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let g = self.read(ns, key);
        g.get(ns).and_then(|m| m.get(key)).map(f)
    }

    fn read(&self, ns: &str, key: &str) -> RwLockReadGuard<'_, NsMap> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent
        // because every change is a single insert or remove.
        self.shards[shard_of(ns, key)]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Mark an entry read now: access time and hit count, queued for write-back once.
    #[inline]
    pub fn touch(&self, ns: &str, key: &str, e: &Entry, now_ns: u64) {
        e.last_access_ns.store(now_ns, Relaxed);
        e.hits.fetch_add(1, Relaxed);
        if !e.dirty.swap(true, Relaxed) {
            let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            t.push((ns.to_string(), key.to_string()));
        }
    }

    /// Take the touched keys with their current (id, last_access_s, hits).
    pub fn take_touched(&self) -> Vec<(u64, u64, u64)> {
        let keys = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        keys.into_iter()
            .filter_map(|(ns, key)| {
                self.with(&ns, &key, |e| {
                    e.dirty.store(false, Relaxed);
                    (
                        e.id,
                        e.last_access_ns.load(Relaxed) / 1_000_000_000,
                        e.hits.load(Relaxed),
                    )
                })
            })
            .collect()
    }

    /// Insert or replace; returns the replaced entry.
    pub fn insert(&self, ns: &str, key: &str, e: Entry) -> Option<Entry> {
        let mut g = self.shards[shard_of(ns, key)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        g.entry(ns.to_string())
            .or_default()
            .insert(key.to_string(), e)
    }

    /// Remove the entry; when `only_id` is given, only if it is still that entry.
    pub fn remove(&self, ns: &str, key: &str, only_id: Option<u64>) -> Option<Entry> {
        let mut g = self.shards[shard_of(ns, key)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let m = g.get_mut(ns)?;
        if let Some(id) = only_id
            && m.get(key).map(|e| e.id) != Some(id)
        {
            return None;
        }
        let e = m.remove(key);
        if m.is_empty() {
            g.remove(ns);
        }
        e
    }

    /// Visit every entry (namespace, key, entry), one shard at a time.
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, &Entry)) {
        for s in self.shards.iter() {
            let g = s.read().unwrap_or_else(|p| p.into_inner());
            for (ns, m) in g.iter() {
                for (k, e) in m.iter() {
                    f(ns, k, e);
                }
            }
        }
    }

    /// Keys of namespace `ns`.
    pub fn keys_of(&self, ns: &str) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let g = s.read().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = g.get(ns) {
                out.extend(m.keys().cloned());
            }
        }
        out
    }
}

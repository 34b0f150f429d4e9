//! The in-memory entry map: (namespace, key) -> where the blob is and what it should hash to.
//! Gets read it under a shard's read lock and never touch SQLite; only the committer thread
//! changes it, after the index rows are committed. Access time and hits are atomics, written
//! back to the index in batches.

use crate::store::index::Row;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{RwLock, RwLockReadGuard};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

const SHARDS: usize = 64;

/// One entry as the engine tracks it.
#[derive(Debug)]
pub struct Entry {
    /// Entry id (the record's id; the blob file name of a large value).
    pub id: u64,
    /// Where the record is: `segment << 32 | offset`, or `OWN_FILE` (a file of its own).
    /// Compaction moves a record with one store; a reader sees the old or the new place.
    pub loc: AtomicU64,
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
    /// Expiry, unix seconds (0: never).
    pub expires: u64,
    /// Last access, unix nanoseconds (LRU order and `last_access`).
    pub last_access_ns: AtomicU64,
    /// Hits served.
    pub hits: AtomicU64,
    /// Touched since the last write-back of access times.
    pub dirty: AtomicBool,
}

/// `Entry::loc` of a record that is a file of its own.
pub const OWN_FILE: u64 = u64::MAX;

/// Pack a row's location into `Entry::loc`.
pub fn pack_loc(loc: Option<(u32, u64)>) -> u64 {
    match loc {
        Some((seg, off)) => (u64::from(seg) << 32) | (off & 0xffff_ffff),
        None => OWN_FILE,
    }
}

/// Unpack `Entry::loc`.
pub fn unpack_loc(v: u64) -> Option<(u32, u64)> {
    (v != OWN_FILE).then_some(((v >> 32) as u32, v & 0xffff_ffff))
}

impl Entry {
    /// The fixed fields of a new entry.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        loc: Option<(u32, u64)>,
        node: u32,
        size: u64,
        stored: u64,
        checksum: u64,
        created: u64,
        expires: u64,
        last_access_ns: u64,
        hits: u64,
    ) -> Entry {
        Entry {
            id,
            loc: AtomicU64::new(pack_loc(loc)),
            node,
            size,
            stored,
            checksum,
            created,
            expires,
            last_access_ns: AtomicU64::new(last_access_ns),
            hits: AtomicU64::new(hits),
            dirty: AtomicBool::new(false),
        }
    }
}

/// xxh3 with a per-process random seed: several times faster than SipHash on short keys
/// (the map's lookups and its 1M-entry load at start-up), still not predictable by callers.
#[derive(Clone)]
pub struct SeededXxh3(u64);

impl Default for SeededXxh3 {
    fn default() -> Self {
        SeededXxh3(std::collections::hash_map::RandomState::new().hash_one(0x6e63_u64))
    }
}

impl BuildHasher for SeededXxh3 {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { seed: self.0, h: 0 }
    }
}

/// The hasher of [`SeededXxh3`].
pub struct KeyHasher {
    seed: u64,
    h: u64,
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.h = xxh3_64_with_seed(bytes, self.seed ^ self.h);
    }
    fn write_u8(&mut self, i: u8) {
        // `str` hashing ends with a 0xff marker byte.
        self.h = self.h.rotate_left(5) ^ u64::from(i);
    }
    fn finish(&self) -> u64 {
        self.h
    }
}

type KeyMap = HashMap<String, Entry, SeededXxh3>;
type NsMap = HashMap<String, KeyMap, SeededXxh3>;

/// The map, split into shards by key hash.
pub struct EntryMap {
    shards: Box<[RwLock<NsMap>]>,
    /// Some entry was touched since the last write-back.
    any_touched: AtomicBool,
    hasher: SeededXxh3,
}

impl Default for EntryMap {
    fn default() -> Self {
        let hasher = SeededXxh3::default();
        EntryMap {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            any_touched: AtomicBool::new(false),
            hasher,
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

    /// Mark an entry read now: access time and hit count, flagged for the next write-back.
    /// No allocation or lock here: with 1M keys nearly every get is a first touch.
    #[inline]
    pub fn touch(&self, e: &Entry, now_ns: u64) {
        e.last_access_ns.store(now_ns, Relaxed);
        e.hits.fetch_add(1, Relaxed);
        if !e.dirty.load(Relaxed) {
            e.dirty.store(true, Relaxed);
            self.any_touched.store(true, Relaxed);
        }
    }

    /// Take the touched entries' current (id, last_access_s, hits), clearing their flags
    /// (a scan of the map, done every few seconds by the committer and only after gets).
    pub fn take_touched(&self) -> Vec<(u64, u64, u64)> {
        if !self.any_touched.swap(false, Relaxed) {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.for_each(|_, _, e| {
            if e.dirty.load(Relaxed) {
                e.dirty.store(false, Relaxed);
                out.push((
                    e.id,
                    e.last_access_ns.load(Relaxed) / 1_000_000_000,
                    e.hits.load(Relaxed),
                ));
            }
        });
        out
    }

    /// Insert or replace; returns the replaced entry.
    pub fn insert(&self, ns: &str, key: &str, e: Entry) -> Option<Entry> {
        self.insert_owned(ns.to_string(), key.to_string(), e)
    }

    /// Insert or replace, taking the strings (no copies: the start-up load moves 1M keys).
    pub fn insert_owned(&self, ns: String, key: String, e: Entry) -> Option<Entry> {
        let mut g = self.shards[shard_of(&ns, &key)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match g.get_mut(ns.as_str()) {
            Some(m) => m.insert(key, e),
            None => {
                let mut m = HashMap::with_hasher(self.hasher.clone());
                m.insert(key, e);
                g.insert(ns, m);
                None
            }
        }
    }

    /// Load many rows at once (start-up): grouped by shard, each shard filled under one
    /// lock with its tables sized up front, shards spread over the CPUs.
    pub fn load(&self, rows: Vec<Row>, make: impl Fn(&Row) -> Entry + Sync) {
        let mut by_shard: Vec<Vec<Row>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for r in rows {
            by_shard[shard_of(&r.namespace, &r.key)].push(r);
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let mut work: Vec<Vec<(usize, Vec<Row>)>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, rows) in by_shard.into_iter().enumerate() {
            work[i % threads].push((i, rows));
        }
        let make = &make;
        std::thread::scope(|s| {
            for part in work {
                s.spawn(move || {
                    for (i, rows) in part {
                        self.fill_shard(i, rows, make);
                    }
                });
            }
        });
    }

    fn fill_shard(&self, i: usize, rows: Vec<Row>, make: &(impl Fn(&Row) -> Entry + Sync)) {
        let mut g = self.shards[i].write().unwrap_or_else(|p| p.into_inner());
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for r in &rows {
            *counts.entry(r.namespace.as_str()).or_default() += 1;
        }
        for (ns, n) in counts {
            g.entry(ns.to_string())
                .or_insert_with(|| HashMap::with_hasher(self.hasher.clone()))
                .reserve(n);
        }
        for r in rows {
            let e = make(&r);
            if let Some(m) = g.get_mut(r.namespace.as_str()) {
                m.insert(r.key, e);
            }
        }
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

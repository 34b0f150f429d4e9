//! The in-memory entry map, compact: (namespace, key) -> where the record is. Built for
//! 10M entries in at most 64 bytes each: no key is kept in memory, only a seeded 64-bit hash
//! of (namespace, key) (a get checks the record's own header names the key it asked for, so
//! a hash collision is a miss, never another key's value); entries are 48-byte structs in a
//! dense slab per shard, found through a table of 4-byte slot numbers. Only the committer
//! thread changes it, after the index rows are committed; gets read it under a shard's read
//! lock and never touch SQLite. Access order and hits are atomics, written back to the index
//! in batches.

use crate::store::index::Row;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{RwLock, RwLockReadGuard};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Shards of the map (a checkpoint holds one section per shard).
pub const SHARDS: usize = 64;
/// Bytes of one entry in a checkpoint (`Entry::to_bytes`).
pub const ENTRY_BYTES: usize = 48;
/// `Entry::hits`' top bit: touched since the last write-back.
const DIRTY: u32 = 1 << 31;

/// One entry as the engine tracks it (48 bytes).
#[derive(Debug)]
pub struct Entry {
    /// Seeded hash of (namespace, key): the map's key.
    pub hash: u64,
    /// Entry id (the record's id; the blob file name of a large value).
    pub id: u64,
    /// Where the record is: `segment << 32 | offset`, or `OWN_FILE` (a file of its own).
    /// Compaction moves a record with one store; a reader sees the old or the new place.
    pub loc: AtomicU64,
    /// Stored size of the record.
    pub stored: u32,
    /// Logical size.
    pub size: u32,
    /// Expiry, unix seconds (0: never; u32::MAX: beyond 2106, as good as never).
    pub expires: u32,
    /// Access order: the map's logical clock at the last read or write (LRU).
    pub last_access: AtomicU32,
    /// Hits served (the top bit marks "touched since the last write-back").
    hits: AtomicU32,
    /// Interned namespace.
    pub ns: u16,
    /// Node whose shard holds the record.
    pub node: u16,
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

/// Clamp a unix-seconds expiry into the map's u32 (0 stays "never").
pub fn expires_u32(expires: Option<u64>) -> u32 {
    match expires {
        None | Some(0) => 0,
        Some(s) => s.min(u64::from(u32::MAX)) as u32,
    }
}

impl Entry {
    /// Hits served.
    pub fn hits(&self) -> u64 {
        u64::from(self.hits.load(Relaxed) & !DIRTY)
    }

    /// Has an expiry that has passed at `now_s`.
    pub fn expired(&self, now_s: u64) -> bool {
        self.expires != 0 && u64::from(self.expires) <= now_s
    }

    /// Whether a size or the hit count was clamped into its field (the row holds more than
    /// the entry): such an entry cannot be restored from the entry alone.
    pub fn clamped(&self) -> bool {
        self.stored == u32::MAX || self.size == u32::MAX || self.node == u16::MAX
    }

    /// The entry's fixed fields, little-endian, for a checkpoint (the touched flag is not
    /// kept: a clean stop wrote the hits back).
    pub fn to_bytes(&self) -> [u8; ENTRY_BYTES] {
        let mut b = [0u8; ENTRY_BYTES];
        b[0..8].copy_from_slice(&self.hash.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.loc.load(Relaxed).to_le_bytes());
        b[24..28].copy_from_slice(&self.stored.to_le_bytes());
        b[28..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..36].copy_from_slice(&self.expires.to_le_bytes());
        b[36..40].copy_from_slice(&self.last_access.load(Relaxed).to_le_bytes());
        b[40..44].copy_from_slice(&(self.hits.load(Relaxed) & !DIRTY).to_le_bytes());
        b[44..46].copy_from_slice(&self.ns.to_le_bytes());
        b[46..48].copy_from_slice(&self.node.to_le_bytes());
        b
    }

    /// The entry `to_bytes` wrote.
    pub fn from_bytes(b: &[u8; ENTRY_BYTES]) -> Entry {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or([0; 2]));
        Entry {
            hash: u64_at(0),
            id: u64_at(8),
            loc: AtomicU64::new(u64_at(16)),
            stored: u32_at(24),
            size: u32_at(28),
            expires: u32_at(32),
            last_access: AtomicU32::new(u32_at(36)),
            hits: AtomicU32::new(u32_at(40) & !DIRTY),
            ns: u16_at(44),
            node: u16_at(46),
        }
    }
}

/// The shard of the map holding hash `h`.
#[inline]
pub fn shard_of(h: u64) -> usize {
    (h >> 58) as usize % SHARDS
}

struct Shard {
    table: HashTable<u32>,
    slab: Vec<Entry>,
    free: Vec<u32>,
}

impl Shard {
    fn find(&self, h: u64) -> Option<u32> {
        let slab = &self.slab;
        self.table.find(h, |&i| slab[i as usize].hash == h).copied()
    }
}

/// The map, split into shards by hash.
pub struct EntryMap {
    shards: Box<[RwLock<Shard>]>,
    seed: u64,
    /// The logical clock of access order.
    clock: AtomicU32,
    /// Namespace names by interned number.
    names: RwLock<Vec<String>>,
    /// Some entry was touched since the last write-back.
    any_touched: AtomicBool,
}

impl Default for EntryMap {
    fn default() -> Self {
        Self::with_seed(std::collections::hash_map::RandomState::new().hash_one(0x6e63_u64))
    }
}

impl EntryMap {
    /// An empty map hashing with `seed` (a checkpoint's: its entries' hashes were made with
    /// it; otherwise a per-process random one, see `Default`).
    pub fn with_seed(seed: u64) -> Self {
        EntryMap {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        table: HashTable::new(),
                        slab: Vec::new(),
                        free: Vec::new(),
                    })
                })
                .collect(),
            seed,
            clock: AtomicU32::new(1),
            names: RwLock::new(Vec::new()),
            any_touched: AtomicBool::new(false),
        }
    }

    /// The hash seed (a checkpoint keeps it; it never leaves the state directory).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The access clock's next tick (without advancing it).
    pub fn clock(&self) -> u32 {
        self.clock.load(Relaxed)
    }

    /// Namespace names in interned order.
    pub fn names(&self) -> Vec<String> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Restore a checkpoint's interned names and clock (into a map still empty).
    pub fn restore_names_and_clock(&self, names: Vec<String>, clock: u32) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
        self.clock.fetch_max(clock, Relaxed);
    }

    /// Visit the live entries of shard `i` in slot order (about the order they were
    /// written, so neighbours share segments), under its read lock; returns how many.
    pub fn for_each_slot_in(&self, i: usize, mut f: impl FnMut(&Entry)) -> usize {
        let g = self.shards[i].read().unwrap_or_else(|p| p.into_inner());
        let mut free = g.free.clone();
        free.sort_unstable();
        let mut next_free = free.iter().peekable();
        let mut n = 0;
        for (k, e) in g.slab.iter().enumerate() {
            if next_free.next_if(|&&j| j as usize == k).is_some() {
                continue;
            }
            f(e);
            n += 1;
        }
        n
    }

    /// Live entries of shard `i`.
    pub fn shard_len(&self, i: usize) -> usize {
        self.shards[i]
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .table
            .len()
    }

    /// Make `slab` (a checkpoint's entries of shard `i`, sized exactly) the shard's slab and
    /// build its table from the stored hashes (no key is hashed). Refused, leaving the
    /// shard empty, when an entry belongs to another shard, a hash repeats, or a namespace
    /// number is unknown: the checkpoint is then not what was written.
    pub fn restore_shard(&self, i: usize, slab: Vec<Entry>) -> Result<(), String> {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner()).len();
        let mut g = self.shards[i].write().unwrap_or_else(|p| p.into_inner());
        if !g.slab.is_empty() {
            return Err(format!("shard {i} is not empty"));
        }
        let mut table = HashTable::with_capacity(slab.len());
        for (k, e) in slab.iter().enumerate() {
            let h = e.hash;
            if shard_of(h) != i {
                return Err(format!(
                    "an entry of shard {} is in section {i}",
                    shard_of(h)
                ));
            }
            if usize::from(e.ns) >= names && usize::from(e.ns) != usize::from(u16::MAX) {
                return Err(format!("namespace number {} of {names}", e.ns));
            }
            match table.entry(
                h,
                |&j: &u32| slab[j as usize].hash == h,
                |&j: &u32| slab[j as usize].hash,
            ) {
                hashbrown::hash_table::Entry::Occupied(_) => {
                    return Err(format!("hash {h:016x} repeats in shard {i}"));
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(k as u32);
                }
            }
        }
        g.table = table;
        g.slab = slab;
        g.free = Vec::new();
        Ok(())
    }

    /// The map's key for (`ns`, `key`): xxh3 with a per-process random seed, not
    /// predictable by callers.
    #[inline]
    pub fn key_hash(&self, ns: &str, key: &str) -> u64 {
        xxh3_64_with_seed(key.as_bytes(), xxh3_64_with_seed(ns.as_bytes(), self.seed))
    }

    fn shard(&self, h: u64) -> &RwLock<Shard> {
        &self.shards[shard_of(h)]
    }

    fn read(&self, h: u64) -> RwLockReadGuard<'_, Shard> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent
        // because every change is a single insert or remove.
        self.shard(h).read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current tick of the access clock (and advance it).
    #[inline]
    pub fn tick(&self) -> u32 {
        self.clock.fetch_add(1, Relaxed)
    }

    /// Run `f` on the entry of (`ns`, `key`), under the shard's read lock.
    #[inline]
    pub fn with<R>(&self, ns: &str, key: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.with_hash(self.key_hash(ns, key), f)
    }

    /// Run `f` on the entry of hash `h`.
    #[inline]
    pub fn with_hash<R>(&self, h: u64, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let g = self.read(h);
        g.find(h).map(|i| f(&g.slab[i as usize]))
    }

    /// Mark an entry read now: access order and hit count, flagged for the next write-back.
    #[inline]
    pub fn touch(&self, e: &Entry) {
        e.last_access.store(self.tick(), Relaxed);
        let before = e.hits.fetch_add(1, Relaxed);
        if before & DIRTY == 0 {
            e.hits.fetch_or(DIRTY, Relaxed);
            self.any_touched.store(true, Relaxed);
        }
    }

    /// Take the touched entries' (id, hits), clearing their flags (a scan of the map, done
    /// every few seconds by the committer and only after gets).
    pub fn take_touched(&self) -> Vec<(u64, u64)> {
        if !self.any_touched.swap(false, Relaxed) {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.for_each(|e| {
            if e.hits.load(Relaxed) & DIRTY != 0 {
                let h = e.hits.fetch_and(!DIRTY, Relaxed);
                out.push((e.id, u64::from(h & !DIRTY)));
            }
        });
        out
    }

    /// The interned number of namespace `ns` (added when new).
    pub fn intern(&self, ns: &str) -> u16 {
        if let Some(i) = self.ns_index(ns) {
            return i;
        }
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = names.iter().position(|n| n == ns) {
            return i as u16;
        }
        names.push(ns.to_string());
        // More than 65536 namespaces share the last number (Clear of those then scans a
        // little more); the index, not this number, says which namespace a row is in.
        (names.len() - 1).min(u16::MAX as usize) as u16
    }

    /// The interned number of `ns`, if it has one.
    pub fn ns_index(&self, ns: &str) -> Option<u16> {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .position(|n| n == ns)
            .map(|i| i.min(u16::MAX as usize) as u16)
    }

    /// A new entry for `row` (interning its namespace); `order` is its access order.
    pub fn entry_of(&self, h: u64, r: &Row, order: u32) -> Entry {
        Entry {
            hash: h,
            id: r.id,
            loc: AtomicU64::new(pack_loc(r.loc)),
            stored: r.stored.min(u64::from(u32::MAX)) as u32,
            size: r.size.min(u64::from(u32::MAX)) as u32,
            expires: expires_u32(r.expires),
            last_access: AtomicU32::new(order),
            hits: AtomicU32::new(r.hits.min(u64::from(!DIRTY)) as u32),
            ns: self.intern(&r.namespace),
            node: r.node.min(u32::from(u16::MAX)) as u16,
        }
    }

    /// Insert or replace the entry of `e.hash`; returns the replaced entry.
    pub fn insert(&self, e: Entry) -> Option<Entry> {
        let h = e.hash;
        let mut g = self.shard(h).write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.find(h) {
            return Some(std::mem::replace(&mut g.slab[i as usize], e));
        }
        let Shard { table, slab, free } = &mut *g;
        let slot = match free.pop() {
            Some(i) => {
                slab[i as usize] = e;
                i
            }
            None => {
                slab.push(e);
                (slab.len() - 1) as u32
            }
        };
        table.insert_unique(h, slot, |&i| slab[i as usize].hash);
        None
    }

    /// Load many rows at once (start-up), each shard sized once.
    pub fn load(&self, rows: Vec<Row>, order: impl Fn(&Row) -> u32) {
        let mut max = 0u32;
        let mut by_shard: Vec<Vec<Entry>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for r in rows {
            let h = self.key_hash(&r.namespace, &r.key);
            let o = order(&r);
            max = max.max(o);
            by_shard[shard_of(h)].push(self.entry_of(h, &r, o));
        }
        for (i, entries) in by_shard.into_iter().enumerate() {
            let mut g = self.shards[i].write().unwrap_or_else(|p| p.into_inner());
            let Shard { table, slab, .. } = &mut *g;
            table.reserve(entries.len(), |&k| slab[k as usize].hash);
            slab.reserve_exact(entries.len());
            for e in entries {
                let h = e.hash;
                if let Some(&j) = table.find(h, |&k| slab[k as usize].hash == h) {
                    // Two rows for one key (only after a collision of 64-bit hashes, or a
                    // repaired index): the newer id wins.
                    if slab[j as usize].id < e.id {
                        slab[j as usize] = e;
                    }
                    continue;
                }
                slab.push(e);
                let slot = (slab.len() - 1) as u32;
                table.insert_unique(h, slot, |&k| slab[k as usize].hash);
            }
        }
        self.clock.fetch_max(max.saturating_add(1), Relaxed);
    }

    /// Remove the entry of hash `h`; when `only_id` is given, only if it is still that entry.
    pub fn remove(&self, h: u64, only_id: Option<u64>) -> Option<Entry> {
        let mut g = self.shard(h).write().unwrap_or_else(|p| p.into_inner());
        let Shard { table, slab, free } = &mut *g;
        let Ok(found) = table.find_entry(h, |&i| slab[i as usize].hash == h) else {
            return None;
        };
        let slot = *found.get();
        if let Some(id) = only_id
            && slab[slot as usize].id != id
        {
            return None;
        }
        found.remove();
        free.push(slot);
        // Leave a dead placeholder in the slot (reused by the next insert).
        let dead = Entry {
            hash: 0,
            id: 0,
            loc: AtomicU64::new(OWN_FILE),
            stored: 0,
            size: 0,
            expires: 0,
            last_access: AtomicU32::new(0),
            hits: AtomicU32::new(0),
            ns: 0,
            node: 0,
        };
        Some(std::mem::replace(&mut slab[slot as usize], dead))
    }

    /// Visit every live entry, one shard at a time.
    pub fn for_each(&self, mut f: impl FnMut(&Entry)) {
        for s in self.shards.iter() {
            let g = s.read().unwrap_or_else(|p| p.into_inner());
            for &i in g.table.iter() {
                f(&g.slab[i as usize]);
            }
        }
    }

    /// (hash, id) of the entries of namespace `ns`.
    pub fn of_namespace(&self, ns: &str) -> Vec<(u64, u64)> {
        let Some(n) = self.ns_index(ns) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.for_each(|e| {
            if e.ns == n {
                out.push((e.hash, e.id));
            }
        });
        out
    }

    /// Renumber access order when the clock nears its end (after ~2^31 reads and writes):
    /// order is kept, values halve.
    pub fn renormalize_if_needed(&self) {
        if self.clock.load(Relaxed) < 3 << 30 {
            return;
        }
        self.for_each(|e| {
            let v = e.last_access.load(Relaxed);
            e.last_access.store(v / 2, Relaxed);
        });
        self.clock.store((3 << 30) / 2, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, ns: &str, key: &str) -> Row {
        Row {
            id,
            namespace: ns.into(),
            key: key.into(),
            node: 0,
            size: 10,
            stored: 90,
            checksum: 0,
            created: 0,
            last_access: 0,
            hits: 0,
            expires: None,
            loc: Some((1, 64)),
        }
    }

    #[test]
    fn entries_are_small_and_the_map_round_trips() {
        assert_eq!(std::mem::size_of::<Entry>(), 48);
        let m = EntryMap::default();
        let h = m.key_hash("ns", "a");
        assert_ne!(h, m.key_hash("ns", "b"));
        assert_ne!(h, m.key_hash("nsa", ""));
        assert!(m.insert(m.entry_of(h, &row(1, "ns", "a"), 0)).is_none());
        let h2 = m.key_hash("other", "b");
        m.insert(m.entry_of(h2, &row(2, "other", "b"), 0));
        assert_eq!(m.with("ns", "a", |e| e.id), Some(1));
        assert_eq!(m.of_namespace("other"), vec![(h2, 2)]);
        assert!(m.remove(h, Some(9)).is_none(), "only_id guards the removal");
        assert_eq!(m.remove(h, Some(1)).map(|e| e.id), Some(1));
        assert!(m.with("ns", "a", |_| ()).is_none());
        // The freed slot is reused.
        m.insert(m.entry_of(h, &row(3, "ns", "a"), 0));
        assert_eq!(m.with_hash(h, |e| e.id), Some(3));
        m.with_hash(h, |e| m.touch(e));
        assert_eq!(m.take_touched(), vec![(3, 1)]);
        assert!(m.take_touched().is_empty());
    }

    #[test]
    fn a_restored_shard_refuses_what_a_checkpoint_never_holds() {
        let m = EntryMap::default();
        let h = m.key_hash("ns", "a");
        m.insert(m.entry_of(h, &row(7, "ns", "a"), 5));
        let e = m
            .with_hash(h, |e| Entry::from_bytes(&e.to_bytes()))
            .expect("entry");
        assert_eq!(
            e.to_bytes(),
            m.with_hash(h, |e| e.to_bytes()).expect("entry")
        );
        let i = shard_of(h);
        let other = EntryMap::with_seed(m.seed());
        other.restore_names_and_clock(m.names(), m.clock());
        let copy = |e: &Entry| Entry::from_bytes(&e.to_bytes());
        assert!(
            other
                .restore_shard((i + 1) % SHARDS, vec![copy(&e)])
                .is_err(),
            "wrong shard"
        );
        assert!(
            other.restore_shard(i, vec![copy(&e), copy(&e)]).is_err(),
            "a hash twice"
        );
        let mut bad_ns = copy(&e);
        bad_ns.ns = 3;
        assert!(
            other.restore_shard(i, vec![bad_ns]).is_err(),
            "unknown namespace"
        );
        other.restore_shard(i, vec![e]).expect("restore");
        assert_eq!(other.with("ns", "a", |e| e.id), Some(7));
        assert!(
            other.restore_shard(i, Vec::new()).is_err(),
            "only into an empty shard"
        );
    }
}

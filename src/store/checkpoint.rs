//! The entry-map checkpoint: on a clean stop the committer writes the whole entry map (per
//! shard, the slab entries' fixed fields; the interned namespace names; the hash seed and the
//! access clock) to `entries.ckpt` in the state directory, fsyncs it, and records its
//! generation and checksum in the index's `meta` in the same transaction that marks the
//! index clean. The next open, when the index is clean and both match, loads the map from it
//! with large sequential reads, one shard at a time, building each table from the stored
//! hashes (no key is read or hashed): no SQLite scan. Open clears the generation in the
//! fsynced transaction that clears the clean mark, before any write, so a checkpoint is
//! never loaded again once anything could have changed; the file itself is removed then.
//! Anything else (no checkpoint recorded, a different generation or checksum, a truncated or
//! corrupt file, a symlink) is logged with the reason and open scans the index instead.
//!
//! File layout, little-endian: magic `NCMAPCK1`, generation u64, seed u64, clock u32,
//! shard count u32, name count u32, each name (u32 length, UTF-8 bytes); per shard an entry
//! count u64 and that many 48-byte entries (`Entry::to_bytes`); then `NCMAPEND`, the total
//! entry count u64, and the xxh3-64 of every byte before it (u64).

use crate::store::entries::{ENTRY_BYTES, Entry, EntryMap, SHARDS, unpack_loc};
use crate::store::error::StoreError;
use crate::store::index;
use crate::store::segment;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

/// The checkpoint's file name in the state directory.
pub const FILE: &str = "entries.ckpt";
/// Where it is written before being renamed into place.
pub const TMP_FILE: &str = "entries.ckpt.tmp";
const MAGIC: &[u8; 8] = b"NCMAPCK1";
const END: &[u8; 8] = b"NCMAPEND";
/// `meta` rows: the generation (0: no checkpoint is current) and checksum.
const META_GEN: &str = "checkpoint_gen";
const META_SUM: &str = "checkpoint_sum";
/// Entries decoded per read while loading.
const CHUNK: usize = 8192;
/// A namespace name longer than this in a checkpoint is damage (names are validated short).
const MAX_NAME: usize = 1 << 16;

/// A map loaded from a checkpoint, with the sums open needs (made while decoding, so open
/// never walks the map again).
pub struct Loaded {
    /// The map, every shard filled.
    pub map: EntryMap,
    /// Entries loaded.
    pub entries: u64,
    /// The highest entry id.
    pub max_id: u64,
    /// Entries with an expiry.
    pub with_ttl: u64,
    /// Per node: (entries, logical bytes, stored bytes).
    pub per_node: BTreeMap<u32, (u64, u64, u64)>,
    /// Live stored bytes per (node, segment), as `commit::live_of` counts them.
    pub live: HashMap<(u32, u32), u64>,
}

/// The sums of `Loaded`, made entry by entry.
#[derive(Default)]
struct Sums {
    max_id: u64,
    with_ttl: u64,
    per_node: BTreeMap<u32, (u64, u64, u64)>,
    live: HashMap<(u32, u32), u64>,
    /// The last (node, segment) and its bytes not yet added to `live`: neighbours in a
    /// checkpoint mostly share a segment.
    run: Option<((u32, u32), u64)>,
    node_run: Option<(u32, (u64, u64, u64))>,
}

impl Sums {
    fn add(&mut self, e: &Entry) {
        self.max_id = self.max_id.max(e.id);
        self.with_ttl += u64::from(e.expires != 0);
        let node = u32::from(e.node);
        match &mut self.node_run {
            Some((n, t)) if *n == node => {
                t.0 += 1;
                t.1 += u64::from(e.size);
                t.2 += u64::from(e.stored);
            }
            _ => {
                self.flush_node();
                self.node_run = Some((node, (1, u64::from(e.size), u64::from(e.stored))));
            }
        }
        if let Some((seg, _)) = unpack_loc(e.loc.load(Relaxed)) {
            let bytes = segment::padded(u64::from(e.stored));
            match &mut self.run {
                Some((k, b)) if *k == (node, seg) => *b += bytes,
                _ => {
                    self.flush_run();
                    self.run = Some(((node, seg), bytes));
                }
            }
        }
    }

    fn flush_run(&mut self) {
        if let Some((k, b)) = self.run.take() {
            *self.live.entry(k).or_default() += b;
        }
    }

    fn flush_node(&mut self) {
        if let Some((n, (c, l, s))) = self.node_run.take() {
            let t = self.per_node.entry(n).or_default();
            t.0 += c;
            t.1 += l;
            t.2 += s;
        }
    }
}

fn write_io(what: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::io(format!("writing the entry-map checkpoint ({what})"), e)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
struct HashingRead<R> {
    inner: R,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl<R: Read> Read for HashingRead<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        self.hasher.update(&b[..n]);
        Ok(n)
    }
}

fn random_generation() -> u64 {
    use std::hash::BuildHasher;
    let g = std::collections::hash_map::RandomState::new().hash_one(crate::store::state::unix_ns());
    g.max(1)
}

/// Write `map` to `dir/entries.ckpt` (through a temp file, fsynced, renamed, the folder
/// fsynced); returns (generation, checksum).
pub fn write(map: &EntryMap, dir: &Path) -> Result<(u64, u64), StoreError> {
    let tmp = dir.join(TMP_FILE);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(write_io("removing an old temp file")(e));
        }
        _ => {}
    }
    // O_EXCL | O_NOFOLLOW: a symlink planted at the temp name is never written through.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(write_io("creating the temp file"))?;
    let res = write_to(map, &f);
    let res = res.and_then(|sums| {
        crate::store::segment::fdatasync(&f).map_err(write_io("fdatasync"))?;
        std::fs::rename(&tmp, dir.join(FILE)).map_err(write_io("renaming into place"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_io("fsync of the state directory"))?;
        Ok(sums)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn write_to(map: &EntryMap, f: &File) -> Result<(u64, u64), StoreError> {
    let generation = random_generation();
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, f),
        hasher: xxhash_rust::xxh3::Xxh3::new(),
    };
    let io = write_io("writing");
    let names = map.names();
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&generation.to_le_bytes());
    head.extend_from_slice(&map.seed().to_le_bytes());
    head.extend_from_slice(&map.clock().to_le_bytes());
    head.extend_from_slice(&(SHARDS as u32).to_le_bytes());
    head.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in &names {
        head.extend_from_slice(&(n.len() as u32).to_le_bytes());
        head.extend_from_slice(n.as_bytes());
    }
    w.write_all(&head).map_err(&io)?;
    let mut total = 0u64;
    for i in 0..SHARDS {
        let want = map.shard_len(i);
        w.write_all(&(want as u64).to_le_bytes()).map_err(&io)?;
        let mut err = None;
        let mut clamped = false;
        let got = map.for_each_slot_in(i, |e| {
            if err.is_some() {
                return;
            }
            clamped |= e.clamped();
            if let Err(e) = w.write_all(&e.to_bytes()) {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(io(e));
        }
        if clamped {
            return Err(StoreError::Unavailable(
                "an entry's size or node does not fit the map's fields; the next open scans the index".into(),
            ));
        }
        if got != want {
            return Err(StoreError::Unavailable(format!(
                "shard {i} of the map changed while it was written ({want} then {got} entries)"
            )));
        }
        total += got as u64;
    }
    w.write_all(END).map_err(&io)?;
    w.write_all(&total.to_le_bytes()).map_err(&io)?;
    let sum = w.hasher.digest();
    let mut inner = w.inner;
    inner.write_all(&sum.to_le_bytes()).map_err(&io)?;
    inner.flush().map_err(&io)?;
    Ok((generation, sum))
}

/// The clean stop's last step (the committer calls it once everything is flushed): write
/// the checkpoint, then in one fsynced transaction record it and mark the index clean. When
/// the checkpoint cannot be written (a full disk, say) the index is marked clean without
/// one and the next open scans it.
pub fn mark_clean(conn: &mut Connection, map: &EntryMap, dir: &Path) -> Result<(), StoreError> {
    let written = match write(map, dir) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(
                "no entry-map checkpoint written ({e}); the next open loads the map from the index"
            );
            None
        }
    };
    let sql = |e| StoreError::sql("marking a clean stop", e);
    let tx = conn.transaction().map_err(sql)?;
    let (generation, sum) = written.unwrap_or((0, 0));
    index::meta_set(&tx, META_GEN, generation as i64).map_err(sql)?;
    index::meta_set(&tx, META_SUM, sum as i64).map_err(sql)?;
    index::meta_set(&tx, "clean", 1).map_err(sql)?;
    tx.commit().map_err(sql)
}

/// Make any checkpoint stale: part of open's fsynced transaction that clears the clean mark.
pub fn invalidate(conn: &Connection) -> rusqlite::Result<()> {
    index::meta_set(conn, META_GEN, 0)
}

/// Remove the checkpoint file (after `invalidate` committed; a stale one is never loaded
/// anyway, this only returns its space).
pub fn remove_file(dir: &Path) {
    for name in [FILE, TMP_FILE] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("removing {}: {e}", dir.join(name).display());
            }
            _ => {}
        }
    }
}

/// The map of `dir`'s checkpoint when the (clean) index `conn` records it as current; None,
/// with a log line saying why, otherwise.
pub fn load(conn: &Connection, dir: &Path) -> Option<Loaded> {
    let meta = |name| index::meta_get(conn, name).ok().flatten().unwrap_or(0) as u64;
    let (generation, sum) = (meta(META_GEN), meta(META_SUM));
    if generation == 0 {
        tracing::info!(
            "no entry-map checkpoint is recorded for this clean stop; loading the map from the index"
        );
        return None;
    }
    let t0 = std::time::Instant::now();
    match read(dir, generation, sum) {
        Ok(l) => {
            tracing::info!(
                entries = l.entries,
                ms = t0.elapsed().as_millis() as u64,
                "loaded the entry map from its checkpoint"
            );
            Some(l)
        }
        Err(why) => {
            tracing::warn!(
                "entry-map checkpoint {} not used ({why}); loading the map from the index",
                dir.join(FILE).display()
            );
            None
        }
    }
}

fn short(e: std::io::Error) -> String {
    format!("truncated or unreadable: {e}")
}

fn u64_of(r: &mut impl Read) -> Result<u64, String> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(short)?;
    Ok(u64::from_le_bytes(b))
}

fn u32_of(r: &mut impl Read) -> Result<u32, String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(short)?;
    Ok(u32::from_le_bytes(b))
}

/// Read and decode every shard's entries, summing them, and hand each shard's slab on.
fn read_shards(
    r: &mut impl Read,
    len: u64,
    to_builder: std::sync::mpsc::SyncSender<(usize, Vec<Entry>)>,
) -> Result<(u64, Sums), String> {
    let mut total = 0u64;
    let mut sums = Sums::default();
    let mut buf = vec![0u8; CHUNK * ENTRY_BYTES];
    for i in 0..SHARDS {
        let n = u64_of(r)?;
        if n.saturating_mul(ENTRY_BYTES as u64) > len {
            return Err(format!(
                "shard {i} claims {n} entries in a file of {len} bytes"
            ));
        }
        let n = n as usize;
        // Exactly sized: the slab is this Vec, never copied or grown.
        let mut slab: Vec<Entry> = Vec::with_capacity(n);
        while slab.len() < n {
            let k = (n - slab.len()).min(CHUNK);
            let bytes = &mut buf[..k * ENTRY_BYTES];
            r.read_exact(bytes).map_err(short)?;
            slab.extend(bytes.chunks_exact(ENTRY_BYTES).map(|c| {
                let mut e = [0u8; ENTRY_BYTES];
                e.copy_from_slice(c);
                let e = Entry::from_bytes(&e);
                sums.add(&e);
                e
            }));
        }
        to_builder
            .send((i, slab))
            .map_err(|_| "the table builder stopped".to_string())?;
        total += n as u64;
    }
    Ok((total, sums))
}

fn read(dir: &Path, generation: u64, sum: u64) -> Result<Loaded, String> {
    let path = dir.join(FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "it is a symlink".to_string(),
            _ => format!("opening it: {e}"),
        })?;
    let md = f.metadata().map_err(|e| format!("stat: {e}"))?;
    if !md.is_file() {
        return Err("it is not a regular file".into());
    }
    let len = md.len();
    let mut r = HashingRead {
        inner: BufReader::with_capacity(1 << 20, f),
        hasher: xxhash_rust::xxh3::Xxh3::new(),
    };
    let mut b8 = [0u8; 8];
    r.read_exact(&mut b8).map_err(short)?;
    if &b8 != MAGIC {
        return Err("not a checkpoint (bad magic)".into());
    }
    let g = u64_of(&mut r)?;
    if g != generation {
        return Err(format!(
            "generation {g:016x}, the index records {generation:016x}"
        ));
    }
    let seed = u64_of(&mut r)?;
    let clock = u32_of(&mut r)?;
    let shards = u32_of(&mut r)? as usize;
    if shards != SHARDS {
        return Err(format!("{shards} shards, this build has {SHARDS}"));
    }
    let n_names = u32_of(&mut r)? as usize;
    if n_names as u64 > len / 4 {
        return Err(format!("{n_names} names in a file of {len} bytes"));
    }
    let mut names = Vec::with_capacity(n_names);
    for _ in 0..n_names {
        let l = u32_of(&mut r)? as usize;
        if l > MAX_NAME {
            return Err(format!("a namespace name of {l} bytes"));
        }
        let mut b = vec![0u8; l];
        r.read_exact(&mut b).map_err(short)?;
        names.push(String::from_utf8(b).map_err(|_| "a namespace name is not UTF-8")?);
    }
    let map = EntryMap::with_seed(seed);
    map.restore_names_and_clock(names, clock);
    // This thread reads and decodes; a second builds each shard's table meanwhile (the
    // two halves of the work take about as long). At most a few shards are in flight.
    let (total, mut sums) = std::thread::scope(|s| -> Result<(u64, Sums), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Entry>)>(2);
        let map = &map;
        let builder = std::thread::Builder::new()
            .name("cache-ckpt-load".into())
            .spawn_scoped(s, move || -> Result<(), String> {
                for (i, slab) in rx {
                    map.restore_shard(i, slab)?;
                }
                Ok(())
            })
            .map_err(|e| format!("starting a loader thread: {e}"))?;
        let read = read_shards(&mut r, len, tx);
        let built = builder
            .join()
            .map_err(|_| "the table builder panicked".to_string())?;
        // The builder's refusal says more than the reader's "builder stopped".
        built?;
        read
    })?;
    r.read_exact(&mut b8).map_err(short)?;
    if &b8 != END {
        return Err("no end marker after the last shard".into());
    }
    let count = u64_of(&mut r)?;
    if count != total {
        return Err(format!(
            "end marker counts {count} entries, the shards {total}"
        ));
    }
    let computed = r.hasher.digest();
    let mut inner = r.inner;
    inner.read_exact(&mut b8).map_err(short)?;
    let stored = u64::from_le_bytes(b8);
    if stored != computed {
        return Err(format!(
            "checksum {stored:016x} in the file, {computed:016x} computed: damaged"
        ));
    }
    if stored != sum {
        return Err(format!(
            "checksum {stored:016x}, the index records {sum:016x}"
        ));
    }
    let mut extra = [0u8; 1];
    if inner.read(&mut extra).map_err(short)? != 0 {
        return Err("bytes after the checksum".into());
    }
    sums.flush_run();
    sums.flush_node();
    Ok(Loaded {
        map,
        entries: total,
        max_id: sums.max_id,
        with_ttl: sums.with_ttl,
        per_node: sums.per_node,
        live: sums.live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Row;

    fn row(id: u64, ns: &str, key: &str) -> Row {
        Row {
            id,
            namespace: ns.into(),
            key: key.into(),
            node: 0,
            size: 10 + id,
            stored: 90 + id,
            checksum: 0,
            created: 0,
            last_access: 0,
            hits: id,
            expires: (id % 3 == 0).then_some(1_000 + id),
            loc: Some((1, 64 * id)),
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = EntryMap::default();
        for id in 1..=500u64 {
            let ns = if id % 2 == 0 { "even" } else { "odd" };
            let key = format!("k{id}");
            let h = m.key_hash(ns, &key);
            m.insert(m.entry_of(h, &row(id, ns, &key), id as u32));
        }
        let (generation, sum) = write(&m, dir.path()).expect("write");
        let l = read(dir.path(), generation, sum).expect("read");
        assert_eq!(l.entries, 500);
        assert_eq!(l.map.names(), m.names());
        assert!(l.map.clock() >= m.clock());
        for id in 1..=500u64 {
            let ns = if id % 2 == 0 { "even" } else { "odd" };
            let key = format!("k{id}");
            let got = l
                .map
                .with(ns, &key, |e| e.to_bytes())
                .expect("entry present");
            let want = m.with(ns, &key, |e| e.to_bytes()).expect("entry");
            assert_eq!(got, want, "entry {id}");
        }
        assert!(
            read(dir.path(), generation ^ 1, sum).is_err(),
            "other generation"
        );
        assert!(
            read(dir.path(), generation, sum ^ 1).is_err(),
            "other checksum"
        );
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).expect("file");
        // One flipped bit in an entry, then a truncated file.
        let mut bad = bytes.clone();
        bad[bytes.len() / 2] ^= 0x10;
        std::fs::write(&path, &bad).expect("write");
        assert!(read(dir.path(), generation, sum).is_err(), "flipped bit");
        std::fs::write(&path, &bytes[..bytes.len() - 9]).expect("write");
        assert!(read(dir.path(), generation, sum).is_err(), "truncated");
        std::fs::write(&path, &bytes).expect("write");
        assert!(read(dir.path(), generation, sum).is_ok());
    }
}

//! Start-up: open (or rebuild) the index and make it agree with the shards. After a clean
//! stop this is just loading the rows. After an unclean one (crash, SIGKILL, power loss):
//! unfinished temp files are removed; rows whose record is missing or beyond its segment's end
//! are dropped; rows at or above `verified_below` (not yet covered by a full flush) have their
//! record read and checked, and a torn one is dropped (a miss, never data). Then the scan:
//! every segment from the node's scan start (recorded with `verified_below`) is read for
//! records at or above `verified_below` whose rows did not reach the disk (a sync put is
//! answered once its record is durable; its row follows lazily) and tombstones of removals
//! whose rows did not either; large-value files without a row at or above `verified_below`
//! are checked the same way, older ones removed. A scanned record is indexed when it is
//! intact, newer than its key's row, not covered by a tombstone, not expired, and carries its
//! namespace's recorded owner (a loser of a race for a new namespace never is). A key whose
//! row at or above the mark lost its record, and that the scan gave nothing newer, goes back
//! to its newest intact older version (a search of every segment, only in that case): that
//! put was never durable, and the version before it is the one the key had.
//! A PutMany is all or nothing here too: its records name their batch (blob.rs, version 3),
//! and the records of a batch at or above the mark are indexed only when every one of them
//! is found intact (a crash between the batch's writes leaves part of it); a batch one of
//! whose rows lost its record is taken out whole, its keys back at their older versions.
//! A missing or corrupt `index.db` is rebuilt from the records alone (segment scans and
//! large-value files, tombstones honoured by id), namespace owners included; a rebuild takes
//! records one by one (it cannot tell a batch cut by a crash from one whose dead records were
//! reclaimed).
use crate::store::blob;
use crate::store::error::StoreError;
use crate::store::index::{self, Row};
use crate::store::segment;
use crate::store::shard::{self, Shard};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// What start-up found and loaded.
pub struct Recovered {
    /// The index connection.
    pub conn: Connection,
    /// Every entry row.
    pub rows: Vec<Row>,
    /// Namespace owners.
    pub namespaces: Vec<(String, Option<u32>)>,
    /// The next entry id.
    pub next_id: u64,
}

#[derive(Default, Debug)]
struct Repairs {
    rebuilt: bool,
    temp_removed: u64,
    rows_dropped: u64,
    records_checked: u64,
    files_indexed: u64,
    files_removed: u64,
    scanned_indexed: u64,
    tombstones_applied: u64,
    older_restored: u64,
    partial_batches: u64,
}

/// The PutMany batches in recovery's window (records at or above `verified_below`): which of
/// their records were found intact, and which lost a record that had a row.
struct Batches {
    verified_below: u64,
    /// First id -> (count, ids of its records found intact).
    found: BTreeMap<u64, (u32, HashSet<u64>)>,
    /// First ids of batches one of whose rows lost its record.
    torn: HashSet<u64>,
}

impl Batches {
    fn new(verified_below: u64) -> Batches {
        Batches {
            verified_below,
            found: BTreeMap::new(),
            torn: HashSet::new(),
        }
    }

    /// Record `id` (of `batch`, if any) is there and intact.
    fn saw(&mut self, batch: Option<blob::Batch>, id: u64) {
        if let Some(b) = batch {
            self.found
                .entry(b.first)
                .or_insert_with(|| (b.count, HashSet::new()))
                .1
                .insert(id);
        }
    }

    /// The batch record `id` belongs to, when one of its records was found.
    fn of(&self, id: u64) -> Option<blob::Batch> {
        let (&first, &(count, _)) = self.found.range(..=id).next_back()?;
        let b = blob::Batch { first, count };
        b.holds(id).then_some(b)
    }

    /// A row of record `id` lost its record: its batch, if any, is torn.
    fn lost(&mut self, id: u64) {
        if let Some(b) = self.of(id) {
            self.torn.insert(b.first);
        }
    }

    /// Is record `id` in a torn batch?
    fn in_torn(&self, id: u64) -> bool {
        self.of(id).is_some_and(|b| self.torn.contains(&b.first))
    }

    /// May a record of `batch` be indexed? Yes for a record of its own and for a batch below
    /// the mark (answered and durable whole: its ids were in flight together, so no flush
    /// point fell inside it); else only when every record of the batch was found intact.
    fn whole(&self, batch: Option<blob::Batch>) -> bool {
        let Some(b) = batch else { return true };
        b.first < self.verified_below
            || !self.torn.contains(&b.first)
                && self
                    .found
                    .get(&b.first)
                    .is_some_and(|(count, ids)| ids.len() == *count as usize)
    }

    /// Batches in the window that are not whole.
    fn partial(&self) -> u64 {
        self.found
            .iter()
            .filter(|&(&first, &(count, _))| !self.whole(Some(blob::Batch { first, count })))
            .count() as u64
    }
}

/// What recovery after an unclean stop must look at beyond the rows: records at or above
/// `verified_below`, in each node's segments from `scan_from` on.
struct Window<'a> {
    verified_below: u64,
    scan_from: &'a HashMap<u32, u32>,
}

fn move_aside(db: &Path, why: &str) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = db.with_file_name(format!("index.db.corrupt-{stamp}"));
    tracing::warn!(
        "index {} is unusable ({why}); moved to {} and rebuilding from the shard files",
        db.display(),
        aside.display()
    );
    let _ = std::fs::rename(db, &aside);
    for ext in ["-wal", "-shm"] {
        let side = db.with_file_name(format!("index.db{ext}"));
        let _ = std::fs::rename(
            &side,
            aside.with_file_name(format!("index.db.corrupt-{stamp}{ext}")),
        );
    }
}

fn open_checked(db: &Path) -> Result<(Connection, bool), String> {
    let conn = index::open(db).map_err(|e| e.to_string())?;
    let clean = index::meta_get(&conn, "clean").map_err(|e| e.to_string())? == Some(1);
    if !clean {
        // After a crash, read every page once: a torn index is rebuilt instead of trusted.
        if !index::quick_check(&conn).map_err(|e| e.to_string())? {
            return Err("quick_check reported damage".into());
        }
    }
    Ok((conn, clean))
}

/// Open `dir/index.db` and reconcile it with `shards`. After a clean stop, `map_loaded` is
/// asked first whether it loaded the entry map from elsewhere (the checkpoint): then the
/// rows are not read (`rows` is empty).
pub fn recover(
    dir: &Path,
    shards: &[Arc<Shard>],
    map_loaded: &mut dyn FnMut(&Connection) -> bool,
) -> Result<Recovered, StoreError> {
    let db = dir.join("index.db");
    let mut rep = Repairs {
        rebuilt: !db.exists(),
        ..Default::default()
    };
    let (mut conn, clean) = if rep.rebuilt {
        if shards.iter().any(|s| has_blobs(&s.path)) {
            tracing::warn!(
                "index {} is missing; rebuilding it from the shard files",
                db.display()
            );
        } else {
            rep.rebuilt = false; // a new cache, nothing to rebuild
        }
        (
            index::open(&db).map_err(|e| StoreError::sql("creating", e))?,
            false,
        )
    } else {
        match open_checked(&db) {
            Ok(c) => c,
            Err(why) => {
                move_aside(&db, &why);
                rep.rebuilt = true;
                (
                    index::open(&db).map_err(|e| StoreError::sql("creating", e))?,
                    false,
                )
            }
        }
    };
    let mut rows = if rep.rebuilt || (clean && map_loaded(&conn)) {
        Vec::new()
    } else {
        index::load_entries(&conn).map_err(|e| StoreError::sql("loading entries", e))?
    };
    let meta = |name: &str| -> Result<u64, StoreError> {
        Ok(index::meta_get(&conn, name)
            .map_err(|e| StoreError::sql("reading meta", e))?
            .unwrap_or(0)
            .max(0) as u64)
    };
    let persisted_next = meta("next_id")?;
    let verified_below = meta("verified_below")?;
    let mut scan_from: HashMap<u32, u32> = HashMap::new();
    for s in shards {
        if let Some(v) = index::meta_get(&conn, &index::scan_from_name(s.node))
            .map_err(|e| StoreError::sql("reading meta", e))?
        {
            scan_from.insert(s.node, v.clamp(0, i64::from(u32::MAX)) as u32);
        }
    }
    if rep.rebuilt {
        rows = rebuild(&mut conn, shards, &mut rep)?;
    } else if !clean {
        rows = reconcile(
            &mut conn,
            rows,
            shards,
            Window {
                verified_below,
                scan_from: &scan_from,
            },
            &mut rep,
        )?;
    }
    let namespaces =
        index::load_namespaces(&conn).map_err(|e| StoreError::sql("loading namespaces", e))?;
    let next_id = rows
        .iter()
        .map(|r| r.id + 1)
        .max()
        .unwrap_or(1)
        .max(persisted_next)
        .max(1);
    if rep.rebuilt
        || rep.temp_removed
            + rep.rows_dropped
            + rep.files_indexed
            + rep.files_removed
            + rep.scanned_indexed
            + rep.tombstones_applied
            + rep.older_restored
            + rep.partial_batches
            > 0
    {
        tracing::warn!(
            rebuilt = rep.rebuilt,
            temp_files_removed = rep.temp_removed,
            rows_without_record_dropped = rep.rows_dropped,
            files_indexed = rep.files_indexed,
            scanned_records_indexed = rep.scanned_indexed,
            tombstones_applied = rep.tombstones_applied,
            older_versions_restored = rep.older_restored,
            partial_batches_left_out = rep.partial_batches,
            stale_files_removed = rep.files_removed,
            "repaired the cache after an unclean stop"
        );
    } else if !clean {
        tracing::info!("checked the cache after an unclean stop: nothing to repair");
    }
    Ok(Recovered {
        conn,
        rows,
        namespaces,
        next_id,
    })
}

fn has_blobs(shard: &Path) -> bool {
    std::fs::read_dir(shard)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name();
                if n == shard::TMP_DIR {
                    return false;
                }
                if n == segment::SEG_DIR {
                    return std::fs::read_dir(e.path())
                        .map(|mut r| r.next().is_some())
                        .unwrap_or(false);
                }
                true
            })
        })
        .unwrap_or(false)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Large-value files of a shard: (id, path, length).
fn blob_files(s: &Shard) -> Vec<(u64, std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&s.path) else {
        return out;
    };
    for fan in rd.filter_map(|e| e.ok()) {
        let name = fan.file_name();
        if name == shard::TMP_DIR
            || name == segment::SEG_DIR
            || !fan.file_type().map(|t| t.is_dir()).unwrap_or(false)
        {
            continue;
        }
        let Ok(files) = std::fs::read_dir(fan.path()) else {
            continue;
        };
        for f in files.filter_map(|e| e.ok()) {
            if !f.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let id = f.file_name().to_str().and_then(shard::parse_blob_name);
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            match id {
                Some(id) => out.push((id, f.path(), len)),
                None => out.push((u64::MAX, f.path(), len)),
            }
        }
    }
    out
}

/// Read and check the record of `r` (the whole value): Some(its batch, if any) when intact.
fn checked_record(s: &Shard, r: &Row) -> Option<Option<blob::Batch>> {
    let header_len = blob::header_len(&r.namespace, &r.key);
    let payload_len = (r.stored as usize).checked_sub(header_len)?;
    let (h, p) = match r.loc {
        Some((seg, off)) => s.segments.read(seg, off, header_len, payload_len),
        None => s.read_blob(r.id, header_len, payload_len),
    }
    .ok()?;
    let batch = blob::batch_of(&blob::parse_header(&h).ok()?, &p).ok()?;
    blob::decode_parts(&h, p, r.id, r.checksum).ok()?;
    Some(batch)
}

/// A large-value file's record, whole and checked, with its batch (None: torn or foreign).
fn checked_file(path: &Path, id: u64) -> Option<(blob::Header, Option<blob::Batch>)> {
    let bytes = std::fs::read(path).ok()?;
    let h = blob::parse_header(&bytes).ok()?;
    if h.id != id
        || h.flags & segment::FLAG_TOMBSTONE != 0
        || h.stored_len() != bytes.len() as u64
        || blob::decode_payload(&h, &bytes).is_err()
    {
        return None;
    }
    let batch = blob::batch_of(&h, &bytes[h.header_len..]).ok()?;
    Some((h, batch))
}

/// Has the record of `h` expired by `now`?
fn expired(h: &blob::Header, now: u64) -> bool {
    h.expires != 0 && h.expires <= now
}

fn reconcile(
    conn: &mut Connection,
    rows: Vec<Row>,
    shards: &[Arc<Shard>],
    win: Window<'_>,
    rep: &mut Repairs,
) -> Result<Vec<Row>, StoreError> {
    let verified_below = win.verified_below;
    let now = now_s();
    let by_node: HashMap<u32, &Arc<Shard>> = shards.iter().map(|s| (s.node, s)).collect();
    let mut seg_len: HashMap<(u32, u32), u64> = HashMap::new();
    let mut files: HashMap<(u32, u64), u64> = HashMap::new();
    let mut remove: Vec<std::path::PathBuf> = Vec::new();
    for s in shards {
        rep.temp_removed += s.clear_tmp();
        for seg in s.segments.ids() {
            seg_len.insert((s.node, seg), s.segments.len_of(seg).unwrap_or(0));
        }
        for (id, path, len) in blob_files(s) {
            if id == u64::MAX {
                remove.push(path);
            } else {
                files.insert((s.node, id), len);
            }
        }
    }
    let mut keep = Vec::with_capacity(rows.len());
    let mut dropped = Vec::new();
    // Keys whose row at or above the mark lost its record (the writeback race): id dropped.
    let mut torn: HashMap<(String, String), u64> = HashMap::new();
    let mut batches = Batches::new(verified_below);
    for r in rows {
        let present = match r.loc {
            Some((seg, off)) => seg_len
                .get(&(r.node, seg))
                .is_some_and(|&len| off.saturating_add(r.stored) <= len),
            None => files.remove(&(r.node, r.id)) == Some(r.stored),
        };
        let ok = present
            && (r.id < verified_below || {
                rep.records_checked += 1;
                match by_node.get(&r.node).and_then(|s| checked_record(s, &r)) {
                    Some(batch) => {
                        batches.saw(batch, r.id);
                        true
                    }
                    None => false,
                }
            });
        if ok {
            keep.push(r);
        } else {
            if r.loc.is_none()
                && let Some(s) = by_node.get(&r.node)
            {
                remove.push(s.blob_path(r.id));
            }
            if r.id >= verified_below {
                let e = torn.entry((r.namespace, r.key)).or_insert(r.id);
                *e = (*e).max(r.id);
            }
            dropped.push(r.id);
        }
    }
    rep.rows_dropped = dropped.len() as u64;
    // The scan: records at or above the mark whose rows may not have reached the disk.
    let mut found: Vec<(Row, Option<u32>, Option<blob::Batch>)> = Vec::new();
    let mut tombs: HashMap<(String, String), u64> = HashMap::new();
    for s in shards {
        let Some(&from) = win.scan_from.get(&s.node) else {
            continue;
        };
        for seg in s.segments.ids().into_iter().filter(|&g| g >= from) {
            for r in s.segments.scan_records(seg)? {
                let h = r.header;
                if let Some(t) = r.tomb {
                    let e = tombs.entry((h.namespace, h.key)).or_insert(t.upto);
                    *e = (*e).max(t.upto);
                } else if h.id >= verified_below {
                    batches.saw(r.batch, h.id);
                    if !expired(&h, now) {
                        let owner = h.owner;
                        found.push((row_of(&h, s.node, Some((seg, r.off))), owner, r.batch));
                    }
                }
            }
        }
    }
    // Files without a row below the mark belong to puts never answered (their rows were
    // durable) or to entries already replaced: they go. At or above it they may be a sync
    // put's, whose row did not reach the disk: checked and offered like scanned records.
    for ((node, id), _) in files {
        let Some(s) = by_node.get(&node) else {
            continue;
        };
        let path = s.blob_path(id);
        match (id >= verified_below)
            .then(|| checked_file(&path, id))
            .flatten()
        {
            Some((h, batch)) => {
                batches.saw(batch, id);
                if expired(&h, now) {
                    remove.push(path);
                } else {
                    found.push((row_of(&h, node, None), h.owner, batch));
                }
            }
            None => remove.push(path),
        }
    }
    // All or nothing per PutMany. A batch one of whose rows lost its record (a power loss
    // tore it) goes whole: its other rows are dropped as torn too, so their keys go back to
    // their older versions. A batch not found whole (a crash between its writes) is not
    // indexed from its records.
    for &id in dropped.iter().filter(|&&id| id >= verified_below) {
        batches.lost(id);
    }
    if !batches.torn.is_empty() {
        keep.retain(|r| {
            if r.id < verified_below || !batches.in_torn(r.id) {
                return true;
            }
            if r.loc.is_none()
                && let Some(s) = by_node.get(&r.node)
            {
                remove.push(s.blob_path(r.id));
            }
            let e = torn
                .entry((r.namespace.clone(), r.key.clone()))
                .or_insert(r.id);
            *e = (*e).max(r.id);
            dropped.push(r.id);
            false
        });
        rep.rows_dropped = dropped.len() as u64;
    }
    rep.partial_batches = batches.partial();
    found.retain(|(r, _, batch)| {
        let whole = batches.whole(*batch);
        if !whole
            && r.loc.is_none()
            && let Some(s) = by_node.get(&r.node)
        {
            remove.push(s.blob_path(r.id));
        }
        whole
    });
    let owners: HashMap<String, Option<u32>> = index::load_namespaces(conn)
        .map_err(|e| StoreError::sql("loading namespaces", e))?
        .into_iter()
        .collect();
    let mut slots: Vec<Option<Row>> = keep.into_iter().map(Some).collect();
    // Only the keys the scan found are looked up (a large index is not copied into a map).
    let wanted: std::collections::HashSet<(&str, &str)> = tombs
        .keys()
        .map(|(n, k)| (n.as_str(), k.as_str()))
        .chain(
            found
                .iter()
                .map(|(r, _, _)| (r.namespace.as_str(), r.key.as_str())),
        )
        .collect();
    let found_ids: std::collections::HashSet<u64> = found.iter().map(|(r, _, _)| r.id).collect();
    let mut at: HashMap<(String, String), usize> = HashMap::new();
    let mut row_ids: std::collections::HashSet<u64> = Default::default();
    for (i, r) in slots.iter().enumerate() {
        let Some(r) = r else { continue };
        if found_ids.contains(&r.id) {
            row_ids.insert(r.id);
        }
        if wanted.contains(&(r.namespace.as_str(), r.key.as_str())) {
            at.insert((r.namespace.clone(), r.key.clone()), i);
        }
    }
    drop(wanted);
    let mut inserted: Vec<Row> = Vec::new();
    // Tombstones first: a row they cover was removed (its removal's commit did not last).
    for (k, upto) in &tombs {
        if let Some(&i) = at.get(k)
            && slots[i].as_ref().is_some_and(|r| r.id <= *upto)
            && let Some(r) = slots[i].take()
        {
            at.remove(k);
            if r.loc.is_none()
                && let Some(s) = by_node.get(&r.node)
            {
                remove.push(s.blob_path(r.id));
            }
            dropped.push(r.id);
            rep.tombstones_applied += 1;
        }
    }
    // Then the newest intact record of each key, when newer than its row.
    found.sort_by_key(|(r, _, _)| std::cmp::Reverse(r.id));
    let mut seen: std::collections::HashSet<(String, String)> = Default::default();
    for (r, owner, _) in found {
        if row_ids.contains(&r.id) {
            continue;
        }
        let k = (r.namespace.clone(), r.key.clone());
        let eligible = tombs.get(&k).is_none_or(|&u| r.id > u)
            && owners.get(&r.namespace) == Some(&owner)
            && at
                .get(&k)
                .and_then(|&i| slots[i].as_ref())
                .is_none_or(|cur| cur.id < r.id);
        // Sorted newest first: the first eligible record of a key wins.
        if !eligible || !seen.insert(k.clone()) {
            if r.loc.is_none()
                && let Some(s) = by_node.get(&r.node)
            {
                remove.push(s.blob_path(r.id));
            }
            continue;
        }
        if let Some(&i) = at.get(&k)
            && let Some(old) = slots[i].take()
        {
            if old.loc.is_none()
                && let Some(s) = by_node.get(&old.node)
            {
                remove.push(s.blob_path(old.id));
            }
            dropped.push(old.id);
        }
        at.remove(&k);
        rep.scanned_indexed += 1;
        inserted.push(r);
    }
    // A key whose newest row lost its record and that the scan did not give a newer one:
    // that put was never durable (rows reach the disk after their records, except by a
    // writeback race of a put younger than the interval), so the key goes back to its newest
    // intact older version, the one it had before that put; a miss when there is none.
    for r in &inserted {
        torn.remove(&(r.namespace.clone(), r.key.clone()));
    }
    if !torn.is_empty() {
        inserted.extend(older_versions(shards, &torn, &owners, &batches, now, rep)?);
    }
    let tx = conn
        .transaction()
        .map_err(|e| StoreError::sql("repairing", e))?;
    for id in &dropped {
        index::delete_entry(&tx, *id).map_err(|e| StoreError::sql("repairing", e))?;
    }
    for r in &inserted {
        index::insert_entry(&tx, r).map_err(|e| StoreError::sql("repairing", e))?;
    }
    tx.commit().map_err(|e| StoreError::sql("repairing", e))?;
    let mut keep: Vec<Row> = slots.into_iter().flatten().collect();
    keep.extend(inserted);
    for p in remove {
        if std::fs::remove_file(&p).is_ok() {
            rep.files_removed += 1;
        }
    }
    Ok(keep)
}

/// For each key of `torn` (key -> id of the version whose record was torn), its newest intact
/// segment record with a smaller id that no tombstone covers, that carries its namespace's
/// owner and whose batch, if any, is whole: a search of every segment, done only after a
/// power loss tore a record.
fn older_versions(
    shards: &[Arc<Shard>],
    torn: &HashMap<(String, String), u64>,
    owners: &HashMap<String, Option<u32>>,
    batches: &Batches,
    now: u64,
    rep: &mut Repairs,
) -> Result<Vec<Row>, StoreError> {
    let mut best: HashMap<(String, String), Row> = HashMap::new();
    let mut tombs: HashMap<(String, String), u64> = HashMap::new();
    for s in shards {
        for seg in s.segments.ids() {
            for r in s.segments.scan_records(seg)? {
                let h = r.header;
                let k = (h.namespace.clone(), h.key.clone());
                let Some(&torn_id) = torn.get(&k) else {
                    continue;
                };
                if let Some(t) = r.tomb {
                    let e = tombs.entry(k).or_insert(t.upto);
                    *e = (*e).max(t.upto);
                    continue;
                }
                if h.id >= torn_id
                    || expired(&h, now)
                    || !batches.whole(r.batch)
                    || owners.get(&h.namespace) != Some(&h.owner)
                    || best.get(&k).is_some_and(|b| b.id >= h.id)
                {
                    continue;
                }
                best.insert(k, row_of(&h, s.node, Some((seg, r.off))));
            }
        }
    }
    let out: Vec<Row> = best
        .into_iter()
        .filter(|(k, r)| tombs.get(k).is_none_or(|&u| r.id > u))
        .map(|(_, r)| r)
        .collect();
    rep.older_restored = out.len() as u64;
    Ok(out)
}

fn row_of(h: &blob::Header, node: u32, loc: Option<(u32, u64)>) -> Row {
    Row {
        id: h.id,
        namespace: h.namespace.clone(),
        key: h.key.clone(),
        node,
        size: h.logical_len,
        stored: h.stored_len(),
        checksum: h.checksum,
        created: h.created,
        last_access: h.created,
        hits: 0,
        expires: (h.expires != 0).then_some(h.expires),
        loc,
    }
}

/// Build the index from the records alone: every intact segment record and large-value file;
/// per key the newest id wins; each namespace's owner is the one its newest record carries.
fn rebuild(
    conn: &mut Connection,
    shards: &[Arc<Shard>],
    rep: &mut Repairs,
) -> Result<Vec<Row>, StoreError> {
    let now = now_s();
    let mut found: Vec<(Row, Option<u32>)> = Vec::new();
    let mut remove = Vec::new();
    // Per key, the largest id a tombstone removed; per namespace, the owner its newest
    // tombstone carries (for a namespace whose every key was removed).
    let mut tombs: HashMap<(String, String), u64> = HashMap::new();
    let mut tomb_owners: HashMap<String, (u64, Option<u32>)> = HashMap::new();
    for s in shards {
        rep.temp_removed += s.clear_tmp();
        for seg in s.segments.ids() {
            for r in s.segments.scan_records(seg)? {
                let h = r.header;
                if let Some(t) = r.tomb {
                    let e = tomb_owners
                        .entry(h.namespace.clone())
                        .or_insert((h.id, h.owner));
                    if h.id >= e.0 {
                        *e = (h.id, h.owner);
                    }
                    let e = tombs.entry((h.namespace, h.key)).or_insert(t.upto);
                    *e = (*e).max(t.upto);
                    continue;
                }
                if expired(&h, now) {
                    continue;
                }
                let owner = h.owner;
                found.push((row_of(&h, s.node, Some((seg, r.off))), owner));
            }
        }
        for (id, path, _) in blob_files(s) {
            match checked_file(&path, id).filter(|(h, _)| !expired(h, now)) {
                Some((h, _)) => found.push((row_of(&h, s.node, None), h.owner)),
                None => remove.push(path),
            }
        }
    }
    let mut winner: HashMap<(String, String), (Row, Option<u32>)> = HashMap::new();
    for (r, owner) in found {
        let k = (r.namespace.clone(), r.key.clone());
        match winner.get(&k) {
            Some((w, _)) if w.id > r.id => {
                if w.loc.is_none() && r.loc.is_none() {
                    remove.push(shard_blob(shards, &r));
                }
            }
            _ => {
                if let Some((old, _)) = winner.insert(k, (r, owner))
                    && old.loc.is_none()
                {
                    remove.push(shard_blob(shards, &old));
                }
            }
        }
    }
    // A key whose newest record a tombstone covers was removed.
    winner.retain(|k, (r, _)| {
        let dead = tombs.get(k).is_some_and(|&u| r.id <= u);
        if dead && r.loc.is_none() {
            remove.push(shard_blob(shards, r));
        }
        !dead
    });
    let mut owners: HashMap<String, (u64, Option<u32>)> = HashMap::new();
    for (r, owner) in winner.values() {
        let e = owners.entry(r.namespace.clone()).or_insert((r.id, *owner));
        if r.id >= e.0 {
            *e = (r.id, *owner);
        }
    }
    for (ns, o) in tomb_owners {
        owners.entry(ns).or_insert(o);
    }
    let tx = conn
        .transaction()
        .map_err(|e| StoreError::sql("rebuilding", e))?;
    for (r, _) in winner.values() {
        index::insert_entry(&tx, r).map_err(|e| StoreError::sql("rebuilding", e))?;
        rep.files_indexed += 1;
    }
    for (ns, (_, owner)) in &owners {
        index::insert_namespace(&tx, ns, *owner, now)
            .map_err(|e| StoreError::sql("rebuilding", e))?;
    }
    tx.commit().map_err(|e| StoreError::sql("rebuilding", e))?;
    for p in remove {
        if std::fs::remove_file(&p).is_ok() {
            rep.files_removed += 1;
        }
    }
    Ok(winner.into_values().map(|(r, _)| r).collect())
}

fn shard_blob(shards: &[Arc<Shard>], r: &Row) -> std::path::PathBuf {
    shards
        .iter()
        .find(|s| s.node == r.node)
        .map(|s| s.blob_path(r.id))
        .unwrap_or_default()
}

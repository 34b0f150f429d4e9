//! Start-up: open (or rebuild) the index and make it agree with the shard files. After a clean
//! stop this is just loading the rows. After a crash: unfinished temp files are removed, rows
//! whose file is missing or short are dropped, files without a row are checked and indexed
//! again (or removed when a committed delete or overwrite had already replaced them), and a
//! missing or corrupt `index.db` is rebuilt from the blob headers.

use crate::store::blob;
use crate::store::error::StoreError;
use crate::store::index::{self, Row};
use crate::store::shard::{self, Shard};
use rusqlite::Connection;
use std::collections::HashMap;
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
    files_indexed: u64,
    files_removed: u64,
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

/// Open `dir/index.db` and reconcile it with `shards`.
pub fn recover(dir: &Path, shards: &[Arc<Shard>]) -> Result<Recovered, StoreError> {
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
    let mut rows = if rep.rebuilt {
        Vec::new()
    } else {
        index::load_entries(&conn, &db).map_err(|e| StoreError::sql("loading entries", e))?
    };
    let persisted_next = index::meta_get(&conn, "next_id")
        .map_err(|e| StoreError::sql("reading meta", e))?
        .unwrap_or(0)
        .max(0) as u64;
    if !clean {
        rows = reconcile(&mut conn, rows, shards, persisted_next, &mut rep)?;
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
        || rep.temp_removed + rep.rows_dropped + rep.files_indexed + rep.files_removed > 0
    {
        tracing::warn!(
            rebuilt = rep.rebuilt,
            temp_files_removed = rep.temp_removed,
            rows_without_file_dropped = rep.rows_dropped,
            files_indexed = rep.files_indexed,
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
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name() != shard::TMP_DIR)
        })
        .unwrap_or(false)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reconcile(
    conn: &mut Connection,
    rows: Vec<Row>,
    shards: &[Arc<Shard>],
    persisted_next: u64,
    rep: &mut Repairs,
) -> Result<Vec<Row>, StoreError> {
    let mut by_id: HashMap<u64, (Row, bool)> =
        rows.into_iter().map(|r| (r.id, (r, false))).collect();
    let mut found: Vec<Row> = Vec::new();
    let mut remove: Vec<std::path::PathBuf> = Vec::new();
    let now = now_s();
    for s in shards {
        let tmp = s.path.join(shard::TMP_DIR);
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.filter_map(|e| e.ok()) {
                if std::fs::remove_file(e.path()).is_ok() {
                    rep.temp_removed += 1;
                }
            }
        }
        let Ok(rd) = std::fs::read_dir(&s.path) else {
            continue;
        };
        for fan in rd.filter_map(|e| e.ok()) {
            if fan.file_name() == shard::TMP_DIR
                || !fan.file_type().map(|t| t.is_dir()).unwrap_or(false)
            {
                continue;
            }
            let Ok(files) = std::fs::read_dir(fan.path()) else {
                continue;
            };
            for f in files.filter_map(|e| e.ok()) {
                let path = f.path();
                let id = f.file_name().to_str().and_then(shard::parse_blob_name);
                let Some(id) = id else {
                    remove.push(path);
                    continue;
                };
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if let Some((row, seen)) = by_id.get_mut(&id)
                    && row.node == s.node
                {
                    if len == row.stored {
                        *seen = true;
                    } else {
                        remove.push(path); // torn by the crash: its row goes too
                    }
                    continue;
                }
                // A file without a row: indexed again when its put may have been
                // acknowledged (id not below the committed high-water mark) and it checks out.
                let row = if id >= persisted_next {
                    check_orphan(&path, id, s.node, now)
                } else {
                    None
                };
                match row {
                    Some(r) => found.push(r),
                    None => remove.push(path),
                }
            }
        }
    }
    let dropped: Vec<u64> = by_id
        .iter()
        .filter(|(_, (_, seen))| !seen)
        .map(|(id, _)| *id)
        .collect();
    rep.rows_dropped = dropped.len() as u64;
    for id in &dropped {
        by_id.remove(id);
    }
    // Newest id wins per (namespace, key) among the rows and the recovered files.
    let mut winner: HashMap<(String, String), Row> = HashMap::new();
    let mut losers: Vec<Row> = Vec::new();
    let mut new_ids: std::collections::HashSet<u64> = Default::default();
    for r in found.iter() {
        new_ids.insert(r.id);
    }
    for r in by_id.into_values().map(|(r, _)| r).chain(found) {
        let k = (r.namespace.clone(), r.key.clone());
        match winner.get(&k) {
            Some(w) if w.id > r.id => losers.push(r),
            _ => {
                if let Some(old) = winner.insert(k, r) {
                    losers.push(old);
                }
            }
        }
    }
    let tx = conn
        .transaction()
        .map_err(|e| StoreError::sql("repairing", e))?;
    for id in &dropped {
        index::delete_entry(&tx, *id).map_err(|e| StoreError::sql("repairing", e))?;
    }
    for l in &losers {
        if !new_ids.contains(&l.id) {
            index::delete_entry(&tx, l.id).map_err(|e| StoreError::sql("repairing", e))?;
        }
        if let Some(s) = shards.iter().find(|s| s.node == l.node) {
            remove.push(s.blob_path(l.id));
        }
    }
    for r in winner.values().filter(|r| new_ids.contains(&r.id)) {
        index::insert_entry(&tx, r).map_err(|e| StoreError::sql("repairing", e))?;
        index::insert_namespace(&tx, &r.namespace, None, now)
            .map_err(|e| StoreError::sql("repairing", e))?;
        rep.files_indexed += 1;
    }
    tx.commit().map_err(|e| StoreError::sql("repairing", e))?;
    for p in remove {
        if std::fs::remove_file(&p).is_ok() {
            rep.files_removed += 1;
        }
    }
    Ok(winner.into_values().collect())
}

fn check_orphan(path: &Path, id: u64, node: u32, now: u64) -> Option<Row> {
    let bytes = std::fs::read(path).ok()?;
    let h = blob::parse_header(&bytes).ok()?;
    if h.id != id || h.stored_len() != bytes.len() as u64 || (h.expires != 0 && h.expires <= now) {
        return None;
    }
    blob::decode_payload(&h, &bytes).ok()?;
    let stored = h.stored_len();
    Some(Row {
        id,
        namespace: h.namespace,
        key: h.key,
        node,
        size: h.logical_len,
        stored,
        checksum: h.checksum,
        created: h.created,
        last_access: h.created,
        hits: 0,
        expires: (h.expires != 0).then_some(h.expires),
    })
}

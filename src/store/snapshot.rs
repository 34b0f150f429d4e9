//! Snapshots: a read-only btrfs snapshot of every shard plus a consistent copy of the index,
//! taken while writes are paused, under `snapshots/<UTC time>/`. Without btrfs, blob files
//! are hard-linked (they are never changed in place, so links are a true copy). Rotation
//! keeps the newest N.

use crate::store::error::StoreError;
use crate::store::shard::{self, Shard};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Is `name` a snapshot name we made (`YYYYMMDDTHHMMSSZ` or with a `-N` suffix)?
pub fn valid_name(name: &str) -> bool {
    let (base, suffix) = match name.split_once('-') {
        Some((b, s)) => (b, Some(s)),
        None => (name, None),
    };
    let b = base.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && suffix
            .is_none_or(|s| !s.is_empty() && s.len() <= 6 && s.bytes().all(|c| c.is_ascii_digit()))
}

fn order_key(name: &str) -> (String, u32) {
    match name.split_once('-') {
        Some((b, s)) => (b.to_string(), s.parse().unwrap_or(0)),
        None => (name.to_string(), 0),
    }
}

/// Snapshot names, oldest first.
pub fn list(root: &Path) -> Result<Vec<String>, StoreError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("listing {}", root.display()), e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| valid_name(n))
        .collect();
    names.sort_by_key(|n| order_key(n));
    Ok(names)
}

fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if name == shard::TMP_DIR {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            std::fs::hard_link(&src, &dst)?;
        }
    }
    Ok(())
}

/// Take a snapshot named after `now` (unix s). The caller has paused writes; `conn` is the
/// index connection (checkpointed and copied with VACUUM INTO).
pub fn create(
    root: &Path,
    shards: &[Arc<Shard>],
    conn: &Connection,
    btrfs: bool,
    now: u64,
) -> Result<String, StoreError> {
    std::fs::create_dir_all(root)
        .map_err(|e| StoreError::io(format!("creating {}", root.display()), e))?;
    let base = crate::store::index::compact_timestamp(now);
    // Within one second, later snapshots get -2, -3, ...: always above any name of that
    // second still present, so the order of names stays the order of snapshots.
    let taken: Vec<u32> = list(root)?
        .iter()
        .map(|n| order_key(n))
        .filter(|(b, _)| *b == base)
        .map(|(_, s)| s.max(1))
        .collect();
    let name = match taken.iter().max() {
        None => base.clone(),
        Some(n) => format!("{base}-{}", n + 1),
    };
    let partial = root.join(format!(".{name}.partial"));
    let res = (|| {
        std::fs::create_dir(&partial)
            .map_err(|e| StoreError::io(format!("creating {}", partial.display()), e))?;
        for s in shards {
            let dest = partial.join(format!("node{}", s.node));
            if btrfs && shard::is_subvolume(&s.path) {
                shard::snapshot_subvolume(&s.path, &dest)?;
            } else {
                link_tree(&s.path, &dest).map_err(|e| {
                    StoreError::io(
                        format!("linking {} into {}", s.path.display(), dest.display()),
                        e,
                    )
                })?;
            }
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| StoreError::sql("checkpoint before a snapshot", e))?;
        let db = partial.join("index.db");
        conn.execute("VACUUM INTO ?1", [db.to_string_lossy()])
            .map_err(|e| StoreError::sql(format!("copying the index to {}", db.display()), e))?;
        std::fs::rename(&partial, root.join(&name))
            .map_err(|e| StoreError::io(format!("renaming {}", partial.display()), e))
    })();
    if let Err(e) = res {
        let _ = remove_tree(&partial);
        return Err(e);
    }
    Ok(name)
}

/// Remove a snapshot folder: destroy its subvolumes, delete the rest.
fn remove_tree(dir: &Path) -> Result<(), StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p: PathBuf = e.path();
        if shard::is_subvolume(&p) {
            shard::destroy_subvolume(&p)?;
        } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&p)
                .map_err(|e| StoreError::io(format!("removing {}", p.display()), e))?;
        } else {
            std::fs::remove_file(&p)
                .map_err(|e| StoreError::io(format!("removing {}", p.display()), e))?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| StoreError::io(format!("removing {}", dir.display()), e))
}

/// Delete snapshot `name`.
pub fn delete(root: &Path, name: &str) -> Result<(), StoreError> {
    if !valid_name(name) {
        return Err(StoreError::InvalidArgument(format!(
            "{name:?} is not a snapshot name (YYYYMMDDTHHMMSSZ, optionally -N); list them with ListSnapshots"
        )));
    }
    let dir = root.join(name);
    if !dir.exists() {
        return Err(StoreError::InvalidArgument(format!(
            "there is no snapshot {name:?}"
        )));
    }
    remove_tree(&dir)
}

/// Delete the oldest snapshots until `keep` remain; returns the names deleted.
pub fn rotate(root: &Path, keep: usize) -> Result<Vec<String>, StoreError> {
    let names = list(root)?;
    let excess = names.len().saturating_sub(keep);
    let mut gone = Vec::new();
    for name in names.into_iter().take(excess) {
        delete(root, &name)?;
        gone.push(name);
    }
    Ok(gone)
}

/// Remove half-made snapshots left by a crash.
pub fn remove_partials(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.ends_with(".partial") {
            match remove_tree(&e.path()) {
                Ok(()) => tracing::info!("removed the unfinished snapshot {n}"),
                Err(err) => tracing::warn!("could not remove the unfinished snapshot {n}: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("20261125T041500Z"));
        assert!(valid_name("20261125T041500Z-2"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("20261125T041500Z-"));
        assert!(!valid_name("20261125X041500Z"));
        let mut v = vec![
            "20261125T041500Z-10",
            "20261125T041500Z-2",
            "20261125T041500Z",
        ];
        v.sort_by_key(|n| order_key(n));
        assert_eq!(
            v,
            [
                "20261125T041500Z",
                "20261125T041500Z-2",
                "20261125T041500Z-10"
            ]
        );
    }
}

//! Sync puts go to prepared segments (NOCOW, zero-filled, synced before use; segment.rs):
//! their records must be found by recovery's scan past the zero tail when their rows are
//! lost, and by a rebuild from the records alone.
//!
//! The child makes a full flush and keeps a copy of the index as it is then (the state a
//! power loss leaves when the rows written since did not reach the disk, as in
//! store_defects' row-loss test), then sync puts from 8 threads until they run in a prepared
//! segment, then aborts. The parent puts the old index back and reopens.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions};
use std::time::Duration;
use store_util::{Mount, check_value, config, topo1, value_for};

const ME: Caller = Caller {
    uid: None,
    cpu: None,
};

const CHILD_ENV: &str = "NUMA_CACHE_PREPARED_CHILD";
const THREADS: usize = 8;
const PER_THREAD: usize = 120;

/// The child (the test re-run, see store_util::child_spec): the steps of the module's
/// comment, then an abort once every sync put was answered.
fn prepared_child(dir: &str) -> ! {
    let dir = std::path::PathBuf::from(dir);
    let mut cfg = config(&dir);
    cfg.sync_interval = Duration::from_secs(3600);
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg, topo1()).unwrap();
    let o = PutOptions::default();
    cache
        .put("p", "seed", &value_for("seed", 1, 3000), &o, &ME)
        .unwrap();
    cache.flush().unwrap();
    for f in ["index.db", "index.db-wal"] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), dir.join(format!("{f}.at-flush"))).unwrap();
        }
    }
    let sync = PutOptions {
        sync: true,
        ..PutOptions::default()
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, sync) = (&cache, &sync);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let k = format!("t{t}-{i}");
                    cache
                        .put("p", &k, &value_for(&k, 1, 3000), sync, &ME)
                        .unwrap();
                }
            });
        }
    });
    std::fs::write(dir.join("acked"), "all").unwrap();
    std::process::abort();
}

/// Segment files with the NOCOW attribute (`lsattr` shows `C`), and their lengths.
fn nocow_segments(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    store_util::segment_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter(|p| {
            let out = std::process::Command::new("lsattr")
                .arg(p)
                .output()
                .expect("lsattr (e2fsprogs)");
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace()
                .next()
                .is_some_and(|flags| flags.contains('C'))
        })
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect()
}

#[test]
fn sync_puts_in_a_prepared_segment_survive_losing_their_rows_and_a_rebuild() {
    if let Some(dir) = store_util::child_spec(CHILD_ENV) {
        prepared_child(&dir);
    }
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    store_util::expect_abort(&mut store_util::child_command(CHILD_ENV, &dir));
    assert!(
        dir.join("acked").exists(),
        "the child did not finish its puts"
    );
    let prepared = nocow_segments(&dir);
    assert!(
        prepared.iter().any(|(_, len)| *len == 16 << 20),
        "no prepared (NOCOW, 16 MiB) segment was used: {prepared:?}, all: {:?}",
        store_util::segment_files(&dir)
    );
    std::fs::rename(dir.join("index.db.at-flush"), dir.join("index.db")).unwrap();
    let _ = std::fs::remove_file(dir.join("index.db-wal"));
    if dir.join("index.db-wal.at-flush").exists() {
        std::fs::rename(dir.join("index.db-wal.at-flush"), dir.join("index.db-wal")).unwrap();
    }
    let check_all = |cache: &Cache, when: &str| {
        for t in 0..THREADS {
            for i in 0..PER_THREAD {
                let k = format!("t{t}-{i}");
                let v = cache
                    .get("p", &k, &ME)
                    .unwrap_or_else(|e| panic!("{when}: sync-acknowledged {k} is lost: {e}"));
                assert_eq!(check_value(&k, &v), 1, "{when}: {k}");
            }
        }
        assert_eq!(
            check_value("seed", &cache.get("p", "seed", &ME).unwrap()),
            1
        );
        assert_eq!(cache.totals().entries, (THREADS * PER_THREAD + 1) as u64);
    };
    let cfg = config(&dir);
    let cache = Cache::open(cfg.clone(), topo1()).unwrap();
    check_all(&cache, "after losing the rows");
    cache.close().unwrap();
    std::fs::remove_file(dir.join("index.db")).unwrap();
    let cache = Cache::open(cfg, topo1()).unwrap();
    check_all(&cache, "after a rebuild");
}

//! The storage defects of issue 9, each shown on a real btrfs: a huge TTL, racing first
//! writers of a namespace, owners after an index rebuild, a planted symlink in the state
//! directory, a full small filesystem under concurrent 8 MiB puts, rows whose record is gone,
//! and the background TTL sweep.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use store_util::{Mount, check_value, config, topo1, value_for};

const ME: Caller = Caller {
    uid: None,
    cpu: None,
};

fn user(uid: u32) -> Caller {
    Caller {
        uid: Some(uid),
        cpu: None,
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn huge_ttls_saturate_never_wrap() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    let cases = [
        ("max", Duration::from_secs(u64::MAX), i64::MAX as u64),
        (
            "i64max",
            Duration::from_secs(i64::MAX as u64),
            i64::MAX as u64,
        ),
        ("1e11", Duration::from_secs(100_000_000_000), 0),
        (
            "nanos",
            Duration::new(u64::MAX, 999_999_999),
            i64::MAX as u64,
        ),
    ];
    for (k, ttl, want) in cases {
        let before = now_s();
        let o = PutOptions {
            ttl: Some(ttl),
            ..Default::default()
        };
        cache.put("ttl", k, b"long lived", &o, &ME).unwrap();
        assert_eq!(cache.get("ttl", k, &ME).unwrap(), b"long lived", "{k}");
        let exp = cache.lookup("ttl", k).unwrap().expires.unwrap();
        if want == 0 {
            // 1e11 s from now: the date must be exactly that, not a wrapped one.
            assert!(
                exp >= before + 100_000_000_000 && exp <= now_s() + 100_000_000_001,
                "{k}: expires {exp}"
            );
        } else {
            assert_eq!(
                exp, want,
                "{k}: saturated at the largest expiry the index holds"
            );
        }
    }
    // Still there after the sweep has run and after a restart.
    std::thread::sleep(Duration::from_millis(700));
    drop(cache);
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    for (k, _, _) in cases {
        assert_eq!(cache.get("ttl", k, &ME).unwrap(), b"long lived", "{k}");
    }
}

#[test]
fn racing_first_writers_leave_exactly_one_owner() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Arc::new(Cache::open(config(&m.dir()), topo1()).unwrap());
    for trial in 0..40 {
        let ns = format!("race{trial}");
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<(u32, Result<u32, StoreError>)> = [1000u32, 1001]
            .into_iter()
            .map(|uid| {
                let (cache, barrier, ns) = (cache.clone(), barrier.clone(), ns.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = cache.put(
                        &ns,
                        &format!("from{uid}"),
                        b"mine",
                        &PutOptions::default(),
                        &user(uid),
                    );
                    (uid, r)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let winners: Vec<u32> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(u, _)| *u)
            .collect();
        assert_eq!(winners.len(), 1, "trial {trial}: {results:?}");
        let loser = if winners[0] == 1000 { 1001 } else { 1000 };
        assert!(
            results
                .iter()
                .any(|(u, r)| *u == loser && matches!(r, Err(StoreError::PermissionDenied(_)))),
            "trial {trial}: {results:?}"
        );
        // The loser's value was not stored; the winner keeps the namespace.
        assert!(matches!(
            cache.get(&ns, &format!("from{loser}"), &ME),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            cache.put(&ns, "again", b"x", &PutOptions::default(), &user(loser)),
            Err(StoreError::PermissionDenied(_))
        ));
    }
}

#[test]
fn owners_survive_an_index_rebuild() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    {
        let cache = Cache::open(config(&dir), topo1()).unwrap();
        let o = PutOptions::default();
        cache
            .put("alice", "a", b"alice's", &o, &user(1000))
            .unwrap();
        cache.put("rootns", "r", b"root's", &o, &user(0)).unwrap();
        // Root may write into alice's namespace; it stays alice's.
        cache.put("alice", "b", b"by root", &o, &user(0)).unwrap();
        cache.close().unwrap();
    }
    std::fs::remove_file(dir.join("index.db")).unwrap();
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    assert_eq!(cache.get("alice", "a", &ME).unwrap(), b"alice's");
    let o = PutOptions::default();
    for (ns, uid) in [("alice", 1001), ("rootns", 1000), ("rootns", 1001)] {
        assert!(
            matches!(
                cache.put(ns, "x", b"takeover", &o, &user(uid)),
                Err(StoreError::PermissionDenied(_))
            ),
            "uid {uid} wrote into {ns} after the rebuild"
        );
    }
    cache
        .put("alice", "c", b"still hers", &o, &user(1000))
        .unwrap();
}

#[test]
fn a_planted_symlink_in_the_state_directory_is_refused_not_followed() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    {
        let cache = Cache::open(config(&dir), topo1()).unwrap();
        cache
            .put("s", "k", b"v", &PutOptions::default(), &ME)
            .unwrap();
    }
    let victim = m.path.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"do not delete").unwrap();
    let tmp = dir.join("shards/node0/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    // An unclean stop so that start-up would clean tmp/.
    let db = rusqlite::Connection::open(dir.join("index.db")).unwrap();
    db.execute("UPDATE meta SET value = 0 WHERE name = 'clean'", [])
        .unwrap();
    drop(db);
    let err = match Cache::open(config(&dir), topo1()) {
        Ok(_) => panic!("opened a state directory with a planted symlink"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tampered") && err.contains("symlink") && err.contains("node0/tmp"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(victim.join("precious")).unwrap(),
        b"do not delete"
    );
    // A planted index.db link too.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    std::fs::rename(dir.join("index.db"), victim.join("index.db")).unwrap();
    std::os::unix::fs::symlink(victim.join("index.db"), dir.join("index.db")).unwrap();
    let err = Cache::open(config(&dir), topo1())
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("index.db")),
        "{err:?}"
    );
}

#[test]
fn a_full_small_btrfs_under_concurrent_8mib_puts_gives_no_space_and_recovers() {
    let Some(m) = Mount::btrfs(300, false) else {
        return;
    };
    let mut cfg = config(&m.dir());
    cfg.max_bytes = 1 << 40; // the filesystem, not the cap, runs out
    cfg.memory_bytes = 0;
    let cache = Arc::new(Cache::open(cfg, topo1()).unwrap());
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let (mut ok, mut no_space) = (0, 0);
                for i in 0..12 {
                    let k = format!("t{t}v{i}");
                    // Incompressible: 8 MiB on disk each; 6 x 12 x 8 MiB is 576 MiB.
                    match cache.put(
                        "full",
                        &k,
                        &value_for(&k, 1, 8 << 20),
                        &PutOptions::default(),
                        &ME,
                    ) {
                        Ok(_) => ok += 1,
                        Err(StoreError::NoSpace(msg)) => {
                            assert!(msg.contains("space") || msg.contains("grow"), "{msg}");
                            no_space += 1
                        }
                        Err(e) => panic!("{k}: {e}"),
                    }
                }
                (ok, no_space)
            })
        })
        .collect();
    let (mut ok, mut no_space) = (0, 0);
    for h in handles {
        let (o, n) = h.join().unwrap();
        ok += o;
        no_space += n;
    }
    assert!(
        no_space > 0,
        "a 300 MiB filesystem took 576 MiB ({ok} puts)"
    );
    assert!(ok > 10, "only {ok} puts succeeded");
    // Still serving: every entry reads back whole (or was evicted for room).
    for t in 0..6 {
        for i in 0..12 {
            let k = format!("t{t}v{i}");
            match cache.get("full", &k, &ME) {
                Ok(v) => assert_eq!(check_value(&k, &v), 1),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => panic!("{k}: {e}"),
            }
        }
    }
    // Eviction made room: puts succeed again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 3 && Instant::now() < deadline {
        let k = format!("after{after}");
        if cache
            .put(
                "full",
                &k,
                &value_for(&k, 1, 8 << 20),
                &PutOptions::default(),
                &ME,
            )
            .is_ok()
        {
            assert_eq!(check_value(&k, &cache.get("full", &k, &ME).unwrap()), 1);
            after += 1;
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(after, 3, "the cache did not make room again");
    assert!(cache.totals().evictions > 0);
    cache.flush().unwrap();
}

#[test]
fn rows_whose_record_is_gone_are_dropped_at_start() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    {
        let cache = Cache::open(config(&dir), topo1()).unwrap();
        for i in 0..20 {
            let k = format!("k{i}");
            // Small ones go to a segment, the 2 MiB ones to files of their own.
            let len = if i < 3 { 2 << 20 } else { 1000 };
            cache
                .put("g", &k, &value_for(&k, 1, len), &PutOptions::default(), &ME)
                .unwrap();
        }
        cache.close().unwrap();
    }
    // As after a crash: no clean stop recorded, nothing verified by a flush.
    let db = rusqlite::Connection::open(dir.join("index.db")).unwrap();
    db.execute_batch("UPDATE meta SET value = 0 WHERE name IN ('clean', 'verified_below')")
        .unwrap();
    drop(db);
    // Remove the large files and cut the segment short behind the first few records.
    let files = store_util::blob_files(&dir);
    assert_eq!(files.len(), 3);
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    let recs: Vec<_> = store_util::records(&dir)
        .into_iter()
        .filter(|(f, ..)| f.to_string_lossy().ends_with(".seg"))
        .collect();
    assert_eq!(recs.len(), 17);
    let (seg, cut, _, _, _) = recs[5].clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut + 10)
        .unwrap();
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    // Records 0-4 of the segment remain: keys k3..k7.
    assert_eq!(cache.totals().entries, 5);
    for i in 0..20 {
        let k = format!("k{i}");
        let r = cache.get("g", &k, &ME);
        if (3..8).contains(&i) {
            assert_eq!(check_value(&k, &r.unwrap()), 1);
        } else {
            assert!(matches!(r, Err(StoreError::NotFound { .. })), "{k}: {r:?}");
        }
    }
}

#[test]
fn the_background_sweep_removes_expired_entries_without_a_read() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    let o = PutOptions {
        ttl: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    for i in 0..10 {
        cache
            .put("sweep", &format!("k{i}"), b"short", &o, &ME)
            .unwrap();
    }
    cache
        .put("sweep", "keep", b"stays", &PutOptions::default(), &ME)
        .unwrap();
    assert_eq!(cache.totals().entries, 11);
    // No get touches the expired keys: only the sweep can remove them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.totals().entries > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = cache.totals();
    assert_eq!(
        (t.entries, t.evictions, t.hits, t.misses),
        (1, 10, 0, 0),
        "{t:?}"
    );
    assert_eq!(cache.get("sweep", "keep", &ME).unwrap(), b"stays");
}

#[test]
fn a_version_1_index_and_its_blob_files_open_and_migrate() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    {
        // Values above 1 MiB are files of their own, the only layout version 1 had.
        let cache = Cache::open(config(&dir), topo1()).unwrap();
        for i in 0..3 {
            let k = format!("old{i}");
            cache
                .put(
                    "v1",
                    &k,
                    &value_for(&k, 1, 3 << 20),
                    &PutOptions::default(),
                    &ME,
                )
                .unwrap();
        }
        cache.close().unwrap();
    }
    // Turn the index back into version 1: no location columns.
    let db = rusqlite::Connection::open(dir.join("index.db")).unwrap();
    db.execute_batch(
        "ALTER TABLE entries DROP COLUMN segment; ALTER TABLE entries DROP COLUMN seg_offset;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(db);
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    for i in 0..3 {
        let k = format!("old{i}");
        assert_eq!(check_value(&k, &cache.get("v1", &k, &ME).unwrap()), 1);
    }
    // New values go to segments beside the old files; replacing an old one drops its file.
    cache
        .put(
            "v1",
            "new",
            &value_for("new", 2, 4000),
            &PutOptions::default(),
            &ME,
        )
        .unwrap();
    cache
        .put(
            "v1",
            "old0",
            &value_for("old0", 2, 4000),
            &PutOptions::default(),
            &ME,
        )
        .unwrap();
    assert_eq!(store_util::blob_files(&dir).len(), 2);
    assert_eq!(
        check_value("old0", &cache.get("v1", "old0", &ME).unwrap()),
        2
    );
    let db = rusqlite::Connection::open_with_flags(
        dir.join("index.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    );
    // The index is held exclusively while open: reading it from outside is refused.
    if let Ok(db) = db {
        assert!(
            db.query_row("SELECT count(*) FROM entries", [], |r| r.get::<_, i64>(0))
                .is_err()
        );
    }
}

fn miss(cache: &Cache, ns: &str, key: &str) -> bool {
    matches!(cache.get(ns, key, &ME), Err(StoreError::NotFound { .. }))
}

/// Tombstone records on disk (the flag bit of segment.rs), found by parsing the segments.
fn tombstones_on_disk(dir: &std::path::Path) -> usize {
    use numa_cache::store::{blob, segment};
    store_util::records(dir)
        .into_iter()
        .filter(|(f, off, ..)| {
            let b = std::fs::read(f).unwrap_or_default();
            blob::parse_header(&b[*off as usize..])
                .is_ok_and(|h| h.flags & segment::FLAG_TOMBSTONE != 0)
        })
        .count()
}

/// Deletes stay deleted when index.db is rebuilt from the records alone: a delete, a clear
/// and a TTL expiry each leave a tombstone; a re-put after a delete is there; an older version
/// (without a TTL) of an expired key does not come back.
#[test]
fn deletes_clears_and_expiries_stay_gone_after_an_index_rebuild() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    let o = PutOptions::default();
    {
        let cache = Cache::open(config(&dir), topo1()).unwrap();
        for i in 0..6 {
            let k = format!("k{i}");
            cache
                .put("del", &k, &value_for(&k, 1, 900), &o, &ME)
                .unwrap();
            cache
                .put("del", &k, &value_for(&k, 2, 900), &o, &ME)
                .unwrap();
            cache
                .put("clr", &k, &value_for(&k, 1, 900), &o, &ME)
                .unwrap();
        }
        assert!(cache.delete("del", "k0", &ME).unwrap());
        assert!(cache.delete("del", "k1", &ME).unwrap());
        cache
            .put("del", "k1", &value_for("k1", 3, 900), &o, &ME)
            .unwrap();
        assert_eq!(cache.clear("clr", &ME).unwrap(), 6);
        // k5: a version without a TTL, then one with a short TTL that the sweep removes.
        let short = PutOptions {
            ttl: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        cache
            .put("del", "k5", &value_for("k5", 3, 900), &short, &ME)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.lookup("del", "k5").is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(miss(&cache, "del", "k5"), "the sweep did not remove k5");
        cache.close().unwrap();
    }
    assert!(tombstones_on_disk(&dir) >= 9, "no tombstones written");
    std::fs::remove_file(dir.join("index.db")).unwrap();
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    assert!(miss(&cache, "del", "k0"), "a deleted key came back");
    assert_eq!(check_value("k1", &cache.get("del", "k1", &ME).unwrap()), 3);
    for i in 2..5 {
        let k = format!("k{i}");
        assert_eq!(check_value(&k, &cache.get("del", &k, &ME).unwrap()), 2);
    }
    assert!(
        miss(&cache, "del", "k5"),
        "an expired key's older version came back"
    );
    for i in 0..6 {
        assert!(
            miss(&cache, "clr", &format!("k{i}")),
            "a cleared key came back"
        );
    }
    assert_eq!(cache.totals().entries, 4);
}

const LOSS_CHILD_ENV: &str = "NUMA_CACHE_ROWLOSS_CHILD";

/// The child of `sync_puts_and_deletes_survive_losing_the_rows_after_the_last_flush` (the
/// test re-run, see store_util::child_spec): default puts, a full flush, a copy of the index
/// as it is then (the state a power loss leaves when the rows written since did not reach
/// the disk), then sync puts and deletes, then abort.
fn rowloss_child(dir: &str) -> ! {
    let dir = std::path::PathBuf::from(dir);
    let mut cfg = config(&dir);
    cfg.sync_interval = Duration::from_secs(3600);
    let cache = Cache::open(cfg, topo1()).unwrap();
    let o = PutOptions::default();
    for i in 0..8 {
        let k = format!("k{i}");
        cache
            .put("loss", &k, &value_for(&k, 1, 2000), &o, &ME)
            .unwrap();
    }
    let big = value_for("big", 1, 3 << 20);
    cache.put("loss", "big", &big, &o, &ME).unwrap();
    cache.flush().unwrap();
    for f in ["index.db", "index.db-wal"] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), dir.join(format!("{f}.at-flush"))).unwrap();
        }
    }
    let sync = PutOptions {
        sync: true,
        ..Default::default()
    };
    for i in 0..4 {
        let k = format!("k{i}");
        cache
            .put("loss", &k, &value_for(&k, 2, 2000), &sync, &ME)
            .unwrap();
    }
    cache
        .put("loss", "new", &value_for("new", 1, 2000), &sync, &ME)
        .unwrap();
    cache
        .put("loss", "big", &value_for("big", 2, 3 << 20), &sync, &ME)
        .unwrap();
    assert!(cache.delete("loss", "k6", &ME).unwrap());
    assert!(cache.delete("loss", "k7", &ME).unwrap());
    // A sync put after them: the deletes' tombstones are flushed with it.
    cache
        .put("loss", "last", &value_for("last", 1, 100), &sync, &ME)
        .unwrap();
    std::process::abort();
}

/// A sync put is answered once its record is durable; its row follows with the next full
/// flush. Here every row written after the last flush is lost (the index is put back as it
/// was then, as a power loss can leave it): recovery's scan must find the sync-acknowledged
/// records (segment and large-value file) and the deletes' tombstones.
#[test]
fn sync_puts_and_deletes_survive_losing_the_rows_after_the_last_flush() {
    if let Some(dir) = store_util::child_spec(LOSS_CHILD_ENV) {
        rowloss_child(&dir);
    }
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    store_util::expect_abort(&mut store_util::child_command(LOSS_CHILD_ENV, &dir));
    assert!(
        dir.join("index.db.at-flush").exists(),
        "the child did not get to its flush"
    );
    std::fs::rename(dir.join("index.db.at-flush"), dir.join("index.db")).unwrap();
    let _ = std::fs::remove_file(dir.join("index.db-wal"));
    if dir.join("index.db-wal.at-flush").exists() {
        std::fs::rename(dir.join("index.db-wal.at-flush"), dir.join("index.db-wal")).unwrap();
    }
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    for i in 0..4 {
        let k = format!("k{i}");
        assert_eq!(
            check_value(&k, &cache.get("loss", &k, &ME).unwrap()),
            2,
            "{k}: the sync-acknowledged version is lost"
        );
    }
    assert_eq!(
        check_value("new", &cache.get("loss", "new", &ME).unwrap()),
        1
    );
    assert_eq!(
        check_value("last", &cache.get("loss", "last", &ME).unwrap()),
        1
    );
    assert_eq!(
        check_value("big", &cache.get("loss", "big", &ME).unwrap()),
        2
    );
    for k in ["k4", "k5"] {
        assert_eq!(check_value(k, &cache.get("loss", k, &ME).unwrap()), 1);
    }
    for k in ["k6", "k7"] {
        assert!(miss(&cache, "loss", k), "{k}: a delete was undone");
    }
    // One large-value file: the old version's went with its replacement.
    let files = store_util::blob_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
}

/// Compaction keeps a tombstone while a segment that may hold its key's records exists, and
/// drops it once they are gone. Segments of 128 KiB: segment 1 keeps a large live value and
/// the records of four deleted keys; the segment holding their tombstones empties and is
/// compacted (the tombstones move on); a rebuild then still misses the four keys. Once
/// segment 1 goes too, the tombstones are dropped.
#[test]
fn compaction_keeps_needed_tombstones_and_drops_the_rest() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    let mut cfg = config(&dir);
    cfg.max_bytes = 1 << 20; // segments of 128 KiB
    cfg.memory_bytes = 0;
    let o = PutOptions::default();
    let segs = || store_util::segment_files(&dir);
    {
        let cache = Cache::open(cfg.clone(), topo1()).unwrap();
        cache
            .put("t", "anchor", &value_for("anchor", 1, 80 << 10), &o, &ME)
            .unwrap();
        for i in 0..4 {
            let k = format!("d{i}");
            cache
                .put("t", &k, &value_for(&k, 1, 9 << 10), &o, &ME)
                .unwrap();
        }
        // Fillers start the next segment; the deletes' tombstones land beside them.
        for i in 0..6 {
            let k = format!("f{i}");
            cache
                .put("t", &k, &value_for(&k, 1, 9 << 10), &o, &ME)
                .unwrap();
        }
        let first = segs();
        assert!(first.len() >= 2, "{first:?}");
        for i in 0..4 {
            assert!(cache.delete("t", &format!("d{i}"), &ME).unwrap());
        }
        assert_eq!(tombstones_on_disk(&dir), 4);
        // Empty the tombstones' segment: its fillers move to later segments.
        for v in [3, 5, 7] {
            for i in 0..6 {
                let k = format!("f{i}");
                cache
                    .put("t", &k, &value_for(&k, v, 9 << 10), &o, &ME)
                    .unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while segs().iter().any(|s| first[1..].contains(s)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let now = segs();
        assert!(
            !now.iter().any(|s| first[1..].contains(s)),
            "not reclaimed: {now:?}"
        );
        assert!(
            now.contains(&first[0]),
            "segment 1 (live anchor) went: {now:?}"
        );
        assert_eq!(
            tombstones_on_disk(&dir),
            4,
            "needed tombstones were dropped"
        );
        cache.close().unwrap();
    }
    std::fs::remove_file(dir.join("index.db")).unwrap();
    let cache = Cache::open(cfg.clone(), topo1()).unwrap();
    for i in 0..4 {
        assert!(
            miss(&cache, "t", &format!("d{i}")),
            "d{i} came back after compaction"
        );
    }
    assert_eq!(
        check_value("anchor", &cache.get("t", "anchor", &ME).unwrap()),
        1
    );
    // Segment 1 goes (its anchor moves on); the tombstones are no longer needed, and go
    // with the next compaction of their segment.
    cache
        .put("t", "anchor", &value_for("anchor", 3, 80 << 10), &o, &ME)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut v = 9;
    while tombstones_on_disk(&dir) > 0 && Instant::now() < deadline {
        for i in 0..6 {
            let k = format!("f{i}");
            cache
                .put("t", &k, &value_for(&k, v, 9 << 10), &o, &ME)
                .unwrap();
        }
        v += 2;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(tombstones_on_disk(&dir), 0, "unneeded tombstones are kept");
    for i in 0..4 {
        assert!(miss(&cache, "t", &format!("d{i}")));
    }
}

const TORN_CHILD_ENV: &str = "NUMA_CACHE_TORN_CHILD";

/// The child of `a_torn_record_whose_row_reached_the_disk_falls_back_to_the_durable_version`
/// (the test re-run, see store_util::child_spec): a sync put of `k` v1 and a full flush, then
/// default puts of `k` v2 and `solo` v1, their rows committed without a full flush (records
/// only in the kernel), then abort.
fn torn_child(dir: &str) -> ! {
    let dir = std::path::PathBuf::from(dir);
    let mut cfg = config(&dir);
    cfg.sync_interval = Duration::from_secs(3600);
    let cache = Cache::open(cfg, topo1()).unwrap();
    let sync = PutOptions {
        sync: true,
        ..Default::default()
    };
    cache
        .put("torn", "k", &value_for("k", 1, 3000), &sync, &ME)
        .unwrap();
    cache.flush().unwrap();
    let o = PutOptions::default();
    cache
        .put("torn", "k", &value_for("k", 2, 3000), &o, &ME)
        .unwrap();
    cache
        .put("torn", "solo", &value_for("solo", 1, 3000), &o, &ME)
        .unwrap();
    // The rows of those two wait up to commit::DEFER_FOR for their commit, or go with the
    // first commit of anything else: a put that claims a new namespace commits (FULL, not a
    // full flush) before it is answered, so once it is, both rows are in the index's WAL.
    cache.put("torn-commit", "x", b"x", &o, &ME).unwrap();
    std::process::abort();
}

/// The index's rows of namespace `torn` (key -> id, segment, offset) and its
/// `verified_below` mark, read from the files a dead child left.
fn torn_rows(dir: &std::path::Path) -> (std::collections::HashMap<String, (u64, u32, u64)>, u64) {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("index.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = db
        .prepare("SELECT key, id, segment, seg_offset FROM entries WHERE namespace = 'torn'")
        .unwrap();
    let rows = q
        .query_map([], |r| {
            let n = |i| r.get::<_, i64>(i).map(|v| v as u64);
            Ok((r.get(0)?, (n(1)?, n(2)? as u32, n(3)?)))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mark: i64 = db
        .query_row(
            "SELECT value FROM meta WHERE name = 'verified_below'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (rows, mark as u64)
}

/// The segment number of a segment file (`0000000a.seg`).
fn segment_of(f: &std::path::Path) -> u32 {
    let stem = f.file_stem().and_then(|s| s.to_str()).unwrap();
    u32::from_str_radix(stem, 16).unwrap()
}

/// The writeback race: after a power loss a row reached the disk but its record did not
/// (here: the record is torn by hand). That put was a default put younger than the
/// interval, never durable; the key must read as its last durable version (sync-acknowledged
/// here), not miss, and never the torn bytes; a key with no older version misses.
///
/// The precondition is checked on disk first: both rows are in the index, above the last
/// full flush's mark, and point at the records torn here. Without it (rows still waiting at
/// the abort) recovery never meets a torn record of a row, and its fall-back goes untested.
#[test]
fn a_torn_record_whose_row_reached_the_disk_falls_back_to_the_durable_version() {
    if let Some(dir) = store_util::child_spec(TORN_CHILD_ENV) {
        torn_child(&dir);
    }
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    store_util::expect_abort(&mut store_util::child_command(TORN_CHILD_ENV, &dir));
    let intact = |key: &str| {
        let mut recs: Vec<_> = store_util::records(&dir)
            .into_iter()
            .filter(|(_, _, _, ns, k)| ns == "torn" && k == key)
            .collect();
        recs.sort_by_key(|r| (segment_of(&r.0), r.1));
        recs
    };
    assert_eq!(intact("k").len(), 2, "{:?}", intact("k"));
    let (rows, mark) = torn_rows(&dir);
    for key in ["k", "solo"] {
        let (f, off, len, ..) = intact(key).pop().unwrap();
        let (id, seg, at) = *rows
            .get(key)
            .unwrap_or_else(|| panic!("{key}: its row did not reach the index: {rows:?}"));
        assert_eq!(
            (seg, at),
            (segment_of(&f), off),
            "{key}: the row does not name the newest record"
        );
        assert!(
            id >= mark,
            "{key}: row {id} is below the full flush's mark {mark}: its record counts as durable"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .write_all_at(&[0u8; 64], off + len / 2)
            .unwrap();
    }
    assert_eq!(intact("k").len(), 1, "k v2's record is not torn");
    assert!(intact("solo").is_empty(), "solo's record is not torn");
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    assert_eq!(
        check_value("k", &cache.get("torn", "k", &ME).unwrap()),
        1,
        "k: not its durable version"
    );
    assert!(miss(&cache, "torn", "solo"));
    assert_eq!(cache.totals().entries, 2, "k and torn-commit/x");
}

//! The storage defects of issue 9, each shown on a real btrfs: a huge TTL, racing first
//! writers of a namespace, owners after an index rebuild, a planted symlink in the state
//! directory, a full small filesystem under concurrent 8 MiB puts, rows whose record is gone,
//! and the background TTL sweep.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
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

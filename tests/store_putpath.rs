//! The put path without a blocking hop (`Cache::put_nowait`) and the committer's batch
//! writes: on one node the committer appends the records of a batch in one write, each at the
//! offset a record of its own would have had. Checked by reading every value back from the
//! disk (no memory tier), before and after a reopen that rebuilds nothing but reads the
//! index, and after a reopen with the index deleted (a rebuild from the records alone).

mod store_util;

use numa_cache::store::{Cache, Caller, NOWAIT_MAX_BYTES, PutOptions, PutStart, StoreError};
use std::sync::mpsc;
use store_util::{Mount, check_value, config, topo1, value_for};

const ME: Caller = Caller {
    uid: None,
    cpu: None,
};

/// Sizes that leave every kind of padding between records (ALIGN is 8) and cross pages.
fn size_of(i: usize) -> usize {
    [1, 7, 9, 100, 4095, 4096, 4097, 8191, 12_345, 40_000][i % 10] + i % 13
}

const THREADS: usize = 8;
const PER_THREAD: usize = 120;

fn key(t: usize, i: usize) -> String {
    format!("t{t}-k{i}")
}

fn read_all_back(cache: &Cache, what: &str) {
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let k = key(t, i);
            let v = cache
                .get("batch", &k, &ME)
                .unwrap_or_else(|e| panic!("{what}: {k}: {e}"));
            assert_eq!(check_value(&k, &v), 1, "{what}: {k}");
            assert_eq!(v, value_for(&k, 1, size_of(i)), "{what}: {k}");
        }
    }
}

#[test]
fn records_written_together_are_each_read_back_before_and_after_reopen_and_rebuild() {
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let mut cfg = config(&m.dir());
    // No memory tier: every get below reads the record from its segment.
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg.clone(), topo1()).unwrap();
    let o = PutOptions::default();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let cache = &cache;
            let o = &o;
            s.spawn(move || {
                // Half the threads start puts without waiting (many in flight at once, so
                // the committer's batches hold many records), half use the blocking put.
                let (tx, rx) = mpsc::channel();
                let mut started = 0;
                for i in 0..PER_THREAD {
                    let k = key(t, i);
                    let v = value_for(&k, 1, size_of(i));
                    if t % 2 == 0 {
                        let tx = tx.clone();
                        let name = k.clone();
                        let r = cache
                            .put_nowait("batch", &k, &v, o, &ME, move |r| {
                                let _ = tx.send((name, r));
                            })
                            .unwrap();
                        assert_eq!(r, PutStart::Queued, "{k}: a small put on one node");
                        started += 1;
                    } else {
                        assert_eq!(cache.put("batch", &k, &v, o, &ME).unwrap(), 0);
                    }
                }
                for _ in 0..started {
                    let (k, r) = rx.recv().expect("every queued put is answered");
                    assert_eq!(r.unwrap_or_else(|e| panic!("{k}: {e}")), 0);
                }
            });
        }
    });
    read_all_back(&cache, "live");
    drop(cache);
    let cache = Cache::open(cfg.clone(), topo1()).unwrap();
    read_all_back(&cache, "after a clean reopen");
    drop(cache);
    for f in ["index.db", "index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(m.dir().join(f));
    }
    let cache = Cache::open(cfg, topo1()).unwrap();
    read_all_back(&cache, "after a rebuild from the records");
}

#[test]
fn put_nowait_answers_after_the_row_is_in_and_declines_what_would_block() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    let o = PutOptions::default();
    // Answered through the callback; when it comes, the value is visible.
    let (tx, rx) = mpsc::channel();
    let v = value_for("k", 1, 5000);
    let started = cache
        .put_nowait("ns", "k", &v, &o, &ME, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
    assert_eq!(started, PutStart::Queued);
    assert_eq!(rx.recv().unwrap().unwrap(), 0);
    assert_eq!(cache.get("ns", "k", &ME).unwrap(), v);

    // Too large to write on the caller's thread: nothing done, the callback dropped unused.
    let big = vec![7u8; NOWAIT_MAX_BYTES as usize + 1];
    let (tx, rx) = mpsc::channel::<Result<u32, StoreError>>();
    let started = cache
        .put_nowait("ns", "big", &big, &o, &ME, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
    assert_eq!(started, PutStart::WouldBlock);
    assert!(rx.recv().is_err(), "a declined put never answers");
    assert!(matches!(
        cache.get("ns", "big", &ME),
        Err(StoreError::NotFound { .. })
    ));

    // Errors found before anything is written come back at once, by name.
    let e = cache
        .put_nowait("Bad", "k", b"v", &o, &ME, |_| panic!("never answered"))
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e}");

    // A namespace of another uid: refused (the early check) and never stored.
    let owner = Caller {
        uid: Some(1000),
        cpu: None,
    };
    let other = Caller {
        uid: Some(1001),
        cpu: None,
    };
    cache.put("owned", "k", b"mine", &o, &owner).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = cache.put_nowait("owned", "k", b"theirs", &o, &other, move |r| {
        let _ = tx.send(r);
    });
    match r {
        Err(StoreError::PermissionDenied(_)) => {}
        Ok(PutStart::Queued) => assert!(matches!(
            rx.recv().unwrap(),
            Err(StoreError::PermissionDenied(_))
        )),
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.get("owned", "k", &ME).unwrap(), b"mine");
}

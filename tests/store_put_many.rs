//! `Cache::put_many` on a real btrfs: all or nothing. A batch the disk cannot hold stores
//! none of its entries and leaves none of its records behind (the files are counted); two
//! users racing their first batches into new namespaces end with exactly one owner per
//! namespace and the other batch wholly absent (the committer's owner check decides); a
//! batch survives a reopen.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::sync::{Arc, Barrier};
use store_util::{Mount, blob_files, check_value, config, records, topo1, value_for};

#[test]
fn a_batch_the_disk_cannot_hold_stores_nothing_and_leaves_no_records() {
    let Some(m) = Mount::btrfs(160, true) else {
        return;
    };
    let me = Caller::default();
    let mut cfg = config(&m.dir());
    cfg.max_bytes = 1 << 40; // the filesystem, not the cap, runs out
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg, topo1()).unwrap();
    cache
        .put("full", "before", b"kept", &PutOptions::default(), &me)
        .unwrap();
    // 200 incompressible values of 2 MiB (each a file of its own): 400 MiB on 160.
    let keys: Vec<String> = (0..200).map(|i| format!("big{i}")).collect();
    let batch: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| (k.clone(), value_for(k, 1, 2 << 20)))
        .collect();
    let err = cache
        .put_many("full", batch, &PutOptions::default(), &me)
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    for k in &keys {
        assert!(
            matches!(cache.get("full", k, &me), Err(StoreError::NotFound { .. })),
            "{k} of a failed batch is visible"
        );
    }
    assert!(
        blob_files(&m.dir()).is_empty(),
        "records of the failed batch were left behind: {:?}",
        blob_files(&m.dir()).len()
    );
    // The full disk asked eviction for room (as a single put's NoSpace does): the entry put
    // before is intact or evicted, never anything else.
    match cache.get("full", "before", &me) {
        Ok(v) => assert_eq!(v, b"kept"),
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    assert!(cache.totals().entries <= 1, "only the entry put before");
    // The space came back: a batch that fits goes in whole.
    let small: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let k = format!("small{i}");
            let v = value_for(&k, 1, 1 << 20);
            (k, v)
        })
        .collect();
    let mut stored = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match cache.put_many("full", small.clone(), &PutOptions::default(), &me) {
            Ok(n) => {
                stored = Some(n);
                break;
            }
            // btrfs frees deleted extents at its next transaction commit.
            Err(StoreError::NoSpace(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, Some(8));
    for (k, _) in &small {
        assert_eq!(check_value(k, &cache.get("full", k, &me).unwrap()), 1);
    }
}

#[test]
fn racing_first_batches_give_one_owner_and_nothing_of_the_other() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Arc::new(Cache::open(config(&m.dir()), topo1()).unwrap());
    const ROUNDS: usize = 60;
    let barrier = Arc::new(Barrier::new(2));
    let run = |uid: u32| {
        let cache = Arc::clone(&cache);
        let barrier = Arc::clone(&barrier);
        std::thread::spawn(move || {
            let who = Caller {
                uid: Some(uid),
                cpu: None,
            };
            let mut won = Vec::new();
            for r in 0..ROUNDS {
                let batch: Vec<(String, Vec<u8>)> = (0..16)
                    .map(|i| (format!("k{i}"), format!("{uid}:{i}").into_bytes()))
                    .collect();
                barrier.wait();
                match cache.put_many(&format!("race{r}"), batch, &PutOptions::default(), &who) {
                    Ok(n) => {
                        assert_eq!(n, 16);
                        won.push(r);
                    }
                    Err(StoreError::PermissionDenied(_)) => {}
                    Err(e) => panic!("uid {uid} round {r}: {e}"),
                }
            }
            won
        })
    };
    let (a, b) = (run(1000), run(1001));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let me = Caller::default();
    for r in 0..ROUNDS {
        let winner = match (a.contains(&r), b.contains(&r)) {
            (true, false) => 1000,
            (false, true) => 1001,
            other => panic!("round {r}: both or neither batch accepted: {other:?}"),
        };
        for i in 0..16 {
            let v = cache
                .get(&format!("race{r}"), &format!("k{i}"), &me)
                .unwrap();
            assert_eq!(
                v,
                format!("{winner}:{i}").into_bytes(),
                "round {r} key {i}: the refused batch left a value"
            );
        }
    }
    assert_eq!(cache.totals().entries, (ROUNDS * 16) as u64);
    drop(a);
    drop(b);
    // Every record of a batch is where a scan of the segments finds it (8-byte aligned,
    // back to back), as recovery and an index rebuild read them.
    let found: std::collections::HashSet<(String, String)> = records(&m.dir())
        .into_iter()
        .map(|(_, _, _, ns, key)| (ns, key))
        .collect();
    for r in 0..ROUNDS {
        for i in 0..16 {
            let want = (format!("race{r}"), format!("k{i}"));
            assert!(
                found.contains(&want),
                "no record of {want:?} in a segment scan"
            );
        }
    }

    // A batch is indexed like single puts: it is there after a reopen.
    let cache = Arc::into_inner(cache).expect("the threads are done");
    cache.close().unwrap();
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    assert_eq!(cache.totals().entries, (ROUNDS * 16) as u64);
    assert_eq!(cache.get("race0", "k15", &me).unwrap().len(), 7);
}

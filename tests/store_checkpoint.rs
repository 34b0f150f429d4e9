//! The entry-map checkpoint (issue 9, open < 1 s at 10M): a clean stop writes it, the next
//! open loads the map from it instead of scanning the index, and every value reads back; a
//! checkpoint is never used once the cache changed after it (an old copy planted back after
//! a SIGKILL is refused); a damaged, truncated, missing or foreign checkpoint falls back to
//! the index scan with the same contents; a symlink at its name stops start-up, and one at
//! its temp name is never written through.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use store_util::{Mount, check_value, config, topo2, value_for};

const CHILD_ENV: &str = "NUMA_CACHE_CHECKPOINT_CHILD";
const CKPT: &str = "entries.ckpt";
const N: u64 = 600;

fn key(i: u64) -> String {
    format!("k{i:05}")
}

fn ns_of(i: u64) -> &'static str {
    if i % 3 == 0 { "alpha" } else { "beta" }
}

/// Sizes over the range: small records, compressible and not, and every 100th a value
/// large enough for a file of its own.
fn len_of(i: u64) -> usize {
    if i % 100 == 7 {
        1_300_000
    } else {
        [20, 300, 1536, 5000, 70_000][(i % 5) as usize]
    }
}

fn fill(cache: &Cache, version: u64) {
    let me = Caller::default();
    for i in 0..N {
        let opts = PutOptions {
            ttl: (i % 4 == 0).then_some(Duration::from_secs(3600)),
            node: Some((i % 2) as u32),
            ..PutOptions::default()
        };
        cache
            .put(
                ns_of(i),
                &key(i),
                &value_for(&key(i), version, len_of(i)),
                &opts,
                &me,
            )
            .expect("put");
    }
}

/// Every key of 0..N reads back whole, at `version(i)` (None: absent).
fn check_all(cache: &Cache, version: impl Fn(u64) -> Option<u64>) {
    let me = Caller::default();
    for i in 0..N {
        let got = cache.get(ns_of(i), &key(i), &me);
        match version(i) {
            Some(v) => {
                let bytes = got.unwrap_or_else(|e| panic!("{}: {e}", key(i)));
                assert_eq!(check_value(&key(i), &bytes), v, "{}", key(i));
                assert_eq!(bytes.len(), len_of(i), "{}", key(i));
            }
            None => assert!(
                matches!(got, Err(StoreError::NotFound { .. })),
                "{} should be gone: {got:?}",
                key(i)
            ),
        }
    }
}

/// What the engine reports about every entry (the map's fields through `lookup`, and the
/// per-node totals), to compare a checkpoint load against the state before the stop.
fn snapshot_of(cache: &Cache) -> (Vec<String>, String) {
    let mut rows = Vec::new();
    for i in 0..N {
        if let Ok(e) = cache.lookup(ns_of(i), &key(i)) {
            rows.push(format!(
                "{} size={} stored={} node={} hits={} expires={:?}",
                key(i),
                e.size,
                e.stored_size,
                e.node,
                e.hits,
                e.expires
            ));
        }
    }
    let t = cache.totals();
    let mut per_node = Vec::new();
    for n in [0, 1] {
        let s = cache.node_stats(n).expect("node stats");
        per_node.push(format!(
            "node{n}: {} entries {} logical {} stored",
            s.entries, s.logical_bytes, s.stored_bytes
        ));
    }
    (
        rows,
        format!("{} entries; {}", t.entries, per_node.join("; ")),
    )
}

#[test]
fn a_clean_stop_checkpoint_round_trips() {
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    let me = Caller::default();
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    assert!(!cache.opened_from_checkpoint(), "a new cache has none");
    fill(&cache, 1);
    // Some hits, written back at the stop and kept by the checkpoint.
    for i in (0..N).step_by(7) {
        cache.get(ns_of(i), &key(i), &me).expect("get");
    }
    let before = snapshot_of(&cache);
    cache.close().expect("close");
    assert!(dir.join(CKPT).is_file(), "a clean stop leaves a checkpoint");

    let cache = Cache::open(config(&dir), topo2()).expect("reopen");
    assert!(
        cache.opened_from_checkpoint(),
        "the open after a clean stop loads the checkpoint"
    );
    assert!(
        !dir.join(CKPT).exists(),
        "the checkpoint is removed once loaded (stale from now on)"
    );
    assert_eq!(
        snapshot_of(&cache),
        before,
        "entries and totals as before the stop"
    );
    check_all(&cache, |_| Some(1));
    // The cache goes on normally: new ids do not collide with loaded ones, overwrites and
    // deletes find the loaded entries.
    for i in (0..N).step_by(5) {
        cache
            .put(
                ns_of(i),
                &key(i),
                &value_for(&key(i), 2, len_of(i)),
                &PutOptions::default(),
                &me,
            )
            .expect("overwrite");
    }
    for i in (1..N).step_by(11) {
        assert!(cache.delete(ns_of(i), &key(i), &me).expect("delete"));
    }
    let want = |i: u64| {
        if i % 11 == 1 {
            None
        } else if i % 5 == 0 {
            Some(2)
        } else {
            Some(1)
        }
    };
    check_all(&cache, want);
    cache.close().expect("close");
    let cache = Cache::open(config(&dir), topo2()).expect("third open");
    assert!(cache.opened_from_checkpoint());
    check_all(&cache, want);
    // Namespace owners (from the index) are kept alongside.
    let other = Caller {
        uid: Some(4242),
        ..Caller::default()
    };
    assert!(matches!(
        cache.put("alpha", "x", b"y", &PutOptions::default(), &other),
        Err(StoreError::PermissionDenied(_))
    ));
    cache.close().expect("close");
}

/// The child (the test re-run, see store_util::child_spec): open (from the checkpoint),
/// overwrite, add and delete, then die by SIGKILL.
fn checkpoint_child_changes_then_dies(dir: &str) -> ! {
    let cache = Cache::open(config(Path::new(dir)), topo2()).expect("child opens");
    assert!(
        cache.opened_from_checkpoint(),
        "child: loaded the checkpoint"
    );
    let me = Caller::default();
    for i in (0..N).step_by(3) {
        cache
            .put(
                ns_of(i),
                &key(i),
                &value_for(&key(i), 3, len_of(i)),
                &PutOptions::default(),
                &me,
            )
            .expect("overwrite");
    }
    for i in (2..N).step_by(9) {
        cache.delete(ns_of(i), &key(i), &me).expect("delete");
    }
    cache
        .put("gamma", "new", b"after", &PutOptions::default(), &me)
        .expect("new namespace");
    let _ = Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(10));
    std::process::abort();
}

#[test]
fn a_stale_checkpoint_is_never_used() {
    if let Some(dir) = store_util::child_spec(CHILD_ENV) {
        checkpoint_child_changes_then_dies(&dir);
    }
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    fill(&cache, 1);
    cache.close().expect("close");
    // Keep a copy of this checkpoint: planted back after the child's changes, it is what a
    // failed removal (or an operator's restore) would leave.
    let old = m.path.join("old.ckpt");
    std::fs::copy(dir.join(CKPT), &old).expect("copy the checkpoint");

    store_util::expect_death(
        &mut store_util::child_command(CHILD_ENV, &dir),
        libc::SIGKILL,
    );

    std::fs::copy(&old, dir.join(CKPT)).expect("plant the old checkpoint back");
    let cache = Cache::open(config(&dir), topo2()).expect("open after the SIGKILL");
    assert!(
        !cache.opened_from_checkpoint(),
        "a checkpoint from before the changes must not be loaded"
    );
    let want = |i: u64| {
        if i % 9 == 2 {
            None
        } else if i % 3 == 0 {
            Some(3)
        } else {
            Some(1)
        }
    };
    check_all(&cache, want);
    assert_eq!(
        cache
            .get("gamma", "new", &Caller::default())
            .expect("the child's new entry"),
        b"after"
    );
    cache.close().expect("close");
    // And the next clean stop's checkpoint has all of it.
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    assert!(cache.opened_from_checkpoint());
    check_all(&cache, want);
    cache.close().expect("close");
}

#[test]
fn a_damaged_or_foreign_checkpoint_falls_back_to_the_index() {
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    fill(&cache, 1);
    cache.close().expect("close");
    let foreign = m.path.join("foreign.ckpt");
    std::fs::copy(dir.join(CKPT), &foreign).expect("copy");
    // A clean stop with nothing changed still writes a new generation: the copy is foreign.
    Cache::open(config(&dir), topo2())
        .expect("open")
        .close()
        .expect("close");

    type Damage = (&'static str, Box<dyn Fn(&Path, Vec<u8>)>);
    let damages: Vec<Damage> = vec![
        (
            "one flipped bit in an entry",
            Box::new(|p, mut b| {
                let at = b.len() / 2;
                b[at] ^= 0x04;
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "truncated by 100 bytes",
            Box::new(|p, b| std::fs::write(p, &b[..b.len() - 100]).unwrap()),
        ),
        (
            "truncated to its header",
            Box::new(|p, b| std::fs::write(p, &b[..40]).unwrap()),
        ),
        ("empty", Box::new(|p, _| std::fs::write(p, b"").unwrap())),
        (
            "bytes appended",
            Box::new(|p, mut b| {
                b.extend_from_slice(b"junk");
                std::fs::write(p, b).unwrap();
            }),
        ),
        ("missing", Box::new(|p, _| std::fs::remove_file(p).unwrap())),
        (
            "another stop's checkpoint",
            Box::new({
                let foreign = foreign.clone();
                move |p, _| {
                    std::fs::copy(&foreign, p).unwrap();
                }
            }),
        ),
    ];
    for (what, damage) in &damages {
        let path = dir.join(CKPT);
        let bytes = std::fs::read(&path).expect("the last clean stop's checkpoint");
        damage(&path, bytes);
        let cache = Cache::open(config(&dir), topo2()).expect("open");
        assert!(
            !cache.opened_from_checkpoint(),
            "{what}: the checkpoint must not be used"
        );
        assert_eq!(cache.totals().entries, N, "{what}");
        check_all(&cache, |_| Some(1));
        cache.close().expect("close");
    }
    // Undamaged, it is used again.
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    assert!(cache.opened_from_checkpoint());
    cache.close().expect("close");
}

#[test]
fn symlinks_at_the_checkpoint_names_are_refused() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    let me = Caller::default();
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    cache
        .put("alpha", "a", b"one", &PutOptions::default(), &me)
        .expect("put");
    cache.close().expect("close");

    // A symlink at the checkpoint's name: start-up refuses, naming it.
    let elsewhere = m.path.join("elsewhere.ckpt");
    std::fs::rename(dir.join(CKPT), &elsewhere).expect("move the checkpoint away");
    std::os::unix::fs::symlink(&elsewhere, dir.join(CKPT)).expect("symlink");
    match Cache::open(config(&dir), topo2()) {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains(CKPT) && msg.contains("symlink"), "{msg}")
        }
        Err(e) => panic!("wrong error for a symlinked checkpoint: {e}"),
        Ok(_) => panic!("a symlinked checkpoint was accepted"),
    }
    std::fs::remove_file(dir.join(CKPT)).expect("remove the link");

    // A symlink planted at the temp name while the cache runs: the clean stop never writes
    // through it (the victim keeps its bytes) and still leaves a usable checkpoint.
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    assert!(!cache.opened_from_checkpoint());
    let victim = m.path.join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.join("entries.ckpt.tmp")).expect("symlink");
    cache.close().expect("close");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(
        !std::fs::symlink_metadata(dir.join(CKPT))
            .expect("checkpoint")
            .file_type()
            .is_symlink()
    );
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    assert!(cache.opened_from_checkpoint());
    assert_eq!(cache.get("alpha", "a", &me).expect("get"), b"one");
    cache.close().expect("close");
}

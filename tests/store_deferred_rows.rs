//! Rows of default puts are committed after the put is answered (within
//! `commit::DEFER_FOR`): the record is the truth until then. A child process (the test,
//! re-run: store_util::child_spec) stores values and dies by abort (no destructor, no flush:
//! what reaches the disk is what a SIGKILL leaves) right after, while the newest rows are
//! still waiting for their commit; the parent reopens the cache and checks what reads back.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::path::Path;
use store_util::{Mount, check_value, config, topo1, value_for};

const CHILD_ENV: &str = "NUMA_CACHE_DEFERRED_CHILD";
const KEYS: u64 = 200;

/// The child: `dir|mode`. Mode `puts`: store KEYS values in namespace `p` (default
/// durability) and abort. Mode `clear`: the same in namespace `c`, then clear `c` and abort.
/// Before the abort it writes `answered` (what it was answered) beside the cache.
fn deferred_child(spec: &str) -> ! {
    let (dir, mode) = spec.split_once('|').expect("dir|mode expected");
    let cache = Cache::open(config(Path::new(dir)), topo1()).expect("child opens the cache");
    let me = Caller::default();
    let opts = PutOptions::default();
    let ns = if mode == "clear" { "c" } else { "p" };
    for i in 0..KEYS {
        let key = format!("k{i}");
        cache
            .put(
                ns,
                &key,
                &value_for(&key, i, 300 + (i as usize % 5) * 1000),
                &opts,
                &me,
            )
            .expect("put");
    }
    if mode == "clear" {
        assert_eq!(
            cache.clear(ns, &me).expect("clear"),
            KEYS,
            "clear removed every key"
        );
    }
    // The marker is not the cache's: a write of its own, done before the abort.
    std::fs::write(answered(Path::new(dir)), format!("{mode} {KEYS}")).expect("marker");
    // Dies with the newest rows (and, for `clear`, its removals) as the last commit left
    // them: no flush, no clean stop.
    std::process::abort();
}

fn answered(dir: &Path) -> std::path::PathBuf {
    dir.with_file_name("answered")
}

/// Run the child in `mode`: it must have been answered for all its calls, then died by abort
/// (a child that failed before or during its puts fails here).
fn run_child(dir: &Path, mode: &str) {
    store_util::expect_abort(&mut store_util::child_command(
        CHILD_ENV,
        format!("{}|{mode}", dir.display()),
    ));
    assert_eq!(
        std::fs::read_to_string(answered(dir)).ok().as_deref(),
        Some(format!("{mode} {KEYS}").as_str()),
        "the {mode} child did not finish its calls before the abort"
    );
}

/// Every answered default put reads back after the crash, byte for byte, though the rows
/// of the last ones were never committed (recovery restores them from their records).
#[test]
fn answered_default_puts_survive_a_crash_before_their_rows_commit() {
    if let Some(spec) = store_util::child_spec(CHILD_ENV) {
        deferred_child(&spec);
    }
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    run_child(&dir, "puts");
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    let me = Caller::default();
    for i in 0..KEYS {
        let key = format!("k{i}");
        let v = cache
            .get("p", &key, &me)
            .unwrap_or_else(|e| panic!("{key}, answered before the crash: {e}"));
        assert_eq!(check_value(&key, &v), i, "{key} reads another version");
    }
    assert_eq!(cache.stats().totals.entries, KEYS, "entries after recovery");
}

/// A clear right after default puts whose rows still wait: the clear's tombstones must name
/// those keys too (from the waiting rows, which are not in the index yet), or recovery's scan
/// of the records would bring the cleared values back after a crash.
#[test]
fn clear_of_waiting_rows_stays_cleared_after_a_crash() {
    if let Some(spec) = store_util::child_spec(CHILD_ENV) {
        deferred_child(&spec);
    }
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    run_child(&dir, "clear");
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    let me = Caller::default();
    let back: Vec<String> = (0..KEYS)
        .map(|i| format!("k{i}"))
        .filter(|key| match cache.get("c", key, &me) {
            Ok(_) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => panic!("{key}: {e}"),
        })
        .collect();
    assert!(
        back.is_empty(),
        "{} cleared keys came back after the crash: {:?}",
        back.len(),
        &back[..back.len().min(10)]
    );
}

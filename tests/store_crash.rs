//! Crash safety: a child process (the test, re-run: store_util::child_spec) does concurrent
//! puts (default and sync) and deletes and dies abruptly (abort: no destructor, no flush, the
//! same as a SIGKILL for what reaches the disk) once a set number of operations have been
//! acknowledged, 20 times with 20 different counts: the kill points are reproducible by
//! count, not by clock. After each restart every key reads back byte-identical to its last
//! acknowledged operation (or to the one in flight), never torn; no temporary file remains;
//! every large-value file on disk belongs to a live entry.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use store_util::{Mount, check_value, config, topo1, value_for};

const CHILD_ENV: &str = "NUMA_CACHE_CRASH_CHILD";
const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 8;
/// Above this a value is stored as a file of its own.
const LARGE: usize = 1_200_000;

/// Operation `i` on a key: every 7th is a delete, the others put version `i`.
fn is_delete(i: u64) -> bool {
    i % 7 == 6
}

fn size_of(key: &str, i: u64) -> usize {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{key}{i}").as_bytes());
    [300, 4096, 20_000, 70_000, 300, 4096, 20_000, LARGE][(h % 8) as usize]
}

/// How many acknowledged operations round `round` lets happen before the child dies.
fn kill_after(round: u64) -> u64 {
    30 + (round * 97) % 600
}

/// The child (`dir|namespace|count`): run until it has `count` acknowledged operations, then
/// abort. Each thread owns its keys, so per key the operations are sequential and the last
/// acknowledged one is known from its log. Odd threads use sync puts.
fn crash_writer(spec: &str) -> ! {
    let mut parts = spec.split('|');
    let (Some(dir), Some(ns), Some(limit)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("dir|namespace|count expected");
    };
    let limit: u64 = limit.parse().expect("count");
    let cache = Cache::open(config(Path::new(dir)), topo1()).expect("child opens the cache");
    let cache = Arc::new(cache);
    let acked = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cache, ns, dir, acked) = (
                cache.clone(),
                ns.to_string(),
                dir.to_string(),
                acked.clone(),
            );
            std::thread::spawn(move || {
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(&dir).join(format!("../ack-{ns}-{t}")))
                    .expect("ack log");
                let me = Caller::default();
                let opts = PutOptions {
                    sync: t % 2 == 1,
                    ..PutOptions::default()
                };
                for i in 0u64.. {
                    for k in 0..KEYS_PER_THREAD {
                        let key = format!("t{t}k{k}");
                        if is_delete(i) {
                            cache.delete(&ns, &key, &me).expect("delete");
                        } else {
                            let v = value_for(&key, i, size_of(&key, i));
                            cache.put(&ns, &key, &v, &opts, &me).expect("put");
                        }
                        // An unbuffered append: the line is in the kernel before the count.
                        writeln!(log, "{key} {i}").expect("ack");
                        if acked.fetch_add(1, Ordering::SeqCst) + 1 == limit {
                            std::process::abort();
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    panic!("every writer thread ended before {limit} acknowledged operations");
}

fn last_acks(root: &Path, ns: &str) -> (std::collections::HashMap<String, u64>, usize) {
    let mut acks = std::collections::HashMap::new();
    let mut ops = 0;
    for t in 0..THREADS {
        let text = std::fs::read_to_string(root.join(format!("ack-{ns}-{t}"))).unwrap_or_default();
        for line in text.lines() {
            ops += 1;
            if let Some((k, i)) = line.split_once(' ')
                && let Ok(i) = i.parse::<u64>()
            {
                acks.insert(k.to_string(), i);
            }
        }
    }
    (acks, ops)
}

#[test]
fn sigkill_during_concurrent_puts_20_times() {
    if let Some(spec) = store_util::child_spec(CHILD_ENV) {
        crash_writer(&spec);
    }
    let Some(m) = Mount::btrfs(1024, false) else {
        return;
    };
    let dir = m.dir();
    let me = Caller::default();
    for round in 0..20u64 {
        let ns = format!("r{round}");
        let limit = kill_after(round);
        store_util::expect_abort(&mut store_util::child_command(
            CHILD_ENV,
            format!("{}|{ns}|{limit}", dir.display()),
        ));

        let cache = Cache::open(config(&dir), topo1()).unwrap();
        let (acks, ops) = last_acks(&m.path, &ns);
        // Other threads may finish an operation between the count and the abort.
        assert!(
            ops as u64 >= limit && ops as u64 <= limit + THREADS as u64,
            "round {round}: {ops} acknowledged operations, the child died at {limit}"
        );
        let mut present = 0;
        let mut large = 0;
        for t in 0..THREADS {
            for k in 0..KEYS_PER_THREAD {
                let key = format!("t{t}k{k}");
                // Allowed: the state after the last acknowledged op, or after the next one.
                let next = acks.get(&key).map_or(0, |i| i + 1);
                let allowed: Vec<Option<u64>> = [acks.get(&key).copied(), Some(next)]
                    .into_iter()
                    .map(|op| match op {
                        None => None,
                        Some(i) if is_delete(i) => None,
                        Some(i) => Some(i),
                    })
                    .collect();
                let got = match cache.get(&ns, &key, &me) {
                    Ok(v) => {
                        present += 1;
                        // Records above 1 MiB stored are files of their own.
                        let stored = cache.lookup(&ns, &key).unwrap().stored_size;
                        large += usize::from(stored > 1 << 20);
                        Some(check_value(&key, &v))
                    }
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => panic!("round {round}: {key}: {e}"),
                };
                assert!(
                    allowed.contains(&got),
                    "round {round}: {key} reads {got:?}, allowed {allowed:?} (last ack {:?})",
                    acks.get(&key)
                );
            }
        }
        assert!(
            present > 0,
            "round {round}: no key present after {ops} operations"
        );
        assert!(
            store_util::temp_files(&dir).is_empty(),
            "round {round}: temp files left"
        );
        // Earlier rounds' namespaces hold their large values too: count those of this one
        // against the files whose header names this round's namespace.
        let files = store_util::records(&dir)
            .into_iter()
            .filter(|(f, _, _, n, _)| *n == ns && !f.to_string_lossy().ends_with(".seg"))
            .count();
        assert_eq!(
            files, large,
            "round {round}: large-value files without an entry (or entries without a file)"
        );
        eprintln!(
            "round {round}: died after {limit}, {ops} acknowledged operations, {present} keys present, {large} large files"
        );
    }
}

//! Crash safety: a child process (this test binary, re-executed) does concurrent puts and
//! deletes and is killed with SIGKILL at random moments, 20 times. After each restart every
//! key reads back byte-identical to its last acknowledged operation (or to the one in flight),
//! never torn, and no temporary or orphan file remains.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use store_util::{Mount, check_value, config, topo1, value_for};

const CHILD_ENV: &str = "NUMA_CACHE_CRASH_CHILD";
const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 8;

/// Operation `i` on a key: every 7th is a delete, the others put version `i`.
fn is_delete(i: u64) -> bool {
    i % 7 == 6
}

fn size_of(key: &str, i: u64) -> usize {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{key}{i}").as_bytes());
    [300, 4096, 20_000, 70_000][(h % 4) as usize]
}

/// The child: run until killed. Each thread owns its keys, so per key the operations are
/// sequential and the last acknowledged one is known from its log.
#[test]
fn crash_child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, ns) = spec.split_once('|').expect("dir|namespace");
    let cache = Cache::open(config(Path::new(dir)), topo1()).expect("child opens the cache");
    let cache = std::sync::Arc::new(cache);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cache, ns, dir) = (cache.clone(), ns.to_string(), dir.to_string());
            std::thread::spawn(move || {
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(&dir).join(format!("../ack-{ns}-{t}")))
                    .expect("ack log");
                let me = Caller::default();
                for i in 0u64.. {
                    for k in 0..KEYS_PER_THREAD {
                        let key = format!("t{t}k{k}");
                        if is_delete(i) {
                            cache.delete(&ns, &key, &me).expect("delete");
                        } else {
                            let v = value_for(&key, i, size_of(&key, i));
                            cache
                                .put(&ns, &key, &v, &PutOptions::default(), &me)
                                .expect("put");
                        }
                        writeln!(log, "{key} {i}").expect("ack");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
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
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let dir = m.dir();
    let me = Caller::default();
    let exe = std::env::current_exe().unwrap();
    for round in 0..20u64 {
        let ns = format!("r{round}");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{ns}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Random moments: 150-650 ms into the child's life.
        let jitter = xxhash_rust::xxh3::xxh3_64(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                .to_le_bytes(),
        ) % 500;
        std::thread::sleep(Duration::from_millis(150 + jitter));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let cache = Cache::open(config(&dir), topo1()).unwrap();
        let (acks, ops) = last_acks(&m.path, &ns);
        let mut present = 0;
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
            store_util::temp_files(&dir).is_empty(),
            "round {round}: temp files left"
        );
        let files = store_util::blob_files(&dir).len() as u64;
        assert_eq!(
            files,
            cache.totals().entries,
            "round {round}: orphan blob files or rows without a file"
        );
        eprintln!(
            "round {round}: {ops} acknowledged operations, {present} keys present, {files} blobs"
        );
    }
}

//! PutMany is all or nothing across a crash (issue 21, defect 5). A child process (this test
//! binary, re-executed under strace) streams PutMany batches of 1024 values of 8 KiB into a
//! cache on a real btrfs, and strace kills it with SIGKILL on entry to its N-th `pwritev`
//! (`-e inject=pwritev:signal=KILL:when=N`: the kill point is chosen by write count, not by
//! clock, and no test hook is compiled into the engine). A batch's 1024 records take two
//! `pwritev` calls (2048 pieces, IOV_MAX 1024 a call), so an even N lands between the two
//! halves of a batch. After each kill the parent counts what the segments hold per batch
//! (parsing the files, not through the index), reopens the cache (recovery) and checks that
//! every batch reads back whole with its exact bytes or not at all, and that every batch the
//! child saw answered is whole. A last test covers a batch whose rows were committed when
//! one of its records was lost (a power loss): the batch goes whole.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use store_util::{Mount, check_value, config, records, support, topo1, value_for};

const CHILD_ENV: &str = "NUMA_CACHE_PUT_MANY_CRASH_CHILD";
/// Entries of one batch: the most a PutMany takes.
const ENTRIES: usize = 1024;
/// Bytes of each value.
const VALUE: usize = 8 << 10;
/// Batches a child writes at most (it is killed long before).
const MAX_BATCHES: u64 = 40;
const ROUNDS: u64 = 24;

/// Key `i` of batch `b`. Fixed widths: with the 8-character namespace every record is
/// 8281 bytes, padded to 8288, so each record is two pieces of the vectored write.
fn key(b: u64, i: usize) -> String {
    format!("b{b:03}k{i:04}")
}

/// The namespace of round `round`.
fn namespace(round: u64) -> String {
    format!("round{round:03}")
}

/// Odd versions are noise (value_for): stored raw, so every record has the same length.
fn version(b: u64) -> u64 {
    2 * b + 1
}

/// The `pwritev` the child is killed at in round `round`: 1 to 6, each value in turn.
/// Batch b's halves are calls 2b+1 and 2b+2, so an even one dies between the two halves of
/// a batch, an odd one just before a batch (the earlier ones answered, their rows perhaps
/// still waiting for their commit).
fn kill_at(round: u64) -> u64 {
    1 + (round * 5) % 6
}

/// The child: `dir|namespace`. Streams batches into the namespace and logs each answered
/// batch (an unbuffered append: the line is in the kernel before the next batch starts). It
/// is the parent test re-run (store_util::child_spec), and exits 0 only if no kill came.
fn put_many_crash_child(spec: &str) -> ! {
    let (dir, ns) = spec.split_once('|').expect("dir|namespace expected");
    let dir = Path::new(dir);
    let cache = Cache::open(config(dir), topo1()).expect("child opens the cache");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("acks"))
        .expect("ack log");
    let me = Caller::default();
    for b in 0..MAX_BATCHES {
        let batch: Vec<(String, Vec<u8>)> = (0..ENTRIES)
            .map(|i| {
                let k = key(b, i);
                let v = value_for(&k, version(b), VALUE);
                (k, v)
            })
            .collect();
        let n = cache
            .put_many(ns, batch, &PutOptions::default(), &me)
            .expect("put_many");
        assert_eq!(n as usize, ENTRIES);
        writeln!(log, "{b}").expect("ack");
    }
    std::process::exit(0)
}

/// Run the child under strace, killed on entry to its `when`-th `pwritev` (that call writes
/// nothing). Not with `--seccomp-bpf`: strace 6.1 then misses the count and never injects.
fn run_child(dir: &Path, ns: &str, when: u64) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("the test binary");
    Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null"])
        .args(["-e", "trace=pwritev"])
        .arg("-e")
        .arg(format!("inject=pwritev:signal=KILL:when={when}"))
        .arg(exe)
        .args(store_util::child_args())
        .env(CHILD_ENV, format!("{}|{ns}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running the child under strace")
}

/// Batch number of a key of this test.
fn batch_of(key: &str) -> Option<u64> {
    key.strip_prefix('b')?.split_once('k')?.0.parse().ok()
}

/// Intact records on disk per batch of namespace `ns` (distinct keys).
fn on_disk(dir: &Path, ns: &str) -> BTreeMap<u64, usize> {
    let mut keys: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (_, _, _, n, k) in records(dir) {
        if n == ns
            && let Some(b) = batch_of(&k)
        {
            keys.entry(b).or_default().insert(k);
        }
    }
    keys.into_iter().map(|(b, k)| (b, k.len())).collect()
}

/// How many entries of batch `b` read back, each checked byte for byte.
fn readable(cache: &Cache, ns: &str, b: u64) -> usize {
    let me = Caller::default();
    (0..ENTRIES)
        .filter(|&i| {
            let k = key(b, i);
            match cache.get(ns, &k, &me) {
                Ok(v) => {
                    assert_eq!(check_value(&k, &v), version(b), "{ns}/{k}: another version");
                    true
                }
                Err(StoreError::NotFound { .. }) => false,
                Err(e) => panic!("{ns}/{k}: {e}"),
            }
        })
        .count()
}

#[test]
fn sigkill_between_the_writes_of_a_put_many_leaves_each_batch_whole_or_absent() {
    if let Some(spec) = store_util::child_spec(CHILD_ENV) {
        put_many_crash_child(&spec);
    }
    if !support::require_tool("strace", "strace") {
        return;
    }
    let Some(m) = Mount::btrfs(1024, false) else {
        return;
    };
    let mut torn_on_disk = 0;
    let mut broken: Vec<String> = Vec::new();
    let mut broken_rounds = 0;
    for round in 0..ROUNDS {
        let ns = namespace(round);
        let dir = m.path.join(format!("cache{round}"));
        let when = kill_at(round);
        let status = run_child(&dir, &ns, when);
        // strace ends as its tracee did: by the same signal (or, in a shell, 128 + it).
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.code() == Some(128 + libc::SIGKILL),
            "round {round}: the child was to be killed at its pwritev #{when}, it ended {status:?}"
        );
        let acked: BTreeSet<u64> = std::fs::read_to_string(dir.with_extension("acks"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        // What the kill left in the segments, before recovery looks at it.
        let disk = on_disk(&dir, &ns);
        let torn: Vec<(u64, usize)> = disk
            .iter()
            .filter(|&(_, &n)| n > 0 && n < ENTRIES)
            .map(|(&b, &n)| (b, n))
            .collect();
        torn_on_disk += usize::from(!torn.is_empty());

        let cache = Cache::open(config(&dir), topo1()).expect("reopening after the kill");
        let batches: BTreeSet<u64> = disk.keys().chain(acked.iter()).copied().collect();
        let mut found = Vec::new();
        let before = broken.len();
        for &b in &batches {
            let n = readable(&cache, &ns, b);
            found.push((b, n));
            if acked.contains(&b) && n != ENTRIES {
                broken.push(format!(
                    "round {round}: answered batch {b} reads {n} of {ENTRIES} entries"
                ));
            } else if n != 0 && n != ENTRIES {
                broken.push(format!(
                    "round {round}: batch {b} reads {n} of {ENTRIES} entries (on disk: {:?})",
                    disk.get(&b)
                ));
            }
        }
        broken_rounds += usize::from(broken.len() > before);
        eprintln!(
            "round {round}: killed at pwritev #{when}; {} batches answered; partial on disk \
             (batch, records): {torn:?}; after recovery (batch, entries): {found:?}",
            acked.len()
        );
        cache.close().expect("closing");
        std::fs::remove_dir_all(&dir).expect("removing the round's cache");
    }
    assert!(
        broken.is_empty(),
        "{broken_rounds} of {ROUNDS} rounds broke a batch apart \
         ({torn_on_disk} died with a batch half written):\n{}",
        broken.join("\n")
    );
    // Without kills between a batch's writes the test would prove nothing.
    assert!(
        torn_on_disk > 0,
        "no kill landed between the writes of a batch in {ROUNDS} rounds"
    );
    eprintln!("{torn_on_disk} of {ROUNDS} rounds died with a batch half written");
}

const TORN_CHILD_ENV: &str = "NUMA_CACHE_PUT_MANY_TORN_CHILD";
const TORN_KEYS: usize = 8;

/// The child of `a_batch_whose_rows_were_committed_but_one_record_was_torn_goes_whole`:
/// PutMany batches of version 2 into namespaces `torn` and `kept`, their rows committed (a
/// lookup reads the index, so the waiting rows are committed first; no flush point passes
/// them: the interval is an hour), then abort.
fn put_many_torn_child(dir: &str) -> ! {
    let mut cfg = config(Path::new(&dir));
    cfg.sync_interval = std::time::Duration::from_secs(3600);
    let cache = Cache::open(cfg, topo1()).expect("child opens the cache");
    let me = Caller::default();
    for ns in ["torn", "kept"] {
        let batch = (0..TORN_KEYS)
            .map(|i| format!("k{i}"))
            .map(|k| (k.clone(), value_for(&k, 2, 3000)))
            .collect();
        cache
            .put_many(ns, batch, &PutOptions::default(), &me)
            .expect("put_many");
        cache.lookup(ns, "k0").expect("the row is committed");
    }
    std::process::abort();
}

/// After a power loss the rows of a PutMany may be on disk while one of its records is not
/// (the writeback race; here the record is torn by hand). The batch was never durable (a
/// default put younger than the interval): it goes whole, every key back at its older
/// version, not just the key whose record was torn. A batch whose records are all intact
/// stays whole.
#[test]
fn a_batch_whose_rows_were_committed_but_one_record_was_torn_goes_whole() {
    if let Some(dir) = store_util::child_spec(TORN_CHILD_ENV) {
        put_many_torn_child(&dir);
    }
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    let me = Caller::default();
    {
        let cache = Cache::open(config(&dir), topo1()).unwrap();
        for ns in ["torn", "kept"] {
            for i in 0..TORN_KEYS {
                let k = format!("k{i}");
                cache
                    .put(ns, &k, &value_for(&k, 1, 3000), &PutOptions::default(), &me)
                    .unwrap();
            }
        }
        cache.close().unwrap();
    }
    store_util::expect_abort(&mut store_util::child_command(TORN_CHILD_ENV, &dir));
    // Tear the newest record of torn/k3: the batch's.
    let (f, off, len, ..) = records(&dir)
        .into_iter()
        .filter(|(_, _, _, ns, k)| ns == "torn" && k == "k3")
        .max_by_key(|r| r.1)
        .expect("records of torn/k3");
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all_at(&[0u8; 64], off + len / 2)
        .unwrap();
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    for (ns, want) in [("torn", 1), ("kept", 2)] {
        let versions: Vec<u64> = (0..TORN_KEYS)
            .map(|i| {
                let k = format!("k{i}");
                check_value(&k, &cache.get(ns, &k, &me).unwrap())
            })
            .collect();
        assert_eq!(versions, vec![want; TORN_KEYS], "namespace {ns}");
    }
    assert_eq!(cache.totals().entries, 2 * TORN_KEYS as u64);
}

//! A put refused after its record was written must not come back after a crash (issue 9:
//! what is visible and what was answered agree, before and after a restart).
//!
//! The failure is real: the child runs with a file-size limit (`ulimit -f`, SIGXFSZ ignored),
//! so once the index's WAL has grown past it, a commit fails with EFBIG while the segment,
//! still far below it, takes the put's record. The put is answered with the error; the child
//! then aborts (a crash: the segment's bytes stay in the page cache, as they would on disk
//! after a later writeback). Recovery's scan of the segments must not index that record.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions};
use std::time::Duration;
use store_util::{Mount, check_value, config, topo1, value_for};

const ME: Caller = Caller {
    uid: None,
    cpu: None,
};

const CHILD_ENV: &str = "NUMA_CACHE_REFUSED_CHILD";
/// The child's file-size limit, in bash's 1 KiB blocks (1 MiB): above the segment the
/// child fills (about 40 KiB), below the WAL it grows (several KiB a commit, no checkpoint).
const FSIZE_KIB: u32 = 1024;

/// The namespace of key `i`: a new one for every put, so that each put claims its namespace,
/// which commits (FULL) before the put is answered. (A default put into a namespace it owns
/// is answered before its row commits, so a failing commit cannot refuse it.)
fn ns(i: usize) -> String {
    format!("r{i}")
}

/// The child (the test re-run under the limit, see store_util::child_spec): default puts of
/// 100-byte values, one at a time, each into a new namespace, until one is refused; it
/// writes that key's number to `refused`, then aborts.
fn refused_child(dir: &str) -> ! {
    let dir = std::path::PathBuf::from(dir);
    let mut cfg = config(&dir);
    cfg.sync_interval = Duration::from_secs(3600);
    let cache = Cache::open(cfg, topo1()).expect("open under the limit");
    let o = PutOptions::default();
    for i in 0..2000 {
        let k = format!("k{i}");
        if let Err(e) = cache.put(&ns(i), &k, &value_for(&k, 1, 100), &o, &ME) {
            std::fs::write(dir.join("refused"), format!("{i}\n{e}")).expect("marker");
            std::process::abort();
        }
    }
    std::fs::write(dir.join("refused"), "none").expect("marker");
    std::process::abort();
}

#[test]
fn a_put_refused_by_a_failed_commit_stays_gone_after_a_crash() {
    if let Some(dir) = store_util::child_spec(CHILD_ENV) {
        refused_child(&dir);
    }
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let dir = m.dir();
    let exe = std::env::current_exe().expect("test binary");
    store_util::expect_abort(
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {FSIZE_KIB} && exec \"$0\" \"$@\""
            ))
            .arg(&exe)
            .args(store_util::child_args())
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let marker = std::fs::read_to_string(dir.join("refused")).expect("the child's marker");
    let (n, why) = marker.split_once('\n').unwrap_or((marker.as_str(), ""));
    let n: usize = n
        .parse()
        .unwrap_or_else(|_| panic!("no put was refused under the file-size limit: {marker}"));
    assert!(n > 0, "the very first put was refused ({why})");
    let refused = format!("k{n}");

    let cache = Cache::open(config(&dir), topo1()).expect("reopen after the crash");
    for i in 0..n {
        let k = format!("k{i}");
        let v = cache
            .get(&ns(i), &k, &ME)
            .unwrap_or_else(|e| panic!("{k}, answered Ok before the crash, is lost: {e}"));
        assert_eq!(check_value(&k, &v), 1);
    }
    let back = cache.get(&ns(n), &refused, &ME);
    assert!(
        back.is_err(),
        "{refused} was refused ({why}) but came back after the crash"
    );
    // And it stays gone once the cache is rebuilt from the records alone.
    drop(cache);
    std::fs::remove_file(dir.join("index.db")).expect("removing the index");
    for side in ["index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(dir.join(side));
    }
    let cache = Cache::open(config(&dir), topo1()).expect("rebuild");
    assert!(
        cache.get(&ns(n), &refused, &ME).is_err(),
        "{refused} came back in a rebuild"
    );
    assert_eq!(
        check_value(
            "k0",
            &cache.get(&ns(0), "k0", &ME).expect("k0 after the rebuild")
        ),
        1
    );
}

//! A clean stop on a full filesystem (issue 9, "what happens when the disk fills"): the
//! entry-map checkpoint cannot be written. The stop still ends, no partial checkpoint or
//! temp file is left behind, nothing acknowledged is lost, and the next open loads the map
//! from the index instead. Real btrfs, filled for real: no injected error.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use store_util::{Mount, check_value, config, topo2, value_for};

const CKPT: &str = "entries.ckpt";
const CKPT_TMP: &str = "entries.ckpt.tmp";
/// 48 bytes per entry in the checkpoint: 1.9 MB for these, far more than is left free.
const N: u64 = 40_000;

fn key(i: u64) -> String {
    format!("k{i:06}")
}

/// Fill the filesystem holding `dir` with files of `chunk` bytes until it refuses more;
/// returns them.
fn fill(dir: &Path, chunk: usize) -> Vec<PathBuf> {
    let block = vec![0x5au8; chunk];
    let mut files = Vec::new();
    for n in 0.. {
        let p = dir.join(format!("filler-{chunk}-{n}"));
        // Creating the file may already fail: the metadata is full too.
        let Ok(mut f) = std::fs::File::create(&p) else {
            break;
        };
        let ok = f.write_all(&block).and_then(|()| f.sync_data()).is_ok();
        files.push(p);
        if !ok {
            break;
        }
    }
    files
}

fn syncfs(dir: &Path) {
    let st = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .expect("sync -f");
    assert!(st.success());
}

#[test]
fn a_full_disk_at_the_clean_stop_loses_nothing_and_leaves_no_partial_checkpoint() {
    let Some(m) = Mount::btrfs(256, true) else {
        return;
    };
    let dir = m.dir();
    let me = Caller::default();
    let cache = Cache::open(config(&dir), topo2()).expect("open");
    for i in 0..N {
        let k = key(i);
        cache
            .put(
                "full",
                &k,
                &value_for(&k, 1, 64),
                &PutOptions::default(),
                &me,
            )
            .expect("put");
    }
    cache.flush().expect("flush");

    // Fill the filesystem, then give back a little room: enough for the stop's last index
    // commits, not for a 1.9 MB checkpoint.
    let mut fillers = fill(&m.path, 1 << 20);
    fillers.extend(fill(&m.path, 64 << 10));
    for p in fillers.iter().rev().take(1) {
        let _ = std::fs::remove_file(p);
    }
    syncfs(&m.path);

    let res = cache.close();
    eprintln!("close on the full disk: {res:?}");
    assert!(
        !dir.join(CKPT_TMP).exists(),
        "a partial checkpoint temp file was left behind"
    );
    assert!(
        !dir.join(CKPT).exists(),
        "the checkpoint was written after all: the test did not fill the disk (close: {res:?})"
    );
    // The stop itself may succeed (the index is marked clean without a checkpoint) or name
    // the full disk; it must not hang or panic.
    if let Err(e) = &res {
        let text = e.to_string();
        assert!(
            text.contains("space") || text.contains("full"),
            "a failed stop names the full disk: {text}"
        );
    }

    for p in &fillers {
        let _ = std::fs::remove_file(p);
    }
    syncfs(&m.path);
    let cache = Cache::open(config(&dir), topo2()).expect("open after the full-disk stop");
    assert!(
        !cache.opened_from_checkpoint(),
        "there is no checkpoint to load"
    );
    for i in 0..N {
        let k = key(i);
        let v = cache
            .get("full", &k, &me)
            .unwrap_or_else(|e| panic!("{k} was acknowledged and is gone: {e}"));
        assert_eq!(check_value(&k, &v), 1);
    }
    // With room again, the next clean stop writes a checkpoint the open after it uses.
    cache.close().expect("close with room");
    assert!(dir.join(CKPT).exists());
    let cache = Cache::open(config(&dir), topo2()).expect("open from the checkpoint");
    assert!(cache.opened_from_checkpoint());
    assert_eq!(
        check_value(&key(N - 1), &cache.get("full", &key(N - 1), &me).unwrap()),
        1
    );
    cache.close().expect("close");
}

//! Storage engine v2 figures (issue 9), each printed with its baseline measured in the same
//! run on the same filesystem:
//! - put, 8 threads, 4 KiB, default durability, against cacache 13 `write_sync` (8 threads);
//! - sync puts from 8 writers against the physical limit: 8 / (one pwrite + fdatasync of a
//!   small file on the same filesystem), the two measured in turns (five slices each);
//! - disk get (warm page cache, memory tier off), 4 KiB, against cacache `read_sync`;
//! - memory-tier get, 4 KiB, against cacache `read_sync`.
//!
//! `NUMA_CACHE_BENCH_DIR=/mnt/btrfs cargo bench --bench store_v2` (scripts/bench-store.sh
//! makes a loop-mounted btrfs and runs it and store_scale_v2).

use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions};
use numa_cache::topology::Topology;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const SIZE: usize = 4096;

fn base_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("NUMA_CACHE_BENCH_DIR") {
        Some(d) => {
            let p = PathBuf::from(d).join(format!("v2-{}", std::process::id()));
            std::fs::create_dir_all(&p).expect("bench dir");
            (None, p)
        }
        None => {
            let t = tempfile::tempdir().expect("temp dir");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

fn topology() -> Arc<Topology> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    Arc::new(Topology::single_node((0..n).collect()))
}

fn open(dir: &Path, memory_bytes: u64) -> Cache {
    let cfg = CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes,
        max_bytes: 64 << 30,
        ..CacheConfig::default()
    };
    Cache::open(cfg, topology()).expect("open the cache")
}

fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Run `op(thread, i)` on `threads` threads for about `secs`; operations per second.
fn rate(threads: usize, secs: f64, op: impl Fn(usize, u64) + Sync) -> f64 {
    let (n, t) = run_for(threads, secs, op);
    n as f64 / t
}

/// Run `op(thread, i)` on `threads` threads for about `secs`: (operations, seconds).
fn run_for(threads: usize, secs: f64, op: impl Fn(usize, u64) + Sync) -> (u64, f64) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        op(t, n);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (total, t0.elapsed().as_secs_f64())
}

fn line(what: &str, ours: f64, base_name: &str, base: f64, aim: &str) {
    println!(
        "{what}: numa-cache {ours:.0}/s, {base_name} {base:.0}/s, ratio {:.2}x (aim {aim})",
        ours / base
    );
}

fn main() {
    let (_keep, base) = base_dir();
    let secs: f64 = std::env::var("NUMA_CACHE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let me = Caller::default();
    let vals: Vec<Vec<u8>> = (0..256).map(value).collect();
    println!(
        "# store_v2 on {} ({} CPUs), {secs} s per figure",
        base.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // NUMA_CACHE_BENCH_ONLY=sync runs only figure 2 (sync puts against the limit).
    let only_sync = std::env::var("NUMA_CACHE_BENCH_ONLY").is_ok_and(|v| v == "sync");

    // 1. Default puts, 8 threads, against cacache write_sync.
    if !only_sync {
        put_figure(&base, secs, &vals, &me);
    }
    sync_figure(&base, secs, &vals, &me);
    if !only_sync {
        get_figures(&base, secs, &vals, &me);
    }
    if std::env::var_os("NUMA_CACHE_BENCH_DIR").is_some() {
        let _ = std::fs::remove_dir_all(&base);
    }
}

fn put_figure(base: &Path, secs: f64, vals: &[Vec<u8>], me: &Caller) {
    let cc = base.join("cacache-put");
    let cacache_put = rate(THREADS, secs, |t, n| {
        cacache::write_sync(&cc, format!("t{t}-{n}"), &vals[(n % 256) as usize]).expect("cacache");
    });
    let cache = open(&base.join("put"), 0);
    let ours_put = rate(THREADS, secs, |t, n| {
        cache
            .put(
                "b",
                &format!("t{t}-{n}"),
                &vals[(n % 256) as usize],
                &PutOptions::default(),
                me,
            )
            .expect("put");
    });
    line(
        "put 4 KiB x 8 threads, default",
        ours_put,
        "cacache write_sync",
        cacache_put,
        ">= 5x",
    );
    drop(cache);
}

fn sync_figure(base: &Path, secs: f64, vals: &[Vec<u8>], me: &Caller) {
    // 2. Sync puts, 8 writers, against 8 / (one pwrite + fdatasync of a small file). The
    // probe and the puts take turns in SLICES slices, so that both see the same load on a
    // shared machine (one fdatasync's time there varies by 2x from one second to the next;
    // 20 slices of a quarter second track it more closely than 5 of a second did). The
    // figure starts with the filesystem flushed (`sync -f`), so that the writeback of the
    // figure before it is not charged to either side.
    const SLICES: u32 = 20;
    let flushed = std::process::Command::new("sync")
        .arg("-f")
        .arg(base)
        .status()
        .expect("sync -f");
    assert!(flushed.success(), "sync -f {}: {flushed}", base.display());
    let slice = secs / f64::from(SLICES);
    let f = std::fs::File::create(base.join("fsync-probe")).expect("probe file");
    let block = vec![7u8; SIZE];
    let cache = open(&base.join("sync"), 0);
    let sync_opts = PutOptions {
        sync: true,
        ..PutOptions::default()
    };
    let (mut probe_n, mut probe_t, mut puts_n, mut puts_t) = (0u32, 0f64, 0u64, 0f64);
    for round in 0..SLICES {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs_f64(slice) {
            f.write_all_at(&block, u64::from(probe_n % 16) * SIZE as u64)
                .expect("pwrite");
            f.sync_data().expect("fdatasync");
            probe_n += 1;
        }
        probe_t += t0.elapsed().as_secs_f64();
        let (n, t) = run_for(THREADS, slice, |t, n| {
            cache
                .put(
                    "b",
                    &format!("r{round}-t{t}-{n}"),
                    &vals[(n % 256) as usize],
                    &sync_opts,
                    me,
                )
                .expect("sync put");
        });
        puts_n += n;
        puts_t += t;
    }
    let one_fsync = probe_t / f64::from(probe_n);
    let limit = THREADS as f64 / one_fsync;
    let ours_sync = puts_n as f64 / puts_t;
    println!(
        "sync put 4 KiB x 8 writers: numa-cache {ours_sync:.0}/s, limit 8/fdatasync {limit:.0}/s (one fdatasync {:.3} ms), {:.0}% of the limit (aim >= 80%)",
        one_fsync * 1e3,
        100.0 * ours_sync / limit
    );
    drop(cache);
}

fn get_figures(base: &Path, secs: f64, vals: &[Vec<u8>], me: &Caller) {
    // 3 and 4. Gets, one thread, 256 keys, warm, against cacache read_sync.
    let cc = base.join("cacache-get");
    for (i, v) in vals.iter().enumerate() {
        cacache::write_sync(&cc, format!("k{i}"), v).expect("cacache put");
    }
    let cacache_get = rate(1, secs, |_, n| {
        let v = cacache::read_sync(&cc, format!("k{}", n % 256)).expect("cacache get");
        assert_eq!(v.len(), SIZE);
    });
    for (label, mem, aim) in [
        ("disk get warm", 0u64, ">= 3x"),
        ("memory-tier get", 1 << 30, ">= 10x"),
    ] {
        let dir = base.join(format!("get-{mem}"));
        let cache = open(&dir, mem);
        for (i, v) in vals.iter().enumerate() {
            cache
                .put("b", &format!("k{i}"), v, &PutOptions::default(), me)
                .expect("put");
        }
        for i in 0..256 {
            cache.get("b", &format!("k{i}"), me).expect("warm");
        }
        let ours = rate(1, secs, |_, n| {
            let v = cache.get("b", &format!("k{}", n % 256), me).expect("get");
            assert_eq!(v.len(), SIZE);
        });
        line(
            &format!("{label} 4 KiB, 1 thread"),
            ours,
            "cacache read_sync",
            cacache_get,
            aim,
        );
    }
}

//! Scale (issue 9): 10k against N entries of 1.5 KiB (N from `NUMA_CACHE_SCALE_BIG`, default
//! 10,000,000): resident memory per entry after open, open time after a clean stop and after a
//! crash, get latency over a hot set of 1000 keys and over keys drawn uniformly from all.
//! Each measurement runs in a fresh process (this binary re-executed), so RSS is the open
//! cache's own. `NUMA_CACHE_BENCH_DIR=/mnt/btrfs cargo bench --bench store_scale_v2`.

use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions};
use numa_cache::topology::Topology;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE: usize = 1536;

fn topology() -> Arc<Topology> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    Arc::new(Topology::single_node((0..n).collect()))
}

fn open(dir: &Path) -> Cache {
    let cfg = CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes: 0,
        max_bytes: 1 << 40,
        ..CacheConfig::default()
    };
    Cache::open(cfg, topology()).expect("open the cache")
}

fn key(i: u64) -> String {
    format!("key-{i:010}")
}

fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        << 10
}

fn populate(dir: &Path, n: u64) {
    let cache = Arc::new(open(dir));
    let have = cache.totals().entries;
    if have < n {
        let t0 = Instant::now();
        let threads = 8u64;
        std::thread::scope(|s| {
            for t in 0..threads {
                let cache = cache.clone();
                s.spawn(move || {
                    let me = Caller::default();
                    let mut i = have + t;
                    while i < n {
                        cache
                            .put("scale", &key(i), &value(i), &PutOptions::default(), &me)
                            .expect("put");
                        i += threads;
                    }
                });
            }
        });
        eprintln!(
            "populated {} entries in {:.1} s",
            n - have,
            t0.elapsed().as_secs_f64()
        );
    }
    match Arc::try_unwrap(cache) {
        Ok(c) => c.close().expect("close"),
        Err(_) => unreachable!("all threads joined"),
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Mean ns per get over `keys` drawn from 0..n by `pick`, after one warm-up pass.
fn get_ns(cache: &Cache, n: u64, hot: bool) -> f64 {
    let me = Caller::default();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let pick = |x: &mut u64| {
        if hot {
            (xorshift(x) % 1000) * (n / 1000).max(1)
        } else {
            xorshift(x) % n
        }
    };
    for _ in 0..20_000 {
        let i = pick(&mut x);
        cache.get("scale", &key(i), &me).expect("get");
    }
    let t0 = Instant::now();
    let mut count = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        for _ in 0..1000 {
            let i = pick(&mut x);
            let v = cache.get("scale", &key(i), &me).expect("get");
            assert_eq!(v.len(), VALUE);
        }
        count += 1000;
    }
    t0.elapsed().as_nanos() as f64 / count as f64
}

/// In a fresh process: open (timed), RSS per entry, gets; print one line of figures.
fn measure(dir: &Path, n: u64, label: &str) {
    let before = rss_bytes();
    let t0 = Instant::now();
    let cache = open(dir);
    let open_s = t0.elapsed().as_secs_f64();
    let after = rss_bytes();
    let entries = cache.totals().entries;
    assert_eq!(entries, n, "entries after open");
    let per_entry = after.saturating_sub(before) as f64 / n as f64;
    let hot = get_ns(&cache, n, true);
    let uniform = get_ns(&cache, n, false);
    println!(
        "scale {n} entries ({label}): open {open_s:.3} s, RSS per entry {per_entry:.1} B ({} MiB), hot-set get {hot:.0} ns, uniform get {uniform:.0} ns",
        after.saturating_sub(before) >> 20
    );
    cache.close().expect("close");
}

/// In a fresh process: open and die without a clean stop (the next open is "after a crash").
fn crash(dir: &Path) {
    let cache = open(dir);
    cache
        .put(
            "scale",
            "crash-marker",
            b"x",
            &PutOptions::default(),
            &Caller::default(),
        )
        .expect("put");
    std::process::abort();
}

fn child(args: &[&str]) {
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(args)
        .status()
        .expect("re-exec");
    if args[0] != "crash" {
        assert!(status.success(), "{args:?}: {status}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["populate", dir, n] => return populate(Path::new(dir), n.parse().expect("n")),
        ["measure", dir, n, label] => return measure(Path::new(dir), n.parse().expect("n"), label),
        ["crash", dir] => return crash(Path::new(dir)),
        _ => {}
    }
    let base = std::env::var_os("NUMA_CACHE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let big: u64 = std::env::var("NUMA_CACHE_SCALE_BIG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    for n in [10_000u64, big] {
        let dir = base.join(format!("scale-v2-{n}"));
        let d = dir.to_string_lossy().into_owned();
        let ns = n.to_string();
        child(&["populate", &d, &ns]);
        child(&["measure", &d, &ns, "clean stop"]);
        child(&["crash", &d]);
        // The crash left one more entry (its marker): count it.
        let n1 = (n + 1).to_string();
        child(&["measure", &d, &n1, "after a crash"]);
        // Back to n entries for the next run.
        let cache = open(&dir);
        cache
            .delete("scale", "crash-marker", &Caller::default())
            .expect("delete");
        cache.close().expect("close");
    }
}

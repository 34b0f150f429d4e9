//! Scale: get latency with 10k against 1M entries, and open time after a clean stop.
//!
//! `NUMA_CACHE_BENCH_DIR=/mnt/bench cargo bench --bench store_scale` (sizes with
//! `NUMA_CACHE_SCALE=10000,1000000`). The populated caches are kept in the bench dir and
//! reused by later runs; populating 1M entries takes a few minutes (every put is durable).

use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions};
use numa_cache::topology::Topology;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn topology() -> Arc<Topology> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let cpus: Vec<u32> = (0..n).collect();
    Arc::new(Topology::single_node(cpus))
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
    (0..128)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn populate(dir: &Path, n: u64) {
    let cache = Arc::new(open(dir, 0));
    let have = cache.totals().entries;
    if have >= n {
        return;
    }
    eprintln!("populating {dir:?}: {have} -> {n} entries");
    let t0 = Instant::now();
    let threads = 48u64;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut i = have + t;
                while i < n {
                    cache
                        .put(
                            "scale",
                            &format!("key-{i}"),
                            &value(i),
                            &PutOptions::default(),
                            &Caller::default(),
                        )
                        .expect("put");
                    i += threads;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("writer");
    }
    let dt = t0.elapsed();
    eprintln!(
        "populated in {dt:?} ({:.0} durable puts/s with {threads} writers)",
        (n - have) as f64 / dt.as_secs_f64()
    );
}

/// CPU time (user + system) of the whole process so far: on a shared machine the wall time
/// of a CPU-bound step depends on the neighbours, its CPU time much less.
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the buffer it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so the buffer is initialised.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn get_latency(cache: &Cache, n: u64, samples: u64) -> Duration {
    let me = Caller::default();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let keys: Vec<String> = (0..samples)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("key-{}", x % n)
        })
        .collect();
    for k in &keys {
        cache.get("scale", k, &me).expect("warm-up get");
    }
    let t0 = Instant::now();
    for k in &keys {
        std::hint::black_box(cache.get("scale", k, &me).expect("get"));
    }
    t0.elapsed() / samples as u32
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` probes harness-less benches with --list
    }
    let (_tmp, base) = match std::env::var_os("NUMA_CACHE_BENCH_DIR") {
        Some(d) => (None, PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().expect("temp dir");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let sizes: Vec<u64> = std::env::var("NUMA_CACHE_SCALE")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "| entries | open after clean stop, wall (median of 5) | open, CPU time (median) | disk get, 10k hot keys | memory-tier get, 10k hot keys | disk get, all keys | memory-tier get, all keys |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = base.join(format!("scale-{n}"));
        populate(&dir, n);
        let mut cpu = Vec::new();
        let opens: Vec<Duration> = (0..5)
            .map(|_| {
                let (t0, c0) = (Instant::now(), cpu_time());
                let c = open(&dir, 0);
                let dt = t0.elapsed();
                cpu.push(cpu_time() - c0);
                drop(c);
                dt
            })
            .collect();
        let samples = 200_000.min(n * 20);
        // Two key mixes: 10k hot keys (the index's own scaling: same working set, more
        // entries around it) and uniform over every key (the working set grows too).
        let hot = n.min(10_000);
        let (disk_hot, disk_all) = {
            let c = open(&dir, 0);
            (get_latency(&c, hot, samples), get_latency(&c, n, samples))
        };
        let (mem_hot, mem_all) = {
            let c = open(&dir, 4 << 30);
            (get_latency(&c, hot, samples), get_latency(&c, n, samples))
        };
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.2} us | {:.2} us | {:.2} us | {:.2} us |",
            median(opens).as_secs_f64() * 1e3,
            median(cpu).as_secs_f64() * 1e3,
            us(disk_hot),
            us(mem_hot),
            us(disk_all),
            us(mem_all)
        );
    }
}

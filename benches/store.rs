//! numa-cache's engine against cacache 13 (sync API) in the same run, on the same filesystem.
//!
//! Run on a loop-mounted btrfs: `NUMA_CACHE_BENCH_DIR=/mnt/bench cargo bench --bench store`
//! (default: a temp dir). Workloads: text and code from the cargo registry on this machine,
//! 1536-byte float32 vectors (an embedding) and random bytes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions};
use numa_cache::topology::Topology;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 256;

fn base_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("NUMA_CACHE_BENCH_DIR") {
        Some(d) => {
            let p = PathBuf::from(d).join(format!("run-{}", std::process::id()));
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
    let cpus: Vec<u32> = (0..n).collect();
    Arc::new(Topology::single_node(cpus))
}

/// Text and code from the cargo registry sources on this machine (up to 48 MiB).
fn corpus() -> Vec<u8> {
    let mut out = Vec::new();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    let mut stack = vec![home.join("registry/src")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "md" || x == "toml")
                && let Ok(b) = std::fs::read(&p)
            {
                out.extend_from_slice(&b);
                if out.len() > 48 << 20 {
                    return out;
                }
            }
        }
    }
    assert!(
        out.len() > 4 << 20,
        "need some text under ~/.cargo/registry/src for the benchmarks"
    );
    out
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn text_values(corpus: &[u8], size: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| corpus[(i * size * 3) % (corpus.len() - size)..][..size].to_vec())
        .collect()
}

fn random_values(size: usize, n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| (0..size).map(|_| (xorshift(&mut x) >> 24) as u8).collect())
        .collect()
}

/// 384 float32 components (1536 bytes), roughly normal, like a sentence embedding.
fn embeddings(n: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            (0..384)
                .flat_map(|_| {
                    let s: f32 = (0..4)
                        .map(|_| (xorshift(&mut x) >> 40) as f32 / (1u64 << 24) as f32)
                        .sum::<f32>()
                        - 2.0;
                    (s * 0.05).to_le_bytes()
                })
                .collect::<Vec<u8>>()
        })
        .collect()
}

fn open(dir: &Path, memory_bytes: u64) -> Cache {
    open_with(dir, memory_bytes, CacheConfig::default().compress_min_bytes)
}

fn open_with(dir: &Path, memory_bytes: u64, compress_min_bytes: usize) -> Cache {
    let cfg = CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes,
        max_bytes: 64 << 30,
        compress_min_bytes,
        ..CacheConfig::default()
    };
    Cache::open(cfg, topology()).expect("open the cache")
}

fn load(cache: &Cache, cc: &Path, values: &[Vec<u8>]) {
    for (i, v) in values.iter().enumerate() {
        cache
            .put(
                "bench",
                &format!("k{i}"),
                v,
                &PutOptions::default(),
                &Caller::default(),
            )
            .expect("put");
        cacache::write_sync(cc, format!("k{i}"), v).expect("cacache put");
    }
}

/// Get benchmarks for one workload: memory tier, disk (warm page cache) and cacache.
fn gets(c: &mut Criterion, base: &Path, name: &str, values: &[Vec<u8>]) {
    let size = values[0].len();
    let dir = base.join(format!("get-{name}"));
    let cc = base.join(format!("cacache-{name}"));
    let mut g = c.benchmark_group(format!("get/{name}"));
    g.throughput(Throughput::Bytes(size as u64));
    if size >= 1 << 20 {
        g.sample_size(20);
    }
    {
        let cache = open(&dir, 1 << 30);
        load(&cache, &cc, values);
        let me = Caller::default();
        let mut i = 0;
        g.bench_function("numa-cache memory tier", |b| {
            b.iter(|| {
                i = (i + 1) % values.len();
                cache.get("bench", &format!("k{i}"), &me).expect("get")
            })
        });
    }
    {
        let cache = open(&dir, 0);
        let me = Caller::default();
        let mut i = 0;
        g.bench_function("numa-cache disk warm", |b| {
            b.iter(|| {
                i = (i + 1) % values.len();
                cache.get("bench", &format!("k{i}"), &me).expect("get")
            })
        });
    }
    if name.starts_with("text") {
        // The same values with the other storage choice: compressed when the default stores
        // them raw (below compress_min_bytes), raw when it compresses them.
        let default_raw = size < CacheConfig::default().compress_min_bytes;
        let raw = base.join(format!("get-{name}-other"));
        let cache = open_with(&raw, 0, if default_raw { 0 } else { usize::MAX });
        for (i, v) in values.iter().enumerate() {
            cache
                .put(
                    "bench",
                    &format!("k{i}"),
                    v,
                    &PutOptions::default(),
                    &Caller::default(),
                )
                .expect("put");
        }
        let me = Caller::default();
        let mut i = 0;
        let label = if default_raw {
            "numa-cache disk warm, zstd-compressed"
        } else {
            "numa-cache disk warm, stored raw"
        };
        g.bench_function(label, |b| {
            b.iter(|| {
                i = (i + 1) % values.len();
                cache.get("bench", &format!("k{i}"), &me).expect("get")
            })
        });
    }
    let mut i = 0;
    g.bench_function("cacache read_sync", |b| {
        b.iter(|| {
            i = (i + 1) % values.len();
            cacache::read_sync(&cc, format!("k{i}")).expect("cacache get")
        })
    });
    g.finish();
}

fn bench_gets(c: &mut Criterion) {
    let (_keep, base) = base_dir();
    let text = corpus();
    gets(c, &base, "text-4KiB", &text_values(&text, 4096, KEYS));
    gets(c, &base, "text-64KiB", &text_values(&text, 64 << 10, KEYS));
    gets(c, &base, "embedding-1536B", &embeddings(KEYS));
    gets(c, &base, "random-4KiB", &random_values(4096, KEYS, 7));
    gets(c, &base, "random-1MiB", &random_values(1 << 20, 32, 9));
}

/// Puts from 8 threads: numa-cache durable (fsynced by group commit) against cacache's
/// write_sync (no fsync), same values.
fn bench_puts(c: &mut Criterion) {
    let (_keep, base) = base_dir();
    let text = corpus();
    let values = Arc::new(text_values(&text, 4096, 4096));
    let cache = Arc::new(open(&base.join("put"), 256 << 20));
    let cc = base.join("cacache-put");
    let round = std::sync::atomic::AtomicU64::new(0);
    let run_n = |writers: u64, iters: u64, f: Arc<dyn Fn(usize) + Send + Sync>| -> Duration {
        let t0 = Instant::now();
        let per = iters.div_ceil(writers);
        let hs: Vec<_> = (0..writers)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        f((t * per + i) as usize);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("writer thread");
        }
        t0.elapsed()
    };
    for writers in [8u64, 64] {
        let mut g = c.benchmark_group(format!("put/text-4KiB/{writers}-writers"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(10));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("numa-cache durable", writers), |b| {
            b.iter_custom(|iters| {
                let r = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (cache, values) = (cache.clone(), values.clone());
                run_n(
                    writers,
                    iters,
                    Arc::new(move |i| {
                        let v = &values[i % values.len()];
                        cache
                            .put(
                                "bench",
                                &format!("r{r}k{i}"),
                                v,
                                &PutOptions::default(),
                                &Caller::default(),
                            )
                            .expect("put");
                    }),
                )
            })
        });
        g.bench_function(
            BenchmarkId::new("cacache write_sync (no fsync)", writers),
            |b| {
                b.iter_custom(|iters| {
                    let r = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (cc, values) = (cc.clone(), values.clone());
                    run_n(
                        writers,
                        iters,
                        Arc::new(move |i| {
                            cacache::write_sync(
                                &cc,
                                format!("r{r}k{i}"),
                                &values[i % values.len()],
                            )
                            .expect("cacache put");
                        }),
                    )
                })
            },
        );
        g.finish();
    }
    let mut g = c.benchmark_group("put/text-4KiB/1-writer");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("numa-cache durable", |b| {
        b.iter(|| {
            i += 1;
            cache
                .put(
                    "bench1",
                    &format!("k{i}"),
                    &values[i % values.len()],
                    &PutOptions::default(),
                    &Caller::default(),
                )
                .expect("put")
        })
    });
    g.bench_function("cacache write_sync (no fsync)", |b| {
        b.iter(|| {
            i += 1;
            cacache::write_sync(&cc, format!("one{i}"), &values[i % values.len()])
                .expect("cacache put")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_gets, bench_puts);
criterion_main!(benches);

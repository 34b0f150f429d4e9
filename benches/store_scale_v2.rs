//! Scale (issue 9): 10k against N entries of 1.5 KiB (N from `NUMA_CACHE_SCALE_BIG`, default
//! 10,000,000): resident memory per entry after open (and the peak during open), open time
//! after a clean stop (the entry-map checkpoint), after a clean stop without it (the index
//! scan, the baseline) and after a crash (SIGKILL), the clean stop's own time, get latency
//! over a hot set of 1000 keys and over keys drawn uniformly from all.
//! Each measurement runs in a fresh process (this binary re-executed), so RSS is the open
//! cache's own. `NUMA_CACHE_BENCH_DIR=/mnt/btrfs cargo bench --bench store_scale_v2`;
//! `scripts/bench-scale-10m.sh` runs it at 10M on a btrfs image of its own.

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
    status_bytes("VmRSS:")
}

/// A size line of /proc/self/status (VmRSS:, VmHWM:), in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        << 10
}

/// CPU seconds this process used (user + system, all threads; /proc/self/stat in ticks of
/// 1/100 s, USER_HZ on Linux): open's own work, whatever else the machine runs.
fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of the line; 12 and 13 after "(comm) state".
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn populate(dir: &Path, n: u64) {
    let cache = Arc::new(open(dir));
    let have = cache.totals().entries;
    if have < n {
        let t0 = Instant::now();
        let threads = std::env::var("NUMA_CACHE_SCALE_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(16u64);
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
        let s = t0.elapsed().as_secs_f64();
        eprintln!(
            "populated {} entries in {s:.1} s ({:.0} puts/s, {threads} threads, default durability)",
            n - have,
            (n - have) as f64 / s
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

/// In a fresh process: open (timed), RSS per entry, gets, close (timed); print one line of
/// figures. `how`: "scan" removes the checkpoint first (the open scans the index); "cold"
/// drops the checkpoint's pages from the page cache first (as after a reboot).
fn measure(dir: &Path, n: u64, expect: u64, label: &str, how: &str) {
    // The checkpoint's own log line (entries, milliseconds, or why it was not used).
    #[cfg(feature = "server")]
    let _ = tracing_subscriber::fmt()
        .with_env_filter("numa_cache::store::checkpoint=info")
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
    let ckpt = dir.join("entries.ckpt");
    match how {
        "scan" => {
            let _ = std::fs::remove_file(&ckpt);
        }
        "cold" => {
            // GNU dd: iflag=nocache count=0 advises the kernel to drop the whole file's
            // cached pages (this file only, not the machine's page cache).
            let mut arg = std::ffi::OsString::from("if=");
            arg.push(&ckpt);
            let _ = std::process::Command::new("dd")
                .arg(arg)
                .args(["iflag=nocache", "count=0", "status=none"])
                .status();
        }
        _ => {}
    }
    let before = rss_bytes();
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let cache = open(dir);
    let open_s = t0.elapsed().as_secs_f64();
    let open_cpu = cpu_s() - cpu0;
    let after = rss_bytes();
    let peak = status_bytes("VmHWM:");
    let entries = cache.totals().entries;
    assert_eq!(entries, expect, "entries after open");
    let per_entry = after.saturating_sub(before) as f64 / n as f64;
    let hot = get_ns(&cache, n, true);
    let uniform = get_ns(&cache, n, false);
    let path = if cache.opened_from_checkpoint() {
        "checkpoint"
    } else {
        "index scan"
    };
    let t1 = Instant::now();
    cache.close().expect("close");
    let close_s = t1.elapsed().as_secs_f64();
    println!(
        "scale {n} entries ({label}): open {open_s:.3} s ({path}; {open_cpu:.2} s CPU), RSS per entry {per_entry:.1} B ({} MiB; peak during open {} MiB), hot-set get {hot:.0} ns, uniform get {uniform:.0} ns, close {close_s:.3} s",
        after.saturating_sub(before) >> 20,
        peak.saturating_sub(before) >> 20,
    );
    println!("@@RSS {n} {}", after.saturating_sub(before));
    println!("@@HOT {n} {hot:.0}");
    println!("@@OPEN {n} {open_s:.3}");
}

/// In a fresh process: open, put, and die by SIGKILL (the next open is "after a crash").
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
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(5));
    std::process::abort();
}

/// Figures a child reported on its `@@` lines.
#[derive(Default, Clone, Copy)]
struct Figures {
    rss: u64,
    hot_ns: f64,
    open_s: f64,
}

/// Run this binary with `args`; print its output except the `@@` lines, return their
/// figures.
fn child(args: &[&str]) -> Figures {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("re-exec");
    if args[0] != "crash" {
        assert!(out.status.success(), "{args:?}: {}", out.status);
    }
    let mut f = Figures::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut w = line.split_whitespace();
        let (tag, v) = (w.next().unwrap_or(""), w.nth(1).unwrap_or(""));
        match tag {
            "@@RSS" => f.rss = v.parse().unwrap_or(0),
            "@@HOT" => f.hot_ns = v.parse().unwrap_or(0.0),
            "@@OPEN" => f.open_s = v.parse().unwrap_or(0.0),
            _ => println!("{line}"),
        }
    }
    f
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["populate", dir, n] => return populate(Path::new(dir), n.parse().expect("n")),
        ["measure", dir, n, expect, label, how] => {
            return measure(
                Path::new(dir),
                n.parse().expect("n"),
                expect.parse().expect("expected entries"),
                label,
                how,
            );
        }
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
    let mut figs = Vec::new();
    for n in [10_000u64, big] {
        let dir = base.join(format!("scale-v2-{n}"));
        let d = dir.to_string_lossy().into_owned();
        let ns = n.to_string();
        child(&["populate", &d, &ns]);
        // Let the kernel write the populated records back first: the gets measured next
        // should not share the disk with gigabytes of writeback (the order of the runs
        // would show, not the cache).
        let _ = std::process::Command::new("sync")
            .arg("-f")
            .arg(&dir)
            .status();
        let clean = child(&["measure", &d, &ns, &ns, "clean stop", "checkpoint"]);
        child(&[
            "measure",
            &d,
            &ns,
            &ns,
            "clean stop, checkpoint not in the page cache",
            "cold",
        ]);
        let scan = child(&[
            "measure",
            &d,
            &ns,
            &ns,
            "clean stop, checkpoint removed",
            "scan",
        ]);
        figs.push((n, clean, scan));
        child(&["crash", &d]);
        // The crash left one more entry (its marker): count it.
        let n1 = (n + 1).to_string();
        child(&["measure", &d, &ns, &n1, "after a SIGKILL", "checkpoint"]);
        // Back to n entries for the next run.
        let cache = open(&dir);
        cache
            .delete("scale", "crash-marker", &Caller::default())
            .expect("delete");
        cache.close().expect("close");
    }
    if let [(n0, c0, _), (n1, c1, s1)] = figs[..] {
        println!(
            "RSS per entry, marginal from {n0} to {n1} entries: {:.1} B (aim <= 64 B); fixed part {} MiB",
            c1.rss.saturating_sub(c0.rss) as f64 / (n1 - n0) as f64,
            c0.rss >> 20
        );
        println!(
            "open after a clean stop at {n1}: {:.3} s from the checkpoint (aim < 1 s), {:.3} s scanning the index: {:.1}x faster",
            c1.open_s,
            s1.open_s,
            s1.open_s / c1.open_s.max(1e-9)
        );
        println!(
            "hot-set get at {n1} against {n0}: {:.0} ns / {:.0} ns = {:.2}x (aim <= 1.5x)",
            c1.hot_ns,
            c0.hot_ns,
            c1.hot_ns / c0.hot_ns.max(1e-9)
        );
    }
}

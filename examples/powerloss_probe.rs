//! The power-loss lab's probe (tests/lab_powerloss.rs), run inside a QEMU guest whose cache
//! directory is on a btrfs virtio disk.
//!
//! `powerloss_probe write DIR NS SECS`: four threads put values for 8 keys each, two with
//! default puts and two with sync puts, and print what was acknowledged (`A d|s KEY VERSION
//! MS`, batched every 100 ms, MS since the start); after SECS it prints `@@CUT MS` and cuts
//! the power with sysrq-b (an immediate reset: nothing is synced, the guest's page cache is
//! lost).
//! `powerloss_probe check DIR NS`: opens the cache (recovery runs) and prints each key's state:
//! `G KEY VERSION`, `G KEY miss`, `G KEY corrupt MESSAGE` or `G KEY wrong` (bytes that are
//! not a whole version of that key's value).

use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions, StoreError};
use numa_cache::topology::Topology;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const THREADS: usize = 4;
const KEYS: usize = 8;

fn value(key: &str, version: u64, len: usize) -> Vec<u8> {
    let mut out = format!("{key}#{version}#{len}|").into_bytes();
    let mut x = xxhash_rust::xxh3::xxh3_64(key.as_bytes())
        ^ version.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(if version % 2 == 0 {
            b'a' + (x % 7) as u8
        } else {
            (x >> 32) as u8
        });
    }
    out
}

/// The version `v` holds if it is exactly a version of `key`'s value.
fn version_of(key: &str, v: &[u8]) -> Option<u64> {
    let head = String::from_utf8_lossy(&v[..v.len().min(100)]).into_owned();
    let mut p = head.splitn(4, ['#', '|']);
    if p.next()? != key {
        return None;
    }
    let ver: u64 = p.next()?.parse().ok()?;
    let len: usize = p.next()?.parse().ok()?;
    (value(key, ver, len) == v).then_some(ver)
}

fn key_name(t: usize, k: usize) -> String {
    format!("t{t}k{k}")
}

fn open(dir: &str) -> Cache {
    let cpus: Vec<u32> =
        (0..std::thread::available_parallelism().map_or(1, |n| n.get() as u32)).collect();
    let cfg = CacheConfig {
        dir: dir.into(),
        max_bytes: 256 << 20,
        memory_bytes: 0,
        ..CacheConfig::default()
    };
    Cache::open(cfg, Arc::new(Topology::single_node(cpus))).unwrap_or_else(|e| {
        println!("@@OPEN-FAILED {e}");
        std::process::exit(3)
    })
}

/// Latest acknowledged (version, ms since start, full flushes completed before the answer)
/// per (mode, key) since the last print.
type Acks = Arc<Mutex<BTreeMap<(char, String), (u64, u128, u64)>>>;

fn write(dir: &str, ns: &str, secs: u64) {
    let cache = Arc::new(open(dir));
    let t0 = Instant::now();
    let acks: Acks = Arc::default();
    for t in 0..THREADS {
        let (cache, acks, ns) = (cache.clone(), acks.clone(), ns.to_string());
        std::thread::spawn(move || {
            let sync = t >= THREADS / 2;
            let opts = PutOptions {
                sync,
                ..PutOptions::default()
            };
            let me = Caller::default();
            for v in 1u64.. {
                for k in 0..KEYS {
                    let key = key_name(t, k);
                    let len = 300
                        + (xxhash_rust::xxh3::xxh3_64(format!("{key}{v}").as_bytes()) % 12_000)
                            as usize;
                    if let Err(e) = cache.put(&ns, &key, &value(&key, v, len), &opts, &me) {
                        println!("@@PUT-FAILED {key} {v} {e}");
                        continue;
                    }
                    let ms = t0.elapsed().as_millis();
                    let flushes = cache.full_flushes();
                    acks.lock()
                        .unwrap()
                        .insert((if sync { 's' } else { 'd' }, key), (v, ms, flushes));
                    if !sync {
                        std::thread::sleep(Duration::from_millis(3));
                    }
                }
            }
        });
    }
    let deadline = t0 + Duration::from_secs(secs);
    let out = std::io::stdout();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let batch = std::mem::take(&mut *acks.lock().unwrap());
        let mut o = out.lock();
        for ((mode, key), (v, ms, flushes)) in batch {
            let _ = writeln!(o, "A {mode} {key} {v} {ms} {flushes}");
        }
        let _ = o.flush();
        if Instant::now() >= deadline {
            let _ = writeln!(
                o,
                "@@CUT {} {}",
                t0.elapsed().as_millis(),
                cache.full_flushes()
            );
            let _ = o.flush();
            drop(o);
            // The serial port drains its buffer meanwhile (the puts go on); acknowledgements
            // of this last stretch are not printed, so they are not judged.
            std::thread::sleep(Duration::from_millis(500));
            // The power goes now: no sync, no clean stop, puts in flight.
            let _ = std::fs::write("/proc/sysrq-trigger", b"b");
            std::thread::sleep(Duration::from_secs(30));
            println!("@@CUT-FAILED");
            std::process::exit(4);
        }
    }
}

fn check(dir: &str, ns: &str) {
    let t0 = Instant::now();
    let cache = open(dir);
    println!("@@OPENED {} ms", t0.elapsed().as_millis());
    let me = Caller::default();
    for t in 0..THREADS {
        for k in 0..KEYS {
            let key = key_name(t, k);
            match cache.get(ns, &key, &me) {
                Ok(v) => match version_of(&key, &v) {
                    Some(ver) => println!("G {key} {ver}"),
                    None => println!("G {key} wrong"),
                },
                Err(StoreError::NotFound { .. }) => println!("G {key} miss"),
                Err(e) => println!("G {key} corrupt {e}"),
            }
        }
    }
    println!("@@STATS {}", cache.stats_json());
    if let Err(e) = cache.close() {
        println!("@@CLOSE-FAILED {e}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match (args.first().map(String::as_str), args.get(1), args.get(2)) {
        (Some("write"), Some(dir), Some(ns)) => {
            let secs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(6);
            write(dir, ns, secs)
        }
        (Some("check"), Some(dir), Some(ns)) => check(dir, ns),
        _ => {
            eprintln!("usage: powerloss_probe write DIR NS SECS | check DIR NS");
            std::process::exit(2)
        }
    }
}

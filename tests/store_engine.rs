//! Engine behaviour on a real btrfs: argument rules, limits, TTL, the disk bound, the memory
//! tier bound, namespace ownership, strategies, topology changes, statistics, and many
//! threads on the same keys.

mod store_util;

use numa_cache::placement::{MemoryPolicy, Strategy, StrategyConfig};
use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use store_util::{Mount, check_value, config, topo1, topo2, value_for};

const ME: Caller = Caller {
    uid: None,
    cpu: None,
};

#[test]
fn arguments_are_checked_and_named() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let mut cfg = config(&m.dir());
    cfg.max_value_bytes = 1000;
    let cache = Cache::open(cfg, topo1()).unwrap();
    let o = PutOptions::default();
    for (ns, key, what) in [
        ("Bad", "k", "namespace \"Bad\""),
        ("_x", "k", "namespace"),
        ("ok", "", "key \"\""),
        ("ok", &"k".repeat(1025), "1025 bytes"),
    ] {
        match cache.put(ns, key, b"v", &o, &ME) {
            Err(StoreError::InvalidArgument(msg)) => assert!(msg.contains(what), "{msg}"),
            other => panic!("{ns}/{key}: {other:?}"),
        }
        assert!(matches!(
            cache.get(ns, key, &ME),
            Err(StoreError::InvalidArgument(_))
        ));
    }
    match cache.put("ok", "big", &[0u8; 1001], &o, &ME) {
        Err(
            e @ StoreError::TooLarge {
                size: 1001,
                limit: 1000,
            },
        ) => assert!(e.to_string().contains("1001")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        cache.get("ok", "nothing", &ME),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!cache.delete("ok", "nothing", &ME).unwrap());
    cache.put("ok", "k", b"value", &o, &ME).unwrap();
    let info = cache.lookup("ok", "k").unwrap();
    assert_eq!((info.size, info.node, info.expires), (5, 0, None));
    assert!(cache.delete("ok", "k", &ME).unwrap());
    assert!(matches!(
        cache.lookup("ok", "k"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn ttl_expires_and_counts() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    // Expiry has one-second resolution: a 3 s TTL is still there right after the puts
    // however slow they are, and gone 4 s later.
    let o = PutOptions {
        ttl: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    cache.put("t", "short", b"soon gone", &o, &ME).unwrap();
    cache
        .put("t", "long", b"stays", &PutOptions::default(), &ME)
        .unwrap();
    if t0.elapsed() < Duration::from_secs(2) {
        assert_eq!(cache.get("t", "short", &ME).unwrap(), b"soon gone");
    }
    assert!(cache.lookup("t", "short").unwrap().expires.is_some());
    std::thread::sleep(Duration::from_secs(4).saturating_sub(t0.elapsed()));
    assert!(matches!(
        cache.get("t", "short", &ME),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        cache.lookup("t", "short"),
        Err(StoreError::NotFound { .. })
    ));
    cache.flush().unwrap();
    let t = cache.totals();
    assert_eq!((t.entries, t.evictions), (1, 1), "{t:?}");
    assert_eq!(cache.get("t", "long", &ME).unwrap(), b"stays");
}

#[test]
fn disk_bound_evicts_least_recently_used() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let mut cfg = config(&m.dir());
    cfg.max_bytes = 256 << 10;
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg, topo1()).unwrap();
    let o = PutOptions::default();
    cache
        .put("e", "hot", &value_for("hot", 1, 8192), &o, &ME)
        .unwrap();
    for i in 0..300 {
        let k = format!("k{i}");
        let v = value_for(&k, 1, 8192); // incompressible
        cache.put("e", &k, &v, &o, &ME).unwrap();
        let stored = cache.totals().stored_bytes;
        assert!(
            stored <= (256 << 10) + 8192 + 200,
            "{stored} bytes stored after put {i}"
        );
        cache.get("e", "hot", &ME).unwrap();
    }
    let t = cache.totals();
    assert!(t.evictions >= 260, "{t:?}");
    assert_eq!(
        check_value("hot", &cache.get("e", "hot", &ME).unwrap()),
        1,
        "the hot entry survived"
    );
    assert!(
        matches!(cache.get("e", "k0", &ME), Err(StoreError::NotFound { .. })),
        "the oldest went first"
    );
    // Evicted records are dead space, reclaimed a segment at a time (removed when empty,
    // compacted when mostly dead): the disk holds a bounded multiple of the cap, not all
    // 2.4 MiB written.
    cache.flush().unwrap();
    let on_disk = store_util::segment_bytes(&m.dir());
    assert!(
        on_disk <= 5 * (256 << 10) / 2,
        "{on_disk} bytes of segments for a 256 KiB cap"
    );
    // A value that can never fit the bound.
    assert!(matches!(
        cache.put("e", "huge", &value_for("huge", 1, 300 << 10), &o, &ME),
        Err(StoreError::TooLarge { .. })
    ));
}

#[test]
fn memory_tier_is_bounded_and_serves_hits() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let mut cfg = config(&m.dir());
    cfg.memory_bytes = 1 << 20;
    let cache = Cache::open(cfg, topo1()).unwrap();
    for i in 0..200 {
        let k = format!("k{i}");
        cache
            .put(
                "m",
                &k,
                &value_for(&k, 2, 16 << 10),
                &PutOptions::default(),
                &ME,
            )
            .unwrap();
        assert_eq!(check_value(&k, &cache.get("m", &k, &ME).unwrap()), 2);
        let tier = cache.node_stats(0).unwrap().memory_tier_bytes;
        assert!(tier <= 1 << 20, "memory tier holds {tier} bytes");
    }
    let n = cache.node_stats(0).unwrap();
    assert!(n.memory_tier_bytes > 512 << 10, "{n:?}");
    assert_eq!((n.entries, n.hits, n.misses), (200, 200, 0));
}

#[test]
fn many_threads_on_the_same_keys_no_torn_values_counters_add_up() {
    let Some(m) = Mount::btrfs(512, false) else {
        return;
    };
    let mut cfg = config(&m.dir());
    cfg.memory_bytes = 256 << 10; // small: reads go to disk too
    let cache = Arc::new(Cache::open(cfg, topo2()).unwrap());
    let gets = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (cache, gets) = (cache.clone(), gets.clone());
            std::thread::spawn(move || {
                for i in 0..60u64 {
                    let k = format!("shared{}", i % 6);
                    let v = value_for(&k, t * 1000 + i, 1000 + (i as usize % 3) * 30_000);
                    cache
                        .put("same", &k, &v, &PutOptions::default(), &ME)
                        .unwrap();
                    for j in 0..3 {
                        let k = format!("shared{}", (i + j) % 6);
                        gets.fetch_add(1, Ordering::Relaxed);
                        match cache.get("same", &k, &ME) {
                            Ok(v) => {
                                check_value(&k, &v);
                            }
                            Err(StoreError::NotFound { .. }) => {}
                            Err(e) => panic!("{k}: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let t = cache.totals();
    assert_eq!(t.hits + t.misses, gets.load(Ordering::Relaxed), "{t:?}");
    assert_eq!(t.entries, 6);
    let per_node: u64 = [0, 1]
        .iter()
        .map(|&n| cache.node_stats(n).unwrap().entries)
        .sum();
    assert_eq!(per_node, 6);
    // Replaced records stay on disk as dead space until reclaimed, so a rebuild from the
    // records alone must pick the newest of each key: the same values as the live index.
    let before: Vec<Vec<u8>> = (0..6)
        .map(|i| cache.get("same", &format!("shared{i}"), &ME).unwrap())
        .collect();
    drop(cache);
    std::fs::remove_file(m.dir().join("index.db")).unwrap();
    let cache = Cache::open(config(&m.dir()), topo2()).unwrap();
    assert_eq!(cache.totals().entries, 6);
    for (i, v) in before.iter().enumerate() {
        assert_eq!(&cache.get("same", &format!("shared{i}"), &ME).unwrap(), v);
    }
}

#[test]
fn namespaces_belong_to_their_first_writer() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    let alice = Caller {
        uid: Some(1000),
        cpu: None,
    };
    let bob = Caller {
        uid: Some(1001),
        cpu: None,
    };
    let root = Caller {
        uid: Some(0),
        cpu: None,
    };
    cache
        .put("alice", "k", b"mine", &PutOptions::default(), &alice)
        .unwrap();
    let e = cache
        .put("alice", "k", b"bob's", &PutOptions::default(), &bob)
        .unwrap_err();
    assert!(
        matches!(e, StoreError::PermissionDenied(ref m) if m.contains("1000") && m.contains("1001")),
        "{e}"
    );
    assert!(matches!(
        cache.delete("alice", "k", &bob),
        Err(StoreError::PermissionDenied(_))
    ));
    assert!(matches!(
        cache.clear("alice", &bob),
        Err(StoreError::PermissionDenied(_))
    ));
    assert_eq!(
        cache.get("alice", "k", &bob).unwrap(),
        b"mine",
        "others may read"
    );
    cache
        .put("alice", "k2", b"root may", &PutOptions::default(), &root)
        .unwrap();
    cache
        .put(
            "alice",
            "k3",
            b"in-process may",
            &PutOptions::default(),
            &ME,
        )
        .unwrap();
    assert_eq!(cache.clear("alice", &alice).unwrap(), 3);
    drop(cache);
    // Ownership survives a restart.
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    assert!(matches!(
        cache.put("alice", "k", b"x", &PutOptions::default(), &bob),
        Err(StoreError::PermissionDenied(_))
    ));
}

#[test]
fn strategy_is_persisted_and_changing_it_leaves_entries_in_place() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo2()).unwrap();
    let pinned = |n: u32| Caller {
        uid: None,
        cpu: Some(if n == 0 { 0 } else { topo2().nodes[1].cpus[0] }),
    };
    // local_node: the caller's node.
    assert_eq!(
        cache
            .put("s", "from0", b"a", &PutOptions::default(), &pinned(0))
            .unwrap(),
        0
    );
    if topo2().nodes[1].cpus[0] != 0 {
        assert_eq!(
            cache
                .put("s", "from1", b"b", &PutOptions::default(), &pinned(1))
                .unwrap(),
            1
        );
    }
    let rr = StrategyConfig {
        strategy: Strategy::RoundRobin,
        node_preference: None,
        memory_policy: MemoryPolicy::Default,
    };
    cache.set_strategy(rr).unwrap();
    let nodes: Vec<u32> = (0..4)
        .map(|i| {
            cache
                .put("s", &format!("rr{i}"), b"c", &PutOptions::default(), &ME)
                .unwrap()
        })
        .collect();
    assert!(nodes.contains(&0) && nodes.contains(&1), "{nodes:?}");
    assert_eq!(
        cache.lookup("s", "from0").unwrap().node,
        0,
        "existing entries stay"
    );
    let bad = StrategyConfig {
        node_preference: Some(5),
        ..rr
    };
    assert!(
        matches!(cache.set_strategy(bad), Err(StoreError::InvalidArgument(ref m)) if m.contains("node_preference") && m.contains("node 5"))
    );
    let pref = StrategyConfig {
        node_preference: Some(1),
        ..rr
    };
    cache.set_strategy(pref).unwrap();
    assert_eq!(
        cache
            .put("s", "pref", b"d", &PutOptions::default(), &pinned(0))
            .unwrap(),
        1
    );
    drop(cache);
    let cache = Cache::open(config(&m.dir()), topo2()).unwrap();
    assert_eq!(cache.strategy(), pref, "restored from numa_strategies");
    assert_eq!(cache.stats_json()["strategy"], "round_robin");
}

#[test]
fn vanished_node_entries_stay_readable() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo2()).unwrap();
    let o1 = PutOptions {
        node: Some(1),
        ..Default::default()
    };
    for i in 0..10 {
        let k = format!("k{i}");
        cache
            .put("v", &k, &value_for(&k, 0, 5000), &o1, &ME)
            .unwrap();
    }
    cache.update_topology(topo1());
    assert_eq!(cache.topology().nodes.len(), 1);
    for i in 0..10 {
        let k = format!("k{i}");
        assert_eq!(check_value(&k, &cache.get("v", &k, &ME).unwrap()), 0);
    }
    assert!(matches!(
        cache.put("v", "new", b"x", &o1, &ME),
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(cache.node_stats(1).unwrap().entries, 10);
    drop(cache);
    // Also after a restart on the smaller machine.
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    assert_eq!(check_value("k3", &cache.get("v", "k3", &ME).unwrap()), 0);
}

#[test]
fn stats_have_the_seed_shape_and_history_rows() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    cache
        .put(
            "st",
            "a",
            &value_for("a", 0, 10_000),
            &PutOptions::default(),
            &ME,
        )
        .unwrap();
    cache.get("st", "a", &ME).unwrap();
    let _ = cache.get("st", "missing", &ME);
    let s = cache.stats_json();
    let n0 = &s["node_distribution"]["0"];
    assert_eq!(n0["cache_entries"], 1);
    assert_eq!(n0["hit_rate"], 0.5);
    assert_eq!(n0["logical_bytes"], 10_000);
    assert!(
        n0["stored_bytes"].as_u64().unwrap() < 10_000,
        "text-like values are compressed"
    );
    assert_eq!(s["numa_benefits"]["single_node"], true);
    assert_eq!(s["numa_benefits"]["latency_improvement_ms"], 0.0);
    assert_eq!(s["numa_benefits"]["memory_bandwidth_gain"], 1.0);
    assert_eq!(s["totals"]["local_hit_ratio"], 1.0);
    cache.record_stats().unwrap();
    let h = cache.history(0, u64::MAX / 2).unwrap();
    let rows = h.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["cache_entries"], 1);
    assert_eq!(rows[0]["node_id"], 0);
    cache.reset_counters();
    assert_eq!(cache.totals().hits, 0);
    assert_eq!(cache.totals().entries, 1);
}

/// Gets are timed and counted as local (the caller's CPU is on the serving node) or remote.
/// The two synthetic nodes share one memory, so the test makes the difference itself: a
/// caller's local gets read 65 bytes, its remote gets 4 MiB. The engine's figures must then
/// show remote gets slower, with the means the test timed around the same calls: agreement
/// of the gain and the improvement alone would also hold with local and remote swapped.
#[test]
fn two_nodes_local_and_remote_gets_are_measured() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let topo = topo2();
    let cpu_of = |n: usize| topo.nodes[n].cpus[0];
    if cpu_of(0) == cpu_of(1) {
        store_util::support::skip("one CPU: the two synthetic nodes cannot differ");
        return;
    }
    const ROUNDS: u64 = 20;
    let mut cfg = config(&m.dir());
    // Every get reads the shard: one tier, so the engine's figures are plain means.
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg, topo.clone()).unwrap();
    // Random bytes: stored as they are (not compressed), so each remote get reads 4 MiB.
    let mut large = vec![0u8; 4 << 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut large,
    )
    .unwrap();
    let small = b"local".repeat(13);
    for n in 0..2u32 {
        let o = PutOptions {
            node: Some(n),
            ..Default::default()
        };
        cache
            .put("nb", &format!("small{n}"), &small, &o, &ME)
            .unwrap();
        cache
            .put("nb", &format!("large{n}"), &large, &o, &ME)
            .unwrap();
    }
    // Seconds the test timed, local and remote.
    let (mut local, mut remote) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        for c in 0..2usize {
            let caller = Caller {
                uid: None,
                cpu: Some(cpu_of(c)),
            };
            for (key, want, sum) in [
                (format!("small{c}"), &small, &mut local),
                (format!("large{}", 1 - c), &large, &mut remote),
            ] {
                let t = std::time::Instant::now();
                let v = cache.get("nb", &key, &caller).unwrap();
                *sum += t.elapsed().as_secs_f64();
                assert!(v == *want, "{key} reads other bytes");
            }
        }
    }
    let (local_ms, remote_ms) = (
        local * 1e3 / (2 * ROUNDS) as f64,
        remote * 1e3 / (2 * ROUNDS) as f64,
    );
    let s = cache.stats_json();
    let b = &s["numa_benefits"];
    assert_eq!(b["single_node"], false);
    assert_eq!(b["local_samples"], 2 * ROUNDS, "{b}");
    assert_eq!(b["remote_samples"], 2 * ROUNDS, "{b}");
    assert_eq!(s["totals"]["local_hit_ratio"], 0.5);
    // gain = remote mean / local mean, improvement = remote mean - local mean: both means
    // follow from the two, and each is a sum of windows inside the test's own timings.
    let gain = b["memory_bandwidth_gain"].as_f64().unwrap();
    let improvement = b["latency_improvement_ms"].as_f64().unwrap();
    let said =
        format!("{b}; the test timed local {local_ms:.3} ms, remote {remote_ms:.3} ms on average");
    eprintln!("{said}");
    assert!(
        gain > 1.0 && improvement > 0.0,
        "remote gets not slower: {said}"
    );
    let engine_local = improvement / (gain - 1.0);
    let engine_remote = engine_local * gain;
    assert!(
        engine_local <= local_ms * 1.01 + 1e-3,
        "local mean {engine_local:.3} ms: {said}"
    );
    assert!(
        engine_remote <= remote_ms * 1.01 + 1e-3 && engine_remote >= remote_ms / 2.0,
        "remote mean {engine_remote:.3} ms: {said}"
    );
    assert_eq!(s["node_distribution"]["1"]["cache_entries"], 2);
}

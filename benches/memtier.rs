//! What keeping the memory tier in node-bound memory costs (issue 13), each figure against a
//! baseline measured in the same run:
//!
//! - insert: a copy into the node's arena (mbind'd slots or a mapping of its own) against a
//!   copy onto the heap (`Arc<[u8]>`, the tier before the fix);
//! - hit: reading a value out of the tier (copied out, as `Cache::get` does) from the node
//!   arena against from the heap: the same memory access, so ~1x;
//! - the alternative the issue names, serving every tier hit on the owning node's worker:
//!   a hit through `NodePools::run` against a hit on the calling thread.
//!
//! Run: `cargo bench --bench memtier` (or scripts/bench-memtier.sh). Prints a markdown table.

use numa_cache::placement::{NodePools, StrategyConfig};
use numa_cache::store::memtier::{MemTier, NodeArena};
use numa_cache::topology::Topology;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Median time of one call of `f`, over `rounds` batches of `per` calls.
fn median_per_call(rounds: usize, per: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut v: Vec<Duration> = (0..rounds)
        .map(|r| {
            let t = Instant::now();
            for i in 0..per {
                f(r * per + i);
            }
            t.elapsed() / per as u32
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 31 } else { 3 };
    let node = numa_cache::policy::mems_allowed()
        .ok()
        .and_then(|n| n.first().copied())
        .unwrap_or(0);
    println!("| measurement | node-bound tier | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    for (label, len, per) in [("4 KiB", 4096usize, 2000usize), ("1 MiB", 1 << 20, 20)] {
        let value = vec![7u8; len];
        // Insert: arena copy vs heap copy. Each inserted value is dropped right away, so the
        // arena's slot or mapping is freed and made again, as under eviction.
        let arena = NodeArena::new(Some(node));
        let bound = median_per_call(rounds, per, |_| {
            black_box(arena.copy_in(black_box(&value)).expect("arena copy"));
        });
        let heap = median_per_call(rounds, per, |_| {
            black_box(Arc::<[u8]>::from(black_box(&value[..])));
        });
        println!(
            "| copy a {label} value in (insert) | {:.0} ns | heap `Arc<[u8]>` {:.0} ns | {:.2}x |",
            ns(bound),
            ns(heap),
            ns(bound) / ns(heap)
        );
        // Hit: the tier's get plus the copy out that Cache::get makes.
        let tier = MemTier::on_node(node, 64 << 20);
        let ids = 16u64;
        for id in 0..ids {
            tier.insert(id, &value);
        }
        let heap_tier: Vec<Arc<[u8]>> = (0..ids).map(|_| Arc::from(&value[..])).collect();
        let hit = median_per_call(rounds, per, |i| {
            let v = tier.get(i as u64 % ids).expect("held");
            black_box(v.to_vec());
        });
        let heap_hit = median_per_call(rounds, per, |i| {
            let v = Arc::clone(&heap_tier[i % ids as usize]);
            black_box(v.to_vec());
        });
        println!(
            "| {label} hit, copied out | {:.0} ns | heap value {:.0} ns | {:.2}x |",
            ns(hit),
            ns(heap_hit),
            ns(hit) / ns(heap_hit)
        );
        // The other design: every hit served on the node's worker (a hop per hit).
        let cpus: Vec<u32> = numa_cache::policy::get_affinity(0).unwrap_or_default();
        let pools = NodePools::start(&Topology::single_node(cpus), &StrategyConfig::default());
        let tier = Arc::new(tier);
        let hop = median_per_call(rounds, per, |i| {
            let t = Arc::clone(&tier);
            let id = i as u64 % ids;
            black_box(pools.run(node, move || t.get(id).map(|v| v.to_vec())));
        });
        println!(
            "| {label} hit served on the node's worker (the alternative) | {:.0} ns | hit on the calling thread {:.0} ns | {:.2}x |",
            ns(hop),
            ns(hit),
            ns(hop) / ns(hit)
        );
    }
    // Footprint of small values: a 100-byte value takes a 128-byte slot.
    let t = MemTier::on_node(node, 64 << 20);
    for id in 0..10_000u64 {
        t.insert(id, [1u8; 100]);
    }
    println!(
        "| 10,000 values of 100 B, bytes charged | {} B ({} B each) | the values' own 1,000,000 B | {:.2}x |",
        t.bytes(),
        t.bytes() / 10_000,
        t.bytes() as f64 / 1e6
    );
}

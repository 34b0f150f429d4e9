//! Cost of recording a request latency (`LatencyHistogram::observe`, lock-free atomics)
//! against a baseline histogram behind a `Mutex`, alone and with a second thread recording at
//! the same time; and the cost of rendering /metrics for an 8-node cache.

use criterion::{Criterion, criterion_group, criterion_main};
use numa_cache::app::stats::{CacheLatency, LATENCY_BUCKETS_NANOS, LatencyHistogram};
use numa_cache::gateway::metrics::{MetricsInput, render_prometheus};
use numa_cache::placement::StrategyConfig;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The baseline: the same buckets, counted under a lock.
#[derive(Default)]
struct LockedHistogram {
    inner: Mutex<([u64; 19], u64)>,
}

impl LockedHistogram {
    fn observe(&self, d: Duration) {
        let nanos = d.as_nanos() as u64;
        let slot = LATENCY_BUCKETS_NANOS.partition_point(|&b| b < nanos);
        if let Ok(mut g) = self.inner.lock() {
            g.0[slot] += 1;
            g.1 += nanos;
        }
    }
}

/// Run `record` in a loop on a second thread while `body` is measured.
fn with_contender(record: impl Fn() + Send + 'static, body: impl FnOnce()) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            record();
        }
    });
    body();
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
}

fn observe(c: &mut Criterion) {
    let d = Duration::from_micros(42);
    let mut g = c.benchmark_group("observe");
    let atomic = Arc::new(LatencyHistogram::new());
    let locked = Arc::new(LockedHistogram::default());
    g.bench_function("atomic", |b| b.iter(|| atomic.observe(black_box(d))));
    g.bench_function("mutex_baseline", |b| {
        b.iter(|| locked.observe(black_box(d)))
    });
    let other = atomic.clone();
    with_contender(
        move || other.observe(d),
        || {
            g.bench_function("atomic_contended", |b| {
                b.iter(|| atomic.observe(black_box(d)))
            });
        },
    );
    let other = locked.clone();
    with_contender(
        move || other.observe(d),
        || {
            g.bench_function("mutex_baseline_contended", |b| {
                b.iter(|| locked.observe(black_box(d)))
            });
        },
    );
    g.finish();
}

fn render(c: &mut Criterion) {
    let mut dist = serde_json::Map::new();
    for n in 0..8 {
        dist.insert(
            n.to_string(),
            serde_json::json!({"cache_entries": 15420, "memory_usage_mb": 45, "hit_rate": 0.94,
                "logical_bytes": 1u64 << 30, "stored_bytes": 1u64 << 29, "memory_tier_bytes": 1u64 << 26,
                "hits": 123456, "misses": 789}),
        );
    }
    let stats = serde_json::json!({"node_distribution": dist,
        "totals": {"evictions": 5, "local_hit_ratio": 0.9}, "btrfs": true});
    let latency = CacheLatency::default();
    latency.get.observe(Duration::from_micros(30));
    let snap = latency.snapshot();
    let strategy = StrategyConfig::default();
    // /metrics: the typed report the application builds, rendered directly.
    let mut report: numa_cache::app::StatsReport =
        serde_json::from_value(stats.clone()).expect("a statistics report");
    report.request_latency = Some(snap);
    c.bench_function("render_metrics_typed_8_nodes", |b| {
        b.iter(|| numa_cache::gateway::metrics::render_metrics(black_box(&report), 3, &strategy))
    });
    // numacachectl: the GetStats JSON read into the report, then rendered.
    c.bench_function("render_prometheus_from_json_8_nodes", |b| {
        b.iter(|| {
            let report: numa_cache::app::StatsReport =
                serde_json::from_value(black_box(&stats).clone()).expect("a statistics report");
            render_prometheus(&MetricsInput {
                stats: &report,
                generation: 3,
                strategy: strategy.strategy.as_str(),
                node_preference: strategy.node_preference,
                memory_policy: strategy.memory_policy.as_str(),
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = observe, render
}
criterion_main!(benches);

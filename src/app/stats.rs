//! Statistics, typed from the engine to each front-end: the report behind D-Bus `GetStats`,
//! HTTP `/api/v1/numa/cache/stats` and `/metrics` (one struct, the client crate's
//! [`StatsReport`], so the three agree field for field and a client reads the same type),
//! filled here from the engine's figures; and the data-plane latency histograms the
//! application layer records into without locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use numa_cache_client::metrics::{
    Benefits, HistogramSnapshot, LatencySnapshot, NodeRow, STATS_LATENCY_KEY, StatsReport, Totals,
};

impl From<crate::store::StatsTotals> for Totals {
    fn from(t: crate::store::StatsTotals) -> Totals {
        Totals {
            entries: t.entries,
            logical_bytes: t.logical_bytes,
            stored_bytes: t.stored_bytes,
            hits: t.hits,
            misses: t.misses,
            hit_rate: t.hit_rate,
            evictions: t.evictions,
            local_hit_ratio: t.local_hit_ratio,
        }
    }
}

impl From<crate::store::CacheStats> for StatsReport {
    /// The engine's typed figures as the report the front-ends render (latencies are the
    /// application's, added by it).
    fn from(s: crate::store::CacheStats) -> StatsReport {
        let b = s.numa_benefits;
        StatsReport {
            node_distribution: s
                .node_distribution
                .into_iter()
                .map(|(node, r)| {
                    let row = NodeRow {
                        cache_entries: r.entries,
                        memory_usage_mb: r.memory_tier_bytes >> 20,
                        hit_rate: r.hit_rate,
                        logical_bytes: r.logical_bytes,
                        stored_bytes: r.stored_bytes,
                        memory_tier_bytes: r.memory_tier_bytes,
                        hits: r.hits,
                        misses: r.misses,
                        evictions: None,
                        local_hit_ratio: None,
                    };
                    (node, row)
                })
                .collect(),
            numa_benefits: Benefits {
                latency_improvement_ms: b.latency_improvement_ms,
                memory_bandwidth_gain: b.memory_bandwidth_gain,
                single_node: b.single_node,
                local_samples: b.local_samples,
                remote_samples: b.remote_samples,
            },
            totals: s.totals.into(),
            corrupted: s.corrupted,
            btrfs: s.btrfs,
            strategy: s.strategy,
            request_latency: None,
            // The application's own figures, added by it.
            lease_waiters: 0,
            lease_waits_refused: 0,
        }
    }
}

impl crate::app::App {
    /// Tick the statistics watch ([`App::stats_changes`](crate::app::App::stats_changes))
    /// whenever the engine removes entries on its own (eviction for the byte bounds, TTL
    /// expiry), so that the figures' change signals follow what no call did. Runs until
    /// aborted; it holds the engine's removal counter, never the engine, so a clean stop can
    /// still close it.
    pub async fn follow_removals(self: Arc<Self>) {
        let Ok(cache) = self.cache() else { return };
        let removals = cache.removals();
        drop(cache);
        let mut seen = removals.count();
        loop {
            seen = removals.changed_from(seen).await;
            self.stats_touched();
        }
    }
}

/// Upper bounds of the latency buckets, in seconds. A memory-tier hit takes microseconds and a
/// cold read from a shard milliseconds, so the buckets span 5 µs to 2.5 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 18] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The same bounds in nanoseconds, for the integer comparison on the recording path.
pub const LATENCY_BUCKETS_NANOS: [u64; 18] = {
    let mut out = [0u64; 18];
    let mut i = 0;
    while i < out.len() {
        // Rounded: 0.000005 * 1e9 is 5000.000000000001 in binary floating point.
        out[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    out
};

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS_SECONDS`]) that many threads
/// record into at once: one relaxed atomic add per bucket hit and one for the sum, no lock.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Non-cumulative counts; the last slot counts observations above the largest bound.
    buckets: [AtomicU64; 19],
    /// Sum of all observations in nanoseconds (wraps after ~584 years of accumulated latency).
    sum_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; 19],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Record one request that took `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Run `call` and record how long it took, whatever it returned.
    pub fn time<R>(&self, call: impl FnOnce() -> R) -> R {
        let started = std::time::Instant::now();
        let result = call();
        self.observe(started.elapsed());
        result
    }

    /// A copy of the counts. Taken without a lock, so an observation racing with it may show in
    /// the sum but not the buckets; the count is derived from the buckets so that the `+Inf`
    /// bucket always equals `_count`, as Prometheus requires.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len());
        let mut running = 0u64;
        for (i, le) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            running = running.saturating_add(self.buckets[i].load(Ordering::Relaxed));
            cumulative.push((*le, running));
        }
        let count = running.saturating_add(self.buckets[18].load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets: cumulative,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The latencies of the data plane, recorded by whoever serves `Get` and `Put` (the D-Bus
/// service, in-process callers).
#[derive(Debug, Default)]
pub struct CacheLatency {
    /// Latency of `Get`/`GetFd` calls, hits and misses alike.
    pub get: LatencyHistogram,
    /// Latency of `Put`/`PutFd` calls.
    pub put: LatencyHistogram,
}

impl CacheLatency {
    /// Copies of both histograms.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            get: self.get.snapshot(),
            put: self.put.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanosecond_bounds_match_the_published_seconds() {
        assert_eq!(LATENCY_BUCKETS_NANOS[0], 5_000);
        assert_eq!(LATENCY_BUCKETS_NANOS[7], 1_000_000);
        assert_eq!(LATENCY_BUCKETS_NANOS[17], 2_500_000_000);
        assert!(LATENCY_BUCKETS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_equals_count() {
        let h = LatencyHistogram::new();
        h.observe(Duration::from_micros(3)); // <= 5 µs
        h.observe(Duration::from_micros(5)); // exactly on a bound: counted in it
        h.observe(Duration::from_millis(2)); // <= 2.5 ms
        h.observe(Duration::from_secs(10)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.000_005, 2));
        let at = |le: f64| s.buckets.iter().find(|(b, _)| *b == le).map(|(_, c)| *c);
        assert_eq!(at(0.001), Some(2));
        assert_eq!(at(0.002_5), Some(3));
        assert_eq!(at(2.5), Some(3));
        assert!(
            (s.sum_seconds - 10.002_008).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }

    #[test]
    fn histogram_counts_every_observation_from_many_threads() {
        let h = std::sync::Arc::new(LatencyHistogram::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        h.observe(Duration::from_nanos(i * 1000 + t));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count, 4000);
    }

    #[test]
    fn the_engine_report_reads_into_the_typed_report() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::store::CacheConfig {
            dir: dir.path().join("cache"),
            ..crate::store::CacheConfig::default()
        };
        let topology = std::sync::Arc::new(crate::topology::Topology::single_node(vec![0]));
        let cache = crate::store::Cache::open(config, topology).unwrap();
        let caller = crate::store::Caller::default();
        cache
            .put(
                "ns",
                "k",
                b"hello",
                &crate::store::PutOptions::default(),
                &caller,
            )
            .unwrap();
        let r = StatsReport::from(cache.stats());
        // The typed report and the engine's own JSON say the same.
        let mut json = serde_json::to_value(&r).unwrap();
        let fields = json.as_object_mut().unwrap();
        for app_figure in ["request_latency", "lease_waiters", "lease_waits_refused"] {
            fields.remove(app_figure);
        }
        assert_eq!(json, cache.stats_json());
        assert_eq!(r.totals.entries, 1);
        assert_eq!(
            r.node_distribution
                .values()
                .map(|n| n.cache_entries)
                .sum::<u64>(),
            1
        );
    }
}

//! Prometheus text exposition of the cache: per-node figures from the engine's statistics JSON,
//! the active strategy, the topology generation, and request-latency histograms that the
//! daemon records into without locks. Shared by `GET /metrics` and
//! `numacachectl stats --prometheus`.

use crate::placement::StrategyConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// A point-in-time copy of a [`LatencyHistogram`], serializable so that a client can receive it
/// (for example inside the statistics JSON) and render it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum_seconds: f64,
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

/// A point-in-time copy of [`CacheLatency`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    /// See [`CacheLatency::get`].
    pub get: HistogramSnapshot,
    /// See [`CacheLatency::put`].
    pub put: HistogramSnapshot,
}

/// Everything one rendering of the metrics needs.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    /// The engine's `Cache::stats_json()`.
    pub stats: &'a Value,
    /// The topology generation (bumped on every hotplug change).
    pub generation: u64,
    /// The active strategy.
    pub strategy: &'a StrategyConfig,
    /// Request latencies, when this process has them (the daemon does). When `None`, they
    /// are taken from `stats[STATS_LATENCY_KEY]` if the daemon put them there (so that a
    /// client rendering the D-Bus `GetStats()` JSON shows them too), else left out.
    pub latency: Option<&'a LatencySnapshot>,
}

/// The key under which a daemon may add [`CacheLatency::snapshot`] to the statistics JSON it
/// publishes (`GetStats()`), for clients such as `numacachectl stats --prometheus`.
pub const STATS_LATENCY_KEY: &str = "request_latency";

/// The strategy as the D-Bus Strategy properties spell it (`Name`, `NodePreference` with -1
/// for none, `MemoryPolicy`), for a client that renders metrics from the bus.
pub fn strategy_from_properties(
    name: &str,
    node_preference: i32,
    memory_policy: &str,
) -> Result<StrategyConfig, crate::placement::UnknownName> {
    Ok(StrategyConfig {
        strategy: name.parse()?,
        node_preference: u32::try_from(node_preference).ok(),
        memory_policy: memory_policy.parse()?,
    })
}

/// One per-node gauge or counter, taken from a field of each `node_distribution` entry.
struct NodeFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    field: &'static str,
}

const NODE_FAMILIES: [NodeFamily; 9] = [
    NodeFamily {
        name: "numa_cache_entries",
        kind: "gauge",
        help: "Cache entries stored in the node's shard.",
        field: "cache_entries",
    },
    NodeFamily {
        name: "numa_cache_logical_bytes",
        kind: "gauge",
        help: "Uncompressed size of the values stored in the node's shard.",
        field: "logical_bytes",
    },
    NodeFamily {
        name: "numa_cache_stored_bytes",
        kind: "gauge",
        help: "Bytes the node's shard occupies on disk after compression.",
        field: "stored_bytes",
    },
    NodeFamily {
        name: "numa_cache_memory_tier_bytes",
        kind: "gauge",
        help: "Bytes of decompressed hot values held in the node's memory tier.",
        field: "memory_tier_bytes",
    },
    NodeFamily {
        name: "numa_cache_hits_total",
        kind: "counter",
        help: "Lookups of entries on the node that found a value.",
        field: "hits",
    },
    NodeFamily {
        name: "numa_cache_misses_total",
        kind: "counter",
        help: "Lookups attributed to the node that found no value.",
        field: "misses",
    },
    NodeFamily {
        name: "numa_cache_evictions_total",
        kind: "counter",
        help: "Entries evicted from the node's shard to stay under the byte limits.",
        field: "evictions",
    },
    NodeFamily {
        name: "numa_cache_hit_ratio",
        kind: "gauge",
        help: "Hits divided by lookups on the node since the counters were reset.",
        field: "hit_rate",
    },
    NodeFamily {
        name: "numa_cache_local_hit_ratio",
        kind: "gauge",
        help: "Share of the node's hits served to a caller running on the same node.",
        field: "local_hit_ratio",
    },
];

/// Render the Prometheus text format (version 0.0.4) for `input`.
///
/// Per-node families come from `stats["node_distribution"][node][field]`. When the engine
/// reports a figure only for the whole cache (evictions, local-hit ratio), it is published
/// without a `node` label under a `numa_cache_total_` name, so that no family mixes labelled
/// and unlabelled samples.
pub fn render_prometheus(input: &MetricsInput<'_>) -> String {
    let mut out = String::with_capacity(4096);
    let nodes = node_rows(input.stats);

    for family in &NODE_FAMILIES {
        let samples: Vec<(&str, f64)> = nodes
            .iter()
            .filter_map(|(id, row)| {
                row.get(family.field)
                    .and_then(Value::as_f64)
                    .map(|v| (*id, v))
            })
            .collect();
        if samples.is_empty() {
            continue;
        }
        header(&mut out, family.name, family.kind, family.help);
        for (node, value) in samples {
            let _ = writeln!(
                out,
                "{}{{node=\"{}\"}} {}",
                family.name,
                escape_label(node),
                number(value)
            );
        }
    }

    let totals = input.stats.get("totals");
    let total = |field: &str| totals.and_then(|t| t.get(field)).and_then(Value::as_f64);
    let per_node_has = |field: &str| nodes.iter().any(|(_, row)| row.get(field).is_some());
    if !per_node_has("evictions")
        && let Some(v) = total("evictions")
    {
        header(
            &mut out,
            "numa_cache_total_evictions_total",
            "counter",
            "Entries evicted from the whole cache to stay under the byte limits.",
        );
        let _ = writeln!(out, "numa_cache_total_evictions_total {}", number(v));
    }
    if !per_node_has("local_hit_ratio")
        && let Some(v) = total("local_hit_ratio")
    {
        header(
            &mut out,
            "numa_cache_total_local_hit_ratio",
            "gauge",
            "Share of all hits served to a caller running on the node that holds the entry.",
        );
        let _ = writeln!(out, "numa_cache_total_local_hit_ratio {}", number(v));
    }

    header(
        &mut out,
        "numa_cache_strategy_info",
        "gauge",
        "The active placement strategy (value always 1; the labels carry the information).",
    );
    let preference = input
        .strategy
        .node_preference
        .map_or_else(|| "-1".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "numa_cache_strategy_info{{strategy=\"{}\",node_preference=\"{}\",memory_policy=\"{}\"}} 1",
        input.strategy.strategy.as_str(),
        preference,
        input.strategy.memory_policy.as_str()
    );

    header(
        &mut out,
        "numa_cache_topology_generation",
        "gauge",
        "Generation of the NUMA topology; it increases on every hotplug change.",
    );
    let _ = writeln!(out, "numa_cache_topology_generation {}", input.generation);

    if let Some(btrfs) = input.stats.get("btrfs").and_then(Value::as_bool) {
        header(
            &mut out,
            "numa_cache_btrfs",
            "gauge",
            "1 when the shards are BTRFS subvolumes, 0 when they are plain directories.",
        );
        let _ = writeln!(out, "numa_cache_btrfs {}", u8::from(btrfs));
    }

    let from_stats = input
        .latency
        .is_none()
        .then(|| input.stats.get(STATS_LATENCY_KEY))
        .flatten()
        .and_then(|v| serde_json::from_value::<LatencySnapshot>(v.clone()).ok());
    if let Some(latency) = input.latency.or(from_stats.as_ref()) {
        let name = "numa_cache_request_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time to serve a data-plane request, by operation.",
        );
        for (op, hist) in [("get", &latency.get), ("put", &latency.put)] {
            for (le, count) in &hist.buckets {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{op=\"{op}\",le=\"{}\"}} {count}",
                    number(*le)
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                hist.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{{op=\"{op}\"}} {}",
                number(hist.sum_seconds)
            );
            let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {}", hist.count);
        }
    }
    out
}

/// `node_distribution` as `(node id, row)` pairs in numeric node order.
fn node_rows(stats: &Value) -> Vec<(&str, &serde_json::Map<String, Value>)> {
    let mut rows: Vec<(&str, &serde_json::Map<String, Value>)> = stats
        .get("node_distribution")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_object().map(|row| (k.as_str(), row)))
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), id.to_string()));
    rows
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A sample value as Prometheus spells it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{MemoryPolicy, Strategy};
    use serde_json::json;

    fn sample_stats() -> Value {
        json!({
            "node_distribution": {
                "1": {"cache_entries": 12890, "memory_usage_mb": 38, "hit_rate": 0.91,
                      "logical_bytes": 4000, "stored_bytes": 1000, "memory_tier_bytes": 512,
                      "hits": 91, "misses": 9},
                "0": {"cache_entries": 15420, "memory_usage_mb": 45, "hit_rate": 0.94,
                      "logical_bytes": 8000, "stored_bytes": 2000, "memory_tier_bytes": 1024,
                      "hits": 94, "misses": 6}
            },
            "numa_benefits": {"latency_improvement_ms": 0.3, "memory_bandwidth_gain": 1.25},
            "totals": {"entries": 28310, "evictions": 7, "local_hit_ratio": 0.75},
            "btrfs": true
        })
    }

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
    fn renders_per_node_families_in_node_order_with_totals_apart() {
        let stats = sample_stats();
        let strategy = StrategyConfig {
            strategy: Strategy::RoundRobin,
            node_preference: Some(1),
            memory_policy: MemoryPolicy::Preferred,
        };
        let latency = CacheLatency::default();
        latency.get.observe(Duration::from_micros(40));
        let snap = latency.snapshot();
        let text = render_prometheus(&MetricsInput {
            stats: &stats,
            generation: 3,
            strategy: &strategy,
            latency: Some(&snap),
        });
        let pos = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing from:\n{text}"))
        };
        assert!(
            pos("numa_cache_entries{node=\"0\"} 15420")
                < pos("numa_cache_entries{node=\"1\"} 12890")
        );
        pos("# TYPE numa_cache_hits_total counter");
        pos("numa_cache_hits_total{node=\"0\"} 94");
        pos("numa_cache_misses_total{node=\"1\"} 9");
        pos("numa_cache_memory_tier_bytes{node=\"0\"} 1024");
        pos("numa_cache_hit_ratio{node=\"1\"} 0.91");
        pos("numa_cache_total_evictions_total 7");
        pos("numa_cache_total_local_hit_ratio 0.75");
        pos(
            "numa_cache_strategy_info{strategy=\"round_robin\",node_preference=\"1\",memory_policy=\"preferred\"} 1",
        );
        pos("numa_cache_topology_generation 3");
        pos("numa_cache_btrfs 1");
        pos("numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"0.00005\"} 1");
        pos("numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 1");
        pos("numa_cache_request_duration_seconds_count{op=\"put\"} 0");
        // Families absent from the stats are left out rather than rendered empty.
        assert!(!text.contains("numa_cache_evictions_total{"));
    }

    #[test]
    fn per_node_evictions_replace_the_total() {
        let mut stats = sample_stats();
        stats["node_distribution"]["0"]["evictions"] = json!(5);
        stats["node_distribution"]["1"]["evictions"] = json!(2);
        let text = render_prometheus(&MetricsInput {
            stats: &stats,
            generation: 0,
            strategy: &StrategyConfig::default(),
            latency: None,
        });
        assert!(
            text.contains("numa_cache_evictions_total{node=\"1\"} 2"),
            "{text}"
        );
        assert!(!text.contains("numa_cache_total_evictions_total"), "{text}");
        assert!(!text.contains("request_duration"), "{text}");
        assert!(text.contains("node_preference=\"-1\""), "{text}");
    }

    #[test]
    fn a_client_renders_the_latency_the_daemon_put_in_the_stats() {
        let latency = CacheLatency::default();
        latency.put.observe(Duration::from_millis(3));
        let mut stats = sample_stats();
        stats[STATS_LATENCY_KEY] = serde_json::to_value(latency.snapshot()).unwrap();
        let text = render_prometheus(&MetricsInput {
            stats: &stats,
            generation: 1,
            strategy: &StrategyConfig::default(),
            latency: None,
        });
        assert!(
            text.contains("numa_cache_request_duration_seconds_bucket{op=\"put\",le=\"0.005\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn strategy_properties_parse_with_minus_one_for_none() {
        let c = strategy_from_properties("most_memory", -1, "interleaved").unwrap();
        assert_eq!(
            (c.strategy, c.node_preference, c.memory_policy),
            (Strategy::MostMemory, None, MemoryPolicy::Interleaved)
        );
        assert_eq!(
            strategy_from_properties("local_node", 2, "bind")
                .unwrap()
                .node_preference,
            Some(2)
        );
        assert!(strategy_from_properties("fast", 0, "bind").is_err());
    }

    #[test]
    fn numbers_and_labels_use_prometheus_spelling() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.000_005), "0.000005");
        assert_eq!(number(42.0), "42");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

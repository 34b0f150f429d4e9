//! Prometheus text exposition of the cache, rendered from the typed statistics report
//! ([`StatsReport`], the same struct D-Bus `GetStats` and HTTP stats serialize): per-node
//! figures, the active strategy, the topology generation and the request-latency histograms.
//! Shared by `GET /metrics` and `numacachectl stats --prometheus`.

pub use crate::app::stats::{
    CacheLatency, HistogramSnapshot, LATENCY_BUCKETS_NANOS, LATENCY_BUCKETS_SECONDS,
    LatencyHistogram, LatencySnapshot, NodeRow, STATS_LATENCY_KEY, StatsReport,
};
use crate::placement::StrategyConfig;
use serde_json::Value;
use std::fmt::Write as _;

/// Everything one rendering of the metrics needs.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    /// A statistics JSON (D-Bus `GetStats()`), read into [`StatsReport`].
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
    value: fn(&NodeRow) -> Option<f64>,
}

const NODE_FAMILIES: [NodeFamily; 9] = [
    NodeFamily {
        name: "numa_cache_entries",
        kind: "gauge",
        help: "Cache entries stored in the node's shard.",
        value: |r| Some(r.cache_entries as f64),
    },
    NodeFamily {
        name: "numa_cache_logical_bytes",
        kind: "gauge",
        help: "Uncompressed size of the values stored in the node's shard.",
        value: |r| Some(r.logical_bytes as f64),
    },
    NodeFamily {
        name: "numa_cache_stored_bytes",
        kind: "gauge",
        help: "Bytes the node's shard occupies on disk after compression.",
        value: |r| Some(r.stored_bytes as f64),
    },
    NodeFamily {
        name: "numa_cache_memory_tier_bytes",
        kind: "gauge",
        help: "Bytes of decompressed hot values held in the node's memory tier.",
        value: |r| Some(r.memory_tier_bytes as f64),
    },
    NodeFamily {
        name: "numa_cache_hits_total",
        kind: "counter",
        help: "Lookups of entries on the node that found a value.",
        value: |r| Some(r.hits as f64),
    },
    NodeFamily {
        name: "numa_cache_misses_total",
        kind: "counter",
        help: "Lookups attributed to the node that found no value.",
        value: |r| Some(r.misses as f64),
    },
    NodeFamily {
        name: "numa_cache_evictions_total",
        kind: "counter",
        help: "Entries evicted from the node's shard to stay under the byte limits.",
        value: |r| r.evictions.map(|v| v as f64),
    },
    NodeFamily {
        name: "numa_cache_hit_ratio",
        kind: "gauge",
        help: "Hits divided by lookups on the node since the counters were reset.",
        value: |r| Some(r.hit_rate),
    },
    NodeFamily {
        name: "numa_cache_local_hit_ratio",
        kind: "gauge",
        help: "Share of the node's hits served to a caller running on the same node.",
        value: |r| r.local_hit_ratio,
    },
];

/// Render the Prometheus text format for a statistics JSON such as `GetStats()` returns (for
/// a client): the JSON is read into [`StatsReport`] first. `input.latency`, when given,
/// replaces the report's own latencies.
pub fn render_prometheus(input: &MetricsInput<'_>) -> String {
    let mut report: StatsReport = serde_json::from_value(input.stats.clone()).unwrap_or_default();
    if let Some(l) = input.latency {
        report.request_latency = Some(l.clone());
    }
    render_metrics(&report, input.generation, input.strategy)
}

/// Render the Prometheus text format (version 0.0.4) for `report`.
///
/// Per-node families come from `report.node_distribution`. When the engine reports a figure
/// only for the whole cache (evictions, local-hit ratio), it is published without a `node`
/// label under a `numa_cache_total_` name, so that no family mixes labelled and unlabelled
/// samples.
pub fn render_metrics(report: &StatsReport, generation: u64, strategy: &StrategyConfig) -> String {
    let mut out = String::with_capacity(4096);
    let nodes = &report.node_distribution;

    for family in &NODE_FAMILIES {
        let samples: Vec<(u32, f64)> = nodes
            .iter()
            .filter_map(|(id, row)| (family.value)(row).map(|v| (*id, v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        header(&mut out, family.name, family.kind, family.help);
        for (node, value) in samples {
            let _ = writeln!(out, "{}{{node=\"{node}\"}} {}", family.name, number(value));
        }
    }

    if !nodes.values().any(|r| r.evictions.is_some()) {
        header(
            &mut out,
            "numa_cache_total_evictions_total",
            "counter",
            "Entries evicted from the whole cache to stay under the byte limits.",
        );
        let _ = writeln!(
            out,
            "numa_cache_total_evictions_total {}",
            report.totals.evictions
        );
    }
    if !nodes.values().any(|r| r.local_hit_ratio.is_some()) {
        header(
            &mut out,
            "numa_cache_total_local_hit_ratio",
            "gauge",
            "Share of all hits served to a caller running on the node that holds the entry.",
        );
        let _ = writeln!(
            out,
            "numa_cache_total_local_hit_ratio {}",
            number(report.totals.local_hit_ratio)
        );
    }

    header(
        &mut out,
        "numa_cache_strategy_info",
        "gauge",
        "The active placement strategy (value always 1; the labels carry the information).",
    );
    let preference = strategy
        .node_preference
        .map_or_else(|| "-1".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "numa_cache_strategy_info{{strategy=\"{}\",node_preference=\"{}\",memory_policy=\"{}\"}} 1",
        strategy.strategy.as_str(),
        escape_label(&preference),
        strategy.memory_policy.as_str()
    );

    header(
        &mut out,
        "numa_cache_topology_generation",
        "gauge",
        "Generation of the NUMA topology; it increases on every hotplug change.",
    );
    let _ = writeln!(out, "numa_cache_topology_generation {generation}");

    header(
        &mut out,
        "numa_cache_btrfs",
        "gauge",
        "1 when the shards are BTRFS subvolumes, 0 when they are plain directories.",
    );
    let _ = writeln!(out, "numa_cache_btrfs {}", u8::from(report.btrfs));

    if let Some(latency) = &report.request_latency {
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
    use std::time::Duration;

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

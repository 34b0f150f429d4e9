//! The Prometheus text exposition (format 0.0.4) of the daemon's statistics: per-node
//! figures from the `GetStats` JSON, the strategy, the topology generation and the request
//! latency histograms the daemon puts in that JSON. It works from what the contract
//! publishes, so a client (`numacachectl stats --prometheus`, for node_exporter's textfile
//! collector) and the daemon's `GET /metrics` can render the same text.
//!
//! ```
//! use numa_cache_client::metrics::{MetricsInput, render_prometheus};
//! let stats = serde_json::json!({"node_distribution": {"0": {"cache_entries": 3}}});
//! let text = render_prometheus(&MetricsInput {
//!     stats: &stats, generation: 1, strategy: "local_node", node_preference: None,
//!     memory_policy: "bind", latency: None,
//! });
//! assert!(text.contains("numa_cache_entries{node=\"0\"} 3"));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;

/// A point-in-time copy of a latency histogram, as the daemon serializes it into the
/// statistics JSON under [`STATS_LATENCY_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum_seconds: f64,
}

/// The data plane's latency histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    /// `Get`/`GetFd` calls, hits and misses alike.
    pub get: HistogramSnapshot,
    /// `Put`/`PutFd` calls.
    pub put: HistogramSnapshot,
}

/// The key under which the daemon adds its [`LatencySnapshot`] to the `GetStats` JSON.
pub const STATS_LATENCY_KEY: &str = "request_latency";

/// Everything one rendering needs.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    /// The `GetStats` JSON.
    pub stats: &'a Value,
    /// The topology generation (Topology `Generation`).
    pub generation: u64,
    /// The active strategy (Strategy `Name`).
    pub strategy: &'a str,
    /// The preferred node (Strategy `NodePreference`, `None` for -1).
    pub node_preference: Option<u32>,
    /// The memory policy (Strategy `MemoryPolicy`).
    pub memory_policy: &'a str,
    /// Request latencies when the renderer has them itself; when `None` they are taken from
    /// `stats[STATS_LATENCY_KEY]` if present, else left out.
    pub latency: Option<&'a LatencySnapshot>,
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
        .node_preference
        .map_or_else(|| "-1".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "numa_cache_strategy_info{{strategy=\"{}\",node_preference=\"{}\",memory_policy=\"{}\"}} 1",
        escape_label(input.strategy),
        preference,
        escape_label(input.memory_policy)
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
            "totals": {"entries": 28310, "evictions": 7, "local_hit_ratio": 0.75},
            "btrfs": true
        })
    }

    fn input(stats: &Value) -> MetricsInput<'_> {
        MetricsInput {
            stats,
            generation: 3,
            strategy: "round_robin",
            node_preference: Some(1),
            memory_policy: "preferred",
            latency: None,
        }
    }

    #[test]
    fn renders_per_node_families_in_node_order_with_totals_apart() {
        let mut stats = sample_stats();
        stats[STATS_LATENCY_KEY] = json!({
            "get": {"buckets": [[0.00005, 1], [0.0001, 1]], "count": 1, "sum_seconds": 0.00004},
            "put": {"buckets": [[0.00005, 0], [0.0001, 0]], "count": 0, "sum_seconds": 0.0}
        });
        let text = render_prometheus(&input(&stats));
        let pos = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing from:\n{text}"))
        };
        assert!(
            pos("numa_cache_entries{node=\"0\"} 15420")
                < pos("numa_cache_entries{node=\"1\"} 12890")
        );
        pos("# TYPE numa_cache_hits_total counter");
        pos("numa_cache_misses_total{node=\"1\"} 9");
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
        assert!(!text.contains("numa_cache_evictions_total{"));
    }

    #[test]
    fn per_node_evictions_replace_the_total_and_absent_latency_is_left_out() {
        let mut stats = sample_stats();
        stats["node_distribution"]["0"]["evictions"] = json!(5);
        stats["node_distribution"]["1"]["evictions"] = json!(2);
        let mut i = input(&stats);
        i.node_preference = None;
        let text = render_prometheus(&i);
        assert!(
            text.contains("numa_cache_evictions_total{node=\"1\"} 2"),
            "{text}"
        );
        assert!(!text.contains("numa_cache_total_evictions_total"), "{text}");
        assert!(!text.contains("request_duration"), "{text}");
        assert!(text.contains("node_preference=\"-1\""), "{text}");
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

//! The statistics report of numa-cached as one typed struct ([`StatsReport`], what D-Bus
//! `GetStats` returns as JSON and HTTP `/api/v1/numa/cache/stats` serves), and its one
//! Prometheus text exposition (format 0.0.4): per-node figures, the strategy, the topology
//! generation and the request latency histograms. The daemon's `GET /metrics` and a client
//! (`numacachectl stats --prometheus`, for node_exporter's textfile collector) render the same
//! text with [`render_prometheus`]: the daemon from the report it builds, a client from the
//! `GetStats` JSON read into it.
//!
//! ```
//! use numa_cache_client::metrics::{MetricsInput, StatsReport, render_prometheus};
//! let stats: StatsReport = serde_json::from_str(
//!     r#"{"node_distribution": {"0": {"cache_entries": 3, "memory_usage_mb": 0, "hit_rate": 1.0}}}"#,
//! ).unwrap();
//! let text = render_prometheus(&MetricsInput {
//!     stats: &stats, generation: 1, strategy: "local_node", node_preference: None,
//!     memory_policy: "bind",
//! });
//! assert!(text.contains("numa_cache_entries{node=\"0\"} 3"));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The key of the latency histograms in the statistics JSON.
pub const STATS_LATENCY_KEY: &str = "request_latency";

/// One node's row of `node_distribution` (the seed's three fields first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    /// Entries in the node's shard.
    pub cache_entries: u64,
    /// The node's memory tier in MiB.
    pub memory_usage_mb: u64,
    /// Hits / (hits + misses) of reads served there.
    pub hit_rate: f64,
    /// Logical bytes of the node's entries.
    #[serde(default)]
    pub logical_bytes: u64,
    /// Their bytes on disk.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Bytes of the node's memory tier.
    #[serde(default)]
    pub memory_tier_bytes: u64,
    /// Reads that found their entry there.
    #[serde(default)]
    pub hits: u64,
    /// Reads that did not.
    #[serde(default)]
    pub misses: u64,
    /// Evictions from the node's shard, when the engine counts them per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evictions: Option<u64>,
    /// Share of the node's hits served locally, when the engine counts it per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_hit_ratio: Option<f64>,
}

/// `numa_benefits`: measured local against remote read latency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Benefits {
    /// Mean remote minus mean local read latency, ms.
    pub latency_improvement_ms: f64,
    /// Mean remote / mean local latency.
    pub memory_bandwidth_gain: f64,
    /// One node: nothing to compare.
    #[serde(default)]
    pub single_node: bool,
    /// Local samples.
    #[serde(default)]
    pub local_samples: u64,
    /// Remote samples.
    #[serde(default)]
    pub remote_samples: u64,
}

/// Totals over all nodes (the D-Bus CacheStats properties).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Entries.
    #[serde(default)]
    pub entries: u64,
    /// Logical bytes.
    #[serde(default)]
    pub logical_bytes: u64,
    /// Stored bytes.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Hits.
    #[serde(default)]
    pub hits: u64,
    /// Misses.
    #[serde(default)]
    pub misses: u64,
    /// Hits / (hits + misses).
    #[serde(default)]
    pub hit_rate: f64,
    /// Evictions (the byte bounds, TTL expiry).
    #[serde(default)]
    pub evictions: u64,
    /// Share of hits served on the caller's node.
    #[serde(default)]
    pub local_hit_ratio: f64,
}

/// The statistics report: the seed's `node_distribution` and `numa_benefits`, plus totals,
/// corrupted reads, btrfs, the strategy name and the request latencies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Per node, keyed by node id (numeric order).
    #[serde(default)]
    pub node_distribution: BTreeMap<u32, NodeRow>,
    /// Local against remote reads.
    #[serde(default)]
    pub numa_benefits: Benefits,
    /// Totals.
    #[serde(default)]
    pub totals: Totals,
    /// Reads that failed their checksum.
    #[serde(default)]
    pub corrupted: u64,
    /// The shards are btrfs subvolumes.
    #[serde(default)]
    pub btrfs: bool,
    /// The active strategy's name.
    #[serde(default)]
    pub strategy: String,
    /// Get/Put engine-time histograms (absent in a report from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_latency: Option<LatencySnapshot>,
    /// GetOrLease calls waiting now for another caller's lease (0 from an older daemon).
    #[serde(default)]
    pub lease_waiters: u64,
    /// GetOrLease calls refused since the start because too many were waiting already.
    #[serde(default)]
    pub lease_waits_refused: u64,
}

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

/// Everything one rendering needs.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    /// The statistics (for a client: the `GetStats` JSON read with `serde_json`).
    pub stats: &'a StatsReport,
    /// The topology generation (Topology `Generation`).
    pub generation: u64,
    /// The active strategy (Strategy `Name`).
    pub strategy: &'a str,
    /// The preferred node (Strategy `NodePreference`, `None` for -1).
    pub node_preference: Option<u32>,
    /// The memory policy (Strategy `MemoryPolicy`).
    pub memory_policy: &'a str,
}

/// One per-node gauge or counter, taken from a field of each `node_distribution` row.
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

/// Render the Prometheus text format (version 0.0.4) for `input`.
///
/// Per-node families come from `stats.node_distribution`. When the engine reports a figure
/// only for the whole cache (evictions, local-hit ratio), it is published without a `node`
/// label under a `numa_cache_total_` name, so that no family mixes labelled and unlabelled
/// samples. The latency histograms are those of `stats.request_latency`, left out when absent.
pub fn render_prometheus(input: &MetricsInput<'_>) -> String {
    let mut out = String::with_capacity(4096);
    let report = input.stats;
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
    let preference = input
        .node_preference
        .map_or_else(|| "-1".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "numa_cache_strategy_info{{strategy=\"{}\",node_preference=\"{preference}\",memory_policy=\"{}\"}} 1",
        escape_label(input.strategy),
        escape_label(input.memory_policy)
    );

    header(
        &mut out,
        "numa_cache_topology_generation",
        "gauge",
        "Generation of the NUMA topology; it increases on every hotplug change.",
    );
    let _ = writeln!(out, "numa_cache_topology_generation {}", input.generation);

    header(
        &mut out,
        "numa_cache_btrfs",
        "gauge",
        "1 when the shards are BTRFS subvolumes, 0 when they are plain directories.",
    );
    let _ = writeln!(out, "numa_cache_btrfs {}", u8::from(report.btrfs));

    header(
        &mut out,
        "numa_cache_lease_waiters",
        "gauge",
        "GetOrLease calls waiting now for another caller's lease.",
    );
    let _ = writeln!(out, "numa_cache_lease_waiters {}", report.lease_waiters);
    header(
        &mut out,
        "numa_cache_lease_waits_refused_total",
        "counter",
        "GetOrLease calls refused because too many were waiting already.",
    );
    let _ = writeln!(
        out,
        "numa_cache_lease_waits_refused_total {}",
        report.lease_waits_refused
    );

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
    use serde_json::json;

    /// A `GetStats` JSON as a client receives it, read into the report.
    fn sample_stats() -> serde_json::Value {
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
            "btrfs": true,
            "lease_waiters": 8,
            "lease_waits_refused": 2,
            "a_field_a_newer_daemon_adds": 1
        })
    }

    fn report(v: serde_json::Value) -> StatsReport {
        serde_json::from_value(v).expect("a statistics report")
    }

    fn input(stats: &StatsReport) -> MetricsInput<'_> {
        MetricsInput {
            stats,
            generation: 3,
            strategy: "round_robin",
            node_preference: Some(1),
            memory_policy: "preferred",
        }
    }

    #[test]
    fn renders_per_node_families_in_node_order_with_totals_apart() {
        let mut stats = sample_stats();
        stats[STATS_LATENCY_KEY] = json!({
            "get": {"buckets": [[0.00005, 1], [0.0001, 1]], "count": 1, "sum_seconds": 0.00004},
            "put": {"buckets": [[0.00005, 0], [0.0001, 0]], "count": 0, "sum_seconds": 0.0}
        });
        let stats = report(stats);
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
        pos("# TYPE numa_cache_lease_waiters gauge");
        pos("numa_cache_lease_waiters 8");
        pos("numa_cache_lease_waits_refused_total 2");
        pos("numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"0.00005\"} 1");
        pos("numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 1");
        pos("numa_cache_request_duration_seconds_sum{op=\"get\"} 0.00004");
        pos("numa_cache_request_duration_seconds_count{op=\"put\"} 0");
        // Families absent from the stats are left out rather than rendered empty.
        assert!(!text.contains("numa_cache_evictions_total{"));
    }

    #[test]
    fn per_node_evictions_replace_the_total_and_absent_latency_is_left_out() {
        let mut stats = sample_stats();
        stats["node_distribution"]["0"]["evictions"] = json!(5);
        stats["node_distribution"]["1"]["evictions"] = json!(2);
        let stats = report(stats);
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
    fn the_report_reads_back_what_it_writes() {
        let stats = report(sample_stats());
        let again: StatsReport =
            serde_json::from_str(&serde_json::to_string(&stats).unwrap()).unwrap();
        assert_eq!(again, stats);
        assert_eq!(stats.node_distribution[&1].cache_entries, 12890);
        assert_eq!(stats.totals.evictions, 7);
        assert_eq!((stats.lease_waiters, stats.lease_waits_refused), (8, 2));
        // A report of an older daemon, without the waiting figures, reads them as 0.
        let old: StatsReport = serde_json::from_value(serde_json::json!({"btrfs": false})).unwrap();
        assert_eq!((old.lease_waiters, old.lease_waits_refused), (0, 0));
    }

    #[test]
    fn numbers_and_labels_use_prometheus_spelling() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.000_005), "0.000005");
        assert_eq!(number(42.0), "42");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let stats = StatsReport::default();
        let mut i = input(&stats);
        i.strategy = "odd\"name";
        assert!(render_prometheus(&i).contains("strategy=\"odd\\\"name\""));
    }
}

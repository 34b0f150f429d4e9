//! Tables for people: how `numacachectl` prints statistics, history, strategy and entry
//! information from the JSON and values the daemon returns (topology tables come from
//! `cli::topology::render_table`, shared with the local read).

use serde_json::Value;
use std::fmt::Write;

/// Left-aligned columns separated by two spaces, sized to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{c:<pad$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn yes(v: &Value) -> String {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
    .to_string()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n
            .as_f64()
            .filter(|_| n.is_f64())
            .map(|f| format!("{f:.3}"))
            .unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

/// The GetStats JSON as a per-node table with totals and measured benefits.
pub fn stats(j: &Value) -> String {
    let mut rows = Vec::new();
    if let Some(nodes) = j["node_distribution"].as_object() {
        for (id, n) in nodes {
            rows.push(vec![
                id.clone(),
                text(&n["cache_entries"]),
                text(&n["memory_usage_mb"]),
                text(&n["logical_bytes"]),
                text(&n["stored_bytes"]),
                text(&n["hit_rate"]),
            ]);
        }
    }
    let mut out = table(
        &[
            "NODE",
            "ENTRIES",
            "MEMORY_MB",
            "LOGICAL_BYTES",
            "STORED_BYTES",
            "HIT_RATE",
        ],
        &rows,
    );
    let t = &j["totals"];
    if t.is_object() {
        let _ = writeln!(
            out,
            "\ntotal: {} entries, {} logical bytes, {} stored bytes, {} hits, {} misses, hit rate {}, {} evictions, local hit ratio {}",
            text(&t["entries"]),
            text(&t["logical_bytes"]),
            text(&t["stored_bytes"]),
            text(&t["hits"]),
            text(&t["misses"]),
            text(&t["hit_rate"]),
            text(&t["evictions"]),
            text(&t["local_hit_ratio"])
        );
    }
    let b = &j["numa_benefits"];
    if b.is_object() {
        let _ = writeln!(
            out,
            "NUMA benefits (measured): latency improvement {} ms, memory bandwidth gain {}{}",
            text(&b["latency_improvement_ms"]),
            text(&b["memory_bandwidth_gain"]),
            if b["single_node"].as_bool() == Some(true) {
                " (one node: nothing to compare)"
            } else {
                ""
            }
        );
    }
    if let Some(s) = j["strategy"].as_str() {
        let _ = writeln!(out, "strategy: {s}   btrfs: {}", yes(&j["btrfs"]));
    }
    let lat = &j[numa_cache_client::metrics::STATS_LATENCY_KEY];
    if lat.is_object() {
        let _ = writeln!(
            out,
            "engine time: get {}, put {}",
            mean_latency(&lat["get"]),
            mean_latency(&lat["put"])
        );
    }
    out
}

/// "N calls, mean X µs" for a serialized latency histogram (`count`, `sum_seconds`).
fn mean_latency(h: &Value) -> String {
    let count = h["count"].as_u64().unwrap_or(0);
    if count == 0 {
        return "0 calls".into();
    }
    let mean_us = h["sum_seconds"].as_f64().unwrap_or(0.0) / count as f64 * 1e6;
    format!("{count} calls, mean {mean_us:.1} µs")
}

/// History rows (an array of objects) as a table with the union of their columns.
pub fn history(j: &Value) -> String {
    let empty = Vec::new();
    let rows = j.as_array().unwrap_or(&empty);
    if rows.is_empty() {
        return "no statistics recorded in that time range\n".into();
    }
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        if let Some(o) = r.as_object() {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| text(&r[c])).collect())
        .collect();
    let header: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
    table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        &body,
    )
}

/// key: value lines, in the given order.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_stats_render_every_node() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        let j = serde_json::json!({"node_distribution":{"0":{"cache_entries":3,"memory_usage_mb":1,"hit_rate":0.5},"2":{"cache_entries":1,"memory_usage_mb":0,"hit_rate":1.0}},"numa_benefits":{"latency_improvement_ms":null,"memory_bandwidth_gain":null}});
        let s = stats(&j);
        assert!(
            s.lines().nth(1).unwrap().starts_with("0 ")
                && s.lines().nth(2).unwrap().starts_with("2 "),
            "{s}"
        );
        assert!(s.contains("0.500"), "{s}");
    }

    #[test]
    fn stats_show_the_mean_engine_time_from_the_daemons_histograms() {
        let mut j = serde_json::json!({"node_distribution":{}});
        j[numa_cache_client::metrics::STATS_LATENCY_KEY] = serde_json::json!({
            "get": {"buckets": [[0.00005, 2]], "count": 2, "sum_seconds": 0.00004},
            "put": {"buckets": [[0.00005, 0]], "count": 0, "sum_seconds": 0.0}
        });
        let s = stats(&j);
        assert!(
            s.contains("engine time: get 2 calls, mean 20.0 µs, put 0 calls"),
            "{s}"
        );
        let without = stats(&serde_json::json!({"node_distribution":{}}));
        assert!(!without.contains("engine time"), "{without}");
    }
}

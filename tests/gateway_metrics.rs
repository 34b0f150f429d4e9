//! `/metrics` of a live gateway over a real cache passes `promtool check metrics` (the
//! Prometheus project's own linter) and carries the figures the engine and the latency
//! histograms hold.

mod gateway;
mod support;

use gateway::http::serve;
use numa_cache::store::Caller;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_carry_the_engine_figures() {
    if !(support::require_tool("curl", "curl") && support::require_tool("promtool", "prometheus")) {
        return;
    }
    let served = serve(None).await;
    let me = Caller::default();
    for i in 0..3 {
        let started = Instant::now();
        served.put("metrics", &format!("k{i}"), b"value");
        served.latency().put.observe(started.elapsed());
    }
    let started = Instant::now();
    assert!(served.cache.get("metrics", "k0", &me).is_ok());
    served.latency().get.observe(started.elapsed());
    assert!(served.cache.get("metrics", "absent", &me).is_err());
    served.latency().get.observe(Duration::from_secs(3));

    let r = served.get("/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    let home = served.home();
    for line in [
        format!("numa_cache_entries{{node=\"{home}\"}} 3"),
        format!("numa_cache_hits_total{{node=\"{home}\"}} 1"),
        format!("numa_cache_logical_bytes{{node=\"{home}\"}} 15"),
        "numa_cache_total_evictions_total 0".into(),
        "numa_cache_topology_generation 1".into(),
        "numa_cache_request_duration_seconds_count{op=\"put\"} 3".into(),
        "numa_cache_request_duration_seconds_count{op=\"get\"} 2".into(),
        // The 3 s get is above every bound: only +Inf counts it.
        "numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"2.5\"} 1".into(),
        "numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 2".into(),
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "{line:?} missing:\n{}",
            r.body
        );
    }
    // The miss is counted on whichever node served the caller.
    let misses: f64 = r
        .body
        .lines()
        .filter(|l| l.starts_with("numa_cache_misses_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(misses, 1.0, "{}", r.body);
    for family in [
        "numa_cache_strategy_info{strategy=\"local_node\"",
        "numa_cache_memory_tier_bytes{node=",
        "numa_cache_stored_bytes{node=",
        "numa_cache_hit_ratio{node=",
    ] {
        assert!(r.body.contains(family), "{family} missing:\n{}", r.body);
    }
    assert!(
        r.body.contains("numa_cache_total_local_hit_ratio"),
        "{}",
        r.body
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(r.body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool finished");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.body
    );
    served.stop().await;
}

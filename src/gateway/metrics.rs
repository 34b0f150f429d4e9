//! `GET /metrics`: the application's typed statistics report rendered by the one Prometheus
//! renderer, the client crate's ([`render_prometheus`]), which `numacachectl stats
//! --prometheus` uses too; this adds only the strategy as the engine holds it.

use crate::app::StatsReport;
use crate::placement::StrategyConfig;
pub use numa_cache_client::metrics::{MetricsInput, render_prometheus};

/// The Prometheus text (format 0.0.4) of `report`, the topology `generation` and `strategy`.
pub fn render_metrics(report: &StatsReport, generation: u64, strategy: &StrategyConfig) -> String {
    render_prometheus(&MetricsInput {
        stats: report,
        generation,
        strategy: strategy.strategy.as_str(),
        node_preference: strategy.node_preference,
        memory_policy: strategy.memory_policy.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::CacheLatency;
    use crate::placement::{MemoryPolicy, Strategy};
    use std::time::Duration;

    #[test]
    fn the_engine_strategy_and_the_app_latencies_reach_the_text() {
        let latency = CacheLatency::default();
        latency.get.observe(Duration::from_micros(40));
        let report = StatsReport {
            request_latency: Some(latency.snapshot()),
            ..StatsReport::default()
        };
        let strategy = StrategyConfig {
            strategy: Strategy::RoundRobin,
            node_preference: Some(1),
            memory_policy: MemoryPolicy::Preferred,
        };
        let text = render_metrics(&report, 3, &strategy);
        for needle in [
            "numa_cache_strategy_info{strategy=\"round_robin\",node_preference=\"1\",memory_policy=\"preferred\"} 1",
            "numa_cache_topology_generation 3",
            "numa_cache_request_duration_seconds_bucket{op=\"get\",le=\"0.00005\"} 1",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }
}

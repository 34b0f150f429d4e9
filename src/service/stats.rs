//! org.opdbus.NumaCache.CacheStats on the root object: totals as properties (changes
//! coalesced into at most one PropertiesChanged a second by `daemon`), the statistics JSON
//! (the application's typed report, serialized once), the stored history, and ResetCounters.

use crate::service::Service;
use crate::service::errors::ServiceError;
use std::sync::Arc;
use zbus::interface;
use zbus::message::Header;

/// The CacheStats interface.
pub struct StatsIface {
    svc: Arc<Service>,
}

impl StatsIface {
    /// Serve the statistics of `svc`.
    pub fn new(svc: Arc<Service>) -> StatsIface {
        StatsIface { svc }
    }
}

fn encode<T: serde::Serialize>(v: &T, what: &str) -> Result<String, ServiceError> {
    serde_json::to_string(v).map_err(|e| {
        ServiceError(crate::app::AppError::Unavailable(format!(
            "could not encode {what}: {e}"
        )))
    })
}

#[interface(name = "org.opdbus.NumaCache.CacheStats")]
impl StatsIface {
    /// Entries in the cache (changes coalesced: at most one signal a second).
    #[zbus(property)]
    fn entries(&self) -> u64 {
        self.svc.app.totals().entries
    }

    /// Logical (uncompressed) bytes of all entries.
    #[zbus(property)]
    fn logical_bytes(&self) -> u64 {
        self.svc.app.totals().logical_bytes
    }

    /// Bytes on disk after compression.
    #[zbus(property)]
    fn stored_bytes(&self) -> u64 {
        self.svc.app.totals().stored_bytes
    }

    /// Reads that found their entry.
    #[zbus(property)]
    fn hits(&self) -> u64 {
        self.svc.app.totals().hits
    }

    /// Reads that did not.
    #[zbus(property)]
    fn misses(&self) -> u64 {
        self.svc.app.totals().misses
    }

    /// Hits / (hits + misses), 0 before any read.
    #[zbus(property)]
    fn hit_rate(&self) -> f64 {
        self.svc.app.totals().hit_rate
    }

    /// Entries evicted to stay under the byte limits, or expired.
    #[zbus(property)]
    fn evictions(&self) -> u64 {
        self.svc.app.totals().evictions
    }

    /// Share of hits served on the caller's own node.
    #[zbus(property)]
    fn local_hit_ratio(&self) -> f64 {
        self.svc.app.totals().local_hit_ratio
    }

    /// Statistics as JSON: the seed's node_distribution (cache_entries, memory_usage_mb,
    /// hit_rate per node) and numa_benefits, plus totals, btrfs and strategy.
    #[zbus(out_args("stats_json"))]
    async fn get_stats(&self) -> Result<String, ServiceError> {
        // Also "request_latency": the Get/Put engine-time histograms, so
        // `numacachectl stats --prometheus` renders what /metrics does. Kept out of the doc
        // comment above, which is the introspection text checked against dbus/*.xml.
        encode(&self.svc.app.stats().await?, "statistics")
    }

    /// The numa_cache_stats rows taken between the two Unix times (seconds, inclusive) as
    /// a JSON array; until_unix 0 means now.
    #[zbus(out_args("rows_json"))]
    async fn get_history(&self, since_unix: u64, until_unix: u64) -> Result<String, ServiceError> {
        let until = (until_unix != 0).then_some(until_unix);
        let rows = self.svc.app.history(Some(since_unix), until).await?;
        encode(&rows, "history")
    }

    /// Zero the hit, miss and eviction counters. polkit action
    /// org.opdbus.NumaCache.manage-cache.
    async fn reset_counters(&self, #[zbus(header)] header: Header<'_>) -> Result<(), ServiceError> {
        let who = self.svc.requester(&header).await?;
        Ok(self.svc.app.reset_counters(&who).await?)
    }
}

//! org.opdbus.NumaCache.CacheStats on the root object: totals as properties (coalesced into
//! at most one PropertiesChanged a second by `daemon`'s ticker), the seed's statistics JSON,
//! the stored history, and ResetCounters.

use crate::gateway::metrics::STATS_LATENCY_KEY;
use crate::service::errors::ServiceError;
use crate::service::polkit::actions;
use crate::service::{Service, blocking};
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

#[interface(name = "org.opdbus.NumaCache.CacheStats")]
impl StatsIface {
    /// Entries in the cache (changes coalesced: at most one signal a second).
    #[zbus(property)]
    fn entries(&self) -> u64 {
        self.svc.cache.totals().entries
    }

    /// Logical (uncompressed) bytes of all entries.
    #[zbus(property)]
    fn logical_bytes(&self) -> u64 {
        self.svc.cache.totals().logical_bytes
    }

    /// Bytes on disk after compression.
    #[zbus(property)]
    fn stored_bytes(&self) -> u64 {
        self.svc.cache.totals().stored_bytes
    }

    /// Reads that found their entry.
    #[zbus(property)]
    fn hits(&self) -> u64 {
        self.svc.cache.totals().hits
    }

    /// Reads that did not.
    #[zbus(property)]
    fn misses(&self) -> u64 {
        self.svc.cache.totals().misses
    }

    /// Hits / (hits + misses), 0 before any read.
    #[zbus(property)]
    fn hit_rate(&self) -> f64 {
        self.svc.cache.totals().hit_rate
    }

    /// Entries evicted to stay under the byte limits, or expired.
    #[zbus(property)]
    fn evictions(&self) -> u64 {
        self.svc.cache.totals().evictions
    }

    /// Share of hits served on the caller's own node.
    #[zbus(property)]
    fn local_hit_ratio(&self) -> f64 {
        self.svc.cache.totals().local_hit_ratio
    }

    /// Statistics as JSON: the seed's node_distribution (cache_entries, memory_usage_mb,
    /// hit_rate per node) and numa_benefits, plus totals, btrfs and strategy.
    #[zbus(out_args("stats_json"))]
    async fn get_stats(&self) -> Result<String, ServiceError> {
        // Also "request_latency" (STATS_LATENCY_KEY): the Get/Put engine-time histograms, so
        // `numacachectl stats --prometheus` renders what /metrics does. Kept out of the doc
        // comment above, which is the introspection text checked against dbus/*.xml.
        let _call = self.svc.enter()?;
        let cache = Arc::clone(&self.svc.cache);
        let latency = Arc::clone(&self.svc.latency);
        blocking(move || {
            let mut stats = cache.stats_json();
            if let (Some(obj), Ok(lat)) = (
                stats.as_object_mut(),
                serde_json::to_value(latency.snapshot()),
            ) {
                obj.insert(STATS_LATENCY_KEY.to_string(), lat);
            }
            serde_json::to_string(&stats)
                .map_err(|e| ServiceError::Unavailable(format!("could not encode statistics: {e}")))
        })
        .await
    }

    /// The numa_cache_stats rows taken between the two Unix times (seconds, inclusive) as
    /// a JSON array; until_unix 0 means now.
    #[zbus(out_args("rows_json"))]
    async fn get_history(&self, since_unix: u64, until_unix: u64) -> Result<String, ServiceError> {
        let _call = self.svc.enter()?;
        let until = if until_unix == 0 {
            u64::MAX
        } else {
            until_unix
        };
        if since_unix > until {
            return Err(ServiceError::invalid(format!(
                "since_unix {since_unix} is after until_unix {until_unix}: give the earlier time first"
            )));
        }
        let cache = Arc::clone(&self.svc.cache);
        blocking(move || {
            let rows = cache.history(since_unix, until)?;
            serde_json::to_string(&rows)
                .map_err(|e| ServiceError::Unavailable(format!("could not encode history: {e}")))
        })
        .await
    }

    /// Zero the hit, miss and eviction counters. polkit action
    /// org.opdbus.NumaCache.manage-cache.
    async fn reset_counters(&self, #[zbus(header)] header: Header<'_>) -> Result<(), ServiceError> {
        let _call = self.svc.enter()?;
        self.svc
            .polkit
            .check(&header, actions::MANAGE_CACHE)
            .await?;
        let cache = Arc::clone(&self.svc.cache);
        blocking(move || {
            cache.reset_counters();
            Ok(())
        })
        .await?;
        tracing::info!("counters reset");
        Ok(())
    }
}

//! zbus proxies for every interface of `org.opdbus.NumaCache`, one trait per interface,
//! member for member as in `dbus/org.opdbus.NumaCache.xml`.
//!
//! [`crate::Client`] wraps these with typed views, options and error mapping; use a proxy
//! directly for what the wrapper does not offer (for example a property's own change stream).
//!
//! ```no_run
//! # async fn demo() -> Result<(), numa_cache_client::Error> {
//! let client = numa_cache_client::Client::system().await?;
//! let generation = client.topology_proxy().generation().await?;
//! println!("topology generation {generation}");
//! # Ok(()) }
//! ```

use serde_bytes::{ByteBuf, Bytes};
use std::collections::HashMap;
use zbus::{OwnedFd, OwnedVariant, Variant, proxy};

/// `org.opdbus.NumaCache.Topology` on the root object.
#[proxy(
    interface = "org.opdbus.NumaCache.Topology",
    default_service = "org.opdbus.NumaCache",
    default_path = "/org/opdbus/NumaCache"
)]
pub trait Topology {
    /// The topology as JSON (the seed's "Get NUMA Topology" response plus extra fields).
    fn get_topology(&self) -> zbus::Result<String>;
    /// The node whose CPU list holds `cpu`.
    fn node_of_cpu(&self, cpu: u32) -> zbus::Result<u32>;
    /// Re-read the topology now.
    fn refresh(&self) -> zbus::Result<()>;
    /// The topology changed: its new generation and node ids.
    #[zbus(signal)]
    fn topology_changed(&self, generation: u64, node_ids: Vec<u32>) -> zbus::Result<()>;
    /// The CPUs the daemon may run on, ascending.
    #[zbus(property)]
    fn allowed_cpus(&self) -> zbus::Result<Vec<u32>>;
    /// The nodes whose memory the daemon may use, ascending.
    #[zbus(property)]
    fn allowed_nodes(&self) -> zbus::Result<Vec<u32>>;
    /// SLIT distances, rows and columns in `NodeIds` order.
    #[zbus(property)]
    fn distances(&self) -> zbus::Result<Vec<Vec<u32>>>;
    /// Bumped on every topology change.
    #[zbus(property)]
    fn generation(&self) -> zbus::Result<u64>;
    /// The kernel's node numbers, ascending.
    #[zbus(property)]
    fn node_ids(&self) -> zbus::Result<Vec<u32>>;
    /// False when NUMA placement is off for want of usable data.
    #[zbus(property)]
    fn numa_available(&self) -> zbus::Result<bool>;
    /// The strategy this topology calls for.
    #[zbus(property)]
    fn optimal_strategy(&self) -> zbus::Result<String>;
    /// MemTotal of all nodes, in bytes.
    #[zbus(property)]
    fn total_memory_bytes(&self) -> zbus::Result<u64>;
}

/// `org.opdbus.NumaCache.Strategy` on the root object.
#[proxy(
    interface = "org.opdbus.NumaCache.Strategy",
    default_service = "org.opdbus.NumaCache",
    default_path = "/org/opdbus/NumaCache"
)]
pub trait Strategy {
    /// Switch the placement strategy (polkit `set-strategy`).
    fn set_strategy(
        &self,
        strategy: &str,
        node_preference: i32,
    ) -> zbus::Result<HashMap<String, OwnedVariant>>;
    /// Tune placement for a workload (polkit `optimize`).
    fn optimize(
        &self,
        workload_type: &str,
        target_node: i32,
        memory_policy: &str,
    ) -> zbus::Result<HashMap<String, OwnedVariant>>;
    /// Pin a process to a node and migrate its pages (polkit `bind-process`).
    fn bind_process(
        &self,
        pid: u32,
        node: i32,
        memory_policy: &str,
    ) -> zbus::Result<HashMap<String, OwnedVariant>>;
    /// The strategy changed.
    #[zbus(signal)]
    fn strategy_changed(
        &self,
        name: &str,
        node_preference: i32,
        memory_policy: &str,
    ) -> zbus::Result<()>;
    /// How many threads or processes the last change re-pinned.
    #[zbus(property)]
    fn affected_processes(&self) -> zbus::Result<u32>;
    /// The worker threads' memory policy.
    #[zbus(property)]
    fn memory_policy(&self) -> zbus::Result<String>;
    /// The active strategy.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    /// The preferred node, or -1.
    #[zbus(property)]
    fn node_preference(&self) -> zbus::Result<i32>;
    /// The workload type of the last Optimize.
    #[zbus(property)]
    fn workload_type(&self) -> zbus::Result<String>;
}

/// `org.opdbus.NumaCache.CacheStats` on the root object.
#[proxy(
    interface = "org.opdbus.NumaCache.CacheStats",
    default_service = "org.opdbus.NumaCache",
    default_path = "/org/opdbus/NumaCache"
)]
pub trait CacheStats {
    /// Statistics as JSON (`node_distribution`, `numa_benefits`, ...).
    fn get_stats(&self) -> zbus::Result<String>;
    /// Stored statistics rows between two Unix times, as JSON.
    fn get_history(&self, since_unix: u64, until_unix: u64) -> zbus::Result<String>;
    /// Reset the hit and miss counters (polkit `manage-cache`).
    fn reset_counters(&self) -> zbus::Result<()>;
    /// Entries in the cache.
    #[zbus(property)]
    fn entries(&self) -> zbus::Result<u64>;
    /// Entries evicted since start.
    #[zbus(property)]
    fn evictions(&self) -> zbus::Result<u64>;
    /// hits / (hits + misses).
    #[zbus(property)]
    fn hit_rate(&self) -> zbus::Result<f64>;
    /// Hits since start or the last reset.
    #[zbus(property)]
    fn hits(&self) -> zbus::Result<u64>;
    /// Share of hits served on the caller's own node.
    #[zbus(property)]
    fn local_hit_ratio(&self) -> zbus::Result<f64>;
    /// Bytes of values as given.
    #[zbus(property)]
    fn logical_bytes(&self) -> zbus::Result<u64>;
    /// Misses since start or the last reset.
    #[zbus(property)]
    fn misses(&self) -> zbus::Result<u64>;
    /// Bytes on disk.
    #[zbus(property)]
    fn stored_bytes(&self) -> zbus::Result<u64>;
}

/// `org.opdbus.NumaCache.Cache` on the root object: the data plane.
#[proxy(
    interface = "org.opdbus.NumaCache.Cache",
    default_service = "org.opdbus.NumaCache",
    default_path = "/org/opdbus/NumaCache"
)]
pub trait Cache {
    /// Store a value; returns the node it was placed on.
    fn put(
        &self,
        namespace: &str,
        key: &str,
        value: &Bytes,
        options: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<u32>;
    /// The value; `NotFound` on a miss.
    fn get(&self, namespace: &str, key: &str) -> zbus::Result<ByteBuf>;
    /// The value as a sealed memfd and its size.
    fn get_fd(&self, namespace: &str, key: &str) -> zbus::Result<(OwnedFd, u64)>;
    /// Store the contents of a sealed memfd.
    fn put_fd(
        &self,
        namespace: &str,
        key: &str,
        fd: zbus::Fd<'_>,
        options: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<u32>;
    /// The value on a hit (`true`, value); on a miss the first caller gets a lease on the
    /// key (`false`, empty) and its Put ends it, while later callers wait up to `lease_ms`
    /// for that Put (issue 12; a daemon without it answers UnknownMethod).
    fn get_or_lease(
        &self,
        namespace: &str,
        key: &str,
        lease_ms: u32,
    ) -> zbus::Result<(bool, ByteBuf)>;
    /// The values of the keys present; missing keys are absent (at most 1024 keys and
    /// 16 MiB of values, else TooLarge).
    fn get_many(&self, namespace: &str, keys: &[&str]) -> zbus::Result<HashMap<String, ByteBuf>>;
    /// Store every (key, value) with one set of options, all or nothing; returns how many
    /// were stored (at most 1024 entries and 16 MiB of values, else TooLarge).
    fn put_many(
        &self,
        namespace: &str,
        entries: HashMap<&str, &Bytes>,
        options: HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<u32>;
    /// A connected unix socket whose other end the daemon serves as a peer-to-peer D-Bus
    /// connection with this interface, acting as the caller (not on a direct connection).
    fn open_direct(&self) -> zbus::Result<OwnedFd>;
    /// Remove an entry; true when there was one.
    fn delete(&self, namespace: &str, key: &str) -> zbus::Result<bool>;
    /// What is known of an entry without reading it.
    fn lookup(&self, namespace: &str, key: &str) -> zbus::Result<HashMap<String, OwnedVariant>>;
    /// Remove every entry of a namespace (polkit `manage-cache`).
    fn clear(&self, namespace: &str) -> zbus::Result<u64>;
    /// Snapshot every shard (polkit `manage-cache`).
    fn create_snapshot(&self) -> zbus::Result<String>;
    /// Snapshot names, oldest first (polkit `manage-cache`).
    fn list_snapshots(&self) -> zbus::Result<Vec<String>>;
    /// Delete a snapshot (polkit `manage-cache`).
    fn delete_snapshot(&self, name: &str) -> zbus::Result<()>;
}

/// `org.opdbus.NumaCache.Node` on each child object `/org/opdbus/NumaCache/nodeN`.
#[proxy(
    interface = "org.opdbus.NumaCache.Node",
    default_service = "org.opdbus.NumaCache",
    assume_defaults = false
)]
pub trait Node {
    /// Bytes of values whose shard is this node's.
    #[zbus(property)]
    fn cache_bytes(&self) -> zbus::Result<u64>;
    /// Entries whose shard is this node's.
    #[zbus(property)]
    fn cache_entries(&self) -> zbus::Result<u64>;
    /// The node's online CPUs.
    #[zbus(property)]
    fn cpus(&self) -> zbus::Result<Vec<u32>>;
    /// Distance to every node, by node id.
    #[zbus(property)]
    fn distances(&self) -> zbus::Result<HashMap<u32, u32>>;
    /// True when the node has CPUs.
    #[zbus(property)]
    fn has_cpu(&self) -> zbus::Result<bool>;
    /// True when the node has memory.
    #[zbus(property)]
    fn has_memory(&self) -> zbus::Result<bool>;
    /// Hit rate of this node's shard.
    #[zbus(property)]
    fn hit_rate(&self) -> zbus::Result<f64>;
    /// The kernel's node number.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> zbus::Result<u32>;
    /// MemFree of the node in bytes, read when asked.
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_free_bytes(&self) -> zbus::Result<u64>;
    /// Bytes of this node's memory tier.
    #[zbus(property)]
    fn memory_tier_bytes(&self) -> zbus::Result<u64>;
    /// MemTotal of the node in bytes.
    #[zbus(property)]
    fn memory_total_bytes(&self) -> zbus::Result<u64>;
}

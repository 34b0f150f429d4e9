//! Typed views of the daemon's properties and replies.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use zbus::{OwnedVariant, Variant};

/// Options of a put: time to live, explicit node, durability.
///
/// ```
/// use numa_cache_client::PutOptions;
/// use std::time::Duration;
/// let o = PutOptions::new().ttl(Duration::from_secs(600)).node(1).sync(true);
/// assert_eq!(o.ttl, Some(Duration::from_secs(600)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Expire after this long (whole seconds, at least one; sent as `ttl_seconds` t).
    pub ttl: Option<Duration>,
    /// Place the entry on this node (sent as `node` i).
    pub node: Option<u32>,
    /// Reply only once the value is on stable storage (sent as `sync` b, only when true).
    pub sync: bool,
}

impl PutOptions {
    /// No options: the daemon's strategy places the entry, it never expires.
    ///
    /// ```
    /// assert_eq!(numa_cache_client::PutOptions::new(), Default::default());
    /// ```
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    /// Expire after `ttl` (rounded up to whole seconds).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let o = numa_cache_client::PutOptions::new().ttl(Duration::from_secs(5));
    /// assert_eq!(o.ttl, Some(Duration::from_secs(5)));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> PutOptions {
        self.ttl = Some(ttl);
        self
    }

    /// Place the entry on `node`.
    ///
    /// ```
    /// assert_eq!(numa_cache_client::PutOptions::new().node(2).node, Some(2));
    /// ```
    pub fn node(mut self, node: u32) -> PutOptions {
        self.node = Some(node);
        self
    }

    /// Wait until the value is on stable storage before the reply.
    ///
    /// ```
    /// assert!(numa_cache_client::PutOptions::new().sync(true).sync);
    /// ```
    pub fn sync(mut self, sync: bool) -> PutOptions {
        self.sync = sync;
        self
    }

    /// The `a{sv}` the daemon reads. A TTL of zero is refused here, by name, rather than
    /// sent (the daemon wants at least one second).
    pub(crate) fn to_dict(self) -> Result<HashMap<&'static str, Variant<'static>>> {
        let mut d = HashMap::new();
        if let Some(ttl) = self.ttl {
            if ttl.is_zero() {
                return Err(Error::InvalidArgument(
                    "a TTL must be at least one second".into(),
                ));
            }
            let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            d.insert("ttl_seconds", Variant::from(secs));
        }
        if let Some(node) = self.node {
            let node = i32::try_from(node).map_err(|_| {
                Error::InvalidArgument(format!("node {node} is not a node id (at most 2^31-1)"))
            })?;
            d.insert("node", Variant::from(node));
        }
        if self.sync {
            d.insert("sync", Variant::from(true));
        }
        Ok(d)
    }
}

/// What `Lookup` knows of an entry.
///
/// ```
/// use numa_cache_client::EntryInfo;
/// let i = EntryInfo { size: 4, stored_size: 40, node: 0, created: 1, last_access: 2, hits: 0, expires: None };
/// assert!(i.expires.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Logical size in bytes.
    pub size: u64,
    /// Bytes on disk, header included.
    pub stored_size: u64,
    /// The node whose shard holds the entry.
    pub node: u32,
    /// When it was written, Unix seconds.
    pub created: u64,
    /// Last read or write, Unix seconds.
    pub last_access: u64,
    /// Reads served.
    pub hits: u64,
    /// When it expires, Unix seconds; `None` for never.
    pub expires: Option<u64>,
}

impl EntryInfo {
    pub(crate) fn from_dict(d: &Dict) -> Result<EntryInfo> {
        let size = d.u64("size")?;
        let stored_size = d.u64("stored_size")?;
        let node = d.u32("node")?;
        let created = d.u64("created")?;
        let last_access = d.u64("last_access")?;
        let hits = d.u64("hits")?;
        let expires = d.u64("expires")?;
        Ok(EntryInfo {
            size,
            stored_size,
            node,
            created,
            last_access,
            hits,
            expires: (expires != 0).then_some(expires),
        })
    }
}

/// An `a{sv}` reply (SetStrategy, Optimize, BindProcess, Lookup), with typed getters that
/// name the missing or mistyped field.
///
/// ```
/// use numa_cache_client::Dict;
/// use zbus::{OwnedVariant, Variant};
/// let d = Dict::from_iter([("status".to_string(), OwnedVariant::try_from(Variant::from("applied")).unwrap())]);
/// assert_eq!(d.str("status").unwrap(), "applied");
/// assert!(d.u64("status").is_err());
/// ```
#[derive(Debug, Default)]
pub struct Dict(BTreeMap<String, OwnedVariant>);

impl FromIterator<(String, OwnedVariant)> for Dict {
    fn from_iter<I: IntoIterator<Item = (String, OwnedVariant)>>(iter: I) -> Dict {
        Dict(iter.into_iter().collect())
    }
}

impl From<HashMap<String, OwnedVariant>> for Dict {
    fn from(m: HashMap<String, OwnedVariant>) -> Dict {
        m.into_iter().collect()
    }
}

impl Dict {
    /// The raw value of `field`.
    ///
    /// ```
    /// assert!(numa_cache_client::Dict::default().get("x").is_none());
    /// ```
    pub fn get(&self, field: &str) -> Option<&OwnedVariant> {
        self.0.get(field)
    }

    /// Field names, sorted.
    ///
    /// ```
    /// assert_eq!(numa_cache_client::Dict::default().keys().count(), 0);
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    fn need(&self, field: &str) -> Result<&OwnedVariant> {
        self.0
            .get(field)
            .ok_or_else(|| Error::Protocol(format!("the reply has no field {field:?}")))
    }

    /// A string field.
    ///
    /// ```
    /// assert!(numa_cache_client::Dict::default().str("status").is_err());
    /// ```
    pub fn str(&self, field: &str) -> Result<String> {
        match &**self.need(field)? {
            Variant::Str(s) => Ok(s.as_str().to_string()),
            other => Err(mistyped(field, "a string", other)),
        }
    }

    /// An integer field of any D-Bus integer type that fits in i128.
    fn int(&self, field: &str) -> Result<i128> {
        let v = self.need(field)?;
        Ok(match &**v {
            Variant::U8(n) => (*n).into(),
            Variant::U16(n) => (*n).into(),
            Variant::U32(n) => (*n).into(),
            Variant::U64(n) => (*n).into(),
            Variant::I16(n) => (*n).into(),
            Variant::I32(n) => (*n).into(),
            Variant::I64(n) => (*n).into(),
            other => return Err(mistyped(field, "an integer", other)),
        })
    }

    /// An unsigned integer field (any integer type whose value fits).
    ///
    /// ```
    /// assert!(numa_cache_client::Dict::default().u64("size").is_err());
    /// ```
    pub fn u64(&self, field: &str) -> Result<u64> {
        let n = self.int(field)?;
        u64::try_from(n).map_err(|_| Error::Protocol(format!("field {field:?} is {n}, not a u64")))
    }

    /// A u32 field (any integer type whose value fits).
    ///
    /// ```
    /// assert!(numa_cache_client::Dict::default().u32("node").is_err());
    /// ```
    pub fn u32(&self, field: &str) -> Result<u32> {
        let n = self.int(field)?;
        u32::try_from(n).map_err(|_| Error::Protocol(format!("field {field:?} is {n}, not a u32")))
    }

    /// A signed integer field (any integer type whose value fits).
    ///
    /// ```
    /// assert!(numa_cache_client::Dict::default().i64("node_preference").is_err());
    /// ```
    pub fn i64(&self, field: &str) -> Result<i64> {
        let n = self.int(field)?;
        i64::try_from(n).map_err(|_| Error::Protocol(format!("field {field:?} is {n}, not an i64")))
    }

    /// The reply as a JSON object with sorted keys (numbers, strings and booleans as
    /// themselves, anything else as its D-Bus text form).
    ///
    /// ```
    /// assert_eq!(numa_cache_client::Dict::default().to_json(), serde_json::json!({}));
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        let map = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), variant_json(v)))
            .collect();
        serde_json::Value::Object(map)
    }
}

fn mistyped(field: &str, want: &str, got: &Variant<'_>) -> Error {
    Error::Protocol(format!(
        "field {field:?} should be {want}, got {}",
        got.value_signature()
    ))
}

fn variant_json(v: &Variant<'_>) -> serde_json::Value {
    match v {
        Variant::Bool(b) => (*b).into(),
        Variant::U8(n) => (*n).into(),
        Variant::I16(n) => (*n).into(),
        Variant::U16(n) => (*n).into(),
        Variant::I32(n) => (*n).into(),
        Variant::U32(n) => (*n).into(),
        Variant::I64(n) => (*n).into(),
        Variant::U64(n) => (*n).into(),
        Variant::F64(n) => (*n).into(),
        Variant::Str(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

/// The `org.opdbus.NumaCache.Topology` properties, read together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyInfo {
    /// False when NUMA placement is off for want of usable data.
    pub numa_available: bool,
    /// The kernel's node numbers, ascending (may be sparse).
    pub node_ids: Vec<u32>,
    /// The CPUs the daemon may run on.
    pub allowed_cpus: Vec<u32>,
    /// The nodes whose memory the daemon may use.
    pub allowed_nodes: Vec<u32>,
    /// MemTotal of all nodes, in bytes.
    pub total_memory_bytes: u64,
    /// SLIT distances, rows and columns in `node_ids` order.
    pub distances: Vec<Vec<u32>>,
    /// The strategy this topology calls for.
    pub optimal_strategy: String,
    /// Bumped on every topology change.
    pub generation: u64,
}

impl TopologyInfo {
    /// The distance from node `from` to node `to`, by node id.
    ///
    /// ```
    /// use numa_cache_client::TopologyInfo;
    /// let t = TopologyInfo { numa_available: true, node_ids: vec![0, 2], allowed_cpus: vec![],
    ///     allowed_nodes: vec![0, 2], total_memory_bytes: 0,
    ///     distances: vec![vec![10, 21], vec![21, 10]], optimal_strategy: "local_node".into(),
    ///     generation: 1 };
    /// assert_eq!(t.distance(2, 0), Some(21));
    /// assert_eq!(t.distance(1, 0), None);
    /// ```
    pub fn distance(&self, from: u32, to: u32) -> Option<u32> {
        let i = self.node_ids.iter().position(|&n| n == from)?;
        let j = self.node_ids.iter().position(|&n| n == to)?;
        self.distances.get(i)?.get(j).copied()
    }
}

/// The `org.opdbus.NumaCache.Strategy` properties, read together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyInfo {
    /// `local_node`, `round_robin`, `most_memory`, `interleave` or `disabled`.
    pub name: String,
    /// The preferred node, if any.
    pub node_preference: Option<u32>,
    /// `bind`, `preferred`, `interleaved` or `default`.
    pub memory_policy: String,
    /// The workload type of the last Optimize (empty before any).
    pub workload_type: String,
    /// How many threads or processes the last change re-pinned.
    pub affected_processes: u32,
}

/// The `org.opdbus.NumaCache.CacheStats` properties, read together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheStatsInfo {
    /// Entries in the cache.
    pub entries: u64,
    /// Bytes of values as given.
    pub logical_bytes: u64,
    /// Bytes on disk.
    pub stored_bytes: u64,
    /// Hits since start or the last reset.
    pub hits: u64,
    /// Misses since start or the last reset.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
    /// Entries evicted.
    pub evictions: u64,
    /// Share of hits served on the caller's own node.
    pub local_hit_ratio: f64,
}

/// The `org.opdbus.NumaCache.Node` properties of one node, read together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The kernel's node number.
    pub id: u32,
    /// The node's online CPUs.
    pub cpus: Vec<u32>,
    /// True when the node has CPUs.
    pub has_cpu: bool,
    /// True when the node has memory.
    pub has_memory: bool,
    /// MemTotal of the node, bytes.
    pub memory_total_bytes: u64,
    /// MemFree of the node when read, bytes.
    pub memory_free_bytes: u64,
    /// Distance to every node, by node id.
    pub distances: BTreeMap<u32, u32>,
    /// Entries whose shard is this node's.
    pub cache_entries: u64,
    /// Bytes of values whose shard is this node's.
    pub cache_bytes: u64,
    /// Bytes of this node's memory tier.
    pub memory_tier_bytes: u64,
    /// Hit rate of this node's shard.
    pub hit_rate: f64,
}

/// The reply of `SetStrategy` and `Optimize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyChange {
    /// `applied` (SetStrategy) or `optimized` (Optimize).
    pub status: String,
    /// The strategy now active.
    pub strategy: String,
    /// The workload type, for Optimize.
    pub workload_type: Option<String>,
    /// The preferred node, if any.
    pub node_preference: Option<u32>,
    /// The memory policy now active.
    pub memory_policy: Option<String>,
    /// Threads or processes re-pinned.
    pub affected_processes: Option<u64>,
}

impl StrategyChange {
    pub(crate) fn from_dict(d: &Dict) -> Result<StrategyChange> {
        let opt_str = |f: &str| d.get(f).map(|_| d.str(f)).transpose();
        let pref = d
            .get("node_preference")
            .map(|_| d.i64("node_preference"))
            .transpose()?;
        Ok(StrategyChange {
            status: d.str("status")?,
            strategy: d.str("strategy")?,
            workload_type: opt_str("workload_type")?,
            node_preference: pref.and_then(|n| u32::try_from(n).ok()),
            memory_policy: opt_str("memory_policy")?,
            affected_processes: d
                .get("affected_processes")
                .map(|_| d.u64("affected_processes"))
                .transpose()?,
        })
    }
}

/// One node of the `GetTopology` JSON (the seed's shape plus the extra fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyNode {
    /// The kernel's node number.
    pub node_id: u32,
    /// Online CPUs of the node.
    pub cpu_count: u32,
    /// Their ids.
    pub cpu_list: Vec<u32>,
    /// MemTotal in MiB, rounded down.
    pub memory_mb: u64,
    /// Distances keyed by node id (as a string, as in the seed).
    pub distances: BTreeMap<String, u32>,
    /// True when the node has CPUs.
    #[serde(default)]
    pub has_cpu: bool,
    /// True when the node has memory.
    #[serde(default)]
    pub has_memory: bool,
    /// True when the daemon's cpuset allows the node's memory.
    #[serde(default)]
    pub allowed: bool,
    /// What the node's memory is: `general`, or `gpu` for a GPU's memory node (kept out of
    /// placement unless a caller names it). Absent from older daemons: `general`.
    #[serde(default = "general_kind")]
    pub kind: String,
}

fn general_kind() -> String {
    "general".to_string()
}

/// The `GetTopology` JSON.
///
/// ```
/// let j = r#"{"nodes":[{"node_id":0,"cpu_count":1,"cpu_list":[0],"memory_mb":512,
///   "distances":{"0":10}}],"total_memory_mb":512,"optimal_strategy":"local_node"}"#;
/// let t: numa_cache_client::TopologyReport = serde_json::from_str(j).unwrap();
/// assert_eq!(t.nodes[0].distances["0"], 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyReport {
    /// The nodes, ascending.
    pub nodes: Vec<TopologyNode>,
    /// MemTotal of all nodes in MiB.
    pub total_memory_mb: u64,
    /// The strategy this topology calls for.
    pub optimal_strategy: String,
    /// The nodes the daemon may use.
    #[serde(default)]
    pub allowed_nodes: Vec<u32>,
    /// The CPUs the daemon may use.
    #[serde(default)]
    pub allowed_cpus: Vec<u32>,
    /// False when NUMA placement is off.
    #[serde(default)]
    pub numa_available: bool,
    /// Inconsistent firmware data, missing files, in words.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: impl Into<Variant<'static>>) -> OwnedVariant {
        OwnedVariant::try_from(x.into()).unwrap()
    }

    #[test]
    fn lookup_replies_read_whatever_integer_type_the_daemon_sends() {
        let d: Dict = [
            ("size", v(10u64)),
            ("stored_size", v(50u64)),
            ("node", v(1u32)),
            ("created", v(5u64)),
            ("last_access", v(6u64)),
            ("hits", v(3u32)),
            ("expires", v(0u64)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let i = EntryInfo::from_dict(&d).unwrap();
        assert_eq!((i.size, i.hits, i.expires), (10, 3, None));
    }

    #[test]
    fn malformed_replies_name_the_field() {
        let d: Dict = [("size".to_string(), v(-1i64))].into_iter().collect();
        let e = EntryInfo::from_dict(&d).unwrap_err().to_string();
        assert!(e.contains("\"size\"") && e.contains("-1"), "{e}");
        let d: Dict = [("size".to_string(), v(1u64))].into_iter().collect();
        let e = EntryInfo::from_dict(&d).unwrap_err().to_string();
        assert!(e.contains("stored_size"), "{e}");
    }

    #[test]
    fn options_refuse_what_the_daemon_would_misread() {
        assert!(PutOptions::new().ttl(Duration::ZERO).to_dict().is_err());
        assert!(PutOptions::new().node(u32::MAX).to_dict().is_err());
        let d = PutOptions::new()
            .ttl(Duration::from_millis(1500))
            .to_dict()
            .unwrap();
        assert_eq!(d["ttl_seconds"], Variant::from(2u64), "rounded up");
        assert!(!PutOptions::new().to_dict().unwrap().contains_key("sync"));
    }
}

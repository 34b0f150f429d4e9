//! The daemon's configuration: every `OPDBUS_*` environment variable of ARCHITECTURE.md is
//! also a flag (the flag wins). Values are checked before anything starts, and a bad one
//! stops start-up with a sentence naming the variable, the value and what is allowed.

use crate::placement::{MemoryPolicy, Strategy, StrategyConfig};
use crate::store::CacheConfig;
use std::path::PathBuf;

/// The raw flags and variables, as given. `DaemonArgs::resolve` checks them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// Placement strategy: local_node, round_robin, most_memory, interleave, disabled.
    #[arg(long, env = "OPDBUS_NUMA_STRATEGY", value_name = "NAME")]
    pub strategy: Option<String>,
    /// Preferred NUMA node (a node id; -1 or empty for none).
    #[arg(
        long,
        env = "OPDBUS_NUMA_NODE_PREFERENCE",
        value_name = "NODE",
        allow_hyphen_values = true
    )]
    pub node_preference: Option<String>,
    /// Memory policy of the worker threads: bind, preferred, interleaved, default.
    #[arg(long, env = "OPDBUS_NUMA_MEMORY_POLICY", value_name = "POLICY")]
    pub memory_policy: Option<String>,
    /// State directory (index, shards, snapshots).
    #[arg(long, env = "OPDBUS_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<String>,
    /// Disk bound of the cache in bytes (suffixes K, M, G, T: powers of 1024).
    #[arg(long, env = "OPDBUS_CACHE_MAX_BYTES", value_name = "BYTES")]
    pub max_bytes: Option<String>,
    /// Memory-tier bound over all nodes in bytes (suffixes K, M, G, T).
    #[arg(long, env = "OPDBUS_CACHE_MEMORY_BYTES", value_name = "BYTES")]
    pub memory_bytes: Option<String>,
    /// How many snapshots to keep.
    #[arg(long, env = "OPDBUS_CACHE_SNAPSHOTS_KEEP", value_name = "N")]
    pub snapshots_keep: Option<String>,
    /// A default put is on stable storage within this many milliseconds (0: every put is
    /// synced before it is answered). Default 1000.
    #[arg(long, env = "OPDBUS_CACHE_SYNC_INTERVAL_MS", value_name = "MS")]
    pub sync_interval_ms: Option<String>,
    /// Read the topology from a captured or synthetic tree (DIR/sys, DIR/proc) instead of
    /// this machine, and watch it there (tests, demos of hotplug). Default: /.
    #[arg(long, value_name = "DIR")]
    pub fs_root: Option<PathBuf>,
    /// The optional HTTP gateway (`--http-socket`, `--http-listen`, `--http-allow-remote`);
    /// off unless a socket or an address is given.
    #[command(flatten)]
    pub gateway: crate::gateway::GatewayArgs,
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable} (--{flag}) {value:?}: {allowed}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// The equivalent flag, without dashes.
    pub flag: &'static str,
    /// What was given.
    pub value: String,
    /// What is allowed, in words.
    pub allowed: String,
}

impl DaemonArgs {
    /// Check every value and build the engine's configuration (defaults for what is unset).
    pub fn resolve(&self) -> Result<CacheConfig, ConfigError> {
        let mut cfg = CacheConfig::default();
        let mut strategy = StrategyConfig::default();
        if let Some(v) = nonempty(&self.strategy) {
            strategy.strategy = v.parse::<Strategy>().map_err(|_| ConfigError {
                variable: "OPDBUS_NUMA_STRATEGY",
                flag: "strategy",
                value: v.to_string(),
                allowed: format!("allowed values are {}", Strategy::ALLOWED),
            })?;
        }
        if let Some(v) = nonempty(&self.node_preference) {
            strategy.node_preference = parse_node(v).ok_or_else(|| ConfigError {
                variable: "OPDBUS_NUMA_NODE_PREFERENCE",
                flag: "node-preference",
                value: v.to_string(),
                allowed: "allowed values are a node id (0, 1, ...) or -1 for none".into(),
            })?;
        }
        if let Some(v) = nonempty(&self.memory_policy) {
            strategy.memory_policy = v.parse::<MemoryPolicy>().map_err(|_| ConfigError {
                variable: "OPDBUS_NUMA_MEMORY_POLICY",
                flag: "memory-policy",
                value: v.to_string(),
                allowed: format!("allowed values are {}", MemoryPolicy::ALLOWED),
            })?;
        }
        if let Some(v) = nonempty(&self.cache_dir) {
            if !v.starts_with('/') {
                return Err(ConfigError {
                    variable: "OPDBUS_CACHE_DIR",
                    flag: "cache-dir",
                    value: v.to_string(),
                    allowed: "an absolute path is required".into(),
                });
            }
            cfg.dir = PathBuf::from(v);
        }
        if let Some(v) = nonempty(&self.max_bytes) {
            cfg.max_bytes = parse_size(v)
                .filter(|&n| n > 0)
                .ok_or_else(|| ConfigError {
                    variable: "OPDBUS_CACHE_MAX_BYTES",
                    flag: "max-bytes",
                    value: v.to_string(),
                    allowed: SIZE_ALLOWED.into(),
                })?;
        }
        if let Some(v) = nonempty(&self.memory_bytes) {
            cfg.memory_bytes = parse_size(v).ok_or_else(|| ConfigError {
                variable: "OPDBUS_CACHE_MEMORY_BYTES",
                flag: "memory-bytes",
                value: v.to_string(),
                allowed: SIZE_ALLOWED.into(),
            })?;
        }
        if let Some(v) = nonempty(&self.snapshots_keep) {
            cfg.snapshots_keep = v.parse::<usize>().map_err(|_| ConfigError {
                variable: "OPDBUS_CACHE_SNAPSHOTS_KEEP",
                flag: "snapshots-keep",
                value: v.to_string(),
                allowed: "allowed values are a whole number (0 keeps none)".into(),
            })?;
        }
        if let Some(v) = nonempty(&self.sync_interval_ms) {
            let ms = v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= 3_600_000)
                .ok_or_else(|| ConfigError {
                    variable: "OPDBUS_CACHE_SYNC_INTERVAL_MS",
                    flag: "sync-interval-ms",
                    value: v.to_string(),
                    allowed: "allowed values are milliseconds from 0 (sync every put) to 3600000"
                        .into(),
                })?;
            cfg.sync_interval = std::time::Duration::from_millis(ms);
        }
        cfg.strategy = strategy;
        Ok(cfg)
    }
}

const SIZE_ALLOWED: &str = "allowed values are a byte count like 8589934592 or one with a suffix K, M, G or T (powers of 1024), e.g. 8G";

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_node(v: &str) -> Option<Option<u32>> {
    match v.parse::<i64>().ok()? {
        -1 => Some(None),
        n if (0..=i64::from(u16::MAX)).contains(&n) => Some(Some(n as u32)),
        _ => None,
    }
}

/// Parse `123`, `64K`, `256M`, `8G`, `1T` (also `8GiB`, `8g`) into bytes.
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, suffix) = v.split_at(digits_end);
    let n: u64 = num.parse().ok()?;
    let shift = match suffix
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_variable_and_the_choices() {
        let args = DaemonArgs {
            strategy: Some("fastest".into()),
            ..Default::default()
        };
        let e = args.resolve().unwrap_err().to_string();
        assert!(
            e.contains("OPDBUS_NUMA_STRATEGY") && e.contains("round_robin"),
            "{e}"
        );
        let args = DaemonArgs {
            max_bytes: Some("lots".into()),
            ..Default::default()
        };
        let e = args.resolve().unwrap_err().to_string();
        assert!(
            e.contains("OPDBUS_CACHE_MAX_BYTES") && e.contains("8G"),
            "{e}"
        );
        let args = DaemonArgs {
            sync_interval_ms: Some("-5".into()),
            ..Default::default()
        };
        let e = args.resolve().unwrap_err().to_string();
        assert!(e.contains("OPDBUS_CACHE_SYNC_INTERVAL_MS"), "{e}");
    }

    #[test]
    fn good_values_reach_the_engine_config() {
        let args = DaemonArgs {
            strategy: Some("interleave".into()),
            node_preference: Some("-1".into()),
            memory_policy: Some("preferred".into()),
            cache_dir: Some("/tmp/x".into()),
            max_bytes: Some("2G".into()),
            memory_bytes: Some("64M".into()),
            snapshots_keep: Some("3".into()),
            sync_interval_ms: Some("250".into()),
            fs_root: None,
            gateway: Default::default(),
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.strategy.strategy, Strategy::Interleave);
        assert_eq!(c.strategy.node_preference, None);
        assert_eq!(c.strategy.memory_policy, MemoryPolicy::Preferred);
        assert_eq!(c.max_bytes, 2 << 30);
        assert_eq!(c.memory_bytes, 64 << 20);
        assert_eq!(c.snapshots_keep, 3);
        assert_eq!(c.sync_interval, std::time::Duration::from_millis(250));
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("12X"), None);
    }
}

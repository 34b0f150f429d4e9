//! The engine's configuration and the small value types of its API (callers, put options,
//! entry metadata), plus the namespace and key rules every operation checks first.

use crate::placement::StrategyConfig;
use crate::store::error::StoreError;
use std::path::PathBuf;
use std::time::Duration;

/// How the cache is set up; the daemon fills it from `OPDBUS_CACHE_*` variables.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// State directory (`OPDBUS_CACHE_DIR`, default `/var/lib/numa-cache`).
    pub dir: PathBuf,
    /// Disk bound in stored (compressed) bytes (`OPDBUS_CACHE_MAX_BYTES`, default 8 GiB).
    pub max_bytes: u64,
    /// Memory-tier bound over all nodes (`OPDBUS_CACHE_MEMORY_BYTES`, default 256 MiB); 0
    /// turns the memory tier off.
    pub memory_bytes: u64,
    /// Snapshots kept by rotation (`OPDBUS_CACHE_SNAPSHOTS_KEEP`, default 24).
    pub snapshots_keep: usize,
    /// zstd level for blob files (default 3).
    pub zstd_level: i32,
    /// Values smaller than this are stored raw (default 8 KiB); larger ones are zstd
    /// frames when that saves ≥ 10%. Below 8 KiB compression saves at most a filesystem
    /// block or two, while decoding a small frame costs about three times the read itself
    /// (BENCHMARKS.md, "Store engine"); 0 compresses everything.
    pub compress_min_bytes: usize,
    /// Largest value a put accepts (default 256 MiB); larger puts fail with TooLarge.
    pub max_value_bytes: u64,
    /// How often a `numa_cache_stats` row is written per node (default 60 s).
    pub stats_interval: Duration,
    /// How long `numa_cache_stats` rows are kept (default 7 days).
    pub stats_retention: Duration,
    /// The strategy used when `numa_strategies` has no active row.
    pub strategy: StrategyConfig,
    /// How often the flusher makes default puts durable (`OPDBUS_CACHE_SYNC_INTERVAL_MS`,
    /// default 1 s): a default put is in the kernel when answered (survives SIGKILL) and on
    /// stable storage within this interval. Zero syncs every put before it is answered.
    pub sync_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("/var/lib/numa-cache"),
            max_bytes: 8 << 30,
            memory_bytes: 256 << 20,
            snapshots_keep: 24,
            zstd_level: 3,
            compress_min_bytes: 8 << 10,
            max_value_bytes: 256 << 20,
            stats_interval: Duration::from_secs(60),
            stats_retention: Duration::from_secs(7 * 24 * 3600),
            strategy: StrategyConfig::default(),
            sync_interval: Duration::from_millis(1000),
        }
    }
}

/// Who is asking. In-process callers use `Caller::default()` (no uid check, cpu from getcpu).
#[derive(Default, Clone, Copy, Debug)]
pub struct Caller {
    /// The caller's uid (from D-Bus); namespace ownership is enforced for uid != 0.
    pub uid: Option<u32>,
    /// The caller's last CPU (D-Bus: /proc/PID/stat field 39); None = getcpu() of this thread.
    pub cpu: Option<u32>,
}

/// Options of one put.
#[derive(Default, Clone, Debug)]
pub struct PutOptions {
    /// The entry expires this long after the put.
    pub ttl: Option<Duration>,
    /// Explicit placement; must be an allowed node with memory, else InvalidArgument.
    pub node: Option<u32>,
    /// Answer only once the value and its index row are on stable storage (fdatasync);
    /// concurrent sync puts share one flush.
    pub sync: bool,
}

/// What the index knows about one entry (D-Bus `Lookup`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryInfo {
    /// Logical (uncompressed) size in bytes.
    pub size: u64,
    /// Bytes of the record on disk, header included.
    pub stored_size: u64,
    /// The node whose shard holds the entry.
    pub node: u32,
    /// When it was written, unix seconds.
    pub created: u64,
    /// Last read or write, unix seconds.
    pub last_access: u64,
    /// Reads served.
    pub hits: u64,
    /// When it expires, unix seconds.
    pub expires: Option<u64>,
}

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Check a namespace against `[a-z0-9][a-z0-9_.-]{0,63}`.
pub fn validate_namespace(ns: &str) -> Result<(), StoreError> {
    let b = ns.as_bytes();
    let ok_first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_rest = |c: u8| ok_first(c) || c == b'_' || c == b'.' || c == b'-';
    if b.is_empty()
        || b.len() > MAX_NAMESPACE_LEN
        || !ok_first(b[0])
        || !b[1..].iter().all(|&c| ok_rest(c))
    {
        return Err(StoreError::InvalidArgument(format!(
            "namespace {ns:?} must be 1-{MAX_NAMESPACE_LEN} characters matching [a-z0-9][a-z0-9_.-]*"
        )));
    }
    Ok(())
}

/// Check a key: 1-1024 bytes (UTF-8 is guaranteed by `&str`), no NUL.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        let shown: String = key.chars().take(40).collect();
        return Err(StoreError::InvalidArgument(format!(
            "key {shown:?} is {} bytes long; keys must be 1-{MAX_KEY_LEN} bytes of UTF-8",
            key.len()
        )));
    }
    if key.as_bytes().contains(&0) {
        return Err(StoreError::InvalidArgument(
            "key contains a NUL byte; keys must be UTF-8 text without NUL".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        for ok in ["a", "0", "models.v2", "a_b-c", &"a".repeat(64)] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "_a", ".a", "a/b", "a b", &"a".repeat(65), "é"] {
            let e = validate_namespace(bad).unwrap_err().to_string();
            assert!(e.contains("namespace"), "{e}");
        }
    }

    #[test]
    fn key_rules() {
        assert!(validate_key("k").is_ok());
        assert!(validate_key(&"k".repeat(1024)).is_ok());
        assert!(validate_key("").is_err());
        assert!(
            validate_key(&"k".repeat(1025))
                .unwrap_err()
                .to_string()
                .contains("1025 bytes")
        );
        assert!(validate_key("a\0b").is_err());
    }
}

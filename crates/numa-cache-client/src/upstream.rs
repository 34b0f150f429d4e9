//! Drop-in replacements for the two caches operation-dbus uses in-process today, backed by
//! the daemon: a component changes its constructor and nothing else.
//!
//! - [`EmbeddingCache`] stands for `BtrfsCache` (operation-dbus `src/cache/btrfs_cache.rs`):
//!   the key is the SHA-256 of the text in lowercase hex, the value the vector as upstream
//!   serialized it with bincode 1 (`u64` little-endian length, then each `f32`
//!   little-endian).
//! - [`WorkstackCache`] stands for op-dbus-p1's `op-cache` `WorkstackCache`: the key is the
//!   SHA-256 of `"{workstack_id}:{step_index}:{input_hash}"` in lowercase hex, the value the
//!   step's output bytes as given. Each workstack gets its own namespace, so invalidating
//!   one is one `Clear`.
//!
//! The methods are synchronous, as upstream's are, and may be called from inside a tokio
//! runtime (see [`crate::blocking`]).

use crate::blocking::Client;
use crate::error::{Error, Result};
use crate::types::PutOptions;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::time::Duration;

/// The lowercase hex SHA-256 of `bytes`, upstream's key scheme.
///
/// ```
/// assert_eq!(
///     numa_cache_client::upstream::sha256_hex(b"test"),
///     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A vector as upstream stored it (bincode 1 of `Vec<f32>`: a `u64` little-endian length,
/// then each value little-endian).
///
/// ```
/// use numa_cache_client::upstream::{decode_vector, encode_vector};
/// let bytes = encode_vector(&[1.0, -0.5]);
/// assert_eq!(bytes.len(), 8 + 2 * 4);
/// assert_eq!(decode_vector(&bytes).unwrap(), vec![1.0, -0.5]);
/// ```
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 * vector.len());
    out.extend_from_slice(&(vector.len() as u64).to_le_bytes());
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The vector in upstream's encoding; `Corrupted` when the length prefix and the byte
/// count disagree.
///
/// ```
/// use numa_cache_client::{Error, upstream::decode_vector};
/// assert!(matches!(decode_vector(&[1, 0, 0]), Err(Error::Corrupted(_))));
/// ```
pub fn decode_vector(bytes: &[u8]) -> Result<Vec<f32>> {
    let bad = |why: String| Error::Corrupted(format!("a cached embedding does not decode: {why}"));
    let (len, rest) = bytes.split_first_chunk::<8>().ok_or_else(|| {
        bad(format!(
            "{} bytes is shorter than the length prefix",
            bytes.len()
        ))
    })?;
    let len = u64::from_le_bytes(*len);
    if rest.len() % 4 != 0 || (rest.len() / 4) as u64 != len {
        return Err(bad(format!(
            "the prefix says {len} values but {} bytes follow",
            rest.len()
        )));
    }
    Ok(rest
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Embedding vectors keyed by text, in the daemon (upstream `BtrfsCache`'s embedding API).
///
/// ```no_run
/// use numa_cache_client::upstream::EmbeddingCache;
/// let cache = EmbeddingCache::new()?; // was: BtrfsCache::new(dir)?
/// cache.put_embedding("hello", &[0.1, 0.2])?;
/// let v = cache.get_or_embed("world", |text| -> Result<Vec<f32>, numa_cache_client::Error> {
///     Ok(vec![text.len() as f32])
/// })?;
/// # Ok::<(), numa_cache_client::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    client: Client,
    namespace: String,
    lease: Duration,
}

impl EmbeddingCache {
    /// The namespace unless [`EmbeddingCache::with_namespace`] says otherwise.
    pub const DEFAULT_NAMESPACE: &'static str = "embeddings";

    /// How long other callers wait for a computing one, unless
    /// [`EmbeddingCache::with_lease`] says otherwise.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

    /// Connect to the daemon on the system bus.
    ///
    /// ```no_run
    /// let cache = numa_cache_client::upstream::EmbeddingCache::new()?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn new() -> Result<EmbeddingCache> {
        Ok(EmbeddingCache::with_client(Client::system()?))
    }

    /// Use an existing client (another bus, other settings).
    ///
    /// ```no_run
    /// let client = numa_cache_client::blocking::Client::connect("unix:path=/tmp/bus")?;
    /// let cache = numa_cache_client::upstream::EmbeddingCache::with_client(client);
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn with_client(client: Client) -> EmbeddingCache {
        EmbeddingCache {
            client,
            namespace: EmbeddingCache::DEFAULT_NAMESPACE.to_string(),
            lease: EmbeddingCache::DEFAULT_LEASE,
        }
    }

    /// Keep the vectors in `namespace` instead (one per embedding model, for example).
    ///
    /// ```no_run
    /// let cache = numa_cache_client::upstream::EmbeddingCache::new()?.with_namespace("minilm-l6");
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> EmbeddingCache {
        self.namespace = namespace.into();
        self
    }

    /// Wait at most `lease` for another caller computing the same text; past it, the next
    /// caller computes.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let cache = numa_cache_client::upstream::EmbeddingCache::new()?.with_lease(Duration::from_secs(5));
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn with_lease(mut self, lease: Duration) -> EmbeddingCache {
        self.lease = lease;
        self
    }

    /// The namespace in use.
    ///
    /// ```no_run
    /// let cache = numa_cache_client::upstream::EmbeddingCache::new()?;
    /// assert_eq!(cache.namespace(), "embeddings");
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cached vector of `text`, or `None`.
    ///
    /// ```no_run
    /// # let cache = numa_cache_client::upstream::EmbeddingCache::new()?;
    /// if let Some(v) = cache.get_embedding("hello")? { println!("{} dims", v.len()); }
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn get_embedding(&self, text: &str) -> Result<Option<Vec<f32>>> {
        let key = sha256_hex(text.as_bytes());
        match self.client.get(&self.namespace, &key)? {
            Some(bytes) => decode_vector(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Store the vector of `text`.
    ///
    /// ```no_run
    /// # let cache = numa_cache_client::upstream::EmbeddingCache::new()?;
    /// cache.put_embedding("hello", &[0.1, 0.2, 0.3])?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn put_embedding(&self, text: &str, vector: &[f32]) -> Result<()> {
        let key = sha256_hex(text.as_bytes());
        self.client
            .put(&self.namespace, &key, &encode_vector(vector))?;
        Ok(())
    }

    /// The cached vector of `text`, or else `compute_fn(text)`, stored and returned. Through
    /// `GetOrLease`, processes asking for the same missing text compute it once (the others
    /// wait up to [`EmbeddingCache::with_lease`]). The closure's error type absorbs this
    /// crate's (so `anyhow::Result` closures work as they did upstream).
    ///
    /// ```no_run
    /// # let cache = numa_cache_client::upstream::EmbeddingCache::new()?;
    /// let v: Vec<f32> = cache.get_or_embed("hello", |t| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
    ///     Ok(vec![t.len() as f32; 4])
    /// }).map_err(|e| numa_cache_client::Error::Protocol(e.to_string()))?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn get_or_embed<F, E>(&self, text: &str, compute_fn: F) -> Result<Vec<f32>, E>
    where
        F: FnOnce(&str) -> Result<Vec<f32>, E>,
        E: From<Error>,
    {
        let key = sha256_hex(text.as_bytes());
        let bytes = self
            .client
            .get_or_insert_with(&self.namespace, &key, self.lease, || {
                compute_fn(text).map(|v| encode_vector(&v))
            })?;
        Ok(decode_vector(&bytes)?)
    }

    /// Remove every vector of this cache's namespace (polkit `manage-cache`); how many.
    ///
    /// ```no_run
    /// # let cache = numa_cache_client::upstream::EmbeddingCache::new()?;
    /// let removed = cache.clear()?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn clear(&self) -> Result<u64> {
        self.client.clear(&self.namespace)
    }
}

/// Upstream's configuration of a workstack cache. Only `default_ttl_secs` still means
/// something: size limits and compression are the daemon's now. The fields stay so code
/// that builds one compiles unchanged.
///
/// ```
/// let c = numa_cache_client::upstream::WorkstackCacheConfig::default();
/// assert_eq!(c.default_ttl_secs, 3600);
/// ```
#[derive(Debug, Clone)]
pub struct WorkstackCacheConfig {
    /// TTL of a step result when `put` gives none (upstream default: one hour).
    pub default_ttl_secs: i64,
    /// Ignored: the daemon's `OPDBUS_CACHE_MAX_BYTES` bounds the cache.
    pub max_size_bytes: u64,
    /// Ignored: the daemon compresses (zstd) when it pays.
    pub compress: bool,
    /// Ignored: the daemon's memory tier decides what is hot.
    pub hot_threshold_secs: i64,
}

impl Default for WorkstackCacheConfig {
    fn default() -> WorkstackCacheConfig {
        WorkstackCacheConfig {
            default_ttl_secs: 3600,
            max_size_bytes: 1024 * 1024 * 1024,
            compress: true,
            hot_threshold_secs: 600,
        }
    }
}

/// Results of workstack steps, in the daemon (upstream op-cache `WorkstackCache`).
///
/// ```no_run
/// use numa_cache_client::upstream::{WorkstackCache, WorkstackCacheConfig};
/// # async fn demo() -> Result<(), numa_cache_client::Error> {
/// // was: WorkstackCache::new(cache_dir, config).await?
/// let cache = WorkstackCache::new(WorkstackCacheConfig::default()).await?;
/// cache.put("ws-001", 0, "input-hash", b"output", None)?;
/// assert_eq!(cache.get("ws-001", 0, "input-hash")?.as_deref(), Some(&b"output"[..]));
/// cache.invalidate_workstack("ws-001")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkstackCache {
    client: Client,
    config: WorkstackCacheConfig,
}

impl WorkstackCache {
    /// Connect to the daemon on the system bus (async, as upstream's constructor is).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), numa_cache_client::Error> {
    /// let cache = numa_cache_client::upstream::WorkstackCache::new(Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn new(config: WorkstackCacheConfig) -> Result<WorkstackCache> {
        let client = Client::from_builder_async(crate::Client::builder()).await?;
        Ok(WorkstackCache::with_client(client, config))
    }

    /// Use an existing client.
    ///
    /// ```no_run
    /// let client = numa_cache_client::blocking::Client::system()?;
    /// let cache = numa_cache_client::upstream::WorkstackCache::with_client(client, Default::default());
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn with_client(client: Client, config: WorkstackCacheConfig) -> WorkstackCache {
        WorkstackCache { client, config }
    }

    /// The namespace holding `workstack_id`'s steps: `workstack-` and 32 hex digits of the
    /// SHA-256 of the id (any id fits the daemon's namespace rule this way).
    ///
    /// ```
    /// let ns = numa_cache_client::upstream::WorkstackCache::namespace_of("ws-001");
    /// assert!(ns.starts_with("workstack-") && ns.len() == 42);
    /// ```
    pub fn namespace_of(workstack_id: &str) -> String {
        let h = sha256_hex(workstack_id.as_bytes());
        format!("workstack-{}", &h[..32])
    }

    /// Upstream's cache key of a step.
    ///
    /// ```
    /// use numa_cache_client::upstream::{WorkstackCache, sha256_hex};
    /// assert_eq!(WorkstackCache::key_of("ws", 2, "h"), sha256_hex(b"ws:2:h"));
    /// ```
    pub fn key_of(workstack_id: &str, step_index: usize, input_hash: &str) -> String {
        sha256_hex(format!("{workstack_id}:{step_index}:{input_hash}").as_bytes())
    }

    /// The cached output of a step, or `None` (never stored, expired or invalidated).
    ///
    /// ```no_run
    /// # fn demo(cache: numa_cache_client::upstream::WorkstackCache) -> numa_cache_client::Result<()> {
    /// let out = cache.get("ws-001", 3, "abc")?;
    /// # Ok(()) }
    /// ```
    pub fn get(
        &self,
        workstack_id: &str,
        step_index: usize,
        input_hash: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.client.get(
            &WorkstackCache::namespace_of(workstack_id),
            &WorkstackCache::key_of(workstack_id, step_index, input_hash),
        )
    }

    /// Store a step's output for `ttl_secs` (the config's default when `None`). A TTL of
    /// zero or less stores nothing and drops what was there, which is what upstream's
    /// reads made of it (an entry already expired).
    ///
    /// ```no_run
    /// # fn demo(cache: numa_cache_client::upstream::WorkstackCache) -> numa_cache_client::Result<()> {
    /// cache.put("ws-001", 3, "abc", b"result", Some(600))?;
    /// # Ok(()) }
    /// ```
    pub fn put(
        &self,
        workstack_id: &str,
        step_index: usize,
        input_hash: &str,
        output: &[u8],
        ttl_secs: Option<i64>,
    ) -> Result<()> {
        let ns = WorkstackCache::namespace_of(workstack_id);
        let key = WorkstackCache::key_of(workstack_id, step_index, input_hash);
        let ttl = ttl_secs.unwrap_or(self.config.default_ttl_secs);
        match u64::try_from(ttl) {
            Ok(secs) if secs > 0 => {
                self.client.put_with(
                    &ns,
                    &key,
                    output,
                    PutOptions::new().ttl(Duration::from_secs(secs)),
                )?;
            }
            _ => {
                self.client.delete(&ns, &key)?;
            }
        }
        Ok(())
    }

    /// Drop every step of a workstack; returns how many entries went (polkit
    /// `manage-cache`, and the namespace must be the caller's, as for any `Clear`).
    ///
    /// ```no_run
    /// # fn demo(cache: numa_cache_client::upstream::WorkstackCache) -> numa_cache_client::Result<()> {
    /// let n = cache.invalidate_workstack("ws-001")?;
    /// # Ok(()) }
    /// ```
    pub fn invalidate_workstack(&self, workstack_id: &str) -> Result<usize> {
        let n = self
            .client
            .clear(&WorkstackCache::namespace_of(workstack_id))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_use_bincode_1s_layout() {
        // bincode 1.3 serialize(&vec![1.0f32, 2.5]): 8-byte LE length, then LE floats.
        let want: Vec<u8> = [
            &2u64.to_le_bytes()[..],
            &1.0f32.to_le_bytes(),
            &2.5f32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(encode_vector(&[1.0, 2.5]), want);
        assert_eq!(decode_vector(&want).unwrap(), vec![1.0, 2.5]);
        assert_eq!(
            decode_vector(&encode_vector(&[])).unwrap(),
            Vec::<f32>::new()
        );
    }

    #[test]
    fn vectors_whose_length_disagrees_are_corrupted_not_data() {
        let mut b = encode_vector(&[1.0, 2.0]);
        b.pop();
        assert!(matches!(decode_vector(&b), Err(Error::Corrupted(_))));
        let mut b = encode_vector(&[1.0]);
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode_vector(&b), Err(Error::Corrupted(_))));
    }

    #[test]
    fn workstack_namespaces_fit_the_daemons_rule_for_any_id() {
        for id in ["ws-001", "", "Ünïcode / spaces", &"x".repeat(5000)] {
            let ns = WorkstackCache::namespace_of(id);
            assert!(ns.len() <= 64);
            assert!(
                ns.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{ns}"
            );
        }
        assert_ne!(
            WorkstackCache::namespace_of("a"),
            WorkstackCache::namespace_of("b")
        );
    }
}

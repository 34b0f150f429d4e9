//! The data plane (Put, Get, their fd forms, Delete, Lookup), its polkit-gated administration
//! (Clear, snapshots, ResetCounters) and the statistics reads (GetStats, GetHistory).
//!
//! Latency (shown by /metrics and GetStats) is the engine call time only: `Cache::get` and
//! `Cache::put` on the blocking pool (for a small put, `Cache::put_nowait` until its answer),
//! hits, misses and errors alike. Transport, caller lookup, memfd copies and queueing are
//! left out, so the histogram tells the engine's speed apart from the transport's.

use crate::app::authz::{Action, Requester};
use crate::app::error::{AppError, AppResult, Invalid};
use crate::app::reads::{GROWN_TRIES, ReadRoom};
use crate::app::stats::StatsReport;
use crate::app::topology::node_arg;
use crate::app::{App, blocking};
use crate::policy::memfd;
use crate::store::{
    Cache, Caller, EntryInfo, NOWAIT_MAX_BYTES, PutOptions, PutStart, StoreError, validate_key,
    validate_namespace,
};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Put options as a front-end parsed them (before the node is checked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutArgs {
    /// Time to live in seconds (> 0).
    pub ttl_seconds: Option<u64>,
    /// Explicit placement: a node id, or -1 / None for none.
    pub node: Option<i64>,
    /// Make this put durable before replying (option `sync`, b).
    pub sync: bool,
}

/// What Lookup reports of an entry.
pub type EntryView = EntryInfo;

/// A namespace, checked with the engine's rule (`[a-z0-9][a-z0-9_.-]{0,63}`).
fn check_namespace(ns: &str) -> AppResult<()> {
    Ok(validate_namespace(ns)?)
}

fn check_entry(ns: &str, key: &str) -> AppResult<()> {
    validate_namespace(ns)?;
    Ok(validate_key(key)?)
}

fn check_snapshot_name(name: &str) -> AppResult<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(AppError::invalid(format!(
            "invalid snapshot name {name:?}: use a name from ListSnapshots"
        )));
    }
    Ok(())
}

impl App {
    fn put_options(&self, args: PutArgs) -> AppResult<PutOptions> {
        if args.ttl_seconds == Some(0) {
            return Err(AppError::invalid(
                "option ttl_seconds must be a positive number of seconds (type t)",
            ));
        }
        let node = match args.node {
            None => None,
            Some(n) => node_arg(&self.topology(), n, "option node")?,
        };
        Ok(PutOptions {
            ttl: args.ttl_seconds.map(Duration::from_secs),
            node,
            sync: args.sync,
        })
    }

    async fn store(
        &self,
        who: &Requester,
        ns: String,
        key: String,
        value: Value,
        args: PutArgs,
    ) -> AppResult<u32> {
        let opts = self.put_options(args)?;
        let limit = self.limits.max_value_bytes;
        let cache = self.cache()?;
        let caller = who.caller();
        // A small value: its record is made (and, on a NUMA host, written) here, and the task
        // waits for the committer's answer without a trip through the blocking pool (two
        // thread hand-offs fewer per put).
        let value = match value {
            Value::Bytes(bytes) if bytes.len() as u64 <= limit.min(NOWAIT_MAX_BYTES) => {
                match self
                    .put_nowait(&cache, &ns, &key, bytes, &opts, &caller)
                    .await?
                {
                    Ok(node) => {
                        self.put_done(&ns, &key);
                        return Ok(node);
                    }
                    Err(bytes) => Value::Bytes(bytes),
                }
            }
            other => other,
        };
        let app = self.latency_handle();
        let entry = (ns.clone(), key.clone());
        let node = blocking(move || {
            let node = match value {
                Value::Bytes(bytes) => {
                    if bytes.len() as u64 > limit {
                        return Err(AppError::TooLarge(format!(
                            "the value is {} bytes; the limit is {limit} bytes",
                            bytes.len()
                        )));
                    }
                    app.put
                        .time(|| cache.put(&ns, &key, &bytes, &opts, &caller))?
                }
                // Streamed from the sealed descriptor to the shard: a put of N bytes never
                // holds the value in memory whole.
                Value::Fd(fd) => {
                    let file = memfd::sealed_file(fd, limit)?;
                    app.put
                        .time(|| cache.put_file(&ns, &key, &file, &opts, &caller))?
                }
            };
            Ok(node)
        })
        .await?;
        self.put_done(&entry.0, &entry.1);
        Ok(node)
    }

    /// A put of `bytes` through [`Cache::put_nowait`]: Ok(node) when it was stored,
    /// Err(bytes) handed back when it must go through the blocking pool instead.
    async fn put_nowait(
        &self,
        cache: &Cache,
        ns: &str,
        key: &str,
        bytes: Vec<u8>,
        opts: &PutOptions,
        caller: &Caller,
    ) -> AppResult<Result<u32, Vec<u8>>> {
        let started = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = cache.put_nowait(ns, key, &bytes, opts, caller, move |r| {
            let _ = tx.send(r);
        });
        let answer = match start {
            Ok(PutStart::WouldBlock) => return Ok(Err(bytes)),
            Ok(PutStart::Queued) => {
                // The record holds its own copy: the message's can go now.
                drop(bytes);
                rx.await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the committer stopped before answering".into(),
                    ))
                })
            }
            Err(e) => Err(e),
        };
        self.latency.put.observe(started.elapsed());
        Ok(Ok(answer?))
    }

    /// After a stored put: a GetOrLease lease on the key has done its work, and the figures
    /// moved.
    fn put_done(&self, ns: &str, key: &str) {
        self.leases.ended_by_put(ns, key);
        self.stats_touched();
    }

    fn latency_handle(&self) -> Arc<crate::app::stats::CacheLatency> {
        Arc::clone(&self.latency)
    }

    /// Put: store `value` under (namespace, key); returns the node it was placed on. A
    /// namespace belongs to the uid that first wrote to it.
    pub async fn put(
        &self,
        who: &Requester,
        namespace: String,
        key: String,
        value: Vec<u8>,
        args: PutArgs,
    ) -> AppResult<u32> {
        let _call = self.enter()?;
        check_entry(&namespace, &key)?;
        let limit = self.limits.max_value_bytes;
        if value.len() as u64 > limit {
            return Err(AppError::TooLarge(format!(
                "the value is {} bytes; the limit is {limit} bytes",
                value.len()
            )));
        }
        self.store(who, namespace, key, Value::Bytes(value), args)
            .await
    }

    /// PutFd: store the contents of a sealed memfd.
    pub async fn put_fd(
        &self,
        who: &Requester,
        namespace: String,
        key: String,
        fd: OwnedFd,
        args: PutArgs,
    ) -> AppResult<u32> {
        let _call = self.enter()?;
        check_entry(&namespace, &key)?;
        self.store(who, namespace, key, Value::Fd(fd), args).await
    }

    /// The value, when it has at most `max` bytes (a larger one is TooLarge, found before
    /// any of it is read), with the room its read took (`reads`: hold it while the value is
    /// in memory).
    async fn fetch(
        &self,
        who: &Requester,
        ns: String,
        key: String,
        max: u64,
    ) -> AppResult<(Vec<u8>, Option<ReadRoom>)> {
        check_entry(&ns, &key)?;
        let cache = self.cache()?;
        let caller = who.caller();
        let latency = self.latency_handle();
        // A small value in the memory tier is copied here, without the hop to the blocking
        // pool (under load that hop costs more than the rest of a small Get); larger ones
        // are copied there, off the async threads.
        let t0 = std::time::Instant::now();
        if let Some(v) = cache.get_in_memory(&ns, &key, &caller, GET_ON_TASK_BYTES) {
            latency.get.observe(t0.elapsed());
            self.stats_touched();
            return Ok((v, None));
        }
        // Room for the value's size by the entry map, then a read limited to it: a value a
        // Put grew meanwhile is refused unread and read again with room for its new size
        // (`GROWN_TRIES` times; then with room for `max`).
        let mut want = cache.size_hint(&ns, &key).unwrap_or(0).min(max);
        let mut tries = 0;
        let value = loop {
            let room = self.reads.room(who.uid, want).await?;
            let limit = room.allows().min(max);
            let (c, n, k, who) = (Arc::clone(&cache), ns.clone(), key.clone(), caller);
            let lat = Arc::clone(&latency);
            let read = blocking(
                move || match lat.get.time(|| c.get_within(&n, &k, &who, limit)) {
                    Err(StoreError::TooLarge { size, .. }) => Ok(Err(size)),
                    r => Ok(Ok(r?)),
                },
            )
            .await;
            match read {
                Ok(Ok(v)) => break Ok((v, Some(room))),
                Ok(Err(size)) if size > max => break Err(inline_too_large(size, max)),
                Ok(Err(size)) => {
                    tries += 1;
                    want = if tries > GROWN_TRIES { max } else { size };
                }
                Err(e) => break Err(e),
            }
        };
        // Hits and misses both move the counters.
        self.stats_touched();
        value
    }

    /// Get: the value under (namespace, key), when it fits in a message.
    pub async fn get(&self, who: &Requester, namespace: String, key: String) -> AppResult<Vec<u8>> {
        let _call = self.enter()?;
        let inline = self.limits.max_inline_bytes;
        // A value over the limit is refused before it is read (the client then asks GetFd).
        let (value, _room) = self.fetch(who, namespace, key, inline).await?;
        if value.len() as u64 > inline {
            return Err(inline_too_large(value.len() as u64, inline));
        }
        Ok(value)
    }

    /// The bytes the values of `keys` in `namespace` take now, by the engine's in-memory
    /// entry map (no I/O, no wait): what a direct connection reserves for a Get, GetMany or
    /// GetOrLease reply before it reads, and what a GetMany takes room for (`reads`). An estimate only (a Put may change a value before
    /// the read), never returned to a caller; missing keys, bad names and a closed cache
    /// count 0.
    pub fn reply_size_hint(&self, namespace: &str, keys: &[&str]) -> u64 {
        let Ok(cache) = self.cache() else {
            return 0;
        };
        keys.iter()
            .filter_map(|k| cache.size_hint(namespace, k))
            .fold(0u64, u64::saturating_add)
    }

    /// GetFd: the value as a sealed memfd, and its size.
    pub async fn get_fd(
        &self,
        who: &Requester,
        namespace: String,
        key: String,
    ) -> AppResult<(OwnedFd, u64)> {
        let _call = self.enter()?;
        let (value, room) = self.fetch(who, namespace, key, u64::MAX).await?;
        let size = value.len() as u64;
        let fd = blocking(move || {
            memfd::sealed_memfd(&value).map_err(|e| AppError::from(memfd::MemfdError::Create(e)))
        })
        .await?;
        drop(room);
        Ok((fd, size))
    }

    /// Delete: remove the entry; true when there was one.
    pub async fn delete(&self, who: &Requester, namespace: String, key: String) -> AppResult<bool> {
        let _call = self.enter()?;
        check_entry(&namespace, &key)?;
        let cache = self.cache()?;
        let caller = who.caller();
        let existed = blocking(move || Ok(cache.delete(&namespace, &key, &caller)?)).await?;
        self.stats_touched();
        Ok(existed)
    }

    /// Lookup: what is known of an entry without reading it.
    pub async fn lookup(&self, namespace: String, key: String) -> AppResult<EntryView> {
        let _call = self.enter()?;
        check_entry(&namespace, &key)?;
        let cache = self.cache()?;
        blocking(move || Ok(cache.lookup(&namespace, &key)?)).await
    }

    /// Clear: remove every entry of a namespace (polkit manage-cache, and the namespace must be
    /// the caller's or the caller root); returns how many.
    pub async fn clear(&self, who: &Requester, namespace: String) -> AppResult<u64> {
        let _call = self.enter()?;
        let r = async {
            check_namespace(&namespace)?;
            self.authorize(who, Action::ManageCache).await?;
            let cache = self.cache()?;
            let caller = who.caller();
            let ns = namespace.clone();
            blocking(move || Ok(cache.clear(&ns, &caller)?)).await
        }
        .await;
        let removed = self.audited(who, Action::ManageCache, r)?;
        self.stats_touched();
        tracing::info!(
            "namespace {namespace} cleared: {removed} entries removed by {}",
            who.describe()
        );
        Ok(removed)
    }

    /// CreateSnapshot: a read-only snapshot of every shard; returns its name.
    pub async fn create_snapshot(&self, who: &Requester) -> AppResult<String> {
        let _call = self.enter()?;
        let r = async {
            self.authorize(who, Action::ManageCache).await?;
            let cache = self.cache()?;
            blocking(move || Ok(cache.create_snapshot()?)).await
        }
        .await;
        let name = self.audited(who, Action::ManageCache, r)?;
        tracing::info!("snapshot {name} created by {}", who.describe());
        Ok(name)
    }

    /// ListSnapshots: the kept snapshots, oldest first.
    pub async fn list_snapshots(&self, who: &Requester) -> AppResult<Vec<String>> {
        let _call = self.enter()?;
        let r = async {
            self.authorize(who, Action::ManageCache).await?;
            let cache = self.cache()?;
            blocking(move || Ok(cache.list_snapshots()?)).await
        }
        .await;
        self.audited(who, Action::ManageCache, r)
    }

    /// DeleteSnapshot: NotFound when there is no snapshot of that name.
    pub async fn delete_snapshot(&self, who: &Requester, name: String) -> AppResult<()> {
        let _call = self.enter()?;
        let r = async {
            check_snapshot_name(&name)?;
            self.authorize(who, Action::ManageCache).await?;
            let cache = self.cache()?;
            let n = name.clone();
            blocking(move || {
                // The contract promises NotFound for a name that is not a snapshot; ask the
                // list rather than guess from the engine's error.
                if !cache.list_snapshots()?.contains(&n) {
                    return Err(AppError::NotFound(format!(
                        "there is no snapshot {n:?}: ListSnapshots names the kept ones"
                    )));
                }
                Ok(cache.delete_snapshot(&n)?)
            })
            .await
        }
        .await;
        self.audited(who, Action::ManageCache, r)?;
        tracing::info!("snapshot {name} deleted by {}", who.describe());
        Ok(())
    }

    /// ResetCounters: zero the hit, miss and eviction counters.
    pub async fn reset_counters(&self, who: &Requester) -> AppResult<()> {
        let _call = self.enter()?;
        let r = async {
            self.authorize(who, Action::ManageCache).await?;
            let cache = self.cache()?;
            blocking(move || {
                cache.reset_counters();
                Ok(())
            })
            .await
        }
        .await;
        self.audited(who, Action::ManageCache, r)?;
        self.stats_touched();
        tracing::info!("counters reset by {}", who.describe());
        Ok(())
    }

    /// The statistics report (GetStats, HTTP stats, /metrics), with the request latencies.
    pub async fn stats(&self) -> AppResult<StatsReport> {
        let _call = self.enter()?;
        let cache = self.cache()?;
        let mut report = blocking(move || Ok(StatsReport::from(cache.stats()))).await?;
        report.request_latency = Some(self.latency.snapshot());
        (report.lease_waiters, report.lease_waits_refused) =
            (self.leases.waiting(), self.leases.refused());
        Ok(report)
    }

    /// Totals only (the CacheStats properties).
    pub fn totals(&self) -> crate::app::stats::Totals {
        self.cache().map(|c| c.totals().into()).unwrap_or_default()
    }

    /// GetHistory: the stored rows between two Unix times (inclusive). `until` None means now;
    /// `since` None means 24 hours before `until`. The range checks of every front-end.
    pub async fn history(
        &self,
        since: Option<u64>,
        until: Option<u64>,
    ) -> AppResult<serde_json::Value> {
        let _call = self.enter()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (since, until) = history_range(since, until, now)?;
        let cache = self.cache()?;
        blocking(move || Ok(cache.history(since, until)?)).await
    }
}

/// `(since, until)` with defaults applied, or InvalidArgument for a reversed range or a time
/// past the largest Unix time (int64 on the wire and in SQLite).
pub fn history_range(since: Option<u64>, until: Option<u64>, now: u64) -> AppResult<(u64, u64)> {
    for (name, v) in [("since", since), ("until", until)] {
        if let Some(v) = v.filter(|v| *v > i64::MAX as u64) {
            return Err(AppError::InvalidArgument(
                Invalid::Range,
                format!("{name} {v} is past the largest Unix time ({})", i64::MAX),
            ));
        }
    }
    let until = until.unwrap_or(now);
    let since = since.unwrap_or(until.saturating_sub(24 * 3600));
    if since > until {
        return Err(AppError::InvalidArgument(
            Invalid::Range,
            format!(
                "since {since} is after until {until}: give the earlier time first (Unix seconds)"
            ),
        ));
    }
    Ok((since, until))
}

/// A value to store: bytes from a message, or a caller's sealed memfd.
enum Value {
    Bytes(Vec<u8>),
    Fd(OwnedFd),
}

/// The most keys one `GetMany` may ask for.
pub const MAX_BATCH_KEYS: usize = 1024;

/// TooLarge for a Get of a value of `size` bytes, more than the `inline` that fit a reply.
fn inline_too_large(size: u64, inline: u64) -> AppError {
    AppError::TooLarge(format!(
        "the value is {size} bytes, more than {inline} fit in a message: read it with GetFd"
    ))
}

/// TooLarge for a GetMany whose values found pass `inline` bytes.
fn found_too_large(inline: u64) -> AppError {
    AppError::TooLarge(format!(
        "the values found exceed {inline} bytes, more than fit in a message: ask for fewer keys"
    ))
}

/// The largest memory-tier value a Get (or each key of a GetMany) copies on the async task;
/// larger ones are copied on the blocking pool, off the async threads.
const GET_ON_TASK_BYTES: usize = 64 << 10;

/// The most bytes of memory-tier values one `GetMany` copies on the async task (each value
/// at most [`GET_ON_TASK_BYTES`], as for a single Get); the rest are read on the blocking pool.
pub const GET_MANY_INLINE_BYTES: usize = 1 << 20;

impl App {
    /// GetMany: the values of the keys present (missing keys are absent). Values in the
    /// memory tier are copied on the calling task, as a single Get's are, up to
    /// [`GET_MANY_INLINE_BYTES`] in all; the other keys are read in one trip to the blocking
    /// pool. At most [`MAX_BATCH_KEYS`] keys, and the values found must fit in one message
    /// (`max_inline_bytes`); past either, TooLarge.
    pub async fn get_many(
        &self,
        who: &Requester,
        namespace: String,
        keys: Vec<String>,
    ) -> AppResult<std::collections::HashMap<String, Vec<u8>>> {
        let _call = self.enter()?;
        if keys.len() > MAX_BATCH_KEYS {
            return Err(AppError::TooLarge(format!(
                "{} keys in one GetMany; the limit is {MAX_BATCH_KEYS}",
                keys.len()
            )));
        }
        check_namespace(&namespace)?;
        for k in &keys {
            check_entry(&namespace, k)?;
        }
        let cache = self.cache()?;
        let caller = who.caller();
        let latency = self.latency_handle();
        let inline = self.limits.max_inline_bytes;
        // The hop to the blocking pool costs more than copying a few small values here (as
        // for a single Get); past the budget, or for keys the tier does not hold (on disk,
        // missing, expired), the pool does the rest.
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        let mut rest = Vec::new();
        let mut bytes = 0u64;
        let mut budget = GET_MANY_INLINE_BYTES;
        for key in keys {
            let t0 = Instant::now();
            let held = (budget > 0)
                .then(|| {
                    cache.get_in_memory(&namespace, &key, &caller, budget.min(GET_ON_TASK_BYTES))
                })
                .flatten();
            match held {
                Some(v) => {
                    latency.get.observe(t0.elapsed());
                    budget = budget.saturating_sub(v.len());
                    bytes += v.len() as u64;
                    if bytes > inline {
                        self.stats_touched();
                        return Err(found_too_large(inline));
                    }
                    found.insert(key, v);
                }
                None => rest.push(key),
            }
        }
        if rest.is_empty() {
            self.stats_touched();
            return Ok(found);
        }
        // Room for what the rest take by the entry map (at most a message's worth), held
        // until the reply is made; each key's read is limited to what is left of a message.
        let names: Vec<&str> = rest.iter().map(String::as_str).collect();
        let want = self.reply_size_hint(&namespace, &names).min(inline);
        let _room = self.reads.room(who.uid, want).await?;
        let found = blocking(move || {
            let mut bytes = bytes;
            for key in rest {
                // A value that cannot fit what is left is refused before it is read.
                let left = inline.saturating_sub(bytes);
                match latency
                    .get
                    .time(|| cache.get_within(&namespace, &key, &caller, left))
                {
                    Err(crate::store::StoreError::TooLarge { .. }) => {
                        return Err(found_too_large(inline));
                    }
                    Ok(v) => {
                        bytes += v.len() as u64;
                        if bytes > inline {
                            return Err(found_too_large(inline));
                        }
                        found.insert(key, v);
                    }
                    Err(crate::store::StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(found)
        })
        .await;
        self.stats_touched();
        found
    }
}

impl App {
    /// PutMany: store every `(key, value)` of `entries` in `namespace` with one set of put
    /// options, all or nothing (every record written, then one commit that indexes them all,
    /// or none of them); returns how many were stored. At most [`MAX_BATCH_KEYS`] entries and
    /// `max_inline_bytes` (16 MiB, one message) of values; past either, TooLarge. Ownership
    /// as for Put: a namespace that is another uid's refuses the whole batch.
    pub async fn put_many(
        &self,
        who: &Requester,
        namespace: String,
        entries: Vec<(String, Vec<u8>)>,
        args: PutArgs,
    ) -> AppResult<u32> {
        let _call = self.enter()?;
        if entries.len() > MAX_BATCH_KEYS {
            return Err(AppError::TooLarge(format!(
                "{} entries in one PutMany; the limit is {MAX_BATCH_KEYS}",
                entries.len()
            )));
        }
        let inline = self.limits.max_inline_bytes;
        let bytes: u64 = entries.iter().map(|(_, v)| v.len() as u64).sum();
        if bytes > inline {
            return Err(AppError::TooLarge(format!(
                "the values of one PutMany are {bytes} bytes; the limit is {inline}: send \
                 fewer entries per call (or PutFd for a large value)"
            )));
        }
        check_namespace(&namespace)?;
        for (k, _) in &entries {
            check_entry(&namespace, k)?;
        }
        let opts = self.put_options(args)?;
        let limit = self.limits.max_value_bytes;
        if let Some((k, v)) = entries.iter().find(|(_, v)| v.len() as u64 > limit) {
            return Err(AppError::TooLarge(format!(
                "the value of {k:?} is {} bytes; the limit is {limit} bytes",
                v.len()
            )));
        }
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        let cache = self.cache()?;
        let caller = who.caller();
        let latency = self.latency_handle();
        let ns = namespace.clone();
        let stored = blocking(move || {
            Ok(latency
                .put
                .time(|| cache.put_many(&ns, entries, &opts, &caller))?)
        })
        .await?;
        // The values are there: GetOrLease leases on them have done their work.
        for k in &keys {
            self.leases.ended_by_put(&namespace, k);
        }
        self.stats_touched();
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_ranges_default_and_refuse_reversed_or_huge_times() {
        assert_eq!(
            history_range(None, None, 100_000).unwrap(),
            (13_600, 100_000)
        );
        assert_eq!(history_range(Some(5), Some(9), 1).unwrap(), (5, 9));
        for (s, u) in [
            (Some(5), Some(4)),
            (Some(200), None),
            (Some(u64::MAX), None),
        ] {
            assert!(matches!(
                history_range(s, u, 100),
                Err(AppError::InvalidArgument(Invalid::Range, _))
            ));
        }
    }

    #[test]
    fn entries_and_snapshot_names_are_checked_with_named_errors() {
        assert!(check_entry("embeddings.v1-a_b", "k").is_ok());
        for (ns, key) in [
            ("", "k"),
            ("_x", "k"),
            ("ns", ""),
            ("ns", &"k".repeat(2000)),
        ] {
            assert!(matches!(
                check_entry(ns, key),
                Err(AppError::InvalidArgument(..))
            ));
        }
        for bad in ["", "../etc", ".hidden", "a/b"] {
            assert!(check_snapshot_name(bad).is_err(), "{bad}");
        }
    }
}

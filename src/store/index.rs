//! The SQLite index (`index.db`, WAL): schema and migrations by `PRAGMA user_version`, and the
//! prepared statements the committer and recovery use. Only the committer thread writes it.
//! Commits use `synchronous=NORMAL` (no fsync of their own: a commit is in the kernel, which
//! survives SIGKILL); the committer's flusher fdatasyncs the WAL with a `synchronous=FULL`
//! commit. `locking_mode=EXCLUSIVE` keeps the WAL index in heap memory instead of a shared
//! mapping of `index.db-shm`, so a full copy-on-write filesystem gives SQLITE_FULL, never a
//! SIGBUS on a page of that mapping.

use crate::placement::{MemoryPolicy, Strategy, StrategyConfig};
use crate::topology::Topology;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::path::Path;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;

const SCHEMA_V1: &str = "
CREATE TABLE numa_topology (
    node_id INTEGER PRIMARY KEY,
    cpu_count INTEGER NOT NULL,
    cpu_list TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    distances TEXT,
    last_updated TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE numa_cache_stats (
    node_id INTEGER,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    cache_entries INTEGER,
    memory_usage_mb INTEGER,
    hit_rate REAL,
    unix_time INTEGER,
    logical_bytes INTEGER,
    stored_bytes INTEGER,
    memory_tier_bytes INTEGER,
    hits INTEGER,
    misses INTEGER,
    PRIMARY KEY (node_id, timestamp)
);
CREATE INDEX numa_cache_stats_unix_time ON numa_cache_stats(unix_time);
CREATE TABLE numa_strategies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    strategy_name TEXT NOT NULL,
    node_preference INTEGER,
    memory_policy TEXT,
    active BOOLEAN DEFAULT FALSE,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    owner_uid INTEGER,
    created INTEGER NOT NULL
);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    node INTEGER NOT NULL,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    created INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    expires INTEGER
);
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Version 2: values live in segments; NULL segment = a file of its own (every v1 entry).
const SCHEMA_V2: &str = "
ALTER TABLE entries ADD COLUMN segment INTEGER;
ALTER TABLE entries ADD COLUMN seg_offset INTEGER;
";

/// An `entries` row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Entry id.
    pub id: u64,
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Node of the shard.
    pub node: u32,
    /// Logical size.
    pub size: u64,
    /// Stored size.
    pub stored: u64,
    /// xxh3-64 of the logical bytes.
    pub checksum: u64,
    /// Creation, unix s.
    pub created: u64,
    /// Last access, unix s.
    pub last_access: u64,
    /// Hits.
    pub hits: u64,
    /// Expiry, unix s.
    pub expires: Option<u64>,
    /// Segment and offset of the record; None: the record is a file of its own.
    pub loc: Option<(u32, u64)>,
}

/// What a new record says of its value: logical size, stored size, checksum.
#[derive(Debug, Clone, Copy)]
pub struct RecordSize {
    /// Logical size.
    pub size: u64,
    /// Stored size (the whole record).
    pub stored: u64,
    /// xxh3-64 of the logical bytes.
    pub checksum: u64,
}

impl Row {
    /// The row of a new put: created `created`, not read yet (last access = creation, no
    /// hits), its record at `loc` (None: a file of its own, or not written yet).
    pub fn fresh(
        id: u64,
        namespace: &str,
        key: String,
        node: u32,
        record: RecordSize,
        (created, expires): (u64, Option<u64>),
        loc: Option<(u32, u64)>,
    ) -> Row {
        Row {
            id,
            namespace: namespace.to_string(),
            key,
            node,
            size: record.size,
            stored: record.stored,
            checksum: record.checksum,
            created,
            last_access: created,
            hits: 0,
            expires,
            loc,
        }
    }
}

/// Open `path` with our pragmas and bring its schema to SCHEMA_VERSION.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    // Before WAL is entered: then the WAL index lives in heap memory, no -shm mapping.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "index.db has schema version {version}, this build knows up to {SCHEMA_VERSION}: it was written by a newer numa-cache"
        )));
    }
    if version < 1 {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))?;
    }
    if version < 2 {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
        ))?;
    }
    Ok(())
}

/// Full integrity check (used after an unclean stop).
pub fn quick_check(conn: &Connection) -> rusqlite::Result<bool> {
    let r: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    Ok(r == "ok")
}

/// A value of the `meta` table.
pub fn meta_get(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
}

/// Set a value of the `meta` table.
pub fn meta_set(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO meta(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value")?
        .execute(params![name, value])?;
    Ok(())
}

fn load_range(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare(
        "SELECT id, namespace, key, node, size, stored_size, checksum, created, last_access, hits, expires,
         segment, seg_offset FROM entries WHERE id >= ?1 AND id < ?2",
    )?;
    let rows = st.query_map([from, to], |r| {
        Ok(Row {
            id: r.get::<_, i64>(0)? as u64,
            namespace: r.get(1)?,
            key: r.get(2)?,
            node: r.get(3)?,
            size: r.get::<_, i64>(4)? as u64,
            stored: r.get::<_, i64>(5)? as u64,
            checksum: r.get::<_, i64>(6)? as u64,
            created: r.get::<_, i64>(7)? as u64,
            last_access: r.get::<_, i64>(8)? as u64,
            hits: r.get::<_, i64>(9)? as u64,
            expires: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
            loc: match (r.get::<_, Option<i64>>(11)?, r.get::<_, Option<i64>>(12)?) {
                (Some(s), Some(o)) => Some((s as u32, o as u64)),
                _ => None,
            },
        })
    })?;
    rows.collect()
}

/// Every entry row. One connection: the index is opened in exclusive locking mode (no
/// shared-memory WAL index), so no second reader can open it.
pub fn load_entries(conn: &Connection) -> rusqlite::Result<Vec<Row>> {
    load_range(conn, i64::MIN, i64::MAX)
}

/// Insert an entry row.
pub fn insert_entry(tx: &Transaction, r: &Row) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO entries (id, namespace, key, node, size, stored_size, checksum, created, last_access, hits, expires, segment, seg_offset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        r.id as i64,
        r.namespace,
        r.key,
        r.node,
        r.size as i64,
        r.stored as i64,
        r.checksum as i64,
        r.created as i64,
        r.last_access as i64,
        r.hits as i64,
        r.expires.map(|v| v.min(i64::MAX as u64) as i64),
        r.loc.map(|(s, _)| i64::from(s)),
        r.loc.map(|(_, o)| o as i64)
    ])?;
    Ok(())
}

/// Delete an entry row.
pub fn delete_entry(tx: &Transaction, id: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?
        .execute([id as i64])?;
    Ok(())
}

/// (created, last_access, expires) of entry `id`, unix seconds.
pub fn entry_times(
    conn: &Connection,
    id: u64,
) -> rusqlite::Result<Option<(u64, u64, Option<u64>)>> {
    conn.prepare_cached("SELECT created, last_access, expires FROM entries WHERE id = ?1")?
        .query_row([id as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, Option<i64>>(2)?.map(|v| v.max(0) as u64),
            ))
        })
        .optional()
}

/// Namespace and key of entry `id` (a tombstone names them).
pub fn entry_names(conn: &Connection, id: u64) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached("SELECT namespace, key FROM entries WHERE id = ?1")?
        .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// The `meta` name of node `node`'s scan start: recovery after an unclean stop scans that
/// node's segments from this one on for records whose rows did not reach the disk (a sync
/// put is answered once its record is durable; its row follows with the next full flush).
pub fn scan_from_name(node: u32) -> String {
    format!("scan_from_node{node}")
}

/// Point an entry at a new record location (compaction moved it).
pub fn move_entry(tx: &Transaction, id: u64, seg: u32, off: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE entries SET segment = ?2, seg_offset = ?3 WHERE id = ?1")?
        .execute(params![id as i64, i64::from(seg), off as i64])?;
    Ok(())
}

/// Write back access times and hits.
pub fn touch_entry(tx: &Transaction, id: u64, last_access: u64, hits: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE entries SET last_access = ?2, hits = ?3 WHERE id = ?1")?
        .execute(params![id as i64, last_access as i64, hits as i64])?;
    Ok(())
}

/// Namespace owners.
pub fn load_namespaces(conn: &Connection) -> rusqlite::Result<Vec<(String, Option<u32>)>> {
    let mut st = conn.prepare("SELECT name, owner_uid FROM namespaces")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Record a namespace's owner (first writer wins).
pub fn insert_namespace(
    conn: &Connection,
    name: &str,
    owner: Option<u32>,
    now: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO namespaces (name, owner_uid, created) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![name, owner, now as i64])?;
    Ok(())
}

/// Replace the `numa_topology` rows with `topo`.
pub fn write_topology(tx: &Transaction, topo: &Topology) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM numa_topology", [])?;
    let mut st = tx.prepare_cached(
        "INSERT INTO numa_topology (node_id, cpu_count, cpu_list, memory_mb, distances) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for n in &topo.nodes {
        let distances: serde_json::Map<String, serde_json::Value> = n
            .distances
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        st.execute(params![
            n.node_id,
            n.cpus.len() as i64,
            serde_json::to_string(&n.cpus).unwrap_or_default(),
            (n.memory_total_bytes >> 20) as i64,
            serde_json::Value::Object(distances).to_string()
        ])?;
    }
    Ok(())
}

/// The active strategy row, if any (unknown names are ignored with a warning).
pub fn active_strategy(conn: &Connection) -> rusqlite::Result<Option<StrategyConfig>> {
    let row: Option<(String, Option<i64>, Option<String>)> = conn
        .query_row(
            "SELECT strategy_name, node_preference, memory_policy FROM numa_strategies WHERE active ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((name, pref, policy)) = row else {
        return Ok(None);
    };
    let strategy = match name.parse::<Strategy>() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("ignoring the stored strategy: {e}");
            return Ok(None);
        }
    };
    let memory_policy = policy
        .and_then(|p| p.parse::<MemoryPolicy>().ok())
        .unwrap_or(MemoryPolicy::Bind);
    Ok(Some(StrategyConfig {
        strategy,
        node_preference: pref.filter(|p| *p >= 0).map(|p| p as u32),
        memory_policy,
    }))
}

/// Persist `cfg` as the one active strategy.
pub fn save_strategy(conn: &mut Connection, cfg: &StrategyConfig) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("UPDATE numa_strategies SET active = 0 WHERE active", [])?;
    tx.execute(
        "INSERT INTO numa_strategies (strategy_name, node_preference, memory_policy, active) VALUES (?1, ?2, ?3, 1)",
        params![cfg.strategy.as_str(), cfg.node_preference.map(i64::from).unwrap_or(-1), cfg.memory_policy.as_str()],
    )?;
    tx.commit()
}

/// One `numa_cache_stats` row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsRow {
    /// Node.
    pub node_id: u32,
    /// `YYYY-MM-DD HH:MM:SS` UTC (the seed's column).
    pub timestamp: String,
    /// Unix seconds.
    pub unix_time: u64,
    /// Entries.
    pub cache_entries: u64,
    /// Memory tier, MiB.
    pub memory_usage_mb: u64,
    /// Hit rate since the counters were last reset.
    pub hit_rate: f64,
    /// Logical bytes.
    pub logical_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Memory-tier bytes.
    pub memory_tier_bytes: u64,
    /// Hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
}

/// Insert stats rows and drop those older than `keep_after` (unix s).
pub fn insert_stats(
    conn: &mut Connection,
    rows: &[StatsRow],
    keep_after: u64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT OR REPLACE INTO numa_cache_stats (node_id, timestamp, cache_entries, memory_usage_mb, hit_rate, unix_time,
             logical_bytes, stored_bytes, memory_tier_bytes, hits, misses) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for r in rows {
            st.execute(params![
                r.node_id,
                r.timestamp,
                r.cache_entries as i64,
                r.memory_usage_mb as i64,
                r.hit_rate,
                r.unix_time as i64,
                r.logical_bytes as i64,
                r.stored_bytes as i64,
                r.memory_tier_bytes as i64,
                r.hits as i64,
                r.misses as i64
            ])?;
        }
        tx.execute(
            "DELETE FROM numa_cache_stats WHERE unix_time < ?1",
            [keep_after as i64],
        )?;
    }
    tx.commit()
}

/// Stats rows with `since <= unix_time <= until`, oldest first.
pub fn history(conn: &Connection, since: u64, until: u64) -> rusqlite::Result<Vec<StatsRow>> {
    let mut st = conn.prepare_cached(
        "SELECT node_id, timestamp, unix_time, cache_entries, memory_usage_mb, hit_rate, logical_bytes, stored_bytes,
         memory_tier_bytes, hits, misses FROM numa_cache_stats WHERE unix_time BETWEEN ?1 AND ?2 ORDER BY unix_time, node_id",
    )?;
    let rows = st.query_map(
        params![
            since.min(i64::MAX as u64) as i64,
            until.min(i64::MAX as u64) as i64
        ],
        |r| {
            Ok(StatsRow {
                node_id: r.get(0)?,
                timestamp: r.get(1)?,
                unix_time: r.get::<_, i64>(2)? as u64,
                cache_entries: r.get::<_, i64>(3)? as u64,
                memory_usage_mb: r.get::<_, i64>(4)? as u64,
                hit_rate: r.get(5)?,
                logical_bytes: r.get::<_, i64>(6)? as u64,
                stored_bytes: r.get::<_, i64>(7)? as u64,
                memory_tier_bytes: r.get::<_, i64>(8)? as u64,
                hits: r.get::<_, i64>(9)? as u64,
                misses: r.get::<_, i64>(10)? as u64,
            })
        },
    )?;
    rows.collect()
}

/// `YYYY-MM-DD HH:MM:SS` of unix time `t` (UTC), the format SQLite's CURRENT_TIMESTAMP uses.
pub fn sql_timestamp(t: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// `YYYYMMDDTHHMMSSZ` of unix time `t`: snapshot names.
pub fn compact_timestamp(t: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Unix time to UTC civil date and time (Howard Hinnant's days-from-civil, inverted).
fn civil(t: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (t / 86400) as i64;
    let rem = t % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(sql_timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(compact_timestamp(1_795_580_100), "20261125T041500Z");
        assert_eq!(sql_timestamp(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn schema_is_created_once_and_strategy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("i.db")).unwrap();
        assert_eq!(
            c.pragma_query_value(None, "user_version", |r| r.get::<_, i32>(0))
                .unwrap(),
            SCHEMA_VERSION
        );
        assert!(active_strategy(&c).unwrap().is_none());
        let cfg = StrategyConfig {
            strategy: Strategy::RoundRobin,
            node_preference: Some(1),
            memory_policy: MemoryPolicy::Preferred,
        };
        save_strategy(&mut c, &cfg).unwrap();
        drop(c);
        let c = open(&dir.path().join("i.db")).unwrap();
        assert_eq!(active_strategy(&c).unwrap(), Some(cfg));
    }
}

//! The cache engine: per-node shards, blob files, the SQLite index, the memory tier,
//! eviction, snapshots and statistics.

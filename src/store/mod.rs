//! The cache engine: per-node shards (BTRFS subvolumes) holding append-only segments of
//! self-describing records (zstd where it pays; large values in files of their own), the
//! SQLite index with group commit and a stated durability contract, a node-local memory
//! tier, eviction, snapshots and statistics. Usable in-process; the daemon wraps it.
//!
//! ```no_run
//! use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions};
//! use numa_cache::topology::Topology;
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), numa_cache::store::StoreError> {
//! // One node with every CPU; the daemon passes the detected topology instead.
//! let cpus: Vec<u32> = (0..std::thread::available_parallelism().map_or(1, |n| n.get() as u32)).collect();
//! let topology = Topology::single_node(cpus);
//! let config = CacheConfig { dir: "/tmp/numa-cache-example".into(), ..CacheConfig::default() };
//! let cache = Cache::open(config, Arc::new(topology))?;
//! let me = Caller::default();
//! let node = cache.put("embeddings", "doc-1", b"\x00\x01\x02", &PutOptions::default(), &me)?;
//! assert_eq!(cache.get("embeddings", "doc-1", &me)?, b"\x00\x01\x02");
//! println!("stored on node {node}: {}", cache.stats_json());
//! # Ok(()) }
//! ```

pub mod blob;
mod checkpoint;
mod commit;
pub mod config;
mod engine;
mod entries;
pub mod error;
pub mod index;
pub mod memtier;
mod recovery;
pub mod segment;
pub mod shard;
pub mod snapshot;
mod state;
pub mod stats;

pub use config::{CacheConfig, Caller, EntryInfo, PutOptions, validate_key, validate_namespace};
pub use engine::expiry;
pub use engine::{Cache, NOWAIT_MAX_BYTES, PutStart};
pub use error::StoreError;
pub use stats::{CacheStats, NodeStats, NumaBenefits, Removals, StatsTotals};

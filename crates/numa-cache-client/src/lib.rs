//! Client for `numa-cached`, the NUMA-aware blob cache of operation-dbus
//! (`org.opdbus.NumaCache` on the D-Bus system bus).
//!
//! - [`Client`]: async (tokio), typed calls for every member of every interface, `get`/`put`
//!   with options, values above a size go by sealed memfd (GetFd/PutFd) transparently.
//! - [`blocking::Client`]: the same calls for synchronous code, usable inside a runtime too.
//! - [`Error`]: one variant per D-Bus error name of the contract.
//! - Typed views ([`TopologyInfo`], [`StrategyInfo`], [`NodeInfo`], [`CacheStatsInfo`]) and
//!   streams of their changes and of the daemon's signals ([`Client::events`],
//!   [`Client::watch_topology`], ...).
//! - [`upstream`]: drop-in `EmbeddingCache` and `WorkstackCache` for operation-dbus code.
//! - [`names`]: bus name, paths, interfaces, error names and polkit actions, shared with the
//!   daemon so the two sides cannot drift apart.
//!
//! ```no_run
//! use numa_cache_client::{Client, PutOptions};
//! # async fn demo() -> Result<(), numa_cache_client::Error> {
//! let client = Client::system().await?;
//! client.put_with("my-app", "answer", b"42", PutOptions::new().sync(true)).await?;
//! let value = client.get("my-app", "answer").await?;
//! assert_eq!(value.as_deref(), Some(&b"42"[..]));
//! let t = client.topology().await?;
//! println!("{} NUMA nodes", t.node_ids.len());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod blocking;
mod client;
mod error;
mod events;
mod memfd;
pub mod metrics;
pub mod names;
pub mod proxies;
mod types;
pub mod upstream;

pub use client::{Client, ClientBuilder, DEFAULT_FD_THRESHOLD, DEFAULT_MAX_VALUE_BYTES, Lease};
pub use error::{Error, Result};
pub use events::{Event, EventStream, Object};
pub use types::{
    CacheStatsInfo, Dict, EntryInfo, NodeInfo, PutOptions, StrategyChange, StrategyInfo,
    TopologyInfo, TopologyNode, TopologyReport,
};

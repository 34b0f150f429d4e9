//! Using the cache engine in-process, without the daemon: open a cache in a folder, store
//! an embedding vector and a text file, read them back, look at the statistics.
//!
//! `cargo run --example embed -- /tmp/numa-cache-demo`

use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions, StoreError};
use numa_cache::topology::Topology;
use std::sync::Arc;
use std::time::Duration;

fn main() -> Result<(), StoreError> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/numa-cache-demo".into());
    // A one-node topology over every CPU. A NUMA-aware program passes the detected one
    // (numa_cache::topology) so entries land on the caller's node.
    let cpus: Vec<u32> =
        (0..std::thread::available_parallelism().map_or(1, |n| n.get() as u32)).collect();
    let topology = Topology::single_node(cpus);
    let config = CacheConfig {
        dir: dir.into(),
        max_bytes: 1 << 30,
        memory_bytes: 64 << 20,
        ..CacheConfig::default()
    };
    let cache = Cache::open(config, Arc::new(topology))?;
    let me = Caller::default();

    // An embedding: 384 float32 values, stored as little-endian bytes.
    let embedding: Vec<u8> = (0..384)
        .flat_map(|i| (i as f32 / 384.0).to_le_bytes())
        .collect();
    let node = cache.put(
        "embeddings",
        "doc-42",
        &embedding,
        &PutOptions::default(),
        &me,
    )?;
    println!("embedding stored on node {node}");

    // A text value that expires in an hour.
    let text = "fn main() { println!(\"hello\"); }\n".repeat(100);
    let hour = PutOptions {
        ttl: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    cache.put("sources", "main.rs", text.as_bytes(), &hour, &me)?;

    let back = cache.get("embeddings", "doc-42", &me)?;
    assert_eq!(back, embedding);
    let info = cache.lookup("sources", "main.rs")?;
    println!(
        "main.rs: {} bytes, {} on disk, expires at {:?}",
        info.size, info.stored_size, info.expires
    );

    match cache.get("sources", "missing.rs", &me) {
        Err(StoreError::NotFound { .. }) => println!("missing.rs: not cached"),
        other => println!("unexpected: {other:?}"),
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&cache.stats_json()).unwrap_or_default()
    );
    cache.flush()
}

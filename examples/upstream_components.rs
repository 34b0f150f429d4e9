//! Upstream-style operation-dbus code against a running numa-cached: an embedding cache
//! (`BtrfsCache`'s get_or_embed) and a workstack cache (op-cache's WorkstackCache), where
//! only the constructors changed.
//!
//! Run it against the system bus, or a private one through DBUS_SYSTEM_BUS_ADDRESS:
//! `cargo run --example upstream_components`. It prints what was computed and what came
//! from the cache; tests/client_bus.rs runs it against a test daemon.

use numa_cache_client::upstream::{
    EmbeddingCache, WorkstackCache, WorkstackCacheConfig, sha256_hex,
};
use std::error::Error;

type AnyResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// A stand-in for a model call (no model ships with this repository): a deterministic
/// 8-dimensional vector of the text's bytes.
fn embed(text: &str) -> AnyResult<Vec<f32>> {
    let mut v = vec![0f32; 8];
    for (i, b) in text.bytes().enumerate() {
        v[i % 8] += f32::from(b) / 255.0;
    }
    Ok(v)
}

/// A workstack step: what the real code would do with the step's input (run a plugin, call
/// a service); here, a transformation of the input that is easy to check.
fn run_step(step: usize, input: &str) -> Vec<u8> {
    format!("step {step} done with {}", input.to_uppercase()).into_bytes()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> AnyResult<()> {
    // Upstream: `BtrfsCache::new(cache_dir)?` and `WorkstackCache::new(dir, config).await?`.
    let embeddings = EmbeddingCache::new()?;
    let workstacks = WorkstackCache::new(WorkstackCacheConfig::default()).await?;

    let mut computed = 0;
    let requests = [
        "list interfaces",
        "restart systemd-networkd",
        "list interfaces",
    ];
    for text in requests {
        let v = embeddings.get_or_embed(text, |t| {
            computed += 1;
            embed(t)
        })?;
        println!("embedding of {text:?}: {} dimensions", v.len());
    }
    println!(
        "computed {computed} embeddings for {} requests",
        requests.len()
    );

    let workstack = "deploy-42";
    let inputs = ["fetch", "configure", "restart"];
    for pass in 1..=2 {
        let mut cached = 0;
        for (step, input) in inputs.iter().enumerate() {
            let input_hash = sha256_hex(input.as_bytes());
            let output = match workstacks.get(workstack, step, &input_hash)? {
                Some(out) => {
                    cached += 1;
                    out
                }
                None => {
                    let out = run_step(step, input);
                    workstacks.put(workstack, step, &input_hash, &out, None)?;
                    out
                }
            };
            println!(
                "pass {pass} step {step}: {}",
                String::from_utf8_lossy(&output)
            );
        }
        println!(
            "pass {pass}: {cached} of {} steps from the cache",
            inputs.len()
        );
    }
    let n = workstacks.invalidate_workstack(workstack)?;
    println!("invalidated {n} steps of {workstack}");
    Ok(())
}

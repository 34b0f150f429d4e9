//! Round trips through the client crate against a running numa-cached, each against the
//! same-run baseline `org.freedesktop.DBus.Peer.Ping` on the same connection: `Get` and
//! `Put` of 4 KiB (async client), `Get` through the blocking facade (its thread hop), and
//! the upstream `EmbeddingCache::get_embedding` of a 384-dimension vector; `Get` of 4 KiB
//! over a direct connection (`OpenDirect`, no bus daemon hop) against the same bus `Ping`;
//! and `GetMany`/`PutMany` of 64 keys of 4 KiB against 64 single `Get`s/`Put`s on the same
//! connection, in keys per second.
//!
//! `cargo run --release -p numa-cache-client --example bench -- [CALLS] [ROUNDS]`, with
//! DBUS_SYSTEM_BUS_ADDRESS pointing at the daemon's bus (scripts/bench-client.sh sets up a
//! private bus and daemon and runs this). Rounds alternate the operations, so load changes
//! on a shared machine hit every operation alike.
//!
//! With BENCH_BUS_PID (and BENCH_DAEMON_PID) set, the batch figures also give the CPU time
//! that process (and this client) spent per GetMany/PutMany and per 64 single calls, and how often it went to
//! sleep (voluntary context switches: about one per main-loop turn of a bus), from
//! /proc/PID/task/*/schedstat and /proc/PID/task/*/status.

use numa_cache_client::upstream::EmbeddingCache;
use numa_cache_client::{Client, Error, blocking};
use std::time::{Duration, Instant};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let c = Client::system().await?;
    let direct = c.open_direct().await?;
    let b = blocking::Client::system()?;
    let emb = EmbeddingCache::with_client(b.clone()).with_namespace("bench-embeddings");
    let value = vec![0x5au8; 4096];
    c.put("bench-client", "k", &value).await?;
    let vector: Vec<f32> = (0..384).map(|i| i as f32 / 384.0).collect();
    emb.put_embedding("the text", &vector)?;

    let names = [
        "ping",
        "get 4 KiB",
        "put 4 KiB",
        "blocking get 4 KiB",
        "get_embedding 384",
        "direct get 4 KiB",
        "direct ping",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(calls * rounds); names.len()];
    for _ in 0..rounds {
        for (i, s) in samples.iter_mut().enumerate() {
            for n in 0..calls {
                let t = Instant::now();
                match i {
                    0 => c.ping().await?,
                    1 => {
                        let v = c.get("bench-client", "k").await?;
                        assert_eq!(v.map(|v| v.len()), Some(4096));
                    }
                    2 => {
                        c.put("bench-client", &format!("p{}", n % 64), &value)
                            .await?;
                    }
                    3 => {
                        let v = b.get("bench-client", "k")?;
                        assert_eq!(v.map(|v| v.len()), Some(4096));
                    }
                    4 => {
                        let v = emb.get_embedding("the text")?;
                        assert_eq!(v.as_ref().map(Vec::len), Some(384));
                    }
                    5 => {
                        let v = direct.get("bench-client", "k").await?;
                        assert_eq!(v.map(|v| v.len()), Some(4096));
                    }
                    _ => direct.ping().await?,
                }
                s.push(t.elapsed());
            }
        }
    }
    // GetMany of 64 keys of 4 KiB against 64 single Gets, as keys per second.
    let keys: Vec<String> = (0..64).map(|i| format!("many{i}")).collect();
    for k in &keys {
        c.put("bench-client", k, &value).await?;
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let batches = (calls / 64).max(20);
    let mut watched = [("bus", "BENCH_BUS_PID"), ("daemon", "BENCH_DAEMON_PID")]
        .iter()
        .filter_map(|(what, var)| {
            let pid = std::env::var(var).ok()?.parse::<u32>().ok()?;
            Some((*what, pid))
        })
        .collect::<Vec<_>>();
    if !watched.is_empty() {
        watched.push(("client", std::process::id()));
    }
    let bus = batch_rates(&c, &refs, &value, batches, rounds, &watched).await?;
    let p2p = batch_rates(&direct, &refs, &value, batches, rounds, &[]).await?;

    let ping = median(&mut samples[0]);
    println!(
        "{calls} calls x {rounds} rounds per operation, median round trip, one connection each:"
    );
    for (name, s) in names.iter().zip(samples.iter_mut()) {
        let m = median(s);
        println!(
            "  {name:<22} {:>8.1} µs   {:>5.2}x ping",
            m.as_secs_f64() * 1e6,
            m.as_secs_f64() / ping.as_secs_f64()
        );
    }
    for (via, r) in [("bus", &bus), ("direct", &p2p)] {
        println!(
            "  {via:<6} GetMany 64 x 4 KiB: {:.0} keys/s; single Gets: {:.0} keys/s; {:.1}x",
            r.get_many,
            r.get,
            r.get_many / r.get
        );
        println!(
            "  {via:<6} PutMany 64 x 4 KiB: {:.0} keys/s; single Puts: {:.0} keys/s; {:.1}x",
            r.put_many,
            r.put,
            r.put_many / r.put
        );
    }
    let calls = (batches * rounds) as f64;
    for (what, _) in &watched {
        for (i, name) in ["Get", "Put"].iter().enumerate() {
            let single = bus.cost[&(*what, 2 * i)];
            let many = bus.cost[&(*what, 2 * i + 1)];
            println!(
                "  {what:<6} CPU per {name}Many: {:.0} µs, {:.1} sleeps; per 64 single {name}s: {:.0} µs, {:.1} sleeps; {:.1}x",
                many.0 as f64 / calls / 1e3,
                many.1 as f64 / calls,
                single.0 as f64 / calls / 1e3,
                single.1 as f64 / calls,
                single.0 as f64 / many.0.max(1) as f64
            );
        }
    }
    Ok(())
}

/// CPU nanoseconds and voluntary context switches of every thread of `pid` so far; zeros
/// when it cannot be read (the figure then shows 0).
fn usage(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for t in tasks.flatten() {
        let p = t.path();
        if let Some(ns) = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total.0 += ns;
        }
        if let Some(n) = std::fs::read_to_string(p.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        {
            total.1 += n;
        }
    }
    total
}

/// Keys per second of 64 single Gets/Puts and of one GetMany/PutMany of the same 64 keys of
/// 4 KiB (default durability), on one client; rounds alternate the four.
struct Rates {
    get: f64,
    get_many: f64,
    put: f64,
    put_many: f64,
    /// (watched process, phase: 0 Gets, 1 GetMany, 2 Puts, 3 PutMany): CPU ns and sleeps.
    cost: std::collections::HashMap<(&'static str, usize), (u64, u64)>,
}

async fn batch_rates(
    c: &Client,
    refs: &[&str],
    value: &[u8],
    batches: usize,
    rounds: usize,
    watched: &[(&'static str, u32)],
) -> Result<Rates, Error> {
    let batch: Vec<(&str, &[u8])> = refs.iter().map(|k| (*k, value)).collect();
    let mut t = [Duration::ZERO; 4];
    let mut cost = std::collections::HashMap::new();
    let mut phase = |i: usize, t0: Instant, before: Vec<(u64, u64)>| {
        t[i] += t0.elapsed();
        for ((what, pid), b) in watched.iter().zip(before) {
            let a = usage(*pid);
            let e = cost.entry((*what, i)).or_insert((0, 0));
            e.0 += a.0.saturating_sub(b.0);
            e.1 += a.1.saturating_sub(b.1);
        }
    };
    let now = || watched.iter().map(|(_, p)| usage(*p)).collect::<Vec<_>>();
    // Odd phases are the batches, even ones their single calls (the cost table's order).
    for _ in 0..rounds {
        let (b, t0) = (now(), Instant::now());
        for _ in 0..batches {
            for k in refs {
                c.get("bench-client", k).await?;
            }
        }
        phase(0, t0, b);
        let (b, t0) = (now(), Instant::now());
        for _ in 0..batches {
            assert_eq!(c.get_many("bench-client", refs).await?.len(), refs.len());
        }
        phase(1, t0, b);
        let (b, t0) = (now(), Instant::now());
        for _ in 0..batches {
            for k in refs {
                c.put("bench-client", k, value).await?;
            }
        }
        phase(2, t0, b);
        let (b, t0) = (now(), Instant::now());
        for _ in 0..batches {
            assert_eq!(c.put_many("bench-client", &batch).await?, 64);
        }
        phase(3, t0, b);
    }
    let n = (batches * rounds * refs.len()) as f64;
    Ok(Rates {
        get: n / t[0].as_secs_f64(),
        get_many: n / t[1].as_secs_f64(),
        put: n / t[2].as_secs_f64(),
        put_many: n / t[3].as_secs_f64(),
        cost,
    })
}

//! Applying CPU affinity and a memory policy to 64 threads: numa-cache's way (one
//! `sched_setaffinity` per thread id, and each thread setting its own policy with
//! `set_mempolicy`, as `NodePools::apply` does) against the seed design's way of spawning
//! `taskset -p` once per thread (the baseline only; the product never runs taskset).
//!
//! Run: `cargo bench --bench affinity`. Prints the median of each and the ratio.

use numa_cache::policy::{self, MemPolicyMode};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const THREADS: usize = 64;

/// An order to a worker: set this policy (None: exit).
type Order = Option<(MemPolicyMode, Vec<u32>)>;

struct Workers {
    tids: Vec<i32>,
    orders: Vec<mpsc::Sender<Order>>,
    done: mpsc::Receiver<()>,
}

fn start_workers() -> Workers {
    let (done_tx, done) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let mut orders = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = mpsc::channel::<Order>();
        let done_tx = done_tx.clone();
        let tid_tx = tid_tx.clone();
        std::thread::spawn(move || {
            let _ = tid_tx.send(policy::current_tid());
            while let Ok(Some((mode, nodes))) = rx.recv() {
                let _ = policy::set_mempolicy(mode, &nodes);
                let _ = done_tx.send(());
            }
        });
        orders.push(tx);
    }
    let tids = (0..THREADS).filter_map(|_| tid_rx.recv().ok()).collect();
    Workers { tids, orders, done }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run briefly then.
    let full = std::env::args().any(|a| a == "--bench");
    let cpus = policy::get_affinity(0).unwrap_or_else(|e| panic!("reading affinity: {e}"));
    let node = policy::mems_allowed()
        .ok()
        .and_then(|n| n.first().copied())
        .unwrap_or(0);
    let cpu_list = policy::id_list(&cpus);
    let w = start_workers();

    let ours_rounds = if full { 300 } else { 3 };
    let mut ours = Vec::new();
    for round in 0..ours_rounds {
        // Alternate between the full set and its first CPU so every call changes something.
        let set: Vec<u32> = if round % 2 == 0 {
            cpus.clone()
        } else {
            cpus[..1].to_vec()
        };
        let t = Instant::now();
        for &tid in &w.tids {
            policy::set_affinity(tid, &set).unwrap_or_else(|e| panic!("pinning {tid}: {e}"));
        }
        for o in &w.orders {
            let _ = o.send(Some((MemPolicyMode::Bind, vec![node])));
        }
        for _ in 0..THREADS {
            let _ = w.done.recv();
        }
        ours.push(t.elapsed());
    }

    let taskset_rounds = if full { 5 } else { 1 };
    let mut theirs = Vec::new();
    let have_taskset = Command::new("taskset").arg("--version").output().is_ok();
    if have_taskset {
        for _ in 0..taskset_rounds {
            let t = Instant::now();
            for &tid in &w.tids {
                let st = Command::new("taskset")
                    .args(["-p", "-c", &cpu_list, &tid.to_string()])
                    .stdout(Stdio::null())
                    .status();
                assert!(
                    st.map(|s| s.success()).unwrap_or(false),
                    "taskset -p failed"
                );
            }
            theirs.push(t.elapsed());
        }
    }
    for o in &w.orders {
        let _ = o.send(None);
    }

    let ours = median(ours);
    println!(
        "affinity+mempolicy, {THREADS} threads, numa-cache syscalls: {ours:?} (median of {ours_rounds})"
    );
    if theirs.is_empty() {
        println!("taskset not installed (util-linux): baseline not measured");
        return;
    }
    let theirs = median(theirs);
    println!(
        "affinity only, {THREADS} threads, `taskset -p` per thread: {theirs:?} (median of {taskset_rounds})"
    );
    println!(
        "ratio: {:.0}x faster (and the taskset baseline does not even set a memory policy)",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

//! Worker pools, one per node: the threads that read and write a node's shard and fill its
//! memory tier, so the pages they touch are that node's.
//!
//! This first version starts plain threads with no pinning; `placement` fills in affinity and
//! memory policy. The public API (`NodePools::start`, `run`, `serving_node`) is what the store
//! uses and stays.

use crate::placement::strategy::StrategyConfig;
use crate::topology::Topology;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    queue: mpsc::Sender<Job>,
}

impl Pool {
    fn start(node: u32, threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            thread::Builder::new()
                .name(format!("node{node}-w{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawning a worker thread");
        }
        Pool { queue: tx }
    }
}

/// The worker pools of every node that has CPUs.
pub struct NodePools {
    pools: BTreeMap<u32, Pool>,
    /// For every node (with or without CPUs), the node whose pool serves it.
    serve: BTreeMap<u32, u32>,
}

impl NodePools {
    /// Start a pool for each node with allowed CPUs (at least one pool, for node 0, on a
    /// machine without usable NUMA data).
    pub fn start(topology: &Topology, _config: &StrategyConfig) -> NodePools {
        let mut pools = BTreeMap::new();
        let mut serve = BTreeMap::new();
        let first = topology.nodes.first().map(|n| n.node_id).unwrap_or(0);
        pools.insert(first, Pool::start(first, 2));
        for n in &topology.nodes {
            serve.insert(n.node_id, first);
        }
        serve.entry(first).or_insert(first);
        NodePools { pools, serve }
    }

    /// The node whose pool serves `node` (itself when it has CPUs; else its nearest node).
    pub fn serving_node(&self, node: u32) -> u32 {
        self.serve
            .get(&node)
            .copied()
            .unwrap_or_else(|| *self.pools.keys().next().unwrap_or(&0))
    }

    /// Run `job` on the pool that serves `node` and wait for its result.
    pub fn run<R: Send + 'static>(&self, node: u32, job: impl FnOnce() -> R + Send + 'static) -> R {
        let serving = self.serving_node(node);
        let pool = self
            .pools
            .get(&serving)
            .or_else(|| self.pools.values().next())
            .expect("at least one pool");
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = pool.queue.send(Box::new(move || {
            let _ = tx.send(job());
        }));
        match sent {
            Ok(()) => rx.recv().expect("worker thread ended while running a job"),
            Err(mpsc::SendError(_)) => panic!("worker pool for node {serving} has stopped"),
        }
    }
}

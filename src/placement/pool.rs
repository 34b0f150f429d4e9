//! Worker pools, one per node with CPUs: the threads that read and write a node's shard and
//! fill its memory tier, pinned to that node's allowed CPUs and running under the active
//! strategy's memory policy, so the pages they touch are that node's.
//!
//! A node without CPUs (a memory-only tier) is served by the pool of its nearest node by
//! distance; its jobs run there under a memory policy for the memory-only node itself.
//! Pinning that the host refuses (no privilege, a sandbox) is logged once and the workers go
//! on unpinned: the cache keeps working, only less local.

use crate::placement::nodes;
use crate::placement::strategy::{MemoryPolicy, Strategy, StrategyConfig};
use crate::policy::{self, MemPolicyMode, PolicyError};
use crate::topology::Topology;
use std::any::Any;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// One unit of work and the node whose memory it should fill.
struct Task {
    target: u32,
    job: Job,
}

/// What every worker needs to (re)apply its placement: shared by all pools, replaced by
/// `apply` and `update`; `epoch` tells workers it changed.
struct Settings {
    config: StrategyConfig,
    topology: Topology,
}

impl Settings {
    /// No pinning and no memory policy: the strategy is `disabled`, or the topology says
    /// its NUMA data cannot be trusted for placement.
    fn unplaced(&self) -> bool {
        self.config.strategy == Strategy::Disabled || !self.topology.numa_available
    }
}

struct Shared {
    settings: RwLock<Settings>,
    epoch: AtomicU64,
    warned_affinity: AtomicBool,
    warned_policy: AtomicBool,
}

impl Shared {
    fn settings<R>(&self, f: impl FnOnce(&Settings) -> R) -> R {
        match self.settings.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// The CPUs a worker of `node`'s pool runs on: the node's allowed CPUs, or every allowed
    /// CPU when the strategy is `disabled` or the node has none left.
    fn cpus_for(&self, node: u32) -> Vec<u32> {
        self.settings(|s| {
            let own = nodes::node(&s.topology, node)
                .map(|n| n.allowed_cpus.clone())
                .unwrap_or_default();
            if s.unplaced() || own.is_empty() {
                nodes::all_allowed_cpus(&s.topology)
            } else {
                own
            }
        })
    }

    /// The memory policy for work that fills `target`'s memory.
    fn mempolicy_for(&self, target: u32) -> (MemPolicyMode, Vec<u32>) {
        self.settings(|s| {
            let mem = nodes::memory_nodes(&s.topology);
            if s.unplaced() || mem.is_empty() {
                return (MemPolicyMode::Default, Vec::new());
            }
            // A GPU memory node is never a placement candidate, but work for an entry a
            // caller put there explicitly allocates there.
            let home = if nodes::explicit_gpu_node(&s.topology, target) {
                target
            } else {
                nodes::nearest(&s.topology, target, &mem).unwrap_or(mem[0])
            };
            match s.config.memory_policy {
                MemoryPolicy::Bind => (MemPolicyMode::Bind, vec![home]),
                MemoryPolicy::Preferred => (MemPolicyMode::Preferred, vec![home]),
                MemoryPolicy::Interleaved => (MemPolicyMode::Interleave, mem),
                MemoryPolicy::Default => (MemPolicyMode::Default, Vec::new()),
            }
        })
    }

    fn warn_once(&self, flag: &AtomicBool, what: &str, err: &PolicyError) {
        if !flag.swap(true, Ordering::Relaxed) {
            if err.is_degradable() {
                tracing::warn!(
                    "{what} is not possible here ({err}); workers go on without it, the cache keeps working"
                );
            } else {
                tracing::warn!("{what} failed ({err}); workers go on without it");
            }
        }
    }

    fn pin(&self, tid: i32, node: u32) -> bool {
        let cpus = self.cpus_for(node);
        if cpus.is_empty() {
            return false;
        }
        match policy::set_affinity(tid, &cpus) {
            Ok(()) => true,
            Err(e) => {
                self.warn_once(&self.warned_affinity, "pinning worker threads", &e);
                false
            }
        }
    }

    fn set_policy(&self, target: u32) {
        let (mode, nodes) = self.mempolicy_for(target);
        if let Err(e) = policy::set_mempolicy(mode, &nodes) {
            self.warn_once(
                &self.warned_policy,
                "setting the workers' memory policy",
                &e,
            );
        }
    }
}

struct Pool {
    queue: mpsc::Sender<Task>,
    tids: Arc<Mutex<Vec<i32>>>,
}

impl Pool {
    fn start(node: u32, threads: usize, shared: &Arc<Shared>) -> Option<Pool> {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let tids = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let mut started = 0;
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let tids = Arc::clone(&tids);
            let shared = Arc::clone(shared);
            let ready = ready_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("node{node}-w{i}"))
                .spawn(move || worker(node, &rx, &tids, &shared, ready));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!("cannot start worker {i} for node {node}: {e}"),
            }
        }
        // Wait until every worker has registered its tid and pinned itself, so `apply` and
        // `thread_ids` see all of them right after `start`.
        for _ in 0..started {
            if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                break;
            }
        }
        (started > 0).then_some(Pool { queue: tx, tids })
    }

    fn tids(&self) -> Vec<i32> {
        self.tids.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

fn worker(
    node: u32,
    rx: &Mutex<mpsc::Receiver<Task>>,
    tids: &Mutex<Vec<i32>>,
    shared: &Shared,
    ready: mpsc::Sender<()>,
) {
    let tid = policy::current_tid();
    if let Ok(mut t) = tids.lock() {
        t.push(tid);
    }
    // Pin at once, not only at the first job, so an idle pool already sits on its node.
    let mut applied_epoch = Some(shared.epoch.load(Ordering::Acquire));
    shared.pin(0, node);
    let _ = ready.send(());
    drop(ready);
    let mut policy_target = None;
    loop {
        let task = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => break,
        };
        let Ok(task) = task else { break };
        // Placement changed since this thread last looked: re-pin and forget the policy.
        let epoch = shared.epoch.load(Ordering::Acquire);
        if applied_epoch != Some(epoch) {
            shared.pin(0, node);
            applied_epoch = Some(epoch);
            policy_target = None;
        }
        if policy_target != Some(task.target) {
            shared.set_policy(task.target);
            policy_target = Some(task.target);
        }
        (task.job)();
    }
    if let Ok(mut t) = tids.lock() {
        t.retain(|&x| x != tid);
    }
}

/// How many workers a node's pool gets: one per allowed CPU, at least 2 (so a slow disk
/// read does not stall the node) and at most 8.
fn threads_for(cpus: usize) -> usize {
    cpus.clamp(2, 8)
}

struct Inner {
    pools: BTreeMap<u32, Pool>,
    /// For every node (with or without CPUs), the node whose pool serves it.
    serve: BTreeMap<u32, u32>,
}

/// The worker pools of every node that has CPUs.
pub struct NodePools {
    inner: RwLock<Inner>,
    shared: Arc<Shared>,
}

impl NodePools {
    /// Start a pool for each node with allowed CPUs (one pool, for the first node or node 0,
    /// on a machine without usable NUMA data), pinned and with the memory policy of `config`.
    pub fn start(topology: &Topology, config: &StrategyConfig) -> NodePools {
        if !topology.numa_available {
            tracing::info!(
                "no usable NUMA information: worker threads run unpinned with the default memory policy"
            );
        }
        let shared = Arc::new(Shared {
            settings: RwLock::new(Settings {
                config: *config,
                topology: topology.clone(),
            }),
            epoch: AtomicU64::new(0),
            warned_affinity: AtomicBool::new(false),
            warned_policy: AtomicBool::new(false),
        });
        let pools = NodePools {
            inner: RwLock::new(Inner {
                pools: BTreeMap::new(),
                serve: BTreeMap::new(),
            }),
            shared,
        };
        pools.reconcile(topology);
        pools
    }

    /// Start pools for nodes that gained CPUs, stop those of nodes that lost them, and
    /// recompute which pool serves every node.
    fn reconcile(&self, topology: &Topology) {
        let mut with_cpus = nodes::cpu_nodes(topology);
        if with_cpus.is_empty() {
            with_cpus.push(topology.nodes.first().map(|n| n.node_id).unwrap_or(0));
        }
        let mut inner = match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Dropping a pool's sender lets its workers finish queued work and exit.
        inner.pools.retain(|node, _| with_cpus.contains(node));
        for &node in &with_cpus {
            if let Entry::Vacant(slot) = inner.pools.entry(node) {
                let cpus = nodes::node(topology, node)
                    .map(|n| n.allowed_cpus.len())
                    .unwrap_or_else(|| nodes::all_allowed_cpus(topology).len());
                if let Some(pool) = Pool::start(node, threads_for(cpus), &self.shared) {
                    slot.insert(pool);
                }
            }
        }
        let running: Vec<u32> = inner.pools.keys().copied().collect();
        inner.serve.clear();
        for n in &topology.nodes {
            if let Some(s) = nodes::nearest(topology, n.node_id, &running) {
                inner.serve.insert(n.node_id, s);
            }
        }
        for &r in &running {
            inner.serve.insert(r, r);
        }
    }

    /// The node whose pool serves `node` (itself when it has CPUs; else its nearest node).
    pub fn serving_node(&self, node: u32) -> u32 {
        let inner = match self.inner.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        inner
            .serve
            .get(&node)
            .copied()
            .unwrap_or_else(|| *inner.pools.keys().next().unwrap_or(&0))
    }

    /// Run `job` on the pool that serves `node`, under a memory policy for `node`, and wait
    /// for its result. A panic in the job is resumed on the caller. When no pool can take the
    /// job (every worker gone), it runs on the calling thread instead.
    ///
    /// Pass the entry's own node, not `serving_node(node)`: for a memory-only node the job
    /// then runs on its nearest pool but allocates on the memory-only node. A job must not
    /// call `run` itself (it would wait on the pool it occupies).
    pub fn run<R: Send + 'static>(&self, node: u32, job: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::sync_channel::<Result<R, Box<dyn Any + Send>>>(1);
        let task = Task {
            target: node,
            job: Box::new(move || {
                let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
            }),
        };
        let sent = {
            let inner = match self.inner.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let serving = inner.serve.get(&node).copied();
            let pool = serving
                .and_then(|s| inner.pools.get(&s))
                .or_else(|| inner.pools.values().next());
            match pool {
                Some(p) => p.queue.send(task).map_err(|mpsc::SendError(t)| t),
                None => Err(task),
            }
        };
        if let Err(task) = sent {
            tracing::warn!("no worker pool can take work for node {node}; running it inline");
            (task.job)();
        }
        match rx.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => resume_unwind(panic),
            // The worker died without running the job (its pool was stopped mid-queue).
            Err(_) => resume_unwind(Box::new(format!(
                "the worker pool for node {node} stopped before running a job"
            ))),
        }
    }

    /// Apply a new strategy to every worker; returns how many threads were re-applied.
    ///
    /// Affinity is set at once from here (by thread id); each worker sets its own memory
    /// policy before its next job, since `set_mempolicy` acts only on the calling thread.
    pub fn apply(&self, config: &StrategyConfig) -> usize {
        match self.shared.settings.write() {
            Ok(mut s) => s.config = *config,
            Err(p) => p.into_inner().config = *config,
        }
        self.repin_all()
    }

    /// Follow a topology change (hotplug): start or stop pools and re-pin every worker to its
    /// node's current CPUs. Returns how many threads were re-pinned.
    pub fn update(&self, topology: &Topology) -> usize {
        match self.shared.settings.write() {
            Ok(mut s) => s.topology = topology.clone(),
            Err(p) => p.into_inner().topology = topology.clone(),
        }
        self.reconcile(topology);
        self.repin_all()
    }

    fn repin_all(&self) -> usize {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        let inner = match self.inner.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut count = 0;
        for (&node, pool) in &inner.pools {
            for tid in pool.tids() {
                if self.shared.pin(tid, node) {
                    count += 1;
                }
            }
        }
        count
    }

    /// Nodes that have a pool, ascending.
    pub fn pool_nodes(&self) -> Vec<u32> {
        match self.inner.read() {
            Ok(g) => g.pools.keys().copied().collect(),
            Err(p) => p.into_inner().pools.keys().copied().collect(),
        }
    }

    /// Thread ids of the workers of `node`'s pool (for diagnostics: their affinity and the
    /// CPU they last ran on can be read by tid).
    pub fn thread_ids(&self, node: u32) -> Vec<i32> {
        let inner = match self.inner.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        inner.pools.get(&node).map(Pool::tids).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::NumaNode;

    /// This machine as a topology (one node), plus a node 7 without CPUs or memory whose
    /// work must be served by the real node.
    fn local_topology() -> Topology {
        let mut t = nodes::this_machine();
        let home = t.nodes[0].node_id;
        t.nodes[0].distances.insert(7, 40);
        t.nodes.push(NumaNode {
            node_id: 7,
            cpus: vec![],
            allowed_cpus: vec![],
            memory_total_bytes: 0,
            memory_free_bytes: 0,
            has_cpu: false,
            has_memory: false,
            allowed: false,
            distances: [(home, 40), (7, 10)].into(),
            kind: Default::default(),
        });
        t
    }

    /// Work for an entry on a GPU memory node (named explicitly) binds to that node; work
    /// for the other nodes never does.
    #[test]
    fn a_named_gpu_memory_node_gets_its_own_memory_policy() {
        let mut t = local_topology();
        let home = t.nodes[0].node_id;
        let gpu = t.nodes.iter_mut().find(|n| n.node_id == 7).unwrap();
        gpu.kind = crate::topology::NodeKind::Gpu;
        gpu.has_memory = true;
        gpu.memory_total_bytes = 16 << 30;
        gpu.allowed = true;
        let pools = NodePools::start(&t, &StrategyConfig::default());
        assert_eq!(
            pools.shared.mempolicy_for(7),
            (MemPolicyMode::Bind, vec![7])
        );
        assert_eq!(
            pools.shared.mempolicy_for(home),
            (MemPolicyMode::Bind, vec![home])
        );
        assert_eq!(
            pools.serving_node(7),
            home,
            "no CPUs: served by the nearest pool"
        );
    }

    #[test]
    fn workers_run_pinned_under_the_strategy_policy() {
        let t = local_topology();
        let home = t.nodes[0].node_id;
        let pools = NodePools::start(&t, &StrategyConfig::default());
        assert_eq!(
            pools.serving_node(7),
            home,
            "CPU-less node served by nearest"
        );
        let (affinity, mpol, cpu) = pools.run(home, || {
            (
                policy::get_affinity(0).unwrap(),
                policy::get_mempolicy().unwrap(),
                policy::getcpu().unwrap().0,
            )
        });
        assert_eq!(affinity, t.nodes[0].allowed_cpus);
        assert_eq!(mpol, (MemPolicyMode::Bind, vec![home]));
        assert!(t.nodes[0].allowed_cpus.contains(&cpu));

        // Pages allocated by a job land on the node (move_pages says so).
        let status = pools.run(home, || {
            let mut buf = policy::AnonPages::new(8).unwrap();
            buf.touch();
            policy::page_nodes(0, &buf.page_addrs()).unwrap()
        });
        assert_eq!(status, vec![home as i32; 8]);

        // Switching strategy re-applies every worker.
        let threads = pools.thread_ids(home).len();
        let cfg = StrategyConfig {
            strategy: Strategy::Disabled,
            ..StrategyConfig::default()
        };
        assert_eq!(pools.apply(&cfg), threads);
        let mpol = pools.run(home, || policy::get_mempolicy().unwrap());
        assert_eq!(mpol.0, MemPolicyMode::Default);
    }

    #[test]
    fn untrusted_numa_data_means_unpinned_workers_with_the_default_policy() {
        let mut t = local_topology();
        let home = t.nodes[0].node_id;
        let all = t.allowed_cpus.clone();
        t.nodes[0].allowed_cpus = vec![all[0]];
        t.numa_available = false;
        let pools = NodePools::start(&t, &StrategyConfig::default());
        let (affinity, mpol) = pools.run(home, || {
            (
                policy::get_affinity(0).unwrap(),
                policy::get_mempolicy().unwrap(),
            )
        });
        assert_eq!(affinity, all);
        assert_eq!(mpol.0, MemPolicyMode::Default);
    }

    #[test]
    fn a_panicking_job_reaches_the_caller_and_the_pool_survives() {
        let t = local_topology();
        let home = t.nodes[0].node_id;
        let pools = NodePools::start(&t, &StrategyConfig::default());
        let r = catch_unwind(AssertUnwindSafe(|| pools.run(home, || panic!("boom"))));
        assert!(r.is_err());
        assert_eq!(pools.run(home, || 41 + 1), 42);
    }

    #[test]
    fn update_repins_to_the_new_cpu_set() {
        let mut t = local_topology();
        let home = t.nodes[0].node_id;
        let pools = NodePools::start(&t, &StrategyConfig::default());
        let one = *t.nodes[0].allowed_cpus.last().unwrap();
        t.nodes[0].allowed_cpus = vec![one];
        assert!(pools.update(&t) >= 1);
        for tid in pools.thread_ids(home) {
            assert_eq!(policy::get_affinity(tid).unwrap(), vec![one]);
        }
        assert_eq!(pools.run(home, || policy::getcpu().unwrap().0), one);
    }

    #[test]
    fn pinning_the_host_refuses_degrades_to_unpinned_workers() {
        let mut t = local_topology();
        let home = t.nodes[0].node_id;
        // CPU 4000 does not exist here: the kernel refuses the mask, the pool goes on.
        t.nodes[0].allowed_cpus = vec![4000];
        let pools = NodePools::start(&t, &StrategyConfig::default());
        assert_eq!(
            pools.apply(&StrategyConfig::default()),
            0,
            "no thread could be pinned"
        );
        let (cpu, _) = pools.run(home, || policy::getcpu().unwrap());
        assert!(policy::get_affinity(0).unwrap().contains(&cpu));
    }

    #[test]
    fn a_node_gaining_cpus_gets_a_pool_and_losing_them_hands_over_to_the_nearest() {
        let mut t = local_topology();
        let home = t.nodes[0].node_id;
        let pools = NodePools::start(&t, &StrategyConfig::default());
        assert_eq!(pools.pool_nodes(), vec![home]);
        // Node 7 comes online with one of our CPUs (and still no memory).
        let cpu = t.allowed_cpus[0];
        t.nodes[1].cpus = vec![cpu];
        t.nodes[1].allowed_cpus = vec![cpu];
        t.nodes[1].has_cpu = true;
        pools.update(&t);
        assert_eq!(pools.pool_nodes(), vec![home, 7]);
        assert_eq!(pools.serving_node(7), 7);
        let (ran_on, mpol) = pools.run(7, || {
            (
                policy::getcpu().unwrap().0,
                policy::get_mempolicy().unwrap(),
            )
        });
        assert_eq!(ran_on, cpu);
        // Node 7 has no memory: its work allocates on the nearest node with memory.
        assert_eq!(mpol, (MemPolicyMode::Bind, vec![home]));
        // Its CPU goes away again: the pool stops, the nearest node serves it.
        t.nodes[1].cpus.clear();
        t.nodes[1].allowed_cpus.clear();
        t.nodes[1].has_cpu = false;
        pools.update(&t);
        assert_eq!(pools.pool_nodes(), vec![home]);
        assert_eq!(pools.serving_node(7), home);
        assert_eq!(pools.run(7, || 7), 7);
    }
}

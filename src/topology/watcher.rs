//! The hotplug watcher: uevents for cpu, memory and node changes, a periodic re-scan as a
//! fallback (a container with its own network namespace gets no uevents), bursts debounced,
//! and a new topology generation published to listeners only when something changed.

use crate::policy::UeventSocket;
use crate::topology::Topology;
use event_listener::{Event, EventListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Quiet time after a uevent before re-scanning: onlining a node's CPUs and memory is a
/// burst of dozens of events, one re-scan covers them all.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// How long one wait on the socket (or the stop flag) lasts.
const TICK: Duration = Duration::from_millis(100);

struct Shared {
    fs_root: PathBuf,
    current: RwLock<Arc<Topology>>,
    generation: AtomicU64,
    uevents_seen: AtomicU64,
    changed: Event,
    stop: AtomicBool,
    /// Serialises re-scans: the watcher thread and `refresh()` must not both publish.
    scanning: Mutex<()>,
}

impl Shared {
    fn current(&self) -> Arc<Topology> {
        match self.current.read() {
            Ok(t) => Arc::clone(&t),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Re-read the topology; publish a new generation when it differs. True if it did.
    fn rescan(&self) -> bool {
        let _one_at_a_time = match self.scanning.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let fresh = scan(&self.fs_root);
        // MemFree moves all the time: it is not a topology change.
        let same = {
            let cur = self.current();
            strip_volatile(&cur) == strip_volatile(&fresh)
        };
        if same {
            return false;
        }
        match self.current.write() {
            Ok(mut t) => *t = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!("NUMA topology changed: generation {generation}");
        self.changed.notify(usize::MAX);
        true
    }
}

fn strip_volatile(t: &Topology) -> Topology {
    let mut t = t.clone();
    for n in &mut t.nodes {
        n.memory_free_bytes = 0;
    }
    t
}

/// Watches the machine's NUMA topology and publishes each change as a new generation.
///
/// Dropping it stops its thread.
pub struct TopologyWatcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    uevents: bool,
}

impl TopologyWatcher {
    /// Read the topology under `fs_root` now (generation 1) and watch it: uevents when
    /// `fs_root` is `/` and the kernel delivers them here, plus a re-scan every
    /// `rescan_interval` in any case.
    pub fn start(fs_root: impl Into<PathBuf>, rescan_interval: Duration) -> TopologyWatcher {
        let fs_root = fs_root.into();
        let first = scan(&fs_root);
        let socket = if fs_root == Path::new("/") {
            match UeventSocket::open() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::info!(
                        "no hotplug notifications ({e}); re-scanning the topology every {} s",
                        rescan_interval.as_secs()
                    );
                    None
                }
            }
        } else {
            None
        };
        let uevents = socket.is_some();
        let shared = Arc::new(Shared {
            fs_root,
            current: RwLock::new(Arc::new(first)),
            generation: AtomicU64::new(1),
            uevents_seen: AtomicU64::new(0),
            changed: Event::new(),
            stop: AtomicBool::new(false),
            scanning: Mutex::new(()),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("topology-watch".into())
            .spawn(move || watch(&worker, socket, rescan_interval.max(TICK)))
            .map_err(|e| tracing::error!("cannot start the topology watcher thread: {e}"))
            .ok();
        TopologyWatcher {
            shared,
            thread,
            uevents,
        }
    }

    /// The topology as of the latest generation.
    pub fn current(&self) -> Arc<Topology> {
        self.shared.current()
    }

    /// The generation: 1 at start, bumped once per change.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// A listener notified at the next new generation. Take it before reading
    /// `generation()` so no change can slip between the two.
    pub fn listen(&self) -> EventListener {
        self.shared.changed.listen()
    }

    /// Re-scan now (D-Bus `Refresh()`); true when a new generation was published.
    pub fn refresh(&self) -> bool {
        self.shared.rescan()
    }

    /// True when hotplug uevents are being received (else only the periodic re-scan runs).
    pub fn uevents_enabled(&self) -> bool {
        self.uevents
    }

    /// How many relevant (cpu, memory, node) uevents arrived so far.
    pub fn uevents_seen(&self) -> u64 {
        self.shared.uevents_seen.load(Ordering::Relaxed)
    }
}

impl Drop for TopologyWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, mut socket: Option<UeventSocket>, rescan_interval: Duration) {
    let mut next_rescan = Instant::now() + rescan_interval;
    let mut pending: Option<Instant> = None;
    while !shared.stop.load(Ordering::Acquire) {
        match socket.as_ref().map(|s| s.recv_timeout(TICK)) {
            Some(Ok(Some(ev))) if matches!(ev.subsystem.as_str(), "cpu" | "memory" | "node") => {
                shared.uevents_seen.fetch_add(1, Ordering::Relaxed);
                pending = Some(Instant::now() + DEBOUNCE);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(
                    "hotplug notifications failed ({e}); re-scanning every {} s instead",
                    rescan_interval.as_secs()
                );
                socket = None;
            }
            None => std::thread::sleep(TICK),
        }
        let now = Instant::now();
        if pending.is_some_and(|at| now >= at) || now >= next_rescan {
            pending = None;
            next_rescan = now + rescan_interval;
            shared.rescan();
        }
    }
}

/// Read the topology under `fs_root`: the live machine (`/`) with this thread's affinity
/// applied, a captured tree as it is.
pub(crate) fn scan(fs_root: &Path) -> Topology {
    if fs_root == Path::new("/") {
        super::detect_live()
    } else {
        super::detect(fs_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_listener::Listener;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn two_nodes(root: &Path, node1_cpus: &str) {
        for (n, cpus) in [(0, "0-1"), (1, node1_cpus)] {
            let d = format!("sys/devices/system/node/node{n}");
            write(root, &format!("{d}/cpulist"), &format!("{cpus}\n"));
            write(
                root,
                &format!("{d}/meminfo"),
                &format!(
                    "Node {n} MemTotal: 1048576 kB\nNode {n} MemFree: {} kB\n",
                    1000 + n
                ),
            );
            write(
                root,
                &format!("{d}/distance"),
                if n == 0 { "10 21\n" } else { "21 10\n" },
            );
        }
    }

    #[test]
    fn a_cpu_going_offline_is_a_new_generation_and_memfree_is_not() {
        let dir = tempfile::tempdir().unwrap();
        two_nodes(dir.path(), "2-3");
        let w = TopologyWatcher::start(dir.path(), Duration::from_millis(100));
        assert_eq!(w.generation(), 1);
        let t = w.current();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[1].cpus, vec![2, 3]);
        assert_eq!(t.nodes[1].distances.get(&0), Some(&21));

        // MemFree changes only: no new generation.
        write(
            dir.path(),
            "sys/devices/system/node/node1/meminfo",
            "Node 1 MemTotal: 1048576 kB\nNode 1 MemFree: 5 kB\n",
        );
        assert!(!w.refresh());
        assert_eq!(w.generation(), 1);

        let listener = w.listen();
        two_nodes(dir.path(), "2");
        assert!(
            listener.wait_timeout(Duration::from_secs(5)).is_some(),
            "the re-scan published no generation"
        );
        assert_eq!(w.generation(), 2);
        assert_eq!(w.current().nodes[1].cpus, vec![2]);
    }

    #[test]
    fn the_live_machine_scans_with_allowed_sets() {
        let t = scan(Path::new("/"));
        assert!(!t.nodes.is_empty());
        assert!(!t.allowed_cpus.is_empty());
        let (cpu, _) = crate::policy::getcpu().unwrap();
        assert!(t.allowed_cpus.contains(&cpu));
    }
}

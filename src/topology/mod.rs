//! The NUMA topology: read from sysfs/procfs under a filesystem root, limited by the
//! process's cpuset (and, live, its affinity), and watched for hotplug. Detection never
//! fails: what cannot be trusted becomes a warning, and `numa_available` says whether
//! placement may rely on the result.

mod affinity;
pub mod cpulist;
mod cpuset;
mod detect;
pub mod distance;
pub mod meminfo;
mod model;
mod reader;
pub mod synthetic;
pub mod watcher;

pub use cpulist::{CpuListError, format_cpulist, parse_cpulist, parse_cpumap};
pub use distance::{DistanceError, parse_distance_row};
pub use meminfo::{MemInfo, MeminfoError, parse_meminfo};
pub use model::{NodeKind, NumaNode, Topology};

use std::path::Path;

/// Read the topology of the captured (or live) tree under `fs_root`: `fs_root/sys`,
/// `fs_root/proc`, `fs_root/dev/cpuset` and the cgroup mounts `fs_root/proc/mounts` names.
/// The calling thread's affinity is not consulted (the tree may be another machine's).
pub fn detect(fs_root: &Path) -> Topology {
    detect::detect_with(fs_root, None)
}

/// Read this machine's topology (`/`), with the allowed CPUs further limited by the calling
/// thread's `sched_getaffinity`.
pub fn detect_live() -> Topology {
    match affinity::current_affinity() {
        Ok(cpus) => detect::detect_with(Path::new("/"), Some(&cpus)),
        Err(e) => {
            let mut t = detect::detect_with(Path::new("/"), None);
            t.warnings.push(format!(
                "sched_getaffinity failed ({e}); allowed CPUs come from the cpuset alone"
            ));
            t
        }
    }
}

/// The strategy that suits this topology, by name (`placement::optimal_strategy` turns it
/// into a `placement::Strategy`; topology does not depend on placement).
///
/// - `disabled` when `numa_available` is false: the data cannot be trusted for placement.
/// - One allowed node with memory: `local_node`. Every strategy then puts everything on
///   that node, so none is measurably better; `local_node` costs nothing here (binding to
///   the only node is a no-op, workers may use every allowed CPU) and stays right if
///   hotplug later adds a node (CXL or HBM memory), whereas `disabled` would claim NUMA
///   placement is broken on a healthy machine.
/// - Several nodes, at least one allowed node with both allowed CPUs and memory:
///   `local_node`, which keeps each caller's data on the node its workers run on.
/// - Several nodes but none with both allowed CPUs and memory (CPUs on memory-less nodes,
///   memory on CPU-less ones): `interleave`, since no placement is local anyway and
///   spreading uses every node's bandwidth.
pub fn optimal_strategy(topology: &Topology) -> SuggestedStrategy {
    if !topology.numa_available {
        return SuggestedStrategy::Disabled;
    }
    let local = topology
        .nodes
        .iter()
        .any(|n| n.allowed && n.has_memory && !n.allowed_cpus.is_empty());
    if local {
        SuggestedStrategy::LocalNode
    } else {
        SuggestedStrategy::Interleave
    }
}

/// The placement strategy a topology calls for: the three of `placement::Strategy` that
/// [`optimal_strategy`] can suggest, spelled the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuggestedStrategy {
    /// `local_node`.
    LocalNode,
    /// `interleave`.
    Interleave,
    /// `disabled`.
    Disabled,
}

impl SuggestedStrategy {
    /// The strategy's public name.
    pub fn as_str(self) -> &'static str {
        match self {
            SuggestedStrategy::LocalNode => "local_node",
            SuggestedStrategy::Interleave => "interleave",
            SuggestedStrategy::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for SuggestedStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

//! The NUMA topology: read from sysfs/procfs under a filesystem root, limited by the
//! process's cpuset, and watched for hotplug.

mod model;
pub mod watcher;

pub use model::{NumaNode, Topology};

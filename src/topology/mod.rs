//! The NUMA topology: read from sysfs/procfs under a filesystem root, limited by the
//! process's cpuset, and watched for hotplug.

mod model;

pub use model::{NumaNode, Topology};

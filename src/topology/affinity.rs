//! The calling thread's CPU affinity (`sched_getaffinity`), the live system's last limit on
//! where workers may run, on top of the cpuset. The syscall lives in `policy` (the one place
//! for placement syscalls); this is detection's name for it.

use crate::policy::{self, PolicyError};

/// The CPUs the calling thread may run on, ascending (masks sized for the machine, so more
/// than 1024 CPUs are read whole).
pub(crate) fn current_affinity() -> Result<Vec<u32>, PolicyError> {
    policy::get_affinity(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_is_what_the_kernel_reports_in_proc_status() {
        let cpus = current_affinity().unwrap();
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        let expected = crate::topology::cpulist::parse_cpulist(line.trim()).unwrap();
        assert_eq!(cpus, expected);
    }
}

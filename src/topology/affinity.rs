//! The calling thread's CPU affinity (`sched_getaffinity`), the live system's last limit on
//! where workers may run, on top of the cpuset.

use std::io;

/// The CPUs the calling thread may run on, ascending. Grows the mask until the kernel's
/// `nr_cpu_ids` fits, so machines with more than 1024 CPUs are read whole.
pub(crate) fn current_affinity() -> io::Result<Vec<u32>> {
    let word_bits = 8 * std::mem::size_of::<libc::c_ulong>();
    let mut words = 1024 / word_bits;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        let bytes = words * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: `mask` is a live, writable buffer of exactly `bytes` bytes; pid 0 means the
        // calling thread; the raw syscall writes at most `bytes` bytes and returns how many.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0 as libc::pid_t,
                bytes,
                mask.as_mut_ptr(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // EINVAL: the mask is smaller than the kernel's CPU count; try a bigger one.
            if err.raw_os_error() == Some(libc::EINVAL) && words < (1 << 16) / word_bits {
                words *= 4;
                continue;
            }
            return Err(err);
        }
        let written = (rc as usize / std::mem::size_of::<libc::c_ulong>()).min(words);
        let mut cpus = Vec::new();
        for (i, &word) in mask[..written].iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                cpus.push((i * word_bits) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        return Ok(cpus);
    }
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

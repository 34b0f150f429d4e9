//! CPU affinity of a thread or of every thread of a process, and `getcpu`, by raw syscalls
//! with masks sized for the machine.

use super::error::{PolicyError, id_list};
use super::mask::Bitmask;
use super::privilege;
use std::collections::BTreeSet;
use std::io;

/// The thread id of the calling thread.
pub fn current_tid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// How many CPU ids the kernel may use (from `/sys/devices/system/cpu/possible`), at least
/// 64; the starting size of affinity masks.
pub fn possible_cpu_bits() -> usize {
    static BITS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BITS.get_or_init(read_possible_cpu_bits)
}

fn read_possible_cpu_bits() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.trim().parse::<usize>().ok())
                .max()
        })
        .map(|max| max + 1)
        .unwrap_or(1024)
        .max(64)
}

/// Pin thread `tid` (0: the calling thread) to `cpus`.
///
/// The mask is as large as the largest CPU id, so ids above 1023 work. Fails with
/// `InvalidArgument` for an empty set, `NoSuchProcess` for an unknown tid and
/// `MissingCapability` when another user's thread needs CAP_SYS_NICE.
pub fn set_affinity(tid: i32, cpus: &[u32]) -> Result<(), PolicyError> {
    if cpus.is_empty() {
        return Err(PolicyError::InvalidArgument {
            what: "CPU set",
            reason: "it is empty; give at least one allowed CPU".into(),
        });
    }
    let mask = Bitmask::from_ids(cpus);
    // SAFETY: the pointer and length describe `mask`'s live buffer; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid as libc::pid_t,
            mask.byte_len(),
            mask.as_ptr(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        return Err(PolicyError::InvalidArgument {
            what: "CPU set",
            reason: format!(
                "none of CPUs {} is online and allowed by this process's cpuset",
                id_list(cpus)
            ),
        });
    }
    Err(PolicyError::from_errno(
        "sched_setaffinity",
        tid,
        err,
        &format!("pinning thread {tid}"),
    ))
}

/// The CPUs thread `tid` (0: the calling thread) may run on, ascending.
pub fn get_affinity(tid: i32) -> Result<Vec<u32>, PolicyError> {
    let mut bits = possible_cpu_bits();
    loop {
        let mut mask = Bitmask::with_bits(bits);
        // SAFETY: the pointer and length describe `mask`'s live, writable buffer; the kernel
        // writes at most that many bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                tid as libc::pid_t,
                mask.byte_len(),
                mask.as_mut_ptr(),
            )
        };
        if rc >= 0 {
            return Ok(mask.ids());
        }
        let err = io::Error::last_os_error();
        // EINVAL: the mask is smaller than the kernel's nr_cpu_ids; grow and retry.
        if err.raw_os_error() == Some(libc::EINVAL) && bits < (1 << 22) {
            bits *= 2;
            continue;
        }
        return Err(PolicyError::from_errno(
            "sched_getaffinity",
            tid,
            err,
            &format!("reading the affinity of thread {tid}"),
        ));
    }
}

/// The thread ids of process `pid`, from `/proc/PID/task`.
pub fn task_ids(pid: i32) -> Result<Vec<i32>, PolicyError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PolicyError::NoSuchProcess { pid }
        } else {
            PolicyError::Syscall {
                call: "open /proc/PID/task",
                source: e,
            }
        }
    })?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Pin every thread of process `pid` to `cpus`; returns how many threads were pinned.
///
/// Threads created while this runs are caught by a second pass over `/proc/PID/task`;
/// threads that exit meanwhile are skipped. Another user's process needs CAP_SYS_NICE.
pub fn set_process_affinity(pid: i32, cpus: &[u32]) -> Result<usize, PolicyError> {
    privilege::check_other_process(pid, "pinning the threads of another process")?;
    let mut done = BTreeSet::new();
    for _pass in 0..3 {
        let tids = task_ids(pid)?;
        let new: Vec<i32> = tids.into_iter().filter(|t| !done.contains(t)).collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            match set_affinity(tid, cpus) {
                Ok(()) => {
                    done.insert(tid);
                }
                // The thread exited between listing and pinning.
                Err(PolicyError::NoSuchProcess { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if done.is_empty() {
        return Err(PolicyError::NoSuchProcess { pid });
    }
    Ok(done.len())
}

/// The CPU and node the calling thread is running on now.
pub fn getcpu() -> Result<(u32, u32), PolicyError> {
    let mut cpu: libc::c_uint = 0;
    let mut node: libc::c_uint = 0;
    // SAFETY: both pointers are to live locals; the third argument (tcache) may be NULL.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut libc::c_uint,
            &mut node as *mut libc::c_uint,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc != 0 {
        return Err(PolicyError::Syscall {
            call: "getcpu",
            source: io::Error::last_os_error(),
        });
    }
    Ok((cpu, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_round_trips_on_a_thread() {
        let allowed = get_affinity(0).unwrap();
        assert!(!allowed.is_empty());
        let target = *allowed.last().unwrap();
        let seen = std::thread::spawn(move || {
            set_affinity(0, &[target]).unwrap();
            let after = get_affinity(0).unwrap();
            let (cpu, _) = getcpu().unwrap();
            (after, cpu)
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, vec![target]);
        assert_eq!(seen.1, target, "getcpu after pinning");
    }

    #[test]
    fn getcpu_is_in_the_allowed_set() {
        let allowed = get_affinity(0).unwrap();
        let (cpu, _node) = getcpu().unwrap();
        assert!(allowed.contains(&cpu), "cpu {cpu} not in {allowed:?}");
    }

    #[test]
    fn an_unknown_pid_is_a_typed_error_naming_it() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let pid = 4_194_304 + 17;
        let e = set_process_affinity(pid, &[0]).unwrap_err();
        assert!(
            matches!(e, PolicyError::NoSuchProcess { pid: p } if p == pid),
            "{e:?}"
        );
        assert!(e.to_string().contains(&pid.to_string()));
        let e = set_affinity(pid, &[0]).unwrap_err();
        assert!(matches!(e, PolicyError::NoSuchProcess { .. }), "{e:?}");
    }

    #[test]
    fn an_empty_or_impossible_cpu_set_is_refused() {
        assert!(matches!(
            set_affinity(0, &[]),
            Err(PolicyError::InvalidArgument { .. })
        ));
        // CPU 5000 does not exist here; the 5001-bit mask itself is accepted by the kernel.
        let e = std::thread::spawn(|| set_affinity(0, &[5000]))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("5000"), "{e}");
    }
}

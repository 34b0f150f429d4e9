//! Where pages are and moving them: `move_pages` (query or move), `migrate_pages` for a whole
//! process, `/proc/PID/numa_maps` totals, and anonymous page buffers to test placement with.

use super::error::{PolicyError, id_list};
use super::mask::Bitmask;
use super::privilege;
use std::collections::BTreeMap;
use std::io;

/// An anonymous private mapping of whole pages, unmapped on drop. Used to check placement:
/// set a policy, touch the pages, ask `page_nodes` where they landed.
pub struct AnonPages {
    addr: *mut libc::c_void,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it between threads is sound.
unsafe impl Send for AnonPages {}

impl AnonPages {
    /// Map `count` pages (not yet backed by memory until touched).
    pub fn new(count: usize) -> Result<AnonPages, PolicyError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = count.max(1) * page;
        // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing
        // memory.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(PolicyError::Syscall {
                call: "mmap",
                source: io::Error::last_os_error(),
            });
        }
        Ok(AnonPages { addr, len, page })
    }

    /// The first address (page aligned).
    pub fn addr(&self) -> usize {
        self.addr as usize
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: at least one page is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of every page.
    pub fn page_addrs(&self) -> Vec<usize> {
        (0..self.len / self.page)
            .map(|i| self.addr() + i * self.page)
            .collect()
    }

    /// Write every page so the kernel allocates it under the current policy.
    pub fn touch(&mut self) {
        for a in self.page_addrs() {
            // SAFETY: `a` lies inside this live, writable mapping.
            unsafe { std::ptr::write_volatile(a as *mut u8, 1) };
        }
    }
}

impl Drop for AnonPages {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly the mapping made in `new`, unmapped only here.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

fn move_pages_raw(
    pid: i32,
    addrs: &[usize],
    nodes: Option<&[libc::c_int]>,
    flags: libc::c_int,
) -> Result<Vec<i32>, PolicyError> {
    if pid != 0 {
        privilege::check_other_process(pid, "moving or querying another process's pages")?;
    }
    let ptrs: Vec<*mut libc::c_void> = addrs.iter().map(|&a| a as *mut libc::c_void).collect();
    let mut status: Vec<libc::c_int> = vec![0; addrs.len()];
    let nodes_ptr = nodes.map_or(std::ptr::null(), |n| n.as_ptr());
    // SAFETY: `ptrs`, `nodes` (or NULL) and `status` are live buffers of `addrs.len()` entries;
    // the kernel reads the first two and writes `status`. The addresses are only looked up.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            pid as libc::pid_t,
            addrs.len() as libc::c_ulong,
            ptrs.as_ptr(),
            nodes_ptr,
            status.as_mut_ptr(),
            flags,
        )
    };
    if rc < 0 {
        return Err(PolicyError::from_errno(
            "move_pages",
            pid,
            io::Error::last_os_error(),
            &format!("moving the pages of pid {pid}"),
        ));
    }
    Ok(status)
}

/// Where each page of process `pid` (0: this process) is: the node number, or a negative
/// errno (`-ENOENT` for a page not present, `-EFAULT` for an unmapped address).
pub fn page_nodes(pid: i32, addrs: &[usize]) -> Result<Vec<i32>, PolicyError> {
    move_pages_raw(pid, addrs, None, 0)
}

/// Move the pages at `addrs` of process `pid` (0: this process) to `node`; returns each
/// page's node afterwards or a negative errno.
pub fn move_pages_to(pid: i32, addrs: &[usize], node: u32) -> Result<Vec<i32>, PolicyError> {
    const MPOL_MF_MOVE: libc::c_int = 2;
    let nodes = vec![node as libc::c_int; addrs.len()];
    move_pages_raw(pid, addrs, Some(&nodes), MPOL_MF_MOVE)
}

/// Move the pages of process `pid` that are on `from` nodes to the `to` nodes; returns how
/// many pages could not be moved. Another user's process needs CAP_SYS_NICE.
pub fn migrate_pages(pid: i32, from: &[u32], to: &[u32]) -> Result<u64, PolicyError> {
    privilege::check_other_process(pid, "migrating another process's pages")?;
    if from.is_empty() || to.is_empty() {
        return Err(PolicyError::InvalidArgument {
            what: "node set",
            reason: format!(
                "migrate_pages needs source and target nodes (got from {} to {})",
                id_list(from),
                id_list(to)
            ),
        });
    }
    let mut old = Bitmask::from_ids(from);
    let mut new = Bitmask::from_ids(to);
    // Both masks are read with the same maxnode: size them alike.
    let bits = old.bits().max(new.bits());
    for m in [&mut old, &mut new] {
        let ids = m.ids();
        *m = Bitmask::with_bits(bits);
        for id in ids {
            m.set(id);
        }
    }
    // SAFETY: both masks are live buffers of `bits` bits; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_migrate_pages,
            pid as libc::pid_t,
            bits as libc::c_ulong + 1,
            old.as_ptr(),
            new.as_ptr(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) {
            return Err(PolicyError::InvalidArgument {
                what: "node set",
                reason: format!(
                    "the kernel refused to migrate from nodes {} to {} (a target without memory or outside the cpuset)",
                    id_list(from),
                    id_list(to)
                ),
            });
        }
        if err.raw_os_error() == Some(libc::EPERM) && privilege::has_sys_nice() {
            // With CAP_SYS_NICE held, EPERM is the kernel's ptrace read-access check.
            return Err(ptrace_denied(pid, "migrating the pages of"));
        }
        return Err(PolicyError::from_errno(
            "migrate_pages",
            pid,
            err,
            &format!("migrating the pages of pid {pid}"),
        ));
    }
    Ok(rc as u64)
}

/// The capability the kernel asks for before it shows another process's memory map or
/// migrates its pages (ptrace read access): needed for another user's process and for a
/// process holding capabilities this one lacks.
const CAP_SYS_PTRACE: &str = "CAP_SYS_PTRACE";

/// The privilege error for a refused ptrace read-access check on `pid`.
fn ptrace_denied(pid: i32, doing: &str) -> PolicyError {
    PolicyError::MissingCapability {
        capability: CAP_SYS_PTRACE,
        action: format!(
            "{doing} pid {pid} (the kernel checks ptrace read access: another user's process, or one holding capabilities this process lacks)"
        ),
    }
}

/// Resident pages of process `pid` per node, summed over `/proc/PID/numa_maps`.
pub fn process_pages_per_node(pid: i32) -> Result<BTreeMap<u32, u64>, PolicyError> {
    let path = format!("/proc/{pid}/numa_maps");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.raw_os_error() {
        _ if e.kind() == io::ErrorKind::NotFound => PolicyError::NoSuchProcess { pid },
        Some(libc::ESRCH) => PolicyError::NoSuchProcess { pid },
        Some(libc::EACCES) | Some(libc::EPERM) => ptrace_denied(pid, &format!("reading {path} of")),
        _ => PolicyError::Syscall {
            call: "read numa_maps",
            source: io::Error::new(e.kind(), format!("{path}: {e}")),
        },
    })?;
    let mut per_node = BTreeMap::new();
    for field in text.split_whitespace() {
        if let Some(rest) = field.strip_prefix('N')
            && let Some((node, count)) = rest.split_once('=')
            && let (Ok(node), Ok(count)) = (node.parse::<u32>(), count.parse::<u64>())
        {
            *per_node.entry(node).or_insert(0) += count;
        }
    }
    Ok(per_node)
}

#[cfg(test)]
mod tests {
    use super::super::{MemPolicyMode, MoveFlags, mbind, mems_allowed};
    use super::*;

    #[test]
    fn mbind_then_move_pages_reports_the_bound_node() {
        let node = mems_allowed().unwrap()[0];
        let mut buf = AnonPages::new(16).unwrap();
        mbind(
            buf.addr(),
            buf.len(),
            MemPolicyMode::Bind,
            &[node],
            MoveFlags::MOVE,
        )
        .unwrap();
        buf.touch();
        let status = page_nodes(0, &buf.page_addrs()).unwrap();
        assert_eq!(status, vec![node as i32; 16]);
        let moved = move_pages_to(0, &buf.page_addrs(), node).unwrap();
        assert_eq!(moved, vec![node as i32; 16]);
    }

    #[test]
    fn untouched_pages_are_reported_absent() {
        let buf = AnonPages::new(2).unwrap();
        let status = page_nodes(0, &buf.page_addrs()).unwrap();
        assert_eq!(status, vec![-libc::ENOENT; 2]);
    }

    /// The privilege error names the capability and the real pid (it once said "PID").
    #[test]
    fn a_refused_ptrace_check_names_cap_sys_ptrace_and_the_pid() {
        let e = ptrace_denied(4242, "reading /proc/4242/numa_maps of");
        assert!(matches!(
            e,
            PolicyError::MissingCapability {
                capability: "CAP_SYS_PTRACE",
                ..
            }
        ));
        let msg = e.to_string();
        assert!(msg.contains("pid 4242 "), "{msg}");
        assert!(msg.contains("CAP_SYS_PTRACE"), "{msg}");
        assert!(!msg.contains("PID"), "{msg}");
    }

    /// Capabilities are per thread: drop CAP_SYS_PTRACE on a test thread only, then read the
    /// memory map of (and migrate) a process of another user (started as `nobody`). A stock
    /// kernel refuses both (the systemd lab sees it under Debian's kernel); the error must
    /// name CAP_SYS_PTRACE and the real pid. Some sandbox kernels grant the access anyway:
    /// then the calls must succeed, which is checked too.
    #[test]
    fn another_users_memory_map_without_cap_sys_ptrace() {
        use caps::{CapSet, Capability};
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            crate::policy::error::test_skip("needs root to start a process as another user");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let nodes = mems_allowed().unwrap();
        let (read, migrated) = std::thread::spawn(move || {
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_PTRACE).unwrap();
            (
                process_pages_per_node(pid),
                migrate_pages(pid, &nodes, &nodes[..1]),
            )
        })
        .join()
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        match (read, migrated) {
            (Ok(pages), Ok(_)) => {
                eprintln!("this kernel grants ptrace read access without CAP_SYS_PTRACE");
                assert!(!pages.is_empty(), "numa_maps of pid {pid} read as empty");
            }
            (read, migrated) => {
                for e in [read.err(), migrated.err()].into_iter().flatten() {
                    assert!(
                        matches!(
                            e,
                            PolicyError::MissingCapability {
                                capability: "CAP_SYS_PTRACE",
                                ..
                            }
                        ),
                        "{e:?}"
                    );
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("pid {pid} ")), "{msg}");
                }
            }
        }
    }

    #[test]
    fn migrate_pages_of_self_and_of_a_missing_pid() {
        let nodes = mems_allowed().unwrap();
        let me = std::process::id() as i32;
        assert_eq!(migrate_pages(me, &nodes, &nodes[..1]).unwrap(), 0);
        let e = migrate_pages(4_194_321, &nodes, &nodes[..1]).unwrap_err();
        assert!(e.to_string().contains("4194321"), "{e}");
        let per_node = process_pages_per_node(me).unwrap();
        assert!(per_node.get(&nodes[0]).copied().unwrap_or(0) > 0);
    }
}

//! Memory policy: `set_mempolicy` for the calling thread, `mbind` for a range, and the
//! kernel's answers (`get_mempolicy`), with support for the newer modes detected at run time.

use super::error::{PolicyError, id_list};
use super::mask::Bitmask;
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

/// A kernel memory policy mode (`MPOL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemPolicyMode {
    /// MPOL_DEFAULT: the process policy or local allocation.
    Default,
    /// MPOL_PREFERRED: try the one node, fall back to others.
    Preferred,
    /// MPOL_BIND: only the given nodes.
    Bind,
    /// MPOL_INTERLEAVE: page by page over the nodes.
    Interleave,
    /// MPOL_LOCAL: the node of the CPU that faults the page in.
    Local,
    /// MPOL_PREFERRED_MANY (Linux 5.15+): try any of the nodes, then fall back.
    PreferredMany,
    /// MPOL_WEIGHTED_INTERLEAVE (Linux 6.9+): interleave by the weights in sysfs.
    WeightedInterleave,
}

impl MemPolicyMode {
    /// The kernel's number for the mode.
    pub fn raw(self) -> i32 {
        match self {
            MemPolicyMode::Default => 0,
            MemPolicyMode::Preferred => 1,
            MemPolicyMode::Bind => 2,
            MemPolicyMode::Interleave => 3,
            MemPolicyMode::Local => 4,
            MemPolicyMode::PreferredMany => 5,
            MemPolicyMode::WeightedInterleave => 6,
        }
    }

    /// The mode for a kernel number (flags in the high bits are ignored).
    pub fn from_raw(raw: i32) -> Option<MemPolicyMode> {
        Some(match raw & 0xff {
            0 => MemPolicyMode::Default,
            1 => MemPolicyMode::Preferred,
            2 => MemPolicyMode::Bind,
            3 => MemPolicyMode::Interleave,
            4 => MemPolicyMode::Local,
            5 => MemPolicyMode::PreferredMany,
            6 => MemPolicyMode::WeightedInterleave,
            _ => return None,
        })
    }

    /// The kernel's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            MemPolicyMode::Default => "MPOL_DEFAULT",
            MemPolicyMode::Preferred => "MPOL_PREFERRED",
            MemPolicyMode::Bind => "MPOL_BIND",
            MemPolicyMode::Interleave => "MPOL_INTERLEAVE",
            MemPolicyMode::Local => "MPOL_LOCAL",
            MemPolicyMode::PreferredMany => "MPOL_PREFERRED_MANY",
            MemPolicyMode::WeightedInterleave => "MPOL_WEIGHTED_INTERLEAVE",
        }
    }

    /// Modes that take no node set.
    fn takes_no_nodes(self) -> bool {
        matches!(self, MemPolicyMode::Default | MemPolicyMode::Local)
    }
}

/// `mbind` flags (`MPOL_MF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MoveFlags(u32);

impl MoveFlags {
    /// Only set the policy; pages already present stay where they are.
    pub const NONE: MoveFlags = MoveFlags(0);
    /// MPOL_MF_STRICT: fail if existing pages do not follow the policy.
    pub const STRICT: MoveFlags = MoveFlags(1);
    /// MPOL_MF_MOVE: move this process's existing pages to follow the policy.
    pub const MOVE: MoveFlags = MoveFlags(2);
    /// MPOL_MF_MOVE_ALL: also pages shared with others (needs CAP_SYS_NICE).
    pub const MOVE_ALL: MoveFlags = MoveFlags(4);

    /// The raw flag bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for MoveFlags {
    type Output = MoveFlags;
    fn bitor(self, rhs: MoveFlags) -> MoveFlags {
        MoveFlags(self.0 | rhs.0)
    }
}

fn node_mask(mode: MemPolicyMode, nodes: &[u32]) -> Result<Option<Bitmask>, PolicyError> {
    if mode.takes_no_nodes() {
        return Ok(None);
    }
    if nodes.is_empty() {
        if mode == MemPolicyMode::Preferred {
            // An empty preferred set means "local allocation" to the kernel.
            return Ok(None);
        }
        return Err(PolicyError::InvalidArgument {
            what: "node set",
            reason: format!("{} needs at least one node", mode.name()),
        });
    }
    Ok(Some(Bitmask::from_ids(nodes)))
}

fn map_mempolicy_errno(call: &'static str, mode: MemPolicyMode, nodes: &[u32]) -> PolicyError {
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) => PolicyError::InvalidArgument {
            what: "memory policy",
            reason: format!(
                "the kernel refused {} over nodes {} (a node without memory, outside the cpuset, or a mode this kernel lacks)",
                mode.name(),
                id_list(nodes)
            ),
        },
        Some(libc::EPERM) => PolicyError::MissingCapability {
            capability: super::error::CAP_SYS_NICE,
            action: format!("{call} with {}", mode.name()),
        },
        Some(libc::ENOSYS) => PolicyError::Unsupported { what: call },
        _ => PolicyError::Syscall { call, source: err },
    }
}

/// Set the memory policy of the calling thread (threads it starts later inherit it).
pub fn set_mempolicy(mode: MemPolicyMode, nodes: &[u32]) -> Result<(), PolicyError> {
    let mask = node_mask(mode, nodes)?;
    let (ptr, maxnode) = match &mask {
        Some(m) => (m.as_ptr(), m.bits() as libc::c_ulong + 1),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `ptr` is NULL or points to `mask`'s live buffer of `maxnode - 1` bits; the kernel
    // only reads it.
    let rc = unsafe { libc::syscall(libc::SYS_set_mempolicy, mode.raw(), ptr, maxnode) };
    if rc == 0 {
        Ok(())
    } else {
        Err(map_mempolicy_errno("set_mempolicy", mode, nodes))
    }
}

fn get_raw(flags: libc::c_int) -> Result<(i32, Vec<u32>), PolicyError> {
    let mut bits = 1024;
    loop {
        let mut mask = Bitmask::with_bits(bits);
        let mut mode: libc::c_int = 0;
        // SAFETY: `mode` is a live local and `mask` a live writable buffer of `bits` bits, of
        // which the kernel writes at most `maxnode - 1`; addr is NULL as no MPOL_F_ADDR is given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                mask.as_mut_ptr(),
                bits as libc::c_ulong + 1,
                std::ptr::null_mut::<libc::c_void>(),
                flags as libc::c_ulong,
            )
        };
        if rc == 0 {
            return Ok((mode, mask.ids()));
        }
        let err = io::Error::last_os_error();
        // EINVAL: the mask is smaller than the kernel's node count; grow and retry.
        if err.raw_os_error() == Some(libc::EINVAL) && bits < 65536 {
            bits *= 4;
            continue;
        }
        return Err(PolicyError::Syscall {
            call: "get_mempolicy",
            source: err,
        });
    }
}

/// The calling thread's memory policy and its node set.
pub fn get_mempolicy() -> Result<(MemPolicyMode, Vec<u32>), PolicyError> {
    let (mode, nodes) = get_raw(0)?;
    let mode = MemPolicyMode::from_raw(mode).ok_or_else(|| PolicyError::InvalidArgument {
        what: "memory policy",
        reason: format!("the kernel reported an unknown mode {mode}"),
    })?;
    Ok((mode, nodes))
}

/// The nodes this process may allocate on (its cpuset's mems), from
/// `get_mempolicy(MPOL_F_MEMS_ALLOWED)`.
pub fn mems_allowed() -> Result<Vec<u32>, PolicyError> {
    const MPOL_F_MEMS_ALLOWED: libc::c_int = 4;
    Ok(get_raw(MPOL_F_MEMS_ALLOWED)?.1)
}

/// Set the policy of the page-aligned range `[addr, addr + len)` of this process; with
/// `MoveFlags::MOVE` its existing pages move to follow it.
pub fn mbind(
    addr: usize,
    len: usize,
    mode: MemPolicyMode,
    nodes: &[u32],
    flags: MoveFlags,
) -> Result<(), PolicyError> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    if addr % page != 0 || len == 0 {
        return Err(PolicyError::InvalidArgument {
            what: "mbind range",
            reason: format!(
                "address {addr:#x} must be page aligned ({page} bytes) and the length ({len}) non-zero"
            ),
        });
    }
    let mask = node_mask(mode, nodes)?;
    let (ptr, maxnode) = match &mask {
        Some(m) => (m.as_ptr(), m.bits() as libc::c_ulong + 1),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: mbind changes only placement, never contents, of the range; the kernel checks
    // that the range is mapped (EFAULT otherwise). `ptr` is NULL or `mask`'s live buffer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as *mut libc::c_void,
            len as libc::c_ulong,
            mode.raw(),
            ptr,
            maxnode,
            flags.bits(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(map_mempolicy_errno("mbind", mode, nodes))
    }
}

static SUPPORT: Mutex<BTreeMap<MemPolicyMode, bool>> = Mutex::new(BTreeMap::new());

/// Does the running kernel accept `mode`? Tried once on a short-lived thread (so the calling
/// thread's policy is untouched) over the first node this process may allocate on; EINVAL
/// means no. Cached per mode.
pub fn supported(mode: MemPolicyMode) -> bool {
    if let Ok(cache) = SUPPORT.lock()
        && let Some(&known) = cache.get(&mode)
    {
        return known;
    }
    let node = mems_allowed()
        .ok()
        .and_then(|n| n.first().copied())
        .unwrap_or(0);
    let ok = std::thread::Builder::new()
        .name("mpol-probe".into())
        .spawn(move || set_mempolicy(mode, &[node]).is_ok())
        .ok()
        .and_then(|h| h.join().ok())
        .unwrap_or(false);
    if let Ok(mut cache) = SUPPORT.lock() {
        cache.insert(mode, ok);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_round_trip_on_a_thread() {
        let node = mems_allowed().unwrap()[0];
        let seen = std::thread::spawn(move || {
            set_mempolicy(MemPolicyMode::Bind, &[node]).unwrap();
            let bind = get_mempolicy().unwrap();
            set_mempolicy(MemPolicyMode::Preferred, &[node]).unwrap();
            let pref = get_mempolicy().unwrap();
            set_mempolicy(MemPolicyMode::Default, &[]).unwrap();
            let def = get_mempolicy().unwrap();
            (bind, pref, def)
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, (MemPolicyMode::Bind, vec![node]));
        assert_eq!(seen.1, (MemPolicyMode::Preferred, vec![node]));
        assert_eq!(seen.2.0, MemPolicyMode::Default);
    }

    #[test]
    fn a_node_without_memory_is_refused_with_its_number() {
        let e = std::thread::spawn(|| set_mempolicy(MemPolicyMode::Bind, &[1000]))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("1000"), "{e}");
        assert!(set_mempolicy(MemPolicyMode::Interleave, &[]).is_err());
    }

    #[test]
    fn support_detection_agrees_with_the_basic_modes() {
        assert!(supported(MemPolicyMode::Bind));
        assert!(supported(MemPolicyMode::Interleave));
        // Newer modes came with known kernel versions: detection must agree with the
        // running kernel's (MPOL_PREFERRED_MANY in 5.15, MPOL_WEIGHTED_INTERLEAVE in 6.9).
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let version = kernel_version(&release).unwrap_or_else(|| panic!("release {release:?}"));
        assert_eq!(
            supported(MemPolicyMode::PreferredMany),
            version >= (5, 15),
            "MPOL_PREFERRED_MANY on {release}"
        );
        assert_eq!(
            supported(MemPolicyMode::WeightedInterleave),
            version >= (6, 9),
            "MPOL_WEIGHTED_INTERLEAVE on {release}"
        );
        // An unknown mode number is refused by the kernel, so the probe can say no.
        assert!(
            std::thread::spawn(|| {
                // SAFETY: set_mempolicy with an invalid mode and no node mask only fails.
                unsafe { libc::syscall(libc::SYS_set_mempolicy, 99, std::ptr::null::<u64>(), 0) }
            })
            .join()
            .unwrap()
                < 0
        );
    }

    /// `6.18.44-fc-v669` -> (6, 18).
    fn kernel_version(release: &str) -> Option<(u32, u32)> {
        let mut it = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().ok());
        Some((it.next()??, it.next()??))
    }
}

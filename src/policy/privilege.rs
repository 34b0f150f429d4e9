//! Capability checks in front of calls that act on other processes, so a missing privilege
//! is reported by name before anything is half done.

pub use super::error::CAP_SYS_NICE;
use super::error::PolicyError;
use caps::{CapSet, Capability};

/// Does this process hold CAP_SYS_NICE in its effective set?
pub fn has_sys_nice() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_NICE).unwrap_or(false)
}

/// Check that this process may pin or migrate process `pid`: itself always; another process
/// with CAP_SYS_NICE, or without it when the kernel's same-user rule allows it (our
/// effective uid equals the target's real, effective or saved uid).
pub fn check_other_process(pid: i32, action: &str) -> Result<(), PolicyError> {
    if pid <= 0 {
        return Err(PolicyError::InvalidArgument {
            what: "pid",
            reason: format!("{pid} is not a process id; give a positive pid"),
        });
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| PolicyError::NoSuchProcess { pid })?;
    if pid as u32 == std::process::id() || has_sys_nice() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let same_user = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|uids| {
            uids.split_whitespace()
                .take(3)
                .any(|u| u.parse::<u32>().ok() == Some(euid))
        })
        .unwrap_or(false);
    if same_user {
        Ok(())
    } else {
        Err(PolicyError::MissingCapability {
            capability: CAP_SYS_NICE,
            action: format!("{action} (pid {pid}, another user's process)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_always_allowed_and_bad_pids_are_named() {
        check_other_process(std::process::id() as i32, "test").unwrap();
        let e = check_other_process(-3, "test").unwrap_err();
        assert!(e.to_string().contains("-3"), "{e}");
        let e = check_other_process(4_194_999, "test").unwrap_err();
        assert!(matches!(e, PolicyError::NoSuchProcess { pid: 4_194_999 }));
    }

    /// Capabilities are per thread: drop CAP_SYS_NICE on a test thread only, then act on a
    /// process of another user (started as `nobody`). Needs root to start that process.
    #[test]
    fn another_users_process_without_cap_sys_nice_is_a_typed_error() {
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
        let result = std::thread::spawn(move || {
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_NICE).unwrap();
            let checked = check_other_process(pid, "pinning");
            let pinned = crate::policy::set_process_affinity(pid, &[0]);
            let raw = crate::policy::set_affinity(pid, &[0]);
            (checked, pinned, raw)
        })
        .join()
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        for e in [
            result.0.unwrap_err(),
            result.1.unwrap_err(),
            result.2.unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    PolicyError::MissingCapability {
                        capability: "CAP_SYS_NICE",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("CAP_SYS_NICE"), "{e}");
        }
        assert!(has_sys_nice(), "the main thread keeps its capabilities");
    }
}

//! The one error type of the policy syscalls: each variant names what was asked and what
//! would have been allowed, so a person can act on the message.

use std::io;

/// The capability that moving another process's threads or pages needs. Defined here, with
/// the error that names it, so that `privilege` depends on `error` and not both ways.
pub const CAP_SYS_NICE: &str = "CAP_SYS_NICE";

/// A placement syscall could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The process or thread does not exist (ESRCH, or no /proc entry).
    #[error("no process or thread with id {pid}: it does not exist or has exited")]
    NoSuchProcess {
        /// The pid or tid that was asked for.
        pid: i32,
    },
    /// A privilege is missing (EPERM, or the capability check before the call).
    #[error(
        "{action} needs the capability {capability}, which this process lacks: run it as root or grant {capability}"
    )]
    MissingCapability {
        /// The capability's name, e.g. `CAP_SYS_NICE`.
        capability: &'static str,
        /// What was attempted, in words.
        action: String,
    },
    /// A CPU outside the allowed set was asked for.
    #[error("CPU {cpu} is not one this process may run on (allowed: {allowed})")]
    CpuNotAllowed {
        /// The CPU asked for.
        cpu: u32,
        /// The allowed CPUs as a list.
        allowed: String,
    },
    /// A node outside the allowed set (or without memory) was asked for.
    #[error("node {node} is not one this process may allocate on (allowed: {allowed})")]
    NodeNotAllowed {
        /// The node asked for.
        node: u32,
        /// The allowed nodes with memory, as a list.
        allowed: String,
    },
    /// The running kernel lacks a feature (e.g. MPOL_WEIGHTED_INTERLEAVE before Linux 6.9).
    #[error("{what} is not supported by the running kernel")]
    Unsupported {
        /// The feature.
        what: &'static str,
    },
    /// An argument was unusable before any syscall was made.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why it is unusable and what would be accepted.
        reason: String,
    },
    /// Any other failure of a syscall.
    #[error("{call} failed: {source}")]
    Syscall {
        /// The syscall's name.
        call: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

impl PolicyError {
    /// Map the errno of `call` acting on `pid` to a typed error.
    pub(crate) fn from_errno(call: &'static str, pid: i32, err: io::Error, action: &str) -> Self {
        match err.raw_os_error() {
            Some(libc::ESRCH) => PolicyError::NoSuchProcess { pid },
            Some(libc::EPERM) => PolicyError::MissingCapability {
                capability: CAP_SYS_NICE,
                action: action.to_string(),
            },
            Some(libc::ENOSYS) => PolicyError::Unsupported { what: call },
            _ => PolicyError::Syscall { call, source: err },
        }
    }

    /// True for errors that mean "no privilege" or "not possible in this sandbox": the
    /// service degrades (logs once and goes on unpinned) instead of failing.
    pub fn is_degradable(&self) -> bool {
        match self {
            PolicyError::MissingCapability { .. } | PolicyError::Unsupported { .. } => true,
            PolicyError::Syscall { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSYS)
            ),
            _ => false,
        }
    }
}

/// Skip the calling unit test for `reason`: a failure under CI=true; else said on stderr
/// and logged to `NUMA_CACHE_SKIP_LOG` like the integration tests' `support::skip`.
#[cfg(test)]
pub(crate) fn test_skip(reason: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{reason}; under CI=true no test may skip");
    eprintln!("SKIP: {reason}");
    if let Some(path) = std::env::var_os("NUMA_CACHE_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("unknown test")
            .to_string();
        let _ = writeln!(f, "numa_cache (unit): {test}\t{reason}");
    }
}

/// Render ids as a compact list such as `0-3,8`.
pub fn id_list(ids: &[u32]) -> String {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

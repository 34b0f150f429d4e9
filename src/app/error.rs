//! The one error type of the application layer. Each front-end maps it once, by an exhaustive
//! match with no catch-all arm: `service::errors` to D-Bus error names, `gateway::errors` to
//! HTTP statuses and codes.

use crate::placement::PlacementError;
use crate::policy::PolicyError;
use crate::policy::memfd::MemfdError;
use crate::store::StoreError;

/// Which argument was malformed: D-Bus says InvalidArgument for all of them; HTTP gives each
/// its own stable code (openapi.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a strategy name.
    Strategy,
    /// Not a workload type.
    WorkloadType,
    /// Not a memory policy.
    MemoryPolicy,
    /// Not a node of this machine (or not one that can hold data).
    Node,
    /// A time range given in the wrong order.
    Range,
    /// Anything else (namespace, key, option, snapshot name, sealed fd).
    Argument,
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// polkit said no.
    NotAuthorized,
    /// The caller could not be identified (no sender, no pid, vanished process).
    NoCredentials,
    /// polkit could not be asked; refused rather than allowed.
    AuthorityUnavailable,
    /// The namespace belongs to another uid.
    NotOwner,
    /// The daemon lacks a privilege over another process (EPERM/EACCES).
    MissingPrivilege,
}

/// What a use case can fail with. The message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// No such entry, snapshot or process.
    #[error("{0}")]
    NotFound(String),
    /// An argument is malformed or out of range.
    #[error("{1}")]
    InvalidArgument(Invalid, String),
    /// A value is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The cache cannot make room.
    #[error("{0}")]
    NoSpace(String),
    /// Stored data failed its checksum.
    #[error("{0}")]
    Corrupted(String),
    /// The service cannot do it now (shutting down, engine trouble).
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not do this.
    #[error("{1}")]
    AccessDenied(Refusal, String),
    /// polkit would allow it after the user authenticates, which did not happen.
    #[error("{0}")]
    AuthenticationRequired(String),
}

/// What use cases return.
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// Shorthand for an `InvalidArgument(Invalid::Argument, ..)`.
    pub fn invalid(msg: impl Into<String>) -> AppError {
        AppError::InvalidArgument(Invalid::Argument, msg.into())
    }

    /// The message, for the person reading it.
    pub fn message(&self) -> &str {
        match self {
            AppError::NotFound(m)
            | AppError::InvalidArgument(_, m)
            | AppError::TooLarge(m)
            | AppError::NoSpace(m)
            | AppError::Corrupted(m)
            | AppError::Unavailable(m)
            | AppError::AccessDenied(_, m)
            | AppError::AuthenticationRequired(m) => m,
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        let msg = e.to_string();
        match e {
            StoreError::NotFound { .. } => AppError::NotFound(msg),
            StoreError::InvalidArgument(_) => AppError::invalid(msg),
            StoreError::TooLarge { .. } => AppError::TooLarge(msg),
            StoreError::NoSpace(_) => AppError::NoSpace(msg),
            StoreError::Corrupted(_) => AppError::Corrupted(msg),
            StoreError::Unavailable(_) => AppError::Unavailable(msg),
            StoreError::PermissionDenied(_) => AppError::AccessDenied(Refusal::NotOwner, msg),
        }
    }
}

impl From<MemfdError> for AppError {
    fn from(e: MemfdError) -> AppError {
        let msg = e.to_string();
        match e {
            MemfdError::NotSealed { .. } | MemfdError::Unreadable(_) => AppError::invalid(msg),
            MemfdError::TooLarge { .. } => AppError::TooLarge(msg),
            MemfdError::Create(_) => AppError::Unavailable(msg),
        }
    }
}

/// Placement failures: a vanished process is NotFound, a missing privilege of the daemon over
/// another process is AccessDenied naming the pid and the privilege, a bad node is
/// InvalidArgument. `pid` is the process acted on, when there is one.
pub fn placement_error(e: PlacementError, pid: Option<u32>) -> AppError {
    let msg = e.to_string();
    match e {
        PlacementError::NodeNotUsable { .. } | PlacementError::NoCpus { .. } => {
            AppError::InvalidArgument(Invalid::Node, msg)
        }
        PlacementError::Policy(p) => policy_error(p, pid),
    }
}

/// Policy (syscall) failures, as [`placement_error`] describes.
pub fn policy_error(e: PolicyError, pid: Option<u32>) -> AppError {
    let msg = e.to_string();
    let on = pid.map_or_else(String::new, |p| format!(" on process {p}"));
    match e {
        PolicyError::NoSuchProcess { .. } => AppError::NotFound(msg),
        PolicyError::MissingCapability { capability, .. } => AppError::AccessDenied(
            Refusal::MissingPrivilege,
            format!(
                "numa-cached lacks {capability}{on}: {msg} (see systemd/numa-cached.service: \
                 AmbientCapabilities)"
            ),
        ),
        PolicyError::Syscall { call, ref source }
            if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
        {
            AppError::AccessDenied(
                Refusal::MissingPrivilege,
                format!(
                    "{call}{on} was refused ({source}): numa-cached needs CAP_SYS_NICE and \
                     CAP_SYS_PTRACE over that process (see systemd/numa-cached.service)"
                ),
            )
        }
        PolicyError::CpuNotAllowed { .. } | PolicyError::NodeNotAllowed { .. } => {
            AppError::InvalidArgument(Invalid::Node, msg)
        }
        PolicyError::InvalidArgument { .. } => AppError::invalid(msg),
        PolicyError::Unsupported { .. } | PolicyError::Syscall { .. } => AppError::Unavailable(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_privilege_names_the_pid_and_the_capability() {
        let e = policy_error(
            PolicyError::MissingCapability {
                capability: "CAP_SYS_NICE",
                action: "binding another process to a node".into(),
            },
            Some(4242),
        );
        assert!(matches!(
            e,
            AppError::AccessDenied(Refusal::MissingPrivilege, _)
        ));
        let m = e.to_string();
        assert!(m.contains("4242") && m.contains("CAP_SYS_NICE"), "{m}");
        let e = policy_error(
            PolicyError::Syscall {
                call: "migrate_pages",
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            },
            Some(7),
        );
        assert!(
            matches!(e, AppError::AccessDenied(Refusal::MissingPrivilege, _)),
            "{e:?}"
        );
        assert!(matches!(
            policy_error(PolicyError::NoSuchProcess { pid: 9 }, Some(9)),
            AppError::NotFound(_)
        ));
    }
}

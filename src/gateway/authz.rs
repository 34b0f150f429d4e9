//! Authorization of the gateway's POSTs: the unix-socket peer (SO_PEERCRED) is handed to polkit
//! as a `unix-process` subject for the same actions the D-Bus methods check. HTTP cannot show
//! an authentication dialog, so a challenge is answered as a refusal that says what to do.

use crate::service::polkit::{Subject, check_authorization as polkit_check};
use std::time::Duration;
use tokio::sync::Mutex;

/// The polkit actions of numa-cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `org.opdbus.NumaCache.set-strategy`
    SetStrategy,
    /// `org.opdbus.NumaCache.optimize`
    Optimize,
    /// `org.opdbus.NumaCache.manage-cache`
    ManageCache,
    /// `org.opdbus.NumaCache.bind-process`
    BindProcess,
}

impl Action {
    /// The polkit action id.
    pub fn id(self) -> &'static str {
        match self {
            Action::SetStrategy => "org.opdbus.NumaCache.set-strategy",
            Action::Optimize => "org.opdbus.NumaCache.optimize",
            Action::ManageCache => "org.opdbus.NumaCache.manage-cache",
            Action::BindProcess => "org.opdbus.NumaCache.bind-process",
        }
    }
}

/// A polkit `unix-process` subject: the pid with its start time (so that a recycled pid is
/// not mistaken for the caller) and the uid the kernel reported for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixProcess {
    /// The process id, in this process's pid namespace.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
    pub start_time: u64,
    /// The peer's effective uid from SO_PEERCRED.
    pub uid: u32,
}

/// Why a request was not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// The kernel gave no pid for the peer (e.g. it lives in another pid namespace).
    #[error(
        "the connecting process has no pid visible to numa-cached, so polkit cannot check it; connect from the host's pid namespace"
    )]
    NoPeerPid,
    /// The peer exited before it could be checked, or its stat could not be read.
    #[error("could not read /proc/{pid}/stat of the connecting process: {reason}")]
    ProcessGone {
        /// The peer's pid.
        pid: u32,
        /// What failed.
        reason: String,
    },
    /// polkit said no.
    #[error(
        "polkit refused {action} for uid {uid}: ask an administrator to grant it (a polkit rule), or run as root"
    )]
    Denied {
        /// The action id.
        action: &'static str,
        /// The caller's uid.
        uid: u32,
    },
    /// polkit wants the user to authenticate, which an HTTP client cannot do.
    #[error(
        "polkit requires authentication for {action} (uid {uid}), which HTTP cannot show: use `numacachectl` over D-Bus, or have an administrator add a polkit rule"
    )]
    ChallengeRequired {
        /// The action id.
        action: &'static str,
        /// The caller's uid.
        uid: u32,
    },
    /// polkit could not be asked; the request is refused rather than allowed.
    #[error("polkit could not be reached on the system bus ({0}); refusing the request")]
    Unreachable(String),
}

impl UnixProcess {
    /// The subject for a socket peer with credentials `pid` and `uid`, reading the start time
    /// from `/proc/PID/stat`.
    pub fn from_peer(pid: Option<i32>, uid: u32) -> Result<Self, AuthzError> {
        let pid = pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or(AuthzError::NoPeerPid)?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
            AuthzError::ProcessGone {
                pid,
                reason: e.to_string(),
            }
        })?;
        let start_time = start_time_of(&stat).ok_or_else(|| AuthzError::ProcessGone {
            pid,
            reason: "field 22 (starttime) is missing or not a number".to_string(),
        })?;
        Ok(UnixProcess {
            pid,
            start_time,
            uid,
        })
    }
}

/// Field 22 (starttime) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn start_time_of(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the comm come field 3 (state) onwards: starttime is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// A client of the polkit authority on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
/// The connection is made on first use and made again after a failure, so the gateway starts
/// even while the bus is down and recovers when it returns.
#[derive(Debug, Default)]
pub struct Polkit {
    /// A bus address to use instead of the system bus (tests run a private one).
    address: Option<String>,
    conn: Mutex<Option<zbus::Connection>>,
}

/// How long one CheckAuthorization may take before the request is refused.
const POLKIT_TIMEOUT: Duration = Duration::from_secs(10);

impl Polkit {
    /// A client of the system bus's authority that connects on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client of the authority on the bus at `address` (a D-Bus address such as
    /// `unix:path=/run/dbus/system_bus_socket`).
    pub fn with_address(address: impl Into<String>) -> Self {
        Polkit {
            address: Some(address.into()),
            conn: Mutex::default(),
        }
    }

    /// Ask polkit whether `subject` may perform `action`, without user interaction.
    pub async fn check(&self, subject: &UnixProcess, action: Action) -> Result<(), AuthzError> {
        let conn = self.connection().await?;
        let result =
            tokio::time::timeout(POLKIT_TIMEOUT, check_authorization(&conn, subject, action))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("no answer within {} s", POLKIT_TIMEOUT.as_secs()))
                });
        let (authorized, challenge) = match result {
            Ok(answer) => answer,
            Err(reason) => {
                // Drop the connection: the bus may have gone away; the next request reconnects.
                *self.conn.lock().await = None;
                return Err(AuthzError::Unreachable(reason));
            }
        };
        if authorized {
            Ok(())
        } else if challenge {
            Err(AuthzError::ChallengeRequired {
                action: action.id(),
                uid: subject.uid,
            })
        } else {
            Err(AuthzError::Denied {
                action: action.id(),
                uid: subject.uid,
            })
        }
    }

    async fn connection(&self) -> Result<zbus::Connection, AuthzError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let builder = match &self.address {
            Some(a) => zbus::connection::Builder::address(a.as_str()),
            None => zbus::connection::Builder::system(),
        };
        let c = tokio::time::timeout(POLKIT_TIMEOUT, builder.build())
            .await
            .map_err(|_| AuthzError::Unreachable("the system bus did not answer".into()))?
            .map_err(|e| AuthzError::Unreachable(e.to_string()))?;
        *guard = Some(c.clone());
        Ok(c)
    }
}

/// polkit's CheckAuthorization for a unix-process subject, through the daemon's one polkit
/// call ([`crate::service::polkit::check_authorization`]); returns `(is_authorized,
/// is_challenge)`. No user interaction: there is nobody to answer a dialog over HTTP.
async fn check_authorization(
    conn: &zbus::Connection,
    subject: &UnixProcess,
    action: Action,
) -> Result<(bool, bool), String> {
    let subject = Subject::UnixProcess {
        pid: subject.pid,
        start_time: subject.start_time,
        uid: subject.uid,
    };
    let answer = polkit_check(conn, &subject, action.id(), false)
        .await
        .map_err(|e| e.to_string())?;
    Ok((answer.authorized, answer.challenge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_of(stat), Some(987_654));
        assert_eq!(start_time_of("12 (x) S 1 2"), None);
        assert_eq!(start_time_of("no parenthesis"), None);
    }

    #[test]
    fn our_own_process_has_a_start_time() {
        let me = UnixProcess::from_peer(Some(std::process::id() as i32), 0).unwrap();
        assert!(me.start_time > 0);
        assert_eq!(UnixProcess::from_peer(None, 0), Err(AuthzError::NoPeerPid));
        assert_eq!(
            UnixProcess::from_peer(Some(0), 0),
            Err(AuthzError::NoPeerPid)
        );
    }

    #[test]
    fn action_ids_match_the_policy_file() {
        assert_eq!(
            Action::SetStrategy.id(),
            "org.opdbus.NumaCache.set-strategy"
        );
        assert_eq!(Action::Optimize.id(), "org.opdbus.NumaCache.optimize");
        assert_eq!(
            Action::ManageCache.id(),
            "org.opdbus.NumaCache.manage-cache"
        );
        assert_eq!(
            Action::BindProcess.id(),
            "org.opdbus.NumaCache.bind-process"
        );
    }
}

//! Authorization through polkit: `CheckAuthorization` for the caller of a D-Bus message,
//! identified as a `system-bus-name` subject (the message's sender, never our own pid).
//! Anything short of a clear "authorized" (denied, challenge, polkit unreachable) is a no.
//! [`check_authorization`] is the one polkit call of the daemon; the HTTP gateway uses it
//! too, with a `unix-process` subject.

use crate::service::errors::ServiceError;
use std::collections::HashMap;
use std::time::Duration;
use zbus::message::{Flags, Header};
use zbus::{Connection, Variant};

/// The polkit action ids of the service (polkit/org.opdbus.NumaCache.policy).
pub mod actions {
    /// SetStrategy.
    pub const SET_STRATEGY: &str = "org.opdbus.NumaCache.set-strategy";
    /// Optimize.
    pub const OPTIMIZE: &str = "org.opdbus.NumaCache.optimize";
    /// BindProcess.
    pub const BIND_PROCESS: &str = "org.opdbus.NumaCache.bind-process";
    /// Clear, snapshots, ResetCounters.
    pub const MANAGE_CACHE: &str = "org.opdbus.NumaCache.manage-cache";
}

/// polkit's `CheckAuthorizationFlags::AllowUserInteraction`.
const ALLOW_USER_INTERACTION: u32 = 1;

/// How long we wait for polkit. With interaction allowed a person may be typing a password,
/// so that wait is longer; either way a hung polkit must not hang our caller forever.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    /// polkit's CheckAuthorization: (subject, action, details, flags, cancellation id) ->
    /// (is_authorized, is_challenge, details).
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Variant<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// Who polkit is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The sender of a D-Bus message (its unique name), for the bus interfaces.
    SystemBusName(&'a str),
    /// A local process, for the HTTP gateway's unix-socket peers: the pid with its start
    /// time (so a recycled pid is not mistaken for the caller) and its uid.
    UnixProcess {
        /// The process id.
        pid: u32,
        /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
        start_time: u64,
        /// The peer's uid.
        uid: u32,
    },
}

/// polkit's answer to one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorization {
    /// polkit said yes.
    pub authorized: bool,
    /// polkit would say yes after the user authenticates.
    pub challenge: bool,
}

/// `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` on `conn`: may `subject`
/// perform `action`? `allow_interaction` lets polkit ask the user through an agent (only
/// meaningful when the caller asked for it: a D-Bus message flag; never over HTTP). No
/// timeout here: callers bound the wait as suits them.
pub async fn check_authorization(
    conn: &Connection,
    subject: &Subject<'_>,
    action: &str,
    allow_interaction: bool,
) -> zbus::Result<Authorization> {
    let mut details: HashMap<&str, Variant<'_>> = HashMap::new();
    let kind = match *subject {
        Subject::SystemBusName(name) => {
            details.insert("name", Variant::from(name));
            "system-bus-name"
        }
        Subject::UnixProcess {
            pid,
            start_time,
            uid,
        } => {
            details.insert("pid", Variant::U32(pid));
            details.insert("start-time", Variant::U64(start_time));
            // polkit types the uid as int32; real uids fit (-1 is never a peer's uid).
            details.insert("uid", Variant::I32(uid as i32));
            "unix-process"
        }
    };
    let flags = if allow_interaction {
        ALLOW_USER_INTERACTION
    } else {
        0
    };
    let proxy = AuthorityProxy::new(conn).await?;
    let (authorized, challenge, _) = proxy
        .check_authorization(&(kind, details), action, HashMap::new(), flags, "")
        .await?;
    Ok(Authorization {
        authorized,
        challenge,
    })
}

/// The polkit authority on the daemon's bus.
#[derive(Clone, Debug)]
pub struct Polkit {
    conn: Connection,
}

impl Polkit {
    /// Use the polkit authority reachable on `conn` (the system bus).
    pub fn new(conn: Connection) -> Polkit {
        Polkit { conn }
    }

    /// Is the sender of the message `header` allowed to perform `action`? Ok only when
    /// polkit says authorized; otherwise the D-Bus error to return.
    pub async fn check(&self, header: &Header<'_>, action: &str) -> Result<(), ServiceError> {
        let Some(sender) = header.sender() else {
            return Err(ServiceError::AccessDenied(format!(
                "not authorized for {action}: the message has no sender to ask polkit about"
            )));
        };
        let interactive = header
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH);
        let wait = if interactive {
            INTERACTIVE_TIMEOUT
        } else {
            CHECK_TIMEOUT
        };
        let subject = Subject::SystemBusName(sender.as_str());
        let asked = check_authorization(&self.conn, &subject, action, interactive);
        let answer = match tokio::time::timeout(wait, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(action, error = %e, "polkit is not reachable; denying");
                return Err(ServiceError::AccessDenied(format!(
                    "not authorized for {action}: polkit could not be asked ({e}); is polkitd running?"
                )));
            }
            Err(_) => {
                tracing::warn!(action, "polkit did not answer in time; denying");
                return Err(ServiceError::AccessDenied(format!(
                    "not authorized for {action}: polkit did not answer within {} s",
                    wait.as_secs()
                )));
            }
        };
        let answer = (answer.authorized, answer.challenge, ());
        match answer {
            (true, _, _) => Ok(()),
            (false, true, _) if interactive => {
                Err(ServiceError::InteractiveAuthorizationRequired(format!(
                    "{action} needs an administrator's password and no polkit agent answered: run it \
                 from a desktop session, start `pkttyagent --process $$` in this shell, or use sudo"
                )))
            }
            (false, true, _) => Err(ServiceError::InteractiveAuthorizationRequired(format!(
                "{action} needs authentication: call again allowing interactive authorization \
                 (busctl does by default; gdbus call --interactive), or as root"
            ))),
            (false, false, _) => Err(ServiceError::AccessDenied(format!(
                "not authorized for {action}: polkit denied it for {sender} (ask an administrator \
                 for a polkit rule or run as root)"
            ))),
        }
    }
}

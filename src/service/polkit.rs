//! Authorization through polkit: `CheckAuthorization` for the caller of a D-Bus message,
//! identified as a `system-bus-name` subject (the message's sender, never our own pid).
//! Anything short of a clear "authorized" (denied, challenge, polkit unreachable) is a no.

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
        let flags = if interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        let mut subject_details = HashMap::new();
        subject_details.insert("name", Variant::from(sender.as_str()));
        let subject = ("system-bus-name", subject_details);
        let wait = if interactive {
            INTERACTIVE_TIMEOUT
        } else {
            CHECK_TIMEOUT
        };
        let asked = async {
            let proxy = AuthorityProxy::new(&self.conn).await?;
            proxy
                .check_authorization(&subject, action, HashMap::new(), flags, "")
                .await
        };
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

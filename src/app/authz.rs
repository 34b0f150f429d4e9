//! Authorization: the polkit actions of numa-cache, who asks (the subject each front-end
//! chooses: `system-bus-name` for D-Bus callers, `unix-process` with its start time for HTTP
//! peers), and the daemon's one polkit client. [`Polkit::check`] is the only place in the
//! crate that calls `CheckAuthorization`; every decision on an admin action is logged as an
//! audit line (who, what, result).

use crate::app::error::{AppError, AppResult, Refusal};
use numa_cache_client::names::action;
use std::collections::HashMap;
use std::time::Duration;
use zbus::{Connection, Variant};

/// The polkit actions of numa-cache (polkit/org.opdbus.NumaCache.policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `org.opdbus.NumaCache.set-strategy`: SetStrategy, POST /api/v1/numa/strategy.
    SetStrategy,
    /// `org.opdbus.NumaCache.optimize`: Optimize, POST /api/v1/numa/optimize.
    Optimize,
    /// `org.opdbus.NumaCache.manage-cache`: Clear, snapshots, ResetCounters.
    ManageCache,
    /// `org.opdbus.NumaCache.bind-process`: BindProcess.
    BindProcess,
}

impl Action {
    /// The polkit action id.
    pub fn id(self) -> &'static str {
        match self {
            Action::SetStrategy => action::SET_STRATEGY,
            Action::Optimize => action::OPTIMIZE,
            Action::ManageCache => action::MANAGE_CACHE,
            Action::BindProcess => action::BIND_PROCESS,
        }
    }
}

/// Who polkit is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The sender of a D-Bus message (its unique name).
    BusName {
        /// The unique name, e.g. `:1.42`.
        name: String,
        /// The message allowed interactive authorization.
        interactive: bool,
    },
    /// A local process (HTTP unix-socket peers): the pid with its start time, so that a
    /// recycled pid is not mistaken for the caller.
    UnixProcess(UnixProcess),
}

/// A polkit `unix-process` subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixProcess {
    /// The process id, in this process's pid namespace.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22, read with procfs).
    pub start_time: u64,
    /// The peer's uid from SO_PEERCRED.
    pub uid: u32,
}

impl UnixProcess {
    /// The subject for a socket peer with credentials `pid` and `uid`.
    pub fn from_peer(pid: Option<i32>, uid: u32) -> AppResult<UnixProcess> {
        let pid = pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                AppError::AccessDenied(
                    Refusal::NoCredentials,
                    "the connecting process has no pid visible to numa-cached, so polkit cannot check it; connect from the host's pid namespace".into(),
                )
            })?;
        let start_time = process_stat(pid).map(|s| s.starttime).map_err(|reason| {
            AppError::AccessDenied(
                Refusal::NoCredentials,
                format!("could not read the start time of the connecting process {pid}: {reason}"),
            )
        })?;
        Ok(UnixProcess {
            pid,
            start_time,
            uid,
        })
    }
}

/// `/proc/PID/stat` of `pid`, parsed by procfs.
fn process_stat(pid: u32) -> Result<procfs::process::Stat, String> {
    let pid = i32::try_from(pid).map_err(|_| format!("{pid} is not a pid"))?;
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| e.to_string())
}

/// The CPU `pid` last ran on (`/proc/PID/stat` "processor", read with procfs); None when
/// unknown.
pub fn last_cpu(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    process_stat(pid)
        .ok()?
        .processor
        .and_then(|c| u32::try_from(c).ok())
}

/// Who is calling, as the front-end identified them: the polkit subject, and the uid, pid and
/// CPU the engine and the audit log use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// What polkit is asked about.
    pub subject: Subject,
    /// The caller's uid, when known.
    pub uid: Option<u32>,
    /// The caller's pid, when known.
    pub pid: Option<u32>,
    /// The CPU the caller last ran on, for placement.
    pub cpu: Option<u32>,
}

impl Requester {
    /// The engine's view of the caller.
    pub fn caller(&self) -> crate::store::Caller {
        crate::store::Caller {
            uid: self.uid,
            cpu: self.cpu,
        }
    }

    /// `uid=0 pid=42 sender=:1.7` (or `via=http`) for log lines.
    pub fn describe(&self) -> String {
        let id = |v: Option<u32>| v.map_or_else(|| "unknown".to_string(), |v| v.to_string());
        let via = match &self.subject {
            Subject::BusName { name, .. } => format!("sender={name}"),
            Subject::UnixProcess(_) => "via=http".to_string(),
        };
        format!("uid={} pid={} {via}", id(self.uid), id(self.pid))
    }
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

/// Where the polkit client finds the bus.
#[derive(Debug)]
enum Bus {
    /// The daemon's own system-bus connection (no second connection).
    Shared(Connection),
    /// A bus address, connected on first use and again after a failure (an embedded gateway
    /// without a daemon connection; tests with a private bus).
    Address {
        address: Option<String>,
        conn: tokio::sync::Mutex<Option<Connection>>,
    },
}

/// The polkit client of the daemon.
#[derive(Debug)]
pub struct Polkit {
    bus: Bus,
}

impl Polkit {
    /// Ask the authority on `conn`, the daemon's system-bus connection.
    pub fn on(conn: Connection) -> Polkit {
        Polkit {
            bus: Bus::Shared(conn),
        }
    }

    /// Ask the authority on the bus at `address` (None: the system bus), connecting on first
    /// use.
    pub fn at(address: Option<String>) -> Polkit {
        Polkit {
            bus: Bus::Address {
                address,
                conn: tokio::sync::Mutex::new(None),
            },
        }
    }

    async fn connection(&self) -> Result<Connection, String> {
        match &self.bus {
            Bus::Shared(c) => Ok(c.clone()),
            Bus::Address { address, conn } => {
                let mut guard = conn.lock().await;
                if let Some(c) = guard.as_ref() {
                    return Ok(c.clone());
                }
                let builder = match address {
                    Some(a) => zbus::connection::Builder::address(a.as_str()),
                    None => zbus::connection::Builder::system(),
                };
                let c = tokio::time::timeout(CHECK_TIMEOUT, builder.build())
                    .await
                    .map_err(|_| "the system bus did not answer".to_string())?
                    .map_err(|e| e.to_string())?;
                *guard = Some(c.clone());
                Ok(c)
            }
        }
    }

    async fn forget(&self) {
        if let Bus::Address { conn, .. } = &self.bus {
            *conn.lock().await = None;
        }
    }

    /// May `who` perform `action`? Ok only when polkit says authorized; anything else
    /// (denied, challenge, polkit unreachable) is a refusal that says what to do. Every
    /// decision is logged as an audit line.
    pub async fn check(&self, who: &Requester, action: Action) -> AppResult<()> {
        let (kind, details, interactive) = subject_details(&who.subject);
        let wait = if interactive {
            INTERACTIVE_TIMEOUT
        } else {
            CHECK_TIMEOUT
        };
        let flags = if interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        let asked = async {
            let conn = self.connection().await?;
            let proxy = AuthorityProxy::new(&conn)
                .await
                .map_err(|e| e.to_string())?;
            proxy
                .check_authorization(&(kind, details), action.id(), HashMap::new(), flags, "")
                .await
                .map_err(|e| e.to_string())
        };
        let answer = match tokio::time::timeout(wait, asked).await {
            Ok(Ok((authorized, challenge, _))) => Ok((authorized, challenge)),
            Ok(Err(e)) => Err(format!(
                "polkit could not be asked ({e}); is polkitd running?"
            )),
            Err(_) => Err(format!("polkit did not answer within {} s", wait.as_secs())),
        };
        let action_id = action.id();
        let caller = who.describe();
        let result = match answer {
            Ok((true, _)) => Ok(()),
            Ok((false, true)) => Err(AppError::AuthenticationRequired(challenge_message(
                action_id,
                &who.subject,
            ))),
            Ok((false, false)) => Err(AppError::AccessDenied(
                Refusal::NotAuthorized,
                format!(
                    "not authorized for {action_id}: polkit refused it for {caller} (ask an administrator for a polkit rule, or run as root)"
                ),
            )),
            Err(reason) => {
                self.forget().await;
                Err(AppError::AccessDenied(
                    Refusal::AuthorityUnavailable,
                    format!("not authorized for {action_id}: {reason}; refusing the request"),
                ))
            }
        };
        match &result {
            Ok(()) => tracing::info!(
                target: "audit",
                "polkit authorized {action_id} for {caller}"
            ),
            Err(e) => tracing::warn!(
                target: "audit",
                "polkit refused {action_id} for {caller}: {e}"
            ),
        }
        result
    }
}

fn subject_details(subject: &Subject) -> (&'static str, HashMap<&'static str, Variant<'_>>, bool) {
    let mut details = HashMap::new();
    match subject {
        Subject::BusName { name, interactive } => {
            details.insert("name", Variant::from(name.as_str()));
            ("system-bus-name", details, *interactive)
        }
        Subject::UnixProcess(p) => {
            details.insert("pid", Variant::U32(p.pid));
            details.insert("start-time", Variant::U64(p.start_time));
            // polkit types the uid as int32; real uids fit (-1 is never a peer's uid).
            details.insert("uid", Variant::I32(p.uid as i32));
            // No user interaction over HTTP: there is nobody to answer a dialog.
            ("unix-process", details, false)
        }
    }
}

fn challenge_message(action: &str, subject: &Subject) -> String {
    match subject {
        Subject::BusName {
            interactive: true, ..
        } => format!(
            "{action} needs an administrator's password and no polkit agent answered: run it from a desktop session, start `pkttyagent --process $$` in this shell, or use sudo"
        ),
        Subject::BusName {
            interactive: false, ..
        } => format!(
            "{action} needs authentication: call again allowing interactive authorization (busctl does by default; gdbus call --interactive), or as root"
        ),
        Subject::UnixProcess(p) => format!(
            "polkit requires authentication for {action} (uid {}), which HTTP cannot show: use `numacachectl` over D-Bus, or have an administrator add a polkit rule",
            p.uid
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_has_a_start_time_and_a_cpu() {
        let me = UnixProcess::from_peer(Some(std::process::id() as i32), 0).unwrap();
        assert!(me.start_time > 0);
        assert!(last_cpu(std::process::id()).is_some());
        for pid in [None, Some(0), Some(-4)] {
            assert!(matches!(
                UnixProcess::from_peer(pid, 0),
                Err(AppError::AccessDenied(Refusal::NoCredentials, _))
            ));
        }
    }

    #[test]
    fn action_ids_match_the_policy_file() {
        let policy = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/polkit/org.opdbus.NumaCache.policy"
        ))
        .unwrap();
        for a in [
            Action::SetStrategy,
            Action::Optimize,
            Action::ManageCache,
            Action::BindProcess,
        ] {
            assert!(policy.contains(&format!("id=\"{}\"", a.id())), "{}", a.id());
        }
    }
}

//! Who is calling: the uid and pid of a message's sender, asked of the bus once per
//! connection (unique names are never reused on a bus), and the CPU that pid last ran on,
//! read from /proc (procfs) and reused for a few milliseconds: it changes, but reading it
//! costs as much as a small Get, and a caller that moved within that time is rare and
//! harmless. The polkit subject of a D-Bus caller is its unique name.

use crate::app::authz::last_cpu;
use crate::app::{AppError, Refusal, Requester, Subject};
use crate::service::errors::ServiceError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

/// The bus-reported identity of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The connection's Unix user id.
    pub uid: u32,
    /// The connection's process id (0 when the bus does not know it).
    pub pid: u32,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    creds: Credentials,
    cpu: Option<u32>,
    cpu_read: Option<Instant>,
}

/// Remembers the credentials (and recent CPU) of callers by unique bus name.
#[derive(Debug, Default)]
pub struct CallerCache {
    known: Mutex<HashMap<String, Known>>,
}

/// How long a caller's last CPU is reused before /proc is read again.
const CPU_FRESH: Duration = Duration::from_millis(50);

/// Past this many remembered senders we start over: a cheap bound for a long-running daemon
/// talking to many short-lived clients.
const MAX_REMEMBERED: usize = 4096;

impl CallerCache {
    /// The credentials of the sender of `header`.
    pub async fn credentials(
        &self,
        conn: &Connection,
        header: &Header<'_>,
    ) -> Result<Credentials, ServiceError> {
        let sender = header.sender().ok_or_else(|| {
            ServiceError(AppError::AccessDenied(
                Refusal::NoCredentials,
                "the message has no sender; cannot tell who is calling".into(),
            ))
        })?;
        if let Some(k) = self.lock().get(sender.as_str()) {
            return Ok(k.creds);
        }
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let name = BusName::from(sender.to_owned());
        let (uid, pid) = tokio::join!(
            dbus.get_connection_unix_user(name.clone()),
            dbus.get_connection_unix_process_id(name)
        );
        let uid = uid.map_err(|e| {
            ServiceError(AppError::AccessDenied(
                Refusal::NoCredentials,
                format!("the bus could not tell the caller's uid: {e}"),
            ))
        })?;
        let creds = Credentials {
            uid,
            pid: pid.unwrap_or(0),
        };
        let mut known = self.lock();
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(
            sender.to_string(),
            Known {
                creds,
                cpu: None,
                cpu_read: None,
            },
        );
        Ok(creds)
    }

    /// The caller as the application needs it: the polkit subject (its unique name, and
    /// whether the message allows interactive authorization), uid for namespace ownership
    /// and audit lines, pid, and last CPU for placement.
    pub async fn requester(
        &self,
        conn: &Connection,
        header: &Header<'_>,
    ) -> Result<Requester, ServiceError> {
        let creds = self.credentials(conn, header).await?;
        let sender = header.sender().map(|s| s.as_str()).unwrap_or_default();
        let now = Instant::now();
        let recent = self.lock().get(sender).and_then(|k| {
            k.cpu_read
                .filter(|t| now.duration_since(*t) < CPU_FRESH)
                .map(|_| k.cpu)
        });
        let cpu = match recent {
            Some(cpu) => cpu,
            None => {
                let cpu = last_cpu(creds.pid);
                if let Some(k) = self.lock().get_mut(sender) {
                    k.cpu = cpu;
                    k.cpu_read = Some(now);
                }
                cpu
            }
        };
        let interactive = header
            .primary()
            .flags()
            .contains(zbus::message::Flags::ALLOW_INTERACTIVE_AUTH);
        Ok(Requester {
            subject: Subject::BusName {
                name: sender.to_string(),
                interactive,
            },
            uid: Some(creds.uid),
            pid: (creds.pid != 0).then_some(creds.pid),
            cpu,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // A poisoned lock only means another call panicked mid-insert; the map is still valid.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

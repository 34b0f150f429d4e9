//! OpenDirect: a peer-to-peer D-Bus connection per caller, served by the daemon over one end
//! of a socketpair whose other end the caller receives. It skips the dbus-daemon hop for
//! callers that make many small calls.
//!
//! - It serves only what the caller hands it (the Cache interface, without its admin
//!   methods), acting with the identity of the bus caller of OpenDirect: uid and pid as the
//!   bus reported them then, the last CPU of that pid read again as over the bus. The bus
//!   policy decided who may call OpenDirect; namespace ownership is checked per call as
//!   usual.
//! - Bound to its opener: every byte read must have been written by a process of that uid
//!   (the kernel's SCM_CREDENTIALS, see [`crate::service::direct_socket`]), so a descriptor
//!   passed on to a process of another user is closed at its first byte, whatever its
//!   handshake claims; the SASL EXTERNAL claim must be that uid or empty. The handshake must
//!   finish within [`HANDSHAKE_LIMIT`].
//! - Bounded: at most [`MAX_PER_UID`] open per uid and [`MAX_TOTAL`] in all (a hostile
//!   member must not exhaust the daemon's descriptors); past either, `Unavailable` naming the
//!   limit. A connection closes when its peer hangs up; [`DirectServer::close_all`] (the
//!   daemon's stop) closes every one and refuses new ones.
//! - Bounded in memory: no bus daemon checks what the peer sends, so the socket is read
//!   through [`DirectSocket`]: a message over
//!   [`MAX_DIRECT_MESSAGE`](crate::service::direct_socket::MAX_DIRECT_MESSAGE) closes the connection,
//!   and one is read only once it fits its uid's budget and the total
//!   ([`crate::service::direct_socket`]). Replies that carry values count against the
//!   connection's reply budget ([`DirectCaller::replies`]), so a peer that never reads its
//!   socket cannot make the daemon hold its replies without bound either.

use crate::app::authz::last_cpu;
use crate::app::{AppError, Refusal, Requester};
use crate::service::ROOT_PATH;
use crate::service::direct_socket::{Budgets, DirectSocket, Replies};
use crate::service::errors::ServiceError;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zbus::Connection;
use zbus::object_server::Interface;

/// The most direct connections one uid may hold open.
pub const MAX_PER_UID: usize = 16;
/// The most direct connections open at once, all uids together.
pub const MAX_TOTAL: usize = 256;
/// How long a caller has to finish the D-Bus handshake on its end.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Messages zbus queues for a direct connection's unfiltered stream (which nothing reads:
/// method calls reach the object server through its own stream, bounded by the budgets).
const MAX_QUEUED: NonZeroUsize = NonZeroUsize::new(4).unwrap();

/// How long a caller's last CPU is reused before /proc is read again (as over the bus).
const CPU_FRESH: Duration = Duration::from_millis(50);

/// The identity a direct connection acts with: the OpenDirect caller's, with its last CPU
/// refreshed now and then for placement.
#[derive(Debug)]
pub struct DirectCaller {
    who: Requester,
    cpu: Mutex<(Option<u32>, Instant)>,
    replies: Replies,
}

impl DirectCaller {
    fn new(who: Requester, replies: Replies) -> DirectCaller {
        let cpu = Mutex::new((who.cpu, Instant::now()));
        DirectCaller { who, cpu, replies }
    }

    /// The reply budget of its connection, which value-returning calls reserve from.
    pub fn replies(&self) -> &Replies {
        &self.replies
    }

    /// The caller as the application needs it for one call.
    pub fn requester(&self) -> Requester {
        let mut who = self.who.clone();
        let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(cpu.1) >= CPU_FRESH {
            *cpu = (self.who.pid.and_then(last_cpu), now);
        }
        who.cpu = cpu.0;
        who
    }

    /// The uid it acts as.
    pub fn uid(&self) -> Option<u32> {
        self.who.uid
    }
}

#[derive(Debug, Default)]
struct Table {
    per_uid: HashMap<u32, usize>,
    total: usize,
    /// Open connections by serial number, to close at stop.
    open: HashMap<u64, Connection>,
    next: u64,
    stopped: bool,
}

/// The daemon's direct connections: their count per uid, and each open one.
#[derive(Debug, Default)]
pub struct DirectServer {
    table: Mutex<Table>,
    /// What the direct connections may hold of messages, per uid and in all.
    budgets: Budgets,
}

/// A place counted against the caps until dropped.
struct Slot {
    server: Arc<DirectServer>,
    uid: u32,
    serial: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.server.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_uid.remove(&self.uid);
            }
        }
        t.open.remove(&self.serial);
    }
}

impl DirectServer {
    /// No connections yet.
    pub fn new() -> Arc<DirectServer> {
        Arc::new(DirectServer::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned lock only means a panic mid-update of counters; they stay usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Direct connections counted now (open, or waiting for their handshake).
    pub fn count(&self) -> usize {
        self.lock().total
    }

    /// A new direct connection for `who`: returns the caller's end of the socketpair, and
    /// serves `iface` (made for this caller) on the other end once the caller's handshake
    /// completes.
    pub fn open<I: Interface>(
        self: &Arc<Self>,
        who: Requester,
        iface: impl FnOnce(Arc<DirectCaller>) -> I,
    ) -> Result<OwnedFd, ServiceError> {
        let uid = who.uid.ok_or_else(|| {
            ServiceError(AppError::AccessDenied(
                Refusal::NoCredentials,
                "the bus could not tell the caller's uid; a direct connection acts as it".into(),
            ))
        })?;
        let slot = self.reserve(uid)?;
        let unavailable = |e: std::io::Error| {
            ServiceError(AppError::Unavailable(format!(
                "could not make a socket pair for a direct connection: {e}"
            )))
        };
        let (mine, theirs) = UnixStream::pair().map_err(unavailable)?;
        mine.set_nonblocking(true).map_err(unavailable)?;
        let mine = tokio::net::UnixStream::from_std(mine).map_err(unavailable)?;
        let mine = DirectSocket::new(mine, uid, &self.budgets).map_err(unavailable)?;
        let caller = Arc::new(DirectCaller::new(who, mine.replies()));
        let iface = iface(Arc::clone(&caller));
        tokio::spawn(serve(mine, uid, iface, slot));
        Ok(OwnedFd::from(theirs))
    }

    fn reserve(self: &Arc<Self>, uid: u32) -> Result<Slot, ServiceError> {
        let mut t = self.lock();
        if t.stopped {
            return Err(ServiceError(AppError::Unavailable(
                "numa-cached is stopping: no new direct connections".into(),
            )));
        }
        let mine = t.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_PER_UID {
            return Err(ServiceError(AppError::Unavailable(format!(
                "uid {uid} already holds {mine} direct connections, the most one user may: \
                 close one (or reuse it; one connection serves many concurrent calls)"
            ))));
        }
        if t.total >= MAX_TOTAL {
            return Err(ServiceError(AppError::Unavailable(format!(
                "{} direct connections are open, the most numa-cached serves: use the bus, or \
                 retry once others closed",
                t.total
            ))));
        }
        *t.per_uid.entry(uid).or_default() += 1;
        t.total += 1;
        t.next += 1;
        Ok(Slot {
            server: Arc::clone(self),
            uid,
            serial: t.next,
        })
    }

    /// Close every direct connection and refuse new ones (the daemon's stop).
    pub async fn close_all(&self) {
        let open: Vec<Connection> = {
            let mut t = self.lock();
            t.stopped = true;
            t.open.values().cloned().collect()
        };
        let n = open.len();
        for c in open {
            let _ = c.close().await;
        }
        if n > 0 {
            tracing::info!("closed {n} direct connections");
        }
    }
}

/// Serve `iface` at the root path on `stream` until the peer hangs up or the daemon stops;
/// the slot is given back when this ends.
async fn serve<I: Interface>(socket: DirectSocket, uid: u32, iface: I, slot: Slot) {
    let guid = zbus::Guid::generate();
    let built = zbus::connection::Builder::socket(socket)
        .server(guid)
        .p2p()
        .max_queued(MAX_QUEUED)
        // A SASL EXTERNAL claim must name the opener's uid, or none (the bytes themselves
        // must come from that uid: the socket checks the credentials of every read).
        .user_id(uid)
        .serve_at(ROOT_PATH, iface)
        .build();
    let conn = match tokio::time::timeout(HANDSHAKE_LIMIT, built).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!("a direct connection for uid {uid} failed its handshake: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(
                "a direct connection for uid {uid} was closed: no handshake within {} s",
                HANDSHAKE_LIMIT.as_secs()
            );
            return;
        }
    };
    let stopped = {
        let mut t = slot.server.lock();
        if !t.stopped {
            t.open.insert(slot.serial, conn.clone());
        }
        t.stopped
    };
    if stopped {
        let _ = conn.close().await;
        return;
    }
    conn.closed().await;
    drop(slot);
}

//! The socket a direct connection (OpenDirect) is served over. No bus daemon stands between
//! the peer and numa-cached there, and zbus, given a primary header, allocates and zeroes the
//! whole length it announces (up to 128 MiB) before a body byte has arrived. So the read half
//! follows the stream itself and hands zbus a message's first byte only once that message may
//! be received:
//!
//! - the SASL lines pass through one byte at a time up to the client's `BEGIN`, so no byte
//!   of a message is read before its header can be checked;
//! - a message announcing more than [`MAX_DIRECT_MESSAGE`] bytes closes the connection, with
//!   one log line naming the uid, the length and the limit (larger values go by PutFd);
//! - a message is handed on only once its announced length (at least [`MIN_CHARGE`]) fits
//!   the budget of its uid ([`UID_BUDGET`], shared by that uid's direct connections) and the
//!   budget of all direct connections ([`TOTAL_BUDGET`]); until then the read waits, which
//!   stalls that peer only, and watches the socket: a peer hanging up meanwhile ends the
//!   connection, which gives back all it held. A method call holds its share until its
//!   handler's reply has been written (so a flood of real calls is bounded as well as a
//!   stalled one); a call that asked for no reply is handed to zbus as one that does, so
//!   that it holds its share until its handler ends too, and its reply is not sent. Any
//!   other message holds its share until received in full;
//! - a message let in must arrive in full within [`MESSAGE_LIMIT`], else the connection
//!   closes: a peer that announces and stalls holds its share for that long at most;
//! - file descriptors count too (each [`FD_CHARGE`], so the descriptors a uid has in the
//!   daemon stay far under the unit's `LimitNOFILE`); they must come with a message's first
//!   bytes, as every D-Bus library sends them, at most [`FDS_PER_MESSAGE`] of them (what
//!   PutFd takes; a read has room for no more, so the kernel closes any others unread and
//!   the connection closes), and never during the handshake;
//! - every byte must come from a process of the opener's uid: the socket has SO_PASSCRED,
//!   so the kernel attaches the writer's credentials to each read (and never merges bytes
//!   of two writers in one); bytes of another uid (the descriptor was passed on) close the
//!   connection, with a log line naming both uids. The SASL EXTERNAL claim is then only
//!   checked for consistency by zbus: no claim, or the opener's uid;
//! - each message zbus makes of the bytes is checked before it is handled
//!   ([`Reader::receive_message`]): its descriptors must be those its header announces and
//!   no more than its arguments take (none for a signature without `h`), and its body must
//!   hold exactly the values of its signature (zbus's `Body::validate`): bytes past them,
//!   which the handler would hold for nothing, close the connection;
//! - a call's serial must not repeat one still unanswered on that connection (the budget
//!   gives a call's share back by the serial of its reply);
//! - replies that carry values (Get, GetMany, GetOrLease) count against a second pair of
//!   budgets, [`REPLY_UID_BUDGET`] per uid and [`REPLY_TOTAL_BUDGET`] in all: the handler
//!   takes room for the reply before it reads the value ([`Replies::reserve`]; what the
//!   values take by the entry map, read again with the new size if a Put grew them), keeps
//!   what the reply needs with its call, and gives it back once the reply has been
//!   written. A GetFd reply's memfd (its size, at least [`FD_CHARGE`]) is held until the
//!   peer has *read* it ([`Reply::keep_until_read`]): until the socket's unread bytes
//!   (`SIOCOUTQ`, [`crate::policy::sockq`]) reach 0, looked at before each message sent and
//!   by a task backing off from 10 ms to 1 s, even after the connection ended (the unread
//!   messages stay in the peer's socket until it reads them or closes it). A peer that never
//!   reads its socket so makes the daemon hold at most that many bytes of replies and
//!   memfds, however many calls it pipelines; once it hangs up, its calls
//!   still waiting for room give up without reading their values. They are separate from the
//!   message budgets so that calls holding the whole message budget, each waiting for room
//!   for its reply, cannot wait on each other forever.
//!
//! Bytes, file descriptors and the writer's credentials go through `recvmsg`/`sendmsg` on
//! the tokio socket (rustix, no `unsafe`).

use crate::app::budget::PerUid;
use crate::policy::sockq;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use zbus::Message;
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};
use zbus::export::async_trait::async_trait;
use zbus::message::Type;

/// The largest message a direct connection accepts: what the system bus accepts by default
/// (dbus-daemon's `max_message_size`), so every call that fits the bus fits here. The
/// largest legit call is a PutMany of 16 MiB of values and 1024 keys (about 17 MiB); Put
/// sends values of 1 MiB and more by PutFd unless its caller says otherwise.
pub const MAX_DIRECT_MESSAGE: u64 = 32 << 20;
/// Bytes of messages one uid's direct connections may have in the daemon at once (being
/// received, or calls not yet answered): two of the largest.
pub const UID_BUDGET: u64 = 2 * MAX_DIRECT_MESSAGE;
/// Bytes of messages all direct connections together may have in the daemon at once.
pub const TOTAL_BUDGET: u64 = 8 * MAX_DIRECT_MESSAGE;
/// Bytes of replies one uid's direct connections may hold in the daemon at once (values
/// read for a Get, GetMany or GetOrLease and not yet written): four of the largest (16 MiB,
/// `max_inline_bytes`), thousands of small ones.
pub const REPLY_UID_BUDGET: u64 = 64 << 20;
/// Bytes of replies all direct connections together may hold at once.
pub const REPLY_TOTAL_BUDGET: u64 = 256 << 20;
/// The least a message is charged, for what the daemon keeps per call besides its bytes
/// (so tiny calls cannot pile up unbounded bookkeeping either).
pub const MIN_CHARGE: u64 = 64 << 10;

/// How long a message let in may take to arrive in full (a client writes it at once).
pub const MESSAGE_LIMIT: Duration = Duration::from_secs(10);

/// What one file descriptor counts against the budgets (a direct call takes at most one:
/// PutFd): a uid has at most 64 in the daemon at once, all uids 256.
pub const FD_CHARGE: u64 = 1 << 20;

/// The longest SASL line accepted (zbus's client sends lines of under 100 bytes).
const SASL_LINE_MAX: usize = 4096;
/// The most file descriptors one message may carry: what the call taking the most takes
/// (PutFd, one). One `recvmsg` has room for no more, so the kernel closes any others sent
/// with the same bytes before they reach the daemon's table (and flags the read truncated).
pub const FDS_PER_MESSAGE: usize = 1;
/// The D-Bus primary header: endianness, type, flags, version, body length, serial,
/// header-fields length.
const PRIMARY_HEADER: usize = 16;
/// The flag of a method call that wants no reply.
const NO_REPLY_EXPECTED: u8 = 0x1;
/// The type byte of a method call.
const METHOD_CALL: u8 = 1;

/// A primary header, as far as the budget needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The whole message's length: 16 + header fields rounded up to 8 + body.
    pub total: u64,
    /// Its serial.
    pub serial: u32,
    /// A method call that expects a reply.
    pub wants_reply: bool,
    /// A method call, expecting a reply or not.
    pub call: bool,
}

/// The framing of the message `h` opens, or what is wrong with it.
pub fn parse_primary_header(h: &[u8; PRIMARY_HEADER]) -> io::Result<Framing> {
    let word = |at: usize| {
        let b = [h[at], h[at + 1], h[at + 2], h[at + 3]];
        match h[0] {
            b'l' => Ok(u32::from_le_bytes(b)),
            b'B' => Ok(u32::from_be_bytes(b)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a message starts with endianness byte {other:#04x}, not 'l' or 'B'"),
            )),
        }
    };
    let body = u64::from(word(4)?);
    let serial = word(8)?;
    let fields = u64::from(word(12)?);
    let header = PRIMARY_HEADER as u64 + fields;
    Ok(Framing {
        total: header.next_multiple_of(8) + body,
        serial,
        wants_reply: h[1] == METHOD_CALL && h[2] & NO_REPLY_EXPECTED == 0,
        call: h[1] == METHOD_CALL,
    })
}

/// Where the read half is in the stream.
#[derive(Debug)]
enum Phase {
    /// In the SASL handshake, in the middle of a line (`line`, bounded), the first line
    /// being the one that starts with the NUL byte.
    Sasl { line: Vec<u8>, first: bool },
    /// At a message boundary, `got` bytes of the next primary header read into `header`.
    Header {
        header: [u8; PRIMARY_HEADER],
        got: usize,
    },
    /// A message admitted: its header, `given` bytes of it handed on so far, `body` bytes
    /// still to read after it, and its share of the budgets.
    Message {
        header: [u8; PRIMARY_HEADER],
        given: usize,
        body: u64,
        framing: Framing,
        share: Option<Share>,
        deadline: tokio::time::Instant,
    },
}

/// What a SASL line the client sent means for the stream.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Not finished yet.
    Partial,
    /// A whole line other than BEGIN.
    Other,
    /// BEGIN: messages follow.
    Begin,
}

/// Add `b` to the SASL line being read: whether it ends the line, and whether that line is
/// BEGIN as zbus reads it (first word, after the NUL that opens the first line).
fn sasl_byte(line: &mut Vec<u8>, first: &mut bool, b: u8) -> io::Result<Line> {
    if line.len() >= SASL_LINE_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a handshake line is longer than {SASL_LINE_MAX} bytes"),
        ));
    }
    line.push(b);
    if b != b'\n' {
        return Ok(Line::Partial);
    }
    let Some(text) = line.strip_suffix(b"\r\n") else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a handshake line ends in LF without CR",
        ));
    };
    let text = match (*first, text.split_first()) {
        (true, Some((0, rest))) => rest,
        _ => text,
    };
    let begin = text
        .split(|c| c.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        == Some(b"BEGIN".as_slice());
    line.clear();
    *first = false;
    Ok(if begin { Line::Begin } else { Line::Other })
}

/// The budgets of direct connections: one per uid, and one for all.
#[derive(Debug)]
pub struct Budgets {
    per_uid: PerUid,
    uid_bytes: u64,
    total: Arc<Semaphore>,
    message_limit: Duration,
    /// Of replies: per uid, and for all.
    replies_per_uid: PerUid,
    replies_total: Arc<Semaphore>,
    reply_uid_bytes: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::new(UID_BUDGET, TOTAL_BUDGET)
    }
}

impl Budgets {
    /// Budgets of `uid_bytes` per uid and `total_bytes` in all.
    pub fn new(uid_bytes: u64, total_bytes: u64) -> Budgets {
        Budgets::with_replies(uid_bytes, total_bytes, REPLY_UID_BUDGET, REPLY_TOTAL_BUDGET)
    }

    /// Budgets of `uid_bytes` per uid and `total_bytes` in all for messages, and of
    /// `reply_uid_bytes` and `reply_total_bytes` for replies.
    pub fn with_replies(
        uid_bytes: u64,
        total_bytes: u64,
        reply_uid_bytes: u64,
        reply_total_bytes: u64,
    ) -> Budgets {
        Budgets {
            per_uid: PerUid::new(units(uid_bytes)),
            uid_bytes,
            total: Arc::new(Semaphore::new(units(total_bytes))),
            message_limit: MESSAGE_LIMIT,
            replies_per_uid: PerUid::new(units(reply_uid_bytes.min(reply_total_bytes))),
            replies_total: Arc::new(Semaphore::new(units(reply_total_bytes))),
            reply_uid_bytes: reply_uid_bytes.min(reply_total_bytes),
        }
    }

    /// The message budget of `uid`, shared by its connections while any holds it.
    fn of_uid(&self, uid: u32) -> Arc<Semaphore> {
        self.per_uid.of(uid)
    }

    /// The reply budget of `uid`, shared likewise.
    fn replies_of_uid(&self, uid: u32) -> Arc<Semaphore> {
        self.replies_per_uid.of(uid)
    }
}

/// Semaphore permits count KiB, so that any budget fits a u32 request.
fn units(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX >> 4)
}

/// A message's share of its uid's budget and of the total, given back when dropped.
#[derive(Debug)]
struct Share {
    _uid: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Share {
    /// The KiB it holds.
    fn units(&self) -> usize {
        self._uid.num_permits()
    }

    /// Give back all but `keep` KiB of it.
    fn shrink_to(&mut self, keep: usize) {
        let extra = self.units().saturating_sub(keep);
        if extra > 0 {
            drop((self._uid.split(extra), self._total.split(extra)));
        }
    }
}

/// Take `bytes` (rounded up to KiB) of `uid` and then of `total`, waiting until they fit.
async fn acquire(uid: &Arc<Semaphore>, total: &Arc<Semaphore>, bytes: u64) -> io::Result<Share> {
    let n = u32::try_from(units(bytes))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a message too large to count"))?;
    let closed = |_| io::Error::other("the direct-connection budget is closed");
    let uid = Arc::clone(uid)
        .acquire_many_owned(n)
        .await
        .map_err(closed)?;
    let total = Arc::clone(total)
        .acquire_many_owned(n)
        .await
        .map_err(closed)?;
    Ok(Share {
        _uid: uid,
        _total: total,
    })
}

/// A method call received and not answered yet: its share, and the room kept for its reply.
#[derive(Debug)]
struct Pending {
    serial: u32,
    /// The call asked for no reply: zbus was handed it as one that does (so that the share
    /// is held until its handler ends), and the reply is not sent.
    silent: bool,
    _call: Share,
    reply: Option<Share>,
    /// The reply carries a memfd: its share is held until the peer has read it.
    until_read: bool,
}

/// How often a connection with memfd replies its peer has not read yet looks whether it
/// has, at first; the wait doubles up to [`UNREAD_POLL_MAX`].
const UNREAD_POLL: Duration = Duration::from_millis(10);
/// The longest wait between two looks.
const UNREAD_POLL_MAX: Duration = Duration::from_secs(1);

/// Shares of replies written that carried memfds the peer has not read yet, and whether a
/// task is watching for the peer to read them. Outlives the connection: a peer's unread
/// messages (and the memfds they carry) stay in its socket after the daemon's end is
/// closed, until the peer reads them or closes its end.
#[derive(Debug, Default)]
struct Unread {
    shares: Vec<Share>,
    watching: bool,
}

/// What one direct connection holds: its uid's budgets, and the shares of the method calls
/// it has not answered yet (by serial). Shared by both halves; dropped with them, and
/// emptied (`closed`) once the read half is gone.
#[derive(Debug)]
struct Ledger {
    uid: u32,
    message_limit: Duration,
    /// The uid's whole message budget: a message charged more could never be let in.
    uid_bytes: u64,
    uid_budget: Arc<Semaphore>,
    total: Arc<Semaphore>,
    reply_uid: Arc<Semaphore>,
    reply_total: Arc<Semaphore>,
    reply_uid_bytes: u64,
    unanswered: Mutex<Vec<Pending>>,
    /// True once the read half is gone (the connection is over): reply reservations still
    /// waiting give up.
    closed: watch::Sender<bool>,
}

impl Ledger {
    /// Wait until `bytes` (at least [`MIN_CHARGE`]) fit both message budgets, and take them.
    async fn reserve(&self, bytes: u64) -> io::Result<Share> {
        acquire(&self.uid_budget, &self.total, bytes.max(MIN_CHARGE)).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.unanswered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call with `serial` is still unanswered.
    fn unanswered(&self, serial: u32) -> bool {
        self.lock().iter().any(|p| p.serial == serial)
    }

    /// A message has been received in full: a call keeps its share until answered (one
    /// that asked for no reply, until its handler's reply, which is not sent).
    fn received(&self, framing: Framing, share: Share) {
        if framing.call {
            self.lock().push(Pending {
                serial: framing.serial,
                silent: !framing.wants_reply,
                _call: share,
                reply: None,
                until_read: false,
            });
        }
    }

    /// The reply to `serial` will need `share`: held with the call until it is written, or
    /// (`until_read`) until the peer has read it (given back now if the call expects no
    /// reply or the connection is over).
    fn keep_reply(&self, serial: u32, share: Share, until_read: bool) {
        let mut v = self.lock();
        if let Some(p) = v.iter_mut().find(|p| p.serial == serial) {
            p.reply = Some(share);
            p.until_read = until_read;
        }
    }

    /// The reply to `serial` is to a call that asked for none: give back its shares; true
    /// when so (the reply is not to be sent).
    fn take_silent(&self, serial: u32) -> bool {
        let pending = {
            let mut v = self.lock();
            v.iter()
                .position(|p| p.serial == serial && p.silent)
                .map(|i| v.swap_remove(i))
        };
        pending.is_some()
    }

    /// A reply to `serial` has been written: give back that call's share and its reply's,
    /// but for a reply held until read, whose share is returned.
    fn answered(&self, serial: u32) -> Option<Share> {
        let pending = {
            let mut v = self.lock();
            v.iter()
                .position(|p| p.serial == serial)
                .map(|i| v.swap_remove(i))
        };
        pending.and_then(|p| if p.until_read { p.reply } else { None })
    }

    /// The read half is gone: give back every share, and stop reply reservations waiting.
    fn close(&self) {
        let all = std::mem::take(&mut *self.lock());
        self.closed.send_replace(true);
        drop(all);
    }
}

/// A handle on a direct connection's reply budget, for the handlers that return values
/// (see the module). Holds no budget itself, and does not keep the connection's ledger.
#[derive(Debug, Clone)]
pub struct Replies {
    ledger: Weak<Ledger>,
    uid: Arc<Semaphore>,
    total: Arc<Semaphore>,
    most: u64,
    closed: watch::Receiver<bool>,
}

impl Replies {
    /// Wait until `bytes` of reply fit the uid's and the total reply budget, and take them;
    /// a call needing more than the uid's whole reply budget is charged that budget. An
    /// error when the connection closes meanwhile.
    pub async fn reserve(&self, bytes: u64) -> io::Result<Reply> {
        let mut closed = self.closed.clone();
        tokio::select! {
            // A connection that ended gets nothing, even when its end freed the room.
            biased;
            _ = closed.wait_for(|c| *c) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the direct connection closed while its reply waited for room",
            )),
            share = acquire(&self.uid, &self.total, bytes.min(self.most)) => Ok(Reply {
                share: share?,
                ledger: Weak::clone(&self.ledger),
            }),
        }
    }
}

/// Room taken for one reply ([`Replies::reserve`]); given back when dropped, unless kept
/// for its call.
#[derive(Debug)]
pub struct Reply {
    share: Share,
    ledger: Weak<Ledger>,
}

impl Reply {
    /// The bytes of reply it holds (what was asked, rounded up to KiB, at most the uid's
    /// reply budget).
    pub fn bytes(&self) -> u64 {
        self.share.units() as u64 * 1024
    }

    /// The reply to the call `serial` will be `bytes` long: keep that much (at most what
    /// was taken) until the reply is written, and give back the rest now.
    pub fn keep(mut self, serial: u32, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.share.shrink_to(units(bytes));
        if let Some(ledger) = self.ledger.upgrade() {
            ledger.keep_reply(serial, self.share, false);
        }
    }

    /// The reply to the call `serial` carries a memfd of `bytes` (counted at least
    /// [`FD_CHARGE`], as a descriptor received is): keep that much (at most what was
    /// taken) until the peer has read the reply, even past the connection's end, so that
    /// memfds a peer leaves unread in its socket stay within the reply budget.
    pub fn keep_until_read(mut self, serial: u32, bytes: u64) {
        self.share.shrink_to(units(bytes.max(FD_CHARGE)));
        if let Some(ledger) = self.ledger.upgrade() {
            ledger.keep_reply(serial, self.share, true);
        }
    }
}

/// One end of a direct connection's socket pair, served with the framing above.
#[derive(Debug)]
pub struct DirectSocket {
    stream: Arc<UnixStream>,
    ledger: Arc<Ledger>,
}

impl DirectSocket {
    /// `stream` (the daemon's end, non-blocking, in this tokio runtime, not read yet) for
    /// `uid`, the opener, drawing on `budgets`. The kernel is asked to tell the sender of
    /// every byte read from it (SO_PASSCRED), which must be of `uid`.
    pub fn new(stream: UnixStream, uid: u32, budgets: &Budgets) -> io::Result<DirectSocket> {
        rustix::net::sockopt::set_socket_passcred(&stream, true)?;
        Ok(DirectSocket {
            stream: Arc::new(stream),
            ledger: Arc::new(Ledger {
                uid,
                message_limit: budgets.message_limit,
                uid_bytes: budgets.uid_bytes,
                uid_budget: budgets.of_uid(uid),
                total: Arc::clone(&budgets.total),
                reply_uid: budgets.replies_of_uid(uid),
                reply_total: Arc::clone(&budgets.replies_total),
                reply_uid_bytes: budgets.reply_uid_bytes,
                unanswered: Mutex::new(Vec::new()),
                closed: watch::Sender::new(false),
            }),
        })
    }

    /// The handle on this connection's reply budget its handlers reserve from.
    pub fn replies(&self) -> Replies {
        Replies {
            ledger: Arc::downgrade(&self.ledger),
            uid: Arc::clone(&self.ledger.reply_uid),
            total: Arc::clone(&self.ledger.reply_total),
            most: self.ledger.reply_uid_bytes,
            closed: self.ledger.closed.subscribe(),
        }
    }
}

impl Socket for DirectSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        let reader = Reader {
            framed: Framed {
                stream: Arc::clone(&self.stream),
                ledger: Arc::clone(&self.ledger),
                phase: Phase::Sasl {
                    line: Vec::new(),
                    first: true,
                },
                fds: Vec::new(),
            },
        };
        let writer = Writer {
            stream: self.stream,
            ledger: self.ledger,
            unread: Arc::default(),
        };
        Split::new(reader, writer)
    }
}

/// The read half: the stream followed byte by byte ([`Framed`]), and each message zbus
/// makes of it checked before it is handled (see the module).
#[derive(Debug)]
pub struct Reader {
    framed: Framed,
}

/// Follows the stream (see the module), handing zbus its bytes.
#[derive(Debug)]
struct Framed {
    stream: Arc<UnixStream>,
    ledger: Arc<Ledger>,
    phase: Phase,
    /// Descriptors read with header bytes not yet handed on.
    fds: Vec<OwnedFd>,
}

/// What one read brought.
struct Received {
    bytes: usize,
    fds: Vec<OwnedFd>,
    /// The sender's credentials, as the kernel attached them (SO_PASSCRED).
    sender: Option<rustix::net::UCred>,
    /// More descriptors came than a read has room for: the kernel closed the rest.
    truncated: bool,
}

/// Log that the peer of `uid`'s direct connection `did` something a direct connection
/// refuses; the error that closes the connection.
fn refuse(uid: u32, did: &str) -> io::Error {
    tracing::warn!("a direct connection of uid {uid} {did}: closing it");
    io::Error::new(io::ErrorKind::InvalidData, format!("the peer {did}"))
}

/// Read up to `buf.len()` bytes (at least one) from `ledger`'s connection, and the
/// descriptors sent with them. The peer hanging up is an error, as zbus's own sockets have
/// it; so are bytes written by a process of another uid than the opener's (the descriptor
/// was passed on), and more descriptors than a message may carry.
async fn recv(
    stream: &UnixStream,
    ledger: &Ledger,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let got = stream
        .async_io(Interest::READABLE, || fd_recvmsg(stream.as_fd(), buf))
        .await?;
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the peer of a direct connection hung up",
        ));
    }
    let uid = ledger.uid;
    match got.sender.map(|c| c.uid.as_raw()) {
        Some(sender) if sender == uid => (),
        Some(sender) => {
            return Err(refuse(
                uid,
                &format!(
                    "was written to by a process of uid {sender}, not by the opener's \
                     (uid {uid}): its descriptor was passed on"
                ),
            ));
        }
        None => return Err(refuse(uid, "sent bytes without the sender's credentials")),
    }
    if got.truncated {
        return Err(refuse(
            uid,
            &format!(
                "sent more than {FDS_PER_MESSAGE} file descriptor with one message, the most a \
                 call takes (the rest were closed unread)"
            ),
        ));
    }
    Ok((got.bytes, got.fds))
}

/// Resolves once the peer of `stream` has hung up (bytes it sent and the daemon has not
/// read yet do not count), or the socket fails: for a read waiting for room in the
/// budgets, which reads nothing meanwhile. It watches a duplicate of the descriptor, a
/// registration of its own, so that forgetting the readiness of bytes waiting (to sleep
/// until the next event: more bytes, or the hang-up) leaves the stream's own readiness as
/// it is for the read that follows.
async fn hung_up(stream: &UnixStream) -> io::Error {
    let watch = match stream
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)))
    {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        match watch.ready(Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => {
                return io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the peer of a direct connection hung up while a message waited for room",
                );
            }
            Ok(_) => {
                let _ = watch.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(e) => return e,
        }
    }
}

impl Drop for Framed {
    fn drop(&mut self) {
        // zbus drops the read half when the connection ends (the peer hung up, or was
        // refused): nothing it holds can be answered usefully any more.
        self.ledger.close();
    }
}

impl Framed {
    fn refuse(&self, did: &str) -> io::Error {
        refuse(self.ledger.uid, did)
    }

    /// The primary header `h` just read in full, with `self.fds` sent with it: the
    /// message's phase once it may be received, after waiting for room in the budgets
    /// (while noticing the peer hanging up); an error that closes the connection if it
    /// never may.
    async fn admit(&mut self, mut h: [u8; PRIMARY_HEADER]) -> io::Result<Phase> {
        let framing = parse_primary_header(&h)?;
        if framing.total > MAX_DIRECT_MESSAGE {
            return Err(self.refuse(&format!(
                "announced a message of {} bytes, more than the {MAX_DIRECT_MESSAGE} a direct \
                 connection accepts (larger values go by PutFd)",
                framing.total
            )));
        }
        if framing.call && self.ledger.unanswered(framing.serial) {
            return Err(self.refuse(&format!(
                "sent a call with serial {}, which an unanswered call has",
                framing.serial
            )));
        }
        let charge = framing.total.max(MIN_CHARGE) + self.fds.len() as u64 * FD_CHARGE;
        if charge > self.ledger.uid_bytes {
            return Err(self.refuse(&format!(
                "sent a message of {} bytes with {} file descriptors, more than its uid's whole \
                 budget of {} bytes",
                framing.total,
                self.fds.len(),
                self.ledger.uid_bytes
            )));
        }
        // Nothing of the message reaches zbus (which would allocate all of it) before its
        // length fits the budgets.
        let share = tokio::select! {
            biased;
            share = self.ledger.reserve(charge) => share?,
            e = hung_up(&self.stream) => return Err(e),
        };
        // A call that wants no reply is handed on as one that does: its reply, which is not
        // sent, tells when its handler is done with it, and so when its share comes back.
        if framing.call {
            h[2] &= !NO_REPLY_EXPECTED;
        }
        Ok(Phase::Message {
            header: h,
            given: 0,
            body: framing.total - PRIMARY_HEADER as u64,
            framing,
            share: Some(share),
            deadline: tokio::time::Instant::now() + self.ledger.message_limit,
        })
    }
}

#[async_trait]
impl ReadHalf for Framed {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if buf.is_empty() {
            return Ok((0, Vec::new()));
        }
        loop {
            match &mut self.phase {
                Phase::Sasl { line, first } => {
                    let (n, fds) = recv(&self.stream, &self.ledger, &mut buf[..1]).await?;
                    if !fds.is_empty() {
                        return Err(self.refuse("sent file descriptors during the handshake"));
                    }
                    if sasl_byte(line, first, buf[0])? == Line::Begin {
                        self.phase = Phase::Header {
                            header: [0; PRIMARY_HEADER],
                            got: 0,
                        };
                    }
                    return Ok((n, fds));
                }
                Phase::Header { header, got } => {
                    let mut h = *header;
                    let at = *got;
                    let (n, fds) = recv(&self.stream, &self.ledger, &mut h[at..]).await?;
                    self.fds.extend(fds);
                    if self.fds.len() > FDS_PER_MESSAGE {
                        return Err(self.refuse(&format!(
                            "sent {} file descriptors with one message, more than the \
                             {FDS_PER_MESSAGE} a call takes",
                            self.fds.len()
                        )));
                    }
                    if at + n < PRIMARY_HEADER {
                        self.phase = Phase::Header {
                            header: h,
                            got: at + n,
                        };
                        continue;
                    }
                    self.phase = self.admit(h).await?;
                }
                Phase::Message {
                    header,
                    given,
                    body,
                    framing,
                    share,
                    deadline,
                } => {
                    let (n, fds) = if *given < PRIMARY_HEADER {
                        let n = (PRIMARY_HEADER - *given).min(buf.len());
                        buf[..n].copy_from_slice(&header[*given..*given + n]);
                        *given += n;
                        (n, std::mem::take(&mut self.fds))
                    } else {
                        let want = usize::try_from(*body).unwrap_or(usize::MAX).min(buf.len());
                        let read = recv(&self.stream, &self.ledger, &mut buf[..want]);
                        let Ok(got) = tokio::time::timeout_at(*deadline, read).await else {
                            tracing::warn!(
                                "a direct connection of uid {} sent {} of the {} bytes of a \
                                 message in {} s: closing it",
                                self.ledger.uid,
                                framing.total - *body,
                                framing.total,
                                self.ledger.message_limit.as_secs_f32()
                            );
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "a message not received in full within {} s",
                                    self.ledger.message_limit.as_secs_f32()
                                ),
                            ));
                        };
                        let (n, fds) = got?;
                        if !fds.is_empty() {
                            return Err(self.refuse(
                                "sent file descriptors after the first bytes of a message",
                            ));
                        }
                        *body -= n as u64;
                        (n, fds)
                    };
                    if *given == PRIMARY_HEADER && *body == 0 {
                        if let Some(share) = share.take() {
                            self.ledger.received(*framing, share);
                        }
                        self.phase = Phase::Header {
                            header: [0; PRIMARY_HEADER],
                            got: 0,
                        };
                    }
                    return Ok((n, fds));
                }
            }
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }
}

/// What is wrong with `msg`, a message a peer sent in full, for a direct connection: its
/// descriptors are not those its header announces or more than its arguments take, or its
/// body does not hold exactly the values of its signature (bytes past them would be held
/// by the handler for nothing). None when it may be handled.
fn misfit(msg: &Message) -> Option<String> {
    let header = msg.header();
    let carried = msg.data().fds().len();
    let announced = header.unix_fds().unwrap_or(0) as usize;
    if carried != announced {
        return Some(format!(
            "sent {carried} file descriptors with a message whose header announces {announced}"
        ));
    }
    let signature = header.signature().to_string();
    let takes = signature.matches('h').count().min(FDS_PER_MESSAGE);
    if carried > takes {
        return Some(format!(
            "sent {carried} file descriptors with a message of signature {signature:?}, which \
             takes {takes}"
        ));
    }
    match msg.body().validate() {
        Ok(()) => None,
        Err(zbus::Error::ExcessData) => Some(format!(
            "sent a message of {} bytes with bytes past its arguments (signature {signature:?})",
            msg.data().len()
        )),
        Err(e) => Some(format!(
            "sent a message whose body does not hold the values of its signature \
             {signature:?}: {e}"
        )),
    }
}

#[async_trait]
impl ReadHalf for Reader {
    async fn receive_message(
        &mut self,
        seq: u64,
        already_received_bytes: &mut Vec<u8>,
        already_received_fds: &mut Vec<OwnedFd>,
    ) -> zbus::Result<Message> {
        let msg = self
            .framed
            .receive_message(seq, already_received_bytes, already_received_fds)
            .await?;
        match misfit(&msg) {
            None => Ok(msg),
            Some(did) => Err(self.framed.refuse(&did).into()),
        }
    }

    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        self.framed.recvmsg(buf).await
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        peer_credentials(&self.framed.stream)
    }
}

/// The write half: sends, and gives back the share of each call it answers.
#[derive(Debug)]
pub struct Writer {
    stream: Arc<UnixStream>,
    ledger: Arc<Ledger>,
    unread: Arc<Mutex<Unread>>,
}

impl Writer {
    /// The share of a reply just written that the peer must read before it is given back:
    /// held with the others until the socket's unread bytes reach 0, which a task watches
    /// for (started if none is).
    fn hold_until_read(&self, share: Share) {
        let mut u = self.unread.lock().unwrap_or_else(|p| p.into_inner());
        u.shares.push(share);
        if u.watching {
            return;
        }
        u.watching = true;
        let (stream, unread) = (Arc::clone(&self.stream), Arc::clone(&self.unread));
        tokio::spawn(async move {
            let mut wait = UNREAD_POLL;
            loop {
                tokio::time::sleep(wait).await;
                if give_back_if_read(&stream, &unread, true) {
                    return;
                }
                wait = (wait * 2).min(UNREAD_POLL_MAX);
            }
        });
    }
}

/// Give back the shares in `unread` once the peer has read all `stream` sent (or the
/// count cannot be had: nothing to hold then); true when it did. `task`: the watching task
/// asks, and stops when true.
fn give_back_if_read(stream: &UnixStream, unread: &Mutex<Unread>, task: bool) -> bool {
    let mut u = unread.lock().unwrap_or_else(|p| p.into_inner());
    if u.shares.is_empty() {
        // Given back by a look before a send: the task has nothing left to watch.
        if task {
            u.watching = false;
        }
        return task;
    }
    // Under the lock: a share pushed before this look is of a reply written before it.
    let read = sockq::unread_by_peer(stream.as_fd()).map_or(true, |n| n == 0);
    if read {
        u.shares.clear();
        if task {
            u.watching = false;
        }
    }
    read
}

#[async_trait]
impl WriteHalf for Writer {
    async fn send_message(&mut self, msg: &Message) -> zbus::Result<()> {
        let reply_to = match msg.message_type() {
            Type::MethodReturn | Type::Error => msg.header().reply_serial(),
            _ => None,
        };
        // The handler of a call that asked for no reply is done: its shares come back, and
        // the reply stays here.
        if let Some(serial) = reply_to
            && self.ledger.take_silent(serial.get())
        {
            return Ok(());
        }
        // Before this message goes out: memfds of earlier replies the peer has read by now.
        give_back_if_read(&self.stream, &self.unread, false);
        let data = msg.data();
        let mut pos = 0;
        let mut sent = Ok(());
        while pos < data.len() {
            let fds: Vec<BorrowedFd<'_>> = if pos == 0 {
                data.fds().iter().map(|f| f.as_fd()).collect()
            } else {
                Vec::new()
            };
            match self.sendmsg(&data[pos..], &fds).await {
                Ok(n) => pos += n,
                Err(e) => {
                    sent = Err(e.into());
                    break;
                }
            }
        }
        // Given back once written (or failed): a peer that does not read its replies keeps
        // its own budget taken, no one else's.
        if let Some(serial) = reply_to
            && let Some(share) = self.ledger.answered(serial.get())
            && sent.is_ok()
        {
            self.hold_until_read(share);
        }
        sent
    }

    async fn sendmsg(&mut self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let stream = &self.stream;
        stream
            .async_io(Interest::WRITABLE, || {
                crate::policy::scm::send_with_fds(stream.as_fd(), buf, fds)
            })
            .await
    }

    async fn close(&mut self) -> io::Result<()> {
        match rustix::net::shutdown(self.stream.as_fd(), rustix::net::Shutdown::Both) {
            Err(rustix::io::Errno::NOTCONN) => Ok(()),
            r => Ok(r?),
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        peer_credentials(&self.stream)
    }
}

/// The uid and pid of the process at the other end (SO_PEERCRED).
fn peer_credentials(stream: &UnixStream) -> io::Result<zbus::fdo::ConnectionCredentials> {
    let cred = rustix::net::sockopt::socket_peercred(stream.as_fd())?;
    let creds = zbus::fdo::ConnectionCredentials::default().set_unix_user_id(cred.uid.as_raw());
    Ok(match u32::try_from(cred.pid.as_raw_nonzero().get()) {
        Ok(pid) => creds.set_process_id(pid),
        Err(_) => creds,
    })
}

/// recvmsg(2) of bytes into `buf`, of the descriptors sent with them (room for
/// [`FDS_PER_MESSAGE`]: the kernel closes any more, and says so), and of the sender's
/// credentials (on a socket with SO_PASSCRED).
fn fd_recvmsg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut iov = [IoSliceMut::new(buf)];
    let mut space =
        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut got = Received {
        bytes: msg.bytes,
        fds: Vec::new(),
        sender: None,
        truncated: msg.flags.contains(rustix::net::ReturnFlags::CTRUNC),
    };
    for m in control.drain() {
        match m {
            RecvAncillaryMessage::ScmRights(fds) => got.fds.extend(fds),
            RecvAncillaryMessage::ScmCredentials(c) => got.sender = Some(c),
            _ => (),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(endian: u8, body: u32, serial: u32, fields: u32) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0] = endian;
        h[1] = METHOD_CALL;
        h[3] = 1;
        let w = |v: u32| {
            if endian == b'B' {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        h[4..8].copy_from_slice(&w(body));
        h[8..12].copy_from_slice(&w(serial));
        h[12..16].copy_from_slice(&w(fields));
        h
    }

    #[test]
    fn the_total_length_is_the_header_fields_padded_to_8_plus_the_body() {
        let f = parse_primary_header(&header(b'l', 100, 7, 5)).unwrap();
        assert_eq!((f.total, f.serial, f.wants_reply), (24 + 100, 7, true));
        let f = parse_primary_header(&header(b'l', 0, 1, 8)).unwrap();
        assert_eq!(f.total, 24);
        let f = parse_primary_header(&header(b'l', 3, 1, 0)).unwrap();
        assert_eq!(f.total, 19);
    }

    #[test]
    fn big_endian_headers_are_read_big_endian() {
        let f = parse_primary_header(&header(b'B', 0x0100_0000, 0x0200_0000, 0)).unwrap();
        assert_eq!((f.total, f.serial), (16 + (1 << 24), 1 << 25));
    }

    #[test]
    fn a_length_field_of_2_pow_32_minus_1_does_not_overflow_and_is_over_the_limit() {
        let f = parse_primary_header(&header(b'l', u32::MAX, 1, u32::MAX)).unwrap();
        assert_eq!(
            f.total,
            (16 + u64::from(u32::MAX)).next_multiple_of(8) + 0xffff_ffff
        );
        assert!(f.total > MAX_DIRECT_MESSAGE);
    }

    #[test]
    fn a_bad_endianness_byte_is_refused_and_flags_decide_the_reply() {
        assert!(parse_primary_header(&header(b'x', 1, 1, 0)).is_err());
        let mut h = header(b'l', 1, 1, 0);
        h[2] = NO_REPLY_EXPECTED;
        assert!(!parse_primary_header(&h).unwrap().wants_reply);
        h[2] = 0;
        h[1] = 4; // a signal
        assert!(!parse_primary_header(&h).unwrap().wants_reply);
    }

    fn feed(bytes: &[u8]) -> io::Result<Vec<Line>> {
        let (mut line, mut first) = (Vec::new(), true);
        bytes
            .iter()
            .map(|b| sasl_byte(&mut line, &mut first, *b))
            .filter(|l| !matches!(l, Ok(Line::Partial)))
            .collect()
    }

    #[test]
    fn the_sasl_lines_end_at_begin_as_zbus_reads_it() {
        assert_eq!(
            feed(b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n").unwrap(),
            [Line::Other, Line::Other, Line::Begin]
        );
        assert_eq!(
            feed(b"\0AUTH EXTERNAL 30\r\n  BEGIN  extra\r\n").unwrap(),
            [Line::Other, Line::Begin]
        );
        // BEGIN as the first line, after the NUL byte: zbus parses it as BEGIN too.
        assert_eq!(feed(b"\0BEGIN\r\n").unwrap(), [Line::Begin]);
        assert_eq!(
            feed(b"\0AUTH\r\nBEGINX\r\n").unwrap(),
            [Line::Other, Line::Other]
        );
    }

    #[test]
    fn a_sasl_line_without_cr_or_too_long_is_refused() {
        assert!(feed(b"\0AUTH\n").is_err());
        assert!(feed(b"\n").is_err());
        assert!(feed(&vec![b'A'; SASL_LINE_MAX + 1]).is_err());
    }

    /// The uid of this test, the opener of its direct sockets (the writer of their bytes).
    fn me() -> u32 {
        rustix::process::getuid().as_raw()
    }

    /// Both ends of a direct socket opened by this test's uid with small budgets; the peer
    /// end is a plain socket written to by hand.
    fn pair(uid_bytes: u64) -> (Framed, Writer, std::os::unix::net::UnixStream, Arc<Budgets>) {
        let (r, w, peer, budgets, _) = pair_with_replies(uid_bytes, 1 << 20);
        (r, w, peer, budgets)
    }

    /// As [`pair`], with a reply budget of `reply_bytes` for the uid, and its handle.
    fn pair_with_replies(
        uid_bytes: u64,
        reply_bytes: u64,
    ) -> (
        Framed,
        Writer,
        std::os::unix::net::UnixStream,
        Arc<Budgets>,
        Replies,
    ) {
        let (mine, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        let mut budgets = Budgets::with_replies(uid_bytes, 1 << 30, reply_bytes, 1 << 30);
        budgets.message_limit = Duration::from_millis(300);
        let budgets = Arc::new(budgets);
        let s = DirectSocket::new(UnixStream::from_std(mine).unwrap(), me(), &budgets).unwrap();
        let replies = s.replies();
        let (r, w) = s.split().take();
        (r.framed, w, peer, budgets, replies)
    }

    /// The reply zbus would write to the call `serial`.
    fn reply_to(serial: u32) -> Message {
        let call = zbus::message::Message::method_call("/", "Get")
            .serial(std::num::NonZeroU32::new(serial).unwrap())
            .build(&())
            .unwrap();
        zbus::message::Message::method_return(&call.header())
            .build(&())
            .unwrap()
    }

    /// The handshake, then a whole call with `serial` and an 8-byte body, handed on.
    async fn one_call(r: &mut Framed, peer: &mut std::os::unix::net::UnixStream, serial: u32) {
        use std::io::Write;
        if matches!(r.phase, Phase::Sasl { .. }) {
            peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
            read_n(r, 26, 64).await;
        }
        let mut call = header(b'l', 8, serial, 0).to_vec();
        call.extend_from_slice(&[0; 8]);
        peer.write_all(&call).unwrap();
        read_n(r, call.len(), 64).await;
    }

    #[tokio::test]
    async fn a_reply_keeps_what_it_needs_until_written_and_gives_back_the_rest_at_once() {
        let (mut r, mut w, mut peer, budgets, replies) = pair_with_replies(1 << 20, 1 << 20);
        one_call(&mut r, &mut peer, 7).await;
        let room = budgets.replies_of_uid(me());
        let first = replies.reserve(600 << 10).await.unwrap();
        assert_eq!(room.available_permits(), 1024 - 600);
        // A second reservation does not fit: it waits.
        let second = tokio::spawn({
            let replies = replies.clone();
            async move { replies.reserve(600 << 10).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "a reservation past the reply budget");
        // The first reply turns out to need 100 KiB: the rest comes back, the second fits.
        first.keep(7, 100 << 10);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second reservation once the first shrank")
            .unwrap();
        assert_eq!(room.available_permits(), 1024 - 100 - 600);
        drop(second);
        assert_eq!(room.available_permits(), 1024 - 100);
        // Written: the 100 KiB kept for it come back too.
        w.send_message(&reply_to(7)).await.unwrap();
        assert_eq!(room.available_permits(), 1024);
        // A reply larger than the whole budget is charged the budget, and does not wait.
        let all = tokio::time::timeout(Duration::from_secs(5), replies.reserve(10 << 20))
            .await
            .expect("a reservation past the whole budget is capped")
            .unwrap();
        assert_eq!(room.available_permits(), 0);
        drop(all);
    }

    #[tokio::test]
    async fn reservations_waiting_give_up_and_kept_replies_come_back_when_the_connection_ends() {
        let (mut r, w, mut peer, budgets, replies) = pair_with_replies(1 << 20, 1 << 20);
        one_call(&mut r, &mut peer, 3).await;
        let room = budgets.replies_of_uid(me());
        replies.reserve(1 << 20).await.unwrap().keep(3, 1 << 20);
        assert_eq!(room.available_permits(), 0);
        let waiting = tokio::spawn({
            let replies = replies.clone();
            async move { replies.reserve(1).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        // zbus drops the read half when the peer hangs up; the write half may live on.
        drop(r);
        let e = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a waiting reservation gives up when the connection ends")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        assert_eq!(room.available_permits(), 1024);
        drop(w);
    }

    #[tokio::test]
    async fn a_memfd_reply_keeps_its_room_until_the_peer_has_read_it_even_past_the_end() {
        use std::io::Read;
        let (mut r, mut w, mut peer, budgets, replies) = pair_with_replies(4 << 20, 4 << 20);
        one_call(&mut r, &mut peer, 7).await;
        let room = budgets.replies_of_uid(me());
        // A memfd of 100 KiB counts as a descriptor does, 1 MiB.
        replies
            .reserve(2 << 20)
            .await
            .unwrap()
            .keep_until_read(7, 100 << 10);
        assert_eq!(room.available_permits(), 4096 - 1024);
        // Written but not read: still held, past the end of the connection too.
        w.send_message(&reply_to(7)).await.unwrap();
        drop((r, w));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(room.available_permits(), 4096 - 1024);
        // Read: given back within a look or two.
        let mut buf = [0u8; 4096];
        assert!(peer.read(&mut buf).unwrap() > 0);
        let back = async {
            while room.available_permits() != 4096 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), back)
            .await
            .expect("the room of a memfd reply the peer read comes back");
    }

    #[tokio::test]
    async fn a_call_repeating_an_unanswered_serial_closes_the_connection() {
        use std::io::Write;
        let (mut r, mut w, mut peer, _b, _replies) = pair_with_replies(1 << 20, 1 << 20);
        one_call(&mut r, &mut peer, 5).await;
        // Answered, serial 5 may come again.
        w.send_message(&reply_to(5)).await.unwrap();
        one_call(&mut r, &mut peer, 5).await;
        // Unanswered, it may not: a reply to 5 would give back the wrong call's share.
        peer.write_all(&header(b'l', 8, 5, 0)).unwrap();
        let mut buf = [0u8; 64];
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("serial 5"), "{e}");
    }

    async fn read_n(r: &mut Framed, n: usize, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut buf = vec![0u8; chunk];
            let (got, _) = r.recvmsg(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..got]);
        }
        out
    }

    #[tokio::test]
    async fn bytes_pass_through_unchanged_and_nothing_past_begin_is_read_with_the_handshake() {
        use std::io::Write;
        let (mut r, _w, mut peer, _b) = pair(1 << 20);
        let sasl = b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n";
        let msg = |serial| {
            let mut m = header(b'l', 8, serial, 0).to_vec();
            m.extend_from_slice(b"abcdefgh");
            m
        };
        let mut all = sasl.to_vec();
        all.extend_from_slice(&msg(1));
        all.extend_from_slice(&msg(2));
        peer.write_all(&all).unwrap();
        // The handshake comes back a byte at a time, even into a large buffer.
        let got = read_n(&mut r, sasl.len(), 1024).await;
        assert_eq!(got, sasl);
        assert!(matches!(r.phase, Phase::Header { got: 0, .. }));
        // A message never comes back with the next one's bytes.
        let got = read_n(&mut r, 24, 1024).await;
        assert_eq!(got, msg(1));
        // Headers handed on across calls of a few bytes each.
        let got = read_n(&mut r, 24, 5).await;
        assert_eq!(got, msg(2));
    }

    #[tokio::test]
    async fn a_header_arriving_in_pieces_is_put_together() {
        use std::io::Write;
        let (mut r, _w, mut peer, _b) = pair(1 << 20);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let mut msg = header(b'B', 4, 9, 0).to_vec();
        msg.extend_from_slice(b"wxyz");
        let reading = tokio::spawn(async move {
            let got = read_n(&mut r, 20, 64).await;
            (got, r)
        });
        for piece in msg.chunks(3) {
            peer.write_all(piece).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (got, _r) = reading.await.unwrap();
        assert_eq!(got, msg);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_before_any_of_it_is_handed_on() {
        use std::io::Write;
        let (mut r, _w, mut peer, _b) = pair(1 << 30);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let body = u32::try_from(MAX_DIRECT_MESSAGE).unwrap() - 16 + 1;
        peer.write_all(&header(b'l', body, 1, 0)).unwrap();
        let mut buf = [0u8; 64];
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[tokio::test]
    async fn past_the_budget_the_read_waits_until_the_call_is_answered() {
        use std::io::Write;
        // Room for one message of 100 KiB (charged whole) but not two.
        let (mut r, mut w, mut peer, budgets) = pair(150 << 10);
        let body = (100u32 << 10) - 16;
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let mut first = header(b'l', body, 41, 0).to_vec();
        first.resize(16 + body as usize, 1);
        peer.write_all(&first).unwrap();
        assert_eq!(read_n(&mut r, first.len(), 1 << 20).await, first);
        // The call is received but not answered: its share is still held.
        let uid = budgets.of_uid(me());
        assert_eq!(uid.available_permits(), 50);
        // A second header: the read waits, handing on nothing.
        peer.write_all(&header(b'l', body, 42, 0)).unwrap();
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let got = r.recvmsg(&mut buf).await.unwrap().0;
            (got, buf)
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!reading.is_finished(), "a header handed on past the budget");
        // Answering serial 41 lets it through.
        let call = zbus::message::Message::method_call("/", "Ping")
            .serial(std::num::NonZeroU32::new(41).unwrap())
            .build(&())
            .unwrap();
        let reply = zbus::message::Message::method_return(&call.header())
            .build(&())
            .unwrap();
        w.send_message(&reply).await.unwrap();
        let (got, buf) = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
            .await
            .expect("the read went on once the call was answered")
            .unwrap();
        assert_eq!((got, buf), (16, header(b'l', body, 42, 0)));
    }

    #[tokio::test]
    async fn a_message_that_stalls_past_the_limit_closes_the_connection_and_frees_its_share() {
        use std::io::Write;
        let (mut r, _w, mut peer, budgets) = pair(1 << 20);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let mut start = header(b'l', 200 << 10, 1, 0).to_vec();
        start.extend_from_slice(&[0; 100]);
        peer.write_all(&start).unwrap();
        read_n(&mut r, start.len(), 4096).await;
        let mut buf = [0u8; 4096];
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(r);
        drop(_w);
        assert_eq!(budgets.of_uid(me()).available_permits(), 1024);
    }

    /// Send `bytes` on `peer` with `n` descriptors (of /dev/null) attached.
    fn send_with_fds(peer: &std::os::unix::net::UnixStream, bytes: &[u8], n: usize) {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let fds: Vec<BorrowedFd<'_>> = (0..n).map(|_| fd.as_fd()).collect();
        assert_eq!(
            crate::policy::scm::send_with_fds(peer.as_fd(), bytes, &fds).unwrap(),
            bytes.len()
        );
    }

    #[tokio::test]
    async fn descriptors_count_against_the_budget_and_come_with_the_first_bytes_only() {
        use std::io::Write;
        let (mut r, _w, mut peer, budgets) = pair(8 << 20);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        // A descriptor with the header: handed on with its first bytes, counted 1 MiB.
        let mut call = header(b'l', 8, 1, 0).to_vec();
        call.extend_from_slice(&[0; 8]);
        send_with_fds(&peer, &call, 1);
        let mut buf = [0u8; 64];
        let (n, fds) = r.recvmsg(&mut buf).await.unwrap();
        assert_eq!((n, fds.len()), (16, 1));
        assert_eq!(budgets.of_uid(me()).available_permits(), 8192 - 1024 - 64);
        read_n(&mut r, 8, 64).await;
        // A descriptor with a later byte of a message closes the connection.
        peer.write_all(&header(b'l', 8, 2, 0)).unwrap();
        read_n(&mut r, 16, 64).await;
        send_with_fds(&peer, &[0; 8], 1);
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("after the first bytes"), "{e}");
    }

    #[tokio::test]
    async fn more_descriptors_than_a_call_takes_close_the_connection_and_never_reach_the_table() {
        use std::io::Write;
        let (mut r, _w, mut peer, _b) = pair(8 << 20);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        send_with_fds(&peer, &header(b'l', 8, 1, 0), 253);
        let mut buf = [0u8; 64];
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("more than 1 file descriptor"), "{e}");
        // The kernel closed the 252 that found no room; the one received went with the error.
        assert!(std::fs::read_dir("/proc/self/fd").unwrap().count() <= before);
    }

    #[tokio::test]
    async fn a_peer_hanging_up_while_its_message_waits_for_room_gives_everything_back() {
        use std::io::Write;
        let (mut r, _w, mut peer, budgets) = pair(150 << 10);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let mut first = header(b'l', 100 << 10, 1, 0).to_vec();
        first.resize(16 + (100 << 10), 0);
        peer.write_all(&first).unwrap();
        read_n(&mut r, first.len(), 1 << 20).await;
        // The second does not fit: the read waits for room, with bytes unread behind it.
        let mut second = header(b'l', 8, 2, 0).to_vec();
        second.extend_from_slice(&[0; 8]);
        peer.write_all(&second).unwrap();
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let e = r.recvmsg(&mut buf).await.unwrap_err();
            (e, r)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!reading.is_finished(), "a header let in past the budget");
        drop(peer);
        let (e, r) = tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .expect("the hang-up noticed while the message waited")
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        drop(r);
        assert_eq!(budgets.of_uid(me()).available_permits(), 150);
    }

    #[tokio::test]
    async fn a_call_asking_no_reply_holds_its_share_until_its_reply_which_is_not_sent() {
        use std::io::{Read, Write};
        let (mut r, mut w, mut peer, budgets) = pair(1 << 20);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        let mut call = header(b'l', 8, 9, 0).to_vec();
        call[2] = NO_REPLY_EXPECTED;
        call.extend_from_slice(&[0; 8]);
        peer.write_all(&call).unwrap();
        // Handed on as a call wanting a reply, and held once received.
        let got = read_n(&mut r, call.len(), 64).await;
        assert_eq!(got[2], 0);
        assert_eq!(budgets.of_uid(me()).available_permits(), 1024 - 64);
        // Its handler's reply gives the share back and is not sent.
        w.send_message(&reply_to(9)).await.unwrap();
        assert_eq!(budgets.of_uid(me()).available_permits(), 1024);
        peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let e = peer.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "a reply was sent");
    }

    /// The handshake, then `msg`'s bytes, through zbus's receive_message of the read half.
    async fn receive(msg: &[u8], fds: usize) -> zbus::Result<Message> {
        use std::io::Write;
        let (mine, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        let budgets = Budgets::new(64 << 20, 64 << 20);
        let s = DirectSocket::new(UnixStream::from_std(mine).unwrap(), me(), &budgets).unwrap();
        let (mut r, _w) = s.split().take();
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        let mut buf = [0u8; 1];
        for _ in 0..26 {
            r.recvmsg(&mut buf).await.unwrap();
        }
        send_with_fds(&peer, msg, fds);
        r.receive_message(1, &mut Vec::new(), &mut Vec::new()).await
    }

    /// A Cache call as a client sends it.
    fn call_bytes<B>(member: &str, body: &B) -> Vec<u8>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        Message::method_call("/", member)
            .serial(std::num::NonZeroU32::new(1).unwrap())
            .build(body)
            .unwrap()
            .data()
            .to_vec()
    }

    #[tokio::test]
    async fn a_message_with_bytes_past_its_arguments_or_descriptors_it_does_not_take_is_refused() {
        let get = call_bytes("Get", &("ns", "k"));
        assert!(receive(&get, 0).await.is_ok());
        // 1 KiB of padding after the arguments, the body length grown to match.
        let mut padded = get.clone();
        let body = u32::from_le_bytes(padded[4..8].try_into().unwrap()) + 1024;
        padded[4..8].copy_from_slice(&body.to_le_bytes());
        padded.resize(padded.len() + 1024, 0);
        let e = receive(&padded, 0).await.unwrap_err();
        assert!(e.to_string().contains("past its arguments"), "{e}");
        // A descriptor with a call that takes none (the header does not announce it).
        let e = receive(&get, 1).await.unwrap_err();
        assert!(e.to_string().contains("announces 0"), "{e}");
    }

    #[tokio::test]
    async fn bytes_written_by_another_uid_close_the_connection() {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred};
        let (mut r, _w, peer, _b) = pair(1 << 20);
        let other = if me() == 0 { 65534 } else { 0 };
        let forged = UCred {
            pid: rustix::process::getpid(),
            uid: rustix::process::Uid::from_raw(other),
            gid: rustix::process::getgid(),
        };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmCredentials(forged)));
        let sent = rustix::net::sendmsg(
            peer.as_fd(),
            &[std::io::IoSlice::new(b"\0AUTH EXTERNAL\r\n")],
            &mut control,
            SendFlags::empty(),
        );
        if me() != 0 {
            // Only root may send another uid's credentials: the kernel refuses the forgery.
            assert_eq!(sent, Err(rustix::io::Errno::PERM));
            return;
        }
        sent.unwrap();
        let mut buf = [0u8; 64];
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains(&format!("uid {other}")), "{e}");
    }

    #[tokio::test]
    async fn descriptors_during_the_handshake_close_the_connection() {
        let (mut r, _w, peer, _b) = pair(1 << 20);
        send_with_fds(&peer, b"\0AUTH EXTERNAL 30\r\n", 1);
        let mut buf = [0u8; 64];
        let e = r.recvmsg(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("during the handshake"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_connection_gives_back_what_it_held() {
        use std::io::Write;
        let (mut r, w, mut peer, budgets) = pair(1 << 20);
        peer.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n").unwrap();
        read_n(&mut r, 26, 64).await;
        // One call received in full (held until answered), one header admitted mid-message.
        let mut call = header(b'l', 8, 1, 0).to_vec();
        call.extend_from_slice(&[0; 8]);
        peer.write_all(&call).unwrap();
        read_n(&mut r, call.len(), 64).await;
        peer.write_all(&header(b'l', 200 << 10, 2, 0)).unwrap();
        read_n(&mut r, 16, 64).await;
        let uid = budgets.of_uid(me());
        assert_eq!(uid.available_permits(), 1024 - 64 - 201);
        drop((r, w));
        assert_eq!(uid.available_permits(), 1024);
    }
}

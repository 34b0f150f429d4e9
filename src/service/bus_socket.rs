//! The daemon's socket to the system bus: zbus's connection over a unix socket whose reader
//! decides, as each message comes in and before zbus sees it, which file descriptors the
//! message may bring (issue 21).
//!
//! Only `Cache.PutFd` takes one. Any other message that brings descriptors has them closed at
//! once and its `UNIX_FDS` header field set to 0, so that zbus dispatches it without them: a
//! method whose arguments name no descriptor is served as usual, and one that does (PutFd with
//! more than one) finds none and is refused with `InvalidArgs`. So a call that waits (a
//! GetOrLease waiting for a fill, up to 20 s) holds no descriptor, however many it carried.
//!
//! And a message whose descriptors the kernel could not pass (the process is at its open-file
//! limit: `recvmsg` drops them and sets `MSG_CTRUNC`) no longer ends the connection, which
//! zbus's own reader does (the message is short of descriptors, an error), and which the
//! daemon took for the bus going away. Its descriptors are counted as lost, the log says the
//! daemon is out of descriptors, and the message goes on without them.
//!
//! A message is read in two `recvmsg` calls of exactly its primary header, then the rest
//! (never past its end), so every descriptor read with it is its own. Bytes and descriptors go
//! through `recvmsg`/`sendmsg` on the tokio socket (rustix, no `unsafe`).

use numa_cache_client::names;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UnixStream;
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};
use zbus::export::async_trait::async_trait;

/// The most descriptors one read takes (zbus's own limit, as sd-bus has it).
const FDS_MAX: usize = 1024;
/// A primary header and the length of the header fields that follow it.
const PRIMARY_HEADER: usize = 16;
/// Closed or lost descriptors are logged at most this often, with their count.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The header field codes this reader looks at.
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_UNIX_FDS: u8 = 9;
/// The message type of a method call.
const METHOD_CALL: u8 = 1;

/// A connection to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, or the default socket) over a
/// [`BusSocket`].
pub async fn connect_system() -> zbus::Result<zbus::Connection> {
    let address = zbus::Address::system()?;
    let stream = match address.transport() {
        zbus::address::transport::Transport::Unix(unix) => match unix.path() {
            zbus::address::transport::UnixSocket::File(path) => UnixStream::connect(path).await?,
            #[cfg(target_os = "linux")]
            zbus::address::transport::UnixSocket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(
                    std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()),
                )?;
                let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
                s.set_nonblocking(true)?;
                UnixStream::from_std(s)?
            }
            other => {
                return Err(zbus::Error::Address(format!(
                    "numa-cached connects to the system bus over a unix socket path or \
                     abstract name, not {other:?}"
                )));
            }
        },
        other => {
            return Err(zbus::Error::Address(format!(
                "numa-cached connects to the system bus over a unix socket, not {other}"
            )));
        }
    };
    zbus::connection::Builder::socket(BusSocket::new(stream))
        .build()
        .await
}

/// A unix socket to the bus (see the module).
#[derive(Debug)]
pub struct BusSocket {
    stream: Arc<UnixStream>,
    sasl: Arc<Sasl>,
}

impl BusSocket {
    /// The socket over `stream`, before the handshake.
    pub fn new(stream: UnixStream) -> BusSocket {
        BusSocket {
            stream: Arc::new(stream),
            sasl: Arc::default(),
        }
    }
}

/// The handshake as the writer sent it: the lines before `BEGIN`, each of which the bus
/// answers with one line; once all are answered and `BEGIN` is sent, messages follow.
#[derive(Debug, Default)]
struct Sasl {
    lines: AtomicUsize,
    begun: AtomicBool,
}

impl Socket for BusSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        let reader = Reader {
            stream: Arc::clone(&self.stream),
            sasl: Arc::clone(&self.sasl),
            phase: Phase::Sasl { answers: 0 },
            held: Vec::new(),
            truncated: false,
            notes: Notes::default(),
        };
        Split::new(
            reader,
            Writer {
                stream: self.stream,
                sasl: self.sasl,
            },
        )
    }
}

/// Where the reader is in the stream.
#[derive(Debug)]
enum Phase {
    /// The handshake: lines the bus sent so far.
    Sasl { answers: usize },
    /// A message's primary header, `got` bytes of it so far.
    Header {
        header: [u8; PRIMARY_HEADER],
        got: usize,
    },
    /// The rest of the message the header opens: `len` bytes.
    Rest {
        header: [u8; PRIMARY_HEADER],
        len: usize,
    },
}

/// The read half.
#[derive(Debug)]
pub struct Reader {
    stream: Arc<UnixStream>,
    sasl: Arc<Sasl>,
    phase: Phase,
    /// Descriptors read with the message being read.
    held: Vec<OwnedFd>,
    /// The kernel dropped some of them (`MSG_CTRUNC`).
    truncated: bool,
    notes: Notes,
}

/// Descriptors closed or lost since the last log line, and when that was.
#[derive(Debug, Default)]
struct Notes {
    closed: u64,
    lost: u64,
    logged: Option<Instant>,
}

/// Read up to `buf.len()` bytes (at least one) and the descriptors sent with them; whether the
/// kernel dropped descriptors; the bus hanging up is an error.
async fn recv(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let got = stream
        .async_io(Interest::READABLE, || fd_recvmsg(stream.as_fd(), buf))
        .await?;
    if got.0 == 0 {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the bus hung up"));
    }
    Ok(got)
}

impl Reader {
    async fn header(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let Phase::Header { header, got } = &mut self.phase else {
            unreachable!("called in the header phase only");
        };
        let want = buf.len().min(PRIMARY_HEADER - *got);
        let (n, fds, truncated) = recv(&self.stream, &mut buf[..want]).await?;
        header[*got..*got + n].copy_from_slice(&buf[..n]);
        *got += n;
        self.held.extend(fds);
        self.truncated |= truncated;
        if *got == PRIMARY_HEADER {
            let header = *header;
            let len = rest_len(&header);
            self.phase = Phase::Rest { header, len };
            if len == 0 {
                // No header fields: not a message zbus takes; it says so.
                self.phase = Phase::Header {
                    header: [0; PRIMARY_HEADER],
                    got: 0,
                };
                self.held.clear();
            }
        }
        Ok((n, Vec::new()))
    }

    async fn rest(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let Phase::Rest { header, len } = self.phase else {
            unreachable!("called in the rest phase only");
        };
        // zbus asks for the whole rest at once; read all of it before handing any on.
        let want = buf.len().min(len);
        let mut pos = 0;
        while pos < want {
            let (n, fds, truncated) = recv(&self.stream, &mut buf[pos..want]).await?;
            pos += n;
            self.held.extend(fds);
            self.truncated |= truncated;
        }
        let fds = if want == len {
            self.phase = Phase::Header {
                header: [0; PRIMARY_HEADER],
                got: 0,
            };
            self.admit(&header, &mut buf[..len])
        } else {
            // Asked for less (never, by zbus): pass it on as it is.
            self.phase = Phase::Rest {
                header,
                len: len - want,
            };
            std::mem::take(&mut self.held)
        };
        Ok((want, fds))
    }

    /// The descriptors the message of `header` and `rest` may bring: all it brought when it
    /// may take them and all arrived; otherwise none (closed now), with its `UNIX_FDS` set
    /// to 0 in `rest`.
    fn admit(&mut self, header: &[u8; PRIMARY_HEADER], rest: &mut [u8]) -> Vec<OwnedFd> {
        let held = std::mem::take(&mut self.held);
        let truncated = std::mem::take(&mut self.truncated);
        let Some(f) = fields(header, rest) else {
            // Not a message zbus will take: it says so.
            return held;
        };
        let may = u32::from(
            header[1] == METHOD_CALL
                && f.interface.as_deref() == Some(names::iface::CACHE)
                && f.member.as_deref() == Some("PutFd"),
        );
        let brought = held.len();
        if !truncated && f.unix_fds as usize == brought && f.unix_fds <= may {
            return held;
        }
        if let Some(at) = f.unix_fds_at {
            rest[at..at + 4].copy_from_slice(&[0; 4]);
        }
        drop(held);
        let what = format!(
            "{}.{}",
            f.interface.as_deref().unwrap_or("?"),
            f.member.as_deref().unwrap_or("?")
        );
        if truncated || brought < f.unix_fds as usize {
            self.notes.lost += u64::from(f.unix_fds).saturating_sub(brought as u64);
        }
        self.notes.closed += brought as u64;
        self.note(&what, f.unix_fds, may);
        Vec::new()
    }

    /// Log the closed and lost descriptors, at most every [`LOG_EVERY`].
    fn note(&mut self, what: &str, announced: u32, may: u32) {
        let now = Instant::now();
        if self.notes.logged.is_some_and(|t| now < t + LOG_EVERY) {
            return;
        }
        let Notes { closed, lost, .. } = std::mem::take(&mut self.notes);
        self.notes.logged = Some(now);
        if lost > 0 {
            let (open, limit) = descriptors();
            tracing::error!(
                "numa-cached is out of file descriptors ({open} open, limit {limit}): the kernel \
                 dropped {lost} descriptors sent with bus messages since the last such line \
                 (the last a {what} announcing {announced}); those calls go on without them, \
                 and the bus connection stays"
            );
        }
        if closed > 0 {
            tracing::warn!(
                "closed {closed} file descriptors sent with bus messages that do not take them \
                 since the last such line (the last a {what} with {announced}, which takes {may})"
            );
        }
    }
}

#[async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if let Phase::Sasl { answers } = &mut self.phase {
            let sent = self.sasl.lines.load(Ordering::Acquire);
            if !(self.sasl.begun.load(Ordering::Acquire) && *answers >= sent) {
                let (n, fds, _) = recv(&self.stream, buf).await?;
                *answers += buf[..n].iter().filter(|b| **b == b'\n').count();
                return Ok((n, fds));
            }
            self.phase = Phase::Header {
                header: [0; PRIMARY_HEADER],
                got: 0,
            };
        }
        match self.phase {
            Phase::Sasl { .. } => unreachable!("left above"),
            Phase::Header { .. } => self.header(buf).await,
            Phase::Rest { .. } => self.rest(buf).await,
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        peer_credentials(&self.stream)
    }
}

/// The write half.
#[derive(Debug)]
pub struct Writer {
    stream: Arc<UnixStream>,
    sasl: Arc<Sasl>,
}

#[async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !self.sasl.begun.load(Ordering::Acquire) {
            // The handshake: count the lines the bus will answer, up to BEGIN (no answer).
            let mut lines = 0;
            for line in buf.split_inclusive(|b| *b == b'\n') {
                if line
                    .strip_prefix(b"\0")
                    .unwrap_or(line)
                    .starts_with(b"BEGIN")
                {
                    self.sasl.lines.fetch_add(lines, Ordering::AcqRel);
                    lines = 0;
                    self.sasl.begun.store(true, Ordering::Release);
                    break;
                }
                if line.ends_with(b"\n") {
                    lines += 1;
                }
            }
            self.sasl.lines.fetch_add(lines, Ordering::AcqRel);
        }
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

/// The bytes after the primary header of the message `header` opens: its header fields,
/// padding to 8, and its body.
fn rest_len(header: &[u8; PRIMARY_HEADER]) -> usize {
    let u32_at = |at: usize| read_u32(header[0], &header[at..at + 4]).unwrap_or(0) as usize;
    let (body, fields) = (u32_at(4), u32_at(12));
    let end = PRIMARY_HEADER.saturating_add(fields);
    end.next_multiple_of(8).saturating_add(body) - PRIMARY_HEADER
}

fn read_u32(endian: u8, b: &[u8]) -> Option<u32> {
    let b: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(if endian == b'B' {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

/// What the reader needs of a message's header fields.
#[derive(Debug, Default, PartialEq)]
struct Fields {
    interface: Option<String>,
    member: Option<String>,
    unix_fds: u32,
    /// Where the `UNIX_FDS` value is, in the bytes after the primary header.
    unix_fds_at: Option<usize>,
}

/// The header fields of the message `header` opens, from `rest` (the bytes after the primary
/// header); None when they do not parse (zbus then refuses the message itself).
fn fields(header: &[u8; PRIMARY_HEADER], rest: &[u8]) -> Option<Fields> {
    let endian = header[0];
    let len = read_u32(endian, &header[12..16])? as usize;
    // Offsets are the message's (alignment counts from its start); `rest` starts at 16.
    let end = PRIMARY_HEADER.checked_add(len)?;
    let at = |o: usize| o.checked_sub(PRIMARY_HEADER);
    let byte = |o: usize| rest.get(at(o)?).copied();
    let mut f = Fields::default();
    let mut o = PRIMARY_HEADER;
    while o < end {
        o = o.next_multiple_of(8);
        let code = byte(o)?;
        let sig_len = usize::from(byte(o + 1)?);
        let sig = rest.get(at(o + 2)?..at(o + 2 + sig_len)?)?;
        o += 2 + sig_len + 1;
        match sig {
            b"s" | b"o" => {
                o = o.next_multiple_of(4);
                let n = read_u32(endian, rest.get(at(o)?..)?)? as usize;
                let s = rest.get(at(o + 4)?..at(o + 4 + n)?)?;
                let s = std::str::from_utf8(s).ok()?.to_string();
                match code {
                    FIELD_INTERFACE => f.interface = Some(s),
                    FIELD_MEMBER => f.member = Some(s),
                    _ => {}
                }
                o += 4 + n + 1;
            }
            b"g" => o += 1 + usize::from(byte(o)?) + 1,
            b"u" => {
                o = o.next_multiple_of(4);
                let v = read_u32(endian, rest.get(at(o)?..)?)?;
                if code == FIELD_UNIX_FDS {
                    f.unix_fds = v;
                    f.unix_fds_at = at(o);
                }
                o += 4;
            }
            _ => return None,
        }
    }
    Some(f)
}

/// This process's open descriptors and its limit (/proc/self), for the log.
pub fn descriptors() -> (String, String) {
    let open = std::fs::read_dir("/proc/self/fd")
        .map_or_else(|_| "?".to_string(), |d| d.count().to_string());
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .unwrap_or_else(|| "?".to_string());
    (open, limit)
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

/// recvmsg(2) of bytes into `buf` and of the descriptors sent with them, and whether the
/// kernel dropped some (`MSG_CTRUNC`: out of descriptors, or more than [`FDS_MAX`]).
fn fd_recvmsg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_MAX))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    Ok((msg.bytes, fds, msg.flags.contains(ReturnFlags::CTRUNC)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Message;

    fn call(member: &str) -> zbus::message::Builder<'_> {
        Message::method_call(names::ROOT_PATH, member).interface(names::iface::CACHE)
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn parts(m: &Message) -> ([u8; PRIMARY_HEADER], Vec<u8>) {
        let b = m.data();
        (
            b[..PRIMARY_HEADER].try_into().unwrap(),
            b[PRIMARY_HEADER..].to_vec(),
        )
    }

    #[test]
    fn the_header_fields_name_the_method_and_where_unix_fds_is() {
        let m = call("PutFd")
            .build(&("ns", "k", zbus::Fd::from(devnull())))
            .unwrap();
        let (header, rest) = parts(&m);
        assert_eq!(rest_len(&header), rest.len());
        let f = fields(&header, &rest).unwrap();
        assert_eq!(f.interface.as_deref(), Some(names::iface::CACHE));
        assert_eq!(f.member.as_deref(), Some("PutFd"));
        assert_eq!(f.unix_fds, 1);
        let at = f.unix_fds_at.unwrap();
        assert_eq!(read_u32(header[0], &rest[at..]), Some(1));
        let plain = call("Get").build(&("ns", "k")).unwrap();
        let (header, rest) = parts(&plain);
        let f = fields(&header, &rest).unwrap();
        assert_eq!((f.member.as_deref(), f.unix_fds_at), (Some("Get"), None));
    }

    /// A reader past the handshake, and the bus's end of its socket.
    fn reader() -> (Reader, std::os::unix::net::UnixStream) {
        let (mine, bus) = std::os::unix::net::UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        let s = BusSocket::new(UnixStream::from_std(mine).unwrap());
        s.sasl.begun.store(true, Ordering::Release);
        let (r, _w) = s.split().take();
        (r, bus)
    }

    async fn receive(r: &mut Reader) -> Message {
        r.receive_message(1, &mut Vec::new(), &mut Vec::new())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn descriptors_a_call_does_not_take_are_closed_and_the_call_goes_on() {
        let (mut r, bus) = reader();
        let fds: Vec<OwnedFd> = (0..16).map(|_| devnull()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        // A GetOrLease with 16 descriptors named by no argument (no UNIX_FDS field either).
        let m = call("GetOrLease").build(&("ns", "k", 20_000u32)).unwrap();
        crate::policy::scm::send_with_fds(bus.as_fd(), &m.data()[..], &borrowed).unwrap();
        let got = receive(&mut r).await;
        assert!(got.data().fds().is_empty());
        let (ns, k, ms): (String, String, u32) = got.body().deserialize().unwrap();
        assert_eq!((ns.as_str(), k.as_str(), ms), ("ns", "k", 20_000));
        // A Get whose argument is a descriptor: announced, closed, UNIX_FDS now 0; zbus
        // takes the message, and its argument names no descriptor.
        let m = call("Get").build(&(zbus::Fd::from(devnull()),)).unwrap();
        crate::policy::scm::send_with_fds(bus.as_fd(), &m.data()[..], &borrowed[..1]).unwrap();
        let got = receive(&mut r).await;
        assert!(got.data().fds().is_empty());
        assert_eq!(got.header().unix_fds(), Some(0));
        assert!(got.body().deserialize::<(zbus::OwnedFd,)>().is_err());
        // PutFd takes its one, and only one.
        let m = call("PutFd")
            .build(&("ns", "k", zbus::Fd::from(devnull())))
            .unwrap();
        crate::policy::scm::send_with_fds(bus.as_fd(), &m.data()[..], &borrowed[..1]).unwrap();
        assert_eq!(receive(&mut r).await.data().fds().len(), 1);
        crate::policy::scm::send_with_fds(bus.as_fd(), &m.data()[..], &borrowed).unwrap();
        assert!(receive(&mut r).await.data().fds().is_empty());
        // Logged once (then at most every 10 s), counted since.
        assert!(r.notes.logged.is_some());
        assert_eq!(r.notes.closed, 1 + 16);
    }
}

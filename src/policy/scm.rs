//! Sending bytes with file descriptors over a unix socket (SCM_RIGHTS), for the daemon's own
//! socket halves: the bus connection's (`service::bus_socket`) and the direct connections'
//! (`service::direct_socket`). Through rustix, no `unsafe`.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// sendmsg(2) of `buf`, with `fds` attached (at most [`SCM_MAX_FD`]); never SIGPIPE.
pub fn send_with_fds(fd: BorrowedFd<'_>, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("more than {SCM_MAX_FD} file descriptors in one message"),
        ));
    }
    Ok(rustix::net::sendmsg(
        fd,
        &[IoSlice::new(buf)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

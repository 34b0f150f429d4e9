//! How many bytes a socket has sent that its peer has not read yet (`SIOCOUTQ`): for a unix
//! socket, what its unread messages still take in the kernel, file descriptors they carry
//! included. Zero once the peer has read everything sent.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The bytes `socket` has queued for its peer and the peer has not read yet (for a unix
/// socket the kernel's accounting of them, not the payload length: only 0 means "all
/// read").
pub fn unread_by_peer(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (defined as TIOCOUTQ in linux/sockios.h) writes one int through its
    // pointer argument, which points at `n`, alive for the call; `socket` is an open
    // descriptor borrowed for the call. The kernel refuses it by errno on other files.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn counts_what_the_peer_has_not_read_and_is_zero_once_it_has() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(unread_by_peer(a.as_fd()).unwrap(), 0);
        a.write_all(&[7; 1000]).unwrap();
        assert!(unread_by_peer(a.as_fd()).unwrap() >= 1000);
        let mut buf = [0; 1000];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(unread_by_peer(a.as_fd()).unwrap(), 0);
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(unread_by_peer(f.as_fd()).is_err());
    }
}

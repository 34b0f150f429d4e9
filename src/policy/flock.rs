//! An exclusive, non-blocking `flock(2)` on an open file or directory: the daemon's claim on
//! its state directory. The lock belongs to the open file description, so it goes with the
//! last descriptor (also when the process dies).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Take an exclusive lock on `file` without waiting. `Ok(false)` when another open file
/// description holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns for the duration of the call; no pointers.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

//! Values by file descriptor (syscall wrappers: memfd_create and its seals): a sealed memfd for GetFd, and the checks PutFd makes on the
//! caller's fd before reading it (sealed against writes, shrinking and growing, so the bytes
//! cannot change under us; a size cap before anything is read).

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The seals a PutFd descriptor must carry.
pub const REQUIRED_SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// A memfd holding `bytes`, sealed against any change (write, shrink, grow, more seals).
pub fn sealed_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no other preconditions.
    let raw = unsafe {
        libc::memfd_create(
            c"numa-cache-value".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    // The offset is shared with whoever receives the fd: leave it at the start so a plain
    // read() sees the value.
    file.rewind()?;
    let seals = REQUIRED_SEALS | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor we own, with a plain int argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// The seals on `fd` (F_GET_SEALS); an error for descriptors that cannot carry seals.
fn seals_of(fd: &OwnedFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS only reads the descriptor's seal set.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(seals)
    }
}

/// Why a caller's descriptor was not read, or a memfd not made.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    /// The descriptor cannot carry seals, or lacks the required ones.
    #[error(
        "the fd is not sealed against changes ({detail}); pass a memfd created with MFD_ALLOW_SEALING and sealed with F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW (numacachectl put does this)"
    )]
    NotSealed {
        /// What was found.
        detail: String,
    },
    /// The value is over the limit.
    #[error("the value is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// stat or read failed.
    #[error("cannot read the fd: {0}")]
    Unreadable(io::Error),
    /// memfd_create, write or sealing failed.
    #[error("could not create a memfd for the value: {0}")]
    Create(io::Error),
}

/// A caller's descriptor as a file, after checking that it is sealed (so its contents cannot
/// change while it is read) and at most `limit` bytes. The caller streams it from there.
pub fn sealed_file(fd: OwnedFd, limit: u64) -> Result<File, MemfdError> {
    let seals = seals_of(&fd).map_err(|e| MemfdError::NotSealed {
        detail: format!("it cannot carry seals: {e}"),
    })?;
    if seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(MemfdError::NotSealed {
            detail: format!("seals {seals:#x}"),
        });
    }
    let file = File::from(fd);
    let size = file.metadata().map_err(MemfdError::Unreadable)?.len();
    if size > limit {
        return Err(MemfdError::TooLarge { size, limit });
    }
    Ok(file)
}

/// Read the whole value from a caller's descriptor after checking that it is sealed and at
/// most `limit` bytes.
pub fn read_sealed(fd: OwnedFd, limit: u64) -> Result<Vec<u8>, MemfdError> {
    let file = sealed_file(fd, limit)?;
    let size = file.metadata().map_err(MemfdError::Unreadable)?.len();
    let len = usize::try_from(size).map_err(|_| MemfdError::TooLarge { size, limit })?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)
        .map_err(MemfdError::Unreadable)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_round_trip_and_unsealed_refused() {
        let fd = sealed_memfd(b"hello").unwrap();
        assert_eq!(read_sealed(fd, 100).unwrap(), b"hello");
        let fd = sealed_memfd(&[7u8; 200]).unwrap();
        assert!(matches!(
            read_sealed(fd, 100),
            Err(MemfdError::TooLarge { .. })
        ));
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            read_sealed(OwnedFd::from(f), 100),
            Err(MemfdError::NotSealed { .. })
        ));
    }
}

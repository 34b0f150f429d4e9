//! Values too large for a message travel as sealed memfds (PutFd, GetFd): the file is made
//! here, written, then sealed against writes and resizes, so the daemon can trust its size
//! and contents; a memfd from the daemon is read with pread, never trusting its offset.
//! rustix gives safe wrappers, so this crate has no `unsafe`.

use crate::error::{Error, Result};
use rustix::fs::{MemfdFlags, SealFlags};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

/// A memfd holding `value`, sealed against write, shrink and grow (what PutFd requires).
pub(crate) fn sealed(value: &[u8]) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "numa-cache-value",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| Error::io("creating a memfd for the value", e.into()))?;
    let mut file = File::from(fd);
    file.write_all(value)
        .map_err(|e| Error::io("writing the value into a memfd", e))?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(|e| Error::io("sealing the memfd", e.into()))?;
    Ok(OwnedFd::from(file))
}

/// Read `size` bytes from the start of the daemon's memfd. `limit` bounds what a reply may
/// make this process allocate; the file must hold exactly `size` bytes.
pub(crate) fn read(fd: OwnedFd, size: u64, limit: u64) -> Result<Vec<u8>> {
    if size > limit {
        return Err(Error::TooLarge(format!(
            "the value is {size} bytes; this client reads at most {limit} (ClientBuilder::max_value_bytes)"
        )));
    }
    let file = File::from(fd);
    let actual = file
        .metadata()
        .map_err(|e| Error::io("reading the size of the daemon's memfd", e))?
        .len();
    if actual != size {
        return Err(Error::Protocol(format!(
            "GetFd said {size} bytes but the memfd holds {actual}"
        )));
    }
    let len = usize::try_from(size)
        .map_err(|_| Error::TooLarge(format!("a value of {size} bytes does not fit in memory")))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io("reading the value from the daemon's memfd", e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_memfd_reads_back_and_refuses_writes() {
        let value: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let fd = sealed(&value).unwrap();
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        assert!(seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW));
        let dup = fd.try_clone().unwrap();
        assert!(
            File::from(dup).write_at(b"x", 0).is_err(),
            "a sealed memfd must refuse writes"
        );
        assert_eq!(read(fd, value.len() as u64, 1 << 20).unwrap(), value);
    }

    #[test]
    fn sizes_that_disagree_or_exceed_the_limit_are_named_errors() {
        let fd = sealed(b"abc").unwrap();
        let e = read(fd.try_clone().unwrap(), 4, 100).unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        let e = read(fd, u64::MAX, 100).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)), "{e:?}");
    }
}

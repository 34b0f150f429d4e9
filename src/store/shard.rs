//! One shard per node: a BTRFS subvolume `shards/node<N>` (created, snapshotted and destroyed
//! with the btrfs ioctls, compression property `none` because blobs are compressed by us), or
//! a plain directory elsewhere. Blob files live in 256 fan-out folders named by the id's low
//! byte and are written to `tmp/` first, then renamed into place.

use crate::store::error::StoreError;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `statfs.f_type` of btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of a subvolume's root directory on btrfs.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940E;
const BTRFS_IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940F;
const BTRFS_IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// Name of the temporary folder inside a shard.
pub const TMP_DIR: &str = "tmp";

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

fn cstr(p: &Path) -> Result<CString, StoreError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        StoreError::InvalidArgument(format!("path {} contains a NUL byte", p.display()))
    })
}

fn open_dir(p: &Path) -> Result<File, StoreError> {
    File::open(p).map_err(|e| StoreError::io(format!("opening {}", p.display()), e))
}

/// Is `dir` on btrfs (statfs magic)?
pub fn is_btrfs(dir: &Path) -> Result<bool, StoreError> {
    let c = cstr(dir)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(StoreError::io(
            format!("statfs {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // f_type is i64 on 64-bit glibc targets but narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let f_type = st.f_type as i64;
    Ok(f_type == BTRFS_SUPER_MAGIC)
}

/// Is `path` the root of a btrfs subvolume (inode 256 on btrfs)?
pub fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    matches!(is_btrfs(path), Ok(true))
        && std::fs::metadata(path)
            .map(|m| m.ino() == BTRFS_FIRST_FREE_OBJECTID)
            .unwrap_or(false)
}

fn split(path: &Path) -> Result<(&Path, &OsStr), StoreError> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) if n.len() < 4000 => Ok((p, n)),
        _ => Err(StoreError::InvalidArgument(format!(
            "{} has no parent folder or name",
            path.display()
        ))),
    }
}

/// Create the btrfs subvolume `path` with BTRFS_IOC_SUBVOL_CREATE.
pub fn create_subvolume(path: &Path) -> Result<(), StoreError> {
    vol_args_ioctl(path, BTRFS_IOC_SUBVOL_CREATE, "creating btrfs subvolume")
}

/// Run a btrfs ioctl that takes a btrfs_ioctl_vol_args naming `path` in its parent folder
/// (subvolume create and destroy); `doing` starts the error message.
fn vol_args_ioctl(path: &Path, request: libc::c_ulong, doing: &str) -> Result<(), StoreError> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `dir` is an open directory; `args` is a properly sized btrfs_ioctl_vol_args with
    // a NUL-terminated name (split() keeps names under 4000 bytes), living for the whole call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request, &mut args) };
    if rc != 0 {
        return Err(StoreError::io(
            format!("{doing} {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Take a read-only snapshot of subvolume `source` at `dest` (BTRFS_IOC_SNAP_CREATE_V2).
pub fn snapshot_subvolume(source: &Path, dest: &Path) -> Result<(), StoreError> {
    let (parent, name) = split(dest)?;
    let src = open_dir(source)?;
    let dir = open_dir(parent)?;
    let mut args = VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: BTRFS_SUBVOL_RDONLY,
        unused: [0; 4],
        name: [0; 4040],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both fds are open directories; `args` is a btrfs_ioctl_vol_args_v2 of the
    // kernel's size with a NUL-terminated name, living for the whole call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), BTRFS_IOC_SNAP_CREATE_V2, &mut args) };
    if rc != 0 {
        return Err(StoreError::io(
            format!("snapshotting {} to {}", source.display(), dest.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Destroy the subvolume (or snapshot) `path` with BTRFS_IOC_SNAP_DESTROY.
pub fn destroy_subvolume(path: &Path) -> Result<(), StoreError> {
    vol_args_ioctl(path, BTRFS_IOC_SNAP_DESTROY, "deleting btrfs subvolume")
}

/// Set the `btrfs.compression` property of `path` to `none`: blobs are compressed already.
pub fn set_no_compression(path: &Path) -> Result<(), StoreError> {
    let c = cstr(path)?;
    let mut last = std::io::Error::from_raw_os_error(libc::EINVAL);
    // Kernels before 5.14 only know "no"; newer ones also accept "none".
    for value in [&b"none"[..], &b"no"[..]] {
        // SAFETY: valid NUL-terminated path and attribute name; value pointer/length match.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"btrfs.compression".as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        last = std::io::Error::last_os_error();
    }
    Err(StoreError::io(
        format!("setting btrfs.compression=none on {}", path.display()),
        last,
    ))
}

/// One node's shard folder, held open for *at() calls.
pub struct Shard {
    /// Node number.
    pub node: u32,
    /// Path of the shard (subvolume or folder).
    pub path: PathBuf,
    dir: File,
}

/// Relative path of blob `id` inside its shard.
pub fn blob_name(id: u64) -> String {
    format!("{:02x}/{:016x}", id & 0xff, id)
}

fn tmp_name(id: u64) -> String {
    format!("{TMP_DIR}/{id:016x}.tmp")
}

fn rel(name: &str) -> CString {
    // Names are built from hex digits and '/', never NUL.
    CString::new(name).unwrap_or_default()
}

impl Shard {
    /// Open (creating when missing) the shard of `node` under `shards`.
    pub fn open(shards: &Path, node: u32, btrfs: bool) -> Result<Shard, StoreError> {
        let path = shards.join(format!("node{node}"));
        if !path.exists() {
            if btrfs {
                create_subvolume(&path)?;
                if let Err(e) = set_no_compression(&path) {
                    tracing::warn!("{e}; btrfs may compress already-compressed blobs again");
                }
            } else {
                std::fs::create_dir_all(&path)
                    .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
            }
        }
        let tmp = path.join(TMP_DIR);
        std::fs::create_dir_all(&tmp)
            .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
        let dir = open_dir(&path)?;
        Ok(Shard { node, path, dir })
    }

    fn openat(&self, name: &CString, flags: libc::c_int) -> std::io::Result<File> {
        // SAFETY: `self.dir` is an open directory and `name` a NUL-terminated relative path.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                0o640,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn renameat(&self, from: &CString, to: &CString) -> std::io::Result<()> {
        let fd = self.dir.as_raw_fd();
        // SAFETY: both names are NUL-terminated paths relative to the open directory `fd`.
        let rc = unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) };
        if rc != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn unlinkat(&self, name: &CString) -> std::io::Result<()> {
        // SAFETY: a NUL-terminated path relative to the open directory.
        let rc = unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
        if rc != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Write blob `id` (the whole encoded file) to `tmp/`, then rename it into place. Not
    /// fsynced here: the committer's one `syncfs` per batch makes a batch durable before its
    /// index rows are acknowledged.
    pub fn write_blob(&self, id: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = rel(&tmp_name(id));
        let fin = rel(&blob_name(id));
        let res = (|| {
            let mut f = self.openat(&tmp, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY)?;
            f.write_all(bytes)?;
            drop(f);
            match self.renameat(&tmp, &fin) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let fan = self.path.join(format!("{:02x}", id & 0xff));
                    match std::fs::create_dir(&fan) {
                        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                        _ => {}
                    }
                    self.renameat(&tmp, &fin)
                }
                other => other,
            }
        })();
        if let Err(e) = res {
            let _ = self.unlinkat(&tmp);
            return Err(StoreError::io(
                format!("writing {}/{}", self.path.display(), blob_name(id)),
                e,
            ));
        }
        Ok(())
    }

    /// Read blob `id` as its header (`header_len` bytes) and its payload (`payload_len`
    /// bytes) into separate buffers, so a raw payload becomes the value without a copy.
    /// A file shorter than that gives an UnexpectedEof error; a missing one NotFound.
    pub fn read_blob(
        &self,
        id: u64,
        header_len: usize,
        payload_len: usize,
    ) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        let mut f = self.openat(&rel(&blob_name(id)), libc::O_RDONLY)?;
        let mut header = vec![0u8; header_len];
        f.read_exact(&mut header)?;
        let mut payload = Vec::with_capacity(payload_len);
        // take() + read_to_end fills the spare capacity without zeroing it first.
        (&mut f)
            .take(payload_len as u64)
            .read_to_end(&mut payload)?;
        if payload.len() != payload_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("payload is {} bytes, expected {payload_len}", payload.len()),
            ));
        }
        Ok((header, payload))
    }

    /// Remove blob `id`; a missing file is not an error.
    pub fn remove_blob(&self, id: u64) -> std::io::Result<()> {
        match self.unlinkat(&rel(&blob_name(id))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Full path of blob `id`.
    pub fn blob_path(&self, id: u64) -> PathBuf {
        self.path.join(blob_name(id))
    }

    /// Flush every dirty page and metadata of the filesystem holding this shard (one flush
    /// for a whole batch of puts: the group commit).
    pub fn syncfs(&self) -> Result<(), StoreError> {
        // SAFETY: syncfs on an open descriptor has no memory-safety preconditions.
        let rc = unsafe { libc::syncfs(self.dir.as_raw_fd()) };
        if rc != 0 {
            return Err(StoreError::io(
                format!("syncfs {}", self.path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The device of the shard's filesystem, to issue one syncfs per filesystem.
    pub fn dev(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.dir.metadata().map(|m| m.dev()).unwrap_or(0)
    }
}

/// Parse a blob file name (`<16 hex digits>`) back to its id.
pub fn parse_blob_name(name: &str) -> Option<u64> {
    if name.len() == 16 {
        u64::from_str_radix(name, 16).ok()
    } else {
        None
    }
}

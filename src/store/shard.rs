//! One shard per node: a BTRFS subvolume `shards/node<N>` (created, snapshotted and destroyed
//! with the btrfs ioctls, compression property `none` because blobs are compressed by us), or
//! a plain directory elsewhere. Small values are records in the shard's append-only segments
//! (`seg/`, see `segment.rs`); large ones (and every value of a version-1 cache) are blob files
//! in 256 fan-out folders named by the id's low byte, written to `tmp/` first, then renamed
//! into place. Everything is opened relative to the shard's folder without following
//! symlinks: a planted symlink makes start-up refuse, never act on the link's target.

use crate::store::error::StoreError;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
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
    /// The append-only segments holding small values.
    pub segments: crate::store::segment::SegmentLog,
}

/// Refuse `path` when it is a symlink (or, with `want_dir`, not a folder): start-up must never
/// act on a link's target. Missing is fine (it will be created).
pub fn refuse_symlink(path: &Path, want_dir: bool) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() || (want_dir && !m.is_dir()) => {
            Err(StoreError::Unavailable(format!(
                "the state directory layout was tampered with: {} is {}; refusing to start (move it away or restore the original)",
                path.display(),
                if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a folder"
                }
            )))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("checking {}", path.display()), e)),
    }
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
    /// `seg_bytes` is the size at which its segments are sealed.
    pub fn open(
        shards: &Path,
        node: u32,
        btrfs: bool,
        seg_bytes: u64,
    ) -> Result<Shard, StoreError> {
        let path = shards.join(format!("node{node}"));
        refuse_symlink(&path, true)?;
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
        for d in [&tmp, &path.join(crate::store::segment::SEG_DIR)] {
            refuse_symlink(d, true)?;
        }
        match std::fs::create_dir(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::io(format!("creating {}", tmp.display()), e));
            }
            _ => {}
        }
        let dir = crate::store::segment::open_dir_nofollow(&path)
            .map_err(|e| crate::store::segment::tampered_or_io(&path, e))?;
        // Fan-out folders must be real folders too: blobs are read and removed through them.
        if let Ok(rd) = std::fs::read_dir(&path) {
            for e in rd.filter_map(|e| e.ok()) {
                if e.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
                    refuse_symlink(&e.path(), true)?;
                }
            }
        }
        let segments = crate::store::segment::SegmentLog::open(&path, node, seg_bytes)?;
        Ok(Shard {
            node,
            path,
            dir,
            segments,
        })
    }

    /// Remove whatever an interrupted put left in `tmp/` (entries only, never through a link:
    /// `tmp` itself was checked not to be a symlink, and unlinkat does not follow one).
    pub fn clear_tmp(&self) -> u64 {
        let Ok(tmpdir) = crate::store::segment::openat_nofollow(
            &self.dir,
            TMP_DIR,
            libc::O_RDONLY | libc::O_DIRECTORY,
        ) else {
            return 0;
        };
        let Ok(rd) = std::fs::read_dir(format!("/proc/self/fd/{}", tmpdir.as_raw_fd())) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(c) = CString::new(e.file_name().as_bytes()) else {
                continue;
            };
            // SAFETY: a NUL-terminated name relative to the open tmp directory.
            if unsafe { libc::unlinkat(tmpdir.as_raw_fd(), c.as_ptr(), 0) } == 0 {
                n += 1;
            }
        }
        n
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

    /// Write blob `id` (the whole encoded file) to `tmp/`, then rename it into place. The
    /// file is not fsynced here: `sync_blob` does it before the put's row is flushed.
    pub fn write_blob(&self, id: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_blob_from(id, &mut &bytes[..])
    }

    /// Like `write_blob`, streaming the encoded file from `src` (a PutFd's memfd: no copy
    /// of the whole value in memory).
    pub fn write_blob_from(&self, id: u64, src: &mut dyn Read) -> Result<(), StoreError> {
        let tmp = rel(&tmp_name(id));
        let fin = rel(&blob_name(id));
        let res = (|| {
            let mut f = self.openat(
                &tmp,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
            )?;
            std::io::copy(src, &mut f)?;
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

    /// Create blob `id`'s temporary file (a streamed put fills it, then `publish_tmp`).
    pub fn create_tmp(&self, id: u64) -> Result<File, StoreError> {
        self.openat(
            &rel(&tmp_name(id)),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
        )
        .map_err(|e| {
            StoreError::io(
                format!("creating {}/{}", self.path.display(), tmp_name(id)),
                e,
            )
        })
    }

    /// Rename blob `id`'s temporary file into place.
    pub fn publish_tmp(&self, id: u64) -> Result<(), StoreError> {
        let (tmp, fin) = (rel(&tmp_name(id)), rel(&blob_name(id)));
        let res = match self.renameat(&tmp, &fin) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let fan = self.path.join(format!("{:02x}", id & 0xff));
                match std::fs::create_dir(&fan) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                    _ => self.renameat(&tmp, &fin),
                }
            }
            other => other,
        };
        res.map_err(|e| {
            let _ = self.unlinkat(&tmp);
            StoreError::io(
                format!("writing {}/{}", self.path.display(), blob_name(id)),
                e,
            )
        })
    }

    /// Remove blob `id`'s temporary file (a streamed put failed).
    pub fn remove_tmp(&self, id: u64) {
        let _ = self.unlinkat(&rel(&tmp_name(id)));
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
        let mut f = self.openat(&rel(&blob_name(id)), libc::O_RDONLY | libc::O_NOFOLLOW)?;
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

    /// Make blob file `id` and its name durable: fdatasync the file, then fsync its fan-out
    /// folder (the rename). Never `syncfs`: other services share the filesystem.
    pub fn sync_blob(&self, id: u64) -> Result<(), StoreError> {
        let what = || format!("fsync {}", self.blob_path(id).display());
        let f = match self.openat(&rel(&blob_name(id)), libc::O_RDONLY | libc::O_NOFOLLOW) {
            Ok(f) => f,
            // Deleted or replaced since: nothing left to make durable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(what(), e)),
        };
        crate::store::segment::fdatasync(&f).map_err(|e| StoreError::io(what(), e))?;
        let fan = self
            .openat(
                &rel(&format!("{:02x}", id & 0xff)),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
            .map_err(|e| StoreError::io(what(), e))?;
        crate::store::segment::fdatasync(&fan).map_err(|e| StoreError::io(what(), e))
    }

    /// fsync the shard's own folder (a fan-out folder was created).
    pub fn sync_dir(&self) -> Result<(), StoreError> {
        crate::store::segment::fdatasync(&self.dir)
            .map_err(|e| StoreError::io(format!("fsync {}", self.path.display()), e))
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

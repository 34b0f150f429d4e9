//! Reading small files of a sysfs/procfs tree under a filesystem root, cheaply: one
//! reusable byte buffer, one `read` per file (sysfs and procfs hand over a whole attribute in
//! one call; a short read there means the end), and every file opened relative to a folder
//! opened once (the root, or the deepest of the folders named with [`TreeReader::keep_dir`]
//! that holds it), so that the kernel walks only the last components of each path.
//! A detection reads a few hundred files: their system calls are most of its time.

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// What reading one file gave.
pub(crate) enum Outcome<'a> {
    /// The file's bytes.
    Bytes(&'a [u8]),
    /// The file does not exist.
    Missing,
    /// It exists but could not be read; the text says why.
    Failed(String),
}

/// A folder of the tree kept open, with what it is.
struct KeptDir {
    /// Its path relative to the root, without a trailing slash.
    rel: String,
    fd: OwnedFd,
    /// Its filesystem reports file sizes as they are (a disk or memory filesystem holding a
    /// captured tree), unlike sysfs and procfs (4096 or 0 whatever a file holds).
    exact_sizes: bool,
}

/// Filesystems whose `st_size` is the number of bytes a read returns: ext2/3/4, tmpfs,
/// ramfs, btrfs, xfs, overlayfs, f2fs, zfs. Anything else (sysfs, procfs, FUSE) is read.
const EXACT_SIZE_FS: [u32; 8] = [
    0xEF53,
    0x0102_1994,
    0x8584_58f6,
    0x9123_683E,
    0x5846_5342,
    0x794c_7630,
    0xF2F5_2010,
    0x2fc1_2fc1,
];

/// Reads files relative to a root with one byte buffer for all of them.
pub(crate) struct TreeReader {
    root: std::ffi::OsString,
    path: PathBuf,
    buf: Vec<u8>,
    /// The root, opened once (`None` when it cannot be: then each read opens the whole path).
    root_fd: Option<OwnedFd>,
    kept: Vec<KeptDir>,
}

impl TreeReader {
    /// A reader of the tree under `root` (`/` on the live system).
    pub(crate) fn new(root: &Path) -> TreeReader {
        TreeReader {
            root: root.as_os_str().to_owned(),
            path: PathBuf::with_capacity(root.as_os_str().len() + 64),
            buf: vec![0; 16 * 1024],
            root_fd: open_dir(rustix::fs::CWD, root),
            kept: Vec::new(),
        }
    }

    /// Keep the folder `rel` open: reads below it then walk only the rest of their path. A
    /// folder that cannot be opened is simply not kept.
    pub(crate) fn keep_dir(&mut self, rel: &str) {
        let rel = rel.trim_matches('/');
        if self.kept.iter().any(|k| k.rel == rel) {
            return;
        }
        let Some(root) = &self.root_fd else { return };
        let Some(fd) = open_dir(root, rel) else {
            return;
        };
        let exact_sizes =
            rustix::fs::fstatfs(&fd).is_ok_and(|s| EXACT_SIZE_FS.contains(&(s.f_type as u32)));
        self.kept.push(KeptDir {
            rel: rel.to_string(),
            fd,
            exact_sizes,
        });
    }

    /// The absolute path of `rel` under the root (for messages and directory listings).
    pub(crate) fn path(&mut self, rel: &str) -> &Path {
        let s = self.path.as_mut_os_string();
        s.clear();
        s.push(&self.root);
        s.push("/");
        s.push(rel.trim_start_matches('/'));
        &self.path
    }

    /// Does `rel` exist (file or folder)?
    pub(crate) fn exists(&mut self, rel: &str) -> bool {
        let rel = rel.trim_start_matches('/');
        match self.base(rel) {
            Some((k, rest)) => {
                let fd = match k {
                    Some(i) => &self.kept[i].fd,
                    None => self.root_fd.as_ref().expect("base() found the root open"),
                };
                rustix::fs::statx(fd, rest, AtFlags::empty(), StatxFlags::TYPE).is_ok()
            }
            None => self.path(rel).exists(),
        }
    }

    /// Is `rel` missing, or a regular file of size 0 in a folder kept with
    /// [`TreeReader::keep_dir`] on a filesystem with exact sizes? Then reading it would give
    /// nothing (or [`Outcome::Missing`]), and one `statx` told so instead of an open, a read
    /// and a close. False when it has to be read to know.
    pub(crate) fn missing_or_empty(&mut self, rel: &str) -> bool {
        let rel = rel.trim_start_matches('/');
        let Some((Some(i), rest)) = self.base(rel) else {
            return false;
        };
        let k = &self.kept[i];
        match rustix::fs::statx(
            &k.fd,
            rest,
            AtFlags::empty(),
            StatxFlags::TYPE | StatxFlags::SIZE,
        ) {
            Ok(st) => {
                k.exact_sizes
                    && st.stx_size == 0
                    && rustix::fs::FileType::from_raw_mode(st.stx_mode.into())
                        == rustix::fs::FileType::RegularFile
            }
            Err(e) => e == rustix::io::Errno::NOENT,
        }
    }

    /// The deepest kept folder holding `rel` (its index, `None` for the root) and the rest of
    /// the path; `None` when even the root is not open.
    fn base<'r>(&self, rel: &'r str) -> Option<(Option<usize>, &'r str)> {
        let mut best: Option<(usize, &'r str)> = None;
        for (i, k) in self.kept.iter().enumerate() {
            let Some(rest) = rel
                .strip_prefix(k.rel.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if !rest.is_empty() && best.is_none_or(|(b, _)| self.kept[b].rel.len() < k.rel.len()) {
                best = Some((i, rest));
            }
        }
        match best {
            Some((i, rest)) => Some((Some(i), rest)),
            None => self
                .root_fd
                .as_ref()
                .filter(|_| !rel.is_empty())
                .map(|_| (None, rel)),
        }
    }

    /// Read the file `rel` whole.
    pub(crate) fn read(&mut self, rel: &str) -> Outcome<'_> {
        let rel = rel.trim_start_matches('/');
        let opened = match self.base(rel) {
            Some((k, rest)) => {
                let dir = match k {
                    Some(i) => &self.kept[i].fd,
                    None => self.root_fd.as_ref().expect("base() found the root open"),
                };
                rustix::fs::openat(dir, rest, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                    .map(File::from)
                    .map_err(std::io::Error::from)
            }
            None => {
                self.path(rel);
                File::open(&self.path)
            }
        };
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Outcome::Missing,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // `buf` stays fully initialised (zeroed once, grown rarely); `filled` is the file.
        let mut filled = 0;
        loop {
            if self.buf.len() - filled < 4096 {
                let grown = (self.buf.len() * 2).max(16 * 1024);
                self.buf.resize(grown, 0);
            }
            match file.read(&mut self.buf[filled..]) {
                Ok(n) => {
                    filled += n;
                    // A read that did not fill the buffer delivered the rest of the file.
                    if n == 0 || filled < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        Outcome::Bytes(&self.buf[..filled])
    }
}

/// Open the folder `rel` below `dir` for use as a base of relative opens.
fn open_dir(dir: impl std::os::fd::AsFd, rel: impl rustix::path::Arg) -> Option<OwnedFd> {
    rustix::fs::openat(
        dir,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(cpu.join("cpu0")).unwrap();
        std::fs::create_dir_all(cpu.join("cpu1")).unwrap();
        std::fs::write(cpu.join("cpu0/online"), b"").unwrap();
        std::fs::write(cpu.join("cpu1/online"), b"0\n").unwrap();
        std::fs::write(cpu.join("online"), b"0-1\n").unwrap();
        dir
    }

    #[test]
    fn reads_below_kept_folders_and_the_root_alike() {
        let dir = tree();
        let mut r = TreeReader::new(dir.path());
        let whole = |r: &mut TreeReader, rel: &str| match r.read(rel) {
            Outcome::Bytes(b) => Some(b.to_vec()),
            Outcome::Missing => None,
            Outcome::Failed(e) => panic!("{rel}: {e}"),
        };
        assert_eq!(
            whole(&mut r, "sys/devices/system/cpu/online").as_deref(),
            Some(&b"0-1\n"[..])
        );
        r.keep_dir("sys/devices/system/cpu");
        r.keep_dir("sys/devices/system/cpu/cpu1");
        r.keep_dir("sys/devices/system/missing");
        assert_eq!(
            whole(&mut r, "sys/devices/system/cpu/cpu1/online").as_deref(),
            Some(&b"0\n"[..])
        );
        assert_eq!(
            whole(&mut r, "/sys/devices/system/cpu/online").as_deref(),
            Some(&b"0-1\n"[..])
        );
        assert_eq!(whole(&mut r, "sys/devices/system/cpu/cpu7/online"), None);
        assert!(r.exists("sys/devices/system/cpu/cpu0"));
        assert!(!r.exists("sys/devices/system/cpu/cpu7"));
        assert!(!r.exists("sys/devices/system/missing/x"));
    }

    #[test]
    fn only_missing_or_truly_empty_files_are_skipped() {
        let dir = tree();
        let mut r = TreeReader::new(dir.path());
        // Not below a kept folder: nothing is known without reading.
        assert!(!r.missing_or_empty("sys/devices/system/cpu/cpu0/online"));
        r.keep_dir("sys/devices/system/cpu");
        let exact = r.kept[0].exact_sizes;
        assert_eq!(
            r.missing_or_empty("sys/devices/system/cpu/cpu0/online"),
            exact
        );
        assert!(!r.missing_or_empty("sys/devices/system/cpu/cpu1/online"));
        assert!(r.missing_or_empty("sys/devices/system/cpu/cpu9/online"));
        // A folder is not an empty file.
        assert!(!r.missing_or_empty("sys/devices/system/cpu/cpu0"));
    }

    #[test]
    fn sysfs_sizes_are_not_trusted() {
        let mut r = TreeReader::new(Path::new("/"));
        r.keep_dir("sys/devices/system/cpu");
        if let Some(k) = r.kept.first() {
            assert!(!k.exact_sizes, "sysfs reports 4096 for every attribute");
            assert!(!r.missing_or_empty("sys/devices/system/cpu/online"));
        }
    }
}

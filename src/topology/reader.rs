//! Reading small files of a sysfs/procfs tree under a filesystem root, cheaply: one
//! reusable path and byte buffer, one `read` per file (sysfs and procfs hand over a whole
//! attribute in one call; a short read there means the end).

use std::fs::File;
use std::io::{ErrorKind, Read};
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

/// Reads files relative to a root with one path buffer and one byte buffer for all of them.
pub(crate) struct TreeReader {
    root: std::ffi::OsString,
    path: PathBuf,
    buf: Vec<u8>,
}

impl TreeReader {
    /// A reader of the tree under `root` (`/` on the live system).
    pub(crate) fn new(root: &Path) -> TreeReader {
        TreeReader {
            root: root.as_os_str().to_owned(),
            path: PathBuf::with_capacity(root.as_os_str().len() + 64),
            buf: vec![0; 16 * 1024],
        }
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
        self.path(rel).exists()
    }

    /// Read the file `rel` whole.
    pub(crate) fn read(&mut self, rel: &str) -> Outcome<'_> {
        self.path(rel);
        let mut file = match File::open(&self.path) {
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

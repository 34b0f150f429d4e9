//! Append-only segment files of one shard (Bitcask / Navy "region" style): small values are
//! records (the `blob.rs` format, padded to 8 bytes) appended to `seg/<8 hex>.seg`, never
//! changed in place once written. A put costs one `pwrite` into the active segment instead of a file
//! creation; the index maps an entry to (segment, offset). When the active segment reaches
//! `SEGMENT_BYTES` a new one starts. Dead records (overwritten, deleted, evicted) are
//! reclaimed a whole segment at a time: a segment with nothing live is unlinked, a mostly
//! dead one is compacted (its live records copied to the active segment, then unlinked).
//!
//! While sync puts run, the next segment is **prepared** (`keep_prepared`, asked for by the
//! committer, made by a thread of its own at idle priority): a NOCOW file of zeros, synced,
//! renamed into place when it becomes the active segment. Records then overwrite zeros in place, and a sync put's fdatasync flushes only
//! their bytes (on btrfs an append's fdatasync also logs the new extent and size). A
//! prepared segment is sealed at its prepared length; its file is longer than the bytes
//! written, and scans skip the zero tail. A record refused after it was written is zeroed
//! (`void`), so no scan finds it.
//!
//! Durability is the caller's: `take_dirty` names the segments written since the last flush,
//! and `fdatasync` makes one durable. Nothing here calls `syncfs`. A segment is the log of
//! truth for sync puts: their records are fdatasynced, their index rows follow lazily, and
//! recovery scans the segments from `scan_start` (recorded with each full flush) for records
//! whose rows did not reach the disk.
//!
//! A delete leaves a **tombstone**: a record of the same format with `FLAG_TOMBSTONE`, its own
//! (fresh) id, the namespace and key, and a 12-byte payload: `upto` (u64, every record of the
//! key with an id up to it is dead) and `keep_below` (u32, the segment it was first written
//! to: every older version of the key lies in a segment up to that one, so the tombstone is
//! needed while one of those segments exists). `scan` never returns tombstones;
//! `scan_records` does.
//!
//! The records of one PutMany carry their batch (blob.rs, version 3: the first id and the
//! count); `scan_records` reports it. One batch may take several writes (at most IOV_MAX
//! pieces each) and several shards, so a crash can leave part of it: recovery indexes a
//! batch's records only when every one of them is found intact.

use crate::store::blob;
use crate::store::error::StoreError;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Folder of the segments inside a shard.
pub const SEG_DIR: &str = "seg";
/// Largest segment: the active segment is sealed and a new one started at this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Segment size for a cache bounded at `max_bytes`: an eighth of the bound within 64 KiB -
/// 64 MiB, so that dead space is reclaimed a segment at a time even in a small cache.
pub fn segment_bytes_for(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(64 << 10, SEGMENT_BYTES)
}
/// Records are aligned to this many bytes (a scan looks for a header at each multiple).
pub const ALIGN: u64 = 8;
/// Stored records above this size get a file of their own instead of a segment record.
pub const LARGE_RECORD: u64 = 1 << 20;

/// Record flag: a tombstone, not a value.
pub const FLAG_TOMBSTONE: u16 = 2;
/// Length of a tombstone's payload: `upto` u64, `keep_below` u32.
const TOMB_PAYLOAD: usize = 12;

/// What a tombstone says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tomb {
    /// Every record of the key with an id up to this one is dead.
    pub upto: u64,
    /// The segment it was first written to: needed while a segment up to this one exists.
    pub keep_below: u32,
}

/// Encode a tombstone record (`id`: its own fresh id; `owner`: the namespace's owner).
pub fn encode_tombstone(
    id: u64,
    namespace: &str,
    key: &str,
    tomb: Tomb,
    created: u64,
    owner: Option<u32>,
) -> Vec<u8> {
    let mut payload = [0u8; TOMB_PAYLOAD];
    payload[..8].copy_from_slice(&tomb.upto.to_le_bytes());
    payload[8..].copy_from_slice(&tomb.keep_below.to_le_bytes());
    let mut out = blob::encode_header(
        &blob::HeaderFields {
            id,
            flags: FLAG_TOMBSTONE,
            logical_len: TOMB_PAYLOAD as u64,
            payload_len: TOMB_PAYLOAD as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(&payload),
            created,
            expires: 0,
            owner,
            batch: None,
        },
        namespace,
        key,
    );
    out.extend_from_slice(&payload);
    out
}

/// The tombstone a checked record holds (None: a value record).
fn tomb_of(h: &blob::Header, payload: &[u8]) -> Option<Tomb> {
    if h.flags & FLAG_TOMBSTONE == 0 || payload.len() != TOMB_PAYLOAD {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&payload[..8]);
    let mut b = [0u8; 4];
    b.copy_from_slice(&payload[8..]);
    Some(Tomb {
        upto: u64::from_le_bytes(a),
        keep_below: u32::from_le_bytes(b),
    })
}

/// One intact record found by a scan.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// Offset in the segment.
    pub off: u64,
    /// Its header.
    pub header: blob::Header,
    /// Some: a tombstone.
    pub tomb: Option<Tomb>,
    /// Some: a record of a PutMany (blob.rs, version 3).
    pub batch: Option<blob::Batch>,
}

/// Bytes a record of `len` stored bytes takes in a segment.
pub fn padded(len: u64) -> u64 {
    len.div_ceil(ALIGN) * ALIGN
}

/// Name of segment `id`.
pub fn segment_name(id: u32) -> String {
    format!("{id:08x}.seg")
}

/// Parse a segment file name back to its id.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

struct Active {
    id: u32,
    file: Arc<File>,
    len: u64,
    /// Sealed when a record would end past this: `seg_bytes`, or the length of a prepared
    /// segment (records then only overwrite its zeros).
    cap: u64,
    /// Made from a prepared file (NOCOW, zero-filled and synced before its first record).
    prepared: bool,
}

/// A prepared segment file (`PREP_NAME`): `len` bytes of zeros, NOCOW, synced.
struct Prep {
    file: Arc<File>,
    len: u64,
}

/// The preparation of the next segment, shared with the thread that makes it
/// ([`Preparer::run`]): the committer only asks for one and takes it when ready, so the
/// zero-fill (16 MiB of writes, their writeback and an fdatasync) never runs between a sync
/// batch's answers and its next flush.
struct Preparer {
    /// The `seg` folder (a descriptor of its own: the thread does not hold the log).
    dir: File,
    path: PathBuf,
    /// Length of a prepared segment.
    len: u64,
    state: Mutex<PrepState>,
}

#[derive(Default)]
struct PrepState {
    /// The prepared file, once whole and synced.
    ready: Option<Prep>,
    /// The thread making one, while there is one (joined by the next `keep_prepared`).
    worker: Option<std::thread::JoinHandle<()>>,
    /// Tells the running thread to give up and remove its file (the disk is full, or the
    /// log is dropped).
    stop: Arc<AtomicBool>,
    /// Why the last preparation failed, until `keep_prepared` reports it.
    failed: Option<std::io::Error>,
}

impl Preparer {
    fn lock(&self) -> std::sync::MutexGuard<'_, PrepState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thread's work: make the file, then publish it (or its error). Runs at idle
    /// priority, so it takes the CPU only while nothing else wants it (on a sync-put
    /// workload: while the committer waits for its fdatasync).
    fn run(&self, stop: &AtomicBool) {
        idle_priority();
        let made = self.make(stop);
        let mut st = self.lock();
        match made {
            Ok(Some(file)) if !stop.load(Ordering::Relaxed) => {
                st.ready = Some(Prep {
                    file: Arc::new(file),
                    len: self.len,
                });
            }
            Ok(_) => {
                let _ = unlink_at(&self.dir, PREP_NAME);
            }
            Err(e) => {
                let _ = unlink_at(&self.dir, PREP_NAME);
                st.failed = Some(e);
            }
        }
    }

    /// A NOCOW file of zeros, written `PREP_STEP` bytes at a time and synced once whole.
    /// No writeback is started on the way: zeros written back while a sync batch's
    /// fdatasync runs cost that fdatasync milliseconds (the trace of the sync figure showed
    /// 1.5-4 ms for a 64 KiB piece, against 0.5 ms without), so they go out together, with
    /// the one fdatasync at the end. None: stopped on the way.
    fn make(&self, stop: &AtomicBool) -> std::io::Result<Option<File>> {
        unlink_at(&self.dir, PREP_NAME)?;
        let f = openat_nofollow(
            &self.dir,
            PREP_NAME,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        )?;
        if !set_nocow(&f) {
            tracing::debug!("{}: not NOCOW (not btrfs?)", self.path.display());
        }
        static ZEROS: [u8; PREP_STEP as usize] = [0u8; PREP_STEP as usize];
        let mut done = 0;
        while done < self.len {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let n = (self.len - done).min(PREP_STEP);
            f.write_all_at(&ZEROS[..n as usize], done)?;
            done += n;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        fdatasync(&f)?;
        Ok(Some(f))
    }
}

/// Run the calling thread at `SCHED_IDLE` (best effort: it stays at normal priority when
/// refused).
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) reads one valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(
            "segment preparation at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The segments of one shard.
pub struct SegmentLog {
    /// Node of the shard.
    pub node: u32,
    /// The `seg` folder.
    pub path: PathBuf,
    /// Size at which a segment is sealed.
    pub seg_bytes: u64,
    dir: File,
    active: Mutex<Option<Active>>,
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    dirty: Mutex<HashSet<u32>>,
    /// A segment file was created or removed since the last flush (the folder needs a sync).
    dir_dirty: std::sync::atomic::AtomicBool,
    /// The id the next new segment gets: ids are never reused, so "every segment from N on"
    /// names the same files before and after a crash.
    next_seg: AtomicU32,
    /// Largest record id appended to each segment since open.
    max_id: Mutex<BTreeMap<u32, u64>>,
    /// The prepared next segment: ready, or being made by its thread.
    prep: Arc<Preparer>,
}

/// Name of the file a prepared segment is made in (renamed to its segment name when it
/// becomes the active segment; never parsed as a segment; removed at open).
pub const PREP_NAME: &str = "prepared.part";
/// Largest prepared segment: segments of sync-put workloads are sealed at this size (or
/// `seg_bytes`, when smaller).
pub const PREPARED_BYTES: u64 = 16 << 20;
/// Zeros written per write of a preparation (the stop flag is checked between writes).
const PREP_STEP: u64 = 512 << 10;
/// `FS_IOC_GETFLAGS` / `FS_IOC_SETFLAGS` (`_IOR/_IOW('f', 1/2, long)`), `FS_NOCOW_FL`,
/// `FS_NOCOMP_FL`.
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;
const FS_NOCOMP_FL: libc::c_int = 0x0000_0400;

/// Mark the empty file `f` NOCOW (`chattr +C`): on btrfs, writes into its written extents
/// then go in place, and an fdatasync after such an overwrite flushes only the data (no new
/// extent to log). btrfs refuses NOCOW on a file marked no-compress (the shard's
/// `compression=none`, inherited), so that mark is cleared first: a NOCOW file is never
/// compressed either. Best effort: other filesystems refuse the flags; nothing depends on
/// them but speed. Returns whether the file is NOCOW.
fn set_nocow(f: &File) -> bool {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`, a valid, writable int.
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return false;
    }
    if flags & FS_NOCOMP_FL != 0 {
        let cleared = flags & !FS_NOCOMP_FL;
        // SAFETY: FS_IOC_SETFLAGS reads one int from `cleared`, a valid int.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &cleared) } != 0 {
            return false;
        }
        flags = cleared;
    }
    flags |= FS_NOCOW_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`, a valid int.
    unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &flags) == 0 }
}

/// `unlinkat(dir, name, 0)`; a missing file is not an error.
fn unlink_at(dir: &File, name: &str) -> std::io::Result<()> {
    let c = c_name(name);
    // SAFETY: a NUL-terminated name relative to the open directory.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
    }
    Ok(())
}

/// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`.
fn rename_noreplace(dir: &File, from: &str, to: &str) -> std::io::Result<()> {
    let (a, b) = (c_name(from), c_name(to));
    // SAFETY: two NUL-terminated names relative to the same open directory.
    let rc = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            a.as_ptr(),
            dir.as_raw_fd(),
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn c_name(name: &str) -> CString {
    // Segment names are hex digits and ".seg", never NUL.
    CString::new(name).unwrap_or_default()
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
pub fn openat_nofollow(dir: &File, name: &str, flags: libc::c_int) -> std::io::Result<File> {
    let c = c_name(name);
    // SAFETY: `dir` is an open directory and `c` a NUL-terminated relative name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o640,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Open directory `path` without following a symlink at its last component.
pub fn open_dir_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Write every byte of `parts`, back to back, at `off` of `f` with as few `pwritev` calls as
/// the kernel allows (at most IOV_MAX pieces each; a short write goes on where it stopped).
fn write_all_vectored_at(f: &File, parts: &[&[u8]], mut off: u64) -> std::io::Result<()> {
    const MAX_IOV: usize = 1024;
    let mut rest: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < rest.len() {
        let iov: Vec<libc::iovec> = rest[first..]
            .iter()
            .take(MAX_IOV)
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let at = libc::off_t::try_from(off)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: every iovec points into a slice of `rest`, alive and unchanged until the
        // call returns; the kernel only reads them; the count is the vector's length.
        let rc =
            unsafe { libc::pwritev(f.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, at) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
        }
        let mut done = rc as usize;
        off += done as u64;
        // Skip what was written; a piece written in part goes on from where it stopped.
        while first < rest.len() && done >= rest[first].len() {
            done -= rest[first].len();
            first += 1;
        }
        if done > 0 {
            rest[first] = &rest[first][done..];
        }
    }
    Ok(())
}

/// fdatasync `f`.
pub fn fdatasync(f: &File) -> std::io::Result<()> {
    // SAFETY: fdatasync on an open descriptor has no memory-safety preconditions.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl SegmentLog {
    /// Open (creating) `shard/seg` and every segment in it; new records go to a new segment.
    pub fn open(shard: &Path, node: u32, seg_bytes: u64) -> Result<SegmentLog, StoreError> {
        let path = shard.join(SEG_DIR);
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::io(format!("creating {}", path.display()), e));
            }
            _ => {}
        }
        let dir = open_dir_nofollow(&path).map_err(|e| tampered_or_io(&path, e))?;
        let mut files = BTreeMap::new();
        let rd = std::fs::read_dir(&path)
            .map_err(|e| StoreError::io(format!("listing {}", path.display()), e))?;
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            let f = openat_nofollow(&dir, &segment_name(id), libc::O_RDWR)
                .map_err(|e| tampered_or_io(&path.join(segment_name(id)), e))?;
            if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                return Err(tampered(
                    &path.join(segment_name(id)),
                    "is not a regular file",
                ));
            }
            files.insert(id, Arc::new(f));
        }
        let next_seg = files.keys().next_back().map_or(1, |m| m + 1);
        // A segment prepared by the last run and never used: zeros, nothing to keep.
        unlink_at(&dir, PREP_NAME).map_err(|e| {
            StoreError::io(format!("removing {}", path.join(PREP_NAME).display()), e)
        })?;
        let prep = Arc::new(Preparer {
            dir: dir
                .try_clone()
                .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?,
            path: path.clone(),
            len: PREPARED_BYTES.min(seg_bytes),
            state: Mutex::new(PrepState::default()),
        });
        Ok(SegmentLog {
            node,
            path,
            seg_bytes,
            dir,
            active: Mutex::new(None),
            files: RwLock::new(files),
            dirty: Mutex::new(HashSet::new()),
            dir_dirty: std::sync::atomic::AtomicBool::new(false),
            next_seg: AtomicU32::new(next_seg),
            max_id: Mutex::new(BTreeMap::new()),
            prep,
        })
    }

    /// The first segment that may hold a record with an id at or above `mark`: every record
    /// appended since open with such an id, and every record appended from now on, is in it
    /// or a later one. A full flush records it beside `verified_below`.
    pub fn scan_start(&self, mark: u64) -> u32 {
        let active = self.current_id();
        let max_id = self.max_id.lock().unwrap_or_else(|p| p.into_inner());
        max_id
            .iter()
            .find(|(_, m)| **m >= mark)
            .map_or(active, |(s, _)| (*s).min(active))
    }

    /// Ids of the segments present.
    pub fn ids(&self) -> Vec<u32> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The segment new records go to, if one was started.
    pub fn active_id(&self) -> Option<u32> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|a| a.id)
    }

    /// The segment the next append goes to, or the id a new one would get.
    pub fn current_id(&self) -> u32 {
        self.active_id()
            .unwrap_or_else(|| self.next_seg.load(Ordering::Relaxed))
    }

    /// Length of segment `id` on disk.
    pub fn len_of(&self, id: u32) -> Option<u64> {
        self.file(id)
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
    }

    fn file(&self, id: u32) -> Option<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn start_segment(&self) -> std::io::Result<Active> {
        let next = self.next_seg.fetch_add(1, Ordering::Relaxed);
        // Never wait for the preparing thread (it runs at idle priority and holds this lock
        // to publish its file): busy means not ready yet.
        let ready = match self.prep.state.try_lock() {
            Ok(mut st) => st.ready.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().ready.take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        // A prepared file becomes the segment by a rename (the folder's sync, due with the
        // next flush, makes the name durable; its zeros already are).
        let prepared =
            ready.and_then(
                |p| match rename_noreplace(&self.dir, PREP_NAME, &segment_name(next)) {
                    Ok(()) => Some(p),
                    Err(e) => {
                        tracing::warn!(
                            "using the prepared segment in {}: {e}",
                            self.path.display()
                        );
                        let _ = unlink_at(&self.dir, PREP_NAME);
                        None
                    }
                },
            );
        let (f, cap, is_prepared) = match prepared {
            Some(p) => (p.file, p.len.min(self.seg_bytes), true),
            None => {
                let f = openat_nofollow(
                    &self.dir,
                    &segment_name(next),
                    libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                )?;
                (Arc::new(f), self.seg_bytes, false)
            }
        };
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(next, Arc::clone(&f));
        self.dir_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Active {
            id: next,
            file: f,
            len: 0,
            cap,
            prepared: is_prepared,
        })
    }

    /// Keep the next segment prepared (the committer calls it between batches while sync
    /// puts run): a NOCOW file of zeros, synced, made by a thread of its own at idle
    /// priority (`Preparer`). A sync put's fdatasync after an append into such a segment
    /// flushes only its bytes (no new extent, no size change to log). Once the prepared file
    /// is ready, an active segment that was not prepared is sealed so the next append takes
    /// it. Returns whether one is still being made; the error of a failed preparation (a
    /// full disk; its partial file is gone) is returned once.
    pub fn keep_prepared(&self) -> Result<bool, StoreError> {
        let mut st = self.prep.lock();
        if st.worker.as_ref().is_some_and(|w| w.is_finished())
            && let Some(w) = st.worker.take()
        {
            let _ = w.join();
        }
        if let Some(e) = st.failed.take() {
            return Err(StoreError::io(
                format!("preparing a segment in {}", self.path.display()),
                e,
            ));
        }
        if st.ready.is_some() {
            drop(st);
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if a.as_ref().is_some_and(|a| !a.prepared && a.len > 0) {
                *a = None;
            }
            return Ok(false);
        }
        if st.worker.is_none() {
            let stop = Arc::new(AtomicBool::new(false));
            st.stop = Arc::clone(&stop);
            let prep = Arc::clone(&self.prep);
            let worker = std::thread::Builder::new()
                .name("cache-prepare".into())
                .spawn(move || prep.run(&stop))
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "starting the thread that prepares segments in {}: {e}",
                        self.path.display()
                    ))
                })?;
            st.worker = Some(worker);
        }
        Ok(true)
    }

    /// Drop the prepared segment (its room is wanted: the disk is full); one being made is
    /// given up.
    pub fn drop_prepared(&self) {
        let mut st = self.prep.lock();
        st.stop.store(true, Ordering::Relaxed);
        if st.ready.take().is_some() {
            let _ = unlink_at(&self.dir, PREP_NAME);
        }
    }

    /// Overwrite the record of `len` stored bytes at `off` of segment `id` with zeros: a put
    /// refused after its record was written (its batch's flush or commit failed) must not be
    /// found by a later scan (recovery's, a rebuild's). Durable with the segment's next
    /// flush (it is marked dirty).
    pub fn void(&self, id: u32, off: u64, len: u64) -> Result<(), StoreError> {
        let Some(f) = self.file(id) else {
            return Ok(());
        };
        let zeros = vec![0u8; padded(len) as usize];
        f.write_all_at(&zeros, off).map_err(|e| {
            StoreError::io(
                format!(
                    "voiding a refused record in {}/{}",
                    self.path.display(),
                    segment_name(id)
                ),
                e,
            )
        })?;
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(())
    }

    /// Append `record` (an encoded blob); returns (segment, offset). Space is reserved under a
    /// short lock and the bytes written outside it, so appends of several threads overlap.
    pub fn append(&self, record: &[u8]) -> Result<(u32, u64), StoreError> {
        self.append_many(&[record])?
            .first()
            .copied()
            .ok_or_else(|| StoreError::Unavailable("no record was appended".into()))
    }

    /// Append several records with one write (a PutMany's records of this shard, where a
    /// write per record costs btrfs more than the bytes): placed back to back, each 8-byte
    /// aligned, in one segment (a fresh one when they do not fit in the active one); returns
    /// (segment, offset) of each, in order.
    pub fn append_many(&self, records: &[&[u8]]) -> Result<Vec<(u32, u64)>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let need: u64 = records.iter().map(|r| padded(r.len() as u64)).sum();
        let (id, file, start) = {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let full = a.as_ref().is_none_or(|a| a.len > 0 && a.len + need > a.cap);
            if full {
                *a = Some(self.start_segment().map_err(|e| {
                    StoreError::io(format!("starting a segment in {}", self.path.display()), e)
                })?);
            }
            let Some(act) = a.as_mut() else {
                return Err(StoreError::Unavailable("no active segment".into()));
            };
            let off = act.len;
            act.len += need;
            // Every record's id counts: `scan_start` trusts this to find the segments that
            // may hold records a crash recovery must scan.
            let top = records
                .iter()
                .filter_map(|r| r.get(8..16).and_then(|b| b.try_into().ok()))
                .map(u64::from_le_bytes)
                .max();
            if let Some(top) = top {
                let mut m = self.max_id.lock().unwrap_or_else(|p| p.into_inner());
                let e = m.entry(act.id).or_insert(top);
                *e = (*e).max(top);
            }
            (act.id, Arc::clone(&act.file), off)
        };
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let failed = |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                // The prepared segment's zeros are room the puts need now.
                self.drop_prepared();
            }
            StoreError::io(
                format!("appending to {}/{}", self.path.display(), segment_name(id)),
                e,
            )
        };
        // Each record goes with its padding: the next write then starts at the end of the
        // file, where a write past it would make btrfs zero the gap first (a truncate of the
        // last block, costing more than the record). The records are not copied into one
        // buffer: one vectored write takes them where they are.
        const ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];
        let mut parts: Vec<&[u8]> = Vec::with_capacity(records.len() * 2);
        let mut locs = Vec::with_capacity(records.len());
        let mut at = start;
        for r in records {
            locs.push((id, at));
            parts.push(r);
            let pad = (padded(r.len() as u64) - r.len() as u64) as usize;
            if pad > 0 {
                parts.push(&ZEROS[..pad]);
            }
            at += padded(r.len() as u64);
        }
        write_all_vectored_at(&file, &parts, start).map_err(failed)?;
        Ok(locs)
    }

    /// Read `len` bytes at `off` of segment `id` as (header, payload) buffers.
    pub fn read(
        &self,
        id: u32,
        off: u64,
        header_len: usize,
        payload_len: usize,
    ) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        let f = self.file(id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("segment {} is gone", segment_name(id)),
            )
        })?;
        let mut header = vec![0u8; header_len];
        f.read_exact_at(&mut header, off)?;
        let mut payload = vec![0u8; payload_len];
        f.read_exact_at(&mut payload, off + header_len as u64)?;
        Ok((header, payload))
    }

    /// Read the raw stored bytes of a record (compaction copies them as they are).
    pub fn read_raw(&self, id: u32, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let f = self
            .file(id)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "segment is gone"))?;
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, off)?;
        Ok(b)
    }

    /// Segments written since the last call (cleared).
    pub fn take_dirty(&self) -> Vec<u32> {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect()
    }

    /// Put segments back on the dirty list (their flush failed).
    pub fn redirty(&self, ids: &[u32]) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids.iter().copied());
        self.dir_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// fdatasync the given segments, and the folder when files came or went.
    pub fn sync(&self, ids: &[u32]) -> Result<(), StoreError> {
        for &id in ids {
            if let Some(f) = self.file(id) {
                fdatasync(&f).map_err(|e| {
                    StoreError::io(
                        format!("fdatasync {}/{}", self.path.display(), segment_name(id)),
                        e,
                    )
                })?;
            }
        }
        if self
            .dir_dirty
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            && let Err(e) = fdatasync(&self.dir)
        {
            self.dir_dirty
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::io(format!("fsync {}", self.path.display()), e));
        }
        Ok(())
    }

    /// Remove segment `id` (nothing in it is live). The active segment is never removed.
    pub fn remove(&self, id: u32) -> Result<(), StoreError> {
        if self.active_id() == Some(id) {
            return Ok(());
        }
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.max_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        unlink_at(&self.dir, &segment_name(id)).map_err(|e| {
            StoreError::io(
                format!("removing {}/{}", self.path.display(), segment_name(id)),
                e,
            )
        })?;
        self.dir_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Seal the active segment: the next append starts a new one (compaction output must not
    /// land in the segment being compacted, and a snapshot's copy stays small).
    pub fn seal(&self) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Every intact value record of segment `id`: (offset, header). Tombstones are left out
    /// (`scan_records` has them).
    pub fn scan(&self, id: u32) -> Result<Vec<(u64, blob::Header)>, StoreError> {
        Ok(self
            .scan_records(id)?
            .into_iter()
            .filter(|r| r.tomb.is_none())
            .map(|r| (r.off, r.header))
            .collect())
    }

    /// Every intact record of segment `id`, tombstones included. A torn or zeroed stretch is
    /// skipped by looking for the next header at each aligned offset (its own checksum makes a
    /// false match practically impossible); the payload is checked too.
    pub fn scan_records(&self, id: u32) -> Result<Vec<Scanned>, StoreError> {
        let Some(f) = self.file(id) else {
            return Ok(Vec::new());
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, 0).map_err(|e| {
            StoreError::io(
                format!("reading {}/{}", self.path.display(), segment_name(id)),
                e,
            )
        })?;
        let mut out = Vec::new();
        let mut off = 0usize;
        while off + blob::FIXED_LEN + 8 <= buf.len() {
            if &buf[off..off + 4] == blob::MAGIC
                && let Ok(h) = blob::parse_header(&buf[off..])
                && let Some(end) = off.checked_add(h.stored_len() as usize)
                && end <= buf.len()
                && let Ok(payload) = blob::decode_payload(&h, &buf[off..end])
                && let Ok(batch) = blob::batch_of(&h, &buf[off + h.header_len..end])
            {
                let step = padded(h.stored_len()) as usize;
                let tomb = tomb_of(&h, &payload);
                if h.flags & FLAG_TOMBSTONE == 0 || tomb.is_some() {
                    out.push(Scanned {
                        off: off as u64,
                        header: h,
                        tomb,
                        batch,
                    });
                }
                off += step;
                continue;
            }
            off += ALIGN as usize;
        }
        Ok(out)
    }
}

impl Drop for SegmentLog {
    /// The preparing thread stops (removing its partial file) and is waited for: nothing
    /// keeps a file of the shard open once the log is gone (a filesystem can be unmounted).
    fn drop(&mut self) {
        let worker = {
            let mut st = self.prep.lock();
            st.stop.store(true, Ordering::Relaxed);
            st.worker.take()
        };
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

fn tampered(path: &Path, what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "the state directory layout was tampered with: {} {what}; refusing to start (move it away or restore the original)",
        path.display()
    ))
}

/// ELOOP/ENOTDIR from an O_NOFOLLOW open means a symlink or a non-folder was planted.
pub fn tampered_or_io(path: &Path, e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => tampered(path, "is a symlink or not a folder"),
        _ => StoreError::io(format!("opening {}", path.display()), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_write_puts_every_piece_in_order_past_iov_max() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("v"))
            .unwrap();
        // More pieces than one pwritev takes, empty ones among them, at an offset.
        let pieces: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let parts: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        write_all_vectored_at(&f, &parts, 100).unwrap();
        let want: Vec<u8> = pieces.concat();
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, 100).unwrap();
        assert_eq!(got, want);
        assert_eq!(f.metadata().unwrap().len(), 100 + want.len() as u64);
    }

    #[test]
    fn appends_end_at_the_end_of_the_file_padding_included() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        // Odd lengths: each record's padding is written with it, so the file ends where the
        // next record starts and its bytes are the records' and zeros.
        let mut end = 0;
        for i in 0..4u64 {
            let (rec, _) = blob::encode(
                i,
                "ns",
                &format!("key{i}"),
                &vec![9u8; 3 + i as usize],
                3,
                0,
                1,
                0,
                None,
                None,
            );
            assert_ne!(
                rec.len() as u64 % ALIGN,
                0,
                "the test wants unaligned records"
            );
            let (seg, off) = log.append(&rec).unwrap();
            assert_eq!(off, end);
            end = off + padded(rec.len() as u64);
            let path = dir.path().join(SEG_DIR).join(segment_name(seg));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        }
    }

    #[test]
    fn append_read_scan_skips_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        let mut locs = Vec::new();
        for i in 0..5u64 {
            let v = vec![i as u8; 100 + i as usize];
            let (rec, sum) = blob::encode(i, "ns", &format!("k{i}"), &v, 3, 0, 1, 0, Some(7), None);
            let (seg, off) = log.append(&rec).unwrap();
            locs.push((seg, off, rec.len(), sum));
        }
        let (seg, off, len, sum) = locs[2];
        let hl = blob::FIXED_LEN + 2 + 2 + 8;
        let (h, p) = log.read(seg, off, hl, len - hl).unwrap();
        assert_eq!(blob::decode_parts(&h, p, 2, sum).unwrap(), vec![2u8; 102]);
        // Tear record 1 (zeroes, as after a power loss) and check the scan finds the rest.
        let f = log.file(seg).unwrap();
        f.write_all_at(&[0u8; 40], locs[1].1 + 10).unwrap();
        let found: Vec<u64> = log.scan(seg).unwrap().iter().map(|(_, h)| h.id).collect();
        assert_eq!(found, vec![0, 2, 3, 4]);
        assert_eq!(parse_segment_name(&segment_name(seg)), Some(seg));
    }

    /// Ask for a prepared segment until it is ready.
    fn prepare(log: &SegmentLog) {
        let t0 = std::time::Instant::now();
        while log.keep_prepared().unwrap() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "preparation does not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_prepared_segment_takes_the_next_records_in_place_and_voided_ones_scan_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), 0, 1 << 20).unwrap();
        let (a, _) = blob::encode(
            1,
            "ns",
            "a",
            &[1u8; 100],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let (s1, _) = log.append(&a).unwrap();
        // Prepare until ready: the unprepared active segment is sealed then.
        prepare(&log);
        assert_eq!(log.active_id(), None, "the unprepared segment is sealed");
        let (b, _) = blob::encode(
            2,
            "ns",
            "b",
            &[2u8; 100],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let (c, _) = blob::encode(
            3,
            "ns",
            "c",
            &[3u8; 100],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let locs = log.append_many(&[&b, &c]).unwrap();
        let s2 = locs[0].0;
        assert!(s2 > s1);
        assert!(!dir.path().join(SEG_DIR).join(PREP_NAME).exists());
        // The records went into the zeros: the file keeps its prepared length.
        assert_eq!(log.len_of(s2), Some(1 << 20));
        let ids: Vec<u64> = log.scan(s2).unwrap().iter().map(|(_, h)| h.id).collect();
        assert_eq!(ids, vec![2, 3]);
        // A voided record is gone for a scan; its neighbour stays.
        log.void(s2, locs[0].1, b.len() as u64).unwrap();
        let ids: Vec<u64> = log.scan(s2).unwrap().iter().map(|(_, h)| h.id).collect();
        assert_eq!(ids, vec![3]);
        // A record that does not fit in the prepared length starts a new segment.
        let (big, _) = blob::encode(
            4,
            "ns",
            "d",
            &[4u8; 1 << 20],
            3,
            usize::MAX,
            1,
            0,
            None,
            None,
        );
        let (s3, _) = log.append(&big).unwrap();
        assert!(s3 > s2);
        // A prepared file left by a stopped run is removed at open, never taken as a segment.
        prepare(&log);
        assert!(dir.path().join(SEG_DIR).join(PREP_NAME).exists());
        drop(log);
        let log = SegmentLog::open(dir.path(), 0, 1 << 20).unwrap();
        assert!(!dir.path().join(SEG_DIR).join(PREP_NAME).exists());
        assert_eq!(log.ids(), vec![s1, s2, s3]);
    }

    #[test]
    fn a_log_dropped_while_preparing_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let prep = dir.path().join(SEG_DIR).join(PREP_NAME);
        for _ in 0..3 {
            let log = SegmentLog::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
            assert!(log.keep_prepared().unwrap(), "a preparation starts");
            std::thread::sleep(std::time::Duration::from_millis(2));
            drop(log);
            // The thread is stopped and waited for: its file is gone, or whole and synced
            // (it finished first); never partly written.
            if let Ok(m) = std::fs::metadata(&prep) {
                assert_eq!(m.len(), PREPARED_BYTES, "a partial prepared file is left");
            }
        }
    }

    #[test]
    fn the_scan_start_counts_every_record_of_a_batched_append() {
        // A batch whose newest record is not its first: the segment must still count as
        // holding that id, or a crash recovery would skip it.
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), 0, 64 << 10).unwrap();
        let (a, _) = blob::encode(
            5,
            "ns",
            "a",
            &[1u8; 100],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let (b, _) = blob::encode(
            9,
            "ns",
            "b",
            &[2u8; 100],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let locs = log.append_many(&[&a, &b]).unwrap();
        let s1 = locs[0].0;
        // The next append goes to a new segment: s1 is no longer the active one.
        let (big, _) = blob::encode(
            10,
            "ns",
            "c",
            &[3u8; 70_000],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let (s2, _) = log.append(&big).unwrap();
        assert!(s2 > s1);
        assert_eq!(
            log.scan_start(9),
            s1,
            "the batch's second record (id 9) is in s1"
        );
        assert_eq!(log.scan_start(10), s2);
    }

    #[test]
    fn tombstones_scan_apart_and_the_scan_start_covers_records_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), 0, 64 << 10).unwrap();
        let (rec, _) = blob::encode(
            10,
            "ns",
            "k",
            &[1u8; 40_000],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let (s1, _) = log.append(&rec).unwrap();
        let t = Tomb {
            upto: 10,
            keep_below: log.current_id(),
        };
        let (st, toff) = log
            .append(&encode_tombstone(11, "ns", "k", t, 1, Some(7)))
            .unwrap();
        assert_eq!(st, s1);
        // `scan` leaves the tombstone out; `scan_records` has it, whole.
        assert_eq!(log.scan(s1).unwrap().len(), 1);
        let all = log.scan_records(s1).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].off, all[1].tomb, all[1].header.id),
            (toff, Some(t), 11)
        );
        // A record with id 12 goes to a second segment (the first is full). The scan start
        // for mark 12 is the second; for mark 11 the first (it holds the tombstone, id 11);
        // for a mark above every id, the active one.
        let (rec, _) = blob::encode(
            12,
            "ns",
            "k2",
            &[2u8; 40_000],
            3,
            usize::MAX,
            1,
            0,
            Some(7),
            None,
        );
        let (s2, _) = log.append(&rec).unwrap();
        assert!(s2 > s1);
        assert_eq!(log.scan_start(12), s2);
        assert_eq!(log.scan_start(11), s1);
        assert_eq!(log.scan_start(100), s2);
        // Ids are never reused, even when the newest segment goes.
        log.seal();
        log.remove(s2).unwrap();
        let (rec, _) = blob::encode(13, "ns", "k3", &[3u8; 100], 3, 0, 1, 0, Some(7), None);
        let (s3, _) = log.append(&rec).unwrap();
        assert!(s3 > s2, "segment id {s3} reused");
    }
}

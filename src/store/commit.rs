//! The committer: the one owner (at a time) of the index and the entry map. Its thread
//! serves a queue; a plain default put may be run by its caller while that thread is idle
//! (flat combining, see [`CommitQueue`]). Puts, deletes and clears queue here; whatever has queued while the previous batch was being
//! committed becomes the next batch: its records written, one SQLite transaction (for a batch
//! of default puts only: later, shared with the batches of the next few milliseconds, see
//! below), then every waiter is answered (group commit). It also owns the flusher, reclaim
//! of dead segment space, the disk-bound eviction, TTL expiry, access-time write-back and
//! stats rows.
//!
//! The durability contract (ARCHITECTURE.md, "Storage"):
//! - a default put is answered once its record is written (pwrite): the record is in the
//!   kernel and survives SIGKILL. Its row follows within [`DEFER_FOR`] (or after
//!   [`DEFER_ROWS`] rows, or with the first commit of anything else, whichever is first):
//!   it waits in `unwritten`, visible in the entry map, and is committed (WAL, `NORMAL`)
//!   before anything reads or rewrites rows (deletes, clears, expiry, eviction, compaction,
//!   access-time write-back, snapshots and every other index read, flushes, stop). Until
//!   then recovery after a crash restores it from its record, as it does a sync put's
//!   (the scan of the segments from the last flush point); the id of an answered put is
//!   no longer in flight, so no flush point passes it before its row is in that flush's
//!   commit. One SQLite transaction per few milliseconds instead of per small batch;
//! - every `sync_interval` the flusher fdatasyncs the segments and large-value files written
//!   since the last flush, then commits with `synchronous=FULL` (an fdatasync of the WAL);
//! - a batch holding a `sync` put (or any batch when `sync_interval` is 0) fdatasyncs its
//!   records, then makes the batch visible and answers; its rows then wait in `unwritten`
//!   as a default put's do (`NORMAL`, within [`DEFER_FOR`]; a failed commit is retried with
//!   the next one): one fdatasync per group, shared by
//!   concurrent sync puts (group commit). The segment is the log of truth: the rows reach
//!   the disk with the next full flush, and until then recovery finds the records by scanning
//!   the segments from the scan start recorded with `verified_below`;
//! - a batch that records a new namespace owner makes it durable before answering (records,
//!   then a `FULL` commit), so recovery can tell an owner's scanned records from a loser's;
//! - a delete, clear or expiry appends a tombstone (segment.rs) before its commit, so a
//!   rebuild from the records, or recovery's scan, never brings the removed value back;
//! - when a commit fails, nothing of the batch becomes visible and every op of it is answered
//!   with the error; when a sync batch's records cannot be flushed, its puts are taken back
//!   out of the index and answered with the error (its deletes are done and answered so);
//!   either way a refused put's segment record is zeroed (`discard_record`), so no scan
//!   after a crash brings it back: what is visible and what was answered agree. Not so an
//!   entry of a visible PutMany that a newer version or a delete kept out: its record stays
//!   whole (`leave_in_batch`), for recovery indexes a batch only when it finds all of its
//!   records;
//! - never `syncfs`.
//!
//! Each full flush (records first, then the mark's commit) records `verified_below`: every
//! row with a smaller id was durable, record and row. After an unclean stop, recovery checks the records of the rows at or above it (a
//! power loss may have kept a row whose record never reached the disk): a bad one is a miss.

use crate::store::entries::{Entry, pack_loc, unpack_loc};
use crate::store::error::StoreError;
use crate::store::index::{self, Row};
use crate::store::segment;
use crate::store::state::{Shared, unix_ns};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where an answer goes.
pub type Reply<T> = SyncSender<Result<T, StoreError>>;

/// How a put is answered: called once, on the committer thread, when its record is written
/// and its row committed or, for a default put, visible and waiting for its commit (or when
/// it is refused). A callback rather than a channel, so that an async caller is woken directly
/// (one thread hop) and a blocking one can wrap a channel; dropped unanswered only when the
/// committer stops, which the caller sees as its sender gone.
pub type PutReply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// How blocking callers learn that their answer is in (engine.rs, `reply_channel`): each
/// answer goes into a slot of its caller's, and the callers wait on this one futex word. The
/// answers of a batch ring it once, at the end of [`answering`]: one wake-up call for all of
/// a group's writers instead of one per writer. A caller woken for another's answer checks
/// its slot and waits again. One per process: its word only says that some answer came.
pub struct Bell {
    epoch: AtomicU32,
    waiters: AtomicU32,
}

/// The bell of every blocking put.
pub static BELL: Bell = Bell {
    epoch: AtomicU32::new(0),
    waiters: AtomicU32::new(0),
};

thread_local! {
    /// Inside [`answering`] on this thread: whether an answer asked for a ring.
    static ANSWERING: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Wake up to `n` threads waiting on `word` (FUTEX_WAKE, private).
fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 that the reference keeps alive for the
    // call; no other memory is read or written.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// Sleep while `word` holds `expected`, until woken or `timeout` (None: no timeout) passed
/// (FUTEX_WAIT, private; it returns at once when the word no longer holds `expected`).
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that the reference keeps alive for the
    // call, with a relative timeout read from `ts` (alive for the call) or none.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

impl Bell {
    /// Wake every caller waiting (they check their slots).
    fn ring(&self) {
        self.epoch.fetch_add(1, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            futex_wake(&self.epoch, i32::MAX);
        }
    }

    /// An answer was put in its slot: ring now, or once the batch's answers are all in
    /// (inside [`answering`] on this thread).
    pub fn ring_soon(&self) {
        let deferred = ANSWERING.with(|a| match a.get() {
            Some(_) => {
                a.set(Some(true));
                true
            }
            None => false,
        });
        if !deferred {
            self.ring();
        }
    }

    /// Block until `answered()` holds (checked after every ring).
    pub fn wait_until(&self, answered: impl Fn() -> bool) {
        // Registered before the check: a ring either sees the count or comes after the
        // epoch read below, which the futex call then finds changed.
        self.waiters.fetch_add(1, SeqCst);
        loop {
            let epoch = self.epoch.load(SeqCst);
            if answered() {
                break;
            }
            futex_wait(&self.epoch, epoch, None);
        }
        self.waiters.fetch_sub(1, SeqCst);
    }
}

/// Run `answer` (a batch's answers) with the rings of its blocking callers held back to one
/// at the end.
fn answering(answer: impl FnOnce()) {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            if ANSWERING.with(|a| a.take()) == Some(true) {
                BELL.ring();
            }
        }
    }
    ANSWERING.with(|a| a.set(Some(false)));
    let _done = Done;
    answer();
}

/// Why an entry is being removed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Why {
    /// The caller asked.
    User,
    /// Its TTL passed.
    Expired,
    /// Its bytes failed a check or its file is gone.
    Broken,
}

/// Who writes a put, for the namespace owner check done here (one owner even when two
/// users' first puts race).
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    /// The caller's uid (None: in-process, unchecked).
    pub uid: Option<u32>,
    /// The owner to record when the namespace is new.
    pub claim: u32,
}

/// Where a put's record is when its row reaches the committer.
pub enum Record {
    /// Written by the caller; the row's `loc` says where (None: a file of its own).
    Written,
    /// Encoded, to be appended to the active segment of the row's node by the committer
    /// with the other records of its batch (one write for all of them), before the batch's
    /// commit. Only where no thread placement matters (one node, or NUMA off).
    Pending(Vec<u8>),
}

/// Work for the committer.
pub enum Op {
    /// Index a record written to its shard (or to write now, see [`Record`]).
    Put {
        /// The row.
        row: Row,
        /// The record.
        record: Record,
        /// Who writes it.
        writer: Writer,
        /// Answer only once record and row are on stable storage.
        sync: bool,
        /// Answer.
        reply: PutReply,
    },
    /// Index the records of one PutMany (one namespace, distinct keys) already written to
    /// their shards: all rows in this batch's transaction, or none. `reply` gets one answer
    /// per row indexed, all alike (or one when none was).
    PutMany {
        /// The rows, one per record.
        rows: Vec<Row>,
        /// Who writes them.
        writer: Writer,
        /// Answer only once records and rows are on stable storage.
        sync: bool,
        /// Answer.
        reply: Reply<()>,
    },
    /// Remove an entry (only if it is still `only_id`, when given).
    Delete {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Only this id.
        only_id: Option<u64>,
        /// Why.
        why: Why,
        /// Answer: whether something was removed.
        reply: Option<Reply<bool>>,
    },
    /// Remove every entry of a namespace.
    Clear {
        /// Namespace.
        ns: String,
        /// Answer: entries removed.
        reply: Reply<u64>,
    },
    /// The disk filled up: evict this many bytes (least recently used first).
    Pressure(u64),
    /// Run with the committer (index access, snapshots).
    Exec(Box<dyn FnOnce(&mut Committer) + Send>),
    /// Write back, mark the index clean and stop; answer when done.
    Stop(Option<Reply<()>>),
    /// Nothing to do: a put run by its caller (see [`CommitQueue`]) moved a deadline
    /// earlier, so the committer thread looks at its timers again.
    Wake,
}

/// The committer thread has stopped: nothing more is taken.
#[derive(Debug)]
pub struct Stopped;

/// The committer's state and its queue. The committer thread serves the queue; a thread
/// with a plain default put runs it itself when nothing is queued and the state is free
/// (flat combining), which spares the put two thread hand-offs (to the committer thread and
/// back) and their wake-ups. Whoever holds `state` is the committer: the index, the entry
/// map and every other piece of committer state keep one owner at a time, and nothing
/// runs ahead of an op already queued.
pub struct CommitQueue {
    state: Mutex<Committer>,
    tx: Sender<Op>,
    /// Ops sent and not yet taken into a batch under `state` (a caller runs its own put
    /// only when this is 0).
    queued: AtomicUsize,
    /// How a gathering committer is told that the puts it waits for are queued.
    arrivals: Arrivals,
}

/// How the committer waits in [`Committer::gather`] for the rest of a batch: once for the
/// count it needs, not once per op. A send into the channel wakes a committer blocked in
/// `recv`; while gathering it is not in `recv` (the sends cost no system call) but waits on
/// `epoch`, which a sender rings only when its op makes `sent` reach `wake_at`.
struct Arrivals {
    /// Ops sent into the channel so far (counted after the op is in it).
    sent: AtomicUsize,
    /// The `sent` count the gathering committer waits for (usize::MAX: nobody waits).
    wake_at: AtomicUsize,
    /// Futex word, bumped by the ring.
    epoch: AtomicU32,
}

impl Arrivals {
    fn new() -> Arrivals {
        Arrivals {
            sent: AtomicUsize::new(0),
            wake_at: AtomicUsize::new(usize::MAX),
            epoch: AtomicU32::new(0),
        }
    }

    /// After an op went into the channel.
    fn sent_one(&self) {
        let n = self.sent.fetch_add(1, SeqCst) + 1;
        if n >= self.wake_at.load(SeqCst) {
            self.wake_at.store(usize::MAX, SeqCst);
            self.epoch.fetch_add(1, SeqCst);
            futex_wake(&self.epoch, 1);
        }
    }

    /// Wait until `more` ops beyond `seen` (a `sent` count) were sent, or `left` passed.
    fn wait_for(&self, seen: usize, more: usize, left: Duration) {
        let epoch = self.epoch.load(SeqCst);
        let target = seen.saturating_add(more.max(1));
        self.wake_at.store(target, SeqCst);
        if self.sent.load(SeqCst) < target {
            // Returns at once when a sender rang after the read above.
            futex_wait(&self.epoch, epoch, Some(left));
        }
        self.wake_at.store(usize::MAX, SeqCst);
    }
}

impl CommitQueue {
    /// A queue over `committer`; the committer thread serves `rx` (see [`Committer::run`]).
    pub fn new(committer: Committer) -> (Arc<CommitQueue>, Receiver<Op>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = CommitQueue {
            state: Mutex::new(committer),
            tx,
            queued: AtomicUsize::new(0),
            arrivals: Arrivals::new(),
        };
        (Arc::new(q), rx)
    }

    /// Queue `op` for the committer thread; Err when the thread has stopped (the op, and
    /// with it any reply it carries, is dropped unanswered).
    pub fn send(&self, op: Op) -> Result<(), Stopped> {
        self.queued.fetch_add(1, SeqCst);
        self.tx.send(op).map_err(|_| {
            self.queued.fetch_sub(1, SeqCst);
            Stopped
        })?;
        self.arrivals.sent_one();
        Ok(())
    }

    /// Run `op` on this thread when it is a put the committer would answer at once (see
    /// [`Committer::takes_inline`]), nothing is queued ahead of it and the committer is idle;
    /// otherwise queue it.
    pub fn offer(&self, op: Op) -> Result<(), Stopped> {
        match self.try_inline(op) {
            None => Ok(()),
            Some(op) => self.send(op),
        }
    }

    /// None when `op` ran here; Some(op) when it must be queued.
    fn try_inline(&self, op: Op) -> Option<Op> {
        if self.queued.load(SeqCst) != 0 {
            return Some(op);
        }
        // Never wait for the lock: the committer thread holds it through a batch, a flush or
        // a gather, and then the op joins its queue.
        let Ok(mut c) = self.state.try_lock() else {
            return Some(op);
        };
        if self.queued.load(SeqCst) != 0 || !c.takes_inline(&op) {
            return Some(op);
        }
        let before = c.next_deadline();
        c.inline = true;
        c.run_batch(vec![op]);
        c.inline = false;
        let woken = c.next_deadline() < before;
        let pressure = std::mem::take(&mut c.pressure_later);
        drop(c);
        if pressure > 0 {
            // A full disk: the committer thread evicts.
            let _ = self.send(Op::Pressure(pressure));
        } else if woken {
            // The thread sleeps until `before`: it must commit the rows this put left
            // waiting within DEFER_FOR, and flush within the interval.
            let _ = self.send(Op::Wake);
        }
        None
    }

    fn lock(&self) -> MutexGuard<'_, Committer> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The committer's state.
pub struct Committer {
    /// The index connection (only this thread uses it).
    pub conn: rusqlite::Connection,
    /// State shared with the Cache.
    pub shared: Arc<Shared>,
    last_touch_flush: Instant,
    last_stats: Instant,
    last_ttl: Instant,
    last_flush: Instant,
    last_reclaim: Instant,
    /// Something was committed or written since the last full flush.
    dirty: bool,
    /// Live stored bytes per (node, segment).
    live: HashMap<(u32, u32), u64>,
    /// Segments with nothing live, removed after the next full flush (so that the deletes
    /// emptying them are durable before their bytes go).
    to_unlink: Vec<(u32, u32)>,
    /// The reserve file: room for the index's own writes when the disk is full.
    reserve: PathBuf,
    /// Tombstones per (node, segment): offset, stored length, what it says.
    tombs: HashMap<(u32, u32), Vec<TombAt>>,
    /// Segments that were there at open and whose tombstones are not read yet (read by a scan
    /// when the segment is about to go).
    tombs_unknown: HashSet<(u32, u32)>,
    /// Key hash -> `upto` of tombstones written while puts with ids up to it may still be in
    /// flight: such a put arriving after the delete happened before it, and is never visible
    /// (as a rebuild would see it).
    recent_tombs: HashMap<u64, u64>,
    /// Commits since the last checkpoint (the WAL is checkpointed only right after a full
    /// flush; this bounds it when the interval is long).
    commits_since_checkpoint: u64,
    /// Changes of batches already visible and answered whose commit is still to come
    /// (a sync batch's records are durable; a default batch's are in the kernel): the next
    /// commit writes them first. Until then recovery would find their records by its scan
    /// (no flush point can pass them: a flush commits them first).
    unwritten: Vec<Change>,
    /// When the oldest change in `unwritten` was answered (None: nothing is waiting).
    unwritten_since: Option<Instant>,
    /// Large-value files (node, id) of PutMany entries never made visible (a newer version
    /// or a delete came first), removed once a commit has written their batch's rows: until
    /// then recovery must find every record of the batch to index the rest of it.
    batch_leftovers: Vec<(u32, u64)>,
    /// Puts in the last batch that flushed, and how long its flush took (gather's aim).
    last_group: u64,
    last_flush_time: Duration,
    /// The `next_id` the index holds: every id handed out so far is below it.
    id_ceiling: u64,
    /// When a batch of puts that flushes (sync puts) last came (segments are prepared while
    /// they come).
    put_flush_at: Option<Instant>,
    /// No segment is prepared before this (a preparation failed).
    prepare_after: Option<Instant>,
    /// The committer thread took Stop: no put runs on a caller's thread any more.
    stopping: bool,
    /// A batch is running on a caller's thread (see [`CommitQueue`]).
    inline: bool,
    /// Bytes to evict that a batch run on a caller's thread left to the committer thread.
    pressure_later: u64,
}

/// A flush point: `verified_below` and, per node, the first segment recovery scans.
pub struct Mark {
    below: u64,
    scan_from: Vec<(u32, u32)>,
}

/// What answering (or taking back) a put of this batch needs of its row, so the row itself
/// moves into the batch's changes instead of being copied.
#[derive(Clone, Copy)]
struct Placed {
    id: u64,
    node: u32,
    /// Where the record is in a segment (None: a file of its own).
    loc: Option<(u32, u64)>,
    /// The record's stored length.
    stored: u64,
    /// The key's hash in the entry map.
    hash: u64,
}

impl Placed {
    fn of(row: &Row, hash: u64) -> Placed {
        Placed {
            id: row.id,
            node: row.node,
            loc: row.loc,
            stored: row.stored,
            hash,
        }
    }
}

/// A tombstone in a segment: offset, stored length, what it says.
type TombAt = (u64, u64, segment::Tomb);

/// An entry a tombstone is written for.
struct TombTarget {
    id: u64,
    node: u32,
    names: Option<(String, String)>,
}

const TOUCH_EVERY: Duration = Duration::from_secs(5);
/// How long the row of an answered default put may wait for its commit.
pub const DEFER_FOR: Duration = Duration::from_millis(10);
/// How many rows of answered puts may wait for their commit (then they are committed with
/// the batch that reaches it).
pub const DEFER_ROWS: usize = 1024;
const TTL_EVERY: Duration = Duration::from_millis(500);
const RECLAIM_EVERY: Duration = Duration::from_millis(500);
const MAX_BATCH: usize = 4096;
const MAX_GATHER: Duration = Duration::from_millis(2);
const MIN_GATHER: Duration = Duration::from_micros(100);
/// Segments are prepared while puts flushed within this long.
const PREPARE_WHILE: Duration = Duration::from_secs(10);
/// Wait after a failed preparation.
const PREPARE_RETRY: Duration = Duration::from_secs(30);
/// Commits after which a full flush (and its checkpoint) runs before the interval is over.
const MAX_UNCHECKPOINTED: u64 = 20_000;
/// Commits after which a full flush also checkpoints the WAL.
const CHECKPOINT_AFTER: u64 = 256;
/// Ids reserved in the index at a time: a batch writes `next_id` (a page of its own in the
/// WAL) only when ids pass the last reserve, not in every commit.
const ID_RESERVE: u64 = 1 << 20;
/// Size of the reserve file kept beside the index.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// Whether a batch's committed-later rows wait, and how long.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Defer {
    /// Committed before the batch is answered.
    No,
    /// Default puts: committed within `DEFER_FOR` or with the next commit.
    Wait,
}

#[derive(Clone)]
enum Change {
    Insert(Row),
    /// Remove the entry of map hash `hash` if it is still entry `id`.
    Remove {
        hash: u64,
        id: u64,
    },
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::NoSpace(m) => StoreError::NoSpace(m.clone()),
        StoreError::PermissionDenied(m) => StoreError::PermissionDenied(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl Committer {
    /// A committer over `conn`; `live` is the live bytes per segment of the loaded rows.
    pub fn new(
        conn: rusqlite::Connection,
        shared: Arc<Shared>,
        live: HashMap<(u32, u32), u64>,
    ) -> Committer {
        let now = Instant::now();
        let reserve = shared.cfg.dir.join("reserve");
        let tombs_unknown = shared
            .layout()
            .shards
            .values()
            .flat_map(|s| s.segments.ids().into_iter().map(|seg| (s.node, seg)))
            .collect();
        // Cache::open wrote the starting next_id to the index before starting us.
        let id_ceiling = shared.next_id.load(Relaxed);
        let mut c = Committer {
            conn,
            shared,
            last_touch_flush: now,
            last_stats: now,
            last_ttl: now,
            last_flush: now,
            last_reclaim: now,
            dirty: false,
            live,
            to_unlink: Vec::new(),
            reserve,
            tombs: HashMap::new(),
            tombs_unknown,
            recent_tombs: HashMap::new(),
            commits_since_checkpoint: 0,
            last_group: 0,
            last_flush_time: MAX_GATHER,
            unwritten: Vec::new(),
            unwritten_since: None,
            batch_leftovers: Vec::new(),
            id_ceiling,
            put_flush_at: None,
            prepare_after: None,
            stopping: false,
            inline: false,
            pressure_later: 0,
        };
        // No automatic checkpoint: one inside a NORMAL commit fsyncs the WAL and the database,
        // making rows durable whose records were not flushed yet (after a power loss such a
        // row's record is torn, and the version it replaced is gone with it). The committer
        // checkpoints right after each full flush instead, when every row has its record.
        if let Err(e) = c.conn.pragma_update(None, "wal_autocheckpoint", 0) {
            tracing::warn!("turning off automatic WAL checkpoints: {e}");
        }
        c.ensure_reserve();
        // Record where recovery's scan starts in this run (the segments of the last one are
        // covered by the index now).
        if let Err(e) = c.full_flush() {
            tracing::warn!("recording the first flush point: {e}");
        }
        c
    }

    /// Keep the reserve file at its size (best effort: on a full disk it stays short).
    fn ensure_reserve(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.reserve);
        let Ok(f) = f else { return };
        if f.metadata().map(|m| m.len()).unwrap_or(0) >= RESERVE_BYTES {
            return;
        }
        // Real bytes, not a hole: on copy-on-write btrfs only written extents hold space.
        let chunk = vec![0u8; 1 << 20];
        use std::io::Write;
        let mut w = &f;
        let mut n = 0;
        while n < RESERVE_BYTES {
            if w.write_all(&chunk).is_err() {
                let _ = f.set_len(0);
                return;
            }
            n += chunk.len() as u64;
        }
        let _ = segment::fdatasync(&f);
    }

    /// Give the reserve's room back to the filesystem (the disk is full and the index must
    /// commit evictions).
    fn release_reserve(&self) {
        if std::fs::remove_file(&self.reserve).is_ok() {
            tracing::warn!("disk full: released the index reserve to commit evictions");
        }
    }

    /// Serve `rx` until Stop or until every sender is gone: the committer thread. It holds
    /// the state while it works, not while it sleeps, so a caller may run a put meanwhile
    /// (see [`CommitQueue`]).
    pub fn run(q: Arc<CommitQueue>, rx: Receiver<Op>) {
        let mut stop_reply = None;
        loop {
            let wait = q
                .lock()
                .next_deadline()
                .saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut c = q.lock();
            let mut stop = None;
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                let taken = batch.len() + c.gather(&q.arrivals, &rx, &mut batch);
                // Taken, and run before the state is let go: a caller that finds nothing
                // queued runs after all of them.
                q.queued.fetch_sub(taken, SeqCst);
                batch.retain(|op| !matches!(op, Op::Wake));
                if batch.iter().any(|op| matches!(op, Op::Stop(_))) {
                    c.stopping = true;
                }
                if !batch.is_empty() {
                    stop = c.run_batch(batch);
                }
            }
            c.periodic();
            if let Some(r) = stop {
                stop_reply = r;
                break;
            }
        }
        let mut c = q.lock();
        c.stopping = true;
        let res = c.shutdown();
        if let Some(r) = stop_reply {
            let _ = r.send(res);
        }
    }

    /// Whether `op` may run on its caller's thread: a default put (or PutMany) into a
    /// namespace whose owner is known (no claim to make durable), answered once its record
    /// is written, with nothing due that takes longer than a pwrite (the deferred rows'
    /// commit, eviction). Everything else goes to the committer thread.
    fn takes_inline(&self, op: &Op) -> bool {
        if self.stopping || self.sync_interval().is_zero() {
            return false;
        }
        let (ns, rows, stored) = match op {
            Op::Put {
                row, sync: false, ..
            } => (&row.namespace, 1, row.stored),
            Op::PutMany {
                rows, sync: false, ..
            } => match rows.first() {
                Some(r) => (
                    &r.namespace,
                    rows.len(),
                    rows.iter().map(|r| r.stored).sum(),
                ),
                None => return false,
            },
            _ => return false,
        };
        self.owner_of(&HashMap::new(), ns).is_some()
            && self.unwritten.len() + rows < DEFER_ROWS
            && self.shared.stats.stored_total().saturating_add(stored) <= self.shared.cfg.max_bytes
    }

    /// A batch that will flush: puts still writing their record will be here in a moment, so
    /// wait for them (briefly) to share this flush instead of paying for the next one,
    /// writing the records of those already here meanwhile (a failed one is answered and
    /// leaves the batch; a full disk's pressure joins it as `Op::Pressure`). A batch without
    /// a flush commits at once (its commit costs no fdatasync). Returns how many ops it took
    /// from the queue.
    fn gather(&mut self, arrivals: &Arrivals, rx: &Receiver<Op>, batch: &mut Vec<Op>) -> usize {
        let is_put = |op: &Op| matches!(op, Op::Put { .. } | Op::PutMany { .. });
        let flushes = self.sync_interval().is_zero()
            || batch.iter().any(|op| {
                matches!(
                    op,
                    Op::Put { sync: true, .. } | Op::PutMany { sync: true, .. }
                )
            });
        let mut queued = batch.iter().filter(|op| is_put(op)).count() as u64;
        if queued == 0 || !flushes {
            return 0;
        }
        // Puts that flush: keep a prepared segment ready (`prepare_segments`).
        self.put_flush_at = Some(Instant::now());
        // Also wait for as many puts as the last flushed batch had: its writers are on their
        // way back (a writer between its answer and its next put is not counted in flight
        // yet, and a batch without it costs it a whole flush of its own), but never longer
        // than half a flush.
        let want = self.last_group;
        let cap = (self.last_flush_time / 2).clamp(MIN_GATHER, MAX_GATHER);
        let deadline = Instant::now() + cap;
        let mut taken = 0;
        let mut pressure = 0;
        'gather: loop {
            let need = self.shared.puts_in_flight.load(Relaxed).max(want);
            if queued >= need || batch.len() >= MAX_BATCH {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // The records of the puts here go to their segments while the others come.
            pressure = pressure.max(self.write_pending(batch));
            // Wait once for the rest (not once per op); the ops that came meanwhile are
            // taken first.
            let seen = arrivals.sent.load(SeqCst);
            let mut got = false;
            while batch.len() < MAX_BATCH
                && let Ok(op) = rx.try_recv()
            {
                got = true;
                taken += 1;
                queued += u64::from(is_put(&op));
                let stop = matches!(op, Op::Stop(_));
                batch.push(op);
                if stop {
                    break 'gather;
                }
            }
            if !got {
                arrivals.wait_for(seen, (need - queued) as usize, left);
            }
        }
        if pressure > 0 {
            batch.push(Op::Pressure(pressure));
        }
        taken
    }

    fn sync_interval(&self) -> Duration {
        self.shared.cfg.sync_interval
    }

    fn next_deadline(&self) -> Instant {
        let stats = self.last_stats + self.shared.cfg.stats_interval;
        let touch = self.last_touch_flush + TOUCH_EVERY;
        let ttl = self.last_ttl + TTL_EVERY;
        let mut d = stats
            .min(touch)
            .min(ttl)
            .min(self.last_reclaim + RECLAIM_EVERY);
        if self.dirty {
            d = d.min(self.last_flush + self.sync_interval());
        }
        if let Some(since) = self.unwritten_since {
            d = d.min(since + DEFER_FOR);
        }
        d
    }

    /// Commit the rows waiting in `unwritten` (answered puts), if any. On failure they stay
    /// there for the next commit (visible, answered, their records in the kernel).
    fn commit_unwritten(&mut self) -> Result<(), StoreError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        self.commit(&[], &[], false, None)
    }

    fn periodic(&mut self) {
        let now = Instant::now();
        if self
            .unwritten_since
            .is_some_and(|since| now >= since + DEFER_FOR)
        {
            match self.commit_unwritten() {
                Ok(()) => {}
                Err(StoreError::NoSpace(e)) => {
                    // The index could not grow: as for a batch, free the reserve and evict
                    // (eviction's commit carries the waiting rows first).
                    tracing::warn!("committing the rows of answered puts: disk full: {e}");
                    self.release_reserve();
                    self.evict((self.shared.stats.stored_total() / 20).max(1));
                }
                Err(e) => {
                    // Retried after another DEFER_FOR, not in a loop.
                    self.unwritten_since = Some(now);
                    tracing::warn!("committing the rows of answered puts (retried): {e}");
                }
            }
            if !self.unwritten.is_empty() {
                self.unwritten_since = Some(now);
            }
        }
        if now >= self.last_ttl + TTL_EVERY {
            self.last_ttl = now;
            if self.shared.ttl_entries.load(Relaxed) > 0 {
                self.expire();
            }
        }
        if now >= self.last_touch_flush + TOUCH_EVERY {
            self.last_touch_flush = now;
            self.shared.map.renormalize_if_needed();
            if let Err(e) = self.write_back_touches() {
                tracing::warn!("writing back access times: {e}");
            }
        }
        if now >= self.last_stats + self.shared.cfg.stats_interval {
            self.last_stats = now;
            if let Err(e) = self.write_stats() {
                tracing::warn!("writing a numa_cache_stats row: {e}");
            }
        }
        if now >= self.last_reclaim + RECLAIM_EVERY {
            self.last_reclaim = now;
            self.reclaim();
            self.ensure_reserve();
        }
        self.prepare_segments(now);
        if self.dirty
            && (now >= self.last_flush + self.sync_interval()
                || self.commits_since_checkpoint >= MAX_UNCHECKPOINTED)
        {
            if let Err(e) = self.full_flush() {
                // Retried at the next interval; the data stays in the kernel meanwhile.
                tracing::error!("background flush failed (will retry): {e}");
            }
        }
    }

    fn current(&self, pending: &HashMap<u64, Option<(u64, u32)>>, h: u64) -> Option<(u64, u32)> {
        match pending.get(&h) {
            Some(p) => *p,
            None => self.shared.map.with_hash(h, |e| (e.id, u32::from(e.node))),
        }
    }

    /// The owner of `ns` as this batch sees it (pending claims first).
    fn owner_of(&self, pending_ns: &HashMap<String, Option<u32>>, ns: &str) -> Option<Option<u32>> {
        if let Some(o) = pending_ns.get(ns) {
            return Some(*o);
        }
        self.shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
            .copied()
    }

    /// Drop the record of a put that will not be indexed (a large value's file goes now; a
    /// segment record is zeroed, its space reclaimed with its segment).
    fn discard_record(&self, row: &Row) {
        self.discard(&Placed::of(row, 0));
    }

    /// A PutMany entry that is never visible (a newer version of its key, or a delete, came
    /// first), while the rest of its batch is. Its record stays whole: recovery indexes a
    /// batch's records only when it finds all of them, and ids (or the delete's tombstone)
    /// keep this one out anyway, in recovery's scan as in a rebuild. A segment record is
    /// dead space; a large value's file goes once the batch's rows are committed.
    /// The file goes into `leftovers`, for [`Committer::remove_leftovers`].
    fn leave_in_batch(&self, row: &Row, leftovers: &mut Vec<(u32, u64)>) {
        if let Some(t) = self.shared.layout().tiers.get(&row.node) {
            t.remove(row.id);
        }
        if row.loc.is_none() {
            leftovers.push((row.node, row.id));
        }
    }

    /// Remove the files of [`Committer::leave_in_batch`]: now when their batch's rows are
    /// committed (or the batch failed), else with the commit of the waiting rows.
    fn remove_leftovers(&mut self, leftovers: Vec<(u32, u64)>, rows_waiting: bool) {
        if rows_waiting {
            self.batch_leftovers.extend(leftovers);
            return;
        }
        let layout = self.shared.layout();
        for (node, id) in leftovers {
            if let Some(s) = layout.shards.get(&node) {
                let _ = s.remove_blob(id);
            }
        }
    }

    /// [`Committer::discard_record`] of an answered put's row.
    fn discard(&self, p: &Placed) {
        let layout = self.shared.layout();
        if let Some(s) = layout.shards.get(&p.node) {
            match p.loc {
                None => {
                    let _ = s.remove_blob(p.id);
                }
                // Zeroed, so that no scan (recovery after a crash, a rebuild) brings back a
                // put that was refused or never visible.
                Some((seg, off)) => {
                    if let Err(e) = s.segments.void(seg, off, p.stored) {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
        if let Some(t) = layout.tiers.get(&p.node) {
            t.remove(p.id);
        }
    }

    /// Namespace and key of each target: given, a row of this batch, or the index's row.
    fn name_targets(
        &self,
        targets: Vec<TombTarget>,
        inserted: &HashMap<u64, &Row>,
    ) -> Vec<TombTarget> {
        targets
            .into_iter()
            .filter_map(|mut t| {
                if t.names.is_none() {
                    // A row still waiting for its commit is not in the index yet.
                    let waiting = || {
                        self.unwritten.iter().find_map(|c| match c {
                            Change::Insert(r) if r.id == t.id => Some(r),
                            _ => None,
                        })
                    };
                    t.names = match inserted.get(&t.id).copied().or_else(waiting) {
                        Some(r) => Some((r.namespace.clone(), r.key.clone())),
                        None => index::entry_names(&self.conn, t.id).ok().flatten(),
                    };
                }
                t.names.is_some().then_some(t)
            })
            .collect()
    }

    /// Append a tombstone for each target to its node's active segment (best effort: one that
    /// cannot be written is logged; the removal stands in the index, only a rebuild from the
    /// records alone could bring that value back).
    fn write_tombstones(&mut self, targets: Vec<TombTarget>) {
        let layout = self.shared.layout();
        let now = unix_ns() / 1_000_000_000;
        let owners = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for t in targets {
            let Some((ns, key)) = t.names else { continue };
            let Some(shard) = layout.shards.get(&t.node) else {
                continue;
            };
            let tomb = segment::Tomb {
                upto: t.id,
                keep_below: shard.segments.current_id(),
            };
            let id = self.shared.next_id.fetch_add(1, Relaxed);
            let owner = owners.get(&ns).copied().flatten();
            let rec = segment::encode_tombstone(id, &ns, &key, tomb, now, owner);
            match shard.segments.append(&rec) {
                Ok((seg, off)) => {
                    self.tombs.entry((t.node, seg)).or_default().push((
                        off,
                        rec.len() as u64,
                        tomb,
                    ));
                }
                Err(e) => tracing::warn!("writing the tombstone of {ns}/{key}: {e}"),
            }
        }
    }

    /// Read the tombstones of a segment that was there at open (once).
    fn load_tombs(&mut self, node: u32, seg: u32) {
        if !self.tombs_unknown.remove(&(node, seg)) {
            return;
        }
        let layout = self.shared.layout();
        let Some(s) = layout.shards.get(&node) else {
            return;
        };
        match s.segments.scan_records(seg) {
            Ok(recs) => {
                let found: Vec<TombAt> = recs
                    .into_iter()
                    .filter_map(|r| r.tomb.map(|t| (r.off, r.header.stored_len(), t)))
                    .collect();
                if !found.is_empty() {
                    self.tombs.insert((node, seg), found);
                }
            }
            Err(e) => {
                // Unknown again: it is not removed while its tombstones cannot be read.
                self.tombs_unknown.insert((node, seg));
                tracing::warn!("reading the tombstones of segment {seg} of node {node}: {e}");
            }
        }
    }

    /// Tombstones of segment `seg` still needed: a segment up to its `keep_below` (other
    /// than `seg`) exists, which may hold a version of its key.
    fn needed_tombs(&self, node: u32, seg: u32, ids: &[u32]) -> Vec<TombAt> {
        self.tombs
            .get(&(node, seg))
            .map(|v| {
                v.iter()
                    .filter(|(_, _, t)| ids.iter().any(|&s| s != seg && s <= t.keep_below))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// May segment `seg` (nothing live in it) go without a copy of anything? Its tombstones
    /// are known and none is needed.
    fn can_unlink(&self, node: u32, seg: u32, ids: &[u32]) -> bool {
        !self.tombs_unknown.contains(&(node, seg)) && self.needed_tombs(node, seg, ids).is_empty()
    }

    /// Append the pending records of `batch` to their shards' active segments: the records
    /// of one node in one write (a buffered write on btrfs has a large fixed cost per call),
    /// in pieces of at most a segment. Each row gets its location; a put whose record could
    /// not be written is answered with the error here, un-counted, and dropped from the
    /// batch. Returns the bytes to evict when the disk was full.
    fn write_pending(&mut self, batch: &mut Vec<Op>) -> u64 {
        // node -> (index in batch, record bytes)
        let mut by_node: HashMap<u32, Vec<(usize, Vec<u8>)>> = HashMap::new();
        for (i, op) in batch.iter_mut().enumerate() {
            if let Op::Put { row, record, .. } = op
                && let Record::Pending(bytes) = std::mem::replace(record, Record::Written)
            {
                by_node.entry(row.node).or_default().push((i, bytes));
            }
        }
        if by_node.is_empty() {
            return 0;
        }
        let layout = self.shared.layout();
        let mut written: HashMap<usize, Result<(u32, u64), StoreError>> = HashMap::new();
        for (node, records) in by_node {
            let Some(shard) = layout.shards.get(&node) else {
                for (i, _) in records {
                    let e = StoreError::Unavailable(format!("no shard for node {node}"));
                    written.insert(i, Err(e));
                }
                continue;
            };
            let limit = shard.segments.seg_bytes.clamp(1, 8 << 20);
            let mut rest = records.as_slice();
            while !rest.is_empty() {
                // One piece: as many records as fit in `limit` (always at least one), written
                // with one append (each record ALIGN-padded, each id counted for the scan).
                let mut n = 0;
                let mut size = 0u64;
                for (_, bytes) in rest {
                    let at = segment::padded(size);
                    if n > 0 && at + bytes.len() as u64 > limit {
                        break;
                    }
                    size = at + bytes.len() as u64;
                    n += 1;
                }
                let (piece, later) = rest.split_at(n);
                let refs: Vec<&[u8]> = piece.iter().map(|(_, b)| b.as_slice()).collect();
                match shard.segments.append_many(&refs) {
                    Ok(locs) => {
                        for ((i, _), loc) in piece.iter().zip(locs) {
                            written.insert(*i, Ok(loc));
                        }
                    }
                    Err(e) => {
                        for (i, _) in piece {
                            written.insert(*i, Err(clone_err(&e)));
                        }
                    }
                }
                rest = later;
            }
        }
        let mut pressure = 0u64;
        let mut i = 0;
        batch.retain_mut(|op| {
            let outcome = written.remove(&i);
            i += 1;
            match outcome {
                None => true,
                Some(Ok(loc)) => {
                    if let Op::Put { row, .. } = op {
                        row.loc = Some(loc);
                    }
                    true
                }
                Some(Err(e)) => {
                    if let Op::Put { row, reply, .. } = std::mem::replace(op, Op::Pressure(0)) {
                        if let Some(t) = layout.tiers.get(&row.node) {
                            t.remove(row.id);
                        }
                        if matches!(e, StoreError::NoSpace(_)) {
                            pressure = pressure.max(
                                row.stored
                                    .saturating_mul(4)
                                    .max(self.shared.stats.stored_total() / 20),
                            );
                        }
                        self.shared.puts_in_flight.fetch_sub(1, Relaxed);
                        reply(Err(e));
                    }
                    false
                }
            }
        });
        pressure
    }

    /// Apply a batch; Some when it held Stop (with its reply, if any).
    fn run_batch(&mut self, mut batch: Vec<Op>) -> Option<Option<Reply<()>>> {
        let mut stop = None;
        let mut execs = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut new_ns: Vec<(String, Option<u32>)> = Vec::new();
        let mut pending_ns: HashMap<String, Option<u32>> = HashMap::new();
        let mut put_replies: Vec<(PutReply, Placed)> = Vec::new();
        let mut bool_replies: Vec<(Reply<bool>, bool)> = Vec::new();
        let mut count_replies: Vec<(Reply<u64>, u64)> = Vec::new();
        let mut pending: HashMap<u64, Option<(u64, u32)>> = HashMap::new();
        let mut batch_ns: Vec<(String, u64)> = Vec::new();
        let mut pressure = self.write_pending(&mut batch);
        let mut broken = 0u64;
        let mut expired = 0u64;
        let mut want_sync = self.sync_interval().is_zero();
        let mut puts = 0u64;
        let mut tomb_targets: Vec<TombTarget> = Vec::new();
        // Files of PutMany entries left out of their (visible) batch.
        let mut leftovers: Vec<(u32, u64)> = Vec::new();
        for op in batch {
            match op {
                Op::Put {
                    row,
                    writer,
                    sync,
                    reply,
                    ..
                } => {
                    puts += 1;
                    // The owner check that counts: inside the committer, against owners
                    // committed and claimed earlier in this very batch.
                    match self.owner_of(&pending_ns, &row.namespace) {
                        Some(Some(owner)) if writer.uid.is_some_and(|u| u != 0 && u != owner) => {
                            let uid = writer.uid.unwrap_or(0);
                            self.discard_record(&row);
                            reply(Err(StoreError::PermissionDenied(format!(
                                "namespace {:?} belongs to uid {owner}; uid {uid} may read it but not change it",
                                row.namespace
                            ))));
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            pending_ns.insert(row.namespace.clone(), Some(writer.claim));
                            new_ns.push((row.namespace.clone(), Some(writer.claim)));
                        }
                    }
                    want_sync |= sync;
                    let h = self.shared.map.key_hash(&row.namespace, &row.key);
                    let cur = self.current(&pending, h);
                    if cur.is_some_and(|(old, _)| old > row.id) {
                        // A newer put of this key (higher id) is already in: this one
                        // happened just before it (they overlapped), so it is answered and
                        // never visible. Ids order a key's versions, live and in a rebuild.
                        self.discard_record(&row);
                        reply(Ok(()));
                        continue;
                    }
                    if cur.is_none() && self.recent_tombs.get(&h).is_some_and(|&u| u >= row.id) {
                        // Deleted after this put began and before it got here: it happened
                        // before the delete (the delete's tombstone covers its id).
                        self.discard_record(&row);
                        reply(Ok(()));
                        continue;
                    }
                    if let Some((old, _)) = cur {
                        changes.push(Change::Remove { hash: h, id: old });
                    }
                    pending.insert(h, Some((row.id, row.node)));
                    batch_ns.push((row.namespace.clone(), h));
                    put_replies.push((reply, Placed::of(&row, h)));
                    changes.push(Change::Insert(row));
                }
                Op::PutMany {
                    rows,
                    writer,
                    sync,
                    reply,
                } => {
                    // The Put arm's logic for every row, with the owner check once for the
                    // namespace: refused, none of the rows is indexed.
                    puts += 1;
                    let Some(ns) = rows.first().map(|r| r.namespace.clone()) else {
                        let _ = reply.send(Ok(()));
                        continue;
                    };
                    match self.owner_of(&pending_ns, &ns) {
                        Some(Some(owner)) if writer.uid.is_some_and(|u| u != 0 && u != owner) => {
                            let uid = writer.uid.unwrap_or(0);
                            for row in &rows {
                                self.discard_record(row);
                            }
                            let _ = reply.send(Err(StoreError::PermissionDenied(format!(
                                "namespace {ns:?} belongs to uid {owner}; uid {uid} may read it but not change it"
                            ))));
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            pending_ns.insert(ns.clone(), Some(writer.claim));
                            new_ns.push((ns.clone(), Some(writer.claim)));
                        }
                    }
                    want_sync |= sync;
                    let mut indexed = 0;
                    for row in rows {
                        let h = self.shared.map.key_hash(&row.namespace, &row.key);
                        let cur = self.current(&pending, h);
                        if cur.is_some_and(|(old, _)| old > row.id) {
                            // A newer put of this key is in: as in the Put arm, this version
                            // is never visible.
                            self.leave_in_batch(&row, &mut leftovers);
                            continue;
                        }
                        if cur.is_none() && self.recent_tombs.get(&h).is_some_and(|&u| u >= row.id)
                        {
                            // Deleted after this batch began: as in the Put arm, the delete
                            // came later.
                            self.leave_in_batch(&row, &mut leftovers);
                            continue;
                        }
                        if let Some((old, _)) = cur {
                            changes.push(Change::Remove { hash: h, id: old });
                        }
                        pending.insert(h, Some((row.id, row.node)));
                        batch_ns.push((row.namespace.clone(), h));
                        let r = reply.clone();
                        let answer: PutReply = Box::new(move |res| {
                            let _ = r.send(res);
                        });
                        put_replies.push((answer, Placed::of(&row, h)));
                        changes.push(Change::Insert(row));
                        indexed += 1;
                    }
                    if indexed == 0 {
                        let _ = reply.send(Ok(()));
                    }
                }
                Op::Delete {
                    ns,
                    key,
                    only_id,
                    why,
                    reply,
                } => {
                    let h = self.shared.map.key_hash(&ns, &key);
                    let cur = self.current(&pending, h);
                    let hit = match (cur, only_id) {
                        (Some((id, _)), Some(want)) => id == want,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    if hit && let Some((id, node)) = cur {
                        match why {
                            Why::Broken => broken += 1,
                            Why::Expired => expired += 1,
                            Why::User => {}
                        }
                        if why != Why::Broken {
                            self.recent_tombs.insert(h, id);
                            tomb_targets.push(TombTarget {
                                id,
                                node,
                                names: Some((ns.clone(), key.clone())),
                            });
                        }
                        pending.insert(h, None);
                        changes.push(Change::Remove { hash: h, id });
                    }
                    if let Some(r) = reply {
                        bool_replies.push((r, hit));
                    }
                }
                Op::Clear { ns, reply } => {
                    // Entries in the map, plus puts of this batch into the namespace.
                    let mut hashes: Vec<u64> = self
                        .shared
                        .map
                        .of_namespace(&ns)
                        .into_iter()
                        .map(|(h, _)| h)
                        .collect();
                    hashes.extend(batch_ns.iter().filter(|(n, _)| *n == ns).map(|(_, h)| *h));
                    hashes.sort_unstable();
                    hashes.dedup();
                    let mut n = 0;
                    for h in hashes {
                        if let Some((id, node)) = self.current(&pending, h) {
                            self.recent_tombs.insert(h, id);
                            tomb_targets.push(TombTarget {
                                id,
                                node,
                                names: None,
                            });
                            pending.insert(h, None);
                            changes.push(Change::Remove { hash: h, id });
                            n += 1;
                        }
                    }
                    count_replies.push((reply, n));
                }
                Op::Pressure(bytes) => pressure = pressure.max(bytes),
                Op::Exec(f) => execs.push(f),
                Op::Stop(r) => stop = Some(r),
                Op::Wake => {}
            }
        }
        self.shared.puts_in_flight.fetch_sub(puts, Relaxed);
        // Only puts and nothing that reads the index or waits for it: their rows may wait.
        let only_puts = tomb_targets.is_empty()
            && execs.is_empty()
            && stop.is_none()
            && bool_replies.is_empty()
            && count_replies.is_empty()
            && pressure == 0
            && broken == 0
            && expired == 0;
        // Tombstones go before the commit (records before rows), and with a sync batch's
        // records into its flush.
        if !tomb_targets.is_empty() {
            let inserted: HashMap<u64, &Row> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Insert(r) => Some((r.id, r)),
                    Change::Remove { .. } => None,
                })
                .collect();
            let resolved = self.name_targets(tomb_targets, &inserted);
            self.write_tombstones(resolved);
        }
        // A sync batch: its records (and large files) reach stable storage first, then its
        // rows are committed (NORMAL) and it is answered: one fdatasync per group. The rows
        // never reach the disk before their records (a row whose record is torn is dropped by
        // recovery, and with it the version it overwrote: the power-loss lab lost
        // sync-acknowledged keys to a parallel flush); until the next full flush makes them
        // durable, recovery finds the records by its scan. A batch recording a new namespace
        // owner commits FULL after its flush. When the records cannot be flushed the rows
        // are committed without a flush and taken back out below.
        let sync_now = want_sync && !changes.is_empty();
        let claims = !new_ns.is_empty();
        let flush_first = sync_now || claims;
        // A sync batch whose records are durable is made visible and answered at once; a
        // batch of default puts once its records are written. Either way its rows wait in
        // `unwritten` for a later commit, the records being the truth until then (the module
        // doc has the contract): a commit per flush cost a sync stream's committer ~35 us
        // between one fdatasync and the next.
        let mut deferred = Defer::No;
        let (mut result, mut data) = if flush_first {
            let t0 = Instant::now();
            let data = self.flush_data();
            self.last_flush_time = t0.elapsed();
            self.last_group = puts;
            if sync_now && !claims && data.is_ok() {
                deferred = Defer::Wait;
                (Ok(()), data)
            } else {
                (
                    self.commit(&changes, &new_ns, claims && data.is_ok(), None),
                    data,
                )
            }
        } else if only_puts && !changes.is_empty() {
            deferred = Defer::Wait;
            (Ok(()), Ok(0))
        } else {
            (self.commit(&changes, &new_ns, false, None), Ok(0))
        };
        if matches!(result, Err(StoreError::NoSpace(_))) {
            // The index itself could not grow: free the reserve, evict, and try once more.
            self.release_reserve();
            self.evict(pressure.max(self.shared.stats.stored_total() / 20).max(1));
            result = self.commit(&changes, &new_ns, false, None);
            if flush_first && result.is_ok() {
                if data.is_err() {
                    data = self.flush_data();
                }
                if claims
                    && data.is_ok()
                    && let Err(e) = self.full_flush()
                {
                    tracing::warn!("making a new namespace owner durable: {e}");
                }
            }
        }
        if !sync_now && let Err(e) = &data {
            // Only the owner's durability waited on it; the flusher retries the records.
            tracing::warn!("flushing before recording a namespace owner: {e}");
            data = Ok(0);
        }
        if let (Ok(()), Err(e)) = (&result, &data) {
            // Rows committed, records not durable: take the puts back out (they are answered
            // with the error and never visible); deletes and overwritten entries stay gone.
            let undo: Vec<Change> = put_replies
                .iter()
                .map(|(_, p)| Change::Remove {
                    hash: p.hash,
                    id: p.id,
                })
                .collect();
            if let Err(e2) = self.commit(&undo, &[], false, None) {
                tracing::error!("taking back the puts of a failed flush: {e2}");
            }
            tracing::error!("flushing a sync batch failed: {e}");
            let removals: Vec<Change> = changes
                .into_iter()
                .filter(|c| matches!(c, Change::Remove { .. }))
                .collect();
            self.dirty = true;
            self.apply(&removals);
            for (r, p) in put_replies {
                self.discard(&p);
                r(Err(clone_err(e)));
            }
            self.remove_leftovers(leftovers, false);
            for (r, v) in bool_replies {
                let _ = r.send(Ok(v));
            }
            for (r, v) in count_replies {
                let _ = r.send(Ok(v));
            }
            for f in execs {
                f(self);
            }
            return stop;
        }
        match &result {
            Ok(()) => {
                if !changes.is_empty() {
                    self.dirty = true;
                }
                self.apply(&changes);
                if deferred != Defer::No {
                    if self.unwritten.is_empty() {
                        self.unwritten_since = Some(Instant::now());
                    }
                    self.unwritten.extend(changes);
                }
                self.remove_leftovers(leftovers, deferred != Defer::No);
                self.shared.stats.corrupted.fetch_add(broken, Relaxed);
                self.shared.stats.evictions.fetch_add(expired, Relaxed);
                answering(|| {
                    for (r, _) in put_replies {
                        r(Ok(()));
                    }
                });
                for (r, v) in bool_replies {
                    let _ = r.send(Ok(v));
                }
                for (r, v) in count_replies {
                    let _ = r.send(Ok(v));
                }
                let due = deferred == Defer::Wait && self.unwritten.len() >= DEFER_ROWS;
                if due && let Err(e) = self.commit_unwritten() {
                    // Kept in `unwritten` for the next commit; visible, answered, in the
                    // kernel (a sync batch's: durable).
                    tracing::warn!("committing the rows of answered puts (retried): {e}");
                }
                let max = self.shared.cfg.max_bytes;
                let stored = self.shared.stats.stored_total();
                if stored > max {
                    // Evict a little below the bound so eviction does not run on every put.
                    let need = stored - max + (max / 64).min(64 << 20);
                    self.evict(need);
                }
            }
            Err(e) => {
                tracing::warn!("batch failed, nothing of it is visible: {e}");
                for (r, p) in put_replies {
                    self.discard(&p);
                    r(Err(clone_err(e)));
                }
                self.remove_leftovers(leftovers, false);
                for (r, _) in bool_replies {
                    let _ = r.send(Err(clone_err(e)));
                }
                for (r, _) in count_replies {
                    let _ = r.send(Err(clone_err(e)));
                }
            }
        }
        if pressure > 0 {
            if self.inline {
                // Eviction commits and unlinks: not on a caller's thread (see CommitQueue).
                self.pressure_later = self.pressure_later.max(pressure);
            } else {
                self.evict(pressure);
                self.reclaim();
            }
        }
        for f in execs {
            f(self);
        }
        stop
    }

    /// The smallest id of a put not yet answered, else the next id.
    fn min_inflight(&self) -> u64 {
        let inflight = self
            .shared
            .inflight_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inflight
            .first()
            .copied()
            .unwrap_or_else(|| self.shared.next_id.load(Relaxed))
    }

    /// The flush point of the flush about to start: the id below which every row will be
    /// durable once it completes, and per node the first segment that may hold a record at
    /// or above it (so recovery's scan finds every record whose row may not be durable).
    fn verified_mark(&self) -> Mark {
        let below = self.min_inflight();
        let scan_from = self
            .shared
            .layout()
            .shards
            .values()
            .map(|s| (s.node, s.segments.scan_start(below)))
            .collect();
        Mark { below, scan_from }
    }

    fn flush_data(&mut self) -> Result<u64, StoreError> {
        flush_data(&self.shared)
    }

    /// While sync puts come, keep a prepared segment ready per shard (segment.rs,
    /// `keep_prepared`: a thread of its own makes it); after a failure (a full disk) wait
    /// before trying again.
    fn prepare_segments(&mut self, now: Instant) {
        let busy = self
            .put_flush_at
            .is_some_and(|t| now.saturating_duration_since(t) < PREPARE_WHILE);
        if !busy || self.prepare_after.is_some_and(|t| now < t) {
            return;
        }
        for s in self.shared.layout().shards.values() {
            if let Err(e) = s.segments.keep_prepared() {
                tracing::warn!("{e} (retried in {PREPARE_RETRY:?})");
                self.prepare_after = Some(now + PREPARE_RETRY);
                return;
            }
        }
    }

    /// Record, after a successful full flush, that durable state is complete.
    fn flushed(&mut self) {
        self.last_flush = Instant::now();
        self.dirty = false;
        self.shared.stats.full_flushes.fetch_add(1, SeqCst);
        let layout = self.shared.layout();
        let mut going = std::mem::take(&mut self.to_unlink).into_iter();
        while let Some((node, seg)) = going.next() {
            if self.live.get(&(node, seg)).copied().unwrap_or(0) > 0 {
                continue; // live again? (never: segments are append-only; kept to be safe)
            }
            if let Some(s) = layout.shards.get(&node) {
                if s.segments.active_id() == Some(seg) {
                    continue;
                }
                match s.segments.remove(seg) {
                    Ok(()) => {
                        self.live.remove(&(node, seg));
                        self.tombs.remove(&(node, seg));
                    }
                    Err(e) => {
                        // In order, oldest first: a later segment's tombstones may cover
                        // records of this one, so the rest wait for the next flush.
                        tracing::warn!("removing an empty segment: {e}");
                        self.to_unlink.push((node, seg));
                        self.to_unlink.extend(going);
                        break;
                    }
                }
            }
        }
    }

    /// The flusher's work: data, then a FULL commit of the mark (the WAL's fdatasync).
    pub fn full_flush(&mut self) -> Result<(), StoreError> {
        let mark = self.verified_mark();
        flush_data(&self.shared)?;
        self.commit(&[], &[], true, Some(&mark))?;
        self.flushed();
        // Every row in the WAL now has a durable record: fold it into the database (once it
        // holds a good number of commits; each checkpoint costs fdatasyncs of its own).
        if self.commits_since_checkpoint >= CHECKPOINT_AFTER {
            if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                tracing::warn!("checkpointing the index: {e}");
            }
            self.commits_since_checkpoint = 0;
        }
        let below = mark.below;
        if self.recent_tombs.len() > 1024 {
            self.recent_tombs.retain(|_, upto| *upto >= below);
        }
        Ok(())
    }

    /// Commit `changes`; `full`: with an fdatasync of the WAL; `mark`: also record
    /// `verified_below` (only after the records were flushed first).
    fn commit(
        &mut self,
        changes: &[Change],
        new_ns: &[(String, Option<u32>)],
        full: bool,
        mark: Option<&Mark>,
    ) -> Result<(), StoreError> {
        let full = full || mark.is_some();
        if changes.is_empty() && new_ns.is_empty() && mark.is_none() && self.unwritten.is_empty() {
            return Ok(());
        }
        let earlier = self.unwritten.len();
        let all: Vec<Change>;
        let changes = if earlier == 0 {
            changes
        } else {
            all = std::mem::take(&mut self.unwritten)
                .into_iter()
                .chain(changes.iter().cloned())
                .collect();
            &all[..]
        };
        if full {
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(|e| StoreError::sql("flushing", e))?;
        }
        let res = self.commit_tx(changes, new_ns, mark);
        if full {
            let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
        }
        if res.is_err() {
            // The earlier changes stay due; the caller answers for its own.
            self.unwritten = changes[..earlier].to_vec();
        }
        res?;
        self.unwritten_since = None;
        self.commits_since_checkpoint += 1;
        let leftovers = std::mem::take(&mut self.batch_leftovers);
        self.remove_leftovers(leftovers, false);
        let mut owners = self
            .shared
            .namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for (ns, owner) in new_ns {
            owners.entry(ns.clone()).or_insert(*owner);
        }
        Ok(())
    }

    fn commit_tx(
        &mut self,
        changes: &[Change],
        new_ns: &[(String, Option<u32>)],
        full: Option<&Mark>,
    ) -> Result<(), StoreError> {
        let next_id = self.shared.next_id.load(Relaxed);
        let now = unix_ns() / 1_000_000_000;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::sql("starting a batch", e))?;
        for c in changes {
            match c {
                Change::Insert(r) => index::insert_entry(&tx, r),
                Change::Remove { id, .. } => index::delete_entry(&tx, *id),
            }
            .map_err(|e| StoreError::sql("writing a batch", e))?;
        }
        for (ns, owner) in new_ns {
            index::insert_namespace(&tx, ns, *owner, now)
                .map_err(|e| StoreError::sql("recording a namespace", e))?;
        }
        // Ids never repeat: the index holds an id above every one handed out. Ids of this
        // batch were handed out before `next_id` was read, so they are below it. Recovery
        // starts above both this and the largest id in the rows.
        let ceiling = (next_id > self.id_ceiling).then(|| next_id.saturating_add(ID_RESERVE));
        if let Some(c) = ceiling {
            index::meta_set(&tx, "next_id", c.min(i64::MAX as u64) as i64)
                .map_err(|e| StoreError::sql("writing a batch", e))?;
        }
        if let Some(mark) = full {
            index::meta_set(&tx, "verified_below", mark.below as i64)
                .map_err(|e| StoreError::sql("writing a batch", e))?;
            for &(node, seg) in &mark.scan_from {
                index::meta_set(&tx, &index::scan_from_name(node), i64::from(seg))
                    .map_err(|e| StoreError::sql("writing a batch", e))?;
            }
        }
        tx.commit()
            .map_err(|e| StoreError::sql("committing a batch", e))?;
        if let Some(c) = ceiling {
            self.id_ceiling = c;
        }
        Ok(())
    }

    /// Make committed (or deferred, see `unwritten`) changes visible: the map, the counters,
    /// the files of removed entries.
    fn apply(&mut self, changes: &[Change]) {
        let layout = self.shared.layout();
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        for c in changes {
            match *c {
                Change::Insert(ref r) => {
                    let h = self.shared.map.key_hash(&r.namespace, &r.key);
                    let e = self.shared.map.entry_of(h, r, self.shared.map.tick());
                    if r.expires.is_some() {
                        self.shared.ttl_entries.fetch_add(1, Relaxed);
                    }
                    stats.add_entry(r.node, r.size, r.stored);
                    if let Some((seg, _)) = r.loc {
                        *self.live.entry((r.node, seg)).or_default() += segment::padded(r.stored);
                    }
                    if let Some(old) = self.shared.map.insert(e) {
                        // Overwrite handled as a Remove change before this insert.
                        debug_assert!(old.id != r.id);
                    }
                }
                Change::Remove { hash, id } => {
                    let Some(e) = self.shared.map.remove(hash, Some(id)) else {
                        continue;
                    };
                    self.forget(&layout, &e);
                }
            }
        }
    }

    fn forget(&mut self, layout: &crate::store::state::Layout, e: &Entry) {
        let node = u32::from(e.node);
        self.shared
            .stats
            .remove_entry(node, u64::from(e.size), u64::from(e.stored));
        if e.expires != 0 {
            self.shared.ttl_entries.fetch_sub(1, Relaxed);
        }
        if let Some(t) = layout.tiers.get(&node) {
            t.remove(e.id);
        }
        match unpack_loc(e.loc.load(Relaxed)) {
            Some((seg, _)) => {
                let k = (node, seg);
                let live = self.live.entry(k).or_default();
                *live = live.saturating_sub(segment::padded(u64::from(e.stored)));
                let empty = *live == 0;
                if empty
                    && let Some(s) = layout.shards.get(&node)
                    && s.segments.active_id() != Some(seg)
                    && !self.to_unlink.contains(&k)
                    && self.can_unlink(node, seg, &s.segments.ids())
                {
                    // (One holding needed tombstones is compacted by reclaim instead.)
                    self.to_unlink.push(k);
                    self.dirty = true;
                }
            }
            None => {
                if let Some(s) = layout.shards.get(&node)
                    && let Err(err) = s.remove_blob(e.id)
                {
                    tracing::warn!("removing blob {}: {err}", s.blob_path(e.id).display());
                }
            }
        }
    }

    /// Reclaim dead segment space: sealed segments with nothing live are removed (after the
    /// next flush), mostly dead ones compacted (live records copied to the active segment).
    pub fn reclaim(&mut self) {
        let layout = self.shared.layout();
        let mut victims: Vec<(u32, u32, u64)> = Vec::new();
        for s in layout.shards.values() {
            let active = s.segments.active_id();
            let ids = s.segments.ids();
            // A segment already going holds nothing a later segment's tombstone must cover:
            // the going ones are removed in id order after the next full flush, oldest first,
            // and `flushed` stops at a removal that fails. So a dead segment whose tombstones
            // cover only records of segments already going can go in the same round.
            let mut remaining: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&i| !self.to_unlink.contains(&(s.node, i)))
                .collect();
            for &seg in &ids {
                if Some(seg) == active {
                    continue;
                }
                let live = self.live.get(&(s.node, seg)).copied().unwrap_or(0);
                let k = (s.node, seg);
                if live == 0 {
                    if !self.to_unlink.contains(&k) {
                        self.load_tombs(s.node, seg);
                        if self.can_unlink(s.node, seg, &remaining) {
                            self.to_unlink.push(k);
                            remaining.retain(|&i| i != seg);
                            self.dirty = true;
                        } else if !self.tombs_unknown.contains(&k) {
                            // Only tombstones still needed: move them on.
                            victims.push((s.node, seg, 0));
                        }
                    }
                    continue;
                }
                let len = s.segments.len_of(seg).unwrap_or(0);
                if len >= s.segments.seg_bytes / 4 && live < len / 2 {
                    victims.push((s.node, seg, live));
                }
            }
        }
        // One segment per round keeps the committer responsive; the emptiest first.
        victims.sort_by_key(|v| v.2);
        if let Some(&(node, seg, _)) = victims.first()
            && let Err(e) = self.compact(node, seg)
        {
            tracing::warn!("compacting segment {seg} of node {node}: {e}");
        }
        if !self.to_unlink.is_empty() {
            let _ = self.full_flush();
        }
    }

    /// Move the live records of segment `seg` to the active segment, make them and their new
    /// rows durable, then drop the segment.
    fn compact(&mut self, node: u32, seg: u32) -> Result<(), StoreError> {
        let layout = self.shared.layout();
        let Some(shard) = layout.shards.get(&node).cloned() else {
            return Ok(());
        };
        // Rows still waiting would keep the old location when committed after the move.
        self.commit_unwritten()?;
        let mut moving: Vec<(u64, u64, u64)> = Vec::new(); // id, old packed loc, stored
        self.shared.map.for_each(|e| {
            if u32::from(e.node) == node
                && let Some((s, _)) = unpack_loc(e.loc.load(Relaxed))
                && s == seg
            {
                moving.push((e.id, e.loc.load(Relaxed), u64::from(e.stored)));
            }
        });
        self.load_tombs(node, seg);
        if self.tombs_unknown.contains(&(node, seg)) {
            return Err(StoreError::Unavailable(format!(
                "the tombstones of segment {seg} could not be read; it stays"
            )));
        }
        // Tombstones still needed move with the live records; the others are dropped.
        let keep = self.needed_tombs(node, seg, &shard.segments.ids());
        let mut moved_tombs: Vec<(u32, u64, u64, segment::Tomb)> = Vec::new();
        for (off, stored, t) in keep {
            let raw = shard
                .segments
                .read_raw(seg, off, stored)
                .map_err(|e| StoreError::io("reading a tombstone to compact", e))?;
            let (to, at) = shard.segments.append(&raw)?;
            moved_tombs.push((to, at, stored, t));
        }
        // id, old packed loc, new segment, new offset, stored
        let mut moved: Vec<(u64, u64, u32, u64, u64)> = Vec::new();
        for (id, old, stored) in moving {
            let Some((s, off)) = unpack_loc(old) else {
                continue;
            };
            let raw = shard
                .segments
                .read_raw(s, off, stored)
                .map_err(|e| StoreError::io("reading a record to compact", e))?;
            let (to, at) = shard.segments.append(&raw)?;
            moved.push((id, old, to, at, stored));
        }
        // The copies are durable before any row points at them, and the rows before the
        // old segment goes.
        self.flush_data()?;
        {
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(|e| StoreError::sql("compacting", e))?;
            let res = (|| {
                let tx = self.conn.transaction()?;
                for &(id, _, s, o, _) in &moved {
                    index::move_entry(&tx, id, s, o)?;
                }
                tx.commit()
            })();
            let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
            res.map_err(|e| StoreError::sql("compacting", e))?;
        }
        let by_id: HashMap<u64, (u64, u32, u64)> = moved
            .iter()
            .map(|&(id, old, s, o, _)| (id, (old, s, o)))
            .collect();
        // Only the committer changes the map, so every moved entry is still there.
        self.shared.map.for_each(|e| {
            if let Some(&(old, s, o)) = by_id.get(&e.id) {
                let _ = e
                    .loc
                    .compare_exchange(old, pack_loc(Some((s, o))), Relaxed, Relaxed);
            }
        });
        let mut moved_bytes = 0;
        for &(_, _, to, _, stored) in &moved {
            *self.live.entry((node, to)).or_default() += segment::padded(stored);
            moved_bytes += stored;
        }
        for &(to, at, stored, t) in &moved_tombs {
            self.tombs
                .entry((node, to))
                .or_default()
                .push((at, stored, t));
        }
        self.live.insert((node, seg), 0);
        match shard.segments.remove(seg) {
            Ok(()) => {
                self.live.remove(&(node, seg));
                self.tombs.remove(&(node, seg));
            }
            Err(e) => tracing::warn!("removing compacted segment: {e}"),
        }
        tracing::debug!(
            "compacted segment {seg} of node {node}: moved {} records, {moved_bytes} bytes",
            moved.len()
        );
        Ok(())
    }

    /// Remove the least recently used entries until `need` stored bytes are freed.
    pub fn evict(&mut self, need: u64) -> u64 {
        let map = &self.shared.map;
        let mut ages: Vec<(u32, u64)> = Vec::new();
        map.for_each(|e| ages.push((e.last_access.load(Relaxed), u64::from(e.stored))));
        ages.sort_unstable();
        let (mut freed, mut cut, mut at_cut) = (0u64, 0u32, 0u64);
        for (age, stored) in &ages {
            if freed >= need {
                break;
            }
            freed += stored;
            if *age != cut {
                at_cut = 0;
            }
            cut = *age;
            at_cut += 1;
        }
        let mut victims: Vec<(u64, u64)> = Vec::new();
        let mut ties = at_cut;
        map.for_each(|e| {
            let age = e.last_access.load(Relaxed);
            if age < cut || (age == cut && ties > 0) {
                if age == cut {
                    ties -= 1;
                }
                victims.push((e.hash, e.id));
            }
        });
        let n = victims.len() as u64;
        if n == 0 {
            return 0;
        }
        // No tombstones (as a delete or an expiry writes): a tombstone stays while any older
        // segment exists, so under steady eviction they would pile up and be copied forward by
        // compaction. An evicted value (or an older version of its key) can come back only in a
        // rebuild of a lost index from the records alone (ARCHITECTURE.md).
        let changes: Vec<Change> = victims
            .into_iter()
            .map(|(hash, id)| Change::Remove { hash, id })
            .collect();
        let mut res = self.commit(&changes, &[], false, None);
        if matches!(res, Err(StoreError::NoSpace(_))) {
            self.release_reserve();
            res = self.commit(&changes, &[], false, None);
        }
        match res {
            Ok(()) => {
                self.dirty = true;
                self.apply(&changes);
                self.shared.stats.evictions.fetch_add(n, Relaxed);
                self.shared.stats.removals.note();
                tracing::debug!("evicted {n} entries to free {need} bytes");
                n
            }
            Err(e) => {
                tracing::warn!("eviction failed: {e}");
                0
            }
        }
    }

    /// The background TTL sweep: remove every entry whose expiry has passed.
    pub fn expire(&mut self) {
        let now = unix_ns() / 1_000_000_000;
        let mut gone: Vec<Change> = Vec::new();
        let mut targets: Vec<TombTarget> = Vec::new();
        self.shared.map.for_each(|e| {
            if e.expired(now) {
                gone.push(Change::Remove {
                    hash: e.hash,
                    id: e.id,
                });
                targets.push(TombTarget {
                    id: e.id,
                    node: u32::from(e.node),
                    names: None,
                });
                self.recent_tombs.insert(e.hash, e.id);
            }
        });
        if gone.is_empty() {
            return;
        }
        // An older version without a TTL must not come back in a rebuild.
        let targets = self.name_targets(targets, &HashMap::new());
        self.write_tombstones(targets);
        let n = gone.len() as u64;
        match self.commit(&gone, &[], false, None) {
            Ok(()) => {
                self.dirty = true;
                self.apply(&gone);
                self.shared.stats.evictions.fetch_add(n, Relaxed);
                self.shared.stats.removals.note();
            }
            Err(e) => tracing::warn!("expiring entries: {e}"),
        }
    }

    /// Write access times and hit counts gathered since the last write-back.
    pub fn write_back_touches(&mut self) -> Result<(), StoreError> {
        // A touched entry's row must be there to be updated.
        self.commit_unwritten()?;
        let touched = self.shared.map.take_touched();
        if touched.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::sql("writing access times", e))?;
        // Access order is a logical clock in memory; the index keeps the write-back time.
        let la = unix_ns() / 1_000_000_000;
        for (id, hits) in touched {
            index::touch_entry(&tx, id, la, hits)
                .map_err(|e| StoreError::sql("writing access times", e))?;
        }
        tx.commit()
            .map_err(|e| StoreError::sql("writing access times", e))
    }

    /// Insert a `numa_cache_stats` row per node and apply the retention limit.
    pub fn write_stats(&mut self) -> Result<(), StoreError> {
        let now = unix_ns() / 1_000_000_000;
        let layout = self.shared.layout();
        let rows: Vec<index::StatsRow> = layout
            .stat_nodes()
            .into_iter()
            .map(|node| {
                let s = self.shared.node_stats_in(&layout, node);
                index::StatsRow {
                    node_id: node,
                    timestamp: index::sql_timestamp(now),
                    unix_time: now,
                    cache_entries: s.entries,
                    memory_usage_mb: s.memory_tier_bytes >> 20,
                    hit_rate: s.hit_rate,
                    logical_bytes: s.logical_bytes,
                    stored_bytes: s.stored_bytes,
                    memory_tier_bytes: s.memory_tier_bytes,
                    hits: s.hits,
                    misses: s.misses,
                }
            })
            .collect();
        let keep_after = now.saturating_sub(self.shared.cfg.stats_retention.as_secs());
        index::insert_stats(&mut self.conn, &rows, keep_after)
            .map_err(|e| StoreError::sql("writing stats", e))
    }

    /// Write everything back and make it durable (a flush point: snapshots, SIGTERM).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.write_back_touches()?;
        self.reclaim();
        self.full_flush()?;
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| StoreError::sql("checkpointing", e))
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        let res = self.flush().and_then(|()| {
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(|e| StoreError::sql("marking a clean stop", e))?;
            // The entry-map checkpoint, recorded in the transaction that marks the index clean.
            crate::store::checkpoint::mark_clean(
                &mut self.conn,
                &self.shared.map,
                &self.shared.cfg.dir,
            )?;
            self.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .map_err(|e| StoreError::sql("checkpointing", e))
        });
        if let Err(e) = &res {
            tracing::error!(
                "stopping the cache cleanly failed; the next start will check the recent records: {e}"
            );
        }
        res
    }
}

/// Live stored bytes per (node, segment) of `rows` (start-up).
pub fn live_of(rows: &[Row]) -> HashMap<(u32, u32), u64> {
    let mut live = HashMap::new();
    for r in rows {
        if let Some((seg, _)) = r.loc {
            *live.entry((r.node, seg)).or_default() += segment::padded(r.stored);
        }
    }
    live
}

/// fdatasync what puts wrote since the last flush: dirty segments, large-value files.
/// Returns how many files were synced. On failure they stay on the dirty lists.
pub fn flush_data(shared: &Shared) -> Result<u64, StoreError> {
    let layout = shared.layout();
    let mut n = 0u64;
    let blobs: Vec<(u32, u64)> = std::mem::take(
        &mut *shared
            .unsynced_blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    for (i, &(node, id)) in blobs.iter().enumerate() {
        if let Some(s) = layout.shards.get(&node)
            && let Err(e) = s.sync_blob(id)
        {
            shared
                .unsynced_blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&blobs[i..]);
            return Err(e);
        }
        n += 1;
    }
    if !blobs.is_empty() {
        for s in layout.shards.values() {
            s.sync_dir()?;
        }
    }
    for s in layout.shards.values() {
        let ids = s.segments.take_dirty();
        if let Err(e) = s.segments.sync(&ids) {
            s.segments.redirty(&ids);
            return Err(e);
        }
        n += ids.len() as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A gathering committer is rung once, by the op that reaches the count it waits for,
    /// not by every op sent.
    #[test]
    fn arrivals_ring_once_at_the_count_waited_for() {
        let a = Arrivals::new();
        a.sent_one();
        assert_eq!(a.epoch.load(SeqCst), 0, "nobody waits: no ring");
        a.wake_at.store(4, SeqCst);
        a.sent_one();
        a.sent_one();
        assert_eq!(a.epoch.load(SeqCst), 0, "below the count: no ring");
        a.sent_one();
        assert_eq!(a.epoch.load(SeqCst), 1, "the count reached: one ring");
        assert_eq!(a.wake_at.load(SeqCst), usize::MAX);
        a.sent_one();
        assert_eq!(a.epoch.load(SeqCst), 1, "rung once");
    }

    /// `wait_for` returns when the ops it waits for are sent by other threads, and after its
    /// time when they never come.
    #[test]
    fn arrivals_wait_ends_at_the_count_or_the_time() {
        let a = Arc::new(Arrivals::new());
        let t0 = Instant::now();
        let senders: Vec<_> = (0..3)
            .map(|i| {
                let a = Arc::clone(&a);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20 * (i + 1)));
                    a.sent_one();
                })
            })
            .collect();
        while a.sent.load(SeqCst) < 3 {
            a.wait_for(
                a.sent.load(SeqCst),
                3 - a.sent.load(SeqCst),
                Duration::from_secs(1),
            );
        }
        for s in senders {
            s.join().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "woken by the sends"
        );
        let t1 = Instant::now();
        a.wait_for(3, 1, Duration::from_millis(30));
        assert!(t1.elapsed() >= Duration::from_millis(30), "waited its time");
        assert_eq!(a.wake_at.load(SeqCst), usize::MAX, "nobody waits after");
    }

    /// Writers waiting on the bell all wake from one batch's answers given inside
    /// `answering` (one ring, at its end), and from an answer given outside it (rung at once).
    #[test]
    fn one_ring_wakes_every_answered_waiter() {
        const N: usize = 8;
        let slots: Arc<Vec<AtomicBool>> =
            Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
        let (tx, rx) = std::sync::mpsc::channel();
        let before = BELL.waiters.load(SeqCst);
        for i in 0..N {
            let (slots, tx) = (Arc::clone(&slots), tx.clone());
            std::thread::spawn(move || {
                BELL.wait_until(|| slots[i].load(SeqCst));
                let _ = tx.send(i);
            });
        }
        let t0 = Instant::now();
        while BELL.waiters.load(SeqCst) < before + N as u32 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the waiters never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        answering(|| {
            for s in &slots[..N - 1] {
                s.store(true, SeqCst);
                BELL.ring_soon();
            }
        });
        let mut woken: Vec<usize> = (0..N - 1)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a waiter answered in the batch was not woken")
            })
            .collect();
        woken.sort_unstable();
        assert_eq!(woken, (0..N - 1).collect::<Vec<_>>());
        slots[N - 1].store(true, SeqCst);
        BELL.ring_soon();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("a waiter answered outside a batch was not woken"),
            N - 1
        );
    }
}

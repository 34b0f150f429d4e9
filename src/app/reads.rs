//! Bytes of large values being read at once for callers (Get, GetFd, GetMany), bounded.
//!
//! A read holds its value in memory until the reply is made (and a GetFd also copies it into
//! a memfd), so without a bound, concurrent reads of large values (over the bus a caller may
//! have many calls pending, and many callers may) make the daemon hold their sum. A read of
//! a value of [`COUNTED_FROM`] bytes or more first takes room for its size from the bound
//! (twice the largest value, as for puts in flight: 512 MiB by default); past it the read
//! waits up to [`READ_WAIT`], then is refused with
//! `Unavailable` naming the bound. Smaller values are not counted: their reads are the common
//! case, and a flood of them is bounded by the bus's own limits on pending calls.
//!
//! One uid may hold at most half the bound ([`ReadGate::share`]: the largest value, by
//! default) for its reads: past it its own reads wait, and are refused naming the share,
//! while other users' reads still find the other half. Without it one user with many large
//! Gets pending could make every other user's large reads wait and fail.
//!
//! The size comes from the engine's entry map before the read, and the read itself is
//! limited to the room taken (`Cache::get_within`): a value a Put grew in between is refused
//! unread, and read again with room for its new size.

use crate::app::budget::PerUid;
use crate::app::error::{AppError, AppResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most bytes of counted values being read at once, all callers together, when no
/// bound is given (the daemon's is twice its largest value, as for puts in flight).
pub const READS_IN_FLIGHT: u64 = 512 << 20;
/// Values from this size on are counted.
pub const COUNTED_FROM: u64 = 1 << 20;
/// How long a read waits for room before it is refused.
pub const READ_WAIT: Duration = Duration::from_secs(10);
/// How often a read goes around with room for a value a Put grew meanwhile, before it
/// takes room for the largest value it may return.
pub const GROWN_TRIES: u32 = 2;

/// The bound on bytes of counted values being read at once, and each uid's share of it.
#[derive(Debug)]
pub struct ReadGate {
    sem: Arc<Semaphore>,
    bound: u64,
    share: u64,
    shares: PerUid,
    wait: Duration,
}

impl Default for ReadGate {
    fn default() -> Self {
        ReadGate::new(READS_IN_FLIGHT, READ_WAIT)
    }
}

/// Room for one read, given back when dropped.
#[derive(Debug)]
pub struct ReadRoom {
    _permit: Option<OwnedSemaphorePermit>,
    _mine: Option<OwnedSemaphorePermit>,
    allows: u64,
}

impl ReadRoom {
    /// The most bytes the read may take under this room.
    pub fn allows(&self) -> u64 {
        self.allows
    }
}

/// Semaphore permits count KiB, so that the bound fits a u32 request.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl ReadGate {
    /// A gate admitting `bound` bytes of counted reads at once, half of it to any one uid; a
    /// read waits `wait` for room.
    pub fn new(bound: u64, wait: Duration) -> ReadGate {
        let share = (bound / 2).max(COUNTED_FROM);
        ReadGate {
            sem: Arc::new(Semaphore::new(units(bound) as usize)),
            bound,
            share,
            shares: PerUid::new(units(share) as usize),
            wait,
        }
    }

    /// The most bytes one uid's reads may hold at once.
    pub fn share(&self) -> u64 {
        self.share
    }

    /// Room for `uid` (None: a caller inside the daemon, not counted per uid) to read a value
    /// of `bytes`: none is taken under [`COUNTED_FROM`] (the read may then take up to just
    /// under it); a value of at least the whole bound waits for all of it and may take any
    /// size. The uid's share is taken first, then the bound, within one wait.
    pub async fn room(&self, uid: Option<u32>, bytes: u64) -> AppResult<ReadRoom> {
        if bytes < COUNTED_FROM {
            return Ok(ReadRoom {
                _permit: None,
                _mine: None,
                allows: COUNTED_FROM - 1,
            });
        }
        let (take, allows) = if bytes >= self.bound {
            (self.bound, u64::MAX)
        } else {
            (bytes, bytes)
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        let closed =
            || AppError::Unavailable("numa-cached is shutting down; retry when it is back".into());
        let mine = match uid {
            None => None,
            Some(uid) => {
                let acquire = self
                    .shares
                    .of(uid)
                    .acquire_many_owned(units(take.min(self.share)));
                match tokio::time::timeout_at(deadline, acquire).await {
                    Ok(Ok(p)) => Some(p),
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => {
                        return Err(AppError::Unavailable(format!(
                            "reading a value of {bytes} bytes waited {:.1} s for room: uid {uid} \
                             is already reading values of {} bytes in all (one user's share of \
                             the bound); retry later",
                            self.wait.as_secs_f64(),
                            self.share
                        )));
                    }
                }
            }
        };
        let acquire = Arc::clone(&self.sem).acquire_many_owned(units(take));
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(p)) => Ok(ReadRoom {
                _permit: Some(p),
                _mine: mine,
                allows,
            }),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(AppError::Unavailable(format!(
                "reading a value of {bytes} bytes waited {:.1} s for room: values of {} bytes in \
                 all are being read for other callers (the bound); retry later",
                self.wait.as_secs_f64(),
                self.bound
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_reads_are_not_counted_and_large_ones_wait_for_room() {
        let gate = ReadGate::new(4 << 20, READ_WAIT);
        let small = gate.room(None, 4096).await.unwrap();
        assert_eq!(small.allows(), COUNTED_FROM - 1);
        let a = gate.room(None, 3 << 20).await.unwrap();
        assert_eq!(a.allows(), 3 << 20);
        // 2 MiB more does not fit until `a` is given back.
        let waiting =
            tokio::time::timeout(Duration::from_millis(100), gate.room(None, 2 << 20)).await;
        assert!(waiting.is_err(), "a read past the bound did not wait");
        drop(a);
        let b = tokio::time::timeout(Duration::from_millis(100), gate.room(None, 2 << 20))
            .await
            .expect("room once given back")
            .unwrap();
        assert_eq!(b.allows(), 2 << 20);
        drop(b);
        // A value of the whole bound or more takes all of it and may read any size.
        let all = gate.room(None, 64 << 20).await.unwrap();
        assert_eq!(all.allows(), u64::MAX);
    }

    #[tokio::test]
    async fn a_read_that_finds_no_room_is_refused_naming_the_bound() {
        let gate = ReadGate::new(2 << 20, Duration::from_millis(50));
        let _held = gate.room(None, 2 << 20).await.unwrap();
        let e = gate.room(None, 1 << 20).await.unwrap_err().to_string();
        assert!(e.contains("2097152") && e.contains("retry"), "{e}");
    }

    /// One uid's reads hold at most its share (half the bound): its next large read waits
    /// and is refused naming the share, while another uid's read finds room at once.
    #[tokio::test]
    async fn one_user_holds_at_most_its_share() {
        let gate = ReadGate::new(8 << 20, Duration::from_millis(100));
        assert_eq!(gate.share(), 4 << 20);
        let a1 = gate.room(Some(1000), 2 << 20).await.unwrap();
        let a2 = gate.room(Some(1000), 2 << 20).await.unwrap();
        let e = gate
            .room(Some(1000), 2 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("uid 1000") && e.contains("4194304"), "{e}");
        let b = tokio::time::timeout(Duration::from_millis(50), gate.room(Some(1001), 4 << 20))
            .await
            .expect("another user's read waited behind the first user's")
            .unwrap();
        drop((a1, b));
        // Room given back is the user's again.
        let a3 = gate.room(Some(1000), 2 << 20).await.unwrap();
        drop((a2, a3));
        // A value of the whole bound takes the whole share and the whole bound.
        let all = gate.room(Some(1000), 64 << 20).await.unwrap();
        assert_eq!(all.allows(), u64::MAX);
    }
}

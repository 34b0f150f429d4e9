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
//! The size comes from the engine's entry map before the read, and the read itself is
//! limited to the room taken (`Cache::get_within`): a value a Put grew in between is refused
//! unread, and read again with room for its new size.

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

/// The bound on bytes of counted values being read at once.
#[derive(Debug)]
pub struct ReadGate {
    sem: Arc<Semaphore>,
    bound: u64,
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
    /// A gate admitting `bound` bytes of counted reads at once; a read waits `wait` for room.
    pub fn new(bound: u64, wait: Duration) -> ReadGate {
        ReadGate {
            sem: Arc::new(Semaphore::new(units(bound) as usize)),
            bound,
            wait,
        }
    }

    /// Room to read a value of `bytes`: none is taken under [`COUNTED_FROM`] (the read may
    /// then take up to just under it); a value of at least the whole bound waits for all of
    /// it and may take any size.
    pub async fn room(&self, bytes: u64) -> AppResult<ReadRoom> {
        if bytes < COUNTED_FROM {
            return Ok(ReadRoom {
                _permit: None,
                allows: COUNTED_FROM - 1,
            });
        }
        let (take, allows) = if bytes >= self.bound {
            (self.bound, u64::MAX)
        } else {
            (bytes, bytes)
        };
        let acquire = Arc::clone(&self.sem).acquire_many_owned(units(take));
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(p)) => Ok(ReadRoom {
                _permit: Some(p),
                allows,
            }),
            Ok(Err(_)) => Err(AppError::Unavailable(
                "numa-cached is shutting down; retry when it is back".into(),
            )),
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
        let small = gate.room(4096).await.unwrap();
        assert_eq!(small.allows(), COUNTED_FROM - 1);
        let a = gate.room(3 << 20).await.unwrap();
        assert_eq!(a.allows(), 3 << 20);
        // 2 MiB more does not fit until `a` is given back.
        let waiting = tokio::time::timeout(Duration::from_millis(100), gate.room(2 << 20)).await;
        assert!(waiting.is_err(), "a read past the bound did not wait");
        drop(a);
        let b = tokio::time::timeout(Duration::from_millis(100), gate.room(2 << 20))
            .await
            .expect("room once given back")
            .unwrap();
        assert_eq!(b.allows(), 2 << 20);
        drop(b);
        // A value of the whole bound or more takes all of it and may read any size.
        let all = gate.room(64 << 20).await.unwrap();
        assert_eq!(all.allows(), u64::MAX);
    }

    #[tokio::test]
    async fn a_read_that_finds_no_room_is_refused_naming_the_bound() {
        let gate = ReadGate::new(2 << 20, Duration::from_millis(50));
        let _held = gate.room(2 << 20).await.unwrap();
        let e = gate.room(1 << 20).await.unwrap_err().to_string();
        assert!(e.contains("2097152") && e.contains("retry"), "{e}");
    }
}

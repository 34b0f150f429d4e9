//! GetOrLease: single flight across processes. The first caller to miss a key gets a lease
//! on it; callers that miss while the lease is held wait, up to their own `lease_ms`, for
//! the Put that ends it; a lease that expires first passes to the next caller that asks.

use crate::app::App;
use crate::app::authz::Requester;
use crate::app::error::{AppError, AppResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest lease a caller may ask for: a waiter's D-Bus call lasts as long as its lease,
/// and clients give up on a call after 25 s by default.
pub const MAX_LEASE: Duration = Duration::from_secs(20);

/// The most leases held at once by one uid: each is a promise to Put a key soon, and a
/// caller filling the table would make every other caller's GetOrLease fail. Past it,
/// `Unavailable` until some end (a Put, or their time).
pub const MAX_LEASES_PER_UID: usize = 4096;
/// The most leases held at once in all.
pub const MAX_LEASES: usize = 65_536;

/// The most calls of one uid waiting at once for another caller's lease (each is a
/// D-Bus call held open, ~6 KB, whether or not it wants a reply). Past it, `Unavailable` at
/// once (a call flagged no-reply is dropped), until some end.
pub const MAX_WAITERS_PER_UID: usize = 1024;
/// The most calls waiting for leases at once in all.
pub const MAX_WAITERS: usize = 8192;
/// Refusals past the waiting bounds are logged at most this often, with their count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refuse a `lease_ms` outside 1 to [`MAX_LEASE`], naming the caller's own number.
pub fn check_lease_ms(lease_ms: u32) -> AppResult<Duration> {
    let lease = Duration::from_millis(lease_ms.into());
    if lease.is_zero() || lease > MAX_LEASE {
        return Err(AppError::invalid(format!(
            "lease_ms {lease_ms} is out of range: 1 to {} ms",
            MAX_LEASE.as_millis()
        )));
    }
    Ok(lease)
}

/// One held lease: until when, who holds it, and who to wake when the key is put.
#[derive(Debug)]
struct Held {
    until: Instant,
    uid: Option<u32>,
    put: Arc<Notify>,
}

/// The leases in force, by (namespace, key), with a count per holder, and the calls waiting
/// for them. Owned by [`App`].
#[derive(Debug, Default)]
pub struct Leases {
    table: Mutex<Table>,
    waiters: Mutex<Waiters>,
}

/// The calls waiting for another caller's lease, per uid and in all.
#[derive(Debug, Default)]
struct Waiters {
    per_uid: HashMap<Option<u32>, usize>,
    all: usize,
    /// Calls refused past the bounds, since the start.
    refused: u64,
    /// Refused since the last log line, and when that was.
    unlogged: u64,
    logged: Option<Instant>,
}

/// One waiting call's place, given back when the call ends, however it ends.
#[derive(Debug)]
pub struct Waiting<'a> {
    leases: &'a Leases,
    uid: Option<u32>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut w = self.leases.waiters();
        w.all -= 1;
        release(&mut w.per_uid, self.uid);
    }
}

#[derive(Debug, Default)]
struct Table {
    held: HashMap<(String, String), Held>,
    per_uid: HashMap<Option<u32>, usize>,
    /// No expired lease is looked for before this (pruning is a walk of the whole table).
    prune_after: Option<Instant>,
}

impl Table {
    fn remove(&mut self, k: &(String, String)) -> Option<Held> {
        let h = self.held.remove(k)?;
        self.release(h.uid);
        Some(h)
    }

    fn release(&mut self, uid: Option<u32>) {
        release(&mut self.per_uid, uid);
    }

    /// Drop expired leases: at most every 100 ms, or when a bound is reached (so a full
    /// table of stale leases never refuses anyone), never on every call.
    fn prune(&mut self, now: Instant, uid: Option<u32>) {
        let full = self.held.len() >= MAX_LEASES
            || self.per_uid.get(&uid).copied().unwrap_or(0) >= MAX_LEASES_PER_UID;
        if !full && self.prune_after.is_some_and(|t| now < t) {
            return;
        }
        self.prune_after = Some(now + Duration::from_millis(100));
        let Table { held, per_uid, .. } = self;
        held.retain(|_, h| {
            let live = h.until > now;
            if !live {
                release(per_uid, h.uid);
            }
            live
        });
    }
}

/// One lease of `uid` fewer in `per_uid`.
fn release(per_uid: &mut HashMap<Option<u32>, usize>, uid: Option<u32>) {
    if let Some(n) = per_uid.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            per_uid.remove(&uid);
        }
    }
}

/// What a miss found: the lease is ours, or someone else's until `until`.
enum Miss {
    Ours,
    Theirs { until: Instant, put: Arc<Notify> },
}

impl Leases {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more call of `uid` to wait, or `Unavailable` past the bounds.
    fn wait(&self, uid: Option<u32>) -> AppResult<Waiting<'_>> {
        let mut w = self.waiters();
        let mine = w.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_WAITERS_PER_UID || w.all >= MAX_WAITERS {
            w.refused += 1;
            w.unlogged += 1;
            let now = Instant::now();
            if w.logged.is_none_or(|t| now >= t + REFUSAL_LOG_EVERY) {
                tracing::warn!(
                    "{} GetOrLease calls refused since the last such line: too many calls \
                     waiting for leases ({mine} of uid {}, {} in all; the limits are \
                     {MAX_WAITERS_PER_UID} per user and {MAX_WAITERS} in all)",
                    w.unlogged,
                    uid.map_or_else(|| "none".to_string(), |u| u.to_string()),
                    w.all
                );
                w.unlogged = 0;
                w.logged = Some(now);
            }
            return Err(AppError::Unavailable(format!(
                "too many calls waiting for leases ({mine} by this user, {} in all; the \
                 limits are {MAX_WAITERS_PER_UID} per user and {MAX_WAITERS} in all): retry \
                 later",
                w.all
            )));
        }
        w.all += 1;
        *w.per_uid.entry(uid).or_insert(0) += 1;
        Ok(Waiting { leases: self, uid })
    }

    /// Calls waiting for a lease now.
    pub fn waiting(&self) -> u64 {
        self.waiters().all as u64
    }

    /// Calls refused past the waiting bounds since the start.
    pub fn refused(&self) -> u64 {
        self.waiters().refused
    }

    fn on_miss(&self, ns: &str, key: &str, uid: Option<u32>, lease: Duration) -> AppResult<Miss> {
        let now = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.prune(now, uid);
        let k = (ns.to_string(), key.to_string());
        match t.held.get(&k) {
            Some(h) if h.until > now => {
                return Ok(Miss::Theirs {
                    until: h.until,
                    put: Arc::clone(&h.put),
                });
            }
            Some(_) => {
                // Expired, not pruned yet: it passes to this caller.
                t.remove(&k);
            }
            None => {}
        }
        let mine = t.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_LEASES_PER_UID || t.held.len() >= MAX_LEASES {
            return Err(AppError::Unavailable(format!(
                "too many leases held ({mine} by this caller, {} in all; the limits are \
                 {MAX_LEASES_PER_UID} per user and {MAX_LEASES} in all): put or let some \
                 expire, then retry",
                t.held.len()
            )));
        }
        t.held.insert(
            k,
            Held {
                until: now + lease,
                uid,
                put: Arc::new(Notify::new()),
            },
        );
        *t.per_uid.entry(uid).or_insert(0) += 1;
        Ok(Miss::Ours)
    }

    /// A put of (ns, key) ends its lease and wakes the waiters.
    pub fn ended_by_put(&self, ns: &str, key: &str) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = t.remove(&(ns.to_string(), key.to_string())) {
            h.put.notify_waiters();
        }
    }
}

impl App {
    /// GetOrLease: `(true, value)` on a hit; `(false, [])` when this caller now holds the
    /// lease and should Put the key; otherwise waits up to `lease_ms` for the holder's Put.
    pub async fn get_or_lease(
        &self,
        who: &Requester,
        namespace: String,
        key: String,
        lease_ms: u32,
    ) -> AppResult<(bool, Vec<u8>)> {
        let lease = check_lease_ms(lease_ms)?;
        let deadline = Instant::now() + lease;
        // Taken at the first wait and held until the call ends.
        let mut waiting = None;
        loop {
            match self.get(who, namespace.clone(), key.clone()).await {
                Ok(v) => return Ok((true, v)),
                Err(AppError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            // Only a caller whose Put would be accepted may hold the lease: a reader of
            // another user's namespace would otherwise stall its owner's callers for up to
            // MAX_LEASE each time it asked.
            self.cache()?.check_writer(&namespace, &who.caller())?;
            let (until, put) = match self.leases.on_miss(&namespace, &key, who.uid, lease)? {
                Miss::Ours => return Ok((false, Vec::new())),
                Miss::Theirs { until, put } => (until, put),
            };
            if waiting.is_none() {
                waiting = Some(self.leases.wait(who.uid)?);
            }
            let woken = put.notified();
            let mut woken = std::pin::pin!(woken);
            // Registered before the second look, so a Put after it cannot be missed.
            woken.as_mut().enable();
            // A Put between the miss and here already woke the others: look again.
            if self.fetch_exists(who, &namespace, &key).await? {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(AppError::Unavailable(format!(
                    "another caller holds the lease on {key:?} in {namespace:?} and did not \
                     put it within {lease_ms} ms"
                )));
            }
            // Wake on the Put, at the lease's end (someone may take it over), or at our
            // own deadline, whichever is first.
            let _ = tokio::time::timeout_at(until.min(deadline), woken).await;
        }
    }

    async fn fetch_exists(&self, who: &Requester, ns: &str, key: &str) -> AppResult<bool> {
        match self.get(who, ns.to_string(), key.to_string()).await {
            Ok(_) => Ok(true),
            Err(AppError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(l: &Leases, key: &str, uid: u32, ms: u64) -> AppResult<bool> {
        l.on_miss("ns", key, Some(uid), Duration::from_millis(ms))
            .map(|m| matches!(m, Miss::Ours))
    }

    // Real time: the leases are long enough that filling the table takes a fraction of them.
    #[test]
    fn one_user_cannot_take_every_lease() {
        let l = Leases::default();
        for i in 0..MAX_LEASES_PER_UID {
            assert!(ours(&l, &format!("k{i}"), 1000, 5000).unwrap());
        }
        // The same user is refused by name; another user still gets one; a key already
        // leased is still someone else's, not a refusal.
        let err = ours(&l, "one-more", 1000, 5000).unwrap_err();
        assert!(
            matches!(&err, AppError::Unavailable(m) if m.contains("too many leases")),
            "{err:?}"
        );
        assert!(ours(&l, "other", 1001, 5000).unwrap());
        assert!(!ours(&l, "k0", 1001, 5000).unwrap());
        // A Put ends one and frees its place.
        l.ended_by_put("ns", "k1");
        assert!(ours(&l, "one-more", 1000, 5000).unwrap());
        // Once they expire, the user may lease again, and the counts are back to zero.
        std::thread::sleep(Duration::from_millis(5100));
        assert!(ours(&l, "later", 1000, 5000).unwrap());
        let t = l.table.lock().unwrap();
        assert_eq!(t.held.len(), 1);
        assert_eq!(t.per_uid.get(&Some(1000)), Some(&1));
    }

    #[test]
    fn an_expired_lease_passes_to_the_next_caller() {
        let l = Leases::default();
        assert!(ours(&l, "k", 1, 100).unwrap());
        assert!(!ours(&l, "k", 2, 100).unwrap());
        std::thread::sleep(Duration::from_millis(150));
        assert!(ours(&l, "k", 2, 100).unwrap());
        let t = l.table.lock().unwrap();
        assert_eq!(t.per_uid.get(&Some(1)), None);
        assert_eq!(t.per_uid.get(&Some(2)), Some(&1));
    }

    #[test]
    fn waiting_calls_are_bounded_per_uid_and_in_all_and_come_back() {
        let l = Leases::default();
        let mine: Vec<_> = (0..MAX_WAITERS_PER_UID)
            .map(|_| l.wait(Some(7)).unwrap())
            .collect();
        let err = l.wait(Some(7)).unwrap_err();
        assert!(
            matches!(&err, AppError::Unavailable(m) if m.contains("too many calls waiting")),
            "{err:?}"
        );
        assert_eq!((l.waiting(), l.refused()), (MAX_WAITERS_PER_UID as u64, 1));
        // Others fill the rest of the bound, then everyone is refused.
        let others: Vec<_> = (0..MAX_WAITERS - MAX_WAITERS_PER_UID)
            .map(|i| l.wait(Some(100 + (i % 7) as u32)).unwrap())
            .collect();
        assert!(l.wait(Some(99)).is_err());
        assert_eq!(l.refused(), 2);
        drop(mine);
        assert!(l.wait(Some(7)).is_ok());
        drop(others);
        assert_eq!(l.waiting(), 0);
        assert!(l.waiters().per_uid.is_empty());
    }

    #[test]
    fn lease_ms_is_checked_as_given() {
        for bad in [0, 20_001, u32::MAX] {
            let e = check_lease_ms(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("lease_ms {bad} ")), "{e}");
        }
        assert_eq!(check_lease_ms(1).unwrap(), Duration::from_millis(1));
        assert_eq!(check_lease_ms(20_000).unwrap(), MAX_LEASE);
    }
}

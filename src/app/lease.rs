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

/// One held lease: until when, and who to wake when the key is put.
#[derive(Debug)]
struct Held {
    until: Instant,
    put: Arc<Notify>,
}

/// The leases in force, by (namespace, key). Owned by [`App`].
#[derive(Debug, Default)]
pub struct Leases(Mutex<HashMap<(String, String), Held>>);

/// What a miss found: the lease is ours, or someone else's until `until`.
enum Miss {
    Ours,
    Theirs { until: Instant, put: Arc<Notify> },
}

impl Leases {
    fn on_miss(&self, ns: &str, key: &str, lease: Duration) -> Miss {
        let now = Instant::now();
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|_, h| h.until > now);
        let k = (ns.to_string(), key.to_string());
        if let Some(h) = held.get(&k) {
            return Miss::Theirs {
                until: h.until,
                put: Arc::clone(&h.put),
            };
        }
        held.insert(
            k,
            Held {
                until: now + lease,
                put: Arc::new(Notify::new()),
            },
        );
        Miss::Ours
    }

    /// A put of (ns, key) ends its lease and wakes the waiters.
    pub fn ended_by_put(&self, ns: &str, key: &str) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.remove(&(ns.to_string(), key.to_string())) {
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
        let lease = Duration::from_millis(lease_ms.into());
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(AppError::invalid(format!(
                "lease_ms {lease_ms} is out of range: 1 to {} ms",
                MAX_LEASE.as_millis()
            )));
        }
        let deadline = Instant::now() + lease;
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
            let (until, put) = match self.leases.on_miss(&namespace, &key, lease) {
                Miss::Ours => return Ok((false, Vec::new())),
                Miss::Theirs { until, put } => (until, put),
            };
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

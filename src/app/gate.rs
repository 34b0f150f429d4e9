//! The call gate: open while the daemon takes calls; at SIGTERM it closes, new calls get
//! `Unavailable`, and shutdown waits for the calls already inside to finish.

use crate::app::error::{AppError, AppResult};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Counts calls in flight and refuses new ones once closed.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

/// Held for the duration of one call.
#[derive(Debug)]
pub struct GateGuard<'a> {
    gate: &'a Gate,
}

impl Gate {
    /// Admit a call.
    pub fn enter(&self) -> AppResult<GateGuard<'_>> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.leave();
            return Err(AppError::Unavailable(
                "numa-cached is shutting down; retry when it is back".into(),
            ));
        }
        Ok(GateGuard { gate: self })
    }

    fn leave(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Calls currently inside.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Refuse new calls and wait (at most `limit`) for those inside. True when all finished.
    pub async fn close_and_drain(&self, limit: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let drained = async {
            loop {
                let idle = self.idle.notified();
                if self.inflight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, drained).await.is_ok()
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_refuses_new_calls_and_waits_for_running_ones() {
        let gate = std::sync::Arc::new(Gate::default());
        let guard = gate.enter().unwrap();
        let g2 = gate.clone();
        let closer = tokio::spawn(async move { g2.close_and_drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(gate.enter(), Err(AppError::Unavailable(_))));
        assert!(!closer.is_finished());
        drop(guard);
        assert!(closer.await.unwrap());
    }
}

//! Byte budgets kept per uid: one semaphore of permits per uid, made when the uid first needs
//! one and dropped once nothing holds it (its permits hold it), so that all of a uid's calls
//! and connections draw on one budget while any of them is counted. The read gate
//! (`app/reads.rs`) and the budgets of direct connections (`service/direct_socket.rs`) keep
//! theirs here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Semaphore;

/// A budget of `permits` for every uid.
#[derive(Debug)]
pub struct PerUid {
    map: Mutex<HashMap<u32, Weak<Semaphore>>>,
    permits: usize,
}

impl PerUid {
    /// Budgets of `permits` each.
    pub fn new(permits: usize) -> PerUid {
        PerUid {
            map: Mutex::new(HashMap::new()),
            permits,
        }
    }

    /// The semaphore of `uid`: the one its holders share, or a full one when none is held.
    pub fn of(&self, uid: u32) -> Arc<Semaphore> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&uid).and_then(Weak::upgrade) {
            return s;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(Semaphore::new(self.permits));
        map.insert(uid, Arc::downgrade(&s));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_shares_its_budget_while_held_and_gets_a_full_one_after() {
        let b = PerUid::new(4);
        let held = b.of(7).try_acquire_many_owned(3).unwrap();
        assert_eq!(b.of(7).available_permits(), 1, "the holders' budget");
        assert_eq!(b.of(8).available_permits(), 4, "another uid's is its own");
        drop(held);
        assert_eq!(b.of(7).available_permits(), 4);
        assert!(
            b.map.lock().unwrap().len() <= 1,
            "budgets nobody holds are dropped"
        );
    }
}

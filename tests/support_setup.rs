//! The global set-up of the integration tests (tests/support/mod.rs) under contention: eight
//! threads create the same user and group at once, as parallel tests do on a fresh machine.
//! A throwaway user of this test's own, so no other test's user is removed from under it.

mod support;

use std::process::Command;

const USER: &str = "numacache-race";

fn known(kind: &str, name: &str) -> bool {
    Command::new("getent")
        .args([kind, name])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn remove() {
    let _ = Command::new("userdel").arg(USER).output();
    let _ = Command::new("groupdel").arg(USER).output();
}

#[test]
fn eight_threads_creating_one_user_and_group_all_succeed() {
    if !support::require_root()
        || !support::require_tool("useradd", "passwd")
        || !support::require_tool("getent", "libc-bin")
    {
        return;
    }
    remove();
    assert!(!known("passwd", USER), "{USER} could not be removed first");
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let _lock = support::setup_lock();
                    support::ensure_group(USER);
                    support::ensure_user(USER, Some(USER), &[]);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a thread's set-up failed");
        }
    });
    let user = known("passwd", USER);
    let group = known("group", USER);
    remove();
    assert!(user && group, "user {user}, group {group} after the set-up");
}

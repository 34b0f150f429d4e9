//! The gateway's polkit client against a real polkitd on a private system bus: root and a
//! member of the granted group are authorized for our actions, `nobody` is refused, and an
//! unreachable authority refuses rather than allows.

mod gateway;
mod support;

use gateway::polkit::{GRANTED_USER, PolkitBus, TestUser};
use numa_cache::app::{Action, AppError, Polkit, Refusal, Requester, Subject, UnixProcess};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A process running as `user` (with its groups) that stays alive while polkit looks at it,
/// and its polkit subject. `setpriv` execs `sleep` directly, so the child's pid is the
/// process with that uid.
fn sleeper_as(user: &str) -> (Child, UnixProcess) {
    let uid = id_of(user, "-u");
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={}", id_of(user, "-g")),
            "--init-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .expect("setpriv");
    // Wait until setpriv has dropped to the user; the start time does not change across exec.
    let status = format!("/proc/{}/status", child.id());
    let has_uid = |text: String| {
        text.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string()))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&status)
        .map(has_uid)
        .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "setpriv did not switch to {user}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let subject =
        UnixProcess::from_peer(Some(child.id() as i32), uid).expect("read /proc/PID/stat");
    (child, subject)
}

/// An HTTP-style requester for a unix-process subject.
fn who(p: UnixProcess) -> Requester {
    Requester {
        subject: Subject::UnixProcess(p),
        uid: Some(p.uid),
        pid: Some(p.pid),
        cpu: None,
    }
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_grants_root_and_the_group_and_refuses_nobody() {
    if !(support::require_root()
        && support::require_tool("dbus-daemon", "dbus-daemon")
        && support::require_tool("/usr/lib/polkit-1/polkitd", "polkitd")
        && support::require_tool("busctl", "systemd")
        && support::require_tool("setpriv", "util-linux"))
    {
        return;
    }
    let _user = TestUser::create();
    let bus = PolkitBus::start();
    let polkit = Polkit::at(Some(bus.address.clone()));

    let me = who(UnixProcess::from_peer(Some(std::process::id() as i32), 0).unwrap());
    polkit
        .check(&me, Action::SetStrategy)
        .await
        .expect("root is authorized");

    let (mut nobody, subject) = sleeper_as("nobody");
    let refused = polkit.check(&who(subject), Action::Optimize).await;
    let _ = nobody.kill();
    let _ = nobody.wait();
    match refused {
        Err(AppError::AccessDenied(Refusal::NotAuthorized, msg)) => {
            assert!(msg.contains("org.opdbus.NumaCache.optimize"), "{msg}");
            assert!(msg.contains(&format!("uid={}", subject.uid)), "{msg}");
        }
        other => panic!("nobody should be denied, got {other:?}"),
    }

    let (mut granted, subject) = sleeper_as(GRANTED_USER);
    let allowed = polkit.check(&who(subject), Action::SetStrategy).await;
    let _ = granted.kill();
    let _ = granted.wait();
    allowed.expect("a member of the granted group is authorized");

    let nowhere = Polkit::at(Some("unix:path=/nonexistent/bus".into()));
    assert!(matches!(
        nowhere.check(&me, Action::SetStrategy).await,
        Err(AppError::AccessDenied(Refusal::AuthorityUnavailable, _))
    ));
}

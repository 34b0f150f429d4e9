//! Losing the bus name is fatal (issue 10), shown on a real bus:
//! - numa-cached asks for its name without ALLOW_REPLACEMENT, so another connection asking
//!   with REPLACE_EXISTING cannot take it: the bus answers "exists" and the daemon keeps the
//!   name and serves;
//! - the name can still go with the bus itself: when the bus daemon stops (as in a restart),
//!   numa-cached stops with a message naming the lost name, closes its cache cleanly (the next
//!   start on a new bus does not check the cache and finds the value), and exits non-zero so
//!   that systemd (Restart=on-failure) starts it again;
//! - a NameLost signal forged by a local user (sent from its own connection, not the bus) is
//!   not taken for the bus's: the daemon keeps serving.

mod dbus;
mod support;

use dbus::{Bus, Daemon, NAME, ok};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `busctl call` of the bus driver's `member` with signature `sig`; its reply.
fn driver(bus: &Bus, member: &str, sig: &str, args: &[&str]) -> String {
    let mut call = vec![
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        member,
        sig,
    ];
    call.extend_from_slice(args);
    ok(&bus.busctl(&call), member)
}

/// The pid of the connection owning `name` (the bus driver answers for itself too).
fn owner_pid(bus: &Bus, name: &str) -> u32 {
    let out = driver(bus, "GetConnectionUnixProcessID", "s", &[name]);
    out.trim()
        .strip_prefix("u ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a pid: {out:?}"))
}

/// numa-cached on `bus`, its output in `log`, started by this test (so that the exit status
/// can be read); returns once it owns its name.
fn spawn_daemon(bus: &Bus, state: &std::path::Path, log: &std::path::Path) -> Child {
    let logf = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_numa-cached"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("OPDBUS_CACHE_DIR", state)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("starting numa-cached");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bus.has_owner(NAME) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "numa-cached exited with {status} before taking its name:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "numa-cached did not take its name"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[test]
fn another_connection_cannot_take_the_name_with_replace_existing() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let mut daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    // RequestName(NAME, REPLACE_EXISTING | DO_NOT_QUEUE) as root, whom the bus policy lets
    // own the name: 3 is DBUS_REQUEST_NAME_REPLY_EXISTS (1 would be "primary owner": taken).
    let reply = driver(&bus, "RequestName", "su", &[NAME, "6"]);
    assert_eq!(
        reply.trim(),
        "u 3",
        "the bus let another connection take {NAME}:\n{}",
        daemon.log()
    );
    // Queued behind it (REPLACE_EXISTING alone) is all another connection can get: 2 is
    // DBUS_REQUEST_NAME_REPLY_IN_QUEUE.
    let reply = driver(&bus, "RequestName", "su", &[NAME, "2"]);
    assert_eq!(reply.trim(), "u 2", "{}", daemon.log());
    assert_eq!(owner_pid(&bus, NAME), daemon.pid());
    assert!(daemon.alive(), "{}", daemon.log());
    ok(&bus.busctl_put("ns", "k", b"abc"), "Put after the attempts");
    assert!(
        !daemon.log().contains("lost the bus name"),
        "{}",
        daemon.log()
    );
}

#[test]
fn when_the_bus_goes_away_the_daemon_stops_naming_the_lost_name_and_closes_cleanly() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let state = bus.dir().join("state");
    let log = bus.dir().join("first.log");
    let mut daemon = spawn_daemon(&bus, &state, &log);
    ok(&bus.busctl_put("ns", "k", b"abc"), "Put");

    // Stop the bus daemon (the one this test's Bus started; the bus driver gives its pid).
    let bus_pid = owner_pid(&bus, "org.freedesktop.DBus");
    // SAFETY: kill(2) on the pid of the dbus-daemon our Bus guard spawned.
    assert_eq!(
        unsafe { libc::kill(bus_pid as libc::pid_t, libc::SIGTERM) },
        0
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = daemon.try_wait().expect("waiting for numa-cached") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!(
                "numa-cached kept running for 30 s without its bus:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "losing the name must be a failure (for Restart=on-failure): {status}\n{text}"
    );
    assert!(
        text.contains("lost the bus name org.opdbus.NumaCache")
            && text.contains("connection to the system bus ended"),
        "the log names the lost name and why:\n{text}"
    );

    // It closed the cache on the way out: a start on a new bus does not check the cache as
    // after a crash, and the value is there.
    let bus2 = Bus::start_with(false);
    let second = Daemon::start(&bus2, &state, &[]);
    let got = ok(&bus2.busctl_get("ns", "k"), "Get after the restart");
    assert_eq!(got.trim(), "ay 3 97 98 99");
    assert!(!second.log().contains("unclean"), "{}", second.log());
}

#[test]
fn a_name_lost_signal_forged_by_a_local_user_is_ignored() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let mut daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let unique = driver(&bus, "GetNameOwner", "s", &[NAME]);
    let unique = unique
        .trim()
        .strip_prefix("s ")
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("not a name: {unique:?}"));
    // nobody sends org.freedesktop.DBus.NameLost(NAME) straight to the daemon's connection,
    // from the bus's own object path: only the sender (its own unique name) differs.
    let sent = bus.as_user(
        "nobody",
        "gdbus",
        &[
            "emit",
            "--system",
            "--dest",
            &unique,
            "--object-path",
            "/org/freedesktop/DBus",
            "--signal",
            "org.freedesktop.DBus.NameLost",
            NAME,
        ],
    );
    assert!(
        sent.status.success(),
        "the bus policy let the forged signal through, so the daemon must see it: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // A round trip after it, then a second for the daemon to have acted on it if it would.
    ok(
        &bus.busctl_put("ns", "k", b"abc"),
        "Put after the forged signal",
    );
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(
            daemon.alive(),
            "a forged NameLost stopped the daemon:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(owner_pid(&bus, NAME), daemon.pid());
    assert!(
        !daemon.log().contains("lost the bus name"),
        "{}",
        daemon.log()
    );
}

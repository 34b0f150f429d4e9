//! The daemon's life with systemd's protocols and failure modes: a bad configuration value
//! stops start-up naming the variable; READY=1, WATCHDOG=1 and STOPPING=1 reach
//! `$NOTIFY_SOCKET`; SIGTERM ends it with status 0; and when polkit cannot be reached, admin
//! methods are denied rather than allowed.

mod dbus;
mod support;

use dbus::{Bus, Daemon, NAME, ROOT};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_bad_value_stops_start_up_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_numa-cached"))
        .env("OPDBUS_NUMA_MEMORY_POLICY", "fast")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OPDBUS_NUMA_MEMORY_POLICY")
            && err.contains("\"fast\"")
            && err.contains("bind, preferred, interleaved, default"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_numa-cached"))
        .args(["--max-bytes", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPDBUS_CACHE_MAX_BYTES (--max-bytes)"));
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let sock_path = bus.dir().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let notify = sock_path.display().to_string();
    let daemon = Daemon::start(
        &bus,
        &bus.dir().join("state"),
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline
        && !(seen.iter().any(|m: &String| m.starts_with("READY=1"))
            && seen.iter().any(|m| m == "WATCHDOG=1"))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(
        seen.iter().any(|m| m.starts_with("READY=1")),
        "no READY=1: {seen:?}"
    );
    assert!(
        seen.iter().any(|m| m == "WATCHDOG=1"),
        "no watchdog ping within 5 s: {seen:?}"
    );
    assert_eq!(daemon.stop(), Some(0));
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= &buf[..n] == b"STOPPING=1";
    }
    assert!(stopping, "no STOPPING=1 at SIGTERM");
}

#[test]
fn without_polkit_admin_methods_are_denied() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    // Even root: nothing may change when authorization cannot be checked.
    let out = bus.gdbus_call(
        "org.opdbus.NumaCache.Strategy.SetStrategy",
        &["round_robin", "-1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("org.freedesktop.DBus.Error.AccessDenied")
            && err.contains("polkit"),
        "{err}"
    );
    let name = bus.busctl(&[
        "get-property",
        NAME,
        ROOT,
        "org.opdbus.NumaCache.Strategy",
        "Name",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&name.stdout).trim(),
        "s \"local_node\"",
        "the strategy must not have changed"
    );
}

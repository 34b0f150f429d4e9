//! The daemon's life with systemd's protocols and failure modes: a bad configuration value
//! stops start-up naming the variable; READY=1, WATCHDOG=1 and STOPPING=1 reach
//! `$NOTIFY_SOCKET`; a long open (an index rebuilt from the records) asks systemd for more
//! start time; SIGTERM ends it with status 0; and when polkit cannot be reached, admin
//! methods are denied rather than allowed.

mod dbus;
mod store_util;
// One copy of the shared helpers: the one store_util already loads (tests/dbus uses it as
// `super::support`).
use store_util::support;

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

/// A socket in the bus's folder standing in for systemd's `$NOTIFY_SOCKET` (a real datagram
/// socket the daemon writes to), read with a 200 ms timeout; and its path for the daemon.
fn notify_socket(bus: &Bus) -> (UnixDatagram, String) {
    let path = bus.dir().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (sock, path.display().to_string())
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let (sock, notify) = notify_socket(&bus);
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

/// An open that takes long (here: index.db lost, rebuilt from the records) tells systemd
/// start-up goes on (EXTEND_TIMEOUT_USEC and a STATUS line) before READY=1, so a start
/// timeout does not kill a daemon that is working; the journal gets a line too.
#[test]
fn a_long_open_asks_systemd_for_more_time() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let state = bus.dir().join("state");
    long_rebuild(&state, Duration::from_millis(1500));
    std::fs::remove_file(state.join("index.db")).unwrap();
    let (sock, notify) = notify_socket(&bus);
    let t0 = Instant::now();
    let daemon = Daemon::start(&bus, &state, &[("NOTIFY_SOCKET", &notify)]);
    let took = t0.elapsed();
    eprintln!("the open took {took:?}");
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(took > Duration::from_secs(1), "the open took only {took:?}");
    let extend = seen
        .iter()
        .position(|m| m.starts_with("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=opening the cache"));
    let ready = seen.iter().position(|m| m.starts_with("READY=1"));
    assert!(
        matches!((extend, ready), (Some(e), Some(r)) if e < r),
        "no EXTEND_TIMEOUT_USEC before READY=1 in {took:?}: {seen:?}"
    );
    assert!(
        daemon.log().contains("still opening the cache after"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.stop(), Some(0));
}

/// Fill a cache in `state` with records, from 50k up, until rebuilding its index from them
/// (index.db removed) takes `cpu` of CPU time here: the rebuild runs on the
/// opening thread, in this process as in the daemon, and its CPU time is the same on a loaded
/// machine (where the daemon's open then lasts longer) as on an idle one (where it lasts at
/// least that). Leaves the cache closed, its index in place.
fn long_rebuild(state: &std::path::Path, cpu: Duration) {
    use numa_cache::store::{Cache, Caller, PutOptions};
    let cfg = store_util::config(state);
    let me = Caller {
        uid: None,
        cpu: None,
    };
    let mut cache = Cache::open(cfg.clone(), store_util::topo1()).unwrap();
    let (mut batches, mut want) = (0, 50);
    loop {
        for b in batches..want {
            let batch: Vec<(String, Vec<u8>)> = (0..1000)
                .map(|i| (format!("k{b}-{i}"), format!("v{b}-{i}").into_bytes()))
                .collect();
            cache
                .put_many("long-open", batch, &PutOptions::default(), &me)
                .unwrap();
        }
        batches = want;
        cache.close().unwrap();
        std::fs::remove_file(state.join("index.db")).unwrap();
        let before = thread_cpu();
        cache = Cache::open(cfg.clone(), store_util::topo1()).unwrap();
        let took = thread_cpu() - before;
        eprintln!("rebuilding the index of {batches}k records took {took:?} of CPU");
        if took >= cpu {
            break;
        }
        assert!(
            batches < 6400,
            "{batches}k records rebuild in {took:?} of CPU, under {cpu:?}"
        );
        // A fifth past what the rate so far asks for, so that one more round does; at most
        // twice as many (a rebuild is not quite linear in the records).
        let asks = cpu.as_secs_f64() / took.as_secs_f64().max(0.01) * 1.2;
        want = batches + (batches as f64 * (asks - 1.0).clamp(0.2, 1.0)) as usize;
    }
    cache.close().unwrap();
}

/// CPU time the calling thread has used: utime + stime of /proc/thread-self/stat, in
/// USER_HZ ticks (100 a second on Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The fields after the command name, from field 3 (state): utime is 14, stime 15.
    let f: Vec<u64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((f[11] + f[12]) * 10)
}

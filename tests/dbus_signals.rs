//! Change notification and persistence as a user sees them: `busctl monitor` and
//! `gdbus monitor` receive PropertiesChanged and StrategyChanged after SetStrategy, cache
//! statistics are coalesced to at most one PropertiesChanged a second, and a restart
//! (SIGTERM, exit 0, start again) keeps the strategy and the entries.

mod dbus;
mod support;

use dbus::{Bus, Daemon, Monitor, NAME, ROOT, ok};
use std::time::{Duration, Instant};

#[test]
fn monitors_see_property_and_strategy_changes() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let busctl = Monitor::start(
        &bus,
        "busctl",
        &["--system", "monitor", NAME],
        "busctl-monitor.txt",
    );
    let gdbus = Monitor::start(
        &bus,
        "gdbus",
        &["monitor", "--system", "--dest", NAME],
        "gdbus-monitor.txt",
    );
    ok(
        &bus.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Strategy",
            "SetStrategy",
            "si",
            "most_memory",
            "--",
            "-1",
        ]),
        "SetStrategy",
    );
    let t = busctl.wait_for(&[
        "Member=StrategyChanged",
        "Member=PropertiesChanged",
        "\"most_memory\"",
    ]);
    assert!(t.contains("org.opdbus.NumaCache.Strategy"), "{t}");
    gdbus.wait_for(&[
        "org.opdbus.NumaCache.Strategy.StrategyChanged ('most_memory'",
        "org.freedesktop.DBus.Properties.PropertiesChanged ('org.opdbus.NumaCache.Strategy'",
    ]);
}

#[test]
fn statistics_signals_are_coalesced_to_one_a_second() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let mon = Monitor::start(
        &bus,
        "gdbus",
        &["monitor", "--system", "--dest", NAME],
        "stats-monitor.txt",
    );
    let started = Instant::now();
    for i in 0..40 {
        let key = format!("k{i}");
        ok(&bus.busctl_put("statsns", &key, &[1]), "Put");
    }
    std::thread::sleep(Duration::from_millis(2200));
    let elapsed = started.elapsed().as_secs_f64();
    let t = mon.wait_for(&[
        "PropertiesChanged ('org.opdbus.NumaCache.CacheStats'",
        "'Entries': <uint64 40>",
    ]);
    let signals = t
        .matches("PropertiesChanged ('org.opdbus.NumaCache.CacheStats'")
        .count();
    assert!(
        (signals as f64) <= elapsed.ceil() + 1.0,
        "{signals} CacheStats PropertiesChanged in {elapsed:.1} s: must be at most one a second\n{t}"
    );
}

#[test]
fn restart_keeps_the_strategy_and_the_entries() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let state = bus.dir().join("state");
    let daemon = Daemon::start(&bus, &state, &[]);
    ok(
        &bus.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Strategy",
            "SetStrategy",
            "si",
            "interleave",
            "--",
            "-1",
        ]),
        "SetStrategy",
    );
    ok(&bus.busctl_put("keep", "k", &[7, 8, 9]), "Put");
    assert_eq!(
        daemon.stop(),
        Some(0),
        "SIGTERM must end numa-cached with status 0"
    );
    assert!(!bus.has_owner(NAME));
    // The environment asks for another strategy: the one set over the bus wins.
    let _daemon = Daemon::start(&bus, &state, &[("OPDBUS_NUMA_STRATEGY", "round_robin")]);
    let name = ok(
        &bus.busctl(&[
            "get-property",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Strategy",
            "Name",
        ]),
        "Name",
    );
    assert_eq!(name.trim(), "s \"interleave\"");
    let got = ok(
        &bus.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Cache",
            "Get",
            "ss",
            "keep",
            "k",
        ]),
        "Get",
    );
    assert_eq!(got.trim(), "ay 3 7 8 9");
}

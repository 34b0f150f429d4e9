//! Change notification and persistence as a user sees them: `busctl monitor` and
//! `gdbus monitor` receive PropertiesChanged and StrategyChanged after SetStrategy, cache
//! statistics (CacheStats and each node's object) are coalesced to at most one
//! PropertiesChanged a second, measured by the spacing of the signals, and a restart
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

/// Timestamps (µs, the bus monitor's) of PropertiesChanged of `iface`, by object path, from
/// `busctl --json=short monitor` output.
fn changes_by_path(text: &str, iface: &str) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut out: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["member"] == "PropertiesChanged" && v["payload"]["data"][0] == iface {
            let ts = v["timestamp-realtime"]
                .as_u64()
                .unwrap_or_else(|| panic!("no timestamp-realtime in {line}"));
            out.entry(v["path"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(ts);
        }
    }
    out
}

/// Cache figures change on every put, but CacheStats and each node's object send at most one
/// PropertiesChanged a second: measured by the spacing of consecutive signals (timestamps
/// taken by the bus monitor), not by their total count.
#[test]
fn statistics_signals_are_coalesced_to_one_a_second() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let mon = Monitor::start(
        &bus,
        "busctl",
        &["--system", "--json=short", "monitor", NAME],
        "stats-monitor.json",
    );
    // Puts spread over more than three seconds, each a change of the figures.
    let started = Instant::now();
    let mut puts = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let key = format!("k{puts}");
        ok(&bus.busctl_put("statsns", &key, &[1]), "Put");
        puts += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    // The last figures are announced too (at most a second later).
    let want = format!("\"Entries\":{{\"type\":\"t\",\"data\":{puts}}}");
    let t = mon.wait_for(&[&want]);
    for iface in [
        "org.opdbus.NumaCache.CacheStats",
        "org.opdbus.NumaCache.Node",
    ] {
        let by_path = changes_by_path(&t, iface);
        assert!(!by_path.is_empty(), "no PropertiesChanged of {iface}:\n{t}");
        for (path, ts) in &by_path {
            assert!(
                ts.len() >= 2 || iface.ends_with("Node"),
                "{iface} on {path}: {} signals for {puts} puts over 3.5 s; expected several, spaced",
                ts.len()
            );
            for w in ts.windows(2) {
                let gap_ms = (w[1] - w[0]) / 1000;
                // One a second; 50 ms of slack for the timer's own jitter.
                assert!(
                    gap_ms >= 950,
                    "{iface} on {path}: two PropertiesChanged {gap_ms} ms apart (at most one a second): {ts:?}"
                );
            }
        }
    }
    // The node the puts went to announced its entries, coalesced too (checked above).
    let nodes = changes_by_path(&t, "org.opdbus.NumaCache.Node");
    assert!(
        nodes.values().any(|ts| ts.len() >= 2),
        "no node object announced its changing figures more than once over 3.5 s: {nodes:?}"
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

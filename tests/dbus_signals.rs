//! Change notification and persistence as a user sees them: `busctl monitor` and
//! `gdbus monitor` receive PropertiesChanged and StrategyChanged after SetStrategy, cache
//! statistics (CacheStats and each node's object) are coalesced to at most one
//! PropertiesChanged a second, judged by the figures each signal carries against the
//! test's own clock, and a restart
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

/// The value of property `prop` (a count) in each PropertiesChanged of `iface`, by object
/// path, in the order sent (None where a signal did not carry it), from `busctl
/// --json=short monitor` output.
fn announced_by_path(
    text: &str,
    iface: &str,
    prop: &str,
) -> std::collections::BTreeMap<String, Vec<Option<u64>>> {
    let mut out: std::collections::BTreeMap<String, Vec<Option<u64>>> = Default::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let data = &v["payload"]["data"];
        if v["member"] == "PropertiesChanged" && data[0] == iface {
            out.entry(v["path"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(data[1][prop]["data"].as_u64());
        }
    }
    out
}

/// Cache figures change on every put, but CacheStats and each node's object send at most one
/// PropertiesChanged a second. Judged by the test's own clock, not by when the signals
/// arrive (a loaded machine delays one and not the next): one put at a time, each a new
/// entry, so a signal announcing n entries read the figures after put n was sent and before
/// put n+1 was answered. Two consecutive signals announcing n and m entries were sent at
/// most (put m+1 answered) - (put n sent) apart, which must be at least a second.
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
    // Puts spread over more than three seconds, each a change of the figures: put k (from
    // 1) sent at sent[k-1] and answered at answered[k-1].
    let started = Instant::now();
    let (mut sent, mut answered) = (Vec::new(), Vec::new());
    while started.elapsed() < Duration::from_millis(3500) {
        let key = format!("k{}", sent.len());
        sent.push(started.elapsed());
        ok(&bus.busctl_put("statsns", &key, &[1]), "Put");
        answered.push(started.elapsed());
        // A pace, not a wait: puts spread over the periods.
        std::thread::sleep(Duration::from_millis(30));
    }
    let puts = sent.len();
    // The last figures are announced too (at most a second later).
    let want = format!("\"Entries\":{{\"type\":\"t\",\"data\":{puts}}}");
    let t = mon.wait_for(&[&want]);
    for (iface, prop) in [
        ("org.opdbus.NumaCache.CacheStats", "Entries"),
        ("org.opdbus.NumaCache.Node", "CacheEntries"),
    ] {
        let by_path = announced_by_path(&t, iface, prop);
        assert!(!by_path.is_empty(), "no PropertiesChanged of {iface}:\n{t}");
        for (path, counts) in &by_path {
            assert!(
                counts.len() >= 2 || iface.ends_with("Node"),
                "{iface} on {path}: {} signals for {puts} puts over 3.5 s; expected several, spaced",
                counts.len()
            );
            for w in counts.windows(2) {
                let (Some(n), Some(m)) = (w[0], w[1]) else {
                    continue;
                };
                // The last signal's next put was never made: no bound from it.
                let Some(until) = answered.get(m as usize) else {
                    continue;
                };
                let from = sent[(n as usize).saturating_sub(1)];
                let most = *until - from;
                assert!(
                    most >= Duration::from_secs(1),
                    "{iface} on {path}: the signals announcing {prop} {n} and {m} were sent at \
                     most {most:?} apart (at most one a second): {counts:?}"
                );
            }
        }
    }
    // The node the puts went to announced its entries, coalesced too (checked above).
    let nodes = announced_by_path(&t, "org.opdbus.NumaCache.Node", "CacheEntries");
    assert!(
        nodes.values().any(|c| c.len() >= 2),
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

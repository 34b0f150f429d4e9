//! The CacheStats properties follow what the engine does on its own (issue 10): entries put
//! with a five-second TTL expire in the committer's background sweep, and a bus monitor then
//! sees a PropertiesChanged with the lower entry count and the higher eviction count, with no
//! call made to the daemon after the puts.

mod dbus;
mod support;

use dbus::{Bus, Daemon, Monitor, NAME, ROOT, ok};

/// The messages `busctl --json=short monitor` printed, parsed (other lines skipped).
fn messages(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `Entries` in a PropertiesChanged of CacheStats, when this message is one that carries it.
fn entries_signalled(m: &serde_json::Value) -> Option<(u64, Option<u64>)> {
    if m["member"] != "PropertiesChanged"
        || m["payload"]["data"][0] != "org.opdbus.NumaCache.CacheStats"
    {
        return None;
    }
    let changed = &m["payload"]["data"][1];
    let entries = changed["Entries"]["data"].as_u64()?;
    Some((entries, changed["Evictions"]["data"].as_u64()))
}

#[test]
fn expiry_in_the_background_changes_the_stats_properties_without_any_call() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let mon = Monitor::start(
        &bus,
        "busctl",
        &["--system", "--json=short", "monitor", NAME],
        "stats-expiry.json",
    );
    for key in ["a", "b", "c"] {
        ok(
            &bus.busctl(&[
                "call",
                NAME,
                ROOT,
                "org.opdbus.NumaCache.Cache",
                "Put",
                "ssaya{sv}",
                "ttlns",
                key,
                "1",
                "120",
                "1",
                "ttl_seconds",
                "t",
                "5",
            ]),
            "Put with a five-second TTL",
        );
    }
    // The puts are announced (coalesced: within a second, well before the entries expire four
    // to five seconds after their puts), then, with no call in between, their expiry.
    mon.wait_for(&["\"Entries\":{\"type\":\"t\",\"data\":3}"]);
    let text = mon.wait_for(&["\"Entries\":{\"type\":\"t\",\"data\":0}"]);
    let msgs = messages(&text);
    let up = msgs
        .iter()
        .position(|m| entries_signalled(m).is_some_and(|(e, _)| e == 3))
        .unwrap_or_else(|| panic!("no Entries=3:\n{text}"));
    let down = msgs
        .iter()
        .position(|m| entries_signalled(m).is_some_and(|(e, _)| e == 0))
        .unwrap_or_else(|| panic!("no Entries=0:\n{text}"));
    assert!(up < down, "Entries went 3 then 0:\n{text}");
    // The monitor shows calls to the daemon (the three puts, before the first signal)...
    let is_call = |m: &&serde_json::Value| {
        m["type"] == "method_call" && m["destination"] != "org.freedesktop.DBus"
    };
    assert_eq!(
        msgs[..down]
            .iter()
            .filter(is_call)
            .filter(|m| m["member"] == "Put")
            .count(),
        3,
        "the monitor shows the puts:\n{text}"
    );
    // ...and between the two signals nobody called it: the change came from the engine itself.
    let calls: Vec<&serde_json::Value> = msgs[up..down].iter().filter(is_call).collect();
    assert!(
        calls.is_empty(),
        "calls reached the daemon between the puts' signal and the expiry's: {calls:?}"
    );
    // The same signal counts the expired entries as evictions.
    assert_eq!(
        entries_signalled(&msgs[down]).and_then(|(_, ev)| ev),
        Some(3),
        "the expiry's PropertiesChanged carries Evictions=3: {}\n{}",
        msgs[down],
        daemon.log()
    );
}

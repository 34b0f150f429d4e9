//! numacachectl against a real daemon: JSON for scripts, tables for people, D-Bus errors as
//! sentences with a non-zero exit status, values through stdin/stdout, and `topology`
//! falling back to reading the machine when no daemon answers.

mod dbus;
mod support;

use dbus::{Bus, Daemon, ok};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn ctl(bus: &Bus, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_numacachectl"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("numacachectl");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn json(out: &Output, what: &str) -> serde_json::Value {
    serde_json::from_str(&ok(out, what))
        .unwrap_or_else(|e| panic!("{what} --json is not JSON: {e}"))
}

#[test]
fn numacachectl_speaks_to_people_and_scripts() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    // No daemon yet: bus commands say so in a sentence; topology reads the machine itself.
    let o = ctl(&bus, &["stats"], None);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("numa-cached is not running"), "{err}");
    let local = json(
        &ctl(&bus, &["topology", "--json"], None),
        "topology without a daemon",
    );
    assert!(local["nodes"].is_array(), "{local}");

    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let t = json(&ctl(&bus, &["topology", "--json"], None), "topology");
    // MemTotal can move between two reads (balloons), so compare what cannot.
    for f in ["node_id", "cpu_list", "distances", "has_cpu", "has_memory"] {
        let pick = |v: &serde_json::Value| {
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n[f].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pick(&t),
            pick(&local),
            "the daemon and a local read disagree on {f}"
        );
    }
    let table = ok(&ctl(&bus, &["topology"], None), "topology table");
    assert!(
        table.starts_with("NUMA: ") && table.contains("\ndistances:"),
        "{table}"
    );

    let value: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let put = ok(
        &ctl(&bus, &["put", "ctl", "bin", "--ttl", "600"], Some(&value)),
        "put from stdin",
    );
    assert!(put.contains("stored 10000 bytes"), "{put}");
    let got = ctl(&bus, &["get", "ctl", "bin"], None);
    assert!(got.status.success());
    assert_eq!(
        got.stdout, value,
        "get must write the exact bytes to stdout"
    );
    let info = json(
        &ctl(&bus, &["lookup", "ctl", "bin", "--json"], None),
        "lookup",
    );
    assert_eq!(info["size"], 10_000);
    assert!(
        info["expires"].as_u64().unwrap() > 0,
        "a TTL was given: {info}"
    );

    let s = json(
        &ctl(&bus, &["strategy", "set", "round_robin", "--json"], None),
        "strategy set",
    );
    assert_eq!(s["status"], "applied");
    let s = json(&ctl(&bus, &["strategy", "--json"], None), "strategy");
    assert_eq!(s["strategy"], "round_robin");
    let o = json(
        &ctl(&bus, &["optimize", "balanced", "--json"], None),
        "optimize",
    );
    assert_eq!(o["status"], "optimized");
    let stats = json(&ctl(&bus, &["stats", "--json"], None), "stats");
    assert!(
        stats["node_distribution"].is_object() && stats["numa_benefits"].is_object(),
        "{stats}"
    );
    let table = ok(&ctl(&bus, &["stats"], None), "stats table");
    assert!(
        table.starts_with("NODE") && table.contains("HIT_RATE"),
        "{table}"
    );
    let snap = ok(&ctl(&bus, &["snapshot", "create"], None), "snapshot create");
    let list = ok(&ctl(&bus, &["snapshot", "list"], None), "snapshot list");
    assert!(list.contains(snap.trim()), "{list}");
    ok(
        &ctl(&bus, &["snapshot", "delete", snap.trim()], None),
        "snapshot delete",
    );

    // Errors: a sentence on stderr, exit status 1.
    for (args, want) in [
        (vec!["get", "ctl", "missing"], "not found: "),
        (vec!["strategy", "set", "fastest"], "invalid argument: "),
        (vec!["put", "Bad NS", "k"], "invalid argument: "),
    ] {
        let o = ctl(&bus, &args, Some(b"x"));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("numacachectl: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("MethodError"),
            "errors are sentences, not debug dumps: {err}"
        );
    }
    let d = ok(&ctl(&bus, &["delete", "ctl", "bin"], None), "delete");
    assert_eq!(d, "deleted\n");
    let c = ok(&ctl(&bus, &["clear", "ctl"], None), "clear");
    assert!(c.starts_with("removed 0 entries"), "{c}");
}

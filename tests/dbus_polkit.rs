//! Authorization with a real polkitd: an unprivileged caller (`runuser -u nobody`) is
//! refused the admin methods with AccessDenied but may read topology and statistics; a
//! polkit rule granting the caller's group turns the same calls into successes; and a
//! namespace written by one user cannot be written by another non-root user.

mod dbus;
mod support;

use dbus::{Bus, Daemon, PolkitRule, TEST_USER, ok};
use std::process::Output;

const DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";

fn gdbus_as(bus: &Bus, user: &str, method: &str, args: &[&str]) -> Output {
    let a = dbus::gdbus_call_args(method, args);
    bus.as_user(user, "gdbus", &a)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn primary_group(user: &str) -> String {
    let out = std::process::Command::new("id")
        .args(["-gn", user])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn unprivileged_callers_are_refused_until_a_rule_grants_their_group() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let admin_calls: [(&str, Vec<&str>); 3] = [
        (
            "org.opdbus.NumaCache.Strategy.SetStrategy",
            vec!["round_robin", "-1"],
        ),
        (
            "org.opdbus.NumaCache.Strategy.Optimize",
            vec!["balanced", "-1", ""],
        ),
        ("org.opdbus.NumaCache.CacheStats.ResetCounters", vec![]),
    ];
    for (m, a) in &admin_calls {
        let o = gdbus_as(&bus, "nobody", m, a);
        assert!(
            !o.status.success() && text(&o).contains(DENIED),
            "{m} as nobody must be AccessDenied: {}",
            text(&o)
        );
    }
    // BindProcess on a process of nobody's own is still an admin action.
    let me = std::process::id().to_string();
    let o = gdbus_as(
        &bus,
        "nobody",
        "org.opdbus.NumaCache.Strategy.BindProcess",
        &[&me, "0", "bind"],
    );
    assert!(text(&o).contains(DENIED), "{}", text(&o));
    // Reads work for anyone.
    let o = gdbus_as(
        &bus,
        "nobody",
        "org.opdbus.NumaCache.Topology.GetTopology",
        &[],
    );
    assert!(
        o.status.success() && text(&o).contains("node_id"),
        "{}",
        text(&o)
    );
    let o = gdbus_as(
        &bus,
        "nobody",
        "org.opdbus.NumaCache.CacheStats.GetStats",
        &[],
    );
    assert!(
        o.status.success() && text(&o).contains("node_distribution"),
        "{}",
        text(&o)
    );
    let o = gdbus_as(
        &bus,
        "nobody",
        "org.freedesktop.DBus.Properties.Get",
        &["org.opdbus.NumaCache.Strategy", "Name"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The data plane is closed to users outside group numacache by the bus policy.
    let o = gdbus_as(
        &bus,
        "nobody",
        "org.opdbus.NumaCache.Cache.Get",
        &["ns", "k"],
    );
    assert!(text(&o).contains(DENIED), "{}", text(&o));
    // numacache-test may use the data plane but not Clear, until a rule grants it.
    let o = gdbus_as(
        &bus,
        TEST_USER,
        "org.opdbus.NumaCache.Cache.Clear",
        &["testns"],
    );
    assert!(text(&o).contains(DENIED), "{}", text(&o));

    let nobody_group = primary_group("nobody");
    let _rule = PolkitRule::install(&[&nobody_group, "numacache"]);
    // polkitd notices new rules through inotify; wait until it applies this one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let o = gdbus_as(&bus, "nobody", admin_calls[0].0, &admin_calls[0].1);
        if o.status.success() {
            assert!(text(&o).contains("applied"), "{}", text(&o));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "polkitd never applied the rule: {}\n{}",
            text(&o),
            bus.polkit_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (m, a) in &admin_calls[1..] {
        let o = gdbus_as(&bus, "nobody", m, a);
        assert!(
            o.status.success(),
            "{m} as nobody with the rule: {}",
            text(&o)
        );
    }
    let o = gdbus_as(
        &bus,
        TEST_USER,
        "org.opdbus.NumaCache.Cache.Clear",
        &["testns"],
    );
    assert!(
        o.status.success(),
        "Clear as {TEST_USER} with the rule: {}",
        text(&o)
    );
}

#[test]
fn a_namespace_belongs_to_the_user_who_first_wrote_it() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    ok(&bus.busctl_put("rootns", "k", &[1, 2]), "root Put");
    let put = |ns: &str| {
        gdbus_as(
            &bus,
            TEST_USER,
            "org.opdbus.NumaCache.Cache.Put",
            &[ns, "k", "[byte 7]", "@a{sv} {}"],
        )
    };
    let o = put("rootns");
    assert!(
        !o.status.success() && text(&o).contains(DENIED),
        "write into root's namespace: {}",
        text(&o)
    );
    let o = gdbus_as(
        &bus,
        TEST_USER,
        "org.opdbus.NumaCache.Cache.Delete",
        &["rootns", "k"],
    );
    assert!(
        text(&o).contains(DENIED),
        "delete in root's namespace: {}",
        text(&o)
    );
    // Reading another user's namespace is allowed.
    let o = gdbus_as(
        &bus,
        TEST_USER,
        "org.opdbus.NumaCache.Cache.Get",
        &["rootns", "k"],
    );
    assert!(
        o.status.success() && text(&o).contains("[byte 0x01, 0x02]"),
        "{}",
        text(&o)
    );
    // Its own namespace works, and root may write anywhere.
    let o = put("testns");
    assert!(o.status.success(), "{}", text(&o));
    ok(
        &bus.busctl_put("testns", "k2", &[9]),
        "root Put into testns",
    );
}

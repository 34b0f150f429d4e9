//! Claims of README.md and ARCHITECTURE.md that had no test, each judged through the bus by
//! its effect, with a real dbus-daemon and a real polkitd:
//!
//! - polkit denies the snapshot and Clear methods to a member of `numacache` (the bus lets
//!   it reach the Cache interface; polkit, which is running, says no), and nothing changed;
//! - a polkit answer that needs authentication is `InteractiveAuthorizationRequired` for a
//!   caller that did not allow interaction, and nothing changed;
//! - denied Strategy and CacheStats calls leave the strategy, the counters and the target
//!   process's CPUs as they were;
//! - the Optimize rows `io_intensive` and `balanced` (and the other two) as the table says;
//! - only root may own the bus name;
//! - without NUMA the cache works and the log says so once; without CAP_SYS_NICE it works
//!   and moving another user's process names the capability.

mod dbus;
mod support;

use dbus::{Bus, Daemon, NAME, PolkitRule, ROOT, TEST_USER, ok};
use std::process::Output;
use std::time::{Duration, Instant};

const DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const INTERACTIVE: &str = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired";
const STRAT: &str = "org.opdbus.NumaCache.Strategy";
const STATS: &str = "org.opdbus.NumaCache.CacheStats";
const CACHE: &str = "org.opdbus.NumaCache.Cache";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn gdbus_as(bus: &Bus, user: &str, method: &str, args: &[&str]) -> Output {
    bus.as_user(user, "gdbus", &dbus::gdbus_call_args(method, args))
}

fn prop(bus: &Bus, iface: &str, name: &str) -> String {
    ok(
        &bus.busctl(&["get-property", NAME, ROOT, iface, name]),
        name,
    )
    .trim()
    .to_string()
}

fn snapshots(bus: &Bus) -> String {
    ok(
        &bus.busctl(&["call", NAME, ROOT, CACHE, "ListSnapshots"]),
        "ListSnapshots as root",
    )
    .trim()
    .to_string()
}

/// polkit rules are global (/etc/polkit-1/rules.d): the test that installs one and the tests
/// that expect the default answer run one at a time.
static POLKIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn polkit_lock() -> std::sync::MutexGuard<'static, ()> {
    POLKIT.lock().unwrap_or_else(|p| p.into_inner())
}

fn start() -> Option<(Bus, Daemon)> {
    if !dbus::prerequisites() {
        return None;
    }
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    Some((bus, daemon))
}

/// The denial came from polkit (running, and asked), not from the bus policy or an
/// unreachable polkit.
fn assert_polkit_denied(bus: &Bus, o: &Output, what: &str, action: &str) {
    let t = text(o);
    assert!(!o.status.success(), "{what} succeeded: {t}");
    assert!(t.contains(DENIED), "{what}: {t}");
    assert!(
        t.contains(action) && t.contains("polkit refused it"),
        "{what}: the daemon must say polkit denied {action}: {t}"
    );
    assert!(
        bus.has_owner("org.freedesktop.PolicyKit1"),
        "polkitd must still be running"
    );
}

#[test]
fn polkit_denies_the_snapshot_methods_and_nothing_changes() {
    let _polkit = polkit_lock();
    let Some((bus, mut daemon)) = start() else {
        return;
    };
    ok(&bus.busctl_put("keepme", "k", &[1, 2, 3]), "Put as root");
    let snap = ok(
        &bus.busctl(&["call", NAME, ROOT, CACHE, "CreateSnapshot"]),
        "CreateSnapshot as root",
    );
    let name = snap
        .trim()
        .strip_prefix("s ")
        .unwrap()
        .trim_matches('"')
        .to_string();
    let before = snapshots(&bus);
    assert!(before.contains(&name), "{before}");
    let snap_dir = daemon.state.join("snapshots");
    let dirs = |p: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let dirs_before = dirs(&snap_dir);

    let manage = "org.opdbus.NumaCache.manage-cache";
    let calls: [(&str, Vec<&str>); 4] = [
        ("org.opdbus.NumaCache.Cache.CreateSnapshot", vec![]),
        ("org.opdbus.NumaCache.Cache.ListSnapshots", vec![]),
        ("org.opdbus.NumaCache.Cache.DeleteSnapshot", vec![&name]),
        ("org.opdbus.NumaCache.Cache.Clear", vec!["keepme"]),
    ];
    for (m, a) in &calls {
        let o = gdbus_as(&bus, TEST_USER, m, a);
        assert_polkit_denied(&bus, &o, &format!("{m} as {TEST_USER}"), manage);
    }
    // Nothing changed: the same snapshots (over the bus and on disk), the entry still there.
    assert_eq!(snapshots(&bus), before);
    assert_eq!(dirs(&snap_dir), dirs_before);
    let got = ok(
        &bus.busctl(&["call", NAME, ROOT, CACHE, "Get", "ss", "keepme", "k"]),
        "Get after the denied Clear",
    );
    assert_eq!(got.trim(), "ay 3 1 2 3");
    assert!(daemon.alive(), "{}", daemon.log());
}

#[test]
fn denied_strategy_and_stats_calls_change_nothing() {
    let _polkit = polkit_lock();
    let Some((bus, _daemon)) = start() else {
        return;
    };
    ok(&bus.busctl_put("counted", "k", &[9]), "Put");
    ok(
        &bus.busctl(&["call", NAME, ROOT, CACHE, "Get", "ss", "counted", "k"]),
        "Get",
    );
    let name = prop(&bus, STRAT, "Name");
    let policy = prop(&bus, STRAT, "MemoryPolicy");
    let hits = prop(&bus, STATS, "Hits");
    assert_ne!(hits, "t 0");
    // A child of nobody's own, allowed on one CPU: BindProcess must not move it.
    let kid = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "taskset", "-c", "0", "sleep", "60"])
        .spawn()
        .unwrap();
    let kid_guard = KillOnDrop(kid);
    let pid = wait_for_sleep_child(kid_guard.0.id());
    let cpus_before = cpus_allowed(pid);
    let calls: [(&str, Vec<String>, &str); 4] = [
        (
            "org.opdbus.NumaCache.Strategy.SetStrategy",
            vec!["interleave".into(), "-1".into()],
            "org.opdbus.NumaCache.set-strategy",
        ),
        (
            "org.opdbus.NumaCache.Strategy.Optimize",
            vec!["cpu_intensive".into(), "-1".into(), "".into()],
            "org.opdbus.NumaCache.optimize",
        ),
        (
            "org.opdbus.NumaCache.Strategy.BindProcess",
            vec![pid.to_string(), "0".into(), "bind".into()],
            "org.opdbus.NumaCache.bind-process",
        ),
        (
            "org.opdbus.NumaCache.CacheStats.ResetCounters",
            vec![],
            "org.opdbus.NumaCache.manage-cache",
        ),
    ];
    for (m, a, action) in &calls {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = gdbus_as(&bus, "nobody", m, &a);
        assert_polkit_denied(&bus, &o, &format!("{m} as nobody"), action);
    }
    assert_eq!(prop(&bus, STRAT, "Name"), name);
    assert_eq!(prop(&bus, STRAT, "MemoryPolicy"), policy);
    assert_eq!(prop(&bus, STATS, "Hits"), hits);
    assert_eq!(
        cpus_allowed(pid),
        cpus_before,
        "the denied BindProcess moved {pid}"
    );
}

/// A rule answering AUTH_ADMIN for `nobody`: a call that does not allow interactive
/// authorization (gdbus's default) gets InteractiveAuthorizationRequired, and the strategy
/// stays as it was.
#[test]
fn a_challenge_is_interactive_authorization_required() {
    let _polkit = polkit_lock();
    let Some((bus, _daemon)) = start() else {
        return;
    };
    let name = prop(&bus, STRAT, "Name");
    let _rule = PolkitRule::install_js("challenge", "subject.user == \"nobody\"", "AUTH_ADMIN");
    let method = "org.opdbus.NumaCache.Strategy.SetStrategy";
    let args = ["round_robin", "-1"];
    // polkitd reads new rules through inotify: wait until this one applies.
    let deadline = Instant::now() + Duration::from_secs(20);
    let t = loop {
        let t = text(&gdbus_as(&bus, "nobody", method, &args));
        if t.contains(INTERACTIVE) {
            break t;
        }
        assert!(t.contains(DENIED), "before the rule applies: {t}");
        assert!(
            Instant::now() < deadline,
            "polkitd never applied the AUTH_ADMIN rule: {t}\n{}",
            bus.polkit_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        t.contains("org.opdbus.NumaCache.set-strategy") && t.contains("interactive"),
        "the error must say what to do: {t}"
    );
    assert_eq!(
        prop(&bus, STRAT, "Name"),
        name,
        "a challenged call changed the strategy"
    );
}

/// The Optimize table (src/placement/bind.rs, README): each workload's strategy and memory
/// policy, in the reply and in the Strategy properties afterwards.
#[test]
fn optimize_rows_follow_the_table() {
    let Some((bus, _daemon)) = start() else {
        return;
    };
    let rows = [
        ("io_intensive", "most_memory", "preferred"),
        ("balanced", "local_node", "preferred"),
        ("cpu_intensive", "local_node", "bind"),
        ("memory_intensive", "interleave", "interleaved"),
        ("io_intensive", "most_memory", "preferred"),
    ];
    for (workload, strategy, policy) in rows {
        let out = ok(
            &bus.busctl(&[
                "--json=short",
                "call",
                NAME,
                ROOT,
                STRAT,
                "Optimize",
                "sis",
                workload,
                "--",
                "-1",
                "",
            ]),
            workload,
        );
        let r = dbus::busctl_json_dict(&out);
        assert_eq!(r["status"], "optimized", "{workload}: {r:?}");
        assert_eq!(r["workload_type"], workload, "{r:?}");
        assert_eq!(r["strategy"], strategy, "{workload}: {r:?}");
        assert_eq!(r["memory_policy"], policy, "{workload}: {r:?}");
        assert_eq!(prop(&bus, STRAT, "Name"), format!("s \"{strategy}\""));
        assert_eq!(prop(&bus, STRAT, "MemoryPolicy"), format!("s \"{policy}\""));
        assert_eq!(
            prop(&bus, STRAT, "WorkloadType"),
            format!("s \"{workload}\"")
        );
    }
    // A given memory policy overrides the row's.
    let out = ok(
        &bus.busctl(&[
            "--json=short",
            "call",
            NAME,
            ROOT,
            STRAT,
            "Optimize",
            "sis",
            "balanced",
            "--",
            "-1",
            "bind",
        ]),
        "balanced with bind",
    );
    let r = dbus::busctl_json_dict(&out);
    assert_eq!(
        (&r["strategy"], &r["memory_policy"]),
        (&"local_node".into(), &"bind".into())
    );
}

/// The bus policy lets only root own org.opdbus.NumaCache: another user asking for the name
/// (as numa-cached would) is refused by the bus.
#[test]
fn only_root_may_own_the_bus_name() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let request = [
        "call",
        "--system",
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.RequestName",
        "--",
        NAME,
        "4",
    ];
    for user in ["nobody", TEST_USER] {
        let o = bus.as_user(user, "gdbus", &request);
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains(DENIED),
            "{user} owning {NAME}: {t}"
        );
    }
    // Root may (1 = primary owner): the refusal above is the policy, not a broken call.
    let o = bus.gdbus(&request);
    assert!(
        o.status.success() && text(&o).contains("uint32 1"),
        "{}",
        text(&o)
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// runuser forks: the pid of the `sleep` under `parent` (or `parent` once it has exec'd).
fn wait_for_sleep_child(parent: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if comm(parent).trim() == "sleep" {
            return parent;
        }
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if comm(c).trim() == "sleep" {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no sleep under {parent}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// Log lines of `log` that contain any of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

/// A machine without NUMA information (a sysfs tree with no node directories): the daemon
/// starts, the cache works, and the log says so in one line (README: "falls back to plain
/// cache behaviour and says so once in the log").
#[test]
fn without_numa_the_cache_works_and_says_so_once() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let root = bus.dir().join("no-numa-root");
    for d in ["sys/devices/system/cpu", "proc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("sys/devices/system/cpu/online"), "0-1\n").unwrap();
    std::fs::write(root.join("proc/meminfo"), "MemTotal: 4194304 kB\n").unwrap();
    let fs_root = root.display().to_string();
    let mut daemon = Daemon::start_with(
        &bus,
        &bus.dir().join("state"),
        &[],
        &["--fs-root", &fs_root],
    );
    let numa = prop(&bus, "org.opdbus.NumaCache.Topology", "NumaAvailable");
    assert_eq!(numa, "b false");
    ok(&bus.busctl_put("plain", "k", &[4, 2]), "Put without NUMA");
    let got = ok(
        &bus.busctl(&["call", NAME, ROOT, CACHE, "Get", "ss", "plain", "k"]),
        "Get without NUMA",
    );
    assert_eq!(got.trim(), "ay 2 4 2");
    assert!(daemon.alive());
    let log = daemon.log();
    let said = lines_with(&log, &["NUMA information", "NUMA topology", "without NUMA"]);
    assert_eq!(
        said.len(),
        1,
        "the fallback must be said exactly once:\n{log}"
    );
}

/// Without CAP_SYS_NICE (dropped from every set by setpriv before exec) the daemon starts and
/// serves the cache; moving another user's process is refused with an error naming the
/// capability, and the log says so exactly once.
#[test]
fn without_cap_sys_nice_the_cache_works_and_binding_others_names_the_capability() {
    if !dbus::prerequisites() || !support::require_tool("setpriv", "util-linux") {
        return;
    }
    let bus = Bus::start();
    let state = bus.dir().join("state");
    let log_path = bus.dir().join("nocap.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut kid = std::process::Command::new("setpriv")
        .args(["--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "--"])
        .arg(env!("CARGO_BIN_EXE_numa-cached"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("OPDBUS_CACHE_DIR", &state)
        .env_remove("NOTIFY_SOCKET")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let pid = kid.id();
    dbus::wait_for(
        || bus.has_owner(NAME),
        "numa-cached without CAP_SYS_NICE to own its name",
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    assert_eq!(
        eff & (1 << 23),
        0,
        "CAP_SYS_NICE (23) must be gone: {eff:#x}"
    );
    ok(
        &bus.busctl_put("nocap", "k", &[5]),
        "Put without CAP_SYS_NICE",
    );
    let got = ok(
        &bus.busctl(&["call", NAME, ROOT, CACHE, "Get", "ss", "nocap", "k"]),
        "Get",
    );
    assert_eq!(got.trim(), "ay 1 5");
    let other = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "sleep", "60"])
        .spawn()
        .unwrap();
    let other = KillOnDrop(other);
    let target = wait_for_sleep_child(other.0.id());
    let o = bus.gdbus(&dbus::gdbus_call_args(
        "org.opdbus.NumaCache.Strategy.BindProcess",
        &[&target.to_string(), "0", "bind"],
    ));
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("CAP_SYS_NICE"),
        "BindProcess of nobody's process: {t}"
    );
    let _ = kid.kill();
    let _ = kid.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    // Said exactly once: the refused call's audit line names the capability. Pinning the
    // daemon's own workers needs no CAP_SYS_NICE, so nothing else here is about it.
    let named = lines_with(&log, &["CAP_SYS_NICE"]);
    assert_eq!(
        named.len(),
        1,
        "lines naming CAP_SYS_NICE (one: the refused BindProcess):\n{log}"
    );
    assert!(
        named[0].contains("bind-process failed") && named[0].contains(&target.to_string()),
        "the line naming CAP_SYS_NICE is not the refusal of pid {target}: {}",
        named[0]
    );
    // A worker placement that does fail here is said once, not once per worker.
    for cause in ["is not possible here", "failed ("] {
        let n = lines_with(&log, &[cause]).len();
        assert!(n <= 1, "`{cause}` logged {n} times:\n{log}");
    }
}

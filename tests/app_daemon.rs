//! Service-level defects of issue 10, each seen through the bus or the daemon's own output:
//! a second instance (on the bus, or on the same state directory) stops naming the first
//! instead of taking over; SIGTERM records a clean stop; a node preference this machine lacks
//! stops start-up like SetStrategy refuses it; the contract's error names for a missing
//! snapshot and an inverted history range; MemoryFreeBytes read when asked.

mod dbus;
mod support;

use dbus::{Bus, Daemon, NAME, ROOT, fails, ok, start_expecting_exit};
use numa_cache::topology::synthetic::{SyntheticMachine, SyntheticNode};

#[test]
fn a_second_instance_on_the_bus_stops_naming_the_first() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let mut first = Daemon::start(&bus, &bus.dir().join("a"), &[]);
    let (code, out) = start_expecting_exit(&bus, &bus.dir().join("b"), &[], &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("already served") && out.contains(&first.pid().to_string()),
        "the refusal names the running owner's pid {}:\n{out}",
        first.pid()
    );
    // The first one still owns the name and answers.
    let owner = ok(
        &bus.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionUnixProcessID",
            "s",
            NAME,
        ]),
        "GetConnectionUnixProcessID",
    );
    assert_eq!(owner.trim(), format!("u {}", first.pid()));
    assert!(first.alive());
    ok(
        &bus.busctl_put("ns", "k", b"abc"),
        "Put on the first daemon",
    );
}

#[test]
fn a_second_daemon_on_the_same_state_directory_stops_before_touching_it() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let other_bus = Bus::start_with(false);
    let state = bus.dir().join("state");
    let mut first = Daemon::start(&bus, &state, &[]);
    ok(&bus.busctl_put("ns", "k", b"abc"), "Put");
    let (code, out) = start_expecting_exit(&other_bus, &state, &[], &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("in use by another numa-cached") && out.contains(&state.display().to_string()),
        "{out}"
    );
    // It stopped before opening the cache: no recovery ran on the live store.
    assert!(
        !out.contains("cache open") && !out.contains("unclean"),
        "{out}"
    );
    assert!(first.alive());
    let got = ok(&bus.busctl_get("ns", "k"), "Get");
    assert_eq!(got.trim(), "ay 3 97 98 99");
}

#[test]
fn sigterm_records_a_clean_stop_so_the_next_start_does_not_check_the_cache() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let state = bus.dir().join("state");
    let daemon = Daemon::start(&bus, &state, &[]);
    ok(&bus.busctl_put("ns", "k", b"abc"), "Put");
    let before = daemon.log().len();
    assert_eq!(daemon.stop(), Some(0));
    let again = Daemon::start(&bus, &state, &[]);
    let got = ok(&bus.busctl_get("ns", "k"), "Get after the restart");
    assert_eq!(got.trim(), "ay 3 97 98 99");
    let log = again.log();
    let second_run = &log[before..];
    assert!(second_run.contains("cache closed cleanly"), "{second_run}");
    let restarted = &second_run[second_run.find("cache closed cleanly").unwrap_or(0)..];
    assert!(restarted.contains("cache open"), "{restarted}");
    assert!(
        !restarted.contains("unclean stop"),
        "a clean stop must not be checked like a crash:\n{restarted}"
    );
}

#[test]
fn a_node_preference_this_machine_lacks_stops_start_up() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let (code, out) = start_expecting_exit(
        &bus,
        &bus.dir().join("state"),
        &[("OPDBUS_NUMA_NODE_PREFERENCE", "99")],
        &[],
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("OPDBUS_NUMA_NODE_PREFERENCE") && out.contains("99 is not a NUMA node"),
        "{out}"
    );
    // The same value is what SetStrategy refuses at run time.
    let _d = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let err = fails(
        &bus.gdbus_call(
            "org.opdbus.NumaCache.Strategy.SetStrategy",
            &["local_node", "99"],
        ),
        "SetStrategy local_node 99",
    );
    assert!(
        err.contains("org.opdbus.NumaCache.Error.InvalidArgument"),
        "{err}"
    );
}

#[test]
fn missing_snapshots_and_inverted_history_ranges_get_the_contract_errors() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _d = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let err = fails(
        &bus.gdbus_call(
            "org.opdbus.NumaCache.Cache.DeleteSnapshot",
            &["20990101T000000Z"],
        ),
        "DeleteSnapshot of a missing snapshot",
    );
    assert!(err.contains("org.opdbus.NumaCache.Error.NotFound"), "{err}");
    let err = fails(
        &bus.gdbus_call(
            "org.opdbus.NumaCache.CacheStats.GetHistory",
            &["200", "100"],
        ),
        "GetHistory 200 100",
    );
    assert!(
        err.contains("org.opdbus.NumaCache.Error.InvalidArgument") && err.contains("since 200"),
        "{err}"
    );
    let rows = ok(
        &bus.gdbus_call("org.opdbus.NumaCache.CacheStats.GetHistory", &["0", "0"]),
        "GetHistory 0 0",
    );
    assert!(rows.contains('['), "{rows}");
    // Put option sync (b): accepted as a boolean, refused by name otherwise.
    let put = |opt: &[&str]| {
        let mut args = vec![
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Cache",
            "Put",
            "ssaya{sv}",
            "ns",
            "synced",
            "1",
            "9",
            "1",
            "sync",
        ];
        args.extend_from_slice(opt);
        bus.busctl(&args)
    };
    ok(&put(&["b", "true"]), "Put with sync true");
    let err = fails(&put(&["s", "yes"]), "Put with sync as a string");
    assert!(err.contains("option sync must be a boolean"), "{err}");
    assert_eq!(ok(&bus.busctl_get("ns", "synced"), "Get").trim(), "ay 1 9");
}

#[test]
fn memory_free_bytes_is_read_when_asked() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start_with(false);
    let root = bus.dir().join("sysroot");
    SyntheticMachine {
        nodes: vec![SyntheticNode {
            id: 0,
            cpus: vec![0],
            memory_kib: 1 << 20,
            distances: vec![10],
        }],
        cpuset: None,
    }
    .write(&root)
    .expect("write the synthetic tree");
    let _d = Daemon::start_with(
        &bus,
        &bus.dir().join("state"),
        &[("OPDBUS_NUMA_STRATEGY", "disabled")],
        &["--fs-root", &root.display().to_string()],
    );
    let meminfo = root.join("sys/devices/system/node/node0/meminfo");
    let set_free = |kib: u64| {
        std::fs::write(
            &meminfo,
            format!(
                "Node 0 MemTotal: {} kB\nNode 0 MemFree: {kib} kB\n",
                1 << 20
            ),
        )
        .expect("write meminfo")
    };
    let read = || {
        ok(
            &bus.busctl(&[
                "get-property",
                NAME,
                &format!("{ROOT}/node0"),
                "org.opdbus.NumaCache.Node",
                "MemoryFreeBytes",
            ]),
            "MemoryFreeBytes",
        )
        .trim()
        .to_string()
    };
    set_free(1000);
    assert_eq!(read(), "t 1024000");
    set_free(2000);
    assert_eq!(
        read(),
        "t 2048000",
        "the value is read when asked, not frozen"
    );
}

#[test]
fn a_missing_privilege_over_another_process_is_access_denied_naming_pid_and_capability() {
    if !(dbus::prerequisites() && support::require_tool("setpriv", "util-linux")) {
        return;
    }
    let bus = Bus::start();
    let log = bus.dir().join("unprivileged.log");
    let logf = std::fs::File::create(&log).expect("log file");
    // root, but without CAP_SYS_NICE: it may not move another user's process.
    let mut daemon = std::process::Command::new("setpriv")
        .args(["--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "--"])
        .arg(env!("CARGO_BIN_EXE_numa-cached"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("OPDBUS_CACHE_DIR", bus.dir().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(logf.try_clone().expect("log"))
        .stderr(logf)
        .spawn()
        .expect("setpriv numa-cached");
    let mut victim = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .expect("a process of nobody");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !bus.has_owner(NAME) {
        assert!(
            std::time::Instant::now() < deadline,
            "numa-cached did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = victim.id().to_string();
    let out = bus.gdbus_call(
        "org.opdbus.NumaCache.Strategy.BindProcess",
        &[&pid, "0", "bind"],
    );
    let _ = victim.kill();
    let _ = victim.wait();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let err = fails(&out, "BindProcess on nobody's process without CAP_SYS_NICE");
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied")
            && err.contains(&format!("process {pid}"))
            && err.contains("CAP_SYS_NICE"),
        "{err}"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("org.opdbus.NumaCache.bind-process failed for uid=0")
            && text.contains(&format!("process {pid}")),
        "the refusal is logged:\n{text}"
    );
}

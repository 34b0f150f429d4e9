//! The D-Bus API through tools we did not write: busctl and gdbus call every method and read
//! every property of a real numa-cached on a private system bus with a real polkitd; the
//! JSON replies carry the seed's fields; bad input gets the named error and the daemon stays
//! up; the installed introspection XML equals what the daemon serves.

mod dbus;
mod support;

use dbus::{Bus, Daemon, NAME, ROOT, busctl_json_dict, busctl_json_string, fails, ok};

const TOPO: &str = "org.opdbus.NumaCache.Topology";
const STRAT: &str = "org.opdbus.NumaCache.Strategy";
const STATS: &str = "org.opdbus.NumaCache.CacheStats";
const CACHE: &str = "org.opdbus.NumaCache.Cache";

fn call(bus: &Bus, iface: &str, method: &str, args: &[&str]) -> String {
    let mut a = vec!["--json=short", "call", NAME, ROOT, iface, method];
    a.extend_from_slice(args);
    ok(&bus.busctl(&a), &format!("busctl call {method}"))
}

/// gdbus prints the D-Bus error name ("GDBus.Error:NAME: message"); busctl only strerror.
fn gdbus_error(bus: &Bus, method: &str, args: &[&str]) -> String {
    let a = dbus::gdbus_call_args(method, args);
    fails(&bus.gdbus(&a), method)
}

fn start() -> Option<(Bus, Daemon)> {
    if !dbus::prerequisites() {
        return None;
    }
    let bus = Bus::start();
    let state = bus.dir().join("state");
    let daemon = Daemon::start(&bus, &state, &[]);
    Some((bus, daemon))
}

#[test]
fn busctl_and_gdbus_call_every_method_and_read_every_property() {
    let Some((bus, daemon)) = start() else { return };

    // Topology: the seed's fields plus ours.
    let topo = busctl_json_string(&call(&bus, TOPO, "GetTopology", &[]));
    for f in [
        "nodes",
        "total_memory_mb",
        "optimal_strategy",
        "allowed_nodes",
        "allowed_cpus",
        "numa_available",
        "warnings",
    ] {
        assert!(topo.get(f).is_some(), "GetTopology lacks {f}: {topo}");
    }
    let node0 = &topo["nodes"][0];
    for f in [
        "node_id",
        "cpu_count",
        "cpu_list",
        "memory_mb",
        "distances",
        "has_cpu",
        "has_memory",
        "allowed",
    ] {
        assert!(
            node0.get(f).is_some(),
            "GetTopology node lacks {f}: {node0}"
        );
    }
    let first_cpu = node0["cpu_list"][0].as_u64().unwrap().to_string();
    let out = call(&bus, TOPO, "NodeOfCpu", &["u", &first_cpu]);
    assert!(
        out.contains(&format!("[{}]", node0["node_id"])),
        "NodeOfCpu: {out}"
    );
    call(&bus, TOPO, "Refresh", &[]);

    // Strategy: SetStrategy and Optimize answer with the seed's fields.
    let r = busctl_json_dict(&call(
        &bus,
        STRAT,
        "SetStrategy",
        &["si", "round_robin", "--", "-1"],
    ));
    assert_eq!(r["status"], "applied");
    assert_eq!(r["strategy"], "round_robin");
    assert!(r.contains_key("affected_processes"), "{r:?}");
    let r = busctl_json_dict(&call(
        &bus,
        STRAT,
        "Optimize",
        &["sis", "memory_intensive", "--", "-1", ""],
    ));
    assert_eq!(r["status"], "optimized");
    for f in [
        "strategy",
        "affected_processes",
        "workload_type",
        "memory_policy",
    ] {
        assert!(r.contains_key(f), "Optimize lacks {f}: {r:?}");
    }
    let me = std::process::id().to_string();
    let node = node0["node_id"].as_u64().unwrap().to_string();
    let r = busctl_json_dict(&call(
        &bus,
        STRAT,
        "BindProcess",
        &["uis", &me, &node, "preferred"],
    ));
    assert_eq!(r["status"], "bound");
    assert_eq!(r["pid"].as_u64(), Some(std::process::id() as u64));

    // Cache: the data plane and its administration.
    let out = call(
        &bus,
        CACHE,
        "Put",
        &[
            "ssaya{sv}",
            "apitest",
            "k1",
            "5",
            "104",
            "101",
            "108",
            "108",
            "111",
            "1",
            "ttl_seconds",
            "t",
            "3600",
        ],
    );
    assert!(out.contains("\"type\":\"u\""), "Put: {out}");
    let out = call(&bus, CACHE, "Get", &["ss", "apitest", "k1"]);
    assert!(
        out.contains("[104,101,108,108,111]"),
        "Get must return the bytes put: {out}"
    );
    let out = call(&bus, CACHE, "GetFd", &["ss", "apitest", "k1"]);
    assert!(
        out.contains("\"type\":\"ht\"") && out.ends_with(",5]}\n") || out.contains(",5]"),
        "GetFd: {out}"
    );
    let info = busctl_json_dict(&call(&bus, CACHE, "Lookup", &["ss", "apitest", "k1"]));
    assert_eq!(info["size"].as_u64(), Some(5));
    for f in [
        "stored_size",
        "node",
        "created",
        "last_access",
        "hits",
        "expires",
    ] {
        assert!(info.contains_key(f), "Lookup lacks {f}: {info:?}");
    }
    // PutFd with a sealed memfd: busctl cannot seal, so numacachectl (which uses PutFd at
    // 1 MiB and more) does it; the bytes must come back.
    let big: Vec<u8> = (0..(1u32 << 20) + 17).map(|i| (i % 251) as u8).collect();
    let file = bus.dir().join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let ctl = env!("CARGO_BIN_EXE_numacachectl");
    let put = std::process::Command::new(ctl)
        .args(["put", "apitest", "big"])
        .arg(&file)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    ok(&put, "numacachectl put (PutFd)");
    let back = bus.dir().join("big.out");
    let get = std::process::Command::new(ctl)
        .args(["get", "apitest", "big", "-o"])
        .arg(&back)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    ok(&get, "numacachectl get (GetFd)");
    assert_eq!(
        std::fs::read(&back).unwrap(),
        big,
        "a value through PutFd/GetFd must come back byte for byte"
    );
    let out = call(&bus, CACHE, "Delete", &["ss", "apitest", "k1"]);
    assert!(out.contains("[true]"), "Delete of an existing entry: {out}");
    let snap = call(&bus, CACHE, "CreateSnapshot", &[]);
    let name: serde_json::Value = serde_json::from_str(snap.trim()).unwrap();
    let name = name["data"][0].as_str().unwrap().to_string();
    let list = call(&bus, CACHE, "ListSnapshots", &[]);
    assert!(
        list.contains(&name),
        "ListSnapshots {list} must hold {name}"
    );
    call(&bus, CACHE, "DeleteSnapshot", &["s", &name]);
    let out = call(&bus, CACHE, "Clear", &["s", "apitest"]);
    assert!(out.contains("\"type\":\"t\""), "Clear: {out}");

    // CacheStats.
    let stats = busctl_json_string(&call(&bus, STATS, "GetStats", &[]));
    assert!(stats["node_distribution"].is_object(), "{stats}");
    assert!(stats["numa_benefits"].is_object(), "{stats}");
    let (k, n) = stats["node_distribution"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert!(
        k.parse::<u32>().is_ok(),
        "node_distribution is keyed by node id: {k}"
    );
    for f in ["cache_entries", "memory_usage_mb", "hit_rate"] {
        assert!(n.get(f).is_some(), "node_distribution entry lacks {f}: {n}");
    }
    let hist = busctl_json_string(&call(&bus, STATS, "GetHistory", &["tt", "0", "0"]));
    assert!(hist.is_array(), "GetHistory: {hist}");
    call(&bus, STATS, "ResetCounters", &[]);

    // ObjectManager: one child per node.
    // (busctl's JSON mode cannot print the a{uu} Distances, so plain output here.)
    let managed = ok(
        &bus.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ]),
        "GetManagedObjects",
    );
    assert!(
        managed.contains(&format!("/org/opdbus/NumaCache/node{node}")),
        "{managed}"
    );

    // Every property of every interface, read with gdbus (GetAll) and busctl (each one).
    let xml = std::fs::read_to_string(dbus::repo().join("dbus/org.opdbus.NumaCache.xml")).unwrap();
    for iface in [TOPO, STRAT, STATS] {
        let out = ok(
            &bus.gdbus_call("org.freedesktop.DBus.Properties.GetAll", &[iface]),
            "gdbus GetAll",
        );
        for prop in properties_of(&xml, iface) {
            assert!(
                out.contains(&format!("'{prop}'")),
                "gdbus GetAll {iface} lacks {prop}: {out}"
            );
            ok(
                &bus.busctl(&["get-property", NAME, ROOT, iface, &prop]),
                &format!("busctl get-property {prop}"),
            );
        }
    }
    let node_path = format!("{ROOT}/node{node}");
    for prop in properties_of(&xml, "org.opdbus.NumaCache.Node") {
        let out = ok(
            &bus.busctl(&[
                "get-property",
                NAME,
                &node_path,
                "org.opdbus.NumaCache.Node",
                &prop,
            ]),
            &prop,
        );
        assert!(!out.trim().is_empty());
    }
    let out = ok(
        &bus.gdbus_call("org.opdbus.NumaCache.Topology.NodeOfCpu", &[&first_cpu]),
        "gdbus NodeOfCpu",
    );
    assert!(out.contains(&format!("uint32 {node}")), "{out}");
    let out = ok(
        &bus.gdbus_call("org.freedesktop.DBus.Peer.Ping", &[]),
        "gdbus Ping",
    );
    assert_eq!(out.trim(), "()");
    assert_eq!(
        daemon.stop(),
        Some(0),
        "SIGTERM must end numa-cached with status 0"
    );
}

/// Property names of `iface` in the introspection XML.
fn properties_of(xml: &str, iface: &str) -> Vec<String> {
    let start = xml
        .find(&format!("<interface name=\"{iface}\">"))
        .expect("interface in the XML");
    let end = start + xml[start..].find("</interface>").unwrap();
    xml[start..end]
        .split("<property name=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

/// The XML with whitespace collapsed, as one interface block per name. Comments inside an
/// interface are the members' doc comments and must match too.
fn interface_blocks(xml: &str) -> Vec<(String, String)> {
    let plain = xml.split_whitespace().collect::<Vec<_>>().join(" ");
    plain
        .split("<interface name=\"")
        .skip(1)
        .filter_map(|s| {
            let name = s.split('"').next()?.to_string();
            let body = s.split("</interface>").next()?.to_string();
            name.starts_with("org.opdbus.").then_some((name, body))
        })
        .collect()
}

#[test]
fn introspection_xml_matches_the_running_daemon() {
    let Some((bus, _daemon)) = start() else {
        return;
    };
    let file = std::fs::read_to_string(dbus::repo().join("dbus/org.opdbus.NumaCache.xml")).unwrap();
    // The first node's object (node ids may be sparse and need not start at 0).
    let ids = ok(
        &bus.busctl(&["get-property", NAME, ROOT, TOPO, "NodeIds"]),
        "NodeIds",
    );
    let first = ids
        .split_whitespace()
        .nth(2)
        .expect("at least one node")
        .to_string();
    let mut live = Vec::new();
    for path in [ROOT.to_string(), format!("{ROOT}/node{first}")] {
        let out = ok(
            &bus.busctl(&[
                "--json=short",
                "call",
                NAME,
                &path,
                "org.freedesktop.DBus.Introspectable",
                "Introspect",
            ]),
            "Introspect",
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        live.extend(interface_blocks(v["data"][0].as_str().unwrap()));
    }
    let mut want = interface_blocks(&file);
    // The root's introspection may embed its children: count each interface once.
    live.sort();
    live.dedup();
    want.sort();
    assert_eq!(want.len(), 5, "the XML must describe five interfaces");
    assert_eq!(
        live, want,
        "dbus/org.opdbus.NumaCache.xml differs from the daemon's introspection (members or doc comments): run tests/dbus/regen-xml.py against a running daemon"
    );
    // Every member carries a doc comment in the file.
    let members = file.matches("<method ").count()
        + file.matches("<property ").count()
        + file.matches("<signal ").count();
    let documented = file
        .split("-->")
        .skip(1)
        .filter(|s| {
            let t = s.trim_start();
            t.starts_with("<method ") || t.starts_with("<property ") || t.starts_with("<signal ")
        })
        .count();
    assert_eq!(
        documented, members,
        "every method, property and signal needs a doc comment"
    );
}

#[test]
fn bad_input_gets_the_named_error_and_the_daemon_stays_up() {
    let Some((bus, mut daemon)) = start() else {
        return;
    };
    let invalid = "org.opdbus.NumaCache.Error.InvalidArgument";
    let long_key = "k".repeat(2000);
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("org.opdbus.NumaCache.Cache.Get", vec!["ns", ""], invalid),
        (
            "org.opdbus.NumaCache.Cache.Get",
            vec!["ns", &long_key],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Cache.Get",
            vec!["Bad/NS", "k"],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Cache.Get",
            vec!["ns", "missing"],
            "org.opdbus.NumaCache.Error.NotFound",
        ),
        (
            "org.opdbus.NumaCache.Strategy.SetStrategy",
            vec!["fastest", "-1"],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Strategy.SetStrategy",
            vec!["local_node", "99"],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Strategy.Optimize",
            vec!["gaming", "-1", ""],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Strategy.BindProcess",
            vec!["4000000", "0", "bind"],
            "org.opdbus.NumaCache.Error.NotFound",
        ),
        (
            "org.opdbus.NumaCache.Strategy.BindProcess",
            vec!["1", "99", "bind"],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Topology.NodeOfCpu",
            vec!["100000"],
            invalid,
        ),
        (
            "org.opdbus.NumaCache.Cache.DeleteSnapshot",
            vec!["../etc"],
            invalid,
        ),
    ];
    for (method, args, want) in &cases {
        let err = gdbus_error(&bus, method, args);
        assert!(
            err.contains(want),
            "{method} {args:?}: expected {want}, got {err}"
        );
        assert!(
            err.len() > want.len() + 20,
            "{method}: the error must explain itself: {err}"
        );
    }
    // An unsealed fd (busctl cannot pass fds, so a zbus client sends a plain file's).
    let plain = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut &plain, b"not sealed").unwrap();
    let err = put_fd(&bus.address, &plain);
    assert!(err.contains(invalid) && err.contains("not sealed"), "{err}");
    // A value over the limit (256 MiB): a sealed sparse memfd costs no memory to send.
    let err = put_fd_sparse(&bus.address, (256 << 20) + 1);
    assert!(err.contains("org.opdbus.NumaCache.Error.TooLarge"), "{err}");
    assert!(
        daemon.alive(),
        "numa-cached must survive bad input:\n{}",
        daemon.log()
    );
    ok(
        &bus.busctl(&["call", NAME, ROOT, TOPO, "GetTopology"]),
        "GetTopology after bad input",
    );
}

/// PutFd of a sealed memfd of `size` bytes that were never written (sparse); the error text.
fn put_fd_sparse(address: &str, size: u64) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: memfd_create with a literal name; the fd is owned right away.
    let raw = unsafe {
        libc::memfd_create(
            c"sparse".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(raw >= 0);
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let file = std::fs::File::from(fd);
    file.set_len(size).unwrap();
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: F_ADD_SEALS on our own descriptor.
    assert_eq!(
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::F_ADD_SEALS,
                seals,
            )
        },
        0
    );
    put_fd(address, &file)
}

/// PutFd of `file` from a zbus client; the error (name and message) as text.
fn put_fd(address: &str, file: &std::fs::File) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .unwrap();
        let opts: std::collections::HashMap<&str, zbus::Variant<'_>> = Default::default();
        let r = conn
            .call_method(
                Some(NAME),
                ROOT,
                Some(CACHE),
                "PutFd",
                &("ns", "huge", zbus::Fd::from(file), opts),
            )
            .await;
        match r {
            Ok(_) => "unexpected success".to_string(),
            Err(e) => format!("{e:?}"),
        }
    })
}

//! The D-Bus API through tools we did not write: busctl and gdbus call every method and read
//! every property of a real numa-cached on a private system bus with a real polkitd; each
//! call is judged by its effect (bytes read back, an fd read and its seals tried, a child's
//! threads' CPUs as /proc shows them, counters reset, history rows returned, node properties
//! equal to the kernel's files); bad input gets the named error and the daemon stays up; the
//! daemon serves exactly the members ARCHITECTURE.md lists, and the installed introspection
//! XML equals what it serves.

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
    // Each node as the kernel describes it.
    for n in topo["nodes"].as_array().unwrap() {
        let id = n["node_id"].as_u64().unwrap() as u32;
        assert_eq!(
            ids_of(&n["cpu_list"]),
            sysfs_cpus(id),
            "GetTopology CPUs of node {id}"
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
    // BindProcess: a child started on one CPU only ends with every thread allowed exactly
    // the node's CPUs, as /proc/PID/task/*/status says.
    let node = node0["node_id"].as_u64().unwrap().to_string();
    let node_cpus = ids_of(&node0["cpu_list"]);
    let (mut kid, kid_pid) = child_on_one_cpu(*node_cpus.last().unwrap());
    let before = task_cpus(kid_pid);
    let r = busctl_json_dict(&call(
        &bus,
        STRAT,
        "BindProcess",
        &["uis", &kid_pid.to_string(), &node, "preferred"],
    ));
    let after = task_cpus(kid_pid);
    let _ = kid.kill();
    let _ = kid.wait();
    assert_eq!(r["status"], "bound");
    assert_eq!(r["pid"].as_u64(), Some(u64::from(kid_pid)));
    assert!(
        node_cpus.len() == 1 || before.iter().all(|c| c.len() == 1),
        "the child should start on one CPU: {before:?}"
    );
    assert!(!after.is_empty());
    for cpus in &after {
        assert_eq!(
            cpus, &node_cpus,
            "after BindProcess every thread of {kid_pid} must be allowed node {node}'s CPUs (before: {before:?})"
        );
    }

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
    let put_node: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let put_node = put_node["data"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("Put must answer the node: {out}"));
    let node_ids: Vec<u64> = topo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_u64())
        .collect();
    assert!(
        node_ids.contains(&put_node),
        "Put answered node {put_node}, not one of {node_ids:?}"
    );
    let out = call(&bus, CACHE, "Get", &["ss", "apitest", "k1"]);
    assert!(
        out.contains("[104,101,108,108,111]"),
        "Get must return the bytes put: {out}"
    );
    // GetFd: the fd received over the bus holds the bytes and every seal, which the kernel
    // enforces: write, grow, shrink and adding seals are refused.
    let (file, size) = get_fd(&bus.address, "apitest", "k1");
    assert_eq!(size, 5);
    assert_sealed(&file, b"hello");
    let info = busctl_json_dict(&call(&bus, CACHE, "Lookup", &["ss", "apitest", "k1"]));
    assert_eq!(info["size"].as_u64(), Some(5));
    assert_eq!(
        info["node"].as_u64(),
        Some(put_node),
        "Lookup node vs Put: {info:?}"
    );
    assert!(info["stored_size"].as_u64().unwrap() >= 5, "{info:?}");
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
    // Clear answers how many entries it removed (only "big" is left) and they are gone.
    ok(&bus.busctl_put("apitest", "k2", &[2]), "Put k2");
    ok(&bus.busctl_put("otherns", "k3", &[3]), "Put k3");
    let out = call(&bus, CACHE, "Clear", &["s", "apitest"]);
    assert_eq!(out.trim(), r#"{"type":"t","data":[2]}"#, "Clear: {out}");
    for key in ["big", "k2"] {
        let err = gdbus_error(&bus, "org.opdbus.NumaCache.Cache.Get", &["apitest", key]);
        assert!(err.contains("Error.NotFound"), "{key} after Clear: {err}");
    }
    let out = call(&bus, CACHE, "Get", &["ss", "otherns", "k3"]);
    assert!(
        out.contains("[3]"),
        "Clear must leave other namespaces: {out}"
    );

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
    // ResetCounters: hits and misses were counted, and are zero after it.
    let _ = gdbus_error(
        &bus,
        "org.opdbus.NumaCache.Cache.Get",
        &["otherns", "missing"],
    );
    let counter = |name: &str| -> u64 {
        let out = ok(
            &bus.busctl(&["get-property", NAME, ROOT, STATS, name]),
            name,
        );
        out.trim()
            .strip_prefix("t ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {out}"))
    };
    assert!(
        counter("Hits") > 0 && counter("Misses") > 0,
        "before ResetCounters"
    );
    call(&bus, STATS, "ResetCounters", &[]);
    assert_eq!(
        (counter("Hits"), counter("Misses")),
        (0, 0),
        "after ResetCounters"
    );

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
    // Every node object's properties by value, against the kernel's files.
    let mut node_entries = 0;
    for &id in &node_ids {
        let id = id as u32;
        let node_path = format!("{ROOT}/node{id}");
        let prop = |p: &str| -> String {
            ok(
                &bus.busctl(&[
                    "get-property",
                    NAME,
                    &node_path,
                    "org.opdbus.NumaCache.Node",
                    p,
                ]),
                p,
            )
            .trim()
            .to_string()
        };
        for p in properties_of(&xml, "org.opdbus.NumaCache.Node") {
            assert!(!prop(&p).is_empty(), "{p}");
        }
        assert_eq!(prop("Id"), format!("u {id}"));
        let cpus = sysfs_cpus(id);
        let want_cpus: Vec<String> = std::iter::once(format!("au {}", cpus.len()))
            .chain(cpus.iter().map(u32::to_string))
            .collect();
        assert_eq!(prop("Cpus"), want_cpus.join(" "), "Cpus of node {id}");
        assert_eq!(prop("HasCpu"), format!("b {}", !cpus.is_empty()));
        let memtotal = sysfs_meminfo(id, "MemTotal");
        assert_eq!(prop("HasMemory"), format!("b {}", memtotal > 0));
        let total: u64 = prop("MemoryTotalBytes")
            .strip_prefix("t ")
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(
            total.abs_diff(memtotal) <= memtotal / 50,
            "MemoryTotalBytes {total} vs the kernel's MemTotal {memtotal} of node {id}"
        );
        // Distances a{uu}: "a{uu} N k v k v ...", the kernel's row of nodeN/distance.
        let dist = prop("Distances");
        let nums: Vec<u32> = dist
            .split_whitespace()
            .skip(2)
            .map(|x| x.parse().unwrap())
            .collect();
        let got: std::collections::BTreeMap<u32, u32> =
            nums.chunks(2).map(|kv| (kv[0], kv[1])).collect();
        assert_eq!(got, sysfs_distances(id), "Distances of node {id}: {dist}");
        node_entries += prop("CacheEntries")
            .strip_prefix("t ")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
    }
    // One entry is left (otherns/k3): the nodes' CacheEntries add up to it.
    assert_eq!(node_entries, 1, "CacheEntries over all node objects");
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

/// The ids in a JSON array.
fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// A CPU list such as `0-3,8` as ids.
fn parse_cpulist(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

fn sysfs_node(id: u32, file: &str) -> String {
    let p = format!("/sys/devices/system/node/node{id}/{file}");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The node's CPUs per the kernel.
fn sysfs_cpus(id: u32) -> Vec<u32> {
    parse_cpulist(&sysfs_node(id, "cpulist"))
}

/// One `nodeN/meminfo` counter in bytes.
fn sysfs_meminfo(id: u32, field: &str) -> u64 {
    sysfs_node(id, "meminfo")
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace().skip(2);
            (it.next()? == format!("{field}:")).then(|| it.next()?.parse::<u64>().ok())?
        })
        .unwrap_or_else(|| panic!("no {field} for node {id}"))
        * 1024
}

/// The kernel's distance row of node `id`, keyed by node id.
fn sysfs_distances(id: u32) -> std::collections::BTreeMap<u32, u32> {
    let online =
        parse_cpulist(&std::fs::read_to_string("/sys/devices/system/node/online").unwrap());
    let row: Vec<u32> = sysfs_node(id, "distance")
        .split_whitespace()
        .map(|d| d.parse().unwrap())
        .collect();
    online.into_iter().zip(row).collect()
}

/// `sleep 60`, allowed on `cpu` only (by taskset, a tool we did not write).
fn child_on_one_cpu(cpu: u32) -> (std::process::Child, u32) {
    let kid = std::process::Command::new("taskset")
        .args(["-c", &cpu.to_string(), "sleep", "60"])
        .spawn()
        .expect("taskset (util-linux)");
    let pid = kid.id();
    // taskset execs sleep in the same process: wait until it has.
    dbus::wait_for(
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"),
        "taskset to exec sleep",
    );
    (kid, pid)
}

/// Cpus_allowed_list of every thread of `pid`, from /proc.
fn task_cpus(pid: u32) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        out.push(parse_cpulist(list));
    }
    out
}

/// GetFd from a zbus client: the fd received over the bus, as a File, and the size.
fn get_fd(address: &str, ns: &str, key: &str) -> (std::fs::File, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .unwrap();
        let reply = conn
            .call_method(Some(NAME), ROOT, Some(CACHE), "GetFd", &(ns, key))
            .await
            .unwrap();
        let (fd, size): (zbus::OwnedFd, u64) = reply.body().deserialize().unwrap();
        (std::fs::File::from(std::os::fd::OwnedFd::from(fd)), size)
    })
}

/// `file` holds exactly `want`, carries F_SEAL_SEAL, WRITE, GROW and SHRINK, and the kernel
/// refuses a write, a grow, a shrink and a new seal.
fn assert_sealed(file: &std::fs::File, want: &[u8]) {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, want, "the bytes of the fd GetFd sent");
    // SAFETY: F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    let all = libc::F_SEAL_SEAL | libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
    assert_eq!(seals & all, all, "seals {seals:#x} of the GetFd memfd");
    assert!(
        f.write_all(b"x").is_err(),
        "a write to the sealed memfd succeeded"
    );
    assert!(
        file.set_len(want.len() as u64 + 4096).is_err(),
        "growing succeeded"
    );
    assert!(file.set_len(1).is_err(), "shrinking succeeded");
    // SAFETY: F_ADD_SEALS on a descriptor we own; F_SEAL_SEAL must refuse it.
    let added = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_FUTURE_WRITE,
        )
    };
    assert_eq!(added, -1, "adding a seal succeeded despite F_SEAL_SEAL");
    let mut again = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut again).unwrap();
    assert_eq!(again, want, "the memfd changed");
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

/// The first type of each comma-separated "type name" part: "s namespace, ay value" -> "say".
fn types_of(args: &str) -> String {
    args.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .filter_map(|p| p.split_whitespace().next())
        .collect()
}

/// The contract: every member ARCHITECTURE.md's "D-Bus API" section lists, by interface, as
/// "method Name(in) -> out", "property Name type", "signal Name(types)".
fn contract_members() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let doc = std::fs::read_to_string(dbus::repo().join("ARCHITECTURE.md")).unwrap();
    let api = doc
        .split("\n## D-Bus API")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("ARCHITECTURE.md has a D-Bus API section");
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for sub in api.split("\n### ").skip(1) {
        let iface = sub.split_whitespace().next().unwrap_or("");
        if !iface.starts_with("org.opdbus.NumaCache.") {
            continue;
        }
        let members = out.entry(iface.to_string()).or_default();
        let body = sub.split_once('\n').map(|b| b.1).unwrap_or("");
        // Bullets (a bullet's continuation lines are indented).
        for bullet in body.split("\n- ") {
            let text = bullet.split_whitespace().collect::<Vec<_>>().join(" ");
            let text = text.trim_start_matches("- ");
            let is_signal = text.starts_with("Signal");
            for (i, span) in text.split('`').enumerate() {
                if i % 2 == 0 || !span.starts_with(|c: char| c.is_ascii_uppercase()) {
                    continue;
                }
                if let Some((name, rest)) = span.split_once('(') {
                    let (args, ret) = rest.split_once(')').unwrap_or((rest, ""));
                    let ret = ret
                        .trim()
                        .strip_prefix("->")
                        .map(types_of)
                        .unwrap_or_default();
                    if is_signal {
                        members.insert(format!("signal {name}({})", types_of(args)));
                    } else {
                        members.insert(format!("method {name}({}) -> {ret}", types_of(args)));
                    }
                } else if !span.contains(['.', ' ']) {
                    // A property: "`Name` type".
                    let after = text.split(&format!("`{span}`")).nth(1).unwrap_or("");
                    let ty = after.split_whitespace().next().unwrap_or("");
                    let ty = ty.trim_end_matches([',', ';', ':', '.']);
                    if !ty.is_empty() && ty.chars().all(|c| "ybnqiuxtdhsogav{}()".contains(c)) {
                        members.insert(format!("property {span} {ty}"));
                    }
                }
            }
        }
    }
    out
}

/// The members the running daemon serves on `path`, in the same notation, from its
/// introspection XML.
fn live_members(
    bus: &Bus,
    path: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let out = ok(
        &bus.busctl(&[
            "--json=short",
            "call",
            NAME,
            path,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
        ]),
        "Introspect",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let xml = v["data"][0].as_str().unwrap().to_string();
    let attr = |tag: &str, name: &str| -> String {
        tag.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let mut res: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for block in xml.split("<interface name=\"").skip(1) {
        let iface = block.split('"').next().unwrap().to_string();
        if !iface.starts_with("org.opdbus.NumaCache.") {
            continue;
        }
        let block = block.split("</interface>").next().unwrap();
        let members = res.entry(iface).or_default();
        for (kind, rest) in block
            .match_indices('<')
            .map(|(i, _)| &block[i + 1..])
            .filter_map(|r| {
                ["method ", "property ", "signal "]
                    .into_iter()
                    .find(|k| r.starts_with(k))
                    .map(|k| (k.trim(), r))
            })
        {
            let head = rest.split('>').next().unwrap();
            let name = attr(head, "name");
            if kind == "property" {
                members.insert(format!("property {name} {}", attr(head, "type")));
                continue;
            }
            let body = rest.split(&format!("</{kind}>")).next().unwrap();
            let (mut ins, mut outs) = (String::new(), String::new());
            for arg in body.split("<arg ").skip(1) {
                let head = arg.split('>').next().unwrap();
                if attr(head, "direction") == "out" {
                    outs.push_str(&attr(head, "type"));
                } else {
                    ins.push_str(&attr(head, "type"));
                }
            }
            if kind == "signal" {
                members.insert(format!("signal {name}({ins})"));
            } else {
                members.insert(format!("method {name}({ins}) -> {outs}"));
            }
        }
    }
    res
}

/// The daemon serves exactly the members ARCHITECTURE.md lists (names and signatures), so
/// neither the daemon nor the contract can drift without this failing. The XML file is
/// generated from the daemon (tests/dbus/regen-xml.py), so it is no independent witness.
#[test]
fn the_daemon_serves_exactly_the_members_architecture_md_lists() {
    let Some((bus, _daemon)) = start() else {
        return;
    };
    let want = contract_members();
    assert_eq!(
        want.len(),
        5,
        "ARCHITECTURE.md describes five interfaces: {want:?}"
    );
    assert!(
        want.values().map(|m| m.len()).sum::<usize>() >= 50,
        "the contract parser found too few members: {want:#?}"
    );
    let ids = ok(
        &bus.busctl(&["get-property", NAME, ROOT, TOPO, "NodeIds"]),
        "NodeIds",
    );
    let first = ids.split_whitespace().nth(2).expect("a node").to_string();
    let mut live = live_members(&bus, ROOT);
    live.extend(live_members(&bus, &format!("{ROOT}/node{first}")));
    let mut problems = Vec::new();
    for (iface, members) in &want {
        let got = live.get(iface).cloned().unwrap_or_default();
        for m in members.difference(&got) {
            problems.push(format!(
                "{iface}: ARCHITECTURE.md lists `{m}`, the daemon lacks it"
            ));
        }
        for m in got.difference(members) {
            problems.push(format!(
                "{iface}: the daemon serves `{m}`, ARCHITECTURE.md does not list it"
            ));
        }
    }
    for iface in live.keys().filter(|i| !want.contains_key(*i)) {
        problems.push(format!(
            "the daemon serves {iface}, which ARCHITECTURE.md does not describe"
        ));
    }
    assert!(
        problems.is_empty(),
        "D-Bus contract drift:\n{}",
        problems.join("\n")
    );
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

/// GetHistory returns the `numa_cache_stats` rows in its range, and only those: rows are
/// written into the daemon's index while it is stopped (the daemon writes its own once a
/// minute, too slow to wait for), then asked for by range.
#[test]
fn get_history_returns_the_rows_in_its_range() {
    let Some((bus, daemon)) = start() else {
        return;
    };
    let state = daemon.state.clone();
    assert_eq!(daemon.stop(), Some(0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    {
        let conn = rusqlite::Connection::open(state.join("index.db")).unwrap();
        for (age, entries) in [(3000u64, 11i64), (2000, 22), (1000, 33)] {
            conn.execute(
                "INSERT INTO numa_cache_stats (node_id, timestamp, cache_entries, memory_usage_mb, hit_rate, unix_time,
                 logical_bytes, stored_bytes, memory_tier_bytes, hits, misses)
                 VALUES (0, ?1, ?2, 1, 0.5, ?3, 100, 50, 1048576, 7, 3)",
                rusqlite::params![format!("row-{age}"), entries, (now - age) as i64],
            )
            .unwrap();
        }
    }
    let _daemon = Daemon::start(&bus, &state, &[]);
    let history = |since: u64, until: u64| -> Vec<serde_json::Value> {
        let v = busctl_json_string(&call(
            &bus,
            STATS,
            "GetHistory",
            &["tt", &since.to_string(), &until.to_string()],
        ));
        v.as_array()
            .unwrap_or_else(|| panic!("GetHistory: {v}"))
            .iter()
            .filter(|r| r["unix_time"].as_u64().is_some_and(|t| t + 500 <= now))
            .cloned()
            .collect()
    };
    let one = history(now - 2500, now - 1500);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["cache_entries"], 22);
    assert_eq!(one[0]["unix_time"].as_u64(), Some(now - 2000));
    assert_eq!(one[0]["memory_tier_bytes"], 1048576);
    assert_eq!((&one[0]["hits"], &one[0]["misses"]), (&7.into(), &3.into()));
    // until 0 means now: the two younger rows, oldest first.
    let two: Vec<u64> = history(now - 2500, 0)
        .iter()
        .map(|r| r["cache_entries"].as_u64().unwrap())
        .collect();
    assert_eq!(two, vec![22, 33]);
    let err = gdbus_error(
        &bus,
        "org.opdbus.NumaCache.CacheStats.GetHistory",
        &["5", "1"],
    );
    assert!(err.contains("InvalidArgument"), "{err}");
}

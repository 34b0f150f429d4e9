//! Hotplug as a bus client sees it: the daemon watches a synthetic sysfs tree
//! (`--fs-root`); when a node appears there, `Refresh()` (and, tested on its own, the
//! periodic re-scan with no call at all) publishes
//! a new generation, the node's object appears under the ObjectManager (InterfacesAdded),
//! TopologyChanged and PropertiesChanged are emitted; when it goes, InterfacesRemoved.
//! A synthetic tree stands in for real hotplug here; the NUMA lab (tests/lab) does it for
//! real with a CPU offlined in a VM.

mod dbus;
mod support;

use dbus::{Bus, Daemon, Monitor, NAME, ROOT, ok};
use numa_cache::topology::synthetic::{SyntheticMachine, SyntheticNode};
use std::time::{Duration, Instant};

fn machine(nodes: &[(u32, u32)]) -> SyntheticMachine {
    let n = nodes.len();
    SyntheticMachine {
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, &(id, cpu))| SyntheticNode {
                id,
                cpus: vec![cpu],
                memory_kib: 1 << 20,
                distances: (0..n).map(|j| if i == j { 10 } else { 21 }).collect(),
            })
            .collect(),
        cpuset: None,
    }
}

fn wait_text(path: &std::path::Path, needles: &[&str]) -> String {
    wait_text_for(path, needles, Duration::from_secs(10))
}

fn wait_text_for(path: &std::path::Path, needles: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let t = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().all(|n| t.contains(n)) {
            return t;
        }
        assert!(Instant::now() < deadline, "never saw {needles:?}:\n{t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn node_objects_follow_hotplug() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let root = bus.dir().join("sysroot");
    machine(&[(0, 0)]).write(&root).unwrap();
    let fs_root = root.display().to_string();
    // `disabled`: the synthetic node 1 does not exist on this host, so nothing may be bound to it.
    let daemon = Daemon::start_with(
        &bus,
        &bus.dir().join("state"),
        &[("OPDBUS_NUMA_STRATEGY", "disabled")],
        &["--fs-root", &fs_root],
    );
    let ids = ok(
        &bus.busctl(&[
            "get-property",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Topology",
            "NodeIds",
        ]),
        "NodeIds",
    );
    assert_eq!(ids.trim(), "au 1 0");

    let mon_out = bus.dir().join("hotplug-monitor.txt");
    // Returns once gdbus has subscribed (no fixed sleep).
    let mon = Monitor::start(
        &bus,
        "gdbus",
        &["monitor", "--system", "--dest", NAME],
        "hotplug-monitor.txt",
    );

    // Node 1 comes online.
    machine(&[(0, 0), (1, 1)]).write(&root).unwrap();
    ok(
        &bus.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Topology",
            "Refresh",
        ]),
        "Refresh",
    );
    wait_text(
        &mon_out,
        &[
            "InterfacesAdded (objectpath '/org/opdbus/NumaCache/node1'",
            "org.opdbus.NumaCache.Topology.TopologyChanged (uint64 2, [uint32 0, 1])",
            "'NodeIds': <[uint32 0, 1]>",
        ],
    );
    let ids = ok(
        &bus.busctl(&[
            "get-property",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Topology",
            "NodeIds",
        ]),
        "NodeIds",
    );
    assert_eq!(ids.trim(), "au 2 0 1");
    let d = ok(
        &bus.busctl(&[
            "get-property",
            NAME,
            &format!("{ROOT}/node1"),
            "org.opdbus.NumaCache.Node",
            "Distances",
        ]),
        "node1 Distances",
    );
    assert!(d.contains("0 21") && d.contains("1 10"), "{d}");

    // And goes away again.
    std::fs::remove_dir_all(root.join("sys/devices/system/node/node1")).unwrap();
    machine(&[(0, 0)]).write(&root).unwrap();
    ok(
        &bus.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Topology",
            "Refresh",
        ]),
        "Refresh",
    );
    wait_text(
        &mon_out,
        &[
            "InterfacesRemoved (objectpath '/org/opdbus/NumaCache/node1'",
            "TopologyChanged (uint64 3, [uint32 0])",
        ],
    );
    let tree = ok(&bus.busctl(&["tree", NAME]), "busctl tree");
    assert!(!tree.contains("node1"), "{tree}");

    drop(mon);
    assert_eq!(
        daemon.stop(),
        Some(0),
        "numa-cached must stop cleanly after hotplug"
    );
}

/// Nobody calls Refresh(): the daemon's own periodic re-scan (every 30 s, the fallback when
/// no uevent arrives, as for a synthetic tree) publishes the new node by itself.
#[test]
fn the_periodic_rescan_publishes_a_new_node_without_refresh() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let root = bus.dir().join("sysroot");
    machine(&[(0, 0)]).write(&root).unwrap();
    let fs_root = root.display().to_string();
    let _daemon = Daemon::start_with(
        &bus,
        &bus.dir().join("state"),
        &[("OPDBUS_NUMA_STRATEGY", "disabled")],
        &["--fs-root", &fs_root],
    );
    let mon = Monitor::start(
        &bus,
        "gdbus",
        &["monitor", "--system", "--dest", NAME],
        "rescan-monitor.txt",
    );
    let started = Instant::now();
    machine(&[(0, 0), (1, 1)]).write(&root).unwrap();
    // The re-scan interval is 30 s; 45 s allows for a loaded machine.
    wait_text_for(
        &bus.dir().join("rescan-monitor.txt"),
        &[
            "InterfacesAdded (objectpath '/org/opdbus/NumaCache/node1'",
            "TopologyChanged (uint64 2, [uint32 0, 1])",
        ],
        Duration::from_secs(45),
    );
    drop(mon);
    eprintln!("the re-scan published node 1 after {:?}", started.elapsed());
    let ids = ok(
        &bus.busctl(&[
            "get-property",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Topology",
            "NodeIds",
        ]),
        "NodeIds",
    );
    assert_eq!(ids.trim(), "au 2 0 1");
}

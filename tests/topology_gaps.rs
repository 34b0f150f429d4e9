//! Two shapes of real machines that hwloc's test captures show and that detection once got
//! wrong, rebuilt as small trees with the same files:
//! - a cpuset mounted as cgroup v1 with `-o noprefix` (hwloc's `16em64t-4s2ca2c-cpusetreorder`
//!   capture: `proc/mounts` names the mount options, the cpuset folder has `cpus`/`mems`, not
//!   `cpuset.cpus`/`cpuset.mems`). The container's limits must apply.
//! - NVIDIA GPU memory exposed as NUMA nodes on POWER9 with NVLink (hwloc's
//!   `nvidiagpunumanodes`: `proc/driver/nvidia/gpus/<bus id>/numa_status` says `Node: N`).
//!   The nodes are listed with kind `gpu` and placement never picks them unless asked by number.
//!
//! Every expected value is written here from the tree's own files (what the kernel would
//! say), not computed by the code under test.

use numa_cache::placement::{Placer, Strategy, StrategyConfig};
use numa_cache::topology::{self, NodeKind, Topology};
use std::path::Path;
use std::sync::Arc;

/// Write `text` to `root/rel`, creating folders.
fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A node folder: its CPU list, its memory in MiB and its distance row.
fn node(root: &Path, id: u32, cpulist: &str, mem_mib: u64, distances: &str) {
    let dir = format!("sys/devices/system/node/node{id}");
    put(root, &format!("{dir}/cpulist"), &format!("{cpulist}\n"));
    let kib = mem_mib * 1024;
    put(
        root,
        &format!("{dir}/meminfo"),
        &format!(
            "Node {id} MemTotal:       {kib} kB\nNode {id} MemFree:        {} kB\nNode {id} MemUsed:        {} kB\n",
            kib / 2,
            kib / 2
        ),
    );
    put(root, &format!("{dir}/distance"), &format!("{distances}\n"));
}

fn cpus(root: &Path, online: &str, ids: std::ops::RangeInclusive<u32>) {
    put(
        root,
        "sys/devices/system/cpu/online",
        &format!("{online}\n"),
    );
    for c in ids {
        std::fs::create_dir_all(root.join(format!("sys/devices/system/cpu/cpu{c}"))).unwrap();
    }
}

/// Four sockets of four CPUs (node N has CPUs 4N..4N+3), like the 16-CPU capture.
fn four_nodes(root: &Path) {
    cpus(root, "0-15", 0..=15);
    put(root, "sys/devices/system/node/online", "0-3\n");
    let rows = ["10 20 20 20", "20 10 20 20", "20 20 10 20", "20 20 20 10"];
    for (id, row) in rows.iter().enumerate() {
        let id = id as u32;
        node(root, id, &format!("{}-{}", 4 * id, 4 * id + 3), 1024, row);
    }
    put(
        root,
        "proc/meminfo",
        "MemTotal: 4194304 kB\nMemFree: 2097152 kB\n",
    );
}

fn noprefix_tree(cgroup_file: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    four_nodes(root);
    put(
        root,
        "proc/mounts",
        "rootfs / rootfs rw 0 0\nproc /proc proc rw,relatime 0 0\n\
         cgroup /dev/cpuset cgroup rw,relatime,cpuset,noprefix,release_agent=/sbin/cpuset_release_agent 0 0\n",
    );
    if cgroup_file {
        put(root, "proc/self/cgroup", "3:cpuset:/prout\n");
    } else {
        put(root, "proc/self/cpuset", "/prout\n");
    }
    // The container: CPUs out of order across sockets, memory of nodes 1 and 2.
    put(root, "dev/cpuset/prout/cpus", "2,4-5,9,13\n");
    put(root, "dev/cpuset/prout/mems", "1-2\n");
    // The root cpuset allows everything: reading it instead would be the old bug.
    put(root, "dev/cpuset/cpus", "0-15\n");
    put(root, "dev/cpuset/mems", "0-3\n");
    dir
}

#[test]
fn a_noprefix_cgroup_v1_cpuset_limits_cpus_and_nodes() {
    for cgroup_file in [true, false] {
        let dir = noprefix_tree(cgroup_file);
        let t = topology::detect(dir.path());
        let how = if cgroup_file {
            "proc/self/cgroup"
        } else {
            "proc/self/cpuset"
        };
        assert_eq!(
            t.allowed_cpus,
            vec![2, 4, 5, 9, 13],
            "{how}: {:?}",
            t.warnings
        );
        assert_eq!(t.allowed_nodes, vec![1, 2], "{how}");
        let allowed: Vec<(u32, bool, Vec<u32>)> = t
            .nodes
            .iter()
            .map(|n| (n.node_id, n.allowed, n.allowed_cpus.clone()))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (0, false, vec![2]),
                (1, true, vec![4, 5]),
                (2, true, vec![9]),
                (3, false, vec![13]),
            ],
            "{how}"
        );
        assert!(t.numa_available, "{how}: {:?}", t.warnings);
    }
}

#[test]
fn the_prefixed_files_still_win_without_noprefix() {
    // The same mount without `noprefix` has cpuset.cpus/cpuset.mems; a stray `cpus` file
    // (another tool's) must not be read.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    four_nodes(root);
    put(
        root,
        "proc/mounts",
        "cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,nodev,noexec,relatime,cpuset 0 0\n",
    );
    put(root, "proc/self/cgroup", "5:cpuset:/box\n");
    put(root, "sys/fs/cgroup/cpuset/box/cpuset.cpus", "8-11\n");
    put(root, "sys/fs/cgroup/cpuset/box/cpuset.mems", "2\n");
    put(root, "sys/fs/cgroup/cpuset/box/cpus", "0\n");
    put(root, "sys/fs/cgroup/cpuset/box/mems", "0\n");
    let t = topology::detect(root);
    assert_eq!(t.allowed_cpus, vec![8, 9, 10, 11]);
    assert_eq!(t.allowed_nodes, vec![2]);
}

/// A POWER9 node pair with four V100s: nodes 0 and 8 have CPUs and memory, nodes 252-255
/// are GPU memory (no CPUs), each named by one GPU's numa_status.
fn gpu_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cpus(root, "0-7", 0..=7);
    put(root, "sys/devices/system/node/online", "0,8,252-255\n");
    put(root, "sys/devices/system/node/has_memory", "0,8,252-255\n");
    let ids = [0u32, 8, 252, 253, 254, 255];
    // SLIT of such a machine: CPU nodes 10/40 between them, GPU memory 80 from CPU nodes.
    let dist = |a: u32, b: u32| -> u32 {
        if a == b {
            10
        } else if a < 252 && b < 252 {
            40
        } else {
            80
        }
    };
    for &id in &ids {
        let row: Vec<String> = ids.iter().map(|&o| dist(id, o).to_string()).collect();
        let cpulist = match id {
            0 => "0-3",
            8 => "4-7",
            _ => "",
        };
        let mem = if id < 252 { 4096 } else { 16128 };
        node(root, id, cpulist, mem, &row.join(" "));
    }
    for (bus, node) in [
        ("0004:04:00.0", 255),
        ("0004:05:00.0", 254),
        ("0035:03:00.0", 253),
        ("0035:04:00.0", 252),
    ] {
        put(
            root,
            &format!("proc/driver/nvidia/gpus/{bus}/numa_status"),
            &format!(
                "Node:                          {node}\nStatus:                        online\nMemory block size:             0x10000000\n"
            ),
        );
        put(
            root,
            &format!("proc/driver/nvidia/gpus/{bus}/information"),
            "Model: Tesla V100-SXM2-16GB\n",
        );
    }
    put(
        root,
        "proc/meminfo",
        "MemTotal: 8388608 kB\nMemFree: 4194304 kB\n",
    );
    dir
}

fn kinds(t: &Topology) -> Vec<(u32, NodeKind, bool, bool)> {
    t.nodes
        .iter()
        .map(|n| (n.node_id, n.kind, n.has_cpu, n.has_memory))
        .collect()
}

#[test]
fn nvidia_gpu_memory_nodes_are_listed_with_kind_gpu() {
    let dir = gpu_tree();
    let t = topology::detect(dir.path());
    assert_eq!(
        kinds(&t),
        vec![
            (0, NodeKind::General, true, true),
            (8, NodeKind::General, true, true),
            (252, NodeKind::Gpu, false, true),
            (253, NodeKind::Gpu, false, true),
            (254, NodeKind::Gpu, false, true),
            (255, NodeKind::Gpu, false, true),
        ],
        "{:?}",
        t.warnings
    );
    assert!(t.numa_available, "{:?}", t.warnings);
    assert_eq!(t.node(255).unwrap().memory_total_bytes, 16128 << 20);
    assert_eq!(t.node(0).unwrap().distances.get(&255), Some(&80));
    // The JSON every client sees labels them.
    let json = t.to_json();
    let labels: Vec<(u64, &str)> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_u64().unwrap(), n["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        labels,
        vec![
            (0, "general"),
            (8, "general"),
            (252, "gpu"),
            (253, "gpu"),
            (254, "gpu"),
            (255, "gpu"),
        ]
    );
    // A warning names the GPU behind each node, for the operator.
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("node 255") && w.contains("0004:04:00.0")),
        "{:?}",
        t.warnings
    );
    // Without the driver's files the same nodes are ordinary memory-only nodes.
    std::fs::remove_dir_all(dir.path().join("proc/driver")).unwrap();
    let plain = topology::detect(dir.path());
    assert!(plain.nodes.iter().all(|n| n.kind == NodeKind::General));
}

#[test]
fn placement_keeps_out_of_gpu_memory_unless_a_node_is_named() {
    let dir = gpu_tree();
    let t = Arc::new(topology::detect(dir.path()));
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Interleave,
        Strategy::MostMemory,
        Strategy::LocalNode,
    ] {
        let config = StrategyConfig {
            strategy,
            ..StrategyConfig::default()
        };
        let placer = Placer::with_fs_root(Arc::clone(&t), config, dir.path().to_path_buf());
        assert_eq!(placer.candidates(), vec![0, 8], "{strategy:?}");
        for i in 0..200u32 {
            let node = placer.place(&i.to_le_bytes(), Some(i % 8));
            assert!(node == 0 || node == 8, "{strategy:?} placed on node {node}");
        }
        // Named explicitly, a GPU node is usable; an unknown node is still refused.
        assert_eq!(placer.check_node(254).unwrap(), 254);
        let e = placer.check_node(251).unwrap_err().to_string();
        assert!(e.contains("251") && e.contains("no such node"), "{e}");
    }
}

//! `numacachectl topology --json` on this machine agrees with `numactl --hardware`: node
//! ids, each node's CPUs, memory size (within 1%), and the distance matrix.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

/// What `numactl --hardware` prints, by node id.
#[derive(Debug, Default)]
struct Numactl {
    cpus: BTreeMap<u32, Vec<u32>>,
    size_mb: BTreeMap<u32, u64>,
    distances: BTreeMap<(u32, u32), u64>,
}

fn parse_numactl(text: &str) -> Numactl {
    let mut out = Numactl::default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["node", id, "cpus:", cpus @ ..] => {
                out.cpus.insert(
                    id.parse().unwrap(),
                    cpus.iter().map(|c| c.parse().unwrap()).collect(),
                );
            }
            ["node", id, "size:", mb, "MB"] => {
                out.size_mb.insert(id.parse().unwrap(), mb.parse().unwrap());
            }
            ["node", "distances:"] => {
                let header: Vec<u32> = lines
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .skip(1)
                    .map(|v| v.parse().unwrap())
                    .collect();
                for _ in 0..header.len() {
                    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
                    let from: u32 = row[0].trim_end_matches(':').parse().unwrap();
                    for (to, d) in header.iter().zip(&row[1..]) {
                        out.distances.insert((from, *to), d.parse().unwrap());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn numacachectl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_numacachectl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "numacachectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn topology_json_agrees_with_numactl_hardware() {
    if !support::require_tool("numactl", "numactl") {
        return;
    }
    let hw = Command::new("numactl").arg("--hardware").output().unwrap();
    assert!(hw.status.success(), "numactl --hardware failed");
    let expected = parse_numactl(&String::from_utf8_lossy(&hw.stdout));
    assert!(
        !expected.cpus.is_empty(),
        "could not read numactl --hardware"
    );

    let json: serde_json::Value =
        serde_json::from_str(&numacachectl(&["topology", "--json"])).unwrap();
    assert_eq!(
        json["numa_available"], true,
        "warnings: {}",
        json["warnings"]
    );
    let nodes = json["nodes"].as_array().unwrap();
    let ids: Vec<u32> = nodes
        .iter()
        .map(|n| n["node_id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, expected.cpus.keys().copied().collect::<Vec<_>>());
    for n in nodes {
        let id = n["node_id"].as_u64().unwrap() as u32;
        let cpus: Vec<u32> = n["cpu_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(cpus, expected.cpus[&id], "CPUs of node {id}");
        assert_eq!(n["cpu_count"].as_u64().unwrap() as usize, cpus.len());
        let ours = n["memory_mb"].as_u64().unwrap();
        let theirs = expected.size_mb[&id];
        assert!(
            ours.abs_diff(theirs) <= theirs / 100 + 1,
            "node {id} memory: ours {ours} MiB, numactl {theirs} MB"
        );
        for (&(from, to), &d) in &expected.distances {
            if from == id {
                assert_eq!(
                    n["distances"][to.to_string()].as_u64(),
                    Some(d),
                    "distance {from}->{to}"
                );
            }
        }
    }
}

#[test]
fn allowed_cpus_are_this_process_affinity() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let allowed = numa_cache::topology::parse_cpulist(allowed).unwrap();
    let online = numa_cache::topology::parse_cpulist(&online).unwrap();
    let expected: Vec<u32> = allowed.into_iter().filter(|c| online.contains(c)).collect();

    // The child inherits this test's affinity.
    let json: serde_json::Value =
        serde_json::from_str(&numacachectl(&["topology", "--json"])).unwrap();
    let ours: Vec<u32> = json["allowed_cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ours, expected);

    let t = numa_cache::topology::detect_live();
    assert_eq!(t.allowed_cpus, expected);
}

#[test]
fn the_table_names_every_node_and_the_allowed_sets() {
    let table = numacachectl(&["topology"]);
    let t = numa_cache::topology::detect_live();
    for id in t.node_ids() {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&id.to_string())),
            "node {id} missing from:\n{table}"
        );
    }
    assert!(table.contains("allowed cpus:"), "{table}");
    assert!(table.contains("distances:"), "{table}");
}

#[test]
fn a_bad_fs_root_is_an_error_that_says_what_is_wanted() {
    let out = Command::new(env!("CARGO_BIN_EXE_numacachectl"))
        .args(["topology", "--fs-root", "/nonexistent/capture"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/capture has no sys/ folder"),
        "{err}"
    );
}

#[test]
fn affinity_narrows_the_allowed_cpus() {
    if !support::require_tool("taskset", "util-linux") {
        return;
    }
    // `taskset -c 0` runs numacachectl with sched_setaffinity({0}): only CPU 0 is allowed,
    // while the nodes still list all their CPUs.
    let out = Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_numacachectl"),
            "topology",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["allowed_cpus"], serde_json::json!([0]));
    let all: usize = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cpu_count"].as_u64().unwrap() as usize)
        .sum();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert_eq!(
        all,
        numa_cache::topology::parse_cpulist(&online).unwrap().len()
    );
}

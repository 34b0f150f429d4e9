//! Detection cost: the daemon re-reads the topology on every hotplug event, so a full read
//! must stay in microseconds-to-low-milliseconds. Measured on the largest hwloc capture
//! (128ia64-17n4s2c: 17 nodes, cpumap only) and on a synthetic 64-node tree.

use criterion::{Criterion, criterion_group, criterion_main};
use numa_cache::topology::{self, synthetic::SyntheticMachine};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Unpack the 17-node capture; `None` (with a note) when tar/bzip2 are missing.
fn unpack_fixture(into: &Path) -> Option<PathBuf> {
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hwloc-linux/128ia64-17n4s2c.tar.bz2");
    let ok = Command::new("tar")
        .arg("-xjf")
        .arg(&tarball)
        .arg("-C")
        .arg(into)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping the fixture benchmark: tar -xjf {tarball:?} failed");
        return None;
    }
    Some(into.join("128ia64-17n4s2c"))
}

fn detection(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    if let Some(root) = unpack_fixture(tmp.path()) {
        let t = topology::detect(&root);
        assert_eq!(t.nodes.len(), 17);
        c.bench_function("detect 128ia64-17n4s2c (17 nodes, cpumap)", |b| {
            b.iter(|| topology::detect(black_box(&root)))
        });
    }

    let synthetic = tmp.path().join("synthetic-64");
    let mut machine = SyntheticMachine::uniform(64, 4, 16 << 20);
    machine.cpuset = Some(((0..128).collect(), (0..32).collect()));
    machine
        .write(&synthetic)
        .expect("writing the synthetic tree");
    let t = topology::detect(&synthetic);
    assert_eq!(t.nodes.len(), 64);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    c.bench_function(
        "detect synthetic 64 nodes x 4 CPUs + cgroup v2 cpuset",
        |b| b.iter(|| topology::detect(black_box(&synthetic))),
    );
    c.bench_function("to_json 64 nodes", |b| b.iter(|| black_box(&t).to_json()));
    c.bench_function("to_json_string_pretty 64 nodes", |b| {
        b.iter(|| black_box(&t).to_json_string_pretty())
    });
}

fn parsers(c: &mut Criterion) {
    let list = "0-63,128-191,256,258,260-511\n";
    c.bench_function("parse_cpulist 4 ranges", |b| {
        b.iter(|| topology::parse_cpulist(black_box(list)))
    });
    let map = format!("{}000000ff", "00000000,".repeat(127));
    c.bench_function("parse_cpumap 128 words", |b| {
        b.iter(|| topology::parse_cpumap(black_box(&map)))
    });
}

criterion_group!(benches, detection, parsers);
criterion_main!(benches);

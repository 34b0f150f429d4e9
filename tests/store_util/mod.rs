//! Helpers for the store tests: a loop-mounted btrfs (or tmpfs) in a temp folder, unmounted
//! on drop, and topologies built by hand (engine logic does not need real NUMA hardware;
//! every node maps to real CPUs 0.. so pools can run).
#![allow(dead_code)]

use numa_cache::placement::StrategyConfig;
use numa_cache::store::CacheConfig;
use numa_cache::topology::{NumaNode, Topology};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

#[path = "../support/mod.rs"]
pub mod support;

/// A mounted scratch filesystem; unmounted and removed on drop.
pub struct Mount {
    _tmp: tempfile::TempDir,
    /// The mount point.
    pub path: PathBuf,
}

fn run(cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
            false
        }
        Err(e) => {
            eprintln!("{cmd:?} could not run: {e}");
            false
        }
    }
}

impl Mount {
    /// A fresh btrfs of `mib` MiB (mixed block groups when `mixed`), or None when the
    /// prerequisites are missing outside CI.
    pub fn btrfs(mib: u64, mixed: bool) -> Option<Mount> {
        if !support::require_root() || !support::require_tool("mkfs.btrfs", "btrfs-progs") {
            return None;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let img = tmp.path().join("img");
        let path = tmp.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let f = std::fs::File::create(&img).expect("image file");
        f.set_len(mib << 20).expect("sizing the image");
        let mut mkfs = Command::new("mkfs.btrfs");
        mkfs.arg("-q");
        if mixed {
            mkfs.arg("-M");
        }
        assert!(run(mkfs.arg(&img)), "mkfs.btrfs failed");
        assert!(
            run(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&img)
                .arg(&path)),
            "mounting the btrfs image failed"
        );
        Some(Mount { _tmp: tmp, path })
    }

    /// A fresh tmpfs.
    pub fn tmpfs() -> Option<Mount> {
        if !support::require_root() {
            return None;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        assert!(run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
            .arg(&path)));
        Some(Mount { _tmp: tmp, path })
    }

    /// `path/cache`, the cache directory used by the tests.
    pub fn dir(&self) -> PathBuf {
        self.path.join("cache")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            if run(Command::new("umount").arg(&self.path)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn node(id: u32, cpus: Vec<u32>, nodes: u32) -> NumaNode {
    NumaNode {
        node_id: id,
        cpus: cpus.clone(),
        allowed_cpus: cpus,
        memory_total_bytes: 4 << 30,
        memory_free_bytes: (2 << 30) + u64::from(id),
        has_cpu: true,
        has_memory: true,
        allowed: true,
        distances: (0..nodes)
            .map(|o| (o, if o == id { 10 } else { 20 }))
            .collect(),
        kind: Default::default(),
    }
}

/// One node holding every CPU.
pub fn topo1() -> Arc<Topology> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let cpus: Vec<u32> = (0..n).collect();
    Arc::new(Topology {
        nodes: vec![node(0, cpus.clone(), 1)],
        allowed_cpus: cpus,
        allowed_nodes: vec![0],
        numa_available: true,
        warnings: vec![],
    })
}

/// Two synthetic nodes over the real CPUs (node 0: CPU 0, node 1: the rest, or CPU 0 too
/// on a one-CPU machine).
pub fn topo2() -> Arc<Topology> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let second: Vec<u32> = if n > 1 { (1..n).collect() } else { vec![0] };
    Arc::new(Topology {
        nodes: vec![node(0, vec![0], 2), node(1, second, 2)],
        allowed_cpus: (0..n).collect(),
        allowed_nodes: vec![0, 1],
        numa_available: true,
        warnings: vec![],
    })
}

/// A small configuration in `dir`.
pub fn config(dir: &Path) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        memory_bytes: 16 << 20,
        snapshots_keep: 3,
        stats_interval: Duration::from_secs(3600),
        strategy: StrategyConfig::default(),
        ..CacheConfig::default()
    }
}

/// Deterministic bytes for (key, version): a header naming them and a body derived from them,
/// so a reader can tell a whole value from a torn or mixed one.
pub fn value_for(key: &str, version: u64, len: usize) -> Vec<u8> {
    let mut out = format!("{key}#{version}#{len}|").into_bytes();
    let mut x = xxhash_rust::xxh3::xxh3_64(key.as_bytes())
        ^ version.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half text-like, half noise: exercises both compressed and raw blobs.
        let b = if version % 2 == 0 {
            b'a' + (x % 7) as u8
        } else {
            (x >> 32) as u8
        };
        out.push(b);
    }
    out
}

/// Check `v` is exactly some version of `key`'s value; returns the version.
pub fn check_value(key: &str, v: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(&v[..v.len().min(1100)]).into_owned();
    let mut parts = text.splitn(4, ['#', '|']);
    let (k, ver, len) = (parts.next(), parts.next(), parts.next());
    assert_eq!(k, Some(key), "value of {key} names another key");
    let ver: u64 = ver.and_then(|s| s.parse().ok()).expect("version in value");
    let len: usize = len.and_then(|s| s.parse().ok()).expect("length in value");
    assert_eq!(
        v,
        value_for(key, ver, len).as_slice(),
        "value of {key} v{ver} is torn or mixed"
    );
    ver
}

/// Files under `dir` (recursively) whose name ends with `.tmp`.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(temp_files(&p));
        } else if p.extension().is_some_and(|x| x == "tmp") {
            out.push(p);
        }
    }
    out
}

/// Large-value files (a file per value) of every shard under `cache/shards`.
pub fn blob_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(cache.join("shards")) else {
        return out;
    };
    for s in shards.filter_map(|e| e.ok()) {
        let Ok(fans) = std::fs::read_dir(s.path()) else {
            continue;
        };
        for fan in fans.filter_map(|e| e.ok()) {
            if fan.file_name() == "tmp" || fan.file_name() == "seg" {
                continue;
            }
            if let Ok(files) = std::fs::read_dir(fan.path()) {
                out.extend(files.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    out
}

/// Segment files of every shard (`shards/node*/seg/*.seg`).
pub fn segment_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(cache.join("shards")) else {
        return out;
    };
    for s in shards.filter_map(|e| e.ok()) {
        if let Ok(rd) = std::fs::read_dir(s.path().join("seg")) {
            out.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    out.sort();
    out
}

/// Bytes of every segment file on disk (live and dead records).
pub fn segment_bytes(cache: &Path) -> u64 {
    segment_files(cache)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Every intact record on disk, found by parsing the files (not through the index):
/// (file, offset, stored length, namespace, key). Large-value files have offset 0.
pub fn records(cache: &Path) -> Vec<(PathBuf, u64, u64, String, String)> {
    use numa_cache::store::blob;
    let mut out = Vec::new();
    for f in segment_files(cache) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let mut off = 0usize;
        while off + blob::FIXED_LEN + 8 <= bytes.len() {
            if let Ok(h) = blob::parse_header(&bytes[off..])
                && off + h.stored_len() as usize <= bytes.len()
                && blob::decode_payload(&h, &bytes[off..off + h.stored_len() as usize]).is_ok()
            {
                let len = h.stored_len();
                out.push((f.clone(), off as u64, len, h.namespace, h.key));
                off += (len as usize).div_ceil(8) * 8;
            } else {
                off += 8;
            }
        }
    }
    for f in blob_files(cache) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        if let Ok(h) = blob::parse_header(&bytes) {
            out.push((f.clone(), 0, bytes.len() as u64, h.namespace, h.key));
        }
    }
    out
}

/// The crash tests' writer runs in a child process that ends by dying (abort, SIGKILL). It is
/// the test itself, re-run: [`child_command`] starts this test binary with `--exact` the
/// calling test's name and `var` set, and that test's first line hands over to the child's
/// work when [`child_spec`] finds `var`. So the child is no test of its own (nothing that
/// passes in every run without doing anything) and cannot be run apart from its parent.
///
/// The value of `var` in the child (what the parent passed), None in the parent.
pub fn child_spec(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// The command that re-runs the calling test as its child with `var=value` (see
/// [`child_spec`]): its stdout discarded, its stderr kept for the failure message.
pub fn child_command(var: &str, value: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(child_args())
        .env(var, value)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// The test harness's arguments that run only the calling test (libtest names each test's
/// thread after the test), for a command that wraps the test binary.
pub fn child_args() -> [String; 4] {
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .expect("called from a test's own thread (libtest names it after the test)")
        .to_string();
    [
        "--exact".into(),
        name,
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// Run `cmd` (a [`child_command`]) and require that it died by `signal`, the child's own
/// end: a child that panicked, ran no test or could not start fails here, with its stderr.
pub fn expect_death(cmd: &mut Command, signal: i32) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd.output().expect("running the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = &stderr[stderr.len().saturating_sub(4000)..];
    assert_eq!(
        out.status.signal(),
        Some(signal),
        "the child was to die by signal {signal}, it ended with {}:\n{tail}",
        out.status
    );
}

/// [`expect_death`] by SIGABRT: the writer's `std::process::abort()` (no destructor, no
/// flush: what reaches the disk is what a SIGKILL leaves).
pub fn expect_abort(cmd: &mut Command) {
    expect_death(cmd, libc::SIGABRT);
}

//! The NUMA lab: boots Debian's own kernel under QEMU (TCG) with 2, 3 (one memory-only node)
//! and 4 (unequal, asymmetric distances) emulated NUMA nodes, runs `numacachectl` and the
//! `lab_probe` example inside, and asserts on what they print: the topology equals QEMU's
//! configuration, pinning and bound allocations land on their node, `bind_process` moves a
//! running child, a CPU going offline is a new watcher generation from its uevent (within
//! 10 s; the re-scan is every 30 s) after which
//! the node's pool no longer runs there, and (section `tier`, a real `Cache` on btrfs) each
//! node's values have their page cache and their memory-tier copies in that node's memory as
//! the kernel counts it (nodeN/meminfo, numa_maps, numa_pages_migrated), also after threads
//! on other nodes read them with `kernel.numa_balancing=1`. Every section must exit 0, and a
//! field missing from a section's JSON fails its check.
//!
//! Prerequisites (qemu-system-x86, busybox-static, cpio, btrfs-progs, the kernel .deb with
//! its modules) are fetched by tests/lab/fetch-kernel.sh into `$NUMA_LAB_CACHE` (default
//! target/lab-cache).

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One emulated machine: nodes (id, CPUs, MiB of memory) and the full distance matrix.
struct LabMachine {
    name: &'static str,
    /// Run the `tier` section (a real Cache; the slow part under emulation).
    tier: bool,
    nodes: Vec<(u32, Vec<u32>, u64)>,
    distances: Vec<Vec<u32>>,
}

impl LabMachine {
    fn qemu_args(&self) -> Vec<String> {
        let total: u64 = self.nodes.iter().map(|n| n.2).sum();
        let cpus: usize = self.nodes.iter().map(|n| n.1.len()).sum();
        let mut a: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-m".into(),
            format!("{total}M"),
            "-smp".into(),
            cpus.to_string(),
        ];
        for (id, cpus, mb) in &self.nodes {
            a.push("-object".into());
            a.push(format!("memory-backend-ram,id=m{id},size={mb}M"));
            a.push("-numa".into());
            let mut node = format!("node,nodeid={id},memdev=m{id}");
            if let (Some(first), Some(last)) = (cpus.first(), cpus.last()) {
                node.push_str(&format!(",cpus={first}-{last}"));
            }
            a.push(node);
        }
        for (i, row) in self.distances.iter().enumerate() {
            for (j, &d) in row.iter().enumerate() {
                if i != j {
                    a.push("-numa".into());
                    a.push(format!("dist,src={i},dst={j},val={d}"));
                }
            }
        }
        a
    }
}

fn machines() -> Vec<LabMachine> {
    vec![
        LabMachine {
            name: "two-nodes",
            tier: true,
            nodes: vec![(0, vec![0, 1], 1024), (1, vec![2, 3], 1024)],
            distances: vec![vec![10, 21], vec![21, 10]],
        },
        LabMachine {
            name: "memory-only-node",
            tier: true,
            nodes: vec![
                (0, vec![0, 1], 1024),
                (1, vec![2, 3], 1024),
                (2, vec![], 1024),
            ],
            distances: vec![vec![10, 21, 31], vec![21, 10, 31], vec![31, 31, 10]],
        },
        LabMachine {
            name: "four-nodes-asymmetric",
            tier: false,
            nodes: vec![
                (0, vec![0], 1024),
                (1, vec![1], 1024),
                (2, vec![2], 1024),
                (3, vec![3], 1024),
            ],
            distances: vec![
                vec![10, 20, 30, 40],
                vec![25, 10, 20, 30],
                vec![30, 20, 10, 20],
                vec![40, 30, 25, 10],
            ],
        },
    ]
}

/// The kernel the VMs boot (for version-dependent expectations).
static LAB_KERNEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                manifest_dir().join(p)
            }
        })
        .unwrap_or_else(|| manifest_dir().join("target"))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("NUMA_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("lab-cache"))
}

/// Fetch the kernel (and, under CI as root, install QEMU/busybox/cpio). None: skip.
fn kernel() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(manifest_dir().join("tests/lab/fetch-kernel.sh"))
        .arg(cache_dir())
        .stderr(Stdio::inherit())
        .output();
    let ok = support::require_tool("qemu-system-x86_64", "qemu-system-x86")
        & support::require_tool("busybox", "busybox-static")
        & support::require_tool("cpio", "cpio")
        & support::require_tool("mkfs.btrfs", "btrfs-progs")
        & support::require_tool("dbus-daemon", "dbus-daemon");
    if !ok {
        return None;
    }
    match out {
        Ok(o) if o.status.success() => {
            let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Some(PathBuf::from(path))
        }
        Ok(o) => {
            let msg = format!(
                "fetching the Debian kernel failed ({}); run tests/lab/fetch-kernel.sh as root",
                o.status
            );
            support::skip(&msg);
            None
        }
        Err(e) => panic!("cannot run tests/lab/fetch-kernel.sh: {e}"),
    }
}

/// Build the binaries the VMs run (a no-op inside `cargo test`, which has built both). Debug
/// builds: the lab checks placement, not speed, and CI then needs no second, release build.
fn binaries() -> (PathBuf, PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(manifest_dir())
        .args([
            "build",
            "--quiet",
            "--bin",
            "numacachectl",
            "--bin",
            "numa-cached",
            "--example",
            "lab_probe",
        ])
        .status()
        .expect("running cargo build for the lab binaries");
    assert!(status.success(), "cargo build for the lab failed");
    let rel = target_dir().join("debug");
    (
        rel.join("numacachectl"),
        rel.join("examples/lab_probe"),
        rel.join("numa-cached"),
    )
}

/// The modules of `kernel` (`.../kroot/boot/vmlinuz-V` -> `.../kroot/lib/modules/V`).
fn modules_dir(kernel: &Path) -> PathBuf {
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("the kernel file is named vmlinuz-VERSION");
    kernel
        .parent()
        .and_then(Path::parent)
        .expect("the kernel is in kroot/boot")
        .join("lib/modules")
        .join(version)
}

fn initramfs(
    dir: &Path,
    (ctl, probe, daemon): &(PathBuf, PathBuf, PathBuf),
    kernel: &Path,
) -> PathBuf {
    let out = dir.join("lab-init.cpio.gz");
    let status = Command::new("bash")
        .arg(manifest_dir().join("tests/lab/build-initramfs.sh"))
        .arg(&out)
        .arg(ctl)
        .arg(probe)
        .arg(daemon)
        .arg(modules_dir(kernel))
        .status()
        .expect("running tests/lab/build-initramfs.sh");
    assert!(status.success(), "building the lab initramfs failed");
    out
}

/// How long a guest may take to print its first section. Booting under TCG takes 10-90 s
/// here; a guest that prints nothing by then hung before its init ran (seen once in CI: the
/// four-node guest printed nothing after the firmware for 400 s, and passed on the next
/// run), and is booted again once, with a line saying so.
const FIRST_SECTION_WITHIN: Duration = Duration::from_secs(240);
/// A guest that printed its first section is given this long between two lines of its
/// console before it is taken for hung: the slowest sections, `tier` and `daemon`, print
/// nothing for 240-380 s under TCG on a busy 2-core host, and the 3-node guest's `tier`
/// passed 600 s with three guests side by side.
const SILENT_AT_MOST: Duration = Duration::from_secs(1200);

/// Boot `m` and return its console (the first boot's, and the second's after a hang).
fn boot(m: &LabMachine, kernel: &Path, initrd: &Path) -> String {
    let (out, hung) = boot_once(m, kernel, initrd);
    if !hung {
        return out;
    }
    eprintln!(
        "lab: {} printed nothing within {FIRST_SECTION_WITHIN:?} (hung before its init): booting it again",
        m.name
    );
    boot_once(m, kernel, initrd).0
}

/// One boot, until the guest powers off or stalls: the console, and whether it was killed
/// for printing no section in time.
fn boot_once(m: &LabMachine, kernel: &Path, initrd: &Path) -> (String, bool) {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(m.qemu_args())
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet loglevel=1 panic=-1 no_timer_check numalab.tier={}",
            u8::from(m.tier)
        ))
        .args(["-nographic", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("piped stdout");
    // Read as it comes, so a guest that stalls is seen by what it stopped printing.
    let seen = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), Instant::now())));
    let sink = std::sync::Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let mut s = sink.lock().unwrap();
            s.0.extend_from_slice(&chunk[..n]);
            s.1 = Instant::now();
        }
    });
    let mut hung = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {
                let (begun, quiet) = {
                    let s = seen.lock().unwrap();
                    (
                        String::from_utf8_lossy(&s.0).contains("@@BEGIN"),
                        s.1.elapsed(),
                    )
                };
                let stalled = if begun {
                    quiet > SILENT_AT_MOST
                } else {
                    started.elapsed() > FIRST_SECTION_WITHIN
                };
                if stalled {
                    hung = !begun;
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = reader.join();
    let out = String::from_utf8_lossy(&seen.lock().unwrap().0).replace('\r', "");
    let log = cache_dir().join(format!("{}.console.log", m.name));
    let _ = std::fs::write(&log, format!("{out}\n--- qemu stderr ---\n{err}"));
    eprintln!("lab: {} ran {:?}", m.name, started.elapsed());
    (out, hung)
}

/// What one `@@BEGIN name` .. `@@END name rc=N` section printed.
#[derive(Default)]
struct Section {
    /// The JSON it printed (one line or pretty-printed), if any parsed.
    json: Option<Value>,
    /// Its exit status, from the `@@END` line.
    rc: Option<i32>,
    /// Its stderr, from the `@@STDERR` block.
    stderr: String,
    /// How long it ran, in the guest's seconds (`s=` of the `@@END` line).
    seconds: Option<u64>,
}

type Sections = BTreeMap<String, Section>;

/// Every section of the console (the console may prefix a line with terminal escapes, and
/// stray lines are skipped).
fn sections(console: &str) -> Sections {
    let mut out: Sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut stderr_of: Option<String> = None;
    for line in console.lines() {
        if let Some(at) = line.find("@@BEGIN ") {
            current = Some((line[at + 8..].trim().to_string(), String::new()));
        } else if let Some(at) = line.find("@@STDERR ") {
            stderr_of = Some(line[at + 9..].trim().to_string());
        } else if line.contains("@@END-STDERR") {
            stderr_of = None;
        } else if let Some(at) = line.find("@@END ") {
            let Some((name, text)) = current.take() else {
                continue;
            };
            let rc = line[at + 6..]
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rc="))
                .and_then(|r| r.parse().ok());
            let json = match (text.find('{'), text.rfind('}')) {
                (Some(a), Some(b)) if a < b => serde_json::from_str::<Value>(&text[a..=b]).ok(),
                _ => None,
            };
            let seconds = line[at + 6..]
                .split_whitespace()
                .find_map(|w| w.strip_prefix("s="))
                .and_then(|r| r.parse().ok());
            let sec = out.entry(name).or_default();
            sec.json = json;
            sec.rc = rc;
            sec.seconds = seconds;
        } else if let Some(name) = &stderr_of {
            let sec = out.entry(name.clone()).or_default();
            sec.stderr.push_str(line);
            sec.stderr.push('\n');
        } else if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// The node's memory as the kernel reports it: `(MemTotal bytes, online memory-block bytes)`
/// from the probe in the same VM.
fn node_memory(probe: &Value, id: u32) -> (u64, u64) {
    let n = &probe["node_memory"][id.to_string()];
    (
        num(&n["memtotal_bytes"], "memtotal_bytes"),
        num(&n["block_bytes"], "block_bytes"),
    )
}

/// Compare one topology rendering with QEMU's configuration.
///
/// Memory: the node's physical size (its online memory blocks) must be QEMU's within 2%.
/// The reported figure is MemTotal, which is smaller by what the kernel reserves on each node
/// (its page structs, early allocations placed top-down on the last node): measured 2-6%
/// in this lab. So the reported figure must equal MemTotal (within 2%) and may be below
/// QEMU's size by at most 10%.
fn check_against_qemu(
    m: &LabMachine,
    probe: &Value,
    nodes: &[Value],
    cpus_key: &str,
    mib_of: &dyn Fn(&Value) -> f64,
) {
    let got: Vec<u32> = nodes
        .iter()
        .map(|n| n["node_id"].as_u64().unwrap_or(999) as u32)
        .collect();
    let want: Vec<u32> = m.nodes.iter().map(|n| n.0).collect();
    assert_eq!(got, want, "{}: node ids", m.name);
    for ((id, cpus, mb), n) in m.nodes.iter().zip(nodes) {
        assert_eq!(&ids(&n[cpus_key]), cpus, "{}: CPUs of node {id}", m.name);
        let (memtotal, blocks) = node_memory(probe, *id);
        let mb = *mb as f64;
        let physical = blocks as f64 / 1048576.0;
        assert!(
            (physical - mb).abs() / mb <= 0.02,
            "{}: node {id} has {physical} MiB of memory blocks, QEMU gave it {mb} MiB",
            m.name
        );
        let reported = mib_of(n);
        let memtotal = memtotal as f64 / 1048576.0;
        assert!(
            (reported - memtotal).abs() / memtotal <= 0.02,
            "{}: node {id} reported {reported:.0} MiB, the kernel's MemTotal is {memtotal:.0} MiB",
            m.name
        );
        // A sanity bound only: what we report is checked against MemTotal above, and the
        // node's memory against QEMU through its memory blocks. How much the kernel keeps
        // for itself on a node varies from boot to boot (seen: 899 of 1024 MiB on node 2 of
        // the 4-node machine, 2-6% elsewhere), so this bound cannot be 2%.
        assert!(
            reported <= mb * 1.02 && reported >= mb * 0.80,
            "{}: node {id} reported {reported:.0} MiB for QEMU's {mb} MiB",
            m.name
        );
        for (j, want_d) in m.distances[*id as usize].iter().enumerate() {
            assert_eq!(
                n["distances"][j.to_string()].as_u64(),
                Some(u64::from(*want_d)),
                "{}: distance {id}->{j}",
                m.name
            );
        }
    }
}

/// `numacachectl topology --json` inside the VM equals QEMU's configuration.
fn check_topology(m: &LabMachine, s: &Sections) {
    let t = section(s, "topology");
    let probe = section(s, "watcher-topology");
    let nodes = t["nodes"].as_array().expect("topology JSON has nodes[]");
    check_against_qemu(m, probe, nodes, "cpu_list", &|n| {
        n["memory_mb"].as_u64().unwrap_or(0) as f64
    });
}

/// The hotplug watcher's own reading (the `Topology` model) matches QEMU's too.
fn check_watcher_topology(m: &LabMachine, s: &Sections) {
    let probe = section(s, "watcher-topology");
    let nodes = probe["topology"]["nodes"]
        .as_array()
        .expect("Topology has nodes[]");
    check_against_qemu(m, probe, nodes, "cpus", &|n| {
        n["memory_total_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
    });
}

/// A check over every section one VM printed.
type Check = fn(&LabMachine, &Sections);

/// The JSON of section `name`, which must have exited with status 0.
fn section<'a>(s: &'a Sections, name: &str) -> &'a Value {
    let sec = s
        .get(name)
        .unwrap_or_else(|| panic!("no section `{name}` in the console"));
    assert_eq!(
        sec.rc,
        Some(0),
        "`{name}` exited with rc={:?}; stderr:\n{}\nprinted: {:?}",
        sec.rc,
        sec.stderr,
        sec.json
    );
    sec.json
        .as_ref()
        .unwrap_or_else(|| panic!("no JSON from `{name}` in the console"))
}

/// `v` as a number; a missing or non-numeric field fails with `what` named.
fn num(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn check_diagnose(m: &LabMachine, s: &Sections) {
    check_diagnose_json(m, section(s, "diagnose"))
}

/// `numacachectl diagnose`'s report, and the kernel's counters around its run: its bound
/// pages show in each node's `other_node` (placed there from a thread on another node), its
/// interleaved pages in each node's `interleave_hit`.
fn check_diagnose_json(m: &LabMachine, probe: &Value) {
    let d = &probe["report"];
    let report = || {
        let reports = d["nodes"].as_array().expect("diagnose JSON has nodes[]");
        for (id, cpus, _) in &m.nodes {
            let r = reports
                .iter()
                .find(|r| r["node_id"].as_u64() == Some(u64::from(*id)))
                .unwrap_or_else(|| panic!("{}: diagnose has no node {id}: {d}", m.name));
            if cpus.is_empty() {
                assert_eq!(r["pinning"], "no_cpus", "{}: node {id}", m.name);
            } else {
                assert_eq!(r["pinning"], "ok", "{}: node {id}: {r}", m.name);
                let seen = ids(&r["cpus_observed"]);
                assert!(
                    !seen.is_empty() && seen.iter().all(|c| cpus.contains(c)),
                    "{}: node {id} pinned thread ran on {seen:?}, node CPUs {cpus:?}",
                    m.name
                );
            }
            assert_eq!(r["pages_requested"], 64, "{}: node {id}", m.name);
            assert_eq!(
                r["pages_on_node"], 64,
                "{}: bound pages on node {id}: {r}",
                m.name
            );
        }
        let per = &d["interleave"]["pages_per_node"];
        let mut total = 0;
        for (id, _, _) in &m.nodes {
            let c = per[id.to_string()].as_u64().unwrap_or(0);
            assert!(
                c > 0,
                "{}: interleave put no page on node {id}: {per}",
                m.name
            );
            total += c;
        }
        assert_eq!(total, 256, "{}: interleave pages {per}", m.name);
    };
    // The kernel's side: at least the 64 bound pages were placed on each node by a task on
    // another node's CPU (a broken bind leaves them on the allocating thread's node), and
    // each node got its share of the 256 interleaved pages as interleave hits (plus the
    // page tables of the run, a few pages).
    let kernel = || {
        let share = 256 / m.nodes.len() as u64;
        let mut kernel_total = 0;
        for (id, _, _) in &m.nodes {
            let other = num(
                &probe["other_node_delta"][id.to_string()],
                "other_node_delta",
            );
            assert!(
                other >= 64,
                "{}: numastat: only {other} pages were put on node {id} from another node while diagnose bound 64 there: {probe}",
                m.name
            );
            let hits = num(
                &probe["interleave_hit_delta"][id.to_string()],
                "interleave_hit_delta",
            );
            assert!(
                hits + 1 >= share,
                "{}: numastat: {hits} interleaved pages on node {id}, its share is {share}: {probe}",
                m.name
            );
            kernel_total += hits;
        }
        assert!(
            kernel_total <= 2 * 256,
            "{}: numastat: {kernel_total} interleaved pages for diagnose's 256: {probe}",
            m.name
        );
    };
    parts(&[("report", &report), ("kernel", &kernel)]);
}

fn check_pools(m: &LabMachine, s: &Sections) {
    let v = LAB_KERNEL
        .get()
        .and_then(|k| kernel_version(k))
        .expect("the lab kernel's version from its file name");
    check_pools_json(m, section(s, "pools"), v)
}

/// The kernel version in the vmlinuz file name (`vmlinuz-6.1.0-56-amd64` -> (6, 1)).
fn kernel_version(kernel: &Path) -> Option<(u32, u32)> {
    let name = kernel.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let mut it = name.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// The nodes of a policy as numa_maps prints it (`bind:1`, `prefer:0-1`, `bind=static:2`),
/// when it is of `mode`.
fn policy_nodes(policy: &Value, mode: &str) -> Option<Vec<u32>> {
    let p = policy.as_str()?;
    let (m, nodes) = p.split_once(':')?;
    (m.split('=').next() == Some(mode)).then(|| {
        let mut out = Vec::new();
        for part in nodes.split(',') {
            match part.split_once('-') {
                Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
                None => out.push(part.parse::<u32>().ok()?),
            }
        }
        Some(out)
    })?
}

/// Pages per node of one numa_maps line (or sum): (total, on `node`).
fn pages_on(per: &Value, node: u32) -> (u64, u64) {
    let total = per
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    (total, per[node.to_string()].as_u64().unwrap_or(0))
}

/// The allowed CPUs of every thread in `threads` (task status entries) equal `cpus`.
fn all_allowed(threads: &Value, cpus: &[u32]) -> bool {
    threads
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|t| ids(&t["cpus_allowed"]) == cpus))
}

fn check_pools_json(m: &LabMachine, p: &Value, v: (u32, u32)) {
    // Mode detection must agree with the kernel's version: MPOL_PREFERRED_MANY came in 5.15,
    // MPOL_WEIGHTED_INTERLEAVE in 6.9.
    {
        let modes = &p["modes"];
        assert_eq!(
            modes["preferred_many"].as_bool(),
            Some(v >= (5, 15)),
            "{}: {modes} on {v:?}",
            m.name
        );
        assert_eq!(
            modes["weighted_interleave"].as_bool(),
            Some(v >= (6, 9)),
            "{}: {modes} on {v:?}",
            m.name
        );
    }
    let cpus_of =
        |node: u32| -> &Vec<u32> { &m.nodes.iter().find(|n| n.0 == node).expect("a lab node").1 };
    for (id, cpus, _) in &m.nodes {
        if !cpus.is_empty() {
            // Every worker thread of the pool (by its name), as /proc/self/task/*/status has it.
            let threads = &p["threads"][id.to_string()];
            assert!(
                all_allowed(threads, cpus),
                "{}: pool {id}'s threads may run elsewhere than {cpus:?}: {threads}",
                m.name
            );
            let seen = ids(&p["cpus_seen"][id.to_string()]);
            assert!(
                !seen.is_empty() && seen.iter().all(|c| cpus.contains(c)),
                "{}: pool {id}'s jobs ran on {seen:?}",
                m.name
            );
        }
        let pages = &p["pages"][id.to_string()];
        assert_eq!(num(&pages["pages"], "pages"), 32, "{}: {p}", m.name);
        let (total, on) = pages_on(&pages["mapping"]["pages_per_node"], *id);
        assert!(
            total == 32 && on == 32,
            "{}: numa_maps: of the 32 pages a job allocated for node {id}, {on} are there ({total} present): {pages}",
            m.name
        );
        // The job ran under a policy binding it to the node, on the serving pool's CPUs.
        assert_eq!(
            policy_nodes(&pages["job_policy"], "bind"),
            Some(vec![*id]),
            "{}: the job for node {id} ran under policy {}",
            m.name,
            pages["job_policy"]
        );
        let serving = num(&p["serving"][id.to_string()], "serving") as u32;
        assert_eq!(
            &ids(&pages["job_thread"]["cpus_allowed"]),
            cpus_of(serving),
            "{}: the job for node {id} ran on a thread allowed on {}",
            m.name,
            pages["job_thread"]
        );
    }
}

fn check_bind(m: &LabMachine, s: &Sections) {
    check_bind_json(m, section(s, "bind"))
}

/// The child's threads and pages as the kernel shows them: every thread's
/// `Cpus_allowed_list` is the target node's CPUs, and its buffer's numa_maps line has all
/// its pages on the source node before and on the target node after.
fn check_bind_json(m: &LabMachine, b: &Value) {
    let (from, to) = (
        num(&b["from_node"], "from_node") as u32,
        num(&b["to_node"], "to_node") as u32,
    );
    let to_cpus = ids(&b["to_cpus"]);
    let after = b["threads_after"].as_array().expect("threads after");
    assert!(after.len() >= 3, "{}: child threads {b}", m.name);
    assert!(
        all_allowed(&b["threads_after"], &to_cpus),
        "{}: a child thread was not moved to {to_cpus:?}: {}",
        m.name,
        b["threads_after"]
    );
    for t in after {
        assert!(
            ids(&t["mems_allowed"]).contains(&to),
            "{}: the child may not use node {to}'s memory: {t}",
            m.name
        );
    }
    assert_eq!(
        b["report"]["threads_pinned"].as_u64(),
        Some(after.len() as u64)
    );
    let pages = num(&b["buffer_pages"], "buffer_pages");
    assert_eq!(pages, 1024, "{}: {b}", m.name);
    let before = pages_on(&b["buffer_before"]["pages_per_node"], from);
    assert_eq!(
        before,
        (pages, pages),
        "{}: numa_maps: the child's buffer was not all on node {from} before: {}",
        m.name,
        b["buffer_before"]
    );
    let moved = pages_on(&b["buffer_after"]["pages_per_node"], to);
    assert_eq!(
        moved,
        (pages, pages),
        "{}: numa_maps: the child's pages did not all move to node {to}: {}",
        m.name,
        b["buffer_after"]
    );
    let (before, after_on) = (
        num(&b["report"]["pages_on_node_before"], "pages_on_node_before"),
        num(&b["report"]["pages_on_node_after"], "pages_on_node_after"),
    );
    assert!(after_on > before, "{}: bind_process report {b}", m.name);
}

fn check_hotplug(m: &LabMachine, s: &Sections) {
    check_hotplug_json(m, section(s, "hotplug"))
}

fn check_hotplug_json(m: &LabMachine, h: &Value) {
    let cpu = h["cpu"].as_u64().expect("hotplug cpu") as u32;
    let node = num(&h["node"], "node");
    let g = &h["generations"];
    assert!(
        h["notified"].as_bool() == Some(true),
        "{}: no new generation: {h}",
        m.name
    );
    assert!(
        num(&g["offline"], "offline generation") > num(&g["before"], "generation before"),
        "{}: generation did not move: {h}",
        m.name
    );
    // The probe's watcher re-scans only once an hour, so the new generation (waited for up
    // to 120 s) is the uevent's doing; and the watcher must have counted uevents.
    assert!(
        num(&h["rescan_interval_s"], "rescan_interval_s") >= 3600,
        "{}: {h}",
        m.name
    );
    assert!(
        h["uevents_enabled"] == true && num(&h["uevents_seen"], "uevents_seen") > 0,
        "{}: the new generation did not come from uevents: {h}",
        m.name
    );
    assert!(
        !ids(&h["node_cpus_after"]).contains(&cpu),
        "{}: {h}",
        m.name
    );
    // The node's workers, as /proc/self/task/*/status has them. A node that lost its only
    // CPU has no threads of its own (another pool serves it).
    let threads = h["threads_after"][node.to_string()].as_array();
    assert!(
        threads.is_some_and(|t| !t.is_empty()) || ids(&h["node_cpus_after"]).is_empty(),
        "{}: no pool threads on a node with CPUs left: {h}",
        m.name
    );
    for t in threads.into_iter().flatten() {
        let allowed = ids(&t["cpus_allowed"]);
        assert!(
            !allowed.is_empty() && !allowed.contains(&cpu),
            "{}: a worker of node {node} is still allowed on CPU {cpu}: {t}",
            m.name
        );
    }
    let seen = ids(&h["cpus_seen_after"]);
    assert!(
        !seen.is_empty() && !seen.contains(&cpu),
        "{}: pool ran on {seen:?}: {h}",
        m.name
    );
    assert!(
        h["notified_online_again"].as_bool() == Some(true)
            && num(&g["online_again"], "online_again generation") > num(&g["offline"], "offline"),
        "{}: onlining the CPU again was not seen: {h}",
        m.name
    );
}

fn check_tier(m: &LabMachine, s: &Sections) {
    check_tier_json(m, section(s, "tier"))
}

/// The central claim, judged by the kernel's counters: node N's values have their page
/// cache in node N's FilePages, their memory-tier copies in node N's AnonPages and in
/// mappings numa_maps shows on N, and the tier stays there after threads on the other nodes
/// read it with `kernel.numa_balancing=1`.
fn check_tier_json(m: &LabMachine, t: &Value) {
    assert_eq!(t["numa_balancing"], "1", "{}: {t}", m.name);
    let bytes = num(&t["bytes_per_node"], "bytes_per_node") as f64;
    assert!(bytes >= 16.0 * 1048576.0, "{}: {t}", m.name);
    let pages = bytes / 4096.0;
    let nodes: Vec<u32> = m.nodes.iter().map(|n| n.0).collect();
    assert_eq!(ids(&t["nodes"]), nodes, "{}: nodes with memory", m.name);
    let mib = |v: f64| v / 1048576.0;
    let at = |v: &Value, node: u32| -> f64 {
        v[node.to_string()]
            .as_i64()
            .unwrap_or_else(|| panic!("{}: no node {node} in {v}", m.name)) as f64
    };
    let page_cache = || {
        for &n in &nodes {
            let pc = &t["page_cache"][n.to_string()];
            assert_eq!(
                num(&pc["values_read_back"], "values_read_back"),
                num(&t["values_per_node"], "values_per_node"),
                "{}: {pc}",
                m.name
            );
            let d = &pc["file_pages_delta"];
            assert!(
                at(d, n) >= 0.9 * bytes,
                "{}: reading node {n}'s {:.0} MiB after drop_caches grew its FilePages by only {:.1} MiB: {d}",
                m.name,
                mib(bytes),
                mib(at(d, n))
            );
            for &o in nodes.iter().filter(|&&o| o != n) {
                assert!(
                    at(d, o) <= 0.1 * bytes,
                    "{}: reading node {n}'s values grew node {o}'s FilePages by {:.1} MiB: {d}",
                    m.name,
                    mib(at(d, o))
                );
            }
        }
    };
    let placement = || {
        for &n in &nodes {
            // After the reads 80%: AnonPages also counts memory that is not the tier (the heap
            // tier of issue 13 left node 0 with 45%; the tier's own pages are judged exactly by
            // numa_maps below).
            for (when, key, share) in [
                ("after the puts", "tier_anon_delta_after_put", 0.9),
                (
                    "after reads from other nodes",
                    "tier_anon_delta_after_reads",
                    0.8,
                ),
            ] {
                let d = &t[key];
                assert!(
                    at(d, n) >= share * bytes,
                    "{}: {when}, node {n}'s AnonPages hold {:.1} of its {:.0} MiB memory tier: {d} (migrated: {})",
                    m.name,
                    mib(at(d, n)),
                    mib(bytes),
                    t["numa_pages_migrated_during_reads"]
                );
            }
            for key in [
                "tier_prefer_pages_after_put",
                "tier_prefer_pages_after_reads",
            ] {
                let per = &t[key][n.to_string()];
                let total: f64 = per
                    .as_object()
                    .map(|o| o.values().filter_map(Value::as_u64).sum::<u64>() as f64)
                    .unwrap_or(0.0);
                let on = per[n.to_string()].as_u64().unwrap_or(0) as f64;
                // The nodes have room: nothing of the tier may be elsewhere.
                assert!(
                    total >= 0.9 * pages && on >= 0.99 * total,
                    "{}: {key}: numa_maps shows {on} of {total} pages of node {n}'s tier mappings on node {n} (tier: {pages} pages): {}",
                    m.name,
                    t[key]
                );
            }
        }
    };
    let tier_hits = || {
        // The reads were memory-tier hits: after a drop_caches, a read of a shard's file would
        // bring its pages back (pgpgin, FilePages); the tier's hits read no disk at all. And the
        // engine counted a hit on each node for every read of its values.
        let pgpgin = num(&t["pgpgin_kib_during_reads"], "pgpgin_kib_during_reads") as f64 * 1024.0;
        assert!(
            pgpgin <= 0.05 * bytes,
            "{}: the reads of the tier read {:.1} MiB from disk: not memory-tier hits",
            m.name,
            mib(pgpgin)
        );
        for &n in &nodes {
            let d = &t["file_pages_delta_during_reads"];
            assert!(
                at(d, n) <= 0.05 * bytes,
                "{}: the reads of the tier grew node {n}'s FilePages by {:.1} MiB: not memory-tier hits",
                m.name,
                mib(at(d, n))
            );
            let key = n.to_string();
            assert_eq!(
                num(&t["hits_during_reads"][&key], "hits_during_reads"),
                num(&t["reads_per_node"][&key], "reads_per_node"),
                "{}: hits counted on node {n} against reads of its values",
                m.name
            );
        }
    };
    let reads = || {
        let expected = num(&t["reads_expected"], "reads_expected");
        assert!(expected > 0, "{}: {t}", m.name);
        assert_eq!(num(&t["reads_ok"], "reads_ok"), expected, "{}", m.name);
        // The kernel's own count of NUMA-balancing migrations while the readers ran, for the
        // whole VM: with the tier on the heap (before the fix) this section saw 11,857 pages
        // migrated; with the node-bound tier 2 (2 nodes) and 30 (3 nodes), none of them the
        // tier's (numa_maps above). Half a node's tier is the bound.
        let migrated = num(
            &t["numa_pages_migrated_during_reads"],
            "numa_pages_migrated",
        );
        assert!(
            (migrated as f64) < 0.5 * pages,
            "{}: the kernel migrated {migrated} pages while other nodes read the tier (limit {:.0})",
            m.name,
            0.5 * pages
        );
    };
    parts(&[
        ("page cache", &page_cache),
        ("tier placement", &placement),
        ("memory-tier hits", &tier_hits),
        ("reads", &reads),
    ]);
}

/// Run every part of a check, then fail with the messages of all that failed: one broken
/// part must not hide the state of the others.
fn parts(list: &[(&str, &dyn Fn())]) {
    let failed: Vec<String> = list
        .iter()
        .filter_map(|(name, f)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .err()
                .map(|e| format!("[{name}] {}", panic_text(&*e)))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The message of a caught panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn check_daemon(m: &LabMachine, s: &Sections) {
    check_daemon_json(m, section(s, "daemon"))
}

/// Node `n`'s memory tier in the daemon, as its numa_maps shows the `prefer:n` mappings:
/// at least 90% of `values` MiB present, and at least 99% of that on `n`.
fn check_daemon_tier(m: &LabMachine, what: &str, view: &Value, n: u32, values: u64) {
    let per = &view["tier_prefer_pages"][n.to_string()];
    let (total, on) = pages_on(per, n);
    let want = values * 256;
    assert!(
        total as f64 >= 0.9 * want as f64 && on as f64 >= 0.99 * total as f64,
        "{}: {what}: the daemon's numa_maps shows {on} of {total} pages of node {n}'s tier mappings on node {n} (its {values} values: {want} pages): {}",
        m.name,
        view["tier_prefer_pages"]
    );
}

/// Reads through the daemon after a drop_caches were memory-tier hits: no disk read, no
/// page cache grown, and the daemon counted a hit on each node for each read of its values.
fn check_daemon_reads(m: &LabMachine, what: &str, r: &Value, node_of: &dyn Fn(&str) -> u32) {
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let per_key = r["reads_per_key"].as_object().expect("reads_per_key");
    assert!(!per_key.is_empty(), "{}: {what}: no reads: {r}", m.name);
    for (key, n) in per_key {
        *want.entry(node_of(key).to_string()).or_default() += n.as_u64().unwrap_or(0);
    }
    for (id, _, _) in &m.nodes {
        let key = id.to_string();
        assert_eq!(
            num(&r["hits_delta"][&key], "hits_delta"),
            want.get(&key).copied().unwrap_or(0),
            "{}: {what}: the daemon's hits on node {id} against the reads of its values: {r}",
            m.name
        );
        let grown = r["file_pages_delta"][&key]
            .as_i64()
            .unwrap_or_else(|| panic!("{}: no file_pages_delta: {r}", m.name));
        assert!(
            grown < 4 << 20,
            "{}: {what}: reads grew node {id}'s FilePages by {grown} bytes: not memory-tier hits",
            m.name
        );
    }
    let pgpgin = num(&r["pgpgin_kib"], "pgpgin_kib");
    assert!(
        pgpgin < 4096,
        "{}: {what}: the reads read {pgpgin} KiB from disk: not memory-tier hits: {r}",
        m.name
    );
}

/// numa-cached itself: with `local_node` a client's values go to its node and the tier's
/// pages with them (and stay there while clients on other nodes read them); with
/// `interleave` one client's values spread over every node with memory, each value's tier
/// pages on the node its Put answered; the workers may run on their node's CPUs only; and
/// reads are memory-tier hits.
fn check_daemon_json(m: &LabMachine, d: &Value) {
    let values = num(&d["values_per_node"], "values_per_node");
    assert_eq!(
        num(&d["value_bytes"], "value_bytes"),
        1 << 20,
        "{}: {d}",
        m.name
    );
    let cpu_nodes: Vec<u32> = m
        .nodes
        .iter()
        .filter(|n| !n.1.is_empty())
        .map(|n| n.0)
        .collect();
    assert_eq!(ids(&d["cpu_nodes"]), cpu_nodes, "{}", m.name);
    let l = &d["local_node"];
    let local_placement = || {
        for &n in &cpu_nodes {
            let puts = l["puts_by_client_node"][n.to_string()]["nodes"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no puts from node {n}: {l}", m.name));
            assert_eq!(puts.len() as u64, values, "{}: {l}", m.name);
            assert!(
                puts.values().all(|v| v.as_u64() == Some(u64::from(n))),
                "{}: local_node: a client on node {n} had values put elsewhere: {puts:?}",
                m.name
            );
            for when in ["after_put", "after_reads"] {
                check_daemon_tier(m, &format!("local_node {when}"), &l[when], n, values);
            }
        }
    };
    let workers = || {
        for &n in &cpu_nodes {
            let workers = &l["after_put"]["workers"][n.to_string()];
            let cpus = &m.nodes.iter().find(|x| x.0 == n).expect("node").1;
            assert!(
                all_allowed(workers, cpus),
                "{}: the daemon's node {n} workers may run elsewhere than {cpus:?}: {workers}",
                m.name
            );
        }
    };
    let local_reads = || {
        // A client's keys are `l{node}-{i}`.
        let local_node_of =
            |key: &str| -> u32 { key[1..key.find('-').expect("key")].parse().expect("node") };
        // The kernel's migration count is not judged here: NUMA balancing moves the
        // daemon's and the clients' message buffers (1,000-1,500 pages a run); the tier's own
        // pages are judged by numa_maps after the reads (`local_node placement`).
        check_daemon_reads(m, "local_node", &l["reads"], &local_node_of);
    };
    let interleave = || {
        let i = &d["interleave"];
        let placed = i["puts"]["nodes"].as_object().expect("interleave puts");
        let mut per_node: BTreeMap<u32, u64> = BTreeMap::new();
        for v in placed.values() {
            *per_node.entry(num(v, "node") as u32).or_default() += 1;
        }
        let all: Vec<u32> = m.nodes.iter().map(|n| n.0).collect();
        assert_eq!(
            per_node.keys().copied().collect::<Vec<_>>(),
            all,
            "{}: interleave did not spread the values over every node with memory: {per_node:?}",
            m.name
        );
        for (&n, &c) in &per_node {
            check_daemon_tier(m, "interleave", &i["after_put"], n, c);
        }
        let spread_node_of = |key: &str| -> u32 { num(&placed[key], "node") as u32 };
        check_daemon_reads(m, "interleave", &i["reads"], &spread_node_of);
    };
    parts(&[
        ("local_node placement", &local_placement),
        ("workers", &workers),
        ("local_node reads", &local_reads),
        ("interleave", &interleave),
    ]);
}

/// The machines named in `NUMA_LAB_MACHINES` (comma separated; for working on one check),
/// else all. Under `CI=true` every machine runs.
fn chosen(all: Vec<LabMachine>) -> Vec<LabMachine> {
    let Ok(names) = std::env::var("NUMA_LAB_MACHINES") else {
        return all;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        eprintln!("lab: NUMA_LAB_MACHINES is ignored under CI=true: every machine runs");
        return all;
    }
    let names: Vec<&str> = names.split(',').map(str::trim).collect();
    let some: Vec<LabMachine> = all
        .into_iter()
        .filter(|m| names.contains(&m.name))
        .collect();
    assert!(
        !some.is_empty(),
        "NUMA_LAB_MACHINES names no lab machine: {names:?}"
    );
    eprintln!(
        "lab: only {:?} (NUMA_LAB_MACHINES)",
        some.iter().map(|m| m.name).collect::<Vec<_>>()
    );
    some
}

/// How many guests run at once (`NUMA_LAB_VMS_AT_ONCE`, default 1). Each guest's four
/// emulated CPUs are host threads: three guests side by side on a 2-core host starved each
/// other (sections timed against the clock failed, a guest hung before its init), and took
/// no less time in all than one after another.
fn vms_at_once() -> usize {
    std::env::var("NUMA_LAB_VMS_AT_ONCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// Boot every machine, at most [`vms_at_once`] at a time; their consoles, in order.
fn boot_all(machines: &[LabMachine], kernel: &Path, initrd: &Path) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let consoles = std::sync::Mutex::new(vec![String::new(); machines.len()]);
    std::thread::scope(|s| {
        for _ in 0..vms_at_once().min(machines.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(m) = machines.get(i) else { break };
                    let console = boot(m, kernel, initrd);
                    consoles.lock().unwrap()[i] = console;
                }
            });
        }
    });
    consoles.into_inner().unwrap()
}

#[test]
fn numa_lab_multi_node_vms() {
    let Some(kernel) = kernel() else { return };
    let _ = LAB_KERNEL.set(kernel.clone());
    let bins = binaries();
    let work = tempfile::tempdir().expect("temporary directory");
    let initrd = initramfs(work.path(), &bins, &kernel);
    let started = Instant::now();
    let machines = chosen(machines());
    let consoles = boot_all(&machines, &kernel, &initrd);
    eprintln!("lab: {} VMs in {:?}", machines.len(), started.elapsed());
    let mut failures = Vec::new();
    for (m, console) in machines.iter().zip(&consoles) {
        if !console.contains("@@DONE") {
            failures.push(format!(
                "{}: the VM did not finish; console log in {}:\n{console}",
                m.name,
                cache_dir()
                    .join(format!("{}.console.log", m.name))
                    .display()
            ));
            continue;
        }
        let s = sections(console);
        let took: Vec<String> = s
            .iter()
            .map(|(name, sec)| {
                format!(
                    "{name} {}",
                    sec.seconds.map_or("?".into(), |t| format!("{t} s"))
                )
            })
            .collect();
        eprintln!("lab: {} sections: {}", m.name, took.join(", "));
        let mut checks: Vec<(&str, Check)> = vec![
            ("topology", check_topology),
            ("watcher-topology", check_watcher_topology),
            ("diagnose", check_diagnose),
            ("pools", check_pools),
            ("bind", check_bind),
            ("hotplug", check_hotplug),
        ];
        if m.tier {
            checks.push(("tier", check_tier));
            checks.push(("daemon", check_daemon));
        }
        // Run every check and report all failures together: one broken part must not hide
        // the state of the others.
        for (name, check) in checks {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(m, &s)));
            if let Err(e) = r {
                let msg = panic_text(&*e);
                failures.push(format!("{}: {name}: {msg}", m.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "NUMA lab failures (console logs in {}):\n{}",
        cache_dir().display(),
        failures.join("\n")
    );
}

/// The checks themselves can fail: on a section that exited non-zero, and on JSON that is
/// right except for one missing field (where `Null == Null` or `None < Some` used to pass).
#[test]
fn the_checks_fail_on_a_failed_section_or_a_missing_field() {
    use serde_json::json;
    let m = &machines()[0];
    let fails = |what: &str, f: &dyn Fn()| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        assert!(r.is_err(), "{what} passed");
    };
    let s = sections(
        "x\n@@BEGIN pools\n{\"a\": 1}\n@@END pools rc=1\n@@BEGIN bind\n{\"b\": 2}\n@@END bind rc=0\n",
    );
    fails("a section with rc=1", &|| {
        section(&s, "pools");
    });
    assert_eq!(section(&s, "bind")["b"], 2);
    fails("a missing section", &|| {
        section(&s, "hotplug");
    });

    // diagnose: all right but for the kernel's count of node 1's bound pages.
    let node = |id: u32, cpus: &[u32]| {
        json!({ "node_id": id, "pinning": "ok", "cpus_observed": cpus,
                "pages_requested": 64, "pages_on_node": 64 })
    };
    let mut d = json!({
        "report": {
            "nodes": [node(0, &[0, 1]), node(1, &[2, 3])],
            "interleave": { "pages_per_node": { "0": 128, "1": 128 } },
        },
        "other_node_delta": { "0": 66, "1": 70 },
        "interleave_hit_delta": { "0": 129, "1": 128 },
    });
    check_diagnose_json(m, &d);
    d["other_node_delta"]["1"] = json!(3);
    fails("diagnose whose bound pages the kernel did not see", &|| {
        check_diagnose_json(m, &d)
    });
    d["other_node_delta"]["1"] = json!(70);
    d["interleave_hit_delta"]["0"] = json!(2);
    fails("diagnose whose interleave the kernel did not see", &|| {
        check_diagnose_json(m, &d)
    });

    // pools: all right but for node 1's pages (numa_maps), then its threads' CPUs.
    let threads = |cpus: &[u32]| json!([{ "cpus_allowed": cpus }, { "cpus_allowed": cpus }]);
    let pages = |n: &str| {
        json!({ "pages": 32, "mapping": { "policy": "default", "pages_per_node": { n: 32 } },
                "job_policy": format!("bind:{n}"),
                "job_thread": { "cpus_allowed": if n == "0" { [0, 1] } else { [2, 3] } } })
    };
    let mut p = json!({
        "modes": { "preferred_many": true, "weighted_interleave": false },
        "threads": { "0": threads(&[0, 1]), "1": threads(&[2, 3]) },
        "cpus_seen": { "0": [0, 1], "1": [2, 3] },
        "pages": { "0": pages("0"), "1": pages("1") },
        "serving": { "0": 0, "1": 1 },
    });
    check_pools_json(m, &p, (6, 1));
    p["pages"]["1"]["mapping"]["pages_per_node"] = json!({ "0": 32 });
    fails("pools whose pages landed on the wrong node", &|| {
        check_pools_json(m, &p, (6, 1))
    });
    p["pages"]["1"] = pages("1");
    p["threads"]["1"] = threads(&[0, 1, 2, 3]);
    fails("pools whose threads may run anywhere", &|| {
        check_pools_json(m, &p, (6, 1))
    });
    p["threads"]["1"] = threads(&[2, 3]);
    p["pages"]["1"]["job_policy"] = json!("default");
    fails("pools whose job ran without a policy", &|| {
        check_pools_json(m, &p, (6, 1))
    });

    // bind: all right but for the report's page counts, then the buffer's pages.
    let t = json!({ "cpus_allowed": [2, 3], "mems_allowed": [0, 1] });
    let moved = json!([t, t, t]);
    let mut b = json!({
        "from_node": 0, "to_node": 1, "to_cpus": [2, 3],
        "threads_after": moved,
        "report": { "threads_pinned": 3, "pages_on_node_before": 10, "pages_on_node_after": 1100 },
        "buffer_pages": 1024,
        "buffer_before": { "pages_per_node": { "0": 1024 } },
        "buffer_after": { "pages_per_node": { "1": 1024 } },
    });
    check_bind_json(m, &b);
    b["report"]
        .as_object_mut()
        .unwrap()
        .remove("pages_on_node_before");
    fails("bind without pages_on_node_before", &|| {
        check_bind_json(m, &b)
    });
    b["report"]["pages_on_node_before"] = json!(10);
    b["buffer_after"]["pages_per_node"] = json!({ "0": 24, "1": 1000 });
    fails("bind that left pages behind", &|| check_bind_json(m, &b));
    b["buffer_after"]["pages_per_node"] = json!({ "1": 1024 });
    b["threads_after"][2]["cpus_allowed"] = json!([0, 1]);
    fails("bind that left a thread behind", &|| check_bind_json(m, &b));

    // hotplug: all right but for the generation before, then a worker left on the CPU.
    let mut h = json!({
        "node": 1, "cpu": 3, "notified": true, "notified_online_again": true,
        "elapsed_ms": 500, "rescan_interval_s": 3600, "uevents_enabled": true, "uevents_seen": 2,
        "generations": { "before": 1, "offline": 2, "online_again": 3 },
        "node_cpus_after": [2], "threads_after": { "1": [{ "cpus_allowed": [2] }] },
        "cpus_seen_after": [2],
    });
    check_hotplug_json(m, &h);
    h["generations"].as_object_mut().unwrap().remove("before");
    fails("hotplug without the generation before", &|| {
        check_hotplug_json(m, &h)
    });
    h["generations"]["before"] = json!(1);
    h["threads_after"]["1"] = json!([{ "cpus_allowed": [2, 3] }]);
    fails("hotplug with a worker still allowed on the CPU", &|| {
        check_hotplug_json(m, &h)
    });
    h["threads_after"]["1"] = json!([{ "cpus_allowed": [2] }]);
    h["rescan_interval_s"] = json!(30);
    fails("hotplug that a re-scan could explain", &|| {
        check_hotplug_json(m, &h)
    });

    // daemon: all right, then each defect.
    let tier = |n0: u64, n1: u64| json!({ "0": { "0": n0 * 256 }, "1": { "1": n1 * 256 } });
    let workers = json!({
        "0": [{ "cpus_allowed": [0, 1], "policy": "bind:0" }],
        "1": [{ "cpus_allowed": [2, 3], "policy": "bind:1" }],
    });
    let puts = |n: u32| {
        let o: serde_json::Map<String, Value> =
            (0..16).map(|i| (format!("l{n}-{i}"), json!(n))).collect();
        json!({ "nodes": o })
    };
    let reads = |per_key: Value, h0: u64, h1: u64| {
        json!({ "reads_per_key": per_key, "hits_delta": { "0": h0, "1": h1 },
                "pgpgin_kib": 12, "file_pages_delta": { "0": 4096, "1": 0 },
                "numa_pages_migrated": 3 })
    };
    let spread: serde_json::Map<String, Value> =
        (0..32).map(|i| (format!("i-{i}"), json!(i % 2))).collect();
    let mut dm = json!({
        "values_per_node": 16, "value_bytes": 1 << 20, "cpu_nodes": [0, 1],
        "local_node": {
            "puts_by_client_node": { "0": puts(0), "1": puts(1) },
            "after_put": { "tier_prefer_pages": tier(16, 16), "workers": workers },
            "after_reads": { "tier_prefer_pages": tier(16, 16), "workers": workers },
            "reads": reads(json!({ "l1-0": 5, "l0-3": 7 }), 7, 5),
        },
        "interleave": {
            "puts": { "nodes": spread },
            "after_put": { "tier_prefer_pages": tier(16, 16) },
            "reads": reads(json!({ "i-0": 1, "i-1": 1, "i-2": 1 }), 2, 1),
        },
    });
    check_daemon_json(m, &dm);
    let good = dm.clone();
    dm["local_node"]["puts_by_client_node"]["1"]["nodes"]["l1-4"] = json!(0);
    fails("local_node that put a value on another node", &|| {
        check_daemon_json(m, &dm)
    });
    dm = good.clone();
    dm["local_node"]["after_reads"]["tier_prefer_pages"]["0"] = json!({ "0": 2000, "1": 2096 });
    fails("a daemon tier that moved", &|| check_daemon_json(m, &dm));
    dm = good.clone();
    dm["local_node"]["reads"]["pgpgin_kib"] = json!(16384);
    fails("daemon reads from disk", &|| check_daemon_json(m, &dm));
    dm = good.clone();
    dm["local_node"]["reads"]["hits_delta"]["0"] = json!(0);
    fails("daemon hits counted on the wrong node", &|| {
        check_daemon_json(m, &dm)
    });
    dm = good.clone();
    dm["local_node"]["after_put"]["workers"]["1"][0]["cpus_allowed"] = json!([0, 1, 2, 3]);
    fails("daemon workers allowed anywhere", &|| {
        check_daemon_json(m, &dm)
    });
    dm = good.clone();
    dm["interleave"]["puts"]["nodes"] = json!(
        (0..32)
            .map(|i| (format!("i-{i}"), json!(0)))
            .collect::<serde_json::Map<_, _>>()
    );
    fails("interleave that did not spread", &|| {
        check_daemon_json(m, &dm)
    });

    // tier: all right but for the migration count.
    let mib24 = 24u64 << 20;
    let per_node = json!({ "0": mib24, "1": 0 });
    let other = json!({ "0": 0, "1": mib24 });
    let mut t = json!({
        "numa_balancing": "1", "bytes_per_node": mib24, "values_per_node": 24, "nodes": [0, 1],
        "page_cache": {
            "0": { "values_read_back": 24, "file_pages_delta": per_node },
            "1": { "values_read_back": 24, "file_pages_delta": other },
        },
        "tier_anon_delta_after_put": { "0": mib24, "1": mib24 },
        "tier_anon_delta_after_reads": { "0": mib24, "1": mib24 },
        "tier_prefer_pages_after_put": { "0": { "0": 6144 }, "1": { "1": 6144 } },
        "tier_prefer_pages_after_reads": { "0": { "0": 6144 }, "1": { "1": 6144 } },
        "reads_expected": 100, "reads_ok": 100, "numa_pages_migrated_during_reads": 0,
        "pgpgin_kib_during_reads": 8, "file_pages_delta_during_reads": { "0": 4096, "1": 0 },
        "hits_during_reads": { "0": 72, "1": 72 }, "reads_per_node": { "0": 72, "1": 72 },
    });
    check_tier_json(m, &t);
    let good = t.clone();
    t["pgpgin_kib_during_reads"] = json!(24 << 10);
    fails("tier reads from disk", &|| check_tier_json(m, &t));
    t = good.clone();
    t["hits_during_reads"]["1"] = json!(0);
    fails("tier reads not counted as hits", &|| check_tier_json(m, &t));
    t = good;
    t.as_object_mut()
        .unwrap()
        .remove("numa_pages_migrated_during_reads");
    fails("tier without the migration count", &|| {
        check_tier_json(m, &t)
    });
    // And the defect of issue 13: half of node 0's tier moved to node 1.
    t["numa_pages_migrated_during_reads"] = json!(8709);
    fails("tier with 8709 pages migrated", &|| check_tier_json(m, &t));
    t["numa_pages_migrated_during_reads"] = json!(0);
    t["tier_prefer_pages_after_reads"]["0"] = json!({ "0": 3000, "1": 3144 });
    fails("tier pages on the wrong node", &|| check_tier_json(m, &t));
}

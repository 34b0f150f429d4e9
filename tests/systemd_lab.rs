//! The service on a real systemd host (issue 11): boots a Debian userland with systemd as
//! PID 1, polkitd and 2 emulated NUMA nodes under QEMU (tests/systemd/recipe.sh, the
//! project's own copy of the lab), installs numa-cache and runs tests/systemd/checks.sh
//! inside as root. Two boots:
//! - `make install PREFIX=/usr` as the README tells a systemd user, under dbus-daemon;
//! - the Debian package (`apt install ./numa-cache_*.deb`, then `apt purge`), under
//!   dbus-broker.
//!
//! Each boot checks every item of issue 11's list (bus activation without enable, every
//! interface through busctl and numacachectl, polkit for labuser and a group rules file, the
//! Cache interface and group numacache, pinned workers, BindProcess on a root process with
//! capabilities and on another user's process, CPU hotplug, snapshots, SIGKILL and watchdog
//! restarts with data intact, stop+start without crash recovery, the journal, seccomp,
//! `systemd-analyze security`); the check that costs two more daemon restarts (BindProcess
//! without CAP_SYS_PTRACE: kernel and unit, not bus or install path) runs in the first boot
//! only. The guest prints `ok - NAME` / `not ok - NAME: detail`; this
//! test fails on any `not ok` and on any required check that did not run.
//!
//! A third test runs lintian on the package: no errors allowed.
//!
//! The package is the one `make deb` builds, as a user runs it: the release build of
//! numa-cached and the `cli` profile build of numacachectl (debian/rules), in a copy of the
//! sources (so the tree under test is only read) whose target/ is kept in
//! /var/cache/numa-cache-deb, so a later run rebuilds only what cargo finds changed. Built
//! once per test process (both tests needing it wait for the one build), under an flock
//! against other processes. The `make install` boot stages the executables
//! `cargo test` built (debug).
//!
//! Nothing here installs anything: scripts/test.sh installs every tool up front, and a
//! missing one fails the test at once naming it and its package (under CI=true; outside CI
//! it skips). The image (mmdebstrap, 1-2 minutes once, cached in
//! /var/cache/numa-cache-systemd-lab) is built by recipe.sh under its own flock, in a
//! temporary folder renamed into place only once checked; here once per process.

mod support;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn recipe() -> PathBuf {
    repo().join("tests/systemd/recipe.sh")
}

/// Where the executables `cargo test` built are.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_numa-cached"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("systemd-lab");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What the lab (recipe.sh: the image build and the boots) runs on the host.
const LAB_TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("make", "make"),
    ("strip", "binutils"),
    ("flock", "util-linux"),
    ("tar", "tar"),
];

/// What `make deb` runs: dpkg-buildpackage, debhelper, dpkg-checkbuilddeps's implicit build
/// dependency build-essential (its list file), and cargo (rustup).
const DEB_TOOLS: &[(&str, &str)] = &[
    ("dpkg-buildpackage", "dpkg-dev"),
    ("dpkg-parsechangelog", "dpkg-dev"),
    ("dh", "debhelper"),
    ("/usr/share/build-essential/list", "build-essential"),
    ("make", "make"),
    ("cargo", "cargo from rustup, see README"),
];

/// Root and every tool of `tools`: the first missing one fails the test (CI) or skips it.
fn have(tools: &[(&str, &str)]) -> bool {
    support::require_root() && tools.iter().all(|(t, p)| support::require_tool(t, p))
}

/// An exclusive flock on `path` (created if missing), held while the File lives.
fn lock(path: &Path) -> File {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this File owns; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    f
}

/// The lab's image, built (or found current) once per test process; recipe.sh takes its
/// cache's flock, so concurrent processes wait for one build.
fn image() -> &'static Result<(), String> {
    static IMAGE: OnceLock<Result<(), String>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(recipe())
            .arg("build")
            .output()
            .map_err(|e| format!("running recipe.sh build: {e}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "systemd lab image: {:.0} s\n{log}",
            t0.elapsed().as_secs_f64()
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("recipe.sh build failed:\n{log}"))
        }
    })
}

/// The .deb `make deb` built from this tree, once per test process.
fn deb() -> &'static Result<PathBuf, String> {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DEB.get_or_init(build_deb)
}

/// The package build's own folder, outside any checkout: the copy of the sources `make deb`
/// runs in, and the target/ it builds into, kept across runs and checkouts so that cargo
/// rebuilds only what its fingerprints find changed (dependencies are reused; this crate is
/// rebuilt when its sources differ). One build at a time (its flock); the package is copied
/// out to this checkout's work folder, so the lock is not held while it is used.
const DEB_CACHE: &str = "/var/cache/numa-cache-deb";

fn build_deb() -> Result<PathBuf, String> {
    let cache = Path::new(DEB_CACHE);
    std::fs::create_dir_all(cache).map_err(|e| format!("creating {DEB_CACHE}: {e}"))?;
    let _one_build = lock(&cache.join("lock"));
    let src = cache.join("src");
    let _ = std::fs::remove_dir_all(&src);
    // What a killed build left beside the sources (dpkg-buildpackage writes to ..).
    for e in std::fs::read_dir(cache)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("numa-cache") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let copy = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' --exclude=./target --exclude=./.git -cf - . | tar -C '{}' -xf -",
            repo().display(),
            src.display()
        ))
        .status()
        .map_err(|e| e.to_string())?;
    if !copy.success() {
        return Err("copying the sources failed".into());
    }
    let target = cache.join("target");
    let _ = std::fs::remove_dir_all(target.join("debian"));
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&target, src.join("target")).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let log_path = work_dir().join("make-deb.log");
    let log = File::create(&log_path).map_err(|e| e.to_string())?;
    let status = Command::new("make")
        .arg("deb")
        .current_dir(&src)
        // The build a user gets: no folder of ours redirects cargo's output.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("running make deb: {e}"))?;
    eprintln!(
        "make deb took {:.0} s (log: {})",
        t0.elapsed().as_secs_f64(),
        log_path.display()
    );
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        return Err(format!(
            "make deb failed ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let built = std::fs::read_dir(target.join("debian"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("numa-cache_") && name.ends_with(".deb")
        })
        .ok_or("make deb wrote no target/debian/numa-cache_*.deb")?;
    // Copied under a temporary name, renamed into place: never a half-written package.
    let out = work_dir().join(built.file_name().unwrap());
    let tmp = out.with_extension(format!("deb.{}", std::process::id()));
    std::fs::copy(&built, &tmp).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The checks every boot must report (by name prefix), whatever the install path and bus.
const REQUIRED: &[&str] = &[
    "install: group numacache exists",
    "install: the bus never saw an unknown group",
    "install: group created before the bus policy landed",
    "activation: unit not enabled",
    "activation: a bus call starts the daemon",
    "activation: numa-cached.service active",
    "activation: no failed activation in the journal",
    "busctl Topology.GetTopology",
    "busctl Node node1 Cpus",
    "busctl ObjectManager",
    "numacachectl topology --json",
    "busctl Strategy.SetStrategy",
    "numacachectl strategy set round_robin",
    "busctl Strategy.Optimize cpu_intensive on node 1: the reply",
    "Optimize cpu_intensive on node 1: the Strategy properties",
    "Optimize cpu_intensive on node 1: a put from node 0's CPU lands on node 1",
    "busctl Strategy.Optimize memory_intensive: the reply",
    "busctl Strategy.Optimize memory_intensive: the Strategy properties",
    "numacachectl optimize balanced: local_node, preferred, no preference",
    "busctl CacheStats.GetStats",
    "numacachectl stats --json",
    "busctl CacheStats.ResetCounters zeroes hits, misses, evictions",
    "busctl CacheStats.GetHistory shows the put",
    "busctl CacheStats.GetHistory keeps to the range",
    "numacachectl history shows node 1",
    "numacachectl get returns the same bytes",
    "busctl Cache.Get",
    "busctl Cache.Delete",
    "snapshot create",
    "snapshot is a read-only btrfs subvolume",
    "snapshot delete",
    "workers pinned: node0 on 0-1, node1 on 2-3",
    "BindProcess target is a root process with capabilities",
    "BindProcess on a root process with capabilities",
    "BindProcess target belongs to labuser",
    "BindProcess on another user's process",
    "BindProcess on a missing pid is NotFound",
    "polkit denies labuser SetStrategy (AccessDenied)",
    "polkit denies labuser BindProcess",
    "polkit grants set-strategy to group numacache-admin (rules file)",
    "journal: an audit line for the polkit denial",
    "journal: an audit line for the polkit grant",
    "Cache refused by the bus to labuser outside group numacache",
    "Cache Put works for labuser in group numacache",
    "Cache Get by labuser returns the bytes",
    "hotplug: Generation bumped by the uevent",
    "hotplug: node1 workers re-pinned to CPU 2",
    "hotplug: CPU 3 back, node1 workers on 2-3, by the uevent",
    "SIGKILL: restarted",
    "SIGKILL: data intact",
    "SIGKILL: the next start checks the cache as after a crash",
    "watchdog: a stopped daemon was restarted",
    "watchdog: data intact",
    "stop: unit inactive (not failed)",
    "stop+start: no crash recovery",
    "stop+start: data intact",
    "journal: no debug formatting",
    "journal: no informational line at priority 5",
    "journal: 'cache open' at priority 6",
    "no seccomp denial",
    "systemd-analyze security",
];

/// Only one VM at a time: two TCG guests on a 2-core machine would each take twice as long.
static VM: Mutex<()> = Mutex::new(());

/// Boot the lab with `bus`, run checks.sh with LAB_INSTALL=`install`; returns the guest's
/// output and the test's exit code.
fn run_lab(install: &str, checks: &str, bus: &str, stage: Option<&Path>) -> (String, i32) {
    if let Err(e) = image() {
        panic!("{e}");
    }
    let _one = VM.lock().unwrap_or_else(|e| e.into_inner());
    let script = work_dir().join(format!("run-{install}-{}.sh", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nexport LAB_INSTALL={install} LAB_CHECKS={checks}\nexec bash \"$LAB_REPO/tests/systemd/checks.sh\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(recipe())
        .arg("run")
        .arg(repo())
        .arg(&script)
        .arg(bin_dir())
        .env("LAB_BUS", bus)
        .env("LAB_KEEP", "0")
        .env("LAB_TEST_TIMEOUT", "600");
    if let Some(file) = stage {
        cmd.env("LAB_STAGE_FILES", file);
    }
    let t0 = std::time::Instant::now();
    let out = cmd.output().expect("running recipe.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "systemd lab ({install}, {bus}) took {:.0} s\n{stderr}",
        t0.elapsed().as_secs_f64()
    );
    (stdout, out.status.code().unwrap_or(-1))
}

/// Fail on any `not ok`, on a required check that did not run, or on a failed run.
fn assert_checks(label: &str, output: &str, rc: i32, extra: &[&str]) {
    println!("{output}");
    let failed: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("not ok - "))
        .collect();
    let ran: Vec<&str> = output
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ok - ")
                .or_else(|| l.strip_prefix("not ok - "))
        })
        .collect();
    let missing: Vec<&&str> = REQUIRED
        .iter()
        .chain(extra)
        .filter(|name| !ran.iter().any(|r| r.starts_with(**name)))
        .collect();
    assert!(
        failed.is_empty() && missing.is_empty() && rc == 0,
        "{label}: rc {rc}; {} checks failed:\n{}\nchecks that did not run: {missing:?}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn make_install_under_dbus_daemon() {
    if !have(LAB_TOOLS) {
        return;
    }
    let (out, rc) = run_lab("make", "full", "dbus", None);
    assert_checks(
        "make install, dbus-daemon",
        &out,
        rc,
        &[
            "install: make install PREFIX=/usr (README)",
            "BindProcess without CAP_SYS_PTRACE is a named privilege error",
        ],
    );
}

#[test]
fn debian_package_under_dbus_broker() {
    if !have(LAB_TOOLS) || !have(DEB_TOOLS) {
        return;
    }
    let deb = match deb() {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    };
    let (out, rc) = run_lab("deb", "bus", "broker", Some(&deb));
    assert_checks(
        "Debian package, dbus-broker",
        &out,
        rc,
        &[
            "install: apt install ./numa-cache_*.deb",
            "deb: unit enabled by the package",
            "deb: unit started by the package",
            "deb: apt purge numa-cache",
            "deb: purge leaves no file behind",
            "deb: the system group stays (policy)",
        ],
    );
}

#[test]
fn the_debian_package_is_lintian_clean() {
    if !have(DEB_TOOLS) || !have(&[("lintian", "lintian")]) {
        return;
    }
    let deb = match deb() {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    };
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("lintian {}:\n{text}", deb.display());
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    // Every warning left is explained in the README's Debian section.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for w in text.lines().filter(|l| l.starts_with("W: ")) {
        let tag = w.split_whitespace().nth(2).unwrap_or(w);
        assert!(
            readme.contains(tag),
            "lintian warning {tag} is not explained in README.md: {w}"
        );
    }
}

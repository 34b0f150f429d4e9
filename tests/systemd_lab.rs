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
//! A third test builds the package and runs lintian on it: no errors allowed.
//!
//! The executables are the ones `cargo test` built (debug); the package is built from them
//! with `dpkg-buildpackage` in a copy of the sources (CARGO=true: no second cargo build).
//! Needs root, QEMU, mmdebstrap (the image, 1-2 minutes once, cached in
//! /var/cache/numa-cache-systemd-lab), debhelper and lintian: installed with apt-get when
//! missing. Under CI=true nothing skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

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

/// Install Debian packages whose `tool` is missing (as root, with apt-get); false (skip)
/// outside CI when that is impossible.
fn ensure(tool: &str, package: &str) -> bool {
    let have = |t: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !have(tool) {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    support::require_tool(tool, package)
}

fn prerequisites() -> bool {
    support::require_root()
        && ensure("dpkg-buildpackage", "dpkg-dev")
        && ensure("dh", "debhelper")
        && ensure("make", "make")
}

/// The .deb built from this tree and the test executables, once per test run.
fn deb() -> &'static Result<PathBuf, String> {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DEB.get_or_init(build_deb)
}

fn build_deb() -> Result<PathBuf, String> {
    let pkg = work_dir().join("pkg");
    let _ = std::fs::remove_dir_all(&pkg);
    let src = pkg.join("numa-cache");
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
    let out = Command::new("dpkg-buildpackage")
        .args(["-us", "-uc", "-b"])
        .current_dir(&src)
        .env("CARGO", "true")
        .env("TARGET_DIR", bin_dir())
        // The test's own numacachectl, not the `cli` profile build `make` would install.
        .env("CLI_BIN", bin_dir().join("numacachectl"))
        .env("DEB_BUILD_OPTIONS", "noautodbgsym nocheck")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        return Err(format!(
            "dpkg-buildpackage failed:\n{}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::read_dir(&pkg)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("numa-cache_") && name.ends_with(".deb")
        })
        .ok_or_else(|| "dpkg-buildpackage wrote no numa-cache_*.deb".into())
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
    "numacachectl optimize balanced",
    "busctl CacheStats.GetStats",
    "numacachectl stats --json",
    "busctl CacheStats.ResetCounters",
    "numacachectl get returns the same bytes",
    "busctl Cache.Get",
    "busctl Cache.Delete",
    "snapshot create",
    "snapshot is a read-only btrfs subvolume",
    "snapshot delete",
    "workers pinned: node0 on 0-1, node1 on 2-3",
    "BindProcess target is a root process with capabilities",
    "BindProcess on a root process with capabilities",
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
    "hotplug: Generation bumped",
    "hotplug: node1 workers re-pinned to CPU 2",
    "hotplug: CPU 3 back, node1 workers on 2-3",
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
    let _one = VM.lock().unwrap_or_else(|e| e.into_inner());
    let script = work_dir().join(format!("run-{install}.sh"));
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
    if !prerequisites() {
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
    if !prerequisites() {
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
    if !prerequisites() || !ensure("lintian", "lintian") {
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

//! Shared checks for integration tests that need real components (btrfs, dbus-daemon,
//! polkitd, QEMU). The README's test command installs all of them; a test that still finds
//! one missing fails under `CI=true` and, outside CI, says what is missing and skips.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// True when running under CI (`CI=true`): nothing may skip there.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn missing(what: &str, how: &str) -> bool {
    skip(&format!("missing prerequisite: {what} ({how})"));
    false
}

/// Skip the calling test for `reason`: a failure under CI=true; else said on stderr and, when
/// `NUMA_CACHE_SKIP_LOG` names a file, appended there as "test name<TAB>reason" so that
/// scripts/test.sh can count and name the skipped tests (libtest hides a passing test's
/// stderr).
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("{reason}; under CI=true no test may skip");
    }
    eprintln!("SKIP: {reason}");
    if let Some(path) = std::env::var_os("NUMA_CACHE_SKIP_LOG") {
        let test = std::thread::current()
            .name()
            .unwrap_or("unknown test")
            .to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            let _ = writeln!(f, "{}: {test}\t{reason}", env!("CARGO_CRATE_NAME"));
        }
    }
}

/// Is `tool` on PATH (or an absolute path that exists)? `package` names the Debian package.
/// No test installs anything: scripts/test.sh installs every package up front, so under CI a
/// missing tool fails the test at once, naming the tool and its package.
pub fn require_tool(tool: &str, package: &str) -> bool {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    found
        || missing(
            tool,
            &format!("Debian package {package}; scripts/test.sh installs every test's packages"),
        )
}

/// Are we root? Loop mounts, private system buses and `runuser` need it.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || missing("root privileges", "run the tests as root (sudo)")
}

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
    let msg = format!("missing prerequisite: {what} (install with: {how})");
    if in_ci() {
        panic!("{msg}; under CI=true no test may skip");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// Is `tool` on PATH (or an absolute path that exists)? `package` names the Debian package.
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
    found || missing(tool, &format!("apt-get install -y {package}"))
}

/// Are we root? Loop mounts, private system buses and `runuser` need it.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || missing("root privileges", "run the tests as root (sudo)")
}

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

// ---- global set-up: users, groups and files in system folders, once and race-free -------

/// Holds the machine-wide set-up lock (an `flock` on a file in /run/lock) while alive: test
/// processes that create users or write system folders take it, so two of them (or two
/// threads of one) never check-then-create at once.
pub struct SetupLock(std::fs::File);

/// Take the machine-wide set-up lock, waiting for it.
pub fn setup_lock() -> SetupLock {
    use std::os::fd::AsRawFd;
    let dir = if Path::new("/run/lock").is_dir() {
        "/run/lock"
    } else {
        "/tmp"
    };
    let path = Path::new(dir).join("numa-cache-tests.setup.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own; it waits and cannot touch memory.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    SetupLock(f)
}

/// Run a user or group command under the set-up lock; its "already exists" exit (9, as
/// useradd and groupadd both use) counts as success.
fn run_exists_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (package passwd)"));
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(9),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make sure the system group `group` exists. Call under [`setup_lock`].
pub fn ensure_group(group: &str) {
    run_exists_ok("groupadd", &["--system", group]);
}

/// Make sure the system user `user` exists (no home, no login shell) with primary group
/// `primary` (None: useradd's default) and a member of each of `groups`, which must exist.
/// Call under [`setup_lock`].
pub fn ensure_user(user: &str, primary: Option<&str>, groups: &[&str]) {
    let mut args = vec![
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
    ];
    if let Some(g) = primary {
        args.extend(["--gid", g]);
    }
    let list = groups.join(",");
    if !groups.is_empty() {
        args.extend(["--groups", &list]);
    }
    args.push(user);
    run_exists_ok("useradd", &args);
    let known = Command::new("id")
        .arg(user)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        known,
        "useradd {user} exited as if it existed, but id {user} does not know it"
    );
    // A user left by an older run may lack a group: add it (usermod -aG is idempotent).
    if !groups.is_empty() {
        run_exists_ok("usermod", &["--append", "--groups", &list, user]);
    }
}

/// Write `bytes` to `path` (mode 0644) through a temporary file in the same folder and a
/// rename, so a reader (polkitd, dbus-daemon) never sees half a file. The temporary name
/// starts with a dot and ends in `.tmp`, which neither reads.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), path.display()));
}

/// Where polkitd reads rules, and the prefix of the rule files the tests write.
pub const POLKIT_RULES: &str = "/etc/polkit-1/rules.d";
const TEST_RULE_PREFIX: &str = "49-numa-cache-test-";
/// How long a test's rule grants anything: past this it is inert, should its test be killed
/// before removing it (and before a later run's [`clean_stale_polkit_rules`] does).
const RULE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// A polkit rule file of this test, removed on drop. Its name holds the pid and the test's
/// name, and its JavaScript grants only until a deadline (`Date.now() < N`).
pub struct TestPolkitRule(std::path::PathBuf);

impl TestPolkitRule {
    /// Answer `result` (`YES`, `NO`, `AUTH_ADMIN`, ...) for the org.opdbus.NumaCache
    /// actions when the JavaScript `condition` on `subject` holds; `tag` keeps two rules of
    /// one test apart. polkitd picks the file up through inotify, after a moment.
    pub fn install(tag: &str, condition: &str, result: &str) -> TestPolkitRule {
        let _lock = setup_lock();
        clean_stale_polkit_rules();
        let test: String = std::thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(80)
            .collect();
        let path = Path::new(POLKIT_RULES).join(format!(
            "{TEST_RULE_PREFIX}{}-{test}-{tag}.rules",
            std::process::id()
        ));
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .saturating_add(RULE_LIFETIME)
            .as_millis();
        let js = format!(
            "// numa-cache test rule (pid {pid}): inert after {deadline} ms since the epoch.\n\
             polkit.addRule(function(action, subject) {{\n  \
             if (Date.now() < {deadline} && action.id.indexOf(\"org.opdbus.NumaCache.\") == 0 && ({condition})) {{\n    \
             return polkit.Result.{result};\n  }}\n}});\n",
            pid = std::process::id()
        );
        write_atomic(&path, js.as_bytes());
        TestPolkitRule(path)
    }
}

impl Drop for TestPolkitRule {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Remove the test rule files (and temporary files) whose process is gone: what a killed run
/// left behind. Call under [`setup_lock`].
pub fn clean_stale_polkit_rules() {
    let Ok(dir) = std::fs::read_dir(POLKIT_RULES) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rest = name.trim_start_matches('.');
        let Some(rest) = rest.strip_prefix(TEST_RULE_PREFIX) else {
            continue;
        };
        let pid = rest.split(['-', '.']).next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Put the repository's polkit actions where polkitd reads them (the file `make install`
/// installs, so this is the real configuration); written only when it differs.
pub fn install_polkit_actions() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("polkit/org.opdbus.NumaCache.policy");
    let dst = Path::new("/usr/share/polkit-1/actions/org.opdbus.NumaCache.policy");
    let want = std::fs::read(&src).expect("reading polkit/org.opdbus.NumaCache.policy");
    let _lock = setup_lock();
    if std::fs::read(dst).ok().as_deref() != Some(&want[..]) {
        write_atomic(dst, &want);
    }
}

//! The D-Bus test harness: a private dbus-daemon configured like the system bus (default
//! deny, our policy file included), a real polkitd owning org.freedesktop.PolicyKit1 on it,
//! and numa-cached with a temporary state directory. Tools we did not write (busctl, gdbus)
//! are the clients. Everything started here is stopped by pid when the guard drops.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Root of the repository (for dbus/, polkit/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The object and interfaces, for brevity in tests.
pub const NAME: &str = "org.opdbus.NumaCache";
/// Root object path.
pub const ROOT: &str = "/org/opdbus/NumaCache";

/// Check every tool the D-Bus tests need; false (after a loud skip) when one is missing.
pub fn prerequisites() -> bool {
    super::support::require_root()
        && super::support::require_tool("dbus-daemon", "dbus-daemon")
        && super::support::require_tool("/usr/lib/polkit-1/polkitd", "polkitd")
        && super::support::require_tool("busctl", "systemd")
        && super::support::require_tool("gdbus", "libglib2.0-bin")
        && super::support::require_tool("runuser", "util-linux")
}

/// polkitd reads actions only from /usr/share/polkit-1/actions: put ours there (it is the
/// file `make install` installs, so this is the real configuration).
pub fn install_polkit_policy() {
    super::support::install_polkit_actions();
}

/// A system user in group `numacache` for the namespace-ownership tests; created once.
pub const TEST_USER: &str = "numacache-test";

/// Make sure group numacache and user numacache-test (a member) exist: once per process,
/// under the machine-wide set-up lock, "already exists" being success (parallel test threads
/// and test processes all call it).
pub fn ensure_test_user() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let _lock = super::support::setup_lock();
        super::support::ensure_group("numacache");
        super::support::ensure_user(TEST_USER, None, &["numacache"]);
    });
}

/// A private system-like bus with polkitd on it.
pub struct Bus {
    dir: tempfile::TempDir,
    dbus: Child,
    polkit: Option<Child>,
    /// The address to put in DBUS_SYSTEM_BUS_ADDRESS.
    pub address: String,
}

impl Bus {
    /// Start dbus-daemon and polkitd; panics with the logs if either does not come up.
    pub fn start() -> Bus {
        Bus::start_with(true)
    }

    /// Start dbus-daemon, and polkitd when `polkit` (false: a bus where polkit is unreachable).
    pub fn start_with(polkit: bool) -> Bus {
        install_polkit_policy();
        ensure_test_user();
        let dir = tempfile::Builder::new()
            .prefix("numa-cache-bus.")
            .tempdir()
            .expect("temp dir");
        use std::os::unix::fs::PermissionsExt;
        // Other users (nobody, numacache-test) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = std::fs::read_to_string(repo().join("tests/dbus/system-bus.conf.in"))
            .unwrap()
            .replace("@DIR@", &dir.path().display().to_string())
            .replace(
                "@POLICY@",
                &repo()
                    .join("dbus/org.opdbus.NumaCache.conf")
                    .display()
                    .to_string(),
            );
        let conf_path = dir.path().join("bus.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("dbus.log")).unwrap();
        let dbus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf_path.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dbus-daemon");
        let socket = dir.path().join("system_bus_socket");
        let address = format!("unix:path={}", socket.display());
        wait_for(|| socket.exists(), "the private bus socket");
        let mut bus = Bus {
            dir,
            dbus,
            polkit: None,
            address,
        };
        if polkit {
            let log = std::fs::File::create(bus.dir().join("polkitd.log")).unwrap();
            bus.polkit = Some(
                Command::new("/usr/lib/polkit-1/polkitd")
                    .arg("--no-debug")
                    .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("starting polkitd"),
            );
            wait_for(
                || bus.has_owner("org.freedesktop.PolicyKit1"),
                "polkitd to own org.freedesktop.PolicyKit1",
            );
        }
        bus
    }

    /// The bus's temp directory (logs, state dirs of daemons started on it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Does `name` have an owner on this bus?
    pub fn has_owner(&self, name: &str) -> bool {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "b true"
    }

    /// busctl --system with this bus, as root.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg("--system")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .expect("running busctl")
    }

    /// A command run as `user` with this bus as the system bus.
    pub fn as_user(&self, user: &str, program: &str, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", user, "--", "env"])
            .arg(format!("DBUS_SYSTEM_BUS_ADDRESS={}", self.address))
            .arg(program)
            .args(args)
            .output()
            .expect("running runuser")
    }

    /// gdbus with this bus as the system bus, as root.
    pub fn gdbus(&self, args: &[&str]) -> Output {
        Command::new("gdbus")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .expect("running gdbus")
    }

    /// `busctl call ... Cache Put` of `value` into (namespace, key) with no options, as root.
    pub fn busctl_put(&self, namespace: &str, key: &str, value: &[u8]) -> Output {
        let bytes: Vec<String> = std::iter::once(value.len().to_string())
            .chain(value.iter().map(|b| b.to_string()))
            .collect();
        let mut args = vec![
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Cache",
            "Put",
            "ssaya{sv}",
            namespace,
            key,
        ];
        args.extend(bytes.iter().map(String::as_str));
        args.push("0");
        self.busctl(&args)
    }

    /// `gdbus call` of `method` (interface.Member) on the daemon's root object, as root.
    pub fn gdbus_call(&self, method: &str, args: &[&str]) -> Output {
        self.gdbus(&gdbus_call_args(method, args))
    }

    /// The polkitd log so far (for assertion messages).
    pub fn polkit_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("polkitd.log")).unwrap_or_default()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        for child in self
            .polkit
            .iter_mut()
            .chain(std::iter::once(&mut self.dbus))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// numa-cached running on a `Bus`.
pub struct Daemon {
    child: Option<Child>,
    /// Its state directory.
    pub state: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Start numa-cached on `bus` with state in `state` and extra environment.
    pub fn start(bus: &Bus, state: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(bus, state, env, &[])
    }

    /// Start numa-cached with extra environment and command-line arguments.
    pub fn start_with(bus: &Bus, state: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let log = bus.dir().join(format!("daemon-{}.log", std::process::id()));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_numa-cached"));
        cmd.args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("OPDBUS_CACHE_DIR", state)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting numa-cached");
        let mut d = Daemon {
            child: Some(child),
            state: state.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !bus.has_owner(NAME) {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "numa-cached exited with {status} before taking its name:\n{}",
                    d.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "numa-cached did not take its name:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The arguments of `gdbus call` for `method` (interface.Member) on the daemon's root object.
pub fn gdbus_call_args<'a>(method: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "call",
        "--system",
        "--dest",
        NAME,
        "--object-path",
        ROOT,
        "--method",
        method,
        "--",
    ];
    a.extend_from_slice(args);
    a
}

/// Poll `cond` for up to 10 s.
pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// stdout as text, asserting success.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text, asserting failure.
pub fn fails(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail but printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The single JSON string a `busctl --json=short call` returned for an `s` method, parsed.
pub fn busctl_json_string(stdout: &str) -> serde_json::Value {
    let outer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("busctl JSON");
    let inner = outer["data"][0].as_str().expect("a string reply");
    serde_json::from_str(inner).expect("the reply is JSON")
}

/// The a{sv} a `busctl --json=short call` returned, as {key: value}.
pub fn busctl_json_dict(stdout: &str) -> serde_json::Map<String, serde_json::Value> {
    let outer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("busctl JSON");
    outer["data"][0]
        .as_object()
        .expect("an a{sv} reply")
        .iter()
        .map(|(k, v)| (k.clone(), v["data"].clone()))
        .collect()
}

/// A free loopback TCP port: bound, read and released, for a daemon to bind next. Another
/// process could take it in between; on a test machine that is rare enough.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// numa-cached with its HTTP gateway on `bus`: the unix socket in the bus's directory
/// (reachable by other users) and a loopback TCP port.
pub struct GatewayDaemon {
    /// The daemon.
    pub daemon: Daemon,
    /// The `--http-socket` path.
    pub socket: PathBuf,
    /// `http://127.0.0.1:PORT` of `--http-listen`.
    pub base: String,
}

impl GatewayDaemon {
    /// Start numa-cached with `--http-socket` and `--http-listen 127.0.0.1:PORT`.
    pub fn start(bus: &Bus, state: &Path) -> GatewayDaemon {
        let socket = bus.dir().join("http.sock");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let daemon = Daemon::start_with(
            bus,
            state,
            &[],
            &[
                "--http-socket",
                &socket.display().to_string(),
                "--http-listen",
                &listen,
            ],
        );
        // The gateway binds before the daemon takes its name, so both are there now.
        assert!(socket.exists(), "no gateway socket:\n{}", daemon.log());
        GatewayDaemon {
            daemon,
            socket,
            base: format!("http://{listen}"),
        }
    }

    /// `curl` over TCP with extra arguments; `path` is appended to the base URL.
    pub fn tcp(&self, path: &str, extra: &[&str]) -> Http {
        curl(None, extra, &format!("{}{path}", self.base))
    }

    /// `curl --unix-socket` as `user` (None: root) with extra arguments.
    pub fn unix(&self, user: Option<&str>, path: &str, extra: &[&str]) -> Http {
        let mut args = vec!["--unix-socket", self.socket.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        curl(user, &args, &format!("http://localhost{path}"))
    }
}

/// What curl got: the status and the body.
#[derive(Debug)]
pub struct Http {
    /// The HTTP status (0 when curl could not connect).
    pub status: u16,
    /// The body.
    pub body: String,
}

impl Http {
    /// The body as JSON, asserting status 200.
    pub fn json_ok(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Run curl (through `runuser -u USER` when given), appending the status after the body.
pub fn curl(user: Option<&str>, extra: &[&str], url: &str) -> Http {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    Http {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

/// A polkit rule granting every org.opdbus.NumaCache action to members of `groups`, in
/// polkitd's rules directory, removed again on drop.
pub struct PolkitRule(super::support::TestPolkitRule);

impl PolkitRule {
    /// Grant the org.opdbus.NumaCache actions to members of `groups` (polkitd picks the rule
    /// up through inotify, after a moment).
    pub fn install(groups: &[&str]) -> PolkitRule {
        let checks: Vec<String> = groups
            .iter()
            .map(|g| format!("subject.isInGroup(\"{g}\")"))
            .collect();
        PolkitRule::install_js("groups", &checks.join(" || "), "YES")
    }

    /// Install a rule answering `result` (`YES`, `NO`, `AUTH_ADMIN`, ...) for the
    /// org.opdbus.NumaCache actions when the JavaScript `condition` on `subject` holds;
    /// `tag` keeps two rules of one test apart. The file's name is the test's own, and it
    /// grants nothing once its test is gone (support::TestPolkitRule).
    pub fn install_js(tag: &str, condition: &str, result: &str) -> PolkitRule {
        PolkitRule(super::support::TestPolkitRule::install(
            tag, condition, result,
        ))
    }
}

/// A bus monitor (`busctl monitor`, `gdbus monitor`) writing to a file in the bus's
/// directory; killed on drop.
pub struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    /// Start `program args` on `bus`, writing to `name` in the bus's directory, and return
    /// once it is subscribed (no sleep: readiness is observed).
    ///
    /// - `gdbus monitor --dest NAME` prints "The name NAME is owned by" after the reply to
    ///   its GetNameOwner, which the bus sends after processing the AddMatch calls the same
    ///   connection sent before it: once printed, the match rules are registered.
    /// - `busctl monitor` is a bus monitor: it is ready once it shows a Ping we send to the
    ///   daemon (sent again every 100 ms until it shows).
    pub fn start(bus: &Bus, program: &str, args: &[&str], name: &str) -> Monitor {
        let out = bus.dir().join(name);
        let f = std::fs::File::create(&out).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the monitor");
        let m = Monitor { child, out };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = m.text();
            let ready = if program == "gdbus" {
                t.contains("is owned by")
            } else {
                t.contains("Ping")
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{program} {args:?} did not subscribe within 20 s:\n{t}"
            );
            if program != "gdbus" {
                let _ = bus.busctl(&["call", NAME, ROOT, "org.freedesktop.DBus.Peer", "Ping"]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// What it printed so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Wait up to 10 s until every needle was printed; returns the text.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.text();
            if needles.iter().all(|n| t.contains(n)) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "monitor never saw {needles:?}:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

/// Run numa-cached on `bus` with state in `state` until it exits (it is expected to refuse to
/// start); panics when it is still running after 20 s, since a daemon that should have
/// refused then serves instead.
pub fn start_expecting_exit(
    bus: &Bus,
    state: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_numa-cached"));
    cmd.args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("OPDBUS_CACHE_DIR", state)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting numa-cached");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("collecting its output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status.code(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting its output");
            panic!(
                "numa-cached kept running instead of refusing to start:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Bus {
    /// `busctl call ... Cache Get` of (namespace, key), as root.
    pub fn busctl_get(&self, namespace: &str, key: &str) -> Output {
        self.busctl(&[
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Cache",
            "Get",
            "ss",
            namespace,
            key,
        ])
    }
}

/// A field of /proc/PID/status in KiB (the kernel's figure: VmHWM, VmRSS, ...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The peak resident size (VmHWM) of `pid` now, in KiB, and how many MiB it grew since
/// `from_kib`; printed with `what`, for the test's log.
pub fn peak_growth(pid: u32, from_kib: u64, what: &str) -> (u64, u64) {
    let hwm = status_kib(pid, "VmHWM:");
    let grew_mib = hwm.saturating_sub(from_kib) >> 10;
    eprintln!(
        "{what}: daemon VmHWM {} MiB -> {} MiB (+{grew_mib})",
        from_kib >> 10,
        hwm >> 10
    );
    (hwm, grew_mib)
}

/// A value of `len` bytes that does not compress, from `seed` (zstd would store a pattern
/// in a few KiB, and what the daemon reads or holds for it would not show).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

//! A hostile member of group numacache attacks numa-cached over the ordinary bus (issue 21),
//! through a real dbus-daemon, as the non-root test user, with the daemon under the unit's
//! `LimitNOFILE=4096`:
//! - defect 1: 600 waiting GetOrLease calls on 5 connections, each carrying 16 unused file
//!   descriptors. The daemon used to keep every waiting call's descriptors, run out at about
//!   3,800, lose its bus connection to a message whose descriptors the kernel could not pass,
//!   and exit saying the bus had gone;
//! - defect 3: 100,000 GetOrLease calls flagged NO_REPLY_EXPECTED, which no bus limit counts:
//!   the daemon used to keep every one waiting (RSS 12 -> 637 MiB);
//! - defect 8: `lease_ms` is checked as the caller sent it (20001 was accepted, and 2^32-1
//!   was refused naming 4294967294).
//!
//! For each attack: the daemon serves another member (a Put/Get round trip) within 1 s, its
//! descriptors (/proc/PID/fd) and peak RSS (VmHWM) stay within the bounds asserted below,
//! and what the attacker held comes back once it exits. The oracles are the kernel's figures
//! and the daemon's own count of waiting calls (`lease_waiters` in GetStats).

mod dbus;
mod support;

use dbus::{Bus, Daemon, TEST_USER, status_kib};
use numa_cache_client::{Client, names};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zbus::message::{Flags, Message};

/// Set in the attacker's environment: which attack it runs.
const ROLE: &str = "NUMA_CACHE_ATTACK_ROLE";
/// The unit's open-file limit (systemd/numa-cached.service).
const UNIT_NOFILE: u64 = 4096;
/// The namespace the attacker owns, and the key it leases.
const NS: &str = "attack";
const KEY: &str = "k";
/// Defect 1: connections, calls on each, descriptors per call.
const CONNS: usize = 5;
const CALLS: usize = 120;
const FDS: usize = 16;
/// Defect 3: no-reply calls.
const NO_REPLY_CALLS: u64 = 100_000;

/// How many descriptors `pid` has open.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Give `pid` the unit's open-file limit, as systemd would.
fn limit_nofile(pid: u32) {
    let lim = libc::rlimit {
        rlim_cur: UNIT_NOFILE,
        rlim_max: UNIT_NOFILE,
    };
    // SAFETY: prlimit(2) on a child we spawned, with a pointer to a live rlimit and no old value.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 4096 ")),
        "{limits}"
    );
}

/// A daemon on `bus` under the unit's descriptor limit, with a memory tier of 1 MiB.
fn daemon(bus: &Bus) -> Daemon {
    let d = Daemon::start(
        bus,
        &bus.dir().join("state"),
        &[("OPDBUS_CACHE_MEMORY_BYTES", "1M")],
    );
    limit_nofile(d.pid());
    d
}

/// A figure of the daemon's GetStats report (0 when absent: a daemon that does not count).
async fn stat(c: &Client, field: &str) -> Result<u64, numa_cache_client::Error> {
    Ok(c.get_stats().await?[field].as_u64().unwrap_or(0))
}

/// A Put then a Get of another member (root), each within 1 s.
async fn round_trip(c: &Client, key: &str) {
    let v = format!("calm {key}").into_bytes();
    let put = tokio::time::timeout(Duration::from_secs(1), c.put("calm", key, &v)).await;
    assert!(matches!(put, Ok(Ok(_))), "another member's Put: {put:?}");
    let got = tokio::time::timeout(Duration::from_secs(1), c.get("calm", key)).await;
    assert!(
        matches!(&got, Ok(Ok(Some(g))) if *g == v),
        "another member's Get: {got:?}"
    );
}

// ---- the attacker: this test binary again, as numacache-test ------------------------------

/// The attacker process: runs `test` of this binary as numacache-test with ROLE=`role`;
/// it says `RESULT ...` lines and exits when its stdin closes.
struct Attacker {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Attacker {
    fn start(bus: &Bus, test: &str, role: &str) -> Attacker {
        let mut child = Command::new("runuser")
            .args(["-u", TEST_USER, "--", "env"])
            .arg(format!("DBUS_SYSTEM_BUS_ADDRESS={}", bus.address))
            .arg(format!("{ROLE}={role}"))
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("runuser");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Attacker { child, lines }
    }

    /// The next `RESULT` line.
    fn result(&mut self) -> String {
        for line in self.lines.by_ref() {
            let line = line.expect("the attacker's output");
            if let Some(at) = line.find("RESULT ") {
                return line[at + 7..].to_string();
            }
        }
        panic!("the attacker ended without a result");
    }

    /// Close its stdin, so that it exits, and wait for it.
    fn exit(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the attacker failed: {status}");
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the attacker: wait until the test closes our stdin.
fn until_told() {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// A GetOrLease(NS, KEY, 20000) call with `fds` descriptors that no argument names, and the
/// no-reply flag when `no_reply`.
fn get_or_lease_call(fds: Vec<OwnedFd>, no_reply: bool) -> Message {
    let plain = Message::method_call(names::ROOT_PATH, "GetOrLease")
        .destination(names::BUS_NAME)
        .interface(names::iface::CACHE)
        .build(&(NS, KEY, 20_000u32))
        .unwrap();
    let mut b = zbus::message::Builder::from(plain.header());
    if no_reply {
        b = b.with_flags(Flags::NO_REPLY_EXPECTED);
    }
    let body = plain.body();
    let fds = fds.into_iter().map(zbus::OwnedFd::from).collect();
    // SAFETY: the body is the serialized (s, s, u) of `plain`, with its own signature; the
    // descriptors are extra, named by no argument, which is the point of the attack.
    unsafe { b.build_raw_body(body.data(), "ssu", fds) }.unwrap()
}

/// A Ping of the daemon on `conn`: answered once it has read every call sent before it.
async fn ping(conn: &zbus::Connection) {
    conn.call_method(
        Some(names::BUS_NAME),
        names::ROOT_PATH,
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &(),
    )
    .await
    .unwrap();
}

/// Raise this process's soft open-file limit to its hard one.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit of this frame.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Defect 1, the attacker's side: take the lease, then 5 connections of 120 waiting calls
/// with 16 descriptors each.
async fn attack_with_fds() {
    let c = Client::connect(&std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap())
        .await
        .unwrap();
    let lease = c
        .get_or_lease(NS, KEY, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(matches!(lease, numa_cache_client::Lease::Fill), "{lease:?}");
    // Its own limit on descriptors in flight (sent, not yet received) is its open-file
    // limit: as high as it may go, as an attacker would.
    raise_nofile();
    let null: Vec<OwnedFd> = (0..FDS)
        .map(|_| std::fs::File::open("/dev/null").unwrap().into())
        .collect();
    let mut conns = Vec::new();
    let mut sent = 0;
    for _ in 0..CONNS {
        let conn = zbus::Connection::system().await.unwrap();
        for i in 0..CALLS {
            let fds = null.iter().map(|f| f.try_clone().unwrap()).collect();
            conn.send(&get_or_lease_call(fds, false)).await.unwrap();
            sent += 1;
            // Paced, so that dbus-daemon's queue of descriptors for the daemon (64) never
            // fills and refuses calls: every call reaches the daemon.
            if i % 2 == 1 {
                ping(&conn).await;
            }
        }
        conns.push(conn);
    }
    println!("RESULT sent {sent}");
    until_told();
}

/// Defect 3, the attacker's side: take the lease, then 100,000 no-reply calls.
async fn attack_no_reply() {
    let c = Client::connect(&std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap())
        .await
        .unwrap();
    let lease = c
        .get_or_lease(NS, KEY, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(matches!(lease, numa_cache_client::Lease::Fill), "{lease:?}");
    let conn = zbus::Connection::system().await.unwrap();
    let call = get_or_lease_call(Vec::new(), true);
    println!("RESULT size {}", call.data().len());
    for _ in 0..NO_REPLY_CALLS {
        conn.send(&call).await.unwrap();
    }
    println!("RESULT sent {NO_REPLY_CALLS}");
    ping(&conn).await;
    println!("RESULT read");
    until_told();
}

/// Run `attack` when this process is the attacker; true then.
fn as_attacker(role: &str, attack: impl std::future::Future<Output = ()>) -> bool {
    if std::env::var(ROLE).as_deref() != Ok(role) {
        return false;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(attack);
    true
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Poll `figure` every 10 ms for up to `limit` until `done` holds of it, sampling the
/// daemon's descriptors meanwhile; (its last value, the most descriptors seen).
async fn watch(
    c: &Client,
    pid: u32,
    field: &str,
    limit: Duration,
    done: impl Fn(u64) -> bool,
    daemon: &mut Daemon,
) -> (u64, usize) {
    let deadline = Instant::now() + limit;
    let mut most = 0;
    loop {
        most = most.max(fd_count(pid));
        assert!(
            daemon.alive(),
            "numa-cached died under the attack:\n{}",
            daemon.log()
        );
        let v = stat(c, field).await.unwrap_or(u64::MAX);
        if done(v) || Instant::now() > deadline {
            return (v, most);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn waiting_calls_carrying_unused_fds_cannot_crash_the_daemon() {
    if as_attacker("fds", attack_with_fds()) {
        return;
    }
    if !dbus::prerequisites() {
        return;
    }
    runtime().block_on(async {
        let bus = Bus::start();
        let mut daemon = daemon(&bus);
        let pid = daemon.pid();
        let c = Client::connect(&bus.address).await.unwrap();
        round_trip(&c, "before").await;
        let fds0 = fd_count(pid);
        let hwm0 = status_kib(pid, "VmHWM:");

        let mut attacker = Attacker::start(
            &bus,
            "waiting_calls_carrying_unused_fds_cannot_crash_the_daemon",
            "fds",
        );
        let all = (CONNS * CALLS) as u64;
        assert_eq!(attacker.result(), format!("sent {all}"));
        // Every call is in, and waits (the lease is the attacker's, for 20 s); meanwhile the
        // daemon's descriptors are sampled every 10 ms.
        let (waiting, most) = watch(
            &c,
            pid,
            "lease_waiters",
            Duration::from_secs(15),
            |n| n == all,
            &mut daemon,
        )
        .await;
        let arrived = Instant::now();
        round_trip(&c, "during").await;
        assert!(arrived.elapsed() < Duration::from_secs(1));
        let hwm = status_kib(pid, "VmHWM:");
        eprintln!(
            "{all} waiting calls with {FDS} fds each: daemon fds {fds0} -> at most {most}, \
             VmHWM {} -> {} MiB, lease_waiters {waiting}",
            hwm0 >> 10,
            hwm >> 10
        );
        assert_eq!(
            waiting,
            all,
            "the calls did not all wait; the bus says:\n{}\nthe daemon:\n{}",
            std::fs::read_to_string(bus.dir().join("dbus.log")).unwrap_or_default(),
            daemon.log()
        );
        // No descriptor the calls carried is kept: 9,600 were sent.
        assert!(
            most <= fds0 + 16,
            "the daemon held {most} descriptors under the attack ({fds0} before)"
        );
        assert!(
            (hwm - hwm0) >> 10 < 32,
            "{all} waiting calls raised the daemon's peak RSS by {} MiB",
            (hwm - hwm0) >> 10
        );

        // The attacker goes: its waiting calls end with its lease (20 s), nothing stays.
        attacker.exit();
        let (left, _) = watch(
            &c,
            pid,
            "lease_waiters",
            Duration::from_secs(30),
            |n| n == 0,
            &mut daemon,
        )
        .await;
        assert_eq!(left, 0, "calls of an attacker that left still wait");
        dbus::wait_for(|| fd_count(pid) <= fds0 + 2, "the daemon's descriptors");
        round_trip(&c, "after").await;
        assert!(
            !daemon.log().contains("lost the bus name"),
            "{}",
            daemon.log()
        );
    });
}

#[test]
fn no_reply_calls_beyond_the_waiting_bound_are_dropped_at_once() {
    if as_attacker("no-reply", attack_no_reply()) {
        return;
    }
    if !dbus::prerequisites() {
        return;
    }
    runtime().block_on(async {
        let bus = Bus::start();
        let mut daemon = daemon(&bus);
        let pid = daemon.pid();
        let c = Client::connect(&bus.address).await.unwrap();
        round_trip(&c, "before").await;
        let fds0 = fd_count(pid);
        let hwm0 = status_kib(pid, "VmHWM:");

        let mut attacker = Attacker::start(
            &bus,
            "no_reply_calls_beyond_the_waiting_bound_are_dropped_at_once",
            "no-reply",
        );
        let size = attacker.result();
        assert_eq!(attacker.result(), format!("sent {NO_REPLY_CALLS}"));
        // Until the daemon has read every call (the attacker's Ping comes back), the waiting
        // calls are counted every 10 ms, in another thread.
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (sampling, address) = (sampling.clone(), bus.address.clone());
            tokio::spawn(async move {
                let c = Client::connect(&address).await.unwrap();
                let mut most = 0;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    most = most.max(stat(&c, "lease_waiters").await.unwrap());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                most
            })
        };
        let read = tokio::task::spawn_blocking(move || {
            let r = attacker.result();
            (attacker, r)
        });
        let (attacker, r) = tokio::time::timeout(Duration::from_secs(300), read)
            .await
            .expect("the daemon read the calls within 300 s")
            .unwrap();
        assert_eq!(r, "read");
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let most = sampler.await.unwrap();
        assert!(daemon.alive(), "numa-cached died:\n{}", daemon.log());
        round_trip(&c, "during").await;
        let waiting = stat(&c, "lease_waiters").await.unwrap();
        let refused = stat(&c, "lease_waits_refused").await.unwrap();
        let hwm = status_kib(pid, "VmHWM:");
        eprintln!(
            "{NO_REPLY_CALLS} no-reply GetOrLease ({size}): at most {most} waiting, {waiting} \
             now, {refused} refused; daemon VmHWM {} -> {} MiB, fds {fds0} -> {}",
            hwm0 >> 10,
            hwm >> 10,
            fd_count(pid)
        );
        // Measured before the bound: +319 MiB in 120 s, still growing (~6.4 KB a call).
        assert!(
            (hwm - hwm0) >> 10 < 48,
            "{NO_REPLY_CALLS} no-reply calls raised the daemon's peak RSS by {} MiB",
            (hwm - hwm0) >> 10
        );
        assert!(
            (1000..=1024).contains(&most),
            "one uid's waiting calls are bounded at 1024, and the attack reached it: {most}"
        );
        // Each call waited (1024 at a time, up to 20 s each), or was refused at once.
        assert!(
            refused >= NO_REPLY_CALLS * 9 / 10,
            "only {refused} of {NO_REPLY_CALLS} calls were refused"
        );
        assert!(
            daemon.log().contains("GetOrLease calls refused"),
            "no log line says calls were refused:\n{}",
            daemon.log()
        );
        assert!(fd_count(pid) <= fds0 + 2);

        attacker.exit();
        let (left, _) = watch(
            &c,
            pid,
            "lease_waiters",
            Duration::from_secs(30),
            |n| n == 0,
            &mut daemon,
        )
        .await;
        assert_eq!(left, 0, "calls of an attacker that left still wait");
        round_trip(&c, "after").await;
    });
}

#[test]
fn lease_ms_is_checked_as_the_caller_sent_it() {
    if !dbus::prerequisites() {
        return;
    }
    runtime().block_on(async {
        let bus = Bus::start();
        let _daemon = daemon(&bus);
        let c = Client::connect(&bus.address).await.unwrap();
        let p = c.cache_proxy();
        for bad in [20_001u32, u32::MAX, 0] {
            let e = p
                .get_or_lease("leasems", "k", bad)
                .await
                .expect_err("out of range")
                .to_string();
            assert!(
                e.contains(names::error::INVALID_ARGUMENT)
                    && e.contains(&format!("lease_ms {bad} ")),
                "lease_ms {bad}: {e}"
            );
        }
        // In range: 20000 takes the lease, 1 (another key) too, and a hit is a hit.
        for (ms, key) in [(20_000u32, "a"), (1, "b")] {
            let (hit, v) = p.get_or_lease("leasems", key, ms).await.unwrap();
            assert!(!hit && v.is_empty(), "lease_ms {ms}");
        }
        c.put("leasems", "a", b"v").await.unwrap();
        let (hit, v) = p.get_or_lease("leasems", "a", 1).await.unwrap();
        assert!(hit && v.as_slice() == b"v");
    });
}

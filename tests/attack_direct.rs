//! Attacks on direct connections (OpenDirect) by a hostile non-root member of group numacache
//! (issue 21), against a daemon whose descriptor limit is the unit's (`LimitNOFILE=4096`):
//!
//! - 16 connections each sending a message's first bytes with 253 descriptors (defect 2);
//! - no-reply calls padded with 30 MiB past their arguments, and no-reply calls that wait
//!   (defect 4);
//! - a direct socket handed to a process of `nobody`, which claims the opener's uid or makes
//!   no claim at all (defect 7).
//!
//! The attacker is this test binary run again as `numacache-test` (a member) through
//! `setpriv`, so that killing it kills the attacker itself. For each attack the test asserts
//! that another caller (root, a uid of its own) is served within 1 s, 16 direct connections
//! of its own included; that the daemon's descriptors (/proc/PID/fd) and peak RSS
//! (`VmHWM`) stay within the stated bounds; and that the attacker's descriptors and
//! connection places come back once it is killed.

mod dbus;
mod support;

use dbus::{Bus, Daemon, TEST_USER, peak_growth, status_kib};
use numa_cache_client::{Client, Lease, names};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The env var naming the role this binary plays when run again as another user.
const ROLE: &str = "NUMA_CACHE_ATTACK_ROLE";
/// The env var carrying the opener's uid to the `nobody` process (defect 7).
const OPENER_UID: &str = "NUMA_CACHE_ATTACK_OPENER";
/// The unit's descriptor limit, applied to the daemon under test.
const LIMIT_NOFILE: u64 = 4096;
/// What a line the roles print for the test starts with.
const MARK: &str = "@@ ";

// ---- the daemon under attack --------------------------------------------------------------

/// A bus and a daemon with the unit's descriptor limit, and a root client on the bus.
async fn daemon(env: &[(&str, &str)]) -> (Bus, Daemon, Client) {
    dbus::ensure_test_user();
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), env);
    let pid = daemon.pid().to_string();
    let limit = format!("--nofile={LIMIT_NOFILE}:{LIMIT_NOFILE}");
    let out = Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
    let c = Client::connect(&bus.address).await.unwrap();
    c.put("calm", "before", b"v").await.unwrap();
    (bus, daemon, c)
}

/// The descriptors `pid` holds.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The most descriptors `pid` held over `over`, sampled every 20 ms.
async fn most_fds(pid: u32, over: Duration) -> usize {
    let end = Instant::now() + over;
    let mut most = 0;
    while Instant::now() < end {
        most = most.max(fd_count(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    most
}

/// Wait up to `secs` for `cond`, polling.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another caller (root) is served within 1 s: a Put and Get on the bus, and 16 direct
/// connections of its own, each answering a Put and a Get.
async fn served_within_a_second(c: &Client, daemon: &Daemon, what: &str) -> Vec<Client> {
    let t0 = Instant::now();
    let run = async {
        c.put("calm", "during", b"v").await?;
        assert_eq!(c.get("calm", "during").await?.as_deref(), Some(&b"v"[..]));
        let mut open = Vec::new();
        for i in 0..16 {
            let d = c.open_direct().await?;
            let key = format!("direct-{i}");
            d.put("calm", &key, b"w").await?;
            assert_eq!(d.get("calm", &key).await?.as_deref(), Some(&b"w"[..]));
            open.push(d);
        }
        Ok::<_, numa_cache_client::Error>(open)
    };
    let r = tokio::time::timeout(Duration::from_secs(1), run).await;
    match r {
        Ok(Ok(open)) => {
            eprintln!("{what}: another caller served in {:?}", t0.elapsed());
            open
        }
        Ok(Err(e)) => panic!("{what}: another caller was refused: {e}\n{}", daemon.log()),
        Err(_) => panic!(
            "{what}: another caller was not served within 1 s\n{}",
            daemon.log()
        ),
    }
}

// ---- the attacker, a process of another uid ---------------------------------------------------

/// A role of this binary running as another user; its marked lines arrive on `lines`.
struct Attacker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// The uid and gid of `user`.
fn ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

impl Attacker {
    /// Run `role` as `user` (its groups included, or none for `nobody`) with `stdin`.
    fn start(bus: &str, user: &str, role: &str, stdin: Stdio, env: &[(&str, String)]) -> Attacker {
        let (uid, gid) = ids(user);
        let groups = if user == "nobody" {
            "--clear-groups"
        } else {
            "--init-groups"
        };
        let mut cmd = Command::new("prlimit");
        cmd.args(["--nofile=8192:8192", "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args([groups, "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "attacker_role",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .stdin(stdin)
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting the attacker");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(at) = line.find(MARK) {
                    let _ = tx.send(line[at + MARK.len()..].to_string());
                }
            }
        });
        Attacker { child, lines }
    }

    /// The next marked line, within `secs`.
    fn line(&self, secs: u64) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("no word from the attacker within {secs} s"))
    }

    /// Every marked line until the role exits.
    fn all(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the role failed: {status}");
        // The reader thread forwards what is left once the pipe closes.
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        lines
    }

    /// SIGKILL it and reap it.
    fn kill(self) {
        drop(self);
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        // A role that lingers is killed with the test, even one that fails.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the roles run as another user do, by name.
#[test]
fn attacker_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match role.as_str() {
        "fd-flood" => rt.block_on(fd_flood()),
        "padded-no-reply" => rt.block_on(padded_no_reply()),
        "open16" => rt.block_on(open16()),
        "pass-on" => rt.block_on(pass_on()),
        "nobody-claim" => nobody(true),
        "nobody-empty" => nobody(false),
        other => panic!("no role {other}"),
    }
}

fn say(what: &str) {
    println!("{MARK}{what}");
    std::io::stdout().flush().unwrap();
}

/// Wait until killed.
fn linger() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

async fn member_client() -> Client {
    Client::connect(&std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap())
        .await
        .expect("connect")
}

/// A fresh OpenDirect socket, not yet spoken on.
async fn open_socket(c: &Client) -> UnixStream {
    let reply = c
        .connection()
        .call_method(
            Some(names::BUS_NAME),
            names::ROOT_PATH,
            Some(names::iface::CACHE),
            "OpenDirect",
            &(),
        )
        .await
        .expect("OpenDirect");
    let fd: zbus::OwnedFd = reply.body().deserialize().unwrap();
    UnixStream::from(OwnedFd::from(fd))
}

/// One SASL reply line, or None when the daemon closed the socket.
fn sasl_line(s: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// The SASL handshake on `s` claiming `claim` (hex of the decimal uid, as D-Bus has it), or
/// with an empty claim (`AUTH EXTERNAL`, then an empty `DATA`); with descriptor passing.
/// False when the daemon closed the socket or refused.
fn handshake(s: &mut UnixStream, claim: Option<u32>) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = match claim {
        Some(uid) => {
            let hex: String = uid
                .to_string()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("\0AUTH EXTERNAL {hex}\r\n")
        }
        None => "\0AUTH EXTERNAL\r\n".to_string(),
    };
    if s.write_all(auth.as_bytes()).is_err() {
        return false;
    }
    let mut reply = sasl_line(s);
    if claim.is_none() && reply.as_deref() == Some("DATA\r\n") {
        if s.write_all(b"DATA\r\n").is_err() {
            return false;
        }
        reply = sasl_line(s);
    }
    if !reply.is_some_and(|l| l.starts_with("OK ")) {
        return false;
    }
    if s.write_all(b"NEGOTIATE_UNIX_FD\r\n").is_err() {
        return false;
    }
    if sasl_line(s).as_deref() != Some("AGREE_UNIX_FD\r\n") {
        return false;
    }
    s.write_all(b"BEGIN\r\n").is_ok()
}

/// A call of the Cache interface as a client would send it, with `serial`.
fn raw_call<B>(member: &str, serial: u32, body: &B) -> Vec<u8>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let msg = zbus::Message::method_call(names::ROOT_PATH, member)
        .interface(names::iface::CACHE)
        .serial(std::num::NonZeroU32::new(serial).unwrap())
        .build(body)
        .unwrap();
    msg.data().to_vec()
}

/// `call` flagged NO_REPLY_EXPECTED, with `pad` zero bytes after its arguments (the body
/// length grown to match).
fn no_reply(mut call: Vec<u8>, pad: usize) -> Vec<u8> {
    assert_eq!(call[0], b'l', "a little-endian message");
    call[2] |= 0x1;
    let body = u32::from_le_bytes(call[4..8].try_into().unwrap()) + pad as u32;
    call[4..8].copy_from_slice(&body.to_le_bytes());
    call.resize(call.len() + pad, 0);
    call
}

// ---- defect 2: descriptors sent with a message's first bytes ------------------------------

/// 16 connections each sending the first 16 bytes of a call with 253 descriptors.
async fn fd_flood() {
    let c = member_client().await;
    let uid = rustix::process::getuid().as_raw();
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut held = Vec::new();
    let mut sent = 0;
    for _ in 0..16 {
        let mut s = open_socket(&c).await;
        if !handshake(&mut s, Some(uid)) {
            continue;
        }
        let mut header = raw_call("PutFd", 1, &("ns", "k", 0u32))[..16].to_vec();
        header[4..8].copy_from_slice(&64u32.to_le_bytes());
        let fds: Vec<_> = (0..253).map(|_| null.as_fd()).collect();
        if send_with_fds(&s, &header, &fds).is_ok() {
            sent += 1;
        }
        held.push(s);
    }
    say(&format!("READY {sent}"));
    linger();
}

fn send_with_fds(
    s: &UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    Ok(rustix::net::sendmsg(
        s.as_fd(),
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// As the member: 16 direct connections of its own, each answering a Ping, within 10 s of
/// asking (the places of a killed attacker come back).
async fn open16() {
    let c = member_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = Vec::new();
    while open.len() < 16 {
        match c.open_direct().await {
            Ok(d) if d.ping().await.is_ok() => open.push(d),
            r => {
                assert!(
                    Instant::now() < deadline,
                    "{} direct connections after 10 s: {:?}",
                    open.len(),
                    r.err()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    say("OPEN 16");
}

/// The member's places and the daemon's descriptors come back once `attacker` is killed:
/// the descriptors to `fds0` (with root's connections closed), and the member's 16 places.
async fn resources_come_back(bus: &Bus, pid: u32, fds0: usize, attacker: Attacker) {
    attacker.kill();
    eventually(
        10,
        "the daemon's descriptors back after the attacker died",
        || fd_count(pid) <= fds0 + 2,
    )
    .await;
    let again = Attacker::start(&bus.address, TEST_USER, "open16", Stdio::null(), &[]);
    assert_eq!(again.all(), ["OPEN 16"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_sent_with_a_message_are_bounded_at_once_and_come_back() {
    if !dbus::prerequisites() {
        return;
    }
    let (bus, daemon, c) = daemon(&[]).await;
    let pid = daemon.pid();
    let fds0 = fd_count(pid);

    let attacker = Attacker::start(&bus.address, TEST_USER, "fd-flood", Stdio::null(), &[]);
    let ready = attacker.line(60);
    eprintln!("attacker: {ready}; daemon fds before: {fds0}");
    // A uid holds at most 64 descriptors in messages (a 1 MiB charge each against its
    // 64 MiB) and one per connection waiting with a header; a message with more than one
    // (the most a call takes) closes its connection at once.
    let most = most_fds(pid, Duration::from_secs(2)).await;
    eprintln!("daemon fds during the attack: at most {most}");
    assert!(
        most <= fds0 + 16 + 64 + 16,
        "the daemon held {most} descriptors (from {fds0}) while a member sent 16 x 253"
    );
    let open = served_within_a_second(&c, &daemon, "16 x 253 descriptors").await;
    let log = daemon.log();
    let (uid, _) = ids(TEST_USER);
    assert!(
        log.contains(&format!("uid {uid}")) && log.contains("file descriptor"),
        "no log line naming the uid and the descriptors:\n{log}"
    );
    drop(open);
    resources_come_back(&bus, pid, fds0, attacker).await;
    c.ping().await.expect("the daemon is up");
}

// ---- defect 4: no-reply calls ---------------------------------------------------------

/// Holding a lease on ("padded", "k"), 16 direct connections each sending one no-reply
/// GetOrLease of that key with 30 MiB of padding past its arguments.
async fn padded_no_reply() {
    let c = member_client().await;
    let lease = c
        .get_or_lease("padded", "k", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(matches!(lease, Lease::Fill));
    let uid = rustix::process::getuid().as_raw();
    let call = no_reply(
        raw_call("GetOrLease", 1, &("padded", "k", 20000u32)),
        30 << 20,
    );
    let mut writers = Vec::new();
    for _ in 0..16 {
        let mut s = open_socket(&c).await;
        assert!(handshake(&mut s, Some(uid)));
        let call = call.clone();
        writers.push(std::thread::spawn(move || {
            let sent = s.write_all(&call).is_ok();
            (sent, s)
        }));
    }
    let mut sent = 0;
    let mut held = Vec::new();
    for w in writers {
        let (ok, s) = w.join().unwrap();
        sent += usize::from(ok);
        held.push(s);
    }
    say(&format!("READY {sent}"));
    linger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_calls_padded_past_their_arguments_are_refused_and_bounded() {
    if !dbus::prerequisites() {
        return;
    }
    // A memory tier of 1 MiB, so that the peak RSS shows what the calls hold.
    let (bus, daemon, c) = daemon(&[("OPDBUS_CACHE_MEMORY_BYTES", "1M")]).await;
    let pid = daemon.pid();
    let fds0 = fd_count(pid);
    let hwm0 = status_kib(pid, "VmHWM:");

    let attacker = Attacker::start(
        &bus.address,
        TEST_USER,
        "padded-no-reply",
        Stdio::null(),
        &[],
    );
    let ready = attacker.line(120);
    eprintln!("attacker: {ready}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, grew) = peak_growth(pid, hwm0, "16 no-reply calls with 30 MiB of padding");
    // Measured before the fix: +480 MiB (every padded message kept by its waiting handler).
    // The uid's 64 MiB admits two at a time, each refused once in; measured +90 to +115 MiB
    // (the allocator keeps some freed 30 MiB buffers resident in its per-thread arenas).
    assert!(
        grew < 2 * 64,
        "16 padded no-reply calls raised the daemon's peak RSS by {grew} MiB"
    );
    let open = served_within_a_second(&c, &daemon, "padded no-reply calls").await;
    let log = daemon.log();
    let (uid, _) = ids(TEST_USER);
    assert!(
        log.contains(&format!("uid {uid}")) && log.contains("past its arguments"),
        "no log line naming the uid and the padding:\n{log}"
    );
    drop(open);
    resources_come_back(&bus, pid, fds0, attacker).await;
    c.ping().await.expect("the daemon is up");
}

/// No-reply GetOrLease calls waiting for a lease hold their share of the uid's budget until
/// their handler ends: 1100 of them (each charged 64 KiB, 1024 fill the 64 MiB) leave a
/// Ping on another connection of that uid waiting, until the Put that ends the lease lets
/// them finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_calls_hold_their_budget_until_their_handler_ends() {
    if !dbus::prerequisites() {
        return;
    }
    let (_bus, daemon, c) = daemon(&[]).await;
    let lease = c
        .get_or_lease("waiting", "k", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(matches!(lease, Lease::Fill));
    let mut s = open_socket(&c).await;
    assert!(handshake(&mut s, Some(0)));
    let calls: Vec<u8> = (1..=1100u32)
        .flat_map(|serial| {
            no_reply(
                raw_call("GetOrLease", serial, &("waiting", "k", 20000u32)),
                0,
            )
        })
        .collect();
    if let Err(e) = s.write_all(&calls) {
        panic!("writing the calls: {e}\n{}", daemon.log());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = c.open_direct().await.unwrap();
    let ping = tokio::spawn(async move { d.ping().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !ping.is_finished(),
        "a Ping was served while 1100 no-reply calls held more than the uid's budget"
    );
    c.put("waiting", "k", b"filled").await.unwrap();
    let pinged = tokio::time::timeout(Duration::from_secs(20), ping)
        .await
        .expect("the Ping once the waiting calls ended")
        .unwrap();
    if let Err(e) = pinged {
        panic!(
            "the Ping once the waiting calls ended: {e}\n{}",
            daemon.log()
        );
    }
    // No reply went to the calls that asked for none.
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a reply was sent to a no-reply call"
    );
    c.ping().await.expect("the daemon is up");
    drop(daemon);
}

// ---- defect 7: a direct socket handed to another uid -----------------------------------

/// As the member: hand two fresh direct sockets to the test (over the socket that is its
/// stdin), which gives them to processes of `nobody`; then store a value on a third as
/// itself.
async fn pass_on() {
    let c = member_client().await;
    let to_test = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    for _ in 0..2 {
        let s = open_socket(&c).await;
        send_with_fds(&to_test, b"s", &[s.as_fd()]).unwrap();
    }
    let d = c.open_direct().await.unwrap();
    let own = d.put("passed", "own", b"mine").await.is_ok();
    say(&format!("own {}", if own { "served" } else { "refused" }));
}

/// A descriptor sent on `s` with one byte.
fn recv_fd(s: &UnixStream) -> OwnedFd {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    rustix::net::recvmsg(s.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).unwrap();
    control
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("a descriptor from the member")
}

/// As `nobody`, on the socket that is its stdin: the handshake, claiming the opener's uid
/// (`claim`) or nothing, then a Put into the opener's namespace.
fn nobody(claim: bool) {
    let opener: u32 = std::env::var(OPENER_UID).unwrap().parse().unwrap();
    let mut s = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    let mode = if claim { "claim" } else { "empty" };
    let key = format!("k-{mode}");
    let served = handshake(&mut s, claim.then_some(opener))
        && s.write_all(&raw_call(
            "Put",
            1,
            &(
                "passed",
                key.as_str(),
                serde_bytes::Bytes::new(b"forged"),
                std::collections::HashMap::<String, zbus::Variant>::new(),
            ),
        ))
        .is_ok()
        && !closed_by_daemon_before_reply(&mut s);
    say(&format!(
        "{mode} {}",
        if served { "served" } else { "closed" }
    ));
}

/// True when the daemon closes `s` before any reply bytes arrive.
fn closed_by_daemon_before_reply(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_socket_handed_to_another_uid_is_closed_and_its_put_does_not_land() {
    if !dbus::prerequisites() {
        return;
    }
    let (bus, daemon, c) = daemon(&[]).await;
    let (from_member, to_test) = UnixStream::pair().unwrap();
    let member = Attacker::start(
        &bus.address,
        TEST_USER,
        "pass-on",
        Stdio::from(OwnedFd::from(to_test)),
        &[],
    );
    let (uid, _) = ids(TEST_USER);
    let mut lines = Vec::new();
    for role in ["nobody-claim", "nobody-empty"] {
        let fd = recv_fd(&from_member);
        let nobody = Attacker::start(
            &bus.address,
            "nobody",
            role,
            Stdio::from(fd),
            &[(OPENER_UID, uid.to_string())],
        );
        lines.extend(nobody.all());
    }
    lines.extend(member.all());
    lines.sort();
    assert_eq!(
        lines,
        ["claim closed", "empty closed", "own served"],
        "what the nobody processes and the member got"
    );
    for key in ["k-claim", "k-empty"] {
        assert_eq!(
            c.get("passed", key).await.unwrap(),
            None,
            "a Put by nobody on the member's socket landed ({key})"
        );
    }
    assert_eq!(
        c.get("passed", "own").await.unwrap().as_deref(),
        Some(&b"mine"[..])
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("uid {uid}")) && log.contains("uid 65534"),
        "no log line naming both uids:\n{log}"
    );
    let _open = served_within_a_second(&c, &daemon, "sockets handed on").await;
}

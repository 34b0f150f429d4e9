//! Hostile callers on direct connections (OpenDirect): no bus daemon stands between them and
//! numa-cached to bound what they send. The daemon's memory must stay bounded (its peak RSS
//! from /proc/PID/status, the kernel's figure) against a flood of real pipelined PutMany
//! calls over several connections, against 16 connections that each announce a large
//! message and stall, against messages announced past the per-message limit, and against a
//! peer that pipelines calls returning large values and never reads its replies; other
//! callers must still be served, and the daemon stays up.

mod dbus;
mod support;

use dbus::{Bus, Daemon, TEST_USER, noise, peak_growth, status_kib};
use numa_cache::policy::sockq;
use numa_cache_client::Client;
use numa_cache_client::names;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// `calls` pipelined PutMany calls of `per` entries of 1 MiB each on `d`, all sent before
/// any reply is awaited: (calls stored, errors of the refused ones).
fn flood(
    d: Client,
    calls: usize,
    per: usize,
    tag: String,
) -> impl std::future::Future<Output = (usize, Vec<String>)> {
    let value = vec![0x3cu8; 1 << 20];
    let tasks: Vec<_> = (0..calls)
        .map(|call| {
            let d = d.clone();
            let value = value.clone();
            let tag = tag.clone();
            tokio::spawn(async move {
                let keys: Vec<String> = (0..per)
                    .map(|i| format!("{tag}-p{per}-c{call}-{i}"))
                    .collect();
                let entries: Vec<(&str, &[u8])> = keys
                    .iter()
                    .map(|k| (k.as_str(), value.as_slice()))
                    .collect();
                d.put_many("flood", &entries).await
            })
        })
        .collect();
    async move {
        let (mut ok, mut refused) = (0, Vec::new());
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => refused.push(e.to_string()),
            }
        }
        (ok, refused)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_pipelined_put_many_on_four_direct_connections_is_bounded() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    // A memory tier of 1 MiB, so that the peak RSS shows what the calls hold, not the
    // values the cache keeps in memory.
    let memory = [("OPDBUS_CACHE_MEMORY_BYTES", "1M")];
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &memory);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon.pid();
    c.put("calm", "before", b"v").await.unwrap();
    let hwm0 = status_kib(pid, "VmHWM:");
    let mut direct = Vec::new();
    for _ in 0..4 {
        direct.push(c.open_direct().await.expect("OpenDirect"));
    }

    // 1. On each of 4 connections at once, 16 calls of 16 MiB (the PutMany limit): 1 GiB
    // in all, every call accepted in the end. While it runs, a calm caller on the bus is
    // served.
    let floods: Vec<_> = direct
        .iter()
        .enumerate()
        .map(|(i, d)| tokio::spawn(flood(d.clone(), 16, 16, format!("d{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calm = tokio::time::timeout(Duration::from_secs(20), c.put("calm", "during", b"v")).await;
    for f in floods {
        let (ok, refused) = f.await.unwrap();
        assert_eq!((ok, refused.len()), (16, 0), "{refused:?}");
    }
    assert!(
        matches!(calm, Ok(Ok(_))),
        "the calm caller was not served: {calm:?}"
    );
    let (hwm, grew_mib) = peak_growth(pid, hwm0, "4 x 16 pipelined PutMany of 16 MiB (1 GiB)");
    // The uid's budget (64 MiB) admits four 16 MiB calls at a time across its connections
    // until they are answered; each is held by zbus and copied by the handler. Measured:
    // +165-196 MiB; +333-345 MiB when a call's share is given back on receipt instead of
    // on its reply, more without the budget.
    assert!(
        grew_mib < 256,
        "a flood on four direct connections raised the daemon's peak RSS by {grew_mib} MiB"
    );
    let sample = c.get("flood", "d3-p16-c15-15").await.unwrap();
    assert_eq!(sample.as_deref(), Some(&[0x3cu8; 1 << 20][..]));

    // 2. A call larger than a direct connection accepts (100 MiB of values) closes that
    // connection unread, whatever the client sends after it; the other connections and the
    // daemon go on.
    let (ok, refused) = flood(direct[0].clone(), 2, 100, "big".into()).await;
    assert_eq!((ok, refused.len()), (0, 2), "{refused:?}");
    assert!(
        direct[0].ping().await.is_err(),
        "the connection that sent 100 MiB is still served"
    );
    direct[1]
        .ping()
        .await
        .expect("another direct connection is served");
    let hwm2 = status_kib(pid, "VmHWM:");
    assert!(
        hwm2.saturating_sub(hwm) >> 10 < 32,
        "two 100 MiB calls raised the peak RSS from {} MiB to {} MiB",
        hwm >> 10,
        hwm2 >> 10
    );
    c.ping().await.expect("the daemon is up");
}

// ---- announce-and-stall: a peer that says a message is long and never sends it ----------

/// The socket of a fresh direct connection (OpenDirect over the bus), with the SASL
/// handshake done by hand as root (EXTERNAL, uid 0); `after_begin` goes out in the same
/// write as the final BEGIN.
async fn open_raw(c: &Client, after_begin: &[u8]) -> UnixStream {
    open_raw_with(c, after_begin, false).await
}

/// As [`open_raw`]; with `fds`, the handshake also agrees on passing file descriptors.
async fn open_raw_with(c: &Client, after_begin: &[u8], fds: bool) -> UnixStream {
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
    let mut s = UnixStream::from(std::os::fd::OwnedFd::from(fd));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\0AUTH EXTERNAL 30\r\n").unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "the daemon hung up mid-handshake"
        );
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    if fds {
        s.write_all(b"NEGOTIATE_UNIX_FD\r\n").unwrap();
        line.clear();
        while !line.ends_with(b"\r\n") {
            assert_eq!(
                s.read(&mut byte).unwrap(),
                1,
                "the daemon hung up mid-handshake"
            );
            line.push(byte[0]);
        }
        assert_eq!(
            line,
            b"AGREE_UNIX_FD\r\n",
            "{}",
            String::from_utf8_lossy(&line)
        );
    }
    s.write_all(&[&b"BEGIN\r\n"[..], after_begin].concat())
        .unwrap();
    s
}

/// A little-endian method call's primary header announcing `body_len` body bytes and no
/// header fields: the whole message is 16 + `body_len` bytes.
fn primary_header(body_len: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = b'l';
    h[1] = 1; // method call
    h[3] = 1; // protocol version
    h[4..8].copy_from_slice(&body_len.to_le_bytes());
    h[8..12].copy_from_slice(&1u32.to_le_bytes()); // serial
    h
}

/// True when the daemon closed `s` (EOF or reset) within 10 s.
fn closed_by_daemon(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_direct_connections_announcing_big_messages_and_stalling_cost_one_budget() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon.pid();
    c.put("calm", "before", b"v").await.unwrap();
    let hwm0 = status_kib(pid, "VmHWM:");

    // Each of the 16 connections one uid may hold announces a message of exactly the
    // per-message limit (32 MiB, allowed) and sends nothing more.
    let announce = (32u32 << 20) - 16;
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(open_raw(&c, &primary_header(announce)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, grew_mib) = peak_growth(pid, hwm0, "16 x 32 MiB announced, 256 bytes sent");
    // Unbounded, this is 16 x 32 MiB = 512 MiB; the per-uid budget (64 MiB) admits two.
    assert!(
        grew_mib < 64 + 32,
        "announce-and-stall on 16 direct connections raised the daemon's peak RSS by {grew_mib} MiB"
    );
    // The bus is still served, and the daemon is up.
    tokio::time::timeout(Duration::from_secs(10), c.put("calm", "during", b"v"))
        .await
        .expect("a bus caller was served within 10 s")
        .unwrap();

    // The two let in must arrive within 10 s: their connections are closed then, with a
    // log line, and the next ones let in.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = vec![false; stalled.len()];
    while closed.iter().filter(|c| **c).count() < 2 && Instant::now() < deadline {
        for (s, c) in stalled.iter_mut().zip(closed.iter_mut()) {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => *c = true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => *c = true,
                _ => (),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n_closed = closed.iter().filter(|c| **c).count();
    assert!(
        n_closed >= 2,
        "{n_closed} stalled connections closed 15 s after their headers"
    );
    let log = daemon.log();
    assert!(
        log.contains("uid 0 sent 16 of the 33554432 bytes of a message in 10 s"),
        "no log line for the stalled message:\n{log}"
    );

    // Hanging up gives the budget back: a fresh direct connection stores 16 MiB at once.
    drop(stalled);
    let value = vec![7u8; 1 << 20];
    let keys: Vec<String> = (0..16).map(|i| format!("after-{i}")).collect();
    let entries: Vec<(&str, &[u8])> = keys.iter().map(|k| (k.as_str(), &value[..])).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        match c.open_direct().await {
            Ok(d) => break d,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the slots to come back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no direct connection 10 s after the stalled ones hung up: {e}"),
        }
    };
    let stored = tokio::time::timeout(Duration::from_secs(20), d.put_many("calm", &entries))
        .await
        .expect("a 16 MiB PutMany within 20 s once the stalled peers hung up")
        .unwrap();
    assert_eq!(stored, 16);
    assert_eq!(c.get("calm", "after-15").await.unwrap(), Some(value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_announced_past_the_limit_closes_its_connection_unread() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon.pid();
    let hwm0 = status_kib(pid, "VmHWM:");

    // 128 MiB (the D-Bus maximum, more than any legit call) on 15 connections, and a body
    // length of 2^32-1 on the 16th; half of them send the header in the write that ends
    // the handshake, half after it.
    let mut peers = Vec::new();
    for i in 0..16 {
        let body = if i == 15 {
            u32::MAX
        } else {
            (128u32 << 20) - 16
        };
        if i % 2 == 0 {
            peers.push(open_raw(&c, &primary_header(body)).await);
        } else {
            let mut s = open_raw(&c, &[]).await;
            s.write_all(&primary_header(body)).unwrap();
            peers.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, grew_mib) = peak_growth(pid, hwm0, "16 oversized announcements");
    assert!(
        grew_mib < 32,
        "oversized announcements raised the daemon's peak RSS by {grew_mib} MiB"
    );
    for (i, s) in peers.iter_mut().enumerate() {
        assert!(
            closed_by_daemon(s),
            "connection {i} still open 10 s after its header"
        );
    }
    let log = daemon.log();
    assert!(
        log.contains("uid 0")
            && log.contains(&(128u64 << 20).to_string())
            && log.contains(&(32u64 << 20).to_string()),
        "no log line naming the uid, the announced length and the limit:\n{log}"
    );
    c.ping().await.expect("the daemon is up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_small_calls_pass_the_budget_and_all_complete() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let d = c.open_direct().await.expect("OpenDirect");
    d.put("small", "k", b"value").await.unwrap();
    // Each call counts at least 64 KiB against the uid's 64 MiB: 3000 at once are more than
    // twice the budget, so reads wait for answers, and every call still completes.
    let calls: Vec<_> = (0..3000)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    d.get("small", "k")
                        .await
                        .map(|v| v == Some(b"value".to_vec()))
                } else {
                    d.ping().await.map(|_| true)
                }
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ok = 0;
        for t in calls {
            if matches!(t.await.unwrap(), Ok(true)) {
                ok += 1;
            }
        }
        ok
    })
    .await
    .expect("3000 pipelined calls on one direct connection within 60 s");
    assert_eq!(all, 3000);
}

// ---- replies never read: a peer that pipelines value-returning calls ---------------------

/// A call of the Cache interface as the bytes a client would send, with `serial`.
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

/// The env var that makes the test binary the other user's process ([`other_user_calls`]).
const OTHER_ROLE: &str = "NUMA_CACHE_FLOOD_OTHER_USER";

/// What another user (numacache-test) does while root's peer floods: a Put and Get on the
/// bus and on a direct connection of its own, one value of 4 MiB; each printed as a
/// `RESULT` line.
async fn other_user_calls() {
    let c = Client::connect(&std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap())
        .await
        .expect("connect");
    let v = noise(4 << 20, 99);
    let bus = async {
        c.put("flood-other", "bus", &v).await?;
        c.get("flood-other", "bus").await
    };
    let r = tokio::time::timeout(Duration::from_secs(20), bus).await;
    println!(
        "RESULT bus {}",
        matches!(&r, Ok(Ok(Some(got))) if *got == v)
    );
    let direct = async {
        let d = c.open_direct().await?;
        d.put("flood-other", "direct", &v).await?;
        d.get("flood-other", "direct").await
    };
    let r = tokio::time::timeout(Duration::from_secs(20), direct).await;
    println!(
        "RESULT direct {}",
        matches!(&r, Ok(Ok(Some(got))) if *got == v)
    );
}

/// Run this test binary's `..._never_read_are_bounded` as numacache-test, which then makes
/// [`other_user_calls`]; its `RESULT` lines.
fn run_other_user(bus_address: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", TEST_USER, "--", "env"])
        .arg(format!("DBUS_SYSTEM_BUS_ADDRESS={bus_address}"))
        .arg(format!("{OTHER_ROLE}=1"))
        .arg(exe)
        .args([
            "replies_a_direct_peer_never_reads_are_bounded",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("runuser");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the other user's process failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.find("RESULT ").map(|at| l[at + 7..].to_string()))
        .collect()
}

#[test]
fn replies_a_direct_peer_never_reads_are_bounded() {
    if std::env::var(OTHER_ROLE).is_ok() {
        // The re-run as the other user (run_other_user).
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(other_user_calls());
        return;
    }
    if !dbus::prerequisites() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(replies_never_read());
}

async fn replies_never_read() {
    dbus::ensure_test_user();
    let bus = Bus::start();
    // A memory tier of 1 MiB, so that the peak RSS shows what the calls hold, not the
    // values the cache keeps in memory.
    let memory = [("OPDBUS_CACHE_MEMORY_BYTES", "1M")];
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &memory);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon.pid();
    // Four values of 16 MiB (the most a Get returns) and two of 8 MiB (a GetMany of both is
    // 16 MiB, the most it returns).
    let big: Vec<Vec<u8>> = (0..4).map(|i| noise(16 << 20, i)).collect();
    let half: Vec<Vec<u8>> = (0..2).map(|i| noise(8 << 20, 10 + i)).collect();
    for (i, v) in big.iter().enumerate() {
        c.put("replies", &format!("big{i}"), v).await.unwrap();
    }
    for (i, v) in half.iter().enumerate() {
        c.put("replies", &format!("half{i}"), v).await.unwrap();
    }
    c.put("calm", "before", b"v").await.unwrap();
    // The peak so far (the puts above) is forgotten: VmHWM starts again from the RSS now.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let hwm0 = status_kib(pid, "VmHWM:");

    // 64 calls on one direct connection, each returning 16 MiB (1 GiB in all): 48 Get and
    // 16 GetMany, all sent at once (a few KiB), and no reply ever read.
    let mut calls = Vec::new();
    for serial in 1..=64u32 {
        if serial % 4 == 0 {
            calls.extend(raw_call(
                "GetMany",
                serial,
                &("replies", vec!["half0", "half1"]),
            ));
        } else {
            let key = format!("big{}", serial % 4);
            calls.extend(raw_call("Get", serial, &("replies", key.as_str())));
        }
    }
    let hostile = open_raw(&c, &calls).await;
    // Let the daemon do what it will with them (reading 1 GiB from the shards takes a
    // second or two on its own).
    tokio::time::sleep(Duration::from_secs(6)).await;

    let (_, grew_mib) = peak_growth(pid, hwm0, "64 pipelined Get/GetMany of 16 MiB never read");
    // The uid's reply budget (64 MiB) lets four replies of 16 MiB be read at a time and
    // held until written. While one is read it exists up to four times over (the shard's
    // read buffer, the decoded value, the copy offered to the memory tier, the message
    // zbus serializes it into): 64 + 4 x 3 x 16 = 256 MiB at most. Measured: +2465 MiB
    // without the reply budget (every finished reply held), +184-232 MiB with it.
    assert!(
        grew_mib < 256 + 32,
        "64 unread replies of 16 MiB raised the daemon's peak RSS by {grew_mib} MiB"
    );

    // Meanwhile root's calm bus caller and another user (bus and direct) are served.
    let calm = tokio::time::timeout(Duration::from_secs(10), c.get("calm", "before")).await;
    assert!(
        matches!(&calm, Ok(Ok(Some(v))) if v == b"v"),
        "the calm caller was not served: {calm:?}"
    );
    let address = bus.address.clone();
    let other = tokio::task::spawn_blocking(move || run_other_user(&address))
        .await
        .unwrap();
    assert_eq!(other, ["bus true", "direct true"], "the other user's calls");

    // The peer hangs up: its calls still waiting for room give up without reading their
    // values (the cache counts a hit per value read), and what its calls held is given
    // back, so a fresh direct connection of the same uid gets 8 values of 16 MiB at once
    // and a GetMany of 16 MiB.
    let hits = async || {
        let s = c.get_stats().await.unwrap();
        s["totals"]["hits"]
            .as_u64()
            .unwrap_or_else(|| panic!("no totals.hits in GetStats: {s}"))
    };
    let hits0 = hits().await;
    drop(hostile);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read_after = hits().await - hits0;
    eprintln!("values read after the peer hung up: {read_after}");
    assert!(
        read_after <= 8,
        "{read_after} values read for a peer that had hung up"
    );
    let d = c.open_direct().await.expect("OpenDirect");
    let gets: Vec<_> = (0..8)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.get("replies", &format!("big{}", i % 4)).await })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut got = Vec::new();
        for g in gets {
            got.push(g.await.unwrap().unwrap());
        }
        let many = d.get_many("replies", &["half0", "half1"]).await.unwrap();
        (got, many)
    })
    .await
    .expect("8 Gets and a GetMany of 16 MiB within 30 s once the peer hung up");
    for (i, v) in all.0.iter().enumerate() {
        assert!(v.as_ref() == Some(&big[i % 4]), "Get {i} read back wrong");
    }
    assert_eq!(all.1.get("half1"), Some(&half[1]));
    c.ping().await.expect("the daemon is up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_callers_on_direct_connections_fill_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    // 16 waiters of one uid, on 4 direct connections: each GetOrLease takes room for a
    // missing key's reply (4 KiB) while it waits, and a filled value larger than that is
    // read again with room for its size; every one gets the value, filled once.
    let mut direct = Vec::new();
    for _ in 0..4 {
        direct.push(c.open_direct().await.expect("OpenDirect"));
    }
    let fills = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let d = direct[i % 4].clone();
            let fills = Arc::clone(&fills);
            tokio::spawn(async move {
                d.get_or_insert_with("flight", "k", Duration::from_secs(10), || async move {
                    fills.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, numa_cache_client::Error>(b"filled once".to_vec())
                })
                .await
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(20), async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    })
    .await
    .expect("16 callers served within 20 s");
    assert!(all.iter().all(|v| v == b"filled once"), "{all:?}");
    assert_eq!(fills.load(Ordering::SeqCst), 1, "the fill must run once");
}

// ---- reads in flight: small values on direct connections are read at once ---------------

/// Run `cmd` (a shell line); its stdout, or a panic naming the command and its stderr.
fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ext4 file system on a loop device over a file, mounted at `mount`, whose reads by the
/// processes put in its cgroup can be held back (a throttle of a few bytes a second: cgroup
/// v1's blkio.throttle, or v2's io.max): every read they make that misses the page cache
/// then waits until the throttle is lifted. Lifted, unmounted and removed when dropped.
struct Throttled {
    mount: std::path::PathBuf,
    loopdev: String,
    image: std::path::PathBuf,
    /// The device's major:minor.
    dev: String,
    cgroup: std::path::PathBuf,
    /// cgroup v2 (io.max) rather than v1 (blkio.throttle.read_bps_device).
    v2: bool,
}

impl Throttled {
    fn new(dir: &std::path::Path) -> Throttled {
        let image = dir.join("disk.img");
        let mount = dir.join("state");
        std::fs::create_dir_all(&mount).unwrap();
        sh(&format!("truncate -s 256M {}", image.display()));
        let loopdev = sh(&format!("losetup -f --show {}", image.display()));
        let name = loopdev.trim_start_matches("/dev/");
        let dev = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_string();
        let v1 = std::path::Path::new("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device");
        let v2 = !v1.exists();
        if v2 {
            // The root cgroup may hand the io controller to its children.
            std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+io").unwrap_or_else(|e| {
                panic!("neither cgroup v1 blkio nor the v2 io controller is usable: {e}")
            });
        }
        let base = if v2 {
            "/sys/fs/cgroup"
        } else {
            "/sys/fs/cgroup/blkio"
        };
        let cgroup =
            std::path::PathBuf::from(format!("{base}/numa-cache-test-{}", std::process::id()));
        let d = Throttled {
            mount,
            loopdev,
            image,
            dev,
            cgroup,
            v2,
        };
        sh(&format!("mkfs.ext4 -q {}", d.loopdev));
        sh(&format!("mount {} {}", d.loopdev, d.mount.display()));
        std::fs::create_dir_all(&d.cgroup).unwrap();
        d
    }

    /// Put process `pid` (all its threads) in the cgroup.
    fn enter(&self, pid: u32) {
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Write everything back and drop the clean page cache, so that reads go to the device.
    fn drop_caches(&self) {
        sh(&format!("sync -f {}", self.mount.display()));
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    }

    /// Reads of the cgroup's processes from the device go at `bps` bytes a second (0: as
    /// fast as it can).
    fn throttle(&self, bps: u64) {
        let (file, line) = self.limit(bps);
        std::fs::write(self.cgroup.join(file), line).unwrap();
    }

    /// The cgroup file and line that set the read limit to `bps` (0: none).
    fn limit(&self, bps: u64) -> (&'static str, String) {
        match (self.v2, bps) {
            (true, 0) => ("io.max", format!("{} rbps=max", self.dev)),
            (true, bps) => ("io.max", format!("{} rbps={bps}", self.dev)),
            (false, bps) => (
                "blkio.throttle.read_bps_device",
                format!("{} {bps}", self.dev),
            ),
        }
    }
}

impl Drop for Throttled {
    fn drop(&mut self) {
        let (file, line) = self.limit(0);
        let _ = std::fs::write(self.cgroup.join(file), line);
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.loopdev])
            .status();
        let _ = std::fs::remove_file(&self.image);
        // Empty once the daemon is gone (it is dropped before this).
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// How many threads of `pid` sleep uninterruptibly (state D: here, reads waiting for the
/// throttled device).
fn threads_in_d(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // "tid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('D'))
        })
        .count()
}

/// 64 Gets of 4 KiB values on four direct connections of one uid, whose values are on a
/// disk that does not answer (reads throttled to 512 bytes a second; the memory tier is off):
/// every one is reading at once (the daemon's threads waiting for the device, counted from
/// /proc), because each takes room for 4 KiB of reply. Room for 16 MiB each (the largest
/// reply) would let four read at a time, the uid's 64 MiB, and the others wait. Once the
/// device answers, each gets its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_gets_of_small_values_on_direct_connections_read_at_once() {
    if !dbus::prerequisites()
        || !support::require_tool("losetup", "mount")
        || !support::require_tool("mkfs.ext4", "e2fsprogs")
    {
        return;
    }
    let bus = Bus::start();
    let disk = Throttled::new(bus.dir());
    let off = [("OPDBUS_CACHE_MEMORY_BYTES", "0")];
    let daemon = Daemon::start(&bus, &disk.mount, &off);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon.pid();
    disk.enter(pid);
    let values: Vec<Vec<u8>> = (0..64).map(|i| noise(4 << 10, 200 + i)).collect();
    for (i, v) in values.iter().enumerate() {
        c.put("inflight", &format!("k{i}"), v).await.unwrap();
    }
    let mut direct = Vec::new();
    for _ in 0..4 {
        direct.push(c.open_direct().await.expect("OpenDirect"));
    }
    // Served once before the device stops, so that nothing but the values' reads waits.
    assert_eq!(
        direct[0].get("inflight", "k0").await.unwrap().as_deref(),
        Some(&values[0][..])
    );
    disk.drop_caches();
    // Counted from no thread in D: a baseline taken in passing could catch a flush waiting
    // for the device, and the Gets would then need more than 64 threads in D to pass.
    let quiet = Instant::now() + Duration::from_secs(60);
    while threads_in_d(pid) > 0 {
        assert!(
            Instant::now() < quiet,
            "threads of the idle daemon stayed in D for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk.throttle(512);
    let gets: Vec<_> = (0..64)
        .map(|i| {
            let d = direct[i % 4].clone();
            tokio::spawn(async move { d.get("inflight", &format!("k{i}")).await })
        })
        .collect();
    // Until all 64 are seen reading at once; a generous deadline, as each Get must first be
    // scheduled on a loaded machine.
    let until = Instant::now() + Duration::from_secs(60);
    let mut reading = 0;
    while Instant::now() < until && reading < 64 {
        reading = reading.max(threads_in_d(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk.throttle(0);
    eprintln!("Gets of 4 KiB reading at once from a disk that does not answer: {reading} of 64");
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        let mut got = Vec::new();
        for g in gets {
            got.push(g.await.unwrap().unwrap());
        }
        got
    })
    .await
    .expect("the 64 Gets answered once the device answers");
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(&values[i][..]), "Get k{i}");
    }
    assert!(
        reading >= 64,
        "{reading} of 64 Gets of 4 KiB were reading at once on direct connections of one uid"
    );
    drop((direct, c));
    drop(daemon);
}

// ---- memfds never read: a peer that pipelines GetFd and never reads -----------------------

/// Shmem of /proc/meminfo in MiB: memfds (here, the daemon's GetFd replies) live there.
fn shmem_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("Shmem in /proc/meminfo")
        >> 10
}

/// 32 GetFd calls for a 16 MiB value on a direct connection whose peer never reads: each
/// reply's memfd counts against the uid's reply budget (64 MiB) until the peer has read
/// it, so the daemon makes four memfds (the cache counts a hit per value read) and the
/// other calls wait; 32 when a reply's room is given back once written. Shmem (the kernel's
/// count of memfds, machine-wide, so other tests running meanwhile add to it) is printed:
/// +64 MiB measured, +512 MiB without the hold. Once the peer hangs up, its memfds are
/// freed and the room comes back: a fresh connection of the same uid reads the value by
/// GetFd 8 times in a row (twice its budget, so each read reply's room came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memfds_a_direct_peer_never_reads_are_bounded() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let value = noise(16 << 20, 5);
    c.put("memfds", "v", &value).await.unwrap();
    assert!(c.get_fd("memfds", "v").await.unwrap() == Some(value.clone()));
    let hits = async || {
        let s = c.get_stats().await.unwrap();
        s["totals"]["hits"]
            .as_u64()
            .unwrap_or_else(|| panic!("no totals.hits in GetStats: {s}"))
    };
    let hits0 = hits().await;
    let shmem0 = shmem_mib();

    let mut calls = Vec::new();
    for serial in 1..=32u32 {
        calls.extend(raw_call("GetFd", serial, &("memfds", "v")));
    }
    let sent = Instant::now();
    let hostile = open_raw_with(&c, &calls, true).await;
    // Wait for the daemon to have taken in all 32 calls (none left unread in the socket)
    // and made its four memfds.
    let deadline = sent + Duration::from_secs(60);
    loop {
        let unread = sockq::unread_by_peer(hostile.as_fd()).expect("SIOCOUTQ");
        let made = hits().await - hits0;
        assert!(
            made <= 4,
            "{made} memfds of 16 MiB made for a peer that reads none"
        );
        if made == 4 && unread == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s: {made} memfds made, {unread} bytes of the calls unread"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other 28 calls are in the daemon: without the hold their memfds would follow at
    // least as fast as the first four came. Watch that long (a second at least): no fifth.
    let watch = sent.elapsed().max(Duration::from_secs(1));
    let until = Instant::now() + watch;
    while Instant::now() < until {
        let made = hits().await - hits0;
        assert_eq!(made, 4, "memfds of 16 MiB made for a peer that reads none");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grew = shmem_mib().saturating_sub(shmem0);
    eprintln!(
        "32 pipelined GetFd of 16 MiB never read: 4 memfds made (and no more for {watch:?}), \
         Shmem +{grew} MiB"
    );

    drop(hostile);
    let d = c.open_direct().await.expect("OpenDirect");
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        let mut got = Vec::new();
        for _ in 0..8 {
            got.push(d.get_fd("memfds", "v").await.unwrap());
        }
        got
    })
    .await
    .expect("8 GetFd of 16 MiB on a fresh connection once the peer hung up");
    assert!(got.iter().all(|v| v.as_ref() == Some(&value)));
    eprintln!(
        "Shmem after the peer hung up and 8 GetFd read: +{} MiB",
        shmem_mib().saturating_sub(shmem0)
    );
    c.ping().await.expect("the daemon is up");
}

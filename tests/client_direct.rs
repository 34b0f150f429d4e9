//! OpenDirect through the client crate against a real daemon on a private system-like bus
//! with a real polkitd (tests/dbus harness): the Cache interface over the peer-to-peer
//! connection (bytes read back through the bus), the admin methods and other interfaces
//! absent there, a direct connection outliving the bus connection it came from, the
//! handshake that must claim the caller's uid, the per-user cap (also against callers who
//! never finish the handshake), connections closed when their peer hangs up (the daemon's
//! descriptors, counted in /proc) and at the daemon's stop. The bus policy (nobody refused,
//! a numacache member served as itself) is checked in tests/client_bus.rs.

mod dbus;
mod support;

use dbus::{Bus, Daemon};
use numa_cache_client::names;
use numa_cache_client::{Client, Error, Lease, PutOptions};
use std::time::{Duration, Instant};

/// The unix sockets the daemon holds open (its bus connection, direct connections, ...).
fn daemon_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count()
}

/// Wait up to 10 s for `cond`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_direct_connection_serves_the_cache_and_outlives_its_bus_connection() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let watcher = Client::connect(&bus.address).await.unwrap();
    let opener = Client::connect(&bus.address).await.unwrap();
    let d = opener.open_direct().await.expect("OpenDirect as root");
    assert!(
        d.connection().unique_name().is_none(),
        "a direct connection has no bus name"
    );
    d.ping().await.expect("Peer.Ping on the direct connection");

    // Every data method over the direct connection; what it stores is what the bus reads.
    let v = vec![0xa5u8; 4096];
    let node = d.put("direct", "k", &v).await.expect("Put");
    assert_eq!(watcher.get("direct", "k").await.unwrap(), Some(v.clone()));
    assert_eq!(d.get("direct", "k").await.unwrap(), Some(v.clone()));
    assert_eq!(d.get("direct", "missing").await.unwrap(), None);
    let info = d.lookup("direct", "k").await.unwrap().expect("Lookup");
    assert_eq!((info.size, info.node), (4096, node));
    d.put_with(
        "direct",
        "ttl",
        b"t",
        PutOptions::new().ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert!(
        watcher
            .lookup("direct", "ttl")
            .await
            .unwrap()
            .unwrap()
            .expires
            .is_some()
    );
    assert_eq!(
        d.put_many("direct", &[("m1", b"one"), ("m2", b"two")])
            .await
            .unwrap(),
        2
    );
    let found = d.get_many("direct", &["m1", "m2", "nope"]).await.unwrap();
    assert_eq!(
        (found.len(), found["m1"].as_slice(), found["m2"].as_slice()),
        (2, &b"one"[..], &b"two"[..])
    );
    let big = (0..(3usize << 20))
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>();
    d.put("direct", "big", &big)
        .await
        .expect("PutFd over the direct connection");
    assert!(watcher.get("direct", "big").await.unwrap() == Some(big.clone()));
    assert!(d.get_fd("direct", "big").await.unwrap() == Some(big));
    assert_eq!(
        d.get_or_lease("direct", "fill", Duration::from_millis(500))
            .await
            .unwrap(),
        Lease::Fill
    );
    d.put("direct", "fill", b"filled").await.unwrap();
    assert_eq!(
        d.get_or_lease("direct", "fill", Duration::from_millis(500))
            .await
            .unwrap(),
        Lease::Hit(b"filled".to_vec())
    );
    // Reads over it count as the bus's do: hits (served from the memory tier without a
    // thread hop) and misses.
    let before = watcher.stats().await.unwrap();
    for _ in 0..3 {
        assert_eq!(d.get("direct", "k").await.unwrap(), Some(v.clone()));
    }
    assert_eq!(d.get("direct", "absent").await.unwrap(), None);
    let after = watcher.stats().await.unwrap();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (3, 1),
        "{before:?} -> {after:?}"
    );
    assert!(d.delete("direct", "k").await.unwrap());
    assert_eq!(watcher.get("direct", "k").await.unwrap(), None);
    let e = d.put("Bad NS", "k", b"v").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");

    // Not served there: the admin methods (AccessDenied by name), OpenDirect itself, and
    // every other interface (Strategy's SetStrategy among them).
    for (what, r) in [
        ("Clear", d.clear("direct").await.map(|_| ())),
        ("CreateSnapshot", d.create_snapshot().await.map(|_| ())),
        ("ListSnapshots", d.list_snapshots().await.map(|_| ())),
        ("DeleteSnapshot", d.delete_snapshot("x").await.map(|_| ())),
        ("OpenDirect", d.open_direct().await.map(|_| ())),
    ] {
        let e = r.expect_err(what);
        assert!(matches!(e, Error::AccessDenied(_)), "{what}: {e:?}");
    }
    let e = d.set_strategy("round_robin", None).await.unwrap_err();
    assert_eq!(
        e.dbus_name(),
        Some(names::error::UNKNOWN_INTERFACE),
        "{e:?}"
    );
    let e = d.reset_counters().await.unwrap_err();
    assert_eq!(
        e.dbus_name(),
        Some(names::error::UNKNOWN_INTERFACE),
        "{e:?}"
    );
    let e = d.topology().await.unwrap_err();
    assert_eq!(
        e.dbus_name(),
        Some(names::error::UNKNOWN_INTERFACE),
        "{e:?}"
    );
    assert!(watcher.strategy().await.unwrap().name != "round_robin");
    assert!(
        watcher.get("direct", "m1").await.unwrap().is_some(),
        "Clear was refused"
    );

    // The bus connection it was opened on goes away; the direct connection stays.
    let unique = opener.connection().unique_name().unwrap().to_string();
    drop(opener);
    let dbus = zbus::fdo::DBusProxy::new(watcher.connection())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dbus
        .name_has_owner(zbus::names::BusName::try_from(unique.as_str()).unwrap())
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "{unique} still on the bus after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        d.get("direct", "m1").await.unwrap().as_deref(),
        Some(&b"one"[..]),
        "the direct connection must outlive the bus connection it was opened on"
    );
    d.put("direct", "after", b"still here").await.unwrap();
    assert_eq!(
        watcher.get("direct", "after").await.unwrap().as_deref(),
        Some(&b"still here"[..])
    );

    // The blocking facade opens one too.
    let addr = bus.address.clone();
    let got = tokio::task::spawn_blocking(move || {
        let b = numa_cache_client::blocking::Client::connect(&addr)?;
        let direct = b.open_direct()?;
        drop(b);
        direct.get("direct", "after")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got.as_deref(), Some(&b"still here"[..]));
}

#[tokio::test]
async fn the_handshake_must_claim_the_callers_uid() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    // Root opens it; a process of uid 65534 that got the descriptor claims its own uid in
    // the SASL EXTERNAL handshake, and is refused.
    let fd = c.cache_proxy().open_direct().await.unwrap();
    let stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(fd));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .user_id(65534)
            .build(),
    )
    .await
    .expect("the daemon answers the handshake");
    assert!(r.is_err(), "a handshake claiming another uid was accepted");
    // Claiming root (the caller's uid) works.
    let fd = c.cache_proxy().open_direct().await.unwrap();
    let stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(fd));
    let conn = zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .user_id(0)
        .build()
        .await
        .expect("the caller's own uid");
    let d = Client::builder().connection(conn).build().await.unwrap();
    d.ping().await.unwrap();
}

#[tokio::test]
async fn direct_connections_are_capped_and_closed_on_hang_up_and_at_stop() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon.pid();
    c.ping().await.unwrap();
    let base = daemon_sockets(pid);

    // Sixteen per user; the seventeenth is Unavailable, naming the limit.
    let mut open = Vec::new();
    for i in 0..16 {
        let d = c
            .open_direct()
            .await
            .unwrap_or_else(|e| panic!("direct {i}: {e}"));
        d.ping().await.unwrap();
        open.push(d);
    }
    assert_eq!(daemon_sockets(pid), base + 16);
    let e = c.open_direct().await.unwrap_err();
    assert!(
        matches!(e, Error::Unavailable(ref m) if m.contains("16")),
        "{e:?}"
    );
    // A peer that hangs up gives its place back, and the daemon closes its end.
    open.pop();
    eventually("the daemon closing a hung-up direct connection", || {
        daemon_sockets(pid) == base + 15
    })
    .await;
    let d = c.open_direct().await.expect("the freed place");
    d.ping().await.unwrap();
    open.push(d);
    open.clear();
    eventually("the daemon closing every hung-up connection", || {
        daemon_sockets(pid) == base
    })
    .await;

    // Descriptors a hostile caller takes and never speaks on count too, until it hangs up.
    let mut raw = Vec::new();
    for _ in 0..16 {
        raw.push(c.cache_proxy().open_direct().await.unwrap());
    }
    let e = Error::from(c.cache_proxy().open_direct().await.unwrap_err());
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    raw.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        match c.open_direct().await {
            Ok(d) => break d,
            Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("after the silent callers hung up: {e:?}"),
        }
    };
    d.put("stop", "k", b"v").await.unwrap();

    // The daemon's stop closes the direct connection (the stop does not wait for it) and
    // the client gets an error, not a hang.
    let t0 = Instant::now();
    assert_eq!(daemon.stop(), Some(0), "a clean stop");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t0.elapsed()
    );
    let log = std::fs::read_to_string(bus.dir().join(format!("daemon-{}.log", std::process::id())))
        .unwrap_or_default();
    assert!(
        log.contains("closed 1 direct connections"),
        "the stop must close the open direct connection itself:\n{log}"
    );
    let r = tokio::time::timeout(Duration::from_secs(5), d.get("stop", "k"))
        .await
        .expect("a call on a closed direct connection must fail, not hang");
    assert!(r.is_err(), "{r:?}");
}

/// GetOrLease waiters on direct connections take room for a missing key's reply (4 KiB)
/// while they wait; the value the lease holder puts is 3 MiB, so each reads it, finds it
/// larger than its room, gives both back and reads it again with room for 3 MiB: every
/// waiter still gets the value put, whole. A Get of a value that grew after it was stored
/// small reads the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_direct_connections_get_a_fill_larger_than_their_room() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let value: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    // The bus caller takes the lease.
    assert!(matches!(
        c.get_or_lease("grow", "k", Duration::from_secs(10))
            .await
            .unwrap(),
        Lease::Fill
    ));
    let mut direct = Vec::new();
    for _ in 0..2 {
        direct.push(c.open_direct().await.expect("OpenDirect"));
    }
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            let d = direct[i % 2].clone();
            tokio::spawn(async move { d.get_or_lease("grow", "k", Duration::from_secs(10)).await })
        })
        .collect();
    // All 8 wait (the daemon counts them) before the value is put.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = c.get_stats().await.unwrap()["lease_waiters"].as_u64();
        if waiting == Some(8) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "8 waiters never queued: the daemon counts {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.put("grow", "k", &value).await.unwrap();
    for w in waiters {
        match tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a waiter answered")
            .unwrap()
            .unwrap()
        {
            Lease::Hit(v) => assert!(v == value, "a waiter read {} bytes back", v.len()),
            Lease::Fill => panic!("a waiter got the lease the bus caller held and ended"),
        }
    }
    // Small, then large: a Get on the direct connection reads each whole.
    direct[0].put("grow", "g", b"small").await.unwrap();
    assert_eq!(
        direct[0].get("grow", "g").await.unwrap().as_deref(),
        Some(&b"small"[..])
    );
    c.put("grow", "g", &value).await.unwrap();
    assert!(direct[0].get("grow", "g").await.unwrap() == Some(value));
}

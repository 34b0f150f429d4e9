//! The client crate against a real daemon on a private system-like bus with a real polkitd
//! (tests/dbus harness): every member of every interface through `numa_cache_client`, errors
//! by name, the memfd path for large values (bytes read back), the typed views and their
//! change streams, the blocking facade inside a runtime, and the callers the bus policy and
//! namespace ownership refuse (as `nobody` and as a `numacache` member, by re-running this
//! test binary under runuser).

mod dbus;
mod support;

use dbus::{Bus, Daemon, TEST_USER};
use futures_util::StreamExt;
use numa_cache_client::names::{self, ErrorKind};
use numa_cache_client::{Client, Error, Event, PutOptions};
use std::time::Duration;

/// A value of `len` bytes that no compressor shrinks to nothing and no offset error hides.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// The contract's error name of `e`; anything outside the contract (including a contract
/// name the client failed to map to its variant) shows as `unmapped`.
fn kind(e: &Error) -> String {
    e.kind()
        .map(|k| k.name().to_string())
        .unwrap_or_else(|| format!("unmapped {e:?}"))
}

async fn next_matching<T>(
    stream: &mut numa_cache_client::EventStream<T>,
    what: &str,
    mut want: impl FnMut(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s"))
            .unwrap_or_else(|| panic!("the stream ended before {what}"))
            .unwrap_or_else(|e| panic!("the stream failed before {what}: {e}"));
        if want(&item) {
            return item;
        }
    }
}

#[tokio::test]
async fn every_member_through_the_client_with_errors_by_name() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();

    // No daemon yet: a call is NotRunning, not a transport error or a hang.
    let c = Client::connect(&bus.address).await.expect("connect");
    let e = c.get("ns", "k").await.unwrap_err();
    assert!(e.is_not_running(), "{e:?}");
    let e = Client::connect("unix:path=/nonexistent/bus")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");

    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.expect("connect");
    c.ping().await.expect("Peer.Ping");

    // Cache: put/get/lookup/delete, options, misses as None.
    let node = c.put("clienttest", "k1", b"hello").await.expect("Put");
    assert_eq!(
        c.get("clienttest", "k1").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    let info = c
        .lookup("clienttest", "k1")
        .await
        .unwrap()
        .expect("an entry");
    assert_eq!((info.size, info.node, info.expires), (5, node, None));
    c.put_with(
        "clienttest",
        "ttl",
        b"x",
        PutOptions::new().ttl(Duration::from_secs(600)).node(node),
    )
    .await
    .expect("Put with ttl and node");
    let info = c.lookup("clienttest", "ttl").await.unwrap().unwrap();
    assert!(info.expires.is_some_and(|t| t > info.created), "{info:?}");
    assert_eq!(info.node, node, "the explicit node was not honoured");
    assert_eq!(c.get("clienttest", "missing").await.unwrap(), None);
    assert_eq!(c.lookup("clienttest", "missing").await.unwrap(), None);
    assert!(c.delete("clienttest", "k1").await.unwrap());
    assert!(!c.delete("clienttest", "k1").await.unwrap());
    assert_eq!(c.get("clienttest", "k1").await.unwrap(), None);

    // Large values: 2 MiB goes by PutFd (past the 1 MiB threshold) and comes back inline;
    // 17 MiB is more than Get returns inline (16 MiB), so get() falls back to GetFd.
    for (len, key) in [(2 << 20, "two-mib"), ((17 << 20) + 3, "seventeen-mib")] {
        let v = pattern(len, 7);
        c.put("clienttest", key, &v).await.expect("PutFd");
        let back = c.get("clienttest", key).await.unwrap().expect("a value");
        assert!(back == v, "{key}: {} bytes came back unequal", back.len());
        let back = c.get_fd("clienttest", key).await.unwrap().expect("a value");
        assert!(back == v, "{key} by GetFd: {} bytes unequal", back.len());
    }
    let raw = c.cache_proxy().get("clienttest", "seventeen-mib").await;
    assert_eq!(
        raw.map_err(Error::from).map(|_| ()).unwrap_err().kind(),
        Some(ErrorKind::TooLarge),
        "the daemon must refuse 17 MiB inline, or the fallback above proved nothing"
    );
    let small_limit = Client::builder()
        .address(&bus.address)
        .max_value_bytes(1 << 20)
        .build()
        .await
        .unwrap();
    let e = small_limit
        .get_fd("clienttest", "two-mib")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)), "{e:?}");

    // Errors by name.
    let e = c.put("Bad NS", "k", b"v").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c.put("clienttest", "", b"v").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c.set_strategy("fastest", None).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c.node_of_cpu(u32::MAX).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c
        .put_with("clienttest", "k", b"v", PutOptions::new().node(9999))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c.node(9999).await.unwrap_err();
    assert_eq!(e.dbus_name(), Some(names::error::UNKNOWN_OBJECT), "{e:?}");

    // Topology: the typed properties, the JSON and each node agree.
    let t = c.topology().await.unwrap();
    let report = c.get_topology().await.unwrap();
    assert!(!t.node_ids.is_empty());
    assert_eq!(
        t.node_ids,
        report.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>()
    );
    assert_eq!(t.distances.len(), t.node_ids.len());
    let nodes = c.nodes().await.unwrap();
    for (n, r) in nodes.iter().zip(&report.nodes) {
        assert_eq!((n.id, &n.cpus), (r.node_id, &r.cpu_list));
        assert_eq!(n.memory_total_bytes / (1024 * 1024), r.memory_mb);
        assert_eq!(
            n.distances.get(&n.id).copied(),
            t.distance(n.id, n.id),
            "node {} distance to itself",
            n.id
        );
    }
    let cpu = nodes.iter().find_map(|n| n.cpus.first().copied()).unwrap();
    let owner = nodes.iter().find(|n| n.cpus.contains(&cpu)).unwrap().id;
    assert_eq!(c.node_of_cpu(cpu).await.unwrap(), owner);
    c.refresh().await.expect("Refresh");
    assert!(!c.get_topology_json().await.unwrap().is_empty());

    // Strategy, with its signal and the typed view's stream.
    let mut events = c.events().await.unwrap();
    let mut views = c.watch_strategy().await.unwrap();
    let first = next_matching(&mut views, "the current strategy", |_| true).await;
    assert_eq!(first, c.strategy().await.unwrap());
    let r = c
        .set_strategy("round_robin", None)
        .await
        .expect("SetStrategy");
    assert_eq!(
        (r.status.as_str(), r.strategy.as_str()),
        ("applied", "round_robin")
    );
    let seen = next_matching(&mut events, "StrategyChanged", |e| {
        matches!(e, Event::StrategyChanged { .. })
    })
    .await;
    assert!(
        matches!(&seen, Event::StrategyChanged { name, node_preference: None, .. } if name == "round_robin"),
        "{seen:?}"
    );
    let view = next_matching(&mut views, "a round_robin view", |s| {
        s.name == "round_robin"
    })
    .await;
    assert_eq!(view.node_preference, None);
    let o = c.optimize("balanced", None, None).await.expect("Optimize");
    assert_eq!(o.status, "optimized");
    assert_eq!(c.strategy().await.unwrap().workload_type, "balanced");
    let b = c
        .bind_process(std::process::id(), owner, "default")
        .await
        .expect("BindProcess of this test process");
    assert_eq!(b.u32("pid").unwrap(), std::process::id());
    c.set_strategy("local_node", None).await.unwrap();

    // Stats: properties, JSON, history, reset.
    let s = c.stats().await.unwrap();
    assert!(s.hits >= 1 && s.misses >= 1, "{s:?}");
    let j = c.get_stats().await.unwrap();
    assert!(j["node_distribution"].is_object(), "{j}");
    assert!(c.get_history(0, 0).await.unwrap().is_array());
    c.reset_counters().await.expect("ResetCounters");
    let s = c.stats().await.unwrap();
    assert_eq!((s.hits, s.misses), (0, 0), "{s:?}");
    let n = c.node(owner).await.unwrap();
    assert!(n.memory_free_bytes > 0 && n.memory_free_bytes <= n.memory_total_bytes);

    // Admin: snapshots and clear.
    let snap = c.create_snapshot().await.expect("CreateSnapshot");
    assert!(c.list_snapshots().await.unwrap().contains(&snap));
    c.delete_snapshot(&snap).await.expect("DeleteSnapshot");
    assert!(!c.list_snapshots().await.unwrap().contains(&snap));
    let removed = c.clear("clienttest").await.expect("Clear");
    assert_eq!(removed, 3, "ttl, two-mib and seventeen-mib were left");
    assert_eq!(c.get("clienttest", "ttl").await.unwrap(), None);
}

#[tokio::test]
async fn upstream_facades_keep_upstreams_keys_and_encoding() {
    use numa_cache_client::upstream::{
        EmbeddingCache, WorkstackCache, WorkstackCacheConfig, sha256_hex,
    };
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    // The blocking facade, called from inside this test's tokio runtime, as operation-dbus
    // components do.
    let client = numa_cache_client::blocking::Client::connect(&bus.address).unwrap();
    let emb = EmbeddingCache::with_client(client.clone());
    assert_eq!(emb.get_embedding("hello").unwrap(), None);
    emb.put_embedding("hello", &[0.25, -1.5, 3.0]).unwrap();
    assert_eq!(
        emb.get_embedding("hello").unwrap(),
        Some(vec![0.25, -1.5, 3.0])
    );
    // The bytes under upstream's key are upstream's encoding.
    let raw = client
        .get(EmbeddingCache::DEFAULT_NAMESPACE, &sha256_hex(b"hello"))
        .unwrap()
        .expect("the vector under sha256(text)");
    let upstream_bytes: Vec<u8> = [
        &3u64.to_le_bytes()[..],
        &0.25f32.to_le_bytes(),
        &(-1.5f32).to_le_bytes(),
        &3.0f32.to_le_bytes(),
    ]
    .concat();
    assert_eq!(
        raw, upstream_bytes,
        "bincode 1 of Vec<f32>, as upstream wrote it"
    );
    let mut calls = 0;
    for _ in 0..3 {
        let v = emb
            .get_or_embed("world", |t| -> Result<Vec<f32>, Error> {
                calls += 1;
                Ok(vec![t.len() as f32])
            })
            .unwrap();
        assert_eq!(v, vec![5.0]);
    }
    assert_eq!(calls, 1, "the embedding must be computed once, then read");
    // A corrupt vector is an error, never data.
    client
        .put(
            EmbeddingCache::DEFAULT_NAMESPACE,
            &sha256_hex(b"bad"),
            &[1, 2, 3],
        )
        .unwrap();
    assert!(matches!(emb.get_embedding("bad"), Err(Error::Corrupted(_))));

    let ws = WorkstackCache::with_client(client.clone(), WorkstackCacheConfig::default());
    ws.put("ws-001", 0, "h0", b"out0", None).unwrap();
    ws.put("ws-001", 1, "h1", b"out1", Some(60)).unwrap();
    ws.put("ws-002", 0, "h0", b"other", None).unwrap();
    assert_eq!(
        ws.get("ws-001", 1, "h1").unwrap().as_deref(),
        Some(&b"out1"[..])
    );
    assert_eq!(ws.get("ws-001", 1, "other-input").unwrap(), None);
    let info = client
        .lookup(
            &WorkstackCache::namespace_of("ws-001"),
            &WorkstackCache::key_of("ws-001", 0, "h0"),
        )
        .unwrap()
        .expect("the step under upstream's key");
    let ttl = info.expires.unwrap() - info.created;
    assert!(
        (3599..=3601).contains(&ttl),
        "default TTL one hour, got {ttl}"
    );
    ws.put("ws-001", 1, "h1", b"gone", Some(0)).unwrap();
    assert_eq!(ws.get("ws-001", 1, "h1").unwrap(), None, "TTL 0 = expired");
    assert_eq!(ws.invalidate_workstack("ws-001").unwrap(), 1);
    assert_eq!(ws.get("ws-001", 0, "h0").unwrap(), None);
    assert_eq!(
        ws.get("ws-002", 0, "h0").unwrap().as_deref(),
        Some(&b"other"[..]),
        "invalidating one workstack must leave the others"
    );
    // Built from async code without blocking it, as upstream's `WorkstackCache::new(..).await`
    // is (`new` itself reads the system bus address from the environment).
    let built = numa_cache_client::blocking::Client::from_builder_async(
        Client::builder().address(&bus.address),
    )
    .await
    .unwrap();
    let ws2 = WorkstackCache::with_client(built, WorkstackCacheConfig::default());
    assert_eq!(
        ws2.get("ws-002", 0, "h0").unwrap().as_deref(),
        Some(&b"other"[..])
    );
}

/// Environment variable that makes a re-run of this binary act as the child (see
/// [`run_child`]) instead of the parent.
const CHILD_ROLE: &str = "NUMA_CACHE_CLIENT_TEST_ROLE";

/// Re-run this test binary's `the_bus_policy_and_namespace_ownership_refuse_by_name` as
/// `user`, which then calls [`child_calls`] and prints what each call returned; returns its
/// `RESULT` lines.
fn run_child(bus: &Bus, user: &str) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", user, "--", "env"])
        .arg(format!("DBUS_SYSTEM_BUS_ADDRESS={}", bus.address))
        .arg(format!("{CHILD_ROLE}={user}"))
        .arg(exe)
        .args([
            "the_bus_policy_and_namespace_ownership_refuse_by_name",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("runuser");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the child as {user} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        // The harness prints "test <name> ... " before the first line.
        .filter_map(|l| l.find("RESULT ").map(|at| l[at + 7..].to_string()))
        .collect()
}

/// The calls another user makes, each printed as a `RESULT` line for the parent to judge.
async fn child_calls(role: &str) {
    let c = Client::connect(&std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap())
        .await
        .expect("connect");
    let show = |what: &str, r: Result<String, Error>| match r {
        Ok(v) => println!("RESULT {what} ok {v}"),
        Err(e) => println!("RESULT {what} err {}", kind(&e)),
    };
    show(
        "topology",
        c.topology().await.map(|t| t.node_ids.len().to_string()),
    );
    show("stats", c.stats().await.map(|s| s.entries.to_string()));
    show(
        "get-root",
        c.get("client-root-ns", "k")
            .await
            .map(|v| format!("{:?}", v.map(String::from_utf8))),
    );
    if role == TEST_USER {
        show(
            "put-own",
            c.put("client-user-ns", "k", b"mine")
                .await
                .map(|n| n.to_string()),
        );
        show(
            "get-own",
            c.get("client-user-ns", "k")
                .await
                .map(|v| format!("{:?}", v.map(String::from_utf8))),
        );
    }
    show(
        "lease-root",
        c.get_or_lease("client-root-ns", "missing", Duration::from_millis(500))
            .await
            .map(|l| format!("{l:?}")),
    );
    show(
        "put-many-root",
        c.put_many(
            "client-root-ns",
            &[("k", &b"theirs"[..]), ("k2", &b"new"[..])],
        )
        .await
        .map(|n| n.to_string()),
    );
    match c.open_direct().await {
        Err(e) => println!("RESULT open-direct err {}", kind(&e)),
        Ok(d) => {
            println!("RESULT open-direct ok");
            // Over the direct connection: the same identity, the same ownership rules.
            show(
                "direct-get-root",
                d.get("client-root-ns", "k")
                    .await
                    .map(|v| format!("{:?}", v.map(String::from_utf8))),
            );
            show(
                "direct-put-many-own",
                d.put_many(
                    "client-user-ns",
                    &[("d1", &b"one"[..]), ("d2", &b"two"[..])],
                )
                .await
                .map(|n| n.to_string()),
            );
            show(
                "direct-get-own",
                c.get("client-user-ns", "d2")
                    .await
                    .map(|v| format!("{:?}", v.map(String::from_utf8))),
            );
            show(
                "direct-put-root",
                d.put("client-root-ns", "k", b"theirs")
                    .await
                    .map(|n| n.to_string()),
            );
            show(
                "direct-put-many-root",
                d.put_many("client-root-ns", &[("k3", &b"x"[..])])
                    .await
                    .map(|n| n.to_string()),
            );
            show(
                "direct-clear-own",
                d.clear("client-user-ns").await.map(|n| n.to_string()),
            );
        }
    }
    show(
        "put-root",
        c.put("client-root-ns", "k", b"theirs")
            .await
            .map(|n| n.to_string()),
    );
    show(
        "delete-root",
        c.delete("client-root-ns", "k").await.map(|b| b.to_string()),
    );
    show(
        "clear-root",
        c.clear("client-root-ns").await.map(|n| n.to_string()),
    );
    show(
        "set-strategy",
        c.set_strategy("round_robin", None).await.map(|r| r.status),
    );
}

#[test]
fn the_bus_policy_and_namespace_ownership_refuse_by_name() {
    if let Ok(role) = std::env::var(CHILD_ROLE) {
        // This is the re-run as another user (run_child): make the calls, print, done.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(child_calls(&role));
        return;
    }
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    dbus::ok(
        &bus.busctl_put("client-root-ns", "k", b"root"),
        "root's Put",
    );

    let denied = "err org.freedesktop.DBus.Error.AccessDenied";
    let nobody = run_child(&bus, "nobody");
    let want_nobody = [
        "topology ok ",
        "stats ok ",
        &format!("get-root {denied}"),
        &format!("lease-root {denied}"),
        &format!("put-many-root {denied}"),
        // The bus policy refuses OpenDirect to nobody as every Cache method.
        &format!("open-direct {denied}"),
        &format!("put-root {denied}"),
        &format!("delete-root {denied}"),
        &format!("clear-root {denied}"),
        &format!("set-strategy {denied}"),
    ];
    for (line, want) in nobody.iter().zip(want_nobody) {
        assert!(line.starts_with(want), "as nobody: {line:?}, want {want:?}");
    }
    assert_eq!(nobody.len(), want_nobody.len(), "{nobody:?}");

    let member = run_child(&bus, TEST_USER);
    let want_member = [
        "topology ok ".to_string(),
        "stats ok ".to_string(),
        "get-root ok Some(Ok(\"root\"))".to_string(),
        "put-own ok ".to_string(),
        "get-own ok Some(Ok(\"mine\"))".to_string(),
        format!("lease-root {denied}"),
        format!("put-many-root {denied}"),
        "open-direct ok".to_string(),
        "direct-get-root ok Some(Ok(\"root\"))".to_string(),
        "direct-put-many-own ok 2".to_string(),
        "direct-get-own ok Some(Ok(\"two\"))".to_string(),
        format!("direct-put-root {denied}"),
        format!("direct-put-many-root {denied}"),
        // Admin methods are not served on a direct connection, whoever asks.
        format!("direct-clear-own {denied}"),
        format!("put-root {denied}"),
        format!("delete-root {denied}"),
        format!("clear-root {denied}"),
        format!("set-strategy {denied}"),
    ];
    for (line, want) in member.iter().zip(&want_member) {
        assert!(
            line.starts_with(want.as_str()),
            "as {TEST_USER}: {line:?}, want {want:?}"
        );
    }
    assert_eq!(member.len(), want_member.len(), "{member:?}");
    // Root's value is untouched by the refused calls.
    let out = dbus::ok(
        &bus.busctl(&[
            "call",
            dbus::NAME,
            dbus::ROOT,
            names::iface::CACHE,
            "Get",
            "ss",
            "client-root-ns",
            "k",
        ]),
        "root's Get",
    );
    assert!(out.contains("4 114 111 111 116"), "{out}");
    // Nothing of the refused batches was stored: k2 and k3 were new keys.
    for k in ["k2", "k3"] {
        let out = bus.gdbus_call("org.opdbus.NumaCache.Cache.Get", &["client-root-ns", k]);
        let err = dbus::fails(&out, "Get of a key only a refused PutMany named");
        assert!(err.contains("Error.NotFound"), "{k}: {err}");
    }
    // The member's direct connection acted as the member: it owns what it stored.
    let out = dbus::ok(
        &bus.busctl(&[
            "call",
            dbus::NAME,
            dbus::ROOT,
            names::iface::CACHE,
            "Get",
            "ss",
            "client-user-ns",
            "d1",
        ]),
        "the member's direct PutMany",
    );
    assert!(out.contains("3 111 110 101"), "{out}");
}

/// Build `examples/upstream_components.rs` (a no-op inside a full `cargo test`, which has
/// built it) and return its path next to this test binary's profile directory.
fn upstream_example() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", "upstream_components"])
        .status()
        .expect("running cargo build --example upstream_components");
    assert!(status.success(), "building the example failed");
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples/upstream_components")
}

#[test]
fn the_upstream_example_runs_unchanged_code_against_the_daemon() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let example = upstream_example();
    let run = || {
        let out = std::process::Command::new(&example)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .output()
            .expect("running the example");
        dbus::ok(&out, "examples/upstream_components")
    };
    let first = run();
    for want in [
        "computed 2 embeddings for 3 requests",
        "pass 1: 0 of 3 steps from the cache",
        "pass 2: 3 of 3 steps from the cache",
        "pass 2 step 1: step 1 done with CONFIGURE",
        "invalidated 3 steps of deploy-42",
    ] {
        assert!(first.contains(want), "{want:?} missing from:\n{first}");
    }
    // A second run finds the embeddings the first one stored (nothing computed), and the
    // invalidated workstack empty again.
    let second = run();
    for want in [
        "computed 0 embeddings for 3 requests",
        "pass 1: 0 of 3 steps from the cache",
    ] {
        assert!(second.contains(want), "{want:?} missing from:\n{second}");
    }
}

#[tokio::test]
async fn get_or_insert_with_fills_once_and_a_failed_fill_stores_nothing() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let lease = Duration::from_millis(500);
    assert_eq!(
        c.get_or_lease("fill", "k", lease).await.unwrap(),
        numa_cache_client::Lease::Fill
    );
    // A fill that fails puts nothing and returns its own error.
    let e = c
        .get_or_insert_with("fill", "k", lease, || async {
            Err::<Vec<u8>, Error>(Error::Unavailable("the model is down".into()))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Unavailable(ref m) if m == "the model is down"),
        "{e:?}"
    );
    assert_eq!(c.get("fill", "k").await.unwrap(), None);
    // Then the next caller fills, once; later callers read.
    let mut fills = 0;
    for _ in 0..3 {
        let v = c
            .get_or_insert_with("fill", "k", lease, || {
                fills += 1;
                async { Ok::<_, Error>(b"computed".to_vec()) }
            })
            .await
            .unwrap();
        assert_eq!(v, b"computed");
    }
    assert_eq!(fills, 1);
    assert_eq!(
        c.get_or_lease("fill", "k", lease).await.unwrap(),
        numa_cache_client::Lease::Hit(b"computed".to_vec())
    );
    assert_eq!(
        c.get("fill", "k").await.unwrap().as_deref(),
        Some(&b"computed"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_callers_fill_once_and_a_dead_fillers_lease_passes_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    // 16 connections, as 16 processes would have.
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(Client::connect(&bus.address).await.unwrap());
    }
    let fills = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let fills = Arc::clone(&fills);
            tokio::spawn(async move {
                c.get_or_insert_with("flight", "k", Duration::from_secs(10), || async move {
                    fills.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Error>(b"filled once".to_vec())
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), b"filled once");
    }
    assert_eq!(
        fills.load(Ordering::SeqCst),
        1,
        "the fill must run exactly once"
    );

    // A filler that takes the lease and goes away without putting: the next caller waits for
    // the lease to lapse, then fills.
    let gone = Client::connect(&bus.address).await.unwrap();
    assert_eq!(
        gone.get_or_lease("flight", "dead", Duration::from_millis(600))
            .await
            .unwrap(),
        numa_cache_client::Lease::Fill
    );
    drop(gone);
    let c = Client::connect(&bus.address).await.unwrap();
    let t0 = std::time::Instant::now();
    let v = c
        .get_or_insert_with("flight", "dead", Duration::from_secs(10), || async {
            Ok::<_, Error>(b"second filler".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(v, b"second filler");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "the lease was taken over after {:?}, before it lapsed",
        t0.elapsed()
    );
    // Out-of-range leases are refused by name.
    let e = c
        .get_or_lease("flight", "x", Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

#[tokio::test]
async fn get_many_returns_the_present_keys_within_its_limits() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    for (k, seed) in [("a", 1u8), ("b", 2), ("c", 3)] {
        c.put("many", k, &pattern(4096, seed)).await.unwrap();
    }
    let found = c
        .get_many("many", &["a", "missing", "c", "b"])
        .await
        .unwrap();
    assert_eq!(found.len(), 3, "{:?}", found.keys().collect::<Vec<_>>());
    for (k, seed) in [("a", 1u8), ("b", 2), ("c", 3)] {
        assert!(found[k] == pattern(4096, seed), "{k} came back unequal");
    }
    assert!(c.get_many("many", &[]).await.unwrap().is_empty());
    // Past the daemon's budget for values copied on its async task (1 MiB of memory-tier
    // values), with values the task never copies (over 64 KiB) and misses among them: the
    // rest is read on the blocking pool, and every value present comes back whole.
    let mut want = Vec::new();
    for i in 0..300u32 {
        let len = if i % 50 == 7 { 100 << 10 } else { 4096 };
        let (k, v) = (format!("budget{i}"), pattern(len, i as u8));
        c.put("many", &k, &v).await.unwrap();
        want.push((k, v));
    }
    let mut asked: Vec<String> = want.iter().map(|(k, _)| k.clone()).collect();
    asked.extend((0..20).map(|i| format!("absent{i}")));
    let refs: Vec<&str> = asked.iter().map(String::as_str).collect();
    let found = c.get_many("many", &refs).await.unwrap();
    assert_eq!(found.len(), want.len());
    for (k, v) in &want {
        assert!(found.get(k) == Some(v), "{k} came back unequal or absent");
    }
    // Limits: keys per call, and bytes per reply.
    let names: Vec<String> = (0..1025).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let e = c
        .get_many("many", &refs)
        .await
        .map(|found| found.len())
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)), "{e:?}");
    assert!(c.get_many("many", &refs[..1024]).await.unwrap().is_empty());
    for k in ["big1", "big2"] {
        c.put("many", k, &pattern(9 << 20, 9)).await.unwrap();
    }
    assert_eq!(c.get_many("many", &["big1"]).await.unwrap().len(), 1);
    let e = c
        .get_many("many", &["big1", "big2"])
        .await
        .map(|found| found.len())
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)), "{e:?}");
    let e = c.get_many("Bad NS", &["a"]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

#[tokio::test]
async fn put_many_stores_every_entry_or_none_within_its_limits() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    c.put("pm", "old", b"before").await.unwrap();
    let (a, b, big) = (pattern(4096, 1), pattern(100, 2), pattern(2 << 20, 3));
    let stored = c
        .put_many(
            "pm",
            &[("a", &a), ("b", &b), ("old", b"after"), ("big", &big)],
        )
        .await
        .expect("PutMany");
    assert_eq!(stored, 4);
    let found = c
        .get_many("pm", &["a", "b", "old", "big", "missing"])
        .await
        .unwrap();
    assert_eq!(found.len(), 4, "{:?}", found.keys().collect::<Vec<_>>());
    assert!(found["a"] == a && found["b"] == b && found["big"] == big);
    assert_eq!(found["old"], b"after", "PutMany overwrites like Put");
    assert_eq!(c.put_many("pm", &[]).await.unwrap(), 0);

    // Options apply to every entry: ttl, node, sync.
    let node = c.lookup("pm", "a").await.unwrap().unwrap().node;
    c.put_many_with(
        "pm",
        &[("t1", b"x"), ("t2", b"y")],
        PutOptions::new()
            .ttl(Duration::from_secs(600))
            .node(node)
            .sync(true),
    )
    .await
    .unwrap();
    for k in ["t1", "t2"] {
        let info = c.lookup("pm", k).await.unwrap().unwrap();
        assert!(
            info.expires.is_some_and(|t| t > info.created),
            "{k}: {info:?}"
        );
        assert_eq!(info.node, node, "{k}: the explicit node was not honoured");
    }

    // Refusals store nothing of the batch: a bad key, too many entries, too many bytes, a
    // node that does not exist, a key given twice.
    let absent = |keys: Vec<String>| {
        let c = c.clone();
        async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            for chunk in refs.chunks(1024) {
                let found = c.get_many("pm", chunk).await.unwrap();
                assert!(
                    found.is_empty(),
                    "stored by a refused batch: {:?}",
                    found.keys()
                );
            }
        }
    };
    let e = c
        .put_many("pm", &[("fresh1", b"v"), ("", b"v")])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    absent(vec!["fresh1".into()]).await;
    let names: Vec<String> = (0..1025).map(|i| format!("many{i}")).collect();
    let batch: Vec<(&str, &[u8])> = names.iter().map(|k| (k.as_str(), &b"v"[..])).collect();
    let e = c.put_many("pm", &batch).await.unwrap_err();
    assert!(
        matches!(e, Error::TooLarge(ref m) if m.contains("1024")),
        "{e:?}"
    );
    absent(names.clone()).await;
    assert_eq!(c.put_many("pm", &batch[..1024]).await.unwrap(), 1024);
    assert_eq!(
        c.get_many(
            "pm",
            &names
                .iter()
                .take(1024)
                .map(String::as_str)
                .collect::<Vec<_>>()
        )
        .await
        .unwrap()
        .len(),
        1024
    );
    let six = pattern(6 << 20, 4);
    let e = c
        .put_many("pm", &[("six1", &six), ("six2", &six), ("six3", &six)])
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::TooLarge(_)),
        "18 MiB in one PutMany: {e:?}"
    );
    absent(vec!["six1".into(), "six2".into(), "six3".into()]).await;
    let e = c
        .put_many_with("pm", &[("n1", b"v")], PutOptions::new().node(9999))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c
        .put_many("pm", &[("dup", b"1"), ("dup", b"2")])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    absent(vec!["n1".into(), "dup".into()]).await;
    let e = c.put_many("Bad NS", &[("k", b"v")]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");

    // The blocking facade.
    let bc = numa_cache_client::blocking::Client::from_builder_async(
        Client::builder().address(&bus.address),
    )
    .await
    .unwrap();
    let n = tokio::task::spawn_blocking(move || bc.put_many("pm", &[("blk", b"blocking")]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        c.get("pm", "blk").await.unwrap().as_deref(),
        Some(&b"blocking"[..])
    );
}

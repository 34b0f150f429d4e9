//! D-Bus benchmarks of numa-cached on a private system-like bus, all against baselines
//! measured in the same run by the same client:
//! - `Get` of a 4 KiB value vs `org.freedesktop.DBus.Peer.Ping` to the daemon (round trip);
//! - `GetFd` of a 64 MiB value (sealed memfd, read to the end) in GB/s, vs reading the same
//!   bytes with `Get` chunks being impossible (over the bus limit), so vs a local memcpy;
//! - `Get` throughput with 1 and with 8 concurrent clients (separate connections);
//! - the daemon's resident memory when idle.
//!
//! Run as root: `cargo bench --bench dbus` (needs dbus-daemon). Prints a Markdown table.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "org.opdbus.NumaCache";
const ROOT: &str = "/org/opdbus/NumaCache";
const CACHE: &str = "org.opdbus.NumaCache.Cache";

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn sealed_memfd(bytes: &[u8]) -> std::fs::File {
    // SAFETY: memfd_create with a literal name; the result is owned at once.
    let raw = unsafe {
        libc::memfd_create(
            c"bench".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(raw >= 0, "memfd_create failed");
    // SAFETY: a fresh descriptor nothing else owns.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    std::io::Write::write_all(&mut &file, bytes).expect("writing the memfd");
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: F_ADD_SEALS on our own descriptor.
    assert_eq!(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) },
        0
    );
    file
}

async fn connect(address: &str) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .build()
        .await
        .expect("connecting to the bench bus")
}

async fn get(conn: &zbus::Connection, key: &str) -> Vec<u8> {
    let reply = conn
        .call_method(Some(NAME), ROOT, Some(CACHE), "Get", &("bench", key))
        .await
        .expect("Get");
    reply
        .body()
        .deserialize::<serde_bytes::ByteBuf>()
        .expect("Get reply")
        .into_vec()
}

async fn ping(conn: &zbus::Connection) {
    conn.call_method(
        Some(NAME),
        ROOT,
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &(),
    )
    .await
    .expect("Ping");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list here.
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("dbus-daemon")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!(
            "SKIP: the D-Bus benchmark needs root and dbus-daemon (apt-get install dbus-daemon)"
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("numa-cache-bench.")
        .tempdir()
        .expect("temp dir");
    let repo = env!("CARGO_MANIFEST_DIR");
    let conf = std::fs::read_to_string(format!("{repo}/tests/dbus/system-bus.conf.in"))
        .expect("bus config template")
        .replace("@DIR@", &dir.path().display().to_string())
        .replace(
            "@POLICY@",
            &format!("{repo}/dbus/org.opdbus.NumaCache.conf"),
        );
    std::fs::write(dir.path().join("bus.conf"), conf).unwrap();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new("dbus-daemon")
            .arg(format!(
                "--config-file={}",
                dir.path().join("bus.conf").display()
            ))
            .arg("--nofork")
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon"),
    );
    let socket = dir.path().join("system_bus_socket");
    let address = format!("unix:path={}", socket.display());
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let daemon = Command::new(env!("CARGO_BIN_EXE_numa-cached"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .env("OPDBUS_CACHE_DIR", dir.path().join("state"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("numa-cached");
    let daemon_pid = daemon.id();
    procs.0.push(daemon);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = connect(&address).await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        while !dbus.name_has_owner(NAME.try_into().unwrap()).await.unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_start = rss_kib(daemon_pid);

        // 4 KiB Get vs Ping, interleaved rounds so drift hits both alike.
        let value: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
        let opts: std::collections::HashMap<&str, zbus::Variant<'_>> = Default::default();
        conn.call_method(Some(NAME), ROOT, Some(CACHE), "Put", &("bench", "v4k", serde_bytes::Bytes::new(&value), &opts))
            .await
            .expect("Put");
        assert_eq!(get(&conn, "v4k").await, value);
        for _ in 0..200 {
            ping(&conn).await;
            get(&conn, "v4k").await;
        }
        conn.call_method(Some(NAME), ROOT, Some(CACHE), "Put", &("bench", "v1", serde_bytes::Bytes::new(&[7u8]), &opts))
            .await
            .expect("Put");
        // Alternate the four calls one by one, so load from elsewhere on the machine hits
        // each of them alike; medians of 3000 round trips each.
        let (mut pings, mut gets, mut tiny, mut noc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
        for _ in 0..3000 {
            let t = Instant::now();
            ping(&conn).await;
            pings.push(us(t));
            let t = Instant::now();
            get(&conn, "v4k").await;
            gets.push(us(t));
            let t = Instant::now();
            get(&conn, "v1").await;
            tiny.push(us(t));
            let t = Instant::now();
            conn.call_method(Some(NAME), ROOT, Some("org.opdbus.NumaCache.Topology"), "NodeOfCpu", &(0u32,))
                .await
                .expect("NodeOfCpu");
            noc.push(us(t));
        }
        let (ping_us, get_us, tiny_us, noc_us) = (median(pings), median(gets), median(tiny), median(noc));

        // Throughput: 1 client, then 8 clients on their own connections, 3 s each.
        async fn hammer(address: String, until: Instant) -> u64 {
            let c = connect(&address).await;
            let mut n = 0;
            while Instant::now() < until {
                get(&c, "v4k").await;
                n += 1;
            }
            n
        }
        let mut tput = Vec::new();
        for clients in [1usize, 8] {
            let until = Instant::now() + Duration::from_secs(3);
            let tasks: Vec<_> = (0..clients).map(|_| tokio::spawn(hammer(address.clone(), until))).collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            tput.push((clients, total as f64 / 3.0));
        }

        // 64 MiB through a sealed memfd both ways.
        let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 253) as u8).collect();
        let fd = sealed_memfd(&big);
        let t = Instant::now();
        conn.call_method(Some(NAME), ROOT, Some(CACHE), "PutFd", &("bench", "v64m", zbus::Fd::from(&fd), &opts))
            .await
            .expect("PutFd");
        let put_s = t.elapsed().as_secs_f64();
        let mut getfd = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let reply = conn
                .call_method(Some(NAME), ROOT, Some(CACHE), "GetFd", &("bench", "v64m"))
                .await
                .expect("GetFd");
            let (fd, size): (zbus::OwnedFd, u64) = reply.body().deserialize().expect("GetFd reply");
            let file = std::fs::File::from(OwnedFd::from(fd));
            let mut buf = vec![0u8; size as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).expect("reading the memfd");
            getfd.push(t.elapsed().as_secs_f64());
            assert_eq!(buf.len(), big.len());
        }
        let t = Instant::now();
        let copy = big.clone();
        let memcpy_s = t.elapsed().as_secs_f64();
        assert_eq!(copy.len(), big.len());
        let getfd_s = median(getfd);
        let gbps = |s: f64| (64u64 << 20) as f64 / s / 1e9;
        drop(copy);
        drop(big);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib(daemon_pid);

        println!("| measurement | result | baseline (same run) | ratio |");
        println!("|---|---|---|---|");
        println!("| Get 4 KiB round trip (median of 3000, alternating) | {get_us:.0} us | Peer.Ping {ping_us:.0} us | {:.2}x |", get_us / ping_us);
        println!("| Get 1 byte round trip | {tiny_us:.0} us | Peer.Ping {ping_us:.0} us | {:.2}x |", tiny_us / ping_us);
        println!("| Topology.NodeOfCpu (no engine work) | {noc_us:.0} us | Peer.Ping {ping_us:.0} us | {:.2}x |", noc_us / ping_us);
        for (clients, ops) in &tput {
            println!("| Get 4 KiB, {clients} client(s), 3 s | {ops:.0} ops/s | | {:.2}x of 1 client |", ops / tput[0].1);
        }
        println!("| GetFd 64 MiB + read (median of 5) | {:.2} GB/s ({:.1} ms) | memcpy of 64 MiB {:.2} GB/s | {:.2}x |", gbps(getfd_s), getfd_s * 1e3, gbps(memcpy_s), getfd_s / memcpy_s);
        println!("| PutFd 64 MiB (once) | {:.2} GB/s ({:.1} ms) | | |", gbps(put_s), put_s * 1e3);
        println!("| daemon RSS idle at start | {} KiB | | |", rss_start);
        println!("| daemon RSS idle after the run | {} KiB | | |", rss_after);
    });
}

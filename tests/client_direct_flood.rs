//! A hostile caller floods a direct connection (OpenDirect) with pipelined PutMany calls of
//! 16 MiB each, never waiting for a reply: on a peer-to-peer connection no bus daemon stands
//! between it and numa-cached to bound what is queued. The daemon's memory must stay bounded
//! (its peak RSS from /proc/PID/status, the kernel's figure), other callers must still be
//! served while the flood runs, and the daemon stays up.

mod dbus;
mod support;

use dbus::{Bus, Daemon};
use numa_cache_client::Client;
use numa_cache_client::names;
use std::time::Duration;

async fn daemon_pid(c: &Client) -> u32 {
    let dbus = zbus::fdo::DBusProxy::new(c.connection()).await.unwrap();
    let name = zbus::names::BusName::try_from(names::BUS_NAME).unwrap();
    dbus.get_connection_unix_process_id(name).await.unwrap()
}

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// `calls` pipelined PutMany calls of `per` entries of 1 MiB each on `d`, all sent before
/// any reply is awaited: (calls stored, errors of the refused ones).
fn flood(
    d: Client,
    calls: usize,
    per: usize,
) -> impl std::future::Future<Output = (usize, Vec<String>)> {
    let value = vec![0x3cu8; 1 << 20];
    let tasks: Vec<_> = (0..calls)
        .map(|call| {
            let d = d.clone();
            let value = value.clone();
            tokio::spawn(async move {
                let keys: Vec<String> = (0..per).map(|i| format!("p{per}-c{call}-{i}")).collect();
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
async fn a_flood_of_pipelined_put_many_on_a_direct_connection_is_bounded() {
    if !dbus::prerequisites() {
        return;
    }
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &bus.dir().join("state"), &[]);
    let c = Client::connect(&bus.address).await.unwrap();
    let pid = daemon_pid(&c).await;
    c.put("calm", "before", b"v").await.unwrap();
    let hwm0 = status_kib(pid, "VmHWM:");
    let d = c.open_direct().await.expect("OpenDirect");

    // 1. 24 calls of 16 MiB (the PutMany limit): 384 MiB, all accepted in the end.
    let (ok, refused) = flood(d.clone(), 24, 16).await;
    assert_eq!((ok, refused.len()), (24, 0), "{refused:?}");
    // 2. 12 calls of 100 MiB: each is refused by name, but only after the daemon has read
    // it (1.2 GiB sent).
    let (ok, refused) = flood(d.clone(), 12, 100).await;
    assert_eq!(ok, 0);
    assert!(
        refused
            .iter()
            .all(|e| e.contains("too large") && e.contains("16777216")),
        "{refused:?}"
    );
    // While a flood runs, a calm caller on the bus is served.
    let d2 = d.clone();
    let background = tokio::spawn(flood(d2, 16, 16));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calm = tokio::time::timeout(Duration::from_secs(20), c.put("calm", "during", b"v")).await;
    let _ = background.await.unwrap();
    let hwm = status_kib(pid, "VmHWM:");
    eprintln!(
        "floods of 1.8 GiB in all: daemon VmHWM {} MiB -> {} MiB; calm put: {calm:?}",
        hwm0 >> 10,
        hwm >> 10
    );
    assert!(
        matches!(calm, Ok(Ok(_))),
        "the calm caller was not served: {calm:?}"
    );
    // The daemon holds a few messages at a time (about 500-650 MiB measured), not the flood:
    // phase 2 alone would be 1.2 GiB if it were all held.
    let grew_mib = hwm.saturating_sub(hwm0) >> 10;
    assert!(
        grew_mib < 1024,
        "a flood on one direct connection raised the daemon's peak RSS by {grew_mib} MiB"
    );
    c.ping().await.expect("the daemon is up");
}

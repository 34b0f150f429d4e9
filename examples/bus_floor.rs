//! The least any server can do for a bus Put under the durability contract, as a baseline for
//! `scripts/bench-bus-floor.sh` (not part of the product).
//!
//! It owns `org.opdbus.NumaCache` on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`) with the same
//! runtime as numa-cached (tokio, multi-thread) and the same zbus stack, and serves only
//! `org.opdbus.NumaCache.Cache.Put` (and zbus's own `Peer.Ping`). With `write` it does what
//! the contract requires of every default put before the reply, and nothing else: one
//! `pwrite` of a record (a small header, the namespace, the key and the value) into a file on
//! the given directory's filesystem, and an `fdatasync` of that file every second (stable
//! within the interval). No index, no entry map, no checksum, no eviction, no owner check.
//! With `nowrite` the Put is parsed and answered with no I/O at all.
//!
//!     bus_floor (write|nowrite) DIR

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde_bytes::ByteBuf;
use zbus::OwnedVariant;

/// Records wrap around within this many bytes of the file (the bench's image stays small).
const WRAP: u64 = 512 << 20;

struct Floor {
    file: Arc<File>,
    at: AtomicU64,
    write: bool,
}

#[zbus::interface(name = "org.opdbus.NumaCache.Cache")]
impl Floor {
    #[zbus(out_args("node"))]
    async fn put(
        &self,
        namespace: String,
        key: String,
        value: ByteBuf,
        options: HashMap<String, OwnedVariant>,
    ) -> zbus::fdo::Result<u32> {
        if !options.is_empty() {
            return Err(zbus::fdo::Error::InvalidArgs("no options here".into()));
        }
        if self.write {
            let mut rec = Vec::with_capacity(16 + namespace.len() + key.len() + value.len());
            rec.extend_from_slice(&(namespace.len() as u32).to_le_bytes());
            rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
            rec.extend_from_slice(&(value.len() as u64).to_le_bytes());
            rec.extend_from_slice(namespace.as_bytes());
            rec.extend_from_slice(key.as_bytes());
            rec.extend_from_slice(&value);
            let len = rec.len() as u64;
            let at = self.at.fetch_add(len, Relaxed) % WRAP;
            self.file
                .write_all_at(&rec, at)
                .map_err(|e| zbus::fdo::Error::IOError(e.to_string()))?;
        }
        Ok(0)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (write, dir) = match args.as_slice() {
        [_, mode, dir] if mode == "write" || mode == "nowrite" => (mode == "write", dir.clone()),
        _ => return Err("usage: bus_floor (write|nowrite) DIR".into()),
    };
    let file = Arc::new(
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(std::path::Path::new(&dir).join("bus-floor.records"))?,
    );
    let flusher = Arc::clone(&file);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = flusher.sync_data() {
                eprintln!("bus_floor: fdatasync: {e}");
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let floor = Floor {
            file,
            at: AtomicU64::new(0),
            write,
        };
        let conn = zbus::connection::Builder::system().build().await?;
        conn.object_server()
            .at("/org/opdbus/NumaCache", floor)
            .await?;
        conn.request_name("org.opdbus.NumaCache").await?;
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

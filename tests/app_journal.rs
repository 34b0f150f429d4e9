//! What the daemon tells the journal, read the way journald receives it: the daemon runs in a
//! private mount namespace whose /run/systemd/journal/socket is a small datagram reader, and
//! each record's fields are checked. Informational lines carry priority 6; the values of
//! "cache open" and "strategy set" are in the message text; polkit decisions on admin actions
//! and failed admin calls leave audit lines (who, what, result); no Rust debug formatting.

mod dbus;
mod support;

use dbus::{Bus, NAME};
use serde_json::Value;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A journald stand-in: reads native-protocol datagrams and appends each record's fields as
/// one JSON line.
const JOURNAL: &str = r#"
import json, os, socket, struct, sys
path, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(path), exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
f = open(out, "a")
while True:
    data = s.recv(1 << 20)
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            v = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        fields[k.decode()] = v.decode("utf-8", "replace")
    f.write(json.dumps(fields) + "\n")
    f.flush()
"#;

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn find<'a>(records: &'a [Value], needle: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["MESSAGE"].as_str().is_some_and(|m| m.contains(needle)))
        .unwrap_or_else(|| panic!("no journal record with {needle:?} in:\n{records:#?}"))
}

struct Namespaced {
    child: Child,
    reader_pid: std::path::PathBuf,
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = std::fs::read_to_string(&self.reader_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) of the journal reader this test started (its pid from $!).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_journal_gets_priority_6_values_in_messages_and_audit_lines() {
    if !(dbus::prerequisites()
        && support::require_tool("unshare", "util-linux")
        && support::require_tool("/usr/bin/python3", "python3"))
    {
        return;
    }
    let bus = Bus::start();
    let dir = bus.dir().to_path_buf();
    let out = dir.join("journal.jsonl");
    let reader = dir.join("journal.py");
    std::fs::write(&reader, JOURNAL).expect("write the reader");
    let reader_pid = dir.join("journal.pid");
    // A private /run, so the stand-in socket is the daemon's alone.
    let script = format!(
        "mount -t tmpfs tmpfs /run && \
         /usr/bin/python3 {reader} /run/systemd/journal/socket {out} & echo $! > {pid}; \
         for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done; \
         exec {daemon}",
        reader = reader.display(),
        out = out.display(),
        pid = reader_pid.display(),
        daemon = env!("CARGO_BIN_EXE_numa-cached"),
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("OPDBUS_CACHE_DIR", dir.join("state"))
        .env("JOURNAL_STREAM", "8:1")
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .expect("unshare");
    let mut daemon = Namespaced { child, reader_pid };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bus.has_owner(NAME) {
        assert!(
            daemon.child.try_wait().ok().flatten().is_none(),
            "numa-cached exited: {:#?}",
            records(&out)
        );
        assert!(
            Instant::now() < deadline,
            "numa-cached did not take its name"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // An authorized admin call, a refused one and a failed one.
    dbus::ok(
        &bus.gdbus_call(
            "org.opdbus.NumaCache.Strategy.SetStrategy",
            &["round_robin", "-1"],
        ),
        "SetStrategy as root",
    );
    let args = dbus::gdbus_call_args(
        "org.opdbus.NumaCache.Strategy.SetStrategy",
        &["interleave", "-1"],
    );
    let refused = bus.as_user("nobody", "gdbus", &args);
    assert!(!refused.status.success());
    let _ = bus.gdbus_call(
        "org.opdbus.NumaCache.Cache.DeleteSnapshot",
        &["20990101T000000Z"],
    );

    // SAFETY: SIGTERM to the daemon (the exec'd shell) this test started.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "numa-cached did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let recs = records(&out);

    let open = find(&recs, "cache open in ");
    assert_eq!(open["PRIORITY"], "6", "{open}");
    let m = open["MESSAGE"].as_str().unwrap_or_default();
    assert!(
        m.contains("strategy local_node") && m.contains("memory policy"),
        "{m}"
    );
    assert_eq!(open["SYSLOG_IDENTIFIER"], "numa-cached", "{open}");
    let set = find(&recs, "strategy set: round_robin, node preference none");
    assert_eq!(set["PRIORITY"], "6", "{set}");
    let granted = find(
        &recs,
        "polkit authorized org.opdbus.NumaCache.set-strategy for uid=0",
    );
    assert_eq!(granted["TARGET"], "audit", "{granted}");
    let denied = find(
        &recs,
        "polkit refused org.opdbus.NumaCache.set-strategy for uid=65534",
    );
    assert_eq!(denied["TARGET"], "audit", "{denied}");
    assert_eq!(denied["PRIORITY"], "4", "{denied}");
    assert!(
        denied["MESSAGE"]
            .as_str()
            .unwrap_or_default()
            .contains("sender=:"),
        "{denied}"
    );
    let failed = find(&recs, "org.opdbus.NumaCache.manage-cache failed for uid=0");
    assert_eq!(failed["TARGET"], "audit", "{failed}");
    assert!(
        failed["MESSAGE"]
            .as_str()
            .unwrap_or_default()
            .contains("no snapshot"),
        "{failed}"
    );
    find(&recs, "cache closed cleanly");

    for r in &recs {
        let msg = r["MESSAGE"].as_str().unwrap_or_default();
        assert!(
            !(msg.contains("Some(") || msg.contains("None") || msg.contains("\\\"")),
            "Rust debug formatting reached the journal: {r}"
        );
        assert_ne!(
            r["PRIORITY"], "5",
            "info must be priority 6, not notice: {r}"
        );
    }
}

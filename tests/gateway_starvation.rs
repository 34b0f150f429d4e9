//! The HTTP gateway cannot be starved by a local user: with the daemon's descriptor limit at
//! the usual soft limit (1024), 1,100 connections opened by `nobody`, each holding a partial
//! request, leave Put and Get working, and the daemon closes the idle ones by itself (header
//! deadline). Its own binary, because it lowers this test process's RLIMIT_NOFILE, which the
//! daemon inherits.

mod dbus;
mod support;

use dbus::{Bus, GatewayDaemon, ok};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Opens N non-blocking connections to the socket (those the accept queue refuses are
/// dropped), sends half a request line on each, prints how many it holds, waits, then prints
/// how many the server has closed.
const HOLDER: &str = r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
path, n, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
        s.send(b"GET /api/v1/numa/topology HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        s.close()
        continue
    held.append(s)
print(len(held), flush=True)
time.sleep(wait)
closed = 0
for s in held:
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(closed, flush=True)
"#;

#[test]
fn idle_connections_of_a_local_user_do_not_starve_put_and_get() {
    if !(dbus::prerequisites() && support::require_tool("/usr/bin/python3", "python3")) {
        return;
    }
    // The usual soft limit of a service without LimitNOFILE; the daemon inherits it.
    let limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with pointers to live rlimit structs of this frame.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut current), 0);
        let wanted = libc::rlimit {
            rlim_max: current.rlim_max,
            ..limit
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &wanted), 0);
    }
    let bus = Bus::start_with(false);
    let mut gw = GatewayDaemon::start(&bus, &bus.dir().join("state"));
    let mut holder = Command::new("runuser")
        .args(["-u", "nobody", "--", "/usr/bin/python3", "-c", HOLDER])
        .arg(&gw.socket)
        .args(["1100", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("runuser python3");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let held: usize = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.trim().parse().ok())
        .expect("the holder reports its connections");
    assert!(
        held >= 256,
        "the attack did not get going: {held} connections"
    );

    // The data plane still works while they are held.
    let value = vec![7u8; 4096];
    for i in 0..5 {
        ok(
            &bus.busctl_put("starve", &format!("k{i}"), &value),
            "Put while idle connections are held",
        );
    }
    let got = ok(
        &bus.busctl_get("starve", "k4"),
        "Get while idle connections are held",
    );
    assert!(got.starts_with("ay 4096 7 7"), "{got}");

    // And the daemon hung up on the silent ones itself.
    let closed: usize = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.trim().parse().ok())
        .expect("the holder reports what the server closed");
    let _ = holder.wait();
    assert!(
        closed >= 200,
        "only {closed} of {held} idle connections were closed by the daemon"
    );
    assert!(gw.daemon.alive(), "{}", gw.daemon.log());
    // Once they are gone, HTTP answers again.
    let r = gw.tcp("/api/v1/numa/topology", &[]);
    assert_eq!(r.status, 200, "{r:?}");
}

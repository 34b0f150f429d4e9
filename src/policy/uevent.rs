//! The kernel's hotplug notifications: a `NETLINK_KOBJECT_UEVENT` socket that receives a
//! message for every device added, removed, onlined or offlined (CPUs, memory blocks, nodes).

use super::error::PolicyError;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NETLINK_KOBJECT_UEVENT: libc::c_int = 15;
/// The multicast group the kernel itself sends uevents to (udev re-broadcasts on group 2).
const KERNEL_GROUP: u32 = 1;

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `online`, `offline`, `change`, ...
    pub action: String,
    /// E.g. `cpu`, `memory`, `node`.
    pub subsystem: String,
    /// The sysfs path below /sys, e.g. `/devices/system/cpu/cpu3`.
    pub devpath: String,
}

impl Uevent {
    /// Parse a kernel uevent datagram (`ACTION@DEVPATH\0KEY=VALUE\0...`).
    pub fn parse(buf: &[u8]) -> Option<Uevent> {
        let mut fields = buf.split(|&b| b == 0).filter(|f| !f.is_empty());
        let header = std::str::from_utf8(fields.next()?).ok()?;
        // udev's own messages start with "libudev": not from the kernel.
        header.contains('@').then_some(())?;
        let mut ev = Uevent {
            action: String::new(),
            subsystem: String::new(),
            devpath: String::new(),
        };
        for f in fields {
            let Ok(f) = std::str::from_utf8(f) else {
                continue;
            };
            if let Some((k, v)) = f.split_once('=') {
                match k {
                    "ACTION" => ev.action = v.to_string(),
                    "SUBSYSTEM" => ev.subsystem = v.to_string(),
                    "DEVPATH" => ev.devpath = v.to_string(),
                    _ => {}
                }
            }
        }
        Some(ev)
    }
}

/// A bound uevent socket. Fails to open in sandboxes without netlink; callers fall back to
/// re-scanning.
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    /// Open and bind to the kernel's uevent group.
    pub fn open() -> Result<UeventSocket, PolicyError> {
        // SAFETY: socket() with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(PolicyError::Syscall {
                call: "socket(NETLINK_KOBJECT_UEVENT)",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = KERNEL_GROUP;
        // SAFETY: `addr` is a live, initialised sockaddr_nl and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(PolicyError::Syscall {
                call: "bind(NETLINK_KOBJECT_UEVENT)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(UeventSocket { fd })
    }

    /// Wait up to `timeout` for the next uevent; `Ok(None)` when none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Uevent>, PolicyError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `pfd` is one live pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(PolicyError::Syscall {
                call: "poll(uevent)",
                source: err,
            });
        }
        if rc == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` is a live writable buffer of the given length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            // EAGAIN: spurious wakeup; ENOBUFS: the kernel dropped messages (a burst), which
            // the caller treats like any change: it re-scans.
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                Some(libc::ENOBUFS) => Ok(Some(Uevent {
                    action: "overflow".into(),
                    subsystem: "node".into(),
                    devpath: String::new(),
                })),
                _ => Err(PolicyError::Syscall {
                    call: "recv(uevent)",
                    source: err,
                }),
            };
        }
        Ok(Uevent::parse(&buf[..n as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cpu_offline_uevent() {
        let msg = b"offline@/devices/system/cpu/cpu3\0ACTION=offline\0DEVPATH=/devices/system/cpu/cpu3\0SUBSYSTEM=cpu\0SEQNUM=1234\0";
        let ev = Uevent::parse(msg).unwrap();
        assert_eq!(ev.action, "offline");
        assert_eq!(ev.subsystem, "cpu");
        assert_eq!(ev.devpath, "/devices/system/cpu/cpu3");
        assert!(Uevent::parse(b"libudev\0\0\0").is_none());
    }

    /// A real uevent, made by asking the kernel to resend node 0's (`echo change >
    /// .../node0/uevent`, root only), arrives on the socket and parses.
    #[test]
    fn the_socket_receives_a_uevent_the_kernel_sends() {
        let s = UeventSocket::open().expect("NETLINK_KOBJECT_UEVENT socket");
        let trigger = "/sys/devices/system/node/node0/uevent";
        if let Err(e) = std::fs::write(trigger, "change") {
            crate::policy::error::test_skip(&format!("writing {trigger}: {e} (needs root)"));
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Some(ev) = s.recv_timeout(Duration::from_millis(200)).unwrap() {
                if ev.action == "change" && ev.devpath == "/devices/system/node/node0" {
                    assert_eq!(ev.subsystem, "node");
                    return;
                }
                seen.push(ev);
            }
        }
        panic!("no change uevent for node0 within 5 s; saw {seen:?}");
    }
}

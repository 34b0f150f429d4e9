//! A private system bus with a real polkitd on it, our polkit actions installed, and a rules
//! file that grants them to a test group; plus that group and a member. The rules file (named
//! after the test, inert once the test is gone) goes when the fixture is dropped; the group
//! and its member, created once and race-free, stay for the next test (test-only, no login).

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The group the rules file grants our actions to, and its one member.
pub const GRANTED_GROUP: &str = "numacache-gwtest";
/// A user in [`GRANTED_GROUP`].
pub const GRANTED_USER: &str = "numacache-gwtest";

const POLKITD: &str = "/usr/lib/polkit-1/polkitd";

/// A bus like Debian's system bus (default deny for method calls, polkit's own bus policy).
const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
</busconfig>
"#;

/// The running bus and polkitd, and what was installed for them.
pub struct PolkitBus {
    /// The bus's D-Bus address.
    pub address: String,
    bus: Child,
    polkitd: Child,
    _rule: crate::support::TestPolkitRule,
    _dir: tempfile::TempDir,
}

impl PolkitBus {
    /// Start the bus and polkitd, install the actions and a rule granting [`GRANTED_GROUP`].
    /// Call [`TestUser::create`] first so that the group exists.
    pub fn start() -> PolkitBus {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("bus.conf");
        fs::write(
            &config,
            BUS_CONFIG.replace("@SOCKET@", &socket.display().to_string()),
        )
        .expect("write bus config");
        crate::support::install_polkit_actions();
        let rule = crate::support::TestPolkitRule::install(
            "gateway",
            &format!("subject.isInGroup(\"{GRANTED_GROUP}\")"),
            "YES",
        );

        let address = format!("unix:path={}", socket.display());
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        wait_for(|| socket.exists(), "the private bus socket");
        let polkitd = Command::new(POLKITD)
            .arg("--no-debug")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start polkitd");
        let this = PolkitBus {
            address,
            bus,
            polkitd,
            _rule: rule,
            _dir: dir,
        };
        wait_for(|| this.polkit_ready(), "polkitd on the private bus");
        this
    }

    /// True once polkitd owns its name and knows our actions.
    fn polkit_ready(&self) -> bool {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args([
                "call",
                "org.freedesktop.PolicyKit1",
                "/org/freedesktop/PolicyKit1/Authority",
                "org.freedesktop.PolicyKit1.Authority",
                "EnumerateActions",
                "s",
                "",
            ])
            .output()
            .map(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains("org.opdbus.NumaCache.optimize")
            })
            .unwrap_or(false)
    }
}

impl Drop for PolkitBus {
    fn drop(&mut self) {
        let _ = self.polkitd.kill();
        let _ = self.polkitd.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// A system user in [`GRANTED_GROUP`] (the group is its primary group). Created once per
/// process under the machine-wide set-up lock, "already exists" being success; kept
/// afterwards, so no test removes it from under another.
pub struct TestUser;

impl TestUser {
    /// Make sure the group and the user (no home, no login shell) exist.
    pub fn create() -> TestUser {
        static DONE: std::sync::Once = std::sync::Once::new();
        DONE.call_once(|| {
            let _lock = crate::support::setup_lock();
            crate::support::ensure_group(GRANTED_GROUP);
            crate::support::ensure_user(GRANTED_USER, Some(GRANTED_GROUP), &[]);
        });
        TestUser
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not come up within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

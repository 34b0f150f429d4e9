//! A private system bus with a real polkitd on it, our polkit actions installed, and a rules
//! file that grants them to a test group; plus that group and a member. Everything is removed
//! again when the fixture is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The group the rules file grants our actions to, and its one member.
pub const GRANTED_GROUP: &str = "numacache-gwtest";
/// A user in [`GRANTED_GROUP`].
pub const GRANTED_USER: &str = "numacache-gwtest";

const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
const SYSTEM_ACTIONS: &str = "/usr/share/polkit-1/actions";
const SYSTEM_RULES: &str = "/etc/polkit-1/rules.d";
/// What the service installs; used as is when present.
const INSTALLED_POLICY: &str = "/usr/share/polkit-1/actions/org.opdbus.NumaCache.policy";

/// A minimal copy of the actions, for when neither the installed nor the repository's
/// policy file is there.
const MINIMAL_POLICY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/PolicyKit/1/policyconfig.dtd">
<policyconfig>
  <action id="org.opdbus.NumaCache.set-strategy"><description>set strategy</description><message>m</message>
    <defaults><allow_any>no</allow_any><allow_inactive>no</allow_inactive><allow_active>auth_admin_keep</allow_active></defaults></action>
  <action id="org.opdbus.NumaCache.optimize"><description>optimize</description><message>m</message>
    <defaults><allow_any>no</allow_any><allow_inactive>no</allow_inactive><allow_active>auth_admin_keep</allow_active></defaults></action>
  <action id="org.opdbus.NumaCache.manage-cache"><description>manage</description><message>m</message>
    <defaults><allow_any>no</allow_any><allow_inactive>no</allow_inactive><allow_active>auth_admin_keep</allow_active></defaults></action>
  <action id="org.opdbus.NumaCache.bind-process"><description>bind</description><message>m</message>
    <defaults><allow_any>no</allow_any><allow_inactive>no</allow_inactive><allow_active>auth_admin_keep</allow_active></defaults></action>
</policyconfig>
"#;

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
    installed: Vec<PathBuf>,
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
        let mut installed = Vec::new();
        if !Path::new(INSTALLED_POLICY).exists() {
            let repo_policy =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("polkit/org.opdbus.NumaCache.policy");
            let text = fs::read_to_string(&repo_policy).unwrap_or_else(|_| MINIMAL_POLICY.into());
            let path = Path::new(SYSTEM_ACTIONS).join("org.opdbus.NumaCache.gateway-test.policy");
            fs::write(&path, text).expect("install the polkit actions");
            installed.push(path);
        }
        let rules = Path::new(SYSTEM_RULES).join("50-numa-cache-gateway-test.rules");
        fs::write(
            &rules,
            format!(
                "polkit.addRule(function(action, subject) {{\n  if (action.id.indexOf(\"org.opdbus.NumaCache.\") == 0 && subject.isInGroup(\"{GRANTED_GROUP}\")) {{\n    return polkit.Result.YES;\n  }}\n}});\n"
            ),
        )
        .expect("install the polkit rule");
        installed.push(rules);

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
            installed,
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
        for path in &self.installed {
            let _ = fs::remove_file(path);
        }
    }
}

/// A system user in [`GRANTED_GROUP`], removed on drop (unless it was already there).
pub struct TestUser {
    created: bool,
}

impl TestUser {
    /// Create the group and the user (no home, no login shell).
    pub fn create() -> TestUser {
        let exists = Command::new("id")
            .arg(GRANTED_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if exists {
            return TestUser { created: false };
        }
        let _ = Command::new("groupadd")
            .args(["--system", GRANTED_GROUP])
            .status();
        let ok = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                GRANTED_GROUP,
                GRANTED_USER,
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "useradd {GRANTED_USER} failed");
        TestUser { created: true }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.created {
            let quiet = |cmd: &str, arg: &str| {
                let _ = Command::new(cmd)
                    .arg(arg)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            quiet("userdel", GRANTED_USER);
            // userdel may already have removed the user's primary group.
            quiet("groupdel", GRANTED_GROUP);
        }
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

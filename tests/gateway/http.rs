//! The gateway running in-process over a real cache in a temporary directory, listening on a
//! temporary unix socket and an ephemeral loopback port, and `curl` to talk to it.

use numa_cache::app::{App, CacheLatency, Event, Limits, Polkit, StrategyView};
use numa_cache::gateway::{GatewayArgs, GatewayHandle, GatewayState};
use numa_cache::store::{Cache, CacheConfig, Caller, PutOptions};
use numa_cache::topology::watcher::TopologyWatcher;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running gateway and what it serves.
pub struct Served {
    /// The application the gateway serves.
    pub app: Arc<App>,
    /// The engine behind it, for checking what a request changed.
    pub cache: Arc<Cache>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The unix socket.
    pub socket: PathBuf,
    /// The cache directory (and the socket's).
    pub dir: tempfile::TempDir,
    /// Every strategy change the application announced, in order.
    pub changes: Arc<Mutex<Vec<StrategyView>>>,
    handle: Option<GatewayHandle>,
}

/// Open a cache in a fresh temporary directory and serve it on a socket there (the directory
/// made traversable so that other users can reach the socket) and on 127.0.0.1:0. polkit is
/// asked on `polkit_bus` when given, else on the system bus.
pub async fn serve(polkit_bus: Option<&str>) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let config = CacheConfig {
        dir: dir.path().join("cache"),
        ..CacheConfig::default()
    };
    let watcher = Arc::new(TopologyWatcher::start("/", Duration::from_secs(3600)));
    let cache = Cache::open(config, watcher.current()).expect("open cache");
    let polkit = Polkit::at(polkit_bus.map(str::to_string));
    let app = Arc::new(App::new(cache, watcher, "/", polkit, Limits::default()));
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = changes.clone();
    let mut events = app.subscribe();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let Event::StrategyChanged(view) = e {
                seen.lock().expect("lock").push(view);
            }
        }
    });
    let state = GatewayState::new(app.clone());
    let socket = dir.path().join("http.sock");
    let args = GatewayArgs {
        http_socket: Some(socket.clone()),
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        http_allow_remote: false,
    };
    let handle = numa_cache::gateway::spawn(&args, state)
        .expect("start the gateway")
        .expect("the gateway is configured");
    let base = format!("http://{}", handle.tcp_addr().expect("tcp address"));
    Served {
        cache: app.cache().expect("the cache is open"),
        app,
        base,
        socket,
        dir,
        changes,
        handle: Some(handle),
    }
}

impl Served {
    /// The latency histograms /metrics renders.
    pub fn latency(&self) -> &CacheLatency {
        self.app.latency()
    }

    /// The node the tests place entries on: the first allowed node with memory.
    pub fn home(&self) -> u32 {
        let t = self.cache.topology();
        t.nodes
            .iter()
            .find(|n| n.allowed && n.has_memory)
            .unwrap_or(&t.nodes[0])
            .node_id
    }

    /// Put `value` on [`Served::home`] (explicitly, so that the figures per node are known
    /// whichever CPU the test runs on).
    pub fn put(&self, ns: &str, key: &str, value: &[u8]) {
        let opts = PutOptions {
            node: Some(self.home()),
            ..PutOptions::default()
        };
        let node = self
            .cache
            .put(ns, key, value, &opts, &Caller::default())
            .expect("put");
        assert_eq!(node, self.home());
    }

    /// Stop the gateway (graceful) and check that it removed its socket.
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.expect("clean shutdown");
        }
        assert!(!self.socket.exists(), "the socket is removed at shutdown");
    }

    /// `GET path` over TCP.
    pub async fn get(&self, path: &str) -> Reply {
        curl(None, &[&format!("{}{path}", self.base)]).await
    }

    /// `POST path` with a JSON body over TCP.
    pub async fn post_tcp(&self, path: &str, body: &str) -> Reply {
        curl(
            None,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &format!("{}{path}", self.base),
            ],
        )
        .await
    }

    /// `POST path` over the unix socket as `user` (None: as root), with extra curl arguments
    /// (headers, body).
    pub async fn post_socket(&self, user: Option<&str>, path: &str, extra: &[&str]) -> Reply {
        let socket = self.socket.display().to_string();
        let url = format!("http://localhost{path}");
        let mut args = vec!["--unix-socket", socket.as_str(), "-X", "POST"];
        args.extend_from_slice(extra);
        args.push(url.as_str());
        curl(user, &args).await
    }

    /// `POST path` with a JSON body over the unix socket as `user`.
    pub async fn post_json(&self, user: Option<&str>, path: &str, body: &str) -> Reply {
        self.post_socket(
            user,
            path,
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ],
        )
        .await
    }
}

/// What curl got back.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The Content-Type header.
    pub content_type: String,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.body, self.status))
    }

    /// Assert the status and the `{"error":{"code","message"}}` shape; returns the message.
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{self:?}");
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{self:?}");
        message
    }
}

/// Run curl (as `user` through runuser when given) and collect status, content type, body.
pub async fn curl(user: Option<&str>, args: &[&str]) -> Reply {
    let mut cmd = match user {
        Some(u) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", u, "--", "curl"]);
            c
        }
        None => tokio::process::Command::new("curl"),
    };
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "-w",
        "\n%{http_code} %{content_type}",
    ]);
    cmd.args(args);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("curl finished")
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl printed no status: {text:?} {:?}", out.stderr));
    let (status, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    Reply {
        status: status.parse().unwrap_or_else(|_| {
            panic!(
                "curl status {status:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }),
        content_type: content_type.to_string(),
        body: body.to_string(),
    }
}

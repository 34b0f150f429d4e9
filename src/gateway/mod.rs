//! The optional HTTP gateway of numa-cached: the seed's four endpoints, the statistics history
//! and Prometheus metrics, as a thin adapter over the application layer (the same use cases,
//! polkit actions and errors as D-Bus). Off unless a unix socket or a loopback TCP address is
//! given.
//!
//! Reads are open to anyone who can connect. POSTs are accepted only on the unix socket, where
//! the peer's credentials (SO_PEERCRED) become a polkit `unix-process` subject. Connections
//! are bounded: at most [`MAX_CONNECTIONS`] at once, each closed when its request headers do
//! not arrive within [`HEADER_READ_TIMEOUT`] or it stays silent for [`IDLE_TIMEOUT`], so idle
//! clients cannot exhaust the daemon's descriptors.

pub mod errors;
mod limits;
pub mod metrics;
pub mod request;
mod routes;

use crate::app::App;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use limits::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};

/// The daemon's HTTP flags, for `#[command(flatten)]` into its clap parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct GatewayArgs {
    /// Serve the HTTP API on this unix socket (created mode 0666; POSTs are accepted only
    /// here, each checked with polkit).
    #[arg(long = "http-socket", value_name = "PATH")]
    pub http_socket: Option<PathBuf>,
    /// Serve the read-only HTTP API and /metrics on this TCP address (loopback only unless
    /// --http-allow-remote).
    #[arg(long = "http-listen", value_name = "ADDR:PORT")]
    pub http_listen: Option<SocketAddr>,
    /// Allow --http-listen on a non-loopback address (exposes statistics to the network).
    #[arg(long = "http-allow-remote")]
    pub http_allow_remote: bool,
}

/// Where the gateway listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// A unix socket path; POSTs are accepted only there.
    pub http_socket: Option<PathBuf>,
    /// A TCP address; refused unless loopback or `allow_remote`.
    pub http_listen: Option<SocketAddr>,
    /// Allow a non-loopback `http_listen`.
    pub allow_remote: bool,
}

impl From<&GatewayArgs> for GatewayConfig {
    fn from(a: &GatewayArgs) -> Self {
        GatewayConfig {
            http_socket: a.http_socket.clone(),
            http_listen: a.http_listen,
            allow_remote: a.http_allow_remote,
        }
    }
}

impl GatewayConfig {
    /// True when neither a socket nor an address is set: the gateway stays off.
    pub fn is_off(&self) -> bool {
        self.http_socket.is_none() && self.http_listen.is_none()
    }
}

/// What the gateway's handlers use: the application. Cheap to clone.
#[derive(Clone)]
pub struct GatewayState {
    app: Arc<App>,
}

impl GatewayState {
    /// Serve `app`.
    pub fn new(app: Arc<App>) -> Self {
        GatewayState { app }
    }
}

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Neither a socket nor an address was configured.
    #[error(
        "the HTTP gateway has nowhere to listen: give --http-socket PATH and/or --http-listen ADDR:PORT"
    )]
    NotConfigured,
    /// A non-loopback TCP address without `allow_remote`.
    #[error(
        "refusing --http-listen {0}: it is not a loopback address, and the gateway would expose cache statistics to the network; use 127.0.0.1:PORT or [::1]:PORT, or add --http-allow-remote"
    )]
    RemoteRefused(SocketAddr),
    /// Another live server owns the socket path.
    #[error("{0} is in use by a running server: stop it or choose another --http-socket path")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket, so it is not ours to replace.
    #[error("{0} exists and is not a unix socket: remove it or choose another --http-socket path")]
    NotASocket(PathBuf),
    /// Binding or preparing a listener failed.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The socket path or address.
        what: String,
        /// The system's error.
        source: io::Error,
    },
    /// No tokio runtime with I/O to run in.
    #[error("the HTTP gateway must be started from inside a tokio runtime")]
    NoRuntime,
    /// The server failed while running.
    #[error("the HTTP gateway stopped: {0}")]
    Serve(io::Error),
}

/// Which listener a request came in on, and who sent it over the unix socket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    /// A TCP client: reads only.
    Tcp(SocketAddr),
    /// A unix-socket client with its kernel-reported `(pid, uid)`, when the kernel gave them.
    Unix(Option<(Option<i32>, u32)>),
}

/// The bound listeners, ready to serve.
pub struct Gateway {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    state: GatewayState,
}

impl Gateway {
    /// Check `cfg` and bind its listeners, so that a bad address or a busy path is reported
    /// before the daemon announces itself. Must run inside a tokio runtime.
    pub fn bind(cfg: &GatewayConfig, state: GatewayState) -> Result<Gateway, GatewayError> {
        if cfg.is_off() {
            return Err(GatewayError::NotConfigured);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GatewayError::NoRuntime);
        }
        let tcp = match cfg.http_listen {
            Some(addr) => Some(bind_tcp(addr, cfg.allow_remote)?),
            None => None,
        };
        let unix = match &cfg.http_socket {
            Some(path) => Some((bind_unix(path)?, path.clone())),
            None => None,
        };
        Ok(Gateway { tcp, unix, state })
    }

    /// The bound TCP address (the real port when 0 was asked for).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The unix socket path.
    pub fn socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// Serve until `shutdown` completes, then finish in-flight requests and remove the socket.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let app = routes::router(self.state);
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut servers = tokio::task::JoinSet::new();
        if let Some(listener) = self.tcp {
            servers.spawn(limits::serve(listener, app.clone(), stop_tx.subscribe()));
        }
        let socket_path = self.unix.as_ref().map(|(_, p)| p.clone());
        if let Some((listener, _)) = self.unix {
            servers.spawn(limits::serve(listener, app, stop_tx.subscribe()));
        }
        let mut result = Ok(());
        tokio::select! {
            () = shutdown => {}
            Some(done) = servers.join_next() => {
                result = flatten(done);
            }
        }
        let _ = stop_tx.send(());
        while let Some(done) = servers.join_next().await {
            if result.is_ok() {
                result = flatten(done);
            }
        }
        if let Some(path) = socket_path {
            let _ = std::fs::remove_file(path);
        }
        result
    }
}

fn flatten(done: Result<io::Result<()>, tokio::task::JoinError>) -> Result<(), GatewayError> {
    match done {
        Ok(r) => r.map_err(GatewayError::Serve),
        Err(e) => Err(GatewayError::Serve(io::Error::other(e.to_string()))),
    }
}

fn bind_tcp(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, GatewayError> {
    if !allow_remote && !addr.ip().to_canonical().is_loopback() {
        return Err(GatewayError::RemoteRefused(addr));
    }
    let bind_err = |source| GatewayError::Bind {
        what: addr.to_string(),
        source,
    };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    TcpListener::from_std(std_listener).map_err(bind_err)
}

/// Bind `path`, replacing a stale socket left by a previous run but never a live one or a
/// file that is not a socket. The socket is made world-connectable: reads are public, and
/// every POST is checked with polkit.
fn bind_unix(path: &Path) -> Result<UnixListener, GatewayError> {
    let bind_err = |source| GatewayError::Bind {
        what: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(GatewayError::SocketInUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => return Err(GatewayError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    UnixListener::from_std(std_listener).map_err(bind_err)
}

/// Bind and serve `cfg` until the future is dropped or a listener fails.
pub async fn serve(state: GatewayState, cfg: GatewayConfig) -> Result<(), GatewayError> {
    Gateway::bind(&cfg, state)?
        .run_until(std::future::pending())
        .await
}

/// A gateway running on its own task. Keep it for as long as the gateway should serve:
/// dropping it stops the gateway like [`GatewayHandle::shutdown`], without waiting.
pub struct GatewayHandle {
    tcp_addr: Option<SocketAddr>,
    socket_path: Option<PathBuf>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), GatewayError>>,
}

impl GatewayHandle {
    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The unix socket path.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// Stop accepting, finish in-flight requests, remove the socket.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(GatewayError::Serve(io::Error::other(e.to_string()))),
        }
    }
}

/// Start the gateway on a tokio task as `args` say; `Ok(None)` when neither `--http-socket`
/// nor `--http-listen` is given (the gateway is off by default). Binding happens before this
/// returns, so a bad flag fails the daemon's start. Must run inside a tokio runtime.
pub fn spawn(
    args: &GatewayArgs,
    state: GatewayState,
) -> Result<Option<GatewayHandle>, GatewayError> {
    let cfg = GatewayConfig::from(args);
    if cfg.is_off() {
        return Ok(None);
    }
    let gateway = Gateway::bind(&cfg, state)?;
    let tcp_addr = gateway.tcp_addr();
    let socket_path = gateway.socket_path().map(Path::to_path_buf);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(gateway.run_until(async move {
        let _ = stopped.await;
    }));
    Ok(Some(GatewayHandle {
        tcp_addr,
        socket_path,
        stop,
        task,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Daemon {
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    #[test]
    fn flags_flatten_into_a_daemon_parser_and_default_to_off() {
        let d = Daemon::parse_from(["numa-cached"]);
        assert!(GatewayConfig::from(&d.gateway).is_off());
        let d = Daemon::parse_from([
            "numa-cached",
            "--http-socket",
            "/run/numa-cache/http.sock",
            "--http-listen",
            "127.0.0.1:9477",
        ]);
        let cfg = GatewayConfig::from(&d.gateway);
        assert_eq!(cfg.http_listen, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(
            cfg.http_socket.as_deref(),
            Some(Path::new("/run/numa-cache/http.sock"))
        );
        assert!(!cfg.allow_remote);
    }

    #[tokio::test]
    async fn non_loopback_addresses_are_refused_unless_allowed() {
        let e = bind_tcp("0.0.0.0:0".parse().unwrap(), false).unwrap_err();
        assert!(matches!(e, GatewayError::RemoteRefused(_)));
        assert!(e.to_string().contains("--http-allow-remote"), "{e}");
        bind_tcp("[::ffff:127.0.0.1]:0".parse().unwrap(), false)
            .map(drop)
            .or_else(|e| match e {
                // A host without IPv6 cannot bind it, but the address was not refused.
                GatewayError::Bind { .. } => Ok(()),
                other => Err(other),
            })
            .unwrap();
        bind_tcp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        bind_tcp("0.0.0.0:0".parse().unwrap(), true).unwrap();
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http.sock");
        let live = bind_unix(&path).unwrap();
        assert!(matches!(
            bind_unix(&path),
            Err(GatewayError::SocketInUse(_))
        ));
        drop(live); // the file stays behind, like after a crash
        let _again = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind_unix(&file), Err(GatewayError::NotASocket(_))));
    }
}

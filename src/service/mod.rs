//! The D-Bus front-end: org.opdbus.NumaCache interfaces over the application layer.
//!
//! Each method parses its D-Bus arguments, identifies the caller (a `system-bus-name` polkit
//! subject with the uid and pid the bus reports), calls the use case in `app`, and maps its
//! error once, in `errors`. Signals follow the application's events (`daemon`).

pub mod bus_socket;
pub mod cache;
pub mod caller;
pub mod config;
pub mod daemon;
pub mod direct;
pub mod direct_socket;
pub mod errors;
pub mod logging;
pub mod node;
pub mod notify;
pub mod stats;
pub mod strategy;
pub mod topology;

use crate::app::{App, Requester};
use crate::service::caller::CallerCache;
use crate::service::errors::ServiceResult;
use std::sync::Arc;
use zbus::Connection;
use zbus::message::Header;

/// The bus name, root path and node paths of the contract, shared with every client
/// (`numa_cache_client::names`).
pub use numa_cache_client::names::{BUS_NAME, ROOT_PATH, iface, node_path};

/// What every interface shares: the application, the bus connection, and the credentials of
/// callers by unique name.
pub struct Service {
    /// The application layer.
    pub app: Arc<App>,
    /// The bus connection the service is served on.
    pub conn: Connection,
    /// Caller credentials by unique name.
    pub callers: CallerCache,
}

impl Service {
    /// The D-Bus front-end of `app` on `conn`.
    pub fn new(app: Arc<App>, conn: Connection) -> Service {
        Service {
            app,
            conn,
            callers: CallerCache::default(),
        }
    }

    /// The caller of `header`, as the application needs it.
    pub async fn requester(&self, header: &Header<'_>) -> ServiceResult<Requester> {
        self.callers.requester(&self.conn, header).await
    }
}

/// A node argument over D-Bus (i): -1 for none.
pub fn node_i32(n: Option<u32>) -> i32 {
    n.and_then(|n| i32::try_from(n).ok()).unwrap_or(-1)
}

/// Send one PropertiesChanged for `iface` at `path` carrying every property in `changed`
/// (zbus's generated `*_changed` helpers send one signal per property).
pub async fn emit_properties(
    conn: &Connection,
    path: &str,
    iface: &'static str,
    changed: std::collections::HashMap<&str, zbus::Variant<'_>>,
) -> zbus::Result<()> {
    let emitter = zbus::object_server::SignalEmitter::new(conn, path.to_string())?;
    zbus::fdo::Properties::properties_changed(
        &emitter,
        zbus::names::InterfaceName::from_static_str_unchecked(iface),
        changed,
        std::borrow::Cow::Borrowed(&[]),
    )
    .await
}

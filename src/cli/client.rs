//! The bus side of `numacachectl`: one connection to the system bus, calls to
//! org.opdbus.NumaCache, and D-Bus errors turned into sentences a person can act on.

use crate::service::{BUS_NAME, ROOT_PATH};
use serde::de::DeserializeOwned;
use std::fmt;
use zbus::proxy::{CacheProperties, MethodFlags};
use zbus::{Connection, DynamicType, Proxy, wire::DynamicDeserialize};

/// Interface names, so callers cannot misspell them.
pub mod iface {
    /// org.opdbus.NumaCache.Topology
    pub const TOPOLOGY: &str = "org.opdbus.NumaCache.Topology";
    /// org.opdbus.NumaCache.Strategy
    pub const STRATEGY: &str = "org.opdbus.NumaCache.Strategy";
    /// org.opdbus.NumaCache.CacheStats
    pub const STATS: &str = "org.opdbus.NumaCache.CacheStats";
    /// org.opdbus.NumaCache.Cache
    pub const CACHE: &str = "org.opdbus.NumaCache.Cache";
    /// org.opdbus.NumaCache.Node
    pub const NODE: &str = "org.opdbus.NumaCache.Node";
}

/// A failed call, as the person at the terminal should read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The D-Bus error name, when there is one.
    pub name: Option<String>,
    /// The sentence to print.
    pub message: String,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// True when no daemon answers on the bus (or there is no bus).
    pub fn daemon_absent(&self) -> bool {
        matches!(
            self.name.as_deref(),
            Some("org.freedesktop.DBus.Error.ServiceUnknown")
                | Some("org.freedesktop.DBus.Error.NameHasNoOwner")
                | Some("no-bus")
        )
    }

    fn from_zbus(e: zbus::Error, what: &str) -> ClientError {
        match e {
            zbus::Error::MethodError(name, detail, _) => {
                let name = name.to_string();
                let detail = detail.unwrap_or_default();
                ClientError {
                    message: sentence(&name, &detail, what),
                    name: Some(name),
                }
            }
            zbus::Error::FDO(fdo) => {
                let name = zbus::DBusError::name(&*fdo).to_string();
                let detail = zbus::DBusError::description(&*fdo)
                    .unwrap_or("")
                    .to_string();
                ClientError {
                    message: sentence(&name, &detail, what),
                    name: Some(name),
                }
            }
            other => ClientError {
                name: None,
                message: format!("{what} failed: {other}"),
            },
        }
    }
}

/// The sentence for a D-Bus error `name` with the daemon's `detail`.
fn sentence(name: &str, detail: &str, what: &str) -> String {
    let short = name.rsplit('.').next().unwrap_or(name);
    match name {
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
            format!(
                "numa-cached is not running: nothing owns {BUS_NAME} on the system bus \
                 (start it with `systemctl start numa-cached` or `scripts/demo.sh`)"
            )
        }
        "org.freedesktop.DBus.Error.AccessDenied" if detail.contains("Rejected send message") => {
            format!(
                "permission denied by the bus policy for {what}: the Cache interface is for root \
                 and members of group numacache"
            )
        }
        "org.freedesktop.DBus.Error.AccessDenied" => format!("permission denied: {detail}"),
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
            format!("authentication required: {detail}")
        }
        _ if name.starts_with("org.opdbus.NumaCache.Error.") => {
            let kind = match short {
                "NotFound" => "not found",
                "InvalidArgument" => "invalid argument",
                "TooLarge" => "too large",
                "NoSpace" => "no space",
                "Corrupted" => "corrupted data",
                "Unavailable" => "unavailable",
                other => other,
            };
            format!("{kind}: {detail}")
        }
        _ if detail.is_empty() => format!("{what} failed: {name}"),
        _ => format!("{what} failed: {detail} ({name})"),
    }
}

/// A connection to the system bus and org.opdbus.NumaCache on it.
pub struct Client {
    conn: Connection,
}

impl Client {
    /// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
    pub async fn connect() -> Result<Client, ClientError> {
        match Connection::system().await {
            Ok(conn) => Ok(Client { conn }),
            Err(e) => Err(ClientError {
                name: Some("no-bus".into()),
                message: format!(
                    "cannot connect to the system bus ({e}); is dbus running? \
                     (DBUS_SYSTEM_BUS_ADDRESS={})",
                    std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| "unset".into())
                ),
            }),
        }
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    async fn proxy(
        &self,
        interface: &'static str,
        path: &str,
    ) -> Result<Proxy<'static>, ClientError> {
        zbus::proxy::Builder::<Proxy<'static>>::new(&self.conn)
            .destination(BUS_NAME)
            .path(path.to_string())
            .interface(interface)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ClientError::from_zbus(e, "connecting to numa-cached"))
    }

    /// Call `method` of `interface` on the root object. `interactive` lets polkit ask for a
    /// password (admin methods from a terminal).
    pub async fn call<B, R>(
        &self,
        interface: &'static str,
        method: &'static str,
        body: &B,
        interactive: bool,
    ) -> Result<R, ClientError>
    where
        B: serde::Serialize + DynamicType,
        R: for<'d> DynamicDeserialize<'d>,
    {
        let proxy = self.proxy(interface, ROOT_PATH).await?;
        let flags = if interactive {
            MethodFlags::ALLOW_INTERACTIVE_AUTH
        } else {
            MethodFlags::empty()
        };
        let reply: Option<R> = proxy
            .call_with_flags(method, flags, body)
            .await
            .map_err(|e| ClientError::from_zbus(e, method))?;
        reply.ok_or_else(|| ClientError {
            name: None,
            message: format!("{method} returned no reply"),
        })
    }

    /// Read property `name` of `interface` at `path`.
    pub async fn property<T>(
        &self,
        interface: &'static str,
        path: &str,
        name: &str,
    ) -> Result<T, ClientError>
    where
        T: serde::de::DeserializeOwned + zbus::Type,
    {
        let proxy = self.proxy(interface, path).await?;
        proxy
            .get_property(name)
            .await
            .map_err(|e| ClientError::from_zbus(e, &format!("reading {name}")))
    }
}

/// Parse the JSON a method returned.
pub fn parse_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, ClientError> {
    serde_json::from_str(text).map_err(|e| ClientError {
        name: None,
        message: format!("numa-cached sent {what} that is not valid JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences() {
        let s = sentence(
            "org.opdbus.NumaCache.Error.NotFound",
            "no entry \"k\" in namespace \"ns\"",
            "Get",
        );
        assert_eq!(s, "not found: no entry \"k\" in namespace \"ns\"");
        let s = sentence("org.freedesktop.DBus.Error.ServiceUnknown", "", "Get");
        assert!(s.contains("not running"), "{s}");
    }
}

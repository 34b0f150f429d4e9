//! The client's error type: every D-Bus error name of the contract becomes its own variant,
//! so callers match on kinds instead of comparing strings.

use crate::names::{self, ErrorKind};

/// What a call can fail with.
///
/// The daemon's errors (`org.opdbus.NumaCache.Error.*`) and the two authorization errors each
/// have a variant carrying the daemon's sentence; a daemon that is not running is
/// [`Error::NotRunning`]; other D-Bus errors keep their name in [`Error::Bus`].
///
/// ```
/// use numa_cache_client::{Error, names::ErrorKind};
/// let e = Error::from_dbus("org.opdbus.NumaCache.Error.NotFound", "no entry \"k\" in \"ns\"");
/// assert!(matches!(e, Error::NotFound(_)));
/// assert_eq!(e.kind(), Some(ErrorKind::NotFound));
/// assert_eq!(e.to_string(), "not found: no entry \"k\" in \"ns\"");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `org.opdbus.NumaCache.Error.NotFound`: no such entry, snapshot or process.
    #[error("not found: {0}")]
    NotFound(String),
    /// `org.opdbus.NumaCache.Error.InvalidArgument`: an argument is malformed or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `org.opdbus.NumaCache.Error.TooLarge`: a value or batch is over a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// `org.opdbus.NumaCache.Error.NoSpace`: the cache cannot make room.
    #[error("no space: {0}")]
    NoSpace(String),
    /// `org.opdbus.NumaCache.Error.Corrupted`: stored data failed its checksum.
    #[error("corrupted data: {0}")]
    Corrupted(String),
    /// `org.opdbus.NumaCache.Error.Unavailable`: the service cannot do it now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// `org.freedesktop.DBus.Error.AccessDenied`: polkit, the bus policy or namespace
    /// ownership said no.
    #[error("permission denied: {0}")]
    AccessDenied(String),
    /// `org.freedesktop.DBus.Error.InteractiveAuthorizationRequired`: polkit wants to ask,
    /// and the call did not allow interaction ([`crate::ClientBuilder::interactive`]).
    #[error("authentication required: {0}")]
    InteractiveAuthorizationRequired(String),
    /// Nothing owns `org.opdbus.NumaCache` on the bus (ServiceUnknown or NameHasNoOwner).
    #[error("numa-cached is not running: nothing owns org.opdbus.NumaCache on the bus ({0})")]
    NotRunning(String),
    /// Any other D-Bus error reply, by name.
    #[error("{message} ({name})")]
    Bus {
        /// The D-Bus error name.
        name: String,
        /// The sender's description, possibly empty.
        message: String,
    },
    /// The bus could not be reached.
    #[error("cannot connect to the D-Bus bus at {address}: {source}")]
    Connect {
        /// The address tried (`system bus` for the default).
        address: String,
        /// Why.
        #[source]
        source: zbus::Error,
    },
    /// A transport failure: the connection broke, a message could not be encoded, ...
    #[error("D-Bus transport: {0}")]
    Transport(#[source] zbus::Error),
    /// The daemon's reply did not have the shape of the contract.
    #[error("numa-cached sent a malformed reply: {0}")]
    Protocol(String),
    /// A local operation failed (creating or reading a memfd).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What the client's calls return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error for a D-Bus error reply `name` with the sender's `message`.
    ///
    /// ```
    /// use numa_cache_client::Error;
    /// let e = Error::from_dbus("org.freedesktop.DBus.Error.ServiceUnknown", "");
    /// assert!(e.is_not_running());
    /// ```
    pub fn from_dbus(name: &str, message: &str) -> Error {
        let m = message.to_string();
        match ErrorKind::from_name(name) {
            Some(ErrorKind::NotFound) => Error::NotFound(m),
            Some(ErrorKind::InvalidArgument) => Error::InvalidArgument(m),
            Some(ErrorKind::TooLarge) => Error::TooLarge(m),
            Some(ErrorKind::NoSpace) => Error::NoSpace(m),
            Some(ErrorKind::Corrupted) => Error::Corrupted(m),
            Some(ErrorKind::Unavailable) => Error::Unavailable(m),
            Some(ErrorKind::AccessDenied) => Error::AccessDenied(m),
            Some(ErrorKind::InteractiveAuthorizationRequired) => {
                Error::InteractiveAuthorizationRequired(m)
            }
            None if name == names::error::SERVICE_UNKNOWN
                || name == names::error::NAME_HAS_NO_OWNER =>
            {
                Error::NotRunning(m)
            }
            None => Error::Bus {
                name: name.to_string(),
                message: m,
            },
        }
    }

    /// The contract's kind of this error, `None` for errors outside it.
    ///
    /// ```
    /// use numa_cache_client::{Error, names::ErrorKind};
    /// assert_eq!(Error::TooLarge("x".into()).kind(), Some(ErrorKind::TooLarge));
    /// assert_eq!(Error::Protocol("x".into()).kind(), None);
    /// ```
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::NotFound(_) => Some(ErrorKind::NotFound),
            Error::InvalidArgument(_) => Some(ErrorKind::InvalidArgument),
            Error::TooLarge(_) => Some(ErrorKind::TooLarge),
            Error::NoSpace(_) => Some(ErrorKind::NoSpace),
            Error::Corrupted(_) => Some(ErrorKind::Corrupted),
            Error::Unavailable(_) => Some(ErrorKind::Unavailable),
            Error::AccessDenied(_) => Some(ErrorKind::AccessDenied),
            Error::InteractiveAuthorizationRequired(_) => {
                Some(ErrorKind::InteractiveAuthorizationRequired)
            }
            Error::NotRunning(_)
            | Error::Bus { .. }
            | Error::Connect { .. }
            | Error::Transport(_)
            | Error::Protocol(_)
            | Error::Io { .. } => None,
        }
    }

    /// The D-Bus error name this error came from, when it came from an error reply.
    ///
    /// ```
    /// use numa_cache_client::Error;
    /// let e = Error::from_dbus("org.freedesktop.DBus.Error.UnknownMethod", "no GetMany");
    /// assert_eq!(e.dbus_name(), Some("org.freedesktop.DBus.Error.UnknownMethod"));
    /// ```
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            Error::NotRunning(_) => Some(names::error::SERVICE_UNKNOWN),
            Error::Bus { name, .. } => Some(name),
            other => other.kind().map(ErrorKind::name),
        }
    }

    /// True when no daemon answers (nothing owns the name, or there is no bus at all).
    ///
    /// ```
    /// use numa_cache_client::Error;
    /// assert!(Error::NotRunning(String::new()).is_not_running());
    /// assert!(!Error::NotFound(String::new()).is_not_running());
    /// ```
    pub fn is_not_running(&self) -> bool {
        matches!(self, Error::NotRunning(_) | Error::Connect { .. })
    }

    /// The daemon's sentence (or the local description) without the kind prefix.
    ///
    /// ```
    /// use numa_cache_client::Error;
    /// assert_eq!(Error::NoSpace("disk full".into()).message(), "disk full");
    /// ```
    pub fn message(&self) -> String {
        match self {
            Error::NotFound(m)
            | Error::InvalidArgument(m)
            | Error::TooLarge(m)
            | Error::NoSpace(m)
            | Error::Corrupted(m)
            | Error::Unavailable(m)
            | Error::AccessDenied(m)
            | Error::InteractiveAuthorizationRequired(m)
            | Error::NotRunning(m)
            | Error::Protocol(m) => m.clone(),
            Error::Bus { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}

impl From<zbus::Error> for Error {
    fn from(e: zbus::Error) -> Error {
        match e {
            zbus::Error::MethodError(name, detail, _) => {
                Error::from_dbus(name.as_str(), detail.as_deref().unwrap_or(""))
            }
            zbus::Error::FDO(fdo) => Error::from(*fdo),
            other => Error::Transport(other),
        }
    }
}

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Error {
        match e {
            zbus::fdo::Error::ZBus(inner) => Error::from(inner),
            other => {
                let name = zbus::DBusError::name(&other).to_string();
                let message = zbus::DBusError::description(&other)
                    .unwrap_or("")
                    .to_string();
                Error::from_dbus(&name, &message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_maps_to_its_own_variant_and_back() {
        for k in ErrorKind::ALL {
            let e = Error::from_dbus(k.name(), "why");
            assert_eq!(e.kind(), Some(k), "{}", k.name());
            assert_eq!(e.dbus_name(), Some(k.name()));
            assert_eq!(e.message(), "why");
        }
    }

    #[test]
    fn fdo_errors_from_zbus_keep_their_names() {
        let e = Error::from(zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied(
            "Rejected send message".into(),
        ))));
        assert!(
            matches!(e, Error::AccessDenied(ref m) if m.contains("Rejected")),
            "{e:?}"
        );
        let e = Error::from(zbus::fdo::Error::ServiceUnknown("gone".into()));
        assert!(e.is_not_running(), "{e:?}");
        let e = Error::from(zbus::fdo::Error::UnknownMethod("GetMany".into()));
        assert_eq!(e.dbus_name(), Some(names::error::UNKNOWN_METHOD));
    }
}

//! The D-Bus errors of org.opdbus.NumaCache: engine errors are mapped here, once, to the
//! names of the public contract, each with a sentence the caller can act on.

use crate::store::StoreError;
use zbus::message::{Header, Message};
use zbus::names::ErrorName;

/// The prefix of our own error names.
pub const ERROR_PREFIX: &str = "org.opdbus.NumaCache.Error";

/// An error returned to a D-Bus caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// `org.opdbus.NumaCache.Error.NotFound`: no such entry, snapshot or process.
    #[error("{0}")]
    NotFound(String),
    /// `org.opdbus.NumaCache.Error.InvalidArgument`: an argument is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// `org.opdbus.NumaCache.Error.TooLarge`: a value is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// `org.opdbus.NumaCache.Error.NoSpace`: the cache cannot make room.
    #[error("{0}")]
    NoSpace(String),
    /// `org.opdbus.NumaCache.Error.Corrupted`: stored data failed its checksum.
    #[error("{0}")]
    Corrupted(String),
    /// `org.opdbus.NumaCache.Error.Unavailable`: the service cannot do it now.
    #[error("{0}")]
    Unavailable(String),
    /// `org.freedesktop.DBus.Error.AccessDenied`: polkit or namespace ownership said no.
    #[error("{0}")]
    AccessDenied(String),
    /// `org.freedesktop.DBus.Error.InteractiveAuthorizationRequired`: polkit wants to ask the
    /// user but the caller did not allow interaction.
    #[error("{0}")]
    InteractiveAuthorizationRequired(String),
}

impl ServiceError {
    /// The D-Bus error name of this error.
    pub fn dbus_name(&self) -> &'static str {
        match self {
            ServiceError::NotFound(_) => "org.opdbus.NumaCache.Error.NotFound",
            ServiceError::InvalidArgument(_) => "org.opdbus.NumaCache.Error.InvalidArgument",
            ServiceError::TooLarge(_) => "org.opdbus.NumaCache.Error.TooLarge",
            ServiceError::NoSpace(_) => "org.opdbus.NumaCache.Error.NoSpace",
            ServiceError::Corrupted(_) => "org.opdbus.NumaCache.Error.Corrupted",
            ServiceError::Unavailable(_) => "org.opdbus.NumaCache.Error.Unavailable",
            ServiceError::AccessDenied(_) => "org.freedesktop.DBus.Error.AccessDenied",
            ServiceError::InteractiveAuthorizationRequired(_) => {
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
            }
        }
    }

    fn message(&self) -> &str {
        match self {
            ServiceError::NotFound(m)
            | ServiceError::InvalidArgument(m)
            | ServiceError::TooLarge(m)
            | ServiceError::NoSpace(m)
            | ServiceError::Corrupted(m)
            | ServiceError::Unavailable(m)
            | ServiceError::AccessDenied(m)
            | ServiceError::InteractiveAuthorizationRequired(m) => m,
        }
    }

    /// Shorthand for an `InvalidArgument` error.
    pub fn invalid(msg: impl Into<String>) -> ServiceError {
        ServiceError::InvalidArgument(msg.into())
    }
}

impl zbus::DBusError for ServiceError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.dbus_name()).build(&(self.message(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.dbus_name())
    }

    fn description(&self) -> Option<&str> {
        Some(self.message())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        let msg = e.to_string();
        match e {
            StoreError::NotFound { .. } => ServiceError::NotFound(msg),
            StoreError::InvalidArgument(_) => ServiceError::InvalidArgument(msg),
            StoreError::TooLarge { .. } => ServiceError::TooLarge(msg),
            StoreError::NoSpace(_) => ServiceError::NoSpace(msg),
            StoreError::Corrupted(_) => ServiceError::Corrupted(msg),
            StoreError::Unavailable(_) => ServiceError::Unavailable(msg),
            StoreError::PermissionDenied(_) => ServiceError::AccessDenied(msg),
        }
    }
}

impl From<zbus::Error> for ServiceError {
    fn from(e: zbus::Error) -> ServiceError {
        ServiceError::Unavailable(format!("a D-Bus operation failed: {e}"))
    }
}

/// What D-Bus methods return.
pub type ServiceResult<T> = Result<T, ServiceError>;

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn store_errors_map_to_the_contract_names() {
        let e: ServiceError =
            StoreError::PermissionDenied("namespace x belongs to uid 5".into()).into();
        assert_eq!(e.name().as_str(), "org.freedesktop.DBus.Error.AccessDenied");
        let e: ServiceError = StoreError::TooLarge { size: 10, limit: 5 }.into();
        assert_eq!(e.name().as_str(), "org.opdbus.NumaCache.Error.TooLarge");
        assert!(e.description().is_some_and(|d| !d.is_empty()));
    }
}

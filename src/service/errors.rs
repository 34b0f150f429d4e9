//! The D-Bus errors of org.opdbus.NumaCache: the application's errors mapped here, once, by
//! an exhaustive match, to the names of the public contract.

use crate::app::{AppError, Refusal};
use numa_cache_client::names::error;
use zbus::message::{Header, Message};
use zbus::names::ErrorName;

/// The prefix of our own error names.
pub use numa_cache_client::names::ERROR_PREFIX;

/// An error returned to a D-Bus caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct ServiceError(pub AppError);

impl ServiceError {
    /// The D-Bus error name of this error.
    pub fn dbus_name(&self) -> &'static str {
        match &self.0 {
            AppError::NotFound(_) => error::NOT_FOUND,
            AppError::InvalidArgument(..) => error::INVALID_ARGUMENT,
            AppError::TooLarge(_) => error::TOO_LARGE,
            AppError::NoSpace(_) => error::NO_SPACE,
            AppError::Corrupted(_) => error::CORRUPTED,
            AppError::Unavailable(_) => error::UNAVAILABLE,
            AppError::AccessDenied(
                Refusal::NotAuthorized
                | Refusal::NoCredentials
                | Refusal::AuthorityUnavailable
                | Refusal::NotOwner
                | Refusal::MissingPrivilege,
                _,
            ) => error::ACCESS_DENIED,
            AppError::AuthenticationRequired(_) => error::INTERACTIVE_AUTHORIZATION_REQUIRED,
        }
    }

    /// An `InvalidArgument` error for a malformed D-Bus argument.
    pub fn invalid(msg: impl Into<String>) -> ServiceError {
        ServiceError(AppError::invalid(msg))
    }
}

impl zbus::DBusError for ServiceError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.dbus_name()).build(&(self.0.message(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.dbus_name())
    }

    fn description(&self) -> Option<&str> {
        Some(self.0.message())
    }
}

impl From<AppError> for ServiceError {
    fn from(e: AppError) -> ServiceError {
        ServiceError(e)
    }
}

impl From<zbus::Error> for ServiceError {
    fn from(e: zbus::Error) -> ServiceError {
        ServiceError(AppError::Unavailable(format!(
            "a D-Bus operation failed: {e}"
        )))
    }
}

/// What D-Bus methods return.
pub type ServiceResult<T> = Result<T, ServiceError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use zbus::DBusError;

    #[test]
    fn app_errors_map_to_the_contract_names() {
        let e = ServiceError(
            StoreError::PermissionDenied("namespace x belongs to uid 5".into()).into(),
        );
        assert_eq!(e.name().as_str(), "org.freedesktop.DBus.Error.AccessDenied");
        let e = ServiceError(StoreError::TooLarge { size: 10, limit: 5 }.into());
        assert_eq!(e.name().as_str(), "org.opdbus.NumaCache.Error.TooLarge");
        let e = ServiceError(AppError::AccessDenied(
            Refusal::MissingPrivilege,
            "numa-cached lacks CAP_SYS_NICE on process 7".into(),
        ));
        assert_eq!(e.name().as_str(), "org.freedesktop.DBus.Error.AccessDenied");
    }
}

//! The gateway's error responses: one JSON shape, `{"error":{"code","message"}}`, with the
//! HTTP status that fits, and the single mapping from the application's errors to it.

use crate::app::{AppError, Invalid, Refusal};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error the gateway answers with. `code` is a stable machine-readable word; `message` is
/// for the person reading it and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable error code, e.g. `unknown_strategy`.
    pub code: &'static str,
    /// What went wrong and what is allowed.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 403 with `code`.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 503 with code `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let (status, code) = match &e {
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::InvalidArgument(kind, _) => (
                StatusCode::BAD_REQUEST,
                match kind {
                    Invalid::Strategy => "unknown_strategy",
                    Invalid::WorkloadType => "unknown_workload_type",
                    Invalid::MemoryPolicy => "unknown_memory_policy",
                    Invalid::Node => "invalid_node",
                    Invalid::Range => "invalid_range",
                    Invalid::Argument => "invalid_argument",
                },
            ),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            // Out of space and engine trouble are conditions of the server, not of the
            // request: the client may retry later.
            AppError::NoSpace(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_space"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Corrupted(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupted"),
            AppError::AccessDenied(refusal, _) => (
                StatusCode::FORBIDDEN,
                match refusal {
                    Refusal::NotAuthorized => "not_authorized",
                    Refusal::NoCredentials => "no_credentials",
                    Refusal::AuthorityUnavailable => "authority_unavailable",
                    Refusal::NotOwner => "permission_denied",
                    Refusal::MissingPrivilege => "missing_privilege",
                },
            ),
            AppError::AuthenticationRequired(_) => {
                (StatusCode::FORBIDDEN, "authentication_required")
            }
        };
        Self::new(status, code, e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn engine_errors_map_to_statuses_and_keep_their_message() {
        let cases = [
            (
                StoreError::InvalidArgument("node 7 is not allowed".into()),
                400,
                "invalid_argument",
            ),
            (
                StoreError::TooLarge { size: 10, limit: 5 },
                413,
                "too_large",
            ),
            (
                StoreError::Unavailable("closing".into()),
                503,
                "unavailable",
            ),
            (StoreError::NoSpace("disk full".into()), 503, "no_space"),
            (
                StoreError::PermissionDenied("owned by uid 7".into()),
                403,
                "permission_denied",
            ),
        ];
        for (err, status, code) in cases {
            let text = err.to_string();
            let api = ApiError::from(AppError::from(err));
            assert_eq!(api.status.as_u16(), status, "{api}");
            assert_eq!(api.code, code);
            assert_eq!(api.message, text);
            assert_eq!(api.body()["error"]["code"], code);
            assert_eq!(api.body()["error"]["message"], text.as_str());
        }
    }
}

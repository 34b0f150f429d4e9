//! The gateway's error responses: one JSON shape, `{"error":{"code","message"}}`, with the
//! HTTP status that fits, and the single mapping from engine errors to it.

use crate::store::StoreError;
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            StoreError::InvalidArgument(_) => Self::bad_request("invalid_argument", message),
            StoreError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            StoreError::PermissionDenied(_) => Self::forbidden("permission_denied", message),
            // Out of space and engine trouble are conditions of the server, not of the
            // request: the client may retry later.
            StoreError::NoSpace(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_space", message)
            }
            StoreError::Unavailable(_) => Self::unavailable(message),
            StoreError::Corrupted(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupted", message)
            }
            #[allow(unreachable_patterns)]
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status, "{api}");
            assert_eq!(api.code, code);
            assert_eq!(api.message, text);
            assert_eq!(api.body()["error"]["code"], code);
            assert_eq!(api.body()["error"]["message"], text.as_str());
        }
    }
}

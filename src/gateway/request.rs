//! Request bodies and queries: the content type, the size bound and the JSON shapes of the
//! POST endpoints, checked here so that a malformed or oversized body never reaches the
//! application (which checks the values: names, nodes, ranges).

use crate::gateway::errors::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The largest request body accepted. The POST bodies are a few short fields; anything near
/// this size is not one of them.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Body of `POST /api/v1/numa/strategy` (the seed's "Set Cache Placement Strategy").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyRequest {
    /// A strategy name (`local_node`, `round_robin`, `most_memory`, `interleave`, `disabled`).
    pub strategy: String,
    /// The preferred node; absent, `null` or -1 for none.
    #[serde(default)]
    pub node_preference: Option<i64>,
}

/// Body of `POST /api/v1/numa/optimize` (the seed's "Optimize Cache for Workload").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizeRequest {
    /// `cpu_intensive`, `memory_intensive`, `io_intensive` or `balanced`.
    pub workload_type: String,
    /// The node to favour; absent, `null` or -1 for none.
    #[serde(default)]
    pub target_node: Option<i64>,
    /// A memory policy name; absent for the workload's default.
    #[serde(default)]
    pub memory_policy: Option<String>,
}

/// Query of `GET /api/v1/numa/cache/history`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Start, Unix seconds, inclusive; default 24 hours before `until`.
    pub since: Option<u64>,
    /// End, Unix seconds, inclusive; default now.
    pub until: Option<u64>,
}

/// Check the content type and parse `bytes` as `T`.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    check_content_type(headers)?;
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("the request body is not valid for this endpoint: {e}"),
        )
    })
}

/// Only `application/json` (with any parameters, such as a charset) is accepted.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown = if given.is_empty() { "none" } else { given };
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {shown:?} is not accepted: send the body as application/json"),
        ))
    }
}

/// How long a refused request's body may take to arrive before the connection is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Read and discard up to [`MAX_BODY_BYTES`] of a body that will not be used, before an
/// early refusal. Closing a connection with request bytes still unread makes the kernel (or
/// a relay in between) reset it, and the client may then lose the answer that says why.
pub async fn drain(body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await;
}

/// Read a JSON body of at most [`MAX_BODY_BYTES`] and parse it. The content type and a declared
/// length are checked before the body is used (a wrong type's body is only drained); an
/// undeclared length stops at the bound.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    if let Err(e) = check_content_type(headers) {
        drain(body).await;
        return Err(e);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let collected = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the request body could not be read: {e}"),
                )
            }
        })?;
    parse_json(headers, &collected.to_bytes())
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes; these endpoints take a few short JSON fields"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h
    }

    #[test]
    fn malformed_bodies_and_unknown_fields_are_400() {
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"strategy":1}"#,
            br#"{"strategy":"local_node","nodes":1}"#,
            b"",
        ] {
            let e = parse_json::<StrategyRequest>(&json_headers(), body).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_body"),
                "{e}"
            );
        }
    }

    #[test]
    fn wrong_or_missing_content_type_is_415() {
        let mut h = HeaderMap::new();
        let e = parse_json::<StrategyRequest>(&h, br#"{"strategy":"local_node"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let e = parse_json::<StrategyRequest>(&h, br#"{"strategy":"local_node"}"#).unwrap_err();
        assert!(e.message.contains("text/plain"), "{e}");
    }

    #[tokio::test]
    async fn oversized_bodies_are_413_declared_or_not() {
        let mut h = json_headers();
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let e = read_json::<StrategyRequest>(&h, Body::from(big.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(MAX_BODY_BYTES + 1),
        );
        let e = read_json::<StrategyRequest>(&h, Body::from(&b"{}"[..]))
            .await
            .unwrap_err();
        assert_eq!(e.code, "body_too_large");
        let ok: StrategyRequest = read_json(
            &json_headers(),
            Body::from(&br#"{"strategy":"round_robin"}"#[..]),
        )
        .await
        .unwrap();
        assert_eq!(ok.strategy, "round_robin");
    }
}

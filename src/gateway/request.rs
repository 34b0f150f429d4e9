//! Request bodies and queries: the content type, the size bound and the JSON shapes of the
//! POST endpoints, checked here so that a malformed or oversized body never reaches the engine.

use crate::gateway::errors::ApiError;
use crate::placement::{MemoryPolicy, Strategy, WorkloadType};
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

impl StrategyRequest {
    /// The strategy and node preference, or a 400 naming the bad value and the allowed ones.
    pub fn validate(&self) -> Result<(Strategy, Option<u32>), ApiError> {
        let strategy = self
            .strategy
            .parse::<Strategy>()
            .map_err(|e| ApiError::bad_request("unknown_strategy", e.to_string()))?;
        let node = node_argument("node_preference", self.node_preference)?;
        Ok((strategy, node))
    }
}

impl OptimizeRequest {
    /// The workload type, target node and memory policy, or a 400 naming the bad value.
    pub fn validate(&self) -> Result<(WorkloadType, Option<u32>, Option<MemoryPolicy>), ApiError> {
        let workload = self
            .workload_type
            .parse::<WorkloadType>()
            .map_err(|e| ApiError::bad_request("unknown_workload_type", e.to_string()))?;
        let node = node_argument("target_node", self.target_node)?;
        let policy = self
            .memory_policy
            .as_deref()
            .map(|p| p.parse::<MemoryPolicy>())
            .transpose()
            .map_err(|e| ApiError::bad_request("unknown_memory_policy", e.to_string()))?;
        Ok((workload, node, policy))
    }
}

impl HistoryQuery {
    /// `(since, until)` with defaults applied, or a 400 when the range is reversed.
    pub fn range(&self, now_unix: u64) -> Result<(u64, u64), ApiError> {
        // Unix times are int64 on the wire (openapi.yaml, SQLite); larger ones are not times.
        for (name, v) in [("since", self.since), ("until", self.until)] {
            if let Some(v) = v.filter(|v| *v > i64::MAX as u64) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("{name}={v} is past the largest Unix time ({})", i64::MAX),
                ));
            }
        }
        let until = self.until.unwrap_or(now_unix);
        let since = self.since.unwrap_or(until.saturating_sub(24 * 3600));
        if since > until {
            return Err(ApiError::bad_request(
                "invalid_range",
                format!(
                    "since ({since}) is after until ({until}): give since <= until, both in Unix seconds"
                ),
            ));
        }
        Ok((since, until))
    }
}

/// A node argument: -1 or absent means none; other negatives and values past the kernel's
/// node numbers are refused here (an unknown but plausible node is the engine's to refuse).
fn node_argument(name: &str, value: Option<i64>) -> Result<Option<u32>, ApiError> {
    match value {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n).ok().filter(|n| *n < MAX_NODE_ID).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_node",
                format!("{name} {n} is not a node number: give -1 for none or a node id from 0 to {}", MAX_NODE_ID - 1),
            )
        }),
    }
}

/// The kernel's node numbers are below MAX_NUMNODES, at most 1 << 10.
pub const MAX_NODE_ID: u32 = 1024;

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
    fn strategy_body_parses_and_validates() {
        let r: StrategyRequest = parse_json(
            &json_headers(),
            br#"{"strategy":"local_node","node_preference":0}"#,
        )
        .unwrap();
        assert_eq!(r.validate().unwrap(), (Strategy::LocalNode, Some(0)));
        let r: StrategyRequest =
            parse_json(&json_headers(), br#"{"strategy":"interleave"}"#).unwrap();
        assert_eq!(r.validate().unwrap(), (Strategy::Interleave, None));
        let r: StrategyRequest = parse_json(
            &json_headers(),
            br#"{"strategy":"disabled","node_preference":-1}"#,
        )
        .unwrap();
        assert_eq!(r.validate().unwrap(), (Strategy::Disabled, None));
    }

    #[test]
    fn unknown_strategy_is_400_and_lists_the_choices() {
        let r: StrategyRequest = parse_json(&json_headers(), br#"{"strategy":"fastest"}"#).unwrap();
        let e = r.validate().unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "unknown_strategy");
        assert!(
            e.message.contains("fastest") && e.message.contains("round_robin"),
            "{e}"
        );
    }

    #[test]
    fn bad_nodes_are_400() {
        for n in [-2i64, 1024, i64::MAX] {
            let e = node_argument("target_node", Some(n)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_node")
            );
            assert!(e.message.contains("target_node"), "{e}");
        }
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

    #[test]
    fn optimize_body_validates_each_field() {
        let r: OptimizeRequest = parse_json(
            &json_headers(),
            br#"{"workload_type":"cpu_intensive","target_node":0,"memory_policy":"bind"}"#,
        )
        .unwrap();
        assert_eq!(
            r.validate().unwrap(),
            (
                WorkloadType::CpuIntensive,
                Some(0),
                Some(MemoryPolicy::Bind)
            )
        );
        let r: OptimizeRequest =
            parse_json(&json_headers(), br#"{"workload_type":"gaming"}"#).unwrap();
        assert_eq!(r.validate().unwrap_err().code, "unknown_workload_type");
        let r: OptimizeRequest = parse_json(
            &json_headers(),
            br#"{"workload_type":"balanced","memory_policy":"spread"}"#,
        )
        .unwrap();
        assert_eq!(r.validate().unwrap_err().code, "unknown_memory_policy");
    }

    #[test]
    fn history_range_defaults_and_refuses_reversed_ranges() {
        let q = HistoryQuery {
            since: None,
            until: None,
        };
        assert_eq!(q.range(100_000).unwrap(), (100_000 - 86_400, 100_000));
        let q = HistoryQuery {
            since: Some(5),
            until: Some(4),
        };
        assert_eq!(q.range(100).unwrap_err().code, "invalid_range");
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

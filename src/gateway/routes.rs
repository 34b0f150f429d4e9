//! The endpoints: each parses its transport (query, body, the socket peer), calls the
//! application's use case and renders the typed result; errors map once, in `errors`.

use crate::app::{Requester, Subject, UnixProcess};
use crate::app::{StatsReport, StrategyReply};
use crate::gateway::errors::ApiError;
use crate::gateway::metrics::render_metrics;
use crate::gateway::request::{HistoryQuery, OptimizeRequest, StrategyRequest, drain, read_json};
use crate::gateway::{GatewayState, Peer};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

/// The gateway's routes over `state`.
pub(crate) fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/api/v1/numa/topology", get(topology))
        .route("/api/v1/numa/strategy", post(set_strategy))
        .route("/api/v1/numa/cache/stats", get(stats))
        .route("/api/v1/numa/optimize", post(optimize))
        .route("/api/v1/numa/cache/history", get(history))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn topology(State(s): State<GatewayState>) -> Result<Json<Value>, ApiError> {
    let _call = s.app.enter()?;
    Ok(Json(s.app.topology_json()))
}

async fn stats(State(s): State<GatewayState>) -> Result<Json<StatsReport>, ApiError> {
    Ok(Json(s.app.stats().await?))
}

async fn history(
    State(s): State<GatewayState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "{}: give since and until as Unix seconds, e.g. ?since=1700000000&until=1700003600",
                e.body_text()
            ),
        )
    })?;
    Ok(Json(s.app.history(query.since, query.until).await?))
}

async fn metrics(State(s): State<GatewayState>) -> Result<Response, ApiError> {
    let report = s.app.stats().await?;
    let strategy = s.app.strategy_view().config;
    let text = render_metrics(&report, s.app.generation(), &strategy);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn set_strategy(
    State(s): State<GatewayState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StrategyReply>, ApiError> {
    let (who, body) = socket_caller(peer, body).await?;
    let req: StrategyRequest = read_json(&headers, body).await?;
    let node = req.node_preference.unwrap_or(-1);
    Ok(Json(s.app.set_strategy(&who, &req.strategy, node).await?))
}

async fn optimize(
    State(s): State<GatewayState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StrategyReply>, ApiError> {
    let (who, body) = socket_caller(peer, body).await?;
    let req: OptimizeRequest = read_json(&headers, body).await?;
    let reply = s
        .app
        .optimize(
            &who,
            &req.workload_type,
            req.target_node.unwrap_or(-1),
            req.memory_policy.as_deref(),
        )
        .await?;
    Ok(Json(reply))
}

/// The unix-socket caller as a polkit `unix-process` subject with the body to read, or the
/// refusal (after draining the body) for a caller that cannot be identified.
async fn socket_caller(peer: Peer, body: Body) -> Result<(Requester, Body), ApiError> {
    match socket_peer(peer) {
        Ok(who) => Ok((who, body)),
        Err(e) => {
            drain(body).await;
            Err(e)
        }
    }
}

/// POSTs change the service; over TCP nobody can be identified, so they are refused there.
fn socket_peer(peer: Peer) -> Result<Requester, ApiError> {
    match peer {
        Peer::Tcp(addr) => Err(ApiError::forbidden(
            "post_over_tcp",
            format!(
                "changes are accepted only on the gateway's unix socket (--http-socket), where polkit can identify the caller; {addr} connected over TCP, which serves reads only. Use curl --unix-socket PATH, or numacachectl"
            ),
        )),
        Peer::Unix(Some((pid, uid))) => {
            let process = UnixProcess::from_peer(pid, uid)?;
            Ok(Requester {
                subject: Subject::UnixProcess(process),
                uid: Some(uid),
                pid: Some(process.pid),
                cpu: None,
            })
        }
        Peer::Unix(None) => Err(ApiError::forbidden(
            "no_credentials",
            "the kernel gave no credentials for this connection, so polkit cannot check it",
        )),
    }
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri, body: Body) -> ApiError {
    drain(body).await;
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {method} {}: see openapi.yaml; the endpoints are under /api/v1/numa/ and /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    drain(body).await;
    // Only routed paths get here; HTTP wants the methods they take in `Allow`.
    let allow = if matches!(
        uri.path(),
        "/api/v1/numa/strategy" | "/api/v1/numa/optimize"
    ) {
        "POST"
    } else {
        "GET, HEAD"
    };
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not accept {method}, only {allow}: see openapi.yaml",
            uri.path()
        ),
    );
    ([(header::ALLOW, allow)], error).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_posts_are_refused_with_the_reason() {
        let e = socket_peer(Peer::Tcp("127.0.0.1:5555".parse().unwrap())).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "post_over_tcp"));
        assert!(e.message.contains("unix socket"), "{e}");
    }
}

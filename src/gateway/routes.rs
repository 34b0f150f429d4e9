//! The endpoints. Each POST follows the same steps in the same order as the D-Bus methods:
//! refuse it off the unix socket, parse and validate the body, check polkit, act.

use crate::gateway::authz::{Action, AuthzError, UnixProcess};
use crate::gateway::errors::ApiError;
use crate::gateway::metrics::{MetricsInput, render_prometheus};
use crate::gateway::request::{HistoryQuery, OptimizeRequest, StrategyRequest, drain, read_json};
use crate::gateway::{GatewayState, Peer, StrategyChange};
use crate::placement::{self, StrategyConfig, WorkloadType};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Run a blocking engine call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::unavailable(format!("the engine call did not complete: {e}")))
}

async fn topology(State(s): State<GatewayState>) -> Result<Json<Value>, ApiError> {
    let cache = s.cache.clone();
    Ok(Json(blocking(move || cache.topology().to_json()).await?))
}

async fn stats(State(s): State<GatewayState>) -> Result<Json<Value>, ApiError> {
    let cache = s.cache.clone();
    Ok(Json(blocking(move || cache.stats_json()).await?))
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (since, until) = query.range(now)?;
    let cache = s.cache.clone();
    Ok(Json(blocking(move || cache.history(since, until)).await??))
}

async fn metrics(State(s): State<GatewayState>) -> Result<Response, ApiError> {
    let cache = s.cache.clone();
    let (stats, strategy) = blocking(move || (cache.stats_json(), cache.strategy())).await?;
    let latency = s.latency.snapshot();
    let text = render_prometheus(&MetricsInput {
        stats: &stats,
        generation: (s.generation)(),
        strategy: &strategy,
        latency: Some(&latency),
    });
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
) -> Result<Json<Value>, ApiError> {
    let (creds, body) = socket_caller(peer, body).await?;
    let req: StrategyRequest = read_json(&headers, body).await?;
    let (strategy, node_preference) = req.validate()?;
    authorize(&s, creds, Action::SetStrategy).await?;
    let cache = s.cache.clone();
    let applied = blocking(move || {
        let cfg = StrategyConfig {
            strategy,
            node_preference,
            memory_policy: cache.strategy().memory_policy,
        };
        cache.set_strategy(cfg).map(|n| (n, cfg))
    })
    .await??;
    announce(&s, applied.1, applied.0, None);
    Ok(Json(applied_json("applied", applied.0, &applied.1, None)))
}

async fn optimize(
    State(s): State<GatewayState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (creds, body) = socket_caller(peer, body).await?;
    let req: OptimizeRequest = read_json(&headers, body).await?;
    let (workload, target_node, memory_policy) = req.validate()?;
    // The same plan as D-Bus Optimize; a target node this machine cannot use is a 400.
    let cfg = placement::optimize_plan(workload, target_node, memory_policy, &s.cache.topology())
        .map_err(|e| ApiError::bad_request("invalid_node", e.to_string()))?;
    authorize(&s, creds, Action::Optimize).await?;
    let cache = s.cache.clone();
    let affected = blocking(move || cache.set_strategy(cfg)).await??;
    announce(&s, cfg, affected, Some(workload));
    Ok(Json(applied_json(
        "optimized",
        affected,
        &cfg,
        Some(workload),
    )))
}

fn announce(
    s: &GatewayState,
    config: StrategyConfig,
    affected: usize,
    workload: Option<WorkloadType>,
) {
    if let Some(listener) = &s.on_change {
        listener(StrategyChange {
            config,
            affected_processes: affected,
            workload_type: workload,
        });
    }
}

/// The seed's response to a strategy change, plus what was applied (the same fields as the
/// D-Bus replies of SetStrategy and Optimize).
fn applied_json(
    status: &str,
    affected: usize,
    cfg: &StrategyConfig,
    workload: Option<WorkloadType>,
) -> Value {
    let mut v = json!({
        "status": status,
        "strategy": cfg.strategy.as_str(),
        "affected_processes": affected,
        "node_preference": cfg.node_preference.map_or(-1, i64::from),
        "memory_policy": cfg.memory_policy.as_str(),
    });
    if let Some(w) = workload {
        v["workload_type"] = json!(w.as_str());
    }
    v
}

/// The unix-socket caller's credentials with the body to read, or the refusal (after
/// draining the body) for a caller that cannot be identified.
async fn socket_caller(peer: Peer, body: Body) -> Result<((Option<i32>, u32), Body), ApiError> {
    match socket_peer(peer) {
        Ok(creds) => Ok((creds, body)),
        Err(e) => {
            drain(body).await;
            Err(e)
        }
    }
}

/// POSTs change the service; over TCP nobody can be identified, so they are refused there.
fn socket_peer(peer: Peer) -> Result<(Option<i32>, u32), ApiError> {
    match peer {
        Peer::Tcp(addr) => Err(ApiError::forbidden(
            "post_over_tcp",
            format!(
                "changes are accepted only on the gateway's unix socket (--http-socket), where polkit can identify the caller; {addr} connected over TCP, which serves reads only. Use curl --unix-socket PATH, or numacachectl"
            ),
        )),
        Peer::Unix(Some(creds)) => Ok(creds),
        Peer::Unix(None) => Err(ApiError::forbidden(
            "no_credentials",
            "the kernel gave no credentials for this connection, so polkit cannot check it",
        )),
    }
}

async fn authorize(
    s: &GatewayState,
    creds: (Option<i32>, u32),
    action: Action,
) -> Result<(), ApiError> {
    let subject = UnixProcess::from_peer(creds.0, creds.1).map_err(authz_error)?;
    s.polkit.check(&subject, action).await.map_err(authz_error)
}

fn authz_error(e: AuthzError) -> ApiError {
    let code = match e {
        AuthzError::NoPeerPid | AuthzError::ProcessGone { .. } => "no_credentials",
        AuthzError::Denied { .. } => "not_authorized",
        AuthzError::ChallengeRequired { .. } => "authentication_required",
        // polkit unreachable: denied, as over D-Bus, with the reason given.
        AuthzError::Unreachable(_) => "authority_unavailable",
    };
    ApiError::forbidden(code, e.to_string())
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

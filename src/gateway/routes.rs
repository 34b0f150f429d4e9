//! The endpoints. Each POST follows the same steps in the same order as the D-Bus methods:
//! refuse it off the unix socket, parse and validate the body, check polkit, act.

use crate::gateway::authz::{Action, AuthzError, UnixProcess};
use crate::gateway::errors::ApiError;
use crate::gateway::metrics::{MetricsInput, render_prometheus};
use crate::gateway::request::{HistoryQuery, OptimizeRequest, StrategyRequest, read_json};
use crate::gateway::{GatewayState, Peer, StrategyChange};
use crate::placement::{MemoryPolicy, Strategy, StrategyConfig};
use crate::topology::Topology;
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
    let topo = blocking(move || cache.topology()).await?;
    Ok(Json(topology_json(&topo)))
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
    let creds = socket_peer(peer)?;
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
    let creds = socket_peer(peer)?;
    let req: OptimizeRequest = read_json(&headers, body).await?;
    let (workload, target_node, memory_policy) = req.validate()?;
    let cfg = workload_config(workload, target_node, memory_policy);
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

fn announce(s: &GatewayState, config: StrategyConfig, affected: usize, workload: Option<&str>) {
    if let Some(listener) = &s.on_change {
        listener(StrategyChange {
            config,
            affected_processes: affected,
            workload_type: workload.map(str::to_string),
        });
    }
}

/// The seed's response to a strategy change, plus what was applied (the same fields as the
/// D-Bus replies of SetStrategy and Optimize).
fn applied_json(
    status: &str,
    affected: usize,
    cfg: &StrategyConfig,
    workload: Option<&str>,
) -> Value {
    let mut v = json!({
        "status": status,
        "strategy": cfg.strategy.as_str(),
        "affected_processes": affected,
        "node_preference": cfg.node_preference.map_or(-1, i64::from),
        "memory_policy": cfg.memory_policy.as_str(),
    });
    if let Some(w) = workload {
        v["workload_type"] = json!(w);
    }
    v
}

/// The strategy a workload type asks for: compute-bound work wants its data on its own node,
/// bandwidth-bound work wants pages spread over every controller, I/O-bound work wants the
/// node with the most room for page cache, and a mixed load takes nodes in turn.
fn workload_config(
    workload: &str,
    target_node: Option<u32>,
    memory_policy: Option<MemoryPolicy>,
) -> StrategyConfig {
    let (strategy, default_policy) = match workload {
        "cpu_intensive" => (Strategy::LocalNode, MemoryPolicy::Bind),
        "memory_intensive" => (Strategy::Interleave, MemoryPolicy::Interleaved),
        "io_intensive" => (Strategy::MostMemory, MemoryPolicy::Preferred),
        _ => (Strategy::RoundRobin, MemoryPolicy::Preferred),
    };
    StrategyConfig {
        strategy,
        node_preference: target_node,
        memory_policy: memory_policy.unwrap_or(default_policy),
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

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {method} {}: see openapi.yaml; the endpoints are under /api/v1/numa/ and /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not accept {method}: see openapi.yaml for its method",
            uri.path()
        ),
    )
}

/// The seed's "Get NUMA Topology" response with the extra fields of ARCHITECTURE.md.
fn topology_json(t: &Topology) -> Value {
    let nodes: Vec<Value> = t
        .nodes
        .iter()
        .map(|n| {
            let distances: serde_json::Map<String, Value> = n
                .distances
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({
                "node_id": n.node_id,
                "cpu_count": n.cpus.len(),
                "cpu_list": n.cpus,
                "memory_mb": n.memory_total_bytes / (1024 * 1024),
                "distances": distances,
                "has_cpu": n.has_cpu,
                "has_memory": n.has_memory,
                "allowed": n.allowed,
            })
        })
        .collect();
    let total_mb: u64 = t
        .nodes
        .iter()
        .map(|n| n.memory_total_bytes / (1024 * 1024))
        .sum();
    let usable = t.nodes.iter().filter(|n| n.allowed && n.has_memory).count();
    // Placement by node only pays when there is more than one node to choose from.
    let optimal = if t.numa_available && usable > 1 {
        Strategy::LocalNode
    } else {
        Strategy::Disabled
    };
    json!({
        "nodes": nodes,
        "total_memory_mb": total_mb,
        "optimal_strategy": optimal.as_str(),
        "allowed_nodes": t.allowed_nodes,
        "allowed_cpus": t.allowed_cpus,
        "numa_available": t.numa_available,
        "warnings": t.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_map_to_strategies_and_explicit_choices_win() {
        let c = workload_config("cpu_intensive", Some(0), None);
        assert_eq!(
            (c.strategy, c.node_preference, c.memory_policy),
            (Strategy::LocalNode, Some(0), MemoryPolicy::Bind)
        );
        let c = workload_config("memory_intensive", None, Some(MemoryPolicy::Default));
        assert_eq!(
            (c.strategy, c.memory_policy),
            (Strategy::Interleave, MemoryPolicy::Default)
        );
    }

    #[test]
    fn tcp_posts_are_refused_with_the_reason() {
        let e = socket_peer(Peer::Tcp("127.0.0.1:5555".parse().unwrap())).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "post_over_tcp"));
        assert!(e.message.contains("unix socket"), "{e}");
    }

    #[test]
    fn topology_json_has_the_seed_fields() {
        use crate::topology::NumaNode;
        let node = |id: u32, cpus: Vec<u32>| NumaNode {
            node_id: id,
            allowed_cpus: cpus.clone(),
            cpus,
            memory_total_bytes: 32768 * 1024 * 1024,
            memory_free_bytes: 0,
            has_cpu: true,
            has_memory: true,
            allowed: true,
            distances: [
                (0, if id == 0 { 10 } else { 20 }),
                (1, if id == 1 { 10 } else { 20 }),
            ]
            .into(),
        };
        let t = Topology {
            nodes: vec![node(0, vec![0, 1]), node(1, vec![2, 3])],
            allowed_cpus: vec![0, 1, 2, 3],
            allowed_nodes: vec![0, 1],
            numa_available: true,
            warnings: vec![],
        };
        let v = topology_json(&t);
        assert_eq!(v["total_memory_mb"], 65536);
        assert_eq!(v["optimal_strategy"], "local_node");
        assert_eq!(v["nodes"][1]["node_id"], 1);
        assert_eq!(v["nodes"][1]["cpu_count"], 2);
        assert_eq!(v["nodes"][1]["cpu_list"], json!([2, 3]));
        assert_eq!(v["nodes"][1]["memory_mb"], 32768);
        assert_eq!(v["nodes"][1]["distances"], json!({"0": 20, "1": 10}));
    }
}

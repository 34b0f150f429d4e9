//! The HTTP gateway end to end: a real cache in a temporary directory, the gateway on a unix
//! socket and a loopback port, a real polkitd on a private system bus, and curl as the client.
//! One test walks every case in order because the polkit rule and the test user are
//! machine-wide.

mod gateway;
mod support;

use gateway::http::{Served, serve};
use gateway::polkit::{GRANTED_USER, PolkitBus, TestUser};
use numa_cache::placement::{MemoryPolicy, Strategy, WorkloadType};
use numa_cache::store::Caller;
use serde_json::json;

const STRATEGY: &str = "/api/v1/numa/strategy";
const OPTIMIZE: &str = "/api/v1/numa/optimize";

fn prerequisites() -> bool {
    support::require_root()
        && support::require_tool("curl", "curl")
        && support::require_tool("runuser", "util-linux")
        && support::require_tool("dbus-daemon", "dbus-daemon")
        && support::require_tool("/usr/lib/polkit-1/polkitd", "polkitd")
        && support::require_tool("busctl", "systemd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_endpoints_authorization_and_errors_over_curl() {
    if !prerequisites() {
        return;
    }
    let _user = TestUser::create();
    let bus = PolkitBus::start();
    let served = serve(Some(&bus.address)).await;
    let me = Caller::default();
    for key in ["a", "b"] {
        served.put("gw", key, &[7u8; 3000]);
    }
    assert_eq!(served.cache.get("gw", "a", &me).expect("get").len(), 3000);
    served.cache.record_stats().expect("record a stats row");

    reads_return_the_seed_fields(&served).await;
    posts_are_authorized_by_transport_and_polkit(&served).await;
    bad_requests_are_refused_before_the_engine(&served).await;
    engine_failure_is_503(&served).await;
    served.stop().await;
}

async fn reads_return_the_seed_fields(s: &Served) {
    let r = s.get("/api/v1/numa/topology").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let t = r.json();
    // The cache's own topology (detected on this machine) in the seed's shape.
    let topo = s.cache.topology();
    let first = &topo.nodes[0];
    let node = &t["nodes"][0];
    assert_eq!(node["node_id"], first.node_id, "{t}");
    assert_eq!(node["cpu_count"], first.cpus.len(), "{t}");
    assert_eq!(node["cpu_list"], json!(first.cpus), "{t}");
    assert_eq!(node["memory_mb"], first.memory_total_bytes >> 20, "{t}");
    let self_distance = node["distances"][first.node_id.to_string()].as_u64();
    assert_eq!(
        self_distance,
        first.distances.get(&first.node_id).map(|d| u64::from(*d)),
        "{t}"
    );
    assert_eq!(
        t["nodes"].as_array().map(Vec::len),
        Some(topo.nodes.len()),
        "{t}"
    );
    assert_eq!(t["total_memory_mb"], topo.total_memory_bytes() >> 20, "{t}");
    assert!(t["optimal_strategy"].is_string(), "{t}");

    let r = s.get("/api/v1/numa/cache/stats").await;
    assert_eq!(r.status, 200, "{r:?}");
    let st = r.json();
    let n0 = &st["node_distribution"][&s.home().to_string()];
    assert_eq!(n0["cache_entries"], 2, "{st}");
    assert!(n0["memory_usage_mb"].is_u64(), "{st}");
    assert_eq!(n0["hit_rate"], 1.0, "one get, one hit: {st}");
    assert!(
        st["numa_benefits"]["latency_improvement_ms"].is_number(),
        "{st}"
    );
    assert!(
        st["numa_benefits"]["memory_bandwidth_gain"].is_number(),
        "{st}"
    );

    let r = s.get("/api/v1/numa/cache/history?since=0").await;
    assert_eq!(r.status, 200, "{r:?}");
    let rows = r.json();
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["node_id"] == s.home()))
        .unwrap_or_else(|| panic!("no row for node {}: {rows}", s.home()));
    assert_eq!(row["cache_entries"], 2, "{rows}");
    for field in ["timestamp", "memory_usage_mb", "hit_rate"] {
        assert!(!row[field].is_null(), "{field} missing: {rows}");
    }
    let r = s.get("/api/v1/numa/cache/history?since=0&until=1").await;
    assert_eq!(r.json(), json!([]), "nothing was recorded in 1970");

    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert!(
        r.body
            .contains(&format!("numa_cache_entries{{node=\"{}\"}} 2", s.home())),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("numa_cache_topology_generation 1"),
        "{}",
        r.body
    );
}

async fn posts_are_authorized_by_transport_and_polkit(s: &Served) {
    let body = r#"{"strategy":"round_robin","node_preference":0}"#;

    let msg = s
        .post_tcp(STRATEGY, body)
        .await
        .expect_error(403, "post_over_tcp");
    assert!(msg.contains("unix socket"), "{msg}");

    let r = s.post_json(Some("nobody"), STRATEGY, body).await;
    let msg = r.expect_error(403, "not_authorized");
    assert!(msg.contains("org.opdbus.NumaCache.set-strategy"), "{msg}");
    assert_eq!(
        s.cache.strategy().strategy,
        Strategy::LocalNode,
        "refused: unchanged"
    );

    let r = s.post_json(Some(GRANTED_USER), STRATEGY, body).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["status"], "applied");
    assert_eq!(v["strategy"], "round_robin");
    assert!(v["affected_processes"].is_u64(), "{v}");
    let now = s.cache.strategy();
    assert_eq!(
        (now.strategy, now.node_preference),
        (Strategy::RoundRobin, Some(0))
    );

    let r = s
        .post_json(
            None,
            OPTIMIZE,
            r#"{"workload_type":"memory_intensive","target_node":-1,"memory_policy":"interleaved"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["workload_type"], "memory_intensive");
    assert_eq!(v["strategy"], "interleave");
    let now = s.cache.strategy();
    assert_eq!(
        (now.strategy, now.node_preference, now.memory_policy),
        (Strategy::Interleave, None, MemoryPolicy::Interleaved)
    );

    let r = s
        .post_json(Some("nobody"), OPTIMIZE, r#"{"workload_type":"balanced"}"#)
        .await;
    r.expect_error(403, "not_authorized");
    assert_eq!(s.cache.strategy().strategy, Strategy::Interleave);

    // Both applied changes, and only they, were handed on for the daemon to announce.
    let changes = s.changes.lock().expect("lock").clone();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].config.strategy, Strategy::RoundRobin);
    assert_eq!(changes[0].workload_type, None);
    assert_eq!(changes[1].config.strategy, Strategy::Interleave);
    assert_eq!(
        changes[1].workload_type,
        Some(WorkloadType::MemoryIntensive)
    );
}

async fn bad_requests_are_refused_before_the_engine(s: &Served) {
    let before = s.cache.strategy();
    let msg = s
        .post_json(None, STRATEGY, r#"{"strategy":"fastest"}"#)
        .await
        .expect_error(400, "unknown_strategy");
    assert!(
        msg.contains("fastest") && msg.contains("local_node"),
        "{msg}"
    );
    s.post_json(None, STRATEGY, r#"{"strategy":"local_node""#)
        .await
        .expect_error(400, "invalid_body");
    s.post_json(
        None,
        STRATEGY,
        r#"{"strategy":"local_node","colour":"red"}"#,
    )
    .await
    .expect_error(400, "invalid_body");
    s.post_json(
        None,
        STRATEGY,
        r#"{"strategy":"local_node","node_preference":-5}"#,
    )
    .await
    .expect_error(400, "invalid_node");
    // A node that could exist but is not on this machine: refused by the same check as
    // D-Bus SetStrategy (and Optimize below), with the same code.
    let msg = s
        .post_json(
            None,
            STRATEGY,
            r#"{"strategy":"local_node","node_preference":9}"#,
        )
        .await
        .expect_error(400, "invalid_node");
    assert!(msg.contains("node_preference 9"), "{msg}");
    let msg = s
        .post_json(
            None,
            OPTIMIZE,
            r#"{"workload_type":"balanced","target_node":9}"#,
        )
        .await
        .expect_error(400, "invalid_node");
    assert!(msg.contains("node 9"), "{msg}");
    s.post_json(None, OPTIMIZE, r#"{"workload_type":"gaming"}"#)
        .await
        .expect_error(400, "unknown_workload_type");
    s.post_socket(
        None,
        STRATEGY,
        &[
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            r#"{"strategy":"local_node"}"#,
        ],
    )
    .await
    .expect_error(415, "unsupported_media_type");

    let big = s.dir.path().join("big.json");
    let padding = " ".repeat(64 * 1024);
    std::fs::write(&big, format!(r#"{{"strategy":"local_node"{padding}}}"#)).expect("write");
    let at_big = format!("@{}", big.display());
    s.post_socket(
        None,
        STRATEGY,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &at_big,
        ],
    )
    .await
    .expect_error(413, "body_too_large");
    // Without a declared length (chunked), the bound still holds.
    s.post_socket(
        None,
        STRATEGY,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &at_big,
        ],
    )
    .await
    .expect_error(413, "body_too_large");
    assert_eq!(
        s.cache.strategy(),
        before,
        "no bad request reached the engine"
    );

    s.get("/api/v1/numa/nothing")
        .await
        .expect_error(404, "not_found");
    let msg = s
        .get("/api/v1/numa/strategy")
        .await
        .expect_error(405, "method_not_allowed");
    assert!(msg.contains("only POST"), "{msg}");
    s.get("/api/v1/numa/cache/history?since=10&until=5")
        .await
        .expect_error(400, "invalid_range");
    s.get("/api/v1/numa/cache/history?since=yesterday")
        .await
        .expect_error(400, "invalid_query");
}

/// The engine failing underneath (here: its history table is gone) is a 503 with the engine's
/// reason, not a 500 or a hang.
async fn engine_failure_is_503(s: &Served) {
    let db = s.dir.path().join("cache/index.db");
    let conn = rusqlite::Connection::open(&db).expect("open the index");
    conn.execute_batch("DROP TABLE numa_cache_stats")
        .expect("drop the history table");
    drop(conn);
    let msg = s
        .get("/api/v1/numa/cache/history")
        .await
        .expect_error(503, "unavailable");
    assert!(msg.contains("history"), "{msg}");
}

//! The HTTP gateway of a running numa-cached (issue 6, "tests with curl against a running
//! daemon"): started with `--http-socket` and `--http-listen 127.0.0.1:PORT` on the private
//! bus with a real polkitd. curl reads the seed's endpoints over TCP; a POST over TCP is
//! refused; over the socket polkit refuses `nobody` and, once a rule grants the group, lets
//! a member change the strategy, which the bus announces with StrategyChanged; data-plane
//! calls over the bus show up in /metrics, and /metrics and `numacachectl stats
//! --prometheus` both pass `promtool check metrics`.

mod dbus;
mod support;

use dbus::{Bus, GatewayDaemon, Monitor, NAME, PolkitRule, ROOT, TEST_USER, ok};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STRATEGY: &str = "/api/v1/numa/strategy";
const OPTIMIZE: &str = "/api/v1/numa/optimize";

fn json_post(body: &str) -> Vec<&str> {
    vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        body,
    ]
}

/// A property of the Strategy interface, as busctl prints it (`s "round_robin"`).
fn strategy_property(bus: &Bus, name: &str) -> String {
    let out = bus.busctl(&[
        "get-property",
        NAME,
        ROOT,
        "org.opdbus.NumaCache.Strategy",
        name,
    ]);
    ok(&out, "busctl get-property").trim().to_string()
}

/// The value of `name{op="OP"}` in a Prometheus text.
fn sample(text: &str, name: &str, op: &str) -> f64 {
    let prefix = format!("{name}{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

fn promtool_accepts(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    assert!(
        out.status.success(),
        "promtool rejects {what}: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gateway_of_a_running_daemon_over_curl() {
    if !(dbus::prerequisites()
        && support::require_tool("curl", "curl")
        && support::require_tool("promtool", "prometheus"))
    {
        return;
    }
    let bus = Bus::start();
    let gw = GatewayDaemon::start(&bus, &bus.dir().join("state"));

    // Reads over TCP: the seed's fields.
    let t = gw.tcp("/api/v1/numa/topology", &[]).json_ok();
    let nodes = t["nodes"].as_array().expect("nodes array");
    assert!(!nodes.is_empty(), "{t}");
    for n in nodes {
        for field in ["node_id", "cpu_count", "cpu_list", "memory_mb"] {
            assert!(!n[field].is_null(), "{field} missing: {t}");
        }
    }
    assert!(t["total_memory_mb"].is_u64(), "{t}");
    assert!(t["optimal_strategy"].is_string(), "{t}");
    let ids = ok(
        &bus.busctl(&[
            "get-property",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.Topology",
            "NodeIds",
        ]),
        "NodeIds",
    );
    assert!(
        ids.starts_with(&format!("au {}", nodes.len())),
        "the gateway and the bus disagree on the nodes: {ids} vs {t}"
    );
    let st = gw.tcp("/api/v1/numa/cache/stats", &[]).json_ok();
    assert!(st["node_distribution"].is_object(), "{st}");
    for (_, n) in st["node_distribution"].as_object().unwrap() {
        for field in ["cache_entries", "memory_usage_mb", "hit_rate"] {
            assert!(!n[field].is_null(), "{field} missing: {st}");
        }
    }
    assert!(st["numa_benefits"].is_object(), "{st}");

    // POSTs over TCP are refused whoever sends them.
    let body = r#"{"strategy":"round_robin","node_preference":-1}"#;
    let r = gw.tcp(STRATEGY, &json_post(body));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("unix socket"), "{r:?}");
    let r = gw.tcp(OPTIMIZE, &json_post(r#"{"workload_type":"balanced"}"#));
    assert_eq!(r.status, 403, "{r:?}");

    // Over the socket, polkit refuses nobody, and nothing changes.
    let before = strategy_property(&bus, "Name");
    assert_ne!(
        before, "s \"round_robin\"",
        "pick a strategy that is not active"
    );
    let r = gw.unix(Some("nobody"), STRATEGY, &json_post(body));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("org.opdbus.NumaCache.set-strategy"),
        "{r:?}"
    );
    assert_eq!(strategy_property(&bus, "Name"), before);

    // A rule granting numacache lets its member in; the bus announces the change.
    let monitor = Monitor::start(
        &bus,
        "gdbus",
        &["monitor", "--system", "--dest", NAME],
        "gateway-monitor.txt",
    );
    let _rule = PolkitRule::install(&["numacache"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let reply = loop {
        let r = gw.unix(Some(TEST_USER), STRATEGY, &json_post(body));
        if r.status == 200 {
            break r.json_ok();
        }
        assert_eq!(r.status, 403, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "polkitd never applied the rule: {r:?}\n{}",
            bus.polkit_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reply["status"], "applied", "{reply}");
    assert_eq!(reply["strategy"], "round_robin", "{reply}");
    monitor.wait_for(&["StrategyChanged", "'round_robin'"]);
    assert_eq!(strategy_property(&bus, "Name"), "s \"round_robin\"");
    let r = gw.unix(
        Some(TEST_USER),
        OPTIMIZE,
        &json_post(r#"{"workload_type":"memory_intensive","target_node":-1}"#),
    );
    let v = r.json_ok();
    assert_eq!(v["workload_type"], "memory_intensive", "{v}");
    // The Strategy properties follow an HTTP Optimize as they follow a bus one.
    monitor.wait_for(&["'WorkloadType': <'memory_intensive'>"]);
    assert_eq!(
        strategy_property(&bus, "WorkloadType"),
        "s \"memory_intensive\""
    );

    // Data-plane calls over the bus are timed into the histograms /metrics shows.
    let put = bus.busctl_put("gwtest", "k1", &[1, 2, 3]);
    ok(&put, "Put");
    let get = bus.busctl_get("gwtest", "k1");
    assert!(ok(&get, "Get").contains("ay 3 1 2 3"));
    let m = gw.tcp("/metrics", &[]);
    assert_eq!(m.status, 200, "{m:?}");
    let hist = "numa_cache_request_duration_seconds_count";
    assert!(sample(&m.body, hist, "get") >= 1.0, "{}", m.body);
    assert!(sample(&m.body, hist, "put") >= 1.0, "{}", m.body);
    promtool_accepts(&m.body, "/metrics");

    // numacachectl renders the same families from the bus.
    let out = Command::new(env!("CARGO_BIN_EXE_numacachectl"))
        .args(["stats", "--prometheus"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .expect("running numacachectl");
    let text = ok(&out, "numacachectl stats --prometheus");
    assert!(sample(&text, hist, "get") >= 1.0, "{text}");
    assert!(sample(&text, hist, "put") >= 1.0, "{text}");
    let name = strategy_property(&bus, "Name");
    let name = name.trim_start_matches("s ").trim_matches('"');
    assert!(
        text.contains(&format!("numa_cache_strategy_info{{strategy=\"{name}\"")),
        "the strategy on the bus is {name}: {text}"
    );
    promtool_accepts(&text, "numacachectl stats --prometheus");

    // SIGTERM stops the gateway with the daemon and removes the socket.
    let socket = gw.socket.clone();
    assert_eq!(gw.daemon.stop(), Some(0));
    assert!(!socket.exists(), "the socket outlived the daemon");
}

/// The value of `name{node="N"}`, or of the unlabelled `name`, in a Prometheus text.
fn node_sample(text: &str, name: &str, node: Option<&str>) -> f64 {
    let prefix = match node {
        Some(n) => format!("{name}{{node=\"{n}\"}} "),
        None => format!("{name} "),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[test]
fn dbus_stats_http_stats_and_metrics_report_the_same_numbers() {
    if !(dbus::prerequisites() && support::require_tool("curl", "curl")) {
        return;
    }
    let bus = Bus::start_with(false);
    let gw = GatewayDaemon::start(&bus, &bus.dir().join("state"));
    for i in 0..4 {
        ok(&bus.busctl_put("agree", &format!("k{i}"), &[i; 100]), "Put");
    }
    for key in ["k0", "k1", "k1", "absent"] {
        let _ = bus.busctl_get("agree", key);
    }
    // Nothing runs between the three reads: they must agree to the last field.
    let dbus_json = dbus::busctl_json_string(&ok(
        &bus.busctl(&[
            "--json=short",
            "call",
            NAME,
            ROOT,
            "org.opdbus.NumaCache.CacheStats",
            "GetStats",
        ]),
        "GetStats",
    ));
    let http_json = gw.tcp("/api/v1/numa/cache/stats", &[]).json_ok();
    let metrics = gw.tcp("/metrics", &[]);
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert_eq!(dbus_json, http_json, "D-Bus GetStats and HTTP stats differ");
    assert_eq!(dbus_json["totals"]["entries"], 4, "{dbus_json}");
    assert_eq!(dbus_json["totals"]["hits"], 3, "{dbus_json}");
    assert_eq!(dbus_json["totals"]["misses"], 1, "{dbus_json}");
    let nodes = dbus_json["node_distribution"]
        .as_object()
        .expect("node_distribution");
    for (node, row) in nodes {
        for (family, field) in [
            ("numa_cache_entries", "cache_entries"),
            ("numa_cache_hits_total", "hits"),
            ("numa_cache_misses_total", "misses"),
            ("numa_cache_logical_bytes", "logical_bytes"),
            ("numa_cache_stored_bytes", "stored_bytes"),
            ("numa_cache_memory_tier_bytes", "memory_tier_bytes"),
            ("numa_cache_hit_ratio", "hit_rate"),
        ] {
            assert_eq!(
                node_sample(&metrics.body, family, Some(node)),
                row[field].as_f64().expect("a number"),
                "{family} of node {node}"
            );
        }
    }
    assert_eq!(
        node_sample(&metrics.body, "numa_cache_total_evictions_total", None),
        dbus_json["totals"]["evictions"].as_f64().expect("a number")
    );
    let latency = &dbus_json["request_latency"];
    assert_eq!(
        sample(
            &metrics.body,
            "numa_cache_request_duration_seconds_count",
            "get"
        ),
        latency["get"]["count"].as_f64().expect("a count")
    );
    assert_eq!(latency["get"]["count"], 4, "{latency}");
    assert_eq!(latency["put"]["count"], 4, "{latency}");
}

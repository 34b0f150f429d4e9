//! The `numacachectl` subcommands that talk to numa-cached, through the client crate:
//! strategy, optimize, bind-process, stats, history, get/put (memfd past a size), delete,
//! lookup, clear, snapshot and monitor; and `topology` when a daemon answers. Errors are
//! turned into sentences a person can act on.

use crate::cli::CliError;
use crate::cli::render;
use crate::topology::{NumaNode, Topology};
use numa_cache_client::metrics::{MetricsInput, StatsReport, render_prometheus};
use numa_cache_client::names::BUS_NAME;
use numa_cache_client::{Client, Dict, Error, Event, Object, PutOptions, StrategyChange};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// `strategy`: show the active strategy, or set it.
#[derive(Debug, Clone, clap::Args)]
pub struct StrategyArgs {
    #[command(subcommand)]
    action: Option<StrategyAction>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum StrategyAction {
    /// Show the active strategy (the default).
    Show,
    /// Set the strategy: local_node, round_robin, most_memory, interleave, disabled.
    Set {
        /// The strategy name.
        name: String,
        /// Preferred node (-1 or absent for none).
        #[arg(long, allow_hyphen_values = true, default_value_t = -1)]
        node: i64,
    },
}

/// `optimize`: tune placement for a workload.
#[derive(Debug, Clone, clap::Args)]
pub struct OptimizeArgs {
    /// cpu_intensive, memory_intensive, io_intensive or balanced.
    workload_type: String,
    /// Target node (-1 or absent for none).
    #[arg(long, allow_hyphen_values = true, default_value_t = -1)]
    node: i64,
    /// bind, preferred, interleaved or default (absent: the workload decides).
    #[arg(long, default_value = "")]
    memory_policy: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `bind-process`: pin a process to a node and move its memory there.
#[derive(Debug, Clone, clap::Args)]
pub struct BindArgs {
    /// The process id.
    pid: u32,
    /// The node.
    #[arg(long)]
    node: u32,
    /// bind, preferred, interleaved or default.
    #[arg(long, default_value = "bind")]
    memory_policy: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `stats`: statistics per node, as a table, JSON or Prometheus text.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print the Prometheus text format, the same as the HTTP gateway's /metrics (for
    /// node_exporter's textfile collector: `numacachectl stats --prometheus > FILE.prom`).
    #[arg(long)]
    prometheus: bool,
}

/// `history`: stored statistics rows.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// From this Unix time (seconds); default: 24 hours ago.
    #[arg(long)]
    since: Option<u64>,
    /// Until this Unix time (seconds); default: now.
    #[arg(long)]
    until: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `get`: read a value.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// Namespace.
    namespace: String,
    /// Key.
    key: String,
    /// Write the value to this file instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// `put`: store a value.
#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    /// Namespace.
    namespace: String,
    /// Key.
    key: String,
    /// Read the value from this file ("-" or absent: stdin).
    file: Option<PathBuf>,
    /// Expire after this many seconds.
    #[arg(long)]
    ttl: Option<u64>,
    /// Place the entry on this node.
    #[arg(long)]
    node: Option<u32>,
    /// Reply only once the value is on stable storage.
    #[arg(long)]
    sync: bool,
}

/// `delete` and `lookup`: one entry.
#[derive(Debug, Clone, clap::Args)]
pub struct EntryArgs {
    /// Namespace.
    namespace: String,
    /// Key.
    key: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `clear`: a namespace.
#[derive(Debug, Clone, clap::Args)]
pub struct ClearArgs {
    /// Namespace.
    namespace: String,
}

/// `snapshot`: create, list or delete snapshots.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    action: SnapshotAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum SnapshotAction {
    /// Take a snapshot of every shard; prints its name.
    Create,
    /// List snapshots, oldest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot.
    Delete {
        /// The snapshot name (from `snapshot list`).
        name: String,
    },
}

/// A bus subcommand.
#[derive(Debug, Clone)]
pub enum BusCommand {
    /// strategy
    Strategy(StrategyArgs),
    /// optimize
    Optimize(OptimizeArgs),
    /// bind-process
    BindProcess(BindArgs),
    /// stats
    Stats(StatsArgs),
    /// history
    History(HistoryArgs),
    /// get
    Get(GetArgs),
    /// put
    Put(PutArgs),
    /// delete
    Delete(EntryArgs),
    /// lookup
    Lookup(EntryArgs),
    /// clear
    Clear(ClearArgs),
    /// snapshot
    Snapshot(SnapshotArgs),
    /// monitor
    Monitor,
}

/// A client error as the person at the terminal should read it: what to do when the daemon
/// is not running or the bus policy refused the call, the daemon's sentence otherwise.
#[derive(Debug)]
pub struct Sentence(String);

impl std::fmt::Display for Sentence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Sentence {}

impl From<Error> for Sentence {
    fn from(e: Error) -> Sentence {
        Sentence(match &e {
            Error::NotRunning(_) => format!(
                "numa-cached is not running: nothing owns {BUS_NAME} on the system bus \
                 (start it with `systemctl start numa-cached` or `scripts/demo.sh`)"
            ),
            Error::Connect { .. } => format!(
                "{e}; is dbus running? (DBUS_SYSTEM_BUS_ADDRESS={})",
                std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| "unset".into())
            ),
            // dbus-daemon says "Rejected send message", dbus-broker "Sender is not authorized to
            // send message": both are the bus policy, not polkit.
            Error::AccessDenied(m)
                if m.contains("Rejected send message") || m.contains("not authorized to send") =>
            {
                "permission denied by the bus policy: the Cache interface is for root and \
                 members of group numacache"
                    .to_string()
            }
            _ => e.to_string(),
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Connect for a terminal: polkit may ask for a password through the user's agent.
async fn connect() -> Result<Client, Sentence> {
    Ok(Client::builder().interactive(true).build().await?)
}

/// Run a bus subcommand; returns what to print.
pub fn run(cmd: &BusCommand) -> Result<String, CliError> {
    runtime()?.block_on(async {
        let client = connect().await?;
        dispatch(&client, cmd).await
    })
}

/// `topology` without `--fs-root`: the daemon's view when one answers, None when no daemon
/// (or no bus) is there so the caller reads the machine locally.
pub fn topology_from_daemon(json: bool) -> Result<Option<String>, CliError> {
    runtime()?.block_on(async {
        let Ok(client) = connect().await else {
            return Ok(None);
        };
        let text = match client.get_topology_json().await {
            Ok(t) => t,
            Err(e) if e.is_not_running() => return Ok(None),
            Err(e) => return Err(Sentence::from(e).into()),
        };
        if json {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("numa-cached sent a topology that is not JSON: {e}"))?;
            return Ok(Some(pretty(&v)));
        }
        let topology = daemon_topology(&client).await.map_err(Sentence::from)?;
        Ok(Some(crate::cli::topology::render_table(&topology)))
    })
}

/// The daemon's topology in the model, from typed sources: the Topology properties, each
/// Node object (memory in bytes, not the JSON's MiB) and the JSON's warnings and per-node
/// `allowed`. Per-node allowed CPUs are the node's CPUs within the daemon's allowed set.
async fn daemon_topology(c: &Client) -> Result<Topology, Error> {
    let t = c.topology().await?;
    let report = c.get_topology().await?;
    let mut nodes = Vec::with_capacity(t.node_ids.len());
    for n in c.nodes().await? {
        let reported = report.nodes.iter().find(|r| r.node_id == n.id);
        let allowed = reported
            .map(|r| r.allowed)
            .unwrap_or_else(|| t.allowed_nodes.contains(&n.id));
        let kind = reported
            .map(|r| crate::topology::NodeKind::from_label(&r.kind))
            .unwrap_or(crate::topology::NodeKind::General);
        nodes.push(NumaNode {
            node_id: n.id,
            allowed_cpus: n
                .cpus
                .iter()
                .copied()
                .filter(|cpu| t.allowed_cpus.contains(cpu))
                .collect(),
            cpus: n.cpus,
            memory_total_bytes: n.memory_total_bytes,
            memory_free_bytes: n.memory_free_bytes,
            has_cpu: n.has_cpu,
            has_memory: n.has_memory,
            allowed,
            distances: n.distances,
            kind,
        });
    }
    Ok(Topology {
        nodes,
        allowed_cpus: t.allowed_cpus,
        allowed_nodes: t.allowed_nodes,
        numa_available: t.numa_available,
        warnings: report.warnings,
    })
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// A method's `a{sv}` reply: pretty JSON for scripts, or `key: value` lines in `order`
/// (then the rest, sorted).
fn dict_render(d: &Dict, json: bool, order: &[&str]) -> String {
    let j = d.to_json();
    if json {
        return pretty(&j);
    }
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let mut pairs: Vec<(&str, String)> = order
        .iter()
        .filter_map(|k| j.get(*k).map(|v| (*k, text(v))))
        .collect();
    if let Some(o) = j.as_object() {
        pairs.extend(
            o.iter()
                .filter(|(k, _)| !order.contains(&k.as_str()))
                .map(|(k, v)| (k.as_str(), text(v))),
        );
    }
    render::fields(&pairs)
}

/// A StrategyChange as the daemon's reply fields, for the same rendering as other replies.
fn change_json(c: &StrategyChange) -> serde_json::Value {
    let mut j = serde_json::json!({ "status": c.status, "strategy": c.strategy });
    let node = c.node_preference.map_or(-1, i64::from);
    j["node_preference"] = node.into();
    if let Some(w) = &c.workload_type {
        j["workload_type"] = w.as_str().into();
    }
    if let Some(p) = &c.memory_policy {
        j["memory_policy"] = p.as_str().into();
    }
    if let Some(n) = c.affected_processes {
        j["affected_processes"] = n.into();
    }
    j
}

fn change_render(c: &StrategyChange, json: bool, order: &[&str]) -> String {
    let j = change_json(c);
    if json {
        return pretty(&j);
    }
    let pairs: Vec<(&str, String)> = order
        .iter()
        .filter_map(|k| {
            j.get(*k).map(|v| {
                (
                    *k,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
        })
        .collect();
    render::fields(&pairs)
}

/// `-1` (none) or a node id.
fn node_option(n: i64) -> Result<Option<u32>, CliError> {
    match n {
        -1 => Ok(None),
        n => Ok(Some(u32::try_from(n).map_err(|_| {
            format!("invalid argument: node {n} is not a node id (use -1 for none)")
        })?)),
    }
}

async fn dispatch(c: &Client, cmd: &BusCommand) -> Result<String, CliError> {
    Ok(match cmd {
        BusCommand::Strategy(a) => match &a.action {
            None | Some(StrategyAction::Show) => {
                let s = c.strategy().await.map_err(Sentence::from)?;
                if a.json {
                    return Ok(pretty(&serde_json::json!({
                        "strategy": s.name,
                        "node_preference": s.node_preference.map_or(-1, i64::from),
                        "memory_policy": s.memory_policy,
                        "workload_type": s.workload_type,
                        "affected_processes": s.affected_processes,
                    })));
                }
                render::fields(&[
                    ("strategy", s.name),
                    (
                        "node preference",
                        s.node_preference
                            .map_or_else(|| "none".into(), |n| n.to_string()),
                    ),
                    ("memory policy", s.memory_policy),
                    (
                        "workload type",
                        if s.workload_type.is_empty() {
                            "-".into()
                        } else {
                            s.workload_type
                        },
                    ),
                    ("affected processes", s.affected_processes.to_string()),
                ])
            }
            Some(StrategyAction::Set { name, node }) => {
                let r = c
                    .set_strategy(name, node_option(*node)?)
                    .await
                    .map_err(Sentence::from)?;
                change_render(
                    &r,
                    a.json,
                    &[
                        "status",
                        "strategy",
                        "node_preference",
                        "memory_policy",
                        "affected_processes",
                    ],
                )
            }
        },
        BusCommand::Optimize(a) => {
            let policy = (!a.memory_policy.is_empty()).then_some(a.memory_policy.as_str());
            let r = c
                .optimize(&a.workload_type, node_option(a.node)?, policy)
                .await
                .map_err(Sentence::from)?;
            change_render(
                &r,
                a.json,
                &[
                    "status",
                    "workload_type",
                    "strategy",
                    "node_preference",
                    "memory_policy",
                    "affected_processes",
                ],
            )
        }
        BusCommand::BindProcess(a) => {
            let r = c
                .bind_process(a.pid, a.node, &a.memory_policy)
                .await
                .map_err(Sentence::from)?;
            dict_render(
                &r,
                a.json,
                &[
                    "status",
                    "pid",
                    "node",
                    "memory_policy",
                    "threads",
                    "pages_migrated",
                ],
            )
        }
        BusCommand::Stats(a) => {
            let v = c.get_stats().await.map_err(Sentence::from)?;
            if a.prometheus {
                prometheus(c, &v).await.map_err(Sentence::from)?
            } else if a.json {
                pretty(&v)
            } else {
                render::stats(&v)
            }
        }
        BusCommand::History(a) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let since = a.since.unwrap_or(now.saturating_sub(86_400));
            let v = c
                .get_history(since, a.until.unwrap_or(0))
                .await
                .map_err(Sentence::from)?;
            if a.json {
                pretty(&v)
            } else {
                render::history(&v)
            }
        }
        BusCommand::Get(a) => get(c, a).await?,
        BusCommand::Put(a) => put(c, a).await?,
        BusCommand::Delete(a) => {
            let existed = c
                .delete(&a.namespace, &a.key)
                .await
                .map_err(Sentence::from)?;
            if a.json {
                pretty(&serde_json::json!({ "deleted": existed }))
            } else if existed {
                "deleted\n".into()
            } else {
                "no such entry (nothing deleted)\n".into()
            }
        }
        BusCommand::Lookup(a) => {
            let Some(info) = c
                .lookup(&a.namespace, &a.key)
                .await
                .map_err(Sentence::from)?
            else {
                return Err(not_found(&a.namespace, &a.key));
            };
            if a.json {
                let mut j = serde_json::to_value(&info)?;
                j["expires"] = info.expires.unwrap_or(0).into();
                pretty(&j)
            } else {
                render::fields(&[
                    ("size", info.size.to_string()),
                    ("stored_size", info.stored_size.to_string()),
                    ("node", info.node.to_string()),
                    ("created", info.created.to_string()),
                    ("last_access", info.last_access.to_string()),
                    ("hits", info.hits.to_string()),
                    ("expires", info.expires.unwrap_or(0).to_string()),
                ])
            }
        }
        BusCommand::Clear(a) => {
            let n = c.clear(&a.namespace).await.map_err(Sentence::from)?;
            format!("removed {n} entries from {}\n", a.namespace)
        }
        BusCommand::Snapshot(a) => match &a.action {
            SnapshotAction::Create => {
                let name = c.create_snapshot().await.map_err(Sentence::from)?;
                format!("{name}\n")
            }
            SnapshotAction::List { json } => {
                let names = c.list_snapshots().await.map_err(Sentence::from)?;
                if *json {
                    pretty(&serde_json::json!(names))
                } else if names.is_empty() {
                    "no snapshots\n".into()
                } else {
                    names.iter().map(|n| format!("{n}\n")).collect()
                }
            }
            SnapshotAction::Delete { name } => {
                c.delete_snapshot(name).await.map_err(Sentence::from)?;
                format!("deleted snapshot {name}\n")
            }
        },
        BusCommand::Monitor => monitor(c).await?,
    })
}

fn not_found(namespace: &str, key: &str) -> CliError {
    Sentence(format!(
        "not found: no entry {key:?} in namespace {namespace:?}"
    ))
    .into()
}

async fn get(c: &Client, a: &GetArgs) -> Result<String, CliError> {
    let Some(value) = c.get(&a.namespace, &a.key).await.map_err(Sentence::from)? else {
        return Err(not_found(&a.namespace, &a.key));
    };
    match &a.output {
        Some(path) => std::fs::write(path, &value)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&value)?;
            out.flush()?;
        }
    }
    Ok(String::new())
}

async fn put(c: &Client, a: &PutArgs) -> Result<String, CliError> {
    let value = match a.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
    };
    let mut options = PutOptions::new().sync(a.sync);
    if let Some(ttl) = a.ttl {
        options = options.ttl(Duration::from_secs(ttl));
    }
    if let Some(node) = a.node {
        options = options.node(node);
    }
    let node = c
        .put_with(&a.namespace, &a.key, &value, options)
        .await
        .map_err(Sentence::from)?;
    Ok(format!("stored {} bytes on node {node}\n", value.len()))
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut buf)?;
    Ok(buf)
}

/// Print every signal of the daemon as it arrives, one line each, until interrupted.
async fn monitor(c: &Client) -> Result<String, CliError> {
    use futures_util::StreamExt;
    let mut events = c.events().await.map_err(Sentence::from)?;
    println!("watching signals of {BUS_NAME} (Ctrl-C to stop)");
    while let Some(event) = events.next().await {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        match event {
            Ok(e) => println!("{now:.3} {}", event_line(&e)),
            Err(e) => eprintln!("numacachectl: a signal could not be read: {e}"),
        }
    }
    Ok(String::new())
}

/// One signal as a line: what, where, and the values.
fn event_line(e: &Event) -> String {
    match e {
        Event::TopologyChanged {
            generation,
            node_ids,
        } => format!("TopologyChanged generation={generation} node_ids={node_ids:?}"),
        Event::StrategyChanged {
            name,
            node_preference,
            memory_policy,
        } => format!(
            "StrategyChanged strategy={name} node_preference={} memory_policy={memory_policy}",
            node_preference.map_or(-1, i64::from)
        ),
        Event::PropertiesChanged {
            object,
            interface,
            changed,
            invalidated,
        } => {
            let on = match object {
                Object::Root => "root".to_string(),
                Object::Node(n) => format!("node{n}"),
            };
            let mut line = format!("PropertiesChanged {on} {interface} {}", changed.to_json());
            if !invalidated.is_empty() {
                line.push_str(&format!(" invalidated={invalidated:?}"));
            }
            line
        }
        Event::NodeAdded(n) => format!("NodeAdded node{n}"),
        Event::NodeRemoved(n) => format!("NodeRemoved node{n}"),
        other => format!("{other:?}"),
    }
}

/// The /metrics text for the daemon's `GetStats` JSON (read into the typed report), with the
/// topology generation and strategy read from the bus properties; request latencies come from
/// the JSON.
async fn prometheus(c: &Client, stats: &serde_json::Value) -> Result<String, Error> {
    let report: StatsReport = serde_json::from_value(stats.clone()).map_err(|e| {
        Error::Protocol(format!(
            "the daemon's GetStats JSON is not a statistics report: {e}"
        ))
    })?;
    let generation = c.topology_proxy().generation().await?;
    let s = c.strategy().await?;
    Ok(render_prometheus(&MetricsInput {
        stats: &report,
        generation,
        strategy: &s.name,
        node_preference: s.node_preference,
        memory_policy: &s.memory_policy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences() {
        let s = Sentence::from(Error::from_dbus(
            "org.opdbus.NumaCache.Error.NotFound",
            "no entry \"k\" in namespace \"ns\"",
        ));
        assert_eq!(s.0, "not found: no entry \"k\" in namespace \"ns\"");
        let s = Sentence::from(Error::from_dbus(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "",
        ));
        assert!(s.0.contains("not running"), "{s}");
        let s = Sentence::from(Error::from_dbus(
            "org.freedesktop.DBus.Error.AccessDenied",
            "Rejected send message, 2 matched rules",
        ));
        assert!(s.0.contains("group numacache"), "{s}");
    }

    #[test]
    fn node_minus_one_is_none_and_other_negatives_are_refused() {
        assert_eq!(node_option(-1).unwrap(), None);
        assert_eq!(node_option(3).unwrap(), Some(3));
        assert!(node_option(-2).is_err());
        assert!(node_option(1 << 40).is_err());
    }
}

//! The `numacachectl` subcommands that talk to numa-cached over the system bus: strategy,
//! optimize, bind-process, stats, history, get/put (by memfd above a size), delete, lookup,
//! clear, snapshot and monitor; and `topology` when a daemon answers.

use crate::cli::CliError;
use crate::cli::client::{Client, ClientError, iface, parse_json};
use crate::cli::render;
use crate::service::cache::memfd;
use crate::service::{BUS_NAME, ROOT_PATH};
use crate::topology::{NumaNode, Topology};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use zbus::{OwnedFd, OwnedVariant, Variant};

/// Values at least this large go by sealed memfd (PutFd/GetFd) instead of inside the
/// message: copying through the bus costs more than mapping a file past this point.
pub const FD_THRESHOLD: u64 = 1 << 20;

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
        node: i32,
    },
}

/// `optimize`: tune placement for a workload.
#[derive(Debug, Clone, clap::Args)]
pub struct OptimizeArgs {
    /// cpu_intensive, memory_intensive, io_intensive or balanced.
    workload_type: String,
    /// Target node (-1 or absent for none).
    #[arg(long, allow_hyphen_values = true, default_value_t = -1)]
    node: i32,
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
    node: i32,
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
    node: Option<i32>,
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

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Run a bus subcommand; returns what to print.
pub fn run(cmd: &BusCommand) -> Result<String, CliError> {
    runtime()?.block_on(async {
        let client = Client::connect().await?;
        dispatch(&client, cmd).await
    })
}

/// `topology` without `--fs-root`: the daemon's view when one answers, None when no daemon
/// (or no bus) is there so the caller reads the machine locally.
pub fn topology_from_daemon(json: bool) -> Result<Option<String>, CliError> {
    runtime()?.block_on(async {
        let client = match Client::connect().await {
            Ok(c) => c,
            Err(_) => return Ok(None),
        };
        let text: String = match client
            .call(iface::TOPOLOGY, "GetTopology", &(), false)
            .await
        {
            Ok(t) => t,
            Err(e) if e.daemon_absent() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let value: serde_json::Value = parse_json(&text, "a topology")?;
        if json {
            return Ok(Some(pretty(&value)));
        }
        let mut topology = topology_of_json(&value)?;
        for n in &mut topology.nodes {
            let path = format!("{ROOT_PATH}/node{}", n.node_id);
            n.memory_free_bytes = client
                .property(iface::NODE, &path, "MemoryFreeBytes")
                .await
                .unwrap_or(0);
        }
        Ok(Some(crate::cli::topology::render_table(&topology)))
    })
}

/// The daemon's Topology JSON back into the model, so the table is the one `topology`
/// prints for a local read. Per-node allowed CPUs are the node's CPUs within the daemon's
/// allowed set.
fn topology_of_json(v: &serde_json::Value) -> Result<Topology, ClientError> {
    let bad = |what: &str| ClientError::from(format!("numa-cached sent a topology without {what}"));
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .filter_map(|x| u32::try_from(x).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let allowed_cpus = ids(&v["allowed_cpus"]);
    let mut nodes = Vec::new();
    for n in v["nodes"].as_array().ok_or_else(|| bad("nodes"))? {
        let node_id = n["node_id"]
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| bad("node_id"))?;
        let cpus = ids(&n["cpu_list"]);
        let distances = n["distances"]
            .as_object()
            .map(|d| {
                d.iter()
                    .filter_map(|(k, x)| Some((k.parse().ok()?, u32::try_from(x.as_u64()?).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        nodes.push(NumaNode {
            node_id,
            allowed_cpus: cpus
                .iter()
                .copied()
                .filter(|c| allowed_cpus.contains(c))
                .collect(),
            cpus,
            memory_total_bytes: n["memory_mb"].as_u64().unwrap_or(0) * 1024 * 1024,
            memory_free_bytes: 0,
            has_cpu: n["has_cpu"].as_bool().unwrap_or(false),
            has_memory: n["has_memory"].as_bool().unwrap_or(false),
            allowed: n["allowed"].as_bool().unwrap_or(false),
            distances,
            kind: crate::topology::NodeKind::from_label(n["kind"].as_str().unwrap_or_default()),
        });
    }
    Ok(Topology {
        nodes,
        allowed_cpus,
        allowed_nodes: ids(&v["allowed_nodes"]),
        numa_available: v["numa_available"].as_bool().unwrap_or(false),
        warnings: v["warnings"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn variant_json(v: &Variant<'_>) -> serde_json::Value {
    match v {
        Variant::Bool(b) => (*b).into(),
        Variant::U8(n) => (*n).into(),
        Variant::I16(n) => (*n).into(),
        Variant::U16(n) => (*n).into(),
        Variant::I32(n) => (*n).into(),
        Variant::U32(n) => (*n).into(),
        Variant::I64(n) => (*n).into(),
        Variant::U64(n) => (*n).into(),
        Variant::F64(n) => (*n).into(),
        Variant::Str(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

/// An a{sv} reply as a JSON object with sorted keys.
fn dict_json(d: &HashMap<String, OwnedVariant>) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = d
        .iter()
        .map(|(k, v)| (k.clone(), variant_json(v)))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    serde_json::Value::Object(map)
}

/// A method's `a{sv}` reply: pretty JSON for scripts, or `key: value` lines in `order`.
fn dict_render(d: &HashMap<String, OwnedVariant>, json: bool, order: &[&str]) -> String {
    if json {
        pretty(&dict_json(d))
    } else {
        dict_text(d, order)
    }
}

fn dict_text(d: &HashMap<String, OwnedVariant>, order: &[&str]) -> String {
    let j = dict_json(d);
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for k in order {
        if let Some(v) = j.get(*k) {
            pairs.push((
                k,
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            ));
        }
    }
    if let Some(o) = j.as_object() {
        for (k, v) in o {
            if !order.contains(&k.as_str()) {
                pairs.push((
                    k,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                ));
            }
        }
    }
    render::fields(&pairs)
}

async fn dispatch(c: &Client, cmd: &BusCommand) -> Result<String, CliError> {
    match cmd {
        BusCommand::Strategy(a) => match &a.action {
            None | Some(StrategyAction::Show) => {
                let name: String = c.property(iface::STRATEGY, ROOT_PATH, "Name").await?;
                let node: i32 = c
                    .property(iface::STRATEGY, ROOT_PATH, "NodePreference")
                    .await?;
                let policy: String = c
                    .property(iface::STRATEGY, ROOT_PATH, "MemoryPolicy")
                    .await?;
                let workload: String = c
                    .property(iface::STRATEGY, ROOT_PATH, "WorkloadType")
                    .await?;
                let affected: u32 = c
                    .property(iface::STRATEGY, ROOT_PATH, "AffectedProcesses")
                    .await?;
                if a.json {
                    return Ok(pretty(&serde_json::json!({
                        "strategy": name, "node_preference": node, "memory_policy": policy,
                        "workload_type": workload, "affected_processes": affected,
                    })));
                }
                Ok(render::fields(&[
                    ("strategy", name),
                    (
                        "node preference",
                        if node < 0 {
                            "none".into()
                        } else {
                            node.to_string()
                        },
                    ),
                    ("memory policy", policy),
                    (
                        "workload type",
                        if workload.is_empty() {
                            "-".into()
                        } else {
                            workload
                        },
                    ),
                    ("affected processes", affected.to_string()),
                ]))
            }
            Some(StrategyAction::Set { name, node }) => {
                let r: HashMap<String, OwnedVariant> = c
                    .call(
                        iface::STRATEGY,
                        "SetStrategy",
                        &(name.as_str(), *node),
                        true,
                    )
                    .await?;
                Ok(dict_render(
                    &r,
                    a.json,
                    &[
                        "status",
                        "strategy",
                        "node_preference",
                        "memory_policy",
                        "affected_processes",
                    ],
                ))
            }
        },
        BusCommand::Optimize(a) => {
            let r: HashMap<String, OwnedVariant> = c
                .call(
                    iface::STRATEGY,
                    "Optimize",
                    &(a.workload_type.as_str(), a.node, a.memory_policy.as_str()),
                    true,
                )
                .await?;
            Ok(dict_render(
                &r,
                a.json,
                &[
                    "status",
                    "workload_type",
                    "strategy",
                    "node_preference",
                    "memory_policy",
                ],
            ))
        }
        BusCommand::BindProcess(a) => {
            let r: HashMap<String, OwnedVariant> = c
                .call(
                    iface::STRATEGY,
                    "BindProcess",
                    &(a.pid, a.node, a.memory_policy.as_str()),
                    true,
                )
                .await?;
            Ok(dict_render(
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
            ))
        }
        BusCommand::Stats(a) => {
            let text: String = c.call(iface::STATS, "GetStats", &(), false).await?;
            let v: serde_json::Value = parse_json(&text, "statistics")?;
            if a.prometheus {
                return Ok(prometheus(c, &v).await?);
            }
            Ok(if a.json {
                pretty(&v)
            } else {
                render::stats(&v)
            })
        }
        BusCommand::History(a) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let since = a.since.unwrap_or(now.saturating_sub(86_400));
            let until = a.until.unwrap_or(0);
            let text: String = c
                .call(iface::STATS, "GetHistory", &(since, until), false)
                .await?;
            let v: serde_json::Value = parse_json(&text, "history")?;
            Ok(if a.json {
                pretty(&v)
            } else {
                render::history(&v)
            })
        }
        BusCommand::Get(a) => get(c, a).await,
        BusCommand::Put(a) => put(c, a).await,
        BusCommand::Delete(a) => {
            let existed: bool = c
                .call(
                    iface::CACHE,
                    "Delete",
                    &(a.namespace.as_str(), a.key.as_str()),
                    false,
                )
                .await?;
            Ok(if a.json {
                pretty(&serde_json::json!({ "deleted": existed }))
            } else if existed {
                "deleted\n".into()
            } else {
                "no such entry (nothing deleted)\n".into()
            })
        }
        BusCommand::Lookup(a) => {
            let r: HashMap<String, OwnedVariant> = c
                .call(
                    iface::CACHE,
                    "Lookup",
                    &(a.namespace.as_str(), a.key.as_str()),
                    false,
                )
                .await?;
            Ok(dict_render(
                &r,
                a.json,
                &[
                    "size",
                    "stored_size",
                    "node",
                    "created",
                    "last_access",
                    "hits",
                    "expires",
                ],
            ))
        }
        BusCommand::Clear(a) => {
            let n: u64 = c
                .call(iface::CACHE, "Clear", &(a.namespace.as_str(),), true)
                .await?;
            Ok(format!("removed {n} entries from {}\n", a.namespace))
        }
        BusCommand::Snapshot(a) => match &a.action {
            SnapshotAction::Create => {
                let name: String = c.call(iface::CACHE, "CreateSnapshot", &(), true).await?;
                Ok(format!("{name}\n"))
            }
            SnapshotAction::List { json } => {
                let names: Vec<String> = c.call(iface::CACHE, "ListSnapshots", &(), true).await?;
                Ok(if *json {
                    pretty(&serde_json::json!(names))
                } else if names.is_empty() {
                    "no snapshots\n".into()
                } else {
                    names.iter().map(|n| format!("{n}\n")).collect()
                })
            }
            SnapshotAction::Delete { name } => {
                c.call::<_, ()>(iface::CACHE, "DeleteSnapshot", &(name.as_str(),), true)
                    .await?;
                Ok(format!("deleted snapshot {name}\n"))
            }
        },
        BusCommand::Monitor => monitor(c).await,
    }
}

async fn get(c: &Client, a: &GetArgs) -> Result<String, CliError> {
    let args = (a.namespace.as_str(), a.key.as_str());
    let info: HashMap<String, OwnedVariant> = c.call(iface::CACHE, "Lookup", &args, false).await?;
    let size = info
        .get("size")
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0);
    let value: Vec<u8> = if size >= FD_THRESHOLD {
        let (fd, size): (OwnedFd, u64) = c.call(iface::CACHE, "GetFd", &args, false).await?;
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
        let len = usize::try_from(size)
            .map_err(|_| format!("a value of {size} bytes does not fit in memory"))?;
        let mut buf = vec![0u8; len];
        // pread: the descriptor's offset is not ours to trust.
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0)?;
        buf
    } else {
        let v: serde_bytes::ByteBuf = c.call(iface::CACHE, "Get", &args, false).await?;
        v.into_vec()
    };
    match &a.output {
        Some(path) => {
            std::fs::write(path, &value)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(String::new())
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&value)?;
            out.flush()?;
            Ok(String::new())
        }
    }
}

async fn put(c: &Client, a: &PutArgs) -> Result<String, CliError> {
    let value = match a.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
    };
    let mut options: HashMap<&str, Variant<'_>> = HashMap::new();
    if let Some(ttl) = a.ttl {
        options.insert("ttl_seconds", Variant::from(ttl));
    }
    if let Some(node) = a.node {
        options.insert("node", Variant::from(node));
    }
    let (ns, key) = (a.namespace.as_str(), a.key.as_str());
    let node: u32 = if value.len() as u64 >= FD_THRESHOLD {
        let fd = memfd::sealed_memfd(&value).map_err(|e| format!("cannot create a memfd: {e}"))?;
        let fd = zbus::Fd::from(&fd);
        c.call(iface::CACHE, "PutFd", &(ns, key, fd, options), false)
            .await?
    } else {
        c.call(
            iface::CACHE,
            "Put",
            &(ns, key, serde_bytes::Bytes::new(&value), options),
            false,
        )
        .await?
    };
    Ok(format!("stored {} bytes on node {node}\n", value.len()))
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut buf)?;
    Ok(buf)
}

/// Print every signal of the daemon (PropertiesChanged, StrategyChanged, TopologyChanged,
/// InterfacesAdded/Removed) as it arrives, until interrupted.
async fn monitor(c: &Client) -> Result<String, CliError> {
    use futures_util::StreamExt;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .build()
        .map_err(|e| ClientError::from(e.to_string()))?;
    let mut stream = zbus::MessageStream::for_match_rule(rule, c.connection(), None)
        .await
        .map_err(|e| format!("cannot watch the daemon's signals: {e}"))?;
    println!("watching signals of {BUS_NAME} (Ctrl-C to stop)");
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { continue };
        let h = msg.header();
        let member = h.member().map(|m| m.to_string()).unwrap_or_default();
        let path = h.path().map(|p| p.to_string()).unwrap_or_default();
        let body = msg.body();
        let args = body
            .deserialize::<zbus::Structure<'_>>()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "()".into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        println!("{now:.3} {path} {member} {args}");
    }
    Ok(String::new())
}

/// The /metrics text for the daemon's `GetStats` JSON `stats`, with the topology generation
/// and strategy read from the bus properties; request latencies come from the JSON.
async fn prometheus(c: &Client, stats: &serde_json::Value) -> Result<String, ClientError> {
    use crate::gateway::metrics::{MetricsInput, render_prometheus, strategy_from_properties};
    let generation: u64 = c.property(iface::TOPOLOGY, ROOT_PATH, "Generation").await?;
    let name: String = c.property(iface::STRATEGY, ROOT_PATH, "Name").await?;
    let node: i32 = c
        .property(iface::STRATEGY, ROOT_PATH, "NodePreference")
        .await?;
    let policy: String = c
        .property(iface::STRATEGY, ROOT_PATH, "MemoryPolicy")
        .await?;
    let strategy = strategy_from_properties(&name, node, &policy).map_err(|e| {
        ClientError::from(format!(
            "numa-cached reported a strategy this numacachectl does not know ({e}): update numacachectl"
        ))
    })?;
    Ok(render_prometheus(&MetricsInput {
        stats,
        generation,
        strategy: &strategy,
        latency: None,
    }))
}

impl From<String> for ClientError {
    fn from(message: String) -> ClientError {
        ClientError {
            name: None,
            message,
        }
    }
}

//! `numacachectl diagnose`: a check, needing no daemon, that placement works on this host:
//! threads pinned to each node run only there, pages bound to a node land there, and an
//! interleave spreads pages over every node with memory.

use crate::cli::CliError;
use crate::policy::{self, AnonPages, MemPolicyMode};
use crate::topology::Topology;
use serde::Serialize;
use std::collections::BTreeMap;

/// Arguments of `numacachectl diagnose`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiagnoseArgs {
    /// Print JSON instead of a readable summary.
    #[arg(long)]
    pub json: bool,
}

/// How many times a pinned thread asks `getcpu` where it runs.
const CPU_SAMPLES: usize = 2000;
/// Pages allocated under `bind` per node.
const BIND_PAGES: usize = 64;
/// Pages allocated under `interleave` over all nodes with memory.
const INTERLEAVE_PAGES: usize = 256;

/// The result for one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The node.
    pub node_id: u32,
    /// Every CPU a thread pinned to the node was seen on, ascending.
    pub cpus_observed: Vec<u32>,
    /// `ok`, `no_cpus`, or what went wrong.
    pub pinning: String,
    /// Pages allocated under `bind` to the node (0 for a node without memory).
    pub pages_requested: usize,
    /// Of those, how many `move_pages` found on the node.
    pub pages_on_node: usize,
}

/// The interleave check.
#[derive(Debug, Clone, Serialize)]
pub struct InterleaveReport {
    /// Pages allocated under `interleave`.
    pub pages_requested: usize,
    /// Where they landed, by node id.
    pub pages_per_node: BTreeMap<String, usize>,
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnoseReport {
    /// One entry per allowed node.
    pub nodes: Vec<NodeReport>,
    /// The interleave check.
    pub interleave: InterleaveReport,
    /// Anything that could not be checked or looked wrong, in words.
    pub warnings: Vec<String>,
}

/// Run the checks; returns what to print.
pub fn run(args: &DiagnoseArgs) -> Result<String, CliError> {
    let topology = crate::topology::detect_live();
    let report = diagnose(&topology);
    if args.json {
        Ok(format!("{}\n", serde_json::to_string(&report)?))
    } else {
        Ok(render(&report))
    }
}

fn is_allowed(t: &Topology, id: u32) -> bool {
    t.allowed_nodes.contains(&id)
}

/// Run every check against `topology` on this host.
pub fn diagnose(topology: &Topology) -> DiagnoseReport {
    let mut warnings = topology.warnings.clone();
    let mem_nodes: Vec<u32> = topology
        .nodes
        .iter()
        .filter(|n| n.has_memory && is_allowed(topology, n.node_id))
        .map(|n| n.node_id)
        .collect();
    let cpu_nodes: Vec<(u32, Vec<u32>)> = topology
        .nodes
        .iter()
        .filter(|n| !n.allowed_cpus.is_empty())
        .map(|n| (n.node_id, n.allowed_cpus.clone()))
        .collect();
    let mut nodes = Vec::new();
    for n in &topology.nodes {
        if !is_allowed(topology, n.node_id) && n.allowed_cpus.is_empty() {
            continue;
        }
        let (cpus_observed, pinning) = if n.allowed_cpus.is_empty() {
            (Vec::new(), "no_cpus".to_string())
        } else {
            check_pinning(n.node_id, &n.allowed_cpus)
        };
        let (pages_requested, pages_on_node) = if mem_nodes.contains(&n.node_id) {
            // Allocate from a thread on another node where there is one: the pages must land
            // on the target because of the policy, not because it is local.
            let from = cpu_nodes
                .iter()
                .find(|(id, _)| *id != n.node_id)
                .or_else(|| cpu_nodes.first())
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            match count_pages(&from, MemPolicyMode::Bind, &[n.node_id], BIND_PAGES) {
                Ok(per_node) => (
                    BIND_PAGES,
                    per_node.get(&(n.node_id as i32)).copied().unwrap_or(0),
                ),
                Err(e) => {
                    warnings.push(format!("bind to node {}: {e}", n.node_id));
                    (BIND_PAGES, 0)
                }
            }
        } else {
            (0, 0)
        };
        nodes.push(NodeReport {
            node_id: n.node_id,
            cpus_observed,
            pinning,
            pages_requested,
            pages_on_node,
        });
    }
    let mut pages_per_node: BTreeMap<String, usize> =
        mem_nodes.iter().map(|n| (n.to_string(), 0)).collect();
    let from = topology.allowed_cpus.clone();
    if mem_nodes.is_empty() {
        warnings.push("no allowed node with memory: interleave not checked".into());
    } else {
        match count_pages(
            &from,
            MemPolicyMode::Interleave,
            &mem_nodes,
            INTERLEAVE_PAGES,
        ) {
            Ok(per_node) => {
                for (node, count) in per_node {
                    if node >= 0 {
                        *pages_per_node.entry(node.to_string()).or_insert(0) += count;
                    } else {
                        warnings.push(format!(
                            "interleave: {count} pages not resident (errno {})",
                            -node
                        ));
                    }
                }
            }
            Err(e) => warnings.push(format!("interleave: {e}")),
        }
    }
    if topology.nodes.len() < 2 {
        warnings.push(
            "one NUMA node: every check passes trivially; placement matters only with several nodes"
                .into(),
        );
    }
    DiagnoseReport {
        nodes,
        interleave: InterleaveReport {
            pages_requested: if mem_nodes.is_empty() {
                0
            } else {
                INTERLEAVE_PAGES
            },
            pages_per_node,
        },
        warnings,
    }
}

/// Pin a fresh thread to `cpus`, sample `getcpu`, and say whether it stayed on them.
fn check_pinning(node: u32, cpus: &[u32]) -> (Vec<u32>, String) {
    let allowed = cpus.to_vec();
    let joined = std::thread::Builder::new()
        .name(format!("diag-pin{node}"))
        .spawn(move || -> Result<Vec<u32>, String> {
            policy::set_affinity(0, &allowed).map_err(|e| e.to_string())?;
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..CPU_SAMPLES {
                let (cpu, _) = policy::getcpu().map_err(|e| e.to_string())?;
                seen.insert(cpu);
                // Give the scheduler chances to move us (it must not leave the set).
                if i % 64 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                } else {
                    std::thread::yield_now();
                }
            }
            Ok(seen.into_iter().collect())
        })
        .map_err(|e| e.to_string())
        .and_then(|h| {
            h.join()
                .map_err(|_| "the pinned thread panicked".to_string())
        });
    match joined {
        Ok(Ok(seen)) => {
            let outside: Vec<u32> = seen.iter().copied().filter(|c| !cpus.contains(c)).collect();
            if outside.is_empty() {
                (seen, "ok".into())
            } else {
                let msg = format!(
                    "ran on CPUs {} outside node {node}'s CPUs {}",
                    policy::id_list(&outside),
                    policy::id_list(cpus)
                );
                (seen, msg)
            }
        }
        Ok(Err(e)) | Err(e) => (Vec::new(), e),
    }
}

/// On a thread pinned to `from` (any CPU when empty), set `mode` over `nodes`, touch `pages`
/// fresh pages and count with `move_pages` where they are (node, or negative errno).
fn count_pages(
    from: &[u32],
    mode: MemPolicyMode,
    nodes: &[u32],
    pages: usize,
) -> Result<BTreeMap<i32, usize>, String> {
    let from = from.to_vec();
    let nodes = nodes.to_vec();
    std::thread::Builder::new()
        .name("diag-pages".into())
        .spawn(move || -> Result<BTreeMap<i32, usize>, String> {
            if !from.is_empty() {
                policy::set_affinity(0, &from).map_err(|e| e.to_string())?;
            }
            policy::set_mempolicy(mode, &nodes).map_err(|e| e.to_string())?;
            let mut buf = AnonPages::new(pages).map_err(|e| e.to_string())?;
            buf.touch();
            let status = policy::page_nodes(0, &buf.page_addrs()).map_err(|e| e.to_string())?;
            let mut per_node = BTreeMap::new();
            for s in status {
                *per_node.entry(s).or_insert(0) += 1;
            }
            Ok(per_node)
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the allocating thread panicked".to_string())?
}

fn render(r: &DiagnoseReport) -> String {
    let mut out = String::new();
    for n in &r.nodes {
        let pin = if n.pinning == "ok" {
            format!(
                "pinning ok (ran on CPUs {})",
                policy::id_list(&n.cpus_observed)
            )
        } else if n.pinning == "no_cpus" {
            "no CPUs (served by the nearest node)".to_string()
        } else {
            format!("pinning FAILED: {}", n.pinning)
        };
        let mem = if n.pages_requested == 0 {
            "no memory".to_string()
        } else if n.pages_on_node == n.pages_requested {
            format!(
                "{}/{} bound pages on the node",
                n.pages_on_node, n.pages_requested
            )
        } else {
            format!(
                "only {}/{} bound pages on the node: FAILED",
                n.pages_on_node, n.pages_requested
            )
        };
        out.push_str(&format!("node {}: {pin}; {mem}\n", n.node_id));
    }
    let spread: Vec<String> = r
        .interleave
        .pages_per_node
        .iter()
        .map(|(k, v)| format!("node {k}: {v}"))
        .collect();
    out.push_str(&format!(
        "interleave: {} pages -> {}\n",
        r.interleave.pages_requested,
        spread.join(", ")
    ));
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_passes_its_own_checks() {
        let t = crate::topology::detect_live();
        let r = diagnose(&t);
        let json = serde_json::to_value(&r).unwrap();
        let first = &json["nodes"][0];
        assert_eq!(first["pinning"], "ok", "{json}");
        let observed: Vec<u32> = serde_json::from_value(first["cpus_observed"].clone()).unwrap();
        assert!(!observed.is_empty());
        assert!(observed.iter().all(|c| t.nodes[0].allowed_cpus.contains(c)));
        assert_eq!(first["pages_requested"], 64);
        assert_eq!(first["pages_on_node"], 64);
        let total: u64 = json["interleave"]["pages_per_node"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 256);
        assert!(render(&r).contains("pinning ok"));
    }
}

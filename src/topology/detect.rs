//! Detection: build a [`Topology`] from the sysfs/procfs tree under a filesystem root, the
//! way a careful tool must on real, messy machines. Nothing here fails: missing or
//! untrustworthy data becomes a warning, and when placement would be wrong because of it,
//! `numa_available` is false.

use super::cpulist::{parse_cpulist_bytes, parse_cpumap_bytes};
use super::cpuset::read_limits;
use super::distance::parse_distance_row_bytes;
use super::meminfo::parse_meminfo_bytes;
use super::model::{NodeKind, NumaNode, Topology};
use super::reader::{Outcome, TreeReader};
use std::collections::BTreeMap;
use std::path::Path;

const NODE_DIR: &str = "sys/devices/system/node";
const CPU_DIR: &str = "sys/devices/system/cpu";

/// The kernel's SLIT value for a node's distance to itself (`LOCAL_DISTANCE`).
const LOCAL_DISTANCE: u32 = 10;

/// A set of small numbers as a bitmap: intersections and overlap checks without sorting.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn from_list(ids: &[u32]) -> Bits {
        let mut b = Bits(vec![0; ids.last().map_or(0, |&m| m as usize / 64 + 1)]);
        for &id in ids {
            b.insert(id);
        }
        b
    }
    /// Insert `id`; true when it was not there yet.
    fn insert(&mut self, id: u32) -> bool {
        let (w, bit) = (id as usize / 64, 1u64 << (id % 64));
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let fresh = self.0[w] & bit == 0;
        self.0[w] |= bit;
        fresh
    }
    fn contains(&self, id: u32) -> bool {
        self.0
            .get(id as usize / 64)
            .is_some_and(|w| w & (1u64 << (id % 64)) != 0)
    }
}

/// One detection run: the reader, what went wrong, and whether placement can trust it.
struct Detection {
    r: TreeReader,
    warnings: Vec<String>,
    trusted: bool,
    /// A node had `cpumap` and no `cpulist` (a kernel older than 2.6.26 wrote the tree): the
    /// next nodes' `cpumap` is tried first, saving a failed open per node. Both files print
    /// the same mask where both exist.
    cpumap_first: bool,
}

/// Numbers of the `<prefix><N>` entries of a folder, ascending.
fn numbered_entries(dir: &Path, prefix: &str) -> Option<Vec<u32>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut ids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let digits = name.to_str()?.strip_prefix(prefix)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    Some(ids)
}

impl Detection {
    fn warn(&mut self, text: String) {
        self.warnings.push(text);
    }

    /// Online CPUs: `cpu/online`, else every `cpu<N>` folder whose `online` is not "0".
    /// Like hwloc, a CPU counts only if its `cpu<N>` folder exists (captures are sometimes
    /// pruned; on a live kernel every present CPU has one). `None` when the tree says
    /// nothing about CPUs at all.
    fn online_cpus(&mut self) -> Option<Vec<u32>> {
        let folders = numbered_entries(self.r.path(CPU_DIR), "cpu").unwrap_or_default();
        match self.r.read("sys/devices/system/cpu/online") {
            Outcome::Bytes(b) => match parse_cpulist_bytes(b) {
                Ok(mut list) if !list.is_empty() => {
                    if !folders.is_empty() {
                        let present = Bits::from_list(&folders);
                        let (kept, gone): (Vec<u32>, Vec<u32>) =
                            list.iter().partition(|&&c| present.contains(c));
                        if !gone.is_empty() {
                            self.warn(format!(
                                "CPUs {} are online but have no {CPU_DIR}/cpu<N> folder; left out",
                                super::cpulist::format_cpulist(&gone)
                            ));
                            list = kept;
                        }
                    }
                    return Some(list);
                }
                Ok(_) => self.warn(format!(
                    "{CPU_DIR}/online is empty; using the cpu<N> folders instead"
                )),
                Err(e) => self.warn(format!(
                    "{CPU_DIR}/online is unreadable ({e}); using the cpu<N> folders instead"
                )),
            },
            Outcome::Missing => {}
            Outcome::Failed(e) => self.warn(format!(
                "cannot read {CPU_DIR}/online ({e}); using the cpu<N> folders instead"
            )),
        }
        if folders.is_empty() {
            return None;
        }
        let mut online = Vec::with_capacity(folders.len());
        let mut rel = String::with_capacity(64);
        for id in folders {
            rel.clear();
            rel.push_str(CPU_DIR);
            rel.push_str("/cpu");
            rel.push_str(&id.to_string());
            rel.push_str("/online");
            // A CPU without an `online` file (often CPU 0) cannot be taken offline; an empty
            // one (pruned captures) says nothing either: both known from one statx.
            let is_online = self.r.missing_or_empty(&rel)
                || match self.r.read(&rel) {
                    Outcome::Bytes(b) => super::cpulist::trim_sysfs(b) != b"0",
                    _ => true,
                };
            if is_online {
                online.push(id);
            }
        }
        Some(online)
    }

    /// Node numbers: `node/online`, else the `node<N>` folders.
    fn node_ids(&mut self) -> Vec<u32> {
        match self.r.read("sys/devices/system/node/online") {
            Outcome::Bytes(b) => match parse_cpulist_bytes(b) {
                Ok(list) if !list.is_empty() => return list,
                Ok(_) => self.warn(format!(
                    "{NODE_DIR}/online is empty; using the node<N> folders instead"
                )),
                Err(e) => self.warn(format!(
                    "{NODE_DIR}/online is unreadable ({e}); using the node<N> folders instead"
                )),
            },
            Outcome::Missing => {}
            Outcome::Failed(e) => self.warn(format!(
                "cannot read {NODE_DIR}/online ({e}); using the node<N> folders instead"
            )),
        }
        numbered_entries(self.r.path(NODE_DIR), "node").unwrap_or_default()
    }

    /// One node's CPUs from `cpulist`, else `cpumap`. `Err(())` when the node's folder
    /// itself is missing.
    fn node_cpus(&mut self, rel: &mut String, base: usize, id: u32) -> Result<Vec<u32>, ()> {
        let order = if self.cpumap_first {
            [("cpumap", false), ("cpulist", true)]
        } else {
            [("cpulist", true), ("cpumap", false)]
        };
        let mut list_missing = false;
        for (file, is_list) in order {
            rel.truncate(base);
            rel.push_str(file);
            let parsed = match self.r.read(rel) {
                Outcome::Bytes(b) if is_list => parse_cpulist_bytes(b),
                Outcome::Bytes(b) => {
                    self.cpumap_first |= list_missing;
                    parse_cpumap_bytes(b)
                }
                Outcome::Missing => {
                    list_missing |= is_list;
                    continue;
                }
                Outcome::Failed(e) => {
                    let msg = format!("cannot read {rel} ({e})");
                    self.untrusted(msg);
                    return Ok(Vec::new());
                }
            };
            return match parsed {
                Ok(cpus) => Ok(cpus),
                Err(e) => {
                    let msg = format!("{rel} is unreadable ({e})");
                    self.untrusted(msg);
                    Ok(Vec::new())
                }
            };
        }
        rel.truncate(base);
        if !self.r.exists(rel) {
            return Err(());
        }
        self.untrusted(format!(
            "node {id} has neither cpulist nor cpumap, so its CPUs are unknown"
        ));
        Ok(Vec::new())
    }

    /// Record data placement cannot work around.
    fn untrusted(&mut self, text: String) {
        self.trusted = false;
        self.warn(format!("{text}; NUMA placement is off"));
    }

    /// Nodes that are NVIDIA GPU memory (`proc/driver/nvidia/gpus/*/numa_status` says
    /// `Node: N`). They are listed with kind `gpu` (as hwloc does with
    /// HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES=1, subtype GPUMemory); placement never picks them on
    /// its own, only when a caller names the node.
    fn gpu_memory_nodes(&mut self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.r.path("proc/driver/nvidia/gpus")) else {
            return Vec::new();
        };
        let names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        let mut nodes = Vec::new();
        for name in names {
            let rel = format!("proc/driver/nvidia/gpus/{name}/numa_status");
            if let Outcome::Bytes(b) = self.r.read(&rel) {
                let text = String::from_utf8_lossy(b);
                let node = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Node:"))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .and_then(|v| u32::try_from(v).ok());
                if let Some(node) = node {
                    self.warn(format!(
                        "node {node} is the memory of NVIDIA GPU {name}: listed as kind gpu, used only when asked for by number"
                    ));
                    nodes.push(node);
                }
            }
        }
        nodes
    }

    fn read_nodes(
        &mut self,
        ids: &[u32],
        online: Option<&Bits>,
    ) -> Vec<(NumaNode, Option<Vec<u32>>)> {
        let gpu_nodes = self.gpu_memory_nodes();
        // node/has_memory is only a fallback for an unreadable meminfo: read it on demand.
        let mut has_memory_file: Option<Option<Bits>> = None;
        let mut nodes = Vec::with_capacity(ids.len());
        let mut rel = String::with_capacity(64);
        for &id in ids {
            rel.clear();
            rel.push_str(NODE_DIR);
            rel.push_str("/node");
            rel.push_str(&id.to_string());
            rel.push('/');
            let base = rel.len();
            let Ok(mut cpus) = self.node_cpus(&mut rel, base, id) else {
                self.warn(format!(
                    "node {id} is listed in {NODE_DIR}/online but has no folder; left out"
                ));
                continue;
            };
            if let Some(online) = online {
                cpus.retain(|&c| online.contains(c));
            }

            rel.truncate(base);
            rel.push_str("meminfo");
            let mem = match self.r.read(&rel) {
                Outcome::Bytes(b) => parse_meminfo_bytes(b).map_err(|e| e.to_string()),
                Outcome::Missing => Err("missing".to_string()),
                Outcome::Failed(e) => Err(e),
            };
            let (total_kib, free_kib, has_memory) = match mem {
                Ok(m) => (m.total_kib, m.free_kib, m.total_kib > 0),
                Err(e) => {
                    let listed = has_memory_file.get_or_insert_with(|| {
                        match self.r.read("sys/devices/system/node/has_memory") {
                            Outcome::Bytes(b) => {
                                parse_cpulist_bytes(b).ok().map(|l| Bits::from_list(&l))
                            }
                            _ => None,
                        }
                    });
                    let fallback = listed.as_ref().is_some_and(|b| b.contains(id));
                    self.warn(format!(
                        "node {id}: {rel} is unusable ({e}); memory size unknown"
                    ));
                    (0, 0, fallback)
                }
            };

            rel.truncate(base);
            rel.push_str("distance");
            let row = match self.r.read(&rel) {
                Outcome::Bytes(b) => match parse_distance_row_bytes(b) {
                    Ok(row) => Some(row),
                    Err(e) => {
                        self.warn(format!(
                            "{rel} is unreadable ({e}); distances of node {id} unknown"
                        ));
                        None
                    }
                },
                Outcome::Missing => {
                    if ids.len() > 1 {
                        self.warn(format!("{rel} is missing; distances of node {id} unknown"));
                    }
                    None
                }
                Outcome::Failed(e) => {
                    self.warn(format!(
                        "cannot read {rel} ({e}); distances of node {id} unknown"
                    ));
                    None
                }
            };
            nodes.push((
                NumaNode {
                    node_id: id,
                    has_cpu: !cpus.is_empty(),
                    cpus,
                    allowed_cpus: Vec::new(),
                    memory_total_bytes: total_kib.saturating_mul(1024),
                    memory_free_bytes: free_kib.saturating_mul(1024),
                    has_memory,
                    allowed: false,
                    distances: BTreeMap::new(),
                    kind: if gpu_nodes.contains(&id) {
                        NodeKind::Gpu
                    } else {
                        NodeKind::General
                    },
                },
                row,
            ));
        }
        nodes
    }

    /// Match one node's distance row to node ids. The kernel prints one value per online
    /// node in ascending order; a row of another length is read by node number when it is
    /// long enough (some firmware/kernels print every possible node), else dropped.
    fn map_distances(&mut self, id: u32, row: &[u32], online_ids: &[u32]) -> BTreeMap<u32, u32> {
        let mut map = BTreeMap::new();
        if row.len() == online_ids.len() {
            map.extend(online_ids.iter().copied().zip(row.iter().copied()));
        } else if online_ids
            .last()
            .is_some_and(|&max| row.len() > max as usize)
        {
            self.warn(format!(
                "node {id}'s distance row has {} values for {} online nodes; read it by node number",
                row.len(),
                online_ids.len()
            ));
            map.extend(online_ids.iter().map(|&n| (n, row[n as usize])));
        } else {
            self.warn(format!(
                "node {id}'s distance row has {} values for {} online nodes; its distances are unknown",
                row.len(),
                online_ids.len()
            ));
            return map;
        }
        let own = map.get(&id).copied();
        let bad = match own {
            None => true,
            Some(own) => own == 0 || map.values().any(|&d| d < own),
        };
        if bad || map.values().any(|&d| d == 0) {
            self.warn(format!(
                "node {id}'s distance row {row:?} does not make it nearest to itself; its distances are unknown"
            ));
            map.clear();
        }
        map
    }
}

/// Detect the topology under `fs_root`, limited by `affinity` when given (the live system).
pub(crate) fn detect_with(fs_root: &Path, affinity: Option<&[u32]>) -> Topology {
    let mut r = TreeReader::new(fs_root);
    // Most files read are below these two: opened once, each read walks only the rest.
    r.keep_dir(CPU_DIR);
    r.keep_dir(NODE_DIR);
    let mut d = Detection {
        r,
        warnings: Vec::new(),
        trusted: true,
        cpumap_first: false,
    };
    let online = d.online_cpus();
    let online_bits = online.as_deref().map(Bits::from_list);

    let numa_kernel = d.r.exists(NODE_DIR);
    let online_ids = if numa_kernel {
        d.node_ids()
    } else {
        Vec::new()
    };
    let mut read = d.read_nodes(&online_ids, online_bits.as_ref());

    if read.is_empty() {
        d.trusted = false;
        if numa_kernel {
            d.warn(format!(
                "{NODE_DIR} lists no NUMA node; showing one node 0 made of the online CPUs and proc/meminfo, and NUMA placement is off"
            ));
        } else {
            d.warn(format!(
                "{NODE_DIR} is missing (a kernel without NUMA support); showing one node 0 made of the online CPUs and proc/meminfo, and NUMA placement is off"
            ));
        }
        read.push((single_node(&mut d, online.as_deref()), None));
    }

    // Every CPU belongs to one node; a CPU claimed twice means the firmware data is wrong.
    // Like hwloc, the first node (by number) keeps such CPUs and a later node claiming any
    // of them is left out, so no CPU is pinned for two nodes; placement is off either way.
    let mut seen = Bits::default();
    let mut kept = Vec::with_capacity(read.len());
    for (node, row) in read {
        let shared: Vec<u32> = node
            .cpus
            .iter()
            .copied()
            .filter(|&c| seen.contains(c))
            .collect();
        if !shared.is_empty() {
            let owners: Vec<u32> = kept
                .iter()
                .filter(|(n, _): &&(NumaNode, Option<Vec<u32>>)| {
                    n.cpus.iter().any(|c| shared.binary_search(c).is_ok())
                })
                .map(|(n, _)| n.node_id)
                .collect();
            d.untrusted(format!(
                "node {} claims CPUs {} that node(s) {} already have (inconsistent firmware data); node {} is left out",
                node.node_id,
                super::cpulist::format_cpulist(&shared),
                super::cpulist::format_cpulist(&owners),
                node.node_id
            ));
            continue;
        }
        for &c in &node.cpus {
            seen.insert(c);
        }
        kept.push((node, row));
    }
    let read = kept;
    let online = match online {
        Some(list) => {
            let orphans: Vec<u32> = list
                .iter()
                .copied()
                .filter(|&c| !seen.contains(c))
                .collect();
            if !orphans.is_empty() && d.trusted {
                d.warn(format!(
                    "online CPUs {} belong to no online node (their node is offline or unlisted)",
                    super::cpulist::format_cpulist(&orphans)
                ));
            }
            list
        }
        None => {
            d.warn(format!(
                "{CPU_DIR} says nothing about online CPUs; taking every CPU the nodes list as online"
            ));
            let mut all: Vec<u32> = read
                .iter()
                .flat_map(|(n, _)| n.cpus.iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    };

    // Distances, matched to node ids.
    let node_ids: Vec<u32> = read.iter().map(|(n, _)| n.node_id).collect();
    let mut nodes = Vec::with_capacity(read.len());
    for (mut node, row) in read {
        match row {
            Some(row) => {
                let mut map = d.map_distances(node.node_id, &row, &online_ids);
                map.retain(|k, _| node_ids.binary_search(k).is_ok());
                node.distances = map;
            }
            None if node_ids.len() == 1 => {
                node.distances.insert(node.node_id, LOCAL_DISTANCE);
            }
            None => {}
        }
        nodes.push(node);
    }

    // Container limits: cpuset, then (live) the thread's affinity.
    let limits = read_limits(&mut d.r, &mut d.warnings).unwrap_or_default();
    let mut allowed_cpus = online;
    if let Some(cpus) = &limits.cpus {
        let bits = Bits::from_list(cpus);
        allowed_cpus.retain(|&c| bits.contains(c));
    }
    if let Some(aff) = affinity {
        let bits = Bits::from_list(aff);
        allowed_cpus.retain(|&c| bits.contains(c));
    }
    let allowed_bits = Bits::from_list(&allowed_cpus);
    let mems = limits.mems.as_deref().map(Bits::from_list);
    let mut allowed_nodes = Vec::with_capacity(nodes.len());
    for node in &mut nodes {
        node.allowed = mems.as_ref().is_none_or(|m| m.contains(node.node_id));
        node.allowed_cpus = node
            .cpus
            .iter()
            .copied()
            .filter(|&c| allowed_bits.contains(c))
            .collect();
        if node.allowed {
            allowed_nodes.push(node.node_id);
        }
    }
    if allowed_cpus.is_empty() {
        d.untrusted("no online CPU is allowed by the cpuset and affinity".to_string());
    }
    if allowed_nodes.is_empty() {
        d.untrusted("the cpuset allows no existing NUMA node".to_string());
    } else if !nodes
        .iter()
        .any(|n| n.allowed && n.has_memory && n.kind == NodeKind::General)
    {
        d.untrusted("no allowed NUMA node has memory (or its size is unknown)".to_string());
    }

    Topology {
        nodes,
        allowed_cpus,
        allowed_nodes,
        numa_available: d.trusted,
        warnings: d.warnings,
    }
}

/// The one node of a machine without NUMA information: every online CPU, `proc/meminfo`.
fn single_node(d: &mut Detection, online: Option<&[u32]>) -> NumaNode {
    let cpus = match online {
        Some(list) => list.to_vec(),
        None => {
            d.warn(format!("{CPU_DIR} lists no CPUs; node 0 has no known CPU"));
            Vec::new()
        }
    };
    let mem = match d.r.read("proc/meminfo") {
        Outcome::Bytes(b) => parse_meminfo_bytes(b).map_err(|e| e.to_string()),
        Outcome::Missing => Err("missing".to_string()),
        Outcome::Failed(e) => Err(e),
    };
    let (total, free) = match mem {
        Ok(m) => (m.total_kib, m.free_kib),
        Err(e) => {
            d.warn(format!(
                "proc/meminfo is unusable ({e}); memory size unknown"
            ));
            (0, 0)
        }
    };
    NumaNode {
        node_id: 0,
        has_cpu: !cpus.is_empty(),
        cpus,
        allowed_cpus: Vec::new(),
        memory_total_bytes: total.saturating_mul(1024),
        memory_free_bytes: free.saturating_mul(1024),
        has_memory: total > 0,
        allowed: false,
        distances: BTreeMap::from([(0, LOCAL_DISTANCE)]),
        kind: NodeKind::General,
    }
}

#[cfg(test)]
mod tests {
    //! Robustness: what real firmware and old kernels write, on synthetic trees.
    use super::*;
    use crate::topology::optimal_strategy;
    use crate::topology::synthetic::SyntheticMachine;
    use std::fs;

    fn tree(machine: &SyntheticMachine) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        machine.write(dir.path()).unwrap();
        dir
    }

    fn node_file(dir: &tempfile::TempDir, node: u32, file: &str) -> std::path::PathBuf {
        dir.path()
            .join(format!("sys/devices/system/node/node{node}/{file}"))
    }

    fn detect(dir: &tempfile::TempDir) -> Topology {
        detect_with(dir.path(), None)
    }

    fn warned(t: &Topology, words: &str) -> bool {
        t.warnings.iter().any(|w| w.contains(words))
    }

    #[test]
    fn a_clean_tree_reads_without_warnings() {
        let dir = tree(&SyntheticMachine::uniform(4, 2, 1 << 20));
        let t = detect(&dir);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert!(t.numa_available);
        assert_eq!(t.node_ids(), vec![0, 1, 2, 3]);
        assert_eq!(t.node(2).unwrap().cpus, vec![4, 5]);
        assert_eq!(t.node(2).unwrap().memory_total_bytes, 1 << 30);
        assert_eq!(t.node(2).unwrap().distances[&3], 20);
        assert_eq!(t.allowed_cpus, (0..8).collect::<Vec<_>>());
        assert_eq!(t.allowed_nodes, vec![0, 1, 2, 3]);
        assert_eq!(optimal_strategy(&t).as_str(), "local_node");
    }

    #[test]
    fn trailing_nuls_and_newlines_change_nothing() {
        let machine = SyntheticMachine::uniform(2, 2, 1 << 20);
        let clean = detect(&tree(&machine));
        let dir = tree(&machine);
        fs::write(node_file(&dir, 1, "cpulist"), "2-3\n\n\0\0\0\0").unwrap();
        fs::write(node_file(&dir, 0, "distance"), "10 20\n\0\0").unwrap();
        fs::write(
            dir.path().join("sys/devices/system/node/online"),
            "0-1\0\0\0\0\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("sys/devices/system/cpu/online"),
            "0-3\n\n\n",
        )
        .unwrap();
        assert_eq!(detect(&dir), clean);
    }

    #[test]
    fn cpumap_is_used_when_cpulist_is_missing() {
        let machine = SyntheticMachine::uniform(2, 40, 1 << 20);
        let clean = detect(&tree(&machine));
        let dir = tree(&machine);
        fs::remove_file(node_file(&dir, 0, "cpulist")).unwrap();
        fs::remove_file(node_file(&dir, 1, "cpulist")).unwrap();
        assert_eq!(detect(&dir), clean);
    }

    #[test]
    fn a_missing_meminfo_is_a_warning_not_a_guess() {
        let dir = tree(&SyntheticMachine::uniform(2, 2, 1 << 20));
        fs::remove_file(node_file(&dir, 1, "meminfo")).unwrap();
        let t = detect(&dir);
        assert!(warned(&t, "node 1"), "{:?}", t.warnings);
        assert_eq!(t.node(1).unwrap().memory_total_bytes, 0);
        // has_memory falls back to node/has_memory, which says node 1 has memory.
        assert!(t.node(1).unwrap().has_memory);
        assert!(t.numa_available);
    }

    #[test]
    fn missing_cpu_files_make_placement_unavailable() {
        let dir = tree(&SyntheticMachine::uniform(2, 2, 1 << 20));
        fs::remove_file(node_file(&dir, 1, "cpulist")).unwrap();
        fs::remove_file(node_file(&dir, 1, "cpumap")).unwrap();
        let t = detect(&dir);
        assert!(!t.numa_available);
        assert!(
            warned(&t, "node 1 has neither cpulist nor cpumap"),
            "{:?}",
            t.warnings
        );
        assert_eq!(optimal_strategy(&t).as_str(), "disabled");
    }

    #[test]
    fn garbage_cpulist_is_named_and_disables_placement() {
        let dir = tree(&SyntheticMachine::uniform(2, 2, 1 << 20));
        fs::write(node_file(&dir, 0, "cpulist"), "0-1,zz\n").unwrap();
        let t = detect(&dir);
        assert!(!t.numa_available);
        assert!(warned(&t, "\"zz\""), "{:?}", t.warnings);
    }

    #[test]
    fn missing_online_files_fall_back_to_folders() {
        let machine = SyntheticMachine::uniform(3, 2, 1 << 20);
        let clean = detect(&tree(&machine));
        let dir = tree(&machine);
        fs::remove_file(dir.path().join("sys/devices/system/node/online")).unwrap();
        let t = detect(&dir);
        assert_eq!(t, clean);

        // No cpu/online and no cpu<N> folders: every CPU a node lists counts, with a warning.
        fs::remove_file(dir.path().join("sys/devices/system/cpu/online")).unwrap();
        let t = detect(&dir);
        assert_eq!(t.allowed_cpus, clean.allowed_cpus);
        assert!(
            warned(&t, "says nothing about online CPUs"),
            "{:?}",
            t.warnings
        );

        // cpu<N> folders with online files: cpu3 offline drops out of node 1.
        for cpu in 0..6 {
            let d = dir.path().join(format!("sys/devices/system/cpu/cpu{cpu}"));
            fs::create_dir_all(&d).unwrap();
            if cpu > 0 {
                fs::write(d.join("online"), if cpu == 3 { "0\n" } else { "1\n" }).unwrap();
            }
        }
        let t = detect(&dir);
        assert_eq!(t.node(1).unwrap().cpus, vec![2]);
        assert_eq!(t.allowed_cpus, vec![0, 1, 2, 4, 5]);
    }

    #[test]
    fn distance_rows_of_the_wrong_length() {
        let dir = tree(&SyntheticMachine::uniform(2, 2, 1 << 20));
        // Longer than the online count but indexable by node number: read by number.
        fs::write(node_file(&dir, 1, "distance"), "20 10 30\n").unwrap();
        let t = detect(&dir);
        assert!(warned(
            &t,
            "has 3 values for 2 online nodes; read it by node number"
        ));
        assert_eq!(
            t.node(1).unwrap().distances,
            BTreeMap::from([(0, 20), (1, 10)])
        );
        assert!(t.numa_available);

        // Too short: unknown, never invented.
        fs::write(node_file(&dir, 1, "distance"), "10\n").unwrap();
        let t = detect(&dir);
        assert!(warned(
            &t,
            "has 1 values for 2 online nodes; its distances are unknown"
        ));
        assert!(t.node(1).unwrap().distances.is_empty());
        // Node 0's row still says where node 1 is.
        assert_eq!(t.node(0).unwrap().distances[&1], 20);

        // A row that makes another node nearer than the node itself.
        fs::write(node_file(&dir, 1, "distance"), "10 20\n").unwrap();
        let t = detect(&dir);
        assert!(
            warned(&t, "does not make it nearest to itself"),
            "{:?}",
            t.warnings
        );
        assert!(t.node(1).unwrap().distances.is_empty());
    }

    #[test]
    fn every_node_claiming_the_same_cpus_disables_placement() {
        let dir = tree(&SyntheticMachine::uniform(4, 2, 1 << 20));
        for n in 0..4 {
            fs::write(node_file(&dir, n, "cpulist"), "0-7\n").unwrap();
        }
        let t = detect(&dir);
        assert!(!t.numa_available);
        assert!(
            warned(&t, "node 1 claims CPUs 0-7 that node(s) 0 already have"),
            "{:?}",
            t.warnings
        );
        // As hwloc does: the first node keeps the CPUs, the others are left out.
        assert_eq!(t.node_ids(), vec![0]);
        assert_eq!(optimal_strategy(&t).as_str(), "disabled");
        assert_eq!(t.to_json()["optimal_strategy"], "disabled");
    }

    #[test]
    fn an_online_node_without_folder_is_left_out_with_a_warning() {
        let dir = tree(&SyntheticMachine::uniform(2, 2, 1 << 20));
        fs::write(dir.path().join("sys/devices/system/node/online"), "0-2\n").unwrap();
        let t = detect(&dir);
        assert_eq!(t.node_ids(), vec![0, 1]);
        assert!(warned(&t, "node 2 is listed"), "{:?}", t.warnings);
        // Rows of 2 values for 3 "online" nodes cannot be matched: unknown, not guessed.
        assert!(t.node(1).unwrap().distances.is_empty());
        assert!(
            warned(&t, "has 2 values for 3 online nodes"),
            "{:?}",
            t.warnings
        );
    }

    #[test]
    fn cpuset_limits_and_nearest_node() {
        let mut machine = SyntheticMachine::uniform(4, 2, 1 << 20);
        machine.nodes[3].cpus.clear(); // a CPU-less (CXL-like) node
        machine.nodes[3].distances = vec![30, 15, 25, 10];
        for (i, n) in machine.nodes.iter_mut().enumerate().take(3) {
            n.distances[3] = [30, 15, 25][i];
        }
        machine.cpuset = Some((vec![0, 1, 4, 5], vec![0, 2, 3]));
        let dir = tree(&machine);
        let t = detect(&dir);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(t.allowed_cpus, vec![0, 1, 4, 5]);
        assert_eq!(t.allowed_nodes, vec![0, 2, 3]);
        assert!(!t.node(1).unwrap().allowed);
        assert!(t.node(1).unwrap().allowed_cpus.is_empty());
        assert!(!t.node(3).unwrap().has_cpu);
        assert!(t.node(3).unwrap().has_memory);
        // Node 3 is nearest to node 1, but node 1 has no allowed CPU: next is node 2 (25).
        assert_eq!(t.nearest_node_with_cpus(3), Some(2));
        assert_eq!(t.nearest_node_with_cpus(1), Some(0)); // tie at 20: lower number
        assert_eq!(t.nearest_node_with_cpus(0), Some(0));
        assert_eq!(t.nearest_node_with_cpus(9), None);
        assert_eq!(t.node_of_cpu(5), Some(2));
        assert_eq!(t.node_of_cpu(99), None);
        assert_eq!(t.total_memory_bytes(), 4 << 30);

        // A cpuset that leaves nothing runnable.
        machine.cpuset = Some((vec![], vec![0]));
        let t = detect(&tree(&machine));
        assert!(!t.numa_available);
        assert!(warned(&t, "no online CPU is allowed"), "{:?}", t.warnings);
    }

    #[test]
    fn nvidia_gpu_memory_nodes_are_listed_with_kind_gpu() {
        let mut machine = SyntheticMachine::uniform(3, 2, 1 << 20);
        machine.nodes[2].cpus.clear();
        let dir = tree(&machine);
        let gpu = dir.path().join("proc/driver/nvidia/gpus/0004:04:00.0");
        fs::create_dir_all(&gpu).unwrap();
        fs::write(
            gpu.join("numa_status"),
            "Node:                          2\nStatus:                        online\n",
        )
        .unwrap();
        let t = detect(&dir);
        assert_eq!(t.node_ids(), vec![0, 1, 2]);
        let kinds: Vec<NodeKind> = t.nodes.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, [NodeKind::General, NodeKind::General, NodeKind::Gpu]);
        assert!(warned(
            &t,
            "node 2 is the memory of NVIDIA GPU 0004:04:00.0"
        ));
        assert!(t.numa_available);
        assert_eq!(
            t.node(1).unwrap().distances,
            BTreeMap::from([(0, 20), (1, 10), (2, 20)])
        );
    }

    #[test]
    fn online_cpus_without_a_folder_are_left_out() {
        let dir = tree(&SyntheticMachine::uniform(2, 2, 1 << 20));
        for cpu in 0..3 {
            fs::create_dir_all(dir.path().join(format!("sys/devices/system/cpu/cpu{cpu}")))
                .unwrap();
        }
        let t = detect(&dir);
        assert_eq!(t.allowed_cpus, vec![0, 1, 2]);
        assert_eq!(t.node(1).unwrap().cpus, vec![2]);
        assert!(
            warned(&t, "CPUs 3 are online but have no"),
            "{:?}",
            t.warnings
        );
    }

    #[test]
    fn no_node_folder_is_one_node_and_no_numa() {
        let dir = tree(&SyntheticMachine::uniform(1, 4, 1 << 20));
        fs::remove_dir_all(dir.path().join("sys/devices/system/node")).unwrap();
        let t = detect(&dir);
        assert!(!t.numa_available);
        assert_eq!(t.node_ids(), vec![0]);
        assert_eq!(t.node(0).unwrap().cpus, vec![0, 1, 2, 3]);
        assert_eq!(t.node(0).unwrap().memory_total_bytes, 1 << 30);
        assert!(warned(&t, "kernel without NUMA"), "{:?}", t.warnings);
    }

    #[test]
    fn an_empty_or_missing_root_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let t = detect(&dir);
        assert!(!t.numa_available);
        assert!(!t.warnings.is_empty());
        let t = detect_with(Path::new("/nonexistent/numa-cache-root"), None);
        assert!(!t.numa_available);
    }

    #[test]
    fn json_has_exactly_the_documented_fields() {
        let t = detect(&tree(&SyntheticMachine::uniform(2, 2, 1 << 20)));
        let j = t.to_json();
        let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed_cpus",
                "allowed_nodes",
                "nodes",
                "numa_available",
                "optimal_strategy",
                "total_memory_mb",
                "warnings"
            ]
        );
        let node = &j["nodes"][1];
        let mut keys: Vec<&str> = node
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed",
                "cpu_count",
                "cpu_list",
                "distances",
                "has_cpu",
                "has_memory",
                "kind",
                "memory_mb",
                "node_id"
            ]
        );
        assert_eq!(node["cpu_list"], serde_json::json!([2, 3]));
        assert_eq!(node["cpu_count"], 2);
        assert_eq!(node["memory_mb"], 1024);
        assert_eq!(node["distances"], serde_json::json!({"0": 20, "1": 10}));
        assert_eq!(j["total_memory_mb"], 2048);
        let text = t.to_json_string_pretty();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), j);
        // The seed's field order: nodes first, then the totals.
        assert!(text.find("\"nodes\"").unwrap() < text.find("\"total_memory_mb\"").unwrap());
    }
}

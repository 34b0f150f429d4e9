//! Synthetic sysfs/procfs trees: write the files a kernel would show for a machine you
//! describe, so tests and benchmarks can run detection (and everything above it) on 2, 4
//! or 64 nodes on a one-node host. Files are spelled exactly as the kernel spells them.

use super::cpulist::format_cpulist;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// One node of a synthetic machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticNode {
    /// Kernel node number.
    pub id: u32,
    /// Its CPUs, ascending.
    pub cpus: Vec<u32>,
    /// MemTotal in KiB (0: a memory-less node).
    pub memory_kib: u64,
    /// Its distance row, one value per node in `nodes` order.
    pub distances: Vec<u32>,
}

/// A machine to write as a tree under a filesystem root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyntheticMachine {
    /// Nodes in ascending id order.
    pub nodes: Vec<SyntheticNode>,
    /// A cgroup v2 cpuset (`cpuset.cpus.effective`, `cpuset.mems.effective`) for the
    /// process, if any.
    pub cpuset: Option<(Vec<u32>, Vec<u32>)>,
}

impl SyntheticMachine {
    /// `nodes` nodes numbered 0.., each with `cpus_per_node` consecutive CPUs and
    /// `memory_kib` of memory; distance 10 to itself and 20 to every other node.
    pub fn uniform(nodes: u32, cpus_per_node: u32, memory_kib: u64) -> SyntheticMachine {
        let nodes = (0..nodes)
            .map(|id| SyntheticNode {
                id,
                cpus: (id * cpus_per_node..(id + 1) * cpus_per_node).collect(),
                memory_kib,
                distances: (0..nodes).map(|j| if j == id { 10 } else { 20 }).collect(),
            })
            .collect();
        SyntheticMachine {
            nodes,
            cpuset: None,
        }
    }

    /// Write the tree under `root` (created if needed): `sys/devices/system/{node,cpu}`,
    /// `proc/meminfo`, and, with a cpuset, `proc/self/cgroup`, `proc/mounts` and the
    /// cgroup v2 files under `sys/fs/cgroup/numa-cache.slice`.
    pub fn write(&self, root: &Path) -> io::Result<()> {
        let node_dir = root.join("sys/devices/system/node");
        let cpu_dir = root.join("sys/devices/system/cpu");
        std::fs::create_dir_all(&node_dir)?;
        std::fs::create_dir_all(&cpu_dir)?;
        let ids: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        let list = |l: &[u32]| format!("{}\n", format_cpulist(l));
        std::fs::write(node_dir.join("online"), list(&ids))?;
        std::fs::write(node_dir.join("possible"), list(&ids))?;
        let with = |f: &dyn Fn(&SyntheticNode) -> bool| {
            list(
                &self
                    .nodes
                    .iter()
                    .filter(|n| f(n))
                    .map(|n| n.id)
                    .collect::<Vec<_>>(),
            )
        };
        std::fs::write(node_dir.join("has_cpu"), with(&|n| !n.cpus.is_empty()))?;
        std::fs::write(node_dir.join("has_memory"), with(&|n| n.memory_kib > 0))?;
        let mut all_cpus: Vec<u32> = self.nodes.iter().flat_map(|n| n.cpus.clone()).collect();
        all_cpus.sort_unstable();
        all_cpus.dedup();
        std::fs::write(cpu_dir.join("online"), list(&all_cpus))?;
        std::fs::write(cpu_dir.join("possible"), list(&all_cpus))?;
        let words = all_cpus.last().map_or(1, |&m| m as usize / 32 + 1);

        let mut total = 0;
        for n in &self.nodes {
            let dir = node_dir.join(format!("node{}", n.id));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cpulist"), list(&n.cpus))?;
            std::fs::write(dir.join("cpumap"), format!("{}\n", cpumap(&n.cpus, words)))?;
            let row: Vec<String> = n.distances.iter().map(u32::to_string).collect();
            std::fs::write(dir.join("distance"), format!("{}\n", row.join(" ")))?;
            let free = n.memory_kib / 2;
            std::fs::write(
                dir.join("meminfo"),
                format!(
                    "Node {id} MemTotal:       {total} kB\nNode {id} MemFree:        {free} kB\nNode {id} MemUsed:        {used} kB\n",
                    id = n.id,
                    total = n.memory_kib,
                    used = n.memory_kib - free
                ),
            )?;
            total += n.memory_kib;
        }
        std::fs::create_dir_all(root.join("proc/self"))?;
        std::fs::write(
            root.join("proc/meminfo"),
            format!(
                "MemTotal:       {total} kB\nMemFree:        {} kB\n",
                total / 2
            ),
        )?;
        if let Some((cpus, mems)) = &self.cpuset {
            let cg = root.join("sys/fs/cgroup/numa-cache.slice");
            std::fs::create_dir_all(&cg)?;
            std::fs::write(cg.join("cpuset.cpus.effective"), list(cpus))?;
            std::fs::write(cg.join("cpuset.mems.effective"), list(mems))?;
            std::fs::write(root.join("proc/self/cgroup"), "0::/numa-cache.slice\n")?;
            std::fs::write(
                root.join("proc/mounts"),
                "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n",
            )?;
        }
        Ok(())
    }
}

/// The kernel's `cpumap` spelling: `words` 32-bit hex words, most significant first.
fn cpumap(cpus: &[u32], words: usize) -> String {
    let mut mask = vec![0u32; words];
    for &c in cpus {
        mask[c as usize / 32] |= 1 << (c % 32);
    }
    let mut out = String::with_capacity(words * 9);
    for (i, w) in mask.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{w:08x}");
    }
    out
}

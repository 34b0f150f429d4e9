//! The NUMA lab's probe: run inside a multi-node VM, it exercises the engine's placement
//! calls and prints one JSON object per check, for `tests/numa_lab.rs` to assert on. What it
//! reports as the truth comes from the kernel's own files, parsed here (never from the
//! crate's `page_nodes`/`get_affinity`, which are what is under test): `/proc/PID/numa_maps`
//! (pages per node of one mapping, its policy, a thread's policy), `/proc/PID/task/*/status`
//! (`Cpus_allowed_list`, `Mems_allowed_list`), `/proc/thread-self/stat` (the CPU a job ran
//! on), `nodeN/meminfo`, `nodeN/numastat` and `/proc/vmstat`.
//!
//! `lab_probe topology` the topology the hotplug watcher reads, as JSON.
//! `lab_probe pools`   worker pools: each pool's threads (by name) and their allowed CPUs,
//!                     the CPUs its jobs ran on, and where pages a job allocated for every
//!                     node landed and under which policy the job ran.
//! `lab_probe bind`    starts a child on the first node, binds it to the last node with
//!                     `bind_process`, and reports its threads' allowed CPUs and where its
//!                     buffer's pages are, before and after.
//! `lab_probe diagnose` runs `numacachectl diagnose --json` and reports, with its report, the
//!                     kernel's per-node allocation counters (numastat) around it.
//! `lab_probe hotplug` offlines the last CPU of the last node with CPUs, waits for the
//!                     watcher's new generation (its re-scan is an hour away, so it comes from
//!                     the uevent), re-pins the pools and reports where they may run.
//! `lab_probe tier DIR` opens a real `Cache` in DIR (btrfs) and judges, by the kernel's own
//!                     counters (nodeN/meminfo, /proc/vmstat, /proc/self/numa_maps), where
//!                     each node's values are: their page cache after a drop_caches and a
//!                     read, and their memory-tier copies after reads from other nodes with
//!                     `kernel.numa_balancing=1`; and that those reads were memory-tier hits.
//! `lab_probe daemon DIR` starts a bus (dbus-daemon) and `numa-cached` on DIR, first with the
//!                     `local_node` strategy, then with `interleave`, puts and reads through
//!                     the bus from client processes pinned to each node, and reports where
//!                     the daemon's memory tier is (its numa_maps) and its workers may run.
//! `lab_probe child CPUS`  (internal) the process `bind` moves.
//! `lab_probe client put|get ...` (internal) a bus client pinned to a node's CPUs.

use numa_cache::placement::{MemoryPolicy, NodePools, StrategyConfig, bind_process};
use numa_cache::policy;
use numa_cache::topology::Topology;
use numa_cache::topology::watcher::TopologyWatcher;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("pools") => pools(),
        Some("bind") => bind(),
        Some("diagnose") => diagnose(),
        Some("hotplug") => hotplug(),
        Some("topology") => topology_with_memory(),
        Some("tier") => tier(args.get(1).map(String::as_str).unwrap_or("/lab")),
        Some("daemon") => daemon(args.get(1).map(String::as_str).unwrap_or("/lab")),
        Some("client") => client(&args[1..]),
        Some("child") => {
            // The child prints only its READY line: its parent stops reading after it.
            if let Err(e) = child(args.get(1).map(String::as_str).unwrap_or("")) {
                eprintln!("lab_probe child: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {
            Err("usage: lab_probe topology|pools|bind|diagnose|hotplug|tier DIR|daemon DIR".into())
        }
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({ "error": e.to_string() }));
            std::process::exit(1);
        }
    }
}

// ---- The kernel's files, parsed here ----

/// A CPU or node list as the kernel writes it ("0-1,3").
fn parse_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// `Cpus_allowed_list` and `Mems_allowed_list` of `/proc/{pid}/task/{tid}/status`.
fn task_allowed(pid: &str, tid: &str) -> Res<Value> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let text = std::fs::read_to_string(&path)?;
    let field = |name: &str| -> Res<Vec<u32>> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(parse_list)
            .ok_or_else(|| format!("no {name} in {path}").into())
    };
    Ok(json!({
        "tid": tid,
        "cpus_allowed": field("Cpus_allowed_list:")?,
        "mems_allowed": field("Mems_allowed_list:")?,
    }))
}

/// Thread ids of `pid` (`/proc/{pid}/task`), with their names (`comm`).
fn threads_of(pid: &str) -> Res<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = e?.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.push((tid, comm));
    }
    out.sort();
    Ok(out)
}

/// Every thread of `pid` whose name is `node{N}-w*` (a worker of node N's pool), by node:
/// its allowed CPUs and nodes, and its own memory policy.
fn pool_threads(pid: &str) -> Res<BTreeMap<String, Vec<Value>>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (tid, comm) in threads_of(pid)? {
        let Some(node) = comm
            .strip_prefix("node")
            .and_then(|r| r.split_once("-w"))
            .map(|(n, _)| n.to_string())
        else {
            continue;
        };
        // A worker of a pool that is being stopped (hotplug) may be gone by now.
        let (mut v, policy) = match (task_allowed(pid, &tid), task_policy(pid, &tid)) {
            (Ok(v), Ok(p)) => (v, p),
            _ if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => continue,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        v["policy"] = json!(policy);
        out.entry(node).or_default().push(v);
    }
    Ok(out)
}

/// One line of numa_maps: start address, policy, pages per node (`N<node>=<pages>`).
type MapLine = (usize, String, BTreeMap<String, u64>);

/// Every line of the numa_maps file at `path`.
fn numa_maps(path: &str) -> Res<Vec<MapLine>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(policy)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(addr) = usize::from_str_radix(addr, 16) else {
            continue;
        };
        let mut per = BTreeMap::new();
        for f in it {
            if let Some((n, c)) = f.strip_prefix('N').and_then(|f| f.split_once('='))
                && let Ok(c) = c.parse::<u64>()
            {
                *per.entry(n.to_string()).or_default() += c;
            }
        }
        out.push((addr, policy.to_string(), per));
    }
    Ok(out)
}

/// A thread's own memory policy: `/proc/PID/task/TID/numa_maps` shows it on every mapping
/// without a policy of its own, as the first (the executable's) is.
fn task_policy(pid: &str, tid: &str) -> Res<String> {
    numa_maps(&format!("/proc/{pid}/task/{tid}/numa_maps"))?
        .into_iter()
        .next()
        .map(|(_, p, _)| p)
        .ok_or_else(|| format!("empty numa_maps of {pid}/{tid}").into())
}

/// The policy and pages per node of the mapping that starts at `addr` in `pid`.
fn mapping_at(pid: &str, addr: usize) -> Res<Value> {
    let (_, policy, per) = numa_maps(&format!("/proc/{pid}/numa_maps"))?
        .into_iter()
        .find(|(a, _, _)| *a == addr)
        .ok_or_else(|| format!("no mapping at {addr:x} in /proc/{pid}/numa_maps"))?;
    Ok(json!({ "policy": policy, "pages_per_node": per }))
}

/// Pages per node of `pid`'s mappings whose policy prefers a node, from numa_maps:
/// `{policy node: {node the pages are on: pages}}`.
fn prefer_mappings(pid: &str) -> Res<BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (_, policy, per) in numa_maps(&format!("/proc/{pid}/numa_maps"))? {
        let Some(node) = policy.strip_prefix("prefer:") else {
            continue;
        };
        let sum = out.entry(node.to_string()).or_default();
        for (n, c) in per {
            *sum.entry(n).or_default() += c;
        }
    }
    Ok(out)
}

/// The CPU the calling thread runs on, as `/proc/thread-self/stat` (field 39) says.
fn cpu_now() -> Res<u32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let after = stat.rsplit_once(')').ok_or("bad /proc/thread-self/stat")?.1;
    // Fields from the 3rd on; the processor is the 39th.
    let cpu = after
        .split_whitespace()
        .nth(36)
        .ok_or("short /proc/thread-self/stat")?;
    Ok(cpu.parse()?)
}

/// One counter of every node's `numastat`.
fn numastat(nodes: &[u32], field: &str) -> Res<BTreeMap<u32, u64>> {
    let mut out = BTreeMap::new();
    for &n in nodes {
        let path = format!("/sys/devices/system/node/node{n}/numastat");
        let text = std::fs::read_to_string(&path)?;
        let v = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("no {field} in {path}"))?;
        out.insert(n, v);
    }
    Ok(out)
}

/// `pages` anonymous pages between two inaccessible guard pages, so the kernel never merges
/// the mapping with a neighbour: its numa_maps line counts its own pages only.
struct Isolated {
    base: usize,
    page: usize,
    pages: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it between threads is sound.
unsafe impl Send for Isolated {}

impl Isolated {
    fn new(pages: usize) -> Res<Isolated> {
        let page = 4096;
        let total = (pages + 2) * page;
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
        // existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let base = base as usize;
        // SAFETY: the range lies inside the mapping just made.
        let rc = unsafe {
            libc::mprotect(
                (base + page) as *mut libc::c_void,
                pages * page,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        let m = Isolated { base, page, pages };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(m)
    }

    /// The first usable page (where its numa_maps line starts).
    fn addr(&self) -> usize {
        self.base + self.page
    }

    /// Write every page so the kernel allocates it under the current policy.
    fn touch(&mut self) {
        for i in 0..self.pages {
            // SAFETY: the address lies inside the writable part of this live mapping.
            unsafe { std::ptr::write_volatile((self.addr() + i * self.page) as *mut u8, 1) };
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more.
        unsafe { libc::munmap(self.base as *mut libc::c_void, (self.pages + 2) * self.page) };
    }
}

fn topology() -> Topology {
    TopologyWatcher::start("/", Duration::from_secs(60))
        .current()
        .as_ref()
        .clone()
}

/// The watcher's topology, plus each node's memory two ways, both read here from the
/// kernel's files rather than from the topology under test: MemTotal of
/// `nodeN/meminfo` (what the kernel manages, after its own reservations) and its online
/// memory blocks (the physical size).
fn topology_with_memory() -> Res<Value> {
    let t = topology();
    let sys = std::path::Path::new("/sys/devices/system");
    let block = std::fs::read_to_string(sys.join("memory/block_size_bytes"))
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let mut mem = serde_json::Map::new();
    for n in &t.nodes {
        let dir = sys.join(format!("node/node{}", n.node_id));
        let blocks = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("memory"))
                    .filter(|e| {
                        std::fs::read_to_string(e.path().join("online"))
                            .map(|s| s.trim() == "1")
                            .unwrap_or(false)
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        mem.insert(
            n.node_id.to_string(),
            json!({
                "memtotal_bytes": node_meminfo(n.node_id, "MemTotal")?,
                "block_bytes": blocks * block
            }),
        );
    }
    Ok(json!({ "topology": t, "node_memory": mem }))
}

/// Nodes with CPUs and memory, ascending.
fn full_nodes(t: &Topology) -> Vec<u32> {
    t.nodes
        .iter()
        .filter(|n| n.has_memory && !n.allowed_cpus.is_empty())
        .map(|n| n.node_id)
        .collect()
}

fn cpus_of(t: &Topology, node: u32) -> Vec<u32> {
    t.nodes
        .iter()
        .find(|n| n.node_id == node)
        .map(|n| n.allowed_cpus.clone())
        .unwrap_or_default()
}

fn mem_nodes(t: &Topology) -> Vec<u32> {
    t.nodes
        .iter()
        .filter(|n| n.has_memory)
        .map(|n| n.node_id)
        .collect()
}

/// Run 200 small jobs on `node`'s pool; the CPUs they ran on (each job reads its own
/// `/proc/thread-self/stat`).
fn cpus_seen(pools: &NodePools, node: u32) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        if let Ok(cpu) = pools.run(node, || cpu_now().map_err(|e| e.to_string())) {
            seen.insert(cpu);
        }
    }
    seen.into_iter().collect()
}

fn pools() -> Res<Value> {
    let t = topology();
    let pools = NodePools::start(&t, &StrategyConfig::default());
    let mut seen = serde_json::Map::new();
    for node in pools.pool_nodes() {
        seen.insert(node.to_string(), json!(cpus_seen(&pools, node)));
    }
    // Pages a job allocates for each node (memory-only nodes included) land on that node:
    // the job's own mapping, judged by its numa_maps line, and the job's policy and allowed
    // CPUs as the kernel shows them for its thread.
    let mut pages = serde_json::Map::new();
    let mut serving = serde_json::Map::new();
    for n in mem_nodes(&t) {
        let (buf, policy, allowed) = pools.run(n, || -> Result<_, String> {
            let mut buf = Isolated::new(32).map_err(|e| e.to_string())?;
            buf.touch();
            let tid = policy::current_tid().to_string();
            let policy = task_policy("self", &tid).map_err(|e| e.to_string())?;
            let allowed = task_allowed("self", &tid).map_err(|e| e.to_string())?;
            Ok((buf, policy, allowed))
        })?;
        let mapping = mapping_at("self", buf.addr())?;
        pages.insert(
            n.to_string(),
            json!({ "pages": buf.pages, "mapping": mapping, "job_policy": policy, "job_thread": allowed }),
        );
        serving.insert(n.to_string(), json!(pools.serving_node(n)));
    }
    let modes = json!({
        "preferred_many": policy::supported(policy::MemPolicyMode::PreferredMany),
        "weighted_interleave": policy::supported(policy::MemPolicyMode::WeightedInterleave),
    });
    Ok(json!({
        "threads": pool_threads("self")?,
        "cpus_seen": seen,
        "pages": pages,
        "serving": serving,
        "modes": modes,
    }))
}

fn child(cpus: &str) -> Res<()> {
    let cpus: Vec<u32> = cpus.split(',').filter_map(|c| c.parse().ok()).collect();
    if !cpus.is_empty() {
        policy::set_affinity(0, &cpus)?;
    }
    // Two more threads, so binding must move every thread, not only the main one.
    for _ in 0..2 {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(600)));
    }
    let mut buf = Isolated::new(1024)?;
    buf.touch();
    println!("READY {} {}", buf.addr(), buf.pages);
    std::io::stdout().flush()?;
    // Wait until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(buf);
    Ok(())
}

/// Every thread of `pid`: its allowed CPUs and nodes.
fn all_threads(pid: &str) -> Res<Vec<Value>> {
    threads_of(pid)?
        .into_iter()
        .map(|(tid, _)| task_allowed(pid, &tid))
        .collect()
}

fn bind() -> Res<Value> {
    let t = topology();
    let full = full_nodes(&t);
    let (Some(&from), Some(&to)) = (full.first(), full.last()) else {
        return Err("no node with CPUs and memory".into());
    };
    if from == to {
        return Err("binding needs two nodes with CPUs and memory".into());
    }
    let from_cpus = cpus_of(&t, from)
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut kid = Command::new(std::env::current_exe()?)
        .args(["child", &from_cpus])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = kid.id().to_string();
    let mut line = String::new();
    BufReader::new(kid.stdout.take().ok_or("child stdout")?).read_line(&mut line)?;
    let parts: Vec<usize> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|p| p.parse().ok())
        .collect();
    let (addr, count) = match parts.as_slice() {
        [a, c] => (*a, *c),
        _ => return Err(format!("child said {line:?}").into()),
    };
    let mapping_before = mapping_at(&pid, addr)?;
    let threads_before = all_threads(&pid)?;
    let report = bind_process(&t, kid.id() as i32, to, MemoryPolicy::Bind);
    let threads_after = all_threads(&pid)?;
    let mapping_after = mapping_at(&pid, addr)?;
    drop(kid.stdin.take());
    let _ = kid.kill();
    let _ = kid.wait();
    let report = report?;
    Ok(json!({
        "from_node": from,
        "to_node": to,
        "to_cpus": cpus_of(&t, to),
        "buffer_pages": count,
        "buffer_before": mapping_before,
        "buffer_after": mapping_after,
        "threads_before": threads_before,
        "threads_after": threads_after,
        "report": report,
    }))
}

/// `numacachectl diagnose --json`, with the kernel's per-node allocation counters around
/// it: `interleave_hit` (pages an interleave policy put on the node it chose) and
/// `other_node` (pages put on the node by a task running on another node's CPU; diagnose
/// binds from a thread on another node). Nothing else in the guest interleaves, and little
/// allocates across nodes, so the deltas are diagnose's own pages (plus its page tables).
fn diagnose() -> Res<Value> {
    let t = topology();
    let nodes = mem_nodes(&t);
    let before = (
        numastat(&nodes, "interleave_hit")?,
        numastat(&nodes, "other_node")?,
    );
    let out = Command::new("/bin/numacachectl")
        .args(["diagnose", "--json"])
        .output()?;
    let after = (
        numastat(&nodes, "interleave_hit")?,
        numastat(&nodes, "other_node")?,
    );
    if !out.status.success() {
        return Err(format!(
            "numacachectl diagnose: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let d = |a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>| -> BTreeMap<String, u64> {
        a.iter()
            .map(|(n, v)| (n.to_string(), v.saturating_sub(b[n])))
            .collect()
    };
    Ok(json!({
        "report": report,
        "interleave_hit_delta": d(&after.0, &before.0),
        "other_node_delta": d(&after.1, &before.1),
    }))
}

/// Wait until `watcher`'s generation is past `seen`, at most `limit`; whether it moved.
fn wait_generation(watcher: &TopologyWatcher, seen: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        // Listen first, then look: a change between the two is not missed.
        let listener = watcher.listen();
        if watcher.generation() != seen {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        event_listener::Listener::wait_timeout(listener, left);
    }
}

/// How long the watcher may take to see a CPU go or come back (an emulated CPU on a busy
/// host; seen: 0.3-4 s). Its re-scan is an hour away, so a new generation within this
/// comes from the uevent.
const HOTPLUG_WITHIN: Duration = Duration::from_secs(120);
const NO_RESCAN: Duration = Duration::from_secs(3600);

fn hotplug() -> Res<Value> {
    let watcher = TopologyWatcher::start("/", NO_RESCAN);
    let t = watcher.current().as_ref().clone();
    let pools = NodePools::start(&t, &StrategyConfig::default());
    let node = *full_nodes(&t).last().ok_or("no node with CPUs")?;
    let cpus = cpus_of(&t, node);
    let cpu = *cpus.last().ok_or("node without CPUs")?;
    if cpu == 0 {
        return Err("CPU 0 cannot be offlined".into());
    }
    let before_seen = cpus_seen(&pools, node);
    let threads_before = pool_threads("self")?;
    let generation_before = watcher.generation();
    let online = format!("/sys/devices/system/cpu/cpu{cpu}/online");

    let started = Instant::now();
    std::fs::write(&online, "0")?;
    let woke = wait_generation(&watcher, generation_before, HOTPLUG_WITHIN);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let uevents_offline = watcher.uevents_seen();
    let generation_after = watcher.generation();
    let now = watcher.current();
    let repinned = pools.update(&now);
    let node_cpus_after = cpus_of(&now, node);
    let threads_after = pool_threads("self")?;
    let seen_after = cpus_seen(&pools, node);

    // Bring it back and check the watcher follows that too.
    std::fs::write(&online, "1")?;
    let back = wait_generation(&watcher, generation_after, HOTPLUG_WITHIN);
    pools.update(&watcher.current());
    let mut per_gen = BTreeMap::new();
    per_gen.insert("before", generation_before);
    per_gen.insert("offline", generation_after);
    per_gen.insert("online_again", watcher.generation());
    Ok(json!({
        "node": node,
        "cpu": cpu,
        "rescan_interval_s": NO_RESCAN.as_secs(),
        "uevents_enabled": watcher.uevents_enabled(),
        "uevents_seen": uevents_offline,
        "notified": woke,
        "notified_online_again": back,
        "elapsed_ms": elapsed_ms,
        "generations": per_gen,
        "cpus_seen_before": before_seen,
        "threads_before": threads_before,
        "node_cpus_after": node_cpus_after,
        "threads_repinned": repinned,
        "threads_after": threads_after,
        "cpus_seen_after": seen_after,
        "node_cpus_online_again": cpus_of(&watcher.current(), node),
    }))
}

/// One counter of `/sys/devices/system/node/node{node}/meminfo`, in bytes.
fn node_meminfo(node: u32, field: &str) -> Res<u64> {
    let path = format!("/sys/devices/system/node/node{node}/meminfo");
    let text = std::fs::read_to_string(&path)?;
    // "Node 1 FilePages:     123456 kB"
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (_, _, name, value) = (it.next(), it.next(), it.next(), it.next());
        if name == Some(&format!("{field}:")) {
            let kb: u64 = value.ok_or("no value")?.parse()?;
            return Ok(kb * 1024);
        }
    }
    Err(format!("no {field} in {path}").into())
}

/// `field` of every node with memory, in bytes.
fn per_node(nodes: &[u32], field: &str) -> Res<BTreeMap<u32, u64>> {
    nodes
        .iter()
        .map(|&n| Ok((n, node_meminfo(n, field)?)))
        .collect()
}

fn delta(after: &BTreeMap<u32, u64>, before: &BTreeMap<u32, u64>) -> BTreeMap<String, i64> {
    after
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                *a as i64 - before.get(n).copied().unwrap_or(0) as i64,
            )
        })
        .collect()
}

fn vmstat(field: &str) -> Res<u64> {
    let text = std::fs::read_to_string("/proc/vmstat")?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no {field} in /proc/vmstat").into())
}

/// A value of `len` bytes for `seed`: each 4 KiB page starts with the seed and the page's
/// number, the rest is zeros. The `tier` section stores values raw (compression off), so
/// the blob on disk is as large as the value; made and checked in a few instructions a page
/// (the pseudo-random fill this replaced took minutes of the emulated guest's time).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, page) in v.chunks_mut(4096).enumerate() {
        let head = [seed.to_le_bytes(), (i as u64).to_le_bytes()].concat();
        let n = head.len().min(page.len());
        page[..n].copy_from_slice(&head[..n]);
    }
    v
}

/// Is `v` exactly `pattern(seed, len)`?
fn is_pattern(v: &[u8], seed: u64, len: usize) -> bool {
    v.len() == len
        && v.chunks(4096).enumerate().all(|(i, page)| {
            let head = [seed.to_le_bytes(), (i as u64).to_le_bytes()].concat();
            let n = head.len().min(page.len());
            page[..n] == head[..n] && page[n..].iter().all(|&b| b == 0)
        })
}

/// Is `dir` on btrfs (statfs magic)?
fn on_btrfs(dir: &str) -> Res<bool> {
    let c = std::ffi::CString::new(dir)?;
    // SAFETY: statfs is plain old data, all-zero is valid; `c` is a live C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` and `st` are live for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(st.f_type as i64 == 0x9123_683E)
}

fn drop_caches() -> Res<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

const TIER_VALUES: u64 = 24;
const TIER_VALUE_BYTES: usize = 1 << 20;

/// Put TIER_VALUES values of 1 MiB on each node of `nodes` under `ns`; (node, key, seed).
fn put_all(
    cache: &numa_cache::store::Cache,
    ns: &str,
    nodes: &[u32],
) -> Res<Vec<(u32, String, u64)>> {
    use numa_cache::store::{Caller, PutOptions};
    let mut out = Vec::new();
    for &node in nodes {
        for i in 0..TIER_VALUES {
            let key = format!("n{node}-{i}");
            let seed = u64::from(node) << 32 | i;
            let opts = PutOptions {
                node: Some(node),
                ..PutOptions::default()
            };
            let got = cache.put(
                ns,
                &key,
                &pattern(seed, TIER_VALUE_BYTES),
                &opts,
                &Caller::default(),
            )?;
            if got != node {
                return Err(format!("{key} asked for node {node}, was put on {got}").into());
            }
            out.push((node, key, seed));
        }
    }
    Ok(out)
}

/// Read back every value of `node` (bytes compared); the count that matched.
fn read_node(
    cache: &numa_cache::store::Cache,
    ns: &str,
    values: &[(u32, String, u64)],
    node: u32,
) -> Res<u64> {
    let mut ok = 0;
    for (n, key, seed) in values.iter().filter(|v| v.0 == node) {
        let v = cache.get(ns, key, &numa_cache::store::Caller::default())?;
        if is_pattern(&v, *seed, TIER_VALUE_BYTES) {
            ok += 1;
        } else {
            return Err(format!("{key} on node {n} read back different bytes").into());
        }
    }
    Ok(ok)
}

/// The central claim, judged by the kernel: each node's values have their page cache and
/// their memory-tier copies in that node's memory, and the tier stays there while threads on
/// other nodes read it with NUMA balancing on.
fn tier(dir: &str) -> Res<Value> {
    use numa_cache::store::{Cache, CacheConfig};
    use std::sync::Arc;
    let t = topology();
    let mem_nodes: Vec<u32> = t
        .nodes
        .iter()
        .filter(|n| n.has_memory)
        .map(|n| n.node_id)
        .collect();
    let cpu_nodes = full_nodes(&t);
    if mem_nodes.len() < 2 || cpu_nodes.len() < 2 {
        return Err("the tier check needs two nodes with CPUs and memory".into());
    }
    if !on_btrfs(dir)? {
        return Err(
            format!("{dir} is not btrfs: the page-cache check needs a real filesystem").into(),
        );
    }
    // Every 1 MiB read-back buffer its own mapping, touched only by its reader and unmapped
    // after: glibc's dynamic threshold would otherwise serve them from malloc arenas that
    // other threads on other nodes touched first, and NUMA balancing then moves those
    // (unrelated to the tier, but counted in AnonPages and numa_pages_migrated).
    // SAFETY: mallopt only changes a malloc tunable.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
    // Debian's default; the defect of issue 13 shows only with it on.
    std::fs::write("/proc/sys/kernel/numa_balancing", "1")?;
    let balancing = std::fs::read_to_string("/proc/sys/kernel/numa_balancing")?
        .trim()
        .to_string();
    let bytes_per_node = TIER_VALUES * TIER_VALUE_BYTES as u64;
    // Values are stored raw (compression off): placement is what is judged, and zstd built
    // without optimization under emulation would take most of the VM's time.
    let topo = Arc::new(t.clone());

    // 1. Page cache, memory tier off: drop caches, read each node's values, see whose
    //    FilePages grew.
    let pc = {
        let cfg = CacheConfig {
            dir: format!("{dir}/pagecache").into(),
            memory_bytes: 0,
            compress_min_bytes: usize::MAX,
            ..CacheConfig::default()
        };
        let cache = Cache::open(cfg, Arc::clone(&topo))?;
        let values = put_all(&cache, "pc", &mem_nodes)?;
        cache.flush()?;
        let mut per = serde_json::Map::new();
        for &node in &mem_nodes {
            drop_caches()?;
            let before = per_node(&mem_nodes, "FilePages")?;
            let read = read_node(&cache, "pc", &values, node)?;
            let after = per_node(&mem_nodes, "FilePages")?;
            per.insert(
                node.to_string(),
                json!({ "values_read_back": read, "file_pages_delta": delta(&after, &before) }),
            );
        }
        per
    };

    // 2. Memory tier on: put (the tier copy is made then), then read every node's values
    //    from threads pinned to each other node for long enough for NUMA balancing's
    //    scanner (1 s scan delay, 1 s period) to act, and once unpinned. Only other-node
    //    threads read a page in the loop: the kernel's two-stage filter migrates a page once
    //    two hinting faults in a row come from the same other node, which is what a tier
    //    on the heap met in issue 13.
    let cfg = CacheConfig {
        dir: format!("{dir}/tier").into(),
        memory_bytes: bytes_per_node * 3 * mem_nodes.len() as u64,
        compress_min_bytes: usize::MAX,
        ..CacheConfig::default()
    };
    let cache = Arc::new(Cache::open(cfg, Arc::clone(&topo))?);
    let anon0 = per_node(&mem_nodes, "AnonPages")?;
    let values = Arc::new(put_all(&cache, "tier", &mem_nodes)?);
    drop_caches()?;
    let anon_put = per_node(&mem_nodes, "AnonPages")?;
    let maps_put = prefer_mappings("self")?;
    // Memory-tier hits read no disk: after the drop_caches above, a read served by the
    // shard's file would add its pages to pgpgin and FilePages; the tier's hits add nothing.
    let pgpgin0 = vmstat("pgpgin")?;
    let files0 = per_node(&mem_nodes, "FilePages")?;
    let hits0 = node_hits(&cache.stats_json(), &mem_nodes);
    let migrated0 = vmstat("numa_pages_migrated")?;
    let hint0 = vmstat("numa_hint_faults")?;
    let started = Instant::now();
    // One reader per CPU node, pinned there for its whole life (so its own heap stays on its
    // node), reading every other node's values round after round for 6 s (3 rounds at
    // least).
    let handles: Vec<_> = cpu_nodes
        .iter()
        .map(|&reader| {
            let cpus = cpus_of(&t, reader);
            let targets: Vec<u32> = mem_nodes.iter().copied().filter(|&n| n != reader).collect();
            let (cache, values) = (Arc::clone(&cache), Arc::clone(&values));
            std::thread::spawn(move || -> Result<(u64, u64, u64), String> {
                policy::set_affinity(0, &cpus).map_err(|e| e.to_string())?;
                let (mut rounds, mut ok) = (0u64, 0u64);
                while started.elapsed() < Duration::from_secs(6) || rounds < 3 {
                    rounds += 1;
                    for &n in &targets {
                        ok += read_node(&cache, "tier", &values, n).map_err(|e| e.to_string())?;
                    }
                }
                Ok((rounds, ok, rounds * TIER_VALUES * targets.len() as u64))
            })
        })
        .collect();
    let (mut rounds, mut reads_ok, mut reads_expected) = (Vec::new(), 0u64, 0u64);
    for h in handles {
        let (r, ok, expected) = h.join().map_err(|_| "reader panicked")??;
        rounds.push(r);
        reads_ok += ok;
        reads_expected += expected;
    }
    // What each node's values were read: by every reader on another node, each round.
    let reads_per_node: BTreeMap<String, u64> = mem_nodes
        .iter()
        .map(|&n| {
            let by_others: u64 = cpu_nodes
                .iter()
                .zip(&rounds)
                .filter(|(r, _)| **r != n)
                .map(|(_, k)| k * TIER_VALUES)
                .sum();
            (n.to_string(), by_others + TIER_VALUES)
        })
        .collect();
    // And once from this unpinned thread.
    for &n in &mem_nodes {
        reads_ok += read_node(&cache, "tier", &values, n)?;
        reads_expected += TIER_VALUES;
    }
    let anon_read = per_node(&mem_nodes, "AnonPages")?;
    let migrated = vmstat("numa_pages_migrated")? - migrated0;
    let hint_faults = vmstat("numa_hint_faults")? - hint0;
    let maps_read = prefer_mappings("self")?;
    let pgpgin_kib = vmstat("pgpgin")? - pgpgin0;
    let files_read = per_node(&mem_nodes, "FilePages")?;
    let stats = cache.stats_json();
    let hits = node_hits(&stats, &mem_nodes);
    let reads_of: BTreeMap<String, u64> = mem_nodes
        .iter()
        .map(|n| (n.to_string(), hits[&n.to_string()] - hits0[&n.to_string()]))
        .collect();
    Ok(json!({
        "numa_balancing": balancing,
        "nodes": mem_nodes,
        "bytes_per_node": bytes_per_node,
        "values_per_node": TIER_VALUES,
        "page_cache": pc,
        "tier_anon_delta_after_put": delta(&anon_put, &anon0),
        "tier_anon_delta_after_reads": delta(&anon_read, &anon0),
        "tier_prefer_pages_after_put": maps_put,
        "tier_prefer_pages_after_reads": maps_read,
        "read_rounds": rounds,
        "reads_ok": reads_ok,
        "reads_expected": reads_expected,
        "numa_pages_migrated_during_reads": migrated,
        "numa_hint_faults_during_reads": hint_faults,
        "read_ms": started.elapsed().as_millis() as u64,
        "pgpgin_kib_during_reads": pgpgin_kib,
        "file_pages_delta_during_reads": delta(&files_read, &files0),
        "hits_during_reads": reads_of,
        "reads_per_node": reads_per_node,
        "stats": stats,
    }))
}

/// Hits per node of the engine's statistics JSON (`node_distribution.N.hits`).
fn node_hits(stats: &Value, nodes: &[u32]) -> BTreeMap<String, u64> {
    nodes
        .iter()
        .map(|n| {
            let k = n.to_string();
            let h = stats["node_distribution"][&k]["hits"].as_u64().unwrap_or(0);
            (k, h)
        })
        .collect()
}

// ---- The daemon: numa-cached on a bus of its own, driven by pinned client processes ----

/// The bus config the initramfs carries (build-initramfs.sh): one listening socket, anyone
/// may own and call anything (the guest runs as root only).
const BUS_CONFIG: &str = "/etc/numalab-bus.conf";
/// How long the daemon may take to open its cache and serve its name under emulation.
const DAEMON_READY_WITHIN: Duration = Duration::from_secs(180);
/// Values the daemon sections put per node or spread: 1 MiB each.
const DAEMON_VALUES: u64 = 8;
const SPREAD_VALUES: u64 = 16;

/// Kills and reaps a child process when dropped (the section may fail half-way).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A dbus-daemon of our own; its address.
fn start_bus() -> Res<(Reaped, String)> {
    std::fs::create_dir_all("/run/dbus")?;
    let mut bus = Command::new("/bin/dbus-daemon")
        .args([
            &format!("--config-file={BUS_CONFIG}"),
            "--nofork",
            "--print-address=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(bus.stdout.take().ok_or("dbus-daemon stdout")?).read_line(&mut line)?;
    let address = line.trim().to_string();
    if address.is_empty() {
        return Err("dbus-daemon printed no address".into());
    }
    Ok((Reaped(bus), address))
}

/// numa-cached on `dir` with `strategy`, started and serving its name.
fn start_daemon(address: &str, dir: &str, strategy: &str) -> Res<Reaped> {
    let log = std::fs::File::create(format!("/tmp/numa-cached-{strategy}.log"))?;
    let kid = Command::new("/bin/numa-cached")
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .env("OPDBUS_NUMA_STRATEGY", strategy)
        .env("OPDBUS_CACHE_DIR", dir)
        .env("OPDBUS_CACHE_MAX_BYTES", "256M")
        .env("OPDBUS_CACHE_MEMORY_BYTES", "256M")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut kid = Reaped(kid);
    let deadline = Instant::now() + DAEMON_READY_WITHIN;
    loop {
        if let Some(status) = kid.0.try_wait()? {
            return Err(format!(
                "numa-cached ({strategy}) exited at start: {status}: {}",
                daemon_log(strategy)
            )
            .into());
        }
        let up = numa_cache_client::blocking::Client::connect(address).and_then(|c| c.ping());
        if up.is_ok() {
            return Ok(kid);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "numa-cached ({strategy}) did not serve within {DAEMON_READY_WITHIN:?}: {}",
                daemon_log(strategy)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn daemon_log(strategy: &str) -> String {
    std::fs::read_to_string(format!("/tmp/numa-cached-{strategy}.log")).unwrap_or_default()
}

/// Stop the daemon as systemd would (SIGTERM) and wait for its clean stop.
fn stop_daemon(mut kid: Reaped) -> Res<()> {
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(kid.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(120);
    while kid.0.try_wait()?.is_none() {
        if Instant::now() > deadline {
            return Err("numa-cached did not stop within 120 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Run `lab_probe client ARGS` pinned to `cpus`; its JSON.
fn run_client(cpus: &[u32], args: &[String]) -> Res<Value> {
    let cpus = cpus
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(std::env::current_exe()?)
        .arg("client")
        .arg(&cpus)
        .args(args)
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "client {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "client {args:?} failed: {v} {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(v)
}

/// The 1 MiB value of `key`: incompressible (an xorshift stream seeded by the key), so
/// the daemon stores it raw and a read served from the shard's file instead of the memory
/// tier shows as a whole MiB in pgpgin and FilePages (a compressible value read from disk
/// would show as a few KiB and pass for a memory-tier hit: seen when the tier was broken).
fn page_value(key: &str) -> Vec<u8> {
    let mut x = key_seed(key) | 1;
    let mut v = Vec::with_capacity(TIER_VALUE_BYTES);
    while v.len() < TIER_VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn key_seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `lab_probe client CPUS put ADDR NS PREFIX COUNT` or
/// `lab_probe client CPUS get ADDR NS KEYS(comma) SECONDS`: pinned to CPUS for its whole
/// life (every thread, so the daemon sees the caller on that node), puts COUNT values
/// PREFIX0.. and prints the node each was put on, or reads KEYS (bytes checked) for at least
/// SECONDS and one round, and prints how many reads of each key matched.
fn client(args: &[String]) -> Res<Value> {
    let cpus: Vec<u32> = args.first().map(|c| parse_list(c)).unwrap_or_default();
    if !cpus.is_empty() {
        policy::set_affinity(0, &cpus)?;
    }
    let arg = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("client: missing argument {i}").into())
    };
    let c = numa_cache_client::blocking::Client::connect(arg(2)?)?;
    let ns = arg(3)?;
    match arg(1)? {
        "put" => {
            let count: u64 = arg(5)?.parse()?;
            let mut nodes = serde_json::Map::new();
            for i in 0..count {
                let key = format!("{}{i}", arg(4)?);
                let node = c.put(ns, &key, &page_value(&key))?;
                nodes.insert(key, json!(node));
            }
            Ok(json!({ "cpu": cpu_now()?, "nodes": nodes }))
        }
        "get" => {
            let keys: Vec<&str> = arg(4)?.split(',').collect();
            let seconds: u64 = arg(5)?.parse()?;
            let started = Instant::now();
            let mut reads: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                for &key in &keys {
                    let v = c.get(ns, key)?.ok_or_else(|| format!("{key}: a miss"))?;
                    if v != page_value(key) {
                        return Err(format!("{key} read back different bytes").into());
                    }
                    *reads.entry(key.to_string()).or_default() += 1;
                }
                if started.elapsed() >= Duration::from_secs(seconds) {
                    break;
                }
            }
            Ok(json!({ "cpu": cpu_now()?, "reads": reads }))
        }
        other => Err(format!("client: unknown verb {other}").into()),
    }
}

/// Per node, the daemon's hits (`GetStats`, node_distribution.N.hits).
fn daemon_hits(address: &str, nodes: &[u32]) -> Res<BTreeMap<String, u64>> {
    let stats = numa_cache_client::blocking::Client::connect(address)?.get_stats()?;
    Ok(node_hits(&stats, nodes))
}

/// What the kernel says of the daemon `pid` now: its memory tier (`prefer:N` mappings of its
/// numa_maps) and its pool workers (allowed CPUs, policy).
fn daemon_view(pid: &str) -> Res<Value> {
    Ok(json!({
        "tier_prefer_pages": prefer_mappings(pid)?,
        "workers": pool_threads(pid)?,
    }))
}

/// Read `keys` (by entry node) from a client on `cpus` after a drop_caches, with the
/// counters that tell a memory-tier hit from a read of the shard's file.
fn daemon_reads(
    address: &str,
    nodes: &[u32],
    readers: &[(u32, Vec<String>)],
    t: &Topology,
    seconds: u64,
) -> Res<Value> {
    drop_caches()?;
    let hits0 = daemon_hits(address, nodes)?;
    let pgpgin0 = vmstat("pgpgin")?;
    let files0 = per_node(nodes, "FilePages")?;
    let migrated0 = vmstat("numa_pages_migrated")?;
    // Every reader at once, each pinned to its node.
    let runs: Vec<_> = readers
        .iter()
        .map(|(node, keys)| {
            let cpus = cpus_of(t, *node);
            let args: Vec<String> = vec![
                "get".into(),
                address.into(),
                "lab".into(),
                keys.join(","),
                seconds.to_string(),
            ];
            std::thread::spawn(move || run_client(&cpus, &args).map_err(|e| e.to_string()))
        })
        .collect();
    let mut reads: BTreeMap<String, u64> = BTreeMap::new();
    for r in runs {
        let v = r.join().map_err(|_| "reader panicked")??;
        for (k, n) in v["reads"].as_object().ok_or("reads")? {
            *reads.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let hits1 = daemon_hits(address, nodes)?;
    let files1 = per_node(nodes, "FilePages")?;
    Ok(json!({
        "reads_per_key": reads,
        "hits_delta": nodes.iter().map(|n| {
            let k = n.to_string();
            (k.clone(), hits1[&k] - hits0[&k])
        }).collect::<BTreeMap<_, _>>(),
        "pgpgin_kib": vmstat("pgpgin")? - pgpgin0,
        "file_pages_delta": delta(&files1, &files0),
        "numa_pages_migrated": vmstat("numa_pages_migrated")? - migrated0,
    }))
}

/// The daemon's real paths: placement by the caller's node (`local_node`, the default) and
/// by key hash (`interleave`), each judged by where the kernel put the daemon's memory tier
/// and by whether reads after a drop_caches were memory-tier hits.
fn daemon(dir: &str) -> Res<Value> {
    let t = topology();
    let nodes = mem_nodes(&t);
    let cpu_nodes = full_nodes(&t);
    if cpu_nodes.len() < 2 {
        return Err("the daemon check needs two nodes with CPUs and memory".into());
    }
    std::fs::write("/proc/sys/kernel/numa_balancing", "1")?;
    let (_bus, address) = start_bus()?;
    let count = DAEMON_VALUES.to_string();

    // local_node: a client on each node puts; its values go to its node.
    let d = start_daemon(&address, &format!("{dir}/daemon-local"), "local_node")?;
    let pid = d.0.id().to_string();
    let mut put_nodes = serde_json::Map::new();
    for &n in &cpu_nodes {
        let args = ["put", &address, "lab", &format!("l{n}-"), &count].map(String::from);
        let v = run_client(&cpus_of(&t, n), &args)?;
        put_nodes.insert(n.to_string(), v);
    }
    let after_put = daemon_view(&pid)?;
    // Each node's values read by a client on another node, for long enough for NUMA
    // balancing's scanner (1 s delay, 1 s period) to act on the tier if it could.
    let readers: Vec<(u32, Vec<String>)> = cpu_nodes
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let other = cpu_nodes[(i + 1) % cpu_nodes.len()];
            (
                r,
                (0..DAEMON_VALUES)
                    .map(|k| format!("l{other}-{k}"))
                    .collect(),
            )
        })
        .collect();
    let reads = daemon_reads(&address, &nodes, &readers, &t, 3)?;
    let after_reads = daemon_view(&pid)?;
    stop_daemon(d)?;
    let local = json!({
        "puts_by_client_node": put_nodes,
        "after_put": after_put,
        "reads": reads,
        "after_reads": after_reads,
    });

    // interleave: one client's values spread over every node with memory by key.
    let d = start_daemon(&address, &format!("{dir}/daemon-interleave"), "interleave")?;
    let pid = d.0.id().to_string();
    let first = cpu_nodes[0];
    let args = ["put", &address, "lab", "i-", &SPREAD_VALUES.to_string()].map(String::from);
    let puts = run_client(&cpus_of(&t, first), &args)?;
    let after_put = daemon_view(&pid)?;
    let keys: Vec<String> = (0..SPREAD_VALUES).map(|k| format!("i-{k}")).collect();
    let reads = daemon_reads(&address, &nodes, &[(first, keys)], &t, 0)?;
    stop_daemon(d)?;
    let spread = json!({ "puts": puts, "after_put": after_put, "reads": reads });

    Ok(json!({
        "nodes": nodes,
        "cpu_nodes": cpu_nodes,
        "value_bytes": TIER_VALUE_BYTES,
        "values_per_node": DAEMON_VALUES,
        "local_node": local,
        "interleave": spread,
    }))
}

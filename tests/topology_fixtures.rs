//! The topology reader against hwloc on real machines: for every `NAME.test` in
//! tests/data/hwloc-linux/, unpack the captured tree it names, read it with
//! `topology::detect`, and compare node ids, each node's CPUs, memory, distances and the
//! allowed sets with what hwloc's `lstopo` printed for the same tree (`.console`, or `.xml`).
//! Every expectation is read from hwloc's file, so another captured machine dropped in
//! with its `.test` is checked the same way.

mod support;

use numa_cache::topology::{self, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hwloc-linux")
}

/// One `.test` file: which tarball, which expected output, which lstopo options.
struct Case {
    name: String,
    source: String,
    target: String,
    options: Vec<String>,
}

fn read_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("test") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        cases.push(Case {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            source: field("source:").unwrap_or_else(|| panic!("{path:?} has no source:")),
            target: field("target:").unwrap_or_else(|| panic!("{path:?} has no target:")),
            options: field("options:")
                .map(|o| o.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// Unpack `tarball` into a fresh temporary folder; returns it and the one root inside.
fn unpack(tarball: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xjf")
        .arg(tarball)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tar -xjf {tarball:?} failed");
    let roots: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(roots.len(), 1, "{tarball:?} should unpack to one folder");
    let root = roots[0].clone();
    (dir, root)
}

/// A memory size as hwloc printed it: the range of byte counts it may stand for.
#[derive(Debug, Clone, Copy)]
struct MemRange {
    lo: u64,
    hi: u64,
}

impl MemRange {
    fn exact(bytes: u64) -> MemRange {
        MemRange {
            lo: bytes,
            hi: bytes,
        }
    }
    /// `95GiB`: hwloc rounds to a whole unit, so allow one unit either way.
    fn printed(text: &str) -> MemRange {
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap();
        let value: u64 = text[..split].parse().unwrap();
        let unit: u64 = match &text[split..] {
            "B" => 1,
            "KB" | "KiB" | "kB" => 1 << 10,
            "MB" | "MiB" => 1 << 20,
            "GB" | "GiB" => 1 << 30,
            "TB" | "TiB" => 1 << 40,
            other => panic!("unknown memory unit {other:?} in {text:?}"),
        };
        MemRange {
            lo: value.saturating_sub(1) * unit,
            hi: (value + 1) * unit,
        }
    }
    fn contains(&self, bytes: u64) -> bool {
        (self.lo..=self.hi).contains(&bytes)
    }
}

/// One NUMA node as hwloc shows it.
#[derive(Debug)]
struct ExpectedNode {
    memory: MemRange,
    /// Shown with `(disallowed)` (only in `--disallowed` outputs).
    disallowed: bool,
    /// The group of nodes sharing this node's parent object: hwloc attaches memory-side
    /// nodes (HBM, CXL) next to a CPU node, and its output cannot tell their CPUs apart,
    /// so CPUs are compared for the whole group.
    group: usize,
}

/// Everything hwloc's expected file says that we compare.
#[derive(Debug, Default)]
struct Expected {
    /// Node os index -> node.
    nodes: BTreeMap<u32, ExpectedNode>,
    /// For each group of nodes with the same parent: the PUs local to it.
    group_cpus: Vec<BTreeSet<u32>>,
    /// From XML: node -> (its allowed CPUs: `cpuset`, its online CPUs: `complete_cpuset`).
    xml_cpus: BTreeMap<u32, (BTreeSet<u32>, BTreeSet<u32>)>,
    /// Every PU shown (with `--disallowed`: including disallowed ones).
    pus: BTreeSet<u32>,
    /// PUs marked `(disallowed)`.
    disallowed_pus: BTreeSet<u32>,
    /// `(from, to) -> distance` by os index, when hwloc printed a latency matrix.
    distances: BTreeMap<(u32, u32), u32>,
    /// The output shows every node and PU, marking disallowed ones (`--disallowed`).
    whole_system: bool,
}

struct ConsoleObject {
    kind: String,
    os_index: Option<u32>,
    attrs: String,
    disallowed: bool,
    parent: Option<usize>,
}

fn parse_console(text: &str, whole_system: bool) -> Expected {
    let mut objects: Vec<ConsoleObject> = Vec::new();
    let mut stack: Vec<(usize, usize)> = Vec::new(); // (indent, object)
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("depth ") || trimmed.starts_with("Special depth") {
            break;
        }
        if trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|&(i, _)| i >= indent) {
            stack.pop();
        }
        // Without -v, lstopo collapses single-child chains: "Package L#0 + Core L#0 + PU
        // L#0 (P#0)". Each link is a child of the one before it.
        let links: Vec<&str> = trimmed.split(" + ").collect();
        for (n, link) in links.iter().enumerate() {
            // "NUMANode(MCDRAM) L#1 (P#7 local=2048MiB total=2048MiB)": the type (with an
            // optional subtype), then attributes anywhere on the line.
            let kind = link.split([' ', '(']).next().unwrap().to_string();
            let os_index = link
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .find_map(|a| a.strip_prefix("P#"))
                .and_then(|v| v.parse().ok());
            objects.push(ConsoleObject {
                kind,
                os_index,
                attrs: link.to_string(),
                disallowed: n + 1 == links.len() && link.ends_with("(disallowed)"),
                parent: stack.last().map(|&(_, o)| o),
            });
            stack.push((indent, objects.len() - 1));
        }
    }

    let mut e = Expected {
        whole_system,
        ..Expected::default()
    };
    let is_ancestor = |anc: usize, mut o: usize| loop {
        if o == anc {
            return true;
        }
        match objects[o].parent {
            Some(p) => o = p,
            None => return false,
        }
    };
    // NUMANodes by logical index (their order in the output), and their parents.
    let numa: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i].kind == "NUMANode")
        .collect();
    // A NUMANode's locality is its first ancestor that is not a memory-side cache
    // (`MemCache` objects sit between a node and the CPU-side object it is attached to).
    let attach = |n: usize| {
        let mut p = objects[n].parent.unwrap();
        while objects[p].kind == "MemCache" {
            p = objects[p].parent.unwrap();
        }
        p
    };
    let mut parents: Vec<usize> = numa.iter().map(|&n| attach(n)).collect();
    parents.sort_unstable();
    parents.dedup();
    let pus: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i].kind == "PU")
        .collect();
    for &pu in &pus {
        let cpu = objects[pu].os_index.unwrap();
        e.pus.insert(cpu);
        if objects[pu].disallowed {
            e.disallowed_pus.insert(cpu);
        }
    }
    for &parent in &parents {
        // A node's local PUs: those below its parent, minus those below a deeper parent.
        let cpus = pus
            .iter()
            .filter(|&&pu| is_ancestor(parent, pu))
            .filter(|&&pu| {
                !parents
                    .iter()
                    .any(|&p| p != parent && is_ancestor(parent, p) && is_ancestor(p, pu))
            })
            .map(|&pu| objects[pu].os_index.unwrap())
            .collect();
        e.group_cpus.push(cpus);
    }
    for &n in &numa {
        let o = &objects[n];
        // "local=8190MiB" (-v), or a bare size like "16GB" (default verbosity).
        let tokens = || {
            o.attrs
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .filter(|t| !t.is_empty())
        };
        let is_size = |t: &&str| {
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && t[digits..].ends_with('B')
        };
        let local = tokens()
            .find_map(|a| a.strip_prefix("local="))
            .or_else(|| tokens().find(is_size))
            .unwrap_or_else(|| panic!("NUMANode without a memory size in {:?}", o.attrs));
        let group = parents.binary_search(&attach(n)).unwrap();
        e.nodes.insert(
            o.os_index.unwrap(),
            ExpectedNode {
                memory: MemRange::printed(local),
                disallowed: o.disallowed,
                group,
            },
        );
    }

    // The latency matrix, rows and columns by logical index (or by os index with -p).
    let mut rest = text.lines().skip_while(|l| {
        !(l.starts_with("Relative latency matrix")
            && l.contains("NUMALatency")
            && (l.contains("by logical indexes") || l.contains("by os indexes")))
    });
    if let Some(title) = rest.next() {
        let by_os = title.contains("by os indexes");
        let header: Vec<usize> = rest
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        let os = |index: usize| {
            if by_os {
                index as u32
            } else {
                objects[numa[index]].os_index.unwrap()
            }
        };
        for _ in 0..header.len() {
            let row: Vec<u32> = rest
                .next()
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            let from = os(row[0] as usize);
            for (col, &d) in header.iter().zip(&row[1..]) {
                e.distances.insert((from, os(*col)), d);
            }
        }
    }
    e
}

/// The value of `name="..."` in an XML tag.
fn xml_attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// An hwloc bitmap (`0x0000003f`, `0x00000001,0x00000000`: 32-bit words, most significant
/// first), written here independently of the reader under test.
fn hwloc_bitmap(text: &str) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for (i, word) in text.rsplit(',').enumerate() {
        let hex = word.trim_start_matches("0x");
        assert!(!hex.starts_with("f...f"), "infinite bitmap {text:?}");
        let value = u32::from_str_radix(hex, 16).unwrap();
        for bit in 0..32 {
            if value & (1 << bit) != 0 {
                set.insert(i as u32 * 32 + bit);
            }
        }
    }
    set
}

fn parse_xml(text: &str) -> Expected {
    let mut e = Expected::default();
    let tags = text
        .split('<')
        .skip(1)
        .map(|t| &t[..t.find('>').unwrap_or(t.len())]);
    let mut numa_by_logical = Vec::new();
    let mut dist_tag = None;
    for tag in tags {
        if tag.starts_with("object ") {
            match xml_attr(tag, "type") {
                Some("Machine") => {
                    e.pus = hwloc_bitmap(xml_attr(tag, "cpuset").unwrap());
                }
                Some("NUMANode") => {
                    let os: u32 = xml_attr(tag, "os_index").unwrap().parse().unwrap();
                    let bytes: u64 = xml_attr(tag, "local_memory").unwrap().parse().unwrap();
                    let allowed = hwloc_bitmap(xml_attr(tag, "cpuset").unwrap());
                    let complete = hwloc_bitmap(xml_attr(tag, "complete_cpuset").unwrap());
                    e.xml_cpus.insert(os, (allowed, complete));
                    e.nodes.insert(
                        os,
                        ExpectedNode {
                            memory: MemRange::exact(bytes),
                            disallowed: false,
                            group: usize::MAX,
                        },
                    );
                    numa_by_logical.push(os);
                }
                _ => {}
            }
        } else if tag.starts_with("distances2 ")
            && xml_attr(tag, "name") == Some("NUMALatency")
            && dist_tag.is_none()
        {
            dist_tag = Some(tag);
        }
    }
    // The matrix: numbers are element text, so read the block of the raw document.
    if let Some(tag) = dist_tag {
        let mut dist_indexes: Vec<u32> = Vec::new();
        let mut dist_values: Vec<u32> = Vec::new();
        let start = text.find(tag).unwrap();
        let block = &text[start..start + text[start..].find("</distances2>").unwrap()];
        for part in block.split('<').skip(1) {
            let (name, body) = part.split_once('>').unwrap_or((part, ""));
            let numbers = body.split_whitespace().map(|v| v.parse::<u64>().unwrap());
            if name.starts_with("indexes") {
                dist_indexes.extend(numbers.map(|v| v as u32));
            } else if name.starts_with("u64values") {
                dist_values.extend(numbers.map(|v| v as u32));
            }
        }
        let n: usize = xml_attr(tag, "nbobjs").unwrap().parse().unwrap();
        let ids: Vec<u32> = match xml_attr(tag, "indexing") {
            Some("os") => dist_indexes.clone(),
            _ => numa_by_logical.clone(),
        };
        assert_eq!(ids.len(), n);
        assert_eq!(dist_values.len(), n * n);
        for (r, &from) in ids.iter().enumerate() {
            for (c, &to) in ids.iter().enumerate() {
                e.distances.insert((from, to), dist_values[r * n + c]);
            }
        }
    }
    e
}

fn set(list: &[u32]) -> BTreeSet<u32> {
    list.iter().copied().collect()
}

/// Compare what we read with what hwloc printed; returns every mismatch in words.
fn compare(t: &Topology, e: &Expected) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    let ours_all: BTreeSet<u32> = t.nodes.iter().map(|n| n.node_id).collect();
    let ours_allowed = set(&t.allowed_nodes);
    let shown: BTreeSet<u32> = e.nodes.keys().copied().collect();
    if e.whole_system {
        check(
            ours_all == shown,
            format!("node ids: ours {ours_all:?}, hwloc {shown:?}"),
        );
        let hwloc_allowed: BTreeSet<u32> = e
            .nodes
            .iter()
            .filter(|(_, n)| !n.disallowed)
            .map(|(&id, _)| id)
            .collect();
        check(
            ours_allowed == hwloc_allowed,
            format!("allowed nodes: ours {ours_allowed:?}, hwloc {hwloc_allowed:?}"),
        );
        let hwloc_cpus: BTreeSet<u32> = e.pus.difference(&e.disallowed_pus).copied().collect();
        check(
            set(&t.allowed_cpus) == hwloc_cpus,
            format!(
                "allowed CPUs: ours {:?}, hwloc {hwloc_cpus:?}",
                t.allowed_cpus
            ),
        );
    } else {
        // hwloc's default output hides nodes and CPUs the cpuset excludes.
        check(
            ours_allowed == shown,
            format!("allowed nodes: ours {ours_allowed:?}, hwloc shows {shown:?}"),
        );
        check(
            set(&t.allowed_cpus) == e.pus,
            format!(
                "allowed CPUs: ours {:?}, hwloc shows {:?}",
                t.allowed_cpus, e.pus
            ),
        );
    }

    for (&id, exp) in &e.nodes {
        let Some(node) = t.node(id) else {
            check(false, format!("node {id} shown by hwloc is missing"));
            continue;
        };
        check(
            exp.memory.contains(node.memory_total_bytes),
            format!(
                "node {id} memory {} bytes, hwloc {}..={}",
                node.memory_total_bytes, exp.memory.lo, exp.memory.hi
            ),
        );
        if let Some((allowed, complete)) = e.xml_cpus.get(&id) {
            check(
                set(&node.allowed_cpus) == *allowed,
                format!(
                    "node {id} allowed CPUs: ours {:?}, hwloc {allowed:?}",
                    node.allowed_cpus
                ),
            );
            // complete_cpuset: the node's online CPUs, allowed or not.
            check(
                set(&node.cpus) == *complete,
                format!(
                    "node {id} CPUs: ours {:?}, hwloc complete_cpuset {complete:?}",
                    node.cpus
                ),
            );
        }
    }
    // CPUs, per group of nodes sharing a parent in hwloc's tree.
    for (g, expected) in e.group_cpus.iter().enumerate() {
        let members: Vec<u32> = e
            .nodes
            .iter()
            .filter(|(_, n)| n.group == g)
            .map(|(&id, _)| id)
            .collect();
        let mut union = BTreeSet::new();
        for &id in &members {
            if let Some(node) = t.node(id) {
                let cpus = if e.whole_system {
                    &node.cpus
                } else {
                    &node.allowed_cpus
                };
                union.extend(cpus.iter().copied());
            }
        }
        check(
            union == *expected,
            format!("CPUs of node(s) {members:?}: ours {union:?}, hwloc {expected:?}"),
        );
    }
    for (&(from, to), &d) in &e.distances {
        let ours = t.node(from).and_then(|n| n.distances.get(&to)).copied();
        check(
            ours == Some(d),
            format!("distance {from}->{to}: ours {ours:?}, hwloc {d}"),
        );
    }
    bad
}

/// Captures whose data placement must not trust, with the reason, by `.test` name.
const UNTRUSTED: &[(&str, &str)] = &[];

#[test]
fn every_fixture_agrees_with_hwloc() {
    if !support::require_tool("tar", "tar") || !support::require_tool("bzip2", "bzip2") {
        return;
    }
    let cases = read_cases();
    assert!(
        cases.len() >= 12,
        "expected the hwloc fixtures, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    // Several cases share a tarball (thousands of files each): unpack each once.
    let mut unpacked: BTreeMap<String, (tempfile::TempDir, PathBuf)> = BTreeMap::new();
    for case in &cases {
        let (_, root) = unpacked
            .entry(case.source.clone())
            .or_insert_with(|| unpack(&data_dir().join(&case.source)));
        let t = topology::detect(root);
        let text = std::fs::read_to_string(data_dir().join(&case.target)).unwrap();
        let expected = if case.target.ends_with(".xml") {
            parse_xml(&text)
        } else {
            // hwloc 1.x spelled --disallowed as --whole-system.
            let whole = case
                .options
                .iter()
                .any(|o| o == "--disallowed" || o == "--whole-system");
            parse_console(&text, whole)
        };
        assert!(
            !expected.nodes.is_empty(),
            "{}: no NUMANode in {}",
            case.name,
            case.target
        );
        let bad = compare(&t, &expected);
        eprintln!(
            "{}: {} nodes, {} hwloc nodes, {} distances compared, warnings {:?}: {}",
            case.name,
            t.nodes.len(),
            expected.nodes.len(),
            expected.distances.len(),
            t.warnings,
            if bad.is_empty() { "ok" } else { "MISMATCH" }
        );
        for b in bad {
            failures.push(format!("{} ({}): {b}", case.name, case.target));
        }
        // The JSON every client sees carries the same facts.
        let json = t.to_json();
        assert_eq!(json["nodes"].as_array().unwrap().len(), t.nodes.len());

        // The known answer: without a node folder (a kernel without NUMA) placement is off;
        // with one it is on, except for the captures listed in UNTRUSTED with the reason
        // (none of these machines has firmware data bad enough today). Our own warnings do
        // not excuse a false here: they come from the code under test.
        let has_node_dir = root.join("sys/devices/system/node").is_dir();
        let untrusted = UNTRUSTED.iter().any(|(name, _)| *name == case.name);
        if t.numa_available != (has_node_dir && !untrusted) {
            failures.push(format!(
                "{}: numa_available {} with node folder {has_node_dir}; warnings {:?}",
                case.name, t.numa_available, t.warnings
            ));
        }
        if !t.numa_available {
            assert!(
                !t.warnings.is_empty(),
                "{}: not available but no warning",
                case.name
            );
            assert_eq!(topology::optimal_strategy(&t).as_str(), "disabled");
        }
    }
    assert!(
        failures.is_empty(),
        "disagreements with hwloc:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_cli_reads_both_spellings_and_leaves_mistakes_to_its_parser() {
    if !support::require_tool("tar", "tar") || !support::require_tool("bzip2", "bzip2") {
        return;
    }
    let (_tmp, root) = unpack(&data_dir().join("16amd64-8n2c-cpusets.tar.bz2"));
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_numacachectl"))
            .args(args)
            .output()
            .unwrap()
    };
    let joined = std::ffi::OsString::from(format!("--fs-root={}", root.display()));
    let a = run(&[
        "topology".as_ref(),
        "--json".as_ref(),
        "--fs-root".as_ref(),
        root.as_os_str(),
    ]);
    let b = run(&["topology".as_ref(), joined.as_os_str(), "--json".as_ref()]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
    // Mistakes get the argument parser's own refusal (exit status 2, naming the argument).
    let bad = run(&["topology".as_ref(), "--bogus".as_ref()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--bogus"));
    let missing = run(&["topology".as_ref(), "--fs-root".as_ref()]);
    assert_eq!(missing.status.code(), Some(2));
    let help = run(&["topology".as_ref(), "--help".as_ref()]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--fs-root"));
}

#[test]
fn the_cli_prints_the_same_json_for_a_captured_tree() {
    if !support::require_tool("tar", "tar") || !support::require_tool("bzip2", "bzip2") {
        return;
    }
    let (_tmp, root) = unpack(&data_dir().join("16amd64-8n2c-cpusets.tar.bz2"));
    let out = Command::new(env!("CARGO_BIN_EXE_numacachectl"))
        .args(["topology", "--json", "--fs-root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Compared with what hwloc's lstopo printed for the same tree (not with detect(), the
    // code the CLI itself runs): the allowed nodes, the allowed PUs, and each node's CPUs.
    let console = std::fs::read_to_string(data_dir().join("16amd64-8n2c-cpusets.console")).unwrap();
    let hwloc = parse_console(&console, false);
    let ids = |v: &serde_json::Value| -> BTreeSet<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let allowed_nodes = ids(&printed["allowed_nodes"]);
    let allowed_cpus = ids(&printed["allowed_cpus"]);
    assert_eq!(
        allowed_nodes,
        hwloc.nodes.keys().copied().collect::<BTreeSet<u32>>()
    );
    assert_eq!(allowed_cpus, hwloc.pus);
    for (group, cpus) in hwloc.group_cpus.iter().enumerate() {
        let printed_cpus: BTreeSet<u32> = printed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                let id = n["node_id"].as_u64().unwrap() as u32;
                hwloc.nodes.get(&id).is_some_and(|e| e.group == group)
            })
            .flat_map(|n| ids(&n["cpu_list"]))
            .filter(|c| allowed_cpus.contains(c))
            .collect();
        assert_eq!(&printed_cpus, cpus, "CPUs of hwloc's node group {group}");
    }
    assert_eq!(printed["allowed_nodes"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(printed["nodes"][0]["allowed"], false);
    assert_eq!(printed["optimal_strategy"], "local_node");
}

/// The expected-output reader itself, on the console spellings other hwloc captures use:
/// subtypes (`NUMANode(MCDRAM)`), memory-side caches between a node and its CPUs, collapsed
/// single-child chains and sizes without `local=`.
#[test]
fn console_reader_handles_other_lstopo_spellings() {
    let console = "\
Machine (P#0 total=6GiB)
  Package L#0 (P#0)
    MemCache L#0 (size=1024MiB)
      NUMANode L#0 (P#0 local=1024MiB total=1024MiB)
    NUMANode(MCDRAM) L#1 (P#2 local=2048MiB total=2048MiB)
    Core L#0 + PU L#0 (P#0)
    Core L#1 + PU L#1 (P#1)
  Package L#1 (P#1) + NUMANode L#2 (P#1 3GB)
  Package L#2 + Core L#2 + PU L#2 (P#5)
depth 0:           1 Machine (type #0)
Relative latency matrix (name NUMALatency kind 5) between 3 NUMANodes (depth -3) by logical indexes:
 index     0     1     2
     0    10    20    30
     1    21    10    31
     2    22    23    10
";
    let e = parse_console(console, false);
    assert_eq!(e.nodes.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    // Nodes 0 and 2 share Package L#0 (node 0 through its memory-side cache).
    assert_eq!(e.nodes[&0].group, e.nodes[&2].group);
    assert_eq!(e.group_cpus[e.nodes[&0].group], BTreeSet::from([0, 1]));
    // A node collapsed into its package's line has no PUs; PU 5 has no node.
    assert_eq!(e.group_cpus[e.nodes[&1].group], BTreeSet::new());
    assert_eq!(e.pus, BTreeSet::from([0, 1, 5]));
    assert!(e.nodes[&1].memory.contains(3 << 30));
    assert!(e.nodes[&2].memory.contains(2048 << 20));
    // Rows and columns by logical index: L#1 is P#2, L#2 is P#1.
    assert_eq!(e.distances[&(0, 2)], 20);
    assert_eq!(e.distances[&(2, 0)], 21);
    assert_eq!(e.distances[&(1, 2)], 23);
}

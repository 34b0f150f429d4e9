//! The process's cpuset: which CPUs and memory nodes its cgroup lets it use. Found the way
//! the kernel exposes it: the cgroup path from `proc/self/cgroup` (a v2 `0::` line or a v1
//! line naming the `cpuset` controller) or `proc/self/cpuset`, the mount point from
//! `proc/mounts`, then `cpuset.cpus.effective`/`cpuset.mems.effective` (v2),
//! `cpuset.cpus`/`cpuset.mems` (v1), `cpus`/`mems` (v1 mounted with `-o noprefix`, as old
//! container tools and `/dev/cpuset` setups do, read from the mount options) or `cpus`/`mems`
//! (the old `cpuset` filesystem).

use super::cpulist::parse_cpulist_bytes;
use super::reader::{Outcome, TreeReader};

/// What the cpuset allows; `None` where a file was missing (no limit from it).
#[derive(Debug, Default)]
pub(crate) struct CpusetLimits {
    /// Allowed CPUs.
    pub cpus: Option<Vec<u32>>,
    /// Allowed memory nodes.
    pub mems: Option<Vec<u32>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    V2,
    V1,
    /// cgroup v1 with the `noprefix` mount option: the v1 path, the legacy file names.
    V1NoPrefix,
    Legacy,
}

impl Kind {
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Kind::V2 => ("cpuset.cpus.effective", "cpuset.mems.effective"),
            Kind::V1 => ("cpuset.cpus", "cpuset.mems"),
            Kind::V1NoPrefix | Kind::Legacy => ("cpus", "mems"),
        }
    }
}

/// Undo the octal escapes `proc/mounts` uses for spaces, tabs and backslashes.
fn unescape_mount(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(r: &mut TreeReader, rel: &str, warnings: &mut Vec<String>) -> Option<String> {
    match r.read(rel) {
        Outcome::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Outcome::Missing => None,
        Outcome::Failed(e) => {
            warnings.push(format!("cannot read {rel}: {e}; ignoring it"));
            None
        }
    }
}

/// Read the cpuset limits of "self" under the reader's root; `None` when no cpuset applies.
pub(crate) fn read_limits(r: &mut TreeReader, warnings: &mut Vec<String>) -> Option<CpusetLimits> {
    // 1. The cgroup path, and which hierarchy it is in.
    let mut v1_path = None;
    let mut v2_path = None;
    if let Some(cgroup) = text(r, "proc/self/cgroup", warnings) {
        for line in cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2_path = Some(path.trim_end_matches('\0').to_string());
            } else if controllers.split(',').any(|c| c == "cpuset") {
                v1_path = Some(path.trim_end_matches('\0').to_string());
            }
        }
    }
    let generic_path = if v1_path.is_none() && v2_path.is_none() {
        text(r, "proc/self/cpuset", warnings)
            .map(|p| {
                p.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string()
            })
            .filter(|p| p.starts_with('/'))
    } else {
        None
    };
    if v1_path.is_none() && v2_path.is_none() && generic_path.is_none() {
        return None;
    }

    // 2. Where each kind of hierarchy is mounted.
    let mut mounts: Vec<(Kind, String)> = Vec::new();
    match text(r, "proc/mounts", warnings) {
        Some(m) => {
            for line in m.lines() {
                let mut f = line.split_ascii_whitespace();
                let (Some(_dev), Some(dir), Some(fstype), Some(opts)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let has = |opt: &str| opts.split(',').any(|o| o == opt);
                let kind = match fstype {
                    "cgroup2" => Kind::V2,
                    "cgroup" if has("cpuset") && has("noprefix") => Kind::V1NoPrefix,
                    "cgroup" if has("cpuset") => Kind::V1,
                    "cpuset" => Kind::Legacy,
                    _ => continue,
                };
                mounts.push((kind, unescape_mount(dir)));
            }
        }
        None => {
            // No mount table (a partial capture): the places systemd and old tools use.
            mounts.push((Kind::V1, "/sys/fs/cgroup/cpuset".into()));
            mounts.push((Kind::V2, "/sys/fs/cgroup".into()));
            mounts.push((Kind::Legacy, "/dev/cpuset".into()));
        }
    }

    // 3. Candidate folders, in order of preference.
    let mut candidates: Vec<(Kind, String, String)> = Vec::new();
    for (kind, mnt) in &mounts {
        let path = match (kind, &v1_path, &v2_path, &generic_path) {
            (Kind::V1 | Kind::V1NoPrefix, Some(p), _, _) | (Kind::V2, _, Some(p), _) => p,
            (_, _, _, Some(p)) => p,
            _ => continue,
        };
        candidates.push((*kind, mnt.clone(), path.clone()));
    }
    // v1 and the legacy filesystem before v2: on hybrid hosts the cpuset controller lives in
    // v1 and the v2 tree has no cpuset files.
    candidates.sort_by_key(|(k, _, _)| match k {
        Kind::V1 | Kind::V1NoPrefix => 0,
        Kind::Legacy => 1,
        Kind::V2 => 2,
    });

    for (kind, mnt, path) in candidates {
        let (cpus_file, mems_file) = kind.files();
        // v2 only has cpuset files where the controller is enabled: the nearest ancestor
        // that has them is the one in force.
        let mut dir = format!("{}/{}", mnt.trim_end_matches('/'), path.trim_matches('/'));
        loop {
            let dir_trim = dir.trim_end_matches('/').to_string();
            let cpus = read_list(r, &format!("{dir_trim}/{cpus_file}"), warnings);
            let mems = read_list(r, &format!("{dir_trim}/{mems_file}"), warnings);
            if cpus.is_some() || mems.is_some() {
                return Some(CpusetLimits { cpus, mems });
            }
            if kind != Kind::V2 || dir_trim.len() <= mnt.trim_end_matches('/').len() {
                break;
            }
            match dir_trim.rfind('/') {
                Some(cut) => dir.truncate(cut),
                None => break,
            }
        }
    }
    None
}

/// A cpuset list file; `None` when missing or unreadable (with a warning for garbage).
fn read_list(r: &mut TreeReader, rel: &str, warnings: &mut Vec<String>) -> Option<Vec<u32>> {
    match r.read(rel) {
        Outcome::Bytes(b) => match parse_cpulist_bytes(b) {
            Ok(list) => Some(list),
            Err(e) => {
                warnings.push(format!(
                    "cpuset file {rel} is unreadable ({e}); ignoring it"
                ));
                None
            }
        },
        Outcome::Missing => None,
        Outcome::Failed(e) => {
            warnings.push(format!("cannot read cpuset file {rel}: {e}; ignoring it"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount(r"/x\"), r"/x\");
    }
}

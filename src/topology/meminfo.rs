//! `meminfo` parsing: a node's `sys/devices/system/node/nodeN/meminfo` ("Node 0 MemTotal:
//! 1234 kB") and the whole machine's `proc/meminfo` ("MemTotal: 1234 kB") share one reader.

/// The two figures placement needs, in KiB as the kernel prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    /// `MemTotal` in KiB.
    pub total_kib: u64,
    /// `MemFree` in KiB (0 when the file has no such line).
    pub free_kib: u64,
}

/// Why a meminfo file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeminfoError {
    /// No `MemTotal:` line at all.
    #[error("no MemTotal line")]
    NoMemTotal,
    /// A `MemTotal`/`MemFree` value that is not a number of kB.
    #[error("{key} value {value:?} is not a number of kB")]
    BadValue {
        /// The key whose value was bad.
        key: &'static str,
        /// The value text (at most 32 bytes of it).
        value: String,
    },
}

fn value_kib(key: &'static str, rest: &[u8]) -> Result<u64, MeminfoError> {
    let bad = || MeminfoError::BadValue {
        key,
        value: String::from_utf8_lossy(&rest[..rest.len().min(32)])
            .trim()
            .to_string(),
    };
    let mut words = rest
        .split(|b| b.is_ascii_whitespace() || *b == 0)
        .filter(|w| !w.is_empty());
    let number = words.next().ok_or_else(bad)?;
    if number.len() > 19 || !number.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let kib = number
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    match words.next() {
        None | Some(b"kB") => Ok(kib),
        Some(_) => Err(bad()),
    }
}

/// Parse a node's or the machine's meminfo text.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, MeminfoError> {
    parse_meminfo_bytes(text.as_bytes())
}

/// [`parse_meminfo`] on raw file bytes.
pub fn parse_meminfo_bytes(bytes: &[u8]) -> Result<MemInfo, MeminfoError> {
    let mut total = None;
    let mut free = 0;
    for line in bytes.split(|&b| b == b'\n') {
        // Node files prefix every line with "Node <N> ".
        let line = match line.strip_prefix(b"Node ") {
            Some(rest) => match rest.iter().position(|&b| b == b' ') {
                Some(space) => &rest[space + 1..],
                None => continue,
            },
            None => line,
        };
        if let Some(rest) = line.strip_prefix(b"MemTotal:") {
            total = Some(value_kib("MemTotal", rest)?);
        } else if let Some(rest) = line.strip_prefix(b"MemFree:") {
            free = value_kib("MemFree", rest)?;
        }
        if total.is_some() && free != 0 {
            break;
        }
    }
    Ok(MemInfo {
        total_kib: total.ok_or(MeminfoError::NoMemTotal)?,
        free_kib: free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_machine_files_read_alike() {
        let node = "\nNode 0 MemTotal:     100057088 kB\nNode 0 MemFree:      98848112 kB\nNode 0 MemUsed: 1 kB\n";
        assert_eq!(
            parse_meminfo(node).unwrap(),
            MemInfo {
                total_kib: 100057088,
                free_kib: 98848112
            }
        );
        let machine = "MemTotal:         280840 kB\nMemFree:          250460 kB\n";
        assert_eq!(
            parse_meminfo(machine).unwrap(),
            MemInfo {
                total_kib: 280840,
                free_kib: 250460
            }
        );
    }

    #[test]
    fn missing_or_bad_totals_are_errors() {
        assert_eq!(
            parse_meminfo("Node 0 MemFree: 5 kB\n"),
            Err(MeminfoError::NoMemTotal)
        );
        assert_eq!(parse_meminfo(""), Err(MeminfoError::NoMemTotal));
        let e = parse_meminfo("MemTotal: lots kB\n").unwrap_err();
        assert!(e.to_string().contains("lots"), "{e}");
        assert!(parse_meminfo("MemTotal: 5 MB\n").is_err());
    }
}

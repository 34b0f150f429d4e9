//! The kernel's two spellings of a CPU or node set: the list form (`0-3,8,10-11`, sysfs
//! `cpulist`, `online`, cgroup `cpuset.cpus`) and the mask form (`00000000,000000ff`, sysfs
//! `cpumap`: comma-separated 32-bit hex words, most significant first, any count).
//!
//! Both parsers take what sysfs and old kernels really write: trailing newlines and NUL
//! bytes are ignored, and anything else that is not well-formed is an error naming the
//! offending token, never a panic.

use std::fmt::Write as _;

/// The highest CPU or node number accepted. The kernel's own limit is NR_CPUS (at most
/// 8192 on x86 MAXSMP); a larger number in a file is corruption, and refusing it keeps a
/// hostile `0-4000000000` from allocating gigabytes.
pub const MAX_ID: u32 = (1 << 16) - 1;

/// Why a CPU list or mask could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// A token that is not a number or a `start-end` range.
    #[error("{token:?} is not a CPU number or a range like 0-3")]
    InvalidToken {
        /// The offending token (at most 32 bytes of it).
        token: String,
    },
    /// A range whose end is below its start.
    #[error("range {start}-{end} ends before it starts")]
    ReversedRange {
        /// First number of the range.
        start: u32,
        /// Last number of the range.
        end: u32,
    },
    /// A number above [`MAX_ID`].
    #[error("CPU or node number {value} is above the supported maximum {MAX_ID}")]
    TooLarge {
        /// The number read (saturated at u64::MAX).
        value: u64,
    },
    /// A cpumap word that is not 1-8 hex digits.
    #[error("{word:?} is not a 32-bit hex word (1-8 hex digits) of a CPU mask")]
    InvalidMaskWord {
        /// The offending word (at most 32 bytes of it).
        word: String,
    },
}

/// Strip what sysfs and captured trees append: newlines, spaces, NUL bytes.
pub(crate) fn trim_sysfs(bytes: &[u8]) -> &[u8] {
    let is_junk = |b: &u8| matches!(b, b'\0' | b'\n' | b'\r' | b' ' | b'\t');
    let start = bytes
        .iter()
        .position(|b| !is_junk(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_junk(b))
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned()
}

fn parse_id(token: &[u8], whole: &[u8]) -> Result<u32, CpuListError> {
    if token.is_empty() || token.len() > 20 || !token.iter().all(u8::is_ascii_digit) {
        return Err(CpuListError::InvalidToken {
            token: excerpt(whole),
        });
    }
    let value = token.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    if value > u64::from(MAX_ID) {
        return Err(CpuListError::TooLarge { value });
    }
    Ok(value as u32)
}

/// Parse a list like `0-3,8,10-11` into ascending, duplicate-free numbers.
///
/// An empty list (or one made only of newlines/NULs) is the empty set.
pub fn parse_cpulist(text: &str) -> Result<Vec<u32>, CpuListError> {
    parse_cpulist_bytes(text.as_bytes())
}

/// [`parse_cpulist`] on raw file bytes (sysfs files need not be UTF-8 when corrupted).
pub fn parse_cpulist_bytes(bytes: &[u8]) -> Result<Vec<u32>, CpuListError> {
    let text = trim_sysfs(bytes);
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    let mut sorted = true;
    for token in text.split(|&b| b == b',') {
        let (start, end) = match token.iter().position(|&b| b == b'-') {
            Some(dash) => (
                parse_id(&token[..dash], token)?,
                parse_id(&token[dash + 1..], token)?,
            ),
            None => {
                let id = parse_id(token, token)?;
                (id, id)
            }
        };
        if end < start {
            return Err(CpuListError::ReversedRange { start, end });
        }
        if out.last().is_some_and(|&last| last >= start) {
            sorted = false;
        }
        out.extend(start..=end);
    }
    if !sorted {
        out.sort_unstable();
        out.dedup();
    }
    Ok(out)
}

/// Format ascending numbers the way the kernel does (`%*pbl`): runs of two or more as
/// `a-b`, joined by commas. Unsorted or repeated input is sorted and deduplicated first.
pub fn format_cpulist(ids: &[u32]) -> String {
    let mut owned;
    let ids = if ids.windows(2).all(|w| w[0] < w[1]) {
        ids
    } else {
        owned = ids.to_vec();
        owned.sort_unstable();
        owned.dedup();
        &owned[..]
    };
    let mut out = String::with_capacity(ids.len() * 3);
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            let _ = write!(out, "{start}-{}", ids[j]);
        } else {
            let _ = write!(out, "{start}");
        }
        i = j + 1;
    }
    out
}

/// Parse a mask like `00000000,000000ff` (comma-separated 32-bit hex words, most
/// significant first, any number of words) into ascending CPU numbers.
pub fn parse_cpumap(text: &str) -> Result<Vec<u32>, CpuListError> {
    parse_cpumap_bytes(text.as_bytes())
}

/// [`parse_cpumap`] on raw file bytes.
pub fn parse_cpumap_bytes(bytes: &[u8]) -> Result<Vec<u32>, CpuListError> {
    let text = trim_sysfs(bytes);
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    // Walk words from the least significant (last) so CPUs come out ascending.
    for (index, word) in text.rsplit(|&b| b == b',').enumerate() {
        if word.is_empty() || word.len() > 8 || !word.iter().all(u8::is_ascii_hexdigit) {
            return Err(CpuListError::InvalidMaskWord {
                word: excerpt(word),
            });
        }
        let value = word.iter().fold(0u32, |acc, &d| {
            let digit = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                _ => d - b'A' + 10,
            };
            (acc << 4) | u32::from(digit)
        });
        if value == 0 {
            continue;
        }
        let base = (index as u64) * 32;
        let highest = base + u64::from(31 - value.leading_zeros());
        if highest > u64::from(MAX_ID) {
            return Err(CpuListError::TooLarge { value: highest });
        }
        let mut bits = value;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            out.push(base as u32 + bit);
            bits &= bits - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_ranges_singles_and_sysfs_junk() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpulist("5\n\0\0\0").unwrap(), vec![5]);
        assert_eq!(parse_cpulist("\n").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpulist("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpulist("3,1,2-3").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn bad_lists_name_the_problem() {
        let e = parse_cpulist("0-3,x").unwrap_err();
        assert_eq!(e, CpuListError::InvalidToken { token: "x".into() });
        assert!(e.to_string().contains("\"x\""), "{e}");
        assert_eq!(
            parse_cpulist("5-2").unwrap_err(),
            CpuListError::ReversedRange { start: 5, end: 2 }
        );
        assert!(matches!(
            parse_cpulist("0-4000000000").unwrap_err(),
            CpuListError::TooLarge {
                value: 4_000_000_000
            }
        ));
        assert!(parse_cpulist("1,,2").is_err());
        assert!(parse_cpulist("1-").is_err());
        assert!(parse_cpulist("-1").is_err());
    }

    #[test]
    fn format_is_the_kernels_spelling() {
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpulist(&[4, 5]), "4-5");
        assert_eq!(format_cpulist(&[]), "");
        assert_eq!(format_cpulist(&[7, 1, 7]), "1,7");
    }

    #[test]
    fn masks_parse_any_number_of_words() {
        assert_eq!(
            parse_cpumap("000000ff\n").unwrap(),
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!(parse_cpumap("00000001,00000000").unwrap(), vec![32]);
        assert_eq!(parse_cpumap("80000000,00000001").unwrap(), vec![0, 63]);
        // 48-CPU kernels print a 16-bit top word.
        assert_eq!(
            parse_cpumap("ff00,00000000").unwrap(),
            (40..48).collect::<Vec<_>>()
        );
        let wide = format!("{}00000003", "00000000,".repeat(127));
        assert_eq!(parse_cpumap(&wide).unwrap(), vec![0, 1]);
        assert!(parse_cpumap("0000000g").is_err());
        assert!(parse_cpumap("123456789").is_err());
        assert!(parse_cpumap("1,,1").is_err());
        assert_eq!(parse_cpumap("\0\n").unwrap(), Vec::<u32>::new());
    }
}

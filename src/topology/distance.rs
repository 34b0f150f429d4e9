//! A node's `distance` row: the kernel's SLIT values from this node to every online node,
//! in the order of `node/online` (so a row is matched to node ids, not to positions in our
//! own list).

/// Why a distance row could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistanceError {
    /// A value that is not a decimal number.
    #[error("{token:?} is not a distance (a decimal number like 10 or 21)")]
    InvalidToken {
        /// The offending token (at most 32 bytes of it).
        token: String,
    },
}

/// Parse a row like `10 21 21\n` (whitespace separated, trailing NULs ignored).
pub fn parse_distance_row(text: &str) -> Result<Vec<u32>, DistanceError> {
    parse_distance_row_bytes(text.as_bytes())
}

/// [`parse_distance_row`] on raw file bytes.
pub fn parse_distance_row_bytes(bytes: &[u8]) -> Result<Vec<u32>, DistanceError> {
    let mut out = Vec::new();
    for token in bytes
        .split(|b| b.is_ascii_whitespace() || *b == 0)
        .filter(|t| !t.is_empty())
    {
        if token.len() > 9 || !token.iter().all(u8::is_ascii_digit) {
            return Err(DistanceError::InvalidToken {
                token: String::from_utf8_lossy(&token[..token.len().min(32)]).into_owned(),
            });
        }
        out.push(
            token
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_junk_is_named() {
        assert_eq!(parse_distance_row("10 21\n").unwrap(), vec![10, 21]);
        assert_eq!(parse_distance_row("10  21\0\0").unwrap(), vec![10, 21]);
        assert_eq!(parse_distance_row("").unwrap(), Vec::<u32>::new());
        let e = parse_distance_row("10 2x").unwrap_err();
        assert!(e.to_string().contains("2x"), "{e}");
    }
}

//! Byte sizes on the command line: `1024`, `1k`, `4M`, `1g`, `64KiB`, `2 MiB`.
//! Suffixes are powers of 1024 and case-insensitive, as in the 2013 tools.

use std::fmt;
use std::str::FromStr;

/// A byte count parsed in binary mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {0:?}: expected a byte count with an optional suffix k, m or g (powers of 1024), e.g. 512k or 4MiB"
)]
pub struct BadSize(pub String);

impl FromStr for ByteSize {
    type Err = BadSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cfg = parse_size::Config::new().with_binary();
        cfg.parse_size(s.trim()).map(ByteSize).map_err(|_| BadSize(s.chars().take(40).collect()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b % (1 << 30) == 0 {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b % (1 << 20) == 0 {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b % (1 << 10) == 0 {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_forms_and_iec() {
        for (s, v) in [
            ("1024", 1024),
            ("1k", 1024),
            ("1K", 1024),
            ("4m", 4 << 20),
            ("4M", 4 << 20),
            ("1g", 1 << 30),
            ("1G", 1 << 30),
            ("64KiB", 64 << 10),
            ("2 MiB", 2 << 20),
            ("1GiB", 1 << 30),
            ("1kb", 1024),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(v)), "{s}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "k", "-1", "1x", "1.5.5m", "abc"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
    }
}

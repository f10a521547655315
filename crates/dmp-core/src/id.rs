//! Peer identifiers: the names parties use for themselves and each other.

use std::fmt;
use std::str::FromStr;

/// Longest accepted peer id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The rule a peer id must follow, quoted in every error about one.
pub const ID_RULE: &str = "1 to 64 characters of lower-case ASCII letters, digits, '-', '_' and '.', not starting \
     or ending with '.', and not a device name Windows reserves (con, prn, aux, nul, com1-9, lpt1-9, with or \
     without an extension)";

/// A validated peer id: safe to use as a path component on every store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

/// Why a string is not a peer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer id {shown}: must be {rule}", shown = show(.0), rule = ID_RULE)]
pub struct InvalidPeerId(pub String);

fn show(s: &str) -> String {
    // Debug formatting escapes control and escape characters, so a hostile
    // id cannot drive the terminal.
    let mut cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

impl PeerId {
    /// Checks `s` against [`ID_RULE`].
    pub fn new(s: &str) -> Result<Self, InvalidPeerId> {
        if is_valid_id(s) { Ok(PeerId(s.to_owned())) } else { Err(InvalidPeerId(s.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `s` follows [`ID_RULE`]. An id is a directory name in the
/// store, which a sync client may carry to Windows: there a reserved device
/// name or a trailing dot cannot be a directory at all.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
        && !is_windows_device_name(s)
}

/// True when Windows reserves `name` for a device, whatever the case and
/// extension: CON, PRN, AUX, NUL, COM1-9 and LPT1-9, also with a
/// superscript digit (COM¹, LPT³), as in `nul.txt` or `Com1`.
pub fn is_windows_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
    let device_digit =
        |rest: &str| matches!(rest, "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³");
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || stem.strip_prefix("COM").or_else(|| stem.strip_prefix("LPT")).is_some_and(device_digit)
}

impl FromStr for PeerId {
    type Err = InvalidPeerId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerId::new(s)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PeerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rule() {
        for ok in ["a", "bob", "alice-1", "x_y.z", "0", &"a".repeat(64)] {
            assert!(PeerId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in
            ["", ".hidden", "Bob", "a/b", "a\\b", "..", "a b", "é", "a\u{1b}[31m", &"a".repeat(65), "a:b", "con\0"]
        {
            let err = PeerId::new(bad).unwrap_err();
            assert!(err.to_string().contains("lower-case ASCII"), "{err}");
        }
    }

    /// Ids are directories in a store that a sync client may carry to
    /// Windows, which cannot create these.
    #[test]
    fn rejects_names_windows_cannot_create() {
        for bad in ["con", "nul", "aux", "prn", "com1", "lpt9", "nul.x", "con.d.e", "bob.", "a.."] {
            let err = PeerId::new(bad).unwrap_err();
            assert!(err.to_string().contains("Windows reserves"), "{err}");
        }
        for ok in ["console", "nullx", "com10", "com0", "lpt", "auxiliary", "bob.x", "a.b.c", "co.n"] {
            assert!(PeerId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn error_escapes_control_characters() {
        let err = PeerId::new("a\u{1b}[31mred").unwrap_err().to_string();
        assert!(!err.contains('\u{1b}'), "{err}");
    }
}

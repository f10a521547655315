//! DFTP control messages (the payloads of mailbox messages) and the rules
//! for the untrusted file name in an offer.

use serde::{Deserialize, Serialize};

/// Largest block size a receiver accepts (bounds its memory use).
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;
/// Longest file name accepted, in bytes (the common file-system limit).
pub const MAX_NAME_LEN: usize = 255;
/// Most chunks in one transfer.
pub const MAX_CHUNKS: u64 = 1 << 32;

/// Sender → receiver: the file on offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub transfer: String,
    pub name: String,
    pub size: u64,
    pub block_size: u64,
}

impl Offer {
    /// Number of chunks (an empty file has none).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.block_size.max(1))
    }

    /// Offset and length of chunk `index`.
    pub fn chunk_span(&self, index: u64) -> (u64, u64) {
        let off = index * self.block_size;
        (off, self.block_size.min(self.size - off))
    }

    /// Checks the numbers of an offer read from the store.
    pub fn check(&self) -> Result<(), String> {
        if !is_transfer_id(&self.transfer) {
            return Err("malformed transfer id".into());
        }
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return Err(format!("block size {} outside 1..={MAX_BLOCK_SIZE}", self.block_size));
        }
        if self.chunks() > MAX_CHUNKS {
            return Err(format!("{} chunks is more than the {MAX_CHUNKS} allowed", self.chunks()));
        }
        Ok(())
    }
}

/// Sender → receiver: chunk `index` is in the store under `object`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMsg {
    pub transfer: String,
    pub index: u64,
    pub offset: u64,
    pub len: u64,
    pub sha256: String,
    pub object: String,
}

/// Sender → receiver: every chunk is published; the whole file's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneMsg {
    pub transfer: String,
    pub sha256: String,
}

/// Receiver → sender: accepted, refused, finished; either way: aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub transfer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// In an `abort`: the party stopped for a local reason (a full disk, a
    /// file it cannot read) and keeps its state; run again, it resumes. The
    /// peer waits for it instead of giving the transfer up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumable: bool,
}

/// A transfer id: 16 lower-case hex digits.
pub fn is_transfer_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The store name of a chunk object: its index and content hash.
pub fn chunk_object_name(index: u64, sha256_hex: &str) -> String {
    format!("{index:010x}-{sha256_hex}.chunk")
}

/// Parses a chunk object name back into (index, hash).
pub fn parse_chunk_object_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".chunk")?;
    let (idx, hash) = stem.split_once('-')?;
    if idx.len() != 10 || !idx.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    if !is_sha256_hex(hash) {
        return None;
    }
    Some((u64::from_str_radix(idx, 16).ok()?, hash))
}

/// Why a file name from an offer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("empty file name")]
    Empty,
    #[error("file name longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("file name {0} contains a path separator")]
    Separator(String),
    #[error("file name {0} is a relative path component")]
    Dots(String),
    #[error("file name {0} contains control or escape characters")]
    Control(String),
    #[error("file name {0} is reserved on Windows")]
    Reserved(String),
    #[error("file name {0} starts with {OWN_PREFIX:?}, which the receiver keeps for its own files")]
    OwnNamespace(String),
}

/// The names a receiver gives its own files in DIR start with this
/// (`.dftp-<transfer>.part`); no offered name may, in any case of letters.
pub const OWN_PREFIX: &str = ".dftp-";

/// The name of the receiver's partial file for `transfer` in DIR.
pub fn partial_file_name(transfer: &str) -> String {
    format!("{OWN_PREFIX}{transfer}.part")
}

/// Checks an untrusted file name: only a plain base name passes. The
/// error shows the name escaped, so it cannot drive a terminal.
pub fn check_file_name(name: &str) -> Result<(), BadName> {
    let shown = || format!("{:?}", name.chars().take(80).collect::<String>());
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BadName::TooLong);
    }
    if name.contains(['/', '\\']) {
        return Err(BadName::Separator(shown()));
    }
    if name == "." || name == ".." {
        return Err(BadName::Dots(shown()));
    }
    // (Case folded: a case-insensitive file system would find the partial
    // file under `.DFTP-...` too.)
    if name.as_bytes().get(..OWN_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX.as_bytes())) {
        return Err(BadName::OwnNamespace(shown()));
    }
    let bad_char = |c: char| {
        c.is_control()
            // bidirectional overrides and isolates: they disguise names
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
            || c == '\u{feff}'
    };
    if name.chars().any(bad_char) {
        return Err(BadName::Control(shown()));
    }
    if crate::id::is_windows_device_name(name) || name.ends_with('.') || name.ends_with(' ') {
        return Err(BadName::Reserved(shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for ok in [
            "a",
            "report.pdf",
            "x y.tar.gz",
            ".bashrc",
            "données.txt",
            "icon.txt",
            "COM0",
            "console",
            ".dftp",
            "dftp-x.part",
            ".dftp_x",
        ] {
            assert_eq!(check_file_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn hostile_names_fail() {
        let long = "a".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/x",
            "a/b",
            "a\\b",
            "x\u{1b}[31m",
            "a\nb",
            "a\0b",
            "a\u{7f}",
            "\u{202e}gpj.exe",
            "CON",
            "nul.txt",
            "com1",
            "LPT9.log",
            "COM¹",
            "lpt³.txt",
            "trailing.",
            "trailing ",
            &long,
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The receiver's own names in DIR (its partial files) are never
    /// offered names: finishing such a transfer would remove the file.
    #[test]
    fn the_receivers_own_names_fail() {
        for bad in [".dftp-00000000000000aa.part", ".dftp-", ".DFTP-00000000000000aa.part", ".Dftp-x"] {
            assert_eq!(check_file_name(bad), Err(BadName::OwnNamespace(format!("{bad:?}"))), "{bad:?}");
        }
        let e = check_file_name(".dftp-1.part").unwrap_err().to_string();
        assert!(e.contains("\".dftp-\"") && e.contains("own files"), "{e}");
    }

    #[test]
    fn errors_escape_the_name() {
        let e = check_file_name("x\u{1b}]0;pwned\u{7}").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}') && !e.contains('\u{7}'), "{e}");
    }

    #[test]
    fn chunk_names_round_trip() {
        let h = "ab".repeat(32);
        let n = chunk_object_name(5, &h);
        assert_eq!(parse_chunk_object_name(&n), Some((5, h.as_str())));
        assert_eq!(parse_chunk_object_name("0000000005-xyz.chunk"), None);
        assert_eq!(parse_chunk_object_name(&format!("{n} (conflicted copy)")), None);
    }

    #[test]
    fn offer_spans() {
        let o = Offer { transfer: "0123456789abcdef".into(), name: "f".into(), size: 10, block_size: 4 };
        assert_eq!(o.chunks(), 3);
        assert_eq!(o.chunk_span(2), (8, 2));
        assert!(o.check().is_ok());
        let z = Offer { size: 0, ..o.clone() };
        assert_eq!(z.chunks(), 0);
        assert!(Offer { block_size: 0, ..o.clone() }.check().is_err());
        assert!(Offer { transfer: "x".into(), ..o }.check().is_err());
    }
}

//! The configuration file: `<config dir>/config.toml` (`$DMP_CONFIG_DIR`,
//! else `~/.config/dmp`), or the file named by `--config` / `DMP_CONFIG`.
//!
//! ```toml
//! # Default store, as --store / DMP_STORE.
//! store = "/home/alice/Dropbox/dmp"
//!
//! # Peers whose outbox is read elsewhere (as --peer-outbox ID=URL).
//! [peers.bob]
//! outbox = "https://bob.example.org/dmp/bob"
//!
//! # Defaults of dftp-send.
//! [dftp]
//! block_size = "8MiB"
//! window = 8
//! quota = "64MiB"
//! ```
//!
//! Precedence, highest first: command-line flags, environment variables,
//! this file, built-in defaults. For peer outboxes: `--peer-outbox`, then the
//! peers file, then this file. A missing default file is an empty one; a
//! malformed file is an error naming the file and line.

use dmp_core::PeerId;
use dmp_core::size::ByteSize;
use dmp_core::store::{PeerOutbox, StoreSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file's contents, checked.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (`None`: no file).
    pub path: Option<PathBuf>,
    pub store: Option<StoreSpec>,
    pub peers: Vec<PeerOutbox>,
    pub dftp: DftpDefaults,
}

/// `[dftp]`: defaults of dftp-send.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DftpDefaults {
    pub block_size: Option<ByteSize>,
    pub window: Option<u64>,
    pub quota: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    store: Option<String>,
    #[serde(default)]
    peers: BTreeMap<String, RawPeer>,
    #[serde(default)]
    dftp: RawDftp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    outbox: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDftp {
    block_size: Option<Size>,
    window: Option<u64>,
    quota: Option<Size>,
}

/// A size written as a string (`"4MiB"`, `"512k"`) or a plain byte count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn parse(self) -> Result<ByteSize, String> {
        match self {
            Size::Bytes(n) => Ok(ByteSize(n)),
            Size::Text(s) => s.parse::<ByteSize>().map_err(|e| e.to_string()),
        }
    }
}

/// The default location: `<config dir>/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    dmp_core::keys::config_dir().ok().map(|d| d.join("config.toml"))
}

impl Config {
    /// Reads `explicit` (which must exist), else the default file if there is one.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(Config::default()),
            },
        };
        let text = dmp_core::store::read_settings_file(&path)
            .map_err(|e| anyhow::anyhow!("cannot read the configuration file {}: {e}", path.display()))?;
        let mut c = Config::parse(&text).map_err(|e| anyhow::anyhow!("{}{e}", path.display()))?;
        c.path = Some(path);
        Ok(c)
    }

    /// Parses a file's text. The error starts with `:LINE: ` (or `: `
    /// when no line applies), to follow the file's name.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = line_of(text, span.start);
                    // A wrong type names no key: name the one on that line.
                    let key = text.lines().nth(line - 1).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
                    match key {
                        Some(k) if !k.is_empty() && !msg.contains(k) => format!(":{line}: {k}: {msg}"),
                        _ => format!(":{line}: {msg}"),
                    }
                }
                None => format!(": {msg}"),
            }
        })?;
        // Values are checked here, so that an error names their line.
        let at = |key: &str, msg: String| format!(":{}: {key}: {msg}", line_of_key(text, key));
        let store = match raw.store {
            Some(s) => Some(s.parse::<StoreSpec>().map_err(|e| at("store", e.to_string()))?),
            None => None,
        };
        let mut peers = Vec::new();
        for (id, p) in raw.peers {
            let Some(url) = p.outbox else { continue };
            let line_key = format!("[peers.{id}]");
            let peer = PeerOutbox::new(&id, &url).map_err(|e| at(&line_key, e.to_string()))?;
            peers.push(peer);
        }
        let size = |key: &str, v: Option<Size>| -> Result<Option<ByteSize>, String> {
            v.map(|s| s.parse().map_err(|e| at(key, e))).transpose()
        };
        let dftp = DftpDefaults {
            block_size: size("block_size", raw.dftp.block_size)?,
            window: match raw.dftp.window {
                Some(w) if !(1..=1024).contains(&w) => return Err(at("window", format!("{w} is not in 1..=1024"))),
                w => w,
            },
            quota: size("quota", raw.dftp.quota)?,
        };
        Ok(Config { path: None, store, peers, dftp })
    }

    /// The file's outbox for `id`, if it names one.
    pub fn peer(&self, id: &PeerId) -> Option<&PeerOutbox> {
        self.peers.iter().find(|p| &p.id == id)
    }
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The line on which `key` is set (or its table starts); 1 if not found.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            if key.starts_with('[') {
                l.starts_with(key)
            } else {
                l.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='))
            }
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = Config::parse(
            "# mine\nstore = \"/tmp/s\"\n[peers.bob]\noutbox = \"https://h.example/bob\"\n\
             [dftp]\nblock_size = \"8MiB\"\nwindow = 8\nquota = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.store.unwrap().to_string(), "/tmp/s");
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].id.as_str(), "bob");
        assert_eq!(c.dftp.block_size, Some(ByteSize(8 << 20)));
        assert_eq!(c.dftp.window, Some(8));
        assert_eq!(c.dftp.quota, Some(ByteSize(1 << 20)));
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[track_caller]
    fn err(text: &str) -> String {
        let e = Config::parse(text).unwrap_err();
        assert!(!e.contains('\n'), "one line: {e:?}");
        e
    }

    #[test]
    fn errors_name_the_line() {
        assert!(err("store = \"/a\"\n\n[dftp]\nblok_size = 1\n").starts_with(":4: "), "unknown key");
        assert!(err("store = \"/a\"\nwindow = \n").starts_with(":2: "), "syntax");
        let e = err("[dftp]\nwindow = 4\nblock_size = \"12 parsecs\"\n");
        assert!(e.starts_with(":3: block_size: "), "{e}");
        let e = err("[dftp]\nwindow = 0\n");
        assert!(e.starts_with(":2: window: 0 is not in"), "{e}");
        let e = err("\n\n[peers.bob]\noutbox = \"ftp://x\"\n");
        assert!(e.starts_with(":3: [peers.bob]: "), "{e}");
        let e = err("\n\n[peers.Bob]\noutbox = \"https://x.example/\"\n");
        assert!(e.starts_with(":3: [peers.Bob]: "), "{e}");
        let e = err("store = \"webdav://\"\n");
        assert!(e.starts_with(":1: store: "), "{e}");
        assert!(err("store = 5\n").starts_with(":1: "));
    }
}

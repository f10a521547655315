//! Store selection: the one `--store` value every tool accepts.

use super::{DynStore, FolderOptions, FolderStore, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Where the store is, as given by `--store` or `DMP_STORE`.
///
/// Accepted forms: a path (`/srv/dmp`, `./box`, `~/Dropbox/dmp`) or a
/// `file://` URL (`file:///srv/dmp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Folder(PathBuf),
}

impl FromStr for StoreSpec {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(StoreError::BadSpec("\"\": empty store location".into()));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(StoreError::BadSpec(format!("{s:?}: control characters in store location")));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            // file:///abs/path or file://localhost/abs/path
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(StoreError::BadSpec(format!(
                    "{s:?}: a file URL needs an absolute path, as in file:///srv/dmp"
                )));
            }
            return Ok(StoreSpec::Folder(PathBuf::from(percent_decode(path)?)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(StoreError::BadSpec(format!(
                "{s:?}: unsupported scheme {scheme:?} (supported: a path or file:///path)"
            )));
        }
        Ok(StoreSpec::Folder(expand_tilde(s)))
    }
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return Err(StoreError::BadSpec(format!("{s:?}: bad percent escape"))),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| StoreError::BadSpec(format!("{s:?}: not UTF-8 after decoding")))
}

fn expand_tilde(s: &str) -> PathBuf {
    if s == "~" {
        if let Some(h) = dirs::home_dir() {
            return h;
        }
    }
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(h) = dirs::home_dir() {
            return h.join(rest);
        }
    }
    PathBuf::from(s)
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Folder(p) => write!(f, "{}", p.display()),
        }
    }
}

impl StoreSpec {
    /// Opens the store, creating a folder store's directory if needed.
    pub fn open(&self) -> Result<DynStore, StoreError> {
        self.open_with(FolderOptions::default())
    }

    pub fn open_with(&self, opts: FolderOptions) -> Result<DynStore, StoreError> {
        match self {
            StoreSpec::Folder(p) => Ok(Arc::new(FolderStore::open(p, opts)?)),
        }
    }

    /// A stable identifier of this store, used to key local state files.
    pub fn identity(&self) -> String {
        match self {
            StoreSpec::Folder(p) => {
                let abs = p
                    .canonicalize()
                    .unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.clone()));
                format!("file://{}", abs.display())
            }
        }
    }

    /// The store used when neither `--store` nor `DMP_STORE` is given:
    /// `<Dropbox folder>/dmp` when `~/.dropbox/info.json` names a Dropbox
    /// folder, else `<per-user data directory>/dmp/store`.
    pub fn default_spec() -> Result<(StoreSpec, &'static str), StoreError> {
        let home = dirs::home_dir();
        if let Some(h) = &home {
            if let Some(p) = dropbox_folder(&h.join(".dropbox/info.json")) {
                return Ok((StoreSpec::Folder(p.join("dmp")), "Dropbox folder from ~/.dropbox/info.json"));
            }
        }
        default_store_path()
            .map(|p| (StoreSpec::Folder(p), "per-user data directory"))
            .ok_or_else(|| StoreError::BadSpec("no --store given, and no home or data directory to default to".into()))
    }
}

/// `<per-user data directory>/dmp/store`, e.g. `~/.local/share/dmp/store`.
pub fn default_store_path() -> Option<PathBuf> {
    dirs::data_local_dir().map(|d| d.join("dmp").join("store"))
}

/// Reads the Dropbox client's `info.json` (`{"personal": {"path": ...}}`,
/// or `business`), returning the folder if it exists.
fn dropbox_folder(info: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(info).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    for account in ["personal", "business"] {
        if let Some(p) = v.get(account).and_then(|a| a.get("path")).and_then(|p| p.as_str()) {
            let p = PathBuf::from(p);
            if p.is_dir() {
                return Some(p);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_file_urls() {
        assert_eq!("/srv/x".parse::<StoreSpec>().unwrap(), StoreSpec::Folder("/srv/x".into()));
        assert_eq!("rel/x".parse::<StoreSpec>().unwrap(), StoreSpec::Folder("rel/x".into()));
        assert_eq!("file:///srv/x".parse::<StoreSpec>().unwrap(), StoreSpec::Folder("/srv/x".into()));
        assert_eq!("file://localhost/a%20b".parse::<StoreSpec>().unwrap(), StoreSpec::Folder("/a b".into()));
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in ["", "file://relative", "gopher://x/y", "file:///a%zz", "a\nb"] {
            assert!(bad.parse::<StoreSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_dropbox_info_json() {
        let d = tempfile::tempdir().unwrap();
        let dbx = d.path().join("Dropbox");
        std::fs::create_dir(&dbx).unwrap();
        let info = d.path().join("info.json");
        std::fs::write(&info, format!(r#"{{"personal": {{"path": "{}", "host": 1}}}}"#, dbx.display())).unwrap();
        assert_eq!(dropbox_folder(&info), Some(dbx));
        std::fs::write(&info, "not json").unwrap();
        assert_eq!(dropbox_folder(&info), None);
    }
}

//! Store selection: the one `--store` value every tool accepts.

use super::{DynStore, FolderOptions, FolderStore, S3Config, S3Store, StoreError, WebDavStore};
use crate::store::HttpOptions;
use reqwest::Url;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Where the store is, as given by `--store` or `DMP_STORE`.
///
/// Accepted forms:
/// - a path (`/srv/dmp`, `./box`, `~/Dropbox/dmp`) or a `file://` URL
///   (`file:///srv/dmp`);
/// - `webdav://host[:port]/path` (WebDAV over http) or
///   `webdavs://host[:port]/path` (over https), with credentials from
///   `DMP_STORE_USER`/`DMP_STORE_PASSWORD` or `~/.netrc`;
/// - `s3://bucket[/prefix]`, with endpoint, region and keys from
///   `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID` and
///   `AWS_SECRET_ACCESS_KEY`.
///
/// Credentials are never accepted on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    Folder(PathBuf),
    /// The `http://` or `https://` URL of the WebDAV collection, ending with `/`.
    WebDav(Url),
    /// A bucket and a key prefix (no leading or trailing `/`, may be empty).
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl FromStr for StoreSpec {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(StoreError::BadSpec("\"\": empty store location".into()));
        }
        let shown = shown_location(s);
        if s.chars().any(|c| c.is_control()) {
            return Err(StoreError::BadSpec(format!("{shown}: control characters in store location")));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            // file:///abs/path or file://localhost/abs/path
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(StoreError::BadSpec(format!(
                    "{shown}: a file URL needs an absolute path, as in file:///srv/dmp"
                )));
            }
            return Ok(StoreSpec::Folder(PathBuf::from(percent_decode(path)?)));
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if rest.contains('@') {
                // Whatever comes before the '@' may be a password: never echoed.
                let from = match scheme.as_str() {
                    "s3" => "the keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    _ => "set DMP_STORE_USER and DMP_STORE_PASSWORD, or add the host to ~/.netrc",
                };
                return Err(StoreError::BadSpec(format!(
                    "{shown}: credentials are not accepted on the command line; {from} \
                     (an '@' in a path is written %40)"
                )));
            }
            match scheme.as_str() {
                "webdav" => return parse_webdav(s, "http", rest),
                "webdavs" => return parse_webdav(s, "https", rest),
                "s3" => return parse_s3(s, rest),
                "http" | "https" => {
                    return Err(StoreError::BadSpec(format!(
                        "{shown}: a plain http(s) URL is read-only; use webdav://... or webdavs://... for a WebDAV \
                         store, or --peer-outbox ID=URL to read a peer's outbox over HTTP"
                    )));
                }
                _ => {
                    return Err(StoreError::BadSpec(format!(
                        "{shown}: unsupported scheme {} (supported: a path, file:///path, \
                         webdav://host[:port]/path, webdavs://host[:port]/path, s3://bucket/prefix)",
                        shown_location(&scheme)
                    )));
                }
            }
        }
        Ok(StoreSpec::Folder(expand_tilde(s)))
    }
}

/// `webdav[s]://host[:port]/path` as the `http[s]://` URL of the collection.
fn parse_webdav(s: &str, scheme: &str, rest: &str) -> Result<StoreSpec, StoreError> {
    let shown = shown_location(s);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(StoreError::BadSpec(format!("{shown}: no host, expected webdav://host[:port]/path")));
    }
    let url = Url::parse(&format!("{scheme}://{rest}")).map_err(|e| StoreError::BadSpec(format!("{shown}: {e}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(StoreError::BadSpec(format!("{shown}: no host, expected webdav://host[:port]/path")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(StoreError::BadSpec(format!("{shown}: a store URL takes no query or fragment")));
    }
    if url.port() == Some(0) {
        return Err(StoreError::BadSpec(format!("{shown}: port 0 cannot be reached; give the server's port")));
    }
    let url = super::http::check_base(url)?;
    Ok(StoreSpec::WebDav(url))
}

/// `s3://bucket[/prefix]`.
fn parse_s3(s: &str, rest: &str) -> Result<StoreSpec, StoreError> {
    let shown = shown_location(s);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') || bucket.contains(':') {
        // Not echoed: it may hold a key.
        return Err(StoreError::BadSpec(
            "s3 store: expected s3://bucket/prefix; the endpoint and keys come from AWS_ENDPOINT_URL, \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never from the command line"
                .into(),
        ));
    }
    let prefix = prefix.trim_matches('/');
    let ok_bucket = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if !ok_bucket {
        return Err(StoreError::BadSpec(format!(
            "{shown}: invalid bucket name {} (3 to 63 lower-case letters, digits, '.' and '-')",
            shown_location(bucket)
        )));
    }
    let ok_prefix = prefix.is_empty()
        || prefix.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        });
    if !ok_prefix {
        return Err(StoreError::BadSpec(format!(
            "{shown}: invalid prefix {} ('/'-separated segments of letters, digits, '.', '_' and '-')",
            shown_location(prefix)
        )));
    }
    Ok(StoreSpec::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let shown = shown_location(s);
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
                None => return Err(StoreError::BadSpec(format!("{shown}: bad percent escape"))),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| StoreError::BadSpec(format!("{shown}: not UTF-8 after decoding")))
}

/// Longest location echoed in an error, in characters.
const SHOWN_MAX: usize = 200;

/// A store location or URL as given, for an error message: quoted, with
/// control characters escaped, cut to 200 characters, and with whatever
/// lies between `://` and the last `@` (user and password, or anything a
/// password with a `/`, `?` or `#` in it makes look like a path) replaced
/// by `***`.
pub(crate) fn shown_location(s: &str) -> String {
    let s = match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(j)) if j >= i + 3 => format!("{}***{}", &s[..i + 3], &s[j..]),
        _ => s.to_owned(),
    };
    let cut: String = s.chars().take(SHOWN_MAX).collect();
    if cut.len() < s.len() { format!("{:?}", format!("{cut}…")) } else { format!("{cut:?}") }
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
            StoreSpec::WebDav(u) => {
                let scheme = if u.scheme() == "https" { "webdavs" } else { "webdav" };
                let rest = u.as_str().split_once("://").map(|(_, r)| r).unwrap_or("");
                write!(f, "{scheme}://{rest}")
            }
            StoreSpec::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreSpec::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
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
            StoreSpec::WebDav(u) => Ok(Arc::new(WebDavStore::new(u.clone())?)),
            StoreSpec::S3 { bucket, prefix } => {
                Ok(Arc::new(S3Store::new(S3Config::from_env(bucket, prefix)?, HttpOptions::default())?))
            }
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
            StoreSpec::WebDav(_) => self.to_string(),
            // The same bucket name on another endpoint is another store.
            StoreSpec::S3 { bucket, prefix } => match S3Config::from_env(bucket, prefix) {
                Ok(c) => format!("s3://{}/{bucket}/{prefix}", c.endpoint.host_str().unwrap_or_default()),
                Err(_) => self.to_string(),
            },
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
    let text = crate::localfile::read_to_string(info, crate::localfile::MAX_CONFIG).ok()?;
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
    fn parses_webdav_urls() {
        let s: StoreSpec = "webdav://127.0.0.1:8080/dav/dmp".parse().unwrap();
        assert_eq!(s, StoreSpec::WebDav(Url::parse("http://127.0.0.1:8080/dav/dmp/").unwrap()));
        assert_eq!(s.to_string(), "webdav://127.0.0.1:8080/dav/dmp/");
        assert_eq!(s.to_string().parse::<StoreSpec>().unwrap(), s);
        let s: StoreSpec = "webdavs://dav.example/".parse().unwrap();
        assert_eq!(s, StoreSpec::WebDav(Url::parse("https://dav.example/").unwrap()));
        assert_eq!(s.identity(), "webdavs://dav.example/");
        let s: StoreSpec = "webdav://h".parse().unwrap();
        assert_eq!(s.to_string(), "webdav://h/");
    }

    #[test]
    fn rejects_bad_remote_forms() {
        for bad in [
            "webdav://",
            "webdav:///path",
            "webdav://user:secret@h/x",
            "webdavs://user@h/x",
            "webdav://h/x?y=1",
            "webdav://h:99999/x",
            "http://h/x",
            "https://h/x",
            "s3://",
            "s3://ab",
            "s3://Bucket/x",
            "s3://key:secret@bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/a b",
        ] {
            let e = bad.parse::<StoreSpec>().expect_err(bad).to_string();
            assert!(!e.contains("secret"), "{bad}: the error repeats the secret: {e}");
        }
        let e = "https://h/x".parse::<StoreSpec>().unwrap_err().to_string();
        assert!(e.contains("--peer-outbox"), "{e}");
    }

    #[test]
    fn errors_never_echo_credentials() {
        for (bad, secret) in [
            ("webdav://user:pass@127.0.0.1/x", "pass"),
            ("webdav://user:pa/ss@127.0.0.1/x", "pa/ss"),
            ("webdavs://user:pa?ss@h/x", "pa?ss"),
            ("webdav://user:pa#ss@h/x", "pa#ss"),
            ("webdav://h/x?token=user:pa@ss", "pa@ss"),
            ("s3://user:secretkey@bucket/x", "secretkey"),
            ("http://user:hunter2@h/x", "hunter2"),
            ("gopher://user:hunter2@h/x", "hunter2"),
        ] {
            let e = bad.parse::<StoreSpec>().expect_err(bad).to_string();
            assert!(!e.contains(secret) && !e.contains("user:"), "{bad}: {e}");
            assert!(e.contains("://***@") && e.contains("not accepted"), "{bad}: {e}");
        }
        let e = "webdav://user:pa/ss@127.0.0.1/x".parse::<StoreSpec>().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid store \"webdav://***@127.0.0.1/x\": credentials are not accepted on the command line; set \
             DMP_STORE_USER and DMP_STORE_PASSWORD, or add the host to ~/.netrc (an '@' in a path is written %40)"
        );
    }

    #[test]
    fn errors_echo_at_most_200_characters() {
        let long = "a/".repeat(50_000);
        for bad in [
            format!("webdav://h/{long}?q"),
            format!("webdav://h:99999/{long}"),
            format!("s3://bucket/{long} b"),
            format!("s3://B{long}"),
            format!("{long}://h/x"),
            format!("file://{long}"),
            format!("/{long}\x1b"),
        ] {
            let e = bad.parse::<StoreSpec>().expect_err("bad").to_string();
            assert!(e.len() < 600 && e.contains('…'), "{} bytes: {}", e.len(), &e[..600.min(e.len())]);
        }
        assert_eq!(shown_location("webdav://h/x"), "\"webdav://h/x\"");
        assert_eq!(shown_location("a\x1bb"), "\"a\\u{1b}b\"");
    }

    #[test]
    fn port_0_is_refused() {
        for bad in ["webdav://127.0.0.1:0/x", "webdavs://h:0/"] {
            let e = bad.parse::<StoreSpec>().expect_err(bad).to_string();
            assert!(e.contains("port 0"), "{e}");
        }
    }

    #[test]
    fn parses_s3_urls() {
        let s: StoreSpec = "s3://my-bucket/team/dmp/".parse().unwrap();
        assert_eq!(s, StoreSpec::S3 { bucket: "my-bucket".into(), prefix: "team/dmp".into() });
        assert_eq!(s.to_string(), "s3://my-bucket/team/dmp");
        let s: StoreSpec = "s3://my-bucket".parse().unwrap();
        assert_eq!(s, StoreSpec::S3 { bucket: "my-bucket".into(), prefix: String::new() });
        assert_eq!(s.to_string(), "s3://my-bucket");
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

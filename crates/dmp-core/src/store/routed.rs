//! Peer outboxes read from elsewhere: a store that sends keys below
//! `<peer-id>/` to that peer's own (read-only, usually HTTP) outbox and
//! everything else to the main store. This is the 2013 mode: each party
//! writes its outbox `<store>/<my-id>` into a folder that a web server
//! publishes, and reads the other's over plain HTTP.
//!
//! Peer outboxes come from `--peer-outbox ID=URL` (parsed by
//! [`PeerOutbox`]) or from a peers file, `<config dir>/dmp/peers`, of
//! `id = url` lines (TOML `id = "url"` works too).

use super::spec::shown_location;
use super::{Changes, DynStore, HttpStore, Key, Store, StoreError};
use crate::id::{ID_RULE, PeerId};
use async_trait::async_trait;
use reqwest::Url;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// One peer's outbox URL: `ID=URL`, as given to `--peer-outbox`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOutbox {
    pub id: PeerId,
    /// The URL of the peer's outbox directory (`<their store>/<id>/`),
    /// ending with `/`.
    pub url: Url,
}

impl FromStr for PeerOutbox {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((id, url)) = s.split_once('=') else {
            return Err(StoreError::BadSpec(format!(
                "peer outbox {}: expected ID=URL, as in alice=https://example.org/dmp/alice/",
                shown_location(s)
            )));
        };
        PeerOutbox::new(id.trim(), url.trim())
    }
}

impl fmt::Display for PeerOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.url)
    }
}

impl PeerOutbox {
    pub fn new(id: &str, url: &str) -> Result<PeerOutbox, StoreError> {
        let id = PeerId::new(id).map_err(|_| {
            StoreError::BadSpec(format!("peer outbox: invalid peer id {}: must be {ID_RULE}", shown_location(id)))
        })?;
        let shown = shown_location(url);
        if url.chars().any(char::is_control) {
            return Err(StoreError::BadSpec(format!("peer outbox for {id}: {shown}: control characters in the URL")));
        }
        if url.split_once("://").is_some_and(|(_, rest)| rest.contains('@')) {
            // Whatever comes before the '@' may be a password: never echoed.
            return Err(StoreError::BadSpec(format!(
                "peer outbox for {id}: {shown}: credentials in the URL are not accepted (the outbox must be \
                 readable without them; an '@' in a path is written %40)"
            )));
        }
        if url.split_once("://").is_some_and(|(_, rest)| rest.starts_with('/')) {
            // `http:///x` parses, with `x` as the host: a typo, never meant.
            return Err(StoreError::BadSpec(format!(
                "peer outbox for {id}: {shown}: no host, expected http(s)://host[:port]/path"
            )));
        }
        let parsed = Url::parse(url).map_err(|e| StoreError::BadSpec(format!("peer outbox for {id}: {shown}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(StoreError::BadSpec(format!(
                "peer outbox for {id}: {shown}: expected an http:// or https:// URL"
            )));
        }
        let url = super::http::check_base(parsed).map_err(|e| match e {
            StoreError::BadSpec(m) => StoreError::BadSpec(format!("peer outbox for {id}: {m}")),
            e => e,
        })?;
        Ok(PeerOutbox { id, url })
    }

    /// The read-only store for this outbox.
    pub fn open(&self) -> Result<DynStore, StoreError> {
        Ok(Arc::new(HttpStore::new(self.url.clone())?))
    }
}

/// `peers` in the configuration directory: `$DMP_CONFIG_DIR`, else
/// `<user config dir>/dmp`, e.g. `~/.config/dmp/peers`.
pub fn default_peers_file() -> Option<PathBuf> {
    // Beside the keys, known_peers and config.toml: `$DMP_CONFIG_DIR` when set.
    crate::keys::config_dir().ok().map(|d| d.join("peers"))
}

/// Reads a peers file; a missing file is no peers.
pub fn load_peers_file(path: &Path) -> Result<Vec<PeerOutbox>, StoreError> {
    match crate::localfile::read_to_string(path, crate::localfile::MAX_CONFIG) {
        Ok(text) => parse_peers(&text).map_err(|e| match e {
            StoreError::BadSpec(m) => StoreError::BadSpec(format!("{}: {m}", path.display())),
            e => e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::BadSpec(format!("{}: {e}", path.display()))),
    }
}

/// Parses `id = url` lines: `#` starts a comment line, blank lines and
/// section headers (`[peers]`) are skipped, and either side may be quoted
/// as in TOML. A later line for the same id wins.
pub fn parse_peers(text: &str) -> Result<Vec<PeerOutbox>, StoreError> {
    let mut out: Vec<PeerOutbox> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (line.starts_with('[') && line.ends_with(']')) {
            continue;
        }
        let Some((id, url)) = line.split_once('=') else {
            return Err(StoreError::BadSpec(format!("line {}: expected `id = url`", n + 1)));
        };
        let url = strip_comment(url.trim());
        let p = PeerOutbox::new(unquote(id.trim()), unquote(url)).map_err(|e| {
            StoreError::BadSpec(format!("line {}: {}", n + 1, e.to_string().trim_start_matches("invalid store ")))
        })?;
        out.retain(|q| q.id != p.id);
        out.push(p);
    }
    Ok(out)
}

/// Drops a trailing ` # comment` (a URL's own `#` needs no space before it).
fn strip_comment(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('"') {
        if let Some(end) = rest.find('"') {
            return &s[..end + 2];
        }
    }
    match s.find(" #") {
        Some(i) => s[..i].trim_end(),
        None => s,
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

/// A store that reads `<peer-id>/...` from that peer's outbox store and
/// sends every other key to the main store.
pub struct RoutedStore {
    main: DynStore,
    peers: BTreeMap<String, DynStore>,
}

impl RoutedStore {
    pub fn new(main: DynStore) -> RoutedStore {
        RoutedStore { main, peers: BTreeMap::new() }
    }

    /// Routes keys below `<id>/` to `outbox`.
    pub fn with_peer(mut self, id: &PeerId, outbox: DynStore) -> RoutedStore {
        self.peers.insert(id.as_str().to_owned(), outbox);
        self
    }

    /// The main store with every outbox in `outboxes` opened over HTTP (a
    /// later entry for the same id wins).
    pub fn with_outboxes(main: DynStore, outboxes: &[PeerOutbox]) -> Result<RoutedStore, StoreError> {
        let mut s = RoutedStore::new(main);
        for o in outboxes {
            s = s.with_peer(&o.id, o.open()?);
        }
        Ok(s)
    }

    pub fn main(&self) -> &DynStore {
        &self.main
    }

    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The store for `key` and the key inside it.
    fn route(&self, key: &Key) -> Result<(&DynStore, Key), StoreError> {
        let mut parts = key.components();
        if let Some(first) = parts.next() {
            if let Some(store) = self.peers.get(first) {
                let rest: Vec<&str> = parts.collect();
                let inner = if rest.is_empty() { Key::root() } else { Key::new(rest)? };
                return Ok((store, inner));
            }
        }
        Ok((&self.main, key.clone()))
    }
}

#[async_trait]
impl Store for RoutedStore {
    fn describe(&self) -> String {
        if self.peers.is_empty() {
            return self.main.describe();
        }
        let ids: Vec<&str> = self.peers.keys().map(String::as_str).collect();
        format!("{} (outboxes of {} read separately)", self.main.describe(), ids.join(", "))
    }

    async fn put(&self, key: &Key, data: &[u8]) -> Result<(), StoreError> {
        let (s, k) = self.route(key)?;
        if k.is_root() {
            return Err(StoreError::BadKey(format!("{key} is a peer's outbox, not an object")));
        }
        s.put(&k, data).await
    }

    async fn put_bytes(&self, key: &Key, data: bytes::Bytes) -> Result<(), StoreError> {
        let (s, k) = self.route(key)?;
        if k.is_root() {
            return Err(StoreError::BadKey(format!("{key} is a peer's outbox, not an object")));
        }
        s.put_bytes(&k, data).await
    }

    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (s, k) = self.route(key)?;
        if k.is_root() {
            return Err(StoreError::BadKey(format!("{key} is a peer's outbox, not an object")));
        }
        s.get(&k, max_len).await
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let (s, k) = self.route(key)?;
        if k.is_root() {
            return Err(StoreError::BadKey(format!("{key} is a peer's outbox, not an object")));
        }
        s.delete(&k).await
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        if prefix.is_root() {
            let mut names = self.main.list(prefix).await?;
            for id in self.peers.keys() {
                if !names.contains(id) {
                    names.push(id.clone());
                }
            }
            return Ok(names);
        }
        let (s, k) = self.route(prefix)?;
        s.list(&k).await
    }

    fn changes(&self, prefix: &Key) -> Changes {
        match self.route(prefix) {
            Ok((s, k)) if !Arc::ptr_eq(s, &self.main) => s.changes(&k),
            _ => self.main.changes(prefix),
        }
    }

    /// Only when every part notifies: a peer's HTTP outbox must be polled.
    fn notifies(&self) -> bool {
        self.main.notifies() && self.peers.values().all(|p| p.notifies())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn parses_peer_outbox_flags() {
        let p: PeerOutbox = "alice=https://example.org/dmp/alice".parse().unwrap();
        assert_eq!(p.id.as_str(), "alice");
        assert_eq!(p.url.as_str(), "https://example.org/dmp/alice/");
        assert_eq!(p.to_string(), "alice=https://example.org/dmp/alice/");
        let p: PeerOutbox = "b = http://127.0.0.1:8080/x/".parse::<PeerOutbox>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.url.as_str(), "http://127.0.0.1:8080/x/");
        for bad in [
            "alice",
            "Alice=https://h/x",
            "=https://h/x",
            "alice=",
            "alice=ftp://h/x",
            "alice=webdav://h/x",
            "alice=https://u:p@h/x",
            "alice=https://h/x?sig=1",
            "alice=not a url",
            // No host: the URL parser would take `x` for one.
            "alice=http:///x",
            "alice=https:////h/x",
        ] {
            assert!(bad.parse::<PeerOutbox>().is_err(), "{bad}");
        }
        let e = "alice=http:///x".parse::<PeerOutbox>().unwrap_err().to_string();
        assert!(e.contains("no host"), "{e}");
    }

    #[test]
    fn peer_outbox_errors_never_echo_credentials_and_are_short() {
        for (bad, secret) in [
            ("bob=http://user:hunter2@127.0.0.1/x", "hunter2"),
            ("bob=https://user:hun/ter2@h/x", "hun/ter2"),
            ("bob=http://user:hun?ter2@h/x", "hun?ter2"),
            ("bob=http://user:hun#ter2@h/x", "hun#ter2"),
            ("bob=ftp://user:hunter2@h/x", "hunter2"),
        ] {
            let e = bad.parse::<PeerOutbox>().expect_err(bad).to_string();
            assert!(!e.contains(secret) && !e.contains("user:"), "{bad}: {e}");
            assert!(e.contains("://***@") && e.contains("not accepted"), "{bad}: {e}");
        }
        let e = "bob=http://127.0.0.1/\x1b[31mred".parse::<PeerOutbox>().unwrap_err().to_string();
        assert!(e.contains("control characters") && !e.contains('\x1b'), "{e}");
        let e = "bob=http://127.0.0.1:0/x".parse::<PeerOutbox>().unwrap_err().to_string();
        assert!(e.contains("port 0"), "{e}");
        let long = "a/".repeat(50_000);
        for bad in [
            format!("bob=http://h/{long}?q"),
            format!("bob=http://h/{long}#x"),
            format!("bob=http://h:99999/{long}"),
            format!("bob=ftp://h/{long}"),
            format!("{}=http://h/", "B".repeat(100_000)),
            "b".repeat(100_000),
        ] {
            let Err(e) = bad.parse::<PeerOutbox>() else { panic!("accepted {}", &bad[..20]) };
            let e = e.to_string();
            assert!(e.len() < 500 && e.contains('…'), "{} bytes: {}", e.len(), &e[..500.min(e.len())]);
        }
    }

    #[test]
    fn parses_peers_files() {
        let text = "# peers\n[peers]\nalice = \"https://a.example/dmp/alice/\"\n\
                    bob=http://127.0.0.1:8000/bob # local\n\n\"carol\" = \"https://c.example/x\" # quoted\n\
                    alice = https://a2.example/alice\n";
        let peers = parse_peers(text).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        assert!(got.contains(&"bob=http://127.0.0.1:8000/bob/".to_string()), "{got:?}");
        assert!(got.contains(&"alice=https://a2.example/alice/".to_string()), "{got:?}");
        assert_eq!(peers.len(), 3, "{got:?}");
        let e = parse_peers("alice https://x\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_peers("\nBAD = https://x\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(load_peers_file(Path::new("/nonexistent/dmp/peers")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn routes_peer_keys_to_their_outbox() {
        let main = Arc::new(MemoryStore::new());
        let bob_out = Arc::new(MemoryStore::new());
        let bob = PeerId::new("bob").unwrap();
        let s = RoutedStore::new(main.clone()).with_peer(&bob, bob_out.clone());
        let mine = Key::new(["alice", "bob", "m1"]).unwrap();
        let theirs = Key::new(["bob", "alice", "m1"]).unwrap();
        s.put(&mine, b"a").await.unwrap();
        bob_out.put(&Key::new(["alice", "m1"]).unwrap(), b"b").await.unwrap();
        assert_eq!(main.keys(), vec!["alice/bob/m1"]);
        assert_eq!(s.get(&theirs, 10).await.unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(s.get(&mine, 10).await.unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(s.list(&Key::new(["bob"]).unwrap()).await.unwrap(), vec!["alice"]);
        let mut root = s.list(&Key::root()).await.unwrap();
        root.sort();
        assert_eq!(root, vec!["alice", "bob"]);
        assert!(s.get(&Key::new(["bob"]).unwrap(), 10).await.is_err());
        assert!(s.notifies(), "memory stores both notify");
        assert!(s.describe().contains("bob"));
    }
}

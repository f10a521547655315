//! The `Store` trait, the only I/O seam between the protocols and storage,
//! and its adapters.

pub mod contract;
#[cfg(test)]
mod fake_http;
mod folder;
#[cfg(target_os = "linux")]
mod folder_watch;
mod http;
mod memory;
mod retry;
mod routed;
mod s3;
mod spec;
mod webdav;

pub use folder::{FolderOptions, FolderStore};
pub use http::HttpStore;
pub use memory::MemoryStore;
pub use retry::HttpOptions;
pub use routed::{PeerOutbox, RoutedStore, default_peers_file, load_peers_file, parse_peers};
pub use s3::{PutNew, S3Config, S3Store};
pub use spec::{StoreSpec, default_store_path};
pub use webdav::{WebDavCredentials, WebDavStore};

use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use tokio::sync::Notify;

/// A store key: a relative path of one or more components joined by `/`.
/// Every component is lower-case ASCII (`a-z 0-9 . _ -`), 1 to 128 bytes,
/// not starting with `.`. Keys the protocol builds always pass; names read
/// from a listing are checked with [`is_valid_component`] before use.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Builds a key from components, checking each one.
    pub fn new<I, S>(parts: I) -> Result<Key, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut s = String::new();
        for p in parts {
            let p = p.as_ref();
            if !is_valid_component(p) {
                return Err(StoreError::BadKey(format!("{p:?}")));
            }
            if !s.is_empty() {
                s.push('/');
            }
            s.push_str(p);
        }
        if s.is_empty() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        Ok(Key(s))
    }

    /// The root of the store (the empty key), for `list` and `changes` only.
    pub fn root() -> Key {
        Key(String::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This key with one more component.
    pub fn join(&self, part: &str) -> Result<Key, StoreError> {
        if !is_valid_component(part) {
            return Err(StoreError::BadKey(format!("{part:?}")));
        }
        if self.0.is_empty() {
            return Ok(Key(part.to_owned()));
        }
        Ok(Key(format!("{}/{}", self.0, part)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when `self` is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &Key) -> bool {
        prefix.0.is_empty()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0) && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for a name that may be one component of a [`Key`].
pub fn is_valid_component(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && !p.starts_with('.')
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
}

/// What went wrong talking to a store. Cloneable so that a state machine can
/// receive it as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {}: {msg}", op_on(op, key))]
    Io { store: String, op: &'static str, key: String, msg: String },
    /// An object or listing over the size allowed; `len` is its size when
    /// known (a body without `Content-Length` is cut at the limit, and how
    /// far past it a server would have gone is not known).
    #[error("{store}: {}", too_large(key, *len, *max))]
    TooLarge { store: String, key: String, len: Option<u64>, max: u64 },
    #[error("{store}: {key} is not a regular file (symlink, directory or device); ignored")]
    NotAFile { store: String, key: String },
    /// A write below a path that is a file or a symbolic link where a
    /// directory must be (never gone through): no retry mends it.
    #[error("{store}: {key} is not a directory (a file or symlink is in its place); cannot write below it")]
    NotADirectory { store: String, key: String },
    #[error("{store}: the store is full: {msg}")]
    Full { store: String, msg: String },
    #[error("{store}: access denied: {msg}")]
    Denied { store: String, msg: String },
    #[error("{store}: {op} is not supported by this store")]
    Unsupported { store: String, op: &'static str },
    #[error("invalid store key {0}")]
    BadKey(String),
    #[error("invalid store {0}")]
    BadSpec(String),
    /// The server could not be reached (connection refused, unknown host,
    /// no route), even after retries.
    #[error("{store}: cannot reach the server: {msg}")]
    Unreachable { store: String, msg: String },
    /// The server answered with something that is not the object, such as
    /// an HTML error or login page: "not there yet", never data.
    #[error("{store}: {key}: the server sent {what} instead of the object")]
    NotAnObject { store: String, key: String, what: String },
    /// A redirect that was not followed: writes never follow one, reads
    /// only to the same host.
    #[error(
        "{store}: {}: redirected to {location}; not followed (only reads follow redirects, and only on the same host)",
        op_on(op, key)
    )]
    Redirected { store: String, op: &'static str, key: String, location: String },
}

/// `get a/b`, or `list` alone for the store's root (the empty key), for
/// messages: never `list : ...`.
pub(crate) fn op_on(op: &str, key: &str) -> String {
    if key.is_empty() { op.to_owned() } else { format!("{op} {key}") }
}

/// `a/b is 9 bytes, more than the 8 allowed`; the store's root (a
/// listing) is `the listing`.
fn too_large(key: &str, len: Option<u64>, max: u64) -> String {
    let what = if key.is_empty() { "the listing" } else { key };
    match len {
        Some(len) => format!("{what} is {len} bytes, more than the {max} allowed"),
        None => format!("{what} is more than the {max} bytes allowed"),
    }
}

impl StoreError {
    /// True when retrying later may succeed (I/O hiccup, store full, ...).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Full { .. }
                | StoreError::Unreachable { .. }
                | StoreError::NotAnObject { .. }
        )
    }
}

/// What changed below a watched prefix, as far as the store can tell:
/// store-relative paths cut to their first two parts (`<owner>/<peer>`, or
/// `<owner>/key`), or "anything" when the store cannot say (a rescan, a
/// store without paths in its notifications).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub all: bool,
    pub paths: std::collections::BTreeSet<String>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        !self.all && self.paths.is_empty()
    }

    /// True when something at or below `prefix` (or above it: a directory
    /// created or removed on the way) may have changed.
    pub fn touches(&self, prefix: &Key) -> bool {
        let p = prefix.as_str();
        self.all
            || self.paths.iter().any(|c| {
                p.is_empty()
                    || c == p
                    || (c.len() > p.len() && c.starts_with(p) && c.as_bytes()[p.len()] == b'/')
                    || (p.len() > c.len() && p.starts_with(c.as_str()) && p.as_bytes()[c.len()] == b'/')
            })
    }

    /// The first parts of the changed paths (the parties whose files changed).
    pub fn owners(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(|c| c.split('/').next().unwrap_or(""))
    }
}

/// Where a store's watcher reports what changed (see [`Changes`]).
#[derive(Clone)]
pub struct ChangeRecorder {
    notify: Arc<Notify>,
    set: Arc<std::sync::Mutex<ChangeSet>>,
}

/// Paths recorded before "anything" is reported instead (a burst of
/// events is cheaper to handle as one full look).
const MAX_CHANGED_PATHS: usize = 4096;

impl ChangeRecorder {
    /// Records a change of the store-relative `path` (`None`: anything) and wakes the waiter.
    pub fn changed(&self, path: Option<&str>) {
        {
            let mut set = self.set.lock().expect("change set lock");
            match path {
                Some(p) if !set.all && set.paths.len() < MAX_CHANGED_PATHS => {
                    let cut: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).take(2).collect();
                    set.paths.insert(cut.join("/"));
                }
                _ => {
                    set.all = true;
                    set.paths.clear();
                }
            }
        }
        self.notify.notify_one();
    }
}

/// A wake-up signal: fires when something under the watched prefix may
/// have changed. Spurious wake-ups are allowed; missed ones are not (a
/// notification that arrives while nobody waits is kept). [`Changes::take`]
/// tells what changed since the last call, when the store knows.
pub struct Changes {
    notify: Arc<Notify>,
    /// `None`: the store does not say what changed.
    set: Option<Arc<std::sync::Mutex<ChangeSet>>>,
    _guard: Box<dyn Send + Sync>,
}

impl Changes {
    /// Changes signalled through `notify` alone: each one means "anything".
    pub fn new(notify: Arc<Notify>, guard: Box<dyn Send + Sync>) -> Changes {
        Changes { notify, set: None, _guard: guard }
    }

    /// Changes reported with their paths through the returned recorder.
    pub fn recorded(guard: impl FnOnce(ChangeRecorder) -> Box<dyn Send + Sync>) -> Changes {
        let notify = Arc::new(Notify::new());
        let set = Arc::new(std::sync::Mutex::new(ChangeSet::default()));
        let rec = ChangeRecorder { notify: notify.clone(), set: set.clone() };
        Changes { notify, set: Some(set), _guard: guard(rec) }
    }

    /// A signal that never fires (for stores without change notification:
    /// the caller's poll timer does the work).
    pub fn never() -> Changes {
        Changes::new(Arc::new(Notify::new()), Box::new(()))
    }

    /// Waits until something may have changed.
    pub async fn changed(&mut self) {
        self.notify.notified().await;
    }

    /// True when the store says what changed ([`Changes::take`]).
    pub fn knows_paths(&self) -> bool {
        self.set.is_some()
    }

    /// What changed since the last call. With [`Changes::knows_paths`],
    /// empty means nothing was signalled (a wake-up came from a timer);
    /// otherwise it is always "anything".
    pub fn take(&self) -> ChangeSet {
        match &self.set {
            Some(set) => std::mem::take(&mut *set.lock().expect("change set lock")),
            None => ChangeSet { all: true, paths: Default::default() },
        }
    }
}

/// Storage both parties can reach. Every adapter is a few calls wide.
///
/// Contract (checked by the store contract suite in `tests/store_contract.rs`):
/// - `put` is atomic: a reader sees the whole object or nothing, never part.
/// - `get` of an absent key is `Ok(None)`, not an error; an object larger
///   than `max_len` is an error, and nothing is read past it.
/// - `delete` of an absent key succeeds.
/// - `list` returns the names directly below `prefix` (objects and
///   sub-prefixes alike), unsorted; an absent prefix lists as empty.
/// - `changes` wakes the caller when something below `prefix` may have
///   changed; a store that cannot tell returns [`Changes::never`] and the
///   caller polls.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short human-readable name of the store, for logs and errors.
    fn describe(&self) -> String;
    async fn put(&self, key: &Key, data: &[u8]) -> Result<(), StoreError>;
    /// [`Store::put`] of a buffer the store may keep: a web store sends it
    /// as the request body without copying it (a chunk is megabytes).
    async fn put_bytes(&self, key: &Key, data: bytes::Bytes) -> Result<(), StoreError> {
        self.put(key, &data).await
    }
    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError>;
    async fn delete(&self, key: &Key) -> Result<(), StoreError>;
    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError>;
    fn changes(&self, prefix: &Key) -> Changes;
    /// Removes what interrupted writes left directly below `prefix` (for a
    /// folder, the temporary files of a killed process). Called only on a
    /// party's own outbox. Stores whose writes are atomic need nothing.
    async fn sweep(&self, _prefix: &Key) -> Result<(), StoreError> {
        Ok(())
    }
    /// True when `changes` is a real notification, so that the caller may
    /// poll rarely.
    fn notifies(&self) -> bool {
        false
    }
}

/// A shared handle to any store.
pub type DynStore = Arc<dyn Store>;

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> ChangeSet {
        ChangeSet { all: false, paths: paths.iter().map(|p| p.to_string()).collect() }
    }

    #[test]
    fn change_set_touches_the_prefix_its_parents_and_children_only() {
        let k = |s: &str| Key::new(s.split('/')).unwrap();
        let s = set(&["srv/c1"]);
        assert!(s.touches(&k("srv/c1")));
        assert!(s.touches(&k("srv/c1/x.msg")), "a change of the directory covers what is in it");
        assert!(!s.touches(&k("srv/c10")), "a sibling with a longer name is another directory");
        assert!(!s.touches(&k("srv/c2")));
        assert!(set(&["srv"]).touches(&k("srv/c1")), "the parent appeared");
        assert!(!set(&["c1/srv", "srv/key"]).touches(&k("srv/c1")));
        assert!(set(&[]).is_empty());
        assert!(ChangeSet { all: true, paths: Default::default() }.touches(&k("a/b")));
    }

    #[test]
    fn errors_on_the_root_have_no_stray_space() {
        let io = |key: &str| StoreError::Io { store: "s".into(), op: "list", key: key.into(), msg: "HTTP 503".into() };
        assert_eq!(io("").to_string(), "s: list: HTTP 503");
        assert_eq!(io("a/b").to_string(), "s: list a/b: HTTP 503");
        let r = StoreError::Redirected { store: "s".into(), op: "list", key: String::new(), location: "l".into() };
        assert!(r.to_string().starts_with("s: list: redirected to l;"), "{r}");
    }

    #[test]
    fn recorder_cuts_paths_and_overflows_to_anything() {
        let ch = Changes::recorded(|rec| {
            rec.changed(Some("srv/c1/0001.msg"));
            rec.changed(Some("c1/srv"));
            rec.changed(Some("c1"));
            Box::new(rec)
        });
        let got = ch.take();
        assert_eq!(got, set(&["c1", "c1/srv", "srv/c1"]));
        assert!(ch.take().is_empty(), "taken");
        assert!(Changes::never().take().all, "a store that cannot tell says anything");
    }
}

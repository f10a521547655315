//! Identity keys and pinned peer keys on disk, and the public key file each
//! party publishes in its outbox.
//!
//! - `<config>/keys/<id>.key`: my secret key (hex), mode 0600, created on first use.
//! - `<config>/known_peers`: pinned peer keys, one `<peer-id> <public key hex>` per
//!   line (`#` comments), like ssh's known_hosts. A key may be added by hand
//!   beforehand; otherwise it is pinned on first contact. Every update
//!   holds an exclusive lock on `<config>/known_peers.lock` (the tools of
//!   one user share the file) and replaces the file by a rename.
//! - `<store>/<id>/key`: my public key, JSON `{"v":1,"id":"<id>","x25519":"<hex>"}`.
//!
//! `<config>` is `$DMP_CONFIG_DIR`, else `<user config dir>/dmp` (`~/.config/dmp`).

use crate::crypto::{Identity, PublicKey};
use crate::id::PeerId;
use crate::store::{Key, Store, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the public key file in a party's outbox.
pub const KEY_FILE: &str = "key";

/// Problems with keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no configuration directory (set DMP_CONFIG_DIR)")]
    NoConfigDir,
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}: {msg}")]
    Malformed { path: String, msg: String },
    #[error(
        "the key of {peer} changed: pinned {pinned}, published {published}. If {peer} really has a new key, \
         accept it deliberately: remove the line for {peer} from {file} (or run with --accept-new-key {peer})"
    )]
    Changed { peer: String, pinned: String, published: String, file: String },
    #[error("{peer}'s key file in the store is malformed: {msg}")]
    BadPublished { peer: String, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Something the user should see about keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyNotice {
    /// First contact: `peer`'s key was pinned.
    Pinned { peer: PeerId, fingerprint: String, file: String },
    /// A changed key was accepted because the user asked for it.
    Replaced { peer: PeerId, fingerprint: String },
}

impl std::fmt::Display for KeyNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyNotice::Pinned { peer, fingerprint, file } => {
                write!(f, "first contact with {peer}: key fingerprint {fingerprint} (pinned in {file})")
            }
            KeyNotice::Replaced { peer, fingerprint } => {
                write!(f, "accepted the new key of {peer}: fingerprint {fingerprint}")
            }
        }
    }
}

/// The configuration directory.
pub fn config_dir() -> Result<PathBuf, KeyError> {
    if let Some(d) = std::env::var_os("DMP_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::config_dir().map(|d| d.join("dmp")).ok_or(KeyError::NoConfigDir)
}

fn io(path: &Path, e: impl std::fmt::Display) -> KeyError {
    KeyError::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// Loads my identity for `id`, creating it (0600) on first use. Returns
/// whether it was created.
pub fn load_or_create_identity(dir: &Path, id: &PeerId) -> Result<(Identity, bool), KeyError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let keys = dir.join("keys");
    let path = keys.join(format!("{id}.key"));
    loop {
        match crate::localfile::read_to_string(&path, crate::localfile::MAX_CONFIG) {
            Ok(text) => {
                if let Ok(meta) = std::fs::metadata(&path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        tracing::warn!("{} is readable by others; run chmod 600 on it", path.display());
                    }
                }
                let bytes = hex::decode(text.trim())
                    .map_err(|_| KeyError::Malformed { path: path.display().to_string(), msg: "not hex".into() })?;
                let ident = Identity::from_secret_bytes(&bytes)
                    .map_err(|e| KeyError::Malformed { path: path.display().to_string(), msg: e.to_string() })?;
                return Ok((ident, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&keys).map_err(|e| io(&keys, e))?;
                let ident = Identity::generate(&mut rand_core::TryRngCore::unwrap_err(rand_core::OsRng));
                // Written whole under a name of its own, then linked into
                // place: two tools started at once for the same id never
                // see a half-written key, and the second takes the first's.
                let tmp = keys.join(format!(".{id}.key.{:016x}.tmp", fastrand::u64(..)));
                let written = (|| {
                    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                    writeln!(f, "{}", hex::encode(ident.secret_bytes()))?;
                    f.sync_all()?;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
                    std::fs::hard_link(&tmp, &path)
                })();
                let _ = std::fs::remove_file(&tmp);
                match written {
                    Ok(()) => return Ok((ident, true)),
                    // A name that exists but reads as missing is a symbolic
                    // link to nothing: looping would never end.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if std::fs::metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                            return Err(io(&path, "a symbolic link to a missing file"));
                        }
                        continue;
                    }
                    Err(e) => return Err(io(&path, e)),
                }
            }
            Err(e) => return Err(io(&path, e)),
        }
    }
}

/// The pinned peer keys.
pub struct KnownPeers {
    path: PathBuf,
}

/// What [`KnownPeers::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The key matches the pinned one.
    Known,
    /// First contact: the key is now pinned.
    Pinned,
}

impl KnownPeers {
    pub fn open(dir: &Path) -> KnownPeers {
        KnownPeers { path: dir.join("known_peers") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> Result<Vec<(String, String)>, KeyError> {
        let text = match crate::localfile::read_to_string(&self.path, crate::localfile::MAX_CONFIG) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.path, e)),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(key), None) => out.push((id.to_owned(), key.to_owned())),
                _ => {
                    return Err(KeyError::Malformed {
                        path: format!("{}:{}", self.path.display(), n + 1),
                        msg: "expected `<peer-id> <public key hex>`".into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The pinned key of `peer`, if any.
    pub fn get(&self, peer: &PeerId) -> Result<Option<PublicKey>, KeyError> {
        for (id, key) in self.entries()? {
            if id == peer.as_str() {
                return PublicKey::from_hex(&key)
                    .map(Some)
                    .map_err(|e| KeyError::Malformed { path: self.path.display().to_string(), msg: e.to_string() });
            }
        }
        Ok(None)
    }

    /// Runs `f` holding an exclusive lock on `known_peers.lock` beside the
    /// file: the tools of one user share the file, and two read-modify-write
    /// updates at once (two first contacts) would lose one of the pins.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, KeyError>) -> Result<T, KeyError> {
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        let lock_path = self.path.with_extension("lock");
        // Non-blocking: a FIFO planted under the name would block the open.
        use std::os::unix::fs::OpenOptionsExt;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        if !lock.metadata().is_ok_and(|m| m.is_file()) {
            return Err(io(&lock_path, "not a regular file"));
        }
        // fs4: std's File::lock is newer than the MSRV (1.89 against 1.85).
        fs4::FileExt::lock(&lock).map_err(|e| io(&lock_path, e))?;
        let r = f();
        drop(lock);
        r
    }

    /// Checks `key` against the pinned key of `peer`, pinning it on first contact.
    pub fn check(&self, peer: &PeerId, key: &PublicKey) -> Result<Pin, KeyError> {
        self.locked(|| self.check_unlocked(peer, key))
    }

    fn check_unlocked(&self, peer: &PeerId, key: &PublicKey) -> Result<Pin, KeyError> {
        match self.get(peer)? {
            Some(p) if &p == key => Ok(Pin::Known),
            Some(p) => Err(KeyError::Changed {
                peer: peer.to_string(),
                pinned: p.fingerprint(),
                published: key.fingerprint(),
                file: self.path.display().to_string(),
            }),
            None => {
                self.pin_unlocked(peer, key)?;
                Ok(Pin::Pinned)
            }
        }
    }

    /// Pins `key` for `peer`, replacing any earlier pin.
    pub fn pin(&self, peer: &PeerId, key: &PublicKey) -> Result<(), KeyError> {
        self.locked(|| self.pin_unlocked(peer, key))
    }

    fn pin_unlocked(&self, peer: &PeerId, key: &PublicKey) -> Result<(), KeyError> {
        // (Only a missing file starts afresh: one that cannot be read must
        // not be replaced by a file holding this one pin.)
        let mut lines: Vec<String> = match crate::localfile::read_to_string(&self.path, crate::localfile::MAX_CONFIG) {
            Ok(t) => {
                t.lines().filter(|l| l.split_whitespace().next() != Some(peer.as_str())).map(str::to_owned).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                vec!["# dmp pinned peer keys: <peer-id> <x25519 public key hex>".to_owned()]
            }
            Err(e) => return Err(io(&self.path, e)),
        };
        lines.push(format!("{peer} {}", key.to_hex()));
        self.replace(&lines.join("\n"))
    }

    /// Writes the file anew (to a temporary name, then renamed into place).
    fn replace(&self, text: &str) -> Result<(), KeyError> {
        let tmp = self.path.with_extension(format!("tmp{:08x}", fastrand::u32(..)));
        std::fs::write(&tmp, text.to_owned() + "\n").map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io(&self.path, e))
    }

    /// Forgets the pin of `peer` (to accept a new key deliberately).
    pub fn forget(&self, peer: &PeerId) -> Result<(), KeyError> {
        self.locked(|| {
            let text = match crate::localfile::read_to_string(&self.path, crate::localfile::MAX_CONFIG) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io(&self.path, e)),
            };
            let kept: Vec<&str> = text.lines().filter(|l| l.split_whitespace().next() != Some(peer.as_str())).collect();
            self.replace(&kept.join("\n"))
        })
    }
}

fn key_file_key(id: &PeerId) -> Key {
    Key::new([id.as_str(), KEY_FILE]).expect("valid key")
}

/// The bytes of the key file announcing `id`'s public key.
pub fn key_file_body(id: &PeerId, key: &PublicKey) -> Vec<u8> {
    serde_json::json!({"v": 1, "id": id.as_str(), "x25519": key.to_hex()}).to_string().into_bytes()
}

/// Writes my public key into my outbox unless it is already there.
pub async fn publish(store: &dyn Store, id: &PeerId, key: &PublicKey) -> Result<(), StoreError> {
    let k = key_file_key(id);
    let body = key_file_body(id, key);
    if store.get(&k, 4096).await.ok().flatten().as_deref() != Some(&body[..]) {
        store.put(&k, &body).await?;
    }
    Ok(())
}

/// Removes my published key (a service that removes its files on exit).
pub async fn unpublish(store: &dyn Store, id: &PeerId) -> Result<(), StoreError> {
    store.delete(&key_file_key(id)).await
}

/// Reads `peer`'s published key; `Ok(None)` while it is not there.
pub async fn fetch_published(store: &dyn Store, peer: &PeerId) -> Result<Option<PublicKey>, KeyError> {
    let Some(bytes) = store.get(&key_file_key(peer), 4096).await? else { return Ok(None) };
    parse_key_file(peer, &bytes).map(Some)
}

/// Parses a key file, checking that it names `peer`.
pub fn parse_key_file(peer: &PeerId, bytes: &[u8]) -> Result<PublicKey, KeyError> {
    let bad = |msg: &str| KeyError::BadPublished { peer: peer.to_string(), msg: msg.into() };
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
    if v.get("v").and_then(|x| x.as_u64()) != Some(1) {
        return Err(bad("unknown version"));
    }
    if v.get("id").and_then(|x| x.as_str()) != Some(peer.as_str()) {
        return Err(bad("it names another party"));
    }
    let hexkey = v.get("x25519").and_then(|x| x.as_str()).ok_or_else(|| bad("no x25519 key"))?;
    PublicKey::from_hex(hexkey).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tools started at once for the same new id: one creates the key, the
    /// others load that very key (before, the losers failed with "File
    /// exists", or could read a key file still empty).
    #[test]
    fn tools_started_at_once_share_one_new_key() {
        for _ in 0..20 {
            let d = tempfile::tempdir().unwrap();
            let id = PeerId::new("alice").unwrap();
            let got: Vec<(Identity, bool)> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..6).map(|_| s.spawn(|| load_or_create_identity(d.path(), &id).unwrap())).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(got.iter().filter(|(_, created)| *created).count(), 1);
            assert!(got.iter().all(|(k, _)| k.public() == got[0].0.public()));
            let left: Vec<_> =
                std::fs::read_dir(d.path().join("keys")).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(left, ["alice.key"], "no temporary file left");
        }
    }

    #[test]
    fn identity_is_created_once_with_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let id = PeerId::new("alice").unwrap();
        let (a, created) = load_or_create_identity(d.path(), &id).unwrap();
        assert!(created);
        let (b, created) = load_or_create_identity(d.path(), &id).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        let mode = std::fs::metadata(d.path().join("keys/alice.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn pinning_refuses_a_changed_key() {
        let d = tempfile::tempdir().unwrap();
        let kp = KnownPeers::open(d.path());
        let bob = PeerId::new("bob").unwrap();
        let k1 = Identity::from_seed(b"k1 seed for tests only.........").public().clone();
        let k2 = Identity::from_seed(b"k2 seed for tests only.........").public().clone();
        assert_eq!(kp.check(&bob, &k1).unwrap(), Pin::Pinned);
        assert_eq!(kp.check(&bob, &k1).unwrap(), Pin::Known);
        let err = kp.check(&bob, &k2).unwrap_err().to_string();
        assert!(err.contains(&k1.fingerprint()) && err.contains(&k2.fingerprint()), "{err}");
        assert!(err.contains("known_peers"), "{err}");
        kp.forget(&bob).unwrap();
        assert_eq!(kp.check(&bob, &k2).unwrap(), Pin::Pinned);
    }

    /// A FIFO under the name of known_peers' lock is an error at once (the
    /// open blocked for ever, waiting for a reader).
    #[test]
    fn a_fifo_as_the_lock_of_known_peers_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let kp = KnownPeers::open(d.path());
        let fifo = d.path().join("known_peers.lock");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let k = Identity::from_seed(b"k1 seed for tests only.........").public().clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(kp.check(&PeerId::new("bob").unwrap(), &k).is_err()).unwrap());
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).expect("returned within 10 s"));
    }

    /// A known_peers that cannot be read (here: not UTF-8) is an error for
    /// `pin` (--accept-new-key): before, it was replaced by a file holding
    /// the one new pin, every other pin lost.
    #[test]
    fn pinning_never_replaces_a_file_it_cannot_read() {
        let d = tempfile::tempdir().unwrap();
        let kp = KnownPeers::open(d.path());
        let body = b"carol 00\n\xff\xfe\n".to_vec();
        std::fs::write(kp.path(), &body).unwrap();
        let k = Identity::from_seed(b"k1 seed for tests only.........").public().clone();
        assert!(kp.pin(&PeerId::new("bob").unwrap(), &k).is_err());
        assert!(kp.forget(&PeerId::new("carol").unwrap()).is_err());
        assert_eq!(std::fs::read(kp.path()).unwrap(), body, "known_peers is untouched");
    }

    #[test]
    fn first_contacts_at_the_same_time_keep_every_pin() {
        // Regression: the tools of one user share known_peers; two first
        // contacts at once each rewrote the file from what they had read,
        // and one pin was lost (a later changed key was then taken as a
        // first contact).
        let d = tempfile::tempdir().unwrap();
        let peers: Vec<PeerId> = (0..16).map(|i| PeerId::new(&format!("peer{i}")).unwrap()).collect();
        std::thread::scope(|s| {
            for (i, p) in peers.iter().enumerate() {
                let dir = d.path().to_owned();
                s.spawn(move || {
                    let seed = format!("seed {i:02} for tests only............");
                    let k = Identity::from_seed(seed.as_bytes()).public().clone();
                    assert_eq!(KnownPeers::open(&dir).check(p, &k).unwrap(), Pin::Pinned);
                });
            }
        });
        let kp = KnownPeers::open(d.path());
        for p in &peers {
            assert!(kp.get(p).unwrap().is_some(), "{p} is still pinned");
        }
    }

    #[test]
    fn key_files_name_their_owner() {
        let bob = PeerId::new("bob").unwrap();
        let k = Identity::from_seed(b"k1 seed for tests only.........").public().clone();
        let body = key_file_body(&bob, &k);
        assert_eq!(parse_key_file(&bob, &body).unwrap(), k);
        let carol = PeerId::new("carol").unwrap();
        assert!(parse_key_file(&carol, &body).is_err());
        assert!(parse_key_file(&bob, b"garbage").is_err());
    }
}

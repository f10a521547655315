//! A local folder as a store: what any synced folder (Dropbox, Syncthing,
//! OneDrive, a network share) looks like from this machine.
//!
//! Objects are written under a temporary name that readers and sync clients
//! ignore (`.~dmp-*.tmp`, in the same directory), then renamed into place,
//! so no reader ever sees a partial object. Changes are noticed through the
//! `notify` crate (inotify, FSEvents, ...) and, because sync clients and
//! network mounts do not always raise events, through a periodic rescan.

use super::{Changes, Key, Store, StoreError, op_on};
use async_trait::async_trait;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How a [`FolderStore`] learns of changes.
#[derive(Clone, Debug)]
pub struct FolderOptions {
    /// Use file-system notifications (inotify and friends).
    pub watch: bool,
    /// Rescan the watched tree this often and signal when it differs;
    /// `None` disables the fallback.
    pub rescan: Option<Duration>,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions { watch: true, rescan: Some(Duration::from_secs(2)) }
    }
}

/// A store in a local directory.
pub struct FolderStore {
    root: PathBuf,
    opts: FolderOptions,
}

impl FolderStore {
    /// Opens (creating if needed) the directory `root` as a store.
    pub fn open(root: impl Into<PathBuf>, opts: FolderOptions) -> Result<FolderStore, StoreError> {
        let root = root.into();
        if fs::metadata(&root).is_ok_and(|m| !m.is_dir()) {
            return Err(StoreError::BadSpec(format!("{} is not a directory", root.display())));
        }
        fs::create_dir_all(&root).map_err(|e| {
            StoreError::BadSpec(format!("{}: cannot create the store's directory: {e}", root.display()))
        })?;
        let meta = fs::metadata(&root).map_err(|e| StoreError::Io {
            store: root.display().to_string(),
            op: "open",
            key: String::new(),
            msg: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(StoreError::BadSpec(format!("{} is not a directory", root.display())));
        }
        let root = root.canonicalize().unwrap_or(root);
        Ok(FolderStore { root, opts })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &Key) -> PathBuf {
        let mut p = self.root.clone();
        for c in key.components() {
            p.push(c);
        }
        p
    }

    fn err(&self, op: &'static str, key: &Key, e: io::Error) -> StoreError {
        let store = self.describe();
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                StoreError::Full { store, msg: format!("{}: {e}", op_on(op, key.as_str())) }
            }
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                StoreError::Denied { store, msg: format!("{}: {e}", op_on(op, key.as_str())) }
            }
            _ => StoreError::Io { store, op, key: key.to_string(), msg: e.to_string() },
        }
    }

    /// Checks that every directory above `key` is a real directory, not a
    /// symlink or a file planted in the store; `Ok(false)` when one is absent.
    fn parents_are_dirs(&self, key: &Key) -> Result<bool, StoreError> {
        let comps: Vec<&str> = key.components().collect();
        let mut dir = self.root.clone();
        for c in &comps[..comps.len().saturating_sub(1)] {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(StoreError::NotAFile { store: self.describe(), key: dir.display().to_string() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(self.err("stat", key, e)),
            }
        }
        Ok(true)
    }

    /// Creates the parent directories of `key` and opens the last one,
    /// refusing to go through a symlink or a non-directory planted in the
    /// store. One component at a time, each created and opened relative to
    /// the one above (`mkdirat`, `openat` with `O_NOFOLLOW`): a directory
    /// swapped for a symlink at any moment cannot lead outside the store,
    /// neither for the write nor for the directories made on the way.
    fn ensure_parent(&self, key: &Key) -> Result<rustix::fd::OwnedFd, StoreError> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dir = self.open_dir(&[]).map_err(|e| self.err("mkdir", key, e))?;
        let mut path = self.root.clone();
        let comps: Vec<&str> = key.components().collect();
        for c in &comps[..comps.len() - 1] {
            path.push(c);
            match rustix::fs::mkdirat(&dir, *c, Mode::from_raw_mode(0o777)) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::EXIST => {}
                Err(e) => return Err(self.err("mkdir", key, e.into())),
            }
            dir = match rustix::fs::openat(&dir, *c, flags, Mode::empty()) {
                Ok(d) => d,
                Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                    return Err(StoreError::NotADirectory { store: self.describe(), key: path.display().to_string() });
                }
                Err(e) => return Err(self.err("mkdir", key, e.into())),
            };
        }
        Ok(dir)
    }

    fn put_sync(&self, key: &Key, data: &[u8]) -> Result<(), StoreError> {
        // Everything below through a descriptor of the directory, opened
        // without following a symbolic link: a directory swapped for a
        // link after it was opened cannot send the write elsewhere.
        let dir = self.ensure_parent(key)?;
        let tmp = format!(".~dmp-{:016x}.tmp", fastrand::u64(..));
        let res = (|| -> io::Result<()> {
            use rustix::fs::{AtFlags, FileType, Mode, OFlags};
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut f = fs::File::from(rustix::fs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(0o644))?);
            f.write_all(data)?;
            drop(f);
            // A directory planted at the final name would swallow the rename.
            if let Ok(st) = rustix::fs::statat(&dir, key.name(), AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(io::Error::other("a directory is in the way"));
                }
            }
            Ok(rustix::fs::renameat(&dir, tmp.as_str(), &dir, key.name())?)
        })();
        if let Err(e) = res {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
            return Err(self.err("put", key, e));
        }
        Ok(())
    }

    /// Opens the directory `<root>/<comps>` (the root when empty), never
    /// through a symbolic link: `ELOOP` or `ENOTDIR` when a component is
    /// one, or is no directory.
    fn open_dir(&self, comps: &[&str]) -> io::Result<rustix::fd::OwnedFd> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut path = self.root.clone();
        for c in comps {
            path.push(c);
        }
        if let Some(r) = openat2_no_symlinks(&path, flags) {
            return r;
        }
        // Where openat2 is missing: each directory above checked, the last
        // one refused by O_NOFOLLOW.
        let mut d = self.root.clone();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            d.push(c);
            if !fs::symlink_metadata(&d)?.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
        }
        Ok(rustix::fs::open(&path, flags, Mode::empty())?)
    }

    /// Opens `key` for reading in one system call that refuses a symbolic
    /// link in any component (Linux 5.6+ `openat2`, `RESOLVE_NO_SYMLINKS`;
    /// the root was made canonical at open). `None`: not available here, or
    /// the look-up raced with a rename; the caller then checks each
    /// component itself, as before (two `statx` calls per read saved on
    /// every message read).
    #[cfg(target_os = "linux")]
    fn open_fast(&self, key: &Key) -> Option<io::Result<fs::File>> {
        let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC;
        openat2_no_symlinks(&self.path(key), flags).map(|r| r.map(fs::File::from))
    }

    #[cfg(not(target_os = "linux"))]
    fn open_fast(&self, _key: &Key) -> Option<io::Result<fs::File>> {
        None
    }

    /// Opens `key` for reading, never through a symbolic link: `None` when
    /// it (or a directory above it) does not exist. `fast`: try
    /// [`FolderStore::open_fast`] first.
    fn open_for_read(&self, key: &Key, fast: bool) -> Result<Option<fs::File>, StoreError> {
        let f = match fast.then(|| self.open_fast(key)).flatten() {
            Some(f) => f,
            None => {
                // O_NOFOLLOW guards the last component only.
                if !self.parents_are_dirs(key)? {
                    return Ok(None);
                }
                fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(self.path(key))
            }
        };
        match f {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) => {
                Err(StoreError::NotAFile { store: self.describe(), key: key.to_string() })
            }
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    fn get_sync(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(f) = self.open_for_read(key, true)? else { return Ok(None) };
        let meta = f.metadata().map_err(|e| self.err("get", key, e))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile { store: self.describe(), key: key.to_string() });
        }
        if meta.len() > max_len {
            return Err(StoreError::TooLarge {
                store: self.describe(),
                key: key.to_string(),
                len: Some(meta.len()),
                max: max_len,
            });
        }
        let mut buf = crate::buf::vec(meta.len() as usize);
        // Read at most one byte past the limit, in case the file grew.
        f.take(max_len + 1).read_to_end(&mut buf).map_err(|e| self.err("get", key, e))?;
        if buf.len() as u64 > max_len {
            return Err(StoreError::TooLarge { store: self.describe(), key: key.to_string(), len: None, max: max_len });
        }
        Ok(Some(buf))
    }

    fn delete_sync(&self, key: &Key) -> Result<(), StoreError> {
        // Through a descriptor of the directory, as in `put_sync`: a
        // directory swapped for a symbolic link meanwhile cannot make this
        // delete a file outside the store.
        let comps: Vec<&str> = key.components().collect();
        let dir = match self.open_dir(&comps[..comps.len() - 1]) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                return Err(StoreError::NotAFile { store: self.describe(), key: key.to_string() });
            }
            Err(e) => return Err(self.err("delete", key, e)),
        };
        match rustix::fs::unlinkat(&dir, key.name(), rustix::fs::AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(()),
            Err(e) => Err(self.err("delete", key, e.into())),
        }
    }

    fn list_sync(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        if !prefix.is_root() && !matches!(self.parents_are_dirs(prefix), Ok(true)) {
            return Ok(Vec::new());
        }
        let dir = self.path(prefix);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err("list", prefix, e)),
        }
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err("list", prefix, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| self.err("list", prefix, e))?;
            if let Some(name) = ent.file_name().to_str() {
                if super::is_valid_component(name) {
                    out.push(name.to_owned());
                }
            }
        }
        Ok(out)
    }
}

/// Opens `path` (absolute, below the canonical root) in one system call
/// that refuses a symbolic link in any component (Linux 5.6+ `openat2`,
/// `RESOLVE_NO_SYMLINKS`). `None`: not available here, or the look-up
/// raced with a rename; the caller then checks each component itself.
#[cfg(target_os = "linux")]
fn openat2_no_symlinks(path: &Path, flags: rustix::fs::OFlags) -> Option<io::Result<rustix::fd::OwnedFd>> {
    use rustix::fs::{CWD, Mode, ResolveFlags};
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(CWD, path, flags, Mode::empty(), resolve) {
        Ok(fd) => Some(Ok(fd)),
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
            // An old kernel, or a sandbox that forbids the call.
            UNAVAILABLE.store(true, Ordering::Relaxed);
            None
        }
        Err(e) if e == rustix::io::Errno::AGAIN => None,
        Err(e) => Some(Err(e.into())),
    }
}

#[cfg(not(target_os = "linux"))]
fn openat2_no_symlinks(_path: &Path, _flags: rustix::fs::OFlags) -> Option<io::Result<rustix::fd::OwnedFd>> {
    None
}

/// Keeps the watcher and the rescan thread alive as long as the `Changes`.
struct FolderWatch {
    _watcher: Option<Arc<std::sync::Mutex<notify::RecommendedWatcher>>>,
    #[cfg(target_os = "linux")]
    _task: Option<super::folder_watch::Task>,
    #[cfg(not(target_os = "linux"))]
    _task: Option<()>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `target` if it is a directory, else the nearest directory above it, but
/// not above `floor`. A symbolic link is no directory here: the store
/// never reads through one, and its watch must not see through one either.
pub(super) fn nearest_dir(target: &Path, floor: &Path) -> PathBuf {
    let mut d = target.to_path_buf();
    while d != floor && !fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) && d.pop() {}
    d
}

/// A cheap fingerprint of a tree: names, sizes and modification times.
fn fingerprint(dir: &Path, depth: u32, acc: &mut u64) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let Ok(m) = ent.metadata() else { continue };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in ent.file_name().as_encoded_bytes() {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        h ^= m.len().rotate_left(17);
        if let Ok(t) = m.modified() {
            if let Ok(d) = t.duration_since(SystemTime::UNIX_EPOCH) {
                h ^= (d.as_nanos() as u64).rotate_left(31);
            }
        }
        // Order-independent combination.
        *acc = acc.wrapping_add(h.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if m.is_dir() && depth > 0 {
            fingerprint(&ent.path(), depth - 1, acc);
        }
    }
}

#[async_trait]
impl Store for FolderStore {
    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }

    async fn put(&self, key: &Key, data: &[u8]) -> Result<(), StoreError> {
        self.put_sync(key, data)
    }

    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sync(key, max_len)
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.delete_sync(key)
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        self.list_sync(prefix)
    }

    fn changes(&self, prefix: &Key) -> Changes {
        use notify::Watcher;
        use std::sync::atomic::{AtomicBool, Ordering};
        // Watch the prefix (recursively) if it exists. If not (a peer's
        // directory, not ours to create), watch the nearest directory above
        // it, without its subdirectories, and move down as the missing ones
        // appear: a hundred parties each watching the whole store would
        // each be woken by everyone's writes.
        let target = self.path(prefix);
        let dir = nearest_dir(&target, &self.root);
        let (watch, rescan, root) = (self.opts.watch, self.opts.rescan, self.root.clone());
        Changes::recorded(move |rec| {
            let stop = Arc::new(AtomicBool::new(false));
            let exact = dir == target;
            let (moved_tx, moved_rx) = std::sync::mpsc::channel::<()>();
            // The directory below may appear between finding `dir` and the
            // watch taking hold: the thread below looks once at the start.
            let _ = moved_tx.send(());
            #[cfg(target_os = "linux")]
            let task = if watch {
                match super::folder_watch::start(&root, &target, rec.clone()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::debug!("inotify on the runtime: {e}; using notify's thread");
                        None
                    }
                }
            } else {
                None
            };
            #[cfg(not(target_os = "linux"))]
            let task: Option<()> = None;
            let watcher = if watch && task.is_none() {
                let (r, root) = (rec.clone(), root.clone());
                let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                    match res {
                        Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => return,
                        Ok(ev) if !ev.need_rescan() && !ev.paths.is_empty() => {
                            for p in &ev.paths {
                                // Outside the store (cannot happen) counts as anything.
                                r.changed(p.strip_prefix(&root).ok().and_then(|r| r.to_str()));
                            }
                        }
                        _ => r.changed(None),
                    }
                    let _ = moved_tx.send(());
                });
                let mode = if exact { notify::RecursiveMode::Recursive } else { notify::RecursiveMode::NonRecursive };
                match w {
                    Ok(mut w) => match w.watch(&dir, mode) {
                        Ok(()) => Some(Arc::new(std::sync::Mutex::new(w))),
                        Err(e) => {
                            tracing::warn!("cannot watch {}: {e}; relying on rescans", dir.display());
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!("no file-system notifications: {e}; relying on rescans");
                        None
                    }
                }
            } else {
                None
            };
            if let (false, Some(w)) = (exact, watcher.clone()) {
                // Moves the watch down as directories appear. Not from the
                // watcher's own callback: that would wait on itself.
                let (stop, target, root, rec) = (stop.clone(), target.clone(), root.clone(), rec.clone());
                let mut at = dir.clone();
                std::thread::Builder::new()
                    .name("dmp-watch".into())
                    .spawn(move || {
                        let mut again = false;
                        while !stop.load(Ordering::Relaxed) {
                            if !again {
                                if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                                    moved_rx.recv_timeout(Duration::from_millis(500))
                                {
                                    return;
                                }
                            }
                            again = false;
                            let next = nearest_dir(&target, &at);
                            if next == at {
                                continue;
                            }
                            let deeper = next == target;
                            let mode = if deeper {
                                notify::RecursiveMode::Recursive
                            } else {
                                notify::RecursiveMode::NonRecursive
                            };
                            let mut w = w.lock().expect("watcher lock");
                            if w.watch(&next, mode).is_ok() {
                                let _ = w.unwatch(&at);
                                at = next;
                                // Files may have landed before the watch did.
                                rec.changed(at.strip_prefix(&root).ok().and_then(|r| r.to_str()));
                                if deeper {
                                    return;
                                }
                                // The next level may have appeared before this watch.
                                again = true;
                            }
                        }
                    })
                    .expect("spawn watch thread");
            }
            if let Some(every) = rescan {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("dmp-rescan".into())
                    .spawn(move || {
                        let mut last = 0u64;
                        fingerprint(&nearest_dir(&target, &root), 3, &mut last);
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(every);
                            let mut now = 0u64;
                            fingerprint(&nearest_dir(&target, &root), 3, &mut now);
                            if now != last {
                                last = now;
                                rec.changed(None);
                            }
                        }
                    })
                    .expect("spawn rescan thread");
            }
            Box::new(FolderWatch { _watcher: watcher, _task: task, stop })
        })
    }

    fn notifies(&self) -> bool {
        self.opts.watch
    }

    async fn sweep(&self, prefix: &Key) -> Result<(), StoreError> {
        // Never through a symbolic link (an outbox swapped for a link to a
        // directory elsewhere): only the store's own temporary files go.
        let comps: Vec<&str> = prefix.components().collect();
        let Ok(dir) = self.open_dir(&comps) else { return Ok(()) };
        let Ok(rd) = rustix::fs::Dir::read_from(&dir) else { return Ok(()) };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy();
            if name.starts_with(".~dmp-") && name.ends_with(".tmp") {
                let _ = rustix::fs::unlinkat(&dir, ent.file_name(), rustix::fs::AtFlags::empty());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// An outbox swapped for a symbolic link to a directory outside the
    /// store: the clean-up of interrupted writes (`sweep`) removes nothing
    /// there.
    #[tokio::test]
    async fn sweep_never_goes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let theirs = outside.path().join(".~dmp-0123456789abcdef.tmp");
        std::fs::write(&theirs, b"another store's write in progress").unwrap();
        let store = FolderStore::open(dir.path(), FolderOptions { watch: false, rescan: None }).unwrap();
        std::fs::create_dir_all(store.root().join("bob")).unwrap();
        symlink(outside.path(), store.root().join("bob/alice")).unwrap();
        store.sweep(&Key::new(["bob", "alice"]).unwrap()).await.unwrap();
        assert!(theirs.exists(), "a file outside the store was removed");
        // Its own temporary files, in a real directory, do go.
        std::fs::create_dir_all(store.root().join("bob/carol")).unwrap();
        let mine = store.root().join("bob/carol/.~dmp-0000000000000001.tmp");
        std::fs::write(&mine, b"x").unwrap();
        store.sweep(&Key::new(["bob", "carol"]).unwrap()).await.unwrap();
        assert!(!mine.exists());
    }

    /// An outbox swapped back and forth between a directory and a symbolic
    /// link to a directory outside the store while the store deletes and
    /// writes there: nothing outside is ever removed or written (before,
    /// the check of the path and its use were two steps, and the swap
    /// could fall between them).
    #[test]
    fn a_directory_swapped_for_a_symlink_never_leads_outside() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path(), FolderOptions { watch: false, rescan: None }).unwrap();
        let r = store.root().to_path_buf();
        std::fs::create_dir_all(r.join("bob/alice")).unwrap();
        let victim = outside.path().join("0000000000000001-0000000000000001.msg");
        let key = Key::new(["bob", "alice", "0000000000000001-0000000000000001.msg"]).unwrap();
        let stop = AtomicBool::new(false);
        let escaped = std::thread::scope(|s| {
            s.spawn(|| {
                // Swap: the outbox is now a real directory, now a link
                // (one atomic exchange of the two names each time).
                let (outbox, other) = (r.join("bob/alice"), r.join("bob/other"));
                symlink(outside.path(), &other).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let flags = rustix::fs::RenameFlags::EXCHANGE;
                    rustix::fs::renameat_with(rustix::fs::CWD, &outbox, rustix::fs::CWD, &other, flags).unwrap();
                }
            });
            let mut escaped = 0;
            for _ in 0..5_000 {
                std::fs::write(&victim, b"a user's file").unwrap();
                let _ = store.delete_sync(&key);
                if !victim.exists() {
                    escaped += 1;
                }
                let _ = store.put_sync(&key, b"message");
                if std::fs::read(&victim).unwrap_or_default() != b"a user's file" {
                    escaped += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            escaped
        });
        assert_eq!(escaped, 0, "{escaped} deletes or writes went through the symlink");
    }

    /// A party's directory swapped back and forth with a symbolic link to
    /// a directory outside the store while the store writes below it: no
    /// directory is ever made outside (before, the check of each directory
    /// and the `mkdir` below it were two steps).
    #[test]
    fn directories_are_never_made_through_a_swapped_symlink() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = FolderStore::open(dir.path(), FolderOptions { watch: false, rescan: None }).unwrap();
        let r = store.root().to_path_buf();
        std::fs::create_dir_all(r.join("bob")).unwrap();
        let key = Key::new(["bob", "alice", "0000000000000001-0000000000000001.msg"]).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let (party, other) = (r.join("bob"), r.join("other"));
                symlink(outside.path(), &other).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let flags = rustix::fs::RenameFlags::EXCHANGE;
                    rustix::fs::renameat_with(rustix::fs::CWD, &party, rustix::fs::CWD, &other, flags).unwrap();
                }
            });
            let mut made = 0;
            // (The window was narrow: 8 to 40 in 100,000 went outside here.)
            for _ in 0..100_000 {
                let _ = store.put_sync(&key, b"message");
                if std::fs::remove_dir_all(outside.path().join("alice")).is_ok() {
                    made += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(made, 0, "{made} times a directory was made outside the store");
        });
        let made: Vec<_> = std::fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(made.is_empty(), "made outside the store: {made:?}");
    }

    /// The one-call open (openat2) and the component-by-component checks
    /// it replaces agree on every layout a hostile or odd store can have.
    #[test]
    fn the_fast_open_agrees_with_the_checked_one() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let store = FolderStore::open(dir.path(), FolderOptions { watch: false, rescan: None }).unwrap();
        let r = store.root().to_path_buf();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/file"), b"ok").unwrap();
        std::fs::write(r.join("a/plain"), b"x").unwrap();
        std::fs::create_dir_all(r.join("a/b/dir")).unwrap();
        symlink(outside.path().join("secret"), r.join("a/b/link")).unwrap();
        symlink(outside.path(), r.join("a/dirlink")).unwrap();
        symlink(r.join("a/b"), r.join("a/inner")).unwrap();
        let class = |fast: bool, key: &str| -> String {
            let k = Key::new(key.split('/')).unwrap();
            match store.open_for_read(&k, fast) {
                Ok(Some(mut f)) => {
                    let mut s = String::new();
                    match f.read_to_string(&mut s) {
                        Ok(_) => format!("file {s}"),
                        Err(_) => "unreadable".into(), // a directory
                    }
                }
                Ok(None) => "absent".into(),
                Err(StoreError::NotAFile { .. }) => "not a file".into(),
                Err(e) => format!("error {e}"),
            }
        };
        for key in [
            "a/b/file",
            "a/b/missing",
            "x/y/missing",
            "a/plain/below",
            "a/b/link",
            "a/dirlink/secret",
            "a/inner/file",
            "a/b/dir",
        ] {
            assert_eq!(class(true, key), class(false, key), "{key}");
        }
        assert_eq!(class(true, "a/b/file"), "file ok");
        assert_eq!(class(true, "a/dirlink/secret"), "not a file");
        assert_eq!(class(true, "a/b/link"), "not a file");
        assert_eq!(class(true, "a/inner/file"), "not a file");
    }
}

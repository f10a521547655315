//! The folder store's file-system notifications on Linux, read on the
//! caller's tokio runtime.
//!
//! The inotify descriptor is registered with the runtime's own poller, so
//! an event wakes the waiting task directly. Through the `notify` crate
//! (still used on other systems, and outside a runtime), every event first
//! woke that crate's thread, which then woke the runtime's: two thread
//! wake-ups per message instead of one, on each side of a round trip.
//!
//! What is watched is the same as before: the prefix and everything below
//! it when it exists; otherwise the nearest directory above it, alone,
//! moving down as the missing directories appear.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::io::unix::AsyncFd;

use super::ChangeRecorder;
use super::folder::nearest_dir;

/// Everything that can mean a file appeared, changed or went away. Not
/// each write (a file being written is not ready: its close or its rename
/// says when it is, and rescans catch anything else). Not following
/// symbolic links: a link planted in the store must not make us
/// watch (and report) something outside it.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// How deep below the watched prefix directories are watched (a store's
/// keys are a few components long; this bounds what a hostile tree costs).
const MAX_DEPTH: u32 = 16;

struct Watch {
    watches: Watches,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    root: PathBuf,
    target: PathBuf,
    /// The directory watched on the way down to `target` (`target` once there).
    at: PathBuf,
    at_wd: Option<WatchDescriptor>,
    rec: ChangeRecorder,
}

impl Watch {
    fn report(&self, path: &Path) {
        // Outside the store (cannot happen) counts as anything.
        self.rec.changed(path.strip_prefix(&self.root).ok().and_then(|r| r.to_str()));
    }

    fn add(&mut self, dir: &Path) -> io::Result<WatchDescriptor> {
        let wd = self.watches.add(dir, mask())?;
        self.dirs.insert(wd.clone(), dir.to_owned());
        Ok(wd)
    }

    /// Watches `dir` and the directories below it. Fails when `dir` cannot be watched.
    fn add_tree(&mut self, dir: &Path, depth: u32) -> io::Result<()> {
        self.add(dir)?;
        if depth == 0 {
            return Ok(());
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
        for ent in rd.flatten() {
            if ent.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = self.add_tree(&ent.path(), depth - 1);
            }
        }
        Ok(())
    }

    /// Moves the watch down toward `target` as far as directories exist.
    fn descend(&mut self) {
        while self.at != self.target {
            let next = nearest_dir(&self.target, &self.at);
            if next == self.at {
                return;
            }
            let added = if next == self.target {
                self.add_tree(&next, MAX_DEPTH).map(|()| None)
            } else {
                self.add(&next).map(Some)
            };
            let Ok(wd) = added else { return };
            if let Some(old) = std::mem::replace(&mut self.at_wd, wd) {
                let _ = self.watches.remove(old);
            }
            // Files may have landed before the watch did.
            self.report(&next);
            self.at = next;
        }
    }

    fn rewatch(&mut self) {
        self.rec.changed(None);
        let dir = nearest_dir(&self.target, &self.root);
        let added =
            if dir == self.target { self.add_tree(&dir, MAX_DEPTH).map(|()| None) } else { self.add(&dir).map(Some) };
        self.at = dir;
        match added {
            Ok(wd) => {
                self.at_wd = wd;
                self.descend();
            }
            Err(e) => {
                self.at_wd = None;
                tracing::warn!("cannot watch {} again: {e}; relying on rescans", self.at.display());
            }
        }
    }

    fn on_event(&mut self, wd: &WatchDescriptor, mask: EventMask, name: Option<&OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost, directory creations among them perhaps.
            self.rec.changed(None);
            if self.at == self.target {
                let t = self.target.clone();
                let _ = self.add_tree(&t, MAX_DEPTH);
            }
            self.descend();
            return;
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) && self.dirs.get(wd) == Some(&self.at) {
            // The directory this watch hangs on (the prefix, or the one
            // above it it waits in) was removed or moved away: start again
            // from the nearest directory left, so that a prefix made anew
            // is seen (through `notify`, only the rescans would see it).
            self.dirs.remove(wd);
            let _ = self.watches.remove(wd.clone());
            self.rewatch();
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(wd);
            return;
        }
        // A writer's temporary file (ours: `.~dmp-*.tmp`) is not a message
        // until it is renamed, and the rename reports the final name.
        if name.is_some_and(is_temporary) && !mask.contains(EventMask::ISDIR) {
            return;
        }
        let Some(dir) = self.dirs.get(wd) else { return };
        let path = match name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        };
        if mask.contains(EventMask::ISDIR)
            && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
            && self.at == self.target
        {
            let depth = path.strip_prefix(&self.target).map_or(0, |p| p.components().count() as u32);
            let _ = self.add_tree(&path, MAX_DEPTH.saturating_sub(depth));
        }
        self.report(&path);
        if self.at != self.target {
            self.descend();
        }
    }
}

fn is_temporary(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(".~dmp-") && n.ends_with(".tmp"))
}

/// Stops the reading task when the `Changes` go.
pub(super) struct Task(tokio::task::AbortHandle);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching `target` under `root` on the current tokio runtime.
/// Fails outside a runtime, or when inotify or the first watch cannot be
/// had; the caller then falls back to `notify` or to rescans.
pub(super) fn start(root: &Path, target: &Path, rec: ChangeRecorder) -> io::Result<Task> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let _enter = handle.enter();
    let ino = Inotify::init()?;
    let dir = nearest_dir(target, root);
    let mut w = Watch {
        watches: ino.watches(),
        dirs: HashMap::new(),
        root: root.to_owned(),
        target: target.to_owned(),
        at: dir.clone(),
        at_wd: None,
        rec,
    };
    if dir == target {
        w.add_tree(&dir, MAX_DEPTH)?;
    } else {
        w.at_wd = Some(w.add(&dir)?);
        // The directory below may have appeared before the watch took hold.
        w.descend();
    }
    // `new` is deprecated for owners that might swap their descriptor;
    // `Inotify` owns its one descriptor for its whole life, and the
    // replacement (`register`) is `unsafe`, which this workspace denies.
    #[allow(deprecated)]
    let mut fd = AsyncFd::new(ino)?;
    let task = handle.spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!("file-system notifications stopped: {e}; relying on rescans");
                    w.rec.changed(None);
                    return;
                }
            };
            let res = guard.try_io(|inner| {
                for ev in inner.get_mut().read_events(&mut buf)? {
                    w.on_event(&ev.wd, ev.mask, ev.name);
                }
                Ok(())
            });
            // `Err(_)`: nothing to read after all; wait again.
            match res {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => {
                    tracing::warn!("file-system notifications stopped: {e}; relying on rescans");
                    w.rec.changed(None);
                    return;
                }
            }
        }
    });
    Ok(Task(task.abort_handle()))
}

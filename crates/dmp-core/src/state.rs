//! Local state files: where each tool keeps what it needs to resume.
//!
//! Files live in `$DMP_STATE_DIR`, else `<per-user state dir>/dmp`
//! (`~/.local/state/dmp` on Linux), one per (tool, store, parties, target),
//! named by a hash of those. Each is JSON followed by a line holding its
//! SHA-256, written to a temporary name and renamed into place: a torn or
//! altered file is detected and treated as absent.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory for state files.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DMP_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    dirs::state_dir().or_else(dirs::data_local_dir).map(|d| d.join("dmp"))
}

/// The state file for `tool` with the identifying `parts`.
pub fn state_file(tool: &str, parts: &[&str]) -> Option<PathBuf> {
    let joined = parts.join("\n");
    let h = crate::wire::sha256_hex(joined.as_bytes());
    state_dir().map(|d| d.join(format!("{tool}-{}.json", &h[..24])))
}

/// A lock `tool` holds for the identifying `parts` on this machine, taken
/// by [`lock`]. Dropping it removes the lock file (still holding the lock):
/// a finished run leaves nothing in the state directory.
#[derive(Debug)]
pub struct StateLock {
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = fs4::FileExt::unlock(&self.file);
    }
}

/// Takes the lock: `Ok(Some(lock))` held; `Ok(None)` where no lock can be
/// had (no state directory, a file system without locks), and the run goes
/// on unguarded; `Err(path)` when another process holds it.
pub fn lock(tool: &str, parts: &[&str]) -> Result<Option<StateLock>, PathBuf> {
    let Some(path) = state_file(tool, parts).map(|p| p.with_extension("lock")) else { return Ok(None) };
    lock_at(&path)
}

/// [`lock`] on the file `path`.
fn lock_at(path: &Path) -> Result<Option<StateLock>, PathBuf> {
    let path = path.to_path_buf();
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    // A holder that finished removes the file it locked; whoever opened
    // that file meanwhile locks a name that is gone, so it checks and
    // tries again with the file now under the name.
    for _ in 0..8 {
        // Non-blocking: a FIFO planted under the name would block the open.
        use std::os::unix::fs::OpenOptionsExt;
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "cannot take the run lock {}: {e}; going on without it (a second run as the same \
                     party would not be stopped; DMP_STATE_DIR sets where it goes)",
                    path.display()
                );
                return Ok(None);
            }
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            tracing::warn!("the lock {} is not a regular file; going on without it", path.display());
            return Ok(None);
        }
        // fs4: std's File::try_lock is newer than the MSRV (1.89 against 1.85).
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Err(path),
            Err(fs4::TryLockError::Error(e)) => {
                tracing::warn!(
                    "cannot take the run lock {}: {e}; going on without it (a second run as the same \
                     party would not be stopped)",
                    path.display()
                );
                return Ok(None);
            }
        }
        use std::os::unix::fs::MetadataExt;
        let same = match (file.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if same {
            return Ok(Some(StateLock { file, path }));
        }
    }
    Ok(None)
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {msg}")]
    Io { path: String, msg: String },
    #[error("state file {path} is damaged ({why}); ignoring it")]
    Damaged { path: String, why: String },
}

/// Loads a state file; `Ok(None)` when there is none.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let text = match crate::localfile::read_to_string(path, crate::localfile::MAX_STATE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::Io { path: path.display().to_string(), msg: e.to_string() }),
    };
    let damaged = |why: &str| StateError::Damaged { path: path.display().to_string(), why: why.into() };
    let (body, sum) = text.trim_end().rsplit_once('\n').ok_or_else(|| damaged("no checksum line"))?;
    if crate::wire::sha256_hex(body.as_bytes()) != sum {
        return Err(damaged("checksum mismatch"));
    }
    serde_json::from_str(body).map(Some).map_err(|e| damaged(&e.to_string()))
}

/// Saves a state file atomically (temporary name, then rename). It is not
/// fsynced: that would force the file system to flush every dirty page of
/// the transfer with it (ext4 ordered mode), many times a second. A process
/// crash loses nothing; a power loss may roll the state back or tear it
/// (docs/PROTOCOL.md 5.3 says what then happens).
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |e: std::io::Error| StateError::Io { path: path.display().to_string(), msg: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let body = serde_json::to_string(value).expect("state serializes");
    let sum = crate::wire::sha256_hex(body.as_bytes());
    let tmp = path.with_extension(format!("tmp{:08x}", fastrand::u32(..)));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.write_all(b"\n")?;
        f.write_all(sum.as_bytes())?;
        f.write_all(b"\n")?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}

/// Removes a state file (absent is fine), and the temporary files of saves
/// that a crash cut short.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else { return };
    let prefix = format!("{stem}.tmp");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO under the lock's name: no lock, at once (the open blocked
    /// for ever, waiting for a reader).
    #[test]
    fn a_fifo_as_the_lock_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.lock");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || tx.send(lock_at(&p).map(|l| l.is_some())).unwrap());
        let got = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("lock returned within 10 s");
        assert_eq!(got, Ok(false));
    }

    /// A FIFO or a device under a state file's name is an error at once,
    /// not a read that blocks (a FIFO) or never ends (`/dev/zero`).
    #[test]
    fn a_special_file_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("s.json");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(load::<Vec<u32>>(&fifo), Err(StateError::Io { .. })));
        assert!(matches!(load::<Vec<u32>>(Path::new("/dev/zero")), Err(StateError::Io { .. })));
    }

    #[test]
    fn round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), None);
        save(&p, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2, 3]));
        let text = std::fs::read_to_string(&p).unwrap();
        // A torn write: any prefix is rejected.
        for n in [0, 1, text.len() / 2, text.len() - 2] {
            std::fs::write(&p, &text[..n]).unwrap();
            assert!(load::<Vec<u32>>(&p).is_err() || n == 0, "prefix {n} accepted");
        }
        std::fs::write(&p, text.replace('2', "7")).unwrap();
        assert!(matches!(load::<Vec<u32>>(&p), Err(StateError::Damaged { .. })));
    }
}

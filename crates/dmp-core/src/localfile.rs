//! Reading the small local files the tools keep or are given (keys, pinned
//! peer keys, configuration, peers, resume state, `.netrc`): bounded, and
//! never blocking on a FIFO or a device planted under the name.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads `path` as UTF-8 text of at most `max` bytes. A FIFO, socket,
/// device or directory under the name is an error ("not a regular file"),
/// without blocking on it (the open is non-blocking); so is a file longer
/// than `max`. Symbolic links are followed (the user's own files may be
/// links). A missing file is an error of kind `NotFound`, as from std.
pub fn read_to_string(path: &Path, max: u64) -> io::Result<String> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let too_large = |len: u64| io::Error::other(format!("too large ({len} bytes, at most {max})"));
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut text = String::with_capacity(meta.len() as usize);
    // At most one byte past the limit, in case the file grew meanwhile.
    f.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

/// Limit of a configuration, peers, key or `.netrc` file.
pub const MAX_CONFIG: u64 = 1 << 20;

/// Limit of a resume state file.
pub const MAX_STATE: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_and_huge_files_are_errors_not_hangs() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read_to_string(&fifo, 100).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_to_string(d.path(), 100).unwrap_err().to_string().contains("not a regular file"));
        assert!(read_to_string(Path::new("/dev/zero"), 100).unwrap_err().to_string().contains("not a regular file"));
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'a'; 101]).unwrap();
        assert!(read_to_string(&big, 100).unwrap_err().to_string().contains("too large"));
        assert_eq!(read_to_string(&big, 101).unwrap().len(), 101);
        let missing = read_to_string(&d.path().join("missing"), 100).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}

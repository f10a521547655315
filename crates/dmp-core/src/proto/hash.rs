//! The whole-file SHA-256 of a transfer, computed while the file streams
//! through both machines.
//!
//! Hashing is the largest single cost of a transfer on either side (SHA-256
//! runs at about 1.6 GB/s here, with the CPU's SHA instructions). Past the
//! first few MiB, a [`FileHasher`] hashes on a thread of its own, so that
//! the driver goes on reading, sealing, opening and writing meanwhile. The
//! result does not depend on timing: chunks are hashed in the order given.
//! Small transfers (and so the simulation) never start a thread.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Hash on a thread once this many bytes have been fed.
const THREAD_AFTER: u64 = 8 << 20;
/// Chunks queued for the thread at most (a full queue makes `update` wait,
/// which bounds the memory held: at most this many chunks).
const QUEUE: usize = 4;

/// A streaming SHA-256 that may hash in the background.
pub struct FileHasher {
    inline: Option<Sha256>,
    thread: Option<(mpsc::SyncSender<Bytes>, JoinHandle<Sha256>)>,
    fed: u64,
    digest: Option<String>,
}

impl Default for FileHasher {
    fn default() -> Self {
        FileHasher::new()
    }
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileHasher({} bytes{})", self.fed, if self.thread.is_some() { ", threaded" } else { "" })
    }
}

impl FileHasher {
    pub fn new() -> FileHasher {
        FileHasher { inline: Some(Sha256::new()), thread: None, fed: 0, digest: None }
    }

    /// Bytes hashed (or queued) so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Adds the next bytes of the file. Cheap for `Bytes`: the thread
    /// shares the buffer.
    pub fn update(&mut self, data: Bytes) {
        debug_assert!(self.digest.is_none(), "update after finish");
        self.fed += data.len() as u64;
        if self.thread.is_none() && self.fed > THREAD_AFTER {
            let mut h = self.inline.take().expect("inline hasher");
            let (tx, rx) = mpsc::sync_channel::<Bytes>(QUEUE);
            let j = std::thread::Builder::new()
                .name("sha256".into())
                .spawn(move || {
                    for d in rx {
                        h.update(&d);
                    }
                    h
                })
                .expect("a thread for hashing");
            self.thread = Some((tx, j));
        }
        match (&mut self.inline, &self.thread) {
            (Some(h), _) => h.update(&data),
            (None, Some((tx, _))) => {
                tx.send(data).expect("the hashing thread runs until finish");
            }
            (None, None) => unreachable!("a hasher is always there"),
        }
    }

    /// The hex digest of everything fed; waits for the thread. Later calls
    /// return the same digest.
    pub fn finish(&mut self) -> String {
        if let Some(d) = &self.digest {
            return d.clone();
        }
        let h = match (self.inline.take(), self.thread.take()) {
            (Some(h), _) => h,
            (None, Some((tx, j))) => {
                drop(tx);
                j.join().expect("the hashing thread does not panic")
            }
            (None, None) => unreachable!("a hasher is always there"),
        };
        let d = hex::encode(h.finalize());
        self.digest = Some(d.clone());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_inline_and_threaded() {
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
        let want = hex::encode(Sha256::digest(&data));
        for chunk in [1usize << 20, 4 << 20, 3_000_001] {
            let mut h = FileHasher::new();
            for c in data.chunks(chunk) {
                h.update(Bytes::copy_from_slice(c));
            }
            assert!(h.thread.is_some(), "past 8 MiB it hashes on a thread");
            assert_eq!(h.finish(), want);
            assert_eq!(h.finish(), want, "finish is idempotent");
        }
        let mut small = FileHasher::new();
        small.update(Bytes::from_static(b"abc"));
        assert!(small.thread.is_none());
        assert_eq!(small.finish(), hex::encode(Sha256::digest(b"abc")));
    }
}

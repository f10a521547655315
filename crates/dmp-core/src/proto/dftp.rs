//! DFTP: chunked, pipelined, quota-bounded, verified and resumable file
//! transfer over two mailboxes. Both machines do no I/O: local file reads
//! and writes are requested as outputs too, so the same code runs in the
//! tools and in the simulator.
//!
//! Sender: offer → (accept | refuse) → chunks, each a write-once object
//! `<sender>/<receiver>/<index>-<sha256>.chunk` announced by a message,
//! published while staged bytes stay within the quota and deleted once the
//! message is acknowledged → done (whole-file SHA-256) → finished.
//! Receiver: checks each chunk's length and hash before writing it at its
//! offset into a temporary file, hashes the file in order while writing,
//! and on `done` compares, syncs and renames into place.

use super::dftp_msg::{ChunkMsg, DoneMsg, Offer, Reply, check_file_name, chunk_object_name, is_sha256_hex};
use super::hash::FileHasher;
use super::mailbox::{Link, LinkConfig, LinkState, Op, OpResult, Output};
use crate::crypto::{INFO_CHUNK, PeerCrypto, SEAL_OVERHEAD};
use crate::id::PeerId;
use crate::store::{Key, StoreError};
use crate::wire::{Envelope, Kind, sha256_hex};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Default block size: 4 MiB (see docs/PROTOCOL.md for the measurement).
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
/// Default number of chunks staged in the store at once (docs/PROTOCOL.md
/// 5.4: 8 rather than 4 halved the time through SeaweedFS S3, whose small
/// PUTs take about 20 ms each).
pub const DEFAULT_WINDOW: u64 = 8;

/// Sender settings.
#[derive(Clone, Debug)]
pub struct SendConfig {
    pub block_size: u64,
    /// Most chunks staged at once.
    pub window: u64,
    /// Most bytes staged at once (`u64::MAX`: no limit beyond the window).
    pub quota: u64,
    pub link: LinkConfig,
}

impl SendConfig {
    /// Bytes that may be staged at once: min(quota, window × object size),
    /// where a chunk object is the block plus, on a secure link, its seal
    /// ([`SEAL_OVERHEAD`] bytes): a window of full chunks always fits.
    pub fn staged_limit(&self) -> u64 {
        self.quota.min(self.window.saturating_mul(self.block_size.saturating_add(self.seal_overhead())))
    }

    /// Bytes a chunk object takes beyond its plaintext.
    pub fn seal_overhead(&self) -> u64 {
        if self.link.secure { SEAL_OVERHEAD as u64 } else { 0 }
    }

    /// The smallest quota that holds one full chunk object.
    pub fn min_quota(&self) -> u64 {
        self.block_size.saturating_add(self.seal_overhead())
    }
}

/// Where a sender is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendPhase {
    /// Offer sent, waiting for the receiver.
    Offered,
    /// Accepted: publishing chunks.
    Sending,
    /// Every chunk published and `done` sent: waiting for `finished`.
    DoneSent,
    /// `finished` received (saved before it is acknowledged, which the
    /// receiver never repeats).
    Finished,
}

/// A chunk announced and not yet acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub index: u64,
    pub object: String,
    pub len: u64,
}

/// What a sender persists to resume after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderState {
    pub link: LinkState,
    pub offer: Offer,
    pub phase: SendPhase,
    /// Chunks `[0, next_index)` are published (their messages written).
    pub next_index: u64,
    /// Message sequence number → chunk, for chunks not yet acknowledged.
    pub published: BTreeMap<u64, Published>,
    pub file_sha256: Option<String>,
}

/// What the sender asks of its driver or tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOut {
    Op(Op),
    /// Read `len` bytes at `offset` of the file; answer with [`DftpSender::on_read`].
    Read {
        index: u64,
        offset: u64,
        len: u64,
    },
    /// Save [`DftpSender::snapshot`] (before acting on the outputs after it).
    Persist,
    /// The receiver accepted.
    Accepted,
    /// The receiver refused the offer: the transfer is over (exit 1).
    Refused(String),
    /// The receiver gave up (its `abort` without `resumable`: a verification
    /// failed beyond retries, it timed out, its partial file is gone): the
    /// transfer is over (exit 1).
    Aborted(String),
    /// This side cannot go on (the file changed or cannot be read): exit 1,
    /// keeping the state so that a later run may resume.
    Failed(String),
    /// The receiver verified and stored the file.
    Finished {
        sha256: String,
    },
    /// The receiver stopped for a reason of its own and will resume when run
    /// again: the sender tells the user and waits.
    PeerStopped(String),
    /// A file from the peer failed verification (logged; retried).
    Rejected {
        key: Key,
        reason: String,
    },
    StoreError(StoreError),
}

/// The sending side of one transfer.
pub struct DftpSender {
    cfg: SendConfig,
    link: Link,
    st: SenderState,
    /// Next chunk index to read (reads run ahead of publishing).
    read_next: u64,
    /// Bytes of chunk objects in the store or being written.
    staged: u64,
    /// Chunk objects being written: index → (key, data, hash).
    putting: BTreeMap<u64, (Key, Bytes, String)>,
    /// Chunk objects written but not yet announced (an earlier one is
    /// still being written): index → (key, hash). Announced in order.
    stored: BTreeMap<u64, (Key, String)>,
    /// Chunk objects to delete (acknowledged, or left over from before a
    /// restart): name → bytes, counted as staged until deleted.
    unstaging: BTreeMap<String, u64>,
    /// Some delete failed: issue the deletes again at `retry_at`.
    delete_retry: bool,
    /// My outbox was listed (at start), so leftover objects are counted.
    listed: bool,
    /// Chunk objects whose write failed, to retry at `retry_at`.
    put_retry: Vec<u64>,
    retry_at: Option<Duration>,
    put_fails: u32,
    /// Chunks read, waiting in order to be hashed/published.
    ready: BTreeMap<u64, Bytes>,
    reading: u64,
    hasher: FileHasher,
    /// Chunk index the whole-file hasher has reached.
    hashed: u64,
    /// After a restart: re-reading `[0, next_index)` to rebuild the hash.
    rehashing: bool,
    /// Plaintext: chunk objects found in the store at a restart beyond the
    /// resume point (written before the crash): index → length, counted as
    /// staged. The object this run writes for the index has the same name
    /// (it is named by its content), so it takes the old one's place.
    preexisting: BTreeMap<u64, u64>,
    /// Secure: chunk objects found in the store at a restart that this run
    /// does not use: name → bytes, counted as staged. A fresh seal of the
    /// same chunk gets another name, and a message written just before the
    /// crash (the link found it) may still name an old one, so they are
    /// deleted once the receiver has acknowledged every message up to
    /// `stale_until`, the last one in my outbox at the restart.
    stale: BTreeMap<String, u64>,
    stale_until: u64,
    /// Bytes of chunks published by this run.
    pub sent_bytes: u64,
    /// Bytes already acknowledged when this run started (resume point).
    pub resumed_bytes: u64,
    out: Vec<SendOut>,
    finished: bool,
    crypto: Option<PeerCrypto>,
}

/// What a sealed chunk is bound to: sender, recipient, transfer, index and
/// plaintext length. A chunk cannot be passed off under another index, in
/// another transfer or by a third party.
pub fn chunk_aad(sender: &PeerId, recipient: &PeerId, transfer: &str, index: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + 16);
    for part in [sender.as_str(), recipient.as_str(), transfer] {
        v.push(part.len() as u8);
        v.extend_from_slice(part.as_bytes());
    }
    v.extend_from_slice(&index.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// The digest that names a chunk object and that its message carries:
/// SHA-256 of the object in plaintext mode; in secure mode SHA-256 of the
/// seal trailer (AES-GCM tag, nonce, encapsulated key), a keyed hash of the
/// ciphertext that reveals nothing about the plaintext. A sealed object is
/// verified by opening it (AES-GCM authenticates every byte), so hashing all
/// its bytes again would only cost time.
pub fn object_digest(object: &[u8], sealed: bool) -> String {
    if sealed && object.len() >= SEAL_OVERHEAD {
        sha256_hex(&object[object.len() - SEAL_OVERHEAD..])
    } else {
        sha256_hex(object)
    }
}

impl DftpSender {
    /// Supplies the keys (secure transfers); nothing is sealed or opened before.
    pub fn set_crypto(&mut self, now: Duration, c: PeerCrypto) {
        self.crypto = Some(c.clone());
        self.link.set_crypto(now, c);
        self.advance(now);
        self.drain(now);
    }

    /// True while a secure transfer waits for the peer's key.
    pub fn needs_key(&self) -> bool {
        self.link.needs_key()
    }

    /// See [`Link::final_ack`]: after `finished`, the ack that tells the
    /// receiver so.
    pub fn final_ack(&mut self) -> Option<Op> {
        self.link.final_ack()
    }

    /// Bytes a chunk of `len` takes in the store.
    fn obj_len(&self, len: u64) -> u64 {
        len + self.cfg.seal_overhead()
    }

    /// A fresh transfer of `offer`, or a resumed one from `restored`.
    pub fn new(
        me: PeerId,
        peer: PeerId,
        cfg: SendConfig,
        offer: Offer,
        restored: Option<SenderState>,
        fresh_session: u64,
        now: Duration,
    ) -> DftpSender {
        let resumed = restored.is_some();
        let st = restored.unwrap_or(SenderState {
            link: LinkState::default(),
            offer,
            phase: SendPhase::Offered,
            next_index: 0,
            published: BTreeMap::new(),
            file_sha256: None,
        });
        let link = Link::new(me, peer, cfg.link.clone(), resumed.then(|| st.link.clone()), fresh_session);
        let overhead = if cfg.link.secure { SEAL_OVERHEAD as u64 } else { 0 };
        let staged = st.published.values().map(|p| p.len + overhead).sum();
        let mut s = DftpSender {
            cfg,
            link,
            read_next: if resumed { 0 } else { st.next_index },
            staged,
            putting: BTreeMap::new(),
            stored: BTreeMap::new(),
            unstaging: BTreeMap::new(),
            delete_retry: false,
            listed: false,
            put_retry: Vec::new(),
            retry_at: None,
            put_fails: 0,
            ready: BTreeMap::new(),
            reading: 0,
            hasher: FileHasher::new(),
            hashed: 0,
            rehashing: resumed && st.next_index > 0 && st.phase == SendPhase::Sending,
            preexisting: BTreeMap::new(),
            stale: BTreeMap::new(),
            stale_until: 0,
            sent_bytes: 0,
            resumed_bytes: 0,
            st,
            out: Vec::new(),
            finished: false,
            crypto: None,
        };
        if !s.rehashing {
            s.read_next = s.st.next_index;
        }
        s.resumed_bytes = s.acked_bytes();
        match s.st.phase {
            // A duplicate of a control message is harmless; a missing one
            // would stall the transfer, so resend the current one.
            SendPhase::Offered => {
                let body = serde_json::to_vec(&s.st.offer).expect("serializable");
                s.link.send(now, Kind::Offer, body);
            }
            SendPhase::DoneSent => s.send_done(now),
            SendPhase::Sending => {}
            SendPhase::Finished => {
                let sha256 = s.st.file_sha256.clone().unwrap_or_default();
                s.out.push(SendOut::Finished { sha256 });
                s.finished = true;
            }
        }
        s.advance(now);
        s.drain(now);
        s
    }

    pub fn offer(&self) -> &Offer {
        &self.st.offer
    }
    pub fn phase(&self) -> SendPhase {
        self.st.phase
    }
    pub fn link(&self) -> &Link {
        &self.link
    }
    /// Bytes acknowledged by the receiver (written there).
    pub fn acked_bytes(&self) -> u64 {
        let unacked: u64 = self.st.published.values().map(|p| p.len).sum();
        (self.st.next_index * self.st.offer.block_size).min(self.st.offer.size).saturating_sub(unacked)
    }
    /// Bytes of chunk objects currently staged in the store.
    pub fn staged_bytes(&self) -> u64 {
        self.staged
    }
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// What the sender waits for, for a timeout's message.
    pub fn waiting_for(&self) -> String {
        if self.needs_key() {
            return key_awaited(self.link.peer());
        }
        match self.st.phase {
            SendPhase::Offered => "an answer to the offer".into(),
            SendPhase::Sending => match self.st.published.values().next() {
                Some(p) => format!("the acknowledgement of chunk {}", p.index),
                None => format!("chunk {} to be stored", self.st.next_index),
            },
            SendPhase::DoneSent => "the receiver's finished message".into(),
            SendPhase::Finished => "nothing (finished)".into(),
        }
    }

    /// The state to persist: a consistent cut in which every chunk counted
    /// as published has its message written.
    pub fn snapshot(&self) -> SenderState {
        let mut st = self.st.clone();
        st.link = self.link.snapshot();
        let written = st.link.next_seq;
        let unwritten: Vec<u64> = st.published.range(written..).map(|(s, _)| *s).collect();
        for seq in unwritten {
            let p = st.published.remove(&seq).expect("present");
            st.next_index = st.next_index.min(p.index);
        }
        if st.phase == SendPhase::DoneSent && st.next_index < st.offer.chunks() {
            st.phase = SendPhase::Sending;
        }
        st
    }

    pub fn wake(&mut self, now: Duration) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            for idx in std::mem::take(&mut self.put_retry) {
                if let Some((key, data, _)) = self.putting.get(&idx) {
                    self.out.push(SendOut::Op(Op::Put(key.clone(), data.clone())));
                }
            }
            if std::mem::take(&mut self.delete_retry) {
                for name in self.unstaging.keys() {
                    if let Ok(k) = self.link.out_dir().join(name) {
                        self.out.push(SendOut::Op(Op::Delete(k)));
                    }
                }
            }
        }
        self.link.wake(now);
        self.drain(now);
    }

    pub fn deadline(&self) -> Option<Duration> {
        match (self.link.wake_at(), self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn take_outputs(&mut self) -> Vec<SendOut> {
        std::mem::take(&mut self.out)
    }

    pub fn on_result(&mut self, now: Duration, res: OpResult) {
        if let OpResult::Put(k, r) = &res {
            if let Some(idx) = super::dftp_msg::parse_chunk_object_name(k.name()).map(|(i, _)| i) {
                match r {
                    Ok(()) => {
                        self.put_fails = 0;
                        if let Some((key, _data, hash)) = self.putting.remove(&idx) {
                            self.stored.insert(idx, (key, hash));
                        }
                        // Announce in order: the receiver takes chunks in order.
                        while let Some((key, hash)) = self.stored.remove(&self.st.next_index) {
                            let idx = self.st.next_index;
                            let len = self.st.offer.chunk_span(idx).1;
                            self.publish(now, idx, key, len, hash);
                        }
                    }
                    Err(e) => {
                        // Write the same object again after a back-off.
                        self.out.push(SendOut::StoreError(e.clone()));
                        self.put_fails += 1;
                        let delay = Duration::from_millis(50 << self.put_fails.min(7)).min(Duration::from_secs(5));
                        self.put_retry.push(idx);
                        self.retry_at = Some(now + delay);
                    }
                }
                self.advance(now);
                self.drain(now);
                return;
            }
        }
        if let OpResult::Deleted(_, Err(e)) | OpResult::Got(_, Err(e)) = &res {
            self.out.push(SendOut::StoreError(e.clone()));
        }
        if let OpResult::Deleted(k, r) = &res {
            if super::dftp_msg::parse_chunk_object_name(k.name()).is_some() {
                // A chunk object counts as staged until it is really gone.
                match r {
                    Ok(()) => {
                        if let Some(b) = self.unstaging.remove(k.name()) {
                            self.staged = self.staged.saturating_sub(b);
                        }
                    }
                    Err(_) => {
                        self.delete_retry = true;
                        let t = now + Duration::from_millis(500);
                        self.retry_at = Some(self.retry_at.map_or(t, |r| r.min(t)));
                    }
                }
                self.advance(now);
                self.drain(now);
                return;
            }
        }
        if let OpResult::Listed(k, Ok(names)) = &res {
            if k == self.link.out_dir() && !self.listed {
                self.note_leftovers(names.clone());
                // The link's recovery from this listing counts every message
                // written before the restart.
                self.link.on_result(now, res);
                self.stale_until = self.link.state().next_seq.saturating_sub(1);
                self.advance(now);
                self.drain(now);
                return;
            }
        }
        self.link.on_result(now, res);
        self.drain(now);
    }

    /// The result of a [`SendOut::Read`].
    pub fn on_read(&mut self, now: Duration, index: u64, data: Result<Bytes, String>) {
        self.reading -= 1;
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                self.stop(now, format!("reading the file failed: {e}"));
                return;
            }
        };
        let (_, len) = self.st.offer.chunk_span(index);
        if data.len() as u64 != len {
            self.stop(
                now,
                format!("the file changed while being sent (chunk {index} is {} bytes, expected {len})", data.len()),
            );
            return;
        }
        self.ready.insert(index, data);
        self.advance(now);
        self.drain(now);
    }

    fn fail(&mut self, reason: String) {
        if !self.finished {
            self.out.push(SendOut::Failed(reason));
            self.finished = true;
        }
    }

    /// Fails for a local reason (a file that cannot be read, the driver's
    /// `--timeout`), keeping the state, and tells the receiver so that it
    /// does not wait without knowing why (see [`Reply::resumable`]).
    pub fn stop(&mut self, now: Duration, reason: String) {
        if self.finished {
            return;
        }
        let r = Reply {
            transfer: self.st.offer.transfer.clone(),
            reason: Some(reason.clone()),
            sha256: None,
            resumable: true,
        };
        self.link.send(now, Kind::Abort, serde_json::to_vec(&r).expect("serializable"));
        // Its write goes out ahead of `Failed`, on which the driver stops.
        self.drain(now);
        self.fail(reason);
    }

    /// Moves everything forward: rehash after a restart, read ahead within
    /// the quota, hash in order, write chunk objects.
    fn advance(&mut self, now: Duration) {
        self.drop_stale();
        let chunks = self.st.offer.chunks();
        // Consume ready chunks in order.
        loop {
            let Some(data) = self.ready.remove(&self.hashed) else { break };
            let idx = self.hashed;
            if self.rehashing {
                self.hasher.update(data);
                self.hashed += 1;
                if self.hashed >= self.st.next_index {
                    self.rehashing = false;
                    self.read_next = self.st.next_index;
                }
                continue;
            }
            // Not sending (yet); or secure, with the peer's key not known
            // yet (a resumed run looks it up beside its first reads): a
            // chunk is never written unsealed.
            if self.st.phase != SendPhase::Sending || (self.cfg.link.secure && self.crypto.is_none()) {
                self.ready.insert(idx, data);
                break;
            }
            self.hasher.update(data.clone());
            self.hashed += 1;
            let data = match &self.crypto {
                Some(c) => {
                    // Sealed into a buffer of its own: the hasher may still be reading `data`.
                    let mut v = crate::buf::vec(data.len() + SEAL_OVERHEAD);
                    v.extend_from_slice(&data);
                    let aad = chunk_aad(self.link.me(), self.link.peer(), &self.st.offer.transfer, idx, v.len() as u64);
                    c.seal_in_place(INFO_CHUNK, &aad, &mut v);
                    crate::buf::freeze(v)
                }
                None => data,
            };
            let hash = object_digest(&data, self.crypto.is_some());
            let name = chunk_object_name(idx, &hash);
            let key = self.link.out_dir().join(&name).expect("valid name");
            self.putting.insert(idx, (key.clone(), data.clone(), hash));
            self.out.push(SendOut::Op(Op::Put(key, data)));
        }
        if self.rehashing {
            while self.read_next < self.st.next_index && self.reading < 2 {
                self.issue_read(self.read_next);
            }
            return;
        }
        if self.st.phase != SendPhase::Sending || !self.listed {
            return;
        }
        // Read ahead while the staged bytes stay within the limit.
        let limit = self.cfg.staged_limit();
        while self.read_next < chunks {
            let (_, len) = self.st.offer.chunk_span(self.read_next);
            let pending: u64 =
                self.ready.values().map(|d| d.len() as u64).sum::<u64>() + self.reading * self.st.offer.block_size;
            let counted = self.preexisting.contains_key(&self.read_next);
            // Always allow one chunk, even if it alone exceeds the limit
            // (else `--window 1` or a small quota would stall for good).
            if !counted && self.staged + pending + self.obj_len(len) > limit && self.staged + pending > 0 {
                break;
            }
            if !counted {
                self.staged += self.obj_len(len);
            }
            self.preexisting.remove(&self.read_next);
            self.issue_read(self.read_next);
        }
        if self.st.next_index >= chunks
            && self.putting.is_empty()
            && self.stored.is_empty()
            && self.st.phase == SendPhase::Sending
        {
            self.st.file_sha256 = Some(self.hasher.finish());
            self.st.phase = SendPhase::DoneSent;
            self.send_done(now);
        }
    }

    fn issue_read(&mut self, index: u64) {
        let (offset, len) = self.st.offer.chunk_span(index);
        self.reading += 1;
        self.read_next = index + 1;
        self.out.push(SendOut::Read { index, offset, len });
    }

    fn publish(&mut self, now: Duration, index: u64, key: Key, len: u64, hash: String) {
        if index < self.st.next_index {
            return; // already published (a retry raced)
        }
        self.sent_bytes += len;
        let (offset, _) = self.st.offer.chunk_span(index);
        let msg = ChunkMsg {
            transfer: self.st.offer.transfer.clone(),
            index,
            offset,
            len,
            sha256: hash,
            object: key.name().to_owned(),
        };
        let seq = self.link.send(now, Kind::Chunk, serde_json::to_vec(&msg).expect("serializable"));
        self.st.published.insert(seq, Published { index, object: msg.object, len });
        self.st.next_index = index + 1;
    }

    fn send_done(&mut self, now: Duration) {
        let sha = self.st.file_sha256.clone().unwrap_or_default();
        let body = serde_json::to_vec(&DoneMsg { transfer: self.st.offer.transfer.clone(), sha256: sha })
            .expect("serializable");
        self.link.send(now, Kind::Done, body);
    }

    fn on_acked(&mut self, upto: u64) {
        let done: Vec<u64> = self.st.published.range(..=upto).map(|(s, _)| *s).collect();
        for seq in done {
            let p = self.st.published.remove(&seq).expect("present");
            let bytes = self.obj_len(p.len);
            self.unstage(p.object, bytes);
        }
    }

    /// Deletes a chunk object, whose `bytes` are counted in `staged` until
    /// the delete succeeds (a failed one is retried).
    fn unstage(&mut self, name: String, bytes: u64) {
        if let Ok(k) = self.link.out_dir().join(&name) {
            if self.unstaging.insert(name, bytes).is_none() {
                self.out.push(SendOut::Op(Op::Delete(k)));
            }
        }
    }

    /// The listing of my outbox at start: chunk objects left from before a
    /// restart take up quota until they are used or deleted.
    ///
    /// Plaintext: one beyond the resume point was written just before the
    /// crash, and is the very object this run writes again for its index
    /// (see `preexisting`); one below it that no unacknowledged chunk uses
    /// was acknowledged before a crash that lost its delete: deleted now.
    /// Secure: every one no unacknowledged chunk uses is stale (see `stale`).
    fn note_leftovers(&mut self, names: Vec<String>) {
        self.listed = true;
        let chunks = self.st.offer.chunks();
        for n in names {
            let Some((index, _)) = super::dftp_msg::parse_chunk_object_name(&n) else { continue };
            if self.st.published.values().any(|p| p.object == n)
                || self.unstaging.contains_key(&n)
                || self.stale.contains_key(&n)
            {
                continue;
            }
            let len = if index < chunks { self.st.offer.chunk_span(index).1 } else { self.st.offer.block_size };
            let bytes = self.obj_len(len);
            if self.cfg.link.secure {
                self.staged += bytes;
                self.stale.insert(n, bytes);
            } else if index >= self.st.next_index && index < chunks {
                if self.preexisting.insert(index, len).is_none() {
                    self.staged += bytes;
                }
            } else if index < self.st.next_index {
                self.staged += bytes;
                self.unstage(n, bytes);
            }
        }
    }

    /// Deletes the stale objects once no message can name them any more.
    fn drop_stale(&mut self) {
        if self.stale.is_empty() || self.link.state().acked < self.stale_until {
            return;
        }
        for (name, bytes) in std::mem::take(&mut self.stale) {
            tracing::debug!("deleting {name}, left from before the restart");
            self.unstage(name, bytes);
        }
    }

    fn on_message(&mut self, now: Duration, env: Envelope) {
        let reply: Option<Reply> = serde_json::from_slice(&env.payload).ok();
        let Some(reply) = reply.filter(|r| r.transfer == self.st.offer.transfer) else {
            tracing::debug!(kind = ?env.kind, "ignoring a message for another transfer");
            return;
        };
        match env.kind {
            Kind::Accept if self.st.phase == SendPhase::Offered => {
                tracing::info!("receiver accepted");
                self.st.phase = SendPhase::Sending;
                self.out.push(SendOut::Accepted);
            }
            Kind::Abort if reply.resumable => {
                let reason = reply.reason.unwrap_or_else(|| "no reason given".into());
                let reason: String = reason.chars().filter(|c| !c.is_control()).take(300).collect();
                self.out.push(SendOut::PeerStopped(reason));
            }
            Kind::Refuse | Kind::Abort => {
                let reason = reply.reason.unwrap_or_else(|| "no reason given".into());
                let reason: String = reason.chars().filter(|c| !c.is_control()).take(300).collect();
                self.out.push(if env.kind == Kind::Abort {
                    SendOut::Aborted(reason)
                } else {
                    SendOut::Refused(reason)
                });
                self.finished = true;
            }
            Kind::Finished => {
                let sha = reply.sha256.unwrap_or_default();
                if self.st.phase == SendPhase::DoneSent && Some(&sha) == self.st.file_sha256.as_ref() {
                    self.st.phase = SendPhase::Finished;
                    self.out.push(SendOut::Finished { sha256: sha });
                    self.finished = true;
                } else {
                    tracing::warn!("ignoring an early or mismatched finished message");
                }
            }
            _ => {}
        }
        let _ = now;
    }

    fn drain(&mut self, now: Duration) {
        loop {
            let outs = self.link.take_outputs();
            if outs.is_empty() {
                break;
            }
            for o in outs {
                match o {
                    Output::Op(op) => self.out.push(SendOut::Op(op)),
                    Output::Persist => self.out.push(SendOut::Persist),
                    Output::Acked(upto) => {
                        self.on_acked(upto);
                        self.advance(now);
                    }
                    Output::Deliver(env) => {
                        let seq = env.seq;
                        self.on_message(now, env);
                        self.link.commit(now, seq);
                        self.advance(now);
                    }
                    Output::Rejected { key, reason } => self.out.push(SendOut::Rejected { key, reason }),
                }
            }
        }
        // Persist after the link's own requests, so app state and link state agree.
        if self.out.iter().any(|o| matches!(o, SendOut::Persist)) {
            self.out.retain(|o| !matches!(o, SendOut::Persist));
            self.out.insert(0, SendOut::Persist);
        }
    }
}

// ---------------------------------------------------------------------------
// Receiver

/// What a secure party waits for before the peer's key is known, with the
/// likely cause when it never comes: a peer that runs in plaintext
/// publishes no key.
fn key_awaited(peer: &PeerId) -> String {
    format!("the key of {peer} (which publishes none if it runs with --insecure-plaintext)")
}

/// At this many failed verifications of one chunk object the receiver
/// warns ([`RecvOut::KeepsFailing`]); it goes on fetching it until
/// [`RecvConfig::bad_chunk_timeout`].
pub const WARN_AFTER_FAILS: u32 = 5;

/// Receiver settings.
#[derive(Clone, Debug)]
pub struct RecvConfig {
    /// Chunks fetched ahead of the one being written.
    pub prefetch: usize,
    /// Give up when a chunk that is present keeps failing verification this long.
    pub bad_chunk_timeout: Duration,
    pub link: LinkConfig,
}

impl Default for RecvConfig {
    fn default() -> Self {
        RecvConfig { prefetch: 4, bad_chunk_timeout: Duration::from_secs(600), link: LinkConfig::default() }
    }
}

/// Where a receiver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecvPhase {
    /// Waiting for an offer.
    Waiting,
    /// Accepted: writing chunks into the temporary file.
    Receiving,
    /// Verified; being renamed into place. Saved before the rename, so a
    /// restart that finds the temporary file gone knows the rename happened.
    Finalizing,
    /// Verified and renamed into place; `finished` sent.
    Finished,
}

/// What a receiver persists to resume after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverState {
    pub link: LinkState,
    pub phase: RecvPhase,
    pub offer: Option<Offer>,
    /// Chunks `[0, next_index)` are written to the temporary file.
    pub next_index: u64,
    pub file_sha256: Option<String>,
    /// The sequence number of my `finished` message, once sent.
    #[serde(default)]
    pub finished_seq: Option<u64>,
    /// The run that finished this transfer reported it to its user and
    /// exited without the sender's acknowledgement of `finished` (a slow
    /// sync, a stopped sender), leaving its files for the sender. The next
    /// run cleans up, then receives a new file (not this one again).
    #[serde(default)]
    pub reported: bool,
}

/// How often a finished receiver reads the sender's head while it waits
/// for the acknowledgement of `finished` (is the sender still there?).
pub const FINISHED_HEAD_EVERY: Duration = Duration::from_millis(500);

/// How many of the slowest acknowledgement seen a finished party waits for
/// the peer's last answer (see [`finished_wait`]).
pub const FINISHED_WAIT_ACKS: u32 = 4;
/// The most a finished party waits for the peer's last answer, however
/// slow the store was.
pub const FINISHED_WAIT_MAX: Duration = Duration::from_secs(300);

/// How long a party that has finished waits for the peer's last answer
/// (the receiver: the acknowledgement of `finished`, or the sender gone;
/// the sender: the receiver's files gone) before it leaves: `least`, or
/// [`FINISHED_WAIT_ACKS`] times the slowest acknowledgement of one of its
/// messages in this run if that is longer, at most [`FINISHED_WAIT_MAX`]
/// (never less than `least`). A fixed wait suits a server that answers in
/// milliseconds but not a synced folder: Syncthing at its default watcher
/// delay of 10 s takes 10 to 30 s there and back, and a receiver that
/// waited 10 s left its files and state behind after every transfer, for
/// its next run to clean up instead of receiving.
pub fn finished_wait(least: Duration, slowest_ack: Option<Duration>) -> Duration {
    let scaled = slowest_ack.map_or(Duration::ZERO, |s| s.saturating_mul(FINISHED_WAIT_ACKS));
    scaled.min(FINISHED_WAIT_MAX).max(least)
}

/// What the receiver asks of its driver or tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecvOut {
    Op(Op),
    Persist,
    /// Decide whether the offered file can be received (name free or
    /// `--overwrite`, enough space) and open its temporary file: created
    /// empty when `resume` is false, reopened as it is when true. Answer
    /// with [`DftpReceiver::on_prepared`].
    Prepare {
        offer: Offer,
        resume: bool,
    },
    /// Write `data` at `offset` of the temporary file; answer with
    /// [`DftpReceiver::on_written`].
    Write {
        index: u64,
        offset: u64,
        data: Bytes,
    },
    /// Read back `len` bytes at `offset` of the temporary file (to rebuild
    /// the running hash after a restart); answer with [`DftpReceiver::on_read_back`].
    ReadBack {
        offset: u64,
        len: u64,
    },
    /// The whole file is verified: sync it and rename it into place;
    /// answer with [`DftpReceiver::on_finalized`].
    Finalize {
        sha256: String,
    },
    /// Remove the temporary file of `offer` (abandoned transfer).
    Discard {
        offer: Offer,
    },
    /// We refused the offer (reported to the sender): exit 1 once written.
    Refused(String),
    /// The file is in place and verified.
    Finished {
        sha256: String,
    },
    /// The transfer failed for a reason that a later run may overcome (the
    /// state is kept), or the sender aborted it: exit 1.
    Failed(String),
    /// This side gave up for good (a verification failed beyond retries,
    /// a timeout, a partial file gone): an `abort` without `resumable` is
    /// on its way to the sender; the driver lets it reach the store, then
    /// removes the partial file and the state. Exit 1.
    GaveUp(String),
    /// A chunk object failed verification for the [`WARN_AFTER_FAILS`]th
    /// time (a warning naming its key; it is still fetched again).
    KeepsFailing {
        key: Key,
        reason: String,
    },
    /// The sender stopped for a reason of its own and will resume when run
    /// again: the receiver tells the user and waits.
    PeerStopped(String),
    Rejected {
        key: Key,
        reason: String,
    },
    StoreError(StoreError),
}

#[derive(Debug)]
enum Item {
    Chunk {
        msg: ChunkMsg,
        data: Option<Bytes>,
        fetching: bool,
        writing: bool,
    },
    Done(DoneMsg),
    /// Anything else: committed when it reaches the head of the queue.
    Other,
}

/// The receiving side of one transfer.
pub struct DftpReceiver {
    cfg: RecvConfig,
    link: Link,
    st: ReceiverState,
    /// Delivered messages not yet committed, in order.
    queue: VecDeque<(u64, Item)>,
    hasher: FileHasher,
    /// Rebuilding the hash after a restart: next chunk to read back.
    rehash_next: Option<u64>,
    /// The offer awaiting `on_prepared`, with the sequence number of its message.
    preparing: Option<(u64, Offer, bool)>,
    /// A `Finalize` was asked for and not yet answered.
    finalizing: bool,
    /// Chunk index → (failures, first failure, retry not before).
    bad: BTreeMap<u64, (u32, Duration, Duration)>,
    retry_at: Option<Duration>,
    /// Bytes written by this run.
    pub written_bytes: u64,
    /// Bytes written by earlier runs, when this one started (resumed).
    pub resumed_bytes: u64,
    out: Vec<RecvOut>,
    finished: bool,
    /// This side gave up ([`RecvOut::GaveUp`]).
    gave_up: bool,
    /// Restarted after `finished` was sent: see `finished_written_check`.
    check_finished: bool,
    crypto: Option<PeerCrypto>,
}

impl DftpReceiver {
    pub fn new(
        me: PeerId,
        peer: PeerId,
        cfg: RecvConfig,
        restored: Option<ReceiverState>,
        fresh_session: u64,
        now: Duration,
    ) -> DftpReceiver {
        let resumed = restored.is_some();
        let st = restored.unwrap_or(ReceiverState {
            link: LinkState::default(),
            phase: RecvPhase::Waiting,
            offer: None,
            next_index: 0,
            file_sha256: None,
            finished_seq: None,
            reported: false,
        });
        let link = Link::new(me, peer, cfg.link.clone(), resumed.then(|| st.link.clone()), fresh_session);
        let mut r = DftpReceiver {
            cfg,
            link,
            st,
            queue: VecDeque::new(),
            hasher: FileHasher::new(),
            rehash_next: None,
            preparing: None,
            finalizing: false,
            bad: BTreeMap::new(),
            retry_at: None,
            written_bytes: 0,
            resumed_bytes: 0,
            out: Vec::new(),
            finished: false,
            gave_up: false,
            check_finished: false,
            crypto: None,
        };
        if resumed {
            r.resumed_bytes = r.done_bytes();
            match (r.st.phase, r.st.offer.clone()) {
                (RecvPhase::Receiving | RecvPhase::Finalizing, Some(offer)) => {
                    // Reopen the temporary file; the hash is rebuilt from it.
                    r.preparing = Some((0, offer.clone(), true));
                    r.out.push(RecvOut::Prepare { offer, resume: true });
                }
                (RecvPhase::Finished, Some(offer)) => {
                    let sha = r.st.file_sha256.clone().unwrap_or_default();
                    if r.st.finished_seq.is_some() {
                        // Sent before: nothing to send or do again, unless
                        // the listing of my outbox shows it never got there.
                        r.check_finished = true;
                        r.link.watch_head_every(FINISHED_HEAD_EVERY);
                    } else {
                        // A state file from before `finished_seq` was saved.
                        r.send_finished(now, &offer.transfer, sha.clone());
                    }
                    r.out.push(RecvOut::Finished { sha256: sha });
                    r.finished = true;
                }
                _ => {
                    r.st.phase = RecvPhase::Waiting;
                    r.st.offer = None;
                }
            }
        }
        r.drain(now);
        r
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Supplies the keys (secure transfers); nothing is sealed or opened before.
    pub fn set_crypto(&mut self, now: Duration, c: PeerCrypto) {
        self.crypto = Some(c.clone());
        self.link.set_crypto(now, c);
        self.drain(now);
        self.pump(now);
    }

    /// True while a secure transfer waits for the peer's key.
    pub fn needs_key(&self) -> bool {
        self.link.needs_key()
    }

    pub fn offer(&self) -> Option<&Offer> {
        self.st.offer.as_ref()
    }
    pub fn phase(&self) -> RecvPhase {
        self.st.phase
    }
    /// Bytes of the file written and hashed so far.
    pub fn done_bytes(&self) -> u64 {
        match &self.st.offer {
            Some(o) => (self.st.next_index * o.block_size).min(o.size),
            None => 0,
        }
    }
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn snapshot(&self) -> ReceiverState {
        let mut st = self.st.clone();
        st.link = self.link.snapshot();
        st
    }

    pub fn take_outputs(&mut self) -> Vec<RecvOut> {
        std::mem::take(&mut self.out)
    }

    pub fn deadline(&self) -> Option<Duration> {
        match (self.link.wake_at(), self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn wake(&mut self, now: Duration) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
        }
        self.link.wake(now);
        self.drain(now);
        self.pump(now);
    }

    pub fn on_result(&mut self, now: Duration, res: OpResult) {
        let res = match res {
            // A chunk's body is moved on, never copied: it is a whole block.
            OpResult::Got(k, r)
                if super::dftp_msg::parse_chunk_object_name(k.name()).is_some()
                    && k.starts_with(self.link.in_dir()) =>
            {
                self.on_chunk_data(now, &k, r);
                self.pump(now);
                return;
            }
            res => res,
        };
        if let OpResult::Put(_, Err(e)) | OpResult::Got(_, Err(e)) = &res {
            self.out.push(RecvOut::StoreError(e.clone()));
        }
        self.link.on_result(now, res);
        self.drain(now);
        self.finished_written_check(now);
        self.pump(now);
    }

    /// The answer to [`RecvOut::Prepare`].
    pub fn on_prepared(&mut self, now: Duration, res: Result<(), String>) {
        let Some((seq, offer, resume)) = self.preparing.take() else { return };
        match res {
            Ok(()) if resume => {
                // Still there: a rename that was asked for did not happen.
                if self.st.phase == RecvPhase::Finalizing {
                    self.st.phase = RecvPhase::Receiving;
                }
                if self.st.next_index > 0 {
                    self.rehash_next = Some(0);
                }
                // A duplicate accept is harmless; a lost one would stall.
                self.send_reply(now, Kind::Accept, &offer.transfer, None, None);
            }
            Ok(()) => {
                tracing::info!(name = %offer.name, size = offer.size, "accepted");
                self.st.phase = RecvPhase::Receiving;
                self.st.offer = Some(offer.clone());
                self.st.next_index = 0;
                self.hasher = FileHasher::new();
                self.send_reply(now, Kind::Accept, &offer.transfer, None, None);
                self.link.commit(now, seq);
                self.pop_committed(seq);
            }
            Err(_) if resume && self.st.phase == RecvPhase::Finalizing => {
                // Verified and renamed into place just before a crash.
                let sha = self.st.file_sha256.clone().unwrap_or_default();
                self.st.phase = RecvPhase::Finished;
                self.send_finished(now, &offer.transfer, sha.clone());
                self.out.push(RecvOut::Finished { sha256: sha });
                self.finished = true;
            }
            // The partial file is gone (or cannot be opened): give up, and
            // tell the sender, rather than write a file with a hole.
            Err(reason) if resume => {
                self.fail(now, format!("cannot resume: {reason}"));
            }
            Err(reason) => {
                self.refuse(now, seq, &offer.transfer, reason);
            }
        }
        self.drain(now);
        self.pump(now);
    }

    /// The answer to [`RecvOut::Write`].
    pub fn on_written(&mut self, now: Duration, index: u64, res: Result<(), String>) {
        let Some((seq, Item::Chunk { msg, data, writing, .. })) = self.queue.front_mut() else { return };
        if msg.index != index || !*writing {
            return;
        }
        *writing = false;
        match res {
            Ok(()) => {
                let data = data.take().expect("written chunk has data");
                self.written_bytes += data.len() as u64;
                self.hasher.update(data);
                self.st.next_index = index + 1;
                let seq = *seq;
                self.queue.pop_front();
                self.link.commit(now, seq);
            }
            Err(e) => self.stop(now, format!("writing the file failed: {e}")),
        }
        self.drain(now);
        self.pump(now);
    }

    /// The answer to [`RecvOut::ReadBack`].
    pub fn on_read_back(&mut self, now: Duration, res: Result<Bytes, String>) {
        let Some(i) = self.rehash_next else { return };
        match res {
            Ok(data) => {
                self.hasher.update(data);
                let next = i + 1;
                self.rehash_next = (next < self.st.next_index).then_some(next);
                if let Some(n) = self.rehash_next {
                    self.read_back(n);
                }
            }
            Err(e) => {
                self.rehash_next = None;
                self.fail(now, format!("cannot resume: reading the partial file failed: {e}"));
            }
        }
        self.pump(now);
    }

    /// The answer to [`RecvOut::Finalize`].
    pub fn on_finalized(&mut self, now: Duration, res: Result<(), String>) {
        if !std::mem::take(&mut self.finalizing) {
            return;
        }
        let Some((seq, Item::Done(done))) = self.queue.front() else { return };
        let (seq, done) = (*seq, done.clone());
        match res {
            Ok(()) => {
                self.st.phase = RecvPhase::Finished;
                self.st.file_sha256 = Some(done.sha256.clone());
                self.send_finished(now, &done.transfer, done.sha256.clone());
                self.queue.pop_front();
                self.link.commit(now, seq);
                self.out.push(RecvOut::Finished { sha256: done.sha256 });
                self.finished = true;
            }
            Err(e) => self.stop(now, format!("storing the file failed: {e}")),
        }
        self.drain(now);
    }

    fn read_back(&mut self, index: u64) {
        if let Some(o) = &self.st.offer {
            let (offset, len) = o.chunk_span(index);
            self.out.push(RecvOut::ReadBack { offset, len });
        }
    }

    fn send_reply(
        &mut self,
        now: Duration,
        kind: Kind,
        transfer: &str,
        reason: Option<String>,
        sha256: Option<String>,
    ) -> u64 {
        let body = serde_json::to_vec(&Reply { transfer: transfer.to_owned(), reason, sha256, resumable: false })
            .expect("serializable");
        self.link.send(now, kind, body)
    }

    /// Sends `finished` (saved with its number, so that a restart neither
    /// sends it again nor redoes anything) and waits for its acknowledgement.
    fn send_finished(&mut self, now: Duration, transfer: &str, sha256: String) {
        let seq = self.send_reply(now, Kind::Finished, transfer, None, Some(sha256));
        self.st.finished_seq = Some(seq);
        self.out.push(RecvOut::Persist);
        self.link.watch_head_every(FINISHED_HEAD_EVERY);
    }

    /// True once the last message I sent (`finished`, `refuse`) is
    /// acknowledged by the sender; a restarted receiver learns it only
    /// once its outbox was listed and the sender's `ack` read.
    pub fn last_message_acked(&self) -> bool {
        self.link.recovered() && !self.check_finished && self.link.unacked() == 0
    }

    /// A restarted receiver that had sent `finished`: once its outbox is
    /// listed, sends it again only if it never reached the store.
    fn finished_written_check(&mut self, now: Duration) {
        if !self.check_finished || !self.link.recovered() {
            return;
        }
        self.check_finished = false;
        let (Some(seq), Some(o)) = (self.st.finished_seq, self.st.offer.clone()) else { return };
        if self.link.state().next_seq <= seq {
            tracing::debug!("finished was not written before the restart; sending it again");
            let sha = self.st.file_sha256.clone().unwrap_or_default();
            self.send_finished(now, &o.transfer, sha);
            self.drain(now);
        }
    }

    fn refuse(&mut self, now: Duration, seq: u64, transfer: &str, reason: String) {
        tracing::info!("refusing the offer: {reason}");
        self.send_reply(now, Kind::Refuse, transfer, Some(reason.clone()), None);
        self.link.commit(now, seq);
        self.pop_committed(seq);
        self.out.push(RecvOut::Refused(reason));
        self.finished = true;
    }

    /// Fails for a local reason (a full disk, a file that cannot be
    /// written, the driver's `--timeout`), keeping the partial file and the
    /// state, and tells the sender so that it waits knowing why (see
    /// [`Reply::resumable`]); running the receiver again resumes.
    pub fn stop(&mut self, now: Duration, reason: String) {
        if self.finished {
            return;
        }
        if let Some(o) = &self.st.offer {
            let r = Reply { transfer: o.transfer.clone(), reason: Some(reason.clone()), sha256: None, resumable: true };
            self.link.send(now, Kind::Abort, serde_json::to_vec(&r).expect("serializable"));
            // Its write goes out ahead of `Failed`, on which the driver stops.
            self.drain(now);
        }
        self.out.push(RecvOut::Failed(reason));
        self.finished = true;
    }

    /// Gives up for good: tells the sender with an `abort` that is not
    /// resumable, whose write goes out ahead of [`RecvOut::GaveUp`].
    fn fail(&mut self, now: Duration, reason: String) {
        if self.finished {
            return;
        }
        if let Some(o) = &self.st.offer {
            let t = o.transfer.clone();
            self.send_reply(now, Kind::Abort, &t, Some(reason.clone()), None);
            self.drain(now);
        }
        self.gave_up = true;
        self.out.push(RecvOut::GaveUp(reason));
        self.finished = true;
    }

    /// True once this side gave up ([`RecvOut::GaveUp`]).
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// What the receiver waits for, for a timeout's message.
    pub fn waiting_for(&self) -> String {
        if self.needs_key() {
            return key_awaited(self.link.peer());
        }
        if self.preparing.is_some() || self.rehash_next.is_some() {
            return "the partial file to be reopened".into();
        }
        match (self.st.phase, &self.st.offer) {
            (RecvPhase::Receiving, Some(o)) if self.st.next_index < o.chunks() => {
                let n = self.st.next_index;
                let why = match self.bad.get(&n) {
                    Some((fails, ..)) => format!(", whose object failed {fails} time(s)"),
                    None => String::new(),
                };
                format!("chunk {n} of {}{why}", o.chunks())
            }
            (RecvPhase::Receiving, Some(_)) => "the done message".into(),
            (RecvPhase::Finalizing, _) => "the file to be stored".into(),
            (RecvPhase::Finished, _) => "the acknowledgement of finished".into(),
            _ => "the offer".into(),
        }
    }

    fn pop_committed(&mut self, seq: u64) {
        while self.queue.front().is_some_and(|(s, _)| *s <= seq) {
            self.queue.pop_front();
        }
    }

    fn on_message(&mut self, now: Duration, env: Envelope) {
        let seq = env.seq;
        match env.kind {
            Kind::Offer => {
                let offer: Offer = match serde_json::from_slice(&env.payload) {
                    Ok(o) => o,
                    Err(e) => {
                        self.queue.push_back((seq, Item::Other));
                        self.fail(now, format!("malformed offer from the sender: {e}"));
                        return;
                    }
                };
                if self.finished && self.st.offer.as_ref().is_none_or(|c| c.transfer != offer.transfer) {
                    // One file per run: this run is over (finished, or it
                    // refused or stopped), so the offer of a new run of the
                    // sender waits for the receiver's next run. It stays
                    // unacknowledged, since nothing is committed once over.
                    tracing::debug!("another transfer offered; it waits for the next run");
                    self.queue.push_back((seq, Item::Other));
                    return;
                }
                if let Some(cur) = &self.st.offer {
                    if cur.transfer == offer.transfer {
                        // A resent offer: accept again (harmless), skip it.
                        let t = cur.transfer.clone();
                        self.send_reply(now, Kind::Accept, &t, None, None);
                        self.queue.push_back((seq, Item::Other));
                        return;
                    }
                    // The sender started over with a new transfer.
                    tracing::warn!("the sender started a new transfer; abandoning the old one");
                    self.out.push(RecvOut::Discard { offer: cur.clone() });
                    self.st.offer = None;
                    self.st.phase = RecvPhase::Waiting;
                    self.st.next_index = 0;
                    self.queue.clear();
                    self.resumed_bytes = 0;
                }
                if self.preparing.is_some() || self.st.phase != RecvPhase::Waiting {
                    self.queue.push_back((seq, Item::Other));
                    return;
                }
                self.queue.push_back((seq, Item::Other));
                let check = offer
                    .check()
                    .map_err(|e| format!("bad offer: {e}"))
                    .and_then(|()| check_file_name(&offer.name).map_err(|e| format!("bad name: {e}")));
                match check {
                    Err(reason) => self.refuse(now, seq, &offer.transfer.clone(), reason),
                    Ok(()) => {
                        self.preparing = Some((seq, offer.clone(), false));
                        self.out.push(RecvOut::Prepare { offer, resume: false });
                    }
                }
            }
            Kind::Chunk => {
                let item = match serde_json::from_slice::<ChunkMsg>(&env.payload) {
                    Ok(msg) => match self.check_chunk(&msg) {
                        Ok(()) => Item::Chunk { msg, data: None, fetching: false, writing: false },
                        Err(e) => {
                            self.queue.push_back((seq, Item::Other));
                            self.fail(now, e);
                            return;
                        }
                    },
                    Err(e) => {
                        self.queue.push_back((seq, Item::Other));
                        self.fail(now, format!("malformed chunk message: {e}"));
                        return;
                    }
                };
                self.queue.push_back((seq, item));
            }
            Kind::Done => match serde_json::from_slice::<DoneMsg>(&env.payload) {
                Ok(d) if is_sha256_hex(&d.sha256) => self.queue.push_back((seq, Item::Done(d))),
                _ => {
                    self.queue.push_back((seq, Item::Other));
                    self.fail(now, "malformed done message".into());
                }
            },
            Kind::Abort => {
                let reply = serde_json::from_slice::<Reply>(&env.payload).ok();
                let resumable = reply.as_ref().is_some_and(|r| r.resumable);
                let reason = reply.and_then(|r| r.reason).unwrap_or_else(|| "no reason given".into());
                let reason: String = reason.chars().filter(|c| !c.is_control()).take(300).collect();
                self.queue.push_back((seq, Item::Other));
                if resumable {
                    self.out.push(RecvOut::PeerStopped(reason));
                } else {
                    self.out.push(RecvOut::Failed(format!("the sender aborted: {reason}")));
                    self.finished = true;
                }
            }
            _ => self.queue.push_back((seq, Item::Other)),
        }
    }

    /// A chunk message is a claim: it must fit the offer exactly.
    fn check_chunk(&self, m: &ChunkMsg) -> Result<(), String> {
        let Some(o) = &self.st.offer else {
            return Err("chunk before any accepted offer".into());
        };
        if m.transfer != o.transfer {
            return Err("chunk of another transfer".into());
        }
        if m.index >= o.chunks() {
            return Err(format!("chunk index {} beyond the {} chunks offered", m.index, o.chunks()));
        }
        let (off, len) = o.chunk_span(m.index);
        if m.offset != off || m.len != len {
            return Err(format!("chunk {} claims offset {} length {}, expected {off} {len}", m.index, m.offset, m.len));
        }
        if !is_sha256_hex(&m.sha256) || m.object != chunk_object_name(m.index, &m.sha256) {
            return Err(format!("chunk {} has a malformed hash or object name", m.index));
        }
        Ok(())
    }

    fn on_chunk_data(&mut self, now: Duration, key: &Key, r: Result<Option<Vec<u8>>, StoreError>) {
        let secure = self.cfg.link.secure;
        let crypto = self.crypto.clone();
        let (me, peer) = (self.link.me().clone(), self.link.peer().clone());
        let Some((_, Item::Chunk { msg, data, fetching, .. })) =
            self.queue.iter_mut().find(|(_, it)| matches!(it, Item::Chunk { msg, .. } if msg.object == key.name()))
        else {
            return;
        };
        *fetching = false;
        let index = msg.index;
        let expect_len = msg.len + if secure { SEAL_OVERHEAD as u64 } else { 0 };
        let problem = match r {
            Ok(Some(mut bytes)) => {
                if bytes.len() as u64 != expect_len {
                    Some((true, format!("chunk {index}: {} bytes, expected {expect_len}", bytes.len())))
                } else if object_digest(&bytes, secure) != msg.sha256 {
                    Some((true, format!("chunk {index}: SHA-256 mismatch")))
                } else if let Some(c) = &crypto {
                    let aad = chunk_aad(&peer, &me, &msg.transfer, index, msg.len);
                    match c.open_in_place(INFO_CHUNK, &aad, &mut bytes) {
                        Ok(()) => {
                            *data = Some(crate::buf::freeze(bytes));
                            None
                        }
                        Err(e) => Some((true, format!("chunk {index}: {e}"))),
                    }
                } else if secure {
                    Some((false, format!("chunk {index}: no key yet")))
                } else {
                    *data = Some(crate::buf::freeze(bytes));
                    None
                }
            }
            Ok(None) => Some((false, format!("chunk {index}: not in the store yet"))),
            Err(e) => Some((false, format!("chunk {index}: {e}"))),
        };
        match problem {
            None => {
                self.bad.remove(&index);
            }
            Some((present_but_wrong, reason)) => {
                let e = self.bad.entry(index).or_insert((0, now, now));
                e.0 += 1;
                let fails = e.0;
                let delay = Duration::from_millis(20u64 << fails.min(8)).min(Duration::from_secs(5));
                e.2 = now + delay;
                let first = e.1;
                self.retry_at = Some(self.retry_at.map_or(now + delay, |t| t.min(now + delay)));
                if present_but_wrong {
                    tracing::debug!("{reason}; fetching again (attempt {fails})");
                    self.out.push(RecvOut::Rejected { key: key.clone(), reason: reason.clone() });
                    if fails == WARN_AFTER_FAILS {
                        self.out.push(RecvOut::KeepsFailing { key: key.clone(), reason: reason.clone() });
                    }
                    if now.saturating_sub(first) >= self.cfg.bad_chunk_timeout {
                        self.fail(
                            now,
                            format!("{reason}, still after {} s of retries", self.cfg.bad_chunk_timeout.as_secs()),
                        );
                    }
                }
            }
        }
    }

    /// Moves the head of the queue forward and keeps prefetches going.
    fn pump(&mut self, now: Duration) {
        if self.finished || self.rehash_next.is_some() || self.preparing.is_some() {
            if let Some(i) = self.rehash_next {
                if !self.out.iter().any(|o| matches!(o, RecvOut::ReadBack { .. })) && i == 0 {
                    self.read_back(0);
                }
            }
            return;
        }
        loop {
            let next_index = self.st.next_index;
            let Some((seq, item)) = self.queue.front_mut() else { break };
            let seq = *seq;
            match item {
                Item::Other => {
                    self.queue.pop_front();
                    self.link.commit(now, seq);
                }
                Item::Chunk { msg, .. } if msg.index < next_index => {
                    // Already written (a resend after the sender restarted).
                    self.queue.pop_front();
                    self.link.commit(now, seq);
                }
                Item::Chunk { msg, .. } if msg.index > next_index => {
                    let m = format!("chunk {} arrived before chunk {next_index}", msg.index);
                    self.fail(now, m);
                    return;
                }
                Item::Chunk { msg, data, writing, .. } => {
                    if !*writing {
                        if let Some(d) = data.clone() {
                            *writing = true;
                            self.out.push(RecvOut::Write { index: msg.index, offset: msg.offset, data: d });
                        }
                    }
                    break;
                }
                Item::Done(done) => {
                    if self.st.offer.as_ref().is_none_or(|o| o.transfer != done.transfer) {
                        self.fail(now, "done message for no accepted offer".into());
                        return;
                    }
                    let chunks = self.st.offer.as_ref().map_or(0, |o| o.chunks());
                    if self.st.next_index != chunks {
                        let m = format!("done after {} of {chunks} chunks", self.st.next_index);
                        self.fail(now, m);
                        return;
                    }
                    let ours = self.hasher.finish();
                    if ours != done.sha256 {
                        let theirs = done.sha256.clone();
                        let offer = self.st.offer.clone().expect("receiving");
                        self.out.push(RecvOut::Discard { offer });
                        self.fail(now, format!("whole-file SHA-256 mismatch: got {ours}, sender says {theirs}"));
                        return;
                    }
                    if !self.finalizing {
                        self.finalizing = true;
                        self.st.phase = RecvPhase::Finalizing;
                        self.st.file_sha256 = Some(ours.clone());
                        self.out.push(RecvOut::Persist);
                        self.out.push(RecvOut::Finalize { sha256: ours });
                    }
                    break;
                }
            }
        }
        // Prefetch chunk objects for the first few queued chunks.
        let in_dir = self.link.in_dir().clone();
        let overhead = if self.cfg.link.secure { SEAL_OVERHEAD as u64 } else { 0 };
        let mut fetches = Vec::new();
        for (_, item) in self.queue.iter_mut().take(self.cfg.prefetch.max(1)) {
            if let Item::Chunk { msg, data: None, fetching, .. } = item {
                if *fetching {
                    continue;
                }
                if let Some((_, _, not_before)) = self.bad.get(&msg.index) {
                    if *not_before > now {
                        continue;
                    }
                }
                *fetching = true;
                if let Ok(k) = in_dir.join(&msg.object) {
                    fetches.push(Op::Get(k, msg.len + overhead));
                }
            }
        }
        for op in fetches {
            self.out.push(RecvOut::Op(op));
        }
        self.drain(now);
    }

    fn drain(&mut self, now: Duration) {
        loop {
            let outs = self.link.take_outputs();
            if outs.is_empty() {
                break;
            }
            let mut delivered = false;
            for o in outs {
                match o {
                    Output::Op(op) => self.out.push(RecvOut::Op(op)),
                    Output::Persist => self.out.push(RecvOut::Persist),
                    Output::Acked(_) => {}
                    Output::Deliver(env) => {
                        self.on_message(now, env);
                        delivered = true;
                    }
                    Output::Rejected { key, reason } => self.out.push(RecvOut::Rejected { key, reason }),
                }
            }
            if delivered {
                self.pump(now);
            }
        }
        if self.out.iter().any(|o| matches!(o, RecvOut::Persist)) {
            self.out.retain(|o| !matches!(o, RecvOut::Persist));
            self.out.insert(0, RecvOut::Persist);
        }
    }
}

#[cfg(test)]
#[path = "dftp_tests.rs"]
mod tests;

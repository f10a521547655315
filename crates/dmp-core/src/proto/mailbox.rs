//! The mailbox: a reliable, ordered channel between two parties over a store,
//! written as a state machine that does no I/O.
//!
//! One [`Link`] joins `me` and `peer`. Its outgoing half writes message files
//! into `me`'s outbox, `<me>/<peer>/<session>-<seq>.msg`, once each, and
//! deletes them when the peer's cumulative acknowledgement covers them; it
//! keeps `<me>/<peer>/head` (its session and lowest unacknowledged number)
//! up to date. Its incoming half never lists the peer's outbox: it reads the
//! peer's `head` and fetches the next expected name, verifies each message,
//! delivers it exactly once and in order, and acknowledges cumulatively in
//! `<me>/<peer>/ack`, a file of its own outbox. So a peer's outbox may be a
//! read-only web server that cannot list.
//!
//! Feed it [`Input`]s with the current time; take back [`Output`]s.

use crate::crypto::{INFO_MSG, PeerCrypto};
use crate::id::PeerId;
use crate::store::{Key, StoreError, is_valid_component};
use crate::wire::{Envelope, FLAG_ENCRYPTED, Kind, MAX_ENVELOPE_LEN, MAX_PAYLOAD_LEN};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Name of the cumulative acknowledgement file in a channel directory.
pub const ACK_NAME: &str = "ack";
/// Name of the file announcing the sender's session and base.
pub const HEAD_NAME: &str = "head";
/// How long the peer's head must stay absent before the peer counts as gone.
pub const PEER_GONE_AFTER: Duration = Duration::from_secs(2);
/// Largest ack file accepted.
pub const MAX_ACK_LEN: u64 = 1024;

/// A store operation the driver is asked to perform; its result comes back
/// as an [`Input`] with the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    List(Key),
    Get(Key, u64),
    Put(Key, Bytes),
    Delete(Key),
}

/// The result of an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Listed(Key, Result<Vec<String>, StoreError>),
    Got(Key, Result<Option<Vec<u8>>, StoreError>),
    Put(Key, Result<(), StoreError>),
    Deleted(Key, Result<(), StoreError>),
}

impl OpResult {
    pub fn key(&self) -> &Key {
        match self {
            OpResult::Listed(k, _) | OpResult::Got(k, _) | OpResult::Put(k, _) | OpResult::Deleted(k, _) => k,
        }
    }
}

/// What a [`Link`] asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Perform a store operation and feed the result back.
    Op(Op),
    /// A message from the peer, in order, exactly once. Call
    /// [`Link::commit`] once its effects are durable.
    Deliver(Envelope),
    /// The link state changed; persist it (before acting on later outputs
    /// is not required: the protocol tolerates the lag).
    Persist,
    /// Messages up to this sequence number are acknowledged by the peer.
    Acked(u64),
    /// A file in the peer's outbox failed verification (logged, retried).
    Rejected { key: Key, reason: String },
}

/// The persisted part of a link: enough to resume without re-delivering
/// or re-using a sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// My sending session (a fresh one is chosen when no state exists).
    pub session: u64,
    /// Next sequence number I will send (first is 1).
    pub next_seq: u64,
    /// Highest sequence number of mine the peer acknowledged.
    pub acked: u64,
    /// The peer's session I am receiving, if known.
    pub peer_session: Option<u64>,
    /// Highest sequence number of the peer's that I delivered and committed.
    pub committed: u64,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Most unacknowledged messages of mine in the store at once.
    pub window: u64,
    /// Most of the peer's messages fetched ahead of delivery.
    pub readahead: u64,
    /// Seal every envelope for the peer and accept only sealed ones (HPKE
    /// auth mode); the key comes through [`Link::set_crypto`]. Off only with
    /// `--insecure-plaintext`.
    pub secure: bool,
    /// Least time between two reads of the peer's `head` once its session
    /// is known (zero: at every wake; fine for a local folder). A sixteenth
    /// of it while the peer's messages arrive, or once its head is gone, so
    /// that a peer that restarts with a new session is followed quickly.
    pub head_every: Duration,
    /// First retry delay after a failed operation; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            window: 64,
            readahead: 16,
            head_every: Duration::ZERO,
            secure: false,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Parses `<session:16 hex>-<seq:16 hex>.msg`; anything else is not ours.
pub fn parse_msg_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".msg")?;
    if stem.len() != 33 || stem.as_bytes()[16] != b'-' {
        return None;
    }
    let hexok = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (a, b) = (&stem[..16], &stem[17..]);
    if !hexok(a) || !hexok(b) {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// The file name of message `seq` of `session`.
pub fn msg_name(session: u64, seq: u64) -> String {
    format!("{session:016x}-{seq:016x}.msg")
}

/// Payload of the `ack` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckBody {
    pub session: u64,
    pub upto: u64,
}

impl AckBody {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.session.to_be_bytes());
        v.extend_from_slice(&self.upto.to_be_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Option<AckBody> {
        if b.len() != 16 {
            return None;
        }
        Some(AckBody {
            session: u64::from_be_bytes(b[..8].try_into().ok()?),
            upto: u64::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

#[derive(Debug)]
enum OutMsg {
    /// Written or being written; the bytes are kept until the write succeeds.
    Writing(Bytes),
    Written,
}

/// `min_backoff` doubled `fails` times, at most `max_backoff`.
fn backoff(cfg: &LinkConfig, fails: u32) -> Duration {
    cfg.min_backoff.saturating_mul(1u32 << fails.min(16)).min(cfg.max_backoff)
}

/// Reads of one of the peer's files (`head`, `ack`) that failed in a row,
/// and when the next may go out.
#[derive(Debug, Default)]
struct ReadBackoff {
    fails: u32,
    retry_at: Option<Duration>,
}

impl ReadBackoff {
    /// Another failure: the next read waits from 80 ms (with the default
    /// `min_backoff`), doubling, up to `max_backoff`; returns when.
    fn failed(&mut self, now: Duration, cfg: &LinkConfig) -> Duration {
        self.fails = self.fails.saturating_add(1);
        let t = now + backoff(cfg, self.fails.saturating_add(1));
        self.retry_at = Some(t);
        t
    }

    /// True when a read may go out now.
    fn due(&mut self, now: Duration) -> bool {
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        self.retry_at = None;
        true
    }
}

/// Why a sealed message is refused by a party that runs in plaintext.
pub const SEALED_BUT_PLAINTEXT_HERE: &str = "encrypted message, but this side runs with --insecure-plaintext";
/// Why a plaintext message is refused by a party that encrypts.
pub const PLAINTEXT_BUT_SEALED_HERE: &str =
    "plaintext message refused: encryption is on here (does the peer run with --insecure-plaintext?)";

/// True when `reason` (of a rejected file) says the two parties disagree on
/// encryption: a setting to fix, not a file still syncing.
pub fn is_mode_mismatch(reason: &str) -> bool {
    reason.contains(SEALED_BUT_PLAINTEXT_HERE) || reason.contains(PLAINTEXT_BUT_SEALED_HERE)
}

/// One party's end of a two-way reliable channel with one peer.
#[derive(Debug)]
pub struct Link {
    me: PeerId,
    peer: PeerId,
    cfg: LinkConfig,
    state: LinkState,
    out_dir: Key,
    in_dir: Key,
    ack_key_out: Key,
    ack_key_in: Key,

    // Outgoing.
    queue: VecDeque<(Kind, Vec<u8>)>,
    inflight: BTreeMap<u64, OutMsg>,
    put_pending: BTreeSet<u64>,
    put_retry_at: Option<Duration>,
    deleting: BTreeSet<u64>,
    /// When each message still unacknowledged was written (by this run).
    written_at: BTreeMap<u64, Duration>,
    /// The longest a message of this run waited, from its write to the
    /// acknowledgement covering it: see [`Link::slowest_ack`].
    slowest_ack: Option<Duration>,
    /// Deletes that failed with a transient error, to retry after a back-off.
    delete_retry: BTreeSet<Key>,
    /// After a failed write (head, ack, delete) or listing, none is retried
    /// before this time, so a failing store is not hammered in a loop.
    write_retry_at: Option<Duration>,
    write_fails: u32,
    /// The recovery listing failed and must be issued again.
    relist: bool,
    ack_get_pending: bool,
    /// Set when my own outbox must be listed (after a restart).
    recover_pending: bool,
    recovered: bool,

    head_key_out: Key,
    head_key_in: Key,
    /// Base last written to my head file, and whether a write is under way.
    head_written: u64,
    head_put_pending: bool,

    // Incoming.
    delivered: u64,
    fetching: BTreeSet<u64>,
    buffered: BTreeMap<u64, Envelope>,
    head_get_pending: bool,
    /// The head was due while the next message was being fetched: it is
    /// read once a fetch finds nothing (see [`Link::wake`]).
    head_deferred: bool,
    /// Reads of the peer's `head` and `ack` that stay unusable: see
    /// [`Link::head_rejected`].
    head_retry: ReadBackoff,
    ack_retry: ReadBackoff,
    /// [`Link::wake`] was called while reads were under way.
    woke_while_reading: bool,
    last_head_read: Option<Duration>,
    /// When a message of the peer's was last delivered.
    last_delivery: Option<Duration>,
    /// The peer's head file was seen, then found absent: it cleaned up.
    peer_gone: bool,
    /// See [`Link::watch_head_every`].
    head_watch: Option<Duration>,
    /// Since when, and in how many reads in a row, the peer's head was absent.
    head_absent: Option<(Duration, u32)>,
    fetch_fail: BTreeMap<u64, (u32, Duration)>,
    /// Ack file: what is written, and whether a write is under way.
    ack_written: u64,
    ack_put_pending: bool,

    out: Vec<Output>,
    wake_at: Option<Duration>,
    dirty: bool,
    /// Keys for sealing to and opening from the peer (secure links).
    crypto: Option<PeerCrypto>,
}

impl Link {
    /// A link with restored state, or a fresh one with `fresh_session` (a
    /// number larger than any earlier session of `me` towards `peer`; the
    /// driver uses the wall clock in microseconds).
    pub fn new(me: PeerId, peer: PeerId, cfg: LinkConfig, restored: Option<LinkState>, fresh_session: u64) -> Link {
        let fresh = restored.is_none();
        let state = restored.unwrap_or(LinkState {
            session: fresh_session.max(1),
            next_seq: 1,
            acked: 0,
            peer_session: None,
            committed: 0,
        });
        let out_dir = Key::new([me.as_str(), peer.as_str()]).expect("peer ids are valid keys");
        let in_dir = Key::new([peer.as_str(), me.as_str()]).expect("peer ids are valid keys");
        let ack_key_out = out_dir.join(ACK_NAME).expect("valid");
        let ack_key_in = in_dir.join(ACK_NAME).expect("valid");
        let head_key_out = out_dir.join(HEAD_NAME).expect("valid");
        let head_key_in = in_dir.join(HEAD_NAME).expect("valid");
        let delivered = state.committed;
        Link {
            me,
            peer,
            cfg,
            ack_written: 0,
            state,
            out_dir,
            in_dir,
            ack_key_out,
            ack_key_in,
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            put_pending: BTreeSet::new(),
            put_retry_at: None,
            deleting: BTreeSet::new(),
            written_at: BTreeMap::new(),
            slowest_ack: None,
            delete_retry: BTreeSet::new(),
            write_retry_at: None,
            write_fails: 0,
            relist: false,
            ack_get_pending: false,
            recover_pending: false,
            recovered: false,
            head_key_out,
            head_key_in,
            head_written: 0,
            head_put_pending: false,
            delivered,
            fetching: BTreeSet::new(),
            buffered: BTreeMap::new(),
            head_get_pending: false,
            head_deferred: false,
            head_retry: ReadBackoff::default(),
            ack_retry: ReadBackoff::default(),
            woke_while_reading: false,
            last_head_read: None,
            last_delivery: None,
            peer_gone: false,
            head_watch: None,
            head_absent: None,
            fetch_fail: BTreeMap::new(),
            ack_put_pending: false,
            out: Vec::new(),
            wake_at: None,
            dirty: fresh,
            crypto: None,
        }
        .started()
    }

    fn started(mut self) -> Link {
        // Whether fresh or restored, first look at my own outbox: a fresh
        // link removes what an earlier session left, a restored one learns
        // of messages written after its state was last saved.
        self.recover_pending = true;
        self.out.push(Output::Op(Op::List(self.out_dir.clone())));
        self
    }

    pub fn me(&self) -> &PeerId {
        &self.me
    }
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }
    pub fn state(&self) -> &LinkState {
        &self.state
    }
    /// The directory of the peer's outbox that this link reads.
    pub fn in_dir(&self) -> &Key {
        &self.in_dir
    }
    /// The directory of my outbox that this link writes.
    pub fn out_dir(&self) -> &Key {
        &self.out_dir
    }

    /// Supplies the keys of a secure link (once the peer's key is known and
    /// accepted); sending and receiving start then.
    pub fn set_crypto(&mut self, now: Duration, crypto: PeerCrypto) {
        self.crypto = Some(crypto);
        self.write_head();
        self.write_ack(now);
        self.pump(now);
        self.wake(now);
    }

    /// True while a secure link waits for the peer's key.
    pub fn needs_key(&self) -> bool {
        self.cfg.secure && self.crypto.is_none()
    }

    pub fn crypto(&self) -> Option<&PeerCrypto> {
        self.crypto.as_ref()
    }

    /// Seals an envelope's payload on a secure link; `None` while the key is missing.
    fn seal(&self, mut env: Envelope) -> Option<Envelope> {
        if !self.cfg.secure {
            return Some(env);
        }
        let c = self.crypto.as_ref()?;
        env.flags |= FLAG_ENCRYPTED;
        let aad = env.aad();
        c.seal_in_place(INFO_MSG, &aad, &mut env.payload);
        Some(env)
    }

    /// Opens an envelope read from the peer's outbox.
    fn open(&self, mut env: Envelope) -> Result<Envelope, String> {
        let sealed = env.flags & FLAG_ENCRYPTED != 0;
        if !self.cfg.secure {
            return if sealed { Err(SEALED_BUT_PLAINTEXT_HERE.into()) } else { Ok(env) };
        }
        if !sealed {
            return Err(PLAINTEXT_BUT_SEALED_HERE.into());
        }
        let c = self.crypto.as_ref().ok_or("no key for the peer yet")?;
        let aad = env.aad();
        c.open_in_place(INFO_MSG, &aad, &mut env.payload).map_err(|e| e.to_string())?;
        Ok(env)
    }

    /// True once my outbox was listed at the start (see [`Link::new`]):
    /// until then, messages written by an earlier run are not counted in
    /// [`Link::unacked`].
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Reads the peer's head every `every` from now on (asking for a wake
    /// for it), whatever [`LinkConfig::head_every`] says: a party that has
    /// finished watches whether the peer is still there.
    pub fn watch_head_every(&mut self, every: Duration) {
        self.head_watch = Some(every);
    }

    /// True when the peer's head file, once seen, has disappeared: the peer
    /// finished and removed its files.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// True while this link's read of the peer's head is under way.
    pub fn reading_head(&self) -> bool {
        self.head_get_pending
    }

    /// True while the peer has a session that is not gone: its head was
    /// read (and verified) and has not disappeared since.
    pub fn peer_present(&self) -> bool {
        self.state.peer_session.is_some() && !self.peer_gone
    }

    /// The longest any message written by this run took from its write to
    /// the peer's acknowledgement of it; `None` before the first. On a
    /// synced folder that is the sync engine's round trip (seconds to
    /// minutes), on a server a few milliseconds: how long to wait for the
    /// peer to answer scales with it.
    pub fn slowest_ack(&self) -> Option<Duration> {
        self.slowest_ack
    }

    /// Messages queued or in the store, not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// True when every message queued so far is written to the store.
    pub fn all_written(&self) -> bool {
        self.queue.is_empty() && self.put_pending.is_empty() && self.put_retry_at.is_none()
    }

    /// Sequence number of the last message queued so far (0 if none).
    pub fn last_queued_seq(&self) -> u64 {
        self.state.next_seq - 1 + self.queue.len() as u64
    }

    /// Queues a message; returns the sequence number it will carry.
    pub fn send(&mut self, now: Duration, kind: Kind, payload: Vec<u8>) -> u64 {
        assert!(payload.len() <= MAX_PAYLOAD_LEN, "payload over the envelope cap");
        self.queue.push_back((kind, payload));
        let seq = self.last_queued_seq();
        self.pump(now);
        seq
    }

    /// Marks every delivered message up to `seq` as processed: it will be
    /// acknowledged and never delivered again.
    pub fn commit(&mut self, now: Duration, seq: u64) {
        let seq = seq.min(self.delivered);
        if seq > self.state.committed {
            self.state.committed = seq;
            self.dirty = true;
            self.write_ack(now);
        }
    }

    /// Something may have changed: look again.
    pub fn wake(&mut self, now: Duration) {
        self.woke_while_reading |= self.reading();
        if self.needs_key() {
            // Nothing can be sealed or opened before the peer's key is known.
            self.retry_due(now);
            return;
        }
        // The next message first: on a folder store reads run one after
        // the other, and the message is what the wake is most likely for.
        let mut fetching_next = false;
        if let Some(session) = self.state.peer_session {
            let next = self.delivered + 1;
            // A peer whose head is gone has finished that session: only its
            // head is watched, for a new one.
            if !self.peer_gone && !self.buffered.contains_key(&next) {
                self.fetch(now, session, next);
                fetching_next = self.fetching.contains(&next);
            }
        }
        let head_due = self.state.peer_session.is_none()
            || self.last_head_read.is_none_or(|t| now.saturating_sub(t) >= self.head_interval(now));
        if head_due && fetching_next && self.cfg.head_every.is_zero() {
            // Read at every wake (a local folder, where reads run one after
            // the other): the head tells of a new session or a finished
            // one, and while the peer's messages keep coming neither has
            // happened. So it is read once a fetch finds nothing, not ahead
            // of what the message leads to (a ping server's reply waited
            // behind it). Elsewhere both reads go out together.
            self.head_deferred = true;
        } else if head_due {
            self.read_head(now);
        }
        if let (Some(every), Some(t)) = (self.head_watch, self.last_head_read) {
            if t + every > now {
                self.schedule(t + every);
            }
        }
        if !self.inflight.is_empty() && !self.ack_get_pending && self.ack_retry.due(now) {
            self.ack_get_pending = true;
            self.out.push(Output::Op(Op::Get(self.ack_key_in.clone(), MAX_ACK_LEN)));
        }
        self.retry_due(now);
    }

    fn read_head(&mut self, now: Duration) {
        self.head_deferred = false;
        if !self.head_retry.due(now) {
            return;
        }
        if !self.head_get_pending {
            self.head_get_pending = true;
            self.last_head_read = Some(now);
            self.out.push(Output::Op(Op::Get(self.head_key_in.clone(), MAX_ACK_LEN)));
        }
    }

    /// How long after the last read the peer's head is read again: see
    /// [`LinkConfig::head_every`].
    fn head_interval(&self, now: Duration) -> Duration {
        if let Some(every) = self.head_watch {
            return every;
        }
        let receiving = self.last_delivery.is_some_and(|t| now.saturating_sub(t) < self.cfg.head_every);
        // Once the head reads as absent (the peer may have finished, or be
        // restarting), watch it closely until it is back or confirmed gone.
        let suspect = self.peer_gone || self.head_absent.is_some();
        if suspect || receiving { self.cfg.head_every / 16 } else { self.cfg.head_every }
    }

    /// When the link wants a [`Link::wake`] even without a change signal.
    pub fn wake_at(&self) -> Option<Duration> {
        self.wake_at
    }

    /// Takes the outputs produced so far.
    ///
    /// When the state changed, [`Output::Persist`] comes first: the driver
    /// saves [`Link::snapshot`] before it acts on anything else, so that an
    /// acknowledgement is never written, nor a message deleted, ahead of the
    /// state that accounts for it.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        if self.dirty {
            self.dirty = false;
            self.out.insert(0, Output::Persist);
        }
        std::mem::take(&mut self.out)
    }

    /// The state to persist. Sequence numbers count as used only once their
    /// message is written, so a crash never leaves a gap the peer would
    /// wait on forever; numbers written after the snapshot are recovered
    /// by listing my outbox on restart.
    pub fn snapshot(&self) -> LinkState {
        let mut s = self.state.clone();
        if let Some((seq, _)) = self.inflight.iter().find(|(_, m)| matches!(m, OutMsg::Writing(_))) {
            s.next_seq = s.next_seq.min(*seq);
        }
        s
    }

    /// True when `key` belongs to this link (for routing results).
    pub fn owns(&self, key: &Key) -> bool {
        key.starts_with(&self.out_dir) || key.starts_with(&self.in_dir)
    }

    /// Feeds the result of an operation this link asked for.
    pub fn on_result(&mut self, now: Duration, res: OpResult) {
        let read = matches!(res, OpResult::Got(..));
        self.dispatch(now, res);
        // A wake that came while reads were under way may announce a file
        // those reads were issued too early to see: look once more.
        if read && self.woke_while_reading && !self.reading() {
            self.woke_while_reading = false;
            self.wake(now);
        }
    }

    /// Reads of the peer's files under way.
    fn reading(&self) -> bool {
        self.head_get_pending || self.ack_get_pending || !self.fetching.is_empty()
    }

    fn dispatch(&mut self, now: Duration, res: OpResult) {
        match res {
            OpResult::Listed(k, r) if k == self.out_dir && self.recover_pending => self.on_recover(now, r),
            OpResult::Got(k, r) if k == self.ack_key_in => self.on_ack(now, r),
            OpResult::Got(k, r) if k == self.head_key_in => self.on_head(now, r),
            OpResult::Put(k, r) if k == self.head_key_out => {
                self.head_put_pending = false;
                match r {
                    Ok(()) => {
                        self.write_fails = 0;
                        self.write_head();
                    }
                    Err(e) => {
                        tracing::debug!("writing head failed, will retry: {e}");
                        self.head_written = 0;
                        self.write_failed(now);
                    }
                }
            }
            OpResult::Got(k, r) => self.on_fetched(now, k, r),
            OpResult::Put(k, r) if k == self.ack_key_out => {
                self.ack_put_pending = false;
                match r {
                    Ok(()) => {
                        self.write_fails = 0;
                        self.write_ack(now);
                    }
                    Err(e) => {
                        tracing::debug!("writing ack failed, will retry: {e}");
                        self.ack_written = 0;
                        self.write_failed(now);
                    }
                }
            }
            OpResult::Put(k, r) => self.on_put(now, k, r),
            OpResult::Deleted(k, r) => {
                let seq = parse_msg_name(k.name()).map(|(_, seq)| seq);
                match r {
                    Err(e) if e.is_transient() => {
                        // Still counts against the window until it is gone.
                        tracing::debug!("delete {k} failed, will retry: {e}");
                        self.delete_retry.insert(k);
                        self.write_failed(now);
                    }
                    r => {
                        if let Err(e) = r {
                            tracing::warn!("delete {k} failed: {e}");
                        }
                        if let Some(seq) = seq {
                            self.deleting.remove(&seq);
                        }
                        self.pump(now);
                    }
                }
            }
            OpResult::Listed(_, _) => {}
        }
    }

    fn schedule(&mut self, t: Duration) {
        self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
    }

    /// A write or listing failed: retry the failed ones after a growing back-off.
    fn write_failed(&mut self, now: Duration) {
        self.write_fails = self.write_fails.saturating_add(1);
        let t = now + self.backoff(self.write_fails);
        self.write_retry_at = Some(t);
        self.schedule(t);
    }

    fn backoff(&self, fails: u32) -> Duration {
        backoff(&self.cfg, fails)
    }

    fn retry_due(&mut self, now: Duration) {
        if self.wake_at.is_some_and(|w| w <= now) {
            self.wake_at = None;
        }
        if self.put_retry_at.is_some_and(|t| t <= now) {
            self.put_retry_at = None;
            let seqs: Vec<u64> = self
                .inflight
                .iter()
                .filter(|(s, m)| matches!(m, OutMsg::Writing(_)) && !self.put_pending.contains(s))
                .map(|(s, _)| *s)
                .collect();
            for s in seqs {
                self.issue_put(s);
            }
        }
        if self.write_retry_at.is_some_and(|t| t > now) {
            self.pump(now);
            return;
        }
        self.write_retry_at = None;
        if self.relist {
            self.relist = false;
            self.out.push(Output::Op(Op::List(self.out_dir.clone())));
        }
        for key in std::mem::take(&mut self.delete_retry) {
            self.out.push(Output::Op(Op::Delete(key)));
        }
        if !self.ack_put_pending && self.ack_written < self.state.committed {
            self.write_ack(now);
        }
        self.write_head();
        self.pump(now);
    }

    /// Announces my session and base in my `head` file (coalesced: one
    /// write at a time, rewritten when the base moved meanwhile).
    fn write_head(&mut self) {
        let base = self.state.acked + 1;
        if !self.recovered || self.head_put_pending || self.head_written == base {
            return;
        }
        let env = Envelope {
            flags: 0,
            kind: Kind::Head,
            sender: self.me.clone(),
            recipient: self.peer.clone(),
            session: self.state.session,
            seq: self.state.next_seq - 1,
            base,
            payload: Vec::new(),
        };
        let Some(env) = self.seal(env) else { return };
        self.head_put_pending = true;
        self.head_written = base;
        self.out.push(Output::Op(Op::Put(self.head_key_out.clone(), env.encode().into())));
    }

    // ---- outgoing -------------------------------------------------------

    fn on_recover(&mut self, now: Duration, r: Result<Vec<String>, StoreError>) {
        let names = match r {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("listing my outbox failed, will retry: {e}");
                self.relist = true;
                self.write_failed(now);
                return;
            }
        };
        self.recover_pending = false;
        self.recovered = true;
        // Past this, a number found was not written since the state was last
        // saved unless that save was lost (at most a window of messages is
        // unacknowledged). It is adopted all the same, as reusing a number
        // the peer may have read would be worse; but a planted file there
        // would stall the link, so it is named.
        let far = self.state.next_seq.saturating_add(self.cfg.window);
        let mut far_found = None;
        for name in names {
            let Some((session, seq)) = parse_msg_name(&name) else { continue };
            let key = self.out_dir.join(&name).expect("valid name");
            if session != self.state.session {
                // Left over from an earlier session of mine: nobody will ack it.
                self.out.push(Output::Op(Op::Delete(key)));
            } else if seq <= self.state.acked {
                self.deleting.insert(seq);
                self.out.push(Output::Op(Op::Delete(key)));
            } else {
                // Written before a crash: keep it in flight, and never reuse its number.
                if seq >= far {
                    far_found.get_or_insert(key);
                }
                self.inflight.insert(seq, OutMsg::Written);
                if seq >= self.state.next_seq {
                    self.state.next_seq = seq + 1;
                    self.dirty = true;
                }
            }
        }
        if let Some(key) = far_found {
            tracing::warn!(
                "my outbox holds {key}, far past the messages written since my state was saved (was the state \
                 file restored from an older copy?); if this party did not write it, the peer will wait for ever \
                 on the messages before it"
            );
        }
        // Sequence numbers between acked and next_seq that are not in the
        // store were already written and deleted, or never written because
        // of a crash between persisting and writing; neither can be filled
        // again. A gap would stall the peer, so numbers are persisted only
        // after the write, and the listing above restores any that were not.
        for seq in self.state.acked + 1..self.state.next_seq {
            self.inflight.entry(seq).or_insert(OutMsg::Written);
        }
        self.write_head();
        self.pump(now);
    }

    fn pump(&mut self, _now: Duration) {
        if !self.recovered || self.needs_key() {
            return;
        }
        // Files acknowledged but not yet deleted still count: the store never
        // holds more than `window` of my message files.
        while ((self.inflight.len() + self.deleting.len()) as u64) < self.cfg.window {
            let Some((kind, payload)) = self.queue.pop_front() else { break };
            let seq = self.state.next_seq;
            self.state.next_seq += 1;
            let env = Envelope {
                flags: 0,
                kind,
                sender: self.me.clone(),
                recipient: self.peer.clone(),
                session: self.state.session,
                seq,
                base: self.state.acked + 1,
                payload,
            };
            let env = self.seal(env).expect("a key is present");
            self.inflight.insert(seq, OutMsg::Writing(env.encode().into()));
            self.issue_put(seq);
        }
    }

    /// Writes message `seq`. Message files are written one at a time and in
    /// order, so that after a crash the written ones are exactly those up to
    /// the highest one found in the outbox: there is never a gap.
    fn issue_put(&mut self, seq: u64) {
        if !self.put_pending.is_empty() {
            return;
        }
        if self.inflight.range(..seq).any(|(_, m)| matches!(m, OutMsg::Writing(_))) {
            return;
        }
        if let Some(OutMsg::Writing(bytes)) = self.inflight.get(&seq) {
            let key = self.out_dir.join(&msg_name(self.state.session, seq)).expect("valid");
            self.put_pending.insert(seq);
            self.out.push(Output::Op(Op::Put(key, bytes.clone())));
        }
    }

    fn on_put(&mut self, now: Duration, key: Key, r: Result<(), StoreError>) {
        let Some((_, seq)) = parse_msg_name(key.name()) else { return };
        self.put_pending.remove(&seq);
        match r {
            Ok(()) => {
                self.write_fails = 0;
                if let Some(m) = self.inflight.get_mut(&seq) {
                    *m = OutMsg::Written;
                    self.written_at.insert(seq, now);
                }
                self.dirty = true;
                // The peer may leave in answer to this message, not before:
                // count its head's absence from now on.
                self.head_absent = None;
                self.peer_gone = false;
                if let Some((&next, _)) = self.inflight.iter().find(|(_, m)| matches!(m, OutMsg::Writing(_))) {
                    self.issue_put(next);
                }
            }
            Err(e) => {
                tracing::debug!("writing {key} failed, will retry: {e}");
                self.write_fails = self.write_fails.saturating_add(1);
                let t = now + self.backoff(self.write_fails.max(2));
                self.put_retry_at = Some(t);
                self.schedule(t);
            }
        }
    }

    fn on_ack(&mut self, now: Duration, r: Result<Option<Vec<u8>>, StoreError>) {
        self.ack_get_pending = false;
        let bytes = match r {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                // As a bad ack: read again after a growing pause (a peer
                // outbox answering 403 or an HTML page was read 13 times a
                // second).
                tracing::debug!("reading ack failed: {e}");
                let t = self.ack_retry.failed(now, &self.cfg);
                self.schedule(t);
                return;
            }
        };
        let env = match Envelope::decode(&bytes, Some(&self.me)).map_err(|e| e.to_string()).and_then(|e| self.open(e)) {
            Ok(e) if e.kind == Kind::Ack && e.sender == self.peer => e,
            Ok(_) => {
                self.ack_rejected(now, "ack file of the wrong kind or sender".into());
                return;
            }
            Err(e) => {
                // Possibly half-synced: try again later.
                self.ack_rejected(now, e);
                return;
            }
        };
        self.ack_retry.fails = 0;
        // The peer's outbox is still there, whatever its head read showed.
        self.head_absent = None;
        self.peer_gone = false;
        let Some(ack) = AckBody::decode(&env.payload) else {
            self.ack_rejected(now, "malformed ack payload".into());
            return;
        };
        if ack.session != self.state.session || ack.upto <= self.state.acked {
            return; // stale, or for an earlier session
        }
        let written_upto = self.snapshot().next_seq - 1;
        if ack.upto > written_upto {
            self.ack_rejected(now, format!("ack for {} but only {} messages sent", ack.upto, written_upto));
            return;
        }
        let old = self.state.acked;
        self.state.acked = ack.upto;
        self.dirty = true;
        for seq in old + 1..=ack.upto {
            if let Some(at) = self.written_at.remove(&seq) {
                let took = now.saturating_sub(at);
                self.slowest_ack = Some(self.slowest_ack.map_or(took, |s| s.max(took)));
            }
            self.inflight.remove(&seq);
            self.put_pending.remove(&seq);
            if self.deleting.insert(seq) {
                let key = self.out_dir.join(&msg_name(self.state.session, seq)).expect("valid");
                self.out.push(Output::Op(Op::Delete(key)));
            }
        }
        self.out.push(Output::Acked(ack.upto));
        self.write_head();
        self.pump(now);
    }

    // ---- incoming -------------------------------------------------------

    fn reject(&mut self, key: Key, reason: String) {
        self.out.push(Output::Rejected { key, reason });
    }

    fn on_head(&mut self, now: Duration, r: Result<Option<Vec<u8>>, StoreError>) {
        self.head_get_pending = false;
        let bytes = match r {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Not started yet, or finished and cleaned up. A file being
                // replaced or a flaky read looks absent too: gone only when
                // absent in several reads over a while.
                if self.state.peer_session.is_some() {
                    let (since, reads) = self.head_absent.get_or_insert((now, 0));
                    *reads += 1;
                    self.peer_gone = *reads >= 3 && now.saturating_sub(*since) >= PEER_GONE_AFTER;
                }
                return;
            }
            Err(e) => {
                self.head_rejected(now, e.to_string());
                return;
            }
        };
        let env = match Envelope::decode(&bytes, Some(&self.me)).map_err(|e| e.to_string()).and_then(|e| self.open(e)) {
            Ok(e) if e.kind == Kind::Head && e.sender == self.peer && e.base >= 1 => e,
            Ok(_) => {
                self.head_rejected(now, "head file of the wrong kind or sender".into());
                return;
            }
            Err(e) => {
                self.head_rejected(now, e.to_string());
                return;
            }
        };
        self.head_retry.fails = 0;
        let before = (std::mem::replace(&mut self.peer_gone, false), self.state.peer_session, self.delivered);
        self.head_absent = None;
        self.enter(env.session, env.base);
        // A window ahead only when something changed: an unchanged head
        // leaves the next name to `wake` (on a polled store each fetch is a
        // request).
        if before != (false, self.state.peer_session, self.delivered) {
            self.fetch_more(now);
        }
    }

    /// The peer's `ack` could not be used: as [`Link::head_rejected`].
    fn ack_rejected(&mut self, now: Duration, reason: String) {
        self.reject(self.ack_key_in.clone(), reason);
        let t = self.ack_retry.failed(now, &self.cfg);
        self.schedule(t);
    }

    /// The peer's `head` could not be used (half-synced perhaps, or planted):
    /// read again after a back-off that doubles with each failure in a row,
    /// up to `max_backoff`, so that a file that stays bad is not read (and
    /// reported) a dozen times a second for ever.
    fn head_rejected(&mut self, now: Duration, reason: String) {
        self.reject(self.head_key_in.clone(), reason);
        let t = self.head_retry.failed(now, &self.cfg);
        self.schedule(t);
    }

    /// Applies what the peer announces: its `session`, and `base`, the
    /// lowest number it has not seen acknowledged. A newer session means the
    /// peer lost its state and will never send the rest of the old one; a
    /// base beyond what was delivered here means my state was rolled back
    /// (the peer holds my acknowledgement for those), so skip to it.
    fn enter(&mut self, session: u64, base: u64) {
        match self.state.peer_session {
            Some(s) if session < s => {} // stale
            Some(s) if session == s => {
                if base > self.delivered + 1 {
                    tracing::warn!(
                        peer = %self.peer, delivered = self.delivered, base,
                        "the peer's messages start after what was delivered here; skipping ahead"
                    );
                    self.delivered = base - 1;
                    self.state.committed = self.state.committed.max(base - 1);
                    self.buffered.retain(|s, _| *s >= base);
                    self.dirty = true;
                }
            }
            _ => {
                tracing::debug!(peer = %self.peer, session, base, "receiving a new session");
                self.state.peer_session = Some(session);
                self.state.committed = base - 1;
                self.delivered = base - 1;
                self.buffered.clear();
                self.fetching.clear();
                self.fetch_fail.clear();
                self.ack_written = 0;
                self.dirty = true;
            }
        }
    }

    /// Fetches the next expected messages: after progress, a window ahead;
    /// otherwise just the next one.
    fn fetch_more(&mut self, now: Duration) {
        let Some(session) = self.state.peer_session else { return };
        // Saturating: a hostile head may announce a base near u64::MAX.
        let first = self.delivered.saturating_add(1);
        for seq in first..=self.delivered.saturating_add(self.cfg.readahead.max(1)) {
            if !self.buffered.contains_key(&seq) {
                self.fetch(now, session, seq);
            }
        }
    }

    fn fetch(&mut self, now: Duration, session: u64, seq: u64) {
        if self.fetching.contains(&seq) {
            return;
        }
        if let Some((_, not_before)) = self.fetch_fail.get(&seq) {
            if *not_before > now {
                self.schedule(*not_before);
                return;
            }
        }
        self.fetching.insert(seq);
        let key = self.in_dir.join(&msg_name(session, seq)).expect("valid");
        self.out.push(Output::Op(Op::Get(key, MAX_ENVELOPE_LEN as u64)));
    }

    fn fetch_failed(&mut self, now: Duration, seq: u64, key: Key, reason: String) {
        let e = self.fetch_fail.entry(seq).or_insert((0, now));
        e.0 += 1;
        let fails = e.0;
        let t = now + self.backoff(fails);
        self.fetch_fail.insert(seq, (fails, t));
        self.schedule(t);
        self.reject(key, reason);
    }

    fn on_fetched(&mut self, now: Duration, key: Key, r: Result<Option<Vec<u8>>, StoreError>) {
        let Some((session, seq)) = parse_msg_name(key.name()) else { return };
        self.fetching.remove(&seq);
        if self.head_deferred && !matches!(r, Ok(Some(_))) {
            self.read_head(now);
        }
        let bytes = match r {
            Ok(Some(b)) => b,
            Ok(None) => return, // not yet visible (or deleted): looked for again at the next wake
            Err(e) => {
                self.fetch_failed(now, seq, key, e.to_string());
                return;
            }
        };
        let env = match Envelope::decode(&bytes, Some(&self.me)) {
            Ok(env) => env,
            Err(e) => {
                self.fetch_failed(now, seq, key, e.to_string());
                return;
            }
        };
        if env.sender != self.peer
            || env.session != session
            || env.seq != seq
            || matches!(env.kind, Kind::Ack | Kind::Head)
        {
            self.fetch_failed(now, seq, key, "envelope does not match its file name".into());
            return;
        }
        if env.base > env.seq || env.base == 0 {
            self.fetch_failed(now, seq, key, format!("envelope base {} is after its seq {}", env.base, env.seq));
            return;
        }
        let env = match self.open(env) {
            Ok(env) => env,
            Err(e) => {
                self.fetch_failed(now, seq, key, e);
                return;
            }
        };
        self.fetch_fail.remove(&seq);
        self.head_absent = None;
        self.peer_gone = false;
        if Some(session) != self.state.peer_session {
            return; // an older session, no longer wanted
        }
        self.enter(session, env.base);
        if seq <= self.delivered {
            return; // a duplicate
        }
        if seq > self.delivered + self.cfg.readahead {
            return;
        }
        self.buffered.insert(seq, env);
        let before = self.delivered;
        while let Some(env) = self.buffered.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            self.out.push(Output::Deliver(env));
        }
        if self.delivered > before {
            self.last_delivery = Some(now);
            self.fetch_more(now);
        }
    }

    /// The write of an `ack` covering everything committed, whatever is
    /// under way: for a party that stops right after its last delivery and
    /// will not see the results of earlier writes. `None` when nothing was
    /// received or no key is known.
    pub fn final_ack(&mut self) -> Option<Op> {
        let session = self.state.peer_session?;
        let env = Envelope {
            flags: 0,
            kind: Kind::Ack,
            sender: self.me.clone(),
            recipient: self.peer.clone(),
            session: self.state.session,
            seq: 0,
            base: 0,
            payload: AckBody { session, upto: self.state.committed }.encode(),
        };
        let env = self.seal(env)?;
        self.ack_written = self.state.committed;
        Some(Op::Put(self.ack_key_out.clone(), env.encode().into()))
    }

    fn write_ack(&mut self, _now: Duration) {
        if self.ack_put_pending || self.state.committed <= self.ack_written {
            return;
        }
        let Some(session) = self.state.peer_session else { return };
        let env = Envelope {
            flags: 0,
            kind: Kind::Ack,
            sender: self.me.clone(),
            recipient: self.peer.clone(),
            session: self.state.session,
            seq: 0,
            base: 0,
            payload: AckBody { session, upto: self.state.committed }.encode(),
        };
        let Some(env) = self.seal(env) else { return };
        self.ack_put_pending = true;
        self.ack_written = self.state.committed;
        self.out.push(Output::Op(Op::Put(self.ack_key_out.clone(), env.encode().into())));
    }
}

/// True for names a link may find in a channel directory.
pub fn is_protocol_name(name: &str) -> bool {
    is_valid_component(name) && (name == ACK_NAME || name == HEAD_NAME || parse_msg_name(name).is_some())
}

#[cfg(test)]
#[path = "mailbox_tests.rs"]
mod tests;

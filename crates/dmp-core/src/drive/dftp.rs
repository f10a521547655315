//! Runs the DFTP sender and receiver machines: store operations, local file
//! reads and writes, state files, change signals, timeouts and Ctrl-C.

use super::security::{KeyPurpose, PeerKey, Security};
use super::{
    Clock, MAX_CONCURRENT_OPS, OpRunner, Outage, Pace, Poller, SETTLE, Started, Woke, check_outbox, cleanup_link_dir,
    fresh_session,
};
use crate::id::PeerId;
use crate::keys::KeyNotice;
use crate::proto::dftp::{
    DftpReceiver, DftpSender, ReceiverState, RecvConfig, RecvOut, RecvPhase, SendConfig, SendOut, SenderState,
    WARN_AFTER_FAILS, finished_wait,
};
use crate::proto::dftp_msg::{Offer, check_file_name, parse_chunk_object_name};
use crate::state;
use crate::store::{Key, Store, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a transfer ended, other than by success.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The receiver refused the offer (or the sender's, reported back).
    #[error("refused: {0}")]
    Refused(String),
    /// Verification failed beyond retries, the peer aborted, a local file failed.
    #[error("{0}")]
    Failed(String),
    /// The receiver gave up (its `abort`, not resumable): over for good.
    #[error("{peer} gave up on the transfer: {reason}")]
    Aborted { peer: String, reason: String },
    /// No progress for the `--timeout`; `waiting_for` names what was due.
    #[error("timed out: no progress from {peer} for {} s, waiting for {waiting_for}", seconds(*.timeout))]
    TimedOut { peer: String, timeout: Duration, waiting_for: String },
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
    /// The store or a local path cannot be used at all (exit 2).
    #[error("{0}")]
    Setup(String),
}

/// A number of seconds as a user gives it: `2`, `0.5`, `1.25`.
pub fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 { d.as_secs().to_string() } else { d.as_secs_f64().to_string() }
}

/// The earlier of two deadlines, either of which may be unset.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When a driver must wake at the latest: the machine's `deadline`, or the
/// `--timeout` running out after the last progress, whichever comes first.
/// (Checked only at wakes, which may be seconds apart, the timeout would
/// otherwise fire late.)
fn wake_by(deadline: Option<Duration>, last_progress: Duration, timeout: Option<Duration>) -> Option<Duration> {
    earliest(deadline, timeout.map(|t| last_progress.saturating_add(t)))
}

impl From<StoreError> for TransferError {
    fn from(e: StoreError) -> Self {
        TransferError::Setup(e.to_string())
    }
}

/// Progress for a progress bar: bytes done of total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Settings of a send.
#[derive(Clone, Debug)]
pub struct SendOptions {
    pub file: PathBuf,
    pub cfg: SendConfig,
    /// Where to keep resume state (`None`: no resume).
    pub state_file: Option<PathBuf>,
    /// Give up when the receiver shows no progress for this long.
    pub timeout: Option<Duration>,
    /// Keys (`None`: plaintext, only with `--insecure-plaintext`).
    pub security: Option<Security>,
}

/// What a finished send reports.
#[derive(Clone, Debug, Serialize)]
pub struct SendReport {
    pub file: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub sha256: String,
    /// Bytes published by this run.
    pub sent_bytes: u64,
    /// Bytes already delivered when this run started (resumed transfers).
    pub resumed_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct SendStateFile {
    /// Identifies the file: size and modification time.
    file_id: String,
    machine: SenderState,
}

fn file_id(meta: &std::fs::Metadata) -> String {
    let mtime =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    format!("{}:{}", meta.len(), mtime)
}

/// Fails when the open file is no longer the one whose `file_id` was
/// taken at the start: a file rewritten in place during a transfer would
/// arrive as a mix of its old and new bytes that still verifies (the hash
/// covers what was read). Run again, the sender sees another `file_id` and
/// starts over with the new content.
fn check_unchanged(file: &File, fid: &str, path: &Path) -> Result<(), String> {
    let meta = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if file_id(&meta) == fid {
        return Ok(());
    }
    let when = meta.modified().map_or_else(|_| "at an unknown time".to_owned(), httpdate::fmt_http_date);
    Err(format!(
        "{} changed during the transfer (modified {when}); run dftp-send again to send it anew",
        path.display()
    ))
}

/// Removes every chunk object left in my outbox towards `peer` (a fresh
/// transfer starts clean).
async fn remove_stale_chunks(store: &dyn Store, dir: &Key) {
    if let Ok(names) = store.list(dir).await {
        for n in names.iter().filter(|n| parse_chunk_object_name(n).is_some()) {
            if let Ok(k) = dir.join(n) {
                let _ = store.delete(&k).await;
            }
        }
    }
}

/// Sends one file to `peer`, resuming an interrupted transfer of the same
/// file when a state file says so.
pub async fn send_file(
    store: &dyn Store,
    me: PeerId,
    peer: PeerId,
    opts: SendOptions,
    mut progress: impl FnMut(Progress),
    mut on_key: impl FnMut(KeyNotice),
    shutdown: impl Future<Output = ()>,
) -> Result<SendReport, TransferError> {
    let clock = Clock::start();
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let file = File::open(&opts.file)
        .map_err(|e| TransferError::Setup(format!("cannot open {}: {e}", opts.file.display())))?;
    let meta = file.metadata().map_err(|e| TransferError::Setup(format!("{}: {e}", opts.file.display())))?;
    if !meta.is_file() {
        return Err(TransferError::Setup(format!("{} is not a regular file", opts.file.display())));
    }
    let name = opts
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| TransferError::Setup(format!("{}: the file name is not UTF-8", opts.file.display())))?
        .to_owned();
    check_file_name(&name).map_err(|e| TransferError::Setup(format!("cannot send this file: {e}")))?;
    let fid = file_id(&meta);

    // Resume when the state matches this very file.
    let mut restored = None;
    if let Some(p) = &opts.state_file {
        match state::load::<SendStateFile>(p) {
            Ok(Some(s)) if s.file_id == fid && s.machine.offer.name == name => restored = Some(s.machine),
            Ok(Some(_)) => {
                tracing::warn!("{} changed since the interrupted transfer; starting over", opts.file.display());
                state::remove(p);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let mut cfg = opts.cfg.clone();
    cfg.link.secure = opts.security.is_some();
    match check_outbox(store, opts.security.as_ref(), &mut shutdown).await {
        Ok(Started::Ready) => {}
        Ok(Started::Interrupted) => return Err(TransferError::Interrupted),
        Err(e) => return Err(TransferError::Setup(e.to_string())),
    }
    let out_dir = Key::new([me.as_str(), peer.as_str()])?;
    let offer = match &restored {
        Some(st) => {
            if st.offer.block_size != cfg.block_size {
                tracing::info!("resuming with the interrupted transfer's block size {}", st.offer.block_size);
                cfg.block_size = st.offer.block_size;
            }
            tracing::info!(transfer = %st.offer.transfer, "resuming");
            st.offer.clone()
        }
        None => {
            remove_stale_chunks(store, &out_dir).await;
            Offer {
                transfer: format!("{:016x}", fastrand::u64(..)),
                name: name.clone(),
                size: meta.len(),
                block_size: cfg.block_size,
            }
        }
    };
    let total = offer.size;
    // Chunks written just before an interruption still take up quota: the
    // machine counts them from the listing of my outbox it asks for.
    let mut m = DftpSender::new(me, peer.clone(), cfg, offer, restored, fresh_session(), clock.now());
    let mut changes = store.changes(m.link().in_dir());
    let mut pace = Pace::for_transfer(store);
    let mut ops = OpRunner::new(store, MAX_CONCURRENT_OPS);
    let mut last_progress = (clock.now(), m.acked_bytes(), m.phase());
    let mut finished_early = Vec::new();
    m.wake(clock.now());
    let mut peer_key = PeerKey::default();
    let mut outage = Outage::default();
    let mut mode_warned = false;
    let outcome = loop {
        let mut ended = None;
        if opts.security.is_some() {
            peer_key.look(&mut ops, &peer, m.needs_key(), clock.now());
        }
        // Outputs in order: store operations are queued (and run
        // concurrently), everything else is done here and now, so that
        // `Persist` precedes every later output.
        loop {
            for res in finished_early.drain(..) {
                outage.observe(clock.now(), &res);
                m.on_result(clock.now(), res);
            }
            let outs = m.take_outputs();
            if outs.is_empty() {
                break;
            }
            for o in outs {
                match o {
                    SendOut::Op(op) => ops.push(op),
                    SendOut::Read { index, offset, len } => {
                        // Send the queued requests on their way first.
                        finished_early.extend(ops.kick());
                        // Room for the seal, so that encrypting in place never reallocates.
                        let buf = crate::buf::vec(len as usize + crate::crypto::SEAL_OVERHEAD);
                        let r = read_span(&file, offset, len, buf);
                        // Checked after the read, so that the last read's
                        // check also covers everything `done` will vouch for.
                        let r = match check_unchanged(&file, &fid, &opts.file) {
                            Ok(()) => r.map(crate::buf::freeze).map_err(|e| e.to_string()),
                            Err(changed) => Err(changed),
                        };
                        m.on_read(clock.now(), index, r);
                    }
                    SendOut::Persist => {
                        if let Some(p) = &opts.state_file {
                            let s = SendStateFile { file_id: fid.clone(), machine: m.snapshot() };
                            save_state(p, &s);
                        }
                    }
                    SendOut::Accepted => tracing::info!("{peer} accepted the offer"),
                    SendOut::Refused(r) => ended = Some(Err(TransferError::Refused(r))),
                    SendOut::Aborted(reason) => {
                        ended = Some(Err(TransferError::Aborted { peer: peer.to_string(), reason }))
                    }
                    SendOut::Failed(r) => {
                        // A stop notice for the receiver may be queued: on its way first.
                        finished_early.extend(ops.kick());
                        ended = Some(Err(TransferError::Failed(r)));
                    }
                    SendOut::PeerStopped(r) => {
                        tracing::warn!("{peer} stopped: {r}; waiting for it to resume (run dftp-receive again there)")
                    }
                    SendOut::Finished { sha256 } => ended = Some(Ok(sha256)),
                    SendOut::Rejected { key, reason } => {
                        log_rejected(&mut mode_warned, &key, &reason);
                        peer_key.rejected(clock.now(), &reason);
                    }
                    SendOut::StoreError(e) => tracing::debug!("{e} (retrying)"),
                }
            }
        }
        let now = clock.now();
        let cur = (m.acked_bytes(), m.phase());
        if (cur.0, cur.1) != (last_progress.1, last_progress.2) {
            last_progress = (now, cur.0, cur.1);
            pace.activity(now);
            progress(Progress { done: cur.0, total });
        }
        if let Some(e) = ended {
            break e;
        }
        if let Some(t) = opts.timeout {
            if now.saturating_sub(last_progress.0) >= t {
                // Tell the receiver, which would otherwise wait without
                // knowing why; the state stays for a later run.
                let (peer, waiting_for) = (peer.to_string(), m.waiting_for());
                m.stop(now, format!("it timed out after {} s without progress, waiting for {waiting_for}", seconds(t)));
                break Err(TransferError::TimedOut { peer, timeout: t, waiting_for });
            }
        }
        let deadline = wake_by(peer_key.deadline(m.deadline(), m.needs_key()), last_progress.0, opts.timeout);
        let until = pace.until(now, deadline, &ops);
        match ops.wait(&mut changes, &clock, until, &mut shutdown).await {
            Woke::Done(res) => {
                outage.observe(clock.now(), &res);
                m.on_result(clock.now(), res)
            }
            Woke::Key(k) => {
                let Some(sec) = &opts.security else { continue };
                match peer_key.looked(sec, k, clock.now(), &mut on_key) {
                    Ok(Some(c)) => m.set_crypto(clock.now(), c),
                    Ok(None) => {}
                    Err(e) => break Err(TransferError::Failed(e.to_string())),
                }
            }
            Woke::Wake => {
                pace.woke(&ops);
                peer_key.woke();
                m.wake(clock.now());
            }
            Woke::Shutdown => break Err(TransferError::Interrupted),
        }
    };
    if matches!(outcome, Err(TransferError::Failed(_) | TransferError::TimedOut { .. })) {
        // The stop notice for the receiver may wait behind a chunk message
        // being written (a link writes one message at a time): feed the
        // store's answers back until it is out, for at most SETTLE.
        let until = clock.now() + SETTLE;
        // Answers the loop above collected and did not feed back.
        for res in finished_early.drain(..) {
            outage.observe(clock.now(), &res);
            m.on_result(clock.now(), res);
        }
        // Secure, the notice waits for the receiver's key: looked up once
        // more at once (a receiver that has published none is not there
        // to be told, and is not waited for).
        if m.needs_key() {
            peer_key.woke();
        }
        while !m.link().all_written() && clock.now() < until {
            if opts.security.is_some() {
                peer_key.look(&mut ops, &peer, m.needs_key(), clock.now());
            }
            for o in m.take_outputs() {
                if let SendOut::Op(op) = o {
                    ops.push(op);
                }
            }
            match ops.wait(&mut changes, &clock, until, &mut shutdown).await {
                Woke::Done(res) => {
                    outage.observe(clock.now(), &res);
                    m.on_result(clock.now(), res)
                }
                Woke::Key(k) => {
                    let Some(sec) = &opts.security else { continue };
                    let resolve = k.purpose == KeyPurpose::Resolve;
                    match peer_key.looked(sec, k, clock.now(), &mut on_key) {
                        Ok(Some(c)) => m.set_crypto(clock.now(), c),
                        Ok(None) if resolve && m.needs_key() => break,
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
                Woke::Wake => {}
                Woke::Shutdown => break,
            }
        }
    }
    ops.settle(SETTLE).await;
    match outcome {
        Ok(sha256) => {
            progress(Progress { done: total, total });
            if let Some(op) = m.final_ack() {
                let _ = super::perform(store, op).await;
            }
            finish_sender_cleanup(store, m.link(), &mut changes).await;
            if let Some(p) = &opts.state_file {
                state::remove(p);
            }
            let seconds = started.elapsed().as_secs_f64();
            Ok(SendReport {
                file: name,
                bytes: total,
                seconds,
                // This run's bytes over this run's time (after a resume too).
                mb_per_s: m.sent_bytes as f64 / 1_048_576.0 / seconds.max(1e-9),
                sha256,
                sent_bytes: m.sent_bytes,
                resumed_bytes: m.resumed_bytes,
            })
        }
        Err(e @ (TransferError::Refused(_) | TransferError::Aborted { .. })) => {
            // Over for good: leave nothing behind.
            cleanup_link_dir(store, m.link().out_dir()).await;
            if let Some(p) = &opts.state_file {
                state::remove(p);
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Logs a file of the peer's that is not usable (yet): at debug level, as
/// most are still being written or synced; but the two parties disagreeing
/// on encryption is a setting to fix, which the user hears of (once).
fn log_rejected(warned: &mut bool, key: &Key, reason: &str) {
    if crate::proto::mailbox::is_mode_mismatch(reason) && !std::mem::replace(warned, true) {
        tracing::warn!("ignored {key}: {reason}");
    } else {
        tracing::debug!("not yet usable: {key}: {reason}");
    }
}

/// After `finished`: removes everything of mine but my `ack`, which tells
/// the receiver that its `finished` arrived; waits (at most 10 s, longer on
/// a slow store: [`finished_wait`]) for the receiver to remove its files,
/// then removes the `ack` too.
async fn finish_sender_cleanup(
    store: &dyn Store,
    link: &crate::proto::mailbox::Link,
    changes: &mut crate::store::Changes,
) {
    use crate::proto::mailbox::{ACK_NAME, HEAD_NAME};
    let out_dir = link.out_dir().clone();
    if let Ok(names) = store.list(&out_dir).await {
        for n in names.iter().filter(|n| n.as_str() != ACK_NAME) {
            if let Ok(k) = out_dir.join(n) {
                let _ = store.delete(&k).await;
            }
        }
    }
    if let Ok(head_in) = link.in_dir().join(HEAD_NAME) {
        let until = Instant::now() + finished_wait(Duration::from_secs(10), link.slowest_ack());
        let mut delay = Duration::from_millis(5);
        while Instant::now() < until {
            if let Ok(None) = store.get(&head_in, 4096).await {
                break;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
    cleanup_link_dir(store, &out_dir).await;
}

/// Settings of a receive.
#[derive(Clone, Debug)]
pub struct RecvOptions {
    pub dir: PathBuf,
    pub overwrite: bool,
    pub cfg: RecvConfig,
    pub state_file: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// After finishing, how long at least to wait for the sender to see
    /// it (longer on a slow store: [`finished_wait`]).
    pub linger: Duration,
    /// Keys (`None`: plaintext, only with `--insecure-plaintext`).
    pub security: Option<Security>,
}

/// What a finished receive reports.
#[derive(Clone, Debug, Serialize)]
pub struct RecvReport {
    pub file: String,
    pub path: String,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub sha256: String,
    /// Bytes already in the partial file from an earlier run (resumed).
    pub resumed_bytes: u64,
    /// Bytes written by this run: `mb_per_s` counts these over `seconds`.
    pub written_bytes: u64,
}

/// Reads `len` bytes at `offset` into `buf` (empty, with room for them)
/// without zeroing the buffer first: a short file is an error.
fn read_span(file: &File, offset: u64, len: u64, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file is shorter than it was"));
    }
    Ok(buf)
}

/// Saves a transfer's state. A failure (a state directory that is a file,
/// read-only, full) is a warning once per process, not once per chunk: a
/// transfer saves its state hundreds of times.
fn save_state<T: Serialize>(path: &Path, value: &T) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = state::save(path, value) {
        if WARNED.swap(true, Ordering::Relaxed) {
            tracing::debug!("{e}");
        } else {
            tracing::warn!("{e}; if stopped, this transfer cannot resume (warned once)");
        }
    }
}

/// The temporary file of a transfer in the target directory.
pub fn temp_path(dir: &Path, offer: &Offer) -> PathBuf {
    dir.join(crate::proto::dftp_msg::partial_file_name(&offer.transfer))
}

struct Target {
    dir: PathBuf,
    overwrite: bool,
    file: Option<File>,
    offer: Option<Offer>,
    /// What writes into `file`; out while a write runs.
    sink: Option<Sink>,
    /// The write running on a thread of the blocking pool: it gives the
    /// sink back with the chunk's index and the result.
    writing: Option<tokio::task::JoinHandle<WriteDone>>,
}

/// The sink, the chunk's index and the result of a write.
type WriteDone = (Sink, u64, Result<(), String>);

/// Writes chunks into the temporary file. A write runs on a thread of its
/// own while the driver goes on fetching and opening the next chunks: with
/// direct I/O a write waits for the disk (0.8 s of a 1.8 s, 1 GiB transfer
/// here, measured with strace).
struct Sink {
    file: File,
    /// The same file opened for direct I/O, where the system offers it.
    direct: Option<DirectWriter>,
    /// Bytes written through the page cache since the last background
    /// flush started.
    unflushed: u64,
    /// A background `fdatasync` of the temporary file: it writes the data
    /// to disk while the transfer goes on, so the final fsync has little
    /// left to do (on its own it took 0.12 s of a 0.7 s, 256 MiB transfer).
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// Alignment of direct I/O: of the buffer, the file offset and the length
/// (4096 covers the logical block size of every common disk).
const DIRECT_ALIGN: usize = 4096;

/// Writes of whole aligned blocks that bypass the page cache (`O_DIRECT`).
///
/// Writing a received file through the page cache fills memory the kernel
/// takes fresh from its free lists, which on these virtual machines costs
/// a fault in the host for every page (see [`crate::buf`]), and then the
/// final fsync still has to write it all out. Measured here for 1 GiB:
/// `dd oflag=direct` 0.59-0.67 s with 0.16-0.19 s of system time,
/// buffered `dd conv=fsync` 1.31-3.16 s with 0.97-2.76 s; the receiver's
/// copy into the page cache was 63 % of its samples. Chunks are aligned
/// (block sizes are multiples of 4 KiB by default); the last, short chunk
/// and any unaligned write go through the page cache as before.
struct DirectWriter {
    file: File,
    /// An aligned copy of a chunk whose buffer is not aligned.
    scratch: Vec<u8>,
}

impl DirectWriter {
    /// A second handle on `same_as` (at `path`) for direct writes; `None`
    /// where the system or file system does not offer direct I/O.
    #[cfg(target_os = "linux")]
    fn open(path: &Path, same_as: &File) -> Option<DirectWriter> {
        use std::os::unix::fs::MetadataExt;
        let file =
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW).open(path).ok()?;
        // The very file opened before, not one put in its place meanwhile.
        let (a, b) = (file.metadata().ok()?, same_as.metadata().ok()?);
        (a.dev() == b.dev() && a.ino() == b.ino()).then(|| DirectWriter { file, scratch: Vec::new() })
    }

    #[cfg(not(target_os = "linux"))]
    fn open(_path: &Path, _same_as: &File) -> Option<DirectWriter> {
        None
    }

    /// Writes `data` at `offset` when both are aligned (`Ok(true)`);
    /// `Ok(false)` when this write has to go through the page cache.
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        const A: usize = DIRECT_ALIGN;
        if data.is_empty() || offset % A as u64 != 0 || data.len() % A != 0 {
            return Ok(false);
        }
        let buf: &[u8] = if data.as_ptr() as usize % A == 0 {
            data
        } else {
            if self.scratch.len() < data.len() + A {
                self.scratch = vec![0; data.len() + A];
            }
            let at = self.scratch.as_ptr().align_offset(A);
            let s = &mut self.scratch[at..at + data.len()];
            s.copy_from_slice(data);
            s
        };
        self.file.write_all_at(buf, offset)?;
        Ok(true)
    }
}

/// Start a background flush after this many bytes written.
const FLUSH_EVERY: u64 = 32 << 20;

impl Sink {
    fn new(file: File, path: &Path) -> Sink {
        let direct = DirectWriter::open(path, &file);
        let how = if direct.is_some() { "direct I/O for aligned chunks" } else { "the page cache only" };
        tracing::debug!("writing {} with {how}", path.display());
        Sink { file, direct, unflushed: 0, flusher: None }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if let Some(d) = &mut self.direct {
            match d.write(offset, data) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("direct I/O refused ({e}); writing through the page cache from now on");
                    self.direct = None;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let f = &self.file;
        f.write_all_at(data, offset).map_err(|e| e.to_string())?;
        self.unflushed += data.len() as u64;
        if self.unflushed >= FLUSH_EVERY && self.flusher.as_ref().is_none_or(|h| h.is_finished()) {
            if let Ok(clone) = f.try_clone() {
                self.unflushed = 0;
                // Errors show again, and fail the transfer, in the final fsync.
                self.flusher = Some(std::thread::spawn(move || drop(clone.sync_data())));
            }
        }
        Ok(())
    }

    /// Waits for the background flush.
    fn finish(mut self) {
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}

impl Target {
    /// Starts writing chunk `index` at `offset`; `Err` when no write can
    /// start (the answer is then due at once).
    fn start_write(&mut self, index: u64, offset: u64, data: Bytes) -> Result<(), String> {
        let mut sink = self.sink.take().ok_or("no open file")?;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let r = sink.write(offset, &data);
            (sink, index, r)
        }));
        Ok(())
    }

    /// The end of the write [`Target::start_write`] started: the chunk's
    /// index and the result.
    fn written(&mut self, r: Result<WriteDone, tokio::task::JoinError>) -> Result<(u64, Result<(), String>), String> {
        self.writing = None;
        match r {
            Ok((sink, index, res)) => {
                self.sink = Some(sink);
                Ok((index, res))
            }
            // A panic in a write: no more writes (the sink is gone).
            Err(e) => Err(format!("writing the file: {e}")),
        }
    }

    /// Closes the file (a running write goes on, but its end is ignored).
    fn close(&mut self) {
        self.file = None;
        self.sink = None;
        self.writing = None;
    }

    fn prepare(&mut self, offer: &Offer, resume: bool) -> Result<(), String> {
        let final_path = self.dir.join(&offer.name);
        let tmp = temp_path(&self.dir, offer);
        if !resume {
            match std::fs::symlink_metadata(&final_path) {
                Ok(m) if m.is_dir() => return Err(format!("{} exists and is a directory", offer.name)),
                Ok(_) if !self.overwrite => {
                    return Err(format!("{} already exists on the receiving side (use --overwrite)", offer.name));
                }
                _ => {}
            }
            let have_tmp = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            if let Ok(avail) = fs4::available_space(&self.dir) {
                let need = offer.size.saturating_sub(have_tmp);
                if avail < need {
                    return Err(format!("not enough free space: {} needs {need} bytes, {avail} available", offer.name));
                }
            }
            // A new file of our own, never whatever is under the name: a
            // symlink or a hard link planted there would have us truncate
            // and write a file outside DIR (the name is ours: `.dftp-`).
            match std::fs::remove_file(&tmp) {
                Ok(()) => tracing::debug!("removed {} left from before", tmp.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot create {}: {e}", tmp.display())),
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            self.file = Some(f);
        } else {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&tmp)
                .map_err(|e| format!("the partial file {} is gone ({e}); start both sides again", tmp.display()))?;
            // Only a plain file with no other name than the finished file's
            // (a run stopped between linking it into place and removing
            // the partial name): a hard link to a file elsewhere would be
            // written, and a FIFO would hang.
            let meta = f.metadata().map_err(|e| format!("{}: {e}", tmp.display()))?;
            let dest = self.dir.join(&offer.name);
            if !meta.is_file() || (meta.nlink() > 1 && !(meta.nlink() == 2 && same_file(&tmp, &dest))) {
                return Err(format!(
                    "the partial file {} is not a plain file of its own; start both sides again",
                    tmp.display()
                ));
            }
            self.file = Some(f);
        }
        let clone = self.file.as_ref().map(File::try_clone).transpose();
        let clone = clone.map_err(|e| format!("{}: {e}", tmp.display()))?;
        self.sink = clone.map(|f| Sink::new(f, &tmp));
        self.offer = Some(offer.clone());
        Ok(())
    }

    fn finalize(&mut self) -> Result<PathBuf, String> {
        let offer = self.offer.clone().ok_or("no transfer")?;
        let f = self.file.take().ok_or("no open file")?;
        if let Some(sink) = self.sink.take() {
            sink.finish();
        }
        f.set_len(offer.size).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        let tmp = temp_path(&self.dir, &offer);
        // The bytes verified are those written into `f`: link into place
        // only that very file, not one put under its name (or a DIR
        // swapped for another) meanwhile.
        let ours = match (f.metadata(), std::fs::symlink_metadata(&tmp)) {
            (Ok(a), Ok(b)) => b.is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        drop(f);
        if !ours {
            return Err(format!("the partial file {} was replaced during the transfer; not stored", tmp.display()));
        }
        let dest = self.dir.join(&offer.name);
        if dest == tmp {
            // (`check_file_name` refuses such a name; never report as
            // stored a file that the clean-up below would remove.)
            return Err(format!("{} is the name of the partial file itself; not stored", offer.name));
        }
        if !self.overwrite {
            // Never replace a file that appeared meanwhile: link fails if it exists.
            match std::fs::hard_link(&tmp, &dest) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&tmp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // The link was made by a run that stopped before it
                    // removed the partial file: the same file under two
                    // names, done. (One name only, as on a file system that
                    // folds case: the partial file itself, kept.)
                    if !same_file(&tmp, &dest) {
                        return Err(format!("{} appeared meanwhile; not replaced (use --overwrite)", offer.name));
                    }
                    if links(&tmp) < 2 {
                        return Err(format!("{} is the name of the partial file itself; not stored", offer.name));
                    }
                    let _ = std::fs::remove_file(&tmp);
                }
                // No hard links here (exFAT, FAT, some network file
                // systems): a rename, which must not replace either.
                Err(_) => rename_noreplace(&tmp, &dest, &offer.name)?,
            }
        } else {
            std::fs::rename(&tmp, &dest).map_err(|e| format!("rename: {e}"))?;
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }
}

/// Renames `from` to `to` only if no file is at `to` (Linux `renameat2`
/// with `RENAME_NOREPLACE`). Where the file system cannot do that, `to` is
/// checked just before a plain rename: a file appearing in between is the
/// only case left.
fn rename_noreplace(from: &Path, to: &Path, name: &str) -> Result<(), String> {
    let appeared = || format!("{name} appeared meanwhile; not replaced (use --overwrite)");
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e) if e == Errno::EXIST => return Err(appeared()),
            Err(e) if e == Errno::INVAL || e == Errno::NOSYS => {}
            Err(e) => return Err(format!("rename: {e}")),
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(appeared());
    }
    std::fs::rename(from, to).map_err(|e| format!("rename: {e}"))
}

/// True when `a` and `b` are names of one file (hard links), neither a
/// symbolic link.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.is_file() && y.is_file() && x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The number of names (hard links) of the file at `p`; 0 when it cannot
/// be read.
fn links(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).map_or(0, |m| m.nlink())
}

/// Receives one file from `peer` into `opts.dir`.
///
/// A run whose state says that an earlier run received a file, reported
/// it and left its files for a sender that had not acknowledged it yet
/// ([`ReceiverState::reported`]), first finishes that clean-up (the sender
/// acknowledges or is gone), then receives a new file: the user runs the
/// tool again for the next file, not for the last one once more.
pub async fn receive_file(
    store: &dyn Store,
    me: PeerId,
    peer: PeerId,
    opts: RecvOptions,
    mut progress: impl FnMut(Progress, Option<&Offer>),
    mut on_key: impl FnMut(KeyNotice),
    shutdown: impl Future<Output = ()>,
) -> Result<RecvReport, TransferError> {
    // Two runs may watch it: it stays signalled once it was.
    let mut shutdown = Latch { inner: std::pin::pin!(shutdown), fired: false };
    match std::fs::metadata(&opts.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(TransferError::Setup(format!("{} is not a directory", opts.dir.display()))),
        Err(e) => return Err(TransferError::Setup(format!("{}: {e}", opts.dir.display()))),
    }
    let mut restored = None;
    if let Some(p) = &opts.state_file {
        match state::load::<ReceiverState>(p) {
            Ok(s) => restored = s,
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let earlier =
        restored.as_ref().filter(|s| s.phase == RecvPhase::Finished && s.reported).and_then(|s| s.offer.clone());
    let Some(earlier) = earlier else {
        let run = receive_run(store, me, peer, &opts, &mut progress, &mut on_key, &mut shutdown, restored, false);
        return run.await.map(|(report, _)| report);
    };
    tracing::info!("first cleaning up after the earlier transfer of {} from {peer}", earlier.name);
    let mut quiet = |_: Progress, _: Option<&Offer>| {};
    let run =
        receive_run(store, me.clone(), peer.clone(), &opts, &mut quiet, &mut on_key, &mut shutdown, restored, true);
    let cleaned = run.await?.1;
    if shutdown.fired {
        return Err(TransferError::Interrupted);
    }
    if !cleaned {
        return Err(TransferError::Failed(format!(
            "{peer} has not acknowledged the earlier transfer of {} yet, nor gone away; its files stay in the \
             store for it (run dftp-receive again later)",
            earlier.name
        )));
    }
    tracing::info!("cleaned up after the earlier transfer of {}; waiting for a new file", earlier.name);
    let run = receive_run(store, me, peer, &opts, &mut progress, &mut on_key, &mut shutdown, None, false);
    run.await.map(|(report, _)| report)
}

/// A shutdown future that, once it has completed, completes again at
/// every poll (an `async` block must not be polled after it completed).
struct Latch<F> {
    inner: F,
    fired: bool,
}

impl<F: Future<Output = ()> + Unpin> Future for Latch<F> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if !self.fired && std::pin::Pin::new(&mut self.inner).poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        self.fired = true;
        std::task::Poll::Ready(())
    }
}

/// One run of [`receive_file`] from `restored`: the report, and whether
/// everything of the transfer is cleaned up (else the state is kept, with
/// [`ReceiverState::reported`] when the file is in place). `cleanup_only`:
/// restored from such a state, so no warning of its own when the clean-up
/// is still not possible.
#[allow(clippy::too_many_arguments)]
async fn receive_run<S: Future<Output = ()> + Unpin>(
    store: &dyn Store,
    me: PeerId,
    peer: PeerId,
    opts: &RecvOptions,
    progress: &mut dyn FnMut(Progress, Option<&Offer>),
    mut on_key: &mut dyn FnMut(KeyNotice),
    mut shutdown: &mut S,
    restored: Option<ReceiverState>,
    cleanup_only: bool,
) -> Result<(RecvReport, bool), TransferError> {
    let clock = Clock::start();
    let started = Instant::now();
    let mut target =
        Target { dir: opts.dir.clone(), overwrite: opts.overwrite, file: None, offer: None, sink: None, writing: None };
    let mut cfg = opts.cfg.clone();
    cfg.link.secure = opts.security.is_some();
    match check_outbox(store, opts.security.as_ref(), &mut shutdown).await {
        Ok(Started::Ready) => {}
        Ok(Started::Interrupted) => return Err(TransferError::Interrupted),
        Err(e) => return Err(TransferError::Setup(e.to_string())),
    }
    let mut m = DftpReceiver::new(me, peer.clone(), cfg, restored, fresh_session(), clock.now());
    let mut changes = store.changes(m.link().in_dir());
    let mut pace = Pace::for_transfer(store);
    let mut ops = OpRunner::new(store, MAX_CONCURRENT_OPS);
    let mut last = (clock.now(), 0u64, m.phase());
    let mut final_path: Option<PathBuf> = None;
    let mut finished_early = Vec::new();
    m.wake(clock.now());
    let mut peer_key = PeerKey::default();
    let mut outage = Outage::default();
    let mut mode_warned = false;
    let outcome: Result<String, TransferError> = loop {
        let mut ended = None;
        if opts.security.is_some() {
            peer_key.look(&mut ops, &peer, m.needs_key(), clock.now());
        }
        // As in `send_file`: store operations queued, the rest done in order.
        loop {
            for res in finished_early.drain(..) {
                outage.observe(clock.now(), &res);
                m.on_result(clock.now(), res);
            }
            let outs = m.take_outputs();
            if outs.is_empty() {
                break;
            }
            for o in outs {
                if !matches!(o, RecvOut::Op(_) | RecvOut::Persist) {
                    // Send the queued requests on their way before local file work.
                    finished_early.extend(ops.kick());
                }
                let now = clock.now();
                match o {
                    RecvOut::Op(op) => ops.push(op),
                    RecvOut::Persist => {
                        if let Some(p) = &opts.state_file {
                            save_state(p, &m.snapshot());
                        }
                    }
                    RecvOut::Prepare { offer, resume } => {
                        let r = target.prepare(&offer, resume);
                        m.on_prepared(now, r);
                    }
                    RecvOut::Write { index, offset, data } => {
                        if let Err(e) = target.start_write(index, offset, data) {
                            m.on_written(now, index, Err(e));
                        }
                    }
                    RecvOut::ReadBack { offset, len } => {
                        let r = match &target.file {
                            Some(f) => {
                                let mut buf = vec![0u8; len as usize];
                                f.read_exact_at(&mut buf, offset).map(|()| Bytes::from(buf)).map_err(|e| e.to_string())
                            }
                            None => Err("no open file".into()),
                        };
                        m.on_read_back(now, r);
                    }
                    RecvOut::Finalize { .. } => {
                        let r = target.finalize().map(|p| {
                            final_path = Some(p);
                        });
                        m.on_finalized(now, r);
                    }
                    RecvOut::Discard { offer } => {
                        target.close();
                        let _ = std::fs::remove_file(temp_path(&opts.dir, &offer));
                    }
                    RecvOut::Refused(r) => ended = Some(Err(TransferError::Refused(r))),
                    RecvOut::Failed(r) | RecvOut::GaveUp(r) => ended = Some(Err(TransferError::Failed(r))),
                    RecvOut::KeepsFailing { key, reason } => {
                        tracing::warn!("{key} failed verification {WARN_AFTER_FAILS} times ({reason}); still retrying")
                    }
                    RecvOut::PeerStopped(r) => {
                        tracing::warn!("{peer} stopped: {r}; waiting for it to resume (run dftp-send again there)")
                    }
                    RecvOut::Finished { sha256 } => ended = Some(Ok(sha256)),
                    RecvOut::Rejected { key, reason } => {
                        log_rejected(&mut mode_warned, &key, &reason);
                        peer_key.rejected(clock.now(), &reason);
                    }
                    RecvOut::StoreError(e) => tracing::debug!("{e} (retrying)"),
                }
            }
        }
        let now = clock.now();
        let cur = (m.done_bytes(), m.phase());
        if cur != (last.1, last.2) {
            last = (now, cur.0, cur.1);
            pace.activity(now);
        }
        if let Some(o) = m.offer() {
            progress(Progress { done: cur.0, total: o.size }, Some(o));
        }
        if let Some(e) = ended {
            break e;
        }
        if let Some(t) = opts.timeout {
            if now.saturating_sub(last.0) >= t {
                // Tell the sender, which would otherwise wait without knowing
                // why; the partial file and the state stay for a later run.
                let (peer, waiting_for) = (peer.to_string(), m.waiting_for());
                m.stop(now, format!("it timed out after {} s without progress, waiting for {waiting_for}", seconds(t)));
                break Err(TransferError::TimedOut { peer, timeout: t, waiting_for });
            }
        }
        let deadline = wake_by(peer_key.deadline(m.deadline(), m.needs_key()), last.0, opts.timeout);
        let until = pace.until(now, deadline, &ops);
        let woke = match target.writing.as_mut() {
            Some(w) => tokio::select! {
                biased;
                r = w => Err(r),
                woke = ops.wait(&mut changes, &clock, until, &mut shutdown) => Ok(woke),
            },
            None => Ok(ops.wait(&mut changes, &clock, until, &mut shutdown).await),
        };
        let woke = match woke {
            Ok(woke) => woke,
            Err(r) => {
                match target.written(r) {
                    Ok((index, res)) => m.on_written(clock.now(), index, res),
                    Err(e) => break Err(TransferError::Failed(e)),
                }
                continue;
            }
        };
        match woke {
            Woke::Done(res) => {
                outage.observe(clock.now(), &res);
                m.on_result(clock.now(), res)
            }
            Woke::Key(k) => {
                let Some(sec) = &opts.security else { continue };
                match peer_key.looked(sec, k, clock.now(), &mut on_key) {
                    Ok(Some(c)) => m.set_crypto(clock.now(), c),
                    Ok(None) => {}
                    Err(e) => break Err(TransferError::Failed(e.to_string())),
                }
            }
            Woke::Wake => {
                pace.woke(&ops);
                peer_key.woke();
                m.wake(clock.now());
            }
            Woke::Shutdown => break Err(TransferError::Interrupted),
        }
    };
    // Stopped with an `abort` for the sender: for good (gave up), or until
    // a later run (a local failure, the timeout).
    let told_sender = m.gave_up() || matches!(outcome, Err(TransferError::Failed(_) | TransferError::TimedOut { .. }));
    if told_sender {
        // The abort for the sender may wait behind other messages (a link
        // writes one at a time): feed the store's answers back until it is
        // out, for at most SETTLE. Given up: the transfer is over here too.
        let until = clock.now() + SETTLE;
        for res in finished_early.drain(..) {
            m.on_result(clock.now(), res);
        }
        loop {
            // (A resumed receiver may give up before it has the key that
            // seals its abort: the look-up goes on.)
            if opts.security.is_some() {
                peer_key.look(&mut ops, &peer, m.needs_key(), clock.now());
            }
            for o in m.take_outputs() {
                match o {
                    RecvOut::Op(op) => ops.push(op),
                    // Kept for a later run (not given up): saved as it goes.
                    RecvOut::Persist if !m.gave_up() => {
                        if let Some(p) = &opts.state_file {
                            save_state(p, &m.snapshot());
                        }
                    }
                    _ => {}
                }
            }
            if m.link().all_written() || clock.now() >= until {
                break;
            }
            let at = peer_key.deadline(m.deadline(), m.needs_key()).map_or(until, |d| d.min(until));
            match ops.wait(&mut changes, &clock, at, &mut shutdown).await {
                Woke::Done(res) => {
                    outage.observe(clock.now(), &res);
                    m.on_result(clock.now(), res)
                }
                Woke::Key(k) => {
                    if let Some(sec) = &opts.security {
                        let resolve = k.purpose == KeyPurpose::Resolve;
                        match peer_key.looked(sec, k, clock.now(), &mut on_key) {
                            Ok(Some(c)) => m.set_crypto(clock.now(), c),
                            // No key published: no sender there to be told.
                            Ok(None) if resolve && m.needs_key() => break,
                            _ => {}
                        }
                    }
                }
                Woke::Wake => {
                    peer_key.woke();
                    m.wake(clock.now());
                }
                Woke::Shutdown => break,
            }
        }
        if m.needs_key() && !m.link().all_written() {
            tracing::warn!("could not tell {peer} why this side stopped (it has published no key to seal the message)");
        } else if !m.link().all_written() {
            tracing::warn!("could not tell {peer} why this side stopped (the store did not take the message in time)");
        }
        ops.settle(SETTLE).await;
        if m.gave_up() {
            target.close();
            if let Some(o) = m.offer() {
                let _ = std::fs::remove_file(temp_path(&opts.dir, o));
            }
            if let Some(p) = &opts.state_file {
                state::remove(p);
            }
        }
    }
    let mut cleaned = false;
    let over_for_good = matches!(outcome, Ok(_) | Err(TransferError::Refused(_)));
    if over_for_good {
        // Let the sender read our last message (finished or refused), then
        // leave nothing behind; but if the sender has not read it yet (a slow
        // sync), leave it for a sender that is still waiting.
        let keys = (opts.security.as_ref(), &mut peer_key, &mut on_key as &mut dyn FnMut(KeyNotice));
        let state_file = opts.state_file.as_deref();
        let wait = finished_wait(opts.linger, m.link().slowest_ack());
        linger(&mut ops, &mut m, &clock, &mut changes, wait, state_file, keys, &mut shutdown).await;
        ops.settle(SETTLE).await;
        if m.last_message_acked() || m.link().peer_gone() {
            cleanup_link_dir(store, m.link().out_dir()).await;
            // Last: a run that stops before this point finds the state
            // and finishes the clean-up.
            if let Some(p) = &opts.state_file {
                state::remove(p);
            }
            cleaned = true;
        } else if outcome.is_ok() {
            // The file is verified and in place; the sender has not read
            // `finished` yet (a slow sync, or it is stopped): leave it there,
            // and the state, for the next run to finish the clean-up before
            // it receives a new file.
            if let Some(p) = &opts.state_file {
                save_state(p, &ReceiverState { reported: true, ..m.snapshot() });
            }
            if !cleanup_only {
                tracing::warn!(
                    "{peer} has neither acknowledged that the file arrived nor gone away within {} s; \
                     leaving my files in the store for it (the next dftp-receive from {peer} cleans up first)",
                    wait.as_secs()
                );
            }
        } else if let Some(p) = &opts.state_file {
            state::remove(p);
        }
    }
    let sha256 = outcome?;
    let offer = m.offer().cloned().expect("finished transfers have an offer");
    let seconds = started.elapsed().as_secs_f64();
    let report = RecvReport {
        file: offer.name.clone(),
        path: final_path.unwrap_or_else(|| opts.dir.join(&offer.name)).display().to_string(),
        bytes: offer.size,
        seconds,
        mb_per_s: m.written_bytes as f64 / 1_048_576.0 / seconds.max(1e-9),
        sha256,
        resumed_bytes: m.resumed_bytes,
        written_bytes: m.written_bytes,
    };
    Ok((report, cleaned))
}

/// Keeps the link going until our messages are acknowledged or the peer
/// has cleaned up, at most `max`. The link's state is still saved when it
/// asks: a message number it recovered must be on disk before an
/// acknowledged message is deleted, or a restart would use it again.
/// A secure link opens nothing without the peer's key: a receiver restarted
/// after `finished` lingers at once, so the look-up goes on here.
#[allow(clippy::too_many_arguments)]
async fn linger(
    ops: &mut OpRunner<'_>,
    m: &mut DftpReceiver,
    clock: &Clock,
    changes: &mut crate::store::Changes,
    max: Duration,
    state_file: Option<&std::path::Path>,
    keys: (Option<&Security>, &mut PeerKey, &mut dyn FnMut(KeyNotice)),
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) {
    let (security, peer_key, on_key) = keys;
    let peer = m.link().peer().clone();
    let until = clock.now() + max;
    let mut pace = Pace::new(Poller::new(Duration::from_millis(20), Duration::from_millis(500)), Duration::ZERO);
    loop {
        if security.is_some() {
            peer_key.look(ops, &peer, m.needs_key(), clock.now());
        }
        for o in m.take_outputs() {
            match o {
                RecvOut::Op(op) => ops.push(op),
                RecvOut::Persist => {
                    if let Some(p) = state_file {
                        save_state(p, &m.snapshot());
                    }
                }
                _ => {}
            }
        }
        if m.last_message_acked() || m.link().peer_gone() || clock.now() >= until {
            return;
        }
        let deadline = peer_key.deadline(m.deadline(), m.needs_key());
        let at = pace.until(clock.now(), Some(deadline.map_or(until, |d| d.min(until))), ops);
        match ops.wait(changes, clock, at, shutdown).await {
            Woke::Done(res) => m.on_result(clock.now(), res),
            Woke::Wake => {
                pace.woke(ops);
                peer_key.woke();
                m.wake(clock.now());
            }
            Woke::Key(k) => {
                if let Some(sec) = security {
                    match peer_key.looked(sec, k, clock.now(), on_key) {
                        Ok(Some(c)) => m.set_crypto(clock.now(), c),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("{e}");
                            return;
                        }
                    }
                }
            }
            Woke::Shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path) -> Target {
        Target { dir: dir.to_owned(), overwrite: false, file: None, offer: None, sink: None, writing: None }
    }

    /// A receiver killed between linking the finished file into place and
    /// removing its partial file verifies the file again when restarted,
    /// and then finishes: the name is a link to the very same file.
    #[test]
    fn finalize_again_after_a_crash_between_link_and_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let offer = Offer { transfer: "00000000000000aa".into(), name: "f.bin".into(), size: 5, block_size: 4096 };
        let tmp = temp_path(dir.path(), &offer);
        let dest = dir.path().join("f.bin");
        let mut t = target(dir.path());
        t.prepare(&offer, false).unwrap();
        t.file.as_ref().unwrap().write_all_at(b"hello", 0).unwrap();
        std::fs::hard_link(&tmp, &dest).unwrap(); // ... and then the crash
        let mut t = target(dir.path());
        t.prepare(&offer, true).unwrap();
        assert_eq!(t.finalize().unwrap(), dest);
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(!tmp.exists(), "the partial file is gone");
        // A different file under the name is still never replaced.
        let offer = Offer { transfer: "00000000000000bb".into(), ..offer };
        std::fs::write(&dest, b"other").unwrap();
        let mut t = Target { overwrite: false, ..target(dir.path()) };
        std::fs::write(temp_path(dir.path(), &offer), b"hello").unwrap();
        t.prepare(&offer, true).unwrap();
        assert!(t.finalize().unwrap_err().contains("appeared meanwhile"));
        assert_eq!(std::fs::read(&dest).unwrap(), b"other");
    }

    /// The rename that stands in for a hard link where the file system has
    /// none never replaces a file at the final name, nor a symbolic link
    /// there (before, a plain rename replaced it without --overwrite).
    #[test]
    fn the_rename_without_hard_links_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join(".dftp-x.part"), dir.path().join("f.bin"));
        std::fs::write(&from, b"new").unwrap();
        std::fs::write(&to, b"theirs").unwrap();
        let e = rename_noreplace(&from, &to, "f.bin").unwrap_err();
        assert!(e.contains("f.bin appeared meanwhile"), "{e}");
        assert_eq!(std::fs::read(&to).unwrap(), b"theirs");
        std::fs::remove_file(&to).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &to).unwrap();
        assert!(rename_noreplace(&from, &to, "f.bin").is_err());
        std::fs::remove_file(&to).unwrap();
        rename_noreplace(&from, &to, "f.bin").unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        assert!(!from.exists());
    }

    /// A name planted under the partial file's (a hard link or a symlink
    /// to a file outside DIR) is never written through: a new transfer
    /// makes a file of its own; a resumed one refuses it.
    #[test]
    fn a_planted_partial_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
        let victim = outside.path().join("precious");
        let offer = Offer { transfer: "00000000000000aa".into(), name: "f.bin".into(), size: 5, block_size: 4096 };
        let tmp = temp_path(dir.path(), &offer);
        for plant in
            [|v: &Path, t: &Path| std::fs::hard_link(v, t), |v: &Path, t: &Path| std::os::unix::fs::symlink(v, t)]
        {
            std::fs::write(&victim, b"precious").unwrap();
            plant(&victim, &tmp).unwrap();
            let mut t = target(dir.path());
            assert!(t.prepare(&offer, true).unwrap_err().contains("partial file"));
            t.prepare(&offer, false).unwrap();
            t.file.as_ref().unwrap().write_all_at(b"hello", 0).unwrap();
            assert_eq!(t.finalize().unwrap(), dir.path().join("f.bin"));
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the file outside DIR is untouched");
            assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), b"hello");
            std::fs::remove_file(dir.path().join("f.bin")).unwrap();
        }
    }

    /// A partial file replaced during the transfer (or DIR swapped for
    /// another directory) is not linked into place: its bytes are not the
    /// ones verified.
    #[test]
    fn a_partial_file_replaced_meanwhile_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let offer = Offer { transfer: "00000000000000aa".into(), name: "f.bin".into(), size: 5, block_size: 4096 };
        let tmp = temp_path(dir.path(), &offer);
        let mut t = target(dir.path());
        t.prepare(&offer, false).unwrap();
        t.file.as_ref().unwrap().write_all_at(b"hello", 0).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"evil!").unwrap();
        std::fs::rename(&other, &tmp).unwrap();
        assert!(t.finalize().unwrap_err().contains("replaced during the transfer"));
        assert!(!dir.path().join("f.bin").exists(), "nothing stored under the name");
    }

    /// A timeout is shown as given, whole seconds without a fraction (as
    /// the existing messages, "for 2 s").
    #[test]
    fn seconds_are_shown_as_given() {
        for (given, shown) in [(2.0, "2"), (0.5, "0.5"), (1.25, "1.25"), (0.001, "0.001"), (90.0, "90"), (0.1, "0.1")] {
            assert_eq!(seconds(Duration::from_secs_f64(given)), shown);
        }
        let e = TransferError::TimedOut {
            peer: "bob".into(),
            timeout: Duration::from_millis(500),
            waiting_for: "the offer".into(),
        };
        assert_eq!(e.to_string(), "timed out: no progress from bob for 0.5 s, waiting for the offer");
    }

    /// The driver wakes when the timeout runs out, not only at the
    /// machine's own deadline or the next poll (seconds later).
    #[test]
    fn the_wait_ends_when_the_timeout_runs_out() {
        let s = Duration::from_secs;
        assert_eq!(wake_by(Some(s(5)), s(10), Some(s(1))), Some(s(5)));
        assert_eq!(wake_by(Some(s(30)), s(10), Some(s(1))), Some(s(11)));
        assert_eq!(wake_by(None, s(10), Some(Duration::from_millis(500))), Some(Duration::from_millis(10_500)));
        assert_eq!(wake_by(Some(s(30)), s(10), None), Some(s(30)));
        assert_eq!(wake_by(None, s(10), None), None);
    }

    /// A file rewritten in place (same size, new modification time) is
    /// no longer the file being sent; an untouched one is.
    #[test]
    fn a_file_changed_in_place_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"hello").unwrap();
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        File::options().write(true).open(&path).unwrap().set_modified(t0).unwrap();
        let file = File::open(&path).unwrap();
        let fid = file_id(&file.metadata().unwrap());
        assert_eq!(check_unchanged(&file, &fid, &path), Ok(()));
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"J", 0).unwrap();
        // (Set apart explicitly: a coarse clock could leave it as it was.)
        File::options().write(true).open(&path).unwrap().set_modified(t0 + Duration::from_nanos(1)).unwrap();
        let e = check_unchanged(&file, &fid, &path).unwrap_err();
        let want = format!(
            "{} changed during the transfer (modified Tue, 14 Nov 2023 22:13:20 GMT); run dftp-send again to send it anew",
            path.display()
        );
        assert_eq!(e, want);
    }

    /// An offer named like the partial file (which `check_file_name`
    /// refuses) never finishes as stored: the only copy stays, and with
    /// `--overwrite` too.
    #[test]
    fn finalize_refuses_the_partial_files_own_name() {
        for overwrite in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let transfer = "00000000000000aa";
            let name = format!(".dftp-{transfer}.part");
            let offer = Offer { transfer: transfer.into(), name: name.clone(), size: 5, block_size: 4096 };
            let tmp = temp_path(dir.path(), &offer);
            assert_eq!(tmp, dir.path().join(&name));
            let mut t = Target { overwrite, ..target(dir.path()) };
            t.prepare(&offer, false).unwrap();
            t.file.as_ref().unwrap().write_all_at(b"hello", 0).unwrap();
            let e = t.finalize().unwrap_err();
            assert!(e.contains("the name of the partial file itself"), "{e}");
            assert_eq!(std::fs::read(&tmp).unwrap(), b"hello", "the data is kept (overwrite: {overwrite})");
        }
    }

    /// Aligned chunks go around the page cache, the rest through it, and
    /// the file holds exactly what was written, in any order.
    #[test]
    fn a_sink_writes_aligned_and_unaligned_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let mut sink = Sink::new(file.try_clone().unwrap(), &path);
        let direct = sink.direct.is_some();
        let block = 64 << 10;
        let len = 5 * block + 1000;
        let want: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // An unaligned buffer: a slice that starts one byte into another.
        let mut shifted = vec![0u8; block + 1];
        shifted[1..].copy_from_slice(&want[3 * block..4 * block]);
        let shifted = Bytes::from(shifted).slice(1..);
        assert_ne!(shifted.as_ptr() as usize % DIRECT_ALIGN, 0);
        for (offset, data) in [
            (4 * block, &want[4 * block..5 * block]),
            (5 * block, &want[5 * block..]),
            (0, &want[..block]),
            (3 * block, &shifted[..]),
            (block, &want[block..3 * block]),
        ] {
            sink.write(offset as u64, data).unwrap();
        }
        assert_eq!(sink.direct.is_some(), direct, "no write was refused");
        sink.finish();
        assert_eq!(std::fs::read(&path).unwrap(), want, "direct I/O used: {direct}");
    }
}

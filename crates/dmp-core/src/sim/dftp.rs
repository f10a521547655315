//! Scenario (b): one file from a sender to a receiver, each run by a
//! simulated driver that does what `crate::drive::dftp` does: state files,
//! stale chunks removed on a fresh start, existing chunks noted on resume,
//! a temporary file in the target directory, linger and clean-up at the end.

use super::store::SimStore;
use super::{Env, Life, Node, ScenarioEnd, run_pair, settle_deadline};
use crate::drive::Poller;
use crate::id::PeerId;
use crate::proto::dftp::{
    DftpReceiver, DftpSender, ReceiverState, RecvConfig, RecvOut, RecvPhase, SendConfig, SendOut, SendPhase,
    SenderState,
};
use crate::proto::dftp_msg::{Offer, is_transfer_id, parse_chunk_object_name};
use crate::proto::mailbox::{LinkConfig, Op, OpResult};
use crate::store::Key;
use crate::wire::sha256_hex;
use bytes::Bytes;
use fastrand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a finished receiver waits for the sender to see it (the tools' default).
const LINGER: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Finished(String),
    Refused(String),
    Failed(String),
}

pub(super) fn link_cfg(rng: &mut Rng) -> LinkConfig {
    LinkConfig {
        window: if rng.bool() { 64 } else { rng.u64(1..=8) },
        readahead: rng.u64(1..=16),
        head_every: if rng.bool() { Duration::ZERO } else { Duration::from_millis(rng.u64(1..=2000)) },
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(5),
        ..LinkConfig::default()
    }
}

fn out_dir(me: &PeerId, peer: &PeerId) -> Key {
    Key::new([me.as_str(), peer.as_str()]).expect("valid ids")
}

/// Best-effort removal of everything in `dir` (as `cleanup_link_dir`).
fn cleanup(env: &mut Env, store: &mut SimStore, me: &str, dir: &Key) {
    if let OpResult::Listed(_, Ok(names)) = store.perform(env, me, Op::List(dir.clone())) {
        for n in names {
            if let Ok(k) = dir.join(&n) {
                store.perform(env, me, Op::Delete(k));
            }
        }
    }
}

struct Sender {
    life: Life,
    me: PeerId,
    peer: PeerId,
    cfg: SendConfig,
    source: Bytes,
    name: String,
    m: Option<DftpSender>,
    ended: Option<End>,
    last: (u64, SendPhase),
    /// Transfer ids offered so far (one per start without state).
    transfers: Vec<String>,
    quota_breached: bool,
    /// The peer's key, for a resumed sender that gets it only at its next
    /// turn (the tools look it up beside their first reads).
    key_late: Option<crate::crypto::PeerCrypto>,
}

impl Sender {
    fn start(&mut self, env: &mut Env, store: &mut SimStore) {
        let now = env.now;
        let inc = self.life.incarnation;
        env.log(|| format!("sender starts (incarnation {inc})"));
        let restored: Option<SenderState> = self.life.saved.as_deref().and_then(|s| serde_json::from_str(s).ok());
        let resumed = restored.is_some();
        let dir = out_dir(&self.me, &self.peer);
        let me = self.me.as_str();
        let mut cfg = self.cfg.clone();
        let offer = match &restored {
            Some(st) => {
                cfg.block_size = st.offer.block_size;
                st.offer.clone()
            }
            None => {
                // A fresh transfer starts clean (remove_stale_chunks).
                if let OpResult::Listed(_, Ok(names)) = store.perform(env, me, Op::List(dir.clone())) {
                    for n in names.iter().filter(|n| parse_chunk_object_name(n).is_some()) {
                        if let Ok(k) = dir.join(n) {
                            store.perform(env, me, Op::Delete(k));
                        }
                    }
                }
                let transfer = format!("{:016x}", env.rng.u64(..));
                self.transfers.push(transfer.clone());
                Offer { transfer, name: self.name.clone(), size: self.source.len() as u64, block_size: cfg.block_size }
            }
        };
        let mut m = DftpSender::new(
            self.me.clone(),
            self.peer.clone(),
            cfg,
            offer,
            restored,
            self.life.fresh_session(now),
            env.now,
        );
        self.key_late = None;
        if let Some(c) = env.crypto(&self.me, &self.peer) {
            if resumed && env.rng.bool() {
                self.key_late = Some(c);
            } else {
                m.set_crypto(now, c);
            }
        }
        self.last = (m.acked_bytes(), m.phase());
        m.wake(env.now);
        self.m = Some(m);
        self.ended = None;
    }

    fn check_quota(&mut self, env: &mut Env, store: &SimStore) {
        let dir = out_dir(&self.me, &self.peer);
        let staged: Vec<(String, u64)> =
            store.own_objects(&dir).into_iter().filter(|(n, _)| parse_chunk_object_name(n).is_some()).collect();
        let bytes: u64 = staged.iter().map(|(_, l)| l).sum();
        let limit = self.cfg.staged_limit();
        if bytes > limit && !self.quota_breached {
            self.quota_breached = true;
            let idx: Vec<u64> = staged.iter().filter_map(|(n, _)| parse_chunk_object_name(n).map(|(i, _)| i)).collect();
            env.violation(format!(
                "staged chunk bytes {bytes} exceed min(quota, window x block size) = {limit} (chunks {idx:?})"
            ));
        }
    }

    /// Acts on outputs until there are none; returns where it crashed, if it did.
    fn step(&mut self, env: &mut Env, store: &mut SimStore) -> Option<String> {
        let me = self.me.clone();
        let mut used = 0;
        loop {
            let outs = self.m.as_mut()?.take_outputs();
            if outs.is_empty() {
                return None;
            }
            for o in outs {
                if !env.output_budget(&mut used, self.life.name) {
                    self.life.ended = true;
                    return None;
                }
                if env.crash_due() {
                    return Some(format!("before {}", show_send(&o)));
                }
                if env.tracing() && !matches!(o, SendOut::Op(_)) {
                    let s = show_send(&o);
                    env.log(|| format!("sender: {s}"));
                }
                match o {
                    SendOut::Op(op) => {
                        let chunk_put = matches!(&op, Op::Put(k, _) if parse_chunk_object_name(k.name()).is_some());
                        let what = if env.tracing() { show_op(&op) } else { String::new() };
                        let res = store.perform(env, me.as_str(), op);
                        if chunk_put {
                            self.check_quota(env, store);
                        }
                        if env.crash_due() {
                            return Some(format!("after {what}"));
                        }
                        self.m.as_mut()?.on_result(env.now, res);
                    }
                    SendOut::Read { index, offset, len } => {
                        let end = offset.saturating_add(len);
                        let r = if end <= self.source.len() as u64 {
                            Ok(self.source.slice(offset as usize..end as usize))
                        } else {
                            Err("failed to fill whole buffer".to_string())
                        };
                        self.m.as_mut()?.on_read(env.now, index, r);
                    }
                    SendOut::Persist => {
                        let s = serde_json::to_string(&self.m.as_ref()?.snapshot()).expect("state serializes");
                        self.life.save(s);
                    }
                    // Both over for good: the sender cleans up.
                    SendOut::Refused(r) | SendOut::Aborted(r) => self.ended = Some(End::Refused(r)),
                    SendOut::Failed(r) => self.ended = Some(End::Failed(r)),
                    SendOut::Finished { sha256 } => self.ended = Some(End::Finished(sha256)),
                    SendOut::Accepted | SendOut::PeerStopped(_) | SendOut::Rejected { .. } | SendOut::StoreError(_) => {
                    }
                }
            }
        }
    }
}

impl Node for Sender {
    fn life(&self) -> &Life {
        &self.life
    }

    fn life_mut(&mut self) -> &mut Life {
        &mut self.life
    }

    fn id(&self) -> &str {
        self.me.as_str()
    }

    fn run(&mut self, env: &mut Env, store: &mut SimStore) {
        if self.life.down_until.take().is_some() {
            self.start(env, store);
        } else if let Some(m) = self.m.as_mut() {
            if let Some(c) = self.key_late.take() {
                env.log(|| "sender: the peer's key arrives".to_string());
                m.set_crypto(env.now, c);
            }
            m.wake(env.now);
        }
        if let Some(at) = self.step(env, store) {
            self.m = None;
            self.ended = None;
            self.life.crash(env, &format!("(sender) {at}"));
            return;
        }
        if self.life.ended {
            return;
        }
        let m = self.m.as_ref().expect("running");
        let cur = (m.acked_bytes(), m.phase());
        if cur != self.last {
            self.last = cur;
            self.life.poller.activity();
        }
        match &self.ended {
            Some(End::Finished(_) | End::Refused(_)) => {
                let dir = out_dir(&self.me, &self.peer);
                cleanup(env, store, self.me.as_str(), &dir);
                self.life.remove_state();
                self.life.ended = true;
                let e = self.ended.clone();
                env.log(|| format!("sender ends: {e:?}"));
            }
            Some(End::Failed(_)) => {
                self.life.ended = true;
                let e = self.ended.clone();
                env.log(|| format!("sender ends: {e:?}"));
            }
            None => {
                let deadline = m.deadline();
                self.life.schedule(env, deadline);
            }
        }
    }
}

struct Receiver {
    life: Life,
    me: PeerId,
    peer: PeerId,
    cfg: RecvConfig,
    m: Option<DftpReceiver>,
    /// The target directory: file name → bytes. Survives crashes.
    dir: BTreeMap<String, Vec<u8>>,
    /// The last write to a temporary file: (name, offset, bytes it replaced, old length).
    undo: Option<(String, u64, Vec<u8>, usize)>,
    /// The offer whose temporary file is open (lost on a crash).
    open: Option<Offer>,
    linger_until: Option<Duration>,
    ended: Option<End>,
    last: (u64, RecvPhase),
    /// What the receiver first reported as finished.
    finished_sha: Option<String>,
    expected_name: String,
    /// As the sender's: a resumed receiver may get the peer's key only at
    /// its next turn (also when it resumes finished, or gives up at once).
    key_late: Option<crate::crypto::PeerCrypto>,
}

fn temp_name(offer: &Offer) -> String {
    crate::proto::dftp_msg::partial_file_name(&offer.transfer)
}

impl Receiver {
    fn start(&mut self, env: &mut Env) {
        let inc = self.life.incarnation;
        env.log(|| format!("receiver starts (incarnation {inc})"));
        let restored: Option<ReceiverState> = self.life.saved.as_deref().and_then(|s| serde_json::from_str(s).ok());
        let mut m = DftpReceiver::new(
            self.me.clone(),
            self.peer.clone(),
            self.cfg.clone(),
            restored,
            self.life.fresh_session(env.now),
            env.now,
        );
        let resumed = self.life.saved.is_some();
        self.key_late = None;
        if let Some(c) = env.crypto(&self.me, &self.peer) {
            if resumed && env.rng.bool() {
                self.key_late = Some(c);
            } else {
                m.set_crypto(env.now, c);
            }
        }
        self.last = (m.done_bytes(), m.phase());
        m.wake(env.now);
        self.m = Some(m);
        self.open = None;
        self.linger_until = None;
        self.ended = None;
    }

    fn prepare(&mut self, env: &mut Env, offer: &Offer, resume: bool) -> Result<(), String> {
        if !is_transfer_id(&offer.transfer) {
            env.violation(format!("temporary file for a malformed transfer id {:?}", offer.transfer));
        }
        let tmp = temp_name(offer);
        if !resume {
            if self.dir.contains_key(&offer.name) {
                return Err(format!("{} already exists on the receiving side (use --overwrite)", offer.name));
            }
            self.dir.insert(tmp, Vec::new());
            self.undo = None;
        } else if !self.dir.contains_key(&tmp) {
            return Err(format!("the partial file {tmp} is gone; start both sides again"));
        }
        self.open = Some(offer.clone());
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let offer = self.open.as_ref().ok_or("no open file")?;
        let tmp = temp_name(offer);
        let f = self.dir.get_mut(&tmp).ok_or("the temporary file vanished")?;
        let (off, end) = (offset as usize, offset as usize + data.len());
        let old_len = f.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        self.undo = Some((tmp, offset, f[off..end].to_vec(), old_len));
        f[off..end].copy_from_slice(data);
        Ok(())
    }

    fn read_back(&self, offset: u64, len: u64) -> Result<Bytes, String> {
        let offer = self.open.as_ref().ok_or("no open file")?;
        let f = self.dir.get(&temp_name(offer)).ok_or("the temporary file vanished")?;
        let end = offset.saturating_add(len);
        if end > f.len() as u64 {
            return Err("failed to fill whole buffer".into());
        }
        Ok(Bytes::copy_from_slice(&f[offset as usize..end as usize]))
    }

    fn finalize(&mut self, env: &mut Env) -> Result<(), String> {
        let offer = self.open.take().ok_or("no transfer")?;
        let tmp = temp_name(&offer);
        let mut f = self.dir.remove(&tmp).ok_or("no open file")?;
        f.resize(offer.size as usize, 0);
        if offer.name != self.expected_name {
            env.violation(format!("wrote {:?} outside the target (offered {:?})", offer.name, self.expected_name));
        }
        if self.dir.contains_key(&offer.name) {
            self.dir.insert(tmp, f);
            return Err(format!("{} appeared meanwhile; not replaced (use --overwrite)", offer.name));
        }
        self.dir.insert(offer.name.clone(), f);
        self.undo = None;
        Ok(())
    }

    /// Acts on outputs until there are none; returns where it crashed, if it did.
    fn step(&mut self, env: &mut Env, store: &mut SimStore) -> Option<String> {
        let me = self.me.clone();
        let mut used = 0;
        loop {
            let outs = self.m.as_mut()?.take_outputs();
            if outs.is_empty() {
                return None;
            }
            for o in outs {
                if !env.output_budget(&mut used, self.life.name) {
                    self.life.ended = true;
                    return None;
                }
                // Lingering, the real driver performs store operations and saves its state only.
                if self.linger_until.is_some() && !matches!(o, RecvOut::Op(_) | RecvOut::Persist) {
                    continue;
                }
                if env.crash_due() {
                    return Some(format!("before {}", show_recv(&o)));
                }
                if env.tracing() && !matches!(o, RecvOut::Op(_)) {
                    let s = show_recv(&o);
                    env.log(|| format!("receiver: {s}"));
                }
                let now = env.now;
                match o {
                    RecvOut::Op(op) => {
                        let what = if env.tracing() { show_op(&op) } else { String::new() };
                        let res = store.perform(env, me.as_str(), op);
                        if env.crash_due() {
                            return Some(format!("after {what}"));
                        }
                        self.m.as_mut()?.on_result(env.now, res);
                    }
                    RecvOut::Persist => {
                        let s = serde_json::to_string(&self.m.as_ref()?.snapshot()).expect("state serializes");
                        self.life.save(s);
                    }
                    RecvOut::Prepare { offer, resume } => {
                        let r = self.prepare(env, &offer, resume);
                        if env.crash_due() {
                            return Some("after preparing the temporary file".into());
                        }
                        self.m.as_mut()?.on_prepared(now, r);
                    }
                    RecvOut::Write { index, offset, data } => {
                        let r = self.write(offset, &data);
                        if env.crash_due() {
                            return Some(format!("after writing chunk {index}"));
                        }
                        self.m.as_mut()?.on_written(now, index, r);
                    }
                    RecvOut::ReadBack { offset, len } => {
                        let r = self.read_back(offset, len);
                        self.m.as_mut()?.on_read_back(now, r);
                    }
                    RecvOut::Finalize { .. } => {
                        let r = self.finalize(env);
                        if env.crash_due() {
                            return Some("after renaming the file into place".into());
                        }
                        self.m.as_mut()?.on_finalized(now, r);
                    }
                    RecvOut::Discard { offer } => {
                        self.open = None;
                        self.undo = None;
                        self.dir.remove(&temp_name(&offer));
                    }
                    RecvOut::Refused(r) => self.ended = Some(End::Refused(r)),
                    RecvOut::Failed(r) | RecvOut::GaveUp(r) => self.ended = Some(End::Failed(r)),
                    RecvOut::PeerStopped(_) => {}
                    RecvOut::Finished { sha256 } => {
                        self.finished_sha.get_or_insert(sha256.clone());
                        self.ended = Some(End::Finished(sha256));
                    }
                    RecvOut::Rejected { .. } | RecvOut::KeepsFailing { .. } | RecvOut::StoreError(_) => {}
                }
            }
        }
    }

    fn crash(&mut self, env: &mut Env, at: &str) {
        self.m = None;
        self.open = None;
        self.linger_until = None;
        self.ended = None;
        if self.life.crash(env, &format!("(receiver) {at}")) && env.rng.bool() {
            if let Some((name, off, old, old_len)) = self.undo.take() {
                if let Some(f) = self.dir.get_mut(&name).filter(|f| f.len() >= off as usize + old.len()) {
                    let off = off as usize;
                    f[off..off + old.len()].copy_from_slice(&old);
                    f.truncate(old_len.max(off));
                    env.fault(|| format!("the last write to {name} is lost"));
                }
            }
        }
    }
}

impl Node for Receiver {
    fn life(&self) -> &Life {
        &self.life
    }

    fn life_mut(&mut self) -> &mut Life {
        &mut self.life
    }

    fn id(&self) -> &str {
        self.me.as_str()
    }

    fn run(&mut self, env: &mut Env, store: &mut SimStore) {
        if self.life.down_until.take().is_some() {
            self.start(env);
        } else if let Some(m) = self.m.as_mut() {
            if let Some(c) = self.key_late.take() {
                env.log(|| "receiver: the peer's key arrives".to_string());
                m.set_crypto(env.now, c);
            }
            m.wake(env.now);
        }
        if let Some(at) = self.step(env, store) {
            self.crash(env, &at);
            return;
        }
        if self.life.ended {
            return;
        }
        let m = self.m.as_ref().expect("running");
        let cur = (m.done_bytes(), m.phase());
        if cur != self.last {
            self.last = cur;
            self.life.poller.activity();
        }
        if self.linger_until.is_none() {
            match &self.ended {
                Some(End::Finished(_) | End::Refused(_)) => {
                    self.linger_until = Some(env.now + LINGER);
                    self.life.poller = Poller::new(Duration::from_millis(20), Duration::from_millis(500));
                    env.log(|| "receiver lingers".into());
                }
                Some(End::Failed(_)) => {
                    if m.gave_up() {
                        // As the real driver: over for good (the abort is
                        // written: this store performs operations at once).
                        if let Some(o) = m.offer() {
                            self.dir.remove(&temp_name(o));
                        }
                        self.life.remove_state();
                    }
                    self.life.ended = true;
                    let e = self.ended.clone();
                    env.log(|| format!("receiver ends: {e:?}"));
                    return;
                }
                None => {}
            }
        }
        match self.linger_until {
            Some(until) => {
                let settled = m.last_message_acked() || m.link().peer_gone();
                if settled || env.now >= until {
                    // As the real driver: clean up (the state last) unless
                    // our last message is still unread by a sender that is
                    // still there; then a finished receiver keeps both.
                    if settled {
                        let dir = out_dir(&self.me, &self.peer);
                        cleanup(env, store, self.me.as_str(), &dir);
                        self.life.remove_state();
                    } else if !matches!(self.ended, Some(End::Finished(_))) {
                        self.life.remove_state();
                    }
                    self.life.ended = true;
                    let e = self.ended.clone();
                    env.log(|| format!("receiver ends: {e:?}"));
                } else {
                    let at = m.deadline().map_or(until, |d| d.min(until));
                    self.life.schedule(env, Some(at));
                }
            }
            None => {
                let deadline = m.deadline();
                self.life.schedule(env, deadline);
            }
        }
    }
}

fn show_send(o: &SendOut) -> String {
    match o {
        SendOut::Op(op) => show_op(op),
        SendOut::Read { index, offset, len } => format!("read chunk {index} ({len} B at {offset})"),
        other => format!("{other:?}"),
    }
}

fn show_recv(o: &RecvOut) -> String {
    match o {
        RecvOut::Op(op) => show_op(op),
        RecvOut::Write { index, offset, data } => format!("write chunk {index} ({} B at {offset})", data.len()),
        RecvOut::Prepare { offer, resume } => format!("prepare {} (resume: {resume})", offer.transfer),
        RecvOut::Discard { offer } => format!("discard {}", offer.transfer),
        other => format!("{other:?}"),
    }
}

pub(super) fn show_op(op: &Op) -> String {
    match op {
        Op::List(k) => format!("list {k}"),
        Op::Get(k, _) => format!("get {k}"),
        Op::Put(k, d) => format!("put {k} ({} B)", d.len()),
        Op::Delete(k) => format!("delete {k}"),
    }
}

/// Runs the scenario with sizes and settings drawn from `env.rng`.
pub(super) fn run(env: &mut Env) -> ScenarioEnd {
    let secure = env.secure();
    let rng = &mut env.rng;
    let bs_max = 1u64 << rng.u32(0..=16);
    let block_size = rng.u64(1..=bs_max);
    let chunks = rng.u64(0..=20);
    let size = if chunks == 0 { 0 } else { (chunks - 1) * block_size + rng.u64(1..=block_size) };
    let mut source = vec![0u8; size as usize];
    match rng.u8(..4) {
        0 => {} // all zeros: every full chunk has the same hash
        1 => source.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8),
        _ => rng.fill(&mut source),
    }
    let window = rng.u64(1..=6);
    // As the tools insist: a quota holds at least one chunk object.
    let overhead = if secure { crate::crypto::SEAL_OVERHEAD as u64 } else { 0 };
    let quota = if rng.bool() { u64::MAX } else { overhead + rng.u64(block_size..=block_size * (window + 1)) };
    let mut send_cfg = SendConfig { block_size, window, quota, link: link_cfg(rng) };
    // The receiver keeps the tools' link window: with a smaller one, its
    // `finished` can wait behind unacknowledged accepts past the linger
    // (small windows are exercised by the mailbox scenario).
    let recv_link = LinkConfig { window: LinkConfig::default().window, ..link_cfg(rng) };
    let mut recv_cfg =
        RecvConfig { prefetch: rng.usize(1..=6), bad_chunk_timeout: Duration::from_secs(600), link: recv_link };
    send_cfg.link.secure = secure;
    recv_cfg.link.secure = secure;
    let name = ["file.bin", "données 1.txt", "a", "report.final.pdf", ".hidden"][rng.usize(..5)].to_string();
    let (a, b) = (PeerId::new("alice").expect("id"), PeerId::new("bob").expect("id"));
    let notify = env.cfg.notify;
    let mut s = Sender {
        life: Life::new("sender", notify),
        me: a.clone(),
        peer: b.clone(),
        cfg: send_cfg,
        source: Bytes::from(source),
        name: name.clone(),
        m: None,
        ended: None,
        last: (0, SendPhase::Offered),
        transfers: Vec::new(),
        quota_breached: false,
        key_late: None,
    };
    let mut r = Receiver {
        life: Life::new("receiver", notify),
        me: b,
        peer: a,
        cfg: recv_cfg,
        m: None,
        dir: BTreeMap::new(),
        undo: None,
        open: None,
        linger_until: None,
        ended: None,
        last: (0, RecvPhase::Waiting),
        finished_sha: None,
        expected_name: name.clone(),
        key_late: None,
    };
    s.life.down_until = Some(Duration::from_millis(env.rng.u64(..2000)));
    r.life.down_until = Some(Duration::from_millis(env.rng.u64(..2000)));
    env.log(|| {
        format!("dftp: {size} bytes, {chunks} chunks of {block_size}, window {window}, quota {quota}, name {name:?}")
    });
    let mut store = SimStore::new();
    let bound = settle_deadline(&env.cfg, chunks);
    run_pair(env, &mut store, &mut s, &mut r, bound, |s, r| s.life.ended && r.life.ended);

    // Invariants at the end.
    let sha = sha256_hex(&s.source);
    let lossy = s.life.lossy || r.life.lossy;
    for (n, data) in &r.dir {
        if *n == name {
            if data[..] != s.source[..] {
                env.violation(format!("the received file differs from the source ({} vs {} bytes)", data.len(), size));
            }
        } else if let Some(t) = n.strip_prefix(".dftp-").and_then(|x| x.strip_suffix(".part")) {
            if !s.transfers.iter().any(|x| x == t) {
                env.violation(format!("temporary file {n:?} of a transfer never offered"));
            }
        } else {
            env.violation(format!("unexpected file {n:?} in the target directory"));
        }
    }
    let in_place = r.dir.get(&name).is_some_and(|d| d[..] == s.source[..]);
    if let Some(End::Finished(h)) = &s.ended {
        if *h != sha || !in_place {
            env.violation(format!("the sender finished ({h}) but the file in place is not the source ({sha})"));
        }
    }
    if let Some(h) = &r.finished_sha {
        if *h != sha || !in_place {
            env.violation(format!("the receiver finished ({h}) but the file in place is not the source ({sha})"));
        }
    }
    let completed = matches!(s.ended, Some(End::Finished(_))) && r.finished_sha.is_some() && r.life.ended;
    let temps = r.dir.keys().filter(|n| n.starts_with(".dftp-")).count();
    let outcome = format!(
        "sender {}, receiver {}; {} of {} bytes written",
        show_end(&s.ended, s.life.ended),
        show_end(&r.ended, r.life.ended),
        r.m.as_ref().map_or(0, |m| m.done_bytes()),
        size
    );
    if !lossy {
        if !completed {
            let secs = (bound - env.cfg.until).as_secs();
            env.violation(format!("not complete {secs}s after the faults stopped: {outcome}"));
        } else if temps > 0 {
            env.violation(format!("{temps} temporary file(s) left in the target"));
        }
    }
    ScenarioEnd { completed, lossy, outcome }
}

fn show_end(e: &Option<End>, ended: bool) -> String {
    match (e, ended) {
        (Some(End::Finished(_)), _) => "finished".into(),
        (Some(End::Refused(r)), _) => format!("refused ({r})"),
        (Some(End::Failed(r)), _) => format!("failed ({r})"),
        (None, true) => "ended".into(),
        (None, false) => "still running".into(),
    }
}

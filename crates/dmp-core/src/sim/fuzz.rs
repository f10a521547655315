//! Fuzzing harnesses: arbitrary bytes become an input to the envelope
//! decoder, or a sequence of events for the DFTP receiver (store results,
//! local file answers, time, restarts), and the outputs are checked. Used by
//! the cargo-fuzz targets in `fuzz/` and by a seeded random-input test in
//! stable `cargo test` (`tests/fuzz_inputs.rs`).
//!
//! The receiver harness answers the receiver's requests the way a store and
//! a driver could, choosing with the input bytes between good answers (a
//! well-formed message or chunk of a model file, so that deep states are
//! reachable) and bad ones (absent, errors, garbage, truncated, forged or
//! inconsistent messages). It checks that the receiver never panics, only
//! writes in its own outbox and reads the peer's, prepares only offers whose
//! numbers and name pass the checks, writes only within the offered size, and
//! asks to finalize only a temporary file whose SHA-256 is the one it names.

use crate::id::PeerId;
use crate::proto::dftp::{DftpReceiver, ReceiverState, RecvConfig, RecvOut};
use crate::proto::dftp_msg::{ChunkMsg, DoneMsg, Offer, Reply, check_file_name, chunk_object_name};
use crate::proto::dftp_msg::{is_transfer_id, parse_chunk_object_name};
use crate::proto::mailbox::{AckBody, LinkConfig, Op, OpResult, parse_msg_name};
use crate::store::{Key, StoreError};
use crate::wire::{Envelope, Kind, sha256_hex};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::time::Duration;

/// Reads values from the fuzz input; zeros once it runs out.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.u16() as usize % n }
    }
    /// A rare event: true for the top `in256` byte values, so that inputs
    /// of small bytes (and an exhausted input) take the ordinary path.
    fn rare(&mut self, in256: u8) -> bool {
        self.u8() > 255 - in256
    }
    /// Up to 255 bytes, the count read first.
    fn blob(&mut self) -> Vec<u8> {
        let n = self.u8() as usize;
        self.bytes(n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let end = (self.pos + n).min(self.data.len());
        let v = self.data.get(self.pos..end).unwrap_or(&[]).to_vec();
        self.pos += n;
        v
    }
}

/// Decodes `data` (and, when its first byte is odd, the rest with both
/// checksums recomputed, to reach the checks behind them); whatever decodes
/// must be the canonical encoding of what it decoded to.
pub fn envelope(data: &[u8]) {
    let bob = PeerId::new("bob").expect("id");
    let (reseal, body) = match data.split_first() {
        Some((f, rest)) => (f & 1 == 1, rest),
        None => (false, data),
    };
    let mut bytes = body.to_vec();
    if reseal {
        reseal_envelope(&mut bytes);
    }
    for rcpt in [None, Some(&bob)] {
        if let Ok(env) = Envelope::decode(&bytes, rcpt) {
            let enc = env.encode();
            assert!(enc == bytes, "decode accepted bytes that are not the canonical encoding of {env:?}");
            assert_eq!(Envelope::decode(&enc, rcpt).as_ref(), Ok(&env));
        }
    }
}

/// Recomputes the payload and trailing SHA-256 of an envelope-shaped buffer.
pub fn reseal_envelope(b: &mut [u8]) {
    if b.len() < 72 + 32 {
        return;
    }
    let (slen, rlen) = (b[7] as usize, b[8] as usize);
    let plen = u32::from_be_bytes([b[36], b[37], b[38], b[39]]) as usize;
    let start = 72 + slen + rlen;
    if let Some(end) = start.checked_add(plen).filter(|e| e + 32 <= b.len()) {
        let h: [u8; 32] = Sha256::digest(&b[start..end]).into();
        b[40..72].copy_from_slice(&h);
    }
    let n = b.len() - 32;
    let d: [u8; 32] = Sha256::digest(&b[..n]).into();
    b[n..].copy_from_slice(&d);
}

const TRANSFERS: [&str; 3] = ["00112233445566aa", "ffeeddccbbaa0099", "0123456789abcdef"];
const NAMES: [&str; 8] = ["file.bin", "a", "../x", "a/b", "CON", "\u{1b}[31mred", "", "x."];
const BLOCKS: [u64; 8] = [1, 2, 3, 7, 16, 64, 0, 1 << 40];

/// The model file of an offer: what an honest sender would send.
fn model(o: &Offer) -> Vec<u8> {
    let seed = o.transfer.as_bytes()[0];
    (0..o.size.min(1 << 16)).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

struct Harness<'a> {
    inp: Input<'a>,
    me: PeerId,
    peer: PeerId,
    cfg: RecvConfig,
    m: DftpReceiver,
    now: Duration,
    /// Store operations asked for and not yet answered.
    asked: Vec<Op>,
    /// Local file requests not yet answered, in order.
    local: VecDeque<RecvOut>,
    /// The temporary file: its offer and bytes (it survives restarts).
    temp: Option<(Offer, Vec<u8>)>,
    /// The offer whose temporary file is open (lost on a restart).
    open: Option<Offer>,
    /// The last offer sent, to build consistent chunks and `done`.
    offer: Option<Offer>,
    sessions: [u64; 2],
    reach: Reach,
}

/// How far a receiver run got (to measure the harness's reach).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub prepared: bool,
    pub wrote: bool,
    pub finalized: bool,
}

/// Feeds a receiver the events `data` describes; panics on a broken rule.
pub fn receiver(data: &[u8]) -> Reach {
    let mut inp = Input { data, pos: 0 };
    let me = PeerId::new("bob").expect("id");
    let peer = PeerId::new("alice").expect("id");
    let cfg = RecvConfig {
        prefetch: 1 + inp.below(4),
        bad_chunk_timeout: Duration::from_secs(30),
        link: LinkConfig { readahead: 1 + inp.below(8) as u64, ..LinkConfig::default() },
    };
    let m = DftpReceiver::new(me.clone(), peer.clone(), cfg.clone(), None, 7, Duration::ZERO);
    let mut h = Harness {
        inp,
        me,
        peer,
        cfg,
        m,
        now: Duration::ZERO,
        asked: Vec::new(),
        local: VecDeque::new(),
        temp: None,
        open: None,
        offer: None,
        sessions: [1000, 2000],
        reach: Reach::default(),
    };
    h.collect();
    let mut steps = 0;
    while !h.inp.done() && steps < 10_000 {
        steps += 1;
        // Small bytes: answer what was asked, in order (as a driver does);
        // with nothing to answer, time passes (as a driver polls).
        match h.inp.u8() % 10 {
            _ if h.asked.is_empty() && h.local.is_empty() => h.wake(),
            0..=3 if !h.local.is_empty() => h.answer_local(),
            0..=3 => h.answer_op(),
            4..=6 if !h.asked.is_empty() => h.answer_op(),
            4..=6 => h.answer_local(),
            7 => h.wake(),
            8 if h.inp.rare(32) => h.restart(),
            8 => {}
            _ => {
                // A store result nobody asked for (a late or forged one).
                let key = Key::new(["alice", "bob", "head"]).expect("key");
                let r = h.head();
                h.m.on_result(h.now, OpResult::Got(key, Ok(Some(r))));
            }
        }
        h.collect();
    }
    h.reach
}

impl Harness<'_> {
    fn wake(&mut self) {
        self.now += Duration::from_millis(20 + self.inp.u16() as u64);
        self.m.wake(self.now);
    }

    /// Takes the receiver's outputs and checks them.
    fn collect(&mut self) {
        for o in self.m.take_outputs() {
            match o {
                RecvOut::Op(op) => {
                    match &op {
                        Op::Put(k, _) | Op::Delete(k) => {
                            assert!(k.as_str().starts_with("bob/alice/"), "wrote outside its outbox: {k}")
                        }
                        Op::Get(k, _) => assert!(k.as_str().starts_with("alice/bob/"), "read {k}"),
                        Op::List(k) => assert_eq!(k.as_str(), "bob/alice", "listed {k}"),
                    }
                    if self.asked.len() < 256 {
                        self.asked.push(op);
                    }
                }
                RecvOut::Prepare { offer, resume } => {
                    assert!(offer.check().is_ok(), "prepared a bad offer {offer:?}");
                    assert!(check_file_name(&offer.name).is_ok(), "prepared a bad name {:?}", offer.name);
                    self.local.push_back(RecvOut::Prepare { offer, resume });
                }
                RecvOut::Write { index, offset, data } => {
                    self.local.push_back(RecvOut::Write { index, offset, data });
                }
                RecvOut::Finalize { sha256 } => {
                    assert!(
                        !self.local.iter().any(|o| matches!(o, RecvOut::Finalize { .. })),
                        "asked to finalize twice"
                    );
                    self.local.push_back(RecvOut::Finalize { sha256 });
                }
                o @ (RecvOut::ReadBack { .. } | RecvOut::Discard { .. }) => self.local.push_back(o),
                _ => {}
            }
        }
    }

    fn restart(&mut self) {
        let st: ReceiverState =
            serde_json::from_str(&serde_json::to_string(&self.m.snapshot()).expect("serializes")).expect("parses");
        let fresh = self.inp.rare(32);
        self.m = DftpReceiver::new(
            self.me.clone(),
            self.peer.clone(),
            self.cfg.clone(),
            (!fresh).then_some(st),
            7 + self.now.as_micros() as u64,
            self.now,
        );
        self.asked.clear();
        self.local.clear();
        self.open = None;
    }

    fn answer_op(&mut self) {
        if self.asked.is_empty() {
            return;
        }
        let i = if self.inp.rare(64) { self.inp.below(self.asked.len()) } else { 0 };
        let op = self.asked.remove(i);
        let fail = self.inp.rare(24);
        let err = |op: &'static str, k: &Key| StoreError::Io {
            store: "fuzz".into(),
            op,
            key: k.to_string(),
            msg: "injected".into(),
        };
        let res = match op {
            Op::Put(k, _) => OpResult::Put(k.clone(), if fail { Err(err("put", &k)) } else { Ok(()) }),
            Op::Delete(k) => OpResult::Deleted(k.clone(), if fail { Err(err("delete", &k)) } else { Ok(()) }),
            Op::List(k) => {
                let names = vec![
                    "0000000000000001-0000000000000001.msg".to_string(),
                    "ack".into(),
                    "x (conflicted copy).msg".into(),
                ];
                OpResult::Listed(k.clone(), if fail { Err(err("list", &k)) } else { Ok(names) })
            }
            Op::Get(k, max) => {
                let r = if fail { Err(err("get", &k)) } else { Ok(self.content(&k, max)) };
                OpResult::Got(k, r)
            }
        };
        self.m.on_result(self.now, res);
    }

    /// What a read of `k` returns.
    fn content(&mut self, k: &Key, max: u64) -> Option<Vec<u8>> {
        let name = k.name().to_owned();
        let good = match if self.inp.rare(64) { self.inp.u8() % 3 } else { 3 } {
            0 => return None,
            1 => return Some(self.inp.blob()),
            2 => {
                // A good file cut short.
                let mut g = self.good(&name)?;
                g.truncate(self.inp.below(g.len() + 1));
                return Some(g);
            }
            _ => self.good(&name)?,
        };
        (good.len() as u64 <= max).then_some(good)
    }

    /// A well-formed file for `name`, as an honest sender would write it.
    fn good(&mut self, name: &str) -> Option<Vec<u8>> {
        if name == "head" {
            return Some(self.head());
        }
        if name == "ack" {
            let upto = self.inp.u8() as u64;
            let session = self.m.link().state().session;
            return Some(self.envelope(Kind::Ack, 0, 0, 0, AckBody { session, upto }.encode()));
        }
        if let Some((session, seq)) = parse_msg_name(name) {
            return Some(self.message(session, seq));
        }
        if let Some((index, _)) = parse_chunk_object_name(name) {
            let o = self.offer.clone()?;
            if o.block_size == 0 || index >= o.chunks() || o.size > 1 << 16 {
                return None;
            }
            let (off, len) = o.chunk_span(index);
            let data = model(&o)[off as usize..(off + len) as usize].to_vec();
            if self.inp.rare(16) {
                return Some(vec![0; data.len()]); // a placeholder
            }
            return Some(data);
        }
        None
    }

    fn head(&mut self) -> Vec<u8> {
        let session = self.sessions[self.inp.rare(16) as usize];
        let base = if self.inp.rare(16) { 1 + self.inp.below(12) as u64 } else { 1 };
        self.envelope(Kind::Head, session, base + 3, base, Vec::new())
    }

    fn envelope(&mut self, kind: Kind, session: u64, seq: u64, base: u64, payload: Vec<u8>) -> Vec<u8> {
        let sender = if self.inp.rare(8) { PeerId::new("mallory").expect("id") } else { self.peer.clone() };
        Envelope { flags: 0, kind, sender, recipient: self.me.clone(), session, seq, base, payload }.encode()
    }

    /// The transfer an honest sender makes in `session`.
    fn honest_offer(session: u64) -> Offer {
        Offer {
            transfer: TRANSFERS[(session % 3) as usize].into(),
            name: "file.bin".into(),
            size: 1 + (session % 97) * 3,
            block_size: [7, 16, 64][(session / 7 % 3) as usize],
        }
    }

    /// Message `seq` of `session`: usually what an honest sender wrote
    /// (offer, chunks, done), else anything.
    fn message(&mut self, session: u64, seq: u64) -> Vec<u8> {
        if !self.inp.rare(32) {
            let o = Self::honest_offer(session);
            let chunks = o.chunks();
            let model = model(&o);
            let (kind, payload) = match seq {
                1 => (Kind::Offer, serde_json::to_vec(&o).expect("json")),
                s if s >= 2 && s - 2 < chunks => {
                    let index = s - 2;
                    let (offset, len) = o.chunk_span(index);
                    let sha256 = sha256_hex(&model[offset as usize..(offset + len) as usize]);
                    let object = chunk_object_name(index, &sha256);
                    let c = ChunkMsg { transfer: o.transfer.clone(), index, offset, len, sha256, object };
                    (Kind::Chunk, serde_json::to_vec(&c).expect("json"))
                }
                s if s == chunks + 2 => {
                    let d = DoneMsg { transfer: o.transfer.clone(), sha256: sha256_hex(&model) };
                    (Kind::Done, serde_json::to_vec(&d).expect("json"))
                }
                _ => return Vec::new(), // not written yet: read as garbage, retried
            };
            self.offer = Some(o);
            let base = if self.inp.rare(16) { 1 + self.inp.below(seq.max(1) as usize) as u64 } else { 1 };
            return self.envelope(kind, session, seq, base, payload);
        }
        let base = 1 + self.inp.below(seq.max(1) as usize) as u64;
        let (kind, payload) = match self.inp.u8() % 10 {
            0 | 1 => {
                let o = Offer {
                    transfer: TRANSFERS[self.inp.below(3)].into(),
                    name: if self.inp.rare(200) {
                        "file.bin".into()
                    } else {
                        NAMES[self.inp.below(NAMES.len())].into()
                    },
                    size: if self.inp.rare(240) { self.inp.below(300) as u64 } else { u64::MAX },
                    block_size: BLOCKS[self.inp.below(BLOCKS.len())],
                };
                self.offer = Some(o.clone());
                (Kind::Offer, serde_json::to_vec(&o).expect("json"))
            }
            2..=5 => match self.offer.clone().filter(|o| o.block_size > 0 && o.chunks() > 0 && o.size <= 1 << 16) {
                Some(o) => {
                    let index = self.inp.below(o.chunks() as usize + 1).min(o.chunks() as usize - 1) as u64;
                    let (offset, len) = o.chunk_span(index);
                    let sha = sha256_hex(&model(&o)[offset as usize..(offset + len) as usize]);
                    let mut c = ChunkMsg {
                        transfer: o.transfer.clone(),
                        index,
                        offset,
                        len,
                        object: chunk_object_name(index, &sha),
                        sha256: sha,
                    };
                    match self.inp.u8() % 16 {
                        0 => c.offset += 1,
                        1 => c.len = c.len.wrapping_add(1),
                        2 => c.index += 1,
                        3 => c.sha256 = "0".repeat(64),
                        4 => c.object = "../../x.chunk".into(),
                        5 => c.transfer = TRANSFERS[self.inp.below(3)].into(),
                        _ => {}
                    }
                    (Kind::Chunk, serde_json::to_vec(&c).expect("json"))
                }
                None => (Kind::Chunk, self.inp.bytes(40)),
            },
            6 | 7 => {
                let (transfer, sha256) = match &self.offer {
                    Some(o) if o.size <= 1 << 16 => (o.transfer.clone(), sha256_hex(&model(o))),
                    _ => (TRANSFERS[0].into(), "ab".repeat(32)),
                };
                let sha256 = if self.inp.rare(16) { "cd".repeat(32) } else { sha256 };
                (Kind::Done, serde_json::to_vec(&DoneMsg { transfer, sha256 }).expect("json"))
            }
            8 => {
                let transfer = self.offer.as_ref().map_or(TRANSFERS[0].to_string(), |o| o.transfer.clone());
                let r = Reply { transfer, reason: Some("\u{1b}]0;stop\u{7}".into()), sha256: None, resumable: false };
                (Kind::Abort, serde_json::to_vec(&r).expect("json"))
            }
            _ => {
                let kinds = [Kind::Accept, Kind::Finished, Kind::Ping, Kind::Head, Kind::Ack, Kind::Refuse];
                let k = kinds[self.inp.below(kinds.len())];
                (k, self.inp.blob())
            }
        };
        self.envelope(kind, session, seq, base, payload)
    }

    /// Answers the oldest local file request.
    fn answer_local(&mut self) {
        let Some(req) = self.local.pop_front() else { return };
        let fail = self.inp.rare(16);
        let now = self.now;
        match req {
            RecvOut::Prepare { offer, resume } => {
                let r = if fail {
                    Err("no space".to_string())
                } else if resume {
                    match &self.temp {
                        Some((o, _)) if o.transfer == offer.transfer => Ok(()),
                        _ => Err("the partial file is gone".into()),
                    }
                } else {
                    self.temp = Some((offer.clone(), Vec::new()));
                    Ok(())
                };
                if r.is_ok() {
                    self.open = Some(offer);
                    self.reach.prepared = true;
                }
                self.m.on_prepared(now, r);
            }
            RecvOut::Write { index, offset, data } => {
                let o = self.open.clone().expect("a write without a prepared file");
                assert!(o.block_size > 0 && index < o.chunks(), "write of chunk {index} of {o:?}");
                assert_eq!((offset, data.len() as u64), o.chunk_span(index), "write of chunk {index} misplaced");
                let r = match &mut self.temp {
                    Some((t, f)) if !fail && t.transfer == o.transfer => {
                        let end = offset as usize + data.len();
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[offset as usize..end].copy_from_slice(&data);
                        self.reach.wrote = true;
                        Ok(())
                    }
                    _ => Err("write failed".to_string()),
                };
                self.m.on_written(now, index, r);
            }
            RecvOut::ReadBack { offset, len } => {
                let r = match &self.temp {
                    Some((_, f)) if !fail && (offset + len) as usize <= f.len() => {
                        Ok(Bytes::copy_from_slice(&f[offset as usize..(offset + len) as usize]))
                    }
                    _ => Err("short read".to_string()),
                };
                self.m.on_read_back(now, r);
            }
            RecvOut::Finalize { sha256 } => {
                let o = self.open.clone().expect("finalize without a prepared file");
                let (_, f) = self.temp.as_ref().expect("finalize without a temporary file");
                let mut f = f.clone();
                f.resize(o.size as usize, 0);
                assert_eq!(sha256_hex(&f), sha256, "finalize of a file that does not match its hash");
                assert!(is_transfer_id(&o.transfer));
                let r = if fail { Err("rename failed".to_string()) } else { Ok(()) };
                if r.is_ok() {
                    self.temp = None;
                    self.open = None;
                    self.reach.finalized = true;
                }
                self.m.on_finalized(now, r);
            }
            RecvOut::Discard { offer } => {
                if self.temp.as_ref().is_some_and(|(o, _)| o.transfer == offer.transfer) {
                    self.temp = None;
                }
                self.open = None;
            }
            _ => {}
        }
    }
}

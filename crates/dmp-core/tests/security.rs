//! Security of what sits in the store, at the level of the machines: a
//! [`Link`] pair and a DFTP sender/receiver pair driven over a tiny in-memory
//! store whose files the tests tamper with, forge, move and replay.
//!
//! - every byte of a message, `head` and `ack` file flipped (as is, and with
//!   both checksums recomputed, as an attacker would) is never used;
//! - every byte of a chunk object flipped is never written;
//! - messages and chunks sealed by a third party (mallory, claiming to be
//!   alice) are rejected, and so are messages for another recipient (carol);
//! - old messages copied back (replay), moved to another sequence number or
//!   from an earlier session are ignored.

use bytes::Bytes;
use dmp_core::PeerId;
use dmp_core::crypto::{INFO_CHUNK, INFO_MSG, Identity, PeerCrypto, seeded_rng};
use dmp_core::proto::dftp::{
    DftpReceiver, DftpSender, RecvConfig, RecvOut, SendConfig, SendOut, chunk_aad, object_digest,
};
use dmp_core::proto::dftp_msg::{ChunkMsg, Offer, chunk_object_name, parse_chunk_object_name};
use dmp_core::proto::mailbox::{Link, LinkConfig, Op, OpResult, Output, msg_name};
use dmp_core::wire::{Envelope, FLAG_ENCRYPTED, Kind, sha256};
use std::collections::BTreeMap;
use std::time::Duration;

// ---------------------------------------------------------------------------
// A tiny store and drivers

fn pid(s: &str) -> PeerId {
    PeerId::new(s).expect("valid id")
}

fn ident(name: &str) -> Identity {
    Identity::from_seed(format!("{name} seed for the security tests....").as_bytes())
}

/// `me`'s keys for talking to `peer`.
fn crypto(me: &str, peer: &str) -> PeerCrypto {
    PeerCrypto::new(ident(me), ident(peer).public().clone(), seeded_rng(fastrand::u64(..)))
}

/// Objects by key; every operation succeeds at once.
#[derive(Clone, Default)]
struct Mem {
    objs: BTreeMap<String, Vec<u8>>,
}

impl Mem {
    fn perform(&mut self, op: Op) -> OpResult {
        match op {
            Op::List(k) => {
                let p = format!("{}/", k.as_str());
                let mut names: Vec<String> = Vec::new();
                for key in self.objs.keys().filter(|key| key.starts_with(&p)) {
                    let n = key[p.len()..].split('/').next().unwrap_or_default().to_owned();
                    if names.last() != Some(&n) {
                        names.push(n);
                    }
                }
                OpResult::Listed(k, Ok(names))
            }
            Op::Get(k, _) => {
                let v = self.objs.get(k.as_str()).cloned();
                OpResult::Got(k, Ok(v))
            }
            Op::Put(k, data) => {
                self.objs.insert(k.as_str().to_owned(), data.to_vec());
                OpResult::Put(k, Ok(()))
            }
            Op::Delete(k) => {
                self.objs.remove(k.as_str());
                OpResult::Deleted(k, Ok(()))
            }
        }
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.objs.get(key).unwrap_or_else(|| panic!("{key} is not in the store: {:?}", self.keys())).clone()
    }

    fn put(&mut self, key: &str, data: Vec<u8>) {
        self.objs.insert(key.to_owned(), data);
    }

    fn keys(&self) -> Vec<String> {
        self.objs.keys().cloned().collect()
    }

    /// Keys below `dir/` whose name ends with `suffix`.
    fn names(&self, dir: &str, suffix: &str) -> Vec<String> {
        let p = format!("{dir}/");
        self.objs.keys().filter(|k| k.starts_with(&p) && k.ends_with(suffix)).cloned().collect()
    }
}

/// What a link did in one [`Party::step`], apart from store operations.
#[derive(Default, Debug)]
struct Seen {
    delivered: Vec<Envelope>,
    rejected: Vec<(String, String)>,
    acked: Vec<u64>,
}

impl Seen {
    fn rejected(&self, key: &str) -> bool {
        self.rejected.iter().any(|(k, _)| k == key)
    }
}

/// One party: a link and a clock.
struct Party {
    link: Link,
    now: Duration,
}

fn secure() -> LinkConfig {
    LinkConfig { secure: true, ..LinkConfig::default() }
}

impl Party {
    /// A fresh link of `me` towards `peer` with session `session`, keys set.
    fn new(me: &str, peer: &str, session: u64, mem: &mut Mem) -> Party {
        Party::with_crypto(me, peer, session, crypto(me, peer), mem)
    }

    fn with_crypto(me: &str, peer: &str, session: u64, c: PeerCrypto, mem: &mut Mem) -> Party {
        let mut p = Party { link: Link::new(pid(me), pid(peer), secure(), None, session), now: Duration::ZERO };
        assert!(p.link.needs_key());
        p.run(mem);
        // What the keys set off is done at the next step.
        p.link.set_crypto(p.now, c);
        p
    }

    /// Performs every operation asked for until the link is quiet.
    fn run(&mut self, mem: &mut Mem) -> Seen {
        let mut seen = Seen::default();
        loop {
            let outs = self.link.take_outputs();
            if outs.is_empty() {
                return seen;
            }
            for o in outs {
                match o {
                    Output::Op(op) => {
                        let r = mem.perform(op);
                        self.link.on_result(self.now, r);
                    }
                    Output::Deliver(env) => seen.delivered.push(env),
                    Output::Rejected { key, reason } => seen.rejected.push((key.to_string(), reason)),
                    Output::Acked(n) => seen.acked.push(n),
                    Output::Persist => {}
                }
            }
        }
    }

    /// Moves the clock past every back-off, wakes the link and runs it;
    /// commits whatever was delivered.
    fn step(&mut self, mem: &mut Mem) -> Seen {
        self.now += Duration::from_secs(10);
        self.link.wake(self.now);
        let seen = self.run(mem);
        if let Some(last) = seen.delivered.last() {
            self.link.commit(self.now, last.seq);
            let more = self.run(mem);
            assert!(more.delivered.is_empty());
        }
        seen
    }

    /// A few steps, merged.
    fn steps(&mut self, mem: &mut Mem, n: usize) -> Seen {
        let mut all = Seen::default();
        for _ in 0..n {
            let s = self.step(mem);
            all.delivered.extend(s.delivered);
            all.rejected.extend(s.rejected);
            all.acked.extend(s.acked);
        }
        all
    }
}

const ALICE_SESSION: u64 = 0x0000_1000_0000_0001;

fn msg_key(from: &str, to: &str, session: u64, seq: u64) -> String {
    format!("{from}/{to}/{}", msg_name(session, seq))
}

/// Alice has written message 1 (`payload`) and her head for bob.
fn alice_sent(payload: &[u8]) -> (Mem, Party) {
    let mut mem = Mem::default();
    let mut alice = Party::new("alice", "bob", ALICE_SESSION, &mut mem);
    alice.link.send(alice.now, Kind::Ping, payload.to_vec());
    alice.step(&mut mem);
    assert!(mem.objs.contains_key(&msg_key("alice", "bob", ALICE_SESSION, 1)), "{:?}", mem.keys());
    assert!(mem.objs.contains_key("alice/bob/head"), "{:?}", mem.keys());
    (mem, alice)
}

// ---------------------------------------------------------------------------
// Flipped bytes

/// Recomputes both checksums of an envelope after tampering, with the
/// lengths of the original (what an attacker who can write the store does
/// to get past the checksums).
fn rechecksum(orig: &[u8], bytes: &mut [u8]) {
    let (s, r) = (orig[7] as usize, orig[8] as usize);
    let p = u32::from_be_bytes(orig[36..40].try_into().expect("4 bytes")) as usize;
    let start = 72 + s + r;
    if bytes.len() >= start + p + 32 {
        let h = sha256(&bytes[start..start + p]);
        bytes[40..72].copy_from_slice(&h);
    }
    let n = bytes.len();
    let h = sha256(&bytes[..n - 32]);
    bytes[n - 32..].copy_from_slice(&h);
}

/// Every copy of `orig` with one byte changed: flipped as is (all bits),
/// and flipped by one bit with both checksums recomputed.
fn flipped_envelopes(orig: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..orig.len() {
        let mut raw = orig.to_vec();
        raw[i] ^= 0xff;
        out.push((format!("byte {i} flipped"), raw));
        let mut forged = orig.to_vec();
        forged[i] ^= 0x01;
        rechecksum(orig, &mut forged);
        if forged != orig {
            out.push((format!("bit 0 of byte {i} flipped, checksums recomputed"), forged));
        }
    }
    assert!(out.len() > orig.len(), "{} variants of {} bytes", out.len(), orig.len());
    out
}

#[test]
fn every_flipped_byte_of_a_message_is_never_delivered() {
    let payload = b"hello bob, this is alice";
    let (mem, _alice) = alice_sent(payload);
    let key = msg_key("alice", "bob", ALICE_SESSION, 1);
    let orig = mem.get(&key);
    let bob_crypto = crypto("bob", "alice");
    let variants = flipped_envelopes(&orig);
    for (what, bad) in &variants {
        let mut m = mem.clone();
        m.put(&key, bad.clone());
        let mut bob = Party::with_crypto("bob", "alice", 7, bob_crypto.clone(), &mut m);
        let seen = bob.steps(&mut m, 3);
        assert!(seen.delivered.is_empty(), "{what}: delivered {:?}", seen.delivered);
        assert!(seen.rejected(&key), "{what}: not rejected: {:?}", seen.rejected);
        assert_eq!(bob.link.state().committed, 0, "{what}");
    }
    // The original, once it is back, is delivered exactly once.
    let mut m = mem.clone();
    let mut bob = Party::with_crypto("bob", "alice", 7, bob_crypto, &mut m);
    let seen = bob.steps(&mut m, 3);
    assert_eq!(seen.delivered.len(), 1);
    assert_eq!(seen.delivered[0].payload, payload);
    eprintln!("{} altered copies of a {}-byte message refused", variants.len(), orig.len());
}

#[test]
fn every_flipped_byte_of_a_head_is_never_used() {
    let (mem, _alice) = alice_sent(b"behind the head");
    let key = "alice/bob/head";
    let orig = mem.get(key);
    let bob_crypto = crypto("bob", "alice");
    for (what, bad) in flipped_envelopes(&orig) {
        let mut m = mem.clone();
        m.put(key, bad);
        let mut bob = Party::with_crypto("bob", "alice", 7, bob_crypto.clone(), &mut m);
        let seen = bob.steps(&mut m, 3);
        assert!(seen.rejected(key), "{what}: not rejected: {:?}", seen.rejected);
        assert_eq!(bob.link.state().peer_session, None, "{what}: the session was entered");
        assert!(seen.delivered.is_empty(), "{what}: delivered {:?}", seen.delivered);
    }
    let mut m = mem.clone();
    let mut bob = Party::with_crypto("bob", "alice", 7, bob_crypto, &mut m);
    assert_eq!(bob.steps(&mut m, 3).delivered.len(), 1);
}

#[test]
fn every_flipped_byte_of_an_ack_is_never_used() {
    let (mut mem, mut alice) = alice_sent(b"please ack");
    let mut bob = Party::new("bob", "alice", 7, &mut mem);
    assert_eq!(bob.steps(&mut mem, 2).delivered.len(), 1);
    let key = "bob/alice/ack";
    let orig = mem.get(key);
    let msg = msg_key("alice", "bob", ALICE_SESSION, 1);
    // Alice reads each altered ack: none counts, her message stays.
    for (what, bad) in flipped_envelopes(&orig) {
        mem.put(key, bad);
        let seen = alice.step(&mut mem);
        assert!(seen.acked.is_empty(), "{what}: acknowledged {:?}", seen.acked);
        assert!(seen.rejected(key), "{what}: not rejected: {:?}", seen.rejected);
        assert_eq!(alice.link.state().acked, 0, "{what}");
        assert!(mem.objs.contains_key(&msg), "{what}: the message was deleted");
    }
    mem.put(key, orig);
    let seen = alice.step(&mut mem);
    assert_eq!(seen.acked, vec![1]);
    assert!(!mem.objs.contains_key(&msg), "an acknowledged message is deleted");
}

// ---------------------------------------------------------------------------
// Third parties, other recipients

/// An envelope from `sender` to `recipient`, sealed with `c` (`None`: plaintext).
fn envelope(kind: Kind, sender: &str, recipient: &str, session: u64, seq: u64, base: u64, payload: &[u8]) -> Envelope {
    Envelope {
        flags: 0,
        kind,
        sender: pid(sender),
        recipient: pid(recipient),
        session,
        seq,
        base,
        payload: payload.to_vec(),
    }
}

fn seal(c: Option<&PeerCrypto>, mut env: Envelope) -> Vec<u8> {
    if let Some(c) = c {
        env.flags |= FLAG_ENCRYPTED;
        env.payload = c.seal(INFO_MSG, &env.aad(), &env.payload);
    }
    env.encode()
}

/// Writes a head and message 1 into alice's outbox towards bob, sealed with
/// `c` and addressed to `recipient`.
fn plant(mem: &mut Mem, c: Option<&PeerCrypto>, recipient: &str, payload: &[u8]) {
    let s = ALICE_SESSION;
    mem.put("alice/bob/head", seal(c, envelope(Kind::Head, "alice", recipient, s, 1, 1, b"")));
    mem.put(&msg_key("alice", "bob", s, 1), seal(c, envelope(Kind::Ping, "alice", recipient, s, 1, 1, payload)));
}

/// Bob, who knows alice's real key, reads what was planted: nothing is delivered.
#[track_caller]
fn bob_refuses_everything(mem: &mut Mem, what: &str) -> Seen {
    let mut bob = Party::new("bob", "alice", 7, mem);
    let seen = bob.steps(mem, 4);
    assert!(seen.delivered.is_empty(), "{what}: delivered {:?}", seen.delivered);
    assert!(seen.rejected("alice/bob/head"), "{what}: head not rejected: {:?}", seen.rejected);
    assert_eq!(bob.link.state().committed, 0);
    seen
}

#[test]
fn a_message_sealed_by_a_third_party_is_rejected() {
    // Mallory seals to bob with her own key, claiming to be alice.
    let mallory = PeerCrypto::new(ident("mallory"), ident("bob").public().clone(), seeded_rng(1));
    let mut mem = Mem::default();
    plant(&mut mem, Some(&mallory), "bob", b"pay mallory");
    let seen = bob_refuses_everything(&mut mem, "mallory's head and message");
    assert!(seen.rejected.iter().any(|(_, r)| r.contains("authentication")), "{:?}", seen.rejected);

    // Mallory's message behind alice's real head: fetched, never delivered.
    let (mut mem, _alice) = alice_sent(b"from alice");
    let key = msg_key("alice", "bob", ALICE_SESSION, 1);
    mem.put(&key, seal(Some(&mallory), envelope(Kind::Ping, "alice", "bob", ALICE_SESSION, 1, 1, b"pay mallory")));
    let mut bob = Party::new("bob", "alice", 7, &mut mem);
    let seen = bob.steps(&mut mem, 4);
    assert!(seen.delivered.is_empty(), "delivered {:?}", seen.delivered);
    assert!(seen.rejected(&key), "{:?}", seen.rejected);

    // And plaintext, which anyone can write, is refused on a secure link.
    let mut mem = Mem::default();
    plant(&mut mem, None, "bob", b"pay mallory");
    let seen = bob_refuses_everything(&mut mem, "plaintext");
    assert!(seen.rejected.iter().any(|(_, r)| r.contains("plaintext")), "{:?}", seen.rejected);
}

#[test]
fn a_message_for_another_recipient_is_rejected() {
    let to_carol = crypto("alice", "carol");
    // Addressed and sealed to carol, dropped into alice's outbox towards bob.
    let mut mem = Mem::default();
    plant(&mut mem, Some(&to_carol), "carol", b"for carol only");
    let seen = bob_refuses_everything(&mut mem, "addressed to carol");
    assert!(seen.rejected.iter().any(|(_, r)| r.contains("carol")), "{:?}", seen.rejected);

    // Addressed to bob but sealed to carol's key.
    let mut mem = Mem::default();
    plant(&mut mem, Some(&to_carol), "bob", b"for carol only");
    bob_refuses_everything(&mut mem, "sealed to carol");

    // Alice's real files for carol, copied into her outbox towards bob.
    let mut mem = Mem::default();
    let mut alice = Party::new("alice", "carol", ALICE_SESSION, &mut mem);
    alice.link.send(alice.now, Kind::Ping, b"for carol only".to_vec());
    alice.step(&mut mem);
    for k in mem.names("alice/carol", "") {
        let v = mem.get(&k);
        mem.put(&k.replace("alice/carol/", "alice/bob/"), v);
    }
    bob_refuses_everything(&mut mem, "copied from alice/carol");
    // Carol herself reads them.
    let mut carol = Party::new("carol", "alice", 9, &mut mem);
    assert_eq!(carol.steps(&mut mem, 3).delivered.len(), 1);
}

// ---------------------------------------------------------------------------
// Replays

#[test]
fn old_messages_copied_back_are_ignored() {
    let mut mem = Mem::default();
    let mut alice = Party::new("alice", "bob", ALICE_SESSION, &mut mem);
    let mut bob = Party::new("bob", "alice", 7, &mut mem);
    let mut saved: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 1..=3u8 {
        alice.link.send(alice.now, Kind::Ping, vec![i; 10]);
        alice.step(&mut mem);
        let k = msg_key("alice", "bob", ALICE_SESSION, i as u64);
        saved.push((k.clone(), mem.get(&k)));
    }
    let old_head = mem.get("alice/bob/head");
    assert_eq!(bob.steps(&mut mem, 2).delivered.len(), 3);
    alice.steps(&mut mem, 2);
    assert_eq!(alice.link.state().acked, 3);
    assert!(mem.names("alice/bob", ".msg").is_empty(), "acknowledged messages are deleted");

    // Copied back under their own names, with the old head: ignored.
    for (k, v) in &saved {
        mem.put(k, v.clone());
    }
    mem.put("alice/bob/head", old_head);
    let seen = bob.steps(&mut mem, 3);
    assert!(seen.delivered.is_empty(), "replayed: {:?}", seen.delivered);

    // An old message under the next expected name: refused, as is, and
    // with its sequence number rewritten and the checksums recomputed.
    let next = msg_key("alice", "bob", ALICE_SESSION, 4);
    let old = saved[0].1.clone();
    let mut moved = old.clone();
    moved[20..28].copy_from_slice(&4u64.to_be_bytes());
    rechecksum(&old, &mut moved);
    for (what, bytes) in [("as is", old), ("renumbered", moved)] {
        mem.put(&next, bytes);
        let seen = bob.steps(&mut mem, 2);
        assert!(seen.delivered.is_empty(), "{what}: delivered {:?}", seen.delivered);
        assert!(seen.rejected(&next), "{what}: {:?}", seen.rejected);
    }
    mem.objs.remove(&next);

    // Alice's next real message is delivered, once.
    alice.link.send(alice.now, Kind::Ping, b"four".to_vec());
    alice.step(&mut mem);
    let seen = bob.steps(&mut mem, 3);
    assert_eq!(seen.delivered.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), vec![b"four".to_vec()]);
}

#[test]
fn an_earlier_session_copied_back_is_ignored() {
    let mut mem = Mem::default();
    let mut alice = Party::new("alice", "bob", ALICE_SESSION, &mut mem);
    let mut bob = Party::new("bob", "alice", 7, &mut mem);
    alice.link.send(alice.now, Kind::Ping, b"old session".to_vec());
    alice.step(&mut mem);
    let old: Vec<(String, Vec<u8>)> =
        mem.names("alice/bob", "").into_iter().map(|k| (k.clone(), mem.get(&k))).collect();
    assert_eq!(bob.steps(&mut mem, 2).delivered.len(), 1);

    // Alice starts over (lost her state): a newer session.
    let mut alice2 = Party::new("alice", "bob", ALICE_SESSION + 1000, &mut mem);
    alice2.link.send(alice2.now, Kind::Ping, b"new 1".to_vec());
    alice2.step(&mut mem);
    assert_eq!(bob.steps(&mut mem, 2).delivered.len(), 1);
    assert_eq!(bob.link.state().peer_session, Some(ALICE_SESSION + 1000));

    // The whole old session copied back, head included: ignored.
    for (k, v) in &old {
        mem.put(k, v.clone());
    }
    let seen = bob.steps(&mut mem, 3);
    assert!(seen.delivered.is_empty(), "replayed: {:?}", seen.delivered);
    assert_eq!(bob.link.state().peer_session, Some(ALICE_SESSION + 1000));
    // The current session still flows (alice rewrites her head).
    mem.objs.remove("alice/bob/head");
    alice2.link.send(alice2.now, Kind::Ping, b"new 2".to_vec());
    alice2.steps(&mut mem, 2);
    let seen = bob.steps(&mut mem, 3);
    assert_eq!(seen.delivered.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), vec![b"new 2".to_vec()]);
}

// ---------------------------------------------------------------------------
// Chunks

/// A DFTP sender (alice) and receiver (bob) of `src` over a [`Mem`], with
/// every write of the receiver checked against the source.
struct Transfer {
    mem: Mem,
    snd: DftpSender,
    rcv: DftpReceiver,
    src: Vec<u8>,
    part: Vec<u8>,
    now: Duration,
    rejected: Vec<(String, String)>,
    failed: Vec<String>,
    finished: bool,
}

const BLOCK: u64 = 64;

impl Transfer {
    fn new(src: Vec<u8>) -> Transfer {
        let offer = Offer {
            transfer: "00000000000000c1".into(),
            name: "data.bin".into(),
            size: src.len() as u64,
            block_size: BLOCK,
        };
        // Window 4: two sealed objects (2 × 124 bytes) fit in 4 × 64 bytes.
        let scfg = SendConfig { block_size: BLOCK, window: 4, quota: u64::MAX, link: secure() };
        // Never give up on a bad chunk: the test retries for a long (simulated) time.
        let rcfg =
            RecvConfig { bad_chunk_timeout: Duration::from_secs(1 << 40), link: secure(), ..RecvConfig::default() };
        let now = Duration::ZERO;
        let mut t = Transfer {
            mem: Mem::default(),
            snd: DftpSender::new(pid("alice"), pid("bob"), scfg, offer, None, ALICE_SESSION, now),
            rcv: DftpReceiver::new(pid("bob"), pid("alice"), rcfg, None, 7, now),
            src,
            part: Vec::new(),
            now,
            rejected: Vec::new(),
            failed: Vec::new(),
            finished: false,
        };
        t.snd.set_crypto(now, crypto("alice", "bob"));
        t.rcv.set_crypto(now, crypto("bob", "alice"));
        t
    }

    fn sender(&mut self) {
        self.now += Duration::from_secs(10);
        self.snd.wake(self.now);
        loop {
            let outs = self.snd.take_outputs();
            if outs.is_empty() {
                return;
            }
            for o in outs {
                match o {
                    SendOut::Op(op) => {
                        let r = self.mem.perform(op);
                        self.snd.on_result(self.now, r);
                    }
                    SendOut::Read { index, offset, len } => {
                        let d = Bytes::copy_from_slice(&self.src[offset as usize..(offset + len) as usize]);
                        self.snd.on_read(self.now, index, Ok(d));
                    }
                    SendOut::Refused(r) | SendOut::Aborted(r) | SendOut::Failed(r) => {
                        self.failed.push(format!("sender: {r}"))
                    }
                    SendOut::Rejected { key, reason } => self.rejected.push((key.to_string(), reason)),
                    _ => {}
                }
            }
        }
    }

    fn receiver(&mut self) {
        self.now += Duration::from_secs(10);
        self.rcv.wake(self.now);
        loop {
            let outs = self.rcv.take_outputs();
            if outs.is_empty() {
                return;
            }
            for o in outs {
                let now = self.now;
                match o {
                    RecvOut::Op(op) => {
                        let r = self.mem.perform(op);
                        self.rcv.on_result(now, r);
                    }
                    RecvOut::Prepare { .. } => self.rcv.on_prepared(now, Ok(())),
                    RecvOut::Write { index, offset, data } => {
                        let (o, n) = (offset as usize, data.len());
                        assert_eq!(
                            &data[..],
                            &self.src[o..o + n],
                            "the receiver writes corrupt data for chunk {index}"
                        );
                        assert_eq!(o, self.part.len(), "chunk {index} written out of order");
                        self.part.extend_from_slice(&data);
                        self.rcv.on_written(now, index, Ok(()));
                    }
                    RecvOut::ReadBack { offset, len } => {
                        let d = Bytes::copy_from_slice(&self.part[offset as usize..(offset + len) as usize]);
                        self.rcv.on_read_back(now, Ok(d));
                    }
                    RecvOut::Finalize { .. } => self.rcv.on_finalized(now, Ok(())),
                    RecvOut::Finished { .. } => self.finished = true,
                    RecvOut::Refused(r) | RecvOut::GaveUp(r) | RecvOut::Failed(r) => {
                        self.failed.push(format!("receiver: {r}"))
                    }
                    RecvOut::Rejected { key, reason } => self.rejected.push((key.to_string(), reason)),
                    RecvOut::KeepsFailing { .. } => {}
                    RecvOut::PeerStopped(r) => self.failed.push(format!("sender stopped: {r}")),
                    RecvOut::Persist | RecvOut::Discard { .. } | RecvOut::StoreError(_) => {}
                }
            }
        }
    }

    /// Chunk objects in alice's outbox: index → key.
    fn objects(&self) -> BTreeMap<u64, String> {
        self.mem
            .names("alice/bob", ".chunk")
            .into_iter()
            .map(|k| (parse_chunk_object_name(k.rsplit('/').next().expect("name")).expect("chunk name").0, k))
            .collect()
    }

    fn run_to_end(&mut self) {
        for _ in 0..200 {
            if self.finished && self.snd.is_finished() {
                break;
            }
            self.sender();
            self.receiver();
        }
        assert!(self.failed.is_empty(), "{:?}", self.failed);
        assert!(self.finished && self.snd.is_finished(), "the transfer did not finish");
        assert_eq!(self.part, self.src, "received file");
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[i % 36]).collect()
}

/// The offer and the accept have gone through; a window of chunks (0 to 3)
/// sits in the store, unread.
fn chunks_staged(size: usize) -> Transfer {
    let mut t = Transfer::new(pattern(size));
    t.sender(); // offer
    t.receiver(); // accept
    t.sender(); // chunks 0 to 3
    assert_eq!(t.objects().keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3], "{:?}", t.mem.keys());
    assert!(t.part.is_empty());
    t
}

#[test]
fn every_flipped_byte_of_a_chunk_is_never_written() {
    let mut t = chunks_staged(200);
    let objects = t.objects();
    let key = objects[&0].clone();
    let orig = t.mem.get(&key);
    let mut variants = Vec::new();
    for i in 0..orig.len() {
        for x in [0x01u8, 0xff] {
            let mut bad = orig.clone();
            bad[i] ^= x;
            variants.push((format!("byte {i} ^ {x:#x}"), bad));
        }
    }
    variants.push(("truncated".into(), orig[..orig.len() - 1].to_vec()));
    variants.push(("chunk 1's object".into(), t.mem.get(&objects[&1])));
    // Mallory seals a chunk for bob, bound as alice's chunk 0 of this transfer.
    let mallory = PeerCrypto::new(ident("mallory"), ident("bob").public().clone(), seeded_rng(5));
    let aad = chunk_aad(&pid("alice"), &pid("bob"), "00000000000000c1", 0, BLOCK);
    variants.push(("sealed by mallory".into(), mallory.seal(INFO_CHUNK, &aad, &t.src[..BLOCK as usize])));
    // Alice's own seal of other data, or of chunk 0 of another transfer.
    let alice = crypto("alice", "bob");
    variants.push(("other data".into(), alice.seal(INFO_CHUNK, &aad, &[b'x'; BLOCK as usize])));
    let other = chunk_aad(&pid("alice"), &pid("bob"), "00000000000000c2", 0, BLOCK);
    variants.push(("another transfer".into(), alice.seal(INFO_CHUNK, &other, &t.src[..BLOCK as usize])));
    for (what, bad) in &variants {
        t.rejected.clear();
        t.mem.put(&key, bad.clone());
        t.receiver();
        assert!(t.part.is_empty(), "{what}: written");
        assert!(t.rejected.iter().any(|(k, _)| *k == key), "{what}: not rejected: {:?}", t.rejected);
        assert!(t.failed.is_empty(), "{what}: {:?}", t.failed);
    }
    eprintln!("{} altered copies of a {}-byte chunk object refused", variants.len(), orig.len());
    t.mem.put(&key, orig);
    t.run_to_end();
}

#[test]
fn a_chunk_message_sealed_by_a_third_party_is_rejected() {
    // Mallory publishes her own chunk 0 (object and message, under a name
    // that matches), claiming to be alice; alice's own are not there yet.
    let mut t = Transfer::new(pattern(200));
    t.sender();
    t.receiver();
    // Alice's link has written seq 1 (offer); her chunk message would be seq 2.
    let mallory = PeerCrypto::new(ident("mallory"), ident("bob").public().clone(), seeded_rng(6));
    let data = vec![b'M'; BLOCK as usize];
    let aad = chunk_aad(&pid("alice"), &pid("bob"), "00000000000000c1", 0, BLOCK);
    let object = mallory.seal(INFO_CHUNK, &aad, &data);
    let digest = object_digest(&object, true);
    let name = chunk_object_name(0, &digest);
    let msg = ChunkMsg {
        transfer: "00000000000000c1".into(),
        index: 0,
        offset: 0,
        len: BLOCK,
        sha256: digest,
        object: name.clone(),
    };
    let body = serde_json::to_vec(&msg).expect("json");
    let session = t.snd.link().state().session;
    let seq = t.snd.link().state().next_seq;
    t.mem.put(&format!("alice/bob/{name}"), object);
    let mkey = msg_key("alice", "bob", session, seq);
    t.mem.put(&mkey, seal(Some(&mallory), envelope(Kind::Chunk, "alice", "bob", session, seq, 1, &body)));
    for _ in 0..3 {
        t.receiver();
    }
    assert!(t.part.is_empty(), "mallory's chunk was written");
    assert!(t.rejected.iter().any(|(k, _)| *k == mkey), "{:?}", t.rejected);
    // Alice's real chunk message replaces the forgery (as a late sync would).
    t.mem.objs.remove(&mkey);
    t.run_to_end();
}

/// Defence in depth: even a chunk message that alice sealed herself cannot
/// pass off an object sealed for another transfer or another index (the
/// seal binds both), although the message's digest matches the object.
#[test]
fn a_chunk_bound_to_another_transfer_or_index_is_refused() {
    let alice = crypto("alice", "bob");
    let src = pattern(200);
    let chunk0 = &src[..BLOCK as usize];
    for (what, transfer, index) in
        [("another transfer", "00000000000000c2", 0), ("another index", "00000000000000c1", 1)]
    {
        let mut t = Transfer::new(src.clone());
        t.sender();
        t.receiver();
        let aad = chunk_aad(&pid("alice"), &pid("bob"), transfer, index, BLOCK);
        let object = alice.seal(INFO_CHUNK, &aad, chunk0);
        let digest = object_digest(&object, true);
        let name = chunk_object_name(0, &digest);
        let msg = ChunkMsg {
            transfer: "00000000000000c1".into(),
            index: 0,
            offset: 0,
            len: BLOCK,
            sha256: digest,
            object: name.clone(),
        };
        let body = serde_json::to_vec(&msg).expect("json");
        let (session, seq) = (t.snd.link().state().session, t.snd.link().state().next_seq);
        let okey = format!("alice/bob/{name}");
        t.mem.put(&okey, object);
        let mkey = msg_key("alice", "bob", session, seq);
        t.mem.put(&mkey, seal(Some(&alice), envelope(Kind::Chunk, "alice", "bob", session, seq, 1, &body)));
        for _ in 0..3 {
            t.receiver();
        }
        assert!(t.part.is_empty(), "{what}: written");
        assert!(t.rejected.iter().any(|(k, r)| *k == okey && r.contains("authentication")), "{what}: {:?}", t.rejected);
    }
}

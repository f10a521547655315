//! Unit tests of the DFTP machines: a sender and a receiver driven in
//! lock-step over an in-memory store (each operation answered at once),
//! with time advanced by hand, chunk objects corrupted on demand and the
//! receiver restarted from its saved state.

use super::*;
use crate::proto::dftp_msg;

fn pid(s: &str) -> PeerId {
    PeerId::new(s).expect("valid id")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const BLOCK: u64 = 1024;

/// Both parties, the store between them and what each reported.
struct World {
    now: Duration,
    objects: BTreeMap<String, Vec<u8>>,
    /// Chunk objects of this index are served with one byte flipped.
    corrupt: Option<u64>,
    data: Vec<u8>,
    s: Option<DftpSender>,
    r: Option<DftpReceiver>,
    /// The receiver's temporary file; `None` once removed.
    part: Option<Vec<u8>>,
    /// The receiver's last saved state.
    saved: Option<ReceiverState>,
    /// What the machines reported (outputs other than operations and file work).
    sent: Vec<SendOut>,
    recvd: Vec<RecvOut>,
    /// Every operation the receiver asked for, with its time.
    recv_ops: Vec<(Duration, Op)>,
    /// The sender is stopped (SIGSTOP): it neither acts nor wakes.
    sender_stopped: bool,
    /// The receiver crashes right after saving the `Finished` phase.
    crash_when_finished_saved: bool,
}

impl World {
    fn new(size: usize, rcfg: RecvConfig) -> World {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let offer =
            Offer { transfer: "00000000000000aa".into(), name: "f.bin".into(), size: size as u64, block_size: BLOCK };
        let scfg = SendConfig { block_size: BLOCK, window: 2, quota: u64::MAX, link: LinkConfig::default() };
        let s = DftpSender::new(pid("alice"), pid("bob"), scfg, offer, None, 1, Duration::ZERO);
        let r = DftpReceiver::new(pid("bob"), pid("alice"), rcfg, None, 2, Duration::ZERO);
        World {
            now: Duration::ZERO,
            objects: BTreeMap::new(),
            corrupt: None,
            data,
            s: Some(s),
            r: Some(r),
            part: None,
            saved: None,
            sent: Vec::new(),
            recvd: Vec::new(),
            recv_ops: Vec::new(),
            sender_stopped: false,
            crash_when_finished_saved: false,
        }
    }

    fn perform(&mut self, op: Op) -> OpResult {
        match op {
            Op::Put(k, d) => {
                self.objects.insert(k.as_str().to_owned(), d.to_vec());
                OpResult::Put(k, Ok(()))
            }
            Op::Get(k, _) => {
                let mut v = self.objects.get(k.as_str()).cloned();
                let index = dftp_msg::parse_chunk_object_name(k.name()).map(|(i, _)| i);
                if let (Some(b), true) = (v.as_mut(), index.is_some() && index == self.corrupt) {
                    b[0] ^= 0xff;
                }
                OpResult::Got(k, Ok(v))
            }
            Op::Delete(k) => {
                self.objects.remove(k.as_str());
                OpResult::Deleted(k, Ok(()))
            }
            Op::List(k) => {
                let p = format!("{}/", k.as_str());
                let names = self
                    .objects
                    .keys()
                    .filter_map(|n| n.strip_prefix(&p))
                    .filter(|n| !n.contains('/'))
                    .map(str::to_owned)
                    .collect();
                OpResult::Listed(k, Ok(names))
            }
        }
    }

    /// Acts on every output of both machines until there is none.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            let outs = match self.s.as_mut() {
                Some(s) if !self.sender_stopped => s.take_outputs(),
                _ => Vec::new(),
            };
            for o in outs {
                any = true;
                let now = self.now;
                match o {
                    SendOut::Op(op) => {
                        let res = self.perform(op);
                        self.s.as_mut().expect("sender").on_result(now, res);
                    }
                    SendOut::Read { index, offset, len } => {
                        let b = Bytes::copy_from_slice(&self.data[offset as usize..(offset + len) as usize]);
                        self.s.as_mut().expect("sender").on_read(now, index, Ok(b));
                    }
                    SendOut::Persist => {}
                    other => self.sent.push(other),
                }
            }
            let outs = self.r.as_mut().map(|r| r.take_outputs()).unwrap_or_default();
            for o in outs {
                any = true;
                let now = self.now;
                fn r(w: &mut World) -> &mut DftpReceiver {
                    w.r.as_mut().expect("receiver")
                }
                match o {
                    RecvOut::Op(op) => {
                        self.recv_ops.push((now, op.clone()));
                        let res = self.perform(op);
                        r(self).on_result(now, res);
                    }
                    RecvOut::Persist => {
                        let st = r(self).snapshot();
                        let crash = self.crash_when_finished_saved && st.phase == RecvPhase::Finished;
                        self.saved = Some(st);
                        if crash {
                            self.crash_when_finished_saved = false;
                            self.r = None;
                            break;
                        }
                    }
                    RecvOut::Prepare { resume, .. } => {
                        let res = match (resume, &self.part) {
                            (false, _) => {
                                self.part = Some(Vec::new());
                                Ok(())
                            }
                            (true, Some(_)) => Ok(()),
                            (true, None) => Err("the partial file .dftp-00000000000000aa.part is gone".into()),
                        };
                        r(self).on_prepared(now, res);
                    }
                    RecvOut::Write { index, offset, data } => {
                        let f = self.part.as_mut().expect("partial file");
                        let end = offset as usize + data.len();
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[offset as usize..end].copy_from_slice(&data);
                        r(self).on_written(now, index, Ok(()));
                    }
                    RecvOut::ReadBack { offset, len } => {
                        let f = self.part.as_ref().expect("partial file");
                        let b = Bytes::copy_from_slice(&f[offset as usize..(offset + len) as usize]);
                        r(self).on_read_back(now, Ok(b));
                    }
                    RecvOut::Finalize { .. } => {
                        self.part = None;
                        r(self).on_finalized(now, Ok(()));
                    }
                    other => self.recvd.push(other),
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Runs for `d` in steps of 10 ms, waking both machines at each.
    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.now < until {
            self.settle();
            self.now += ms(10);
            let now = self.now;
            if let Some(s) = self.s.as_mut().filter(|_| !self.sender_stopped) {
                s.wake(now);
            }
            if let Some(r) = self.r.as_mut() {
                r.wake(now);
            }
        }
        self.settle();
    }

    /// Runs until `done` holds (at most a minute of machine time).
    fn run_until(&mut self, what: &str, done: impl Fn(&World) -> bool) {
        for _ in 0..6000 {
            if done(self) {
                return;
            }
            self.run_for(ms(10));
        }
        panic!("{what}: not reached; sender {:?}, receiver {:?}", self.sent, self.recvd);
    }

    /// The receiver restarts from its saved state.
    fn restart_receiver(&mut self, rcfg: RecvConfig) {
        let saved = self.saved.clone();
        self.r = Some(DftpReceiver::new(pid("bob"), pid("alice"), rcfg, saved, 3, self.now));
        self.recv_ops.clear();
    }

    fn written(&self) -> u64 {
        self.part.as_ref().map_or(0, |f| f.len() as u64)
    }
}

/// A chunk object that keeps failing verification: one warning naming its
/// key at the 5th failure, then, past the bad-chunk timeout, the receiver
/// gives up and the sender learns why from its (not resumable) abort.
#[test]
fn a_receiver_that_gives_up_on_a_bad_chunk_tells_the_sender() {
    let rcfg = RecvConfig { bad_chunk_timeout: Duration::from_secs(3), ..RecvConfig::default() };
    let mut w = World::new(5 * BLOCK as usize, rcfg);
    w.corrupt = Some(1);
    w.run_until("the receiver gives up", |w| w.recvd.iter().any(|o| matches!(o, RecvOut::GaveUp(_))));
    let warned: Vec<&Key> = w
        .recvd
        .iter()
        .filter_map(|o| if let RecvOut::KeepsFailing { key, .. } = o { Some(key) } else { None })
        .collect();
    assert_eq!(warned.len(), 1, "one warning for the chunk: {:?}", w.recvd);
    assert_eq!(dftp_msg::parse_chunk_object_name(warned[0].name()).map(|(i, _)| i), Some(1), "{}", warned[0]);
    assert!(warned[0].as_str().starts_with("alice/bob/"), "the key in the store: {}", warned[0]);
    let rejected_before_warning = w
        .recvd
        .iter()
        .take_while(|o| !matches!(o, RecvOut::KeepsFailing { .. }))
        .filter(|o| matches!(o, RecvOut::Rejected { .. }))
        .count();
    assert_eq!(rejected_before_warning, WARN_AFTER_FAILS as usize, "the warning follows the 5th rejection");
    let Some(RecvOut::GaveUp(reason)) = w.recvd.iter().find(|o| matches!(o, RecvOut::GaveUp(_))).cloned() else {
        panic!()
    };
    assert!(reason.contains("chunk 1") && reason.contains("retries"), "{reason}");
    assert!(w.r.as_ref().unwrap().gave_up());
    w.run_until("the sender hears of it", |w| !w.sent.iter().all(|o| matches!(o, SendOut::Accepted)));
    assert_eq!(w.sent.last(), Some(&SendOut::Aborted(reason.clone())), "{:?}", w.sent);
    assert!(w.s.as_ref().unwrap().is_finished());
    assert!(!w.recvd.iter().any(|o| matches!(o, RecvOut::Failed(_))), "{:?}", w.recvd);
}

/// A receiver resumed after its partial file vanished gives up (it would
/// write a file with a hole) and tells the sender with a clear reason.
#[test]
fn a_resumed_receiver_without_its_partial_file_gives_up_and_tells_the_sender() {
    let rcfg = RecvConfig::default;
    let mut w = World::new(40 * BLOCK as usize, rcfg());
    w.run_until("a few chunks written", |w| w.written() >= 3 * BLOCK);
    w.part = None;
    w.restart_receiver(rcfg());
    w.run_until("the receiver gives up", |w| w.recvd.iter().any(|o| matches!(o, RecvOut::GaveUp(_))));
    let Some(RecvOut::GaveUp(reason)) = w.recvd.last().cloned() else { panic!("{:?}", w.recvd) };
    assert!(reason.starts_with("cannot resume: the partial file") && reason.contains("is gone"), "{reason}");
    w.run_until("the sender hears of it", |w| w.sent.iter().any(|o| matches!(o, SendOut::Aborted(_))));
    assert_eq!(w.sent.last(), Some(&SendOut::Aborted(reason.clone())));
    assert!(w.part.is_none(), "no file written");
}

/// What each side waits for, as a timeout names it.
#[test]
fn waiting_for_names_what_is_due() {
    let rcfg = RecvConfig::default;
    let mut w = World::new(40 * BLOCK as usize, rcfg());
    assert_eq!(w.r.as_ref().unwrap().waiting_for(), "the offer");
    assert_eq!(w.s.as_ref().unwrap().waiting_for(), "an answer to the offer");
    // Chunk 2 keeps failing verification: the receiver waits for it, the
    // sender (window 2) for its acknowledgement.
    w.corrupt = Some(2);
    w.run_until("chunk 2 failing", |w| w.written() >= 2 * BLOCK && !w.recvd.is_empty());
    w.run_for(ms(200));
    let r = w.r.as_ref().unwrap().waiting_for();
    assert!(r.starts_with("chunk 2 of 40, whose object failed"), "{r}");
    let s = w.s.as_ref().unwrap().waiting_for();
    assert_eq!(s, "the acknowledgement of chunk 2");
    w.corrupt = None;
    w.run_until("finished", |w| w.sent.iter().any(|o| matches!(o, SendOut::Finished { .. })));
    assert_eq!(w.r.as_ref().unwrap().waiting_for(), "the acknowledgement of finished");
}

/// A restarted receiver counts what the earlier run wrote apart from what
/// it writes itself; together they are the file.
#[test]
fn a_resumed_receiver_counts_resumed_and_written_bytes() {
    let size = 30 * BLOCK as usize + 5;
    let mut w = World::new(size, RecvConfig::default());
    assert_eq!(w.r.as_ref().unwrap().resumed_bytes, 0);
    w.run_until("a few chunks written", |w| w.written() >= 5 * BLOCK);
    w.restart_receiver(RecvConfig::default());
    let resumed = w.r.as_ref().unwrap().resumed_bytes;
    assert_eq!(resumed, w.saved.as_ref().unwrap().next_index * BLOCK);
    assert!(resumed >= 5 * BLOCK);
    w.run_until("finished", |w| w.recvd.iter().any(|o| matches!(o, RecvOut::Finished { .. })));
    assert_eq!(w.r.as_ref().unwrap().written_bytes + resumed, size as u64);
    assert_eq!(w.part, None);
}

/// The message files the receiver wrote (puts of `<session>-<seq>.msg`).
fn msg_puts(w: &World) -> Vec<String> {
    w.recv_ops
        .iter()
        .filter_map(|(_, op)| match op {
            Op::Put(k, _) if k.name().ends_with(".msg") => Some(k.name().to_owned()),
            _ => None,
        })
        .collect()
}

/// A receiver restarted after it sent `finished` sends nothing again and
/// redoes nothing; while the sender (stopped) does not acknowledge, it reads
/// the sender's head every 0.5 s; once the sender acknowledges, it is done.
#[test]
fn a_receiver_restarted_after_finished_sends_nothing_again() {
    let size = 6 * BLOCK as usize + 1;
    let mut w = World::new(size, RecvConfig::default());
    w.run_until("done sent", |w| w.s.as_ref().unwrap().phase() == SendPhase::DoneSent);
    w.sender_stopped = true;
    assert!(w.sent.iter().all(|o| matches!(o, SendOut::Accepted)), "{:?}", w.sent);
    w.run_until("finished sent", |w| w.recvd.iter().any(|o| matches!(o, RecvOut::Finished { .. })));
    let saved = w.saved.clone().expect("saved");
    assert_eq!(saved.phase, RecvPhase::Finished);
    let seq = saved.finished_seq.expect("the number of finished is saved");
    assert!(!w.r.as_ref().unwrap().last_message_acked());

    w.recvd.clear();
    w.restart_receiver(RecvConfig::default());
    w.run_for(Duration::from_secs(3));
    let r = w.r.as_ref().unwrap();
    assert_eq!(r.snapshot().finished_seq, Some(seq));
    assert!(r.link().recovered() && r.link().unacked() == 1, "finished is still in flight");
    assert!(!r.last_message_acked());
    assert_eq!(msg_puts(&w), Vec::<String>::new(), "nothing sent again");
    assert!(
        !w.recv_ops.iter().any(|(_, op)| matches!(op, Op::Get(k, _) if k.name().ends_with(".chunk"))),
        "nothing fetched again"
    );
    assert_eq!(w.recvd, vec![RecvOut::Finished { sha256: saved.file_sha256.clone().unwrap() }]);
    let heads: Vec<Duration> = w
        .recv_ops
        .iter()
        .filter(|(_, op)| matches!(op, Op::Get(k, _) if k.as_str() == "alice/bob/head"))
        .map(|(t, _)| *t)
        .collect();
    assert!(heads.len() >= 5, "the head is read while waiting: {heads:?}");
    for pair in heads.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= FINISHED_HEAD_EVERY && gap <= FINISHED_HEAD_EVERY + ms(10), "{heads:?}");
    }

    // The sender goes on, reads finished and acknowledges it.
    w.sender_stopped = false;
    w.run_until("acknowledged", |w| w.r.as_ref().unwrap().last_message_acked());
    assert!(w.sent.iter().any(|o| matches!(o, SendOut::Finished { .. })), "{:?}", w.sent);
    assert_eq!(msg_puts(&w), Vec::<String>::new(), "nothing sent again");
}

/// A receiver that crashed after saving `Finished` but before its
/// `finished` reached the store sends it again, once, after a restart.
#[test]
fn a_finished_message_lost_in_a_crash_is_sent_again() {
    let mut w = World::new(3 * BLOCK as usize, RecvConfig::default());
    w.crash_when_finished_saved = true;
    w.run_until("the crash", |w| w.r.is_none());
    assert_eq!(w.saved.as_ref().unwrap().phase, RecvPhase::Finished);
    w.restart_receiver(RecvConfig::default());
    w.run_until("the sender finishes", |w| w.sent.iter().any(|o| matches!(o, SendOut::Finished { .. })));
    w.run_until("acknowledged", |w| w.r.as_ref().unwrap().last_message_acked());
    assert_eq!(msg_puts(&w).len(), 1, "finished sent once again: {:?}", msg_puts(&w));
    assert_eq!(w.saved.as_ref().unwrap().finished_seq, w.r.as_ref().unwrap().snapshot().finished_seq);
}

/// On a slow store (a synced folder: seconds to tens of seconds each way)
/// a finished party waits for the peer's last answer in proportion to how
/// long the peer took to acknowledge its messages, not a fixed 10 s: the
/// receiver's `accept` acknowledged 20 s late makes it wait 80 s for the
/// acknowledgement of `finished`, while on a store that answers at once it
/// waits the least it is given.
#[test]
fn a_finished_receiver_waits_longer_on_a_slow_store() {
    let least = Duration::from_secs(10);
    let mut fast = World::new(4 * BLOCK as usize, RecvConfig::default());
    fast.run_until("acknowledged", |w| w.r.as_ref().unwrap().last_message_acked());
    let r = fast.r.as_ref().unwrap();
    assert!(r.link().slowest_ack().is_some_and(|s| s <= ms(100)), "{:?}", r.link().slowest_ack());
    assert_eq!(finished_wait(least, r.link().slowest_ack()), least);

    let mut slow = World::new(4 * BLOCK as usize, RecvConfig::default());
    slow.run_until("the offer is written", |w| {
        w.objects.keys().any(|k| k.starts_with("alice/bob/") && k.ends_with(".msg"))
    });
    // The sender does not see the accept for 20 s, as through a sync engine.
    slow.sender_stopped = true;
    slow.run_for(Duration::from_secs(20));
    assert_eq!(slow.r.as_ref().unwrap().phase(), RecvPhase::Receiving);
    slow.sender_stopped = false;
    slow.run_until("acknowledged", |w| w.r.as_ref().unwrap().last_message_acked());
    let took = slow.r.as_ref().unwrap().link().slowest_ack().expect("acknowledged");
    assert!(took >= Duration::from_secs(20) && took <= Duration::from_secs(21), "{took:?}");
    assert_eq!(finished_wait(least, Some(took)), took * FINISHED_WAIT_ACKS);
}

#[test]
fn the_finished_wait_is_bounded_both_ways() {
    let least = Duration::from_secs(10);
    assert_eq!(finished_wait(least, None), least);
    assert_eq!(finished_wait(least, Some(ms(3))), least);
    assert_eq!(finished_wait(least, Some(Duration::from_secs(15))), Duration::from_secs(60));
    assert_eq!(finished_wait(least, Some(Duration::from_secs(3600))), FINISHED_WAIT_MAX);
    assert_eq!(finished_wait(Duration::from_secs(400), Some(Duration::from_secs(3600))), Duration::from_secs(400));
}

/// One file per run: a finished receiver (waiting for the acknowledgement
/// of `finished`) that sees an offer of another transfer, from a new run of
/// the sender, leaves it alone and unacknowledged for its own next run,
/// which takes it. Before, it abandoned its finished transfer for the new
/// one (`Discard`, the offer dropped from its state) in a state its driver
/// takes no offer in.
#[test]
fn a_finished_receiver_leaves_a_new_offer_for_its_next_run() {
    let mut w = World::new(4 * BLOCK as usize, RecvConfig::default());
    // The sender stops before it reads `finished`.
    w.run_until("finished", |w| w.r.as_ref().unwrap().phase() == RecvPhase::Finished);
    w.sender_stopped = true;
    // A new run of the sender with another file; the earlier run is gone.
    let offer = Offer { transfer: "00000000000000bb".into(), name: "g.bin".into(), size: 3 * BLOCK, block_size: BLOCK };
    let scfg = SendConfig { block_size: BLOCK, window: 2, quota: u64::MAX, link: LinkConfig::default() };
    w.s = Some(DftpSender::new(pid("alice"), pid("bob"), scfg, offer, None, 4, w.now));
    w.sent.clear();
    w.recvd.clear();
    w.sender_stopped = false;
    w.run_for(Duration::from_secs(5));
    let r = w.r.as_ref().unwrap();
    assert_eq!(r.phase(), RecvPhase::Finished);
    assert_eq!(r.offer().map(|o| o.transfer.as_str()), Some("00000000000000aa"));
    assert!(!w.recvd.iter().any(|o| matches!(o, RecvOut::Discard { .. })), "{:?}", w.recvd);
    assert!(!w.sent.iter().any(|o| matches!(o, SendOut::Accepted)), "{:?}", w.sent);
    // The receiver's next run (its state removed by the clean-up) takes it.
    w.r = Some(DftpReceiver::new(pid("bob"), pid("alice"), RecvConfig::default(), None, 5, w.now));
    w.part = None;
    w.run_until("the new file", |w| w.sent.iter().any(|o| matches!(o, SendOut::Finished { .. })));
    assert!(w.sent.iter().any(|o| matches!(o, SendOut::Accepted)), "{:?}", w.sent);
}

//! The DFTP machines with store operations completing out of order, as the
//! drivers run them (several at once): a transfer over a memory store in
//! which each step completes a randomly chosen pending operation of either
//! party. Seeded; a failure prints its seed.

use bytes::Bytes;
use dmp_core::PeerId;
use dmp_core::drive::perform;
use dmp_core::proto::dftp::{DftpReceiver, DftpSender, RecvConfig, RecvOut, SendConfig, SendOut};
use dmp_core::proto::dftp_msg::Offer;
use dmp_core::proto::mailbox::{LinkConfig, Op};
use dmp_core::store::MemoryStore;
use sha2::{Digest, Sha256};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Party {
    Sender,
    Receiver,
}

/// Runs one transfer of `size` bytes; returns the number of steps taken.
async fn transfer(seed: u64, size: usize, block: u64, window: u64) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let data: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
    let want = hex::encode(Sha256::digest(&data));
    let store = MemoryStore::new();
    let (alice, bob) = (PeerId::new("alice").unwrap(), PeerId::new("bob").unwrap());
    let link = LinkConfig { readahead: rng.u64(1..=8), ..LinkConfig::default() };
    let offer =
        Offer { transfer: format!("{:016x}", seed), name: "f.bin".into(), size: size as u64, block_size: block };
    let scfg = SendConfig { block_size: block, window, quota: u64::MAX, link: link.clone() };
    let rcfg = RecvConfig { prefetch: rng.usize(1..=6), link, ..RecvConfig::default() };
    let mut now = Duration::ZERO;
    let mut s = DftpSender::new(alice.clone(), bob.clone(), scfg, offer, None, 1, now);
    let mut r = DftpReceiver::new(bob, alice, rcfg, None, 2, now);
    let mut file: Vec<u8> = Vec::new();
    let mut pending: Vec<(Party, Op)> = Vec::new();
    let (mut sent, mut received) = (None, None);
    for step in 0..200_000 {
        // Everything each machine asks for: local work at once, store
        // operations into the common pool.
        loop {
            let mut any = false;
            for o in s.take_outputs() {
                any = true;
                match o {
                    SendOut::Op(op) => pending.push((Party::Sender, op)),
                    SendOut::Read { index, offset, len } => {
                        let b = Bytes::copy_from_slice(&data[offset as usize..(offset + len) as usize]);
                        s.on_read(now, index, Ok(b));
                    }
                    SendOut::Finished { sha256 } => sent = Some(sha256),
                    SendOut::Refused(e) | SendOut::Aborted(e) | SendOut::Failed(e) => {
                        panic!("seed {seed}: sender: {e}")
                    }
                    _ => {}
                }
            }
            for o in r.take_outputs() {
                any = true;
                match o {
                    RecvOut::Op(op) => pending.push((Party::Receiver, op)),
                    RecvOut::Prepare { .. } => r.on_prepared(now, Ok(())),
                    RecvOut::Write { index, offset, data: d } => {
                        let end = offset as usize + d.len();
                        if file.len() < end {
                            file.resize(end, 0);
                        }
                        file[offset as usize..end].copy_from_slice(&d);
                        r.on_written(now, index, Ok(()));
                    }
                    RecvOut::Finalize { .. } => r.on_finalized(now, Ok(())),
                    RecvOut::Finished { sha256 } => received = Some(sha256),
                    RecvOut::Refused(e) | RecvOut::GaveUp(e) | RecvOut::Failed(e) => {
                        panic!("seed {seed}: receiver: {e}")
                    }
                    _ => {}
                }
            }
            if !any {
                break;
            }
        }
        if sent.is_some() && received.is_some() {
            assert_eq!(sent.as_deref(), Some(want.as_str()), "seed {seed}");
            assert_eq!(received.as_deref(), Some(want.as_str()), "seed {seed}");
            file.resize(size, 0);
            assert!(file == data, "seed {seed}: the written file differs");
            return step;
        }
        now += Duration::from_millis(1);
        // Complete a random pending operation, or wake both (a poll).
        if pending.is_empty() || rng.u8(..) < 16 {
            s.wake(now);
            r.wake(now);
            continue;
        }
        let (party, op) = pending.swap_remove(rng.usize(..pending.len()));
        let res = perform(&store, op).await;
        match party {
            Party::Sender => s.on_result(now, res),
            Party::Receiver => r.on_result(now, res),
        }
    }
    panic!("seed {seed}: no end after 200000 steps (sender {sent:?}, receiver {received:?})");
}

#[tokio::test]
async fn transfers_complete_whatever_order_operations_finish_in() {
    for seed in 1..=40u64 {
        let size = [0, 1, 4096, 10 * 4096 + 3, 64 * 1024][(seed % 5) as usize];
        let window = 1 + seed % 6;
        transfer(seed, size, 4096, window).await;
    }
}

/// A receiver that cannot write (a full disk) tells the sender, which says
/// so and waits, keeping everything; run again, the receiver resumes from
/// its state and the transfer completes. Before, the sender waited without
/// a word (for ever without `--timeout`).
#[tokio::test]
async fn a_receiver_that_stops_for_a_full_disk_is_waited_for_and_resumes() {
    use dmp_core::proto::dftp::ReceiverState;
    let size = 20 * 4096 + 5;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let store = MemoryStore::new();
    let (alice, bob) = (PeerId::new("alice").unwrap(), PeerId::new("bob").unwrap());
    let link = LinkConfig::default();
    let offer =
        Offer { transfer: "00000000000000f1".into(), name: "f.bin".into(), size: size as u64, block_size: 4096 };
    let scfg = SendConfig { block_size: 4096, window: 4, quota: u64::MAX, link: link.clone() };
    let rcfg = RecvConfig { link, ..RecvConfig::default() };
    let mut now = Duration::ZERO;
    let mut s = DftpSender::new(alice.clone(), bob.clone(), scfg, offer, None, 1, now);
    let mut r = DftpReceiver::new(bob.clone(), alice.clone(), rcfg.clone(), None, 2, now);
    let mut file: Vec<u8> = Vec::new();
    let mut saved: Option<ReceiverState> = None;
    let (mut writes, mut receiver_up, mut restarted) = (0, true, false);
    let (mut stopped, mut sent, mut received, mut receiver_failed) = (Vec::new(), None, None, None);
    for _ in 0..100_000 {
        let mut ops: Vec<(Party, Op)> = Vec::new();
        for o in s.take_outputs() {
            match o {
                SendOut::Op(op) => ops.push((Party::Sender, op)),
                SendOut::Read { index, offset, len } => {
                    s.on_read(now, index, Ok(Bytes::copy_from_slice(&data[offset as usize..(offset + len) as usize])))
                }
                SendOut::PeerStopped(why) => stopped.push(why),
                SendOut::Finished { sha256 } => sent = Some(sha256),
                SendOut::Refused(e) | SendOut::Aborted(e) | SendOut::Failed(e) => panic!("sender: {e}"),
                _ => {}
            }
        }
        if receiver_up {
            for o in r.take_outputs() {
                match o {
                    RecvOut::Op(op) => ops.push((Party::Receiver, op)),
                    RecvOut::Persist => saved = Some(r.snapshot()),
                    RecvOut::Prepare { .. } => r.on_prepared(now, Ok(())),
                    RecvOut::Write { index, offset, data: d } => {
                        writes += 1;
                        if writes == 5 && receiver_failed.is_none() {
                            r.on_written(now, index, Err("No space left on device (os error 28)".into()));
                            continue;
                        }
                        let end = offset as usize + d.len();
                        if file.len() < end {
                            file.resize(end, 0);
                        }
                        file[offset as usize..end].copy_from_slice(&d);
                        r.on_written(now, index, Ok(()));
                    }
                    RecvOut::ReadBack { offset, len } => {
                        r.on_read_back(now, Ok(Bytes::copy_from_slice(&file[offset as usize..(offset + len) as usize])))
                    }
                    RecvOut::Finalize { .. } => r.on_finalized(now, Ok(())),
                    RecvOut::Finished { sha256 } => received = Some(sha256),
                    RecvOut::Failed(e) => receiver_failed = Some(e),
                    RecvOut::Refused(e) => panic!("receiver: {e}"),
                    _ => {}
                }
            }
        }
        // The failed receiver's own last writes (its notice) still land.
        for (party, op) in ops {
            let res = perform(&store, op).await;
            match party {
                Party::Sender => s.on_result(now, res),
                Party::Receiver => r.on_result(now, res),
            }
        }
        if receiver_failed.is_some() && receiver_up && !restarted && !stopped.is_empty() {
            // The user frees space and runs dftp-receive again.
            receiver_up = false;
        }
        if !receiver_up && now.as_millis() % 500 == 0 {
            r = DftpReceiver::new(bob.clone(), alice.clone(), rcfg.clone(), saved.clone(), 3, now);
            (receiver_up, restarted) = (true, true);
        }
        if sent.is_some() && received.is_some() {
            break;
        }
        now += Duration::from_millis(1);
        s.wake(now);
        if receiver_up {
            r.wake(now);
        }
    }
    let why = receiver_failed.expect("the receiver's write failed");
    assert!(why.contains("No space left"), "{why}");
    assert_eq!(stopped.len(), 1, "the sender heard of it once: {stopped:?}");
    assert!(stopped[0].contains("No space left"), "{stopped:?}");
    let want = hex::encode(Sha256::digest(&data));
    assert_eq!(sent.as_deref(), Some(want.as_str()), "the sender finished");
    assert_eq!(received.as_deref(), Some(want.as_str()), "the resumed receiver finished");
    assert!(file[..size] == data[..], "the file is whole");
}

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
                    SendOut::Refused(e) | SendOut::Failed(e) => panic!("seed {seed}: sender: {e}"),
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
                    RecvOut::Refused(e) | RecvOut::Failed(e) => panic!("seed {seed}: receiver: {e}"),
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

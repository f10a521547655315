//! The fuzzing harnesses of `dmp_core::sim::fuzz` on seeded random inputs,
//! in stable `cargo test` (`cargo xtask fuzz` runs them under libFuzzer).
//! `DMP_FUZZ_CASES=N` changes the number of inputs per harness.

use dmp_core::id::PeerId;
use dmp_core::sim::fuzz;
use dmp_core::wire::{Envelope, Kind};
use fastrand::Rng;

fn cases() -> u64 {
    std::env::var("DMP_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(5_000)
}

/// Runs `f` on `input`, naming the case if it panics.
fn run<T>(name: &str, case: u64, input: &[u8], f: fn(&[u8]) -> T) -> T {
    match std::panic::catch_unwind(|| f(input)) {
        Ok(t) => t,
        Err(_) => panic!("{name} case {case} failed; input ({} bytes): {}", input.len(), hex::encode(input)),
    }
}

/// Random bytes, valid envelopes, and valid envelopes with a few bytes
/// changed, cut or added (each resealed half of the time).
#[test]
fn envelope_decoder_on_random_and_mutated_inputs() {
    let mut rng = Rng::with_seed(0xe1);
    let kinds = [Kind::Ack, Kind::Head, Kind::Ping, Kind::Offer, Kind::Chunk, Kind::Done, Kind::Abort];
    for case in 0..cases() * 4 {
        let mut input = vec![rng.u8(..)];
        if rng.u8(..4) == 0 {
            input.extend((0..rng.usize(..300)).map(|_| rng.u8(..)));
        } else {
            let env = Envelope {
                flags: rng.u8(..2),
                kind: kinds[rng.usize(..kinds.len())],
                sender: PeerId::new(["alice", "b", "x.y-z_0"][rng.usize(..3)]).unwrap(),
                recipient: PeerId::new(["bob", "alice"][rng.usize(..2)]).unwrap(),
                session: rng.u64(..),
                seq: rng.u64(..),
                base: rng.u64(..),
                payload: (0..rng.usize(..200)).map(|_| rng.u8(..)).collect(),
            };
            input.extend(env.encode());
            for _ in 0..rng.usize(..4) {
                let n = input.len();
                if n < 2 {
                    break;
                }
                match rng.u8(..4) {
                    0 => input[rng.usize(1..n)] = rng.u8(..),
                    1 => input.truncate(rng.usize(1..=n)),
                    2 => input.insert(rng.usize(1..=n), rng.u8(..)),
                    _ => {
                        let i = rng.usize(1..n);
                        input[i] ^= 1 << rng.u8(..8);
                    }
                }
            }
        }
        run("envelope", case, &input, fuzz::envelope);
    }
}

/// Random event sequences for the DFTP receiver, mostly along the harness's
/// ordinary path so that transfers get deep.
#[test]
fn receiver_on_random_event_sequences() {
    let mut rng = Rng::with_seed(0xd7);
    let (mut wrote, mut finalized) = (0, 0);
    for case in 0..cases() {
        let len = rng.usize(..4000);
        // Mostly small bytes (the harness's ordinary path), with a share of
        // random ones (deviations: faults, forgeries, restarts) per case.
        let noise = [0.005, 0.02, 0.1, 0.5][rng.usize(..4)];
        let input: Vec<u8> = (0..len).map(|_| if rng.f64() < noise { rng.u8(..) } else { rng.u8(..10) }).collect();
        let reach = run("receiver", case, &input, fuzz::receiver);
        wrote += reach.wrote as u64;
        finalized += reach.finalized as u64;
    }
    eprintln!("receiver: {} inputs, {wrote} wrote a chunk, {finalized} finalized a file", cases());
    assert!(cases() < 1000 || (wrote > 0 && finalized > 0), "the harness no longer reaches deep states");
}

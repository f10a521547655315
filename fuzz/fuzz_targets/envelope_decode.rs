//! Envelope::decode on arbitrary bytes (the first byte chooses whether both
//! checksums are recomputed first, to reach the checks behind them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dmp_core::sim::fuzz::envelope(data));

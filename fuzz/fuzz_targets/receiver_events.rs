//! The DFTP receiver fed an arbitrary sequence of store results, local file
//! answers, time and restarts (see `dmp_core::sim::fuzz::receiver`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dmp_core::sim::fuzz::receiver(data);
});

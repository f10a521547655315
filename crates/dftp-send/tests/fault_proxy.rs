//! Real processes, real faults: a transfer over nginx WebDAV through the
//! fault-injecting proxy of `dmp_testkit::fault_proxy` (503, 429 with
//! Retry-After, connection resets mid-response, truncated bodies, added
//! latency), both tools reaching the store only through the proxy. The
//! file must arrive byte-identical, every kind of fault must have been
//! injected, and nothing of the transfer may be left on the server.
//!
//! Size: `DMP_FAULT_PROXY_MIB`, default 64 (about 40 s in a debug build;
//! 256 MiB would take about 160 s there, too long for the default suite);
//! `cargo xtask soak` runs it in release mode with 1024
//! (`--mib 256` for 256). Skipped when nginx or its dav-ext module is missing, unless
//! `DMP_REQUIRE_SERVERS` is set. `DMP_TEST_SEED` replays the fault pattern
//! (as far as thread timing allows).

use dmp_testkit::fault_proxy::{FaultConfig, FaultProxy};
use dmp_testkit::server::{Server, have};
use dmp_testkit::{Sandbox, files_under, random_file, sha256_file};
use std::ffi::OsString;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn size() -> u64 {
    std::env::var("DMP_FAULT_PROXY_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64) * MIB
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn webdav_transfer_through_a_fault_injecting_proxy() {
    let test = "webdav_transfer_through_a_fault_injecting_proxy";
    if !have(test, &["nginx", "dav-ext"]) {
        return;
    }
    let started = Instant::now();
    let seed = dmp_testkit::seed(test);
    let size = size();
    let srv = Server::start("nginx-webdav.sh", &[]);
    let proxy = FaultProxy::start(([127, 0, 0, 1], srv.port).into(), FaultConfig::moderate(seed));
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join("big.bin");
    random_file(&src, size, seed);
    let want = sha256_file(&src);
    let dir = sb.mkdir("dl");
    let store: OsString = format!("webdav://127.0.0.1:{}/dmp", proxy.port()).into();
    let recv = sb.spawn(
        "dftp-receive",
        ["alice".into(), "bob".into(), dir.clone().into_os_string(), "--store".into(), store.clone(), "--json".into()],
    );
    let send = sb.spawn(
        "dftp-send",
        [
            "bob".into(),
            "alice".into(),
            src.clone().into_os_string(),
            "--store".into(),
            store,
            "--json".into(),
            "-b".into(),
            "1m".into(),
        ],
    );
    // Generous: 1 GiB in debug builds with a fault on one request in ten.
    let patience = Duration::from_secs(60 + size / MIB * 3);
    let s = send.wait_for(patience);
    let r = recv.wait_for(patience);
    s.expect_ok();
    r.expect_ok();
    let secs = started.elapsed().as_secs_f64();
    let counts = proxy.counts();
    eprintln!("{test}: {} MiB byte-identical in {secs:.1} s through the proxy: {counts}", size / MIB);
    assert_eq!(sha256_file(&dir.join("big.bin")), want, "SHA-256 of what arrived");
    assert_eq!(json(&s.stdout)["sha256"], want.as_str());
    assert_eq!(json(&r.stdout)["sha256"], want.as_str());
    assert!(
        counts.s503 > 0 && counts.s429 > 0 && counts.resets > 0 && counts.truncated > 0 && counts.delayed > 0,
        "every kind of fault was injected: {counts}"
    );
    // Nothing of the transfer is left on the server.
    let data = srv.dir.path().join("data");
    let left: Vec<_> = files_under(&data)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".msg") || n.ends_with(".chunk") || n == "head" || n == "ack"
        })
        .collect();
    assert!(left.is_empty(), "files left on the server: {left:?}");
}

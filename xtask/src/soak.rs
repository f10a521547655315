//! `cargo xtask soak`: the long runs of the "real processes, real faults"
//! tests, in release mode: a transfer of 1 GiB (default) through the
//! fault-injecting proxy in front of nginx WebDAV
//! (`crates/dftp-send/tests/fault_proxy.rs`), then the 20-SIGKILL test on
//! a 256 MiB file (release builds are fast).
//! Servers are required (a missing nginx fails instead of skipping).

use crate::util::{build_release_tools, cargo, heading, run};
use anyhow::{Result, bail};

pub const USAGE: &str = concat!(
    "  soak [--mib N]          release mode: an N MiB transfer (default 1024)\n",
    "                          through the fault-injecting proxy in front of\n",
    "                          nginx WebDAV, then the 20-SIGKILL test",
);

pub fn run_soak(args: &[String]) -> Result<()> {
    let mib = match args {
        [] => 1024,
        [flag, n] if flag == "--mib" => match n.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => bail!("--mib takes a positive number of MiB\n{USAGE}"),
        },
        _ => bail!("unknown arguments: {}\n{USAGE}", args.join(" ")),
    };
    let bin_dir = build_release_tools()?;
    heading(&format!("fault proxy: {mib} MiB through 503/429/resets/truncation/latency"));
    run(
        cargo()
            .args(["test", "--release", "-p", "dftp-send", "--test", "fault_proxy", "--", "--nocapture"])
            .env("DMP_BIN_DIR", &bin_dir)
            .env("DMP_FAULT_PROXY_MIB", mib.to_string())
            .env("DMP_REQUIRE_SERVERS", "1"),
        "the fault-proxy transfer",
    )?;
    heading("20 SIGKILLs, sender and receiver alternately");
    run(
        cargo()
            .args(["test", "--release", "-p", "dftp-receive", "--test", "kill_restart", "--", "--nocapture"])
            .env("DMP_BIN_DIR", &bin_dir)
            .env("DMP_KILL_TEST_MIB", "256"),
        "the kill test",
    )?;
    Ok(())
}

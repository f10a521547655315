//! `cargo xtask sim`: the deterministic simulation in release mode, through
//! the `sim` example of dmp-core (`crates/dmp-core/examples/sim.rs`).

use crate::util::cargo;
use std::process::ExitCode;

pub const USAGE: &str = concat!(
    "  sim [--seeds N] [--from S] [--jobs J]\n",
    "                          deterministic simulation of the mailbox and DFTP\n",
    "                          machines over a faulty store with crashes, seeds\n",
    "                          S..S+N (default 0..100000); ends with one line\n",
    "                          `simulation: N seeds, F faults injected, V violations`\n",
    "  sim --seed S            replay one seed with its trace",
);

/// Builds and runs the simulation; its exit status is ours (1: violations).
pub fn run(args: &[String]) -> ExitCode {
    let mut pass: Vec<String> = args.to_vec();
    let known = ["--seeds", "--from", "--jobs", "--seed"];
    let mut i = 0;
    while i < pass.len() {
        if !known.contains(&pass[i].as_str()) || pass.get(i + 1).is_none_or(|v| v.parse::<u64>().is_err()) {
            eprintln!("usage: cargo xtask\n{USAGE}");
            return ExitCode::from(2);
        }
        i += 2;
    }
    if !pass.iter().any(|a| a == "--seeds" || a == "--seed") {
        pass.extend(["--seeds".into(), "100000".into()]);
    }
    let status = cargo()
        .args(["run", "--quiet", "--release", "--package", "dmp-core", "--example", "sim", "--"])
        .args(&pass)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().map_or(1, |c| c.clamp(1, 255) as u8)),
        Err(e) => {
            eprintln!("error: starting cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

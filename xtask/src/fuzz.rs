//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` for a while
//! each (libFuzzer needs a nightly toolchain and cargo-fuzz). Without them,
//! it says so and runs the same harnesses on seeded random inputs instead
//! (`tests/fuzz_inputs.rs` of dmp-core, in release mode).

use crate::util::{cargo, root};
use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

pub const USAGE: &str = concat!(
    "  fuzz [--seconds S] [TARGET...]\n",
    "                          run the fuzz targets (envelope_decode,\n",
    "                          receiver_events) S seconds each (default 60)\n",
    "                          with cargo-fuzz on nightly; without them, the\n",
    "                          same harnesses on seeded random inputs"
);

const TARGETS: [&str; 2] = ["envelope_decode", "receiver_events"];

/// `cargo` through rustup, without the variables of the cargo that runs us.
fn rustup_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    for v in ["CARGO", "RUSTC", "RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR"] {
        c.env_remove(v);
    }
    c
}

fn have_cargo_fuzz() -> bool {
    rustup_cargo()
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds: u64 = 60;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it.next().and_then(|v| v.parse().ok()).context("--seconds needs a number")?;
            }
            t if TARGETS.contains(&t) => targets.push(t),
            other => bail!("unknown fuzz argument {other:?}\n{USAGE}"),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    if !have_cargo_fuzz() {
        println!("cargo-fuzz on a nightly toolchain is not available (rustup toolchain install nightly;");
        println!("cargo install cargo-fuzz): running the harnesses on seeded random inputs instead");
        let cases = (seconds * 1500).to_string();
        let st = cargo()
            .args(["test", "--release", "-p", "dmp-core", "--test", "fuzz_inputs", "--", "--nocapture"])
            .env("DMP_FUZZ_CASES", cases)
            .status()
            .context("starting cargo test")?;
        if !st.success() {
            bail!("the fuzz harnesses failed on random inputs");
        }
        return Ok(());
    }
    let mut total_runs = 0u64;
    let mut crashed = Vec::new();
    for t in &targets {
        let corpus = root().join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        if t == &"receiver_events" && std::fs::read_dir(&corpus)?.next().is_none() {
            // Small bytes take the harness's ordinary path: a whole transfer.
            std::fs::write(corpus.join("ordinary-path"), vec![0u8; 3000])?;
        }
        println!("== fuzz {t} for {seconds} s ==");
        let out = rustup_cargo()
            .args(["+nightly", "fuzz", "run", t, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        total_runs += runs;
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            crashed.push(*t);
        }
        println!("fuzz {t}: {runs} executions{}", if out.status.success() { "" } else { ", CRASHED" });
    }
    println!("fuzz: {} targets, {total_runs} executions, {} crashes", targets.len(), crashed.len());
    if !crashed.is_empty() {
        bail!("crashes in {} (inputs under fuzz/artifacts/)", crashed.join(", "));
    }
    Ok(())
}

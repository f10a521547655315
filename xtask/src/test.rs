//! `cargo xtask test` (and `ci`): format check, build every binary, run every
//! test with DMP_BIN_DIR pointing at the binaries, and summarise.

use crate::util::{cargo, heading, root, run, target_dir};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

/// Runs the whole suite. `extra` goes to `cargo test` (e.g. a test name filter).
pub fn run_suite(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    println!("workspace: {}", root().display());

    heading("1/3 format: cargo fmt --all -- --check");
    let have_fmt = cargo().args(["fmt", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !matches!(have_fmt, Ok(s) if s.success()) {
        bail!("rustfmt is not installed; install it with `rustup component add rustfmt`");
    }
    let st = cargo().args(["fmt", "--all", "--", "--check"]).status().context("starting cargo fmt")?;
    if !st.success() {
        bail!("formatting check failed: the diff above shows what differs; run `cargo fmt` on those files");
    }
    println!("formatting ok");

    heading("2/3 build: cargo build --workspace --bins");
    run(cargo().args(["build", "--workspace", "--bins"]), "cargo build --workspace --bins")?;
    let bin_dir = target_dir()?.join("debug");

    heading(&format!("3/3 test: DMP_BIN_DIR={} cargo test --workspace --no-fail-fast", bin_dir.display()));
    // stdout is read line by line to pick out the summaries; cargo's own
    // progress lines go to stderr and pass straight through.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"]).args(extra).env("DMP_BIN_DIR", &bin_dir);
    // In CI the test servers (nginx, SeaweedFS) must be there: a missing one
    // fails the tests that need it instead of skipping them.
    if std::env::var("CI").is_ok_and(|v| v == "true") && std::env::var_os("DMP_REQUIRE_SERVERS").is_none() {
        println!("CI=true: DMP_REQUIRE_SERVERS=1 (tests fail when a test server is not installed)");
        cmd.env("DMP_REQUIRE_SERVERS", "1");
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let mut results = Vec::new();
    let mut failed_tests = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if line.starts_with("test result:") {
            results.push(line);
        } else if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
            failed_tests.push(name.to_owned());
        }
    }
    let status = child.wait().context("waiting for cargo test")?;

    heading("summary");
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for r in &results {
        println!("{r}");
        passed += count(r, "passed");
        failed += count(r, "failed");
        ignored += count(r, "ignored");
    }
    for t in &failed_tests {
        println!("FAILED: {t}");
    }
    println!(
        "{} test binaries: {passed} passed, {failed} failed, {ignored} ignored ({:.0} s in all)",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The number before `word` in a line such as
/// `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; ...`.
fn count(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == ';').filter(|w| !w.is_empty()).collect();
    words.windows(2).find(|w| w[1] == word).and_then(|w| w[0].parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_summary_fields() {
        let l = "test result: FAILED. 5 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!((count(l, "passed"), count(l, "failed"), count(l, "ignored")), (5, 2, 1));
        assert_eq!(count("nothing here", "passed"), 0);
    }
}

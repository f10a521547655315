//! Runs the deterministic simulation (`cargo xtask sim` builds and runs this).
//!
//! ```text
//! sim --seeds N [--from S] [--jobs J]   run seeds S..S+N; end with the summary line
//! sim --seed S                          replay one seed, printing its trace
//! ```
//! Exit status 1 when a violation was found.

use dmp_core::sim;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == flag)?;
        match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(v) => Some(v),
            None => {
                eprintln!("error: {flag} needs a number");
                std::process::exit(2);
            }
        }
    };
    if let Some(seed) = value("--seed") {
        let report = sim::run_seed(seed, Some(Box::new(|line: &str| println!("{line}"))));
        println!();
        print!("{}", sim::describe(&report));
        let mut t = sim::Totals::default();
        t.add(&report);
        println!("{}", t.line());
        return if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let seeds = value("--seeds").unwrap_or(10_000);
    let first = value("--from").unwrap_or(0);
    let jobs = value("--jobs")
        .map(|j| j as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let (totals, failures) = sim::run_many(first, seeds, jobs);
    let secs = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        print!("{failures}");
    }
    eprintln!(
        "{:.1} s, {:.0} seeds/s on {jobs} threads; {} crashes; {} lossy runs ({} stopped without completing)",
        secs,
        totals.seeds as f64 / secs.max(1e-9),
        totals.crashes,
        totals.lossy,
        totals.lossy_incomplete
    );
    println!("{}", totals.line());
    if totals.violations == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

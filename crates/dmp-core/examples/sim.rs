//! Runs the deterministic simulation (`cargo xtask sim` builds and runs this).
//!
//! ```text
//! sim --seeds N [--from S] [--jobs J]   run seeds S..S+N; end with the summary line
//! sim --seed S                          replay one seed, printing its trace
//! sim --outcomes --seeds N               how runs ended, by kind (lossy ones apart)
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
    if args.iter().any(|a| a == "--outcomes") {
        let mut kinds = std::collections::BTreeMap::<String, u64>::new();
        for seed in value("--from").unwrap_or(0)..value("--from").unwrap_or(0) + seeds {
            let r = sim::run_seed(seed, None);
            // The outcome without numbers and names, so that alike runs group.
            let mut shape = String::new();
            for c in r.outcome.chars() {
                if c.is_ascii_digit() {
                    if !shape.ends_with('N') {
                        shape.push('N');
                    }
                } else {
                    shape.push(c);
                }
            }
            let shape = shape.split(" (").next().unwrap_or("").to_string()
                + shape.split("receiver").nth(1).map_or("", |x| x.split(';').next().unwrap_or("")).trim_end();
            *kinds.entry(format!("{}{}: {shape}", r.scenario, if r.lossy { " (lossy)" } else { "" })).or_default() += 1;
        }
        for (k, n) in kinds {
            println!("{n:>7}  {k}");
        }
        return ExitCode::SUCCESS;
    }
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
        "{:.1} s, {:.0} seeds/s on {jobs} threads; {} seeds with encryption on; {} crashes; {} lossy runs ({} stopped without completing); \
         completed runs ended at most {:.0} s after their faults stopped",
        secs,
        totals.seeds as f64 / secs.max(1e-9),
        totals.secure,
        totals.crashes,
        totals.lossy,
        totals.lossy_incomplete,
        totals.max_settle.as_secs_f64()
    );
    println!("{}", totals.line());
    if totals.violations == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

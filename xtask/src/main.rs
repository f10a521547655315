//! Development tasks for the workspace, run as `cargo xtask <command>`
//! (the rust-analyzer xtask pattern; the alias is in .cargo/config.toml).

mod bench;
mod demo;
mod dist;
mod fuzz;
mod sim;
mod soak;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test [ARGS...]          format check, build every binary, run every test
                          (DMP_BIN_DIR points the end-to-end tests at the
                          binaries; ARGS go to cargo test, e.g. a name filter)
  ci                      the same as test (what .ci/run calls)
  demo                    run the main job on a temporary local-folder store:
                          a ping server and client, then a DFTP file transfer
  dist                    release builds of the four tools with man pages and
                          bash, zsh and fish completions in target/dist
  bench [--quick] [--peers] [NAME...]
                          benchmarks in release mode next to cp, curl,
                          magic-wormhole and NNCP (--peers installs those);
                          a Markdown table on stdout and target/bench.json
                          (bench --help lists them)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = format!("{USAGE}{}\n{}\n{}", sim::USAGE, fuzz::USAGE, soak::USAGE);
    let Some(cmd) = args.first() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let res = match cmd.as_str() {
        "test" | "ci" => test::run_suite(rest),
        "demo" if rest.is_empty() => demo::run(),
        "dist" if rest.is_empty() => dist::run(),
        "bench" => bench::run(rest),
        "sim" => return sim::run(rest),
        "fuzz" => fuzz::run(rest),
        "soak" => soak::run_soak(rest),
        "-h" | "--help" | "help" => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("unknown command or argument: {}\n\n{usage}", args.join(" "));
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

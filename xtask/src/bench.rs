//! `cargo xtask bench [--quick] [NAME...]`: measures the targets the issues
//! name, in release mode, and prints one Markdown table (also written to
//! target/bench.json). Each benchmark is a function in [`BENCHES`] that
//! returns table rows; add a row-producing function there to add one.

use crate::util::{
    Proc, TempDir, build_release_tools, clock_ticks, cpu_ticks, have_dftp, heading, human_size, median, peak_rss_kib,
    random_file, sha256_file, target_dir,
};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "bench_remote.rs"]
mod remote;

/// Runs per figure; the table reports medians.
const RUNS: usize = 3;

/// What every benchmark gets.
pub struct Ctx {
    /// Smaller sizes and shorter waits, for a run under two minutes.
    pub quick: bool,
    /// Directory of the release binaries.
    pub bin: PathBuf,
    /// Scratch space on the same disk as the target directory, removed at the end.
    pub scratch: PathBuf,
}

struct Bench {
    name: &'static str,
    about: &'static str,
    run: fn(&Ctx) -> Result<Vec<Row>>,
}

/// Every benchmark, in the order they run.
const BENCHES: &[Bench] = &[
    Bench { name: "ping", about: "ping round trip over a local folder store", run: ping_rtt },
    Bench { name: "idle", about: "CPU of an idle ping server and client", run: idle_cpu },
    Bench { name: "dftp", about: "DFTP of a random file through a local folder vs cp + sync", run: dftp_local },
    Bench { name: "webdav", about: "DFTP through nginx WebDAV vs curl -T + curl", run: remote::webdav_dftp },
    Bench { name: "webdav-ping", about: "ping round trip over nginx WebDAV", run: remote::webdav_ping },
    Bench { name: "webdav-idle", about: "requests/min of an idle ping client and server", run: remote::webdav_idle },
    // More go here: DFTP over S3, magic-wormhole and NNCP, ping fan-in (issue 7).
];

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    figure: String,
    /// The measured value; `None` when the figure was not measured (see `note`).
    value: Option<f64>,
    unit: &'static str,
    /// What the value is compared with, and its value in the same unit.
    baseline: Option<(String, f64)>,
    /// value / baseline, or the median of per-run ratios when measured pair by pair.
    ratio: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
    note: String,
}

impl Row {
    fn new(figure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            value: Some(value),
            unit,
            baseline: None,
            ratio: None,
            target: None,
            met: None,
            note: String::new(),
        }
    }

    /// A figure that could not be measured in this run, and why.
    fn skipped(figure: impl Into<String>, why: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            value: None,
            unit: "",
            baseline: None,
            ratio: None,
            target: None,
            met: None,
            note: why.into(),
        }
    }

    /// Target: value ≤ `max` (in the row's unit).
    fn at_most(mut self, max: f64) -> Row {
        self.target = Some(format!("≤ {} {}", fmt_limit(max), self.unit));
        self.met = self.value.map(|v| v <= max);
        self
    }

    /// Compares with a baseline; target: value / baseline ≤ `max_ratio`.
    /// `ratio` is given when it is measured pair by pair (median of per-run
    /// ratios) rather than as the ratio of the medians.
    fn vs(mut self, label: impl Into<String>, baseline: f64, ratio: Option<f64>, max_ratio: f64) -> Row {
        let label = label.into();
        self.target = Some(format!("≤ {}× {label}", fmt_limit(max_ratio)));
        self.baseline = Some((label, baseline));
        self.ratio = ratio.or_else(|| self.value.map(|v| v / baseline));
        self.met = self.ratio.map(|r| r <= max_ratio);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Row {
        let n = note.into();
        self.note = if self.note.is_empty() { n } else { format!("{}; {n}", self.note) };
        self
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline.as_ref().map(|(l, _)| l),
            "baseline_value": self.baseline.as_ref().map(|(_, v)| v),
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        })
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A target's limit without trailing zeros: 0.5, 3, 64, 0.333.
fn fmt_limit(v: f64) -> String {
    let s = fmt_num(v);
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| Figure | Value | Baseline | Ratio | Target | Met | Notes |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        let value = r.value.map_or("not measured".into(), |v| format!("{} {}", fmt_num(v), r.unit));
        let baseline = r.baseline.as_ref().map_or("—".into(), |(l, v)| format!("{l}: {} {}", fmt_num(*v), r.unit));
        let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}×"));
        let target = r.target.clone().unwrap_or_else(|| "—".into());
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "—",
        };
        s.push_str(&format!("| {} | {value} | {baseline} | {ratio} | {target} | {met} | {} |\n", r.figure, r.note));
    }
    s
}

pub fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut only = Vec::new();
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("usage: cargo xtask bench [--quick] [NAME...]\n\nbenchmarks:");
                for b in BENCHES {
                    println!("  {:<12} {}", b.name, b.about);
                }
                return Ok(());
            }
            n if BENCHES.iter().any(|b| b.name == n) => only.push(n.to_owned()),
            other => bail!("unknown bench argument {other:?} (see cargo xtask bench --help)"),
        }
    }
    heading("building the tools (release)");
    let bin = build_release_tools()?;
    let target = target_dir()?;
    let scratch = TempDir::new_in(&target.join("bench-tmp"), "run")?;
    let ctx = Ctx { quick, bin, scratch: scratch.path().to_path_buf() };

    let mut rows = Vec::new();
    for b in BENCHES.iter().filter(|b| only.is_empty() || only.iter().any(|n| n == b.name)) {
        heading(&format!("bench {}: {}{}", b.name, b.about, if quick { " (quick)" } else { "" }));
        match (b.run)(&ctx) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("error: bench {} failed: {e:#}", b.name);
                rows.push(Row::skipped(b.name, format!("failed: {e:#}").replace(['\n', '|'], " ")));
            }
        }
    }
    drop(scratch);

    heading("results");
    let table = markdown(&rows);
    print!("{table}");
    let report = json!({
        "quick": quick,
        "runs_per_figure": RUNS,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    let path = target.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\n(written to {})", path.display());
    Ok(())
}

/// Starts a ping server on `store` and checks that it is still up shortly after.
fn start_server(ctx: &Ctx, store: &Path, logs: &Path) -> Result<Proc> {
    let mut server = Proc::spawn_logged(
        Command::new(ctx.bin.join("dmp-ping-server")).arg("bob").arg("--store").arg(store),
        "dmp-ping-server",
        logs,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    if let Some(st) = server.try_wait()? {
        bail!("dmp-ping-server exited at once ({st}){}", server.log_tail());
    }
    Ok(server)
}

/// Ping round trip over a local folder: p50 and p99, median of RUNS runs.
fn ping_rtt(ctx: &Ctx) -> Result<Vec<Row>> {
    let count = if ctx.quick { 50 } else { 200 };
    let (mut p50s, mut p99s, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let dir = TempDir::new_in(&ctx.scratch, "ping")?;
        let store = dir.join("store");
        let mut server = start_server(ctx, &store, dir.path())?;
        let mut client = Proc::spawn_logged(
            Command::new(ctx.bin.join("dmp-ping-client"))
                .args(["bob", "alice", "-c", &count.to_string(), "-i", "0.01", "-W", "5", "--json", "-q"])
                .arg("--store")
                .arg(&store),
            "dmp-ping-client",
            dir.path(),
        )?;
        let st = client.wait_timeout(Duration::from_secs(120))?;
        client.check(st)?;
        server.stop()?;
        let v: serde_json::Value =
            serde_json::from_str(client.stdout().trim()).context("parsing dmp-ping-client --json output")?;
        let p50 = v["rtt_ms"]["p50"].as_f64().context("no rtt_ms.p50")?;
        let p99 = v["rtt_ms"]["p99"].as_f64().context("no rtt_ms.p99")?;
        let loss = v["loss_pct"].as_f64().context("no loss_pct")?;
        println!("run {run}: {count} pings, p50 {p50:.3} ms, p99 {p99:.3} ms, loss {loss}%");
        p50s.push(p50);
        p99s.push(p99);
        losses.push(loss);
    }
    let runs = |xs: &[f64]| xs.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    Ok(vec![
        Row::new("ping rtt p50, local folder", median(&p50s), "ms")
            .at_most(0.5)
            .note(format!("{RUNS} runs × {count} pings at -i 0.01: {}", runs(&p50s))),
        Row::new("ping rtt p99, local folder", median(&p99s), "ms").at_most(3.0).note(format!("runs: {}", runs(&p99s))),
        Row::new("ping loss, local folder", median(&losses), "%").at_most(0.0),
    ])
}

/// CPU used by an idle server and client (client pinging every 30 s).
fn idle_cpu(ctx: &Ctx) -> Result<Vec<Row>> {
    let window = Duration::from_secs(if ctx.quick { 3 } else { 10 });
    let dir = TempDir::new_in(&ctx.scratch, "idle")?;
    let store = dir.join("store");
    let mut server = start_server(ctx, &store, dir.path())?;
    let mut client = Proc::spawn_logged(
        Command::new(ctx.bin.join("dmp-ping-client")).args(["bob", "alice", "-i", "30"]).arg("--store").arg(&store),
        "dmp-ping-client",
        dir.path(),
    )?;
    // Let the first ping and reply settle; the next ping is 30 s away.
    std::thread::sleep(Duration::from_secs(1));
    let tck = clock_ticks();
    let t0 = Instant::now();
    let (s0, c0) = (cpu_ticks(server.pid())?, cpu_ticks(client.pid())?);
    std::thread::sleep(window);
    let (s1, c1) = (cpu_ticks(server.pid())?, cpu_ticks(client.pid())?);
    let secs = t0.elapsed().as_secs_f64();
    client.terminate()?;
    server.stop()?;
    let pct = |ticks: u64| ticks as f64 / tck * 100.0 / secs;
    let note = format!("utime+stime over {:.0} s, {} ticks/s", secs, tck);
    println!("server {} ticks, client {} ticks in {secs:.1} s", s1 - s0, c1 - c0);
    // One tick over the window is the resolution; "≈ 0" means at most that.
    let limit = 100.0 / tck / window.as_secs_f64();
    Ok(vec![
        Row::new("idle CPU, dmp-ping-server", pct(s1 - s0), "%").at_most(limit).note(note.clone()),
        Row::new("idle CPU, dmp-ping-client -i 30", pct(c1 - c0), "%").at_most(limit).note(note),
    ])
}

// ---------------------------------------------------------------------------
// DFTP through a local folder vs cp + sync (issue 3). The lead may replace or
// extend this section (4 GiB RSS, encryption on/off); the table rows are the
// interface.
// ---------------------------------------------------------------------------

fn dftp_local(ctx: &Ctx) -> Result<Vec<Row>> {
    if !have_dftp() {
        return Ok(vec![Row::skipped(
            "DFTP 1 GiB, local folder vs cp + sync",
            "not run: crates/dftp-send and crates/dftp-receive are not in this checkout yet",
        )]);
    }
    let len: u64 = if ctx.quick { 256 << 20 } else { 1 << 30 };
    let size = human_size(len);
    let dir = TempDir::new_in(&ctx.scratch, "dftp")?;
    let src = dir.join("random.bin");
    println!("writing a {size} random file");
    random_file(&src, len)?;
    let want = sha256_file(&src)?;

    let (mut dftp_s, mut cp_s, mut ratios, mut rss_send, mut rss_recv) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut plain_s, mut crypto_ratios) = (vec![], vec![]);
    for run in 1..=RUNS {
        // cp + sync of the same file, on the same disk.
        sync()?;
        let dst = dir.join("copy.bin");
        let t = Instant::now();
        crate::util::run(Command::new("cp").arg(&src).arg(&dst), "cp")?;
        sync()?;
        let cp = t.elapsed().as_secs_f64();
        std::fs::remove_file(&dst).ok();

        // The DFTP pair through a fresh folder store: encrypted (the
        // default), then with --insecure-plaintext for the cost of encryption.
        let (wall, s_rss, r_rss) = dftp_pair(ctx, &dir, &src, &want, run, &[])?;
        let (plain, _, _) = dftp_pair(ctx, &dir, &src, &want, run, &["--insecure-plaintext"])?;
        println!(
            "run {run}: dftp {wall:.3} s (plaintext {plain:.3} s), cp+sync {cp:.3} s, ratio {:.2}, peak RSS send {} MiB, receive {} MiB",
            wall / cp,
            s_rss / 1024,
            r_rss / 1024
        );
        plain_s.push(plain);
        crypto_ratios.push(wall / plain);
        dftp_s.push(wall);
        cp_s.push(cp);
        ratios.push(wall / cp);
        rss_send.push(s_rss as f64 / 1024.0);
        rss_recv.push(r_rss as f64 / 1024.0);
    }
    let mbps = len as f64 / 1e6 / median(&dftp_s);
    Ok(vec![
        Row::new(format!("DFTP {size}, local folder, wall time"), median(&dftp_s), "s")
            .vs("cp + sync", median(&cp_s), Some(median(&ratios)), 2.0)
            .note(format!("{mbps:.0} MB/s; ratio = median of {RUNS} per-run ratios; SHA-256 verified")),
        Row::new(format!("DFTP {size}, local folder, encrypted"), median(&dftp_s), "s")
            .vs("--insecure-plaintext", median(&plain_s), Some(median(&crypto_ratios)), 1.25)
            .note(format!("the cost of encryption; ratio = median of {RUNS} per-run ratios")),
        Row::new(format!("peak RSS dftp-send, {size}"), rss_send.iter().cloned().fold(0.0, f64::max), "MiB")
            .at_most(64.0)
            .note("VmHWM sampled every 5 ms"),
        Row::new(format!("peak RSS dftp-receive, {size}"), rss_recv.iter().cloned().fold(0.0, f64::max), "MiB")
            .at_most(64.0)
            .note("VmHWM sampled every 5 ms"),
    ])
}

/// One DFTP transfer of `src` through a fresh folder store, with keys and
/// state in the run's own directory: (wall seconds, peak RSS KiB of the
/// sender, of the receiver). The received file must hash to `want`.
fn dftp_pair(ctx: &Ctx, dir: &TempDir, src: &Path, want: &str, run: usize, extra: &[&str]) -> Result<(f64, u64, u64)> {
    sync()?;
    let run_dir = TempDir::new_in(dir.path(), "run")?;
    let (store, out) = (run_dir.join("store"), run_dir.join("out"));
    std::fs::create_dir(&out)?;
    let tool = |name: &str| {
        let mut c = Command::new(ctx.bin.join(name));
        c.env("DMP_CONFIG_DIR", run_dir.join("config")).env("DMP_STATE_DIR", run_dir.join("state"));
        c
    };
    let t = Instant::now();
    let recv = Proc::spawn_logged(
        tool("dftp-receive").args(["alice", "bob"]).arg(&out).arg("--store").arg(&store).arg("--json").args(extra),
        "dftp-receive",
        run_dir.path(),
    )?;
    let send = Proc::spawn_logged(
        tool("dftp-send").args(["bob", "alice"]).arg(src).arg("--store").arg(&store).arg("--json").args(extra),
        "dftp-send",
        run_dir.path(),
    )?;
    let [(send, s_rss), (recv, r_rss)] = wait_pair_sampling_rss([send, recv], Duration::from_secs(600))?;
    let wall = t.elapsed().as_secs_f64();
    let got = out.join(src.file_name().expect("file name"));
    let have = sha256_file(&got).with_context(|| format!("{}{}", got.display(), recv.log_tail()))?;
    if have != want {
        bail!("run {run}: received file differs from the sent one (SHA-256)");
    }
    drop((send, recv, run_dir));
    Ok((wall, s_rss, r_rss))
}

/// Waits for both processes (each must exit 0), sampling their peak RSS
/// (KiB) while they run.
fn wait_pair_sampling_rss(mut procs: [Proc; 2], timeout: Duration) -> Result<[(Proc, u64); 2]> {
    let end = Instant::now() + timeout;
    let mut rss = [0u64; 2];
    let mut done = [None, None];
    while done.iter().any(Option::is_none) {
        for i in 0..2 {
            if done[i].is_none() {
                if let Some(k) = peak_rss_kib(procs[i].pid()) {
                    rss[i] = rss[i].max(k);
                }
                done[i] = procs[i].try_wait()?;
            }
        }
        if Instant::now() >= end {
            bail!("the DFTP pair did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..2 {
        procs[i].check(done[i].expect("finished"))?;
    }
    let [a, b] = procs;
    Ok([(a, rss[0]), (b, rss[1])])
}

fn sync() -> Result<()> {
    crate::util::run(&mut Command::new("sync"), "sync")
}

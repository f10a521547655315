//! `cargo xtask bench [--quick] [NAME...]`: measures the targets the issues
//! name, in release mode, and prints one Markdown table (also written to
//! target/bench.json). Each benchmark is a function in [`BENCHES`] that
//! returns table rows; add a row-producing function there to add one.

use crate::util::{
    Proc, Samples, TempDir, build_release_tools, clock_ticks, cpu_ticks, have_dftp, heading, human_size, peak_rss_kib,
    percentile, random_file, sha256_file, sync, target_dir,
};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "bench_peers.rs"]
mod peers;
#[path = "bench_remote.rs"]
mod remote;

/// Runs per figure; the table reports medians.
const RUNS: usize = 3;

/// What every DFTP tool gets: a summary on stdout, and an end to a transfer
/// that stops making progress (an error in the table, not a hung bench).
const DFTP_ARGS: &[&str] = &["--json", "--timeout", "120"];

/// What every benchmark gets.
pub struct Ctx {
    /// Smaller sizes and shorter waits, for a run under two minutes.
    pub quick: bool,
    /// Directory of the release binaries.
    pub bin: PathBuf,
    /// Scratch space on the same disk as the target directory, removed at the end.
    pub scratch: PathBuf,
}

impl Ctx {
    /// A release tool on `store`, with its keys and state in `dir` (never
    /// the user's own; one directory per party, as on two machines) and no
    /// store settings from the environment.
    pub fn tool(&self, name: &str, store: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.arg("--store").arg(store).env("DMP_CONFIG_DIR", dir.join("config")).env("DMP_STATE_DIR", dir.join("state"));
        for k in ["DMP_STORE", "DMP_STORE_USER", "DMP_STORE_PASSWORD", "DMP_PEERS_FILE", "RUST_LOG"] {
            c.env_remove(k);
        }
        c
    }
}

struct Bench {
    name: &'static str,
    about: &'static str,
    run: fn(&Ctx) -> Result<Vec<Row>>,
}

/// Every benchmark, in the order they run.
const BENCHES: &[Bench] = &[
    Bench { name: "ping", about: "ping round trip over a local folder store", run: ping_rtt },
    Bench {
        name: "fanin",
        about: "100 ping clients × 10 pings against one server (local folder), at -i 1 and -i 0.1",
        run: fan_in,
    },
    Bench { name: "idle", about: "CPU of an idle ping server and client", run: idle_cpu },
    Bench {
        name: "dftp",
        about: "DFTP through a local folder vs cp + sync, magic-wormhole and NNCP (same file, same runs)",
        run: dftp_local,
    },
    Bench { name: "rss", about: "peak RSS of dftp-send and dftp-receive for a large file", run: dftp_rss_large },
    Bench { name: "webdav", about: "DFTP through nginx WebDAV vs curl -T + curl", run: remote::webdav_dftp },
    Bench { name: "s3", about: "DFTP through SeaweedFS S3 vs curl --aws-sigv4 PUT + GET", run: remote::s3_dftp },
    Bench { name: "webdav-ping", about: "ping round trip over nginx WebDAV", run: remote::webdav_ping },
    Bench { name: "webdav-idle", about: "requests/min of an idle ping client and server", run: remote::webdav_idle },
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
    pub fn new(figure: impl Into<String>, value: f64, unit: &'static str) -> Row {
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
    pub fn skipped(figure: impl Into<String>, why: impl Into<String>) -> Row {
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
    pub fn at_most(mut self, max: f64) -> Row {
        self.target = Some(format!("≤ {} {}", fmt_limit(max), self.unit));
        self.met = self.value.map(|v| v <= max);
        self
    }

    /// Compares with a baseline; target: value / baseline ≤ `max_ratio`.
    /// `ratio` is given when it is measured pair by pair (median of per-run
    /// ratios) rather than as the ratio of the medians.
    pub fn vs(mut self, label: impl Into<String>, baseline: f64, ratio: Option<f64>, max_ratio: f64) -> Row {
        let label = label.into();
        self.target = Some(format!("≤ {}× {label}", fmt_limit(max_ratio)));
        self.baseline = Some((label, baseline));
        self.ratio = ratio.or_else(|| self.value.map(|v| v / baseline));
        self.met = self.ratio.map(|r| r <= max_ratio);
        self
    }

    /// Compares with a baseline without a target (for context).
    pub fn compared(mut self, label: impl Into<String>, baseline: f64, ratio: f64) -> Row {
        self.baseline = Some((label.into(), baseline));
        self.ratio = Some(ratio);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
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
    let (mut quick, mut install_peers) = (false, false);
    let mut only = Vec::new();
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "--peers" => install_peers = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask bench [--quick] [--peers] [NAME...]\n\n  \
                     --quick  smaller files and shorter waits, for a run under two minutes\n  \
                     --peers  install magic-wormhole and NNCP with apt-get when missing\n\nbenchmarks:"
                );
                for b in BENCHES {
                    println!("  {:<12} {}", b.name, b.about);
                }
                return Ok(());
            }
            n if BENCHES.iter().any(|b| b.name == n) => only.push(n.to_owned()),
            other => bail!("unknown bench argument {other:?} (see cargo xtask bench --help)"),
        }
    }
    if install_peers {
        heading("installing the peer tools (magic-wormhole, NNCP)");
        peers::install();
    }
    heading("building the tools (release)");
    let bin = build_release_tools()?;
    let target = target_dir()?;
    remote::stop_leftovers(&target.join("bench-tmp"));
    let scratch = TempDir::new_in(&target.join("bench-tmp"), "run")?;
    let ctx = Ctx { quick, bin, scratch: scratch.path().to_path_buf() };

    let mut rows = Vec::new();
    for b in BENCHES.iter().filter(|b| only.is_empty() || only.iter().any(|n| n == b.name)) {
        heading(&format!("bench {}: {}{}", b.name, b.about, if quick { " (quick)" } else { "" }));
        let started = std::time::Instant::now();
        let r = (b.run)(&ctx);
        println!("(bench {} took {:.0} s)", b.name, started.elapsed().as_secs_f64());
        match r {
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

/// Starts a ping server `bob` on `store` and checks that it is still up shortly after.
fn start_server(ctx: &Ctx, store: &Path, dir: &Path) -> Result<Proc> {
    let mut server =
        Proc::spawn_logged(ctx.tool("dmp-ping-server", store, &dir.join("bob")).arg("bob"), "dmp-ping-server", dir)?;
    std::thread::sleep(Duration::from_millis(200));
    if let Some(st) = server.try_wait()? {
        bail!("dmp-ping-server exited at once ({st}){}", server.log_tail());
    }
    Ok(server)
}

/// What one dmp-ping-client run reported, read from its text output (each
/// reply's time, and the summary's counts).
pub struct Pings {
    pub rtts_ms: Vec<f64>,
    /// The request number of each entry of `rtts_ms` (0 when not known).
    pub seqs: Vec<u64>,
    pub sent: u64,
    pub received: u64,
}

impl Pings {
    /// Starts `dmp-ping-client bob <client> -c COUNT -i INTERVAL -W 5` (text
    /// output, one line per reply); `cmd` is the tool with its store set.
    pub fn start(mut cmd: Command, client: &str, count: u32, interval: &str, dir: &Path) -> Result<Proc> {
        cmd.args(["bob", client, "-c", &count.to_string(), "-i", interval, "-W", "5"]);
        Proc::spawn_logged(&mut cmd, &format!("ping-{client}"), dir)
    }

    /// Waits for a client started by [`Pings::start`] and reads its output
    /// (exit code 1, no reply at all, counts as 100% loss).
    pub fn finish(mut client: Proc) -> Result<Pings> {
        let st = client.wait_timeout(Duration::from_secs(300))?;
        if st.code() != Some(1) {
            client.check(st)?;
        }
        Pings::parse(&client.stdout()).with_context(|| format!("reading the output of {}", client.name))
    }

    /// Reads `reply from bob: seq=1 time=0.549 ms` lines and `3 sent, 2 received, ...`.
    fn parse(out: &str) -> Result<Pings> {
        let mut rtts_ms = Vec::new();
        let mut seqs = Vec::new();
        let mut counts = None;
        for l in out.lines() {
            if l.starts_with("reply from ") {
                let t = l.split(" time=").nth(1).and_then(|t| t.strip_suffix(" ms"));
                rtts_ms.push(t.and_then(|t| t.parse().ok()).with_context(|| format!("unexpected line {l:?}"))?);
                let seq = l.split(" seq=").nth(1).and_then(|t| t.split_whitespace().next());
                seqs.push(seq.and_then(|t| t.parse().ok()).unwrap_or(0));
            } else if let Some((sent, rest)) = l.split_once(" sent, ") {
                let received = rest.split_once(" received").map(|(r, _)| r);
                counts = sent.parse().ok().zip(received.and_then(|r| r.parse().ok()));
            }
        }
        let (sent, received) = counts.context("no summary line (N sent, M received)")?;
        Ok(Pings { rtts_ms, seqs, sent, received })
    }

    /// When the first reply arrived, in ms after the first request was
    /// sent, for requests sent every `interval_ms`.
    pub fn first_reply_ms(&self, interval_ms: f64) -> Option<f64> {
        self.seqs
            .iter()
            .zip(&self.rtts_ms)
            .map(|(s, t)| (s.saturating_sub(1)) as f64 * interval_ms + t)
            .reduce(f64::min)
    }

    /// The replies to the requests sent once the server was answering
    /// (at or after the first reply arrived): the round trip while active,
    /// without the wake-up of a server that polls an idle store slowly.
    pub fn while_active(&self, interval_ms: f64) -> Pings {
        let from = self.first_reply_ms(interval_ms).unwrap_or(0.0);
        let keep: Vec<(u64, f64)> = self
            .seqs
            .iter()
            .zip(&self.rtts_ms)
            .filter(|(s, _)| (s.saturating_sub(1)) as f64 * interval_ms >= from)
            .map(|(s, t)| (*s, *t))
            .collect();
        // Requests 1..=sent went out every `interval_ms`; those before
        // `from` are left out, answered or not.
        let before = if interval_ms > 0.0 { (from / interval_ms).ceil() as u64 } else { 0 };
        Pings {
            rtts_ms: keep.iter().map(|k| k.1).collect(),
            seqs: keep.iter().map(|k| k.0).collect(),
            sent: self.sent.saturating_sub(before),
            received: keep.len() as u64,
        }
    }

    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 { 100.0 } else { (self.sent - self.received) as f64 * 100.0 / self.sent as f64 }
    }

    /// Records p50, p90, p99 (ms) and loss (%) into a run.
    pub fn record(&self, run: &mut crate::util::Run) {
        run.insert("p50", percentile(&self.rtts_ms, 50.0));
        run.insert("p90", percentile(&self.rtts_ms, 90.0));
        run.insert("p99", percentile(&self.rtts_ms, 99.0));
        run.insert("loss", self.loss_pct());
    }
}

/// The rows of a ping benchmark whose runs were recorded by [`Pings::record`].
pub fn ping_rows(s: &Samples, place: &str, p50_max: f64, about: &str) -> Vec<Row> {
    let row =
        |p: &str| Row::new(format!("ping rtt {p}, {place}"), s.median(p), "ms").note(format!("runs: {}", s.list(p)));
    vec![
        row("p50").at_most(p50_max).note(format!("median of {RUNS} runs; {about}")),
        row("p90"),
        row("p99"),
        Row::new(format!("ping loss, {place}"), s.median("loss"), "%").at_most(0.0),
    ]
}

/// Ping round trip over a local folder: p50, p90, p99, median of RUNS runs;
/// beside it, in each run and in the same kind of directory, the same
/// exchange of files without DMP (see [`handoff_floor_ms`]).
fn ping_rtt(ctx: &Ctx) -> Result<Vec<Row>> {
    let count = if ctx.quick { 50 } else { 200 };
    let s = Samples::measure(RUNS, |_, run| {
        let dir = TempDir::new_in(&ctx.scratch, "ping")?;
        let store = dir.join("store");
        let mut server = start_server(ctx, &store, dir.path())?;
        let client =
            Pings::start(ctx.tool("dmp-ping-client", &store, &dir.join("alice")), "alice", count, "0.01", dir.path())?;
        Pings::finish(client)?.record(run);
        server.stop()?;
        if let Some(floor) = handoff_floor_ms(&dir.join("floor"), count as usize)? {
            run.insert("floor", crate::util::median(&floor));
        }
        Ok(())
    })?;
    let mut rows = ping_rows(&s, "local folder", 0.5, &format!("{count} pings at -i 0.01 per run"));
    if s.has("floor") {
        let row =
            Row::new("file hand-off round trip without DMP, p50, local folder", s.median("floor"), "ms").note(format!(
                "no target: the floor under the ping figure; two threads hand {count} files to each other \
                 (write under a temporary name, rename, inotify wake, read, delete) in the same kind of \
                 directory in the same runs; runs: {}",
                s.list("floor")
            ));
        rows.insert(
            1,
            Row::new("ping rtt p50 over the hand-off floor, local folder", s.median("p50"), "ms").compared(
                "hand-off without DMP",
                s.median("floor"),
                s.ratio("p50", "floor"),
            ),
        );
        rows.insert(2, row);
    }
    Ok(rows)
}

/// The least a round trip through files costs here, without DMP: one
/// thread writes a file of a message's size under a temporary name and
/// renames it into the other's directory; the other, woken by inotify,
/// reads and deletes it and answers the same way. Round trips in ms, one
/// every 10 ms as in the ping figure; `None` where there is no inotify.
#[cfg(target_os = "linux")]
fn handoff_floor_ms(dir: &Path, n: usize) -> Result<Option<Vec<f64>>> {
    use inotify::{Inotify, WatchMask};
    use std::io::ErrorKind;
    fn put(d: &Path, name: &str) -> std::io::Result<()> {
        let tmp = d.join(format!(".~{name}.tmp"));
        std::fs::write(&tmp, [7u8; 180])?;
        std::fs::rename(&tmp, d.join(name))
    }
    fn take(ino: &mut Inotify, d: &Path, name: &str) -> std::io::Result<()> {
        let (p, mut buf) = (d.join(name), [0u8; 4096]);
        loop {
            match std::fs::read(&p) {
                Ok(_) => return std::fs::remove_file(&p),
                Err(e) if e.kind() == ErrorKind::NotFound => drop(ino.read_events_blocking(&mut buf)?),
                Err(e) => return Err(e),
            }
        }
    }
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;
    let watch = |d: &Path| -> Result<Inotify> {
        let ino = Inotify::init()?;
        ino.watches().add(d, WatchMask::MOVED_TO)?;
        Ok(ino)
    };
    let (mut ia, mut ib) = (watch(&a)?, watch(&b)?);
    let (a2, b2) = (a.clone(), b.clone());
    let responder = std::thread::spawn(move || -> std::io::Result<()> {
        for i in 0..n {
            take(&mut ia, &a2, &format!("ping{i}"))?;
            put(&b2, &format!("pong{i}"))?;
        }
        Ok(())
    });
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        std::thread::sleep(Duration::from_millis(10));
        let t = Instant::now();
        put(&a, &format!("ping{i}"))?;
        take(&mut ib, &b, &format!("pong{i}"))?;
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    responder.join().map_err(|_| anyhow::anyhow!("the hand-off responder panicked"))??;
    Ok(Some(rtts))
}

#[cfg(not(target_os = "linux"))]
fn handoff_floor_ms(_dir: &Path, _n: usize) -> Result<Option<Vec<f64>>> {
    Ok(None)
}

/// Ping server fan-in: 100 clients at once, 10 pings each, against one
/// server on a local folder; loss and p50 over all the replies of a run.
/// 100 client processes × 10 pings against one server, all started at
/// once. The target is judged at ping's default interval (1 s, as a user
/// runs it); the same at -i 0.1, ten times the load, is reported beside it
/// (no target): on 2 cores that saturates the machine.
fn fan_in(ctx: &Ctx) -> Result<Vec<Row>> {
    const CLIENTS: usize = 100;
    const PINGS: u32 = 10;
    let runs = if ctx.quick { 1 } else { RUNS };
    let series = |interval: &str| {
        Samples::measure(runs, |_, run| {
            let dir = TempDir::new_in(&ctx.scratch, "fanin")?;
            let store = dir.join("store");
            let mut server = start_server(ctx, &store, dir.path())?;
            // Each client with its own keys and state, as on its own machine.
            let clients = (0..CLIENTS)
                .map(|i| {
                    let id = format!("c{i:03}");
                    let own = dir.join(&id);
                    Pings::start(ctx.tool("dmp-ping-client", &store, &own), &id, PINGS, interval, dir.path())
                })
                .collect::<Result<Vec<_>>>()?;
            let all = clients.into_iter().map(Pings::finish).collect::<Result<Vec<_>>>()?;
            server.stop()?;
            let (mut first, mut later) = (Vec::new(), Vec::new());
            for p in &all {
                for (rtt, seq) in p.rtts_ms.iter().zip(&p.seqs) {
                    if *seq == 1 { first.push(*rtt) } else { later.push(*rtt) }
                }
            }
            let rtts: Vec<f64> = all.iter().flat_map(|p| p.rtts_ms.iter().copied()).collect();
            let (sent, received) = all.iter().fold((0, 0), |(s, r), p| (s + p.sent, r + p.received));
            Pings { rtts_ms: rtts, seqs: Vec::new(), sent, received }.record(run);
            if !first.is_empty() {
                run.insert("p50-first", percentile(&first, 50.0));
            }
            if !later.is_empty() {
                run.insert("p50-later", percentile(&later, 50.0));
            }
            Ok(())
        })
    };
    let default = series("1")?;
    let stress = series("0.1")?;
    let about = |interval: &str| {
        format!(
            "{CLIENTS} client processes × {PINGS} pings at -i {interval} -W 5, all started at once; median of {runs} runs"
        )
    };
    let split = |s: &Samples| {
        if s.has("p50-first") && s.has("p50-later") {
            format!(
                "; first pings (first contact while 100 processes start) p50 {:.1} ms, the others {:.2} ms",
                s.median("p50-first"),
                s.median("p50-later")
            )
        } else {
            String::new()
        }
    };
    Ok(vec![
        Row::new(format!("fan-in {CLIENTS}×{PINGS} pings, loss"), default.median("loss"), "%")
            .at_most(0.0)
            .note(format!("{}; runs: {}", about("1"), default.list("loss"))),
        Row::new(format!("fan-in {CLIENTS}×{PINGS} pings, rtt p50"), default.median("p50"), "ms").at_most(5.0).note(
            format!(
                "{}; runs: {}; p99 {:.1} ms{}",
                about("1 (ping's default)"),
                default.list("p50"),
                default.median("p99"),
                split(&default)
            ),
        ),
        Row::new(format!("fan-in {CLIENTS}×{PINGS} pings at -i 0.1, loss"), stress.median("loss"), "%").note(format!(
            "no target; {}; runs: {}",
            about("0.1"),
            stress.list("loss")
        )),
        Row::new(format!("fan-in {CLIENTS}×{PINGS} pings at -i 0.1, rtt p50"), stress.median("p50"), "ms").note(
            format!(
                "no target: ten times the load of ping's default interval, the pings queue (and on this machine's ext4 without a journal each new file costs more after many deletions: see the README); {}; runs: {}; p99 {:.1} ms{}",
                about("0.1"),
                stress.list("p50"),
                stress.median("p99"),
                split(&stress)
            ),
        ),
    ])
}

/// CPU used by an idle server and client (client pinging every 30 s).
fn idle_cpu(ctx: &Ctx) -> Result<Vec<Row>> {
    let window = Duration::from_secs(if ctx.quick { 3 } else { 10 });
    let dir = TempDir::new_in(&ctx.scratch, "idle")?;
    let store = dir.join("store");
    let mut server = start_server(ctx, &store, dir.path())?;
    let mut client = Proc::spawn_logged(
        ctx.tool("dmp-ping-client", &store, &dir.join("alice")).args(["bob", "alice", "-i", "30"]),
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
// DFTP through a local folder (issues 3 and 7): against cp + sync, and
// against magic-wormhole and NNCP, all on the same file in the same runs.
// ---------------------------------------------------------------------------

/// Why the DFTP benchmarks cannot run, if they cannot.
fn no_dftp(figure: &str) -> Option<Vec<Row>> {
    (!have_dftp()).then(|| {
        vec![Row::skipped(figure, "not run: crates/dftp-send and crates/dftp-receive are not in this checkout yet")]
    })
}

/// A random file of `len` bytes in `dir`, and its SHA-256.
fn source_file(dir: &TempDir, len: u64) -> Result<(PathBuf, String)> {
    let src = dir.join("random.bin");
    println!("writing a {} random file", human_size(len));
    random_file(&src, len)?;
    let sha = sha256_file(&src)?;
    Ok((src, sha))
}

/// `cp` + `sync` of `src` into `dir`, after a `sync`: seconds.
fn cp_sync(src: &Path, dir: &Path) -> Result<f64> {
    sync()?;
    let dst = dir.join("copy.bin");
    let t = Instant::now();
    crate::util::run(Command::new("cp").arg(src).arg(&dst), "cp")?;
    sync()?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&dst).ok();
    Ok(secs)
}

/// A comparison tool that may be missing, or may fail in a run: then its
/// row says why and the benchmark goes on.
struct Optional<T> {
    tool: Result<T, String>,
}

impl<T> Optional<T> {
    /// Runs `f` on the tool if it is (still) usable; a failure makes it unusable.
    fn measure(&mut self, run: &mut crate::util::Run, key: &'static str, f: impl FnOnce(&T) -> Result<f64>) {
        if let Ok(t) = &self.tool {
            match f(t) {
                Ok(secs) => {
                    run.insert(key, secs);
                }
                Err(e) => {
                    eprintln!("warning: {key} failed: {e:#}");
                    self.tool = Err(format!("failed: {e:#}").replace(['\n', '|'], " "));
                }
            }
        }
    }
}

fn dftp_local(ctx: &Ctx) -> Result<Vec<Row>> {
    let len: u64 = if ctx.quick { 128 << 20 } else { 1 << 30 };
    let size = human_size(len);
    if let Some(rows) = no_dftp(&format!("DFTP {size}, local folder vs cp + sync")) {
        return Ok(rows);
    }
    let dir = TempDir::new_in(&ctx.scratch, "dftp")?;
    let (src, want) = source_file(&dir, len)?;
    let mut wormhole = Optional { tool: peers::Wormhole::start(dir.path()) };
    let mut nncp = Optional { tool: peers::Nncp::new(dir.path()) };

    let s = Samples::measure(RUNS, |n, run| {
        run.insert("cp+sync", cp_sync(&src, dir.path())?);
        // What each side of DFTP must spend at least: the issue asks both
        // to hash the whole file with SHA-256, a chain no core can split.
        let t = Instant::now();
        sha256_file(&src)?;
        run.insert("sha256", t.elapsed().as_secs_f64());
        // The DFTP pair through a fresh folder store: encrypted (the
        // default), then with --insecure-plaintext for the cost of encryption.
        let p = dftp_pair(ctx, &dir, &src, &want, &[])?;
        run.insert("dftp", p.secs);
        run.insert("rss-send", p.rss_send_mib);
        run.insert("rss-receive", p.rss_receive_mib);
        run.insert("dftp-plain", dftp_pair(ctx, &dir, &src, &want, &["--insecure-plaintext"])?.secs);
        wormhole.measure(run, "wormhole", |w| w.transfer(&src, &want, dir.path(), n));
        nncp.measure(run, "nncp", |w| w.transfer(&src, &want, dir.path(), n));
        Ok(())
    })?;
    // Stops the wormhole servers; keeps why a comparison was not made.
    let why = [wormhole.tool.err(), nncp.tool.err()];

    let mbps = |k: &str| len as f64 / 1e6 / s.median(k);
    let pairwise = format!("ratio = median of {RUNS} per-run ratios; SHA-256 verified");
    let dftp = |what: &str| Row::new(format!("DFTP {size}, local folder, {what}"), s.median("dftp"), "s");
    let mut rows =
        vec![
            dftp("encrypted")
                .vs("cp + sync", s.median("cp+sync"), Some(s.ratio("dftp", "cp+sync")), 2.0)
                .note(format!("{:.0} MB/s (cp + sync {:.0} MB/s); {pairwise}", mbps("dftp"), mbps("cp+sync"))),
            Row::new(format!("DFTP {size}, local folder, --insecure-plaintext"), s.median("dftp-plain"), "s")
                .vs("cp + sync", s.median("cp+sync"), Some(s.ratio("dftp-plain", "cp+sync")), 2.0)
                .note(format!("{:.0} MB/s; {pairwise}", mbps("dftp-plain"))),
            dftp("cost of encryption")
                .vs("--insecure-plaintext", s.median("dftp-plain"), Some(s.ratio("dftp", "dftp-plain")), 1.25)
                .note(format!("encrypted vs plaintext DFTP; {pairwise}")),
        ];
    rows.push(
        Row::new(format!("SHA-256 of the {size} file, one core (reference)"), s.median("sha256"), "s")
            .compared("cp + sync", s.median("cp+sync"), s.ratio("sha256", "cp+sync"))
            .note(format!(
                "{:.0} MB/s; each DFTP side hashes the whole file once, so the pair spends twice this in CPU on top of \
                 reading, sealing, writing and opening; ratio = median of {RUNS} per-run ratios",
                mbps("sha256")
            )),
    );
    // "At least k× faster than X": DFTP / X ≤ 1/k.
    let peers = [
        (
            "wormhole",
            "magic-wormhole",
            2.0,
            "wormhole send + receive --no-listen, through its own mailbox server and transit relay on 127.0.0.1",
        ),
        ("nncp", "NNCP", 3.5, "nncp-file, nncp-xfer into a shared folder, nncp-xfer and nncp-toss of the other node"),
    ];
    for ((key, label, faster, how), why) in peers.into_iter().zip(why) {
        let figure = format!("DFTP {size}, local folder, vs {label}");
        rows.push(if s.has(key) {
            dftp(&format!("vs {label}")).vs(label, s.median(key), Some(s.ratio("dftp", key)), 1.0 / faster).note(
                format!("target: DFTP at least {faster}× faster; {label} {:.0} MB/s: {how}; {pairwise}", mbps(key)),
            )
        } else {
            Row::skipped(figure, why.unwrap_or_else(|| "not measured".into()))
        });
    }
    rows.extend(rss_rows(&s, &size));
    Ok(rows)
}

fn rss_rows(s: &Samples, size: &str) -> Vec<Row> {
    ["send", "receive"]
        .into_iter()
        .map(|side| {
            let key = if side == "send" { "rss-send" } else { "rss-receive" };
            Row::new(format!("peak RSS dftp-{side}, {size}"), s.max(key), "MiB")
                .at_most(64.0)
                .note(format!("VmHWM sampled every 5 ms; highest over runs: {}", s.list(key)))
        })
        .collect()
}

/// Peak RSS for a large file: 4 GiB (512 MiB with --quick), one run, as the
/// memory a transfer needs must not grow with the file.
fn dftp_rss_large(ctx: &Ctx) -> Result<Vec<Row>> {
    let len: u64 = if ctx.quick { 512 << 20 } else { 4 << 30 };
    let size = human_size(len);
    if let Some(rows) = no_dftp(&format!("peak RSS, DFTP {size}")) {
        return Ok(rows);
    }
    let dir = TempDir::new_in(&ctx.scratch, "rss")?;
    let (src, want) = source_file(&dir, len)?;
    let s = Samples::measure(1, |_, run| {
        let p = dftp_pair(ctx, &dir, &src, &want, &[])?;
        run.insert("secs", p.secs);
        run.insert("rss-send", p.rss_send_mib);
        run.insert("rss-receive", p.rss_receive_mib);
        Ok(())
    })?;
    Ok(rss_rows(&s, &size))
}

/// What one DFTP transfer took.
struct Pair {
    secs: f64,
    rss_send_mib: f64,
    rss_receive_mib: f64,
}

/// One DFTP transfer of `src` through a fresh folder store, with keys and
/// state in the run's own directory. The received file must hash to `want`.
fn dftp_pair(ctx: &Ctx, dir: &TempDir, src: &Path, want: &str, extra: &[&str]) -> Result<Pair> {
    sync()?;
    let run_dir = TempDir::new_in(dir.path(), "run")?;
    let (store, out) = (run_dir.join("store"), run_dir.join("out"));
    std::fs::create_dir(&out)?;
    let t = Instant::now();
    let recv = Proc::spawn_logged(
        ctx.tool("dftp-receive", &store, &run_dir.join("bob"))
            .args(["alice", "bob"])
            .arg(&out)
            .args(DFTP_ARGS)
            .args(extra),
        "dftp-receive",
        run_dir.path(),
    )?;
    let send = Proc::spawn_logged(
        ctx.tool("dftp-send", &store, &run_dir.join("alice"))
            .args(["bob", "alice"])
            .arg(src)
            .args(DFTP_ARGS)
            .args(extra),
        "dftp-send",
        run_dir.path(),
    )?;
    let [(send, s_rss), (recv, r_rss)] = wait_pair_sampling_rss([send, recv], Duration::from_secs(1800))?;
    let secs = t.elapsed().as_secs_f64();
    let got = out.join(src.file_name().expect("file name"));
    let have = sha256_file(&got).with_context(|| format!("{}{}", got.display(), recv.log_tail()))?;
    if have != want {
        bail!("the received file differs from the sent one (SHA-256)");
    }
    drop((send, recv, run_dir));
    Ok(Pair { secs, rss_send_mib: s_rss as f64 / 1024.0, rss_receive_mib: r_rss as f64 / 1024.0 })
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

#[cfg(test)]
mod tests {
    use super::Pings;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_hand_off_floor_measures_each_round_trip() {
        let dir = crate::util::TempDir::new_in(&std::env::temp_dir(), "floor-test").unwrap();
        let rtts = super::handoff_floor_ms(&dir.join("f"), 5).unwrap().expect("inotify on Linux");
        assert_eq!(rtts.len(), 5);
        assert!(rtts.iter().all(|&ms| ms > 0.0 && ms < 5_000.0), "{rtts:?}");
        // Every file was taken: nothing is left in either directory.
        for d in ["f/a", "f/b"] {
            assert_eq!(std::fs::read_dir(dir.join(d)).unwrap().count(), 0, "{d} not empty");
        }
    }

    #[test]
    fn reads_ping_output() {
        let out = "PING bob from alice via /tmp/s\nreply from bob: seq=1 time=0.549 ms\nreply from bob: seq=2 \
                   time=12.50 ms\nseq=3: no answer from bob within 5 s\n\n--- bob ping statistics ---\n3 sent, 2 \
                   received, 33.3% loss\nrtt min/avg/max/mdev = 0.549/6.5/12.5/6.0 ms\n";
        let p = Pings::parse(out).unwrap();
        assert_eq!(p.rtts_ms, vec![0.549, 12.5]);
        assert_eq!((p.sent, p.received), (3, 2));
        assert!((p.loss_pct() - 100.0 / 3.0).abs() < 1e-9);
    }
}

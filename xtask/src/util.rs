//! Shared helpers for the xtask commands: paths, cargo, child processes,
//! temporary directories, /proc readings, random files and SHA-256.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lies inside the workspace").to_path_buf()
}

/// `cargo`, the same one that runs this xtask, in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// The target directory, as cargo sees it (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = v["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Prints a heading on stdout.
pub fn heading(text: &str) {
    println!("\n== {text} ==");
}

/// Runs a command to completion with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// The tool packages that exist in this checkout, ping pair first.
pub fn tool_packages() -> Vec<&'static str> {
    ["dmp-ping-server", "dmp-ping-client", "dftp-send", "dftp-receive"]
        .into_iter()
        .filter(|p| root().join("crates").join(p).join("Cargo.toml").is_file())
        .collect()
}

/// True when the DFTP tools are part of this checkout.
pub fn have_dftp() -> bool {
    let t = tool_packages();
    t.contains(&"dftp-send") && t.contains(&"dftp-receive")
}

/// Builds the tools in release mode and returns the directory holding them.
pub fn build_release_tools() -> Result<PathBuf> {
    let pkgs = tool_packages();
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--bins"]);
    for p in &pkgs {
        cmd.args(["--package", p]);
    }
    println!("$ cargo build --release --bins --package {}", pkgs.join(" --package "));
    run(&mut cmd, "cargo build --release")?;
    Ok(target_dir()?.join("release"))
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory `<parent>/<prefix>-<pid>-<random>`.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<TempDir> {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let p = parent.join(format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) if still running
/// when dropped, so that an error in a task never leaves one behind.
pub struct Proc {
    pub name: String,
    pub child: Child,
    logs: Option<(PathBuf, PathBuf)>,
}

impl Proc {
    /// Starts `cmd` with the stdio it was given.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc { name: name.to_owned(), child, logs: None })
    }

    /// Starts `cmd` with stdout and stderr going to `<dir>/<name>.out|.err`.
    pub fn spawn_logged(cmd: &mut Command, name: &str, dir: &Path) -> Result<Proc> {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
        let mut p = Proc::spawn(cmd, name)?;
        p.logs = Some((out, err));
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("waiting for {}", self.name))
    }

    /// Waits up to `timeout`; past it, kills the process and fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish within {} s; killed{}", self.name, timeout.as_secs(), self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGTERM and waits up to 5 s for the process to end, then SIGKILL.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).stderr(Stdio::null()).status();
        match self.wait_timeout(Duration::from_secs(5)) {
            Ok(st) => Ok(st),
            Err(e) => Err(e.context(format!("{} ignored SIGTERM", self.name))),
        }
    }

    /// SIGTERM, then fails unless the process exited 0.
    pub fn stop(&mut self) -> Result<()> {
        let st = self.terminate()?;
        self.check(st)
    }

    /// What the process wrote on stdout (logged processes only).
    pub fn stdout(&self) -> String {
        self.logs.as_ref().map(|(o, _)| std::fs::read_to_string(o).unwrap_or_default()).unwrap_or_default()
    }

    /// What the process wrote on stderr (logged processes only).
    pub fn stderr(&self) -> String {
        self.logs.as_ref().map(|(_, e)| std::fs::read_to_string(e).unwrap_or_default()).unwrap_or_default()
    }

    /// The last lines of stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = &lines[lines.len().saturating_sub(10)..];
        format!("\n--- last lines of {} stderr ---\n{}", self.name, tail.join("\n"))
    }

    /// Fails with the exit status and the tail of stderr unless `st` is success.
    pub fn check(&self, st: ExitStatus) -> Result<()> {
        if !st.success() {
            bail!("{} failed ({st}){}", self.name, self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).stderr(Stdio::null()).status();
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second for /proc/<pid>/stat times (`getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("unexpected /proc/<pid>/stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).context("no utime in /proc/<pid>/stat")?;
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).context("no stime in /proc/<pid>/stat")?;
    Ok(utime + stime)
}

/// Peak resident set size (VmHWM) of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes `len` random bytes to `path`.
pub fn random_file(path: &Path, len: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut rng = fastrand::Rng::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Lower-case hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Median of a non-empty list.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (0 to 100, nearest rank) of a non-empty list; NaN if empty.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The figures of one run of a benchmark, by name.
pub type Run = BTreeMap<&'static str, f64>;

/// Figures measured once per run: medians across runs, and ratios measured
/// pair by pair (the median of the per-run ratios, over the runs that
/// measured both), so that a noisy moment on a shared machine weighs on
/// both sides of a ratio alike.
#[derive(Debug, Default)]
pub struct Samples {
    runs: Vec<Run>,
}

impl Samples {
    /// Runs `f` `n` times (run numbers 1..=n); each run fills in its figures,
    /// which are printed as they come.
    pub fn measure(n: usize, mut f: impl FnMut(usize, &mut Run) -> Result<()>) -> Result<Samples> {
        let mut s = Samples::default();
        for i in 1..=n {
            let mut run = Run::new();
            f(i, &mut run).with_context(|| format!("run {i} of {n}"))?;
            let shown: Vec<String> = run.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            println!("run {i}: {}", shown.join(", "));
            s.runs.push(run);
        }
        Ok(s)
    }

    /// The values of figure `k`, one per run that measured it.
    pub fn values(&self, k: &str) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.get(k).copied()).collect()
    }

    /// True when at least one run measured `k`.
    pub fn has(&self, k: &str) -> bool {
        self.runs.iter().any(|r| r.contains_key(k))
    }

    pub fn median(&self, k: &str) -> f64 {
        median(&self.values(k))
    }

    pub fn max(&self, k: &str) -> f64 {
        self.values(k).into_iter().fold(f64::NAN, f64::max)
    }

    /// The median over runs of `a / b`, from runs that measured both.
    pub fn ratio(&self, a: &str, b: &str) -> f64 {
        let r: Vec<f64> = self.runs.iter().filter_map(|r| Some(r.get(a)? / r.get(b)?)).collect();
        median(&r)
    }

    /// The values of `k` as "0.123, 0.130, 0.125", for notes.
    pub fn list(&self, k: &str) -> String {
        self.values(k).iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ")
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until 127.0.0.1:`port` accepts connections, for up to `timeout`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= end {
            bail!("nothing listens on 127.0.0.1:{port} after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The full path of program `name` on PATH (or in /usr/sbin), if installed.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` to completion with its output captured; fails with stderr's
/// tail unless it exits 0 within `timeout`. Returns stdout.
pub fn output(cmd: &mut Command, what: &str, timeout: Duration, logs: &Path) -> Result<String> {
    let mut p = Proc::spawn_logged(cmd, what, logs)?;
    let st = p.wait_timeout(timeout)?;
    p.check(st)?;
    Ok(p.stdout())
}

/// `sync(1)`: flushes every file system's dirty pages.
pub fn sync() -> Result<()> {
    run(&mut Command::new("sync"), "sync")
}

/// `n` bytes as "64 MiB", "1 GiB".
pub fn human_size(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB && n & (GIB - 1) == 0 {
        format!("{} GiB", n / GIB)
    } else if n >= MIB && n & (MIB - 1) == 0 {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

//! Harness for end-to-end tests that run the real tool binaries: finds (and
//! if needed builds) them, runs them in a sandbox of temporary folders with
//! a clean environment, kills them when a test ends, and offers the small
//! helpers such tests need (random files, SHA-256, polling, store sampling).
//!
//! Every process runs with `DMP_STATE_DIR`, `DMP_CONFIG_DIR` and `DMP_STORE`
//! pointing into the sandbox, so a test never touches the user's state, keys
//! or default store.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails: generous, for slow
/// and busy machines. No test asserts on timing below this.
pub const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Binaries

/// Path of tool `name` (a binary of the package of the same name).
///
/// With `DMP_BIN_DIR` set, the binary is taken from there as it is.
/// Otherwise it is the one in the target directory next to the running test
/// executable (`target/<profile>/`), brought up to date once per test process
/// by `cargo build --bins -p <name>` (a no-op when fresh): `cargo test -p X`
/// builds only X's own binaries, and a stale peer binary would make the
/// tests lie.
pub fn bin(name: &str) -> PathBuf {
    let exe = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = std::env::var_os("DMP_BIN_DIR").filter(|d| !d.is_empty()) {
        let p = PathBuf::from(dir).join(&exe);
        assert!(p.is_file(), "DMP_BIN_DIR is set but {} does not exist", p.display());
        return p;
    }
    let dir = default_bin_dir();
    let p = dir.join(&exe);
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(name) {
        if let Err(e) = cargo_build(name, &dir) {
            assert!(p.is_file(), "{} is missing and building it failed: {e}", p.display());
            eprintln!("warning: building {name} failed, testing the existing binary: {e}");
        }
        built.insert(name.to_owned());
    }
    assert!(p.is_file(), "{} does not exist after building {name}", p.display());
    p
}

/// The target directory of the running test executable (`target/<profile>`).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory").to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    dir
}

fn cargo_build(package: &str, bin_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bins", "-p", package]).arg("--manifest-path").arg(&manifest);
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target_dir) = bin_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    // `cargo test` gives the test process the variables it sets for the
    // crate under test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Passed on,
    // they reach every crate the nested build compiles and change their
    // fingerprints: each test binary then rebuilt dependencies (about 20 s)
    // and the next outer build rebuilt them back.
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let set_by_cargo_for_a_crate = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if set_by_cargo_for_a_crate {
            cmd.env_remove(k);
        }
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("cargo build -p {package}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

// ---------------------------------------------------------------------------
// Sandbox

/// A temporary directory holding the store, the state directory and the
/// logs of one test. Removed when dropped, unless the test failed and
/// `DMP_TEST_KEEP` is set (its path is printed).
pub struct Sandbox {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    /// The folder store (`--store` / `DMP_STORE`).
    pub store: PathBuf,
    /// `DMP_STATE_DIR` of every process started here.
    pub state: PathBuf,
    /// `DMP_CONFIG_DIR` (keys and pinned peer keys) of every process started here.
    pub config: PathBuf,
    logs: PathBuf,
    runs: AtomicUsize,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("dmp-e2e-").tempdir().expect("temporary directory");
        let root = dir.path().to_path_buf();
        let store = root.join("store");
        let state = root.join("state");
        let config = root.join("config");
        let logs = root.join("logs");
        for d in [&store, &state, &config, &logs] {
            fs::create_dir_all(d).expect("sandbox directory");
        }
        Sandbox { dir: Some(dir), root, store, state, config, logs, runs: AtomicUsize::new(0) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` inside the sandbox.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates directory `rel` (and its parents) inside the sandbox.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).expect("create directory");
        p
    }

    /// The store directory `<store>/<from>/<to>`: `from`'s outbox towards `to`.
    pub fn outbox(&self, from: &str, to: &str) -> PathBuf {
        self.store.join(from).join(to)
    }

    /// A command for `tool` with the sandbox environment: `DMP_STATE_DIR`,
    /// `DMP_CONFIG_DIR` and `DMP_STORE` set to the sandbox's, `RUST_LOG` removed (set
    /// `DMP_TEST_RUST_LOG` to pass one), no standard input, run in the
    /// sandbox root.
    pub fn command<I, S>(&self, tool: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin(tool));
        cmd.args(args)
            .current_dir(&self.root)
            .env("DMP_STATE_DIR", &self.state)
            .env("DMP_CONFIG_DIR", &self.config)
            .env("DMP_STORE", &self.store)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        if let Some(l) = std::env::var_os("DMP_TEST_RUST_LOG") {
            cmd.env("RUST_LOG", l);
        }
        cmd
    }

    /// Starts `tool` with `args`; stdout and stderr go to log files of the
    /// sandbox. The process is killed when the returned guard is dropped.
    pub fn spawn<I, S>(&self, tool: &str, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.command(tool, args);
        self.spawn_command(tool, cmd)
    }

    /// Starts a prepared command (see [`Sandbox::command`]).
    pub fn spawn_command(&self, label: &str, mut cmd: Command) -> Proc {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let label = format!("{label}#{n}");
        let out = self.logs.join(format!("{label}.out"));
        let err = self.logs.join(format!("{label}.err"));
        cmd.stdout(File::create(&out).expect("log file")).stderr(File::create(&err).expect("log file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        Proc { child: Some(child), label, out, err, status: None }
    }

    /// Runs `tool` to completion (at most [`TIMEOUT`]).
    pub fn run<I, S>(&self, tool: &str, args: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn(tool, args).wait()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("DMP_TEST_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping the sandbox {}", d.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Processes

/// A running tool. Dropping it kills the process (SIGKILL) and reaps it.
pub struct Proc {
    child: Option<Child>,
    label: String,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
}

/// A process that has exited, with its output.
#[derive(Debug, Clone)]
pub struct Finished {
    pub label: String,
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process").id()
    }

    /// Sends signal `sig` (a name such as "INT", "STOP", "CONT") with
    /// `kill(1)`. Does nothing once the process has been reaped.
    pub fn signal(&mut self, sig: &str) {
        if !self.is_running() {
            return;
        }
        let st = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run kill");
        // It may have exited between the check and the signal.
        assert!(st.success() || !self.is_running(), "kill -s {sig} {} failed", self.pid());
    }

    /// Pauses the process with SIGSTOP and returns once every one of its
    /// threads is stopped (`kill` only queues the signal; a busy machine
    /// may let the process run on for a while). False if it had exited.
    pub fn pause(&mut self) -> bool {
        self.signal("STOP");
        let task = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let until = Instant::now() + TIMEOUT;
        loop {
            if !self.is_running() {
                return false;
            }
            let states: Vec<String> = std::fs::read_dir(&task)
                .map(|rd| rd.flatten().filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok()).collect())
                .unwrap_or_default();
            // The state follows the parenthesised command name.
            let stopped =
                |s: &String| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T') || r.starts_with('t'));
            if !states.is_empty() && states.iter().all(stopped) {
                return true;
            }
            assert!(Instant::now() < until, "{} did not stop within {} s of SIGSTOP", self.label, TIMEOUT.as_secs());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// True until the process has exited (reaping it when it has).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        let child = self.child.as_mut().expect("process");
        match child.try_wait().expect("try_wait") {
            Some(st) => {
                self.status = Some(st);
                false
            }
            None => true,
        }
    }

    /// The outcome once the process has exited, else `None`.
    pub fn try_finish(&mut self) -> Option<Finished> {
        if self.is_running() { None } else { Some(self.finished()) }
    }

    /// Waits for the process to exit, at most [`TIMEOUT`].
    pub fn wait(self) -> Finished {
        self.wait_for(TIMEOUT)
    }

    /// Waits for the process to exit; past `timeout` it is killed and the
    /// test fails with its output.
    pub fn wait_for(mut self, timeout: Duration) -> Finished {
        let until = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= until {
                self.kill_now();
                let f = self.finished();
                panic!("{} did not finish within {} s\n{}", self.label, timeout.as_secs(), f.describe());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.finished()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(mut self) -> Finished {
        self.kill_now();
        self.finished()
    }

    /// [`Proc::kill`] for a process held in a slot that a new one takes next.
    pub fn kill_in_place(&mut self) -> Finished {
        self.kill_now();
        self.finished()
    }

    /// What it wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        read_lossy(&self.err)
    }

    /// What it wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        read_lossy(&self.out)
    }

    fn kill_now(&mut self) {
        if self.is_running() {
            let child = self.child.as_mut().expect("process");
            let _ = child.kill();
            self.status = Some(child.wait().expect("wait"));
        }
    }

    fn finished(&self) -> Finished {
        use std::os::unix::process::ExitStatusExt;
        let st = self.status.expect("exited");
        Finished {
            label: self.label.clone(),
            code: st.code(),
            signal: st.signal(),
            stdout: read_lossy(&self.out),
            stderr: read_lossy(&self.err),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let was_running = self.is_running();
        self.kill_now();
        if std::thread::panicking() {
            let note = if was_running { " (killed)" } else { "" };
            eprintln!("--- {}{note}: stderr ---\n{}", self.label, tail(&self.stderr_so_far(), 4000));
        }
    }
}

impl Finished {
    /// Panics unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Finished {
        assert_eq!(
            self.code,
            Some(code),
            "{} exited with {:?}, expected {code}\n{}",
            self.label,
            self.code,
            self.describe()
        );
        self
    }

    /// Panics unless the process exited 0.
    #[track_caller]
    pub fn expect_ok(&self) -> &Finished {
        self.expect_code(0)
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }

    /// The status and both outputs, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{}: code {:?} signal {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.label,
            self.code,
            self.signal,
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ---------------------------------------------------------------------------
// Files

/// The seed for a test's random data: `DMP_TEST_SEED` if set, else random.
/// Printed, so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("DMP_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: DMP_TEST_SEED={s}");
    s
}

/// Writes `size` bytes generated from `seed` to `path`.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.sync_all().expect("sync");
}

/// SHA-256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Every file (not directory) under `dir`, recursively, hidden ones
/// included; empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for ent in rd.flatten() {
            let p = ent.path();
            match ent.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Every entry (file or directory) directly in `dir`, by name, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The length of a file, `None` when absent.
pub fn file_len(p: &Path) -> Option<u64> {
    fs::metadata(p).ok().map(|m| m.len())
}

/// The first file in `dir` whose name matches `pred`.
pub fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    entries(dir).into_iter().find(|n| pred(n)).map(|n| dir.join(n))
}

/// Polls `cond` every few milliseconds until it is true; fails the test
/// after `timeout`, naming `what`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "timed out after {} s waiting for {what}", timeout.as_secs());
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Store sampling

/// Total bytes of the files in `dir` whose names end with `suffix` that
/// provably existed at one same moment: each file is measured, then checked
/// again after all were measured; files that vanished meanwhile are left
/// out. Files are written once and never recreated under the same name, so
/// the files counted all existed together between the last measurement and
/// the first re-check: the result never exceeds what really was in `dir`.
pub fn coexisting_bytes(dir: &Path, suffix: &str) -> (u64, usize) {
    let names: Vec<String> = entries(dir).into_iter().filter(|n| n.ends_with(suffix)).collect();
    let sized: Vec<(PathBuf, u64)> =
        names.iter().filter_map(|n| file_len(&dir.join(n)).map(|len| (dir.join(n), len))).collect();
    let still: Vec<u64> = sized.iter().filter(|(p, _)| p.exists()).map(|(_, len)| *len).collect();
    (still.iter().sum(), still.len())
}

/// Samples [`coexisting_bytes`] of a directory on a thread until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Samples>>,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Samples {
    /// Most bytes seen at once.
    pub max_bytes: u64,
    /// Most files seen at once.
    pub max_files: usize,
    /// Samples taken.
    pub samples: u64,
    /// Samples that saw at least one file.
    pub nonempty: u64,
}

impl Sampler {
    /// Samples `dir` (files ending with `suffix`) every `every`.
    pub fn start(dir: PathBuf, suffix: &str, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let suffix = suffix.to_owned();
        let handle = std::thread::spawn(move || {
            let mut s = Samples::default();
            while !flag.load(Ordering::Relaxed) {
                let (bytes, files) = coexisting_bytes(&dir, &suffix);
                s.samples += 1;
                if files > 0 {
                    s.nonempty += 1;
                }
                s.max_bytes = s.max_bytes.max(bytes);
                s.max_files = s.max_files.max(files);
                std::thread::sleep(every);
            }
            s
        });
        Sampler { stop, handle: Some(handle) }
    }

    /// Stops sampling and returns what was seen.
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("sampler thread")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub mod fault_proxy;
pub mod server;

//! End-to-end tests: the real dmp-ping-server and dmp-ping-client binaries
//! as processes over a temporary folder store, checking their output and
//! exit codes. Binaries come from `DMP_BIN_DIR` when set, else from the
//! target directory of this test (dmp-ping-server is built there on demand).
//! No timing assertions: every wait is generous.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any single process may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(60);

// ---- finding the binaries --------------------------------------------------

fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("DMP_BIN_DIR") {
            return PathBuf::from(d);
        }
        let client = PathBuf::from(env!("CARGO_BIN_EXE_dmp-ping-client"));
        let dir = client.parent().expect("binary has a directory").to_path_buf();
        if !dir.join("dmp-ping-server").is_file() {
            build_server(&dir);
        }
        dir
    })
}

/// Builds dmp-ping-server into the target directory holding `dir` (once).
fn build_server(dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let target = dir.parent().expect("target directory");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "dmp-ping-server", "--target-dir"]).arg(target);
    if profile == "release" {
        cmd.arg("--release");
    }
    let st = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build");
    assert!(st.success(), "cargo build -p dmp-ping-server failed");
    assert!(dir.join("dmp-ping-server").is_file(), "dmp-ping-server not found in {} after building", dir.display());
}

fn command(name: &str, store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_dir().join(name));
    cmd.args(args).arg("--store").arg(store);
    cmd.env_remove("DMP_STORE").env_remove("RUST_LOG").stdin(Stdio::null());
    // Keys and state stay in the test's own directory, next to its store.
    let sandbox = store.parent().unwrap_or(store);
    cmd.env("DMP_CONFIG_DIR", sandbox.join("config")).env("DMP_STATE_DIR", sandbox.join("state"));
    cmd
}

// ---- processes -----------------------------------------------------------

/// A running process with its output going to files; terminated (SIGTERM,
/// then SIGKILL) when dropped.
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    what: String,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Proc {
    fn spawn(mut cmd: Command, logs: &Path, what: &str) -> Proc {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = logs.join(format!("{n}-{what}.out"));
        let err = logs.join(format!("{n}-{what}.err"));
        cmd.stdout(File::create(&out).unwrap()).stderr(File::create(&err).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        Proc { child, out, err, what: what.to_owned() }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
        assert!(st.is_ok_and(|s| s.success()), "kill -{sig} {}", self.what);
    }

    /// Waits for the process to exit; panics (after killing it) past `PATIENCE`.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {PATIENCE:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the process's stdout satisfies `cond`.
    fn wait_stdout(&mut self, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(&self.stdout()) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({st}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {PATIENCE:?}\nstdout:\n{}",
                self.what,
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the process's stderr satisfies `cond`.
    fn wait_stderr(&mut self, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(&self.stderr()) {
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {PATIENCE:?}\nstderr:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs to completion: (exit code, stdout, stderr).
    fn finish(mut self) -> (i32, String, String) {
        let st = self.wait();
        (st.code().unwrap_or(-1), self.stdout(), self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory holding the store and the processes' output.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().expect("temp dir") }
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn logs(&self) -> &Path {
        self.dir.path()
    }
    fn server(&self, id: &str) -> Proc {
        Proc::spawn(command("dmp-ping-server", &self.store(), &[id]), self.logs(), &format!("server-{id}"))
    }
    fn client(&self, args: &[&str]) -> Proc {
        Proc::spawn(command("dmp-ping-client", &self.store(), args), self.logs(), &format!("client-{}", args[1]))
    }
    /// Runs a client to completion.
    fn ping(&self, args: &[&str]) -> (i32, String, String) {
        self.client(args).finish()
    }
    /// Runs a binary with a store path of the caller's choosing.
    fn run(&self, name: &str, store: &Path, args: &[&str]) -> (i32, String, String) {
        Proc::spawn(command(name, store, args), self.logs(), name).finish()
    }
}

// ---- output parsing ----------------------------------------------------

/// The `seq` numbers of `reply from <server>: seq=N time=X ms` lines, each
/// checked for shape.
fn replies(stdout: &str, server: &str) -> Vec<u64> {
    let prefix = format!("reply from {server}: seq=");
    stdout
        .lines()
        .filter(|l| l.starts_with("reply from"))
        .map(|l| {
            let rest = l.strip_prefix(&prefix).unwrap_or_else(|| panic!("odd reply line {l:?}"));
            let (seq, time) = rest.split_once(" time=").unwrap_or_else(|| panic!("odd reply line {l:?}"));
            let ms = time.strip_suffix(" ms").unwrap_or_else(|| panic!("odd reply line {l:?}"));
            let ms: f64 = ms.parse().unwrap_or_else(|_| panic!("time in {l:?} is not a number"));
            assert!(ms >= 0.0 && ms.is_finite(), "{l:?}");
            seq.parse().unwrap_or_else(|_| panic!("seq in {l:?} is not a number"))
        })
        .collect()
}

/// `(sent, received, loss)` from the `N sent, M received, X% loss` line
/// (checked to have no `+K not written` part: see [`full_summary`]).
fn summary(stdout: &str) -> (u64, u64, String) {
    let (sent, received, unwritten, loss) = full_summary(stdout);
    assert_eq!(unwritten, 0, "{stdout}");
    (sent, received, loss)
}

/// `(sent, received, not written, loss)` from the summary line, which has
/// a `+K not written` part when K requests never reached the store.
fn full_summary(stdout: &str) -> (u64, u64, u64, String) {
    let line =
        stdout.lines().find(|l| l.contains(" sent, ")).unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let mut parts: Vec<&str> = line.split(", ").collect();
    let unwritten = match parts.len() {
        4 => {
            let part = parts.remove(2);
            let n = part.strip_prefix('+').and_then(|p| p.strip_suffix(" not written"));
            n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?}"))
        }
        _ => 0,
    };
    assert_eq!(parts.len(), 3, "summary {line:?}");
    let sent = parts[0].strip_suffix(" sent").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let recv = parts[1].strip_suffix(" received").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let loss = parts[2].strip_suffix(" loss").unwrap_or_else(|| panic!("{line:?}"));
    assert!(loss.ends_with('%'), "{line:?}");
    (sent, recv, unwritten, loss.to_owned())
}

/// The four numbers of `rtt min/avg/max/mdev = a/b/c/d ms`.
fn rtt_line(stdout: &str) -> [f64; 4] {
    let line = stdout.lines().find(|l| l.starts_with("rtt ")).unwrap_or_else(|| panic!("no rtt line in:\n{stdout}"));
    let nums = line
        .strip_prefix("rtt min/avg/max/mdev = ")
        .and_then(|r| r.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("odd rtt line {line:?}"));
    let v: Vec<f64> = nums.split('/').map(|n| n.parse().unwrap_or_else(|_| panic!("{line:?}"))).collect();
    assert_eq!(v.len(), 4, "{line:?}");
    assert!(v[0] <= v[1] && v[1] <= v[2] && v[3] >= 0.0, "{line:?}");
    [v[0], v[1], v[2], v[3]]
}

/// Regular files (at any depth) below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn one_line(stderr: &str, what: &str) -> String {
    // (A party's first run says that it created its key.)
    let lines: Vec<&str> =
        stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("created a key for ")).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line on stderr, got:\n{stderr}");
    lines[0].to_owned()
}

// ---- the cases -----------------------------------------------------------

#[test]
fn three_pings_get_three_replies() {
    let env = Env::new();
    let _server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "3", "-i", "0.1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.lines().next().is_some_and(|l| l.starts_with("PING bob from alice")), "{out}");
    assert_eq!(replies(&out, "bob"), vec![1, 2, 3], "{out}");
    assert_eq!(summary(&out), (3, 3, "0%".to_owned()));
    assert!(out.contains("3 sent, 3 received, 0% loss"), "{out}");
    rtt_line(&out);
}

#[test]
fn json_output_has_exactly_the_documented_keys() {
    let env = Env::new();
    let _server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "3", "-i", "0.1", "--json"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object and nothing else on stdout:\n{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    let obj = v.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["client", "loss_pct", "received", "rtt_ms", "sent", "server"]);
    assert_eq!(obj["server"], "bob");
    assert_eq!(obj["client"], "alice");
    assert_eq!(obj["sent"].as_u64(), Some(3));
    assert_eq!(obj["received"].as_u64(), Some(3));
    assert_eq!(obj["loss_pct"].as_f64(), Some(0.0));
    let rtt = obj["rtt_ms"].as_object().expect("rtt_ms is an object");
    let mut keys: Vec<&str> = rtt.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["avg", "max", "mdev", "min", "p50", "p99"]);
    for (k, n) in rtt {
        let n = n.as_f64().unwrap_or_else(|| panic!("rtt_ms.{k} is not a number: {n}"));
        assert!(n >= 0.0, "rtt_ms.{k} = {n}");
    }
    let f = |k: &str| rtt[k].as_f64().unwrap();
    assert!(f("min") <= f("p50") && f("p50") <= f("p99") && f("p99") <= f("max"), "{rtt:?}");
    assert!(f("min") <= f("avg") && f("avg") <= f("max"), "{rtt:?}");
}

#[test]
fn no_server_means_total_loss_and_exit_1() {
    let env = Env::new();
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "2", "-i", "0.1", "-W", "0.5"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(replies(&out, "bob").is_empty());
    // Without the server's key nothing can be sealed: no request reached
    // the store, and "sent" says so (before, it counted requests made).
    assert_eq!(full_summary(&out), (0, 0, 2, "100%".to_owned()));
    assert!(out.contains("0 sent, 0 received, +2 not written, 100% loss"), "{out}");
    // The client leaves nothing behind in its outbox.
    assert!(files_below(&env.store().join("alice")).is_empty(), "{:?}", files_below(&env.store()));
    // Without a reply there is no round trip to report: null, not zeros.
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1", "-W", "0.3", "--json"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout is JSON");
    assert_eq!((v["received"].as_u64(), v["rtt_ms"].is_null()), (Some(0), true), "{v}");
    assert_eq!((v["sent"].as_u64(), v["loss_pct"].as_f64()), (Some(0), Some(100.0)), "{v}");
    // With the server's key pinned the requests are written: sent, and lost.
    let _server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    drop(_server);
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "2", "-i", "0.1", "-W", "0.5"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(summary(&out), (2, 0, "100%".to_owned()));
}

/// `-w SECONDS`, as ping(8): the run ends then, however long `-W` is. With
/// no server, the client says once why nothing was sent (the server
/// publishes its key only while it runs) and exits 1; with `-c 2`, it ends
/// at the second reply, exit 0; and it fails (exit 1) when fewer than the
/// count came by the deadline.
#[test]
fn a_deadline_ends_the_run_and_counts_replies() {
    let env = Env::new();
    let t = Instant::now();
    let (code, out, err) = env.ping(&["bob", "alice", "-w", "1.5", "-i", "0.2", "-W", "30"]);
    let took = t.elapsed();
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(took >= Duration::from_millis(1_500) && took < Duration::from_secs(20), "took {took:?}");
    // Made every 0.2 s until 1.5 s: 8, fewer only if the machine stalls.
    let (sent, received, unwritten, loss) = full_summary(&out);
    assert!((sent, received, loss.as_str()) == (0, 0, "100%") && (4..=8).contains(&unwritten), "{out}");
    let hints: Vec<&str> = err.lines().filter(|l| l.contains("publishes no key")).collect();
    assert_eq!(hints.len(), 1, "one hint about the missing key:\n{err}");
    assert!(hints[0].contains("no dmp-ping-server bob runs on this store"), "{err}");

    let _server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "2", "-w", "60", "-i", "0.1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(replies(&out, "bob"), vec![1, 2], "{out}");
    assert!(!err.contains("publishes no key"), "{err}");
    drop(_server);
    // The key stays pinned, so requests are written and go unanswered.
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "2", "-w", "1", "-i", "0.2"]);
    assert_eq!(code, 1, "fewer than 2 replies by the deadline:\nstdout:\n{out}\nstderr:\n{err}");
    let (sent, received, loss) = summary(&out);
    assert!((3..=5).contains(&sent) && (received, loss.as_str()) == (0, "100%"), "{out}");
}

/// A server outbox on a host that accepts and never answers: before, the
/// client awaited the server's key in its loop for the store's whole retry
/// time (it was still running after 7 minutes with `-c 1 -W 5`), deaf to
/// Ctrl-C. Now `-W` holds, and so does SIGINT.
#[test]
fn a_server_outbox_that_never_answers_does_not_hang_the_client() {
    let env = Env::new();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let outbox = format!("bob=http://127.0.0.1:{}/bob/", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s);
        }
    });
    let t = Instant::now();
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1", "-W", "2", "--peer-outbox", &outbox]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(full_summary(&out), (0, 0, 1, "100%".to_owned()), "no key of bob, nothing written");
    assert!(t.elapsed() < Duration::from_secs(15), "-W 2 ended after {:?}", t.elapsed());
    let mut client = env.client(&["bob", "alice", "--peer-outbox", &outbox]);
    client.wait_stdout("the header", |o| o.starts_with("PING "));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    client.signal("INT");
    let st = client.wait();
    assert_eq!(st.code(), Some(1), "stderr:\n{}", client.stderr());
    assert!(t.elapsed() < Duration::from_secs(5), "SIGINT heard after {:?}", t.elapsed());
}

/// `dmp-ping-client ... | head -1`: once stdout is closed the client stops
/// as on Ctrl-C, removes its files from the store and exits without a
/// panic (`println!` panics on a closed pipe).
#[test]
fn a_closed_stdout_ends_the_run_cleanly() {
    use std::io::BufRead;
    let env = Env::new();
    let _server = env.server("bob");
    let mut cmd = command("dmp-ping-client", &env.store(), &["bob", "alice", "-i", "0.05"]);
    let err = env.logs().join("client-closed.err");
    cmd.stdout(Stdio::piped()).stderr(File::create(&err).unwrap());
    let mut child = cmd.spawn().expect("start dmp-ping-client");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the PING line");
    assert!(line.starts_with("PING bob from alice"), "{line:?}");
    line.clear();
    out.read_line(&mut line).expect("a reply line");
    assert!(line.starts_with("reply from bob"), "{line:?}");
    drop(out);
    let deadline = Instant::now() + PATIENCE;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dmp-ping-client went on after its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(st.code(), Some(0), "{st}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(files_below(&env.store().join("alice")).is_empty(), "{:?}", files_below(&env.store()));
}

/// A client that comes back with a new key (a reinstall) while the server
/// has its old one pinned: the server says so, with both fingerprints, and
/// refuses that client instead of failing to open its files for ever.
#[test]
fn a_client_with_a_changed_key_is_refused_by_name() {
    let env = Env::new();
    let mut server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let mut cmd = command("dmp-ping-client", &env.store(), &["bob", "alice", "-c", "2", "-i", "0.5", "-W", "3"]);
    cmd.env("DMP_CONFIG_DIR", env.logs().join("config-reinstalled"));
    let (code, out, err) = Proc::spawn(cmd, env.logs(), "client-new-key").finish();
    assert_eq!(code, 1, "no reply for a client whose key changed\nstdout:\n{out}\nstderr:\n{err}");
    server.wait_stderr("the refusal", |e| e.contains("refusing alice") && e.contains("changed"));
    let err = server.stderr();
    let line = err.lines().find(|l| l.contains("refusing alice")).unwrap_or_default();
    assert!(line.contains("pinned") && line.contains("published"), "{line}");
}

/// The server comes back with a new key (a reinstall, or an impostor)
/// while the client has the old one pinned: the client refuses it with
/// both fingerprints and exit code 2, a key error, not 1, which says "no
/// reply" (a monitoring check reported a possible impostor as "no
/// answer"). Accepted deliberately, it gets replies again.
#[test]
fn a_changed_server_key_is_a_key_error() {
    let env = Env::new();
    let mut server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));
    let mut cmd = command("dmp-ping-server", &env.store(), &["bob"]);
    cmd.env("DMP_CONFIG_DIR", env.logs().join("config-reinstalled"));
    let _server = Proc::spawn(cmd, env.logs(), "server-new-key");
    let t = Instant::now();
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1", "-W", "20", "-q"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "refused after {:?}", t.elapsed());
    let line = one_line(&err, "changed key");
    assert!(line.starts_with("error: the key of bob changed: pinned "), "{line}");
    assert!(line.contains(", published ") && line.contains("--accept-new-key bob"), "{line}");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1", "--accept-new-key", "bob"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
}

#[test]
fn bad_peer_ids_are_usage_errors_that_state_the_rule() {
    let env = Env::new();
    let long = "a".repeat(65);
    for bad in ["BOB", ".x", long.as_str(), "a/b", ""] {
        for (name, args) in [
            ("dmp-ping-client", vec![bad, "alice", "-c", "1"]),
            ("dmp-ping-client", vec!["bob", bad, "-c", "1"]),
            ("dmp-ping-server", vec![bad]),
        ] {
            let (code, out, err) = env.run(name, &env.store(), &args);
            assert_eq!(code, 2, "{name} {args:?}: stdout:\n{out}\nstderr:\n{err}");
            let line = one_line(&err, &format!("{name} {args:?}"));
            assert!(line.contains("lower-case ASCII") && line.contains("64"), "{name} {args:?}: {line}");
        }
    }
    assert!(!env.store().join("BOB").exists() && !env.store().join("a").exists());
}

/// A client with the server's own id would answer nothing, and on its way
/// out remove the server's files (its published key among them), so that
/// no new client could reach the server any more.
#[test]
fn a_client_with_the_servers_id_is_a_usage_error() {
    let env = Env::new();
    let (code, out, err) = env.run("dmp-ping-client", &env.store(), &["bob", "bob", "-c", "1", "-W", "1"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    let line = one_line(&err, "bob bob");
    assert!(line.contains("must differ"), "{line}");
    assert!(out.is_empty(), "nothing on stdout, got {out:?}");
    assert!(files_below(&env.store()).is_empty(), "{:?}", files_below(&env.store()));
}

#[test]
fn bad_numbers_are_usage_errors() {
    let env = Env::new();
    for args in [
        ["-i", "0"],
        ["-i", "abc"],
        ["-i", "-1"],
        ["-i", "1e12"],
        ["-i", "nan"],
        ["-c", "0"],
        ["-c", "x"],
        ["-c", "-3"],
        ["-c", "1.5"],
        ["-W", "0"],
        ["-W", "soon"],
    ] {
        let mut all = vec!["bob", "alice"];
        all.extend(args);
        let (code, out, err) = env.run("dmp-ping-client", &env.store(), &all);
        assert_eq!(code, 2, "{args:?}: stdout:\n{out}\nstderr:\n{err}");
        let line = one_line(&err, &format!("{args:?}"));
        assert!(!line.is_empty());
        assert!(out.is_empty(), "{args:?}: nothing on stdout, got {out:?}");
    }
}

#[test]
fn a_store_that_cannot_be_created_is_a_usage_error() {
    let env = Env::new();
    let file = env.logs().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    for store in [file.join("store"), file.clone()] {
        for (name, args) in
            [("dmp-ping-client", vec!["bob", "alice", "-c", "1", "-W", "0.5"]), ("dmp-ping-server", vec!["bob"])]
        {
            let (code, out, err) = env.run(name, &store, &args);
            assert_eq!(code, 2, "{name} --store {}: stdout:\n{out}\nstderr:\n{err}", store.display());
            let line = one_line(&err, name);
            assert!(line.starts_with("error:"), "{line}");
            // It says what is wrong with which path (not "create : File exists").
            assert!(line.contains("not a directory") || line.contains("Not a directory"), "{line}");
            assert!(!line.contains(" : "), "{line}");
            assert!(!out.contains("sent,"), "{name}: no ping summary for a store error:\n{out}");
        }
    }
}

#[test]
fn two_clients_ping_one_server_at_once() {
    let env = Env::new();
    let _server = env.server("bob");
    let a = env.client(&["bob", "alice", "-c", "5", "-i", "0.1"]);
    let c = env.client(&["bob", "carol", "-c", "5", "-i", "0.1"]);
    for (who, p) in [("alice", a), ("carol", c)] {
        let (code, out, err) = p.finish();
        assert_eq!(code, 0, "{who}: stdout:\n{out}\nstderr:\n{err}");
        assert_eq!(replies(&out, "bob"), vec![1, 2, 3, 4, 5], "{who}:\n{out}");
        assert_eq!(summary(&out), (5, 5, "0%".to_owned()), "{who}");
    }
}

/// Two clients with the same ids write the same outbox and take each
/// other's replies: before, one reported 5/5 and the other 1/5 with exit
/// code 0 and no warning. Now the second stops at once with exit code 2
/// and one line, and the first runs on undisturbed; so does a second
/// server with the same id.
#[test]
fn a_second_run_with_the_same_ids_is_refused_at_once() {
    let env = Env::new();
    let mut server = env.server("bob");
    let mut first = env.client(&["bob", "alice", "-c", "8", "-i", "0.2"]);
    first.wait_stdout("a first reply", |o| !replies(o, "bob").is_empty());
    let t = Instant::now();
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "5", "-i", "0.2"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "refused after {:?}", t.elapsed());
    let line = one_line(&err, "second client");
    assert!(
        line.starts_with("error: another dmp-ping-client from alice to bob through this store is running"),
        "{line}"
    );
    assert!(out.is_empty(), "nothing on stdout, got {out:?}");
    let (code, out, err) = env.run("dmp-ping-server", &env.store(), &["bob"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    let line = one_line(&err, "second server");
    assert!(line.starts_with("error: another dmp-ping-server as bob through this store is running"), "{line}");
    let (code, out, err) = first.finish();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(replies(&out, "bob"), (1..=8).collect::<Vec<u64>>(), "{out}");
    assert_eq!(summary(&out), (8, 8, "0%".to_owned()));
    // The lock goes with the run: the same ids work again afterwards.
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());
}

/// Fan-in: 25 clients at once, each with 5 pings, against one server: no
/// loss. (Before each party's watch was narrowed to its own inbox and the
/// server woke only the links whose files changed, every write woke every
/// process and every link: 100 clients lost about 70% of their pings.)
#[test]
fn twenty_five_clients_at_once_lose_nothing() {
    let env = Env::new();
    let _server = env.server("bob");
    let names: Vec<String> = (0..25).map(|i| format!("client{i}")).collect();
    let procs: Vec<_> = names.iter().map(|n| env.client(&["bob", n, "-c", "5", "-i", "0.2", "-W", "10"])).collect();
    for (who, p) in names.iter().zip(procs) {
        let (code, out, err) = p.finish();
        assert_eq!(code, 0, "{who}: stdout:\n{out}\nstderr:\n{err}");
        assert_eq!(summary(&out), (5, 5, "0%".to_owned()), "{who}:\n{out}");
    }
}

#[test]
fn server_stops_on_sigterm_and_removes_its_files() {
    let env = Env::new();
    let mut server = env.server("bob");
    for client in ["alice", "carol"] {
        let (code, out, _) = env.ping(&["bob", client, "-c", "2", "-i", "0.1"]);
        assert_eq!(code, 0, "{out}");
    }
    assert!(!files_below(&env.store().join("bob")).is_empty(), "the server wrote into its outbox");
    server.signal("TERM");
    let st = server.wait();
    assert_eq!(st.code(), Some(0), "server exit: {st}\nstderr:\n{}", server.stderr());
    let left = files_below(&env.store().join("bob"));
    assert!(left.is_empty(), "files left in the server's outbox: {left:?}");
}

#[test]
fn server_stops_on_sigint_too() {
    let env = Env::new();
    let mut server = env.server("bob");
    let (code, out, _) = env.ping(&["bob", "alice", "-c", "1"]);
    assert_eq!(code, 0, "{out}");
    server.signal("INT");
    let st = server.wait();
    assert_eq!(st.code(), Some(0), "server exit: {st}\nstderr:\n{}", server.stderr());
    assert!(files_below(&env.store().join("bob")).is_empty());
}

/// Stops the server with `sig` once the client has had a few replies,
/// starts a new one, and waits for a reply to a later request.
fn restart_server_under(env: &Env, server: &mut Proc, client: &mut Proc, sig: &str) {
    let before = replies(&client.stdout(), "bob").len();
    client.wait_stdout("replies before the restart", |o| replies(o, "bob").len() >= before + 3);
    server.signal(sig);
    server.wait();
    let last = replies(&client.stdout(), "bob").into_iter().max().unwrap_or(0);
    *server = env.server("bob");
    client
        .wait_stdout(&format!("a reply after the restart (SIG{sig})"), |o| replies(o, "bob").iter().any(|s| *s > last));
}

#[test]
fn a_server_that_cannot_write_its_outbox_still_stops_on_sigterm() {
    // Its outbox replaced by a file while it runs: every write fails. The
    // server retries with back-off, answers nothing, and still stops at
    // once when told to. (A file there at start-up is an error: see
    // `a_store_that_refuses_the_outbox_is_a_store_error_at_once`.)
    let env = Env::new();
    let mut server = env.server("bob");
    let key = env.store().join("bob").join("key");
    let deadline = Instant::now() + PATIENCE;
    while !key.is_file() {
        assert!(Instant::now() < deadline, "the server published no key:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::rename(env.store().join("bob"), env.logs().join("bob.away")).unwrap();
    std::fs::write(env.store().join("bob"), b"not a directory").unwrap();
    let (code, out, _) = env.ping(&["bob", "alice", "-c", "2", "-i", "0.1", "-W", "1"]);
    assert_eq!(code, 1, "{out}");
    server.signal("TERM");
    let st = server.wait();
    assert_eq!(st.code(), Some(0), "server exit: {st}\nstderr:\n{}", server.stderr());
    assert_eq!(std::fs::read(env.store().join("bob")).unwrap(), b"not a directory");
}

/// A store that lists but refuses to take my outbox for good (here a file
/// where the outbox directory must be created; `a_read_only_store_...`
/// below mounts a read-only one): each tool stops at once with exit code 2
/// and one line naming the path, as dftp-send and dftp-receive do. Before,
/// the client reported "2 sent, 0 received, 100% loss" (exit 1) without
/// having written a request, and the server ran on, answering nothing.
#[test]
fn a_store_that_refuses_the_outbox_is_a_store_error_at_once() {
    let env = Env::new();
    std::fs::create_dir_all(env.store()).unwrap();
    for (name, me, args) in [
        ("dmp-ping-client", "alice", vec!["bob", "alice", "-c", "2", "-i", "0.2", "-W", "1"]),
        ("dmp-ping-client", "alice", vec!["bob", "alice", "-c", "2", "-i", "0.2", "-W", "1", "--json"]),
        ("dmp-ping-server", "bob", vec!["bob"]),
    ] {
        let outbox = env.store().join(me);
        std::fs::write(&outbox, b"not a directory").unwrap();
        let t = Instant::now();
        let (code, out, err) = env.run(name, &env.store(), &args);
        assert_eq!(code, 2, "{name} {args:?}: stdout:\n{out}\nstderr:\n{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{name}: exit 2 after {:?}", t.elapsed());
        let line = one_line(&err, name);
        assert!(line.starts_with("error: ") && line.contains("is not a directory"), "{name}: {line}");
        assert!(line.contains(&format!("store/{me} ")), "{name}: {line}");
        assert!(!out.contains("sent"), "{name}: no ping summary for a store error:\n{out}");
        assert_eq!(std::fs::read(&outbox).unwrap(), b"not a directory");
        std::fs::remove_file(&outbox).unwrap();
    }
}

/// A tmpfs mounted read-only as the store (needs root; skipped with a
/// message otherwise): both ping tools stop at once with exit code 2 and
/// one line saying the file system is read-only.
#[test]
fn a_read_only_store_is_a_store_error_at_once() {
    let env = Env::new();
    let store = env.store();
    std::fs::create_dir_all(&store).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&store)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_read_only_store_is_a_store_error_at_once: cannot mount a tmpfs (run as root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
    let _unmount = Unmount(store.clone());
    for (name, args) in [
        ("dmp-ping-client", vec!["bob", "alice", "-c", "2", "-i", "0.2", "-W", "1", "-q"]),
        ("dmp-ping-client", vec!["bob", "alice", "-c", "2", "-i", "0.2", "-W", "1", "--json"]),
        ("dmp-ping-server", vec!["bob"]),
    ] {
        let t = Instant::now();
        let (code, out, err) = env.run(name, &store, &args);
        assert_eq!(code, 2, "{name} {args:?}: stdout:\n{out}\nstderr:\n{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{name}: exit 2 after {:?}", t.elapsed());
        let line = one_line(&err, name);
        assert!(line.starts_with("error: ") && line.contains("Read-only file system"), "{name}: {line}");
        assert!(!out.contains("sent"), "{name}: no ping summary for a store error:\n{out}");
    }
}

#[test]
fn client_gets_replies_after_the_server_restarts() {
    let env = Env::new();
    let mut server = env.server("bob");
    let mut client = env.client(&["bob", "alice", "-c", "20", "-i", "0.1", "-W", "5"]);
    restart_server_under(&env, &mut server, &mut client, "TERM");
    let (code, out, err) = client.finish();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let (sent, received, _) = summary(&out);
    assert_eq!(sent, 20);
    assert!(received >= 4, "{out}");
    let got = replies(&out, "bob");
    let mut once = got.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), got.len(), "no request answered twice:\n{out}");
}

#[test]
fn client_gets_replies_after_the_server_crashes_and_restarts() {
    let env = Env::new();
    let mut server = env.server("bob");
    let mut client = env.client(&["bob", "alice", "-i", "0.1", "-W", "5"]);
    restart_server_under(&env, &mut server, &mut client, "KILL");
    restart_server_under(&env, &mut server, &mut client, "KILL");
    client.signal("INT");
    let st = client.wait();
    let out = client.stdout();
    assert_eq!(st.code(), Some(0), "stdout:\n{out}\nstderr:\n{}", client.stderr());
    let got = replies(&out, "bob");
    let mut once = got.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), got.len(), "no request answered twice:\n{out}");
    // The last server cleans up after itself and its crashed predecessors.
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));
    let left = files_below(&env.store().join("bob"));
    assert!(left.is_empty(), "files left in the server's outbox: {left:?}");
}

#[test]
fn quiet_prints_only_the_header_and_the_summary() {
    let env = Env::new();
    let _server = env.server("bob");
    let (code, out, err) = env.ping(&["bob", "alice", "-c", "3", "-i", "0.1", "-q"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(replies(&out, "bob").is_empty(), "no reply lines with -q:\n{out}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("PING bob from alice"), "{out}");
    assert_eq!(lines[1], "--- bob ping statistics ---", "{out}");
    assert_eq!(lines[2], "3 sent, 3 received, 0% loss");
    assert!(lines[3].starts_with("rtt min/avg/max/mdev = "), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    assert!(err.trim().is_empty(), "nothing on stderr with -q: {err}");
}

#[test]
fn sigint_prints_the_summary_and_exits_0_after_replies() {
    let env = Env::new();
    let _server = env.server("bob");
    let mut client = env.client(&["bob", "alice", "-i", "0.1"]);
    client.wait_stdout("three replies", |o| replies(o, "bob").len() >= 3);
    client.signal("INT");
    let st = client.wait();
    let out = client.stdout();
    assert_eq!(st.code(), Some(0), "stdout:\n{out}\nstderr:\n{}", client.stderr());
    let (sent, received, _) = summary(&out);
    assert!(received >= 3 && sent >= received, "{out}");
    assert_eq!(received as usize, replies(&out, "bob").len(), "{out}");
    rtt_line(&out);
    assert!(files_below(&env.store().join("alice")).is_empty(), "the client cleaned up its outbox");
}

#[test]
fn sigint_before_any_reply_exits_1_with_a_summary() {
    let env = Env::new();
    let mut client = env.client(&["bob", "alice", "-i", "0.1"]);
    client.wait_stdout("the header", |o| o.starts_with("PING "));
    std::thread::sleep(Duration::from_millis(300));
    client.signal("INT");
    let st = client.wait();
    let out = client.stdout();
    assert_eq!(st.code(), Some(1), "stdout:\n{out}\nstderr:\n{}", client.stderr());
    // No server, no key to seal with: nothing was written.
    let (sent, received, unwritten, loss) = full_summary(&out);
    assert_eq!((sent, received, loss.as_str()), (0, 0, "100%"), "{out}");
    assert!(unwritten >= 1, "{out}");
}

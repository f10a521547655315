//! End-to-end tests of the four tools over remote stores, with real servers
//! on loopback started by the scripts in `scripts/` and killed when a test
//! ends: ping and a 64 MiB transfer (a) with both parties on nginx WebDAV,
//! (b) both on SeaweedFS S3, (c) in the original mode, each party writing
//! its outbox into a local folder that nginx serves read-only and reading
//! the other's over `http://127.0.0.1:PORT` (`--peer-outbox`, peers file);
//! and the failure cases: a wrong password and a server that is down (exit
//! 2 with one line naming the store), a server restarted mid-transfer (the
//! transfer resumes and completes).
//!
//! Binaries come from `DMP_BIN_DIR` when set, else from this test's target
//! directory (built there on demand). A test whose server binary is missing
//! is skipped with a message, unless `DMP_REQUIRE_SERVERS` is set (CI), when
//! it fails.

use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any process or wait may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;

// ---- servers ----------------------------------------------------------------

use dmp_testkit::server::{Server, free_port, have};

/// SeaweedFS with its bucket ready (the gateway listens before the bucket
/// exists): waits for a signed listing to succeed.
fn seaweedfs() -> Server {
    use dmp_core::store::{HttpOptions, Key, S3Config, S3Store, Store};
    let srv = Server::start("seaweedfs.sh", &[]);
    let cfg = S3Config {
        endpoint: srv.var("AWS_ENDPOINT_URL").parse().unwrap(),
        region: srv.var("AWS_REGION"),
        bucket: srv.var("DMP_TEST_S3_BUCKET"),
        prefix: String::new(),
        path_style: true,
        access_key: Some(srv.var("AWS_ACCESS_KEY_ID")),
        secret_key: Some(srv.var("AWS_SECRET_ACCESS_KEY")),
        session_token: None,
    };
    let opts = HttpOptions { retries: 0, ..HttpOptions::default() };
    let store = S3Store::new(cfg, opts).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = rt.block_on(store.list(&Key::root())) {
        assert!(Instant::now() < deadline, "the bucket did not appear: {e}\n{}", srv.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    srv
}

// ---- the tools ---------------------------------------------------------------

fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("DMP_BIN_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        let dir = Path::new(env!("CARGO_BIN_EXE_dftp-send")).parent().unwrap().to_path_buf();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "-p", "dmp-ping-server", "-p", "dmp-ping-client", "-p", "dftp-receive"]);
        cmd.arg("--target-dir").arg(dir.parent().unwrap());
        if profile == "release" {
            cmd.arg("--release");
        }
        let st = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build");
        assert!(st.success(), "building the tools failed");
        dir
    });
    let p = dir.join(name);
    assert!(p.is_file(), "{} does not exist", p.display());
    p
}

/// How one party reaches the store: arguments and environment.
#[derive(Clone, Default)]
struct Side {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl Side {
    fn store(store: impl AsRef<OsStr>) -> Side {
        Side { args: vec!["--store".into(), store.as_ref().to_owned()], env: Vec::new() }
    }
    fn arg(mut self, a: impl AsRef<OsStr>) -> Side {
        self.args.push(a.as_ref().to_owned());
        self
    }
    fn env(mut self, k: &str, v: &str) -> Side {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A temporary directory for one test: state files, config, logs, files.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox { dir: tempfile::Builder::new().prefix("dmp-e2e-").tempdir().unwrap() }
    }
    fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }
    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `tool ARGS SIDE-ARGS` in a clean environment confined to the sandbox.
    fn command(&self, tool: &str, args: &[&dyn AsRef<OsStr>], side: &Side) -> Command {
        let mut cmd = Command::new(bin(tool));
        cmd.args(args.iter().map(|a| a.as_ref())).args(&side.args);
        for k in ["DMP_STORE", "DMP_STORE_USER", "DMP_STORE_PASSWORD", "DMP_PEERS_FILE", "RUST_LOG"] {
            cmd.env_remove(k);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("DMP_STATE_DIR", self.mkdir("state"))
            .env("DMP_CONFIG_DIR", self.mkdir("config"))
            .env("XDG_CONFIG_HOME", self.mkdir("xdg-config"))
            .env("NETRC", self.path("no-netrc"))
            .stdin(Stdio::null());
        for (k, v) in &side.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(&self, tool: &str, args: &[&dyn AsRef<OsStr>], side: &Side) -> Proc {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (out, err) = (self.path(&format!("logs/{n}-{tool}.out")), self.path(&format!("logs/{n}-{tool}.err")));
        let mut cmd = self.command(tool, args, side);
        cmd.stdout(File::create(&out).unwrap()).stderr(File::create(&err).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {tool}: {e}"));
        Proc { child, out, err, what: tool.to_owned(), started: Instant::now() }
    }

    fn run(&self, tool: &str, args: &[&dyn AsRef<OsStr>], side: &Side) -> Done {
        self.spawn(tool, args, side).finish()
    }
}

/// A running tool; terminated (TERM, then KILL) when dropped.
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    what: String,
    started: Instant,
}

/// A finished tool.
struct Done {
    code: i32,
    out: String,
    err: String,
    what: String,
    secs: f64,
}

impl Done {
    fn describe(&self) -> String {
        format!(
            "{} exited {} after {:.1} s\nstdout:\n{}\nstderr:\n{}",
            self.what, self.code, self.secs, self.out, self.err
        )
    }
    fn ok(&self) -> &Done {
        assert_eq!(self.code, 0, "{}", self.describe());
        self
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.out.trim()).unwrap_or_else(|e| panic!("{e}: {}", self.describe()))
    }
    /// The only non-empty line on stderr.
    fn one_line(&self) -> &str {
        let lines: Vec<&str> = self.err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {}", self.describe());
        lines[0]
    }
}

impl Proc {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn finished(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn finish(mut self) -> Done {
        let deadline = Instant::now() + PATIENCE;
        let st = loop {
            if let Some(st) = self.finished() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let st = self.child.wait().unwrap();
                let d = self.done(st);
                panic!("{} did not exit within {PATIENCE:?}: {}", d.what, d.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.done(st)
    }

    fn done(&self, st: ExitStatus) -> Done {
        Done {
            code: st.code().unwrap_or(-1),
            out: self.stdout(),
            err: std::fs::read_to_string(&self.err).unwrap_or_default(),
            what: self.what.clone(),
            secs: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- helpers -------------------------------------------------------------------

/// A file of `len` pseudo-random bytes.
fn random_file(path: &Path, len: u64, seed: u64) {
    let mut x = seed | 1;
    let mut f = std::io::BufWriter::new(File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The receiver's partial file in `dir`, if any.
fn part_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".dftp-") && n.ends_with(".part"))
    })
}

/// The reply sequence numbers in a ping client's output.
fn replies(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("reply from bob: seq=")).count()
}

/// Pings `bob` (a server on `server`) from `alice` (on `client`) three times.
fn ping(sb: &Sandbox, server: &Side, client: &Side) {
    let srv = sb.spawn("dmp-ping-server", &[&"bob"], server);
    let c = sb.run("dmp-ping-client", &[&"bob", &"alice", &"-c", &"3", &"-i", &"0.2", &"-W", &"60"], client);
    c.ok();
    assert_eq!(replies(&c.out), 3, "{}", c.describe());
    assert!(c.out.contains("3 sent, 3 received, 0% loss"), "{}", c.describe());
    srv.signal("TERM");
    let s = srv.finish();
    assert_eq!(s.code, 0, "{}", s.describe());
}

/// Sends a 64 MiB file from `alice` (on `sender`) to `bob` (on `receiver`)
/// and checks what arrived; returns the receiver's report.
fn transfer(sb: &Sandbox, name: &str, sender: &Side, receiver: &Side) -> serde_json::Value {
    let src = sb.path(&format!("src/{name}"));
    random_file(&src, 64 * MIB, name.len() as u64 * 7919);
    let want = sha256_file(&src);
    let dl = sb.mkdir(&format!("dl-{name}"));
    let recv = sb.spawn("dftp-receive", &[&"alice", &"bob", &dl, &"--json"], receiver);
    let send = sb.run("dftp-send", &[&"bob", &"alice", &src, &"--json"], sender);
    let recv = recv.finish();
    send.ok();
    recv.ok();
    let got = dl.join(name);
    assert_eq!(sha256_file(&got), want, "the received file differs");
    assert_eq!(send.json()["sha256"], want.as_str(), "{}", send.describe());
    assert_eq!(recv.json()["sha256"], want.as_str(), "{}", recv.describe());
    assert!(part_file(&dl).is_none(), "no partial file is left");
    recv.json()
}

/// The protocol's files below `dir` (messages, chunks, head, ack), as paths
/// relative to it.
fn protocol_files(dir: &Path) -> Vec<String> {
    files_below(dir)
        .into_iter()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            name.ends_with(".msg") || name.ends_with(".chunk") || name == "head" || name == "ack"
        })
        .collect()
}

/// Regular files below `dir`, as paths relative to it.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

// ---- (a) WebDAV, (b) S3, (c) read-only HTTP outboxes ---------------------------

#[test]
fn webdav_ping_and_64_mib_transfer() {
    if !have("webdav_ping_and_64_mib_transfer", &["nginx", "dav-ext"]) {
        return;
    }
    let srv = Server::start("nginx-webdav.sh", &[]);
    let sb = Sandbox::new();
    // Below a collection that does not exist yet: the store creates it.
    let side = Side::store(format!("webdav://127.0.0.1:{}/team/dmp", srv.port));
    ping(&sb, &side, &side);
    transfer(&sb, "webdav.bin", &side, &side);
    let left = protocol_files(&srv.dir.path().join("data"));
    assert!(left.is_empty(), "both parties removed their files: {left:?}");
}

#[test]
fn s3_ping_and_64_mib_transfer() {
    if !have("s3_ping_and_64_mib_transfer", &["weed"]) {
        return;
    }
    let srv = seaweedfs();
    let sb = Sandbox::new();
    let mut side = Side::store(srv.var("DMP_STORE"));
    for k in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        side = side.env(k, &srv.var(k));
    }
    ping(&sb, &side, &side);
    transfer(&sb, "s3.bin", &side, &side);
    // A wrong secret: SigV4 is checked; one line naming the store, exit 2.
    let bad = side.clone().env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let d = sb.run("dmp-ping-client", &[&"bob", &"alice", &"-c", &"1"], &bad);
    assert_eq!(d.code, 2, "{}", d.describe());
    let line = d.one_line();
    let endpoint = srv.var("AWS_ENDPOINT_URL");
    assert!(
        line.starts_with("error: s3://dmp-test/dmp at ") && line.contains(endpoint.trim_start_matches("http://")),
        "{line}"
    );
    assert!(line.contains("403") && !line.contains("not-the-secret"), "{line}");
}

#[test]
fn http_outboxes_ping_and_64_mib_transfer() {
    if !have("http_outboxes_ping_and_64_mib_transfer", &["nginx"]) {
        return;
    }
    // Each party's store is a local folder, published read-only by nginx.
    let sb = Sandbox::new();
    let (store_a, store_b) = (sb.mkdir("alice-store"), sb.mkdir("bob-store"));
    let web_a = Server::start("nginx-static.sh", &[("ROOT", store_a.to_str().unwrap())]);
    let web_b = Server::start("nginx-static.sh", &[("ROOT", store_b.to_str().unwrap())]);
    let alice_url = format!("http://127.0.0.1:{}/alice/", web_a.port);
    let bob_url = format!("http://127.0.0.1:{}/bob/", web_b.port);
    // alice reads bob's outbox from --peer-outbox; bob from a peers file
    // that also names a client that never shows up.
    let alice = Side::store(&store_a).arg("--peer-outbox").arg(format!("bob={bob_url}"));
    let peers = sb.path("peers");
    std::fs::write(&peers, format!("# id = outbox URL\nalice = \"{alice_url}\"\ncarol = http://127.0.0.1:9/carol/\n"))
        .unwrap();
    let bob = Side::store(&store_b).arg("--peers-file").arg(&peers);
    ping(&sb, &bob, &alice);
    transfer(&sb, "http.bin", &alice, &bob);
    // Each party wrote only its own folder and left nothing behind.
    for (store, other) in [(&store_a, "bob"), (&store_b, "alice")] {
        assert!(!store.join(other).exists(), "{} holds no {other}/ directory", store.display());
        let left = protocol_files(store);
        assert!(left.is_empty(), "files left in {}: {left:?}", store.display());
    }
}

// ---- failures ------------------------------------------------------------------

/// Every tool with a store it cannot use: exit 2 and one line on stderr.
fn every_tool_fails(sb: &Sandbox, side: &Side, check: impl Fn(&Done) + Sync) {
    let file = sb.path("src/small.bin");
    random_file(&file, 1000, 1);
    let dl = sb.mkdir("dl-fail");
    let runs: Vec<(&str, Vec<&dyn AsRef<OsStr>>)> = vec![
        ("dmp-ping-server", vec![&"bob"]),
        ("dmp-ping-client", vec![&"bob", &"alice", &"-c", &"1"]),
        ("dftp-send", vec![&"bob", &"alice", &file]),
        ("dftp-receive", vec![&"alice", &"bob", &dl]),
    ];
    // All at once: each may spend seconds retrying.
    let procs: Vec<Proc> = runs.iter().map(|(tool, args)| sb.spawn(tool, args, side)).collect();
    for p in procs {
        let d = p.finish();
        assert_eq!(d.code, 2, "{}", d.describe());
        check(&d);
    }
}

#[test]
fn webdav_wrong_password_exits_2_naming_the_store() {
    if !have("webdav_wrong_password_exits_2_naming_the_store", &["nginx", "dav-ext"]) {
        return;
    }
    let srv = Server::start("nginx-webdav.sh", &[("WEBDAV_USER", "dmp"), ("WEBDAV_PASSWORD", "right-horse")]);
    let sb = Sandbox::new();
    let store = format!("webdav://127.0.0.1:{}/dmp", srv.port);
    let wrong = Side::store(&store).env("DMP_STORE_USER", "dmp").env("DMP_STORE_PASSWORD", "wrong-staple");
    every_tool_fails(&sb, &wrong, |d| {
        let line = d.one_line();
        assert!(line.starts_with(&format!("error: webdav http://127.0.0.1:{}/dmp/", srv.port)), "{line}");
        assert!(line.contains("401") && line.contains("DMP_STORE_PASSWORD"), "{line}");
        assert!(!line.contains("staple") && !line.contains("horse"), "no password in {line}");
        assert!(d.secs < 10.0, "a refused password is not retried: {}", d.describe());
    });
    // The right one, from ~/.netrc (here $NETRC), works.
    let netrc = sb.path("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login dmp password right-horse\n").unwrap();
    let right = Side::store(&store).env("NETRC", netrc.to_str().unwrap());
    ping(&sb, &right, &right);
}

#[test]
fn server_down_is_retried_then_exit_2() {
    if !have("server_down_is_retried_then_exit_2", &["nginx", "dav-ext"]) {
        return;
    }
    let sb = Sandbox::new();
    let port = free_port();
    let side = Side::store(format!("webdav://127.0.0.1:{port}/dmp"));
    every_tool_fails(&sb, &side, |d| {
        let line = d.one_line();
        assert!(line.starts_with(&format!("error: webdav http://127.0.0.1:{port}/dmp/: cannot reach")), "{line}");
        assert!(line.contains("gave up after 6 attempts"), "{line}");
        assert!(d.secs >= 1.0, "retried with back-off before giving up: {}", d.describe());
    });
}

#[test]
fn webdav_restarted_mid_transfer_resumes_and_completes() {
    if !have("webdav_restarted_mid_transfer_resumes_and_completes", &["nginx", "dav-ext"]) {
        return;
    }
    let mut srv = Server::start("nginx-webdav.sh", &[]);
    let sb = Sandbox::new();
    let side = Side::store(format!("webdav://127.0.0.1:{}/dmp", srv.port));
    let src = sb.path("src/restart.bin");
    random_file(&src, 64 * MIB, 42);
    let want = sha256_file(&src);
    let dl = sb.mkdir("dl");
    let recv = sb.spawn("dftp-receive", &[&"alice", &"bob", &dl, &"--json"], &side);
    // Small chunks, one at a time: the outage cannot miss the transfer.
    let mut send = sb.spawn("dftp-send", &[&"bob", &"alice", &src, &"--json", &"-b", &"1m", &"--window", &"1"], &side);
    let deadline = Instant::now() + PATIENCE;
    let at = loop {
        let n = part_file(&dl).map_or(0, |p| file_len(&p));
        if n > 0 {
            break n;
        }
        assert!(send.finished().is_none() && Instant::now() < deadline, "the transfer did not start");
        std::thread::sleep(Duration::from_millis(2));
    };
    srv.stop();
    let part = part_file(&dl).map_or(0, |p| file_len(&p));
    assert!(part < 64 * MIB, "the server went down mid-transfer (at {at} bytes, then {part})");
    // Down for longer than the HTTP retries last: the protocol retries too.
    std::thread::sleep(Duration::from_secs(8));
    assert!(send.finished().is_none(), "the sender waits for the store to come back");
    srv.spawn();
    let send = send.finish();
    let recv = recv.finish();
    send.ok();
    recv.ok();
    assert_eq!(sha256_file(&dl.join("restart.bin")), want, "SHA-256 of what arrived");
    assert_eq!(recv.json()["sha256"], want.as_str());
    assert!(send.err.contains("retrying") || recv.err.contains("retrying"), "the outage was noticed and retried");
}

#[test]
fn bad_peer_outboxes_are_usage_errors() {
    let sb = Sandbox::new();
    let store = sb.mkdir("store");
    let bad_file = sb.path("bad-peers");
    std::fs::write(&bad_file, "# ok\nbob = http://127.0.0.1:9/bob/\nBOB = http://x/\n").unwrap();
    for (args, want) in [
        (vec!["--peer-outbox", "alice=http://127.0.0.1:9/alice/"], "own id"),
        (vec!["--peer-outbox", "bob"], "ID=URL"),
        (vec!["--peer-outbox", "bob=ftp://h/x"], "http"),
        (vec!["--peer-outbox", "bob=http://user:pw@h/x"], "credentials"),
        (
            vec!["--peers-file", bad_file.to_str().unwrap()],
            &*format!("error: peers file {}: line 3", bad_file.display()),
        ),
        (vec!["--peers-file", "/nonexistent/dmp/peers"], "does not exist"),
    ] {
        let mut side = Side::store(&store);
        for a in &args {
            side = side.arg(a);
        }
        let d = sb.run("dmp-ping-client", &[&"bob", &"alice", &"-c", &"1", &"-W", &"1"], &side);
        assert_eq!(d.code, 2, "{args:?}: {}", d.describe());
        let line = d.one_line();
        assert!(line.contains(want), "{args:?}: {line}");
        assert!(d.out.is_empty(), "{args:?}: nothing on stdout: {}", d.describe());
    }
}

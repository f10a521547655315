//! End-to-end tests through a real sync engine: two Syncthing instances on
//! loopback (`scripts/syncthing.sh`) share one folder, and the parties use
//! one copy each, as two machines sharing a Syncthing folder do: alice's
//! store is A's copy, bob's is B's, so every message, chunk, key and
//! removal crosses Syncthing. Ping (three of three replies) and a 3 MiB +
//! 5 bytes transfer in 256 KiB chunks (the window cycles), checked by
//! SHA-256; afterwards neither copy of the folder holds a file of the
//! transfer once Syncthing has settled. And a transfer whose receiver, then
//! sender, is killed (SIGKILL) and started again: each resumes from what
//! its own copy of the folder and its state say, while Syncthing still
//! carries the files of the killed run.
//!
//! Each test starts its own pair and stops it when it ends, also on a
//! panic. Without `syncthing` the tests are skipped with a message, unless
//! `DMP_REQUIRE_SERVERS` is set (CI), when they fail. Every wait is
//! generous: Syncthing takes about a second per hop here, more under load.

use dmp_testkit::server::have;
use dmp_testkit::{Finished, Proc, Sandbox, file_len, files_under, find_file, random_file, sha256_file, wait_until};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one tool may run before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(90);
/// How long Syncthing may take to carry the last removals both ways.
const SETTLE: Duration = Duration::from_secs(40);

// ---- the Syncthing pair ---------------------------------------------------------

/// Two Syncthing instances started by `scripts/syncthing.sh start DIR`;
/// dropping it runs `scripts/syncthing.sh stop DIR`, which kills exactly
/// the processes the script started, and removes DIR.
struct Pair {
    dir: Option<tempfile::TempDir>,
    vars: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/syncthing.sh")
}

impl Pair {
    fn start(test: &str) -> Pair {
        let dir = tempfile::Builder::new().prefix("dmp-e2e-syncthing-").tempdir().unwrap();
        // The guard exists before the script runs: a start that fails half-way is stopped too.
        let mut pair = Pair { dir: Some(dir), vars: HashMap::new() };
        let t = Instant::now();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(pair.path())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/syncthing.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "scripts/syncthing.sh start failed ({}):\n{stderr}", out.status);
        pair.vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        eprintln!("{test}: Syncthing pair up in {:.1} s ({})", t.elapsed().as_secs_f64(), stderr.trim());
        pair
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("pair directory").path()
    }

    fn var(&self, name: &str) -> &str {
        self.vars.get(name).unwrap_or_else(|| panic!("scripts/syncthing.sh printed no {name}"))
    }

    /// The folder's copy on side `s` ("A" or "B").
    fn store(&self, s: &str) -> PathBuf {
        PathBuf::from(self.var(&format!("STORE_{s}")))
    }

    /// GET of a REST path on side `s`, parsed; `None` when it fails.
    fn rest(&self, s: &str, path: &str) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "-H"])
            .arg(format!("X-API-Key: {}", self.var(&format!("SYNCTHING_{s}_APIKEY"))))
            .arg(format!("{}{path}", self.var(&format!("SYNCTHING_{s}_API"))))
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// True when both sides are idle, need nothing and see the other as
    /// complete: nothing is left to carry either way.
    fn in_sync(&self) -> bool {
        let folder = self.var("SYNCTHING_FOLDER");
        [("A", "B"), ("B", "A")].iter().all(|(me, other)| {
            let status = self.rest(me, &format!("/rest/db/status?folder={folder}"));
            let device = self.var(&format!("SYNCTHING_{other}_DEVICE"));
            let completion = self.rest(me, &format!("/rest/db/completion?folder={folder}&device={device}"));
            status.is_some_and(|s| s["state"] == "idle" && s["needTotalItems"] == 0)
                && completion.is_some_and(|c| c["completion"] == 100.0 && c["needItems"] == 0)
        })
    }

    /// The last lines of both instances' logs, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for s in ["a", "b"] {
            let text = std::fs::read_to_string(self.path().join(s).join("syncthing.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- syncthing {s}\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n")));
        }
        out
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let st = Command::new("bash").arg(script()).arg("stop").arg(self.path()).stdin(Stdio::null()).status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("scripts/syncthing.sh stop {}: {st:?}", self.path().display());
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            if std::env::var_os("DMP_TEST_KEEP").is_some() {
                if let Some(d) = self.dir.take() {
                    eprintln!("keeping {}", d.keep().display());
                }
            }
        }
    }
}

/// Starts a pair, or says why the test is skipped.
fn pair(test: &str) -> Option<Pair> {
    have(test, &["syncthing", "curl", "python3"]).then(|| Pair::start(test))
}

// ---- the parties ------------------------------------------------------------------

/// One party on its own "machine": its copy of the folder as the store,
/// and its own keys and state.
struct Party {
    id: &'static str,
    store: PathBuf,
    config: PathBuf,
    state: PathBuf,
}

impl Party {
    fn new(sb: &Sandbox, id: &'static str, store: PathBuf) -> Party {
        Party { id, store, config: sb.mkdir(format!("{id}/config")), state: sb.mkdir(format!("{id}/state")) }
    }

    fn spawn(&self, sb: &Sandbox, tool: &str, args: &[&str]) -> Proc {
        let mut cmd = sb.command(tool, args);
        cmd.arg("--store")
            .arg(&self.store)
            .env("DMP_STORE", &self.store)
            .env("DMP_CONFIG_DIR", &self.config)
            .env("DMP_STATE_DIR", &self.state);
        sb.spawn_command(&format!("{tool}-{}", self.id), cmd)
    }
}

/// Waits for `p` (at most [`PATIENCE`]) and prints when it exited.
fn finish(test: &str, p: Proc, started: Instant) -> Finished {
    let f = p.wait_for(PATIENCE);
    eprintln!("{test}: {} exited {:?} at {:.1} s", f.label, f.code, started.elapsed().as_secs_f64());
    f
}

/// Files below `store` that are not allowed to stay: anything but the
/// parties' published keys, Syncthing's folder marker and its temporary
/// files (a pull that lost its source to a removal leaves one behind).
fn leftovers(store: &Path) -> Vec<String> {
    files_under(store)
        .into_iter()
        .filter_map(|p| p.strip_prefix(store).ok().map(|r| r.display().to_string()))
        .filter(|rel| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let syncthing_temp =
                (name.starts_with(".syncthing.") || name.starts_with("~syncthing~")) && name.ends_with(".tmp");
            let key = rel.split('/').count() == 2 && name == "key";
            !(rel.starts_with(".stfolder") || syncthing_temp || key)
        })
        .collect()
}

/// Waits until neither copy of the folder holds anything but keys and
/// Syncthing's own files, and Syncthing has nothing left to carry; then
/// checks that it stays so past the watcher's delay for removals (6 s) and
/// one rescan (5 s), so that no file comes back.
fn settle(test: &str, pair: &Pair) {
    let t = Instant::now();
    let (a, b) = (pair.store("A"), pair.store("B"));
    loop {
        let (la, lb) = (leftovers(&a), leftovers(&b));
        if la.is_empty() && lb.is_empty() && pair.in_sync() {
            break;
        }
        assert!(
            t.elapsed() < SETTLE,
            "after {} s files of the parties remain\n  in A: {la:?}\n  in B: {lb:?}\n{}",
            SETTLE.as_secs(),
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let clean_after = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(12));
    let (la, lb) = (leftovers(&a), leftovers(&b));
    assert!(la.is_empty() && lb.is_empty(), "files came back\n  in A: {la:?}\n  in B: {lb:?}\n{}", pair.logs());
    assert!(pair.in_sync(), "Syncthing is busy again after it had settled\n{}", pair.logs());
    eprintln!("{test}: both copies clean and in sync {clean_after:.1} s after the tools exited");
}

/// Panics when a party kept the state file of a transfer (each removes it
/// once the transfer is over).
fn no_transfer_state(parties: &[&Party]) {
    for p in parties {
        let state = dmp_testkit::entries(&p.state);
        assert!(
            !state.iter().any(|n| n.starts_with("send-") || n.starts_with("receive-")),
            "{} kept transfer state: {state:?}",
            p.id
        );
    }
}

/// The one JSON object a tool printed with `--json`.
fn json(f: &Finished) -> serde_json::Value {
    serde_json::from_str(f.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", f.describe()))
}

fn replies(out: &str, server: &str) -> usize {
    out.lines().filter(|l| l.starts_with(&format!("reply from {server}: seq="))).count()
}

// ---- the tests ----------------------------------------------------------------------

#[test]
fn syncthing_ping_three_of_three() {
    let test = "syncthing_ping_three_of_three";
    let Some(pair) = pair(test) else { return };
    let t = Instant::now();
    let sb = Sandbox::new();
    let bob = Party::new(&sb, "bob", pair.store("B"));
    let alice = Party::new(&sb, "alice", pair.store("A"));
    let mut server = bob.spawn(&sb, "dmp-ping-server", &["bob", "--json"]);
    let client = alice.spawn(&sb, "dmp-ping-client", &["bob", "alice", "-c", "3", "-W", "30"]);
    let c = finish(test, client, t);
    c.expect_ok();
    assert_eq!(replies(&c.stdout, "bob"), 3, "{}", c.describe());
    assert!(c.stdout.contains("3 sent, 3 received, 0% loss"), "{}", c.describe());
    for l in c.stdout.lines().filter(|l| l.starts_with("reply from") || l.starts_with("rtt")) {
        eprintln!("{test}: {l}");
    }
    server.signal("TERM");
    let s = finish(test, server, t);
    s.expect_ok();
    assert_eq!(json(&s)["answered"], 3, "{}", s.describe());
    eprintln!("{test}: {:.1} s in all", t.elapsed().as_secs_f64());
}

#[test]
fn syncthing_dftp_3_mib_in_256_kib_chunks() {
    let test = "syncthing_dftp_3_mib_in_256_kib_chunks";
    let Some(pair) = pair(test) else { return };
    let t = Instant::now();
    let sb = Sandbox::new();
    let alice = Party::new(&sb, "alice", pair.store("A"));
    let bob = Party::new(&sb, "bob", pair.store("B"));
    let src = sb.mkdir("src").join("three.bin");
    let size = 3 * (1 << 20) + 5;
    random_file(&src, size, dmp_testkit::seed(test));
    let want = sha256_file(&src);
    let dl = sb.mkdir("dl");
    let recv = bob.spawn(&sb, "dftp-receive", &["alice", "bob", dl.to_str().unwrap(), "--json"]);
    let send = alice.spawn(&sb, "dftp-send", &["bob", "alice", src.to_str().unwrap(), "-b", "256k", "--json"]);
    let send = finish(test, send, t);
    let recv = finish(test, recv, t);
    send.expect_ok();
    recv.expect_ok();
    let got = dl.join("three.bin");
    assert_eq!(sha256_file(&got), want, "the received file differs");
    for f in [&send, &recv] {
        assert_eq!(json(f)["sha256"], want.as_str(), "{}", f.describe());
    }
    assert_eq!(dmp_testkit::entries(&dl), vec!["three.bin".to_owned()], "no partial file is left");
    settle(test, &pair);
    no_transfer_state(&[&alice, &bob]);
    eprintln!("{test}: {size} bytes, {:.1} s in all", t.elapsed().as_secs_f64());
}

/// The bytes in the receiver's partial file in `dl` (0 when there is none).
fn part_len(dl: &Path) -> u64 {
    find_file(dl, |n| n.starts_with(".dftp-") && n.ends_with(".part")).and_then(|p| file_len(&p)).unwrap_or(0)
}

#[test]
fn syncthing_dftp_resumes_after_sigkill_of_each_side() {
    let test = "syncthing_dftp_resumes_after_sigkill_of_each_side";
    let Some(pair) = pair(test) else { return };
    let t = Instant::now();
    let sb = Sandbox::new();
    let alice = Party::new(&sb, "alice", pair.store("A"));
    let bob = Party::new(&sb, "bob", pair.store("B"));
    let src = sb.mkdir("src").join("resume.bin");
    let size = 4 * (1 << 20) + 3;
    random_file(&src, size, dmp_testkit::seed(test));
    let want = sha256_file(&src);
    let dl = sb.mkdir("dl");
    let recv_args = ["alice", "bob", dl.to_str().unwrap(), "--json"];
    // Two chunks in flight: the transfer takes long enough to be cut twice.
    let send_args = ["bob", "alice", src.to_str().unwrap(), "-b", "256k", "--window", "2", "--json"];
    let recv = bob.spawn(&sb, "dftp-receive", &recv_args);
    let send = alice.spawn(&sb, "dftp-send", &send_args);

    wait_until(PATIENCE, "the receiver to write 512 KiB", || part_len(&dl) >= 512 << 10);
    let at = part_len(&dl);
    let killed = recv.kill();
    eprintln!("{test}: killed {} at {at} bytes, {:.1} s", killed.label, t.elapsed().as_secs_f64());
    let recv = bob.spawn(&sb, "dftp-receive", &recv_args);

    wait_until(PATIENCE, "the receiver to write 2 MiB", || part_len(&dl) >= 2 << 20);
    let at = part_len(&dl);
    let killed = send.kill();
    eprintln!("{test}: killed {} at {at} bytes, {:.1} s", killed.label, t.elapsed().as_secs_f64());
    assert!(at < size, "the transfer was cut before it ended");
    let send = alice.spawn(&sb, "dftp-send", &send_args);

    let send = finish(test, send, t);
    let recv = finish(test, recv, t);
    send.expect_ok();
    recv.expect_ok();
    assert_eq!(sha256_file(&dl.join("resume.bin")), want, "the received file differs");
    let (sj, rj) = (json(&send), json(&recv));
    assert_eq!(sj["sha256"], want.as_str(), "{}", send.describe());
    assert_eq!(rj["sha256"], want.as_str(), "{}", recv.describe());
    assert!(sj["resumed_bytes"].as_u64().is_some_and(|b| b > 0), "the sender resumed: {}", send.describe());
    assert!(rj["resumed_bytes"].as_u64().is_some_and(|b| b > 0), "the receiver resumed: {}", recv.describe());
    eprintln!("{test}: resumed: sender at {} bytes, receiver at {} bytes", sj["resumed_bytes"], rj["resumed_bytes"]);
    assert_eq!(dmp_testkit::entries(&dl), vec!["resume.bin".to_owned()], "no partial file is left");
    settle(test, &pair);
    no_transfer_state(&[&alice, &bob]);
    eprintln!("{test}: {size} bytes, {:.1} s in all", t.elapsed().as_secs_f64());
}

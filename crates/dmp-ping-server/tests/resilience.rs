//! The liveness responder outlives outages of its store, with the real
//! binaries: (a) the store folder is renamed away, later removed, and
//! recreated empty while `dmp-ping-server` runs; (b) the nginx WebDAV server
//! behind the store is stopped and started again on the same port. After
//! each outage a ping client gets replies from the same server process,
//! which logged the outage once (not once per failed request).
//!
//! Binaries come from `DMP_BIN_DIR` (see dmp-testkit). The WebDAV test is
//! skipped with a message when nginx or its dav-ext module is missing,
//! unless `DMP_REQUIRE_SERVERS` is set (CI), when it fails.

use dmp_testkit::{Proc, Sandbox, TIMEOUT, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs one ping client to completion: 3 pings, 20 s patience each.
fn ping(sb: &Sandbox, store: &str, client: &str) -> (i32, String) {
    let mut cmd = sb.command("dmp-ping-client", ["bob", client, "-c", "3", "-i", "0.2", "-W", "20", "--json"]);
    cmd.env("DMP_STORE", store);
    let f = sb.spawn_command("dmp-ping-client", cmd).wait();
    (f.code.unwrap_or(-1), f.stdout)
}

fn received(json: &str) -> u64 {
    let line = json.lines().last().unwrap_or_default();
    let key = "\"received\":";
    let at = line.find(key).unwrap_or_else(|| panic!("no received count in {json:?}")) + key.len();
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn server(sb: &Sandbox, store: &str) -> Proc {
    let mut cmd = sb.command("dmp-ping-server", ["bob", "-v"]);
    cmd.env("DMP_STORE", store);
    sb.spawn_command("dmp-ping-server", cmd)
}

/// Pings until one run gets every reply (a client may start while the
/// server is still finding its feet after an outage); returns how long it took.
fn pings_succeed(sb: &Sandbox, store: &str, client: &str, srv: &mut Proc) -> Duration {
    let t = Instant::now();
    loop {
        let (code, out) = ping(sb, store, client);
        if code == 0 && received(&out) == 3 {
            return t.elapsed();
        }
        assert!(srv.is_running(), "the server exited:\n{}", srv.stderr_so_far());
        assert!(t.elapsed() < TIMEOUT, "no full round of replies within {TIMEOUT:?}: last {out}");
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn folder_store_removed_and_recreated_while_the_server_runs() {
    let sb = Sandbox::new();
    let store = sb.store.to_str().unwrap().to_owned();
    let mut srv = server(&sb, &store);
    let first = pings_succeed(&sb, &store, "alice", &mut srv);
    eprintln!("before any outage: replies after {first:?}");

    // A sync client or a mount moving the folder away, then back empty.
    let away = sb.path("store.away");
    std::fs::rename(&sb.store, &away).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(srv.is_running(), "the server outlives a missing store:\n{}", srv.stderr_so_far());
    std::fs::create_dir(&sb.store).unwrap();
    let t = pings_succeed(&sb, &store, "carol", &mut srv);
    eprintln!("store renamed away and recreated: replies {t:?} after the folder came back");

    // Removed outright (moved aside first, so that no write of the server
    // races the removal), recreated a little later.
    let gone = sb.path("store.gone");
    std::fs::rename(&sb.store, &gone).unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::create_dir(&sb.store).unwrap();
    let t = pings_succeed(&sb, &store, "dave", &mut srv);
    eprintln!("store removed and recreated: replies {t:?} after the folder came back");

    assert!(srv.is_running(), "the same server process answered throughout");
    let err = srv.stderr_so_far();
    assert!(count(&err, "lost this server's files") >= 2, "each loss was noticed and logged:\n{err}");
    srv.signal("TERM");
    srv.wait().expect_ok();
}

/// The server's published key removed while it runs (by hand, or by a
/// party that stopped with the server's id): it is written again, so that a
/// client that never pinned it can still reach the server.
#[test]
fn a_removed_key_is_published_again() {
    let sb = Sandbox::new();
    let store = sb.store.to_str().unwrap().to_owned();
    let mut srv = server(&sb, &store);
    pings_succeed(&sb, &store, "alice", &mut srv);
    let key = sb.store.join("bob").join("key");
    let published = std::fs::read(&key).expect("the server published its key");
    std::fs::remove_file(&key).unwrap();
    // On a folder the removal is seen at once, well before the 30 s check.
    wait_until(Duration::from_secs(10), "the key published again", || {
        std::fs::read(&key).is_ok_and(|k| k == published)
    });
    let t = pings_succeed(&sb, &store, "newcomer", &mut srv);
    eprintln!("a client new to the server got replies {t:?} after the key came back");
    srv.signal("TERM");
    srv.wait().expect_ok();
}

// ---- WebDAV --------------------------------------------------------------------

/// nginx WebDAV from `scripts/nginx-webdav.sh run DIR` in the foreground on
/// a fixed port; stopped with SIGTERM (the script execs nginx).
struct Nginx {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut n =
            Nginx { child: None, port, dir: tempfile::Builder::new().prefix("dmp-e2e-dav-").tempdir().unwrap() };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/nginx-webdav.sh");
        let log = std::fs::File::options().create(true).append(true).open(self.dir.path().join("script.log")).unwrap();
        let child = Command::new("bash")
            .arg(script)
            .arg("run")
            .arg(self.dir.path())
            .env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nginx-webdav.sh");
        self.child = Some(child);
        wait_until(Duration::from_secs(30), "nginx listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn have_nginx_dav() -> bool {
    let nginx = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .any(|d| d.join("nginx").is_file());
    let dav_ext =
        ["/usr/lib/nginx/modules/ngx_http_dav_ext_module.so", "/usr/share/nginx/modules/ngx_http_dav_ext_module.so"]
            .iter()
            .any(|m| Path::new(m).is_file());
    if nginx && dav_ext {
        return true;
    }
    if std::env::var("DMP_REQUIRE_SERVERS").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("nginx with the dav-ext module is not installed and DMP_REQUIRE_SERVERS is set");
    }
    eprintln!("SKIPPED: nginx with the dav-ext module is not installed (run scripts/install-test-deps.sh)");
    false
}

#[test]
fn webdav_server_restarted_while_the_server_runs() {
    if !have_nginx_dav() {
        return;
    }
    let mut dav = Nginx::start();
    let sb = Sandbox::new();
    let store = format!("webdav://127.0.0.1:{}/dmp", dav.port);
    let mut srv = server(&sb, &store);
    let first = pings_succeed(&sb, &store, "alice", &mut srv);
    eprintln!("before the outage: replies after {first:?}");

    dav.stop();
    // Longer than the HTTP layer's own retries: the server sees failures.
    std::thread::sleep(Duration::from_secs(10));
    assert!(srv.is_running(), "the server outlives the WebDAV outage:\n{}", srv.stderr_so_far());
    dav.spawn();
    let t = pings_succeed(&sb, &store, "alice", &mut srv);
    eprintln!("WebDAV restarted: replies {t:?} after nginx came back");

    let err = srv.stderr_so_far();
    assert_eq!(count(&err, "until the store answers again"), 1, "one warning for the outage:\n{err}");
    assert!(err.contains("the store answers again after"), "the end of the outage is logged:\n{err}");
    srv.signal("TERM");
    srv.wait().expect_ok();
}

/// A TCP server on loopback that accepts connections and never answers:
/// a peer outbox on a host that hangs. Runs until the test ends.
fn silent_http_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s);
        }
    });
    port
}

/// One client's outbox on a host that accepts and never answers: before,
/// the server awaited that client's key in its loop (up to the store's
/// whole retry time, minutes), so that every other client went unanswered
/// (100 % loss) and SIGTERM was not heard. Key look-ups now run beside the
/// loop.
#[test]
fn a_peer_outbox_that_never_answers_does_not_stall_the_others() {
    let sb = Sandbox::new();
    let store = sb.store.to_str().unwrap().to_owned();
    let port = silent_http_server();
    let mut cmd = sb.command(
        "dmp-ping-server",
        ["bob", "-v", "--peer-outbox", &format!("mallory=http://127.0.0.1:{port}/mallory/")],
    );
    cmd.env("DMP_STORE", &store);
    let mut srv = sb.spawn_command("dmp-ping-server", cmd);
    std::thread::sleep(Duration::from_secs(1));
    let (code, out) = ping(&sb, &store, "alice");
    assert_eq!((code, received(&out)), (0, 3), "alice is answered while mallory's outbox hangs: {out}");
    let t = Instant::now();
    srv.signal("TERM");
    let f = srv.wait_for(Duration::from_secs(10));
    f.expect_ok();
    eprintln!("stopped {:?} after SIGTERM", t.elapsed());
}

//! Benchmarks over a remote store (issues 4 and 7), through servers on
//! loopback started by the scripts in scripts/ and stopped when dropped:
//! nginx WebDAV (`nginx-webdav.sh`) and SeaweedFS S3 (`seaweedfs.sh`). DFTP
//! against curl PUT plus GET of the same file through the same server in the
//! same run; over WebDAV, the ping round trip while active, and the requests
//! per minute of an idle ping client and server, counted in nginx's access log.

use super::{Ctx, Pings, RUNS, Row, ping_rows};
use crate::util::{Proc, Samples, TempDir, free_port, human_size, random_file, root, sha256_file, sync, which};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A server on loopback that both the tools and curl can use.
trait Server {
    /// The `--store` value for a store below `<prefix>/`.
    fn store(&self, prefix: &str) -> String;
    /// The environment the tools need for the store (credentials).
    fn env(&self) -> Vec<(String, String)>;
    /// curl's arguments for object `name` on the same server (URL last).
    fn curl(&self, name: &str) -> Vec<String>;
}

/// Runs `scripts/<script> start|stop DIR`; `start` prints the server's settings
/// as KEY=VALUE lines.
fn script(script: &str, cmd: &str, dir: &Path, env: &[(&str, String)]) -> Result<BTreeMap<String, String>> {
    let mut c = Command::new("bash");
    c.arg(root().join("scripts").join(script)).arg(cmd).arg(dir).stderr(Stdio::inherit());
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let out = c.output().with_context(|| format!("starting scripts/{script}"))?;
    if !out.status.success() {
        bail!("scripts/{script} {cmd} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// Stops the servers of an earlier bench that was killed before it could
/// (a signal runs no destructors, and nginx and weed run detached), and
/// removes its scratch directory. Each bench's directory is
/// `<bench-tmp>/run-<pid>-<random>`; a live pid's is left alone.
pub fn stop_leftovers(bench_tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(bench_tmp) else { return };
    for run in entries.flatten().map(|e| e.path()) {
        let name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let pid = name.strip_prefix("run-").and_then(|r| r.split('-').next());
        if pid.is_some_and(|p| Path::new("/proc").join(p).exists()) {
            continue;
        }
        // Server directories lie at <run>/<bench>/server.
        for server in std::fs::read_dir(&run).into_iter().flatten().flatten().map(|e| e.path().join("server")) {
            for (pid_file, which) in [("nginx.pid", "nginx-webdav.sh"), ("weed.pid", "seaweedfs.sh")] {
                if server.join(pid_file).is_file() {
                    println!("stopping a server left by an interrupted bench in {}", server.display());
                    let _ = script(which, "stop", &server, &[]);
                }
            }
            // The magic-wormhole servers (twist), if still the same processes.
            for name in ["wormhole-mailbox", "transit-relay"] {
                let Ok(pid) = std::fs::read_to_string(server.join(format!("{name}.pid"))) else { continue };
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
                let plugin = if name == "transit-relay" { "transitrelay" } else { name };
                if String::from_utf8_lossy(&cmdline).contains(plugin) {
                    println!("stopping {name} left by an interrupted bench (pid {})", pid.trim());
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&run);
    }
}

/// An nginx WebDAV server on a free loopback port, stopped when dropped.
struct WebDav {
    dir: PathBuf,
    port: u16,
}

impl WebDav {
    fn start(dir: &Path, access_log: bool) -> Result<WebDav> {
        let port = free_port()?;
        let mut env = vec![("PORT", port.to_string())];
        if access_log {
            env.push(("ACCESS_LOG", "1".into()));
        }
        script("nginx-webdav.sh", "start", dir, &env)?;
        Ok(WebDav { dir: dir.to_path_buf(), port })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default()
    }

    /// Why the WebDAV benchmarks cannot run here, if they cannot.
    fn missing() -> Option<String> {
        if which("nginx").is_none() {
            return Some("not run: nginx is not installed (scripts/install-test-deps.sh)".into());
        }
        if !["/usr/lib/nginx/modules", "/usr/share/nginx/modules"]
            .iter()
            .any(|d| Path::new(d).join("ngx_http_dav_ext_module.so").is_file())
        {
            return Some("not run: libnginx-mod-http-dav-ext is not installed".into());
        }
        which("curl").is_none().then(|| "not run: curl is not installed".into())
    }
}

impl Server for WebDav {
    fn store(&self, prefix: &str) -> String {
        format!("webdav://127.0.0.1:{}/{prefix}", self.port)
    }

    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn curl(&self, name: &str) -> Vec<String> {
        vec![self.url(name)]
    }
}

impl Drop for WebDav {
    fn drop(&mut self) {
        let _ = script("nginx-webdav.sh", "stop", &self.dir, &[]);
    }
}

/// SeaweedFS (`weed mini`) with its S3 gateway on a free loopback port, SigV4
/// enforced, stopped when dropped.
struct Seaweed {
    dir: PathBuf,
    /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... as printed by seaweedfs.sh.
    env: BTreeMap<String, String>,
}

impl Seaweed {
    fn start(dir: &Path) -> Result<Seaweed> {
        let mut s = Seaweed { dir: dir.to_path_buf(), env: BTreeMap::new() };
        s.env = script("seaweedfs.sh", "start", dir, &[("PORT", free_port()?.to_string())])?;
        Ok(s)
    }

    fn var(&self, k: &str) -> &str {
        self.env.get(k).map_or("", String::as_str)
    }

    fn missing() -> Option<String> {
        if which("weed").is_none() {
            return Some("not run: weed is not installed (scripts/install-test-deps.sh)".into());
        }
        which("curl").is_none().then(|| "not run: curl is not installed".into())
    }
}

impl Server for Seaweed {
    fn store(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.var("DMP_TEST_S3_BUCKET"))
    }

    fn env(&self) -> Vec<(String, String)> {
        self.env.iter().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn curl(&self, name: &str) -> Vec<String> {
        vec![
            "--aws-sigv4".into(),
            format!("aws:amz:{}:s3", self.var("AWS_REGION")),
            "--user".into(),
            format!("{}:{}", self.var("AWS_ACCESS_KEY_ID"), self.var("AWS_SECRET_ACCESS_KEY")),
            format!("{}/{}/{name}", self.var("AWS_ENDPOINT_URL"), self.var("DMP_TEST_S3_BUCKET")),
        ]
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = script("seaweedfs.sh", "stop", &self.dir, &[]);
    }
}

/// A tool on `server`'s store below `/dmp`, with its keys and state in `dir`.
fn tool(ctx: &Ctx, name: &str, server: &dyn Server, dir: &Path) -> Command {
    tool_at(ctx, name, server, "dmp", dir)
}

/// A tool on `server`'s store below `/<prefix>`, with its keys and state in `dir`.
fn tool_at(ctx: &Ctx, name: &str, server: &dyn Server, prefix: &str, dir: &Path) -> Command {
    let mut c = ctx.tool(name, server.store(prefix), dir);
    for k in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        c.env_remove(k);
    }
    c.envs(server.env());
    c
}

/// Runs curl, its output to `out`, failing on an HTTP error; returns the
/// seconds it took.
fn curl(out: &Path, args: &[String], what: &str) -> Result<f64> {
    let t = Instant::now();
    let st = Command::new("curl").args(["-sS", "--fail", "-o"]).arg(out).args(args).status();
    let st = st.with_context(|| format!("starting curl ({what})"))?;
    if !st.success() {
        bail!("curl {what} failed ({st})");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// DFTP through nginx WebDAV against curl PUT + GET of the same file.
pub fn webdav_dftp(ctx: &Ctx) -> Result<Vec<Row>> {
    let len: u64 = if ctx.quick { 128 << 20 } else { 1 << 30 };
    let figure = format!("DFTP {}, nginx WebDAV, time to finished", human_size(len));
    if let Some(why) = WebDav::missing() {
        return Ok(vec![Row::skipped(figure, why)]);
    }
    let dir = TempDir::new_in(&ctx.scratch, "webdav")?;
    let server = WebDav::start(&dir.join("server"), false)?;
    remote_dftp(ctx, &server, &dir, len, figure, "curl -T + curl", 1.2)
}

/// DFTP through SeaweedFS S3 against curl --aws-sigv4 PUT + GET of the same file.
pub fn s3_dftp(ctx: &Ctx) -> Result<Vec<Row>> {
    let len: u64 = if ctx.quick { 128 << 20 } else { 1 << 30 };
    let figure = format!("DFTP {}, SeaweedFS S3, time to finished", human_size(len));
    if let Some(why) = Seaweed::missing() {
        return Ok(vec![Row::skipped(figure, why)]);
    }
    let dir = TempDir::new_in(&ctx.scratch, "s3")?;
    let server = Seaweed::start(&dir.join("server"))?;
    // No target of its own in the issues; WebDAV's is the natural one.
    remote_dftp(ctx, &server, &dir, len, figure, "curl --aws-sigv4 PUT + GET", 1.2)
}

/// DFTP through `server` against curl PUT + GET of the same file through
/// the same server, pair by pair in each run.
fn remote_dftp(
    ctx: &Ctx,
    server: &dyn Server,
    dir: &TempDir,
    len: u64,
    figure: String,
    baseline: &str,
    max_ratio: f64,
) -> Result<Vec<Row>> {
    let src = dir.join("random.bin");
    println!("writing a {} random file", human_size(len));
    random_file(&src, len)?;
    let want = sha256_file(&src)?;
    let s = Samples::measure(RUNS, |n, run| {
        // curl PUT and GET of the same file, through the same server.
        let got = dir.join("curl.bin");
        let null = Path::new("/dev/null");
        let with = |pre: &[&str]| pre.iter().map(|s| s.to_string()).chain(server.curl("curl.bin")).collect::<Vec<_>>();
        // Each timed step starts with nothing dirty in the page cache, so
        // that none pays for the writeback of the one before (without this
        // the 1 GiB GET swung from 2.9 s to 4.1 s within one run).
        sync()?;
        let put = curl(null, &with(&["-T", src.to_str().context("path")?]), "PUT")?;
        sync()?;
        let get = curl(&got, &with(&[]), "GET")?;
        if sha256_file(&got)? != want {
            bail!("curl GET returned another file");
        }
        std::fs::remove_file(&got)?;
        curl(null, &with(&["-X", "DELETE"]), "DELETE")?;
        run.insert("curl PUT", put);
        run.insert("curl GET", get);
        run.insert("curl", put + get);

        // The DFTP pair: from the start of both until the sender reports
        // that the receiver verified the file and put it in place. A fresh
        // store and fresh parties each run (a new party that found the
        // last run's key of its peer in the store would pin that one).
        let prefix = format!("dmp-{n}");
        let run_dir = TempDir::new_in(dir.path(), "run")?;
        let out = run_dir.join("out");
        std::fs::create_dir(&out)?;
        sync()?;
        let t = Instant::now();
        let mut recv = Proc::spawn_logged(
            tool_at(ctx, "dftp-receive", server, &prefix, &run_dir.join("bob"))
                .args(["alice", "bob"])
                .arg(&out)
                .args(super::DFTP_ARGS),
            "dftp-receive",
            run_dir.path(),
        )?;
        let mut send = Proc::spawn_logged(
            tool_at(ctx, "dftp-send", server, &prefix, &run_dir.join("alice"))
                .args(["bob", "alice"])
                .arg(&src)
                .args(super::DFTP_ARGS),
            "dftp-send",
            run_dir.path(),
        )?;
        let st = send.wait_timeout(Duration::from_secs(1800))?;
        run.insert("dftp", t.elapsed().as_secs_f64());
        send.check(st)?;
        let st = recv.wait_timeout(Duration::from_secs(60))?;
        recv.check(st)?;
        if sha256_file(&out.join("random.bin"))? != want {
            bail!("the received file differs from the sent one (SHA-256)");
        }
        Ok(())
    })?;
    let mbps = len as f64 / 1e6 / s.median("dftp");
    Ok(vec![
        Row::new(figure, s.median("dftp"), "s")
            .vs(baseline, s.median("curl"), Some(s.ratio("dftp", "curl")), max_ratio)
            .note(format!(
                "{mbps:.0} MB/s; curl PUT {:.2} s + GET {:.2} s (medians); ratio = median of {RUNS} per-run ratios; \
             SHA-256 verified",
                s.median("curl PUT"),
                s.median("curl GET")
            )),
    ])
}

/// Ping round trip over WebDAV while active (a request every 10 ms).
pub fn webdav_ping(ctx: &Ctx) -> Result<Vec<Row>> {
    if let Some(why) = WebDav::missing() {
        return Ok(vec![Row::skipped("ping rtt, nginx WebDAV", why)]);
    }
    let count = if ctx.quick { 100 } else { 300 };
    let dir = TempDir::new_in(&ctx.scratch, "webdav-ping")?;
    let server = WebDav::start(&dir.join("server"), false)?;
    let mut srv = Proc::spawn_logged(
        tool(ctx, "dmp-ping-server", &server, &dir.join("bob")).arg("bob"),
        "dmp-ping-server",
        dir.path(),
    )?;
    // The server finds a new client by listing the store (every 5 s when
    // idle): a first short run makes the introductions.
    let warm = Pings::start(tool(ctx, "dmp-ping-client", &server, &dir.join("alice")), "alice", 3, "0.05", dir.path())?;
    Pings::finish(warm).context("warm-up")?;
    let s = Samples::measure(RUNS, |_, run| {
        let c = Pings::start(
            tool(ctx, "dmp-ping-client", &server, &dir.join("alice")),
            "alice",
            count,
            "0.01",
            dir.path(),
        )?;
        let all = Pings::finish(c)?;
        // A new client session is seen at the server's next poll of the
        // client's outbox: its requests queue until then. That wake-up is
        // reported on its own; the target is for the round trip while active.
        run.insert("wake", all.first_reply_ms(10.0).unwrap_or(f64::NAN));
        let active = all.while_active(10.0);
        active.record(run);
        run.insert("loss", all.loss_pct());
        run.insert("active_n", active.received as f64);
        Ok(())
    })?;
    srv.stop()?;
    let mut rows = ping_rows(
        &s,
        "nginx WebDAV, while active",
        2.0,
        &format!(
            "{count} pings at -i 0.01 per run, each a new client session after a warm-up; the replies to \
             the requests sent after the first reply arrived (runs: {} replies)",
            s.list("active_n")
        ),
    );
    rows.push(Row::new("ping wake-up (first reply of a new session), nginx WebDAV", s.median("wake"), "ms").note(
        format!(
            "runs: {}; no target: a new session is seen when the server next reads the client's head, \
             at most every 5 s on an idle store (the idle request budget), sooner after activity",
            s.list("wake")
        ),
    ));
    Ok(rows)
}

/// Which party made a request, from the access log line
/// `<msec> <method> <uri> <status> ...` of a store below `/dmp/`: reads of
/// `<x>/<y>/...` are `y`'s (reading x's outbox towards it), writes and
/// listings of `<x>/...` are `x`'s, a listing of the root is the server's.
fn requester(line: &str) -> Option<String> {
    let mut f = line.split_whitespace();
    let (_, method, uri) = (f.next()?, f.next()?, f.next()?);
    let parts: Vec<&str> = uri.strip_prefix("/dmp")?.split('/').filter(|p| !p.is_empty()).collect();
    match (method, parts.as_slice()) {
        ("PROPFIND", []) => Some("bob".into()),
        ("GET" | "HEAD", [_, reader, ..]) => Some((*reader).into()),
        (_, [writer, ..]) => Some((*writer).into()),
        _ => None,
    }
}

/// Requests per minute of an idle ping server and client over WebDAV.
pub fn webdav_idle(ctx: &Ctx) -> Result<Vec<Row>> {
    let figures = ["idle requests/min, dmp-ping-client, WebDAV", "idle requests/min, dmp-ping-server, WebDAV"];
    if let Some(why) = WebDav::missing() {
        return Ok(figures.iter().map(|f| Row::skipped(*f, why.clone())).collect());
    }
    let window = Duration::from_secs(if ctx.quick { 10 } else { 20 });
    // The count is the same from run to run (a timer's, not a race's: 42.0
    // req/min in each of 3 runs), so a quick run measures once.
    let runs = if ctx.quick { 1 } else { RUNS };
    let samples = Samples::measure(runs, |_, run| {
        let dir = TempDir::new_in(&ctx.scratch, "webdav-idle")?;
        let server = WebDav::start(&dir.join("server"), true)?;
        // The client first, so that the server finds it at its first listing;
        // one ping now, the next in 60 s.
        let mut client = Proc::spawn_logged(
            tool(ctx, "dmp-ping-client", &server, &dir.join("alice")).args(["bob", "alice", "-i", "60", "-W", "30"]),
            "dmp-ping-client",
            dir.path(),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let mut srv = Proc::spawn_logged(
            tool(ctx, "dmp-ping-server", &server, &dir.join("bob")).arg("bob"),
            "dmp-ping-server",
            dir.path(),
        )?;
        let end = Instant::now() + Duration::from_secs(30);
        while !client.stdout().contains("reply from bob") {
            if Instant::now() > end {
                bail!("no reply to the first ping within 30 s{}", client.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the activity die down (fast polls for 100 ms, then doubling to 2 s).
        std::thread::sleep(Duration::from_secs(4));
        let skip = server.access_log().lines().count();
        let t = Instant::now();
        std::thread::sleep(window);
        let log = server.access_log();
        let secs = t.elapsed().as_secs_f64();
        let (mut c, mut s, mut other) = (0u64, 0u64, 0u64);
        for line in log.lines().skip(skip) {
            match requester(line).as_deref() {
                Some("alice") => c += 1,
                Some("bob") => s += 1,
                _ => other += 1,
            }
        }
        client.terminate()?;
        srv.stop()?;
        let per_min = |k: u64| k as f64 * 60.0 / secs;
        run.insert("client", per_min(c));
        run.insert("server", per_min(s));
        run.insert("unattributed", per_min(other));
        Ok(())
    })?;
    let note = format!(
        "{runs} run{}, requests in nginx's access log over {} s, client pinging every 60 s, one client",
        if runs == 1 { "" } else { "s" },
        window.as_secs()
    );
    Ok(vec![
        Row::new(figures[0], samples.median("client"), "req/min")
            .at_most(60.0)
            .note(format!("{note}; runs: {}", samples.list("client"))),
        Row::new(figures[1], samples.median("server"), "req/min")
            .at_most(60.0)
            .note(format!("{note}; runs: {}", samples.list("server"))),
    ])
}

#[cfg(test)]
mod tests {
    use super::requester;

    #[test]
    fn attributes_requests_to_parties() {
        let r = |l: &str| requester(l);
        assert_eq!(r("1.0 PROPFIND /dmp/ 207 1 2").as_deref(), Some("bob"));
        assert_eq!(r("1.0 GET /dmp/alice/bob/head 404 1 2").as_deref(), Some("bob"));
        assert_eq!(r("1.0 GET /dmp/bob/alice/0000-0001.msg 404 1 2").as_deref(), Some("alice"));
        assert_eq!(r("1.0 PUT /dmp/alice/bob/ack 201 1 2").as_deref(), Some("alice"));
        assert_eq!(r("1.0 PROPFIND /dmp/bob/alice/ 207 1 2").as_deref(), Some("bob"));
        assert_eq!(r("1.0 GET /curl.bin 200 1 2"), None);
    }
}

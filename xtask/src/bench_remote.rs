//! Benchmarks over a remote store (issue 4), all through nginx WebDAV on
//! loopback started by `scripts/nginx-webdav.sh`: DFTP against `curl -T`
//! plus `curl` of the same file through the same server in the same run;
//! the ping round trip while active; the requests per minute of an idle
//! ping client and server, counted in nginx's access log.

use super::{Ctx, RUNS, Row};
use crate::util::{Proc, TempDir, human_size, median, random_file, root, run, sha256_file};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An nginx WebDAV server on a free loopback port, stopped when dropped.
struct WebDav {
    dir: PathBuf,
    port: u16,
}

impl WebDav {
    fn start(dir: &Path, access_log: bool) -> Result<WebDav> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/nginx-webdav.sh")).arg("start").arg(dir).env("PORT", port.to_string());
        if access_log {
            cmd.env("ACCESS_LOG", "1");
        }
        run(cmd.stdout(Stdio::null()), "scripts/nginx-webdav.sh start")?;
        Ok(WebDav { dir: dir.to_path_buf(), port })
    }

    /// The `--store` value for a store below `/dmp/`.
    fn store(&self) -> String {
        format!("webdav://127.0.0.1:{}/dmp", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default()
    }
}

impl Drop for WebDav {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/nginx-webdav.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// Why the WebDAV benchmarks cannot run here, if they cannot.
fn missing_server() -> Option<String> {
    let found = |p: &str| Path::new(p).is_file();
    let on_path = |b: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin")])
            .any(|d| d.join(b).is_file())
    };
    if !on_path("nginx") {
        return Some("not run: nginx is not installed (scripts/install-test-deps.sh)".into());
    }
    if !found("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")
        && !found("/usr/share/nginx/modules/ngx_http_dav_ext_module.so")
    {
        return Some("not run: libnginx-mod-http-dav-ext is not installed".into());
    }
    if !on_path("curl") {
        return Some("not run: curl is not installed".into());
    }
    None
}

fn tool(ctx: &Ctx, name: &str, store: &str) -> Command {
    let mut cmd = Command::new(ctx.bin.join(name));
    cmd.arg("--store").arg(store);
    for k in ["DMP_STORE_USER", "DMP_STORE_PASSWORD", "DMP_PEERS_FILE", "RUST_LOG"] {
        cmd.env_remove(k);
    }
    cmd
}

/// Runs curl, its output to `out`, failing on an HTTP error; returns the
/// seconds it took.
fn curl(out: &Path, args: &[&str], what: &str) -> Result<f64> {
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
    let size = human_size(len);
    let figure = format!("DFTP {size}, nginx WebDAV, time to finished");
    if let Some(why) = missing_server() {
        return Ok(vec![Row::skipped(figure, why)]);
    }
    let dir = TempDir::new_in(&ctx.scratch, "webdav")?;
    let server = WebDav::start(&dir.join("server"), false)?;
    let src = dir.join("random.bin");
    println!("writing a {size} random file");
    random_file(&src, len)?;
    let want = sha256_file(&src)?;
    let (mut dftp_s, mut curl_s, mut ratios, mut puts, mut gets) = (vec![], vec![], vec![], vec![], vec![]);
    for n in 1..=RUNS {
        // curl -T and curl of the same file, through the same server.
        let got = dir.join("curl.bin");
        let null = Path::new("/dev/null");
        let put = curl(null, &["-T", src.to_str().context("path")?, &server.url("curl.bin")], "PUT")?;
        let get = curl(&got, &[&server.url("curl.bin")], "GET")?;
        if sha256_file(&got)? != want {
            bail!("curl GET returned another file");
        }
        std::fs::remove_file(&got)?;
        curl(null, &["-X", "DELETE", &server.url("curl.bin")], "DELETE")?;

        // The DFTP pair: from the start of both until the sender reports
        // that the receiver verified the file and put it in place.
        let run_dir = TempDir::new_in(dir.path(), "run")?;
        let out = run_dir.join("out");
        std::fs::create_dir(&out)?;
        let store = server.store();
        let t = Instant::now();
        let mut recv = Proc::spawn_logged(
            tool(ctx, "dftp-receive", &store).args(["alice", "bob"]).arg(&out).arg("--json"),
            "dftp-receive",
            run_dir.path(),
        )?;
        let mut send = Proc::spawn_logged(
            tool(ctx, "dftp-send", &store).args(["bob", "alice"]).arg(&src).arg("--json"),
            "dftp-send",
            run_dir.path(),
        )?;
        let st = send.wait_timeout(Duration::from_secs(900))?;
        let wall = t.elapsed().as_secs_f64();
        send.check(st)?;
        let st = recv.wait_timeout(Duration::from_secs(60))?;
        recv.check(st)?;
        if sha256_file(&out.join("random.bin"))? != want {
            bail!("run {n}: the received file differs from the sent one (SHA-256)");
        }
        let base = put + get;
        println!(
            "run {n}: dftp {wall:.3} s ({:.0} MB/s), curl PUT {put:.3} s + GET {get:.3} s = {base:.3} s, ratio {:.2}",
            len as f64 / 1e6 / wall,
            wall / base
        );
        dftp_s.push(wall);
        curl_s.push(base);
        ratios.push(wall / base);
        puts.push(put);
        gets.push(get);
    }
    let mbps = len as f64 / 1e6 / median(&dftp_s);
    Ok(vec![
        Row::new(figure, median(&dftp_s), "s").vs("curl -T + curl", median(&curl_s), Some(median(&ratios)), 1.2).note(
            format!(
                "{mbps:.0} MB/s; curl PUT {:.2} s + GET {:.2} s (medians); ratio = median of {RUNS} per-run ratios; \
             SHA-256 verified",
                median(&puts),
                median(&gets)
            ),
        ),
    ])
}

/// Ping round trip over WebDAV while active (a request every 10 ms).
pub fn webdav_ping(ctx: &Ctx) -> Result<Vec<Row>> {
    let figure = "ping rtt p50, nginx WebDAV, -i 0.01";
    if let Some(why) = missing_server() {
        return Ok(vec![Row::skipped(figure, why)]);
    }
    let count = if ctx.quick { 100 } else { 300 };
    let dir = TempDir::new_in(&ctx.scratch, "webdav-ping")?;
    let server = WebDav::start(&dir.join("server"), false)?;
    let store = server.store();
    let mut srv = Proc::spawn_logged(tool(ctx, "dmp-ping-server", &store).arg("bob"), "dmp-ping-server", dir.path())?;
    // The server finds a new client by listing the store (every 5 s when
    // idle): a first short run makes the introductions.
    let mut warm = Proc::spawn_logged(
        tool(ctx, "dmp-ping-client", &store).args(["bob", "alice", "-c", "3", "-i", "0.05", "-W", "30", "-q"]),
        "warm-up",
        dir.path(),
    )?;
    let st = warm.wait_timeout(Duration::from_secs(60))?;
    warm.check(st)?;
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for n in 1..=RUNS {
        let mut client = Proc::spawn_logged(
            tool(ctx, "dmp-ping-client", &store).args([
                "bob",
                "alice",
                "-c",
                &count.to_string(),
                "-i",
                "0.01",
                "-W",
                "5",
                "--json",
                "-q",
            ]),
            &format!("dmp-ping-client-{n}"),
            dir.path(),
        )?;
        let st = client.wait_timeout(Duration::from_secs(120))?;
        client.check(st)?;
        let v: serde_json::Value =
            serde_json::from_str(client.stdout().trim()).context("parsing dmp-ping-client --json output")?;
        let p50 = v["rtt_ms"]["p50"].as_f64().context("no rtt_ms.p50")?;
        let p99 = v["rtt_ms"]["p99"].as_f64().context("no rtt_ms.p99")?;
        println!("run {n}: {count} pings, p50 {p50:.3} ms, p99 {p99:.3} ms, loss {}%", v["loss_pct"]);
        p50s.push(p50);
        p99s.push(p99);
    }
    srv.stop()?;
    let runs = |xs: &[f64]| xs.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    Ok(vec![
        Row::new(figure, median(&p50s), "ms")
            .at_most(2.0)
            .note(format!("{RUNS} runs × {count} pings, each a new client session: {}", runs(&p50s))),
        Row::new("ping rtt p99, nginx WebDAV, -i 0.01", median(&p99s), "ms")
            .note(format!("runs: {}; the first pings of a session wait for the server to see it", runs(&p99s))),
    ])
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
    if let Some(why) = missing_server() {
        return Ok(figures.iter().map(|f| Row::skipped(*f, why.clone())).collect());
    }
    let window = Duration::from_secs(if ctx.quick { 10 } else { 20 });
    let (mut client_rpm, mut server_rpm) = (Vec::new(), Vec::new());
    for n in 1..=RUNS {
        let dir = TempDir::new_in(&ctx.scratch, "webdav-idle")?;
        let server = WebDav::start(&dir.join("server"), true)?;
        let store = server.store();
        // The client first, so that the server finds it at its first listing;
        // one ping now, the next in 60 s.
        let mut client = Proc::spawn_logged(
            tool(ctx, "dmp-ping-client", &store).args(["bob", "alice", "-i", "60", "-W", "30"]),
            "dmp-ping-client",
            dir.path(),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let mut srv =
            Proc::spawn_logged(tool(ctx, "dmp-ping-server", &store).arg("bob"), "dmp-ping-server", dir.path())?;
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
        if other > 0 {
            println!("run {n}: {other} requests not attributed to either party");
        }
        let per_min = |k: u64| k as f64 * 60.0 / secs;
        println!("run {n}: over {secs:.1} s the client made {c} requests, the server {s}");
        client_rpm.push(per_min(c));
        server_rpm.push(per_min(s));
    }
    let note = format!(
        "{RUNS} runs, requests in nginx's access log over {} s, client pinging every 60 s, one client",
        window.as_secs()
    );
    Ok(vec![
        Row::new(figures[0], median(&client_rpm), "req/min").at_most(60.0).note(note.clone()),
        Row::new(figures[1], median(&server_rpm), "req/min").at_most(60.0).note(note),
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

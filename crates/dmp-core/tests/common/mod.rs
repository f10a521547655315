//! Real servers for the remote-store tests, started on 127.0.0.1 through the
//! scripts in `scripts/` and killed when dropped; plus a scripted fake HTTP
//! server for the failure cases.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True when CI asks for the real servers (`DMP_REQUIRE_SERVERS=1`): a
/// missing binary is then a failure, not a skip.
pub fn servers_required() -> bool {
    std::env::var("DMP_REQUIRE_SERVERS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Finds `bin` on PATH (and in /usr/sbin, where Debian puts nginx).
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Whether the test can run: the binary is there, or it is absent and
/// servers are not required (then the test says so and is skipped).
pub fn have(bin: &str, test: &str) -> bool {
    if which(bin).is_some() {
        return true;
    }
    if servers_required() {
        panic!("{test}: `{bin}` is not installed and DMP_REQUIRE_SERVERS is set (run scripts/install-test-deps.sh)");
    }
    eprintln!(
        "SKIPPED {test}: `{bin}` is not installed (run scripts/install-test-deps.sh; set DMP_REQUIRE_SERVERS=1 to fail instead)"
    );
    false
}

pub fn have_nginx_dav(test: &str) -> bool {
    if !have("nginx", test) {
        return false;
    }
    let module =
        ["/usr/lib/nginx/modules/ngx_http_dav_ext_module.so", "/usr/share/nginx/modules/ngx_http_dav_ext_module.so"];
    if module.iter().any(|m| Path::new(m).is_file()) {
        return true;
    }
    if servers_required() {
        panic!("{test}: the nginx dav-ext module is not installed and DMP_REQUIRE_SERVERS is set");
    }
    eprintln!("SKIPPED {test}: the nginx dav-ext module (libnginx-mod-http-dav-ext) is not installed");
    false
}

pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process run by one of the scripts in the foreground; stopped
/// (TERM, then KILL) and its directory removed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    script: &'static str,
    extra_env: Vec<(String, String)>,
}

impl Server {
    /// Runs `scripts/<script> run <dir>` with `PORT` and `env`, and waits
    /// until the port accepts connections.
    pub fn start(script: &'static str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new().prefix("dmp-srv-").tempdir().unwrap();
        let port = free_port();
        let mut s = Server {
            child: None,
            port,
            dir,
            env: HashMap::new(),
            script,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = File::create(self.dir.path().join("script.log")).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(scripts_dir().join(self.script))
            .arg("run")
            .arg(self.dir.path())
            .env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", self.script)));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited ({st}) before listening:\n{}", self.script, self.logs());
            }
            if Instant::now() > deadline {
                panic!("{} is not listening on {} after 30 s:\n{}", self.script, self.port, self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(self.dir.path().join("server.env")).unwrap_or_default();
        self.env = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    }

    /// The script's output and the server's logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["script.log", "logs/error.log", "logs/weed.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.path().join(f)) {
                let tail: Vec<&str> = t.lines().rev().take(30).collect();
                out.push_str(&format!("--- {f}\n"));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    pub fn var(&self, name: &str) -> String {
        self.env.get(name).cloned().unwrap_or_else(|| panic!("{}: no {name} in server.env", self.script))
    }

    /// Stops the server (TERM, then KILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.clean_outside();
    }

    /// Removes what the server left outside its directory: SeaweedFS puts
    /// gRPC sockets in /tmp, named by port (listed by the script in `ports`).
    fn clean_outside(&self) {
        let Ok(ports) = std::fs::read_to_string(self.dir.path().join("ports")) else { return };
        let Ok(rd) = std::fs::read_dir("/tmp") else { return };
        let names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        for p in ports.split_whitespace() {
            let suffix = format!("-grpc-{p}.sock");
            for n in names.iter().filter(|n| n.starts_with("seaweedfs-") && n.ends_with(&suffix)) {
                let _ = std::fs::remove_file(Path::new("/tmp").join(n));
            }
        }
    }

    /// Stops and starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the fake server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(usize, &Seen) -> Vec<u8> + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers each request with the
/// raw bytes its handler returns (given the request's index) and closes the
/// connection. Stops when dropped.
pub struct FakeServer {
    pub port: u16,
    count: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(handler: impl Fn(usize, &Seen) -> Vec<u8> + Send + Sync + 'static) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (c, s) = (count.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (c, s, handler) = (c.clone(), s.clone(), handler.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else { return };
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    s.lock().unwrap().push(req.clone());
                    let resp = handler(n, &req);
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        FakeServer { port, count, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Some(Seen { method, path, headers, body_len: have })
}

/// A complete response with `Connection: close`.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

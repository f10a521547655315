//! A tiny HTTP/1.1 server on 127.0.0.1 for the remote stores' unit tests:
//! it answers each request with what its handler says for the method and
//! path (a canned response, a body dripped slowly, or nothing at all) and
//! records what it was asked.

use reqwest::Url;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
pub(crate) enum Reply {
    /// Sends these bytes (a whole response) and closes the connection.
    Now(Vec<u8>),
    /// Sends `head` (status line and headers), then `body` one byte every
    /// `every`.
    Drip { head: Vec<u8>, body: Vec<u8>, every: Duration },
    /// Reads the request and never answers (the connection stays open).
    Silence,
}

type Handler = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// The server; stops accepting when dropped.
pub(crate) struct FakeServer {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// Starts a server that answers `handler(method, path)`.
    pub async fn start(handler: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, handler.clone(), s.clone()));
            }
        });
        FakeServer { port, seen, task }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:{}{path}", self.port)).expect("URL")
    }

    /// The method and path of every request so far.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response with a body and `Connection: close`.
pub(crate) fn response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head(status, body.len());
    out.extend_from_slice(body);
    out
}

/// The status line and headers of a response with a body of `len` bytes.
pub(crate) fn head(status: &str, len: usize) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

async fn serve(mut sock: TcpStream, handler: Arc<Handler>, seen: Arc<Mutex<Vec<(String, String)>>>) {
    let Some((method, path)) = read_request(&mut sock).await else { return };
    seen.lock().expect("seen lock").push((method.clone(), path.clone()));
    match handler(&method, &path) {
        Reply::Now(bytes) => {
            let _ = sock.write_all(&bytes).await;
        }
        Reply::Drip { head, body, every } => {
            if sock.write_all(&head).await.is_err() {
                return;
            }
            for b in body {
                tokio::time::sleep(every).await;
                if sock.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        }
        Reply::Silence => {
            // Holds the connection open until the client gives up.
            let mut buf = [0u8; 1024];
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            return;
        }
    }
    let _ = sock.shutdown().await;
}

/// Reads one request (head and body); its method and path.
async fn read_request(sock: &mut TcpStream) -> Option<(String, String)> {
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
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    Some((method, path))
}

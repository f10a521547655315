//! A fault-injecting HTTP/1.1 proxy for end-to-end tests: put it between
//! the tools and a WebDAV or S3 server on loopback. Each request is, by a
//! seeded roll, passed through or answered with a fault:
//!
//! - `503 Service Unavailable` (without reaching the server);
//! - `429 Too Many Requests` with `Retry-After: 1` (without reaching it);
//! - a connection reset mid-response: the request reached the server (its
//!   effect happened), half the response is sent, then RST;
//! - a truncated body: the full `Content-Length` is announced, half the
//!   body is sent, then the connection is closed;
//! - added latency (0 to `latency_max`) before forwarding.
//!
//! Plain threads and blocking sockets, one thread per client connection,
//! one server connection per client connection (kept alive). Bodies are
//! read whole (the tools' requests and answers are a few MiB at most) and
//! re-sent with `Content-Length` framing. The proxy stops accepting when
//! dropped; connection threads end when their sockets close.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Fault rates (probabilities per request) and their parameters.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub seed: u64,
    pub p_503: f64,
    pub p_429: f64,
    pub p_reset: f64,
    pub p_truncate: f64,
    pub p_latency: f64,
    pub latency_max: Duration,
    /// The `Retry-After` value of a 429, in seconds.
    pub retry_after: u64,
}

impl FaultConfig {
    /// A few percent of each fault, latency on one request in ten.
    pub fn moderate(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            p_503: 0.03,
            p_429: 0.02,
            p_reset: 0.02,
            p_truncate: 0.02,
            p_latency: 0.1,
            latency_max: Duration::from_millis(200),
            retry_after: 1,
        }
    }
}

/// How many requests the proxy saw and what it did to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub requests: u64,
    pub passed: u64,
    pub s503: u64,
    pub s429: u64,
    pub resets: u64,
    pub truncated: u64,
    pub delayed: u64,
}

impl FaultCounts {
    /// Faults injected (latency not counted).
    pub fn faults(&self) -> u64 {
        self.s503 + self.s429 + self.resets + self.truncated
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests: {} passed, {} answered 503, {} answered 429 (Retry-After), {} reset mid-response, \
             {} with a truncated body, {} delayed",
            self.requests, self.passed, self.s503, self.s429, self.resets, self.truncated, self.delayed
        )
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    passed: AtomicU64,
    s503: AtomicU64,
    s429: AtomicU64,
    resets: AtomicU64,
    truncated: AtomicU64,
    delayed: AtomicU64,
}

/// A running proxy; stops accepting connections when dropped.
pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    enabled: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, cfg: FaultConfig) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let enabled = Arc::new(AtomicBool::new(true));
        let (st, ct, en) = (stop.clone(), counters.clone(), enabled.clone());
        let accept = std::thread::spawn(move || {
            let mut n = 0u64;
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                n += 1;
                // Each connection rolls its own dice, from the seed and its number.
                let rng = fastrand::Rng::with_seed(cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(n));
                let conn = Conn { cfg: cfg.clone(), rng, counters: ct.clone(), enabled: en.clone(), upstream };
                std::thread::spawn(move || conn.serve(client));
            }
        });
        FaultProxy { port, stop, counters, enabled, accept: Some(accept) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Turns fault injection on or off (latency included).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            requests: g(&c.requests),
            passed: g(&c.passed),
            s503: g(&c.s503),
            s429: g(&c.s429),
            resets: g(&c.resets),
            truncated: g(&c.truncated),
            delayed: g(&c.delayed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Conn {
    cfg: FaultConfig,
    rng: fastrand::Rng,
    counters: Arc<Counters>,
    enabled: Arc<AtomicBool>,
    upstream: SocketAddr,
}

/// A request or response head: the first line and the header lines.
struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.trim().parse().ok())
    }

    /// The head with `Content-Length: len` instead of any framing header.
    fn encode(&self, len: Option<usize>) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            let framing = k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
            if !(framing && len.is_some()) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        if let Some(n) = len {
            out.push_str(&format!("Content-Length: {n}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut first = String::new();
    loop {
        first.clear();
        if r.read_line(&mut first)? == 0 {
            return Ok(None);
        }
        if !first.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "head cut short"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some(Head { first: first.trim_end_matches(['\r', '\n']).to_owned(), headers }))
}

/// Reads a body framed by `head` (`Content-Length`, chunked, or, when
/// `until_close`, everything until the peer closes).
fn read_body(r: &mut impl BufRead, head: &Head, until_close: bool) -> io::Result<Vec<u8>> {
    if head.chunked() {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    match head.content_length() {
        Some(n) => {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
            Ok(body)
        }
        None if until_close => {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            Ok(body)
        }
        None => Ok(Vec::new()),
    }
}

/// Closes `s` with a reset (SO_LINGER 0) instead of an orderly close.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

struct Upstream {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn serve(mut self, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let _ = client.set_read_timeout(Some(Duration::from_secs(120)));
        let Ok(write_half) = client.try_clone() else { return };
        let mut out = write_half;
        let mut reader = BufReader::with_capacity(1 << 16, client);
        let mut up: Option<Upstream> = None;
        loop {
            let head = match read_head(&mut reader) {
                Ok(Some(h)) => h,
                _ => return,
            };
            let Ok(body) = read_body(&mut reader, &head, false) else { return };
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let method = head.first.split(' ').next().unwrap_or("").to_owned();
            let on = self.enabled.load(Ordering::Relaxed);
            let roll = if on { self.rng.f64() } else { 1.0 };
            let c = &self.cfg;
            if roll < c.p_503 {
                self.counters.s503.fetch_add(1, Ordering::Relaxed);
                let r = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 18\r\n\r\ninjected fault 503";
                if out.write_all(r).is_err() {
                    return;
                }
                continue;
            }
            if roll < c.p_503 + c.p_429 {
                self.counters.s429.fetch_add(1, Ordering::Relaxed);
                let r = format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {}\r\nContent-Length: 18\r\n\r\ninjected fault 429",
                    c.retry_after
                );
                if out.write_all(r.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            if on && self.rng.f64() < c.p_latency {
                self.counters.delayed.fetch_add(1, Ordering::Relaxed);
                let ms = self.rng.u64(0..=c.latency_max.as_millis() as u64);
                std::thread::sleep(Duration::from_millis(ms));
            }
            // Forward; a kept-alive server connection may have been closed
            // meanwhile: then one fresh attempt.
            let mut answer = None;
            for _ in 0..2 {
                if up.is_none() {
                    match TcpStream::connect(self.upstream) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                            up = Some(Upstream { reader: BufReader::with_capacity(1 << 16, s) });
                        }
                        Err(_) => return,
                    }
                }
                let u = up.as_mut().expect("connected");
                let mut req = head.encode(Some(body.len()));
                req.extend_from_slice(&body);
                let sent = u.reader.get_mut().write_all(&req);
                let resp = sent.and_then(|()| {
                    let h = read_head(&mut u.reader)?
                        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))?;
                    let status: u16 = h.first.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    let no_body = method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
                    let close = h.get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    let until_close = !h.chunked() && h.content_length().is_none();
                    let b = if no_body { Vec::new() } else { read_body(&mut u.reader, &h, until_close)? };
                    Ok((h, b, no_body, close || (until_close && !no_body)))
                });
                match resp {
                    Ok(r) => {
                        answer = Some(r);
                        break;
                    }
                    Err(_) => up = None,
                }
            }
            let Some((h, b, no_body, close_up)) = answer else { return };
            if close_up {
                up = None;
            }
            let mut resp = if no_body { h.encode(None) } else { h.encode(Some(b.len())) };
            let head_len = resp.len();
            resp.extend_from_slice(&b);
            let roll = if on { self.rng.f64() } else { 1.0 };
            if roll < c.p_reset {
                self.counters.resets.fetch_add(1, Ordering::Relaxed);
                let _ = out.write_all(&resp[..resp.len() / 2]);
                let _ = out.flush();
                drop(reader);
                reset(out);
                return;
            }
            if roll < c.p_reset + c.p_truncate && !b.is_empty() {
                self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                let _ = out.write_all(&resp[..head_len + b.len() / 2]);
                let _ = out.flush();
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            self.counters.passed.fetch_add(1, Ordering::Relaxed);
            if out.write_all(&resp).is_err() {
                return;
            }
        }
    }
}

//! The HTTP plumbing shared by the remote stores: one pooled client,
//! timeouts and an overall deadline per request, retries with exponential
//! back-off and jitter (honouring `Retry-After`) bounded in attempts and in
//! time, redirect policy, bounded body reads, and the mapping of HTTP
//! failures to [`StoreError`].

use super::{Key, StoreError, op_on};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url, header};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Timeouts and retry policy of a remote store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Time allowed to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest silence allowed while reading a response.
    pub read_timeout: Duration,
    /// Longest time a request without a body to upload may take in all,
    /// from connecting to the end of the response body: this, plus the
    /// largest body allowed at `min_download_rate` for a read (a GET of up
    /// to `max_len` bytes, a listing). Without it a server that sends a
    /// byte now and then holds a read open for hours.
    pub read_deadline_base: Duration,
    /// Slowest download rate tolerated by that deadline, in bytes per second.
    pub min_download_rate: u64,
    /// Retries after the first attempt, for 5xx, 429, resets, timeouts and
    /// refused connections.
    pub retries: u32,
    /// Time one operation may spend retrying: no retry starts once this
    /// much has passed since its first attempt (or would have passed by the
    /// end of the back-off delay). A server's `Retry-After` that reaches
    /// past it is waited for until it, then tried once more.
    pub retry_for: Duration,
    /// A request still unanswered after this long (plus the time its upload
    /// may take), or an operation still failing after it, is logged as a
    /// warning, once until the store answers again.
    pub warn_after: Duration,
    /// First back-off delay; doubled after each retry, with jitter.
    pub backoff_base: Duration,
    /// Ceiling of one back-off delay.
    pub backoff_max: Duration,
    /// Ceiling applied to a server's `Retry-After`.
    pub retry_after_max: Duration,
    /// Same-host redirects followed by one read.
    pub max_redirects: u32,
    /// Slowest upload rate tolerated: a PUT of `n` bytes may take
    /// `write_timeout_base + n / min_upload_rate` seconds in all.
    pub min_upload_rate: u64,
    pub write_timeout_base: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            read_deadline_base: Duration::from_secs(30),
            min_download_rate: 64 * 1024,
            retries: 5,
            retry_for: Duration::from_secs(60),
            warn_after: Duration::from_secs(10),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            retry_after_max: Duration::from_secs(60),
            max_redirects: 5,
            min_upload_rate: 256 * 1024,
            write_timeout_base: Duration::from_secs(60),
        }
    }
}

/// Largest error body read to explain a failure.
const ERROR_BODY_MAX: usize = 4096;

/// Ceiling of any one request's deadline.
const DEADLINE_MAX: Duration = Duration::from_secs(24 * 3600);

fn build_client(opts: &HttpOptions) -> Result<Client, String> {
    Client::builder()
        .user_agent(concat!("dmp/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        // Redirects are followed by hand: never for writes, only same-host for reads.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| error_chain(&e))
}

/// The process-wide client for the default options (one connection pool).
fn shared_client(opts: &HttpOptions) -> Result<Client, String> {
    static SHARED: OnceLock<Result<Client, String>> = OnceLock::new();
    let defaults = HttpOptions::default();
    if opts.connect_timeout == defaults.connect_timeout && opts.read_timeout == defaults.read_timeout {
        SHARED.get_or_init(|| build_client(&defaults)).clone()
    } else {
        build_client(opts)
    }
}

/// The source chain of an error, without the URL (which may carry a signature).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}

/// How one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another try, after `after` if the server said so.
    Retry { msg: String, after: Option<Duration>, unreachable: bool },
    /// Final.
    Fatal(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
    }
}

/// One store's view of the shared client: its name for errors, its options.
#[derive(Clone)]
pub(crate) struct Http {
    pub client: Client,
    pub opts: HttpOptions,
    /// The store's `describe()`, used in every error.
    pub store: String,
    /// Appended to 401/403 errors: where credentials come from.
    pub denied_hint: &'static str,
    /// Set once a slow or failing store was logged as a warning; cleared
    /// when an operation succeeds again. Shared by the store's clones.
    warned: Arc<AtomicBool>,
}

impl Http {
    pub fn new(store: String, opts: HttpOptions, denied_hint: &'static str) -> Result<Http, StoreError> {
        let client = shared_client(&opts)
            .map_err(|msg| StoreError::BadSpec(format!("{store}: cannot set up the HTTP client: {msg}")))?;
        Ok(Http { client, opts, store, denied_hint, warned: Arc::new(AtomicBool::new(false)) })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are
    /// spent (`retries` more attempts, or `retry_for` of time); sleeps with
    /// exponential back-off and jitter in between.
    pub async fn run<T, F, Fut>(&self, op: &'static str, key: &Key, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let start = Instant::now();
        let mut n = 0u32;
        let result = loop {
            match attempt().await {
                Ok(v) => break Ok(v),
                Err(Failure::Fatal(e)) => break Err(e),
                Err(Failure::Retry { msg, after, unreachable }) => {
                    let spent = start.elapsed();
                    let delay = match after {
                        // A server that asks for more time than is left is
                        // waited on for what is left. Giving up at once
                        // instead failed the operation, and the caller's
                        // next look (within 2 s) asked again: "Retry-After:
                        // 999999" drew a request a second, "30" one in 30 s.
                        Some(a) => a.min(self.opts.retry_after_max).min(self.opts.retry_for.saturating_sub(spent)),
                        None => backoff(&self.opts, n),
                    };
                    if n >= self.opts.retries || spent + delay > self.opts.retry_for {
                        let tries = n + 1;
                        let msg = format!(
                            "{msg} (gave up after {tries} attempt{} in {:.1} s)",
                            if tries == 1 { "" } else { "s" },
                            spent.as_secs_f64()
                        );
                        break Err(if unreachable {
                            StoreError::Unreachable { store: self.store.clone(), msg }
                        } else {
                            StoreError::Io { store: self.store.clone(), op, key: key.to_string(), msg }
                        });
                    }
                    if spent >= self.opts.warn_after {
                        self.warn_once(format_args!(
                            "{}: {}: failing for {:.0} s ({msg}); retrying",
                            self.store,
                            op_on(op, key.as_str()),
                            spent.as_secs_f64()
                        ));
                    }
                    tracing::debug!(store = %self.store, op, key = %key, "{msg}; retry {} in {delay:?}", n + 1);
                    tokio::time::sleep(delay).await;
                    n += 1;
                }
            }
        };
        if result.is_ok() && self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!("{}: answering again", self.store);
        }
        result
    }

    /// Logs a warning about this store unless one was logged since it last
    /// answered.
    fn warn_once(&self, msg: std::fmt::Arguments<'_>) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{msg}");
        }
    }

    /// True once a warning was logged and the store has not answered since.
    #[cfg(test)]
    pub fn has_warned(&self) -> bool {
        self.warned.load(Ordering::Relaxed)
    }

    /// The overall deadline of a read of at most `max_len` bytes: see
    /// [`HttpOptions::read_deadline_base`].
    pub fn read_deadline(&self, max_len: u64) -> Duration {
        let secs = max_len / self.opts.min_download_rate.max(1);
        (self.opts.read_deadline_base + Duration::from_secs(secs.min(DEADLINE_MAX.as_secs()))).min(DEADLINE_MAX)
    }

    /// Sends a request. Transport errors, 5xx (but 501 and 507) and 429 are
    /// retryable failures; any other response is returned as is.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, Failure> {
        let resp = self.send_raw(req).await?;
        self.check_retryable(resp).await
    }

    /// Sends a request; only transport errors are failures. A request built
    /// without a deadline gets `read_deadline_base` (reads and uploads set
    /// their own, scaled to their size). One still unanswered after
    /// `warn_after` plus its upload time is logged as a warning.
    pub async fn send_raw(&self, req: RequestBuilder) -> Result<Response, Failure> {
        let (client, req) = req.build_split();
        let mut req = req.map_err(|e| self.transport_failure(&e))?;
        if req.timeout().is_none() {
            *req.timeout_mut() = Some(self.opts.read_deadline_base);
        }
        let upload = req.body().and_then(|b| b.as_bytes()).map_or(0, <[u8]>::len) as u64;
        let patience = self.opts.warn_after + Duration::from_secs(upload / self.opts.min_upload_rate.max(1));
        let what = format!("{} {}", req.method(), req.url().path());
        let send = client.execute(req);
        tokio::pin!(send);
        let sent = tokio::select! {
            r = &mut send => r,
            () = tokio::time::sleep(patience) => {
                self.warn_once(format_args!(
                    "{}: no answer to {what} after {} s; still waiting",
                    self.store,
                    patience.as_secs()
                ));
                send.await
            }
        };
        sent.map_err(|e| self.transport_failure(&e))
    }

    /// A retryable failure for 5xx (but 501, 505 and 507) and 429; any other
    /// response is returned as is.
    pub async fn check_retryable(&self, resp: Response) -> Result<Response, Failure> {
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS
            || (status.is_server_error()
                && status != StatusCode::NOT_IMPLEMENTED
                && status != StatusCode::INSUFFICIENT_STORAGE
                && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        {
            let after = retry_after(resp.headers(), SystemTime::now());
            let detail = error_detail(resp).await;
            return Err(Failure::Retry {
                msg: format!("HTTP {}{detail}", status_text(status)),
                after,
                unreachable: false,
            });
        }
        Ok(resp)
    }

    /// Sends a read, following redirects that stay on the same host.
    /// `build` makes the request for a URL.
    pub async fn send_read(
        &self,
        op: &'static str,
        key: &Key,
        url: Url,
        build: impl Fn(Url) -> RequestBuilder,
    ) -> Result<Response, Failure> {
        let mut url = url;
        for _ in 0..=self.opts.max_redirects {
            let resp = self.send(build(url.clone())).await?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let next = match resp.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()) {
                Some(loc) => {
                    url.join(loc).map_err(|_| self.fatal_io(op, key, format!("bad redirect target {loc:?}")))?
                }
                None => {
                    return Err(self.fatal_io(
                        op,
                        key,
                        format!("HTTP {} without a Location", status_text(resp.status())),
                    ));
                }
            };
            if !same_host(&url, &next) {
                return Err(self.redirected(op, key, &next));
            }
            if next.path() == format!("{}/", url.path()) {
                // The server says the key is a directory.
                return Err(Failure::Fatal(StoreError::NotAFile { store: self.store.clone(), key: key.to_string() }));
            }
            tracing::debug!(store = %self.store, "{op} {key}: following a redirect to {}", shown_url(&next));
            url = next;
        }
        Err(self.fatal_io(op, key, format!("more than {} redirects", self.opts.max_redirects)))
    }

    /// A retryable or final failure for a transport error.
    pub fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        let msg = error_chain(&e_without_url(e));
        if e.is_builder() {
            return Failure::Fatal(StoreError::BadSpec(format!("{}: {msg}", self.store)));
        }
        // A certificate the client does not trust will not change by retrying.
        if e.is_connect() && msg.to_ascii_lowercase().contains("certificate") {
            return Failure::Fatal(StoreError::Unreachable { store: self.store.clone(), msg });
        }
        // Other connect errors (refused, unknown host) are retried too: a
        // server may be restarting.
        Failure::Retry { msg, after: None, unreachable: e.is_connect() }
    }

    pub fn fatal_io(&self, op: &'static str, key: &Key, msg: String) -> Failure {
        Failure::Fatal(StoreError::Io { store: self.store.clone(), op, key: key.to_string(), msg })
    }

    pub fn redirected(&self, op: &'static str, key: &Key, to: &Url) -> Failure {
        Failure::Fatal(StoreError::Redirected {
            store: self.store.clone(),
            op,
            key: key.to_string(),
            location: shown_url(to),
        })
    }

    /// The failure for a response the adapter did not expect: 401/403 are
    /// `Denied`, 3xx `Redirected`, 507 `Full`, anything else `Io`.
    pub async fn unexpected(&self, op: &'static str, key: &Key, resp: Response) -> Failure {
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
            return match loc {
                Some(loc) => match resp.url().join(&loc) {
                    Ok(to) => self.redirected(op, key, &to),
                    Err(_) => self.fatal_io(op, key, format!("redirected to a bad target {loc:?}")),
                },
                None => self.fatal_io(op, key, format!("HTTP {} without a Location", status_text(status))),
            };
        }
        let detail = error_detail(resp).await;
        let what = op_on(op, key.as_str());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Failure::Fatal(StoreError::Denied {
                store: self.store.clone(),
                msg: format!("{what}: HTTP {}{detail}; {}", status_text(status), self.denied_hint),
            }),
            StatusCode::INSUFFICIENT_STORAGE => Failure::Fatal(StoreError::Full {
                store: self.store.clone(),
                msg: format!("{what}: HTTP {}{detail}", status_text(status)),
            }),
            _ => self.fatal_io(op, key, format!("unexpected HTTP {}{detail}", status_text(status))),
        }
    }

    /// The time allowed for a whole upload of `len` bytes.
    pub fn write_timeout(&self, len: usize) -> Duration {
        self.opts.write_timeout_base + Duration::from_secs(len as u64 / self.opts.min_upload_rate.max(1))
    }

    /// Reads a body of at most `max_len` bytes; stops reading as soon as it
    /// is known to be longer. A body cut short is retryable.
    pub async fn read_body(&self, key: &Key, mut resp: Response, max_len: u64) -> Result<Vec<u8>, Failure> {
        let too_large = |len: Option<u64>| {
            Failure::Fatal(StoreError::TooLarge { store: self.store.clone(), key: key.to_string(), len, max: max_len })
        };
        let declared = resp.content_length();
        if let Some(len) = declared {
            if len > max_len {
                return Err(too_large(Some(len)));
            }
        }
        // From the buffer pool: a chunk's buffer comes back once it is
        // written (see `buf`), instead of fresh memory faulted in again.
        let mut buf = crate::buf::vec(declared.unwrap_or(0).min(max_len).min(64 << 20) as usize);
        let start = tokio::time::Instant::now();
        let rate = self.opts.min_download_rate.max(1) as f64;
        loop {
            // Past `read_deadline_base`, the body must keep up with
            // `min_download_rate` (and one more chunk's worth): a server
            // that sends a byte now and then fails in about that long, not
            // at the request's deadline, which allows for the largest body
            // (over 17 minutes for a listing of up to 64 MiB).
            let allowed = self.opts.read_deadline_base + Duration::from_secs_f64((buf.len() as f64 + 65536.0) / rate);
            let Ok(next) = tokio::time::timeout_at(start + allowed, resp.chunk()).await else {
                return Err(Failure::Retry {
                    msg: format!(
                        "timed out: the body came slower than {} KiB/s ({} bytes in {:.1} s)",
                        self.opts.min_download_rate / 1024,
                        buf.len(),
                        start.elapsed().as_secs_f64()
                    ),
                    after: None,
                    unreachable: false,
                });
            };
            match next {
                Ok(Some(c)) => {
                    if (buf.len() + c.len()) as u64 > max_len {
                        // Not how much was read: that varies from one try to
                        // the next, and a warning is logged once per reason.
                        return Err(too_large(None));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure::Retry {
                        // The op and key are added by `run` (a StoreError::Io).
                        msg: format!("body cut short after {} bytes: {}", buf.len(), error_chain(&e_without_url(&e))),
                        after: None,
                        unreachable: false,
                    });
                }
            }
        }
        if let Some(len) = declared {
            if buf.len() as u64 != len {
                return Err(Failure::Retry {
                    msg: format!("body of {} bytes, {len} announced", buf.len()),
                    after: None,
                    unreachable: false,
                });
            }
        }
        Ok(buf)
    }

    /// Rejects an HTML page served in place of an object (a login, error or
    /// "index.html for every path" page).
    pub fn check_not_html(&self, key: &Key, content_type: Option<&str>, body: &[u8]) -> Result<(), Failure> {
        if looks_like_html(content_type, body) {
            return Err(Failure::Fatal(StoreError::NotAnObject {
                store: self.store.clone(),
                key: key.to_string(),
                what: "an HTML page".into(),
            }));
        }
        Ok(())
    }
}

fn e_without_url(e: &reqwest::Error) -> ErrorNoUrl<'_> {
    ErrorNoUrl(e)
}

/// Displays a reqwest error without its URL (a presigned URL carries a
/// signature that must not end up in logs).
#[derive(Debug)]
struct ErrorNoUrl<'a>(&'a reqwest::Error);

impl std::fmt::Display for ErrorNoUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else if e.is_body() || e.is_decode() {
            "error reading the body"
        } else if e.is_request() {
            "error sending the request"
        } else {
            "HTTP error"
        };
        f.write_str(what)
    }
}

impl std::error::Error for ErrorNoUrl<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.0)
    }
}

/// `404 Not Found`, `429 Too Many Requests`, ...
pub(crate) fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

/// A short explanation taken from an error body: an S3 `<Code>` and
/// `<Message>`, or the first line of a plain-text body; empty for HTML.
pub(crate) async fn error_detail(mut resp: Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_MAX {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_MAX);
    let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    detail_of(ct.as_deref(), &body)
}

pub(crate) fn detail_of(content_type: Option<&str>, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Some(code) = xml_text(&text, "Code") {
        return match xml_text(&text, "Message") {
            Some(m) if !m.is_empty() => format!(" ({}: {})", one_line(&code), one_line(&m)),
            _ => format!(" ({})", one_line(&code)),
        };
    }
    if looks_like_html(content_type, body) || text.trim_start().starts_with('<') {
        return String::new();
    }
    // Not text (a 206 or 4xx carrying the object's bytes, a compressed
    // body): nothing worth printing. The body may have been cut inside a
    // character at ERROR_BODY_MAX.
    if let Err(e) = std::str::from_utf8(body) {
        if e.error_len().is_some() {
            return String::new();
        }
    }
    let line = one_line(text.lines().find(|l| !l.trim().is_empty()).unwrap_or(""));
    if line.is_empty() { String::new() } else { format!(" ({line})") }
}

/// The text of the first `<tag>...</tag>` in `s`, if short.
pub(crate) fn xml_text(s: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = s.find(&open)? + open.len();
    let end = s[start..].find(&format!("</{tag}>"))? + start;
    let t = s[start..end].trim();
    (t.len() <= 300).then(|| t.to_owned())
}

/// One printable line of at most 200 characters, with any credentials a
/// server echoes back (`Basic …`, `Bearer …`) left out.
fn one_line(s: &str) -> String {
    // Control characters, and the bidirectional overrides and isolates
    // that would make a server's text read otherwise than it is.
    let odd = |c: char| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
            || c == '\u{feff}'
    };
    let mut out: String = s.trim().chars().map(|c| if odd(c) { ' ' } else { c }).take(200).collect();
    if s.trim().chars().count() > 200 {
        out.push('…');
    }
    let mut words: Vec<&str> = out.split(' ').collect();
    for i in 1..words.len() {
        if ["basic", "bearer", "digest"].contains(&words[i - 1].to_ascii_lowercase().as_str()) && !words[i].is_empty() {
            words[i] = "[redacted]";
        }
    }
    words.join(" ")
}

/// True for an HTML document: declared `text/html` and opening with a
/// doctype or an `<html>` tag. (A stored object is never served as
/// `text/html`: protocol names carry no `.html` extension.)
pub(crate) fn looks_like_html(content_type: Option<&str>, body: &[u8]) -> bool {
    let declared_html = match content_type {
        Some(ct) => {
            let ct = ct.trim().to_ascii_lowercase();
            ct.starts_with("text/html") || ct.starts_with("application/xhtml")
        }
        None => false,
    };
    if !declared_html {
        return false;
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    let head: Vec<u8> = body[start..].iter().take(15).map(u8::to_ascii_lowercase).collect();
    head.starts_with(b"<!doctype html") || head.starts_with(b"<html")
}

/// Same scheme, host and port; an upgrade from http to https on the same
/// host (default ports) counts as the same host too.
pub(crate) fn same_host(a: &Url, b: &Url) -> bool {
    if a.host_str() != b.host_str() {
        return false;
    }
    if a.scheme() == b.scheme() {
        return a.port_or_known_default() == b.port_or_known_default();
    }
    a.scheme() == "http" && b.scheme() == "https" && a.port().is_none() && b.port().is_none()
}

/// A URL for messages: scheme, host, port and path, without query or credentials.
pub(crate) fn shown_url(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// The delay a `Retry-After` header asks for: seconds or an HTTP date.
pub(crate) fn retry_after(headers: &header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential back-off with jitter: a random delay between half and all of
/// `base * 2^n`, capped at `max`.
pub(crate) fn backoff(opts: &HttpOptions, n: u32) -> Duration {
    let full = opts.backoff_base.saturating_mul(1u32 << n.min(20)).min(opts.backoff_max);
    let half = full / 2;
    half + Duration::from_nanos(fastrand::u64(0..=(full - half).as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let o = HttpOptions::default();
        for n in 0..30 {
            let d = backoff(&o, n);
            let full = o.backoff_base.saturating_mul(1 << n.min(20)).min(o.backoff_max);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert!(backoff(&o, 40) <= o.backoff_max);
    }

    #[test]
    fn read_deadlines_scale_with_the_size_allowed() {
        let http = Http::new("s".into(), HttpOptions::default(), "").unwrap();
        assert_eq!(http.read_deadline(0), Duration::from_secs(30));
        assert_eq!(http.read_deadline(64 << 20), Duration::from_secs(30 + 1024));
        assert_eq!(http.read_deadline(u64::MAX), DEADLINE_MAX);
    }

    #[test]
    fn parses_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut h = header::HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(header::RETRY_AFTER, "Sun, 06 Nov 1994 08:49:47 GMT".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(header::RETRY_AFTER, "Sun, 06 Nov 1994 08:49:27 GMT".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn recognises_html() {
        assert!(looks_like_html(Some("text/html; charset=utf-8"), b"\n  <!DOCTYPE html><html>"));
        assert!(looks_like_html(Some("text/html"), b"<HTML><body>404</body></HTML>"));
        assert!(!looks_like_html(None, b"<html>"));
        assert!(!looks_like_html(Some("application/octet-stream"), b"<!doctype html>"));
        assert!(!looks_like_html(Some("text/html"), b"\x89DMP"));
        assert!(!looks_like_html(Some("text/html"), b""));
    }

    #[test]
    fn explains_error_bodies() {
        let s3 = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature\nwe calculated does not match</Message></Error>";
        assert_eq!(
            detail_of(Some("application/xml"), s3),
            " (SignatureDoesNotMatch: The request signature we calculated does not match)"
        );
        assert_eq!(detail_of(Some("text/html"), b"<html><body>nope</body></html>"), "");
        assert_eq!(detail_of(Some("text/plain"), b"\nquota exceeded\nmore"), " (quota exceeded)");
        assert_eq!(detail_of(None, b""), "");
        // A server's text never reaches the terminal raw, nor echoes credentials.
        let evil = b"<Error><Code>\x1b[31mX\x1b]0;t\x07</Code></Error>";
        assert!(!detail_of(Some("application/xml"), evil).chars().any(char::is_control));
        assert_eq!(detail_of(Some("text/plain"), b"echo: Basic YWxpY2U6c2VjcmV0"), " (echo: Basic [redacted])");
        // Binary bodies (an object's bytes with a 206, a gzip body) are not printed.
        assert_eq!(detail_of(None, b"\x89DMP\x01\x00\x10\xff\xfe bob alice"), "");
        assert_eq!(detail_of(Some("application/octet-stream"), b"\x1f\x8b\x08\x00\xa5\x93"), "");
        // ... but text cut inside a character at the read limit still is.
        assert_eq!(
            detail_of(Some("text/plain"), "quota d\u{e9}pass\u{e9}".as_bytes().split_last().unwrap().1),
            " (quota d\u{e9}pass\u{fffd})"
        );
        let spoof = detail_of(Some("text/plain"), "ok \u{202e}txt.exe\u{2066}".as_bytes());
        assert!(!spoof.contains('\u{202e}') && !spoof.contains('\u{2066}'), "{spoof:?}");
    }

    #[test]
    fn same_host_rules() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_host(&u("http://a:8080/x"), &u("http://a:8080/y")));
        assert!(!same_host(&u("http://a:8080/x"), &u("http://a:8081/x")));
        assert!(!same_host(&u("http://a/x"), &u("http://b/x")));
        assert!(same_host(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_host(&u("https://a/x"), &u("http://a/x")));
        assert!(same_host(&u("http://a/x"), &u("http://a:80/x")));
    }

    #[test]
    fn shown_url_hides_query_and_credentials() {
        let u = Url::parse("https://u:p@h/b/k?X-Amz-Signature=abc#f").unwrap();
        assert_eq!(shown_url(&u), "https://h/b/k");
    }
}

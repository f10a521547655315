//! A peer's outbox read over plain HTTP(S): a static web server, a CDN, a
//! public bucket or a synced folder's public link. Read-only: `get` only;
//! `put`, `delete` and `list` are unsupported, and the protocol never needs
//! them on a peer's outbox (acknowledgements travel through the reader's own
//! outbox, and messages are found by their expected names).
//!
//! What such a server sends is not trusted: 404 and 410 read as absent, an
//! HTML page served in place of an object is [`StoreError::NotAnObject`],
//! redirects are followed only on the same host, and the protocol verifies
//! every envelope and chunk hash anyway (a stale or truncated body is "not
//! there yet").

use super::retry::{Failure, Http, HttpOptions, shown_url};
use super::spec::shown_location;
use super::{Changes, Key, Store, StoreError};
use async_trait::async_trait;
use reqwest::{StatusCode, Url, header};

/// A read-only store at an HTTP(S) URL (the URL of one party's outbox
/// directory, i.e. of `<store>/<party-id>/`).
pub struct HttpStore {
    base: Url,
    http: Http,
}

impl HttpStore {
    /// A store for the outbox at `base` (`http://` or `https://`).
    pub fn new(base: Url) -> Result<HttpStore, StoreError> {
        HttpStore::with_options(base, HttpOptions::default())
    }

    pub fn with_options(base: Url, opts: HttpOptions) -> Result<HttpStore, StoreError> {
        let base = check_base(base)?;
        let http = Http::new(
            format!("http outbox {}", shown_url(&base)),
            opts,
            "the outbox must be readable without credentials",
        )?;
        Ok(HttpStore { base, http })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, key: &Key) -> Url {
        key_url(&self.base, key)
    }

    fn unsupported(&self, op: &'static str) -> StoreError {
        StoreError::Unsupported { store: self.describe(), op }
    }
}

/// Checks an http(s) base URL and gives it a trailing slash, so that keys
/// resolve below it.
pub(crate) fn check_base(mut base: Url) -> Result<Url, StoreError> {
    // Without credentials or query, quoted and cut short.
    let shown = shown_location(&shown_url(&base));
    if !matches!(base.scheme(), "http" | "https") {
        return Err(StoreError::BadSpec(format!("{shown}: not an http:// or https:// URL")));
    }
    if base.host_str().is_none_or(str::is_empty) {
        return Err(StoreError::BadSpec(format!("{shown}: no host")));
    }
    if base.port() == Some(0) {
        return Err(StoreError::BadSpec(format!("{shown}: port 0 cannot be reached; give the server's port")));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(StoreError::BadSpec(format!(
            "{shown}: credentials in the URL are not accepted (use DMP_STORE_USER and DMP_STORE_PASSWORD, or ~/.netrc)"
        )));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(StoreError::BadSpec(format!("{shown}: a store URL takes no query or fragment")));
    }
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    Ok(base)
}

/// The URL of `key` below `base` (which ends with `/`). Key components are
/// plain ASCII that needs no escaping.
pub(crate) fn key_url(base: &Url, key: &Key) -> Url {
    let mut u = base.clone();
    let p = format!("{}{}", base.path(), key.as_str());
    u.set_path(&p);
    u
}

#[async_trait]
impl Store for HttpStore {
    fn describe(&self) -> String {
        self.http.store.clone()
    }

    async fn put(&self, _key: &Key, _data: &[u8]) -> Result<(), StoreError> {
        Err(self.unsupported("put"))
    }

    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let url = self.url(key);
        let http = &self.http;
        let deadline = http.read_deadline(max_len);
        http.run("get", key, || {
            let url = url.clone();
            async move {
                let resp = http
                    .send_read("get", key, url, |u| {
                        // Ask caches on the way to revalidate: a stale copy is at best "not yet".
                        http.client.get(u).header(header::CACHE_CONTROL, "no-cache").timeout(deadline)
                    })
                    .await?;
                match resp.status() {
                    StatusCode::OK => {
                        let ct =
                            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let body = http.read_body(key, resp, max_len).await?;
                        http.check_not_html(key, ct.as_deref(), &body)?;
                        Ok(Some(body))
                    }
                    StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
                    _ => Err::<_, Failure>(http.unexpected("get", key, resp).await),
                }
            }
        })
        .await
    }

    async fn delete(&self, _key: &Key) -> Result<(), StoreError> {
        Err(self.unsupported("delete"))
    }

    async fn list(&self, _prefix: &Key) -> Result<Vec<String>, StoreError> {
        Err(self.unsupported("list"))
    }

    fn changes(&self, _prefix: &Key) -> Changes {
        Changes::never()
    }

    fn notifies(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_http::{FakeServer, Reply, head, response};
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    fn key(s: &str) -> Key {
        Key::new(s.split('/')).unwrap()
    }

    #[tokio::test]
    async fn a_dripping_read_hits_its_overall_deadline() {
        // 100 bytes, one every 100 ms: never silent for long, 10 s in all.
        let srv = FakeServer::start(|_, _| Reply::Drip {
            head: head("200 OK", 100),
            body: vec![b'x'; 100],
            every: Duration::from_millis(100),
        })
        .await;
        let opts = HttpOptions {
            read_timeout: Duration::from_secs(5),
            read_deadline_base: Duration::from_millis(500),
            min_download_rate: 1 << 20,
            retries: 0,
            ..HttpOptions::default()
        };
        let store = HttpStore::with_options(srv.url("/bob/"), opts).unwrap();
        let t = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(8), store.get(&key("m1"), 100)).await;
        let e = got.expect("the read ends at its deadline, not when the server is done").unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    /// A read that may be large (a listing, a chunk) but trickles in fails
    /// once it falls behind the slowest rate allowed, not at the deadline
    /// for the largest body: a PROPFIND at 1 byte a second took over 17
    /// minutes to fail at start-up.
    #[tokio::test]
    async fn a_trickling_read_fails_when_it_falls_behind_the_slowest_rate() {
        let srv = FakeServer::start(|_, _| Reply::Drip {
            head: head("200 OK", 1000),
            body: vec![b'x'; 1000],
            every: Duration::from_millis(50),
        })
        .await;
        let opts = HttpOptions {
            read_timeout: Duration::from_secs(5),
            read_deadline_base: Duration::from_millis(500),
            min_download_rate: 1 << 20,
            retries: 0,
            ..HttpOptions::default()
        };
        let store = HttpStore::with_options(srv.url("/bob/"), opts).unwrap();
        let t = Instant::now();
        // 64 MiB allowed: the request's own deadline is 64.5 s away.
        let got = tokio::time::timeout(Duration::from_secs(20), store.get(&key("m1"), 64 << 20)).await;
        let e = got.expect("the read fails once it falls behind, not after the whole body").unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("slower than 1024 KiB/s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn retrying_stops_after_retry_for_and_warns_while_waiting() {
        // Accepts connections, never answers; then recovers.
        let healthy = Arc::new(AtomicBool::new(false));
        let h = healthy.clone();
        let srv = FakeServer::start(move |_, _| {
            if h.load(Ordering::SeqCst) { Reply::Now(response("200 OK", b"hello")) } else { Reply::Silence }
        })
        .await;
        let opts = HttpOptions {
            read_timeout: Duration::from_millis(200),
            retries: 1000,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            retry_for: Duration::from_secs(1),
            warn_after: Duration::from_millis(300),
            ..HttpOptions::default()
        };
        let store = HttpStore::with_options(srv.url("/bob/"), opts).unwrap();
        let t = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(10), store.get(&key("m1"), 100)).await;
        let e = got.expect("gives up after retry_for, not after 1000 retries").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("timed out") && msg.contains("gave up after"), "{msg}");
        assert!(t.elapsed() >= Duration::from_millis(800) && t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(store.http.has_warned(), "a warning was logged while waiting");
        // Answering again clears it: the next outage is logged again.
        healthy.store(true, Ordering::SeqCst);
        assert_eq!(store.get(&key("m1"), 100).await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(!store.http.has_warned());
    }

    #[tokio::test]
    async fn an_unanswered_request_is_a_warning_before_it_fails() {
        let srv = FakeServer::start(|_, _| Reply::Silence).await;
        let opts = HttpOptions {
            read_timeout: Duration::from_secs(5),
            read_deadline_base: Duration::from_millis(700),
            retries: 0,
            warn_after: Duration::from_millis(200),
            ..HttpOptions::default()
        };
        let store = HttpStore::with_options(srv.url("/bob/"), opts).unwrap();
        let e = store.get(&key("m1"), 100).await.unwrap_err();
        assert!(e.to_string().contains("gave up after 1 attempt in"), "{e}");
        assert!(store.http.has_warned());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_without_a_length_is_the_same_error_each_time() {
        // No Content-Length, and another length each time: the error must
        // not change with it (a warning is logged once per reason).
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let srv = FakeServer::start(move |_, _| {
            let len = 2000 + 1000 * n.fetch_add(1, Ordering::SeqCst);
            let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            r.extend(std::iter::repeat_n(b'x', len));
            Reply::Now(r)
        })
        .await;
        let store =
            HttpStore::with_options(srv.url("/bob/"), HttpOptions { retries: 0, ..HttpOptions::default() }).unwrap();
        let a = store.get(&key("alice/head"), 1024).await.unwrap_err().to_string();
        let b = store.get(&key("alice/head"), 1024).await.unwrap_err().to_string();
        assert_eq!(a, b);
        assert!(a.ends_with(": alice/head is more than the 1024 bytes allowed"), "{a}");
    }

    #[test]
    fn a_listing_too_large_is_named() {
        let e = StoreError::TooLarge { store: "s".into(), key: String::new(), len: Some(9), max: 8 };
        assert_eq!(e.to_string(), "s: the listing is 9 bytes, more than the 8 allowed");
    }
}

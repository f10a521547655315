//! A WebDAV server as a read-write store (nginx dav + dav-ext, Apache
//! mod_dav, rclone serve webdav, Nextcloud, ...).
//!
//! `put` is one PUT to the final name: the servers above write the body to a
//! temporary file and rename it into place, so no reader sees part of an
//! object. Missing parent collections are created with MKCOL when a PUT is
//! answered 409 or 404. `list` is a `PROPFIND` with `Depth: 1`. Credentials
//! (HTTP basic) come from `DMP_STORE_USER`/`DMP_STORE_PASSWORD` or
//! `~/.netrc`, never from the command line.

use super::http::{check_base, key_url};
use super::retry::{Failure, Http, HttpOptions, shown_url};
use super::{Changes, Key, Store, StoreError, is_valid_component};
use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use quick_xml::events::Event;
use reqwest::{Method, StatusCode, Url, header};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest PROPFIND answer read (a listing of many thousand names).
const LIST_MAX: u64 = 64 << 20;

/// Deepest chain of missing collections created for one put.
const MKCOL_DEPTH: usize = 64;

/// MKCOL requests of one put at most: each collection is asked at most
/// twice (before and after its parent), and never more than this.
const MKCOL_MAX: usize = 2 * MKCOL_DEPTH + 1;

const PROPFIND_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<propfind xmlns="DAV:"><prop><resourcetype/></prop></propfind>
"#;

const DENIED_HINT: &str = "check DMP_STORE_USER and DMP_STORE_PASSWORD (or the host's entry in ~/.netrc)";

/// HTTP basic credentials for a WebDAV server.
#[derive(Clone, PartialEq, Eq)]
pub struct WebDavCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for WebDavCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebDavCredentials").field("user", &self.user).field("password", &"…").finish()
    }
}

impl WebDavCredentials {
    /// Credentials for `host`: `DMP_STORE_USER` and `DMP_STORE_PASSWORD`
    /// when set, else the matching `machine` (or `default`) entry of
    /// `$NETRC` or `~/.netrc`, else none.
    pub fn from_env(host: &str) -> Result<Option<WebDavCredentials>, StoreError> {
        let user = std::env::var("DMP_STORE_USER").ok().filter(|u| !u.is_empty());
        let password = std::env::var("DMP_STORE_PASSWORD").ok();
        match (user, password) {
            (Some(user), Some(password)) => return Ok(Some(WebDavCredentials { user, password })),
            (Some(_), None) => {
                return Err(StoreError::BadSpec("DMP_STORE_USER is set but DMP_STORE_PASSWORD is not".into()));
            }
            (None, Some(p)) if !p.is_empty() => {
                return Err(StoreError::BadSpec("DMP_STORE_PASSWORD is set but DMP_STORE_USER is not".into()));
            }
            _ => {}
        }
        let netrc = std::env::var_os("NETRC").map(PathBuf::from).or_else(|| dirs::home_dir().map(|h| h.join(".netrc")));
        Ok(netrc.and_then(|p| netrc_lookup(&p, host)))
    }
}

/// Looks `host` up in a netrc file; a missing or unreadable file is no entry.
pub(crate) fn netrc_lookup(path: &Path, host: &str) -> Option<WebDavCredentials> {
    let text = crate::localfile::read_to_string(path, crate::localfile::MAX_CONFIG).ok()?;
    parse_netrc(&text, host)
}

/// The `login`/`password` of the `machine host` entry, or of `default`.
pub(crate) fn parse_netrc(text: &str, host: &str) -> Option<WebDavCredentials> {
    #[derive(PartialEq)]
    enum Entry {
        None,
        Match,
        Other,
        Default,
    }
    let mut found: Option<WebDavCredentials> = None;
    let mut default: Option<WebDavCredentials> = None;
    let mut entry = Entry::None;
    let (mut login, mut password) = (None::<String>, None::<String>);
    let mut finish = |entry: &Entry, login: &mut Option<String>, password: &mut Option<String>| {
        let c = login.take().map(|user| WebDavCredentials { user, password: password.take().unwrap_or_default() });
        password.take();
        match entry {
            Entry::Match if found.is_none() => found = c,
            Entry::Default if default.is_none() => default = c,
            _ => {}
        }
    };
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut toks = line.split_whitespace();
        while let Some(t) = toks.next() {
            match t {
                "machine" => {
                    finish(&entry, &mut login, &mut password);
                    entry = if toks.next().is_some_and(|m| m.eq_ignore_ascii_case(host)) {
                        Entry::Match
                    } else {
                        Entry::Other
                    };
                }
                "default" => {
                    finish(&entry, &mut login, &mut password);
                    entry = Entry::Default;
                }
                "login" => login = toks.next().map(str::to_owned),
                "password" => password = toks.next().map(str::to_owned),
                "account" => {
                    toks.next();
                }
                "macdef" => {
                    // A macro runs to the next empty line.
                    for l in lines.by_ref() {
                        if l.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                t if t.starts_with('#') => break,
                _ => {}
            }
        }
    }
    finish(&entry, &mut login, &mut password);
    found.or(default)
}

/// A store on a WebDAV server, below the collection at `base`.
pub struct WebDavStore {
    base: Url,
    http: Http,
    auth: Option<WebDavCredentials>,
}

impl WebDavStore {
    /// A store below `base` (`http://` or `https://`), with credentials
    /// from the environment or `~/.netrc`.
    pub fn new(base: Url) -> Result<WebDavStore, StoreError> {
        let host = base.host_str().unwrap_or_default().to_owned();
        let auth = WebDavCredentials::from_env(&host)?;
        WebDavStore::with_options(base, auth, HttpOptions::default())
    }

    pub fn with_options(
        base: Url,
        auth: Option<WebDavCredentials>,
        opts: HttpOptions,
    ) -> Result<WebDavStore, StoreError> {
        let base = check_base(base)?;
        let http = Http::new(format!("webdav {}", shown_url(&base)), opts, DENIED_HINT)?;
        if auth.is_some() && base.scheme() == "http" && !is_loopback(&base) {
            tracing::warn!(
                "{}: sending credentials over plain http; use webdavs:// where the server has TLS",
                http.store
            );
        }
        Ok(WebDavStore { base, http, auth })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.http.client.request(method, url);
        match &self.auth {
            Some(c) => req.basic_auth(&c.user, Some(&c.password)),
            None => req,
        }
    }

    /// Creates the collection at `dir_url` (ending with `/`) and, when the
    /// server says its parent is missing, the parents first, up to `base`'s
    /// host root.
    ///
    /// A collection still answered 409 or 404 once its parent was created
    /// or found to exist cannot be made (a file stands in the way, as a
    /// plain file `alice` does for `alice/bob/`): that is an error at once,
    /// for the caller to retry with its own back-off, never a loop.
    async fn mkcol_all(&self, key: &Key, dir_url: &Url) -> Result<(), Failure> {
        // Collections to create, deepest first; stop climbing at the first that exists.
        let mut pending: Vec<Url> = vec![dir_url.clone()];
        // True when the parent of the last of `pending` was just created or found.
        let mut parent_there = false;
        let mut requests = 0;
        while let Some(url) = pending.last().cloned() {
            requests += 1;
            if requests > MKCOL_MAX {
                return Err(self.http.fatal_io(
                    "mkcol",
                    key,
                    format!("cannot create {}: more than {MKCOL_MAX} MKCOL requests", url.path()),
                ));
            }
            let resp = self.http.send(self.request(Method::from_bytes(b"MKCOL").expect("method"), url.clone())).await?;
            match resp.status() {
                // Created, or already there (405: MKCOL on an existing resource).
                StatusCode::CREATED | StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::METHOD_NOT_ALLOWED => {
                    pending.pop();
                    parent_there = true;
                }
                s @ (StatusCode::CONFLICT | StatusCode::NOT_FOUND) if parent_there => {
                    return Err(self.http.fatal_io(
                        "mkcol",
                        key,
                        format!(
                            "cannot create {}: the server answers {} though its parent exists (a file in the way?)",
                            url.path(),
                            s.as_u16()
                        ),
                    ));
                }
                // The parent is missing too.
                StatusCode::CONFLICT | StatusCode::NOT_FOUND => match parent_collection(&url) {
                    Some(p) if pending.len() < MKCOL_DEPTH => pending.push(p),
                    _ => return Err(self.http.fatal_io("mkcol", key, format!("cannot create {}", url.path()))),
                },
                _ => return Err(self.http.unexpected("mkcol", key, resp).await),
            }
        }
        Ok(())
    }
}

/// The collection above `url` (ending with `/`), or none at the root.
fn parent_collection(url: &Url) -> Option<Url> {
    let path = url.path().trim_end_matches('/');
    let cut = path.rfind('/')?;
    let mut u = url.clone();
    u.set_path(&path[..=cut]);
    Some(u)
}

fn is_loopback(u: &Url) -> bool {
    match u.host_str() {
        Some("localhost") => true,
        Some(h) => h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback()),
        None => false,
    }
}

/// The names directly below `dir_path` (a decoded path ending with `/`) in
/// a PROPFIND multistatus answer. Hrefs may be paths or absolute URLs and
/// are percent-encoded; names that are not valid key components are left
/// out.
pub(crate) fn parse_multistatus(xml: &[u8], dir_path: &str) -> Result<Vec<String>, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut in_href = false;
    let mut hrefs = Vec::new();
    let mut text = String::new();
    // Elements open: a document that ends with some still open was cut
    // short, and names missing from a listing read as files gone.
    let mut depth = 0usize;
    loop {
        let event = reader.read_event_into(&mut buf);
        match &event {
            Ok(Event::Start(e)) => {
                if depth == 0 && !e.local_name().as_ref().eq_ignore_ascii_case(b"multistatus") {
                    return Err(format!(
                        "not a PROPFIND answer: <{}> where <multistatus> was expected",
                        String::from_utf8_lossy(e.name().as_ref()).chars().take(40).collect::<String>()
                    ));
                }
                depth += 1;
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) if depth > 0 => {
                return Err(format!("PROPFIND answer cut short: {depth} element(s) still open at its end"));
            }
            _ => {}
        }
        match event {
            Ok(Event::Start(e)) if e.local_name().as_ref().eq_ignore_ascii_case(b"href") => {
                in_href = true;
                text.clear();
            }
            Ok(Event::Text(t)) if in_href => {
                let t = t.decode().map_err(|e| format!("bad text in a PROPFIND answer: {e}"))?;
                let t = quick_xml::escape::unescape(&t).map_err(|e| format!("bad text in a PROPFIND answer: {e}"))?;
                text.push_str(&t);
            }
            Ok(Event::GeneralRef(r)) if in_href => {
                // An entity such as &amp; inside an href.
                let name = r.decode().map_err(|e| format!("bad entity in a PROPFIND answer: {e}"))?;
                match quick_xml::escape::unescape(&format!("&{name};")) {
                    Ok(t) => text.push_str(&t),
                    Err(e) => return Err(format!("bad entity in a PROPFIND answer: {e}")),
                }
            }
            Ok(Event::End(e)) if e.local_name().as_ref().eq_ignore_ascii_case(b"href") => {
                in_href = false;
                hrefs.push(std::mem::take(&mut text));
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("bad PROPFIND answer at byte {}: {e}", reader.error_position())),
        }
        buf.clear();
    }
    let dir = dir_path.trim_end_matches('/');
    let mut names = Vec::new();
    // A server may list a member twice (as `x` and `x/`, or under two
    // bases); a listing has hundreds of thousands of names at most.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for href in hrefs {
        let href = href.trim();
        // An absolute URL: keep its path.
        let path = match href.find("://") {
            Some(i) => match href[i + 3..].find('/') {
                Some(j) => &href[i + 3 + j..],
                None => "/",
            },
            None => href,
        };
        let Ok(path) = percent_decode_str(path).decode_utf8() else { continue };
        let path = path.trim_end_matches('/');
        if path == dir {
            continue; // the collection itself
        }
        let name = match path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => rest,
            // Some servers answer with another base (a rewriting proxy):
            // the last segment still names the member.
            None => match path.rsplit_once('/') {
                Some((_, last)) if Some(last) != dir.rsplit('/').next() => last,
                _ => continue,
            },
        };
        if !name.contains('/') && is_valid_component(name) && seen.insert(name.to_owned()) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[async_trait]
impl Store for WebDavStore {
    fn describe(&self) -> String {
        self.http.store.clone()
    }

    async fn put(&self, key: &Key, data: &[u8]) -> Result<(), StoreError> {
        self.put_bytes(key, Bytes::copy_from_slice(data)).await
    }

    async fn put_bytes(&self, key: &Key, body: Bytes) -> Result<(), StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let url = key_url(&self.base, key);
        let timeout = self.http.write_timeout(body.len());
        let http = &self.http;
        http.run("put", key, || {
            let (url, body) = (url.clone(), body.clone());
            async move {
                let put = || {
                    self.request(Method::PUT, url.clone())
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        // Explicit even when 0: hyper leaves it out for an empty
                        // body, and nginx then fails the PUT.
                        .header(header::CONTENT_LENGTH, body.len())
                        .timeout(timeout)
                        .body(body.clone())
                };
                let mut resp = http.send_raw(put()).await?;
                // A missing parent collection: 409 (RFC 4918, Apache), 404
                // (some servers), or 500 (nginx without create_full_put_path,
                // whose rename fails). Create the parents, then put again.
                if matches!(
                    resp.status(),
                    StatusCode::CONFLICT | StatusCode::NOT_FOUND | StatusCode::INTERNAL_SERVER_ERROR
                ) {
                    let parent = parent_collection(&url).expect("a key has a parent");
                    self.mkcol_all(key, &parent).await?;
                    resp = http.send_raw(put()).await?;
                }
                let resp = http.check_retryable(resp).await?;
                match resp.status() {
                    StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(()),
                    StatusCode::PAYLOAD_TOO_LARGE => Err(Failure::Fatal(StoreError::Full {
                        store: http.store.clone(),
                        msg: format!("put {key}: HTTP 413: the server refuses objects of {} bytes", body.len()),
                    })),
                    _ => Err(http.unexpected("put", key, resp).await),
                }
            }
        })
        .await
    }

    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let url = key_url(&self.base, key);
        let http = &self.http;
        let deadline = http.read_deadline(max_len);
        http.run("get", key, || {
            let url = url.clone();
            async move {
                let resp = http.send_read("get", key, url, |u| self.request(Method::GET, u).timeout(deadline)).await?;
                match resp.status() {
                    StatusCode::OK => {
                        let ct =
                            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let body = http.read_body(key, resp, max_len).await?;
                        http.check_not_html(key, ct.as_deref(), &body)?;
                        Ok(Some(body))
                    }
                    StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
                    _ => Err(http.unexpected("get", key, resp).await),
                }
            }
        })
        .await
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let url = key_url(&self.base, key);
        let http = &self.http;
        http.run("delete", key, || {
            let url = url.clone();
            async move {
                let resp = http.send(self.request(Method::DELETE, url)).await?;
                match resp.status() {
                    StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::ACCEPTED | StatusCode::NOT_FOUND => Ok(()),
                    // Some servers answer 409 for a path below a missing collection.
                    StatusCode::CONFLICT => Ok(()),
                    _ => Err(http.unexpected("delete", key, resp).await),
                }
            }
        })
        .await
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        let url = if prefix.is_root() {
            self.base.clone()
        } else {
            let mut u = key_url(&self.base, prefix);
            let p = format!("{}/", u.path());
            u.set_path(&p);
            u
        };
        let dir_path = percent_decode_str(url.path()).decode_utf8_lossy().into_owned();
        let http = &self.http;
        let deadline = http.read_deadline(LIST_MAX);
        http.run("list", prefix, || {
            let url = url.clone();
            let dir_path = dir_path.clone();
            async move {
                let req = self
                    .request(Method::from_bytes(b"PROPFIND").expect("method"), url)
                    .header("Depth", "1")
                    .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
                    .timeout(deadline)
                    .body(PROPFIND_BODY);
                let resp = http.send(req).await?;
                match resp.status() {
                    StatusCode::MULTI_STATUS => {
                        let body = http.read_body(prefix, resp, LIST_MAX).await?;
                        parse_multistatus(&body, &dir_path).map_err(|msg| http.fatal_io("list", prefix, msg))
                    }
                    StatusCode::NOT_FOUND => Ok(Vec::new()),
                    _ => Err(http.unexpected("list", prefix, resp).await),
                }
            }
        })
        .await
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
    use super::super::fake_http::{FakeServer, Reply, response};
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn fast() -> HttpOptions {
        HttpOptions {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            retries: 2,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..HttpOptions::default()
        }
    }

    fn key(s: &str) -> Key {
        Key::new(s.split('/')).unwrap()
    }

    /// A put below `/dmp/alice/` where `/dmp/alice` is a plain file: MKCOL
    /// of `alice/bob/` answers 409 (no parent) and MKCOL of `alice/`
    /// answers `parent` (405 as RFC 4918 says for an existing
    /// non-collection, or 201 from a sloppy server).
    async fn put_below_a_file(parent: &'static str) -> (StoreError, Vec<(String, String)>) {
        let srv = FakeServer::start(move |method, path| {
            let status = match (method, path) {
                ("PUT", _) => "409 Conflict",
                ("MKCOL", "/dmp/alice/bob/") => "409 Conflict",
                ("MKCOL", "/dmp/alice/") => parent,
                _ => "500 Internal Server Error",
            };
            Reply::Now(response(status, b""))
        })
        .await;
        let store = WebDavStore::with_options(srv.url("/dmp/"), None, fast()).unwrap();
        let k = key("alice/bob/x");
        let put = store.put(&k, b"x");
        let e = tokio::time::timeout(Duration::from_secs(20), put).await.expect("no MKCOL loop").unwrap_err();
        (e, srv.seen())
    }

    #[tokio::test]
    async fn mkcol_below_a_file_is_an_error_not_a_loop() {
        for parent in ["405 Method Not Allowed", "201 Created"] {
            let (e, seen) = put_below_a_file(parent).await;
            let msg = e.to_string();
            assert!(
                msg.contains(
                    "cannot create /dmp/alice/bob/: the server answers 409 though its parent exists (a file in the way?)"
                ),
                "{parent}: {msg}"
            );
            assert!(e.is_transient(), "the caller retries with its own back-off: {e:?}");
            let mkcols = seen.iter().filter(|(m, _)| m == "MKCOL").count();
            assert_eq!(mkcols, 3, "{parent}: bob, alice, bob again: {seen:?}");
        }
    }

    #[tokio::test]
    async fn mkcol_creates_missing_parents_then_puts() {
        let made = Arc::new(Mutex::new(vec!["/dmp/".to_owned()]));
        let m = made.clone();
        let srv = FakeServer::start(move |method, path| {
            let mut made = m.lock().unwrap();
            let parent = |p: &str| format!("{}/", p.trim_end_matches('/').rsplit_once('/').unwrap().0);
            let status = match method {
                "PUT" if made.contains(&parent(path)) => "201 Created",
                "PUT" => "409 Conflict",
                "MKCOL" if made.iter().any(|d| d == path) => "405 Method Not Allowed",
                "MKCOL" if made.contains(&parent(path)) => {
                    made.push(path.to_owned());
                    "201 Created"
                }
                "MKCOL" => "409 Conflict",
                _ => "500 Internal Server Error",
            };
            Reply::Now(response(status, b""))
        })
        .await;
        let store = WebDavStore::with_options(srv.url("/dmp/"), None, fast()).unwrap();
        store.put(&key("a/b/c/x"), b"x").await.unwrap();
        assert_eq!(made.lock().unwrap()[1..], ["/dmp/a/", "/dmp/a/b/", "/dmp/a/b/c/"]);
        let seen: Vec<String> = srv.seen().into_iter().map(|(m, p)| format!("{m} {p}")).collect();
        assert_eq!(
            seen,
            [
                "PUT /dmp/a/b/c/x",
                "MKCOL /dmp/a/b/c/",
                "MKCOL /dmp/a/b/",
                "MKCOL /dmp/a/",
                "MKCOL /dmp/a/b/",
                "MKCOL /dmp/a/b/c/",
                "PUT /dmp/a/b/c/x"
            ]
        );
    }

    #[test]
    fn parses_nginx_and_apache_multistatus() {
        let nginx = br#"<?xml version="1.0" encoding="utf-8" ?>
<D:multistatus xmlns:D="DAV:">
<D:response><D:href>/dav/base/l/</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
<D:response><D:href>/dav/base/l/x1</D:href><D:propstat><D:prop><D:resourcetype/></D:prop></D:propstat></D:response>
<D:response><D:href>/dav/base/l/sub/</D:href></D:response>
<D:response><D:href>/dav/base/l/Bad%20Name</D:href></D:response>
<D:response><D:href>/dav/base/l/.~tmp</D:href></D:response>
</D:multistatus>"#;
        let mut n = parse_multistatus(nginx, "/dav/base/l/").unwrap();
        n.sort();
        assert_eq!(n, vec!["sub", "x1"]);

        let apache = br#"<?xml version="1.0" encoding="utf-8"?>
<multistatus xmlns="DAV:"><response><href>http://h:8080/a%20b/l/</href></response>
<response><href>http://h:8080/a%20b/l/x%2d2</href></response>
<response><href>http://h:8080/a%20b/l/y&amp;z</href></response></multistatus>"#;
        assert_eq!(parse_multistatus(apache, "/a b/l/").unwrap(), vec!["x-2"]);

        assert!(parse_multistatus(b"<a><b></a>", "/").is_err());
        assert!(parse_multistatus(b"", "/").unwrap().is_empty());
    }

    #[test]
    fn a_cut_or_foreign_answer_is_an_error_not_a_shorter_listing() {
        let whole = br#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/d/x1</D:href></D:response><D:response><D:href>/d/x2</D:href></D:response></D:multistatus>"#;
        assert_eq!(parse_multistatus(whole, "/d/").unwrap(), vec!["x1", "x2"]);
        // Cut after each element: x2 would be missing, read as deleted.
        for cut in [
            whole.len() - "</D:multistatus>".len(),
            whole.len() - "<D:response><D:href>/d/x2</D:href></D:response></D:multistatus>".len(),
        ] {
            let e = parse_multistatus(&whole[..cut], "/d/").unwrap_err();
            assert!(e.contains("cut short"), "{cut}: {e}");
        }
        let e = parse_multistatus(b"<html><body><a href=\"/d/x\">x</a></body></html>", "/d/").unwrap_err();
        assert!(e.contains("not a PROPFIND answer"), "{e}");
    }

    #[test]
    fn dedupes_a_large_listing_in_order() {
        // 200k members, each listed twice (as a file and as a collection):
        // comparing every name with every earlier one took minutes.
        let n = 200_000;
        let mut xml = String::from(r#"<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">"#);
        xml.push_str("<D:response><D:href>/d/</D:href></D:response>");
        for pass in ["", "/"] {
            for i in 0..n {
                xml.push_str(&format!("<D:response><D:href>/d/m{i:06}{pass}</D:href></D:response>"));
            }
        }
        xml.push_str("</D:multistatus>");
        let names = parse_multistatus(xml.as_bytes(), "/d/").unwrap();
        assert_eq!(names.len(), n);
        assert!(names.iter().enumerate().all(|(i, m)| *m == format!("m{i:06}")), "listing order kept");
    }

    #[test]
    fn parses_netrc() {
        let text = "machine other login o password op
                    # a comment
                    macdef init
cd /x

                    machine dav.example login u password p
                    default login d password dp
";
        assert_eq!(
            parse_netrc(text, "dav.example"),
            Some(WebDavCredentials { user: "u".into(), password: "p".into() })
        );
        assert_eq!(parse_netrc(text, "nowhere"), Some(WebDavCredentials { user: "d".into(), password: "dp".into() }));
        assert_eq!(parse_netrc("machine a login x", "b"), None);
        assert_eq!(parse_netrc("machine a login x password y", "A").map(|c| c.user), Some("x".into()));
    }

    #[test]
    fn parent_collections() {
        let u = Url::parse("http://h/a/b/c").unwrap();
        assert_eq!(parent_collection(&u).unwrap().path(), "/a/b/");
        let u = Url::parse("http://h/a/b/").unwrap();
        assert_eq!(parent_collection(&u).unwrap().path(), "/a/");
        let u = Url::parse("http://h/a/").unwrap();
        assert_eq!(parent_collection(&u).unwrap().path(), "/");
        let u = Url::parse("http://h/").unwrap();
        assert_eq!(parent_collection(&u), None);
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = WebDavCredentials { user: "u".into(), password: "secret".into() };
        assert!(!format!("{c:?}").contains("secret"));
    }
}

//! An S3-compatible object store as a read-write store (AWS S3, SeaweedFS,
//! MinIO, Ceph, Garage, ...).
//!
//! Requests are signed with SigV4 by `rusty-s3` (presigned URLs, no I/O of
//! its own) and sent with the shared HTTP client. A PUT is atomic by the
//! nature of object stores; `list` is `ListObjectsV2` with delimiter `/`.
//! [`S3Store::put_new`] writes create-only (`If-None-Match: *`) where the
//! server supports it.

use super::http::check_base;
use super::retry::{Failure, Http, HttpOptions, shown_url, xml_text};
use super::{Changes, Key, Store, StoreError, is_valid_component};
use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use reqwest::{Response, StatusCode, Url, header};
use rusty_s3::actions::{DeleteObject, GetObject, HeadObject, ListObjectsV2, PutObject, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// How long a presigned URL stays valid (it is used at once).
const SIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// Largest ListObjectsV2 page read.
const LIST_PAGE_MAX: u64 = 16 << 20;
/// Pages read by one `list` before giving up (1000 names a page).
const LIST_PAGES_MAX: usize = 1000;

const DENIED_HINT: &str =
    "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_REGION and the clock";

/// Where and how to reach a bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host[:port][/path]` of the S3 API.
    pub endpoint: Url,
    pub region: String,
    pub bucket: String,
    /// Prefix of every key, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), as custom endpoints need;
    /// virtual-hosted style (`bucket.endpoint/key`) otherwise.
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "…"))
            .field("session_token", &self.session_token.as_ref().map(|_| "…"))
            .finish()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl S3Config {
    /// The configuration for `bucket`/`prefix` from the standard AWS
    /// variables: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (default: AWS,
    /// virtual-hosted), `AWS_REGION` or `AWS_DEFAULT_REGION` (default
    /// `us-east-1`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` (without keys, requests go unsigned).
    pub fn from_env(bucket: &str, prefix: &str) -> Result<S3Config, StoreError> {
        let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
        let (endpoint, path_style) = match env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
            Some(e) => (parse_endpoint(&e)?, true),
            None => {
                let url = Url::parse(&format!("https://s3.{region}.amazonaws.com/"))
                    .map_err(|err| StoreError::BadSpec(format!("AWS_REGION {region:?}: {err}")))?;
                // Dotted bucket names break TLS under virtual-hosted style.
                (url, bucket.contains('.'))
            }
        };
        let access_key = env("AWS_ACCESS_KEY_ID");
        let secret_key = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|s| !s.is_empty());
        match (&access_key, &secret_key) {
            (Some(_), None) => {
                return Err(StoreError::BadSpec("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into()));
            }
            (None, Some(_)) => {
                return Err(StoreError::BadSpec("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into()));
            }
            _ => {}
        }
        Ok(S3Config {
            endpoint,
            region,
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            path_style,
            access_key,
            secret_key,
            session_token: env("AWS_SESSION_TOKEN"),
        })
    }
}

/// `AWS_ENDPOINT_URL` as a URL. A value that does not parse is shown
/// without whatever comes between `://` and an `@` (it may be a password).
fn parse_endpoint(e: &str) -> Result<Url, StoreError> {
    Url::parse(e)
        .map_err(|err| StoreError::BadSpec(format!("AWS_ENDPOINT_URL {}: {err}", super::spec::shown_location(e))))
}

/// What [`S3Store::put_new`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutNew {
    /// The object did not exist and now holds the data.
    Created,
    /// An object was already there; it was left alone.
    Exists,
}

const INM_UNKNOWN: u8 = 0;
const INM_WORKS: u8 = 1;
const INM_REJECTED: u8 = 2;

/// A store in an S3 bucket, below a prefix.
pub struct S3Store {
    bucket: Bucket,
    creds: Option<Credentials>,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    http: Http,
    /// Whether the server honours `If-None-Match: *` on PUT.
    if_none_match: AtomicU8,
}

impl S3Store {
    /// A store from the standard AWS environment variables.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<S3Store, StoreError> {
        S3Store::new(S3Config::from_env(bucket, prefix)?, HttpOptions::default())
    }

    pub fn new(cfg: S3Config, opts: HttpOptions) -> Result<S3Store, StoreError> {
        check_bucket_name(&cfg.bucket)?;
        check_prefix(&cfg.prefix)?;
        if !cfg.endpoint.username().is_empty() || cfg.endpoint.password().is_some() {
            return Err(StoreError::BadSpec(format!(
                "AWS_ENDPOINT_URL {}: credentials in the URL are not accepted (use AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY)",
                super::spec::shown_location(&shown_url(&cfg.endpoint))
            )));
        }
        let endpoint = check_base(cfg.endpoint.clone())?;
        let style = if cfg.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint.clone(), style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| StoreError::BadSpec(format!("s3://{}: {e}", cfg.bucket)))?;
        let creds = match (&cfg.access_key, &cfg.secret_key) {
            (Some(k), Some(s)) => Some(match &cfg.session_token {
                Some(t) => Credentials::new_with_token(k, s, t),
                None => Credentials::new(k, s),
            }),
            _ => None,
        };
        let prefix = if cfg.prefix.is_empty() { String::new() } else { format!("{}/", cfg.prefix) };
        let name = format!("s3://{}/{} at {}", cfg.bucket, cfg.prefix, shown_url(&endpoint));
        let http = Http::new(name, opts, DENIED_HINT)?;
        Ok(S3Store { bucket, creds, prefix, http, if_none_match: AtomicU8::new(INM_UNKNOWN) })
    }

    fn object(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// Writes `data` at `key` only if no object is there yet
    /// (`If-None-Match: *`). Where the server does not support the header,
    /// falls back to a HEAD then a PUT (which a concurrent writer can race).
    pub async fn put_new(&self, key: &Key, data: &[u8]) -> Result<PutNew, StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let data = Bytes::copy_from_slice(data);
        if self.if_none_match.load(Ordering::Relaxed) != INM_REJECTED {
            match self.put_inner(key, data.clone(), true).await? {
                Some(outcome) => {
                    self.if_none_match.store(INM_WORKS, Ordering::Relaxed);
                    return Ok(outcome);
                }
                None => {
                    tracing::debug!(
                        "{}: the server rejects If-None-Match on PUT; checking before writing",
                        self.describe()
                    );
                    self.if_none_match.store(INM_REJECTED, Ordering::Relaxed);
                }
            }
        }
        if self.exists(key).await? {
            return Ok(PutNew::Exists);
        }
        self.put_inner(key, data, false).await?;
        Ok(PutNew::Created)
    }

    /// Whether the server honours `If-None-Match: *` on PUT, once a
    /// [`S3Store::put_new`] has found out.
    pub fn create_only_supported(&self) -> Option<bool> {
        match self.if_none_match.load(Ordering::Relaxed) {
            INM_WORKS => Some(true),
            INM_REJECTED => Some(false),
            _ => None,
        }
    }

    /// True when an object is at `key` (HEAD).
    pub async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        let object = self.object(key);
        let http = &self.http;
        http.run("head", key, || {
            let url = HeadObject::new(&self.bucket, self.creds.as_ref(), &object).sign(SIGN_FOR);
            async move {
                let resp = http.send(http.client.head(url)).await?;
                match resp.status() {
                    StatusCode::OK => Ok(true),
                    StatusCode::NOT_FOUND => Ok(false),
                    _ => Err(self.failure("head", key, resp).await),
                }
            }
        })
        .await
    }

    /// One PUT; with `create_only`, `Ok(None)` means the server rejected the
    /// conditional header.
    async fn put_inner(&self, key: &Key, body: Bytes, create_only: bool) -> Result<Option<PutNew>, StoreError> {
        let object = self.object(key);
        let timeout = self.http.write_timeout(body.len());
        let http = &self.http;
        http.run("put", key, || {
            let mut action = PutObject::new(&self.bucket, self.creds.as_ref(), &object);
            if create_only {
                action.headers_mut().insert("if-none-match", "*");
            }
            let url = action.sign(SIGN_FOR);
            let body = body.clone();
            async move {
                let mut req = http
                    .client
                    .put(url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, body.len())
                    .timeout(timeout)
                    .body(body);
                if create_only {
                    req = req.header(header::IF_NONE_MATCH, "*");
                }
                let resp = http.send(req).await?;
                let status = resp.status();
                match status {
                    StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(Some(PutNew::Created)),
                    // 409: a concurrent conditional write of the same key (AWS).
                    StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT if create_only => Ok(Some(PutNew::Exists)),
                    StatusCode::NOT_IMPLEMENTED if create_only => Ok(None),
                    StatusCode::BAD_REQUEST if create_only => {
                        let (code, failure) = self.failure_with_code("put", key, resp).await;
                        if matches!(code.as_deref(), Some("NotImplemented" | "InvalidArgument" | "InvalidRequest")) {
                            Ok(None)
                        } else {
                            Err(failure)
                        }
                    }
                    _ => Err(self.failure("put", key, resp).await),
                }
            }
        })
        .await
    }

    async fn failure(&self, op: &'static str, key: &Key, resp: Response) -> Failure {
        self.failure_with_code(op, key, resp).await.1
    }

    /// The failure for an unexpected answer, and the S3 error code if any.
    async fn failure_with_code(&self, op: &'static str, key: &Key, resp: Response) -> (Option<String>, Failure) {
        let status = resp.status();
        if status.is_redirection() || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // S3's 301 PermanentRedirect (wrong region) carries no Location.
            if status.is_redirection() && resp.headers().get(header::LOCATION).is_none() {
                let detail = super::retry::error_detail(resp).await;
                return (
                    None,
                    self.http.fatal_io(
                        op,
                        key,
                        format!("HTTP {}{detail}; check AWS_REGION and AWS_ENDPOINT_URL", status.as_u16()),
                    ),
                );
            }
            return (None, self.http.unexpected(op, key, resp).await);
        }
        let body = self.http.read_body(key, resp, 64 * 1024).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let code = xml_text(&text, "Code");
        let detail = super::retry::detail_of(Some("application/xml"), &body);
        let failure = match code.as_deref() {
            Some("NoSuchBucket") => Failure::Fatal(StoreError::Io {
                store: self.http.store.clone(),
                op,
                key: key.to_string(),
                msg: format!("the bucket {:?} does not exist", self.bucket.name()),
            }),
            Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                Failure::Retry { msg: format!("HTTP {}{detail}", status.as_u16()), after: None, unreachable: false }
            }
            _ => self.http.fatal_io(op, key, format!("unexpected HTTP {}{detail}", status.as_u16())),
        };
        (code, failure)
    }
}

/// Bucket names as S3 accepts them: 3 to 63 of `a-z 0-9 . -`.
fn check_bucket_name(b: &str) -> Result<(), StoreError> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && !b.starts_with(['.', '-'])
        && !b.ends_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadSpec(format!(
            "s3://{b}: invalid bucket name (3 to 63 lower-case letters, digits, '.' and '-')"
        )))
    }
}

/// Prefixes of plain ASCII segments (`A-Z a-z 0-9 . _ -`), so that names
/// need no escaping anywhere.
fn check_prefix(p: &str) -> Result<(), StoreError> {
    let ok = p.is_empty()
        || p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadSpec(format!(
            "s3 prefix {p:?}: use '/'-separated segments of letters, digits, '.', '_' and '-'"
        )))
    }
}

/// The names directly below `dir` (ending with `/`, or empty) in one
/// ListObjectsV2 page (keys and prefixes URL-encoded), added to `out`
/// unless `seen` (the names of the pages before) has them. A page may hold
/// hundreds of thousands of names: comparing each with every earlier one
/// took minutes of CPU, during which the tool heard no signal.
fn names_in_page(
    page: &rusty_s3::actions::ListObjectsV2Response,
    dir: &str,
    out: &mut Vec<String>,
    seen: &mut HashSet<String>,
) {
    let keys = page.contents.iter().map(|c| c.key.as_str());
    let prefixes = page.common_prefixes.iter().map(|p| p.prefix.as_str());
    for raw in keys.chain(prefixes) {
        let Ok(full) = percent_decode_str(raw).decode_utf8() else { continue };
        let Some(rest) = full.strip_prefix(dir) else { continue };
        let name = rest.strip_suffix('/').unwrap_or(rest);
        if !name.contains('/') && is_valid_component(name) && seen.insert(name.to_owned()) {
            out.push(name.to_owned());
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.http.store.clone()
    }

    async fn put(&self, key: &Key, data: &[u8]) -> Result<(), StoreError> {
        self.put_bytes(key, Bytes::copy_from_slice(data)).await
    }

    async fn put_bytes(&self, key: &Key, data: Bytes) -> Result<(), StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        self.put_inner(key, data, false).await.map(|_| ())
    }

    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let object = self.object(key);
        let http = &self.http;
        let deadline = http.read_deadline(max_len);
        http.run("get", key, || {
            let url = GetObject::new(&self.bucket, self.creds.as_ref(), &object).sign(SIGN_FOR);
            async move {
                // A presigned URL cannot follow a redirect: send() does not.
                let resp = http.send(http.client.get(url).timeout(deadline)).await?;
                match resp.status() {
                    StatusCode::OK => {
                        let ct =
                            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let body = http.read_body(key, resp, max_len).await?;
                        http.check_not_html(key, ct.as_deref(), &body)?;
                        Ok(Some(body))
                    }
                    StatusCode::NOT_FOUND => {
                        let (code, failure) = self.failure_with_code("get", key, resp).await;
                        match code.as_deref() {
                            Some("NoSuchBucket") => Err(failure),
                            _ => Ok(None),
                        }
                    }
                    _ => Err(self.failure("get", key, resp).await),
                }
            }
        })
        .await
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        if key.is_root() {
            return Err(StoreError::BadKey("empty key".into()));
        }
        let object = self.object(key);
        let http = &self.http;
        http.run("delete", key, || {
            let url = DeleteObject::new(&self.bucket, self.creds.as_ref(), &object).sign(SIGN_FOR);
            async move {
                let resp = http.send(http.client.delete(url)).await?;
                match resp.status() {
                    StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::ACCEPTED => Ok(()),
                    StatusCode::NOT_FOUND => {
                        let (code, failure) = self.failure_with_code("delete", key, resp).await;
                        match code.as_deref() {
                            Some("NoSuchBucket") => Err(failure),
                            _ => Ok(()),
                        }
                    }
                    _ => Err(self.failure("delete", key, resp).await),
                }
            }
        })
        .await
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        let dir = if prefix.is_root() { self.prefix.clone() } else { format!("{}{}/", self.prefix, prefix.as_str()) };
        let http = &self.http;
        let deadline = http.read_deadline(LIST_PAGE_MAX);
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        for _ in 0..LIST_PAGES_MAX {
            let page = http
                .run("list", prefix, || {
                    let mut action = ListObjectsV2::new(&self.bucket, self.creds.as_ref());
                    action.with_prefix(dir.as_str());
                    action.with_delimiter("/");
                    if let Some(t) = &token {
                        action.with_continuation_token(t.as_str());
                    }
                    let url = action.sign(SIGN_FOR);
                    async move {
                        let resp = http.send(http.client.get(url).timeout(deadline)).await?;
                        match resp.status() {
                            StatusCode::OK => {
                                let body = http.read_body(prefix, resp, LIST_PAGE_MAX).await?;
                                ListObjectsV2::parse_response(&body).map_err(|e| {
                                    http.fatal_io("list", prefix, format!("bad ListObjectsV2 answer: {e}"))
                                })
                            }
                            _ => Err(self.failure("list", prefix, resp).await),
                        }
                    }
                })
                .await?;
            names_in_page(&page, &dir, &mut names, &mut seen);
            match page.next_continuation_token {
                Some(t) if !t.is_empty() && Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(names),
            }
        }
        Err(StoreError::Io {
            store: self.describe(),
            op: "list",
            key: prefix.to_string(),
            msg: format!("more than {LIST_PAGES_MAX} pages"),
        })
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
    use super::*;

    fn cfg() -> S3Config {
        S3Config {
            endpoint: Url::parse("http://127.0.0.1:9000").unwrap(),
            region: "us-east-1".into(),
            bucket: "dmp-test".into(),
            prefix: "team/a".into(),
            path_style: true,
            access_key: Some("AKID".into()),
            secret_key: Some("s3cr3t-value".into()),
            session_token: None,
        }
    }

    #[test]
    fn builds_path_style_signed_urls() {
        let s = S3Store::new(cfg(), HttpOptions::default()).unwrap();
        let key = Key::new(["a", "b.msg"]).unwrap();
        let url = GetObject::new(&s.bucket, s.creds.as_ref(), &s.object(&key)).sign(SIGN_FOR);
        assert_eq!(url.path(), "/dmp-test/team/a/a/b.msg");
        assert!(url.query().unwrap().contains("X-Amz-Signature="));
        assert!(!format!("{:?}", cfg()).contains("s3cr3t"));
    }

    #[test]
    fn a_bad_endpoint_is_shown_without_its_credentials() {
        for e in ["http://user:hunter2@127.0.0.1:99999/", "http://us er:hunter2@[::1/", "http://u:hun/ter2@h:x/"] {
            let msg = parse_endpoint(e).unwrap_err().to_string();
            assert!(!msg.contains("hunter2") && !msg.contains("hun/ter2") && msg.contains("://***@"), "{msg}");
        }
        let c = S3Config { endpoint: Url::parse("http://user:hunter2@127.0.0.1:9000").unwrap(), ..cfg() };
        let msg = S3Store::new(c, HttpOptions::default()).err().unwrap().to_string();
        assert!(!msg.contains("hunter2") && msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
    }

    #[test]
    fn checks_bucket_and_prefix() {
        assert!(check_bucket_name("ab").is_err());
        assert!(check_bucket_name("Bucket").is_err());
        assert!(check_bucket_name("-b-").is_err());
        assert!(check_bucket_name("my.bucket-1").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("a/B_c/d-1.x").is_ok());
        assert!(check_prefix("a//b").is_err());
        assert!(check_prefix("a/../b").is_err());
        assert!(check_prefix("a b").is_err());
    }

    #[test]
    fn lists_names_from_a_page() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p%2Fl%2F</Prefix>
<KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>%2F</Delimiter><IsTruncated>false</IsTruncated>
<Contents><Key>p%2Fl%2Fx1</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"e"</ETag><Size>2</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>p%2Fl%2FBad</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"e"</ETag><Size>2</Size></Contents>
<CommonPrefixes><Prefix>p%2Fl%2Fsub%2F</Prefix></CommonPrefixes><EncodingType>url</EncodingType></ListBucketResult>"#;
        let page = ListObjectsV2::parse_response(xml).unwrap();
        let mut names = Vec::new();
        names_in_page(&page, "p/l/", &mut names, &mut HashSet::new());
        names.sort();
        assert_eq!(names, vec!["sub", "x1"]);
    }

    #[test]
    fn dedupes_a_large_listing_page_in_order() {
        // One page of 30k names, each listed as a key and as a prefix, and
        // the whole page again as the next one: a server decides how many
        // names a page holds.
        let n = 30_000;
        let mut xml = String::from(
            r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p%2F</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"#,
        );
        for i in 0..n {
            xml.push_str(&format!("<Contents><Key>p%2Fm{i:06}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"e\"</ETag><Size>1</Size></Contents>"));
        }
        for i in 0..n {
            xml.push_str(&format!("<CommonPrefixes><Prefix>p%2Fm{i:06}%2F</Prefix></CommonPrefixes>"));
        }
        xml.push_str("<EncodingType>url</EncodingType></ListBucketResult>");
        let page = ListObjectsV2::parse_response(xml.as_bytes()).unwrap();
        let t = std::time::Instant::now();
        let (mut names, mut seen) = (Vec::new(), HashSet::new());
        names_in_page(&page, "p/", &mut names, &mut seen);
        names_in_page(&page, "p/", &mut names, &mut seen);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?} for {n} names", t.elapsed());
        assert_eq!(names.len(), n);
        assert!(names.iter().enumerate().all(|(i, m)| *m == format!("m{i:06}")), "listing order kept");
    }
}

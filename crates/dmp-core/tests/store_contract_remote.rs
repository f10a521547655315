//! The store contract and the failure cases against real servers on
//! loopback (nginx WebDAV, nginx serving a folder, SeaweedFS S3), started
//! by the scripts in `scripts/` and torn down by each test; plus HTTP
//! failure cases (retries, Retry-After, redirects, HTML pages, truncated
//! bodies) against a scripted fake server.
//!
//! A test whose server binary is missing is skipped with a message, unless
//! `DMP_REQUIRE_SERVERS` is set (as in CI), when it fails.

mod common;

use common::{FakeServer, Server, have, have_nginx_dav, response};
use dmp_core::PeerId;
use dmp_core::store::{
    FolderOptions, FolderStore, HttpOptions, HttpStore, Key, MemoryStore, PeerOutbox, PutNew, RoutedStore, S3Config,
    S3Store, Store, StoreError, StoreSpec, WebDavCredentials, WebDavStore, contract,
};
use reqwest::Url;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn k(s: &str) -> Key {
    Key::new(s.split('/')).unwrap()
}

/// Quick retries, so that failure cases finish in seconds.
fn fast() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        retries: 3,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        retry_after_max: Duration::from_secs(5),
        ..HttpOptions::default()
    }
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

// ---------------------------------------------------------------- WebDAV

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_contract() {
    if !have_nginx_dav("webdav_contract") {
        return;
    }
    let srv = Server::start("nginx-webdav.sh", &[]);
    let base = srv.var("DMP_TEST_WEBDAV_URL");
    // At the server root, and below a collection that does not exist yet
    // (the store creates it with MKCOL: create_full_put_path is off).
    let store = WebDavStore::with_options(url(&base), None, HttpOptions::default()).unwrap();
    contract::run_all(&store, "c1", "webdav").await;
    let nested = WebDavStore::with_options(url(&format!("{base}deep/er/")), None, HttpOptions::default()).unwrap();
    contract::run_all(&nested, "c2", "webdav below a new collection").await;
    // Through the --store form.
    let spec: StoreSpec = srv.var("DMP_STORE").parse().unwrap();
    let opened = spec.open().unwrap();
    opened.put(&k("spec/x"), b"via spec").await.unwrap();
    assert_eq!(store.get(&k("spec/x"), 100).await.unwrap().as_deref(), Some(&b"via spec"[..]));
    assert!(srv.dir.path().join("data/spec/x").is_file(), "nginx stored the object as a file");
    let mut root = store.list(&Key::root()).await.unwrap();
    root.sort();
    assert!(root.contains(&"spec".to_string()) && root.contains(&"deep".to_string()), "{root:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_credentials() {
    if !have_nginx_dav("webdav_credentials") {
        return;
    }
    let srv = Server::start("nginx-webdav.sh", &[("WEBDAV_USER", "dmp"), ("WEBDAV_PASSWORD", "s3cret pass")]);
    let base = url(&srv.var("DMP_TEST_WEBDAV_URL"));
    let good = WebDavCredentials { user: "dmp".into(), password: "s3cret pass".into() };
    let store = WebDavStore::with_options(base.clone(), Some(good), HttpOptions::default()).unwrap();
    contract::run_all(&store, "auth", "webdav with basic auth").await;

    let bad = WebDavCredentials { user: "dmp".into(), password: "wrong".into() };
    for creds in [Some(bad), None] {
        let store = WebDavStore::with_options(base.clone(), creds, fast()).unwrap();
        let t = Instant::now();
        let e = store.put(&k("a/b"), b"x").await.unwrap_err();
        assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("webdav http://127.0.0.1") && msg.contains("401"), "{msg}");
        assert!(msg.contains("DMP_STORE_USER") && !msg.contains('\n') && !msg.contains("wrong"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(2), "401 is not retried");
        let e = store.get(&k("a/b"), 10).await.unwrap_err();
        assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_server_down_then_restarted() {
    if !have_nginx_dav("webdav_server_down_then_restarted") {
        return;
    }
    let mut srv = Server::start("nginx-webdav.sh", &[]);
    let base = url(&srv.var("DMP_TEST_WEBDAV_URL"));
    let store = Arc::new(WebDavStore::with_options(base, None, fast()).unwrap());
    store.put(&k("r/1"), b"one").await.unwrap();
    srv.stop();
    // Down: retried, then a clear error naming the store.
    let t = Instant::now();
    let e = store.get(&k("r/1"), 10).await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    let msg = e.to_string();
    assert!(msg.starts_with("webdav http://127.0.0.1:") && msg.contains("gave up after 4 attempts"), "{msg}");
    assert!(t.elapsed() >= Duration::from_millis(30), "retried with back-off: {:?}", t.elapsed());
    // Restarted while a request is being retried: the request succeeds.
    let slow = HttpOptions { retries: 40, backoff_base: Duration::from_millis(100), ..fast() };
    let patient = WebDavStore::with_options(store.base().clone(), None, slow).unwrap();
    let pending = tokio::spawn(async move { patient.get(&k("r/1"), 10).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let srv = tokio::task::spawn_blocking(move || {
        srv.restart();
        srv
    })
    .await
    .unwrap();
    assert_eq!(pending.await.unwrap().unwrap().as_deref(), Some(&b"one"[..]), "{}", srv.logs());
    assert_eq!(store.get(&k("r/1"), 10).await.unwrap().as_deref(), Some(&b"one"[..]));
}

// ---------------------------------------------------------------- S3

struct S3Srv {
    srv: Server,
    cfg: S3Config,
}

async fn seaweedfs(test: &str) -> Option<S3Srv> {
    if !have("weed", test) {
        return None;
    }
    let srv = Server::start("seaweedfs.sh", &[]);
    let cfg = S3Config {
        endpoint: url(&srv.var("AWS_ENDPOINT_URL")),
        region: srv.var("AWS_REGION"),
        bucket: srv.var("DMP_TEST_S3_BUCKET"),
        prefix: "dmp".into(),
        path_style: true,
        access_key: Some(srv.var("AWS_ACCESS_KEY_ID")),
        secret_key: Some(srv.var("AWS_SECRET_ACCESS_KEY")),
        session_token: None,
    };
    // The gateway listens before the bucket is there: wait for a listing.
    let store = S3Store::new(cfg.clone(), fast()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.list(&Key::root()).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("seaweedfs not ready: {e}\n{}", srv.logs()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Some(S3Srv { srv, cfg })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_contract() {
    let Some(s) = seaweedfs("s3_contract").await else { return };
    let store = S3Store::new(s.cfg.clone(), HttpOptions::default()).unwrap();
    contract::run_all(&store, "c1", "s3").await;
    // Without a prefix, at the bucket's root.
    let root = S3Store::new(S3Config { prefix: String::new(), ..s.cfg.clone() }, HttpOptions::default()).unwrap();
    contract::run_all(&root, "c2", "s3 at the bucket root").await;
    let mut names = root.list(&Key::root()).await.unwrap();
    names.sort();
    assert!(names.contains(&"dmp".to_string()), "the prefixed store's objects are below dmp/: {names:?}");

    // Create-only writes.
    let key = k("once/obj");
    assert_eq!(store.put_new(&key, b"first").await.unwrap(), PutNew::Created);
    assert_eq!(store.put_new(&key, b"second").await.unwrap(), PutNew::Exists);
    assert_eq!(store.get(&key, 100).await.unwrap().as_deref(), Some(&b"first"[..]), "create-only kept the first");
    store.delete(&key).await.unwrap();
    assert_eq!(store.put_new(&key, b"third").await.unwrap(), PutNew::Created, "after a delete");
    eprintln!("s3_contract: If-None-Match on PUT honoured by SeaweedFS: {:?}", store.create_only_supported());
    store.delete(&key).await.unwrap();
    drop(s.srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failures() {
    let Some(s) = seaweedfs("s3_failures").await else { return };
    // A wrong secret: SigV4 is enforced; one clear line naming the store.
    let bad = S3Config { secret_key: Some("not-the-secret".into()), ..s.cfg.clone() };
    let store = S3Store::new(bad, fast()).unwrap();
    let e = store.get(&k("a/b"), 10).await.unwrap_err();
    assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("s3://dmp-test/dmp at http://127.0.0.1:") && msg.contains("403"), "{msg}");
    assert!(msg.contains("AWS_SECRET_ACCESS_KEY") && !msg.contains('\n') && !msg.contains("not-the-secret"), "{msg}");
    let e = store.put(&k("a/b"), b"x").await.unwrap_err();
    assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
    // No keys at all.
    let anon = S3Config { access_key: None, secret_key: None, ..s.cfg.clone() };
    let e = S3Store::new(anon, fast()).unwrap().put(&k("a/b"), b"x").await.unwrap_err();
    assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
    // A missing bucket is an error, not an absent object.
    let nob = S3Config { bucket: "no-such-bucket".into(), ..s.cfg.clone() };
    let e = S3Store::new(nob, fast()).unwrap().get(&k("a/b"), 10).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // The server restarted between two requests: the store carries on.
    let mut srv = s.srv;
    let store = S3Store::new(s.cfg.clone(), fast()).unwrap();
    store.put(&k("r/1"), b"kept").await.unwrap();
    let srv = tokio::task::spawn_blocking(move || {
        srv.restart();
        srv
    })
    .await
    .unwrap();
    let patient =
        S3Store::new(s.cfg.clone(), HttpOptions { retries: 60, backoff_base: Duration::from_millis(100), ..fast() })
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match patient.get(&k("r/1"), 10).await {
            Ok(got) => {
                assert_eq!(got.as_deref(), Some(&b"kept"[..]));
                break;
            }
            Err(e) if Instant::now() > deadline => panic!("after a restart: {e}\n{}", srv.logs()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// ---------------------------------------------------------------- read-only HTTP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outbox_over_nginx() {
    if !have("nginx", "http_outbox_over_nginx") {
        return;
    }
    // Bob's store is a local folder that nginx publishes read-only.
    let folder_dir = tempfile::tempdir().unwrap();
    let bob_store = FolderStore::open(folder_dir.path(), FolderOptions { watch: false, rescan: None }).unwrap();
    let root = folder_dir.path().to_str().unwrap().to_owned();
    let srv = Server::start("nginx-static.sh", &[("ROOT", &root)]);
    let base = srv.var("DMP_TEST_HTTP_URL");
    bob_store.put(&k("bob/alice/0001.msg"), b"\x89DMP hello").await.unwrap();

    let outbox: PeerOutbox = format!("bob={base}bob").parse().unwrap();
    let http = HttpStore::with_options(outbox.url.clone(), fast()).unwrap();
    assert_eq!(http.get(&k("alice/0001.msg"), 100).await.unwrap().as_deref(), Some(&b"\x89DMP hello"[..]));
    assert_eq!(http.get(&k("alice/0002.msg"), 100).await.unwrap(), None, "404 is absent");
    assert_eq!(http.get(&k("nobody/x"), 100).await.unwrap(), None);
    assert!(matches!(http.get(&k("alice/0001.msg"), 3).await, Err(StoreError::TooLarge { .. })));
    for e in [
        http.put(&k("alice/x"), b"x").await.unwrap_err(),
        http.delete(&k("alice/0001.msg")).await.unwrap_err(),
        http.list(&k("alice")).await.unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::Unsupported { .. }), "{e:?}");
        assert!(e.to_string().starts_with("http outbox http://127.0.0.1:"), "{e}");
    }
    assert!(!http.notifies());
    // A directory is not an object (nginx redirects to the slash form).
    let e = http.get(&k("alice"), 100).await.unwrap_err();
    assert!(matches!(e, StoreError::NotAFile { .. }), "{e:?}");
    // A folder store's temporary names are never served.
    std::fs::write(folder_dir.path().join("bob/alice/.~dmp-1.tmp"), b"partial").unwrap();
    let dot = reqwest::get(format!("{base}bob/alice/.~dmp-1.tmp")).await.unwrap();
    assert_eq!(dot.status().as_u16(), 404);

    // Alice's view: her own outbox in her store, Bob's read over HTTP.
    let alice_main = Arc::new(MemoryStore::new());
    let routed = RoutedStore::with_outboxes(alice_main.clone(), &[outbox]).unwrap();
    routed.put(&k("alice/bob/0001.msg"), b"mine").await.unwrap();
    assert_eq!(alice_main.keys(), vec!["alice/bob/0001.msg"]);
    assert_eq!(routed.get(&k("bob/alice/0001.msg"), 100).await.unwrap().as_deref(), Some(&b"\x89DMP hello"[..]));
    assert!(matches!(routed.put(&k("bob/alice/ack"), b"x").await, Err(StoreError::Unsupported { .. })));
    assert!(!routed.notifies(), "an HTTP outbox must be polled");
    contract::run_all(&routed, "alice", "routed store (own outbox)").await;
    drop(srv);
}

// ---------------------------------------------------------------- HTTP failure cases (fake server)

#[tokio::test]
async fn retries_5xx_then_succeeds() {
    let srv = FakeServer::start(|n, _| {
        if n < 2 { response("503 Service Unavailable", &[], b"busy") } else { response("200 OK", &[], b"data") }
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/out/")), fast()).unwrap();
    assert_eq!(s.get(&k("a/m"), 100).await.unwrap().as_deref(), Some(&b"data"[..]));
    assert_eq!(srv.requests(), 3);
    assert_eq!(srv.seen()[0].path, "/out/a/m");
}

#[tokio::test]
async fn honours_retry_after() {
    let srv = FakeServer::start(|n, _| {
        if n == 0 {
            response("429 Too Many Requests", &[("Retry-After", "1")], b"")
        } else {
            response("200 OK", &[], b"ok")
        }
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/")), fast()).unwrap();
    let t = Instant::now();
    assert_eq!(s.get(&k("m"), 100).await.unwrap().as_deref(), Some(&b"ok"[..]));
    assert!(t.elapsed() >= Duration::from_millis(950), "waited {:?}", t.elapsed());
    // A huge Retry-After is capped.
    let srv = FakeServer::start(|n, _| {
        if n == 0 {
            response("503 Service Unavailable", &[("Retry-After", "86400")], b"")
        } else {
            response("200 OK", &[], b"ok")
        }
    })
    .await;
    let opts = HttpOptions { retry_after_max: Duration::from_millis(100), ..fast() };
    let s = HttpStore::with_options(url(&srv.url("/")), opts).unwrap();
    let t = Instant::now();
    assert!(s.get(&k("m"), 100).await.unwrap().is_some());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_retry_after_beyond_the_retry_budget_is_waited_for_what_is_left() {
    // Every answer asks for a day. Giving up at once made the caller ask
    // again at its next look, every second or two: more requests than a
    // server asking for 30 s got.
    let srv = FakeServer::start(|_, _| response("429 Too Many Requests", &[("Retry-After", "86400")], b"")).await;
    let opts = HttpOptions { retry_for: Duration::from_secs(1), retry_after_max: Duration::from_secs(60), ..fast() };
    let s = HttpStore::with_options(url(&srv.url("/")), opts).unwrap();
    let t = Instant::now();
    let e = s.get(&k("m"), 100).await.unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("429"), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(950), "waited only {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "waited {:?}", t.elapsed());
    assert_eq!(srv.requests(), 2, "one try, and one once the time was up");
}

#[tokio::test]
async fn gives_up_on_persistent_5xx() {
    let srv = FakeServer::start(|_, _| {
        response("500 Internal Server Error", &[("Content-Type", "text/plain")], b"disk on fire\n")
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/")), fast()).unwrap();
    let e = s.get(&k("m"), 100).await.unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }) && e.is_transient(), "{e:?}");
    assert_eq!(srv.requests(), 4, "one try and three retries");
    let msg = e.to_string();
    assert!(
        msg.contains("500 Internal Server Error (disk on fire)") && msg.contains("gave up after 4 attempts"),
        "{msg}"
    );
}

#[tokio::test]
async fn html_page_is_not_an_object() {
    let srv = FakeServer::start(|_, _| {
        response(
            "200 OK",
            &[("Content-Type", "text/html; charset=utf-8")],
            b"<!DOCTYPE html><html><body>Sign in</body></html>",
        )
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/")), fast()).unwrap();
    let e = s.get(&k("m"), 1000).await.unwrap_err();
    assert!(matches!(e, StoreError::NotAnObject { .. }) && e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("an HTML page instead of the object"), "{e}");
}

#[tokio::test]
async fn redirects_same_host_only_and_never_for_writes() {
    let srv = FakeServer::start(|_, req| match req.path.as_str() {
        "/a/same" => response("302 Found", &[("Location", "/b/same")], b""),
        "/b/same" => response("200 OK", &[], b"moved"),
        "/a/other" => response("302 Found", &[("Location", "http://127.0.0.2:9/a/other")], b""),
        "/a/loop" => response("302 Found", &[("Location", "/a/loop")], b""),
        "/dav/w/x" => response("307 Temporary Redirect", &[("Location", "/elsewhere/w/x")], b""),
        _ => response("404 Not Found", &[], b""),
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/a/")), fast()).unwrap();
    assert_eq!(s.get(&k("same"), 100).await.unwrap().as_deref(), Some(&b"moved"[..]));
    let e = s.get(&k("other"), 100).await.unwrap_err();
    assert!(matches!(e, StoreError::Redirected { .. }), "{e:?}");
    assert!(e.to_string().contains("redirected to http://127.0.0.2:9/a/other"), "{e}");
    assert!(s.get(&k("loop"), 100).await.unwrap_err().to_string().contains("more than 5 redirects"));
    // A write is never redirected, even on the same host.
    let dav = WebDavStore::with_options(url(&srv.url("/dav/")), None, fast()).unwrap();
    let before = srv.requests();
    let e = dav.put(&k("w/x"), b"data").await.unwrap_err();
    assert!(matches!(e, StoreError::Redirected { op: "put", .. }), "{e:?}");
    assert_eq!(srv.requests(), before + 1, "no request to the redirect target");
}

#[tokio::test]
async fn truncated_body_is_retried_never_used() {
    let srv = FakeServer::start(|n, _| {
        if n == 0 {
            // Announces 100 bytes, sends 10, closes.
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789".to_vec()
        } else {
            response("200 OK", &[], &[b'z'; 100])
        }
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/")), fast()).unwrap();
    assert_eq!(s.get(&k("m"), 1000).await.unwrap().map(|b| b.len()), Some(100));
    assert_eq!(srv.requests(), 2);
}

#[tokio::test]
async fn oversized_object_is_refused_unread() {
    // Announces 1 GiB; the client must stop at the header.
    let srv = FakeServer::start(|_, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n".to_vec();
        r.extend_from_slice(&[0u8; 1024]);
        r
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/")), fast()).unwrap();
    let e = s.get(&k("m"), 1 << 20).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { len: Some(1073741824), .. }), "{e:?}");
    // Without a length (chunked), reading stops just past the limit.
    let srv = FakeServer::start(|_, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for _ in 0..64 {
            r.extend_from_slice(b"400\r\n");
            r.extend_from_slice(&[1u8; 1024]);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/")), fast()).unwrap();
    assert!(matches!(s.get(&k("m"), 10_000).await, Err(StoreError::TooLarge { .. })));
    assert_eq!(s.get(&k("m"), 65_536).await.unwrap().map(|b| b.len()), Some(65_536));
}

#[tokio::test]
async fn denied_is_one_line_naming_the_store() {
    let srv = FakeServer::start(|_, _| {
        response("403 Forbidden", &[("Content-Type", "text/html")], b"<html>\n<body>\nForbidden\n</body>\n</html>")
    })
    .await;
    let s = HttpStore::with_options(url(&srv.url("/pub/")), fast()).unwrap();
    let e = s.get(&k("m"), 100).await.unwrap_err();
    assert!(matches!(e, StoreError::Denied { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "http outbox http://127.0.0.1:{}/pub/: access denied: get m: HTTP 403 Forbidden",
            srv.port
        )),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(srv.requests(), 1, "403 is not retried");
}

#[tokio::test]
async fn refused_connection_is_retried_then_unreachable() {
    let port = common::free_port();
    let s = HttpStore::with_options(url(&format!("http://127.0.0.1:{port}/x/")), fast()).unwrap();
    let e = s.get(&k("m"), 100).await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("http outbox http://127.0.0.1:{port}/x/: cannot reach the server")), "{msg}");
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
}

#[tokio::test]
async fn webdav_creates_parents_when_put_says_409() {
    // A server that refuses PUT until the parents exist, like Apache.
    let made = Arc::new(std::sync::Mutex::new(vec!["/dav/".to_string()]));
    let m = made.clone();
    let srv = FakeServer::start(move |_, req| {
        let mut made = m.lock().unwrap();
        let parent = |p: &str| p.trim_end_matches('/').rsplit_once('/').map(|(a, _)| format!("{a}/")).unwrap();
        match req.method.as_str() {
            "PUT" if made.contains(&parent(&req.path)) => response("201 Created", &[], b""),
            "PUT" => response("409 Conflict", &[], b""),
            "MKCOL" if made.contains(&req.path) => response("405 Method Not Allowed", &[], b""),
            "MKCOL" if made.contains(&parent(&req.path)) => {
                made.push(req.path.clone());
                response("201 Created", &[], b"")
            }
            "MKCOL" => response("409 Conflict", &[], b""),
            _ => response("400 Bad Request", &[], b""),
        }
    })
    .await;
    let s = WebDavStore::with_options(url(&srv.url("/dav/")), None, fast()).unwrap();
    s.put(&k("a/b/c/obj"), b"x").await.unwrap();
    assert_eq!(made.lock().unwrap().clone(), vec!["/dav/", "/dav/a/", "/dav/a/b/", "/dav/a/b/c/"]);
    let seen: Vec<String> = srv.seen().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(seen[0], "PUT /dav/a/b/c/obj");
    assert_eq!(seen.last().unwrap(), "PUT /dav/a/b/c/obj");
    assert_eq!(srv.seen().last().unwrap().body_len, 1);
}

#[tokio::test]
async fn s3_create_only_falls_back_when_the_header_is_rejected() {
    // A server without conditional writes: 501 to If-None-Match, then HEAD and PUT.
    let stored = Arc::new(std::sync::Mutex::new(false));
    let st = stored.clone();
    let srv = FakeServer::start(move |_, req| {
        let mut stored = st.lock().unwrap();
        match req.method.as_str() {
            "PUT" if req.header("if-none-match").is_some() => response(
                "501 Not Implemented",
                &[("Content-Type", "application/xml")],
                b"<Error><Code>NotImplemented</Code><Message>no conditional writes</Message></Error>",
            ),
            "PUT" => {
                *stored = true;
                response("200 OK", &[], b"")
            }
            "HEAD" if *stored => response("200 OK", &[], b""),
            "HEAD" => response("404 Not Found", &[], b""),
            _ => response("400 Bad Request", &[], b""),
        }
    })
    .await;
    let cfg = S3Config {
        endpoint: url(&srv.url("/")),
        region: "us-east-1".into(),
        bucket: "bkt".into(),
        prefix: "p".into(),
        path_style: true,
        access_key: Some("k".into()),
        secret_key: Some("s".into()),
        session_token: None,
    };
    let s = S3Store::new(cfg, fast()).unwrap();
    assert_eq!(s.put_new(&k("a/x"), b"1").await.unwrap(), PutNew::Created);
    assert_eq!(s.create_only_supported(), Some(false));
    assert_eq!(s.put_new(&k("a/x"), b"2").await.unwrap(), PutNew::Exists);
    let seen: Vec<String> =
        srv.seen().iter().map(|r| format!("{} {}", r.method, r.path.split('?').next().unwrap())).collect();
    assert_eq!(seen, vec!["PUT /bkt/p/a/x", "HEAD /bkt/p/a/x", "PUT /bkt/p/a/x", "HEAD /bkt/p/a/x"]);
    // A 412 answer means the object is there.
    let srv = FakeServer::start(|_, _| response("412 Precondition Failed", &[], b"")).await;
    let cfg = S3Config {
        endpoint: url(&srv.url("/")),
        region: "us-east-1".into(),
        bucket: "bkt".into(),
        prefix: String::new(),
        path_style: true,
        access_key: Some("k".into()),
        secret_key: Some("s".into()),
        session_token: None,
    };
    let s = S3Store::new(cfg, fast()).unwrap();
    assert_eq!(s.put_new(&k("x"), b"1").await.unwrap(), PutNew::Exists);
    assert_eq!(s.create_only_supported(), Some(true));
}

#[test]
fn peer_outbox_and_spec_forms() {
    let p: PeerOutbox = "alice=https://example.org/dmp/alice".parse().unwrap();
    assert_eq!(p.id, PeerId::new("alice").unwrap());
    assert!("alice=webdav://h/x".parse::<PeerOutbox>().is_err());
    assert!(matches!("webdavs://h/p".parse::<StoreSpec>().unwrap(), StoreSpec::WebDav(_)));
    assert!(matches!("s3://bucket/p".parse::<StoreSpec>().unwrap(), StoreSpec::S3 { .. }));
}

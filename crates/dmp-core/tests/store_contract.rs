//! The store contract run against the in-memory store and the folder store,
//! the latter learning of changes once through file-system notifications
//! and once through rescans alone; plus folder-specific cases: symlinks,
//! directories and temporary files planted in the store.

use dmp_core::store::{Changes, FolderOptions, FolderStore, Key, MemoryStore, Store, StoreError, contract};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

fn k(s: &str) -> Key {
    Key::new(s.split('/')).expect("valid test key")
}

/// File-system notifications only.
fn notified(dir: &Path) -> FolderStore {
    FolderStore::open(dir, FolderOptions { watch: true, rescan: None }).expect("open folder store")
}

/// Rescans only, as on a network mount that raises no events.
fn rescanned(dir: &Path) -> FolderStore {
    FolderStore::open(dir, FolderOptions { watch: false, rescan: Some(Duration::from_millis(50)) })
        .expect("open folder store")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Waits for a change signal, generously.
async fn signalled(ch: &mut Changes, what: &str) {
    tokio::time::timeout(Duration::from_secs(1), ch.changed())
        .await
        .unwrap_or_else(|_| panic!("no change signal within 1 s of {what}"));
}

/// True when a signal comes within `d`.
async fn signal_within(ch: &mut Changes, d: Duration) -> bool {
    tokio::time::timeout(d, ch.changed()).await.is_ok()
}

/// Swallows signals caused by set-up until the store is quiet.
async fn settle(ch: &mut Changes) {
    while signal_within(ch, Duration::from_millis(250)).await {}
}

// ---- the generic suite ---------------------------------------------------

#[tokio::test]
async fn memory_store_contract() {
    let store = MemoryStore::new();
    contract::run_all(&store, "c", "memory").await;
    contract::run_all(&store, "deep/er", "memory below a deeper base").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_store_contract_with_notifications() {
    let dir = tempdir();
    let store = notified(dir.path());
    assert!(store.notifies());
    contract::run_all(&store, "c", "folder (notify)").await;
    contract::run_all(&store, "deep/er", "folder (notify) below a deeper base").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_store_contract_with_rescans() {
    let dir = tempdir();
    let store = rescanned(dir.path());
    assert!(!store.notifies(), "rescans are no notification: callers must poll");
    contract::run_all(&store, "c", "folder (rescan)").await;
}

#[test]
fn folder_store_put_is_atomic_for_a_reader_on_another_thread() {
    let dir = tempdir();
    let store = notified(dir.path());
    let seen = contract::atomic_put_threaded(&store, "t", "folder", 60);
    assert!(seen >= 1, "the reader saw no version at all");
}

#[test]
fn memory_store_put_is_atomic_for_a_reader_on_another_thread() {
    let store = MemoryStore::new();
    contract::atomic_put_threaded(&store, "t", "memory", 30);
}

// ---- change signals: both folder paths -----------------------------------

/// A put, a same-size rewrite, a delete, a write by another program and a
/// change three levels down each wake a waiting caller.
async fn each_change_signals(store: &FolderStore, label: &str) {
    let root = store.root().to_path_buf();
    let mut ch = store.changes(&Key::root());
    settle(&mut ch).await;
    store.put(&k("a/b/one"), b"1111").await.unwrap();
    signalled(&mut ch, &format!("{label}: a put")).await;
    settle(&mut ch).await;
    store.put(&k("a/b/one"), b"2222").await.unwrap();
    signalled(&mut ch, &format!("{label}: a rewrite of the same size")).await;
    settle(&mut ch).await;
    store.delete(&k("a/b/one")).await.unwrap();
    signalled(&mut ch, &format!("{label}: a delete")).await;
    settle(&mut ch).await;
    std::fs::write(root.join("a/b/from-sync-client"), b"x").unwrap();
    signalled(&mut ch, &format!("{label}: a file written by another program")).await;
    settle(&mut ch).await;
    store.put(&k("x/y/z"), b"deep").await.unwrap();
    signalled(&mut ch, &format!("{label}: a put in new directories")).await;
    settle(&mut ch).await;
    // Idle: no signal without a change (no busy wake-ups).
    assert!(!signal_within(&mut ch, Duration::from_millis(400)).await, "{label}: signal without a change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_path_signals_each_change() {
    let dir = tempdir();
    each_change_signals(&notified(dir.path()), "notify").await;
}

/// `changes` called outside a tokio runtime: on Linux the runtime's own
/// inotify reader cannot start there, and the `notify` crate's thread does
/// the watching instead (as on other systems).
#[test]
fn notify_crate_path_signals_each_change() {
    let dir = tempdir();
    let store = notified(dir.path());
    let mut ch = store.changes(&k("bob/alice"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        settle(&mut ch).await;
        store.put(&k("bob/alice/m"), b"m").await.unwrap();
        signalled(&mut ch, "notify crate: a put in directories that did not exist").await;
        settle(&mut ch).await;
        store.put(&k("bob/alice/x/y"), b"deep").await.unwrap();
        signalled(&mut ch, "notify crate: a put one level further down").await;
        settle(&mut ch).await;
        assert!(!signal_within(&mut ch, Duration::from_millis(300)).await, "notify crate: signal without a change");
    });
}

/// The inotify reader on the runtime: a prefix whose directories do not
/// exist yet is reached as they appear (each level waking the caller, as
/// files may have landed before the watch), directories made later below
/// it are watched too, and a writer's temporary file wakes nobody until
/// it is renamed.
#[tokio::test]
async fn the_watch_moves_down_and_ignores_temporary_files() {
    let dir = tempdir();
    let store = notified(dir.path());
    let root = store.root().to_path_buf();
    let mut ch = store.changes(&k("bob/alice"));
    settle(&mut ch).await;
    std::fs::create_dir(root.join("bob")).unwrap();
    signalled(&mut ch, "the first missing level appearing").await;
    settle(&mut ch).await;
    std::fs::create_dir(root.join("bob/alice")).unwrap();
    signalled(&mut ch, "the prefix appearing").await;
    settle(&mut ch).await;
    std::fs::create_dir_all(root.join("bob/alice/x/y")).unwrap();
    settle(&mut ch).await;
    std::fs::write(root.join("bob/alice/x/y/z"), b"z").unwrap();
    signalled(&mut ch, "a file two levels below the prefix, in directories made later").await;
    settle(&mut ch).await;
    let tmp = root.join("bob/alice/.~dmp-0123456789abcdef.tmp");
    std::fs::write(&tmp, b"half a message").unwrap();
    assert!(!signal_within(&mut ch, Duration::from_millis(300)).await, "a temporary file woke the caller");
    std::fs::rename(&tmp, root.join("bob/alice/0000000000000001-0000000000000001.msg")).unwrap();
    signalled(&mut ch, "the temporary file renamed to a message").await;
    let set = ch.take();
    assert!(set.touches(&k("bob/alice/0000000000000001-0000000000000001.msg")), "the change names the prefix");
    // Changes elsewhere in the store are not watched at all.
    settle(&mut ch).await;
    store.put(&k("carol/dave/m"), b"m").await.unwrap();
    assert!(!signal_within(&mut ch, Duration::from_millis(300)).await, "a write outside the prefix woke the caller");
}

/// The watched prefix removed, or moved away, and made anew: changes in
/// the new one still wake the caller, without any rescan.
#[tokio::test]
async fn a_prefix_removed_or_moved_and_made_again_is_watched_again() {
    let dir = tempdir();
    let store = notified(dir.path());
    let root = store.root().to_path_buf();
    store.put(&k("bob/alice/first"), b"1").await.unwrap();
    let mut ch = store.changes(&k("bob/alice"));
    settle(&mut ch).await;
    std::fs::remove_dir_all(root.join("bob")).unwrap();
    signalled(&mut ch, "the prefix removed").await;
    settle(&mut ch).await;
    store.put(&k("bob/alice/second"), b"2").await.unwrap();
    signalled(&mut ch, "a put into the prefix made anew").await;
    settle(&mut ch).await;
    std::fs::write(root.join("bob/alice/third"), b"3").unwrap();
    signalled(&mut ch, "a later write into the prefix made anew").await;
    settle(&mut ch).await;
    std::fs::rename(root.join("bob/alice"), root.join("bob/old")).unwrap();
    signalled(&mut ch, "the prefix moved away").await;
    settle(&mut ch).await;
    std::fs::write(root.join("bob/old/fourth"), b"4").unwrap();
    assert!(!signal_within(&mut ch, Duration::from_millis(300)).await, "a write into the moved-away directory");
    store.put(&k("bob/alice/fifth"), b"5").await.unwrap();
    signalled(&mut ch, "a put into the prefix made anew after a move").await;
}

/// A directory in the store that is a symbolic link to somewhere else is
/// not watched through: writes out there wake nobody.
#[tokio::test]
async fn a_symlinked_directory_is_not_watched_through() {
    let dir = tempdir();
    let outside = tempdir();
    let store = notified(dir.path());
    std::fs::create_dir_all(store.root().join("bob")).unwrap();
    symlink(outside.path(), store.root().join("bob/alice")).unwrap();
    for prefix in [Key::root(), k("bob"), k("bob/alice")] {
        let mut ch = store.changes(&prefix);
        settle(&mut ch).await;
        std::fs::write(outside.path().join("m"), b"m").unwrap();
        assert!(
            !signal_within(&mut ch, Duration::from_millis(300)).await,
            "a write behind a symlinked directory woke a watch on {prefix:?}"
        );
        std::fs::remove_file(outside.path().join("m")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_path_signals_each_change() {
    let dir = tempdir();
    each_change_signals(&rescanned(dir.path()), "rescan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_alone_wakes_a_waiting_caller_within_a_second() {
    let dir = tempdir();
    let store = rescanned(dir.path());
    let mut ch = store.changes(&k("bob/alice"));
    settle(&mut ch).await;
    let started = std::time::Instant::now();
    let waiter = tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(1), ch.changed()).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.put(&k("bob/alice/0000000000000001-0000000000000001.msg"), b"m").await.unwrap();
    assert!(waiter.await.unwrap(), "rescan did not wake the caller within 1 s of a put");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_raised_while_nobody_waits_is_kept() {
    type Open = fn(&Path) -> FolderStore;
    for (label, open) in [("notify", notified as Open), ("rescan", rescanned as Open)] {
        let dir = tempdir();
        let store = open(dir.path());
        let mut ch = store.changes(&k("p"));
        settle(&mut ch).await;
        store.put(&k("p/m"), b"x").await.unwrap();
        // Nobody waits while the change is noticed ...
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... and the next wait returns at once.
        assert!(signal_within(&mut ch, Duration::from_millis(100)).await, "{label}: signal lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_watch_or_rescan_there_is_no_signal() {
    let dir = tempdir();
    let store = FolderStore::open(dir.path(), FolderOptions { watch: false, rescan: None }).unwrap();
    assert!(!store.notifies());
    let mut ch = store.changes(&Key::root());
    store.put(&k("a/b"), b"x").await.unwrap();
    assert!(!signal_within(&mut ch, Duration::from_millis(300)).await, "the caller's poll timer does the work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_changes_stops_the_rescan() {
    // The rescan thread ends with its `Changes`; a later one works anew.
    let dir = tempdir();
    let store = rescanned(dir.path());
    for i in 0..3 {
        let mut ch = store.changes(&Key::root());
        settle(&mut ch).await;
        store.put(&k(&format!("r/{i}")), b"x").await.unwrap();
        signalled(&mut ch, "a put").await;
    }
}

// ---- folder specifics: hostile or foreign content ------------------------

#[tokio::test]
async fn a_symlink_at_a_key_is_not_followed() {
    let dir = tempdir();
    let outside = tempdir();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"secret content").unwrap();
    let store = notified(dir.path());
    store.put(&k("s/real"), b"real").await.unwrap();
    let base = store.root().join("s");
    symlink(&secret, base.join("to-file")).unwrap();
    symlink(outside.path(), base.join("to-dir")).unwrap();
    symlink(base.join("real"), base.join("to-sibling")).unwrap();
    symlink(outside.path().join("nothing"), base.join("dangling")).unwrap();
    for name in ["to-file", "to-dir", "to-sibling", "dangling"] {
        match store.get(&k(&format!("s/{name}")), 1 << 20).await {
            Err(StoreError::NotAFile { .. }) => {}
            other => panic!("get of a symlink {name}: expected NotAFile, got {other:?}"),
        }
    }
    // Listing does not fail because of them.
    let mut names = store.list(&k("s")).await.unwrap();
    names.sort();
    assert!(names.contains(&"real".to_owned()));
}

#[tokio::test]
async fn a_symlinked_directory_is_not_read_through() {
    let dir = tempdir();
    let outside = tempdir();
    std::fs::write(outside.path().join("head"), b"secret content").unwrap();
    let store = notified(dir.path());
    std::fs::create_dir_all(store.root().join("bob")).unwrap();
    symlink(outside.path(), store.root().join("bob/alice")).unwrap();
    let got = store.get(&k("bob/alice/head"), 1 << 20).await;
    assert!(!matches!(&got, Ok(Some(b)) if b == b"secret content"), "read through a symlinked directory: {got:?}");
    assert!(store.list(&k("bob/alice")).await.unwrap().is_empty(), "listed through a symlinked directory");
}

#[tokio::test]
async fn a_directory_where_a_file_should_be_is_an_error_not_a_panic() {
    let dir = tempdir();
    let store = notified(dir.path());
    std::fs::create_dir_all(store.root().join("d/obj/inner")).unwrap();
    match store.get(&k("d/obj"), 1 << 20).await {
        Err(StoreError::NotAFile { .. }) => {}
        other => panic!("get of a directory: expected NotAFile, got {other:?}"),
    }
    assert!(store.put(&k("d/obj"), b"x").await.is_err(), "put over a directory");
    assert!(store.root().join("d/obj/inner").is_dir(), "the directory is left alone");
    let _ = store.delete(&k("d/obj")).await; // an error or nothing; never a panic
    assert!(store.root().join("d/obj/inner").is_dir());
    // A regular file where a directory should be.
    std::fs::write(store.root().join("d/file"), b"f").unwrap();
    assert!(store.put(&k("d/file/x"), b"x").await.is_err(), "put below a file");
    let _ = store.get(&k("d/file/x"), 1 << 20).await; // an error or nothing; never a panic
    assert!(store.list(&k("d/file")).await.unwrap().is_empty());
    // Nothing left behind by the failed puts.
    let mut names = store.list(&k("d")).await.unwrap();
    names.sort();
    assert_eq!(names, vec!["file", "obj"]);
    let hidden: Vec<_> = std::fs::read_dir(store.root().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".~dmp-"))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
}

#[tokio::test]
async fn temporary_and_foreign_names_are_never_listed() {
    let dir = tempdir();
    let store = notified(dir.path());
    store.put(&k("t/0000000000000001-0000000000000001.msg"), b"m").await.unwrap();
    let d = store.root().join("t");
    for junk in [
        ".~dmp-0123456789abcdef.tmp",
        "0000000000000001-0000000000000001 (conflicted copy).msg",
        "0000000000000001-0000000000000001.sync-conflict-20260101-120000-ABCDEFG.msg",
        ".syncthing.head.tmp",
        "~syncthing~head.tmp",
        "Upper",
        "with space",
        "desktop.ini:stream",
        ".stversions",
    ] {
        std::fs::write(d.join(junk), b"junk").unwrap();
    }
    std::fs::create_dir(d.join(".hidden-dir")).unwrap();
    assert_eq!(store.list(&k("t")).await.unwrap(), vec!["0000000000000001-0000000000000001.msg"]);
}

#[test]
fn temporary_files_are_not_listed_while_puts_are_under_way() {
    let dir = tempdir();
    let store = notified(dir.path());
    let rt = || tokio::runtime::Builder::new_current_thread().build().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            rt().block_on(async {
                let big = vec![5u8; 256 << 10];
                for i in 0..100 {
                    store.put(&k(&format!("w/obj{}", i % 3)), &big).await.unwrap();
                }
            });
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        rt().block_on(async {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for n in store.list(&k("w")).await.unwrap() {
                    assert!(n.starts_with("obj"), "listed {n:?} during puts");
                }
            }
        });
    });
}

#[tokio::test]
async fn a_put_into_a_symlinked_directory_is_refused() {
    let dir = tempdir();
    let outside = tempdir();
    let store = notified(dir.path());
    std::fs::create_dir_all(store.root().join("alice")).unwrap();
    symlink(outside.path(), store.root().join("alice/bob")).unwrap();
    let r = store.put(&k("alice/bob/head"), b"h").await;
    assert!(r.is_err(), "put through a symlinked directory succeeded");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "something was written outside the store");
    // Also a symlink higher up.
    symlink(outside.path(), store.root().join("carol")).unwrap();
    assert!(store.put(&k("carol/dave/head"), b"h").await.is_err());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "something was written outside the store");
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_after_use_is_refused() {
    let dir = tempdir();
    let outside = tempdir();
    let store = notified(dir.path());
    store.put(&k("alice/bob/head"), b"h").await.unwrap();
    std::fs::remove_dir_all(store.root().join("alice/bob")).unwrap();
    symlink(outside.path(), store.root().join("alice/bob")).unwrap();
    let _ = store.put(&k("alice/bob/head"), b"h2").await;
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "wrote through a symlink planted later");
}

#[tokio::test]
async fn an_oversized_file_is_refused_without_reading_it_all() {
    let dir = tempdir();
    let store = notified(dir.path());
    std::fs::create_dir_all(store.root().join("o")).unwrap();
    std::fs::write(store.root().join("o/big"), vec![0u8; 1 << 20]).unwrap();
    match store.get(&k("o/big"), 1000).await {
        Err(StoreError::TooLarge { len, max, .. }) => assert_eq!((len, max), (Some(1 << 20), 1000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_store_path_below_a_regular_file_cannot_be_opened() {
    let dir = tempdir();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(FolderStore::open(file.join("store"), FolderOptions::default()).is_err());
    assert!(FolderStore::open(&file, FolderOptions::default()).is_err(), "a regular file is not a store");
}

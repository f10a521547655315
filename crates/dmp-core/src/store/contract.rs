//! The store contract: one suite of checks that every adapter must pass.
//! Run from the tests of each adapter (`tests/store_contract*.rs`) against
//! a fresh, empty store or prefix.

use super::{Key, Store};
use std::time::Duration;

fn k(s: &str) -> Key {
    Key::new(s.split('/')).expect("valid test key")
}

/// Runs every check against `store`, which must be empty below `base`.
/// Panics with a message naming `label` and the check on failure.
pub async fn run_all(store: &dyn Store, base: &str, label: &str) {
    put_get_delete(store, base, label).await;
    list_prefix(store, base, label).await;
    max_len(store, base, label).await;
    change_signal(store, base, label).await;
}

async fn put_get_delete(store: &dyn Store, base: &str, label: &str) {
    let key = k(&format!("{base}/a/b/0001.msg"));
    assert_eq!(store.get(&key, 1 << 20).await.unwrap(), None, "{label}: absent get is None");
    store.put(&key, b"hello").await.unwrap_or_else(|e| panic!("{label}: put: {e}"));
    assert_eq!(store.get(&key, 1 << 20).await.unwrap().as_deref(), Some(&b"hello"[..]), "{label}: get after put");
    store.delete(&key).await.unwrap_or_else(|e| panic!("{label}: delete: {e}"));
    assert_eq!(store.get(&key, 1 << 20).await.unwrap(), None, "{label}: get after delete");
    store.delete(&key).await.unwrap_or_else(|e| panic!("{label}: delete of absent key: {e}"));
    // Empty objects are objects.
    store.put(&key, b"").await.unwrap();
    assert_eq!(store.get(&key, 10).await.unwrap().as_deref(), Some(&b""[..]), "{label}: empty object");
    store.delete(&key).await.unwrap();
}

async fn list_prefix(store: &dyn Store, base: &str, label: &str) {
    let dir = k(&format!("{base}/l"));
    assert!(store.list(&dir).await.unwrap().is_empty(), "{label}: absent prefix lists empty");
    for n in ["x1", "x2", "sub/y"] {
        store.put(&k(&format!("{base}/l/{n}")), n.as_bytes()).await.unwrap();
    }
    let mut names = store.list(&dir).await.unwrap();
    names.sort();
    assert_eq!(names, vec!["sub", "x1", "x2"], "{label}: list shows objects and sub-prefixes");
    for n in ["x1", "x2", "sub/y"] {
        store.delete(&k(&format!("{base}/l/{n}"))).await.unwrap();
    }
}

async fn max_len(store: &dyn Store, base: &str, label: &str) {
    let key = k(&format!("{base}/big"));
    store.put(&key, &[7u8; 1000]).await.unwrap();
    assert!(store.get(&key, 999).await.is_err(), "{label}: object over max_len is an error");
    assert_eq!(store.get(&key, 1000).await.unwrap().map(|v| v.len()), Some(1000), "{label}: at max_len");
    store.delete(&key).await.unwrap();
}

async fn change_signal(store: &dyn Store, base: &str, label: &str) {
    let dir = k(&format!("{base}/w"));
    let mut ch = store.changes(&dir);
    // Let watchers settle before the change.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.put(&k(&format!("{base}/w/m")), b"x").await.unwrap();
    if store.notifies() {
        tokio::time::timeout(Duration::from_secs(10), ch.changed())
            .await
            .unwrap_or_else(|_| panic!("{label}: no change signal within 10 s of a put"));
    }
    store.delete(&k(&format!("{base}/w/m"))).await.unwrap();
}

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
    overwrite(store, base, label).await;
    binary_and_names(store, base, label).await;
    list_nested(store, base, label).await;
    atomic_put(store, base, label).await;
    overwrite_whole(store, base, label).await;
    atomic_put_many(store, base, label).await;
    listed_names_are_valid(store, base, label).await;
    absent_parent(store, base, label).await;
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

/// A put replaces the object (the `ack` and `head` files are rewritten).
async fn overwrite(store: &dyn Store, base: &str, label: &str) {
    let key = k(&format!("{base}/o/ack"));
    store.put(&key, b"first version").await.unwrap_or_else(|e| panic!("{label}: put: {e}"));
    store.put(&key, b"second").await.unwrap_or_else(|e| panic!("{label}: put over an object: {e}"));
    assert_eq!(store.get(&key, 1 << 20).await.unwrap().as_deref(), Some(&b"second"[..]), "{label}: put replaces");
    store.delete(&key).await.unwrap();
    assert_eq!(store.get(&key, 1 << 20).await.unwrap(), None, "{label}: a deleted object reads as None");
}

/// Every byte value survives; every character a key may hold works; a
/// zero `max_len` still reads an empty object.
async fn binary_and_names(store: &dyn Store, base: &str, label: &str) {
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 1024 + 7).collect();
    let key = k(&format!("{base}/n/a_b-c.0001.d"));
    store.put(&key, &data).await.unwrap_or_else(|e| panic!("{label}: put binary: {e}"));
    let got = store.get(&key, data.len() as u64).await.unwrap().expect("present");
    assert!(got == data, "{label}: binary round trip ({} bytes back of {})", got.len(), data.len());
    store.delete(&key).await.unwrap();
    let empty = k(&format!("{base}/n/empty"));
    store.put(&empty, b"").await.unwrap();
    assert_eq!(store.get(&empty, 0).await.unwrap().as_deref(), Some(&b""[..]), "{label}: empty object at max_len 0");
    assert!(store.get(&k(&format!("{base}/n/x")), 0).await.unwrap().is_none(), "{label}: absent at max_len 0");
    store.delete(&empty).await.unwrap();
}

/// `list` shows one level only, and an object listed as a prefix is empty.
async fn list_nested(store: &dyn Store, base: &str, label: &str) {
    let deep = k(&format!("{base}/t/p/q/r/obj"));
    let flat = k(&format!("{base}/t/p/file"));
    store.put(&deep, b"d").await.unwrap();
    store.put(&flat, b"f").await.unwrap();
    let mut names = store.list(&k(&format!("{base}/t"))).await.unwrap();
    names.sort();
    assert_eq!(names, vec!["p"], "{label}: list one level");
    let mut names = store.list(&k(&format!("{base}/t/p"))).await.unwrap();
    names.sort();
    assert_eq!(names, vec!["file", "q"], "{label}: list objects and prefixes");
    assert!(store.list(&flat).await.unwrap().is_empty(), "{label}: an object listed as a prefix is empty");
    assert!(store.list(&k(&format!("{base}/t/none/x"))).await.unwrap().is_empty(), "{label}: deep absent prefix");
    store.delete(&deep).await.unwrap();
    store.delete(&flat).await.unwrap();
}

/// A reader polling while an object is written, then rewritten, sees
/// nothing, the whole first version or the whole second, never a part.
async fn atomic_put(store: &dyn Store, base: &str, label: &str) {
    const LEN: usize = 4 << 20;
    let key = k(&format!("{base}/atomic/obj"));
    let v1 = vec![0x11u8; LEN];
    let v2 = vec![0x22u8; LEN];
    let done = std::sync::atomic::AtomicBool::new(false);
    let writer = async {
        store.put(&key, &v1).await.unwrap_or_else(|e| panic!("{label}: put: {e}"));
        store.put(&key, &v2).await.unwrap_or_else(|e| panic!("{label}: put: {e}"));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let reader = async {
        let mut reads = 0u32;
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            match store.get(&key, LEN as u64).await {
                Ok(None) => {}
                Ok(Some(b)) => {
                    assert!(b == v1 || b == v2, "{label}: a reader saw a partial object of {} bytes", b.len());
                    reads += 1;
                }
                Err(e) => panic!("{label}: get during a put: {e}"),
            }
            if finished {
                break reads;
            }
            tokio::task::yield_now().await;
        }
    };
    let ((), reads) = tokio::join!(writer, reader);
    assert!(reads >= 1, "{label}: the object was readable after the puts");
    assert!(store.get(&key, LEN as u64).await.unwrap().as_deref() == Some(&v2[..]), "{label}: last put wins");
    store.delete(&key).await.unwrap();
}

/// Version `v` of a test object: `len` bytes, all derived from `v` and
/// `len` (both stored in the first 8 bytes), so that a torn read or a mix
/// of two versions shows.
fn version(v: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.max(8));
    out.extend_from_slice(&v.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    let mut x = v.wrapping_mul(0x9e37_79b9) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// The version number of `b`, or why it is not a whole version.
fn check_version(b: &[u8]) -> Result<u32, String> {
    if b.len() < 8 {
        return Err(format!("{} bytes, shorter than any version", b.len()));
    }
    let v = u32::from_be_bytes(b[..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")) as usize;
    if len != b.len() {
        return Err(format!("version {v} of {len} bytes read as {} bytes", b.len()));
    }
    if version(v, len) != b {
        return Err(format!("version {v} of {len} bytes has foreign content (mixed versions?)"));
    }
    Ok(v)
}

/// Sizes alternate between large and small, so a rewrite both grows and
/// shrinks the object.
fn version_len(v: u32) -> usize {
    if v % 2 == 0 { (512 << 10) + v as usize * 4099 } else { (64 << 10) + v as usize * 7 }
}

const VERSIONS: u32 = 12;
const MAX_VERSION_LEN: usize = (512 << 10) + VERSIONS as usize * 4099;

/// An overwriting put replaces the whole object: no tail of a longer
/// earlier version is left, nothing of a shorter one is mixed in.
async fn overwrite_whole(store: &dyn Store, base: &str, label: &str) {
    let key = k(&format!("{base}/ow/obj"));
    for (v, len) in [(1, 100 << 10), (2, 100), (3, 200 << 10), (4, 8)] {
        let data = version(v, len);
        store.put(&key, &data).await.unwrap_or_else(|e| panic!("{label}: put version {v}: {e}"));
        let got = store.get(&key, 1 << 20).await.unwrap_or_else(|e| panic!("{label}: get: {e}")).expect("present");
        match check_version(&got) {
            Ok(g) if g == v => {}
            Ok(g) => panic!("{label}: after putting version {v}, read version {g}"),
            Err(e) => panic!("{label}: after putting version {v}: {e}"),
        }
    }
    store.delete(&key).await.unwrap();
}

/// A reader polling while a writer puts many large, distinct versions of
/// one object sees nothing or one whole version, never part of one or a
/// mix. Reader and writer run as two futures on one task: real
/// concurrency for stores that await I/O; for stores whose calls block,
/// also run [`atomic_put_threaded`].
async fn atomic_put_many(store: &dyn Store, base: &str, label: &str) {
    let key = k(&format!("{base}/atomic-many/obj"));
    let done = std::sync::atomic::AtomicBool::new(false);
    let writer = async {
        for v in 1..=VERSIONS {
            store.put(&key, &version(v, version_len(v))).await.unwrap_or_else(|e| panic!("{label}: put: {e}"));
            tokio::task::yield_now().await;
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let reader = async {
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            match store.get(&key, MAX_VERSION_LEN as u64).await {
                Ok(None) => {}
                Ok(Some(b)) => {
                    if let Err(e) = check_version(&b) {
                        panic!("{label}: a reader saw a partial or mixed object: {e}");
                    }
                }
                Err(e) => panic!("{label}: get during puts: {e}"),
            }
            if finished {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(writer, reader);
    let last = store.get(&key, MAX_VERSION_LEN as u64).await.unwrap().expect("present");
    assert_eq!(check_version(&last), Ok(VERSIONS), "{label}: the last put wins");
    store.delete(&key).await.unwrap();
}

/// [`atomic_put_many`] with the writer and the reader on two threads (each
/// with its own runtime), for stores whose calls block. Call it outside
/// any async runtime. Returns how many whole versions the reader saw.
pub fn atomic_put_threaded(store: &dyn Store, base: &str, label: &str, versions: u32) -> usize {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let key = k(&format!("{base}/atomic-threaded/obj"));
    let max = (512 << 10) + versions as usize * 4099;
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            rt().block_on(async {
                for v in 1..=versions {
                    store.put(&key, &version(v, version_len(v))).await.unwrap_or_else(|e| panic!("{label}: put: {e}"));
                }
            });
            done.store(true, Ordering::SeqCst);
        });
        let reader = s.spawn(|| {
            rt().block_on(async {
                let mut seen = std::collections::BTreeSet::new();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    match store.get(&key, max as u64).await {
                        Ok(None) => {}
                        Ok(Some(b)) => match check_version(&b) {
                            Ok(v) => {
                                seen.insert(v);
                            }
                            Err(e) => panic!("{label}: a reader saw a partial or mixed object: {e}"),
                        },
                        Err(e) => panic!("{label}: get during puts: {e}"),
                    }
                    if finished {
                        break seen;
                    }
                }
            })
        });
        writer.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        reader.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    rt().block_on(async {
        let last = store.get(&key, max as u64).await.unwrap().expect("present");
        assert_eq!(check_version(&last), Ok(versions), "{label}: the last put wins");
        store.delete(&key).await.unwrap();
    });
    seen.len()
}

/// Every name a listing returns is a valid key component: no empty name,
/// no `.` or `..`, no trailing `/`, no prefix repeated as its own child.
async fn listed_names_are_valid(store: &dyn Store, base: &str, label: &str) {
    let keys = ["v/a", "v/b.msg", "v/sub/c", "v/sub/deeper/d", "v/sub/deeper/e-f_g.1"];
    for key in keys {
        store.put(&k(&format!("{base}/{key}")), key.as_bytes()).await.unwrap();
    }
    let mut dirs = vec![k(&format!("{base}/v"))];
    let mut found = Vec::new();
    while let Some(dir) = dirs.pop() {
        let names = store.list(&dir).await.unwrap_or_else(|e| panic!("{label}: list {dir}: {e}"));
        for n in names {
            assert!(super::is_valid_component(&n), "{label}: list {dir} returned the invalid name {n:?}");
            let child = dir.join(&n).expect("valid");
            match store.get(&child, 1 << 20).await {
                Ok(Some(_)) => found.push(child.as_str().strip_prefix(&format!("{base}/")).unwrap_or("").to_owned()),
                _ => dirs.push(child),
            }
        }
    }
    found.sort();
    assert_eq!(found, keys, "{label}: walking the listings finds every object once");
    for key in keys {
        store.delete(&k(&format!("{base}/{key}"))).await.unwrap();
    }
}

/// A key whose parent prefix does not exist reads as absent, deletes and
/// lists as empty, without an error.
async fn absent_parent(store: &dyn Store, base: &str, label: &str) {
    let key = k(&format!("{base}/no-such/parent/obj"));
    assert_eq!(store.get(&key, 1 << 20).await.unwrap_or_else(|e| panic!("{label}: get: {e}")), None, "{label}");
    store.delete(&key).await.unwrap_or_else(|e| panic!("{label}: delete below an absent prefix: {e}"));
    let parent = k(&format!("{base}/no-such/parent"));
    assert!(store.list(&parent).await.unwrap_or_else(|e| panic!("{label}: list: {e}")).is_empty(), "{label}");
}

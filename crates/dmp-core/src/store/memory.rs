//! An in-memory store, for unit tests and simulation only.

use super::{Changes, Key, Store, StoreError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Objects in a map; every change wakes every watcher.
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    watchers: Mutex<Vec<(Key, std::sync::Weak<Notify>)>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every key currently stored, sorted (for tests).
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().expect("lock").keys().cloned().collect()
    }

    /// Replaces an object without notifying (for tests that tamper).
    pub fn tamper(&self, key: &str, data: Vec<u8>) {
        self.objects.lock().expect("lock").insert(key.to_owned(), data);
    }

    fn wake(&self, key: &Key) {
        let mut ws = self.watchers.lock().expect("lock");
        ws.retain(|(_, w)| w.strong_count() > 0);
        for (prefix, w) in ws.iter() {
            if key.starts_with(prefix) {
                if let Some(n) = w.upgrade() {
                    n.notify_one();
                }
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory store".into()
    }

    async fn put(&self, key: &Key, data: &[u8]) -> Result<(), StoreError> {
        self.objects.lock().expect("lock").insert(key.as_str().to_owned(), data.to_vec());
        self.wake(key);
        Ok(())
    }

    async fn get(&self, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let objs = self.objects.lock().expect("lock");
        match objs.get(key.as_str()) {
            None => Ok(None),
            Some(v) if v.len() as u64 > max_len => Err(StoreError::TooLarge {
                store: self.describe(),
                key: key.to_string(),
                len: Some(v.len() as u64),
                max: max_len,
            }),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.objects.lock().expect("lock").remove(key.as_str());
        self.wake(key);
        Ok(())
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<String>, StoreError> {
        let objs = self.objects.lock().expect("lock");
        let p = if prefix.is_root() { String::new() } else { format!("{}/", prefix.as_str()) };
        let mut out: Vec<String> = Vec::new();
        for k in objs.range(p.clone()..) {
            let Some(rest) = k.0.strip_prefix(&p) else { break };
            let name = rest.split('/').next().unwrap_or(rest).to_owned();
            if out.last() != Some(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn changes(&self, prefix: &Key) -> Changes {
        let n = Arc::new(Notify::new());
        self.watchers.lock().expect("lock").push((prefix.clone(), Arc::downgrade(&n)));
        Changes::new(n, Box::new(()))
    }

    fn notifies(&self) -> bool {
        true
    }
}

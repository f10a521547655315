//! The simulated store: every party sees its own outbox exactly and the
//! other party's files late, out of order, stale, partial or missing.
//!
//! A key belongs to the party named by its first component (`<me>/<peer>/...`
//! is `me`'s outbox). Each key keeps its recent versions (a delete is a
//! version without data), each with the instant it becomes visible to the
//! other party. The owner always sees the latest version. Another party
//! sees the latest version visible to it (newer writes win, as in a sync
//! client), except when a fault makes it read an older visible one.

use super::Env;
use crate::proto::dftp_msg::parse_chunk_object_name;
use crate::proto::mailbox::{Op, OpResult, parse_msg_name};
use crate::store::{Key, StoreError};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Clone, Debug)]
struct Version {
    data: Option<Bytes>,
    visible_at: Duration,
}

/// Versions kept per key (older ones can no longer be read stale).
const KEEP_VERSIONS: usize = 6;

/// The simulated store. Keys are strings so that conflict copies, whose
/// names are not valid [`Key`] components, can exist too.
#[derive(Default)]
pub struct SimStore {
    objects: BTreeMap<String, Vec<Version>>,
    /// Owner → instants at which a change of theirs becomes visible.
    visible: BTreeMap<String, BTreeSet<Duration>>,
    /// Owner → (change number, instant visible) of each change, in order.
    changes: BTreeMap<String, Vec<(u64, Duration)>>,
    /// Changes made so far.
    counter: u64,
}

fn owner(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

fn io(op: &'static str, key: &str) -> StoreError {
    StoreError::Io { store: "sim".into(), op, key: key.into(), msg: "injected transient error".into() }
}

/// A name a sync client would give a conflict copy of `name`; never a
/// protocol name.
fn conflict_name(env: &mut Env, name: &str) -> String {
    let (stem, ext) = match name.find('.') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ""),
    };
    match env.rng.u8(..3) {
        // Syncthing: lower case, a valid key component.
        0 => format!("{name}.sync-conflict-20260102-{:06}-abcdefg", env.rng.u32(..1_000_000)),
        // Dropbox: spaces, parentheses and capitals.
        1 => format!("{stem} (B's conflicted copy 2026-01-02){ext}"),
        // Something in between: valid characters, wrong shape.
        _ => format!("{stem}-conflict-{}{ext}", env.rng.u32(..100)),
    }
}

impl SimStore {
    pub fn new() -> SimStore {
        SimStore::default()
    }

    /// Performs `op` as party `viewer`.
    pub(crate) fn perform(&mut self, env: &mut Env, viewer: &str, op: Op) -> OpResult {
        env.op_latency();
        let res = self.perform_inner(env, viewer, op);
        if env.tracing() {
            let line = match &res {
                OpResult::Put(k, r) => format!("  {viewer} put {k} -> {}", short(r.as_ref().map(|_| String::new()))),
                OpResult::Deleted(k, r) => {
                    format!("  {viewer} delete {k} -> {}", short(r.as_ref().map(|_| String::new())))
                }
                OpResult::Got(k, r) => format!(
                    "  {viewer} get {k} -> {}",
                    short(r.as_ref().map(|o| o.as_ref().map_or("none".into(), |b| format!("{} B", b.len()))))
                ),
                OpResult::Listed(k, r) => {
                    format!("  {viewer} list {k} -> {}", short(r.as_ref().map(|n| format!("{n:?}"))))
                }
            };
            env.log(|| line);
        }
        res
    }

    fn perform_inner(&mut self, env: &mut Env, viewer: &str, op: Op) -> OpResult {
        let p_err = env.cfg.p_error;
        match op {
            Op::Put(k, data) => {
                if env.chance(p_err) {
                    let applied = env.rng.f64() < env.cfg.p_error_applied;
                    env.fault(|| format!("put {k} fails{}", if applied { " but takes effect" } else { "" }));
                    if applied {
                        self.put(env, viewer, &k, data);
                    }
                    return OpResult::Put(k.clone(), Err(io("put", k.as_str())));
                }
                self.put(env, viewer, &k, data);
                OpResult::Put(k, Ok(()))
            }
            Op::Delete(k) => {
                if env.chance(p_err) {
                    let applied = env.rng.f64() < env.cfg.p_error_applied;
                    env.fault(|| format!("delete {k} fails{}", if applied { " but takes effect" } else { "" }));
                    if applied {
                        self.delete(env, viewer, k.as_str());
                    }
                    return OpResult::Deleted(k.clone(), Err(io("delete", k.as_str())));
                }
                self.delete(env, viewer, k.as_str());
                OpResult::Deleted(k, Ok(()))
            }
            Op::Get(k, max) => {
                if env.chance(p_err) {
                    env.fault(|| format!("get {k} fails"));
                    return OpResult::Got(k.clone(), Err(io("get", k.as_str())));
                }
                let r = self.get(env, viewer, k.as_str(), max);
                OpResult::Got(k, r)
            }
            Op::List(k) => {
                if env.chance(p_err) {
                    env.fault(|| format!("list {k} fails"));
                    return OpResult::Listed(k.clone(), Err(io("list", k.as_str())));
                }
                let names = self.list(env, viewer, &k);
                OpResult::Listed(k, Ok(names))
            }
        }
    }

    fn push(&mut self, env: &mut Env, key: &str, data: Option<Bytes>) {
        let visible_at = env.now + env.visibility_delay();
        let versions = self.objects.entry(key.to_owned()).or_default();
        versions.push(Version { data, visible_at });
        if versions.len() > KEEP_VERSIONS {
            versions.remove(0);
        }
        self.visible.entry(owner(key).to_owned()).or_default().insert(visible_at);
        self.counter += 1;
        self.changes.entry(owner(key).to_owned()).or_default().push((self.counter, visible_at));
    }

    /// Changes made so far (to tell which ones a party has looked after).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    fn put(&mut self, env: &mut Env, viewer: &str, key: &Key, data: Bytes) {
        let k = key.as_str();
        if owner(k) != viewer {
            env.violation(format!("{viewer} wrote {k}, outside its own outbox"));
        }
        let name = key.name();
        let write_once = parse_msg_name(name).is_some() || parse_chunk_object_name(name).is_some();
        if write_once {
            if let Some(Some(old)) = self.objects.get(k).and_then(|v| v.last()).map(|v| &v.data) {
                if *old != data {
                    env.violation(format!("{viewer} rewrote write-once file {k} with different bytes"));
                }
            }
        }
        self.push(env, k, Some(data.clone()));
        if env.chance(env.cfg.p_conflict) {
            let c = conflict_name(env, name);
            let dir = &k[..k.len() - name.len()];
            let ck = format!("{dir}{c}");
            env.fault(|| format!("conflict copy {ck}"));
            self.push(env, &ck, Some(data));
        }
    }

    fn delete(&mut self, env: &mut Env, viewer: &str, key: &str) {
        if owner(key) != viewer {
            env.violation(format!("{viewer} deleted {key}, outside its own outbox"));
        }
        if self.objects.get(key).and_then(|v| v.last()).is_some_and(|v| v.data.is_some()) {
            self.push(env, key, None);
        }
    }

    /// The version `viewer` sees without faults: the owner the latest, any
    /// other party the latest visible (and the index of the visible ones).
    fn view<'a>(&'a self, env: &Env, viewer: &str, key: &str) -> Vec<&'a Version> {
        let Some(versions) = self.objects.get(key) else { return Vec::new() };
        if owner(key) == viewer {
            return versions.last().into_iter().collect();
        }
        versions.iter().filter(|v| v.visible_at <= env.now).collect()
    }

    fn get(&mut self, env: &mut Env, viewer: &str, key: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let visible: Vec<Version> = self.view(env, viewer, key).into_iter().cloned().collect();
        let Some(latest) = visible.last() else { return Ok(None) };
        let own = owner(key) == viewer;
        let mut data = latest.data.clone();
        if !own && visible.len() > 1 && env.chance(env.cfg.p_stale) {
            let i = env.rng.usize(..visible.len() - 1);
            data = visible[i].data.clone();
            env.fault(|| format!("stale read of {key} (version {} of {})", i + 1, visible.len()));
        }
        let Some(data) = data else { return Ok(None) };
        if !own {
            if env.chance(env.cfg.p_missing) {
                env.fault(|| format!("{key} reads as absent"));
                return Ok(None);
            }
            if !data.is_empty() && env.chance(env.cfg.p_truncated) {
                let n = env.rng.usize(..data.len());
                env.fault(|| format!("{key} reads truncated to {n} of {} bytes", data.len()));
                return Ok(Some(data[..n].to_vec()));
            }
            if !data.is_empty() && env.chance(env.cfg.p_placeholder) {
                env.fault(|| format!("{key} reads as a placeholder of zeros"));
                return Ok(Some(vec![0; data.len()]));
            }
        }
        if data.len() as u64 > max {
            return Err(StoreError::TooLarge {
                store: "sim".into(),
                key: key.into(),
                len: Some(data.len() as u64),
                max,
            });
        }
        Ok(Some(data.to_vec()))
    }

    fn list(&self, env: &Env, viewer: &str, prefix: &Key) -> Vec<String> {
        let p = if prefix.is_root() { String::new() } else { format!("{prefix}/") };
        let mut names = BTreeSet::new();
        for (k, _) in self.objects.range(p.clone()..).take_while(|(k, _)| k.starts_with(&p)) {
            let present = self.view(env, viewer, k).last().is_some_and(|v| v.data.is_some());
            if present {
                names.insert(k[p.len()..].split('/').next().unwrap_or("").to_owned());
            }
        }
        names.into_iter().collect()
    }

    /// When `viewer`, which last looked at instant `at` after change
    /// number `seen`, is next notified: the first change by someone else
    /// that was not visible to it then (for parties woken by notifications).
    pub fn next_visible(&self, viewer: &str, at: Duration, seen: u64) -> Option<Duration> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut first: Option<Duration> = None;
        let mut take = |t: Duration| first = Some(first.map_or(t, |f: Duration| f.min(t)));
        for (o, set) in &self.visible {
            if o.as_str() == viewer {
                continue;
            }
            if let Some(t) = set.range((Excluded(at), Unbounded)).next() {
                take(*t);
            }
            let list = &self.changes[o];
            for (_, t) in &list[list.partition_point(|(c, _)| *c <= seen)..] {
                take(*t);
            }
        }
        first.map(|t| t.max(at))
    }

    /// Names and sizes of the objects in `dir` as its owner sees them now.
    pub fn own_objects(&self, dir: &Key) -> Vec<(String, u64)> {
        let p = format!("{dir}/");
        self.objects
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .filter_map(|(k, v)| {
                let name = &k[p.len()..];
                let data = v.last()?.data.as_ref()?;
                (!name.contains('/')).then(|| (name.to_owned(), data.len() as u64))
            })
            .collect()
    }
}

fn short(r: Result<String, &StoreError>) -> String {
    match r {
        Ok(s) if s.is_empty() => "ok".into(),
        Ok(s) if s.len() > 160 => format!("{}...", s.chars().take(160).collect::<String>()),
        Ok(s) => s,
        Err(e) => format!("error: {e}"),
    }
}

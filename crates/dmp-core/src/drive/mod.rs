//! The async side: runs a protocol state machine against a [`Store`],
//! feeding it store results, change signals and the time.

use crate::id::PeerId;
use crate::keys::KeyError;
use crate::proto::mailbox::{Op, OpResult};
use crate::proto::ping::{PingClient, PingConfig, PingEvent, PingServer, PingSummary, ServerEvent};
use crate::store::{Changes, Key, Store, StoreError};
use security::Security;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

/// Performs one store operation.
pub async fn perform(store: &dyn Store, op: Op) -> OpResult {
    match op {
        Op::List(k) => {
            let r = store.list(&k).await;
            OpResult::Listed(k, r)
        }
        Op::Get(k, max) => {
            let r = store.get(&k, max).await;
            OpResult::Got(k, r)
        }
        Op::Put(k, data) => {
            let r = store.put(&k, &data).await;
            OpResult::Put(k, r)
        }
        Op::Delete(k) => {
            let r = store.delete(&k).await;
            OpResult::Deleted(k, r)
        }
    }
}

/// Microseconds since the Unix epoch: a fresh session number that is larger
/// than any earlier one from this machine.
pub fn fresh_session() -> u64 {
    let micros = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
    micros.max(1)
}

/// Monotonic time since the driver started, as the machines expect it.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
    pub fn instant(&self, at: Duration) -> Instant {
        self.0 + at
    }
}

/// How often to look at a store when nothing signals a change: quickly
/// right after activity, then backing off to a ceiling.
#[derive(Clone, Debug)]
pub struct Poller {
    pub min: Duration,
    pub max: Duration,
    current: Duration,
}

impl Poller {
    /// For a store with change notification, the poll is only a safety net.
    pub fn for_store(store: &dyn Store) -> Poller {
        if store.notifies() {
            Poller::new(Duration::from_secs(5), Duration::from_secs(5))
        } else {
            Poller::new(Duration::from_millis(20), Duration::from_secs(1))
        }
    }

    pub fn new(min: Duration, max: Duration) -> Poller {
        Poller { min, max, current: min }
    }

    /// Something happened: poll soon again.
    pub fn activity(&mut self) {
        self.current = self.min;
    }

    /// The delay before the next poll; each idle poll doubles it.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }
}

/// Waits for the first of: a change signal, the deadline, the poll timer.
/// Returns false when `shutdown` fired.
async fn wait(
    changes: &mut Changes,
    clock: &Clock,
    deadline: Option<Duration>,
    poll: Duration,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    let now = clock.now();
    let mut until = now + poll;
    if let Some(d) = deadline {
        until = until.min(d);
    }
    let sleep = tokio::time::sleep_until(clock.instant(until).into());
    tokio::select! {
        _ = changes.changed() => true,
        _ = sleep => true,
        _ = shutdown => false,
    }
}

/// Runs a ping client until it has sent `count` requests and heard back or
/// given up on each, or until `shutdown` completes.
///
/// With `security`, the client publishes its key, waits for the server's
/// (pinned beforehand or published), pins it on first contact and seals
/// everything; a changed key ends the run with an error.
pub async fn run_ping_client(
    store: &dyn Store,
    client: PeerId,
    server: PeerId,
    mut cfg: PingConfig,
    security: Option<Security>,
    mut on_event: impl FnMut(&PingEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<PingSummary, KeyError> {
    let clock = Clock::start();
    let mut shutdown = std::pin::pin!(shutdown);
    cfg.link.secure = security.is_some();
    if let Some(sec) = &security {
        if let Err(e) = sec.publish(store).await {
            tracing::warn!("cannot publish my key yet: {e}");
        }
    }
    let mut machine = PingClient::new(client, server.clone(), cfg, fresh_session(), clock.now());
    let mut changes = store.changes(&machine.watch_prefix());
    let mut poller = Poller::for_store(store);
    machine.wake(clock.now());
    let mut failure = None;
    loop {
        let mut active = false;
        if let (true, Some(sec)) = (machine.needs_key(), &security) {
            match sec.resolve(store, &server, &mut |n| on_event(&PingEvent::Key(n))).await {
                Ok(Some(c)) => machine.set_crypto(clock.now(), c),
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        loop {
            let ops = machine.take_ops();
            if ops.is_empty() {
                break;
            }
            for op in ops {
                let res = perform(store, op).await;
                machine.on_result(clock.now(), res);
            }
        }
        for ev in machine.take_events() {
            active |= matches!(ev, PingEvent::Reply { .. } | PingEvent::Sent { .. });
            on_event(&ev);
        }
        if machine.finished() {
            break;
        }
        if active {
            poller.activity();
        }
        let poll = poller.next_delay();
        if !wait(&mut changes, &clock, machine.deadline(), poll, &mut shutdown).await {
            break;
        }
        machine.wake(clock.now());
    }
    let summary = machine.summary();
    cleanup_link_dir(store, machine.link().out_dir()).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// True when `client` has a channel directory towards `me` (or when that
/// cannot be told, e.g. a read-only outbox that cannot be listed).
async fn talks_to(store: &dyn Store, client: &PeerId, me: &PeerId) -> bool {
    match store.list(&Key::new([client.as_str()]).expect("valid id")).await {
        Ok(names) => names.iter().any(|n| n == me.as_str()),
        Err(_) => true,
    }
}

/// Deletes every object in one of my channel directories (best effort).
pub async fn cleanup_link_dir(store: &dyn Store, dir: &Key) {
    if let Ok(names) = store.list(dir).await {
        for n in names {
            if let Ok(k) = dir.join(&n) {
                let _ = store.delete(&k).await;
            }
        }
    }
    let _ = store.sweep(dir).await;
}

/// Runs the ping server until `shutdown` completes, then removes its files.
///
/// With `security`, each client's key is resolved (and pinned on first
/// contact) once the client has a channel towards this server; a client
/// whose key changed is refused (logged) and ignored.
pub async fn run_ping_server(
    store: &dyn Store,
    me: PeerId,
    mut link: crate::proto::mailbox::LinkConfig,
    security: Option<Security>,
    mut on_event: impl FnMut(&ServerEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let clock = Clock::start();
    let mut shutdown = std::pin::pin!(shutdown);
    // Fail early, with a clear message, if the store cannot be used at all.
    store.list(&Key::root()).await?;
    link.secure = security.is_some();
    if let Some(sec) = &security {
        if let Err(e) = sec.publish(store).await {
            tracing::warn!("cannot publish my key yet: {e}");
        }
    }
    let mut refused: std::collections::BTreeSet<PeerId> = Default::default();
    let mut machine = PingServer::new(me.clone(), link, fresh_session());
    let mut changes = store.changes(&Key::root());
    let mut poller = Poller::for_store(store);
    machine.wake(clock.now());
    loop {
        let mut active = false;
        if let Some(sec) = &security {
            for client in machine.clients_needing_key() {
                if refused.contains(&client) || !talks_to(store, &client, &me).await {
                    continue;
                }
                match sec.resolve(store, &client, &mut |n| on_event(&ServerEvent::Key(n))).await {
                    Ok(Some(c)) => machine.set_client_crypto(clock.now(), &client, c),
                    Ok(None) => {}
                    Err(e) => {
                        on_event(&ServerEvent::KeyRefused { client: client.clone(), reason: e.to_string() });
                        refused.insert(client);
                    }
                }
            }
        }
        loop {
            let ops = machine.take_ops();
            if ops.is_empty() {
                break;
            }
            for op in ops {
                let res = perform(store, op).await;
                machine.on_result(clock.now(), res);
            }
        }
        for ev in machine.take_events() {
            active |= matches!(ev, ServerEvent::Answered { .. } | ServerEvent::NewClient(_));
            on_event(&ev);
        }
        if active {
            poller.activity();
        }
        let poll = poller.next_delay();
        if !wait(&mut changes, &clock, machine.deadline(), poll, &mut shutdown).await {
            break;
        }
        machine.wake(clock.now());
    }
    // Remove everything in my outbox.
    let mine = Key::new([me.as_str()]).expect("valid id");
    if let Ok(peers) = store.list(&mine).await {
        for p in peers {
            if let Ok(dir) = mine.join(&p) {
                cleanup_link_dir(store, &dir).await;
            }
        }
    }
    Ok(())
}

pub mod dftp;
pub mod security;

//! The async side: runs a protocol state machine against a [`Store`],
//! feeding it store results, change signals and the time.

use crate::id::PeerId;
use crate::keys::KeyError;
use crate::proto::mailbox::{LinkConfig, Op, OpResult};
use crate::proto::ping::{PingClient, PingConfig, PingEvent, PingServer, PingSummary, ServerEvent};
use crate::store::{Changes, Key, Store, StoreError};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

pub mod security;
use security::{KeyLooked, KeyPurpose, Security};

/// Performs one store operation.
pub async fn perform(store: &dyn Store, op: Op) -> OpResult {
    let start = Instant::now();
    let res = perform_op(store, op).await;
    tracing::trace!(target: "dmp::ops", "{} {} in {:.1} ms: {}", op_verb(&res), res.key(), start.elapsed().as_secs_f64() * 1e3, outcome(&res));
    res
}

fn op_verb(r: &OpResult) -> &'static str {
    match r {
        OpResult::Listed(..) => "list",
        OpResult::Got(..) => "get",
        OpResult::Put(..) => "put",
        OpResult::Deleted(..) => "delete",
    }
}

fn outcome(r: &OpResult) -> String {
    match r {
        OpResult::Listed(_, Ok(v)) => format!("{} names", v.len()),
        OpResult::Got(_, Ok(Some(b))) => format!("{} bytes", b.len()),
        OpResult::Got(_, Ok(None)) => "absent".into(),
        OpResult::Put(_, Ok(())) | OpResult::Deleted(_, Ok(())) => "ok".into(),
        OpResult::Listed(_, Err(e))
        | OpResult::Got(_, Err(e))
        | OpResult::Put(_, Err(e))
        | OpResult::Deleted(_, Err(e)) => e.to_string(),
    }
}

async fn perform_op(store: &dyn Store, op: Op) -> OpResult {
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
            let r = store.put_bytes(&k, data).await;
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
    /// After activity, the delay stops doubling at `hold` for `hold_polls`
    /// polls before it goes on to `max` (zero polls: no hold).
    hold: Duration,
    hold_polls: u32,
    hold_left: u32,
}

/// Polling of a store without change notification: for [`REMOTE_RAPID`]
/// after activity, again as soon as the previous look is answered (see
/// [`Pace`]); then every [`REMOTE_MIN`], doubling to [`REMOTE_MAX`]. An
/// idle party so costs one request per link every 2 s, plus the peer's head
/// every [`REMOTE_HEAD_EVERY`] (docs/PROTOCOL.md, section 6).
pub const REMOTE_MIN: Duration = Duration::from_millis(1);
pub const REMOTE_MAX: Duration = Duration::from_secs(2);
pub const REMOTE_RAPID: Duration = Duration::from_millis(20);
/// [`LinkConfig::head_every`] on a store without change notification.
pub const REMOTE_HEAD_EVERY: Duration = Duration::from_secs(5);
/// [`LinkConfig::readahead`] on a store without change notification: each
/// name fetched ahead and not there yet is a request; DFTP stages only a
/// few chunk messages at a time anyway.
pub const REMOTE_READAHEAD: u64 = 4;

impl Poller {
    /// For a store with change notification, the poll is only a safety net.
    pub fn for_store(store: &dyn Store) -> Poller {
        if store.notifies() {
            Poller::new(Duration::from_secs(5), Duration::from_secs(5))
        } else {
            Poller::new(REMOTE_MIN, REMOTE_MAX)
        }
    }

    pub fn new(min: Duration, max: Duration) -> Poller {
        Poller { min, max, current: min, hold: max, hold_polls: 0, hold_left: 0 }
    }

    /// For a file transfer: on a store without change notification, polls
    /// every [`TRANSFER_HOLD`] (at most) for [`TRANSFER_HOLD_FOR`] after
    /// activity before backing off. A sender waiting for the acknowledgement
    /// of staged chunks, or a receiver for the next chunk, expects it within
    /// a round trip or two; with plain doubling, the look after a 60 ms wait
    /// came only at 127 ms. Measured on SeaweedFS S3, 256 MiB: acks were read
    /// 60-160 ms after they were written, each window of 8 chunks a batch.
    pub fn for_transfer(store: &dyn Store) -> Poller {
        let mut p = Poller::for_store(store);
        if !store.notifies() {
            p.hold = TRANSFER_HOLD;
            p.hold_polls = (TRANSFER_HOLD_FOR.as_millis() / TRANSFER_HOLD.as_millis()) as u32;
        }
        p
    }

    /// Something happened: poll soon again.
    pub fn activity(&mut self) {
        self.current = self.min;
        self.hold_left = self.hold_polls;
    }

    /// The delay before the next poll; each idle poll doubles it (held at
    /// `hold` for a while after activity).
    pub fn next_delay(&mut self) -> Duration {
        if self.hold_left > 0 && self.current > self.hold {
            self.hold_left -= 1;
            return self.hold;
        }
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }
}

/// See [`Poller::for_transfer`].
pub const TRANSFER_HOLD: Duration = Duration::from_millis(10);
pub const TRANSFER_HOLD_FOR: Duration = Duration::from_secs(1);

/// The link settings for `store`: on a store without change notification
/// the peer's head is read at most every [`REMOTE_HEAD_EVERY`], so that an
/// idle link costs one request per poll most of the time, and fewer
/// messages are fetched ahead ([`REMOTE_READAHEAD`]).
pub fn link_config_for(store: &dyn Store) -> LinkConfig {
    let mut cfg = LinkConfig::default();
    if !store.notifies() {
        cfg.head_every = REMOTE_HEAD_EVERY;
        cfg.readahead = REMOTE_READAHEAD;
    }
    cfg
}

/// [`link_config_for`] for the ping tools: only the next message is
/// fetched. On a store without change notification each name fetched
/// ahead is a request; on a folder each is a failed open (with the checks
/// of its parents) that ran before the reply was written: 16 names ahead
/// made about 30 system calls on the way of every pong. Folder ping p50,
/// 200 pings, interleaved: 0.64-0.73 ms with 16 ahead, 0.50-0.57 ms with 1
/// on tmpfs; 0.81-0.83 against 0.63-0.72 ms on this machine's disk.
pub fn ping_link_config_for(store: &dyn Store) -> LinkConfig {
    let mut cfg = link_config_for(store);
    cfg.readahead = 1;
    cfg
}

/// Most store operations in flight at once per party.
pub const MAX_CONCURRENT_OPS: usize = 8;

type OpFuture<'a> = Pin<Box<dyn Future<Output = OpResult> + Send + 'a>>;

/// Runs store operations concurrently, at most `limit` at once, started in
/// the order they were queued; results come back as they complete. The
/// machines allow that: the mailbox keeps one write in flight per mutable
/// file (`head`, `ack`) and writes its messages one at a time and in order,
/// and every result is matched by its key, not by its order.
pub struct OpRunner<'a> {
    store: &'a dyn Store,
    limit: usize,
    queue: VecDeque<Op>,
    running: FuturesUnordered<OpFuture<'a>>,
    /// Operations queued so far, in all.
    pushed: u64,
    /// Look-ups of peers' keys under way, beside the operations.
    lookups: FuturesUnordered<KeyFuture<'a>>,
    looking: std::collections::BTreeSet<(PeerId, KeyPurpose)>,
}

type KeyFuture<'a> = Pin<Box<dyn Future<Output = KeyLooked> + Send + 'a>>;

/// What ended a driver's wait.
pub enum Woke {
    /// A store operation finished.
    Done(OpResult),
    /// A look-up of a peer's key finished.
    Key(KeyLooked),
    /// A change signal, the deadline or the poll timer: look again.
    Wake,
    /// The shutdown future completed.
    Shutdown,
}

impl<'a> OpRunner<'a> {
    pub fn new(store: &'a dyn Store, limit: usize) -> OpRunner<'a> {
        OpRunner {
            store,
            limit: limit.max(1),
            queue: VecDeque::new(),
            running: FuturesUnordered::new(),
            pushed: 0,
            lookups: FuturesUnordered::new(),
            looking: Default::default(),
        }
    }

    /// Starts looking up `peer`'s published key (see [`security::look_up`])
    /// unless such a look-up is under way; its result comes back from
    /// [`OpRunner::wait`] as [`Woke::Key`]. A key is never awaited in a
    /// driver's loop: one peer outbox that answers slowly (or never: a
    /// look-up may take the store's whole retry time) would stall every
    /// other peer, the interval and deadlines, and Ctrl-C.
    pub fn look_up_key(&mut self, peer: &PeerId, purpose: KeyPurpose, asker: Option<&PeerId>) {
        if self.looking.insert((peer.clone(), purpose)) {
            let (store, peer, asker) = (self.store, peer.clone(), asker.cloned());
            self.lookups.push(Box::pin(security::look_up(store, peer, purpose, asker)));
        }
    }

    /// True while a look-up of `peer`'s key for `purpose` is under way.
    pub fn looking_up(&self, peer: &PeerId, purpose: KeyPurpose) -> bool {
        self.looking.contains(&(peer.clone(), purpose))
    }

    /// Queues `op`, starting it at once if fewer than `limit` are running.
    pub fn push(&mut self, op: Op) {
        self.pushed += 1;
        self.queue.push_back(op);
        self.start();
    }

    fn start(&mut self) {
        while self.running.len() < self.limit {
            let Some(op) = self.queue.pop_front() else { break };
            self.running.push(Box::pin(perform(self.store, op)));
        }
    }

    /// Polls the running operations once, without waiting: hands new
    /// requests to the HTTP client before the caller spends milliseconds on
    /// CPU work (reading and hashing a chunk), and returns those that have
    /// finished (a folder store's finish at once). [`OpRunner::wait`] is
    /// what waits.
    pub fn kick(&mut self) -> Vec<OpResult> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut done = Vec::new();
        while let std::task::Poll::Ready(Some(res)) = self.running.poll_next_unpin(&mut cx) {
            done.push(res);
            self.start();
        }
        done
    }

    /// Operations queued or running.
    pub fn len(&self) -> usize {
        self.queue.len() + self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the first of: `shutdown`, an operation finishing, a change
    /// signal, the time `until`.
    pub async fn wait(
        &mut self,
        changes: &mut Changes,
        clock: &Clock,
        until: Duration,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Woke {
        let sleep = tokio::time::sleep_until(clock.instant(until).into());
        let running = !self.running.is_empty();
        let looking = !self.lookups.is_empty();
        tokio::select! {
            biased;
            _ = shutdown => Woke::Shutdown,
            Some(res) = self.running.next(), if running => {
                self.start();
                Woke::Done(res)
            }
            Some(k) = self.lookups.next(), if looking => {
                self.looking.remove(&(k.peer.clone(), k.purpose));
                Woke::Key(k)
            }
            _ = changes.changed() => Woke::Wake,
            _ = sleep => Woke::Wake,
        }
    }

    /// Drops the queued operations and lets the running ones finish (for at
    /// most `max`), so that a clean-up that follows is not raced by a late
    /// write.
    pub async fn settle(&mut self, max: Duration) {
        self.queue.clear();
        self.lookups = FuturesUnordered::new();
        self.looking.clear();
        let _ = tokio::time::timeout(max, async { while self.running.next().await.is_some() {} }).await;
        self.running = FuturesUnordered::new();
    }
}

/// Longest wait for running store operations before a clean-up.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// When a driver looks at the store next: when the [`Poller`]'s timer
/// fires, and on a store without change notification, within
/// [`REMOTE_RAPID`] of activity, also as soon as the requests of the
/// previous look are all answered. Such a look is paced by the round trip:
/// it happens only after a look that issued requests, so it is never a busy
/// loop (and the timer could not poll faster than its 1 ms resolution).
pub struct Pace {
    poller: Poller,
    poll_at: Option<Duration>,
    /// How long after activity looks may follow each other at once (zero: never).
    rapid_for: Duration,
    active_at: Option<Duration>,
    /// `OpRunner::pushed` when the last wake began, until its outputs are queued.
    wake_mark: Option<u64>,
    wake_issued: bool,
}

impl Pace {
    pub fn for_store(store: &dyn Store) -> Pace {
        Pace::new(Poller::for_store(store), Pace::rapid_for(store))
    }

    /// For a file transfer: see [`Poller::for_transfer`].
    pub fn for_transfer(store: &dyn Store) -> Pace {
        Pace::new(Poller::for_transfer(store), Pace::rapid_for(store))
    }

    fn rapid_for(store: &dyn Store) -> Duration {
        if store.notifies() { Duration::ZERO } else { REMOTE_RAPID }
    }

    pub fn new(poller: Poller, rapid_for: Duration) -> Pace {
        Pace { poller, poll_at: None, rapid_for, active_at: None, wake_mark: None, wake_issued: false }
    }

    /// Something happened at `now`: look again soon.
    pub fn activity(&mut self, now: Duration) {
        self.poller.activity();
        self.poll_at = None;
        self.active_at = Some(now);
    }

    /// A wake begins; the operations it leads to are queued before the next
    /// call to [`Pace::until`].
    pub fn woke(&mut self, ops: &OpRunner<'_>) {
        self.wake_mark = Some(ops.pushed);
    }

    /// The time of the next wake: the poll timer (chosen when the previous
    /// one has passed), the machine's `deadline`, or now for a rapid look.
    pub fn until(&mut self, now: Duration, deadline: Option<Duration>, ops: &OpRunner<'_>) -> Duration {
        if let Some(mark) = self.wake_mark.take() {
            self.wake_issued = ops.pushed > mark;
        }
        let hot = self.active_at.is_some_and(|t| now.saturating_sub(t) < self.rapid_for);
        if hot && self.wake_issued && ops.is_empty() {
            return now;
        }
        if self.poll_at.is_some_and(|t| t <= now) {
            self.poll_at = None;
        }
        let at = *self.poll_at.get_or_insert_with(|| now + self.poller.next_delay());
        deadline.map_or(at, |d| d.min(at))
    }
}

/// After a [`Woke::Wake`]: whether the machine should look again. Yes for
/// a timer (nothing signalled), for "anything", or for a change at or above
/// one of `keys` (the peer's outbox towards me, its key); a change among
/// other parties' files is skipped unless the machine's `deadline` has come.
/// With a hundred parties on one folder store this keeps each from reading
/// the store at every other party's write.
pub fn concerns(set: &crate::store::ChangeSet, keys: &[&Key], deadline: Option<Duration>, now: Duration) -> bool {
    set.is_empty() || keys.iter().any(|k| set.touches(k)) || deadline.is_some_and(|d| d <= now)
}

/// How [`check_outbox`] ended when the store took the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Started {
    Ready,
    /// `shutdown` completed first.
    Interrupted,
}

/// The start-up check of every tool, after the store was listed: my key is
/// published in my outbox, a write, so that a store that takes no writes
/// (mounted read-only, permission denied) is an error now instead of lost
/// messages later. The error says what the store answered; the DFTP tools
/// stop at any error, the ping tools at one that no retry can mend (see
/// [`StoreError::is_transient`]). Without `security` (plaintext) nothing
/// is written here.
pub(crate) async fn check_outbox(
    store: &dyn Store,
    security: Option<&Security>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Started, StoreError> {
    let Some(sec) = security else { return Ok(Started::Ready) };
    // (A store that does not answer may take its whole retry time.)
    tokio::select! {
        r = sec.publish(store) => r.map(|()| Started::Ready),
        () = shutdown => Ok(Started::Interrupted),
    }
}

/// [`check_outbox`] for the ping tools, which outlive outages: a failure
/// that a retry may mend is logged and the run goes on (the key is
/// published again later); one that no retry can mend is the error.
/// `Ok(None)` when interrupted, else whether my key was written.
async fn check_outbox_for_ping(
    store: &dyn Store,
    security: Option<&Security>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<bool>, StoreError> {
    match check_outbox(store, security, shutdown).await {
        Ok(Started::Ready) => Ok(Some(security.is_some())),
        Ok(Started::Interrupted) => Ok(None),
        Err(e) if e.is_transient() => {
            tracing::warn!("cannot publish my key yet: {e} (retrying)");
            Ok(Some(false))
        }
        Err(e) => Err(e),
    }
}

/// Runs a ping client until it has sent `count` requests and heard back or
/// given up on each, or until `shutdown` completes.
///
/// With `security`, the client publishes its key, waits for the server's
/// (pinned beforehand or published), pins it on first contact and seals
/// everything; a changed key ends the run with an error, and so does a
/// store that refuses to publish the key for good ([`check_outbox`]:
/// read-only, access denied), before any request.
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
    let interrupted = check_outbox_for_ping(store, security.as_ref(), &mut shutdown).await?.is_none();
    let mut machine = PingClient::new(client, server.clone(), cfg, fresh_session(), clock.now());
    let mut changes = store.changes(&machine.watch_prefix());
    let server_key = Key::new([server.as_str(), crate::keys::KEY_FILE])?;
    let mut pace = Pace::for_store(store);
    let mut ops = OpRunner::new(store, MAX_CONCURRENT_OPS);
    machine.wake(clock.now());
    let mut failure = None;
    let mut key = security::PeerKey::default();
    let mut outage = Outage::default();
    // Said once: why requests go unanswered while the server's key is missing.
    let mut key_hint = false;
    let mut hint_no_key = |machine: &PingClient| {
        if security.is_some() && machine.needs_key() && !key_hint {
            key_hint = true;
            tracing::warn!("{}", no_key_hint(&server));
        }
    };
    loop {
        if interrupted {
            break;
        }
        if security.is_some() {
            key.look(&mut ops, &server, machine.needs_key(), clock.now());
        }
        for op in machine.take_ops() {
            ops.push(op);
        }
        let mut active = false;
        for ev in machine.take_events() {
            active |= matches!(ev, PingEvent::Reply { .. } | PingEvent::Sent { .. });
            match &ev {
                PingEvent::Rejected { reason, .. } => {
                    // The server's replies stopped opening: it may have a new key.
                    key.rejected(clock.now(), reason);
                    on_event(&ev);
                }
                // Once per outage; the rest only at debug level.
                PingEvent::StoreError(e) if outage.reported || !outage.new_warning(clock.now(), &e.to_string()) => {
                    tracing::debug!("{e} (still retrying)")
                }
                PingEvent::StoreError(_) => {
                    outage.reported = true;
                    on_event(&ev);
                }
                PingEvent::Lost { .. } => {
                    on_event(&ev);
                    hint_no_key(&machine);
                }
                _ => on_event(&ev),
            }
        }
        if machine.finished() {
            break;
        }
        if active {
            pace.activity(clock.now());
        }
        let until = pace.until(clock.now(), key.deadline(machine.deadline(), machine.needs_key()), &ops);
        match ops.wait(&mut changes, &clock, until, &mut shutdown).await {
            Woke::Done(res) => {
                let now = clock.now();
                if let Some(secs) = outage.track(now, &res) {
                    tracing::info!("the store answers again after {secs:.1} s; going on");
                }
                machine.on_result(now, res)
            }
            Woke::Key(k) => {
                let Some(sec) = &security else { continue };
                let now = clock.now();
                match key.looked(sec, k, now, &mut |n| on_event(&PingEvent::Key(n))) {
                    Ok(Some(c)) => machine.set_crypto(now, c),
                    Ok(None) => {}
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            Woke::Wake => {
                let now = clock.now();
                let set = changes.take();
                key.changed(&set, &server_key);
                if concerns(&set, &[&machine.watch_prefix(), &server_key], machine.deadline(), now) {
                    pace.woke(&ops);
                    machine.wake(now);
                }
            }
            Woke::Shutdown => break,
        }
    }
    if failure.is_none() {
        hint_no_key(&machine);
    }
    let summary = machine.summary();
    ops.settle(SETTLE).await;
    cleanup_link_dir(store, machine.link().out_dir()).await;
    if let Some(sec) = &security {
        let _ = crate::keys::unpublish(store, &sec.me).await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Why a secure ping client made requests it could not write: the server
/// publishes its key while it runs and removes it when it stops.
fn no_key_hint(server: &PeerId) -> String {
    format!(
        "{server} publishes no key in this store, so no request could be sealed: no dmp-ping-server {server} \
         runs on this store, its key has not synced here yet, or it runs with --insecure-plaintext"
    )
}

/// Deletes every object in one of my channel directories (best effort),
/// and what interrupted writes left there.
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

/// Settings of a ping server.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    pub link: LinkConfig,
    /// Clients served from the start without being found by listing: those
    /// whose outbox is read elsewhere (read-only HTTP cannot be listed).
    pub known_clients: Vec<PeerId>,
    /// Least time between two listings of the store root for new clients.
    pub discover_every: Duration,
    /// Least time between two looks at parties that are not talking to
    /// me: found by a listing without a head towards me, or whose runs
    /// ended (see [`PingServer`]).
    pub sweep_every: Duration,
}

impl ServerOptions {
    /// Defaults for `store`: [`ping_link_config_for`], and on a store
    /// without change notification a listing at most every [`REMOTE_HEAD_EVERY`].
    pub fn for_store(store: &dyn Store) -> ServerOptions {
        ServerOptions {
            link: ping_link_config_for(store),
            known_clients: Vec::new(),
            discover_every: if store.notifies() { Duration::ZERO } else { REMOTE_HEAD_EVERY },
            // A look is one request: on a polled store the sweep adds at
            // most one a second, however many parties it looks at.
            sweep_every: if store.notifies() { Duration::from_millis(100) } else { SWEEP_EVERY_REMOTE },
        }
    }
}

/// Least time between two looks of a ping server's sweep on a store
/// without change notification.
pub const SWEEP_EVERY_REMOTE: Duration = Duration::from_secs(1);

/// How often a ping server on a store that says what changed still wakes
/// every client's link (a safety net for a missed notification).
const FULL_WAKE_EVERY: Duration = Duration::from_secs(2);

/// How often a ping server checks that its published key is still there
/// (one read; on a folder a removal is also seen at once).
pub const KEY_REPUBLISH_EVERY: Duration = Duration::from_secs(30);

/// Runs the ping server until `shutdown` completes, then removes its files.
///
/// With `security`, each client's key is resolved (and pinned on first
/// contact) once the client has a channel towards this server; a client
/// whose key changed is refused (logged) and ignored.
///
/// The server outlives outages of its store (a sync client restarting, a
/// share remounting, a WebDAV server restarting): failed operations are
/// retried with the links' back-off (up to [`LinkConfig::max_backoff`]);
/// only the first failure of an outage is passed to `on_event`, and its
/// end is logged. When the store comes back without this server's files
/// (the folder was removed and recreated, the share remounted empty), the
/// server starts afresh, as a restarted server would: a new session, its
/// key published again, a fresh watch on the store.
pub async fn run_ping_server(
    store: &dyn Store,
    me: PeerId,
    mut opts: ServerOptions,
    security: Option<Security>,
    mut on_event: impl FnMut(&ServerEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let clock = Clock::start();
    let mut shutdown = std::pin::pin!(shutdown);
    // Fail early, with a clear message, if the store cannot be used at all:
    // it cannot be listed, or it refuses my writes for good.
    store.list(&Key::root()).await?;
    opts.link.secure = security.is_some();
    let Some(mut key_published) = check_outbox_for_ping(store, security.as_ref(), &mut shutdown).await? else {
        return Ok(());
    };
    let mut wrote_mine = key_published;
    let mut refused: std::collections::BTreeSet<PeerId> = Default::default();
    let mut key_next: std::collections::BTreeMap<PeerId, (Duration, Duration)> = Default::default();
    // The last failure to read each client's key, reported once.
    let mut key_errors: std::collections::BTreeMap<PeerId, String> = Default::default();
    // Clients whose files stopped opening: their published key is compared
    // with the pinned one again.
    let mut rechecks: std::collections::BTreeMap<PeerId, security::KeyRecheck> = Default::default();
    let new_machine = |now: Duration| {
        let mut m = PingServer::new(me.clone(), opts.link.clone(), fresh_session())
            .with_discover_every(opts.discover_every)
            .with_sweep_every(opts.sweep_every);
        for c in &opts.known_clients {
            m.add_client(now, c.clone());
        }
        m
    };
    let mut machine = new_machine(clock.now());
    let mut changes = store.changes(&Key::root());
    let mut pace = Pace::for_store(store);
    let mut ops = OpRunner::new(store, MAX_CONCURRENT_OPS);
    machine.wake(clock.now());
    let mut last_key_check: Option<Duration> = None;
    let my_key = Key::new([me.as_str(), crate::keys::KEY_FILE]).expect("valid id");
    let mut last_republish = clock.now();
    let key_check_every = if store.notifies() { Duration::from_millis(100) } else { Duration::from_secs(2) };
    let mut outage = Outage::default();
    let mut last_full = clock.now();
    // My head files written so far: if one is gone, the store lost my files.
    let mut heads: std::collections::BTreeSet<Key> = Default::default();
    let mut check_lost = false;
    let (mut restart_ok_at, mut restart_delay) = (Duration::ZERO, RESTART_DELAY_FIRST);
    let mut rewatch = false;
    loop {
        if rewatch && wrote_mine {
            rewatch = false;
            changes = store.changes(&Key::root());
        }
        // (At most once per `restart_delay`, which grows while restarts
        // follow each other: a store whose listings never show my files
        // would otherwise restart the server at every listing.)
        if std::mem::take(&mut check_lost) && clock.now() >= restart_ok_at && lost_my_files(store, &me, &heads).await {
            restart_ok_at = clock.now() + restart_delay;
            restart_delay = (restart_delay * 2).min(RESTART_DELAY_MOST);
            tracing::warn!(
                "the store lost this server's files (removed and recreated, or remounted?); \
                 starting afresh with a new session"
            );
            ops.settle(SETTLE).await;
            key_published = publish_key(store, &security).await;
            wrote_mine = key_published;
            heads.clear();
            key_next.clear();
            last_key_check = None;
            machine = new_machine(clock.now());
            // A watch on a directory that was replaced sees nothing more:
            // watch again once the store takes writes (it may still be gone).
            rewatch = true;
            pace.activity(clock.now());
            machine.wake(clock.now());
        }
        // My published key may have gone (removed by hand, by a party that
        // took my id, or with the store in a race that left my head in
        // place): clients that have not pinned it yet could not reach me.
        // It is looked at again every so often (one read), and at once when
        // the store says it changed.
        if key_published && clock.now().saturating_sub(last_republish) >= KEY_REPUBLISH_EVERY {
            key_published = false;
        }
        let check_keys = last_key_check.is_none_or(|t| clock.now().saturating_sub(t) >= key_check_every);
        if check_keys && security.is_some() {
            last_key_check = Some(clock.now());
            if !key_published {
                last_republish = clock.now();
                key_published = publish_key(store, &security).await;
                wrote_mine |= key_published;
            }
            let now = clock.now();
            for (client, r) in rechecks.iter_mut() {
                if r.due(now) {
                    ops.look_up_key(client, KeyPurpose::Recheck, None);
                }
            }
            for client in machine.clients_needing_key() {
                // A client whose key is not there yet (or whose outbox cannot
                // be reached) is looked up again after a growing pause.
                if key_next.get(&client).is_some_and(|(at, _)| *at > now)
                    || refused.contains(&client)
                    || ops.looking_up(&client, KeyPurpose::Resolve)
                {
                    continue;
                }
                ops.look_up_key(&client, KeyPurpose::Resolve, Some(&me));
            }
        }
        for op in machine.take_ops() {
            ops.push(op);
        }
        let mut active = false;
        for ev in machine.take_events() {
            active |= matches!(ev, ServerEvent::Answered { .. } | ServerEvent::NewClient(_));
            if matches!(ev, ServerEvent::NewClient(_)) {
                last_key_check = None; // look its key up at once
            }
            match &ev {
                // Once per outage; the rest only at debug level.
                ServerEvent::StoreError(e) if outage.reported || !outage.new_warning(clock.now(), &e.to_string()) => {
                    tracing::debug!("{e} (still retrying)")
                }
                ServerEvent::StoreError(_) => {
                    outage.reported = true;
                    on_event(&ev);
                }
                ServerEvent::Rejected { key, reason } if outage.since.is_some() => {
                    tracing::debug!("cannot read {key} yet: {reason}")
                }
                ServerEvent::Rejected { key, reason } => {
                    // A file in a client's outbox towards me.
                    let client = key.as_str().split('/').next().and_then(|c| PeerId::new(c).ok());
                    if let Some(c) = client.filter(|c| !refused.contains(c) && c != &me) {
                        rechecks.entry(c).or_default().rejected(clock.now(), reason);
                        if crate::crypto::is_open_failure(reason) {
                            last_key_check = None;
                        }
                    }
                    on_event(&ev);
                }
                _ => on_event(&ev),
            }
        }
        if active {
            pace.activity(clock.now());
        }
        let until = pace.until(clock.now(), machine.deadline(), &ops);
        match ops.wait(&mut changes, &clock, until, &mut shutdown).await {
            Woke::Done(res) => {
                let now = clock.now();
                match &res {
                    OpResult::Put(k, Ok(())) => {
                        wrote_mine = true;
                        if k.name() == crate::proto::mailbox::HEAD_NAME {
                            heads.insert(k.clone());
                        }
                    }
                    // A listing without my directory, after I wrote into it.
                    OpResult::Listed(k, Ok(names)) if k.is_root() && wrote_mine => {
                        if names.iter().any(|n| n == me.as_str()) {
                            restart_delay = RESTART_DELAY_FIRST;
                        } else {
                            check_lost = true;
                        }
                    }
                    _ => {}
                }
                if let Some(secs) = outage.track(now, &res) {
                    tracing::info!("the store answers again after {secs:.1} s; going on");
                    check_lost = true;
                }
                machine.on_result(now, res)
            }
            Woke::Key(k) => {
                let (Some(sec), false) = (&security, refused.contains(&k.peer)) else { continue };
                let client = k.peer;
                match k.purpose {
                    KeyPurpose::Recheck => {
                        if let Err(e) = sec.compare(&client, k.published) {
                            // A changed key: that client is not served any more
                            // (its link is dropped; found again, it waits for a key
                            // it will not get), the others go on.
                            on_event(&ServerEvent::KeyRefused { client: client.clone(), reason: e.to_string() });
                            refused.insert(client.clone());
                            rechecks.remove(&client);
                            machine.drop_client(&client);
                        }
                    }
                    // Not talking to me (yet): looked at again at the next check.
                    KeyPurpose::Resolve if !k.talks => {}
                    KeyPurpose::Resolve => {
                        if !machine.clients_needing_key().contains(&client) {
                            continue; // dropped meanwhile, or the store lost my files
                        }
                        if let Err(e) = &k.published {
                            let msg = e.to_string();
                            if key_errors.get(&client) != Some(&msg) {
                                tracing::warn!("cannot read the key of {client} yet: {msg} (retrying)");
                                key_errors.insert(client.clone(), msg);
                            }
                        }
                        match sec.decide(&client, k.published, &mut |n| on_event(&ServerEvent::Key(n))) {
                            Ok(Some(c)) => {
                                key_next.remove(&client);
                                key_errors.remove(&client);
                                machine.set_client_crypto(clock.now(), &client, c)
                            }
                            Ok(None) => {
                                let delay = key_next.get(&client).map_or(Duration::from_millis(500), |(_, d)| *d * 2);
                                let delay = delay.min(Duration::from_secs(60));
                                key_next.insert(client.clone(), (clock.now() + delay, delay));
                            }
                            Err(e) => {
                                on_event(&ServerEvent::KeyRefused { client: client.clone(), reason: e.to_string() });
                                refused.insert(client);
                            }
                        }
                    }
                }
            }
            Woke::Wake => {
                pace.woke(&ops);
                let now = clock.now();
                let set = changes.take();
                if !set.all && set.touches(&my_key) && security.is_some() {
                    key_published = false;
                    last_key_check = None;
                }
                // A client waiting for its key (or for its outbox to me,
                // which comes with its first ping) is looked up again as
                // soon as its files change, not at the next periodic check.
                // (Only for changes with paths: a poll of a store that cannot
                // say what changed would look every client up at every poll.)
                if security.is_some()
                    && !set.all
                    && machine
                        .clients_needing_key()
                        .iter()
                        .any(|c| !key_next.contains_key(c) && Key::new([c.as_str()]).is_ok_and(|k| set.touches(&k)))
                {
                    last_key_check = None;
                }
                // Now and then (and on every poll of a store that cannot say
                // what changed) every link looks, and the root is listed.
                if set.all || now.saturating_sub(last_full) >= FULL_WAKE_EVERY {
                    last_full = now;
                    machine.wake(now);
                } else {
                    machine.wake_changed(now, &set);
                }
            }
            Woke::Shutdown => break,
        }
    }
    ops.settle(SETTLE).await;
    // Remove everything in my outbox.
    let mine = Key::new([me.as_str()]).expect("valid id");
    if let Ok(peers) = store.list(&mine).await {
        for p in peers {
            if let Ok(dir) = mine.join(&p) {
                cleanup_link_dir(store, &dir).await;
            }
        }
    }
    if let Some(sec) = &security {
        let _ = crate::keys::unpublish(store, &sec.me).await;
    }
    Ok(())
}

/// Pause after a restart of the ping server because the store lost its
/// files, before the next such restart; doubles while they follow each
/// other, up to [`RESTART_DELAY_MOST`].
const RESTART_DELAY_FIRST: Duration = Duration::from_secs(1);
const RESTART_DELAY_MOST: Duration = Duration::from_secs(60);

/// Publishes my key (if any) again; true when it was written. A failure
/// is logged at debug level (it is retried).
async fn publish_key(store: &dyn Store, security: &Option<Security>) -> bool {
    let Some(sec) = security else { return false };
    match sec.publish(store).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("cannot publish my key yet: {e}");
            false
        }
    }
}

/// The store's error in its answer to `res`, if it failed.
pub(crate) fn op_error(res: &OpResult) -> Option<&StoreError> {
    match res {
        OpResult::Listed(_, r) => r.as_ref().err(),
        OpResult::Got(_, r) => r.as_ref().err(),
        OpResult::Put(_, r) | OpResult::Deleted(_, r) => r.as_ref().err(),
    }
}

/// Whether the store holds none of what this server wrote: its directory
/// is missing from the root, or one of its head files is. A store that
/// cannot be asked has not lost anything (yet).
async fn lost_my_files(store: &dyn Store, me: &PeerId, heads: &std::collections::BTreeSet<Key>) -> bool {
    if let Ok(names) = store.list(&Key::root()).await {
        if !names.iter().any(|n| n == me.as_str()) {
            return true;
        }
    }
    for k in heads {
        if let Ok(None) = store.get(k, crate::wire::MAX_ENVELOPE_LEN as u64).await {
            return true;
        }
    }
    false
}

/// A run of failed store operations, from the first failure to the first
/// success after it: a driver warns of its first failure only, and logs its
/// end (the ping tools and both DFTP drivers).
#[derive(Default)]
pub(crate) struct Outage {
    pub(crate) since: Option<Duration>,
    /// The first failure was passed on.
    pub(crate) reported: bool,
    /// For [`Outage::observe`]: reads (list, get) and writes (put, delete)
    /// that failed and have not succeeded since.
    failing: [bool; 2],
    /// Failures warned of, and when (see [`Outage::new_warning`]).
    warned: std::collections::HashMap<String, Duration>,
}

/// The same failure is warned of again only after this long.
const WARN_AGAIN_AFTER: Duration = Duration::from_secs(60);

impl Outage {
    pub(crate) fn failed(&mut self, now: Duration) {
        self.since.get_or_insert(now);
    }

    /// A success: the outage's length in seconds, if one was under way.
    pub(crate) fn ended(&mut self, now: Duration) -> Option<f64> {
        let since = self.since.take()?;
        self.reported = false;
        Some(now.saturating_sub(since).as_secs_f64())
    }

    /// Notes the store's answer to one operation and logs it: the first
    /// failure of an outage is a warning, the others of the same outage are
    /// logged at debug level only; its end is an info line.
    pub(crate) fn observe(&mut self, now: Duration, res: &OpResult) {
        match self.note(now, res) {
            OutageNote::Began(e) => {
                tracing::warn!("the store fails: {e} (retrying; not reported again until it answers)")
            }
            OutageNote::Still(e) => tracing::debug!("{e} (still retrying)"),
            OutageNote::Ended(secs) => tracing::info!("the store answers again after {secs:.1} s; going on"),
            OutageNote::Fine => {}
        }
    }

    /// What [`Outage::observe`] logs. The outage ends once each kind of
    /// operation that failed (reads, writes) has succeeded again: while only
    /// writes fail, the reads that still work do not end it (which would
    /// warn again at the next failed write).
    fn note(&mut self, now: Duration, res: &OpResult) -> OutageNote {
        let ended = self.track(now, res);
        match op_error(res) {
            Some(e) if std::mem::replace(&mut self.reported, true) => OutageNote::Still(e.to_string()),
            Some(e) if !self.new_warning(now, &e.to_string()) => OutageNote::Still(e.to_string()),
            Some(e) => OutageNote::Began(e.to_string()),
            None => ended.map_or(OutageNote::Fine, OutageNote::Ended),
        }
    }

    /// True when `msg` was not warned of in the last minute, and notes it
    /// now. One write that fails for good (a directory planted where a
    /// party's `head` goes) while its other writes succeed ends an outage
    /// at each of those, and began another at each retry: a warning every
    /// second or so, for as long as the run lasted.
    pub(crate) fn new_warning(&mut self, now: Duration, msg: &str) -> bool {
        if self.warned.len() >= 64 {
            self.warned.retain(|_, t| now.saturating_sub(*t) < WARN_AGAIN_AFTER);
        }
        match self.warned.get(msg) {
            Some(t) if now.saturating_sub(*t) < WARN_AGAIN_AFTER => false,
            _ => {
                self.warned.insert(msg.to_string(), now);
                true
            }
        }
    }

    /// Notes the store's answer to one operation without logging (the
    /// caller reports the first failure through `reported`): the outage's
    /// length in seconds when this answer ended one. As in
    /// [`Outage::note`], it ends once each kind of operation that failed
    /// has succeeded again: a ping client whose writes failed for good
    /// (a directory where its `head` goes) while its reads worked warned
    /// at every retry, each read having ended the "outage".
    pub(crate) fn track(&mut self, now: Duration, res: &OpResult) -> Option<f64> {
        let class = usize::from(matches!(res, OpResult::Put(..) | OpResult::Deleted(..)));
        if op_error(res).is_some() {
            self.failed(now);
            self.failing[class] = true;
            return None;
        }
        self.failing[class] = false;
        if self.failing == [false; 2] { self.ended(now) } else { None }
    }
}

#[derive(Debug, PartialEq)]
enum OutageNote {
    Began(String),
    Still(String),
    Ended(f64),
    Fine,
}

pub mod dftp;

#[cfg(test)]
mod tests {
    use super::*;

    /// A DFTP store outage is one warning and one info line, however many
    /// requests fail meanwhile; reads that still work while writes fail do
    /// not end it.
    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let k = Key::new(["bob", "alice", "ack"]).unwrap();
        let err = || StoreError::Io { store: "s".into(), op: "put", key: k.to_string(), msg: "down".into() };
        let put_err = || OpResult::Put(k.clone(), Err(err()));
        let s = Duration::from_secs;
        let mut o = Outage::default();
        assert_eq!(o.note(s(0), &OpResult::Put(k.clone(), Ok(()))), OutageNote::Fine);
        assert!(matches!(o.note(s(1), &put_err()), OutageNote::Began(e) if e.contains("down")));
        for i in 2..20 {
            assert!(matches!(o.note(s(i), &put_err()), OutageNote::Still(_)));
            assert_eq!(o.note(s(i), &OpResult::Got(k.clone(), Ok(None))), OutageNote::Fine, "a read works");
        }
        assert!(matches!(o.note(s(20), &OpResult::Got(k.clone(), Err(err()))), OutageNote::Still(_)));
        assert_eq!(o.note(s(21), &OpResult::Put(k.clone(), Ok(()))), OutageNote::Fine, "reads still failing");
        assert_eq!(o.note(s(22), &OpResult::Got(k.clone(), Ok(None))), OutageNote::Ended(21.0));
        assert_eq!(o.note(s(23), &OpResult::Got(k.clone(), Ok(None))), OutageNote::Fine);
        // The next outage is reported again, but not with the same words
        // within a minute of the last warning.
        assert!(matches!(o.note(s(30), &put_err()), OutageNote::Still(_)));
        assert_eq!(o.note(s(31), &OpResult::Put(k.clone(), Ok(()))), OutageNote::Ended(1.0));
        assert!(matches!(o.note(s(90), &put_err()), OutageNote::Began(_)));
        assert_eq!(o.note(s(91), &OpResult::Put(k.clone(), Ok(()))), OutageNote::Ended(1.0));
        let refused = StoreError::Io { store: "s".into(), op: "get", key: k.to_string(), msg: "refused".into() };
        let other = OpResult::Got(k.clone(), Err(refused));
        assert!(matches!(o.note(s(92), &other), OutageNote::Began(e) if e.contains("refused")));
    }

    /// One write that fails at every retry while the party's other writes
    /// succeed (a directory planted where its `head` goes) is one warning
    /// a minute, not one per retry: each success ended the "outage", and
    /// the ping tools warned again at the next failure.
    #[test]
    fn one_write_failing_for_good_among_working_ones_is_warned_once_a_minute() {
        let head = Key::new(["alice", "bob", "head"]).unwrap();
        let msg = Key::new(["alice", "bob", "1-1.msg"]).unwrap();
        let err = StoreError::Io { store: "s".into(), op: "put", key: head.to_string(), msg: "in the way".into() };
        let mut o = Outage::default();
        let mut warned = Vec::new();
        for ms in (0..120_000).step_by(250) {
            let now = Duration::from_millis(ms);
            // The ping drivers: `track` each answer, warn of a failure that
            // `new_warning` lets through while none is reported yet.
            let _ = o.track(now, &OpResult::Put(head.clone(), Err(err.clone())));
            if !o.reported && o.new_warning(now, &err.to_string()) {
                o.reported = true;
                warned.push(ms);
            }
            if o.track(now, &OpResult::Put(msg.clone(), Ok(()))).is_some() {
                o.reported = false;
            }
        }
        assert_eq!(warned, [0, 60_000]);
    }

    #[test]
    fn poller_doubles_to_the_ceiling() {
        let ms = Duration::from_millis;
        let mut p = Poller::new(ms(1), ms(8));
        let got: Vec<Duration> = (0..6).map(|_| p.next_delay()).collect();
        assert_eq!(got, [ms(1), ms(2), ms(4), ms(8), ms(8), ms(8)]);
        p.activity();
        assert_eq!(p.next_delay(), ms(1));
    }

    #[test]
    fn a_transfer_poller_holds_a_short_delay_for_a_while_after_activity() {
        use crate::store::MemoryStore;
        let ms = Duration::from_millis;
        // A store that notifies: no hold.
        let mut p = Poller::for_transfer(&MemoryStore::new());
        assert_eq!((p.next_delay(), p.next_delay()), (ms(5000), ms(5000)));
        let mut p = Poller::new(REMOTE_MIN, REMOTE_MAX);
        p.hold = TRANSFER_HOLD;
        p.hold_polls = 100;
        for _ in 0..2 {
            p.activity();
            let got: Vec<Duration> = (0..106).map(|_| p.next_delay()).collect();
            assert_eq!(&got[..6], [ms(1), ms(2), ms(4), ms(8), ms(10), ms(10)]);
            assert!(got[4..104].iter().all(|d| *d == ms(10)), "held for 100 polls: {got:?}");
            assert_eq!(&got[104..], [ms(16), ms(32)], "then doubling again");
            let idle: Duration = (0..20).map(|_| p.next_delay()).sum();
            assert!(idle >= Duration::from_secs(20), "idle: back at the ceiling");
        }
    }

    #[test]
    fn pace_looks_again_at_once_only_after_answered_requests_of_a_recent_activity() {
        use crate::store::MemoryStore;
        let ms = Duration::from_millis;
        let store = MemoryStore::new();
        let mut ops = OpRunner::new(&store, 8);
        let mut pace = Pace::new(Poller::new(ms(1), ms(8)), ms(20));
        // Before any activity: the timer.
        assert_eq!(pace.until(ms(0), None, &ops), ms(1));
        pace.activity(ms(10));
        pace.woke(&ops);
        // A look that issued nothing: the timer again, never a busy loop.
        assert_eq!(pace.until(ms(10), None, &ops), ms(11));
        pace.woke(&ops);
        ops.push(Op::List(Key::root()));
        assert_eq!(pace.until(ms(11), None, &ops), ms(13), "the timer until the request is answered");
        let _ = ops.kick();
        assert!(ops.is_empty());
        assert_eq!(pace.until(ms(12), Some(ms(50)), &ops), ms(12), "answered: look again now");
        // Long after the activity: the timer (doubling), or the deadline.
        assert_eq!(pace.until(ms(40), Some(ms(41)), &ops), ms(41));
    }

    #[tokio::test]
    async fn op_runner_limits_and_returns_every_result() {
        use crate::store::MemoryStore;
        let store = MemoryStore::new();
        let mut ops = OpRunner::new(&store, 2);
        let k = |i: u32| Key::new([format!("k{i}")]).unwrap();
        for i in 0..5 {
            ops.push(Op::Put(k(i), bytes::Bytes::from(vec![i as u8])));
        }
        assert_eq!((ops.running.len(), ops.queue.len()), (2, 3));
        let clock = Clock::start();
        let mut changes = Changes::never();
        let mut never = std::pin::pin!(std::future::pending::<()>());
        let mut done = Vec::new();
        while !ops.is_empty() {
            match ops.wait(&mut changes, &clock, clock.now() + Duration::from_secs(5), &mut never).await {
                Woke::Done(OpResult::Put(key, Ok(()))) => done.push(key),
                _ => panic!("unexpected wake"),
            }
        }
        done.sort();
        assert_eq!(done, (0..5).map(k).collect::<Vec<_>>());
        assert_eq!(store.get(&k(4), 10).await.unwrap(), Some(vec![4]));
    }
}

//! Ping over the mailbox: a client that measures round trips like ping(8),
//! and a server that answers any number of clients. No I/O.

use super::mailbox::{Link, LinkConfig, Op, OpResult, Output, parse_msg_name};
use crate::id::PeerId;
use crate::store::{Key, StoreError};
use crate::wire::Kind;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the ping client reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum PingEvent {
    /// A request was made (queued for writing; see [`PingSummary::sent`]).
    Sent { seq: u64 },
    /// A reply arrived.
    Reply { seq: u64, rtt: Duration },
    /// No reply within the wait time.
    Lost { seq: u64 },
    /// A file from the server failed verification.
    Rejected { key: Key, reason: String },
    /// A store operation failed (it is retried).
    StoreError(StoreError),
    /// Something about keys the user should see (first contact).
    Key(crate::keys::KeyNotice),
}

/// ping(8)-style settings.
#[derive(Clone, Debug)]
pub struct PingConfig {
    /// Stop after this many requests (`None`: until interrupted).
    pub count: Option<u64>,
    /// Time between requests.
    pub interval: Duration,
    /// How long to wait for each reply.
    pub wait: Duration,
    /// Stop this long after the start, whatever was sent or received, as
    /// ping(8)'s `-w`. With a `count` as well, requests go on past `count`
    /// until `count` replies came or the deadline passed.
    pub deadline: Option<Duration>,
    pub link: LinkConfig,
}

/// Round-trip statistics, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RttStats {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub mdev: f64,
    pub p50: f64,
    pub p99: f64,
}

impl RttStats {
    /// Statistics of `rtts`; all zero when empty. `mdev` is computed as
    /// ping(8) does: sqrt(mean(x²) − mean(x)²).
    pub fn from_samples(rtts: &[Duration]) -> RttStats {
        if rtts.is_empty() {
            return RttStats::default();
        }
        let mut ms: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let n = ms.len() as f64;
        let avg = ms.iter().sum::<f64>() / n;
        let sq = ms.iter().map(|x| x * x).sum::<f64>() / n;
        let pct = |p: f64| {
            // Nearest-rank percentile.
            let rank = ((p / 100.0) * n).ceil().max(1.0) as usize;
            ms[rank.min(ms.len()) - 1]
        };
        RttStats {
            min: ms[0],
            avg,
            max: ms[ms.len() - 1],
            mdev: (sq - avg * avg).max(0.0).sqrt(),
            p50: pct(50.0),
            p99: pct(99.0),
        }
    }
}

/// Most round trips kept for the percentiles (512 KiB). A client may run
/// for days at `-i 0.001`; beyond this many replies the kept ones are a
/// uniform sample of all (reservoir sampling), while min, average, max and
/// mdev stay exact.
pub const RTTS_KEPT: usize = 1 << 16;

/// Round trips seen so far: exact sums, and a bounded sample for the
/// percentiles.
#[derive(Clone, Debug, PartialEq)]
pub struct RttRecorder {
    count: u64,
    min: Duration,
    max: Duration,
    /// Sums of the round trips in ms and of their squares.
    sum: f64,
    sum_sq: f64,
    kept: Vec<Duration>,
    rng: fastrand::Rng,
}

impl RttRecorder {
    /// `seed` makes the sample, and so a simulation, repeatable.
    pub fn new(seed: u64) -> RttRecorder {
        RttRecorder {
            count: 0,
            min: Duration::MAX,
            max: Duration::ZERO,
            sum: 0.0,
            sum_sq: 0.0,
            kept: Vec::new(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub fn push(&mut self, rtt: Duration) {
        self.count += 1;
        self.min = self.min.min(rtt);
        self.max = self.max.max(rtt);
        let ms = rtt.as_secs_f64() * 1000.0;
        self.sum += ms;
        self.sum_sq += ms * ms;
        if self.kept.len() < RTTS_KEPT {
            self.kept.push(rtt);
        } else {
            let i = self.rng.u64(..self.count);
            if let Some(slot) = self.kept.get_mut(i as usize) {
                *slot = rtt;
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The statistics: exact min, average, max and mdev; percentiles of the
    /// kept sample (exact up to [`RTTS_KEPT`] replies).
    pub fn stats(&self) -> RttStats {
        if self.count == 0 {
            return RttStats::default();
        }
        let mut st = RttStats::from_samples(&self.kept);
        let n = self.count as f64;
        let avg = self.sum / n;
        st.min = self.min.as_secs_f64() * 1000.0;
        st.max = self.max.as_secs_f64() * 1000.0;
        st.avg = avg;
        st.mdev = (self.sum_sq / n - avg * avg).max(0.0).sqrt();
        st
    }
}

/// The outcome of a ping run.
#[derive(Clone, Debug, PartialEq)]
pub struct PingSummary {
    /// Requests written into the store.
    pub sent: u64,
    /// Requests made that were never written: the store refused them, or
    /// the server's key was not known yet (nothing can be sealed).
    pub unwritten: u64,
    pub received: u64,
    pub rtts: RttRecorder,
}

impl PingSummary {
    /// Percentage of requests without a reply, of every request made,
    /// written or not (0 when none was made).
    pub fn loss_pct(&self) -> f64 {
        let made = self.sent + self.unwritten;
        if made == 0 { 0.0 } else { 100.0 * made.saturating_sub(self.received) as f64 / made as f64 }
    }
    pub fn stats(&self) -> RttStats {
        self.rtts.stats()
    }
}

/// The high 32 bits of the request numbers of the client run with
/// `session` (sessions are microsecond clocks: mixed, so that runs a
/// multiple of 2^32 µs apart still differ).
fn request_tag(session: u64) -> u64 {
    let mut z = session.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 32
}

/// The ping client: sends a request every interval and matches replies.
pub struct PingClient {
    link: Link,
    cfg: PingConfig,
    next_send: Duration,
    /// Requests made so far.
    made: u64,
    /// Requests written into the store so far.
    written: u64,
    /// Mailbox sequence number → request number, for requests made and not
    /// written yet.
    unwritten: BTreeMap<u64, u64>,
    /// Request number → time sent, for requests still awaiting a reply.
    waiting: BTreeMap<u64, Duration>,
    /// The high half of every request number this run sends (from the
    /// session): a pong left in the server's outbox for an earlier run
    /// of this client is never taken for a reply.
    tag: u64,
    rtts: RttRecorder,
    /// When the run ends at the latest (`PingConfig::deadline` from the start).
    end: Option<Duration>,
    /// The deadline has passed: nothing more is sent or awaited.
    over: bool,
    events: Vec<PingEvent>,
    ops: Vec<Op>,
}

/// Orders one batch of operations so that writes (a request, a reply, an
/// acknowledgement) go before reads. Operations of one batch never depend
/// on each other (a remote store runs them at the same time), but a folder
/// store runs them one after the other: a read ahead for the next request,
/// issued when a request is delivered, would otherwise hold up its reply,
/// and a client's look at the store would hold up its next request.
fn writes_first(mut ops: Vec<Op>) -> Vec<Op> {
    ops.sort_by_key(|op| !matches!(op, Op::Put(..)));
    ops
}

impl PingClient {
    pub fn new(client: PeerId, server: PeerId, cfg: PingConfig, session: u64, now: Duration) -> PingClient {
        let link = Link::new(client, server, cfg.link.clone(), None, session);
        let end = cfg.deadline.map(|d| now + d);
        let mut c = PingClient {
            link,
            cfg,
            next_send: now,
            made: 0,
            written: 0,
            unwritten: BTreeMap::new(),
            waiting: BTreeMap::new(),
            tag: request_tag(session),
            rtts: RttRecorder::new(session),
            end,
            over: false,
            events: Vec::new(),
            ops: Vec::new(),
        };
        c.drain();
        c
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Supplies the keys of a secure link.
    pub fn set_crypto(&mut self, now: Duration, c: crate::crypto::PeerCrypto) {
        self.link.set_crypto(now, c);
        self.drain_at(now);
    }

    /// True while a secure link waits for the server's key.
    pub fn needs_key(&self) -> bool {
        self.link.needs_key()
    }

    /// The directory to watch for replies.
    pub fn watch_prefix(&self) -> Key {
        self.link.in_dir().clone()
    }

    /// Time passed or something changed.
    pub fn wake(&mut self, now: Duration) {
        self.link.wake(now);
        if self.end.is_some_and(|end| now >= end) && !self.over {
            // Requests still awaited count as lost, as in ping(8), without
            // a line each: the run is over, not their wait.
            self.over = true;
            self.waiting.clear();
        }
        self.expire(now);
        while self.next_send <= now && !self.all_sent() {
            self.made += 1;
            // (After 2^32 requests the low half wraps around.)
            let seq = self.made & 0xffff_ffff;
            self.waiting.insert(seq, now);
            let msg = self.link.send(now, Kind::Ping, (self.tag << 32 | seq).to_be_bytes().to_vec());
            self.unwritten.insert(msg, seq);
            self.events.push(PingEvent::Sent { seq });
            self.next_send += self.cfg.interval;
            if self.next_send < now {
                // Fell behind (suspended?): do not burst.
                self.next_send = now + self.cfg.interval;
            }
        }
        self.drain_at(now);
    }

    pub fn on_result(&mut self, now: Duration, res: OpResult) {
        if let OpResult::Put(_, Err(e)) | OpResult::Got(_, Err(e)) | OpResult::Listed(_, Err(e)) = &res {
            self.events.push(PingEvent::StoreError(e.clone()));
        }
        if let OpResult::Put(k, Ok(())) = &res {
            let mine = k.starts_with(self.link.out_dir());
            if let Some((_, msg)) = parse_msg_name(k.name()).filter(|_| mine) {
                self.written += u64::from(self.unwritten.remove(&msg).is_some());
            }
        }
        self.link.on_result(now, res);
        self.drain_at(now);
    }

    /// No more requests to make: the deadline passed; or, with a deadline,
    /// `count` replies came; or, without one, `count` requests were made.
    fn all_sent(&self) -> bool {
        match (self.cfg.count, self.end) {
            _ if self.over => true,
            (Some(c), Some(_)) => self.rtts.count() >= c,
            (Some(c), None) => self.made >= c,
            (None, _) => false,
        }
    }

    fn expire(&mut self, now: Duration) {
        let lost: Vec<u64> =
            self.waiting.iter().filter(|(_, t)| now.saturating_sub(**t) >= self.cfg.wait).map(|(s, _)| *s).collect();
        for seq in lost {
            self.waiting.remove(&seq);
            self.events.push(PingEvent::Lost { seq });
        }
    }

    fn drain(&mut self) {
        self.drain_at(Duration::ZERO)
    }

    fn drain_at(&mut self, now: Duration) {
        loop {
            let outs = self.link.take_outputs();
            if outs.is_empty() {
                break;
            }
            for o in outs {
                match o {
                    Output::Op(op) => self.ops.push(op),
                    Output::Deliver(env) => {
                        let seq = env.seq;
                        if env.kind == Kind::Pong && env.payload.len() == 8 {
                            let n = u64::from_be_bytes(env.payload[..8].try_into().expect("8"));
                            let ours = n >> 32 == self.tag;
                            let n = n & 0xffff_ffff;
                            if let Some(t) = ours.then(|| self.waiting.remove(&n)).flatten() {
                                // A reply shows that its request was written,
                                // should the store's answer to the put come later.
                                if let Some(msg) = self.unwritten.iter().find(|(_, r)| **r == n).map(|(m, _)| *m) {
                                    self.unwritten.remove(&msg);
                                    self.written += 1;
                                }
                                let rtt = now.saturating_sub(t);
                                self.rtts.push(rtt);
                                self.events.push(PingEvent::Reply { seq: n, rtt });
                            }
                        }
                        self.link.commit(now, seq);
                    }
                    Output::Rejected { key, reason } => self.events.push(PingEvent::Rejected { key, reason }),
                    Output::Persist | Output::Acked(_) => {}
                }
            }
        }
    }

    /// Store operations to perform, writes first (see [`writes_first`]).
    pub fn take_ops(&mut self) -> Vec<Op> {
        writes_first(std::mem::take(&mut self.ops))
    }

    pub fn take_events(&mut self) -> Vec<PingEvent> {
        std::mem::take(&mut self.events)
    }

    /// True once every request was sent and answered or given up on, or
    /// the deadline passed.
    pub fn finished(&self) -> bool {
        self.over || (self.all_sent() && (self.waiting.is_empty() || self.end.is_some()))
    }

    /// When to call [`PingClient::wake`] at the latest.
    pub fn deadline(&self) -> Option<Duration> {
        let mut d = self.link.wake_at();
        let mut take = |t: Duration| d = Some(d.map_or(t, |x: Duration| x.min(t)));
        if !self.all_sent() {
            take(self.next_send);
        }
        if let Some(t) = self.waiting.values().min() {
            take(*t + self.cfg.wait);
        }
        if let Some(end) = self.end.filter(|_| !self.over) {
            take(end);
        }
        d
    }

    pub fn summary(&self) -> PingSummary {
        PingSummary {
            sent: self.written,
            unwritten: self.made - self.written,
            received: self.rtts.count(),
            rtts: self.rtts.clone(),
        }
    }
}

/// What the ping server reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    NewClient(PeerId),
    Answered {
        client: PeerId,
        seq: u64,
    },
    Rejected {
        key: Key,
        reason: String,
    },
    StoreError(StoreError),
    /// Something about keys the user should see (first contact).
    Key(crate::keys::KeyNotice),
    /// A client's run ended some time ago: its link is left to the sweep
    /// until it shows signs of life again.
    Quiet(PeerId),
    /// A client's key changed: it is ignored.
    KeyRefused {
        client: PeerId,
        reason: String,
    },
}

/// How long a client's link may go without a present peer (its head gone,
/// or never read) before it is looked at only now and then, by the sweep.
pub const QUIET_AFTER: Duration = Duration::from_secs(30);
/// The longest gap between two looks at one party in the sweep: a client
/// that comes back is served within about this long (as a new one is found
/// by the next listing of the store root on a polled store).
pub const SWEEP_MOST: Duration = Duration::from_secs(5);
/// First looks at newly found parties in flight at once.
const FIRST_LOOKS: usize = 16;

/// Parties looked at now and then rather than at every wake, each at its
/// own time, the gap doubling after each look up to [`SWEEP_MOST`].
#[derive(Default)]
struct Sweep {
    /// (next look, party), earliest first.
    queue: std::collections::BTreeSet<(Duration, PeerId)>,
    /// Party → (its next look, the gap after it).
    due: BTreeMap<PeerId, (Duration, Duration)>,
}

impl Sweep {
    fn insert(&mut self, p: PeerId, at: Duration, gap: Duration) {
        self.remove(&p);
        self.queue.insert((at, p.clone()));
        self.due.insert(p, (at, gap));
    }

    fn remove(&mut self, p: &PeerId) -> Option<Duration> {
        let (at, gap) = self.due.remove(p)?;
        self.queue.remove(&(at, p.clone()));
        Some(gap)
    }

    fn next_at(&self) -> Option<Duration> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// The party whose look is due by `now`, with the gap after it.
    fn pop_due(&mut self, now: Duration) -> Option<(PeerId, Duration)> {
        let (t, p) = self.queue.first()?.clone();
        if t > now {
            return None;
        }
        let gap = self.remove(&p)?;
        Some((p, gap))
    }
}

/// The liveness responder: one link per client found in the store or
/// registered with [`PingServer::add_client`].
///
/// A party found by listing the store root gets a link only once its head
/// towards me is there (one read; a notification of a write in its outbox
/// towards me is enough): a store shared by many parties, or one whose
/// listing names thousands of made-up ones, costs no link and no polling
/// per party. A client whose run ended (its head gone for [`QUIET_AFTER`])
/// keeps its link, but is looked at only by the sweep: one read of the
/// head towards me of each party without a link and of each quiet link,
/// one look per `sweep_every` at most, each party again after a gap that
/// doubles up to [`SWEEP_MOST`]. So the requests of an idle server do not
/// grow with every client that ever pinged it.
pub struct PingServer {
    me: PeerId,
    link_cfg: LinkConfig,
    links: BTreeMap<PeerId, Link>,
    root_list_pending: bool,
    /// Least time between two listings of the store root (zero: at every wake).
    discover_every: Duration,
    last_list: Option<Duration>,
    /// Parties found in the store with no link yet.
    candidates: std::collections::BTreeSet<PeerId>,
    /// Candidates never looked at, in the order found.
    fresh: std::collections::VecDeque<PeerId>,
    /// Candidates and quiet links whose head is being read by the sweep
    /// (never while the link itself reads it): the gap before the next look
    /// if it is not there, and whether to serve it whatever the answer (a
    /// write towards me was seen meanwhile).
    probing: BTreeMap<PeerId, (Duration, bool)>,
    /// Links whose peer has not been present since then.
    quiet_since: BTreeMap<PeerId, Duration>,
    /// Links left to the sweep.
    quiet: std::collections::BTreeSet<PeerId>,
    /// Clients registered with `add_client`: never left to the sweep.
    pinned: std::collections::BTreeSet<PeerId>,
    sweep: Sweep,
    /// Least time between two looks of the sweep.
    sweep_every: Duration,
    last_sweep: Option<Duration>,
    ops: Vec<Op>,
    events: Vec<ServerEvent>,
    session: u64,
}

impl PingServer {
    pub fn new(me: PeerId, link_cfg: LinkConfig, session: u64) -> PingServer {
        PingServer {
            me,
            link_cfg,
            links: BTreeMap::new(),
            root_list_pending: false,
            discover_every: Duration::ZERO,
            last_list: None,
            candidates: Default::default(),
            fresh: Default::default(),
            probing: BTreeMap::new(),
            quiet_since: BTreeMap::new(),
            quiet: Default::default(),
            pinned: Default::default(),
            sweep: Sweep::default(),
            sweep_every: Duration::from_millis(100),
            last_sweep: None,
            ops: Vec::new(),
            events: Vec::new(),
            session,
        }
    }

    /// Lists the store root for new clients at most once per `every` (on a
    /// polled remote store a listing at every wake would double the idle
    /// request rate).
    pub fn with_discover_every(mut self, every: Duration) -> PingServer {
        self.discover_every = every;
        self
    }

    /// Makes at most one look of the sweep per `every` (see [`PingServer`]);
    /// it is also the first gap between two looks at one party.
    pub fn with_sweep_every(mut self, every: Duration) -> PingServer {
        self.sweep_every = every.max(Duration::from_millis(1));
        self
    }

    /// Clients seen so far (those with a link).
    pub fn clients(&self) -> impl Iterator<Item = &PeerId> {
        self.links.keys()
    }

    /// Parties found in the store that have not shown a head towards me.
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }

    /// Clients left to the sweep (their runs ended).
    pub fn quiet_clients(&self) -> usize {
        self.quiet.len()
    }

    /// Serves `peer` without waiting to find it by listing: for a client
    /// whose outbox is read elsewhere (read-only HTTP cannot be listed).
    /// Returns false when it is already served, or is this server.
    pub fn add_client(&mut self, now: Duration, peer: PeerId) -> bool {
        let added = self.insert_client(now, peer.clone());
        if added {
            self.pinned.insert(peer);
        }
        self.drain(now);
        added
    }

    /// [`PingServer::add_client`] without taking the links' outputs: the
    /// caller drains once after adding many. (Draining goes through every
    /// link, and a listing of the store root names as many parties as its
    /// server likes: draining after each of 200k names pinned a CPU for
    /// many minutes, deaf to SIGTERM.)
    fn insert_client(&mut self, now: Duration, peer: PeerId) -> bool {
        if peer == self.me || self.links.contains_key(&peer) {
            return false;
        }
        // Its head is being read: served when the answer comes (a link
        // started now would get that answer as if it were its own).
        if let Some((_, serve)) = self.probing.get_mut(&peer) {
            *serve = true;
            return true;
        }
        self.candidates.remove(&peer);
        self.sweep.remove(&peer);
        self.events.push(ServerEvent::NewClient(peer.clone()));
        let mut link = Link::new(self.me.clone(), peer.clone(), self.link_cfg.clone(), None, self.session);
        link.wake(now);
        self.links.insert(peer, link);
        true
    }

    /// A party found in the store: looked at soon, unless known already.
    fn found(&mut self, peer: PeerId) {
        if peer == self.me || self.links.contains_key(&peer) || self.candidates.contains(&peer) {
            return;
        }
        self.candidates.insert(peer.clone());
        self.fresh.push_back(peer);
    }

    /// The head a client writes towards me: its presence makes a link.
    fn head_towards_me(&self, peer: &PeerId) -> Key {
        Key::new([peer.as_str(), self.me.as_str(), super::mailbox::HEAD_NAME]).expect("peer ids are valid keys")
    }

    /// A quiet link whose client shows signs of life: served at every wake again.
    fn rouse(&mut self, now: Duration, peer: &PeerId) {
        // Its head is being read for the sweep: roused by the answer (the
        // link would take that answer for its own read's).
        if let Some((_, serve)) = self.probing.get_mut(peer) {
            *serve = true;
            return;
        }
        if self.quiet.remove(peer) {
            self.sweep.remove(peer);
            self.quiet_since.insert(peer.clone(), now);
        }
        if let Some(l) = self.links.get_mut(peer) {
            l.wake(now);
        }
    }

    /// Reads the head of `p` (a candidate) towards me; `gap` is the wait
    /// before the next look if it is not there.
    fn probe(&mut self, p: PeerId, gap: Duration) {
        self.ops.push(Op::Get(self.head_towards_me(&p), super::mailbox::MAX_ACK_LEN));
        self.probing.insert(p, (gap, false));
    }

    /// First looks at new parties, and the sweep's next look when due.
    fn look_around(&mut self, now: Duration) {
        while self.probing.len() < FIRST_LOOKS {
            let Some(p) = self.fresh.pop_front() else { break };
            // (Served, looked at or in the sweep meanwhile: nothing to do.)
            if self.candidates.contains(&p) && !self.probing.contains_key(&p) && !self.sweep.due.contains_key(&p) {
                self.probe(p, self.sweep_every);
            }
        }
        if self.last_sweep.is_some_and(|t| now.saturating_sub(t) < self.sweep_every) {
            return;
        }
        let Some((p, gap)) = self.sweep.pop_due(now) else { return };
        self.last_sweep = Some(now);
        if self.quiet.contains(&p) && self.links.get(&p).is_some_and(|l| l.reading_head()) {
            // Its own read from before it went quiet: look again later.
            self.sweep.insert(p, now + gap, gap);
        } else if (self.quiet.contains(&p) || self.candidates.contains(&p)) && !self.probing.contains_key(&p) {
            self.probe(p, gap);
        }
    }

    /// Stops serving `client` (its key changed): its link goes. Found again
    /// by a listing, it is a new client that waits for its key.
    pub fn drop_client(&mut self, client: &PeerId) {
        self.links.remove(client);
        self.probing.remove(client);
        self.quiet.remove(client);
        self.quiet_since.remove(client);
        self.sweep.remove(client);
    }

    /// Clients whose key is still needed (secure links).
    pub fn clients_needing_key(&self) -> Vec<PeerId> {
        self.links.iter().filter(|(_, l)| l.needs_key()).map(|(p, _)| p.clone()).collect()
    }

    /// Supplies the keys for one client's link.
    pub fn set_client_crypto(&mut self, now: Duration, client: &PeerId, c: crate::crypto::PeerCrypto) {
        if let Some(l) = self.links.get_mut(client) {
            l.set_crypto(now, c);
        }
        self.drain(now);
    }

    pub fn wake(&mut self, now: Duration) {
        let due = self.last_list.is_none_or(|t| now.saturating_sub(t) >= self.discover_every);
        if due && !self.root_list_pending {
            self.root_list_pending = true;
            self.last_list = Some(now);
            self.ops.push(Op::List(Key::root()));
        }
        for (p, l) in self.links.iter_mut() {
            if !self.quiet.contains(p) {
                l.wake(now);
            }
        }
        self.look_around(now);
        self.drain(now);
    }

    /// Wakes only what `changed` concerns: the link of each client whose
    /// files for me changed (a client seen for the first time is served at
    /// once), and the links whose own deadline has come. With many clients
    /// this keeps one client's ping from making every link look again.
    /// "Anything" is a full [`PingServer::wake`].
    pub fn wake_changed(&mut self, now: Duration, changed: &crate::store::ChangeSet) {
        if changed.all {
            return self.wake(now);
        }
        let mut touched = BTreeMap::new();
        for path in &changed.paths {
            let mut parts = path.split('/');
            let owner = parts.next().unwrap_or("");
            // Its directory, its key, or its outbox towards me (true); not
            // my own writes, nor its files for another server.
            let towards_me = match parts.next() {
                None => Some(false),
                Some(next) if next == self.me.as_str() => Some(true),
                Some(next) if next == crate::keys::KEY_FILE => Some(false),
                Some(_) => None,
            };
            if let (Some(t), Ok(peer)) = (towards_me, PeerId::new(owner)) {
                *touched.entry(peer).or_insert(false) |= t;
            }
        }
        for (peer, towards_me) in touched {
            if self.links.contains_key(&peer) {
                self.rouse(now, &peer);
            } else if towards_me {
                self.insert_client(now, peer);
            } else {
                self.found(peer);
            }
        }
        for (p, l) in self.links.iter_mut() {
            if !self.quiet.contains(p) && l.wake_at().is_some_and(|t| t <= now) {
                l.wake(now);
            }
        }
        self.look_around(now);
        self.drain(now);
    }

    pub fn on_result(&mut self, now: Duration, res: OpResult) {
        if let OpResult::Put(_, Err(e)) | OpResult::Got(_, Err(e)) | OpResult::Listed(_, Err(e)) = &res {
            self.events.push(ServerEvent::StoreError(e.clone()));
        }
        if let OpResult::Listed(k, r) = &res {
            if k.is_root() {
                self.root_list_pending = false;
                if let Ok(names) = r {
                    for name in names {
                        let Ok(peer) = PeerId::new(name) else { continue };
                        self.found(peer);
                    }
                }
                self.look_around(now);
                self.drain(now);
                return;
            }
        }
        // The answer to a look at a party without a link.
        if let OpResult::Got(k, r) = &res {
            let owner = k.as_str().split('/').next().and_then(|o| PeerId::new(o).ok());
            if let Some(p) = owner.filter(|p| self.probing.contains_key(p) && *k == self.head_towards_me(p)) {
                let (gap, serve) = self.probing.remove(&p).expect("probing");
                let next = (gap * 2).min(SWEEP_MOST);
                if !(serve || matches!(r, Ok(Some(_)))) {
                    self.sweep.insert(p, now + gap, next);
                } else if self.links.contains_key(&p) {
                    self.rouse(now, &p);
                } else {
                    self.insert_client(now, p);
                }
                self.look_around(now);
                self.drain(now);
                return;
            }
        }
        if let Some(link) = self.links.values_mut().find(|l| l.owns(res.key())) {
            link.on_result(now, res);
        }
        self.look_around(now);
        self.drain(now);
    }

    fn drain(&mut self, now: Duration) {
        for (peer, link) in self.links.iter_mut() {
            loop {
                let outs = link.take_outputs();
                if outs.is_empty() {
                    break;
                }
                for o in outs {
                    match o {
                        Output::Op(op) => self.ops.push(op),
                        Output::Deliver(env) => {
                            if env.kind == Kind::Ping {
                                link.send(now, Kind::Pong, env.payload);
                                self.events.push(ServerEvent::Answered { client: peer.clone(), seq: env.seq });
                            } else {
                                tracing::debug!(client = %peer, kind = ?env.kind, "ignoring a message that is not a ping");
                            }
                            link.commit(now, env.seq);
                        }
                        Output::Rejected { key, reason } => self.events.push(ServerEvent::Rejected { key, reason }),
                        Output::Persist | Output::Acked(_) => {}
                    }
                }
            }
            // A link whose client has not been present for a while is
            // left to the sweep; one whose client is back is served again.
            if link.peer_present() {
                self.quiet_since.remove(peer);
                if self.quiet.remove(peer) {
                    self.sweep.remove(peer);
                }
            } else if !self.quiet.contains(peer) && !self.pinned.contains(peer) {
                let since = *self.quiet_since.entry(peer.clone()).or_insert(now);
                if now.saturating_sub(since) >= QUIET_AFTER {
                    self.quiet.insert(peer.clone());
                    self.sweep.insert(peer.clone(), now + self.sweep_every, self.sweep_every * 2);
                    self.events.push(ServerEvent::Quiet(peer.clone()));
                }
            }
        }
    }

    /// Store operations to perform, writes first (see [`writes_first`]).
    pub fn take_ops(&mut self) -> Vec<Op> {
        writes_first(std::mem::take(&mut self.ops))
    }

    pub fn take_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn deadline(&self) -> Option<Duration> {
        let links = self.links.iter().filter(|(p, _)| !self.quiet.contains(*p)).filter_map(|(_, l)| l.wake_at()).min();
        let sweep = self.sweep.next_at().map(|t| match self.last_sweep {
            Some(last) => t.max(last + self.sweep_every),
            None => t,
        });
        // A link not present yet turns quiet after `QUIET_AFTER`.
        let quiet = self
            .quiet_since
            .iter()
            .filter(|(p, _)| !self.quiet.contains(*p) && !self.pinned.contains(*p))
            .map(|(_, t)| *t + QUIET_AFTER)
            .min();
        [links, sweep, quiet].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::perform;
    use crate::store::{MemoryStore, Store};

    /// A client running for days at a high rate keeps a bounded sample:
    /// exact count, min, average and max, percentiles close to the truth.
    #[test]
    fn round_trips_kept_are_bounded_and_stats_stay_right() {
        let mut r = RttRecorder::new(7);
        let n = 300_000u64;
        // 1..=n µs in a scrambled order.
        for i in 0..n {
            r.push(Duration::from_micros(1 + (i * 7919) % n));
        }
        assert_eq!(r.count(), n);
        assert_eq!(r.kept.len(), RTTS_KEPT);
        let st = r.stats();
        assert_eq!((st.min, st.max), (0.001, n as f64 / 1000.0));
        assert!((st.avg - (n + 1) as f64 / 2000.0).abs() < 1e-6, "{st:?}");
        let (p50, p99) = (n as f64 / 2000.0, n as f64 * 0.99 / 1000.0);
        assert!((st.p50 - p50).abs() < p50 * 0.02, "p50 {} against {p50}", st.p50);
        assert!((st.p99 - p99).abs() < p99 * 0.01, "p99 {} against {p99}", st.p99);
        // Below the bound, exactly the ping(8) figures of all samples.
        let mut small = RttRecorder::new(1);
        let all: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        all.iter().for_each(|d| small.push(*d));
        let (a, b) = (small.stats(), RttStats::from_samples(&all));
        assert_eq!((a.p50, a.p99, a.min, a.max), (b.p50, b.p99, b.min, b.max));
        assert!((a.avg - b.avg).abs() < 1e-9 && (a.mdev - b.mdev).abs() < 1e-9);
    }

    fn pid(s: &str) -> PeerId {
        PeerId::new(s).expect("id")
    }

    /// Performs `ops` (and the ones they lead to) until none are left.
    async fn settle(store: &MemoryStore, now: Duration, c: &mut PingClient) {
        for _ in 0..50 {
            let ops = c.take_ops();
            if ops.is_empty() {
                return;
            }
            for op in ops {
                let r = perform(store, op).await;
                c.on_result(now, r);
            }
            c.wake(now);
        }
    }

    #[tokio::test]
    async fn a_pong_left_for_an_earlier_run_is_not_a_reply() {
        let store = MemoryStore::new();
        let cfg = PingConfig {
            count: Some(1),
            interval: Duration::from_millis(10),
            wait: Duration::from_secs(5),
            deadline: None,
            link: LinkConfig::default(),
        };
        // The server answered request 1 of an earlier run of alice; that
        // run ended before acknowledging it, so the pong is still there.
        let earlier = PingClient::new(pid("alice"), pid("bob"), cfg.clone(), 1_000, Duration::ZERO);
        let mut server = Link::new(pid("bob"), pid("alice"), LinkConfig::default(), None, 7);
        server.send(Duration::ZERO, Kind::Pong, (earlier.tag << 32 | 1).to_be_bytes().to_vec());
        for _ in 0..20 {
            for o in server.take_outputs() {
                if let Output::Op(op) = o {
                    let r = perform(&store, op).await;
                    server.on_result(Duration::ZERO, r);
                }
            }
            server.wake(Duration::ZERO);
        }
        let outbox = Key::new(["bob", "alice"]).expect("key");
        let names = store.list(&outbox).await.expect("list");
        assert!(names.iter().any(|n| n.ends_with(".msg")), "the pong was not written: {names:?}");
        // A new run sends its request 1 and reads the server's outbox.
        let mut now = Duration::ZERO;
        let mut c = PingClient::new(pid("alice"), pid("bob"), cfg, 2_000, now);
        assert_ne!(c.tag, earlier.tag);
        for _ in 0..20 {
            c.wake(now);
            settle(&store, now, &mut c).await;
            now += Duration::from_millis(5);
        }
        let events = c.take_events();
        assert!(events.iter().any(|e| matches!(e, PingEvent::Sent { seq: 1 })), "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, PingEvent::Reply { .. })), "a stale pong was taken: {events:?}");
        assert!(!c.finished(), "request 1 still awaits its reply");
    }

    /// Every batch of operations puts its writes before its reads, and in
    /// a real exchange some batches hold both: the server's reply to a
    /// request goes out before the read ahead for the next request.
    #[test]
    fn a_listing_of_many_parties_is_taken_in_linear_time() {
        // The root listing comes from the store, which names as many
        // parties as it likes: each is looked at once (one read of its
        // head towards me, a few at a time), none gets a link without one.
        let n = 20_000;
        let mut s = PingServer::new(pid("bob"), LinkConfig::default(), 2_000);
        s.wake(Duration::ZERO);
        assert!(s.take_ops().iter().any(|o| matches!(o, Op::List(k) if k.is_root())));
        let names: Vec<String> = (0..n).map(|i| format!("c{i:06}")).collect();
        let t = std::time::Instant::now();
        let now = Duration::from_millis(1);
        s.on_result(now, OpResult::Listed(Key::root(), Ok(names)));
        let (mut looks, mut most) = (0, 0);
        loop {
            let ops = s.take_ops();
            if ops.is_empty() {
                break;
            }
            most = most.max(ops.len());
            for op in ops {
                let Op::Get(k, _) = op else { panic!("only reads: {op:?}") };
                assert!(k.as_str().ends_with("/bob/head"), "{k}");
                looks += 1;
                s.on_result(now, OpResult::Got(k, Ok(None)));
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{:?} for {n} names", t.elapsed());
        assert_eq!((looks, s.candidates(), s.clients().count()), (n, n, 0));
        assert!(most <= FIRST_LOOKS, "{most} reads at once");
        // Then the sweep: one look per `sweep_every` (100 ms) at most.
        let mut later = 0;
        for i in 1..=50u64 {
            s.wake(now + Duration::from_millis(20 * i));
            later += s.take_ops().iter().filter(|o| matches!(o, Op::Get(..))).count();
        }
        assert!((4..=11).contains(&later), "{later} looks in 1 s");
    }

    /// A party in the store gets a link once its head towards me is there;
    /// one that never writes one is looked at again after doubling gaps.
    #[test]
    fn a_party_is_served_once_its_head_towards_me_is_there() {
        let mut s = PingServer::new(pid("bob"), LinkConfig::default(), 2_000).with_sweep_every(Duration::from_secs(1));
        s.wake(Duration::ZERO);
        let _ = s.take_ops();
        let names = vec!["alice".to_string(), "carol".into(), "bob".into()];
        s.on_result(Duration::ZERO, OpResult::Listed(Key::root(), Ok(names)));
        assert!(s.take_events().is_empty());
        let got = gets(&s.take_ops());
        assert_eq!(got, ["alice/bob/head", "carol/bob/head"]);
        let head = Ok(Some(b"any".to_vec()));
        s.on_result(Duration::ZERO, OpResult::Got(Key::new(["alice", "bob", "head"]).unwrap(), head));
        s.on_result(Duration::ZERO, OpResult::Got(Key::new(["carol", "bob", "head"]).unwrap(), Ok(None)));
        assert_eq!(s.take_events(), [ServerEvent::NewClient(pid("alice"))]);
        assert_eq!((s.clients().count(), s.candidates()), (1, 1));
        let _ = s.take_ops();
        // carol: looked at after 1 s, then 2 s, then 4 s.
        let mut at = Vec::new();
        for ms in (100..=8_000).step_by(100) {
            let now = Duration::from_millis(ms);
            s.wake(now);
            for op in s.take_ops() {
                if let Op::Get(k, _) = &op {
                    if k.as_str() == "carol/bob/head" {
                        at.push(ms);
                        s.on_result(now, OpResult::Got(k.clone(), Ok(None)));
                    }
                }
            }
        }
        assert_eq!(at, [1_000, 3_000, 7_000]);
        // A write of carol's towards me (a notification) serves it at once.
        let changed = crate::store::ChangeSet { all: false, paths: ["carol/bob/head".to_string()].into() };
        s.wake_changed(Duration::from_millis(8_100), &changed);
        assert_eq!(s.take_events(), [ServerEvent::NewClient(pid("carol"))]);
        assert_eq!((s.clients().count(), s.candidates()), (2, 0));
    }

    fn gets(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Get(k, _) => Some(k.as_str().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Reads of alice's files among `ops`.
    fn reads_of_alice(ops: &[Op]) -> usize {
        gets(ops).iter().filter(|k| k.starts_with("alice/")).count()
    }

    /// Runs alice's client (one ping) against the server until it has its
    /// reply; returns the time then.
    async fn one_ping(store: &MemoryStore, s: &mut PingServer, session: u64, mut now: Duration) -> Duration {
        let cfg = PingConfig {
            count: Some(1),
            interval: Duration::from_millis(10),
            wait: Duration::from_secs(120),
            deadline: None,
            link: LinkConfig::default(),
        };
        let mut c = PingClient::new(pid("alice"), pid("bob"), cfg, session, now);
        let end = now + Duration::from_secs(120);
        while !c.finished() && now < end {
            c.wake(now);
            s.wake(now);
            settle_pair(store, now, &mut c, Some(&mut *s), |_| {}).await;
            now += Duration::from_millis(10);
        }
        assert_eq!(c.summary().received, 1, "no reply by {now:?}");
        now
    }

    /// A client whose run ended costs the server a look now and then, not
    /// one at every wake, for as long as the server runs (the requests of
    /// an idle server on a polled store grew by one a second for each
    /// client that had ever pinged it); back, it is served again.
    #[tokio::test]
    async fn a_client_whose_run_ended_is_looked_at_only_now_and_then() {
        let store = MemoryStore::new();
        let every = Duration::from_millis(100);
        let mut s = PingServer::new(pid("bob"), LinkConfig::default(), 2_000).with_sweep_every(every);
        let mut now = one_ping(&store, &mut s, 1_000, Duration::ZERO).await;
        // The run ends: the client's driver removes its files.
        let dir = Key::new(["alice", "bob"]).unwrap();
        for name in store.list(&dir).await.unwrap() {
            store.delete(&dir.join(&name).unwrap()).await.unwrap();
        }
        let ended = now;
        let (mut quiet_at, mut reads_quiet) = (None, 0);
        while now < ended + Duration::from_secs(150) {
            s.wake(now);
            let ops = s.take_ops();
            if quiet_at.is_some() {
                reads_quiet += reads_of_alice(&ops);
            }
            for op in ops {
                let r = perform(&store, op).await;
                s.on_result(now, r);
            }
            if s.take_events().contains(&ServerEvent::Quiet(pid("alice"))) {
                quiet_at = Some(now);
            }
            now += every;
        }
        let quiet_at = quiet_at.expect("alice was never left to the sweep");
        let after = quiet_at - ended;
        assert!(after >= QUIET_AFTER && after <= QUIET_AFTER + Duration::from_secs(5), "quiet after {after:?}");
        // One read (its head) after 0.1, 0.2, 0.4 ... 3.2 s, then every 5 s:
        // 28 in the 118 s left. At every wake it was two reads (head and
        // ack) each 100 ms: 2,360.
        assert!((20..=32).contains(&reads_quiet), "{reads_quiet} reads of a quiet client's files in 118 s");
        assert_eq!(s.quiet_clients(), 1);
        // Back with a new run: served again, found by the sweep (at most
        // `SWEEP_MOST` later) even without a notification.
        let back = now;
        now = one_ping(&store, &mut s, 5_000, now).await;
        assert!(now - back <= SWEEP_MOST + Duration::from_secs(1), "{:?}", now - back);
        assert_eq!(s.quiet_clients(), 0);
        // With a notification, at once.
        for name in store.list(&dir).await.unwrap() {
            store.delete(&dir.join(&name).unwrap()).await.unwrap();
        }
        let ended = now;
        while s.quiet_clients() == 0 && now < ended + Duration::from_secs(60) {
            s.wake(now);
            for op in s.take_ops() {
                let r = perform(&store, op).await;
                s.on_result(now, r);
            }
            now += every;
        }
        assert_eq!(s.quiet_clients(), 1);
        let changed = crate::store::ChangeSet { all: false, paths: ["alice/bob/head".to_string()].into() };
        s.wake_changed(now, &changed);
        assert_eq!(s.quiet_clients(), 0);
        assert!(reads_of_alice(&s.take_ops()) > 0, "the link looks at once");
    }

    #[tokio::test]
    async fn each_batch_writes_before_it_reads() {
        let store = MemoryStore::new();
        let cfg = PingConfig {
            count: Some(3),
            interval: Duration::from_millis(10),
            wait: Duration::from_secs(5),
            deadline: None,
            link: LinkConfig::default(),
        };
        let mut c = PingClient::new(pid("alice"), pid("bob"), cfg, 1_000, Duration::ZERO);
        let mut s = PingServer::new(pid("bob"), LinkConfig::default(), 2_000);
        s.add_client(Duration::ZERO, pid("alice"));
        let (mut now, mut mixed) = (Duration::ZERO, 0);
        for _ in 0..200 {
            c.wake(now);
            s.wake(now);
            settle_pair(&store, now, &mut c, Some(&mut s), |batch| {
                if let Some(i) = batch.iter().position(|o| !matches!(o, Op::Put(..))) {
                    assert!(!batch[i..].iter().any(|o| matches!(o, Op::Put(..))), "a write after a read: {batch:?}");
                    mixed += usize::from(i > 0);
                }
            })
            .await;
            if c.finished() {
                break;
            }
            now += Duration::from_millis(1);
        }
        assert!(c.finished(), "the client did not finish");
        assert_eq!((c.summary().sent, c.summary().unwritten, c.summary().received), (3, 0, 3));
        assert!(mixed > 0, "no batch held both writes and reads: the test shows nothing");
    }

    /// Performs the client's and (when given) the server's operations, and
    /// those they lead to, until neither has any; `seen` sees each batch
    /// before it is performed.
    async fn settle_pair(
        store: &MemoryStore,
        now: Duration,
        c: &mut PingClient,
        mut s: Option<&mut PingServer>,
        mut seen: impl FnMut(&[Op]),
    ) {
        for _ in 0..20 {
            let (co, so) = (c.take_ops(), s.as_deref_mut().map(PingServer::take_ops).unwrap_or_default());
            if co.is_empty() && so.is_empty() {
                return;
            }
            seen(&co);
            seen(&so);
            for op in co {
                let r = perform(store, op).await;
                c.on_result(now, r);
            }
            if let Some(s) = s.as_deref_mut() {
                for op in so {
                    let r = perform(store, op).await;
                    s.on_result(now, r);
                }
            }
        }
    }

    /// Runs a client (and, with `answer`, a server for it) over one memory
    /// store in steps of 10 ms until the client finishes or 60 s pass;
    /// `answer(n)` says whether the server is there at step `n`.
    async fn run_until_finished(cfg: PingConfig, answer: impl Fn(Duration) -> bool) -> (PingClient, Duration) {
        let store = MemoryStore::new();
        let mut c = PingClient::new(pid("alice"), pid("bob"), cfg, 1_000, Duration::ZERO);
        let mut s = PingServer::new(pid("bob"), LinkConfig::default(), 2_000);
        s.add_client(Duration::ZERO, pid("alice"));
        let mut now = Duration::ZERO;
        while !c.finished() && now < Duration::from_secs(60) {
            c.wake(now);
            let up = answer(now);
            if up {
                s.wake(now);
            }
            settle_pair(&store, now, &mut c, up.then_some(&mut s), |_| {}).await;
            if c.finished() {
                break;
            }
            now += Duration::from_millis(10);
        }
        (c, now)
    }

    /// `-w`: the run ends at the deadline, whatever is still awaited (a
    /// request's own wait, `-W`, is far longer here), without a line for
    /// each request cut short; with no count, that is the only end.
    #[tokio::test]
    async fn a_deadline_ends_the_run_on_time() {
        let cfg = PingConfig {
            count: None,
            interval: Duration::from_millis(100),
            wait: Duration::from_secs(30),
            deadline: Some(Duration::from_millis(1_000)),
            link: LinkConfig::default(),
        };
        let (mut c, now) = run_until_finished(cfg, |_| false).await;
        assert!(c.finished(), "not finished after {now:?}");
        assert_eq!(now, Duration::from_millis(1_000), "ended at {now:?}");
        assert_eq!(c.deadline().filter(|d| *d < Duration::from_secs(1)), None);
        let sum = c.summary();
        assert_eq!((sum.sent + sum.unwritten, sum.received), (10, 0), "{sum:?}");
        assert!(!c.take_events().iter().any(|e| matches!(e, PingEvent::Lost { .. })), "no request waited 30 s");
    }

    /// `-c N -w D`, as ping(8): requests go on past N until N replies came
    /// (here the server is away for the first 0.5 s, so the first requests
    /// go unanswered), and the run ends with the Nth reply, not at D.
    #[tokio::test]
    async fn a_deadline_with_a_count_waits_for_count_replies() {
        let cfg = PingConfig {
            count: Some(3),
            interval: Duration::from_millis(100),
            wait: Duration::from_millis(200),
            deadline: Some(Duration::from_secs(20)),
            link: LinkConfig::default(),
        };
        let (c, now) = run_until_finished(cfg.clone(), |t| t >= Duration::from_millis(500)).await;
        assert!(c.finished() && now < Duration::from_secs(5), "finished {} at {now:?}", c.finished());
        let sum = c.summary();
        assert_eq!(sum.received, 3, "{sum:?}");
        assert!(sum.sent > 3, "requests went on past the count: {sum:?}");
        // Without the deadline, three requests and whatever came of them.
        let (c, _) =
            run_until_finished(PingConfig { deadline: None, ..cfg }, |t| t >= Duration::from_millis(500)).await;
        assert_eq!((c.summary().sent, c.summary().received), (3, 0));
    }

    /// "sent" counts requests written into the store: a store that refuses
    /// every write (read-only) has none sent, and every request made is
    /// lost. Before, every request made counted as sent.
    #[tokio::test]
    async fn requests_the_store_refuses_are_not_sent() {
        let store = MemoryStore::new();
        let cfg = PingConfig {
            count: Some(2),
            interval: Duration::from_millis(10),
            wait: Duration::from_millis(100),
            deadline: None,
            link: LinkConfig::default(),
        };
        let mut c = PingClient::new(pid("alice"), pid("bob"), cfg, 1_000, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut refused = 0;
        while !c.finished() && now < Duration::from_secs(5) {
            c.wake(now);
            for op in c.take_ops() {
                let r = match op {
                    Op::Put(k, _) => {
                        refused += 1;
                        let msg = format!("mkdir {k}: Read-only file system");
                        OpResult::Put(k, Err(StoreError::Denied { store: "memory".into(), msg }))
                    }
                    op => perform(&store, op).await,
                };
                c.on_result(now, r);
            }
            now += Duration::from_millis(5);
        }
        assert!(c.finished() && refused > 0, "refused {refused} writes");
        let sum = c.summary();
        assert_eq!((sum.sent, sum.unwritten, sum.received), (0, 2, 0));
        assert_eq!(sum.loss_pct(), 100.0);
    }
}

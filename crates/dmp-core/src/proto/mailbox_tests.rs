//! Unit tests of the mailbox machine: two links driven over a simulated
//! store whose visibility the tests control (late, out of order, stale,
//! torn, duplicated, failing) and through restarts. Randomized runs print
//! their seed on failure.

use super::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

fn pid(s: &str) -> PeerId {
    PeerId::new(s).expect("valid id")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- the simulated store ------------------------------------------------

/// Random faults, as probabilities per read, per operation or per step.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Another party sees a write or delete up to this many ms late.
    max_delay: u64,
    /// A read of the peer's file returns an older version (or nothing).
    stale: f64,
    /// A read returns a truncated copy.
    torn: f64,
    /// A read returns a copy with one byte flipped.
    corrupt: f64,
    /// An earlier successful read of a message is fed again.
    replay: f64,
    /// An operation fails with a transient error (a put or delete may
    /// have taken effect all the same).
    error: f64,
    /// A party restarts from its last persisted state.
    crash: f64,
    /// The application commits a delivered message later, not at once.
    commit_late: f64,
    /// Every put, delete and list fails (without effect).
    fail_writes: bool,
    /// Every put fails (without effect).
    fail_puts: bool,
    /// Every read of this key fails (a peer outbox answering 403 for it).
    fail_gets_of: Option<String>,
}

/// A scripted answer to the next read of a key by the other party.
#[derive(Clone, Debug)]
enum Scripted {
    Torn,
    Corrupt,
}

#[derive(Clone, Debug)]
struct Version {
    data: Option<Vec<u8>>,
    /// When other parties can see it; `None` while held back.
    visible_at: Option<Duration>,
}

#[derive(Default)]
struct SimStore {
    objects: BTreeMap<String, Vec<Version>>,
    /// Every message file ever written, to check write-once.
    msgs_ever: BTreeMap<String, Vec<u8>>,
    /// Keys whose new versions others do not see until released.
    held: BTreeSet<String>,
    scripted: BTreeMap<String, VecDeque<Scripted>>,
}

impl SimStore {
    fn latest(&self, key: &str) -> Option<&Vec<u8>> {
        self.objects.get(key).and_then(|v| v.last()).and_then(|v| v.data.as_ref())
    }

    /// Names currently present (newest version) directly below `dir`.
    fn names(&self, dir: &str) -> Vec<String> {
        let p = format!("{dir}/");
        let mut out: Vec<String> = Vec::new();
        for (k, vs) in self.objects.range(p.clone()..) {
            let Some(rest) = k.strip_prefix(&p) else { break };
            if vs.last().is_some_and(|v| v.data.is_some()) {
                let n = rest.split('/').next().unwrap_or(rest).to_owned();
                if out.last() != Some(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Writes `key` with no checks (for planting foreign files).
    fn plant(&mut self, key: &str, data: &[u8]) {
        self.objects
            .entry(key.to_owned())
            .or_default()
            .push(Version { data: Some(data.to_vec()), visible_at: Some(Duration::ZERO) });
    }

    fn hold(&mut self, key: &str) {
        self.held.insert(key.to_owned());
    }

    fn release(&mut self, key: &str, now: Duration) {
        self.held.remove(key);
        for v in self.objects.entry(key.to_owned()).or_default() {
            v.visible_at.get_or_insert(now);
        }
    }

    fn script(&mut self, key: &str, answers: impl IntoIterator<Item = Scripted>) {
        self.scripted.entry(key.to_owned()).or_default().extend(answers);
    }
}

// ---- one party: a link, its driver and a tiny application -------------

struct Party {
    me: PeerId,
    peer: PeerId,
    cfg: LinkConfig,
    link: Link,
    ops: VecDeque<Op>,
    /// The link has listed its outbox (the driver saw the result), so the
    /// numbers `send` returns are final.
    recovered: bool,
    /// Send messages 1..=target of the current session.
    target: u64,
    /// Bumped at each restart; carried in payloads so that a sequence
    /// number reused for another message shows as an overwrite.
    incarnation: u64,
    next_session: u64,
    /// Messages delivered and committed: the application's durable effect.
    log: Vec<Envelope>,
    /// Delivered, not yet committed.
    pending: Vec<Envelope>,
    /// Every delivery, across restarts.
    deliveries: Vec<(u64, u64)>,
    /// Persisted state: the link's snapshot and the log, saved together.
    durable: (LinkState, Vec<Envelope>),
    /// Check at each delivery that it follows the log without gap or repeat.
    strict: bool,
    replays: Vec<OpResult>,
    rejected: Vec<(Key, String)>,
    acked: u64,
}

impl Party {
    fn new(me: &str, peer: &str, cfg: LinkConfig, session: u64) -> Party {
        let link = Link::new(pid(me), pid(peer), cfg.clone(), None, session);
        let mut p = Party {
            me: pid(me),
            peer: pid(peer),
            cfg,
            link,
            ops: VecDeque::new(),
            recovered: false,
            target: 0,
            incarnation: 0,
            next_session: session + 1,
            log: Vec::new(),
            pending: Vec::new(),
            deliveries: Vec::new(),
            durable: (LinkState::default(), Vec::new()),
            strict: true,
            replays: Vec::new(),
            rejected: Vec::new(),
            acked: 0,
        };
        p.drain(Duration::ZERO, false);
        p
    }

    fn out_dir(&self) -> String {
        format!("{}/{}", self.me, self.peer)
    }

    fn payload(&self, seq: u64) -> Vec<u8> {
        format!("{}>{} #{seq} i{}", self.me, self.peer, self.incarnation).into_bytes()
    }

    fn drain(&mut self, now: Duration, commit_late: bool) {
        loop {
            let outs = self.link.take_outputs();
            if outs.is_empty() {
                break;
            }
            for o in outs {
                match o {
                    Output::Persist => self.durable = (self.link.snapshot(), self.log.clone()),
                    Output::Op(op) => self.ops.push_back(op),
                    Output::Deliver(env) => {
                        assert_eq!(env.sender, self.peer, "{}: delivered a message from the wrong sender", self.me);
                        assert_eq!(env.recipient, self.me);
                        let text = String::from_utf8(env.payload.clone()).expect("payload is text");
                        assert!(
                            text.starts_with(&format!("{}>{} #{} ", self.peer, self.me, env.seq)),
                            "{}: message {} carries {text:?}",
                            self.me,
                            env.seq
                        );
                        if self.strict {
                            let last = self.pending.last().or(self.log.last());
                            let expected = match last {
                                Some(e) if e.session == env.session => e.seq + 1,
                                _ => 1,
                            };
                            assert_eq!(
                                env.seq,
                                expected,
                                "{}: delivered {} but expected {expected} (log ends at {:?})",
                                self.me,
                                env.seq,
                                last.map(|e| e.seq)
                            );
                        }
                        self.deliveries.push((env.session, env.seq));
                        self.pending.push(env);
                        if !commit_late {
                            self.commit(now);
                        }
                    }
                    Output::Acked(n) => {
                        assert!(n > self.acked, "{}: acked went back from {} to {n}", self.me, self.acked);
                        assert!(n < self.link.state().next_seq, "{}: acked {n} beyond what was written", self.me);
                        self.acked = n;
                    }
                    Output::Rejected { key, reason } => self.rejected.push((key, reason)),
                }
            }
        }
    }

    fn commit(&mut self, now: Duration) {
        if let Some(last) = self.pending.last() {
            let seq = last.seq;
            self.log.append(&mut self.pending);
            self.link.commit(now, seq);
        }
    }

    /// The application queues what remains to send, once the link is ready.
    fn send_more(&mut self, now: Duration, most: u64) {
        if !self.recovered {
            return;
        }
        let mut n = 0;
        while self.link.last_queued_seq() < self.target && n < most {
            let seq = self.link.last_queued_seq() + 1;
            let got = self.link.send(now, Kind::Ping, self.payload(seq));
            assert_eq!(got, seq, "{}: send returned {got}, expected {seq}", self.me);
            n += 1;
        }
    }

    fn feed(&mut self, now: Duration, res: OpResult) {
        if let OpResult::Listed(k, Ok(_)) = &res {
            if k == self.link.out_dir() {
                self.recovered = true;
            }
        }
        self.link.on_result(now, res);
    }

    /// Restarts from the persisted state, or from nothing.
    fn restart(&mut self, now: Duration, keep_state: bool) {
        self.ops.clear();
        self.pending.clear();
        self.replays.clear();
        self.recovered = false;
        self.incarnation += 1;
        if keep_state {
            let (state, log) = self.durable.clone();
            let last = log.last().map_or(0, |e| e.seq);
            if self.strict {
                assert_eq!(state.committed, last, "{}: persisted state does not match the log", self.me);
            }
            self.log = log;
            self.acked = state.acked;
            self.link = Link::new(self.me.clone(), self.peer.clone(), self.cfg.clone(), Some(state), 0);
        } else {
            self.log.clear();
            self.acked = 0;
            let s = self.next_session;
            self.next_session += 1;
            self.link = Link::new(self.me.clone(), self.peer.clone(), self.cfg.clone(), None, s);
        }
        self.drain(now, false);
    }
}

// ---- the world: two parties, the store, a clock -------------------------

struct World {
    store: SimStore,
    parties: [Party; 2],
    now: Duration,
    rng: fastrand::Rng,
    faults: Faults,
    /// Most message files seen in each party's outbox at once.
    peak: [usize; 2],
    /// Check the window bound (off when an earlier session left files).
    check_window: bool,
    /// Print every operation (set DMP_SIM_TRACE=1).
    trace: bool,
}

impl World {
    fn new(seed: u64, cfg: LinkConfig) -> World {
        World {
            store: SimStore::default(),
            parties: [Party::new("alice", "bob", cfg.clone(), 1_000), Party::new("bob", "alice", cfg, 2_000)],
            now: Duration::ZERO,
            rng: fastrand::Rng::with_seed(seed),
            faults: Faults::default(),
            peak: [0; 2],
            check_window: true,
            trace: std::env::var_os("DMP_SIM_TRACE").is_some(),
        }
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }

    /// Performs one store operation on behalf of party `p`.
    fn perform(&mut self, p: usize, op: Op) -> OpResult {
        let me = self.parties[p].me.clone();
        let own = |k: &Key| k.components().next() == Some(me.as_str());
        let fail = |k: &Key, op: &'static str| StoreError::Io {
            store: "sim".into(),
            op,
            key: k.to_string(),
            msg: "injected failure".into(),
        };
        match op {
            Op::Put(k, data) => {
                let data: Vec<u8> = data.to_vec();
                assert!(own(&k), "{me} wrote {k}, outside its own outbox");
                if self.faults.fail_writes || self.faults.fail_puts {
                    return OpResult::Put(k.clone(), Err(fail(&k, "put")));
                }
                let failed = self.roll(self.faults.error);
                if failed && self.rng.bool() {
                    return OpResult::Put(k.clone(), Err(fail(&k, "put")));
                }
                if parse_msg_name(k.name()).is_some() {
                    if let Some(old) = self.store.msgs_ever.get(k.as_str()) {
                        assert!(*old == data, "{k} was overwritten with different bytes");
                    }
                    self.store.msgs_ever.insert(k.to_string(), data.to_vec());
                }
                let visible_at = self.visible_at(k.as_str());
                self.store.objects.entry(k.to_string()).or_default().push(Version { data: Some(data), visible_at });
                self.check_window(p);
                OpResult::Put(k.clone(), if failed { Err(fail(&k, "put")) } else { Ok(()) })
            }
            Op::Delete(k) => {
                assert!(own(&k), "{me} deleted {k}, outside its own outbox");
                if self.faults.fail_writes {
                    return OpResult::Deleted(k.clone(), Err(fail(&k, "delete")));
                }
                let failed = self.roll(self.faults.error);
                if failed && self.rng.bool() {
                    return OpResult::Deleted(k.clone(), Err(fail(&k, "delete")));
                }
                if self.store.latest(k.as_str()).is_some() {
                    let visible_at = self.visible_at(k.as_str());
                    self.store.objects.entry(k.to_string()).or_default().push(Version { data: None, visible_at });
                }
                OpResult::Deleted(k.clone(), if failed { Err(fail(&k, "delete")) } else { Ok(()) })
            }
            Op::List(k) => {
                assert!(own(&k), "{me} listed {k}: a link never lists the peer's outbox");
                if self.faults.fail_writes || self.roll(self.faults.error) {
                    return OpResult::Listed(k.clone(), Err(fail(&k, "list")));
                }
                // Raw names, junk included: the link must filter them.
                OpResult::Listed(k.clone(), Ok(self.store.names(k.as_str())))
            }
            Op::Get(k, max) => {
                if self.roll(self.faults.error) || self.faults.fail_gets_of.as_deref() == Some(k.as_str()) {
                    return OpResult::Got(k.clone(), Err(fail(&k, "get")));
                }
                let data = if own(&k) { self.store.latest(k.as_str()).cloned() } else { self.read_peer(&k) };
                let r = match data {
                    Some(d) if d.len() as u64 > max => Err(StoreError::TooLarge {
                        store: "sim".into(),
                        key: k.to_string(),
                        len: Some(d.len() as u64),
                        max,
                    }),
                    d => Ok(d),
                };
                OpResult::Got(k, r)
            }
        }
    }

    fn visible_at(&mut self, key: &str) -> Option<Duration> {
        if self.store.held.contains(key) {
            return None;
        }
        let delay = if self.faults.max_delay > 0 { self.rng.u64(0..=self.faults.max_delay) } else { 0 };
        Some(self.now + ms(delay))
    }

    /// What the other party sees of `k`: the newest visible version, or
    /// with faults an older one, a torn or a corrupted copy.
    fn read_peer(&mut self, k: &Key) -> Option<Vec<u8>> {
        let now = self.now;
        let visible: Vec<Option<Vec<u8>>> = self
            .store
            .objects
            .get(k.as_str())
            .map(|vs| vs.iter().filter(|v| v.visible_at.is_some_and(|t| t <= now)).map(|v| v.data.clone()).collect())
            .unwrap_or_default();
        let mut data = visible.last().cloned().flatten();
        // A scripted answer is used up only once there is something to spoil.
        let scripted =
            if data.is_some() { self.store.scripted.get_mut(k.as_str()).and_then(|q| q.pop_front()) } else { None };
        if let Some(s) = scripted {
            return match (s, data) {
                (_, None) => None,
                (Scripted::Torn, Some(d)) => Some(d[..d.len() / 2].to_vec()),
                (Scripted::Corrupt, Some(mut d)) => {
                    let i = d.len() / 3;
                    d[i] ^= 0x40;
                    Some(d)
                }
            };
        }
        if self.roll(self.faults.stale) {
            // Any older version, or nothing yet.
            let i = self.rng.usize(0..=visible.len());
            data = if i == visible.len() { None } else { visible[i].clone() };
        }
        if let Some(d) = data.as_mut() {
            if !d.is_empty() && self.roll(self.faults.torn) {
                let n = self.rng.usize(0..d.len());
                d.truncate(n);
            } else if !d.is_empty() && self.roll(self.faults.corrupt) {
                let i = self.rng.usize(0..d.len());
                d[i] ^= 1 << self.rng.u8(0..8);
            }
        }
        data
    }

    fn check_window(&mut self, p: usize) {
        let dir = self.parties[p].out_dir();
        let n = self.store.names(&dir).iter().filter(|n| parse_msg_name(n).is_some()).count();
        self.peak[p] = self.peak[p].max(n);
        if self.check_window {
            let w = self.parties[p].cfg.window as usize;
            assert!(n <= w, "{dir} holds {n} message files, more than the window of {w}: {:?}", self.store.names(&dir));
        }
    }

    fn commit_late(&mut self) -> bool {
        let p = self.faults.commit_late;
        self.roll(p)
    }

    /// Runs party `p`'s next operation and feeds the result back.
    fn run_op(&mut self, p: usize) -> bool {
        let Some(op) = self.parties[p].ops.pop_front() else { return false };
        let shown = format!("{op:?}");
        let res = self.perform(p, op);
        if self.trace {
            let r = match &res {
                OpResult::Got(_, Ok(Some(d))) => format!("{} bytes", d.len()),
                OpResult::Listed(_, r) => format!("{r:?}"),
                OpResult::Put(_, r) | OpResult::Deleted(_, r) => format!("{:?}", r.as_ref().map_err(|_| "failed")),
                OpResult::Got(_, r) => format!("{:?}", r.as_ref().map(|_| "nothing").map_err(|_| "failed")),
            };
            let shown: String = shown.chars().take(70).collect();
            eprintln!("{:>6?} {}: {shown} -> {r}", self.now, self.parties[p].me);
        }
        if self.roll(self.faults.crash / 4.0) {
            // Crash after the operation took effect, before its result was seen.
            self.restart(p, true);
            return true;
        }
        if let OpResult::Got(k, Ok(Some(_))) = &res {
            if parse_msg_name(k.name()).is_some() && self.faults.replay > 0.0 {
                let r = &mut self.parties[p].replays;
                r.push(res.clone());
                if r.len() > 8 {
                    r.remove(0);
                }
            }
        }
        let now = self.now;
        let late = self.commit_late();
        let party = &mut self.parties[p];
        party.feed(now, res);
        party.drain(now, late);
        self.after(p);
        true
    }

    fn after(&mut self, p: usize) {
        let now = self.now;
        let most = self.rng.u64(1..=4);
        let late = self.commit_late();
        let party = &mut self.parties[p];
        party.send_more(now, most);
        party.drain(now, late);
    }

    fn wake(&mut self, p: usize) {
        let now = self.now;
        let late = self.commit_late();
        let party = &mut self.parties[p];
        party.link.wake(now);
        party.drain(now, late);
        self.after(p);
    }

    fn restart(&mut self, p: usize, keep_state: bool) {
        let now = self.now;
        self.parties[p].restart(now, keep_state);
    }

    /// Runs operations and wakes until nothing is left to do (no faults
    /// drawn for ordering: everything in turn).
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            for p in 0..2 {
                while self.run_op(p) {
                    busy = true;
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the links never settle");
    }

    /// Advances the clock, wakes both links, settles; `rounds` times.
    fn rounds(&mut self, rounds: usize, step: Duration) {
        for _ in 0..rounds {
            self.now += step;
            self.wake(0);
            self.wake(1);
            self.settle();
        }
    }

    /// One random step.
    fn step(&mut self) {
        self.now += ms(self.rng.u64(0..=20));
        let p = self.rng.usize(0..2);
        if self.parties[p].link.wake_at().is_some_and(|t| t <= self.now) {
            self.wake(p);
        }
        let r = self.rng.f64();
        if self.roll(self.faults.crash) {
            if self.trace {
                eprintln!("{:>6?} {}: restart", self.now, self.parties[p].me);
            }
            self.restart(p, true);
        } else if self.roll(self.faults.replay) && !self.parties[p].replays.is_empty() {
            let i = self.rng.usize(0..self.parties[p].replays.len());
            let res = self.parties[p].replays[i].clone();
            let now = self.now;
            self.parties[p].feed(now, res);
            self.parties[p].drain(now, false);
        } else if r < 0.05 {
            let now = self.now;
            self.parties[p].commit(now);
            self.parties[p].drain(now, false);
        } else if r < 0.3 || self.parties[p].ops.is_empty() {
            self.wake(p);
        } else {
            self.run_op(p);
        }
    }

    /// True once each side has delivered, committed and seen acknowledged
    /// everything, and each outbox holds nothing but `head` and `ack`.
    fn done(&self) -> bool {
        (0..2).all(|p| {
            let me = &self.parties[p];
            let peer = &self.parties[1 - p];
            me.ops.is_empty()
                && me.recovered
                && self.store.latest(&format!("{}/{HEAD_NAME}", me.out_dir())).is_some()
                && me.pending.is_empty()
                && me.log.len() as u64 == peer.target
                && me.link.state().acked == me.target
                && me.link.last_queued_seq() == me.target
                && self.store.names(&me.out_dir()).iter().all(|n| parse_msg_name(n).is_none())
        })
    }

    /// Asserts the end state of a run in which neither side lost its state.
    fn check_end(&self) {
        for p in 0..2 {
            let me = &self.parties[p];
            let peer = &self.parties[1 - p];
            let seqs: Vec<u64> = me.log.iter().map(|e| e.seq).collect();
            let want: Vec<u64> = (1..=peer.target).collect();
            assert_eq!(seqs, want, "{} did not log every message of {} once, in order", me.me, peer.me);
            // What was delivered is what was written under that name.
            for e in &me.log {
                let key = format!("{}/{}", peer.out_dir(), msg_name(e.session, e.seq));
                let written = self.store.msgs_ever.get(&key).expect("delivered message was written");
                assert_eq!(&Envelope::decode(written, None).unwrap().payload, &e.payload);
            }
            let left = self.store.names(&me.out_dir());
            assert!(left.iter().any(|n| n == HEAD_NAME), "{} has no head file", me.me);
            let extra: Vec<&String> =
                left.iter().filter(|n| is_protocol_name(n) && *n != ACK_NAME && *n != HEAD_NAME).collect();
            assert!(extra.is_empty(), "{} left more than head and ack behind: {extra:?}", me.me);
        }
    }
}

fn small_cfg(window: u64, readahead: u64) -> LinkConfig {
    LinkConfig { window, readahead, head_every: Duration::ZERO, min_backoff: ms(5), max_backoff: ms(80), secure: false }
}

// ---- names ---------------------------------------------------------------

#[test]
fn message_names_round_trip() {
    for (s, q) in [(1, 1), (0x1234_5678_9abc_def0, u64::MAX), (u64::MAX, 0)] {
        let n = msg_name(s, q);
        assert_eq!(n.len(), 37);
        assert_eq!(parse_msg_name(&n), Some((s, q)));
        assert!(is_protocol_name(&n));
    }
    assert!(is_protocol_name("ack"));
    assert!(is_protocol_name("head"));
}

#[test]
fn conflict_copies_and_stray_names_are_not_protocol_names() {
    let good = msg_name(1, 1);
    assert_eq!(good, "0000000000000001-0000000000000001.msg");
    for bad in [
        "0000000000000001-0000000000000001 (conflicted copy).msg",
        "0000000000000001-0000000000000001 (alice's conflicted copy 2026-01-02).msg",
        "0000000000000001-0000000000000001.sync-conflict-20260101-120000-ABCDEFG.msg",
        "x.sync-conflict-20260101-120000-ABCDEFG.msg",
        "0000000000000001-0000000000000001.msg.sync-conflict-20260101-120000-ABCDEFG",
        ".syncthing.0000000000000001-0000000000000001.msg.tmp",
        "~syncthing~0000000000000001-0000000000000001.msg.tmp",
        ".~dmp-0123456789abcdef.tmp",
        "000000000000000A-0000000000000001.msg",
        "0000000000000001-000000000000000F.msg",
        "000000000000001-0000000000000001.msg",
        "00000000000000001-0000000000000001.msg",
        "0000000000000001_0000000000000001.msg",
        "0000000000000001-0000000000000001.MSG",
        "0000000000000001-0000000000000001.msg.tmp",
        "0000000000000001-0000000000000001",
        "+000000000000001-0000000000000001.msg",
        "0000000000000001-+000000000000001.msg",
        "0000000000000001-00000000000000é1.msg",
        "ack (1)",
        "head.sync-conflict-20260101-120000-ABCDEFG",
        "Ack",
        "HEAD",
        "desktop.ini",
        "",
        ".msg",
    ] {
        assert_eq!(parse_msg_name(bad).filter(|_| is_valid_component(bad)), None, "{bad:?} parsed as a message name");
        assert!(!is_protocol_name(bad), "{bad:?} taken for a protocol name");
    }
}

#[test]
fn ack_body_round_trip_and_rejects_wrong_lengths() {
    let a = AckBody { session: 7, upto: 42 };
    assert_eq!(AckBody::decode(&a.encode()), Some(a));
    assert_eq!(AckBody::decode(&[0; 15]), None);
    assert_eq!(AckBody::decode(&[0; 17]), None);
    assert_eq!(AckBody::decode(&[]), None);
}

// ---- scripted scenarios ---------------------------------------------------

fn world(cfg: LinkConfig) -> World {
    let mut w = World::new(1, cfg);
    w.parties[0].target = 0;
    w.parties[1].target = 0;
    w.settle();
    w
}

fn logged(p: &Party) -> Vec<u64> {
    p.log.iter().map(|e| e.seq).collect()
}

#[test]
fn messages_arrive_in_order_and_are_cleaned_up() {
    let mut w = world(small_cfg(4, 4));
    w.parties[0].target = 10;
    w.parties[1].target = 3;
    w.rounds(30, ms(10));
    assert!(w.done());
    w.check_end();
    assert!(w.peak[0] <= 4, "peak {}", w.peak[0]);
}

#[test]
fn out_of_order_visibility_delivers_in_order() {
    let mut w = world(small_cfg(8, 8));
    let a = w.parties[0].out_dir();
    let session = w.parties[0].link.state().session;
    // Messages 1..=3 become visible to bob only in the order 3, 1, 2.
    for seq in 1..=3 {
        w.store.hold(&format!("{a}/{}", msg_name(session, seq)));
    }
    w.parties[0].target = 5;
    w.rounds(5, ms(10));
    assert!(logged(&w.parties[1]).is_empty(), "nothing can be delivered before message 1");
    w.store.release(&format!("{a}/{}", msg_name(session, 3)), w.now);
    w.rounds(5, ms(10));
    assert!(logged(&w.parties[1]).is_empty(), "3 seen before 1 is not delivered");
    w.store.release(&format!("{a}/{}", msg_name(session, 1)), w.now);
    w.rounds(5, ms(10));
    assert_eq!(logged(&w.parties[1]), vec![1]);
    w.store.release(&format!("{a}/{}", msg_name(session, 2)), w.now);
    w.rounds(10, ms(10));
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3, 4, 5]);
    assert!(w.done());
    w.check_end();
}

#[test]
fn late_head_and_ack_files_only_delay() {
    let mut w = world(small_cfg(2, 2));
    let a = w.parties[0].out_dir();
    let b = w.parties[1].out_dir();
    w.store.hold(&format!("{b}/{ACK_NAME}"));
    w.parties[0].target = 6;
    w.rounds(10, ms(10));
    // Bob got the first window but alice never saw an ack: she stops at 2.
    assert_eq!(logged(&w.parties[1]), vec![1, 2]);
    assert_eq!(w.parties[0].link.state().acked, 0);
    assert_eq!(w.peak[0], 2);
    w.store.release(&format!("{b}/{ACK_NAME}"), w.now);
    w.store.hold(&format!("{a}/{HEAD_NAME}"));
    w.rounds(20, ms(10));
    assert_eq!(logged(&w.parties[1]), (1..=6).collect::<Vec<_>>());
    w.store.release(&format!("{a}/{HEAD_NAME}"), w.now);
    w.rounds(5, ms(10));
    assert!(w.done());
    w.check_end();
}

#[test]
fn duplicates_and_replays_are_delivered_once() {
    let mut w = world(small_cfg(4, 4));
    w.parties[0].target = 6;
    w.faults.replay = 1.0; // keep results for replay
    w.rounds(3, ms(10));
    let replays = w.parties[1].replays.clone();
    assert!(!replays.is_empty());
    // Feed every message bob ever read again, several times, at odd moments.
    for _ in 0..3 {
        for r in &replays {
            let now = w.now;
            w.parties[1].feed(now, r.clone());
            w.parties[1].drain(now, false);
        }
        w.rounds(2, ms(10));
    }
    w.faults.replay = 0.0;
    w.rounds(10, ms(10));
    assert_eq!(w.parties[1].deliveries.len(), 6, "{:?}", w.parties[1].deliveries);
    assert!(w.done());
    w.check_end();
}

#[test]
fn stale_copy_of_a_deleted_message_is_not_delivered_again() {
    let mut w = world(small_cfg(4, 4));
    w.parties[0].target = 3;
    w.rounds(10, ms(10));
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3]);
    // A cache keeps serving deleted message files; bob restarts from his
    // persisted state and reads them again.
    let a = w.parties[0].out_dir();
    let session = w.parties[0].link.state().session;
    for seq in 1..=3 {
        let k = format!("{a}/{}", msg_name(session, seq));
        let old = w.store.msgs_ever[&k].clone();
        w.store.plant(&k, &old);
    }
    w.restart(1, true);
    w.rounds(10, ms(10));
    assert_eq!(w.parties[1].deliveries.len(), 3);
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3]);
}

#[test]
fn torn_and_corrupt_files_are_rejected_until_the_good_copy_appears() {
    let mut w = world(small_cfg(4, 1));
    let a = w.parties[0].out_dir();
    let session = w.parties[0].link.state().session;
    let k1 = format!("{a}/{}", msg_name(session, 1));
    let k2 = format!("{a}/{}", msg_name(session, 2));
    w.store.script(&k1, [Scripted::Torn, Scripted::Corrupt, Scripted::Torn]);
    w.store.script(&k2, [Scripted::Corrupt]);
    w.parties[0].target = 2;
    w.rounds(2, ms(1));
    assert!(logged(&w.parties[1]).is_empty());
    assert!(w.parties[1].rejected.iter().any(|(k, _)| k.as_str() == k1), "{:?}", w.parties[1].rejected);
    w.rounds(40, ms(10));
    assert_eq!(logged(&w.parties[1]), vec![1, 2]);
    assert_eq!(w.parties[1].deliveries.len(), 2);
    assert!(w.parties[1].rejected.iter().any(|(k, _)| k.as_str() == k2));
    assert!(w.store.scripted.values().all(|q| q.is_empty()), "every scripted fault was read");
    assert!(w.done());
    w.check_end();
}

#[test]
fn garbage_head_and_ack_files_are_rejected_not_fatal() {
    let mut w = world(small_cfg(4, 4));
    let a = w.parties[0].out_dir();
    let b = w.parties[1].out_dir();
    w.store.script(&format!("{a}/{HEAD_NAME}"), [Scripted::Torn, Scripted::Corrupt]);
    w.store.script(&format!("{b}/{ACK_NAME}"), [Scripted::Corrupt, Scripted::Torn]);
    w.parties[0].target = 4;
    w.rounds(40, ms(10));
    assert!(w.parties[1].rejected.iter().any(|(k, _)| k.name() == HEAD_NAME));
    assert!(w.parties[0].rejected.iter().any(|(k, _)| k.name() == ACK_NAME));
    assert!(w.done());
    w.check_end();
}

/// A `head` that stays bad (planted, or sealed with a key the peer no
/// longer has) is read again with a doubling back-off, however often the
/// link is woken meanwhile: before, every 80 ms for ever, each read a
/// warning in the log.
#[test]
fn a_head_that_stays_bad_is_read_with_back_off() {
    let cfg = LinkConfig { max_backoff: Duration::from_secs(5), ..small_cfg(4, 4) };
    let mut w = world(cfg);
    let head = format!("{}/{HEAD_NAME}", w.parties[0].out_dir());
    let good = w.store.latest(&head).cloned().expect("alice wrote her head");
    w.store.plant(&head, b"not an envelope at all");
    let rejected = |w: &World| w.parties[1].rejected.iter().filter(|(k, _)| k.name() == HEAD_NAME).count();
    let before = rejected(&w);
    // 30 s of wakes every 10 ms, as other files changing would cause.
    for _ in 0..3000 {
        w.now += ms(10);
        w.wake(1);
        while w.run_op(1) {}
    }
    // 80 ms, 160, 320, ... then every 5 s: a dozen reads, not 375.
    let reads = rejected(&w) - before;
    assert!((4..=16).contains(&reads), "{reads} reads of a bad head in 30 s");
    // A good head is picked up again within the back-off.
    w.store.plant(&head, &good);
    let session = w.parties[0].link.state().session;
    w.parties[0].target = 2;
    w.rounds(40, ms(200));
    assert!(w.done(), "alice's session {session} was not followed after her head came good");
    w.check_end();
}

/// Reads of the peer's `ack` that fail (a peer outbox answering 403 or an
/// HTML page for it) back off as a bad `ack` does: before, one every 80 ms
/// for ever.
#[test]
fn failing_reads_of_the_ack_back_off() {
    let cfg = LinkConfig { max_backoff: Duration::from_secs(5), ..small_cfg(4, 4) };
    let mut w = world(cfg);
    let ack = format!("{}/{ACK_NAME}", w.parties[1].out_dir());
    w.faults.fail_gets_of = Some(ack.clone());
    w.parties[0].target = 1;
    let mut reads = 0;
    // 30 s of wakes every 10 ms, as other files changing would cause.
    for _ in 0..3000 {
        w.now += ms(10);
        w.wake(0);
        reads += w.parties[0].ops.iter().filter(|o| matches!(o, Op::Get(k, _) if k.as_str() == ack)).count();
        while w.run_op(0) {}
        while w.run_op(1) {}
    }
    assert!((4..=20).contains(&reads), "{reads} reads of a failing ack in 30 s");
    w.faults.fail_gets_of = None;
    w.rounds(40, ms(200));
    assert!(w.done());
    w.check_end();
}

#[test]
fn conflict_copies_in_an_outbox_are_ignored() {
    let mut w = world(small_cfg(4, 4));
    let a = w.parties[0].out_dir();
    let session = w.parties[0].link.state().session;
    w.parties[0].target = 2;
    w.rounds(1, ms(10));
    let real = w.store.msgs_ever[&format!("{a}/{}", msg_name(session, 1))].clone();
    let junk = [
        format!("{} (conflicted copy).msg", msg_name(session, 1).trim_end_matches(".msg")),
        format!("{}.sync-conflict-20260101-120000-ABCDEFG.msg", msg_name(session, 1).trim_end_matches(".msg")),
        "x.sync-conflict-20260101-120000-ABCDEFG.msg".to_owned(),
        ".syncthing.head.tmp".to_owned(),
        "stray".to_owned(),
    ];
    for n in &junk {
        w.store.plant(&format!("{a}/{n}"), &real);
    }
    // Alice restarts and lists her outbox, junk and all.
    w.restart(0, true);
    w.parties[0].target = 5;
    w.rounds(20, ms(10));
    assert!(w.done());
    w.check_end();
    for n in &junk {
        assert!(w.store.latest(&format!("{a}/{n}")).is_some(), "{n} is not the link's to delete");
    }
}

#[test]
fn window_bounds_unacknowledged_files() {
    for window in [1, 3, 7] {
        let mut w = world(small_cfg(window, 16));
        let b = w.parties[1].out_dir();
        w.store.hold(&format!("{b}/{ACK_NAME}"));
        w.parties[0].target = 20;
        w.rounds(10, ms(10));
        assert_eq!(w.peak[0] as u64, window);
        assert_eq!(w.parties[0].link.state().next_seq - 1, window, "nothing written beyond the window");
        assert_eq!(w.parties[0].link.unacked(), 20);
        w.store.release(&format!("{b}/{ACK_NAME}"), w.now);
        w.rounds(60, ms(10));
        assert!(w.done(), "window {window}");
        w.check_end();
        assert_eq!(w.peak[0] as u64, window);
    }
}

#[test]
fn acknowledged_files_are_deleted_as_acks_arrive() {
    let mut w = world(small_cfg(8, 8));
    let a = w.parties[0].out_dir();
    let session = w.parties[0].link.state().session;
    w.parties[0].target = 5;
    // Bob commits 1..=3 only.
    w.faults.commit_late = 1.0;
    w.rounds(3, ms(10));
    w.faults.commit_late = 0.0;
    let delivered = w.parties[1].pending.len();
    assert_eq!(delivered, 5);
    let keep: Vec<Envelope> = w.parties[1].pending.drain(3..).collect();
    let now = w.now;
    w.parties[1].commit(now);
    w.parties[1].pending = keep;
    w.parties[1].drain(now, false);
    w.settle();
    w.rounds(2, ms(10));
    assert_eq!(w.parties[0].link.state().acked, 3);
    let mut left: Vec<u64> = w.store.names(&a).iter().filter_map(|n| parse_msg_name(n)).map(|(_, s)| s).collect();
    left.sort();
    assert_eq!(left, vec![4, 5], "acked files deleted, the rest kept");
    let now = w.now;
    w.parties[1].commit(now);
    w.parties[1].drain(now, false);
    w.rounds(3, ms(10));
    assert!(w.store.names(&a).iter().all(|n| parse_msg_name(n).is_none()));
    assert!(w.store.msgs_ever.keys().any(|k| k.ends_with(&msg_name(session, 5))));
    w.check_end();
}

// ---- restarts ---------------------------------------------------------

/// Runs a stream with a restart of `who` (0, 1 or both) after `at` rounds.
fn restart_mid_stream(who: &[usize], at: usize, window: u64) {
    let mut w = world(small_cfg(window, 4));
    w.parties[0].target = 30;
    w.parties[1].target = 30;
    w.faults.max_delay = 15;
    for round in 0..200 {
        if round == at {
            for &p in who {
                w.restart(p, true);
            }
        }
        w.rounds(1, ms(5));
        if w.done() {
            break;
        }
    }
    assert!(w.done(), "restart of {who:?} at round {at} did not finish");
    w.check_end();
}

#[test]
fn restart_of_the_sender_neither_skips_nor_reuses() {
    for at in 0..12 {
        restart_mid_stream(&[0], at, 4);
    }
}

#[test]
fn restart_of_the_receiver_neither_redelivers_nor_skips() {
    for at in 0..12 {
        restart_mid_stream(&[1], at, 4);
    }
}

#[test]
fn restart_of_both_sides_at_once() {
    for at in 0..12 {
        restart_mid_stream(&[0, 1], at, 3);
    }
}

#[test]
fn restart_between_an_operation_and_its_result() {
    // Each op in turn is performed and then its party restarts before the
    // result is fed back: the write (or delete) took effect unseen.
    for victim in 0..2 {
        for nth in 0..40 {
            let mut w = world(small_cfg(3, 3));
            w.parties[0].target = 8;
            w.parties[1].target = 8;
            let mut count = 0;
            'outer: for _ in 0..50 {
                w.now += ms(5);
                w.wake(0);
                w.wake(1);
                for _ in 0..1000 {
                    let mut busy = false;
                    for p in 0..2 {
                        if p == victim && count == nth {
                            if let Some(op) = w.parties[p].ops.pop_front() {
                                let _ = w.perform(p, op);
                                w.restart(p, true);
                                count += 1;
                                busy = true;
                                continue;
                            }
                        }
                        if w.run_op(p) {
                            busy = true;
                            if p == victim {
                                count += 1;
                            }
                        }
                    }
                    if !busy {
                        break;
                    }
                }
                if w.done() {
                    break 'outer;
                }
            }
            assert!(w.done(), "victim {victim}, op {nth}");
            w.check_end();
        }
    }
}

#[test]
fn receiver_that_lost_its_state_reenters_at_the_head_base() {
    let mut w = world(small_cfg(8, 8));
    w.parties[0].target = 5;
    w.rounds(10, ms(10));
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3, 4, 5]);
    assert_eq!(w.parties[0].link.state().acked, 5);
    // Bob loses everything; alice goes on.
    w.restart(1, false);
    w.parties[1].strict = false;
    w.parties[0].target = 9;
    w.rounds(20, ms(10));
    let got: Vec<u64> = w.parties[1].deliveries.iter().skip(5).map(|(_, s)| *s).collect();
    assert_eq!(got, vec![6, 7, 8, 9], "re-entered at the base alice announced");
    assert_eq!(w.parties[0].link.state().acked, 9);
    let a = w.parties[0].out_dir();
    assert!(w.store.names(&a).iter().all(|n| parse_msg_name(n).is_none()));
}

#[test]
fn receiver_that_lost_its_state_with_messages_waiting() {
    let mut w = world(small_cfg(8, 8));
    let a = w.parties[0].out_dir();
    let session = w.parties[0].link.state().session;
    w.parties[0].target = 3;
    w.rounds(10, ms(10));
    assert_eq!(w.parties[0].link.state().acked, 3);
    // Alice writes 4..=6, which bob cannot see yet; then bob loses everything.
    for seq in 4..=6 {
        w.store.hold(&format!("{a}/{}", msg_name(session, seq)));
    }
    w.parties[0].target = 6;
    w.rounds(2, ms(10));
    let before = w.parties[1].deliveries.len();
    w.restart(1, false);
    w.parties[1].strict = false;
    w.rounds(3, ms(10));
    assert_eq!(w.parties[1].deliveries.len(), before);
    for seq in 4..=6 {
        w.store.release(&format!("{a}/{}", msg_name(session, seq)), w.now);
    }
    w.rounds(20, ms(10));
    let after: Vec<u64> = w.parties[1].deliveries[before..].iter().map(|(_, s)| *s).collect();
    assert_eq!(after, vec![4, 5, 6], "re-entered at alice's base 4");
    assert_eq!(w.parties[0].link.state().acked, 6);
    assert!(w.store.names(&a).iter().all(|n| parse_msg_name(n).is_none()));
}

#[test]
fn sender_that_lost_its_state_starts_a_new_session_the_receiver_follows() {
    let mut w = world(small_cfg(4, 4));
    let a = w.parties[0].out_dir();
    let b = w.parties[1].out_dir();
    w.parties[0].target = 3;
    w.rounds(10, ms(10));
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3]);
    let old = w.parties[0].link.state().session;
    // Alice writes 4..=6, which bob cannot see yet, then loses everything.
    w.store.hold(&format!("{b}/{ACK_NAME}"));
    for seq in 4..=6 {
        w.store.hold(&format!("{a}/{}", msg_name(old, seq)));
    }
    w.parties[0].target = 6;
    w.rounds(2, ms(10));
    assert_eq!(w.store.names(&a).iter().filter(|n| parse_msg_name(n).is_some()).count(), 3);
    w.restart(0, false);
    let new = w.parties[0].link.state().session;
    assert!(new > old);
    w.parties[0].target = 4;
    w.store.release(&format!("{b}/{ACK_NAME}"), w.now);
    w.rounds(20, ms(10));
    let sessions: Vec<(u64, u64)> = w.parties[1].deliveries.clone();
    assert_eq!(sessions[..3], [(old, 1), (old, 2), (old, 3)]);
    assert_eq!(sessions[3..], [(new, 1), (new, 2), (new, 3), (new, 4)], "bob follows the new session");
    assert_eq!(w.parties[1].link.state().peer_session, Some(new));
    // The old session's leftovers are gone, and so is everything acked.
    assert!(w.store.names(&a).iter().all(|n| parse_msg_name(n).is_none()), "{:?}", w.store.names(&a));
    assert_eq!(w.parties[0].link.state().acked, 4);
    // A restored bob does not go back to the old session.
    w.restart(1, true);
    w.rounds(5, ms(10));
    assert_eq!(w.parties[1].deliveries.len(), 7);
}

/// Runs every queued operation at the current instant, at most `cap`.
fn run_now(w: &mut World, cap: usize) -> usize {
    let mut n = 0;
    loop {
        let mut busy = false;
        for p in 0..2 {
            if w.run_op(p) {
                busy = true;
                n += 1;
                assert!(n <= cap, "{} keeps retrying at the same instant", w.parties[p].me);
            }
        }
        if !busy {
            return n;
        }
    }
}

/// Wakes both parties at the current instant and returns the writes (and
/// lists) they ask for; reads are allowed at every wake.
fn writes_on_wake(w: &mut World) -> Vec<Op> {
    let mut writes = Vec::new();
    for _ in 0..3 {
        for p in 0..2 {
            w.wake(p);
            writes.extend(w.parties[p].ops.iter().filter(|o| !matches!(o, Op::Get(..))).cloned());
        }
        run_now(w, 100);
    }
    writes
}

#[test]
fn a_failing_store_is_retried_with_back_off_not_in_a_loop() {
    let mut w = world(small_cfg(4, 4));
    w.parties[0].target = 3;
    w.wake(0);
    while w.run_op(0) {}
    // Now every write and list fails. Alice restarts (her listing fails);
    // bob delivers 1..=3 (his ack fails).
    w.faults.fail_writes = true;
    w.restart(0, true);
    w.wake(1);
    run_now(&mut w, 50);
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3]);
    let again = writes_on_wake(&mut w);
    assert!(again.is_empty(), "retried without waiting: {again:?}");
    // Later listing works but puts still fail: alice's head and messages.
    w.faults.fail_writes = false;
    w.faults.fail_puts = true;
    w.parties[0].target = 6;
    w.rounds(1, ms(1000));
    let again = writes_on_wake(&mut w);
    assert!(again.is_empty(), "retried without waiting: {again:?}");
    // The store recovers: everything completes.
    w.faults.fail_puts = false;
    w.rounds(40, ms(50));
    assert!(w.done());
    w.check_end();
}

#[test]
fn retries_of_a_failing_put_back_off_exponentially() {
    let cfg = LinkConfig { max_backoff: Duration::from_secs(5), ..small_cfg(4, 4) };
    let mut w = world(cfg);
    w.faults.fail_puts = true;
    w.parties[0].target = 1;
    let mut attempts = 0;
    for _ in 0..3000 {
        w.now += ms(1);
        if w.now == ms(1) || w.parties[0].link.wake_at().is_some_and(|t| t <= w.now) {
            w.wake(0);
        }
        attempts +=
            w.parties[0].ops.iter().filter(|o| matches!(o, Op::Put(k, _) if k.name().ends_with(".msg"))).count();
        while w.run_op(0) {}
    }
    // 20 ms, 20, 40, 80, ... 1280: a handful in 3 s, not one every 20 ms.
    assert!((3..=12).contains(&attempts), "{attempts} attempts to write one message in 3 s");
    w.faults.fail_puts = false;
    w.rounds(10, ms(1000));
    assert_eq!(logged(&w.parties[1]), vec![1]);
}

// ---- randomized runs --------------------------------------------------

fn random_run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cfg = small_cfg(rng.u64(1..=6), rng.u64(1..=6));
    let mut w = World::new(seed, cfg);
    w.parties[0].target = rng.u64(0..=25);
    w.parties[1].target = rng.u64(0..=25);
    let heavy = rng.bool();
    w.faults = Faults {
        max_delay: rng.u64(0..=60),
        stale: if heavy { 0.2 } else { 0.05 },
        torn: if heavy { 0.1 } else { 0.02 },
        corrupt: if heavy { 0.05 } else { 0.01 },
        replay: 0.05,
        error: if heavy { 0.05 } else { 0.0 },
        crash: if heavy { 0.01 } else { 0.002 },
        commit_late: 0.3,
        ..Faults::default()
    };
    if rng.bool() {
        // Conflict copies and strays in alice's outbox from the start.
        w.store.plant("alice/bob/0000000000000001-0000000000000001 (conflicted copy).msg", b"junk");
        w.store.plant("alice/bob/x.sync-conflict-20260101-120000-ABCDEFG.msg", b"junk");
        w.store.plant("alice/bob/.syncthing.head.tmp", b"junk");
    }
    let mut steps = 0;
    for _ in 0..3_000 {
        w.step();
        steps += 1;
        if w.done() {
            break;
        }
    }
    if std::env::var_os("DMP_SIM_STATS").is_some() {
        eprintln!("seed {seed}: {steps} steps, sim time {:?}", w.now);
    }
    // Then a quiet tail: no new faults; everything must complete.
    w.faults = Faults { max_delay: w.faults.max_delay, commit_late: 0.0, ..Faults::default() };
    for _ in 0..1_000 {
        if w.done() {
            break;
        }
        let now = w.now;
        for p in 0..2 {
            w.parties[p].commit(now);
            w.parties[p].drain(now, false);
        }
        w.rounds(1, ms(20));
    }
    assert!(
        w.done(),
        "not done: alice logged {}/{}, bob logged {}/{}; acked {}/{}",
        w.parties[0].log.len(),
        w.parties[1].target,
        w.parties[1].log.len(),
        w.parties[0].target,
        w.parties[0].link.state().acked,
        w.parties[1].link.state().acked,
    );
    w.check_end();
}

#[test]
fn randomized_runs_deliver_exactly_once_in_order() {
    // DMP_SIM_SEED=n replays one run; DMP_SIM_RUNS=n runs more seeds.
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let seeds: Vec<u64> = match env("DMP_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env("DMP_SIM_RUNS").unwrap_or(250)).collect(),
    };
    for seed in seeds {
        let r = std::panic::catch_unwind(|| random_run(seed));
        if let Err(e) = r {
            eprintln!("mailbox simulation failed with seed {seed}; replay with DMP_SIM_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

/// Regression (hostile corpus, `head_base_u64_max`): a head announcing a
/// base near `u64::MAX` overflowed the read-ahead range (a panic in debug
/// builds, a wrapped range in release). It is entered, and nothing panics.
#[test]
fn a_head_announcing_a_base_near_u64_max_does_not_overflow() {
    for base in [u64::MAX, u64::MAX - 1, u64::MAX - 2] {
        let mut w = world(small_cfg(4, 4));
        let a = w.parties[0].out_dir();
        let (me, peer) = (w.parties[0].me.clone(), w.parties[0].peer.clone());
        let env = Envelope {
            flags: 0,
            kind: Kind::Head,
            sender: me,
            recipient: peer,
            session: u64::MAX,
            seq: 0,
            base,
            payload: Vec::new(),
        };
        for _ in 0..10 {
            w.store.plant(&format!("{a}/{HEAD_NAME}"), &env.encode());
            w.rounds(2, ms(10));
        }
    }
}

/// `slowest_ack` is the longest time from a message's write to the
/// acknowledgement covering it: milliseconds here, 20 s when the peer's
/// `ack` shows up 20 s late (as through a sync engine).
#[test]
fn slowest_ack_is_the_longest_wait_for_an_acknowledgement() {
    let mut w = world(small_cfg(4, 4));
    assert_eq!(w.parties[0].link.slowest_ack(), None, "nothing written yet");
    w.parties[0].target = 2;
    w.rounds(5, ms(10));
    assert_eq!(w.parties[0].link.state().acked, 2);
    let fast = w.parties[0].link.slowest_ack().expect("acknowledged");
    assert!(fast <= ms(50), "{fast:?}");
    let b = w.parties[1].out_dir();
    w.store.hold(&format!("{b}/{ACK_NAME}"));
    w.parties[0].target = 4;
    w.rounds(200, ms(100));
    assert_eq!(logged(&w.parties[1]), vec![1, 2, 3, 4]);
    assert_eq!(w.parties[0].link.state().acked, 2, "the ack is held back");
    w.store.release(&format!("{b}/{ACK_NAME}"), w.now);
    w.rounds(5, ms(10));
    assert_eq!(w.parties[0].link.state().acked, 4);
    let slow = w.parties[0].link.slowest_ack().expect("acknowledged");
    assert!(slow >= Duration::from_secs(19) && slow <= Duration::from_secs(21), "{slow:?}");
}

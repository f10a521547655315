//! Scenario (a): two parties exchange messages both ways over one mailbox
//! link each, crashing and restarting from their saved link state.
//!
//! Each party's application produces `n` messages at random times; message
//! number `i` of any session carries a payload fixed by (direction, `i`),
//! so the receiver can check every delivery's bytes. After a restart the
//! application waits until the link has recovered (listed its outbox) and
//! queues the messages after the last one written. It commits a delivered
//! message at once or at its next step (a crash in between redelivers it,
//! which is allowed: its commit was never persisted).

use super::dftp::{link_cfg, show_op};
use super::store::SimStore;
use super::{Env, Life, Node, ScenarioEnd, run_pair, settle_deadline};
use crate::id::PeerId;
use crate::proto::mailbox::{Link, LinkConfig, LinkState, OpResult, Output};
use crate::wire::Kind;
use std::time::Duration;

/// What a receiving party saw, for the checks at the end.
enum Ev {
    /// A (re)start from this state: (peer session, committed), and whether
    /// a power loss had hit this party by then.
    Start {
        restored: Option<(u64, u64)>,
        lossy: bool,
    },
    Deliver {
        session: u64,
        seq: u64,
        content_ok: bool,
    },
}

struct MailNode {
    life: Life,
    me: PeerId,
    peer: PeerId,
    cfg: LinkConfig,
    link: Option<Link>,
    recovered: bool,
    /// Message `i` (1-based) becomes available at `produce_at[i - 1]`.
    produce_at: Vec<Duration>,
    seed: u64,
    tag: u8,
    peer_tag: u8,
    uncommitted: Option<u64>,
    /// Sessions this party has sent with.
    sessions: Vec<u64>,
    log: Vec<Ev>,
}

/// The payload of message `seq` from the party tagged `tag`.
fn payload(seed: u64, tag: u8, seq: u64) -> Vec<u8> {
    let mut r = fastrand::Rng::with_seed(seed ^ ((tag as u64) << 56) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let len = if r.u8(..10) == 0 { r.usize(..4096) } else { r.usize(..64) };
    let mut v = Vec::with_capacity(9 + len);
    v.push(tag);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend((0..len).map(|_| r.u8(..)));
    v
}

impl MailNode {
    fn n(&self) -> u64 {
        self.produce_at.len() as u64
    }

    fn start(&mut self, env: &mut Env) {
        let restored: Option<LinkState> = self.life.saved.as_deref().and_then(|s| serde_json::from_str(s).ok());
        let name = self.life.name;
        let inc = self.life.incarnation;
        env.log(|| format!("{name} starts (incarnation {inc}, state {restored:?})"));
        self.log.push(Ev::Start {
            restored: restored.as_ref().and_then(|s| s.peer_session.map(|p| (p, s.committed))),
            lossy: self.life.lossy,
        });
        let mut link =
            Link::new(self.me.clone(), self.peer.clone(), self.cfg.clone(), restored, self.life.fresh_session(env.now));
        if let Some(c) = env.crypto(&self.me, &self.peer) {
            link.set_crypto(env.now, c);
        }
        if !self.sessions.contains(&link.state().session) {
            self.sessions.push(link.state().session);
        }
        self.link = Some(link);
        self.recovered = false;
        self.uncommitted = None;
    }

    /// The application: commit what is pending, queue what is due.
    fn app(&mut self, env: &mut Env) {
        let now = env.now;
        let Some(link) = self.link.as_mut() else { return };
        if let Some(seq) = self.uncommitted.take() {
            link.commit(now, seq);
        }
        if !self.recovered {
            return;
        }
        let n = self.produce_at.len() as u64;
        while link.last_queued_seq() < n && self.produce_at[link.last_queued_seq() as usize] <= now {
            let seq = link.last_queued_seq() + 1;
            link.send(now, Kind::Ping, payload(self.seed, self.tag, seq));
        }
    }

    fn step(&mut self, env: &mut Env, store: &mut SimStore) -> Option<String> {
        let me = self.me.clone();
        let mut used = 0;
        loop {
            let outs = self.link.as_mut()?.take_outputs();
            if outs.is_empty() {
                return None;
            }
            for o in outs {
                if !env.output_budget(&mut used, self.life.name) {
                    self.life.ended = true;
                    return None;
                }
                if env.crash_due() {
                    let what = match &o {
                        Output::Op(op) => show_op(op),
                        other => format!("{other:?}").chars().take(80).collect(),
                    };
                    return Some(format!("before {what}"));
                }
                let now = env.now;
                match o {
                    Output::Op(op) => {
                        let what = if env.tracing() { show_op(&op) } else { String::new() };
                        let res = store.perform(env, me.as_str(), op);
                        if env.crash_due() {
                            return Some(format!("after {what}"));
                        }
                        let link = self.link.as_mut()?;
                        let recovery =
                            !self.recovered && matches!(&res, OpResult::Listed(k, Ok(_)) if k == link.out_dir());
                        link.on_result(env.now, res);
                        if recovery {
                            self.recovered = true;
                            self.app(env);
                        }
                    }
                    Output::Persist => {
                        let s = serde_json::to_string(&self.link.as_ref()?.snapshot()).expect("state serializes");
                        self.life.save(s);
                    }
                    Output::Deliver(e) => {
                        let ok = e.sender == self.peer
                            && e.kind == Kind::Ping
                            && e.payload == payload(self.seed, self.peer_tag, e.seq);
                        let (name, session, seq) = (self.life.name, e.session, e.seq);
                        env.log(|| format!("{name}: deliver {session:016x}-{seq} (content ok: {ok})"));
                        self.log.push(Ev::Deliver { session: e.session, seq: e.seq, content_ok: ok });
                        if env.rng.u8(..10) < 7 {
                            self.link.as_mut()?.commit(now, e.seq);
                        } else {
                            self.uncommitted = Some(e.seq);
                        }
                    }
                    Output::Acked(_) | Output::Rejected { .. } => {}
                }
            }
        }
    }

    /// Every message of the current session queued, written and acknowledged.
    fn sent_all(&self) -> bool {
        self.link.as_ref().is_some_and(|l| self.recovered && l.last_queued_seq() == self.n() && l.unacked() == 0)
    }

    /// Every message of `peer`'s current session committed here.
    fn got_all(&self, peer: &MailNode) -> bool {
        let (Some(mine), Some(theirs)) = (self.link.as_ref(), peer.link.as_ref()) else { return false };
        peer.n() == 0
            || (mine.state().peer_session == Some(theirs.state().session) && mine.state().committed >= peer.n())
    }
}

impl Node for MailNode {
    fn life(&self) -> &Life {
        &self.life
    }

    fn life_mut(&mut self) -> &mut Life {
        &mut self.life
    }

    fn id(&self) -> &str {
        self.me.as_str()
    }

    fn run(&mut self, env: &mut Env, store: &mut SimStore) {
        if self.life.down_until.take().is_some() {
            self.start(env);
        }
        let Some(link) = self.link.as_mut() else { return };
        link.wake(env.now);
        self.app(env);
        let before = self.link.as_ref().map(|l| (l.state().committed, l.state().acked));
        if let Some(at) = self.step(env, store) {
            self.link = None;
            let name = self.life.name;
            self.life.crash(env, &format!("({name}) {at}"));
            return;
        }
        if self.life.ended {
            return;
        }
        let link = self.link.as_ref().expect("running");
        if Some((link.state().committed, link.state().acked)) != before {
            self.life.poller.activity();
        }
        let mut deadline = link.wake_at();
        if self.recovered && link.last_queued_seq() < self.n() {
            let t = self.produce_at[link.last_queued_seq() as usize];
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        if self.uncommitted.is_some() {
            deadline = Some(env.now);
        }
        self.life.schedule(env, deadline);
    }
}

/// Checks the deliveries `to` saw from `from`.
fn check(env: &mut Env, from: &MailNode, to: &MailNode) {
    let mut cur: Option<(u64, u64)> = None;
    let mut lossy = false;
    let (f, t) = (from.life.name, to.life.name);
    for ev in &to.log {
        match *ev {
            Ev::Start { restored, lossy: l } => {
                cur = restored;
                lossy = l;
            }
            Ev::Deliver { session, seq, content_ok } => {
                let at = format!("{f}->{t} message {session:016x}-{seq}");
                if !content_ok {
                    env.violation(format!("{at}: delivered with the wrong content"));
                }
                if !from.sessions.contains(&session) {
                    env.violation(format!("{at}: a session {f} never used"));
                }
                match cur {
                    None if seq != 1 && !lossy => {
                        env.violation(format!("{at}: the first delivery of a fresh receiver is not message 1"))
                    }
                    None => {}
                    Some((s, last)) if s == session => {
                        if seq <= last {
                            env.violation(format!("{at}: delivered again (last delivered or committed: {last})"));
                        } else if seq > last + 1 && !lossy {
                            env.violation(format!("{at}: skipped messages {}..{}", last + 1, seq - 1));
                        }
                    }
                    Some((s, _)) if session > s => {
                        if from.sessions.len() < 2 {
                            env.violation(format!("{at}: a new session although {f} kept its state"));
                        } else if seq != 1 && !lossy {
                            env.violation(format!("{at}: a new session entered at message {seq}, not 1"));
                        }
                    }
                    Some((s, _)) => env.violation(format!("{at}: older than session {s:016x} already received")),
                }
                cur = Some((session, seq));
            }
        }
    }
}

/// Runs the scenario with sizes and settings drawn from `env.rng`.
pub(super) fn run(env: &mut Env) -> ScenarioEnd {
    let seed = env.rng.u64(..);
    let notify = env.cfg.notify;
    let make = |env: &mut Env, name: &'static str, me: &str, peer: &str, tag: u8| {
        let n = if env.rng.u8(..8) == 0 { env.rng.u64(..=200) } else { env.rng.u64(..=40) };
        let spread = env.rng.u64(1..=20_000);
        let mut produce_at: Vec<Duration> = (0..n).map(|_| Duration::from_millis(env.rng.u64(..spread))).collect();
        produce_at.sort_unstable();
        let mut life = Life::new(name, notify);
        life.down_until = Some(Duration::from_millis(env.rng.u64(..2000)));
        MailNode {
            life,
            me: PeerId::new(me).expect("id"),
            peer: PeerId::new(peer).expect("id"),
            cfg: LinkConfig { secure: env.secure(), ..link_cfg(&mut env.rng) },
            link: None,
            recovered: false,
            produce_at,
            seed,
            tag,
            peer_tag: 1 - tag,
            uncommitted: None,
            sessions: Vec::new(),
            log: Vec::new(),
        }
    };
    let mut a = make(env, "A", "alice", "bob", 0);
    let mut b = make(env, "B", "bob", "alice", 1);
    let (na, nb) = (a.n(), b.n());
    env.log(|| format!("mailbox: A sends {na}, B sends {nb}"));
    let mut store = SimStore::new();
    let bound = settle_deadline(&env.cfg, na + nb);
    let completed = run_pair(env, &mut store, &mut a, &mut b, bound, |a, b| {
        a.sent_all() && b.sent_all() && a.got_all(b) && b.got_all(a)
    });
    check(env, &a, &b);
    check(env, &b, &a);
    let lossy = a.life.lossy || b.life.lossy;
    let state = |x: &MailNode| {
        x.link.as_ref().map_or("down".to_string(), |l| {
            format!("{:?}, {} unacked, recovered {}", l.state(), l.unacked(), x.recovered)
        })
    };
    let outcome = if completed {
        format!("all {na} + {nb} messages delivered")
    } else {
        format!("incomplete: A {}; B {}", state(&a), state(&b))
    };
    if !completed && !lossy {
        let secs = (bound - env.cfg.until).as_secs();
        env.violation(format!("not complete {secs}s after the faults stopped: {outcome}"));
    }
    ScenarioEnd { completed, lossy, outcome }
}

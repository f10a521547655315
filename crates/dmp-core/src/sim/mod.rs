//! Deterministic simulation: the real mailbox and DFTP machines against a
//! simulated, eventually consistent store, simulated time and crashing
//! parties, all driven by one seeded random generator.
//!
//! One run (a *seed*) picks a scenario (a mailbox exchange or a file
//! transfer), its sizes and settings, and a fault profile; it runs both
//! parties until they are done or a time bound passes, then checks the
//! invariants. The same seed always gives the same run, so a failure
//! replays exactly: `cargo xtask sim --seed S` prints its trace.
//!
//! The model:
//! - **Store** ([`store::SimStore`]): each party owns its outbox and sees
//!   it exactly (its outbox is a local folder, or a store with read-your-
//!   writes). The other party sees each put or delete after a random delay,
//!   so files appear in random order; reads of the peer's files may return
//!   nothing, an older version (mutable `head`/`ack`, or a file whose delete
//!   shows late), a truncated body or a zero-filled placeholder of the right
//!   size. Conflict copies (names that fail the protocol patterns) appear in
//!   listings. Any operation may fail with a transient error; a failed put
//!   or delete may still have taken effect.
//! - **Time**: a virtual clock that jumps to the next wake-up (a machine
//!   deadline, the poll timer, or with notifications the first change of the
//!   peer's that became visible since the party last looked). Store
//!   operations take a random latency. Nothing sleeps.
//! - **Parties**: each runs a simulated driver that does what the real one
//!   in [`crate::drive`] does, synchronously. Before any output it acts on,
//!   and after any store or file operation before its result is fed back,
//!   a party may crash. A *process crash* keeps the last saved state and the
//!   local files. A *power loss* (rarer; a seed is then *lossy*) also rolls
//!   the state file back to an earlier save or tears it (read as "no state",
//!   as `crate::state` does), and may lose the receiver's last write to its
//!   temporary file.
//! - **Faults** run for a fault phase; then they stop (delays stay short)
//!   and the run must finish within [`SETTLE_BOUND`].
//! - **Settings** are random too: block size 1 B to 64 KiB, 0 to 20 chunks,
//!   window 1 to 6, a quota or none, link windows and read-ahead (the DFTP
//!   receiver keeps the tools' link window; the mailbox scenario covers small
//!   ones), polling or notifications.
//! - **Encryption**: half the seeds (picked by a generator of their own, so
//!   that a plaintext seed runs as it did before) seal every message and
//!   chunk as the tools do by default, with fixed identities per party and
//!   seeded randomness; a sealed chunk written again after a crash gets a
//!   fresh seal and so a new name, which the quota and clean-up must survive.
//!
//! Invariants checked (any breach is a *violation*):
//! - no machine panics; a party writes and deletes only in its own outbox;
//!   a write-once file (`.msg`, `.chunk`) is never rewritten with other bytes;
//! - mailbox: within one incarnation of a receiver (a run from a restored
//!   state), messages are delivered in order from the restored committed
//!   number, each exactly once, with the bytes sent: so no message whose
//!   commit was persisted is delivered again, and none is skipped. A skip
//!   ahead is allowed only after a power loss on the receiver (the peer
//!   holds its acknowledgement); a new session only after the sender lost
//!   its state;
//! - DFTP: staged chunk bytes in the sender's outbox never exceed
//!   min(quota, window × block size) (checked after every put); the target
//!   directory only ever holds `.dftp-<transfer>.part` and the offered name;
//!   a file reported finished on either side is byte-identical to the source;
//! - liveness: a run without power loss completes (mailbox: every message
//!   delivered and acknowledged both ways; DFTP: both sides finished, no
//!   temporary file left) within [`SETTLE_BOUND`] (plus [`SETTLE_PER_ITEM`]
//!   per message or chunk) of the faults stopping. A lossy run may instead
//!   stop with a clear failure, never a wrong file.
//!
//! [`fuzz`] holds the fuzzing harnesses (envelope decoder, DFTP receiver fed
//! arbitrary events), run by `cargo xtask fuzz` and `tests/fuzz_inputs.rs`.

mod dftp;
pub mod fuzz;
mod mailbox;
pub mod store;

use crate::drive::Poller;
use fastrand::Rng;
use std::fmt::Write as _;
use std::time::Duration;

/// How long after the fault phase a run must have completed: this, plus
/// [`SETTLE_PER_ITEM`] for each message or chunk (a window of 1 over a
/// store with seconds of delay takes seconds per item).
pub const SETTLE_BOUND: Duration = Duration::from_secs(300);
pub const SETTLE_PER_ITEM: Duration = Duration::from_secs(10);

/// The instant by which a run of `items` messages or chunks must be done.
pub(crate) fn settle_deadline(cfg: &FaultCfg, items: u64) -> Duration {
    cfg.until + SETTLE_BOUND + SETTLE_PER_ITEM * items as u32
}

/// The probabilities and magnitudes of faults for one seed.
#[derive(Clone, Debug)]
pub struct FaultCfg {
    /// Faults are injected before this instant only.
    pub until: Duration,
    /// A store operation fails with a transient error.
    pub p_error: f64,
    /// A failed put or delete took effect anyway.
    pub p_error_applied: f64,
    /// A visible file of the peer reads as absent.
    pub p_missing: f64,
    /// A read of the peer's file returns an older visible version.
    pub p_stale: f64,
    /// A read returns a truncated body.
    pub p_truncated: f64,
    /// A read returns zeros of the right length (an online-only placeholder).
    pub p_placeholder: f64,
    /// A put leaves a conflict copy next to the file.
    pub p_conflict: f64,
    /// A party crashes before acting on an output.
    pub p_crash: f64,
    /// A crash is a power loss (state rolled back or torn, last write lost).
    pub p_power: f64,
    /// Most crashes in one run.
    pub max_crashes: u32,
    /// Usual visibility delay upper bound (also after the fault phase).
    pub delay: Duration,
    /// A put or delete shows up after up to `slow_delay` instead.
    pub p_slow: f64,
    pub slow_delay: Duration,
    /// Store operation latency upper bound.
    pub latency: Duration,
    /// Parties are woken when a peer's file becomes visible (a folder store
    /// with notifications); otherwise they poll.
    pub notify: bool,
}

impl FaultCfg {
    /// No faults at all, instant visibility.
    pub fn calm() -> FaultCfg {
        FaultCfg {
            until: Duration::ZERO,
            p_error: 0.0,
            p_error_applied: 0.0,
            p_missing: 0.0,
            p_stale: 0.0,
            p_truncated: 0.0,
            p_placeholder: 0.0,
            p_conflict: 0.0,
            p_crash: 0.0,
            p_power: 0.0,
            max_crashes: 0,
            delay: Duration::ZERO,
            p_slow: 0.0,
            slow_delay: Duration::ZERO,
            latency: Duration::ZERO,
            notify: false,
        }
    }

    /// A random profile: each kind of fault is on or off, with a random rate.
    pub fn random(rng: &mut Rng) -> FaultCfg {
        let mut c = FaultCfg::calm();
        c.delay = [0, 5, 50, 300, 2000].map(Duration::from_millis)[rng.usize(..5)];
        c.latency = [0, 2, 30].map(Duration::from_millis)[rng.usize(..3)];
        c.notify = rng.bool();
        if rng.u8(..10) == 0 {
            return c; // calm
        }
        let mut maybe = |p: f64, max: f64| if rng.f64() < p { max * (0.1 + 0.9 * rng.f64()) } else { 0.0 };
        c.until = Duration::from_millis(5_000 + (maybe(1.0, 1.0) * 85_000.0) as u64);
        c.p_error = maybe(0.5, 0.15);
        c.p_error_applied = maybe(0.7, 0.5);
        c.p_missing = maybe(0.5, 0.2);
        c.p_stale = maybe(0.5, 0.3);
        c.p_truncated = maybe(0.4, 0.1);
        c.p_placeholder = maybe(0.3, 0.05);
        c.p_conflict = maybe(0.3, 0.1);
        c.p_crash = maybe(0.6, 0.02);
        c.p_power = if c.p_crash > 0.0 { maybe(0.3, 0.5) } else { 0.0 };
        c.max_crashes = 12;
        c.p_slow = maybe(0.4, 0.1);
        c.slow_delay = Duration::from_secs(20);
        c
    }
}

/// Receives the trace of a run, one line at a time.
pub type Trace = Box<dyn FnMut(&str)>;

/// What a run ended with.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: &'static str,
    /// Messages and chunks were sealed (HPKE/AES-GCM), as by default in the tools.
    pub secure: bool,
    /// Faults injected (errors, odd reads, conflict copies, slow files, crashes, ...).
    pub faults: u64,
    pub crashes: u32,
    /// A power loss happened: completion is not required.
    pub lossy: bool,
    /// Both sides finished (mailbox: every message delivered both ways).
    pub completed: bool,
    pub violations: Vec<String>,
    /// Simulated time at the end.
    pub end: Duration,
    /// For a completed run, how long after the faults stopped it ended.
    pub settle: Option<Duration>,
    /// One line on the outcome.
    pub outcome: String,
}

impl RunReport {
    /// How to replay this run.
    pub fn replay_hint(&self) -> String {
        format!("replay: cargo xtask sim --seed {}", self.seed)
    }
}

/// Shared by everything in one run: the random generator, the clock, the
/// fault settings and counters, the trace and the violations found.
pub(crate) struct Env {
    pub rng: Rng,
    /// Randomness for sealing in a secure run (`None`: plaintext), drawn
    /// apart from `rng` so that the rest of a seed's run does not depend on it.
    pub crypto_rng: Option<crate::crypto::SharedRng>,
    pub now: Duration,
    pub cfg: FaultCfg,
    pub faults: u64,
    pub crashes: u32,
    pub violations: Vec<String>,
    trace: Option<Trace>,
}

impl Env {
    fn new(rng: Rng, cfg: FaultCfg, trace: Option<Trace>) -> Env {
        Env { rng, crypto_rng: None, now: Duration::ZERO, cfg, faults: 0, crashes: 0, violations: Vec::new(), trace }
    }

    /// True in a secure run: every message and chunk is sealed, as the tools do by default.
    pub fn secure(&self) -> bool {
        self.crypto_rng.is_some()
    }

    /// The keys with which `me` seals to `peer` and opens what `peer`
    /// sealed, in a secure run. Identities are fixed per party id; the
    /// key exchange through the store is not simulated (tests cover it).
    pub fn crypto(&self, me: &crate::id::PeerId, peer: &crate::id::PeerId) -> Option<crate::crypto::PeerCrypto> {
        use crate::crypto::{Identity, PeerCrypto};
        let rng = self.crypto_rng.clone()?;
        let id = |p: &crate::id::PeerId| Identity::from_seed(format!("dmp sim identity {p}").as_bytes());
        Some(PeerCrypto::new(id(me), id(peer).public().clone(), rng))
    }

    /// True during the fault phase.
    pub fn faulty(&self) -> bool {
        self.now < self.cfg.until
    }

    /// True with probability `p`, during the fault phase only.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.faulty() && self.rng.f64() < p
    }

    /// Counts an injected fault and traces it.
    pub fn fault(&mut self, what: impl FnOnce() -> String) {
        self.faults += 1;
        if self.trace.is_some() {
            let s = what();
            self.log(|| format!("  FAULT {s}"));
        }
    }

    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    pub fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let s = format!("[{:>9.3}s] {}", self.now.as_secs_f64(), line());
            t(&s);
        }
    }

    pub fn violation(&mut self, v: String) {
        self.log(|| format!("VIOLATION {v}"));
        if self.violations.len() < 20 {
            self.violations.push(v);
        }
    }

    /// A crash before the next step, if one is due.
    pub fn crash_due(&mut self) -> bool {
        self.crashes < self.cfg.max_crashes && self.chance(self.cfg.p_crash)
    }

    /// Counts one output acted on; false (and a violation) when one step
    /// has acted on so many that the machine must be looping.
    pub fn output_budget(&mut self, used: &mut u32, who: &str) -> bool {
        *used += 1;
        if *used == 100_000 {
            self.violation(format!("{who}: more than 100000 outputs in one step: an endless loop"));
            return false;
        }
        true
    }

    /// Advances the clock by a store operation's latency.
    pub fn op_latency(&mut self) {
        if !self.cfg.latency.is_zero() {
            self.now += Duration::from_micros(self.rng.u64(..=self.cfg.latency.as_micros() as u64));
        }
    }

    /// A visibility delay for a put or delete.
    pub fn visibility_delay(&mut self) -> Duration {
        if self.chance(self.cfg.p_slow) {
            let d = Duration::from_micros(self.rng.u64(..=self.cfg.slow_delay.as_micros() as u64));
            self.fault(|| format!("slow: visible after {:.3}s", d.as_secs_f64()));
            return d;
        }
        Duration::from_micros(self.rng.u64(..=self.cfg.delay.as_micros() as u64))
    }
}

/// A party's life outside its machine: its state file (with the history a
/// power loss can roll back to), its schedule, and whether it has ended.
pub(crate) struct Life {
    pub name: &'static str,
    /// The state file's content (`None`: absent, or damaged and ignored).
    pub saved: Option<String>,
    /// Earlier contents, oldest first.
    history: Vec<Option<String>>,
    pub down_until: Option<Duration>,
    pub next_wake: Duration,
    pub poller: Poller,
    pub ended: bool,
    /// A power loss hit this party.
    pub lossy: bool,
    pub incarnation: u32,
    /// Wake-ups at the same instant in a row (a busy loop shows here).
    same_instant: u32,
    last_step: Option<Duration>,
    /// When this party last looked at the store, and the store's change
    /// counter then (for notifications).
    pub seen: Option<(Duration, u64)>,
}

impl Life {
    pub fn new(name: &'static str, notify: bool) -> Life {
        let poller = if notify {
            Poller::new(Duration::from_secs(5), Duration::from_secs(5))
        } else {
            Poller::new(Duration::from_millis(20), Duration::from_secs(1))
        };
        Life {
            name,
            saved: None,
            history: Vec::new(),
            down_until: None,
            next_wake: Duration::ZERO,
            poller,
            ended: false,
            lossy: false,
            incarnation: 0,
            same_instant: 0,
            last_step: None,
            seen: None,
        }
    }

    /// Writes the state file.
    pub fn save(&mut self, json: String) {
        self.history.push(self.saved.take());
        if self.history.len() > 4 {
            self.history.remove(0);
        }
        self.saved = Some(json);
    }

    /// Removes the state file.
    pub fn remove_state(&mut self) {
        self.history.push(self.saved.take());
    }

    /// A fresh session number: larger than any earlier one of this party.
    pub fn fresh_session(&self, now: Duration) -> u64 {
        1 + now.as_micros() as u64
    }

    /// The party goes down; returns true on a power loss.
    pub fn crash(&mut self, env: &mut Env, at: &str) -> bool {
        env.crashes += 1;
        let power = env.rng.f64() < env.cfg.p_power;
        let name = self.name;
        if power {
            self.lossy = true;
            if env.rng.bool() || self.history.is_empty() {
                self.saved = None;
                env.fault(|| format!("{name}: power loss {at}; state file torn"));
            } else {
                let k = env.rng.usize(1..=self.history.len());
                let keep = self.history.len() - k;
                self.saved = self.history[keep].clone();
                self.history.truncate(keep);
                env.fault(|| format!("{name}: power loss {at}; state rolled back {k} saves"));
            }
        } else {
            env.fault(|| format!("{name}: crash {at}"));
        }
        let down = Duration::from_millis(env.rng.u64(1..=3000));
        self.down_until = Some(env.now + down);
        self.incarnation += 1;
        power
    }

    /// Schedules the next wake-up after a step, like the real driver's
    /// wait (a notification can wake the party earlier: see [`run_pair`]).
    pub fn schedule(&mut self, env: &mut Env, deadline: Option<Duration>) {
        let poll = self.poller.next_delay();
        let mut t = env.now + poll;
        if let Some(d) = deadline {
            t = t.min(d.max(env.now));
        }
        if self.last_step == Some(env.now) && t == env.now {
            self.same_instant += 1;
            if self.same_instant == 10_000 {
                let name = self.name;
                env.violation(format!("{name}: busy loop: woken 10000 times at the same instant"));
            }
            if self.same_instant >= 10_000 {
                t += Duration::from_millis(1);
            }
        } else {
            self.same_instant = 0;
        }
        self.last_step = Some(env.now);
        self.next_wake = t;
    }

    /// When this party next acts (`None`: it has ended). With
    /// notifications, a change of the peer's that became visible since the
    /// party last looked wakes it.
    pub fn next_event(&self, env: &Env, store: &store::SimStore, me: &str) -> Option<Duration> {
        if self.ended {
            return None;
        }
        if let Some(t) = self.down_until {
            return Some(t);
        }
        let mut t = self.next_wake;
        if env.cfg.notify {
            if let Some(v) = self.seen.and_then(|(at, seen)| store.next_visible(me, at, seen)) {
                t = t.min(v);
            }
        }
        Some(t)
    }
}

/// A party in a scenario.
pub(crate) trait Node {
    fn life(&self) -> &Life;
    fn life_mut(&mut self) -> &mut Life;
    /// The party's id (the owner of its outbox).
    fn id(&self) -> &str;
    /// Acts at `env.now`: restarts if down and due, else wakes and steps.
    fn run(&mut self, env: &mut Env, store: &mut store::SimStore);
}

/// Runs two parties until `done` holds, both have ended, or the bound passes.
pub(crate) fn run_pair<A: Node, B: Node>(
    env: &mut Env,
    store: &mut store::SimStore,
    a: &mut A,
    b: &mut B,
    bound: Duration,
    mut done: impl FnMut(&A, &B) -> bool,
) -> bool {
    let mut steps: u64 = 0;
    loop {
        if done(a, b) {
            return true;
        }
        let ta = a.life().next_event(env, store, a.id());
        let tb = b.life().next_event(env, store, b.id());
        let first_a = match (ta, tb) {
            (None, None) => return false,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x < y || (x == y && env.rng.bool()),
        };
        let t = if first_a { ta } else { tb }.expect("one is due");
        if t > bound {
            return false;
        }
        env.now = env.now.max(t);
        if first_a {
            a.run(env, store);
            a.life_mut().seen = Some((env.now, store.counter()));
        } else {
            b.run(env, store);
            b.life_mut().seen = Some((env.now, store.counter()));
        }
        steps += 1;
        if steps > 2_000_000 {
            env.violation("more than 2000000 steps: a livelock".into());
            return false;
        }
    }
}

/// Runs one seed. With `trace`, every action is passed to it as a line.
pub fn run_seed(seed: u64, trace: Option<Trace>) -> RunReport {
    let mut rng = Rng::with_seed(seed);
    let cfg = FaultCfg::random(&mut rng);
    let scenario = if rng.u8(..3) == 0 { "mailbox" } else { "dftp" };
    let mut env = Env::new(rng, cfg, trace);
    // Half the seeds run secure. Drawn from a generator of their own, so a
    // plaintext seed runs exactly as it did before encryption was simulated.
    let mut side = Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x005E_C04E);
    if side.bool() {
        env.crypto_rng = Some(crate::crypto::seeded_rng(side.u64(..)));
    }
    let secure = env.secure();
    let mut report = RunReport { seed, scenario, secure, ..RunReport::default() };
    let mode = if secure { "secure" } else { "plaintext" };
    env.log(|| format!("seed {seed}: scenario {scenario}, {mode}"));
    let cfg_line = format!("{:?}", env.cfg);
    env.log(|| format!("faults {cfg_line}"));
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match scenario {
        "mailbox" => mailbox::run(&mut env),
        _ => dftp::run(&mut env),
    }));
    match res {
        Ok(r) => {
            report.completed = r.completed;
            report.lossy = r.lossy;
            report.outcome = r.outcome;
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            env.violation(format!("panic: {msg}"));
            report.outcome = "panicked".into();
        }
    }
    report.faults = env.faults;
    report.crashes = env.crashes;
    report.violations = std::mem::take(&mut env.violations);
    report.end = env.now;
    report.settle = report.completed.then(|| env.now.saturating_sub(env.cfg.until));
    env.log(|| "end".into());
    report
}

/// What a scenario returns to [`run_seed`].
pub(crate) struct ScenarioEnd {
    pub completed: bool,
    pub lossy: bool,
    pub outcome: String,
}

/// Totals over many seeds.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub seeds: u64,
    /// Seeds that ran with encryption on.
    pub secure: u64,
    pub faults: u64,
    pub crashes: u64,
    pub violations: u64,
    pub lossy: u64,
    pub lossy_incomplete: u64,
    /// The longest a completed run took after its faults stopped.
    pub max_settle: Duration,
    pub failing_seeds: Vec<u64>,
}

impl Totals {
    pub fn add(&mut self, r: &RunReport) {
        self.seeds += 1;
        self.secure += r.secure as u64;
        self.faults += r.faults;
        self.crashes += r.crashes as u64;
        self.violations += r.violations.len() as u64;
        self.lossy += r.lossy as u64;
        self.lossy_incomplete += (r.lossy && !r.completed) as u64;
        self.max_settle = self.max_settle.max(r.settle.unwrap_or_default());
        if !r.violations.is_empty() {
            self.failing_seeds.push(r.seed);
        }
    }

    pub fn merge(&mut self, o: &Totals) {
        self.seeds += o.seeds;
        self.secure += o.secure;
        self.faults += o.faults;
        self.crashes += o.crashes;
        self.violations += o.violations;
        self.lossy += o.lossy;
        self.lossy_incomplete += o.lossy_incomplete;
        self.max_settle = self.max_settle.max(o.max_settle);
        self.failing_seeds.extend(&o.failing_seeds);
    }

    /// The one summary line.
    pub fn line(&self) -> String {
        format!("simulation: {} seeds, {} faults injected, {} violations", self.seeds, self.faults, self.violations)
    }
}

/// Runs `seeds` seeds from `first` on `jobs` threads; failing seeds are
/// described in the returned text (one block per seed).
pub fn run_many(first: u64, seeds: u64, jobs: usize) -> (Totals, String) {
    let jobs = jobs.max(1) as u64;
    let results: Vec<(Totals, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                s.spawn(move || {
                    let mut t = Totals::default();
                    let mut text = String::new();
                    let mut seed = first + j;
                    while seed < first + seeds {
                        let r = run_seed(seed, None);
                        t.add(&r);
                        if !r.violations.is_empty() {
                            let _ = writeln!(text, "{}", describe(&r));
                        }
                        seed += jobs;
                    }
                    (t, text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("simulation thread")).collect()
    });
    let mut total = Totals::default();
    let mut text = String::new();
    for (t, s) in results {
        total.merge(&t);
        text.push_str(&s);
    }
    total.failing_seeds.sort_unstable();
    (total, text)
}

/// A failing run, for humans: the seed, the violations, how to replay.
pub fn describe(r: &RunReport) -> String {
    let mut s = format!(
        "seed {} ({}, {}, {} faults, {} crashes{}): {}\n",
        r.seed,
        r.scenario,
        if r.secure { "secure" } else { "plaintext" },
        r.faults,
        r.crashes,
        if r.lossy { ", lossy" } else { "" },
        r.outcome
    );
    for v in &r.violations {
        let _ = writeln!(s, "  violation: {v}");
    }
    let _ = writeln!(s, "  {}", r.replay_hint());
    s
}

//! Key handling for the drivers: publish my key, find the peer's (pinned or
//! published), pin it on first contact, refuse a changed one.

use crate::crypto::{Identity, PeerCrypto, PublicKey, SharedRng};
use crate::id::PeerId;
use crate::keys::{KeyError, KeyNotice, KnownPeers, Pin, fetch_published, publish};
use crate::store::Store;
use std::time::Duration;

/// A party's keys and pins; `None` in the drivers means plaintext.
#[derive(Clone)]
pub struct Security {
    pub me: PeerId,
    pub identity: Identity,
    pub known: std::sync::Arc<KnownPeers>,
    pub rng: SharedRng,
    /// Accept a changed key of this peer deliberately (re-pin it).
    pub accept_new_key: Option<PeerId>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Security({}, {})", self.me, self.identity.public().fingerprint())
    }
}

impl Security {
    /// Publishes my public key in my outbox.
    pub async fn publish(&self, store: &dyn Store) -> Result<(), crate::store::StoreError> {
        publish(store, &self.me, self.identity.public()).await
    }

    fn crypto(&self, key: PublicKey) -> PeerCrypto {
        PeerCrypto::new(self.identity.clone(), key, self.rng.clone())
    }

    /// Checks that the key `peer` publishes is still the pinned one: a peer
    /// whose messages stop opening may have a new key (a fresh key file
    /// after a reinstall; or the pin was taken from an old key file left in
    /// the store). A different one is the usual "changed key" error, so
    /// the transfer stops with both fingerprints instead of waiting forever.
    pub async fn recheck(&self, store: &dyn Store, peer: &PeerId) -> Result<(), KeyError> {
        self.compare(peer, fetch_published(store, peer).await)
    }

    /// [`Security::recheck`] once the published key has been fetched.
    pub fn compare(&self, peer: &PeerId, published: Result<Option<PublicKey>, KeyError>) -> Result<(), KeyError> {
        let (Some(pinned), Ok(Some(published))) = (self.known.get(peer)?, published) else {
            return Ok(());
        };
        if pinned == published {
            return Ok(());
        }
        self.known.check(peer, &published).map(|_| ())
    }

    /// The keys for talking to `peer`, once its key is known: pinned
    /// beforehand, or published in its outbox and pinned now (first
    /// contact). `Ok(None)` while neither exists.
    pub async fn resolve(
        &self,
        store: &dyn Store,
        peer: &PeerId,
        notice: &mut dyn FnMut(KeyNotice),
    ) -> Result<Option<PeerCrypto>, KeyError> {
        self.decide(peer, fetch_published(store, peer).await, notice)
    }

    /// [`Security::resolve`] once the published key has been fetched (see
    /// [`look_up`]).
    pub fn decide(
        &self,
        peer: &PeerId,
        published: Result<Option<PublicKey>, KeyError>,
        notice: &mut dyn FnMut(KeyNotice),
    ) -> Result<Option<PeerCrypto>, KeyError> {
        let pinned = self.known.get(peer)?;
        let published = match published {
            Ok(p) => p,
            // Absent or malformed (perhaps half-synced): rely on the pin if any.
            Err(KeyError::BadPublished { .. }) | Err(KeyError::Store(_)) => None,
            Err(e) => return Err(e),
        };
        match (pinned, published) {
            (Some(p), None) => Ok(Some(self.crypto(p))),
            (Some(p), Some(q)) if p == q => Ok(Some(self.crypto(p))),
            (Some(_), Some(q)) if self.accept_new_key.as_ref() == Some(peer) => {
                self.known.pin(peer, &q)?;
                notice(KeyNotice::Replaced { peer: peer.clone(), fingerprint: q.fingerprint() });
                Ok(Some(self.crypto(q)))
            }
            (Some(_), Some(q)) => {
                self.known.check(peer, &q)?; // returns the Changed error
                Ok(Some(self.crypto(q)))
            }
            (None, Some(q)) => {
                if self.known.check(peer, &q)? == Pin::Pinned {
                    notice(KeyNotice::Pinned {
                        peer: peer.clone(),
                        fingerprint: q.fingerprint(),
                        file: self.known.path().display().to_string(),
                    });
                }
                Ok(Some(self.crypto(q)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Why a key is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPurpose {
    /// For [`Security::decide`]: the peer's key is not known yet.
    Resolve,
    /// For [`Security::compare`]: the peer's files stopped opening.
    Recheck,
}

/// A finished look-up of a peer's published key.
#[derive(Debug)]
pub struct KeyLooked {
    pub peer: PeerId,
    pub purpose: KeyPurpose,
    /// False when the peer has no outbox towards the asker (nothing was fetched).
    pub talks: bool,
    pub published: Result<Option<PublicKey>, KeyError>,
}

/// Fetches `peer`'s published key; with `asker`, only if `peer` has an
/// outbox towards `asker` (a party found in a listing may talk to others
/// only). Runs beside a driver's loop (see `OpRunner::look_up_key`): a
/// peer outbox that answers slowly or never delays no one but that peer.
pub(crate) async fn look_up(store: &dyn Store, peer: PeerId, purpose: KeyPurpose, asker: Option<PeerId>) -> KeyLooked {
    if let Some(me) = asker {
        let talks = match store.list(&crate::store::Key::new([peer.as_str()]).expect("valid id")).await {
            Ok(names) => names.iter().any(|n| n == me.as_str()),
            Err(_) => true,
        };
        if !talks {
            return KeyLooked { peer, purpose, talks, published: Ok(None) };
        }
    }
    let published = fetch_published(store, &peer).await;
    KeyLooked { peer, purpose, talks: true, published }
}

/// When to look again at the peer's published key: once files of the peer
/// fail to open (at most every 2 s), see [`Security::recheck`].
#[derive(Default)]
pub(crate) struct KeyRecheck {
    at: Option<Duration>,
    last: Option<Duration>,
}

impl KeyRecheck {
    pub(crate) fn rejected(&mut self, now: Duration, reason: &str) {
        if crate::crypto::is_open_failure(reason) && self.at.is_none() {
            let t = self.last.map_or(now, |l| (l + Duration::from_secs(2)).max(now));
            self.at = Some(t);
        }
    }

    pub(crate) fn due(&mut self, now: Duration) -> bool {
        if self.at.is_some_and(|t| t <= now) {
            self.at = None;
            self.last = Some(now);
            return true;
        }
        false
    }
}

/// Pacing of the look-ups of a peer's key that is not there yet (from
/// [`KeyWait::FIRST`], doubling to [`KeyWait::MOST`]), and the report of
/// the ones that fail: the first failure for each reason is a warning, its
/// repeats are at debug level.
#[derive(Debug, Default)]
pub(crate) struct KeyWait {
    next: Option<Duration>,
    delay: Duration,
    logged: Option<String>,
}

impl KeyWait {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(2);

    /// True when a look-up may go out now.
    pub(crate) fn due(&self, now: Duration) -> bool {
        self.next.is_none_or(|t| t <= now)
    }

    /// When the next look-up may go out, if it has to wait.
    pub(crate) fn next(&self) -> Option<Duration> {
        self.next
    }

    /// Something changed where the key lives: look again at once.
    pub(crate) fn soon(&mut self) {
        self.next = None;
    }

    /// A look-up that found no usable key (`failure`: why the read failed):
    /// the next waits longer.
    pub(crate) fn missed(&mut self, now: Duration, peer: &PeerId, failure: Option<String>) {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MOST);
        self.next = Some(now + self.delay);
        match failure {
            Some(msg) => {
                if self.logged.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("cannot read the key of {peer} yet: {msg} (retrying)");
                    self.logged = Some(msg);
                } else {
                    tracing::debug!("cannot read the key of {peer} yet: {msg}");
                }
            }
            None => tracing::debug!("no key published by {peer} yet"),
        }
    }

    /// The key was found.
    pub(crate) fn found(&mut self) {
        *self = KeyWait::default();
    }
}

/// A driver's look-ups of its one peer's key (ping client, DFTP sender and
/// receiver): while the key is needed, and again when the peer's files
/// stop opening. The look-ups run beside the driver's loop.
#[derive(Default)]
pub(crate) struct PeerKey {
    wait: KeyWait,
    recheck: KeyRecheck,
}

impl PeerKey {
    /// Starts the look-ups that are due.
    pub(crate) fn look(&mut self, ops: &mut super::OpRunner<'_>, peer: &PeerId, needs_key: bool, now: Duration) {
        if needs_key && self.wait.due(now) && !ops.looking_up(peer, KeyPurpose::Resolve) {
            ops.look_up_key(peer, KeyPurpose::Resolve, None);
        }
        if self.recheck.due(now) {
            ops.look_up_key(peer, KeyPurpose::Recheck, None);
        }
    }

    /// The driver's `deadline`, brought forward to the next look-up.
    pub(crate) fn deadline(&self, deadline: Option<Duration>, needs_key: bool) -> Option<Duration> {
        match (deadline, self.wait.next().filter(|_| needs_key)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A file of the peer was rejected for `reason`.
    pub(crate) fn rejected(&mut self, now: Duration, reason: &str) {
        self.recheck.rejected(now, reason);
    }

    /// The store changed: `key_file` is where the peer's key lives.
    pub(crate) fn changed(&mut self, set: &crate::store::ChangeSet, key_file: &crate::store::Key) {
        if !set.all && set.touches(key_file) {
            self.wait.soon();
        }
    }

    /// The driver woke for a change it cannot place: look again at once
    /// (at most once per wake, as the wakes are paced).
    pub(crate) fn woke(&mut self) {
        self.wait.soon();
    }

    /// A finished look-up: the keys once the peer's key is known, the
    /// changed-key error, or `Ok(None)`.
    pub(crate) fn looked(
        &mut self,
        sec: &Security,
        k: KeyLooked,
        now: Duration,
        notice: &mut dyn FnMut(KeyNotice),
    ) -> Result<Option<PeerCrypto>, KeyError> {
        match k.purpose {
            KeyPurpose::Resolve => {
                let failure = k.published.as_ref().err().map(ToString::to_string);
                let c = sec.decide(&k.peer, k.published, notice)?;
                match &c {
                    Some(_) => self.wait.found(),
                    None => self.wait.missed(now, &k.peer, failure),
                }
                Ok(c)
            }
            KeyPurpose::Recheck => sec.compare(&k.peer, k.published).map(|()| None),
        }
    }
}

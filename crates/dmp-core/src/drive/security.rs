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
    pub async fn publish(&self, store: &dyn Store) -> Result<(), KeyError> {
        publish(store, &self.me, self.identity.public()).await?;
        Ok(())
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
        let (Some(pinned), Ok(Some(published))) = (self.known.get(peer)?, fetch_published(store, peer).await) else {
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
        let pinned = self.known.get(peer)?;
        let published = match fetch_published(store, peer).await {
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

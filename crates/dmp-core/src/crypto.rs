//! End-to-end encryption and sender authentication: HPKE (RFC 9180) in auth
//! mode, DHKEM(X25519, HKDF-SHA256) with HKDF-SHA256, from the `hpke` crate,
//! whose exported secret keys AES-256-GCM (`ring`'s, which uses the CPU's
//! AES and carry-less multiply instructions: 8.6 GB/s here against 1.4 GB/s
//! for the `aes-gcm` crate). Pure computation: no file or network I/O here
//! (key files: [`crate::keys`]).
//!
//! Each sealed blob is `ciphertext || tag || nonce || enc`: the trailer
//! goes last so that a chunk can be sealed in place.

use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use std::fmt;
use std::sync::{Arc, Mutex};

type Kem = X25519HkdfSha256;
type Aead = AesGcm128;
type Kdf = HkdfSha256;

/// Bytes a seal adds: tag, nonce and encapsulated key.
pub const SEAL_OVERHEAD: usize = 16 + 12 + 32;
/// `info` for message payloads (envelopes).
pub const INFO_MSG: &[u8] = b"dmp/1 message";
/// `info` for DFTP chunk objects.
pub const INFO_CHUNK: &[u8] = b"dmp/1 chunk";

/// Why a sealed blob did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed data too short")]
    Short,
    #[error("authentication failed: not sealed by the expected sender for this recipient and context, or altered")]
    Open,
    #[error("malformed key: {0}")]
    BadKey(String),
}

/// AES-256-GCM under one exported key.
type Gcm = ring::aead::LessSafeKey;
/// A cipher with the encapsulated key (`enc`) it was exported for.
type KeyedGcm = ([u8; 32], Arc<Gcm>);

fn gcm(key: &[u8; 32]) -> Gcm {
    let k = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).expect("a 32-byte AES-256 key");
    ring::aead::LessSafeKey::new(k)
}

/// True when `reason` (a rejected file's) says it did not open: sealed by
/// another key than the one in use, or altered.
pub fn is_open_failure(reason: &str) -> bool {
    reason.contains("authentication failed")
}

/// A party's public key (X25519, 32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(<Kem as KemTrait>::PublicKey);

impl PublicKey {
    pub fn from_bytes(b: &[u8]) -> Result<PublicKey, CryptoError> {
        <Kem as KemTrait>::PublicKey::from_bytes(b)
            .map(PublicKey)
            .map_err(|_| CryptoError::BadKey("not an X25519 public key".into()))
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }
    pub fn from_hex(s: &str) -> Result<PublicKey, CryptoError> {
        let b = hex::decode(s.trim()).map_err(|_| CryptoError::BadKey("not hex".into()))?;
        PublicKey::from_bytes(&b)
    }
    /// A short readable fingerprint: the first 16 bytes of SHA-256 of the
    /// key, as eight groups of four hex digits.
    pub fn fingerprint(&self) -> String {
        let h = crate::wire::sha256(&self.to_bytes());
        h[..16].chunks(2).map(hex::encode).collect::<Vec<_>>().join(":")
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A party's long-term key pair.
#[derive(Clone)]
pub struct Identity {
    sk: <Kem as KemTrait>::PrivateKey,
    pk: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.pk.fingerprint())
    }
}

impl Identity {
    pub fn generate(rng: &mut impl CryptoRng) -> Identity {
        let (sk, pk) = Kem::gen_keypair(&mut RngRef(rng));
        Identity { sk, pk: PublicKey(pk) }
    }
    /// A deterministic identity (tests and simulation only).
    pub fn from_seed(seed: &[u8]) -> Identity {
        let (sk, pk) = Kem::derive_keypair(seed);
        Identity { sk, pk: PublicKey(pk) }
    }
    pub fn from_secret_bytes(b: &[u8]) -> Result<Identity, CryptoError> {
        let sk = <Kem as KemTrait>::PrivateKey::from_bytes(b)
            .map_err(|_| CryptoError::BadKey("not an X25519 private key".into()))?;
        let pk = PublicKey(Kem::sk_to_pk(&sk));
        Ok(Identity { sk, pk })
    }
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.sk.to_bytes().to_vec()
    }
    pub fn public(&self) -> &PublicKey {
        &self.pk
    }
}

/// A random source for sealing, shareable between machines.
pub type SharedRng = Arc<Mutex<dyn RngCoreCrypto + Send>>;

/// `RngCore + CryptoRng` as one object-safe trait.
pub trait RngCoreCrypto: RngCore + CryptoRng {}
impl<T: RngCore + CryptoRng> RngCoreCrypto for T {}

struct RngRef<'a, R: RngCoreCrypto + ?Sized>(&'a mut R);
impl<R: RngCoreCrypto + ?Sized> RngCore for RngRef<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        self.0.fill_bytes(d)
    }
}
impl<R: RngCoreCrypto + ?Sized> CryptoRng for RngRef<'_, R> {}

/// The operating system's random source.
pub fn os_rng() -> SharedRng {
    use rand_core::TryRngCore;
    Arc::new(Mutex::new(rand_core::OsRng.unwrap_err()))
}

/// A seeded random source (simulation and tests only).
pub fn seeded_rng(seed: u64) -> SharedRng {
    use rand_core::SeedableRng;
    Arc::new(Mutex::new(rand_chacha::ChaCha20Rng::seed_from_u64(seed)))
}

/// Everything needed to seal to one peer and open what it sealed.
///
/// Sealing: one HPKE auth-mode encapsulation to the peer per `PeerCrypto`
/// (that is, per run), whose exported secret keys AES-256-GCM; each blob
/// is `ciphertext || tag (16) || nonce (12, random) || enc (32)`. Carrying
/// `enc` in every blob lets any blob be opened on its own (store-and-forward,
/// any order); the opener caches the decapsulation per `enc`, so the X25519
/// work is done once per sender run, not per message. Only the holder of the
/// sender's private key can produce an `enc` that decapsulates, in auth
/// mode, against the sender's public key.
#[derive(Clone)]
pub struct PeerCrypto {
    me: Identity,
    peer: PublicKey,
    rng: SharedRng,
    sealing: Arc<Mutex<Option<KeyedGcm>>>,
    opening: Arc<Mutex<Vec<KeyedGcm>>>,
}

impl fmt::Debug for PeerCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerCrypto(me {}, peer {})", self.me.pk.fingerprint(), self.peer.fingerprint())
    }
}

/// The HPKE exporter context for the AES-256-GCM key.
const EXPORT_LABEL: &[u8] = b"dmp/1 aes-256-gcm key";
/// HPKE `info` for the encapsulation.
const HPKE_INFO: &[u8] = b"dmp/1";

fn full_aad(info: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + info.len() + aad.len());
    v.push(info.len() as u8);
    v.extend_from_slice(info);
    v.extend_from_slice(aad);
    v
}

impl PeerCrypto {
    pub fn new(me: Identity, peer: PublicKey, rng: SharedRng) -> PeerCrypto {
        PeerCrypto { me, peer, rng, sealing: Default::default(), opening: Default::default() }
    }

    pub fn peer_key(&self) -> &PublicKey {
        &self.peer
    }

    fn sealing_key(&self) -> ([u8; 32], Arc<Gcm>) {
        let mut slot = self.sealing.lock().expect("lock");
        if let Some(k) = slot.as_ref() {
            return k.clone();
        }
        let mode = OpModeS::Auth((self.me.sk.clone(), self.me.pk.0.clone()));
        let mut rng = self.rng.lock().expect("rng lock");
        let (enc, ctx) =
            hpke::setup_sender::<Aead, Kdf, Kem, _>(&mode, &self.peer.0, HPKE_INFO, &mut RngRef(&mut *rng))
                .expect("encapsulating to a valid X25519 key cannot fail");
        let mut key = [0u8; 32];
        ctx.export(EXPORT_LABEL, &mut key).expect("32-byte export");
        let enc: [u8; 32] = enc.to_bytes().as_slice().try_into().expect("32-byte X25519 enc");
        let k = (enc, Arc::new(gcm(&key)));
        *slot = Some(k.clone());
        k
    }

    fn opening_key(&self, enc: &[u8; 32]) -> Result<Arc<Gcm>, CryptoError> {
        let mut cache = self.opening.lock().expect("lock");
        if let Some((_, c)) = cache.iter().find(|(e, _)| e == enc) {
            return Ok(c.clone());
        }
        let encapped = <Kem as KemTrait>::EncappedKey::from_bytes(enc).map_err(|_| CryptoError::Open)?;
        let ctx = hpke::setup_receiver::<Aead, Kdf, Kem>(
            &OpModeR::Auth(self.peer.0.clone()),
            &self.me.sk,
            &encapped,
            HPKE_INFO,
        )
        .map_err(|_| CryptoError::Open)?;
        let mut key = [0u8; 32];
        ctx.export(EXPORT_LABEL, &mut key).map_err(|_| CryptoError::Open)?;
        let c = Arc::new(gcm(&key));
        if cache.len() >= 16 {
            cache.remove(0);
        }
        cache.push((*enc, c.clone()));
        Ok(c)
    }

    /// Seals `data` in place for the peer, binding it to `info` and `aad`.
    pub fn seal_in_place(&self, info: &[u8], aad: &[u8], data: &mut Vec<u8>) {
        let (enc, cipher) = self.sealing_key();
        let mut nonce = [0u8; 12];
        self.rng.lock().expect("rng lock").fill_bytes(&mut nonce);
        let tag = cipher
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(full_aad(info, aad)),
                data,
            )
            .expect("AES-GCM sealing within size limits cannot fail");
        data.extend_from_slice(tag.as_ref());
        data.extend_from_slice(&nonce);
        data.extend_from_slice(&enc);
    }

    /// Seals a copy of `data`.
    pub fn seal(&self, info: &[u8], aad: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(data.len() + SEAL_OVERHEAD);
        v.extend_from_slice(data);
        self.seal_in_place(info, aad, &mut v);
        v
    }

    /// Opens what the peer sealed for me, in place; the buffer shrinks by
    /// [`SEAL_OVERHEAD`] to the plaintext.
    pub fn open_in_place(&self, info: &[u8], aad: &[u8], data: &mut Vec<u8>) -> Result<(), CryptoError> {
        if data.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Short);
        }
        let n = data.len() - SEAL_OVERHEAD;
        let enc: [u8; 32] = data[n + 28..].try_into().expect("32 bytes");
        let nonce: [u8; 12] = data[n + 16..n + 28].try_into().expect("12 bytes");
        let cipher = self.opening_key(&enc)?;
        // `ciphertext || tag` are adjacent, as ring expects them.
        cipher
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(full_aad(info, aad)),
                &mut data[..n + 16],
            )
            .map_err(|_| CryptoError::Open)?;
        data.truncate(n);
        Ok(())
    }

    pub fn open(&self, info: &[u8], aad: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut v = data.to_vec();
        self.open_in_place(info, aad, &mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(seed: u64) -> (PeerCrypto, PeerCrypto) {
        let a = Identity::from_seed(b"alice seed for tests only......");
        let b = Identity::from_seed(b"bob seed for tests only........");
        let rng = seeded_rng(seed);
        (PeerCrypto::new(a.clone(), b.public().clone(), rng.clone()), PeerCrypto::new(b, a.public().clone(), rng))
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (a, b) = pair(1);
        let sealed = a.seal(INFO_MSG, b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        // A second blob reuses the run's encapsulation but not the nonce.
        let again = a.seal(INFO_MSG, b"aad", b"hello");
        assert_ne!(sealed, again);
        assert_eq!(b.open(INFO_MSG, b"aad", &again).unwrap(), b"hello");
        assert_eq!(b.open(INFO_MSG, b"aad", &sealed).unwrap(), b"hello");
        // Wrong aad, wrong info, wrong direction: all fail.
        assert_eq!(b.open(INFO_MSG, b"aax", &sealed), Err(CryptoError::Open));
        assert_eq!(b.open(INFO_CHUNK, b"aad", &sealed), Err(CryptoError::Open));
        assert_eq!(a.open(INFO_MSG, b"aad", &sealed), Err(CryptoError::Open));
        // Every flipped byte is detected.
        for i in 0..sealed.len() {
            let mut s = sealed.clone();
            s[i] ^= 1;
            assert!(b.open(INFO_MSG, b"aad", &s).is_err(), "flip at {i}");
        }
        assert_eq!(b.open(INFO_MSG, b"aad", &sealed[..10]), Err(CryptoError::Short));
    }

    #[test]
    fn a_third_party_cannot_pass_as_the_sender() {
        let (_, b) = pair(2);
        let mallory = Identity::from_seed(b"mallory seed for tests only....");
        // Mallory seals to bob with her own key, claiming to be alice.
        let bob_pk = Identity::from_seed(b"bob seed for tests only........").public().clone();
        let m = PeerCrypto::new(mallory, bob_pk, seeded_rng(3));
        let forged = m.seal(INFO_MSG, b"aad", b"pay mallory");
        assert_eq!(b.open(INFO_MSG, b"aad", &forged), Err(CryptoError::Open));
    }

    #[test]
    fn keys_round_trip_and_fingerprints_are_short() {
        let id = Identity::generate(&mut rand_core::TryRngCore::unwrap_err(rand_core::OsRng));
        let back = Identity::from_secret_bytes(&id.secret_bytes()).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(PublicKey::from_hex(&id.public().to_hex()).unwrap(), *id.public());
        let fp = id.public().fingerprint();
        assert_eq!(fp.len(), 39, "{fp}");
        assert!(PublicKey::from_hex("zz").is_err());
    }
}

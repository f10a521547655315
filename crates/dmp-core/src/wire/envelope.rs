//! The envelope: the versioned, checksummed frame around every message file.
//!
//! Layout (all integers big-endian), version 1:
//!
//! ```text
//! off len  field
//!   0   4  magic  0x89 'D' 'M' 'P'
//!   4   1  version (1)
//!   5   1  flags   (bit 0: payload is encrypted; other bits must be 0)
//!   6   1  kind
//!   7   1  sender length S (1..=64)
//!   8   1  recipient length R (1..=64)
//!   9   3  reserved, zero
//!  12   8  session
//!  20   8  seq
//!  28   8  base   (lowest sequence number the sender still holds unacknowledged)
//!  36   4  payload length P (<= MAX_PAYLOAD_LEN)
//!  40  32  SHA-256 of the payload
//!  72   S  sender id
//!   .   R  recipient id
//!   .   P  payload
//!   .  32  SHA-256 of every byte above (header, ids and payload)
//! ```

use crate::id::{PeerId, is_valid_id};
use crate::wire::sha256;
use sha2::{Digest, Sha256};

/// First four bytes of every envelope. The high first byte catches text-mode mangling.
pub const MAGIC: [u8; 4] = [0x89, b'D', b'M', b'P'];
/// The envelope version this code writes and reads.
pub const VERSION: u8 = 1;
/// Flag bit: the payload is ciphertext (reserved for authenticated encryption).
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// Bytes of the fixed part of the header, before the ids.
pub const HEADER_FIXED_LEN: usize = 72;
/// Hard cap on a payload. Messages are small; file data travels in chunk objects.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// Hard cap on a whole envelope file.
pub const MAX_ENVELOPE_LEN: usize = HEADER_FIXED_LEN + 64 + 64 + MAX_PAYLOAD_LEN + 32;

/// What a message is. Unknown kinds are rejected, so a newer peer fails loudly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Cumulative acknowledgement of the reverse channel (the `ack` file).
    Ack = 0x01,
    /// The sender's current session and base (the `head` file).
    Head = 0x02,
    /// Ping request.
    Ping = 0x10,
    /// Ping reply.
    Pong = 0x11,
    /// DFTP: offer of a file.
    Offer = 0x20,
    /// DFTP: the receiver accepts an offer.
    Accept = 0x21,
    /// DFTP: the receiver refuses an offer.
    Refuse = 0x22,
    /// DFTP: a chunk has been published.
    Chunk = 0x23,
    /// DFTP: every chunk has been published; carries the whole-file hash.
    Done = 0x24,
    /// DFTP: the receiver verified and stored the file.
    Finished = 0x25,
    /// DFTP: either side gives up, with a reason.
    Abort = 0x26,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Ack,
            0x02 => Kind::Head,
            0x10 => Kind::Ping,
            0x11 => Kind::Pong,
            0x20 => Kind::Offer,
            0x21 => Kind::Accept,
            0x22 => Kind::Refuse,
            0x23 => Kind::Chunk,
            0x24 => Kind::Done,
            0x25 => Kind::Finished,
            0x26 => Kind::Abort,
            _ => return None,
        })
    }
}

/// Why bytes read from a store are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated envelope: {got} bytes, need at least {need}")]
    Truncated { need: usize, got: usize },
    #[error("envelope too large: {len} bytes, limit {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not a dmp envelope (bad magic)")]
    BadMagic,
    #[error("unsupported envelope version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("invalid {which} id in envelope")]
    BadId { which: &'static str },
    #[error("payload length {declared} exceeds limit {max}")]
    PayloadTooLarge { declared: usize, max: usize },
    #[error("envelope length mismatch: header declares {declared} bytes, file has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("envelope checksum mismatch (torn, stale or altered file)")]
    BadChecksum,
    #[error("payload checksum mismatch")]
    BadPayloadChecksum,
    #[error("envelope addressed to {got}, not to {expected}")]
    WrongRecipient { expected: String, got: String },
    #[error("envelope from {got}, expected from {expected}")]
    WrongSender { expected: String, got: String },
    #[error("reserved header bytes are not zero")]
    Reserved,
}

/// A decoded, checked message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub kind: Kind,
    pub sender: PeerId,
    pub recipient: PeerId,
    pub session: u64,
    pub seq: u64,
    pub base: u64,
    pub payload: Vec<u8>,
}

impl Envelope {
    /// Serializes to the version-1 byte layout.
    ///
    /// # Panics
    /// Never for payloads within [`MAX_PAYLOAD_LEN`]; callers enforce that cap.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.payload.len() <= MAX_PAYLOAD_LEN);
        let s = self.sender.as_str().as_bytes();
        let r = self.recipient.as_str().as_bytes();
        let mut out = Vec::with_capacity(HEADER_FIXED_LEN + s.len() + r.len() + self.payload.len() + 32);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.flags);
        out.push(self.kind as u8);
        out.push(s.len() as u8);
        out.push(r.len() as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.base.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&sha256(&self.payload));
        out.extend_from_slice(s);
        out.extend_from_slice(r);
        out.extend_from_slice(&self.payload);
        let digest: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&digest);
        out
    }

    /// The header fields an encrypted payload is bound to (additional
    /// authenticated data): version, flags, kind, session, seq, base,
    /// sender and recipient. Everything but the payload and its lengths.
    pub fn aad(&self) -> Vec<u8> {
        let s = self.sender.as_str().as_bytes();
        let r = self.recipient.as_str().as_bytes();
        let mut v = Vec::with_capacity(40 + s.len() + r.len());
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&[VERSION, self.flags, self.kind as u8, s.len() as u8, r.len() as u8]);
        v.extend_from_slice(&self.session.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.base.to_be_bytes());
        v.extend_from_slice(s);
        v.extend_from_slice(r);
        v
    }

    /// Parses and checks `bytes`. With `recipient`, an envelope for anyone
    /// else is rejected.
    pub fn decode(bytes: &[u8], recipient: Option<&PeerId>) -> Result<Envelope, WireError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(WireError::TooLarge { len: bytes.len(), max: MAX_ENVELOPE_LEN });
        }
        if bytes.len() >= 4 && bytes[..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if bytes.len() < HEADER_FIXED_LEN + 32 {
            return Err(WireError::Truncated { need: HEADER_FIXED_LEN + 32, got: bytes.len() });
        }
        let version = bytes[4];
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let flags = bytes[5];
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        let kind = Kind::from_u8(bytes[6]).ok_or(WireError::UnknownKind(bytes[6]))?;
        let slen = bytes[7] as usize;
        let rlen = bytes[8] as usize;
        if bytes[9..12] != [0, 0, 0] {
            return Err(WireError::Reserved);
        }
        let u64_at = |o: usize| u64::from_be_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let session = u64_at(12);
        let seq = u64_at(20);
        let base = u64_at(28);
        let plen = u32::from_be_bytes(bytes[36..40].try_into().expect("4 bytes")) as usize;
        if plen > MAX_PAYLOAD_LEN {
            return Err(WireError::PayloadTooLarge { declared: plen, max: MAX_PAYLOAD_LEN });
        }
        let declared = HEADER_FIXED_LEN + slen + rlen + plen + 32;
        if bytes.len() < declared {
            return Err(WireError::Truncated { need: declared, got: bytes.len() });
        }
        if bytes.len() != declared {
            return Err(WireError::LengthMismatch { declared, actual: bytes.len() });
        }
        let body = &bytes[..declared - 32];
        let digest: [u8; 32] = Sha256::digest(body).into();
        if digest[..] != bytes[declared - 32..] {
            return Err(WireError::BadChecksum);
        }
        let ids = &bytes[HEADER_FIXED_LEN..];
        let sender = std::str::from_utf8(&ids[..slen])
            .ok()
            .filter(|s| is_valid_id(s))
            .map(|s| PeerId::new(s).expect("checked"))
            .ok_or(WireError::BadId { which: "sender" })?;
        let rcpt = std::str::from_utf8(&ids[slen..slen + rlen])
            .ok()
            .filter(|s| is_valid_id(s))
            .map(|s| PeerId::new(s).expect("checked"))
            .ok_or(WireError::BadId { which: "recipient" })?;
        let payload = ids[slen + rlen..slen + rlen + plen].to_vec();
        if sha256(&payload)[..] != bytes[40..72] {
            return Err(WireError::BadPayloadChecksum);
        }
        if let Some(expected) = recipient {
            if &rcpt != expected {
                return Err(WireError::WrongRecipient { expected: expected.to_string(), got: rcpt.to_string() });
            }
        }
        Ok(Envelope { flags, kind, sender, recipient: rcpt, session, seq, base, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            flags: 0,
            kind: Kind::Ping,
            sender: PeerId::new("alice").unwrap(),
            recipient: PeerId::new("bob").unwrap(),
            session: 0x0102_0304_0506_0708,
            seq: 42,
            base: 40,
            payload: b"hello".to_vec(),
        }
    }

    fn bob() -> PeerId {
        PeerId::new("bob").unwrap()
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let bytes = e.encode();
        assert_eq!(Envelope::decode(&bytes, Some(&bob())).unwrap(), e);
        let empty = Envelope { payload: vec![], ..sample() };
        assert_eq!(Envelope::decode(&empty.encode(), None).unwrap(), empty);
        let big = Envelope { payload: vec![7; MAX_PAYLOAD_LEN], ..sample() };
        assert_eq!(Envelope::decode(&big.encode(), None).unwrap(), big);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let err = Envelope::decode(&bytes[..n], None).unwrap_err();
            assert!(matches!(err, WireError::Truncated { .. } | WireError::BadChecksum), "len {n}: {err:?}");
        }
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Envelope::decode(&b, None).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        assert_eq!(Envelope::decode(b"1\nPING", None), Err(WireError::BadMagic));
        assert_eq!(Envelope::decode(&[0u8; 200], None), Err(WireError::BadMagic));
        let huge = vec![0u8; MAX_ENVELOPE_LEN + 1];
        assert!(matches!(Envelope::decode(&huge, None), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut b = sample().encode();
        b.push(0);
        assert!(matches!(Envelope::decode(&b, None), Err(WireError::LengthMismatch { .. })));
    }

    #[test]
    fn rejects_declared_oversized_payload() {
        let mut b = sample().encode();
        b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Envelope::decode(&b, None), Err(WireError::PayloadTooLarge { .. })));
    }

    /// Re-seals a modified header so that only the intended check can fail.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        let n = b.len() - 32;
        let d: [u8; 32] = Sha256::digest(&b[..n]).into();
        b[n..].copy_from_slice(&d);
        b
    }

    #[test]
    fn rejects_unknown_version_flags_kind() {
        let b = sample().encode();
        let mut v = b.clone();
        v[4] = 2;
        assert_eq!(Envelope::decode(&reseal(v), None), Err(WireError::UnsupportedVersion(2)));
        let mut f = b.clone();
        f[5] = 0x80;
        assert_eq!(Envelope::decode(&reseal(f), None), Err(WireError::UnknownFlags(0x80)));
        let mut k = b.clone();
        k[6] = 0x7f;
        assert_eq!(Envelope::decode(&reseal(k), None), Err(WireError::UnknownKind(0x7f)));
        let mut r = b;
        r[10] = 1;
        assert_eq!(Envelope::decode(&reseal(r), None), Err(WireError::Reserved));
    }

    #[test]
    fn rejects_bad_ids() {
        let mut e = sample().encode();
        // "alice" -> "Alice": not a valid id.
        e[HEADER_FIXED_LEN] = b'A';
        assert_eq!(Envelope::decode(&reseal(e), None), Err(WireError::BadId { which: "sender" }));
    }

    #[test]
    fn rejects_payload_checksum_mismatch() {
        let mut e = sample().encode();
        e[40] ^= 1;
        assert_eq!(Envelope::decode(&reseal(e), None), Err(WireError::BadPayloadChecksum));
    }

    #[test]
    fn rejects_wrong_recipient() {
        let b = sample().encode();
        let carol = PeerId::new("carol").unwrap();
        assert!(matches!(Envelope::decode(&b, Some(&carol)), Err(WireError::WrongRecipient { .. })));
    }
}

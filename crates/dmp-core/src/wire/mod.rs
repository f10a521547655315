//! The byte formats that travel through a store: pure functions, no I/O.

mod envelope;

pub use envelope::{
    Envelope, FLAG_ENCRYPTED, HEADER_FIXED_LEN, Kind, MAGIC, MAX_ENVELOPE_LEN, MAX_PAYLOAD_LEN, VERSION, WireError,
};

use sha2::{Digest, Sha256};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

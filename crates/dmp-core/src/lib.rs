//! dmp-core: the protocol logic and store adapters behind the DMP ping tools
//! and the DFTP file transfer tools.
//!
//! - [`wire`]: envelope encoding and checksums (pure functions).
//! - [`proto`]: the mailbox, ping and DFTP state machines (no I/O).
//! - [`store`]: the [`store::Store`] trait and its adapters.
//! - [`drive`]: the async loops that run a machine against a store.
//! - [`localfile`]: bounded reads of the local files the tools keep.
//! - [`sim`]: deterministic simulation of both parties against a faulty,
//!   eventually consistent store (for tests and `cargo xtask sim`).

pub mod buf;
pub mod crypto;
pub mod drive;
pub mod id;
pub mod keys;
pub mod localfile;
pub mod proto;
pub mod sim;
pub mod size;
pub mod state;
pub mod store;
pub mod wire;

pub use id::{InvalidPeerId, PeerId};

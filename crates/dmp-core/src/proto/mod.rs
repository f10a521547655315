//! Protocol state machines. Nothing here does I/O or reads a clock: inputs
//! are store results and the current time, outputs are store operations and
//! events. `proto` imports nothing from `std::fs`, `std::net`, reqwest or tokio.

pub mod dftp;
pub mod dftp_msg;
pub mod hash;
pub mod mailbox;
pub mod ping;

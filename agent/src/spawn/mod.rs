//! The agent's side of the spawn protocol: exec `tend-spawn` with its config on
//! stdin, read its start report, and talk to it over its socket.

pub mod client;
pub mod launch;
pub mod retry;

pub use client::{Client, ClientError};
pub use launch::{launch, LaunchError};

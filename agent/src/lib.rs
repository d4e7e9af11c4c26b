//! tend: the host agent and its CLI.
#![forbid(unsafe_code)]

pub mod cli;
pub mod jobspec;
pub mod ports;
pub mod taskenv;

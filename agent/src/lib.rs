//! tend: the host agent and its CLI. Data flows one way: job file -> validated
//! job -> allocation -> per task: environment -> driver -> tend-spawn -> exit.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod driver;
pub mod ident;
pub mod jobspec;
pub mod logtail;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod pidwatch;
pub mod ports;
pub mod spawn;
pub mod state;
pub mod taskenv;

//! tend: the host agent and its CLI. Data flows one way, and the modules are
//! named after it: job file ([`jobspec`]) -> allocation ([`alloc`]) -> task
//! runner ([`runner`]) -> driver ([`driver`]: tend-spawn or a container) ->
//! exit ([`outcome`]) -> record ([`state`]). The [`agent`] holds them
//! together, long-running behind its [`api`] or embedded in a foreground
//! `tend run` ([`cli`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod alloc;
pub mod api;
pub mod check;
pub mod cli;
pub mod driver;
pub mod durable;
pub mod ident;
pub mod jobspec;
pub mod loglines;
pub mod logtail;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod paths;
pub mod pidwatch;
pub mod ports;
pub mod runner;
pub mod state;
pub mod taskenv;

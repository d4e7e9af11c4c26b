//! `tend-oci`: the OCI runtime command line (`run`, `state`, `kill`,
//! `delete`) in front of tend-spawn.
//!
//! It reads a bundle's `config.json` ([`bundle`]), turns it into a
//! [`SpawnConfig`] ([`container::spawn_config`]) and hands that to
//! `tend-spawn` on stdin, as the agent does; tend-spawn stays free of JSON
//! and of the OCI types (docs/oci.md says why). Each container is a dir under
//! the state root holding `state.json`, the control socket (`ctl/sock`), the
//! task's logs and its exit status file.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod client;
pub mod container;
pub mod verbs;

pub use tend_proto::SpawnConfig;

/// Default state root (`--root`).
pub const DEFAULT_ROOT: &str = "/run/tend-oci";

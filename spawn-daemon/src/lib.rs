//! tend-spawn: the per-task supervisor.
#![deny(unsafe_code)]

pub mod cgroup;

//! The task's cgroup, written as plain files, on v1, v2 and hybrid hosts.
//!
//! [`Hierarchies`] finds where the controllers are mounted; [`TaskCgroup`] is one
//! task's cgroup in every hierarchy it uses: create it with its limits, add the
//! task to it, read its OOM counter and usage, kill everything in it, remove it.
//!
//! Every path derives from one root (`/sys/fs/cgroup` on a host), so the same code
//! runs on fake trees in temp dirs. The only other seam is `Tree`: making and
//! removing cgroup dirs, which on a kernel populates and clears the control files.
//!
//! Files written:
//! - v1: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (when swap is
//!   accounted), `cpu.shares`, `pids.max`, `cgroup.procs` in each hierarchy,
//!   `freezer.state` to kill.
//! - v2: `cgroup.subtree_control` of the ancestors, `memory.max`,
//!   `memory.swap.max`, `cpu.weight`, `pids.max`, `cgroup.procs`, `cgroup.kill`
//!   or `cgroup.freeze` to kill.
//! - hybrid: as v1, plus the task's dir in the v2 tree (membership only), whose
//!   `cgroup.kill` then kills the whole task at once.
//!
//! Modules, one concept each: [`hierarchy`] (where the controllers are
//! mounted, and the checks on a cgroup parent), `task` (one task's cgroup:
//! create, membership, usage, remove), `limits` with `v1` and `v2` (the limit
//! files of each layout), `kill`, `stats` (the figures a client asks for),
//! `fs` (reading and writing control files) and [`error`].
#![forbid(unsafe_code)]

use std::time::Duration;

pub mod error;
mod fs;
pub mod hierarchy;
mod kill;
mod limits;
mod stats;
mod task;
mod v1;
mod v2;

pub use error::CgroupError;
pub use hierarchy::{Controller, Hierarchies, Mode};
pub use task::{TaskCgroup, Usage};

/// Where cgroup hierarchies are mounted on a host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Where the mounts of this process are listed.
pub const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Largest v1 `cpu.shares` the kernel accepts.
const MAX_SHARES: u64 = 262_144;

/// Smallest v1 `cpu.shares` the kernel accepts.
const MIN_SHARES: u64 = 2;

/// Last component of the daemon cgroup every tend-spawn shares
/// (`<cgroup_parent>/tend-spawn`); see [`Hierarchies::is_shared_daemon_path`].
pub const SHARED_DAEMON_CGROUP: &str = "tend-spawn";

/// How long `remove` retries a busy leaf: its last processes may still be exiting.
const RMDIR_PATIENCE: Duration = Duration::from_secs(2);

/// How long `kill_all` keeps killing before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// How long a freeze may take before we kill anyway (SIGKILL still lands on thaw).
const FREEZE_PATIENCE: Duration = Duration::from_secs(1);

type Result<T> = std::result::Result<T, CgroupError>;

#[cfg(test)]
mod tests;

//! The cgroups the daemon holds: its own (left and removed when it leaves)
//! and the task's (killed and removed once the exit is recorded, or on a
//! failed start), each a guard that cleans up on drop.

use std::io;
use std::rc::Rc;

use tend_proto::Stage;
use tracing::{info, warn};

use super::life::Life;
use crate::cgroup::{CgroupError, Hierarchies, TaskCgroup};
use crate::child::StartFailure;

/// A cgroup error as a start failure: stage Cgroup, the errno of its io source,
/// the message naming the file.
pub fn cgroup_failure(e: &CgroupError) -> StartFailure {
    let errno = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
        .unwrap_or(0);
    StartFailure {
        stage: Stage::Cgroup,
        errno,
        message: e.to_string(),
    }
}

/// The daemon's own cgroup (`daemon_path`): left, and removed, when the daemon
/// returns from [`super::run`], whatever the path out.
pub struct OwnCgroup {
    pub(super) hier: Hierarchies,
    pub(super) path: String,
    pub(super) life: Rc<Life>,
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        if Hierarchies::is_shared_daemon_path(&self.path) {
            // Shared by every daemon: the exit takes this one out.
            return;
        }
        match self.life.privileged(|| self.hier.leave_self(&self.path)) {
            Some(Ok(())) => info!(path = %self.path, "left and removed the daemon's cgroup"),
            Some(Err(e)) => warn!(error = %e, "cannot remove the daemon's cgroup"),
            None => info!(path = %self.path, "the daemon's cgroup is left to the cleanup helper"),
        }
    }
}

/// The task's cgroup while the daemon has it: killed and removed on drop unless
/// [`TaskCgroupGuard::remove`] did it already (after the exit was recorded).
pub struct TaskCgroupGuard {
    pub(super) cg: TaskCgroup,
    /// The OOM-kill counter when the task started (a reused dir may not be at 0).
    oom_at_start: Option<u64>,
    pub(super) removed: bool,
    life: Rc<Life>,
}

impl TaskCgroupGuard {
    /// Hold `cg`, noting its OOM-kill counter now.
    pub fn new(cg: TaskCgroup, life: Rc<Life>) -> TaskCgroupGuard {
        let oom_at_start = cg.oom_kill_count().ok().flatten();
        TaskCgroupGuard {
            cg,
            oom_at_start,
            removed: false,
            life,
        }
    }

    /// How many processes the kernel's OOM killer killed in the task's cgroup
    /// since the start (the task or any process of it). Read before removal.
    pub fn oom_kills(&self) -> u64 {
        match self.cg.oom_kill_count() {
            Ok(Some(now)) => now.saturating_sub(self.oom_at_start.unwrap_or(0)),
            Ok(None) => 0,
            Err(e) => {
                warn!(error = %e, "cannot read the OOM counter");
                0
            }
        }
    }

    /// Kill what is left in it and remove it (once).
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        // As the caller too: its kill files are the caller's (setuid mode).
        if let Err(e) = self.cg.kill_all() {
            warn!(error = %e, "killing what is left in the task's cgroup");
        }
        match self.life.privileged(|| self.cg.remove()) {
            Some(Ok(())) => info!(path = %self.cg.rel_path().display(), "task cgroup removed"),
            Some(Err(e)) => warn!(error = %e, "cannot remove the task's cgroup"),
            None => {
                info!(path = %self.cg.rel_path().display(), "the task's cgroup is left to the cleanup helper")
            }
        }
    }
}

impl Drop for TaskCgroupGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

//! The daemon's side of an exec (see `child::exec`): refuse it for a task
//! that is not running, open the task's namespaces, fork the shim, place it
//! in the task's cgroup, and report its exit code to the client that asked
//! once it is reaped.

use std::os::fd::OwnedFd;

use nix::unistd::Pid;
use tend_proto::msg::ExecRequest;
use tracing::{info, warn};

use super::life::Phase;
use super::supervise::Daemon;
use crate::child::exec::{fork_exec, ExecPrepared, TaskNamespaces};
use crate::reaper;
use crate::server::Client;

impl Daemon {
    /// Start `req` on `stdio`: the shim's pid.
    pub(super) fn start_exec(
        &mut self,
        req: &ExecRequest,
        stdio: [OwnedFd; 3],
    ) -> Result<i32, String> {
        if self.ended.is_some() || self.life.phase() != Phase::Running || self.stopping {
            return Err("exec: the task is not running".into());
        }
        let iso = self.config.isolation.as_ref();
        let isolation = match iso {
            // Set at the start, from the policy or the agent (see `start`).
            Some(i) => Some(super::task_ids(i).map_err(|e| format!("exec: {e}"))?),
            None => None,
        };
        let chrooted = iso.is_some_and(|i| i.chroot.is_some());
        let ns = TaskNamespaces::open(self.task_pid, &self.config, chrooted)
            .map_err(|e| format!("exec: {e}"))?;
        let prep = ExecPrepared::new(&self.config, &req.argv, isolation, chrooted, req.tty)?;
        let shim = fork_exec(&prep, &stdio, ns.as_ref()).map_err(|e| format!("exec: fork: {e}"))?;
        // The shim waits for this: in the task's cgroup before anything of
        // the command runs, so a stop or a limit reaches it too.
        if let Some(g) = self.cgroup.as_ref().filter(|g| !g.removed) {
            if let Err(e) = g.cg.add_pid(shim.pid) {
                // Closing the pipe without a byte ends the shim.
                drop(shim.go);
                let _ = nix::sys::signal::kill(shim.pid, nix::sys::signal::Signal::SIGKILL);
                self.execs.push(shim.pid);
                return Err(format!("exec: join the task's cgroup: {e}"));
            }
        }
        if let Err(e) = nix::unistd::write(&shim.go, b"g") {
            warn!(error = %e, "exec: cannot let the shim go");
        }
        info!(pid = shim.pid.as_raw(), argv0 = %req.argv[0], "exec started");
        self.execs.push(shim.pid);
        Ok(shim.pid.as_raw())
    }

    /// Note the execs among what was reaped: their exit codes wait to be sent.
    pub(super) fn note_exec_reaped(&mut self, reaped: &[reaper::Reaped]) {
        for r in reaped {
            if let Some(i) = self.execs.iter().position(|p| *p == r.pid) {
                self.execs.swap_remove(i);
                let code = exit_code(r.status);
                info!(pid = r.pid.as_raw(), code, "exec ended");
                self.exec_exits.push((r.pid, code));
            }
        }
    }

    /// SIGKILL the shim of every exec whose client is gone (its command dies
    /// with it): nobody is left to take its output or its end. The shim is
    /// an unreaped child of the daemon, so its pid is still its own.
    pub(super) fn abandon_execs(&mut self, clients: &[Client]) {
        for c in clients.iter().filter(|c| c.dead) {
            let Some(pid) = c.session.exec_pid.map(Pid::from_raw) else {
                continue;
            };
            if self.execs.contains(&pid) {
                info!(pid = pid.as_raw(), "exec's client is gone: killing it");
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Send each ended exec's code to the client that started it.
    pub(super) fn deliver_exec_exits(&mut self, clients: &mut [Client]) {
        for (pid, code) in self.exec_exits.drain(..) {
            for c in clients.iter_mut() {
                if let Some(r) = c.session.exec_exited(pid.as_raw(), code) {
                    c.send(&r);
                }
            }
        }
    }
}

/// The exit code of a raw wait status: 128+N for a death by signal N.
fn exit_code(status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Pids of the execs still running, for the reaper's bookkeeping.
pub(super) type Execs = Vec<Pid>;

//! The daemon once the task runs: what it holds of the task (pidfd, init,
//! cgroup, log pipes), the requests of its clients, the stop, the sweeps
//! that kill what is left, and the exit's record.

use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;
use tend_proto::msg::{CgroupStats, Stats, Status, TaskState, Welcome};
use tend_proto::{names, ExitStatus, Instance, SpawnConfig, Token, PROTOCOL_VERSION};
use tracing::{info, warn};

use super::cgroups::TaskCgroupGuard;
use super::life::{Life, Phase};
use super::{DRAIN_LIMIT, INIT_DEATH_WAIT, KILL_LIMIT, SWEEP_INTERVAL};
use crate::child;
use crate::logs::{RotatingLog, Spliced};
use crate::reaper;
use crate::server::{Client, CommandError, Handler};
use crate::sys;

/// One log pipe: its read end and the file it goes to.
pub struct Pipe {
    pub(super) fd: OwnedFd,
    log: RotatingLog,
    warned: bool,
    /// Whether splice(2) still serves this log; cleared at its first refusal.
    splice: bool,
}

impl Pipe {
    /// The read end `fd` of a pipe whose bytes go to `log`.
    pub fn new(fd: OwnedFd, log: RotatingLog) -> Pipe {
        Pipe {
            fd,
            log,
            warned: false,
            splice: true,
        }
    }

    /// Move what is there into the log. Returns false at EOF.
    pub fn drain(&mut self, buf: &mut [u8], rounds: usize) -> bool {
        for _ in 0..rounds {
            if self.splice {
                match self.log.splice_from(self.fd.as_fd()) {
                    Spliced::Moved(_) => continue,
                    Spliced::Empty => return true,
                    Spliced::Eof => return false,
                    Spliced::Unsupported => self.splice = false,
                }
            }
            match nix::unistd::read(&self.fd, buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if let Err(e) = self.log.write(&buf[..n]) {
                        if !self.warned {
                            warn!(error = %e, dropped = self.log.dropped(), "log bytes dropped");
                            self.warned = true;
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return true,
                Err(e) => {
                    warn!(error = %e, "log pipe read failed");
                    return false;
                }
            }
        }
        true
    }
}

/// The daemon once the task runs.
pub struct Daemon {
    pub(super) config: SpawnConfig,
    pub(super) alloc: OwnedFd,
    pub(super) instance: Instance,
    pub(super) daemon_pid: Pid,
    pub(super) task_pid: Pid,
    /// The task's pidfd, until it is reaped: every signal to it goes here.
    pub(super) pidfd: Option<OwnedFd>,
    /// The init of the task's pid namespace, until it is reaped.
    pub(super) init: Option<child::NsInit>,
    pub(super) started_at: String,
    /// Raw status and time of the main process's end, once reaped.
    pub(super) ended: Option<(i32, String)>,
    pub(super) exit: Option<ExitStatus>,
    /// When the grace of a stop is over: SIGKILL to everything of the task.
    pub(super) kill_at: Option<Instant>,
    /// When the next round of killing what is left of the task is due.
    pub(super) sweep_at: Option<Instant>,
    /// When the killing gives up (see [`KILL_LIMIT`]).
    pub(super) sweep_until: Option<Instant>,
    /// The task's cgroup, until it is removed after the exit is recorded.
    pub(super) cgroup: Option<TaskCgroupGuard>,
    /// A stop was asked for (the status says Stopping until the exit).
    pub(super) stopping: bool,
    /// SIGTERM: leave as soon as the exit is recorded.
    pub(super) leave_after_exit: bool,
    /// When the pipes stop being drained (see [`DRAIN_LIMIT`]).
    pub(super) drain_until: Option<Instant>,
    /// When the lingering for a release is over.
    pub(super) linger_until: Option<Instant>,
    pub(super) stdout: Option<Pipe>,
    pub(super) stderr: Option<Pipe>,
    /// Setuid mode: the root cleanup helper, spared by the sweeps.
    pub(super) helper: Option<Pid>,
    /// The phase of the daemon's life.
    pub(super) life: Rc<Life>,
    /// The shims of running execs.
    pub(super) execs: super::exec::Execs,
    /// Execs reaped whose exit code is not sent yet.
    pub(super) exec_exits: Vec<(Pid, i32)>,
    /// The task held before its execve, until a Start (`tend-oci create`).
    pub(super) held: Option<child::Held>,
}

impl Daemon {
    /// The daemon of `task`, started at `started_at`, its pipes `pipes`
    /// (stdout, stderr).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: SpawnConfig,
        alloc: OwnedFd,
        instance: Instance,
        task: child::Child,
        started_at: String,
        cgroup: Option<TaskCgroupGuard>,
        pipes: (Pipe, Pipe),
        helper: Option<Pid>,
        life: Rc<Life>,
    ) -> Daemon {
        Daemon {
            config,
            alloc,
            instance,
            daemon_pid: nix::unistd::getpid(),
            task_pid: task.pid,
            pidfd: Some(task.pidfd),
            init: task.init,
            started_at,
            ended: None,
            exit: None,
            kill_at: None,
            sweep_at: None,
            sweep_until: None,
            cgroup,
            stopping: false,
            leave_after_exit: false,
            drain_until: None,
            linger_until: None,
            stdout: Some(pipes.0),
            stderr: Some(pipes.1),
            helper,
            life,
            execs: Vec::new(),
            exec_exits: Vec::new(),
            held: task.held,
        }
    }
}

impl Handler for Daemon {
    fn token(&self) -> &Token {
        &self.config.token
    }

    fn welcome(&self) -> Welcome {
        Welcome {
            version: PROTOCOL_VERSION,
            instance: self.instance,
            daemon_pid: self.daemon_pid.as_raw(),
            task_pid: self.task_pid.as_raw(),
        }
    }

    fn status(&self) -> Status {
        let state = match self.life.phase() {
            Phase::Exited | Phase::Leaving => TaskState::Exited,
            _ if self.stopping => TaskState::Stopping,
            _ if self.held.is_some() && self.ended.is_none() => TaskState::Created,
            _ => TaskState::Running,
        };
        Status {
            state,
            task_pid: self.task_pid.as_raw(),
            daemon_pid: self.daemon_pid.as_raw(),
            run: self.config.run,
            started_at: self.started_at.clone(),
            exit: self.exit.as_ref().map(Into::into),
        }
    }

    fn stats(&self) -> Stats {
        let s = self.cgroup_stats();
        Stats {
            memory_bytes: s.memory.current,
            memory_peak_bytes: s.memory.peak,
            cpu_usage_us: s.cpu.usage_us,
            pids: s.pids,
        }
    }

    fn cgroup_stats(&self) -> CgroupStats {
        let Some(g) = self.cgroup.as_ref().filter(|g| !g.removed) else {
            return CgroupStats::default();
        };
        g.cg.stats().unwrap_or_else(|e| {
            warn!(error = %e, "cgroup stats");
            CgroupStats::default()
        })
    }

    fn exit(&self) -> Option<ExitStatus> {
        self.exit.clone()
    }

    fn signal(&mut self, signo: i32) -> Result<(), CommandError> {
        if !(0..=64).contains(&signo) {
            return Err(CommandError::NotASignal(signo));
        }
        if self.ended.is_some() {
            return Err(CommandError::Exited);
        }
        // Through the pidfd, never the bare pid: it reaches the task or nothing.
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signo)
                .map_err(|source| CommandError::Signal { signo, source }),
            None => Err(CommandError::Exited),
        }
    }

    fn stop(&mut self, signal: i32, grace_ms: u64) -> Result<(), CommandError> {
        if !(1..=64).contains(&signal) {
            return Err(CommandError::NotASignal(signal));
        }
        self.begin_stop(signal, grace_ms);
        Ok(())
    }

    fn release(&mut self) -> Result<(), CommandError> {
        if self.exit.is_none() {
            return Err(CommandError::StillRunning);
        }
        info!("released");
        self.life.enter(Phase::Leaving);
        Ok(())
    }

    fn start(&mut self) -> Result<(), CommandError> {
        if self.ended.is_some() || self.stopping {
            return Err(CommandError::Exited);
        }
        let held = self.held.take().ok_or(CommandError::NotHeld)?;
        held.release().map_err(|f| CommandError::Exec(f.message))?;
        self.started_at = tend_proto::time::now();
        info!("started on request");
        Ok(())
    }

    fn exec(
        &mut self,
        req: &tend_proto::msg::ExecRequest,
        stdio: [OwnedFd; 3],
    ) -> Result<i32, crate::server::CommandError> {
        if self.held.is_some() {
            return Err(crate::server::CommandError::Exec(
                "exec: the task is not started yet".into(),
            ));
        }
        self.start_exec(req, stdio)
            .map_err(crate::server::CommandError::Exec)
    }
}

impl Daemon {
    pub(super) fn begin_stop(&mut self, signal: i32, grace_ms: u64) {
        if self.exit.is_some() {
            return;
        }
        info!(signal, grace_ms, "stopping the task");
        self.stopping = true;
        if let (None, Some(fd)) = (&self.ended, &self.pidfd) {
            // The task's main process, through its pidfd (as Docker and Nomad
            // do); what it started goes with the cgroup once it ends or the
            // grace is over.
            if let Err(e) = sys::pidfd_send_signal(fd.as_fd(), signal) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    warn!(error = %e, "stop signal failed");
                }
            }
        }
        let at = Instant::now() + Duration::from_millis(grace_ms);
        self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
    }

    /// Note the main process's end among what was reaped (the rest are
    /// orphans of the task, reaped as the subreaper).
    pub(super) fn note_reaped(&mut self, reaped: &[reaper::Reaped]) {
        self.note_exec_reaped(reaped);
        for r in reaped {
            if r.pid == self.task_pid && self.ended.is_none() {
                info!(pid = r.pid.as_raw(), status = r.status, "task ended");
                self.ended = Some((r.status, tend_proto::time::now()));
                self.pidfd = None;
            }
            if self.init.as_ref().is_some_and(|i| i.pid == r.pid) {
                self.init = None;
            }
        }
    }

    pub(super) fn on_reaped(&mut self, reaped: &[reaper::Reaped]) {
        self.note_reaped(reaped);
        if self.main_just_ended() {
            // Nothing of the task outlives it.
            self.start_sweep();
        } else if self.sweep_at.is_some() && !reaped.is_empty() {
            // Something of the task just died: look again now rather than at
            // the next round (the pid namespace's init dies right after the
            // task, and the exit waits for it).
            self.sweep();
        }
    }

    /// Whether the main process has ended and its end is not handled yet; if
    /// so, the pipes now drain for [`DRAIN_LIMIT`] at most.
    pub(super) fn main_just_ended(&mut self) -> bool {
        if self.ended.is_some() && self.life.phase() == Phase::Running {
            self.life.enter(Phase::Draining);
            self.drain_until = Some(Instant::now() + DRAIN_LIMIT);
            return true;
        }
        false
    }

    /// Begin killing everything of the task (its cgroup and the daemon's
    /// descendants), round after round from the poll loop, until nothing is
    /// left or [`KILL_LIMIT`] passes.
    pub(super) fn start_sweep(&mut self) {
        if self.sweep_until.is_none() {
            self.sweep_until = Some(Instant::now() + KILL_LIMIT);
        }
        self.sweep();
    }

    /// One round: reap, then SIGKILL whatever of the task is still there.
    pub(super) fn sweep(&mut self) {
        self.note_reaped(&reaper::reap_all());
        // This round covers the main process's end, if it came now.
        self.main_just_ended();
        self.kill_ns_init();
        let in_cgroup = match self.cgroup.as_ref().filter(|g| !g.removed) {
            Some(g) => g.cg.kill_once().unwrap_or_else(|e| {
                warn!(error = %e, "killing the task's cgroup");
                false
            }),
            None => false,
        };
        let descendants = reaper::sigkill_descendants(self.helper);
        let now = Instant::now();
        if !in_cgroup && descendants == 0 {
            self.sweep_at = None;
        } else if self.sweep_until.is_some_and(|t| now >= t) {
            warn!(
                descendants,
                in_cgroup, "processes of the task left after {KILL_LIMIT:?} of killing"
            );
            self.sweep_at = None;
        } else {
            self.sweep_at = Some(now + SWEEP_INTERVAL);
        }
    }

    /// SIGKILL the init of the task's pid namespace through its pidfd: its
    /// death takes every process of the namespace with it. Once the task is
    /// reaped that takes microseconds (the init's exit waits for every pid of
    /// the namespace to be released, the task's among them, so never wait for
    /// it before): wait for it here, [`INIT_DEATH_WAIT`] at most, and reap
    /// it, so the cgroup is found empty this round rather than killed
    /// (frozen, on v1) and looked at again a round later.
    pub(super) fn kill_ns_init(&mut self) {
        let Some(init) = &self.init else {
            return;
        };
        let _ = sys::pidfd_send_signal(init.pidfd.as_fd(), libc::SIGKILL);
        if self.ended.is_none() {
            return;
        }
        let mut fds = [PollFd::new(init.pidfd.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(INIT_DEATH_WAIT).unwrap_or(PollTimeout::ZERO);
        if matches!(poll(&mut fds, wait), Ok(n) if n > 0) {
            self.note_reaped(&reaper::reap_all());
        }
    }

    pub(super) fn finish(&mut self, clients: &mut [Client]) {
        let Some((status, finished_at)) = self.ended.clone() else {
            return;
        };
        let mut exit = ExitStatus::from_wait(
            &self.config.alloc_id,
            &self.config.task,
            self.config.run,
            self.task_pid.as_raw(),
            status,
            self.started_at.clone(),
            finished_at,
        );
        if let Some(g) = &self.cgroup {
            // Before the cgroup goes: its counter goes with it. The task itself
            // died of it only when the counter moved and SIGKILL ended it.
            exit.oom_kills = g.oom_kills();
            exit.oom_killed = exit.oom_kills > 0 && exit.signal == Some(libc::SIGKILL);
        }
        // In place for every reader first; on the disk right after Exited
        // is sent: the agent waits for the one, only a power loss for the other.
        let pending = match exit.write_at_deferred(
            self.alloc.as_fd(),
            &names::exit_status_file(&self.config.task),
        ) {
            Ok(p) => {
                info!(exit_code = ?exit.exit_code, signal = ?exit.signal, "exit recorded");
                Some(p)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the exit status file");
                None
            }
        };
        // Sent now, not on the next round of the loop: the fsyncs and the
        // cgroup's removal below (a kill check and an rmdir per hierarchy)
        // must not delay it.
        let now = Instant::now();
        for c in clients.iter_mut() {
            if let Some(r) = c.session.exited(&exit) {
                c.send(&r);
                c.flush(now);
            }
        }
        if let Some(Err(e)) = pending.map(tend_proto::atomic::Pending::sync) {
            tracing::error!(error = %e, "cannot sync the exit status file");
        }
        self.exit = Some(exit);
        self.life.enter(Phase::Exited);
        self.drain_until = None;
        self.kill_at = None;
        // The exit is recorded: the task's cgroup may go.
        if let Some(g) = self.cgroup.as_mut() {
            g.remove();
        }
        if self.leave_after_exit {
            self.life.enter(Phase::Leaving);
        } else {
            self.linger_until = Some(Instant::now() + Duration::from_millis(self.config.linger_ms));
        }
    }
}

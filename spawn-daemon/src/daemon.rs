//! The daemon's life: startup (after the double fork), the task's start, the
//! poll loop, and the exit.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{getpid, Pid};
use tend_proto::config::CgroupSpec;
use tend_proto::msg::{CgroupStats, Stats, Status, TaskState, Welcome};
use tend_proto::{
    names, ExitStatus, Instance, SpawnConfig, Stage, StartReport, Token, PROTOCOL_VERSION,
};
use tracing::{info, warn};

use crate::cgroup::{CgroupError, Hierarchies, TaskCgroup};
use crate::child::{self, ChildStdio, Isolation, Prepared, StartFailure};
use crate::clock::{Clock, Monotonic};
use crate::daemon_log::DaemonLog;
use crate::logs::{self, RotatingLog, Spliced};
use crate::reaper;
use crate::server::{self, accept_all, Client, Handler};
use crate::setuid::{self, Context};
use crate::sys;

/// How long the pipes are drained after the task's end, at most.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long the daemon keeps killing what is left of the task before it gives
/// up and records the exit anyway.
///
/// Killing never blocks the poll loop for long: each round is one pass (with a
/// cgroup, one write of `cgroup.kill`, which signals every member before it
/// returns and refuses forks meanwhile; else, on v1, freeze / SIGKILL each /
/// thaw, where only the freeze may wait, at most 1 s; plus one SIGKILL to each
/// descendant of the daemon, found in /proc), then the loop goes on serving
/// clients and comes back [`SWEEP_INTERVAL`] later to reap and look again.
/// What remains is the time the kernel takes to tear down killed processes,
/// typically well under 10 ms; only a process stuck in the kernel (D state)
/// can hold the exit record back, and then for this long at most.
pub const KILL_LIMIT: Duration = Duration::from_secs(2);
/// Between two rounds of killing what is left of the task.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(5);
/// How long a sweep waits for the init of the task's pid namespace to die,
/// once the task itself is reaped (see `Daemon::kill_ns_init`).
pub const INIT_DEATH_WAIT: Duration = Duration::from_millis(20);
/// Size of the one read buffer shared by pipes and clients.
const READ_BUF: usize = 16 * 1024;

/// Write the start report to stdout (fd 1).
pub fn report(r: &StartReport) {
    let mut out = io::stdout().lock();
    if let Err(e) = tend_proto::frame::write_frame(&mut out, r) {
        // stderr is still the agent's at this point.
        let _ = writeln!(
            io::stderr(),
            "tend-spawn: cannot write the start report: {e}"
        );
    }
}

fn errno_of(e: Errno) -> i32 {
    e as i32
}

/// A cgroup error as a start failure: stage Cgroup, the errno of its io source,
/// the message naming the file.
fn cgroup_failure(e: &CgroupError) -> StartFailure {
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
/// returns from [`run`], whatever the path out.
struct OwnCgroup {
    hier: Hierarchies,
    path: String,
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        if Hierarchies::is_shared_daemon_path(&self.path) {
            // Shared by every daemon: the exit takes this one out.
            return;
        }
        match privileged(|| self.hier.leave_self(&self.path)) {
            Some(Ok(())) => info!(path = %self.path, "left and removed the daemon's cgroup"),
            Some(Err(e)) => warn!(error = %e, "cannot remove the daemon's cgroup"),
            None => info!(path = %self.path, "the daemon's cgroup is left to the cleanup helper"),
        }
    }
}

/// Setuid mode: whether the daemon runs as the caller's fs ids (set once the
/// policy allowed the config), and whether it has dropped to the caller for good.
static SETUID_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Run `f` with root's file access: in setuid mode through fsuid/fsgid 0 and
/// back to the caller's (None once the daemon has dropped to the caller: the
/// cleanup helper does what is left); as is otherwise.
fn privileged<T>(f: impl FnOnce() -> T) -> Option<T> {
    use std::sync::atomic::Ordering;
    if !SETUID_MODE.load(Ordering::Relaxed) {
        return Some(f());
    }
    if DROPPED.load(Ordering::Relaxed) {
        return None;
    }
    match setuid::with_fs_ids(&setuid::Linux, 0, 0, f) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(error = %e, "cannot regain root's file access");
            None
        }
    }
}

/// [`privileged`] for a step that must happen: a lost privilege is an error.
fn privileged_or<T>(
    stage: Stage,
    f: impl FnOnce() -> Result<T, StartFailure>,
) -> Result<T, StartFailure> {
    privileged(f).unwrap_or_else(|| {
        Err(StartFailure::plain(
            stage,
            "setuid: root's file access is gone".to_string(),
        ))
    })
}

/// The task's cgroup while the daemon has it: killed and removed on drop unless
/// [`TaskCgroupGuard::remove`] did it already (after the exit was recorded).
struct TaskCgroupGuard {
    cg: TaskCgroup,
    /// The OOM-kill counter when the task started (a reused dir may not be at 0).
    oom_at_start: Option<u64>,
    removed: bool,
}

impl TaskCgroupGuard {
    fn new(cg: TaskCgroup) -> TaskCgroupGuard {
        let oom_at_start = cg.oom_kill_count().ok().flatten();
        TaskCgroupGuard {
            cg,
            oom_at_start,
            removed: false,
        }
    }

    /// How many processes the kernel's OOM killer killed in the task's cgroup
    /// since the start (the task or any process of it). Read before removal.
    fn oom_kills(&self) -> u64 {
        match self.cg.oom_kill_count() {
            Ok(Some(now)) => now.saturating_sub(self.oom_at_start.unwrap_or(0)),
            Ok(None) => 0,
            Err(e) => {
                warn!(error = %e, "cannot read the OOM counter");
                0
            }
        }
    }

    fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        // As the caller too: its kill files are the caller's (setuid mode).
        if let Err(e) = self.cg.kill_all() {
            warn!(error = %e, "killing what is left in the task's cgroup");
        }
        match privileged(|| self.cg.remove()) {
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

/// A failure before the task runs: report it, write the exit file if the alloc
/// dir is open, and give the exit code.
fn fail(config: &SpawnConfig, alloc: Option<BorrowedFd<'_>>, f: &StartFailure) -> i32 {
    tracing::error!(stage = %f.stage, errno = f.errno, "start failed: {}", f.message);
    if let Some(dir) = alloc {
        let exit = ExitStatus::never_started(
            &config.alloc_id,
            &config.task,
            config.run,
            f.message.clone(),
        );
        if let Err(e) = exit.write_at(dir, &names::exit_status_file(&config.task)) {
            tracing::error!(error = %e, "cannot write the exit status file");
        }
    }
    report(&StartReport::Failed {
        stage: f.stage,
        errno: f.errno,
        message: f.message.clone(),
    });
    1
}

/// Resolve the task's user before any fork: a name or a numeric uid.
pub fn resolve_user(user: &str) -> Result<Isolation, StartFailure> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok(Isolation {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(StartFailure::plain(
            Stage::User,
            format!("user {user}: no such user"),
        )),
        Err(e) => Err(StartFailure::new(Stage::User, user, errno_of(e))),
    }
}

/// Best effort: never chosen by the OOM killer. Without CAP_SYS_RESOURCE the
/// kernel says no to -1000, which is a warning, and the daemon settles for 0
/// where it started above that. Returns the value it had at its start (None
/// where /proc does not say), which its tasks get back.
fn protect_from_oom() -> Option<i32> {
    const FILE: &str = "/proc/self/oom_score_adj";
    let start = std::fs::read_to_string(FILE)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Err(e) = std::fs::write(FILE, b"-1000") {
        let lowered = start.is_some_and(|v| v > 0) && std::fs::write(FILE, b"0").is_ok();
        warn!(error = %e, lowered_to_0 = lowered, "cannot set oom_score_adj to -1000");
    }
    start
}

fn stdio_to_dev_null() {
    if let Ok(null) = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    DaemonLog::stderr_off();
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

/// One log pipe: its read end and the file it goes to.
struct Pipe {
    fd: OwnedFd,
    log: RotatingLog,
    warned: bool,
    /// Whether splice(2) still serves this log; cleared at its first refusal.
    splice: bool,
}

impl Pipe {
    /// Move what is there into the log. Returns false at EOF.
    fn drain(&mut self, buf: &mut [u8], rounds: usize) -> bool {
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
struct Daemon {
    config: SpawnConfig,
    alloc: OwnedFd,
    instance: Instance,
    daemon_pid: Pid,
    task_pid: Pid,
    /// The task's pidfd, until it is reaped: every signal to it goes here.
    pidfd: Option<OwnedFd>,
    /// The init of the task's pid namespace, until it is reaped.
    init: Option<child::NsInit>,
    started_at: String,
    /// Raw status and time of the main process's end, once reaped.
    ended: Option<(i32, String)>,
    exit: Option<ExitStatus>,
    /// When the grace of a stop is over: SIGKILL to everything of the task.
    kill_at: Option<Instant>,
    /// When the next round of killing what is left of the task is due.
    sweep_at: Option<Instant>,
    /// When the killing gives up (see [`KILL_LIMIT`]).
    sweep_until: Option<Instant>,
    /// The task's cgroup, until it is removed after the exit is recorded.
    cgroup: Option<TaskCgroupGuard>,
    stopping: bool,
    /// SIGTERM: leave as soon as the exit is recorded.
    leave_after_exit: bool,
    drain_until: Option<Instant>,
    linger_until: Option<Instant>,
    leave: bool,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
    /// Setuid mode: the root cleanup helper, spared by the sweeps.
    helper: Option<Pid>,
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
        let state = if self.exit.is_some() {
            TaskState::Exited
        } else if self.stopping {
            TaskState::Stopping
        } else {
            TaskState::Running
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

    fn signal(&mut self, signo: i32) -> Result<(), String> {
        if !(0..=64).contains(&signo) {
            return Err(format!("{signo} is not a signal"));
        }
        if self.ended.is_some() {
            return Err("task has exited".into());
        }
        // Through the pidfd, never the bare pid: it reaches the task or nothing.
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signo)
                .map_err(|e| format!("signal {signo}: {e}")),
            None => Err("task has exited".into()),
        }
    }

    fn stop(&mut self, signal: i32, grace_ms: u64) -> Result<(), String> {
        if !(1..=64).contains(&signal) {
            return Err(format!("{signal} is not a signal"));
        }
        self.begin_stop(signal, grace_ms);
        Ok(())
    }

    fn release(&mut self) -> Result<(), String> {
        if self.exit.is_none() {
            return Err("task still running".into());
        }
        info!("released");
        self.leave = true;
        Ok(())
    }
}

impl Daemon {
    fn begin_stop(&mut self, signal: i32, grace_ms: u64) {
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
    fn note_reaped(&mut self, reaped: &[reaper::Reaped]) {
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

    fn on_reaped(&mut self, reaped: &[reaper::Reaped]) {
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
    fn main_just_ended(&mut self) -> bool {
        if self.ended.is_some() && self.drain_until.is_none() && self.exit.is_none() {
            self.drain_until = Some(Instant::now() + DRAIN_LIMIT);
            return true;
        }
        false
    }

    /// Begin killing everything of the task (its cgroup and the daemon's
    /// descendants), round after round from the poll loop, until nothing is
    /// left or [`KILL_LIMIT`] passes.
    fn start_sweep(&mut self) {
        if self.sweep_until.is_none() {
            self.sweep_until = Some(Instant::now() + KILL_LIMIT);
        }
        self.sweep();
    }

    /// One round: reap, then SIGKILL whatever of the task is still there.
    fn sweep(&mut self) {
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
    fn kill_ns_init(&mut self) {
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

    fn finish(&mut self, clients: &mut [Client]) {
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
        self.drain_until = None;
        self.kill_at = None;
        // The exit is recorded: the task's cgroup may go.
        if let Some(g) = self.cgroup.as_mut() {
            g.remove();
        }
        if self.leave_after_exit {
            self.leave = true;
        } else {
            self.linger_until = Some(Instant::now() + Duration::from_millis(self.config.linger_ms));
        }
    }
}

/// Prepared pieces of the startup that the poll loop takes over.
struct Started {
    listener: UnixListener,
    signals: SignalFd,
}

/// The daemon, from the grandchild's first instruction to its exit code.
///
/// `ctx` is set in setuid mode: the policy allowed the config, file access is
/// the caller's already, and every root step below goes through [`privileged`].
pub fn run(config: SpawnConfig, isolation: Option<Isolation>, ctx: Option<Context>) -> i32 {
    if ctx.is_some() {
        SETUID_MODE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let daemon_pid = getpid();
    // Hold no dir of the agent's busy.
    let _ = nix::unistd::chdir("/");
    // Signals first: nothing may arrive unhandled.
    for s in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGPIPE] {
        let _ = sys::ignore_signal(s);
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTERM);
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);
    let _ = ::nix::sys::prctl::set_child_subreaper(true);
    if nix::unistd::geteuid().is_root() {
        let _ = ::nix::sys::prctl::set_dumpable(false);
    }

    // The alloc dir, its log dir and the daemon's own log. In setuid mode the
    // alloc dir is opened as the caller, one component at a time below a
    // data root, without following symlinks, and must be the caller's.
    let opened = match &ctx {
        None => nix::fcntl::open(
            config.alloc_dir.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StartFailure::new(Stage::Logs, &config.alloc_dir, errno_of(e))),
        Some(c) => open_caller_alloc(c, &config.alloc_dir),
    };
    let alloc = match opened {
        Ok(fd) => fd,
        Err(f) => {
            DaemonLog::new(&config.alloc_id, &config.task, None).install();
            return fail(&config, None, &f);
        }
    };
    let log_dir = match open_log_dir(alloc.as_fd()) {
        Ok(fd) => fd,
        Err(e) => {
            DaemonLog::new(&config.alloc_id, &config.task, None).install();
            let f = StartFailure::io(Stage::Logs, &config.log_dir().display().to_string(), &e);
            return fail(&config, Some(alloc.as_fd()), &f);
        }
    };
    // One file for every run of the task, each run's lines after the last's.
    let own_log =
        logs::open_shared_append(log_dir.as_fd(), &format!("{}.tend-spawn.log", config.task));
    let own_log_err = own_log.as_ref().err().map(|e| e.to_string());
    DaemonLog::new(&config.alloc_id, &config.task, own_log.ok().map(File::from)).install();
    if let Some(e) = own_log_err {
        warn!(error = %e, "the daemon's own log is not available");
    }
    let _span =
        tracing::info_span!("task", alloc_id = %config.alloc_id, task = %config.task).entered();
    info!("=== run {} ===", config.run);

    // The cgroups: find them, and leave the agent's for the daemon's own one,
    // outside the task's (its memory must not count against the task) and
    // outside the agent's (stopping the agent's service must not kill it).
    let hier = match &config.cgroup {
        None => None,
        Some(_) => match privileged_or(Stage::Cgroup, || {
            Hierarchies::detect().map_err(|e| cgroup_failure(&e))
        }) {
            Ok(h) => Some(h),
            Err(f) => return fail(&config, Some(alloc.as_fd()), &f),
        },
    };
    // Setuid mode: the root cleanup helper exists before any cgroup does, so
    // whatever stage this daemon dies at, what it made is removed.
    let helper = match (&ctx, &hier, &config.cgroup) {
        (Some(_), Some(h), Some(spec)) => match fork_cleanup_helper(h, spec) {
            Ok(pid) => Some(pid),
            Err(f) => return fail(&config, Some(alloc.as_fd()), &f),
        },
        _ => None,
    };
    let daemon_path = config.cgroup.as_ref().and_then(|c| c.daemon_path.clone());
    let _own_cgroup = match (&hier, daemon_path) {
        (Some(h), Some(path)) => {
            // Made before the join, so a half-done join is undone too.
            let own = OwnCgroup {
                hier: h.clone(),
                path,
            };
            if let Err(f) = privileged_or(Stage::Cgroup, || {
                h.join_self(&own.path).map_err(|e| cgroup_failure(&e))
            }) {
                return fail(&config, Some(alloc.as_fd()), &f);
            }
            if let Some(pid) = helper {
                // Beside the daemon, outside the agent's cgroup, so stopping
                // the agent's service does not take it either.
                let moved = privileged(|| TaskCgroup::open(h, &own.path)?.add_pid(pid));
                if let Some(Err(e)) = moved {
                    warn!(error = %e, "the cleanup helper stays in the agent's cgroup");
                }
            }
            Some(own)
        }
        _ => None,
    };
    // The task's: what the daemon had, never below 0 (an agent protected
    // from the OOM killer must not hand that to its tasks).
    let task_oom_score_adj = privileged(protect_from_oom).flatten().unwrap_or(0).max(0);

    let signals = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(s) => s,
        Err(e) => {
            return fail(
                &config,
                Some(alloc.as_fd()),
                &StartFailure::new(Stage::Fork, "signalfd", errno_of(e)),
            )
        }
    };

    // The control socket.
    let socket_path = PathBuf::from(&config.socket_path);
    // Its owner: the caller in setuid mode (bound as the caller, too).
    let owner = ctx
        .as_ref()
        .map_or_else(|| nix::unistd::geteuid().as_raw(), |c| c.caller.uid);
    let listener = match server::bind(&socket_path, owner) {
        Ok(l) => l,
        Err(e) => {
            let f = StartFailure {
                stage: Stage::Socket,
                errno: e.errno(),
                message: e.to_string(),
            };
            return fail(&config, Some(alloc.as_fd()), &f);
        }
    };
    let code = match start(
        config,
        alloc,
        log_dir,
        isolation,
        daemon_pid,
        Started { listener, signals },
        hier.as_ref(),
        ctx.as_ref(),
        helper,
        task_oom_score_adj,
    ) {
        Ok(code) => code,
        Err(code) => code,
    };
    let _ = std::fs::remove_file(&socket_path);
    info!(code, "leaving");
    code
}

fn open_log_dir(alloc: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let created = match mkdirat(alloc, names::LOG_DIR, Mode::from_bits_truncate(0o755)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
    };
    let fd = sys::open_beneath(alloc, names::LOG_DIR, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    if created {
        // The umask (077) cut it; the agent and people read the logs.
        fchmod(&fd, Mode::from_bits_truncate(0o755))
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    Ok(fd)
}

/// Setuid mode: the caller's alloc dir below one of the policy's data roots
/// (see [`crate::policy::open_caller_dir`]), as a readable dir fd.
fn open_caller_alloc(ctx: &Context, alloc_dir: &str) -> Result<OwnedFd, StartFailure> {
    let refuse = |m: String| {
        StartFailure::plain(
            Stage::Config,
            format!("policy {}: data_roots: {m}", ctx.policy.path.display()),
        )
    };
    let path = crate::policy::open_caller_dir(
        &ctx.policy.data_roots,
        std::path::Path::new(alloc_dir),
        ctx.caller.uid,
    )
    .map_err(refuse)?;
    sys::open_beneath(path.as_fd(), ".", libc::O_DIRECTORY | libc::O_RDONLY, 0)
        .map_err(|e| StartFailure::io(Stage::Logs, alloc_dir, &e))
}

/// Setuid mode: the task's `local/` becomes its user's (the agent, not root,
/// cannot chown it). Opened as the caller beneath the alloc dir without
/// following symlinks, and given away only if it is the caller's own.
fn give_local_to_task(
    ctx: &Context,
    alloc: BorrowedFd<'_>,
    task: &str,
) -> Result<(), StartFailure> {
    let rel = format!("{task}/local");
    let fd = sys::open_beneath(alloc, &rel, libc::O_DIRECTORY | libc::O_RDONLY, 0)
        .map_err(|e| StartFailure::io(Stage::Mount, &rel, &e))?;
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| StartFailure::new(Stage::Mount, &rel, errno_of(e)))?;
    if st.st_uid != ctx.caller.uid {
        // Already the task's (a restart), or someone else's: left as it is.
        return Ok(());
    }
    privileged_or(Stage::Mount, || {
        nix::unistd::fchown(
            &fd,
            Some(nix::unistd::Uid::from_raw(ctx.task.uid)),
            Some(nix::unistd::Gid::from_raw(ctx.task.gid)),
        )
        .and_then(|()| fchmod(&fd, Mode::from_bits_truncate(0o750)))
        .map_err(|e| StartFailure::new(Stage::Mount, &rel, errno_of(e)))
    })
}

/// Setuid mode: fork the cleanup helper, a root process that does nothing but
/// wait for the daemon to go (its pidfd of the daemon turns readable when the
/// daemon exits, however it exits) and then kill and remove the task's cgroup
/// and the daemon's own, which the daemon, once it is the caller, cannot
/// rmdir. bubblewrap's `privileged_op` split, cut down to one operation with
/// no input at all.
///
/// Forked before any cgroup is made, and waited for until it holds all of
/// root's ids (a process whose real uid is the caller's, the daemon until the
/// drop, the caller may SIGKILL): from then on no stage of the set-up can
/// leave a cgroup or a task behind. It watches the daemon itself, not a pipe
/// a forked child could hold open: a child the daemon placed in the task's
/// cgroup dies with it; one it had not placed yet waits on a sync pipe whose
/// other end died with the daemon.
fn fork_cleanup_helper(hier: &Hierarchies, spec: &CgroupSpec) -> Result<Pid, StartFailure> {
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| StartFailure::new(Stage::Fork, "cleanup pipe", errno_of(e)))
    };
    let (ready_r, ready_w) = pipe()?;
    let daemon = getpid();
    // A shared daemon cgroup stays (see Hierarchies::is_shared_daemon_path).
    let daemon_path = spec
        .daemon_path
        .as_deref()
        .filter(|p| !Hierarchies::is_shared_daemon_path(p));
    match child::fork_single_threaded() {
        Err(e) => Err(StartFailure::io(Stage::Fork, "cleanup helper", &e)),
        Ok(child::Forked::Parent(pid)) => {
            drop(ready_w);
            // One byte once it is root; EOF if it died first.
            let mut b = [0u8; 1];
            let ready = loop {
                match nix::unistd::read(&ready_r, &mut b) {
                    Err(Errno::EINTR) => {}
                    other => break other == Ok(1),
                }
            };
            if !ready {
                let _ = sys::wait_blocking(pid);
                return Err(StartFailure::plain(
                    Stage::Fork,
                    "the setuid cleanup helper ended before it was ready; nothing was made"
                        .to_string(),
                ));
            }
            Ok(pid)
        }
        Ok(child::Forked::Child) => {
            drop(ready_r);
            // Nothing is logged from here: the fds of the log are closed below.
            DaemonLog::all_off();
            stdio_to_dev_null();
            // The daemon, checked to be this process's parent once its pidfd
            // is open (gone already: the pidfd is of nobody, or of another
            // process, and the cleanup starts at once).
            let watched = sys::pidfd_open(daemon)
                .ok()
                .filter(|_| nix::unistd::getppid() == daemon);
            let mut keep: Vec<i32> = vec![ready_w.as_raw_fd()];
            keep.extend(watched.as_ref().map(AsRawFd::as_raw_fd));
            keep.sort_unstable();
            let mut from = 3u32;
            for fd in keep.iter().filter_map(|fd| u32::try_from(*fd).ok()) {
                if fd > from {
                    let _ = sys::close_range(from, fd - 1, 0);
                }
                from = fd.saturating_add(1);
            }
            let _ = sys::close_range(from, u32::MAX, 0);
            // All of root's ids: the caller (the real uid until now) cannot signal it.
            let _ = nix::unistd::setgroups(&[]);
            let root_g = nix::unistd::Gid::from_raw(0);
            let root_u = nix::unistd::Uid::from_raw(0);
            let _ = nix::unistd::setresgid(root_g, root_g, root_g);
            if nix::unistd::setresuid(root_u, root_u, root_u).is_err() {
                sys::exit_now(1);
            }
            // The daemon ran with the caller's fsuid, which cleared the file
            // capabilities from its effective set; setresuid does not give
            // them back (only setfsuid does). Without CAP_DAC_OVERRIDE the
            // helper could not write the task's cgroup.kill or freezer.state,
            // chowned to the caller: a SIGKILLed daemon left its task running.
            if let Ok(mut caps) = sys::capget() {
                caps.effective = caps.permitted;
                let _ = sys::capset(caps);
            }
            let _ = nix::unistd::write(&ready_w, b"r");
            drop(ready_w);
            if let Some(fd) = &watched {
                loop {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Err(Errno::EINTR) => {}
                        _ => break,
                    }
                }
            }
            // Whatever exists of it, in whichever hierarchies it got to.
            if let Ok(cg) = TaskCgroup::open(hier, &spec.path) {
                let _ = cg.kill_all();
                let _ = cg.remove();
            }
            if let Some(p) = daemon_path {
                let _ = hier.leave_self(p);
            }
            sys::exit_now(0)
        }
    }
}

/// Setuid mode, once the task runs: become the caller for good, keeping only
/// [`setuid::KEPT_CAPS`] (the cleanup helper, forked before the first
/// cgroup, stays root).
fn drop_privileges(ctx: &Context) -> Result<(), StartFailure> {
    setuid::drop_to_caller(&setuid::Linux, &ctx.ids, &setuid::KEPT_CAPS)
        .map_err(|e| StartFailure::plain(Stage::Privileges, e.to_string()))?;
    DROPPED.store(true, std::sync::atomic::Ordering::Relaxed);
    let took = setuid::since_exec().unwrap_or_default();
    info!(
        privileged_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        uid = ctx.caller.uid,
        kept = "CAP_KILL",
        "dropped to the caller"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start(
    config: SpawnConfig,
    alloc: OwnedFd,
    log_dir: OwnedFd,
    isolation: Option<Isolation>,
    daemon_pid: Pid,
    started: Started,
    hier: Option<&Hierarchies>,
    ctx: Option<&Context>,
    helper: Option<Pid>,
    task_oom_score_adj: i32,
) -> Result<i32, i32> {
    let failed = |config: &SpawnConfig, alloc: &OwnedFd, f: StartFailure| {
        fail(config, Some(alloc.as_fd()), &f)
    };
    // The task's cgroup with its limits, before any fd of the task is opened
    // (STYLE.md rule 5); dropped (killed, removed) on any failure below.
    // In setuid mode the files that kill it are the caller's: the daemon,
    // once it is the caller, kills the cgroup without any capability.
    let cgroup = match (hier, &config.cgroup) {
        (Some(h), Some(spec)) => match privileged_or(Stage::Cgroup, || {
            let cg = TaskCgroup::create(h, spec).map_err(|e| cgroup_failure(&e))?;
            let guard = TaskCgroupGuard::new(cg);
            if let Some(c) = ctx {
                guard
                    .cg
                    .chown_kill_files(c.caller.uid, c.caller.gid)
                    .map_err(|e| cgroup_failure(&e))?;
            }
            Ok(guard)
        }) {
            Ok(g) => Some(g),
            Err(f) => return Err(failed(&config, &alloc, f)),
        },
        _ => None,
    };
    let open_log = |stream: &str| {
        RotatingLog::open(
            log_dir.as_fd(),
            &names::log_file(&config.task, stream),
            config.logs,
        )
        .map_err(|e| StartFailure::plain(Stage::Logs, e.to_string()))
    };
    let (out_log, err_log) = match (open_log("stdout"), open_log("stderr")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(f), _) | (_, Err(f)) => return Err(failed(&config, &alloc, f)),
    };
    drop(log_dir);
    let pipe = || -> Result<(OwnedFd, OwnedFd), StartFailure> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| StartFailure::new(Stage::Stdio, "log pipe", errno_of(e)))?;
        set_nonblocking(r.as_fd())
            .map_err(|e| StartFailure::new(Stage::Stdio, "log pipe", errno_of(e)))?;
        Ok((r, w))
    };
    let ((out_r, out_w), (err_r, err_w)) = match (pipe(), pipe()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => return Err(failed(&config, &alloc, f)),
    };
    let stdin = match nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return Err(failed(
                &config,
                &alloc,
                StartFailure::new(Stage::Stdio, "/dev/null", errno_of(e)),
            ))
        }
    };
    let mut instance = [0u8; 16];
    if let Err(e) = sys::getrandom(&mut instance) {
        return Err(failed(
            &config,
            &alloc,
            StartFailure::io(Stage::Fork, "getrandom", &e),
        ));
    }
    // The task's root: mount points made now, mounts made by the child.
    let root = match config.isolation.as_ref().and_then(|i| i.chroot.as_ref()) {
        None => None,
        Some(spec) => {
            match crate::chroot::prepare(&config, spec, alloc.as_fd(), &crate::chroot::ThisHost) {
                Ok(r) => Some(r),
                Err(e) => {
                    let f = StartFailure {
                        stage: Stage::Mount,
                        errno: e.source.raw_os_error().unwrap_or(0),
                        message: e.to_string(),
                    };
                    return Err(failed(&config, &alloc, f));
                }
            }
        }
    };
    if let (Some(c), Some(_)) = (ctx, &root) {
        if let Err(f) = give_local_to_task(c, alloc.as_fd(), &config.task) {
            return Err(failed(&config, &alloc, f));
        }
    }
    let prep = match Prepared::new(&config, isolation, root, task_oom_score_adj) {
        Ok(p) => p,
        Err(f) => return Err(failed(&config, &alloc, f)),
    };
    let stdio = ChildStdio {
        stdin,
        stdout: out_w,
        stderr: err_w,
    };
    // The child waits on the sync pipe while it is placed in the task's cgroup:
    // only the task goes there, never the daemon.
    let place = |pid: Pid| match &cgroup {
        Some(g) => privileged_or(Stage::Cgroup, || {
            g.cg.add_pid(pid).map_err(|e| cgroup_failure(&e))
        }),
        None => Ok(()),
    };
    let child::Child {
        pid: task_pid,
        pidfd,
        init,
    } = match child::spawn(&prep, stdio, place) {
        Ok(c) => c,
        Err(f) => return Err(failed(&config, &alloc, f)),
    };
    drop(prep);
    let started_at = tend_proto::time::now();
    // Setuid mode: the privileged phase ends here, before Started: never
    // report a task started by a half-privileged daemon.
    if let Some(c) = ctx {
        match drop_privileges(c) {
            Ok(()) => {}
            Err(f) => {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                let _ = sys::wait_blocking(task_pid);
                if let Some(i) = &init {
                    let _ = sys::pidfd_send_signal(i.pidfd.as_fd(), libc::SIGKILL);
                    let _ = sys::wait_blocking(i.pid);
                }
                return Err(failed(&config, &alloc, f));
            }
        }
    }
    let instance = Instance(instance);
    // Started reaches the agent before anything can report the exit: the first
    // reap happens in the loop below.
    report(&StartReport::Started {
        daemon_pid: daemon_pid.as_raw(),
        task_pid: task_pid.as_raw(),
        instance,
    });
    stdio_to_dev_null();
    info!(pid = task_pid.as_raw(), %instance, "task started");

    let mut d = Daemon {
        config,
        alloc,
        instance,
        daemon_pid,
        task_pid,
        pidfd: Some(pidfd),
        init,
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
        leave: false,
        stdout: Some(Pipe {
            fd: out_r,
            log: out_log,
            warned: false,
            splice: true,
        }),
        stderr: Some(Pipe {
            fd: err_r,
            log: err_log,
            warned: false,
            splice: true,
        }),
        helper,
    };
    Ok(event_loop(&mut d, started))
}

const SLOT_SIGNALS: usize = 0;
const SLOT_PIDFD: usize = 1;
const SLOT_STDOUT: usize = 2;
const SLOT_STDERR: usize = 3;
const SLOT_LISTENER: usize = 4;
const FIRST_CLIENT: usize = 5;

fn event_loop(d: &mut Daemon, s: Started) -> i32 {
    event_loop_on(d, s, &Monotonic)
}

/// The loop, reading the time from `clock`. Each step reads it afresh: a
/// time taken before the blocking poll is hours old after it for a daemon
/// nobody talked to, and a deadline counted from it has passed at birth.
fn event_loop_on(d: &mut Daemon, s: Started, clock: &dyn Clock) -> i32 {
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let my_uid = nix::unistd::getuid().as_raw();
    let mut revents: Vec<PollFlags> = Vec::new();
    loop {
        let now = clock.now();
        // Deadlines.
        if let Some(at) = d.kill_at {
            if now >= at {
                info!("grace is over: SIGKILL to everything of the task");
                d.kill_at = None;
                d.start_sweep();
            }
        }
        if d.sweep_at.is_some_and(|at| now >= at) {
            d.sweep();
        }
        if let Some(at) = d.drain_until {
            let pipes_done = d.stdout.is_none() && d.stderr.is_none();
            // The exit is recorded once nothing of the task is left (or the
            // killing gave up), so the cgroup can go right after.
            if (pipes_done || now >= at) && d.sweep_at.is_none() {
                if !pipes_done {
                    warn!("log pipes still open after the task's end; closing them");
                    d.stdout = None;
                    d.stderr = None;
                }
                d.finish(&mut clients);
            }
        }
        if let Some(at) = d.linger_until {
            if now >= at {
                info!("linger is over");
                d.leave = true;
            }
        }
        for c in clients.iter_mut() {
            if c.wants_write() || c.session.closing {
                c.flush(now);
            }
            if c.expired(now) {
                c.dead = true;
            }
        }
        clients.retain(|c| !c.dead);
        if d.leave {
            for c in clients.iter_mut() {
                c.flush(now);
            }
            return 0;
        }

        let mut deadline: Option<Instant> = None;
        // While the killing goes on, the drain deadline waits for it.
        let drain_until = d.drain_until.filter(|_| d.sweep_at.is_none());
        for t in [d.kill_at, d.sweep_at, drain_until, d.linger_until]
            .into_iter()
            .flatten()
            .chain(clients.iter().filter_map(|c| c.deadline))
        {
            deadline = Some(deadline.map_or(t, |x: Instant| x.min(t)));
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };

        {
            let none = PollFlags::empty();
            let inp = PollFlags::POLLIN;
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(FIRST_CLIENT + clients.len());
            fds.push(PollFd::new(s.signals.as_fd(), inp));
            let dummy = s.signals.as_fd();
            fds.push(match &d.pidfd {
                Some(p) => PollFd::new(p.as_fd(), inp),
                None => PollFd::new(dummy, none),
            });
            fds.push(match &d.stdout {
                Some(p) => PollFd::new(p.fd.as_fd(), inp),
                None => PollFd::new(dummy, none),
            });
            fds.push(match &d.stderr {
                Some(p) => PollFd::new(p.fd.as_fd(), inp),
                None => PollFd::new(dummy, none),
            });
            fds.push(PollFd::new(s.listener.as_fd(), inp));
            for c in &clients {
                let mut ev = none;
                if c.wants_read() {
                    ev |= inp;
                }
                if c.wants_write() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.fd(), ev));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            revents.clear();
            revents.extend(fds.iter().map(|f| f.revents().unwrap_or(none)));
        }
        let ready = |i: usize| !revents[i].is_empty();

        if ready(SLOT_SIGNALS) {
            let mut chld = false;
            while let Ok(Some(si)) = s.signals.read_signal() {
                if si.ssi_signo == Signal::SIGTERM as u32 {
                    info!("SIGTERM: stopping the task and leaving");
                    d.leave_after_exit = true;
                    if d.exit.is_some() {
                        d.leave = true;
                    } else {
                        let (sig, grace) = (d.config.kill_signal, d.config.kill_timeout_ms);
                        d.begin_stop(sig, grace);
                    }
                } else {
                    chld = true;
                }
            }
            if chld {
                d.on_reaped(&reaper::reap_all());
            }
        }
        if ready(SLOT_PIDFD) {
            d.on_reaped(&reaper::reap_all());
            // A pidfd stays readable once the process is gone; stop watching.
            if d.ended.is_some() {
                d.pidfd = None;
            }
        }
        for slot in [SLOT_STDOUT, SLOT_STDERR] {
            if ready(slot) {
                let pipe = if slot == SLOT_STDOUT {
                    &mut d.stdout
                } else {
                    &mut d.stderr
                };
                if let Some(p) = pipe {
                    if !p.drain(&mut buf, 64) {
                        *pipe = None;
                    }
                }
            }
        }
        if ready(SLOT_LISTENER) {
            accept_all(&s.listener, &mut clients, my_uid, clock);
        }
        let now = clock.now();
        for (i, c) in clients.iter_mut().enumerate() {
            let Some(ev) = revents.get(FIRST_CLIENT + i) else {
                break;
            };
            if ev.is_empty() {
                continue;
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                c.on_readable(&mut buf, d);
                if ev.intersects(PollFlags::POLLERR) {
                    c.dead = true;
                }
            }
            c.flush(now);
        }
    }
}

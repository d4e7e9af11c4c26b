//! The daemon's life: from the grandchild's first instruction ([`run`]),
//! through the privileged sequence that starts the task (`start`), the
//! poll loop (`event_loop`) while it runs (`supervise`), to the exit.
//! [`life`] holds the phase it is in and what that allows.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::unistd::{getpid, Pid};
use tend_proto::{names, ExitStatus, Instance, SpawnConfig, Stage, StartReport};
use tracing::{info, warn};

use crate::cgroup::{Hierarchies, TaskCgroup};
use crate::child::{self, ChildStdio, Isolation, Prepared, StartFailure};
use crate::chroot::PreparedRoot;
use crate::daemon_log::DaemonLog;
use crate::logs::{self, RotatingLog};
use crate::server;
use crate::setuid::Context;
use crate::sys;

mod alloc;
mod cgroups;
mod event_loop;
mod exec;
mod helper;
pub mod life;
mod supervise;

use cgroups::{cgroup_failure, OwnCgroup, TaskCgroupGuard};
use event_loop::{event_loop, Started};
use life::{Life, Phase};
use supervise::{Daemon, Pipe};

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

/// What the rest of tend-spawn's own stdin, after the config frame, is for.
#[derive(Debug)]
pub enum OwnStdin {
    /// Nothing: the task gets /dev/null.
    Unused,
    /// The task's stdin ([`TaskStdin::AfterConfig`](tend_proto::config::TaskStdin)).
    Task(OwnedFd),
    /// The starter's first connection
    /// ([`FirstConnection::Stdin`](tend_proto::config::FirstConnection)).
    Connection(UnixStream),
}

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

/// The task's ids: as the agent resolved them when it sent them (no lookup:
/// a static build has no NSS), else [`resolve_user`]. Only for a root
/// tend-spawn: in setuid mode the policy resolves the user itself.
pub fn task_ids(iso: &tend_proto::config::Isolation) -> Result<Isolation, StartFailure> {
    match iso.ids {
        Some(ids) => Ok(Isolation {
            uid: ids.uid,
            gid: ids.gid,
        }),
        None => resolve_user(&iso.user),
    }
}

/// Resolve the task's user before any fork: a name or a numeric uid, from
/// the host's user database (/etc/passwd in a static build).
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

/// The daemon's oom_score_adj at its start and after [`protect_from_oom`]
/// (None where /proc does not say).
#[derive(Debug, Clone, Copy)]
struct OomScoreAdj {
    start: Option<i32>,
    now: Option<i32>,
}

impl OomScoreAdj {
    /// The task's: what the daemon had, never below 0 (an agent protected
    /// from the OOM killer must not hand that to its tasks).
    fn task(self) -> i32 {
        self.start.unwrap_or(0).max(0)
    }

    /// What the task's child must write to have [`OomScoreAdj::task`]: None
    /// where the value it inherits from the daemon is that already.
    fn task_write(self) -> Option<i32> {
        let task = self.task();
        (self.now != Some(task)).then_some(task)
    }
}

/// The value that keeps a process from the OOM killer.
const OOM_NEVER: i32 = -1000;

/// Best effort: never chosen by the OOM killer. Without CAP_SYS_RESOURCE the
/// kernel says no to -1000, which is a warning, and the daemon settles for 0
/// where it started above that. Returns the value it had at its start, which
/// its tasks get back, and the value it has now.
fn protect_from_oom() -> OomScoreAdj {
    const FILE: &str = "/proc/self/oom_score_adj";
    let start = std::fs::read_to_string(FILE)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if start == Some(OOM_NEVER) {
        return OomScoreAdj { start, now: start };
    }
    let now = match std::fs::write(FILE, OOM_NEVER.to_string()) {
        Ok(()) => Some(OOM_NEVER),
        Err(e) => {
            let lowered = start.is_some_and(|v| v > 0) && std::fs::write(FILE, b"0").is_ok();
            warn!(error = %e, lowered_to_0 = lowered, "cannot set oom_score_adj to -1000");
            if lowered {
                Some(0)
            } else {
                start
            }
        }
    };
    OomScoreAdj { start, now }
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

/// The daemon, from the grandchild's first instruction to its exit code:
/// its own process state, the alloc dir and its logs, then `start`, then
/// the poll loop until the exit is recorded and released.
///
/// `ctx` is set in setuid mode: the policy allowed the config, file access is
/// the caller's already, and every root step goes through [`Life::privileged`].
///
/// `own_stdin` is what the rest of tend-spawn's own stdin is for: the
/// task's stdin, the starter's first connection, or nothing (the task then
/// gets /dev/null).
pub fn run(
    config: SpawnConfig,
    isolation: Option<Isolation>,
    ctx: Option<Context>,
    own_stdin: OwnStdin,
) -> i32 {
    let life = Life::new(ctx.as_ref());
    let ctx = ctx.as_ref();
    let signal_mask = own_process_state();
    let alloc = match open_alloc_dir(&config, ctx) {
        Ok(fd) => fd,
        Err(f) => {
            DaemonLog::new(&config.alloc_id, &config.task, None).install();
            return fail(&config, None, &f);
        }
    };
    let log_dir = match open_logs(&config, alloc.as_fd()) {
        Ok(fd) => fd,
        Err(f) => return fail(&config, Some(alloc.as_fd()), &f),
    };
    let _span =
        tracing::info_span!("task", alloc_id = %config.alloc_id, task = %config.task).entered();
    info!("=== run {} ===", config.run);
    let code = match start(
        &config,
        &alloc,
        log_dir,
        isolation,
        ctx,
        &life,
        &signal_mask,
        own_stdin,
    ) {
        Ok((mut daemon, started, _own_cgroup)) => {
            // The daemon holds its own.
            drop(alloc);
            event_loop(&mut daemon, started)
        }
        Err(f) => fail(&config, Some(alloc.as_fd()), &f),
    };
    info!(code, "leaving");
    code
}

/// The privileged sequence, in the one order it runs: the cgroups found
/// and the daemon's own joined (in setuid mode the root cleanup helper
/// forked first), the OOM killer kept away, SIGCHLD and SIGTERM on a
/// signalfd, the control socket bound, then the task: its cgroup, its log
/// files and pipes, its root prepared, its children forked and placed
/// ([`child::spawn`]), the daemon dropped to the caller (setuid mode), and
/// the start report. On a failure, whatever was made so far is undone as
/// its guard drops (the daemon's own cgroup last, after the poll loop on
/// success).
#[allow(clippy::too_many_arguments)] // the sequence's inputs, each used once
fn start(
    config: &SpawnConfig,
    alloc: &OwnedFd,
    log_dir: OwnedFd,
    isolation: Option<Isolation>,
    ctx: Option<&Context>,
    life: &Rc<Life>,
    signal_mask: &SigSet,
    own_stdin: OwnStdin,
) -> Result<(Daemon, Started, Option<OwnCgroup>), StartFailure> {
    let hier = detect_cgroups(config, life)?;
    let helper = match (ctx, &hier, &config.cgroup) {
        (Some(_), Some(h), Some(spec)) => Some(helper::fork_cleanup_helper(h, spec)?),
        _ => None,
    };
    let own_cgroup = join_own_cgroup(config, hier.as_ref(), helper, life)?;
    // Where root's file access was lost (setuid mode), the daemon's value is
    // not known: the child writes the task's.
    let task_oom_score_adj = life
        .privileged(protect_from_oom)
        .map_or(Some(0), OomScoreAdj::task_write);
    let signals = SignalFd::with_flags(signal_mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| StartFailure::new(Stage::Fork, "signalfd", errno_of(e)))?;
    let listener = bind_socket(config, ctx)?;
    let socket_file = SocketFile(PathBuf::from(&config.socket_path));
    let cgroup = create_task_cgroup(config, hier.as_ref(), ctx, life)?;
    let (out_log, err_log) = open_task_logs(config, log_dir)?;
    let ((out_r, out_w), (err_r, err_w)) = (log_pipe()?, log_pipe()?);
    let (task_stdin, handed) = match own_stdin {
        OwnStdin::Unused => (None, None),
        OwnStdin::Task(fd) => (Some(fd), None),
        OwnStdin::Connection(s) => (None, Some(s)),
    };
    let stdin = match task_stdin {
        Some(fd) => fd,
        None => nix::fcntl::open(
            "/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StartFailure::new(Stage::Stdio, "/dev/null", errno_of(e)))?,
    };
    let mut instance = [0u8; 16];
    sys::getrandom(&mut instance).map_err(|e| StartFailure::io(Stage::Fork, "getrandom", &e))?;
    let root_user = isolation.is_some_and(|i| i.uid == 0);
    let root = prepare_root(config, alloc.as_fd(), ctx, life, root_user)?;
    let prep = Prepared::new(config, isolation, root, task_oom_score_adj)?;
    let stdio = ChildStdio {
        stdin,
        stdout: out_w,
        stderr: err_w,
    };
    // The child waits on the sync pipe while it is placed in the task's cgroup:
    // only the task goes there, never the daemon.
    let place = |pid: Pid| match &cgroup {
        Some(g) => life.privileged_or(Stage::Cgroup, || {
            g.cg.add_pid(pid).map_err(|e| cgroup_failure(&e))
        }),
        None => Ok(()),
    };
    // The namespace's init only reaps: it joins the one hierarchy whose kill
    // takes it along, not the six more a task joins on a hybrid host.
    let place_init = |pid: Pid| match &cgroup {
        Some(g) => life.privileged_or(Stage::Cgroup, || {
            g.cg.add_pid_to_kill(pid).map_err(|e| cgroup_failure(&e))
        }),
        None => Ok(()),
    };
    let task = child::spawn(&prep, stdio, place, place_init)?;
    drop(prep);
    let started_at = tend_proto::time::now();
    // Setuid mode: the privileged phase ends here, before Started: never
    // report a task started by a half-privileged daemon.
    if let Some(c) = ctx {
        if let Err(f) = life.drop_to_caller(c) {
            task.kill();
            return Err(f);
        }
    }
    life.enter(Phase::Running);
    let instance = Instance(instance);
    // Started reaches the agent before anything can report the exit: the first
    // reap happens in the poll loop. With a handed connection it carries the
    // welcome that connection would have had.
    let (daemon_pid, task_pid) = (getpid().as_raw(), task.pid.as_raw());
    report(&match handed {
        Some(_) => StartReport::StartedWithConnection(tend_proto::msg::Welcome {
            version: tend_proto::PROTOCOL_VERSION,
            instance,
            daemon_pid,
            task_pid,
        }),
        None => StartReport::Started {
            daemon_pid,
            task_pid,
            instance,
        },
    });
    stdio_to_dev_null();
    info!(pid = task.pid.as_raw(), %instance, "task started");
    // The ids the task runs with, kept for `tend exec`: resolved once.
    let mut kept = config.clone();
    if let (Some(iso), Some(ids)) = (kept.isolation.as_mut(), isolation) {
        iso.ids = Some(tend_proto::config::TaskIds {
            uid: ids.uid,
            gid: ids.gid,
        });
    }
    let daemon = Daemon::new(
        kept,
        alloc
            .try_clone()
            .map_err(|e| StartFailure::io(Stage::Fork, "alloc dir", &e))?,
        instance,
        task,
        started_at,
        cgroup,
        (Pipe::new(out_r, out_log), Pipe::new(err_r, err_log)),
        helper,
        Rc::clone(life),
    );
    let started = Started {
        listener,
        signals,
        _socket_file: socket_file,
        handed,
    };
    Ok((daemon, started, own_cgroup))
}

/// The daemon's own process state, before anything can arrive: no dir of
/// the agent's held busy, SIGHUP, SIGINT and SIGPIPE ignored, SIGCHLD and
/// SIGTERM blocked (for the signalfd: the mask returned), a child subreaper
/// (the task's orphans come back to it), not dumpable as root.
fn own_process_state() -> SigSet {
    let _ = nix::unistd::chdir("/");
    for s in child::DAEMON_IGNORED {
        if let Ok(s) = Signal::try_from(s) {
            let _ = sys::ignore_signal(s);
        }
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTERM);
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);
    let _ = nix::sys::prctl::set_child_subreaper(true);
    if nix::unistd::geteuid().is_root() {
        let _ = nix::sys::prctl::set_dumpable(false);
    }
    mask
}

/// The alloc dir. In setuid mode it is opened as the caller, one component
/// at a time below a data root, without following symlinks, and must be
/// the caller's.
fn open_alloc_dir(config: &SpawnConfig, ctx: Option<&Context>) -> Result<OwnedFd, StartFailure> {
    match ctx {
        None => nix::fcntl::open(
            config.alloc_dir.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StartFailure::new(Stage::Logs, &config.alloc_dir, errno_of(e))),
        Some(c) => alloc::open_caller_alloc(c, &config.alloc_dir),
    }
}

/// The alloc's log dir, and the daemon's own log in it, installed: one file
/// for every run of the task, each run's lines after the last's.
fn open_logs(config: &SpawnConfig, alloc: BorrowedFd<'_>) -> Result<OwnedFd, StartFailure> {
    let log_dir = match alloc::open_log_dir(alloc) {
        Ok(fd) => fd,
        Err(e) => {
            DaemonLog::new(&config.alloc_id, &config.task, None).install();
            let what = config.log_dir().display().to_string();
            return Err(StartFailure::io(Stage::Logs, &what, &e));
        }
    };
    let own_log =
        logs::open_shared_append(log_dir.as_fd(), &format!("{}.tend-spawn.log", config.task));
    let own_log_err = own_log.as_ref().err().map(|e| e.to_string());
    DaemonLog::new(&config.alloc_id, &config.task, own_log.ok().map(File::from)).install();
    if let Some(e) = own_log_err {
        warn!(error = %e, "the daemon's own log is not available");
    }
    Ok(log_dir)
}

/// The cgroup hierarchies, where the config asks for a cgroup.
fn detect_cgroups(config: &SpawnConfig, life: &Life) -> Result<Option<Hierarchies>, StartFailure> {
    match &config.cgroup {
        None => Ok(None),
        Some(_) => life
            .privileged_or(Stage::Cgroup, || {
                Hierarchies::detect().map_err(|e| cgroup_failure(&e))
            })
            .map(Some),
    }
}

/// Leave the agent's cgroup for the daemon's own one, outside the task's
/// (its memory must not count against the task) and outside the agent's
/// (stopping the agent's service must not kill it); the cleanup helper
/// goes beside it.
fn join_own_cgroup(
    config: &SpawnConfig,
    hier: Option<&Hierarchies>,
    helper: Option<Pid>,
    life: &Rc<Life>,
) -> Result<Option<OwnCgroup>, StartFailure> {
    let daemon_path = config.cgroup.as_ref().and_then(|c| c.daemon_path.clone());
    let (Some(h), Some(path)) = (hier, daemon_path) else {
        return Ok(None);
    };
    // Made before the join, so a half-done join is undone too.
    let own = OwnCgroup {
        hier: h.clone(),
        path,
        life: Rc::clone(life),
    };
    life.privileged_or(Stage::Cgroup, || {
        h.join_self(&own.path).map_err(|e| cgroup_failure(&e))
    })?;
    if let Some(pid) = helper {
        // Beside the daemon, outside the agent's cgroup, so stopping the
        // agent's service does not take it either.
        let moved = life.privileged(|| TaskCgroup::open(h, &own.path)?.add_pid(pid));
        if let Some(Err(e)) = moved {
            warn!(error = %e, "the cleanup helper stays in the agent's cgroup");
        }
    }
    Ok(Some(own))
}

/// The control socket, owned (and, in setuid mode, bound) by the caller.
fn bind_socket(config: &SpawnConfig, ctx: Option<&Context>) -> Result<UnixListener, StartFailure> {
    let owner = ctx.map_or_else(|| nix::unistd::geteuid().as_raw(), |c| c.caller.uid);
    server::bind(Path::new(&config.socket_path), owner).map_err(|e| StartFailure {
        stage: Stage::Socket,
        errno: e.errno(),
        message: e.to_string(),
    })
}

/// The control socket's file once bound: removed when the poll loop is done
/// with it, or when a later step of the start fails.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The task's cgroup with its limits, before any fd of the task is opened
/// (STYLE.md rule 5); dropped (killed, removed) on any failure after. In
/// setuid mode the files that kill it are the caller's: the daemon, once
/// it is the caller, kills the cgroup without any capability.
fn create_task_cgroup(
    config: &SpawnConfig,
    hier: Option<&Hierarchies>,
    ctx: Option<&Context>,
    life: &Rc<Life>,
) -> Result<Option<TaskCgroupGuard>, StartFailure> {
    let (Some(h), Some(spec)) = (hier, &config.cgroup) else {
        return Ok(None);
    };
    life.privileged_or(Stage::Cgroup, || {
        let cg = TaskCgroup::create(h, spec).map_err(|e| cgroup_failure(&e))?;
        let guard = TaskCgroupGuard::new(cg, Rc::clone(life));
        if let Some(c) = ctx {
            guard
                .cg
                .chown_kill_files(c.caller.uid, c.caller.gid)
                .map_err(|e| cgroup_failure(&e))?;
        }
        Ok(guard)
    })
    .map(Some)
}

/// The task's stdout and stderr log files.
fn open_task_logs(
    config: &SpawnConfig,
    log_dir: OwnedFd,
) -> Result<(RotatingLog, RotatingLog), StartFailure> {
    let open = |stream: &str| {
        RotatingLog::open(
            log_dir.as_fd(),
            &names::log_file(&config.task, stream),
            config.logs,
        )
        .map_err(|e| StartFailure::plain(Stage::Logs, e.to_string()))
    };
    Ok((open("stdout")?, open("stderr")?))
}

/// A log pipe: its read end non-blocking (the daemon's), its write end the
/// task's.
fn log_pipe() -> Result<(OwnedFd, OwnedFd), StartFailure> {
    let failed = |e: Errno| StartFailure::new(Stage::Stdio, "log pipe", errno_of(e));
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(failed)?;
    set_nonblocking(r.as_fd()).map_err(failed)?;
    Ok((r, w))
}

/// The task's root: mount points made now, mounts made by the child; in
/// setuid mode its `local/` handed to the task's user. `root_user`: the
/// task runs as uid 0 (see [`crate::chroot::plan`]).
fn prepare_root(
    config: &SpawnConfig,
    alloc: BorrowedFd<'_>,
    ctx: Option<&Context>,
    life: &Life,
    root_user: bool,
) -> Result<Option<PreparedRoot>, StartFailure> {
    let Some(spec) = config.isolation.as_ref().and_then(|i| i.chroot.as_ref()) else {
        return Ok(None);
    };
    let root = crate::chroot::prepare(config, spec, alloc, root_user, &crate::chroot::ThisHost)
        .map_err(|e| StartFailure {
            stage: Stage::Mount,
            errno: e.source.raw_os_error().unwrap_or(0),
            message: e.to_string(),
        })?;
    if let Some(c) = ctx {
        alloc::give_local_to_task(life, c, alloc, &config.task)?;
    }
    Ok(Some(root))
}

#[cfg(test)]
mod tests {
    use super::OomScoreAdj;

    fn oom(start: Option<i32>, now: Option<i32>) -> OomScoreAdj {
        OomScoreAdj { start, now }
    }

    #[test]
    fn the_task_gets_the_daemons_first_oom_score_adj_never_below_0_written_only_when_it_differs() {
        // Protected: the task's child writes back what the daemon had.
        assert_eq!(oom(Some(0), Some(-1000)).task_write(), Some(0));
        assert_eq!(oom(Some(300), Some(-1000)).task_write(), Some(300));
        // Refused -1000: the daemon's value is the task's, nothing to write.
        assert_eq!(oom(Some(0), Some(0)).task_write(), None);
        assert_eq!(oom(Some(300), Some(300)).task_write(), None);
        // Refused, lowered to 0: the task gets its 300 back.
        assert_eq!(oom(Some(300), Some(0)).task_write(), Some(300));
        // An agent protected from the OOM killer does not hand that on.
        assert_eq!(oom(Some(-1000), Some(-1000)).task_write(), Some(0));
        assert_eq!(oom(Some(-500), Some(-500)).task_write(), Some(0));
        // No /proc: 0, best effort.
        assert_eq!(oom(None, None).task_write(), Some(0));
    }
}

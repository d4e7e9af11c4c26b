//! Fork and exec: the daemon's detach from its starter and the task's start.
//!
//! Everything the task's child needs (CStrings, argv and envp arrays, fds, ids) is
//! prepared in [`Prepared`] before the fork; between fork and exec the child makes
//! only async-signal-safe calls through libc, allocates nothing and takes no lock.
//! A failing step writes its stage and errno to a CLOEXEC pipe and `_exit(127)`s,
//! which the parent turns into a [`StartFailure`] such as
//! "exec /bin/nope: No such file or directory".
//!
//! With a root (the exec driver), the task gets a pid namespace of its own:
//! the daemon unshares one and forks its init first ([`NsInit`], which only
//! reaps), then the task, which is pid 2 there and the daemon's own child.
//!
//! The init arms its parent-death signal and then says ready on a
//! socketpair; the daemon places it and forks the task meanwhile, reads the
//! answer once the task has exec'd and answers it in turn (the init leaves
//! without that answer): no init outlives a daemon killed at
//! any instant of the start (see `start_ns_init`), and the start does not
//! wait for the init to be scheduled.
//!
//! The child's steps, in the one order they run (STYLE.md rule 5), are
//! `task::task_steps`: process group, the go on the sync pipe (the parent
//! places the child in the task's cgroup meanwhile), oom_score_adj, the root
//! (`mount::enter_root`), the working dir, the drop to the task's user,
//! signals and umask, stdio, the gate of a held task ([`Held`]: `tend-oci
//! create` waits there for its start), execve. Each is a function over the
//! async-signal-safe wrappers of `raw`.

use std::ffi::{c_char, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use tend_proto::config::{ConfigExtra, TaskStart};
use tend_proto::{SpawnConfig, Stage};

use crate::chroot::PreparedRoot;

pub mod exec;
mod mount;
pub(crate) mod raw;
mod task;

/// The signals the daemon ignores (SIGHUP, SIGINT, SIGPIPE); every other
/// disposition it has is SIG_DFL, from the first process's reset, or a
/// handler. A task's child puts these back, execve the handlers.
pub const DAEMON_IGNORED: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGPIPE];

/// Why the task did not start: the stage, its errno and one line for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StartFailure {
    /// The step that failed.
    pub stage: Stage,
    /// The errno, 0 when no system call failed.
    pub errno: i32,
    /// "exec /nonexistent: No such file or directory".
    pub message: String,
}

impl StartFailure {
    /// A failure of `stage` on `what` (a path or a value) with `errno`.
    pub fn new(stage: Stage, what: &str, errno: i32) -> StartFailure {
        StartFailure {
            stage,
            errno,
            message: failure_message(stage, what, errno),
        }
    }

    /// A failure from an io::Error.
    pub fn io(stage: Stage, what: &str, err: &io::Error) -> StartFailure {
        StartFailure::new(stage, what, err.raw_os_error().unwrap_or(0))
    }

    /// A failure that is no system call's (errno 0).
    pub fn plain(stage: Stage, message: impl Into<String>) -> StartFailure {
        StartFailure {
            stage,
            errno: 0,
            message: message.into(),
        }
    }
}

/// The text of an errno without the "(os error N)" tail std adds.
pub fn strerror(errno: i32) -> &'static str {
    Errno::from_raw(errno).desc()
}

/// "<stage> <what>: <strerror>", the one line a person reads.
pub fn failure_message(stage: Stage, what: &str, errno: i32) -> String {
    if errno == 0 {
        format!("{stage} {what}: failed")
    } else {
        format!("{stage} {what}: {}", strerror(errno))
    }
}

/// What the child becomes: the user to drop to (the root it gets is a
/// [`PreparedRoot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    /// The uid to run as.
    pub uid: u32,
    /// The primary gid of that user.
    pub gid: u32,
}

/// A namespace a task may have of its own beyond its pid and mount ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnNamespace {
    /// Its CLONE_NEW* flag.
    pub flag: libc::c_int,
    /// Its file in /proc/<pid>/ns.
    pub proc_file: &'static str,
    /// Its name in messages.
    pub shown: &'static str,
}

/// The uts, ipc, network and cgroup namespaces `config` gives its task, in
/// the order they are named and joined. The task's child unshares them in
/// one call once it is in its cgroup, so a cgroup namespace is rooted at
/// the task's cgroup in every hierarchy.
pub fn own_namespaces(config: &SpawnConfig) -> impl Iterator<Item = OwnNamespace> {
    let ns = &config.namespaces;
    let cgroup = config.extras.contains(&ConfigExtra::CgroupNamespace);
    let own = |flag, proc_file, shown| OwnNamespace {
        flag,
        proc_file,
        shown,
    };
    [
        (ns.uts, own(libc::CLONE_NEWUTS, "uts", "uts")),
        (ns.ipc, own(libc::CLONE_NEWIPC, "ipc", "ipc")),
        (ns.net, own(libc::CLONE_NEWNET, "net", "network")),
        (cgroup, own(libc::CLONE_NEWCGROUP, "cgroup", "cgroup")),
    ]
    .into_iter()
    .filter_map(|(on, ns)| on.then_some(ns))
}

/// Everything the child needs, built before the fork.
pub struct Prepared {
    command: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    cwd: CString,
    isolation: Option<Isolation>,
    root: Option<PreparedRoot>,
    /// Whether the task gets a pid namespace of its own (it does with a root).
    pid_ns: bool,
    /// Whether the task is held before its execve until a Start
    /// ([`TaskStart::OnRequest`]).
    held: bool,
    /// The CLONE_NEW* flags of the uts, ipc, network and cgroup namespaces
    /// the task unshares (0: none).
    ns_flags: libc::c_int,
    /// The host name set in its uts namespace.
    hostname: Option<CString>,
    /// The namespaces, for a message ("uts ipc network cgroup").
    ns_shown: String,
    /// What the task's oom_score_adj is set to ("0\n"): the daemon's own
    /// (-1000 where it could) is not the task's. None: the daemon's is the
    /// task's already, nothing to write.
    oom_score_adj: Option<CString>,
    /// Display forms for messages, indexed by stage.
    command_shown: String,
    cwd_shown: String,
    root_shown: String,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments and env may hold secrets: never in a log line.
        f.debug_struct("Prepared")
            .field("command", &self.command_shown)
            .field("cwd", &self.cwd_shown)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

/// The task's environment as `K=V` C strings; with a root, `TMPDIR=/tmp`
/// unless it sets one (the private tmpfs of crate::chroot::plan). Err names
/// the field with a NUL byte.
fn task_envp(config: &SpawnConfig, chrooted: bool) -> Result<Vec<CString>, &'static str> {
    let mut envp = Vec::with_capacity(config.env.len() + 1);
    for (k, v) in &config.env {
        envp.push(CString::new(format!("{k}={v}")).map_err(|_| "env")?);
    }
    if chrooted && !config.env.iter().any(|(k, _)| k == "TMPDIR") {
        envp.push(c"TMPDIR=/tmp".to_owned());
    }
    Ok(envp)
}

/// The NULL-terminated array of pointers execve takes; `strings` must
/// outlive it.
fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    ptrs
}

fn cstring(field: &str, v: &str) -> Result<CString, StartFailure> {
    CString::new(v)
        .map_err(|_| StartFailure::plain(Stage::Config, format!("{field} holds a NUL byte")))
}

impl Prepared {
    /// Build the child's strings and arrays from a validated config. The
    /// task's oom_score_adj becomes `oom_score_adj` (None: it keeps the
    /// daemon's, which is the task's already); with a root the task
    /// gets its own pid namespace, and `TMPDIR=/tmp` unless its env sets one.
    pub fn new(
        config: &SpawnConfig,
        isolation: Option<Isolation>,
        root: Option<PreparedRoot>,
        oom_score_adj: Option<i32>,
    ) -> Result<Prepared, StartFailure> {
        let command = cstring("command", &config.command)?;
        let mut argv = vec![command.clone()];
        for a in &config.args {
            argv.push(cstring("args", a)?);
        }
        let envp = task_envp(config, root.is_some()).map_err(|field| {
            StartFailure::plain(Stage::Config, format!("{field} holds a NUL byte"))
        })?;
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        let mut ns_flags = 0;
        let mut ns_shown = Vec::new();
        for ns in own_namespaces(config) {
            ns_flags |= ns.flag;
            ns_shown.push(ns.shown);
        }
        let hostname = config
            .namespaces
            .hostname
            .as_deref()
            .map(|h| cstring("namespaces.hostname", h))
            .transpose()?;
        Ok(Prepared {
            command,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd: cstring("cwd", &config.cwd)?,
            isolation,
            // (Not in figure 1e's baseline build: see Cargo.toml.)
            pid_ns: root.is_some() && !cfg!(feature = "bench-no-pid-namespace"),
            held: config.start == TaskStart::OnRequest,
            ns_flags,
            hostname,
            ns_shown: ns_shown.join(" "),
            root,
            oom_score_adj: oom_score_adj
                .map(|v| cstring("oom_score_adj", &format!("{v}\n")))
                .transpose()?,
            command_shown: config.command.clone(),
            cwd_shown: config.cwd.clone(),
            root_shown: config.task_root().display().to_string(),
        })
    }

    /// The path or value a failure of `stage` (item `which` of it, from 1; 0
    /// for the stage as a whole) is about.
    fn what(&self, stage: Stage, which: u32) -> String {
        let op = usize::try_from(which)
            .ok()
            .and_then(|w| w.checked_sub(1))
            .and_then(|i| self.root.as_ref()?.ops.get(i));
        if let (Stage::Mount, Some(op)) = (stage, op) {
            return format!("{} in {}", op.shown, self.root_shown);
        }
        if stage == Stage::Fork {
            match which {
                NS_UNSHARE => return format!("{} namespaces", self.ns_shown),
                NS_HOSTNAME => {
                    let h = self.hostname.as_deref().unwrap_or_default();
                    return format!("sethostname {}", h.to_string_lossy());
                }
                NS_LOOPBACK => return "lo up in the network namespace".to_string(),
                _ => {}
            }
        }
        match (stage, self.isolation) {
            (Stage::Chdir, _) => self.cwd_shown.clone(),
            (Stage::Mount | Stage::Chroot, _) => self.root_shown.clone(),
            (Stage::Setuid, Some(i)) => format!("uid {}", i.uid),
            (Stage::Setgid, Some(i)) => format!("gid {}", i.gid),
            (Stage::Setgroups, _) => "[]".to_string(),
            (Stage::Stdio, _) => "/dev/null and log pipes".to_string(),
            (Stage::Signals, _) => "mask and dispositions".to_string(),
            (Stage::Privileges, _) => "capabilities and no_new_privs".to_string(),
            (Stage::Fork, _) => "setpgid".to_string(),
            _ => self.command_shown.clone(),
        }
    }
}

/// The fds the child gets: its stdin (/dev/null) and the write ends of the log pipes.
#[derive(Debug)]
pub struct ChildStdio {
    /// /dev/null, opened read-only.
    pub stdin: OwnedFd,
    /// Write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// Write end of the stderr pipe.
    pub stderr: OwnedFd,
}

/// What fork returned, in the process that sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// fork(2) for the daemon's detach from its starter.
///
/// tend-spawn never starts a thread, so the child is a full copy of a
/// single-threaded process and may go on running Rust code.
pub fn fork_single_threaded() -> io::Result<Forked> {
    match raw::fork()? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid))),
    }
}

/// The task once it runs: its pid (in the daemon's pid namespace), a pidfd
/// of it, and the first process of its pid namespace, if it has one.
#[derive(Debug)]
pub struct Child {
    /// The task's pid as the daemon sees it.
    pub pid: Pid,
    /// A pidfd of the task: every signal to it goes through this.
    pub pidfd: OwnedFd,
    /// The init of the task's pid namespace.
    pub init: Option<NsInit>,
    /// The task held before its execve, until a Start.
    pub held: Option<Held>,
}

impl Child {
    /// SIGKILL the task and its namespace's init through their pidfds and
    /// reap them: a start that failed after the fork.
    pub fn kill(self) {
        let _ = crate::sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = crate::sys::wait_blocking(self.pid);
        if let Some(i) = self.init {
            i.kill();
        }
    }
}

/// A task held before its execve ([`TaskStart::OnRequest`]): every step of
/// its start is done but the execve, and it waits on its gate pipe for one
/// byte (EOF, the daemon gone, makes it leave).
#[derive(Debug)]
pub struct Held {
    /// The write end of the gate.
    gate: OwnedFd,
    /// The read end of the task's error pipe: EOF once it has exec'd, a
    /// record if its execve failed.
    errors: OwnedFd,
    /// The command, for a message.
    command: String,
}

impl Held {
    /// Let the task exec, and wait for its execve's outcome (a failed one
    /// leaves the task to `_exit(127)`, reaped as any end of the task).
    pub fn release(self) -> Result<(), StartFailure> {
        nix::unistd::write(&self.gate, &[1u8])
            .map_err(|e| StartFailure::new(Stage::Exec, "the held task's gate", e as i32))?;
        drop(self.gate);
        let (got, record) = read_record(&self.errors)
            .map_err(|e| StartFailure::new(Stage::Exec, "read error pipe", e as i32))?;
        if got < RECORD_LEN {
            // EOF: it has exec'd (or died meanwhile, which the reaper tells).
            return Ok(());
        }
        let (stage, errno, _) = parse_record(&record);
        Err(StartFailure::new(stage, &self.command, errno))
    }
}

/// The first process (pid 1) of a task's pid namespace: a fork of the
/// daemon that drops to the task's user, holds no fd, and only reaps what
/// is orphaned in the namespace (see `task::init_main`). The task itself is the
/// daemon's own child, forked into the namespace next: its pid, its wait
/// status and every signal to it are the daemon's, exactly as without one.
/// The init is in the task's cgroup where a kill of it reaches (see
/// `TaskCgroup::add_pid_to_kill`); its death takes every process of the
/// namespace with it.
#[derive(Debug)]
pub struct NsInit {
    /// Its pid as the daemon sees it.
    pub pid: Pid,
    /// A pidfd of it (SIGKILL to it kills the whole namespace).
    pub pidfd: OwnedFd,
    /// From its fork to its ready, once read (see [`NsInit::await_ready`]).
    pub ready_after: Duration,
    /// The daemon's end of the ready socketpair, until the answer is read.
    ready: Option<OwnedFd>,
    forked_at: Instant,
}

impl NsInit {
    /// SIGKILL through the pidfd and reap it: a start that failed.
    fn kill(self) {
        let _ = crate::sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = crate::sys::wait_blocking(self.pid);
    }

    /// The init's answer: ready (its parent-death signal armed), or the step
    /// of its drop that failed (it is reaped then), or its death. Read once
    /// the task has exec'd, by when a ready init has long answered; the
    /// daemon's end stays open until then, so a live daemon never makes its
    /// init's answer fail.
    fn await_ready(&mut self, prep: &Prepared) -> Result<(), StartFailure> {
        let Some(fd) = self.ready.take() else {
            return Ok(());
        };
        let waited_from = Instant::now();
        let record = read_record(&fd)
            .map_err(|e| StartFailure::new(Stage::Fork, "read init socket", e as i32))?;
        match record {
            (1, [INIT_READY, ..]) => {
                // The init waits for this before it reaps: it is armed, and
                // this daemon lives.
                if let Err(e) = nix::sys::socket::send(
                    fd.as_raw_fd(),
                    &[INIT_READY],
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                ) {
                    return Err(StartFailure::new(
                        Stage::Fork,
                        "answer the pid namespace init",
                        e as i32,
                    ));
                }
                self.ready_after = self.forked_at.elapsed();
                tracing::info!(
                    ready_us = u64::try_from(self.ready_after.as_micros()).unwrap_or(u64::MAX),
                    waited_us =
                        u64::try_from(waited_from.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "pid namespace init ready"
                );
                Ok(())
            }
            (RECORD_LEN, r) => {
                // It _exit(127)s after the record.
                let _ = crate::sys::wait_blocking(self.pid);
                let (stage, errno, which) = parse_record(&r);
                let what = format!("{} (pid namespace init)", prep.what(stage, which));
                Err(StartFailure::new(stage, &what, errno))
            }
            _ => Err(StartFailure::plain(
                Stage::Fork,
                "fork pid namespace init: it died during its start",
            )),
        }
    }
}

/// Start the task. `place` runs in the parent while the child waits on the sync
/// pipe (the cgroup step), and `place_init` for the namespace's init; an error
/// of either aborts the start. Returns the task once it has exec'd, or the
/// failure of the step that stopped it.
pub fn spawn(
    prep: &Prepared,
    stdio: ChildStdio,
    place: impl Fn(Pid) -> Result<(), StartFailure>,
    place_init: impl Fn(Pid) -> Result<(), StartFailure>,
) -> Result<Child, StartFailure> {
    let mut init = if prep.pid_ns {
        Some(start_ns_init(prep, &place_init)?)
    } else {
        None
    };
    match spawn_task(prep, stdio, &place, init.as_ref()) {
        Ok((pid, pidfd, held)) => {
            if let Some(i) = init.as_mut() {
                if let Err(f) = i.await_ready(prep) {
                    // The task dies with its namespace's init, if not already.
                    let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                    let _ = crate::sys::wait_blocking(pid);
                    if let Some(i) = init {
                        i.kill();
                    }
                    return Err(f);
                }
            }
            Ok(Child {
                pid,
                pidfd,
                init,
                held,
            })
        }
        Err(f) => {
            let Some(mut i) = init else {
                return Err(f);
            };
            // A task that could not start in the namespace of an init that
            // failed (the fork finds no init: ENOMEM): the init says why.
            let why = i.await_ready(prep).err();
            i.kill();
            Err(why.unwrap_or(f))
        }
    }
}

/// The daemon's own pid namespace, to go back to once the task is forked.
fn own_pid_ns() -> io::Result<OwnedFd> {
    nix::fcntl::open(
        "/proc/self/ns/pid",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Fork the init of a new pid namespace and place it; the daemon's next
/// child (the task) goes into that namespace, the one after it no longer.
/// Its answer is read later ([`NsInit::await_ready`]).
///
/// Ready means its parent-death signal is armed (after its drop to the
/// task's user, which clears it): it then writes one byte on its end of a
/// socketpair, which fails with EPIPE, and the init leaves, when the daemon
/// died before the signal was armed. A daemon killed before it placed the
/// init held the only other end (the task is not forked yet): the init is
/// gone then either way. Later, the task's child holds a copy of the
/// daemon's end until its exec (or its exit, which the daemon's death
/// brings): so the init also waits for the daemon's answer to its ready,
/// and leaves on EOF instead. A failed init writes its stage and errno.
fn start_ns_init(
    prep: &Prepared,
    place: &impl Fn(Pid) -> Result<(), StartFailure>,
) -> Result<NsInit, StartFailure> {
    let fail = |what: &str, e: &io::Error| StartFailure::io(Stage::Fork, what, e);
    let (ready_r, ready_w) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| StartFailure::new(Stage::Fork, "init socketpair", e as i32))?;
    crate::sys::unshare_pid_ns().map_err(|e| fail("pid namespace", &e))?;
    let forked_at = Instant::now();
    let pid = match raw::fork() {
        // The init: async-signal-safe steps only, never returns.
        Ok(0) => task::init_main(prep.isolation, ready_w.as_raw_fd()),
        Ok(pid) => Pid::from_raw(pid),
        Err(e) => {
            // No process of the new namespace exists: the next fork would fail.
            let _ = own_pid_ns().and_then(|ns| crate::sys::set_children_pid_ns(ns.as_fd()));
            return Err(fail("pid namespace init", &io::Error::from(e)));
        }
    };
    drop(ready_w);
    let pidfd = match crate::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Our unreaped child: its pid cannot have been reused.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = crate::sys::wait_blocking(pid);
            return Err(fail("pidfd of the pid namespace init", &e));
        }
    };
    let init = NsInit {
        pid,
        pidfd,
        ready_after: Duration::ZERO,
        ready: Some(ready_r),
        forked_at,
    };
    if let Err(f) = place(pid) {
        init.kill();
        return Err(f);
    }
    Ok(init)
}

/// Read from `fd` until EOF or a whole error record: how many bytes came.
///
/// A first byte that is [`INIT_READY`] or [`TASK_HELD`] (no stage has that
/// index) is the whole answer: returned at once, without waiting for the
/// writer to close.
fn read_record(fd: &OwnedFd) -> Result<(usize, [u8; RECORD_LEN]), Errno> {
    let mut record = [0u8; RECORD_LEN];
    let mut got = 0;
    while got < record.len() {
        match nix::unistd::read(fd, &mut record[got..]) {
            Ok(0) => break,
            Ok(n) if got == 0 && matches!(record[0], INIT_READY | TASK_HELD) => {
                return Ok((n.min(1), record))
            }
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((got, record))
}

/// Stage, errno and item of an error record.
fn parse_record(record: &[u8; RECORD_LEN]) -> (Stage, i32, u32) {
    let stage = Stage::from_index(record[0]).unwrap_or(Stage::Exec);
    let errno = i32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let which = u32::from_le_bytes([record[5], record[6], record[7], record[8]]);
    (stage, errno, which)
}

/// Fork and start the task itself; with `init`, into its pid namespace.
/// A held task comes back at its gate, with its [`Held`].
fn spawn_task(
    prep: &Prepared,
    stdio: ChildStdio,
    place: &impl Fn(Pid) -> Result<(), StartFailure>,
    init: Option<&NsInit>,
) -> Result<(Pid, OwnedFd, Option<Held>), StartFailure> {
    let fork_err = |what: &str, e: Errno| StartFailure::new(Stage::Fork, what, e as i32);
    let own_ns = match init {
        Some(_) => {
            Some(own_pid_ns().map_err(|e| StartFailure::io(Stage::Fork, "/proc/self/ns/pid", &e))?)
        }
        None => None,
    };
    let (sync_r, sync_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fork_err("sync pipe", e))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fork_err("error pipe", e))?;
    let gate = if prep.held {
        Some(nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fork_err("gate pipe", e))?)
    } else {
        None
    };
    let fds = ChildFds {
        gate_r: gate.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        gate_w: gate.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()),
        sync_r: sync_r.as_raw_fd(),
        sync_w: sync_w.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        err_r: err_r.as_raw_fd(),
        stdin: stdio.stdin.as_raw_fd(),
        stdout: stdio.stdout.as_raw_fd(),
        stderr: stdio.stderr.as_raw_fd(),
    };
    let forked = match raw::fork() {
        // The task: async-signal-safe steps on the data prepared above only,
        // until its exec or _exit.
        Ok(0) => task::child_main(prep, &fds),
        other => other,
    };
    // Back in the daemon's own pid namespace for every later child (the
    // setuid cleanup helper).
    let restored = own_ns
        .as_ref()
        .map_or(Ok(()), |ns| crate::sys::set_children_pid_ns(ns.as_fd()));
    let pid = match forked {
        Ok(pid) => Pid::from_raw(pid),
        Err(e) => return Err(StartFailure::new(Stage::Fork, "task", e as i32)),
    };
    // The child's ends are the child's now.
    drop(sync_r);
    drop(err_w);
    drop(stdio);
    let gate_w = gate.map(|(r, w)| {
        drop(r);
        w
    });
    let pidfd = match crate::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Our unreaped child: its pid cannot have been reused.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = crate::sys::wait_blocking(pid);
            return Err(StartFailure::io(Stage::Fork, "pidfd of the task", &e));
        }
    };
    let abort = |failure: StartFailure| {
        let _ = crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        let _ = crate::sys::wait_blocking(pid);
        Err(failure)
    };
    if let Err(e) = restored {
        return abort(StartFailure::io(
            Stage::Fork,
            "back to the daemon's pid namespace",
            &e,
        ));
    }
    if let Err(failure) = place(pid) {
        return abort(failure);
    }
    // Go. A child that died already makes this EPIPE (SIGPIPE is ignored): the
    // error pipe below tells the rest.
    let _ = nix::unistd::write(&sync_w, &[1u8]);
    drop(sync_w);

    let (got, record) = match read_record(&err_r) {
        Ok(r) => r,
        Err(e) => return abort(fork_err("read error pipe", e)),
    };
    if got == 0 {
        return Ok((pid, pidfd, None));
    }
    if let (1, Some(gate)) = (got, gate_w) {
        if record[0] == TASK_HELD {
            let held = Held {
                gate,
                errors: err_r,
                command: prep.command_shown.clone(),
            };
            return Ok((pid, pidfd, Some(held)));
        }
    }
    // The child failed and _exit(127)s: reap it so it never shows as the task.
    let _ = crate::sys::wait_blocking(pid);
    if got < record.len() {
        return Err(StartFailure::plain(
            Stage::Exec,
            format!(
                "exec {}: the child died during its start",
                prep.command_shown
            ),
        ));
    }
    let (stage, errno, which) = parse_record(&record);
    Err(StartFailure::new(stage, &prep.what(stage, which), errno))
}

/// Items of [`Stage::Fork`] in the task's namespaces step (0 is its setpgid).
const NS_UNSHARE: u32 = 1;
/// The host name set in the new uts namespace.
const NS_HOSTNAME: u32 = 2;
/// The loopback of the new network namespace.
const NS_LOOPBACK: u32 = 3;

/// What a ready init writes on its socket (a failed one writes an error
/// record, [`RECORD_LEN`] bytes).
const INIT_READY: u8 = b'r';

/// What a held task writes on its error pipe once it waits at its gate.
const TASK_HELD: u8 = b'h';

/// Raw fd numbers the child works with (no Rust ownership crosses the fork).
struct ChildFds {
    /// The read end of a held task's gate; -1 for a task that execs at once.
    gate_r: RawFd,
    /// The daemon's end of the gate, closed first thing in the child; -1 without one.
    gate_w: RawFd,
    sync_r: RawFd,
    /// The parent's end of the sync pipe, closed first thing in the child: a
    /// copy held by the child would keep it waiting forever for a parent that
    /// died before saying go.
    sync_w: RawFd,
    err_w: RawFd,
    /// The parent's end of the error pipe, closed in the child too.
    err_r: RawFd,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
}

/// Size of the error record: stage, errno (i32 LE), which item of the stage
/// failed (u32 LE; 1-based mount index, 0 when the stage has one item).
const RECORD_LEN: usize = 9;

#[cfg(test)]
mod tests;

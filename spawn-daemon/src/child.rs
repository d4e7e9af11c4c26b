//! Fork and exec: the daemon's own double fork and the task's start.
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
//! The child's steps, in the one order they run (STYLE.md rule 5):
//!
//! 1. `setpgid(0, 0)`: the task leads its own process group.
//! 2. wait on the sync pipe: the parent places the child in the task's cgroup
//!    meanwhile, then says go; then `oom_score_adj` back to what the daemon
//!    started with (never below 0).
//! 3. mount namespace, the planned mounts and chroot (isolation with a root) —
//!    see [`crate::chroot`]: the alloc-dir sources are opened beneath the alloc
//!    dir with openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, a tmpfs is mounted
//!    over the task dir and the mount points made in it, every target is opened
//!    beneath it the same way and mounted on through `/proc/self/fd/N` (binds
//!    then made read-only or nosuid,nodev all the way down with mount_setattr,
//!    the task's /proc mounted from inside its pid namespace and its kernel
//!    knobs covered), the tmpfs turns read-only, then `fchdir` + `chroot(".")`.
//! 4. `chdir(cwd)`.
//! 5. `setgroups([])` -> `setresgid` -> `setresuid` -> clear capabilities ->
//!    `PR_SET_NO_NEW_PRIVS` (isolation with a user).
//! 6. signal mask and every disposition back to default; the umask back to 022
//!    (the daemon's own 077 is for its files, not the task's).
//! 7. stdin from /dev/null, the log pipes on 1 and 2, every other fd marked
//!    close-on-exec.
//! 8. `execve(command, args, env)`.
#![allow(unsafe_code)]

use std::ffi::{c_char, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tend_proto::{SpawnConfig, Stage};

use crate::chroot::{PreparedRoot, SourceKind, MAX_ALLOC_SOURCES};
use crate::sys::{CapData, CapHeader, CAP_V3};

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
    /// What the task's oom_score_adj is set to ("0\n"): the daemon's own
    /// (-1000 where it could) is not the task's.
    oom_score_adj: CString,
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

fn cstring(field: &str, v: &str) -> Result<CString, StartFailure> {
    CString::new(v)
        .map_err(|_| StartFailure::plain(Stage::Config, format!("{field} holds a NUL byte")))
}

impl Prepared {
    /// Build the child's strings and arrays from a validated config. The
    /// task's oom_score_adj becomes `oom_score_adj`; with a root the task
    /// gets its own pid namespace, and `TMPDIR=/tmp` unless its env sets one.
    pub fn new(
        config: &SpawnConfig,
        isolation: Option<Isolation>,
        root: Option<PreparedRoot>,
        oom_score_adj: i32,
    ) -> Result<Prepared, StartFailure> {
        let command = cstring("command", &config.command)?;
        let mut argv = vec![command.clone()];
        for a in &config.args {
            argv.push(cstring("args", a)?);
        }
        let mut envp = Vec::with_capacity(config.env.len() + 1);
        for (k, v) in &config.env {
            envp.push(cstring("env", &format!("{k}={v}"))?);
        }
        if root.is_some() && !config.env.iter().any(|(k, _)| k == "TMPDIR") {
            // The private tmpfs of crate::chroot::plan.
            envp.push(c"TMPDIR=/tmp".to_owned());
        }
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|s| s.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|s| s.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Prepared {
            command,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd: cstring("cwd", &config.cwd)?,
            isolation,
            pid_ns: root.is_some(),
            root,
            oom_score_adj: cstring("oom_score_adj", &format!("{oom_score_adj}\n"))?,
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

/// fork(2) for the daemon's own double fork.
///
/// tend-spawn never starts a thread, so the child is a full copy of a
/// single-threaded process and may go on running Rust code.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: tend-spawn is single-threaded (no runtime, no threads are ever
    // spawned), so no lock can be held by another thread at the fork and the
    // child may keep running ordinary code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
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
}

/// The first process (pid 1) of a task's pid namespace: a fork of the
/// daemon that drops to the task's user, holds no fd, and only reaps what
/// is orphaned in the namespace (see [`init_main`]). The task itself is the
/// daemon's own child, forked into the namespace next: its pid, its wait
/// status and every signal to it are the daemon's, exactly as without one.
/// The init goes with the task's cgroup; its death takes every process of
/// the namespace with it.
#[derive(Debug)]
pub struct NsInit {
    /// Its pid as the daemon sees it.
    pub pid: Pid,
    /// A pidfd of it (SIGKILL to it kills the whole namespace).
    pub pidfd: OwnedFd,
}

impl NsInit {
    /// SIGKILL through the pidfd and reap it: a start that failed.
    fn kill(self) {
        let _ = crate::sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = crate::sys::wait_blocking(self.pid);
    }
}

/// Start the task. `place` runs in the parent while the child waits on the sync
/// pipe (the cgroup step, for the namespace's init too); its error aborts the
/// start. Returns the task once it has exec'd, or the failure of the step that
/// stopped it.
pub fn spawn(
    prep: &Prepared,
    stdio: ChildStdio,
    place: impl Fn(Pid) -> Result<(), StartFailure>,
) -> Result<Child, StartFailure> {
    let init = if prep.pid_ns {
        Some(start_ns_init(prep, &place)?)
    } else {
        None
    };
    match spawn_task(prep, stdio, &place, init.as_ref()) {
        Ok((pid, pidfd)) => Ok(Child { pid, pidfd, init }),
        Err(f) => {
            if let Some(i) = init {
                i.kill();
            }
            Err(f)
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
fn start_ns_init(
    prep: &Prepared,
    place: &impl Fn(Pid) -> Result<(), StartFailure>,
) -> Result<NsInit, StartFailure> {
    let fail = |what: &str, e: &io::Error| StartFailure::io(Stage::Fork, what, e);
    crate::sys::unshare_pid_ns().map_err(|e| fail("pid namespace", &e))?;
    // SAFETY: the daemon is single-threaded; the child runs only init_main,
    // which makes async-signal-safe calls and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        init_main(prep.isolation);
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        // No process of the new namespace exists: the next fork would fail.
        let _ = own_pid_ns().and_then(|ns| crate::sys::set_children_pid_ns(ns.as_fd()));
        return Err(fail("pid namespace init", &e));
    }
    let pid = Pid::from_raw(pid);
    let pidfd = match crate::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Our unreaped child: its pid cannot have been reused.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = crate::sys::wait_blocking(pid);
            return Err(fail("pidfd of the pid namespace init", &e));
        }
    };
    let init = NsInit { pid, pidfd };
    if let Err(f) = place(pid) {
        init.kill();
        return Err(f);
    }
    Ok(init)
}

/// Fork and start the task itself; with `init`, into its pid namespace.
fn spawn_task(
    prep: &Prepared,
    stdio: ChildStdio,
    place: &impl Fn(Pid) -> Result<(), StartFailure>,
    init: Option<&NsInit>,
) -> Result<(Pid, OwnedFd), StartFailure> {
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
    let fds = ChildFds {
        sync_r: sync_r.as_raw_fd(),
        sync_w: sync_w.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        err_r: err_r.as_raw_fd(),
        stdin: stdio.stdin.as_raw_fd(),
        stdout: stdio.stdout.as_raw_fd(),
        stderr: stdio.stderr.as_raw_fd(),
    };
    // SAFETY: the daemon is single-threaded; the child runs only child_main,
    // which makes async-signal-safe calls on data prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child_main(prep, &fds);
    }
    let fork_errno = io::Error::last_os_error();
    // Back in the daemon's own pid namespace for every later child (the
    // setuid cleanup helper).
    let restored = own_ns
        .as_ref()
        .map_or(Ok(()), |ns| crate::sys::set_children_pid_ns(ns.as_fd()));
    if pid < 0 {
        return Err(StartFailure::io(Stage::Fork, "task", &fork_errno));
    }
    let pid = Pid::from_raw(pid);
    // The child's ends are the child's now.
    drop(sync_r);
    drop(err_w);
    drop(stdio);
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

    let mut record = [0u8; RECORD_LEN];
    let mut got = 0;
    while got < record.len() {
        match nix::unistd::read(&err_r, &mut record[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return abort(fork_err("read error pipe", e)),
        }
    }
    if got == 0 {
        return Ok((pid, pidfd));
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
    let stage = Stage::from_index(record[0]).unwrap_or(Stage::Exec);
    let errno = i32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let which = u32::from_le_bytes([record[5], record[6], record[7], record[8]]);
    Err(StartFailure::new(stage, &prep.what(stage, which), errno))
}

/// The init of a task's pid namespace, between its fork and its death: it
/// holds no fd (the log pipes among them: the logs must end with the task),
/// drops to the task's user, blocks every signal and takes them one by one,
/// reaping on each SIGCHLD. Pid 1 of a namespace ignores what it does not
/// handle, and SIGKILL from inside: the task cannot kill it; the daemon does
/// (its pidfd, or the cgroup) once the task has ended.
fn init_main(isolation: Option<Isolation>) -> ! {
    // SAFETY: async-signal-safe system calls on stack data only, in a fork of
    // the single-threaded daemon; nothing allocates and nothing returns.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            0 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        libc::prctl(libc::PR_SET_NAME, c"tend-init".as_ptr(), 0, 0, 0);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        if let Some(iso) = isolation {
            if drop_privileges(iso).is_err() {
                libc::_exit(127);
            }
        }
        // A daemon killed before it placed this init in the task's cgroup
        // takes it along: no cgroup kill would reach it. After the drop: a
        // credential change clears the parent-death signal.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        loop {
            let sig = libc::sigwaitinfo(&all, std::ptr::null_mut());
            if sig == libc::SIGCHLD {
                while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            }
        }
    }
}

/// setgroups([]) -> setresgid -> setresuid -> every capability set emptied
/// -> no_new_privs; the stage of the step that failed (errno set).
///
/// # Safety
///
/// Async-signal-safe: only system calls on stack data; call it between fork
/// and exec only.
unsafe fn drop_privileges(iso: Isolation) -> Result<(), Stage> {
    // SAFETY: system calls with integer arguments and stack data that lives
    // for each call.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(Stage::Setgroups);
        }
        if libc::setresgid(iso.gid, iso.gid, iso.gid) != 0 {
            return Err(Stage::Setgid);
        }
        if libc::setresuid(iso.uid, iso.uid, iso.uid) != 0 {
            return Err(Stage::Setuid);
        }
        // Every capability set goes: setresuid to non-root emptied permitted
        // and effective (no keepcaps), not inheritable; ambient goes too.
        let mut header = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(Stage::Privileges);
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
            && Errno::last_raw() != libc::EINVAL
        {
            return Err(Stage::Privileges);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(Stage::Privileges);
        }
    }
    Ok(())
}

#[cfg(test)]
mod fd_path_tests {
    use super::*;

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; FD_PATH_LEN];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = fd_path(&mut buf, fd);
            // SAFETY: fd_path wrote a NUL-terminated string into buf.
            let got = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(got.to_str().unwrap(), want);
        }
    }
}

/// Raw fd numbers the child works with (no Rust ownership crosses the fork).
struct ChildFds {
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

/// Report `stage` and the current errno on the error pipe, then `_exit(127)`.
fn child_fail(err_w: RawFd, stage: Stage) -> ! {
    child_fail_at(err_w, stage, 0)
}

/// Report `stage`, item `which` of it and the current errno, then `_exit(127)`.
fn child_fail_at(err_w: RawFd, stage: Stage, which: u32) -> ! {
    let errno = Errno::last_raw();
    let e = errno.to_le_bytes();
    let w = which.to_le_bytes();
    let record: [u8; RECORD_LEN] = [stage as u8, e[0], e[1], e[2], e[3], w[0], w[1], w[2], w[3]];
    // SAFETY: write and _exit are async-signal-safe; record lives on our stack.
    unsafe {
        libc::write(err_w, record.as_ptr().cast(), record.len());
        libc::_exit(127)
    }
}

/// Room for "/proc/self/fd/<int>" and its NUL.
const FD_PATH_LEN: usize = 32;

/// Write "/proc/self/fd/<fd>" with its NUL into `buf`, without allocating.
fn fd_path(buf: &mut [u8; FD_PATH_LEN], fd: libc::c_int) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(fd).unwrap_or(0);
    let mut len = 0;
    loop {
        digits[len] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

/// openat2(dir, path, O_PATH | O_CLOEXEC | flags, RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS): an fd or -1 (errno set). One raw system call on a
/// stack struct, so async-signal-safe. A symlink anywhere, the last component
/// too, fails (ELOOP), as does a way out of `dir` (EXDEV).
///
/// # Safety
///
/// `path` points to a NUL-terminated string that outlives the call.
unsafe fn open_beneath(dir: libc::c_int, path: *const c_char, flags: libc::c_int) -> libc::c_int {
    // SAFETY: open_how is a plain C struct for which all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from((libc::O_PATH | libc::O_CLOEXEC | flags).unsigned_abs());
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: path is valid per the caller; how lives on our stack for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path,
            std::ptr::addr_of!(how),
            std::mem::size_of::<libc::open_how>(),
        )
    };
    libc::c_int::try_from(ret).unwrap_or(-1)
}

/// `struct mount_attr` of mount_setattr(2) (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The `MS_*` flags a mount has, from its statvfs `f_flag` (`ST_*`): a remount
/// that did not repeat them would clear them (and where the kernel locked
/// them, fail). (glibc fills `f_flag` from fstatfs alone on every kernel
/// since 2.6.36, without reading /proc/mounts.)
fn kept_mount_flags(st: &libc::statvfs) -> libc::c_ulong {
    let f = st.f_flag;
    let same = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_SYNCHRONOUS
        | libc::MS_MANDLOCK
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME;
    let relatime = if f & libc::ST_RELATIME != 0 {
        libc::MS_RELATIME
    } else {
        0
    };
    (f & same) | relatime
}

/// The child between fork and exec. Async-signal-safe calls only; no allocation.
fn child_main(prep: &Prepared, fds: &ChildFds) -> ! {
    let err_w = fds.err_w;
    // SAFETY: every call below is an async-signal-safe system call on fds and C
    // strings prepared before the fork; pointers point into `prep`, which the fork
    // copied and which stays alive until execve or _exit. Nothing allocates.
    unsafe {
        // 0. Only the parent holds the parent's ends: if it dies before its
        // go, the sync pipe reads EOF and the child leaves.
        libc::close(fds.sync_w);
        libc::close(fds.err_r);
        // 1. Own process group.
        if libc::setpgid(0, 0) != 0 {
            child_fail(err_w, Stage::Fork);
        }
        // 2. Wait for the parent's go (it places us in the task's cgroup meanwhile).
        let mut go = [0u8; 1];
        loop {
            let n = libc::read(fds.sync_r, go.as_mut_ptr().cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && Errno::last_raw() == libc::EINTR {
                continue;
            }
            // The parent gave up on us: leave without a word.
            libc::_exit(127);
        }
        libc::close(fds.sync_r);

        // 2b. The daemon's oom_score_adj (-1000 where it could) is not the
        // task's: back to what the daemon had at its start, never below 0
        // (raw_exec too). /proc/self of a non-dumpable process is root's,
        // so in setuid mode this needs root's fsuid for a moment; raising the
        // value needs no privilege. Best effort where /proc is not there.
        {
            let old_fsuid = libc::setfsuid(0);
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let value = prep.oom_score_adj.as_bytes();
                let n = libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
                if n < 0 {
                    child_fail(err_w, Stage::Privileges);
                }
            }
            // setfsuid returns the old fsuid as an int; it is a uid_t.
            libc::setfsuid(old_fsuid.cast_unsigned());
        }

        // 3. A private mount namespace, the planned mounts, the chroot.
        if let Some(root) = &prep.root {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                child_fail(err_w, Stage::Mount);
            }
            // Nothing mounted here leaks back to the host.
            let slash = c"/".as_ptr();
            let null = std::ptr::null::<c_char>();
            if libc::mount(
                null,
                slash,
                null,
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                child_fail(err_w, Stage::Mount);
            }
            // Opened now, in the new namespace: mount(2) refuses mount points
            // of another namespace. The alloc dir is the agent's own path;
            // everything beneath it is opened without following a symlink.
            let alloc_fd = libc::open(
                root.alloc_dir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if alloc_fd < 0 {
                child_fail(err_w, Stage::Mount);
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(alloc_fd, &mut st) != 0 {
                child_fail(err_w, Stage::Mount);
            }
            if (st.st_dev, st.st_ino) != root.alloc_id {
                // Not the dir the daemon checked: swapped under us.
                *libc::__errno_location() = libc::EXDEV;
                child_fail(err_w, Stage::Mount);
            }
            // The sources in the alloc dir, opened before the tmpfs covers the
            // task dir (`<task>/local` is beneath it).
            let mut alloc_sources = [-1 as libc::c_int; MAX_ALLOC_SOURCES];
            let mut n_sources = 0;
            for (i, op) in root.ops.iter().enumerate() {
                if op.kind != SourceKind::InAlloc {
                    continue;
                }
                let which = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let fd = open_beneath(alloc_fd, op.source.as_ptr(), libc::O_DIRECTORY);
                if fd < 0 || n_sources == MAX_ALLOC_SOURCES {
                    child_fail_at(err_w, Stage::Mount, which);
                }
                alloc_sources[n_sources] = fd;
                n_sources += 1;
            }
            // The root: a tmpfs over the task dir, seen only in this namespace.
            let disk_root = open_beneath(alloc_fd, root.root.as_ptr(), libc::O_DIRECTORY);
            if disk_root < 0 {
                child_fail(err_w, Stage::Mount);
            }
            let mut target_buf = [0u8; FD_PATH_LEN];
            if libc::mount(
                c"tend-root".as_ptr(),
                fd_path(&mut target_buf, disk_root),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                root.tmpfs_options.as_ptr().cast(),
            ) != 0
            {
                child_fail(err_w, Stage::Mount);
            }
            let mut disk_st: libc::stat = std::mem::zeroed();
            if libc::fstat(disk_root, &mut disk_st) != 0 {
                child_fail(err_w, Stage::Mount);
            }
            libc::close(disk_root);
            let root_fd = open_beneath(alloc_fd, root.root.as_ptr(), libc::O_DIRECTORY);
            let mut root_st: libc::stat = std::mem::zeroed();
            if root_fd < 0 || libc::fstat(root_fd, &mut root_st) != 0 {
                child_fail(err_w, Stage::Mount);
            }
            if root_st.st_dev == disk_st.st_dev {
                // Not the tmpfs just mounted: never make mount points on disk.
                *libc::__errno_location() = libc::EXDEV;
                child_fail(err_w, Stage::Mount);
            }
            // The mount points, parents first, in a tmpfs nobody else has seen:
            // no symlink can be there. 0755 dirs and 0644 files for the task's user.
            libc::umask(0o022);
            for mp in &root.creates {
                if mp.file {
                    let fd = libc::openat(
                        root_fd,
                        mp.path.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_WRONLY
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        child_fail(err_w, Stage::Mount);
                    }
                    libc::close(fd);
                } else if libc::mkdirat(root_fd, mp.path.as_ptr(), 0o755) != 0 {
                    child_fail(err_w, Stage::Mount);
                }
            }
            let mut source_buf = [0u8; FD_PATH_LEN];
            let mut next_source = 0;
            for (i, op) in root.ops.iter().enumerate() {
                let which = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let target_fd = open_beneath(root_fd, op.target.as_ptr(), 0);
                if target_fd < 0 {
                    if op.existing && Errno::last_raw() == libc::ENOENT {
                        // A kernel knob this kernel has not: nothing to hide.
                        continue;
                    }
                    child_fail_at(err_w, Stage::Mount, which);
                }
                let mounted = if op.kind == SourceKind::Existing {
                    target_fd
                } else {
                    let mut source_fd = -1;
                    let source = match op.kind {
                        SourceKind::InAlloc => {
                            source_fd = alloc_sources[next_source];
                            next_source += 1;
                            fd_path(&mut source_buf, source_fd)
                        }
                        SourceKind::Itself => fd_path(&mut source_buf, target_fd),
                        _ => op.source.as_ptr(),
                    };
                    let fstype = op.fstype.as_ref().map_or(null, |f| f.as_ptr());
                    let target = fd_path(&mut target_buf, target_fd);
                    let data = op.data.as_ref().map_or(null, |d| d.as_ptr());
                    let mut r = libc::mount(source, target, fstype, op.flags, data.cast());
                    if r != 0 && op.data_optional && Errno::last_raw() == libc::EINVAL {
                        r = libc::mount(source, target, fstype, op.flags, std::ptr::null());
                    }
                    if r != 0 {
                        child_fail_at(err_w, Stage::Mount, which);
                    }
                    libc::close(target_fd);
                    if source_fd >= 0 {
                        libc::close(source_fd);
                    }
                    if op.attrs == 0 && op.remount.is_none() {
                        continue;
                    }
                    // Opened again, the target is now the root of the new mount.
                    let mounted = open_beneath(root_fd, op.target.as_ptr(), 0);
                    if mounted < 0 {
                        child_fail_at(err_w, Stage::Mount, which);
                    }
                    mounted
                };
                if op.attrs != 0 {
                    // On the mount and every mount beneath it, at once.
                    let mut attr: MountAttr = std::mem::zeroed();
                    attr.attr_set = op.attrs;
                    if libc::syscall(
                        libc::SYS_mount_setattr,
                        mounted,
                        c"".as_ptr(),
                        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                        std::ptr::addr_of!(attr),
                        std::mem::size_of::<MountAttr>(),
                    ) != 0
                    {
                        child_fail_at(err_w, Stage::Mount, which);
                    }
                }
                if let Some(flags) = op.remount {
                    // A remount sets every flag: those the mount has stay.
                    let mut st: libc::statvfs = std::mem::zeroed();
                    if libc::fstatvfs(mounted, &mut st) != 0
                        || libc::mount(
                            null,
                            fd_path(&mut target_buf, mounted),
                            null,
                            flags | kept_mount_flags(&st),
                            std::ptr::null(),
                        ) != 0
                    {
                        child_fail_at(err_w, Stage::Mount, which);
                    }
                }
                libc::close(mounted);
            }
            // The tmpfs read-only: the task writes only to /local and /alloc.
            if libc::mount(
                null,
                fd_path(&mut target_buf, root_fd),
                null,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                child_fail(err_w, Stage::Mount);
            }
            if libc::fchdir(root_fd) != 0
                || libc::chroot(c".".as_ptr()) != 0
                || libc::chdir(slash) != 0
            {
                child_fail(err_w, Stage::Chroot);
            }
            libc::close(root_fd);
            libc::close(alloc_fd);
        }

        // 4. Working dir.
        if libc::chdir(prep.cwd.as_ptr()) != 0 {
            child_fail(err_w, Stage::Chdir);
        }

        // 5. Drop to the task's user: groups, then gid, then uid, then the rest.
        if let Some(iso) = prep.isolation {
            if let Err(stage) = drop_privileges(iso) {
                child_fail(err_w, stage);
            }
        }

        // 6. Signals as a fresh process has them.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            child_fail(err_w, Stage::Signals);
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // EINVAL for the signals libc keeps for itself: nothing to reset.
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // The task's files in /alloc are for the other tasks too.
        libc::umask(0o022);

        // 7. stdio: /dev/null and the log pipes; every other fd closes at exec.
        if libc::dup2(fds.stdin, 0) < 0
            || libc::dup2(fds.stdout, 1) < 0
            || libc::dup2(fds.stderr, 2) < 0
        {
            child_fail(err_w, Stage::Stdio);
        }
        // CLOEXEC rather than close: the error pipe must live until execve.
        let r = libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if r != 0 {
            // Older kernels: mark them one by one.
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(65_536)
            } else {
                1024
            };
            let mut fd: libc::c_int = 3;
            while libc::rlim_t::try_from(fd).unwrap_or(0) < max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                fd += 1;
            }
        }

        // 8. Become the task.
        libc::execve(
            prep.command.as_ptr(),
            prep.argv_ptrs.as_ptr(),
            prep.envp_ptrs.as_ptr(),
        );
        child_fail(err_w, Stage::Exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_stage_value_and_error() {
        assert_eq!(
            failure_message(Stage::Exec, "/nonexistent", libc::ENOENT),
            "exec /nonexistent: No such file or directory"
        );
        assert_eq!(
            failure_message(Stage::Chdir, "/nope", libc::ENOTDIR),
            "chdir /nope: Not a directory"
        );
        assert_eq!(
            failure_message(Stage::Setuid, "uid 5", 0),
            "setuid uid 5: failed"
        );
    }

    #[test]
    fn what_names_the_value_of_the_stage() {
        let mut c = tend_proto::config::example("/tmp/a", "/tmp/s");
        c.command = "/bin/x".into();
        c.cwd = "/w".into();
        let p = Prepared::new(
            &c,
            Some(Isolation {
                uid: 65534,
                gid: 65533,
            }),
            None,
            0,
        )
        .unwrap();
        assert_eq!(p.what(Stage::Exec, 0), "/bin/x");
        assert_eq!(p.what(Stage::Chdir, 0), "/w");
        assert_eq!(p.what(Stage::Setuid, 0), "uid 65534");
        assert_eq!(p.what(Stage::Setgid, 0), "gid 65533");
        assert_eq!(p.what(Stage::Mount, 0), "/tmp/a/t");
        assert_eq!(p.what(Stage::Mount, 3), "/tmp/a/t");
        assert!(!format!("{p:?}").contains("PATH"));
    }
}

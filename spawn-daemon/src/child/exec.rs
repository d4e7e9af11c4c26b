//! `tend exec`: a command run in a running task's isolation, on the caller's
//! own stdin, stdout and stderr (passed to the daemon as SCM_RIGHTS).
//!
//! The daemon forks a shim, which is placed in the task's cgroup by the
//! daemon (it waits for the go on a pipe meanwhile), then takes the task's
//! isolation in the one order of STYLE.md rule 5: the task's uts, ipc,
//! network and cgroup namespaces when it has them, its pid and mount
//! namespaces (setns on fds the daemon opened from /proc/<task>/ns), its
//! root (/proc/<task>/root, opened before the setns), its working dir, the
//! caller's stdio on 0, 1 and 2 and nothing else, the drop to the task's
//! user (no groups, no capabilities, no_new_privs), fresh signals. It then
//! forks the command, which is the first of its processes inside the task's
//! pid namespace (a setns of a pid namespace counts for children only), and
//! waits for it: the shim's exit code is the command's, 128+N for a death by
//! signal N, and the daemon reaps the shim. The command dies with the shim
//! (its parent-death signal), which the daemon kills when the connection
//! that asked for it closes: a caller that goes away (Ctrl-C on `tend
//! exec`) leaves nothing running. A step that fails says so on the
//! caller's stderr ("tend exec: chdir: No such file or directory") and exits
//! 126, or 127 when the command is not found, as `docker exec` does.

use std::convert::Infallible;
use std::ffi::{c_char, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::Pid;
use tend_proto::SpawnConfig;

use super::{null_terminated, own_namespaces, raw, task, task_envp, Isolation, OwnNamespace};

/// The PATH a command is looked up in when the task's env has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The task's namespaces and root, opened by the daemon from /proc/<task>.
#[derive(Debug)]
pub struct TaskNamespaces {
    /// The uts, ipc, network and cgroup namespaces the task has of its own
    /// ([`own_namespaces`]), each with its flag, in the order they are joined.
    own: Vec<(OwnedFd, OwnNamespace)>,
    /// The pid and mount namespaces and the root of a task with a root of its own.
    rooted: Option<RootedNamespaces>,
}

/// A task's pid and mount namespaces and its root.
#[derive(Debug)]
struct RootedNamespaces {
    /// /proc/<task>/ns/pid.
    pid: OwnedFd,
    /// /proc/<task>/ns/mnt.
    mnt: OwnedFd,
    /// /proc/<task>/root, as a directory.
    root: OwnedFd,
}

/// The most namespaces [`own_namespaces`] gives.
const MAX_OWN: usize = 4;

/// [`TaskNamespaces`] as the shim takes them: raw fds only, nothing to free.
#[derive(Debug, Clone, Copy)]
struct RawNamespaces {
    /// (fd, CLONE_NEW* flag, the step's name); the first `own_len` are set.
    own: [(RawFd, libc::c_int, &'static str); MAX_OWN],
    own_len: usize,
    /// pid, mnt and root.
    rooted: Option<[RawFd; 3]>,
}

/// The name of the shim's step that joins `ns`.
fn setns_step(ns: OwnNamespace) -> &'static str {
    match ns.flag {
        libc::CLONE_NEWUTS => "setns uts",
        libc::CLONE_NEWIPC => "setns ipc",
        libc::CLONE_NEWNET => "setns net",
        libc::CLONE_NEWCGROUP => "setns cgroup",
        _ => "setns",
    }
}

impl TaskNamespaces {
    /// Open (close-on-exec) the namespaces of the task with pid `task` that
    /// `config` gave it: its uts, ipc, network and cgroup ones, and with a
    /// root of its own (`rooted`) its pid and mount namespaces and its root.
    /// None when it has none of them.
    pub fn open(
        task: Pid,
        config: &SpawnConfig,
        rooted: bool,
    ) -> io::Result<Option<TaskNamespaces>> {
        let open = |rel: &str, flags: OFlag| {
            let path = format!("/proc/{task}/{rel}");
            nix::fcntl::open(
                path.as_str(),
                flags | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("open {path}: {e}")))
        };
        let own = own_namespaces(config)
            .map(|ns| Ok((open(&format!("ns/{}", ns.proc_file), OFlag::O_RDONLY)?, ns)))
            .collect::<io::Result<Vec<_>>>()?;
        let rooted = if rooted {
            Some(RootedNamespaces {
                pid: open("ns/pid", OFlag::O_RDONLY)?,
                mnt: open("ns/mnt", OFlag::O_RDONLY)?,
                root: open("root", OFlag::O_RDONLY | OFlag::O_DIRECTORY)?,
            })
        } else {
            None
        };
        if own.is_empty() && rooted.is_none() {
            return Ok(None);
        }
        // A task that made a user namespace of its own can make every other
        // kind inside it, and the shim would join those as root. A task in
        // a root of its own cannot make one (the kernel refuses
        // CLONE_NEWUSER under a chroot); this guards the rest. Checked
        // after the others are open: a process never returns to a parent
        // user namespace, and without capabilities it makes no namespace
        // in the host's, so what was opened is what tend-spawn made.
        let user = nix::sys::stat::fstat(&open("ns/user", OFlag::O_RDONLY)?)?;
        let ours = nix::sys::stat::stat("/proc/self/ns/user")?;
        if (user.st_dev, user.st_ino) != (ours.st_dev, ours.st_ino) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the task's main process is in a user namespace of its own: tend exec joins only the namespaces tend-spawn made",
            ));
        }
        Ok(Some(TaskNamespaces { own, rooted }))
    }

    fn raw(&self) -> RawNamespaces {
        let mut own = [(-1, 0, ""); MAX_OWN];
        for (slot, (fd, ns)) in own.iter_mut().zip(&self.own) {
            *slot = (fd.as_raw_fd(), ns.flag, setns_step(*ns));
        }
        RawNamespaces {
            own,
            own_len: self.own.len().min(MAX_OWN),
            rooted: self
                .rooted
                .as_ref()
                .map(|r| [r.pid.as_raw_fd(), r.mnt.as_raw_fd(), r.root.as_raw_fd()]),
        }
    }
}

/// Everything the shim and the command need, built before the fork.
pub struct ExecPrepared {
    /// The paths to try in turn (the PATH lookup, done before the fork).
    candidates: Vec<CString>,
    argv0: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    cwd: CString,
    isolation: Option<Isolation>,
    /// Whether stdin is a terminal to make the command's controlling one.
    tty: bool,
}

impl std::fmt::Debug for ExecPrepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments and env may hold secrets: never in a log line.
        f.debug_struct("ExecPrepared")
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

fn cstring(field: &str, v: &str) -> Result<CString, String> {
    CString::new(v).map_err(|_| format!("exec: {field} holds a NUL byte"))
}

impl ExecPrepared {
    /// The command `argv` with the task's env (as the task has it, see
    /// `task_envp`) and cwd from `config`.
    pub fn new(
        config: &SpawnConfig,
        argv: &[String],
        isolation: Option<Isolation>,
        chrooted: bool,
        tty: bool,
    ) -> Result<ExecPrepared, String> {
        let Some(first) = argv.first().filter(|a| !a.is_empty()) else {
            return Err("exec: no command given".into());
        };
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstring("argv", a))
            .collect::<Result<_, _>>()?;
        let envp = task_envp(config, chrooted)
            .map_err(|field| format!("exec: {field} holds a NUL byte"))?;
        let candidates = if first.contains('/') {
            vec![cstring("argv", first)?]
        } else {
            let path = config
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring("PATH", &format!("{}/{first}", d.trim_end_matches('/'))))
                .collect::<Result<_, _>>()?
        };
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        Ok(ExecPrepared {
            candidates,
            argv0: argv[0].clone(),
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd: cstring("cwd", &config.cwd)?,
            isolation,
            tty,
        })
    }
}

/// The shim once forked: its pid, and the pipe end whose byte (or close)
/// lets it go on once the daemon has placed it in the task's cgroup.
#[derive(Debug)]
pub struct ExecShim {
    /// The shim's pid; the daemon reaps it and reports its exit code.
    pub pid: Pid,
    /// Write a byte (or close) to let it go on.
    pub go: OwnedFd,
}

/// Fork the shim of one exec on `stdio` (stdin, stdout, stderr), in the
/// task's namespaces `ns` when it has them.
pub fn fork_exec(
    prep: &ExecPrepared,
    stdio: &[OwnedFd; 3],
    ns: Option<&TaskNamespaces>,
) -> io::Result<ExecShim> {
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let raw_stdio = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
    ];
    let raw_ns = ns.map(TaskNamespaces::raw);
    match raw::fork()? {
        0 => shim_main(prep, raw_stdio, raw_ns, go_r.as_raw_fd()),
        pid => Ok(ExecShim {
            pid: Pid::from_raw(pid),
            go: go_w,
        }),
    }
}

/// A step of the shim that failed: its name and errno.
type Step = (&'static str, Errno);

fn at<T>(r: raw::Sys<T>, step: &'static str) -> Result<T, Step> {
    r.map_err(|e| (step, e))
}

fn shim_main(prep: &ExecPrepared, stdio: [RawFd; 3], ns: Option<RawNamespaces>, go: RawFd) -> ! {
    let (step, errno) = match shim_steps(prep, stdio, ns, go) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // The caller's stderr is on 2 from the first step on.
    say_failed(2, step, errno);
    raw::exit_now(126)
}

fn shim_steps(
    prep: &ExecPrepared,
    stdio: [RawFd; 3],
    ns: Option<RawNamespaces>,
    go: RawFd,
) -> Result<Infallible, Step> {
    // The daemon places the shim in the task's cgroup meanwhile; a closed
    // pipe (the daemon gave up) is no go.
    if !at(raw::read_byte(go), "wait for the cgroup")? {
        return Err(("wait for the cgroup", Errno::ECANCELED));
    }
    for (i, fd) in (0..).zip(stdio) {
        at(raw::dup2(fd, i), "stdio")?;
    }
    // In the task's cgroup by now (the go above), so within its cgroup
    // namespace's root; the mount namespace last, the root right after it.
    if let Some(ns) = ns {
        for &(fd, flag, step) in &ns.own[..ns.own_len] {
            at(raw::setns(fd, flag), step)?;
        }
        if let Some([pid_ns, mnt_ns, root]) = ns.rooted {
            at(raw::setns(pid_ns, libc::CLONE_NEWPID), "setns pid")?;
            at(raw::setns(mnt_ns, libc::CLONE_NEWNS), "setns mnt")?;
            at(raw::chroot_to(root), "chroot")?;
        }
    }
    // Nothing of the daemon's reaches the task's world: only 0, 1 and 2.
    raw::close_from(3);
    at(raw::chdir(&prep.cwd), "chdir")?;
    if let Some(iso) = prep.isolation {
        task::drop_privileges(iso).map_err(|f| ("drop to the task's user", f.errno))?;
    }
    at(raw::reset_signals(), "signals")?;
    let pid = at(raw::fork(), "fork")?;
    if pid == 0 {
        command_main(prep);
    }
    // The command holds the caller's stdio; the shim lets go of it so a
    // reader sees EOF when the command ends, whatever the shim does.
    for fd in 0..3 {
        raw::close(fd);
    }
    raw::exit_now(raw::wait_exit_code(pid))
}

/// The command: execve each candidate path in turn, as execvp does. It dies
/// with the shim, which the daemon kills when the caller goes away.
fn command_main(prep: &ExecPrepared) -> ! {
    if let Err(e) = raw::set_parent_death_signal() {
        say_failed(2, "parent death signal", e);
        raw::exit_now(126);
    }
    // With a terminal (the caller's pty, `tend exec -t`): a session of its
    // own with it as the controlling terminal, so ^C and job control work.
    if prep.tty {
        if let Err(e) = raw::setsid().and_then(|()| raw::set_controlling_tty(0)) {
            say_failed(2, "controlling terminal", e);
            raw::exit_now(126);
        }
    }
    let mut worst = Errno::ENOENT;
    for c in &prep.candidates {
        let e = raw::execve(c, prep.argv_ptrs.as_ptr(), prep.envp_ptrs.as_ptr());
        if e != Errno::ENOENT && e != Errno::ENOTDIR {
            worst = e;
        }
    }
    let _ = raw::write(2, b"tend exec: exec ");
    let _ = raw::write(2, prep.argv0.as_bytes());
    let _ = raw::write(2, b": ");
    let _ = raw::write(2, worst.desc().as_bytes());
    let _ = raw::write(2, b"\n");
    raw::exit_now(if worst == Errno::ENOENT { 127 } else { 126 })
}

fn say_failed(fd: RawFd, step: &str, errno: Errno) {
    let _ = raw::write(fd, b"tend exec: ");
    let _ = raw::write(fd, step.as_bytes());
    let _ = raw::write(fd, b": ");
    let _ = raw::write(fd, errno.desc().as_bytes());
    let _ = raw::write(fd, b"\n");
}

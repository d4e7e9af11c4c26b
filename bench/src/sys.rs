//! The harness's only unsafe code: the posix_spawn floor, the bare
//! fork -> cgroup -> mount namespace -> chroot -> setuid -> exec baseline,
//! and the inotify watch on a peer supervisor's status.
//! Everything the child needs is prepared before the fork; between fork and exec
//! the child makes raw system calls only (async-signal-safe, no allocation).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// A NULL-terminated argv whose strings live as long as it does.
#[derive(Debug)]
pub struct Argv {
    strings: Vec<CString>,
    ptrs: Vec<*mut libc::c_char>,
}

impl Argv {
    /// Build from `args` (args\[0\] is the program path).
    pub fn new(args: &[&str]) -> io::Result<Argv> {
        let strings = args
            .iter()
            .map(|a| CString::new(*a).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut ptrs: Vec<*mut libc::c_char> =
            strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
        ptrs.push(ptr::null_mut());
        Ok(Argv { strings, ptrs })
    }

    fn path(&self) -> *const libc::c_char {
        self.strings[0].as_ptr()
    }
}

fn wait_status(pid: libc::pid_t) -> io::Result<WaitStatus> {
    waitpid(Pid::from_raw(pid), None).map_err(io::Error::from)
}

/// posix_spawn `argv` with an empty environment and wait for it.
pub fn posix_spawn_wait(argv: &Argv) -> io::Result<WaitStatus> {
    let mut pid: libc::pid_t = 0;
    let envp: [*mut libc::c_char; 1] = [ptr::null_mut()];
    // SAFETY: path, argv and envp are valid NUL-terminated strings in
    // NULL-terminated arrays that outlive the call; NULL file actions and
    // attributes are allowed by POSIX.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            argv.path(),
            ptr::null(),
            ptr::null(),
            argv.ptrs.as_ptr(),
            envp.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    wait_status(pid)
}

/// Everything the bare child does, prepared before the fork.
#[derive(Debug)]
pub struct BarePlan {
    /// `cgroup.procs` of the task's cgroup in each hierarchy, open for writing.
    pub cgroup_procs: Vec<OwnedFd>,
    /// (host source, target under `root`) bound read-only, nosuid, nodev.
    pub binds: Vec<(CString, CString)>,
    /// The new root.
    pub root: CString,
    /// User and group to become.
    pub uid: libc::uid_t,
    /// Group to become.
    pub gid: libc::gid_t,
    /// The program.
    pub argv: Argv,
    /// A pid namespace with its own /proc (and masks), as tend-spawn's
    /// exec tasks have: None for the plain sequence.
    pub proc_: Option<ProcPlan>,
}

/// The /proc of a bare child in its own pid namespace: mounted with
/// hidepid=2 at `target` by the namespace's first process, then (if any)
/// files covered with /dev/null and dirs with an empty read-only tmpfs, as
/// tend-spawn does for a task that is not root (missing ones skipped).
#[derive(Debug)]
pub struct ProcPlan {
    /// `<root>/proc`.
    pub target: CString,
    /// `<root>/proc/<file>` covered with /dev/null.
    pub masked_files: Vec<CString>,
    /// `<root>/proc/<dir>` covered with an empty tmpfs.
    pub masked_dirs: Vec<CString>,
}

/// Exit codes of the bare child when a step fails (the step's number).
pub const BARE_STEPS: [&str; 12] = [
    "ok",
    "cgroup join",
    "unshare(CLONE_NEWNS)",
    "make / private",
    "bind",
    "remount read-only",
    "chroot",
    "setgroups/setresgid/setresuid",
    "no_new_privs/sigmask",
    "execve",
    "fork in the pid namespace",
    "mount /proc or its masks",
];

/// fork; the child joins the cgroups, binds the root's dirs in a private mount
/// namespace, chroots, drops to uid/gid and execs; the parent waits.
pub fn bare_run(p: &BarePlan) -> io::Result<WaitStatus> {
    let slash = c"/";
    let envp: [*mut libc::c_char; 1] = [ptr::null_mut()];
    let zero = b"0\n";
    // SAFETY: the child only makes raw system calls on memory prepared before
    // the fork (no allocation, no locks) and ends in execve or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe system calls on pointers that stay valid in
        // the child's copy of this address space; every failure ends in _exit.
        unsafe {
            for fd in &p.cgroup_procs {
                if libc::write(fd.as_raw_fd(), zero.as_ptr().cast(), zero.len()) < 0 {
                    libc::_exit(101);
                }
            }
            let ns = match p.proc_ {
                Some(_) => libc::CLONE_NEWNS | libc::CLONE_NEWPID,
                None => libc::CLONE_NEWNS,
            };
            if libc::unshare(ns) != 0 {
                libc::_exit(102);
            }
            if libc::mount(
                ptr::null(),
                slash.as_ptr(),
                ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                ptr::null(),
            ) != 0
            {
                libc::_exit(103);
            }
            for (src, dst) in &p.binds {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    ptr::null(),
                ) != 0
                {
                    libc::_exit(104);
                }
                if libc::mount(
                    ptr::null(),
                    dst.as_ptr(),
                    ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    ptr::null(),
                ) != 0
                {
                    libc::_exit(105);
                }
            }
            if let Some(proc_) = &p.proc_ {
                bare_pid_one(proc_);
            }
            if libc::chroot(p.root.as_ptr()) != 0 || libc::chdir(slash.as_ptr()) != 0 {
                libc::_exit(106);
            }
            if libc::setgroups(0, ptr::null()) != 0
                || libc::setresgid(p.gid, p.gid, p.gid) != 0
                || libc::setresuid(p.uid, p.uid, p.uid) != 0
            {
                libc::_exit(107);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) != 0
            {
                libc::_exit(108);
            }
            libc::execve(
                p.argv.path(),
                p.argv.ptrs.as_ptr().cast(),
                envp.as_ptr().cast(),
            );
            libc::_exit(109);
        }
    }
    wait_status(pid)
}

/// In the bare child after `unshare(CLONE_NEWPID)`: fork the namespace's
/// first process and return in it, once its /proc is mounted and masked;
/// the child itself waits for it and exits with its status.
///
/// # Safety
/// Only between fork and exec of [`bare_run`]'s child: raw system calls on
/// memory prepared before the fork.
unsafe fn bare_pid_one(p: &ProcPlan) {
    // SAFETY: as the caller promises (see above).
    unsafe {
        let fail = || libc::_exit(111);
        let pid = libc::fork();
        if pid < 0 {
            libc::_exit(110);
        }
        if pid > 0 {
            let mut st = 0;
            if libc::waitpid(pid, &mut st, 0) != pid {
                libc::_exit(110);
            }
            libc::_exit(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            });
        }
        let none = ptr::null();
        let fs_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c"proc".as_ptr(),
            p.target.as_ptr(),
            c"proc".as_ptr(),
            fs_flags,
            c"hidepid=2".as_ptr().cast(),
        ) != 0
        {
            fail();
        }
        let missing = || *libc::__errno_location() == libc::ENOENT;
        for file in &p.masked_files {
            if libc::mount(
                c"/dev/null".as_ptr(),
                file.as_ptr(),
                none,
                libc::MS_BIND,
                ptr::null(),
            ) != 0
                && !missing()
            {
                fail();
            }
        }
        for dir in &p.masked_dirs {
            if libc::mount(
                c"tmpfs".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                fs_flags | libc::MS_RDONLY,
                ptr::null(),
            ) != 0
                && !missing()
            {
                fail();
            }
        }
    }
}

/// An inotify fd watching `dir` for files written or renamed into it (a
/// supervisor's status file, rewritten at each change of its service). Read
/// it as a file to drain the events; poll it to wait for the next.
pub fn watch_dir(dir: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: no pointer is passed; the call only returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by inotify_init1 and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `fd` is a valid inotify fd and `path` a NUL-terminated string
    // that outlives the call.
    let wd = unsafe {
        libc::inotify_add_watch(
            fd.as_raw_fd(),
            path.as_ptr(),
            libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE,
        )
    };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

//! The system calls a forked child makes before exec, each in a wrapper of
//! its own.
//!
//! Every wrapper here is async-signal-safe: one or a few system calls
//! through libc on fds, integers, stack data and C strings prepared before
//! the fork; none allocates, takes a lock or touches the parent's state. A
//! failure comes back as its [`Errno`], read from errno right after the
//! call, so the step that called can report it.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::sys::{CapData, CapHeader, CAP_V3};

/// The result of one call between fork and exec.
pub(super) type Sys<T = ()> = Result<T, Errno>;

fn check(ret: libc::c_int) -> Sys<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> Sys<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// `fork(2)`: the child's pid in the parent, 0 in the child.
///
/// Every caller's child either is a copy of the single-threaded daemon (its
/// own detach, the cleanup helper) or runs only the async-signal-safe
/// steps over this module until it execs or `_exit`s (the task, the init),
/// which holds even when a test forks from a process with threads.
pub(crate) fn fork() -> Sys<libc::pid_t> {
    // SAFETY: see above: no child touches a lock or the allocator another
    // thread may have held at the fork, unless there is no other thread.
    check(unsafe { libc::fork() })
}

/// `close(fd)`; its result is of no use where the child closes.
pub(super) fn close(fd: RawFd) {
    // SAFETY: async-signal-safe; closes an fd number the fork copied, owned
    // by no Rust object in this process (the child holds raw fds only).
    unsafe { libc::close(fd) };
}

/// `_exit(code)`: no exit handler, no flush of the parent's buffers.
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: async-signal-safe; never returns and touches no memory.
    unsafe { libc::_exit(code) }
}

/// `write(fd, buf)` once: the byte count.
pub(super) fn write(fd: RawFd, buf: &[u8]) -> Sys<usize> {
    // SAFETY: async-signal-safe; buf is valid for buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// `send(fd, [byte], MSG_NOSIGNAL)` once: EPIPE, never SIGPIPE, once the
/// peer is gone.
pub(super) fn send_byte(fd: RawFd, byte: u8) -> Sys<usize> {
    let b = [byte];
    // SAFETY: async-signal-safe; b lives on the stack for the call.
    let n = unsafe { libc::send(fd, b.as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| Errno::last())
}

/// `read(fd)` of one byte, again on EINTR: Ok(false) at EOF.
pub(super) fn read_byte(fd: RawFd) -> Sys<bool> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: async-signal-safe; b is a writable stack byte.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        match n {
            1 => return Ok(true),
            0 => return Ok(false),
            _ if Errno::last() == Errno::EINTR => {}
            _ => return Err(Errno::last()),
        }
    }
}

/// Close every fd but `keep` (close_range around it).
pub(super) fn close_all_but(keep: RawFd) {
    let keep = libc::c_uint::try_from(keep).unwrap_or(0);
    // SAFETY: async-signal-safe; plain integers; the fds closed are the
    // fork's copies, owned by nothing in this process.
    unsafe {
        if keep > 0 {
            libc::syscall(
                libc::SYS_close_range,
                0 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            keep.saturating_add(1),
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
}

/// Mark every fd from 3 up close-on-exec (one by one where the kernel has
/// no `CLOSE_RANGE_CLOEXEC`): the error pipe must live until execve.
pub(super) fn cloexec_from_3() {
    // SAFETY: async-signal-safe; plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // SAFETY: rlimit is a plain C struct for which all-zero is valid.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: async-signal-safe; lim is a writable stack struct.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(65_536)
    } else {
        1024
    };
    let mut fd: libc::c_int = 3;
    while libc::rlim_t::try_from(fd).unwrap_or(0) < max {
        // SAFETY: async-signal-safe; integers only.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        fd += 1;
    }
}

/// `dup2(from, to)`.
pub(super) fn dup2(from: RawFd, to: RawFd) -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// `prctl(PR_SET_NAME, name)`.
pub(super) fn set_name(name: &CStr) {
    // SAFETY: async-signal-safe; name is NUL-terminated and outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`.
pub(super) fn set_parent_death_signal() -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }).map(drop)
}

/// Block every signal; the full set, to wait on.
pub(super) fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain C type for which all-zero is valid.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: async-signal-safe; all is a writable stack set, only read by
    // sigprocmask.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    all
}

/// `sigwaitinfo(set)`: the next of the blocked signals (-1 on EINTR).
pub(super) fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    // SAFETY: async-signal-safe; set lives for the call, no siginfo wanted.
    unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) }
}

/// Reap every ended child, without blocking.
pub(super) fn reap_all_nohang() {
    // SAFETY: async-signal-safe; no status wanted.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// An empty signal mask and every disposition back to SIG_DFL: a fresh
/// process's signals. (EINVAL for the signals libc keeps: nothing to reset.)
pub(crate) fn reset_signals() -> Sys {
    unblock_all_signals()?;
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let _ = default_disposition(sig);
        }
    }
    Ok(())
}

/// An empty signal mask and the signals of the set `ignored` (bit n-1:
/// signal n) back to SIG_DFL. (EINVAL for the signals libc keeps: nothing to
/// reset.)
pub(crate) fn reset_signals_in(ignored: u64) -> Sys {
    unblock_all_signals()?;
    for sig in 1..=64 {
        if ignored & (1 << (sig - 1)) != 0 && sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let _ = default_disposition(sig);
        }
    }
    Ok(())
}

/// An empty signal mask and `signals` back to SIG_DFL: a forked child of a
/// process whose other dispositions are SIG_DFL already or handlers (which
/// execve resets) needs no more.
pub(super) fn reset_signals_of(signals: &[libc::c_int]) -> Sys {
    unblock_all_signals()?;
    signals.iter().try_for_each(|&sig| default_disposition(sig))
}

/// An empty signal mask.
fn unblock_all_signals() -> Sys {
    // SAFETY: sigset_t is a plain C type for which all-zero is valid.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: async-signal-safe; the set lives on the stack for the calls.
    check(unsafe {
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    })
    .map(drop)
}

/// `sig` back to SIG_DFL.
fn default_disposition(sig: libc::c_int) -> Sys {
    // SAFETY: sigaction is a plain C type for which all-zero is valid.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: async-signal-safe; dfl lives on the stack for the call and
    // SIG_DFL installs no handler code.
    check(unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) }).map(drop)
}

/// `setpgid(0, 0)`: lead a process group of its own.
pub(super) fn own_process_group() -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::setpgid(0, 0) }).map(drop)
}

/// `umask(mask)`.
pub(super) fn umask(mask: libc::mode_t) {
    // SAFETY: async-signal-safe; integers only.
    unsafe { libc::umask(mask) };
}

/// `setfsuid(uid)`: the previous fsuid.
pub(super) fn setfsuid(uid: u32) -> u32 {
    // SAFETY: async-signal-safe; integers only.
    unsafe { libc::setfsuid(uid) }.cast_unsigned()
}

/// `open(path, flags | O_CLOEXEC)`.
pub(super) fn open(path: &CStr, flags: libc::c_int) -> Sys<RawFd> {
    // SAFETY: async-signal-safe; path is NUL-terminated and outlives the call.
    check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `openat(dir, path, flags | O_CLOEXEC, mode)`.
pub(super) fn openat(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> Sys<RawFd> {
    // SAFETY: async-signal-safe; path is NUL-terminated and outlives the call.
    check(unsafe { libc::openat(dir, path.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// `mkdirat(dir, path, mode)`.
pub(super) fn mkdirat(dir: RawFd, path: &CStr, mode: libc::mode_t) -> Sys {
    // SAFETY: async-signal-safe; path is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(dir, path.as_ptr(), mode) }).map(drop)
}

/// openat2(dir, path, O_PATH | O_CLOEXEC | flags, RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS). A symlink anywhere, the last component too, fails
/// (ELOOP), as does a way out of `dir` (EXDEV).
pub(super) fn open_beneath(dir: RawFd, path: *const c_char, flags: libc::c_int) -> Sys<RawFd> {
    // SAFETY: open_how is a plain C struct for which all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from((libc::O_PATH | libc::O_CLOEXEC | flags).unsigned_abs());
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: async-signal-safe; path is a NUL-terminated string prepared
    // before the fork (or an fd path on our stack), how lives on our stack.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path,
            std::ptr::addr_of!(how),
            std::mem::size_of::<libc::open_how>(),
        )
    };
    check_long(ret).map(|fd| RawFd::try_from(fd).unwrap_or(-1))
}

/// `fstat(fd)`: (st_dev, st_ino).
pub(super) fn dev_ino(fd: RawFd) -> Sys<(u64, u64)> {
    // SAFETY: stat is a plain C struct for which all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: async-signal-safe; st is a writable stack struct.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

/// `fstat(fd)`: whether it is a dir.
pub(super) fn is_dir(fd: RawFd) -> Sys<bool> {
    // SAFETY: stat is a plain C struct for which all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: async-signal-safe; st is a writable stack struct.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// `fstatvfs(fd)`: its `f_flag`.
pub(super) fn statvfs_flags(fd: RawFd) -> Sys<libc::c_ulong> {
    // SAFETY: statvfs is a plain C struct for which all-zero is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: async-signal-safe (one fstatfs); st is a writable stack struct.
    check(unsafe { libc::fstatvfs(fd, &mut st) })?;
    Ok(st.f_flag)
}

/// `unshare(flags)`: the CLONE_NEW* namespaces of the task's own.
pub(super) fn unshare(flags: libc::c_int) -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `sethostname(name)`, in the child's own uts namespace.
pub(super) fn sethostname(name: &CStr) -> Sys {
    // SAFETY: async-signal-safe; name is a C string prepared before the
    // fork, read for its length without its NUL.
    check(unsafe { libc::sethostname(name.as_ptr(), name.to_bytes().len()) }).map(drop)
}

/// SIOCGIFFLAGS and SIOCSIFFLAGS (<linux/sockios.h>): the same numbers on
/// every architecture, typed differently by glibc and musl.
const GET_FLAGS: u16 = 0x8913;
const SET_FLAGS: u16 = 0x8914;

/// The loopback of the child's new network namespace up: its flags read
/// and written back with IFF_UP through a datagram socket (SIOCGIFFLAGS,
/// SIOCSIFFLAGS), closed after.
pub(super) fn loopback_up() -> Sys {
    // SAFETY: async-signal-safe; integers only.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain old data, all zeroes a valid value; on the stack.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(b"lo") {
        *to = c_char::from_ne_bytes([*from]);
    }
    // ioctl(2) as the raw call: glibc's wrapper takes the request as an
    // unsigned long, musl's as an int.
    // SAFETY: async-signal-safe; req is a valid ifreq on the stack naming
    // "lo", which SIOCGIFFLAGS fills in.
    let got = check_long(unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd,
            libc::c_ulong::from(GET_FLAGS),
            &mut req as *mut libc::ifreq,
        )
    });
    let set = got.and_then(|_| {
        // SAFETY: SIOCGIFFLAGS wrote the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        // SAFETY: async-signal-safe; req as above, its flags with IFF_UP.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_ioctl,
                fd,
                libc::c_ulong::from(SET_FLAGS),
                &req as *const libc::ifreq,
            )
        })
    });
    close(fd);
    set.map(drop)
}

/// `unshare(CLONE_NEWNS)`.
pub(super) fn unshare_mount_ns() -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map(drop)
}

/// `mount(2)`; a null pointer for an argument it does not take.
pub(super) fn mount(
    source: *const c_char,
    target: *const c_char,
    fstype: *const c_char,
    flags: libc::c_ulong,
    data: *const c_char,
) -> Sys {
    // SAFETY: async-signal-safe; every pointer is null or a NUL-terminated
    // string prepared before the fork or on our stack, alive for the call.
    check(unsafe { libc::mount(source, target, fstype, flags, data.cast()) }).map(drop)
}

/// `struct mount_attr` of mount_setattr(2) (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, {attr_set})`: on the
/// mount of `fd` and every mount beneath it, at once.
pub(super) fn mount_setattr_recursive(fd: RawFd, attr_set: u64) -> Sys {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: async-signal-safe; attr lives on our stack, its size is passed.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `fchdir(fd)`, `chroot(".")`, `chdir("/")`: `fd` becomes the root.
pub(super) fn chroot_to(fd: RawFd) -> Sys {
    // SAFETY: async-signal-safe; static C strings.
    unsafe {
        check(libc::fchdir(fd))?;
        check(libc::chroot(c".".as_ptr()))?;
        check(libc::chdir(c"/".as_ptr())).map(drop)
    }
}

/// `chdir(path)`.
pub(super) fn chdir(path: &CStr) -> Sys {
    // SAFETY: async-signal-safe; path is NUL-terminated and outlives the call.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `setgroups(0, NULL)`.
pub(super) fn clear_groups() -> Sys {
    // SAFETY: async-signal-safe in a single-threaded process; the NULL
    // list has length 0.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// `setresgid(gid, gid, gid)`.
pub(super) fn setresgid(gid: u32) -> Sys {
    // SAFETY: async-signal-safe in a single-threaded process (glibc has no
    // other thread to tell); integers only.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

/// `setresuid(uid, uid, uid)`.
pub(super) fn setresuid(uid: u32) -> Sys {
    // SAFETY: async-signal-safe in a single-threaded process (glibc has no
    // other thread to tell); integers only.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// Every capability set emptied (capset of zeros), ambient cleared (EINVAL
/// where the kernel has none).
pub(super) fn clear_capabilities() -> Sys {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: async-signal-safe; header and data live on our stack and are
    // sized for version 3.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    })?;
    // SAFETY: async-signal-safe; integers only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    match check(r) {
        Err(Errno::EINVAL) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub(super) fn set_no_new_privs() -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// `execve(command, argv, envp)`: returns only on failure.
pub(super) fn execve(
    command: &CStr,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Errno {
    // SAFETY: async-signal-safe; command and both NULL-terminated arrays of
    // C strings were built before the fork and live until execve.
    unsafe { libc::execve(command.as_ptr(), argv, envp) };
    Errno::last()
}

/// `setns(fd, nstype)`: join the namespace `fd` refers to.
pub(super) fn setns(fd: RawFd, nstype: libc::c_int) -> Sys {
    // SAFETY: async-signal-safe; integers only.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// Close every fd from `first` up.
pub(super) fn close_from(first: libc::c_uint) {
    // SAFETY: async-signal-safe; plain integers; the fds closed are the
    // fork's copies, owned by nothing in this process.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
}

/// `waitpid(pid)` until it ends, again on EINTR: its exit code, 128+N for a
/// death by signal N (as a shell reports it).
pub(super) fn wait_exit_code(pid: libc::pid_t) -> i32 {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: async-signal-safe; status is a writable stack int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && Errno::last() != Errno::EINTR {
            return 126;
        }
    }
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// `setsid()`: lead a new session (and so have no controlling terminal).
pub(super) fn setsid() -> Sys {
    // SAFETY: async-signal-safe; no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// `ioctl(fd, TIOCSCTTY, 0)`: the terminal on `fd` becomes the session's
/// controlling terminal.
pub(super) fn set_controlling_tty(fd: RawFd) -> Sys {
    // SAFETY: async-signal-safe; integers only, no pointer is passed.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_flag_requests_are_the_kernels() {
        // i128 holds glibc's unsigned long and musl's int alike.
        assert_eq!(i128::from(libc::SIOCGIFFLAGS), i128::from(GET_FLAGS));
        assert_eq!(i128::from(libc::SIOCSIFFLAGS), i128::from(SET_FLAGS));
    }
}

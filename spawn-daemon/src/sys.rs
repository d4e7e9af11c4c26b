//! System call wrappers for the daemon (outside a forked child, whose own
//! are in `child::raw`). Raw where neither std nor nix offers the call:
//! close_range, getrandom, mount_setattr, capget/capset, the signal state of a
//! fresh process, and a waitpid that keeps the raw status; through nix's safe
//! calls for unshare, setns and the fs ids; pidfd_open, pidfd_send_signal and
//! open_beneath come from `tend-sys`, which the shared crates use too.
//! (rustix has pidfd, capabilities and getrandom, but would add two crates to
//! a setuid binary for a few lines each.)
//!
//! Each wrapper is a thin, checked shell around one call, so the unsafe surface of
//! the daemon stays in this file and in [`crate::child`].
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::unistd::Pid;
pub use tend_sys::{open_beneath, pidfd_open, pidfd_send_signal, set_umask, umask_keeps};

/// A raw syscall return: the OS error when negative, else the value.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `close_range(first, last, flags)`.
pub fn close_range(first: u32, last: u32, flags: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; closing fds we may hold as Rust
    // objects is the caller's documented intent (only used at startup, before any
    // fd above 2 is owned by Rust code).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::from(first),
            libc::c_uint::from(last),
            libc::c_uint::from(flags),
        )
    };
    check(ret).map(|_| ())
}

/// Close every fd from 3 up, at process start before any other fd is owned.
pub fn close_fds_above_stdio() {
    if close_range(3, u32::MAX, 0).is_ok() {
        return;
    }
    // Kernels before 5.9: close what /proc says is open.
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        // SAFETY: closing an fd number; at startup no Rust object owns any fd
        // above 2 (the read_dir handle above is already dropped).
        unsafe { libc::close(fd) };
    }
}

/// Fill `buf` from the kernel's random pool.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // The system call itself: a static musl build links libc's
        // getrandom weakly, as a null function.
        // SAFETY: rest is a valid, writable slice of rest.len() bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                rest.as_mut_ptr(),
                rest.len(),
                0 as libc::c_uint,
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += usize::try_from(ret).unwrap_or(0);
    }
    Ok(())
}

/// `waitpid(pid, &status, WNOHANG)`: the pid and the raw status of one ended child,
/// None when no child has ended (or there is none).
pub fn wait_nohang(pid: Pid) -> io::Result<Option<(Pid, i32)>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid, writable int for the call.
        let ret = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
        if ret > 0 {
            return Ok(Some((Pid::from_raw(ret), status)));
        }
        if ret == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// `waitpid(pid, &status, 0)`: block until `pid` ends; its raw status.
pub fn wait_blocking(pid: Pid) -> io::Result<i32> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid, writable int for the call.
        let ret = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if ret >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Whether `fd` is a terminal.
pub fn is_tty<F: AsFd>(fd: F) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// Set `sig` to SIG_IGN.
pub fn ignore_signal(sig: nix::sys::signal::Signal) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let act = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no handler code, so none of the handler-safety
    // requirements of sigaction apply.
    unsafe { sigaction(sig, &act) }
        .map(|_| ())
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Every signal disposition back to SIG_DFL and an empty signal mask: what a
/// parent left ignored or blocked is not ours (an ignored SIGCHLD would
/// reap the task behind our back, an ignored SIGTERM would never reach the
/// signalfd). Signals libc keeps for itself refuse the change (EINVAL): skipped.
pub fn reset_signals() -> io::Result<()> {
    // The same reset as a forked child's before its exec.
    crate::child::raw::reset_signals().map_err(io::Error::from)
}

/// [`reset_signals`] for a process just exec'd: execve left it no handler,
/// so only an ignored signal can differ from SIG_DFL, and /proc/self/status
/// names those (one read, not a sigaction per signal). Where /proc does not
/// say, every disposition is reset.
pub fn reset_ignored_signals() -> io::Result<()> {
    match ignored_signals() {
        Some(ignored) => crate::child::raw::reset_signals_in(ignored).map_err(io::Error::from),
        None => reset_signals(),
    }
}

/// The signals this process ignores (bit n-1: signal n), from the `SigIgn`
/// line of /proc/self/status; None where /proc does not say.
pub fn ignored_signals() -> Option<u64> {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let path = c"/proc/self/status";
    // The system call itself: libc's open(O_CLOEXEC) adds an fcntl (musl).
    // SAFETY: path is NUL-terminated and outlives the call; integers otherwise.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let fd = RawFd::try_from(check(ret).ok()?).ok()?;
    // SAFETY: fd was just opened here and nothing else owns it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // The whole file is about 1.5 KiB; the line is in its first half.
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if let Some(mask) = sig_ign_of(&buf[..len]) {
                    return Some(mask);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    None
}

/// The `SigIgn:` mask of a /proc/<pid>/status text, once its line is whole.
pub fn sig_ign_of(status: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\nSigIgn:";
    let at = status.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &status[at..];
    let end = rest.iter().position(|&b| b == b'\n')?;
    let hex = std::str::from_utf8(&rest[..end]).ok()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether the kernel has mount_setattr(2) (Linux 5.12): a call with no
/// attributes on no fd answers EBADF or EINVAL where it does, ENOSYS where not.
/// Asked once per process (a plan asks for every bind).
pub fn has_mount_setattr() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: a NULL attr with size 0 is never read; -1 is no fd of ours.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1 as libc::c_int,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                std::ptr::null::<libc::c_void>(),
                0usize,
            )
        };
        !(ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
    })
}

/// `unshare(CLONE_NEWPID)`: the next child of this process is the first
/// process (pid 1) of a new pid namespace; this process stays where it is.
pub fn unshare_pid_ns() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(io::Error::from)
}

/// `setns(ns, CLONE_NEWPID)`: later children of this process go into the pid
/// namespace of `ns` (an fd of `/proc/<pid>/ns/pid`); this process does not move.
pub fn set_children_pid_ns(ns: BorrowedFd<'_>) -> io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWPID).map_err(io::Error::from)
}

/// `_exit(code)`: leave at once, without running exit handlers (the
/// intermediate process of a double fork).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

// --- setuid mode: capabilities and file-system ids (see crate::setuid) ---

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
pub(crate) const CAP_V3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` (also used by [`crate::child`] to empty
/// the task's sets before exec).
#[repr(C)]
pub(crate) struct CapHeader {
    pub(crate) version: u32,
    pub(crate) pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit word of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct CapData {
    pub(crate) effective: u32,
    pub(crate) permitted: u32,
    pub(crate) inheritable: u32,
}

/// The three capability sets of this thread as 64-bit masks (bit n = cap n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    /// What the thread uses now.
    pub effective: u64,
    /// What it may make effective.
    pub permitted: u64,
    /// What survives execve (with file caps or ambient).
    pub inheritable: u64,
}

fn split(mask: u64) -> (u32, u32) {
    let lo = u32::try_from(mask & 0xffff_ffff).unwrap_or(u32::MAX);
    let hi = u32::try_from(mask >> 32).unwrap_or(u32::MAX);
    (lo, hi)
}

/// `capget(2)` of this thread.
pub fn capget() -> io::Result<CapSets> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: hdr and data are valid, writable and sized for version 3 (two
    // CapData), which is the version we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::addr_of_mut!(hdr),
            data.as_mut_ptr(),
        )
    };
    check(ret)?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// `capset(2)` of this thread to exactly `sets`.
pub fn capset(sets: CapSets) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: hdr and data are valid for the call and sized for version 3;
    // the kernel only reads data.
    let ret =
        unsafe { libc::syscall(libc::SYS_capset, std::ptr::addr_of_mut!(hdr), data.as_ptr()) };
    check(ret).map(|_| ())
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; touches no memory of ours.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::c_ulong::from(libc::PR_CAP_AMBIENT_CLEAR_ALL.unsigned_abs()),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(libc::c_long::from(ret)).map(|_| ())
}

/// `setfsuid(uid)`: returns the previous fsuid. The call never reports an
/// error, so callers read back with [`fsuid`].
pub fn setfsuid(uid: u32) -> u32 {
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw()
}

/// `setfsgid(gid)`: returns the previous fsgid (see [`setfsuid`]).
pub fn setfsgid(gid: u32) -> u32 {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid)).as_raw()
}

/// The current fsuid: `setfsuid(-1)` changes nothing (-1 is never a valid id)
/// and returns it. The setuid tests read it back.
#[cfg(test)]
pub fn fsuid() -> u32 {
    setfsuid(u32::MAX)
}

/// The most fds one message may carry (an exec's stdin, stdout, stderr).
pub const MAX_PASSED_FDS: usize = 3;

/// `recvmsg` into `buf` without blocking, taking the fds an SCM_RIGHTS
/// message carries (close-on-exec; any over [`MAX_PASSED_FDS`] the kernel
/// closes) into `fds`. Ok(0) at EOF.
pub fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_PASSED_FDS]);
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel installed `r` in this process for this
                // message just now; nothing else holds it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_signals_are_the_sigign_line_once_it_is_whole() {
        let status = b"Name:\ttend-spawn\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000010000\nSigIgn:\t0000000000001001\nSigCgt:\t0000000100000000\n";
        assert_eq!(sig_ign_of(status), Some(0x1001));
        // Cut inside the line: not yet.
        let cut = b"Name:\ttend-spawn\nSigIgn:\t00000000000";
        assert_eq!(sig_ign_of(cut), None);
        assert_eq!(sig_ign_of(b"Name:\tx\n"), None);
        assert_eq!(sig_ign_of(b"Name:\tx\nSigIgn:\tzz\n"), None);
    }

    #[test]
    fn the_ignored_signals_of_this_process_are_read_and_reset() {
        // Its own process (nextest): SIGUSR1 and SIGRTMAX ignored, SIGUSR2
        // handled (not ignored).
        extern "C" fn handler(_: libc::c_int) {}
        let ign = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::SigIgn,
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        let handled = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(handler),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: SIG_IGN and an empty handler run nothing unsafe.
        unsafe {
            nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR1, &ign).unwrap();
            nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR2, &handled).unwrap();
            assert_eq!(libc::signal(libc::SIGRTMAX(), libc::SIG_IGN), libc::SIG_DFL);
        }
        let bit = |sig: libc::c_int| 1u64 << (sig - 1);
        let ignored = ignored_signals().expect("SigIgn of /proc/self/status");
        assert_ne!(ignored & bit(libc::SIGUSR1), 0);
        assert_ne!(ignored & bit(libc::SIGRTMAX()), 0);
        assert_eq!(ignored & bit(libc::SIGUSR2), 0);
        reset_ignored_signals().unwrap();
        let after = ignored_signals().unwrap();
        assert_eq!(after & (bit(libc::SIGUSR1) | bit(libc::SIGRTMAX())), 0);
        // Not ignored, so not touched: execve ends a handler, not this.
        // SAFETY: a query only (no new action).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: old lives for the call; a null act only reads.
        unsafe { libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut old) };
        assert_eq!(old.sa_sigaction, handler as *const () as libc::sighandler_t);
    }
}

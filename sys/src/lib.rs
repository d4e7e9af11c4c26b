//! Raw system call wrappers shared by tend-spawn and the crates the agent uses
//! too: pidfd_open, pidfd_send_signal, and openat2 beneath a dir.
//!
//! Each wrapper is a thin, checked shell around one call. Nothing here forks or
//! closes fds that others own: those stay in tend-spawn's own `sys` module.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;

/// A raw syscall return: the OS error when negative, else the value.
pub fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid, 0)`: an fd that becomes readable when `pid` exits.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the result is a new fd we take ownership of.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0 as libc::c_uint) };
    owned_fd(ret)
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signal exactly the process of the
/// pidfd, never one that reused its pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: the fd is borrowed and valid for the call; a NULL siginfo is allowed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    check(ret).map(|_| ())
}

/// Open `name` beneath `dir` without following any symlink: openat2 with
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or openat with O_NOFOLLOW where the
/// kernel has no openat2 (then `name` must be a single component).
pub fn open_beneath(dir: BorrowedFd<'_>, name: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: open_how is a plain C struct for which all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from(flags.unsigned_abs());
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: cname and how outlive the call; the size passed is how's size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            cname.as_ptr(),
            std::ptr::addr_of!(how),
            std::mem::size_of::<libc::open_how>(),
        )
    };
    match owned_fd(ret) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            if name.contains('/') {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            // SAFETY: cname outlives the call; openat returns a new fd or -1.
            let ret = unsafe { libc::openat(dir.as_raw_fd(), cname.as_ptr(), flags, mode) };
            owned_fd(libc::c_long::from(ret))
        }
        other => other,
    }
}

/// For unit tests that need root: true as root; else prints "skipped: needs
/// root" and returns false, or panics under `CI=true`, where a skipped test
/// proves nothing. (tend-tests' `have_root`, which these crates cannot depend on; shared by
/// their unit tests, not part of the API.)
#[doc(hidden)]
pub fn test_have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "cannot run under CI=true: needs root"
    );
    println!("skipped: needs root");
    false
}

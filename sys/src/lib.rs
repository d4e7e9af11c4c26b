//! System calls shared by tend-spawn and the crates the agent uses too:
//! pidfd_open, pidfd_send_signal and FIONREAD (rustix's, which nix lacks),
//! openat2 beneath a dir (nix's), and the umask as the process last set it. No unsafe
//! code: each is a safe call of those crates.
//!
//! Nothing here forks or closes fds that others own: those stay in
//! tend-spawn's own `sys` module.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::Pid;

/// `pidfd_open(pid, 0)`: an fd that becomes readable when `pid` exits.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signal exactly the process of the
/// pidfd, never one that reused its pid. `sig` is a named signal (EINVAL
/// otherwise: tend sends no real-time signals).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    let sig = rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_send_signal(pidfd, sig)?)
}

/// `ioctl(fd, FIONREAD)`: the bytes waiting in a pipe or socket, readable
/// without blocking.
pub fn bytes_waiting(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::io::ioctl_fionread(fd)?)
}

/// Open `name` beneath `dir` without following any symlink: openat2 with
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or openat with O_NOFOLLOW where the
/// kernel has no openat2 (then `name` must be a single component).
pub fn open_beneath(dir: BorrowedFd<'_>, name: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let mode = Mode::from_bits_truncate(mode);
    let how = OpenHow::new()
        .flags(flags)
        .mode(if flags.intersects(OFlag::O_CREAT | OFlag::O_TMPFILE) {
            mode
        } else {
            Mode::empty()
        })
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(dir, name, how) {
        Err(nix::errno::Errno::ENOSYS) => {
            if name.contains('/') {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            nix::fcntl::openat(dir, name, flags, mode).map_err(io::Error::from)
        }
        other => other.map_err(io::Error::from),
    }
}

/// No umask set through [`set_umask`] yet: the one the process inherited,
/// which nothing reads without changing it.
const UMASK_UNKNOWN: u32 = u32::MAX;

static UMASK: AtomicU32 = AtomicU32::new(UMASK_UNKNOWN);

/// Set the process's umask to `mask` and remember it, so that
/// [`umask_keeps`] can tell a creator whether the mode it asked for is the
/// mode it got. A process that sets its umask otherwise (a forked child
/// before its exec) creates no file through the crates that ask.
pub fn set_umask(mask: u32) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    UMASK.store(mask & 0o777, Ordering::Relaxed);
}

/// Whether a file created with `mode` now gets exactly `mode`: the umask was
/// set through [`set_umask`] and cuts none of its bits. False while the
/// umask is not known: the creator then sets the mode itself (fchmod).
pub fn umask_keeps(mode: u32) -> bool {
    let mask = UMASK.load(Ordering::Relaxed);
    mask != UMASK_UNKNOWN && mode & mask == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_umask_keeps_no_mode_and_a_known_one_keeps_what_it_does_not_cut() {
        assert!(!umask_keeps(0o640));
        assert!(!umask_keeps(0));
        set_umask(0o022);
        assert!(umask_keeps(0o640));
        assert!(umask_keeps(0o755));
        assert!(!umask_keeps(0o666));
        set_umask(0o077);
        assert!(!umask_keeps(0o640));
        assert!(umask_keeps(0o600));
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        assert_eq!(old.bits(), 0o077);
    }
}

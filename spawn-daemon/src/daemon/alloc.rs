//! The alloc dir as the daemon opens it: the dir itself (as the caller in
//! setuid mode), its log dir, and the task's `local/` handed to its user.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::stat::{fchmod, mkdirat, Mode};
use tend_proto::{names, Stage};

use super::errno_of;
use super::life::Life;
use crate::child::StartFailure;
use crate::setuid::Context;
use crate::sys;

/// The alloc's log dir, made (0755) where it is not there yet.
pub fn open_log_dir(alloc: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let created = match mkdirat(alloc, names::LOG_DIR, Mode::from_bits_truncate(0o755)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
    };
    let fd = sys::open_beneath(alloc, names::LOG_DIR, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    if created && !sys::umask_keeps(0o755) {
        // The umask (setuid mode's 077) cut it; the agent and people read the logs.
        fchmod(&fd, Mode::from_bits_truncate(0o755))
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    Ok(fd)
}

/// Setuid mode: the caller's alloc dir below one of the policy's data roots
/// (see [`crate::policy::open_caller_dir`]), as a readable dir fd.
pub fn open_caller_alloc(ctx: &Context, alloc_dir: &str) -> Result<OwnedFd, StartFailure> {
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
pub fn give_local_to_task(
    life: &Life,
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
    life.privileged_or(Stage::Mount, || {
        nix::unistd::fchown(
            &fd,
            Some(nix::unistd::Uid::from_raw(ctx.task.uid)),
            Some(nix::unistd::Gid::from_raw(ctx.task.gid)),
        )
        .and_then(|()| fchmod(&fd, Mode::from_bits_truncate(0o750)))
        .map_err(|e| StartFailure::new(Stage::Mount, &rel, errno_of(e)))
    })
}

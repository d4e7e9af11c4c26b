//! Setuid mode: the root cleanup helper, the one process that outlives a
//! SIGKILLed daemon to remove what it made.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{getpid, Pid};
use tend_proto::config::CgroupSpec;
use tend_proto::Stage;

use super::{errno_of, stdio_to_dev_null};
use crate::cgroup::{Hierarchies, TaskCgroup};
use crate::child::{self, StartFailure};
use crate::daemon_log::DaemonLog;
use crate::sys;

/// Setuid mode: fork the cleanup helper, a root process that does nothing but
/// wait for the daemon to go (its pidfd of the daemon turns readable when the
/// daemon exits, however it exits) and then kill and remove the task's cgroup
/// and the daemon's own, which the daemon, once it is the caller, cannot
/// rmdir. bubblewrap's `privileged_op` split, cut down to one operation with
/// no input at all.
///
/// Forked before any cgroup is made, and waited for until it holds all of
/// root's ids (a process whose real uid is the caller's, the daemon until the
/// drop, the caller may SIGKILL): from then on no stage of the set-up can
/// leave a cgroup or a task behind. It watches the daemon itself, not a pipe
/// a forked child could hold open: a child the daemon placed in the task's
/// cgroup dies with it; one it had not placed yet waits on a sync pipe whose
/// other end died with the daemon.
pub fn fork_cleanup_helper(hier: &Hierarchies, spec: &CgroupSpec) -> Result<Pid, StartFailure> {
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| StartFailure::new(Stage::Fork, "cleanup pipe", errno_of(e)))
    };
    let (ready_r, ready_w) = pipe()?;
    let daemon = getpid();
    // A shared daemon cgroup stays (see Hierarchies::is_shared_daemon_path).
    let daemon_path = spec
        .daemon_path
        .as_deref()
        .filter(|p| !Hierarchies::is_shared_daemon_path(p));
    match child::fork_single_threaded() {
        Err(e) => Err(StartFailure::io(Stage::Fork, "cleanup helper", &e)),
        Ok(child::Forked::Parent(pid)) => {
            drop(ready_w);
            // One byte once it is root; EOF if it died first.
            let mut b = [0u8; 1];
            let ready = loop {
                match nix::unistd::read(&ready_r, &mut b) {
                    Err(Errno::EINTR) => {}
                    other => break other == Ok(1),
                }
            };
            if !ready {
                let _ = sys::wait_blocking(pid);
                return Err(StartFailure::plain(
                    Stage::Fork,
                    "the setuid cleanup helper ended before it was ready; nothing was made"
                        .to_string(),
                ));
            }
            Ok(pid)
        }
        Ok(child::Forked::Child) => {
            drop(ready_r);
            // Nothing is logged from here: the fds of the log are closed below.
            DaemonLog::all_off();
            stdio_to_dev_null();
            // The daemon, checked to be this process's parent once its pidfd
            // is open (gone already: the pidfd is of nobody, or of another
            // process, and the cleanup starts at once).
            let watched = sys::pidfd_open(daemon)
                .ok()
                .filter(|_| nix::unistd::getppid() == daemon);
            let mut keep: Vec<i32> = vec![ready_w.as_raw_fd()];
            keep.extend(watched.as_ref().map(AsRawFd::as_raw_fd));
            keep.sort_unstable();
            let mut from = 3u32;
            for fd in keep.iter().filter_map(|fd| u32::try_from(*fd).ok()) {
                if fd > from {
                    let _ = sys::close_range(from, fd - 1, 0);
                }
                from = fd.saturating_add(1);
            }
            let _ = sys::close_range(from, u32::MAX, 0);
            // All of root's ids: the caller (the real uid until now) cannot signal it.
            let _ = nix::unistd::setgroups(&[]);
            let root_g = nix::unistd::Gid::from_raw(0);
            let root_u = nix::unistd::Uid::from_raw(0);
            let _ = nix::unistd::setresgid(root_g, root_g, root_g);
            if nix::unistd::setresuid(root_u, root_u, root_u).is_err() {
                sys::exit_now(1);
            }
            // The daemon ran with the caller's fsuid, which cleared the file
            // capabilities from its effective set; setresuid does not give
            // them back (only setfsuid does). Without CAP_DAC_OVERRIDE the
            // helper could not write the task's cgroup.kill or freezer.state,
            // chowned to the caller: a SIGKILLed daemon left its task running.
            if let Ok(mut caps) = sys::capget() {
                caps.effective = caps.permitted;
                let _ = sys::capset(caps);
            }
            let _ = nix::unistd::write(&ready_w, b"r");
            drop(ready_w);
            if let Some(fd) = &watched {
                loop {
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Err(Errno::EINTR) => {}
                        _ => break,
                    }
                }
            }
            // Whatever exists of it, in whichever hierarchies it got to.
            if let Ok(cg) = TaskCgroup::open(hier, &spec.path) {
                let _ = cg.kill_all();
                let _ = cg.remove();
            }
            if let Some(p) = daemon_path {
                let _ = hier.leave_self(p);
            }
            sys::exit_now(0)
        }
    }
}

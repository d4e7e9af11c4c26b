//! The two children the daemon forks for a task, between fork and exec
//! (or death): the task itself ([`child_main`]), and the init of its pid
//! namespace ([`init_main`]).
//!
//! Each is a list of named steps over the wrappers of [`super::raw`]: only
//! async-signal-safe system calls on data prepared before the fork, no
//! allocation, no lock. A failing step gives its stage, the item of it and
//! the errno ([`Failed`]), which the child writes as one record on its
//! error fd before it `_exit(127)`s.

use std::convert::Infallible;
use std::os::fd::RawFd;

use nix::errno::Errno;
use tend_proto::Stage;

use super::raw::{self, Sys};
use super::{
    ChildFds, Isolation, Prepared, INIT_READY, NS_HOSTNAME, NS_LOOPBACK, NS_UNSHARE, RECORD_LEN,
    TASK_HELD,
};

/// The step that failed in a child: its stage, which item of it (1-based
/// mount index, 0 when the stage has one item) and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failed {
    stage: Stage,
    which: u32,
    pub(super) errno: Errno,
}

impl Failed {
    /// Item `which` of `stage` failed with `errno`.
    pub(super) fn at(stage: Stage, which: u32, errno: Errno) -> Failed {
        Failed {
            stage,
            which,
            errno,
        }
    }

    /// The record the parent reads: stage, errno (i32 LE), item (u32 LE).
    fn record(self) -> [u8; RECORD_LEN] {
        let e = (self.errno as i32).to_le_bytes();
        let w = self.which.to_le_bytes();
        [
            self.stage as u8,
            e[0],
            e[1],
            e[2],
            e[3],
            w[0],
            w[1],
            w[2],
            w[3],
        ]
    }

    /// Write the record on `fd` and `_exit(127)`.
    fn report(self, fd: RawFd) -> ! {
        let _ = raw::write(fd, &self.record());
        raw::exit_now(127)
    }
}

/// A system call's result as a step's: the stage it belongs to.
pub(super) trait At<T> {
    /// Failed as `stage` as a whole.
    fn at(self, stage: Stage) -> Result<T, Failed>;
    /// Failed as item `which` (1-based) of `stage`.
    fn at_item(self, stage: Stage, which: u32) -> Result<T, Failed>;
}

impl<T> At<T> for Sys<T> {
    fn at(self, stage: Stage) -> Result<T, Failed> {
        self.at_item(stage, 0)
    }

    fn at_item(self, stage: Stage, which: u32) -> Result<T, Failed> {
        self.map_err(|errno| Failed::at(stage, which, errno))
    }
}

/// The task's child, from the fork to its exec. On failure the record goes
/// to the error pipe, and the parent turns it into a `StartFailure`.
pub(super) fn child_main(prep: &Prepared, fds: &ChildFds) -> ! {
    // Only the parent holds the parent's ends: if it dies before its go,
    // the sync pipe reads EOF and the child leaves.
    raw::close(fds.sync_w);
    raw::close(fds.err_r);
    if fds.gate_w >= 0 {
        raw::close(fds.gate_w);
    }
    match task_steps(prep, fds) {
        Ok(never) => match never {},
        Err(f) => f.report(fds.err_w),
    }
}

/// The steps of the task's child, in the one order they run (STYLE.md rule 5).
fn task_steps(prep: &Prepared, fds: &ChildFds) -> Result<Infallible, Failed> {
    raw::own_process_group().at(Stage::Fork)?;
    wait_for_go(fds.sync_r);
    reset_oom_score_adj(prep).at(Stage::Privileges)?;
    if prep.ns_flags != 0 {
        enter_namespaces(prep)?;
    }
    if let Some(root) = &prep.root {
        super::mount::enter_root(root)?;
    }
    raw::chdir(&prep.cwd).at(Stage::Chdir)?;
    if let Some(iso) = prep.isolation {
        drop_privileges(iso)?;
    }
    // The first process reset every disposition (`crate::run`); the daemon
    // ignores these alone since, and its handlers end at execve.
    raw::reset_signals_of(&super::DAEMON_IGNORED).at(Stage::Signals)?;
    // The task's files in /alloc are for the other tasks too.
    raw::umask(0o022);
    stdio(fds).at(Stage::Stdio)?;
    if fds.gate_r >= 0 {
        wait_at_gate(fds);
    }
    let errno = raw::execve(
        &prep.command,
        prep.argv_ptrs.as_ptr(),
        prep.envp_ptrs.as_ptr(),
    );
    Err(Failed::at(Stage::Exec, 0, errno))
}

/// Wait for the parent's go (it places the child in the task's cgroup
/// meanwhile). A parent that gave up on us, or died: leave without a word.
fn wait_for_go(sync_r: RawFd) {
    if raw::read_byte(sync_r) != Ok(true) {
        raw::exit_now(127);
    }
    raw::close(sync_r);
}

/// The uts, ipc, network and cgroup namespaces of the task's own, after its
/// cgroup (the cgroup namespace's root is the cgroup the child is in) and
/// before its root: unshared, the host name set, the loopback up. The init
/// of its pid namespace keeps the daemon's.
fn enter_namespaces(prep: &Prepared) -> Result<(), Failed> {
    raw::unshare(prep.ns_flags).at_item(Stage::Fork, NS_UNSHARE)?;
    if let Some(h) = &prep.hostname {
        raw::sethostname(h).at_item(Stage::Fork, NS_HOSTNAME)?;
    }
    if prep.ns_flags & libc::CLONE_NEWNET != 0 {
        raw::loopback_up().at_item(Stage::Fork, NS_LOOPBACK)?;
    }
    Ok(())
}

/// A held task (`tend-oci create`): say so on the error pipe, then wait for
/// the daemon's Start on the gate. EOF (the daemon gone) or an error: leave.
fn wait_at_gate(fds: &ChildFds) {
    if raw::write(fds.err_w, &[TASK_HELD]) != Ok(1) || raw::read_byte(fds.gate_r) != Ok(true) {
        raw::exit_now(127);
    }
    raw::close(fds.gate_r);
}

/// The daemon's oom_score_adj (-1000 where it could) is not the task's: back
/// to what the daemon had at its start, never below 0 (raw_exec too).
/// /proc/self of a non-dumpable process is root's, so in setuid mode this
/// needs root's fsuid for a moment; raising the value needs no privilege.
/// Best effort where /proc is not there. Nothing to do where the daemon's
/// value is the task's already (it could not lower its own).
fn reset_oom_score_adj(prep: &Prepared) -> Sys {
    let Some(value) = &prep.oom_score_adj else {
        return Ok(());
    };
    let old_fsuid = raw::setfsuid(0);
    let written = match raw::open(c"/proc/self/oom_score_adj", libc::O_WRONLY) {
        Ok(fd) => {
            let n = raw::write(fd, value.as_bytes());
            raw::close(fd);
            n.map(drop)
        }
        Err(_) => Ok(()),
    };
    raw::setfsuid(old_fsuid);
    written
}

/// stdin from /dev/null, the log pipes on 1 and 2; every other fd closes at
/// exec (CLOEXEC rather than close: the error pipe must live until execve).
fn stdio(fds: &ChildFds) -> Sys {
    raw::dup2(fds.stdin, 0)?;
    raw::dup2(fds.stdout, 1)?;
    raw::dup2(fds.stderr, 2)?;
    raw::cloexec_from_3();
    Ok(())
}

/// setgroups([]) -> setresgid -> setresuid -> every capability set emptied
/// -> no_new_privs.
pub(super) fn drop_privileges(iso: Isolation) -> Result<(), Failed> {
    raw::clear_groups().at(Stage::Setgroups)?;
    raw::setresgid(iso.gid).at(Stage::Setgid)?;
    raw::setresuid(iso.uid).at(Stage::Setuid)?;
    // Every capability set goes: setresuid to non-root emptied permitted
    // and effective (no keepcaps), not inheritable; ambient goes too.
    raw::clear_capabilities().at(Stage::Privileges)?;
    raw::set_no_new_privs().at(Stage::Privileges)
}

/// The init of a task's pid namespace, between its fork and its death: it
/// holds no fd but `ready` (the log pipes among them: the logs must end with
/// the task), drops to the task's user, arms its parent-death signal, says
/// ready on `ready` and closes it, then takes the signals it blocked one by
/// one, reaping on each SIGCHLD. Pid 1 of a namespace ignores what it does
/// not handle, and SIGKILL from inside: the task cannot kill it; the daemon
/// does (its pidfd, or the cgroup) once the task has ended.
pub(super) fn init_main(isolation: Option<Isolation>, ready: RawFd) -> ! {
    raw::close_all_but(ready);
    raw::set_name(c"tend-init");
    let all = raw::block_all_signals();
    if let Err(f) = init_steps(isolation) {
        f.report(ready);
    }
    // A daemon that died before the signal was armed took no init along;
    // its end of the socket is closed then, and this fails (EPIPE, never
    // SIGPIPE): leave. One that dies from now on takes the init along.
    if raw::send_byte(ready, INIT_READY) != Ok(1) {
        raw::exit_now(127);
    }
    // The daemon answers once the task has exec'd. Without its answer (EOF:
    // the daemon died before the signal was armed, and the task's child,
    // which held a copy of its end until its exec or exit, is gone too),
    // leave: no init outlives its daemon, at any instant of the start.
    if raw::read_byte(ready) != Ok(true) {
        raw::exit_now(127);
    }
    raw::close(ready);
    loop {
        if raw::wait_signal(&all) == libc::SIGCHLD {
            raw::reap_all_nohang();
        }
    }
}

/// The init's drop, then its parent-death signal: after the drop, since a
/// credential change clears it.
fn init_steps(isolation: Option<Isolation>) -> Result<(), Failed> {
    if let Some(iso) = isolation {
        drop_privileges(iso)?;
    }
    raw::set_parent_death_signal().at(Stage::Fork)
}

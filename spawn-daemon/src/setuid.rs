//! Setuid mode: the privilege plumbing of a `tend-spawn` whose real uid is not
//! its effective uid (installed root-owned, mode 4750, group `tend`).
//!
//! The shape follows bubblewrap: the privileged part is small and runs in one
//! fixed order; file access on the caller's behalf is done as the caller
//! ([`as_caller`], fsuid/fsgid); once the privileged steps are done the process
//! becomes the caller for good ([`drop_to_caller`]), keeping only [`KEPT_CAPS`].
//!
//! The order, as the daemon runs it:
//! 1. [`early_sanitize`], first of all: argc 0, environment, fds, umask,
//!    non-dumpable, no_new_privs.
//! 2. The policy ([`crate::policy::Policy::load`] and `check`); any refusal is
//!    one line, and nothing is started.
//! 3. Privileged: fork the root cleanup helper (before any cgroup exists, so
//!    no stage of the set-up can leave one behind), create and join the
//!    cgroups under the policy's parent (dirs 0755, the kill files chowned to
//!    the caller), the mount namespace and read-only binds, and (in the
//!    child) setgroups/setresgid/setresuid to the task user.
//! 4. Everything of the caller's (alloc dir, logs, exit file, socket) opened or
//!    created inside [`as_caller`], without following symlinks.
//! 5. [`drop_to_caller`]: the rest of the daemon's life runs as the caller.
//!
//! # Capabilities kept
//!
//! Only `CAP_KILL`, in the permitted and effective sets, none inheritable or
//! ambient (and `no_new_privs` is set, so nothing is gained at exec). The task
//! runs as another user (`nobody` by default): without `CAP_KILL` the daemon,
//! once it is the caller, could not deliver `Signal`, `Stop` or the final
//! SIGKILL sweep to it. Nothing else is needed:
//! - killing the whole cgroup: the task cgroup's `cgroup.kill` and
//!   `cgroup.freeze` (v2) or `freezer.state` (v1) are chowned to the caller when
//!   the cgroup is created, so writing them needs no capability. Its limits
//!   (`memory.max`, `pids.max`, ...), `cgroup.procs` and the dirs stay root's:
//!   the caller can neither raise a limit nor move a process in or out.
//! - reading usage, `memory.events`, `cgroup.procs`: world-readable.
//! - the caller's files: the daemon is the caller, they are its own.
//!
//! Not kept: `CAP_SYS_ADMIN` (mounts are done before the drop), `CAP_SETUID`/
//! `CAP_SETGID` (the child drops to the task user before exec, the daemon never
//! changes ids again), `CAP_DAC_OVERRIDE` (never: that is how a root process is
//! aimed at a host file). A process that holds a capability its tracer lacks
//! cannot be ptraced, and it is non-dumpable, so the caller cannot borrow the
//! kept `CAP_KILL` by attaching to the daemon.

use std::io;

use crate::policy::POLICY_BESIDE_BINARY;
use crate::sys::{self, CapSets};

/// A capability tend-spawn may keep after [`drop_to_caller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `CAP_KILL` (5): signal a task that runs as another user.
    Kill,
}

impl Cap {
    /// The capability's number.
    pub fn number(self) -> u32 {
        match self {
            Cap::Kill => 5,
        }
    }

    /// Its bit in a capability mask.
    pub fn bit(self) -> u64 {
        1u64 << self.number()
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Cap::Kill => "CAP_KILL",
        }
    }
}

/// What the daemon keeps once it is the caller (see the module docs).
pub const KEPT_CAPS: [Cap; 1] = [Cap::Kill];

/// The umask of setuid mode: nothing the daemon creates is group or world
/// writable unless it says so (the log dir is then chmod 0755 explicitly).
pub const UMASK: u32 = 0o077;

/// Why a privilege step failed. Every failure is fatal: the daemon reports it
/// and leaves, it never goes on half-privileged.
#[derive(Debug, thiserror::Error)]
pub enum SetuidError {
    /// Started with no argv at all (argc 0): a known trick against setuid binaries.
    #[error("setuid: started with argc 0: refusing")]
    ArgcZero,
    /// One syscall failed.
    #[error("setuid: {step}: {source}")]
    Step {
        /// The step, e.g. "setresuid(1000, 1000, 1000)".
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A read-back showed another value than the one set.
    #[error("setuid: {what} is {got} after setting it to {want}")]
    Verify {
        /// The id or set.
        what: &'static str,
        /// What was set.
        want: String,
        /// What the kernel says.
        got: String,
    },
}

/// Why a setuid start is refused before anything is created: the one line
/// its start failure reports.
#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    /// The caller's ids cannot be read.
    #[error("setuid: reading the caller's ids: {0}")]
    CallerIds(#[source] io::Error),
    /// A change of file ids failed.
    #[error(transparent)]
    Setuid(#[from] SetuidError),
    /// The policy file cannot be used.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The policy refuses the config.
    #[error(transparent)]
    Refused(#[from] crate::policy::PolicyRefusal),
    /// The task's user would be root, whatever the policy says.
    #[error("policy {}: task_users: a task never runs as uid 0 or gid 0 (uid {uid}, gid {gid})", .policy.display())]
    RootTask {
        /// The policy file.
        policy: std::path::PathBuf,
        /// The task's uid.
        uid: u32,
        /// The task's gid.
        gid: u32,
    },
}

fn step<T>(name: impl Into<String>, r: io::Result<T>) -> Result<T, SetuidError> {
    r.map_err(|source| SetuidError::Step {
        step: name.into(),
        source,
    })
}

/// The real ids of the caller: who the process becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIds {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Supplementary groups (kept: they are the caller's own).
    pub groups: Vec<u32>,
}

impl From<&crate::policy::Caller> for CallerIds {
    fn from(c: &crate::policy::Caller) -> CallerIds {
        CallerIds {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.clone(),
        }
    }
}

/// The system calls of this module, behind a seam so the exact sequence is
/// unit-tested without root (youki's `Syscall`).
pub trait Syscall {
    /// Close every fd above 2.
    fn close_fds_above_stdio(&self);
    /// Remove every environment variable.
    fn clear_env(&self);
    /// Set the umask.
    fn umask(&self, mask: u32);
    /// PR_SET_DUMPABLE.
    fn set_dumpable(&self, on: bool) -> io::Result<()>;
    /// PR_SET_NO_NEW_PRIVS 1.
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// PR_SET_KEEPCAPS.
    fn set_keepcaps(&self, on: bool) -> io::Result<()>;
    /// setgroups(2).
    fn setgroups(&self, groups: &[u32]) -> io::Result<()>;
    /// setresgid(2).
    fn setresgid(&self, r: u32, e: u32, s: u32) -> io::Result<()>;
    /// setresuid(2).
    fn setresuid(&self, r: u32, e: u32, s: u32) -> io::Result<()>;
    /// getresuid(2).
    fn getresuid(&self) -> io::Result<(u32, u32, u32)>;
    /// getresgid(2).
    fn getresgid(&self) -> io::Result<(u32, u32, u32)>;
    /// setfsuid(2); the previous fsuid.
    fn setfsuid(&self, uid: u32) -> u32;
    /// setfsgid(2); the previous fsgid.
    fn setfsgid(&self, gid: u32) -> u32;
    /// capset(2) of this thread.
    fn capset(&self, sets: CapSets) -> io::Result<()>;
    /// capget(2) of this thread.
    fn capget(&self) -> io::Result<CapSets>;
    /// PR_CAP_AMBIENT_CLEAR_ALL.
    fn clear_ambient(&self) -> io::Result<()>;
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linux;

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Syscall for Linux {
    fn close_fds_above_stdio(&self) {
        sys::close_fds_above_stdio();
    }
    fn clear_env(&self) {
        // Single-threaded at this point (first thing in main).
        for (k, _) in std::env::vars_os() {
            std::env::remove_var(k);
        }
    }
    fn umask(&self, mask: u32) {
        sys::set_umask(mask);
    }
    fn set_dumpable(&self, on: bool) -> io::Result<()> {
        nix::sys::prctl::set_dumpable(on).map_err(errno)
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        nix::sys::prctl::set_no_new_privs().map_err(errno)
    }
    fn set_keepcaps(&self, on: bool) -> io::Result<()> {
        nix::sys::prctl::set_keepcaps(on).map_err(errno)
    }
    fn setgroups(&self, groups: &[u32]) -> io::Result<()> {
        let gids: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).map_err(errno)
    }
    fn setresgid(&self, r: u32, e: u32, s: u32) -> io::Result<()> {
        use nix::unistd::Gid;
        nix::unistd::setresgid(Gid::from_raw(r), Gid::from_raw(e), Gid::from_raw(s)).map_err(errno)
    }
    fn setresuid(&self, r: u32, e: u32, s: u32) -> io::Result<()> {
        use nix::unistd::Uid;
        nix::unistd::setresuid(Uid::from_raw(r), Uid::from_raw(e), Uid::from_raw(s)).map_err(errno)
    }
    fn getresuid(&self) -> io::Result<(u32, u32, u32)> {
        let r = nix::unistd::getresuid().map_err(errno)?;
        Ok((r.real.as_raw(), r.effective.as_raw(), r.saved.as_raw()))
    }
    fn getresgid(&self) -> io::Result<(u32, u32, u32)> {
        let r = nix::unistd::getresgid().map_err(errno)?;
        Ok((r.real.as_raw(), r.effective.as_raw(), r.saved.as_raw()))
    }
    fn setfsuid(&self, uid: u32) -> u32 {
        sys::setfsuid(uid)
    }
    fn setfsgid(&self, gid: u32) -> u32 {
        sys::setfsgid(gid)
    }
    fn capset(&self, sets: CapSets) -> io::Result<()> {
        sys::capset(sets)
    }
    fn capget(&self) -> io::Result<CapSets> {
        sys::capget()
    }
    fn clear_ambient(&self) -> io::Result<()> {
        sys::clear_ambient_caps()
    }
}

/// Whether this process runs setuid: its real uid is not its effective uid.
pub fn is_setuid() -> bool {
    nix::unistd::getuid() != nix::unistd::geteuid()
}

/// The first thing a setuid tend-spawn does, before it reads anything: refuse
/// argc 0, clear the environment (LD_PRELOAD, GCONV_PATH, locale and tracing
/// variables: nothing of the caller's steers a root process), close every fd
/// above 2, set [`UMASK`], become non-dumpable (no ptrace, no core, /proc files
/// root's), and set no_new_privs for everything it execs.
pub fn early_sanitize(sys: &dyn Syscall, argc: usize) -> Result<(), SetuidError> {
    if argc == 0 {
        return Err(SetuidError::ArgcZero);
    }
    step("PR_SET_DUMPABLE 0", sys.set_dumpable(false))?;
    sys.clear_env();
    sys.close_fds_above_stdio();
    sys.umask(UMASK);
    step("PR_SET_NO_NEW_PRIVS 1", sys.set_no_new_privs())?;
    Ok(())
}

/// Run `f` with the fsuid and fsgid of the caller, so every file it opens or
/// creates is checked and owned as the caller's, never root's; then back to
/// the previous ids. Each change is read back; a mismatch is an error (and `f`
/// does not run). The caller's supplementary groups are the process's own, so
/// group access is the caller's too. fsuid and fsgid are per thread: the
/// daemon is single-threaded, and `f` must not hand work to another thread.
pub fn as_caller<T>(
    sys: &dyn Syscall,
    caller: &CallerIds,
    f: impl FnOnce() -> T,
) -> Result<T, SetuidError> {
    with_fs_ids(sys, caller.uid, caller.gid, f)
}

/// Run `f` with fsuid `uid` and fsgid `gid`, then back to the previous ones
/// (each change read back, as [`as_caller`] says). With `0, 0` this is how a
/// daemon that otherwise works as the caller ([`enter_caller_fs`]) does one
/// privileged file step: a cgroup write, a chown of the task's `local/`.
pub fn with_fs_ids<T>(
    sys: &dyn Syscall,
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> T,
) -> Result<T, SetuidError> {
    let old_gid = sys.setfsgid(gid);
    verify_fs(sys, "fsgid", gid, true)?;
    let old_uid = sys.setfsuid(uid);
    if let Err(e) = verify_fs(sys, "fsuid", uid, false) {
        sys.setfsgid(old_gid);
        return Err(e);
    }
    let out = f();
    sys.setfsuid(old_uid);
    verify_fs(sys, "fsuid", old_uid, false)?;
    sys.setfsgid(old_gid);
    verify_fs(sys, "fsgid", old_gid, true)?;
    Ok(out)
}

/// From here on, every file the process opens or creates is checked and owned
/// as the caller's (fsuid and fsgid), until [`drop_to_caller`] makes it the
/// caller for good. The kernel also clears the file capabilities
/// (`CAP_DAC_OVERRIDE`, `CAP_CHOWN`, `CAP_FOWNER`, ...) from the effective set
/// while the fsuid is not 0, so a path the daemon forgot to treat as the
/// caller's is the caller's anyway: privilege for files is opt-in, through
/// [`with_fs_ids`] with 0.
pub fn enter_caller_fs(sys: &dyn Syscall, caller: &CallerIds) -> Result<(), SetuidError> {
    sys.setfsgid(caller.gid);
    verify_fs(sys, "fsgid", caller.gid, true)?;
    sys.setfsuid(caller.uid);
    verify_fs(sys, "fsuid", caller.uid, false)
}

/// Where the policy is: `<dir of this executable>/spawn-policy.hcl` when that
/// file exists, else [`crate::policy::DEFAULT_PATH`].
///
/// Why a policy beside the binary is safe: the executable's dir comes from the
/// kernel (`/proc/self/exe`), never from argv, the environment or the config;
/// and [`crate::policy::Policy::load`] refuses the file unless it and every dir
/// above it are root's and not group/other writable. A user cannot make such a
/// dir hold a setuid tend-spawn: copying it drops the setuid bit, and a hard
/// link needs write access to the dir (and `fs.protected_hardlinks`, on by
/// default, refuses links to files the user does not own). So a policy found
/// there was put there by root, next to the binary root installed: it grants
/// nothing root did not. Tests use it to run a private install side by side
/// with the host's; a host install normally has none and uses /etc.
pub fn policy_path() -> std::path::PathBuf {
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        if let Some(dir) = exe.parent() {
            let beside = dir.join(POLICY_BESIDE_BINARY);
            if std::fs::symlink_metadata(&beside).is_ok() {
                return beside;
            }
        }
    }
    std::path::PathBuf::from(crate::policy::DEFAULT_PATH)
}

/// Read the fs id back: `setfs*id(-1)` changes nothing and returns it.
fn verify_fs(
    sys: &dyn Syscall,
    what: &'static str,
    want: u32,
    gid: bool,
) -> Result<(), SetuidError> {
    let got = if gid {
        sys.setfsgid(u32::MAX)
    } else {
        sys.setfsuid(u32::MAX)
    };
    if got != want {
        return Err(SetuidError::Verify {
            what,
            want: want.to_string(),
            got: got.to_string(),
        });
    }
    Ok(())
}

/// The capability sets after the drop: `keep` permitted and effective,
/// nothing inheritable.
pub fn kept_sets(keep: &[Cap]) -> CapSets {
    let mask = keep.iter().fold(0u64, |m, c| m | c.bit());
    CapSets {
        effective: mask,
        permitted: mask,
        inheritable: 0,
    }
}

/// Become the caller for the rest of the process's life, keeping exactly
/// `keep`: PR_SET_KEEPCAPS 1; setgroups(caller's), setresgid(gid x3),
/// setresuid(uid x3) (so root can never be regained: no saved id is 0); capset
/// to `keep` in permitted and effective, nothing inheritable; clear the ambient
/// set; PR_SET_KEEPCAPS 0; non-dumpable again (an id change resets it). Then
/// every id and the sets are read back.
pub fn drop_to_caller(
    sys: &dyn Syscall,
    caller: &CallerIds,
    keep: &[Cap],
) -> Result<(), SetuidError> {
    let (uid, gid) = (caller.uid, caller.gid);
    if uid == 0 || gid == 0 {
        // Dropping "to root" keeps everything: never what setuid mode means.
        return Err(SetuidError::Verify {
            what: "caller",
            want: "a uid and gid other than 0".into(),
            got: format!("uid {uid} gid {gid}"),
        });
    }
    step("PR_SET_KEEPCAPS 1", sys.set_keepcaps(true))?;
    step(
        format!("setgroups({:?})", caller.groups),
        sys.setgroups(&caller.groups),
    )?;
    step(
        format!("setresgid({gid}, {gid}, {gid})"),
        sys.setresgid(gid, gid, gid),
    )?;
    step(
        format!("setresuid({uid}, {uid}, {uid})"),
        sys.setresuid(uid, uid, uid),
    )?;
    let want = kept_sets(keep);
    step("capset", sys.capset(want))?;
    step("PR_CAP_AMBIENT_CLEAR_ALL", sys.clear_ambient())?;
    step("PR_SET_KEEPCAPS 0", sys.set_keepcaps(false))?;
    step("PR_SET_DUMPABLE 0", sys.set_dumpable(false))?;
    let ids = step("getresuid", sys.getresuid())?;
    if ids != (uid, uid, uid) {
        return Err(SetuidError::Verify {
            what: "uids",
            want: format!("{uid} {uid} {uid}"),
            got: format!("{} {} {}", ids.0, ids.1, ids.2),
        });
    }
    let ids = step("getresgid", sys.getresgid())?;
    if ids != (gid, gid, gid) {
        return Err(SetuidError::Verify {
            what: "gids",
            want: format!("{gid} {gid} {gid}"),
            got: format!("{} {} {}", ids.0, ids.1, ids.2),
        });
    }
    let got = step("capget", sys.capget())?;
    if got != want {
        return Err(SetuidError::Verify {
            what: "capabilities",
            want: format!("{want:?}"),
            got: format!("{got:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// When this process was exec'd (as near as `main` can tell): the start of
/// the privileged phase, whose length the daemon logs at [`drop_to_caller`].
static EXEC_AT: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Note the start of the process; the first thing `main` does.
pub fn mark_exec() {
    let _ = EXEC_AT.set(std::time::Instant::now());
}

/// How long since [`mark_exec`].
pub fn since_exec() -> Option<std::time::Duration> {
    EXEC_AT.get().map(std::time::Instant::elapsed)
}

/// What a setuid run knows once the policy has said yes: who called, the
/// policy, and who the task runs as.
#[derive(Debug, Clone)]
pub struct Context {
    /// The caller (real ids).
    pub caller: crate::policy::Caller,
    /// The same, as the ids the daemon drops to.
    pub ids: CallerIds,
    /// The policy that allowed the config.
    pub policy: crate::policy::Policy,
    /// The task's user: the policy's task user, or the caller for raw_exec
    /// (never root: the daemon starts it while it still is).
    pub task: crate::child::Isolation,
}

impl Context {
    /// Load the policy ([`policy_path`], as root: it may be root-only
    /// readable), switch file access to the caller's ([`enter_caller_fs`]),
    /// fill in the limits `config` leaves to the policy
    /// ([`crate::policy::Policy::apply_defaults`]) and check it against every
    /// rule, as the caller. Any refusal is the one line to report; nothing has
    /// been created or started then.
    pub fn establish(config: &mut tend_proto::SpawnConfig) -> Result<Context, EstablishError> {
        use crate::policy::{Caller, Policy, SystemAccounts};
        let caller = Caller::current().map_err(EstablishError::CallerIds)?;
        let ids = CallerIds::from(&caller);
        let path = as_caller(&Linux, &ids, policy_path)?;
        let policy = Policy::load(&path)?;
        enter_caller_fs(&Linux, &ids)?;
        policy.apply_defaults(config);
        policy.check(&caller, config)?;
        let task = match &config.isolation {
            Some(iso) => {
                let acct = policy.check_task_user(&iso.user, &SystemAccounts)?;
                crate::child::Isolation {
                    uid: acct.uid,
                    gid: acct.gid,
                }
            }
            None => crate::child::Isolation {
                uid: caller.uid,
                gid: caller.gid,
            },
        };
        if task.uid == 0 || task.gid == 0 {
            return Err(EstablishError::RootTask {
                policy: policy.path.clone(),
                uid: task.uid,
                gid: task.gid,
            });
        }
        Ok(Context {
            caller,
            ids,
            policy,
            task,
        })
    }

    /// Run `f` with root's file access (fsuid and fsgid 0), then back to the
    /// caller's: for the privileged steps only (cgroup files, the chown of the
    /// task's `local/`, the policy).
    pub fn privileged<T>(&self, f: impl FnOnce() -> T) -> Result<T, SetuidError> {
        with_fs_ids(&Linux, 0, 0, f)
    }
}

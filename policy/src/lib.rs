//! The setuid policy: what a caller who is not root may ask of a setuid
//! `tend-spawn`, read from a root-owned file (default [`DEFAULT_PATH`]).
//!
//! The file is a small, strict subset of HCL, parsed by the hand-written parser
//! below: one `name = value` attribute per line, where a value is a string
//! (`"..."`, escapes `\"` and `\\` only, no `${` or `%{` templates), a
//! non-negative integer, `true`/`false`, or a one-line list of strings; `#` and
//! `//` comments. Unknown names and duplicates are refused with `FILE:LINE: ...`.
//! No HCL crate is used on purpose: this code runs in a setuid binary, on a file
//! that decides who gets root's help, and a few hundred audited lines are
//! easier to trust than a general parser and its dependency tree.
//!
//! ```hcl
//! allow_groups   = ["tend"]          # callers in these groups may use tend-spawn
//! task_users     = ["nobody"]        # users tasks may run as (never root)
//! chroot_sources = ["/bin", "/etc", "/lib", "/lib64", "/usr"]
//! cgroup_parent  = "tend"            # task cgroups: <parent>/<caller uid>/...
//! data_roots     = ["/srv/tend"]     # alloc dirs must lie below, owned by the caller
//! run_roots      = ["/run/tend-user"]
//! max_memory_mb  = 4096            # bounds every task with a cgroup
//! max_pids       = 1024
//! default_memory_mb = 300           # what a task that names no limit gets
//! default_pids   = 1024
//! ```
//!
//! [`Policy::load`] refuses a file that anyone but root could have changed: the
//! file and every dir above it must be owned by root and not writable by group
//! or other, checked on fds opened one component at a time without following
//! symlinks. [`Policy::check`] tests one [`SpawnConfig`] against every rule; a
//! refusal is one line naming the rule:
//! `policy /etc/tend/spawn-policy.hcl: task_users: user "root" is never allowed`.

//!
//! Modules: `caller` (who asks: uid, groups, the accounts database), `parse`
//! (the file's syntax, and writing it back), `check` (the rules a config must
//! pass) and `trusted` (opening files and dirs only their owner could have
//! changed).
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

mod caller;
mod check;
mod parse;
mod trusted;

pub use caller::{Account, Accounts, Caller, SystemAccounts};
pub use trusted::open_caller_dir;

use trusted::read_trusted;

/// Where the policy lives unless the build says otherwise.
pub const DEFAULT_PATH: &str = "/etc/tend/spawn-policy.hcl";

/// The name of a policy beside the installed tend-spawn binary, which a setuid
/// tend-spawn reads instead of [`DEFAULT_PATH`] when it exists (tend-spawn's
/// `setuid::policy_path` says why that is safe).
pub const POLICY_BESIDE_BINARY: &str = "spawn-policy.hcl";

/// Largest policy file read, bytes.
pub const MAX_POLICY_LEN: u64 = 64 * 1024;

/// The chroot sources allowed when the file names none.
pub const DEFAULT_CHROOT_SOURCES: [&str; 7] =
    ["/bin", "/etc", "/lib", "/lib32", "/lib64", "/sbin", "/usr"];

/// The task users allowed when the file names none.
pub const DEFAULT_TASK_USERS: [&str; 1] = ["nobody"];

/// The caller groups allowed when the file names no caller at all.
pub const DEFAULT_ALLOW_GROUPS: [&str; 1] = ["tend"];

/// The cgroup parent when the file names none.
pub const DEFAULT_CGROUP_PARENT: &str = "tend";

/// `max_memory_mb` when the file names none.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 4096;

/// `max_pids` when the file names none.
pub const DEFAULT_MAX_PIDS: u64 = 1024;

/// `default_memory_mb` when the file names none (never above `max_memory_mb`).
pub const DEFAULT_MEMORY_MB: u64 = 300;

/// `default_pids` when the file names none (never above `max_pids`).
pub const DEFAULT_PIDS: u64 = 1024;

const MIB: u64 = 1024 * 1024;

/// Why the policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Opening or reading a component of the path failed.
    #[error("policy {}: {what}: {source}", .path.display())]
    Io {
        /// The policy file.
        path: PathBuf,
        /// The component or step that failed.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file or a dir above it could be changed by someone other than root.
    #[error("policy {}: {reason}", .path.display())]
    Unsafe {
        /// The policy file.
        path: PathBuf,
        /// What is wrong, naming the component.
        reason: String,
    },
    /// A line of the file is wrong.
    #[error("{}:{line}: {message}", .path.display())]
    Syntax {
        /// The policy file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A config the policy refuses: one line naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {}: {rule}: {reason}", .policy.display())]
pub struct PolicyRefusal {
    /// The policy file.
    pub policy: PathBuf,
    /// The rule that refused: the policy field, or the config field the
    /// policy requires (`isolation.chroot`).
    pub rule: &'static str,
    /// Why, naming the value.
    pub reason: String,
}

/// The parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file it came from (named in every message).
    pub path: PathBuf,
    /// Callers allowed by name or uid.
    pub allow_users: Vec<String>,
    /// Callers allowed by group (primary or supplementary), name or gid.
    pub allow_groups: Vec<String>,
    /// Users a task may run as, by name or uid. Never root.
    pub task_users: Vec<String>,
    /// Host paths that may be bound into a task's root (they and what is below).
    pub chroot_sources: Vec<PathBuf>,
    /// The cgroup under which task cgroups go, relative to each hierarchy's root.
    pub cgroup_parent: String,
    /// Dirs under which a caller's alloc dirs must lie.
    pub data_roots: Vec<PathBuf>,
    /// Dirs under which a caller's socket dirs must lie.
    pub run_roots: Vec<PathBuf>,
    /// Upper bound on the memory limit of a task with a cgroup, MB.
    pub max_memory_mb: u64,
    /// Upper bound on the pids.max of a task with a cgroup.
    pub max_pids: u64,
    /// The memory limit, MB, of a task whose cgroup names none (at most
    /// `max_memory_mb`).
    pub default_memory_mb: u64,
    /// The pids.max of a task whose cgroup names none (at most `max_pids`).
    pub default_pids: u64,
}

impl Policy {
    /// The policy of a file that names nothing: the defaults.
    pub fn defaults(path: &Path) -> Policy {
        Policy {
            path: path.to_path_buf(),
            allow_users: Vec::new(),
            allow_groups: DEFAULT_ALLOW_GROUPS.iter().map(|s| s.to_string()).collect(),
            task_users: DEFAULT_TASK_USERS.iter().map(|s| s.to_string()).collect(),
            chroot_sources: DEFAULT_CHROOT_SOURCES.iter().map(PathBuf::from).collect(),
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_string(),
            data_roots: Vec::new(),
            run_roots: Vec::new(),
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            max_pids: DEFAULT_MAX_PIDS,
            default_memory_mb: DEFAULT_MEMORY_MB,
            default_pids: DEFAULT_PIDS,
        }
    }

    /// Read the policy at `path` (absolute), after checking that it and every
    /// dir above it are owned by root and not writable by group or other.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::load_under(Path::new("/"), path, 0)
    }

    /// [`Policy::load`] with the walk starting at `anchor` (which is checked
    /// too) and `owner` as the only trusted uid: for tests and `tend doctor`
    /// on a tree in a temp dir. `path` is absolute, or relative to `anchor`.
    pub fn load_under(anchor: &Path, path: &Path, owner: u32) -> Result<Policy, PolicyError> {
        let text = read_trusted(anchor, path, owner)?;
        Policy::parse(path, &text)
    }
}

#[cfg(test)]
mod tests;

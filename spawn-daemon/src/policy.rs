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

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use tend_proto::SpawnConfig;

/// Where the policy lives unless the build says otherwise.
pub const DEFAULT_PATH: &str = "/etc/tend/spawn-policy.hcl";

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

/// Who runs the setuid binary: its real ids, never the effective ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// The real ids of this process.
    pub fn current() -> io::Result<Caller> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let groups = nix::unistd::getgroups()
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(Caller { uid, gid, groups })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A user as the accounts database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// Name lookups, behind a trait so the checks are tested without /etc/passwd.
pub trait Accounts {
    /// A user by name, or by uid when `user` is all digits.
    fn user(&self, user: &str) -> Option<Account>;
    /// A group's gid by name.
    fn group(&self, name: &str) -> Option<u32>;
}

/// The host's accounts (getpwnam, getpwuid, getgrnam through nix).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn user(&self, user: &str) -> Option<Account> {
        let found = match parse_id(user) {
            Some(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            None => nix::unistd::User::from_name(user),
        };
        found.ok().flatten().map(|u| Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }

    fn group(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// A number when `s` is all ASCII digits (a uid or gid written as such).
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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

/// One parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "a number",
            Value::Bool(_) => "a bool",
            Value::List(_) => "a list",
        }
    }
}

const FIELDS: [&str; 11] = [
    "allow_users",
    "allow_groups",
    "task_users",
    "chroot_sources",
    "cgroup_parent",
    "data_roots",
    "run_roots",
    "max_memory_mb",
    "max_pids",
    "default_memory_mb",
    "default_pids",
];

fn is_root_name(user: &str) -> bool {
    user == "root" || parse_id(user) == Some(0)
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

    /// Parse the text of a policy file; `path` is only named in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let mut p = Policy::defaults(path);
        let mut seen: Vec<&'static str> = Vec::new();
        let mut callers_named = false;
        // Where each limit was set, for a default above its bound.
        let mut lines: Vec<(&'static str, usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| PolicyError::Syntax {
                path: path.to_path_buf(),
                line,
                message,
            };
            let Some((name, value)) = parse_line(raw).map_err(err)? else {
                continue;
            };
            let Some(field) = FIELDS.iter().copied().find(|f| *f == name) else {
                return Err(err(format!("unknown attribute {name:?}")));
            };
            if seen.contains(&field) {
                return Err(err(format!("{field}: set twice")));
            }
            seen.push(field);
            let want = |kind: &str| err(format!("{field}: expected {kind}, got {}", value.kind()));
            match field {
                "allow_users" | "allow_groups" | "task_users" => {
                    let Value::List(items) = value else {
                        return Err(want("a list of strings"));
                    };
                    for it in &items {
                        if it.is_empty() || it.contains(|c: char| c.is_whitespace() || c == ':') {
                            return Err(err(format!("{field}: {it:?} is not a name or an id")));
                        }
                        if field == "task_users" && is_root_name(it) {
                            return Err(err(format!(
                                "task_users: user {it:?} is never allowed (tasks never run as root)"
                            )));
                        }
                    }
                    match field {
                        "allow_users" => {
                            p.allow_users = items;
                            callers_named = true;
                        }
                        "allow_groups" => {
                            p.allow_groups = items;
                            callers_named = true;
                        }
                        _ => p.task_users = items,
                    }
                }
                "chroot_sources" | "data_roots" | "run_roots" => {
                    let Value::List(items) = value else {
                        return Err(want("a list of paths"));
                    };
                    let mut paths = Vec::with_capacity(items.len());
                    for it in &items {
                        paths.push(clean_absolute(it).map_err(|m| err(format!("{field}: {m}")))?);
                    }
                    if field != "chroot_sources" && paths.iter().any(|p| p == Path::new("/")) {
                        return Err(err(format!("{field}: \"/\" is too wide a root")));
                    }
                    match field {
                        "chroot_sources" => p.chroot_sources = paths,
                        "data_roots" => p.data_roots = paths,
                        _ => p.run_roots = paths,
                    }
                }
                "cgroup_parent" => {
                    let Value::Str(s) = value else {
                        return Err(want("a string"));
                    };
                    let ok = !s.is_empty()
                        && Path::new(&s)
                            .components()
                            .all(|c| matches!(c, Component::Normal(_)));
                    if !ok {
                        return Err(err(format!(
                            "cgroup_parent: {s:?} must be a relative path without '..'"
                        )));
                    }
                    p.cgroup_parent = s.trim_end_matches('/').to_string();
                }
                "max_memory_mb" | "max_pids" | "default_memory_mb" | "default_pids" => {
                    let Value::Int(n) = value else {
                        return Err(want("a number"));
                    };
                    if n == 0 {
                        return Err(err(format!("{field}: must be more than 0")));
                    }
                    if field.ends_with("memory_mb") && n.checked_mul(MIB).is_none() {
                        return Err(err(format!("{field}: {n} is too large")));
                    }
                    match field {
                        "max_memory_mb" => p.max_memory_mb = n,
                        "max_pids" => p.max_pids = n,
                        "default_memory_mb" => p.default_memory_mb = n,
                        _ => p.default_pids = n,
                    }
                    lines.push((field, line));
                }
                _ => return Err(err(format!("unknown attribute {name:?}"))),
            }
        }
        if callers_named && !seen.contains(&"allow_groups") {
            // Naming callers by user replaces the default group, not adds to it.
            p.allow_groups.clear();
        }
        p.bound_defaults(path, &lines)?;
        Ok(p)
    }

    /// A default above its bound: refused when the file wrote the default,
    /// else lowered to the bound the file wrote (defaults are bounded by the
    /// maxima, never the other way round).
    fn bound_defaults(
        &mut self,
        path: &Path,
        lines: &[(&'static str, usize)],
    ) -> Result<(), PolicyError> {
        let line_of = |f: &str| lines.iter().find(|(n, _)| *n == f).map(|(_, l)| *l);
        for (dflt, max) in [
            ("default_memory_mb", "max_memory_mb"),
            ("default_pids", "max_pids"),
        ] {
            let (d, m) = if dflt == "default_pids" {
                (&mut self.default_pids, self.max_pids)
            } else {
                (&mut self.default_memory_mb, self.max_memory_mb)
            };
            if *d <= m {
                continue;
            }
            match line_of(dflt) {
                Some(line) => {
                    return Err(PolicyError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        message: format!("{dflt}: {d} is over {max} ({m})"),
                    })
                }
                None => *d = m,
            }
        }
        Ok(())
    }

    /// Fill in the limits a task's cgroup does not name: `default_memory_mb`
    /// and `default_pids`. A config without a cgroup is left as it is (the
    /// check refuses one that runs a task as another user).
    pub fn apply_defaults(&self, config: &mut SpawnConfig) {
        if let Some(cg) = config.cgroup.as_mut() {
            cg.memory_bytes.get_or_insert(self.default_memory_mb * MIB);
            cg.pids_max.get_or_insert(self.default_pids);
        }
    }

    fn refuse(&self, rule: &'static str, reason: String) -> PolicyRefusal {
        PolicyRefusal {
            policy: self.path.clone(),
            rule,
            reason,
        }
    }

    /// Check `config` from `caller` against every rule, with the host's accounts
    /// and file system.
    pub fn check(&self, caller: &Caller, config: &SpawnConfig) -> Result<(), PolicyRefusal> {
        self.check_with(caller, config, &SystemAccounts)
    }

    /// [`Policy::check`] with the accounts given.
    ///
    /// With no `isolation` (raw_exec) the task runs as the caller itself: the
    /// daemon drops to the caller before it starts it, so no task user is checked.
    pub fn check_with(
        &self,
        caller: &Caller,
        config: &SpawnConfig,
        accounts: &dyn Accounts,
    ) -> Result<(), PolicyRefusal> {
        self.check_caller(caller, accounts)?;
        if let Some(iso) = &config.isolation {
            self.check_task_user(&iso.user, accounts)?;
            // A task outside a chroot sees the host's root, and through
            // /proc/<pid>/root the root of every chrooted task of its user.
            let Some(ch) = &iso.chroot else {
                return Err(self.refuse(
                    "isolation.chroot",
                    format!(
                        "a task that runs as {:?} must have a chroot (its own mount namespace and root)",
                        iso.user
                    ),
                ));
            };
            for b in &ch.binds {
                self.check_chroot_source(&b.source)?;
            }
        }
        self.check_cgroup(caller, config)?;
        self.check_caller_dir("data_roots", &self.data_roots, caller, &config.alloc_dir)?;
        let sock = Path::new(&config.socket_path);
        let sock_dir = sock.parent().unwrap_or(Path::new("/"));
        let sock_dir = sock_dir.to_str().unwrap_or("/");
        self.check_caller_dir("run_roots", &self.run_roots, caller, sock_dir)?;
        Ok(())
    }

    /// Rule `allow_users` / `allow_groups`: the caller is named, or is in a group named.
    pub fn check_caller(
        &self,
        caller: &Caller,
        accounts: &dyn Accounts,
    ) -> Result<(), PolicyRefusal> {
        let by_user = self.allow_users.iter().any(|u| match parse_id(u) {
            Some(uid) => uid == caller.uid,
            None => accounts.user(u).is_some_and(|a| a.uid == caller.uid),
        });
        let by_group = self.allow_groups.iter().any(|g| match parse_id(g) {
            Some(gid) => caller.in_group(gid),
            None => accounts.group(g).is_some_and(|gid| caller.in_group(gid)),
        });
        if by_user || by_group {
            return Ok(());
        }
        let rule = if self.allow_users.is_empty() {
            "allow_groups"
        } else {
            "allow_users"
        };
        Err(self.refuse(
            rule,
            format!(
                "uid {} is not allowed to use tend-spawn (allow_users {:?}, allow_groups {:?})",
                caller.uid, self.allow_users, self.allow_groups
            ),
        ))
    }

    /// Rule `task_users`: the task's user is listed, resolves, and is not root
    /// (uid 0 or primary gid 0), whatever the file says. Returns the account.
    pub fn check_task_user(
        &self,
        user: &str,
        accounts: &dyn Accounts,
    ) -> Result<Account, PolicyRefusal> {
        if is_root_name(user) {
            return Err(self.refuse("task_users", format!("user {user:?} is never allowed")));
        }
        let Some(acct) = accounts.user(user) else {
            return Err(self.refuse("task_users", format!("user {user:?}: no such user")));
        };
        if acct.uid == 0 || acct.gid == 0 {
            return Err(self.refuse(
                "task_users",
                format!(
                    "user {user:?} (uid {}, gid {}) is never allowed: root's uid or group",
                    acct.uid, acct.gid
                ),
            ));
        }
        // By name AND uid: the task's gid comes from its passwd entry, so an
        // entry that shares a listed user's uid under another name (and maybe
        // another group) is not that user.
        let mut same_uid = None;
        for t in &self.task_users {
            let Some(listed) = accounts.user(t) else {
                continue;
            };
            if listed == acct {
                return Ok(acct);
            }
            if listed.uid == acct.uid {
                same_uid.get_or_insert(listed);
            }
        }
        match same_uid {
            Some(listed) => Err(self.refuse(
                "task_users",
                format!(
                    "user {:?} (uid {}, gid {}) shares its uid with {:?} (uid {}, gid {}) of task_users \
                     but is another passwd entry: only the entry named in task_users is allowed",
                    acct.name, acct.uid, acct.gid, listed.name, listed.uid, listed.gid
                ),
            )),
            None => Err(self.refuse(
                "task_users",
                format!("user {user:?} is not in {:?}", self.task_users),
            )),
        }
    }

    /// Rule `chroot_sources`: the bind source is an allowed source or below one,
    /// written canonically, and no component of it is a symlink.
    pub fn check_chroot_source(&self, source: &str) -> Result<(), PolicyRefusal> {
        let refuse =
            |why: String| self.refuse("chroot_sources", format!("bind source {source:?} {why}"));
        let clean = clean_absolute(source).map_err(|m| self.refuse("chroot_sources", m))?;
        if clean.as_os_str() != OsStr::new(source) {
            return Err(refuse(format!(
                "is not canonical (write {:?})",
                clean.display().to_string()
            )));
        }
        if !self.chroot_sources.iter().any(|a| clean.starts_with(a)) {
            return Err(refuse(format!(
                "is not allowed ({:?})",
                self.chroot_sources
            )));
        }
        match std::fs::canonicalize(&clean) {
            Ok(real) if real == clean => Ok(()),
            Ok(real) => Err(refuse(format!(
                "goes through a symlink (to {:?})",
                real.display().to_string()
            ))),
            Err(e) => Err(refuse(format!("cannot be resolved: {e}"))),
        }
    }

    /// Rules `max_memory_mb`, `max_pids`, `cgroup_parent`: the task's cgroup is
    /// `<cgroup_parent>/<caller uid>/...` (the daemon's too), and it names
    /// limits within the bounds ([`Policy::apply_defaults`] fills in the ones a
    /// request leaves out). A task that runs as another user (`isolation`)
    /// must have a cgroup; one that runs as the caller (raw_exec) needs none:
    /// it gets nothing the caller could not start itself.
    pub fn check_cgroup(&self, caller: &Caller, config: &SpawnConfig) -> Result<(), PolicyRefusal> {
        let Some(cg) = &config.cgroup else {
            if let Some(iso) = &config.isolation {
                return Err(self.refuse(
                    "max_memory_mb",
                    format!(
                        "a task that runs as {:?} must have a cgroup, for its memory and pids limits",
                        iso.user
                    ),
                ));
            }
            return Ok(());
        };
        let base = Path::new(&self.cgroup_parent).join(caller.uid.to_string());
        let under = |p: &str| {
            let p = Path::new(p);
            p.starts_with(&base)
                && p.components().count() > base.components().count()
                && p.components().all(|c| matches!(c, Component::Normal(_)))
        };
        if !under(&cg.path) {
            return Err(self.refuse(
                "cgroup_parent",
                format!(
                    "cgroup {:?} is not below {:?}",
                    cg.path,
                    base.display().to_string()
                ),
            ));
        }
        if let Some(d) = &cg.daemon_path {
            if !under(d) {
                return Err(self.refuse(
                    "cgroup_parent",
                    format!(
                        "daemon cgroup {d:?} is not below {:?}",
                        base.display().to_string()
                    ),
                ));
            }
        }
        let max = self.max_memory_mb;
        match cg.memory_bytes {
            None => {
                return Err(self.refuse(
                    "max_memory_mb",
                    format!("the task has no memory limit (at most {max} MB)"),
                ))
            }
            Some(m) if m > max.saturating_mul(MIB) => {
                return Err(self.refuse(
                    "max_memory_mb",
                    format!("memory limit {} MB is over {max} MB", m.div_ceil(MIB)),
                ))
            }
            Some(_) => {}
        }
        let max = self.max_pids;
        match cg.pids_max {
            None => Err(self.refuse(
                "max_pids",
                format!("the task has no pids limit (at most {max})"),
            )),
            Some(n) if n > max => {
                Err(self.refuse("max_pids", format!("pids limit {n} is over {max}")))
            }
            Some(_) => Ok(()),
        }
    }

    /// Rules `data_roots` / `run_roots`: `dir` lies below one of `roots`, and
    /// every component below the root is a real dir (no symlink) owned by the
    /// caller (or by root and not writable by group or other); `dir` itself is
    /// the caller's.
    pub fn check_caller_dir(
        &self,
        rule: &'static str,
        roots: &[PathBuf],
        caller: &Caller,
        dir: &str,
    ) -> Result<(), PolicyRefusal> {
        open_caller_dir(roots, Path::new(dir), caller.uid)
            .map(drop)
            .map_err(|m| self.refuse(rule, m))
    }
}

/// Open `dir` (absolute) for a caller: it must lie strictly below one of
/// `roots`; each component below the root is opened with O_PATH | O_NOFOLLOW |
/// O_DIRECTORY from its parent's fd (a symlink anywhere is refused), must be
/// owned by `uid` or be root's and not group/other-writable, and `dir` itself
/// must be owned by `uid`. Returns the O_PATH fd of `dir`: the daemon works from
/// it, so swapping a component afterwards changes nothing.
pub fn open_caller_dir(roots: &[PathBuf], dir: &Path, uid: u32) -> Result<OwnedFd, String> {
    let shown = dir.display().to_string();
    let clean = clean_absolute(&shown)?;
    let Some(root) = roots.iter().find(|r| clean.starts_with(r) && clean != **r) else {
        return Err(format!("{shown:?} is not below any of {roots:?}"));
    };
    let rest = clean
        .strip_prefix(root)
        .map_err(|_| format!("{shown:?}: bad path"))?;
    let mut fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("root {:?}: {}", root.display().to_string(), e.desc()))?;
    let mut at = root.clone();
    let mut comps = rest.components().peekable();
    while let Some(c) = comps.next() {
        let name = c.as_os_str();
        at.push(name);
        let next = open_dir_nofollow(fd.as_fd(), name, &at)?;
        let st =
            fstat(&next).map_err(|e| format!("{:?}: {}", at.display().to_string(), e.desc()))?;
        let last = comps.peek().is_none();
        let owned = st.st_uid == uid;
        let rootsafe = st.st_uid == 0 && st.st_mode & 0o022 == 0;
        if last && !owned {
            return Err(format!(
                "{:?} is owned by uid {}, not by the caller (uid {uid})",
                at.display().to_string(),
                st.st_uid
            ));
        }
        if !owned && !rootsafe {
            return Err(format!(
                "{:?} is owned by uid {} and is neither the caller's nor root's alone",
                at.display().to_string(),
                st.st_uid
            ));
        }
        fd = next;
    }
    Ok(fd)
}

fn open_dir_nofollow(parent: BorrowedFd<'_>, name: &OsStr, at: &Path) -> Result<OwnedFd, String> {
    let shown = at.display().to_string();
    match openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            // O_PATH | O_NOFOLLOW may hand back the link itself: look.
            let st = fstat(&fd).map_err(|e| format!("{shown:?}: {}", e.desc()))?;
            if kind(&st) == SFlag::S_IFLNK {
                return Err(format!("{shown:?} is a symlink"));
            }
            if kind(&st) != SFlag::S_IFDIR {
                return Err(format!("{shown:?} is not a dir"));
            }
            Ok(fd)
        }
        Err(e) => {
            let is_link = fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| kind(&st) == SFlag::S_IFLNK);
            if is_link {
                Err(format!("{shown:?} is a symlink"))
            } else {
                Err(format!("{shown:?}: {}", e.desc()))
            }
        }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// An absolute path without `.`, `..`, `//` or a trailing `/`, or why not.
fn clean_absolute(s: &str) -> Result<PathBuf, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if s.contains('\0') {
        return Err(format!("{s:?} holds a NUL byte"));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(s).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{s:?} holds '.' or '..'"))
            }
        }
    }
    Ok(out)
}

/// Check the ownership chain from `anchor` down to `path` and read the file.
fn read_trusted(anchor: &Path, path: &Path, owner: u32) -> Result<String, PolicyError> {
    let io_err = |what: String, source: io::Error| PolicyError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let unsafe_ = |reason: String| PolicyError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    let rel = if path.is_absolute() {
        path.strip_prefix(anchor)
            .map_err(|_| unsafe_(format!("is not below {}", anchor.display())))?
    } else {
        path
    };
    let comps: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(unsafe_("holds '.' or '..'".into())),
        })
        .collect::<Result<_, _>>()?;
    let Some((file, dirs)) = comps.split_last() else {
        return Err(unsafe_("names no file".into()));
    };
    let errno_io = |e: Errno| io::Error::from_raw_os_error(e as i32);
    let mut at = anchor.to_path_buf();
    let mut dir = nix::fcntl::open(
        anchor,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
    let trusted = |st: &FileStat, at: &Path| -> Result<(), PolicyError> {
        if st.st_uid != owner {
            return Err(unsafe_(format!(
                "{} is owned by uid {}, not root: refusing to run setuid",
                at.display(),
                st.st_uid
            )));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(unsafe_(format!(
                "{} is writable by group or other (mode {:o}): refusing to run setuid",
                at.display(),
                st.st_mode & 0o7777
            )));
        }
        Ok(())
    };
    let st = fstat(&dir).map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
    trusted(&st, &at)?;
    for name in dirs {
        at.push(name);
        let next = open_dir_nofollow(dir.as_fd(), name, &at).map_err(unsafe_)?;
        let st = fstat(&next).map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
        trusted(&st, &at)?;
        dir = next;
    }
    at.push(file);
    let fd = openat(
        dir.as_fd(),
        *file,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => unsafe_(format!("{} is a symlink", at.display())),
        e => io_err(at.display().to_string(), errno_io(e)),
    })?;
    let st = fstat(&fd).map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(unsafe_(format!("{} is not a regular file", at.display())));
    }
    trusted(&st, &at)?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_POLICY_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_err(at.display().to_string(), e))?;
    if text.len() as u64 > MAX_POLICY_LEN {
        return Err(unsafe_(format!("is over {MAX_POLICY_LEN} bytes")));
    }
    Ok(text)
}

/// One line: None for blank and comment lines, else the name and its value.
fn parse_line(raw: &str) -> Result<Option<(&str, Value)>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected `name = value`, got {:?}", shorten(line)));
    }
    let rest = line[name_end..].trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return Err(format!("{name}: expected `=` after the name"));
    };
    let mut cur = Cursor {
        s: rest.trim_start(),
        name,
    };
    let value = cur.value()?;
    cur.end()?;
    Ok(Some((name, value)))
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

struct Cursor<'a> {
    s: &'a str,
    name: &'a str,
}

impl Cursor<'_> {
    fn value(&mut self) -> Result<Value, String> {
        let name = self.name;
        match self.s.chars().next() {
            Some('"') => self.string().map(Value::Str),
            Some('[') => {
                self.s = self.s[1..].trim_start();
                let mut items = Vec::new();
                loop {
                    if let Some(r) = self.s.strip_prefix(']') {
                        self.s = r;
                        return Ok(Value::List(items));
                    }
                    if !self.s.starts_with('"') {
                        return Err(format!(
                            "{name}: a list holds strings only, and ends with `]` on the same line"
                        ));
                    }
                    items.push(self.string()?);
                    self.s = self.s.trim_start();
                    if let Some(r) = self.s.strip_prefix(',') {
                        self.s = r.trim_start();
                    } else if !self.s.starts_with(']') {
                        return Err(format!("{name}: expected `,` or `]` in the list"));
                    }
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let end = self
                    .s
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(self.s.len());
                let n = self.s[..end]
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: {:?} is too large", &self.s[..end]))?;
                self.s = &self.s[end..];
                Ok(Value::Int(n))
            }
            _ => {
                for (word, b) in [("true", true), ("false", false)] {
                    if let Some(r) = self.s.strip_prefix(word) {
                        if !r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                            self.s = r;
                            return Ok(Value::Bool(b));
                        }
                    }
                }
                Err(format!(
                    "{name}: expected a string, a number, true, false or a list of strings"
                ))
            }
        }
    }

    /// A quoted string; the cursor is on its opening quote.
    fn string(&mut self) -> Result<String, String> {
        let name = self.name;
        let mut out = String::new();
        let mut chars = self.s.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.s = &self.s[i + 1..];
                    if out.contains("${") || out.contains("%{") {
                        return Err(format!(
                            "{name}: templates (`${{` or `%{{`) are not allowed"
                        ));
                    }
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    _ => {
                        return Err(format!(
                            "{name}: only the escapes \\\" and \\\\ are allowed"
                        ))
                    }
                },
                c if c.is_control() => {
                    return Err(format!("{name}: control character in a string"));
                }
                c => out.push(c),
            }
        }
        Err(format!("{name}: unterminated string"))
    }

    fn end(&mut self) -> Result<(), String> {
        let rest = self.s.trim_start();
        if rest.is_empty() || rest.starts_with('#') || rest.starts_with("//") {
            Ok(())
        } else {
            Err(format!(
                "{}: unexpected {:?} after the value (one attribute per line)",
                self.name,
                shorten(rest)
            ))
        }
    }
}

impl fmt::Display for Policy {
    /// The policy as a file that parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn quote(s: &str) -> String {
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        }
        fn list<T: AsRef<OsStr>>(items: &[T]) -> String {
            let quoted: Vec<String> = items
                .iter()
                .map(|i| quote(&String::from_utf8_lossy(i.as_ref().as_bytes())))
                .collect();
            format!("[{}]", quoted.join(", "))
        }
        if !self.allow_users.is_empty() {
            writeln!(f, "allow_users = {}", list(&self.allow_users))?;
        }
        writeln!(f, "allow_groups = {}", list(&self.allow_groups))?;
        writeln!(f, "task_users = {}", list(&self.task_users))?;
        writeln!(f, "chroot_sources = {}", list(&self.chroot_sources))?;
        writeln!(f, "cgroup_parent = {}", quote(&self.cgroup_parent))?;
        writeln!(f, "data_roots = {}", list(&self.data_roots))?;
        writeln!(f, "run_roots = {}", list(&self.run_roots))?;
        writeln!(f, "max_memory_mb = {}", self.max_memory_mb)?;
        writeln!(f, "max_pids = {}", self.max_pids)?;
        writeln!(f, "default_memory_mb = {}", self.default_memory_mb)?;
        writeln!(f, "default_pids = {}", self.default_pids)
    }
}

#[cfg(test)]
mod tests;

//! The rules a spawn config must pass, each refusal one line naming its rule.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use tend_proto::SpawnConfig;

use crate::caller::{is_root_name, parse_id};
use crate::trusted::{clean_absolute, open_caller_dir};
use crate::{Account, Accounts, Caller, Policy, PolicyRefusal, SystemAccounts, MIB};

impl Policy {
    /// Fill in the limits a task's cgroup does not name: `default_memory_mb`
    /// and `default_pids`. A config without a cgroup is left as it is (the
    /// check refuses one that runs a task as another user).
    pub fn apply_defaults(&self, config: &mut SpawnConfig) {
        if let Some(cg) = config.cgroup.as_mut() {
            cg.memory_bytes.get_or_insert(self.default_memory_mb * MIB);
            cg.pids_max.get_or_insert(self.default_pids);
        }
    }

    pub(crate) fn refuse(&self, rule: &'static str, reason: String) -> PolicyRefusal {
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
            // A writable root's upper dir is named by path in the alloc
            // dir, which is the caller's here: never mounted for a caller.
            if ch.writable_root().is_some() {
                return Err(self.refuse(
                    "isolation.chroot.binds[0]",
                    "a writable root (an overlay of an image) needs tend-spawn run by root, not setuid".into(),
                ));
            }
            for b in &ch.binds {
                self.check_chroot_source(&b.source)?;
            }
        }
        // Namespaces a caller's task could name its host or network in: not
        // for a caller yet.
        if config.namespaces != tend_proto::config::Namespaces::default() {
            return Err(self.refuse(
                "namespaces",
                "uts, ipc and network namespaces need tend-spawn run by root, not setuid".into(),
            ));
        }
        // Mounts and namespaces beyond the chroot_env: not for a caller yet.
        if let Some(e) = config.extras.first() {
            return Err(self.refuse(
                "extras",
                format!("{} needs tend-spawn run by root, not setuid", e.name()),
            ));
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

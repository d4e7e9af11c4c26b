//! Who asks: the caller's ids and groups, and the accounts database that
//! names users and groups.

use std::io;

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

    pub(crate) fn in_group(&self, gid: u32) -> bool {
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
pub(crate) fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn is_root_name(user: &str) -> bool {
    user == "root" || parse_id(user) == Some(0)
}

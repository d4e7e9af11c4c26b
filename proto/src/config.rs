//! [`SpawnConfig`]: everything `tend-spawn` needs to run one task.
//!
//! It travels as one frame on the daemon's stdin. The agent execs the `tend-spawn`
//! that ships with it, so this struct is versioned with the binaries; only the
//! socket messages in [`crate::msg`] must stay readable across versions.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::{self, Frame, FrameError};
use crate::msg::Token;
use crate::names;

/// Log rotation of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Files kept per stream, the current one included (at least 1).
    pub max_files: u32,
    /// Size at which the current file is rotated, bytes (at least 1).
    pub max_file_size: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_files: 10,
            max_file_size: 10 * 1024 * 1024,
        }
    }
}

/// One read-only bind of a host path into the task's root; or, as the first
/// of [`ChrootSpec::binds`] with the target `/`, the image of a writable root
/// (see [`ChrootSpec::writable_root`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path (absolute).
    pub source: String,
    /// Path inside the task's root (absolute).
    pub target: String,
}

/// The task's own root: a private mount namespace and a chroot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChrootSpec {
    /// Host paths bound read-only, nosuid, nodev (the `chroot_env`). A first
    /// entry with the target `/` makes the root writable instead of a tmpfs
    /// of binds: an overlay of its source (never written) with the upper dir
    /// in the task dir.
    pub binds: Vec<Bind>,
}

/// Bytes a writable root's image path may not hold: overlayfs's option
/// separators and its escape.
pub const OVERLAY_SPECIAL: [char; 3] = [',', ':', '\\'];

impl ChrootSpec {
    /// The image of a writable root: the source of a first bind onto `/`.
    /// (A target once refused, so a tend-spawn that predates it refuses it
    /// too, and the frozen encoding stays as it was.)
    pub fn writable_root(&self) -> Option<&str> {
        self.binds
            .first()
            .filter(|b| b.target == "/")
            .map(|b| b.source.as_str())
    }
}

/// The task's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// The task's cgroup, relative to each hierarchy's root ("tend/<alloc>/<task>").
    pub path: String,
    /// Where tend-spawn itself goes, relative to each hierarchy's root; None keeps
    /// it where it was started.
    pub daemon_path: Option<String>,
    /// Memory limit in bytes, with no swap on top.
    pub memory_bytes: Option<u64>,
    /// CPU share in MHz (cpu.shares on v1, cpu.weight on v2).
    pub cpu_mhz: Option<u64>,
    /// pids.max.
    pub pids_max: Option<u64>,
    /// The limits added after the first wire form; they travel after the
    /// config in the same frame ([`SpawnConfig::to_frame`]), so the frozen
    /// encoding of the fields above never changes.
    #[serde(skip)]
    pub options: CgroupOptions,
}

/// cgroup limits beyond [`CgroupSpec`]'s first fields. All off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupOptions {
    /// The soft memory limit in bytes (memory.low on v2,
    /// memory.soft_limit_in_bytes on v1), with `memory_bytes` as the hard one.
    pub memory_soft_bytes: Option<u64>,
    /// A hard CPU cap: cpu.max on v2, cpu.cfs_quota_us / cpu.cfs_period_us on v1.
    pub cpu_quota: Option<CpuQuota>,
    /// The IO weight, 1-10000 (io.weight on v2, blkio.weight scaled to
    /// 10-1000 on v1).
    pub io_weight: Option<u16>,
    /// memory.oom.group = 1: an OOM kill takes the whole task (v2 only).
    pub oom_kill_group: bool,
}

/// A CFS bandwidth limit: `quota_us` of CPU time every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuota {
    /// CPU time allowed per period, microseconds (at least 1000).
    pub quota_us: u64,
    /// The period, microseconds (1000-1000000).
    pub period_us: u64,
}

/// Isolation of the exec driver: who the task runs as and in what root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// User name or numeric uid to run as.
    pub user: String,
    /// The task's own root; None runs it in the host's root.
    pub chroot: Option<ChrootSpec>,
    /// `user`'s uid and primary gid as the agent resolved them (through the
    /// host's NSS, LDAP included): a root tend-spawn takes them as they are
    /// and looks nothing up, so a static build needs no NSS. A setuid
    /// tend-spawn ignores them and resolves `user` from /etc/passwd itself.
    /// Added after the first wire form: travels after the config in the
    /// frame ([`SpawnConfig::to_frame`]).
    #[serde(skip)]
    pub ids: Option<TaskIds>,
}

/// A task user's ids, resolved by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIds {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
}

/// Kernel knobs of the task's /proc made read-only, as runc's defaults.
pub const PROC_READ_ONLY: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// Files of the task's /proc masked with /dev/null, as runc's defaults.
pub const PROC_MASKED_FILES: [&str; 6] = [
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
];
/// Dirs of the task's /proc masked with an empty read-only tmpfs, as runc's defaults.
pub const PROC_MASKED_DIRS: [&str; 3] = ["acpi", "asound", "scsi"];
/// Dirs of a /sys bound into the root (a chroot_env target `/sys`) masked the same way.
pub const SYS_MASKED_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// Everything tend-spawn needs to run one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnConfig {
    /// The allocation id.
    pub alloc_id: String,
    /// The task name (a plain file name).
    pub task: String,
    /// Which start of the task this is, from 1.
    pub run: u32,
    /// The secret every client presents.
    pub token: Token,
    /// The program, after interpolation (absolute, or resolved by the agent).
    pub command: String,
    /// Its arguments, after interpolation; argv\[0\] is `command`.
    pub args: Vec<String>,
    /// The whole environment of the task.
    pub env: Vec<(String, String)>,
    /// The task's working dir, as seen by the task.
    pub cwd: String,
    /// The alloc dir on the host: `<data_dir>/allocs/<alloc_id>`.
    pub alloc_dir: String,
    /// Where the control socket is bound (its dir must exist, mode 0700).
    pub socket_path: String,
    /// Log rotation.
    pub logs: LogConfig,
    /// The signal a stop sends first.
    pub kill_signal: i32,
    /// Milliseconds between it and SIGKILL.
    pub kill_timeout_ms: u64,
    /// How long the daemon stays after the exit, waiting for Release, ms.
    pub linger_ms: u64,
    /// The task's cgroup, if any.
    pub cgroup: Option<CgroupSpec>,
    /// User, root and mounts of the exec driver; None for raw_exec.
    pub isolation: Option<Isolation>,
    /// Where the task's stdin comes from. Added after the first wire form:
    /// it travels after the config (and its cgroup options) in the same
    /// frame ([`SpawnConfig::to_frame`]).
    #[serde(skip)]
    pub stdin: TaskStdin,
    /// When the task's process runs: at once, or held before its execve
    /// until a [`Request::Start`](crate::Request::Start) (`tend-oci create`).
    /// Added after the first wire form: travels after the task's ids
    /// ([`SpawnConfig::to_frame`]).
    #[serde(skip)]
    pub start: TaskStart,
    /// Namespaces of the task's own beyond the mount and pid ones a root
    /// brings; only with an isolation. Added after the first wire form:
    /// travels after the task's start ([`SpawnConfig::to_frame`]).
    #[serde(skip)]
    pub namespaces: Namespaces,
    /// How the starter's first connection to the daemon is made. Added
    /// after the first wire form: it travels last in the frame
    /// ([`SpawnConfig::to_frame`]).
    #[serde(skip)]
    pub first_connection: FirstConnection,
    /// What a task's isolation holds beyond the parts above, each at most
    /// once. They travel as the frame's last part, one list
    /// ([`SpawnConfig::to_frame`]): a new kind is a new [`ConfigExtra`]
    /// variant there, not one more part in the chain, and a tend-spawn that
    /// predates a variant refuses the frame naming the part.
    #[serde(skip)]
    pub extras: Vec<ConfigExtra>,
    /// Whether the process the starter exec'd forks the daemon off and
    /// leaves, or is the daemon itself. Added after the first wire form:
    /// it travels after the extras ([`SpawnConfig::to_frame`]).
    #[serde(skip)]
    pub detach: Detach,
}

/// How tend-spawn leaves the process that started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Detach {
    /// The process the starter exec'd starts a session of its own, forks
    /// the daemon and leaves at once (what a config without this part
    /// means): the starter reaps a process that ends right away, and the
    /// daemon is nobody's child.
    #[default]
    Fork,
    /// The process the starter exec'd starts a session of its own and is
    /// the daemon: a fork, and the copy-on-write faults after it, fewer per
    /// start. Its parent reaps it whenever it ends, so only a starter that
    /// reaps every child it has, and never waits for this one, asks for it
    /// (the agent's spawn launcher). A tend-spawn that predates this part
    /// refuses the frame at the config stage, before it starts anything.
    InPlace,
}

/// One addition to a task's isolation, carried in the frame's last part.
/// Variants are only ever appended: the index is the wire form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigExtra {
    /// Mounts in the task's root after its read-only binds, made in order.
    Mounts(Vec<Mount>),
    /// Paths in the task's root it may not read: `/dev/null` bound over a
    /// file, an empty read-only tmpfs over a dir; a path that does not
    /// exist in the root is skipped (runc's rule).
    MaskedPaths(Vec<String>),
    /// Paths in the task's root bound read-only over themselves; a path
    /// that does not exist in the root is skipped.
    ReadonlyPaths(Vec<String>),
    /// A cgroup namespace of the task's own, rooted at its cgroup.
    CgroupNamespace,
}

impl ConfigExtra {
    /// The variant's name, for errors and for the at-most-once rule.
    pub fn name(&self) -> &'static str {
        match self {
            ConfigExtra::Mounts(_) => "Mounts",
            ConfigExtra::MaskedPaths(_) => "MaskedPaths",
            ConfigExtra::ReadonlyPaths(_) => "ReadonlyPaths",
            ConfigExtra::CgroupNamespace => "CgroupNamespace",
        }
    }
}

/// One mount in the task's root ([`ConfigExtra::Mounts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Path inside the task's root (absolute); its mount point is made
    /// beneath the root, never through a symlink.
    pub target: String,
    /// What is mounted there.
    pub kind: MountKind,
    /// Read-only.
    pub read_only: bool,
    /// No set-user-ID or file capabilities take effect from it.
    pub nosuid: bool,
    /// No device files open from it.
    pub nodev: bool,
    /// Nothing executes from it.
    pub noexec: bool,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path bound in.
    Bind {
        /// The host path (absolute).
        source: String,
        /// The mounts beneath it come along (`rbind`).
        recursive: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Its size limit in bytes (the kernel's default, half of memory,
        /// when None).
        size_bytes: Option<u64>,
        /// Its root dir's mode (the kernel's 1777 when None).
        mode: Option<u32>,
    },
}

/// How the starter's first connection to the daemon is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirstConnection {
    /// The starter connects to the socket file and says Hello, as every
    /// later client does (what a config without this part means).
    #[default]
    Socket,
    /// tend-spawn's stdin is one end of a socketpair the starter made: once
    /// the config frame is read, the daemon keeps it as the starter's first
    /// connection, welcomed from the start (only the process that started
    /// tend-spawn holds the other end), and reports
    /// [`StartReport::StartedWithConnection`](crate::StartReport). A
    /// tend-spawn that predates this part refuses the frame at the config
    /// stage, before it starts anything.
    Stdin,
}

/// Namespaces a task gets of its own, unshared by its child before it
/// enters its root (none by default: the host's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// A UTS namespace: its host and domain names are its own.
    pub uts: bool,
    /// The host name set in it (with `uts` only); None keeps the copy of
    /// the host's that a new one starts with.
    pub hostname: Option<String>,
    /// An IPC namespace: SysV IPC objects and POSIX message queues of its own.
    pub ipc: bool,
    /// A network namespace with nothing but its loopback, up.
    pub net: bool,
}

/// Longest host name the kernel takes (HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;

/// When the task's process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStart {
    /// At once (the agent's tasks, `tend-oci run`).
    #[default]
    Now,
    /// Prepared to its last step (cgroup, root, user, stdio) and held
    /// before its execve until a [`Request::Start`](crate::Request::Start)
    /// arrives on the control socket: the OCI runtime's `create`.
    OnRequest,
}

/// The task's stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStdin {
    /// /dev/null (the agent's tasks).
    #[default]
    Null,
    /// What follows the config frame on tend-spawn's own stdin, until the
    /// writer closes it (`tend-oci run` relays its stdin this way).
    AfterConfig,
}

/// What is wrong with a spawn config; the field is named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spawn config: {field}: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Longest socket path: sun_path is 108 bytes with its final NUL.
pub const MAX_SOCKET_PATH: usize = 107;

impl SpawnConfig {
    /// Check every field that a path, a syscall or a person depends on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        names::check_id(&self.alloc_id).map_err(|e| bad("alloc_id", e.to_string()))?;
        names::check_file_name(&self.task).map_err(|e| bad("task", e.to_string()))?;
        if self.run == 0 {
            return Err(bad("run", "must be at least 1"));
        }
        no_nul("command", &self.command)?;
        if self.command.is_empty() {
            return Err(bad("command", "is empty"));
        }
        for (i, a) in self.args.iter().enumerate() {
            no_nul(&format!("args[{i}]"), a)?;
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad("env", format!("bad variable name {k:?}")));
            }
            no_nul(&format!("env.{k}"), v)?;
        }
        absolute("cwd", &self.cwd)?;
        absolute("alloc_dir", &self.alloc_dir)?;
        absolute("socket_path", &self.socket_path)?;
        if self.socket_path.len() > MAX_SOCKET_PATH {
            return Err(bad(
                "socket_path",
                format!(
                    "{} bytes is over the {MAX_SOCKET_PATH} a Unix socket path may hold",
                    self.socket_path.len()
                ),
            ));
        }
        if self.logs.max_files == 0 {
            return Err(bad("logs.max_files", "must be at least 1"));
        }
        if self.logs.max_file_size == 0 {
            return Err(bad("logs.max_file_size", "must be at least 1 byte"));
        }
        if !(1..=64).contains(&self.kill_signal) {
            return Err(bad(
                "kill_signal",
                format!("{} is not a signal", self.kill_signal),
            ));
        }
        if let Some(cg) = &self.cgroup {
            relative("cgroup.path", &cg.path)?;
            if let Some(d) = &cg.daemon_path {
                relative("cgroup.daemon_path", d)?;
                if d == &cg.path || Path::new(d).starts_with(&cg.path) {
                    return Err(bad(
                        "cgroup.daemon_path",
                        "must lie outside the task's cgroup",
                    ));
                }
            }
            if cg.memory_bytes == Some(0) {
                return Err(bad("cgroup.memory_bytes", "must be more than 0"));
            }
            if cg.pids_max == Some(0) {
                return Err(bad("cgroup.pids_max", "must be more than 0"));
            }
            let o = &cg.options;
            if let (Some(soft), Some(hard)) = (o.memory_soft_bytes, cg.memory_bytes) {
                if soft > hard {
                    return Err(bad(
                        "cgroup.options.memory_soft_bytes",
                        format!("{soft} is over the hard limit memory_bytes {hard}"),
                    ));
                }
            }
            if let Some(q) = o.cpu_quota {
                if !(1000..=1_000_000).contains(&q.period_us) {
                    return Err(bad(
                        "cgroup.options.cpu_quota.period_us",
                        format!("{} is outside 1000-1000000", q.period_us),
                    ));
                }
                if q.quota_us < 1000 {
                    return Err(bad(
                        "cgroup.options.cpu_quota.quota_us",
                        format!("{} is under the kernel's minimum of 1000", q.quota_us),
                    ));
                }
            }
            if let Some(w) = o.io_weight {
                if !(1..=10_000).contains(&w) {
                    return Err(bad(
                        "cgroup.options.io_weight",
                        format!("{w} is outside 1-10000"),
                    ));
                }
            }
        }
        let ns = &self.namespaces;
        if *ns != Namespaces::default() && self.isolation.is_none() {
            return Err(bad(
                "namespaces",
                "need an isolation (a task of raw_exec keeps the host's)",
            ));
        }
        if let Some(h) = &ns.hostname {
            if !ns.uts {
                return Err(bad("namespaces.hostname", "needs a uts namespace"));
            }
            if h.is_empty() || h.len() > MAX_HOSTNAME || h.contains('\0') {
                return Err(bad(
                    "namespaces.hostname",
                    format!("{h:?}: want 1-{MAX_HOSTNAME} bytes without NUL"),
                ));
            }
        }
        if self.stdin == TaskStdin::AfterConfig && self.first_connection == FirstConnection::Stdin {
            return Err(bad(
                "first_connection",
                "tend-spawn's stdin cannot be both the first connection and the task's stdin",
            ));
        }
        self.validate_extras()?;
        if let Some(iso) = &self.isolation {
            if (self.start != TaskStart::Now || *ns != Namespaces::default()) && iso.ids.is_none() {
                return Err(bad(
                    "isolation.ids",
                    "must be set with a start on request or namespaces (they travel after them)",
                ));
            }
            if iso.user.is_empty() {
                return Err(bad("isolation.user", "is empty"));
            }
            no_nul("isolation.user", &iso.user)?;
            if let Some(ch) = &iso.chroot {
                for (i, b) in ch.binds.iter().enumerate() {
                    absolute(&format!("isolation.chroot.binds[{i}].source"), &b.source)?;
                    absolute(&format!("isolation.chroot.binds[{i}].target"), &b.target)?;
                    if b.target == "/" && i > 0 {
                        return Err(bad(
                            &format!("isolation.chroot.binds[{i}].target"),
                            "cannot bind over the task's root (only the first bind, the image of a writable root, may)",
                        ));
                    }
                    if b.target == "/" && b.source.contains(OVERLAY_SPECIAL) {
                        return Err(bad(
                            &format!("isolation.chroot.binds[{i}].source"),
                            "the image of a writable root may not hold ',', ':' or '\\'",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The extras: each kind at most once, each with an isolation (with its
    /// ids, which travel before them), mounts and paths with a root of the
    /// task's own, every path absolute without `..`.
    fn validate_extras(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&'static str> = Vec::new();
        for (i, e) in self.extras.iter().enumerate() {
            let field = format!("extras[{i}]");
            if seen.contains(&e.name()) {
                return Err(bad(&field, format!("{} is given twice", e.name())));
            }
            seen.push(e.name());
            let Some(iso) = &self.isolation else {
                return Err(bad(&field, format!("{} needs an isolation", e.name())));
            };
            if iso.ids.is_none() {
                return Err(bad(
                    "isolation.ids",
                    "must be set with extras (they travel before them)",
                ));
            }
            let paths = match e {
                ConfigExtra::CgroupNamespace => continue,
                ConfigExtra::Mounts(m) => {
                    for (j, m) in m.iter().enumerate() {
                        let f = format!("{field}.mounts[{j}]");
                        absolute(&format!("{f}.target"), &m.target)?;
                        if Path::new(&m.target).parent().is_none() {
                            return Err(bad(
                                &format!("{f}.target"),
                                "cannot mount over the task's root",
                            ));
                        }
                        match &m.kind {
                            MountKind::Bind { source, .. } => {
                                absolute(&format!("{f}.kind.source"), source)?;
                            }
                            MountKind::Tmpfs { size_bytes, mode } => {
                                if *size_bytes == Some(0) {
                                    return Err(bad(&format!("{f}.kind.size_bytes"), "is 0"));
                                }
                                if let Some(m) = mode.filter(|m| *m > 0o7777) {
                                    return Err(bad(
                                        &format!("{f}.kind.mode"),
                                        format!("{m:o} is not a mode (at most 7777)"),
                                    ));
                                }
                            }
                        }
                    }
                    Vec::new()
                }
                ConfigExtra::MaskedPaths(p) | ConfigExtra::ReadonlyPaths(p) => p.iter().collect(),
            };
            for (j, p) in paths.into_iter().enumerate() {
                absolute(&format!("{field}.paths[{j}]"), p)?;
            }
            if iso.chroot.is_none() {
                return Err(bad(
                    &field,
                    format!("{} needs a root of the task's own", e.name()),
                ));
            }
        }
        Ok(())
    }

    /// One whole frame: the config, then its [`CgroupOptions`] when any is
    /// set, then the task's [`TaskStdin`] when it is not
    /// [`TaskStdin::Null`], then the task's [`TaskIds`] when the agent
    /// resolved them, then its [`TaskStart`] when it is not
    /// [`TaskStart::Now`], then its [`Namespaces`] when it has any, then the
    /// [`FirstConnection`] when it is not [`FirstConnection::Socket`], then
    /// the [`ConfigExtra`] list when it is not empty, then the [`Detach`]
    /// when it is not [`Detach::Fork`].
    ///
    /// The additions ride after the frozen encoding rather than inside it, so
    /// a config without them is byte for byte what it always was. They are
    /// read back in this order, so a later part brings the earlier ones with
    /// it: the options (where there is a cgroup) even when all are off, the
    /// stdin even when it is /dev/null, the ids (where there is an
    /// isolation), which must then be set, the start and the namespaces even
    /// when they are the defaults. The ids cannot come along unset, so an
    /// isolated config without them leaves its first connection and its
    /// detach out (the daemon then answers `Started`, and the starter
    /// connects to the socket file and reaps a first process that leaves,
    /// as it would with a tend-spawn that predates the parts).
    pub fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let encode_err = |what| move |source| FrameError::Encode { what, source };
        let mut body = postcard::to_allocvec(self).map_err(encode_err("SpawnConfig"))?;
        let ids = self.isolation.as_ref().and_then(|i| i.ids);
        let ids_known = self.isolation.is_none() || ids.is_some();
        let detach = (self.detach != Detach::Fork && ids_known).then_some(self.detach);
        let extras = (!self.extras.is_empty() || detach.is_some()).then_some(&self.extras);
        if !self.extras.is_empty() && !ids_known {
            return Err(FrameError::Missing {
                what: "TaskIds",
                needed_by: "ConfigExtra",
            });
        }
        let connection = ((self.first_connection != FirstConnection::Socket && ids_known)
            || extras.is_some())
        .then_some(self.first_connection);
        let namespaces = (self.namespaces != Namespaces::default() || connection.is_some())
            .then_some(&self.namespaces);
        let start = (self.start != TaskStart::Now || namespaces.is_some()).then_some(self.start);
        if start.is_some() && self.isolation.is_some() && ids.is_none() {
            return Err(FrameError::Missing {
                what: "TaskIds",
                needed_by: "TaskStart",
            });
        }
        let stdin = (self.stdin != TaskStdin::Null || ids.is_some() || start.is_some())
            .then_some(self.stdin);
        let options = self.cgroup.as_ref().map(|c| &c.options);
        if let Some(o) = options.filter(|o| **o != CgroupOptions::default() || stdin.is_some()) {
            body.extend(postcard::to_allocvec(o).map_err(encode_err("CgroupOptions"))?);
        }
        if let Some(s) = stdin {
            body.extend(postcard::to_allocvec(&s).map_err(encode_err("TaskStdin"))?);
        }
        if let Some(ids) = ids {
            body.extend(postcard::to_allocvec(&ids).map_err(encode_err("TaskIds"))?);
        }
        if let Some(s) = start {
            body.extend(postcard::to_allocvec(&s).map_err(encode_err("TaskStart"))?);
        }
        if let Some(n) = namespaces {
            body.extend(postcard::to_allocvec(n).map_err(encode_err("Namespaces"))?);
        }
        if let Some(c) = connection {
            body.extend(postcard::to_allocvec(&c).map_err(encode_err("FirstConnection"))?);
        }
        if let Some(e) = extras {
            body.extend(postcard::to_allocvec(e).map_err(encode_err("ConfigExtra"))?);
        }
        if let Some(d) = detach {
            body.extend(postcard::to_allocvec(&d).map_err(encode_err("Detach"))?);
        }
        frame::wrap_body(crate::PROTOCOL_VERSION, &body)
    }

    /// Decode a frame written by [`SpawnConfig::to_frame`]: the config, then
    /// the cgroup options if bytes follow it and it has a cgroup, then the
    /// task's stdin, its ids, its start, its namespaces, the first
    /// connection, the extras and the detach if bytes still follow (a
    /// config without them reads too).
    pub fn from_frame(f: &Frame) -> Result<SpawnConfig, FrameError> {
        let body_err = |what| move |source| FrameError::Body { what, source };
        let (mut config, mut rest) =
            postcard::take_from_bytes::<SpawnConfig>(&f.body).map_err(body_err("SpawnConfig"))?;
        if let Some(cg) = config.cgroup.as_mut().filter(|_| !rest.is_empty()) {
            let (options, after) = postcard::take_from_bytes::<CgroupOptions>(rest)
                .map_err(body_err("CgroupOptions"))?;
            cg.options = options;
            rest = after;
        }
        if !rest.is_empty() {
            let (stdin, after) =
                postcard::take_from_bytes::<TaskStdin>(rest).map_err(body_err("TaskStdin"))?;
            config.stdin = stdin;
            rest = after;
        }
        if let Some(iso) = config.isolation.as_mut().filter(|_| !rest.is_empty()) {
            let (ids, after) =
                postcard::take_from_bytes::<TaskIds>(rest).map_err(body_err("TaskIds"))?;
            iso.ids = Some(ids);
            rest = after;
        }
        if !rest.is_empty() {
            let (start, after) =
                postcard::take_from_bytes::<TaskStart>(rest).map_err(body_err("TaskStart"))?;
            config.start = start;
            rest = after;
        }
        if !rest.is_empty() {
            let (namespaces, after) =
                postcard::take_from_bytes::<Namespaces>(rest).map_err(body_err("Namespaces"))?;
            config.namespaces = namespaces;
            rest = after;
        }
        if !rest.is_empty() {
            let (connection, after) = postcard::take_from_bytes::<FirstConnection>(rest)
                .map_err(body_err("FirstConnection"))?;
            config.first_connection = connection;
            rest = after;
        }
        if !rest.is_empty() {
            let (extras, after) = postcard::take_from_bytes::<Vec<ConfigExtra>>(rest)
                .map_err(body_err("ConfigExtra"))?;
            config.extras = extras;
            rest = after;
        }
        if !rest.is_empty() {
            let (detach, after) =
                postcard::take_from_bytes::<Detach>(rest).map_err(body_err("Detach"))?;
            config.detach = detach;
            rest = after;
        }
        if !rest.is_empty() {
            return Err(FrameError::TrailingBytes {
                what: "SpawnConfig",
                extra: rest.len(),
            });
        }
        Ok(config)
    }

    /// The alloc dir on the host.
    pub fn alloc_dir(&self) -> PathBuf {
        PathBuf::from(&self.alloc_dir)
    }

    /// The task's root dir on the host: `<alloc_dir>/<task>`.
    pub fn task_root(&self) -> PathBuf {
        self.alloc_dir().join(&self.task)
    }

    /// The exit status file on the host: `<alloc_dir>/<task>_exit_status`.
    pub fn exit_status_path(&self) -> PathBuf {
        self.alloc_dir().join(names::exit_status_file(&self.task))
    }

    /// The alloc's log dir on the host: `<alloc_dir>/logs`.
    pub fn log_dir(&self) -> PathBuf {
        self.alloc_dir().join(names::LOG_DIR)
    }
}

fn no_nul(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.contains('\0') {
        return Err(bad(field, "holds a NUL byte"));
    }
    Ok(())
}

fn absolute(field: &str, v: &str) -> Result<(), ConfigError> {
    no_nul(field, v)?;
    let p = Path::new(v);
    if !p.is_absolute() {
        return Err(bad(field, format!("{v:?} is not an absolute path")));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(field, format!("{v:?} holds '..'")));
    }
    Ok(())
}

fn relative(field: &str, v: &str) -> Result<(), ConfigError> {
    no_nul(field, v)?;
    let p = Path::new(v);
    if v.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(
            field,
            format!("{v:?} must be a relative path without '..'"),
        ));
    }
    Ok(())
}

/// A config for tests and examples: `/bin/true` in `alloc_dir`.
pub fn example(alloc_dir: &str, socket_path: &str) -> SpawnConfig {
    SpawnConfig {
        alloc_id: "0123abcd".into(),
        task: "t".into(),
        run: 1,
        token: Token([7; 32]),
        command: "/bin/true".into(),
        args: vec![],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/".into(),
        alloc_dir: alloc_dir.into(),
        socket_path: socket_path.into(),
        logs: LogConfig::default(),
        kill_signal: 15,
        kill_timeout_ms: 5000,
        linger_ms: 60_000,
        cgroup: None,
        isolation: None,
        stdin: TaskStdin::Null,
        start: TaskStart::Now,
        namespaces: Namespaces::default(),
        first_connection: FirstConnection::Socket,
        extras: Vec::new(),
        detach: Detach::Fork,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolated_with_root() -> SpawnConfig {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        c.isolation = Some(Isolation {
            ids: Some(TaskIds {
                uid: 65534,
                gid: 65534,
            }),
            user: "nobody".into(),
            chroot: Some(ChrootSpec { binds: vec![] }),
        });
        c
    }

    #[test]
    fn extras_ride_last_and_an_unknown_one_is_named() {
        let mut c = isolated_with_root();
        c.extras = vec![
            ConfigExtra::ReadonlyPaths(vec!["/etc".into()]),
            ConfigExtra::CgroupNamespace,
        ];
        c.validate().unwrap();
        let f = crate::frame::read_frame(&mut &c.to_frame().unwrap()[..], u32::MAX).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        // A variant index past the known ones, as a newer starter would send.
        let mut body = f.body;
        let last = body.len() - 1;
        assert_eq!(body[last], 3, "CgroupNamespace is variant 3");
        body[last] = 200;
        let f = crate::frame::Frame {
            version: crate::PROTOCOL_VERSION,
            body,
        };
        let e = SpawnConfig::from_frame(&f).unwrap_err().to_string();
        assert!(e.contains("ConfigExtra"), "{e}");
    }

    #[test]
    fn extras_are_checked_by_field() {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        c.extras = vec![ConfigExtra::CgroupNamespace];
        assert_eq!(c.validate().unwrap_err().field, "extras[0]");
        let mut c = isolated_with_root();
        c.extras = vec![ConfigExtra::CgroupNamespace, ConfigExtra::CgroupNamespace];
        assert_eq!(c.validate().unwrap_err().field, "extras[1]");
        c.extras = vec![ConfigExtra::MaskedPaths(vec!["/proc/../etc".into()])];
        assert_eq!(c.validate().unwrap_err().field, "extras[0].paths[0]");
        let m = |target: &str, kind| Mount {
            target: target.into(),
            kind,
            read_only: false,
            nosuid: true,
            nodev: true,
            noexec: false,
        };
        let tmpfs = |size_bytes, mode| MountKind::Tmpfs { size_bytes, mode };
        c.extras = vec![ConfigExtra::Mounts(vec![m("/", tmpfs(None, None))])];
        assert_eq!(
            c.validate().unwrap_err().field,
            "extras[0].mounts[0].target"
        );
        c.extras = vec![ConfigExtra::Mounts(vec![m("/run", tmpfs(Some(0), None))])];
        assert_eq!(
            c.validate().unwrap_err().field,
            "extras[0].mounts[0].kind.size_bytes"
        );
        c.extras = vec![ConfigExtra::Mounts(vec![m(
            "/run",
            tmpfs(None, Some(0o10000)),
        )])];
        assert_eq!(
            c.validate().unwrap_err().field,
            "extras[0].mounts[0].kind.mode"
        );
        let bind = MountKind::Bind {
            source: "data".into(),
            recursive: false,
        };
        c.extras = vec![ConfigExtra::Mounts(vec![m("/data", bind)])];
        assert_eq!(
            c.validate().unwrap_err().field,
            "extras[0].mounts[0].kind.source"
        );
        c.isolation.as_mut().unwrap().chroot = None;
        c.extras = vec![ConfigExtra::ReadonlyPaths(vec!["/etc".into()])];
        assert_eq!(c.validate().unwrap_err().field, "extras[0]");
        c.extras = vec![ConfigExtra::CgroupNamespace];
        c.validate().unwrap();
        c.isolation.as_mut().unwrap().ids = None;
        assert_eq!(c.validate().unwrap_err().field, "isolation.ids");
        assert!(matches!(
            c.to_frame(),
            Err(FrameError::Missing {
                needed_by: "ConfigExtra",
                ..
            })
        ));
    }

    #[test]
    fn example_is_valid() {
        example("/tmp/a", "/tmp/s.sock").validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        c.task = "../x".into();
        assert_eq!(c.validate().unwrap_err().field, "task");
        let mut c = example("relative", "/tmp/s.sock");
        c.alloc_dir = "relative".into();
        assert_eq!(c.validate().unwrap_err().field, "alloc_dir");
        let mut c = example("/tmp/a", &format!("/{}", "s".repeat(120)));
        assert_eq!(c.validate().unwrap_err().field, "socket_path");
        c.socket_path = "/tmp/s".into();
        c.args = vec!["a\0b".into()];
        assert_eq!(c.validate().unwrap_err().field, "args[0]");
        c.args.clear();
        c.cgroup = Some(CgroupSpec {
            path: "tend/a/t".into(),
            daemon_path: Some("tend/a/t/daemon".into()),
            memory_bytes: None,
            cpu_mhz: None,
            pids_max: None,
            options: CgroupOptions::default(),
        });
        assert_eq!(c.validate().unwrap_err().field, "cgroup.daemon_path");
    }

    #[test]
    fn the_first_connection_rides_last_and_only_where_it_can() {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        c.first_connection = FirstConnection::Stdin;
        c.validate().unwrap();
        let f = crate::frame::read_frame(&mut &c.to_frame().unwrap()[..], u32::MAX).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        // An isolated config without ids cannot carry it: the frame is the
        // plain one, and the daemon answers as to a config without the part.
        c.isolation = Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: None,
        });
        let mut without = c.clone();
        without.first_connection = FirstConnection::Socket;
        assert_eq!(c.to_frame().unwrap(), without.to_frame().unwrap());
        // With the ids it rides after the start and namespaces it brings.
        c.isolation.as_mut().unwrap().ids = Some(TaskIds { uid: 1, gid: 1 });
        let f = crate::frame::read_frame(&mut &c.to_frame().unwrap()[..], u32::MAX).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        // stdin cannot be both the connection and the task's.
        c.isolation = None;
        c.stdin = TaskStdin::AfterConfig;
        assert_eq!(c.validate().unwrap_err().field, "first_connection");
    }

    #[test]
    fn the_detach_rides_after_the_extras_and_only_where_it_can() {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        let plain = c.to_frame().unwrap();
        c.detach = Detach::InPlace;
        let f = crate::frame::read_frame(&mut &c.to_frame().unwrap()[..], u32::MAX).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        // It brings the parts before it, so the frame grows past the plain one.
        assert!(c.to_frame().unwrap().len() > plain.len());
        // With the first connection and extras too, each reads back.
        c.first_connection = FirstConnection::Stdin;
        c.extras = vec![ConfigExtra::CgroupNamespace];
        let f = crate::frame::read_frame(&mut &c.to_frame().unwrap()[..], u32::MAX).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        // An isolated config without ids cannot carry it: the plain frame.
        c.extras.clear();
        c.isolation = Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: None,
        });
        let mut without = c.clone();
        without.detach = Detach::Fork;
        without.first_connection = FirstConnection::Socket;
        assert_eq!(c.to_frame().unwrap(), without.to_frame().unwrap());
        // A frame with one byte past it is refused, naming the whole config.
        c.isolation.as_mut().unwrap().ids = Some(TaskIds { uid: 1, gid: 1 });
        let mut bytes = c.to_frame().unwrap();
        let f = crate::frame::read_frame(&mut &bytes[..], u32::MAX).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        let mut body = f.body.clone();
        body.push(0);
        bytes = frame::wrap_body(crate::PROTOCOL_VERSION, &body).unwrap();
        let f = crate::frame::read_frame(&mut &bytes[..], u32::MAX).unwrap();
        assert!(matches!(
            SpawnConfig::from_frame(&f),
            Err(FrameError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn a_held_start_of_an_isolated_task_needs_its_ids_before_it() {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        c.start = TaskStart::OnRequest;
        c.validate().unwrap();
        c.isolation = Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: None,
        });
        assert_eq!(c.validate().unwrap_err().field, "isolation.ids");
        assert!(matches!(
            c.to_frame(),
            Err(FrameError::Missing {
                what: "TaskIds",
                ..
            })
        ));
        c.isolation.as_mut().unwrap().ids = Some(TaskIds {
            uid: 65534,
            gid: 65534,
        });
        c.validate().unwrap();
        let f = frame::read_frame(&mut &c.to_frame().unwrap()[..], crate::MAX_FRAME_LEN).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
    }

    #[test]
    fn namespaces_need_an_isolation_and_a_hostname_its_uts_namespace() {
        let mut c = example("/tmp/a", "/tmp/s.sock");
        c.namespaces.ipc = true;
        assert_eq!(c.validate().unwrap_err().field, "namespaces");
        c.isolation = Some(Isolation {
            ids: Some(TaskIds { uid: 1, gid: 1 }),
            user: "1".into(),
            chroot: None,
        });
        c.validate().unwrap();
        c.namespaces.hostname = Some("box1".into());
        assert_eq!(c.validate().unwrap_err().field, "namespaces.hostname");
        c.namespaces.uts = true;
        c.validate().unwrap();
        c.namespaces.hostname = Some("h".repeat(MAX_HOSTNAME + 1));
        assert_eq!(c.validate().unwrap_err().field, "namespaces.hostname");
        c.namespaces.hostname = Some("box1".into());
        // They bring the start (Now) and the ids before them on the wire.
        let f = frame::read_frame(&mut &c.to_frame().unwrap()[..], crate::MAX_FRAME_LEN).unwrap();
        assert_eq!(SpawnConfig::from_frame(&f).unwrap(), c);
        c.isolation.as_mut().unwrap().ids = None;
        assert_eq!(c.validate().unwrap_err().field, "isolation.ids");
    }

    #[test]
    fn only_a_first_bind_onto_the_root_makes_it_writable() {
        let bind = |source: &str, target: &str| Bind {
            source: source.into(),
            target: target.into(),
        };
        let mut c = example("/tmp/a", "/tmp/s.sock");
        let mut spec = ChrootSpec {
            binds: vec![bind("/srv/image", "/"), bind("/usr", "/usr")],
        };
        assert_eq!(spec.writable_root(), Some("/srv/image"));
        c.isolation = Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: Some(spec.clone()),
        });
        c.validate().unwrap();
        spec.binds.swap(0, 1);
        assert_eq!(spec.writable_root(), None);
        c.isolation.as_mut().unwrap().chroot = Some(spec);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "isolation.chroot.binds[1].target");
        c.isolation.as_mut().unwrap().chroot = Some(ChrootSpec {
            binds: vec![bind("/srv/a,upperdir=/etc", "/")],
        });
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "isolation.chroot.binds[0].source");
    }
}

//! The task's cgroup, written as plain files, on v1, v2 and hybrid hosts.
//!
//! [`Hierarchies`] finds where the controllers are mounted; [`TaskCgroup`] is one
//! task's cgroup in every hierarchy it uses: create it with its limits, add the
//! task to it, read its OOM counter and usage, kill everything in it, remove it.
//!
//! Every path derives from one root (`/sys/fs/cgroup` on a host), so the same code
//! runs on fake trees in temp dirs. The only other seam is [`Tree`]: making and
//! removing cgroup dirs, which on a kernel populates and clears the control files.
//!
//! Files written:
//! - v1: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (when swap is
//!   accounted), `cpu.shares`, `pids.max`, `cgroup.procs` in each hierarchy,
//!   `freezer.state` to kill.
//! - v2: `cgroup.subtree_control` of the ancestors, `memory.max`,
//!   `memory.swap.max`, `cpu.weight`, `pids.max`, `cgroup.procs`, `cgroup.kill`
//!   or `cgroup.freeze` to kill.
//! - hybrid: as v1, plus the task's dir in the v2 tree (membership only), whose
//!   `cgroup.kill` then kills the whole task at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpid, Pid};
use tend_proto::config::CgroupSpec;

/// Where cgroup hierarchies are mounted on a host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Where the mounts of this process are listed.
pub const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Largest v1 `cpu.shares` the kernel accepts.
const MAX_SHARES: u64 = 262_144;

/// Smallest v1 `cpu.shares` the kernel accepts.
const MIN_SHARES: u64 = 2;

/// How long `remove` retries a busy leaf: its last processes may still be exiting.
const RMDIR_PATIENCE: Duration = Duration::from_secs(2);

/// How long `kill_all` keeps killing before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// How long a freeze may take before we kill anyway (SIGKILL still lands on thaw).
const FREEZE_PATIENCE: Duration = Duration::from_secs(1);

/// What went wrong, naming the file or dir; io errors are kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Writing a control file failed.
    #[error("cgroup: write {}: {}", .path.display(), errno_text(.source))]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading a control file failed.
    #[error("cgroup: read {}: {}", .path.display(), errno_text(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Making a cgroup dir failed.
    #[error("cgroup: mkdir {}: {}", .path.display(), errno_text(.source))]
    Mkdir {
        /// The dir.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Removing a cgroup dir failed.
    #[error("cgroup: rmdir {}: {}", .path.display(), errno_text(.source))]
    Rmdir {
        /// The dir.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A control file holds something we cannot read as expected.
    #[error("cgroup: parse {}: {reason}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No cgroup hierarchy is mounted under the root.
    #[error("cgroup: no cgroup hierarchy found under {}", .root.display())]
    NoHierarchy {
        /// The root searched.
        root: PathBuf,
    },
    /// A limit needs a controller that this host does not offer.
    #[error("cgroup: controller {controller} is not available under {}", .root.display())]
    ControllerMissing {
        /// The controller.
        controller: &'static str,
        /// The root searched.
        root: PathBuf,
    },
    /// The relative cgroup path is not a plain relative path.
    #[error("cgroup: bad path {path:?}: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The cgroup holds the calling process: killing everything would kill us.
    #[error("cgroup: {}: holds this process ({pid}); refusing to kill it", .path.display())]
    HoldsSelf {
        /// The cgroup dir.
        path: PathBuf,
        /// Our pid.
        pid: Pid,
    },
    /// Sending SIGKILL failed for another reason than the process being gone.
    #[error("cgroup: kill {pid}: {source}")]
    Kill {
        /// The process.
        pid: Pid,
        /// Why.
        source: Errno,
    },
    /// Processes were still in the cgroup after every round of killing.
    #[error("cgroup: {}: processes left after kill: {pids:?}", .path.display())]
    KillTimeout {
        /// The cgroup dir.
        path: PathBuf,
        /// Who is left.
        pids: Vec<Pid>,
    },
}

/// "Permission denied" rather than "Permission denied (os error 13)": one line a
/// person reads, with the path in front of it.
fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

type Result<T> = std::result::Result<T, CgroupError>;

/// Which cgroup layout a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One directory per controller (or group of controllers).
    V1,
    /// One unified tree at the root.
    V2,
    /// v1 controllers plus a cgroup2 tree under the root, used for membership only.
    Hybrid,
}

/// A v1 controller that tend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// Memory limit, usage and the OOM counter.
    Memory,
    /// CPU shares.
    Cpu,
    /// CPU usage.
    Cpuacct,
    /// Process count limit.
    Pids,
    /// Freezing the task while it is killed.
    Freezer,
}

impl Controller {
    /// Every controller tend uses, in the order their dirs are made.
    pub const ALL: [Controller; 5] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Freezer,
    ];

    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }

    fn from_name(name: &str) -> Option<Controller> {
        Controller::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Making and removing cgroup dirs: the kernel fills a new cgroup dir with its
/// control files and empties it on rmdir, which a test tree has to imitate.
trait Tree: fmt::Debug + Sync {
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
}

/// The real cgroup filesystems.
#[derive(Debug)]
struct Kernel;

impl Tree for Kernel {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }
}

/// Where the cgroup hierarchies of a host are mounted.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    root: PathBuf,
    mode: Mode,
    /// Mount point of each v1 controller (empty on v2).
    v1: BTreeMap<Controller, PathBuf>,
    /// The cgroup2 mount: the root on v2, e.g. `<root>/unified` on hybrid.
    unified: Option<PathBuf>,
    tree: &'static dyn Tree,
}

impl Hierarchies {
    /// Detect the layout of this host: [`DEFAULT_ROOT`] and [`DEFAULT_MOUNTINFO`].
    pub fn detect() -> Result<Hierarchies> {
        Hierarchies::detect_at(Path::new(DEFAULT_ROOT), Path::new(DEFAULT_MOUNTINFO))
    }

    /// Detect the layout under `root` from the mounts listed in `mountinfo`, or
    /// by probing the dirs under `root` when that lists no cgroup mount there
    /// (or cannot be read, as in a chroot without /proc).
    pub fn detect_at(root: &Path, mountinfo: &Path) -> Result<Hierarchies> {
        match fs::read_to_string(mountinfo) {
            Ok(text) => {
                if let Some(h) = Hierarchies::from_mountinfo(root, &text) {
                    return Ok(h);
                }
            }
            Err(e) => {
                tracing::debug!(path = %mountinfo.display(), error = %e, "cgroup: mountinfo unreadable, probing")
            }
        }
        Hierarchies::probe(root)
    }

    /// The layout under `root` from mountinfo text; None when no cgroup is
    /// mounted under `root`. Mounts elsewhere (bind mounts, containers) are ignored.
    pub fn from_mountinfo(root: &Path, text: &str) -> Option<Hierarchies> {
        let mut v1 = BTreeMap::new();
        let mut cgroup2 = None;
        for line in text.lines() {
            // id parent major:minor root mount_point options [optional...] - fstype source super_options
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mount), Some(fstype), Some(super_opts)) =
                (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
            else {
                continue;
            };
            let mount = PathBuf::from(unescape_mountinfo(mount));
            if !mount.starts_with(root) {
                continue;
            }
            match *fstype {
                // The one at the root wins: that is a v2 host.
                "cgroup2" if cgroup2.is_none() || mount == root => cgroup2 = Some(mount),
                "cgroup" => {
                    for c in super_opts.split(',').filter_map(Controller::from_name) {
                        v1.entry(c).or_insert_with(|| mount.clone());
                    }
                }
                _ => {}
            }
        }
        Hierarchies::from_parts(root, v1, cgroup2)
    }

    /// The layout under `root` from its dirs alone: `cgroup.controllers` at the
    /// root is v2; dirs named after controllers ("cpu,cpuacct" too) holding
    /// `cgroup.procs` are v1; a `unified` dir holding `cgroup.controllers` next
    /// to them makes it hybrid.
    pub fn probe(root: &Path) -> Result<Hierarchies> {
        let no_hierarchy = || CgroupError::NoHierarchy {
            root: root.to_path_buf(),
        };
        if root.join("cgroup.controllers").is_file() {
            return Ok(Hierarchies::v2(root));
        }
        let entries = fs::read_dir(root).map_err(|source| CgroupError::Read {
            path: root.to_path_buf(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        // Sorted, so "cpu,cpuacct" and its "cpu" symlink resolve the same way every time.
        names.sort();
        let mut v1 = BTreeMap::new();
        let mut cgroup2 = None;
        for name in names {
            let dir = root.join(&name);
            if name == "unified" && dir.join("cgroup.controllers").is_file() {
                cgroup2 = Some(dir);
            } else if dir.join("cgroup.procs").is_file() {
                for c in name.split(',').filter_map(Controller::from_name) {
                    v1.entry(c).or_insert_with(|| dir.clone());
                }
            }
        }
        Hierarchies::from_parts(root, v1, cgroup2).ok_or_else(no_hierarchy)
    }

    fn v2(root: &Path) -> Hierarchies {
        Hierarchies {
            root: root.to_path_buf(),
            mode: Mode::V2,
            v1: BTreeMap::new(),
            unified: Some(root.to_path_buf()),
            tree: &Kernel,
        }
    }

    fn from_parts(
        root: &Path,
        v1: BTreeMap<Controller, PathBuf>,
        cgroup2: Option<PathBuf>,
    ) -> Option<Hierarchies> {
        if cgroup2.as_deref() == Some(root) {
            return Some(Hierarchies::v2(root));
        }
        if v1.is_empty() {
            // A lone cgroup2 below the root offers no controllers to tend.
            return None;
        }
        Some(Hierarchies {
            root: root.to_path_buf(),
            mode: if cgroup2.is_some() {
                Mode::Hybrid
            } else {
                Mode::V1
            },
            v1,
            unified: cgroup2,
            tree: &Kernel,
        })
    }

    #[cfg(test)]
    fn with_tree(mut self, tree: &'static dyn Tree) -> Hierarchies {
        self.tree = tree;
        self
    }

    /// The layout found.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The root every hierarchy was searched under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mount point of a v1 controller (None on v2 or when it is not mounted).
    pub fn v1_mount(&self, controller: Controller) -> Option<&Path> {
        self.v1.get(&controller).map(PathBuf::as_path)
    }

    /// Mount point of the cgroup2 tree (the root on v2, e.g. `<root>/unified` on hybrid).
    pub fn unified_mount(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// Move the calling process (tend-spawn, single-threaded) into its own cgroup
    /// `daemon_path` in every hierarchy tend uses, so its memory never counts
    /// against the task. On v2 it must be a leaf: not an ancestor of task cgroups.
    pub fn join_self(&self, daemon_path: &str) -> Result<()> {
        let cg = TaskCgroup::open(self, daemon_path)?;
        cg.make_dirs()?;
        // "0" is the writer itself, whatever pid namespace we read pids in.
        for dir in cg.dirs() {
            write_file(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space) in a mount point.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check that a cgroup path is plain and relative: "tend/<alloc>/<task>".
fn check_rel(path: &str) -> Result<PathBuf> {
    let bad = |reason| CgroupError::BadPath {
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("is empty"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if path.split('/').any(str::is_empty) {
        return Err(bad("must be relative, without empty components"));
    }
    let p = PathBuf::from(path);
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("must not contain . or .."));
    }
    Ok(p)
}

/// Memory, CPU and process counts of a task's cgroup; None where the host
/// does not report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory in use, bytes (v1 memory.usage_in_bytes, v2 memory.current).
    pub memory_bytes: Option<u64>,
    /// Highest memory use seen, bytes (v1 memory.max_usage_in_bytes, v2 memory.peak).
    pub memory_peak_bytes: Option<u64>,
    /// CPU time used, µs (v1 cpuacct.usage / 1000, v2 cpu.stat usage_usec).
    pub cpu_usec: Option<u64>,
    /// Processes in the cgroup (pids.current).
    pub pids: Option<u64>,
}

/// One task's cgroup: the same relative path in every hierarchy tend uses.
#[derive(Debug)]
pub struct TaskCgroup {
    rel: PathBuf,
    mode: Mode,
    root: PathBuf,
    /// The task's dir per v1 controller (v1, hybrid).
    v1: BTreeMap<Controller, PathBuf>,
    /// The task's dir in the cgroup2 tree: every file on v2, membership on hybrid.
    unified: Option<PathBuf>,
    /// Each distinct task dir with the mount point it lives under.
    dirs: Vec<(PathBuf, PathBuf)>,
    tree: &'static dyn Tree,
}

impl TaskCgroup {
    /// A handle on the cgroup at `path` (relative to each hierarchy's root), which
    /// may or may not exist: nothing is touched. The agent uses this to kill and
    /// remove what a lost task left behind.
    pub fn open(hier: &Hierarchies, path: &str) -> Result<TaskCgroup> {
        let rel = check_rel(path)?;
        let v1: BTreeMap<Controller, PathBuf> = hier
            .v1
            .iter()
            .map(|(c, mount)| (*c, mount.join(&rel)))
            .collect();
        let unified = hier.unified.as_ref().map(|m| m.join(&rel));
        let mut dirs: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mounts = hier.v1.values().chain(hier.unified.iter());
        for mount in mounts {
            let dir = mount.join(&rel);
            // cpu and cpuacct may share one mount ("cpu,cpuacct").
            if !dirs.iter().any(|(_, d)| *d == dir) {
                dirs.push((mount.clone(), dir));
            }
        }
        Ok(TaskCgroup {
            rel,
            mode: hier.mode,
            root: hier.root.clone(),
            v1,
            unified,
            dirs,
            tree: hier.tree,
        })
    }

    /// Create the task's cgroup from `spec` (missing parents too) and set its
    /// limits. On failure whatever was made is removed again.
    pub fn create(hier: &Hierarchies, spec: &CgroupSpec) -> Result<TaskCgroup> {
        let cg = TaskCgroup::open(hier, &spec.path)?;
        cg.make_dirs()?;
        if let Err(e) = cg.set_limits(spec) {
            if let Err(cleanup) = cg.remove() {
                tracing::warn!(error = %cleanup, "cgroup: removing after a failed create");
            }
            return Err(e);
        }
        Ok(cg)
    }

    /// The path relative to each hierarchy's root.
    pub fn rel_path(&self) -> &Path {
        &self.rel
    }

    /// Every distinct dir of the task, one per hierarchy it lives in.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    /// The task's dir that holds a controller's files (v2: the one dir; the
    /// freezer is `cgroup.freeze` there, so None).
    fn dir_of(&self, c: Controller) -> Option<&Path> {
        match self.mode {
            Mode::V2 if c == Controller::Freezer => None,
            Mode::V2 => self.unified.as_deref(),
            Mode::V1 | Mode::Hybrid => self.v1.get(&c).map(PathBuf::as_path),
        }
    }

    fn need(&self, c: Controller) -> Result<&Path> {
        self.dir_of(c).ok_or(CgroupError::ControllerMissing {
            controller: c.name(),
            root: self.root.clone(),
        })
    }

    /// mkdir -p in every hierarchy, through the tree seam.
    fn make_dirs(&self) -> Result<()> {
        for (mount, dir) in &self.dirs {
            // A sibling task's remove() may rmdir a shared parent between our
            // mkdirs (ENOENT): walk again, a few times.
            let mut tries = 0;
            loop {
                match self.make_dir_chain(mount, dir) {
                    Err(CgroupError::Mkdir { source, .. })
                        if source.kind() == io::ErrorKind::NotFound && tries < 3 =>
                    {
                        tries += 1;
                    }
                    r => break r?,
                }
            }
        }
        Ok(())
    }

    fn make_dir_chain(&self, mount: &Path, dir: &Path) -> Result<()> {
        let mut path = mount.to_path_buf();
        for comp in self.rel.components() {
            path.push(comp);
            if path.is_dir() {
                continue;
            }
            match self.tree.mkdir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Mkdir { path, source }),
            }
        }
        debug_assert_eq!(path, dir);
        Ok(())
    }

    fn set_limits(&self, spec: &CgroupSpec) -> Result<()> {
        match self.mode {
            Mode::V1 | Mode::Hybrid => self.set_limits_v1(spec),
            Mode::V2 => self.set_limits_v2(spec),
        }
    }

    fn set_limits_v1(&self, spec: &CgroupSpec) -> Result<()> {
        if let Some(bytes) = spec.memory_bytes {
            let dir = self.need(Controller::Memory)?;
            let limit = dir.join("memory.limit_in_bytes");
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let value = bytes.to_string();
            if memsw.is_file() {
                // The kernel keeps memsw >= limit at every moment: lower the
                // limit first, but raise memsw first.
                let current_memsw = read_u64(&memsw)?;
                if bytes > current_memsw {
                    write_file(&memsw, &value)?;
                    write_file(&limit, &value)?;
                } else {
                    write_file(&limit, &value)?;
                    write_file(&memsw, &value)?;
                }
            } else {
                // No swap accounting on this kernel: memsw cannot be capped.
                tracing::debug!(path = %memsw.display(), "cgroup: no swap accounting");
                write_file(&limit, &value)?;
            }
        }
        if let Some(mhz) = spec.cpu_mhz {
            let dir = self.need(Controller::Cpu)?;
            write_file(&dir.join("cpu.shares"), &cpu_shares(mhz).to_string())?;
        }
        if let Some(max) = spec.pids_max {
            let dir = self.need(Controller::Pids)?;
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        Ok(())
    }

    fn set_limits_v2(&self, spec: &CgroupSpec) -> Result<()> {
        let dir = self.need(Controller::Memory)?;
        self.enable_v2_controllers(spec)?;
        if let Some(bytes) = spec.memory_bytes {
            write_file(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.is_file() {
                write_file(&swap, "0")?;
            } else {
                tracing::debug!(path = %swap.display(), "cgroup: no swap accounting");
            }
        }
        if let Some(mhz) = spec.cpu_mhz {
            write_file(
                &dir.join("cpu.weight"),
                &cpu_weight(cpu_shares(mhz)).to_string(),
            )?;
        }
        if let Some(max) = spec.pids_max {
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        Ok(())
    }

    /// v2 gives a cgroup a controller's files only when every ancestor enables
    /// it in `cgroup.subtree_control`. memory (OOM counter, usage) and pids
    /// (count) are wanted always, cpu only for a CPU limit; one a limit needs
    /// but the host lacks is an error, one only wanted for stats is skipped.
    fn enable_v2_controllers(&self, spec: &CgroupSpec) -> Result<()> {
        let Some(mount) = self.dirs.first().map(|(m, _)| m) else {
            return Ok(());
        };
        let available_path = mount.join("cgroup.controllers");
        let available = read_file(&available_path)?;
        let available: Vec<&str> = available.split_whitespace().collect();
        let wanted = [
            ("memory", spec.memory_bytes.is_some()),
            ("pids", spec.pids_max.is_some()),
            ("cpu", spec.cpu_mhz.is_some()),
        ];
        let mut enable = Vec::new();
        for (name, needed) in wanted {
            if available.contains(&name) {
                if needed || name != "cpu" {
                    enable.push(name);
                }
            } else if needed {
                return Err(CgroupError::ControllerMissing {
                    controller: name,
                    root: mount.clone(),
                });
            }
        }
        // Every ancestor of the leaf, from the mount point down.
        let mut dir = mount.clone();
        for comp in self.rel.components() {
            let control = dir.join("cgroup.subtree_control");
            let on = read_file(&control)?;
            let on: Vec<&str> = on.split_whitespace().collect();
            // Only what is missing: a write to a cgroup with processes in it
            // fails (no internal processes), even when it changes nothing.
            let missing: Vec<String> = enable
                .iter()
                .filter(|c| !on.contains(c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                write_file(&control, &missing.join(" "))?;
            }
            dir.push(comp);
        }
        Ok(())
    }

    /// Move a process into the task's cgroup in every hierarchy.
    pub fn add_pid(&self, pid: Pid) -> Result<()> {
        for dir in self.dirs() {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the task's cgroup, in any of its hierarchies. A cgroup
    /// that does not exist holds none.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        let mut pids = BTreeSet::new();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path, source }),
            };
            for line in text.split_whitespace() {
                let pid: i32 = line.parse().map_err(|_| CgroupError::Parse {
                    path: path.clone(),
                    reason: format!("bad pid {line:?}"),
                })?;
                pids.insert(pid);
            }
        }
        Ok(pids.into_iter().map(Pid::from_raw).collect())
    }

    /// How many processes the kernel's OOM killer killed in this cgroup (v2
    /// `oom_kill` of memory.events; v1 `oom_kill` of memory.oom_control, kernels
    /// 4.13 and later). None when the host does not count it: `under_oom` and
    /// `memory.failcnt` are not kills. Read it before the cgroup is removed.
    pub fn oom_kill_count(&self) -> Result<Option<u64>> {
        let Some(dir) = self.dir_of(Controller::Memory) else {
            return Ok(None);
        };
        let file = match self.mode {
            Mode::V2 => "memory.events",
            Mode::V1 | Mode::Hybrid => "memory.oom_control",
        };
        let path = dir.join(file);
        match read_optional(&path)? {
            Some(text) => keyed_u64(&path, &text, "oom_kill"),
            None => Ok(None),
        }
    }

    /// Memory, CPU and process counts; a file the host does not offer is None.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        let file = |c: Controller, name: &str| self.dir_of(c).map(|d| d.join(name));
        let single = |p: Option<PathBuf>| -> Result<Option<u64>> {
            match p {
                Some(p) => match read_optional(&p)? {
                    Some(text) => parse_u64(&p, &text).map(Some),
                    None => Ok(None),
                },
                None => Ok(None),
            }
        };
        match self.mode {
            Mode::V1 | Mode::Hybrid => {
                u.memory_bytes = single(file(Controller::Memory, "memory.usage_in_bytes"))?;
                u.memory_peak_bytes =
                    single(file(Controller::Memory, "memory.max_usage_in_bytes"))?;
                u.cpu_usec =
                    single(file(Controller::Cpuacct, "cpuacct.usage"))?.map(|ns| ns / 1000);
            }
            Mode::V2 => {
                u.memory_bytes = single(file(Controller::Memory, "memory.current"))?;
                u.memory_peak_bytes = single(file(Controller::Memory, "memory.peak"))?;
                if let Some(p) = file(Controller::Cpu, "cpu.stat") {
                    if let Some(text) = read_optional(&p)? {
                        u.cpu_usec = keyed_u64(&p, &text, "usage_usec")?;
                    }
                }
            }
        }
        u.pids = single(file(Controller::Pids, "pids.current"))?;
        Ok(u)
    }

    /// Kill every process in the cgroup and wait until none is left.
    ///
    /// With `cgroup.kill` (v2, and hybrid through the v2 tree) the kernel does
    /// it in one write. Otherwise: freeze, so nothing forks between reading
    /// `cgroup.procs` and the kills; SIGKILL each; thaw, so the kills land;
    /// repeat until the cgroup is empty, for a bounded time.
    pub fn kill_all(&self) -> Result<()> {
        self.kill_all_with(true)
    }

    fn kill_all_with(&self, use_cgroup_kill: bool) -> Result<()> {
        let me = getpid();
        let kill_file = self
            .unified
            .as_ref()
            .map(|d| d.join("cgroup.kill"))
            .filter(|f| use_cgroup_kill && f.is_file());
        let deadline = Instant::now() + KILL_PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if pids.contains(&me) {
                return Err(CgroupError::HoldsSelf {
                    path: self.first_dir(),
                    pid: me,
                });
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout {
                    path: self.first_dir(),
                    pids,
                });
            }
            match &kill_file {
                Some(f) => write_file(f, "1")?,
                None => self.freeze_kill_thaw()?,
            }
            sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn first_dir(&self) -> PathBuf {
        self.dirs()
            .next()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn freeze_kill_thaw(&self) -> Result<()> {
        self.set_frozen(true)?;
        let killed = self.pids().and_then(|pids| {
            for pid in pids {
                match kill(pid, Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(source) => return Err(CgroupError::Kill { pid, source }),
                }
            }
            Ok(())
        });
        // Thaw even when a kill failed: a frozen task must not stay behind.
        let thawed = self.set_frozen(false);
        killed.and(thawed)
    }

    /// Freeze or thaw, waiting (bounded) for a freeze to complete. Without a
    /// freezer this does nothing: the kill loop still gets there, only with
    /// more rounds when the task forks.
    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, &str) = match self.mode {
            Mode::V2 => {
                let Some(dir) = &self.unified else {
                    return Ok(());
                };
                (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    dir.join("cgroup.events"),
                    "frozen 1",
                )
            }
            Mode::V1 | Mode::Hybrid => {
                let Some(dir) = self.dir_of(Controller::Freezer) else {
                    return Ok(());
                };
                let state = dir.join("freezer.state");
                (
                    state.clone(),
                    if frozen { "FROZEN" } else { "THAWED" },
                    state,
                    "FROZEN",
                )
            }
        };
        if !file.is_file() {
            return Ok(());
        }
        write_file(&file, value)?;
        if !frozen {
            return Ok(());
        }
        let deadline = Instant::now() + FREEZE_PATIENCE;
        loop {
            let text = read_file(&state_file)?;
            if text.lines().any(|l| l.trim() == done) || Instant::now() >= deadline {
                // Not frozen in time: kill anyway, SIGKILL lands at the thaw.
                return Ok(());
            }
            sleep(Duration::from_millis(1));
        }
    }

    /// Remove the task's dirs (leaf first, retrying briefly while its last
    /// processes exit), then each parent that is now empty, up to but not
    /// including the first component of the path: "tend/a/t" removes "t", then
    /// "a" if no other task is in it, never "tend". Dirs already gone are fine.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for (mount, dir) in &self.dirs {
            if let Err(e) = self.remove_one(mount, dir) {
                tracing::warn!(error = %e, "cgroup: remove");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn remove_one(&self, mount: &Path, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + RMDIR_PATIENCE;
        loop {
            match self.tree.rmdir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(CgroupError::Rmdir {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        }
        // Parents, deepest first, stopping below the first component.
        let comps: Vec<Component> = self.rel.components().collect();
        for keep in (2..comps.len()).rev() {
            let parent: PathBuf = comps[..keep].iter().collect();
            let path = mount.join(&parent);
            match self.tree.rmdir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Another task still lives there: done.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {
                    break
                }
                Err(source) => return Err(CgroupError::Rmdir { path, source }),
            }
        }
        Ok(())
    }
}

/// v1 cpu.shares from MHz, within what the kernel accepts.
fn cpu_shares(mhz: u64) -> u64 {
    mhz.clamp(MIN_SHARES, MAX_SHARES)
}

/// v2 cpu.weight from v1 shares, runc's mapping of [2, 262144] onto [1, 10000].
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    (1 + ((shares - 2) * 9999) / 262_142).clamp(1, 10_000)
}

/// Write a whole value in one write: cgroup files take one value per write(2).
/// Never creates: a missing control file is an error, as on the kernel.
fn write_file(path: &Path, value: &str) -> Result<()> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A file the host may not offer: None when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_u64(path: &Path) -> Result<u64> {
    parse_u64(path, &read_file(path)?)
}

fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    let t = text.trim();
    t.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("not a number: {t:?}"),
    })
}

/// The value of `key` in "key value" lines (memory.events, cpu.stat, memory.oom_control).
fn keyed_u64(path: &Path, text: &str, key: &str) -> Result<Option<u64>> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or("");
            return parse_u64(path, value).map(Some);
        }
    }
    Ok(None)
}

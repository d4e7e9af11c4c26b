//! The task's cgroup, written as plain files, on v1, v2 and hybrid hosts.
//!
//! [`Hierarchies`] finds where the controllers are mounted; [`TaskCgroup`] is one
//! task's cgroup in every hierarchy it uses: create it with its limits, add the
//! task to it, read its OOM counter and usage, kill everything in it, remove it.
//!
//! Every path derives from one root (`/sys/fs/cgroup` on a host), so the same code
//! runs on fake trees in temp dirs. The only other seam is `Tree`: making and
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
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::{getpid, Pid};
use tend_proto::config::CgroupSpec;

mod stats;

/// Where cgroup hierarchies are mounted on a host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Where the mounts of this process are listed.
pub const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Largest v1 `cpu.shares` the kernel accepts.
const MAX_SHARES: u64 = 262_144;

/// Smallest v1 `cpu.shares` the kernel accepts.
const MIN_SHARES: u64 = 2;

/// How long `remove` retries a busy leaf: its last processes may still be exiting.
/// Last component of the daemon cgroup every tend-spawn shares
/// (`<cgroup_parent>/tend-spawn`); see [`Hierarchies::is_shared_daemon_path`].
pub const SHARED_DAEMON_CGROUP: &str = "tend-spawn";

const RMDIR_PATIENCE: Duration = Duration::from_secs(2);

/// How long `kill_all` keeps killing before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// How long a freeze may take before we kill anyway (SIGKILL still lands on thaw).
const FREEZE_PATIENCE: Duration = Duration::from_secs(1);

/// What went wrong, naming the file or dir; io errors are kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup parent cannot hold tasks (see [`Hierarchies::check_parent`]).
    #[error("cgroup parent {dir}: {reason}")]
    ParentUnusable {
        /// The parent's dir in the hierarchy at fault.
        dir: PathBuf,
        /// What is missing, and what to do.
        reason: String,
    },
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
    /// IO weight (`io_weight`).
    Blkio,
}

impl Controller {
    /// Every controller tend uses, in the order their dirs are made.
    pub const ALL: [Controller; 6] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Freezer,
        Controller::Blkio,
    ];

    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
            Controller::Blkio => "blkio",
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

    /// Check that tasks can be made under `parent` (relative to each
    /// hierarchy's root) with the controllers every exec task needs (memory,
    /// pids, cpu): in each hierarchy the parent, or the nearest dir above it
    /// that exists, is a writable dir; on v2 the controllers are enabled in the
    /// parent's `cgroup.subtree_control` (enabled here when they are not, as
    /// tend-spawn would: refused when that fails) or, for a parent still to be
    /// made, available in its nearest ancestor's `cgroup.controllers`.
    pub fn check_parent(&self, parent: &str) -> Result<()> {
        const NEEDED: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];
        let rel = check_rel(parent)?;
        let mut mounts: Vec<&Path> = Vec::new();
        if self.mode != Mode::V2 {
            for c in NEEDED {
                let mount = self
                    .v1_mount(c)
                    .ok_or_else(|| CgroupError::ParentUnusable {
                        dir: self.root.join(c.name()).join(&rel),
                        reason: format!(
                            "no {} hierarchy is mounted under {}",
                            c.name(),
                            self.root.display()
                        ),
                    })?;
                mounts.push(mount);
            }
        }
        mounts.extend(self.unified_mount());
        mounts.dedup();
        for mount in mounts {
            let dir = mount.join(&rel);
            let unusable = |reason: String| CgroupError::ParentUnusable {
                dir: dir.clone(),
                reason,
            };
            let mut near = dir.as_path();
            while near != mount && fs::symlink_metadata(near).is_err() {
                near = near.parent().unwrap_or(mount);
            }
            if !near.is_dir() {
                return Err(unusable(format!("{} is not a directory", near.display())));
            }
            if let Err(e) = nix::unistd::access(near, nix::unistd::AccessFlags::W_OK) {
                return Err(unusable(format!(
                    "{} is not writable ({}): tend-spawn makes each task's cgroup there",
                    near.display(),
                    e.desc()
                )));
            }
            if self.mode == Mode::V2 {
                let names: Vec<&str> = NEEDED.iter().map(|c| c.name()).collect();
                check_v2_delegation(&dir, near, mount, &names).map_err(unusable)?;
            }
        }
        Ok(())
    }

    /// Whether `daemon_path` is the cgroup all tend-spawns share: its last
    /// component is [`SHARED_DAEMON_CGROUP`] (`<cgroup_parent>/tend-spawn`).
    ///
    /// The design only needs each daemon outside its task's cgroup (its memory
    /// must not count against the task) and outside the agent's (stopping the
    /// agent's service must not kill it). One shared cgroup does both and spares
    /// every spawn a mkdir per hierarchy and level, and every exit a migration
    /// back to the root (a write of `cgroup.procs` waits for an RCU grace
    /// period) and the rmdirs: it is made once, never left (a process leaves
    /// a cgroup by exiting) and never removed (other daemons live in it).
    pub fn is_shared_daemon_path(daemon_path: &str) -> bool {
        daemon_path.rsplit('/').next() == Some(SHARED_DAEMON_CGROUP)
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

    /// Undo [`Hierarchies::join_self`] as the daemon leaves: move the calling
    /// process back to the root cgroup of every hierarchy (a cgroup with a
    /// process in it cannot be removed), then remove `daemon_path` and the
    /// parents it leaves empty, as [`TaskCgroup::remove`] does.
    ///
    /// A shared daemon cgroup ([`Hierarchies::is_shared_daemon_path`]) is
    /// neither left nor removed: other daemons live in it, and the caller is
    /// about to exit, which takes it out without a migration.
    pub fn leave_self(&self, daemon_path: &str) -> Result<()> {
        let cg = TaskCgroup::open(self, daemon_path)?;
        if Hierarchies::is_shared_daemon_path(daemon_path) {
            return Ok(());
        }
        for (mount, _) in &cg.dirs {
            write_file(&mount.join("cgroup.procs"), "0")?;
        }
        cg.remove()
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

/// v2: the controllers `needed` reach the cgroups made under `dir`. `near` is
/// `dir` when it exists, else its nearest existing ancestor.
fn check_v2_delegation(
    dir: &Path,
    near: &Path,
    mount: &Path,
    needed: &[&str],
) -> std::result::Result<(), String> {
    // The needed controllers a control file does not list.
    let missing_in = |path: &Path| -> std::result::Result<Vec<&str>, String> {
        let text = fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {}", path.display(), errno_text(&e)))?;
        let listed: Vec<&str> = text.split_whitespace().collect();
        Ok(needed
            .iter()
            .copied()
            .filter(|c| !listed.contains(c))
            .collect())
    };
    if near != dir {
        // Made later, from the mount down: the nearest dir that exists must
        // offer them (the root offers every controller the kernel has).
        let file = near.join("cgroup.controllers");
        let missing = missing_in(&file)?;
        if !missing.is_empty() {
            let up = if near == mount {
                "the kernel"
            } else {
                "its parent's cgroup.subtree_control"
            };
            return Err(format!(
                "{} not in {} (enable it in {up})",
                missing.join(", "),
                file.display()
            ));
        }
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    let missing = missing_in(&file)?;
    if missing.is_empty() {
        return Ok(());
    }
    let plus: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    write_file(&file, &plus.join(" ")).map_err(|e| {
        let why = match &e {
            CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                format!(
                    "{} (it holds processes of its own: move them out)",
                    errno_text(source)
                )
            }
            CgroupError::Write { source, .. } => errno_text(source),
            other => other.to_string(),
        };
        format!(
            "{} not enabled in {} and enabling failed: {why}",
            missing.join(", "),
            file.display()
        )
    })
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
                // 0755 whatever the umask (setuid mode's is 077): the caller
                // must reach the kill files chowned to it, and the usage
                // files, as in any cgroup dir.
                Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(
                    |source| CgroupError::Mkdir {
                        path: path.clone(),
                        source,
                    },
                )?,
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
        let o = &spec.options;
        if let Some(soft) = o.memory_soft_bytes {
            let dir = self.need(Controller::Memory)?;
            write_file(&dir.join("memory.soft_limit_in_bytes"), &soft.to_string())?;
        }
        if let Some(q) = o.cpu_quota {
            let dir = self.need(Controller::Cpu)?;
            // The period first: the quota is checked against it.
            write_file(&dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
            write_file(&dir.join("cpu.cfs_quota_us"), &q.quota_us.to_string())?;
        }
        if let Some(w) = o.io_weight {
            let files = self.dir_of(Controller::Blkio).map(|d| {
                [
                    (d.join("blkio.weight"), blkio_weight(w)),
                    (d.join("blkio.bfq.weight"), blkio_weight(w)),
                ]
            });
            self.write_weight(files.as_ref().map(|f| f.as_slice()), "blkio.weight")?;
        }
        if o.oom_kill_group {
            tracing::warn!(
                "cgroup: oom_kill_group needs cgroup v2 (memory.oom.group); this host is v1: an OOM kills one process"
            );
        }
        Ok(())
    }

    /// Write an IO weight to the first of `files` the kernel offers; with none
    /// (no IO controller, or an IO scheduler without weights) only a warning:
    /// a weight is a preference, not a limit the task may count on.
    fn write_weight(&self, files: Option<&[(PathBuf, u64)]>, want: &str) -> Result<()> {
        match files.into_iter().flatten().find(|(f, _)| f.is_file()) {
            Some((file, value)) => write_file(file, &io_weight_text(file, *value)),
            None => {
                tracing::warn!(
                    cgroup = %self.rel.display(),
                    "cgroup: io_weight not set: no {want} (the IO controller or a weight-aware IO scheduler is missing)"
                );
                Ok(())
            }
        }
    }

    fn set_limits_v2(&self, spec: &CgroupSpec) -> Result<()> {
        // On v2 every controller's files are in the one dir.
        let Some(dir) = self.unified.as_deref() else {
            return Ok(());
        };
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
        let o = &spec.options;
        if let Some(soft) = o.memory_soft_bytes {
            write_file(&dir.join("memory.low"), &soft.to_string())?;
        }
        if let Some(q) = o.cpu_quota {
            write_file(
                &dir.join("cpu.max"),
                &format!("{} {}", q.quota_us, q.period_us),
            )?;
        }
        if let Some(w) = o.io_weight {
            let w = u64::from(w);
            let files = [(dir.join("io.weight"), w), (dir.join("io.bfq.weight"), w)];
            self.write_weight(Some(&files), "io.weight")?;
        }
        if o.oom_kill_group {
            write_file(&dir.join("memory.oom.group"), "1")?;
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
            (
                "cpu",
                spec.cpu_mhz.is_some() || spec.options.cpu_quota.is_some(),
            ),
            ("io", false),
        ];
        let mut enable = Vec::new();
        for (name, needed) in wanted {
            let optional = match name {
                "cpu" => false,
                // Only for a weight, and a missing one is a warning (set_limits_v2).
                "io" => spec.options.io_weight.is_some(),
                _ => true,
            };
            if available.contains(&name) {
                if needed || optional {
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

    /// Setuid mode: give the files that kill the cgroup to the caller, so the
    /// daemon, once it is the caller, kills it without a capability:
    /// `cgroup.kill` and `cgroup.freeze` in the cgroup2 tree, `freezer.state`
    /// on v1. The limits, `cgroup.procs` and the dirs stay root's. A file the
    /// host does not have is skipped.
    pub fn chown_kill_files(&self, uid: u32, gid: u32) -> Result<()> {
        let mut files = Vec::new();
        if let Some(d) = &self.unified {
            files.push(d.join("cgroup.kill"));
            files.push(d.join("cgroup.freeze"));
        }
        if let Some(d) = self.v1.get(&Controller::Freezer) {
            files.push(d.join("freezer.state"));
        }
        for f in files {
            match std::os::unix::fs::lchown(&f, Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Write { path: f, source }),
            }
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

    /// One round of [`TaskCgroup::kill_all`], without waiting for the processes
    /// to be gone: `cgroup.kill` where there is one (the kernel signals every
    /// member before the write returns and refuses forks meanwhile), else
    /// freeze, SIGKILL each, thaw (a freeze waits at most 1 s). Returns whether
    /// any process was in the cgroup.
    pub fn kill_once(&self) -> Result<bool> {
        let pids = self.pids()?;
        if pids.is_empty() {
            return Ok(false);
        }
        let me = getpid();
        if pids.contains(&me) {
            return Err(CgroupError::HoldsSelf {
                path: self.first_dir(),
                pid: me,
            });
        }
        match self
            .unified
            .as_ref()
            .map(|d| d.join("cgroup.kill"))
            .filter(|f| f.is_file())
        {
            Some(f) => write_file(&f, "1")?,
            None => self.freeze_kill_thaw()?,
        }
        Ok(true)
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
        let killed = self.sigkill_members();
        // Thaw even when a kill failed: a frozen task must not stay behind.
        let thawed = self.set_frozen(false);
        killed.and(thawed)
    }

    /// SIGKILL each process listed in the cgroup through a pidfd, never by
    /// its bare pid: each pidfd is opened first, then the list is read again,
    /// and only a pid still listed is signalled. A pid reused since the first
    /// read by a process outside the cgroup is not listed the second time; if
    /// the process the pidfd holds died meanwhile, the signal goes nowhere.
    fn sigkill_members(&self) -> Result<()> {
        let held: Vec<(Pid, std::os::fd::OwnedFd)> = self
            .pids()?
            .into_iter()
            .filter_map(|pid| crate::sys::pidfd_open(pid).ok().map(|fd| (pid, fd)))
            .collect();
        let listed = self.pids()?;
        for (pid, fd) in held.iter().filter(|(p, _)| listed.contains(p)) {
            match crate::sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(fd), libc::SIGKILL) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(CgroupError::Kill {
                        pid: *pid,
                        source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    })
                }
            }
        }
        Ok(())
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

/// v1 blkio.weight (10-1000) from a v2-style io_weight (1-10000), linearly.
fn blkio_weight(w: u16) -> u64 {
    10 + (u64::from(w).clamp(1, 10_000) - 1) * 990 / 9999
}

/// What an IO weight file takes: `default N` for the v2 files (a bare N means
/// the same to io.weight, but io.bfq.weight wants the keyword on old kernels).
fn io_weight_text(file: &Path, value: u64) -> String {
    match file.file_name().and_then(|n| n.to_str()) {
        Some("io.weight" | "io.bfq.weight") => format!("default {value}"),
        _ => value.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tend_proto::config::{CgroupOptions, CpuQuota};

    use super::*;

    /// Imitates the kernel's side of mkdir and rmdir in a cgroup tree: a new
    /// dir gets its parent's control files (membership and subtree_control
    /// start empty), rmdir refuses a cgroup with processes or children.
    #[derive(Debug)]
    struct FakeKernel;

    impl Tree for FakeKernel {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            fs::create_dir(path)?;
            let parent = path.parent().expect("cgroup dir has a parent");
            for entry in fs::read_dir(parent)? {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                let name = entry.file_name();
                let content = match name.to_str() {
                    Some("cgroup.procs" | "tasks" | "cgroup.subtree_control") => String::new(),
                    _ => fs::read_to_string(entry.path())?,
                };
                fs::write(path.join(name), content)?;
            }
            Ok(())
        }

        fn rmdir(&self, path: &Path) -> io::Result<()> {
            let busy = || io::Error::from_raw_os_error(libc::EBUSY);
            let mut files = Vec::new();
            for entry in fs::read_dir(path)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    return Err(busy());
                }
                files.push(entry.path());
            }
            let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                return Err(busy());
            }
            for f in files {
                fs::remove_file(f)?;
            }
            fs::remove_dir(path)
        }
    }

    const UNLIMITED_V1: &str = "9223372036854771712\n";

    fn put(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
    }

    fn read(path: impl AsRef<Path>) -> String {
        fs::read_to_string(path.as_ref())
            .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
    }

    /// A v1 tree as this host has it: cpu and cpuacct separate, or co-mounted.
    fn fake_v1(root: &Path, comounted: bool) {
        let procs = [("cgroup.procs", ""), ("tasks", "")];
        let dirs: Vec<(&str, Vec<(&str, &str)>)> = vec![
            (
                "memory",
                vec![
                    ("memory.limit_in_bytes", UNLIMITED_V1),
                    ("memory.memsw.limit_in_bytes", UNLIMITED_V1),
                    (
                        "memory.oom_control",
                        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                    ),
                    ("memory.usage_in_bytes", "0\n"),
                    ("memory.max_usage_in_bytes", "0\n"),
                ],
            ),
            ("pids", vec![("pids.max", "max\n"), ("pids.current", "0\n")]),
            ("freezer", vec![("freezer.state", "THAWED\n")]),
            ("systemd", vec![]),
        ];
        for (name, files) in dirs {
            put(&root.join(name), &files);
            put(&root.join(name), &procs);
        }
        let cpu = [("cpu.shares", "1024\n")];
        let cpuacct = [("cpuacct.usage", "0\n")];
        if comounted {
            put(&root.join("cpu,cpuacct"), &cpu);
            put(&root.join("cpu,cpuacct"), &cpuacct);
            put(&root.join("cpu,cpuacct"), &procs);
        } else {
            put(&root.join("cpu"), &cpu);
            put(&root.join("cpu"), &procs);
            put(&root.join("cpuacct"), &cpuacct);
            put(&root.join("cpuacct"), &procs);
        }
    }

    fn fake_v2(root: &Path) {
        put(
            root,
            &[
                ("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n"),
                ("cgroup.subtree_control", ""),
                ("cgroup.procs", ""),
                ("cgroup.kill", ""),
                ("cgroup.freeze", "0\n"),
                ("cgroup.events", "populated 0\nfrozen 0\n"),
                ("memory.max", "max\n"),
                ("memory.swap.max", "max\n"),
                ("memory.current", "0\n"),
                ("memory.peak", "0\n"),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
                ),
                ("cpu.weight", "100\n"),
                ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
                ("pids.max", "max\n"),
                ("pids.current", "0\n"),
            ],
        );
    }

    /// v1 controllers plus a cgroup2 tree with no controllers, as on this host.
    fn fake_hybrid(root: &Path) {
        fake_v1(root, false);
        put(
            &root.join("unified"),
            &[
                ("cgroup.controllers", "\n"),
                ("cgroup.subtree_control", ""),
                ("cgroup.procs", ""),
                ("cgroup.kill", ""),
            ],
        );
    }

    fn probe_fake(root: &Path) -> Hierarchies {
        Hierarchies::probe(root).unwrap().with_tree(&FakeKernel)
    }

    fn spec(path: &str) -> CgroupSpec {
        CgroupSpec {
            path: path.to_string(),
            daemon_path: None,
            memory_bytes: Some(64 << 20),
            cpu_mhz: Some(500),
            pids_max: Some(64),
            options: Default::default(),
        }
    }

    fn mountinfo_line(id: u32, mount: &Path, fstype: &str, opts: &str) -> String {
        format!(
            "{id} 31 0:{id} / {} rw,relatime - {fstype} {fstype} {opts}\n",
            mount.display().to_string().replace(' ', "\\040")
        )
    }

    #[test]
    fn mountinfo_v1_separate_cpu_and_cpuacct() {
        let root = Path::new("/sys/fs/cgroup");
        let mut text = String::from("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n");
        for (i, c) in ["cpu", "cpuacct", "cpuset", "memory", "freezer", "pids"]
            .iter()
            .enumerate()
        {
            let id = u32::try_from(i).unwrap() + 32;
            text += &mountinfo_line(id, &root.join(c), "cgroup", &format!("rw,{c}"));
        }
        text += &mountinfo_line(40, &root.join("systemd"), "cgroup", "rw,name=systemd");
        // A bind mount elsewhere is not ours.
        text += &mountinfo_line(50, Path::new("/other/memory"), "cgroup", "rw,memory");
        let h = Hierarchies::from_mountinfo(root, &text).unwrap();
        assert_eq!(h.mode(), Mode::V1);
        assert_eq!(
            h.v1_mount(Controller::Cpu),
            Some(root.join("cpu").as_path())
        );
        assert_eq!(
            h.v1_mount(Controller::Cpuacct),
            Some(root.join("cpuacct").as_path())
        );
        assert_eq!(
            h.v1_mount(Controller::Memory),
            Some(root.join("memory").as_path())
        );
        assert_eq!(
            h.v1_mount(Controller::Pids),
            Some(root.join("pids").as_path())
        );
        assert_eq!(
            h.v1_mount(Controller::Freezer),
            Some(root.join("freezer").as_path())
        );
        assert_eq!(h.unified_mount(), None);
    }

    #[test]
    fn mountinfo_v1_comounted_cpu_cpuacct_with_escaped_root() {
        let root = Path::new("/tmp/with space/cg");
        let text = mountinfo_line(32, &root.join("cpu,cpuacct"), "cgroup", "rw,cpu,cpuacct")
            + &mountinfo_line(33, &root.join("memory"), "cgroup", "rw,memory");
        let h = Hierarchies::from_mountinfo(root, &text).unwrap();
        assert_eq!(h.mode(), Mode::V1);
        let both = root.join("cpu,cpuacct");
        assert_eq!(h.v1_mount(Controller::Cpu), Some(both.as_path()));
        assert_eq!(h.v1_mount(Controller::Cpuacct), Some(both.as_path()));
        // One dir per distinct mount.
        let cg = TaskCgroup::open(&h, "tend/a/t").unwrap();
        assert_eq!(cg.dirs().count(), 2);
    }

    #[test]
    fn mountinfo_v2_and_hybrid() {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = mountinfo_line(30, root, "cgroup2", "rw,nsdelegate");
        let h = Hierarchies::from_mountinfo(root, &v2).unwrap();
        assert_eq!(h.mode(), Mode::V2);
        assert_eq!(h.unified_mount(), Some(root));

        let hybrid = mountinfo_line(35, &root.join("memory"), "cgroup", "rw,memory")
            + &mountinfo_line(41, &root.join("unified"), "cgroup2", "rw");
        let h = Hierarchies::from_mountinfo(root, &hybrid).unwrap();
        assert_eq!(h.mode(), Mode::Hybrid);
        assert_eq!(h.unified_mount(), Some(root.join("unified").as_path()));

        // Nothing under the root.
        assert!(Hierarchies::from_mountinfo(Path::new("/elsewhere"), &hybrid).is_none());
    }

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\011b\\134"), "/a\tb\\");
        // Not an escape: kept as written.
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn probes_fake_trees() {
        let t = tempfile::tempdir().unwrap();
        let (v1, v1c, v2, hy) = (
            t.path().join("v1"),
            t.path().join("v1c"),
            t.path().join("v2"),
            t.path().join("hy"),
        );
        fake_v1(&v1, false);
        fake_v1(&v1c, true);
        fake_v2(&v2);
        fake_hybrid(&hy);
        let h = Hierarchies::probe(&v1).unwrap();
        assert_eq!(h.mode(), Mode::V1);
        assert_eq!(
            h.v1_mount(Controller::Cpuacct),
            Some(v1.join("cpuacct").as_path())
        );
        let h = Hierarchies::probe(&v1c).unwrap();
        assert_eq!(
            h.v1_mount(Controller::Cpu),
            Some(v1c.join("cpu,cpuacct").as_path())
        );
        assert_eq!(Hierarchies::probe(&v2).unwrap().mode(), Mode::V2);
        let h = Hierarchies::probe(&hy).unwrap();
        assert_eq!(h.mode(), Mode::Hybrid);
        assert_eq!(h.unified_mount(), Some(hy.join("unified").as_path()));

        // detect_at probes when the mountinfo names nothing there or is missing.
        let h = Hierarchies::detect_at(&hy, &t.path().join("no-mountinfo")).unwrap();
        assert_eq!(h.mode(), Mode::Hybrid);
        let mi = t.path().join("mountinfo");
        fs::write(&mi, mountinfo_line(30, &v2, "cgroup2", "rw")).unwrap();
        assert_eq!(Hierarchies::detect_at(&v2, &mi).unwrap().mode(), Mode::V2);
        assert_eq!(Hierarchies::detect_at(&v1, &mi).unwrap().mode(), Mode::V1);

        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = Hierarchies::probe(&empty).unwrap_err();
        assert!(matches!(e, CgroupError::NoHierarchy { .. }), "{e}");
    }

    #[test]
    fn v1_create_writes_limits_without_swap() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let d = |c: &str| t.path().join(c).join("tend/a/t");
        assert_eq!(read(d("memory").join("memory.limit_in_bytes")), "67108864");
        assert_eq!(
            read(d("memory").join("memory.memsw.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(read(d("cpu").join("cpu.shares")), "500");
        assert_eq!(read(d("pids").join("pids.max")), "64");
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            assert!(d(c).is_dir(), "{c}");
        }
        assert!(!d("systemd").exists());
        assert_eq!(cg.dirs().count(), 5);

        // A limit left out is not written.
        let mut s = spec("tend/a/u");
        (s.memory_bytes, s.cpu_mhz, s.pids_max) = (None, None, None);
        TaskCgroup::create(&h, &s).unwrap();
        let u = t.path().join("memory/tend/a/u");
        assert_eq!(read(u.join("memory.limit_in_bytes")), UNLIMITED_V1);
    }

    #[test]
    fn v1_memsw_order_and_absence() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        // memsw below the new limit: it must be raised first; both end equal.
        fs::write(
            t.path().join("memory/memory.memsw.limit_in_bytes"),
            "1000\n",
        )
        .unwrap();
        let h = probe_fake(t.path());
        TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let d = t.path().join("memory/tend/a/t");
        assert_eq!(read(d.join("memory.memsw.limit_in_bytes")), "67108864");
        assert_eq!(read(d.join("memory.limit_in_bytes")), "67108864");

        // No swap accounting: only the limit, and no memsw file is made up.
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        fs::remove_file(t.path().join("memory/memory.memsw.limit_in_bytes")).unwrap();
        let h = probe_fake(t.path());
        TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let d = t.path().join("memory/tend/a/t");
        assert_eq!(read(d.join("memory.limit_in_bytes")), "67108864");
        assert!(!d.join("memory.memsw.limit_in_bytes").exists());
    }

    #[test]
    fn v2_create_enables_controllers_and_writes_limits() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let leaf = t.path().join("tend/a/t");
        assert_eq!(cg.dirs().collect::<Vec<_>>(), vec![leaf.as_path()]);
        assert_eq!(read(leaf.join("memory.max")), "67108864");
        assert_eq!(read(leaf.join("memory.swap.max")), "0");
        assert_eq!(read(leaf.join("cpu.weight")), "19");
        assert_eq!(read(leaf.join("pids.max")), "64");
        for anc in ["", "tend", "tend/a"] {
            let f = t.path().join(anc).join("cgroup.subtree_control");
            assert_eq!(read(f), "+memory +pids +cpu", "{anc}");
        }
        assert_eq!(read(leaf.join("cgroup.subtree_control")), "");

        // Already enabled: nothing is written again.
        fs::write(t.path().join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        TaskCgroup::create(&h, &spec("tend/a/u")).unwrap();
        assert_eq!(
            read(t.path().join("cgroup.subtree_control")),
            "cpu memory pids\n"
        );
    }

    fn spec_with_options(path: &str) -> CgroupSpec {
        let mut s = spec(path);
        s.options = CgroupOptions {
            memory_soft_bytes: Some(32 << 20),
            cpu_quota: Some(CpuQuota {
                quota_us: 25_000,
                period_us: 100_000,
            }),
            io_weight: Some(500),
            oom_kill_group: true,
        };
        s
    }

    #[test]
    fn v2_options_write_low_cpu_max_io_weight_and_oom_group() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        put(
            t.path(),
            &[
                ("memory.low", "0\n"),
                ("memory.oom.group", "0\n"),
                ("cpu.max", "max 100000\n"),
                ("io.weight", "default 100\n"),
            ],
        );
        let h = probe_fake(t.path());
        TaskCgroup::create(&h, &spec_with_options("tend/a/t")).unwrap();
        let leaf = t.path().join("tend/a/t");
        assert_eq!(read(leaf.join("memory.max")), "67108864");
        assert_eq!(read(leaf.join("memory.low")), "33554432");
        assert_eq!(read(leaf.join("cpu.max")), "25000 100000");
        assert_eq!(read(leaf.join("io.weight")), "default 500");
        assert_eq!(read(leaf.join("memory.oom.group")), "1");
        for anc in ["", "tend", "tend/a"] {
            let f = t.path().join(anc).join("cgroup.subtree_control");
            assert_eq!(read(f), "+memory +pids +cpu +io", "{anc}");
        }
        // Without options none of them is touched, and io stays off.
        TaskCgroup::create(&h, &spec("tend/b/t")).unwrap();
        let leaf = t.path().join("tend/b/t");
        assert_eq!(read(leaf.join("memory.low")), "0\n");
        assert_eq!(read(leaf.join("memory.oom.group")), "0\n");
        assert_eq!(read(leaf.join("cpu.max")), "max 100000\n");
        assert_eq!(
            read(t.path().join("tend/b/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
    }

    #[test]
    fn an_io_weight_without_a_weight_file_is_a_warning_not_a_failure() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let h = probe_fake(t.path());
        let mut s = spec("tend/a/t");
        s.options.io_weight = Some(500);
        TaskCgroup::create(&h, &s).unwrap();
        assert!(!t.path().join("tend/a/t/io.weight").exists());
    }

    #[test]
    fn v1_options_write_soft_limit_cfs_quota_and_scaled_blkio_weight() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        put(
            &t.path().join("memory"),
            &[("memory.soft_limit_in_bytes", UNLIMITED_V1)],
        );
        put(
            &t.path().join("cpu"),
            &[
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.cfs_period_us", "100000\n"),
            ],
        );
        put(
            &t.path().join("blkio"),
            &[
                ("cgroup.procs", ""),
                ("tasks", ""),
                ("blkio.weight", "500\n"),
            ],
        );
        let h = probe_fake(t.path());
        TaskCgroup::create(&h, &spec_with_options("tend/a/t")).unwrap();
        let d = |c: &str| t.path().join(c).join("tend/a/t");
        assert_eq!(read(d("memory").join("memory.limit_in_bytes")), "67108864");
        assert_eq!(
            read(d("memory").join("memory.soft_limit_in_bytes")),
            "33554432"
        );
        assert_eq!(read(d("cpu").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(d("cpu").join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read(d("blkio").join("blkio.weight")), "59");
    }

    #[test]
    fn blkio_weight_scales_onto_10_to_1000() {
        assert_eq!(blkio_weight(1), 10);
        assert_eq!(blkio_weight(100), 19);
        assert_eq!(blkio_weight(10_000), 1000);
        assert_eq!(blkio_weight(0), 10);
    }

    #[test]
    fn check_parent_on_fake_trees() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        // Still to be made: the root offers every controller.
        h.check_parent("tend").unwrap();
        // A path under a file.
        let e = h.check_parent("cgroup.procs/x").unwrap_err().to_string();
        assert!(e.ends_with("cgroup.procs is not a directory"), "{e}");
        // An existing parent: what its subtree_control lacks is enabled.
        put(
            &t.path().join("tend"),
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("cgroup.subtree_control", "memory\n"),
            ],
        );
        h.check_parent("tend").unwrap();
        assert_eq!(
            read(t.path().join("tend/cgroup.subtree_control")),
            "+pids +cpu"
        );
        // Below a dir that does not offer cpu: nothing can enable it there.
        put(
            &t.path().join("tend"),
            &[("cgroup.controllers", "memory pids\n")],
        );
        let e = h.check_parent("tend/x").unwrap_err().to_string();
        let file = t.path().join("tend/cgroup.controllers");
        assert!(e.contains(&format!("cpu not in {}", file.display())), "{e}");

        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        h.check_parent("tend").unwrap();
        fs::remove_dir_all(t.path().join("pids")).unwrap();
        let h = probe_fake(t.path());
        let e = h.check_parent("tend").unwrap_err().to_string();
        assert!(e.contains("no pids hierarchy is mounted"), "{e}");
    }

    #[test]
    fn dirs_made_under_umask_077_are_0755_and_dirs_already_there_are_left_alone() {
        // Setuid mode's umask: without the chmod the caller could not reach
        // the kill files chowned to it (each test is its own process).
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let mode = |p: &str| fs::metadata(t.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("tend"), 0o755);
        assert_eq!(mode("tend/a"), 0o755);
        assert_eq!(mode("tend/a/t"), 0o755);
        fs::set_permissions(t.path().join("tend"), fs::Permissions::from_mode(0o711)).unwrap();
        TaskCgroup::create(&h, &spec("tend/b/t")).unwrap();
        assert_eq!(mode("tend/b/t"), 0o755);
        assert_eq!(mode("tend"), 0o711);
    }

    #[test]
    fn v2_missing_controller_fails_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        fs::write(t.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let h = probe_fake(t.path());
        let e = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::ControllerMissing {
                    controller: "cpu",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!t.path().join("tend/a").exists());
        assert!(t.path().join("tend").is_dir());
    }

    #[test]
    fn cpu_shares_and_runc_weight() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_shares(500), 500);
        assert_eq!(cpu_shares(1 << 40), 262_144);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(500), 19);
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(u64::MAX), 10_000);
    }

    #[test]
    fn hybrid_limits_in_v1_membership_in_both() {
        let t = tempfile::tempdir().unwrap();
        fake_hybrid(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        assert_eq!(
            read(t.path().join("memory/tend/a/t/memory.limit_in_bytes")),
            "67108864"
        );
        let unified = t.path().join("unified/tend/a/t");
        assert!(unified.is_dir());
        // No controllers there: nothing enabled.
        assert_eq!(read(t.path().join("unified/cgroup.subtree_control")), "");
        cg.add_pid(Pid::from_raw(4242)).unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer", "unified"] {
            let f = t.path().join(c).join("tend/a/t/cgroup.procs");
            assert_eq!(read(f), "4242", "{c}");
        }
        assert_eq!(cg.pids().unwrap(), vec![Pid::from_raw(4242)]);
    }

    #[test]
    fn v2_add_pid_and_join_self() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        cg.add_pid(Pid::from_raw(77)).unwrap();
        assert_eq!(read(t.path().join("tend/a/t/cgroup.procs")), "77");
        h.join_self("tend/spawn/a-t").unwrap();
        assert_eq!(read(t.path().join("tend/spawn/a-t/cgroup.procs")), "0");
    }

    #[test]
    fn v1_join_self_in_every_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), true);
        let h = probe_fake(t.path());
        h.join_self("tend-spawn/x").unwrap();
        for c in ["memory", "cpu,cpuacct", "pids", "freezer"] {
            let f = t.path().join(c).join("tend-spawn/x/cgroup.procs");
            assert_eq!(read(f), "0", "{c}");
        }
    }

    #[test]
    fn leave_self_moves_to_the_root_and_removes_the_daemon_dir() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        let task = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        h.join_self("tend/a/t.tend-spawn").unwrap();
        // The fake kernel keeps what was written: clear it as a move would.
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            fs::write(
                t.path().join(c).join("tend/a/t.tend-spawn/cgroup.procs"),
                "",
            )
            .unwrap();
        }
        h.leave_self("tend/a/t.tend-spawn").unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            assert_eq!(read(t.path().join(c).join("cgroup.procs")), "0", "{c}");
            assert!(
                !t.path().join(c).join("tend/a/t.tend-spawn").exists(),
                "{c}"
            );
            // The task's cgroup is still there, so its parent stays.
            assert!(t.path().join(c).join("tend/a/t").is_dir(), "{c}");
        }
        task.remove().unwrap();
        assert!(!t.path().join("memory/tend/a").exists());
        assert!(t.path().join("memory/tend").is_dir());
    }

    #[test]
    fn the_shared_daemon_cgroup_is_joined_but_never_left_nor_removed() {
        assert!(Hierarchies::is_shared_daemon_path("tend/tend-spawn"));
        assert!(Hierarchies::is_shared_daemon_path("tend/1000/tend-spawn"));
        assert!(!Hierarchies::is_shared_daemon_path("tend/a/t.tend-spawn"));
        assert!(!Hierarchies::is_shared_daemon_path("tend/tend-spawn/x"));
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        let task = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        h.join_self("tend/tend-spawn").unwrap();
        h.leave_self("tend/tend-spawn").unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            let procs = t.path().join(c).join("tend/tend-spawn/cgroup.procs");
            assert_eq!(read(&procs), "0", "{c}: joined");
            // Not moved back to the root: the exit takes the daemon out.
            assert_ne!(read(t.path().join(c).join("cgroup.procs")), "0", "{c}");
        }
        task.remove().unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
            assert!(!t.path().join(c).join("tend/a").exists(), "{c}");
            assert!(t.path().join(c).join("tend/tend-spawn").is_dir(), "{c}");
        }
    }

    #[test]
    fn kill_once_on_an_empty_cgroup_does_nothing() {
        let t = tempfile::tempdir().unwrap();
        fake_hybrid(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        assert!(!cg.kill_once().unwrap());
        fs::write(
            t.path().join("memory/tend/a/t/cgroup.procs"),
            getpid().to_string(),
        )
        .unwrap();
        assert!(matches!(cg.kill_once(), Err(CgroupError::HoldsSelf { .. })));
    }

    #[test]
    fn oom_counter_parsing() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), Some(0));
        let f = t.path().join("memory/tend/a/t/memory.oom_control");
        fs::write(&f, "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n").unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), Some(3));
        // An old kernel without the counter: unknown, not under_oom.
        fs::write(&f, "oom_kill_disable 0\nunder_oom 1\n").unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), None);
        fs::write(&f, "oom_kill lots\n").unwrap();
        let e = cg.oom_kill_count().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cgroup: parse {}: not a number: \"lots\"", f.display())
        );

        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let f = t.path().join("tend/a/t/memory.events");
        fs::write(
            &f,
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), Some(2));
        fs::remove_file(&f).unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), None);
    }

    #[test]
    fn usage_parsing() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let d = |c: &str| t.path().join(c).join("tend/a/t");
        fs::write(d("memory").join("memory.usage_in_bytes"), "1048576\n").unwrap();
        fs::write(d("memory").join("memory.max_usage_in_bytes"), "2097152\n").unwrap();
        fs::write(d("cpuacct").join("cpuacct.usage"), "123456789\n").unwrap();
        fs::write(d("pids").join("pids.current"), "3\n").unwrap();
        assert_eq!(
            cg.usage().unwrap(),
            Usage {
                memory_bytes: Some(1_048_576),
                memory_peak_bytes: Some(2_097_152),
                cpu_usec: Some(123_456),
                pids: Some(3),
            }
        );

        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        let d = t.path().join("tend/a/t");
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::remove_file(d.join("memory.peak")).unwrap(); // before 5.19
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 777\nuser_usec 700\nsystem_usec 77\n",
        )
        .unwrap();
        fs::write(d.join("pids.current"), "1\n").unwrap();
        assert_eq!(
            cg.usage().unwrap(),
            Usage {
                memory_bytes: Some(4096),
                memory_peak_bytes: None,
                cpu_usec: Some(777),
                pids: Some(1),
            }
        );
    }

    #[test]
    fn remove_takes_leaf_and_empty_parents_only() {
        for layout in ["v1", "v2", "hybrid"] {
            let t = tempfile::tempdir().unwrap();
            match layout {
                "v1" => fake_v1(t.path(), false),
                "v2" => fake_v2(t.path()),
                _ => fake_hybrid(t.path()),
            }
            let h = probe_fake(t.path());
            let t1 = TaskCgroup::create(&h, &spec("tend/a/t1")).unwrap();
            let t2 = TaskCgroup::create(&h, &spec("tend/a/t2")).unwrap();
            let dirs1: Vec<PathBuf> = t1.dirs().map(Path::to_path_buf).collect();
            t1.remove().unwrap();
            for d in &dirs1 {
                assert!(!d.exists(), "{layout}: {}", d.display());
                assert!(d.parent().unwrap().is_dir(), "{layout}: sibling keeps a");
            }
            t2.remove().unwrap();
            for d in &dirs1 {
                let alloc = d.parent().unwrap();
                assert!(!alloc.exists(), "{layout}: {}", alloc.display());
                assert!(alloc.parent().unwrap().is_dir(), "{layout}: never tend");
            }
            // Idempotent.
            t2.remove().unwrap();
        }
    }

    #[test]
    fn remove_busy_leaf_names_it() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        cg.add_pid(Pid::from_raw(1234)).unwrap();
        let e = cg.remove().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cgroup: rmdir {}: Device or resource busy",
                t.path().join("tend/a/t").display()
            )
        );
    }

    #[test]
    fn write_errors_name_the_path_and_keep_the_source() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        // The kernel would not offer this file: we must not create it.
        fs::remove_file(t.path().join("pids/pids.max")).unwrap();
        let h = probe_fake(t.path());
        let e = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap_err();
        let f = t.path().join("pids/tend/a/t/pids.max");
        assert_eq!(
            e.to_string(),
            format!("cgroup: write {}: No such file or directory", f.display())
        );
        let source = std::error::Error::source(&e).unwrap();
        let io = source.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(!f.exists());
        // The failed create removed what it made.
        assert!(!t.path().join("memory/tend/a").exists());
    }

    #[test]
    fn bad_paths_are_refused() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let h = probe_fake(t.path());
        for p in ["", "/abs", "a/../b", "a//b", "./a", "a/", "..", "a\0b"] {
            let e = TaskCgroup::open(&h, p).unwrap_err();
            assert!(matches!(e, CgroupError::BadPath { .. }), "{p:?}: {e}");
        }
    }

    #[test]
    fn kill_all_on_fake_trees() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path(), false);
        let h = probe_fake(t.path());
        let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
        cg.kill_all().unwrap();
        // The freezer was not left frozen (empty cgroup: nothing to freeze).
        assert_eq!(
            read(t.path().join("freezer/tend/a/t/freezer.state")),
            "THAWED\n"
        );
        // Never kill ourselves.
        cg.add_pid(getpid()).unwrap();
        let e = cg.kill_all().unwrap_err();
        assert!(matches!(e, CgroupError::HoldsSelf { .. }), "{e}");
        // A cgroup that does not exist holds nothing.
        let gone = TaskCgroup::open(&h, "tend/never").unwrap();
        gone.kill_all().unwrap();
        gone.remove().unwrap();
    }

    // ---- Real cgroups, as root ----

    static SEQ: AtomicUsize = AtomicUsize::new(0);

    /// Removes everything under the test's own top dir, in every hierarchy,
    /// even when the test failed halfway.
    struct RealGuard {
        hier: Hierarchies,
        top: String,
    }

    impl RealGuard {
        fn new() -> Option<RealGuard> {
            if !crate::test_have_root() {
                return None;
            }
            let hier = Hierarchies::detect().expect("detect cgroups");
            let n = SEQ.fetch_add(1, Ordering::SeqCst);
            let top = format!("tend-test-{}-{n}", std::process::id());
            Some(RealGuard { hier, top })
        }

        fn path(&self, rest: &str) -> String {
            format!("{}/{rest}", self.top)
        }

        fn mounts(&self) -> BTreeSet<PathBuf> {
            self.hier
                .v1
                .values()
                .chain(self.hier.unified.iter())
                .cloned()
                .collect()
        }
    }

    fn clean_tree(dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                clean_tree(&e.path());
            }
        }
        let me = getpid();
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
            if Pid::from_raw(pid) != me {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Err(e) = fs::remove_dir(dir) {
            if Instant::now() > deadline {
                eprintln!("test cleanup: rmdir {}: {e}", dir.display());
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }

    impl Drop for RealGuard {
        fn drop(&mut self) {
            for m in self.mounts() {
                clean_tree(&m.join(&self.top));
            }
        }
    }

    fn proc_cgroup_paths(pid: u32) -> Vec<(String, String)> {
        read(format!("/proc/{pid}/cgroup"))
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ':');
                let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
                Some((ctl.to_string(), path.to_string()))
            })
            .collect()
    }

    fn pid_of(child: &std::process::Child) -> Pid {
        Pid::from_raw(i32::try_from(child.id()).unwrap())
    }

    #[test]
    fn real_limits_membership_kill_remove() {
        let Some(g) = RealGuard::new() else { return };
        let rel = g.path("a/t");
        let cg = TaskCgroup::create(&g.hier, &spec(&rel)).unwrap();
        match g.hier.mode() {
            Mode::V1 | Mode::Hybrid => {
                let mem = g.hier.v1_mount(Controller::Memory).unwrap().join(&rel);
                assert_eq!(read(mem.join("memory.limit_in_bytes")).trim(), "67108864");
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    assert_eq!(read(memsw).trim(), "67108864");
                }
                let cpu = g.hier.v1_mount(Controller::Cpu).unwrap().join(&rel);
                assert_eq!(read(cpu.join("cpu.shares")).trim(), "500");
                let pids = g.hier.v1_mount(Controller::Pids).unwrap().join(&rel);
                assert_eq!(read(pids.join("pids.max")).trim(), "64");
            }
            Mode::V2 => {
                let d = g.hier.unified_mount().unwrap().join(&rel);
                assert_eq!(read(d.join("memory.max")).trim(), "67108864");
                assert_eq!(read(d.join("cpu.weight")).trim(), "19");
                assert_eq!(read(d.join("pids.max")).trim(), "64");
            }
        }

        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        cg.add_pid(pid_of(&child)).unwrap();
        let want = format!("/{rel}");
        let paths = proc_cgroup_paths(child.id());
        for (ctl, path) in &paths {
            let ours = ctl.is_empty() && g.hier.unified_mount().is_some()
                || ctl
                    .split(',')
                    .any(|c| matches!(c, "memory" | "cpu" | "cpuacct" | "pids" | "freezer"));
            if ours {
                assert_eq!(path, &want, "controller {ctl:?}");
            }
        }
        assert_eq!(cg.pids().unwrap(), vec![pid_of(&child)]);
        let u = cg.usage().unwrap();
        assert_eq!(u.pids, Some(1));
        assert!(u.memory_bytes.is_some() && u.cpu_usec.is_some(), "{u:?}");
        assert_eq!(cg.oom_kill_count().unwrap(), Some(0));

        cg.kill_all().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(cg.pids().unwrap().is_empty());
        cg.remove().unwrap();
        for m in g.mounts() {
            assert!(!m.join(&rel).exists(), "{}", m.join(&rel).display());
            assert!(!m.join(g.path("a")).exists());
            assert!(m.join(&g.top).is_dir(), "the top stays");
        }
    }

    #[test]
    fn real_kill_all_with_freezer_gets_forked_children() {
        let Some(g) = RealGuard::new() else { return };
        let rel = g.path("a/fork");
        let cg = TaskCgroup::create(&g.hier, &spec(&rel)).unwrap();
        // The shell waits on stdin, so its children are born inside the cgroup.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read _; sleep 30 & sleep 30 & wait"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        cg.add_pid(pid_of(&child)).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.pids().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "children never appeared");
            sleep(Duration::from_millis(10));
        }
        // The path without cgroup.kill: freeze, kill, thaw.
        cg.kill_all_with(false).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(cg.pids().unwrap().is_empty());
        cg.remove().unwrap();
    }

    #[test]
    fn real_oom_kill_is_counted() {
        let Some(g) = RealGuard::new() else { return };
        let mut s = spec(&g.path("a/oom"));
        s.memory_bytes = Some(32 << 20);
        let cg = TaskCgroup::create(&g.hier, &s).unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), Some(0));
        // Holds ~200 MB in a shell variable, once it is inside the cgroup.
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "read _; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        cg.add_pid(pid_of(&child)).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let n = cg.oom_kill_count().unwrap().expect("oom_kill counter");
        assert!(n >= 1, "oom_kill {n}");
        cg.kill_all().unwrap();
        cg.remove().unwrap();
    }
}

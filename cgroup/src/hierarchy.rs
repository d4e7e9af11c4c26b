//! Where the cgroup controllers are mounted (v1, v2 or hybrid), read from
//! mountinfo or probed under a root, and the checks on a cgroup parent and on
//! the daemon's own cgroup.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::errno_text;
use crate::fs::write_file;
use crate::{
    CgroupError, Result, TaskCgroup, DEFAULT_MOUNTINFO, DEFAULT_ROOT, SHARED_DAEMON_CGROUP,
};

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

    pub(crate) fn from_name(name: &str) -> Option<Controller> {
        Controller::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Making and removing cgroup dirs: the kernel fills a new cgroup dir with its
/// control files and empties it on rmdir, which a test tree has to imitate.
pub(crate) trait Tree: fmt::Debug + Sync {
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
}

/// The real cgroup filesystems.
#[derive(Debug)]
pub(crate) struct Kernel;

impl Tree for Kernel {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o755).create(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }
}

/// Where the cgroup hierarchies of a host are mounted.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    pub(crate) root: PathBuf,
    pub(crate) mode: Mode,
    /// Mount point of each v1 controller (empty on v2).
    pub(crate) v1: BTreeMap<Controller, PathBuf>,
    /// The cgroup2 mount: the root on v2, e.g. `<root>/unified` on hybrid.
    pub(crate) unified: Option<PathBuf>,
    pub(crate) tree: &'static dyn Tree,
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
            // No Vec per line: musl's malloc hands a freed page back to the
            // kernel, so one would cost an mmap and a munmap per mount.
            let mount = line.split_whitespace().nth(4);
            let mut after = line.split_whitespace().skip_while(|f| *f != "-").skip(1);
            let (Some(mount), Some(fstype), Some(super_opts)) = (mount, after.next(), after.nth(1))
            else {
                continue;
            };
            if fstype != "cgroup" && fstype != "cgroup2" {
                continue;
            }
            let mount = PathBuf::from(unescape_mountinfo(mount));
            if !mount.starts_with(root) {
                continue;
            }
            match fstype {
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

    pub(crate) fn v2(root: &Path) -> Hierarchies {
        Hierarchies {
            root: root.to_path_buf(),
            mode: Mode::V2,
            v1: BTreeMap::new(),
            unified: Some(root.to_path_buf()),
            tree: &Kernel,
        }
    }

    pub(crate) fn from_parts(
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
    pub(crate) fn with_tree(mut self, tree: &'static dyn Tree) -> Hierarchies {
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
        // The shared cgroup is there for every start but a host's first:
        // write first, mkdir only where the write finds no dir (an EEXIST
        // mkdir per hierarchy and start is what this spares).
        for dir in cg.dirs() {
            // "0" is the writer itself, whatever pid namespace we read pids in.
            let procs = dir.join("cgroup.procs");
            match write_file(&procs, "0") {
                Err(CgroupError::Write { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    cg.make_dir_chain(dir)?;
                    write_file(&procs, "0")?;
                }
                r => r?,
            }
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
pub(crate) fn unescape_mountinfo(s: &str) -> String {
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
pub(crate) fn check_rel(path: &str) -> Result<PathBuf> {
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
pub(crate) fn check_v2_delegation(
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

//! One task's cgroup: the same relative path in every hierarchy it uses.
//! Create it, add the task, read its OOM counter and usage, remove it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tend_proto::config::CgroupSpec;

use crate::fs::{keyed_u64, parse_u64, read_optional, write_file};
use crate::hierarchy::{check_rel, Tree};
use crate::{CgroupError, Controller, Hierarchies, Mode, Result, RMDIR_PATIENCE};

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
    pub(crate) rel: PathBuf,
    pub(crate) mode: Mode,
    pub(crate) root: PathBuf,
    /// The task's dir per v1 controller (v1, hybrid).
    pub(crate) v1: BTreeMap<Controller, PathBuf>,
    /// The task's dir in the cgroup2 tree: every file on v2, membership on hybrid.
    pub(crate) unified: Option<PathBuf>,
    /// Each distinct task dir with the mount point it lives under.
    pub(crate) dirs: Vec<(PathBuf, PathBuf)>,
    pub(crate) tree: &'static dyn Tree,
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
    pub(crate) fn dir_of(&self, c: Controller) -> Option<&Path> {
        match self.mode {
            Mode::V2 if c == Controller::Freezer => None,
            Mode::V2 => self.unified.as_deref(),
            Mode::V1 | Mode::Hybrid => self.v1.get(&c).map(PathBuf::as_path),
        }
    }

    pub(crate) fn need(&self, c: Controller) -> Result<&Path> {
        self.dir_of(c).ok_or(CgroupError::ControllerMissing {
            controller: c.name(),
            root: self.root.clone(),
        })
    }

    /// mkdir -p in every hierarchy, through the tree seam.
    pub(crate) fn make_dirs(&self) -> Result<()> {
        for dir in self.dirs() {
            // A sibling task's remove() may rmdir a shared parent between our
            // mkdirs (ENOENT): walk again, a few times.
            let mut tries = 0;
            loop {
                match self.make_dir_chain(dir) {
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

    pub(crate) fn make_dir_chain(&self, dir: &Path) -> Result<()> {
        // The task's own dir first: its parents are there for every task of
        // an alloc but the first. Each ENOENT means one more missing level:
        // go up one mkdir at a time, then back down, with no lookup (the old
        // walk from the top stat()ed every level in every hierarchy).
        let depth = self.rel.components().count();
        let mut missing = 0;
        loop {
            let level = dir.ancestors().nth(missing).unwrap_or(dir);
            match self.make_dir(level) {
                Err(CgroupError::Mkdir { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && missing + 1 < depth =>
                {
                    missing += 1;
                }
                r => break r?,
            }
        }
        while missing > 0 {
            missing -= 1;
            self.make_dir(dir.ancestors().nth(missing).unwrap_or(dir))?;
        }
        Ok(())
    }

    /// mkdir of one cgroup dir, 0755 whatever the umask (setuid mode's is
    /// 077; a umask known to keep 0755 needs no chmod): the caller must reach
    /// the kill files chowned to it, and the usage files, as in any cgroup
    /// dir. One that exists is left as it is.
    fn make_dir(&self, path: &Path) -> Result<()> {
        let failed = |source| CgroupError::Mkdir {
            path: path.to_path_buf(),
            source,
        };
        match self.tree.mkdir(path) {
            Ok(()) if tend_sys::umask_keeps(0o755) => Ok(()),
            Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(failed),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(failed(source)),
        }
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

    /// Move a process into the one hierarchy whose kill reaches it: the
    /// cgroup2 dir where it has `cgroup.kill` (v2, and hybrid on 5.14 and
    /// later), else v1's freezer; every hierarchy where there is neither. For
    /// a process of the supervisor's own that only reaps (the init of the
    /// task's pid namespace): a cgroup kill still takes it along, and no
    /// limit or figure counts it. One v1 attach where [`TaskCgroup::add_pid`]
    /// makes one per hierarchy (seven on a hybrid host), each under the
    /// kernel's cgroup-wide write lock.
    pub fn add_pid_to_kill(&self, pid: Pid) -> Result<()> {
        let unified = self
            .unified
            .as_ref()
            .filter(|d| self.mode == Mode::V2 || d.join("cgroup.kill").is_file());
        let dir = match (unified, self.v1.get(&Controller::Freezer)) {
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => return self.add_pid(pid),
        };
        write_file(&dir.join("cgroup.procs"), &pid.to_string())
    }

    /// The processes in the task's cgroup, in any of its hierarchies. A cgroup
    /// that does not exist holds none.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        let mut pids = BTreeSet::new();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            let text = match crate::fs::read_text(&path) {
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

    pub(crate) fn remove_one(&self, mount: &Path, dir: &Path) -> Result<()> {
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

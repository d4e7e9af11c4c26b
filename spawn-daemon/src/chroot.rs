//! The task's own root: what is mounted where inside its private mount namespace
//! before it chroots into `<alloc_dir>/<task>`.
//!
//! The plan is built in the daemon before the fork; the child only walks the
//! prepared lists (see [`crate::child`]). In its new mount namespace the child
//! mounts a small tmpfs over `<alloc_dir>/<task>`, makes the mount points in it
//! (dirs, and empty files for bound files), mounts in order (every
//! `chroot.binds` entry read-only, nosuid, nodev; the minimal /dev nodes; /proc;
//! /alloc and /local read-write), turns the tmpfs read-only and chroots into it.
//!
//! Why a tmpfs: the mount points then cost no disk metadata writes (each mkdir
//! on the host's disk was a journal commit, a third of a millisecond here, and
//! a root has about twenty of them), nothing but `local/` is left in the task
//! dir on the host, and no mount point is ever made in a dir a task could have
//! touched. The task root is partly the task's: a task may leave symlinks in
//! `/local` and `/alloc`. So the only paths resolved in the alloc dir (the
//! `alloc` and `<task>/local` sources, and the task root the tmpfs covers) are
//! opened with openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, one component
//! at a time when they are made; the child opens them again the same way after
//! `unshare` and mounts onto `/proc/self/fd/N`. A planted symlink there makes
//! the start fail; it never makes root create or mount anything on the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::stat::{fchmod, mkdirat, Mode};
use tend_proto::config::ChrootSpec;
use tend_proto::SpawnConfig;

use crate::sys;

/// The device nodes bound into every task root.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Options of the tmpfs that becomes the task root: it only ever holds empty
/// mount points, and it is read-only once they are mounted on.
pub const ROOT_TMPFS_OPTIONS: &str = "mode=0755,size=64k,nr_inodes=4096";

/// At most this many mounts have their source in the alloc dir (`alloc` and
/// `<task>/local`); the child opens them before the tmpfs covers the task dir.
pub const MAX_ALLOC_SOURCES: usize = 4;

/// Why the chroot could not be prepared; names the path.
#[derive(Debug, thiserror::Error)]
#[error("chroot: prepare {path}: {}", errno_text(.source))]
pub struct ChrootError {
    /// The path (on the host).
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Where a mount's source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A host path from the agent's chroot_env (trusted: it may be a symlink,
    /// as `/lib` is on merged-usr hosts).
    Host(String),
    /// A path relative to the alloc dir (`alloc`, `<task>/local`): opened
    /// beneath it without following symlinks.
    InAlloc(String),
    /// A filesystem type with no source ("proc").
    Fs(&'static str),
}

/// One mount of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    /// What is mounted.
    pub source: Source,
    /// Where, relative to the task root ("usr/lib"), without `.` components.
    pub target: String,
    /// mount(2) flags of the first call.
    pub flags: libc::c_ulong,
    /// Flags of a remount right after it (read-only binds), if any.
    pub remount: Option<libc::c_ulong>,
    /// Whether the mount point is a file (a bound file), not a dir.
    pub file: bool,
}

impl PlannedMount {
    /// "/usr on /usr", "proc on /proc": the mount as a person reads it.
    pub fn describe(&self) -> String {
        let src = match &self.source {
            Source::Host(p) => p.clone(),
            Source::InAlloc(p) => format!("<alloc_dir>/{p}"),
            Source::Fs(f) => (*f).to_string(),
        };
        format!("{src} on /{}", self.target)
    }
}

/// `target` as a path relative to the root: no leading slash, no empty or `.`
/// components (`..` is kept: openat2 refuses it beneath the root).
fn relative(target: &str) -> String {
    target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The mounts of a task root, in order, for `config` with `spec`.
pub fn plan(
    config: &SpawnConfig,
    spec: &ChrootSpec,
    source_is_file: impl Fn(&str) -> bool,
) -> Vec<PlannedMount> {
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    let rw = libc::MS_BIND | libc::MS_REC | libc::MS_NOSUID | libc::MS_NODEV;
    let mut out = Vec::new();
    for b in &spec.binds {
        out.push(PlannedMount {
            source: Source::Host(b.source.clone()),
            target: relative(&b.target),
            flags: libc::MS_BIND | libc::MS_REC,
            remount: Some(ro),
            file: source_is_file(&b.source),
        });
    }
    for node in DEV_NODES {
        out.push(PlannedMount {
            source: Source::Host(format!("/dev/{node}")),
            target: format!("dev/{node}"),
            flags: libc::MS_BIND,
            remount: None,
            file: true,
        });
    }
    out.push(PlannedMount {
        source: Source::Fs("proc"),
        target: "proc".into(),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        remount: None,
        file: false,
    });
    out.push(PlannedMount {
        source: Source::InAlloc("alloc".into()),
        target: "alloc".into(),
        flags: rw,
        remount: None,
        file: false,
    });
    out.push(PlannedMount {
        source: Source::InAlloc(format!("{}/local", config.task)),
        target: "local".into(),
        flags: rw,
        remount: None,
        file: false,
    });
    out
}

/// A planned mount in C strings, ready for the child.
#[derive(Debug)]
pub struct MountOp {
    /// Source: a host path, a path relative to the alloc dir, or a fs name.
    pub source: CString,
    /// Whether `source` is relative to the alloc dir (opened beneath it).
    pub source_in_alloc: bool,
    /// Target, relative to the task root.
    pub target: CString,
    /// Filesystem type, if any.
    pub fstype: Option<CString>,
    /// Flags of the first call.
    pub flags: libc::c_ulong,
    /// Flags of the remount, if any.
    pub remount: Option<libc::c_ulong>,
    /// "/usr on /usr", for the message of a failed mount.
    pub shown: String,
}

/// A mount point to make in the root's tmpfs before any mount.
#[derive(Debug)]
pub struct MountPoint {
    /// Relative to the task root, no `.` or `..` components ("usr/lib").
    pub path: CString,
    /// An empty file (the mount point of a bound file), not a dir.
    pub file: bool,
}

/// The prepared root: where it is and the mounts to make before the chroot.
#[derive(Debug)]
pub struct PreparedRoot {
    /// The alloc dir, absolute (the agent's, trusted).
    pub alloc_dir: CString,
    /// Device and inode of the alloc dir the daemon opened: the child, which
    /// opens it again by path in its new mount namespace, refuses any other
    /// (a path swapped meanwhile, e.g. by a setuid-mode caller).
    pub alloc_id: (u64, u64),
    /// The task root relative to the alloc dir: the task's name.
    pub root: CString,
    /// The tmpfs options of the root (see [`ROOT_TMPFS_OPTIONS`]).
    pub tmpfs_options: CString,
    /// The mount points, parents first.
    pub creates: Vec<MountPoint>,
    /// The mounts, in order.
    pub ops: Vec<MountOp>,
}

fn cstr(p: &str) -> Result<CString, ChrootError> {
    CString::new(p).map_err(|_| ChrootError {
        path: PathBuf::from(p),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// `mkdir -p rel` beneath `dir` without following a symlink anywhere: each
/// component is made with `mkdirat` (mode 0755: the daemon's umask is 077 and
/// the task's user must walk its root) and opened with openat2 RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS. Returns the fd of the last dir.
pub fn mkdir_beneath(dir: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let at = cur.as_ref().map_or(dir, |f| f.as_fd());
        let created = match mkdirat(at, comp, Mode::from_bits_truncate(0o755)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        };
        // A symlink here (planted, or dangling) or a file fails (ENOTDIR, ELOOP).
        let next = sys::open_beneath(at, comp, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
        if created {
            fchmod(&next, Mode::from_bits_truncate(0o755))
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        }
        cur = Some(next);
    }
    cur.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Make the dirs the root needs on disk beneath the alloc dir `alloc` (`alloc/`,
/// `<task>/`, `<task>/local/`), list the mount points to make in the root's
/// tmpfs, and turn the plan into C strings.
pub fn prepare(
    config: &SpawnConfig,
    spec: &ChrootSpec,
    alloc: BorrowedFd<'_>,
) -> Result<PreparedRoot, ChrootError> {
    let host = config.alloc_dir();
    let err = |rel: &str| {
        let path = host.join(rel);
        move |source: io::Error| ChrootError { path, source }
    };
    mkdir_beneath(alloc, "alloc").map_err(err("alloc"))?;
    let root = mkdir_beneath(alloc, &config.task).map_err(err(&config.task))?;
    let in_root = |rel: &str| format!("{}/{rel}", config.task);
    mkdir_beneath(root.as_fd(), "local").map_err(err(&in_root("local")))?;
    let planned = plan(config, spec, |s| {
        std::fs::metadata(s).is_ok_and(|m| !m.is_dir())
    });
    let mut creates: Vec<MountPoint> = Vec::new();
    let mut made = std::collections::HashSet::new();
    let mut ops = Vec::with_capacity(planned.len());
    for m in planned {
        // The mount points are made in the tmpfs with plain mkdirat from its
        // root, before the chroot: a `..` would climb out of it.
        if m.target.is_empty() || m.target.split('/').any(|c| c == "..") {
            return Err(ChrootError {
                path: host.join(in_root(&m.target)),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let comps: Vec<&str> = m.target.split('/').collect();
        for i in 1..=comps.len() {
            let path = comps[..i].join("/");
            let file = i == comps.len() && m.file;
            if made.insert(path.clone()) {
                creates.push(MountPoint {
                    path: cstr(&path)?,
                    file,
                });
            }
        }
        let (source, source_in_alloc, fstype) = match &m.source {
            Source::Host(p) => (cstr(p)?, false, None),
            Source::InAlloc(p) => (cstr(p)?, true, None),
            Source::Fs(f) => (cstr(f)?, false, Some(cstr(f)?)),
        };
        ops.push(MountOp {
            source,
            source_in_alloc,
            target: cstr(&m.target)?,
            fstype,
            flags: m.flags,
            remount: m.remount,
            shown: m.describe(),
        });
    }
    if ops.iter().filter(|o| o.source_in_alloc).count() > MAX_ALLOC_SOURCES {
        return Err(ChrootError {
            path: host.clone(),
            source: io::Error::from_raw_os_error(libc::E2BIG),
        });
    }
    let st = nix::sys::stat::fstat(alloc).map_err(|e| ChrootError {
        path: host.clone(),
        source: io::Error::from_raw_os_error(e as i32),
    })?;
    Ok(PreparedRoot {
        alloc_id: (st.st_dev, st.st_ino),
        alloc_dir: cstr(&config.alloc_dir)?,
        root: cstr(&config.task)?,
        tmpfs_options: cstr(ROOT_TMPFS_OPTIONS)?,
        creates,
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;
    use tend_proto::config::Bind;

    #[test]
    fn plan_binds_read_only_then_dev_proc_alloc_local() {
        let mut c = tend_proto::config::example("/data/allocs/a1", "/run/s");
        c.task = "web".into();
        let spec = ChrootSpec {
            binds: vec![
                Bind {
                    source: "/usr".into(),
                    target: "/usr".into(),
                },
                Bind {
                    source: "/etc/resolv.conf".into(),
                    target: "//etc/./resolv.conf".into(),
                },
            ],
        };
        let p = plan(&c, &spec, |s| s.ends_with(".conf"));
        assert_eq!(p[0].target, "usr");
        assert_eq!(p[0].describe(), "/usr on /usr");
        assert!(p[0]
            .remount
            .is_some_and(|f| f & libc::MS_RDONLY != 0 && f & libc::MS_NOSUID != 0));
        assert!(p[1].file);
        assert_eq!(p[1].target, "etc/resolv.conf");
        assert_eq!(p[2].source, Source::Host("/dev/null".into()));
        assert_eq!(p[2].target, "dev/null");
        let proc_ = &p[2 + DEV_NODES.len()];
        assert_eq!(
            (&proc_.source, proc_.target.as_str()),
            (&Source::Fs("proc"), "proc")
        );
        let alloc = &p[3 + DEV_NODES.len()];
        assert_eq!(alloc.source, Source::InAlloc("alloc".into()));
        assert_eq!(alloc.target, "alloc");
        assert!(alloc.remount.is_none());
        let local = p.last().unwrap();
        assert_eq!(local.source, Source::InAlloc("web/local".into()));
        assert_eq!(local.target, "local");
    }

    fn open_dir(p: &Path) -> OwnedFd {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn mkdir_beneath_makes_0755_dirs_and_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let fd = open_dir(&root);
        mkdir_beneath(fd.as_fd(), "usr/lib/x").unwrap();
        let mode = std::fs::metadata(root.join("usr/lib"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // A planted symlink, in the middle or at the end, is refused.
        symlink(outside.path(), root.join("evil")).unwrap();
        // (O_DIRECTORY | O_NOFOLLOW on a symlink is ENOTDIR; in the middle, ELOOP.)
        let refused = |e: io::Error| matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR));
        assert!(refused(mkdir_beneath(fd.as_fd(), "evil/sub").unwrap_err()));
        assert!(refused(mkdir_beneath(fd.as_fd(), "evil").unwrap_err()));
        symlink("/nonexistent-tend-dangling", root.join("dangling")).unwrap();
        assert!(mkdir_beneath(fd.as_fd(), "dangling/x").is_err());
        assert!(mkdir_beneath(fd.as_fd(), "../escape").is_err());
        assert!(!tmp.path().join("escape").exists());
        assert!(!Path::new("/nonexistent-tend-dangling").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn prepare_makes_only_alloc_and_local_on_disk_and_lists_mount_points() {
        let tmp = tempfile::tempdir().unwrap();
        let alloc_dir = tmp.path().join("a1");
        std::fs::create_dir_all(&alloc_dir).unwrap();
        let mut c = tend_proto::config::example(alloc_dir.to_str().unwrap(), "/run/s");
        c.task = "t".into();
        let spec = ChrootSpec {
            binds: vec![
                Bind {
                    source: "/usr".into(),
                    target: "/usr/lib".into(),
                },
                Bind {
                    source: "/bin".into(),
                    target: "/usr/bin".into(),
                },
            ],
        };
        let fd = open_dir(&alloc_dir);
        let r = prepare(&c, &spec, fd.as_fd()).unwrap();
        assert_eq!(r.ops[0].target.to_str().unwrap(), "usr/lib");
        assert_eq!(r.ops[0].shown, "/usr on /usr/lib");
        let created: Vec<(&str, bool)> = r
            .creates
            .iter()
            .map(|m| (m.path.to_str().unwrap(), m.file))
            .collect();
        // Parents first, each once; the dev nodes are files.
        assert_eq!(
            &created[..3],
            &[("usr", false), ("usr/lib", false), ("usr/bin", false)]
        );
        assert_eq!(created[3], ("dev", false));
        assert_eq!(created[4], ("dev/null", true));
        assert!(created.ends_with(&[("proc", false), ("alloc", false), ("local", false)]));
        // On disk: the alloc's shared dir and the task's local dir, nothing else.
        let mut on_disk: Vec<String> = walk(&alloc_dir);
        on_disk.sort();
        assert_eq!(on_disk, ["alloc", "t", "t/local"]);
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn prepare_refuses_a_planted_local_symlink_and_a_climbing_target() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let alloc_dir = tmp.path().join("a1");
        std::fs::create_dir_all(alloc_dir.join("t")).unwrap();
        let mut c = tend_proto::config::example(alloc_dir.to_str().unwrap(), "/run/s");
        c.task = "t".into();
        let fd = open_dir(&alloc_dir);
        // A previous run left /local as a link to a host dir.
        symlink(outside.path(), alloc_dir.join("t/local")).unwrap();
        let spec = ChrootSpec { binds: vec![] };
        let e = prepare(&c, &spec, fd.as_fd()).unwrap_err();
        assert_eq!(e.path, alloc_dir.join("t/local"));
        assert!(
            e.to_string().starts_with(&format!(
                "chroot: prepare {}: ",
                alloc_dir.join("t/local").display()
            )),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        std::fs::remove_file(alloc_dir.join("t/local")).unwrap();
        // A target that climbs out of the root is refused before anything mounts.
        let spec = ChrootSpec {
            binds: vec![Bind {
                source: "/usr".into(),
                target: "/usr/../../x".into(),
            }],
        };
        let e = prepare(&c, &spec, fd.as_fd()).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::EINVAL), "{e}");
        assert!(!alloc_dir.join("x").exists());
    }
}

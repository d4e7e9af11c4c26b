//! The task's own root: what is mounted where inside its private mount namespace
//! before it chroots into `<alloc_dir>/<task>`.
//!
//! The plan is built (and its mount points made) in the daemon before the fork;
//! the child only walks the prepared list (see [`crate::child`]). Order: every
//! `chroot.binds` entry read-only, nosuid, nodev; the minimal /dev nodes; /proc;
//! /alloc and /local read-write.
//!
//! The task root is partly the task's: a task may leave symlinks in it (in
//! `/local`, or anywhere when it ran as root in an earlier run). So no path
//! inside the task root or the alloc dir is ever resolved by the kernel's usual
//! walk: mount points are made with `mkdirat` relative to a dir fd, one
//! component at a time, each opened with openat2 `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`; the child opens every target (and the alloc-dir sources)
//! the same way after `unshare` and mounts onto `/proc/self/fd/N`. A planted
//! symlink makes the start fail; it never makes root create or mount anything
//! on the host.

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

/// Make an empty file `rel` beneath `dir` (parents made as by [`mkdir_beneath`])
/// as the mount point of a bound file; an existing file is kept, a symlink refused.
pub fn touch_beneath(dir: BorrowedFd<'_>, rel: &str) -> io::Result<()> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, rel),
    };
    let parent_fd = match parent {
        Some(p) if !p.is_empty() => Some(mkdir_beneath(dir, p)?),
        _ => None,
    };
    let at = parent_fd.as_ref().map_or(dir, |f| f.as_fd());
    sys::open_beneath(at, name, libc::O_CREAT | libc::O_RDONLY, 0o644).map(drop)
}

/// Make the mount points of the plan beneath the alloc dir `alloc` (dirs, or
/// empty files for bound files) and turn it into C strings.
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
    for dir in ["local", "dev"] {
        mkdir_beneath(root.as_fd(), dir).map_err(err(&in_root(dir)))?;
    }
    let planned = plan(config, spec, |s| {
        std::fs::metadata(s).is_ok_and(|m| !m.is_dir())
    });
    let mut ops = Vec::with_capacity(planned.len());
    for m in planned {
        let made = if m.file {
            touch_beneath(root.as_fd(), &m.target)
        } else {
            mkdir_beneath(root.as_fd(), &m.target).map(drop)
        };
        made.map_err(err(&in_root(&m.target)))?;
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
    let st = nix::sys::stat::fstat(alloc).map_err(|e| ChrootError {
        path: host.clone(),
        source: io::Error::from_raw_os_error(e as i32),
    })?;
    Ok(PreparedRoot {
        alloc_id: (st.st_dev, st.st_ino),
        alloc_dir: cstr(&config.alloc_dir)?,
        root: cstr(&config.task)?,
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
    fn touch_beneath_refuses_a_symlinked_file_or_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let fd = open_dir(tmp.path());
        touch_beneath(fd.as_fd(), "dev/null").unwrap();
        assert!(tmp.path().join("dev/null").is_file());
        touch_beneath(fd.as_fd(), "dev/null").unwrap();
        symlink(outside.path().join("f"), tmp.path().join("dev/zero")).unwrap();
        assert!(touch_beneath(fd.as_fd(), "dev/zero").is_err());
        symlink(outside.path(), tmp.path().join("etc")).unwrap();
        assert!(touch_beneath(fd.as_fd(), "etc/resolv.conf").is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn prepare_fails_on_a_planted_symlink_and_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let alloc_dir = tmp.path().join("a1");
        std::fs::create_dir_all(alloc_dir.join("t/local")).unwrap();
        let mut c = tend_proto::config::example(alloc_dir.to_str().unwrap(), "/run/s");
        c.task = "t".into();
        // A previous run left /usr as a link to a host dir.
        symlink(outside.path(), alloc_dir.join("t/usr")).unwrap();
        let spec = ChrootSpec {
            binds: vec![Bind {
                source: "/usr".into(),
                target: "/usr/lib".into(),
            }],
        };
        let fd = open_dir(&alloc_dir);
        let e = prepare(&c, &spec, fd.as_fd()).unwrap_err();
        assert_eq!(e.path, alloc_dir.join("t/usr/lib"));
        assert!(
            e.to_string().starts_with(&format!(
                "chroot: prepare {}: ",
                alloc_dir.join("t/usr/lib").display()
            )),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Without it, every mount point is made.
        std::fs::remove_file(alloc_dir.join("t/usr")).unwrap();
        let r = prepare(&c, &spec, fd.as_fd()).unwrap();
        assert_eq!(r.ops[0].target.to_str().unwrap(), "usr/lib");
        assert_eq!(r.ops[0].shown, "/usr on /usr/lib");
        assert!(alloc_dir.join("t/usr/lib").is_dir());
        assert!(alloc_dir.join("t/dev/null").is_file());
        assert!(alloc_dir.join("alloc").is_dir());
    }
}

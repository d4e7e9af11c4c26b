//! The task's own root: what is mounted where inside its private mount namespace
//! before it chroots into `<alloc_dir>/<task>`.
//!
//! The plan is built (and its mount points made) in the daemon before the fork;
//! the child only walks the prepared list with mount(2) calls (see
//! [`crate::child`]). Order: every `chroot.binds` entry read-only, nosuid, nodev;
//! the minimal /dev nodes; /proc; /alloc and /local read-write.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use tend_proto::config::ChrootSpec;
use tend_proto::SpawnConfig;

/// The device nodes bound into every task root.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Why the chroot could not be prepared; names the path.
#[derive(Debug, thiserror::Error)]
#[error("chroot: prepare {path}: {source}")]
pub struct ChrootError {
    /// The path.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

/// One mount of the plan, in host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    /// What is mounted: a host path for binds, "proc" for /proc.
    pub source: String,
    /// Where, on the host (inside the task root).
    pub target: PathBuf,
    /// A filesystem type, for /proc.
    pub fstype: Option<&'static str>,
    /// mount(2) flags of the first call.
    pub flags: libc::c_ulong,
    /// Flags of a remount right after it (read-only binds), if any.
    pub remount: Option<libc::c_ulong>,
    /// Whether the mount point is a file (a bound file), not a dir.
    pub file: bool,
}

fn join_inside(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

/// The mounts of a task root, in order, for `config` with `spec`.
pub fn plan(
    config: &SpawnConfig,
    spec: &ChrootSpec,
    source_is_file: impl Fn(&str) -> bool,
) -> Vec<PlannedMount> {
    let root = config.task_root();
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    let mut out = Vec::new();
    for b in &spec.binds {
        out.push(PlannedMount {
            source: b.source.clone(),
            target: join_inside(&root, &b.target),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            remount: Some(ro),
            file: source_is_file(&b.source),
        });
    }
    for node in DEV_NODES {
        out.push(PlannedMount {
            source: format!("/dev/{node}"),
            target: root.join("dev").join(node),
            fstype: None,
            flags: libc::MS_BIND,
            remount: None,
            file: true,
        });
    }
    out.push(PlannedMount {
        source: "proc".into(),
        target: root.join("proc"),
        fstype: Some("proc"),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        remount: None,
        file: false,
    });
    out.push(PlannedMount {
        source: config.alloc_dir().join("alloc").display().to_string(),
        target: root.join("alloc"),
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC | libc::MS_NOSUID | libc::MS_NODEV,
        remount: None,
        file: false,
    });
    out.push(PlannedMount {
        source: root.join("local").display().to_string(),
        target: root.join("local"),
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC | libc::MS_NOSUID | libc::MS_NODEV,
        remount: None,
        file: false,
    });
    out
}

/// A planned mount in C strings, ready for the child.
#[derive(Debug)]
pub struct MountOp {
    /// Source.
    pub source: CString,
    /// Target (host path).
    pub target: CString,
    /// Filesystem type, if any.
    pub fstype: Option<CString>,
    /// Flags of the first call.
    pub flags: libc::c_ulong,
    /// Flags of the remount, if any.
    pub remount: Option<libc::c_ulong>,
}

/// The prepared root: the dir to chroot into and the mounts to make first.
#[derive(Debug)]
pub struct PreparedRoot {
    /// `<alloc_dir>/<task>`.
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

/// `mkdir -p` where every dir made gets mode 0755 (the daemon's umask is 077,
/// and the task's user must be able to walk the tree of its root).
fn make_dirs(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<&Path> = path.ancestors().take_while(|p| !p.exists()).collect();
    std::fs::create_dir_all(path)?;
    for dir in missing {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Make the mount points of the plan (dirs, or empty files for bound files) and
/// turn it into C strings.
pub fn prepare(config: &SpawnConfig, spec: &ChrootSpec) -> Result<PreparedRoot, ChrootError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| ChrootError { path, source }
    };
    let root = config.task_root();
    for dir in [
        root.join("local"),
        config.alloc_dir().join("alloc"),
        root.join("dev"),
    ] {
        make_dirs(&dir).map_err(err(&dir))?;
    }
    let planned = plan(config, spec, |s| {
        std::fs::metadata(s).is_ok_and(|m| !m.is_dir())
    });
    let mut ops = Vec::with_capacity(planned.len());
    for m in planned {
        if m.file {
            if let Some(parent) = m.target.parent() {
                make_dirs(parent).map_err(err(parent))?;
            }
            if std::fs::symlink_metadata(&m.target).is_err() {
                std::fs::File::create(&m.target).map_err(err(&m.target))?;
            }
        } else {
            make_dirs(&m.target).map_err(err(&m.target))?;
        }
        ops.push(MountOp {
            source: cstr(&m.source)?,
            target: cstr(&m.target.display().to_string())?,
            fstype: m.fstype.map(cstr).transpose()?,
            flags: m.flags,
            remount: m.remount,
        });
    }
    Ok(PreparedRoot {
        root: cstr(&root.display().to_string())?,
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    target: "/etc/resolv.conf".into(),
                },
            ],
        };
        let p = plan(&c, &spec, |s| s.ends_with(".conf"));
        assert_eq!(p[0].target, Path::new("/data/allocs/a1/web/usr"));
        assert!(p[0]
            .remount
            .is_some_and(|f| f & libc::MS_RDONLY != 0 && f & libc::MS_NOSUID != 0));
        assert!(p[1].file);
        assert_eq!(p[2].source, "/dev/null");
        assert_eq!(p[2].target, Path::new("/data/allocs/a1/web/dev/null"));
        let proc_ = &p[2 + DEV_NODES.len()];
        assert_eq!(
            (proc_.fstype, proc_.target.as_path()),
            (Some("proc"), Path::new("/data/allocs/a1/web/proc"))
        );
        let alloc = &p[3 + DEV_NODES.len()];
        assert_eq!(alloc.source, "/data/allocs/a1/alloc");
        assert_eq!(alloc.target, Path::new("/data/allocs/a1/web/alloc"));
        assert!(alloc.remount.is_none());
        assert_eq!(
            p.last().unwrap().target,
            Path::new("/data/allocs/a1/web/local")
        );
    }
}

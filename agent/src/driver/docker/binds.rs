//! The binds of the alloc dir into a container, made safe to hand to the engine.
//!
//! The engine resolves a bind's source as root, following symlinks, when the
//! container starts. Every dir of the alloc dir that a task or a container can
//! write (`alloc/`, `local/`, a volume's dir) may hold a symlink by then, planted
//! by another task of the alloc or by the container's own earlier run, and a
//! check made before the start would race with it. So the engine never gets a
//! path of the alloc dir: the agent opens each source beneath the alloc dir
//! (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, missing dirs made with
//! `mkdirat` one component at a time), bind-mounts that fd (`/proc/self/fd/N`)
//! onto a dir of its own in `<run_dir>/binds/` (0700, root's), nosuid and
//! nodev, and hands that path to the engine. Whatever the source path becomes
//! afterwards, the mount holds the dir that was opened.
//!
//! The mounts live only while the container is made and started: once it runs,
//! its own binds hold the dirs, and [`StagedBinds`] unmounts and removes them
//! (on drop, also when the start fails). An agent that died in between leaves
//! them behind; [`sweep`] clears them at the next start.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::spec::HostBind;
use crate::paths::{ensure_private_dir, random_bytes, AllocDir};

/// A bind whose source is in the alloc dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocBind {
    /// The source, relative to the alloc dir: plain names only.
    pub rel: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Read-only in the container.
    pub read_only: bool,
}

impl AllocBind {
    /// The bind as a path of the alloc dir (what the task asked, for messages
    /// and for the pure create-container body of tests).
    pub fn in_place(&self, alloc: &AllocDir) -> HostBind {
        let mut source = alloc.root.clone();
        source.extend(self.rel.components());
        HostBind {
            source,
            target: self.target.clone(),
            read_only: self.read_only,
        }
    }
}

/// Why the binds of the alloc dir could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A source goes through a symlink: it would lead out of the alloc dir.
    #[error(
        "the source {source_path} goes through the symlink {link}: a bind of the alloc dir \
         never follows a symlink"
    )]
    Symlink {
        /// The source as the task asked it.
        source_path: PathBuf,
        /// The symlink on its way.
        link: PathBuf,
    },
    /// A source is neither a dir nor a regular file.
    #[error("the source {path} is {kind}: only dirs and regular files are bound")]
    Kind {
        /// The source.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A source could not be opened or made.
    #[error("the source {path}: {source}")]
    Source {
        /// The path that failed.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The agent cannot mount.
    #[error(
        "the agent runs as uid {uid}: the docker driver needs root, since it mounts each \
         source of the alloc dir for the engine itself"
    )]
    NotRoot {
        /// The agent's effective uid.
        uid: u32,
    },
    /// The private dir or a mount point in it could not be made.
    #[error("{path}: {source}")]
    Stage {
        /// The path that failed.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A mount failed.
    #[error("mount {source_path} on {target}: {errno}")]
    Mount {
        /// The source, as the task asked it.
        source_path: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The kernel's answer.
        errno: nix::Error,
    },
}

/// The mounts of one container's binds of the alloc dir, in
/// `<run_dir>/binds/<alloc_id>-<random>/<n>`. Unmounted and removed on drop.
#[derive(Debug)]
pub struct StagedBinds {
    dir: PathBuf,
    points: Vec<PathBuf>,
}

impl StagedBinds {
    /// Open every source of `binds` beneath `alloc` without following a
    /// symlink, make the missing dirs, and mount each on a point of a fresh
    /// dir in `binds_root` named after `prefix` (the alloc id). Returns the
    /// binds to give the engine, in the order of `binds`. Nothing is left
    /// mounted on failure.
    pub fn stage(
        alloc: &AllocDir,
        binds_root: &Path,
        prefix: &str,
        binds: &[AllocBind],
    ) -> Result<(StagedBinds, Vec<HostBind>), BindError> {
        let root = open_alloc_root(&alloc.root)?;
        let mut opened = Vec::with_capacity(binds.len());
        for b in binds {
            opened.push(open_source(root.as_fd(), alloc, b)?);
        }
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(BindError::NotRoot { uid });
        }
        let stage_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| BindError::Stage { path, source }
        };
        ensure_private_dir(binds_root).map_err(stage_err(binds_root))?;
        let dir = binds_root.join(format!(
            "{prefix}-{}",
            tend_proto::names::to_hex(&random_bytes::<6>())
        ));
        std::fs::create_dir(&dir).map_err(stage_err(&dir))?;
        let mut staged = StagedBinds {
            dir,
            points: Vec::new(),
        };
        let mut out = Vec::with_capacity(binds.len());
        for (i, (b, (fd, is_dir))) in binds.iter().zip(&opened).enumerate() {
            let point = staged.dir.join(i.to_string());
            let made = if *is_dir {
                std::fs::create_dir(&point)
            } else {
                std::fs::File::create_new(&point).map(drop)
            };
            made.map_err(stage_err(&point))?;
            staged.points.push(point.clone());
            bind_fd(fd.as_fd(), &point, b.read_only).map_err(|errno| BindError::Mount {
                source_path: b.in_place(alloc).source,
                target: point.clone(),
                errno,
            })?;
            out.push(HostBind {
                source: point,
                target: b.target.clone(),
                read_only: b.read_only,
            });
        }
        Ok((staged, out))
    }
}

impl Drop for StagedBinds {
    fn drop(&mut self) {
        for p in self.points.drain(..).rev() {
            remove_point(&p);
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the binds dir");
        }
    }
}

/// Unmount and remove what an agent that died while starting a container left
/// in `binds_root`. Never recursive: a point still mounted is left in place (and
/// named in the log), so nothing of a source is ever deleted.
pub fn sweep(binds_root: &Path) {
    let Ok(dirs) = std::fs::read_dir(binds_root) else {
        return;
    };
    for d in dirs.flatten() {
        let dir = d.path();
        if let Ok(points) = std::fs::read_dir(&dir) {
            for p in points.flatten() {
                remove_point(&p.path());
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a leftover binds dir");
        }
    }
}

/// Detach the mount on `point` (if any), then remove the point itself: rmdir or
/// unlink, both of which fail on a point that is still a mount.
fn remove_point(point: &Path) {
    match umount2(point, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(e) => tracing::warn!(point = %point.display(), error = %e, "cannot unmount a bind"),
    }
    let removed = match std::fs::symlink_metadata(point) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(point),
        Ok(_) => std::fs::remove_file(point),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(point = %point.display(), error = %e, "cannot remove a bind's mount point");
    }
}

fn open_alloc_root(root: &Path) -> Result<OwnedFd, BindError> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BindError::Source {
        path: root.to_path_buf(),
        source: e.into(),
    })
}

/// Open `name` beneath `dir`: no symlink, no `..`, no magic link anywhere.
fn open_beneath(dir: BorrowedFd<'_>, name: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Open the source of `b` beneath the alloc dir's fd `root`, one component at a
/// time, making missing dirs (0755, as the engine would). The fd (O_PATH) and
/// whether it is a dir.
fn open_source(
    root: BorrowedFd<'_>,
    alloc: &AllocDir,
    b: &AllocBind,
) -> Result<(OwnedFd, bool), BindError> {
    let mut cur: Option<OwnedFd> = None;
    let mut path = alloc.root.clone();
    let names: Vec<&std::ffi::OsStr> = b
        .rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(BindError::Source {
                path: b.in_place(alloc).source,
                source: io::Error::from(rustix::io::Errno::INVAL),
            }),
        })
        .collect::<Result<_, _>>()?;
    for (i, name) in names.iter().enumerate() {
        path.push(name);
        let last = i + 1 == names.len();
        let at = cur.as_ref().map_or(root, |f| f.as_fd());
        let err = |path: &Path, e: rustix::io::Errno| BindError::Source {
            path: path.to_path_buf(),
            source: e.into(),
        };
        let flags = if last {
            OFlags::PATH
        } else {
            OFlags::PATH | OFlags::DIRECTORY
        };
        let fd = match open_beneath(at, Path::new(name), flags) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(at, *name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        let d =
                            open_beneath(at, Path::new(name), OFlags::RDONLY | OFlags::DIRECTORY)
                                .map_err(|e| err(&path, e))?;
                        // The agent's umask is not the engine's: 0755 as the engine made them.
                        rustix::fs::fchmod(&d, Mode::from_raw_mode(0o755))
                            .map_err(|e| err(&path, e))?;
                        d
                    }
                    // Made meanwhile: open what is there, by the same rules.
                    Err(rustix::io::Errno::EXIST) => open_beneath(at, Path::new(name), flags)
                        .map_err(|e| classify(b, alloc, &path, e))?,
                    Err(e) => return Err(err(&path, e)),
                }
            }
            Err(e) => return Err(classify(b, alloc, &path, e)),
        };
        cur = Some(fd);
    }
    let fd = match cur {
        Some(fd) => fd,
        None => rustix::io::dup(root).map_err(|e| BindError::Source {
            path: alloc.root.clone(),
            source: e.into(),
        })?,
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| BindError::Source {
        path: path.clone(),
        source: e.into(),
    })?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Ok((fd, true)),
        FileType::RegularFile => Ok((fd, false)),
        // O_PATH | O_NOFOLLOW opens a last component that is a symlink as itself.
        FileType::Symlink => Err(BindError::Symlink {
            source_path: b.in_place(alloc).source,
            link: path,
        }),
        other => Err(BindError::Kind {
            path,
            kind: kind_name(other),
        }),
    }
}

/// The error of a component that could not be opened: ELOOP is a symlink on
/// the way (or the component itself), ENOTDIR a file where a dir must be.
fn classify(b: &AllocBind, alloc: &AllocDir, path: &Path, e: rustix::io::Errno) -> BindError {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if e == rustix::io::Errno::LOOP || is_link {
        return BindError::Symlink {
            source_path: b.in_place(alloc).source,
            link: path.to_path_buf(),
        };
    }
    BindError::Source {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "not a dir or a regular file",
    }
}

/// Bind the file or dir open as `fd` on `point`, then make the bind nosuid and
/// nodev (read-only too when asked), keeping noexec and read-only of the mount
/// it comes from.
fn bind_fd(fd: BorrowedFd<'_>, point: &Path, read_only: bool) -> Result<(), nix::Error> {
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        point,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let from = nix::sys::statvfs::fstatvfs(fd)?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let keep = from.flags();
    if read_only || keep.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        flags |= MsFlags::MS_RDONLY;
    }
    if keep.contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) {
        flags |= MsFlags::MS_NOEXEC;
    }
    if let Err(e) = mount(None::<&str>, point, None::<&str>, flags, None::<&str>) {
        let _ = umount2(point, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(rel: &str) -> AllocBind {
        AllocBind {
            rel: rel.into(),
            target: "/data".into(),
            read_only: false,
        }
    }

    fn alloc() -> (tempfile::TempDir, AllocDir) {
        let tmp = tempfile::tempdir().unwrap();
        let alloc = AllocDir {
            root: tmp.path().join("allocs").join("a1"),
        };
        alloc.create(&["web"]).unwrap();
        (tmp, alloc)
    }

    fn open(alloc: &AllocDir, b: &AllocBind) -> Result<(OwnedFd, bool), BindError> {
        let root = open_alloc_root(&alloc.root).unwrap();
        open_source(root.as_fd(), alloc, b)
    }

    #[test]
    fn a_source_through_a_symlink_is_refused_wherever_the_link_is() {
        let (_tmp, alloc) = alloc();
        let local = alloc.task_local("web");
        std::os::unix::fs::symlink("/etc", local.join("etc")).unwrap();
        for rel in ["web/local/etc", "web/local/etc/sub"] {
            let e = open(&alloc, &bind(rel)).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "the source {} goes through the symlink {}: a bind of the alloc dir never \
                     follows a symlink",
                    alloc.root.join(rel).display(),
                    local.join("etc").display()
                )
            );
        }
        // Nothing was made through the link.
        assert!(!Path::new("/etc/sub").exists());
    }

    #[test]
    fn missing_dirs_are_made_beneath_and_files_and_dirs_are_opened() {
        let (_tmp, alloc) = alloc();
        let (_, is_dir) = open(&alloc, &bind("web/shared/not/yet")).unwrap();
        assert!(is_dir);
        let made = alloc.task_root("web").join("shared/not/yet");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        std::fs::write(alloc.shared().join("conf.txt"), "x").unwrap();
        let (_, is_dir) = open(&alloc, &bind("alloc/conf.txt")).unwrap();
        assert!(!is_dir);
        let e = open(&alloc, &bind("alloc/conf.txt/below"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Not a directory"), "{e}");
    }

    #[test]
    fn only_dirs_and_regular_files_are_bound() {
        let (_tmp, alloc) = alloc();
        nix::unistd::mkfifo(
            &alloc.shared().join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = open(&alloc, &bind("alloc/pipe")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "the source {} is a fifo: only dirs and regular files are bound",
                alloc.shared().join("pipe").display()
            )
        );
    }
}

//! The one way tend persists a file: write a temp file in the same dir (through a
//! dir fd, never following a symlink), fsync it, rename it over the name, fsync the
//! dir. A reader sees the old file or the new one, never a torn one. A writer
//! with someone waiting to hear (tend-spawn and its exit) may put the file in
//! place first and fsync right after ([`write_at_deferred`]).
//!
//! Where the file system has `O_TMPFILE`, the temp file has no name while it is
//! written: a writer killed half-way leaves nothing behind, and a file that does
//! not exist yet (an exit status file) is linked straight to its name. Only a
//! replacement goes through a named temp file, `.<name>.tmp-<pid>-<n>`, for the
//! two syscalls of link and rename (no syscall links a file over another): a
//! writer killed between them leaves that name, which its owner removes with
//! [`remove_stale_temps`] when it starts again.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{open, openat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::Mode;
use nix::unistd::{linkat, unlinkat};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why a file could not be written atomically.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// The name is not one plain path component.
    #[error("atomic write: {name:?} is not a plain file name")]
    BadName {
        /// The name given.
        name: String,
    },
    /// Opening the dir failed.
    #[error("atomic write: open dir {path}: {source}")]
    OpenDir {
        /// The dir.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// A step on the temp file or the rename failed.
    #[error("atomic write {name}: {step}: {source}")]
    Step {
        /// The final name.
        name: String,
        /// What was being done: create, write, fsync, rename, fsync dir.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn io_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Open a directory to write into with [`write_at`]: `O_DIRECTORY | O_CLOEXEC`.
pub fn open_dir(path: &Path) -> Result<OwnedFd, AtomicError> {
    open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| AtomicError::OpenDir {
        path: path.display().to_string(),
        source: io_err(e),
    })
}

/// Write `data` to `dir/name` atomically with file mode `mode`, and make it
/// durable before returning.
///
/// `name` must be a plain file name. The temp file is created with
/// `O_EXCL | O_NOFOLLOW`, so a symlink planted at either name is never followed:
/// the rename replaces the link itself.
pub fn write_at<D: AsFd>(dir: D, name: &str, data: &[u8], mode: u32) -> Result<(), AtomicError> {
    write_at_inner(dir.as_fd(), name, data, mode, false)?.sync()
}

/// A file [`write_at_deferred`] put in place: whole and under its name for
/// every reader, but maybe not on the disk yet; [`Pending::sync`] makes it so.
#[must_use = "a pending file is durable only once synced"]
#[derive(Debug)]
pub struct Pending {
    name: String,
    /// The file (unless it was synced before its link) and its dir, still to
    /// fsync; None: durable already.
    unsynced: Option<(Option<File>, OwnedFd)>,
}

impl Pending {
    /// The entries of a dir (a new one's in its parent, say) still to make
    /// durable; `name` names it in errors.
    pub fn dir_entries(name: &str, dir: OwnedFd) -> Pending {
        Pending {
            name: name.to_string(),
            unsynced: Some((None, dir)),
        }
    }

    /// The name of the file written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// fsync the file, then its dir.
    pub fn sync(self) -> Result<(), AtomicError> {
        let Some((file, dir)) = self.unsynced else {
            return Ok(());
        };
        let step = |step: &'static str| {
            let name = self.name.clone();
            move |source: io::Error| AtomicError::Step { name, step, source }
        };
        if let Some(file) = file {
            file.sync_all().map_err(step("fsync"))?;
        }
        nix::unistd::fsync(dir.as_fd())
            .map_err(io_err)
            .map_err(step("fsync dir"))
    }
}

/// Make pending writes durable together: each file's fsync, then one fsync
/// per distinct dir. Two files of one dir take three fsyncs, not four. The
/// first failure is returned; the files after it are not synced.
pub fn sync_together(ps: Vec<Pending>) -> Result<(), AtomicError> {
    let mut dirs = Vec::new();
    for p in ps {
        let Some((file, dir)) = p.unsynced else {
            continue;
        };
        let step = |step: &'static str| {
            let name = p.name.clone();
            move |source: io::Error| AtomicError::Step { name, step, source }
        };
        if let Some(file) = file {
            file.sync_all().map_err(step("fsync"))?;
        }
        let st = nix::sys::stat::fstat(dir.as_fd())
            .map_err(io_err)
            .map_err(step("stat dir"))?;
        let id = (st.st_dev, st.st_ino);
        if !dirs.iter().any(|(_, _, d): &(String, OwnedFd, _)| *d == id) {
            dirs.push((p.name.clone(), dir, id));
        }
    }
    for (name, dir, _) in dirs {
        nix::unistd::fsync(dir.as_fd())
            .map_err(io_err)
            .map_err(|source| AtomicError::Step {
                name,
                step: "fsync dir",
                source,
            })?;
    }
    Ok(())
}

/// [`write_at`] up to the point where every reader sees the whole new file,
/// leaving the fsyncs to [`Pending::sync`], for a writer that has someone to
/// tell first. Where the file system has `O_TMPFILE` the unnamed file is
/// linked in unsynced: only a power loss before the sync could lose it (or, on
/// a file system that does not order data before metadata, leave it short),
/// never a crash of the writer. Elsewhere the named temp file way is synced
/// before its rename, as [`write_at`] does.
pub fn write_at_deferred<D: AsFd>(
    dir: D,
    name: &str,
    data: &[u8],
    mode: u32,
) -> Result<Pending, AtomicError> {
    write_at_inner(dir.as_fd(), name, data, mode, true)
}

fn write_at_inner(
    dir: BorrowedFd<'_>,
    name: &str,
    data: &[u8],
    mode: u32,
    defer: bool,
) -> Result<Pending, AtomicError> {
    check_name(name)?;
    let step = |step: &'static str| {
        let name = name.to_string();
        move |source: io::Error| AtomicError::Step { name, step, source }
    };
    match write_unnamed(dir, name, data, mode, !defer) {
        Ok(file) => {
            let dir = dir.try_clone_to_owned().map_err(step("dup dir fd"))?;
            return Ok(Pending {
                name: name.to_string(),
                unsynced: Some((defer.then_some(file), dir)),
            });
        }
        Err(Unnamed::Unsupported) => {}
        Err(Unnamed::Failed(e)) => return Err(e),
    }
    let tmp = temp_name(name);
    let fd = openat(
        dir.as_fd(),
        tmp.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(io_err)
    .map_err(step("create temp file"))?;
    let mut file = File::from(fd);
    let result = (|| {
        // The mode of O_CREAT is cut by the umask; set it exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(step("chmod"))?;
        file.write_all(data).map_err(step("write"))?;
        file.sync_all().map_err(step("fsync"))?;
        renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)
            .map_err(io_err)
            .map_err(step("rename"))?;
        nix::unistd::fsync(dir.as_fd())
            .map_err(io_err)
            .map_err(step("fsync dir"))
    })();
    if result.is_err() {
        // Nothing half-written is left behind.
        let _ = unlinkat(
            dir.as_fd(),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    result.map(|()| Pending {
        name: name.to_string(),
        unsynced: None,
    })
}

/// `name` is one plain file name.
fn check_name(name: &str) -> Result<(), AtomicError> {
    crate::names::check_file_name(name).map_err(|_| AtomicError::BadName {
        name: name.to_string(),
    })
}

/// A fresh temp name for `name` in its dir: `.<name>.tmp-<pid>-<n>`.
fn temp_name(name: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.tmp-{}-{n}", std::process::id())
}

/// The pid of the writer that made `file_name`, when it is a temp name of
/// this helper (`.<name>.tmp-<pid>-<n>`); None for any other name.
pub fn temp_writer(file_name: &str) -> Option<i32> {
    let rest = file_name.strip_prefix('.')?;
    let (name, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if name.is_empty() || !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

/// Remove from `dir` the temp files of this helper whose writer is gone (a
/// writer killed between the link and the rename of a replacement), for
/// which `writer_alive` says false; the names removed. Files of other names,
/// and temps of a live writer, stay.
pub fn remove_stale_temps(
    dir: &Path,
    writer_alive: impl Fn(i32) -> bool,
) -> Result<Vec<String>, AtomicError> {
    let fd = open_dir(dir)?;
    let read_err = |source: io::Error| AtomicError::OpenDir {
        path: dir.display().to_string(),
        source,
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let name = entry.map_err(read_err)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = temp_writer(name) else {
            continue;
        };
        if writer_alive(pid) {
            continue;
        }
        match unlinkat(fd.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => removed.push(name.to_string()),
            Err(e) => {
                return Err(AtomicError::Step {
                    name: name.to_string(),
                    step: "remove stale temp file",
                    source: io_err(e),
                })
            }
        }
    }
    Ok(removed)
}

enum Unnamed {
    /// No O_TMPFILE here (or no /proc to link it through): use a named temp file.
    Unsupported,
    /// A real failure.
    Failed(AtomicError),
}

/// The O_TMPFILE path: the file, linked, its data synced first when `sync_first`,
/// its dir not synced.
fn write_unnamed(
    dir: BorrowedFd<'_>,
    name: &str,
    data: &[u8],
    mode: u32,
    sync_first: bool,
) -> Result<File, Unnamed> {
    let failed = |step: &'static str| {
        let name = name.to_string();
        move |source: io::Error| Unnamed::Failed(AtomicError::Step { name, step, source })
    };
    let file = unnamed_file(dir, name, data, mode)?;
    if sync_first {
        file.sync_all().map_err(failed("fsync"))?;
    }
    let link = |to: &str| link_unnamed(&file, dir, to);
    match link(name) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let tmp = temp_name(name);
            match link(&tmp) {
                Ok(()) => {}
                Err(Errno::ENOENT) => return Err(Unnamed::Unsupported),
                Err(e) => return Err(failed("link temp file")(io_err(e))),
            }
            if let Err(e) = renameat(dir, tmp.as_str(), dir, name) {
                let _ = unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                return Err(failed("rename")(io_err(e)));
            }
        }
        // No /proc: the named temp file way works everywhere.
        Err(Errno::ENOENT) => return Err(Unnamed::Unsupported),
        Err(e) => return Err(failed("link")(io_err(e))),
    }
    Ok(file)
}

/// A new O_TMPFILE file in `dir` holding `data`, with mode `mode`; no name yet.
fn unnamed_file(dir: BorrowedFd<'_>, name: &str, data: &[u8], mode: u32) -> Result<File, Unnamed> {
    let failed = |step: &'static str| {
        let name = name.to_string();
        move |source: io::Error| Unnamed::Failed(AtomicError::Step { name, step, source })
    };
    let fd = match openat(
        dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    ) {
        Ok(fd) => fd,
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL | Errno::ENOENT) => {
            return Err(Unnamed::Unsupported)
        }
        Err(e) => return Err(failed("create temp file")(io_err(e))),
    };
    let mut file = File::from(fd);
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(failed("chmod"))?;
    file.write_all(data).map_err(failed("write"))?;
    Ok(file)
}

/// Give an O_TMPFILE file the name `to` in `dir`. Linking it by its /proc
/// path needs no capability (unlike AT_EMPTY_PATH).
fn link_unnamed(file: &File, dir: BorrowedFd<'_>, to: &str) -> nix::Result<()> {
    let by_proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(
        AT_FDCWD,
        by_proc.as_str(),
        dir,
        to,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
}

/// When [`write_at_with`] hands its syncer a [`Pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A replacement's new file under its temp name. It must be on the disk
    /// before the rename puts it over the old one, so the syncer makes it
    /// durable before it returns.
    BeforeRename,
    /// The last step: a new file under its name, or a replacement's rename.
    /// The syncer may make it durable later, with others, as long as no one
    /// acts on the write before then.
    Last,
}

/// [`write_at`] with its fsyncs left to `sync`, for a writer that makes many
/// writes durable at once (one `syncfs` for a batch). Every reader sees the
/// old file or the whole new one, and so does the disk after a power loss
/// once `sync` has made the [`Stage::Last`] pending durable: a replacement's
/// data reaches the disk ([`Stage::BeforeRename`]) before its rename.
pub fn write_at_with(
    dir: BorrowedFd<'_>,
    name: &str,
    data: &[u8],
    mode: u32,
    sync: &mut dyn FnMut(Pending, Stage) -> Result<(), AtomicError>,
) -> Result<(), AtomicError> {
    check_name(name)?;
    let step = |step: &'static str| {
        let name = name.to_string();
        move |source: io::Error| AtomicError::Step { name, step, source }
    };
    let pending = |file: Option<File>| -> Result<Pending, AtomicError> {
        let dir = dir.try_clone_to_owned().map_err(step("dup dir fd"))?;
        Ok(Pending {
            name: name.to_string(),
            unsynced: Some((file, dir)),
        })
    };
    let tmp = temp_name(name);
    let file = match unnamed_file(dir, name, data, mode) {
        Ok(file) => match link_unnamed(&file, dir, name) {
            Ok(()) => return sync(pending(Some(file))?, Stage::Last),
            Err(Errno::EEXIST) => match link_unnamed(&file, dir, &tmp) {
                Ok(()) => Some(file),
                // No /proc: the named temp file way works everywhere.
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(step("link temp file")(io_err(e))),
            },
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(step("link")(io_err(e))),
        },
        Err(Unnamed::Unsupported) => None,
        Err(Unnamed::Failed(e)) => return Err(e),
    };
    let file = match file {
        Some(f) => f,
        None => {
            let fd = openat(
                dir,
                tmp.as_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            )
            .map_err(io_err)
            .map_err(step("create temp file"))?;
            let mut file = File::from(fd);
            let filled = file
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(step("chmod"))
                .and_then(|()| file.write_all(data).map_err(step("write")));
            if let Err(e) = filled {
                let _ = unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                return Err(e);
            }
            file
        }
    };
    let renamed = pending(Some(file))
        .and_then(|p| sync(p, Stage::BeforeRename))
        .and_then(|()| {
            renameat(dir, tmp.as_str(), dir, name)
                .map_err(io_err)
                .map_err(step("rename"))
        });
    if let Err(e) = renamed {
        // Nothing half-written is left behind.
        let _ = unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    sync(pending(None)?, Stage::Last)
}

/// Write `data` to `path` atomically: [`open_dir`] of its parent, then [`write_at`].
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AtomicError::BadName {
            name: path.display().to_string(),
        })?;
    let dir = open_dir(parent)?;
    write_at(&dir, name, data, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, b"one", 0o644).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("f")).unwrap();
        write(&dir.path().join("f"), b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(dir.path().join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_new_file_is_linked_whole_and_an_old_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path()).unwrap();
        write_at(&fd, "f", b"first", 0o644).unwrap();
        write_at(&fd, "f", b"second", 0o644).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn a_deferred_file_is_whole_for_readers_before_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("f")).unwrap();
        let pending = write_at_deferred(&fd, "f", b"whole", 0o640).unwrap();
        // Readable, whole and in place before the sync; the link replaced.
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"whole");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(
            std::fs::metadata(dir.path().join("f"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        pending.sync().unwrap();
        write_at_deferred(&fd, "f", b"again", 0o644)
            .unwrap()
            .sync()
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"again");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["f", "victim"]);
        assert!(matches!(
            write_at_deferred(&fd, "a/b", b"", 0o644),
            Err(AtomicError::BadName { .. })
        ));
    }

    #[test]
    fn temp_names_carry_their_writer() {
        let t = temp_name("t.json");
        assert_eq!(
            temp_writer(&t),
            Some(i32::try_from(std::process::id()).unwrap())
        );
        assert_eq!(temp_writer(".t.json.tmp-13677-106"), Some(13677));
        for other in [
            "t.json",
            ".t.json",
            ".t.json.tmp-",
            ".t.json.tmp-12",
            ".t.json.tmp-x-1",
            ".t.json.tmp-0-1",
            ".t.json.tmp-1-2-3",
            ".tmp-1-2",
            "t.json.tmp-1-2",
        ] {
            assert_eq!(temp_writer(other), None, "{other}");
        }
    }

    #[test]
    fn stale_temps_of_dead_writers_go_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "t.json",
            ".t.json.tmp-111-1",
            ".t.json.tmp-222-7",
            ".u.token.tmp-111-2",
            "notes.tmp-111-1",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let mut removed = remove_stale_temps(dir.path(), |pid| pid == 222).unwrap();
        removed.sort();
        assert_eq!(removed, [".t.json.tmp-111-1", ".u.token.tmp-111-2"]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".t.json.tmp-222-7", "notes.tmp-111-1", "t.json"]);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path()).unwrap();
        assert!(matches!(
            write_at(&fd, "../x", b"", 0o644),
            Err(AtomicError::BadName { .. })
        ));
    }
}

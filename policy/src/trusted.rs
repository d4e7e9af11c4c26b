//! Opening what the policy trusts: the policy file, and the caller's dirs,
//! one component at a time without following symlinks, checking who owns
//! each and who may write it.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

use crate::{PolicyError, MAX_POLICY_LEN};

/// Open `dir` (absolute) for a caller: it must lie strictly below one of
/// `roots`; each component below the root is opened with O_PATH | O_NOFOLLOW |
/// O_DIRECTORY from its parent's fd (a symlink anywhere is refused), must be
/// owned by `uid` or be root's and not group/other-writable, and `dir` itself
/// must be owned by `uid`. Returns the O_PATH fd of `dir`: the daemon works from
/// it, so swapping a component afterwards changes nothing.
pub fn open_caller_dir(roots: &[PathBuf], dir: &Path, uid: u32) -> Result<OwnedFd, String> {
    let shown = dir.display().to_string();
    let clean = clean_absolute(&shown)?;
    let Some(root) = roots.iter().find(|r| clean.starts_with(r) && clean != **r) else {
        return Err(format!("{shown:?} is not below any of {roots:?}"));
    };
    let rest = clean
        .strip_prefix(root)
        .map_err(|_| format!("{shown:?}: bad path"))?;
    let mut fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("root {:?}: {}", root.display().to_string(), e.desc()))?;
    let mut at = root.clone();
    let mut comps = rest.components().peekable();
    while let Some(c) = comps.next() {
        let name = c.as_os_str();
        at.push(name);
        let next = open_dir_nofollow(fd.as_fd(), name, &at)?;
        let st =
            fstat(&next).map_err(|e| format!("{:?}: {}", at.display().to_string(), e.desc()))?;
        let last = comps.peek().is_none();
        let owned = st.st_uid == uid;
        let rootsafe = st.st_uid == 0 && st.st_mode & 0o022 == 0;
        if last && !owned {
            return Err(format!(
                "{:?} is owned by uid {}, not by the caller (uid {uid})",
                at.display().to_string(),
                st.st_uid
            ));
        }
        if !owned && !rootsafe {
            return Err(format!(
                "{:?} is owned by uid {} and is neither the caller's nor root's alone",
                at.display().to_string(),
                st.st_uid
            ));
        }
        fd = next;
    }
    Ok(fd)
}

fn open_dir_nofollow(parent: BorrowedFd<'_>, name: &OsStr, at: &Path) -> Result<OwnedFd, String> {
    let shown = at.display().to_string();
    match openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            // O_PATH | O_NOFOLLOW may hand back the link itself: look.
            let st = fstat(&fd).map_err(|e| format!("{shown:?}: {}", e.desc()))?;
            if kind(&st) == SFlag::S_IFLNK {
                return Err(format!("{shown:?} is a symlink"));
            }
            if kind(&st) != SFlag::S_IFDIR {
                return Err(format!("{shown:?} is not a dir"));
            }
            Ok(fd)
        }
        Err(e) => {
            let is_link = fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| kind(&st) == SFlag::S_IFLNK);
            if is_link {
                Err(format!("{shown:?} is a symlink"))
            } else {
                Err(format!("{shown:?}: {}", e.desc()))
            }
        }
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// An absolute path without `.`, `..`, `//` or a trailing `/`, or why not.
pub(crate) fn clean_absolute(s: &str) -> Result<PathBuf, String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if s.contains('\0') {
        return Err(format!("{s:?} holds a NUL byte"));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(s).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{s:?} holds '.' or '..'"))
            }
        }
    }
    Ok(out)
}

/// Check the ownership chain from `anchor` down to `path` and read the file.
pub(crate) fn read_trusted(anchor: &Path, path: &Path, owner: u32) -> Result<String, PolicyError> {
    let io_err = |what: String, source: io::Error| PolicyError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let unsafe_ = |reason: String| PolicyError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    let rel = if path.is_absolute() {
        path.strip_prefix(anchor)
            .map_err(|_| unsafe_(format!("is not below {}", anchor.display())))?
    } else {
        path
    };
    let comps: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(unsafe_("holds '.' or '..'".into())),
        })
        .collect::<Result<_, _>>()?;
    let Some((file, dirs)) = comps.split_last() else {
        return Err(unsafe_("names no file".into()));
    };
    let errno_io = |e: Errno| io::Error::from_raw_os_error(e as i32);
    let mut at = anchor.to_path_buf();
    let mut dir = nix::fcntl::open(
        anchor,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
    let trusted = |st: &FileStat, at: &Path| -> Result<(), PolicyError> {
        if st.st_uid != owner {
            return Err(unsafe_(format!(
                "{} is owned by uid {}, not root: refusing to run setuid",
                at.display(),
                st.st_uid
            )));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(unsafe_(format!(
                "{} is writable by group or other (mode {:o}): refusing to run setuid",
                at.display(),
                st.st_mode & 0o7777
            )));
        }
        Ok(())
    };
    let st = fstat(&dir).map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
    trusted(&st, &at)?;
    for name in dirs {
        at.push(name);
        let next = open_dir_nofollow(dir.as_fd(), name, &at).map_err(unsafe_)?;
        let st = fstat(&next).map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
        trusted(&st, &at)?;
        dir = next;
    }
    at.push(file);
    let fd = openat(
        dir.as_fd(),
        *file,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => unsafe_(format!("{} is a symlink", at.display())),
        e => io_err(at.display().to_string(), errno_io(e)),
    })?;
    let st = fstat(&fd).map_err(|e| io_err(at.display().to_string(), errno_io(e)))?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(unsafe_(format!("{} is not a regular file", at.display())));
    }
    trusted(&st, &at)?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_POLICY_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_err(at.display().to_string(), e))?;
    if text.len() as u64 > MAX_POLICY_LEN {
        return Err(unsafe_(format!("is over {MAX_POLICY_LEN} bytes")));
    }
    Ok(text)
}

//! Step 3 of the task's child: a private mount namespace, the planned
//! mounts and the chroot (see [`crate::chroot`] for the plan). The
//! alloc-dir sources are opened beneath the alloc dir with openat2
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, a tmpfs is mounted over the task
//! dir and the mount points made in it, every target is opened beneath it
//! the same way and mounted on through `/proc/self/fd/N` (binds then made
//! read-only or nosuid,nodev all the way down with mount_setattr, the
//! task's /proc mounted from inside its pid namespace and its kernel knobs
//! covered), the tmpfs turns read-only, then `fchdir` + `chroot(".")`.
//! A writable root is an overlay of its image in place of the tmpfs (its
//! mount points made beneath it without following symlinks, and it stays
//! writable). The mount points of a config's own mounts are made the same
//! way right before each mount, and a masked path gets `/dev/null` or an
//! empty read-only tmpfs as it turns out to be a file or a dir.
//!
//! Between fork and exec: every call goes through [`super::raw`]
//! (async-signal-safe, no allocation); fds are raw numbers on the stack and
//! paths were built before the fork or are written into stack buffers.

use std::ffi::{c_char, CStr};
use std::os::fd::RawFd;

use nix::errno::Errno;
use tend_proto::Stage;

use super::raw::{self, Sys};
use super::task::{At, Failed};
use crate::chroot::{MountOp, MountPoint, PreparedRoot, SourceKind, MAX_ALLOC_SOURCES};

/// Room for "/proc/self/fd/<int>" and its NUL.
pub(super) const FD_PATH_LEN: usize = 32;

/// Write "/proc/self/fd/<fd>" with its NUL into `buf`, without allocating.
pub(super) fn fd_path(buf: &mut [u8; FD_PATH_LEN], fd: libc::c_int) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(fd).unwrap_or(0);
    let mut len = 0;
    loop {
        digits[len] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

/// The `MS_*` flags a mount has, from its statvfs `f_flag` (`ST_*`): a remount
/// that did not repeat them would clear them (and where the kernel locked
/// them, fail). (glibc fills `f_flag` from fstatfs alone on every kernel
/// since 2.6.36, without reading /proc/mounts.)
pub(super) fn kept_mount_flags(f: libc::c_ulong) -> libc::c_ulong {
    let same = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_SYNCHRONOUS
        | libc::MS_MANDLOCK
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME;
    // statvfs(3)'s ST_RELATIME, the kernel's (libc names it for glibc only).
    const ST_RELATIME: libc::c_ulong = 0x1000;
    let relatime = if f & ST_RELATIME != 0 {
        libc::MS_RELATIME
    } else {
        0
    };
    (f & same) | relatime
}

const NULL: *const c_char = std::ptr::null();

/// Item `i` (0-based) of the plan, as the 1-based index a failure names.
fn item(i: usize) -> u32 {
    u32::try_from(i + 1).unwrap_or(u32::MAX)
}

/// The whole step: new mount namespace, nothing propagated back, the alloc
/// dir checked, the sources in it opened, the tmpfs root mounted and its
/// mount points made, every planned mount, the root read-only, the chroot.
pub(super) fn enter_root(root: &PreparedRoot) -> Result<(), Failed> {
    raw::unshare_mount_ns().at(Stage::Mount)?;
    // Nothing mounted here leaks back to the host.
    raw::mount(
        NULL,
        c"/".as_ptr(),
        NULL,
        libc::MS_REC | libc::MS_SLAVE,
        NULL,
    )
    .at(Stage::Mount)?;
    let alloc_fd = open_alloc_dir(root).at(Stage::Mount)?;
    // The sources in the alloc dir, opened before the tmpfs covers the task
    // dir (`<task>/local` is beneath it).
    let mut sources = [-1 as RawFd; MAX_ALLOC_SOURCES];
    let mut n_sources = 0;
    for (i, op) in root.ops.iter().enumerate() {
        if op.kind != SourceKind::InAlloc {
            continue;
        }
        if n_sources == MAX_ALLOC_SOURCES {
            return Err(Failed::at(Stage::Mount, item(i), Errno::E2BIG));
        }
        sources[n_sources] = raw::open_beneath(alloc_fd, op.source.as_ptr(), libc::O_DIRECTORY)
            .at_item(Stage::Mount, item(i))?;
        n_sources += 1;
    }
    let root_fd = match &root.overlay {
        Some(options) => {
            let fd =
                mount_root(root, alloc_fd, c"overlay", options, OVERLAY_FLAGS).at(Stage::Mount)?;
            make_mount_points_in_image(root, fd).at(Stage::Mount)?;
            fd
        }
        None => {
            let fd = mount_root(root, alloc_fd, c"tmpfs", &root.tmpfs_options, TMPFS_FLAGS)
                .at(Stage::Mount)?;
            make_mount_points(root, fd).at(Stage::Mount)?;
            fd
        }
    };
    let mut next_source = 0;
    for (i, op) in root.ops.iter().enumerate() {
        let source = if op.kind == SourceKind::InAlloc {
            next_source += 1;
            sources[next_source - 1]
        } else {
            -1
        };
        mount_one(root_fd, op, source).at_item(Stage::Mount, item(i))?;
    }
    // The tmpfs read-only: the task writes only to /local and /alloc (and,
    // in a writable root, to the overlay's upper dir).
    if root.overlay.is_none() {
        let mut buf = [0u8; FD_PATH_LEN];
        raw::mount(
            NULL,
            fd_path(&mut buf, root_fd),
            NULL,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | TMPFS_FLAGS,
            NULL,
        )
        .at(Stage::Mount)?;
    }
    raw::chroot_to(root_fd).at(Stage::Chroot)?;
    raw::close(root_fd);
    raw::close(alloc_fd);
    Ok(())
}

/// The alloc dir, opened again by path (the agent's own) in the new
/// namespace, where mount(2) accepts its mount points; refused (EXDEV) if
/// it is not the dir the daemon checked: swapped under us.
fn open_alloc_dir(root: &PreparedRoot) -> Sys<RawFd> {
    let fd = raw::open(&root.alloc_dir, libc::O_PATH | libc::O_DIRECTORY)?;
    if raw::dev_ino(fd)? != root.alloc_id {
        return Err(Errno::EXDEV);
    }
    Ok(fd)
}

/// The tmpfs root: it holds only mount points, so nothing in it runs.
const TMPFS_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
/// The overlay root: the image's programs run from it.
const OVERLAY_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// A tmpfs (or a writable root's overlay) over the task dir, seen only in
/// this namespace: the root, opened again so the fd is the new mount
/// (checked: never make mount points on disk).
fn mount_root(
    root: &PreparedRoot,
    alloc_fd: RawFd,
    fstype: &CStr,
    options: &CStr,
    flags: libc::c_ulong,
) -> Sys<RawFd> {
    let disk_root = raw::open_beneath(alloc_fd, root.root.as_ptr(), libc::O_DIRECTORY)?;
    let mut buf = [0u8; FD_PATH_LEN];
    raw::mount(
        c"tend-root".as_ptr(),
        fd_path(&mut buf, disk_root),
        fstype.as_ptr(),
        flags,
        options.as_ptr(),
    )?;
    let (disk_dev, _) = raw::dev_ino(disk_root)?;
    raw::close(disk_root);
    let root_fd = raw::open_beneath(alloc_fd, root.root.as_ptr(), libc::O_DIRECTORY)?;
    if raw::dev_ino(root_fd)?.0 == disk_dev {
        return Err(Errno::EXDEV);
    }
    Ok(root_fd)
}

/// The mount points, parents first, in a tmpfs nobody else has seen: no
/// symlink can be there. 0755 dirs and 0644 files for the task's user.
fn make_mount_points(root: &PreparedRoot, root_fd: RawFd) -> Sys {
    raw::umask(0o022);
    for mp in &root.creates {
        if mp.file {
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
            raw::close(raw::openat(root_fd, &mp.path, flags, 0o644)?);
        } else {
            raw::mkdirat(root_fd, &mp.path, 0o755)?;
        }
    }
    Ok(())
}

/// The mount points in a writable root, parents first. The image may hold
/// them already, or a symlink in their place: each is made (or found) from
/// its parent opened beneath the root without following a symlink; one that
/// exists is taken as it is (the mount opens it beneath the root without
/// following a symlink, so a symlink there fails the start, ELOOP).
fn make_mount_points_in_image(root: &PreparedRoot, root_fd: RawFd) -> Sys {
    raw::umask(0o022);
    root.creates
        .iter()
        .try_for_each(|mp| make_point_beneath(root_fd, mp))
}

/// One mount point, made (or found) from its parent opened beneath the root
/// without following a symlink: a symlink on the way, planted in an image
/// or in /local or /alloc, fails (ELOOP), and nothing is made outside the
/// root. One that exists is taken as it is (its mount opens it the same
/// way, so a symlink there fails too).
fn make_point_beneath(root_fd: RawFd, mp: &MountPoint) -> Sys {
    let parent = raw::open_beneath(root_fd, mp.parent.as_ptr(), libc::O_DIRECTORY)?;
    let made = if mp.file {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
        raw::openat(parent, &mp.name, flags, 0o644).map(raw::close)
    } else {
        raw::mkdirat(parent, &mp.name, 0o755)
    };
    raw::close(parent);
    match made {
        Err(Errno::EEXIST) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One planned mount on its target beneath `root_fd` (through
/// `/proc/self/fd/N`), then its attributes and remount. `source` is the fd
/// of an alloc-dir source, -1 for the others.
fn mount_one(root_fd: RawFd, op: &MountOp, source_fd: RawFd) -> Sys {
    for mp in &op.points {
        make_point_beneath(root_fd, mp)?;
    }
    let target_fd = match raw::open_beneath(root_fd, op.target.as_ptr(), 0) {
        // A kernel knob this kernel has not, a masked or read-only path
        // the root has not: nothing to hide.
        Err(Errno::ENOENT) if op.existing => return Ok(()),
        other => other?,
    };
    if op.kind == SourceKind::Mask {
        return mask(target_fd, op);
    }
    let mut target_buf = [0u8; FD_PATH_LEN];
    let mounted = if op.kind == SourceKind::Existing {
        target_fd
    } else {
        let mut source_buf = [0u8; FD_PATH_LEN];
        let source = match op.kind {
            SourceKind::InAlloc => fd_path(&mut source_buf, source_fd),
            SourceKind::Itself => fd_path(&mut source_buf, target_fd),
            _ => op.source.as_ptr(),
        };
        let fstype = op.fstype.as_ref().map_or(NULL, |f| f.as_ptr());
        let target = fd_path(&mut target_buf, target_fd);
        let data = op.data.as_ref().map_or(NULL, |d| d.as_ptr());
        match raw::mount(source, target, fstype, op.flags, data) {
            Err(Errno::EINVAL) if op.data_optional => {
                raw::mount(source, target, fstype, op.flags, NULL)?;
            }
            other => other?,
        }
        raw::close(target_fd);
        if source_fd >= 0 {
            raw::close(source_fd);
        }
        if op.attrs == 0 && op.remount.is_none() {
            return Ok(());
        }
        // Opened again, the target is now the root of the new mount.
        raw::open_beneath(root_fd, op.target.as_ptr(), 0)?
    };
    if op.attrs != 0 {
        raw::mount_setattr_recursive(mounted, op.attrs)?;
    }
    if let Some(flags) = op.remount {
        // A remount sets every flag: those the mount has stay.
        let kept = kept_mount_flags(raw::statvfs_flags(mounted)?);
        raw::mount(
            NULL,
            fd_path(&mut target_buf, mounted),
            NULL,
            flags | kept,
            NULL,
        )?;
    }
    raw::close(mounted);
    Ok(())
}

/// A mask over the target open at `target_fd`: an empty read-only tmpfs
/// over a dir, `/dev/null` (the op's source) bound over anything else.
fn mask(target_fd: RawFd, op: &MountOp) -> Sys {
    let mut buf = [0u8; FD_PATH_LEN];
    let target = fd_path(&mut buf, target_fd);
    let done = raw::is_dir(target_fd).and_then(|dir| {
        if dir {
            raw::mount(
                c"tmpfs".as_ptr(),
                target,
                c"tmpfs".as_ptr(),
                TMPFS_FLAGS | libc::MS_RDONLY,
                NULL,
            )
        } else {
            raw::mount(op.source.as_ptr(), target, NULL, libc::MS_BIND, NULL)
        }
    });
    raw::close(target_fd);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; FD_PATH_LEN];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = fd_path(&mut buf, fd);
            let len = buf.iter().position(|b| *b == 0).unwrap();
            assert_eq!(p, buf.as_ptr().cast());
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), want);
        }
    }
}

//! Reading and writing cgroup control files: one value per write, errors that
//! name the file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::{CgroupError, Result};

/// Write a whole value in one write: cgroup files take one value per write(2).
/// Never creates: a missing control file is an error, as on the kernel.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        source,
    };
    // openat(AT_FDCWD), not open(2): musl's open() follows every O_CLOEXEC
    // open with an fcntl(F_SETFD) for kernels older than 2.6.23, and an exec
    // start writes a dozen of these files.
    let fd = nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(io::Error::from(e)))?;
    fs::File::from(fd).write_all(value.as_bytes()).map_err(err)
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    read_text(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A whole control file: openat, reads of up to 512 bytes until one
/// returns none, close. `fs::read_to_string` adds an fstat (a cgroup
/// file's size is always 0) and, on musl, an fcntl: two calls of five for
/// the empty `cgroup.procs` that a task's exit reads in every hierarchy.
pub(crate) fn read_text(path: &Path) -> io::Result<String> {
    let fd = nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // A plain read loop: File::read_to_end asks the size first too.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match nix::unistd::read(&fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A file the host may not offer: None when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match read_text(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    parse_u64(path, &read_file(path)?)
}

pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    let t = text.trim();
    t.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("not a number: {t:?}"),
    })
}

/// The value of `key` in "key value" lines (memory.events, cpu.stat, memory.oom_control).
pub(crate) fn keyed_u64(path: &Path, text: &str, key: &str) -> Result<Option<u64>> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or("");
            return parse_u64(path, value).map(Some);
        }
    }
    Ok(None)
}

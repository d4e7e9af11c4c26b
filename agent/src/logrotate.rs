//! A rotating log writer: what the agent uses where it, not tend-spawn, writes a
//! task's log (the docker driver copies a container's streams through it).
//!
//! The rules are tend-spawn's, and must stay identical to them:
//! - `<task>.<stream>` is always the current file; `.1` is the one before it,
//!   `.2` the one before that, and so on.
//! - At most `max_files` files per stream, the current one included: rotating
//!   drops `.<max_files - 1>`, shifts every other `.N` to `.N+1`, renames the
//!   current file to `.1` and starts a new, empty current file. With
//!   `max_files = 1` the current file is removed and started again.
//! - No file grows past `max_file_size` bytes: a write that does not fit is split,
//!   the part that fits ends the current file and the rest goes on in the next.
//! - Never truncation: a file is only ever appended to, renamed or removed, so a
//!   reader that holds it open reads every byte written to it.
//! - An existing current file is appended to (an agent restart goes on where the
//!   last one stopped); it is rotated first if it is already full.
//! - Files are opened without following symlinks, mode 0644.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tend_proto::names;

/// Why a log file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LogRotateError {
    /// A file could not be opened, written, renamed or removed.
    #[error("log file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Writes one stream of one task into `<dir>/<task>.<stream>`, rotating by size.
#[derive(Debug)]
pub struct RotatingWriter {
    dir: PathBuf,
    base: String,
    max_files: u32,
    max_file_size: u64,
    file: Option<File>,
    size: u64,
}

impl RotatingWriter {
    /// A writer of `<dir>/<task>.<stream>`, keeping at most `max_files` files of at
    /// most `max_file_size` bytes each (both at least 1; 0 is taken as 1). The
    /// current file is opened, or created, at the first write.
    pub fn new(
        dir: &Path,
        task: &str,
        stream: &str,
        max_files: u32,
        max_file_size: u64,
    ) -> RotatingWriter {
        RotatingWriter {
            dir: dir.to_path_buf(),
            base: names::log_file(task, stream),
            max_files: max_files.max(1),
            max_file_size: max_file_size.max(1),
            file: None,
            size: 0,
        }
    }

    /// The current file.
    pub fn current(&self) -> PathBuf {
        self.dir.join(&self.base)
    }

    /// The `n`th older file, `n >= 1`.
    pub fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}.{n}", self.base))
    }

    /// Append all of `buf`, rotating as often as needed.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), LogRotateError> {
        while !buf.is_empty() {
            if self.file.is_none() {
                self.open_current()?;
            }
            if self.size >= self.max_file_size {
                self.rotate()?;
                continue;
            }
            let room = self.max_file_size - self.size;
            let n = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
            let path = self.current();
            let file = self.file.as_mut().ok_or_else(|| LogRotateError::Io {
                path: path.clone(),
                source: io::Error::other("not open"),
            })?;
            file.write_all(&buf[..n])
                .map_err(|source| LogRotateError::Io { path, source })?;
            self.size += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn open_current(&mut self) -> Result<(), LogRotateError> {
        let path = self.current();
        let io_err = |source| LogRotateError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(
                nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits(),
            )
            .open(&path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(io_err(io::Error::other("not a regular file")));
        }
        self.size = meta.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogRotateError> {
        self.file = None;
        let current = self.current();
        if self.max_files == 1 {
            remove_if_exists(&current)?;
        } else {
            remove_if_exists(&self.rotated(self.max_files - 1))?;
            for n in (1..self.max_files - 1).rev() {
                rename_if_exists(&self.rotated(n), &self.rotated(n + 1))?;
            }
            rename_if_exists(&current, &self.rotated(1))?;
        }
        self.open_current()
    }
}

fn remove_if_exists(path: &Path) -> Result<(), LogRotateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LogRotateError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), LogRotateError> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LogRotateError::Io {
            path: from.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn writes_below_the_limit_stay_in_the_current_file() {
        let d = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::new(d.path(), "t", "stdout", 3, 100);
        w.write_all(b"a\n").unwrap();
        w.write_all(b"b\n").unwrap();
        assert_eq!(read(&d.path().join("t.stdout")), "a\nb\n");
        assert!(!w.rotated(1).exists());
    }

    #[test]
    fn a_write_that_does_not_fit_is_split_and_no_file_passes_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::new(d.path(), "t", "stdout", 3, 4);
        w.write_all(b"abcdefghij").unwrap();
        assert_eq!(read(&w.rotated(2)), "abcd");
        assert_eq!(read(&w.rotated(1)), "efgh");
        assert_eq!(read(&w.current()), "ij");
    }

    #[test]
    fn at_most_max_files_are_kept_and_the_oldest_goes() {
        let d = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::new(d.path(), "t", "stderr", 3, 2);
        for chunk in [b"11", b"22", b"33", b"44", b"55"] {
            w.write_all(chunk).unwrap();
        }
        // 5 files' worth written; 3 kept: .2 (33), .1 (44), current (55).
        assert_eq!(read(&w.rotated(2)), "33");
        assert_eq!(read(&w.rotated(1)), "44");
        assert_eq!(read(&w.current()), "55");
        assert!(!w.rotated(3).exists());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn one_file_means_remove_and_start_again_never_truncate() {
        let d = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::new(d.path(), "t", "stdout", 1, 3);
        w.write_all(b"abc").unwrap();
        let held = std::fs::File::open(w.current()).unwrap();
        w.write_all(b"de").unwrap();
        assert_eq!(read(&w.current()), "de");
        assert!(!w.rotated(1).exists());
        // The old file is intact for whoever still holds it.
        assert_eq!(held.metadata().unwrap().len(), 3);
    }

    #[test]
    fn an_existing_current_file_is_appended_to_and_rotated_when_full() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.stdout"), "xy").unwrap();
        let mut w = RotatingWriter::new(d.path(), "t", "stdout", 2, 4);
        w.write_all(b"z").unwrap();
        assert_eq!(read(&w.current()), "xyz");
        drop(w);
        let mut w = RotatingWriter::new(d.path(), "t", "stdout", 2, 3);
        w.write_all(b"!").unwrap();
        assert_eq!(read(&w.rotated(1)), "xyz");
        assert_eq!(read(&w.current()), "!");
    }

    #[test]
    fn a_symlink_in_place_of_the_current_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("t.stdout")).unwrap();
        let mut w = RotatingWriter::new(d.path(), "t", "stdout", 2, 10);
        let err = w.write_all(b"x").unwrap_err();
        assert!(err.to_string().contains("t.stdout"), "{err}");
        assert_eq!(read(&target), "keep");
    }
}

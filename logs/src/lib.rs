//! The task's log files: `<task>.stdout` / `<task>.stderr` in the alloc's log dir,
//! rotated by size and count.
//!
//! `<name>` is always the current file, `<name>.1` the newest older one, `.2`
//! older, and so on; at most `max_files` files exist, the current one included.
//! A chunk that would carry the current file over `max_file_size` is split, so
//! every file holds at most `max_file_size` bytes. Files are never truncated, and
//! a failing write never blocks the task: the bytes are counted as dropped.
//!
//! Beside each file, its time index (`<name>.idx`, see [`index`]) says when
//! its bytes were written; it is rotated with its file. It is made right
//! before the file's first byte, not when the file is: a task that writes
//! nothing to a stream costs no index file, and a start makes two files
//! fewer.
//!
//! tend-spawn writes a raw_exec/exec task's logs with it, the agent a docker
//! task's: one format, one writer.
#![forbid(unsafe_code)]

pub mod index;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::renameat;
use nix::sys::stat::{fchmod, fstat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use tend_proto::config::LogConfig;

use tend_sys as sys;

use index::{index_name, IndexWriter};

/// Mode of log files.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Why a log file could not be opened or rotated; names the file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Opening (or creating) a file failed.
    #[error("open log file {name}: {source}")]
    Open {
        /// The file name in the log dir.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// Renaming or deleting at rotation failed.
    #[error("rotate log file {name}: {source}")]
    Rotate {
        /// The file name in the log dir.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// Writing failed.
    #[error("write log file {name}: {source}")]
    Write {
        /// The file name in the log dir.
        name: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Open `name` in `dir` for writing at its end, creating it with mode 0640 if
/// missing, never following a symlink. Not O_APPEND: the daemon is the file's one
/// writer and keeps the offset itself, which lets splice(2) move pipe pages into
/// the file (splice refuses O_APPEND files).
pub fn open_append(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, LogError> {
    open_exact(dir, name, 0)
}

/// [`open_append`] with O_APPEND, for a file that more than one process may
/// write at once: the daemon's own log, where the daemon of a task's next run
/// may start while the last one still lingers. Every write lands at the end,
/// so no run's lines overwrite another's.
pub fn open_shared_append(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, LogError> {
    open_exact(dir, name, libc::O_APPEND)
}

/// [`open_log`], and a file it created is given mode 0640 exactly.
fn open_exact(dir: BorrowedFd<'_>, name: &str, extra: i32) -> Result<OwnedFd, LogError> {
    let (fd, created) = open_log(dir, name, extra)?;
    if created && !sys::umask_keeps(LOG_FILE_MODE) {
        set_log_mode(&fd, name)?;
    }
    Ok(fd)
}

/// The umask cut the mode of a new file (or the process does not know its
/// umask): set it exactly.
fn set_log_mode(fd: &OwnedFd, name: &str) -> Result<(), LogError> {
    fchmod(fd, Mode::from_bits_truncate(LOG_FILE_MODE)).map_err(|e| LogError::Open {
        name: name.to_string(),
        source: io_err(e),
    })
}

/// Open `name` in `dir` for writing, creating it (mode 0640 as the umask
/// leaves it) if missing; true when it created it.
fn open_log(dir: BorrowedFd<'_>, name: &str, extra: i32) -> Result<(OwnedFd, bool), LogError> {
    let open = |flags: i32| sys::open_beneath(dir, name, flags, LOG_FILE_MODE);
    // No terminal becomes the caller's controlling one through a log path
    // (a daemon that leads its session opens its own log here).
    let base = libc::O_WRONLY | libc::O_NOCTTY | extra;
    match open(base | libc::O_CREAT | libc::O_EXCL) {
        Ok(fd) => Ok((fd, true)),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => open(base)
            .map(|fd| (fd, false))
            .map_err(|source| LogError::Open {
                name: name.to_string(),
                source,
            }),
        Err(source) => Err(LogError::Open {
            name: name.to_string(),
            source,
        }),
    }
}

/// What [`RotatingLog::splice_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// Bytes moved into the file.
    Moved(usize),
    /// The pipe is empty for now.
    Empty,
    /// Every writer has closed the pipe.
    Eof,
    /// splice cannot serve this file: read and write instead.
    Unsupported,
}

/// A log file's index, made at its first byte.
#[derive(Debug)]
enum Index {
    /// Not made yet: the inode of the file it is to index.
    Due(u64),
    Open(IndexWriter),
    /// It could not be made: the file goes on without times.
    Off,
}

/// One rotating log stream.
#[derive(Debug)]
pub struct RotatingLog {
    dir: OwnedFd,
    name: String,
    max_files: u32,
    max_file_size: u64,
    file: Option<OwnedFd>,
    /// The current file's index.
    index: Index,
    size: u64,
    dropped: u64,
    written: u64,
}

impl RotatingLog {
    /// Open (or create) the current file `name` in `dir`, appending to what is there.
    pub fn open(
        dir: BorrowedFd<'_>,
        name: &str,
        config: LogConfig,
    ) -> Result<RotatingLog, LogError> {
        let dir = dir.try_clone_to_owned().map_err(|source| LogError::Open {
            name: name.to_string(),
            source,
        })?;
        let (file, created) = open_log(dir.as_fd(), name, 0)?;
        // One fstat: the size to append at, the inode the index names, and
        // whether the umask left a new file's mode as asked.
        let st = fstat(&file).map_err(|e| LogError::Open {
            name: name.to_string(),
            source: io_err(e),
        })?;
        if created && st.st_mode & 0o7777 != LOG_FILE_MODE {
            set_log_mode(&file, name)?;
        }
        let size = st.st_size.unsigned_abs();
        Ok(RotatingLog {
            dir,
            name: name.to_string(),
            max_files: config.max_files.max(1),
            max_file_size: config.max_file_size.max(1),
            file: Some(file),
            index: Index::Due(st.st_ino),
            size,
            dropped: 0,
            written: 0,
        })
    }

    /// Before bytes go in at the current size: a record of `time_ns` (None:
    /// now) in the current file's index, which is made (or taken over, when
    /// it is this file's) at its first use. Nothing without a current file.
    fn mark(&mut self, time_ns: Option<i64>) {
        if self.file.is_none() {
            return;
        }
        if let Index::Due(ino) = self.index {
            self.index = IndexWriter::open(self.dir.as_fd(), &index_name(&self.name), ino)
                .map_or(Index::Off, Index::Open);
        }
        if let Index::Open(ix) = &mut self.index {
            ix.mark_at(self.size, time_ns.unwrap_or_else(index::now_ns));
        }
    }

    /// The name of the `n`th older file (`n` >= 1).
    pub fn older_name(name: &str, n: u32) -> String {
        format!("{name}.{n}")
    }

    /// Bytes lost to write errors so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Write all of `data`, rotating as needed. What cannot be written is
    /// counted as dropped; the first error of a call is returned for a warning.
    pub fn write(&mut self, data: &[u8]) -> Result<(), LogError> {
        self.write_stamped(data, None)
    }

    /// [`RotatingLog::write`] of bytes written at `time_ns` (ns since the
    /// epoch), for the index; None: now.
    pub fn write_stamped(&mut self, mut data: &[u8], time_ns: Option<i64>) -> Result<(), LogError> {
        let mut first_err = None;
        while !data.is_empty() {
            if let Err(e) = self.ensure_room() {
                // No file to write to: drop this chunk, try again next time.
                self.dropped += data.len() as u64;
                return Err(e);
            }
            let room = self.max_file_size - self.size;
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            self.mark(time_ns);
            let Some(file) = &self.file else { break };
            let at = libc::off_t::try_from(self.size).unwrap_or(libc::off_t::MAX);
            match nix::sys::uio::pwrite(file, &data[..take], at) {
                Ok(n) => {
                    self.size += n as u64;
                    self.written += n as u64;
                    data = &data[n..];
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    self.dropped += take as u64;
                    data = &data[take..];
                    first_err.get_or_insert(LogError::Write {
                        name: self.name.clone(),
                        source: io_err(e),
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Rotate first when the current file is full (or there is none).
    fn ensure_room(&mut self) -> Result<(), LogError> {
        if self.size >= self.max_file_size || self.file.is_none() {
            self.rotate()?;
        }
        Ok(())
    }

    /// Move what waits in `pipe` (non-blocking) into the log with splice(2), no
    /// copy through user memory, up to the end of the current file.
    pub fn splice_from(&mut self, pipe: BorrowedFd<'_>) -> Spliced {
        if self.ensure_room().is_err() {
            return Spliced::Unsupported;
        }
        // The record goes in before the bytes, so a reader that sees the bytes
        // sees their time. An empty pipe makes a record too, at most every
        // INDEX_EVERY: one that a later chunk at this offset still reads right.
        // But not the file's first: its index is made with its first byte,
        // and a pipe that shows none (empty, or at its end, as when a quiet
        // task exits) must not make it.
        let first_byte_unseen = matches!(self.index, Index::Due(_))
            && tend_sys::bytes_waiting(pipe).is_ok_and(|n| n == 0);
        if !first_byte_unseen {
            self.mark(None);
        }
        let room = usize::try_from(self.max_file_size - self.size).unwrap_or(usize::MAX);
        let mut at = libc::loff_t::try_from(self.size).unwrap_or(libc::loff_t::MAX);
        let flags =
            nix::fcntl::SpliceFFlags::SPLICE_F_MOVE | nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK;
        let Some(file) = &self.file else {
            return Spliced::Unsupported;
        };
        match nix::fcntl::splice(pipe, None, file, Some(&mut at), room.min(1 << 20), flags) {
            Ok(0) => Spliced::Eof,
            Ok(n) => {
                if first_byte_unseen {
                    // Bytes that came after the look: their record now, at
                    // their offset, a moment late.
                    self.mark(None);
                }
                self.size += n as u64;
                self.written += n as u64;
                Spliced::Moved(n)
            }
            Err(Errno::EAGAIN) => Spliced::Empty,
            Err(Errno::EINTR) => Spliced::Moved(0),
            // EINVAL: a file system without splice; anything else (ENOSPC): the
            // bytes stay in the pipe, for the read-and-write path that counts
            // what it must drop.
            Err(_) => Spliced::Unsupported,
        }
    }

    /// Shift the older files up by one, drop the one beyond `max_files`, move the
    /// current file to `.1` and open a new current file. Each file's index
    /// moves with it, right after it.
    pub fn rotate(&mut self) -> Result<(), LogError> {
        self.file = None;
        self.index = Index::Off;
        let dir = self.dir.as_fd();
        let remove = |name: String| match unlinkat(dir, name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(LogError::Rotate {
                name,
                source: io_err(e),
            }),
        };
        let rename = |from: String, to: String| match renameat(dir, from.as_str(), dir, to.as_str())
        {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(LogError::Rotate {
                name: from,
                source: io_err(e),
            }),
        };
        let both = |name: String| [index_name(&name), name];
        if self.max_files == 1 {
            for name in both(self.name.clone()) {
                remove(name)?;
            }
        } else {
            for name in both(Self::older_name(&self.name, self.max_files - 1)) {
                remove(name)?;
            }
            for n in (0..self.max_files - 1).rev() {
                let from = if n == 0 {
                    self.name.clone()
                } else {
                    Self::older_name(&self.name, n)
                };
                let to = Self::older_name(&self.name, n + 1);
                rename(from.clone(), to.clone())?;
                rename(index_name(&from), index_name(&to))?;
            }
        }
        // Not O_APPEND: every write says its offset, and splice(2) refuses a
        // file opened for appending.
        let file = sys::open_beneath(
            dir,
            &self.name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            LOG_FILE_MODE,
        )
        .map_err(|source| LogError::Open {
            name: self.name.clone(),
            source,
        })?;
        if !sys::umask_keeps(LOG_FILE_MODE) {
            let _ = fchmod(&file, Mode::from_bits_truncate(LOG_FILE_MODE));
        }
        self.index = fstat(&file).map_or(Index::Off, |st| Index::Due(st.st_ino));
        self.file = Some(file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dir_fd(p: &Path) -> OwnedFd {
        tend_proto::atomic::open_dir(p).unwrap()
    }

    /// The log files in `p`, their indexes left out.
    fn files(p: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(name, _)| !name.ends_with(index::INDEX_SUFFIX))
            .collect();
        v.sort();
        v
    }

    fn cfg(max_files: u32, max_file_size: u64) -> LogConfig {
        LogConfig {
            max_files,
            max_file_size,
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i % 251).unwrap()).collect()
    }

    /// Oldest first: `.N` ... `.1`, then the current file.
    fn concat(p: &Path, name: &str, max_files: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for n in (1..max_files).rev() {
            if let Ok(b) = std::fs::read(p.join(RotatingLog::older_name(name, n))) {
                out.extend(b);
            }
        }
        out.extend(std::fs::read(p.join(name)).unwrap());
        out
    }

    #[test]
    fn splits_chunks_and_keeps_every_byte_when_it_fits() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "t.stdout", cfg(5, 100)).unwrap();
        let data = pattern(450);
        for chunk in data.chunks(37) {
            log.write(chunk).unwrap();
        }
        let f = files(d.path());
        assert_eq!(
            f,
            vec![
                ("t.stdout".into(), 50),
                ("t.stdout.1".into(), 100),
                ("t.stdout.2".into(), 100),
                ("t.stdout.3".into(), 100),
                ("t.stdout.4".into(), 100),
            ]
        );
        assert_eq!(concat(d.path(), "t.stdout", 5), data);
        assert_eq!(log.written(), 450);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn drops_the_oldest_and_never_exceeds_max_files() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "t.stderr", cfg(3, 10)).unwrap();
        let data = pattern(1000);
        for chunk in data.chunks(7) {
            log.write(chunk).unwrap();
            let f = files(d.path());
            assert!(f.len() <= 3, "{f:?}");
            assert!(f.iter().all(|(_, s)| *s <= 10), "{f:?}");
        }
        // The newest 30 bytes survive, in order.
        assert_eq!(concat(d.path(), "t.stderr", 3), data[970..]);
    }

    #[test]
    fn a_size_below_one_read_is_honoured() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(100, 3)).unwrap();
        log.write(&pattern(20)).unwrap();
        let f = files(d.path());
        assert_eq!(f.len(), 7);
        assert!(f.iter().all(|(_, s)| *s <= 3));
        assert_eq!(concat(d.path(), "x", 100), pattern(20));
    }

    #[test]
    fn one_file_only_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(1, 4)).unwrap();
        log.write(b"abcdefghij").unwrap();
        assert_eq!(files(d.path()), vec![("x".into(), 2)]);
        assert_eq!(std::fs::read(d.path().join("x")).unwrap(), b"ij");
    }

    #[test]
    fn appends_to_an_existing_current_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"old-").unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 6)).unwrap();
        log.write(b"new").unwrap();
        assert_eq!(std::fs::read(d.path().join("x.1")).unwrap(), b"old-ne");
        assert_eq!(std::fs::read(d.path().join("x")).unwrap(), b"w");
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("x")).unwrap();
        let err = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 6)).unwrap_err();
        assert!(matches!(err, LogError::Open { .. }), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn new_files_are_0640() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let _log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 6)).unwrap();
        let mode = std::fs::metadata(d.path().join("x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    /// Under a umask that cuts 0640 (set through tend-sys or not) the mode is
    /// set after; under one known to keep it, it is the mode of the create.
    /// A foreign index in the way gets 0640 too. (Changes the umask: its own
    /// process under nextest.)
    #[test]
    fn new_files_and_rotated_ones_are_0640_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let umask = |m: u32| {
            nix::sys::stat::umask(Mode::from_bits_truncate(m));
        };
        let setups: [(&str, &dyn Fn()); 3] = [
            ("077, unknown", &|| umask(0o077)),
            ("077, known", &|| sys::set_umask(0o077)),
            ("022, known", &|| sys::set_umask(0o022)),
        ];
        for (what, set) in setups {
            set();
            let d = tempfile::tempdir().unwrap();
            let fd = dir_fd(d.path());
            std::fs::write(d.path().join("x.idx"), b"foreign").unwrap();
            std::fs::set_permissions(
                d.path().join("x.idx"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            let mut log = RotatingLog::open(fd.as_fd(), "x", cfg(2, 6)).unwrap();
            log.write(b"0123456789").unwrap();
            drop(open_shared_append(fd.as_fd(), "shared").unwrap());
            for name in ["x", "x.idx", "x.1", "x.1.idx", "shared"] {
                assert_eq!(mode(&d.path().join(name)), 0o640, "{what}: {name}");
            }
        }
    }

    fn marks_of(p: &Path, name: &str) -> Vec<index::Mark> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(p.join(name)).unwrap().ino();
        let bytes = std::fs::read(p.join(index::index_name(name))).unwrap();
        index::parse(&bytes, ino).expect("the index of this file")
    }

    #[test]
    fn each_file_has_its_index_and_rotation_moves_it_along() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "t.stdout", cfg(3, 10)).unwrap();
        log.write(b"0123456789abcdef").unwrap();
        std::thread::sleep(index::INDEX_EVERY * 2);
        log.write(b"gh").unwrap();
        // t.stdout.1 holds "0123456789", t.stdout "abcdefgh": the split chunk
        // starts the new file's index, the later write has a record of its own.
        let old = marks_of(d.path(), "t.stdout.1");
        assert_eq!(old.len(), 1, "{old:?}");
        assert_eq!(old[0].offset, 0);
        let cur = marks_of(d.path(), "t.stdout");
        assert_eq!(cur.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0, 6]);
        assert!(cur[0].time_ns >= old[0].time_ns);
        assert!(cur[1].time_ns - cur[0].time_ns >= 20_000_000, "{cur:?}");
        // Rotated past max_files: the index goes with its file.
        log.write(&pattern(25)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "t.stdout",
                "t.stdout.1",
                "t.stdout.1.idx",
                "t.stdout.2",
                "t.stdout.2.idx",
                "t.stdout.idx"
            ]
        );
        for name in ["t.stdout", "t.stdout.1", "t.stdout.2"] {
            let marks = marks_of(d.path(), name);
            assert_eq!(marks.first().map(|m| m.offset), Some(0), "{name}");
        }
    }

    #[test]
    fn a_file_gets_its_index_with_its_first_byte_and_not_before() {
        let d = tempfile::tempdir().unwrap();
        let idx = d.path().join("t.stdout.idx");
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "t.stdout", cfg(3, 4)).unwrap();
        assert!(d.path().join("t.stdout").exists());
        assert!(!idx.exists(), "an index before any byte");
        log.write(b"ab").unwrap();
        assert_eq!(marks_of(d.path(), "t.stdout").len(), 1);
        // A rotation with nothing after it: the new current file has no
        // index until its own first byte.
        log.write(b"cd").unwrap();
        log.rotate().unwrap();
        assert!(d.path().join("t.stdout.1.idx").exists());
        assert!(!idx.exists(), "an index of an empty new file");
        log.write(b"e").unwrap();
        assert_eq!(marks_of(d.path(), "t.stdout")[0].offset, 0);
    }

    #[test]
    fn splice_still_moves_bytes_after_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(3, 8)).unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let mut moved = Vec::new();
        // 20 bytes through files of 8: two rotations, every byte by splice.
        for chunk in pattern(20).chunks(5) {
            nix::unistd::write(&w, chunk).unwrap();
            loop {
                match log.splice_from(r.as_fd()) {
                    Spliced::Moved(n) => moved.push(n),
                    Spliced::Empty => break,
                    other => panic!("after {moved:?}: {other:?}"),
                }
            }
        }
        assert_eq!(moved.iter().sum::<usize>(), 20);
        assert_eq!(concat(d.path(), "x", 3), pattern(20));
        assert!(d.path().join("x.2").exists(), "{:?}", files(d.path()));
    }

    #[test]
    fn a_pipe_that_empties_or_closes_without_a_byte_makes_no_index() {
        let d = tempfile::tempdir().unwrap();
        let idx = d.path().join("x.idx");
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(3, 100)).unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        assert!(matches!(log.splice_from(r.as_fd()), Spliced::Empty));
        assert!(!idx.exists(), "an index for an empty pipe");
        // The first bytes: their record at offset 0, made before them.
        nix::unistd::write(&w, b"abc").unwrap();
        assert!(matches!(log.splice_from(r.as_fd()), Spliced::Moved(3)));
        let marks = marks_of(d.path(), "x");
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].offset, 0);
        // A quiet stream of another task: its end makes no index either.
        let mut quiet = RotatingLog::open(dir_fd(d.path()).as_fd(), "q", cfg(3, 100)).unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        drop(w);
        assert!(matches!(quiet.splice_from(r.as_fd()), Spliced::Eof));
        assert!(
            !d.path().join("q.idx").exists(),
            "an index for a stream that closed empty"
        );
    }

    #[test]
    fn records_are_rate_limited() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 1 << 20)).unwrap();
        for _ in 0..1000 {
            log.write(b"line\n").unwrap();
        }
        // A thousand writes within a few ms: one record, maybe two.
        assert!(marks_of(d.path(), "x").len() <= 2);
    }

    #[test]
    fn a_reopened_log_appends_to_its_index_and_a_foreign_one_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 100)).unwrap();
        log.write(b"abc").unwrap();
        drop(log);
        // A torn record at the end, as a crash mid-append leaves it.
        let idx = d.path().join("x.idx");
        let mut bytes = std::fs::read(&idx).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&idx, &bytes).unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 100)).unwrap();
        log.write(b"def").unwrap();
        let marks = marks_of(d.path(), "x");
        assert_eq!(
            marks.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![0, 3]
        );
        drop(log);
        // The log replaced under its index (no index of it): the index starts over.
        // (Made before the old one goes, so it cannot reuse its inode.)
        std::fs::write(d.path().join("x.new"), b"older\n").unwrap();
        std::fs::rename(d.path().join("x.new"), d.path().join("x")).unwrap();
        let mut log = RotatingLog::open(dir_fd(d.path()).as_fd(), "x", cfg(2, 100)).unwrap();
        log.write(b"z").unwrap();
        let marks = marks_of(d.path(), "x");
        assert_eq!(marks.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![6]);
    }
}

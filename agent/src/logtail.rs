//! Following a task's rotating log file: `<task>.<stream>` is the current file and
//! `.1`, `.2`, ... the older ones. A follower keeps its file open, so bytes written
//! just before a rotation are still read, and after a rotation it reads the files
//! that were rotated past it before it moves on to the new current file.
//!
//! A timed follower ([`LogFollower::read_pieces`]) also reads each file's time
//! index (kept open beside its file, read as it grows), for `--since` and `--all`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tend_logs::index::{self, Mark};
use tend_proto::names;

use crate::loglines::Piece;

/// Follows one stream of one task.
#[derive(Debug)]
pub struct LogFollower {
    dir: PathBuf,
    base: String,
    max_files: u32,
    file: Option<Open>,
}

/// The file a follower has open.
#[derive(Debug)]
struct Open {
    file: File,
    ino: u64,
    /// Bytes of it read so far.
    pos: u64,
    /// Its index, once found.
    index: Option<IndexTail>,
}

/// A file's index, read as it grows.
#[derive(Debug)]
struct IndexTail {
    file: File,
    /// Bytes read that do not make a whole record yet.
    buf: Vec<u8>,
    /// The header was read and is this file's (else the index is ignored).
    ours: Option<bool>,
    /// Records at or after the read position.
    marks: Vec<Mark>,
    /// The last record before the read position.
    prev: Option<Mark>,
}

impl IndexTail {
    fn open(log: &Path) -> Option<IndexTail> {
        let file = File::open(index_path(log)).ok()?;
        Some(IndexTail {
            file,
            buf: Vec::new(),
            ours: None,
            marks: Vec::new(),
            prev: None,
        })
    }

    /// Read the records appended since the last call.
    fn refresh(&mut self, ino: u64) {
        if self.ours == Some(false) || self.file.read_to_end(&mut self.buf).is_err() {
            return;
        }
        if self.ours.is_none() {
            if self.buf.len() < 16 {
                return;
            }
            let ours = index::is_header_of(&self.buf[..16], ino);
            self.ours = Some(ours);
            self.buf.drain(..16);
        }
        let whole = self.buf.len() / 16 * 16;
        self.marks.extend(index::records(&self.buf[..whole]));
        self.buf.drain(..whole);
    }

    /// Time the bytes `data` read from `start`, and forget the records before
    /// their end.
    fn time(&mut self, data: Vec<u8>, start: u64, fallback: i64) -> Piece {
        let end = start + data.len() as u64;
        let piece = Piece::timed(data, start, self.prev, &self.marks, fallback);
        let cut = self.marks.partition_point(|m| m.offset < end);
        if cut > 0 {
            self.prev = Some(self.marks[cut - 1]);
            self.marks.drain(..cut);
        }
        piece
    }
}

fn index_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(index::INDEX_SUFFIX);
    PathBuf::from(p)
}

/// Last modification of `m`, ns since the epoch.
pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// The whole of the log file `path` with the times of its index (see
/// [`crate::loglines`] for bytes it does not cover); None if it is missing.
pub fn read_timed(path: &Path) -> io::Result<Option<Piece>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    let meta = f.metadata()?;
    let marks = std::fs::read(index_path(path))
        .ok()
        .and_then(|b| index::parse(&b, meta.ino()))
        .unwrap_or_default();
    Ok(Some(Piece::timed(data, 0, None, &marks, mtime_ns(&meta))))
}

impl LogFollower {
    /// Follow `<dir>/<task>.<stream>` from its start; `max_files` bounds the search
    /// for rotated files.
    pub fn new(dir: &Path, task: &str, stream: &str, max_files: u32) -> LogFollower {
        LogFollower {
            dir: dir.to_path_buf(),
            base: names::log_file(task, stream),
            max_files: max_files.max(1),
            file: None,
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join(&self.base)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}.{n}", self.base))
    }

    /// Append to `out` every byte written since the last call.
    pub fn read_available(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        for piece in self.read(false)? {
            out.extend_from_slice(&piece.data);
        }
        Ok(())
    }

    /// Every byte written since the last call, with the times of the index.
    pub fn read_pieces(&mut self) -> io::Result<Vec<Piece>> {
        self.read(true)
    }

    fn read(&mut self, timed: bool) -> io::Result<Vec<Piece>> {
        let mut pieces = Vec::new();
        loop {
            if self.file.is_none() {
                match File::open(self.current()) {
                    Ok(f) => {
                        let ino = f.metadata()?.ino();
                        self.file = Some(Open {
                            file: f,
                            ino,
                            pos: 0,
                            index: None,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(pieces),
                    Err(e) => return Err(e),
                }
            }
            let current = self.current();
            let Some(open) = self.file.as_mut() else {
                return Ok(pieces);
            };
            let mut data = Vec::new();
            open.file.read_to_end(&mut data)?;
            if !data.is_empty() {
                let start = open.pos;
                open.pos += data.len() as u64;
                if timed {
                    // The writer puts a record in before its bytes: read after
                    // them, the index has theirs.
                    if open.index.is_none() {
                        open.index = IndexTail::open(&current);
                    }
                    let fallback = mtime_ns(&open.file.metadata()?);
                    pieces.push(match open.index.as_mut() {
                        Some(ix) => {
                            ix.refresh(open.ino);
                            ix.time(data, start, fallback)
                        }
                        None => Piece::timed(data, start, None, &[], fallback),
                    });
                } else {
                    pieces.push(Piece {
                        data,
                        ..Piece::default()
                    });
                }
            }
            let ino = open.ino;
            match std::fs::metadata(&current) {
                Ok(m) if m.ino() == ino => return Ok(pieces),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // Rotated: our file is now `.k` (or gone); the files newer than it come
            // first, oldest to newest, then the new current file.
            let k = (1..=self.max_files)
                .find(|n| std::fs::metadata(self.rotated(*n)).is_ok_and(|m| m.ino() == ino));
            if let Some(k) = k {
                for j in (1..k).rev() {
                    let path = self.rotated(j);
                    if timed {
                        pieces.extend(read_timed(&path)?);
                        continue;
                    }
                    match File::open(path) {
                        Ok(mut f) => {
                            let mut data = Vec::new();
                            f.read_to_end(&mut data)?;
                            pieces.push(Piece {
                                data,
                                ..Piece::default()
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            self.file = None;
            if !self.current().exists() {
                return Ok(pieces);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join("t.stdout");
        let mut f = LogFollower::new(dir.path(), "t", "stdout", 5);
        let mut out = Vec::new();
        f.read_available(&mut out).unwrap();
        assert!(out.is_empty());
        std::fs::write(&cur, b"one ").unwrap();
        f.read_available(&mut out).unwrap();
        // Two rotations before the follower looks again.
        let mut w = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
        w.write_all(b"two ").unwrap();
        std::fs::rename(&cur, dir.path().join("t.stdout.1")).unwrap();
        std::fs::write(&cur, b"three ").unwrap();
        std::fs::rename(dir.path().join("t.stdout.1"), dir.path().join("t.stdout.2")).unwrap();
        std::fs::rename(&cur, dir.path().join("t.stdout.1")).unwrap();
        std::fs::write(&cur, b"four").unwrap();
        f.read_available(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one two three four");
    }

    #[test]
    fn a_timed_follower_reads_the_times_of_the_writer() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let fd = tend_proto::atomic::open_dir(dir.path()).unwrap();
        let cfg = tend_proto::config::LogConfig {
            max_files: 3,
            max_file_size: 12,
        };
        let mut log = tend_logs::RotatingLog::open(fd.as_fd(), "t.stdout", cfg).unwrap();
        let mut f = LogFollower::new(dir.path(), "t", "stdout", 3);
        let before = index::now_ns();
        log.write(b"one\n").unwrap();
        let first = f.read_pieces().unwrap();
        std::thread::sleep(index::INDEX_EVERY * 3);
        let middle = index::now_ns();
        // Into the next file too: "two\nthree\n" splits at 12 bytes.
        log.write(b"two\nthree\n").unwrap();
        let second = f.read_pieces().unwrap();
        let mut s = crate::loglines::LineSplitter::new(false);
        let mut lines = Vec::new();
        for p in first.iter().chain(&second) {
            s.feed(p, &mut lines);
        }
        let got: Vec<(bool, String)> = lines
            .iter()
            .map(|l| {
                (
                    l.time_ns >= middle,
                    String::from_utf8_lossy(&l.bytes).into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (false, "one\n".into()),
                (true, "two\n".into()),
                (true, "three\n".into())
            ]
        );
        assert!(lines[0].time_ns >= before);
    }
}

//! The time index beside a log file: `<file>.idx` (`t.stdout.idx` beside
//! `t.stdout`, `t.stdout.1.idx` beside `t.stdout.1`), rotated with its file.
//! The log file stays the bytes the task wrote, nothing added.
//!
//! Layout, little-endian: a 16-byte header, the magic `tendidx1` then the inode
//! of the log file it indexes (so an index that does not belong to the file
//! beside it, after a crash halfway through a rotation, is known as such), then
//! 16-byte records `(wall-clock ns, byte offset)`: the bytes of the file from
//! `offset` on were written at or after that time. A record is appended before
//! a write at most every [`INDEX_EVERY`], and always before the first write into
//! a file after it is opened, so a chunk without a record of its own was
//! written less than [`INDEX_EVERY`] after the record before it: that is the
//! index's granularity. A torn last record (a crash mid-append) is ignored.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::stat::{fchmod, fstat, Mode};

use tend_sys as sys;

use crate::LOG_FILE_MODE;

/// How the name of a log file's index ends.
pub const INDEX_SUFFIX: &str = ".idx";
/// The first 8 bytes of every index.
pub const MAGIC: [u8; 8] = *b"tendidx1";
/// Bytes of the header: the magic, the log file's inode.
pub const HEADER_LEN: u64 = 16;
/// Bytes of one record: time (ns since the epoch), offset.
pub const RECORD_LEN: u64 = 16;
/// At most one record per this long (but always one at a file's first write):
/// at most 50 records (800 bytes) a second per stream under a steady trickle.
pub const INDEX_EVERY: Duration = Duration::from_millis(20);

/// The index of the log file `log_name`.
pub fn index_name(log_name: &str) -> String {
    format!("{log_name}{INDEX_SUFFIX}")
}

/// One record: the bytes from `offset` on were written at or after `time_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Wall-clock nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Byte offset in the log file.
    pub offset: u64,
}

impl Mark {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.time_ns.to_le_bytes());
        b[8..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }
}

/// Wall-clock nanoseconds now (clock_gettime through the vDSO: no syscall).
pub fn now_ns() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The header of the index of the file with inode `ino`.
fn header(ino: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&MAGIC);
    b[8..].copy_from_slice(&ino.to_le_bytes());
    b
}

/// Whether `head` (an index's first 16 bytes) is the header of the index of the
/// file with inode `ino`.
pub fn is_header_of(head: &[u8], ino: u64) -> bool {
    head == header(ino)
}

/// The whole records in `bytes` (what follows the header), in order; a torn
/// last record is left out.
pub fn records(bytes: &[u8]) -> Vec<Mark> {
    bytes
        .chunks_exact(16)
        .map(|r| {
            let mut t = [0u8; 8];
            let mut o = [0u8; 8];
            t.copy_from_slice(&r[..8]);
            o.copy_from_slice(&r[8..]);
            Mark {
                time_ns: i64::from_le_bytes(t),
                offset: u64::from_le_bytes(o),
            }
        })
        .collect()
}

/// The records of an index read whole, if it is the index of the file with
/// inode `ino`: None for a foreign or malformed one. Records whose offset goes
/// backwards are dropped (they cannot come from the one writer).
pub fn parse(bytes: &[u8], ino: u64) -> Option<Vec<Mark>> {
    if !is_header_of(bytes.get(..16)?, ino) {
        return None;
    }
    let mut out: Vec<Mark> = Vec::with_capacity((bytes.len() - 16) / 16);
    for m in records(&bytes[16..]) {
        if out.last().is_none_or(|l| m.offset >= l.offset) {
            out.push(m);
        }
    }
    Some(out)
}

/// The writer of one log file's index.
#[derive(Debug)]
pub struct IndexWriter {
    fd: OwnedFd,
    size: u64,
    last: Option<i64>,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl IndexWriter {
    /// Open the index `name` in `dir` of the log file with inode `ino`,
    /// appending to it when it is that file's; otherwise (missing, foreign,
    /// torn header) start it over.
    pub fn open(dir: BorrowedFd<'_>, name: &str, ino: u64) -> io::Result<IndexWriter> {
        let fd = sys::open_beneath(dir, name, libc::O_RDWR | libc::O_CREAT, LOG_FILE_MODE)?;
        let st = fstat(&fd).map_err(io_err)?;
        let len = st.st_size.unsigned_abs();
        let mut head = [0u8; 16];
        let ours = len >= HEADER_LEN
            && nix::sys::uio::pread(&fd, &mut head, 0).is_ok_and(|n| n == 16)
            && head == header(ino);
        let size = if ours {
            HEADER_LEN + (len - HEADER_LEN) / RECORD_LEN * RECORD_LEN
        } else {
            // The umask may have cut the mode of a new file, a foreign one
            // may have any: set it exactly where it is not.
            if st.st_mode & 0o7777 != LOG_FILE_MODE {
                fchmod(&fd, Mode::from_bits_truncate(LOG_FILE_MODE)).map_err(io_err)?;
            }
            if len > 0 {
                nix::unistd::ftruncate(&fd, 0).map_err(io_err)?;
            }
            write_all_at(&fd, &header(ino), 0)?;
            HEADER_LEN
        };
        Ok(IndexWriter {
            fd,
            size,
            last: None,
        })
    }

    /// Before a write at `offset` of bytes written at `now` (ns since the
    /// epoch: the clock, or a container engine's stamp of the message, which
    /// a copy may write much later): a record, unless one was made less than
    /// [`INDEX_EVERY`] ago. One 16-byte pwrite when due. A failed append is
    /// not retried: the bytes keep the time of the record before, and the log
    /// itself is never held up by its index.
    pub fn mark_at(&mut self, offset: u64, now: i64) {
        let every = i64::try_from(INDEX_EVERY.as_nanos()).unwrap_or(i64::MAX);
        // A clock stepped back also makes a record.
        if self.last.is_some_and(|l| now >= l && now - l < every) {
            return;
        }
        self.last = Some(now);
        let rec = Mark {
            time_ns: now,
            offset,
        }
        .to_bytes();
        if write_all_at(&self.fd, &rec, self.size).is_ok() {
            self.size += RECORD_LEN;
        }
    }
}

fn write_all_at(fd: &OwnedFd, mut data: &[u8], mut at: u64) -> io::Result<()> {
    while !data.is_empty() {
        let off = libc::off_t::try_from(at).unwrap_or(libc::off_t::MAX);
        match nix::sys::uio::pwrite(fd, data, off) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                data = &data[n..];
                at += n as u64;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(())
}

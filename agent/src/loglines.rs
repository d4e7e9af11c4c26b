//! A task's log as lines with the time each was written: what `--since` and
//! `--all` read. The times come from the index tend-logs keeps beside each log
//! file ([`tend_logs::index`]); a line's time is the time of its first byte.
//!
//! A byte's time is the time of the last index record at or before it: exact
//! where the writer made a record for its chunk, else up to
//! [`tend_logs::index::INDEX_EVERY`] early. Bytes before a file's first record
//! (a file written by a tend without the index, or the part of it written
//! before an upgrade) take an upper bound instead: the time of the first record
//! after them, else the file's last modification. So `--since` never leaves out
//! a line written at or after its time; of an unindexed file it shows every
//! line unless the file was last modified before that time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tend_logs::index::Mark;

/// Bytes read from one log file in one go, with their times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    /// The bytes.
    pub data: Vec<u8>,
    /// `(position in data, ns)`: the bytes from the position on were written at
    /// or after the time. Positions ascending.
    pub marks: Vec<(usize, i64)>,
    /// The time of the bytes before the first mark.
    pub before: i64,
}

impl Piece {
    /// `data`, read from offset `start` of a file whose index records are
    /// `marks` (ascending offsets); `prev` is a record known to be at or before
    /// `start` when `marks` holds none; `fallback` the file's last modification.
    pub fn timed(
        data: Vec<u8>,
        start: u64,
        prev: Option<Mark>,
        marks: &[Mark],
        fallback: i64,
    ) -> Piece {
        let end = start + data.len() as u64;
        let prev = marks
            .iter()
            .take_while(|m| m.offset <= start)
            .last()
            .copied()
            .or(prev);
        let inside: Vec<(usize, i64)> = marks
            .iter()
            .filter(|m| m.offset > start && m.offset < end)
            .map(|m| {
                (
                    usize::try_from(m.offset - start).unwrap_or(usize::MAX),
                    m.time_ns,
                )
            })
            .collect();
        let before = match (prev, inside.first()) {
            (Some(p), _) => p.time_ns,
            (None, Some((_, t))) => *t,
            (None, None) => fallback,
        };
        Piece {
            data,
            marks: inside,
            before,
        }
    }

    /// The time of the byte at `pos`.
    fn time_at(&self, pos: usize) -> i64 {
        match self.marks.partition_point(|(p, _)| *p <= pos) {
            0 => self.before,
            i => self.marks[i - 1].1,
        }
    }
}

/// One line and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedLine {
    /// When its first byte was written, ns since the epoch.
    pub time_ns: i64,
    /// Its bytes, the newline included (none on a last, unfinished line).
    pub bytes: Vec<u8>,
    /// Which stream: false stdout, true stderr.
    pub stderr: bool,
}

/// Cuts one stream's pieces into lines, holding an unfinished line until its
/// newline (or [`LineSplitter::finish`]).
#[derive(Debug, Default)]
pub struct LineSplitter {
    stderr: bool,
    partial: Vec<u8>,
    partial_time: Option<i64>,
}

impl LineSplitter {
    /// A splitter for stdout (`stderr` false) or stderr.
    pub fn new(stderr: bool) -> LineSplitter {
        LineSplitter {
            stderr,
            ..LineSplitter::default()
        }
    }

    /// The whole lines `piece` completes.
    pub fn feed(&mut self, piece: &Piece, out: &mut Vec<TimedLine>) {
        let mut from = 0;
        while from < piece.data.len() {
            let time = *self.partial_time.get_or_insert_with(|| piece.time_at(from));
            let Some(nl) = piece.data[from..].iter().position(|b| *b == b'\n') else {
                self.partial.extend_from_slice(&piece.data[from..]);
                return;
            };
            let mut bytes = std::mem::take(&mut self.partial);
            bytes.extend_from_slice(&piece.data[from..=from + nl]);
            self.partial_time = None;
            out.push(TimedLine {
                time_ns: time,
                bytes,
                stderr: self.stderr,
            });
            from += nl + 1;
        }
    }

    /// The unfinished last line, if any.
    pub fn finish(&mut self, out: &mut Vec<TimedLine>) {
        if let Some(time) = self.partial_time.take() {
            out.push(TimedLine {
                time_ns: time,
                bytes: std::mem::take(&mut self.partial),
                stderr: self.stderr,
            });
        }
    }
}

/// Two streams' lines in the order they were written (each stream's own order
/// kept; on equal times stdout first).
pub fn merge(out: Vec<TimedLine>, err: Vec<TimedLine>) -> Vec<TimedLine> {
    let mut merged = Vec::with_capacity(out.len() + err.len());
    let mut out = out.into_iter().peekable();
    let mut err = err.into_iter().peekable();
    loop {
        let take_out = match (out.peek(), err.peek()) {
            (Some(o), Some(e)) => o.time_ns <= e.time_ns,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        let next = if take_out { out.next() } else { err.next() };
        merged.extend(next);
    }
}

/// What `since=` takes, for error messages.
pub const SINCE_FORM: &str =
    "a duration back from now such as \"10m\" or \"2h\", or an RFC 3339 UTC time such as \"2026-12-03T08:00:00Z\"";

/// `since`: a duration back from `now`, or an RFC 3339 UTC timestamp; as ns
/// since the epoch.
pub fn parse_since(s: &str, now: SystemTime) -> Option<i64> {
    let at = match crate::jobspec::duration::parse_duration(s) {
        Some(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
        None => tend_proto::time::parse_rfc3339(s)?,
    };
    let d = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Some(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `ns` since the epoch as RFC 3339 (microseconds, UTC).
pub fn rfc3339_ns(ns: i64) -> String {
    let d = Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    tend_proto::time::rfc3339(UNIX_EPOCH + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(time_ns: i64, offset: u64) -> Mark {
        Mark { time_ns, offset }
    }

    fn lines(p: &[Piece], stderr: bool) -> Vec<(i64, String)> {
        let mut s = LineSplitter::new(stderr);
        let mut out = Vec::new();
        for piece in p {
            s.feed(piece, &mut out);
        }
        s.finish(&mut out);
        out.into_iter()
            .map(|l| (l.time_ns, String::from_utf8(l.bytes).unwrap()))
            .collect()
    }

    #[test]
    fn a_line_takes_the_time_of_its_first_byte() {
        let marks = [mark(10, 0), mark(20, 4), mark(30, 8)];
        let p = Piece::timed(b"one\ntwo\nthree\n".to_vec(), 0, None, &marks, 99);
        assert_eq!(
            lines(&[p], false),
            vec![
                (10, "one\n".into()),
                (20, "two\n".into()),
                (30, "three\n".into())
            ]
        );
        // A line cut across two reads keeps the time of its start.
        let a = Piece::timed(b"tw".to_vec(), 4, None, &marks, 99);
        let b = Piece::timed(b"o\nthree".to_vec(), 6, Some(mark(20, 4)), &marks, 99);
        assert_eq!(
            lines(&[a, b], false),
            vec![(20, "two\n".into()), (30, "three".into())]
        );
    }

    #[test]
    fn bytes_before_the_first_record_take_an_upper_bound() {
        // An index begun after the file: the old bytes take the first record's time.
        let p = Piece::timed(b"old\nnew\n".to_vec(), 0, None, &[mark(50, 4)], 99);
        assert_eq!(
            lines(&[p], false),
            vec![(50, "old\n".into()), (50, "new\n".into())]
        );
        // No index at all: the file's last modification.
        let p = Piece::timed(b"x\n".to_vec(), 0, None, &[], 99);
        assert_eq!(lines(&[p], false), vec![(99, "x\n".into())]);
    }

    #[test]
    fn streams_merge_by_time_each_in_its_own_order() {
        let out = Piece::timed(b"o1\no2\n".to_vec(), 0, None, &[mark(1, 0), mark(5, 3)], 0);
        let err = Piece::timed(b"e1\ne2\n".to_vec(), 0, None, &[mark(3, 0), mark(5, 3)], 0);
        let mut so = LineSplitter::new(false);
        let mut se = LineSplitter::new(true);
        let (mut o, mut e) = (Vec::new(), Vec::new());
        so.feed(&out, &mut o);
        se.feed(&err, &mut e);
        let m: Vec<(bool, String)> = merge(o, e)
            .into_iter()
            .map(|l| (l.stderr, String::from_utf8(l.bytes).unwrap()))
            .collect();
        assert_eq!(
            m,
            vec![
                (false, "o1\n".into()),
                (true, "e1\n".into()),
                (false, "o2\n".into()),
                (true, "e2\n".into()),
            ]
        );
    }

    #[test]
    fn since_takes_a_duration_or_a_utc_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("10m", now), Some(999_400 * 1_000_000_000));
        assert_eq!(
            parse_since("2026-12-03T08:00:00Z", now),
            Some(1_796_284_800 * 1_000_000_000)
        );
        assert_eq!(parse_since("yesterday", now), None);
        assert_eq!(
            rfc3339_ns(1_796_284_800_000_001_000),
            "2026-12-03T08:00:00.000001Z"
        );
    }
}

//! Copying a container's stdout and stderr into the alloc's rotating log files.
//!
//! The copy follows the engine's log stream (`follow=true`) until the container
//! ends, with `timestamps=true`: every message comes with the engine's timestamp,
//! which is stripped before the message is written. The timestamps of the last
//! message written of each stream are the copy's cursor ([`LogCursor`]: one per
//! stream, since the engine stamps each stream on its own and does not send the
//! two in time order), stored in `<alloc_dir>/<task>_docker_log_cursor`. On
//! reattach the caller passes it back as `since` ([`read_cursor`]): the engine is
//! asked for the messages from the earlier of the two seconds on (its `since` has
//! whole seconds), and those at or before their stream's cursor are skipped, so
//! nothing is copied twice and nothing after the cursor is lost. A first copy
//! passes no cursor and gets the container's whole log, from its start.
//!
//! The cursor is stored (atomically, so fsync'd) at most every 200 ms while
//! messages flow, and when the stream ends: an agent killed in between copies
//! those last 200 ms again on reattach. Nothing is lost either way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures_util::{FutureExt, StreamExt};

use super::{stamp, DockerError};
use crate::jobspec::LogSpec;
use std::os::fd::AsFd;

use crate::paths::AllocDir;
use tend_logs::RotatingLog;
use tend_proto::config::LogConfig;

/// Where the copy of a task's container logs keeps its cursor.
pub fn cursor_path(alloc: &AllocDir, task: &str) -> PathBuf {
    alloc.root.join(format!(
        "{task}{}",
        tend_proto::names::DOCKER_LOG_CURSOR_SUFFIX
    ))
}

/// How far a log copy got: the engine timestamp (Unix nanoseconds) of the last
/// message written of each stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCursor {
    /// The last stdout message written.
    pub stdout: Option<i64>,
    /// The last stderr message written.
    pub stderr: Option<i64>,
}

impl LogCursor {
    /// The file's text: `stdout=N stderr=N`, `-` for a stream with nothing yet.
    fn to_text(self) -> String {
        let f = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        format!("stdout={} stderr={}\n", f(self.stdout), f(self.stderr))
    }

    fn parse(text: &str) -> Option<LogCursor> {
        let mut c = LogCursor::default();
        for part in text.split_whitespace() {
            let (k, v) = part.split_once('=')?;
            let v = if v == "-" {
                None
            } else {
                Some(v.parse().ok()?)
            };
            match k {
                "stdout" => c.stdout = v,
                "stderr" => c.stderr = v,
                _ => return None,
            }
        }
        Some(c)
    }

    /// The engine's `since`: whole seconds, the earlier stream's.
    fn since_secs(self) -> i32 {
        let first = match (self.stdout, self.stderr) {
            // A stream with nothing copied yet needs the log from its start.
            (Some(a), Some(b)) => a.min(b),
            _ => return 0,
        };
        i32::try_from(first.div_euclid(1_000_000_000)).unwrap_or(i32::MAX)
    }
}

/// The stored cursor of a task's log copy: pass it as `since` when copying again.
pub fn read_cursor(alloc: &AllocDir, task: &str) -> Option<LogCursor> {
    LogCursor::parse(&std::fs::read_to_string(cursor_path(alloc, task)).ok()?)
}

/// How often at most the cursor is stored while messages flow (and once at the end).
const CURSOR_EVERY: Duration = Duration::from_millis(200);

fn store_cursor(path: &Path, cursor: LogCursor) -> Result<(), DockerError> {
    tend_proto::atomic::write(path, cursor.to_text().as_bytes(), 0o644).map_err(|source| {
        DockerError::Cursor {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Split the engine's `<RFC 3339 nano> ` prefix off a message.
fn split_stamp(msg: &[u8]) -> (Option<i64>, &[u8]) {
    let head = &msg[..msg.len().min(48)];
    if let Some(sp) = head.iter().position(|b| *b == b' ') {
        if let Some(ts) = std::str::from_utf8(&msg[..sp])
            .ok()
            .and_then(stamp::parse_nanos)
        {
            return (Some(ts), &msg[sp + 1..]);
        }
    }
    (None, msg)
}

/// Open the rotating log of one stream, with the same rules as tend-spawn's:
/// one writer, shared by every driver.
fn open_log(
    dir: &std::path::Path,
    task: &str,
    stream: &str,
    logs: LogSpec,
) -> Result<RotatingLog, DockerError> {
    let fd = std::fs::File::open(dir).map_err(|source| {
        DockerError::Log(tend_logs::LogError::Open {
            name: dir.display().to_string(),
            source,
        })
    })?;
    RotatingLog::open(
        fd.as_fd(),
        &tend_proto::names::log_file(task, stream),
        LogConfig {
            max_files: logs.max_files,
            max_file_size: logs.max_file_size_mb.saturating_mul(1024 * 1024),
        },
    )
    .map_err(DockerError::Log)
}

struct Copier {
    stdout: RotatingLog,
    stderr: RotatingLog,
    since: LogCursor,
    cursor: LogCursor,
}

impl Copier {
    fn message(&mut self, out: LogOutput) -> Result<(), DockerError> {
        let (to_stderr, msg) = match &out {
            LogOutput::StdErr { message } => (true, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => (false, message),
            LogOutput::StdIn { .. } => return Ok(()),
        };
        let (ts, body) = split_stamp(msg);
        let (since, cursor, w) = if to_stderr {
            (self.since.stderr, &mut self.cursor.stderr, &mut self.stderr)
        } else {
            (self.since.stdout, &mut self.cursor.stdout, &mut self.stdout)
        };
        if let Some(ts) = ts {
            if since.is_some_and(|s| ts <= s) {
                return Ok(());
            }
            *cursor = Some(ts);
        }
        // A full disk must not stop the copy: the bytes are counted as dropped.
        // The engine's stamp is when the container wrote them: the index's time.
        if let Err(e) = w.write_stamped(body, ts) {
            tracing::warn!(error = %e, dropped = w.dropped(), "container log bytes dropped");
        }
        Ok(())
    }
}

/// Copy the logs of container `id` until it ends (see the module's doc).
pub async fn copy(
    docker: Docker,
    id: String,
    alloc: AllocDir,
    task: String,
    logs: LogSpec,
    since: Option<LogCursor>,
) -> Result<(), DockerError> {
    let since = since.unwrap_or_default();
    let dir = alloc.logs();
    let mut c = Copier {
        stdout: open_log(&dir, &task, "stdout", logs)?,
        stderr: open_log(&dir, &task, "stderr", logs)?,
        since,
        cursor: since,
    };
    let since_secs = since.since_secs();
    let opts = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since_secs)
        .build();
    let mut stream = docker.logs(&id, Some(opts));
    let cursor_file = cursor_path(&alloc, &task);
    let mut stored = since;
    let mut last_store = Instant::now();
    let engine = |e| DockerError::engine("read the logs of", &id, e);
    while let Some(item) = stream.next().await {
        c.message(item.map_err(engine)?)?;
        // Whatever else is ready joins this batch; the cursor is stored once per batch.
        while let Some(Some(item)) = stream.next().now_or_never() {
            c.message(item.map_err(engine)?)?;
        }
        if c.cursor != stored && last_store.elapsed() >= CURSOR_EVERY {
            store_cursor(&cursor_file, c.cursor)?;
            stored = c.cursor;
            last_store = Instant::now();
        }
    }
    if c.cursor != stored {
        store_cursor(&cursor_file, c.cursor)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_split_off_and_plain_messages_kept() {
        let (ts, body) = split_stamp(b"2026-11-28T18:05:53.362009318Z hello world\n");
        assert_eq!(ts, Some(1_795_889_153_362_009_318));
        assert_eq!(body, b"hello world\n");
        let (ts, body) = split_stamp(b"no stamp here\n");
        assert_eq!(ts, None);
        assert_eq!(body, b"no stamp here\n");
    }

    #[test]
    fn messages_at_or_before_the_cursor_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Copier {
            stdout: open_log(
                d.path(),
                "t",
                "stdout",
                LogSpec {
                    max_files: 2,
                    max_file_size_mb: 1,
                },
            )
            .unwrap(),
            stderr: open_log(
                d.path(),
                "t",
                "stderr",
                LogSpec {
                    max_files: 2,
                    max_file_size_mb: 1,
                },
            )
            .unwrap(),
            since: LogCursor {
                stdout: Some(1_795_889_153_000_000_002),
                stderr: Some(1_795_889_155_000_000_000),
            },
            cursor: LogCursor::default(),
        };
        for (n, line) in [(1, "old\n"), (2, "last copied\n"), (3, "new\n")] {
            let msg = format!("2026-11-28T18:05:53.00000000{n}Z {line}");
            c.message(LogOutput::StdOut {
                message: msg.into_bytes().into(),
            })
            .unwrap();
        }
        // The streams are cut apart: an older stderr message is still skipped.
        for (stamp, line) in [("54", "old err\n"), ("56", "err\n")] {
            c.message(LogOutput::StdErr {
                message: format!("2026-11-28T18:05:{stamp}Z {line}")
                    .into_bytes()
                    .into(),
            })
            .unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("t.stdout")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("t.stderr")).unwrap(),
            "err\n"
        );
        assert_eq!(
            c.cursor,
            LogCursor {
                stdout: Some(1_795_889_153_000_000_003),
                stderr: Some(1_795_889_156_000_000_000),
            }
        );
    }

    #[test]
    fn cursors_round_trip_and_since_takes_the_earlier_stream() {
        let c = LogCursor {
            stdout: Some(5_000_000_000),
            stderr: None,
        };
        assert_eq!(LogCursor::parse(&c.to_text()), Some(c));
        assert_eq!(c.since_secs(), 0);
        let c = LogCursor {
            stdout: Some(5_500_000_000),
            stderr: Some(3_200_000_000),
        };
        assert_eq!(LogCursor::parse(&c.to_text()), Some(c));
        assert_eq!(c.since_secs(), 3);
        assert_eq!(LogCursor::parse("garbage"), None);
    }
}

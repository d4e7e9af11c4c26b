//! The exit status file, `<alloc_dir>/<task>_exit_status`: pretty JSON, one object,
//! mode 0644, written atomically. It is read by the agent after a restart and by
//! people at 3 a.m.; a missing or unreadable file means "unknown", never 0.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::{self, AtomicError};

/// The format version written in every exit status file.
pub const EXIT_STATUS_VERSION: u32 = 1;

/// How one run of a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Format version, [`EXIT_STATUS_VERSION`].
    pub version: u32,
    /// The allocation.
    pub alloc_id: String,
    /// The task.
    pub task: String,
    /// Which start of the task this was, from 1.
    pub run: u32,
    /// Pid of the task's main process; null when it never started.
    pub pid: Option<i32>,
    /// The raw status from wait(2); null when it never started.
    pub wait_status: Option<i32>,
    /// The exit code; null when a signal ended it or it never started.
    pub exit_code: Option<i32>,
    /// The signal that ended it; null when it exited.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
    /// Whether the kernel's OOM killer ended it (counter moved and SIGKILL).
    pub oom_killed: bool,
    /// How many processes the kernel's OOM killer killed in the task's cgroup
    /// during this run, the task or any process of it (0 in files written before
    /// the field, and without a memory cgroup).
    #[serde(default)]
    pub oom_kills: u64,
    /// When it started (RFC 3339); null when it never started.
    pub started_at: Option<String>,
    /// When its end was seen (RFC 3339).
    pub finished_at: String,
    /// Why it never started, or what went wrong around it.
    pub error: Option<String>,
}

/// An exit as protocol version 1 carries it ([`crate::Response::Exited`],
/// [`crate::msg::Status`]): the fields of the first exit status file. Frozen:
/// the wire only grows, so a field added to [`ExitStatus`] travels beside it in
/// a new variant ([`crate::Response::ExitedWithOomKills`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatusV1 {
    /// [`ExitStatus::version`].
    pub version: u32,
    /// [`ExitStatus::alloc_id`].
    pub alloc_id: String,
    /// [`ExitStatus::task`].
    pub task: String,
    /// [`ExitStatus::run`].
    pub run: u32,
    /// [`ExitStatus::pid`].
    pub pid: Option<i32>,
    /// [`ExitStatus::wait_status`].
    pub wait_status: Option<i32>,
    /// [`ExitStatus::exit_code`].
    pub exit_code: Option<i32>,
    /// [`ExitStatus::signal`].
    pub signal: Option<i32>,
    /// [`ExitStatus::core_dumped`].
    pub core_dumped: bool,
    /// [`ExitStatus::oom_killed`].
    pub oom_killed: bool,
    /// [`ExitStatus::started_at`].
    pub started_at: Option<String>,
    /// [`ExitStatus::finished_at`].
    pub finished_at: String,
    /// [`ExitStatus::error`].
    pub error: Option<String>,
}

impl From<&ExitStatus> for ExitStatusV1 {
    fn from(e: &ExitStatus) -> ExitStatusV1 {
        ExitStatusV1 {
            version: e.version,
            alloc_id: e.alloc_id.clone(),
            task: e.task.clone(),
            run: e.run,
            pid: e.pid,
            wait_status: e.wait_status,
            exit_code: e.exit_code,
            signal: e.signal,
            core_dumped: e.core_dumped,
            oom_killed: e.oom_killed,
            started_at: e.started_at.clone(),
            finished_at: e.finished_at.clone(),
            error: e.error.clone(),
        }
    }
}

impl ExitStatusV1 {
    /// The whole exit, with the OOM kill count that travelled beside it (0 from
    /// a daemon that sends [`crate::Response::Exited`]: it did not count them).
    pub fn with_oom_kills(self, oom_kills: u64) -> ExitStatus {
        ExitStatus {
            version: self.version,
            alloc_id: self.alloc_id,
            task: self.task,
            run: self.run,
            pid: self.pid,
            wait_status: self.wait_status,
            exit_code: self.exit_code,
            signal: self.signal,
            core_dumped: self.core_dumped,
            oom_killed: self.oom_killed,
            oom_kills,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error: self.error,
        }
    }
}

/// Why an exit status file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExitFileError {
    /// There is no file: the exit is unknown.
    #[error("exit status file {path}: not found")]
    NotFound {
        /// The path.
        path: String,
    },
    /// The file could not be read.
    #[error("exit status file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The file is not a valid exit status.
    #[error("exit status file {path}: {reason}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] AtomicError),
}

/// What a raw wait status says, decoded without libc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStatus {
    /// Exit code if the process exited.
    pub exit_code: Option<i32>,
    /// Signal if a signal ended it.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
}

impl WaitStatus {
    /// Decode a raw wait(2) status of a process that has ended.
    pub fn decode(raw: i32) -> WaitStatus {
        let sig = raw & 0x7f;
        if sig == 0 {
            WaitStatus {
                exit_code: Some((raw >> 8) & 0xff),
                signal: None,
                core_dumped: false,
            }
        } else {
            WaitStatus {
                exit_code: None,
                signal: Some(sig),
                core_dumped: raw & 0x80 != 0,
            }
        }
    }
}

impl ExitStatus {
    /// The exit of a task that ran, from its raw wait status.
    pub fn from_wait(
        alloc_id: &str,
        task: &str,
        run: u32,
        pid: i32,
        wait_status: i32,
        started_at: String,
        finished_at: String,
    ) -> ExitStatus {
        let w = WaitStatus::decode(wait_status);
        ExitStatus {
            version: EXIT_STATUS_VERSION,
            alloc_id: alloc_id.to_string(),
            task: task.to_string(),
            run,
            pid: Some(pid),
            wait_status: Some(wait_status),
            exit_code: w.exit_code,
            signal: w.signal,
            core_dumped: w.core_dumped,
            oom_killed: false,
            oom_kills: 0,
            started_at: Some(started_at),
            finished_at,
            error: None,
        }
    }

    /// The exit of a task that never started.
    pub fn never_started(alloc_id: &str, task: &str, run: u32, error: String) -> ExitStatus {
        ExitStatus {
            version: EXIT_STATUS_VERSION,
            alloc_id: alloc_id.to_string(),
            task: task.to_string(),
            run,
            pid: None,
            wait_status: None,
            exit_code: None,
            signal: None,
            core_dumped: false,
            oom_killed: false,
            oom_kills: 0,
            started_at: None,
            finished_at: crate::time::now(),
            error: Some(error),
        }
    }

    /// The code a shell would report: the exit code, 128+N for signal N, and 1 for a
    /// task that never started or whose end is unknown.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        }
    }

    /// Whether the task ran and exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.error.is_none()
    }

    /// The file's bytes: pretty JSON and a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parse and check the file's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<ExitStatus, String> {
        let s: ExitStatus = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.version == 0 || s.version > EXIT_STATUS_VERSION {
            return Err(format!("unsupported version {}", s.version));
        }
        if s.exit_code.is_some() && s.signal.is_some() {
            return Err("both exit_code and signal are set".to_string());
        }
        Ok(s)
    }

    /// Write atomically into the dir `dir` under `name`, mode 0644.
    pub fn write_at<D: AsFd>(&self, dir: D, name: &str) -> Result<(), ExitFileError> {
        atomic::write_at(dir, name, &self.to_json(), 0o644)?;
        Ok(())
    }

    /// Put the file in place under `name` in `dir` for every reader, mode 0644,
    /// leaving the fsyncs to [`atomic::Pending::sync`] (see
    /// [`atomic::write_at_deferred`]).
    pub fn write_at_deferred<D: AsFd>(
        &self,
        dir: D,
        name: &str,
    ) -> Result<atomic::Pending, ExitFileError> {
        Ok(atomic::write_at_deferred(
            dir,
            name,
            &self.to_json(),
            0o644,
        )?)
    }

    /// Write atomically to `path`, mode 0644.
    pub fn write(&self, path: &Path) -> Result<(), ExitFileError> {
        atomic::write(path, &self.to_json(), 0o644)?;
        Ok(())
    }

    /// Read and check the file at `path`.
    pub fn read(path: &Path) -> Result<ExitStatus, ExitFileError> {
        let shown = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ExitFileError::NotFound { path: shown })
            }
            Err(source) => {
                return Err(ExitFileError::Read {
                    path: shown,
                    source,
                })
            }
        };
        ExitStatus::from_json(&bytes).map_err(|reason| ExitFileError::Invalid {
            path: shown,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(
            WaitStatus::decode(3 << 8),
            WaitStatus {
                exit_code: Some(3),
                signal: None,
                core_dumped: false
            }
        );
        assert_eq!(
            WaitStatus::decode(9),
            WaitStatus {
                exit_code: None,
                signal: Some(9),
                core_dumped: false
            }
        );
        assert_eq!(
            WaitStatus::decode(11 | 0x80),
            WaitStatus {
                exit_code: None,
                signal: Some(11),
                core_dumped: true
            }
        );
    }

    #[test]
    fn file_round_trip_keeps_nulls_visible() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t_exit_status");
        let s = ExitStatus::from_wait("a1", "t", 1, 42, 9, "s".into(), "f".into());
        s.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"exit_code\": null"), "{text}");
        assert!(text.contains("\"signal\": 9"), "{text}");
        assert_eq!(ExitStatus::read(&path).unwrap(), s);
        assert_eq!(s.shell_code(), 137);
    }

    #[test]
    fn a_file_from_before_oom_kills_reads_as_zero_kills() {
        let s = ExitStatus::from_wait("a1", "t", 1, 42, 9, "s".into(), "f".into());
        let mut v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        v.as_object_mut().unwrap().remove("oom_kills").unwrap();
        let old = serde_json::to_vec(&v).unwrap();
        assert_eq!(ExitStatus::from_json(&old).unwrap(), s);
    }

    #[test]
    fn the_v1_wire_form_round_trips_all_but_the_count() {
        let mut s = ExitStatus::from_wait("a1", "t", 2, 42, 9, "s".into(), "f".into());
        s.oom_killed = true;
        s.oom_kills = 3;
        let v1 = ExitStatusV1::from(&s);
        assert_eq!(v1.clone().with_oom_kills(3), s);
        assert_eq!(v1.with_oom_kills(0).oom_kills, 0);
    }

    #[test]
    fn missing_and_torn_files_are_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        assert!(matches!(
            ExitStatus::read(&path),
            Err(ExitFileError::NotFound { .. })
        ));
        std::fs::write(&path, b"{\"version\": 1, \"exit_co").unwrap();
        assert!(matches!(
            ExitStatus::read(&path),
            Err(ExitFileError::Invalid { .. })
        ));
    }
}

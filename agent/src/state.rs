//! The agent's state store: one atomic JSON file per task,
//! `<data_dir>/state/<alloc_id>/<task>.json`, plus `alloc.json` for what the
//! allocation runs. No task environment and no secret is written here: a task's
//! token lives in `<task>.token` beside it, mode 0600.
//!
//! Every file carries `schema`; [`upgrade_task`] turns an older schema into the
//! current one when the agent starts, so an upgraded agent reads what the old
//! one wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::os::fd::AsFd;

use tend_proto::atomic::{Pending, Stage};
use tend_proto::{atomic, names, ExitStatus, Token};

use crate::durable::GroupSync;
use crate::jobspec::Job;

/// The schema of the files this build writes.
pub const SCHEMA: u32 = 2;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read.
    #[error("state: read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not valid JSON of its record.
    #[error("state: {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// A token file does not hold a token.
    #[error("state: {path}: not a 64-digit hex token")]
    Token {
        /// The file.
        path: PathBuf,
    },
    /// A task file cannot be brought to the current schema.
    #[error("state: {path}: {source}")]
    Upgrade {
        /// The file.
        path: PathBuf,
        /// Why.
        source: UpgradeError,
    },
    /// A file could not be written.
    #[error("state: write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: atomic::AtomicError,
    },
    /// A dir could not be made or listed.
    #[error("state: {path}: {source}")]
    Dir {
        /// The dir.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What the operator wants of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// Keep it running.
    Run,
    /// Stop it.
    Stop,
}

/// `alloc.json`: what an allocation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocRecord {
    /// Schema of this file.
    pub schema: u32,
    /// The allocation id.
    pub alloc_id: String,
    /// The job it belongs to (the whole validated job), shared by every
    /// allocation made of it: a job of `count = 1000` is held once.
    #[serde(with = "shared_job")]
    pub job: Arc<Job>,
    /// The group's name.
    pub group: String,
    /// The allocation's index in its group.
    pub index: u32,
    /// What the operator wants.
    pub desired: Desired,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Ports handed to its tasks, by task.
    pub ports: std::collections::BTreeMap<String, Vec<crate::ports::AssignedPort>>,
    /// The container it took up, for an allocation made by `tend adopt`
    /// rather than started by the agent: its logs and exit file are in the
    /// container's dir, not in an alloc dir of the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
}

/// A container of `tend-oci` that the agent took up (`tend adopt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    /// Its id under its runtime's state root.
    pub id: String,
    /// Its dir, `ROOT/ID`: socket, logs, exit file. tend-oci's `delete`
    /// removes it; the agent never does.
    pub dir: PathBuf,
}

/// `job` as the plain object it is on the disk, whoever shares it in memory.
mod shared_job {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::jobspec::Job;

    pub(super) fn serialize<S: Serializer>(job: &Arc<Job>, s: S) -> Result<S::Ok, S::Error> {
        job.as_ref().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Job>, D::Error> {
        Job::deserialize(d).map(Arc::new)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskPhase {
    /// Not started yet, or waiting to restart.
    Pending,
    /// Running.
    Running,
    /// Ended for good.
    Dead,
}

impl std::fmt::Display for TaskPhase {
    /// As the API and the state files spell it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskPhase::Pending => "pending",
            TaskPhase::Running => "running",
            TaskPhase::Dead => "dead",
        })
    }
}

/// How the agent reaches a running task again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The driver that started it.
    pub driver: String,
    /// Which run it is.
    pub run: u32,
    /// The daemon's socket (process drivers).
    pub socket_path: Option<String>,
    /// The daemon's pid.
    pub daemon_pid: Option<i32>,
    /// The daemon's start time, clock ticks after boot (/proc/PID/stat field 22).
    pub daemon_start_time: Option<u64>,
    /// The daemon's instance id, hex.
    pub instance: Option<String>,
    /// The task's pid.
    pub task_pid: Option<i32>,
    /// The task's start time, clock ticks after boot.
    pub task_start_time: Option<u64>,
    /// The task's cgroup, relative to each hierarchy's root.
    pub cgroup: Option<String>,
    /// The exit status file.
    pub exit_status_path: String,
    /// The protocol version the daemon was started with.
    pub protocol_version: u16,
    /// The container id (docker).
    pub container_id: Option<String>,
}

/// One line of a task's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// When (RFC 3339).
    pub time: String,
    /// What: "started", "exited", "lost", "restarting", "failed", "signaled", "stopping",
    /// "reattached", "unreachable".
    pub kind: String,
    /// For a person.
    pub message: String,
}

/// How many events a task keeps.
pub const MAX_EVENTS: usize = 20;

/// `<task>.json`: one task of an allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Schema of this file.
    pub schema: u32,
    /// The allocation id.
    pub alloc_id: String,
    /// The task.
    pub task: String,
    /// Where it is.
    pub phase: TaskPhase,
    /// The current or last run, from 1; 0 before the first start.
    pub run: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// Whether it ended in failure.
    pub failed: bool,
    /// Whether its last run was lost (supervisor gone, no exit file).
    pub lost: bool,
    /// How to reach it while it runs.
    pub handle: Option<Handle>,
    /// How its last run ended.
    pub last_exit: Option<ExitStatus>,
    /// When the current run started.
    pub started_at: Option<String>,
    /// When it ended for good.
    pub finished_at: Option<String>,
    /// Recent events, oldest first.
    pub events: Vec<TaskEvent>,
    /// The restart policy's current window, so that an agent restart does
    /// not hand a failing task its attempts afresh. Absent in records of
    /// agents that did not keep it (read as no window yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_window: Option<RestartWindow>,
    /// Why its live tend-spawn does not answer, while it does not: the agent
    /// keeps trying and never declares a run lost while its supervisor lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// Whether its last run was ended by a stop someone asked for: such a run
    /// ended as asked, whatever code or signal the kill left (143, 137).
    #[serde(default)]
    pub stopped: bool,
    /// The errno of the step that kept its last run from starting (ENOENT
    /// for a missing command), when its supervisor reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_errno: Option<i32>,
    /// Its health checks' last results, in the job's order, while it runs
    /// (and as they last were once it has ended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
}

/// A health check's state, as Consul and Nomad name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// Not run yet in this run of the task.
    Pending,
    /// Healthy.
    Passing,
    /// Degraded: an exit code 1, an HTTP 429.
    Warning,
    /// Unhealthy.
    Critical,
}

impl CheckState {
    /// The word status and events use.
    pub fn word(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Passing => "passing",
            CheckState::Warning => "warning",
            CheckState::Critical => "critical",
        }
    }
}

/// One health check of a task: its last result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// The check's name.
    pub name: String,
    /// `script`, `tcp` or `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its state.
    pub status: CheckState,
    /// What its last run said (trimmed, at most a few KiB).
    pub output: String,
    /// When its last run ended (RFC 3339); None before the first.
    pub time: Option<String>,
}

/// Where a task stands in its restart policy's interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartWindow {
    /// When the interval began (RFC 3339; later than now while a `delay`
    /// mode policy waits out its interval).
    pub start: String,
    /// Restarts made in it.
    pub count: u32,
}

impl TaskRecord {
    /// A task that has not started yet.
    pub fn new(alloc_id: &str, task: &str) -> TaskRecord {
        TaskRecord {
            schema: SCHEMA,
            alloc_id: alloc_id.to_string(),
            task: task.to_string(),
            phase: TaskPhase::Pending,
            run: 0,
            restarts: 0,
            failed: false,
            lost: false,
            handle: None,
            last_exit: None,
            started_at: None,
            finished_at: None,
            events: Vec::new(),
            restart_window: None,
            unreachable: None,
            stopped: false,
            start_errno: None,
            checks: Vec::new(),
        }
    }

    /// Add an event, keeping the last [`MAX_EVENTS`].
    pub fn event(&mut self, kind: &str, message: impl Into<String>) -> TaskEvent {
        let ev = TaskEvent {
            time: tend_proto::time::now(),
            kind: kind.to_string(),
            message: message.into(),
        };
        self.events.push(ev.clone());
        if self.events.len() > MAX_EVENTS {
            let extra = self.events.len() - MAX_EVENTS;
            self.events.drain(..extra);
        }
        ev
    }
}

/// Why a task file cannot be brought to the current schema.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A schema 1 file that is not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A schema 1 file whose upgrade does not decode.
    #[error("schema 1 upgrade: {0}")]
    Schema1(#[source] serde_json::Error),
    /// A current file that does not decode.
    #[error(transparent)]
    Decode(serde_json::Error),
    /// Written by a newer tend.
    #[error("schema {schema} is newer than this tend understands ({SCHEMA}); upgrade tend")]
    Newer {
        /// The file's schema.
        schema: u64,
    },
}

/// Turn a task file of any schema this build knows into the current one.
///
/// Schema 1 kept the daemon's pid, socket and instance at the top level of the
/// record and had no task start time; schema 2 groups them in `handle`.
pub fn upgrade_task(mut v: serde_json::Value) -> Result<TaskRecord, UpgradeError> {
    let schema = v.get("schema").and_then(|s| s.as_u64()).unwrap_or(1);
    match schema {
        1 => {
            let obj = v.as_object_mut().ok_or(UpgradeError::NotObject)?;
            let pid = obj.remove("daemon_pid");
            let socket = obj.remove("socket_path");
            let instance = obj.remove("instance");
            let exit_path = obj.remove("exit_status_path");
            let run = obj.get("run").cloned().unwrap_or(serde_json::json!(1));
            let handle = match (&pid, &socket) {
                (Some(p), Some(s)) if !p.is_null() && !s.is_null() => serde_json::json!({
                    "driver": obj.get("driver").cloned().unwrap_or(serde_json::json!("raw_exec")),
                    "run": run,
                    "socket_path": s,
                    "daemon_pid": p,
                    "daemon_start_time": obj.remove("daemon_start_time").unwrap_or_default(),
                    "instance": instance.unwrap_or_default(),
                    "task_pid": obj.remove("task_pid").unwrap_or_default(),
                    "task_start_time": null,
                    "cgroup": null,
                    "exit_status_path": exit_path.unwrap_or(serde_json::json!("")),
                    "protocol_version": 1,
                    "container_id": null,
                }),
                _ => serde_json::Value::Null,
            };
            obj.remove("driver");
            obj.insert("handle".into(), handle);
            obj.insert("schema".into(), serde_json::json!(SCHEMA));
            serde_json::from_value(v).map_err(UpgradeError::Schema1)
        }
        2 => serde_json::from_value(v).map_err(UpgradeError::Decode),
        n => Err(UpgradeError::Newer { schema: n }),
    }
}

/// What [`StateStore::load`] found: allocations with their tasks, and the files
/// it could not read.
pub type Loaded = (Vec<(AllocRecord, Vec<TaskRecord>)>, Vec<StateError>);

/// The store under `<data_dir>/state`.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
    /// A new job's records are made durable together ([`GroupSync`]).
    sync: Arc<GroupSync>,
}

impl StateStore {
    /// The store at `root` (created if missing, mode 0700).
    pub fn open(root: &Path) -> Result<StateStore, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StateError::Dir {
                path: root.to_path_buf(),
                source,
            })?;
        let fs = atomic::open_dir(root).map_err(|source| StateError::Write {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(StateStore {
            root: root.to_path_buf(),
            sync: Arc::new(GroupSync::new(fs)),
        })
    }

    fn alloc_dir(&self, alloc_id: &str) -> PathBuf {
        self.root.join(alloc_id)
    }

    fn ensure_alloc_dir(&self, alloc_id: &str) -> Result<PathBuf, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        let d = self.alloc_dir(alloc_id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(|source| StateError::Dir {
                path: d.clone(),
                source,
            })?;
        Ok(d)
    }

    fn json_bytes<T: Serialize>(path: &Path, v: &T) -> Result<Vec<u8>, StateError> {
        let mut bytes = serde_json::to_vec_pretty(v).map_err(|source| StateError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    fn write_json<T: Serialize>(&self, path: &Path, v: &T, mode: u32) -> Result<(), StateError> {
        self.write(path, &Self::json_bytes(path, v)?, mode)
    }

    /// Write `path` (a file of an alloc's dir) atomically, durable on return:
    /// its own fsyncs, which overlap in the disk's queue. A batch's one syncfs
    /// measured slower where it mattered, 950 exits at once, as it also waits
    /// for every daemon's exit file and every log.
    fn write(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
        atomic::write(path, data, mode).map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Write `alloc.json`.
    pub fn put_alloc(&self, a: &AllocRecord) -> Result<(), StateError> {
        let d = self.ensure_alloc_dir(&a.alloc_id)?;
        self.write_json(&d.join("alloc.json"), a, 0o600)
    }

    /// Write a new allocation's `alloc.json` and dir, whole for every
    /// reader, and what is left to make them durable when `keep` (else
    /// nothing: the caller syncs the whole store, [`StateStore::sync_all`]).
    /// For [`StateStore::make_durable`], once for many allocations.
    pub fn stage_new_alloc(&self, a: &AllocRecord, keep: bool) -> Result<Vec<Pending>, StateError> {
        let d = self.ensure_alloc_dir(&a.alloc_id)?;
        let path = d.join("alloc.json");
        let bytes = Self::json_bytes(&path, a)?;
        let err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let mut staged = Vec::new();
        if keep {
            let root = atomic::open_dir(&self.root).map_err(err)?;
            staged.push(Pending::dir_entries(&a.alloc_id, root));
        }
        let dir = atomic::open_dir(&d).map_err(err)?;
        atomic::write_at_with(
            dir.as_fd(),
            "alloc.json",
            &bytes,
            0o600,
            &mut |p, stage| match stage {
                Stage::Last if keep => {
                    staged.push(p);
                    Ok(())
                }
                Stage::Last => Ok(()),
                Stage::BeforeRename => self.sync.durable(p),
            },
        )
        .map_err(err)?;
        Ok(staged)
    }

    /// Make the writes [`StateStore::stage_new_alloc`] kept durable.
    pub fn make_durable(&self, staged: Vec<Pending>) -> Result<(), StateError> {
        self.sync
            .durable_all(staged)
            .map_err(|source| StateError::Write {
                path: self.root.clone(),
                source,
            })
    }

    /// Make every write so far of the store's file system durable: one
    /// `syncfs`.
    pub fn sync_all(&self) -> Result<(), StateError> {
        self.sync.sync_fs().map_err(|source| StateError::Dir {
            path: self.root.clone(),
            source,
        })
    }

    /// Write `<task>.json`.
    pub fn put_task(&self, t: &TaskRecord) -> Result<(), StateError> {
        let d = self.ensure_alloc_dir(&t.alloc_id)?;
        self.write_json(&d.join(format!("{}.json", t.task)), t, 0o600)
    }

    /// Write a run's token and the task's record (which names the run's
    /// supervisor) together, durable on return: a start's one durable step
    /// before it launches. The two files share their dir, so they take three
    /// fsyncs (each file, the dir once) where two writes took four.
    pub fn put_task_and_token(&self, t: &TaskRecord, token: &Token) -> Result<(), StateError> {
        let d = self.ensure_alloc_dir(&t.alloc_id)?;
        let record_name = format!("{}.json", t.task);
        let record = d.join(&record_name);
        let bytes = Self::json_bytes(&record, t)?;
        let failed = |source| StateError::Write {
            path: record.clone(),
            source,
        };
        let dir = atomic::open_dir(&d).map_err(failed)?;
        let token_name = format!("{}.token", t.task);
        let hex = names::to_hex(&token.0);
        let tok = atomic::write_at_deferred(&dir, &token_name, hex.as_bytes(), 0o600).map_err(
            |source| StateError::Write {
                path: d.join(&token_name),
                source,
            },
        )?;
        let rec = atomic::write_at_deferred(&dir, &record_name, &bytes, 0o600).map_err(failed)?;
        atomic::sync_together(vec![tok, rec]).map_err(failed)
    }

    /// Keep a task's token, mode 0600, apart from its record.
    pub fn put_token(&self, alloc_id: &str, task: &str, token: &Token) -> Result<(), StateError> {
        let d = self.ensure_alloc_dir(alloc_id)?;
        let path = d.join(format!("{task}.token"));
        self.write(&path, names::to_hex(&token.0).as_bytes(), 0o600)
    }

    /// Read a task's token.
    pub fn token(&self, alloc_id: &str, task: &str) -> Result<Token, StateError> {
        let path = self.alloc_dir(alloc_id).join(format!("{task}.token"));
        let text = std::fs::read_to_string(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        let bytes = names::from_hex(text.trim())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(StateError::Token { path })?;
        Ok(Token(bytes))
    }

    /// Remove everything of an allocation.
    pub fn remove_alloc(&self, alloc_id: &str) -> Result<(), StateError> {
        let d = self.alloc_dir(alloc_id);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Dir { path: d, source }),
        }
    }

    /// Every allocation with its tasks. A file that cannot be read is reported
    /// and skipped, so one bad file never hides the others. Called once, as
    /// the agent starts and before it writes anything: the temp files an
    /// agent killed mid-write left in the alloc dirs go (see
    /// [`stale_temp_writer_alive`]).
    pub fn load(&self) -> Result<Loaded, StateError> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(|source| StateError::Dir {
            path: self.root.clone(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            match atomic::remove_stale_temps(&d, stale_temp_writer_alive) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(dir = %d.display(), ?removed, "removed temp files of a writer that is gone");
                }
                Ok(_) => {}
                Err(source) => errors.push(StateError::Write {
                    path: d.clone(),
                    source,
                }),
            }
            let alloc_path = d.join("alloc.json");
            let alloc: AllocRecord = match read_json(&alloc_path) {
                Ok(v) => match serde_json::from_value(v) {
                    Ok(a) => a,
                    Err(source) => {
                        errors.push(StateError::Json {
                            path: alloc_path,
                            source,
                        });
                        continue;
                    }
                },
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let mut tasks = Vec::new();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
                .map_err(|source| StateError::Dir {
                    path: d.clone(),
                    source,
                })?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && p.file_name().is_some_and(|n| n != "alloc.json")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            files.sort();
            // A task with no file never had a run: its record is written
            // first just before its launch (the submit writes the alloc's
            // alone). An unreadable file is not "no file": that task stays
            // out, reported, and is never started twice.
            let with_file: Vec<String> = files
                .iter()
                .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            let never_written: Vec<TaskRecord> = alloc
                .job
                .groups
                .iter()
                .filter(|g| g.name == alloc.group)
                .flat_map(|g| &g.tasks)
                .filter(|t| !with_file.contains(&t.name))
                .map(|t| TaskRecord::new(&alloc.alloc_id, &t.name))
                .collect();
            for f in files {
                match read_json(&f).and_then(|v| {
                    upgrade_task(v).map_err(|source| StateError::Upgrade {
                        path: f.clone(),
                        source,
                    })
                }) {
                    Ok(t) => tasks.push(t),
                    Err(e) => errors.push(e),
                }
            }
            tasks.extend(never_written);
            out.push((alloc, tasks));
        }
        Ok((out, errors))
    }
}

/// Whether the writer of a temp file in the store may still be writing it:
/// its pid lives, and is not this agent's own (the store is loaded before this
/// agent writes anything, so a temp bearing its pid is an earlier process's
/// that had the same pid, as an agent that is pid 1 of a container always has).
fn stale_temp_writer_alive(pid: i32) -> bool {
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    pid != own
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            != Err(nix::errno::Errno::ESRCH)
}

fn read_json(path: &Path) -> Result<serde_json::Value, StateError> {
    let bytes = std::fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            name: "j".into(),
            datacenters: vec![],
            meta: Default::default(),
            groups: vec![],
        }
    }

    fn alloc_a1(job: Job) -> AllocRecord {
        AllocRecord {
            schema: SCHEMA,
            alloc_id: "a1".into(),
            job: Arc::new(job),
            group: "g".into(),
            index: 0,
            desired: Desired::Run,
            created_at: tend_proto::time::now(),
            ports: Default::default(),
            adopted: None,
        }
    }

    /// A store with alloc a1 written, and task web's record (not written).
    fn store_with_web() -> (tempfile::TempDir, StateStore, AllocRecord, TaskRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let a = alloc_a1(job());
        store.put_alloc(&a).unwrap();
        let mut t = TaskRecord::new("a1", "web");
        t.event("started", "pid 5");
        (dir, store, a, t)
    }

    #[test]
    fn round_trip_and_token_apart() {
        let (dir, store, a, t) = store_with_web();
        store.put_task(&t).unwrap();
        store.put_token("a1", "web", &Token([9; 32])).unwrap();
        let (loaded, errors) = store.load().unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(loaded, vec![(a, vec![t])]);
        assert_eq!(store.token("a1", "web").unwrap(), Token([9; 32]));
        let text = std::fs::read_to_string(dir.path().join("state/a1/web.json")).unwrap();
        assert!(!text.contains("0909"), "no token in the record");
    }

    #[test]
    fn a_record_and_its_token_written_together_read_back_apart() {
        let (dir, store, a, t) = store_with_web();
        store.put_token("a1", "web", &Token([1; 32])).unwrap();
        // A new run over an old one: both files replaced, whole.
        store.put_task_and_token(&t, &Token([7; 32])).unwrap();
        let (loaded, errors) = store.load().unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(loaded, vec![(a, vec![t])]);
        assert_eq!(store.token("a1", "web").unwrap(), Token([7; 32]));
        let text = std::fs::read_to_string(dir.path().join("state/a1/web.json")).unwrap();
        assert!(!text.contains("0707"), "no token in the record");
        let mode = |f: &str| {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join("state/a1").join(f)).unwrap();
            m.permissions().mode() & 0o777
        };
        assert_eq!((mode("web.json"), mode("web.token")), (0o600, 0o600));
        // Nothing left behind: no temp file beside them.
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("state/a1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["alloc.json", "web.json", "web.token"]);
    }

    #[test]
    fn a_task_with_no_file_loads_as_never_run_and_one_unreadable_stays_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        let src = r#"job "j" {
  group "g" {
    task "web" {
      driver = "raw_exec"
      config { command = "/bin/true" }
    }
    task "db" {
      driver = "raw_exec"
      config { command = "/bin/true" }
    }
    task "cache" {
      driver = "raw_exec"
      config { command = "/bin/true" }
    }
  }
}
"#;
        let job = crate::jobspec::parse_str(src, "j.hcl").unwrap();
        let a = alloc_a1(job);
        // As a submit leaves it: the alloc's record alone, made durable.
        let staged = store.stage_new_alloc(&a, true).unwrap();
        store.make_durable(staged).unwrap();
        let mut web = TaskRecord::new("a1", "web");
        web.phase = TaskPhase::Running;
        store.put_task(&web).unwrap();
        std::fs::write(dir.path().join("state/a1/db.json"), "{ torn").unwrap();
        let (loaded, errors) = store.load().unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("db.json"), "{}", errors[0]);
        let [(got, tasks)] = loaded.as_slice() else {
            panic!("one alloc: {loaded:?}")
        };
        assert_eq!(got, &a);
        let names: Vec<(&str, TaskPhase)> =
            tasks.iter().map(|t| (t.task.as_str(), t.phase)).collect();
        assert_eq!(
            names,
            [("web", TaskPhase::Running), ("cache", TaskPhase::Pending)]
        );
        assert!(tasks[1].handle.is_none() && tasks[1].run == 0);
    }

    #[test]
    fn schema_1_files_are_upgraded() {
        let v = serde_json::json!({
            "schema": 1, "alloc_id": "a", "task": "t", "phase": "running", "run": 3,
            "restarts": 2, "failed": false, "lost": false, "last_exit": null,
            "started_at": null, "finished_at": null, "events": [],
            "driver": "raw_exec", "daemon_pid": 42, "socket_path": "/run/tend/s/x.sock",
            "instance": "00112233445566778899aabbccddeeff", "exit_status_path": "/d/t_exit_status",
            "daemon_start_time": 777, "task_pid": 43
        });
        let t = upgrade_task(v).unwrap();
        assert_eq!(t.schema, SCHEMA);
        let h = t.handle.unwrap();
        assert_eq!(h.daemon_pid, Some(42));
        assert_eq!(h.run, 3);
        assert_eq!(h.daemon_start_time, Some(777));
        assert_eq!(h.exit_status_path, "/d/t_exit_status");
    }

    #[test]
    fn newer_schemas_and_bad_files_are_reported_not_fatal() {
        assert!(upgrade_task(serde_json::json!({"schema": 99}))
            .unwrap_err()
            .to_string()
            .contains("newer"));
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("bad")).unwrap();
        std::fs::write(dir.path().join("bad/alloc.json"), b"{").unwrap();
        let (loaded, errors) = store.load().unwrap();
        assert!(loaded.is_empty());
        assert_eq!(errors.len(), 1);
    }
}

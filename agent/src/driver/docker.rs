//! The docker driver: a task runs as a container through the Docker Engine API
//! (bollard, over the engine's Unix socket).
//!
//! - [`spec`]: what a task asks, checked (values and the agent's policy) and
//!   turned into a create-container body. Pure.
//! - [`logs`]: the copy of the container's stdout and stderr into the alloc's
//!   rotating log files.
//! - here: the engine client and the container's life: start, wait (-> the exit
//!   status file), stop, remove, probe after an agent restart.
//!
//! The container is `<task>-<alloc_id>`, labelled `tend.alloc_id` and
//! `tend.task`. Its exit comes from the engine's record of it (container inspect
//! `State`): the exit code as the engine reports it (128+N when a signal ended
//! the main process: the engine does not tell the two apart, so neither do we),
//! `OOMKilled`, the pid and the start and end times.

pub mod binds;
mod exec;
pub mod logs;
pub mod run;
pub mod spec;
pub mod stamp;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tend_proto::exit::{ExitFileError, EXIT_STATUS_VERSION};
use tend_proto::ExitStatus;
use tokio::sync::OnceCell;

pub use spec::{check as check_task, policy, HostBind, HostRequest};

use crate::driver::DriverError;
use crate::jobspec::{LogSpec, Task};
use crate::paths::AllocDir;
use crate::ports::AssignedPort;

/// The engine socket when the agent config names none.
pub const DEFAULT_ENDPOINT: &str = "/var/run/docker.sock";

/// How long one engine request may take, except those that wait on purpose.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The "timeout" of requests that wait on purpose (a wait, a followed log).
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How long past a SIGKILLed container's end its engine may still log the
/// OOM that killed it (see [`DockerDriver::oom_event_seen`]).
const LATE_OOM: Duration = Duration::from_millis(500);

/// How long a stop waits after SIGKILL before it gives up.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// The agent's `plugin "docker"` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptions {
    /// The engine's Unix socket (default [`DEFAULT_ENDPOINT`]).
    pub endpoint: PathBuf,
    /// `allow_privileged`: tasks may ask for privileged containers.
    pub allow_privileged: bool,
    /// `allow_host_network`: tasks may ask for `network_mode = "host"`.
    pub allow_host_network: bool,
    /// `allowed_caps`: capabilities tasks may add (`NET_ADMIN` or `CAP_NET_ADMIN`).
    pub allowed_caps: Vec<String>,
    /// `allow_devices`: tasks may ask for host devices.
    pub allow_devices: bool,
    /// `allow_host_binds`: tasks may bind host paths outside their alloc dir.
    pub allow_host_binds: bool,
    /// The agent's `cpu_total_compute` (MHz of all cores), for `cpu_hard_limit`.
    pub cpu_total_compute: Option<u64>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            endpoint: PathBuf::from(DEFAULT_ENDPOINT),
            allow_privileged: false,
            allow_host_network: false,
            allowed_caps: Vec::new(),
            allow_devices: false,
            allow_host_binds: false,
            cpu_total_compute: None,
        }
    }
}

/// Why the docker driver failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine does not answer on its socket.
    #[error("docker driver: cannot reach the engine at {endpoint}: {cause}")]
    Unreachable {
        /// The socket.
        endpoint: PathBuf,
        /// Why, from the client.
        cause: String,
    },
    /// The task is refused before anything is created.
    #[error(transparent)]
    Refused(#[from] DriverError),
    /// A bind of the alloc dir could not be made safe to hand to the engine.
    #[error("docker driver: task {task}: bind of the alloc dir: {source}")]
    Binds {
        /// The task.
        task: String,
        /// Why.
        source: binds::BindError,
    },
    /// An engine call failed.
    #[error("docker driver: {op} {target}: {source}")]
    Engine {
        /// What was being done.
        op: &'static str,
        /// To what: a container id or name, an image.
        target: String,
        /// The engine's answer.
        source: EngineError,
    },
    /// A container that should exist does not.
    #[error("docker driver: container {id} does not exist")]
    Vanished {
        /// The container.
        id: String,
    },
    /// The exit status file could not be written.
    #[error("docker driver: {0}")]
    ExitFile(#[from] ExitFileError),
    /// A log file could not be written.
    #[error("docker driver: {0}")]
    Log(tend_logs::LogError),
    /// The log copy's cursor could not be stored.
    #[error("docker driver: log cursor {path}: {source}")]
    Cursor {
        /// The cursor file.
        path: PathBuf,
        /// The error.
        source: tend_proto::atomic::AtomicError,
    },
}

impl DockerError {
    fn engine(op: &'static str, target: &str, source: EngineError) -> DockerError {
        DockerError::Engine {
            op,
            target: target.to_string(),
            source,
        }
    }
}

/// The HTTP status of an engine error, if it is an answer of the engine's.
fn status_of(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// What the driver needs to start one run of a task.
#[derive(Debug)]
pub struct DockerStart<'a> {
    /// The allocation.
    pub alloc_id: &'a str,
    /// Its dir (binds: `alloc/` at `/alloc`, the task's `local/` at `/local`,
    /// and the task's volumes of the alloc dir).
    pub alloc: &'a AllocDir,
    /// Where those binds are mounted for the engine while the container
    /// starts (`<run_dir>/binds`, see [`binds`]).
    pub binds_dir: &'a Path,
    /// The task.
    pub task: &'a Task,
    /// The job's labels, under the task's own.
    pub job_labels: &'a BTreeMap<String, String>,
    /// The command, interpolated: the container's entrypoint; None keeps the image's.
    pub command: Option<String>,
    /// The args, interpolated: the container's cmd. Refused without a command.
    pub args: Vec<String>,
    /// The task's environment, built by the caller (`TEND_ALLOC_DIR=/alloc`, ...).
    pub env: Vec<(String, String)>,
    /// The task's ports, each published on its host port (tcp and udp).
    pub ports: &'a [AssignedPort],
}

/// Who an exit status belongs to, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitMeta {
    /// The allocation.
    pub alloc_id: String,
    /// The task.
    pub task: String,
    /// Which run of the task.
    pub run: u32,
    /// The exit status file (`AllocDir::exit_status(task)`).
    pub exit_status_path: PathBuf,
}

/// What the engine says of a container, after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// It runs (or is paused or restarting): wait on it again.
    Running,
    /// It ended; its exit status has been written to the exit status file.
    Exited(ExitStatus),
    /// The engine does not know it: the caller records the run as lost.
    Vanished,
}

/// The docker driver: one per agent, shared by its tasks.
#[derive(Debug)]
pub struct DockerDriver {
    opts: DockerOptions,
    client: OnceCell<Docker>,
    /// The main process's pid of each container started here, seen right after
    /// its start: the engine zeroes State.Pid once the container ends.
    pids: Mutex<HashMap<String, i64>>,
}

impl DockerDriver {
    /// A driver for the engine at `opts.endpoint`. No I/O: the engine is first
    /// reached (and its API version negotiated) when a task needs it.
    pub fn new(opts: DockerOptions) -> Result<DockerDriver, DockerError> {
        if !opts.endpoint.is_absolute() {
            return Err(DockerError::Unreachable {
                endpoint: opts.endpoint.clone(),
                cause: "the endpoint must be an absolute socket path".to_string(),
            });
        }
        Ok(DockerDriver {
            opts,
            client: OnceCell::new(),
            pids: Mutex::new(HashMap::new()),
        })
    }

    /// The agent's docker options.
    pub fn options(&self) -> &DockerOptions {
        &self.opts
    }

    /// Validate a task and check it against the agent's policy, before anything
    /// exists. Pure.
    pub fn check(opts: &DockerOptions, task: &Task) -> Result<(), DriverError> {
        spec::check(opts, task)
    }

    /// The engine client, connected and with its API version negotiated. A failure
    /// is not kept: the next call tries again.
    pub async fn engine(&self) -> Result<&Docker, DockerError> {
        let endpoint = &self.opts.endpoint;
        let unreachable = |cause: String| DockerError::Unreachable {
            endpoint: endpoint.clone(),
            cause,
        };
        self.client
            .get_or_try_init(|| async {
                let path = endpoint
                    .to_str()
                    .ok_or_else(|| unreachable("the path is not UTF-8".to_string()))?;
                let docker = Docker::connect_with_unix(
                    path,
                    REQUEST_TIMEOUT.as_secs(),
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(cause_of(&e)))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable(cause_of(&e)))
            })
            .await
    }

    /// Create and start the container of one run; its id. A container of an
    /// earlier run with the same name is removed first if it is tend's and has
    /// ended. A missing image is pulled. Nothing is left behind on failure.
    pub async fn start(&self, req: &DockerStart<'_>) -> Result<String, DockerError> {
        spec::check(&self.opts, req.task)?;
        let docker = self.engine().await?;
        // Held until the container runs: its own binds hold the dirs from then on.
        let (_staged, alloc_binds) = binds::StagedBinds::stage(
            req.alloc,
            req.binds_dir,
            req.alloc_id,
            &spec::alloc_binds(req.task),
        )
        .map_err(|source| DockerError::Binds {
            task: req.task.name.clone(),
            source,
        })?;
        let (name, body) = spec::create_body(&self.opts, req, &alloc_binds)?;
        let image = body.image.clone().unwrap_or_default();
        let create = || {
            docker.create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body.clone(),
            )
        };
        let created = match create().await {
            Err(e) if status_of(&e) == Some(404) => {
                self.pull(&image).await?;
                create().await
            }
            Err(e) if status_of(&e) == Some(409) => {
                self.remove_leftover(&name, req).await?;
                create().await
            }
            r => r,
        }
        .map_err(|e| DockerError::engine("create container", &name, e))?;
        let id = created.id;
        if let Err(e) = docker.start_container(&id, None).await {
            // Best effort: the start error is the one to report.
            let _ = self.remove(&id).await;
            return Err(DockerError::engine("start container", &name, e));
        }
        if let Ok(Some(c)) = self.inspect(&id).await {
            if let Some(pid) = c.state.and_then(|s| s.pid).filter(|p| *p > 0) {
                self.remember_pid(&id, Some(pid));
            }
        }
        tracing::info!(container = %id, name = %name, "container started");
        Ok(id)
    }

    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let docker = self.engine().await?;
        let opts = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = docker.create_image(Some(opts), None, None);
        while let Some(p) = progress.next().await {
            p.map_err(|e| DockerError::engine("pull image", image, e))?;
        }
        Ok(())
    }

    async fn remove_leftover(&self, name: &str, req: &DockerStart<'_>) -> Result<(), DockerError> {
        let docker = self.engine().await?;
        let old = docker
            .inspect_container(name, None)
            .await
            .map_err(|e| DockerError::engine("inspect container", name, e))?;
        let labels = old
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let ours = labels.get(spec::LABEL_ALLOC_ID).map(String::as_str) == Some(req.alloc_id)
            && labels.get(spec::LABEL_TASK) == Some(&req.task.name);
        let running = old.state.as_ref().is_some_and(|s| s.running == Some(true));
        if !ours || running {
            return Err(DockerError::Refused(DriverError::Field {
                task: req.task.name.clone(),
                field: "name",
                reason: format!(
                    "a container named {name} already exists and is {}",
                    if running { "running" } else { "not tend's" }
                ),
            }));
        }
        self.remove(name).await
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.engine().await?.inspect_container(id, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(DockerError::engine("inspect container", id, e)),
        }
    }

    /// Wait until the container ends, then write its exit status file and
    /// return the status.
    pub async fn wait(&self, id: &str, meta: &ExitMeta) -> Result<ExitStatus, DockerError> {
        // The engine zeroes State.Pid when the container ends: take it now.
        let before = self
            .inspect(id)
            .await?
            .ok_or_else(|| DockerError::Vanished { id: id.to_string() })?;
        let pid = before
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .or_else(|| self.remembered_pid(id));
        self.wait_not_running(id).await?;
        let after = self
            .inspect(id)
            .await?
            .ok_or_else(|| DockerError::Vanished { id: id.to_string() })?;
        let mut status = exit_status(meta, &after, pid);
        let started = after.state.as_ref().and_then(|s| s.started_at.as_deref());
        if let (false, Some(137), Some(since)) = (status.oom_killed, status.exit_code, started) {
            let full_id = after.id.as_deref().unwrap_or(id);
            if self.oom_event_seen(full_id, since).await {
                status.oom_killed = true;
                status.oom_kills = 1;
            }
        }
        status.write(&meta.exit_status_path)?;
        Ok(status)
    }

    /// Whether the engine logged an `oom` event for the container of full
    /// ID `id` since `since` (its start, as the engine wrote it), waiting up to
    /// [`LATE_OOM`] past now for one. A SIGKILLed container whose record
    /// says no OOM may still have been OOM-killed: the shim can send the
    /// kernel's OOM notice after the exit (containerd before 2.2), and the
    /// engine then sets `OOMKilled` only if it heard the OOM first, though it
    /// logs the event either way. An error is a no, with a warning.
    pub async fn oom_event_seen(&self, id: &str, since: &str) -> bool {
        let Ok(engine) = self.engine().await else {
            return false;
        };
        // From a second before the start the engine wrote, which it takes
        // after the process runs; `id` is the container's full ID, so an
        // earlier container of the same name (the task's last run) is not it.
        let Some(since) = stamp::parse_nanos(since) else {
            return false;
        };
        let since = stamp::query(since.saturating_sub(1_000_000_000));
        let until = stamp::query(stamp::nanos_of(std::time::SystemTime::now() + LATE_OOM));
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("container", vec![id]),
            ("event", vec!["oom"]),
        ]);
        let opts = EventsOptionsBuilder::new()
            .since(&since)
            .until(&until)
            .filters(&filters)
            .build();
        let mut events = engine.clone().with_timeout(NO_TIMEOUT).events(Some(opts));
        let look = async {
            while let Some(e) = events.next().await {
                match e {
                    Ok(m) if m.action.as_deref() == Some("oom") => return true,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(container = id, error = %cause_of(&e), "the engine's events, read for an OOM");
                        return false;
                    }
                }
            }
            false
        };
        tokio::time::timeout(LATE_OOM + Duration::from_secs(2), look)
            .await
            .unwrap_or(false)
    }

    fn remember_pid(&self, id: &str, pid: Option<i64>) {
        if let Ok(mut m) = self.pids.lock() {
            match pid {
                Some(p) => m.insert(id.to_string(), p),
                None => m.remove(id),
            };
        }
    }

    fn remembered_pid(&self, id: &str) -> Option<i64> {
        self.pids.lock().ok()?.get(id).copied()
    }

    /// Block until the engine says the container is not running.
    async fn wait_not_running(&self, id: &str) -> Result<(), DockerError> {
        // Waiting is the point of this request: no request timeout.
        let docker = self.engine().await?.clone().with_timeout(NO_TIMEOUT);
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut s = docker.wait_container(id, Some(opts));
        match s.next().await {
            None | Some(Ok(_)) => Ok(()),
            // bollard reports a non-zero exit code as an error: it is an end all the same.
            Some(Err(EngineError::DockerContainerWaitError { .. })) => Ok(()),
            Some(Err(e)) if status_of(&e) == Some(404) => {
                Err(DockerError::Vanished { id: id.to_string() })
            }
            Some(Err(e)) => Err(DockerError::engine("wait for container", id, e)),
        }
    }

    /// Stop the container: `signal`, up to `timeout` for it to end, then SIGKILL.
    /// A container that has already ended, or is gone, is stopped.
    pub async fn stop(&self, id: &str, signal: i32, timeout: Duration) -> Result<(), DockerError> {
        // kill + wait + kill rather than the engine's stop: its `signal` parameter
        // needs API 1.42, and older engines would silently send the image's
        // StopSignal instead.
        if !self.kill(id, signal).await? {
            return Ok(());
        }
        match tokio::time::timeout(timeout, self.wait_not_running(id)).await {
            Ok(Ok(())) | Ok(Err(DockerError::Vanished { .. })) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::info!(container = %id, ?timeout, "container outlived its kill timeout: SIGKILL");
            }
        }
        if !self.kill(id, 9).await? {
            return Ok(());
        }
        match tokio::time::timeout(KILL_GRACE, self.wait_not_running(id)).await {
            Ok(Ok(())) | Ok(Err(DockerError::Vanished { .. })) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DockerError::Engine {
                op: "stop container",
                target: id.to_string(),
                source: EngineError::RequestTimeoutError,
            }),
        }
    }

    /// Send `signal` to the container's main process; false when it is not
    /// running or gone.
    pub async fn signal(&self, id: &str, signal: i32) -> Result<bool, DockerError> {
        self.kill(id, signal).await
    }

    /// Send `signal`; false when the container is not running or gone.
    async fn kill(&self, id: &str, signal: i32) -> Result<bool, DockerError> {
        let opts = KillContainerOptionsBuilder::new()
            .signal(&signal.to_string())
            .build();
        match self.engine().await?.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(false),
            Err(e) => Err(DockerError::engine("signal container", id, e)),
        }
    }

    /// Remove the container (forced, with its anonymous volumes). One that is
    /// already gone is removed.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        self.remember_pid(id, None);
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.engine().await?.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // 409: a removal already in progress.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(DockerError::engine("remove container", id, e)),
        }
    }

    /// What became of a container after an agent restart. An ended one has its
    /// exit status file written, as [`DockerDriver::wait`] would have.
    pub async fn probe(&self, id: &str, meta: &ExitMeta) -> Result<ContainerState, DockerError> {
        let Some(c) = self.inspect(id).await? else {
            return Ok(ContainerState::Vanished);
        };
        let st = c.state.as_ref();
        let running = st.is_some_and(|s| {
            s.running == Some(true) || s.restarting == Some(true) || s.paused == Some(true)
        });
        if running {
            return Ok(ContainerState::Running);
        }
        let status = exit_status(meta, &c, self.remembered_pid(id));
        status.write(&meta.exit_status_path)?;
        Ok(ContainerState::Exited(status))
    }

    /// Copy the container's stdout and stderr into `logs/<task>.stdout|.stderr`
    /// until it ends (see [`logs`]). `since` is the cursor of an earlier copy
    /// ([`logs::read_cursor`]), None on the first.
    pub fn copy_logs(
        &self,
        id: &str,
        alloc: &AllocDir,
        task: &str,
        logs: LogSpec,
        since: Option<logs::LogCursor>,
    ) -> tokio::task::JoinHandle<Result<(), DockerError>> {
        let (id, alloc, task) = (id.to_string(), alloc.clone(), task.to_string());
        let client = self.client.get().cloned();
        let endpoint = self.opts.endpoint.clone();
        let opts = self.opts.clone();
        tokio::spawn(async move {
            let docker = match client {
                Some(d) => d,
                None => DockerDriver::new(opts)?.engine().await?.clone(),
            };
            // The stream lasts as long as the container: no request timeout.
            let docker = docker.with_timeout(NO_TIMEOUT);
            tracing::debug!(container = %id, endpoint = %endpoint.display(), "copying logs");
            logs::copy(docker, id, alloc, task, logs, since).await
        })
    }
}

/// The cause of a client error, in one line.
fn cause_of(e: &EngineError) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// The exit status of an ended container, from the engine's record of it.
/// `pid`: the main process's pid seen while it ran, when State.Pid is zeroed.
pub fn exit_status(meta: &ExitMeta, c: &ContainerInspectResponse, pid: Option<i64>) -> ExitStatus {
    let st = c.state.clone().unwrap_or_default();
    let started_at = st.started_at.as_deref().and_then(stamp::to_rfc3339);
    let finished_at = st
        .finished_at
        .as_deref()
        .and_then(stamp::to_rfc3339)
        .unwrap_or_else(tend_proto::time::now);
    let pid = st
        .pid
        .filter(|p| *p > 0)
        .or(pid)
        .and_then(|p| i32::try_from(p).ok());
    let engine_error = st.error.filter(|e| !e.is_empty());
    if started_at.is_none() {
        // Created, never started (an agent that died between create and start).
        let mut s = ExitStatus::never_started(
            &meta.alloc_id,
            &meta.task,
            meta.run,
            engine_error.unwrap_or_else(|| "the container never started".to_string()),
        );
        s.finished_at = finished_at;
        return s;
    }
    let oom_killed = st.oom_killed == Some(true);
    ExitStatus {
        version: EXIT_STATUS_VERSION,
        alloc_id: meta.alloc_id.clone(),
        task: meta.task.clone(),
        run: meta.run,
        pid,
        wait_status: None,
        exit_code: st.exit_code.and_then(|c| i32::try_from(c).ok()),
        signal: None,
        core_dumped: false,
        oom_killed,
        // The engine says whether its OOM killer struck, not how often: once at least.
        oom_kills: u64::from(oom_killed),
        started_at,
        finished_at,
        error: engine_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerState as EngineState;

    fn meta() -> ExitMeta {
        ExitMeta {
            alloc_id: "a1".into(),
            task: "web".into(),
            run: 2,
            exit_status_path: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn the_exit_comes_from_the_engine_state() {
        let c = ContainerInspectResponse {
            state: Some(EngineState {
                running: Some(false),
                pid: Some(0),
                exit_code: Some(137),
                oom_killed: Some(true),
                started_at: Some("2026-11-28T18:05:53.362009318Z".into()),
                finished_at: Some("2026-11-28T18:05:54.000000001Z".into()),
                error: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = exit_status(&meta(), &c, Some(4242));
        assert_eq!(s.exit_code, Some(137));
        assert_eq!(s.signal, None);
        assert!(s.oom_killed);
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.run, 2);
        assert_eq!(s.started_at.as_deref(), Some("2026-11-28T18:05:53.362009Z"));
        assert_eq!(s.finished_at, "2026-11-28T18:05:54.000000Z");
        assert_eq!(s.error, None);
        ExitStatus::from_json(&s.to_json()).unwrap();
    }

    #[test]
    fn a_container_that_never_started_has_no_exit_code() {
        let c = ContainerInspectResponse {
            state: Some(EngineState {
                exit_code: Some(0),
                started_at: Some("0001-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = exit_status(&meta(), &c, None);
        assert_eq!(s.exit_code, None);
        assert!(!s.success());
        assert!(s.error.is_some());
    }

    #[test]
    fn new_does_no_io_and_wants_an_absolute_socket() {
        DockerDriver::new(DockerOptions {
            endpoint: PathBuf::from("/nonexistent/docker.sock"),
            ..Default::default()
        })
        .unwrap();
        assert!(DockerDriver::new(DockerOptions {
            endpoint: PathBuf::from("docker.sock"),
            ..Default::default()
        })
        .is_err());
    }

    #[tokio::test]
    async fn a_missing_engine_is_one_clear_error() {
        let d = DockerDriver::new(DockerOptions {
            endpoint: PathBuf::from("/nonexistent/docker.sock"),
            ..Default::default()
        })
        .unwrap();
        let e = d.engine().await.unwrap_err().to_string();
        assert!(
            e.starts_with("docker driver: cannot reach the engine at /nonexistent/docker.sock: "),
            "{e}"
        );
    }
}

//! The docker driver's side of the driver interface: a run is a container,
//! its handle the container id (never its name), its logs copied into the
//! alloc dir as a tend-spawn's are, its exit status file written by the agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tend_proto::msg::CgroupStats;
use tend_proto::{Token, PROTOCOL_VERSION};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{ContainerState, DockerDriver, DockerError, DockerStart, ExitMeta};
use crate::driver::{
    never_started, Control, Controls, Ended, Recovered, RunCtx, RunError, StartSpec, TaskDriver,
};
use crate::paths::Dirs;
use crate::state::{Handle, TaskPhase};

/// How long a stats request may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the copy of an ended container's logs may take.
const LOG_DRAIN: Duration = Duration::from_secs(5);

/// The docker driver of an agent.
#[derive(Debug, Clone)]
pub struct ContainerDriver {
    engine: Arc<DockerDriver>,
    dirs: Dirs,
}

/// A container being waited on.
pub struct ContainerRun {
    id: String,
    meta: ExitMeta,
    logs: JoinHandle<Result<(), DockerError>>,
}

impl ContainerDriver {
    /// The driver over `engine`; alloc dirs and bind mounts under `dirs`.
    pub fn new(engine: DockerDriver, dirs: Dirs) -> ContainerDriver {
        ContainerDriver {
            engine: Arc::new(engine),
            dirs,
        }
    }

    /// The engine client and the agent's docker options.
    pub fn engine(&self) -> &DockerDriver {
        &self.engine
    }

    /// Stop a container with the task's kill signal and timeout. The stop runs
    /// beside the wait, which sees the end.
    fn stop_container(&self, cx: &RunCtx<'_>, id: &str) {
        let task = cx.task;
        cx.note_stopping();
        let (signal, timeout) = (task.kill_signal, task.kill_timeout);
        let (id, engine) = (id.to_string(), self.engine.clone());
        tokio::spawn(
            async move {
                if let Err(e) = engine.stop(&id, signal, timeout).await {
                    tracing::warn!(error = %e, "container stop failed");
                }
            }
            .in_current_span(),
        );
    }
}

impl TaskDriver for ContainerDriver {
    type Run = ContainerRun;

    /// Start a run as a container: the container id is persisted as the handle.
    async fn start(&self, cx: &RunCtx<'_>, spec: StartSpec<'_>) -> Result<ContainerRun, Ended> {
        let (alloc_id, task, run) = (cx.alloc_id, cx.task, spec.run);
        let dir = self.dirs.alloc(alloc_id);
        let exit_path = dir.exit_status(&task.name);
        let binds_dir = self.dirs.binds_dir();
        let id = self
            .engine
            .start(&DockerStart {
                alloc_id,
                alloc: &dir,
                binds_dir: &binds_dir,
                task,
                job_labels: &spec.job.meta,
                command: spec.setup.command,
                args: spec.setup.args,
                env: spec.setup.env,
                ports: spec.ports,
            })
            .await
            .map_err(|e| never_started(cx, run, e.to_string()))?;
        let handle = Handle {
            driver: task.driver.name().to_string(),
            run,
            socket_path: None,
            daemon_pid: None,
            daemon_start_time: None,
            instance: None,
            task_pid: None,
            task_start_time: None,
            cgroup: None,
            exit_status_path: exit_path.display().to_string(),
            protocol_version: PROTOCOL_VERSION,
            container_id: Some(id.clone()),
        };
        cx.journal.update(|r| {
            r.run = run;
            r.phase = TaskPhase::Running;
            r.failed = false;
            r.lost = false;
            r.handle = Some(handle);
            r.started_at = Some(tend_proto::time::now());
            r.finished_at = None;
            Some(r.event(
                "started",
                format!("run {run}: container {}", &id[..id.len().min(12)]),
            ))
        });
        let logs = self
            .engine
            .copy_logs(&id, &dir, &task.name, task.logs, None);
        Ok(ContainerRun {
            id,
            meta: ExitMeta {
                alloc_id: alloc_id.to_string(),
                task: task.name.clone(),
                run,
                exit_status_path: exit_path,
            },
            logs,
        })
    }

    /// Take up a container after an agent restart: by its id, never by its name.
    async fn recover(
        &self,
        cx: &RunCtx<'_>,
        handle: Handle,
        _ctl: &mut Controls,
        _unreachable: &mut (dyn FnMut() + Send),
    ) -> Recovered<ContainerRun> {
        let (alloc_id, task) = (cx.alloc_id, cx.task);
        let Some(id) = handle.container_id.clone() else {
            return Recovered::Ended(Ended::Lost("the handle names no container".into()));
        };
        let meta = ExitMeta {
            alloc_id: alloc_id.to_string(),
            task: task.name.clone(),
            run: handle.run,
            exit_status_path: PathBuf::from(&handle.exit_status_path),
        };
        let docker = &self.engine;
        match docker.probe(&id, &meta).await {
            Ok(ContainerState::Running) => {
                let dir = self.dirs.alloc(alloc_id);
                let cursor = super::logs::read_cursor(&dir, &task.name);
                let logs = docker.copy_logs(&id, &dir, &task.name, task.logs, cursor);
                cx.journal.note(|r| {
                    r.phase = TaskPhase::Running;
                    Some(r.event(
                        "reattached",
                        format!("run {}: container is running", handle.run),
                    ))
                });
                Recovered::Live(ContainerRun { id, meta, logs })
            }
            Ok(ContainerState::Exited(e)) => {
                // What it wrote while the agent was away is copied before the
                // container goes; the cursor keeps what was copied from coming twice.
                let dir = self.dirs.alloc(alloc_id);
                let cursor = super::logs::read_cursor(&dir, &task.name);
                let logs = docker.copy_logs(&id, &dir, &task.name, task.logs, cursor);
                if let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(30), logs).await
                {
                    tracing::warn!(error = %err, "cannot copy the logs of the ended container");
                }
                let _ = docker.remove(&id).await;
                Recovered::Ended(Ended::Exit(e))
            }
            Ok(ContainerState::Vanished) => Recovered::Ended(Ended::Lost(format!(
                "container {id} vanished while the agent was away: the exit is unknown"
            ))),
            Err(e) => Recovered::Ended(Ended::Lost(format!("container {id}: {e}"))),
        }
    }

    /// Wait for a container's end, serving stop and signal requests meanwhile.
    async fn wait(&self, cx: &RunCtx<'_>, run: ContainerRun, ctl: &mut Controls) -> Ended {
        let docker = &self.engine;
        if ctl.stopping {
            // Taken up after a stop was asked for: ask again.
            self.stop(cx, &run);
        }
        let result = {
            let wait = docker.wait(&run.id, &run.meta);
            tokio::pin!(wait);
            let mut ctl_open = true;
            loop {
                tokio::select! {
                    r = &mut wait => break r,
                    c = ctl.recv(), if ctl_open => match c {
                        None => ctl_open = false,
                        Some(Control::Stop) => {
                            ctl.stopping = true;
                            self.stop(cx, &run);
                        }
                        Some(Control::Signal(signo, reply)) => {
                            let _ = reply.send(self.signal(cx, &run, signo).await);
                        }
                        Some(Control::Restart(why)) => {
                            if ctl.take_restart(why) {
                                self.stop(cx, &run);
                            }
                        }
                    }
                }
            }
        };
        let ContainerRun { id, meta, logs } = run;
        // The log copy ends with the container; let it finish before removal.
        let _ = tokio::time::timeout(LOG_DRAIN, logs).await;
        let ended = match result {
            Ok(e) => Ended::Exit(e),
            Err(DockerError::Vanished { .. }) => {
                Ended::Lost(format!("container {id} vanished: the exit is unknown"))
            }
            Err(e) => match docker.probe(&id, &meta).await {
                Ok(ContainerState::Exited(es)) => Ended::Exit(es),
                _ => Ended::Lost(format!("container {id}: {e}")),
            },
        };
        if let Err(e) = docker.remove(&id).await {
            tracing::warn!(error = %e, "cannot remove the container");
        }
        ended
    }

    async fn signal(
        &self,
        cx: &RunCtx<'_>,
        run: &ContainerRun,
        signo: i32,
    ) -> Result<(), RunError> {
        let r = match self.engine.signal(&run.id, signo).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(RunError::ContainerNotRunning),
            Err(e) => Err(RunError::Docker(e)),
        };
        if r.is_ok() {
            cx.note_signaled(signo);
        }
        r
    }

    fn stop(&self, cx: &RunCtx<'_>, run: &ContainerRun) {
        self.stop_container(cx, &run.id);
    }

    async fn stats(&self, handle: &Handle, _token: Option<Token>) -> Result<CgroupStats, RunError> {
        let id = handle
            .container_id
            .as_deref()
            .ok_or(RunError::NoContainer)?;
        match tokio::time::timeout(STATS_TIMEOUT, self.engine.stats(id)).await {
            Ok(Ok(Some(s))) => Ok(s),
            Ok(Ok(None)) => Err(RunError::ContainerGone { id: id.to_string() }),
            Ok(Err(e)) => Err(RunError::Docker(e)),
            Err(_) => Err(RunError::EngineTimeout {
                secs: STATS_TIMEOUT.as_secs(),
            }),
        }
    }

    async fn destroy(&self, _cx: &RunCtx<'_>, handle: &Handle) {
        if let Some(id) = handle.container_id.as_deref() {
            if let Err(e) = self.engine.remove(id).await {
                tracing::warn!(error = %e, "cannot remove the container");
            }
        }
    }
}

//! Drivers turn a task's run into something that runs, behind one interface,
//! [`TaskDriver`]: start, recover (reattach), wait, signal, stop, stats,
//! destroy. The task runner (`crate::runner`) owns the lifecycle and knows no
//! driver; it holds an [`AnyDriver`] and calls through it.
//!
//! - [`spawn`]: `raw_exec` and `exec`, each run under its own tend-spawn, so
//!   every task survives the agent.
//! - [`docker`]: a container through the Docker Engine API.
//!
//! [`setup`] builds what every driver starts from (environment, command line).

pub mod docker;
pub mod setup;
pub mod spawn;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tend_proto::msg::CgroupStats;
use tend_proto::{ExitStatus, Token};
use tokio::sync::{mpsc, oneshot};

use crate::jobspec::{Driver, Job, Task};
use crate::outcome::humanize;
use crate::paths::AllocDir;
use crate::ports::AssignedPort;
use crate::state::{Handle, TaskEvent, TaskRecord};
use docker::run::{ContainerDriver, ContainerRun};
use setup::TaskSetup;
use spawn::{SpawnDriver, SpawnRun};

/// Why a task cannot be handed to its driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver cannot run here.
    #[error("task {task}: driver {driver}: {reason}")]
    Unavailable {
        /// The task.
        task: String,
        /// The driver.
        driver: &'static str,
        /// Why.
        reason: String,
    },
    /// A field of the task is wrong for this driver.
    #[error("task {task}: {field}: {reason}")]
    Field {
        /// The task.
        task: String,
        /// The field path inside the task.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The command cannot be found.
    #[error("task {task}: config.command: {reason}")]
    Command {
        /// The task.
        task: String,
        /// Why.
        reason: String,
    },
}

/// Why a driver could not signal a run or report what it uses.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run's tend-spawn did not take the request.
    #[error(transparent)]
    Supervisor(#[from] spawn::retry::RetryError),
    /// Talking to the run's tend-spawn failed.
    #[error(transparent)]
    Client(#[from] spawn::client::ClientError),
    /// The run's tend-spawn exited (its pidfd says so) while waited on.
    #[error("its pidfd says it exited")]
    DaemonExited,
    /// The run's tend-spawn did not answer in time.
    #[error("tend-spawn at {} did not answer within {secs} s", .socket.display())]
    SupervisorTimeout {
        /// Its socket.
        socket: std::path::PathBuf,
        /// How long it had, seconds.
        secs: u64,
    },
    /// The run's tend-spawn answered something else than asked for.
    #[error("tend-spawn answered {answer:?} to a stats request")]
    Unexpected {
        /// The answer.
        answer: Box<tend_proto::Response>,
    },
    /// The run's driver has no stats to give.
    #[error("the {driver} driver does not report stats")]
    NoStats {
        /// The driver.
        driver: String,
    },
    /// The run's per-run secret is not kept, so its tend-spawn cannot be asked.
    #[error("its token is not kept")]
    NoToken,
    /// The handle of a docker run names no container.
    #[error("the handle names no container")]
    NoContainer,
    /// The container is not running.
    #[error("the container is not running")]
    ContainerNotRunning,
    /// The container no longer exists.
    #[error("container {id} is gone")]
    ContainerGone {
        /// Its id.
        id: String,
    },
    /// The docker engine failed the call.
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    /// The docker engine did not answer in time.
    #[error("the docker engine did not answer within {secs} s")]
    EngineTimeout {
        /// How long it had, seconds.
        secs: u64,
    },
    /// The run's driver is docker, disabled on this agent.
    #[error("driver docker is disabled on this agent")]
    DockerDisabled,
    /// The task is between runs, waiting to restart.
    #[error("the task is waiting to restart")]
    Restarting,
    /// The run's tend-spawn does not answer, so the signal was not sent.
    #[error("tend-spawn does not answer ({why}); the signal was not sent")]
    Unreachable {
        /// Why, as last seen.
        why: String,
    },
    /// A run of one driver was handed to another.
    #[error("{MIXED}")]
    Mixed,
}

/// What the runner asks of a run while its driver waits on it.
#[derive(Debug)]
pub enum Control {
    /// Stop it with its kill signal and timeout; no restart follows.
    Stop,
    /// Send it a signal.
    Signal(i32, oneshot::Sender<Result<(), RunError>>),
    /// Stop it with its kill signal and timeout, then hand its end to the
    /// restart policy as a failure's, whatever its exit code: a
    /// `check_restart`. The reason goes in the task's events.
    Restart(String),
}

/// The runner's controls of one task, served by its driver while it waits,
/// and whether a stop was asked for (before or during the wait).
#[derive(Debug)]
pub struct Controls {
    rx: mpsc::UnboundedReceiver<Control>,
    /// A stop was asked for: no restart follows the run.
    pub stopping: bool,
    /// A restart was asked for, and why: the run is being stopped, and its
    /// end counts as a failure.
    pub restart: Option<String>,
}

impl Controls {
    /// The controls that come through `rx`.
    pub fn new(rx: mpsc::UnboundedReceiver<Control>, stopping: bool) -> Controls {
        Controls {
            rx,
            stopping,
            restart: None,
        }
    }

    /// Take a restart request: true when the run should be stopped for it
    /// now (not when a stop or another restart is already under way).
    pub fn take_restart(&mut self, why: String) -> bool {
        if self.stopping || self.restart.is_some() {
            return false;
        }
        self.restart = Some(why);
        true
    }

    /// The next control; None once the runner's channel is closed.
    pub async fn recv(&mut self) -> Option<Control> {
        self.rx.recv().await
    }
}

/// How one run ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// It ended with this status (or never started: the status says so).
    Exit(ExitStatus),
    /// Its end is unknown, for this reason.
    Lost(String),
}

/// What recovering a run found.
pub enum Recovered<R> {
    /// It runs: wait on it.
    Live(R),
    /// It ended meanwhile.
    Ended(Ended),
    /// Its handle was persisted before a launch that never got as far as the
    /// supervisor: nothing of this run ever ran (the run it names).
    NeverLaunched(u32),
}

impl<R> Recovered<R> {
    /// The same finding, its live run turned into another.
    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> Recovered<S> {
        match self {
            Recovered::Live(r) => Recovered::Live(f(r)),
            Recovered::Ended(e) => Recovered::Ended(e),
            Recovered::NeverLaunched(n) => Recovered::NeverLaunched(n),
        }
    }
}

/// The task's record, as a driver may write in it (events such as started,
/// unreachable, killed; its handle). The runner keeps the record.
pub trait Journal: Send + Sync {
    /// Change the record, persisted now (`persist`) or with the next
    /// persisted change; the event returned is published.
    fn change(&self, persist: bool, f: &mut dyn FnMut(&mut TaskRecord) -> Option<TaskEvent>);
    /// The record (a copy).
    fn record(&self) -> Option<TaskRecord>;
    /// Change the record and keep a new run's secret beside it, both
    /// durable before this returns; on an error neither change is made.
    fn change_with_token(
        &self,
        token: &Token,
        f: &mut dyn FnMut(&mut TaskRecord) -> Option<TaskEvent>,
    ) -> Result<(), crate::state::StateError>;
    /// The per-run secret kept for the task.
    fn token(&self) -> Option<Token>;
}

impl dyn Journal + '_ {
    /// Change the record, persist it, and publish the event it returns.
    pub fn update(&self, f: impl FnOnce(&mut TaskRecord) -> Option<TaskEvent>) {
        let mut f = Some(f);
        self.change(true, &mut |r| f.take().and_then(|f| f(r)));
    }

    /// Like [`update`](Self::update) for a change a restart can do without:
    /// kept in memory until the next persisted one.
    pub fn note(&self, f: impl FnOnce(&mut TaskRecord) -> Option<TaskEvent>) {
        let mut f = Some(f);
        self.change(false, &mut |r| f.take().and_then(|f| f(r)));
    }
}

/// One task as the runner hands it to its driver.
#[derive(Clone)]
pub struct RunCtx<'a> {
    /// The allocation.
    pub alloc_id: &'a str,
    /// The task.
    pub task: &'a Task,
    /// The allocation's dir.
    pub alloc: &'a AllocDir,
    /// Its record.
    pub journal: Arc<dyn Journal>,
}

impl RunCtx<'_> {
    /// Record that a stop of the run was asked of its driver.
    pub fn note_stopping(&self) {
        let task = self.task;
        self.journal.update(|r| {
            Some(r.event(
                "stopping",
                format!(
                    "stopping with signal {} and {} grace",
                    task.kill_signal,
                    humanize(task.kill_timeout)
                ),
            ))
        });
    }

    /// Record that the run took a signal.
    pub fn note_signaled(&self, signo: i32) {
        self.journal
            .update(|r| Some(r.event("signaled", format!("sent signal {signo}"))));
    }
}

/// The end of a run that never started: its exit status file says why (only
/// for such a run: one that did start is decided by what ran it).
pub fn never_started(cx: &RunCtx<'_>, run: u32, why: String) -> Ended {
    let e = ExitStatus::never_started(cx.alloc_id, &cx.task.name, run, why);
    if let Err(err) = e.write(&cx.alloc.exit_status(&cx.task.name)) {
        tracing::error!(error = %err, "cannot write exit status file");
    }
    Ended::Exit(e)
}

/// What a new run starts from.
#[derive(Debug)]
pub struct StartSpec<'a> {
    /// Which run, from 1.
    pub run: u32,
    /// The job (labels, names).
    pub job: &'a Job,
    /// The task's environment and command line.
    pub setup: TaskSetup,
    /// The task's ports.
    pub ports: &'a [AssignedPort],
}

/// One driver: how a run of a task starts, is taken up again, waited on,
/// signalled, stopped, measured and cleaned up. Every method that ends a run
/// writes its exit status file (a run that never started included), so the
/// runner records what the file says.
pub trait TaskDriver {
    /// A run being waited on.
    type Run: Send;

    /// Start a new run; the handle is in the task's record before it exists.
    fn start(
        &self,
        cx: &RunCtx<'_>,
        spec: StartSpec<'_>,
    ) -> impl Future<Output = Result<Self::Run, Ended>> + Send;

    /// Take up the run a handle describes, after an agent restart. Controls
    /// that come meanwhile are served; `unreachable` is called once if its
    /// supervisor lives but does not answer yet.
    fn recover(
        &self,
        cx: &RunCtx<'_>,
        handle: Handle,
        ctl: &mut Controls,
        unreachable: &mut (dyn FnMut() + Send),
    ) -> impl Future<Output = Recovered<Self::Run>> + Send;

    /// Wait for the run's end, serving controls meanwhile (with
    /// [`signal`](Self::signal) and [`stop`](Self::stop)); a stop asked for
    /// before the wait is asked of the run again.
    fn wait(
        &self,
        cx: &RunCtx<'_>,
        run: Self::Run,
        ctl: &mut Controls,
    ) -> impl Future<Output = Ended> + Send;

    /// Send the run a signal.
    fn signal(
        &self,
        cx: &RunCtx<'_>,
        run: &Self::Run,
        signo: i32,
    ) -> impl Future<Output = Result<(), RunError>> + Send;

    /// Stop the run with the task's kill signal and kill_timeout, in the
    /// background; the wait sees the end.
    fn stop(&self, cx: &RunCtx<'_>, run: &Self::Run);

    /// What the run uses now.
    fn stats(
        &self,
        handle: &Handle,
        token: Option<Token>,
    ) -> impl Future<Output = Result<CgroupStats, RunError>> + Send;

    /// Clean up what is left of a run that ended or was lost.
    fn destroy(&self, cx: &RunCtx<'_>, handle: &Handle) -> impl Future<Output = ()> + Send;
}

/// Every driver, dispatched without boxing.
#[derive(Clone)]
pub enum AnyDriver {
    /// `raw_exec` and `exec`.
    Spawn(Arc<SpawnDriver>),
    /// `docker`.
    Docker(Arc<ContainerDriver>),
}

/// A run of any driver. One lives per task, so the size of the larger
/// variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum AnyRun {
    /// Under tend-spawn.
    Spawn(SpawnRun),
    /// A container.
    Docker(ContainerRun),
}

/// The drivers of an agent.
#[derive(Clone)]
pub struct Drivers {
    /// `raw_exec` and `exec`.
    pub spawn: Arc<SpawnDriver>,
    /// `docker`, unless disabled.
    pub docker: Option<Arc<ContainerDriver>>,
}

impl Drivers {
    /// The driver of a task.
    pub fn for_task(&self, task: &Task) -> Result<AnyDriver, RunError> {
        match task.driver {
            Driver::RawExec | Driver::Exec | Driver::Oci => {
                Ok(AnyDriver::Spawn(self.spawn.clone()))
            }
            Driver::Docker => self.docker(),
        }
    }

    /// The driver of the run a handle describes.
    pub fn for_handle(&self, handle: &Handle) -> Result<AnyDriver, RunError> {
        if handle.container_id.is_some() {
            self.docker()
        } else {
            Ok(AnyDriver::Spawn(self.spawn.clone()))
        }
    }

    fn docker(&self) -> Result<AnyDriver, RunError> {
        self.docker
            .clone()
            .map(AnyDriver::Docker)
            .ok_or(RunError::DockerDisabled)
    }
}

const MIXED: &str = "a run of one driver was handed to another";

impl AnyDriver {
    /// The wait of a run (see [`TaskDriver::wait`]) on the heap, holding
    /// the driver it needs: the runner keeps only the box while its task
    /// runs, and no layer between it and the driver's own wait keeps a copy
    /// of the run. The docker driver's wait, far larger than the spawn
    /// driver's, costs the spawn tasks nothing.
    pub fn into_wait<'a>(
        self,
        cx: &'a RunCtx<'a>,
        run: AnyRun,
        ctl: &'a mut Controls,
    ) -> Pin<Box<dyn Future<Output = Ended> + Send + 'a>> {
        match (self, run) {
            (AnyDriver::Spawn(_), AnyRun::Spawn(r)) => Box::pin(SpawnDriver::waiting(cx, r, ctl)),
            (AnyDriver::Docker(d), AnyRun::Docker(r)) => {
                Box::pin(async move { d.wait(cx, r, ctl).await })
            }
            _ => Box::pin(std::future::ready(Ended::Lost(MIXED.into()))),
        }
    }
}

impl TaskDriver for AnyDriver {
    type Run = AnyRun;

    async fn start(&self, cx: &RunCtx<'_>, spec: StartSpec<'_>) -> Result<AnyRun, Ended> {
        match self {
            AnyDriver::Spawn(d) => d.start(cx, spec).await.map(AnyRun::Spawn),
            AnyDriver::Docker(d) => d.start(cx, spec).await.map(AnyRun::Docker),
        }
    }

    async fn recover(
        &self,
        cx: &RunCtx<'_>,
        handle: Handle,
        ctl: &mut Controls,
        unreachable: &mut (dyn FnMut() + Send),
    ) -> Recovered<AnyRun> {
        match self {
            AnyDriver::Spawn(d) => d
                .recover(cx, handle, ctl, unreachable)
                .await
                .map(AnyRun::Spawn),
            AnyDriver::Docker(d) => Box::pin(d.recover(cx, handle, ctl, unreachable))
                .await
                .map(AnyRun::Docker),
        }
    }

    async fn wait(&self, cx: &RunCtx<'_>, run: AnyRun, ctl: &mut Controls) -> Ended {
        self.clone().into_wait(cx, run, ctl).await
    }

    async fn signal(&self, cx: &RunCtx<'_>, run: &AnyRun, signo: i32) -> Result<(), RunError> {
        match (self, run) {
            (AnyDriver::Spawn(d), AnyRun::Spawn(r)) => d.signal(cx, r, signo).await,
            (AnyDriver::Docker(d), AnyRun::Docker(r)) => d.signal(cx, r, signo).await,
            _ => Err(RunError::Mixed),
        }
    }

    fn stop(&self, cx: &RunCtx<'_>, run: &AnyRun) {
        match (self, run) {
            (AnyDriver::Spawn(d), AnyRun::Spawn(r)) => d.stop(cx, r),
            (AnyDriver::Docker(d), AnyRun::Docker(r)) => d.stop(cx, r),
            _ => tracing::error!("{MIXED}"),
        }
    }

    async fn stats(&self, handle: &Handle, token: Option<Token>) -> Result<CgroupStats, RunError> {
        match self {
            AnyDriver::Spawn(d) => d.stats(handle, token).await,
            AnyDriver::Docker(d) => d.stats(handle, token).await,
        }
    }

    async fn destroy(&self, cx: &RunCtx<'_>, handle: &Handle) {
        match self {
            AnyDriver::Spawn(d) => d.destroy(cx, handle).await,
            AnyDriver::Docker(d) => d.destroy(cx, handle).await,
        }
    }
}

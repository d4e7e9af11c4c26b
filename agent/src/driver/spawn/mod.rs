//! The spawn driver (`raw_exec`, `exec`): each run under its own tend-spawn,
//! which the agent execs with the run's config on stdin ([`launch`]), then
//! talks to over its socket ([`client`], [`retry`]). A run outlives the agent;
//! a new agent takes it up by its handle, and a supervisor that lives but does
//! not answer is retried with backoff, never declared lost.

pub mod client;
pub mod config;
pub mod launch;
pub mod launcher;
pub mod oci;
mod reach;
pub mod retry;

pub use client::{Client, ClientError};
pub use launch::{launch, LaunchError};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tend_proto::msg::CgroupStats;
use tend_proto::{ExitStatus, Request, Response, StartReport, Token, PROTOCOL_VERSION};
use tracing::Instrument;

use super::{Control, Controls, Ended, Recovered, RunCtx, RunError, StartSpec, TaskDriver};
use crate::paths::{self, Dirs};
use crate::state::{Handle, TaskPhase};
use config::Launch;
use reach::{
    daemon_gone, daemon_of, destroy_run, kill_task_directly, reach_daemon, reattach, Reach,
};

/// The spawn driver's settings: the agent's, for every run it starts.
#[derive(Debug, Clone)]
pub struct SpawnDriver {
    /// The tend-spawn binary.
    pub spawn_bin: PathBuf,
    /// Data and run dirs (sockets, alloc dirs).
    pub dirs: Dirs,
    /// chroot_env of exec tasks that set none.
    pub chroot_env: Vec<(String, String)>,
    /// cgroup parent of every task.
    pub cgroup_parent: String,
    /// Whether exec tasks may run as root.
    pub allow_root: bool,
    /// Whether oci tasks may run as root.
    pub oci_allow_root: bool,
    /// Whether an oci bundle may bind host paths read-write.
    pub oci_host_binds: bool,
    /// The host's MHz, all cores, for `cpu_hard_limit` (None: /proc/cpuinfo).
    pub cpu_total_compute: Option<u64>,
    /// How long a tend-spawn waits for Release after its task ended.
    pub linger: Duration,
    /// What execs tend-spawn (None: the agent itself).
    pub launcher: Option<std::sync::Arc<launcher::Launcher>>,
}

/// The address of a run's tend-spawn: what signal and stop need.
#[derive(Debug, Clone)]
pub struct Link {
    socket: PathBuf,
    token: Token,
    handle: Handle,
}

/// A run under its tend-spawn; the connection is made by the wait when there
/// is none yet.
pub struct SpawnRun {
    client: Option<Client>,
    link: Link,
}

/// How long a stats request may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

impl TaskDriver for SpawnDriver {
    type Run = SpawnRun;

    async fn start(&self, cx: &RunCtx<'_>, spec: StartSpec<'_>) -> Result<SpawnRun, Ended> {
        self.start_run(cx, spec).await
    }

    async fn recover(
        &self,
        cx: &RunCtx<'_>,
        handle: Handle,
        ctl: &mut Controls,
        unreachable: &mut (dyn FnMut() + Send),
    ) -> Recovered<SpawnRun> {
        reattach(cx, handle, ctl, unreachable).await
    }

    async fn wait(&self, cx: &RunCtx<'_>, run: SpawnRun, ctl: &mut Controls) -> Ended {
        SpawnDriver::waiting(cx, run, ctl).await
    }

    async fn signal(&self, cx: &RunCtx<'_>, run: &SpawnRun, signo: i32) -> Result<(), RunError> {
        signal_run(cx, &run.link, signo).await
    }

    fn stop(&self, cx: &RunCtx<'_>, run: &SpawnRun) {
        request_stop(cx, &run.link);
    }

    async fn stats(&self, handle: &Handle, token: Option<Token>) -> Result<CgroupStats, RunError> {
        let Some(socket) = handle.socket_path.as_deref() else {
            return Err(RunError::NoStats {
                driver: handle.driver.clone(),
            });
        };
        let token = token.ok_or(RunError::NoToken)?;
        let mut stats = ask_stats(Path::new(socket), token).await?;
        if handle.cgroup.is_none() {
            // No cgroup of its own: whatever the supervisor says is not the task's.
            stats = CgroupStats::default();
        }
        Ok(stats)
    }

    async fn destroy(&self, cx: &RunCtx<'_>, handle: &Handle) {
        destroy_run(cx, handle).await;
    }
}

impl SpawnDriver {
    /// The wait of a run, with no layer of its own around [`wait_run`]: every
    /// waiting task keeps this future for as long as its task runs, and an
    /// async wrapper would keep a second copy of the run beside it.
    pub fn waiting<'a>(
        cx: &'a RunCtx<'a>,
        run: SpawnRun,
        ctl: &'a mut Controls,
    ) -> impl Future<Output = Ended> + Send + 'a {
        let SpawnRun { client, link } = run;
        wait_run(cx, client, link, ctl)
    }

    /// Start a new run: persist the handle before the daemon exists (so a
    /// crash right after is still found), launch, persist again.
    async fn start_run(&self, cx: &RunCtx<'_>, spec: StartSpec<'_>) -> Result<SpawnRun, Ended> {
        let (alloc_id, task, run) = (cx.alloc_id, cx.task, spec.run);
        let dir = self.dirs.alloc(alloc_id);
        let exit_path = dir.exit_status(&task.name);
        let never = |msg: String| super::never_started(cx, run, msg);
        let setup = spec.setup;
        let token = Token(paths::random_bytes::<32>());
        let config = match config::spawn_config(&Launch {
            dirs: &self.dirs,
            alloc_id,
            alloc: &dir,
            task,
            run,
            env: setup.env,
            command: setup.command.unwrap_or_default(),
            args: setup.args,
            token,
            chroot_env: &self.chroot_env,
            cgroup_parent: &self.cgroup_parent,
            allow_root: if task.driver == crate::jobspec::Driver::Oci {
                self.oci_allow_root
            } else {
                self.allow_root
            },
            oci_host_binds: self.oci_host_binds,
            cpu_total_compute: self.cpu_total_compute,
        }) {
            Ok(mut c) => {
                c.linger_ms = u64::try_from(self.linger.as_millis()).unwrap_or(u64::MAX);
                c
            }
            Err(e) => return Err(never(e.to_string())),
        };
        let mut handle = Handle {
            driver: task.driver.name().to_string(),
            run,
            socket_path: Some(config.socket_path.clone()),
            daemon_pid: None,
            daemon_start_time: None,
            instance: None,
            task_pid: None,
            task_start_time: None,
            cgroup: config.cgroup.as_ref().map(|c| c.path.clone()),
            exit_status_path: exit_path.display().to_string(),
            protocol_version: PROTOCOL_VERSION,
            container_id: None,
        };
        // The token and the record that names the run's socket, durable
        // together before the launch: an agent killed right after finds the
        // supervisor and can speak to it.
        if let Err(e) = cx.journal.change_with_token(&token, &mut |r| {
            r.run = run;
            r.phase = TaskPhase::Pending;
            r.handle = Some(handle.clone());
            None
        }) {
            return Err(never(e.to_string()));
        }
        let launched = match launch(&self.spawn_bin, &config, self.launcher.as_deref()).await {
            Ok(l) => l,
            // Nothing ran: the binary did not execute or never had its config.
            Err(
                e @ (LaunchError::NotFound { .. }
                | LaunchError::Exec { .. }
                | LaunchError::Send { .. }),
            ) => {
                let message = e.to_string();
                cx.journal
                    .update(|r| Some(r.event("failed", format!("failed to start: {message}"))));
                return Err(never(message));
            }
            // tend-spawn read its config and then died or went silent: it may have
            // started the task, so "never started" would be a guess. Its exit file
            // (written for a failure it saw) decides, else the run is lost and
            // whatever it started is killed.
            Err(e) => {
                return Err(daemon_gone(cx, &handle, &e.to_string()).await);
            }
        };
        let (daemon_pid, task_pid, instance, welcome) = match launched.report {
            StartReport::Started {
                daemon_pid,
                task_pid,
                instance,
            } => (daemon_pid, task_pid, instance, None),
            StartReport::StartedWithConnection(w) => {
                (w.daemon_pid, w.task_pid, w.instance, Some(w))
            }
            StartReport::Failed { errno, message, .. } => {
                cx.journal.update(|r| {
                    r.start_errno = (errno != 0).then_some(errno);
                    Some(r.event("failed", format!("failed to start: {message}")))
                });
                // tend-spawn wrote the exit file; prefer it, it has the details.
                return Err(ExitStatus::read(&exit_path)
                    .ok()
                    .filter(|e| e.run == run)
                    .map_or_else(|| never(message), Ended::Exit));
            }
        };
        handle.daemon_pid = Some(daemon_pid);
        handle.daemon_start_time = crate::ident::start_time(daemon_pid);
        handle.instance = Some(instance.to_string());
        handle.task_pid = Some(task_pid);
        handle.task_start_time = crate::ident::start_time(task_pid);
        let socket = PathBuf::from(&config.socket_path);
        cx.journal.update(|r| {
            r.phase = TaskPhase::Running;
            // A new run has neither failed nor been lost (yet).
            r.failed = false;
            r.lost = false;
            r.stopped = false;
            r.unreachable = None;
            r.handle = Some(handle.clone());
            r.started_at = Some(tend_proto::time::now());
            r.finished_at = None;
            Some(r.event(
                "started",
                format!("run {run}: pid {task_pid} (tend-spawn {daemon_pid})"),
            ))
        });
        // The task started: whatever happens now, its daemon (or its absence)
        // decides how the run ended, never a made-up "never started". The
        // first connection came with the start where the daemon took it
        // over; else it is made here. One that fails is made again by the
        // wait, for as long as the daemon lives.
        let client = match (launched.connection, welcome) {
            (Some(stream), Some(w)) => Some(Client::handed(&socket, stream, w)),
            _ => match retry::connect_once(&socket, token).await {
                Ok(c) if c.welcome().instance == instance => Some(c),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, daemon_pid, "the first connection to tend-spawn failed");
                    None
                }
            },
        };
        Ok(SpawnRun {
            client,
            link: Link {
                socket,
                token,
                handle,
            },
        })
    }
}
/// Wait for the run's end, serving stop and signal requests meanwhile. A
/// connection that fails while the daemon lives is made again (the daemon
/// pushes the exit to every waiter, at once if the task has already ended);
/// only the daemon's death hands the run to its exit file.
async fn wait_run(
    cx: &RunCtx<'_>,
    mut client: Option<Client>,
    link: Link,
    ctl: &mut Controls,
) -> Ended {
    let (socket, token, handle) = (&link.socket, link.token, &link.handle);
    let daemon = daemon_of(handle);
    if ctl.stopping {
        // Taken up after a stop was asked for (the last agent may have died
        // before it reached the daemon): ask again; a second Stop is harmless.
        request_stop(cx, &link);
    }
    let result = loop {
        let mut c = match client.take() {
            Some(c) => c,
            None => {
                match Box::pin(reach_daemon(cx, handle, socket, token, ctl, &mut || {})).await {
                    Reach::Connected(c) => c,
                    Reach::Gone(why) => break Err((None, why)),
                }
            }
        };
        match wait_on(cx, &mut c, &link, ctl).await {
            Ok(exit) => break Ok((c, exit)),
            // The connection failed, not the daemon: reach it again.
            Err(e) if daemon.is_some_and(|d| d.alive()) => {
                tracing::warn!(error = %e, "the connection to a live tend-spawn failed; reconnecting");
            }
            Err(e) => break Err((Some(c), e.to_string())),
        }
    };
    match result {
        Ok((client, exit)) => {
            // Released before it is recorded: once recorded, no agent would
            // take this daemon up again, and an agent killed in between would
            // leave it lingering unreleased. Released first, a crash before
            // the record finds the daemon gone and its exit file, which it
            // wrote before it pushed this exit: the same exit either way.
            // On the connection that brought the exit, and not waiting for
            // the answer: no new connection, no handshake and none of the
            // daemon's own work (it syncs its exit file right after pushing
            // the exit) between the exit and its record. A written frame is
            // in the daemon's receive queue: it takes it whatever happens here.
            match tokio::time::timeout(RELEASE_TIMEOUT, client.release_and_close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "release failed"),
                Err(_) => tracing::warn!("release not sent in time; the daemon lingers"),
            }
            Ended::Exit(exit)
        }
        Err((_, e)) => {
            let pid = handle
                .daemon_pid
                .map_or_else(|| "?".to_string(), |p| p.to_string());
            Box::pin(daemon_gone(
                cx,
                handle,
                &format!("tend-spawn (pid {pid}) died: {e}"),
            ))
            .await
        }
    }
}

/// One wait on one connection, serving stop and signal requests meanwhile.
async fn wait_on(
    cx: &RunCtx<'_>,
    client: &mut Client,
    link: &Link,
    ctl: &mut Controls,
) -> Result<ExitStatus, RunError> {
    let handle = &link.handle;
    let wait = client.wait();
    tokio::pin!(wait);
    // The daemon's death is heard from its pidfd as well as from the end of
    // its connection, whichever comes first.
    let daemon_ended = async {
        match daemon_of(handle) {
            Some(d) => crate::pidwatch::ended(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(daemon_ended);
    let mut ctl_open = true;
    loop {
        tokio::select! {
            r = &mut wait => return Ok(r?),
            () = &mut daemon_ended => return Err(RunError::DaemonExited),
            c = ctl.recv(), if ctl_open => match c {
                None => ctl_open = false,
                Some(Control::Stop) => {
                    ctl.stopping = true;
                    request_stop(cx, link);
                }
                Some(Control::Signal(signo, reply)) => {
                    // Boxed, as every path the wait takes once in a while:
                    // each waiting task keeps room for the largest inline.
                    let _ = reply.send(Box::pin(signal_run(cx, link, signo)).await);
                }
                Some(Control::Restart(why)) => {
                    if ctl.take_restart(why) {
                        request_stop(cx, link);
                    }
                }
            }
        }
    }
}

/// How long the agent waits for a daemon to take its Release.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a signal request is retried against a daemon that does not take it.
const SIGNAL_PATIENCE: Duration = Duration::from_secs(8);

/// Ask the daemon to stop the task with its kill signal and grace, in the
/// background: retried with backoff until the daemon takes it; if it has not
/// by the end of kill_timeout, the agent kills the task itself. The wait
/// sees the end either way.
fn request_stop(cx: &RunCtx<'_>, link: &Link) {
    let task = cx.task;
    cx.note_stopping();
    let req = Request::Stop {
        signal: task.kill_signal,
        grace_ms: u64::try_from(task.kill_timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let (journal, kill_timeout) = (cx.journal.clone(), task.kill_timeout);
    let Link {
        socket,
        token,
        handle,
    } = link.clone();
    tokio::spawn(
        async move {
            let until = Instant::now() + kill_timeout.max(retry::ATTEMPT_TIMEOUT);
            match retry::request_until(&socket, token, req, daemon_of(&handle), until).await {
                Ok(()) => {}
                Err(retry::RetryError::Unanswered(why)) => {
                    kill_task_directly(journal.as_ref(), &handle, &why.to_string());
                }
                // Refused: the task has already ended; gone: the wait hears it.
                Err(e) => tracing::info!(error = %e, "stop request not taken"),
            }
        }
        .in_current_span(),
    );
}

/// Send a signal through the run's tend-spawn, retried for a while against
/// one that does not take it at once.
async fn signal_run(cx: &RunCtx<'_>, link: &Link, signo: i32) -> Result<(), RunError> {
    let until = Instant::now() + SIGNAL_PATIENCE;
    let r = retry::request_until(
        &link.socket,
        link.token,
        Request::Signal(signo),
        daemon_of(&link.handle),
        until,
    )
    .await;
    if r.is_ok() {
        cx.note_signaled(signo);
    }
    Ok(r?)
}

/// StatsV2 on a fresh connection; a supervisor that predates it is asked
/// for the old Stats instead.
async fn ask_stats(socket: &Path, token: Token) -> Result<CgroupStats, RunError> {
    let attempt = |req: Request| async move {
        let mut c = Client::connect(socket, token).await?;
        c.request(req).await
    };
    let within = |req: Request| async move {
        tokio::time::timeout(STATS_TIMEOUT, attempt(req))
            .await
            .map_err(|_| RunError::SupervisorTimeout {
                socket: socket.to_path_buf(),
                secs: STATS_TIMEOUT.as_secs(),
            })
    };
    let unexpected = |r: Response| RunError::Unexpected {
        answer: Box::new(r),
    };
    match within(Request::StatsV2).await? {
        Ok(Response::StatsV2(s)) => Ok(*s),
        // A supervisor older than StatsV2 cannot decode it and drops the connection.
        Err(ClientError::Refused { .. } | ClientError::Closed { .. }) => {
            match within(Request::Stats).await?? {
                Response::Stats(old) => {
                    let mut s = CgroupStats::default();
                    s.memory.current = old.memory_bytes;
                    s.memory.peak = old.memory_peak_bytes;
                    s.cpu.usage_us = old.cpu_usage_us;
                    s.pids = old.pids;
                    Ok(s)
                }
                other => Err(unexpected(other)),
            }
        }
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(e.into()),
    }
}

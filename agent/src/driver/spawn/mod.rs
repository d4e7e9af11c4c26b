//! The spawn driver (`raw_exec`, `exec`): each run under its own tend-spawn,
//! which the agent execs with the run's config on stdin ([`launch`]), then
//! talks to over its socket ([`client`], [`retry`]). A run outlives the agent;
//! a new agent takes it up by its handle, and a supervisor that lives but does
//! not answer is retried with backoff, never declared lost.

pub mod client;
pub mod config;
pub mod launch;
pub mod retry;

pub use client::{Client, ClientError};
pub use launch::{launch, LaunchError};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tend_proto::msg::CgroupStats;
use tend_proto::{ExitStatus, Request, Response, StartReport, Token, PROTOCOL_VERSION};
use tracing::Instrument;

use super::{Control, Controls, Ended, Journal, Recovered, RunCtx, StartSpec, TaskDriver};
use crate::ident::ProcId;
use crate::paths::{self, Dirs};
use crate::state::{Handle, TaskPhase};
use config::Launch;

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
    /// The host's MHz, all cores, for `cpu_hard_limit` (None: /proc/cpuinfo).
    pub cpu_total_compute: Option<u64>,
    /// How long a tend-spawn waits for Release after its task ended.
    pub linger: Duration,
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
        wait_run(cx, run, ctl).await
    }

    async fn signal(&self, cx: &RunCtx<'_>, run: &SpawnRun, signo: i32) -> Result<(), String> {
        signal_run(cx, &run.link, signo).await
    }

    fn stop(&self, cx: &RunCtx<'_>, run: &SpawnRun) {
        request_stop(cx, &run.link);
    }

    async fn stats(&self, handle: &Handle, token: Option<Token>) -> Result<CgroupStats, String> {
        let Some(socket) = handle.socket_path.as_deref() else {
            return Err(format!(
                "the {} driver does not report stats",
                handle.driver
            ));
        };
        let token = token.ok_or_else(|| "its token is not kept".to_string())?;
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
            allow_root: self.allow_root,
            cpu_total_compute: self.cpu_total_compute,
        }) {
            Ok(mut c) => {
                c.linger_ms = u64::try_from(self.linger.as_millis()).unwrap_or(u64::MAX);
                c
            }
            Err(e) => return Err(never(e.to_string())),
        };
        if let Err(e) = cx.journal.put_token(&token) {
            return Err(never(e));
        }
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
        cx.journal.update(|r| {
            r.run = run;
            r.phase = TaskPhase::Pending;
            r.handle = Some(handle.clone());
            None
        });
        let report = match launch(&self.spawn_bin, &config).await {
            Ok(r) => r,
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
        let (daemon_pid, task_pid, instance) = match report {
            StartReport::Started {
                daemon_pid,
                task_pid,
                instance,
            } => (daemon_pid, task_pid, instance),
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
        // decides how the run ended, never a made-up "never started". A first
        // connection that fails is made again by the wait, for as long as the
        // daemon lives.
        let client = match retry::connect_once(&socket, token).await {
            Ok(c) if c.welcome().instance == instance => Some(c),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, daemon_pid, "the first connection to tend-spawn failed");
                None
            }
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
/// How long a reattach gives a tend-spawn, launched just before the last agent
/// died, to bind its socket.
const LAUNCH_GRACE: Duration = Duration::from_millis(500);

/// Whether the run of a handle persisted before its launch never started:
/// no socket (tend-spawn binds it before it starts the task and removes it
/// only when it leaves, after writing the exit file), no exit file of the run,
/// and no process of the run.
async fn never_launched(alloc_id: &str, task: &str, handle: &Handle) -> bool {
    let Some(socket) = handle.socket_path.as_deref().map(Path::new) else {
        return false;
    };
    if handle.daemon_pid.is_some() {
        return false;
    }
    let t0 = Instant::now();
    while !socket.exists() {
        if t0.elapsed() >= LAUNCH_GRACE {
            let exit_file = match ExitStatus::read(Path::new(&handle.exit_status_path)) {
                Ok(e) => e.run == handle.run,
                Err(tend_proto::exit::ExitFileError::NotFound { .. }) => false,
                // Unreadable: something was written; not a never-started run.
                Err(_) => true,
            };
            let (a, t) = (alloc_id.to_string(), task.to_string());
            let running = tokio::task::spawn_blocking(move || {
                !crate::ident::processes_of_task(&a, &t).is_empty()
            })
            .await
            .unwrap_or(true);
            return !exit_file && !running;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The daemon of a handle, when the handle names it by pid and start time.
fn daemon_of(handle: &Handle) -> Option<ProcId> {
    match (handle.daemon_pid, handle.daemon_start_time) {
        (Some(pid), Some(start_time)) => Some(ProcId { pid, start_time }),
        _ => None,
    }
}

/// The task process of a handle, when the handle names it.
fn task_proc_of(handle: &Handle) -> Option<ProcId> {
    match (handle.task_pid, handle.task_start_time) {
        (Some(pid), Some(start_time)) => Some(ProcId { pid, start_time }),
        _ => None,
    }
}

/// What came of trying to reach a run's tend-spawn.
enum Reach {
    /// Connected and welcomed by the run's own daemon.
    Connected(Client),
    /// Its process is gone (or, known by its socket only, it never answered).
    Gone(String),
}

/// A daemon known by its socket alone (its handle was persisted before its
/// start report) gets this many attempts: with no pid there is no telling
/// whether it lives.
const UNKNOWN_DAEMON_ATTEMPTS: u32 = 10;

/// Reach the tend-spawn of a run, for as long as its process lives.
///
/// A live daemon that does not answer is marked `unreachable` (the reason in
/// the record and in an event) and tried again with backoff, never declared
/// lost. Meanwhile a stop is remembered, and once the task's kill_timeout has
/// passed with the daemon still silent, the agent kills the task itself
/// through its pidfd; a signal is refused with the reason.
#[allow(clippy::too_many_arguments)]
async fn reach_daemon(
    cx: &RunCtx<'_>,
    handle: &Handle,
    socket: &Path,
    token: Token,
    ctl: &mut Controls,
    on_unreachable: &mut (dyn FnMut() + Send),
) -> Reach {
    let task = cx.task;
    let daemon = daemon_of(handle);
    let mut backoff = retry::Backoff::default();
    let mut attempts = 0u32;
    let mut unreachable = false;
    let mut stop_since: Option<Instant> = ctl.stopping.then(Instant::now);
    let mut killed = false;
    let mut ctl_open = true;
    loop {
        attempts += 1;
        let why = match retry::connect_once(socket, token).await {
            Ok(c) => match &handle.instance {
                Some(i) if *i != c.welcome().instance.to_string() => format!(
                    "{} answers another tend-spawn (instance {}) than the run's ({i})",
                    socket.display(),
                    c.welcome().instance
                ),
                _ => {
                    if unreachable {
                        cx.journal.update(|r| {
                            r.unreachable = None;
                            Some(r.event(
                                "reachable",
                                format!("tend-spawn answers again (after {attempts} attempts)"),
                            ))
                        });
                    }
                    return Reach::Connected(c);
                }
            },
            Err(e) => e,
        };
        match daemon {
            Some(d) if !d.alive() => return Reach::Gone(why),
            None if attempts >= UNKNOWN_DAEMON_ATTEMPTS => return Reach::Gone(why),
            _ => {}
        }
        if !unreachable && attempts >= 2 {
            unreachable = true;
            let pid = daemon.map_or_else(|| "?".to_string(), |d| d.pid.to_string());
            tracing::warn!(error = %why, "tend-spawn is alive but does not answer; retrying");
            cx.journal.update(|r| {
                r.unreachable = Some(why.clone());
                Some(r.event(
                    "unreachable",
                    format!("tend-spawn (pid {pid}) is alive but does not answer: {why}; retrying"),
                ))
            });
            on_unreachable();
        }
        if let Some(since) = stop_since {
            if !killed && since.elapsed() >= task.kill_timeout {
                killed = true;
                kill_task_directly(cx.journal.as_ref(), handle, &why);
            }
        }
        let pause = tokio::time::sleep(backoff.step());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                c = ctl.recv(), if ctl_open => match c {
                    None => ctl_open = false,
                    Some(Control::Stop) => {
                        ctl.stopping = true;
                        stop_since.get_or_insert_with(Instant::now);
                    }
                    Some(Control::Signal(_, reply)) => {
                        let _ = reply.send(Err(format!(
                            "tend-spawn does not answer ({why}); the signal was not sent"
                        )));
                    }
                }
            }
        }
    }
}

/// The last resort of a stop whose tend-spawn does not take it: SIGKILL to
/// the task's process group and the task, through a pidfd checked against
/// the task's start time (never a bare pid). The daemon, when it answers
/// again, records the exit as usual.
fn kill_task_directly(journal: &dyn Journal, handle: &Handle, why: &str) {
    let Some(proc_id) = task_proc_of(handle) else {
        tracing::error!(
            "the stop was not taken and the task's pid is unknown: it cannot be killed"
        );
        return;
    };
    let left = crate::ident::Leftovers {
        task: Some(proc_id),
        ..Default::default()
    };
    for problem in left.kill() {
        tracing::warn!("{problem}");
    }
    journal.update(|r| {
        Some(r.event(
            "killed",
            format!(
                "tend-spawn did not take the stop within kill_timeout ({why}): \
                 the agent sent SIGKILL to the task (pid {})",
                proc_id.pid
            ),
        ))
    });
}

/// Take up a run after an agent restart.
async fn reattach(
    cx: &RunCtx<'_>,
    mut handle: Handle,
    ctl: &mut Controls,
    on_unreachable: &mut (dyn FnMut() + Send),
) -> Recovered<SpawnRun> {
    if never_launched(cx.alloc_id, &cx.task.name, &handle).await {
        return Recovered::NeverLaunched(handle.run);
    }
    let token = cx.journal.token();
    let (Some(socket), Some(token)) = (handle.socket_path.clone(), token) else {
        return Recovered::Ended(daemon_gone(cx, &handle, "no socket or token was recorded").await);
    };
    let socket = PathBuf::from(socket);
    // A daemon recorded by pid must still be that very process; one persisted
    // before its start report is found by its socket and token alone.
    if daemon_of(&handle).is_some_and(|d| !d.alive()) {
        return Recovered::Ended(daemon_gone(cx, &handle, "tend-spawn is gone").await);
    }
    let client = match reach_daemon(cx, &handle, &socket, token, ctl, on_unreachable).await {
        Reach::Connected(c) => c,
        Reach::Gone(why) => {
            return Recovered::Ended(
                daemon_gone(cx, &handle, &format!("tend-spawn is gone ({why})")).await,
            )
        }
    };
    let w = *client.welcome();
    let recorded_pid = handle.daemon_pid;
    if handle.daemon_pid.is_none() {
        handle.daemon_pid = Some(w.daemon_pid);
        handle.daemon_start_time = crate::ident::start_time(w.daemon_pid);
        handle.instance = Some(w.instance.to_string());
        handle.task_pid = Some(w.task_pid);
        handle.task_start_time = crate::ident::start_time(w.task_pid);
    }
    let h = handle.clone();
    // The record already names this daemon unless it was adopted by its
    // socket (or was marked unreachable): only then is there something new
    // to persist.
    let persist =
        recorded_pid.is_none() || cx.journal.record().is_some_and(|r| r.unreachable.is_some());
    let change = |r: &mut crate::state::TaskRecord| {
        r.phase = TaskPhase::Running;
        r.handle = Some(h);
        r.unreachable = None;
        Some(r.event(
            "reattached",
            format!("run {}: tend-spawn answered", handle.run),
        ))
    };
    if persist {
        cx.journal.update(change);
    } else {
        cx.journal.note(change);
    }
    Recovered::Live(SpawnRun {
        client: Some(client),
        link: Link {
            socket,
            token,
            handle,
        },
    })
}

/// The daemon of a run is gone: its exit file decides; without one the run is
/// lost, and whatever is left of it is killed.
async fn daemon_gone(cx: &RunCtx<'_>, handle: &Handle, why: &str) -> Ended {
    // The daemon writes the file before it answers Wait, and nobody else writes
    // it: once the daemon is dead, one read decides. While it still exits (a
    // closed connection can come before its death), give it a moment.
    let path = Path::new(&handle.exit_status_path);
    let daemon = match (handle.daemon_pid, handle.daemon_start_time) {
        (Some(pid), Some(start_time)) => Some(ProcId { pid, start_time }),
        _ => None,
    };
    for _ in 0..25 {
        if let Ok(e) = ExitStatus::read(path) {
            // A file of another run does not count.
            if e.run == handle.run {
                return Ended::Exit(e);
            }
        }
        if !daemon.is_some_and(|d| d.alive()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Ok(e) = ExitStatus::read(path) {
        if e.run == handle.run {
            return Ended::Exit(e);
        }
    }
    destroy_run(cx, handle).await;
    Ended::Lost(format!(
        "{why}, and it left no exit status file: the exit is unknown"
    ))
}

/// Kill what is left of a lost run, off the runtime's threads.
async fn destroy_run(cx: &RunCtx<'_>, handle: &Handle) {
    let h = handle.clone();
    let run_of = (cx.alloc_id.to_string(), cx.task.name.clone());
    let _ = tokio::task::spawn_blocking(move || kill_leftovers(&h, run_of)).await;
}

/// Kill what is left of a lost run (see [`crate::ident::Leftovers`]).
fn kill_leftovers(handle: &Handle, run_of: (String, String)) {
    let proc_id = |pid: Option<i32>, st: Option<u64>| match (pid, st) {
        (Some(pid), Some(start_time)) => Some(ProcId { pid, start_time }),
        _ => None,
    };
    let left = crate::ident::Leftovers {
        daemon: proc_id(handle.daemon_pid, handle.daemon_start_time),
        task: proc_id(handle.task_pid, handle.task_start_time),
        cgroup: handle.cgroup.clone(),
        env: Some(run_of),
        socket: handle.socket_path.as_ref().map(PathBuf::from),
    };
    for problem in left.kill() {
        tracing::warn!("{problem}");
    }
}

/// Wait for the run's end, serving stop and signal requests meanwhile. A
/// connection that fails while the daemon lives is made again (the daemon
/// pushes the exit to every waiter, at once if the task has already ended);
/// only the daemon's death hands the run to its exit file.
async fn wait_run(cx: &RunCtx<'_>, run: SpawnRun, ctl: &mut Controls) -> Ended {
    let SpawnRun { client, link } = run;
    let (socket, token, handle) = (&link.socket, link.token, &link.handle);
    let daemon = daemon_of(handle);
    if ctl.stopping {
        // Taken up after a stop was asked for (the last agent may have died
        // before it reached the daemon): ask again; a second Stop is harmless.
        request_stop(cx, &link);
    }
    let mut client = client;
    let result = loop {
        let mut c = match client.take() {
            Some(c) => c,
            None => match reach_daemon(cx, handle, socket, token, ctl, &mut || {}).await {
                Reach::Connected(c) => c,
                Reach::Gone(why) => break Err((None, why)),
            },
        };
        match wait_on(cx, &mut c, &link, ctl).await {
            Ok(exit) => break Ok((c, exit)),
            // The connection failed, not the daemon: reach it again.
            Err(e) if daemon.is_some_and(|d| d.alive()) => {
                tracing::warn!(error = %e, "the connection to a live tend-spawn failed; reconnecting");
            }
            Err(e) => break Err((Some(c), e)),
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
            daemon_gone(cx, handle, &format!("tend-spawn (pid {pid}) died: {e}")).await
        }
    }
}

/// One wait on one connection, serving stop and signal requests meanwhile.
async fn wait_on(
    cx: &RunCtx<'_>,
    client: &mut Client,
    link: &Link,
    ctl: &mut Controls,
) -> Result<ExitStatus, String> {
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
            r = &mut wait => return r.map_err(|e| e.to_string()),
            () = &mut daemon_ended => return Err("its pidfd says it exited".to_string()),
            c = ctl.recv(), if ctl_open => match c {
                None => ctl_open = false,
                Some(Control::Stop) => {
                    ctl.stopping = true;
                    request_stop(cx, link);
                }
                Some(Control::Signal(signo, reply)) => {
                    let _ = reply.send(signal_run(cx, link, signo).await);
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
                    kill_task_directly(journal.as_ref(), &handle, &why);
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
async fn signal_run(cx: &RunCtx<'_>, link: &Link, signo: i32) -> Result<(), String> {
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
    r.map_err(|e| e.to_string())
}

/// StatsV2 on a fresh connection; a supervisor that predates it is asked
/// for the old Stats instead.
async fn ask_stats(socket: &Path, token: Token) -> Result<CgroupStats, String> {
    let attempt = |req: Request| async move {
        let mut c = Client::connect(socket, token).await?;
        c.request(req).await
    };
    let within = |req: Request| async move {
        tokio::time::timeout(STATS_TIMEOUT, attempt(req))
            .await
            .map_err(|_| {
                format!(
                    "tend-spawn at {} did not answer within {} s",
                    socket.display(),
                    STATS_TIMEOUT.as_secs()
                )
            })
    };
    let unexpected = |r: Response| format!("tend-spawn answered {r:?} to a stats request");
    match within(Request::StatsV2).await? {
        Ok(Response::StatsV2(s)) => Ok(*s),
        // A supervisor older than StatsV2 cannot decode it and drops the connection.
        Err(ClientError::Refused { .. } | ClientError::Closed { .. }) => {
            match within(Request::Stats).await?.map_err(|e| e.to_string())? {
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
        Err(e) => Err(e.to_string()),
    }
}

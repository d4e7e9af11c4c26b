//! One task's life inside the agent: start (or reattach), wait, record the end,
//! apply the restart policy. Each task is one tokio task; the API talks to it
//! through a channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tend_proto::{ExitStatus, Request, StartReport, Token, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::restart::{Decision, RestartTracker};
use super::{AgentError, Inner};
use crate::driver::docker::{ContainerState, DockerDriver, DockerStart, ExitMeta};
use crate::driver::{self, Launch};
use crate::ident::ProcId;
use crate::jobspec::{Driver, Group, Task};
use crate::paths;
use crate::spawn::launch::LaunchError;
use crate::spawn::{self, retry, Client};
use crate::state::{AllocRecord, Desired, Handle, TaskPhase};

/// What the API asks of a running task.
#[derive(Debug)]
pub enum Ctl {
    /// Stop it with its kill signal and timeout; no restart follows.
    Stop,
    /// Send it a signal.
    Signal(i32, oneshot::Sender<Result<(), String>>),
}

/// How a task loop begins.
#[derive(Debug, Clone)]
pub enum Start {
    /// Start a new run.
    Fresh,
    /// Take up the run this handle describes.
    Reattach(Handle),
}

/// How a task was taken up when the loop began (reported to the agent's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Its tend-spawn answered.
    Reattached,
    /// It had ended; its exit file was recorded.
    Exited,
    /// Neither: lost.
    Lost,
    /// A new run was started (or failed to start).
    Started,
    /// Its tend-spawn lives but does not answer yet: it is being retried.
    Unreachable,
}

/// Tells the agent's start, once, how a task was taken up.
struct Ready(Option<oneshot::Sender<Resolved>>);

impl Ready {
    fn say(&mut self, r: Resolved) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(r);
        }
    }
}

/// How one run ended.
#[derive(Debug, Clone)]
enum Ended {
    Exit(ExitStatus),
    Lost(String),
}

/// A run the agent is waiting on. One lives per task, so the size of the larger
/// variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Run {
    /// A process under its tend-spawn; the connection is made by the wait
    /// when there is none yet.
    Spawn {
        client: Option<Client>,
        socket: PathBuf,
        token: Token,
        handle: Handle,
    },
    /// A container.
    Docker {
        id: String,
        meta: ExitMeta,
        logs: tokio::task::JoinHandle<Result<(), driver::docker::DockerError>>,
    },
}

fn find<'a>(alloc: &'a AllocRecord, task: &str) -> Option<(&'a Group, &'a Task)> {
    let group = alloc.job.groups.iter().find(|g| g.name == alloc.group)?;
    let t = group.tasks.iter().find(|t| t.name == task)?;
    Some((group, t))
}

/// Check what can be checked before anything exists.
pub(crate) fn preflight(inner: &Inner, task: &Task) -> Result<(), AgentError> {
    if task.driver == Driver::Docker {
        let d = inner.docker.as_ref().ok_or_else(|| {
            AgentError::Invalid(format!(
                "task {}: driver docker is disabled on this agent",
                task.name
            ))
        })?;
        DockerDriver::check(d.options(), task).map_err(|e| AgentError::Invalid(e.to_string()))?;
        // The driver mounts each bind of the alloc dir for the engine itself.
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(AgentError::Invalid(format!(
                "task {}: driver docker: {}",
                task.name,
                driver::docker::binds::BindError::NotRoot { uid }
            )));
        }
        return Ok(());
    }
    driver::check_task(
        task,
        &inner.settings.chroot_env,
        inner.settings.config.exec_allows_root(),
    )
    .map_err(|e| AgentError::Invalid(e.to_string()))
}

/// Create the allocation's dirs and hand its tasks what they need.
pub(crate) fn prepare_alloc(
    inner: &Inner,
    mut record: AllocRecord,
) -> Result<AllocRecord, AgentError> {
    let alloc = inner.settings.dirs.alloc(&record.alloc_id);
    let group = record
        .job
        .groups
        .iter()
        .find(|g| g.name == record.group)
        .ok_or_else(|| AgentError::Invalid(format!("no group {}", record.group)))?;
    let names: Vec<&str> = group.tasks.iter().map(|t| t.name.as_str()).collect();
    alloc.create(&names).map_err(|e| {
        AgentError::Internal(format!("create alloc dir {}: {e}", alloc.root.display()))
    })?;
    for t in &group.tasks {
        match inner.ports.allocate(&record.alloc_id, &t.resources.ports) {
            Ok(p) => {
                record.ports.insert(t.name.clone(), p);
            }
            Err(e) => {
                inner.ports.release(&record.alloc_id);
                return Err(AgentError::Conflict(format!("task {}: {e}", t.name)));
            }
        }
        if t.driver == Driver::Exec {
            let user = t.user.as_deref().unwrap_or(driver::DEFAULT_EXEC_USER);
            let (uid, gid) = driver::resolve_user(user).ok_or_else(|| {
                AgentError::Invalid(format!("task {}: user: unknown user {user:?}", t.name))
            })?;
            alloc.prepare_for_user(&t.name, uid, gid).map_err(|e| {
                AgentError::Internal(format!("prepare {}: {e}", alloc.root.display()))
            })?;
        }
    }
    Ok(record)
}

/// The life of one task, inside a span naming it (entered on every poll, so
/// its fields never leak to the other tasks that share a worker thread).
pub(crate) async fn task_loop(
    inner: Arc<Inner>,
    alloc_id: String,
    name: String,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    start: Start,
    ready: Option<oneshot::Sender<Resolved>>,
) {
    let span = tracing::info_span!("task", alloc_id = %alloc_id, task = %name);
    task_life(inner, alloc_id, name, ctl, start, ready)
        .instrument(span)
        .await
}

async fn task_life(
    inner: Arc<Inner>,
    alloc_id: String,
    name: String,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    start: Start,
    ready: Option<oneshot::Sender<Resolved>>,
) {
    let mut ready = Ready(ready);
    let Some(alloc) = inner.alloc_record(&alloc_id) else {
        ready.say(Resolved::Lost);
        return;
    };
    let Some((group, task)) = find(&alloc, &name).map(|(g, t)| (g.clone(), t.clone())) else {
        tracing::error!("the allocation's job has no such task");
        ready.say(Resolved::Lost);
        return;
    };
    // Where an earlier agent left the restart window, if it did.
    let window = inner
        .task_record(&alloc_id, &name)
        .and_then(|r| r.restart_window);
    let mut tracker = RestartTracker::resume(
        group.restart,
        window.as_ref(),
        std::time::SystemTime::now(),
        Instant::now(),
    );
    let mut stopping = alloc.desired == Desired::Stop;
    let mut next = start;
    loop {
        let ended = match std::mem::replace(&mut next, Start::Fresh) {
            Start::Reattach(h) => match reattach(
                &inner,
                &alloc_id,
                &task,
                h,
                &mut ctl,
                &mut stopping,
                &mut ready,
            )
            .await
            {
                Attach::Live(run) => {
                    ready.say(Resolved::Reattached);
                    wait_run(&inner, &alloc_id, &task, *run, &mut ctl, &mut stopping).await
                }
                Attach::NeverLaunched(run) => {
                    // Started as the run it was meant to be.
                    inner.note_task(&alloc_id, &name, |r| {
                        r.run = run.saturating_sub(1);
                        None
                    });
                    continue;
                }
                Attach::Ended(e) => {
                    let r = match e {
                        Ended::Exit(_) => Resolved::Exited,
                        Ended::Lost(_) => Resolved::Lost,
                    };
                    ready.say(r);
                    e
                }
            },
            Start::Fresh => {
                if stopping || desired_stop(&inner, &alloc_id) {
                    ready.say(Resolved::Started);
                    inner.update_task(&alloc_id, &name, |r| {
                        r.stopped = true;
                        Some(finish_record(r, false, "stopped before it started"))
                    });
                    release_ports_if_done(&inner, &alloc_id);
                    return;
                }
                let r = start_run(&inner, &alloc, &group, &task).await;
                ready.say(Resolved::Started);
                match r {
                    Ok(run) => {
                        wait_run(&inner, &alloc_id, &task, run, &mut ctl, &mut stopping).await
                    }
                    Err(e) => e,
                }
            }
        };
        let failed = match &ended {
            Ended::Exit(e) => !e.success(),
            Ended::Lost(_) => true,
        };
        // What follows the run is decided first and persisted in the same
        // write as its end: a record that had the end without the decision
        // (handle gone, phase still running) would be started again, as a
        // task that never ran, by the next agent.
        stopping |= desired_stop(&inner, &alloc_id);
        let next_step = if stopping || !failed {
            Decision::Fail
        } else {
            tracker.on_failure(Instant::now())
        };
        let window = tracker.window(std::time::SystemTime::now(), Instant::now());
        match next_step {
            Decision::Fail => {
                let (failed_for_good, why) = if stopping {
                    (false, "stopped")
                } else if !failed {
                    (false, "completed")
                } else {
                    (true, "failed: restart attempts exhausted")
                };
                inner.update_task_events(&alloc_id, &name, |r| {
                    r.restart_window = window;
                    let end = record_end(r, ended);
                    if stopping && !r.lost {
                        // Ended as asked: the kill's 143 or 137 is no failure.
                        r.failed = false;
                        r.stopped = true;
                    }
                    vec![end, finish_record(r, failed_for_good, why)]
                });
                release_ports_if_done(&inner, &alloc_id);
                return;
            }
            Decision::Restart(delay) => {
                inner.update_task_events(&alloc_id, &name, |r| {
                    let end = record_end(r, ended);
                    r.phase = TaskPhase::Pending;
                    r.restarts += 1;
                    r.restart_window = window;
                    vec![
                        end,
                        r.event("restarting", format!("restarting in {}", humanize(delay))),
                    ]
                });
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        c = ctl.recv() => match c {
                            Some(Ctl::Stop) | None => {
                                finish(&inner, &alloc_id, &name, false, "stopped while waiting to restart");
                                return;
                            }
                            Some(Ctl::Signal(_, reply)) => {
                                let _ = reply.send(Err("the task is waiting to restart".into()));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn desired_stop(inner: &Inner, alloc_id: &str) -> bool {
    inner
        .alloc_record(alloc_id)
        .is_none_or(|a| a.desired == Desired::Stop)
}

fn finish(inner: &Inner, alloc_id: &str, task: &str, failed: bool, why: &str) {
    inner.update_task(alloc_id, task, |r| Some(finish_record(r, failed, why)));
    release_ports_if_done(inner, alloc_id);
}

/// The task's end, in its record.
fn finish_record(
    r: &mut crate::state::TaskRecord,
    failed: bool,
    why: &str,
) -> crate::state::TaskEvent {
    r.phase = TaskPhase::Dead;
    r.failed |= failed;
    r.handle = None;
    r.finished_at = Some(tend_proto::time::now());
    r.event("dead", why.to_string())
}

/// Give the allocation's ports back once every task of it is dead.
fn release_ports_if_done(inner: &Inner, alloc_id: &str) {
    let all_dead = inner
        .allocs
        .lock()
        .expect("allocs lock")
        .get(alloc_id)
        .is_some_and(|a| a.tasks.values().all(|t| t.record.phase == TaskPhase::Dead));
    if all_dead {
        inner.ports.release(alloc_id);
    }
}

/// A run's end, in the task's record.
fn record_end(r: &mut crate::state::TaskRecord, ended: Ended) -> crate::state::TaskEvent {
    match ended {
        Ended::Exit(e) => {
            let msg = crate::cli::run::describe_exit(&e);
            r.failed = !e.success();
            r.lost = false;
            r.last_exit = Some(e);
            r.handle = None;
            r.event("exited", msg)
        }
        Ended::Lost(why) => {
            r.failed = true;
            r.lost = true;
            r.last_exit = None;
            r.handle = None;
            r.event("lost", why)
        }
    }
}

/// Start a new run: move the last exit file aside, persist the handle before the
/// daemon exists (so a crash right after is still found), launch, persist again.
async fn start_run(
    inner: &Arc<Inner>,
    alloc: &AllocRecord,
    group: &Group,
    task: &Task,
) -> Result<Run, Ended> {
    let alloc_id = &alloc.alloc_id;
    let dir = inner.settings.dirs.alloc(alloc_id);
    let prev = inner.task_record(alloc_id, &task.name).map_or(0, |r| r.run);
    let run = prev + 1;
    // Only for a run that never started: one that did is decided by its daemon.
    let never = |msg: String| {
        let e = ExitStatus::never_started(alloc_id, &task.name, run, msg);
        if let Err(err) = e.write(&dir.exit_status(&task.name)) {
            tracing::error!(error = %err, "cannot write exit status file");
        }
        Ended::Exit(e)
    };
    let exit_path = dir.exit_status(&task.name);
    if prev > 0 && exit_path.exists() {
        if let Err(e) = std::fs::rename(&exit_path, dir.exit_status_of_run(&task.name, prev)) {
            tracing::warn!(error = %e, "cannot move the last exit status file aside");
        }
    }
    let ports = alloc.ports.get(&task.name).cloned().unwrap_or_default();
    let setup = match driver::task_setup(&driver::TaskContext {
        job: &alloc.job,
        group,
        index: alloc.index,
        task,
        alloc_id,
        alloc: &dir,
        ports: &ports,
        env_allowlist: &inner.settings.env_allowlist,
    }) {
        Ok(s) => s,
        Err(e) => return Err(never(e.to_string())),
    };
    if task.driver == Driver::Docker {
        return start_container(inner, alloc, task, run, setup, &ports)
            .await
            .map_err(Ended::Exit);
    }
    let token = Token(paths::random_bytes::<32>());
    let config = match driver::spawn_config(&Launch {
        dirs: &inner.settings.dirs,
        alloc_id,
        alloc: &dir,
        task,
        run,
        env: setup.env,
        command: setup.command.unwrap_or_default(),
        args: setup.args,
        token,
        chroot_env: &inner.settings.chroot_env,
        cgroup_parent: &inner.settings.cgroup_parent,
        allow_root: inner.settings.config.exec_allows_root(),
        cpu_total_compute: inner.settings.config.cpu_total_compute,
    }) {
        Ok(mut c) => {
            c.linger_ms = u64::try_from(inner.settings.linger.as_millis()).unwrap_or(u64::MAX);
            c
        }
        Err(e) => return Err(never(e.to_string())),
    };
    if let Err(e) = inner.store.put_token(alloc_id, &task.name, &token) {
        return Err(never(e.to_string()));
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
    inner.update_task(alloc_id, &task.name, |r| {
        r.run = run;
        r.phase = TaskPhase::Pending;
        r.handle = Some(handle.clone());
        None
    });
    let report = match spawn::launch(&inner.settings.spawn_bin, &config).await {
        Ok(r) => r,
        // Nothing ran: the binary did not execute or never had its config.
        Err(e @ (LaunchError::Exec { .. } | LaunchError::Send { .. })) => {
            return Err(never(e.to_string()))
        }
        // tend-spawn read its config and then died or went silent: it may have
        // started the task, so "never started" would be a guess. Its exit file
        // (written for a failure it saw) decides, else the run is lost and
        // whatever it started is killed.
        Err(e) => {
            return Err(daemon_gone(alloc_id, &task.name, &handle, &e.to_string()).await);
        }
    };
    let (daemon_pid, task_pid, instance) = match report {
        StartReport::Started {
            daemon_pid,
            task_pid,
            instance,
        } => (daemon_pid, task_pid, instance),
        StartReport::Failed { message, .. } => {
            inner.update_task(alloc_id, &task.name, |r| {
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
    inner.update_task(alloc_id, &task.name, |r| {
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
    Ok(Run::Spawn {
        client,
        socket,
        token,
        handle,
    })
}

enum Attach {
    Live(Box<Run>),
    Ended(Ended),
    /// The handle was persisted before a launch that never got as far as
    /// the daemon's socket: nothing of this run ever ran (the run it names).
    NeverLaunched(u32),
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
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    handle: &Handle,
    socket: &Path,
    token: Token,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    stopping: &mut bool,
    ready: &mut Ready,
) -> Reach {
    let daemon = daemon_of(handle);
    let mut backoff = retry::Backoff::default();
    let mut attempts = 0u32;
    let mut unreachable = false;
    let mut stop_since: Option<Instant> = stopping.then(Instant::now);
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
                        inner.update_task(alloc_id, &task.name, |r| {
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
            inner.update_task(alloc_id, &task.name, |r| {
                r.unreachable = Some(why.clone());
                Some(r.event(
                    "unreachable",
                    format!("tend-spawn (pid {pid}) is alive but does not answer: {why}; retrying"),
                ))
            });
            ready.say(Resolved::Unreachable);
        }
        if let Some(since) = stop_since {
            if !killed && since.elapsed() >= task.kill_timeout {
                killed = true;
                kill_task_directly(inner, alloc_id, task, handle, &why);
            }
        }
        let pause = tokio::time::sleep(backoff.step());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                c = ctl.recv(), if ctl_open => match c {
                    None => ctl_open = false,
                    Some(Ctl::Stop) => {
                        *stopping = true;
                        stop_since.get_or_insert_with(Instant::now);
                    }
                    Some(Ctl::Signal(_, reply)) => {
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
fn kill_task_directly(inner: &Inner, alloc_id: &str, task: &Task, handle: &Handle, why: &str) {
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
    inner.update_task(alloc_id, &task.name, |r| {
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
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    mut handle: Handle,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    stopping: &mut bool,
    ready: &mut Ready,
) -> Attach {
    if let Some(id) = handle.container_id.clone() {
        return reattach_container(inner, alloc_id, task, &handle, id).await;
    }
    if never_launched(alloc_id, &task.name, &handle).await {
        return Attach::NeverLaunched(handle.run);
    }
    let token = inner.store.token(alloc_id, &task.name).ok();
    let (Some(socket), Some(token)) = (handle.socket_path.clone(), token) else {
        return Attach::Ended(
            daemon_gone(
                alloc_id,
                &task.name,
                &handle,
                "no socket or token was recorded",
            )
            .await,
        );
    };
    let socket = PathBuf::from(socket);
    // A daemon recorded by pid must still be that very process; one persisted
    // before its start report is found by its socket and token alone.
    if daemon_of(&handle).is_some_and(|d| !d.alive()) {
        return Attach::Ended(
            daemon_gone(alloc_id, &task.name, &handle, "tend-spawn is gone").await,
        );
    }
    let client = match reach_daemon(
        inner, alloc_id, task, &handle, &socket, token, ctl, stopping, ready,
    )
    .await
    {
        Reach::Connected(c) => c,
        Reach::Gone(why) => {
            return Attach::Ended(
                daemon_gone(
                    alloc_id,
                    &task.name,
                    &handle,
                    &format!("tend-spawn is gone ({why})"),
                )
                .await,
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
    let persist = recorded_pid.is_none()
        || inner
            .task_record(alloc_id, &task.name)
            .is_some_and(|r| r.unreachable.is_some());
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
        inner.update_task(alloc_id, &task.name, change);
    } else {
        inner.note_task(alloc_id, &task.name, change);
    }
    Attach::Live(Box::new(Run::Spawn {
        client: Some(client),
        socket,
        token,
        handle,
    }))
}

/// The daemon of a run is gone: its exit file decides; without one the run is
/// lost, and whatever is left of it is killed.
async fn daemon_gone(alloc_id: &str, task: &str, handle: &Handle, why: &str) -> Ended {
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
    let h = handle.clone();
    let run_of = (alloc_id.to_string(), task.to_string());
    let _ = tokio::task::spawn_blocking(move || kill_leftovers(&h, run_of)).await;
    Ended::Lost(format!(
        "{why}, and it left no exit status file: the exit is unknown"
    ))
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
async fn wait_run(
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    run: Run,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    stopping: &mut bool,
) -> Ended {
    let (client, socket, token, handle) = match run {
        Run::Spawn {
            client,
            socket,
            token,
            handle,
        } => (client, socket, token, handle),
        Run::Docker { id, meta, logs } => {
            return wait_container(inner, alloc_id, task, id, meta, logs, ctl, stopping).await;
        }
    };
    let daemon = daemon_of(&handle);
    if *stopping {
        // Taken up after a stop was asked for (the last agent may have died
        // before it reached the daemon): ask again; a second Stop is harmless.
        request_stop(inner, alloc_id, task, &socket, token, &handle);
    }
    let mut client = client;
    let result = loop {
        let mut c = match client.take() {
            Some(c) => c,
            None => match reach_daemon(
                inner,
                alloc_id,
                task,
                &handle,
                &socket,
                token,
                ctl,
                stopping,
                &mut Ready(None),
            )
            .await
            {
                Reach::Connected(c) => c,
                Reach::Gone(why) => break Err((None, why)),
            },
        };
        match wait_on(
            inner, alloc_id, task, &mut c, &socket, token, &handle, ctl, stopping,
        )
        .await
        {
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
            daemon_gone(
                alloc_id,
                &task.name,
                &handle,
                &format!("tend-spawn (pid {pid}) died: {e}"),
            )
            .await
        }
    }
}

/// One wait on one connection, serving stop and signal requests meanwhile.
#[allow(clippy::too_many_arguments)]
async fn wait_on(
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    client: &mut Client,
    socket: &Path,
    token: Token,
    handle: &Handle,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    stopping: &mut bool,
) -> Result<ExitStatus, String> {
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
                Some(Ctl::Stop) => {
                    *stopping = true;
                    request_stop(inner, alloc_id, task, socket, token, handle);
                }
                Some(Ctl::Signal(signo, reply)) => {
                    let until = Instant::now() + SIGNAL_PATIENCE;
                    let r = retry::request_until(
                        socket,
                        token,
                        Request::Signal(signo),
                        daemon_of(handle),
                        until,
                    )
                    .await;
                    if r.is_ok() {
                        inner.update_task(alloc_id, &task.name, |rec| {
                            Some(rec.event("signaled", format!("sent signal {signo}")))
                        });
                    }
                    let _ = reply.send(r.map_err(|e| e.to_string()));
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
fn request_stop(
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    socket: &Path,
    token: Token,
    handle: &Handle,
) {
    inner.update_task(alloc_id, &task.name, |r| {
        Some(r.event(
            "stopping",
            format!(
                "stopping with signal {} and {} grace",
                task.kill_signal,
                humanize(task.kill_timeout)
            ),
        ))
    });
    let req = Request::Stop {
        signal: task.kill_signal,
        grace_ms: u64::try_from(task.kill_timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let (inner, alloc_id, task, socket, handle) = (
        inner.clone(),
        alloc_id.to_string(),
        task.clone(),
        socket.to_path_buf(),
        handle.clone(),
    );
    tokio::spawn(
        async move {
            let until = Instant::now() + task.kill_timeout.max(retry::ATTEMPT_TIMEOUT);
            match retry::request_until(&socket, token, req, daemon_of(&handle), until).await {
                Ok(()) => {}
                Err(retry::RetryError::Unanswered(why)) => {
                    kill_task_directly(&inner, &alloc_id, &task, &handle, &why);
                }
                // Refused: the task has already ended; gone: the wait hears it.
                Err(e) => tracing::info!(error = %e, "stop request not taken"),
            }
        }
        .in_current_span(),
    );
}

fn docker_of(inner: &Inner) -> Result<&DockerDriver, String> {
    inner
        .docker
        .as_ref()
        .ok_or_else(|| "driver docker is disabled on this agent".to_string())
}

/// Start a run as a container: the container id is persisted as the handle.
async fn start_container(
    inner: &Arc<Inner>,
    alloc: &AllocRecord,
    task: &Task,
    run: u32,
    setup: driver::TaskSetup,
    ports: &[crate::ports::AssignedPort],
) -> Result<Run, ExitStatus> {
    let alloc_id = &alloc.alloc_id;
    let dir = inner.settings.dirs.alloc(alloc_id);
    let exit_path = dir.exit_status(&task.name);
    let never = |msg: String| {
        let e = ExitStatus::never_started(alloc_id, &task.name, run, msg);
        if let Err(err) = e.write(&exit_path) {
            tracing::error!(error = %err, "cannot write exit status file");
        }
        e
    };
    let docker = docker_of(inner).map_err(never)?;
    let binds_dir = inner.settings.dirs.binds_dir();
    let id = docker
        .start(&DockerStart {
            alloc_id,
            alloc: &dir,
            binds_dir: &binds_dir,
            task,
            job_labels: &alloc.job.meta,
            command: setup.command,
            args: setup.args,
            env: setup.env,
            ports,
        })
        .await
        .map_err(|e| never(e.to_string()))?;
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
    inner.update_task(alloc_id, &task.name, |r| {
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
    let logs = docker.copy_logs(&id, &dir, &task.name, task.logs, None);
    Ok(Run::Docker {
        id,
        meta: ExitMeta {
            alloc_id: alloc_id.clone(),
            task: task.name.clone(),
            run,
            exit_status_path: exit_path,
        },
        logs,
    })
}

/// Take up a container after an agent restart: by its id, never by its name.
async fn reattach_container(
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    handle: &Handle,
    id: String,
) -> Attach {
    let meta = ExitMeta {
        alloc_id: alloc_id.to_string(),
        task: task.name.clone(),
        run: handle.run,
        exit_status_path: PathBuf::from(&handle.exit_status_path),
    };
    let docker = match docker_of(inner) {
        Ok(d) => d,
        Err(e) => return Attach::Ended(Ended::Lost(e)),
    };
    match docker.probe(&id, &meta).await {
        Ok(ContainerState::Running) => {
            let dir = inner.settings.dirs.alloc(alloc_id);
            let cursor = driver::docker::logs::read_cursor(&dir, &task.name);
            let logs = docker.copy_logs(&id, &dir, &task.name, task.logs, cursor);
            inner.note_task(alloc_id, &task.name, |r| {
                r.phase = TaskPhase::Running;
                Some(r.event(
                    "reattached",
                    format!("run {}: container is running", handle.run),
                ))
            });
            Attach::Live(Box::new(Run::Docker { id, meta, logs }))
        }
        Ok(ContainerState::Exited(e)) => {
            // What it wrote while the agent was away is copied before the
            // container goes; the cursor keeps what was copied from coming twice.
            let dir = inner.settings.dirs.alloc(alloc_id);
            let cursor = driver::docker::logs::read_cursor(&dir, &task.name);
            let logs = docker.copy_logs(&id, &dir, &task.name, task.logs, cursor);
            if let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(30), logs).await {
                tracing::warn!(error = %err, "cannot copy the logs of the ended container");
            }
            let _ = docker.remove(&id).await;
            Attach::Ended(Ended::Exit(e))
        }
        Ok(ContainerState::Vanished) => Attach::Ended(Ended::Lost(format!(
            "container {id} vanished while the agent was away: the exit is unknown"
        ))),
        Err(e) => Attach::Ended(Ended::Lost(format!("container {id}: {e}"))),
    }
}

/// Stop a container with the task's kill signal and timeout. The stop runs
/// beside the wait, which sees the end.
fn stop_container(inner: &Inner, alloc_id: &str, task: &Task, docker: &DockerDriver, id: &str) {
    inner.update_task(alloc_id, &task.name, |r| {
        Some(r.event(
            "stopping",
            format!(
                "stopping with signal {} and {} grace",
                task.kill_signal,
                humanize(task.kill_timeout)
            ),
        ))
    });
    let (signal, timeout) = (task.kill_signal, task.kill_timeout);
    let (id, opts) = (id.to_string(), docker.options().clone());
    tokio::spawn(
        async move {
            if let Ok(d) = DockerDriver::new(opts) {
                if let Err(e) = d.stop(&id, signal, timeout).await {
                    tracing::warn!(error = %e, "container stop failed");
                }
            }
        }
        .in_current_span(),
    );
}

/// Wait for a container's end, serving stop and signal requests meanwhile.
#[allow(clippy::too_many_arguments)]
async fn wait_container(
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    id: String,
    meta: ExitMeta,
    logs: tokio::task::JoinHandle<Result<(), driver::docker::DockerError>>,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    stopping: &mut bool,
) -> Ended {
    let docker = match docker_of(inner) {
        Ok(d) => d,
        Err(e) => return Ended::Lost(e),
    };
    if *stopping {
        // Taken up after a stop was asked for: ask again.
        stop_container(inner, alloc_id, task, docker, &id);
    }
    let wait = docker.wait(&id, &meta);
    tokio::pin!(wait);
    let mut ctl_open = true;
    let result = loop {
        tokio::select! {
            r = &mut wait => break r,
            c = ctl.recv(), if ctl_open => match c {
                None => ctl_open = false,
                Some(Ctl::Stop) => {
                    *stopping = true;
                    stop_container(inner, alloc_id, task, docker, &id);
                }
                Some(Ctl::Signal(signo, reply)) => {
                    let r = match docker.signal(&id, signo).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("the container is not running".to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if r.is_ok() {
                        inner.update_task(alloc_id, &task.name, |rec| {
                            Some(rec.event("signaled", format!("sent signal {signo}")))
                        });
                    }
                    let _ = reply.send(r);
                }
            }
        }
    };
    // The log copy ends with the container; let it finish before removal.
    let _ = tokio::time::timeout(Duration::from_secs(5), logs).await;
    let ended = match result {
        Ok(e) => Ended::Exit(e),
        Err(driver::docker::DockerError::Vanished { .. }) => {
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

//! Reaching a run's tend-spawn after the agent lost sight of it: the reattach
//! of a new agent, the reconnect of a wait, a supervisor that lives but does
//! not answer (marked unreachable, retried with backoff, never lost while it
//! lives; a stop asked meanwhile ends in the agent's own SIGKILL once
//! kill_timeout has passed), and one that is gone (its exit file decides).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tend_proto::{ExitStatus, Token};

use super::{retry, Client, Link, SpawnRun};
use crate::driver::{Control, Controls, Ended, Journal, Recovered, RunCtx, RunError};
use crate::ident::ProcId;
use crate::state::{Handle, TaskPhase};

/// How long a reattach gives a tend-spawn, launched just before the last agent
/// died, to bind its socket.
const LAUNCH_GRACE: Duration = Duration::from_millis(500);

/// Whether the run of a handle persisted before its launch never started:
/// no socket (tend-spawn binds it before it starts the task and removes it
/// only when it leaves, after writing the exit file), no exit file of the run,
/// and no process of the run.
pub(super) async fn never_launched(alloc_id: &str, task: &str, handle: &Handle) -> bool {
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
pub(super) fn daemon_of(handle: &Handle) -> Option<ProcId> {
    match (handle.daemon_pid, handle.daemon_start_time) {
        (Some(pid), Some(start_time)) => Some(ProcId { pid, start_time }),
        _ => None,
    }
}

/// The task process of a handle, when the handle names it.
pub(super) fn task_proc_of(handle: &Handle) -> Option<ProcId> {
    match (handle.task_pid, handle.task_start_time) {
        (Some(pid), Some(start_time)) => Some(ProcId { pid, start_time }),
        _ => None,
    }
}

/// What came of trying to reach a run's tend-spawn.
pub(super) enum Reach {
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
pub(super) async fn reach_daemon(
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
            Err(e) => e.to_string(),
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
                        let _ = reply.send(Err(RunError::Unreachable { why: why.clone() }));
                    }
                    Some(Control::Restart(why)) => {
                        if ctl.take_restart(why) {
                            stop_since.get_or_insert_with(Instant::now);
                        }
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
pub(super) fn kill_task_directly(journal: &dyn Journal, handle: &Handle, why: &str) {
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
pub(super) async fn reattach(
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
pub(super) async fn daemon_gone(cx: &RunCtx<'_>, handle: &Handle, why: &str) -> Ended {
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
pub(super) async fn destroy_run(cx: &RunCtx<'_>, handle: &Handle) {
    let h = handle.clone();
    let run_of = (cx.alloc_id.to_string(), cx.task.name.clone());
    let _ = tokio::task::spawn_blocking(move || kill_leftovers(&h, run_of)).await;
}

/// Kill what is left of a lost run (see [`crate::ident::Leftovers`]).
pub(super) fn kill_leftovers(handle: &Handle, run_of: (String, String)) {
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

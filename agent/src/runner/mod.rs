//! The task runner: one task's life, whatever its driver. Start a run (or
//! take up the one a handle describes), wait for its end, record it, apply the
//! restart policy, again until the task is done. Each task is one tokio task;
//! the API talks to it through a channel of [`Control`]s. The runner knows no
//! driver: it calls the one the task names through [`AnyDriver`].

pub mod restart;

use std::sync::Arc;
use std::time::Instant;

use tend_proto::Token;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::agent::Inner;
use crate::check::{RunStart, Watch};
use crate::driver::setup::{task_setup, TaskContext};
use crate::driver::{
    AnyDriver, Control, Controls, Ended, Journal, Recovered, RunCtx, RunError, StartSpec,
    TaskDriver,
};
use crate::jobspec::{Group, Task};
use crate::outcome::humanize;
use crate::state::{AllocRecord, Desired, Handle, StateError, TaskEvent, TaskPhase, TaskRecord};
use restart::{Decision, RestartTracker};

/// How a task loop begins.
#[derive(Debug, Clone)]
pub enum Start {
    /// Start a new run.
    Fresh,
    /// Take up the run this handle describes (boxed: every task's loop
    /// keeps its start for as long as it runs).
    Reattach(Box<Handle>),
}

/// How a task was taken up when the loop began (reported to the agent's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Its run answers (its tend-spawn, its container).
    Reattached,
    /// It had ended; its exit file was recorded.
    Exited,
    /// Neither: lost.
    Lost,
    /// A new run was started (or failed to start).
    Started,
    /// Its supervisor lives but does not answer yet: it is being retried.
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

fn find<'a>(alloc: &'a AllocRecord, task: &str) -> Option<(&'a Group, &'a Task)> {
    let group = alloc.job.groups.iter().find(|g| g.name == alloc.group)?;
    let t = group.tasks.iter().find(|t| t.name == task)?;
    Some((group, t))
}

/// The life of one task, inside a span naming it (entered on every poll, so
/// its fields never leak to the other tasks that share a worker thread).
/// Not an async fn of its own: that would keep a second copy of every
/// argument beside [`task_life`]'s, in every task, for its whole life.
pub(crate) fn task_loop(
    inner: Arc<Inner>,
    alloc_id: String,
    name: String,
    ctl: mpsc::UnboundedReceiver<Control>,
    start: Start,
    ready: Option<oneshot::Sender<Resolved>>,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::info_span!("task", alloc_id = %alloc_id, task = %name);
    task_life(inner, alloc_id, name, ctl, start, ready).instrument(span)
}

/// What a run's start or take-up came to.
enum Step<'a> {
    /// It runs: its wait, and its health checks' watch, held while it runs.
    Wait(
        std::pin::Pin<Box<dyn std::future::Future<Output = Ended> + Send + 'a>>,
        Watch,
    ),
    /// It ended before any wait (boxed: rare, and larger than the wait).
    Ended(Box<Ended>),
    /// It never launched: start it as the run it was meant to be.
    Again,
}

async fn task_life(
    inner: Arc<Inner>,
    alloc_id: String,
    name: String,
    ctl: mpsc::UnboundedReceiver<Control>,
    mut start: Start,
    ready: Option<oneshot::Sender<Resolved>>,
) {
    let mut ready = Ready(ready);
    let Some(alloc) = inner.alloc_record(&alloc_id) else {
        ready.say(Resolved::Lost);
        return;
    };
    // Borrowed from the allocation's shared job, never copied per task.
    let Some((group, task)) = find(&alloc, &name) else {
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
    let dir = inner.settings.dirs.alloc(&alloc_id);
    let cx = RunCtx {
        alloc_id: &alloc_id,
        task,
        alloc: &dir,
        journal: Arc::new(TaskJournal {
            inner: inner.clone(),
            alloc_id: alloc_id.clone(),
            task: name.clone(),
        }),
    };
    let mut ctl = Controls::new(ctl, alloc.desired == Desired::Stop);
    loop {
        // The start or take-up is awaited (boxed) in a statement of its own,
        // so that nothing of it outlives it: while the task runs, this loop
        // holds the boxed wait alone.
        let ended = {
            let step: Step<'_> = match std::mem::replace(&mut start, Start::Fresh) {
                Start::Reattach(h) => {
                    match Box::pin(reattach(&inner, &cx, *h, &mut ctl, &mut ready)).await {
                        Recovered::Live((driver, run)) => {
                            ready.say(Resolved::Reattached);
                            let checks = watch_checks(&inner, &alloc, task, RunStart::Reattached);
                            Step::Wait(driver.into_wait(&cx, run, &mut ctl), checks)
                        }
                        Recovered::NeverLaunched(run) => {
                            // Started as the run it was meant to be.
                            inner.note_task(&alloc_id, &name, |r| {
                                r.run = run.saturating_sub(1);
                                None
                            });
                            Step::Again
                        }
                        Recovered::Ended(e) => {
                            let r = match e {
                                Ended::Exit(_) => Resolved::Exited,
                                Ended::Lost(_) => Resolved::Lost,
                            };
                            ready.say(r);
                            Step::Ended(Box::new(e))
                        }
                    }
                }
                Start::Fresh => {
                    if ctl.stopping || desired_stop(&inner, &alloc_id) {
                        ready.say(Resolved::Started);
                        inner.update_task(&alloc_id, &name, |r| {
                            r.stopped = true;
                            Some(finish_record(r, false, "stopped before it started"))
                        });
                        release_ports_if_done(&inner, &alloc_id);
                        return;
                    }
                    // Boxed: the start (config, launch, the child's pipes) is
                    // the largest state of this loop; inline, every task would
                    // keep room for it while it waits on its run.
                    let r = Box::pin(start_run(&inner, &cx, &alloc, group)).await;
                    ready.say(Resolved::Started);
                    match r {
                        Ok((driver, run)) => {
                            let checks = watch_checks(&inner, &alloc, task, RunStart::Fresh);
                            Step::Wait(driver.into_wait(&cx, run, &mut ctl), checks)
                        }
                        Err(e) => Step::Ended(Box::new(e)),
                    }
                }
            };
            match step {
                Step::Wait(wait, checks) => {
                    let ended = wait.await;
                    drop(checks);
                    ended
                }
                Step::Ended(e) => *e,
                Step::Again => continue,
            }
        };
        // A run ended for a check_restart failed, whatever its exit code.
        let restart_why = ctl.restart.take();
        let failed = restart_why.is_some()
            || match &ended {
                Ended::Exit(e) => !e.success(),
                Ended::Lost(_) => true,
            };
        // What follows the run is decided first and persisted in the same
        // write as its end: a record that had the end without the decision
        // (handle gone, phase still running) would be started again, as a
        // task that never ran, by the next agent.
        ctl.stopping |= desired_stop(&inner, &alloc_id);
        let stopping = ctl.stopping;
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
                    let why = restart_why
                        .as_deref()
                        .map_or(String::new(), |w| format!(": {w}"));
                    vec![
                        end,
                        r.event(
                            "restarting",
                            format!("restarting in {}{why}", humanize(delay)),
                        ),
                    ]
                });
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        c = ctl.recv() => match c {
                            Some(Control::Stop) | None => {
                                finish(&inner, &alloc_id, &name, false, "stopped while waiting to restart");
                                return;
                            }
                            Some(Control::Signal(_, reply)) => {
                                let _ = reply.send(Err(RunError::Restarting));
                            }
                            // Already restarting.
                            Some(Control::Restart(_)) => {}
                        }
                    }
                }
            }
        }
    }
}

/// The checks of the task's run, for as long as the runner holds them.
fn watch_checks(inner: &Arc<Inner>, alloc: &AllocRecord, task: &Task, how: RunStart) -> Watch {
    let ports = alloc.ports.get(&task.name).cloned().unwrap_or_default();
    crate::check::watch(inner, &alloc.alloc_id, task, &ports, how)
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
fn finish_record(r: &mut TaskRecord, failed: bool, why: &str) -> TaskEvent {
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
fn record_end(r: &mut TaskRecord, ended: Ended) -> TaskEvent {
    match ended {
        Ended::Exit(e) => {
            let msg = crate::outcome::describe_exit(&e);
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

/// Start a new run: move the last exit file aside, build the task's
/// environment, and hand the run to the task's driver.
async fn start_run(
    inner: &Arc<Inner>,
    cx: &RunCtx<'_>,
    alloc: &AllocRecord,
    group: &Group,
) -> Result<(AnyDriver, crate::driver::AnyRun), Ended> {
    let (alloc_id, task, dir) = (cx.alloc_id, cx.task, cx.alloc);
    let prev = cx.journal.record().map_or(0, |r| r.run);
    let run = prev + 1;
    cx.journal.note(|r| {
        r.start_errno = None;
        None
    });
    let exit_path = dir.exit_status(&task.name);
    if prev > 0 && exit_path.exists() {
        if let Err(e) = std::fs::rename(&exit_path, dir.exit_status_of_run(&task.name, prev)) {
            tracing::warn!(error = %e, "cannot move the last exit status file aside");
        }
    }
    let driver = inner
        .drivers
        .for_task(task)
        .map_err(|e| crate::driver::never_started(cx, run, e.to_string()))?;
    let ports = alloc.ports.get(&task.name).cloned().unwrap_or_default();
    let setup = task_setup(&TaskContext {
        job: &alloc.job,
        group,
        index: alloc.index,
        task,
        alloc_id,
        alloc: dir,
        ports: &ports,
        env_allowlist: &inner.settings.env_allowlist,
    })
    .map_err(|e| crate::driver::never_started(cx, run, e.to_string()))?;
    let spec = StartSpec {
        run,
        job: &alloc.job,
        setup,
        ports: &ports,
    };
    let t0 = Instant::now();
    let driver_name = task.driver.name();
    match driver.start(cx, spec).await {
        Ok(r) => {
            inner.metrics.started(driver_name, t0.elapsed());
            Ok((driver, r))
        }
        Err(e) => {
            inner.metrics.start_failed(driver_name);
            Err(e)
        }
    }
}

/// Take up a run after an agent restart, through the driver its handle names.
async fn reattach(
    inner: &Arc<Inner>,
    cx: &RunCtx<'_>,
    handle: Handle,
    ctl: &mut Controls,
    ready: &mut Ready,
) -> Recovered<(AnyDriver, crate::driver::AnyRun)> {
    let driver = match inner.drivers.for_handle(&handle) {
        Ok(d) => d,
        Err(e) => return Recovered::Ended(Ended::Lost(e.to_string())),
    };
    let mut unreachable = || ready.say(Resolved::Unreachable);
    let found = driver.recover(cx, handle, ctl, &mut unreachable).await;
    found.map(|run| (driver, run))
}

/// A task's record in the agent, as its driver writes in it.
struct TaskJournal {
    inner: Arc<Inner>,
    alloc_id: String,
    task: String,
}

impl Journal for TaskJournal {
    fn change(&self, persist: bool, f: &mut dyn FnMut(&mut TaskRecord) -> Option<TaskEvent>) {
        if persist {
            self.inner.update_task(&self.alloc_id, &self.task, f);
        } else {
            self.inner.note_task(&self.alloc_id, &self.task, f);
        }
    }

    fn record(&self) -> Option<TaskRecord> {
        self.inner.task_record(&self.alloc_id, &self.task)
    }

    fn change_with_token(
        &self,
        token: &Token,
        f: &mut dyn FnMut(&mut TaskRecord) -> Option<TaskEvent>,
    ) -> Result<(), StateError> {
        // A durable write at every start, off the workers (inside): a
        // thousand starts at once overlap their fsyncs rather than take the
        // two workers in turn.
        self.inner
            .update_task_with_token(&self.alloc_id, &self.task, token, f)
    }

    fn token(&self) -> Option<Token> {
        self.inner.store.token(&self.alloc_id, &self.task).ok()
    }
}

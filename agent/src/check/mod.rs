//! Health checks of a running task, as Nomad runs those of its own service
//! provider: each check every `interval`, bounded by its `timeout`; its
//! state in the task's record (status shows it), an event on each change
//! of state only; and `check_restart`: after `limit` unhealthy results in
//! a row, past `grace` from the run's start, the task is restarted through
//! its runner, as a failure the restart policy counts.
//!
//! The checks of a run live in a [`Watch`] the runner holds while it waits
//! on that run: dropping it (the run has ended) ends every check, and a
//! script check in flight with it (its connection to tend-spawn closes,
//! and tend-spawn kills the command).

pub mod probe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::agent::{Agent, Inner};
use crate::driver::Control;
use crate::jobspec::{Check, CheckKind, CheckRestart, Driver, Task};
use crate::ports::AssignedPort;
use crate::state::{CheckState, CheckStatus};

/// The checks of one run; they end when it is dropped.
pub(crate) struct Watch(Vec<JoinHandle<()>>);

impl Drop for Watch {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// How the run the checks watch began.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunStart {
    /// Just started: every check begins pending.
    Fresh,
    /// Taken up after an agent restart: the checks keep their last states,
    /// and `grace` counts from the run's recorded start.
    Reattached,
}

/// Start the checks of `task` (none: an empty watch).
pub(crate) fn watch(
    inner: &Arc<Inner>,
    alloc_id: &str,
    task: &Task,
    ports: &[AssignedPort],
    how: RunStart,
) -> Watch {
    if task.checks.is_empty() {
        return Watch(Vec::new());
    }
    let record = inner.task_record(alloc_id, &task.name);
    let started = match how {
        RunStart::Fresh => Instant::now(),
        RunStart::Reattached => record
            .as_ref()
            .and_then(|r| r.started_at.as_deref())
            .and_then(tend_proto::time::parse_rfc3339)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .and_then(|age| Instant::now().checked_sub(age))
            .unwrap_or_else(Instant::now),
    };
    let before = record.map(|r| r.checks).unwrap_or_default();
    let statuses: Vec<CheckStatus> = task
        .checks
        .iter()
        .map(|ch| {
            let kept = match how {
                RunStart::Reattached => before.iter().find(|s| s.name == ch.name).cloned(),
                RunStart::Fresh => None,
            };
            kept.unwrap_or_else(|| CheckStatus {
                name: ch.name.clone(),
                kind: ch.kind.name().to_string(),
                status: CheckState::Pending,
                output: String::new(),
                time: None,
            })
        })
        .collect();
    inner.note_task(alloc_id, &task.name, |r| {
        r.checks = statuses.clone();
        None
    });
    let handles = task
        .checks
        .iter()
        .zip(statuses)
        .map(|(ch, status)| {
            let target = match ch.kind.port() {
                None => Target::Script,
                Some(label) => match ports.iter().find(|p| p.label == label) {
                    Some(p) => Target::Addr(SocketAddr::new(p.host_ip, p.host_port)),
                    None => Target::NoPort(label.to_string()),
                },
            };
            let run = CheckRun {
                inner: inner.clone(),
                alloc_id: alloc_id.to_string(),
                task: task.name.clone(),
                check: ch.clone(),
                target,
                docker: task.driver == Driver::Docker,
                started,
                last: status.status,
            };
            let span = tracing::info_span!("check", check = %ch.name);
            tokio::spawn(run.run().instrument(span))
        })
        .collect();
    Watch(handles)
}

/// Where a check goes.
enum Target {
    /// Into the task, through its tend-spawn (or the docker engine).
    Script,
    /// To the host address and port its label was given.
    Addr(SocketAddr),
    /// The label has no port in the allocation (the job is checked at
    /// submit, so only a record of an older job could say this).
    NoPort(String),
}

/// `check_restart`'s count of unhealthy results in a row, as Nomad's.
#[derive(Debug, Default)]
struct Unhealthy(u32);

impl Unhealthy {
    /// Count one result, `since_start` into the run: the number of
    /// unhealthy results in a row when that reaches the limit (the task is
    /// to restart, and the count starts again), else None. A healthy result
    /// (passing; a warning with `ignore_warnings`) resets the count; one
    /// within `grace` is not counted; a limit of 0 never restarts.
    fn count(
        &mut self,
        cr: &CheckRestart,
        state: CheckState,
        since_start: Duration,
    ) -> Option<u32> {
        let healthy =
            state == CheckState::Passing || (state == CheckState::Warning && cr.ignore_warnings);
        if healthy {
            self.0 = 0;
            return None;
        }
        if cr.limit == 0 || since_start < cr.grace {
            return None;
        }
        self.0 += 1;
        if self.0 < cr.limit {
            return None;
        }
        Some(std::mem::take(&mut self.0))
    }
}

/// One check's loop.
struct CheckRun {
    inner: Arc<Inner>,
    alloc_id: String,
    task: String,
    check: Check,
    target: Target,
    /// Whether the task is a container: a script goes through the engine.
    docker: bool,
    started: Instant,
    last: CheckState,
}

impl CheckRun {
    async fn run(mut self) {
        // The first run one interval in, not at once: a task just started
        // is rarely listening yet, and its first result would be noise.
        let every = self.check.interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unhealthy = Unhealthy::default();
        loop {
            tick.tick().await;
            let (state, output) = self.probe().await;
            self.record(state, output);
            if let Some(cr) = self.check.check_restart {
                if let Some(times) = unhealthy.count(&cr, state, self.started.elapsed()) {
                    self.restart(times);
                }
            }
        }
    }

    async fn probe(&self) -> (CheckState, String) {
        let timeout = self.check.timeout;
        match (&self.check.kind, &self.target) {
            (CheckKind::Script { command, args }, _) if self.docker => {
                let argv = std::iter::once(command.clone())
                    .chain(args.iter().cloned())
                    .collect();
                let container = self
                    .inner
                    .task_record(&self.alloc_id, &self.task)
                    .and_then(|r| r.handle)
                    .and_then(|h| h.container_id);
                match (&self.inner.drivers.docker, container) {
                    (Some(d), Some(id)) => {
                        probe::container_script(d.engine(), &id, argv, timeout).await
                    }
                    (None, _) => (
                        CheckState::Critical,
                        "the docker driver is disabled on this agent".into(),
                    ),
                    (_, None) => (CheckState::Critical, "the task has no container".into()),
                }
            }
            (CheckKind::Script { command, args }, _) => {
                let agent = Agent {
                    inner: self.inner.clone(),
                };
                let (socket, token) = match agent.exec_target(&self.alloc_id, &self.task) {
                    Ok(t) => t,
                    Err(e) => return (CheckState::Critical, e.to_string()),
                };
                let argv = std::iter::once(command.clone())
                    .chain(args.iter().cloned())
                    .collect();
                probe::script(&socket, token, argv, timeout).await
            }
            (_, Target::NoPort(label)) => (
                CheckState::Critical,
                format!("the allocation has no port {label:?}"),
            ),
            (CheckKind::Tcp { .. }, Target::Addr(addr)) => probe::tcp(*addr, timeout).await,
            (CheckKind::Http { path, method, .. }, Target::Addr(addr)) => {
                probe::http(*addr, method, path, timeout).await
            }
            (_, Target::Script) => (CheckState::Critical, "no port to check".into()),
        }
    }

    /// The result in the task's record: persisted, with an event, when the
    /// state changed; in memory only when it did not (no fsync per run).
    fn record(&mut self, state: CheckState, output: String) {
        let changed = state != self.last;
        self.last = state;
        let name = self.check.name.clone();
        let update = |r: &mut crate::state::TaskRecord| {
            let s = r.checks.iter_mut().find(|s| s.name == name)?;
            s.status = state;
            s.output = output.clone();
            s.time = Some(tend_proto::time::now());
            changed.then(|| {
                let mut line = output.lines().next().unwrap_or("").to_string();
                if line.len() > 200 {
                    let mut cut = 200;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                }
                let said = if line.is_empty() {
                    String::new()
                } else {
                    format!(": {line}")
                };
                r.event("check", format!("check '{name}' is {}{said}", state.word()))
            })
        };
        if changed {
            self.inner.update_task(&self.alloc_id, &self.task, update);
        } else {
            self.inner.note_task(&self.alloc_id, &self.task, update);
        }
    }

    /// Ask the runner for a restart, and say why.
    fn restart(&self, times: u32) {
        let why = format!("check '{}' unhealthy {times} times", self.check.name);
        let sent = {
            let allocs = self.inner.allocs.lock().expect("allocs lock");
            allocs
                .get(&self.alloc_id)
                .and_then(|a| a.tasks.get(&self.task))
                .is_some_and(|t| t.ctl.send(Control::Restart(why.clone())).is_ok())
        };
        if sent {
            self.inner.update_task(&self.alloc_id, &self.task, |r| {
                Some(r.event("restart_signaled", format!("{why}: restarting the task")))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: CheckState = CheckState::Passing;
    const WARN: CheckState = CheckState::Warning;
    const CRIT: CheckState = CheckState::Critical;

    fn restart(limit: u32, grace_s: u64, ignore_warnings: bool) -> CheckRestart {
        CheckRestart {
            limit,
            grace: Duration::from_secs(grace_s),
            ignore_warnings,
        }
    }

    /// The results at `secs` into the run: which ones ask for a restart.
    fn asks(cr: &CheckRestart, results: &[(CheckState, u64)]) -> Vec<Option<u32>> {
        let mut u = Unhealthy::default();
        results
            .iter()
            .map(|(st, secs)| u.count(cr, *st, Duration::from_secs(*secs)))
            .collect()
    }

    #[test]
    fn the_limit_in_a_row_restarts_and_counts_again() {
        let cr = restart(3, 0, false);
        let got = asks(
            &cr,
            &[
                (CRIT, 1),
                (CRIT, 2),
                (CRIT, 3),
                (CRIT, 4),
                (CRIT, 5),
                (CRIT, 6),
            ],
        );
        assert_eq!(got, [None, None, Some(3), None, None, Some(3)]);
    }

    #[test]
    fn a_healthy_result_resets_the_count() {
        let cr = restart(2, 0, false);
        let got = asks(&cr, &[(CRIT, 1), (PASS, 2), (CRIT, 3), (CRIT, 4)]);
        assert_eq!(got, [None, None, None, Some(2)]);
    }

    #[test]
    fn warnings_count_unless_ignored() {
        let got = asks(&restart(2, 0, false), &[(WARN, 1), (WARN, 2)]);
        assert_eq!(got, [None, Some(2)]);
        let got = asks(&restart(2, 0, true), &[(CRIT, 1), (WARN, 2), (CRIT, 3)]);
        assert_eq!(
            got,
            [None, None, None],
            "an ignored warning resets as a pass does"
        );
    }

    #[test]
    fn results_within_grace_are_not_counted() {
        let cr = restart(2, 10, false);
        let got = asks(
            &cr,
            &[(CRIT, 1), (CRIT, 5), (CRIT, 9), (CRIT, 10), (CRIT, 11)],
        );
        assert_eq!(got, [None, None, None, None, Some(2)]);
    }

    #[test]
    fn a_limit_of_zero_never_restarts() {
        let cr = restart(0, 0, false);
        assert_eq!(
            asks(&cr, &[(CRIT, 1), (CRIT, 2), (CRIT, 3)]),
            [None, None, None]
        );
    }
}

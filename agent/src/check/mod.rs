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
use std::time::{Instant, SystemTime};

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::agent::{Agent, Inner};
use crate::driver::Control;
use crate::jobspec::{Check, CheckKind, Task};
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
    /// Into the task, through its tend-spawn.
    Script,
    /// To the host address and port its label was given.
    Addr(SocketAddr),
    /// The label has no port in the allocation (the job is checked at
    /// submit, so only a record of an older job could say this).
    NoPort(String),
}

/// One check's loop.
struct CheckRun {
    inner: Arc<Inner>,
    alloc_id: String,
    task: String,
    check: Check,
    target: Target,
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
        let mut unhealthy = 0u32;
        loop {
            tick.tick().await;
            let (state, output) = self.probe().await;
            self.record(state, output);
            let Some(cr) = self.check.check_restart else {
                continue;
            };
            let healthy = state == CheckState::Passing
                || (state == CheckState::Warning && cr.ignore_warnings);
            if healthy {
                unhealthy = 0;
                continue;
            }
            if cr.limit == 0 || self.started.elapsed() < cr.grace {
                continue;
            }
            unhealthy += 1;
            if unhealthy >= cr.limit {
                self.restart(unhealthy);
                unhealthy = 0;
            }
        }
    }

    async fn probe(&self) -> (CheckState, String) {
        let timeout = self.check.timeout;
        match (&self.check.kind, &self.target) {
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

//! The API's routes. Every answer is JSON (`{"error": "..."}` with the right
//! status on failure) except log bodies, which are the bytes the task wrote.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use super::server::{self, Reply, Request};
use super::wire::{
    self, AllocList, AllocView, ErrorBody, EventList, EventView, Health, SignalRequest, SignalSent,
    StopAccepted, Submitted, TaskView,
};
use super::Peer;
use crate::agent::{Agent, AgentError};
use crate::jobspec;
use crate::state::{AllocRecord, TaskPhase, TaskRecord};

mod logs;
use logs::logs;

/// Answer one request.
pub async fn handle(agent: &Agent, req: Request, peer: Arc<Peer>) -> Reply {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let resp = match (&req.method, segs.as_slice()) {
        (&Method::GET, ["v1", "health"]) => Ok(health(agent)),
        (&Method::POST, ["v1", "jobs"]) => submit(agent, &req),
        (&Method::POST, ["v1", "adopt"]) => adopt(agent, &req).await,
        (&Method::GET, ["v1", "allocations"]) => Ok(list(agent)),
        (&Method::GET, ["v1", "allocations", id]) => get(agent, id),
        (&Method::POST, ["v1", "allocations", id, "stop"]) => stop(agent, id, &req).await,
        (&Method::POST, ["v1", "allocations", id, "tasks", task, "signal"]) => {
            signal(agent, id, task, &req).await
        }
        (&Method::GET, ["v1", "allocations", id, "tasks", task, "logs"]) => {
            logs(agent, id, task, &req, peer)
        }
        (&Method::GET, ["v1", "allocations", id, "stats"]) => {
            stats(agent, id, &req, false, peer).await
        }
        (&Method::GET, ["v1", "allocations", id, "stats", "stream"]) => {
            stats(agent, id, &req, true, peer).await
        }
        (&Method::GET, ["v1", "events"]) => events(agent, &req, peer),
        (&Method::POST, ["v1", "gc"]) => gc(agent, &req),
        (&Method::GET, ["v1", "metrics"]) => Ok(server::bytes(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            agent.metrics_text().into_bytes(),
        )),
        (_, ["v1", "health"])
        | (_, ["v1", "metrics"])
        | (_, ["v1", "gc"])
        | (_, ["v1", "jobs" | "adopt"])
        | (_, ["v1", "allocations"])
        | (_, ["v1", "allocations", _])
        | (_, ["v1", "allocations", _, "stop" | "stats"])
        | (_, ["v1", "allocations", _, "stats", "stream"])
        | (_, ["v1", "allocations", _, "tasks", _, "signal" | "logs"])
        | (_, ["v1", "events"]) => Err(refuse(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        )),
        _ => Err(refuse(404, format!("no route {} {}", req.method, req.path))),
    };
    resp.unwrap_or_else(|Refusal(status, body)| server::json(status, &body))
}

/// `POST /v1/gc[?job=NAME][&older_than=DURATION]`: remove dead allocations
/// now (all of them by default, whatever the agent's gc_retention).
fn gc(agent: &Agent, req: &Request) -> Result<Reply, Refusal> {
    let older_than = match req.query.get("older_than") {
        None => Duration::ZERO,
        Some(s) => jobspec::duration::parse_duration(s).ok_or_else(|| {
            refuse(
                400,
                format!("older_than: {s:?} is not a duration (e.g. \"1h\")"),
            )
        })?,
    };
    let job = req.query.get("job").map(String::as_str);
    let collected = agent.collect_garbage(older_than, job).map_err(agent_err)?;
    Ok(server::json(200, &wire::Collected { collected }))
}

/// A request refused: its status and why.
#[derive(Debug)]
struct Refusal(u16, ErrorBody);

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal(status, ErrorBody::new(message))
}

fn agent_err(e: AgentError) -> Refusal {
    refuse(e.status(), e.to_string())
}

fn health(agent: &Agent) -> Reply {
    let counts = agent.counts();
    server::json(
        200,
        &Health {
            ok: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: tend_proto::PROTOCOL_VERSION,
            allocations: counts.allocations,
            running_tasks: counts.running,
            data_dir: agent.settings().dirs.data_dir.clone(),
            run_dir: agent.settings().dirs.run_dir.clone(),
        },
    )
}

fn submit(agent: &Agent, req: &Request) -> Result<Reply, Refusal> {
    let src =
        std::str::from_utf8(&req.body).map_err(|_| refuse(400, "the job is not UTF-8 text"))?;
    let name = req.query.get("file").map_or("request", String::as_str);
    let job = jobspec::parse_str(src, name).map_err(|d| Refusal(400, ErrorBody::job(&d)))?;
    let allocations = agent.submit(job).map_err(agent_err)?;
    Ok(server::json(201, &Submitted { allocations }))
}

/// Take up a running container of tend-oci as an allocation.
async fn adopt(agent: &Agent, req: &Request) -> Result<Reply, Refusal> {
    let body: wire::AdoptBody = serde_json::from_slice(&req.body).map_err(|e| {
        refuse(
            400,
            format!("body: expected {{\"id\": \"CONTAINER\", \"root\": \"/run/tend-oci\", \"job\": \"NAME\"}}: {e}"),
        )
    })?;
    let (id, container_dir) = agent
        .adopt(crate::agent::adopt::AdoptRequest {
            root: body.root,
            id: body.id,
            job: body.job,
        })
        .await
        .map_err(agent_err)?;
    Ok(server::json(201, &wire::Adopted { id, container_dir }))
}

fn alloc_status(tasks: &[Arc<TaskRecord>]) -> &'static str {
    if tasks.iter().any(|t| t.phase == TaskPhase::Running) {
        "running"
    } else if tasks.iter().any(|t| t.phase == TaskPhase::Pending) {
        "pending"
    } else if tasks.iter().any(|t| t.lost) {
        "lost"
    } else if tasks.iter().any(|t| t.failed) {
        "failed"
    } else {
        "complete"
    }
}

fn task_view(t: &TaskRecord, driver: &str, full: bool) -> TaskView {
    let handle = t.handle.as_ref();
    TaskView {
        name: t.task.clone(),
        driver: driver.to_string(),
        state: t.phase,
        failed: t.failed,
        lost: t.lost,
        stopped: t.stopped,
        unreachable: t.unreachable.clone(),
        run: t.run,
        restarts: t.restarts,
        pid: handle.and_then(|h| h.task_pid),
        daemon_pid: handle.and_then(|h| h.daemon_pid),
        container_id: handle.and_then(|h| h.container_id.clone()),
        started_at: t.started_at.clone(),
        finished_at: t.finished_at.clone(),
        exit: t.last_exit.clone(),
        events: full.then(|| t.events.clone()),
        checks: t.checks.clone(),
    }
}

fn alloc_view(a: &AllocRecord, tasks: &[Arc<TaskRecord>], agent: &Agent, full: bool) -> AllocView {
    let driver_of = |name: &str| {
        a.job
            .groups
            .iter()
            .find(|g| g.name == a.group)
            .and_then(|g| g.tasks.iter().find(|t| t.name == name))
            .map_or("unknown", |t| t.driver.name())
    };
    AllocView {
        id: a.alloc_id.clone(),
        job: a.job.name.clone(),
        group: a.group.clone(),
        index: a.index,
        name: format!("{}.{}[{}]", a.job.name, a.group, a.index),
        desired: a.desired,
        status: alloc_status(tasks).to_string(),
        created_at: a.created_at.clone(),
        dir: a.adopted.as_ref().map_or_else(
            || agent.settings().dirs.alloc(&a.alloc_id).root,
            |ad| ad.dir.clone(),
        ),
        adopted: a.adopted.as_ref().map(|ad| ad.id.clone()),
        ports: a.ports.clone(),
        tasks: tasks
            .iter()
            .map(|t| task_view(t, driver_of(&t.task), full))
            .collect(),
    }
}

fn list(agent: &Agent) -> Reply {
    let allocations = agent
        .snapshot()
        .iter()
        .map(|(a, t)| alloc_view(a, t, agent, false))
        .collect();
    server::json(200, &AllocList { allocations })
}

fn get(agent: &Agent, prefix: &str) -> Result<Reply, Refusal> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    let (a, t) = agent.alloc(&id).map_err(agent_err)?;
    Ok(server::json(200, &alloc_view(&a, &t, agent, true)))
}

/// Stop an allocation. With `wait=true` the answer comes when every task is
/// dead (200, with the tasks), or, past the allocation's patience, a 504 that
/// says which task is still alive and why; without it, at once (202).
async fn stop(agent: &Agent, prefix: &str, req: &Request) -> Result<Reply, Refusal> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    agent.stop_alloc(&id).map_err(agent_err)?;
    let wait = wire::flag(&req.query, "wait")
        .map_err(|e| refuse(400, e.to_string()))?
        .unwrap_or(false);
    if !wait {
        let desired = "stop".to_string();
        return Ok(server::json(202, &StopAccepted { id, desired }));
    }
    let tasks = agent
        .wait_dead(&id, agent.stop_patience(&id))
        .await
        .map_err(agent_err)?;
    let (a, _) = agent.alloc(&id).map_err(agent_err)?;
    Ok(server::json(200, &alloc_view(&a, &tasks, agent, false)))
}

async fn signal(agent: &Agent, prefix: &str, task: &str, req: &Request) -> Result<Reply, Refusal> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    let body: SignalRequest = serde_json::from_slice(&req.body).map_err(|e| {
        refuse(
            400,
            format!("body: expected {{\"signal\": \"SIGHUP\"}}: {e}"),
        )
    })?;
    let signal = body
        .signal
        .number()
        .ok_or_else(|| refuse(400, format!("signal: {} is not a signal", body.signal)))?;
    agent
        .signal_task(&id, task, signal)
        .await
        .map_err(agent_err)?;
    let task = task.to_string();
    Ok(server::json(200, &SignalSent { id, task, signal }))
}

/// How often an idle event stream checks that its reader is still there.
const PEER_CHECK: Duration = Duration::from_secs(1);

/// The stats of an allocation's tasks: one JSON answer, or with `follow=true`
/// (or `/stats/stream`) one JSON line per `interval` (default 1s) until the
/// client leaves. Each line is read fresh from the supervisors.
async fn stats(
    agent: &Agent,
    prefix: &str,
    req: &Request,
    stream: bool,
    peer: Arc<Peer>,
) -> Result<Reply, Refusal> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    let follow = wire::flag(&req.query, "follow")
        .map_err(|e| refuse(400, e.to_string()))?
        .unwrap_or(stream);
    let interval = match req.query.get("interval") {
        None => Duration::from_secs(1),
        Some(s) => jobspec::duration::parse_duration(s)
            .filter(|d| *d >= Duration::from_millis(100))
            .ok_or_else(|| {
                refuse(
                    400,
                    format!("interval: expected a duration of 100ms or more such as 1s or 500ms, got {s:?}"),
                )
            })?,
    };
    let first = agent.alloc_stats(&id).await.map_err(agent_err)?;
    if !follow {
        return Ok(server::json(200, &first));
    }
    let (mut tx, reply) = server::stream("application/x-ndjson");
    let agent = agent.clone();
    tokio::spawn(async move {
        let mut next = Some(first);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if peer.gone() {
                tracing::debug!(alloc_id = %id, "api: a stats follower left");
                return;
            }
            let line = match next.take() {
                Some(v) => v,
                None => match agent.alloc_stats(&id).await {
                    Ok(v) => v,
                    // The allocation was collected: the stream ends.
                    Err(_) => return,
                },
            };
            if tx
                .send_data(wire::to_json_line(&line).into())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(reply)
}

/// The events the allocations keep; with `follow` (the default), then every
/// new one as a JSON line until the client leaves.
fn events(agent: &Agent, req: &Request, peer: Arc<Peer>) -> Result<Reply, Refusal> {
    let follow = req
        .query
        .get("follow")
        .is_none_or(|f| f == "true" || f == "1");
    // `alloc` (an id or unique prefix) and `task` keep only their events.
    let alloc = match req.query.get("alloc") {
        Some(prefix) => Some(agent.resolve_alloc(prefix).map_err(agent_err)?),
        None => None,
    };
    let task = req.query.get("task").cloned();
    let wanted = move |a: &str, t: &str| {
        alloc.as_deref().is_none_or(|x| x == a) && task.as_deref().is_none_or(|x| x == t)
    };
    let mut rx = agent.events();
    let mut recent: Vec<EventView> = agent
        .snapshot()
        .iter()
        .flat_map(|(a, ts)| {
            ts.iter()
                .filter(|t| wanted(&a.alloc_id, &t.task))
                .flat_map(move |t| {
                    t.events.iter().map(move |e| EventView {
                        alloc_id: a.alloc_id.clone(),
                        task: t.task.clone(),
                        time: e.time.clone(),
                        kind: e.kind.clone(),
                        message: e.message.clone(),
                    })
                })
        })
        .collect();
    recent.sort_by(|a, b| a.time.cmp(&b.time));
    if !follow {
        return Ok(server::json(200, &EventList { events: recent }));
    }
    let (mut tx, reply) = server::stream("application/x-ndjson");
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                () = tokio::time::sleep(PEER_CHECK) => {
                    if peer.gone() {
                        tracing::debug!("api: an event follower left");
                        return;
                    }
                    continue;
                }
            };
            let line = match next {
                Ok(ev) if !wanted(&ev.alloc_id, &ev.task) => continue,
                Ok(ev) => wire::to_json_line(&ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    format!("{{\"lagged\": {n}}}\n").into_bytes()
                }
                Err(_) => return,
            };
            if tx.send_data(line.into()).await.is_err() {
                return;
            }
        }
    });
    Ok(reply)
}

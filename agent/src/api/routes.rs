//! The API's routes. Every answer is JSON (`{"error": "..."}` with the right
//! status on failure) except log bodies, which are the bytes the task wrote.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWrite;

use super::http::{self, Request, Response};
use super::Peer;
use crate::agent::{Agent, AgentError};
use crate::jobspec;
use crate::logtail::LogFollower;
use crate::state::{AllocRecord, TaskPhase, TaskRecord};

/// Answer one request.
pub async fn handle<W: AsyncWrite + Unpin>(agent: &Agent, req: Request, w: &mut W, peer: &Peer) {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let resp = match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "health"]) => Ok(health(agent)),
        ("POST", ["v1", "jobs"]) => submit(agent, &req),
        ("GET", ["v1", "allocations"]) => Ok(list(agent)),
        ("GET", ["v1", "allocations", id]) => get(agent, id),
        ("POST", ["v1", "allocations", id, "stop"]) => stop(agent, id, &req).await,
        ("POST", ["v1", "allocations", id, "tasks", task, "signal"]) => {
            signal(agent, id, task, &req).await
        }
        ("GET", ["v1", "allocations", id, "tasks", task, "logs"]) => {
            return logs(agent, id, task, &req, w, peer).await;
        }
        ("GET", ["v1", "allocations", id, "stats"]) => {
            return stats(agent, id, &req, false, w, peer).await;
        }
        ("GET", ["v1", "allocations", id, "stats", "stream"]) => {
            return stats(agent, id, &req, true, w, peer).await;
        }
        ("GET", ["v1", "events"]) => return events(agent, &req, w, peer).await,
        (_, ["v1", "health"])
        | (_, ["v1", "jobs"])
        | (_, ["v1", "allocations"])
        | (_, ["v1", "allocations", _])
        | (_, ["v1", "allocations", _, "stop" | "stats"])
        | (_, ["v1", "allocations", _, "stats", "stream"])
        | (_, ["v1", "allocations", _, "tasks", _, "signal" | "logs"])
        | (_, ["v1", "events"]) => Err(Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        )),
        _ => Err(Response::error(
            404,
            format!("no route {} {}", req.method, req.path),
        )),
    };
    let resp = resp.unwrap_or_else(|e| e);
    let _ = http::write_response(w, &resp).await;
}

fn agent_err(e: AgentError) -> Response {
    Response::error(e.status(), e.to_string())
}

fn health(agent: &Agent) -> Response {
    let snap = agent.snapshot();
    let running = snap
        .iter()
        .flat_map(|(_, t)| t)
        .filter(|t| t.phase == TaskPhase::Running)
        .count();
    Response::json(
        200,
        &json!({
            "ok": true,
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": tend_proto::PROTOCOL_VERSION,
            "allocations": snap.len(),
            "running_tasks": running,
            "data_dir": agent.settings().dirs.data_dir,
            "run_dir": agent.settings().dirs.run_dir,
        }),
    )
}

fn submit(agent: &Agent, req: &Request) -> Result<Response, Response> {
    let src = std::str::from_utf8(&req.body)
        .map_err(|_| Response::error(400, "the job is not UTF-8 text"))?;
    let name = req
        .query
        .get("file")
        .cloned()
        .unwrap_or_else(|| "request".to_string());
    let job = jobspec::parse_str(src, &name).map_err(|d| {
        let items: Vec<Value> = d
            .iter()
            .map(|e| {
                json!({"file": e.file, "line": e.line, "column": e.column, "path": e.path, "message": e.message})
            })
            .collect();
        Response::json(
            400,
            &json!({"error": format!("the job has {} error(s)", items.len()), "diagnostics": items, "text": d.to_string()}),
        )
    })?;
    let ids = agent.submit(job).map_err(agent_err)?;
    Ok(Response::json(201, &json!({ "allocations": ids })))
}

fn alloc_status(tasks: &[TaskRecord]) -> &'static str {
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

fn task_json(t: &TaskRecord, driver: &str) -> Value {
    json!({
        "name": t.task,
        "driver": driver,
        "state": t.phase,
        "failed": t.failed,
        "lost": t.lost,
        "stopped": t.stopped,
        "unreachable": t.unreachable,
        "run": t.run,
        "restarts": t.restarts,
        "pid": t.handle.as_ref().and_then(|h| h.task_pid),
        "daemon_pid": t.handle.as_ref().and_then(|h| h.daemon_pid),
        "container_id": t.handle.as_ref().and_then(|h| h.container_id.clone()),
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "exit": t.last_exit,
        "events": t.events,
    })
}

fn alloc_json(a: &AllocRecord, tasks: &[TaskRecord], agent: &Agent, full: bool) -> Value {
    let driver_of = |name: &str| {
        a.job
            .groups
            .iter()
            .find(|g| g.name == a.group)
            .and_then(|g| g.tasks.iter().find(|t| t.name == name))
            .map_or("unknown", |t| t.driver.name())
    };
    let tasks_json: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut v = task_json(t, driver_of(&t.task));
            if !full {
                if let Some(o) = v.as_object_mut() {
                    o.remove("events");
                }
            }
            v
        })
        .collect();
    json!({
        "id": a.alloc_id,
        "job": a.job.name,
        "group": a.group,
        "index": a.index,
        "name": format!("{}.{}[{}]", a.job.name, a.group, a.index),
        "desired": a.desired,
        "status": alloc_status(tasks),
        "created_at": a.created_at,
        "dir": agent.settings().dirs.alloc(&a.alloc_id).root,
        "ports": a.ports,
        "tasks": tasks_json,
    })
}

fn list(agent: &Agent) -> Response {
    let snap = agent.snapshot();
    let items: Vec<Value> = snap
        .iter()
        .map(|(a, t)| alloc_json(a, t, agent, false))
        .collect();
    Response::json(200, &json!({ "allocations": items }))
}

fn get(agent: &Agent, prefix: &str) -> Result<Response, Response> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    let (a, t) = agent.alloc(&id).map_err(agent_err)?;
    Ok(Response::json(200, &alloc_json(&a, &t, agent, true)))
}

/// Stop an allocation. With `wait=true` the answer comes when every task is
/// dead (200, with the tasks), or, past the allocation's patience, a 504 that
/// says which task is still alive and why; without it, at once (202).
async fn stop(agent: &Agent, prefix: &str, req: &Request) -> Result<Response, Response> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    agent.stop_alloc(&id).map_err(agent_err)?;
    let wait = match req.query.get("wait").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(Response::error(
                400,
                format!("wait: expected true or false, got {other:?}"),
            ))
        }
    };
    if !wait {
        return Ok(Response::json(202, &json!({ "id": id, "desired": "stop" })));
    }
    let tasks = agent
        .wait_dead(&id, agent.stop_patience(&id))
        .await
        .map_err(agent_err)?;
    let (a, _) = agent.alloc(&id).map_err(agent_err)?;
    Ok(Response::json(200, &alloc_json(&a, &tasks, agent, false)))
}

/// A signal by name ("SIGHUP", "HUP", "hup") or number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

async fn signal(
    agent: &Agent,
    prefix: &str,
    task: &str,
    req: &Request,
) -> Result<Response, Response> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| {
        Response::error(
            400,
            format!("body: expected {{\"signal\": \"SIGHUP\"}}: {e}"),
        )
    })?;
    let sig = match body.get("signal") {
        Some(Value::String(s)) => parse_signal(s),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .and_then(|n| parse_signal(&n.to_string())),
        _ => None,
    }
    .ok_or_else(|| {
        Response::error(
            400,
            format!(
                "signal: {} is not a signal",
                body.get("signal")
                    .map_or("missing".to_string(), |v| v.to_string())
            ),
        )
    })?;
    agent.signal_task(&id, task, sig).await.map_err(agent_err)?;
    Ok(Response::json(
        200,
        &json!({ "id": id, "task": task, "signal": sig }),
    ))
}

async fn logs<W: AsyncWrite + Unpin>(
    agent: &Agent,
    prefix: &str,
    task: &str,
    req: &Request,
    w: &mut W,
    peer: &Peer,
) {
    let fail = |e: Response| e;
    let id = match agent.resolve_alloc(prefix) {
        Ok(id) => id,
        Err(e) => {
            let _ = http::write_response(w, &fail(agent_err(e))).await;
            return;
        }
    };
    let (alloc, tasks) = match agent.alloc(&id) {
        Ok(a) => a,
        Err(e) => {
            let _ = http::write_response(w, &agent_err(e)).await;
            return;
        }
    };
    let Some(trec) = tasks.iter().find(|t| t.task == task) else {
        let _ = http::write_response(
            w,
            &Response::error(404, format!("allocation {id} has no task {task:?}")),
        )
        .await;
        return;
    };
    let stream = req.query.get("stream").map_or("stdout", |s| s.as_str());
    if stream != "stdout" && stream != "stderr" {
        let _ = http::write_response(
            w,
            &Response::error(
                400,
                format!("stream: {stream:?} (expected stdout or stderr)"),
            ),
        )
        .await;
        return;
    }
    let offset: u64 = match req.query.get("offset").map(|o| o.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            let _ = http::write_response(w, &Response::error(400, "offset: expected a byte count"))
                .await;
            return;
        }
    };
    let follow = req
        .query
        .get("follow")
        .is_some_and(|f| f == "true" || f == "1");
    let max_files = alloc
        .job
        .groups
        .iter()
        .find(|g| g.name == alloc.group)
        .and_then(|g| g.tasks.iter().find(|t| t.name == task))
        .map_or(10, |t| t.logs.max_files);
    let dir = agent.settings().dirs.alloc(&id).logs();
    let base = tend_proto::names::log_file(task, stream);
    // Everything kept so far, oldest file first.
    let mut all = Vec::new();
    for n in (1..max_files).rev() {
        if let Ok(b) = std::fs::read(dir.join(format!("{base}.{n}"))) {
            all.extend_from_slice(&b);
        }
    }
    let mut follower = LogFollower::new(&dir, task, stream, max_files);
    let _ = follower.read_available(&mut all);
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
    if !follow {
        let _ = http::write_response(
            w,
            &Response {
                status: 200,
                content_type: "application/octet-stream",
                body: all[start..].to_vec(),
            },
        )
        .await;
        return;
    }
    let _ = trec;
    if http::write_stream_head(w, 200, "application/octet-stream")
        .await
        .is_err()
        || http::write_chunk(w, &all[start..]).await.is_err()
    {
        return;
    }
    loop {
        let mut buf = Vec::new();
        if follower.read_available(&mut buf).is_err() {
            break;
        }
        if http::write_chunk(w, &buf).await.is_err() {
            return;
        }
        let dead = agent
            .alloc(&id)
            .ok()
            .and_then(|(_, ts)| ts.into_iter().find(|t| t.task == task))
            .is_none_or(|t| t.phase == TaskPhase::Dead);
        if dead && buf.is_empty() {
            break;
        }
        if buf.is_empty() && peer.gone() {
            tracing::debug!(alloc = %id, task, "api: a log follower left");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = http::write_last_chunk(w).await;
}

/// How often an idle event stream checks that its reader is still there.
const PEER_CHECK: Duration = Duration::from_secs(1);

/// The stats of an allocation's tasks: one JSON answer, or with `follow=true`
/// (or `/stats/stream`) one JSON line per `interval` (default 1s) until the
/// client leaves. Each line is read fresh from the supervisors.
async fn stats<W: AsyncWrite + Unpin>(
    agent: &Agent,
    prefix: &str,
    req: &Request,
    stream: bool,
    w: &mut W,
    peer: &Peer,
) {
    let head = async {
        let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
        let follow = match req.query.get("follow").map(String::as_str) {
            None => stream,
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => {
                return Err(Response::error(
                    400,
                    format!("follow: expected true or false, got {other:?}"),
                ))
            }
        };
        let interval = match req.query.get("interval") {
            None => Duration::from_secs(1),
            Some(s) => jobspec::duration::parse_duration(s)
                .filter(|d| *d >= Duration::from_millis(100))
                .ok_or_else(|| {
                    Response::error(
                        400,
                        format!("interval: expected a duration of 100ms or more such as 1s or 500ms, got {s:?}"),
                    )
                })?,
        };
        let first = agent.alloc_stats(&id).await.map_err(agent_err)?;
        Ok((id, follow, interval, first))
    };
    let (id, follow, interval, first) = match head.await {
        Ok(h) => h,
        Err(resp) => {
            let _ = http::write_response(w, &resp).await;
            return;
        }
    };
    if !follow {
        let _ = http::write_response(w, &Response::json(200, &first)).await;
        return;
    }
    if http::write_stream_head(w, 200, "application/x-ndjson")
        .await
        .is_err()
    {
        return;
    }
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
                Err(_) => break,
            },
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        if http::write_chunk(w, &bytes).await.is_err() {
            return;
        }
    }
    let _ = http::write_last_chunk(w).await;
}

async fn events<W: AsyncWrite + Unpin>(agent: &Agent, req: &Request, w: &mut W, peer: &Peer) {
    let follow = req
        .query
        .get("follow")
        .is_none_or(|f| f == "true" || f == "1");
    let mut rx = agent.events();
    let mut recent: Vec<Value> = agent
        .snapshot()
        .iter()
        .flat_map(|(a, ts)| {
            ts.iter().flat_map(move |t| {
                t.events.iter().map(move |e| {
                    json!({"alloc_id": a.alloc_id, "task": t.task, "time": e.time, "kind": e.kind, "message": e.message})
                })
            })
        })
        .collect();
    recent.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    if !follow {
        let _ = http::write_response(w, &Response::json(200, &json!({ "events": recent }))).await;
        return;
    }
    if http::write_stream_head(w, 200, "application/x-ndjson")
        .await
        .is_err()
    {
        return;
    }
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
        match next {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                if http::write_chunk(w, &line).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let line = format!("{{\"lagged\": {n}}}\n");
                if http::write_chunk(w, line.as_bytes()).await.is_err() {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    let _ = http::write_last_chunk(w).await;
}

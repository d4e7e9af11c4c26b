//! What each task of an allocation uses, asked of its supervisor when a
//! client wants it: one request per task per ask, nothing polled meanwhile.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tend_proto::msg::{CgroupStats, Pressure, PressureLine};
use tend_proto::{Request, Response, Token};

use super::{Agent, AgentError};
use crate::spawn::{Client, ClientError};
use crate::state::{TaskPhase, TaskRecord};

/// How long one task's supervisor may take to answer a stats request.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

impl Agent {
    /// The stats of every task of an allocation, as the API serves them:
    /// `{"id", "time", "at_ms", "tasks": [...]}`.
    pub async fn alloc_stats(&self, alloc_id: &str) -> Result<Value, AgentError> {
        let (alloc, tasks) = self.alloc(alloc_id)?;
        let driver_of = |name: &str| {
            alloc
                .job
                .groups
                .iter()
                .find(|g| g.name == alloc.group)
                .and_then(|g| g.tasks.iter().find(|t| t.name == name))
                .map_or("unknown", |t| t.driver.name())
        };
        let mut out = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let driver = driver_of(&t.task);
            let (stats, reason) = match self.task_stats(t, driver).await {
                Ok(s) => (s, None),
                Err(why) => (CgroupStats::default(), Some(why)),
            };
            out.push(task_stats_json(t, driver, &stats, reason.as_deref()));
        }
        let now = SystemTime::now();
        let at_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(json!({
            "id": alloc.alloc_id,
            "name": format!("{}.{}[{}]", alloc.job.name, alloc.group, alloc.index),
            "time": tend_proto::time::rfc3339(now),
            "at_ms": at_ms,
            "tasks": out,
        }))
    }

    /// One task's figures, or why there are none.
    async fn task_stats(&self, t: &TaskRecord, driver: &str) -> Result<CgroupStats, String> {
        if t.phase != TaskPhase::Running {
            return Err(format!("the task is {}", t.phase));
        }
        let handle = t
            .handle
            .as_ref()
            .ok_or_else(|| "the task has no handle yet".to_string())?;
        if let Some(id) = handle.container_id.as_deref() {
            let docker = self
                .inner
                .docker
                .as_ref()
                .ok_or_else(|| "the docker driver is not enabled".to_string())?;
            return match tokio::time::timeout(STATS_TIMEOUT, docker.stats(id)).await {
                Ok(Ok(Some(s))) => Ok(s),
                Ok(Ok(None)) => Err(format!("container {id} is gone")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "the docker engine did not answer within {} s",
                    STATS_TIMEOUT.as_secs()
                )),
            };
        }
        let Some(socket) = handle.socket_path.as_deref() else {
            return Err(format!("the {driver} driver does not report stats"));
        };
        let token = self
            .inner
            .store
            .token(&t.alloc_id, &t.task)
            .map_err(|e| format!("its token: {e}"))?;
        let mut stats = ask(Path::new(socket), token).await?;
        if handle.cgroup.is_none() {
            // No cgroup of its own: whatever the supervisor says is not the task's.
            stats = CgroupStats::default();
        }
        Ok(stats)
    }
}

/// StatsV2 on a fresh connection; a supervisor that predates it is asked
/// for the old Stats instead.
async fn ask(socket: &Path, token: Token) -> Result<CgroupStats, String> {
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

/// One task's entry: the figures under the names of the wire struct, the
/// pressure averages as percentages.
pub fn task_stats_json(
    t: &TaskRecord,
    driver: &str,
    s: &CgroupStats,
    reason: Option<&str>,
) -> Value {
    json!({
        "task": t.task,
        "driver": driver,
        "state": t.phase,
        "cgroup_version": s.cgroup_version,
        "cpu": s.cpu,
        "memory": s.memory,
        "pids": s.pids,
        "io": s.io,
        "psi": {
            "cpu": s.psi.cpu.as_ref().map(pressure_json),
            "memory": s.psi.memory.as_ref().map(pressure_json),
            "io": s.psi.io.as_ref().map(pressure_json),
        },
        "reason": reason,
    })
}

fn pressure_json(p: &Pressure) -> Value {
    let line = |l: &PressureLine| {
        json!({
            "avg10": f64::from(l.avg10) / 100.0,
            "avg60": f64::from(l.avg60) / 100.0,
            "avg300": f64::from(l.avg300) / 100.0,
            "total_us": l.total_us,
        })
    };
    json!({ "some": line(&p.some), "full": p.full.as_ref().map(line) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_proto::msg::PsiStats;

    #[test]
    fn pressure_averages_are_percentages_and_missing_figures_null() {
        let t = TaskRecord::new("a1", "web");
        let s = CgroupStats {
            cgroup_version: Some(2),
            pids: Some(4),
            psi: PsiStats {
                cpu: Some(Pressure {
                    some: PressureLine {
                        avg10: 125,
                        avg60: 5,
                        avg300: 0,
                        total_us: 9,
                    },
                    full: None,
                }),
                ..PsiStats::default()
            },
            ..CgroupStats::default()
        };
        let v = task_stats_json(&t, "exec", &s, None);
        assert_eq!(v["psi"]["cpu"]["some"]["avg10"], json!(1.25));
        assert_eq!(v["psi"]["cpu"]["some"]["avg60"], json!(0.05));
        assert_eq!(v["psi"]["cpu"]["full"], Value::Null);
        assert_eq!(v["psi"]["io"], Value::Null);
        assert_eq!(v["pids"], json!(4));
        assert_eq!(v["memory"]["current"], Value::Null);
        assert_eq!(v["cpu"]["usage_us"], Value::Null);
        let none = task_stats_json(&t, "docker", &CgroupStats::default(), Some("why"));
        assert_eq!(none["reason"], json!("why"));
        assert_eq!(none["cgroup_version"], Value::Null);
    }
}

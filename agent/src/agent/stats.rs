//! What each task of an allocation uses, asked of its supervisor when a
//! client wants it: one request per task per ask, nothing polled meanwhile.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tend_proto::msg::{CgroupStats, Pressure, PressureLine};

use super::{Agent, AgentError};
use crate::driver::{RunError, TaskDriver};
use crate::state::{TaskPhase, TaskRecord};

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
            let (stats, reason) = match self.task_stats(t).await {
                Ok(s) => (s, None),
                Err(why) => (CgroupStats::default(), Some(why.to_string())),
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
    async fn task_stats(&self, t: &TaskRecord) -> Result<CgroupStats, NoStats> {
        if t.phase != TaskPhase::Running {
            return Err(NoStats::NotRunning(t.phase));
        }
        let handle = t.handle.as_ref().ok_or(NoStats::NoHandle)?;
        let driver = self.inner.drivers.for_handle(handle)?;
        let token = self.inner.store.token(&t.alloc_id, &t.task).ok();
        Ok(driver.stats(handle, token).await?)
    }
}

/// Why a task has no figures to show.
#[derive(Debug, thiserror::Error)]
enum NoStats {
    /// Only a running task uses anything.
    #[error("the task is {0}")]
    NotRunning(TaskPhase),
    /// It runs but its driver has not handed back its handle yet.
    #[error("the task has no handle yet")]
    NoHandle,
    /// Its driver could not say.
    #[error(transparent)]
    Driver(#[from] RunError),
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

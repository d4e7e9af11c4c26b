//! `GET /v1/metrics`: the agent's counters with what the host says now.

use super::Agent;
use crate::state::{TaskPhase, TaskRecord};

impl Agent {
    /// `GET /v1/metrics`: the Prometheus exposition of the agent, with what
    /// the host says now of its supervisors' memory and its tasks' logs.
    pub fn metrics_text(&self) -> String {
        let snapshot = self.snapshot();
        let mut host = crate::metrics::HostFigures::default();
        if let Some((rss, _)) =
            crate::metrics::memory_of(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
        {
            host.agent_rss = rss;
        }
        for (alloc, tasks) in &snapshot {
            let (out, err) = crate::metrics::log_bytes(&self.inner.logs_dir(alloc));
            host.log_stdout += out;
            host.log_stderr += err;
            for t in tasks.iter().filter(|t| t.phase == TaskPhase::Running) {
                let Some(h) = &t.handle else { continue };
                let Some(pid) = h.daemon_pid else { continue };
                // The same process that was started, not a reuse of its pid.
                let same = h
                    .daemon_start_time
                    .is_none_or(|st| crate::ident::start_time(pid).is_some_and(|now| now == st));
                if let (true, Some((rss, uss))) = (same, crate::metrics::memory_of(pid)) {
                    host.supervisors += 1;
                    host.supervisor_rss += rss;
                    host.supervisor_uss += uss;
                }
            }
        }
        let tasks: Vec<&TaskRecord> = snapshot
            .iter()
            .flat_map(|(_, t)| t.iter().map(|t| &**t))
            .collect();
        self.inner.metrics.render(snapshot.len(), &tasks, &host)
    }
}

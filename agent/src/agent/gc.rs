//! The agent's garbage collection: dead allocations removed, records, dirs
//! and ports, after `gc_retention` or when asked.

use std::time::Duration;

use super::{Agent, AgentError, Inner};
use crate::state::TaskPhase;

impl Agent {
    /// Remove the allocations whose every task is dead and ended at least
    /// `older_than` ago (of job `job` only, when given): their records, their
    /// dirs (logs and exit files included) and their slots. A live or
    /// pending task keeps its allocation, whatever its age. The ids removed.
    pub fn collect_garbage(
        &self,
        older_than: Duration,
        job: Option<&str>,
    ) -> Result<Vec<String>, AgentError> {
        let now = std::time::SystemTime::now();
        let dead: Vec<String> = {
            let allocs = self.inner.allocs.lock().expect("allocs lock");
            allocs
                .values()
                .filter(|a| job.is_none_or(|j| a.record.job.name == j))
                .filter(|a| {
                    a.tasks.values().all(|t| t.record.phase == TaskPhase::Dead)
                        && a.tasks.values().all(|t| {
                            t.record
                                .finished_at
                                .as_deref()
                                .and_then(tend_proto::time::parse_rfc3339)
                                .and_then(|end| now.duration_since(end).ok())
                                .is_some_and(|age| age >= older_than)
                        })
                })
                .map(|a| a.record.alloc_id.clone())
                .collect()
        };
        let mut removed = Vec::new();
        for id in dead {
            // Out of the map first: nothing reaches it any more, then its files.
            if self
                .inner
                .allocs
                .lock()
                .expect("allocs lock")
                .remove(&id)
                .is_none()
            {
                continue;
            }
            self.inner.remove_alloc_files(&id)?;
            tracing::info!(alloc = %id, "allocation collected");
            removed.push(id);
        }
        Ok(removed)
    }
}

impl Inner {
    /// An allocation's port reservation, its records and its dir (logs and
    /// exit files included) gone; one already gone is no error.
    pub(crate) fn remove_alloc_files(&self, id: &str) -> Result<(), AgentError> {
        self.ports.release(id);
        self.store.remove_alloc(id)?;
        let dir = self.settings.dirs.alloc(id);
        match std::fs::remove_dir_all(&dir.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::CollectDir {
                alloc: id.to_string(),
                path: dir.root.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

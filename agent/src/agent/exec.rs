//! Where an exec goes: the tend-spawn of a running task.

use std::path::PathBuf;

use tend_proto::Token;

use super::{Agent, AgentError};

impl Agent {
    /// The socket and token of the tend-spawn that runs `task` of
    /// `alloc_id`, for an exec. Refused for a task that is not running, and
    /// for a driver without a tend-spawn (docker), which it names.
    pub fn exec_target(&self, alloc_id: &str, task: &str) -> Result<(PathBuf, Token), AgentError> {
        let allocs = self.inner.allocs.lock().expect("allocs lock");
        let t = super::running_task(&allocs, alloc_id, task)?;
        let handle = t.record.handle.as_ref().ok_or_else(|| {
            AgentError::Conflict(format!("task {task} has no handle yet: try again"))
        })?;
        let Some(socket) = handle.socket_path.as_deref() else {
            return Err(AgentError::Conflict(format!(
                "task {task} runs under the {} driver, which tend exec does not support \
                 (use `docker exec` on its container)",
                handle.driver
            )));
        };
        let token = self
            .inner
            .store
            .token(alloc_id, task)
            .map_err(|e| AgentError::Internal(format!("task {task}: its token: {e}")))?;
        Ok((PathBuf::from(socket), token))
    }
}

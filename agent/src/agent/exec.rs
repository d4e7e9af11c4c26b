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
        let handle = t
            .record
            .handle
            .as_ref()
            .ok_or_else(|| AgentError::NoHandleYet {
                task: task.to_string(),
            })?;
        let Some(socket) = handle.socket_path.as_deref() else {
            return Err(AgentError::NoExec {
                task: task.to_string(),
                driver: handle.driver.clone(),
            });
        };
        let token = self
            .inner
            .store
            .token(alloc_id, task)
            .map_err(|source| AgentError::Token {
                task: task.to_string(),
                source,
            })?;
        Ok((PathBuf::from(socket), token))
    }
}

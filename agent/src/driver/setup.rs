//! What every driver starts from: the task's environment and its interpolated
//! command line, built the same way whatever runs it.

use std::collections::BTreeMap;

use super::DriverError;
use crate::jobspec::{Group, Job, Task};
use crate::paths::AllocDir;
use crate::ports::AssignedPort;
use crate::taskenv::{self, TaskEnvInputs};

/// Where a task runs: what its environment is built from.
#[derive(Debug)]
pub struct TaskContext<'a> {
    /// The job.
    pub job: &'a Job,
    /// The group.
    pub group: &'a Group,
    /// The allocation's index in its group.
    pub index: u32,
    /// The task.
    pub task: &'a Task,
    /// The allocation id.
    pub alloc_id: &'a str,
    /// The allocation's dir.
    pub alloc: &'a AllocDir,
    /// The task's ports.
    pub ports: &'a [AssignedPort],
    /// Agent variables a task may ask for.
    pub env_allowlist: &'a [String],
}

/// A task's environment and its interpolated command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSetup {
    /// The whole environment of the task.
    pub env: Vec<(String, String)>,
    /// The command (None only for docker without one).
    pub command: Option<String>,
    /// The arguments, one each, never re-split.
    pub args: Vec<String>,
}

/// Build a task's environment and interpolate its command and arguments.
pub fn task_setup(c: &TaskContext<'_>) -> Result<TaskSetup, DriverError> {
    let agent_env: BTreeMap<String, String> = std::env::vars().collect();
    let host_alloc_dir = c.alloc.shared();
    let host_task_dir = c.alloc.task_local(&c.task.name);
    let inputs = TaskEnvInputs {
        alloc_id: c.alloc_id,
        job: &c.job.name,
        group: &c.group.name,
        index: c.index,
        task: &c.task.name,
        driver: c.task.driver,
        host_alloc_dir: &host_alloc_dir,
        host_task_dir: &host_task_dir,
        resources: &c.task.resources,
        ports: c.ports,
        job_meta: &c.job.meta,
        group_meta: &c.group.meta,
        task_meta: &c.task.meta,
        task_env: &c.task.env,
        env_allow_list: c.env_allowlist,
        agent_env: &agent_env,
    };
    let env = inputs.build();
    let vars = inputs.interpolation_vars(&env);
    let cmd = taskenv::prepare_command(c.task.driver, &c.task.config, &vars).map_err(|e| {
        DriverError::Command {
            task: c.task.name.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(TaskSetup {
        env,
        command: cmd.command,
        args: cmd.args,
    })
}

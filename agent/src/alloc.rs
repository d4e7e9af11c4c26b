//! An allocation: a group of a job's tasks sharing one alloc dir, its ports
//! and its users. What the agent checks and makes before any task of it runs.

use crate::agent::{AgentError, Inner};
use crate::driver::docker::DockerDriver;
use crate::driver::spawn;
use crate::jobspec::{Driver, Group, Job, Task};
use crate::state::AllocRecord;

/// Check what can be checked before anything exists.
pub(crate) fn preflight(inner: &Inner, task: &Task) -> Result<(), AgentError> {
    if task.driver == Driver::Docker {
        let d = inner
            .drivers
            .docker
            .as_ref()
            .ok_or_else(|| AgentError::DockerDisabled {
                task: task.name.clone(),
            })?;
        DockerDriver::check(d.engine().options(), task)?;
        // The driver mounts each bind of the alloc dir for the engine itself.
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(AgentError::DockerBinds {
                task: task.name.clone(),
                source: crate::driver::docker::binds::BindError::NotRoot { uid },
            });
        }
        return Ok(());
    }
    spawn::config::check_task(
        task,
        &inner.settings.chroot_env,
        inner.settings.config.allows_root(task.driver.name()),
        inner.settings.config.oci_allows_host_binds(),
    )?;
    Ok(())
}

/// Take the allocation's ports (its group's, then every task's) into its
/// record: in memory, one allocation after the other. Its dirs are made by
/// [`make_dirs`], which allocations may do at once.
pub(crate) fn prepare(inner: &Inner, mut record: AllocRecord) -> Result<AllocRecord, AgentError> {
    let job = std::sync::Arc::clone(&record.job);
    let group = group_of(&job, &record.group)?;
    let group_ports = inner
        .ports
        .allocate(&record.alloc_id, &group.network)
        .map_err(|source| {
            inner.ports.release(&record.alloc_id);
            AgentError::GroupPorts {
                group: group.name.clone(),
                source,
            }
        })?;
    for t in &group.tasks {
        match inner.ports.allocate(&record.alloc_id, &t.resources.ports) {
            Ok(mut p) => {
                p.extend(group_ports.iter().cloned());
                record.ports.insert(t.name.clone(), p);
            }
            Err(source) => {
                inner.ports.release(&record.alloc_id);
                return Err(AgentError::TaskPorts {
                    task: t.name.clone(),
                    source,
                });
            }
        }
    }
    Ok(record)
}

/// Create the allocation's dirs and hand its tasks' users what they need.
pub(crate) fn make_dirs(inner: &Inner, record: &AllocRecord) -> Result<(), AgentError> {
    let alloc = inner.settings.dirs.alloc(&record.alloc_id);
    let group = group_of(&record.job, &record.group)?;
    let names: Vec<&str> = group.tasks.iter().map(|t| t.name.as_str()).collect();
    alloc
        .create(&names)
        .map_err(|source| AgentError::AllocDir {
            path: alloc.root.clone(),
            source,
        })?;
    for t in group
        .tasks
        .iter()
        .filter(|t| matches!(t.driver, Driver::Exec | Driver::Oci))
    {
        let user = spawn::config::task_user(t);
        let (uid, gid) =
            spawn::config::resolve_user(&user).ok_or_else(|| AgentError::UnknownUser {
                task: t.name.clone(),
                user: user.clone(),
            })?;
        alloc
            .prepare_for_user(&t.name, uid, gid)
            .map_err(|source| AgentError::PrepareAlloc {
                path: alloc.root.clone(),
                source,
            })?;
    }
    Ok(())
}

fn group_of<'a>(job: &'a Job, name: &str) -> Result<&'a Group, AgentError> {
    job.groups
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| AgentError::NoGroup {
            group: name.to_string(),
        })
}

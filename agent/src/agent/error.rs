//! Why the agent refused or failed a request: each variant names what failed
//! and keeps its source; [`AgentError::status`] is its HTTP answer.

use std::path::PathBuf;

use crate::driver::docker::binds::BindError;
use crate::driver::docker::DockerError;
use crate::driver::{DriverError, RunError};
use crate::ports::PortError;
use crate::state::{StateError, TaskPhase};

/// Why the agent refused a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A container was not adopted.
    #[error(transparent)]
    Adopt(#[from] super::adopt::AdoptError),
    /// An empty allocation id: a prefix of every id, so it names none.
    #[error("the allocation id is empty: give an id or a unique prefix of one")]
    EmptyAllocId,
    /// No allocation has an id starting with the prefix.
    #[error("no allocation matches {prefix:?}")]
    NoAllocMatch {
        /// The prefix given.
        prefix: String,
    },
    /// A prefix names several allocations.
    #[error("{prefix:?} matches {} allocations: {}", .matches.len(), .matches.join(", "))]
    AmbiguousAlloc {
        /// The prefix given.
        prefix: String,
        /// Every id it names.
        matches: Vec<String>,
    },
    /// No allocation has this id.
    #[error("no allocation {alloc}")]
    NoAlloc {
        /// The id.
        alloc: String,
    },
    /// The allocation has no task of this name.
    #[error("allocation {alloc} has no task {task:?}")]
    NoTask {
        /// The allocation.
        alloc: String,
        /// The task asked for.
        task: String,
    },
    /// A task's driver is disabled in the agent's config.
    #[error("task {task}: driver {driver} is disabled on this agent (plugin \"{driver}\" {{ enabled = false }})")]
    DriverDisabled {
        /// The task.
        task: String,
        /// The driver.
        driver: &'static str,
    },
    /// A docker task on an agent without the docker driver.
    #[error("task {task}: driver docker is disabled on this agent")]
    DockerDisabled {
        /// The task.
        task: String,
    },
    /// A docker task on an agent that cannot mount its binds.
    #[error("task {task}: driver docker: {source}")]
    DockerBinds {
        /// The task.
        task: String,
        /// Why.
        source: BindError,
    },
    /// The task's driver refuses it before anything exists.
    #[error(transparent)]
    TaskRefused(#[from] DriverError),
    /// The allocation names a group its job does not have.
    #[error("no group {group}")]
    NoGroup {
        /// The group.
        group: String,
    },
    /// An exec task's user does not exist on the host.
    #[error("task {task}: user: unknown user {user:?}")]
    UnknownUser {
        /// The task.
        task: String,
        /// The user.
        user: String,
    },
    /// The group's ports cannot be given.
    #[error("group {group}: {source}")]
    GroupPorts {
        /// The group.
        group: String,
        /// Why.
        source: PortError,
    },
    /// A task's ports cannot be given.
    #[error("task {task}: {source}")]
    TaskPorts {
        /// The task.
        task: String,
        /// Why.
        source: PortError,
    },
    /// Another agent holds the data dir's lock.
    #[error("another agent holds the data dir {} ({}: {source})", .data_dir.display(), .lock.display())]
    DataDirLocked {
        /// The data dir.
        data_dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// Why the lock was not taken.
        source: nix::errno::Errno,
    },
    /// The task is not running, so it cannot take a signal.
    #[error("task {task} is not running ({phase})")]
    NotRunning {
        /// The task.
        task: String,
        /// Where it is in its life.
        phase: TaskPhase,
    },
    /// The task's runner is gone: it ended meanwhile.
    #[error("task {task} is not running")]
    RunnerGone {
        /// The task.
        task: String,
    },
    /// The task's driver could not deliver a signal.
    #[error("{source}")]
    Signal {
        /// The task.
        task: String,
        /// Why.
        source: RunError,
    },
    /// The task's runner did not answer a signal request in time.
    #[error("task {task} did not take the signal")]
    SignalUnanswered {
        /// The task.
        task: String,
    },
    /// An allocation did not stop within the time it had.
    #[error("allocation {alloc} is not stopped after {} s: {}", .secs, join(.alive))]
    StopTimeout {
        /// The allocation.
        alloc: String,
        /// How long it had, seconds.
        secs: u64,
        /// Each task still alive, and why.
        alive: Vec<Straggler>,
    },
    /// One of the agent's dirs cannot be made.
    #[error("{what} {}: {source}", .path.display())]
    Dir {
        /// Which dir ("create" for the data dir, "run dir", ...).
        what: &'static str,
        /// The dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data dir's lock file cannot be opened.
    #[error("open {}: {source}", .path.display())]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cgroup parent of exec tasks is unusable.
    #[error("exec driver: {0}")]
    ExecCgroup(#[source] tend_cgroup::CgroupError),
    /// The docker driver cannot be set up.
    #[error("docker driver: {0}")]
    DockerDriver(#[source] DockerError),
    /// The port allocator cannot be made.
    #[error("ports: {0}")]
    PortRange(#[source] PortError),
    /// The state store cannot be opened.
    #[error("state store: {0}")]
    StateStore(#[source] StateError),
    /// The state store cannot be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// An allocation's dir cannot be made.
    #[error("create alloc dir {}: {source}", .path.display())]
    AllocDir {
        /// The alloc dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A task's dirs cannot be handed to its user.
    #[error("prepare {}: {source}", .path.display())]
    PrepareAlloc {
        /// The alloc dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A running task whose handle is not recorded yet (its start is
    /// finishing): an exec must wait.
    #[error("task {task} has no handle yet: try again")]
    NoHandleYet {
        /// The task.
        task: String,
    },
    /// An exec into a task whose driver has no tend-spawn.
    #[error("task {task} runs under the {driver} driver, which tend exec does not support (use `docker exec` on its container)")]
    NoExec {
        /// The task.
        task: String,
        /// Its driver.
        driver: String,
    },
    /// A task's token cannot be read.
    #[error("task {task}: its token: {source}")]
    Token {
        /// The task.
        task: String,
        /// Why.
        source: StateError,
    },
    /// A dead allocation's dir cannot be removed by the garbage collection.
    #[error("gc of {alloc}: removing {}: {source}", .path.display())]
    CollectDir {
        /// The allocation.
        alloc: String,
        /// Its dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A task still alive when its allocation should have stopped.
#[derive(Debug, Clone)]
pub struct Straggler {
    /// The task.
    pub task: String,
    /// Where it is in its life.
    pub phase: TaskPhase,
    /// Why its tend-spawn cannot be reached, if it cannot.
    pub unreachable: Option<String>,
}

impl std::fmt::Display for Straggler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.unreachable {
            Some(why) => write!(f, "{}: tend-spawn does not answer ({why})", self.task),
            None => write!(f, "{}: still {}", self.task, self.phase),
        }
    }
}

fn join(alive: &[Straggler]) -> String {
    alive
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl AgentError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        use AgentError as E;
        match self {
            E::Adopt(e) => e.status(),
            E::NoAllocMatch { .. } | E::NoAlloc { .. } | E::NoTask { .. } => 404,
            E::EmptyAllocId
            | E::DriverDisabled { .. }
            | E::DockerDisabled { .. }
            | E::DockerBinds { .. }
            | E::TaskRefused(_)
            | E::NoGroup { .. }
            | E::UnknownUser { .. } => 400,
            E::AmbiguousAlloc { .. }
            | E::GroupPorts { .. }
            | E::TaskPorts { .. }
            | E::DataDirLocked { .. }
            | E::NotRunning { .. }
            | E::RunnerGone { .. }
            | E::Signal { .. }
            | E::SignalUnanswered { .. } => 409,
            E::StopTimeout { .. } => 504,
            E::Dir { .. }
            | E::LockFile { .. }
            | E::ExecCgroup(_)
            | E::DockerDriver(_)
            | E::PortRange(_)
            | E::StateStore(_)
            | E::State(_)
            | E::AllocDir { .. }
            | E::PrepareAlloc { .. }
            | E::CollectDir { .. }
            | E::Token { .. } => 500,
            E::NoHandleYet { .. } | E::NoExec { .. } => 409,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed_in_the_words_users_see() {
        let e = AgentError::AmbiguousAlloc {
            prefix: "ab".into(),
            matches: vec!["ab1".into(), "ab2".into()],
        };
        assert_eq!(e.to_string(), "\"ab\" matches 2 allocations: ab1, ab2");
        assert_eq!(e.status(), 409);
        let e = AgentError::DriverDisabled {
            task: "web".into(),
            driver: "exec",
        };
        assert_eq!(
            e.to_string(),
            "task web: driver exec is disabled on this agent (plugin \"exec\" { enabled = false })"
        );
        assert_eq!(e.status(), 400);
        let e = AgentError::NoTask {
            alloc: "a1".into(),
            task: "db".into(),
        };
        assert_eq!(e.to_string(), "allocation a1 has no task \"db\"");
        assert_eq!(e.status(), 404);
        let e = AgentError::StopTimeout {
            alloc: "a1".into(),
            secs: 7,
            alive: vec![
                Straggler {
                    task: "web".into(),
                    phase: TaskPhase::Running,
                    unreachable: Some("connect refused".into()),
                },
                Straggler {
                    task: "db".into(),
                    phase: TaskPhase::Running,
                    unreachable: None,
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "allocation a1 is not stopped after 7 s: \
             web: tend-spawn does not answer (connect refused); db: still running"
        );
        assert_eq!(e.status(), 504);
        let e = AgentError::Signal {
            task: "web".into(),
            source: RunError::ContainerNotRunning,
        };
        assert_eq!(e.to_string(), "the container is not running");
        assert_eq!(e.status(), 409);
    }
}

//! Drivers turn a task into something that runs. Every process-based driver
//! (`raw_exec`, `exec`) goes through tend-spawn, so every task survives the agent.

use std::path::Path;
use std::time::Duration;

use tend_proto::config::LogConfig;
use tend_proto::{SpawnConfig, Token};

use crate::jobspec::{Driver, Task};
use crate::paths::{AllocDir, Dirs};

/// Why a task cannot be handed to its driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver cannot run here.
    #[error("task {task}: driver {driver}: {reason}")]
    Unavailable {
        /// The task.
        task: String,
        /// The driver.
        driver: &'static str,
        /// Why.
        reason: String,
    },
    /// The command cannot be found.
    #[error("task {task}: config.command: {reason}")]
    Command {
        /// The task.
        task: String,
        /// Why.
        reason: String,
    },
}

/// How long a daemon waits for the agent's Release after its task ended.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(300);

/// What a driver needs to start one run of one task.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The agent's dirs.
    pub dirs: &'a Dirs,
    /// The allocation.
    pub alloc_id: &'a str,
    /// The allocation's dir.
    pub alloc: &'a AllocDir,
    /// The task.
    pub task: &'a Task,
    /// Which run, from 1.
    pub run: u32,
    /// The task's environment, already built and interpolated.
    pub env: Vec<(String, String)>,
    /// The command, interpolated.
    pub command: String,
    /// The args, interpolated.
    pub args: Vec<String>,
    /// The per-task secret.
    pub token: Token,
}

/// The PATH used to find a bare command name when the task's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Find `command` the way a shell does: a path is taken as is, a bare name is
/// looked up in `PATH` (the task's own, else [`DEFAULT_PATH`]) under `root`.
pub fn resolve_command(command: &str, env: &[(String, String)], root: &Path) -> Option<String> {
    if command.contains('/') {
        return Some(command.to_string());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    path.split(':').filter(|d| d.starts_with('/')).find_map(|d| {
        let cand = format!("{}/{command}", d.trim_end_matches('/'));
        let host = root.join(cand.trim_start_matches('/'));
        is_executable(&host).then_some(cand)
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The spawn config of one run of a task.
pub fn spawn_config(l: &Launch<'_>) -> Result<SpawnConfig, DriverError> {
    let task = l.task;
    let unavailable = |reason: &str| DriverError::Unavailable {
        task: task.name.clone(),
        driver: task.driver.name(),
        reason: reason.to_string(),
    };
    let (cwd, isolation, cgroup) = match task.driver {
        Driver::RawExec => (
            l.alloc.task_root(&task.name).display().to_string(),
            None,
            None,
        ),
        Driver::Exec => return Err(unavailable("not available in this build yet")),
        Driver::Docker => return Err(unavailable("not available in this build yet")),
    };
    let command = resolve_command(&l.command, &l.env, Path::new("/")).ok_or_else(|| {
        DriverError::Command {
            task: task.name.clone(),
            reason: format!("{:?} is not found in the task's PATH", l.command),
        }
    })?;
    Ok(SpawnConfig {
        alloc_id: l.alloc_id.to_string(),
        task: task.name.clone(),
        run: l.run,
        token: l.token,
        command,
        args: l.args.clone(),
        env: l.env.clone(),
        cwd,
        alloc_dir: l.alloc.root.display().to_string(),
        socket_path: l
            .dirs
            .task_socket(l.alloc_id, &task.name, l.run)
            .display()
            .to_string(),
        logs: LogConfig {
            max_files: task.logs.max_files,
            max_file_size: task.logs.max_file_size_mb.saturating_mul(1024 * 1024),
        },
        kill_signal: task.kill_signal,
        kill_timeout_ms: u64::try_from(task.kill_timeout.as_millis()).unwrap_or(u64::MAX),
        linger_ms: u64::try_from(DEFAULT_LINGER.as_millis()).unwrap_or(u64::MAX),
        cgroup,
        isolation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_found_on_path() {
        let sh = resolve_command("sh", &[], Path::new("/")).unwrap();
        assert!(sh.starts_with('/') && sh.ends_with("/sh"), "{sh}");
        assert_eq!(resolve_command("/x/y", &[], Path::new("/")).as_deref(), Some("/x/y"));
        assert_eq!(resolve_command("no-such-program-here", &[], Path::new("/")), None);
    }
}

//! The task environment: the `TEND_*` variables a task sees, and `${NAME}`
//! interpolation of its command, arguments and env values (Nomad's rules).
//!
//! Interpolation replaces each `${NAME}` inside one string and never splits
//! the result: an argument stays one argument whatever its value holds
//! (spaces, quotes, even `${...}`, which is not interpolated again). An
//! unknown name stays as written; `$${` writes a literal `${`.
//!
//! Nothing of the agent's own environment reaches a task except variables
//! that are both on the agent's allow-list and named by the task
//! (`env { PATH = "${PATH}" }`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::jobspec::{Driver, Resources, TaskConfig};
use crate::ports::AssignedPort;

/// The search path the caller uses to resolve a bare command name when the
/// task's environment has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the environment of one task is made from.
#[derive(Debug, Clone)]
pub struct TaskEnvInputs<'a> {
    /// The allocation id.
    pub alloc_id: &'a str,
    /// Job name.
    pub job: &'a str,
    /// Group name.
    pub group: &'a str,
    /// Index of the allocation within its group (0 .. count).
    pub index: u32,
    /// Task name.
    pub task: &'a str,
    /// The task's driver: exec and docker see `/alloc` and `/local`, raw_exec the host paths.
    pub driver: Driver,
    /// `<data_dir>/allocs/<alloc_id>/alloc` on the host.
    pub host_alloc_dir: &'a Path,
    /// `<data_dir>/allocs/<alloc_id>/<task>/local` on the host.
    pub host_task_dir: &'a Path,
    /// The task's resources.
    pub resources: &'a Resources,
    /// Ports given to the task.
    pub ports: &'a [AssignedPort],
    /// `meta {}` of the job.
    pub job_meta: &'a BTreeMap<String, String>,
    /// `meta {}` of the group.
    pub group_meta: &'a BTreeMap<String, String>,
    /// `meta {}` of the task (wins over group and job).
    pub task_meta: &'a BTreeMap<String, String>,
    /// The task's own `env {}` (values not yet interpolated).
    pub task_env: &'a BTreeMap<String, String>,
    /// Names of agent variables a task may ask for (agent config).
    pub env_allow_list: &'a [String],
    /// The agent's own environment (injected, so tests need no process state).
    pub agent_env: &'a BTreeMap<String, String>,
}

/// `<job>.<group>[<index>]`, Nomad's allocation name.
pub fn alloc_name(job: &str, group: &str, index: u32) -> String {
    format!("{job}.{group}[{index}]")
}

/// A meta key as an environment name part: anything but `[A-Za-z0-9_]` becomes `_`.
fn env_part(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl TaskEnvInputs<'_> {
    /// The allocation name, `<job>.<group>[<index>]`.
    pub fn alloc_name(&self) -> String {
        alloc_name(self.job, self.group, self.index)
    }

    /// The `TEND_*` variables, before the task's own env.
    fn tend_vars(&self) -> Vec<(String, String)> {
        let (alloc_dir, task_dir) = match self.driver {
            Driver::RawExec => (
                self.host_alloc_dir.display().to_string(),
                self.host_task_dir.display().to_string(),
            ),
            Driver::Exec | Driver::Docker | Driver::Oci => {
                ("/alloc".to_string(), "/local".to_string())
            }
        };
        let mut env = vec![
            ("TEND_ALLOC_DIR".to_string(), alloc_dir),
            ("TEND_TASK_DIR".to_string(), task_dir),
            ("TEND_ALLOC_ID".to_string(), self.alloc_id.to_string()),
            ("TEND_ALLOC_NAME".to_string(), self.alloc_name()),
            ("TEND_ALLOC_INDEX".to_string(), self.index.to_string()),
            ("TEND_JOB_NAME".to_string(), self.job.to_string()),
            ("TEND_GROUP_NAME".to_string(), self.group.to_string()),
            ("TEND_TASK_NAME".to_string(), self.task.to_string()),
            (
                "TEND_MEMORY_LIMIT".to_string(),
                self.resources.memory.to_string(),
            ),
            ("TEND_CPU_LIMIT".to_string(), self.resources.cpu.to_string()),
        ];
        for p in self.ports {
            // Inside a container the task binds the mapped port; elsewhere the host port.
            let port = match (self.driver, p.to) {
                (Driver::Docker, Some(to)) => to,
                _ => p.host_port,
            };
            let l = &p.label;
            env.push((format!("TEND_IP_{l}"), p.host_ip.to_string()));
            env.push((format!("TEND_PORT_{l}"), port.to_string()));
            env.push((format!("TEND_HOST_PORT_{l}"), p.host_port.to_string()));
            env.push((
                format!("TEND_ADDR_{l}"),
                SocketAddr::new(p.host_ip, port).to_string(),
            ));
        }
        let mut meta = BTreeMap::new();
        for m in [self.job_meta, self.group_meta, self.task_meta] {
            for (k, v) in m {
                meta.insert(format!("TEND_META_{}", env_part(k)), v.clone());
            }
        }
        env.extend(meta);
        env
    }

    /// What `${NAME}` may refer to: the `TEND_*` variables and the agent
    /// variables on the allow-list.
    fn lookup_vars(&self, tend: &[(String, String)]) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = self
            .env_allow_list
            .iter()
            .filter_map(|name| self.agent_env.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        vars.extend(tend.iter().cloned());
        vars
    }

    /// The task's environment, in order: the `TEND_*` variables, `TEND_META_*`
    /// (job, group, task; task wins), then the task's `env` with its values
    /// interpolated (a task env key replaces a `TEND_*` one of the same name).
    pub fn build(&self) -> Vec<(String, String)> {
        let mut env = self.tend_vars();
        let vars = self.lookup_vars(&env);
        for (k, v) in self.task_env {
            let value = interpolate(v, &vars);
            match env.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = value,
                None => env.push((k.clone(), value)),
            }
        }
        env
    }

    /// The variables `${NAME}` in command and args is replaced from: the
    /// built environment plus the allow-listed agent variables.
    pub fn interpolation_vars(&self, env: &[(String, String)]) -> BTreeMap<String, String> {
        let mut vars = self.lookup_vars(&[]);
        vars.extend(env.iter().cloned());
        vars
    }
}

/// Replaces every `${NAME}` in `s` from `vars`, Nomad's way: an unknown name
/// stays as written, `$${` gives a literal `${`, a value is inserted as it is
/// and never scanned again, and nothing is split.
pub fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&tail[..end + 3]),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(tail);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Why a task's command cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// raw_exec and exec need a command.
    #[error("task has no command")]
    Missing,
    /// The command is empty after interpolation.
    #[error("command {written:?} is empty after interpolation")]
    Empty {
        /// The command as written.
        written: String,
    },
    /// A `${NAME}` in the command is unknown: a typo must not run something else.
    #[error("command {written:?} refers to an unknown variable: {result:?}")]
    Unresolved {
        /// The command as written.
        written: String,
        /// After interpolation.
        result: String,
    },
    /// The command holds blanks or control characters: arguments go in `args`.
    #[error("command must be one program path, got {result:?} (put arguments in args)")]
    NotOnePath {
        /// After interpolation.
        result: String,
    },
    /// A relative path with a slash: only absolute paths and bare names are allowed.
    #[error("command must be an absolute path or a bare program name, got {result:?}")]
    Relative {
        /// After interpolation.
        result: String,
    },
}

/// A task's program and arguments, interpolated and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCommand {
    /// An absolute path, or a bare name the caller resolves against the
    /// task's `PATH` (or [`DEFAULT_PATH`] when it has none). None only for
    /// docker without a command (the image's own).
    pub command: Option<String>,
    /// Arguments, one per element, never re-split.
    pub args: Vec<String>,
}

/// Interpolates a task's command and each argument; checks the command is
/// still one absolute path or one bare name.
pub fn prepare_command(
    driver: Driver,
    config: &TaskConfig,
    vars: &BTreeMap<String, String>,
) -> Result<TaskCommand, CommandError> {
    let args = config.args.iter().map(|a| interpolate(a, vars)).collect();
    let command = match &config.command {
        // A container runs its image's command, a bundle its process.args.
        None if matches!(driver, Driver::Docker | Driver::Oci) => None,
        None => return Err(CommandError::Missing),
        Some(written) => {
            let result = interpolate(written, vars);
            if result.is_empty() {
                return Err(CommandError::Empty {
                    written: written.clone(),
                });
            }
            if unresolved(written, vars) {
                return Err(CommandError::Unresolved {
                    written: written.clone(),
                    result,
                });
            }
            if result.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(CommandError::NotOnePath { result });
            }
            if !result.starts_with('/') && result.contains('/') {
                return Err(CommandError::Relative { result });
            }
            Some(result)
        }
    };
    Ok(TaskCommand { command, args })
}

/// True when `s` has a `${NAME}` (not escaped) whose name is unknown.
fn unresolved(s: &str, vars: &BTreeMap<String, String>) -> bool {
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            match after.find('}') {
                Some(end) if vars.contains_key(&after[..end]) => rest = &after[end + 1..],
                _ => return true,
            }
        } else {
            rest = &tail[1..];
        }
    }
    false
}

#[cfg(test)]
mod tests;

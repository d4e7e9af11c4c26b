//! The validated job: what the parser hands to the rest of the agent. Every value
//! here has been checked; defaults are filled in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A job: one or more groups of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `job "NAME"`.
    pub name: String,
    /// `datacenters`, kept for Nomad users; tend runs on one host.
    pub datacenters: Vec<String>,
    /// `meta {}` of the job.
    pub meta: BTreeMap<String, String>,
    /// Groups in file order.
    pub groups: Vec<Group>,
}

/// A group: the tasks of one allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// `group "NAME"`.
    pub name: String,
    /// How many allocations of this group run (default 1).
    pub count: u32,
    /// `restart {}`.
    pub restart: RestartPolicy,
    /// `meta {}` of the group.
    pub meta: BTreeMap<String, String>,
    /// `network { port "LABEL" {} }` of the group (Nomad 1.x): ports given
    /// once per allocation to every task of it (`TEND_PORT_<label>` in each);
    /// a docker task publishes those its `config.ports` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<Port>,
    /// Tasks in file order; names are unique.
    pub tasks: Vec<Task>,
}

/// What happens when a task ends on its own with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartMode {
    /// After `attempts` in `interval`, the task fails.
    Fail,
    /// After `attempts` in `interval`, wait until the interval is over and go on.
    Delay,
}

/// `restart { attempts, interval, delay, mode }`, as Nomad's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed within `interval` (default 0 in foreground mode).
    pub attempts: u32,
    /// The window the attempts are counted in.
    pub interval: Duration,
    /// Wait before each restart.
    pub delay: Duration,
    /// What to do when attempts run out.
    pub mode: RestartMode,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            attempts: 2,
            interval: Duration::from_secs(30 * 60),
            delay: Duration::from_secs(15),
            mode: RestartMode::Fail,
        }
    }
}

/// Which driver runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Driver {
    /// No isolation: the agent's user, the host's root.
    RawExec,
    /// cgroup limits, a chroot and an unprivileged user.
    Exec,
    /// A container through the Docker Engine API.
    Docker,
    /// A runtime-spec bundle or a prepared root filesystem, run under
    /// tend-spawn's isolation as exec runs a command (docs/oci.md).
    Oci,
}

impl Driver {
    /// The name used in job files.
    pub fn name(self) -> &'static str {
        match self {
            Driver::RawExec => "raw_exec",
            Driver::Exec => "exec",
            Driver::Docker => "docker",
            Driver::Oci => "oci",
        }
    }
}

/// A task: one process (or container) and how to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// `task "NAME"`: a plain file name.
    pub name: String,
    /// `driver`.
    pub driver: Driver,
    /// `user`: a name or a uid; None means the driver's default.
    pub user: Option<String>,
    /// `config {}`.
    pub config: TaskConfig,
    /// `env {}`, in file order of keys (sorted).
    pub env: BTreeMap<String, String>,
    /// `meta {}` of the task.
    pub meta: BTreeMap<String, String>,
    /// `resources {}`.
    pub resources: Resources,
    /// `logs {}`.
    pub logs: LogSpec,
    /// `kill_timeout` (default 5s).
    pub kill_timeout: Duration,
    /// `kill_signal` as a number (default SIGTERM).
    pub kill_signal: i32,
    /// `chroot_env`: host path -> path in the task's root; None uses the agent's.
    pub chroot_env: Option<BTreeMap<String, String>>,
    /// `check {}` blocks, bare or inside `service {}`, in file order; names
    /// are unique in the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// `type = "script"`: a command run inside the task, as `tend exec` runs
    /// it; exit 0 passing, 1 warning, anything else critical.
    Script {
        /// `command`.
        command: String,
        /// `args`.
        args: Vec<String>,
    },
    /// `type = "tcp"`: a connection to the port; made is passing.
    Tcp {
        /// The port label.
        port: String,
    },
    /// `type = "http"`: a request to the port; 2xx passing, 429 warning,
    /// anything else critical.
    Http {
        /// The port label.
        port: String,
        /// `path`, from `/`.
        path: String,
        /// `method` (default GET).
        method: String,
    },
}

impl CheckKind {
    /// The `type` as job files write it.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Script { .. } => "script",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Http { .. } => "http",
        }
    }

    /// The port label it connects to, for tcp and http.
    pub fn port(&self) -> Option<&str> {
        match self {
            CheckKind::Script { .. } => None,
            CheckKind::Tcp { port } | CheckKind::Http { port, .. } => Some(port),
        }
    }
}

/// One health check of a task, as Nomad's `check {}` with the Nomad
/// provider: run every `interval` while the task runs, never registered
/// anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `name`: unique in the task (default: the type, `"tcp"`).
    pub name: String,
    /// What it does.
    pub kind: CheckKind,
    /// `interval`: between the starts of two runs, at least 1s.
    pub interval: Duration,
    /// `timeout`: how long one run may take, at least 1s.
    pub timeout: Duration,
    /// `check_restart {}` (its own or its service's).
    pub check_restart: Option<CheckRestart>,
}

/// `check_restart { limit, grace, ignore_warnings }`, as Nomad's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRestart {
    /// Restart after this many unhealthy results in a row (0: never).
    pub limit: u32,
    /// Results within this time of the task's start are not counted (default 1s).
    pub grace: Duration,
    /// Whether a warning counts as healthy (default false: it counts as unhealthy).
    pub ignore_warnings: bool,
}

impl Default for CheckRestart {
    fn default() -> Self {
        CheckRestart {
            limit: 0,
            grace: Duration::from_secs(1),
            ignore_warnings: false,
        }
    }
}

/// `config {}`: driver-specific settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Program to run (raw_exec, exec; docker's entrypoint override).
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// docker: the image.
    pub image: Option<String>,
    /// docker: the container's hostname.
    pub hostname: Option<String>,
    /// docker: labels.
    pub labels: BTreeMap<String, String>,
    /// docker: network mode.
    pub network_mode: Option<String>,
    /// docker: DNS servers.
    pub dns_servers: Vec<String>,
    /// docker: DNS search domains.
    pub dns_search_domains: Vec<String>,
    /// docker: port label -> container port.
    pub port_map: BTreeMap<String, u16>,
    /// docker: `ports = ["http"]`, the group's ports this container publishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// docker: privileged container.
    pub privileged: bool,
    /// docker: paths bound into the container.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// docker: host devices handed to the container.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// docker: capabilities added, by canonical name (`NET_ADMIN`, or `ALL`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// docker: capabilities dropped, by canonical name (`NET_ADMIN`, or `ALL`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// oci: a runtime-spec bundle dir (config.json and its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// oci: a prepared root filesystem, run with `command` and `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// oci: the task writes its root (an overlay of the rootfs, which stays
    /// as it is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writable: bool,
}

/// docker: one of `volumes`, written `"SOURCE:TARGET"` or `"SOURCE:TARGET:MODE"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Where the bind comes from on the host.
    pub source: VolumeSource,
    /// Absolute path inside the container.
    pub target: String,
    /// MODE `ro`; `rw` (the default) is false.
    pub read_only: bool,
}

/// Where a volume comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// A relative SOURCE, taken from the task's dir (`<alloc_dir>/<task>`) and
    /// kept relative to the alloc dir: `shared` of task `web` is `web/shared`,
    /// `../alloc/data` is `alloc/data`. Plain names only (no `.`, no `..`); empty
    /// for the alloc dir itself.
    InAlloc(PathBuf),
    /// An absolute SOURCE: a path of the host.
    Host(PathBuf),
}

/// docker: one of `devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// `host_path`: the device on the host, absolute.
    pub host_path: String,
    /// `container_path`: where it appears in the container (default: `host_path`).
    pub container_path: String,
    /// `cgroup_permissions`: some of `r`, `w` and `m`, each once (default `rwm`).
    pub cgroup_permissions: String,
}

/// The pids.max of an exec task whose job names none, as root.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// `resources {}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in MHz (default 100).
    pub cpu: u64,
    /// Memory in MB (default 300): the hard limit, or with `memory_max` the
    /// reservation (soft limit).
    pub memory: u64,
    /// `memory_max`: the hard memory limit in MB, at least `memory` (Nomad's
    /// oversubscription); None makes `memory` the hard limit.
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// `cpu_hard_limit`: cap the task at its `cpu` share of the host's MHz,
    /// not only weigh it.
    #[serde(default)]
    pub cpu_hard_limit: bool,
    /// `io_weight`: 1-10000 (io.weight on v2, blkio.weight scaled on v1).
    #[serde(default)]
    pub io_weight: Option<u16>,
    /// `oom_kill_group`: an OOM kill takes the whole task (memory.oom.group, v2).
    #[serde(default)]
    pub oom_kill_group: bool,
    /// pids.max of the task's cgroup, when the job names one. Unnamed: 4096
    /// ([`DEFAULT_PIDS_LIMIT`]) as root; in setuid mode, the policy's
    /// `default_pids` (docs/setuid.md).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// `network { port "LABEL" { static, to } }`.
    pub ports: Vec<Port>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: 100,
            memory: 300,
            memory_max: None,
            cpu_hard_limit: false,
            io_weight: None,
            oom_kill_group: false,
            pids_limit: None,
            ports: Vec::new(),
        }
    }
}

/// One port of a task's network block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// `port "LABEL"`.
    pub label: String,
    /// `static = N`: a reserved host port; None for a dynamic one.
    pub static_port: Option<u16>,
    /// `to = N`: the container port (docker).
    pub to: Option<u16>,
}

/// `logs { max_files, max_file_size }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// Files kept per stream (default 10).
    pub max_files: u32,
    /// Size of each file in MB (default 10).
    pub max_file_size_mb: u64,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            max_files: 10,
            max_file_size_mb: 10,
        }
    }
}

//! The spawn config of a `raw_exec` or `exec` run: what tend-spawn is told to
//! do, and the checks of an exec task (user, root, chroot_env, limits).

use std::path::Path;
use std::time::Duration;

use tend_proto::config::{
    Bind, CgroupOptions, CgroupSpec, ChrootSpec, CpuQuota, FirstConnection, Isolation, LogConfig,
    Namespaces, TaskIds, TaskStdin,
};
use tend_proto::{SpawnConfig, Token};

use super::super::DriverError;
pub use super::oci::task_user;
use super::oci::{merge_env, oci_run, tighten, OciRun};
use crate::jobspec::{Driver, Task};
use crate::paths::{AllocDir, Dirs};

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
    /// The host paths bound read-only into an exec task's root: host -> task path.
    pub chroot_env: &'a [(String, String)],
    /// The cgroup parent of every task (relative to each hierarchy's root).
    pub cgroup_parent: &'a str,
    /// Whether exec tasks may run as root (`plugin "exec" { allow_root = true }`).
    pub allow_root: bool,
    /// Whether an oci task's bundle may bind host paths read-write
    /// (`plugin "oci" { allow_host_binds = true }`).
    pub oci_host_binds: bool,
    /// The agent's `cpu_total_compute` (MHz of all cores), for `cpu_hard_limit`.
    pub cpu_total_compute: Option<u64>,
}

/// The tend-spawn this process uses, once known (see [`use_spawn_bin`]).
static SPAWN_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Note which tend-spawn this process runs: a non-root agent may run exec
/// tasks when it is setuid root (setuid mode, docs/setuid.md).
pub fn use_spawn_bin(path: &Path) {
    let _ = SPAWN_BIN.set(path.to_path_buf());
}

/// Whether the tend-spawn in use is installed setuid root (mode bit 04000,
/// owner 0). Whether this user may run it, and what the policy allows, is
/// tend-spawn's to say, in one line, at the start.
pub fn setuid_spawn() -> bool {
    use std::os::unix::fs::MetadataExt;
    SPAWN_BIN
        .get()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0)
}

/// The cgroup under which this agent's tasks go: `<cgroup_parent>` as root,
/// `<cgroup_parent>/<uid>` otherwise (setuid mode: the policy gives each
/// caller its own subtree).
pub fn cgroup_base(cgroup_parent: &str) -> String {
    let uid = nix::unistd::geteuid().as_raw();
    if uid == 0 {
        cgroup_parent.to_string()
    } else {
        format!("{cgroup_parent}/{uid}")
    }
}

/// The chroot_env when neither the agent nor the task sets one: those that exist.
pub const DEFAULT_CHROOT_ENV: [&str; 7] =
    ["/bin", "/etc", "/lib", "/lib32", "/lib64", "/sbin", "/usr"];

/// The default chroot_env of this host: [`DEFAULT_CHROOT_ENV`], the paths that exist.
pub fn default_chroot_env() -> Vec<(String, String)> {
    DEFAULT_CHROOT_ENV
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| (p.to_string(), p.to_string()))
        .collect()
}

/// The smallest memory limit the exec driver accepts, MB: below it a task cannot
/// even exec a shell.
pub const MIN_EXEC_MEMORY_MB: u64 = 4;

/// The user of an exec task when it names none.
pub const DEFAULT_EXEC_USER: &str = "nobody";

/// A task user, resolved: (uid, gid).
pub fn resolve_user(user: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = user.parse::<u32>() {
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        return Some((uid, gid));
    }
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// `user`'s ids as the host's NSS gives them, for tend-spawn to take as
/// they are (see [`Isolation::ids`]).
pub fn ids_of(user: &str) -> Option<TaskIds> {
    resolve_user(user).map(|(uid, gid)| TaskIds { uid, gid })
}

/// The agent config option that lets exec tasks run as root.
pub const ALLOW_ROOT_OPTION: &str = "plugin \"exec\" { allow_root = true }";

/// The agent config option that lets tasks of `driver` run as root.
fn allow_root_option(driver: Driver) -> String {
    format!("plugin \"{}\" {{ allow_root = true }}", driver.name())
}

/// An exec task's user is not root (uid 0, by name or number) unless the
/// agent allows it: root in a task's root is still root on the host files
/// bound in and on the kernel's knobs; an operator says so in the agent
/// config, a job file cannot. A user unknown here is not this check's to refuse.
pub fn check_exec_root(task: &Task, allow_root: bool) -> Result<(), DriverError> {
    if !matches!(task.driver, Driver::Exec | Driver::Oci) || allow_root {
        return Ok(());
    }
    let user = task_user(task);
    match resolve_user(&user) {
        Some((0, _)) => Err(DriverError::Field {
            task: task.name.clone(),
            field: "user",
            reason: format!(
                "{user:?} is root, which the {} driver refuses unless the agent config \
                 allows it with {}",
                task.driver.name(),
                allow_root_option(task.driver),
            ),
        }),
        _ => Ok(()),
    }
}

/// The user of an exec task, checked: it exists here, and it is root only
/// where the agent allows it (see [`check_exec_root`]).
pub fn check_exec_user(task: &Task, allow_root: bool) -> Result<String, DriverError> {
    let user = task_user(task);
    if resolve_user(&user).is_none() {
        return Err(DriverError::Field {
            task: task.name.clone(),
            field: "user",
            reason: format!("unknown user {user:?}"),
        });
    }
    check_exec_root(task, allow_root)?;
    Ok(user)
}

fn exec_isolation(
    task: &Task,
    agent_chroot_env: &[(String, String)],
    allow_root: bool,
) -> Result<Isolation, DriverError> {
    let field = |field: &'static str, reason: String| DriverError::Field {
        task: task.name.clone(),
        field,
        reason,
    };
    if !nix::unistd::geteuid().is_root() && !setuid_spawn() {
        return Err(DriverError::Unavailable {
            task: task.name.clone(),
            driver: task.driver.name(),
            reason: "the exec driver needs root or a setuid tend-spawn (see tend doctor), \
                     or use raw_exec"
                .into(),
        });
    }
    let user = check_exec_user(task, allow_root)?;
    if task.resources.memory < MIN_EXEC_MEMORY_MB {
        return Err(field(
            "resources.memory",
            format!(
                "{} MB is below the {MIN_EXEC_MEMORY_MB} MB the exec driver needs",
                task.resources.memory
            ),
        ));
    }
    let env: Vec<(String, String)> = match &task.chroot_env {
        Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => agent_chroot_env.to_vec(),
    };
    let mut binds = Vec::with_capacity(env.len());
    for (source, target) in env {
        if !Path::new(&source).exists() {
            return Err(field(
                "chroot_env",
                format!("source {source:?} does not exist on this host"),
            ));
        }
        // A setuid tend-spawn binds only canonical sources (its policy's
        // rule): on merged-usr hosts /bin is bound from /usr/bin.
        let source = if nix::unistd::geteuid().is_root() {
            source
        } else {
            std::fs::canonicalize(&source)
                .ok()
                .and_then(|p| p.to_str().map(String::from))
                .unwrap_or(source)
        };
        binds.push(Bind { source, target });
    }
    // Resolved here, through the host's NSS: tend-spawn (static, with no
    // NSS of its own) takes the numbers as they are.
    let ids = ids_of(&user);
    Ok(Isolation {
        ids,
        user,
        chroot: Some(ChrootSpec { binds }),
    })
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
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .find_map(|d| {
            let cand = format!("{}/{command}", d.trim_end_matches('/'));
            let host = root.join(cand.trim_start_matches('/'));
            is_executable(&host).then_some(cand)
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Check what the driver can check before anything exists: for exec, root, the
/// user (root only with `allow_root`), the memory floor and the chroot_env sources; for every process driver,
/// that a command is given.
pub fn check_task(
    task: &Task,
    chroot_env: &[(String, String)],
    allow_root: bool,
    oci_host_binds: bool,
) -> Result<(), DriverError> {
    match task.driver {
        Driver::RawExec => {}
        Driver::Exec => {
            exec_isolation(task, chroot_env, allow_root)?;
        }
        Driver::Docker => return Ok(()),
        Driver::Oci => {
            oci_checked(task, allow_root, oci_host_binds, "", &[])?;
            return Ok(());
        }
    }
    if task.config.command.as_deref().is_none_or(str::is_empty) {
        return Err(DriverError::Field {
            task: task.name.clone(),
            field: "config.command",
            reason: "is required".into(),
        });
    }
    Ok(())
}

/// An oci task checked as exec's is (root, its user, the memory floor), then
/// its bundle or rootfs mapped, its read-write binds of host paths only with
/// `host_binds`; `command` and `args` are the rootfs's run's.
fn oci_checked(
    task: &Task,
    allow_root: bool,
    host_binds: bool,
    command: &str,
    args: &[String],
) -> Result<OciRun, DriverError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DriverError::Unavailable {
            task: task.name.clone(),
            driver: task.driver.name(),
            reason: "the oci driver needs an agent running as root".into(),
        });
    }
    let user = check_exec_user(task, allow_root)?;
    if task.resources.memory < MIN_EXEC_MEMORY_MB {
        return Err(DriverError::Field {
            task: task.name.clone(),
            field: "resources.memory",
            reason: format!(
                "{} MB is below the {MIN_EXEC_MEMORY_MB} MB the oci driver needs",
                task.resources.memory
            ),
        });
    }
    // At submit the command is the job file's as written: a rootfs task's
    // is checked at its start, once interpolated.
    match (&task.config.bundle, command.is_empty()) {
        (None, true) => {
            if task
                .config
                .rootfs
                .as_deref()
                .is_some_and(|r| !Path::new(r).is_dir())
            {
                return Err(DriverError::Field {
                    task: task.name.clone(),
                    field: "config.rootfs",
                    reason: format!(
                        "{:?} is not a directory on this host",
                        task.config.rootfs.as_deref().unwrap_or_default()
                    ),
                });
            }
            oci_run(task, user, "/", args)
        }
        _ => oci_run(task, user, command, args),
    }
    .and_then(|run| super::oci::check_host_binds(task, run, host_binds))
}

/// The CFS period of a `cpu_hard_limit` quota, microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The options of an exec task's cgroup beyond its first limits: the memory
/// reservation, the CPU cap, the IO weight, the OOM group.
fn cgroup_options(
    task: &Task,
    cpu_total_compute: Option<u64>,
) -> Result<CgroupOptions, CpuMhzError> {
    let r = &task.resources;
    let cpu_quota = if r.cpu_hard_limit {
        let per_core = mhz_per_core(cpu_total_compute)?;
        Some(CpuQuota {
            quota_us: cpu_quota_us(r.cpu, per_core),
            period_us: CPU_PERIOD_US,
        })
    } else {
        None
    };
    Ok(CgroupOptions {
        memory_soft_bytes: r.memory_max.map(|_| r.memory.saturating_mul(1024 * 1024)),
        cpu_quota,
        io_weight: r.io_weight,
        oom_kill_group: r.oom_kill_group,
    })
}

/// The hard memory limit of an exec task in bytes: `memory_max` when set (then
/// `memory` is the soft limit), else `memory`.
fn memory_hard_bytes(task: &Task) -> u64 {
    let r = &task.resources;
    r.memory_max.unwrap_or(r.memory).saturating_mul(1024 * 1024)
}

/// A task's CFS quota: its share of one core's MHz, times the period.
/// `cpu = 500` on 2000 MHz cores is a quarter core: 25000 us per 100000 us.
/// Never under the kernel's 1000 us floor.
pub fn cpu_quota_us(cpu_mhz: u64, mhz_per_core: u64) -> u64 {
    let quota = u128::from(CPU_PERIOD_US) * u128::from(cpu_mhz) / u128::from(mhz_per_core.max(1));
    u64::try_from(quota).unwrap_or(u64::MAX).max(1000)
}

/// Why one core's MHz is not known, so a `cpu_hard_limit` cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum CpuMhzError {
    /// /proc/cpuinfo cannot be read.
    #[error("cpu_hard_limit: reading /proc/cpuinfo: {0}")]
    Cpuinfo(#[source] std::io::Error),
    /// /proc/cpuinfo gives no MHz (as on some arm hosts).
    #[error("cpu_hard_limit: /proc/cpuinfo gives no \"cpu MHz\": set cpu_total_compute (MHz of all cores) in the agent config")]
    NoMhz,
}

/// One core's MHz: the agent's `cpu_total_compute` over the online cores, or
/// the first `cpu MHz` of /proc/cpuinfo.
pub(crate) fn mhz_per_core(cpu_total_compute: Option<u64>) -> Result<u64, CpuMhzError> {
    if let Some(total) = cpu_total_compute {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        return Ok((total / u64::try_from(cores).unwrap_or(1)).max(1));
    }
    let text = std::fs::read_to_string("/proc/cpuinfo").map_err(CpuMhzError::Cpuinfo)?;
    cpuinfo_mhz(&text).ok_or(CpuMhzError::NoMhz)
}

/// The first `cpu MHz : N` of a /proc/cpuinfo text, rounded down, if above 0.
fn cpuinfo_mhz(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "cpu MHz")
        .and_then(|(_, v)| v.trim().split('.').next()?.parse::<u64>().ok())
        .filter(|m| *m > 0)
}

/// The pids.max an exec task's cgroup asks for: the job's `pids_limit`, else
/// [`crate::jobspec::model::DEFAULT_PIDS_LIMIT`] as root; in setuid mode
/// (not root) none, which a setuid tend-spawn's policy fills with its
/// `default_pids` (bounded by its `max_pids`, which a 4096 would exceed).
fn exec_pids_max(job: Option<u64>, as_root: bool) -> Option<u64> {
    job.or_else(|| as_root.then_some(crate::jobspec::model::DEFAULT_PIDS_LIMIT))
}

/// A task's cgroup under `base` ([`cgroup_base`]): one level,
/// `<alloc>.<task>` (as Nomad's `<alloc>.<task>.scope`). A level per alloc
/// would cost each start and exit a mkdir and an rmdir more in every
/// hierarchy (seven on a hybrid host), for a cgroup that holds no limit and
/// no process. The alloc id is a UUID (hex and dashes, no dot), so the
/// name reads back unambiguously, and no task's name is `tend-spawn`'s.
pub fn task_cgroup_path(base: &str, alloc_id: &str, task: &str) -> String {
    format!("{base}/{alloc_id}.{task}")
}

/// The spawn config of one run of a task.
pub fn spawn_config(l: &Launch<'_>) -> Result<SpawnConfig, DriverError> {
    let task = l.task;
    let unavailable = |reason: &str| DriverError::Unavailable {
        task: task.name.clone(),
        driver: task.driver.name(),
        reason: reason.to_string(),
    };
    let exec_cgroup = || -> Result<CgroupSpec, DriverError> {
        let base = cgroup_base(l.cgroup_parent);
        Ok(CgroupSpec {
            path: task_cgroup_path(&base, l.alloc_id, &task.name),
            // One cgroup for every tend-spawn, made once and never
            // removed: outside every task's and the agent's, which is all
            // the design asks, without a mkdir/rmdir per task and hierarchy
            // (tend-spawn's Hierarchies::is_shared_daemon_path).
            daemon_path: Some(format!("{base}/tend-spawn")),
            memory_bytes: Some(memory_hard_bytes(task)),
            cpu_mhz: Some(task.resources.cpu),
            pids_max: exec_pids_max(task.resources.pids_limit, nix::unistd::geteuid().is_root()),
            options: cgroup_options(task, l.cpu_total_compute)
                .map_err(|r| unavailable(&r.to_string()))?,
        })
    };
    let mut env = l.env.clone();
    let mut args = l.args.clone();
    let mut command = None;
    let mut namespaces = Namespaces::default();
    let mut extras = Vec::new();
    let (cwd, isolation, cgroup) = match task.driver {
        Driver::RawExec => (
            l.alloc.task_root(&task.name).display().to_string(),
            None,
            None,
        ),
        Driver::Exec => {
            let iso = exec_isolation(task, l.chroot_env, l.allow_root)?;
            ("/".to_string(), Some(iso), Some(exec_cgroup()?))
        }
        Driver::Oci => {
            let run = oci_checked(task, l.allow_root, l.oci_host_binds, &l.command, &l.args)?;
            let mut cgroup = exec_cgroup()?;
            if let Some(limits) = &run.limits {
                tighten(&mut cgroup, limits);
            }
            env = merge_env(run.env, &l.env);
            args = run.args;
            command = Some(run.command);
            // The task's own: a reattached daemon keeps them, and `tend
            // exec` joins them.
            namespaces = run.namespaces;
            extras = run.extras;
            (run.cwd, Some(run.isolation), Some(cgroup))
        }
        // Containers are the engine's to supervise: no tend-spawn for them.
        Driver::Docker => {
            return Err(unavailable(
                "a container has no tend-spawn: the agent runs it through the engine",
            ))
        }
    };
    let command = match command {
        Some(c) => c,
        None => resolve_command(&l.command, &l.env, Path::new("/")).ok_or_else(|| {
            DriverError::Command {
                task: task.name.clone(),
                reason: format!("{:?} is not found in the task's PATH", l.command),
            }
        })?,
    };
    Ok(SpawnConfig {
        alloc_id: l.alloc_id.to_string(),
        task: task.name.clone(),
        run: l.run,
        token: l.token,
        command,
        args,
        env,
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
        stdin: TaskStdin::Null,
        start: tend_proto::config::TaskStart::Now,
        namespaces,
        // The first connection comes with the start (see `launch`).
        first_connection: FirstConnection::Stdin,
        extras,
        // Set by `launch` once it knows who starts tend-spawn: in place only
        // under the launcher, which reaps every child it has.
        detach: tend_proto::config::Detach::Fork,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_pids_limit_is_4096_as_root_and_the_policys_in_setuid_mode() {
        assert_eq!(exec_pids_max(None, true), Some(4096));
        assert_eq!(exec_pids_max(None, false), None);
        assert_eq!(exec_pids_max(Some(64), true), Some(64));
        assert_eq!(exec_pids_max(Some(64), false), Some(64));
    }

    #[test]
    fn a_tasks_cgroup_is_one_level_below_the_base_beside_the_daemons() {
        let p = task_cgroup_path("tend", "0123abcd", "web");
        assert_eq!(p, "tend/0123abcd.web");
        assert!(!tend_cgroup::Hierarchies::is_shared_daemon_path(&p));
        assert_eq!(
            task_cgroup_path("tend/1000", "0123abcd", "tend-spawn"),
            "tend/1000/0123abcd.tend-spawn"
        );
        assert!(!tend_cgroup::Hierarchies::is_shared_daemon_path(
            &task_cgroup_path("tend", "0123abcd", "tend-spawn")
        ));
    }

    #[test]
    fn bare_names_are_found_on_path() {
        let sh = resolve_command("sh", &[], Path::new("/")).unwrap();
        assert!(sh.starts_with('/') && sh.ends_with("/sh"), "{sh}");
        assert_eq!(
            resolve_command("/x/y", &[], Path::new("/")).as_deref(),
            Some("/x/y")
        );
        assert_eq!(
            resolve_command("no-such-program-here", &[], Path::new("/")),
            None
        );
    }

    #[test]
    fn cpu_quota_is_the_share_of_one_core() {
        // A quarter of a 2000 MHz core; two whole cores; never under 1000 us.
        assert_eq!(cpu_quota_us(500, 2000), 25_000);
        assert_eq!(cpu_quota_us(4000, 2000), 200_000);
        assert_eq!(cpu_quota_us(1, 3000), 1000);
        assert_eq!(cpu_quota_us(u64::MAX, 1), u64::MAX);
        let cores = std::thread::available_parallelism().unwrap().get();
        let cores = u64::try_from(cores).unwrap();
        assert_eq!(mhz_per_core(Some(8000 * cores)).unwrap(), 8000);
    }

    #[test]
    fn cpuinfo_mhz_is_the_first_cpu_mhz_line() {
        let text = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.146\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n";
        assert_eq!(cpuinfo_mhz(text), Some(2596));
        assert_eq!(cpuinfo_mhz("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
        assert_eq!(cpuinfo_mhz("cpu MHz\t: 0.000\n"), None);
    }
}

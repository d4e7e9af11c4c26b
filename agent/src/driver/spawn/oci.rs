//! The `oci` driver's part of a spawn config: a runtime-spec bundle (mapped
//! by the tend-oci crate, as `tend-spawn oci run` maps it) or a prepared root
//! filesystem, turned into the root, command, environment and limits of an
//! exec-like run. Everything else (the supervisor, reattach, stop, stats,
//! exit file, logs) is the spawn driver's, unchanged.
//!
//! Where the job file and the bundle both say something, the job file wins:
//! `user` over `process.user`, each `env` name over the same name in
//! `process.env`. Limits are the exception: both are ceilings, so the
//! tighter of the two holds (memory, pids, CPU quota). docs/oci.md has the
//! whole table.

use std::path::Path;

use tend_oci::bundle::{Bundle, BundleError};
use tend_proto::config::{CgroupSpec, ConfigExtra, CpuQuota, Isolation, MountKind, Namespaces};

use super::super::DriverError;
use super::config::{ids_of, resolve_command, DEFAULT_EXEC_USER};
use crate::jobspec::{Driver, Task};

/// What an oci task's bundle or rootfs gives its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRun {
    /// The task's user and its root.
    pub isolation: Isolation,
    /// The command, absolute inside the root.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The environment the job's goes over: the bundle's `process.env`.
    pub env: Vec<(String, String)>,
    /// The working dir inside the root.
    pub cwd: String,
    /// The bundle's `linux.resources`, if any.
    pub limits: Option<tend_oci::bundle::Cgroup>,
    /// The bundle's uts (with `hostname`), ipc and network namespaces.
    pub namespaces: Namespaces,
    /// The rest of its isolation: its mounts, masked and read-only paths
    /// beyond tend-spawn's own, made over the root, and its cgroup namespace.
    pub extras: Vec<ConfigExtra>,
}

fn field(task: &Task, field: &'static str, reason: impl Into<String>) -> DriverError {
    DriverError::Field {
        task: task.name.clone(),
        field,
        reason: reason.into(),
    }
}

/// Read and map an oci task's bundle; what tend cannot do is named by its
/// config.json path.
pub fn load_bundle(task: &Task, dir: &str) -> Result<Bundle, DriverError> {
    let b = tend_oci::bundle::load(Path::new(dir))
        .map_err(|e| field(task, "config.bundle", format!("{dir}: {e}")))?;
    // The runtime sets rlimits on itself before it execs tend-spawn; the
    // agent starts tend-spawn from a process it shares with every task.
    if !b.rlimits.is_empty() {
        return Err(bundle_field(
            task,
            dir,
            "process.rlimits",
            "is not supported by the oci driver",
        ));
    }
    // The agent places every task's cgroup under its cgroup parent.
    if b.cgroup.as_ref().is_some_and(|c| c.path.is_some()) {
        return Err(bundle_field(
            task,
            dir,
            "linux.cgroupsPath",
            "is not supported by the oci driver: the agent places the task's cgroup",
        ));
    }
    Ok(b)
}

/// A bundle's read-write bind of a host path writes the host: only where
/// the operator allows it (`plugin "oci" { allow_host_binds = true }`, as
/// for docker's volumes). Read-only binds are a root's ordinary parts.
pub fn check_host_binds(task: &Task, run: OciRun, allowed: bool) -> Result<OciRun, DriverError> {
    if allowed {
        return Ok(run);
    }
    let rw = run.extras.iter().find_map(|e| match e {
        ConfigExtra::Mounts(m) => m.iter().find_map(|m| match &m.kind {
            MountKind::Bind { source, .. } if !m.read_only => Some((source, &m.target)),
            _ => None,
        }),
        _ => None,
    });
    match rw {
        None => Ok(run),
        Some((source, target)) => Err(field(
            task,
            "config.bundle",
            format!(
                "{}: mounts: a read-write bind of the host's {source} at {target} needs plugin \"oci\" {{ allow_host_binds = true }} in the agent config (or \"ro\" in its options)",
                task.config.bundle.as_deref().unwrap_or_default()
            ),
        )),
    }
}

fn bundle_field(task: &Task, dir: &str, path: &str, reason: &str) -> DriverError {
    let e = BundleError::Field {
        field: path.to_string(),
        reason: reason.to_string(),
    };
    field(task, "config.bundle", format!("{dir}: {e}"))
}

/// The user of an exec or oci task: the job file's `user`, else a bundle's
/// `process.user.uid`, else [`DEFAULT_EXEC_USER`].
pub fn task_user(task: &Task) -> String {
    if let Some(u) = &task.user {
        return u.clone();
    }
    if task.driver == Driver::Oci {
        if let Some(b) = task
            .config
            .bundle
            .as_deref()
            .and_then(|d| tend_oci::bundle::load(Path::new(d)).ok())
        {
            return b.uid.to_string();
        }
    }
    DEFAULT_EXEC_USER.to_string()
}

/// The run of an oci task: from its bundle, or from its rootfs with the
/// job's `command` and `args` (already interpolated).
pub fn oci_run(
    task: &Task,
    user: String,
    command: &str,
    args: &[String],
) -> Result<OciRun, DriverError> {
    match (&task.config.bundle, &task.config.rootfs) {
        (Some(dir), _) => {
            let b = load_bundle(task, dir)?;
            if task.user.is_none() {
                tend_oci::container::check_group(&b)
                    .map_err(|e| field(task, "config.bundle", format!("{dir}: {e}")))?;
            }
            let command = tend_oci::container::resolve_command(&b)
                .map_err(|e| field(task, "config.bundle", format!("{dir}: {e}")))?;
            let chroot = match &b.rootfs {
                Some(r) => tend_oci::container::task_root(r, b.writable),
                None => {
                    return Err(bundle_field(
                        task,
                        dir,
                        "root.path",
                        "the host's root is not a root the oci driver runs in: give the bundle a rootfs",
                    ))
                }
            };
            let extras = b.extras();
            let ids = ids_of(&user);
            // The extras travel after the task's ids, which tend-spawn then
            // takes as they are.
            if ids.is_none() && !extras.is_empty() {
                return Err(field(
                    task,
                    "user",
                    format!("{user:?} is not a user of this host (a bundle's mounts need its ids)"),
                ));
            }
            Ok(OciRun {
                isolation: Isolation {
                    ids,
                    user,
                    chroot: Some(chroot),
                },
                command,
                args: b.args[1..].to_vec(),
                env: b.env,
                cwd: b.cwd,
                limits: b.cgroup,
                namespaces: b.namespaces,
                extras,
            })
        }
        (None, Some(rootfs)) => {
            let root = Path::new(rootfs);
            let writable = task.config.writable;
            if writable && rootfs.contains(tend_proto::config::OVERLAY_SPECIAL) {
                return Err(field(
                    task,
                    "config.rootfs",
                    format!("{rootfs:?}: a writable root's path may not hold ',', ':' or '\\'"),
                ));
            }
            if !root.is_dir() {
                return Err(field(
                    task,
                    "config.rootfs",
                    format!("{rootfs:?} is not a directory on this host"),
                ));
            }
            let command = resolve_command(command, &[], root).ok_or_else(|| {
                field(
                    task,
                    "config.command",
                    format!("{command:?} is not found in the rootfs {rootfs}"),
                )
            })?;
            Ok(OciRun {
                isolation: Isolation {
                    ids: ids_of(&user),
                    user,
                    chroot: Some(tend_oci::container::task_root(root, writable)),
                },
                command,
                args: args.to_vec(),
                env: Vec::new(),
                cwd: "/".into(),
                limits: None,
                namespaces: Namespaces::default(),
                extras: Vec::new(),
            })
        }
        (None, None) => Err(field(task, "config", "needs bundle or rootfs")),
    }
}

/// The bundle's environment with the job's over it, name by name.
pub fn merge_env(bundle: Vec<(String, String)>, job: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = bundle
        .into_iter()
        .filter(|(k, _)| !job.iter().any(|(j, _)| j == k))
        .collect();
    env.extend(job.iter().cloned());
    env
}

/// Tighten the task's cgroup with the bundle's limits: the smaller of each
/// ceiling holds; the soft memory limit is the bundle's where the job sets none.
pub fn tighten(cg: &mut CgroupSpec, limits: &tend_oci::bundle::Cgroup) {
    fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    cg.memory_bytes = min(cg.memory_bytes, limits.memory_bytes);
    cg.pids_max = min(cg.pids_max, limits.pids_max);
    if cg.options.memory_soft_bytes.is_none() {
        cg.options.memory_soft_bytes = limits.memory_soft_bytes;
    }
    if let Some((quota_us, period_us)) = limits.cpu_quota {
        // Compared as a share of one core: quota over period.
        let tighter = cg.options.cpu_quota.as_ref().is_none_or(|q| {
            u128::from(quota_us) * u128::from(q.period_us)
                < u128::from(q.quota_us) * u128::from(period_us)
        });
        if tighter {
            cg.options.cpu_quota = Some(CpuQuota {
                quota_us,
                period_us,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_proto::config::CgroupOptions;

    #[test]
    fn the_jobs_env_goes_over_the_bundles_name_by_name() {
        let env = merge_env(
            vec![("PATH".into(), "/bin".into()), ("A".into(), "1".into())],
            &[("A".into(), "2".into()), ("B".into(), "3".into())],
        );
        assert_eq!(
            env,
            [
                ("PATH".to_string(), "/bin".to_string()),
                ("A".into(), "2".into()),
                ("B".into(), "3".into())
            ]
        );
    }

    #[test]
    fn the_tighter_limit_holds() {
        let mut cg = CgroupSpec {
            path: "t/a/x".into(),
            daemon_path: None,
            memory_bytes: Some(300 << 20),
            cpu_mhz: Some(100),
            pids_max: Some(4096),
            options: CgroupOptions {
                cpu_quota: Some(CpuQuota {
                    quota_us: 50_000,
                    period_us: 100_000,
                }),
                ..CgroupOptions::default()
            },
        };
        tighten(
            &mut cg,
            &tend_oci::bundle::Cgroup {
                memory_bytes: Some(64 << 20),
                memory_soft_bytes: Some(32 << 20),
                pids_max: Some(10_000),
                cpu_quota: Some((20_000, 50_000)),
                ..Default::default()
            },
        );
        assert_eq!(cg.memory_bytes, Some(64 << 20));
        assert_eq!(cg.pids_max, Some(4096));
        assert_eq!(cg.options.memory_soft_bytes, Some(32 << 20));
        // 0.4 of a core is tighter than 0.5.
        assert_eq!(cg.options.cpu_quota.as_ref().unwrap().quota_us, 20_000);
        assert_eq!(cg.cpu_mhz, Some(100));
    }
}

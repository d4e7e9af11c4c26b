//! What a task asks of the engine, checked and turned into a create-container
//! body. Pure: no I/O, so every mapping and every refusal is unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HostConfig, HostConfigLogConfig, PortBinding,
};

use super::binds::AllocBind;
use super::{DockerOptions, DockerStart};
use crate::driver::DriverError;
use crate::jobspec::capability;
use crate::jobspec::{Device, Task, Volume, VolumeSource};
use tend_proto::names;

/// The network modes a task may name. `default` is the engine's default network.
pub const NETWORK_MODES: [&str; 4] = ["bridge", "default", "host", "none"];

/// The network mode of a task that names none.
pub const DEFAULT_NETWORK_MODE: &str = "bridge";

/// Label holding the allocation id on every container tend creates.
pub const LABEL_ALLOC_ID: &str = "tend.alloc_id";

/// Label holding the task name on every container tend creates.
pub const LABEL_TASK: &str = "tend.task";

/// The engine's log driver for tend's containers (the copier reads from it).
pub const ENGINE_LOG_DRIVER: &str = "local";

/// Where the alloc's shared dir appears inside a container.
pub const CONTAINER_ALLOC_DIR: &str = "/alloc";

/// Where the task's own dir appears inside a container.
pub const CONTAINER_TASK_DIR: &str = "/local";

/// A bind of a host path into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Read-only in the container.
    pub read_only: bool,
}

impl HostBind {
    fn to_engine(&self) -> String {
        let mode = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{mode}", self.source.display(), self.target)
    }
}

/// Every option of a container that reaches past the container into the host.
/// Each goes through [`policy`] before anything is created.
#[derive(Debug, Clone, Default)]
pub struct HostRequest<'a> {
    /// The task asks for a privileged container.
    pub privileged: bool,
    /// The network mode (after the default is applied).
    pub network_mode: &'a str,
    /// Paths to bind into the container.
    pub volumes: &'a [Volume],
    /// Host devices to hand to the container.
    pub devices: &'a [Device],
    /// Capabilities to add.
    pub cap_add: &'a [String],
}

impl<'a> HostRequest<'a> {
    /// Everything `task` asks of the host.
    pub fn of(task: &'a Task) -> HostRequest<'a> {
        HostRequest {
            privileged: task.config.privileged,
            network_mode: network_mode(task),
            volumes: &task.config.volumes,
            devices: &task.config.devices,
            cap_add: &task.config.cap_add,
        }
    }
}

/// The one policy check: every host-affecting option of `req` against the agent's
/// docker options. Allowed is not requested: this only refuses; whether an option
/// is set is decided by what the task asks. A volume of the alloc dir made of
/// plain names stays inside it and needs nothing; any other is a host bind.
pub fn policy(opts: &DockerOptions, task: &str, req: &HostRequest<'_>) -> Result<(), DriverError> {
    let refuse = |field: &'static str, what: &str, option: &str| refusal(task, field, what, option);
    if req.privileged && !opts.allow_privileged {
        return Err(refuse(
            "config.privileged",
            "privileged containers",
            "allow_privileged = true",
        ));
    }
    if req.network_mode == "host" && !opts.allow_host_network {
        return Err(refuse(
            "config.network_mode",
            "the host network",
            "allow_host_network = true",
        ));
    }
    if !opts.allow_host_binds {
        for v in req.volumes {
            let outside = match &v.source {
                VolumeSource::InAlloc(rel) => (!is_plain(rel)).then_some(rel),
                VolumeSource::Host(p) => Some(p),
            };
            if let Some(source) = outside {
                return Err(refuse(
                    "config.volumes",
                    &format!(
                        "binds outside the alloc dir ({} -> {})",
                        source.display(),
                        v.target
                    ),
                    "allow_host_binds = true",
                ));
            }
        }
    }
    if !req.devices.is_empty() && !opts.allow_devices {
        let paths: Vec<&str> = req.devices.iter().map(|d| d.host_path.as_str()).collect();
        return Err(refuse(
            "config.devices",
            &format!("host devices ({})", paths.join(", ")),
            "allow_devices = true",
        ));
    }
    for cap in req.cap_add {
        if !cap_allowed(&opts.allowed_caps, cap) {
            return Err(refuse(
                "config.cap_add",
                &format!("capability {cap}"),
                &format!("allowed_caps = [..., {:?}]", cap_name(cap)),
            ));
        }
    }
    Ok(())
}

/// The refusal of an option the agent does not allow: what, and which agent
/// option would allow it.
pub(super) fn refusal(task: &str, field: &'static str, what: &str, option: &str) -> DriverError {
    DriverError::Field {
        task: task.to_string(),
        field,
        reason: format!("the agent does not allow {what} (set {option} in plugin \"docker\")"),
    }
}

fn cap_name(cap: &str) -> String {
    capability::canonical(cap)
}

fn cap_allowed(allowed: &[String], cap: &str) -> bool {
    let want = cap_name(cap);
    allowed.iter().map(|a| cap_name(a)).any(|a| a == want)
}

/// Whether a path of the alloc dir is made of plain names only: joined to the
/// alloc dir, it stays beneath it (lexically).
fn is_plain(rel: &Path) -> bool {
    rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The container's name: `<task>-<alloc_id>`.
pub fn container_name(task: &str, alloc_id: &str) -> String {
    format!("{task}-{alloc_id}")
}

fn network_mode(task: &Task) -> &str {
    task.config
        .network_mode
        .as_deref()
        .unwrap_or(DEFAULT_NETWORK_MODE)
}

/// Check a task for the docker driver before anything exists: the config's
/// values and the policy of the agent, which sees every host-affecting option
/// of the task here, once. Everything [`create_body`] would refuse is refused here.
pub fn check(opts: &DockerOptions, task: &Task) -> Result<(), DriverError> {
    let field = |field: &'static str, reason: String| DriverError::Field {
        task: task.name.clone(),
        field,
        reason,
    };
    let c = &task.config;
    match c.image.as_deref() {
        None | Some("") => {
            return Err(field(
                "config.image",
                "is required by the docker driver".to_string(),
            ))
        }
        Some(_) => {}
    }
    if c.command.is_none() && !c.args.is_empty() {
        return Err(field(
            "config.args",
            "args need a command: set config.command (the image's entrypoint is not \
             combined with args)"
                .to_string(),
        ));
    }
    if let Some(bad) = task
        .name
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')))
    {
        return Err(field(
            "name",
            format!(
                "{bad:?} cannot be in a container name: the docker driver needs task \
                 names of letters, digits, '_', '.' and '-'"
            ),
        ));
    }
    let mode = network_mode(task);
    if !NETWORK_MODES.contains(&mode) {
        return Err(field(
            "config.network_mode",
            format!(
                "{mode:?} is not one of {}",
                NETWORK_MODES
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for s in &c.dns_servers {
        if s.parse::<IpAddr>().is_err() {
            return Err(field(
                "config.dns_servers",
                format!("{s:?} is not an IP address"),
            ));
        }
    }
    for label in c.port_map.keys() {
        if !task.resources.ports.iter().any(|p| &p.label == label) {
            return Err(field(
                "config.port_map",
                format!("{label:?} is not a port of the task's network block"),
            ));
        }
    }
    for v in &c.volumes {
        if let VolumeSource::InAlloc(rel) = &v.source {
            if !is_plain(rel) {
                return Err(field(
                    "config.volumes",
                    format!(
                        "the source {} is not a path of plain names in the alloc dir",
                        rel.display()
                    ),
                ));
            }
        }
        if !Path::new(&v.target).is_absolute() {
            return Err(field(
                "config.volumes",
                format!("the target {:?} must be an absolute path", v.target),
            ));
        }
    }
    if task.resources.oom_kill_group {
        return Err(field(
            "resources.oom_kill_group",
            "the docker driver cannot set it: the engine has no option for memory.oom.group \
             (the exec driver has)"
                .to_string(),
        ));
    }
    cpu_quota(opts, task)?;
    policy(opts, &task.name, &HostRequest::of(task))
}

/// The container's CFS quota and period (µs) for `cpu_hard_limit`, as the exec
/// driver computes them: the task's `cpu` share of one core's MHz.
fn cpu_quota(opts: &DockerOptions, task: &Task) -> Result<Option<(i64, i64)>, DriverError> {
    if !task.resources.cpu_hard_limit {
        return Ok(None);
    }
    let per_core =
        crate::driver::spawn::config::mhz_per_core(opts.cpu_total_compute).map_err(|e| {
            DriverError::Field {
                task: task.name.clone(),
                field: "resources.cpu_hard_limit",
                reason: e.to_string(),
            }
        })?;
    let quota = crate::driver::spawn::config::cpu_quota_us(task.resources.cpu, per_core);
    let us = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(Some((
        us(quota),
        us(crate::driver::spawn::config::CPU_PERIOD_US),
    )))
}

/// The engine's BlkioWeight (10-1000) from `io_weight` (1-10000), linearly, as
/// the exec driver writes blkio.weight on v1; the engine writes io.weight on v2.
fn blkio_weight(w: u16) -> u16 {
    let scaled = 10 + (u32::from(w).clamp(1, 10_000) - 1) * 990 / 9999;
    u16::try_from(scaled).unwrap_or(1000)
}

/// Every bind of the task's container whose source is in the alloc dir: the
/// alloc's shared dir at `/alloc`, the task's `local/` at `/local`, then the
/// task's volumes of the alloc dir. The driver hands them to the engine only
/// through [`super::binds::StagedBinds`].
pub fn alloc_binds(task: &Task) -> Vec<AllocBind> {
    let mut binds = vec![
        AllocBind {
            rel: PathBuf::from(names::SHARED_DIR),
            target: CONTAINER_ALLOC_DIR.to_string(),
            read_only: false,
        },
        AllocBind {
            rel: Path::new(&task.name).join("local"),
            target: CONTAINER_TASK_DIR.to_string(),
            read_only: false,
        },
    ];
    binds.extend(task.config.volumes.iter().filter_map(|v| match &v.source {
        VolumeSource::InAlloc(rel) => Some(AllocBind {
            rel: rel.clone(),
            target: v.target.clone(),
            read_only: v.read_only,
        }),
        VolumeSource::Host(_) => None,
    }));
    binds
}

/// The name and create-container body of one run of a task. Runs [`check`]
/// (and so the policy) first: nothing is returned that the agent refuses.
/// `alloc_binds`: the binds of [`alloc_binds`], with the sources the engine is
/// to get (the staged mounts), in that order; the task's host binds follow.
pub fn create_body(
    opts: &DockerOptions,
    req: &DockerStart<'_>,
    alloc_binds: &[HostBind],
) -> Result<(String, ContainerCreateBody), DriverError> {
    let task = req.task;
    check(opts, task)?;
    if req.command.is_none() && !req.args.is_empty() {
        return Err(DriverError::Field {
            task: task.name.clone(),
            field: "config.args",
            reason: "args need a command: set config.command".to_string(),
        });
    }
    let mode = network_mode(task);
    let mut binds = alloc_binds.to_vec();
    binds.extend(task.config.volumes.iter().filter_map(|v| match &v.source {
        VolumeSource::InAlloc(_) => None,
        VolumeSource::Host(p) => Some(HostBind {
            source: p.clone(),
            target: v.target.clone(),
            read_only: v.read_only,
        }),
    }));

    let mut labels: HashMap<String, String> = HashMap::new();
    labels.extend(req.job_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.extend(
        task.config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    labels.insert(LABEL_ALLOC_ID.to_string(), req.alloc_id.to_string());
    labels.insert(LABEL_TASK.to_string(), task.name.clone());

    // Published ports mean nothing without a network of the container's own.
    let publish = !matches!(mode, "host" | "none");
    let mut exposed: BTreeMap<String, ()> = BTreeMap::new();
    let mut bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    if publish {
        // The task's own ports, and those of the group's it names in
        // `config.ports` (two containers cannot publish one host port).
        let own = |label: &str| {
            task.resources.ports.iter().any(|p| p.label == label)
                || task.config.ports.iter().any(|l| l == label)
        };
        for p in req.ports.iter().filter(|p| own(&p.label)) {
            let to = task
                .config
                .port_map
                .get(&p.label)
                .copied()
                .or(p.to)
                .unwrap_or(p.host_port);
            for proto in ["tcp", "udp"] {
                let key = format!("{to}/{proto}");
                exposed.insert(key.clone(), ());
                bindings.entry(key).or_default().push(PortBinding {
                    host_ip: (!p.host_ip.is_unspecified()).then(|| p.host_ip.to_string()),
                    host_port: Some(p.host_port.to_string()),
                });
            }
        }
    }

    let mb = |mb: u64| i64::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let r = &task.resources;
    // As the exec driver: with memory_max, memory is the reservation.
    let memory = mb(r.memory_max.unwrap_or(r.memory));
    let memory_reservation = r.memory_max.map(|_| mb(r.memory));
    let quota = cpu_quota(opts, task)?;
    // The kernel's floor for cpu.shares is 2.
    let cpu_shares = i64::try_from(task.resources.cpu.max(2)).unwrap_or(i64::MAX);
    let engine_log_mb = task
        .logs
        .max_file_size_mb
        .max(1)
        .saturating_mul(u64::from(task.logs.max_files.max(1)))
        .saturating_mul(2)
        .max(20);

    let host_config = HostConfig {
        memory: Some(memory),
        memory_swap: Some(memory),
        memory_reservation,
        cpu_shares: Some(cpu_shares),
        cpu_quota: quota.map(|(q, _)| q),
        cpu_period: quota.map(|(_, p)| p),
        blkio_weight: r.io_weight.map(blkio_weight),
        binds: Some(binds.iter().map(HostBind::to_engine).collect()),
        network_mode: Some(mode.to_string()),
        dns: (!task.config.dns_servers.is_empty()).then(|| task.config.dns_servers.clone()),
        dns_search: (!task.config.dns_search_domains.is_empty())
            .then(|| task.config.dns_search_domains.clone()),
        port_bindings: publish.then(|| {
            bindings
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect::<HashMap<_, _>>()
        }),
        // Allowed is not requested: only what the task asks, once the policy passed.
        privileged: Some(task.config.privileged && opts.allow_privileged),
        devices: (!task.config.devices.is_empty()).then(|| {
            task.config
                .devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.host_path.clone()),
                    path_in_container: Some(d.container_path.clone()),
                    cgroup_permissions: Some(d.cgroup_permissions.clone()),
                })
                .collect()
        }),
        cap_add: (!task.config.cap_add.is_empty()).then(|| task.config.cap_add.clone()),
        cap_drop: (!task.config.cap_drop.is_empty()).then(|| task.config.cap_drop.clone()),
        // The copier follows the engine's log. `local`, not `json-file`: the
        // json-file reader of 20.10 engines drops lines when it follows a file
        // that is being written fast. Their followers also drop lines across
        // the engine's own rotation, so the engine's file is made large enough
        // to hold all that tend keeps of both streams (at least 20 MB, local's
        // default): it rarely rotates, and a copier that was away finds what
        // tend would have kept.
        log_config: Some(HostConfigLogConfig {
            typ: Some(ENGINE_LOG_DRIVER.to_string()),
            config: Some(HashMap::from([
                ("max-size".to_string(), format!("{engine_log_mb}m")),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: task.config.image.clone(),
        hostname: task.config.hostname.clone(),
        entrypoint: req.command.as_ref().map(|c| vec![c.clone()]),
        cmd: req.command.as_ref().map(|_| req.args.clone()),
        env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        exposed_ports: publish.then(|| exposed.into_keys().collect()),
        stop_signal: Some(task.kill_signal.to_string()),
        stop_timeout: Some(i64::try_from(task.kill_timeout.as_secs()).unwrap_or(i64::MAX)),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    };
    Ok((container_name(&task.name, req.alloc_id), body))
}

#[cfg(test)]
mod tests;

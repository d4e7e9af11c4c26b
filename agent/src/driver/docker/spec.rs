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
mod tests {
    use super::*;
    use crate::jobspec::{Driver, LogSpec, Port, Resources, TaskConfig};
    use crate::paths::AllocDir;
    use crate::ports::AssignedPort;
    use std::time::Duration;

    fn task() -> Task {
        Task {
            name: "web".into(),
            driver: Driver::Docker,
            user: None,
            config: TaskConfig {
                image: Some("busybox:latest".into()),
                command: Some("/bin/sh".into()),
                args: vec!["-c".into(), "echo hi".into()],
                hostname: Some("h1".into()),
                labels: BTreeMap::from([("team".into(), "ops".into())]),
                dns_servers: vec!["10.0.0.53".into(), "::1".into()],
                dns_search_domains: vec!["example.org".into()],
                port_map: BTreeMap::from([("http".into(), 8080)]),
                ..Default::default()
            },
            env: BTreeMap::new(),
            meta: BTreeMap::new(),
            resources: Resources {
                cpu: 250,
                memory: 64,
                pids_limit: Some(100),
                memory_max: None,
                cpu_hard_limit: false,
                io_weight: None,
                oom_kill_group: false,
                ports: vec![
                    Port {
                        label: "http".into(),
                        static_port: None,
                        to: None,
                    },
                    Port {
                        label: "dns".into(),
                        static_port: Some(5353),
                        to: Some(53),
                    },
                ],
            },
            logs: LogSpec::default(),
            kill_timeout: Duration::from_secs(7),
            kill_signal: 15,
            chroot_env: None,
        }
    }

    fn ports() -> Vec<AssignedPort> {
        vec![
            AssignedPort {
                label: "http".into(),
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: 23456,
                to: None,
            },
            AssignedPort {
                label: "dns".into(),
                host_ip: "0.0.0.0".parse().unwrap(),
                host_port: 5353,
                to: Some(53),
            },
        ]
    }

    fn alloc() -> AllocDir {
        AllocDir {
            root: PathBuf::from("/data/allocs/a1"),
        }
    }

    fn body_of(
        opts: &DockerOptions,
        t: &Task,
    ) -> Result<(String, ContainerCreateBody), DriverError> {
        let alloc = alloc();
        let ports = ports();
        let labels = BTreeMap::from([("job".to_string(), "j".to_string())]);
        let in_place: Vec<HostBind> = alloc_binds(t).iter().map(|b| b.in_place(&alloc)).collect();
        create_body(
            opts,
            &DockerStart {
                alloc_id: "a1",
                alloc: &alloc,
                binds_dir: Path::new("/run/tend/binds"),
                task: t,
                job_labels: &labels,
                command: t.config.command.clone(),
                args: t.config.args.clone(),
                env: vec![
                    ("TEND_ALLOC_DIR".into(), "/alloc".into()),
                    ("TEND_TASK_DIR".into(), "/local".into()),
                ],
                ports: &ports,
            },
            &in_place,
        )
    }

    fn err_of(opts: &DockerOptions, t: &Task) -> String {
        let e = body_of(opts, t).unwrap_err().to_string();
        assert_eq!(check(opts, t).unwrap_err().to_string(), e);
        e
    }

    #[test]
    fn a_group_port_is_published_only_by_the_container_that_names_it() {
        // `dns` as a port of the group: assigned to the task, not its own.
        let mut t = task();
        t.resources.ports.retain(|p| p.label != "dns");
        let exposed = |t: &Task| {
            let (_, b) = body_of(&DockerOptions::default(), t).unwrap();
            let mut e = b.exposed_ports.unwrap_or_default();
            e.sort();
            e
        };
        assert_eq!(exposed(&t), ["8080/tcp", "8080/udp"]);
        t.config.ports = vec!["dns".into()];
        assert_eq!(exposed(&t), ["53/tcp", "53/udp", "8080/tcp", "8080/udp"]);
    }

    #[test]
    fn cpu_hard_limit_is_a_cfs_quota_and_io_weight_a_blkio_weight() {
        let (_, b) = body_of(&DockerOptions::default(), &task()).unwrap();
        let h = b.host_config.unwrap();
        assert_eq!(
            (h.cpu_quota, h.cpu_period, h.blkio_weight),
            (None, None, None)
        );
        let mut t = task();
        t.resources.cpu = 500;
        t.resources.cpu_hard_limit = true;
        t.resources.io_weight = Some(10_000);
        // Two cores of 2000 MHz: 500 MHz is a quarter of one.
        let opts = DockerOptions {
            cpu_total_compute: Some(2000 * 2),
            ..Default::default()
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_core = 4000 / u64::try_from(cores).unwrap();
        let (_, b) = body_of(&opts, &t).unwrap();
        let h = b.host_config.unwrap();
        assert_eq!(h.cpu_period, Some(100_000));
        assert_eq!(
            h.cpu_quota,
            Some(i64::try_from(crate::driver::spawn::config::cpu_quota_us(500, per_core)).unwrap())
        );
        assert_eq!(h.blkio_weight, Some(1000));
        assert_eq!(
            (blkio_weight(1), blkio_weight(100), blkio_weight(10_000)),
            (10, 19, 1000)
        );
    }

    #[test]
    fn oom_kill_group_is_refused_with_its_field() {
        let mut t = task();
        t.resources.oom_kill_group = true;
        let e = err_of(&DockerOptions::default(), &t);
        assert!(
            e.starts_with("task web: resources.oom_kill_group: the docker driver cannot set it"),
            "{e}"
        );
    }

    #[test]
    fn memory_max_is_the_containers_limit_and_memory_its_reservation() {
        let mut t = task();
        let (_, b) = body_of(&DockerOptions::default(), &t).unwrap();
        assert_eq!(b.host_config.unwrap().memory_reservation, None);
        t.resources.memory_max = Some(128);
        let (_, b) = body_of(&DockerOptions::default(), &t).unwrap();
        let h = b.host_config.unwrap();
        assert_eq!(h.memory, Some(128 * 1024 * 1024));
        assert_eq!(h.memory_swap, h.memory);
        assert_eq!(h.memory_reservation, Some(64 * 1024 * 1024));
    }

    #[test]
    fn the_body_carries_the_task() {
        let (name, b) = body_of(&DockerOptions::default(), &task()).unwrap();
        assert_eq!(name, "web-a1");
        assert_eq!(b.image.as_deref(), Some("busybox:latest"));
        assert_eq!(b.hostname.as_deref(), Some("h1"));
        assert_eq!(b.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(b.cmd, Some(vec!["-c".to_string(), "echo hi".to_string()]));
        assert_eq!(
            b.env,
            Some(vec![
                "TEND_ALLOC_DIR=/alloc".to_string(),
                "TEND_TASK_DIR=/local".to_string()
            ])
        );
        let labels = b.labels.unwrap();
        assert_eq!(labels["team"], "ops");
        assert_eq!(labels["job"], "j");
        assert_eq!(labels[LABEL_ALLOC_ID], "a1");
        assert_eq!(labels[LABEL_TASK], "web");
        assert_eq!(b.stop_signal.as_deref(), Some("15"));
        assert_eq!(b.stop_timeout, Some(7));
        let mut exposed = b.exposed_ports.unwrap();
        exposed.sort();
        assert_eq!(exposed, ["53/tcp", "53/udp", "8080/tcp", "8080/udp"]);

        let h = b.host_config.unwrap();
        assert_eq!(h.memory, Some(64 * 1024 * 1024));
        assert_eq!(h.memory_swap, h.memory);
        assert_eq!(h.cpu_shares, Some(250));
        assert_eq!(
            h.binds.unwrap(),
            [
                "/data/allocs/a1/alloc:/alloc",
                "/data/allocs/a1/web/local:/local"
            ]
        );
        assert_eq!(h.network_mode.as_deref(), Some("bridge"));
        assert_eq!(h.dns.unwrap(), ["10.0.0.53", "::1"]);
        assert_eq!(h.dns_search.unwrap(), ["example.org"]);
        assert_eq!(h.privileged, Some(false));
        let pb = h.port_bindings.unwrap();
        for proto in ["tcp", "udp"] {
            let http = pb[&format!("8080/{proto}")].as_ref().unwrap();
            assert_eq!(http.len(), 1);
            assert_eq!(http[0].host_ip.as_deref(), Some("127.0.0.1"));
            assert_eq!(http[0].host_port.as_deref(), Some("23456"));
            let dns = pb[&format!("53/{proto}")].as_ref().unwrap();
            assert_eq!(dns[0].host_ip, None);
            assert_eq!(dns[0].host_port.as_deref(), Some("5353"));
        }
        let lc = h.log_config.unwrap();
        assert_eq!(lc.typ.as_deref(), Some(ENGINE_LOG_DRIVER));
        assert_eq!(lc.config.unwrap()["max-size"], "200m");
    }

    #[test]
    fn no_command_keeps_the_image_entrypoint_and_cmd() {
        let mut t = task();
        t.config.command = None;
        t.config.args.clear();
        let (_, b) = body_of(&DockerOptions::default(), &t).unwrap();
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, None);
    }

    #[test]
    fn host_and_none_networks_publish_nothing() {
        for mode in ["host", "none"] {
            let mut t = task();
            t.config.network_mode = Some(mode.into());
            let opts = DockerOptions {
                allow_host_network: true,
                ..Default::default()
            };
            let (_, b) = body_of(&opts, &t).unwrap();
            let h = b.host_config.unwrap();
            assert_eq!(h.network_mode.as_deref(), Some(mode));
            assert_eq!(h.port_bindings, None);
            assert_eq!(b.exposed_ports, None);
        }
    }

    #[test]
    fn privileged_only_when_asked_and_allowed() {
        let allow = DockerOptions {
            allow_privileged: true,
            ..Default::default()
        };
        let (_, b) = body_of(&allow, &task()).unwrap();
        assert_eq!(b.host_config.unwrap().privileged, Some(false));
        let mut t = task();
        t.config.privileged = true;
        let (_, b) = body_of(&allow, &t).unwrap();
        assert_eq!(b.host_config.unwrap().privileged, Some(true));
        assert_eq!(
            err_of(&DockerOptions::default(), &t),
            "task web: config.privileged: the agent does not allow privileged containers \
             (set allow_privileged = true in plugin \"docker\")"
        );
    }

    #[test]
    fn host_network_needs_the_agent() {
        let mut t = task();
        t.config.network_mode = Some("host".into());
        assert_eq!(
            err_of(&DockerOptions::default(), &t),
            "task web: config.network_mode: the agent does not allow the host network \
             (set allow_host_network = true in plugin \"docker\")"
        );
    }

    #[test]
    fn args_without_a_command_are_refused() {
        let mut t = task();
        t.config.command = None;
        let e = err_of(&DockerOptions::default(), &t);
        assert!(
            e.starts_with("task web: config.args: args need a command"),
            "{e}"
        );
    }

    #[test]
    fn unknown_network_modes_are_refused() {
        let mut t = task();
        t.config.network_mode = Some("container:db".into());
        let e = err_of(&DockerOptions::default(), &t);
        assert!(
            e.starts_with("task web: config.network_mode: \"container:db\" is not one of"),
            "{e}"
        );
        for ok in NETWORK_MODES {
            t.config.network_mode = Some(ok.into());
            let opts = DockerOptions {
                allow_host_network: true,
                ..Default::default()
            };
            check(&opts, &t).unwrap();
        }
    }

    #[test]
    fn dns_servers_must_be_ip_addresses() {
        let mut t = task();
        t.config.dns_servers = vec!["1.1.1.1".into(), "dns.example".into()];
        assert_eq!(
            err_of(&DockerOptions::default(), &t),
            "task web: config.dns_servers: \"dns.example\" is not an IP address"
        );
    }

    #[test]
    fn an_image_is_required_and_port_map_labels_must_exist() {
        let mut t = task();
        t.config.image = None;
        assert!(err_of(&DockerOptions::default(), &t).contains("config.image"));
        let mut t = task();
        t.config.port_map.insert("nope".into(), 1);
        assert!(err_of(&DockerOptions::default(), &t).contains("\"nope\" is not a port"));
        let mut t = task();
        t.name = "we b".into();
        assert!(err_of(&DockerOptions::default(), &t).contains("container name"));
    }

    fn volume(source: VolumeSource, target: &str, read_only: bool) -> Volume {
        Volume {
            source,
            target: target.into(),
            read_only,
        }
    }

    fn device(host: &str, container: &str, perms: &str) -> Device {
        Device {
            host_path: host.into(),
            container_path: container.into(),
            cgroup_permissions: perms.into(),
        }
    }

    #[test]
    fn volumes_devices_and_caps_reach_the_body() {
        let mut t = task();
        t.config.volumes = vec![
            volume(VolumeSource::InAlloc("web/shared".into()), "/data", false),
            volume(VolumeSource::InAlloc("alloc/x".into()), "/x", true),
            volume(VolumeSource::InAlloc("".into()), "/all", true),
            volume(VolumeSource::Host("/srv/www".into()), "/www", true),
        ];
        t.config.devices = vec![
            device("/dev/fuse", "/dev/fuse", "rwm"),
            device("/dev/sda", "/dev/xvda", "r"),
        ];
        t.config.cap_add = vec!["NET_ADMIN".into()];
        t.config.cap_drop = vec!["ALL".into()];
        let opts = DockerOptions {
            allow_host_binds: true,
            allow_devices: true,
            allowed_caps: vec!["cap_net_admin".into()],
            ..Default::default()
        };
        let h = body_of(&opts, &t).unwrap().1.host_config.unwrap();
        assert_eq!(
            h.binds.unwrap(),
            [
                "/data/allocs/a1/alloc:/alloc",
                "/data/allocs/a1/web/local:/local",
                "/data/allocs/a1/web/shared:/data",
                "/data/allocs/a1/alloc/x:/x:ro",
                "/data/allocs/a1:/all:ro",
                "/srv/www:/www:ro",
            ]
        );
        let mapping = |host: &str, container: &str, perms: &str| DeviceMapping {
            path_on_host: Some(host.into()),
            path_in_container: Some(container.into()),
            cgroup_permissions: Some(perms.into()),
        };
        assert_eq!(
            h.devices.unwrap(),
            [
                mapping("/dev/fuse", "/dev/fuse", "rwm"),
                mapping("/dev/sda", "/dev/xvda", "r"),
            ]
        );
        assert_eq!(h.cap_add.unwrap(), ["NET_ADMIN"]);
        assert_eq!(h.cap_drop.unwrap(), ["ALL"]);

        let h = body_of(&opts, &task()).unwrap().1.host_config.unwrap();
        assert_eq!((h.devices, h.cap_add, h.cap_drop), (None, None, None));
    }

    #[test]
    fn volumes_of_the_alloc_dir_and_dropped_caps_need_nothing() {
        let mut t = task();
        t.config.volumes = vec![
            volume(VolumeSource::InAlloc("web/shared".into()), "/data", false),
            volume(VolumeSource::InAlloc("other/local".into()), "/other", true),
        ];
        t.config.cap_drop = vec!["ALL".into()];
        let (_, b) = body_of(&DockerOptions::default(), &t).unwrap();
        let h = b.host_config.unwrap();
        assert_eq!(h.binds.unwrap().len(), 4);
        assert_eq!(h.cap_drop.unwrap(), ["ALL"]);
    }

    #[test]
    fn host_binds_devices_and_caps_need_the_agent() {
        let none = DockerOptions::default();
        let mut t = task();
        t.config.volumes = vec![
            volume(VolumeSource::InAlloc("web/shared".into()), "/data", false),
            volume(VolumeSource::Host("/etc".into()), "/host-etc", true),
        ];
        assert_eq!(
            err_of(&none, &t),
            "task web: config.volumes: the agent does not allow binds outside the alloc dir \
             (/etc -> /host-etc) (set allow_host_binds = true in plugin \"docker\")"
        );
        let mut t = task();
        t.config.devices = vec![device("/dev/fuse", "/dev/fuse", "rwm")];
        assert_eq!(
            err_of(&none, &t),
            "task web: config.devices: the agent does not allow host devices (/dev/fuse) \
             (set allow_devices = true in plugin \"docker\")"
        );
        let mut t = task();
        t.config.cap_add = vec!["NET_ADMIN".into(), "SYS_ADMIN".into()];
        let some = DockerOptions {
            allowed_caps: vec!["NET_ADMIN".into()],
            ..Default::default()
        };
        assert_eq!(
            err_of(&some, &t),
            "task web: config.cap_add: the agent does not allow capability SYS_ADMIN \
             (set allowed_caps = [..., \"SYS_ADMIN\"] in plugin \"docker\")"
        );
    }

    #[test]
    fn a_source_that_climbs_out_of_the_alloc_dir_is_never_bound() {
        let mut t = task();
        t.config.volumes = vec![volume(
            VolumeSource::InAlloc("web/../../etc".into()),
            "/etc2",
            false,
        )];
        let all = DockerOptions {
            allow_host_binds: true,
            ..Default::default()
        };
        assert_eq!(
            err_of(&all, &t),
            "task web: config.volumes: the source web/../../etc is not a path of plain names \
             in the alloc dir"
        );
        // The policy alone counts it as a bind outside the alloc dir.
        let e = policy(&DockerOptions::default(), "web", &HostRequest::of(&t))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_host_binds = true"), "{e}");
    }

    #[test]
    fn capability_names_are_compared_canonically() {
        let opts = DockerOptions {
            allowed_caps: vec!["CAP_NET_ADMIN".into()],
            ..Default::default()
        };
        let mut t = task();
        for cap in ["net_admin", "NET_ADMIN", "CAP_NET_ADMIN"] {
            t.config.cap_add = vec![cap.into()];
            policy(&opts, "web", &HostRequest::of(&t)).unwrap();
        }
        t.config.cap_add = vec!["sys_admin".into()];
        let e = policy(&opts, "web", &HostRequest::of(&t))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allowed_caps = [..., \"SYS_ADMIN\"]"), "{e}");
    }
}

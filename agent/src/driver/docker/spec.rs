//! What a task asks of the engine, checked and turned into a create-container
//! body. Pure: no I/O, so every mapping and every refusal is unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding};

use super::{DockerOptions, DockerStart};
use crate::driver::DriverError;
use crate::jobspec::Task;

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
}

impl HostBind {
    fn to_engine(&self) -> String {
        format!("{}:{}", self.source.display(), self.target)
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
    /// Host paths to bind into the container.
    pub binds: &'a [HostBind],
    /// Host devices to hand to the container.
    pub devices: &'a [String],
    /// Capabilities to add.
    pub cap_add: &'a [String],
}

/// The one policy check: every host-affecting option of `req` against the agent's
/// docker options. Allowed is not requested: this only refuses; whether an option
/// is set is decided by what the task asks. Binds are allowed inside `alloc_root`
/// (the allocation's dir); with no alloc dir known yet, every bind is outside it.
pub fn policy(
    opts: &DockerOptions,
    task: &str,
    alloc_root: Option<&Path>,
    req: &HostRequest<'_>,
) -> Result<(), DriverError> {
    let refuse = |field: &'static str, what: &str, option: &str| DriverError::Field {
        task: task.to_string(),
        field,
        reason: format!("the agent does not allow {what} (set {option} in plugin \"docker\")"),
    };
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
        for b in req.binds {
            let inside = alloc_root.is_some_and(|root| is_beneath(&b.source, root));
            if !inside {
                return Err(refuse(
                    "config.volumes",
                    &format!(
                        "binds outside the alloc dir ({} -> {})",
                        b.source.display(),
                        b.target
                    ),
                    "allow_host_binds = true",
                ));
            }
        }
    }
    if !req.devices.is_empty() && !opts.allow_devices {
        return Err(refuse(
            "config.devices",
            &format!("host devices ({})", req.devices.join(", ")),
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

/// `NET_ADMIN`, `net_admin` and `CAP_NET_ADMIN` are one capability.
fn cap_name(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

fn cap_allowed(allowed: &[String], cap: &str) -> bool {
    let want = cap_name(cap);
    allowed.iter().map(|a| cap_name(a)).any(|a| a == want)
}

/// Whether `path` is `root` or beneath it, lexically: a path with `..` or a
/// relative one never is.
fn is_beneath(path: &Path, root: &Path) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        && path.starts_with(root)
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
/// values and the policy of the agent. Everything [`create_body`] would refuse
/// is refused here, except binds, which need the alloc dir.
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
    policy(
        opts,
        &task.name,
        None,
        &HostRequest {
            privileged: c.privileged,
            network_mode: mode,
            binds: &[],
            devices: &[],
            cap_add: &[],
        },
    )
}

/// The name and create-container body of one run of a task. Runs [`check`] and
/// the policy (binds included) first: nothing is returned that the agent refuses.
pub fn create_body(
    opts: &DockerOptions,
    req: &DockerStart<'_>,
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
    let binds = [
        HostBind {
            source: req.alloc.shared(),
            target: CONTAINER_ALLOC_DIR.to_string(),
        },
        HostBind {
            source: req.alloc.task_local(&task.name),
            target: CONTAINER_TASK_DIR.to_string(),
        },
    ];
    let cap_add: Vec<String> = Vec::new();
    let devices: Vec<String> = Vec::new();
    policy(
        opts,
        &task.name,
        Some(&req.alloc.root),
        &HostRequest {
            privileged: task.config.privileged,
            network_mode: mode,
            binds: &binds,
            devices: &devices,
            cap_add: &cap_add,
        },
    )?;

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
        for p in req.ports {
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

    let memory =
        i64::try_from(task.resources.memory.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
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
        cpu_shares: Some(cpu_shares),
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
                pids_limit: 100,
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
        create_body(
            opts,
            &DockerStart {
                alloc_id: "a1",
                alloc: &alloc,
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
        )
    }

    fn err_of(opts: &DockerOptions, t: &Task) -> String {
        let e = body_of(opts, t).unwrap_err().to_string();
        assert_eq!(check(opts, t).unwrap_err().to_string(), e);
        e
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

    fn req<'a>(
        caps: &'a [String],
        binds: &'a [HostBind],
        devices: &'a [String],
    ) -> HostRequest<'a> {
        HostRequest {
            privileged: false,
            network_mode: "bridge",
            binds,
            devices,
            cap_add: caps,
        }
    }

    #[test]
    fn caps_devices_and_binds_go_through_the_policy() {
        let opts = DockerOptions {
            allowed_caps: vec!["CAP_NET_ADMIN".into()],
            ..Default::default()
        };
        let net_admin = ["net_admin".to_string()];
        policy(&opts, "t", None, &req(&net_admin, &[], &[])).unwrap();
        let sys_admin = ["SYS_ADMIN".to_string()];
        let e = policy(&opts, "t", None, &req(&sys_admin, &[], &[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "task t: config.cap_add: the agent does not allow capability SYS_ADMIN \
             (set allowed_caps = [..., \"SYS_ADMIN\"] in plugin \"docker\")"
        );

        let devices = ["/dev/fuse".to_string()];
        let e = policy(&opts, "t", None, &req(&[], &[], &devices))
            .unwrap_err()
            .to_string();
        assert!(e.contains("set allow_devices = true"), "{e}");

        let root = Path::new("/data/allocs/a1");
        let inside = [HostBind {
            source: root.join("alloc"),
            target: "/alloc".into(),
        }];
        let outside = [HostBind {
            source: PathBuf::from("/data/allocs/a1/../../etc"),
            target: "/etc".into(),
        }];
        policy(&opts, "t", Some(root), &req(&[], &inside, &[])).unwrap();
        let e = policy(&opts, "t", Some(root), &req(&[], &outside, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("binds outside the alloc dir"), "{e}");
        assert!(e.contains("allow_host_binds = true"), "{e}");
        let e = policy(&opts, "t", None, &req(&[], &inside, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("binds outside the alloc dir"), "{e}");
        let allow = DockerOptions {
            allow_host_binds: true,
            ..Default::default()
        };
        policy(&allow, "t", Some(root), &req(&[], &outside, &[])).unwrap();
    }
}

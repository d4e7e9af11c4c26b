//! Tests of the module above.
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
        checks: Vec::new(),
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

fn body_of(opts: &DockerOptions, t: &Task) -> Result<(String, ContainerCreateBody), DriverError> {
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

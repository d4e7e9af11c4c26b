use serde_json::json;

use super::*;

fn base() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 65534, "gid": 65534 },
            "args": ["sh", "-c", "echo hi"],
            "env": ["PATH=/usr/bin:/bin", "A=1", "PATH=/other"],
            "cwd": "/",
            "noNewPrivileges": true,
            "rlimits": [{ "type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024 }]
        },
        "root": { "path": "rootfs", "readonly": true },
        "mounts": [
            { "destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"] },
            { "destination": "/proc", "type": "proc", "source": "proc" }
        ],
        "linux": { "namespaces": [{ "type": "pid" }, { "type": "mount" }] }
    })
}

/// An edit of the base document.
type Change = Box<dyn Fn(&mut Value)>;

fn refusal(doc: &Value) -> String {
    map(Path::new("/b"), doc).unwrap_err().to_string()
}

#[test]
fn maps_process_root_and_binds() {
    let b = map(Path::new("/b"), &base()).unwrap();
    assert_eq!(b.args, ["sh", "-c", "echo hi"]);
    // The first PATH wins, as getenv reads it.
    assert_eq!(
        b.env,
        [
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("A".to_string(), "1".to_string())
        ]
    );
    assert_eq!((b.uid, b.gid), (65534, 65534));
    assert_eq!(b.rootfs.as_deref(), Some(Path::new("/b/rootfs")));
    assert_eq!(
        b.binds,
        [BindMount {
            source: "/usr".into(),
            destination: "/usr".into()
        }]
    );
    assert_eq!(b.rlimits[0].kind, "RLIMIT_NOFILE");
    assert!(!b.writable);
}

#[test]
fn uts_ipc_and_network_namespaces_are_mapped_with_the_hostname() {
    assert_eq!(
        map(Path::new("/b"), &base()).unwrap().namespaces,
        Namespaces::default()
    );
    let mut d = base();
    d["hostname"] = json!("box1");
    d["linux"]["namespaces"] = json!([
        { "type": "pid" }, { "type": "mount" }, { "type": "uts" }, { "type": "ipc" },
        { "type": "network" }
    ]);
    assert_eq!(
        map(Path::new("/b"), &d).unwrap().namespaces,
        Namespaces {
            uts: true,
            hostname: Some("box1".into()),
            ipc: true,
            net: true,
        }
    );
    d["hostname"] = json!("h".repeat(65));
    assert!(refusal(&d).starts_with("config.json: hostname: "));
}

#[test]
fn a_cgroup_namespace_becomes_the_configs_extra() {
    let b = map(Path::new("/b"), &base()).unwrap();
    assert!(!b.cgroup_namespace);
    assert_eq!(b.extras(), []);
    let mut d = base();
    d["linux"]["namespaces"] =
        json!([{ "type": "pid" }, { "type": "mount" }, { "type": "cgroup" }]);
    let b = map(Path::new("/b"), &d).unwrap();
    assert!(b.cgroup_namespace);
    assert_eq!(b.namespaces, Namespaces::default());
    assert_eq!(b.extras(), [ConfigExtra::CgroupNamespace]);
    // Joining one by path is refused as for every type.
    d["linux"]["namespaces"][2] = json!({ "type": "cgroup", "path": "/proc/1/ns/cgroup" });
    assert_eq!(
        refusal(&d),
        "config.json: linux.namespaces[2].path: is not supported"
    );
}

#[test]
fn a_root_that_is_not_read_only_is_a_writable_one() {
    let mut d = base();
    d["root"]["readonly"] = json!(false);
    let b = map(Path::new("/b"), &d).unwrap();
    assert!(b.writable);
    assert_eq!(b.rootfs.as_deref(), Some(Path::new("/b/rootfs")));
    // Without the key, as `runc spec` writes it: false.
    d["root"] = json!({ "path": "rootfs" });
    assert!(map(Path::new("/b"), &d).unwrap().writable);
    // The host's root is never written through this.
    d["root"] = json!({ "path": "/" });
    d["mounts"] = json!([]);
    assert!(!map(Path::new("/b"), &d).unwrap().writable);
}

#[test]
fn maps_resources_and_cgroups_path() {
    let mut d = base();
    d["linux"]["resources"] = json!({
        "memory": { "limit": 67108864, "reservation": -1 },
        "cpu": { "shares": 512, "quota": 50000, "period": 100000 },
        "pids": { "limit": 64 }
    });
    d["linux"]["cgroupsPath"] = json!("/tend-oci/job1");
    let cg = map(Path::new("/b"), &d).unwrap().cgroup.unwrap();
    assert_eq!(
        cg,
        Cgroup {
            path: Some("tend-oci/job1".into()),
            memory_bytes: Some(64 << 20),
            memory_soft_bytes: None,
            cpu_shares: Some(512),
            cpu_quota: Some((50000, 100000)),
            pids_max: Some(64),
        }
    );
    // No resources and no path: no cgroup.
    assert_eq!(map(Path::new("/b"), &base()).unwrap().cgroup, None);
}

#[test]
fn host_root_needs_no_readonly() {
    let mut d = base();
    d["root"] = json!({ "path": "/" });
    d["mounts"] = json!([]);
    assert_eq!(map(Path::new("/b"), &d).unwrap().rootfs, None);
    // A rootfs that resolves to / is the host's root too.
    let b = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/", b.path().join("rootfs")).unwrap();
    d["root"] = json!({ "path": "rootfs" });
    assert_eq!(map(b.path(), &d).unwrap().rootfs, None);
}

#[test]
fn refusals_name_the_field() {
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|d| d["linux"]["namespaces"][1] = json!({ "type": "user" })),
            "config.json: linux.namespaces[1]: type \"user\" is not supported",
        ),
        (
            Box::new(|d| {
                d["linux"]["namespaces"][0] = json!({ "type": "network", "path": "/run/netns/x" })
            }),
            "config.json: linux.namespaces[0].path: is not supported",
        ),
        (
            Box::new(|d| d["linux"]["seccomp"] = json!({ "defaultAction": "SCMP_ACT_ALLOW" })),
            "config.json: linux.seccomp: is not supported",
        ),
        (
            Box::new(|d| d["linux"]["resources"] = json!({ "memory": { "swap": 1000 } })),
            "config.json: linux.resources.memory.swap: is not supported",
        ),
        (
            Box::new(|d| d["linux"]["resources"] = json!({ "devices": [{ "allow": false }] })),
            "config.json: linux.resources.devices: is not supported",
        ),
        (
            Box::new(|d| d["linux"]["cgroupsPath"] = json!("system.slice:tend:x")),
            "config.json: linux.cgroupsPath: \"system.slice:tend:x\": systemd's",
        ),
        (
            Box::new(|d| d["linux"]["cgroupsPath"] = json!("/a/../b")),
            "config.json: linux.cgroupsPath: \"/a/../b\" is not a plain path",
        ),
        (
            Box::new(|d| d["linux"]["maskedPaths"] = json!(["/proc/kcore", "/etc/shadow"])),
            "config.json: linux.maskedPaths[1]: \"/etc/shadow\" is not supported",
        ),
        (
            Box::new(|d| d["linux"]["readonlyPaths"] = json!(["/proc/kcore"])),
            "config.json: linux.readonlyPaths[0]: \"/proc/kcore\" is not supported",
        ),
        (
            Box::new(|d| {
                d["root"] = json!({ "path": "/" });
                d["mounts"] = json!([]);
                d["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
            }),
            "config.json: linux.maskedPaths: needs a root.path other than /",
        ),
        (
            Box::new(|d| d["process"]["terminal"] = json!(true)),
            "config.json: process.terminal: a terminal is not supported",
        ),
        (
            Box::new(|d| d["process"]["capabilities"] = json!({ "bounding": ["CAP_KILL"] })),
            "config.json: process.capabilities: is not supported",
        ),
        (
            Box::new(|d| d["process"]["user"]["additionalGids"] = json!([5])),
            "config.json: process.user.additionalGids: is not supported",
        ),
        (
            Box::new(|d| d["mounts"][0]["options"] = json!(["rbind"])),
            "config.json: mounts[0].options: read-write binds are not supported: add \"ro\"",
        ),
        (
            Box::new(|d| d["mounts"][1]["destination"] = json!("/sys")),
            "config.json: mounts[1].type: \"proc\" at /sys is not supported",
        ),
        (
            Box::new(|d| {
                d["root"] = json!({ "path": "root,fs", "readonly": false });
            }),
            "config.json: root.path: /b/root,fs: a writable root's path may not hold",
        ),
        (
            Box::new(|d| d["process"]["rlimits"][0]["type"] = json!("RLIMIT_NOPE")),
            "config.json: process.rlimits[0].type: \"RLIMIT_NOPE\" is not a known rlimit",
        ),
        (
            Box::new(|d| d["process"]["args"] = json!([])),
            "config.json: process.args: is empty",
        ),
        (
            Box::new(|d| d["hostname"] = json!("box")),
            "config.json: hostname: needs a uts namespace",
        ),
        (
            Box::new(|d| d["ociVersion"] = json!("2.0.0")),
            "config.json: ociVersion: \"2.0.0\": only 1.x is supported",
        ),
    ];
    for (change, want) in cases {
        let mut d = base();
        change(&mut d);
        let got = refusal(&d);
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

#[test]
fn runc_default_masked_and_readonly_paths_are_tend_spawns() {
    let mut d = base();
    d["linux"]["maskedPaths"] = json!([
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi"
    ]);
    d["linux"]["readonlyPaths"] = json!([
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger"
    ]);
    map(Path::new("/b"), &d).unwrap();
}

#[test]
fn empty_fields_ask_for_nothing() {
    let mut d = base();
    d["linux"]["resources"] = json!({ "devices": [] });
    d["linux"]["maskedPaths"] = json!([]);
    d["annotations"] = json!({ "a": "b" });
    map(Path::new("/b"), &d).unwrap();
}

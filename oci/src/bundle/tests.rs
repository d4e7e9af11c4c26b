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
        b.mounts,
        [Mount {
            target: "/usr".into(),
            kind: MountKind::Bind {
                source: "/usr".into(),
                recursive: true
            },
            read_only: true,
            nosuid: false,
            nodev: false,
            noexec: false,
        }]
    );
    assert_eq!(b.extras(), [ConfigExtra::Mounts(b.mounts.clone())]);
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
    assert!(!b.extras().contains(&ConfigExtra::CgroupNamespace));
    let mut d = base();
    d["linux"]["namespaces"] =
        json!([{ "type": "pid" }, { "type": "mount" }, { "type": "cgroup" }]);
    let b = map(Path::new("/b"), &d).unwrap();
    assert!(b.cgroup_namespace);
    assert_eq!(b.namespaces, Namespaces::default());
    assert_eq!(b.extras().last(), Some(&ConfigExtra::CgroupNamespace));
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
            Box::new(|d| d["linux"]["maskedPaths"] = json!(["/proc/kcore", "etc/shadow"])),
            "config.json: linux.maskedPaths[1]: \"etc/shadow\": must be absolute",
        ),
        (
            Box::new(|d| d["linux"]["readonlyPaths"] = json!(["/etc/../proc"])),
            "config.json: linux.readonlyPaths[0]: \"/etc/../proc\": must be absolute",
        ),
        (
            Box::new(|d| d["linux"]["readonlyPaths"] = json!(["/"])),
            "config.json: linux.readonlyPaths[0]: \"/\": must be absolute, without '..', not /",
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
            Box::new(|d| d["mounts"][0]["options"] = json!(["rbind", "ro", "suid"])),
            "config.json: mounts[0].options[2]: \"suid\" is not supported",
        ),
        (
            Box::new(|d| d["mounts"][0]["options"] = json!(["rbind", "size=1m"])),
            "config.json: mounts[0].options[1]: \"size=1m\" is not supported",
        ),
        (
            Box::new(|d| d["mounts"][1]["destination"] = json!("/sys")),
            "config.json: mounts[1].type: \"proc\" at /sys is not supported",
        ),
        (
            Box::new(|d| d["mounts"][1] = json!({ "destination": "/dev/pts", "type": "devpts" })),
            "config.json: mounts[1].type: \"devpts\" at /dev/pts is not supported",
        ),
        (
            Box::new(|d| d["mounts"][0]["source"] = json!("usr")),
            "config.json: mounts[0].source: \"usr\": must be absolute",
        ),
        (
            Box::new(|d| d["mounts"][0]["destination"] = json!("/a/../../b")),
            "config.json: mounts[0].destination: \"/a/../../b\": must be absolute",
        ),
        (
            Box::new(|d| d["mounts"][0]["destination"] = json!("/")),
            "config.json: mounts[0].destination: a mount over the root is not supported",
        ),
        (
            Box::new(|d| d["mounts"][1] = json!({ "destination": "/dev", "type": "tmpfs" })),
            "config.json: mounts[1].destination: a mount over /dev is not supported",
        ),
        (
            Box::new(|d| {
                d["mounts"][1] =
                    json!({ "destination": "/run", "type": "tmpfs", "options": ["strictatime"] })
            }),
            "config.json: mounts[1].options[0]: \"strictatime\" is not supported",
        ),
        (
            Box::new(|d| {
                d["mounts"][1] =
                    json!({ "destination": "/run", "type": "tmpfs", "options": ["size=50%"] })
            }),
            "config.json: mounts[1].options[0]: size=50%: want bytes or a k, m or g suffix",
        ),
        (
            Box::new(|d| {
                d["mounts"][1] =
                    json!({ "destination": "/run", "type": "tmpfs", "options": ["mode=999"] })
            }),
            "config.json: mounts[1].options[0]: mode=999: want an octal mode",
        ),
        (
            Box::new(|d| {
                d["mounts"][1] =
                    json!({ "destination": "/run", "type": "tmpfs", "options": ["nr_inodes=5"] })
            }),
            "config.json: mounts[1].options[0]: \"nr_inodes=5\" is not supported",
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
    // None of them travels: tend-spawn masks them in every root.
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
    let b = map(Path::new("/b"), &d).unwrap();
    assert!(b.masked_paths.is_empty() && b.readonly_paths.is_empty());
}

#[test]
fn empty_fields_ask_for_nothing() {
    let mut d = base();
    d["linux"]["resources"] = json!({ "devices": [] });
    d["linux"]["maskedPaths"] = json!([]);
    d["annotations"] = json!({ "a": "b" });
    map(Path::new("/b"), &d).unwrap();
}

#[test]
fn binds_and_tmpfs_map_with_their_options() {
    let mut d = base();
    d["mounts"] = json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/tmp", "type": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] },
        { "destination": "/data", "type": "bind", "source": "/srv/data",
          "options": ["bind", "rw", "noexec", "rprivate"] },
        { "destination": "/etc/hosts", "source": "/etc/hosts", "options": ["rbind", "ro"] },
        { "destination": "/run", "type": "tmpfs", "source": "tmpfs",
          "options": ["size=1m", "mode=755", "noexec", "relatime"] },
        { "destination": "/tmp", "type": "tmpfs", "options": ["size=64k", "ro"] }
    ]);
    d["linux"]["maskedPaths"] = json!(["/proc/kcore", "/etc/secret"]);
    d["linux"]["readonlyPaths"] = json!(["/proc/sys", "/data/ro"]);
    let b = map(Path::new("/b"), &d).unwrap();
    let m = |target: &str, kind, read_only, noexec| Mount {
        target: target.into(),
        kind,
        read_only,
        nosuid: !read_only,
        nodev: !read_only,
        noexec,
    };
    let tmpfs = |size_bytes, mode| MountKind::Tmpfs { size_bytes, mode };
    // proc at /proc and the plain /tmp are tend-spawn's own; a writable
    // mount is always nosuid and nodev.
    assert_eq!(
        b.mounts,
        [
            m(
                "/data",
                MountKind::Bind {
                    source: "/srv/data".into(),
                    recursive: false
                },
                false,
                true
            ),
            m(
                "/etc/hosts",
                MountKind::Bind {
                    source: "/etc/hosts".into(),
                    recursive: true
                },
                true,
                false
            ),
            m("/run", tmpfs(Some(1 << 20), Some(0o755)), false, true),
            m("/tmp", tmpfs(Some(64 << 10), None), true, false),
        ]
    );
    assert_eq!(b.masked_paths, ["/etc/secret"]);
    assert_eq!(b.readonly_paths, ["/data/ro"]);
    assert_eq!(b.extras().len(), 3);
}

#[test]
fn tmpfs_sizes_take_mount_suffixes() {
    for (v, want) in [
        ("4096", 4096),
        ("65536k", 64 << 20),
        ("1M", 1 << 20),
        ("2g", 2 << 30),
    ] {
        assert_eq!(size("f", v).unwrap(), want, "{v}");
    }
    for v in ["", "k", "0", "1t", "12x", "-1", "99999999999999999999g"] {
        assert!(size("f", v).is_err(), "{v}");
    }
}

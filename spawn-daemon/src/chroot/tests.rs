//! Tests of the module above.
use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use tend_proto::config::{Bind, ConfigExtra, MountKind};

fn binds(pairs: &[(&str, &str)]) -> ChrootSpec {
    ChrootSpec {
        binds: pairs
            .iter()
            .map(|(source, target)| Bind {
                source: (*source).into(),
                target: (*target).into(),
            })
            .collect(),
    }
}

/// A host whose `.conf` paths are files, with or without mount_setattr,
/// where `/usr` has the submounts `local` and `local/share`.
struct FakeHost {
    setattr: bool,
}

impl FakeHost {
    fn new(setattr: bool) -> FakeHost {
        FakeHost { setattr }
    }
}

impl Host for FakeHost {
    fn is_file(&self, path: &str) -> bool {
        path.ends_with(".conf")
    }
    fn has_mount_setattr(&self) -> bool {
        self.setattr
    }
    fn submounts(&self, path: &str) -> Vec<String> {
        match path {
            "/usr" => vec!["local".into(), "local/share".into()],
            _ => Vec::new(),
        }
    }
}

#[test]
fn plan_binds_read_only_then_dev_proc_tmp_alloc_local() {
    let mut c = tend_proto::config::example("/data/allocs/a1", "/run/s");
    c.task = "web".into();
    let spec = binds(&[
        ("/usr", "/usr"),
        ("/etc/resolv.conf", "//etc/./resolv.conf"),
    ]);
    let p = plan(&c, &spec, true, &FakeHost::new(true));
    let ro = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    let rw = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    assert_eq!(p[0].target, "usr");
    assert_eq!(p[0].describe(), "/usr on /usr");
    assert_eq!((p[0].attrs, p[0].remount), (ro, None));
    assert_eq!(p[0].flags, libc::MS_BIND | libc::MS_REC);
    assert!(p[1].file);
    assert_eq!(p[1].target, "etc/resolv.conf");
    assert_eq!(p[2].source, Source::Host("/dev/null".into()));
    assert_eq!(p[2].target, "dev/null");
    let at = |t: &str| p.iter().find(|m| m.target == t).unwrap();
    let proc_ = at("proc");
    assert_eq!(proc_.source, Source::Fs("proc"));
    assert_eq!(proc_.data.as_deref(), Some("hidepid=2"));
    assert!(proc_.data_optional && !proc_.existing);
    let sys = at("proc/sys");
    assert_eq!(sys.source, Source::Itself);
    assert!(sys.existing && sys.attrs & libc::MOUNT_ATTR_RDONLY != 0);
    let kcore = at("proc/kcore");
    assert_eq!(kcore.source, Source::Host("/dev/null".into()));
    assert!(kcore.existing && kcore.file);
    let acpi = at("proc/acpi");
    assert_eq!(acpi.source, Source::Fs("tmpfs"));
    assert!(acpi.existing && acpi.flags & libc::MS_RDONLY != 0);
    // Every knob comes after the /proc it lives in.
    let proc_at = p.iter().position(|m| m.target == "proc").unwrap();
    assert!(p
        .iter()
        .enumerate()
        .all(|(i, m)| !m.target.starts_with("proc/") || i > proc_at));
    let tmp = at("tmp");
    assert_eq!(tmp.flags, libc::MS_NOSUID | libc::MS_NODEV);
    // example() has no cgroup: the 64 MiB default.
    assert_eq!(tmp.data.as_deref(), Some("mode=1777,size=67108864"));
    let alloc = at("alloc");
    assert_eq!(alloc.source, Source::InAlloc("alloc".into()));
    assert_eq!((alloc.attrs, alloc.remount), (rw, None));
    let local = p.last().unwrap();
    assert_eq!(local.source, Source::InAlloc("web/local".into()));
    assert_eq!(local.target, "local");
    assert_eq!(local.attrs, rw);
    // No /sys bound: nothing of it masked.
    assert!(!p.iter().any(|m| m.target.starts_with("sys")));
}

#[test]
fn knobs_are_read_only_for_a_root_task_and_masks_are_for_every_task() {
    let c = tend_proto::config::example("/data/allocs/a1", "/run/s");
    let spec = binds(&[("/usr", "/usr")]);
    let has = |p: &[PlannedMount], t: &str| p.iter().any(|m| m.target == t);
    let root = plan(&c, &spec, true, &FakeHost::new(true));
    let other = plan(&c, &spec, false, &FakeHost::new(true));
    for knob in PROC_READ_ONLY {
        let t = format!("proc/{knob}");
        assert!(has(&root, &t) && !has(&other, &t), "{t}");
    }
    for t in ["proc/kcore", "proc/keys", "proc/timer_list", "proc/acpi"] {
        assert!(has(&root, t) && has(&other, t), "{t}");
    }
}

#[test]
fn without_mount_setattr_every_bind_and_submount_is_remounted() {
    let c = tend_proto::config::example("/data/allocs/a1", "/run/s");
    let spec = binds(&[("/usr", "/usr"), ("/sys", "/sys")]);
    let p = plan(&c, &spec, false, &FakeHost::new(false));
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    assert_eq!((p[0].attrs, p[0].remount), (0, Some(ro)));
    assert_eq!(p[1].source, Source::Existing);
    assert_eq!(p[1].target, "usr/local");
    assert_eq!(p[2].target, "usr/local/share");
    assert!(p[1].existing && p[1].remount == Some(ro));
    assert_eq!(p[1].describe(), "remount /usr/local");
    let local = p.last().unwrap();
    assert_eq!(
        local.remount,
        Some(libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV)
    );
    // A /sys bound in gets its firmware masked.
    assert!(p.iter().any(|m| m.target == "sys/firmware" && m.existing));
}

#[test]
fn submounts_come_from_mountinfo_beneath_the_dir_only() {
    let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
40 22 0:40 / /usr rw - ext4 /dev/sdb rw
41 40 0:41 / /usr/my\\040dir rw - tmpfs t rw
42 41 0:42 / /usr/my\\040dir/x rw - tmpfs t rw
43 22 0:43 / /usrx rw - tmpfs t rw
";
    assert_eq!(submounts_in(info, "/usr"), ["my dir", "my dir/x"]);
    assert_eq!(submounts_in(info, "/usr/"), ["my dir", "my dir/x"]);
    assert!(submounts_in(info, "/opt").is_empty());
}

#[test]
fn tmp_is_64_mib_or_a_quarter_of_the_memory_limit() {
    const MIB: u64 = 1024 * 1024;
    assert_eq!(tmp_size(None), 64 * MIB);
    assert_eq!(tmp_size(Some(1024 * MIB)), 64 * MIB);
    assert_eq!(tmp_size(Some(64 * MIB)), 16 * MIB);
    assert_eq!(tmp_size(Some(10)), 4096);
}

fn open_dir(p: &Path) -> OwnedFd {
    nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
        Mode::empty(),
    )
    .unwrap()
}

#[test]
fn mkdir_beneath_makes_0755_dirs_and_refuses_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let fd = open_dir(&root);
    mkdir_beneath(fd.as_fd(), "usr/lib/x").unwrap();
    let mode = std::fs::metadata(root.join("usr/lib"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    // A planted symlink, in the middle or at the end, is refused.
    symlink(outside.path(), root.join("evil")).unwrap();
    // (O_DIRECTORY | O_NOFOLLOW on a symlink is ENOTDIR; in the middle, ELOOP.)
    let refused = |e: io::Error| matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR));
    assert!(refused(mkdir_beneath(fd.as_fd(), "evil/sub").unwrap_err()));
    assert!(refused(mkdir_beneath(fd.as_fd(), "evil").unwrap_err()));
    symlink("/nonexistent-tend-dangling", root.join("dangling")).unwrap();
    assert!(mkdir_beneath(fd.as_fd(), "dangling/x").is_err());
    assert!(mkdir_beneath(fd.as_fd(), "../escape").is_err());
    assert!(!tmp.path().join("escape").exists());
    assert!(!Path::new("/nonexistent-tend-dangling").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// An empty alloc dir `a1` in a temp dir (kept while the first is) and the
/// config of its task `t`.
fn task_t_in_alloc() -> (tempfile::TempDir, PathBuf, SpawnConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let alloc_dir = tmp.path().join("a1");
    std::fs::create_dir_all(&alloc_dir).unwrap();
    let mut c = tend_proto::config::example(alloc_dir.to_str().unwrap(), "/run/s");
    c.task = "t".into();
    (tmp, alloc_dir, c)
}

#[test]
fn prepare_makes_only_alloc_and_local_on_disk_and_lists_mount_points() {
    let (_tmp, alloc_dir, c) = task_t_in_alloc();
    let spec = ChrootSpec {
        binds: vec![
            Bind {
                source: "/usr".into(),
                target: "/usr/lib".into(),
            },
            Bind {
                source: "/bin".into(),
                target: "/usr/bin".into(),
            },
        ],
    };
    let fd = open_dir(&alloc_dir);
    let r = prepare(&c, &spec, fd.as_fd(), false, &FakeHost::new(true)).unwrap();
    assert_eq!(r.ops[0].target.to_str().unwrap(), "usr/lib");
    assert_eq!(r.ops[0].shown, "/usr on /usr/lib");
    let created: Vec<(&str, bool)> = r
        .creates
        .iter()
        .map(|m| (m.path.to_str().unwrap(), m.file))
        .collect();
    // Parents first, each once; the dev nodes are files.
    assert_eq!(
        &created[..3],
        &[("usr", false), ("usr/lib", false), ("usr/bin", false)]
    );
    assert_eq!(created[3], ("dev", false));
    assert_eq!(created[4], ("dev/null", true));
    assert!(created.ends_with(&[
        ("proc", false),
        ("tmp", false),
        ("alloc", false),
        ("local", false)
    ]));
    // On disk: the alloc's shared dir and the task's local dir, nothing else.
    let mut on_disk: Vec<String> = walk(&alloc_dir);
    on_disk.sort();
    assert_eq!(on_disk, ["alloc", "t", "t/local"]);
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn prepare_refuses_a_planted_local_symlink_and_a_climbing_target() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let alloc_dir = tmp.path().join("a1");
    std::fs::create_dir_all(alloc_dir.join("t")).unwrap();
    let mut c = tend_proto::config::example(alloc_dir.to_str().unwrap(), "/run/s");
    c.task = "t".into();
    let fd = open_dir(&alloc_dir);
    // A previous run left /local as a link to a host dir.
    symlink(outside.path(), alloc_dir.join("t/local")).unwrap();
    let spec = ChrootSpec { binds: vec![] };
    let e = prepare(&c, &spec, fd.as_fd(), false, &FakeHost::new(true)).unwrap_err();
    assert_eq!(e.path, alloc_dir.join("t/local"));
    assert!(
        e.to_string().starts_with(&format!(
            "chroot: prepare {}: ",
            alloc_dir.join("t/local").display()
        )),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    std::fs::remove_file(alloc_dir.join("t/local")).unwrap();
    // A target that climbs out of the root is refused before anything mounts.
    let spec = ChrootSpec {
        binds: vec![Bind {
            source: "/usr".into(),
            target: "/usr/../../x".into(),
        }],
    };
    let e = prepare(&c, &spec, fd.as_fd(), false, &FakeHost::new(true)).unwrap_err();
    assert_eq!(e.source.raw_os_error(), Some(libc::EINVAL), "{e}");
    assert!(!alloc_dir.join("x").exists());
}

#[test]
fn a_writable_root_is_an_overlay_of_its_image_with_the_upper_dir_in_the_task_dir() {
    let (_tmp, alloc_dir, c) = task_t_in_alloc();
    let spec = ChrootSpec {
        binds: vec![
            Bind {
                source: "/srv/image".into(),
                target: "/".into(),
            },
            Bind {
                source: "/usr".into(),
                target: "/usr/lib".into(),
            },
        ],
    };
    let fd = open_dir(&alloc_dir);
    let r = prepare(&c, &spec, fd.as_fd(), false, &FakeHost::new(true)).unwrap();
    let task = alloc_dir.join("t/.tend-root");
    assert_eq!(
        r.overlay.as_deref().unwrap().to_str().unwrap(),
        format!(
            "lowerdir=/srv/image,upperdir={0}/upper,workdir={0}/work",
            task.display()
        )
    );
    // The image is the root, not a mount in it: the first mount is the bind.
    assert_eq!(r.ops[0].shown, "/usr on /usr/lib");
    assert!(r.ops.iter().all(|o| !o.target.is_empty()));
    // Each mount point names its parent and its own name.
    let parts: Vec<(&str, &str)> = r
        .creates
        .iter()
        .take(2)
        .map(|m| (m.parent.to_str().unwrap(), m.name.to_str().unwrap()))
        .collect();
    assert_eq!(parts, [(".", "usr"), ("usr", "lib")]);
    let mut on_disk: Vec<String> = walk(&alloc_dir);
    on_disk.sort();
    assert_eq!(
        on_disk,
        [
            "alloc",
            "t",
            "t/.tend-root",
            "t/.tend-root/upper",
            "t/.tend-root/work",
            "t/local"
        ]
    );
    // A read-only root has no overlay.
    let ro = ChrootSpec {
        binds: spec.binds[1..].to_vec(),
    };
    assert!(prepare(&c, &ro, fd.as_fd(), false, &FakeHost::new(true))
        .unwrap()
        .overlay
        .is_none());
}

/// The example config with a root and `extras`.
fn with_extras(extras: Vec<ConfigExtra>) -> SpawnConfig {
    let mut c = tend_proto::config::example("/data/allocs/a1", "/run/s");
    c.task = "web".into();
    c.extras = extras;
    c
}

fn mount(
    target: &str,
    kind: MountKind,
    read_only: bool,
    noexec: bool,
) -> tend_proto::config::Mount {
    tend_proto::config::Mount {
        target: target.into(),
        kind,
        read_only,
        nosuid: false,
        nodev: false,
        noexec,
    }
}

fn bind_of(source: &str, recursive: bool) -> MountKind {
    MountKind::Bind {
        source: source.into(),
        recursive,
    }
}

#[test]
fn extras_come_after_the_standard_mounts_then_read_only_then_masked_paths() {
    use libc::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    let c = with_extras(vec![
        ConfigExtra::MaskedPaths(vec!["/etc/secret".into()]),
        ConfigExtra::Mounts(vec![
            mount("/data", bind_of("/srv/data", false), false, true),
            mount("/etc/app.conf", bind_of("/srv/app.conf", true), true, false),
            mount(
                "/tmp",
                MountKind::Tmpfs {
                    size_bytes: Some(1 << 20),
                    mode: Some(0o755),
                },
                false,
                false,
            ),
        ]),
        ConfigExtra::ReadonlyPaths(vec!["/data/ro".into()]),
    ]);
    let p = plan(&c, &binds(&[("/usr", "/usr")]), false, &FakeHost::new(true));
    let local = p.iter().position(|m| m.target == "local").unwrap();
    let rest: Vec<&PlannedMount> = p[local + 1..].iter().collect();
    let targets: Vec<&str> = rest.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(
        targets,
        ["data", "etc/app.conf", "tmp", "data/ro", "etc/secret"]
    );
    // A writable bind is nosuid and nodev whatever the config says; `bind`
    // without `rbind` is one mount.
    let data = rest[0];
    assert_eq!(data.source, Source::Host("/srv/data".into()));
    assert_eq!(data.flags, libc::MS_BIND);
    assert_eq!(
        data.attrs,
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
    );
    assert!(data.late && !data.existing && !data.file);
    let conf = rest[1];
    assert_eq!(conf.flags, libc::MS_BIND | libc::MS_REC);
    assert_eq!(conf.attrs, MOUNT_ATTR_RDONLY);
    assert!(conf.late && conf.file);
    // The bundle's /tmp goes over tend-spawn's, which comes before it.
    let tmp = rest[2];
    assert!(p[..local].iter().any(|m| m.target == "tmp"));
    assert_eq!(tmp.source, Source::Fs("tmpfs"));
    assert_eq!(tmp.flags, libc::MS_NOSUID | libc::MS_NODEV);
    assert_eq!(tmp.data.as_deref(), Some("mode=0755,size=1048576"));
    let ro = rest[3];
    assert_eq!(ro.source, Source::Itself);
    assert!(ro.existing && !ro.late);
    assert_eq!(
        ro.attrs,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    );
    let masked = rest[4];
    assert_eq!(masked.source, Source::Mask);
    assert!(masked.existing);
    assert_eq!(masked.describe(), "mask over /etc/secret");
}

#[test]
fn without_mount_setattr_an_extra_bind_is_remounted_with_its_submounts() {
    let c = with_extras(vec![ConfigExtra::Mounts(vec![
        mount("/u", bind_of("/usr", true), true, false),
        mount("/v", bind_of("/usr", false), true, false),
    ])]);
    let p = plan(&c, &binds(&[]), false, &FakeHost::new(false));
    let local = p.iter().position(|m| m.target == "local").unwrap();
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    let rest: Vec<(&str, Option<libc::c_ulong>)> = p[local + 1..]
        .iter()
        .map(|m| (m.target.as_str(), m.remount))
        .collect();
    // A plain bind brings no submount along: nothing beneath to remount.
    assert_eq!(
        rest,
        [
            ("u", Some(ro)),
            ("u/local", Some(ro)),
            ("u/local/share", Some(ro)),
            ("v", Some(ro))
        ]
    );
}

#[test]
fn prepare_leaves_an_extras_mount_points_to_its_mount() {
    let (_tmp, alloc_dir, mut c) = task_t_in_alloc();
    c.extras = vec![ConfigExtra::Mounts(vec![
        mount("/local/x/y", bind_of("/usr", true), false, false),
        mount("/run", bind_of("/srv/a.conf", true), false, false),
    ])];
    let fd = open_dir(&alloc_dir);
    let r = prepare(&c, &binds(&[]), fd.as_fd(), false, &FakeHost::new(true)).unwrap();
    let created: Vec<&str> = r.creates.iter().map(|m| m.path.to_str().unwrap()).collect();
    assert!(!created
        .iter()
        .any(|p| p.starts_with("local/") || *p == "run"));
    let op = r
        .ops
        .iter()
        .find(|o| o.target.to_str() == Ok("local/x/y"))
        .unwrap();
    let points: Vec<(&str, &str, bool)> = op
        .points
        .iter()
        .map(|m| (m.parent.to_str().unwrap(), m.name.to_str().unwrap(), m.file))
        .collect();
    assert_eq!(
        points,
        [
            (".", "local", false),
            ("local", "x", false),
            ("local/x", "y", false)
        ]
    );
    let run = r
        .ops
        .iter()
        .find(|o| o.target.to_str() == Ok("run"))
        .unwrap();
    assert!(run.points[0].file);
    // Nothing of them is made on disk before the child walks the plan.
    assert!(!alloc_dir.join("t/local/x").exists());
}

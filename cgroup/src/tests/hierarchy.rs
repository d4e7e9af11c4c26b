//! Finding the hierarchies (mountinfo, probing), the checks on a parent, and
//! the daemon joining and leaving its own cgroup.

use super::*;

#[test]
fn mountinfo_v1_separate_cpu_and_cpuacct() {
    let root = Path::new("/sys/fs/cgroup");
    let mut text = String::from("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n");
    for (i, c) in ["cpu", "cpuacct", "cpuset", "memory", "freezer", "pids"]
        .iter()
        .enumerate()
    {
        let id = u32::try_from(i).unwrap() + 32;
        text += &mountinfo_line(id, &root.join(c), "cgroup", &format!("rw,{c}"));
    }
    text += &mountinfo_line(40, &root.join("systemd"), "cgroup", "rw,name=systemd");
    // A bind mount elsewhere is not ours.
    text += &mountinfo_line(50, Path::new("/other/memory"), "cgroup", "rw,memory");
    let h = Hierarchies::from_mountinfo(root, &text).unwrap();
    assert_eq!(h.mode(), Mode::V1);
    assert_eq!(
        h.v1_mount(Controller::Cpu),
        Some(root.join("cpu").as_path())
    );
    assert_eq!(
        h.v1_mount(Controller::Cpuacct),
        Some(root.join("cpuacct").as_path())
    );
    assert_eq!(
        h.v1_mount(Controller::Memory),
        Some(root.join("memory").as_path())
    );
    assert_eq!(
        h.v1_mount(Controller::Pids),
        Some(root.join("pids").as_path())
    );
    assert_eq!(
        h.v1_mount(Controller::Freezer),
        Some(root.join("freezer").as_path())
    );
    assert_eq!(h.unified_mount(), None);
}

#[test]
fn mountinfo_v1_comounted_cpu_cpuacct_with_escaped_root() {
    let root = Path::new("/tmp/with space/cg");
    let text = mountinfo_line(32, &root.join("cpu,cpuacct"), "cgroup", "rw,cpu,cpuacct")
        + &mountinfo_line(33, &root.join("memory"), "cgroup", "rw,memory");
    let h = Hierarchies::from_mountinfo(root, &text).unwrap();
    assert_eq!(h.mode(), Mode::V1);
    let both = root.join("cpu,cpuacct");
    assert_eq!(h.v1_mount(Controller::Cpu), Some(both.as_path()));
    assert_eq!(h.v1_mount(Controller::Cpuacct), Some(both.as_path()));
    // One dir per distinct mount.
    let cg = TaskCgroup::open(&h, "tend/a/t").unwrap();
    assert_eq!(cg.dirs().count(), 2);
}

#[test]
fn mountinfo_v2_and_hybrid() {
    let root = Path::new("/sys/fs/cgroup");
    let v2 = mountinfo_line(30, root, "cgroup2", "rw,nsdelegate");
    let h = Hierarchies::from_mountinfo(root, &v2).unwrap();
    assert_eq!(h.mode(), Mode::V2);
    assert_eq!(h.unified_mount(), Some(root));

    let hybrid = mountinfo_line(35, &root.join("memory"), "cgroup", "rw,memory")
        + &mountinfo_line(41, &root.join("unified"), "cgroup2", "rw");
    let h = Hierarchies::from_mountinfo(root, &hybrid).unwrap();
    assert_eq!(h.mode(), Mode::Hybrid);
    assert_eq!(h.unified_mount(), Some(root.join("unified").as_path()));

    // Nothing under the root.
    assert!(Hierarchies::from_mountinfo(Path::new("/elsewhere"), &hybrid).is_none());
}

#[test]
fn unescapes_mountinfo_octal() {
    assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    assert_eq!(unescape_mountinfo("/a\\011b\\134"), "/a\tb\\");
    // Not an escape: kept as written.
    assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
    assert_eq!(unescape_mountinfo("/plain"), "/plain");
}

#[test]
fn probes_fake_trees() {
    let t = tempfile::tempdir().unwrap();
    let (v1, v1c, v2, hy) = (
        t.path().join("v1"),
        t.path().join("v1c"),
        t.path().join("v2"),
        t.path().join("hy"),
    );
    fake_v1(&v1, false);
    fake_v1(&v1c, true);
    fake_v2(&v2);
    fake_hybrid(&hy);
    let h = Hierarchies::probe(&v1).unwrap();
    assert_eq!(h.mode(), Mode::V1);
    assert_eq!(
        h.v1_mount(Controller::Cpuacct),
        Some(v1.join("cpuacct").as_path())
    );
    let h = Hierarchies::probe(&v1c).unwrap();
    assert_eq!(
        h.v1_mount(Controller::Cpu),
        Some(v1c.join("cpu,cpuacct").as_path())
    );
    assert_eq!(Hierarchies::probe(&v2).unwrap().mode(), Mode::V2);
    let h = Hierarchies::probe(&hy).unwrap();
    assert_eq!(h.mode(), Mode::Hybrid);
    assert_eq!(h.unified_mount(), Some(hy.join("unified").as_path()));

    // detect_at probes when the mountinfo names nothing there or is missing.
    let h = Hierarchies::detect_at(&hy, &t.path().join("no-mountinfo")).unwrap();
    assert_eq!(h.mode(), Mode::Hybrid);
    let mi = t.path().join("mountinfo");
    fs::write(&mi, mountinfo_line(30, &v2, "cgroup2", "rw")).unwrap();
    assert_eq!(Hierarchies::detect_at(&v2, &mi).unwrap().mode(), Mode::V2);
    assert_eq!(Hierarchies::detect_at(&v1, &mi).unwrap().mode(), Mode::V1);

    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let e = Hierarchies::probe(&empty).unwrap_err();
    assert!(matches!(e, CgroupError::NoHierarchy { .. }), "{e}");
}

#[test]
fn check_parent_on_fake_trees() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    // Still to be made: the root offers every controller.
    h.check_parent("tend").unwrap();
    // A path under a file.
    let e = h.check_parent("cgroup.procs/x").unwrap_err().to_string();
    assert!(e.ends_with("cgroup.procs is not a directory"), "{e}");
    // An existing parent: what its subtree_control lacks is enabled.
    put(
        &t.path().join("tend"),
        &[
            ("cgroup.controllers", "cpu memory pids\n"),
            ("cgroup.subtree_control", "memory\n"),
        ],
    );
    h.check_parent("tend").unwrap();
    assert_eq!(
        read(t.path().join("tend/cgroup.subtree_control")),
        "+pids +cpu"
    );
    // Below a dir that does not offer cpu: nothing can enable it there.
    put(
        &t.path().join("tend"),
        &[("cgroup.controllers", "memory pids\n")],
    );
    let e = h.check_parent("tend/x").unwrap_err().to_string();
    let file = t.path().join("tend/cgroup.controllers");
    assert!(e.contains(&format!("cpu not in {}", file.display())), "{e}");

    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    h.check_parent("tend").unwrap();
    fs::remove_dir_all(t.path().join("pids")).unwrap();
    let h = probe_fake(t.path());
    let e = h.check_parent("tend").unwrap_err().to_string();
    assert!(e.contains("no pids hierarchy is mounted"), "{e}");
}

#[test]
fn v2_add_pid_and_join_self() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    cg.add_pid(Pid::from_raw(77)).unwrap();
    assert_eq!(read(t.path().join("tend/a/t/cgroup.procs")), "77");
    h.join_self("tend/spawn/a-t").unwrap();
    assert_eq!(read(t.path().join("tend/spawn/a-t/cgroup.procs")), "0");
}

#[test]
fn a_process_added_to_kill_joins_only_the_hierarchy_whose_kill_reaches_it() {
    let procs = |root: &Path, dir: &str| read(root.join(dir).join("tend/a/t/cgroup.procs"));
    // Hybrid with cgroup.kill: the cgroup2 dir alone.
    let t = tempfile::tempdir().unwrap();
    fake_hybrid(t.path());
    let cg = TaskCgroup::create(&probe_fake(t.path()), &spec("tend/a/t")).unwrap();
    cg.add_pid_to_kill(Pid::from_raw(77)).unwrap();
    assert_eq!(procs(t.path(), "unified"), "77");
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
        assert_eq!(procs(t.path(), c), "", "{c}");
    }
    // Hybrid on a kernel without cgroup.kill, and v1: the freezer alone.
    fs::remove_file(t.path().join("unified/tend/a/t/cgroup.kill")).unwrap();
    cg.add_pid_to_kill(Pid::from_raw(78)).unwrap();
    assert_eq!(procs(t.path(), "freezer"), "78");
    assert_eq!(procs(t.path(), "memory"), "");
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), true);
    let cg = TaskCgroup::create(&probe_fake(t.path()), &spec("tend/a/t")).unwrap();
    cg.add_pid_to_kill(Pid::from_raw(79)).unwrap();
    assert_eq!(procs(t.path(), "freezer"), "79");
    for c in ["memory", "cpu,cpuacct", "pids"] {
        assert_eq!(procs(t.path(), c), "", "{c}");
    }
    // v2: the one dir, where cgroup.freeze kills when cgroup.kill is missing.
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let cg = TaskCgroup::create(&probe_fake(t.path()), &spec("tend/a/t")).unwrap();
    fs::remove_file(t.path().join("tend/a/t/cgroup.kill")).unwrap();
    cg.add_pid_to_kill(Pid::from_raw(80)).unwrap();
    assert_eq!(procs(t.path(), ""), "80");
}

#[test]
fn v1_join_self_in_every_hierarchy() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), true);
    let h = probe_fake(t.path());
    h.join_self("tend-spawn/x").unwrap();
    for c in ["memory", "cpu,cpuacct", "pids", "freezer"] {
        let f = t.path().join(c).join("tend-spawn/x/cgroup.procs");
        assert_eq!(read(f), "0", "{c}");
    }
}

#[test]
fn leave_self_moves_to_the_root_and_removes_the_daemon_dir() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    let task = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    h.join_self("tend/a/t.tend-spawn").unwrap();
    // The fake kernel keeps what was written: clear it as a move would.
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
        fs::write(
            t.path().join(c).join("tend/a/t.tend-spawn/cgroup.procs"),
            "",
        )
        .unwrap();
    }
    h.leave_self("tend/a/t.tend-spawn").unwrap();
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
        assert_eq!(read(t.path().join(c).join("cgroup.procs")), "0", "{c}");
        assert!(
            !t.path().join(c).join("tend/a/t.tend-spawn").exists(),
            "{c}"
        );
        // The task's cgroup is still there, so its parent stays.
        assert!(t.path().join(c).join("tend/a/t").is_dir(), "{c}");
    }
    task.remove().unwrap();
    assert!(!t.path().join("memory/tend/a").exists());
    assert!(t.path().join("memory/tend").is_dir());
}

#[test]
fn the_shared_daemon_cgroup_is_joined_but_never_left_nor_removed() {
    assert!(Hierarchies::is_shared_daemon_path("tend/tend-spawn"));
    assert!(Hierarchies::is_shared_daemon_path("tend/1000/tend-spawn"));
    assert!(!Hierarchies::is_shared_daemon_path("tend/a/t.tend-spawn"));
    assert!(!Hierarchies::is_shared_daemon_path("tend/tend-spawn/x"));
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    let task = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    h.join_self("tend/tend-spawn").unwrap();
    h.leave_self("tend/tend-spawn").unwrap();
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
        let procs = t.path().join(c).join("tend/tend-spawn/cgroup.procs");
        assert_eq!(read(&procs), "0", "{c}: joined");
        // Not moved back to the root: the exit takes the daemon out.
        assert_ne!(read(t.path().join(c).join("cgroup.procs")), "0", "{c}");
    }
    task.remove().unwrap();
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
        assert!(!t.path().join(c).join("tend/a").exists(), "{c}");
        assert!(t.path().join(c).join("tend/tend-spawn").is_dir(), "{c}");
    }
}

#[test]
fn bad_paths_are_refused() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    for p in ["", "/abs", "a/../b", "a//b", "./a", "a/", "..", "a\0b"] {
        let e = TaskCgroup::open(&h, p).unwrap_err();
        assert!(matches!(e, CgroupError::BadPath { .. }), "{p:?}: {e}");
    }
}

/// The fake kernel, with every mkdir it is asked for written down.
#[derive(Debug)]
struct MkdirLog(std::sync::Mutex<Vec<PathBuf>>);

impl Tree for MkdirLog {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        self.0.lock().unwrap().push(path.to_path_buf());
        FakeKernel.mkdir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        FakeKernel.rmdir(path)
    }
}

#[test]
fn cgroup_dirs_are_made_leaf_first_and_the_shared_one_only_once() {
    static LOG: MkdirLog = MkdirLog(std::sync::Mutex::new(Vec::new()));
    let taken = || std::mem::take(&mut *LOG.0.lock().unwrap());
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = Hierarchies::probe(t.path()).unwrap().with_tree(&LOG);
    let rel = |p: &PathBuf| p.strip_prefix(t.path()).unwrap().to_path_buf();
    // Nothing there yet: up one level per ENOENT, then back down.
    TaskCgroup::create(&h, &spec("tend/a/t1")).unwrap();
    let asked: Vec<PathBuf> = taken().iter().map(rel).collect();
    let want: Vec<PathBuf> = ["tend/a/t1", "tend/a", "tend", "tend/a", "tend/a/t1"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(asked, want);
    // A second task of the alloc: its own dir, one mkdir.
    TaskCgroup::create(&h, &spec("tend/a/t2")).unwrap();
    assert_eq!(
        taken().iter().map(rel).collect::<Vec<_>>(),
        [PathBuf::from("tend/a/t2")]
    );
    // The shared daemon cgroup: made by the first daemon, then only joined.
    h.join_self("tend/tend-spawn").unwrap();
    assert_eq!(
        taken().iter().map(rel).collect::<Vec<_>>(),
        [PathBuf::from("tend/tend-spawn")]
    );
    h.join_self("tend/tend-spawn").unwrap();
    assert!(taken().is_empty(), "a mkdir for a cgroup that is there");
    assert_eq!(read(t.path().join("tend/tend-spawn/cgroup.procs")), "0");
}

//! A task's cgroup after create: OOM counter, usage, kill, remove, and the
//! errors that name the file.

use super::*;

#[test]
fn kill_once_on_an_empty_cgroup_does_nothing() {
    let t = tempfile::tempdir().unwrap();
    fake_hybrid(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    assert!(!cg.kill_once().unwrap());
    fs::write(
        t.path().join("memory/tend/a/t/cgroup.procs"),
        getpid().to_string(),
    )
    .unwrap();
    assert!(matches!(cg.kill_once(), Err(CgroupError::HoldsSelf { .. })));
}

#[test]
fn oom_counter_parsing() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), Some(0));
    let f = t.path().join("memory/tend/a/t/memory.oom_control");
    fs::write(&f, "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n").unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), Some(3));
    // An old kernel without the counter: unknown, not under_oom.
    fs::write(&f, "oom_kill_disable 0\nunder_oom 1\n").unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), None);
    fs::write(&f, "oom_kill lots\n").unwrap();
    let e = cg.oom_kill_count().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cgroup: parse {}: not a number: \"lots\"", f.display())
    );

    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let f = t.path().join("tend/a/t/memory.events");
    fs::write(
        &f,
        "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    .unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), Some(2));
    fs::remove_file(&f).unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), None);
}

#[test]
fn usage_parsing() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let d = |c: &str| t.path().join(c).join("tend/a/t");
    fs::write(d("memory").join("memory.usage_in_bytes"), "1048576\n").unwrap();
    fs::write(d("memory").join("memory.max_usage_in_bytes"), "2097152\n").unwrap();
    fs::write(d("cpuacct").join("cpuacct.usage"), "123456789\n").unwrap();
    fs::write(d("pids").join("pids.current"), "3\n").unwrap();
    assert_eq!(
        cg.usage().unwrap(),
        Usage {
            memory_bytes: Some(1_048_576),
            memory_peak_bytes: Some(2_097_152),
            cpu_usec: Some(123_456),
            pids: Some(3),
        }
    );

    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let d = t.path().join("tend/a/t");
    fs::write(d.join("memory.current"), "4096\n").unwrap();
    fs::remove_file(d.join("memory.peak")).unwrap(); // before 5.19
    fs::write(
        d.join("cpu.stat"),
        "usage_usec 777\nuser_usec 700\nsystem_usec 77\n",
    )
    .unwrap();
    fs::write(d.join("pids.current"), "1\n").unwrap();
    assert_eq!(
        cg.usage().unwrap(),
        Usage {
            memory_bytes: Some(4096),
            memory_peak_bytes: None,
            cpu_usec: Some(777),
            pids: Some(1),
        }
    );
}

#[test]
fn remove_takes_leaf_and_empty_parents_only() {
    for layout in ["v1", "v2", "hybrid"] {
        let t = tempfile::tempdir().unwrap();
        match layout {
            "v1" => fake_v1(t.path(), false),
            "v2" => fake_v2(t.path()),
            _ => fake_hybrid(t.path()),
        }
        let h = probe_fake(t.path());
        let t1 = TaskCgroup::create(&h, &spec("tend/a/t1")).unwrap();
        let t2 = TaskCgroup::create(&h, &spec("tend/a/t2")).unwrap();
        let dirs1: Vec<PathBuf> = t1.dirs().map(Path::to_path_buf).collect();
        t1.remove().unwrap();
        for d in &dirs1 {
            assert!(!d.exists(), "{layout}: {}", d.display());
            assert!(d.parent().unwrap().is_dir(), "{layout}: sibling keeps a");
        }
        t2.remove().unwrap();
        for d in &dirs1 {
            let alloc = d.parent().unwrap();
            assert!(!alloc.exists(), "{layout}: {}", alloc.display());
            assert!(alloc.parent().unwrap().is_dir(), "{layout}: never tend");
        }
        // Idempotent.
        t2.remove().unwrap();
    }
}

#[test]
fn remove_busy_leaf_names_it() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    cg.add_pid(Pid::from_raw(1234)).unwrap();
    let e = cg.remove().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cgroup: rmdir {}: Device or resource busy",
            t.path().join("tend/a/t").display()
        )
    );
}

#[test]
fn write_errors_name_the_path_and_keep_the_source() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    // The kernel would not offer this file: we must not create it.
    fs::remove_file(t.path().join("pids/pids.max")).unwrap();
    let h = probe_fake(t.path());
    let e = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap_err();
    let f = t.path().join("pids/tend/a/t/pids.max");
    assert_eq!(
        e.to_string(),
        format!("cgroup: write {}: No such file or directory", f.display())
    );
    let source = std::error::Error::source(&e).unwrap();
    let io = source.downcast_ref::<io::Error>().unwrap();
    assert_eq!(io.kind(), io::ErrorKind::NotFound);
    assert!(!f.exists());
    // The failed create removed what it made.
    assert!(!t.path().join("memory/tend/a").exists());
}

#[test]
fn kill_all_on_fake_trees() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    cg.kill_all().unwrap();
    // The freezer was not left frozen (empty cgroup: nothing to freeze).
    assert_eq!(
        read(t.path().join("freezer/tend/a/t/freezer.state")),
        "THAWED\n"
    );
    // Never kill ourselves.
    cg.add_pid(getpid()).unwrap();
    let e = cg.kill_all().unwrap_err();
    assert!(matches!(e, CgroupError::HoldsSelf { .. }), "{e}");
    // A cgroup that does not exist holds nothing.
    let gone = TaskCgroup::open(&h, "tend/never").unwrap();
    gone.kill_all().unwrap();
    gone.remove().unwrap();
}

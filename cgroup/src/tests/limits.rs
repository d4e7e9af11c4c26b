//! The limit files written on create, on v1, v2 and hybrid.

use super::*;

#[test]
fn v1_create_writes_limits_without_swap() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let d = |c: &str| t.path().join(c).join("tend/a/t");
    assert_eq!(read(d("memory").join("memory.limit_in_bytes")), "67108864");
    assert_eq!(
        read(d("memory").join("memory.memsw.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(read(d("cpu").join("cpu.shares")), "500");
    assert_eq!(read(d("pids").join("pids.max")), "64");
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
        assert!(d(c).is_dir(), "{c}");
    }
    assert!(!d("systemd").exists());
    assert_eq!(cg.dirs().count(), 5);

    // A limit left out is not written.
    let mut s = spec("tend/a/u");
    (s.memory_bytes, s.cpu_mhz, s.pids_max) = (None, None, None);
    TaskCgroup::create(&h, &s).unwrap();
    let u = t.path().join("memory/tend/a/u");
    assert_eq!(read(u.join("memory.limit_in_bytes")), UNLIMITED_V1);
}

#[test]
fn v1_memsw_order_and_absence() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    // memsw below the new limit: it must be raised first; both end equal.
    fs::write(
        t.path().join("memory/memory.memsw.limit_in_bytes"),
        "1000\n",
    )
    .unwrap();
    let h = probe_fake(t.path());
    TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let d = t.path().join("memory/tend/a/t");
    assert_eq!(read(d.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(read(d.join("memory.limit_in_bytes")), "67108864");

    // No swap accounting: only the limit, and no memsw file is made up.
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    fs::remove_file(t.path().join("memory/memory.memsw.limit_in_bytes")).unwrap();
    let h = probe_fake(t.path());
    TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let d = t.path().join("memory/tend/a/t");
    assert_eq!(read(d.join("memory.limit_in_bytes")), "67108864");
    assert!(!d.join("memory.memsw.limit_in_bytes").exists());
}

#[test]
fn v2_create_enables_controllers_and_writes_limits() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let leaf = t.path().join("tend/a/t");
    assert_eq!(cg.dirs().collect::<Vec<_>>(), vec![leaf.as_path()]);
    assert_eq!(read(leaf.join("memory.max")), "67108864");
    assert_eq!(read(leaf.join("memory.swap.max")), "0");
    assert_eq!(read(leaf.join("cpu.weight")), "19");
    assert_eq!(read(leaf.join("pids.max")), "64");
    for anc in ["", "tend", "tend/a"] {
        let f = t.path().join(anc).join("cgroup.subtree_control");
        assert_eq!(read(f), "+memory +pids +cpu +io", "{anc}");
    }
    assert_eq!(read(leaf.join("cgroup.subtree_control")), "");

    // Already enabled: nothing is written again.
    fs::write(
        t.path().join("cgroup.subtree_control"),
        "cpu io memory pids\n",
    )
    .unwrap();
    TaskCgroup::create(&h, &spec("tend/a/u")).unwrap();
    assert_eq!(
        read(t.path().join("cgroup.subtree_control")),
        "cpu io memory pids\n"
    );
}

fn spec_with_options(path: &str) -> CgroupSpec {
    let mut s = spec(path);
    s.options = CgroupOptions {
        memory_soft_bytes: Some(32 << 20),
        cpu_quota: Some(CpuQuota {
            quota_us: 25_000,
            period_us: 100_000,
        }),
        io_weight: Some(500),
        oom_kill_group: true,
    };
    s
}

#[test]
fn v2_options_write_low_cpu_max_io_weight_and_oom_group() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    put(
        t.path(),
        &[
            ("memory.low", "0\n"),
            ("memory.oom.group", "0\n"),
            ("cpu.max", "max 100000\n"),
            ("io.weight", "default 100\n"),
        ],
    );
    let h = probe_fake(t.path());
    TaskCgroup::create(&h, &spec_with_options("tend/a/t")).unwrap();
    let leaf = t.path().join("tend/a/t");
    assert_eq!(read(leaf.join("memory.max")), "67108864");
    assert_eq!(read(leaf.join("memory.low")), "33554432");
    assert_eq!(read(leaf.join("cpu.max")), "25000 100000");
    assert_eq!(read(leaf.join("io.weight")), "default 500");
    assert_eq!(read(leaf.join("memory.oom.group")), "1");
    for anc in ["", "tend", "tend/a"] {
        let f = t.path().join(anc).join("cgroup.subtree_control");
        assert_eq!(read(f), "+memory +pids +cpu +io", "{anc}");
    }
    // Without options none of them is touched; io is on all the same (the
    // task's io.stat).
    TaskCgroup::create(&h, &spec("tend/b/t")).unwrap();
    let leaf = t.path().join("tend/b/t");
    assert_eq!(read(leaf.join("memory.low")), "0\n");
    assert_eq!(read(leaf.join("memory.oom.group")), "0\n");
    assert_eq!(read(leaf.join("cpu.max")), "max 100000\n");
    assert_eq!(
        read(t.path().join("tend/b/cgroup.subtree_control")),
        "+memory +pids +cpu +io"
    );
}

#[test]
fn an_io_weight_without_a_weight_file_is_a_warning_not_a_failure() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let h = probe_fake(t.path());
    let mut s = spec("tend/a/t");
    s.options.io_weight = Some(500);
    TaskCgroup::create(&h, &s).unwrap();
    assert!(!t.path().join("tend/a/t/io.weight").exists());
}

#[test]
fn v1_options_write_soft_limit_cfs_quota_and_scaled_blkio_weight() {
    let t = tempfile::tempdir().unwrap();
    fake_v1(t.path(), false);
    put(
        &t.path().join("memory"),
        &[("memory.soft_limit_in_bytes", UNLIMITED_V1)],
    );
    put(
        &t.path().join("cpu"),
        &[
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ],
    );
    put(
        &t.path().join("blkio"),
        &[
            ("cgroup.procs", ""),
            ("tasks", ""),
            ("blkio.weight", "500\n"),
        ],
    );
    let h = probe_fake(t.path());
    TaskCgroup::create(&h, &spec_with_options("tend/a/t")).unwrap();
    let d = |c: &str| t.path().join(c).join("tend/a/t");
    assert_eq!(read(d("memory").join("memory.limit_in_bytes")), "67108864");
    assert_eq!(
        read(d("memory").join("memory.soft_limit_in_bytes")),
        "33554432"
    );
    assert_eq!(read(d("cpu").join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(d("cpu").join("cpu.cfs_quota_us")), "25000");
    assert_eq!(read(d("blkio").join("blkio.weight")), "59");
}

#[test]
fn blkio_weight_scales_onto_10_to_1000() {
    assert_eq!(blkio_weight(1), 10);
    assert_eq!(blkio_weight(100), 19);
    assert_eq!(blkio_weight(10_000), 1000);
    assert_eq!(blkio_weight(0), 10);
}

#[test]
fn dirs_made_under_umask_077_are_0755_and_dirs_already_there_are_left_alone() {
    // Setuid mode's umask: without the chmod the caller could not reach
    // the kill files chowned to it (each test is its own process).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    let h = probe_fake(t.path());
    TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    let mode = |p: &str| fs::metadata(t.path().join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("tend"), 0o755);
    assert_eq!(mode("tend/a"), 0o755);
    assert_eq!(mode("tend/a/t"), 0o755);
    fs::set_permissions(t.path().join("tend"), fs::Permissions::from_mode(0o711)).unwrap();
    TaskCgroup::create(&h, &spec("tend/b/t")).unwrap();
    assert_eq!(mode("tend/b/t"), 0o755);
    assert_eq!(mode("tend"), 0o711);
}

#[test]
fn v2_missing_controller_fails_and_cleans_up() {
    let t = tempfile::tempdir().unwrap();
    fake_v2(t.path());
    fs::write(t.path().join("cgroup.controllers"), "memory pids\n").unwrap();
    let h = probe_fake(t.path());
    let e = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::ControllerMissing {
                controller: "cpu",
                ..
            }
        ),
        "{e}"
    );
    assert!(!t.path().join("tend/a").exists());
    assert!(t.path().join("tend").is_dir());
}

#[test]
fn cpu_shares_and_runc_weight() {
    assert_eq!(cpu_shares(0), 2);
    assert_eq!(cpu_shares(1), 2);
    assert_eq!(cpu_shares(500), 500);
    assert_eq!(cpu_shares(1 << 40), 262_144);
    assert_eq!(cpu_weight(2), 1);
    assert_eq!(cpu_weight(1024), 39);
    assert_eq!(cpu_weight(262_144), 10_000);
    assert_eq!(cpu_weight(500), 19);
    assert_eq!(cpu_weight(0), 1);
    assert_eq!(cpu_weight(u64::MAX), 10_000);
}

#[test]
fn hybrid_limits_in_v1_membership_in_both() {
    let t = tempfile::tempdir().unwrap();
    fake_hybrid(t.path());
    let h = probe_fake(t.path());
    let cg = TaskCgroup::create(&h, &spec("tend/a/t")).unwrap();
    assert_eq!(
        read(t.path().join("memory/tend/a/t/memory.limit_in_bytes")),
        "67108864"
    );
    let unified = t.path().join("unified/tend/a/t");
    assert!(unified.is_dir());
    // No controllers there: nothing enabled.
    assert_eq!(read(t.path().join("unified/cgroup.subtree_control")), "");
    cg.add_pid(Pid::from_raw(4242)).unwrap();
    for c in ["memory", "cpu", "cpuacct", "pids", "freezer", "unified"] {
        let f = t.path().join(c).join("tend/a/t/cgroup.procs");
        assert_eq!(read(f), "4242", "{c}");
    }
    assert_eq!(cg.pids().unwrap(), vec![Pid::from_raw(4242)]);
}

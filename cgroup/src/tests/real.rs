//! Real cgroups, as root.

use super::*;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Removes everything under the test's own top dir, in every hierarchy,
/// even when the test failed halfway.
struct RealGuard {
    hier: Hierarchies,
    top: String,
}

impl RealGuard {
    fn new() -> Option<RealGuard> {
        if !tend_sys::test_have_root() {
            return None;
        }
        let hier = Hierarchies::detect().expect("detect cgroups");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let top = format!("tend-test-{}-{n}", std::process::id());
        Some(RealGuard { hier, top })
    }

    fn path(&self, rest: &str) -> String {
        format!("{}/{rest}", self.top)
    }

    fn mounts(&self) -> BTreeSet<PathBuf> {
        self.hier
            .v1
            .values()
            .chain(self.hier.unified.iter())
            .cloned()
            .collect()
    }
}

fn clean_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            clean_tree(&e.path());
        }
    }
    let me = getpid();
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
        if Pid::from_raw(pid) != me {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Err(e) = fs::remove_dir(dir) {
        if Instant::now() > deadline {
            eprintln!("test cleanup: rmdir {}: {e}", dir.display());
            break;
        }
        sleep(Duration::from_millis(20));
    }
}

impl Drop for RealGuard {
    fn drop(&mut self) {
        for m in self.mounts() {
            clean_tree(&m.join(&self.top));
        }
    }
}

fn proc_cgroup_paths(pid: u32) -> Vec<(String, String)> {
    read(format!("/proc/{pid}/cgroup"))
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctl.to_string(), path.to_string()))
        })
        .collect()
}

fn pid_of(child: &std::process::Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap())
}

#[test]
fn real_limits_membership_kill_remove() {
    let Some(g) = RealGuard::new() else { return };
    let rel = g.path("a/t");
    let cg = TaskCgroup::create(&g.hier, &spec(&rel)).unwrap();
    match g.hier.mode() {
        Mode::V1 | Mode::Hybrid => {
            let mem = g.hier.v1_mount(Controller::Memory).unwrap().join(&rel);
            assert_eq!(read(mem.join("memory.limit_in_bytes")).trim(), "67108864");
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                assert_eq!(read(memsw).trim(), "67108864");
            }
            let cpu = g.hier.v1_mount(Controller::Cpu).unwrap().join(&rel);
            assert_eq!(read(cpu.join("cpu.shares")).trim(), "500");
            let pids = g.hier.v1_mount(Controller::Pids).unwrap().join(&rel);
            assert_eq!(read(pids.join("pids.max")).trim(), "64");
        }
        Mode::V2 => {
            let d = g.hier.unified_mount().unwrap().join(&rel);
            assert_eq!(read(d.join("memory.max")).trim(), "67108864");
            assert_eq!(read(d.join("cpu.weight")).trim(), "19");
            assert_eq!(read(d.join("pids.max")).trim(), "64");
        }
    }

    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    cg.add_pid(pid_of(&child)).unwrap();
    let want = format!("/{rel}");
    let paths = proc_cgroup_paths(child.id());
    for (ctl, path) in &paths {
        let ours = ctl.is_empty() && g.hier.unified_mount().is_some()
            || ctl
                .split(',')
                .any(|c| matches!(c, "memory" | "cpu" | "cpuacct" | "pids" | "freezer"));
        if ours {
            assert_eq!(path, &want, "controller {ctl:?}");
        }
    }
    assert_eq!(cg.pids().unwrap(), vec![pid_of(&child)]);
    let u = cg.usage().unwrap();
    assert_eq!(u.pids, Some(1));
    assert!(u.memory_bytes.is_some() && u.cpu_usec.is_some(), "{u:?}");
    assert_eq!(cg.oom_kill_count().unwrap(), Some(0));

    cg.kill_all().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(cg.pids().unwrap().is_empty());
    cg.remove().unwrap();
    for m in g.mounts() {
        assert!(!m.join(&rel).exists(), "{}", m.join(&rel).display());
        assert!(!m.join(g.path("a")).exists());
        assert!(m.join(&g.top).is_dir(), "the top stays");
    }
}

#[test]
fn real_kill_all_with_freezer_gets_forked_children() {
    let Some(g) = RealGuard::new() else { return };
    let rel = g.path("a/fork");
    let cg = TaskCgroup::create(&g.hier, &spec(&rel)).unwrap();
    // The shell waits on stdin, so its children are born inside the cgroup.
    let mut child = Command::new("/bin/sh")
        .args(["-c", "read _; sleep 30 & sleep 30 & wait"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    cg.add_pid(pid_of(&child)).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cg.pids().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "children never appeared");
        sleep(Duration::from_millis(10));
    }
    // The path without cgroup.kill: freeze, kill, thaw.
    cg.kill_all_with(false).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(cg.pids().unwrap().is_empty());
    cg.remove().unwrap();
}

#[test]
fn real_oom_kill_is_counted() {
    let Some(g) = RealGuard::new() else { return };
    let mut s = spec(&g.path("a/oom"));
    s.memory_bytes = Some(32 << 20);
    let cg = TaskCgroup::create(&g.hier, &s).unwrap();
    assert_eq!(cg.oom_kill_count().unwrap(), Some(0));
    // Holds ~200 MB in a shell variable, once it is inside the cgroup.
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "read _; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    cg.add_pid(pid_of(&child)).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let n = cg.oom_kill_count().unwrap().expect("oom_kill counter");
    assert!(n >= 1, "oom_kill {n}");
    cg.kill_all().unwrap();
    cg.remove().unwrap();
}

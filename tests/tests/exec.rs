//! End-to-end tests of the exec driver as root: tend-spawn driven through
//! tend-proto with the SpawnConfig the agent builds for `driver = "exec"`
//! (user nobody, the default chroot_env, a cgroup with limits), and `tend run`
//! of exec job files. Every check is made from inside the task, or on the host
//! where the task cannot lie (cgroup files, mountinfo, /proc).
//!
//! As a normal user each test prints "skipped: needs root" and passes (and
//! fails under `CI=true`).
//!
//! Cgroups live under a parent unique to the test process
//! (`tend-test-<pid>-<n>`); its guard kills and removes whatever is left there
//! even when a test fails. The Sandbox kills every process holding its dirs.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tend_proto::config::{Bind, CgroupSpec, ChrootSpec, ConfigExtra, Isolation, Mount, MountKind};
use tend_proto::msg::TaskState;
use tend_proto::{ExitStatus, Request, Response, SpawnConfig, Stage};
use tend_tests::{pid_alive, require_root, wait_until, Client, Sandbox};

const LONG: Duration = Duration::from_secs(30);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const MB: u64 = 1024 * 1024;

use tend_tests::CgroupParent;

/// Numbers the job and output files of this process.
static FILES: AtomicU32 = AtomicU32::new(0);

/// The dir holding memory files of a cgroup path, and the name of its limit file.
fn memory_limit_file(rel: &str) -> PathBuf {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").is_file() {
        root.join(rel).join("memory.max")
    } else {
        root.join("memory").join(rel).join("memory.limit_in_bytes")
    }
}

fn pids_dir(rel: &str) -> PathBuf {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").is_file() {
        root.join(rel)
    } else {
        root.join("pids").join(rel)
    }
}

/// The default chroot_env of this host, as binds.
fn default_binds() -> Vec<Bind> {
    tend::driver::spawn::config::default_chroot_env()
        .into_iter()
        .map(|(source, target)| Bind { source, target })
        .collect()
}

/// An exec-like config: what the agent builds for `driver = "exec"` (user
/// nobody, the default chroot_env, cwd /, a cgroup with memory, cpu and pids
/// limits), with the alloc dir prepared as the agent prepares it.
fn exec_config(sb: &Sandbox, parent: &CgroupParent, task: &str, script: &str) -> SpawnConfig {
    let mut cfg = sb.config(task, "/bin/sh", &["-c", script]);
    make_exec(&mut cfg, parent, default_binds());
    cfg
}

fn make_exec(cfg: &mut SpawnConfig, parent: &CgroupParent, binds: Vec<Bind>) {
    cfg.cwd = "/".into();
    cfg.env = vec![
        ("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into()),
        ("TEND_ALLOC_DIR".into(), "/alloc".into()),
        ("TEND_TASK_DIR".into(), "/local".into()),
    ];
    cfg.isolation = Some(Isolation {
        ids: None,
        user: "nobody".into(),
        chroot: Some(ChrootSpec { binds }),
    });
    cfg.cgroup = Some(CgroupSpec {
        path: format!("{}/{}/{}", parent.name, cfg.alloc_id, cfg.task),
        daemon_path: Some(format!(
            "{}/{}/{}.tend-spawn",
            parent.name, cfg.alloc_id, cfg.task
        )),
        memory_bytes: Some(64 * MB),
        cpu_mhz: Some(100),
        pids_max: Some(64),
        options: Default::default(),
    });
    prepare_alloc(cfg);
}

fn prepare_alloc(cfg: &SpawnConfig) {
    let alloc = tend::paths::AllocDir {
        root: cfg.alloc_dir(),
    };
    alloc.create(&[&cfg.task]).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    alloc
        .prepare_for_user(&cfg.task, nobody.uid.as_raw(), nobody.gid.as_raw())
        .unwrap();
    // The sandbox's data dir is a 0700 temp dir; the task's user must walk it
    // to reach nothing: its dirs are bound into its root. 0755 like /var/lib.
    let mut p = cfg.alloc_dir();
    while p.pop() {
        if p.as_os_str().len() <= "/tmp".len() {
            break;
        }
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
    }
}

fn task_cgroup(cfg: &SpawnConfig) -> String {
    cfg.cgroup.as_ref().unwrap().path.clone()
}

fn daemon_cgroup(cfg: &SpawnConfig) -> String {
    cfg.cgroup.as_ref().unwrap().daemon_path.clone().unwrap()
}

/// The host's mounts under the sandbox's dirs or the tasks' cgroups, as lines
/// without the mount ids (other mounts come and go with other work on a shared
/// host: docker's, for one).
fn host_mounts(sb: &Sandbox) -> BTreeSet<String> {
    let data = sb.data_dir().to_str().unwrap().to_string();
    let run = sb.run_dir().to_str().unwrap().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&data) || l.contains(&run) || l.contains("tend-test-"))
        .filter(|l| !l.contains("tend-test-docker"))
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect()
}

fn no_mount_of(sb: &Sandbox) {
    let data = sb.data_dir().to_str().unwrap().to_string();
    let m = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !m.contains(&data),
        "a mount of the task shows on the host:\n{m}"
    );
}

fn out(cfg: &SpawnConfig) -> String {
    fs::read_to_string(Sandbox::log_path(cfg, "stdout")).unwrap_or_default()
}

fn err(cfg: &SpawnConfig) -> String {
    fs::read_to_string(Sandbox::log_path(cfg, "stderr")).unwrap_or_default()
}

/// Wait for the exit over the socket, release the daemon, and check that
/// nothing of the task is left: no cgroup dir (task's or daemon's), no mount,
/// no process holding the sandbox, the daemon gone.
fn finish(sb: &Sandbox, cfg: &SpawnConfig, daemon_pid: i32, c: &mut Client) -> ExitStatus {
    let exit = c.wait_exit_within(LONG);
    let released = c.request(Request::Release);
    assert_eq!(released, Response::Ok);
    assert_clean(sb, cfg, daemon_pid);
    exit
}

fn assert_clean(sb: &Sandbox, cfg: &SpawnConfig, daemon_pid: i32) {
    assert!(
        wait_until(LONG, || !pid_alive(daemon_pid)),
        "daemon {daemon_pid} still alive"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !CgroupParent::exists(
            &task_cgroup(cfg)
        )),
        "task cgroup {} left: {:?}",
        task_cgroup(cfg),
        CgroupParent::dirs_under(&task_cgroup(cfg))
    );
    assert!(
        wait_until(Duration::from_secs(5), || !CgroupParent::exists(
            &daemon_cgroup(cfg)
        )),
        "daemon cgroup {} left",
        daemon_cgroup(cfg)
    );
    // The alloc's cgroup dir goes with its last task.
    let alloc_cg = format!(
        "{}/{}",
        task_cgroup(cfg).split('/').next().unwrap(),
        cfg.alloc_id
    );
    assert!(
        wait_until(Duration::from_secs(5), || !CgroupParent::exists(&alloc_cg)),
        "alloc cgroup {alloc_cg} left"
    );
    no_mount_of(sb);
    let left = sb.pids_inside();
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// Nothing is left under the alloc's cgroup dir (the test parent itself stays:
/// tend-spawn never removes the first component of a cgroup path).
fn alloc_cgroup_gone(parent: &CgroupParent, cfg: &SpawnConfig) {
    let alloc_cg = format!("{}/{}", parent.name, cfg.alloc_id);
    assert!(
        wait_until(Duration::from_secs(5), || !CgroupParent::exists(&alloc_cg)),
        "{:?}",
        CgroupParent::dirs_under(&alloc_cg)
    );
}

fn status_field(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn assert_unprivileged(status: &str) {
    assert_eq!(status_field(status, "Uid"), ["65534"; 4], "{status}");
    assert_eq!(status_field(status, "Gid"), ["65534"; 4], "{status}");
    assert!(status_field(status, "Groups").is_empty(), "{status}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            status_field(status, cap),
            ["0000000000000000"],
            "{cap}: {status}"
        );
    }
    assert_eq!(status_field(status, "NoNewPrivs"), ["1"], "{status}");
}

fn nobody_is_65534() -> bool {
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .is_some_and(|u| u.uid.as_raw() == 65534 && u.gid.as_raw() == 65534)
}

#[test]
fn inside_an_exec_task_user_caps_cgroup_and_limit_are_as_configured() {
    require_root!();
    assert!(
        nobody_is_65534(),
        "this test expects nobody to be 65534:65534"
    );
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mounts_before = host_mounts(&sb);
    let cfg = exec_config(
        &sb,
        &parent,
        "t",
        "cat /proc/self/status; echo ---; cat /proc/self/cgroup; echo ---; \
         echo TEND_ALLOC_DIR=$TEND_ALLOC_DIR TEND_TASK_DIR=$TEND_TASK_DIR; sleep 0.5",
    );
    let (daemon_pid, task_pid, _) = sb.start(&cfg).pids();
    // Read from the host while it runs: the limit, and who is in which cgroup.
    let limit = fs::read_to_string(memory_limit_file(&task_cgroup(&cfg))).unwrap();
    assert_eq!(limit.trim(), (64 * MB).to_string());
    let pids_max = fs::read_to_string(pids_dir(&task_cgroup(&cfg)).join("pids.max")).unwrap();
    assert_eq!(pids_max.trim(), "64");
    let procs = fs::read_to_string(pids_dir(&task_cgroup(&cfg)).join("cgroup.procs")).unwrap();
    assert!(
        procs.split_whitespace().any(|p| p == task_pid.to_string()),
        "{procs}"
    );
    assert!(
        !procs
            .split_whitespace()
            .any(|p| p == daemon_pid.to_string()),
        "{procs}"
    );
    let own = fs::read_to_string(format!("/proc/{daemon_pid}/cgroup")).unwrap();
    for line in own
        .lines()
        .filter(|l| l.contains(":memory:") || l.contains(":pids:"))
    {
        assert!(
            line.ends_with(&format!(":/{}", daemon_cgroup(&cfg))),
            "{own}"
        );
    }
    no_mount_of(&sb);
    let mut c = Client::connect(&cfg);
    match c.request(Request::Stats) {
        Response::Stats(s) => {
            assert!(s.memory_bytes.is_some_and(|m| m > 0), "{s:?}");
            assert!(s.pids.is_some_and(|p| p >= 1), "{s:?}");
            assert!(s.cpu_usage_us.is_some(), "{s:?}");
        }
        other => panic!("{other:?}"),
    }
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    let text = out(&cfg);
    assert_eq!(exit.exit_code, Some(0), "{text}{}", err(&cfg));
    assert!(!exit.oom_killed);
    let mut parts = text.split("---\n");
    let status = parts.next().unwrap();
    assert_unprivileged(status);
    let cgroups = parts.next().unwrap();
    let want = format!(":/{}", task_cgroup(&cfg));
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":memory:") && l.ends_with(&want))
            || cgroups
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&want)),
        "{cgroups}"
    );
    assert!(
        parts
            .next()
            .unwrap()
            .contains("TEND_ALLOC_DIR=/alloc TEND_TASK_DIR=/local"),
        "{text}"
    );
    assert_eq!(host_mounts(&sb), mounts_before);
}

#[test]
fn a_task_past_its_memory_limit_is_oom_killed_and_a_stopped_one_is_not() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    // dd really holds a 64 MB buffer: RSS grows past the 32 MB limit.
    let mut cfg = exec_config(
        &sb,
        &parent,
        "t",
        "exec dd if=/dev/zero of=/dev/null bs=64M count=4",
    );
    cfg.cgroup.as_mut().unwrap().memory_bytes = Some(32 * MB);
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    assert_eq!(exit.signal, Some(9), "{exit:?} {}", err(&cfg));
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.oom_kills, 1, "{exit:?}");
    assert_eq!(Sandbox::wait_exit_file(&cfg, LONG), exit);

    // SIGKILL from a Stop is no OOM.
    let cfg = exec_config(&sb, &parent, "u", "exec sleep 100");
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    assert_eq!(
        c.request(Request::Stop {
            signal: 9,
            grace_ms: 1000
        }),
        Response::Ok
    );
    let exit = c.recv_exit();
    assert_eq!(exit.signal, Some(9));
    assert!(!exit.oom_killed, "{exit:?}");
    assert_eq!(exit.oom_kills, 0, "{exit:?}");
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert_clean(&sb, &cfg, daemon_pid);
}

/// A child of the task is killed for memory; the task lives on and exits 137
/// itself: not `oom_killed` (the task did not die of it), but the kill is
/// counted in `oom_kills`, in the exit event and in the exit file.
const CHILD_OOM_SCRIPT: &str = "dd if=/dev/zero of=/dev/null bs=64M count=1; exit 137";

#[test]
fn a_childs_oom_kill_is_counted_though_the_task_survived_it() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mut cfg = exec_config(&sb, &parent, "t", CHILD_OOM_SCRIPT);
    cfg.cgroup.as_mut().unwrap().memory_bytes = Some(32 * MB);
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    assert_eq!(exit.exit_code, Some(137), "{exit:?} {}", err(&cfg));
    assert!(!exit.oom_killed, "{exit:?}");
    assert_eq!(exit.oom_kills, 1, "{exit:?}");
    let text = fs::read_to_string(Sandbox::exit_path(&cfg)).unwrap();
    assert!(text.contains("\"oom_kills\": 1,"), "{text}");
    assert_eq!(Sandbox::wait_exit_file(&cfg, LONG), exit);
}

/// The same task under the agent: `tend status ALLOC` says a process of it was
/// killed for memory, and `--json` carries the count.
#[test]
fn tend_status_tells_of_a_childs_oom_kill() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let agent = tend_tests::AgentProc::start_with_config(
        &sb,
        &format!("cgroup_parent = \"{}\"\n", parent.name),
    );
    let args = serde_json::to_string(&["-c", CHILD_OOM_SCRIPT]).unwrap();
    let job = format!(
        "job \"j\" {{\n  group \"g\" {{\n    restart {{\n      attempts = 0\n      mode = \"fail\"\n    }}\n    task \"t\" {{\n      driver = \"exec\"\n      config {{\n        command = \"/bin/sh\"\n        args = {args}\n      }}\n      resources {{\n        memory = 32\n      }}\n    }}\n  }}\n}}\n"
    );
    let file = sb.write_job("oom.hcl", &job);
    let out = agent.cli(&["run", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alloc = v["allocations"][0].as_str().unwrap().to_string();
    let mut task = serde_json::Value::Null;
    let ended = wait_until(LONG, || {
        let a = agent.get_json(&format!("/v1/allocations/{alloc}"));
        task = a["tasks"][0].clone();
        !task["exit"].is_null()
    });
    assert!(ended, "{task:#}\n{}", agent.log());
    assert_eq!(task["exit"]["exit_code"], 137, "{task:#}");
    assert_eq!(task["exit"]["oom_killed"], false, "{task:#}");

    let out = agent.cli(&["status", &alloc]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("t: a process of this task was killed for memory (1 OOM kill)"),
        "{text}"
    );
    let out = agent.cli(&["status", &alloc, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"][0]["exit"]["oom_kills"], 1, "{v:#}");
    drop(agent);
}

#[test]
fn a_fork_bomb_is_held_at_pids_max_and_the_stop_leaves_nothing() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    // Every process forks again and again; a failed fork is retried, so the
    // bomb does not die out at the limit (dash gives up at its first failure).
    let bomb = "import os, time\n\
                while True:\n    \
                    try:\n        os.fork()\n    \
                    except OSError:\n        time.sleep(0.001)\n";
    let mut cfg = sb.config("t", "/usr/bin/python3", &["-c", bomb]);
    make_exec(&mut cfg, &parent, default_binds());
    cfg.cgroup.as_mut().unwrap().pids_max = Some(32);
    // Room for 32 interpreters: the limit that holds here is pids.max.
    cfg.cgroup.as_mut().unwrap().memory_bytes = Some(512 * MB);
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let current = pids_dir(&task_cgroup(&cfg)).join("pids.current");
    let read_current = || {
        fs::read_to_string(&current)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut max_seen = 0;
    let t0 = Instant::now();
    let mut host_ok = true;
    // Two seconds at the limit, however long the interpreters take to get
    // there (a slow or loaded host, a user-mode kernel).
    let mut at_limit: Option<Instant> = None;
    while at_limit.is_none_or(|t| t.elapsed() < Duration::from_secs(2))
        && t0.elapsed() < Duration::from_secs(60)
    {
        max_seen = max_seen.max(read_current());
        if max_seen >= 32 {
            at_limit.get_or_insert_with(Instant::now);
        }
        // The host stays responsive: a process starts and ends at once.
        let s = Instant::now();
        host_ok &= Command::new("/bin/true").status().unwrap().success();
        // Loosely bounded: a loaded or user-mode kernel is slow, a held
        // bomb does not stop the host.
        assert!(s.elapsed() < Duration::from_secs(10), "{:?}", s.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host_ok);
    let memory = memory_limit_file(&task_cgroup(&cfg));
    let memory = memory.parent().unwrap();
    let diag = format!(
        "pids.events {:?} memory.failcnt {:?} max_usage {:?} stderr {}",
        fs::read_to_string(pids_dir(&task_cgroup(&cfg)).join("pids.events")),
        fs::read_to_string(memory.join("memory.failcnt")),
        fs::read_to_string(memory.join("memory.max_usage_in_bytes")),
        err(&cfg).chars().take(2000).collect::<String>()
    );
    assert_eq!(max_seen, 32, "pids.current peaked at {max_seen}; {diag}");
    let events = pids_dir(&task_cgroup(&cfg)).join("pids.events");
    if let Ok(ev) = fs::read_to_string(&events) {
        assert!(!ev.contains("max 0"), "{ev}");
    }
    let members: Vec<i32> = fs::read_to_string(pids_dir(&task_cgroup(&cfg)).join("cgroup.procs"))
        .unwrap()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(members.len() >= 30, "{members:?}");
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    assert_eq!(
        c.request(Request::Stop {
            signal: 15,
            grace_ms: 300
        }),
        Response::Ok
    );
    c.stream.set_read_timeout(Some(LONG)).unwrap();
    let exit = c.recv_exit();
    assert!(exit.signal.is_some(), "{exit:?}");
    for p in &members {
        assert!(!pid_alive(*p), "{p} survived the stop");
    }
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert_clean(&sb, &cfg, daemon_pid);
}

#[test]
fn the_task_sees_only_its_root_and_tasks_of_an_alloc_share_alloc() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let cfg = exec_config(
        &sb,
        &parent,
        "a",
        "if ls /root >/dev/null 2>&1; then echo ROOT-READABLE; else echo ROOT-DENIED; fi; \
         if touch /bin/tend-probe 2>/dev/null; then echo BIN-RW; else echo BIN-RO; fi; \
         echo mine > /local/f && echo LOCAL-RW; \
         echo from-a > /alloc/shared && echo ALLOC-RW",
    );
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    let text = out(&cfg);
    assert_eq!(exit.exit_code, Some(0), "{text}{}", err(&cfg));
    for want in ["ROOT-DENIED", "BIN-RO", "LOCAL-RW", "ALLOC-RW"] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
    assert!(!Path::new("/bin/tend-probe").exists());
    assert_eq!(
        fs::read_to_string(cfg.task_root().join("local/f")).unwrap(),
        "mine\n"
    );

    // A second task of the same alloc sees the first one's file, and not its /local.
    let mut cfg2 = sb.config("b", "/bin/sh", &["-c", "cat /alloc/shared; ls /local"]);
    cfg2.alloc_id = cfg.alloc_id.clone();
    cfg2.alloc_dir = cfg.alloc_dir.clone();
    make_exec(&mut cfg2, &parent, default_binds());
    let (daemon_pid, _, _) = sb.start(&cfg2).pids();
    let mut c = Client::connect(&cfg2);
    let exit = finish(&sb, &cfg2, daemon_pid, &mut c);
    assert_eq!(exit.exit_code, Some(0), "{}", err(&cfg2));
    assert_eq!(out(&cfg2), "from-a\n");
}

#[test]
fn a_double_forked_daemon_is_killed_on_stop() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let cfg = exec_config(
        &sb,
        &parent,
        "t",
        "(setsid sleep 300 </dev/null >/dev/null 2>&1 &) ; echo started; sleep 300",
    );
    let (daemon_pid, task_pid, _) = sb.start(&cfg).pids();
    assert!(wait_until(LONG, || out(&cfg).contains("started")));
    let procs = pids_dir(&task_cgroup(&cfg)).join("cgroup.procs");
    // Until the setsid'd sleep has left the task's process group (the
    // subshell forks before setsid runs): it is still in the task's cgroup.
    let mut members: Vec<i32> = Vec::new();
    let escaped = |members: &[i32]| -> Vec<i32> {
        members
            .iter()
            .copied()
            .filter(|p| {
                nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*p)))
                    .is_ok_and(|g| g.as_raw() != task_pid)
            })
            .collect()
    };
    let found = wait_until(LONG, || {
        members = fs::read_to_string(&procs)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        !escaped(&members).is_empty()
    });
    assert!(
        found,
        "no member outside the task's process group: {members:?}"
    );
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    assert_eq!(
        c.request(Request::Stop {
            signal: 15,
            grace_ms: 2000
        }),
        Response::Ok
    );
    let e = c.recv_exit();
    assert_eq!(e.signal, Some(15), "{e:?}");
    for p in members {
        assert!(!pid_alive(p), "{p} survived the stop");
    }
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert_clean(&sb, &cfg, daemon_pid);
}

#[test]
fn a_cgroup_without_isolation_works_for_raw_exec() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/sh", &["-c", "cat /proc/self/cgroup; id -u"]);
    cfg.cgroup = Some(CgroupSpec {
        path: format!("{}/{}/t", parent.name, cfg.alloc_id),
        daemon_path: Some(format!("{}/{}/t.tend-spawn", parent.name, cfg.alloc_id)),
        memory_bytes: Some(128 * MB),
        cpu_mhz: None,
        pids_max: None,
        options: Default::default(),
    });
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    let text = out(&cfg);
    assert_eq!(exit.exit_code, Some(0), "{text}{}", err(&cfg));
    assert!(
        text.contains(&format!(":/{}\n", task_cgroup(&cfg))),
        "{text}"
    );
    assert!(text.ends_with("0\n"), "{text}");
}

#[test]
fn tend_spawn_refuses_an_unknown_user_and_starts_nothing() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mut cfg = exec_config(&sb, &parent, "t", "true");
    cfg.isolation.as_mut().unwrap().user = "no-such-user-tend".into();
    let spawned = sb.start(&cfg);
    assert_eq!(spawned.exit_code, Some(1));
    let (stage, _, message) = spawned.failure();
    assert_eq!(stage, Stage::User);
    assert_eq!(message, "user no-such-user-tend: no such user");
    assert!(CgroupParent::dirs_under(&parent.name).is_empty());
    no_mount_of(&sb);
    assert!(sb.pids_inside().is_empty());
}

#[test]
fn planted_symlinks_in_the_task_dir_never_reach_the_host() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().unwrap();
    // A previous run (as root) left /dev and /usr as links to a host dir: the
    // root is a fresh tmpfs over the task dir, so they are never followed and
    // the task sees the real /usr.
    let cfg = exec_config(
        &sb,
        &parent,
        "t",
        "test -x /usr/bin/env && test -c /dev/null && ! touch /x 2>/dev/null && echo ok",
    );
    let root = cfg.task_root();
    fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("dev")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("usr")).unwrap();
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    assert_eq!(exit.exit_code, Some(0), "{}{}", out(&cfg), err(&cfg));
    assert_eq!(out(&cfg).trim(), "ok");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    // The host's task dir holds what was there and local/, no mount point.
    let mut left: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["dev", "local", "usr"]);
    assert!(fs::symlink_metadata(root.join("usr")).unwrap().is_symlink());
    no_mount_of(&sb);

    // /local itself a link to a host dir: the start is refused and names it.
    let cfg = exec_config(&sb, &parent, "u", "true");
    let root = cfg.task_root();
    fs::create_dir_all(&root).unwrap();
    let _ = fs::remove_dir_all(root.join("local"));
    std::os::unix::fs::symlink(outside.path(), root.join("local")).unwrap();
    let spawned = sb.start(&cfg);
    let (stage, errno, message) = spawned.failure();
    assert_eq!(stage, Stage::Mount, "{message}");
    assert!(errno != 0, "{message}");
    assert!(
        message.contains(root.join("local").to_str().unwrap()),
        "{message}"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    assert_eq!(exit.error.as_deref(), Some(message.as_str()));
    assert!(wait_until(LONG, || sb.pids_inside().is_empty()));
    alloc_cgroup_gone(&parent, &cfg);
    no_mount_of(&sb);
}

/// A config's mount whose target passes through a link a previous run left
/// in /local fails the start at that mount; nothing is made or mounted
/// outside the root.
#[test]
fn an_extra_mount_through_a_link_planted_in_local_fails_the_start() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().unwrap();
    let mut cfg = exec_config(&sb, &parent, "t", "true");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let iso = cfg.isolation.as_mut().unwrap();
    iso.ids = Some(tend_proto::config::TaskIds {
        uid: nobody.uid.as_raw(),
        gid: nobody.gid.as_raw(),
    });
    cfg.extras = vec![ConfigExtra::Mounts(vec![Mount {
        target: "/local/evil/x".into(),
        kind: MountKind::Tmpfs {
            size_bytes: Some(1 << 20),
            mode: None,
        },
        read_only: false,
        nosuid: true,
        nodev: true,
        noexec: true,
    }])];
    let local = cfg.task_root().join("local");
    fs::create_dir_all(&local).unwrap();
    std::os::unix::fs::symlink(outside.path(), local.join("evil")).unwrap();
    let spawned = sb.start(&cfg);
    let (stage, errno, message) = spawned.failure();
    assert_eq!(stage, Stage::Mount, "{message}");
    assert_eq!(errno, nix::errno::Errno::ELOOP as i32, "{message}");
    assert!(
        message.starts_with("mount tmpfs on /local/evil/x in "),
        "{message}"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(wait_until(LONG, || sb.pids_inside().is_empty()));
    alloc_cgroup_gone(&parent, &cfg);
    no_mount_of(&sb);
    let m = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!m.contains(outside.path().to_str().unwrap()), "{m}");
}

#[test]
fn a_failed_mount_names_its_source_and_target() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mut binds = default_binds();
    binds.push(Bind {
        source: "/nonexistent-tend-source".into(),
        target: "/opt/x".into(),
    });
    let mut cfg = sb.config("t", "/bin/true", &[]);
    make_exec(&mut cfg, &parent, binds);
    let (stage, errno, message) = sb.start(&cfg).failure();
    assert_eq!(stage, Stage::Mount);
    assert_eq!(errno, nix::errno::Errno::ENOENT as i32);
    assert_eq!(
        message,
        format!(
            "mount /nonexistent-tend-source on /opt/x in {}: No such file or directory",
            cfg.task_root().display()
        )
    );
    assert!(wait_until(LONG, || sb.pids_inside().is_empty()));
    alloc_cgroup_gone(&parent, &cfg);
    no_mount_of(&sb);
}

#[test]
fn cgroup_errors_fail_at_the_cgroup_stage_naming_the_file() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    // The task's cgroup: a pids.max the kernel refuses.
    let mut cfg = exec_config(&sb, &parent, "t", "true");
    cfg.cgroup.as_mut().unwrap().pids_max = Some(99_999_999);
    let spawned = sb.start(&cfg);
    let (stage, errno, message) = spawned.failure();
    assert_eq!(stage, Stage::Cgroup, "{message}");
    assert_eq!(errno, nix::errno::Errno::EINVAL as i32, "{message}");
    let file = pids_dir(&task_cgroup(&cfg)).join("pids.max");
    assert_eq!(
        message,
        format!("cgroup: write {}: Invalid argument", file.display())
    );
    assert_eq!(
        Sandbox::wait_exit_file(&cfg, LONG).error.as_deref(),
        Some(message.as_str())
    );
    assert!(wait_until(LONG, || sb.pids_inside().is_empty()));
    alloc_cgroup_gone(&parent, &cfg);
    no_mount_of(&sb);

    // The daemon's own cgroup: a path through a control file.
    let mut cfg = exec_config(&sb, &parent, "t", "true");
    cfg.cgroup.as_mut().unwrap().daemon_path = Some(format!("{}/cgroup.procs", parent.name));
    let (stage, _, message) = sb.start(&cfg).failure();
    assert_eq!(stage, Stage::Cgroup, "{message}");
    assert!(
        message.starts_with("cgroup: write /sys/fs/cgroup/")
            && message.contains("/cgroup.procs/cgroup.procs: "),
        "{message}"
    );
    assert!(wait_until(LONG, || sb.pids_inside().is_empty()));
    alloc_cgroup_gone(&parent, &cfg);
}

#[test]
fn status_during_a_run_and_sigterm_to_the_daemon_cleans_up() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mut cfg = exec_config(&sb, &parent, "t", "sleep 100 & sleep 100");
    cfg.kill_timeout_ms = 200;
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    match c.request(Request::Status) {
        Response::Status(s) => assert_eq!(s.state, TaskState::Running),
        other => panic!("{other:?}"),
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    assert!(exit.signal.is_some(), "{exit:?}");
    assert_clean(&sb, &cfg, daemon_pid);
}

// ---- through the real CLI -------------------------------------------------

/// `tend run` of `job` in the foreground, its tasks' cgroups under `parent`
/// (the CLI's default, `tend`, when None).
fn tend(sb: &Sandbox, job: &str, parent: Option<&CgroupParent>) -> std::process::Output {
    tend_command(sb, job, parent.map_or("tend", |p| p.name.as_str()))
        .output()
        .unwrap()
}

/// The `tend run` command of `job` (written to a file of its own), with the
/// sandbox's dirs and `cgroup_parent`.
fn tend_command(sb: &Sandbox, job: &str, cgroup_parent: &str) -> Command {
    let file = sb
        .data_dir()
        .join(format!("job-{}.hcl", FILES.fetch_add(1, Ordering::Relaxed)));
    fs::write(&file, job).unwrap();
    let mut cmd = Command::new(tend_tests::bin("tend"));
    cmd.arg("run")
        .arg(&file)
        .env("TEND_DATA_DIR", sb.data_dir().join("data"))
        .env("TEND_RUN_DIR", sb.run_dir())
        .env("TEND_SPAWN_BIN", tend_tests::spawn_bin())
        .env("TEND_CGROUP_PARENT", cgroup_parent)
        .stdin(Stdio::null());
    cmd
}

fn exec_job(task_body: &str) -> String {
    format!(
        "job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"exec\"\n{task_body}\n    }}\n  }}\n}}\n"
    )
}

/// Cgroup dirs under `parent`, in the memory hierarchy. A parent of the
/// test's own: under the CLI's default, tests running at once come and go.
fn tend_cgroups(parent: &CgroupParent) -> BTreeSet<String> {
    let dir = memory_limit_file(&parent.name)
        .parent()
        .unwrap()
        .to_path_buf();
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn allocs_of(sb: &Sandbox) -> Vec<PathBuf> {
    fs::read_dir(sb.data_dir().join("data/allocs"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn tend_run_of_an_exec_job_runs_unprivileged_in_its_root() {
    require_root!();
    assert!(
        nobody_is_65534(),
        "this test expects nobody to be 65534:65534"
    );
    let sb = Sandbox::new();
    // The data dir must be walkable like /var/lib/tend.
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let mounts_before = host_mounts(&sb);
    let job = exec_job(
        r#"      config {
        command = "/bin/sh"
        args    = ["-c", "echo ALLOC=$TEND_ALLOC_DIR TASK=$TEND_TASK_DIR; grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs):' /proc/self/status; cat /proc/self/cgroup; echo hi > $TEND_TASK_DIR/f; cat /local/f"]
      }
      resources {
        memory = 48
      }"#,
    );
    let o = tend(&sb, &job, None);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("ALLOC=/alloc TASK=/local\n"), "{stdout}");
    assert_unprivileged(&stdout);
    let allocs = allocs_of(&sb);
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    let alloc_id = allocs[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        stdout.contains(&format!(":/tend/{alloc_id}.t\n")),
        "{stdout}"
    );
    assert!(stdout.contains("hi\n"), "{stdout}");
    assert!(
        wait_until(LONG, || !CgroupParent::exists(&format!(
            "tend/{alloc_id}.t"
        ))),
        "cgroup tend/{alloc_id}.t left"
    );
    assert!(
        wait_until(LONG, || sb.pids_inside().is_empty()),
        "{:?}",
        sb.pids_inside()
    );
    assert_eq!(host_mounts(&sb), mounts_before);
}

#[test]
fn tend_run_refuses_bad_exec_tasks_naming_the_field_and_starts_nothing() {
    require_root!();
    let cases = [
        (
            "      user = \"no-such-user-tend\"\n      config {\n        command = \"/bin/true\"\n      }",
            "user",
            "no-such-user-tend",
        ),
        (
            "      config {\n        command = \"/bin/true\"\n      }\n      resources {\n        memory = 2\n      }",
            "resources.memory",
            "4 MB",
        ),
        (
            "      config {\n        command = \"/bin/true\"\n      }\n      chroot_env = { \"/nonexistent-tend-src\" = \"/x\" }",
            "chroot_env",
            "/nonexistent-tend-src",
        ),
        // Root only where the agent config allows it; `tend run` has none.
        (
            "      user = \"root\"\n      config {\n        command = \"/bin/true\"\n      }",
            "user",
            "plugin \"exec\" { allow_root = true }",
        ),
    ];
    for (body, field, detail) in cases {
        let sb = Sandbox::new();
        let parent = CgroupParent::new();
        let cgroups_before = tend_cgroups(&parent);
        let o = tend(&sb, &exec_job(body), Some(&parent));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{field}: {stderr}");
        assert!(
            stderr.contains(&format!("task t: {field}:")) && stderr.contains(detail),
            "{field}: {stderr}"
        );
        assert!(allocs_of(&sb).is_empty(), "{field}: {:?}", allocs_of(&sb));
        let new: Vec<String> = tend_cgroups(&parent)
            .difference(&cgroups_before)
            .cloned()
            .collect();
        assert!(new.is_empty(), "{field}: new cgroups {new:?}");
        assert!(sb.pids_inside().is_empty());
    }
}

/// `tend validate` and `tend run` refuse an unknown exec user in the same words.
#[test]
fn validate_and_run_refuse_an_unknown_user_in_the_same_words() {
    require_root!();
    let sb = Sandbox::new();
    let body = "      user = \"no-such-user-tend\"\n      config {\n        command = \"/bin/true\"\n      }";
    let words = "user: unknown user \"no-such-user-tend\"";
    let parent = CgroupParent::new();
    let o = tend(&sb, &exec_job(body), Some(&parent));
    let run_err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{run_err}");
    assert!(run_err.contains(&format!("task t: {words}")), "{run_err}");
    let file = sb.write_job("user.hcl", &exec_job(body));
    let o = Command::new(tend_tests::bin("tend"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let validate_out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{validate_out}");
    assert!(
        validate_out.contains(&format!(
            "{}:5:14: job.j.group.g.task.t.{words}\n",
            file.display()
        )),
        "{validate_out}"
    );
    assert!(allocs_of(&sb).is_empty(), "{:?}", allocs_of(&sb));
}

/// Item 12.2: an exec task running as root (allowed) leaves a setuid-root copy
/// of `id` in /alloc. It is there on the host, and another local user can
/// neither list the allocs, see the file, nor run it to become root: the
/// alloc dir's chain is the agent's alone, even with a data dir every user
/// may walk.
#[test]
fn a_setuid_file_a_root_exec_task_leaves_in_alloc_is_out_of_other_users_reach() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let sb = Sandbox::new();
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let job = exec_job(
        r#"      user = "root"
      config {
        command = "/bin/sh"
        args    = ["-c", "cp /usr/bin/id /alloc/suid-id && chmod 4755 /alloc/suid-id"]
      }"#,
    );
    // Root only where the agent config allows it.
    let parent = CgroupParent::new();
    let agent = tend_tests::AgentProc::start_with_config(
        &sb,
        &format!(
            "cgroup_parent = \"{}\"\nplugin \"exec\" {{\n  allow_root = true\n}}\n",
            parent.name
        ),
    );
    let path = sb.scratch_dir().join("suid.hcl");
    fs::write(&path, &job).unwrap();
    let o = agent.cli(&["run", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let alloc = sb.find_alloc_dir();
    let exit = tend_tests::wait_alloc_exit(&alloc, "t", LONG);
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    let suid = alloc.join("alloc/suid-id");
    let m = fs::metadata(&suid).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o4000), (0, 0o4000), "not setuid root");

    let other = tend_tests::ThrowawayUser::create();
    let allocs_dir = sb.data_dir().join("allocs");
    assert!(other.run("/bin/ls", &[&allocs_dir]).is_err());
    assert!(other.run("/usr/bin/stat", &[&suid]).is_err());
    let ran = other.run(suid.to_str().unwrap(), &["-u"]);
    assert!(ran.is_err(), "{} ran the setuid copy: {ran:?}", other.name);
}

/// The lines of the task's own mountinfo (printed by it) whose mount point is `point`.
fn mount_line<'a>(mountinfo: &'a str, point: &str) -> Option<&'a str> {
    mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(point))
}

/// The per-mount options (field 6) and the super options (last field) of a
/// mountinfo line, as sets.
fn mount_options(line: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let fields: Vec<&str> = line.split(' ').collect();
    let set = |f: &str| f.split(',').map(str::to_string).collect();
    (set(fields[5]), set(fields.last().unwrap()))
}

fn has_all(set: &BTreeSet<String>, want: &[&str]) -> bool {
    want.iter().all(|w| set.contains(*w))
}

/// Each exec task has a pid namespace and a /proc of it: another alloc's
/// task (the same user, nobody) is neither listed, nor signalled, nor read;
/// the host sees the task under its host pid (which the exit file records).
#[test]
fn an_exec_task_sees_kills_and_reads_only_its_own_pid_namespace() {
    require_root!();
    let parent = CgroupParent::new();
    let (sb_a, sb) = (Sandbox::new(), Sandbox::new());
    let a = exec_config(&sb_a, &parent, "a", "echo ready; exec sleep 300");
    let (a_daemon, a_pid, _) = sb_a.start(&a).pids();
    assert!(wait_until(LONG, || out(&a).contains("ready")));
    // From the host: the task is pid 2 of its namespace, and tend-init, the
    // daemon's other child, pid 1, in the task's user.
    let status = fs::read_to_string(format!("/proc/{a_pid}/status")).unwrap();
    assert_eq!(
        status_field(&status, "NSpid"),
        [a_pid.to_string(), "2".to_string()],
        "{status}"
    );
    let kids = fs::read_to_string(format!("/proc/{a_daemon}/task/{a_daemon}/children")).unwrap();
    let inits: Vec<&str> = kids
        .split_whitespace()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tend-init")
        })
        .collect();
    assert_eq!(inits.len(), 1, "children {kids}");
    let init = fs::read_to_string(format!("/proc/{}/status", inits[0])).unwrap();
    assert_eq!(status_field(&init, "NSpid")[1], "1", "{init}");
    assert_eq!(status_field(&init, "Uid"), ["65534"; 4], "{init}");
    // The init is in the task's cgroup where a kill of it reaches (cgroup2,
    // or v1's freezer), and in no hierarchy that limits or counts the task.
    let task_cg = format!("/{}", a.cgroup.as_ref().unwrap().path);
    let init_cg = fs::read_to_string(format!("/proc/{}/cgroup", inits[0])).unwrap();
    let in_task = |line: &&str| line.ends_with(&format!(":{task_cg}"));
    let kill = init_cg
        .lines()
        .filter(in_task)
        .map(|l| l.split(':').nth(1).unwrap_or(""))
        .collect::<Vec<_>>();
    assert!(
        kill == [""] || kill == ["freezer"],
        "the init is in the task's cgroup {task_cg} only where a kill reaches it:\n{init_cg}"
    );
    let b = exec_config(
        &sb,
        &parent,
        "b",
        &format!(
            "echo self=$$; ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; \
             if kill -0 {a_pid} 2>/dev/null; then echo KILL-REACHED; else echo KILL-REFUSED; fi; \
             if cat /proc/{a_pid}/environ >/dev/null 2>&1; then echo ENVIRON-READ; else echo ENVIRON-DENIED; fi"
        ),
    );
    let (b_daemon, b_pid, _) = sb.start(&b).pids();
    let mut c = Client::connect(&b);
    let exit = finish(&sb, &b, b_daemon, &mut c);
    let text = out(&b);
    assert_eq!(exit.exit_code, Some(0), "{text}{}", err(&b));
    assert_eq!(exit.pid, Some(b_pid));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("self=2"), "{text}");
    let listed: Vec<i32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Itself and its own children (its init, non-dumpable, is hidden too):
    // nothing of the host.
    assert!(listed.contains(&2), "{text}");
    assert!(listed.iter().all(|p| *p < 50), "host pids listed: {text}");
    for want in ["KILL-REFUSED", "ENVIRON-DENIED"] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
    assert!(pid_alive(a_pid), "task a was killed");
    let exit = stop_and_finish(&sb_a, &a, a_daemon, 15);
    assert_eq!((exit.signal, exit.pid), (Some(15), Some(a_pid)), "{exit:?}");
}

/// Stop the task with `signal` (2 s of grace), wait for its exit, release
/// the daemon and check that nothing of it is left (see [`finish`]).
fn stop_and_finish(sb: &Sandbox, cfg: &SpawnConfig, daemon_pid: i32, signal: i32) -> ExitStatus {
    let mut c = Client::connect(cfg);
    let stop = Request::Stop {
        signal,
        grace_ms: 2000,
    };
    assert_eq!(c.request(stop), Response::Ok);
    finish(sb, cfg, daemon_pid, &mut c)
}

/// Run, as `user`, a task that tries to write the kernel's knobs and read
/// the masked files; returns its stdout (the answers, its /proc mounts and
/// its ids) and stderr. The value written is the one read: harmless on a
/// host where the write works.
fn probe_kernel_knobs(user: &str) -> (String, String) {
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let mut cfg = exec_config(
        &sb,
        &parent,
        "t",
        "v=$(cat /proc/sys/kernel/core_pattern); \
         if printf '%s\\n' \"$v\" > /proc/sys/kernel/core_pattern; then echo CORE-WRITTEN; else echo CORE-REFUSED; fi; \
         if printf '' > /proc/sysrq-trigger; then echo SYSRQ-WRITTEN; else echo SYSRQ-REFUSED; fi; \
         echo timer_list=$(wc -c < /proc/timer_list); \
         echo acpi=$(ls -A /proc/acpi 2>/dev/null | wc -l); \
         grep -E ' /proc/(sys|sysrq-trigger|timer_list) ' /proc/self/mountinfo; \
         grep -E '^(Uid|CapEff):' /proc/self/status",
    );
    cfg.isolation.as_mut().unwrap().user = user.into();
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    let text = out(&cfg);
    assert_eq!(exit.exit_code, Some(0), "{text}{}", err(&cfg));
    assert_eq!(
        status_field(&text, "CapEff"),
        ["0000000000000000"],
        "{text}"
    );
    // timer_list is root's to read (0400): unmasked, root reads kilobytes.
    for want in ["CORE-REFUSED", "SYSRQ-REFUSED", "timer_list=0", "acpi=0"] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
    assert!(mount_line(&text, "/proc/timer_list").is_some(), "{text}");
    (text, err(&cfg))
}

/// A root exec task (the agent allowed it) still cannot reach the kernel's
/// knobs: /proc/sys and /proc/sysrq-trigger are read-only, /proc/kcore and
/// the other masked files read empty, /proc/acpi and the masked dirs are empty.
#[test]
fn a_root_exec_task_cannot_write_kernel_knobs_or_read_masked_files() {
    require_root!();
    let (text, stderr) = probe_kernel_knobs("root");
    assert_eq!(status_field(&text, "Uid"), ["0"; 4], "{text}");
    let line = mount_line(&text, "/proc/sys").unwrap_or_else(|| panic!("{text}"));
    assert!(mount_options(line).0.contains("ro"), "{line}");
    if Path::new("/proc/sysrq-trigger").exists() {
        let line = mount_line(&text, "/proc/sysrq-trigger").unwrap_or_else(|| panic!("{text}"));
        assert!(mount_options(line).0.contains("ro"), "{line}");
    }
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

/// A task of any other user gets no read-only binds on the knobs (the
/// kernel's permission check refuses its writes already: the binds would
/// cost every start for nothing) but the same masks.
#[test]
fn a_nobody_exec_task_is_refused_kernel_knobs_by_their_permissions() {
    require_root!();
    let (text, stderr) = probe_kernel_knobs("nobody");
    assert_ne!(status_field(&text, "Uid"), ["0"; 4], "{text}");
    assert!(mount_line(&text, "/proc/sys").is_none(), "{text}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!stderr.contains("Read-only file system"), "{stderr}");
}

/// A tmpfs unmounted on drop (lazily: a task may still hold it).
struct TestMount(PathBuf);

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// chroot_env binds are read-only all the way down (a mount beneath a bound
/// dir too), and the writable binds, /alloc and /local, are nosuid,nodev.
#[test]
fn chroot_env_is_read_only_beneath_too_and_writable_binds_are_nosuid_nodev() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    // Outside the sandbox: its dirs must show no mount on the host.
    let env = tempfile::Builder::new()
        .prefix("tend-env-")
        .tempdir()
        .unwrap();
    let env_dir = env.path().to_path_buf();
    fs::set_permissions(&env_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let sub = env_dir.join("sub");
    fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tendenv"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0777,size=1m"),
    )
    .unwrap();
    let _mounted = TestMount(sub.clone());
    let mut cfg = sb.config(
        "t",
        "/bin/sh",
        &[
            "-c",
            "if touch /extra/sub/f 2>/dev/null; then echo SUB-RW; else echo SUB-RO; fi; \
             cat /proc/self/mountinfo",
        ],
    );
    let mut binds = default_binds();
    binds.push(Bind {
        source: env_dir.to_str().unwrap().into(),
        target: "/extra".into(),
    });
    make_exec(&mut cfg, &parent, binds);
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = finish(&sb, &cfg, daemon_pid, &mut c);
    let text = out(&cfg);
    assert_eq!(exit.exit_code, Some(0), "{text}{}", err(&cfg));
    assert!(text.starts_with("SUB-RO\n"), "{text}");
    assert!(!sub.join("f").exists());
    let sub_line = mount_line(&text, "/extra/sub").unwrap_or_else(|| panic!("{text}"));
    assert!(
        has_all(&mount_options(sub_line).0, &["ro", "nosuid", "nodev"]),
        "{sub_line}"
    );
    for point in ["/alloc", "/local"] {
        let line = mount_line(&text, point).unwrap_or_else(|| panic!("{point}: {text}"));
        assert!(
            has_all(&mount_options(line).0, &["rw", "nosuid", "nodev"]),
            "{line}"
        );
    }
}

/// Each exec task has a /tmp of its own: a tmpfs, 1777, nosuid,nodev, a
/// quarter of its memory limit (64 MB here: 16 MiB), TMPDIR=/tmp; what one
/// task writes there another task (another alloc) does not see.
#[test]
fn each_exec_task_has_a_private_bounded_tmp() {
    require_root!();
    let parent = CgroupParent::new();
    let (sb_a, sb) = (Sandbox::new(), Sandbox::new());
    let a = exec_config(
        &sb_a,
        &parent,
        "a",
        "echo secret > /tmp/x && echo WROTE; echo TMPDIR=$TMPDIR; \
         if dd if=/dev/zero of=/tmp/big bs=1M count=20 2>/dev/null; then echo BIG-FIT; else echo BIG-REFUSED; fi; \
         rm -f /tmp/big; grep ' /tmp ' /proc/self/mountinfo; stat -c %a /tmp; echo done; exec sleep 300",
    );
    let (a_daemon, _, _) = sb_a.start(&a).pids();
    assert!(wait_until(LONG, || out(&a).contains("done")), "{}", out(&a));
    let b = exec_config(
        &sb,
        &parent,
        "b",
        "if [ -e /tmp/x ]; then echo SEES-X; else echo NO-X; fi; echo entries=$(ls -A /tmp | wc -l)",
    );
    let (b_daemon, _, _) = sb.start(&b).pids();
    let mut c = Client::connect(&b);
    let exit = finish(&sb, &b, b_daemon, &mut c);
    assert_eq!(exit.exit_code, Some(0), "{}{}", out(&b), err(&b));
    assert_eq!(out(&b), "NO-X\nentries=0\n");

    let text = out(&a);
    for want in ["WROTE", "TMPDIR=/tmp", "BIG-REFUSED", "1777"] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
    let line = mount_line(&text, "/tmp").unwrap_or_else(|| panic!("{text}"));
    let (per_mount, fs_opts) = mount_options(line);
    assert!(line.contains(" - tmpfs "), "{line}");
    assert!(has_all(&per_mount, &["rw", "nosuid", "nodev"]), "{line}");
    assert!(fs_opts.contains("size=16384k"), "{line}");
    stop_and_finish(&sb_a, &a, a_daemon, 9);
}

/// `user = "root"` in an exec task is refused at submit by an agent whose
/// config does not allow it (naming the option), and runs, still unable to
/// write the kernel's knobs, where `plugin "exec" { allow_root = true }`.
#[test]
fn an_agent_runs_root_exec_tasks_only_where_its_config_allows_root() {
    require_root!();
    let job = exec_job(
        "      user = \"root\"\n      config {\n        command = \"/bin/sh\"\n        args    = [\"-c\", \"id -u; v=$(cat /proc/sys/kernel/core_pattern); if printf '%s\\\\n' \\\"$v\\\" > /proc/sys/kernel/core_pattern; then echo CORE-WRITTEN; else echo CORE-REFUSED; fi; if chmod 666 /dev/null 2>/dev/null; then echo DEV-CHMODDED; else echo DEV-REFUSED; fi; echo x > /dev/null && echo DEV-WRITES\"]\n      }\n      resources {\n        memory = 32\n      }",
    );
    let submit = |agent: &tend_tests::AgentProc, sb: &Sandbox| {
        let path = sb.scratch_dir().join("root.hcl");
        fs::write(&path, &job).unwrap();
        agent.cli(&["run", "--json", path.to_str().unwrap()])
    };

    // A cgroup parent of this test's own: tests of `tend run` watch "tend".
    let parent = CgroupParent::new();
    let cgroup_parent = format!("cgroup_parent = \"{}\"\n", parent.name);
    let sb = Sandbox::new();
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let agent = tend_tests::AgentProc::start_with_config(&sb, &cgroup_parent);
    let o = submit(&agent, &sb);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        stderr.contains("task t: user:")
            && stderr.contains("plugin \"exec\" { allow_root = true }"),
        "{stderr}"
    );
    assert!(sb.alloc_dirs().is_empty(), "{:?}", sb.alloc_dirs());
    drop(agent);

    let sb = Sandbox::new();
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let agent = tend_tests::AgentProc::start_with_config(
        &sb,
        &format!("{cgroup_parent}plugin \"exec\" {{\n  allow_root = true\n}}\n"),
    );
    let o = submit(&agent, &sb);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let alloc = sb.find_alloc_dir();
    let exit = tend_tests::wait_alloc_exit(&alloc, "t", LONG);
    let log = fs::read_to_string(tend_tests::alloc_log_path(&alloc, "t", "stdout")).unwrap();
    assert_eq!(exit.exit_code, Some(0), "{log}");
    assert_eq!(log, "0\nCORE-REFUSED\nDEV-REFUSED\nDEV-WRITES\n");
}

// ---------------------------------------------------------------- resource options
//
// `resources { memory_max, cpu_hard_limit, io_weight, oom_kill_group }` of a
// job file, run with `tend run`, checked in the task's cgroup files on the host.

fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file()
}

/// `tend run` of `job` in the background, its stderr in a file; killed and
/// reaped on drop.
struct Background(std::process::Child, PathBuf);

impl Background {
    fn start(sb: &Sandbox, job: &str, parent: &CgroupParent) -> Background {
        Background::start_with(sb, job, parent, |_| {})
    }

    /// [`Background::start`], with `more` applied to the command first.
    fn start_with(
        sb: &Sandbox,
        job: &str,
        parent: &CgroupParent,
        more: impl FnOnce(&mut Command),
    ) -> Background {
        // The data dir must be walkable like /var/lib/tend.
        fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = tend_command(sb, job, &parent.name);
        more(&mut cmd);
        let stderr = sb.data_dir().join(format!(
            "tend-run-{}.stderr",
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Background(child, stderr)
    }

    /// What `tend run` wrote on stderr so far.
    fn stderr(&self) -> String {
        fs::read_to_string(&self.1).unwrap_or_default()
    }

    /// Wait for `tend run` to end; its exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.0.wait().unwrap();
        (status.code(), self.stderr())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The task `t`'s cgroup dir under `parent` in the hierarchy of `controller`
/// (the one dir on v2), once tend-spawn has made it and written `file` there.
fn task_cgroup_file(
    run: &Background,
    parent: &CgroupParent,
    controller: &str,
    file: &str,
) -> PathBuf {
    let base = if is_v2() {
        Path::new(CGROUP_ROOT).join(&parent.name)
    } else {
        Path::new(CGROUP_ROOT).join(controller).join(&parent.name)
    };
    let mut found = None;
    let seen = wait_until(LONG, || {
        found = fs::read_dir(&base).ok().and_then(|rd| {
            // The agent's task cgroup: `<parent>/<alloc>.t`.
            rd.flatten()
                .map(|e| e.path())
                .filter(|d| d.to_string_lossy().ends_with(".t"))
                .find(|d| d.join("cgroup.procs").is_file() && d.join(file).is_file())
        });
        // The limits are written before the task joins: wait for a member.
        found.as_ref().is_some_and(|d| {
            !fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .trim()
                .is_empty()
        })
    });
    assert!(
        seen,
        "no task cgroup with {file} under {}; tend run said:\n{}",
        base.display(),
        run.stderr()
    );
    found.unwrap().join(file)
}

fn read_trim(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn resources_job(script: &str, resources: &str) -> String {
    exec_job(&format!(
        "      config {{\n        command = \"/bin/sh\"\n        args    = [\"-c\", {script:?}]\n      }}\n      resources {{\n{resources}\n      }}"
    ))
}

/// The one alloc's daemon log of task `t`.
fn daemon_log(sb: &Sandbox) -> String {
    let allocs = allocs_of(sb);
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    fs::read_to_string(allocs[0].join("logs/t.tend-spawn.log")).unwrap_or_default()
}

/// The one alloc's exit status of task `t`.
fn exit_of(sb: &Sandbox) -> ExitStatus {
    let allocs = allocs_of(sb);
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    ExitStatus::read(&allocs[0].join(tend_proto::names::exit_status_file("t"))).unwrap()
}

#[test]
fn memory_max_is_the_hard_limit_and_memory_the_soft_one() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let run = Background::start(
        &sb,
        &resources_job(
            "sleep 2",
            "        memory     = 48\n        memory_max = 96",
        ),
        &parent,
    );
    let (hard, soft) = if is_v2() {
        ("memory.max", "memory.low")
    } else {
        ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")
    };
    let hard = task_cgroup_file(&run, &parent, "memory", hard);
    assert_eq!(read_trim(&hard), (96 * MB).to_string());
    assert_eq!(read_trim(&hard.with_file_name(soft)), (48 * MB).to_string());
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");

    // Without memory_max, memory is the hard limit and no soft one is set.
    let sb = Sandbox::new();
    let run = Background::start(
        &sb,
        &resources_job("sleep 2", "        memory = 48"),
        &parent,
    );
    let hard = task_cgroup_file(
        &run,
        &parent,
        "memory",
        if is_v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        },
    );
    assert_eq!(read_trim(&hard), (48 * MB).to_string());
    let soft = read_trim(&hard.with_file_name(soft));
    assert_ne!(soft, (48 * MB).to_string());
    assert_eq!(run.finish().0, Some(0));
}

/// One core's MHz as /proc/cpuinfo gives it (none in a user-mode Linux).
fn cpuinfo_mhz_per_core() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "cpu MHz")
        .and_then(|(_, v)| v.trim().split('.').next()?.parse().ok())
        .filter(|m| *m > 0)
}

/// CPU time the task's cgroup used so far, microseconds.
fn cpu_usage_us(run: &Background, parent: &CgroupParent) -> u64 {
    if is_v2() {
        let stat = read_trim(&task_cgroup_file(run, parent, "cpu", "cpu.stat"));
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.parse().ok())
            .expect("usage_usec")
    } else {
        let ns: u64 = read_trim(&task_cgroup_file(run, parent, "cpuacct", "cpuacct.usage"))
            .parse()
            .unwrap();
        ns / 1000
    }
}

#[test]
fn cpu_hard_limit_caps_a_spinning_task_at_its_share_of_a_core() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    // A quarter of one core: quota = 100000 us * cpu / MHz per core. One
    // core's MHz from /proc/cpuinfo as tend reads it; where it says none,
    // from the host's total given to `tend run` (`cpu_total_compute`).
    let cores = u64::try_from(std::thread::available_parallelism().unwrap().get()).unwrap();
    let (mhz, total) = match cpuinfo_mhz_per_core() {
        Some(mhz) => (mhz, None),
        None => (2000, Some(2000 * cores)),
    };
    let cpu = mhz / 4;
    let want_quota = 100_000 * cpu / mhz;
    let job = resources_job(
        "timeout 6 sh -c 'while :; do :; done'; exit 0",
        &format!("        cpu            = {cpu}\n        cpu_hard_limit = true"),
    );
    let run = Background::start_with(&sb, &job, &parent, |cmd| {
        if let Some(total) = total {
            cmd.env("TEND_CPU_TOTAL_COMPUTE", total.to_string());
        }
    });
    if is_v2() {
        let max = read_trim(&task_cgroup_file(&run, &parent, "cpu", "cpu.max"));
        assert_eq!(max, format!("{want_quota} 100000"));
    } else {
        let quota = task_cgroup_file(&run, &parent, "cpu", "cpu.cfs_quota_us");
        assert_eq!(read_trim(&quota), want_quota.to_string());
        assert_eq!(
            read_trim(&quota.with_file_name("cpu.cfs_period_us")),
            "100000"
        );
    }
    // Over 2 s of wall time the task may use a quarter core: 0.5 s. Unlimited
    // it spins a whole core (2 s). Loosely: under twice its share.
    let before = cpu_usage_us(&run, &parent);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_usage_us(&run, &parent) - before;
    let wall_us = u64::try_from(t0.elapsed().as_micros()).unwrap();
    let share = wall_us * want_quota / 100_000;
    assert!(
        used < 2 * share,
        "used {used} us of CPU in {wall_us} us, quota share {share} us"
    );
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn io_weight_is_written_where_the_kernel_takes_it_else_logged() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let run = Background::start(
        &sb,
        &resources_job("sleep 2", "        io_weight = 500"),
        &parent,
    );
    // The task runs either way: a weight is a preference, not a limit.
    let procs = task_cgroup_file(&run, &parent, "memory", "cgroup.procs");
    let task_dir = procs.parent().unwrap();
    let (weight_dir, files): (PathBuf, &[(&str, &str)]) = if is_v2() {
        (
            task_dir.to_path_buf(),
            &[
                ("io.weight", "default 500"),
                ("io.bfq.weight", "default 500"),
            ],
        )
    } else {
        let rel = task_dir
            .strip_prefix(Path::new(CGROUP_ROOT).join("memory"))
            .unwrap();
        (
            Path::new(CGROUP_ROOT).join("blkio").join(rel),
            // 500 of 1-10000 onto 10-1000.
            &[("blkio.weight", "59"), ("blkio.bfq.weight", "59")],
        )
    };
    let written = files
        .iter()
        .find(|(f, _)| weight_dir.join(f).is_file())
        .map(|(f, want)| (read_trim(&weight_dir.join(f)), *want));
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    match written {
        Some((got, want)) => assert!(got.starts_with(want), "{got} (want {want})"),
        None => {
            let log = daemon_log(&sb);
            assert!(log.contains("io_weight not set"), "{log}");
        }
    }
}

/// A child of the task is OOM-killed. With oom_kill_group (v2) the whole task
/// goes with it: the main process dies of SIGKILL. Without it only the child
/// dies and the task exits on its own (137). On v1 there is no OOM group: the
/// option is a warning in the supervisor's log and only the child dies.
#[test]
fn oom_kill_group_takes_the_whole_task_on_v2() {
    require_root!();
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1; exit 137";
    for group in [true, false] {
        let parent = CgroupParent::new();
        let sb = Sandbox::new();
        let run = Background::start(
            &sb,
            &resources_job(
                script,
                &format!("        memory         = 32\n        oom_kill_group = {group}"),
            ),
            &parent,
        );
        let (_, stderr) = run.finish();
        let exit = exit_of(&sb);
        assert!(exit.oom_kills >= 1, "group={group}: {exit:?} {stderr}");
        if group && is_v2() {
            assert_eq!(exit.signal, Some(9), "{exit:?}");
            assert!(exit.oom_killed, "{exit:?}");
        } else {
            assert_eq!(exit.exit_code, Some(137), "group={group}: {exit:?}");
            assert!(!exit.oom_killed, "{exit:?}");
        }
        if group && !is_v2() {
            let log = daemon_log(&sb);
            assert!(log.contains("oom_kill_group needs cgroup v2"), "{log}");
        }
    }
}

// ---------------------------------------------------------------- the agent's cgroup parent

/// `tend agent` with `cgroup_parent`, expected to refuse to start: its exit
/// code and what it said.
fn agent_refusal(sb: &Sandbox, cgroup_parent: &str) -> (Option<i32>, String) {
    let config = sb.data_dir().join("agent.hcl");
    fs::write(&config, format!("cgroup_parent = \"{cgroup_parent}\"\n")).unwrap();
    let mut child = Command::new(tend_tests::bin("tend"))
        .arg("--data-dir")
        .arg(sb.data_dir().join("data"))
        .arg("--run-dir")
        .arg(sb.run_dir())
        .args(["agent", "--spawn-bin"])
        .arg(tend_tests::spawn_bin())
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An agent that starts serves until stopped: give it a bounded while.
    let ended = wait_until(LONG, || child.try_wait().ok().flatten().is_some());
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cgroup dir of the test's own, bound read-only onto itself; unmounted and
/// removed on drop.
struct ReadOnlyCgroup(PathBuf);

impl ReadOnlyCgroup {
    fn new(mount: &Path, name: &str) -> ReadOnlyCgroup {
        let dir = mount.join(name);
        fs::create_dir(&dir).unwrap();
        let guard = ReadOnlyCgroup(dir.clone());
        for args in [
            vec!["--bind", dir.to_str().unwrap(), dir.to_str().unwrap()],
            vec!["-o", "remount,bind,ro", dir.to_str().unwrap()],
        ] {
            let st = Command::new("mount").args(&args).status().unwrap();
            assert!(st.success(), "mount {args:?}");
        }
        guard
    }
}

impl Drop for ReadOnlyCgroup {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn the_agent_refuses_a_cgroup_parent_it_cannot_make_tasks_under() {
    require_root!();
    let sb = Sandbox::new();
    let first_mount = if is_v2() {
        PathBuf::from(CGROUP_ROOT)
    } else {
        Path::new(CGROUP_ROOT).join("memory")
    };

    // A path under a file.
    let (code, stderr) = agent_refusal(&sb, "cgroup.procs/tasks");
    assert_ne!(code, Some(0), "{stderr}");
    let want = format!(
        "cgroup parent {}: {} is not a directory",
        first_mount.join("cgroup.procs/tasks").display(),
        first_mount.join("cgroup.procs").display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // A parent on a read-only mount.
    let name = format!("tend-ro-{}", std::process::id());
    let ro = ReadOnlyCgroup::new(&first_mount, &name);
    let (code, stderr) = agent_refusal(&sb, &name);
    assert_ne!(code, Some(0), "{stderr}");
    let want = format!("cgroup parent {0}: {0} is not writable", ro.0.display());
    assert!(stderr.contains(&want), "{stderr}");
    drop(ro);

    // v2: a parent whose subtree_control lacks the controllers, and which
    // cannot have them: it holds a process of its own.
    if is_v2() {
        let parent = CgroupParent::new();
        let dir = Path::new(CGROUP_ROOT).join(&parent.name);
        fs::create_dir(&dir).unwrap();
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        let (code, stderr) = agent_refusal(&sb, &parent.name);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_ne!(code, Some(0), "{stderr}");
        let want = format!(
            "cgroup parent {}: memory, pids, cpu not enabled in {}",
            dir.display(),
            dir.join("cgroup.subtree_control").display()
        );
        assert!(stderr.contains(&want), "{stderr}");
    }

    // And a usable parent starts: the check refuses only what cannot work.
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let agent = tend_tests::AgentProc::start_with_config(
        &sb,
        &format!("cgroup_parent = \"{}\"\n", parent.name),
    );
    drop(agent);
}

// ---- stats ------------------------------------------------------------------

/// Holds 50 MiB (written, so the pages are really in use) and spins.
const HOLD_50M_AND_SPIN: &str = "b = b'x' * (50 << 20)\nwhile True:\n    pass\n";

/// A number in a cgroup file: a lone value, or the `key` line of a keyed
/// file; None while the file is not there (yet).
fn cgroup_number(path: &Path, key: Option<&str>) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let value = match key {
        None => text.trim(),
        Some(k) => text
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))?,
    };
    Some(value.trim().parse().expect("a number"))
}

/// The task's memory in use and CPU time (µs) as its cgroup files say now.
fn cgroup_memory_and_cpu(rel: &str) -> Option<(u64, u64)> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").is_file() {
        let dir = root.join(rel);
        Some((
            cgroup_number(&dir.join("memory.current"), None)?,
            cgroup_number(&dir.join("cpu.stat"), Some("usage_usec"))?,
        ))
    } else {
        let memory = root.join("memory").join(rel);
        let cpuacct = root.join("cpuacct").join(rel);
        Some((
            cgroup_number(&memory.join("memory.usage_in_bytes"), None)?,
            cgroup_number(&cpuacct.join("cpuacct.usage"), None)? / 1000,
        ))
    }
}

fn within_10_percent(got: u64, want: u64) -> bool {
    got.abs_diff(want) * 10 <= want
}

#[test]
fn tend_stats_figures_match_the_cgroup_files_of_a_busy_task() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let agent = tend_tests::AgentProc::start_with_config(
        &sb,
        &format!("cgroup_parent = \"{}\"\n", parent.name),
    );
    let args = serde_json::to_string(&["-c", HOLD_50M_AND_SPIN]).unwrap();
    let job = exec_job(&format!(
        "      config {{\n        command = \"/usr/bin/python3\"\n        args = {args}\n      }}\n      resources {{\n        memory = 256\n      }}"
    ));
    let file = sb.write_job("busy.hcl", &job);
    let out = agent.cli(&["run", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alloc = v["allocations"][0].as_str().unwrap().to_string();
    let rel = format!("{}/{alloc}.t", parent.name);

    // Wait until the 50 MiB are written and the task has burnt 3 CPU seconds,
    // so the CPU it burns between tend's read and ours is small beside its total.
    let ok = wait_until(LONG, || {
        cgroup_memory_and_cpu(&rel).is_some_and(|(mem, cpu)| mem >= 50 * MB && cpu >= 3_000_000)
    });
    assert!(
        ok,
        "the task never held 50 MiB and 3 CPU seconds\n{}",
        agent.log()
    );

    let stats = |agent: &tend_tests::AgentProc| {
        let before = cgroup_memory_and_cpu(&rel).expect("the task's cgroup files");
        let out = agent.cli(&["stats", &alloc, "--json"]);
        assert!(out.status.success(), "{out:?}");
        let after = cgroup_memory_and_cpu(&rel).expect("the task's cgroup files");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, before.1, after)
    };
    let (v, cpu_before, (mem_file, cpu_file)) = stats(&agent);
    let t = &v["tasks"][0];
    assert_eq!(t["task"], "t", "{v:#}");
    let mem = t["memory"]["current"].as_u64().expect("memory.current");
    let cpu = t["cpu"]["usage_us"].as_u64().expect("cpu usage");
    assert!(
        within_10_percent(mem, mem_file),
        "tend stats {mem}, cgroup {mem_file}: {v:#}"
    );
    assert!(
        (cpu_before..=cpu_file).contains(&cpu) && within_10_percent(cpu, cpu_file),
        "tend stats {cpu} µs, cgroup {cpu_before} µs before it and {cpu_file} µs after: {v:#}"
    );
    assert!(
        t["memory"]["anon"].as_u64().expect("anon") >= 50 * MB,
        "{v:#}"
    );
    assert_eq!(t["memory"]["limit"], 256 * MB, "{v:#}");
    assert!(t["pids"].as_u64().expect("pids") >= 1, "{v:#}");
    let v2 = Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file();
    assert_eq!(t["cgroup_version"], if v2 { 2 } else { 1 }, "{v:#}");
    if v2 {
        // PSI where the kernel has it (CONFIG_PSI); io where the io
        // controller is enabled for the task: present exactly when the file is.
        let dir = Path::new(CGROUP_ROOT).join(&rel);
        assert_eq!(
            dir.join("cpu.pressure").is_file(),
            !t["psi"]["cpu"].is_null(),
            "{v:#}"
        );
        assert_eq!(
            dir.join("io.stat").is_file(),
            t["io"]["read_bytes"].is_u64(),
            "{v:#}"
        );
    } else {
        let blkio = Path::new(CGROUP_ROOT).join("blkio").join(&rel);
        let has = blkio.join("blkio.throttle.io_service_bytes").is_file();
        assert_eq!(has, t["io"]["read_bytes"].is_u64(), "{v:#}");
    }

    // CPU use grows between two asks.
    let ok = wait_until(LONG, || {
        let (v2, _, _) = stats(&agent);
        v2["tasks"][0]["cpu"]["usage_us"]
            .as_u64()
            .is_some_and(|c| c > cpu)
    });
    assert!(ok, "CPU use did not grow past {cpu} µs");

    // The table has the task's row with its memory in MiB.
    let out = agent.cli(&["stats", &alloc]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("ALLOC "), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&alloc[..8]))
        .unwrap_or_else(|| panic!("no row of {alloc}: {text}"));
    assert!(
        row.contains(" t ") && row.contains("MiB / 256.0MiB"),
        "{text}"
    );
    // Without an ALLOC: every running allocation, this one among them.
    let out = agent.cli(&["stats", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        all["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == alloc.as_str()),
        "{all:#}"
    );

    let out = agent.cli(&["stop", &alloc]);
    assert!(out.status.success(), "{out:?}");
    drop(agent);
}

/// Every process whose environment holds `entry` ("K=V"): its pid and comm.
fn processes_with_env(entry: &str) -> Vec<(i32, String)> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == entry.as_bytes()))
        })
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

#[test]
fn no_init_and_no_task_outlive_a_tend_spawn_sigkilled_during_its_start() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let rounds: u64 = std::env::var("TEND_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // How long a whole start takes here, so the kills spread over all of it.
    let cfg = exec_config(&sb, &parent, "m", "sleep 30");
    let t0 = Instant::now();
    let (daemon, _, _) = sb.start(&cfg).pids();
    let setup = t0.elapsed();
    let mut c = Client::connect(&cfg);
    let _ = c.request(Request::Stop {
        signal: 9,
        grace_ms: 0,
    });
    finish(&sb, &cfg, daemon, &mut c);
    let span = u64::try_from(setup.as_micros()).unwrap() * 5 / 4;
    let (mut before_init, mut with_init) = (0, 0);
    for round in 0..rounds {
        // In tend-spawn's environment (so in its init's, a fork of it) and
        // in the task's.
        let (key, value) = (
            "TEND_INIT_KILL_ROUND",
            format!("{}-{round}", std::process::id()),
        );
        let entry = format!("{key}={value}");
        let mut cfg = exec_config(&sb, &parent, &format!("t{round}"), "sleep 30");
        cfg.env.push((key.into(), value.clone()));
        let mut first = Command::new(tend_tests::spawn_bin())
            .env_clear()
            .env(key, &value)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let _ = first
                .stdin
                .take()
                .unwrap()
                .write_all(&cfg.to_frame().unwrap());
        }
        std::thread::sleep(Duration::from_micros(
            tend_tests::random_u64() % span.max(1),
        ));
        // SIGKILL every tend-spawn of the round (the first, the
        // intermediate, the daemon, a task child before its exec) until
        // none is left; an init is tend-init by then, and not killed here.
        let mut quiet = 0;
        let mut saw_init = false;
        while quiet < 3 {
            let procs = processes_with_env(&entry);
            saw_init |= procs.iter().any(|(_, comm)| comm == "tend-init");
            let spawns: Vec<i32> = procs
                .iter()
                .filter(|(_, comm)| comm == "tend-spawn")
                .map(|(pid, _)| *pid)
                .collect();
            quiet = if spawns.is_empty() { quiet + 1 } else { 0 };
            for pid in spawns {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = first.wait();
        if saw_init {
            with_init += 1;
        } else {
            before_init += 1;
        }
        let gone = wait_until(Duration::from_secs(10), || {
            processes_with_env(&entry).is_empty()
        });
        assert!(
            gone,
            "round {round}: left after tend-spawn's SIGKILL: {:?}",
            processes_with_env(&entry)
        );
    }
    println!(
        "start {setup:?}; {rounds} rounds: killed with an init up: {with_init}, before: {before_init}"
    );
}

//! End-to-end tests of `tend exec ALLOC TASK -- CMD...` as root: the built
//! agent and tend-spawn, a real task, and the command checked from inside
//! (its root, pid namespace, user, env, stdio) and from the host (nothing of
//! it left once it has ended), and an oci task's uts, ipc, network and cgroup
//! namespaces joined.

use std::fs;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tend_tests::{
    bin, cgroup_at_root, oci_bundle_config, require_root, wait_until, AgentProc, Sandbox,
};

const LONG: Duration = Duration::from_secs(30);

/// Submit `hcl` and wait until task `t` runs: the allocation id and the task.
fn start(agent: &AgentProc, hcl: &str) -> (String, Value) {
    let id = agent.submit(hcl).remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    (id, t)
}

fn wait_task(agent: &AgentProc, id: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        let a = agent.get_json(&format!("/v1/allocations/{id}"));
        last = a["tasks"][0].clone();
        f(&last)
    });
    assert!(ok, "task never got there: {last:#}");
    last
}

/// Start [`EXEC_JOB`]: its allocation id, the task's pid and its daemon's.
fn start_exec_task(agent: &AgentProc) -> (String, i32, i32) {
    let (id, t) = start(agent, EXEC_JOB);
    let pid = |k: &str| i32::try_from(t[k].as_i64().unwrap()).unwrap();
    (id, pid("pid"), pid("daemon_pid"))
}

/// `tend exec FLAGS... ID t -- ARGV...`, not started.
fn exec_command(sb: &Sandbox, flags: &[&str], id: &str, argv: &[&str]) -> Command {
    let mut c = Command::new(bin("tend"));
    c.arg("--data-dir")
        .arg(sb.data_dir())
        .arg("--run-dir")
        .arg(sb.run_dir())
        .arg("exec")
        .args(flags)
        .args([id, "t", "--"])
        .args(argv)
        .env_remove("TEND_DATA_DIR")
        .env_remove("TEND_RUN_DIR");
    c
}

/// `tend exec ID t -- ARGV...` with `stdin` as its input.
fn exec(sb: &Sandbox, id: &str, argv: &[&str], stdin: &[u8]) -> Output {
    let mut child = exec_command(sb, &[], id, argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec tend");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("wait tend exec")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

/// The pids of the daemon's children that are zombies.
fn zombie_children(daemon: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) S ppid ...": after the last ')'.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        if rest.len() > 1 && rest[0] == "Z" && rest[1] == daemon.to_string() {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is `sleep` asleep: its comm, its state S, and where the
/// kernel shows it, the syscall it waits in (nanosleep or clock_nanosleep,
/// x86_64's numbers; user-mode Linux shows none).
fn in_sleep(pid: i32) -> bool {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let stat = read("stat");
    let state = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.starts_with('S'));
    let syscall = read("syscall");
    read("comm").trim() == "sleep"
        && state == Some(true)
        && match syscall.split_whitespace().next() {
            Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => matches!(n, "35" | "230"),
            _ => true,
        }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

const EXEC_JOB: &str = r#"job "x" {
  group "g" {
    task "t" {
      driver = "exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo written-by-the-task > /local/note; exec sleep 300"]
      }
      env {
        GREETING = "hello from the env"
      }
    }
  }
}
"#;

#[test]
fn exec_runs_in_the_tasks_root_pid_namespace_user_and_env() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let (id, task_pid, daemon) = start_exec_task(&agent);
    let note = sb.data_dir().join("allocs").join(&id).join("t/local/note");
    assert!(wait_until(LONG, || note.exists()), "the task wrote no note");
    // Counted once the shell has exec'd sleep and sleep sleeps: until then
    // the shell may still hold the note open (it exists from the shell's
    // open), and sleep's loader its libraries.
    assert!(
        wait_until(LONG, || in_sleep(task_pid)),
        "the task never became a sleeping sleep"
    );
    let task_fds = fd_count(task_pid);

    // Its root: the file the task wrote, and the chroot's own listing.
    assert_eq!(
        ok(&exec(&sb, &id, &["cat", "/local/note"], b"")).trim(),
        "written-by-the-task"
    );
    let root = ok(&exec(&sb, &id, &["ls", "/"], b""));
    let listed: Vec<&str> = root.lines().collect();
    assert!(
        listed.contains(&"local") && listed.contains(&"alloc"),
        "{root}"
    );
    assert!(!listed.contains(&"work"), "the host's root shows: {root}");
    // Its pid namespace: the task's processes and itself, not the host's.
    let procs = ok(&exec(&sb, &id, &["sh", "-c", "echo $$; ls /proc"], b""));
    let mut lines = procs.lines();
    let me: i32 = lines.next().unwrap().parse().unwrap();
    let pids: Vec<i32> = lines.filter_map(|l| l.parse().ok()).collect();
    assert!(pids.contains(&me), "{procs}");
    assert!(pids.iter().all(|p| *p < 100), "host pids show: {procs}");
    // What the task has there, without this sh and its ls.
    let task_side: Vec<i32> = pids.iter().copied().filter(|p| *p < me).collect();
    assert!(!task_side.is_empty(), "{procs}");
    // Its user, without groups, and its env.
    assert_eq!(ok(&exec(&sb, &id, &["id", "-u"], b"")).trim(), "65534");
    assert_eq!(ok(&exec(&sb, &id, &["id", "-G"], b"")).trim(), "65534");
    assert_eq!(
        ok(&exec(&sb, &id, &["sh", "-c", "echo $GREETING"], b"")).trim(),
        "hello from the env"
    );
    // No fd of the daemon or the agent reaches it: ls sees 0, 1, 2 and its dir.
    let fds = ok(&exec(&sb, &id, &["ls", "/proc/self/fd"], b""));
    assert_eq!(
        fds.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    // stdin reaches the command; exit codes and signals pass through.
    assert_eq!(ok(&exec(&sb, &id, &["cat"], b"piped in\n")), "piped in\n");
    assert_eq!(
        exec(&sb, &id, &["sh", "-c", "exit 7"], b"").status.code(),
        Some(7)
    );
    assert_eq!(
        exec(&sb, &id, &["sh", "-c", "kill -TERM $$"], b"")
            .status
            .code(),
        Some(143)
    );
    let missing = exec(&sb, &id, &["no-such-command"], b"");
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-command"),
        "{missing:?}"
    );

    // Nothing is left: every exec reaped, the task's fds as they were, the
    // task still running.
    assert!(
        wait_until(LONG, || zombie_children(daemon).is_empty()),
        "zombies of the daemon: {:?}",
        zombie_children(daemon)
    );
    let left = ok(&exec(&sb, &id, &["ls", "/proc"], b""));
    let mut left: Vec<i32> = left.lines().filter_map(|l| l.parse().ok()).collect();
    left.sort_unstable();
    // This ls is the newest.
    left.pop();
    assert_eq!(
        left, task_side,
        "the task's processes and nothing of the execs"
    );
    assert_eq!(fd_count(task_pid), task_fds);
    assert_eq!(wait_task(&agent, &id, |_| true)["state"], "running");
}

#[test]
fn exec_in_a_raw_exec_task_has_its_cwd_and_env() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let (id, _) = start(
        &agent,
        r#"job "r" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
      env {
        MARK = "raw"
      }
    }
  }
}
"#,
    );
    let out = ok(&exec(&sb, &id, &["sh", "-c", "pwd; echo $MARK"], b""));
    let task_dir = sb.data_dir().join("allocs").join(&id).join("t");
    assert_eq!(out, format!("{}\nraw\n", task_dir.display()));
    assert_eq!(exec(&sb, &id, &["false"], b"").status.code(), Some(1));
}

#[test]
fn exec_is_refused_for_a_task_that_is_not_running() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let id = agent
        .submit(
            r#"job "d" {
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
"#,
        )
        .remove(0);
    wait_task(&agent, &id, |t| t["state"] == "dead");
    let out = exec(&sb, &id, &["true"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task t is not running (dead)"), "{err}");
    // Over plain HTTP: without the upgrade, and for a task there is not.
    let target = format!("/v1/allocations/{id}/tasks/t/exec");
    let r = agent.http("POST", &target, br#"{"argv": ["true"]}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Upgrade: tend-exec"), "{}", r.text());
    let r = agent.http("GET", &target, b"");
    assert_eq!(r.status, 405, "{}", r.text());
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

#[test]
fn exec_joins_the_tasks_cgroup_and_dies_when_its_caller_goes() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let (id, task_pid, daemon) = start_exec_task(&agent);
    let task_cgroups = std::fs::read_to_string(format!("/proc/{task_pid}/cgroup")).unwrap();
    let mine = ok(&exec(&sb, &id, &["cat", "/proc/self/cgroup"], b""));
    assert_eq!(mine, task_cgroups, "the exec's cgroups are the task's");

    let argv = ["sleep", "299"];
    let mut caller = exec_command(&sb, &[], &id, &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LONG, || pids_running(&argv).len() == 1),
        "the exec never ran"
    );
    caller.kill().unwrap();
    caller.wait().unwrap();
    assert!(
        wait_until(LONG, || pids_running(&argv).is_empty()
            && zombie_children(daemon).is_empty()),
        "the exec outlived its caller: {:?}",
        pids_running(&argv)
    );
    assert_eq!(wait_task(&agent, &id, |_| true)["state"], "running");
}

#[test]
fn exec_with_a_tty_gets_a_pty_as_its_controlling_terminal() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let (id, _, daemon) = start_exec_task(&agent);
    let run = |script: &str| {
        exec_command(&sb, &["-t"], &id, &["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Field 7 of stat is the controlling terminal's device: 0 for none.
    let out = run("test -t 0 && test -t 1 && echo on-a-tty; cut -d' ' -f7 /proc/$$/stat");
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines[0], "on-a-tty", "{text:?}");
    assert_ne!(lines[1], "0", "no controlling terminal: {text:?}");
    assert_eq!(run("exit 5").status.code(), Some(5));
    assert!(wait_until(LONG, || zombie_children(daemon).is_empty()));
}

/// The size of the SysV shared memory segment the namespaced task makes: a
/// size nothing else on the host is likely to have.
const TASK_SHM_SIZE: &str = "12345";

/// The sizes of the segments a /proc/sysvipc/shm text lists.
fn shm_sizes(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| Some(l.split_whitespace().nth(3)?.to_string()))
        .collect()
}

#[test]
fn exec_joins_the_uts_ipc_network_and_cgroup_namespaces_of_an_oci_task() {
    require_root!();
    let sb = Sandbox::new();
    let dir = sb.scratch_dir().join("bundle");
    let script = format!("ipcmk -M {TASK_SHM_SIZE} && echo made && exec sleep 300");
    let mut cfg = oci_bundle_config(&dir, &["sh", "-c", &script]);
    cfg["process"]["user"] = serde_json::json!({ "uid": 65534, "gid": 65534 });
    cfg["hostname"] = serde_json::json!("exec-box");
    cfg["linux"]["namespaces"] = serde_json::json!([
        { "type": "pid" }, { "type": "mount" }, { "type": "uts" }, { "type": "ipc" },
        { "type": "network" }, { "type": "cgroup" }
    ]);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&cfg).expect("config.json"),
    )
    .expect("write config.json");
    let agent = AgentProc::start(&sb);
    let job = format!(
        "job \"x\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"oci\"\n      config {{\n        bundle = \"{}\"\n      }}\n    }}\n  }}\n}}\n",
        dir.display()
    );
    let (id, _) = start(&agent, &job);
    assert!(
        wait_until(LONG, || {
            let out = agent.cli(&["logs", &id, "t"]);
            String::from_utf8_lossy(&out.stdout).contains("made\n")
        }),
        "the task made no segment: {:?}",
        agent.cli(&["logs", "--all", &id, "t"])
    );
    assert_eq!(ok(&exec(&sb, &id, &["hostname"], b"")), "exec-box\n");
    let links = ok(&exec(
        &sb,
        &id,
        &["/usr/sbin/ip", "-o", "link", "show"],
        b"",
    ));
    let links: Vec<&str> = links.lines().collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].starts_with("1: lo: <LOOPBACK,UP,"), "{links:?}");
    // The task's segment, and nothing of the host's.
    let shm = ok(&exec(&sb, &id, &["cat", "/proc/sysvipc/shm"], b""));
    assert_eq!(shm_sizes(&shm), [TASK_SHM_SIZE], "{shm}");
    let host = std::fs::read_to_string("/proc/sysvipc/shm").expect("host shm");
    assert!(
        !shm_sizes(&host).contains(&TASK_SHM_SIZE.to_string()),
        "{host}"
    );
    let cgroup = ok(&exec(&sb, &id, &["cat", "/proc/self/cgroup"], b""));
    assert!(cgroup_at_root(&cgroup), "{cgroup}");
}

/// A task whose main process made a user namespace of its own could make
/// every other kind inside it, and the exec shim would join those as root.
/// A chrooted process cannot make one (the kernel refuses CLONE_NEWUSER
/// under a chroot), which is the first guard; the shim's check of the
/// task's user namespace is the second, for a task with none of its own.
#[test]
fn a_task_in_its_own_root_cannot_make_a_user_namespace() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let id = agent
        .submit(
            r#"job "u" {
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "t" {
      driver = "exec"
      config {
        command = "unshare"
        args    = ["--user", "sleep", "300"]
      }
    }
  }
}
"#,
        )
        .remove(0);
    let t = wait_task(&agent, &id, |t| t["state"] == "dead");
    assert_eq!(t["exit"]["exit_code"], 1, "{t:#}");
    let log = fs::read_to_string(sb.find_alloc_dir().join("logs/t.stderr")).unwrap_or_default();
    assert!(log.contains("Operation not permitted"), "{log:?}");
}

//! `tend-spawn oci`: a bundle whose rootfs is this host's /bin, /lib, /lib64
//! and /usr bound read-only, run in the foreground, or created and started;
//! state, kill and delete from other processes; refusals that name the
//! field; nothing left after delete.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tend_tests::{
    cgroup_at_root, oci_bundle_config, pid_alive, require_root, spawn_bin, wait_until,
};

/// A bundle and a state root in one temp dir, removed on drop.
struct Oci {
    dir: tempfile::TempDir,
}

impl Oci {
    fn new(args: &[&str]) -> Oci {
        let o = Oci {
            dir: tempfile::Builder::new()
                .prefix("tend-oci-")
                .tempdir_in("/tmp")
                .unwrap(),
        };
        o.write_config(&o.config(args));
        o
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self, args: &[&str]) -> serde_json::Value {
        oci_bundle_config(&self.bundle(), args)
    }

    fn write_config(&self, config: &serde_json::Value) {
        fs::write(
            self.bundle().join("config.json"),
            serde_json::to_vec_pretty(config).unwrap(),
        )
        .unwrap();
    }

    /// `tend-spawn oci --root ROOT VERB ARGS...`
    fn cmd(&self, verb: &str, args: &[&str]) -> Command {
        let mut c = Command::new(spawn_bin());
        c.arg("oci")
            .arg("--root")
            .arg(self.root())
            .arg(verb)
            .args(args);
        c
    }

    fn run(&self, id: &str) -> Command {
        let mut c = self.cmd("run", &["-b", &self.bundle().display().to_string(), id]);
        c.stdin(Stdio::null());
        c
    }

    /// `run ID`, which must exit 0, then `delete ID`: what the task printed.
    fn run_and_delete(&self, id: &str) -> String {
        let out = self.run(id).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(self.cmd("delete", &[id]).status().unwrap().success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `VERB -b BUNDLE --pid-file DIR/ID.pid ID` (run or create), stdin
    /// /dev/null, and the pid file.
    fn with_pid_file(&self, verb: &str, id: &str) -> (Command, PathBuf) {
        let pid_file = self.dir.path().join(format!("{id}.pid"));
        let mut c = self.cmd(
            verb,
            &[
                "-b",
                &self.bundle().display().to_string(),
                "--pid-file",
                &pid_file.display().to_string(),
                id,
            ],
        );
        c.stdin(Stdio::null());
        (c, pid_file)
    }

    /// `create -b BUNDLE --pid-file DIR/ID.pid ID`, which must succeed: the
    /// pid it wrote.
    fn create(&self, id: &str) -> i32 {
        let (mut create, pid_file) = self.with_pid_file("create", id);
        let out = create.output().unwrap();
        assert!(
            out.status.success(),
            "create {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "create {id} printed {:?}",
            out.stdout
        );
        fs::read_to_string(&pid_file).unwrap().parse().unwrap()
    }

    /// The task's stdout log.
    fn stdout_log(&self, id: &str) -> String {
        fs::read_to_string(self.root().join(id).join("logs/task.stdout")).unwrap_or_default()
    }

    fn wait_status(&self, id: &str, status: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self
                .state(id)
                .is_some_and(|s| s["status"] == status)),
            "{id} never became {status}: {:?}",
            self.state(id)
        );
    }

    fn state(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.cmd("state", &[id]).output().unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("state prints JSON"))
    }

    fn wait_running(&self, id: &str) -> i32 {
        let mut pid = 0;
        assert!(
            wait_until(Duration::from_secs(10), || {
                match self.state(id) {
                    Some(s) if s["status"] == "running" => {
                        pid = i32::try_from(s["pid"].as_i64().unwrap()).unwrap();
                        true
                    }
                    _ => false,
                }
            }),
            "{id} never ran"
        );
        pid
    }
}

impl Drop for Oci {
    /// A failed test leaves no daemon: every container left is deleted.
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(self.root()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd("delete", &["--force", &id]).output();
            }
        }
    }
}

fn wait_child(child: &mut Child) -> Output {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let mut out = Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out.stdout).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut out.stderr).unwrap();
    }
    out
}

#[test]
fn run_passes_output_and_exit_code_and_delete_leaves_nothing() {
    require_root!();
    let o = Oci::new(&["sh", "-c", "echo out $GREETING; ls /; echo err >&2; exit 7"]);
    let out = o.run("c1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
    assert!(stdout.starts_with("out hello\n"), "stdout: {stdout}");
    // The task's root is the rootfs: its entries and the binds, not the host's.
    let listing: Vec<&str> = stdout.lines().skip(1).collect();
    assert!(
        listing.contains(&"usr") && listing.contains(&"etc"),
        "{listing:?}"
    );
    assert!(
        !listing.contains(&"root") && !listing.contains(&"home"),
        "{listing:?}"
    );
    assert_eq!(stderr, "err\n");
    // The usual exit status file, and the state says stopped.
    let exit: serde_json::Value =
        serde_json::from_slice(&fs::read(o.root().join("c1/task_exit_status")).unwrap()).unwrap();
    assert_eq!(exit["exit_code"], 7);
    let s = o.state("c1").unwrap();
    assert_eq!(s["status"], "stopped");
    assert_eq!(s["id"], "c1");
    assert_eq!(s["ociVersion"], "1.0.2");
    assert_eq!(s["bundle"], o.bundle().display().to_string());
    // A second run of the same id is refused while the first is recorded.
    let again = o.run("c1").output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let del = o.cmd("delete", &["c1"]).output().unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
    assert!(o.state("c1").is_none());
}

/// run's stdin reaches the task as it comes, to its end; once the task has
/// exited run lets its tend-spawn go, so nothing holds the container's files
/// (the record stays for state and delete).
#[test]
fn run_passes_its_stdin_to_the_task_and_lets_its_daemon_go() {
    require_root!();
    let o = Oci::new(&["sh", "-c", "read a; echo got $a; cat; echo end"]);
    let mut run = o
        .run("c8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = run.stdin.take().unwrap();
    {
        use std::io::Write;
        input.write_all(b"hi\n").unwrap();
        // The task answers the first line before the rest is written.
        let log = o.root().join("c8/logs/task.stdout");
        assert!(
            wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
                .is_ok_and(|t| t == "got hi\n")),
            "the first line did not reach the task"
        );
        input.write_all(b"there\n").unwrap();
    }
    drop(input);
    let out = wait_child(&mut run);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hi\nthere\nend\n");
    let dir = o.root().join("c8");
    let holders = tend_tests::holders_under(&dir);
    assert!(
        holders.is_empty(),
        "still in {}: {holders:?}",
        dir.display()
    );
    assert_eq!(o.state("c8").unwrap()["status"], "stopped");
    assert!(o.cmd("delete", &["c8"]).status().unwrap().success());
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// A bundle as `runc spec` leaves the root (`readonly: false`): the task
/// writes its root, the rootfs is not written, delete removes the writes.
#[test]
fn a_root_that_is_not_read_only_is_written_through_an_overlay() {
    require_root!();
    let script = "echo written > /etc/note && mkdir /made && cat /etc/note";
    let o = Oci::new(&["sh", "-c", script]);
    let mut config = o.config(&["sh", "-c", script]);
    config["root"]["readonly"] = serde_json::json!(false);
    o.write_config(&config);
    let out = o.run("w1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written\n");
    let rootfs = o.bundle().join("rootfs");
    assert!(!rootfs.join("etc/note").exists() && !rootfs.join("made").exists());
    let upper = o.root().join("w1/task/.tend-root/upper");
    assert_eq!(
        fs::read_to_string(upper.join("etc/note")).unwrap(),
        "written\n"
    );
    assert!(upper.join("made").is_dir());
    let del = o.cmd("delete", &["w1"]).output().unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

#[test]
fn state_and_kill_from_another_process() {
    require_root!();
    let o = Oci::new(&["sleep", "300"]);
    let mut run = o
        .run("c2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = o.wait_running("c2");
    assert!(pid_alive(pid), "state's pid {pid} is not alive");
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");

    let kill = o.cmd("kill", &["c2", "TERM"]).output().unwrap();
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    let out = wait_child(&mut run);
    assert_eq!(out.status.code(), Some(128 + 15));
    assert_eq!(o.state("c2").unwrap()["status"], "stopped");
    // kill of a stopped container is refused.
    assert!(!o.cmd("kill", &["c2"]).status().unwrap().success());
    assert!(o.cmd("delete", &["c2"]).status().unwrap().success());
    assert!(!pid_alive(pid));
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

#[test]
fn run_forwards_its_signals_and_delete_force_ends_a_running_task() {
    require_root!();
    let o = Oci::new(&["sleep", "300"]);
    let mut run = o.run("c3").spawn().unwrap();
    let pid = o.wait_running("c3");
    // Without --force a running container stays.
    let del = o.cmd("delete", &["c3"]).output().unwrap();
    assert!(!del.status.success());
    assert!(String::from_utf8_lossy(&del.stderr).contains("is running"));
    assert!(pid_alive(pid));
    let del = o.cmd("delete", &["--force", "c3"]).output().unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(wait_child(&mut run).status.code(), Some(128 + 9));
    assert!(!pid_alive(pid));
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);

    // A signal to run reaches the task.
    let mut run = o.run("c4").spawn().unwrap();
    let pid = o.wait_running("c4");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(run.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(wait_child(&mut run).status.code(), Some(128 + 2));
    assert!(!pid_alive(pid));
    assert!(o.cmd("delete", &["c4"]).status().unwrap().success());
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    require_root!();
    let o = Oci::new(&["true"]);
    let mut c = o.config(&["true"]);
    c["linux"]["namespaces"] =
        serde_json::json!([{ "type": "pid" }, { "type": "mount" }, { "type": "user" }]);
    o.write_config(&c);
    let out = o.run("c5").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "tend-oci: config.json: linux.namespaces[2]: type \"user\" is not supported"
    );
    // Nothing was made for it.
    assert!(!o.root().join("c5").exists());
    // A console socket is refused by name, and nothing is made for it.
    let bundle = o.bundle().display().to_string();
    let create = o
        .cmd(
            "create",
            &["-b", &bundle, "--console-socket", "/x.sock", "c6"],
        )
        .output()
        .unwrap();
    assert_eq!(create.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&create.stderr).contains("--console-socket is not supported"));
    assert!(!o.root().join("c6").exists());
}

/// The cgroup path of `pid` in the v1 hierarchy holding `controller`.
fn v1_cgroup(pid: i32, controller: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
}

#[test]
fn resources_reach_the_task_cgroup_and_delete_removes_it() {
    require_root!();
    if !std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").is_file() {
        return tend_tests::skip_or_fail("no cgroup v1 memory hierarchy");
    }
    let o = Oci::new(&["sleep", "300"]);
    let mut c = o.config(&["sleep", "300"]);
    let path = format!("tend-oci-test/{}-c7", std::process::id());
    c["linux"]["cgroupsPath"] = serde_json::json!(format!("/{path}"));
    c["linux"]["resources"] = serde_json::json!({
        "memory": { "limit": 64 << 20 },
        "pids": { "limit": 32 }
    });
    o.write_config(&c);
    let mut run = o.run("c7").spawn().unwrap();
    let pid = o.wait_running("c7");
    assert_eq!(
        v1_cgroup(pid, "memory").as_deref(),
        Some(&*format!("/{path}"))
    );
    let mem = PathBuf::from("/sys/fs/cgroup/memory").join(&path);
    let limit = fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let pids = PathBuf::from("/sys/fs/cgroup/pids").join(&path);
    if pids.is_dir() {
        assert_eq!(
            fs::read_to_string(pids.join("pids.max")).unwrap().trim(),
            "32"
        );
    }
    assert!(o
        .cmd("delete", &["--force", "c7"])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait_child(&mut run).status.code(), Some(128 + 9));
    assert!(
        wait_until(Duration::from_secs(5), || !mem.exists()),
        "{} is left",
        mem.display()
    );
    // tend-spawn removes the task's cgroup; its parent here is the test's.
    for m in tend_tests::cgroup_mounts() {
        let parent = m.join("tend-oci-test");
        let _ = fs::remove_dir(&parent);
        assert!(!parent.join(format!("{}-c7", std::process::id())).exists());
    }
}

/// As an unprivileged user (slurmstepd runs `run` as the job's user): the
/// task runs as the caller in the host's root; a rootfs is refused by name;
/// root's delete removes what the user's run made.
#[test]
fn run_as_an_unprivileged_user() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let o = Oci::new(&["true"]);
    fs::set_permissions(o.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(o.root()).unwrap();
    fs::set_permissions(o.root(), fs::Permissions::from_mode(0o1777)).unwrap();
    let as_nobody = |verb: &str, args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(spawn_bin())
            .arg("oci")
            .arg("--root")
            .arg(o.root())
            .arg(verb)
            .args(args)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let bundle = o.bundle().display().to_string();
    let out = as_nobody("run", &["-b", &bundle, "u1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("config.json: root.path: a root of its own needs root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = o.config(&["sh", "-c", "id -u; exit 5"]);
    c["root"] = serde_json::json!({ "path": "/" });
    c["mounts"] = serde_json::json!([]);
    o.write_config(&c);
    let out = as_nobody("run", &["-b", &bundle, "u1"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{NOBODY}\n"));
    let state = as_nobody("state", &["u1"]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "stopped");
    assert!(o.cmd("delete", &["u1"]).status().unwrap().success());
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// As root, process.user is the task's user, in the host's root too; a gid
/// other than the user's primary group is refused by name.
#[test]
fn process_user_is_the_tasks_user() {
    require_root!();
    let o = Oci::new(&["true"]);
    let mut c = o.config(&["sh", "-c", "id -u; id -g"]);
    c["root"] = serde_json::json!({ "path": "/" });
    c["mounts"] = serde_json::json!([]);
    c["process"]["user"] = serde_json::json!({ "uid": 65534, "gid": 65534 });
    o.write_config(&c);
    let out = o.run("p1").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "65534\n65534\n");
    assert!(o.cmd("delete", &["p1"]).status().unwrap().success());
    c["process"]["user"]["gid"] = serde_json::json!(0);
    o.write_config(&c);
    let out = o.run("p2").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("config.json: process.user.gid: 0 is not the primary group of uid 65534"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// runc's default maskedPaths and readonlyPaths are tend-spawn's own: a
/// bundle naming them runs, and they are masked and read-only in its root.
#[test]
fn runc_default_masked_and_readonly_paths_run() {
    require_root!();
    let o = Oci::new(&["true"]);
    let mut c = o.config(&[
        "sh",
        "-c",
        "wc -c </proc/keys; echo 1 >/proc/sys/kernel/domainname 2>/dev/null || echo ro",
    ]);
    // The unit tests of tend-oci pin runc's own list; here, every entry.
    use tend_proto::config::{
        PROC_MASKED_DIRS, PROC_MASKED_FILES, PROC_READ_ONLY, SYS_MASKED_DIRS,
    };
    let proc_ = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("/proc/{n}"))
            .collect::<Vec<_>>()
    };
    let mut masked = proc_(&PROC_MASKED_FILES);
    masked.extend(proc_(&PROC_MASKED_DIRS));
    masked.extend(SYS_MASKED_DIRS.iter().map(|n| format!("/sys/{n}")));
    c["linux"]["maskedPaths"] = serde_json::json!(masked);
    c["linux"]["readonlyPaths"] = serde_json::json!(proc_(&PROC_READ_ONLY));
    o.write_config(&c);
    let out = o.run("m1").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\nro\n");
    assert!(o.cmd("delete", &["m1"]).status().unwrap().success());
}

/// The comm of a live pid.
fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// create leaves the process prepared and not yet exec'd (state "created",
/// its pid the held process's, the pid file's); start runs it; its output
/// is in its log; state follows it to "stopped"; delete removes it.
#[test]
fn create_then_start_runs_the_process_and_state_follows_it() {
    require_root!();
    // Long enough to be seen running after start on the slowest lane (a
    // user-mode Linux guest, where each tend-oci call takes its time).
    let o = Oci::new(&["sh", "-c", "echo out $GREETING; sleep 2"]);
    let pid = o.create("l1");
    let s = o.state("l1").unwrap();
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["pid"], pid);
    assert_eq!(s["bundle"], o.bundle().display().to_string());
    assert!(pid_alive(pid));
    // Held before its execve: still tend-spawn's image, nothing of the command ran.
    assert_eq!(comm(pid), "tend-spawn");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(o.stdout_log("l1"), "");
    assert_eq!(o.state("l1").unwrap()["status"], "created");

    let start = o.cmd("start", &["l1"]).output().unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    // The same process, now the command.
    let s = o.state("l1").unwrap();
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["pid"], pid);
    assert_eq!(comm(pid), "sh");
    // A second start is refused.
    let again = o.cmd("start", &["l1"]).output().unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not created"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    o.wait_status("l1", "stopped");
    assert_eq!(o.stdout_log("l1"), "out hello\n");
    assert_eq!(o.state("l1").unwrap()["pid"], 0);
    let exit: serde_json::Value =
        serde_json::from_slice(&fs::read(o.root().join("l1/task_exit_status")).unwrap()).unwrap();
    assert_eq!(exit["exit_code"], 0);
    let del = o.cmd("delete", &["l1"]).output().unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
    assert!(!pid_alive(pid));
}

/// delete of a created container ends it without the process ever running,
/// and leaves nothing: no process, no cgroup, no mount, no state dir.
#[test]
fn delete_of_a_created_container_leaves_nothing_and_never_runs_it() {
    require_root!();
    let script = "echo ran";
    let o = Oci::new(&["sh", "-c", script]);
    let v1_memory = std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").is_file();
    let path = format!("tend-oci-test/{}-l2", std::process::id());
    if v1_memory {
        let mut c = o.config(&["sh", "-c", script]);
        c["linux"]["cgroupsPath"] = serde_json::json!(format!("/{path}"));
        c["linux"]["resources"] = serde_json::json!({ "memory": { "limit": 64 << 20 } });
        o.write_config(&c);
    }
    let pid = o.create("l2");
    assert_eq!(o.state("l2").unwrap()["status"], "created");
    let mem = PathBuf::from("/sys/fs/cgroup/memory").join(&path);
    if v1_memory {
        // The held process is in its cgroup already.
        assert_eq!(
            v1_cgroup(pid, "memory").as_deref(),
            Some(&*format!("/{path}"))
        );
    }
    let dir = o.root().join("l2");
    let del = o.cmd("delete", &["l2"]).output().unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert!(!dir.exists());
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(pid)),
        "{pid} lives"
    );
    assert!(tend_tests::holders_under(&dir).is_empty());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.display().to_string()),
        "a mount is left under {}",
        dir.display()
    );
    if v1_memory {
        assert!(
            wait_until(Duration::from_secs(5), || !mem.exists()),
            "{} is left",
            mem.display()
        );
        for m in tend_tests::cgroup_mounts() {
            let _ = fs::remove_dir(m.join("tend-oci-test"));
        }
    }
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// An execve that fails once started: start says why, and the container
/// is stopped (its held process left with 127).
#[test]
fn a_start_whose_exec_fails_says_why_and_the_container_stops() {
    require_root!();
    let o = Oci::new(&["/etc/plain"]);
    fs::write(o.bundle().join("rootfs/etc/plain"), "not a program\n").unwrap();
    o.create("l4");
    let start = o.cmd("start", &["l4"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exec /etc/plain: Permission denied"),
        "{stderr}"
    );
    o.wait_status("l4", "stopped");
    let exit: serde_json::Value =
        serde_json::from_slice(&fs::read(o.root().join("l4/task_exit_status")).unwrap()).unwrap();
    assert_eq!(exit["exit_code"], 127, "{exit}");
    assert!(o.cmd("delete", &["l4"]).status().unwrap().success());
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// run's --pid-file holds the task's pid, the one state gives.
#[test]
fn run_writes_the_tasks_pid_to_its_pid_file() {
    require_root!();
    let o = Oci::new(&["sleep", "300"]);
    let (mut run, pid_file) = o.with_pid_file("run", "r1");
    let mut run = run.spawn().unwrap();
    let pid = o.wait_running("r1");
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(&pid_file)
            .is_ok_and(|p| p == pid.to_string())),
        "{:?} is not {pid}",
        fs::read_to_string(&pid_file)
    );
    assert!(o
        .cmd("delete", &["--force", "r1"])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait_child(&mut run).status.code(), Some(128 + 9));
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// kill of a created container ends the held process (the command never
/// runs); state says stopped; delete removes it.
#[test]
fn kill_of_a_created_container_stops_it() {
    require_root!();
    let o = Oci::new(&["sleep", "300"]);
    let pid = o.create("l3");
    let kill = o.cmd("kill", &["l3", "KILL"]).output().unwrap();
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    o.wait_status("l3", "stopped");
    assert!(!pid_alive(pid));
    let exit: serde_json::Value =
        serde_json::from_slice(&fs::read(o.root().join("l3/task_exit_status")).unwrap()).unwrap();
    assert_eq!(exit["signal"], 9, "{exit}");
    // A stopped container neither starts nor takes a signal.
    assert!(!o.cmd("start", &["l3"]).status().unwrap().success());
    assert!(!o.cmd("kill", &["l3"]).status().unwrap().success());
    assert!(o.cmd("delete", &["l3"]).status().unwrap().success());
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// `linux.namespaces` of `config` with `extra` types after pid and mount.
fn with_namespaces(config: &mut serde_json::Value, extra: &[&str]) {
    let mut ns = vec![
        serde_json::json!({ "type": "pid" }),
        serde_json::json!({ "type": "mount" }),
    ];
    ns.extend(extra.iter().map(|t| serde_json::json!({ "type": t })));
    config["linux"]["namespaces"] = serde_json::json!(ns);
}

/// A uts namespace with the bundle's hostname: the task's name is its own,
/// the host's stays as it was.
#[test]
fn a_uts_namespace_has_the_bundles_hostname_and_the_host_keeps_its_own() {
    require_root!();
    let host = nix::unistd::gethostname().unwrap();
    let args = ["hostname"];
    let o = Oci::new(&args);
    let mut c = o.config(&args);
    with_namespaces(&mut c, &["uts"]);
    c["hostname"] = serde_json::json!("box1");
    o.write_config(&c);
    let out = o.run("u1").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "box1\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
    assert!(o.cmd("delete", &["u1"]).status().unwrap().success());
    // Without one, a hostname is refused by name.
    with_namespaces(&mut c, &[]);
    o.write_config(&c);
    let out = o.run("u2").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hostname: needs a uts namespace"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host SysV shared memory segment, removed on drop.
struct HostShm(i32);

impl HostShm {
    fn new() -> HostShm {
        let out = Command::new("ipcmk").args(["-M", "4096"]).output().unwrap();
        assert!(out.status.success(), "ipcmk: {:?}", out);
        // "Shared memory id: N"
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("ipcmk said {text:?}"));
        HostShm(id)
    }
}

impl Drop for HostShm {
    fn drop(&mut self) {
        let _ = Command::new("ipcrm")
            .args(["-m", &self.0.to_string()])
            .status();
    }
}

/// The shmids a task lists in its /proc/sysvipc/shm.
fn task_shmids(o: &Oci, id: &str) -> Vec<i32> {
    o.run_and_delete(id)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// An ipc namespace: the host's SysV objects are out of the task's sight
/// (a task without one sees them).
#[test]
fn an_ipc_namespace_sees_no_host_sysv_objects() {
    require_root!();
    let shm = HostShm::new();
    let args = ["cat", "/proc/sysvipc/shm"];
    let o = Oci::new(&args);
    assert!(
        task_shmids(&o, "i1").contains(&shm.0),
        "without an ipc namespace the host's segment {} is seen",
        shm.0
    );
    let mut c = o.config(&args);
    with_namespaces(&mut c, &["ipc"]);
    o.write_config(&c);
    let ids = task_shmids(&o, "i2");
    assert!(!ids.contains(&shm.0), "{ids:?} holds the host's {}", shm.0);
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// A network namespace: nothing but its loopback, up.
#[test]
fn a_network_namespace_has_only_its_loopback_up() {
    require_root!();
    let args = ["/usr/sbin/ip", "-o", "link", "show"];
    let o = Oci::new(&args);
    let mut c = o.config(&args);
    with_namespaces(&mut c, &["network"]);
    o.write_config(&c);
    let out = o.run("n1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links: Vec<&str> = stdout.lines().collect();
    assert_eq!(links.len(), 1, "{stdout}");
    assert!(links[0].starts_with("1: lo: <LOOPBACK,UP,"), "{stdout}");
    assert!(o.cmd("delete", &["n1"]).status().unwrap().success());
}

/// A cgroup namespace: the task's cgroup is the root of every hierarchy it
/// sees; without one it sees where it is.
#[test]
fn a_cgroup_namespace_is_rooted_at_the_tasks_cgroup() {
    require_root!();
    /// The tests' shared cgroup parent goes once it is empty, even when a
    /// test fails (another test's cgroup in it keeps it).
    struct Parent;
    impl Drop for Parent {
        fn drop(&mut self) {
            for m in tend_tests::cgroup_mounts() {
                let _ = fs::remove_dir(m.join("tend-oci-test"));
            }
        }
    }
    let _parent = Parent;
    let args = ["cat", "/proc/self/cgroup"];
    let o = Oci::new(&args);
    let mut c = o.config(&args);
    let path = format!("tend-oci-test/{}-g", std::process::id());
    c["linux"]["cgroupsPath"] = serde_json::json!(format!("/{path}"));
    c["linux"]["resources"] = serde_json::json!({ "pids": { "limit": 64 } });
    o.write_config(&c);
    let outside = o.run_and_delete("g1");
    assert!(
        outside.lines().any(|l| l.ends_with(&format!(":/{path}"))),
        "{outside}"
    );
    with_namespaces(&mut c, &["cgroup"]);
    o.write_config(&c);
    let inside = o.run_and_delete("g2");
    assert!(cgroup_at_root(&inside), "{inside}");
    assert_eq!(inside.lines().count(), outside.lines().count());
    assert_eq!(fs::read_dir(o.root()).unwrap().count(), 0);
}

/// Run `script` as `o`'s container `m`, with `mounts` after the host's binds
/// and the `linux` keys given (`maskedPaths`, `readonlyPaths`).
fn run_mounts(
    o: &Oci,
    script: &str,
    mounts: serde_json::Value,
    linux: serde_json::Value,
) -> Output {
    let mut c = o.config(&["sh", "-c", script]);
    c["mounts"]
        .as_array_mut()
        .unwrap()
        .extend(mounts.as_array().unwrap().iter().cloned());
    for (k, v) in linux.as_object().unwrap() {
        c["linux"][k] = v.clone();
    }
    o.write_config(&c);
    o.run("m").output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A host dir of the test's own, beside the bundle.
fn host_dir(o: &Oci, name: &str) -> PathBuf {
    let d = o.dir.path().join(name);
    fs::create_dir_all(&d).unwrap();
    d
}

/// No mount in the host's mount table lies under the test's dir.
fn nothing_mounted_under(o: &Oci) {
    let m = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = o.dir.path().display().to_string();
    assert!(!m.contains(&d), "a mount under {d} shows on the host:\n{m}");
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

fn bind(source: &std::path::Path, dest: &str, options: &[&str]) -> serde_json::Value {
    serde_json::json!({ "destination": dest, "type": "bind",
                        "source": source.display().to_string(), "options": options })
}

#[test]
fn a_read_write_bind_is_written_through_and_seen_on_the_host() {
    require_root!();
    let o = Oci::new(&["true"]);
    let shared = host_dir(&o, "shared");
    fs::write(shared.join("old"), "from the host\n").unwrap();
    let out = run_mounts(
        &o,
        "echo hi >/data/f && cat /data/old",
        serde_json::json!([bind(&shared, "/data", &["bind", "rw"])]),
        serde_json::json!({}),
    );
    assert_eq!(ok(&out), "from the host\n");
    assert_eq!(fs::read_to_string(shared.join("f")).unwrap(), "hi\n");
    assert!(o.cmd("delete", &["m"]).status().unwrap().success());
    nothing_mounted_under(&o);
}

#[test]
fn a_read_only_bind_refuses_a_write() {
    require_root!();
    let o = Oci::new(&["true"]);
    let shared = host_dir(&o, "shared");
    let out = run_mounts(
        &o,
        "{ echo hi >/data/f; } 2>&1 || echo refused",
        serde_json::json!([bind(&shared, "/data", &["rbind", "ro", "nosuid", "nodev"])]),
        serde_json::json!({}),
    );
    let stdout = ok(&out);
    assert!(stdout.contains("Read-only file system"), "{stdout}");
    assert!(stdout.ends_with("refused\n"), "{stdout}");
    assert!(!shared.join("f").exists());
}

#[test]
fn a_noexec_bind_runs_nothing() {
    require_root!();
    let o = Oci::new(&["true"]);
    let shared = host_dir(&o, "shared");
    fs::copy("/bin/true", shared.join("true")).unwrap();
    let out = run_mounts(
        &o,
        "/x/true; echo exec $?; /y/true; echo exec $?",
        serde_json::json!([
            bind(&shared, "/x", &["bind", "ro", "noexec"]),
            bind(&shared, "/y", &["bind", "ro"])
        ]),
        serde_json::json!({}),
    );
    let stdout = ok(&out);
    assert_eq!(stdout, "exec 126\nexec 0\n", "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Permission denied"));
}

#[test]
fn a_tmpfs_has_its_size_and_a_write_past_it_fails() {
    require_root!();
    let o = Oci::new(&["true"]);
    let out = run_mounts(
        &o,
        "stat -f -c '%b %S' /run; stat -c %a /run; \
         dd if=/dev/zero of=/run/f bs=1024 count=2048 2>&1 | grep -o 'No space left on device'; \
         stat -f -c '%b %S' /dev/shm",
        serde_json::json!([
            { "destination": "/run", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "size=1m", "mode=750"] },
            // runc spec's /dev/shm.
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }
        ]),
        serde_json::json!({}),
    );
    let stdout = ok(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    let bytes = |l: &str| -> u64 {
        let (b, s) = l.split_once(' ').unwrap();
        b.parse::<u64>().unwrap() * s.parse::<u64>().unwrap()
    };
    assert_eq!(bytes(lines[0]), 1 << 20, "{stdout}");
    assert_eq!(lines[1], "750", "{stdout}");
    assert_eq!(lines[2], "No space left on device", "{stdout}");
    assert_eq!(bytes(lines[3]), 64 << 20, "{stdout}");
}

#[test]
fn masked_paths_read_empty_and_absent_ones_are_skipped() {
    require_root!();
    let o = Oci::new(&["true"]);
    let etc = o.bundle().join("rootfs/etc");
    fs::write(etc.join("secret"), "s3cret\n").unwrap();
    fs::create_dir_all(etc.join("secrets.d")).unwrap();
    fs::write(etc.join("secrets.d/key"), "k\n").unwrap();
    let out = run_mounts(
        &o,
        "cat /etc/secret; echo .; ls -A /etc/secrets.d | wc -l; \
         touch /etc/secrets.d/x 2>/dev/null || echo ro",
        serde_json::json!([]),
        serde_json::json!({ "maskedPaths": ["/etc/secret", "/etc/secrets.d", "/etc/absent"] }),
    );
    assert_eq!(ok(&out), ".\n0\nro\n");
    // The rootfs keeps its files.
    assert_eq!(fs::read_to_string(etc.join("secret")).unwrap(), "s3cret\n");
}

#[test]
fn a_read_only_path_beyond_the_default_set_refuses_a_write() {
    require_root!();
    let o = Oci::new(&["true"]);
    let shared = host_dir(&o, "shared");
    fs::create_dir_all(shared.join("sub")).unwrap();
    let out = run_mounts(
        &o,
        "echo a >/data/f && { echo b >/data/sub/f; } 2>&1 || true",
        serde_json::json!([bind(&shared, "/data", &["rbind"])]),
        serde_json::json!({ "readonlyPaths": ["/data/sub", "/data/absent"] }),
    );
    let stdout = ok(&out);
    assert!(stdout.contains("Read-only file system"), "{stdout}");
    assert_eq!(fs::read_to_string(shared.join("f")).unwrap(), "a\n");
    assert!(!shared.join("sub/f").exists());
}

#[test]
fn a_bundle_mount_over_tmp_wins_over_tend_spawns() {
    require_root!();
    let o = Oci::new(&["true"]);
    let shared = host_dir(&o, "shared");
    fs::write(shared.join("marker"), "").unwrap();
    let out = run_mounts(
        &o,
        "ls /tmp; echo x >/tmp/new",
        serde_json::json!([bind(&shared, "/tmp", &["rbind", "rw"])]),
        serde_json::json!({}),
    );
    assert_eq!(ok(&out), "marker\n");
    assert!(shared.join("new").exists());
    // A tmpfs at /tmp asking for no more than tend-spawn's own is that one.
    let o = Oci::new(&["true"]);
    let out = run_mounts(
        &o,
        "stat -f -c '%b %S' /tmp",
        serde_json::json!([{ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "mode=1777"] }]),
        serde_json::json!({}),
    );
    let (b, s) = ok(&out)
        .trim()
        .split_once(' ')
        .map(|(b, s)| (b.to_string(), s.to_string()))
        .unwrap();
    assert_eq!(
        b.parse::<u64>().unwrap() * s.parse::<u64>().unwrap(),
        64 << 20
    );
}

#[test]
fn a_mount_through_a_planted_symlink_fails_the_start_and_mounts_nothing() {
    require_root!();
    let o = Oci::new(&["true"]);
    // /local is a dir the task writes: here a host dir holding a link out.
    let local = host_dir(&o, "local");
    let outside = host_dir(&o, "outside");
    std::os::unix::fs::symlink(&outside, local.join("evil")).unwrap();
    let usr = std::path::Path::new("/usr");
    let out = run_mounts(
        &o,
        "true",
        serde_json::json!([
            bind(&local, "/local", &["rbind", "rw"]),
            bind(usr, "/local/evil/x", &["rbind", "ro"])
        ]),
        serde_json::json!({}),
    );
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/usr on /local/evil/x") && stderr.contains("symbolic links"),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    nothing_mounted_under(&o);
    // The link itself as the target fails the same way.
    let o2 = Oci::new(&["true"]);
    let local = host_dir(&o2, "local");
    std::os::unix::fs::symlink(&outside, local.join("evil")).unwrap();
    let out = run_mounts(
        &o2,
        "true",
        serde_json::json!([
            bind(&local, "/local", &["rbind", "rw"]),
            bind(usr, "/local/evil", &["rbind", "ro"])
        ]),
        serde_json::json!({}),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("/usr on /local/evil"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    nothing_mounted_under(&o2);
}

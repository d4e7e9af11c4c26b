//! End-to-end tests of the agent's `oci` driver as root: a runtime-spec
//! bundle (and a bare rootfs) built in the sandbox from this host's static
//! busybox (or, without one, with this host's /bin, /lib, /lib64 and /usr
//! bound in), run by the built agent under tend-spawn. Output is read with
//! `tend logs`, the exit code in the API's status and the exit file; stop,
//! reattach after an agent restart and the refusal of a bundle field are
//! checked from the host.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tend_tests::{
    alloc_exit_path, cgroup_at_root, oci_bundle_config, pid_alive, require_root, wait_until,
    AgentProc, CgroupParent, Sandbox,
};

const LONG: Duration = Duration::from_secs(30);
const BUSYBOX: &str = "/bin/busybox";

/// Whether the host has a static busybox to make a rootfs of: a 64-bit ELF
/// with no PT_INTERP program header (no dynamic loader to find).
fn static_busybox() -> bool {
    let Ok(elf) = fs::read(BUSYBOX) else {
        return false;
    };
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(n)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let phoff = usize::try_from(phoff).unwrap_or(usize::MAX);
    (0..usize::from(n)).all(|i| {
        let at = phoff.saturating_add(i * usize::from(size));
        elf.get(at..at + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

/// A bundle in `dir` running `args` as nobody: a rootfs holding busybox
/// (and its applets' links) when the host has a static one, else this
/// host's dirs bound in read-only over an empty rootfs.
fn bundle(dir: &Path, args: &[&str]) -> Value {
    let mut cfg = oci_bundle_config(dir, args);
    if static_busybox() {
        let bin = dir.join("rootfs/bin");
        fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
        for applet in [
            "sh", "echo", "sleep", "cat", "ls", "touch", "id", "grep", "hostname",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        cfg["mounts"] = json!([]);
    }
    cfg["process"]["user"] = json!({ "uid": 65534, "gid": 65534 });
    cfg["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FROM_BUNDLE=bundle", "SHARED=bundle"]);
    cfg
}

fn write_bundle(dir: &Path, cfg: &Value) {
    fs::create_dir_all(dir).expect("bundle dir");
    fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(cfg).expect("config.json"),
    )
    .expect("write config.json");
}

fn oci_job(name: &str, config: &str) -> String {
    format!(
        r#"job "{name}" {{
  group "g" {{
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    task "t" {{
      driver = "oci"
      config {{
{config}
      }}
      env {{
        FROM_JOB = "job"
        SHARED   = "job"
      }}
      resources {{
        memory = 64
      }}
    }}
  }}
}}
"#
    )
}

/// An agent in a sandbox of its own, its tasks' cgroups under a parent of
/// this test; dropped in that order (the agent, every process of the
/// sandbox, then the cgroups).
struct Rig {
    agent: AgentProc,
    sb: Sandbox,
    _parent: CgroupParent,
}

fn rig() -> Rig {
    let parent = CgroupParent::new();
    let sb = Sandbox::new();
    let agent =
        AgentProc::start_with_config(&sb, &format!("cgroup_parent = \"{}\"\n", parent.name));
    Rig {
        agent,
        sb,
        _parent: parent,
    }
}

fn task_of(agent: &AgentProc, id: &str) -> Value {
    agent.get_json(&format!("/v1/allocations/{id}"))["tasks"][0].clone()
}

fn wait_task(agent: &AgentProc, id: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        last = task_of(agent, id);
        f(&last)
    });
    assert!(ok, "task never got there: {last:#}\n{}", agent.log());
    last
}

fn alloc_dir(sb: &Sandbox, id: &str) -> PathBuf {
    sb.data_dir().join("allocs").join(id)
}

fn logs(agent: &AgentProc, id: &str) -> String {
    let out = agent.cli(&["logs", id, "t"]);
    assert!(out.status.success(), "tend logs: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid(t: &Value, key: &str) -> i32 {
    i32::try_from(t[key].as_i64().unwrap_or_else(|| panic!("no {key}: {t:#}"))).expect("pid")
}

#[test]
fn a_bundle_runs_with_the_jobs_env_over_its_own_and_its_exit_is_recorded() {
    require_root!();
    let r = rig();
    let (agent, sb) = (&r.agent, &r.sb);
    let dir = sb.scratch_dir().join("bundle");
    let script = "echo out-of-the-bundle; echo $FROM_BUNDLE $FROM_JOB $SHARED; id -u; \
                  ls /; echo err-of-the-bundle >&2; exit 7";
    write_bundle(&dir, &bundle(&dir, &["sh", "-c", script]));
    let job = oci_job("b", &format!("        bundle = \"{}\"", dir.display()));
    let id = agent.submit(&job).remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "dead");
    assert_eq!(t["exit"]["exit_code"], 7, "{t:#}");
    let exit: Value = serde_json::from_slice(
        &fs::read(alloc_exit_path(&alloc_dir(sb, &id), "t")).expect("exit file"),
    )
    .expect("exit file JSON");
    assert_eq!(exit["exit_code"], 7, "{exit:#}");
    let out = logs(agent, &id);
    assert!(out.contains("out-of-the-bundle\n"), "{out}");
    // The job file's env goes over the bundle's, name by name.
    assert!(out.contains("bundle job job\n"), "{out}");
    assert!(out.contains("65534\n"), "not the bundle's user: {out}");
    // Its root is the rootfs's: the host's /root or /home are not in it.
    assert!(!out.contains("root\n") && out.contains("alloc\n"), "{out}");
    let err = agent.cli(&["logs", "--stderr", &id, "t"]);
    assert!(
        String::from_utf8_lossy(&err.stdout).contains("err-of-the-bundle\n"),
        "{err:?}"
    );
}

#[test]
fn a_rootfs_task_is_stopped_after_an_agent_restart_took_it_up_again() {
    require_root!();
    if !static_busybox() {
        // A rootfs of its own, without binds, needs a static shell in it.
        eprintln!("skipped: no static {BUSYBOX} to make a rootfs of");
        return;
    }
    let mut r = rig();
    let (agent, sb) = (&mut r.agent, &r.sb);
    let dir = sb.scratch_dir().join("image");
    // The bundle only makes the rootfs; the task runs a command of its own.
    write_bundle(&dir, &bundle(&dir, &["true"]));
    let rootfs = dir.join("rootfs");
    let cmd = "sh";
    let job = oci_job(
        "r",
        &format!(
            "        rootfs  = \"{}\"\n        command = \"{cmd}\"\n        args    = [\"-c\", \"trap 'echo bye; exit 3' TERM; echo up; while :; do sleep 0.05; done\"]",
            rootfs.display()
        ),
    );
    let id = agent.submit(&job).remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    let (task_pid, daemon_pid) = (pid(&t, "pid"), pid(&t, "daemon_pid"));
    assert!(wait_until(LONG, || logs(agent, &id).contains("up\n")));
    agent.kill9();
    assert!(pid_alive(task_pid) && pid_alive(daemon_pid));
    agent.restart();
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    assert_eq!(pid(&t, "pid"), task_pid, "{t:#}");
    assert_eq!(pid(&t, "daemon_pid"), daemon_pid, "{t:#}");
    let out = agent.cli(&["stop", &id]);
    assert!(out.status.success(), "{out:?}");
    let t = wait_task(agent, &id, |t| t["state"] == "dead");
    assert_eq!(t["exit"]["exit_code"], 3, "{t:#}");
    assert_eq!(t["run"], 1, "restarted after stop: {t:#}");
    assert!(wait_until(LONG, || logs(agent, &id).contains("bye\n")));
    assert!(wait_until(LONG, || !pid_alive(task_pid)));
}

#[test]
fn a_bundle_field_tend_cannot_do_is_refused_at_submit_by_its_path() {
    require_root!();
    let r = rig();
    let (agent, sb) = (&r.agent, &r.sb);
    let dir = sb.scratch_dir().join("caps");
    let mut cfg = bundle(&dir, &["true"]);
    cfg["process"]["capabilities"] = json!({ "bounding": ["CAP_NET_ADMIN"] });
    write_bundle(&dir, &cfg);
    let job = oci_job("c", &format!("        bundle = \"{}\"", dir.display()));
    let r = agent.http("POST", "/v1/jobs", job.as_bytes());
    assert!(r.status >= 400, "{} {}", r.status, r.text());
    assert!(
        r.text()
            .contains("config.json: process.capabilities: is not supported"),
        "{}",
        r.text()
    );
    assert!(agent.get_json("/v1/allocations")["allocations"]
        .as_array()
        .is_none_or(Vec::is_empty));
    // `tend validate` on this host names the line of `bundle` too.
    let file = sb.write_job("c.hcl", &job);
    let out = agent.cli(&["validate", file.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "c.hcl:10:18: job.c.group.g.task.t.config.bundle: config.json: process.capabilities"
        ) && text.contains("process.capabilities"),
        "{text}"
    );
}

#[test]
fn a_writable_root_takes_the_tasks_writes_and_the_image_stays_as_it_was() {
    require_root!();
    if !static_busybox() {
        eprintln!("skipped: no static {BUSYBOX} to make an image of");
        return;
    }
    let r = rig();
    let (agent, sb) = (&r.agent, &r.sb);
    let dir = sb.scratch_dir().join("rw");
    let script = "echo new > /data/note && echo changed > /data/old && cat /data/old /data/note \
                  && grep -E '^[0-9]+ [0-9]+ [^ ]+ / / ' /proc/self/mountinfo";
    let mut cfg = bundle(&dir, &["sh", "-c", script]);
    // As `runc spec` writes a bundle: the root is not read-only.
    cfg["root"]["readonly"] = json!(false);
    write_bundle(&dir, &cfg);
    let data = dir.join("rootfs/data");
    fs::create_dir(&data).expect("rootfs/data");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).expect("chmod data");
    fs::write(data.join("old"), "image\n").expect("data/old");
    fs::set_permissions(data.join("old"), fs::Permissions::from_mode(0o666)).expect("chmod old");
    let job = oci_job("w", &format!("        bundle = \"{}\"", dir.display()));
    let id = agent.submit(&job).remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "dead");
    let out = logs(agent, &id);
    assert_eq!(t["exit"]["exit_code"], 0, "{t:#}\n{out}");
    assert!(out.starts_with("changed\nnew\n"), "{out}");
    // The root is an overlay, nosuid and nodev.
    let root_line = out.lines().nth(2).unwrap_or_default();
    assert!(
        root_line.contains("nosuid")
            && root_line.contains("nodev")
            && root_line.contains(" - overlay "),
        "{root_line}"
    );
    // The image is as it was; the writes are in the task dir's upper dir.
    assert_eq!(
        fs::read_to_string(data.join("old")).expect("old"),
        "image\n"
    );
    assert!(!data.join("note").exists());
    let upper = alloc_dir(sb, &id).join("t/.tend-root/upper/data");
    assert_eq!(
        fs::read_to_string(upper.join("note")).expect("upper note"),
        "new\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("old")).expect("upper old"),
        "changed\n"
    );

    // The same image as a rootfs with `writable = true`.
    let job = oci_job(
        "wr",
        &format!(
            "        rootfs   = \"{}\"\n        writable = true\n        command  = \"/bin/sh\"\n        args     = [\"-c\", \"echo again > /data/old && cat /data/old\"]",
            dir.join("rootfs").display()
        ),
    );
    let id = agent.submit(&job).remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "dead");
    assert_eq!(t["exit"]["exit_code"], 0, "{t:#}\n{}", logs(agent, &id));
    assert_eq!(logs(agent, &id), "again\n");
    assert_eq!(
        fs::read_to_string(data.join("old")).expect("old"),
        "image\n"
    );
    let upper = alloc_dir(sb, &id).join("t/.tend-root/upper/data/old");
    assert_eq!(fs::read_to_string(upper).expect("upper old"), "again\n");
}

/// The interfaces a /proc/net/dev text lists (the reader's network namespace).
fn net_devices(dev: &str) -> Vec<String> {
    dev.lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect()
}

/// `tend exec ID t -- ARGV...`: its stdout, which must come with code 0.
fn exec_ok(agent: &AgentProc, id: &str, argv: &[&str]) -> String {
    let mut args = vec!["exec", id, "t", "--"];
    args.extend(argv);
    let out = agent.cli(&args);
    assert_eq!(out.status.code(), Some(0), "tend exec {argv:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_bundles_namespaces_are_the_tasks_and_tend_exec_joins_them_after_a_restart() {
    require_root!();
    let host = nix::unistd::gethostname().expect("hostname");
    let mut r = rig();
    let (agent, sb) = (&mut r.agent, &r.sb);
    let dir = sb.scratch_dir().join("ns");
    let script = "hostname; echo --; cat /proc/net/dev; echo --; cat /proc/self/cgroup; echo --; \
                  exec sleep 300";
    let mut cfg = bundle(&dir, &["sh", "-c", script]);
    cfg["hostname"] = json!("box-ns");
    cfg["linux"]["namespaces"] = json!([
        { "type": "pid" }, { "type": "mount" }, { "type": "uts" }, { "type": "ipc" },
        { "type": "network" }, { "type": "cgroup" }
    ]);
    write_bundle(&dir, &cfg);
    let id = agent
        .submit(&oci_job(
            "n",
            &format!("        bundle = \"{}\"", dir.display()),
        ))
        .remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    let (task_pid, daemon_pid) = (pid(&t, "pid"), pid(&t, "daemon_pid"));
    assert!(
        wait_until(LONG, || logs(agent, &id).matches("--\n").count() == 3),
        "{}",
        logs(agent, &id)
    );
    let out = logs(agent, &id);
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(parts[0], "box-ns\n", "{out}");
    assert_eq!(nix::unistd::gethostname().expect("hostname"), host);
    assert_eq!(net_devices(parts[1]), ["lo"], "{out}");
    assert!(cgroup_at_root(parts[2]), "{out}");
    // The namespaces are the task's: an agent that restarts takes the task
    // up again as it is, and `tend exec` joins them.
    agent.kill9();
    agent.restart();
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    assert_eq!(
        (pid(&t, "pid"), pid(&t, "daemon_pid")),
        (task_pid, daemon_pid)
    );
    assert_eq!(exec_ok(agent, &id, &["hostname"]), "box-ns\n");
    let dev = exec_ok(agent, &id, &["cat", "/proc/net/dev"]);
    assert_eq!(net_devices(&dev), ["lo"], "{dev}");
    let cgroup = exec_ok(agent, &id, &["cat", "/proc/self/cgroup"]);
    assert!(cgroup_at_root(&cgroup), "{cgroup}");
    let out = agent.cli(&["stop", &id]);
    assert!(out.status.success(), "{out:?}");
    wait_task(agent, &id, |t| t["state"] == "dead");
    assert!(wait_until(LONG, || !pid_alive(task_pid)));
}

#[test]
fn a_bundles_read_write_bind_and_tmpfs_reach_the_agents_task() {
    require_root!();
    let parent = CgroupParent::new();
    let sb = &Sandbox::new();
    // A read-write bind of a host path writes the host: the operator says so.
    let refusing =
        AgentProc::start_with_config(sb, &format!("cgroup_parent = \"{}\"\n", parent.name));
    let dir = sb.scratch_dir().join("binds");
    let shared = sb.scratch_dir().join("shared");
    fs::create_dir_all(&shared).expect("shared dir");
    // The task runs as nobody.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).expect("chmod shared");
    let script = "echo from-the-task > /shared/note && echo x > /run/f && cat /run/f \
                  && grep ' /run ' /proc/self/mountinfo";
    let mut cfg = bundle(&dir, &["sh", "-c", script]);
    let mounts = cfg["mounts"].as_array_mut().expect("mounts");
    mounts.push(json!({ "destination": "/shared", "type": "bind",
                        "source": shared.display().to_string(), "options": ["rbind", "rw"] }));
    mounts.push(
        json!({ "destination": "/run", "type": "tmpfs", "source": "tmpfs",
                        "options": ["size=1m", "mode=1777", "noexec"] }),
    );
    write_bundle(&dir, &cfg);
    let job = oci_job("m", &format!("        bundle = \"{}\"", dir.display()));
    let r = refusing.http("POST", "/v1/jobs", job.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("needs plugin \\\"oci\\\" { allow_host_binds = true }"),
        "{}",
        r.text()
    );
    drop(refusing);
    let agent = &AgentProc::start_with_config(
        sb,
        &format!(
            "cgroup_parent = \"{}\"\nplugin \"oci\" {{\n  allow_host_binds = true\n}}\n",
            parent.name
        ),
    );
    let id = agent.submit(&job).remove(0);
    let t = wait_task(agent, &id, |t| t["state"] == "dead");
    let out = logs(agent, &id);
    assert_eq!(t["exit"]["exit_code"], 0, "{t:#}\n{out}");
    assert!(out.starts_with("x\n"), "{out}");
    // A writable mount is nosuid and nodev; the tmpfs has its size.
    let run = out.lines().nth(1).unwrap_or_default();
    assert!(
        run.contains("nosuid")
            && run.contains("nodev")
            && run.contains("noexec")
            && run.contains("size=1024k"),
        "{run}"
    );
    assert_eq!(
        fs::read_to_string(shared.join("note")).expect("note on the host"),
        "from-the-task\n"
    );
    let m = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!m.contains(shared.to_str().expect("utf-8")), "{m}");
}

/// `tend-spawn oci --root ROOT ARGS...`, stdin /dev/null.
fn oci(root: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tend_tests::spawn_bin())
        .arg("oci")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tend-spawn oci")
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_running_container_of_tend_spawn_oci_is_adopted_and_kept_across_an_agent_restart() {
    require_root!();
    let mut r = rig();
    let parent = r._parent.name.clone();
    let (agent, sb) = (&mut r.agent, &r.sb);
    let dir = sb.scratch_dir().join("adoptee");
    let script = "trap 'echo bye; exit 3' TERM; echo hello-adopted; while :; do sleep 0.05; done";
    let mut cfg = bundle(&dir, &["sh", "-c", script]);
    cfg["linux"]["resources"] = json!({ "memory": { "limit": 64 << 20 } });
    cfg["linux"]["cgroupsPath"] = json!(format!("{parent}/adoptee"));
    write_bundle(&dir, &cfg);
    let root = sb.scratch_dir().join("oci-state");
    let root_arg = root.display().to_string();
    let bundle_arg = dir.display().to_string();
    let out = oci(&root, &["create", "-b", &bundle_arg, "c1"]);
    assert!(out.status.success(), "create: {}", stderr_of(&out));

    // Held before its start: nothing runs yet to take up.
    let out = agent.cli(&["adopt", "--root", &root_arg, "c1"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out)
            .contains("container c1 is created (not started): only a running container is adopted"),
        "{}",
        stderr_of(&out)
    );
    let out = oci(&root, &["start", "c1"]);
    assert!(out.status.success(), "start: {}", stderr_of(&out));
    let state: Value = serde_json::from_slice(&oci(&root, &["state", "c1"]).stdout).expect("state");
    assert_eq!(state["status"], "running", "{state:#}");

    let out = agent.cli(&[
        "adopt", "--root", &root_arg, "--job", "adopted", "--json", "c1",
    ]);
    assert!(out.status.success(), "adopt: {}", stderr_of(&out));
    let adopted: Value = serde_json::from_slice(&out.stdout).expect("adopt --json");
    let id = adopted["id"].as_str().expect("id").to_string();
    assert_eq!(
        adopted["container_dir"],
        root.join("c1").display().to_string()
    );
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    let task_pid = pid(&t, "pid");
    assert_eq!(
        i64::from(task_pid),
        state["pid"].as_i64().expect("pid"),
        "{t:#}"
    );
    let alloc = agent.get_json(&format!("/v1/allocations/{id}"));
    assert_eq!(alloc["job"], "adopted", "{alloc:#}");
    let task_logs = |agent: &AgentProc| {
        let out = agent.cli(&["logs", &id, "task"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(wait_until(LONG, || task_logs(agent).contains("hello-adopted\n")));
    // The figures are its cgroup's.
    let stats = agent.get_json(&format!("/v1/allocations/{id}/stats"));
    assert!(
        stats["tasks"][0]["memory"]["current"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "{stats:#}"
    );
    // Once is enough.
    let out = agent.cli(&["adopt", "--root", &root_arg, "c1"]);
    assert!(
        stderr_of(&out).contains(&format!(
            "container c1 is already adopted as allocation {id}"
        )),
        "{}",
        stderr_of(&out)
    );

    agent.kill9();
    assert!(pid_alive(task_pid));
    agent.restart();
    let t = wait_task(agent, &id, |t| t["state"] == "running");
    assert_eq!(pid(&t, "pid"), task_pid, "{t:#}");
    let out = agent.cli(&["stop", &id]);
    assert!(out.status.success(), "stop: {}", stderr_of(&out));
    let t = wait_task(agent, &id, |t| t["state"] == "dead");
    assert_eq!(t["exit"]["exit_code"], 3, "{t:#}");
    assert_eq!(
        t["run"], 1,
        "an adopted container is never started again: {t:#}"
    );
    assert!(wait_until(LONG, || task_logs(agent).contains("bye\n")));
    assert!(wait_until(LONG, || !pid_alive(task_pid)));
    // The runtime sees the same end, and removes what is its own.
    assert!(wait_until(LONG, || {
        serde_json::from_slice::<Value>(&oci(&root, &["state", "c1"]).stdout)
            .is_ok_and(|s| s["status"] == "stopped")
    }));
    let out = oci(&root, &["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", stderr_of(&out));
    assert!(!root.join("c1").exists());
    // The record stays the agent's: its dir was the container's, not an alloc dir.
    assert!(!alloc_dir(sb, &id).exists());
}

#[test]
fn a_container_another_user_could_have_written_or_none_at_all_is_refused_by_path() {
    require_root!();
    let r = rig();
    let (agent, sb) = (&r.agent, &r.sb);
    let root = sb.scratch_dir().join("theirs");
    fs::create_dir_all(root.join("c2/ctl")).expect("container dir");
    fs::write(root.join("c2/state.json"), "{}").expect("state.json");
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).expect("chown");
    let root_arg = root.display().to_string();
    let r = agent.http(
        "POST",
        "/v1/adopt",
        json!({ "root": root_arg, "id": "c2" })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("owned by uid 65534"), "{}", r.text());
    let r = agent.http(
        "POST",
        "/v1/adopt",
        json!({ "root": root_arg, "id": "nope" })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.text().contains("container nope does not exist"),
        "{}",
        r.text()
    );
    for (body, words) in [
        (
            json!({ "root": "rel", "id": "c2" }),
            "want an absolute path",
        ),
        (json!({ "root": root_arg, "id": "../x" }), "container id"),
        (json!({ "id": "c2", "extra": 1 }), "unknown field"),
    ] {
        let r = agent.http("POST", "/v1/adopt", body.to_string().as_bytes());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(words), "{body}: {}", r.text());
    }
    assert_eq!(agent.get_json("/v1/allocations")["allocations"], json!([]));
}

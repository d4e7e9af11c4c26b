//! The docker driver under the agent: a container beside an exec task in one
//! allocation, and a container that outlives an agent restart. Needs the engine
//! of `.ci/docker-up` (`$TEND_TEST_DOCKER_SOCK`); without one each test prints
//! "skipped: no docker engine" and passes (under `CI=true` it fails).

use std::time::Duration;

use serde_json::Value;
use tend_tests::docker::{cli as docker, socket, TEST_IMAGE};
use tend_tests::job::{JobFile, Task};
use tend_tests::{
    random_u64, require_docker, require_root, wait_alloc_exit, wait_until, AgentProc, Sandbox,
};

const IMAGE: &str = TEST_IMAGE;
const LONG: Duration = Duration::from_secs(60);

/// The containers carrying `label` (`KEY=VALUE`).
fn containers_labelled(label: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label={label}")])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn alloc_label(alloc_id: &str) -> String {
    format!("tend.alloc_id={alloc_id}")
}

fn containers_of(alloc_id: &str) -> Vec<String> {
    containers_labelled(&alloc_label(alloc_id))
}

/// Removes the containers carrying the labels (`KEY=VALUE`) a test gave, even
/// when it fails.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for label in &self.0 {
            let ids = containers_labelled(label);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
    }
}

fn agent(sb: &Sandbox) -> AgentProc {
    agent_with(sb, "")
}

/// An agent whose `plugin "docker"` block also holds `options`.
fn agent_with(sb: &Sandbox, options: &str) -> AgentProc {
    AgentProc::start_with_config(
        sb,
        &format!(
            "plugin \"docker\" {{\n  endpoint = \"{}\"\n{options}}}\n",
            socket().display()
        ),
    )
}

/// `tend run` of `job` against the agent.
fn run(a: &AgentProc, sb: &Sandbox, job: &str) -> std::process::Output {
    let path = sb.data_dir().join("job.hcl");
    std::fs::write(&path, job).unwrap();
    a.cli(&["run", "--json", path.to_str().unwrap()])
}

fn submit(a: &AgentProc, sb: &Sandbox, job: &str) -> String {
    let out = run(a, sb, job);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["allocations"][0].as_str().unwrap().to_string()
}

/// The message of a submission the agent refuses.
fn refused(a: &AgentProc, sb: &Sandbox, job: &str) -> String {
    let out = run(a, sb, job);
    assert!(
        !out.status.success(),
        "submitted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn task<'a>(alloc: &'a Value, name: &str) -> &'a Value {
    alloc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
}

fn wait_dead(a: &AgentProc, id: &str, name: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        last = a.get_json(&format!("/v1/allocations/{id}"));
        task(&last, name)["state"] == "dead"
    });
    assert!(ok, "task {name} never ended: {last:#}");
    task(&last, name).clone()
}

#[test]
fn a_container_and_an_exec_task_share_alloc() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let a = agent(&sb);
    let job = format!(
        r#"job "mixed" {{
  group "g" {{
    task "box" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sh"
        args    = ["-c", "echo from-docker > $TEND_ALLOC_DIR/docker.txt; while [ ! -f /alloc/exec.txt ]; do sleep 0.1; done; cat /alloc/exec.txt"]
      }}
    }}
    task "proc" {{
      driver = "exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", "while [ ! -f /alloc/docker.txt ]; do sleep 0.1; done; cat /alloc/docker.txt; echo from-exec > $TEND_ALLOC_DIR/exec.txt"]
      }}
    }}
  }}
}}
"#
    );
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    for name in ["box", "proc"] {
        let t = wait_dead(&a, &id, name);
        assert_eq!(t["exit"]["exit_code"], 0, "{name}: {t:#}");
    }
    let logs = |t: &str| {
        std::fs::read_to_string(
            sb.data_dir()
                .join("allocs")
                .join(&id)
                .join("logs")
                .join(format!("{t}.stdout")),
        )
        .unwrap_or_default()
    };
    assert_eq!(logs("box").trim(), "from-exec");
    assert_eq!(logs("proc").trim(), "from-docker");
    assert!(
        wait_until(LONG, || containers_of(&id).is_empty()),
        "the container is removed once its exit is recorded"
    );
}

#[test]
fn a_container_outlives_an_agent_restart_and_its_exit_is_recorded() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let mut a = agent(&sb);
    let job = format!(
        r#"job "c" {{
  group "g" {{
    restart {{
      attempts = 0
    }}
    task "early" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sh"
        args    = ["-c", "sleep 1; echo early done; exit 6"]
      }}
    }}
    task "late" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sh"
        args    = ["-c", "sleep 4; echo late done; exit 5"]
      }}
    }}
  }}
}}
"#
    );
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    let running = wait_until(LONG, || {
        let v = a.get_json(&format!("/v1/allocations/{id}"));
        ["early", "late"]
            .iter()
            .all(|n| task(&v, n)["state"] == "running" && task(&v, n)["container_id"].is_string())
    });
    assert!(running, "both containers run");
    a.kill9();
    // "early" ends while the agent is away; "late" is still running when it is back.
    std::thread::sleep(Duration::from_millis(1500));
    a.restart();
    let early = wait_dead(&a, &id, "early");
    assert_eq!(early["exit"]["exit_code"], 6, "{early:#}");
    assert_eq!(early["lost"], false);
    let v = a.get_json(&format!("/v1/allocations/{id}"));
    let late = task(&v, "late");
    assert!(
        late["state"] == "running" || late["exit"]["exit_code"] == 5,
        "late was reattached: {late:#}"
    );
    let late = wait_dead(&a, &id, "late");
    assert_eq!(late["exit"]["exit_code"], 5, "{late:#}");
    let out = a.cli(&["logs", &id, "late"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "late done");
    let out = a.cli(&["logs", &id, "early"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "early done");
    assert!(
        wait_until(LONG, || containers_of(&id).is_empty()),
        "no container left"
    );
}

#[test]
fn a_container_removed_while_the_agent_is_away_is_lost_never_zero() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let mut a = agent(&sb);
    let job = format!(
        r#"job "v" {{
  group "g" {{
    restart {{
      attempts = 0
    }}
    task "gone" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sleep"
        args    = ["300"]
      }}
    }}
  }}
}}
"#
    );
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    let mut cid = String::new();
    assert!(wait_until(LONG, || {
        let v = a.get_json(&format!("/v1/allocations/{id}"));
        cid = task(&v, "gone")["container_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !cid.is_empty()
    }));
    a.kill9();
    assert!(docker(&["rm", "-f", &cid]).is_some());
    a.restart();
    let t = wait_dead(&a, &id, "gone");
    assert_eq!(t["lost"], true, "{t:#}");
    assert!(
        t["exit"].is_null(),
        "a vanished container has no exit, never 0: {t:#}"
    );
}

#[test]
fn caps_and_a_task_dir_volume_reach_the_container_and_host_asks_are_refused_at_submit() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let a = agent_with(&sb, "  allowed_caps = [\"NET_ADMIN\"]\n");
    let job = format!(
        r#"job "caps" {{
  group "g" {{
    restart {{
      attempts = 0
    }}
    task "box" {{
      driver = "docker"
      config {{
        image    = "{IMAGE}"
        command  = "/bin/sh"
        args     = ["-c", "grep CapEff /proc/self/status; echo from-container > /data/proof"]
        cap_add  = ["NET_ADMIN"]
        cap_drop = ["ALL"]
        volumes  = ["shared:/data"]
      }}
    }}
  }}
}}
"#
    );
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    let t = wait_dead(&a, &id, "box");
    assert_eq!(t["exit"]["exit_code"], 0, "{t:#}");

    // `shared` is taken from the task's dir in the alloc: the file written at
    // /data inside the container is there on the host.
    let proof = sb
        .data_dir()
        .join("allocs")
        .join(&id)
        .join("box/shared/proof");
    assert_eq!(
        std::fs::read_to_string(&proof).unwrap_or_default(),
        "from-container\n",
        "{}",
        proof.display()
    );
    let out = a.cli(&["logs", &id, "box"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let cap_eff = stdout
        .trim()
        .strip_prefix("CapEff:")
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff line in {stdout:?}"));
    const CAP_CHOWN: u64 = 1 << 0;
    const CAP_NET_ADMIN: u64 = 1 << 12;
    assert_ne!(
        cap_eff & CAP_NET_ADMIN,
        0,
        "NET_ADMIN is added: {cap_eff:#x}"
    );
    assert_eq!(cap_eff & CAP_CHOWN, 0, "CHOWN is dropped: {cap_eff:#x}");
    assert_eq!(cap_eff, CAP_NET_ADMIN, "ALL is dropped but NET_ADMIN");

    // What the agent does not allow is refused at submit, naming the option
    // that would allow it; no allocation, no container.
    let run_label = format!("tend_test_run={}", tend_tests::random_u64());
    let (key, value) = run_label.split_once('=').unwrap();
    let greedy = |extra: &str| {
        format!(
            r#"job "greedy" {{
  group "g" {{
    task "box" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/true"
        labels  = {{ {key} = "{value}" }}
        cap_add = ["SYS_ADMIN"]
{extra}
      }}
    }}
  }}
}}
"#
        )
    };
    let _refused_guard = Containers(vec![run_label.clone()]);
    let e = refused(&a, &sb, &greedy("        volumes = [\"/etc:/host-etc\"]"));
    assert!(
        e.contains(
            "task box: config.volumes: the agent does not allow binds outside the alloc dir \
             (/etc -> /host-etc) (set allow_host_binds = true in plugin \"docker\")"
        ),
        "{e}"
    );
    let e = refused(&a, &sb, &greedy(""));
    assert!(
        e.contains(
            "task box: config.cap_add: the agent does not allow capability SYS_ADMIN \
             (set allowed_caps = [..., \"SYS_ADMIN\"] in plugin \"docker\")"
        ),
        "{e}"
    );
    let allocs = a.get_json("/v1/allocations");
    assert_eq!(
        allocs["allocations"].as_array().unwrap().len(),
        1,
        "{allocs:#}"
    );
    assert!(containers_labelled(&run_label).is_empty());
}

#[test]
fn a_containers_stats_come_from_the_engine_and_match_docker_stats() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let a = agent(&sb);
    // Three processes: the shell and its two sleeps.
    let job = format!(
        r#"job "s" {{
  group "g" {{
    restart {{
      attempts = 0
    }}
    task "c" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sh"
        args    = ["-c", "sleep 300 & sleep 300 & wait"]
      }}
    }}
  }}
}}
"#
    );
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    let mut v = Value::Null;
    let ok = wait_until(LONG, || {
        v = a.get_json(&format!("/v1/allocations/{id}/stats"));
        v["tasks"][0]["pids"].as_u64() == Some(3)
    });
    assert!(ok, "the container's three processes never showed: {v:#}");
    let t = &v["tasks"][0];
    assert_eq!(t["driver"], "docker", "{v:#}");
    assert!(t["reason"].is_null(), "{v:#}");
    assert!(
        t["memory"]["current"].as_u64().is_some_and(|m| m > 0),
        "{v:#}"
    );
    assert!(t["cpu"]["usage_us"].is_u64(), "{v:#}");
    // The engine's own count agrees.
    let container = task(&a.get_json(&format!("/v1/allocations/{id}")), "c")["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let engine = docker(&["stats", "--no-stream", "--format", "{{.PIDs}}", &container]);
    assert_eq!(engine.as_deref().map(str::trim), Some("3"), "{v:#}");
    let out = a.cli(&["stop", &id]);
    assert!(out.status.success(), "{out:?}");
    let v = a.get_json(&format!("/v1/allocations/{id}/stats"));
    assert_eq!(v["tasks"][0]["reason"], "the task is dead", "{v:#}");
}

/// A one-task docker job whose task has a name of its own (its containers
/// are found and removed by the `tend.task` label), and the config of the
/// agent `tend run` embeds: the test engine's endpoint.
fn foreground_job(sb: &Sandbox, script: &str, extra: &str) -> (String, std::path::PathBuf) {
    let name = format!("fg{}", random_u64() % 1_000_000_000);
    let args = serde_json::to_string(&["-c", script]).unwrap();
    let job = sb.write_job(
        "job.hcl",
        &format!(
            r#"job "fg" {{
  group "g" {{
    task "{name}" {{
      driver = "docker"
{extra}
      config {{
        image   = "{IMAGE}"
        command = "/bin/sh"
        args    = {args}
      }}
    }}
  }}
}}
"#
        ),
    );
    sb.write_job(
        "agent.hcl",
        &format!(
            "plugin \"docker\" {{\n  endpoint = \"{}\"\n}}\n",
            socket().display()
        ),
    );
    (name, job)
}

#[test]
fn tend_run_runs_a_docker_task_with_no_agent() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let (name, job) = foreground_job(
        &sb,
        "echo out from $TEND_TASK_NAME; echo err line >&2; exit 4",
        "",
    );
    let _guard = Containers(vec![format!("tend.task={name}")]);
    let out = sb.run_tend(
        &["run", "--config", "agent.hcl", job.to_str().unwrap()],
        LONG,
    );
    assert_eq!(out.code, Some(4), "{out}");
    assert!(
        out.stderr.contains("running the job in the foreground"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("==> {name}: started (container ")),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("==> {name}: exited with code 4\n")),
        "{out}"
    );
    // The output is echoed as the agent copies it from the engine.
    assert!(out.stdout.contains(&format!("out from {name}\n")), "{out}");
    assert!(out.stderr.contains("err line\n"), "{out}");
    // The same exit and log files as under the agent.
    let alloc = sb.find_alloc_dir();
    let exit = wait_alloc_exit(&alloc, &name, LONG);
    assert_eq!(exit.exit_code, Some(4), "{exit:?}");
    assert_eq!(exit.run, 1);
    let log = std::fs::read_to_string(tend_tests::alloc_log_path(&alloc, &name, "stdout"))
        .unwrap_or_default();
    assert_eq!(log, format!("out from {name}\n"));
    assert!(
        containers_labelled(&format!("tend.task={name}")).is_empty(),
        "the container is removed once its exit is recorded"
    );
    // The embedded agent's state goes with it.
    assert!(
        !sb.run_dir().join("foreground").exists(),
        "{:?}",
        std::fs::read_dir(sb.run_dir().join("foreground")).map(|d| d.count())
    );
}

#[test]
fn ctrl_c_stops_a_foreground_container_with_its_kill_signal() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let (name, job) = foreground_job(
        &sb,
        r#"trap "echo got TERM; exit 5" TERM; echo ready; while :; do sleep 0.1; done"#,
        "      kill_signal  = \"SIGTERM\"\n      kill_timeout = \"20s\"",
    );
    let _guard = Containers(vec![format!("tend.task={name}")]);
    let run = sb.spawn_tend(&["run", "--config", "agent.hcl", job.to_str().unwrap()]);
    run.wait_stderr(&format!("==> {name}: started (container "), LONG);
    let alloc = sb.find_alloc_dir();
    let log = tend_tests::alloc_log_path(&alloc, &name, "stdout");
    assert!(wait_until(LONG, || std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")));
    run.signal(nix::sys::signal::Signal::SIGINT);
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(5), "{out}");
    assert!(
        out.stderr.contains("==> interrupt: stopping the tasks"),
        "{out}"
    );
    assert!(out.stdout.contains("got TERM\n"), "{out}");
    assert_eq!(wait_alloc_exit(&alloc, &name, LONG).exit_code, Some(5));
    assert!(containers_labelled(&format!("tend.task={name}")).is_empty());
}

#[test]
fn cpu_hard_limit_caps_the_container_and_oom_kill_group_is_refused_at_submit() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    // One core of 1000 MHz per core: cpu = 250 is a quarter core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let a = AgentProc::start_with_config(
        &sb,
        &format!(
            "cpu_total_compute = {}\nplugin \"docker\" {{\n  endpoint = \"{}\"\n}}\n",
            1000 * cores,
            socket().display()
        ),
    );
    let job = |extra: &str| {
        format!(
            r#"job "capped" {{
  group "g" {{
    restart {{
      attempts = 0
    }}
    task "box" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sh"
        args    = ["-c", "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us > /local/quota 2>/dev/null || cat /sys/fs/cgroup/cpu.max > /local/quota"]
      }}
      resources {{
        cpu            = 250
        cpu_hard_limit = true
        io_weight      = 500
{extra}      }}
    }}
  }}
}}
"#
        )
    };
    let id = submit(&a, &sb, &job(""));
    let _guard = Containers(vec![alloc_label(&id)]);
    let t = wait_dead(&a, &id, "box");
    assert_eq!(t["exit"]["exit_code"], 0, "{t:#}");
    // What the kernel holds for the container, read from inside it.
    let quota = std::fs::read_to_string(
        sb.data_dir()
            .join("allocs")
            .join(&id)
            .join("box/local/quota"),
    )
    .unwrap();
    let figures: Vec<&str> = quota.split_whitespace().collect();
    assert_eq!(figures, ["25000", "100000"], "{quota:?}");

    let e = refused(&a, &sb, &job("        oom_kill_group = true\n"));
    assert!(
        e.contains("resources.oom_kill_group: the docker driver cannot set it"),
        "{e}"
    );
}

#[test]
fn tend_exec_refuses_a_docker_task_and_names_the_driver() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let a = agent(&sb);
    let job = format!(
        r#"job "ex" {{
  group "g" {{
    task "box" {{
      driver = "docker"
      config {{
        image   = "{IMAGE}"
        command = "/bin/sleep"
        args    = ["300"]
      }}
    }}
  }}
}}
"#
    );
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    let ok = wait_until(LONG, || {
        task(&a.get_json(&format!("/v1/allocations/{id}")), "box")["state"] == "running"
    });
    assert!(ok, "the container never ran");
    let out = a.cli(&["exec", &id, "box", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs under the docker driver") && err.contains("docker exec"),
        "{err}"
    );
    let stopped = a.cli(&["stop", &id]);
    assert!(stopped.status.success(), "{stopped:?}");
}

/// A container's two streams, copied by the agent, come back in the order the
/// container wrote them, by the engine's own stamps (the log index's times).
#[test]
fn a_containers_log_shows_both_streams_in_order_and_since_cuts_between_writes() {
    require_root!();
    require_docker!();
    let sb = Sandbox::new();
    let a = agent(&sb);
    let script = "for i in 1 2 3; do echo out $i; sleep 0.3; echo err $i >&2; sleep 0.3; done";
    let job = JobFile::new("turns")
        .task(Task::sh("box", script).docker(IMAGE))
        .to_string();
    let id = submit(&a, &sb, &job);
    let _guard = Containers(vec![alloc_label(&id)]);
    wait_dead(&a, &id, "box");
    let logs = |args: &[&str]| {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&id, "box"]);
        let o = a.cli(&all);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let expected = "stdout | out 1\nstderr | err 1\nstdout | out 2\nstderr | err 2\nstdout | out 3\nstderr | err 3\n";
    // The copy may end a moment after the container.
    let mut got = String::new();
    let copied = wait_until(LONG, || {
        got = logs(&["--all"]);
        got == expected
    });
    assert!(copied, "{got}");
    let lines: Vec<Value> = logs(&["--all", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let time =
        |i: usize| tend_proto::time::parse_rfc3339(lines[i]["time"].as_str().unwrap()).unwrap();
    // Halfway between "out 2" and "err 2".
    let gap = time(3).duration_since(time(2)).unwrap();
    assert!(gap >= Duration::from_millis(200), "{lines:?}");
    let t = tend_proto::time::rfc3339(time(2) + gap / 2);
    assert_eq!(logs(&["--since", &t]), "out 3\n");
    assert_eq!(
        logs(&["--since", &t, "--all"]),
        "stderr | err 2\nstdout | out 3\nstderr | err 3\n"
    );
}

//! End-to-end tests of `tend run` in the foreground (no agent), `tend validate`
//! and `tend job init`, driving the built `tend` binary as a user runs it.
//!
//! Every test has its own sandbox (`--data-dir`, `--run-dir`); no timing is
//! asserted but generous upper bounds that prove "never a hang".

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tend_proto::ExitStatus;
use tend_tests::{alloc_log_path, pid_alive, wait_alloc_exit, wait_until, Sandbox, TendOutput};

/// The bound of a `tend run` that should take a moment.
const LONG: Duration = Duration::from_secs(30);

/// A one-task raw_exec job running `/bin/sh -c SCRIPT`; `extra` goes into the task block.
fn sh_job(job: &str, task: &str, script: &str, extra: &str) -> String {
    format!(
        r#"job "{job}" {{
  group "g" {{
    task "{task}" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", {script:?}]
      }}
{extra}
    }}
  }}
}}
"#
    )
}

/// `tend run FILE` to its end.
fn tend_run(sb: &Sandbox, job: &Path, timeout: Duration) -> TendOutput {
    sb.run_tend(&[OsStr::new("run"), job.as_os_str()], timeout)
}

fn run_args(job: &Path) -> [&OsStr; 2] {
    [OsStr::new("run"), job.as_os_str()]
}

/// The exit status file of `task` in the sandbox's only allocation.
fn exit_of(sb: &Sandbox, task: &str) -> (PathBuf, ExitStatus) {
    let alloc = sb.find_alloc_dir();
    let exit = wait_alloc_exit(&alloc, task, LONG);
    (alloc, exit)
}

fn log_of(alloc: &Path, task: &str) -> String {
    fs::read_to_string(alloc_log_path(alloc, task, "stdout")).unwrap_or_default()
}

#[test]
fn exit_zero_and_three_reach_the_exit_code_and_the_exit_file() {
    for code in [0, 3] {
        let sb = Sandbox::new();
        let job = sb.write_job(
            "job.hcl",
            &sh_job(
                "hello",
                "greet",
                &format!("echo out from $TEND_TASK_NAME; echo err line >&2; exit {code}"),
                "",
            ),
        );
        let out = tend_run(&sb, &job, LONG);
        assert_eq!(out.code, Some(code), "{out}");
        assert!(out.stdout.contains("out from greet\n"), "{out}");
        assert!(out.stderr.contains("err line\n"), "{out}");
        let (task_pid, daemon_pid) =
            tend_tests::started_pids(&out.stderr, "greet").unwrap_or_else(|| panic!("{out}"));
        assert_ne!(task_pid, daemon_pid);
        assert!(
            out.stderr
                .contains(&format!("==> greet: exited with code {code}\n")),
            "{out}"
        );

        let (alloc, exit) = exit_of(&sb, "greet");
        assert_eq!(exit.exit_code, Some(code));
        assert_eq!(exit.signal, None);
        assert_eq!(exit.wait_status, Some(code << 8));
        assert_eq!(exit.run, 1);
        assert_eq!(exit.pid, Some(task_pid));
        assert_eq!(exit.task, "greet");
        assert_eq!(
            Some(exit.alloc_id.as_str()),
            alloc.file_name().and_then(|n| n.to_str())
        );
        let started = exit.started_at.clone().expect("started_at");
        // RFC 3339 UTC with a fixed width: the text order is the time order.
        assert_eq!(started.len(), exit.finished_at.len(), "{exit:?}");
        assert!(started <= exit.finished_at, "{exit:?}");
        assert_eq!(exit.error, None);
        assert_eq!(log_of(&alloc, "greet"), "out from greet\n");
    }
}

#[test]
fn a_task_killed_by_sigkill_from_outside_gives_137() {
    let sb = Sandbox::new();
    let job = sb.write_job("job.hcl", &sh_job("j", "sleeper", "exec sleep 30", ""));
    let run = sb.spawn_tend(&run_args(&job));
    let (task_pid, _) = run.wait_started("sleeper", LONG);
    kill(Pid::from_raw(task_pid), Signal::SIGKILL).unwrap();
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(137), "{out}");
    assert!(
        out.stderr
            .contains("==> sleeper: killed by signal 9 (SIGKILL)"),
        "{out}"
    );
    let (_, exit) = exit_of(&sb, "sleeper");
    assert_eq!(exit.signal, Some(9));
    assert_eq!(exit.exit_code, None);
    assert_eq!(exit.wait_status, Some(9));
    assert_eq!(exit.pid, Some(task_pid));
}

#[test]
fn a_missing_command_fails_with_127_and_says_why() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        r#"job "j" {
  group "g" {
    task "nope" {
      driver = "raw_exec"
      config {
        command = "/nonexistent"
      }
    }
  }
}
"#,
    );
    let out = tend_run(&sb, &job, Duration::from_secs(10));
    assert_eq!(out.code, Some(127), "{out}");
    assert!(out.stderr.contains("/nonexistent"), "{out}");
    assert!(out.stderr.contains("No such file or directory"), "{out}");
    assert!(!out.stderr.contains("started (pid"), "{out}");
    let (_, exit) = exit_of(&sb, "nope");
    assert_eq!(exit.exit_code, None);
    assert!(
        exit.error
            .as_deref()
            .is_some_and(|e| e.contains("/nonexistent")),
        "{exit:?}"
    );
}

#[test]
fn tasks_survive_a_sigkill_of_tend_run() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        &sh_job(
            "j",
            "ticker",
            "i=0; while [ $i -lt 30 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7",
            "",
        ),
    );
    let run = sb.spawn_tend(&run_args(&job));
    let (task_pid, daemon_pid) = run.wait_started("ticker", LONG);
    let alloc = sb.find_alloc_dir();
    let log = alloc_log_path(&alloc, "ticker", "stdout");
    assert!(wait_until(LONG, || log_of(&alloc, "ticker").contains("tick 0\n")));

    run.signal(Signal::SIGKILL);
    let out = run.wait(LONG);
    assert_eq!(out.signal, Some(9), "{out}");
    assert!(pid_alive(task_pid), "the task died with tend run");
    assert!(pid_alive(daemon_pid), "tend-spawn died with tend run");

    let size_at_kill = fs::metadata(&log).unwrap().len();
    assert!(
        wait_until(LONG, || fs::metadata(&log).unwrap().len() > size_at_kill),
        "the log stopped growing when tend run died"
    );
    let exit = wait_alloc_exit(&alloc, "ticker", LONG);
    assert_eq!(exit.exit_code, Some(7));
    assert_eq!(exit.pid, Some(task_pid));
    let text = log_of(&alloc, "ticker");
    assert!(text.ends_with("tick 29\n"), "{text}");
    assert_eq!(text.lines().count(), 30, "{text}");
}

#[test]
fn several_tasks_are_prefixed_and_the_first_failure_in_file_order_wins() {
    let sb = Sandbox::new();
    let task = |name: &str, script: &str| {
        format!(
            r#"    task "{name}" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", {script:?}]
      }}
    }}
"#
        )
    };
    // b fails later than c, yet b comes first in the file.
    let job = sb.write_job(
        "job.hcl",
        &format!(
            "job \"multi\" {{\n  group \"g\" {{\n{}{}{}  }}\n}}\n",
            task("a", "echo line from a; echo err from a >&2"),
            task("b", "sleep 0.5; echo line from b; exit 4"),
            task("c", "echo line from c; exit 2"),
        ),
    );
    let out = tend_run(&sb, &job, LONG);
    assert_eq!(out.code, Some(4), "{out}");
    for t in ["a", "b", "c"] {
        assert!(
            out.stdout.contains(&format!("{t} | line from {t}\n")),
            "{out}"
        );
        assert!(tend_tests::started_pids(&out.stderr, t).is_some(), "{out}");
    }
    assert!(out.stderr.contains("a | err from a\n"), "{out}");
    assert!(out.stderr.contains("==> a: exited with code 0"), "{out}");
    assert!(out.stderr.contains("==> b: exited with code 4"), "{out}");
    assert!(out.stderr.contains("==> c: exited with code 2"), "{out}");
    // Every line is whole and prefixed.
    for line in out.stdout.lines() {
        assert!(
            ["a | ", "b | ", "c | "].iter().any(|p| line.starts_with(p)),
            "{out}"
        );
    }
    let alloc = sb.find_alloc_dir();
    for (t, code) in [("a", 0), ("b", 4), ("c", 2)] {
        assert_eq!(wait_alloc_exit(&alloc, t, LONG).exit_code, Some(code));
        // The log files hold the task's own lines, without prefix.
        assert_eq!(log_of(&alloc, t), format!("line from {t}\n"));
    }
}

#[test]
fn ctrl_c_stops_the_task_with_its_kill_signal() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        &sh_job(
            "j",
            "trapper",
            r#"trap "echo got TERM; exit 5" TERM; echo ready; while :; do sleep 0.1; done"#,
            "      kill_signal  = \"SIGTERM\"\n      kill_timeout = \"20s\"",
        ),
    );
    let run = sb.spawn_tend(&run_args(&job));
    let (task_pid, _) = run.wait_started("trapper", LONG);
    let alloc = sb.find_alloc_dir();
    // The trap is set once the task printed "ready".
    assert!(wait_until(LONG, || log_of(&alloc, "trapper").contains("ready")));
    run.signal(Signal::SIGINT);
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(5), "{out}");
    assert!(
        out.stderr.contains("==> interrupt: stopping the tasks"),
        "{out}"
    );
    assert!(out.stdout.contains("got TERM\n"), "{out}");
    assert!(log_of(&alloc, "trapper").contains("got TERM\n"));
    let exit = wait_alloc_exit(&alloc, "trapper", LONG);
    assert_eq!(exit.exit_code, Some(5));
    assert!(!pid_alive(task_pid));
}

#[test]
fn ctrl_c_kills_a_task_that_ignores_its_kill_signal_after_kill_timeout() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        &sh_job(
            "j",
            "stubborn",
            r#"trap "" TERM; echo ready; while :; do sleep 0.1; done"#,
            "      kill_signal  = \"SIGTERM\"\n      kill_timeout = \"1s\"",
        ),
    );
    let run = sb.spawn_tend(&run_args(&job));
    let (task_pid, _) = run.wait_started("stubborn", LONG);
    let alloc = sb.find_alloc_dir();
    assert!(wait_until(LONG, || log_of(&alloc, "stubborn").contains("ready")));
    run.signal(Signal::SIGINT);
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(137), "{out}");
    let exit = wait_alloc_exit(&alloc, "stubborn", LONG);
    assert_eq!(exit.signal, Some(9));
    assert_eq!(exit.exit_code, None);
    assert!(!pid_alive(task_pid));
}

#[test]
fn sigterm_to_tend_run_stops_the_tasks_too() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        &sh_job(
            "j",
            "trapper",
            r#"trap "echo got TERM; exit 6" TERM; echo ready; while :; do sleep 0.1; done"#,
            "",
        ),
    );
    let run = sb.spawn_tend(&run_args(&job));
    run.wait_started("trapper", LONG);
    let alloc = sb.find_alloc_dir();
    assert!(wait_until(LONG, || log_of(&alloc, "trapper").contains("ready")));
    run.signal(Signal::SIGTERM);
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(6), "{out}");
    assert!(
        out.stderr.contains("==> terminated: stopping the tasks"),
        "{out}"
    );
    assert_eq!(wait_alloc_exit(&alloc, "trapper", LONG).exit_code, Some(6));
}

#[test]
fn a_200_character_data_dir_works() {
    let sb = Sandbox::with_data_dir_len(200);
    assert_eq!(sb.data_dir().as_os_str().len(), 200);
    let job = sb.write_job("job.hcl", &sh_job("j", "t", "echo deep; exit 3", ""));
    let out = tend_run(&sb, &job, LONG);
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("deep\n"), "{out}");
    let (alloc, exit) = exit_of(&sb, "t");
    assert!(alloc.starts_with(sb.data_dir()));
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(log_of(&alloc, "t"), "deep\n");
}

/// A port nobody holds now (bound on 0, then closed); outside the dynamic range.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn the_task_environment_is_exactly_the_tend_variables_and_its_env() {
    let sb = Sandbox::new();
    let db_port = free_port();
    let job = sb.write_job(
        "job.hcl",
        &format!(
            r#"job "envjob" {{
  meta {{
    owner    = "job-owner"
    level    = "job"
    only_job = "j"
  }}
  group "grp" {{
    meta {{
      level      = "group"
      only_group = "g"
    }}
    task "show" {{
      driver = "raw_exec"
      meta {{
        level = "task"
      }}
      config {{
        command = "/usr/bin/env"
      }}
      env {{
        GREETING = "hi ${{TEND_TASK_NAME}}"
        PATH     = "/usr/bin:/bin"
      }}
      resources {{
        cpu    = 250
        memory = 128
        network {{
          port "http" {{}}
          port "db" {{
            static = {db_port}
          }}
        }}
      }}
    }}
  }}
}}
"#
        ),
    );
    let mut cmd = sb.tend_command(&run_args(&job));
    cmd.env("TEND_TEST_LEAK", "secret")
        .env("HOME", "/leak-home")
        .env("GREETING", "agent greeting");
    let out = sb.spawn_captured(cmd).wait(LONG);
    assert_eq!(out.code, Some(0), "{out}");

    let alloc = sb.find_alloc_dir();
    let alloc_id = alloc.file_name().unwrap().to_str().unwrap().to_string();
    let text = log_of(&alloc, "show");
    let env: BTreeMap<&str, &str> = text
        .lines()
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("{l:?} in {text}"))
        })
        .collect();
    let get = |k: &str| {
        *env.get(k)
            .unwrap_or_else(|| panic!("{k} is missing from {text}"))
    };
    assert_eq!(get("TEND_ALLOC_DIR"), alloc.join("alloc").to_str().unwrap());
    assert_eq!(
        get("TEND_TASK_DIR"),
        alloc.join("show/local").to_str().unwrap()
    );
    assert!(Path::new(get("TEND_ALLOC_DIR")).is_dir());
    assert!(Path::new(get("TEND_TASK_DIR")).is_dir());
    assert_eq!(get("TEND_ALLOC_ID"), alloc_id);
    assert_eq!(get("TEND_ALLOC_NAME"), "envjob.grp[0]");
    assert_eq!(get("TEND_ALLOC_INDEX"), "0");
    assert_eq!(get("TEND_JOB_NAME"), "envjob");
    assert_eq!(get("TEND_GROUP_NAME"), "grp");
    assert_eq!(get("TEND_TASK_NAME"), "show");
    assert_eq!(get("TEND_MEMORY_LIMIT"), "128");
    assert_eq!(get("TEND_CPU_LIMIT"), "250");

    let ip = get("TEND_IP_http");
    assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip}");
    let http: u16 = get("TEND_PORT_http").parse().unwrap();
    assert!((20000..=32000).contains(&http), "{http}");
    assert_eq!(get("TEND_HOST_PORT_http"), http.to_string());
    assert_eq!(get("TEND_ADDR_http"), format!("{ip}:{http}"));
    assert_eq!(get("TEND_PORT_db"), db_port.to_string());
    assert_eq!(get("TEND_HOST_PORT_db"), db_port.to_string());
    assert_eq!(
        get("TEND_ADDR_db"),
        format!("{}:{db_port}", get("TEND_IP_db"))
    );

    assert_eq!(get("TEND_META_level"), "task");
    assert_eq!(get("TEND_META_only_group"), "g");
    assert_eq!(get("TEND_META_only_job"), "j");
    assert_eq!(get("TEND_META_owner"), "job-owner");
    assert_eq!(get("GREETING"), "hi show");
    assert_eq!(get("PATH"), "/usr/bin:/bin");

    // Nothing of tend run's own environment reaches the task.
    assert!(!text.contains("secret"), "{text}");
    assert!(!env.contains_key("TEND_TEST_LEAK"), "{text}");
    assert!(!env.contains_key("HOME"), "{text}");
    let expected = [
        "TEND_ALLOC_DIR",
        "TEND_TASK_DIR",
        "TEND_ALLOC_ID",
        "TEND_ALLOC_NAME",
        "TEND_ALLOC_INDEX",
        "TEND_JOB_NAME",
        "TEND_GROUP_NAME",
        "TEND_TASK_NAME",
        "TEND_MEMORY_LIMIT",
        "TEND_CPU_LIMIT",
        "TEND_IP_http",
        "TEND_PORT_http",
        "TEND_HOST_PORT_http",
        "TEND_ADDR_http",
        "TEND_IP_db",
        "TEND_PORT_db",
        "TEND_HOST_PORT_db",
        "TEND_ADDR_db",
        "TEND_META_level",
        "TEND_META_only_group",
        "TEND_META_only_job",
        "TEND_META_owner",
        "GREETING",
        "PATH",
    ];
    let mut want: Vec<&str> = expected.to_vec();
    want.sort_unstable();
    let have: Vec<&str> = env.keys().copied().collect();
    assert_eq!(have, want, "{text}");
}

#[test]
fn arguments_are_interpolated_one_by_one_end_to_end() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        r#"job "j" {
  group "g" {
    task "greet" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "for a in \"$@\"; do echo \"[$a]\"; done", "sh", "${TEND_TASK_NAME} has spaces", "$${NOT_EXPANDED}", "${UNKNOWN_NAME}"]
      }
    }
  }
}
"#,
    );
    let out = tend_run(&sb, &job, LONG);
    assert_eq!(out.code, Some(0), "{out}");
    let expected = "[greet has spaces]\n[${NOT_EXPANDED}]\n[${UNKNOWN_NAME}]\n";
    assert_eq!(out.stdout, expected, "{out}");
    assert_eq!(log_of(&sb.find_alloc_dir(), "greet"), expected);
}

const THREE_ERRORS: &str = r#"job "j" {
  group "g" {
    task "t" {
      driver       = "nope"
      kill_signal  = "SIGFOO"
      kill_timeout = "forever"
      config {
        command = "/bin/true"
      }
    }
  }
}
"#;

#[test]
fn validate_prints_every_error_with_its_place_and_exits_1() {
    let sb = Sandbox::new();
    let job = sb.write_job("bad.hcl", THREE_ERRORS);
    let out = sb.run_tend(&[OsStr::new("validate"), job.as_os_str()], LONG);
    assert_eq!(out.code, Some(1), "{out}");
    let file = job.display().to_string();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (line, (at, what)) in lines.iter().zip([
        ("4:22", "driver"),
        ("5:22", "kill_signal"),
        ("6:22", "kill_timeout"),
    ]) {
        assert!(
            line.starts_with(&format!("{file}:{at}: job.j.group.g.task.t.{what}: ")),
            "{line} in {out}"
        );
    }
    assert_eq!(lines[3], format!("3 errors in {file}"));
    assert!(sb.alloc_dirs().is_empty());
}

/// An exec task of `user`, the user attribute at line 5, column 14.
fn exec_job_of_user(user: &str) -> String {
    format!(
        "job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"exec\"\n      user   = \"{user}\"\n      config {{\n        command = \"/bin/true\"\n      }}\n    }}\n  }}\n}}\n"
    )
}

#[test]
fn validate_refuses_an_unknown_exec_user_at_its_place() {
    let sb = Sandbox::new();
    let job = sb.write_job("user.hcl", &exec_job_of_user("no-such-user-tend"));
    let out = sb.run_tend(&[OsStr::new("validate"), job.as_os_str()], LONG);
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        out.stdout,
        format!(
            "{0}:5:16: job.j.group.g.task.t.user: unknown user \"no-such-user-tend\"\n1 error in {0}\n",
            job.display()
        ),
        "{out}"
    );
    // A user this host has is fine.
    let job = sb.write_job("daemon.hcl", &exec_job_of_user("daemon"));
    let out = sb.run_tend(&[OsStr::new("validate"), job.as_os_str()], LONG);
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn tend_run_without_an_agent_says_it_runs_in_the_foreground_naming_the_socket() {
    let sb = Sandbox::new();
    let job = sb.write_job("job.hcl", &sh_job("j", "t", "exit 0", ""));
    let out = tend_run(&sb, &job, LONG);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stderr.lines().next(),
        Some(
            format!(
                "==> no agent answers on {}: running the job in the foreground",
                sb.run_dir().join("tend.sock").display()
            )
            .as_str()
        ),
        "{out}"
    );
}

#[test]
fn validate_summarises_a_good_file_and_exits_0() {
    let sb = Sandbox::new();
    let job = sb.write_job("good.hcl", &sh_job("hello", "greet", "exit 0", ""));
    let out = sb.run_tend(&[OsStr::new("validate"), job.as_os_str()], LONG);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .starts_with("Job \"hello\" is valid: 1 group, 1 task\n"),
        "{out}"
    );
    assert!(out.stdout.contains("task \"greet\" (raw_exec)"), "{out}");
}

#[test]
fn job_init_writes_an_example_that_validates_and_runs_and_is_never_overwritten() {
    let sb = Sandbox::new();
    let out = sb.run_tend(&["job", "init"], LONG);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout, "Example job file written to example.tend.hcl\n",
        "{out}"
    );
    let path = sb.scratch_dir().join("example.tend.hcl");
    let written = fs::read_to_string(&path).unwrap();

    let out = sb.run_tend(&["validate", "example.tend.hcl"], LONG);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("Job \"example\" is valid"), "{out}");

    let out = sb.run_tend(&["run", "example.tend.hcl"], LONG);
    assert_eq!(out.code, Some(0), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("hello from greet (example.hello[0]), port "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with(", owner me"), "{out}");
    assert_eq!(exit_of(&sb, "greet").1.exit_code, Some(0));

    let out = sb.run_tend(&["job", "init"], LONG);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("example.tend.hcl already exists, not overwriting it"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), written);
}

#[test]
fn run_refuses_a_bad_job_file_and_starts_nothing() {
    let sb = Sandbox::new();
    let job = sb.write_job("bad.hcl", THREE_ERRORS);
    let out = tend_run(&sb, &job, LONG);
    assert_eq!(out.code, Some(1), "{out}");
    let file = job.display().to_string();
    assert!(out.stderr.contains(&format!("{file}:4:22: ")), "{out}");
    assert!(out.stderr.contains(&format!("{file}:6:22: ")), "{out}");
    assert!(!out.stderr.contains("started"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(sb.alloc_dirs().is_empty(), "{:?}", sb.alloc_dirs());
    assert!(!sb.data_dir().join("allocs").exists());
}

#[test]
fn run_of_a_missing_file_says_so() {
    let sb = Sandbox::new();
    let out = sb.run_tend(&["run", "/nonexistent/job.hcl"], LONG);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("/nonexistent/job.hcl"), "{out}");
    assert!(sb.alloc_dirs().is_empty());
}

#[test]
fn a_lost_supervisor_leaves_no_orphan_task() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        &sh_job("j", "orphan", "echo ready; while :; do sleep 0.1; done", ""),
    );
    let run = sb.spawn_tend(&run_args(&job));
    let (task_pid, daemon_pid) = run.wait_started("orphan", LONG);
    let alloc = sb.find_alloc_dir();
    assert!(wait_until(LONG, || log_of(&alloc, "orphan").contains("ready")));
    kill(Pid::from_raw(daemon_pid), Signal::SIGKILL).unwrap();
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("==> orphan: lost: "), "{out}");
    // Nobody supervises the task any more: tend run must not leave it running.
    assert!(
        wait_until(LONG, || !pid_alive(task_pid)),
        "task {task_pid} outlived its lost supervisor"
    );
    assert!(!alloc_exit_path_exists(&alloc, "orphan"));
}

fn alloc_exit_path_exists(alloc: &Path, task: &str) -> bool {
    tend_tests::alloc_exit_path(alloc, task).exists()
}

#[test]
fn a_group_with_count_2_runs_two_allocations_told_apart_by_index() {
    let sb = Sandbox::new();
    let job = sb.write_job(
        "job.hcl",
        r#"job "j" {
  group "g" {
    count = 2
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "printf 'no newline %s' ${TEND_ALLOC_INDEX}; exit $((TEND_ALLOC_INDEX + 2))"]
      }
    }
  }
}
"#,
    );
    let out = tend_run(&sb, &job, LONG);
    // Allocation 0 comes first in file order.
    assert_eq!(out.code, Some(2), "{out}");
    // An unfinished last line is still printed, whole and prefixed.
    assert!(out.stdout.contains("t[0] | no newline 0\n"), "{out}");
    assert!(out.stdout.contains("t[1] | no newline 1\n"), "{out}");
    assert!(out.stderr.contains("==> t[0]: exited with code 2"), "{out}");
    assert!(out.stderr.contains("==> t[1]: exited with code 3"), "{out}");
    assert!(
        tend_tests::started_pids(&out.stderr, "t[0]").is_some(),
        "{out}"
    );
    assert!(
        tend_tests::started_pids(&out.stderr, "t[1]").is_some(),
        "{out}"
    );
    let allocs = sb.alloc_dirs();
    assert_eq!(allocs.len(), 2, "{allocs:?}");
    let mut codes: Vec<i32> = allocs
        .iter()
        .map(|a| wait_alloc_exit(a, "t", LONG).exit_code.unwrap())
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, [2, 3]);
}

#[test]
fn ctrl_c_at_a_terminal_reaches_tend_run_and_not_the_tasks() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    // SIGINT reaching the shell itself would end it with 130, not 5.
    let job = sb.write_job(
        "job.hcl",
        &sh_job(
            "j",
            "trapper",
            r#"trap "echo got INT; exit 9" INT; trap "echo got TERM; exit 5" TERM; echo ready; while :; do sleep 0.1; done"#,
            "",
        ),
    );
    let mut cmd = sb.tend_command(&run_args(&job));
    // Its own process group, as a shell's foreground job: Ctrl-C goes to the group.
    cmd.process_group(0);
    let run = sb.spawn_captured(cmd);
    run.wait_started("trapper", LONG);
    let alloc = sb.find_alloc_dir();
    assert!(wait_until(LONG, || log_of(&alloc, "trapper").contains("ready")));
    nix::sys::signal::killpg(Pid::from_raw(run.pid()), Signal::SIGINT).unwrap();
    let out = run.wait(LONG);
    assert_eq!(out.code, Some(5), "{out}");
    let log = log_of(&alloc, "trapper");
    assert!(log.contains("got TERM\n"), "{log}");
    assert!(!log.contains("got INT"), "{log}");
}

#[test]
fn a_foreground_job_with_a_restart_block_is_restarted_by_its_policy() {
    let sb = Sandbox::new();
    // Each run leaves a mark in the alloc dir; the third run succeeds.
    let job = sb.write_job(
        "job.hcl",
        r#"job "j" {
  group "g" {
    restart {
      attempts = 2
      delay    = "100ms"
      interval = "1m"
      mode     = "fail"
    }
    task "flaky" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo run >> $TEND_ALLOC_DIR/runs; n=$(wc -l < $TEND_ALLOC_DIR/runs); echo try $n; [ $n -ge 3 ] || exit 9"]
      }
    }
  }
}
"#,
    );
    let out = tend_run(&sb, &job, LONG);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stderr
            .matches("==> flaky: exited with code 9\n")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.stderr
            .matches("==> flaky: restarting in 100ms\n")
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.stderr.ends_with("==> flaky: exited with code 0\n"),
        "{out}"
    );
    assert_eq!(out.stdout, "try 1\ntry 2\ntry 3\n", "{out}");
    let (alloc, exit) = exit_of(&sb, "flaky");
    assert_eq!(exit.run, 3, "{exit:?}");
    assert_eq!(exit.exit_code, Some(0));
    // The earlier runs' exit files are kept beside it, as under the agent.
    for run in 1..=2 {
        let earlier = fs::read_to_string(format!(
            "{}.{run}",
            tend_tests::alloc_exit_path(&alloc, "flaky").display()
        ))
        .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let earlier = ExitStatus::from_json(earlier.as_bytes()).unwrap();
        assert_eq!((earlier.run, earlier.exit_code), (run, Some(9)));
    }
}

#[test]
fn the_state_a_killed_foreground_run_left_is_removed_by_the_next_one() {
    let sb = Sandbox::new();
    let states = sb.run_dir().join("foreground");
    let job = sb.write_job("job.hcl", &sh_job("j", "sleeper", "exec sleep 30", ""));
    let run = sb.spawn_tend(&run_args(&job));
    let (task_pid, _) = run.wait_started("sleeper", LONG);
    run.signal(Signal::SIGKILL);
    run.wait(LONG);
    // Its embedded agent's state stays behind, its lock held by nobody.
    assert_eq!(fs::read_dir(&states).map(|d| d.count()).ok(), Some(1));
    assert!(pid_alive(task_pid));

    let quick = sb.write_job("quick.hcl", &sh_job("q", "t", "exit 0", ""));
    let out = tend_run(&sb, &quick, LONG);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        !states.exists(),
        "{:?}",
        fs::read_dir(&states).map(|d| d.count())
    );
    // The task of the killed run is left alone.
    assert!(pid_alive(task_pid));
}

/// A tend-spawn that predates the first connection on stdin: it refuses the
/// config that asks for it at the config stage, as an old one does (trailing
/// bytes after the config it knows), and starts the task from a pipe. The
/// agent starts it once more without the part, then connects to the socket.
#[test]
fn a_tend_spawn_without_the_handover_is_started_again_and_reached_by_its_socket() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let dir = sb.scratch_dir();
    let refusal = dir.join("refusal.frame");
    let report = tend_proto::StartReport::Failed {
        stage: tend_proto::Stage::Config,
        errno: 0,
        message: "decoding the spawn config: frame: 1 trailing bytes after SpawnConfig".into(),
    };
    fs::write(&refusal, tend_proto::frame::encode(&report).unwrap()).unwrap();
    let asked = dir.join("asked");
    let old = dir.join("old-tend-spawn");
    fs::write(
        &old,
        format!(
            "#!/bin/sh\nif [ -S /proc/self/fd/0 ]; then touch {}; cat {}; exit 1; fi\nexec {}\n",
            asked.display(),
            refusal.display(),
            tend_tests::spawn_bin().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
    let job = sb.write_job("job.hcl", &sh_job("old", "greet", "echo hi; exit 3", ""));
    let out = sb.run_tend(
        &[
            OsStr::new("run"),
            OsStr::new("--spawn-bin"),
            old.as_os_str(),
            job.as_os_str(),
        ],
        LONG,
    );
    assert_eq!(out.code, Some(3), "{out}");
    assert!(
        asked.exists(),
        "the first start did not ask for the handover"
    );
    assert!(out.stdout.contains("hi\n"), "{out}");
    let (_, exit) = exit_of(&sb, "greet");
    assert_eq!(exit.exit_code, Some(3));
}

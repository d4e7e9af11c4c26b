//! Tasks outlive any outage of the agent, and the agent keeps its word after
//! long idle times: these tests wait for real, past every deadline the
//! supervisor and the agent have (tend-spawn's Hello time is 10 s), because
//! the bug they guard against only showed after 10 s of quiet.
//!
//! By default the outage is 30 s; `TEND_FAULT_SLOW=1` adds a 2 min outage.
//! Every test runs raw_exec tasks, so none needs root.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tend_tests::{pid_alive, wait_until, AgentProc, Sandbox};

/// Longer than tend-spawn's Hello time (10 s) three times over.
const IDLE: Duration = Duration::from_secs(31);
const LONG: Duration = Duration::from_secs(30);

/// A job of one allocation per entry of `tasks` (name, shell script).
fn job(name: &str, tasks: &[(&str, &str)], kill_timeout: &str) -> String {
    let mut groups = String::new();
    for (task, script) in tasks {
        let args = serde_json::to_string(&["-c", script]).expect("args");
        groups.push_str(&format!(
            r#"  group "{task}" {{
    restart {{
      attempts = 3
      delay    = "1s"
      mode     = "fail"
    }}
    task "{task}" {{
      driver       = "raw_exec"
      kill_timeout = "{kill_timeout}"
      config {{
        command = "/bin/sh"
        args    = {args}
      }}
    }}
  }}
"#
        ));
    }
    format!("job \"{name}\" {{\n{groups}}}\n")
}

/// The only task of an allocation.
fn task_of(agent: &AgentProc, alloc: &str) -> Value {
    let a = agent.get_json(&format!("/v1/allocations/{alloc}"));
    a["tasks"][0].clone()
}

/// Wait until every allocation's task runs; their `(task pid, daemon pid)`.
fn wait_running(agent: &AgentProc, allocs: &[String]) -> Vec<(i64, i64)> {
    let mut tasks = Vec::new();
    let ok = wait_until(LONG, || {
        tasks = allocs.iter().map(|a| task_of(agent, a)).collect();
        tasks
            .iter()
            .all(|t| t["state"] == "running" && t["pid"].is_i64())
    });
    assert!(
        ok,
        "not all running: {tasks:#?}\nagent log:\n{}",
        agent.log()
    );
    tasks
        .iter()
        .map(|t| {
            (
                t["pid"].as_i64().unwrap(),
                t["daemon_pid"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn pid(p: i64) -> i32 {
    i32::try_from(p).expect("pid")
}

const QUIET: &str = "echo up; exec sleep 100000";
const CHATTY: &str = "while true; do echo tick; sleep 0.2; done";

/// The agent is SIGKILLed and stays down for `outage`, with quiet and chatty
/// tasks running; when it comes back every task keeps its pid and its run,
/// none is restarted and none is lost.
fn outage_keeps_every_task(outage: Duration) {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let tasks = [
        ("q1", QUIET),
        ("q2", QUIET),
        ("q3", QUIET),
        ("c1", CHATTY),
        ("c2", CHATTY),
    ];
    let allocs = agent.submit(&job("outage", &tasks, "2s"));
    assert_eq!(allocs.len(), tasks.len());
    let before = wait_running(&agent, &allocs);
    agent.kill9();
    std::thread::sleep(outage);
    for (task_pid, daemon_pid) in &before {
        assert!(
            pid_alive(pid(*task_pid)),
            "task {task_pid} died in the outage"
        );
        assert!(
            pid_alive(pid(*daemon_pid)),
            "tend-spawn {daemon_pid} died in the outage"
        );
    }
    agent.restart();
    let after = wait_running(&agent, &allocs);
    let mut kept = 0;
    for (i, a) in allocs.iter().enumerate() {
        let t = task_of(&agent, a);
        assert_eq!(after[i], before[i], "task {a} changed pids: {t:#}");
        assert_eq!(t["run"], 1, "{t:#}");
        assert_eq!(t["restarts"], 0, "{t:#}");
        assert_eq!(t["lost"], false, "{t:#}");
        assert!(t["unreachable"].is_null(), "{t:#}");
        kept += 1;
    }
    eprintln!(
        "outage {} s: {} tasks, {kept} kept, 0 lost, 0 restarted",
        outage.as_secs(),
        tasks.len()
    );
    // Nothing was restarted behind our back while we looked.
    for (task_pid, _) in &before {
        assert!(pid_alive(pid(*task_pid)));
    }
    let r = agent.cli(&["stop", &allocs[0]]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn a_30_s_outage_loses_and_restarts_nothing() {
    outage_keeps_every_task(Duration::from_secs(30));
}

#[test]
fn a_2_min_outage_loses_and_restarts_nothing() {
    if std::env::var("TEND_FAULT_SLOW").as_deref() != Ok("1") {
        eprintln!("a slow-lane test: runs with TEND_FAULT_SLOW=1");
        return;
    }
    outage_keeps_every_task(Duration::from_secs(120));
}

/// After 31 s in which nobody talked to its tend-spawn, a signal is taken,
/// the logs are read, and a stop confirms: it returns when the task is dead,
/// and the task reads as stopped, not failed, whatever its kill left (143).
#[test]
fn signal_logs_and_stop_after_31_s_of_idle() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let script = "trap 'echo got-hup' HUP; echo ready; while true; do sleep 1; done";
    let allocs = agent.submit(&job("idle", &[("t", script)], "3s"));
    let alloc = &allocs[0];
    let before = wait_running(&agent, &allocs);
    std::thread::sleep(IDLE);

    let r = agent.cli(&["signal", alloc, "t", "SIGHUP"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut logs = String::new();
    let got = wait_until(LONG, || {
        let r = agent.cli(&["logs", alloc, "t"]);
        logs = String::from_utf8_lossy(&r.stdout).into_owned();
        logs.contains("got-hup")
    });
    assert!(got, "no got-hup in the logs: {logs}");
    assert!(logs.contains("ready"));

    let r = agent.cli(&["stop", alloc]);
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        r.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // It returned once the task was dead, not before.
    assert!(!pid_alive(pid(before[0].0)), "the task outlived tend stop");
    assert!(out.contains("stopped"), "{out}");
    let a = agent.get_json(&format!("/v1/allocations/{alloc}"));
    let t = &a["tasks"][0];
    assert_eq!(a["status"], "complete", "{a:#}");
    assert_eq!(t["state"], "dead", "{t:#}");
    assert_eq!(t["failed"], false, "{t:#}");
    assert_eq!(t["stopped"], true, "{t:#}");
    assert_eq!(t["restarts"], 0, "a stopped task was restarted: {t:#}");
    assert!(
        t["exit"]["signal"] == 15 || t["exit"]["exit_code"] == 143,
        "{t:#}"
    );
}

/// A tend-spawn that is alive but does not answer (stopped with SIGSTOP while
/// the agent was away) is shown as unreachable, never lost, and its task
/// keeps running; once it answers again the agent takes it up. A stop it
/// cannot take is carried out by the agent after kill_timeout, through the
/// task's pidfd, and recorded when the supervisor answers again.
#[test]
fn an_unanswering_tend_spawn_is_unreachable_never_lost() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let allocs = agent.submit(&job("frozen", &[("t", QUIET)], "1s"));
    let alloc = &allocs[0];
    let (task_pid, daemon_pid) = wait_running(&agent, &allocs)[0];
    let daemon = Pid::from_raw(pid(daemon_pid));
    agent.kill9();
    kill(daemon, Signal::SIGSTOP).expect("SIGSTOP tend-spawn");
    // Resumed whatever happens, so the sandbox's cleanup can end it.
    struct Cont(Pid);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let cont = Cont(daemon);
    agent.restart();
    let mut t = Value::Null;
    let seen = wait_until(LONG, || {
        t = task_of(&agent, alloc);
        t["unreachable"].is_string()
    });
    assert!(seen, "never marked unreachable: {t:#}\n{}", agent.log());
    assert_eq!(t["state"], "running", "{t:#}");
    assert_eq!(t["lost"], false, "{t:#}");
    assert!(pid_alive(pid(task_pid)), "the task was killed");
    let status = agent.cli(&["status", alloc]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("unreachable"), "{text}");

    // It answers again: taken up, same pids.
    kill(daemon, Signal::SIGCONT).expect("SIGCONT");
    let back = wait_until(LONG, || {
        t = task_of(&agent, alloc);
        t["unreachable"].is_null() && t["state"] == "running"
    });
    assert!(back, "not taken up again: {t:#}");
    assert_eq!(t["pid"], task_pid);
    assert_eq!(t["run"], 1);

    // Silent again, and asked to stop: after kill_timeout (1 s) the agent
    // kills the task itself.
    kill(daemon, Signal::SIGSTOP).expect("SIGSTOP tend-spawn");
    let r = agent.cli(&["stop", "--detach", alloc]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        wait_until(LONG, || !pid_alive(pid(task_pid))),
        "the task outlived a stop its supervisor could not take"
    );
    kill(daemon, Signal::SIGCONT).expect("SIGCONT");
    drop(cont);
    let dead = wait_until(LONG, || {
        t = task_of(&agent, alloc);
        t["state"] == "dead"
    });
    assert!(dead, "{t:#}\n{}", agent.log());
    assert_eq!(t["lost"], false, "{t:#}");
    assert_eq!(t["stopped"], true, "{t:#}");
    assert_eq!(t["exit"]["signal"], 9, "{t:#}");
}

/// Ctrl-C of a foreground `tend run`, 31 s after its start, ends its task.
#[test]
fn foreground_ctrl_c_after_31_s_ends_the_task() {
    let sb = Sandbox::new();
    let path = sb.write_job("fg.hcl", &job("fg", &[("t", QUIET)], "2s"));
    let run = sb.spawn_tend(&[std::ffi::OsStr::new("run"), path.as_os_str()]);
    let (task_pid, daemon_pid) = run.wait_started("t", LONG);
    std::thread::sleep(IDLE);
    run.signal(Signal::SIGINT);
    let out = run.wait(LONG);
    assert!(out.stderr.contains("stopping"), "{out}");
    assert!(!pid_alive(task_pid), "the task outlived Ctrl-C: {out}");
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(daemon_pid)),
        "tend-spawn outlived its task: {out}"
    );
    let alloc = sb.find_alloc_dir();
    let exit = fs::read_to_string(alloc.join("t_exit_status")).expect("exit file");
    assert!(exit.contains("\"signal\": 15"), "{exit}");
}

//! End-to-end tests of `tend agent`: the built binaries, driven through the CLI
//! and through raw HTTP on `<run_dir>/tend.sock`. Each test has its own sandbox
//! and agent; both kill everything of theirs when dropped, even on failure.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tend_tests::job::{job, sh_task, Task, NO_RESTART};
use tend_tests::{pid_alive, raw_exchange, require_root, wait_until, AgentProc, Sandbox};

const LONG: Duration = Duration::from_secs(30);

/// A task that waits for a code on the fifo `$TEND_TASK_DIR/ctl` and exits with it.
const WAIT_FOR_CODE: &str =
    "/bin/mkfifo \"$TEND_TASK_DIR/ctl\" && read c < \"$TEND_TASK_DIR/ctl\"; exit $c";

fn write_job(sb: &Sandbox, name: &str, text: &str) -> PathBuf {
    let p = sb.data_dir().join(name);
    fs::write(&p, text).expect("write job file");
    p
}

/// `tend run FILE --json` against the agent: the allocation ids.
fn submit(agent: &AgentProc, file: &std::path::Path) -> Vec<String> {
    let out = agent.cli(&["run", file.to_str().expect("utf-8"), "--json"]);
    assert!(
        out.status.success(),
        "tend run: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("tend run --json");
    v["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect()
}

/// A task as `GET /v1/allocations/{id}` shows it.
fn task_of(agent: &AgentProc, alloc: &str, task: &str) -> Value {
    let a = agent.get_json(&format!("/v1/allocations/{alloc}"));
    a["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == task)
        .unwrap_or_else(|| panic!("no task {task} in {a:#}"))
        .clone()
}

/// Poll the task until `f` holds (panics with the task after `LONG`).
fn wait_task(agent: &AgentProc, alloc: &str, task: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(LONG, || {
        last = task_of(agent, alloc, task);
        f(&last)
    });
    assert!(ok, "task {alloc}/{task} never got there: {last:#}");
    last
}

fn running(t: &Value) -> bool {
    t["state"] == "running"
}

fn dead(t: &Value) -> bool {
    t["state"] == "dead"
}

fn state_file(sb: &Sandbox, alloc: &str, task: &str) -> PathBuf {
    sb.data_dir()
        .join("state")
        .join(alloc)
        .join(format!("{task}.json"))
}

fn read_state(sb: &Sandbox, alloc: &str, task: &str) -> Value {
    let p = state_file(sb, alloc, task);
    serde_json::from_slice(&fs::read(&p).expect("state file")).expect("state JSON")
}

/// Poll the state file until `f` holds: the API answers from memory, the
/// file is written right after.
fn wait_state(sb: &Sandbox, alloc: &str, task: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut s = Value::Null;
    let ok = wait_until(LONG, || {
        s = read_state(sb, alloc, task);
        f(&s)
    });
    assert!(ok, "state of {alloc}/{task} never got there: {s:#}");
    s
}

fn alloc_dir(sb: &Sandbox, alloc: &str) -> PathBuf {
    sb.data_dir().join("allocs").join(alloc)
}

/// Write `code` into the task's fifo (see [`WAIT_FOR_CODE`]).
fn release(sb: &Sandbox, alloc: &str, task: &str, code: i32) {
    let fifo = alloc_dir(sb, alloc).join(task).join("local/ctl");
    let mut f = None;
    // O_NONBLOCK: opening for write fails (ENXIO) until the reader is there.
    let ok = wait_until(LONG, || {
        f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .ok();
        f.is_some()
    });
    assert!(ok, "task {alloc}/{task} never opened {}", fifo.display());
    f.expect("fifo")
        .write_all(format!("{code}\n").as_bytes())
        .expect("write fifo");
}

fn pid_of(t: &Value, key: &str) -> i32 {
    t[key]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no {key} in {t:#}"))
}

fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
}

// ---------------------------------------------------------------------------
// Reattach

fn fifty_tasks_survive_an_agent_restart(stop: fn(&mut AgentProc)) {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "fifty.hcl",
        &job("fifty", 50, NO_RESTART, &sh_task("t", WAIT_FOR_CODE, "")),
    );
    let ids = submit(&agent, &file);
    assert_eq!(ids.len(), 50);
    let mut before = Vec::new();
    for id in &ids {
        let t = wait_task(&agent, id, "t", running);
        before.push((pid_of(&t, "pid"), pid_of(&t, "daemon_pid")));
    }
    stop(&mut agent);
    // Ten end while the agent is away, each with a code of its own.
    let codes = [0, 1, 2, 3, 7, 42, 100, 126, 200, 255];
    for (id, code) in ids.iter().zip(codes) {
        release(&sb, id, "t", code);
    }
    for id in &ids[..10] {
        let p = alloc_dir(&sb, id).join("t_exit_status");
        assert!(wait_until(LONG, || p.exists()), "no {}", p.display());
    }
    agent.restart();
    eprintln!(
        "reattach of 50 tasks: agent answered {:?} after exec; {}",
        agent.ready_after,
        agent
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("state taken up"))
            .unwrap_or("")
    );
    let list = agent.get_json("/v1/allocations");
    assert_eq!(list["allocations"].as_array().expect("list").len(), 50);
    for (i, id) in ids.iter().enumerate() {
        if i < 10 {
            let t = wait_task(&agent, id, "t", dead);
            assert_eq!(t["exit"]["exit_code"], codes[i], "{t:#}");
            assert_eq!(t["lost"], false, "{t:#}");
            assert_eq!(t["failed"], codes[i] != 0, "{t:#}");
            assert_eq!(t["run"], 1, "{t:#}");
            let s = wait_state(&sb, id, "t", |s| s["phase"] == "dead");
            assert_eq!(s["last_exit"]["exit_code"], codes[i]);
            assert!(s["handle"].is_null(), "{s:#}");
        } else {
            let t = task_of(&agent, id, "t");
            assert!(running(&t), "{t:#}");
            assert_eq!(t["lost"], false, "{t:#}");
            assert_eq!((pid_of(&t, "pid"), pid_of(&t, "daemon_pid")), before[i]);
            assert!(pid_alive(before[i].0), "task {} died", before[i].0);
            assert!(
                t["events"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .any(|e| e["kind"] == "reattached"),
                "{t:#}"
            );
            let s = read_state(&sb, id, "t");
            assert_eq!(s["phase"], "running");
            assert_eq!(s["handle"]["task_pid"], before[i].0);
        }
    }
    // The reattached ones are still fully served: end them and see their codes.
    for id in &ids[10..15] {
        release(&sb, id, "t", 9);
        let t = wait_task(&agent, id, "t", dead);
        assert_eq!(t["exit"]["exit_code"], 9, "{t:#}");
    }
}

#[test]
fn fifty_tasks_survive_sigkill_of_the_agent() {
    fifty_tasks_survive_an_agent_restart(|a| a.kill9());
}

#[test]
fn fifty_tasks_survive_sigterm_of_the_agent() {
    fifty_tasks_survive_an_agent_restart(|a| {
        let st = a.term();
        assert_eq!(st.code(), Some(0), "{st}");
    });
}

#[test]
fn sigterm_stops_the_agent_and_leaves_the_tasks_running() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let tasks = sh_task("a", "exec /bin/sleep 1000", "") + &sh_task("b", WAIT_FOR_CODE, "");
    let file = write_job(&sb, "t.hcl", &job("t", 2, NO_RESTART, &tasks));
    let ids = submit(&agent, &file);
    let mut pids = Vec::new();
    for id in &ids {
        for name in ["a", "b"] {
            let t = wait_task(&agent, id, name, running);
            pids.push(pid_of(&t, "pid"));
            pids.push(pid_of(&t, "daemon_pid"));
        }
    }
    let st = agent.term();
    assert_eq!(st.code(), Some(0), "{st}");
    assert!(!sb.run_dir().join("tend.sock").exists(), "socket left");
    std::thread::sleep(Duration::from_millis(300));
    for p in &pids {
        assert!(pid_alive(*p), "pid {p} died with the agent");
    }
    // A task that ends meanwhile is recorded by the next agent.
    release(&sb, &ids[0], "b", 5);
    agent.restart();
    let t = wait_task(&agent, &ids[0], "b", dead);
    assert_eq!(t["exit"]["exit_code"], 5);
    assert!(running(&task_of(&agent, &ids[0], "a")));
}

// ---------------------------------------------------------------------------
// Lost tasks

#[test]
fn a_killed_tend_spawn_makes_the_task_lost_and_it_restarts() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let restart = "    restart {\n      attempts = 1\n      delay    = \"100ms\"\n      interval = \"1m\"\n      mode     = \"fail\"\n    }";
    let file = write_job(
        &sb,
        "lost.hcl",
        &job(
            "lost",
            1,
            restart,
            &sh_task("t", "exec /bin/sleep 1000", ""),
        ),
    );
    let id = submit(&agent, &file).remove(0);
    let t = wait_task(&agent, &id, "t", running);
    let (task_pid, daemon_pid) = (pid_of(&t, "pid"), pid_of(&t, "daemon_pid"));
    let t0 = Instant::now();
    sigkill(daemon_pid);
    let mut seen = None;
    let ok = wait_until(LONG, || {
        let t = task_of(&agent, &id, "t");
        let lost = t["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "lost"));
        if lost && seen.is_none() {
            seen = Some(t0.elapsed());
        }
        lost
    });
    assert!(ok, "never lost: {:#}", task_of(&agent, &id, "t"));
    eprintln!("lost detected {:?} after the SIGKILL", seen.expect("seen"));
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(task_pid)),
        "the lost run's task {task_pid} still runs"
    );
    let t = wait_task(&agent, &id, "t", |t| running(t) && t["run"] == 2);
    assert_ne!(pid_of(&t, "pid"), task_pid);
    assert_eq!(t["restarts"], 1);
    assert_eq!(t["lost"], false, "a running task is not lost: {t:#}");
    let dir = alloc_dir(&sb, &id);
    // A lost run leaves no exit file, so nothing was moved aside.
    assert!(!dir.join("t_exit_status.1").exists());
    assert!(!dir.join("t_exit_status").exists());
    let s = wait_state(&sb, &id, "t", |s| s["run"] == 2 && s["phase"] == "running");
    assert!(s["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| e["kind"] == "lost"));
    // Lost again, with no attempts left: dead, failed, lost.
    sigkill(pid_of(&t, "daemon_pid"));
    let t = wait_task(&agent, &id, "t", dead);
    assert_eq!(
        (t["failed"].clone(), t["lost"].clone()),
        (true.into(), true.into())
    );
    let a = agent.get_json(&format!("/v1/allocations/{id}"));
    assert_eq!(a["status"], "lost");
}

/// Stop the agent, (maybe end the task,) kill its tend-spawn, and give the
/// daemon's recorded pid to an unrelated process; then start the agent again.
fn reused_daemon_pid(task_ended: bool) {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "reuse.hcl",
        &job("reuse", 1, NO_RESTART, &sh_task("t", WAIT_FOR_CODE, "")),
    );
    let id = submit(&agent, &file).remove(0);
    let t = wait_task(&agent, &id, "t", running);
    let (task_pid, daemon_pid) = (pid_of(&t, "pid"), pid_of(&t, "daemon_pid"));
    assert_eq!(agent.term().code(), Some(0));
    if task_ended {
        release(&sb, &id, "t", 4);
        let p = alloc_dir(&sb, &id).join("t_exit_status");
        assert!(wait_until(LONG, || p.exists()));
    }
    sigkill(daemon_pid);
    assert!(wait_until(LONG, || !pid_alive(daemon_pid)));
    // An unrelated process now holds the recorded pid (as far as the file says).
    let mut stranger = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .expect("sleep 60");
    let stranger_pid = i32::try_from(stranger.id()).expect("pid");
    let path = state_file(&sb, &id, "t");
    let mut s = read_state(&sb, &id, "t");
    let st = s["handle"]["daemon_start_time"].clone();
    assert!(st.is_u64(), "{s:#}");
    s["handle"]["daemon_pid"] = stranger_pid.into();
    fs::write(&path, serde_json::to_vec_pretty(&s).expect("json")).expect("edit state");
    agent.restart();
    let t = wait_task(&agent, &id, "t", dead);
    std::thread::sleep(Duration::from_millis(200));
    let alive = stranger.try_wait().expect("try_wait").is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(alive, "the agent killed an unrelated process");
    if task_ended {
        assert_eq!(t["lost"], false, "{t:#}");
        assert_eq!(t["exit"]["exit_code"], 4, "{t:#}");
    } else {
        assert_eq!(t["lost"], true, "{t:#}");
    }
    assert!(!pid_alive(task_pid), "the task {task_pid} still runs");
}

#[test]
fn a_reused_daemon_pid_is_left_alone_and_the_task_is_lost() {
    reused_daemon_pid(false);
}

#[test]
fn a_reused_daemon_pid_is_left_alone_and_the_exit_file_counts() {
    reused_daemon_pid(true);
}

// ---------------------------------------------------------------------------
// Restart policy and stop

#[test]
fn a_failing_task_runs_attempts_plus_one_times() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let restart = "    restart {\n      attempts = 2\n      delay    = \"100ms\"\n      interval = \"1m\"\n      mode     = \"fail\"\n    }";
    let file = write_job(
        &sb,
        "fail.hcl",
        &job("fail", 1, restart, &sh_task("t", "echo run; exit 1", "")),
    );
    let id = submit(&agent, &file).remove(0);
    let t = wait_task(&agent, &id, "t", dead);
    assert_eq!(t["run"], 3, "{t:#}");
    assert_eq!(t["restarts"], 2, "{t:#}");
    assert_eq!(t["failed"], true);
    assert_eq!(t["exit"]["exit_code"], 1);
    assert_eq!(
        agent.get_json(&format!("/v1/allocations/{id}"))["status"],
        "failed"
    );
    let dir = alloc_dir(&sb, &id);
    for run in 1..=3u32 {
        let p = if run == 3 {
            dir.join("t_exit_status")
        } else {
            dir.join(format!("t_exit_status.{run}"))
        };
        let e: Value = serde_json::from_slice(&fs::read(&p).expect("exit file")).expect("json");
        assert_eq!(
            (e["run"].clone(), e["exit_code"].clone()),
            (run.into(), 1.into())
        );
    }
    let out = agent.cli(&["logs", &id, "t"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "run\nrun\nrun\n");
}

#[test]
fn tend_stop_uses_the_kill_signal_and_timeout_and_does_not_restart() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let restart = "    restart {\n      attempts = 3\n      delay    = \"100ms\"\n      mode     = \"fail\"\n    }";
    let tasks = sh_task(
        "polite",
        "trap 'echo bye; exit 9' USR1; echo ready; while :; do /bin/sleep 0.05; done",
        "      kill_signal  = \"SIGUSR1\"\n      kill_timeout = \"10s\"",
    ) + &sh_task(
        "stubborn",
        "trap '' TERM; echo ready; while :; do /bin/sleep 0.05; done",
        "      kill_timeout = \"300ms\"",
    );
    let file = write_job(&sb, "stop.hcl", &job("stop", 1, restart, &tasks));
    let id = submit(&agent, &file).remove(0);
    let logs = alloc_dir(&sb, &id).join("logs");
    for name in ["polite", "stubborn"] {
        wait_task(&agent, &id, name, running);
        let p = logs.join(format!("{name}.stdout"));
        assert!(wait_until(LONG, || fs::read_to_string(&p)
            .is_ok_and(|s| s.contains("ready"))));
    }
    let t0 = Instant::now();
    let out = agent.cli(&["stop", &id[..8]]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let polite = wait_task(&agent, &id, "polite", dead);
    let stubborn = wait_task(&agent, &id, "stubborn", dead);
    let took = t0.elapsed();
    assert_eq!(polite["exit"]["exit_code"], 9, "{polite:#}");
    assert_eq!(stubborn["exit"]["signal"], 9, "{stubborn:#}");
    assert!(
        took < Duration::from_secs(8),
        "{took:?}: the 10s grace was not the stubborn one's"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    for t in [&polite, &stubborn] {
        assert_eq!(t["run"], 1, "restarted after stop: {t:#}");
        assert_eq!(t["restarts"], 0);
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(task_of(&agent, &id, "polite")["run"], 1);
    let a = agent.get_json(&format!("/v1/allocations/{id}"));
    assert_eq!(a["desired"], "stop");
    assert!(fs::read_to_string(logs.join("polite.stdout"))
        .expect("log")
        .contains("bye"));
    let out = agent.cli(&["status", &id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["desired"], "stop");
}

// ---------------------------------------------------------------------------
// The API

#[test]
fn api_health_jobs_allocations_and_errors() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let sock = sb.run_dir().join("tend.sock");
    assert_eq!(
        fs::metadata(&sock).expect("socket").permissions().mode() & 0o777,
        0o600
    );
    let h = agent.get_json("/v1/health");
    assert_eq!(h["ok"], true);

    // POST /v1/jobs: HCL, JSON, and a bad job.
    let hcl = job(
        "h",
        1,
        NO_RESTART,
        &sh_task("t", "exec /bin/sleep 1000", ""),
    );
    let r = agent.http("POST", "/v1/jobs", hcl.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let hcl_id = r.json()["allocations"][0].as_str().expect("id").to_string();
    let json = r#"{"job": {"j": {"group": {"g": {"task": {"t": {
        "driver": "raw_exec", "config": {"command": "/bin/true"}}}}}}}}"#;
    let r = agent.http("POST", "/v1/jobs?file=j.json", json.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let json_id = r.json()["allocations"][0].as_str().expect("id").to_string();
    let bad =
        "job \"b\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"nope\"\n    }\n  }\n}\n";
    let r = agent.http("POST", "/v1/jobs?file=b.hcl", bad.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    let d = &v["diagnostics"][0];
    assert_eq!(d["file"], "b.hcl", "{v:#}");
    assert!(d["line"].as_u64().is_some_and(|l| l >= 1), "{v:#}");
    assert!(d["column"].as_u64().is_some_and(|c| c >= 1), "{v:#}");
    assert!(v["error"].is_string());
    let r = agent.http("POST", "/v1/jobs", b"\xff\xfe");
    assert_eq!(r.status, 400);

    // GET /v1/allocations and /v1/allocations/{id}.
    let list = agent.get_json("/v1/allocations");
    let ids: Vec<&str> = list["allocations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["id"].as_str().expect("id"))
        .collect();
    assert!(ids.contains(&hcl_id.as_str()) && ids.contains(&json_id.as_str()));
    assert_eq!(
        agent.get_json(&format!("/v1/allocations/{hcl_id}"))["id"],
        hcl_id.as_str()
    );
    // The shortest prefix that names it alone.
    let unique = (1..=hcl_id.len())
        .map(|n| &hcl_id[..n])
        .find(|p| ids.iter().filter(|i| i.starts_with(p)).count() == 1)
        .expect("a unique prefix");
    assert_eq!(
        agent.get_json(&format!("/v1/allocations/{unique}"))["id"],
        hcl_id.as_str()
    );
    let r = agent.http("GET", "/v1/allocations/zzzz", b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].is_string());

    // 17 more allocations: two of 19 ids share a first hex digit.
    let many = write_job(
        &sb,
        "many.hcl",
        &job("many", 17, NO_RESTART, &sh_task("t", "true", "")),
    );
    submit(&agent, &many);
    let list = agent.get_json("/v1/allocations");
    let all: Vec<String> = list["allocations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(all.len(), 19);
    let shared = all
        .iter()
        .map(|i| &i[..1])
        .find(|p| all.iter().filter(|i| i.starts_with(p)).count() > 1)
        .expect("a shared prefix");
    let r = agent.http("GET", &format!("/v1/allocations/{shared}"), b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .expect("error")
        .contains("matches"));

    // Health counts every allocation and the tasks running among them: 18
    // ended (`true`), the sleeper running, then none once it is stopped.
    for id in all.iter().filter(|i| **i != hcl_id) {
        wait_task(&agent, id, "t", dead);
    }
    wait_task(&agent, &hcl_id, "t", running);
    let h = agent.get_json("/v1/health");
    assert_eq!(
        (h["allocations"].as_u64(), h["running_tasks"].as_u64()),
        (Some(19), Some(1)),
        "{h:#}"
    );

    // POST /v1/allocations/{id}/stop.
    let r = agent.http("POST", "/v1/allocations/zzzz/stop", b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = agent.http("POST", &format!("/v1/allocations/{hcl_id}/stop"), b"");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["desired"], "stop");
    let t = wait_task(&agent, &hcl_id, "t", dead);
    assert_eq!(t["exit"]["signal"], 15, "{t:#}");
    let h = agent.get_json("/v1/health");
    assert_eq!(
        (h["allocations"].as_u64(), h["running_tasks"].as_u64()),
        (Some(19), Some(0)),
        "{h:#}"
    );

    // Wrong method, unknown path, malformed HTTP.
    let r = agent.http("DELETE", "/v1/health", b"");
    assert_eq!(r.status, 405, "{}", r.text());
    let r = agent.http("GET", "/v1/allocations/x/stop", b"");
    assert_eq!(r.status, 405, "{}", r.text());
    let r = agent.http("GET", "/v1/nope", b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let raw = raw_exchange(sb.run_dir(), b"GARBAGE\r\n\r\n", LONG).expect("exchange");
    let r = tend_tests::parse_reply(&raw).expect("reply");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let raw = raw_exchange(sb.run_dir(), b"\x00\x01\x02 nonsense\n\n", LONG).expect("exchange");
    assert_eq!(tend_tests::parse_reply(&raw).expect("reply").status, 400);
    // A client that connects and leaves at once costs nothing either.
    drop(UnixStream::connect(&sock).expect("connect"));
    assert_eq!(agent.get_json("/v1/health")["ok"], true);
}

#[test]
fn api_signal_logs_and_events() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    // Follow the event stream from before the job exists.
    let mut events = UnixStream::connect(sb.run_dir().join("tend.sock")).expect("connect");
    events
        .write_all(b"GET /v1/events?follow=true HTTP/1.1\r\nHost: tend\r\n\r\n")
        .expect("send");
    events
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let tasks = sh_task(
        "sig",
        "trap 'echo got USR1' USR1; echo ready; while :; do /bin/sleep 0.05; done",
        "",
    ) + &sh_task("quick", "echo out; echo err >&2; exit 0", "")
        + &sh_task(
            "slow",
            "for i in 1 2 3; do echo line $i; /bin/sleep 0.3; done",
            "",
        );
    let file = write_job(&sb, "sig.hcl", &job("sig", 1, NO_RESTART, &tasks));
    let id = submit(&agent, &file).remove(0);

    // GET .../logs?follow=true: everything until the task ends.
    let r = agent.http(
        "GET",
        &format!("/v1/allocations/{id}/tasks/slow/logs?follow=true"),
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "line 1\nline 2\nline 3\n");

    let mut seen = Vec::new();
    let ok = wait_until(LONG, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = events.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).contains("\"kind\":\"started\"")
    });
    assert!(ok, "no started event: {}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(events);

    // Signal: good (the task logs it), bad name, unknown task, dead task.
    wait_task(&agent, &id, "sig", running);
    let log = alloc_dir(&sb, &id).join("logs/sig.stdout");
    assert!(wait_until(LONG, || fs::read_to_string(&log)
        .is_ok_and(|s| s.contains("ready"))));
    let target = format!("/v1/allocations/{id}/tasks/sig/signal");
    let r = agent.http("POST", &target, br#"{"signal": "SIGUSR1"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["signal"], 10);
    assert!(
        wait_until(LONG, || fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("got USR1"))),
        "the task did not see SIGUSR1"
    );
    let out = agent.cli(&["signal", &id, "sig", "usr1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(LONG, || fs::read_to_string(&log)
        .is_ok_and(|s| s.matches("got USR1").count() == 2)));
    let r = agent.http("POST", &target, br#"{"signal": "SIGNOPE"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = agent.http("POST", &target, b"not json");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = agent.http(
        "POST",
        &format!("/v1/allocations/{id}/tasks/nope/signal"),
        br#"{"signal": "HUP"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    wait_task(&agent, &id, "quick", dead);
    let r = agent.http(
        "POST",
        &format!("/v1/allocations/{id}/tasks/quick/signal"),
        br#"{"signal": "HUP"}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "task quick is not running (dead)");

    // Logs: stdout, stderr, offset, bad stream, unknown task.
    let logs = |q: &str| {
        agent.http(
            "GET",
            &format!("/v1/allocations/{id}/tasks/quick/logs{q}"),
            b"",
        )
    };
    let r = logs("");
    assert_eq!((r.status, r.text()), (200, "out\n".to_string()));
    assert_eq!(logs("?stream=stderr").text(), "err\n");
    assert_eq!(logs("?offset=1").text(), "ut\n");
    assert_eq!(logs("?offset=100").text(), "");
    assert_eq!(logs("?stream=bogus").status, 400);
    assert_eq!(logs("?offset=-1").status, 400);
    let r = agent.http("GET", &format!("/v1/allocations/{id}/tasks/nope/logs"), b"");
    assert_eq!(r.status, 404);
    let out = agent.cli(&["logs", "--stderr", &id, "quick"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "err\n");

    // Events snapshot.
    let v = agent.get_json("/v1/events?follow=false");
    let evs = v["events"].as_array().expect("events");
    assert!(evs
        .iter()
        .any(|e| e["kind"] == "started" && e["task"] == "sig" && e["alloc_id"] == id.as_str()));
    assert!(evs.iter().any(|e| e["kind"] == "signaled"));
}

#[test]
fn a_stop_that_never_reached_the_daemon_is_carried_out_on_reattach() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "s.hcl",
        &job(
            "s",
            1,
            NO_RESTART,
            &sh_task(
                "t",
                "trap 'exit 7' TERM; while :; do /bin/sleep 0.05; done",
                "",
            ),
        ),
    );
    let id = submit(&agent, &file).remove(0);
    let t = wait_task(&agent, &id, "t", running);
    // The agent persisted the stop and died before telling the daemon.
    agent.kill9();
    let path = sb.data_dir().join("state").join(&id).join("alloc.json");
    let mut a: Value = serde_json::from_slice(&fs::read(&path).expect("alloc.json")).expect("json");
    a["desired"] = "stop".into();
    fs::write(&path, serde_json::to_vec_pretty(&a).expect("json")).expect("edit alloc.json");
    assert!(pid_alive(pid_of(&t, "pid")));
    agent.restart();
    let t = wait_task(&agent, &id, "t", dead);
    assert_eq!(t["exit"]["exit_code"], 7, "{t:#}");
    assert_eq!(t["run"], 1);
}

/// The API connections the agent holds open: its sockets that are accepted
/// connections of `tend.sock` (/proc/net/unix shows the listener's path on
/// them; the agent's own connections to tend-spawn daemons have none).
fn api_connections(agent: &AgentProc, sock: &std::path::Path) -> usize {
    let mine: std::collections::HashSet<String> = fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let table = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
            f.len() >= 8
                && f[5] == "03"
                && mine.contains(f[6])
                && std::path::Path::new(f[7]) == sock
        })
        .count()
}

#[test]
fn followers_that_leave_are_let_go_and_a_half_closed_client_still_gets_its_answer() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    // A quiet task: its log follower has nothing to send for a long time.
    let file = write_job(
        &sb,
        "quiet.hcl",
        &job(
            "quiet",
            1,
            NO_RESTART,
            &sh_task("q", "echo hi; exec /bin/sleep 300", ""),
        ),
    );
    let id = submit(&agent, &file).remove(0);
    wait_task(&agent, &id, "q", running);
    let sock = sb.run_dir().join("tend.sock");
    let follow = |path: &str| {
        let mut s = UnixStream::connect(sb.run_dir().join("tend.sock")).expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: tend\r\n\r\n").as_bytes())
            .expect("send");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("head");
        assert_eq!(&head, b"HTTP/1.1 200");
        s
    };
    let followers: Vec<UnixStream> = (0..3)
        .map(|_| follow(&format!("/v1/allocations/{id}/tasks/q/logs?follow=true")))
        .chain((0..3).map(|_| follow("/v1/events?follow=true")))
        .collect();
    assert!(
        wait_until(LONG, || api_connections(&agent, &sock) == 6),
        "the agent holds {} API connections, not the 6 followers",
        api_connections(&agent, &sock)
    );
    // The readers go (as `tend logs -f` does on Ctrl-C): so do their streams,
    // though nothing more was written to them.
    drop(followers);
    assert!(
        wait_until(LONG, || api_connections(&agent, &sock) == 0),
        "the agent still holds {} API connections",
        api_connections(&agent, &sock)
    );

    // A client that shuts its write side after the request is still there.
    let mut s = UnixStream::connect(sb.run_dir().join("tend.sock")).expect("connect");
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: tend\r\n\r\n")
        .expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let out = agent.cli(&["stop", &id]);
    assert!(out.status.success(), "{out:?}");
    wait_task(&agent, &id, "q", dead);
}

#[test]
fn an_agent_restart_does_not_hand_a_failing_task_its_attempts_afresh() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let restart = "    restart {\n      attempts = 1\n      delay    = \"100ms\"\n      interval = \"10m\"\n      mode     = \"fail\"\n    }";
    let script = "/bin/rm -f \"$TEND_TASK_DIR/ctl\"; /bin/mkfifo \"$TEND_TASK_DIR/ctl\" && read c < \"$TEND_TASK_DIR/ctl\"; exit $c";
    let file = write_job(
        &sb,
        "flaky.hcl",
        &job("flaky", 1, restart, &sh_task("t", script, "")),
    );
    let id = submit(&agent, &file).remove(0);
    // Run 1 fails: its one restart is used.
    wait_task(&agent, &id, "t", running);
    release(&sb, &id, "t", 1);
    let t = wait_task(&agent, &id, "t", |t| t["run"] == 2 && running(t));
    assert_eq!(t["restarts"], 1, "{t:#}");
    // A new agent takes run 2 up.
    agent.kill9();
    agent.restart();
    wait_task(&agent, &id, "t", |t| t["run"] == 2 && running(t));
    // Run 2 fails: the attempts were used before the restart, so it is over.
    release(&sb, &id, "t", 1);
    let t = wait_task(&agent, &id, "t", dead);
    assert_eq!(t["run"], 2, "a third run started: {t:#}");
    assert_eq!(t["restarts"], 1, "{t:#}");
    assert_eq!(t["failed"], true, "{t:#}");
    assert_eq!(t["exit"]["exit_code"], 1, "{t:#}");
}

// ---------------------------------------------------------------------------
// The CLI at its edges

#[test]
fn an_empty_alloc_id_is_a_clear_error_and_stops_nothing() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "one.hcl",
        &job("one", 1, NO_RESTART, &sh_task("t", WAIT_FOR_CODE, "")),
    );
    let id = submit(&agent, &file).remove(0);
    wait_task(&agent, &id, "t", running);
    for verb in [&["status", ""][..], &["stop", ""], &["logs", "", "t"]] {
        let out = agent.cli(verb);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{verb:?}: {out:?}");
        assert!(
            stderr.contains("the allocation id is empty: give an id or a unique prefix of one"),
            "{verb:?}: {stderr}"
        );
    }
    // "" is a prefix of every id: the API refuses it too, rather than take the
    // only allocation there is.
    let r = agent.http("POST", "/v1/allocations//stop", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("the allocation id is empty"),
        "{}",
        r.text()
    );
    let t = task_of(&agent, &id, "t");
    assert!(running(&t), "an empty id stopped the allocation: {t:#}");
    release(&sb, &id, "t", 0);
    wait_task(&agent, &id, "t", dead);
}

#[test]
fn a_job_over_the_api_limit_gets_the_agents_413_message_not_a_broken_pipe() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let big = "x".repeat(5 * 1024 * 1024);
    let file = write_job(
        &sb,
        "big.hcl",
        &job(
            "big",
            1,
            NO_RESTART,
            &sh_task("t", "true", &format!("      env {{ BIG = \"{big}\" }}")),
        ),
    );
    for _ in 0..3 {
        let out = agent.cli(&["run", file.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("request body over the API's limit of 4 MiB (4194304 bytes)"),
            "{stderr}"
        );
        assert!(!stderr.contains("Broken pipe"), "{stderr}");
    }
    assert_eq!(
        agent.get_json("/v1/allocations")["allocations"],
        serde_json::json!([])
    );
}

#[test]
fn tend_status_of_an_alloc_shows_its_ports() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let ports = "      resources {\n        network {\n          port \"http\" {}\n          port \"admin\" {}\n        }\n      }";
    let file = write_job(
        &sb,
        "ports.hcl",
        &job(
            "ports",
            1,
            NO_RESTART,
            &sh_task("web", WAIT_FOR_CODE, ports),
        ),
    );
    let id = submit(&agent, &file).remove(0);
    wait_task(&agent, &id, "web", running);
    let a = agent.get_json(&format!("/v1/allocations/{id}"));
    let out = agent.cli(&["status", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let given = a["ports"]["web"].as_array().expect("ports of web");
    assert_eq!(given.len(), 2, "{a:#}");
    let words: Vec<String> = given
        .iter()
        .map(|p| {
            format!(
                "{} {}:{}",
                p["label"].as_str().expect("label"),
                p["host_ip"].as_str().expect("ip"),
                p["host_port"]
            )
        })
        .collect();
    assert!(
        text.contains(&format!("Ports:\n  web: {}\n", words.join(", "))),
        "{text}\n{a:#}"
    );
    release(&sb, &id, "web", 0);
    wait_task(&agent, &id, "web", dead);
}

#[test]
fn a_lost_run_leaves_no_socket_file_behind() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "lost.hcl",
        &job(
            "lost",
            1,
            NO_RESTART,
            &sh_task("t", "exec /bin/sleep 1000", ""),
        ),
    );
    let id = submit(&agent, &file).remove(0);
    let t = wait_task(&agent, &id, "t", running);
    let s = wait_state(&sb, &id, "t", |s| s["handle"]["socket_path"].is_string());
    let socket = PathBuf::from(s["handle"]["socket_path"].as_str().expect("socket"));
    assert!(socket.exists(), "{}", socket.display());
    // SIGKILL leaves tend-spawn no moment to remove its socket.
    sigkill(pid_of(&t, "daemon_pid"));
    let t = wait_task(&agent, &id, "t", dead);
    assert_eq!(t["lost"], true, "{t:#}");
    assert!(
        wait_until(LONG, || !socket.exists()),
        "the lost run's socket {} is still there",
        socket.display()
    );
    let left: Vec<_> = fs::read_dir(sb.run_dir().join("s"))
        .expect("socket dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "sockets left: {left:?}");
}

#[test]
fn the_supervisors_log_keeps_every_run_each_under_its_header() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let restart = "    restart {\n      attempts = 2\n      delay    = \"0s\"\n      interval = \"10m\"\n      mode     = \"fail\"\n    }";
    let file = write_job(
        &sb,
        "thrice.hcl",
        &job("thrice", 1, restart, &sh_task("t", "exit 4", "")),
    );
    let id = submit(&agent, &file).remove(0);
    let t = wait_task(&agent, &id, "t", dead);
    assert_eq!(t["run"], 3, "{t:#}");
    let log = fs::read_to_string(alloc_dir(&sb, &id).join("logs/t.tend-spawn.log"))
        .expect("tend-spawn log");
    let headers: Vec<usize> = (1..=3)
        .map(|run| {
            log.find(&format!(" === run {run} ===\n"))
                .unwrap_or_else(|| panic!("no header of run {run} in:\n{log}"))
        })
        .collect();
    assert!(headers.windows(2).all(|w| w[0] < w[1]), "{log}");
    assert_eq!(log.matches("exit recorded").count(), 3, "{log}");
    // Every line whole: none cut into by another run's.
    for line in log.lines() {
        assert!(line.contains(&format!("alloc_id={id} task=t ")), "{line:?}");
    }
}

/// A docker task named after one of tend's own entries of the alloc dir (`logs`
/// with the volume `.` would get every task's logs read-write) is refused by
/// `tend validate` and by the API, each naming the place and the field.
#[test]
fn a_task_named_after_tend_s_own_alloc_dir_entries_is_refused() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    for name in ["logs", "alloc", "web_exit_status", ".hidden"] {
        let text = format!(
            "job \"j\" {{\n  group \"g\" {{\n    task \"{name}\" {{\n      driver = \"docker\"\n      config {{\n        image   = \"busybox\"\n        volumes = [\".:/all\"]\n      }}\n    }}\n  }}\n}}\n"
        );
        let file = write_job(&sb, "reserved.hcl", &text);
        let out = sb.run_tend(&[std::ffi::OsStr::new("validate"), file.as_os_str()], LONG);
        assert_eq!(out.code, Some(1), "{name}: {}", out.stdout);
        let want = format!(
            "{}:3:10: job.j.group.g.task.{name}: task name {name:?} ",
            file.display()
        );
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains(&want), "{name}: {said}");

        let r = agent.http("POST", "/v1/jobs?file=r.hcl", text.as_bytes());
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        let v = r.json();
        let d = &v["diagnostics"][0];
        assert_eq!(
            (d["line"].as_u64(), d["column"].as_u64()),
            (Some(3), Some(10)),
            "{v:#}"
        );
        assert_eq!(d["path"], format!("job.j.group.g.task.{name}"), "{v:#}");
        assert!(
            d["message"]
                .as_str()
                .unwrap_or("")
                .contains("choose another name"),
            "{v:#}"
        );
    }
    assert!(agent.get_json("/v1/allocations")["allocations"]
        .as_array()
        .expect("allocations")
        .is_empty());
}

/// Item 12.8: in root mode another local user can neither list the allocs,
/// read a task's exit status file, nor write an alloc's shared dir, though
/// that dir is 1777 for the tasks' users, and the data dir is walkable by all;
/// the exec task running as nobody still writes its /alloc and /local, and the
/// operator still reads the exit file (0644: its chain is what is closed).
#[test]
fn another_user_cannot_list_allocs_read_exit_files_or_write_alloc() {
    use std::os::unix::fs::MetadataExt;
    require_root!();
    let sb = Sandbox::new();
    fs::set_permissions(sb.data_dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = AgentProc::start(&sb);
    let exec_task = |name: &str, script: &str| Task::sh(name, script).driver("exec").to_string();
    let tasks = exec_task("done", "exit 3")
        + &exec_task(
            "sleeper",
            "echo a > /alloc/from-task && echo l > /local/from-task && exec sleep 300",
        );
    let file = write_job(&sb, "j.hcl", &job("j", 1, NO_RESTART, &tasks));
    let id = submit(&agent, &file).remove(0);
    wait_task(&agent, &id, "done", dead);
    wait_task(&agent, &id, "sleeper", running);
    let dir = alloc_dir(&sb, &id);
    assert!(
        wait_until(LONG, || dir.join("alloc/from-task").exists()
            && dir.join("sleeper/local/from-task").exists()),
        "the task could not write its /alloc and /local"
    );

    let allocs = sb.data_dir().join("allocs");
    let exit_file = dir.join("done_exit_status");
    let other = tend_tests::ThrowawayUser::create();
    let r = other.run("/bin/ls", &[&allocs]);
    assert!(r.is_err(), "{} listed the allocs: {r:?}", other.name);
    let r = other.run("/bin/cat", &[&exit_file]);
    assert!(r.is_err(), "{} read an exit file: {r:?}", other.name);
    let planted = dir.join("alloc/planted");
    let r = other.run("/usr/bin/touch", &[&planted]);
    assert!(
        r.is_err() && !planted.exists(),
        "{} wrote /alloc: {r:?}",
        other.name
    );
    for d in [&allocs, &dir] {
        assert_eq!(
            fs::metadata(d).expect("stat").mode() & 0o7777,
            0o700,
            "{}",
            d.display()
        );
    }
    assert_eq!(
        fs::metadata(&exit_file).expect("exit file").mode() & 0o777,
        0o644
    );
    assert!(fs::read_to_string(&exit_file)
        .expect("the operator reads it")
        .contains("\"exit_code\": 3"));
}

/// Unmounts (lazily) what a test mounted, even when it fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn is_mount_point(p: &std::path::Path) -> bool {
    let want = format!(" {} ", p.display());
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.contains(&want))
}

/// The binds the docker driver mounts for the engine live only while a
/// container starts; those an agent that died meanwhile left in
/// `<run_dir>/binds` are unmounted and removed by the next agent, and nothing
/// of their sources goes with them.
#[test]
fn an_agent_clears_the_binds_a_dead_agent_left_staged() {
    require_root!();
    let sb = Sandbox::new();
    let src = sb.scratch_dir().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("keep"), "kept").expect("write");
    let file_src = sb.scratch_dir().join("conf.txt");
    fs::write(&file_src, "kept").expect("write");
    let staged = sb.run_dir().join("binds/web-0123456789ab");
    fs::create_dir_all(staged.join("0")).expect("mkdir");
    fs::write(staged.join("1"), "").expect("point");
    let mut guards = Vec::new();
    for (from, point) in [(&src, staged.join("0")), (&file_src, staged.join("1"))] {
        nix::mount::mount(
            Some(from.as_path()),
            &point,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        assert!(is_mount_point(&point));
        guards.push(Unmount(point));
    }

    let _agent = AgentProc::start(&sb);
    for g in &guards {
        assert!(!is_mount_point(&g.0), "{} is still mounted", g.0.display());
    }
    assert!(!staged.exists(), "{} is left", staged.display());
    assert_eq!(fs::read_to_string(src.join("keep")).expect("kept"), "kept");
    assert_eq!(fs::read_to_string(&file_src).expect("kept"), "kept");
}

#[test]
fn api_stats_answer_per_task_stream_until_the_client_leaves_and_refuse_bad_input() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "idle.hcl",
        &job(
            "idle",
            1,
            NO_RESTART,
            &sh_task("s", "exec /bin/sleep 300", ""),
        ),
    );
    let id = submit(&agent, &file).remove(0);
    wait_task(&agent, &id, "s", running);

    let v = agent.get_json(&format!("/v1/allocations/{}/stats", &id[..8]));
    assert_eq!(v["id"], id.as_str(), "{v:#}");
    let t = &v["tasks"][0];
    assert_eq!(
        (&t["task"], &t["state"]),
        (&"s".into(), &"running".into()),
        "{v:#}"
    );
    assert!(t["reason"].is_null(), "{v:#}");
    // With a cgroup the figures are there; a raw_exec task without one
    // (not root) answers with nulls, not an error.
    assert_eq!(t["cgroup_version"].is_null(), t["pids"].is_null(), "{v:#}");
    assert_eq!(
        t["cgroup_version"].is_null(),
        t["memory"]["current"].is_null(),
        "{v:#}"
    );

    for (target, status, words) in [
        (
            format!("/v1/allocations/{id}/stats?interval=fast"),
            400,
            "interval",
        ),
        (
            format!("/v1/allocations/{id}/stats?follow=maybe"),
            400,
            "follow",
        ),
        ("/v1/allocations/nope/stats".to_string(), 404, "nope"),
    ] {
        let r = agent.http("GET", &target, b"");
        assert_eq!(r.status, status, "{target}: {}", r.text());
        assert!(r.text().contains(words), "{target}: {}", r.text());
    }
    assert_eq!(
        agent
            .http("POST", &format!("/v1/allocations/{id}/stats"), b"")
            .status,
        405
    );

    // The stream: a line per interval, and the agent lets go when the reader leaves.
    let sock = sb.run_dir().join("tend.sock");
    let mut s = UnixStream::connect(&sock).expect("connect");
    s.write_all(
        format!(
            "GET /v1/allocations/{id}/stats/stream?interval=100ms HTTP/1.1\r\nHost: tend\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let lines = |got: &[u8]| {
        String::from_utf8_lossy(got)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["id"] == id.as_str())
            .count()
    };
    while lines(&got) < 3 {
        let n = s.read(&mut buf).expect("read the stream");
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(s);
    assert!(
        wait_until(LONG, || api_connections(&agent, &sock) == 0),
        "the agent still holds {} API connections",
        api_connections(&agent, &sock)
    );

    let out = agent.cli(&["stop", &id]);
    assert!(out.status.success(), "{out:?}");
    wait_task(&agent, &id, "s", dead);
    let v = agent.get_json(&format!("/v1/allocations/{id}/stats"));
    assert_eq!(v["tasks"][0]["reason"], "the task is dead", "{v:#}");
    assert!(v["tasks"][0]["cpu"]["usage_us"].is_null(), "{v:#}");
}

/// Only root and the agent's own user may use the API: with the socket and its
/// dir opened to all, another local user still gets a 403, and the agent goes
/// on answering its own.
#[test]
fn a_peer_that_is_neither_root_nor_the_agents_user_is_refused() {
    require_root!();
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let sock = sb.run_dir().join("tend.sock");
    fs::set_permissions(sb.run_dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).expect("chmod");
    let other = tend_tests::ThrowawayUser::create();
    let answer = other
        .run(
            "/usr/bin/curl",
            &[
                "-s",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                sock.to_str().expect("utf-8"),
                "http://tend/v1/health",
            ],
        )
        .expect("curl as another user");
    let (body, status) = answer.rsplit_once('\n').expect("a status line");
    assert_eq!(status, "403", "{answer}");
    let v: Value = serde_json::from_str(body).expect("a JSON error");
    assert_eq!(
        v["error"], "this socket serves root and the agent's user only",
        "{v:#}"
    );
    assert_eq!(agent.get_json("/v1/health")["ok"], true);
}

/// The samples of a Prometheus exposition: `name{labels}` -> value.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample line");
            (k.to_string(), v.parse().expect("sample value"))
        })
        .collect()
}

#[test]
fn metrics_count_tasks_starts_supervisors_logs_and_the_reattach() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let text = job(
        "m",
        1,
        NO_RESTART,
        &sh_task("t", "echo twelve-bytes; exec sleep 300", ""),
    );
    let id = agent.submit(&text)[0].clone();
    wait_task(&agent, &id, "t", |t| t["state"] == "running");
    // The task's stdout log holds its line (not only tend-spawn's own log).
    let stdout_log = sb.data_dir().join("allocs").join(&id).join("logs/t.stdout");
    assert!(wait_until(LONG, || fs::metadata(&stdout_log)
        .is_ok_and(|m| m.len() >= 13)));
    // The start is counted once the driver hands the run back, a moment
    // after the task shows running.
    assert!(wait_until(LONG, || {
        samples(&agent.http("GET", "/v1/metrics", b"").text())
            .get("tend_task_starts_total{driver=\"raw_exec\"}")
            == Some(&1.0)
    }));
    let r = agent.http("GET", "/v1/metrics", b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = samples(&r.text());
    assert_eq!(m["tend_tasks{state=\"running\"}"], 1.0, "{m:#?}");
    assert_eq!(m["tend_allocations"], 1.0);
    assert_eq!(m["tend_task_starts_total{driver=\"raw_exec\"}"], 1.0);
    assert_eq!(m["tend_task_start_duration_seconds_count"], 1.0);
    assert_eq!(
        m["tend_task_start_duration_seconds_bucket{le=\"+Inf\"}"],
        1.0
    );
    assert_eq!(m["tend_supervisors"], 1.0);
    // One tend-spawn: more than nothing, less than 64 MiB.
    let rss = m["tend_supervisor_memory_bytes{kind=\"rss\"}"];
    let uss = m["tend_supervisor_memory_bytes{kind=\"uss\"}"];
    assert!(
        rss > 0.0 && rss < 64.0 * 1024.0 * 1024.0 && uss > 0.0 && uss <= rss,
        "{m:#?}"
    );
    assert!(m["tend_log_bytes{stream=\"stdout\"}"] >= 12.0, "{m:#?}");
    assert!(m["tend_agent_memory_bytes{kind=\"rss\"}"] > 0.0);
    assert_eq!(m["tend_reattach_tasks{outcome=\"reattached\"}"], 0.0);

    // A new agent takes the task up: the reattach says so; the counters of
    // starts are this agent's own.
    agent.kill9();
    agent.restart();
    let m = samples(&agent.http("GET", "/v1/metrics", b"").text());
    assert_eq!(
        m["tend_reattach_tasks{outcome=\"reattached\"}"], 1.0,
        "{m:#?}"
    );
    assert_eq!(m["tend_task_starts_total{driver=\"raw_exec\"}"], 0.0);
    assert_eq!(m["tend_tasks{state=\"running\"}"], 1.0);
    assert!(m.contains_key("tend_reattach_duration_seconds"));
}

#[test]
fn a_group_network_gives_every_task_the_same_ports() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let group = "    network {\n      port \"http\" {}\n    }\n";
    let script = "echo $TEND_PORT_http $TEND_PORT_own > $TEND_TASK_DIR/ports";
    let tasks = sh_task(
        "a",
        script,
        "      resources {\n        network {\n          port \"own\" {}\n        }\n      }\n",
    ) + &sh_task("b", script, "");
    let text = tend_tests::job::JobFile::new("net")
        .group_hcl(NO_RESTART)
        .group_hcl(group)
        .tasks_hcl(&tasks)
        .to_string();
    let id = agent.submit(&text)[0].clone();
    for t in ["a", "b"] {
        wait_task(&agent, &id, t, |t| t["state"] == "dead");
    }
    let read = |t: &str| {
        fs::read_to_string(
            sb.data_dir()
                .join("allocs")
                .join(&id)
                .join(t)
                .join("local/ports"),
        )
        .unwrap_or_else(|e| panic!("{t}: {e}"))
    };
    let (a, b) = (read("a"), read("b"));
    let a: Vec<&str> = a.split_whitespace().collect();
    let b: Vec<&str> = b.split_whitespace().collect();
    let http: u16 = a[0].parse().expect("a port");
    assert_eq!(b[0], a[0], "both tasks see the group's one port");
    let own: u16 = a[1].parse().expect("a's own port");
    assert_ne!(own, http);
    assert_eq!(b.len(), 1, "b has no port of a's: {b:?}");
    let alloc = agent.get_json(&format!("/v1/allocations/{id}"));
    assert!(alloc.to_string().contains(&http.to_string()), "{alloc:#}");
}

#[test]
fn logs_tail_and_json_and_events_by_alloc_and_task_and_followed() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let a = agent.submit(&job(
        "lines",
        1,
        NO_RESTART,
        &sh_task(
            "t",
            "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 300",
            "",
        ),
    ))[0]
        .clone();
    let b = agent.submit(&job(
        "other",
        1,
        NO_RESTART,
        &sh_task("u", "exec sleep 300", ""),
    ))[0]
        .clone();
    wait_task(&agent, &a, "t", |t| t["state"] == "running");
    wait_task(&agent, &b, "u", |t| t["state"] == "running");
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(wait_until(LONG, || text(agent.cli(&["logs", &a, "t"]))
        .ends_with("line 5\n")));
    assert_eq!(
        text(agent.cli(&["logs", "-n", "2", &a, "t"])),
        "line 4\nline 5\n"
    );
    assert_eq!(
        text(agent.cli(&["logs", "--tail", "1", "--json", &a, "t"])),
        "{\"line\":\"line 5\",\"stream\":\"stdout\"}\n"
    );

    // Events: every kept one of a's task t, none of b's.
    let evs = text(agent.cli(&["events", "--alloc", &a[..8], "--json"]));
    let evs: Vec<Value> = evs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!evs.is_empty());
    assert!(
        evs.iter()
            .all(|e| e["alloc_id"] == a.as_str() && e["task"] == "t"),
        "{evs:?}"
    );
    assert!(evs.iter().any(|e| e["kind"] == "started"), "{evs:?}");
    let none = text(agent.cli(&["events", "--task", "nope"]));
    assert_eq!(none, "");

    // Followed: a new event of b arrives after the kept ones; none of a's.
    let mut follow = std::process::Command::new(tend_tests::bin("tend"))
        .args(["--run-dir"])
        .arg(sb.run_dir())
        .args(["events", "-f", "--json", "--alloc", &b])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    // The kept "started" of b first.
    lines.read_line(&mut line).unwrap();
    assert!(line.contains("\"kind\":\"started\""), "{line}");
    // An event of a's first: not in b's stream.
    let _ = agent.cli(&["signal", &a, "t", "SIGUSR2"]);
    assert!(agent.cli(&["signal", &b, "u", "SIGHUP"]).status.success());
    line.clear();
    lines.read_line(&mut line).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["alloc_id"], b.as_str(), "{line}");
    assert_eq!(e["kind"], "signaled", "{line}");
}

#[test]
fn tend_run_follows_the_tasks_until_they_run_and_detach_does_not() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let ok = write_job(
        &sb,
        "ok.hcl",
        &job(
            "ok",
            1,
            NO_RESTART,
            &(sh_task("web", "exec sleep 300", "") + &sh_task("once", "true", "")),
        ),
    );
    let out = agent.cli(&["run", ok.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("submitted"), "{stdout}");
    assert!(stdout.contains(" web: started run 1: pid "), "{stdout}");
    assert!(stdout.contains(" web: running\n"), "{stdout}");
    // `true` is done once it started: it may still show running then.
    assert!(
        stdout.contains(" once: completed\n") || stdout.contains(" once: running\n"),
        "{stdout}"
    );

    let bad = write_job(
        &sb,
        "bad.hcl",
        &job(
            "bad",
            1,
            NO_RESTART,
            &tend_tests::job::Task::command("t", "/nonexistent/cmd", &[]).to_string(),
        ),
    );
    let out = agent.cli(&["run", bad.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(" t: failed\n"), "{stdout}");

    // --detach: the ids and nothing more, at once.
    let out = agent.cli(&["run", "--detach", ok.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.ends_with(" submitted\n"), "{stdout}");
}

#[test]
fn jobs_by_name_list_status_stop_purge_and_gc_never_a_live_one() {
    let sb = Sandbox::new();
    let agent = AgentProc::start_with_config(&sb, "gc_retention = \"1h\"\n");
    let web = write_job(
        &sb,
        "web.hcl",
        &job("web", 2, NO_RESTART, &sh_task("t", "exec sleep 300", "")),
    );
    let once = write_job(
        &sb,
        "once.hcl",
        &job("once", 1, NO_RESTART, &sh_task("t", "true", "")),
    );
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    text(agent.cli(&["run", web.to_str().unwrap()]));
    text(agent.cli(&["run", once.to_str().unwrap()]));
    let once_id = submit(&agent, &once)[0].clone();
    wait_task(&agent, &once_id, "t", |t| t["state"] == "dead");

    let list: Value = serde_json::from_str(&text(agent.cli(&["job", "list", "--json"]))).unwrap();
    let jobs = list["jobs"].as_array().unwrap();
    let web_row = jobs.iter().find(|j| j["name"] == "web").unwrap();
    assert_eq!(web_row["allocations"], 2, "{list:#}");
    assert_eq!(web_row["by_status"]["running"], 2, "{list:#}");
    assert_eq!(
        jobs.iter().find(|j| j["name"] == "once").unwrap()["allocations"],
        2
    );

    let status: Value =
        serde_json::from_str(&text(agent.cli(&["status", "web", "--json"]))).unwrap();
    assert_eq!(
        status["allocations"].as_array().unwrap().len(),
        2,
        "{status:#}"
    );
    let none = agent.cli(&["status", "no-such-job"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no allocation or job \"no-such-job\""));

    // gc: only the dead ones, of the job asked; never web's running ones.
    let gc: Value = serde_json::from_str(&text(agent.cli(&["gc", "--json"]))).unwrap();
    let collected: Vec<&str> = gc["collected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(collected.len(), 2, "both of once's: {gc:#}");
    assert!(collected.contains(&once_id.as_str()));
    assert!(!sb.data_dir().join("allocs").join(&once_id).exists());
    assert_eq!(
        agent
            .http("GET", &format!("/v1/allocations/{once_id}"), b"")
            .status,
        404
    );
    assert_eq!(
        agent.get_json("/v1/allocations")["allocations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // stop JOB stops each of its allocations; purge removes them.
    let stopped = text(agent.cli(&["stop", "web"]));
    assert_eq!(stopped.matches("allocation ").count(), 2, "{stopped}");
    let purged = text(agent.cli(&["job", "purge", "web"]));
    assert_eq!(purged.matches("removed allocation ").count(), 2, "{purged}");
    assert_eq!(
        agent.get_json("/v1/allocations")["allocations"],
        serde_json::json!([])
    );
    assert_eq!(
        fs::read_dir(sb.data_dir().join("allocs")).unwrap().count(),
        0
    );
}

#[test]
fn the_agent_collects_dead_allocations_after_gc_retention_on_its_own() {
    let sb = Sandbox::new();
    let agent =
        AgentProc::start_with_config(&sb, "gc_retention = \"1s\"\ngc_interval = \"200ms\"\n");
    let dead = agent.submit(&job("d", 1, NO_RESTART, &sh_task("t", "true", "")))[0].clone();
    let live = agent.submit(&job(
        "l",
        1,
        NO_RESTART,
        &sh_task("t", "exec sleep 300", ""),
    ))[0]
        .clone();
    // Gone a retention after its end (on a loaded host it may be gone
    // before a poll sees it dead: only its going is waited for).
    assert!(wait_until(LONG, || {
        agent
            .http("GET", &format!("/v1/allocations/{dead}"), b"")
            .status
            == 404
            && !sb.data_dir().join("allocs").join(&dead).exists()
    }));
    // The live one stays, however old.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(task_of(&agent, &live, "t")["state"], "running");
}

// ---------------------------------------------------------------------------
// The spawn launcher

/// The agent's spawn launcher: its child running `tend spawn-launcher`.
fn launcher_of(agent_pid: i32) -> Option<i32> {
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<i32>().ok());
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(agent_pid) && cmdline.ends_with(b"\0spawn-launcher\0")
        })
}

/// What each fd of `pid` is (`socket:[N]`, `pipe:[N]`, a path).
fn fd_targets(pid: i32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(") ").expect("stat");
    rest.split(' ').nth(1).expect("ppid").parse().expect("ppid")
}

/// A hundred tasks start through the launcher, which holds a handful of fds
/// however many connections the agent holds; nothing the agent or the
/// launcher holds reaches a tend-spawn or its task. Each tend-spawn is the
/// process the launcher exec'd, in place (no first process forks it): the
/// launcher's child, leading a session of its own; and the launcher reaps
/// each when it ends, leaving no zombie.
#[test]
fn a_hundred_tasks_start_through_the_launcher_and_none_gets_an_agent_fd() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "hundred.hcl",
        &job(
            "hundred",
            100,
            NO_RESTART,
            &sh_task("t", "exec sleep 300", ""),
        ),
    );
    let ids = submit(&agent, &file);
    assert_eq!(ids.len(), 100);
    let pids: Vec<(i32, i32)> = ids
        .iter()
        .map(|id| {
            let t = wait_task(&agent, id, "t", running);
            (pid_of(&t, "pid"), pid_of(&t, "daemon_pid"))
        })
        .collect();
    let launcher = launcher_of(agent.pid()).expect("a spawn launcher under the agent");
    let agent_fds = fd_targets(agent.pid());
    assert!(
        agent_fds
            .iter()
            .filter(|t| t.starts_with("socket:"))
            .count()
            >= 100,
        "the agent holds a connection per task: {agent_fds:?}"
    );
    let launcher_fds = fd_targets(launcher);
    assert!(launcher_fds.len() <= 6, "launcher fds: {launcher_fds:?}");
    let children = |pid: i32| -> Vec<i32> {
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let mut under_launcher = children(launcher);
    under_launcher.sort_unstable();
    let mut daemons: Vec<i32> = pids.iter().map(|&(_, d)| d).collect();
    daemons.sort_unstable();
    assert_eq!(under_launcher, daemons, "the launcher's children");
    let shared = |pid: i32| -> Vec<String> {
        fd_targets(pid)
            .into_iter()
            // Anonymous inodes (signalfd, pidfd, ...) share one name.
            .filter(|t| t != "/dev/null" && !t.starts_with("anon_inode:"))
            .filter(|t| agent_fds.contains(t) || launcher_fds.contains(t))
            .collect()
    };
    for &(task, daemon) in &pids {
        assert!(pid_alive(task) && pid_alive(daemon), "{task} {daemon}");
        assert_eq!(ppid_of(daemon), launcher, "tend-spawn {daemon}'s parent");
        let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(daemon))).unwrap();
        assert_eq!(
            sid.as_raw(),
            daemon,
            "tend-spawn {daemon} leads its session"
        );
        assert_eq!(shared(daemon), Vec::<String>::new(), "tend-spawn {daemon}");
        assert_eq!(shared(task), Vec::<String>::new(), "task {task}");
    }
    // Ten tasks killed: their daemons record the exits, are released and
    // leave, and the launcher reaps them (a zombie keeps its /proc entry).
    for &(task, _) in &pids[..10] {
        sigkill(task);
    }
    for &(_, daemon) in &pids[..10] {
        assert!(
            wait_until(LONG, || !Path::new(&format!("/proc/{daemon}")).exists()),
            "tend-spawn {daemon} was not reaped: {:?}",
            fs::read_to_string(format!("/proc/{daemon}/status")).unwrap_or_default()
        );
    }
    assert_eq!(children(launcher).len(), 90);
}

/// A launcher that dies costs the agent nothing: the tasks it started run on,
/// the next start runs (under a new launcher), and the dead one is reaped.
/// The launcher ends with the agent.
#[test]
fn a_killed_launcher_is_replaced_and_the_next_start_runs() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let one = |name: &str| {
        let file = write_job(
            &sb,
            &format!("{name}.hcl"),
            &job(name, 1, NO_RESTART, &sh_task("t", "exec sleep 300", "")),
        );
        let ids = submit(&agent, &file);
        let t = wait_task(&agent, &ids[0], "t", running);
        pid_of(&t, "pid")
    };
    let first = one("first");
    let launcher = launcher_of(agent.pid()).expect("a spawn launcher under the agent");
    sigkill(launcher);
    // Reaped by the agent: no zombie left.
    assert!(wait_until(LONG, || !Path::new(&format!(
        "/proc/{launcher}"
    ))
    .exists()));
    let second = one("second");
    assert!(pid_alive(first) && pid_alive(second));
    let again = launcher_of(agent.pid()).expect("a new spawn launcher");
    assert_ne!(again, launcher);
    assert!(
        agent.log().contains("the spawn launcher ended"),
        "{}",
        agent.log()
    );
    agent.kill9();
    assert!(
        wait_until(LONG, || !pid_alive(again)),
        "the launcher outlived the agent"
    );
    assert!(pid_alive(first) && pid_alive(second));
}

/// glibc's heaps of threads other than main: an arena's heap is mapped at a
/// multiple of its largest size (64 MiB), read-write up to what it holds and
/// inaccessible beyond.
#[cfg(target_env = "gnu")]
fn thread_arenas(pid: i32) -> Vec<String> {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let lines: Vec<&str> = maps.lines().collect();
    let range = |l: &str| -> (u64, u64, String) {
        let mut f = l.split_whitespace();
        let r = f.next().expect("range");
        let perms = f.next().expect("perms").to_string();
        let (a, b) = r.split_once('-').expect("a-b");
        let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
        (hex(a), hex(b), perms)
    };
    lines
        .windows(2)
        .filter(|w| {
            let (start, end, perms) = range(w[0]);
            let (next, next_end, next_perms) = range(w[1]);
            let anon = w[0].split_whitespace().nth(5).is_none();
            anon && perms == "rw-p"
                && start % HEAP_MAX == 0
                && next == end
                && next_perms == "---p"
                && next_end == start + HEAP_MAX
        })
        .map(|w| w[0].to_string())
        .collect()
}

/// The agent keeps to glibc's main arena and one more: each of its threads
/// would otherwise make an arena of its own and keep its pages (30-38 MB of
/// RSS at 1,000 tasks, 11 MB of it in use; 26-28 MB with two).
#[cfg(target_env = "gnu")]
#[test]
fn the_agent_keeps_one_malloc_arena_besides_main_while_it_starts_many_tasks() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let file = write_job(
        &sb,
        "many.hcl",
        &job("many", 60, NO_RESTART, &sh_task("t", "exec sleep 300", "")),
    );
    let ids = submit(&agent, &file);
    assert_eq!(ids.len(), 60);
    // A one-CPU guest starts them slowly.
    let ok = wait_until(LONG * 4, || {
        agent.get_json("/v1/health")["running_tasks"].as_u64() == Some(60)
    });
    assert!(ok, "{:#}", agent.get_json("/v1/health"));
    let arenas = thread_arenas(agent.pid());
    let threads = fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .expect("status")
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        arenas.len() <= 1,
        "{} arenas besides main ({threads}):\n{}",
        arenas.len(),
        arenas.join("\n")
    );
}

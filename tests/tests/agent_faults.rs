//! The agent-level fault suite (issue 7): the agent killed with SIGKILL at
//! random moments while many tasks start, run and end; tend-spawn killed at
//! random points of its life while the agent waits on it. Every task must end
//! with the exit it really had, or `lost` where a kill made it unknowable;
//! never a wrong code, never a task run twice, never an orphan or a torn file.
//!
//! Short by default; `TEND_FAULT_ROUNDS=N` runs N rounds instead, and
//! `TEND_FAULT_TASKS=N` submits N tasks a round (25 by default).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tend_proto::ExitStatus;
use tend_tests::job::{JobFile, Task, NO_RESTART};
use tend_tests::{pid_alive, random_u64, wait_until, AgentProc, Sandbox};

/// How long every task of a test has to end once the faults stop.
const SETTLE: Duration = Duration::from_secs(90);

fn rounds(default: usize) -> usize {
    std::env::var("TEND_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A random duration below `max` (zero for a zero `max`).
fn random_below(max: Duration) -> Duration {
    let us = u64::try_from(max.as_micros()).expect("micros");
    Duration::from_micros(if us == 0 { 0 } else { random_u64() % us })
}

/// The exit code of the task of allocation `index`.
fn code_of(index: u64) -> i32 {
    i32::try_from((index * 7 + 3) % 256).expect("code")
}

/// How long the task of allocation `index` sleeps, in hundredths of a second
/// (the same table as the script's).
fn sleep_of(index: u64) -> u64 {
    (index * 37) % 40
}

/// The task: note `start <pid> <index>` in `$TEND_TASK_DIR/runs`, sleep the
/// index's time, note `end <pid>`, exit with the index's code.
const TASK: &str = r#"i=$TEND_ALLOC_INDEX
echo "start $$ $i" >> "$TEND_TASK_DIR/runs"
/bin/sleep 0.$(printf %02d $(( (i * 37) % 40 )))
echo "end $$" >> "$TEND_TASK_DIR/runs"
exit $(( (i * 7 + 3) % 256 ))"#;

/// A job of `count` allocations of the task [`TASK`], never restarted.
fn job(name: &str, count: u32) -> String {
    JobFile::new(name)
        .count(count)
        .group_hcl(NO_RESTART)
        .task(Task::sh("t", TASK))
        .to_string()
}

/// Every allocation as `GET /v1/allocations` lists it.
fn allocations(agent: &AgentProc) -> Vec<Value> {
    agent.get_json("/v1/allocations")["allocations"]
        .as_array()
        .expect("allocations")
        .clone()
}

/// The task `t` of an allocation as the list shows it.
fn task_t(alloc: &Value) -> &Value {
    alloc["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == "t")
        .unwrap_or_else(|| panic!("no task t in {alloc:#}"))
}

/// Wait until every task the agent knows is dead; panics with the others.
fn wait_all_dead(agent: &AgentProc, expect: usize) -> Vec<Value> {
    let mut list = Vec::new();
    let ok = wait_until(SETTLE, || {
        list = allocations(agent);
        list.len() == expect && list.iter().all(|a| task_t(a)["state"] == "dead")
    });
    if !ok {
        let open: Vec<&Value> = list
            .iter()
            .filter(|a| task_t(a)["state"] != "dead")
            .take(5)
            .collect();
        panic!(
            "{} allocations, {expect} expected; still not dead: {open:#?}",
            list.len()
        );
    }
    list
}

/// One run of a task as its `runs` file tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunNote {
    pid: i32,
    ended: bool,
}

/// The runs a task noted in `<alloc>/t/local/runs`.
fn runs_of(alloc_dir: &Path) -> Vec<RunNote> {
    let text = fs::read_to_string(alloc_dir.join("t/local/runs")).unwrap_or_default();
    let mut runs: Vec<RunNote> = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next().and_then(|p| p.parse::<i32>().ok())) {
            (Some("start"), Some(pid)) => runs.push(RunNote { pid, ended: false }),
            (Some("end"), Some(pid)) => {
                let r = runs
                    .iter_mut()
                    .find(|r| r.pid == pid)
                    .unwrap_or_else(|| panic!("end of {pid} without a start: {text}"));
                r.ended = true;
            }
            _ => panic!("{}: bad line {line:?}", alloc_dir.display()),
        }
    }
    runs
}

/// Temp files an atomic write would leave behind if it were torn.
fn temp_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(".tmp-") {
            out.push(p);
        } else if p.is_dir() {
            out.extend(temp_leftovers(&p));
        }
    }
    out
}

/// Every exit status file of an allocation (the current one and those moved
/// aside) must parse whole.
fn check_exit_files(alloc_dir: &Path) -> Option<ExitStatus> {
    let mut current = None;
    for e in fs::read_dir(alloc_dir).expect("alloc dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("t_exit_status") {
            continue;
        }
        let es = ExitStatus::read(&e.path())
            .unwrap_or_else(|err| panic!("torn exit status file {}: {err}", e.path().display()));
        if name == "t_exit_status" {
            current = Some(es);
        }
    }
    current
}

/// What the checks found, over all tasks of a test.
#[derive(Debug, Default)]
struct Tally {
    tasks: usize,
    exact: usize,
    lost: usize,
    lost_ran: usize,
    lost_why: BTreeMap<String, usize>,
    wrong: Vec<String>,
    twice: Vec<String>,
}

impl Tally {
    /// Check one dead task against what it really did.
    fn check(&mut self, sb: &Sandbox, agent: &AgentProc, alloc: &Value) {
        self.tasks += 1;
        let id = alloc["id"].as_str().expect("id");
        let index = alloc["index"].as_u64().expect("index");
        let t = task_t(alloc);
        let dir = sb.data_dir().join("allocs").join(id);
        let runs = runs_of(&dir);
        let file = check_exit_files(&dir);
        if runs.len() > 1 {
            self.twice.push(format!("{id}[{index}]: {runs:?}"));
        }
        for r in &runs {
            // Whatever ran is over once its task is dead: no orphan.
            assert!(
                wait_until(Duration::from_secs(5), || !pid_alive(r.pid)),
                "{id}[{index}]: the task's process {} outlives its dead task: {t:#}",
                r.pid
            );
        }
        if t["lost"] == true {
            self.lost += 1;
            if !runs.is_empty() {
                self.lost_ran += 1;
            }
            // The list leaves the events out; the allocation has them.
            let full = agent.get_json(&format!("/v1/allocations/{id}"));
            let why = task_t(&full)["events"]
                .as_array()
                .and_then(|e| e.iter().rev().find(|e| e["kind"] == "lost"))
                .and_then(|e| e["message"].as_str())
                .map_or_else(
                    || "(no lost event in the list)".to_string(),
                    |m| {
                        // The kind of reason, without pids or paths.
                        let head = m.split(':').next().unwrap_or(m);
                        let head = head.rsplit('/').next().unwrap_or(head);
                        head.chars().filter(|c| !c.is_ascii_digit()).collect()
                    },
                );
            *self.lost_why.entry(why).or_default() += 1;
            return;
        }
        let exit = &t["exit"];
        let want = code_of(index);
        let ok = exit["exit_code"] == want
            && t["failed"] == (want != 0)
            && runs.len() == 1
            && runs[0].ended
            && exit["pid"] == runs[0].pid
            && file
                .as_ref()
                .is_some_and(|f| f.exit_code == Some(want) && f.pid == Some(runs[0].pid));
        if ok {
            self.exact += 1;
        } else {
            self.wrong.push(format!(
                "{id}[{index}]: want exit {want}, runs {runs:?}, exit file {file:?}, task {t:#}"
            ));
        }
    }

    fn assert_clean(&self, sb: &Sandbox) {
        let leftovers: Vec<PathBuf> = temp_leftovers(&sb.data_dir().join("allocs"))
            .into_iter()
            .chain(temp_leftovers(&sb.data_dir().join("state")))
            .collect();
        assert!(leftovers.is_empty(), "torn writes left: {leftovers:?}");
        assert!(
            self.wrong.is_empty(),
            "{} wrong exits, e.g. {}",
            self.wrong.len(),
            self.wrong[0]
        );
        assert!(
            self.twice.is_empty(),
            "tasks that ran twice: {:?}",
            self.twice
        );
        // A lost task is rare: a kill made its exit unknowable.
        assert!(
            self.lost * 20 <= self.tasks.max(20),
            "{} of {} tasks lost: {:?}",
            self.lost,
            self.tasks,
            self.lost_why
        );
    }
}

/// Stop the agent and check that nothing of the sandbox is left running.
fn assert_no_orphans(sb: &Sandbox, mut agent: AgentProc) {
    let st = agent.term();
    assert_eq!(st.code(), Some(0), "{st}");
    let mut left = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        left = sb.pids_inside();
        left.is_empty()
    });
    let describe = |pid: &i32| {
        let comm = fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        format!("{pid} {comm}")
    };
    assert!(
        ok,
        "processes of the sandbox left after the agent stopped: {:?}",
        left.iter().map(describe).collect::<Vec<_>>()
    );
}

#[test]
fn the_agent_killed_at_random_moments_never_loses_or_doubles_a_task() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let n = rounds(20);
    // 100 tasks a round when asked for (TEND_FAULT_TASKS=100); fewer by
    // default, so that the whole file stays well under a minute on 2 cores
    // (each task costs a few fsyncs and a tend-spawn).
    let per_round: u32 = std::env::var("TEND_FAULT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let t0 = Instant::now();
    let mut submitted = 0;
    for round in 0..n {
        let ids = agent.submit(&job(&format!("f{round}"), per_round));
        assert_eq!(ids.len(), usize::try_from(per_round).expect("count"));
        submitted += ids.len();
        // One kill in four lands right after the submit returns, while the
        // tasks are being started; the others anywhere in their lives.
        let delay = match random_u64() % 4 {
            0 => Duration::ZERO,
            _ => random_below(Duration::from_millis(500)),
        };
        std::thread::sleep(delay);
        agent.kill9();
        // Half the restarts at once, half after a short while.
        if random_u64().is_multiple_of(2) {
            std::thread::sleep(random_below(Duration::from_millis(200)));
        }
        agent.restart();
    }
    let faults_took = t0.elapsed();
    let list = wait_all_dead(&agent, submitted);
    let settle_took = t0.elapsed() - faults_took;
    let mut tally = Tally::default();
    for a in &list {
        tally.check(&sb, &agent, a);
    }
    assert_no_orphans(&sb, agent);
    eprintln!(
        "agent faults: {n} rounds, {} tasks, {n} agent kills, {:.1?} (faults {:.1?}, settle \
         {:.1?}): {} exits recorded exactly, {} lost ({} of which had started; {:?}), {} wrong, \
         {} ran twice",
        tally.tasks,
        t0.elapsed(),
        faults_took,
        settle_took,
        tally.exact,
        tally.lost,
        tally.lost_ran,
        tally.lost_why,
        tally.wrong.len(),
        tally.twice.len()
    );
    tally.assert_clean(&sb);
}

/// The tend-spawn of the sandbox whose open fds lie in `alloc_dir` (before
/// its start report, the API knows no daemon pid).
fn daemon_in(alloc_dir: &Path) -> Option<i32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "tend-spawn" {
            continue;
        }
        let inside = fs::read_dir(e.path().join("fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p.starts_with(alloc_dir)))
        });
        if inside {
            return Some(pid);
        }
    }
    None
}

#[test]
fn tend_spawn_killed_at_random_points_resolves_to_the_real_exit_or_lost() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let n = rounds(20);
    let t0 = Instant::now();
    let mut kills = 0;
    for round in 0..n {
        // One allocation; its index is 0, so every round uses another job
        // with the index shifted through the name of the job only: the code
        // and the sleep come from the index, so vary the count instead.
        let count = 1 + u32::try_from(round % 4).expect("count");
        let ids = agent.submit(&job(&format!("s{round}"), count));
        let id = ids.last().expect("an allocation").clone();
        let dir = sb.data_dir().join("allocs").join(&id);
        let daemon = if round % 3 == 0 {
            // Before Started: as soon as the daemon shows in /proc.
            let mut pid = None;
            wait_until(Duration::from_secs(10), || {
                pid = daemon_in(&dir);
                pid.is_some()
            });
            pid
        } else {
            // While the task runs, around its exit, around the exit file,
            // and after: a delay across the task's own life and a bit more.
            let mut pid = None;
            wait_until(Duration::from_secs(10), || {
                let a = agent.get_json(&format!("/v1/allocations/{id}"));
                pid = task_t(&a)["daemon_pid"].as_i64();
                pid.is_some() || task_t(&a)["state"] == "dead"
            });
            let index = u64::from(count - 1);
            let life = Duration::from_millis(sleep_of(index) * 10 + 30);
            std::thread::sleep(random_below(life));
            pid.map(|p| i32::try_from(p).expect("pid"))
        };
        if let Some(pid) = daemon {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
    }
    let list = wait_all_dead(&agent, (0..n).map(|r| 1 + r % 4).sum());
    let mut tally = Tally::default();
    for a in &list {
        tally.check(&sb, &agent, a);
    }
    assert_no_orphans(&sb, agent);
    eprintln!(
        "tend-spawn faults: {n} rounds, {} tasks, {kills} tend-spawn kills, {:.1?}: {} exits \
         recorded exactly, {} lost ({} of which had started; {:?}), {} wrong, {} ran twice",
        tally.tasks,
        t0.elapsed(),
        tally.exact,
        tally.lost,
        tally.lost_ran,
        tally.lost_why,
        tally.wrong.len(),
        tally.twice.len()
    );
    // Here kills aim at the daemons: lost is expected often, wrong never.
    assert!(
        tally.wrong.is_empty(),
        "{} wrong exits, e.g. {}",
        tally.wrong.len(),
        tally.wrong[0]
    );
    assert!(
        tally.twice.is_empty(),
        "tasks that ran twice: {:?}",
        tally.twice
    );
    let leftovers = temp_leftovers(&sb.data_dir().join("allocs"));
    assert!(leftovers.is_empty(), "torn writes left: {leftovers:?}");
}

/// An agent killed between linking a replacement state file under its temp
/// name and renaming it leaves `.<name>.tmp-<pid>-<n>` (no syscall links a
/// file over another). The next agent removes those of a writer that is gone
/// as it starts, and leaves a live writer's and every other file alone.
#[test]
fn a_starting_agent_removes_the_temp_files_a_killed_agent_left() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let ids = agent.submit(&job("temps", 1));
    wait_all_dead(&agent, 1);
    agent.kill9();

    // A writer that is gone: a process that ran and was reaped.
    let gone = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn true");
    let gone_pid = gone.id();
    let _ = gone.wait_with_output();
    // A writer that lives (its own temp must stay); in the sandbox's dir, so
    // the sandbox kills it should the test fail first.
    let mut live = std::process::Command::new("/bin/sleep")
        .arg("100")
        .current_dir(sb.data_dir())
        .spawn()
        .expect("spawn sleep");
    let live_pid = live.id();

    let state = sb.data_dir().join("state").join(&ids[0]);
    let stale = [
        state.join(format!(".t.json.tmp-{gone_pid}-106")),
        state.join(format!(".alloc.json.tmp-{gone_pid}-3")),
    ];
    let kept = [
        state.join(format!(".t.json.tmp-{live_pid}-1")),
        state.join("notes.tmp-1-1"),
    ];
    for p in stale.iter().chain(&kept) {
        fs::write(p, b"{\"half\": ").expect("plant temp");
    }
    agent.restart();
    let _ = live.kill();
    let _ = live.wait();

    for p in &stale {
        assert!(!p.exists(), "{} left", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} removed", p.display());
    }
    // The records themselves are untouched and read as before.
    let list = wait_all_dead(&agent, 1);
    assert_eq!(
        task_t(&list[0])["exit"]["exit_code"],
        code_of(0),
        "{list:#?}"
    );
}

//! `tend run FILE`: submitted to the agent when one answers; else the agent
//! runs embedded, in the foreground, as `nomad agent -dev` does: the same task
//! runner, the same drivers (docker included), the same state and exit
//! files. The tasks' output is echoed live; Ctrl-C (or SIGTERM) stops them
//! with their kill_signal and kill_timeout; `tend run` exits with the code of
//! the first task, in file order, that did not end with 0. Every process task
//! goes through its own tend-spawn, so killing `tend run` itself leaves the
//! tasks running with their logs and exit status files.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::agent::config::AgentConfig;
use crate::agent::{Agent, EventLine, Settings};
use crate::jobspec::{self, Job, RestartPolicy};
use crate::logtail::LogFollower;
use crate::outcome::{describe_exit, shell_code};
use crate::paths::Dirs;
use crate::state::{TaskPhase, TaskRecord};

/// Options of a foreground run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job file.
    pub job_file: PathBuf,
    /// Data and run dirs.
    pub dirs: Dirs,
    /// The tend-spawn binary.
    pub spawn_bin: PathBuf,
    /// The cgroup parent of its tasks (`tend` by default).
    pub cgroup_parent: String,
    /// The host's MHz, all cores, for `cpu_hard_limit` (None: /proc/cpuinfo).
    pub cpu_total_compute: Option<u64>,
    /// The embedded agent's config (`--config`), else the defaults.
    pub config: AgentConfig,
}

/// Serialises the lines `tend run` prints about task states, on stderr, so that
/// the tasks' own stdout stays clean for pipes.
fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "==> {line}");
}

/// How often the foreground looks at its tasks when no event comes (a lagging
/// event receiver misses nothing for longer).
const TICK: Duration = Duration::from_millis(250);

/// Run the job in the foreground, on an agent of its own; returns the exit
/// code of `tend run`.
pub async fn run_foreground(opts: RunOptions) -> anyhow::Result<i32> {
    let mut job = match jobspec::parse_file(&opts.job_file) {
        Ok(j) => j,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(1);
        }
    };
    // A foreground run restarts nothing unless its job says so.
    for g in &mut job.groups {
        if g.restart == RestartPolicy::default() {
            g.restart.attempts = 0;
        }
    }
    let settings = embedded_settings(&opts, &job)?;
    let state_dir = settings.state_dir.clone();
    let result = run_embedded(settings, job).await;
    // The state of a run whose tasks all ended goes with it; one with tasks
    // still running (a failed start of the agent's own) stays for a look.
    if matches!(result, Ok((_, true))) {
        let _ = std::fs::remove_dir_all(&state_dir);
        if let Some(parent) = state_dir.parent() {
            // Only when empty: another foreground run may be using it.
            let _ = std::fs::remove_dir(parent);
        }
    }
    result.map(|(code, _)| code)
}

/// The settings of the embedded agent: the dirs and options `tend run` was
/// given, its state store in a dir of its own (removed at the end) so that
/// foreground runs side by side on one data dir do not share a lock, the
/// binds other agents stage in the run dir left alone, and only the drivers
/// its job names (an agent checks each enabled one when it starts).
fn embedded_settings(opts: &RunOptions, job: &Job) -> anyhow::Result<Settings> {
    let mut config = opts.config.clone();
    config.cgroup_parent = Some(opts.cgroup_parent.clone());
    if opts.cpu_total_compute.is_some() {
        config.cpu_total_compute = opts.cpu_total_compute;
    }
    for driver in [
        jobspec::Driver::RawExec,
        jobspec::Driver::Exec,
        jobspec::Driver::Docker,
        jobspec::Driver::Oci,
    ] {
        let used = job
            .groups
            .iter()
            .flat_map(|g| &g.tasks)
            .any(|t| t.driver == driver);
        if !used {
            config
                .plugin
                .entry(driver.name().to_string())
                .or_default()
                .enabled = Some(false);
        }
    }
    let mut settings = Settings::resolve(
        config,
        Some(opts.dirs.data_dir.clone()),
        Some(opts.dirs.run_dir.clone()),
        Some(opts.spawn_bin.clone()),
    )?;
    settings.linger = crate::driver::spawn::config::DEFAULT_LINGER;
    settings.sweep_binds = false;
    settings.spawn_launcher = true;
    settings.state_dir = opts
        .dirs
        .run_dir
        .join("foreground")
        .join(crate::paths::new_alloc_id());
    Ok(settings)
}

/// One task as the foreground follows it.
struct Watch {
    alloc_id: String,
    task: String,
    label: String,
    /// Dropping them tells the task's echo threads that the task is done.
    done: Vec<std::sync::mpsc::Sender<()>>,
    echoes: Vec<std::thread::JoinHandle<()>>,
    /// The end of the last run, said when a restart follows it.
    last_end: Option<String>,
    dead: bool,
}

/// Run the job on an embedded agent until every task is dead; the exit code,
/// and whether every task ended.
async fn run_embedded(settings: Settings, job: Job) -> anyhow::Result<(i32, bool)> {
    std::fs::create_dir_all(&settings.dirs.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data dir {}: {e}",
            settings.dirs.data_dir.display()
        )
    })?;
    crate::paths::ensure_private_dir(&settings.dirs.run_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create run dir {}: {e}",
            settings.dirs.run_dir.display()
        )
    })?;
    if let Some(parent) = settings.state_dir.parent() {
        crate::paths::ensure_private_dir(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
        remove_dead_states(parent);
    }
    let agent = Agent::new(settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut events = agent.events();
    let ids = match agent.submit(job.clone()) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("tend: {e}");
            return Ok((1, true));
        }
    };
    let task_count: usize = job
        .groups
        .iter()
        .map(|g| g.tasks.len() * g.count as usize)
        .sum();
    let prefixed = task_count > 1;
    let mut watches = Vec::new();
    for alloc_id in &ids {
        let (record, _) = agent.alloc(alloc_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(group) = job.groups.iter().find(|g| g.name == record.group) else {
            continue;
        };
        let alloc = agent.settings().dirs.alloc(alloc_id);
        say(&format!(
            "allocation {alloc_id} ({}.{}[{}]) in {}",
            job.name,
            group.name,
            record.index,
            alloc.root.display()
        ));
        for task in &group.tasks {
            // `web[1]`: two runs of one task told apart by the allocation's index.
            let label = if group.count > 1 {
                format!("{}[{}]", task.name, record.index)
            } else {
                task.name.clone()
            };
            let mut done = Vec::new();
            let echoes = [("stdout", false), ("stderr", true)]
                .into_iter()
                .map(|(stream, is_err)| {
                    let follower =
                        LogFollower::new(&alloc.logs(), &task.name, stream, task.logs.max_files);
                    let prefix = prefixed.then(|| format!("{label} | "));
                    let (tx, rx) = std::sync::mpsc::channel::<()>();
                    done.push(tx);
                    std::thread::spawn(move || echo_logs(follower, prefix, is_err, &rx))
                })
                .collect();
            watches.push(Watch {
                alloc_id: alloc_id.clone(),
                task: task.name.clone(),
                label,
                done,
                echoes,
                last_end: None,
                dead: false,
            });
        }
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop_all = |why: &str| {
        say(&format!("{why}: stopping the tasks"));
        for id in &ids {
            if let Err(e) = agent.stop_alloc(id) {
                say(&format!("allocation {id}: {e}"));
            }
        }
    };
    while watches.iter().any(|w| !w.dead) {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(line) => on_event(&agent, &mut watches, &line).await,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            _ = tokio::signal::ctrl_c() => stop_all("interrupt"),
            _ = sigterm.recv() => stop_all("terminated"),
            () = tokio::time::sleep(TICK) => {
                for w in watches.iter_mut().filter(|w| !w.dead) {
                    if record_of(&agent, w).is_some_and(|r| r.phase == TaskPhase::Dead) {
                        finish(&agent, w).await;
                    }
                }
            }
        }
    }
    let mut code = 0;
    for w in &watches {
        let c = match record_of(&agent, w) {
            Some(r) if !r.lost => shell_code(r.last_exit.as_ref(), r.start_errno),
            _ => 1,
        };
        if code == 0 {
            code = c;
        }
    }
    Ok((code, watches.iter().all(|w| w.dead)))
}

/// Remove the state dirs that foreground runs killed before their end left
/// in `dir`: those whose agent lock nobody holds. Their tasks, if any still
/// run, keep their tend-spawn, logs and exit files; no agent takes them up
/// from there.
fn remove_dead_states(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let state = e.path();
        let Ok(lock) = std::fs::OpenOptions::new()
            .write(true)
            .open(state.join("agent.lock"))
        else {
            continue;
        };
        if let Ok(held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            if let Err(e) = std::fs::remove_dir_all(&state) {
                tracing::warn!(dir = %state.display(), error = %e, "cannot remove a dead foreground state");
            }
            drop(held);
        }
    }
}

fn record_of(agent: &Agent, w: &Watch) -> Option<TaskRecord> {
    let (_, tasks) = agent.alloc(&w.alloc_id).ok()?;
    tasks
        .into_iter()
        .find(|t| t.task == w.task)
        .map(std::sync::Arc::unwrap_or_clone)
}

/// Say what a task's event means to the person at the terminal.
async fn on_event(agent: &Agent, watches: &mut [Watch], line: &EventLine) {
    let Some(w) = watches
        .iter_mut()
        .find(|w| w.alloc_id == line.alloc_id && w.task == line.task && !w.dead)
    else {
        return;
    };
    let msg = &line.event.message;
    match line.event.kind.as_str() {
        "started" => {
            let handle = record_of(agent, w).and_then(|r| r.handle);
            match handle {
                Some(h) if h.container_id.is_some() => {
                    let id = h.container_id.unwrap_or_default();
                    say(&format!(
                        "{}: started (container {})",
                        w.label,
                        &id[..id.len().min(12)]
                    ));
                }
                Some(h) => say(&format!(
                    "{}: started (pid {}, tend-spawn {})",
                    w.label,
                    h.task_pid.unwrap_or(0),
                    h.daemon_pid.unwrap_or(0)
                )),
                // Ended already (the record has let its handle go): the
                // event says what started.
                None => say(&format!("{}: {}", w.label, started_words(msg))),
            }
        }
        "exited" => w.last_end = Some(msg.clone()),
        "lost" => w.last_end = Some(format!("lost: {msg}")),
        "restarting" => {
            if let Some(end) = w.last_end.take() {
                say(&format!("{}: {end}", w.label));
            }
            say(&format!("{}: {msg}", w.label));
        }
        "dead" => finish(agent, w).await,
        "failed" | "stopping" | "killed" | "unreachable" | "reachable" | "check"
        | "restart_signaled" => {
            say(&format!("{}: {msg}", w.label));
        }
        _ => {}
    }
}

/// "started (pid 12, tend-spawn 11)" from a started event's message, "run 1:
/// pid 12 (tend-spawn 11)"; the message itself when it is not of that form.
fn started_words(msg: &str) -> String {
    let what = msg.split_once(": ").map_or(msg, |(_, w)| w);
    match what.split_once(" (tend-spawn ") {
        Some((pid, daemon)) => format!(
            "started ({pid}, tend-spawn {})",
            daemon.trim_end_matches(')')
        ),
        None => format!("started ({what})"),
    }
}

/// The task is dead: let its echo threads copy what is left, then say how
/// its last run ended.
async fn finish(agent: &Agent, w: &mut Watch) {
    w.dead = true;
    w.done.clear();
    for e in std::mem::take(&mut w.echoes) {
        let _ = tokio::task::spawn_blocking(move || e.join()).await;
    }
    let Some(r) = record_of(agent, w) else {
        return;
    };
    let end = if r.lost {
        let why = r
            .events
            .iter()
            .rev()
            .find(|e| e.kind == "lost")
            .map_or("the exit is unknown", |e| e.message.as_str());
        format!("lost: {why}")
    } else if let Some(e) = &r.last_exit {
        describe_exit(e)
    } else {
        r.events
            .last()
            .map_or_else(|| "dead".to_string(), |e| e.message.clone())
    };
    say(&format!("{}: {end}", w.label));
}

/// Copy a task's log stream to our stdout or stderr until the task is done, then
/// copy what is left.
fn echo_logs(
    mut f: LogFollower,
    prefix: Option<String>,
    is_err: bool,
    done: &std::sync::mpsc::Receiver<()>,
) {
    let mut buf = Vec::new();
    let mut partial = Vec::new();
    let mut finished = false;
    loop {
        buf.clear();
        if let Err(e) = f.read_available(&mut buf) {
            say(&format!("reading logs: {e}"));
            return;
        }
        if !buf.is_empty() {
            emit(&buf, prefix.as_deref(), &mut partial, is_err);
        }
        if finished {
            if !partial.is_empty() {
                partial.push(b'\n');
                let line = std::mem::take(&mut partial);
                write_out(&line, is_err);
            }
            return;
        }
        finished = matches!(
            done.recv_timeout(Duration::from_millis(25)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) | Ok(())
        );
    }
}

fn emit(bytes: &[u8], prefix: Option<&str>, partial: &mut Vec<u8>, is_err: bool) {
    match prefix {
        None => write_out(bytes, is_err),
        Some(prefix) => write_out(&prefix_lines(bytes, prefix, partial), is_err),
    }
}

/// Prefix every line with `prefix`; an unfinished line waits in `partial`.
fn prefix_lines(bytes: &[u8], prefix: &str, partial: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for &b in bytes {
        if partial.is_empty() {
            partial.extend_from_slice(prefix.as_bytes());
        }
        partial.push(b);
        if b == b'\n' {
            out.append(partial);
        }
    }
    out
}

fn write_out(bytes: &[u8], is_err: bool) {
    if bytes.is_empty() {
        return;
    }
    if is_err {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(bytes);
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
}

/// Submit the job file to the running agent and print the allocations it made.
pub async fn submit(
    client: &super::client::ApiClient,
    file: &std::path::Path,
    json: bool,
    detach: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let text = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let target = format!(
        "/v1/jobs?file={}",
        super::client::enc(&file.display().to_string())
    );
    match client.call("POST", &target, &text, "text/plain").await {
        Ok(v) => {
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(0);
            }
            let ids: Vec<String> = v["allocations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect();
            for id in &ids {
                writeln!(out, "allocation {id} submitted")?;
            }
            if detach {
                return Ok(0);
            }
            out.flush()?;
            super::monitor::monitor(client, &ids, out).await
        }
        Err(super::client::ApiError::Refused { message, .. }) => {
            eprintln!("{message}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_event_is_said_as_the_handle_would() {
        assert_eq!(
            started_words("run 2: pid 12 (tend-spawn 11)"),
            "started (pid 12, tend-spawn 11)"
        );
        assert_eq!(
            started_words("run 1: container 0123456789ab"),
            "started (container 0123456789ab)"
        );
    }

    #[test]
    fn prefixes_whole_lines_only() {
        let mut partial = Vec::new();
        assert_eq!(prefix_lines(b"one\ntw", "t | ", &mut partial), b"t | one\n");
        assert_eq!(prefix_lines(b"o\n", "t | ", &mut partial), b"t | two\n");
        assert!(partial.is_empty());
    }
}

//! `tend run FILE`: with no agent answering, run the job in the foreground. Every
//! task goes through its own tend-spawn, so killing `tend run` itself leaves the
//! tasks running with their logs and exit status files.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tend_proto::{ExitStatus, Request, SpawnConfig, StartReport, Token};
use tokio::sync::watch;

use crate::driver::{self, Launch};
use crate::ident::ProcId;
use crate::jobspec::{self, Job, Task};
use crate::logtail::LogFollower;
use crate::paths::{self, AllocDir, Dirs};
use crate::spawn::{self, Client};

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
}

/// How one task ended, as far as `tend run` knows.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It ran and ended.
    Exited(ExitStatus),
    /// It never started.
    Failed {
        /// errno of the failed step.
        errno: i32,
        /// The message.
        message: String,
    },
    /// Its supervisor vanished and left no exit status file.
    Lost(String),
}

impl Outcome {
    /// The code `tend run` exits with for this task: the exit code, 128+N for a
    /// signal, 127/126 for a command that is missing / not executable (as a shell
    /// does), 1 otherwise.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exited(e) => e.shell_code(),
            Outcome::Failed { errno, .. } if *errno == libc_enoent() => 127,
            Outcome::Failed { errno, .. } if *errno == libc_eacces() => 126,
            Outcome::Failed { .. } | Outcome::Lost(_) => 1,
        }
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}
fn libc_eacces() -> i32 {
    nix::errno::Errno::EACCES as i32
}

/// Describe an exit for a person: "exited with code 3", "killed by signal 9 (SIGKILL)".
pub fn describe_exit(e: &ExitStatus) -> String {
    let d = match (e.exit_code, e.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => {
            let name = nix::sys::signal::Signal::try_from(s)
                .map(|s| format!(" ({})", s.as_str()))
                .unwrap_or_default();
            let mut d = format!("killed by signal {s}{name}");
            if e.oom_killed {
                d.push_str(", out of memory");
            }
            if e.core_dumped {
                d.push_str(", core dumped");
            }
            d
        }
        (None, None) => match &e.error {
            Some(err) => format!("failed: {err}"),
            None => "ended, status unknown".to_string(),
        },
    };
    match super::status::oom_note(e.oom_kills) {
        Some(note) if !e.oom_killed => format!("{d}; {note}"),
        _ => d,
    }
}

/// Serialises the lines `tend run` prints about task states, on stderr, so that
/// the tasks' own stdout stays clean for pipes.
fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "==> {line}");
}

/// Run the job in the foreground; returns the exit code of `tend run`.
pub async fn run_foreground(opts: RunOptions) -> anyhow::Result<i32> {
    let job = match jobspec::parse_file(&opts.job_file) {
        Ok(j) => j,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(1);
        }
    };
    for t in job.groups.iter().flat_map(|g| &g.tasks) {
        check_driver(t)?;
    }
    std::fs::create_dir_all(&opts.dirs.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data dir {}: {e}",
            opts.dirs.data_dir.display()
        )
    })?;
    paths::ensure_private_dir(&opts.dirs.run_dir).map_err(|e| {
        anyhow::anyhow!("cannot create run dir {}: {e}", opts.dirs.run_dir.display())
    })?;
    paths::ensure_private_dir(&opts.dirs.socket_dir()).map_err(|e| {
        anyhow::anyhow!(
            "cannot create socket dir {}: {e}",
            opts.dirs.socket_dir().display()
        )
    })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let task_count: usize = job
        .groups
        .iter()
        .map(|g| g.tasks.len() * g.count as usize)
        .sum();
    let prefixed = task_count > 1;
    let job = Arc::new(job);
    let chroot_env = driver::default_chroot_env();
    let port_alloc = crate::ports::PortAllocator::with_defaults();
    // Every task is checked and configured before the first one starts: a bad
    // user or chroot_env in one task starts nothing.
    let mut prepared = Vec::new();
    let mut errors = Vec::new();
    let mut allocs = Vec::new();
    for (gi, group) in job.groups.iter().enumerate() {
        for index in 0..group.count {
            let alloc_id = paths::new_alloc_id();
            let alloc = opts.dirs.alloc(&alloc_id);
            allocs.push((alloc_id.clone(), alloc.clone(), gi, index));
            for ti in 0..group.tasks.len() {
                let ports = match port_alloc.allocate(&alloc_id, &group.tasks[ti].resources.ports) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("task {}: {e}", group.tasks[ti].name));
                        continue;
                    }
                };
                let ctx = TaskCtx {
                    job: job.clone(),
                    group: gi,
                    index,
                    task: ti,
                    alloc_id: alloc_id.clone(),
                    alloc: alloc.clone(),
                    dirs: opts.dirs.clone(),
                    spawn_bin: opts.spawn_bin.clone(),
                    prefixed,
                    chroot_env: chroot_env.clone(),
                    cgroup_parent: opts.cgroup_parent.clone(),
                    cpu_total_compute: opts.cpu_total_compute,
                    ports,
                };
                match prepare(&ctx) {
                    Ok(config) => prepared.push((ctx, config)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("tend: {e}");
        }
        return Ok(1);
    }
    for (alloc_id, alloc, gi, index) in &allocs {
        let group = &job.groups[*gi];
        let names: Vec<&str> = group.tasks.iter().map(|t| t.name.as_str()).collect();
        alloc.create(&names).map_err(|e| {
            anyhow::anyhow!("cannot create alloc dir {}: {e}", alloc.root.display())
        })?;
        for (ctx, config) in prepared.iter().filter(|(c, _)| &c.alloc_id == alloc_id) {
            if let Some(iso) = &config.isolation {
                let (uid, gid) = driver::resolve_user(&iso.user).unwrap_or((65534, 65534));
                alloc
                    .prepare_for_user(&ctx.task().name, uid, gid)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot prepare alloc dir {}: {e}", alloc.root.display())
                    })?;
            }
        }
        say(&format!(
            "allocation {alloc_id} ({}.{}[{index}]) in {}",
            job.name,
            group.name,
            alloc.root.display()
        ));
    }
    let mut runners = Vec::new();
    for (ctx, config) in prepared {
        runners.push(tokio::spawn(run_task(ctx, config, stop_rx.clone())));
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let all = futures_join(runners);
    tokio::pin!(all);
    let outcomes = loop {
        tokio::select! {
            outcomes = &mut all => break outcomes,
            _ = tokio::signal::ctrl_c() => {
                say("interrupt: stopping the tasks");
                let _ = stop_tx.send(true);
            }
            _ = sigterm.recv() => {
                say("terminated: stopping the tasks");
                let _ = stop_tx.send(true);
            }
        }
    };
    Ok(outcomes
        .iter()
        .map(Outcome::code)
        .find(|c| *c != 0)
        .unwrap_or(0))
}

async fn futures_join(runners: Vec<tokio::task::JoinHandle<Outcome>>) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(runners.len());
    for r in runners {
        out.push(
            r.await
                .unwrap_or_else(|e| Outcome::Lost(format!("runner failed: {e}"))),
        );
    }
    out
}

fn check_driver(t: &Task) -> anyhow::Result<()> {
    match t.driver {
        jobspec::Driver::RawExec | jobspec::Driver::Exec => Ok(()),
        other => anyhow::bail!(
            "task {}: driver {} needs a running agent (start `tend agent`, then `tend run` submits to it): the foreground mode runs raw_exec and exec tasks",
            t.name,
            other.name()
        ),
    }
}

struct TaskCtx {
    job: Arc<Job>,
    group: usize,
    index: u32,
    task: usize,
    alloc_id: String,
    alloc: AllocDir,
    dirs: Dirs,
    spawn_bin: PathBuf,
    prefixed: bool,
    chroot_env: Vec<(String, String)>,
    ports: Vec<crate::ports::AssignedPort>,
    cgroup_parent: String,
    cpu_total_compute: Option<u64>,
}

impl TaskCtx {
    fn task(&self) -> &Task {
        &self.job.groups[self.group].tasks[self.task]
    }

    /// How `tend run` names the task in its lines: the task name, with the
    /// allocation index when the group runs more than one allocation
    /// (`web[1]`), so that two runs of one task can be told apart.
    fn label(&self) -> String {
        let name = &self.task().name;
        if self.job.groups[self.group].count > 1 {
            format!("{name}[{}]", self.index)
        } else {
            name.clone()
        }
    }
}

/// Build the spawn config of a task: its environment, interpolation, driver checks.
fn prepare(ctx: &TaskCtx) -> Result<SpawnConfig, driver::DriverError> {
    let task = ctx.task();
    let group = &ctx.job.groups[ctx.group];
    let setup = driver::task_setup(&driver::TaskContext {
        job: &ctx.job,
        group,
        index: ctx.index,
        task,
        alloc_id: &ctx.alloc_id,
        alloc: &ctx.alloc,
        ports: &ctx.ports,
        env_allowlist: &[],
    })?;
    driver::spawn_config(&Launch {
        dirs: &ctx.dirs,
        alloc_id: &ctx.alloc_id,
        alloc: &ctx.alloc,
        task,
        run: 1,
        env: setup.env,
        command: setup.command.unwrap_or_default(),
        args: setup.args,
        token: Token(paths::random_bytes::<32>()),
        chroot_env: &ctx.chroot_env,
        cgroup_parent: &ctx.cgroup_parent,
        // The foreground run has no agent config: the embedded defaults.
        allow_root: false,
        cpu_total_compute: ctx.cpu_total_compute,
    })
}

async fn run_task(ctx: TaskCtx, config: SpawnConfig, mut stop: watch::Receiver<bool>) -> Outcome {
    let task = ctx.task();
    let name = ctx.label();
    let token = config.token;
    let socket = PathBuf::from(&config.socket_path);
    let report = match spawn::launch(&ctx.spawn_bin, &config).await {
        Ok(r) => r,
        Err(e) => {
            let message = e.to_string();
            say(&format!("{name}: failed to start: {message}"));
            return Outcome::Failed { errno: 0, message };
        }
    };
    let (daemon_pid, task_pid) = match report {
        StartReport::Started {
            daemon_pid,
            task_pid,
            ..
        } => (daemon_pid, task_pid),
        StartReport::Failed { errno, message, .. } => {
            say(&format!("{name}: failed to start: {message}"));
            return Outcome::Failed { errno, message };
        }
    };
    // Pinned by start time now, so that a lost run can be cleaned up later
    // without signalling some process that inherited the pid.
    let leftovers = crate::ident::Leftovers {
        daemon: ProcId::of(daemon_pid),
        task: ProcId::of(task_pid),
        cgroup: config.cgroup.as_ref().map(|c| c.path.clone()),
        env: None,
        socket: Some(PathBuf::from(&config.socket_path)),
    };
    say(&format!(
        "{name}: started (pid {task_pid}, tend-spawn {daemon_pid})"
    ));

    // Dropping a follower's sender tells it the task is done: it wakes at once
    // rather than at its next poll.
    let mut done = Vec::new();
    let followers: Vec<_> = [("stdout", false), ("stderr", true)]
        .into_iter()
        .map(|(stream, is_err)| {
            let follower =
                LogFollower::new(&ctx.alloc.logs(), &task.name, stream, task.logs.max_files);
            let prefix = ctx.prefixed.then(|| format!("{name} | "));
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            done.push(tx);
            std::thread::spawn(move || echo_logs(follower, prefix, is_err, &rx))
        })
        .collect();

    let outcome = watch_task(&socket, token, task, &ctx.alloc, &leftovers, &mut stop).await;
    if matches!(outcome, Outcome::Lost(_)) {
        // No supervisor and no exit file: whatever is left of the run would be
        // an orphan nobody waits for, logs or stops.
        for problem in leftovers.kill() {
            say(&problem);
        }
    }
    drop(done);
    for f in followers {
        let _ = tokio::task::spawn_blocking(move || f.join()).await;
    }
    match &outcome {
        Outcome::Exited(e) => say(&format!("{name}: {}", describe_exit(e))),
        Outcome::Lost(why) => say(&format!("{name}: lost: {why}")),
        Outcome::Failed { message, .. } => say(&format!("{name}: failed: {message}")),
    }
    outcome
}

/// Wait for the task's exit over its socket; stop it when asked. If tend-spawn
/// vanishes, the exit status file decides, and without one the task is lost.
async fn watch_task(
    socket: &std::path::Path,
    token: Token,
    task: &Task,
    alloc: &AllocDir,
    run: &crate::ident::Leftovers,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let mut waiter = match crate::spawn::retry::connect_once(socket, token).await {
        Ok(c) => c,
        Err(e) => return from_exit_file(alloc, &task.name, &e).await,
    };
    let wait = waiter.wait();
    tokio::pin!(wait);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = &mut wait => break r,
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || !*stop.borrow() {
                    continue;
                }
                stopping = true;
                let req = Request::Stop {
                    signal: task.kill_signal,
                    grace_ms: u64::try_from(task.kill_timeout.as_millis()).unwrap_or(u64::MAX),
                };
                // Retried until tend-spawn takes it; one that has not by the
                // end of kill_timeout leaves the kill to us: Ctrl-C always
                // ends the tasks.
                let until = std::time::Instant::now()
                    + task.kill_timeout.max(crate::spawn::retry::ATTEMPT_TIMEOUT);
                let r = crate::spawn::retry::request_until(socket, token, req, run.daemon, until).await;
                if let Err(e) = r {
                    say(&format!("{}: stop: {e}", task.name));
                    if matches!(e, crate::spawn::retry::RetryError::Unanswered(_)) {
                        let task_only = crate::ident::Leftovers { task: run.task, ..Default::default() };
                        say(&format!("{}: killing the task (SIGKILL)", task.name));
                        for problem in task_only.kill() {
                            say(&problem);
                        }
                    }
                }
            }
        }
    };
    match result {
        Ok(exit) => {
            // The exit is recorded here; the daemon may go.
            if let Ok(mut c) = Client::connect(socket, token).await {
                let _ = c.command(Request::Release).await;
            }
            Outcome::Exited(exit)
        }
        Err(e) => from_exit_file(alloc, &task.name, &e.to_string()).await,
    }
}

async fn from_exit_file(alloc: &AllocDir, task: &str, why: &str) -> Outcome {
    // The daemon writes the file before it answers Wait; give a dying one a
    // moment, without holding up the other tasks on this one-thread runtime.
    for _ in 0..20 {
        if let Ok(e) = ExitStatus::read(&alloc.exit_status(task)) {
            return Outcome::Exited(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Outcome::Lost(format!(
        "tend-spawn is gone and left no exit status file ({why})"
    ))
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
            } else {
                for id in v["allocations"].as_array().into_iter().flatten() {
                    writeln!(out, "allocation {} submitted", id.as_str().unwrap_or("?"))?;
                }
            }
            Ok(0)
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
    fn prefixes_whole_lines_only() {
        let mut partial = Vec::new();
        assert_eq!(prefix_lines(b"one\ntw", "t | ", &mut partial), b"t | one\n");
        assert_eq!(prefix_lines(b"o\n", "t | ", &mut partial), b"t | two\n");
        assert!(partial.is_empty());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let mut e = ExitStatus::from_wait("a", "t", 1, 5, 3 << 8, "s".into(), "f".into());
        assert_eq!(Outcome::Exited(e.clone()).code(), 3);
        e = ExitStatus::from_wait("a", "t", 1, 5, 9, "s".into(), "f".into());
        assert_eq!(Outcome::Exited(e.clone()).code(), 137);
        assert_eq!(describe_exit(&e), "killed by signal 9 (SIGKILL)");
        let enoent = Outcome::Failed {
            errno: nix::errno::Errno::ENOENT as i32,
            message: String::new(),
        };
        assert_eq!(enoent.code(), 127);
        assert_eq!(Outcome::Lost(String::new()).code(), 1);
    }

    #[test]
    fn an_oom_kill_in_the_task_is_told_beside_its_exit() {
        let mut e = ExitStatus::from_wait("a", "t", 1, 5, 137 << 8, "s".into(), "f".into());
        e.oom_kills = 1;
        assert_eq!(
            describe_exit(&e),
            "exited with code 137; a process of this task was killed for memory (1 OOM kill)"
        );
        e = ExitStatus::from_wait("a", "t", 1, 5, 9, "s".into(), "f".into());
        e.oom_killed = true;
        e.oom_kills = 2;
        assert_eq!(
            describe_exit(&e),
            "killed by signal 9 (SIGKILL), out of memory"
        );
    }
}

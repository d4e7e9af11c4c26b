//! The runtime-spec's verbs: `create`, `start`, `run`, `state`, `kill`,
//! `delete`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tend_proto::config::{TaskStart, TaskStdin};
use tend_proto::frame::read_frame;
use tend_proto::msg::TaskState;
use tend_proto::{Request, Response, StartReport, MAX_FRAME_LEN};

use crate::bundle;
use crate::client::{Client, ClientError};
use crate::container::{self, Container};

/// The signals `run` passes on to the task, as runc's run forwards them.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
];

/// `run [-b DIR] [--pid-file F] ID`: start the bundle's process under
/// tend-spawn and stay in the foreground as it: its output copied to ours,
/// its signals forwarded, and its shell code (128+N for signal N) returned.
pub fn run(
    root: &Path,
    spawn: &Path,
    bundle_dir: &Path,
    id: &str,
    pid_file: Option<&Path>,
) -> anyhow::Result<i32> {
    let (c, b, privileged) = make(root, bundle_dir, id)?;
    match follow(&c, &b, spawn, privileged, pid_file) {
        Ok(code) => Ok(code),
        Err(e) => {
            // Nothing runs: nothing stays.
            let _ = std::fs::remove_dir_all(&c.dir);
            Err(e)
        }
    }
}

/// `create [-b DIR] [--pid-file F] ID`: tend-spawn started with the task
/// prepared to its last step (cgroup, root, namespaces, user, stdio) and held
/// before its execve, until `start`. The task's stdio are its log files (and
/// /dev/null): nothing of this process's is kept, so a caller reading our
/// output to its end (slurmstepd) is not held by the container. The pid file
/// holds the held process's pid, as the host sees it.
pub fn create(
    root: &Path,
    spawn: &Path,
    bundle_dir: &Path,
    id: &str,
    pid_file: Option<&Path>,
) -> anyhow::Result<()> {
    let (c, b, privileged) = make(root, bundle_dir, id)?;
    let task_pid = match launch(&c, &b, spawn, privileged, TaskStart::OnRequest) {
        Ok((_, pid)) => pid,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&c.dir);
            return Err(e);
        }
    };
    if let Some(path) = pid_file {
        if let Err(e) = write_pid_file(path, task_pid) {
            // The task is held: end it and its daemon, and remove the rest.
            let _ = delete(root, id, true);
            return Err(e);
        }
    }
    Ok(())
}

/// `start ID`: run the process of a created container.
pub fn start(root: &Path, id: &str) -> anyhow::Result<()> {
    let c = Container::open(root, id)?;
    let mut client = Client::connect(&c.socket(), c.token)
        .map_err(|_| anyhow!("container {id} is stopped, not created"))?;
    match client.ask(Request::Status)? {
        Response::Status(s) if s.state == TaskState::Created => {}
        Response::Status(s) => bail!(
            "container {id} is {}, not created: only a created container starts",
            oci_status(s.state)
        ),
        other => bail!("unexpected answer {other:?}"),
    }
    match client.ask(Request::Start) {
        Ok(Response::Ok) => Ok(()),
        Ok(other) => bail!("unexpected answer {other:?}"),
        Err(ClientError::Refused { message, .. }) if message.starts_with("bad request") => {
            bail!("container {id}: its tend-spawn predates start ({message}); use run with it")
        }
        Err(e) => Err(anyhow!("container {id}: start: {e}")),
    }
}

/// The pid file: the pid in decimal, written atomically.
fn write_pid_file(path: &Path, pid: i32) -> anyhow::Result<()> {
    let path = std::path::absolute(path).context("the pid file's path")?;
    tend_proto::atomic::write(&path, pid.to_string().as_bytes(), 0o644)
        .with_context(|| format!("writing the pid file {}", path.display()))
}

/// What `run` and `create` do first: the bundle mapped and checked against
/// the caller's privilege, its rlimits set on this process (for tend-spawn
/// and so the task to inherit), and the container's dir made. Returns the
/// container, the bundle and whether the caller is root.
fn make(
    root: &Path,
    bundle_dir: &Path,
    id: &str,
) -> anyhow::Result<(Container, bundle::Bundle, bool)> {
    let bundle_dir = std::path::absolute(bundle_dir).context("the bundle's path")?;
    let b = bundle::load(&bundle_dir)?;
    let privileged = nix::unistd::geteuid().is_root();
    if privileged {
        container::check_group(&b)?;
    } else {
        // Unprivileged (slurmstepd runs `run` as the job's user): the task
        // runs as the caller, in the host's root, without a cgroup.
        if b.rootfs.is_some() {
            bail!("config.json: root.path: a root of its own needs root; as an unprivileged user only \"/\" runs (docs/oci.md)");
        }
        if b.cgroup.is_some() {
            bail!("config.json: linux.resources: a cgroup needs root (docs/oci.md)");
        }
        if b.namespaces != tend_proto::config::Namespaces::default() || b.cgroup_namespace {
            bail!("config.json: linux.namespaces: uts, ipc, network and cgroup namespaces need root (docs/oci.md)");
        }
    }
    for r in &b.rlimits {
        // Best effort: inherited by tend-spawn and so by the task.
        if let Some(res) = bundle::rlimit_resource(&r.kind) {
            let _ = nix::sys::resource::setrlimit(res, r.soft, r.hard);
        }
    }
    // Recorded for whoever takes the container up (`tend adopt`).
    let cgroup = b
        .cgroup
        .as_ref()
        .filter(|_| privileged)
        .map(|cg| container::cgroup_path(id, cg));
    let c = Container::create(root, id, &bundle_dir, cgroup)?;
    Ok((c, b, privileged))
}

/// Start tend-spawn with the task's config and read its report: the task
/// runs, or with [`TaskStart::OnRequest`] waits at its gate with /dev/null
/// for stdin. Returns tend-spawn's stdin (the task's, for `run`) and the
/// task's pid.
fn launch(
    c: &Container,
    b: &bundle::Bundle,
    spawn: &Path,
    privileged: bool,
    start: TaskStart,
) -> anyhow::Result<(std::process::ChildStdin, i32)> {
    let mut config = container::spawn_config(c, b, privileged)?;
    config.start = start;
    if start == TaskStart::OnRequest {
        config.stdin = TaskStdin::Null;
    }
    let frame = config.to_frame().context("encoding the spawn config")?;
    let mut child = Command::new(spawn)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Its own log is in the container's log dir; a start failure comes back in the report.
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", spawn.display()))?;
    let mut stdin = child.stdin.take().context("tend-spawn's stdin")?;
    stdin
        .write_all(&frame)
        .context("writing the spawn config")?;
    let mut stdout = child.stdout.take().context("tend-spawn's stdout")?;
    let report = read_frame(&mut stdout, MAX_FRAME_LEN)
        .context("reading tend-spawn's start report")?
        .decode::<StartReport>()
        .context("decoding tend-spawn's start report")?;
    let _ = child.wait();
    match report {
        StartReport::Failed { stage, message, .. } => {
            let hint = if start == TaskStart::OnRequest && message.contains("trailing bytes") {
                " (this tend-spawn predates create: use run)"
            } else {
                ""
            };
            bail!("the task did not start ({stage}): {message}{hint}");
        }
        StartReport::Started { task_pid, .. } => Ok((stdin, task_pid)),
        // Not asked for (the runtime connects to the socket file), but as good.
        StartReport::StartedWithConnection(w) => Ok((stdin, w.task_pid)),
    }
}

/// `run`'s foreground: the task started, its output followed, its signals
/// forwarded, until it exits.
fn follow(
    c: &Container,
    b: &bundle::Bundle,
    spawn: &Path,
    privileged: bool,
    pid_file: Option<&Path>,
) -> anyhow::Result<i32> {
    // From before the task exists, a forwarded signal waits on the signalfd
    // for the task instead of ending this process: a caller that signals
    // run as soon as state says running finds them blocked. (tend-spawn
    // starts with an empty mask whatever its parent's.)
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.thread_block()
        .context("blocking the forwarded signals")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?;
    let (stdin, task_pid) = launch(c, b, spawn, privileged, TaskStart::Now)?;
    if let Some(path) = pid_file {
        write_pid_file(path, task_pid)?;
    }
    // The task reads what follows the config on tend-spawn's stdin: ours,
    // copied until it ends (or the task stops reading). The thread starts
    // with the forwarded signals blocked, so they reach the signalfd.
    std::thread::spawn(move || relay_stdin(stdin));
    let mut client = Client::connect(&c.socket(), c.token)?;
    client.ask(Request::Wait)?;
    let mut out = Follow::new(c.log("stdout"));
    let mut err = Follow::new(c.log("stderr"));
    loop {
        let (sock_ready, sig_ready) = {
            let mut fds = [
                PollFd::new(client.stream().as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::from(50u16))?;
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        out.copy_to(&mut std::io::stdout());
        err.copy_to(&mut std::io::stderr());
        if sig_ready {
            if let Some(info) = signals.read_signal()? {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(15);
                client.send(Request::Signal(signo))?;
            }
        }
        if sock_ready {
            match client.receive()? {
                Response::Ok => {}
                Response::Error(m) => bail!("tend-spawn: {m}"),
                other => {
                    let exit = other
                        .into_exit()
                        .map_err(|r| anyhow!("unexpected answer {r:?}"))?;
                    out.copy_to(&mut std::io::stdout());
                    err.copy_to(&mut std::io::stderr());
                    release(client);
                    return Ok(exit.shell_code());
                }
            }
        }
    }
}

/// Copy our stdin to the task's until either ends; closing the pipe is the
/// task's end of input.
fn relay_stdin(mut to: std::process::ChildStdin) {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to);
}

/// Let the task's tend-spawn go once the task has exited, and wait for it to
/// leave: nothing is left to supervise, and a daemon that stays keeps the
/// caller's cgroup busy (slurmstepd removes the step's cgroup before it calls
/// state and delete). The record stays: state answers `stopped`, delete
/// removes it.
fn release(mut client: Client) {
    let daemon = client.welcome.daemon_pid;
    if client.ask(Request::Release).is_ok() {
        drop(client);
        wait_gone(daemon, Duration::from_secs(10));
    }
}

/// Copies what a log file gains to a stream.
struct Follow {
    path: PathBuf,
    file: Option<std::fs::File>,
    offset: u64,
}

impl Follow {
    fn new(path: PathBuf) -> Follow {
        Follow {
            path,
            file: None,
            offset: 0,
        }
    }

    fn copy_to(&mut self, to: &mut dyn Write) {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            let _ = to.write_all(&buf);
            let _ = to.flush();
        }
    }
}

/// The runtime-spec's name of a task state.
fn oci_status(s: TaskState) -> &'static str {
    match s {
        TaskState::Created => "created",
        TaskState::Running | TaskState::Stopping => "running",
        TaskState::Exited => "stopped",
    }
}

/// The runtime-spec's status of a container, and its pid: the task's as the
/// host sees it while it lives (held, for a created one), else 0.
fn status_of(c: &Container) -> (&'static str, i32) {
    let Ok(mut client) = Client::connect(&c.socket(), c.token) else {
        return ("stopped", 0);
    };
    let pid = client.welcome.task_pid;
    match client.ask(Request::Status) {
        Ok(Response::Status(s)) => match s.state {
            TaskState::Exited => ("stopped", 0),
            live => (oci_status(live), pid),
        },
        _ => ("stopped", 0),
    }
}

/// `state ID`: the runtime-spec's state JSON.
pub fn state(root: &Path, id: &str) -> anyhow::Result<String> {
    let c = Container::open(root, id)?;
    let (status, pid) = status_of(&c);
    Ok(serde_json::json!({
        "ociVersion": "1.0.2",
        "id": c.id,
        "status": status,
        "pid": pid,
        "bundle": c.bundle,
    })
    .to_string())
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| anyhow!("signal {n}: no such signal"));
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| anyhow!("signal {s:?}: no such signal"))
}

/// `kill ID [SIGNAL]`: signal the task's main process (SIGTERM by default).
pub fn kill(root: &Path, id: &str, signal: i32) -> anyhow::Result<()> {
    let c = Container::open(root, id)?;
    let mut client = Client::connect(&c.socket(), c.token)
        .map_err(|_| anyhow!("container {id} is not running"))?;
    match client.ask(Request::Status)? {
        Response::Status(s) if s.state != TaskState::Exited => {}
        _ => bail!("container {id} is not running"),
    }
    client.ask(Request::Signal(signal))?;
    Ok(())
}

/// `delete [--force] ID`: end the task (with --force, or when it is created
/// and never started, as runc does), let its tend-spawn go and remove
/// everything of the container.
pub fn delete(root: &Path, id: &str, force: bool) -> anyhow::Result<()> {
    let c = Container::open(root, id)?;
    if let Ok(mut client) = Client::connect(&c.socket(), c.token) {
        let daemon = client.welcome.daemon_pid;
        let state = match client.ask(Request::Status)? {
            Response::Status(s) => Some(s.state),
            _ => None,
        };
        if state.is_some_and(|s| s != TaskState::Exited) {
            if !force && state != Some(TaskState::Created) {
                bail!("container {id} is running: stop it first or use --force");
            }
            client.ask(Request::Stop {
                signal: Signal::SIGKILL as i32,
                grace_ms: 0,
            })?;
        }
        match wait_exit(&mut client) {
            // The task has ended and its `run` let the daemon go meanwhile
            // (it does once the task ends): the connection closes under us.
            Err(WaitError::Client(ClientError::Frame { .. })) => {}
            Err(WaitError::Client(e)) => return Err(e.into()),
            Err(WaitError::Answer(r)) => bail!("unexpected answer {r:?}"),
            Ok(()) => {
                let _ = client.ask(Request::Release);
            }
        }
        drop(client);
        wait_gone(daemon, Duration::from_secs(10));
    }
    if has_mounts_under(&c.dir) {
        bail!("{}: mounts remain under it; not removed", c.dir.display());
    }
    std::fs::remove_dir_all(&c.dir).with_context(|| format!("removing {}", c.dir.display()))?;
    Ok(())
}

/// Why [`wait_exit`] saw no exit.
enum WaitError {
    /// The connection failed (or the daemon said no).
    Client(ClientError),
    /// An answer other than the exit.
    Answer(Box<Response>),
}

/// Ask for the task's exit and read until it comes.
fn wait_exit(client: &mut Client) -> Result<(), WaitError> {
    client.ask(Request::Wait).map_err(WaitError::Client)?;
    loop {
        match client.receive().map_err(WaitError::Client)? {
            Response::Ok => {}
            other => {
                return other.into_exit().map(|_| ()).map_err(WaitError::Answer);
            }
        }
    }
}

/// Wait for a process to be gone or a zombie (init here may not reap): its
/// pidfd turns readable as it exits, after it has left its cgroups. Where
/// the kernel has no pidfd (before 5.3), /proc is polled every 10 ms.
fn wait_gone(pid: i32, timeout: Duration) {
    let end = Instant::now() + timeout;
    match tend_sys::pidfd_open(nix::unistd::Pid::from_raw(pid)) {
        Ok(fd) => {
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            while Instant::now() < end {
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => return,
                }
            }
        }
        // ESRCH: gone already.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(_) => {
            while Instant::now() < end {
                match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    Err(_) => return,
                    Ok(s) => {
                        if s.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                        {
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn has_mounts_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let prefix = format!("{}/", dir.display());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.starts_with(&prefix))
}

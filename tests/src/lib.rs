//! Helpers shared by the end-to-end tests: find the built binaries, run
//! `tend-spawn` as the agent does, talk to its socket, and clean up.
//!
//! ```no_run
//! use tend_tests::{Sandbox, Client};
//! let sb = Sandbox::new();
//! let cfg = sb.config("web", "/bin/sh", &["-c", "echo hi; exit 3"]);
//! let started = sb.start(&cfg);
//! let (daemon_pid, task_pid, _instance) = started.pids();
//! let mut c = Client::connect(&cfg);
//! let exit = c.wait_exit();
//! assert_eq!(exit.exit_code, Some(3));
//! ```
//!
//! Every [`Sandbox`] owns a fresh data dir and a short run dir (0700) under /tmp;
//! when it is dropped, even after a failed assertion, every process whose cwd or
//! any open fd lies inside them is SIGKILLed, then the dirs are removed.
//!
//! `tend` itself runs as a user runs it, against the sandbox's dirs:
//!
//! ```no_run
//! use std::time::Duration;
//! use tend_tests::Sandbox;
//! let sb = Sandbox::new();
//! let job = sb.write_job("hello.hcl", "job \"j\" { ... }");
//! let out = sb.run_tend(&["run".as_ref(), job.as_os_str()], Duration::from_secs(30));
//! assert_eq!(out.code, Some(3), "{out}");
//! let alloc = sb.find_alloc_dir();
//! ```

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tend_proto::config::{example, SpawnConfig};
use tend_proto::frame::{self, FrameError, MAX_FRAME_LEN};
use tend_proto::msg::Welcome;
use tend_proto::{
    ExitStatus, Hello, Instance, Request, Response, StartReport, Token, PROTOCOL_VERSION,
};

pub mod docker;
pub mod job;
pub mod setuid;

pub use setuid::ThrowawayUser;

/// Skip the calling test for `reason` ("needs root", "no docker engine at
/// ..."): print `skipped: REASON` and let the caller return. Under `CI=true` a
/// skipped test proves nothing, so this panics instead: CI runs as root with
/// the test engine up, and a skip there means something is missing.
pub fn skip_or_fail(reason: &str) {
    skip_or_fail_when(std::env::var_os("CI").as_deref(), reason);
}

/// [`skip_or_fail`] with the value of `CI` given.
fn skip_or_fail_when(ci: Option<&OsStr>, reason: &str) {
    assert!(
        ci != Some(OsStr::new("true")),
        "cannot run under CI=true: {reason}"
    );
    println!("skipped: {reason}");
}

/// Whether this process is root; when not, the test is skipped (see
/// [`skip_or_fail`]). Most callers use [`require_root!`].
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip_or_fail("needs root");
    false
}

/// Return from the calling test (with the value given, if any) unless it
/// runs as root: prints "skipped: needs root" as a normal user, panics under
/// `CI=true` (see [`skip_or_fail`]).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($ret:expr) => {
        if !$crate::have_root() {
            return $ret;
        }
    };
}

/// The hierarchies tend-spawn uses on this host: each v1 controller's mount
/// and the cgroup2 tree (the root itself on a v2 host, whose subdirs are
/// child cgroups, not mounts).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").is_file() {
        return vec![root.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let ours = name
                .split(',')
                .any(|c| ["memory", "cpu", "cpuacct", "pids", "freezer", "blkio"].contains(&c));
            let unified = name == "unified" && path.join("cgroup.controllers").is_file();
            if (ours || unified) && path.join("cgroup.procs").is_file() && !path.is_symlink() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The dir the test executable's crate builds into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a built binary of the workspace (in `$TEND_BIN_DIR` when that is
/// set, e.g. `target/release`); panics if it is not built. `cargo nextest run
/// --workspace` and `cargo test --workspace` build both binaries first: each
/// package has integration tests of its own, and Cargo builds a package's
/// binaries for them.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TEND_BIN_DIR").map_or_else(target_dir, PathBuf::from);
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Path of the built `tend-spawn`.
pub fn spawn_bin() -> PathBuf {
    bin("tend-spawn")
}

/// Poll `f` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Live processes whose cwd, executable or an open file is under `dir`.
pub fn holders_under(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let p = e.path();
        let mut links = vec![p.join("cwd"), p.join("exe")];
        if let Ok(fds) = fs::read_dir(p.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        if links
            .iter()
            .any(|l| fs::read_link(l).is_ok_and(|t| t.starts_with(dir)))
            && pid_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// A random number from the kernel (for fault timings, not for secrets).
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's private world: a data dir, a short run dir, and cleanup on drop.
#[derive(Debug)]
pub struct Sandbox {
    data: tempfile::TempDir,
    data_dir: PathBuf,
    run: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A sandbox with a data dir under the system temp dir.
    pub fn new() -> Sandbox {
        let data = tempfile::Builder::new()
            .prefix("tend-data-")
            .tempdir()
            .expect("data tempdir");
        let run = tempfile::Builder::new()
            .prefix("tr")
            .tempdir_in("/tmp")
            .expect("run tempdir");
        fs::set_permissions(run.path(), fs::Permissions::from_mode(0o700)).expect("chmod run dir");
        let data_dir = data.path().to_path_buf();
        Sandbox {
            data,
            data_dir,
            run,
        }
    }

    /// A sandbox whose data dir path is `len` bytes long (at least the temp dir's).
    pub fn with_data_dir_len(len: usize) -> Sandbox {
        let mut sb = Sandbox::new();
        let base = sb.data.path().to_path_buf();
        let have = base.as_os_str().len() + 1;
        let mut dir = base;
        let mut left = len.saturating_sub(have);
        while left > 0 {
            // Path components are at most 255 bytes.
            let n = left.min(100);
            let n = if left - n == 1 { n - 1 } else { n };
            dir.push("d".repeat(n.max(1)));
            left = left.saturating_sub(n.max(1) + 1);
        }
        fs::create_dir_all(&dir).expect("create long data dir");
        sb.data_dir = dir;
        sb
    }

    /// The data dir (`<data_dir>/allocs/<alloc_id>/...`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The short run dir (sockets), mode 0700.
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// A config for `task` running `command args...`: a fresh alloc id and token,
    /// the alloc dir and the task dir (`<alloc_dir>/<task>`, also its cwd) made,
    /// the socket in the run dir, linger 60 s, kill signal SIGTERM with 5 s grace.
    pub fn config(&self, task: &str, command: &str, args: &[&str]) -> SpawnConfig {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let alloc_id = format!("a{}{n}", tend_proto::names::to_hex(&random_bytes::<4>()));
        let alloc_dir = self.data_dir.join("allocs").join(&alloc_id);
        let task_dir = alloc_dir.join(task);
        fs::create_dir_all(&task_dir).expect("create task dir");
        let socket = self.run.path().join(format!("{n}.sock"));
        let mut c = example(
            alloc_dir.to_str().expect("utf-8 path"),
            socket.to_str().expect("utf-8 path"),
        );
        c.alloc_id = alloc_id;
        c.task = task.to_string();
        c.token = Token(random_bytes::<32>());
        c.command = command.to_string();
        c.args = args.iter().map(|s| s.to_string()).collect();
        c.cwd = task_dir.to_str().expect("utf-8 path").to_string();
        c
    }

    /// The exit status file of `cfg`'s task.
    pub fn exit_path(cfg: &SpawnConfig) -> PathBuf {
        cfg.exit_status_path()
    }

    /// The current log file of `stream` ("stdout", "stderr") of `cfg`'s task.
    pub fn log_path(cfg: &SpawnConfig, stream: &str) -> PathBuf {
        cfg.log_dir()
            .join(tend_proto::names::log_file(&cfg.task, stream))
    }

    /// Wait up to `timeout` for the exit status file and read it.
    pub fn wait_exit_file(cfg: &SpawnConfig, timeout: Duration) -> ExitStatus {
        let path = cfg.exit_status_path();
        assert!(
            wait_until(timeout, || path.exists()),
            "no exit status file {} after {timeout:?}",
            path.display()
        );
        ExitStatus::read(&path).expect("read exit status file")
    }

    /// Exec tend-spawn as the agent does (empty environment, config frame on
    /// stdin) and read its start report.
    pub fn start(&self, cfg: &SpawnConfig) -> Spawned {
        let bytes = cfg.to_frame().expect("encode config");
        self.start_raw(&bytes)
    }

    /// Exec tend-spawn with `input` as its whole stdin and read the start report.
    pub fn start_raw(&self, input: &[u8]) -> Spawned {
        self.start_through(&[], input)
    }

    /// [`Sandbox::start`] through a wrapper: `wrapper[0]` is run with the
    /// rest of `wrapper` then tend-spawn's path as its arguments, and must
    /// exec it (`env --ignore-signal=CHLD`, `sh -c '...; exec "$0"'`): how a
    /// parent that leaves odd process state behind starts tend-spawn.
    pub fn start_wrapped(&self, cfg: &SpawnConfig, wrapper: &[&str]) -> Spawned {
        let bytes = cfg.to_frame().expect("encode config");
        self.start_through(wrapper, &bytes)
    }

    /// [`Sandbox::start`] as the agent starts tend-spawn: its stdin one end
    /// of a socketpair, the config written on the other, which comes back as
    /// a client (welcomed when the report is `StartedWithConnection`, with
    /// the report's welcome; else a stream the daemon does not serve).
    pub fn start_handed(&self, cfg: &SpawnConfig) -> (Spawned, Client) {
        let bytes = cfg.to_frame().expect("encode config");
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let spawned = self.start_on(&[], &bytes, Some((theirs, &ours)));
        let welcome = match &spawned.report {
            Ok(StartReport::StartedWithConnection(w)) => Some(*w),
            _ => None,
        };
        let client = Client {
            stream: ours,
            welcome,
        };
        (spawned, client)
    }

    fn start_through(&self, wrapper: &[&str], input: &[u8]) -> Spawned {
        self.start_on(wrapper, input, None)
    }

    /// Exec tend-spawn (through `wrapper`) with `input` on its stdin: a pipe,
    /// or the first of `socket` with the input written on the second.
    fn start_on(
        &self,
        wrapper: &[&str],
        input: &[u8],
        socket: Option<(UnixStream, &UnixStream)>,
    ) -> Spawned {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let stderr_path = self.data.path().join(format!("spawn-{n}.stderr"));
        let stderr = fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(spawn_bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(spawn_bin());
                c
            }
        };
        let (stdin, mut writer) = match socket {
            Some((theirs, ours)) => (Stdio::from(std::os::fd::OwnedFd::from(theirs)), Some(ours)),
            None => (Stdio::piped(), None),
        };
        let mut child = cmd
            .env_clear()
            .current_dir(self.data.path())
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("exec tend-spawn");
        // A daemon refusing early may close its end: that is its answer.
        match (child.stdin.take(), writer.as_mut()) {
            (Some(mut pipe), _) => {
                let _ = pipe.write_all(input);
            }
            (None, Some(s)) => {
                let _ = s.write_all(input);
            }
            (None, None) => {}
        }
        let mut stdout = child.stdout.take().expect("stdout");
        let report =
            frame::read_frame(&mut stdout, MAX_FRAME_LEN).and_then(|f| f.decode::<StartReport>());
        let status = child.wait().expect("wait tend-spawn");
        Spawned {
            report,
            exit_code: status.code(),
            stderr_path,
        }
    }

    /// A private scratch dir of the sandbox (job files, captured output),
    /// outside the data dir's `allocs`.
    pub fn scratch_dir(&self) -> PathBuf {
        let dir = self.data.path().join("scratch");
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// Write a job file `name` into the scratch dir; its path.
    pub fn write_job(&self, name: &str, text: &str) -> PathBuf {
        let path = self.scratch_dir().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A `tend` command with `args` then `--data-dir` and `--run-dir` of this
    /// sandbox, run from the scratch dir, with no `TEND_*` variable of the
    /// test's own environment.
    pub fn tend_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(bin("tend"));
        cmd.args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--run-dir")
            .arg(self.run.path())
            .current_dir(self.scratch_dir())
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("TEND_")) {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Start `cmd` with its stdout and stderr captured in scratch files.
    pub fn spawn_captured(&self, mut cmd: Command) -> TendProcess {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = self.scratch_dir();
        let stdout_path = dir.join(format!("tend-{n}.stdout"));
        let stderr_path = dir.join(format!("tend-{n}.stderr"));
        let child = cmd
            .stdout(fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"));
        TendProcess {
            child,
            stdout_path,
            stderr_path,
        }
    }

    /// Start `tend ARGS --data-dir .. --run-dir ..` in the background.
    pub fn spawn_tend<S: AsRef<OsStr>>(&self, args: &[S]) -> TendProcess {
        self.spawn_captured(self.tend_command(args))
    }

    /// Run `tend ARGS --data-dir .. --run-dir ..` to its end; panics (and
    /// kills it) if it takes longer than `timeout`.
    pub fn run_tend<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> TendOutput {
        self.spawn_tend(args).wait(timeout)
    }

    /// The allocation dirs under `<data_dir>/allocs`, sorted.
    pub fn alloc_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.data_dir.join("allocs"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs
    }

    /// The one allocation dir under `<data_dir>/allocs`; panics unless there
    /// is exactly one.
    pub fn find_alloc_dir(&self) -> PathBuf {
        let dirs = self.alloc_dirs();
        assert_eq!(dirs.len(), 1, "expected one alloc dir, found {dirs:?}");
        dirs.into_iter().next().expect("one alloc dir")
    }

    /// Pids of every process (but this one) whose cwd or any open fd lies in the
    /// sandbox's dirs.
    pub fn pids_inside(&self) -> Vec<i32> {
        let roots = [
            self.data.path().to_path_buf(),
            self.run.path().to_path_buf(),
        ];
        let inside = |p: &Path| roots.iter().any(|r| p.starts_with(r));
        let me = std::process::id();
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid.unsigned_abs() == me {
                continue;
            }
            let base = e.path();
            let mut hit = fs::read_link(base.join("cwd")).is_ok_and(|p| inside(&p));
            if !hit {
                if let Ok(fds) = fs::read_dir(base.join("fd")) {
                    hit = fds
                        .flatten()
                        .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| inside(&p)));
                }
            }
            if hit {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids_inside();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The task cgroups an agent of this sandbox made under its default
        // parent (`tend/<alloc>.<task>`), which no tend-spawn removes once
        // the sandbox's processes are killed.
        if let Ok(rd) = fs::read_dir(self.data_dir.join("allocs")) {
            let ids: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|id| !id.is_empty() && !id.starts_with('.'))
                .collect();
            for rel in task_cgroups_of(&ids) {
                remove_cgroups(&rel);
            }
        }
    }
}

/// What one exec of tend-spawn gave.
#[derive(Debug)]
pub struct Spawned {
    /// The start report, or why none could be read.
    pub report: Result<StartReport, FrameError>,
    /// The exit code of the process the agent started.
    pub exit_code: Option<i32>,
    /// Where its stderr went.
    pub stderr_path: PathBuf,
}

impl Spawned {
    /// `(daemon_pid, task_pid, instance)` of a Started report; panics otherwise.
    pub fn pids(&self) -> (i32, i32, Instance) {
        match &self.report {
            Ok(StartReport::Started {
                daemon_pid,
                task_pid,
                instance,
            }) => (*daemon_pid, *task_pid, *instance),
            other => panic!("expected Started, got {other:?}; stderr: {}", self.stderr()),
        }
    }

    /// `(stage, errno, message)` of a Failed report; panics otherwise.
    pub fn failure(&self) -> (tend_proto::Stage, i32, String) {
        match &self.report {
            Ok(StartReport::Failed {
                stage,
                errno,
                message,
            }) => (*stage, *errno, message.clone()),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    /// What tend-spawn wrote to stderr.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// A blocking client of a daemon's socket.
#[derive(Debug)]
pub struct Client {
    /// The connection.
    pub stream: UnixStream,
    /// The daemon's Welcome, once received.
    pub welcome: Option<Welcome>,
}

impl Client {
    /// Connect without a Hello (reads time out after 10 s).
    pub fn connect_raw(path: &Path) -> Client {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client {
            stream,
            welcome: None,
        }
    }

    /// Connect to `cfg`'s daemon, say Hello with its token, expect Welcome.
    pub fn connect(cfg: &SpawnConfig) -> Client {
        let mut c = Client::connect_raw(Path::new(&cfg.socket_path));
        c.send(&Hello {
            version: PROTOCOL_VERSION,
            token: cfg.token,
        });
        match c.recv() {
            Ok(Response::Welcome(w)) => c.welcome = Some(w),
            other => panic!("expected Welcome, got {other:?}"),
        }
        c
    }

    /// Send one message as a frame.
    pub fn send<T: serde::Serialize>(&mut self, msg: &T) {
        let bytes = frame::encode(msg).expect("encode");
        self.send_bytes(&bytes);
    }

    /// Send raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to daemon");
    }

    /// Receive one response.
    pub fn recv(&mut self) -> Result<Response, FrameError> {
        frame::read_frame(&mut self.stream, MAX_FRAME_LEN)?.decode()
    }

    /// Receive the next frame, which must be the exit event (either form).
    pub fn recv_exit(&mut self) -> ExitStatus {
        match self.recv().map(Response::into_exit) {
            Ok(Ok(e)) => e,
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    /// Send a request and receive its answer.
    pub fn request(&mut self, req: Request) -> Response {
        self.send(&req);
        self.recv()
            .unwrap_or_else(|e| panic!("no answer to {req:?}: {e}"))
    }

    /// Whether the daemon has closed this connection (EOF within 5 s).
    pub fn closed_by_daemon(&mut self) -> bool {
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Send Wait, expect Ok, then wait (up to `timeout`) for Exited.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> ExitStatus {
        assert_eq!(self.request(Request::Wait), Response::Ok);
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        self.recv_exit()
    }

    /// [`Client::wait_exit_within`] 30 s.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(Duration::from_secs(30))
    }
}

/// `<alloc_dir>/<task>_exit_status`.
pub fn alloc_exit_path(alloc_dir: &Path, task: &str) -> PathBuf {
    alloc_dir.join(format!("{task}_exit_status"))
}

/// `<alloc_dir>/logs/<task>.<stream>` (the current file).
pub fn alloc_log_path(alloc_dir: &Path, task: &str, stream: &str) -> PathBuf {
    alloc_dir
        .join("logs")
        .join(tend_proto::names::log_file(task, stream))
}

/// Wait up to `timeout` for a task's exit status file in `alloc_dir` and read it.
pub fn wait_alloc_exit(alloc_dir: &Path, task: &str, timeout: Duration) -> ExitStatus {
    let path = alloc_exit_path(alloc_dir, task);
    assert!(
        wait_until(timeout, || path.exists()),
        "no exit status file {} after {timeout:?}",
        path.display()
    );
    ExitStatus::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `(task_pid, daemon_pid)` from the line `==> TASK: started (pid N, tend-spawn M)`
/// that `tend run` prints on stderr.
pub fn started_pids(stderr: &str, task: &str) -> Option<(i32, i32)> {
    let head = format!("==> {task}: started (pid ");
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix(&head)?;
        let (pid, rest) = rest.split_once(", tend-spawn ")?;
        let daemon = rest.strip_suffix(')')?;
        Some((pid.parse().ok()?, daemon.parse().ok()?))
    })
}

/// A `tend` process running in the background, its output going to files.
#[derive(Debug)]
pub struct TendProcess {
    /// The process.
    pub child: Child,
    /// Where its stdout goes.
    pub stdout_path: PathBuf,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

impl TendProcess {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Send it a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.pid()));
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait up to `timeout` until its stderr holds `needle`; panics otherwise.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let mut text = String::new();
        let found = wait_until(timeout, || {
            text = self.stderr();
            text.contains(needle)
        });
        assert!(found, "no {needle:?} on stderr after {timeout:?}: {text}");
        text
    }

    /// Wait up to `timeout` for `==> TASK: started (pid N, tend-spawn M)`;
    /// `(task_pid, daemon_pid)`.
    pub fn wait_started(&self, task: &str, timeout: Duration) -> (i32, i32) {
        let text = self.wait_stderr(&format!("==> {task}: started (pid "), timeout);
        started_pids(&text, task).unwrap_or_else(|| panic!("no pids in {text}"))
    }

    /// Wait for it to end; after `timeout`, SIGKILL it and panic with its output.
    pub fn wait(mut self, timeout: Duration) -> TendOutput {
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait().expect("wait tend") {
                Some(status) => {
                    return TendOutput {
                        code: status.code(),
                        signal: status.signal(),
                        stdout: self.stdout(),
                        stderr: self.stderr(),
                    }
                }
                None if Instant::now() >= end => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "tend still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                        self.stdout(),
                        self.stderr()
                    );
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for TendProcess {
    fn drop(&mut self) {
        // Never leave a zombie or a stray tend behind a failed assertion.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// How a `tend` process ended and what it printed.
#[derive(Debug, Clone)]
pub struct TendOutput {
    /// Its exit code (None when a signal ended it).
    pub code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Its whole stdout.
    pub stdout: String,
    /// Its whole stderr.
    pub stderr: String,
}

impl std::fmt::Display for TendOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "code {:?}, signal {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// A running `tend agent` over a sandbox's dirs; SIGKILLed on drop.
#[derive(Debug)]
pub struct AgentProc {
    child: Option<std::process::Child>,
    data_dir: PathBuf,
    run_dir: PathBuf,
    log: PathBuf,
    config: Option<PathBuf>,
    /// How long the last start took until `GET /v1/health` answered.
    pub ready_after: Duration,
}

/// How long an agent has to answer its first `GET /v1/health`.
pub const AGENT_READY: Duration = Duration::from_secs(30);

impl AgentProc {
    /// Start `tend agent --data-dir D --run-dir R` (cwd: the data dir, so the
    /// sandbox's drop finds it too) and wait until `GET /v1/health` answers 200.
    pub fn start(sb: &Sandbox) -> AgentProc {
        let mut a = AgentProc {
            child: None,
            data_dir: sb.data_dir().to_path_buf(),
            run_dir: sb.run_dir().to_path_buf(),
            log: sb.data_dir().join("agent.log"),
            config: None,
            ready_after: Duration::ZERO,
        };
        a.restart();
        a
    }

    /// [`AgentProc::start`] with an agent config file holding `config` (HCL).
    pub fn start_with_config(sb: &Sandbox, config: &str) -> AgentProc {
        let path = sb.data_dir().join("agent.hcl");
        fs::write(&path, config).expect("write agent config");
        let mut a = AgentProc {
            child: None,
            data_dir: sb.data_dir().to_path_buf(),
            run_dir: sb.run_dir().to_path_buf(),
            log: sb.data_dir().join("agent.log"),
            config: Some(path),
            ready_after: Duration::ZERO,
        };
        a.restart();
        a
    }

    /// Start the agent again (after [`AgentProc::kill9`] or [`AgentProc::term`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the agent is running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let t0 = Instant::now();
        let child = Command::new(bin("tend"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(["--log-level", "debug", "agent", "--spawn-bin"])
            .arg(spawn_bin())
            .args(
                self.config
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--config"), c.as_os_str()]),
            )
            .current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("exec tend agent");
        self.child = Some(child);
        let ok = wait_until(AGENT_READY, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("the agent exited early ({st}); log:\n{}", self.log());
                }
            }
            try_http(&self.run_dir, "GET", "/v1/health", b"").is_ok_and(|r| r.status == 200)
        });
        assert!(ok, "the agent did not answer; log:\n{}", self.log());
        self.ready_after = t0.elapsed();
    }

    /// The agent's pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("agent running").id()).expect("pid")
    }

    /// What the agent logged so far (all its starts).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the agent and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the agent; its exit status (within 10 s, else it is killed).
    pub fn term(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM agent");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().expect("wait agent") {
                return st;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A raw HTTP request to the agent; panics when it cannot be exchanged.
    pub fn http(&self, method: &str, target: &str, body: &[u8]) -> HttpReply {
        try_http(&self.run_dir, method, target, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    /// Submit a job (HCL) through the API; the allocation ids it made.
    pub fn submit(&self, hcl: &str) -> Vec<String> {
        let r = self.http("POST", "/v1/jobs", hcl.as_bytes());
        assert_eq!(r.status, 201, "{}", r.text());
        r.typed::<tend::api::wire::Submitted>().allocations
    }

    /// A GET answered by JSON with status 200.
    pub fn get_json(&self, target: &str) -> serde_json::Value {
        let r = self.http("GET", target, b"");
        assert_eq!(r.status, 200, "GET {target}: {}", r.text());
        r.json()
    }

    /// Run `tend --data-dir D --run-dir R ARGS...` against this agent.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("tend"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .env_remove("TEND_DATA_DIR")
            .env_remove("TEND_RUN_DIR")
            .output()
            .expect("exec tend")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP answer, body de-chunked.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as one of the API's typed answers; panics when it is not.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not a {} ({e}): {}",
                std::any::type_name::<T>(),
                self.text()
            )
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A runtime for one blocking exchange with the agent.
fn exchange_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The reply to an answer read by the agent's own client.
async fn reply_of(answer: tend::api::client::Answer) -> std::io::Result<HttpReply> {
    let status = answer.status;
    let headers = answer
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = answer
        .bytes()
        .await
        .map_err(std::io::Error::other)?
        .to_vec();
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

/// One request over `<run_dir>/tend.sock` with the agent's own client,
/// whatever its status (at most 30 s).
pub fn try_http(
    run_dir: &Path,
    method: &str,
    target: &str,
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let client = tend::api::client::ApiClient::new(run_dir);
    let exchange = async {
        let answer = client
            .send(method, target, body, "application/json")
            .await
            .map_err(std::io::Error::other)?;
        reply_of(answer).await
    };
    exchange_runtime()?.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(std::io::Error::other)?
    })
}

/// Send `raw` bytes to the agent's socket and read until it closes.
pub fn raw_exchange(run_dir: &Path, raw: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = UnixStream::connect(run_dir.join("tend.sock"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(raw)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Parse a whole HTTP response (de-chunking a chunked body), as the agent's
/// client reads it: the bytes are served to hyper's client as the answer to a
/// request of its own.
pub fn parse_reply(bytes: &[u8]) -> std::io::Result<HttpReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, mut theirs) = tokio::io::duplex(bytes.len() + 4096);
    let bytes = bytes.to_vec();
    exchange_runtime()?.block_on(async move {
        tokio::spawn(async move {
            // The answer comes after the request, as from a server.
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                request.push(theirs.read_u8().await?);
            }
            theirs.write_all(&bytes).await?;
            theirs.shutdown().await
        });
        let io = hyper_util::rt::TokioIo::new(ours);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        reply_of(resp.into()).await
    })
}

/// How many cgroup parents this process made.
static PARENTS: AtomicU32 = AtomicU32::new(0);

/// A cgroup parent of this test alone; on drop everything in it is killed and
/// every dir under it removed, in every hierarchy.
pub struct CgroupParent {
    /// Its path relative to each hierarchy's root.
    pub name: String,
}

impl Default for CgroupParent {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupParent {
    /// A new one, named after this process.
    pub fn new() -> CgroupParent {
        let n = PARENTS.fetch_add(1, Ordering::Relaxed);
        CgroupParent {
            name: format!("tend-test-{}-{n}", std::process::id()),
        }
    }

    /// Every dir at or under `rel` in every hierarchy, deepest first.
    pub fn dirs_under(rel: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut out = Vec::new();
        for m in cgroup_mounts() {
            let top = m.join(rel);
            if top.is_dir() {
                walk(&top, &mut out);
            }
        }
        out
    }

    /// Whether any dir of `rel` exists in any hierarchy.
    pub fn exists(rel: &str) -> bool {
        cgroup_mounts().iter().any(|m| m.join(rel).exists())
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        remove_cgroups(&self.name);
    }
}

/// The agent's task cgroups of the allocs `ids` under its default parent,
/// in any hierarchy: `tend/<alloc>.<task>` (relative paths, each once).
pub fn task_cgroups_of(ids: &[String]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for m in cgroup_mounts() {
        let Ok(rd) = fs::read_dir(m.join("tend")) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name
                .split_once('.')
                .is_some_and(|(alloc, _)| ids.iter().any(|id| id == alloc));
            if ours && e.file_type().is_ok_and(|t| t.is_dir()) {
                out.insert(format!("tend/{name}"));
            }
        }
    }
    out.into_iter().collect()
}

/// Remove `rel` and everything under it in every hierarchy, killing what
/// is still inside; gives up after 2 s.
pub fn remove_cgroups(rel: &str) {
    for _ in 0..100 {
        let dirs = CgroupParent::dirs_under(rel);
        if dirs.is_empty() {
            return;
        }
        for d in &dirs {
            if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in text.split_whitespace().filter_map(|p| p.parse().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = fs::remove_dir(d);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every line of a /proc/<pid>/cgroup text is at its hierarchy's
/// root (`0::/`, `N:ctrl:/`): what a process in the cgroup its cgroup
/// namespace is rooted at reads, on cgroup v1, hybrid and v2 alike.
pub fn cgroup_at_root(cgroup: &str) -> bool {
    cgroup.lines().count() > 0 && cgroup.lines().all(|l| l.ends_with(":/"))
}

/// An OCI bundle's config.json running `args` as root in a root of its own:
/// an empty `BUNDLE/rootfs` (its mount points made here) with this host's
/// /bin, /lib, /lib64 and /usr bound read-only over it.
pub fn oci_bundle_config(bundle: &Path, args: &[&str]) -> serde_json::Value {
    let mut mounts = Vec::new();
    for d in ["/bin", "/lib", "/lib64", "/usr"] {
        if Path::new(d).is_dir() {
            fs::create_dir_all(bundle.join("rootfs").join(&d[1..])).expect("rootfs dir");
            mounts.push(serde_json::json!({
                "destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]
            }));
        }
    }
    fs::create_dir_all(bundle.join("rootfs/etc")).expect("rootfs dir");
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "mounts": mounts,
        "linux": { "namespaces": [{ "type": "pid" }, { "type": "mount" }] }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_a_skip_outside_ci() {
        skip_or_fail_when(None, "needs root");
        skip_or_fail_when(Some(OsStr::new("false")), "needs root");
        skip_or_fail_when(Some(OsStr::new("")), "needs root");
    }

    #[test]
    #[should_panic(expected = "cannot run under CI=true: needs root")]
    fn a_skip_fails_under_ci() {
        skip_or_fail_when(Some(OsStr::new("true")), "needs root");
    }
}

//! Driving tend-spawn directly through tend-proto, as the agent does: exec it
//! with one end of a socketpair as its stdin, write the SpawnConfig frame on
//! it, read the StartReport, then Wait on that same stream, the first
//! connection the daemon took over (connect and Hello only where it did not).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use tend_proto::config::{example, Detach, FirstConnection, SpawnConfig};
use tend_proto::frame::{self, MAX_FRAME_LEN};
use tend_proto::{ExitStatus, Hello, Request, Response, StartReport, Token, PROTOCOL_VERSION};

/// Random bytes from the kernel.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b
}

/// Where every run dir of this harness goes: a tmpfs (`/dev/shm/tb<pid>`),
/// as the agent's default `/run/tend` is on every host with systemd. A
/// socket is an inode: on the data dir's disk file system its bind costs
/// what making a file costs there (after many files were removed, an ext4
/// without a journal scans past every recently freed inode), which no
/// default install pays.
pub fn run_root() -> PathBuf {
    PathBuf::from(format!("/dev/shm/tb{}", std::process::id()))
}

/// A data dir and a short run dir for daemons.
#[derive(Debug)]
pub struct World {
    /// `<data_dir>`: allocs live under `allocs/`.
    pub data: PathBuf,
    run: PathBuf,
    seq: u32,
}

impl World {
    /// A world under `base` (short: socket paths must stay under 108 bytes).
    pub fn new(base: &Path, name: &str) -> Result<World, String> {
        let data = base.join(format!("d{name}"));
        // Beside the data dir's name, so two worlds of one name on two
        // bases (disk and tmpfs) keep apart.
        let side = if base.starts_with(run_root()) {
            "s"
        } else {
            ""
        };
        let run = run_root().join(format!("r{side}{name}"));
        for d in [&data, &run] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", run.display()))?;
        Ok(World { data, run, seq: 0 })
    }

    /// A raw_exec config of `command args..`: fresh alloc id and token, its
    /// dirs made, linger 60 s, SIGTERM with a 2 s grace.
    pub fn config(&mut self, command: &str, args: &[&str]) -> Result<SpawnConfig, String> {
        self.seq += 1;
        let n = self.seq;
        let alloc_id = format!("b{}{n}", tend_proto::names::to_hex(&random::<4>()));
        let alloc_dir = self.data.join("allocs").join(&alloc_id);
        let task_dir = alloc_dir.join("t");
        fs::create_dir_all(&task_dir).map_err(|e| format!("mkdir {}: {e}", task_dir.display()))?;
        let socket = self.run.join(format!("{n}.sock"));
        let utf8 = |p: &Path| p.to_str().map(str::to_string).ok_or("non-UTF-8 path");
        let mut c = example(&utf8(&alloc_dir)?, &utf8(&socket)?);
        c.alloc_id = alloc_id;
        c.token = Token(random::<32>());
        c.command = command.to_string();
        c.args = args.iter().map(|s| s.to_string()).collect();
        c.cwd = utf8(&task_dir)?;
        c.kill_timeout_ms = 2000;
        c.first_connection = FirstConnection::Stdin;
        // As under the agent's launcher: the process exec'd is the daemon,
        // reaped here when it ends ([`Launched::reap_launcher`]).
        c.detach = Detach::InPlace;
        Ok(c)
    }

    /// Remove an alloc's dir once its daemon is gone.
    pub fn forget(&self, cfg: &SpawnConfig) {
        let _ = fs::remove_dir_all(&cfg.alloc_dir);
        let _ = fs::remove_file(&cfg.socket_path);
    }
}

/// A task that tend-spawn reported started.
#[derive(Debug)]
pub struct Launched {
    /// The daemon (after its double fork).
    pub daemon_pid: i32,
    launcher: Child,
    handed: Option<Client>,
}

impl Launched {
    /// The first connection: the one handed over at the start, else one
    /// made to the socket file (connect, Hello, Welcome).
    pub fn client(&mut self, cfg: &SpawnConfig) -> Result<Client, String> {
        match self.handed.take() {
            Some(c) => Ok(c),
            None => Client::connect(cfg),
        }
    }

    /// Reap the process we exec'd (it leaves once the daemon is on its own).
    /// A daemon in place ([`Detach::InPlace`]) is that process: it is reaped
    /// when it ends, by [`crate::procfs::reap`] of its pid.
    pub fn reap_launcher(&mut self) {
        if u32::try_from(self.daemon_pid).ok() != Some(self.launcher.id()) {
            let _ = self.launcher.wait();
        }
    }
}

/// Exec `bin` with `cfg` as one frame on stdin and read its start report.
/// A config that asks for the first connection on stdin gets a socketpair
/// there, which becomes [`Launched::client`] when the daemon takes it over.
pub fn start(bin: &Path, cfg: &SpawnConfig) -> Result<Launched, String> {
    let bytes = cfg.to_frame().map_err(|e| format!("encode config: {e}"))?;
    let (stdin, mut ours) = if cfg.first_connection == FirstConnection::Stdin {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        (Stdio::from(std::os::fd::OwnedFd::from(theirs)), Some(ours))
    } else {
        (Stdio::piped(), None)
    };
    let mut child = Command::new(bin)
        .env_clear()
        .current_dir("/")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("exec {}: {e}", bin.display()))?;
    match (child.stdin.take(), ours.as_mut()) {
        (Some(mut pipe), _) => {
            let _ = pipe.write_all(&bytes);
        }
        (None, Some(s)) => {
            let _ = s.write_all(&bytes);
        }
        (None, None) => {}
    }
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let report = frame::read_frame(&mut out, MAX_FRAME_LEN).and_then(|f| f.decode::<StartReport>());
    match report {
        Ok(StartReport::Started { daemon_pid, .. }) => {
            crate::cleanup::add_pid(daemon_pid);
            Ok(Launched {
                daemon_pid,
                launcher: child,
                handed: None,
            })
        }
        Ok(StartReport::StartedWithConnection(w)) => {
            crate::cleanup::add_pid(w.daemon_pid);
            let s = ours.ok_or("a connection taken over that was never handed")?;
            Ok(Launched {
                daemon_pid: w.daemon_pid,
                launcher: child,
                handed: Some(Client::on(s)),
            })
        }
        Ok(StartReport::Failed {
            stage,
            errno,
            message,
        }) => {
            let _ = child.wait();
            Err(format!(
                "tend-spawn reported Failed (stage {stage}, errno {errno}): {message}"
            ))
        }
        Err(e) => {
            let _ = child.wait();
            Err(format!("no start report from tend-spawn: {e}"))
        }
    }
}

/// A blocking client of one daemon.
#[derive(Debug)]
pub struct Client {
    s: UnixStream,
}

impl Client {
    /// A client on a connection the daemon already welcomed.
    fn on(s: UnixStream) -> Client {
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        Client { s }
    }

    /// Connect, say Hello with the task's token, expect Welcome.
    pub fn connect(cfg: &SpawnConfig) -> Result<Client, String> {
        let s = UnixStream::connect(&cfg.socket_path)
            .map_err(|e| format!("connect {}: {e}", cfg.socket_path))?;
        let mut c = Client::on(s);
        c.send(&Hello {
            version: PROTOCOL_VERSION,
            token: cfg.token,
        })?;
        match c.recv()? {
            Response::Welcome(_) => Ok(c),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    fn send<T: Serialize>(&mut self, m: &T) -> Result<(), String> {
        let b = frame::encode(m).map_err(|e| e.to_string())?;
        self.s.write_all(&b).map_err(|e| format!("write: {e}"))
    }

    fn recv(&mut self) -> Result<Response, String> {
        frame::read_frame(&mut self.s, MAX_FRAME_LEN)
            .and_then(|f| f.decode())
            .map_err(|e| format!("read: {e}"))
    }

    /// Wait, expect Ok, then the pushed Exited.
    pub fn wait_exit(&mut self) -> Result<ExitStatus, String> {
        self.send(&Request::Wait)?;
        match self.recv()? {
            Response::Ok => {}
            other => return Err(format!("Wait: expected Ok, got {other:?}")),
        }
        self.recv()?
            .into_exit()
            .map_err(|other| format!("expected Exited, got {other:?}"))
    }

    /// Release: the daemon may go.
    pub fn release(&mut self) {
        if self.send(&Request::Release).is_ok() {
            let _ = self.recv();
        }
    }
}

/// Run one task to its end through tend-spawn, Release it and reap the daemon.
/// Returns the exit as the client got it and the daemon's CPU seconds read just
/// before Release.
pub fn run_to_exit(bin: &Path, cfg: &SpawnConfig) -> Result<(ExitStatus, f64), String> {
    let mut l = start(bin, cfg)?;
    let mut c = l.client(cfg)?;
    let e = c.wait_exit()?;
    let cpu = crate::procfs::cpu_seconds(l.daemon_pid).unwrap_or(f64::NAN);
    c.release();
    l.reap_launcher();
    crate::procfs::reap(l.daemon_pid, Duration::from_secs(10));
    Ok((e, cpu))
}

/// Stop a daemon by SIGTERM (it stops its task and leaves) and reap it.
pub fn stop_daemon(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    if !crate::procfs::reap(pid, Duration::from_secs(10)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        crate::procfs::reap(pid, Duration::from_secs(5));
    }
}

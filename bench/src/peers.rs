//! The supervisors beside tend-spawn that Debian ships: runit's `runsv` and
//! s6's `s6-supervise`, each over a service dir of its own under the
//! harness's temp root (so the cleanup finds them and their children by
//! their cwd). Figure 2 measures them idle over `sleep 600`; figure 1a has
//! one start `/bin/true` once on request and times it until its status
//! says the run is over.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::procfs::{footprint, Footprint};

/// A peer supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// runit's `runsv`.
    Runsv,
    /// s6's `s6-supervise`.
    S6,
}

/// Both, in the order the report shows them.
pub const PEERS: [Peer; 2] = [Peer::Runsv, Peer::S6];

/// How long a supervisor may take to bring its service up or down.
const SETTLE: Duration = Duration::from_secs(10);

impl Peer {
    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Runsv => "runsv",
            Peer::S6 => "s6-supervise",
        }
    }

    /// The Debian package that ships it.
    pub fn package(self) -> &'static str {
        match self {
            Peer::Runsv => "runit",
            Peer::S6 => "s6",
        }
    }

    /// How long to leave the supervisor between two runs of a service:
    /// runsv, after a run shorter than a second, records its end and then
    /// sleeps a second, deaf to its control fifo meanwhile; the next round
    /// would time that sleep, not a start.
    pub fn rest(self) -> Duration {
        match self {
            Peer::Runsv => Duration::from_millis(1100),
            Peer::S6 => Duration::ZERO,
        }
    }

    /// The pid of the service's process in its status file (0: none runs),
    /// and the stamp of the status's last change. runsv: TAI64N (12 bytes),
    /// pid (4, little endian), then 4 flag bytes. s6: stamp and ready stamp
    /// (TAIN, 12 each), pid (8, big endian), wait status (2), flags (1, bit
    /// 1: the finish script runs).
    fn status(self, dir: &Path) -> Option<(u64, [u8; 12])> {
        let b = fs::read(dir.join("supervise/status")).ok()?;
        let stamp: [u8; 12] = b.get(..12)?.try_into().ok()?;
        match self {
            Peer::Runsv => {
                let pid = u32::from_le_bytes(b.get(12..16)?.try_into().ok()?);
                Some((u64::from(pid), stamp))
            }
            Peer::S6 => {
                let pid = u64::from_be_bytes(b.get(24..32)?.try_into().ok()?);
                let finishing = b.get(34)? & 0x02 != 0;
                // A run whose finish script still runs is not over yet.
                Some((if finishing { u64::MAX } else { pid }, stamp))
            }
        }
    }
}

/// One supervisor the harness started, over its service dir.
#[derive(Debug)]
pub struct Supervisor {
    peer: Peer,
    /// Its pid (a child of the harness).
    pub pid: i32,
    dir: PathBuf,
}

impl Supervisor {
    /// Make `dir` a service dir whose `run` is `run` (a script or a
    /// symlink to a binary), down at the start when `down`, and start `bin`
    /// over it; returns once its status file exists.
    fn start(peer: Peer, bin: &Path, dir: &Path, run: &Run, down: bool) -> Result<Self, String> {
        let err = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", dir.display());
        fs::create_dir_all(dir).map_err(|e| err("mkdir", e))?;
        let file = dir.join("run");
        match run {
            Run::Binary(target) => symlink(target, &file).map_err(|e| err("symlink run", e))?,
            Run::Script(text) => {
                fs::write(&file, text).map_err(|e| err("write run", e))?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755))
                    .map_err(|e| err("chmod run", e))?;
            }
        }
        if down {
            fs::write(dir.join("down"), b"").map_err(|e| err("write down", e))?;
        }
        let child = Command::new(bin)
            .arg(dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("exec {}: {e}", bin.display()))?;
        let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
        crate::cleanup::add_pid(pid);
        let s = Supervisor {
            peer,
            pid,
            dir: dir.to_path_buf(),
        };
        let up = |st: Option<(u64, [u8; 12])>| st.is_some_and(|(p, _)| down || p != 0);
        s.until(up, "its status file")?;
        Ok(s)
    }

    /// Poll the status every millisecond until `ok`, for at most [`SETTLE`].
    fn until(
        &self,
        ok: impl Fn(Option<(u64, [u8; 12])>) -> bool,
        what: &str,
    ) -> Result<(), String> {
        let end = Instant::now() + SETTLE;
        while !ok(self.peer.status(&self.dir)) {
            if !crate::procfs::alive(self.pid) {
                return Err(format!("{} exited before {what}", self.peer.name()));
            }
            if Instant::now() > end {
                return Err(format!("{}: no {what} after {SETTLE:?}", self.peer.name()));
            }
            sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Write `cmd` to the supervisor's control fifo, as `sv` and `s6-svc` do.
    fn control(&self, cmd: &[u8]) -> Result<(), String> {
        let path = self.dir.join("supervise/control");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, cmd).map_err(|e| format!("write {}: {e}", path.display()))
    }

    /// Take the service down and make the supervisor exit (`sv exit`,
    /// `s6-svc -dx`); SIGKILL after [`SETTLE`] if it has not. Its service's
    /// process is killed either way.
    fn stop(self) {
        let service = self.peer.status(&self.dir).map_or(0, |(p, _)| p);
        let _ = self.control(b"dx");
        if !crate::procfs::reap(self.pid, SETTLE) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            crate::procfs::reap(self.pid, SETTLE);
        }
        if let Ok(p) = i32::try_from(service) {
            if p > 0 && crate::procfs::alive(p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        crate::procfs::reap_zombies();
    }
}

/// What a service dir runs.
enum Run {
    /// `run` is a symlink to this binary.
    Binary(&'static str),
    /// `run` is this script.
    Script(&'static str),
}

/// Footprints of `k` supervisors of `peer`, each over its own `sleep 600`
/// (`run`: `exec /bin/sleep 600`), taken once every one runs its service;
/// all are stopped after.
pub fn idle(peer: Peer, bin: &Path, root: &Path, k: usize) -> Result<Vec<Footprint>, String> {
    let mut started = Vec::with_capacity(k);
    let res = (|| {
        for i in 0..k {
            let dir = root.join(format!("{}-idle-{i}", peer.package()));
            let s = Supervisor::start(
                peer,
                bin,
                &dir,
                &Run::Script("#!/bin/sh\nexec /bin/sleep 600\n"),
                false,
            )?;
            started.push(s);
        }
        // As for tend-spawn: let every supervisor reach its idle loop.
        sleep(Duration::from_millis(200));
        started
            .iter()
            .map(|s| footprint(s.pid))
            .collect::<Result<Vec<_>, _>>()
    })();
    for s in started {
        s.stop();
    }
    let _ = fs::remove_dir_all(root);
    res
}

/// 1(a) of a peer: one resident supervisor over a service whose `run` is
/// `/bin/true`, down at the start. Each round writes `o` (once: up, and not
/// again when it ends) to its control fifo and waits, on an inotify watch of
/// `supervise/`, until the status says a new run is over, after resting the
/// supervisor [`Peer::rest`]. ms per round.
pub fn once_latency(
    peer: Peer,
    bin: &Path,
    root: &Path,
    n: usize,
    warm: usize,
) -> Result<Vec<f64>, String> {
    let dir = root.join(format!("{}-once", peer.package()));
    let s = Supervisor::start(peer, bin, &dir, &Run::Binary("/bin/true"), true)?;
    let res = (|| {
        let watch = crate::sys::watch_dir(&dir.join("supervise"))
            .map_err(|e| format!("inotify on {}/supervise: {e}", dir.display()))?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n + warm {
            sleep(peer.rest());
            let before = peer.status(&dir).ok_or("no status file")?.1;
            drain(&watch);
            let t = Instant::now();
            s.control(b"o")?;
            let end = t + SETTLE;
            loop {
                if let Some((0, stamp)) = peer.status(&dir) {
                    if stamp != before {
                        break;
                    }
                }
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "{}: /bin/true not over after {SETTLE:?}",
                        peer.name()
                    ));
                }
                wait_readable(&watch, left);
                drain(&watch);
            }
            let d = t.elapsed().as_secs_f64() * 1000.0;
            if i >= warm {
                out.push(d);
            }
        }
        Ok(out)
    })();
    s.stop();
    let _ = fs::remove_dir_all(&dir);
    res
}

/// Read every pending inotify event (the fd does not block).
fn drain(fd: &OwnedFd) {
    let Ok(dup) = fd.try_clone() else { return };
    let mut f = fs::File::from(dup);
    let mut buf = [0u8; 4096];
    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
}

/// Wait until `fd` is readable or `left` has passed.
fn wait_readable(fd: &OwnedFd, left: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

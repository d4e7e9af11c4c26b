//! Exec `tend-spawn`, hand it the [`SpawnConfig`] as one frame on stdin, and read
//! the one [`StartReport`] frame it writes to stdout. Its stdin is one end of
//! a socketpair when the config asks for it: after the config, that stream is
//! the agent's first connection to the daemon, with no connect and no Hello.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;

use tend_proto::config::{Detach, FirstConnection};
use tend_proto::frame::{FrameDecoder, FrameError};
use tend_proto::{SpawnConfig, Stage, StartReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;

use super::launcher::{Launcher, LauncherError};

/// How long tend-spawn may take to report; it never should come near.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why tend-spawn gave no start report.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// There is no tend-spawn where the agent looked.
    #[error(
        "cannot execute tend-spawn: {looked}; build it with `cargo build --release` \
         (it lands beside tend in target/release), or give its path with --spawn-bin \
         or TEND_SPAWN_BIN"
    )]
    NotFound {
        /// Where the agent looked, in words.
        looked: String,
    },
    /// The binary could not be executed.
    #[error("cannot execute {bin}: {source}")]
    Exec {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config could not be encoded or sent.
    #[error("cannot send the spawn config to {bin}: {source}")]
    Send {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// The error.
        source: FrameError,
    },
    /// tend-spawn ended or closed its stdout without a report.
    #[error("{bin} gave no start report{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    NoReport {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The report did not decode.
    #[error("bad start report from {bin}: {source}")]
    BadReport {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// The error.
        source: FrameError,
    },
    /// No report within the time limit.
    #[error("{bin} gave no start report within {}s", REPORT_TIMEOUT.as_secs())]
    Timeout {
        /// The tend-spawn binary.
        bin: PathBuf,
    },
}

/// Where the agent finds `tend-spawn`: `$TEND_SPAWN_BIN`, else next to its own
/// executable, else on PATH.
pub fn default_spawn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TEND_SPAWN_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let cand = dir.join("tend-spawn");
            if cand.exists() {
                return cand;
            }
        }
    }
    PathBuf::from("tend-spawn")
}

/// Where the agent looked for `bin` when it is not there, for the error: the
/// bare name [`default_spawn_bin`] falls back to means neither beside the
/// agent's executable nor on PATH.
fn where_looked(bin: &Path) -> String {
    if bin.components().count() > 1 || bin.is_absolute() {
        return format!("{} does not exist", bin.display());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(bin)))
        .map_or_else(String::new, |p| format!("{} nor ", p.display()));
    format!("no {beside}{} on PATH", bin.display())
}

/// What a start gave: tend-spawn's report and, when it took the first
/// connection over ([`StartReport::StartedWithConnection`]), that connection.
#[derive(Debug)]
pub struct Launched {
    /// The report.
    pub report: StartReport,
    /// The starter's end of tend-spawn's stdin, now a welcomed client of the
    /// daemon; None when the daemon reported plain `Started` (the first
    /// connection is then made to the socket file).
    pub connection: Option<UnixStream>,
}

/// Start one task through `bin`: exec it with an empty environment (nothing of the
/// task or the agent reaches its /proc/PID/environ), write `config` on its stdin,
/// and return its report. A `Failed` report is a normal outcome, not an error.
/// With a `launcher`, the exec is the launcher's (no copy of the agent's fd
/// table per start); one that is unavailable leaves the start to the agent.
///
/// A config that asks for the first connection on stdin
/// ([`FirstConnection::Stdin`]) gets one end of a socketpair as tend-spawn's
/// stdin instead of a pipe. Under the launcher the config also asks for
/// [`Detach::InPlace`]: the process the launcher exec'd is the daemon (the
/// launcher reaps it when it ends), not a first process that forks it. A
/// tend-spawn that predates these parts refuses the frame at the config
/// stage, before it starts anything, for the bytes it does not know after
/// the config: the start is made once more without them (and with whatever
/// that attempt reports).
pub async fn launch(
    bin: &Path,
    config: &SpawnConfig,
    launcher: Option<&Launcher>,
) -> Result<Launched, LaunchError> {
    let first = launch_once(bin, config, launcher, true).await?;
    let asked_parts = config.first_connection != FirstConnection::Socket || launcher.is_some();
    if !asked_parts || !predates_the_part(&first.report) {
        return Ok(first);
    }
    tracing::debug!(
        report = ?first.report,
        "tend-spawn refused a config with the first connection on stdin or in place; starting without"
    );
    let mut plain = config.clone();
    plain.first_connection = FirstConnection::Socket;
    launch_once(bin, &plain, launcher, false).await
}

/// Whether `report` is how a tend-spawn that predates the first connection
/// on stdin answers a config with it: refused at the config stage for the
/// trailing bytes (its words are fixed: it is an older build). Any other
/// refusal, of a config or by a setuid policy, is the answer as it stands.
fn predates_the_part(report: &StartReport) -> bool {
    matches!(
        report,
        StartReport::Failed {
            stage: Stage::Config,
            message,
            ..
        } if message.contains("trailing bytes after SpawnConfig")
    )
}

/// The agent's ends of tend-spawn's stdin, stdout and stderr.
struct Ends {
    /// Where the config goes: a pipe, or, for a config that asks for the
    /// first connection there, one end of a socketpair.
    stdin: ConfigIn,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

enum ConfigIn {
    Pipe(pipe::Sender),
    Connection(UnixStream),
}

impl Ends {
    /// New ends, and tend-spawn's stdin, stdout and stderr (all close-on-exec
    /// here; the child's 0, 1 and 2 are dups of them).
    fn open(config: &SpawnConfig) -> std::io::Result<(Ends, [OwnedFd; 3])> {
        let cloexec_pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from);
        let (stdin, their_stdin) = if config.first_connection == FirstConnection::Stdin {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            (
                ConfigIn::Connection(UnixStream::from_std(ours)?),
                OwnedFd::from(theirs),
            )
        } else {
            let (r, w) = cloexec_pipe()?;
            (ConfigIn::Pipe(pipe::Sender::from_owned_fd(w)?), r)
        };
        let (out_r, out_w) = cloexec_pipe()?;
        let (err_r, err_w) = cloexec_pipe()?;
        let ends = Ends {
            stdin,
            stdout: pipe::Receiver::from_owned_fd(out_r)?,
            stderr: pipe::Receiver::from_owned_fd(err_r)?,
        };
        Ok((ends, [their_stdin, out_w, err_w]))
    }
}

/// tend-spawn running on `ends`: through the launcher (which reaps it) or,
/// without one or when it is unavailable, as the agent's own child,
/// returned to be reaped. Either way tend-spawn's ends are closed
/// here once it has them: its exit ends the pipes. A launcher that went
/// away leaves the ends it was sent unused (a tend-spawn it may have started
/// on them reads no config and starts nothing): the direct start gets new ones.
async fn start(
    bin: &Path,
    config: &SpawnConfig,
    launcher: Option<&Launcher>,
) -> Result<(Ends, Option<tokio::process::Child>), LaunchError> {
    // (The config is not sent yet: whether the daemon stays in place
    // follows from who exec'd it, known only once this returns.)
    let exec_err = |source| LaunchError::Exec {
        bin: bin.to_path_buf(),
        source,
    };
    if let Some(l) = launcher {
        let (ends, [a, b, c]) = Ends::open(config).map_err(exec_err)?;
        match l.spawn(bin, [a.as_fd(), b.as_fd(), c.as_fd()]).await {
            Ok(_) => return Ok((ends, None)),
            Err(LauncherError::Spawn(e)) => return Err(spawn_error(bin, e)),
            Err(e @ LauncherError::Unavailable(_)) => {
                tracing::warn!(error = %e, "starting tend-spawn from the agent itself");
            }
        }
    }
    let (ends, [stdin, stdout, stderr]) = Ends::open(config).map_err(exec_err)?;
    let child = tokio::process::Command::new(bin)
        .env_clear()
        .current_dir("/")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| spawn_error(bin, e))?;
    Ok((ends, Some(child)))
}

/// The error of a spawn of `bin` that failed.
fn spawn_error(bin: &Path, source: std::io::Error) -> LaunchError {
    if source.kind() == std::io::ErrorKind::NotFound {
        LaunchError::NotFound {
            looked: where_looked(bin),
        }
    } else {
        LaunchError::Exec {
            bin: bin.to_path_buf(),
            source,
        }
    }
}

/// One start. `in_place`: a config the launcher started asks for
/// [`Detach::InPlace`]; one the agent started itself never does (the agent
/// waits for its first process, below).
async fn launch_once(
    bin: &Path,
    config: &SpawnConfig,
    launcher: Option<&Launcher>,
    in_place: bool,
) -> Result<Launched, LaunchError> {
    let send_err = |source| LaunchError::Send {
        bin: bin.to_path_buf(),
        source,
    };
    // Encoded before anything starts (a config that cannot be sent starts
    // nothing), for the launcher's exec: in place. Only a launcher that
    // turns out unavailable, leaving the exec to the agent, costs a second
    // encoding, without it.
    let frame_of = |detach: Detach| {
        if detach == config.detach {
            return config.to_frame().map_err(send_err);
        }
        let mut sent = config.clone();
        sent.detach = detach;
        sent.to_frame().map_err(send_err)
    };
    let planned = if in_place && launcher.is_some() {
        Detach::InPlace
    } else {
        config.detach
    };
    let mut bytes = frame_of(planned)?;
    let (ends, mut child) = start(bin, config, launcher).await?;
    if child.is_some() && planned == Detach::InPlace {
        bytes = frame_of(Detach::Fork)?;
    }
    let Ends {
        stdin,
        mut stdout,
        mut stderr,
    } = ends;
    let (mut pipe, mut connection) = match stdin {
        ConfigIn::Pipe(p) => (Some(p), None),
        ConfigIn::Connection(c) => (None, Some(c)),
    };
    let bin_owned = bin.to_path_buf();
    let io = async {
        let sent = match (&mut pipe, &mut connection) {
            (Some(p), _) => p.write_all(&bytes).await,
            (None, Some(c)) => c.write_all(&bytes).await,
            (None, None) => Ok(()),
        };
        if let Err(e) = sent {
            // A daemon that refused the config early may have closed stdin; its
            // report (or stderr) says why, so read on.
            tracing::debug!(error = %e, "writing spawn config");
        }
        // The end of a piped stdin; the socketpair stays open, for the daemon.
        drop(pipe);
        let mut dec = FrameDecoder::new();
        let mut buf = [0u8; 512];
        loop {
            if let Some(f) = dec.next_frame().map_err(|source| LaunchError::BadReport {
                bin: bin_owned.clone(),
                source,
            })? {
                return f
                    .decode::<StartReport>()
                    .map_err(|source| LaunchError::BadReport {
                        bin: bin_owned.clone(),
                        source,
                    });
            }
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let mut err = String::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut err))
                        .await;
                return Err(LaunchError::NoReport {
                    bin: bin_owned.clone(),
                    stderr: err.trim().to_string(),
                });
            }
            dec.push(&buf[..n]);
        }
    };
    let result = match tokio::time::timeout(REPORT_TIMEOUT, io).await {
        Ok(r) => r,
        Err(_) => Err(LaunchError::Timeout {
            bin: bin.to_path_buf(),
        }),
    };
    // The first process exits right after it forks the daemon; reap it (the
    // launcher reaps those it started, daemons in place among them).
    if let Some(child) = child.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    let report = result?;
    // Only a daemon that says so took the connection over; any other end
    // of it is closed here.
    let connection = connection.filter(|_| matches!(report, StartReport::StartedWithConnection(_)));
    Ok(Launched { report, connection })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_the_trailing_part_is_taken_for_an_older_tend_spawn() {
        let failed = |stage, message: String| StartReport::Failed {
            stage,
            errno: 0,
            message,
        };
        // What a tend-spawn that predates the part says (lib.rs, read_config).
        let trailing = FrameError::TrailingBytes {
            what: "SpawnConfig",
            extra: 1,
        };
        let old = format!("decoding the spawn config: {trailing}");
        assert!(predates_the_part(&failed(Stage::Config, old.clone())));
        assert!(!predates_the_part(&failed(Stage::Exec, old)));
        let policy = "policy: user root is not allowed".to_string();
        assert!(!predates_the_part(&failed(Stage::Config, policy)));
    }
}

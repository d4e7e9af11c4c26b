//! tend-spawn: the per-task supervisor.
//!
//! The agent execs `tend-spawn` with a [`SpawnConfig`] frame on stdin; it
//! writes one [`StartReport`] frame to stdout and then serves the agent over
//! its control socket (and, when the config asks for it, over its stdin, a
//! socketpair that is the agent's first connection) until the task's exit is
//! recorded and released. The order of its start is written once, in code:
//! [`run`] (the first process), then `daemon::run` and `daemon::start` (the
//! daemon's privileged sequence), then `child::task` (its children between
//! fork and exec). See `DESIGN.md`, "The spawn protocol" and "Inside
//! tend-spawn".
//!
//! Unsafe code lives only in `child::raw` (the system calls of a forked child,
//! fork itself among them) and [`sys`] (the daemon's raw syscalls).
#![deny(unsafe_code)]

mod child;
mod chroot;
mod clock;
mod daemon;
mod daemon_log;
mod reaper;
mod server;
pub mod setuid;
mod sys;

// The crates tend-spawn shares with the agent, under the module names its code
// has always used (`crate::cgroup::TaskCgroup`, ...).
use tend_cgroup as cgroup;
use tend_logs as logs;
use tend_policy as policy;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use tend_proto::config::{Detach, FirstConnection, TaskStdin};
use tend_proto::frame::{read_frame, MAX_FRAME_LEN};
use tend_proto::{SpawnConfig, Stage, StartReport};

use crate::child::{Forked, StartFailure};
use crate::daemon::OwnStdin;

/// Exit code of a start that failed (the report says why).
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a usage error.
pub const EXIT_USAGE: i32 = 2;

/// Why the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// An argument tend-spawn does not take.
    #[error(
        "unknown argument {0:?}: tend-spawn takes its config as a frame on stdin (see --help)"
    )]
    UnknownArgument(String),
    /// stdin is a terminal.
    #[error("stdin is a terminal: tend-spawn is started by the tend agent, which writes its config to stdin")]
    Terminal,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run as the agent's supervisor (no arguments).
    Run,
    /// Print the version.
    Version,
    /// Print the help.
    Help,
    /// `oci VERB ...`: the OCI runtime command line, served by `tend-oci`
    /// next to this binary (docs/oci.md).
    Oci(Vec<String>),
}

/// The help text.
pub const HELP: &str = "tend-spawn: tend's per-task supervisor.\n\
\n\
Started by the tend agent, which writes the task's spawn config as one frame to\n\
stdin and reads one start report from stdout. It takes no other arguments.\n\
\n\
`tend-spawn oci create|start|run|state|kill|delete ...` is the OCI runtime\n\
command line, served by tend-oci next to this binary (docs/oci.md).\n\
\n\
Options:\n  --version  print the version\n  --help     print this help\n";

/// Parse argv (without argv\[0\]).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, UsageError> {
    let args: Vec<String> = args.into_iter().collect();
    match args.as_slice() {
        [] => Ok(Command::Run),
        [a] if a == "--version" || a == "-V" => Ok(Command::Version),
        [a] if a == "--help" || a == "-h" => Ok(Command::Help),
        [a, rest @ ..] if a == "oci" => Ok(Command::Oci(rest.to_vec())),
        [a, ..] => Err(UsageError::UnknownArgument(a.clone())),
    }
}

/// Read and check the config frame from stdin.
pub fn read_config<R: io::Read>(input: &mut R) -> Result<SpawnConfig, StartFailure> {
    let frame = read_frame(input, MAX_FRAME_LEN).map_err(|e| {
        StartFailure::plain(Stage::Config, format!("reading the spawn config: {e}"))
    })?;
    let config = SpawnConfig::from_frame(&frame).map_err(|e| {
        StartFailure::plain(Stage::Config, format!("decoding the spawn config: {e}"))
    })?;
    config
        .validate()
        .map_err(|e| StartFailure::plain(Stage::Config, e.to_string()))?;
    Ok(config)
}

/// The daemon's umask outside setuid mode. Every file and dir it makes has
/// its mode named (logs 0640, the log dir 0755, the socket 0600 by chmod),
/// none group- or world-writable; under 022 each is created with that mode
/// exactly, so no fchmod follows. (Setuid mode keeps [`setuid::UMASK`].)
/// The task gets 022 of its own, whatever the daemon's (`child::task`).
pub const UMASK: u32 = 0o022;

/// Clean what the process inherited: every fd above 2, the umask, the fd limit.
pub fn sanitize() {
    sys::close_fds_above_stdio();
    sys::set_umask(UMASK);
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The whole run of `tend-spawn` with no arguments; returns the exit code of the
/// process that returns (the first process, or the daemon when it leaves).
///
/// The first process's part of the start, in order: refuse a terminal, reset
/// the signal state, clean the inherited process state (setuid mode did its
/// own in `main`), read and check the config, apply the setuid policy, look up
/// the task's user, then leave the starter for the daemon ([`detach`];
/// [`daemon::run`], whose [`daemon::start`](crate::daemon) is the
/// privileged sequence, and whose children run `child::task`'s steps).
pub fn run() -> i32 {
    if sys::is_tty(io::stdin()) {
        eprintln!("tend-spawn: {}", UsageError::Terminal);
        return EXIT_USAGE;
    }
    // Whatever signal state the parent left (SIGCHLD ignored would reap the
    // task behind the daemon's back, SIGTERM ignored would never reach it):
    // gone, before any fork. The daemon sets its own. Setuid mode resets
    // every disposition rather than trust what /proc says.
    let setuid = setuid::is_setuid();
    let reset = if setuid {
        sys::reset_signals()
    } else {
        sys::reset_ignored_signals()
    };
    if let Err(e) = reset {
        eprintln!("tend-spawn: resetting the signal mask: {e}");
        return EXIT_FAILED;
    }
    if !setuid {
        sanitize();
    }
    // Read unbuffered, through a dup of stdin: what follows the frame stays
    // in the stream, for a task that reads it (TaskStdin::AfterConfig).
    let mut input = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return report_failure(&StartFailure::io(Stage::Config, "stdin", &e)),
    };
    let mut config = match read_config(&mut input) {
        Ok(c) => c,
        Err(f) => return report_failure(&f),
    };
    let own_stdin = match own_stdin(&config, input) {
        Ok(s) => s,
        Err(f) => return report_failure(&f),
    };
    let ctx = match apply_policy(&mut config) {
        Ok(c) => c,
        Err(f) => return report_failure(&f),
    };
    let isolation = match task_user(&config, ctx.as_ref()) {
        Ok(i) => i,
        Err(f) => return report_failure(&f),
    };
    detach(config, isolation, ctx, own_stdin)
}

/// What the rest of the stream the config came on is for: the task's stdin
/// ([`TaskStdin::AfterConfig`]), the starter's first connection
/// ([`FirstConnection::Stdin`], which must be a stream socket: one end of
/// the starter's socketpair), or nothing.
fn own_stdin(config: &SpawnConfig, input: std::fs::File) -> Result<OwnStdin, StartFailure> {
    if config.stdin == TaskStdin::AfterConfig {
        return Ok(OwnStdin::Task(OwnedFd::from(input)));
    }
    if config.first_connection != FirstConnection::Stdin {
        return Ok(OwnStdin::Unused);
    }
    let fd = OwnedFd::from(input);
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => Ok(OwnStdin::Connection(UnixStream::from(fd))),
        Ok(other) => Err(StartFailure::plain(
            Stage::Config,
            format!("first_connection: stdin is a {other:?} socket, not a stream socket"),
        )),
        Err(e) => Err(StartFailure::new(
            Stage::Config,
            "first_connection: stdin is not a socket",
            e as i32,
        )),
    }
}

/// Setuid mode: the policy decides, before anything is created or forked
/// (None outside setuid mode).
fn apply_policy(config: &mut SpawnConfig) -> Result<Option<setuid::Context>, StartFailure> {
    if !setuid::is_setuid() {
        return Ok(None);
    }
    setuid::Context::establish(config)
        .map(Some)
        .map_err(|e| StartFailure::plain(Stage::Config, e.to_string()))
}

/// Who the task runs as, looked up before any fork: in setuid mode the
/// policy's task user; raw_exec (no isolation) runs as the caller.
fn task_user(
    config: &SpawnConfig,
    ctx: Option<&setuid::Context>,
) -> Result<Option<child::Isolation>, StartFailure> {
    match ctx {
        Some(c) => Ok(Some(c.task)),
        None => config.isolation.as_ref().map(daemon::task_ids).transpose(),
    }
}

/// Leave the starter. By default ([`Detach::Fork`]) the daemon is never a
/// child of the process that exec'd tend-spawn, and never a session leader:
/// the first process starts a session of its own and forks the daemon once,
/// returning at once. Where it cannot (it leads its process group: EPERM),
/// the double fork: it waits for an intermediate that starts the session,
/// forks the daemon and leaves.
///
/// [`Detach::InPlace`] (the agent's launcher, which reaps every child it
/// has): the first process starts its session and is the daemon, a fork
/// and its copy-on-write faults fewer. It leads that session but no
/// terminal can become its own: it opens none (its log files are opened
/// with `O_NOCTTY`, the rest are dirs, new files, pipes and kernel files),
/// and its task and helpers are never session leaders. Where the session
/// cannot be started, the double fork as above.
///
/// `own_stdin`, the rest of the config's stream, goes with the daemon (to
/// its task, or as its first client).
fn detach(
    config: SpawnConfig,
    isolation: Option<child::Isolation>,
    ctx: Option<setuid::Context>,
    own_stdin: OwnStdin,
) -> i32 {
    if nix::unistd::setsid().is_ok() {
        if config.detach == Detach::InPlace {
            return daemon::run(config, isolation, ctx, own_stdin);
        }
        return match child::fork_single_threaded() {
            Err(e) => report_failure(&StartFailure::io(Stage::Fork, "daemon", &e)),
            Ok(Forked::Parent(_)) => 0,
            Ok(Forked::Child) => daemon::run(config, isolation, ctx, own_stdin),
        };
    }
    match child::fork_single_threaded() {
        Err(e) => report_failure(&StartFailure::io(Stage::Fork, "daemon", &e)),
        Ok(Forked::Parent(intermediate)) => match sys::wait_blocking(intermediate) {
            Ok(0) => 0,
            Ok(status) => {
                eprintln!("tend-spawn: the intermediate process ended with status {status}");
                EXIT_FAILED
            }
            Err(e) => {
                eprintln!("tend-spawn: waiting for the intermediate process: {e}");
                EXIT_FAILED
            }
        },
        Ok(Forked::Child) => {
            if let Err(e) = nix::unistd::setsid() {
                report_failure(&StartFailure::new(Stage::Fork, "setsid", e as i32));
                sys::exit_now(EXIT_FAILED);
            }
            match child::fork_single_threaded() {
                Err(e) => {
                    report_failure(&StartFailure::io(Stage::Fork, "daemon", &e));
                    sys::exit_now(EXIT_FAILED)
                }
                Ok(Forked::Parent(_)) => sys::exit_now(0),
                Ok(Forked::Child) => daemon::run(config, isolation, ctx, own_stdin),
            }
        }
    }
}

fn report_failure(f: &StartFailure) -> i32 {
    eprintln!("tend-spawn: {}", f.message);
    daemon::report(&StartReport::Failed {
        stage: f.stage,
        errno: f.errno,
        message: f.message.clone(),
    });
    EXIT_FAILED
}

/// `tend-spawn oci ...`: exec `tend-oci` from this binary's dir with the
/// same arguments. Refused in setuid mode: the front end parses JSON from the
/// caller and must never hold the setuid binary's privileges; it runs as the
/// caller and starts tend-spawn (setuid or not) itself. Returns only on failure.
pub fn exec_oci(args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    if setuid::is_setuid() {
        eprintln!("tend-spawn: oci: run tend-oci directly, not through the setuid tend-spawn");
        return EXIT_USAGE;
    }
    let front = match std::env::current_exe() {
        Ok(p) => p.with_file_name("tend-oci"),
        Err(e) => {
            eprintln!("tend-spawn: oci: finding this binary: {e}");
            return EXIT_FAILED;
        }
    };
    let e = std::process::Command::new(&front).args(args).exec();
    eprintln!("tend-spawn: oci: exec {}: {e}", front.display());
    EXIT_FAILED
}

/// For unit tests that need root (see [`tend_sys::test_have_root`]).
#[cfg(test)]
pub(crate) use tend_sys::test_have_root;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(parse_args(vec![]), Ok(Command::Run));
        assert_eq!(parse_args(vec!["--version".into()]), Ok(Command::Version));
        assert_eq!(parse_args(vec!["--help".into()]), Ok(Command::Help));
        assert!(matches!(
            parse_args(vec!["--config=x".into()]),
            Err(UsageError::UnknownArgument(_))
        ));
        assert!(parse_args(vec!["--version".into(), "x".into()]).is_err());
        assert_eq!(
            parse_args(vec!["oci".into(), "state".into(), "x".into()]),
            Ok(Command::Oci(vec!["state".into(), "x".into()]))
        );
    }

    #[test]
    fn config_errors_are_config_stage() {
        let mut garbage: &[u8] = b"not a frame at all";
        let f = read_config(&mut garbage).unwrap_err();
        assert_eq!(f.stage, Stage::Config);
        let mut c = tend_proto::config::example("/tmp/a", "/tmp/s");
        c.run = 0;
        let bytes = tend_proto::frame::encode(&c).unwrap();
        assert!(read_config(&mut &bytes[..])
            .unwrap_err()
            .message
            .contains("run"));
    }

    #[test]
    fn every_extra_is_read_back() {
        use tend_proto::config::{ConfigExtra, Mount, MountKind};
        let mut c = tend_proto::config::example("/tmp/a", "/tmp/s");
        c.isolation = Some(tend_proto::config::Isolation {
            ids: Some(tend_proto::config::TaskIds {
                uid: 65534,
                gid: 65534,
            }),
            user: "nobody".into(),
            chroot: Some(tend_proto::config::ChrootSpec { binds: vec![] }),
        });
        c.extras = vec![
            ConfigExtra::Mounts(vec![Mount {
                target: "/run".into(),
                kind: MountKind::Tmpfs {
                    size_bytes: Some(1 << 20),
                    mode: None,
                },
                read_only: false,
                nosuid: true,
                nodev: true,
                noexec: true,
            }]),
            ConfigExtra::MaskedPaths(vec!["/etc/shadow".into()]),
            ConfigExtra::ReadonlyPaths(vec!["/etc".into()]),
            ConfigExtra::CgroupNamespace,
        ];
        let frame = c.to_frame().unwrap();
        assert_eq!(read_config(&mut &frame[..]).unwrap(), c);
    }
}

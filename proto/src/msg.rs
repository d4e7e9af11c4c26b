//! Messages between the agent and `tend-spawn`.
//!
//! Order of a connection: the client sends [`Hello`]; the daemon answers
//! [`Response::Welcome`] or [`Response::Error`] and closes (the starter's
//! first connection, handed over at spawn, skips both: its welcome comes in
//! [`StartReport::StartedWithConnection`]). Then the client sends
//! [`Request`]s; each is answered by one [`Response`], in order. After a
//! [`Request::Wait`], the daemon also pushes [`Response::Exited`] the moment the
//! task ends (at once if it already has).
//!
//! Every enum here only ever gains variants at the end: postcard encodes a variant
//! by its index, so an old frame keeps its meaning.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::exit::ExitStatusV1;

/// The per-task secret the agent puts in the spawn config and presents in [`Hello`].
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token(pub [u8; 32]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A secret never reaches a log line.
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Compare in time independent of where the first difference lies.
    pub fn ct_eq(&self, other: &Token) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// A random id the daemon draws at start; with the pid it tells one daemon from
/// another that later got the same pid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance(pub [u8; 16]);

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instance({self})")
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Instance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = crate::names::from_hex(s).ok_or_else(|| format!("instance: not hex: {s:?}"))?;
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("instance: want 32 hex digits, got {s:?}"))?;
        Ok(Instance(arr))
    }
}

/// The step of a task's start that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Stage {
    /// Reading or checking the spawn config.
    Config = 0,
    /// Creating the alloc's log dir or opening log files.
    Logs = 1,
    /// Binding the control socket.
    Socket = 2,
    /// Forking the daemon or the task.
    Fork = 3,
    /// Creating, limiting or joining the task's cgroup.
    Cgroup = 4,
    /// Setting resource limits.
    Rlimit = 5,
    /// The mount namespace and the chroot's bind mounts.
    Mount = 6,
    /// chroot or pivot_root.
    Chroot = 7,
    /// chdir into the task's working dir.
    Chdir = 8,
    /// Looking up the task's user.
    User = 9,
    /// setgroups.
    Setgroups = 10,
    /// setresgid.
    Setgid = 11,
    /// setresuid.
    Setuid = 12,
    /// Clearing capabilities or setting no_new_privs.
    Privileges = 13,
    /// Signal mask and dispositions.
    Signals = 14,
    /// Redirecting stdio.
    Stdio = 15,
    /// execve.
    Exec = 16,
    /// The setuid policy refused the request.
    Policy = 17,
}

impl Stage {
    /// Every stage, in wire order.
    pub const ALL: [Stage; 18] = [
        Stage::Config,
        Stage::Logs,
        Stage::Socket,
        Stage::Fork,
        Stage::Cgroup,
        Stage::Rlimit,
        Stage::Mount,
        Stage::Chroot,
        Stage::Chdir,
        Stage::User,
        Stage::Setgroups,
        Stage::Setgid,
        Stage::Setuid,
        Stage::Privileges,
        Stage::Signals,
        Stage::Stdio,
        Stage::Exec,
        Stage::Policy,
    ];

    /// The stage with this wire index, if any.
    pub fn from_index(i: u8) -> Option<Stage> {
        Stage::ALL.get(usize::from(i)).copied()
    }

    /// A short lowercase name, as used in messages ("exec /bin/nope: ...").
    pub fn name(self) -> &'static str {
        match self {
            Stage::Config => "config",
            Stage::Logs => "logs",
            Stage::Socket => "socket",
            Stage::Fork => "fork",
            Stage::Cgroup => "cgroup",
            Stage::Rlimit => "rlimit",
            Stage::Mount => "mount",
            Stage::Chroot => "chroot",
            Stage::Chdir => "chdir",
            Stage::User => "user",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::Privileges => "privileges",
            Stage::Signals => "signals",
            Stage::Stdio => "stdio",
            Stage::Exec => "exec",
            Stage::Policy => "policy",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The one frame `tend-spawn` writes to its stdout before it goes quiet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartReport {
    /// The task runs.
    Started {
        /// Pid of the daemon that supervises it.
        daemon_pid: i32,
        /// Pid of the task.
        task_pid: i32,
        /// The daemon's instance id.
        instance: Instance,
    },
    /// Nothing runs; the exit status file says the same.
    Failed {
        /// The step that failed.
        stage: Stage,
        /// The errno, 0 when the failure was not a system call's.
        errno: i32,
        /// One line for a person: "exec /nope: No such file or directory".
        message: String,
    },
    /// The task runs, and tend-spawn's stdin, on which the config came
    /// ([`FirstConnection::Stdin`](crate::config::FirstConnection)), is the
    /// starter's first connection: already welcomed, with this welcome, so
    /// the next frame on it is a [`Request`]. Sent only to a starter that
    /// asked for it.
    StartedWithConnection(Welcome),
}

impl StartReport {
    /// The daemon's pid, the task's pid and the daemon's instance of a
    /// started task, whichever way it was reported.
    pub fn started(&self) -> Option<(i32, i32, Instance)> {
        match self {
            StartReport::Started {
                daemon_pid,
                task_pid,
                instance,
            } => Some((*daemon_pid, *task_pid, *instance)),
            StartReport::StartedWithConnection(w) => Some((w.daemon_pid, w.task_pid, w.instance)),
            StartReport::Failed { .. } => None,
        }
    }
}

/// Opens every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The task's secret token.
    pub token: Token,
}

/// What a client may ask once welcomed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Answered by [`Response::Status`].
    Status,
    /// Answered by [`Response::Ok`]; [`Response::Exited`] follows when the task ends.
    Wait,
    /// Send a signal to the task's main process.
    Signal(i32),
    /// Send `signal`, wait up to `grace_ms`, then SIGKILL everything of the task.
    Stop {
        /// The first signal.
        signal: i32,
        /// Milliseconds between it and SIGKILL.
        grace_ms: u64,
    },
    /// cgroup memory and cpu use.
    Stats,
    /// The agent has recorded the exit; the daemon may leave.
    Release,
    /// Answered by [`Response::StatsV2`]: every figure of the task's cgroup.
    StatsV2,
    /// Run a command in the task's isolation. The frame carries the
    /// command's stdin, stdout and stderr as SCM_RIGHTS, in that order.
    /// Answered by [`Response::Ok`] once it runs, then
    /// [`Response::ExecExited`] when it ends. A daemon that predates it
    /// cannot decode it and answers [`Response::Error`].
    Exec(ExecRequest),
    /// Run the task's process, held before its execve since the start (a
    /// config with [`TaskStart::OnRequest`](crate::config::TaskStart)).
    /// Answered by [`Response::Ok`] once it has exec'd, or
    /// [`Response::Error`] (the task is not held, or its exec failed). A
    /// daemon that predates it cannot decode it and answers
    /// [`Response::Error`].
    Start,
}

/// What [`Request::Exec`] runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command and its arguments; a bare name is looked up in the task's PATH.
    pub argv: Vec<String>,
    /// Whether the stdio fds are a terminal the caller set up.
    pub tty: bool,
}

/// Where the task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Its main process lives.
    Running,
    /// A Stop is under way.
    Stopping,
    /// It has ended; the exit is recorded.
    Exited,
    /// Held before its execve until a [`Request::Start`]; only a config with
    /// [`TaskStart::OnRequest`](crate::config::TaskStart) gets here.
    Created,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// State of the task.
    pub state: TaskState,
    /// Pid of the task's main process.
    pub task_pid: i32,
    /// Pid of the daemon.
    pub daemon_pid: i32,
    /// Which run of the task this daemon supervises.
    pub run: u32,
    /// When the task started (RFC 3339).
    pub started_at: String,
    /// The exit, once there is one (its OOM kill count comes only with
    /// [`Response::ExitedWithOomKills`]).
    pub exit: Option<ExitStatusV1>,
}

/// Answer to [`Request::Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory in use by the task's cgroup, bytes; None without a cgroup.
    pub memory_bytes: Option<u64>,
    /// Peak memory of the cgroup, bytes, where the kernel keeps it.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time used by the cgroup, microseconds.
    pub cpu_usage_us: Option<u64>,
    /// Processes in the cgroup.
    pub pids: Option<u64>,
}

/// Answer to [`Request::StatsV2`]: what the task's cgroup files say, each
/// read once when asked. A figure the host does not offer is None (no
/// cgroup at all: every one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// 1 or 2 for the hierarchy the figures come from; None without a cgroup.
    pub cgroup_version: Option<u8>,
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Memory use and limit.
    pub memory: MemoryStats,
    /// Processes in the cgroup (pids.current).
    pub pids: Option<u64>,
    /// Bytes read from and written to block devices.
    pub io: IoStats,
    /// Pressure stall information (v2 only).
    pub psi: PsiStats,
}

/// CPU figures of a cgroup, microseconds unless said otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// All CPU time (v2 cpu.stat usage_usec, v1 cpuacct.usage).
    pub usage_us: Option<u64>,
    /// Time in user mode (v2 user_usec, v1 cpuacct.stat user).
    pub user_us: Option<u64>,
    /// Time in the kernel (v2 system_usec, v1 cpuacct.stat system).
    pub system_us: Option<u64>,
    /// Enforcement periods that have passed (cpu.stat nr_periods).
    pub periods: Option<u64>,
    /// Periods in which the cgroup was throttled (cpu.stat nr_throttled).
    pub throttled_periods: Option<u64>,
    /// Time spent throttled (v2 throttled_usec, v1 throttled_time / 1000).
    pub throttled_us: Option<u64>,
}

/// Memory figures of a cgroup, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// In use now (v2 memory.current, v1 memory.usage_in_bytes).
    pub current: Option<u64>,
    /// Highest use seen (v2 memory.peak, v1 memory.max_usage_in_bytes).
    pub peak: Option<u64>,
    /// The limit; None when there is none (v2 memory.max, v1 memory.limit_in_bytes).
    pub limit: Option<u64>,
    /// Anonymous memory (memory.stat anon, v1 total_rss).
    pub anon: Option<u64>,
    /// Page cache (memory.stat file, v1 total_cache).
    pub file: Option<u64>,
    /// Swap in use (v2 memory.swap.current, v1 total_swap of memory.stat).
    pub swap: Option<u64>,
}

/// Block I/O of a cgroup, bytes, summed over devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStats {
    /// Read (v2 io.stat rbytes, v1 blkio.throttle.io_service_bytes Read).
    pub read_bytes: Option<u64>,
    /// Written (v2 io.stat wbytes, v1 blkio.throttle.io_service_bytes Write).
    pub write_bytes: Option<u64>,
}

/// Pressure of each resource (cpu.pressure, memory.pressure, io.pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsiStats {
    /// cpu.pressure.
    pub cpu: Option<Pressure>,
    /// memory.pressure.
    pub memory: Option<Pressure>,
    /// io.pressure.
    pub io: Option<Pressure>,
}

/// One pressure file: its `some` line and, where the kernel writes one, `full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    /// Some task stalled.
    pub some: PressureLine,
    /// Every task stalled.
    pub full: Option<PressureLine>,
}

/// One line of a pressure file. The averages are in hundredths of a percent,
/// as exact as the kernel prints them ("avg10=1.25" is 125).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressureLine {
    /// Share of the last 10 s, hundredths of a percent.
    pub avg10: u32,
    /// Share of the last 60 s, hundredths of a percent.
    pub avg60: u32,
    /// Share of the last 300 s, hundredths of a percent.
    pub avg300: u32,
    /// Stalled time in all, microseconds.
    pub total_us: u64,
}

/// The daemon's answer to the client's [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the daemon speaks.
    pub version: u16,
    /// The daemon's instance id, to check against the agent's handle.
    pub instance: Instance,
    /// Pid of the daemon.
    pub daemon_pid: i32,
    /// Pid of the task.
    pub task_pid: i32,
}

/// Everything the daemon sends on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to a good [`Hello`].
    Welcome(Welcome),
    /// Answer to [`Request::Status`].
    Status(Status),
    /// A request was accepted.
    Ok,
    /// Answer to [`Request::Stats`].
    Stats(Stats),
    /// Pushed after a [`Request::Wait`] by a daemon that predates
    /// [`Response::ExitedWithOomKills`]: the task has ended.
    Exited(ExitStatusV1),
    /// The request or the connection was refused; a fatal one is followed by close.
    Error(String),
    /// Pushed after a [`Request::Wait`]: the task has ended, and the kernel's
    /// OOM killer killed `oom_kills` processes in its cgroup during the run.
    ExitedWithOomKills {
        /// The exit.
        exit: ExitStatusV1,
        /// [`crate::ExitStatus::oom_kills`].
        oom_kills: u64,
    },
    /// Answer to [`Request::StatsV2`].
    StatsV2(Box<CgroupStats>),
    /// Pushed after a [`Request::Exec`] once its command has ended: its exit
    /// code, 128+N for a death by signal N.
    ExecExited(i32),
}

impl Response {
    /// The exit of an [`Response::Exited`] or [`Response::ExitedWithOomKills`]
    /// event, whole; any other response comes back as the error.
    pub fn into_exit(self) -> Result<crate::ExitStatus, Box<Response>> {
        match self {
            Response::Exited(exit) => Ok(exit.with_oom_kills(0)),
            Response::ExitedWithOomKills { exit, oom_kills } => Ok(exit.with_oom_kills(oom_kills)),
            other => Err(Box::new(other)),
        }
    }

    /// The event that carries `exit` whole to a waiting client.
    pub fn exited(exit: &crate::ExitStatus) -> Response {
        Response::ExitedWithOomKills {
            exit: exit.into(),
            oom_kills: exit.oom_kills,
        }
    }
}

//! Telling one process from another that later got the same pid: a pid is only
//! trusted together with its start time (/proc/PID/stat field 22), and acted on
//! through a pidfd opened and then checked against that start time, so a signal
//! never reaches an unrelated process that inherited the number.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, PidfdFlags, Signal};

/// A process as the agent remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    /// The pid.
    pub pid: i32,
    /// Its start time, clock ticks after boot.
    pub start_time: u64,
}

/// The start time of `pid`, None when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a /proc/PID/stat line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is the first; start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Field 5 (the process group) of a /proc/PID/stat line.
pub fn parse_pgrp(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(5 - 3)?.parse().ok()
}

fn pgrp_of(pid: i32) -> Option<i32> {
    parse_pgrp(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process whose process group is `pgid`, as /proc lists them now.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pgrp_of(*pid) == Some(pgid))
        .collect()
}

/// Whether the process of `pidfd` has exited (the pidfd is readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    !matches!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
        Ok(0)
    )
}

/// Whether the process is a zombie or gone (field 3 is 'Z' or 'X').
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string))
            .is_none_or(|s| s == "Z" || s == "X"),
        Err(_) => true,
    }
}

impl ProcId {
    /// The process `pid` as it is now.
    pub fn of(pid: i32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// A pidfd of this very process, or None when the pid is gone or now belongs
    /// to another process. The start time is checked after the pidfd is open: the
    /// pidfd pins the process, so the check cannot race a reuse.
    pub fn open(&self) -> Option<OwnedFd> {
        let pid = Pid::from_raw(self.pid)?;
        let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()?;
        (start_time(self.pid) == Some(self.start_time)).then_some(fd)
    }

    /// Whether this very process is still alive (not a zombie).
    pub fn alive(&self) -> bool {
        self.open().is_some() && !is_dead(self.pid)
    }

    /// SIGKILL the other members of the process group this process leads
    /// (tend-spawn makes each task a group leader), each through a pidfd,
    /// never `killpg` of a bare pid. Each member's pidfd is opened first; it
    /// is signalled only if it is then still in the group and the leader,
    /// held by its own pidfd, has not exited, so no other group can have taken
    /// the number. Members of a group whose leader is gone are left to the
    /// cgroup and the environment sweep. Returns how many were signalled.
    pub fn kill_group(&self) -> usize {
        self.kill_group_listed(&group_members)
    }

    fn kill_group_listed(&self, members: &dyn Fn(i32) -> Vec<i32>) -> usize {
        let Some(leader) = self.open() else {
            return 0;
        };
        let mut killed = 0;
        for pid in members(self.pid) {
            let Some(p) = Pid::from_raw(pid).filter(|_| pid != self.pid) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(p, PidfdFlags::empty()) else {
                continue;
            };
            if pgrp_of(pid) != Some(self.pid) || exited(&leader) {
                continue;
            }
            if rustix::process::pidfd_send_signal(&fd, Signal::KILL).is_ok() {
                killed += 1;
            }
        }
        killed
    }

    /// Send `signo` to this very process; false when it is gone or not it.
    pub fn signal(&self, signo: i32) -> bool {
        let Some(fd) = self.open() else {
            return false;
        };
        let Some(sig) = Signal::from_named_raw(signo) else {
            return false;
        };
        rustix::process::pidfd_send_signal(&fd, sig).is_ok()
    }
}

/// What may be left of a run whose supervisor is lost: its daemon, its task and
/// its cgroup, each identified so that only the very processes are touched.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// The daemon, by pid and start time.
    pub daemon: Option<ProcId>,
    /// The task's main process, by pid and start time.
    pub task: Option<ProcId>,
    /// The task's cgroup, relative to each hierarchy's root.
    pub cgroup: Option<String>,
    /// The run's `(alloc_id, task)`: every process whose environment carries
    /// `TEND_ALLOC_ID` and `TEND_TASK_NAME` of it is the run's. For a run whose
    /// tend-spawn died before its start report, nothing else names the task.
    pub env: Option<(String, String)>,
    /// The run's tend-spawn socket: removed once nothing can be listening on
    /// it (see [`remove_dead_socket`]).
    pub socket: Option<std::path::PathBuf>,
}

/// Every process (but this one) whose environment holds `TEND_ALLOC_ID=alloc_id`
/// and `TEND_TASK_NAME=task`, as it is now. Every task of the agent has both
/// from its start (see `taskenv`), and so have its children unless they drop
/// them; no other process has them.
pub fn processes_of_task(alloc_id: &str, task: &str) -> Vec<ProcId> {
    let id = format!("TEND_ALLOC_ID={alloc_id}");
    let name = format!("TEND_TASK_NAME={task}");
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pid.unsigned_abs() != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let mut vars = env.split(|b| *b == 0);
                let (mut has_id, mut has_name) = (false, false);
                for v in &mut vars {
                    has_id |= v == id.as_bytes();
                    has_name |= v == name.as_bytes();
                }
                has_id && has_name
            })
        })
        .filter_map(ProcId::of)
        .collect()
}

impl Leftovers {
    /// SIGKILL the daemon if it still is ours, the task's process group if the
    /// task still is ours (tend-spawn makes it a group leader), and everything in
    /// its cgroup, which is then removed (by root; a non-root agent in setuid
    /// mode only kills, and says so); then the dead daemon's socket file goes.
    /// Returns what could not be done, one line each, for the caller to report.
    pub fn kill(&self) -> Vec<String> {
        let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
        let mut problems = Vec::new();
        if let Some(daemon) = &self.daemon {
            daemon.signal(sigkill);
        }
        if let Some(task) = &self.task {
            // Its group first: a member is trusted only while the leader lives.
            task.kill_group();
            task.signal(sigkill);
        }
        if let Some((alloc_id, task)) = &self.env {
            // A task may fork while it is being killed: sweep until none is left.
            for _ in 0..10 {
                let found = processes_of_task(alloc_id, task);
                if found.is_empty() {
                    break;
                }
                for p in found {
                    p.signal(sigkill);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        if let Some(path) = &self.cgroup {
            match tend_cgroup::Hierarchies::detect()
                .and_then(|h| tend_cgroup::TaskCgroup::open(&h, path))
            {
                Ok(cg) => {
                    // Gone already: the setuid cleanup helper got there first.
                    let gone = |cg: &tend_cgroup::TaskCgroup| cg.dirs().all(|d| !d.exists());
                    if let Err(e) = cg.kill_all() {
                        if !gone(&cg) {
                            problems
                                .push(format!("cannot kill what is left in cgroup {path}: {e}"));
                        }
                    }
                    if nix::unistd::geteuid().is_root() {
                        if let Err(e) = cg.remove() {
                            problems.push(format!("cannot remove cgroup {path}: {e}"));
                        }
                    } else if !gone(&cg) {
                        // Setuid mode: the agent, the caller, cannot rmdir below
                        // the root-owned parent; what it can do is kill through
                        // the cgroup.kill (or freezer.state) tend-spawn chowned
                        // to it, done above. The dirs are the root cleanup
                        // helper's to remove, when the daemon's pipe closes.
                        problems.push(format!(
                            "killed what was left in cgroup {path} through its cgroup.kill; \
                             as a non-root agent it cannot remove the cgroup: tend-spawn's \
                             root cleanup helper does"
                        ));
                    }
                }
                Err(e) => problems.push(format!("cannot open cgroup {path}: {e}")),
            }
        }
        if let Some(socket) = &self.socket {
            if let Err(problem) = remove_dead_socket(socket, self.daemon.as_ref()) {
                problems.push(problem.to_string());
            }
        }
        problems
    }
}

/// Why the socket of a tend-spawn was left in place.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Its daemon still lives.
    #[error("tend-spawn (pid {pid}) still lives: its socket {} stays", .socket.display())]
    DaemonLives {
        /// The daemon.
        pid: i32,
        /// The socket.
        socket: PathBuf,
    },
    /// Whether something listens on it cannot be told.
    #[error("cannot check socket {}: {source}", .socket.display())]
    Check {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something still answers on it.
    #[error("socket {} still answers: it stays", .socket.display())]
    Answers {
        /// The socket.
        socket: PathBuf,
    },
    /// It cannot be removed.
    #[error("cannot remove socket {}: {source}", .socket.display())]
    Remove {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Remove the socket file of a tend-spawn that is gone, only when sure: its
/// daemon (when known) is dead, and a connect is refused (nothing listens on
/// it). A socket someone still answers on stays.
pub fn remove_dead_socket(socket: &Path, daemon: Option<&ProcId>) -> Result<(), SocketError> {
    // A SIGKILLed daemon is gone within moments; one that is not stays ours.
    for _ in 0..100 {
        if !daemon.is_some_and(ProcId::alive) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if daemon.is_some_and(ProcId::alive) {
        return Err(SocketError::DaemonLives {
            pid: daemon.map_or(0, |d| d.pid),
            socket: socket.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Check {
                socket: socket.to_path_buf(),
                source,
            })
        }
        Ok(_) => {
            return Err(SocketError::Answers {
                socket: socket.to_path_buf(),
            })
        }
    }
    match std::fs::remove_file(socket) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Remove {
            socket: socket.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "123 (a) b (c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn a_reused_pid_is_not_trusted() {
        let me = ProcId::of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.open().is_some());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(other.open().is_none());
        assert!(!other.signal(0));
    }

    #[test]
    fn a_task_is_found_by_its_environment() {
        let id = format!("ident-test-{}", std::process::id());
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .env("TEND_ALLOC_ID", &id)
            .env("TEND_TASK_NAME", "t")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Until the child has exec'd, its environ is still the parent's.
        let mut found = Vec::new();
        for _ in 0..500 {
            found = processes_of_task(&id, "t");
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), [pid]);
        assert!(processes_of_task(&id, "u").is_empty());
        let left = Leftovers {
            env: Some((id.clone(), "t".into())),
            ..Default::default()
        };
        assert!(left.kill().is_empty());
        child.wait().unwrap();
        assert!(processes_of_task(&id, "t").is_empty());
    }

    fn needs_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root, and CI=true: a skipped test proves nothing"
        );
        println!("skipped: needs root");
        false
    }

    fn group_leader(script: &str) -> (std::process::Child, ProcId) {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .env_clear()
            .process_group(0)
            .spawn()
            .unwrap();
        let id = ProcId::of(i32::try_from(child.id()).unwrap()).unwrap();
        (child, id)
    }

    #[test]
    fn the_members_of_a_live_leaders_group_are_killed_through_pidfds() {
        let (mut leader, id) = group_leader("/bin/sleep 30 & /bin/sleep 30 & exec /bin/sleep 30");
        let mut members = Vec::new();
        for _ in 0..500 {
            members = group_members(id.pid);
            if members.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(members.len(), 3, "{members:?}");
        assert_eq!(id.kill_group(), 2);
        // The leader is not among them: it is signalled on its own.
        assert!(id.alive());
        assert!(id.signal(9));
        leader.wait().unwrap();
        let gone = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            group_members(id.pid).is_empty()
        });
        assert!(gone, "{:?}", group_members(id.pid));
    }

    #[test]
    fn a_group_whose_leader_died_and_whose_number_was_reused_is_not_killed() {
        if !needs_root() {
            return;
        }
        // The leader is checked, then dies and is reaped, and a new process
        // takes its pid and leads a group of that number with a child in it:
        // killpg of the remembered pid would kill both. Made so with
        // ns_last_pid, which other processes forking meanwhile may beat:
        // tried a few times.
        let mut reused = None;
        for _ in 0..20 {
            let (leader, id) = group_leader("exec /bin/sleep 30");
            let leader = std::cell::RefCell::new(leader);
            let victim = std::cell::RefCell::new(None);
            let list = |pgid: i32| {
                let mut l = leader.borrow_mut();
                l.kill().unwrap();
                l.wait().unwrap();
                std::fs::write("/proc/sys/kernel/ns_last_pid", (pgid - 1).to_string()).unwrap();
                let (v, _) = group_leader("/bin/sleep 30 & wait");
                let vpid = i32::try_from(v.id()).unwrap();
                *victim.borrow_mut() = Some(v);
                let mut members = Vec::new();
                for _ in 0..500 {
                    members = group_members(vpid);
                    if members.len() == 2 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                members
            };
            let killed = id.kill_group_listed(&list);
            let mut v = victim.into_inner().unwrap();
            let vpid = i32::try_from(v.id()).unwrap();
            let same = vpid == id.pid;
            let alive = group_members(vpid).len() == 2;
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(vpid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = v.wait();
            if same {
                reused = Some((killed, alive));
                break;
            }
        }
        let (killed, alive) = reused.expect("the pid was never reused in 20 tries");
        assert_eq!(killed, 0);
        assert!(
            alive,
            "the group that reused the leader's number was killed"
        );
    }

    #[test]
    fn an_ended_process_is_not_alive() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcId::of(i32::try_from(child.id()).unwrap()).unwrap();
        assert!(id.alive());
        assert!(id.signal(9));
        child.wait().unwrap();
        assert!(!id.alive());
        assert!(!id.signal(0));
    }
}

//! Reaping and killing: the daemon is a child subreaper, so every process the task
//! leaves behind ends up as its child and is reaped here; and when the task ends,
//! everything left of it is killed, each process through a pidfd checked to
//! hold a descendant (never a bare pid read from /proc, which may be reused).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::sys;

/// One reaped child: its pid and raw wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// The pid.
    pub pid: Pid,
    /// The raw wait(2) status.
    pub status: i32,
}

/// Reap every child that has ended, without blocking.
pub fn reap_all() -> Vec<Reaped> {
    let mut out = Vec::new();
    while let Ok(Some((pid, status))) = sys::wait_nohang(Pid::from_raw(-1)) {
        out.push(Reaped { pid, status });
    }
    out
}

/// Parse the space-separated pid list of a `/proc/<pid>/task/<tid>/children` file.
pub fn parse_children(text: &str) -> impl Iterator<Item = Pid> + '_ {
    text.split_ascii_whitespace()
        .filter_map(|s| s.parse::<i32>().ok())
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
}

/// The children of `pid` now: its `/proc/<pid>/task/*/children` lists, or
/// the ppid of every process where the kernel lacks them.
fn children_now(pid: Pid) -> Vec<Pid> {
    let from_lists = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .and_then(|tasks| {
            let mut out = Vec::new();
            let mut any = false;
            for t in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                    any = true;
                    out.extend(parse_children(&text));
                }
            }
            any.then_some(out)
        });
    from_lists.unwrap_or_else(|| {
        scan_ppids()
            .into_iter()
            .filter(|(_, pp)| *pp == pid)
            .map(|(c, _)| c)
            .collect()
    })
}

/// Parse the ppid out of a `/proc/<pid>/stat` line (the comm may hold spaces).
pub fn parse_stat_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut it = after.split_ascii_whitespace();
    let _state = it.next()?;
    it.next()?.parse().ok()
}

fn ppid_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ppid(&stat).map(Pid::from_raw)
}

fn scan_ppids() -> Vec<(Pid, Pid)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            Some((Pid::from_raw(pid), ppid_of(Pid::from_raw(pid))?))
        })
        .collect()
}

/// Whether the process of `pidfd` has exited (its pidfd is readable).
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// A descendant of this process, held by a pidfd: a signal sent through it
/// reaches that very process or none, never one that got its pid later.
#[derive(Debug)]
pub struct Descendant {
    /// Its pid when it was found.
    pub pid: Pid,
    pidfd: OwnedFd,
}

impl Descendant {
    /// Send `signo` through the pidfd.
    pub fn signal(&self, signo: i32) -> std::io::Result<()> {
        sys::pidfd_send_signal(self.pidfd.as_fd(), signo)
    }
}

/// Every descendant of this process but `spare`, each held by a pidfd.
///
/// A pid read from /proc may be reused before it is acted on, so each one is
/// checked after its pidfd is open: its ppid must then be the parent it was
/// listed under, and that parent (a child of this process, or a descendant
/// already held) must not have exited, so the ppid still names it. A pid
/// that fails either check is left alone: a process that really is a
/// descendant is found again on the next round (an orphan comes back to this
/// process, the subreaper).
pub fn descendants(spare: Option<Pid>) -> Vec<Descendant> {
    descendants_from(nix::unistd::getpid(), spare, &children_now)
}

fn descendants_from(
    root: Pid,
    spare: Option<Pid>,
    children: &dyn Fn(Pid) -> Vec<Pid>,
) -> Vec<Descendant> {
    let mut out: Vec<Descendant> = Vec::new();
    // A parent to list, and where its own pidfd is in `out` (None: `root`).
    let mut todo: Vec<(Pid, Option<usize>)> = vec![(root, None)];
    while let Some((parent, held)) = todo.pop() {
        for pid in children(parent) {
            if pid == root || Some(pid) == spare || out.iter().any(|d| d.pid == pid) {
                continue;
            }
            let Ok(pidfd) = sys::pidfd_open(pid) else {
                continue;
            };
            if ppid_of(pid) != Some(parent) {
                continue;
            }
            if held.is_some_and(|i| exited(out[i].pidfd.as_fd())) {
                continue;
            }
            out.push(Descendant { pid, pidfd });
            todo.push((pid, Some(out.len() - 1)));
        }
    }
    out
}

/// One round: SIGKILL every descendant of the daemon but `spare` (setuid
/// mode's cleanup helper), each through its pidfd ([`descendants`]), without
/// waiting. Returns how many there were (the poll loop comes back until none
/// is left).
pub fn sigkill_descendants(spare: Option<Pid>) -> usize {
    let found = descendants(spare);
    for d in &found {
        let _ = d.signal(libc::SIGKILL);
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_children_lists() {
        let v: Vec<_> = parse_children("12 345 \n").collect();
        assert_eq!(v, vec![Pid::from_raw(12), Pid::from_raw(345)]);
        assert_eq!(parse_children("").count(), 0);
    }

    fn spawn(args: &[&str]) -> std::process::Child {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .spawn()
            .unwrap()
    }

    fn pid_of(c: &std::process::Child) -> Pid {
        Pid::from_raw(i32::try_from(c.id()).unwrap())
    }

    #[test]
    fn a_listed_pid_that_is_not_a_child_of_its_parent_is_not_held_nor_signalled() {
        // The listing says: a child of ours, and a pid that is another
        // process's (this test's parent, as a pid reused by an unrelated
        // process would be). Only the child is held.
        let mut child = spawn(&["/bin/sleep", "30"]);
        let me = nix::unistd::getpid();
        let stranger = nix::unistd::getppid();
        let list = |p: Pid| {
            if p == me {
                vec![pid_of(&child), stranger]
            } else {
                Vec::new()
            }
        };
        let found = descendants_from(me, None, &list);
        let pids: Vec<Pid> = found.iter().map(|d| d.pid).collect();
        assert_eq!(pids, [pid_of(&child)]);
        found[0].signal(libc::SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(found[0].signal(0).is_err(), "signal through a dead pidfd");
    }

    #[test]
    fn every_descendant_is_found_and_killed_through_its_pidfd_but_the_spared_one() {
        let mut spared = spawn(&["/bin/sleep", "30"]);
        let mut sh = spawn(&["/bin/sh", "-c", "/bin/sleep 30 & wait"]);
        let sh_pid = pid_of(&sh);
        // Until the shell has forked, its child is not there to find.
        let mut found = Vec::new();
        for _ in 0..500 {
            found = descendants(Some(pid_of(&spared)));
            if found.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|d| d.pid == sh_pid));
        let grandchild = found.iter().find(|d| d.pid != sh_pid).unwrap();
        assert_eq!(ppid_of(grandchild.pid), Some(sh_pid));
        assert_eq!(sigkill_descendants(Some(pid_of(&spared))), 2);
        sh.wait().unwrap();
        assert!(
            (0..500).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                exited(grandchild.pidfd.as_fd())
            }),
            "the grandchild lives on"
        );
        assert!(
            spared.try_wait().unwrap().is_none(),
            "the spared one was killed"
        );
        spared.kill().unwrap();
        spared.wait().unwrap();
    }

    #[test]
    fn parses_ppid_past_odd_names() {
        assert_eq!(parse_stat_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }
}

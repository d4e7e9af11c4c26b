//! Reaping and killing: the daemon is a child subreaper, so every process the task
//! leaves behind ends up as its child and is reaped here; and when the task ends,
//! everything left of it is killed.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

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

fn children_of(pid: Pid) -> Option<Vec<Pid>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    let mut any = false;
    for t in tasks.flatten() {
        let path = t.path().join("children");
        if let Ok(text) = std::fs::read_to_string(&path) {
            any = true;
            out.extend(parse_children(&text));
        }
    }
    any.then_some(out)
}

/// Parse the ppid out of a `/proc/<pid>/stat` line (the comm may hold spaces).
pub fn parse_stat_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut it = after.split_ascii_whitespace();
    let _state = it.next()?;
    it.next()?.parse().ok()
}

/// Every descendant of `root`, found from /proc (children files, or the ppid of
/// every process where the kernel lacks them).
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    let mut by_scan: Option<Vec<(Pid, Pid)>> = None;
    while let Some(p) = todo.pop() {
        let kids = match children_of(p) {
            Some(k) => k,
            None => {
                let all = by_scan.get_or_insert_with(scan_ppids);
                all.iter()
                    .filter(|(_, pp)| *pp == p)
                    .map(|(c, _)| *c)
                    .collect()
            }
        };
        for k in kids {
            if seen.insert(k) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

fn scan_ppids() -> Vec<(Pid, Pid)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((Pid::from_raw(pid), Pid::from_raw(parse_stat_ppid(&stat)?)))
        })
        .collect()
}

/// SIGKILL through pidfds each of `pids` that is still a descendant of the
/// daemon once its pidfd is open, never a bare pid: a pid that ended and was
/// reused by a stranger between the listing and the pidfd is not one of them
/// on the second look, and a pidfd open before the second look names the
/// process that look saw. Returns how many were signalled.
fn sigkill_still_descendants(me: Pid, pids: &[Pid]) -> usize {
    let opened: Vec<(Pid, std::os::fd::OwnedFd)> = pids
        .iter()
        .filter_map(|p| sys::pidfd_open(*p).ok().map(|fd| (*p, fd)))
        .collect();
    if opened.is_empty() {
        return 0;
    }
    let still: HashSet<Pid> = descendants(me).into_iter().collect();
    opened
        .iter()
        .filter(|(p, _)| still.contains(p))
        .filter(|(_, fd)| sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL).is_ok())
        .count()
}

/// One round: SIGKILL every descendant of the daemon but `spare` (setuid
/// mode's cleanup helper), without waiting. Returns how many there were (the
/// poll loop comes back until none is left).
pub fn sigkill_descendants(spare: Option<Pid>) -> usize {
    let me = nix::unistd::getpid();
    let mut left = descendants(me);
    left.retain(|p| Some(*p) != spare);
    sigkill_still_descendants(me, &left);
    left.len()
}

/// SIGKILL every descendant of the daemon, reaping as they die, until none is
/// left or `limit` passes. Returns what was reaped meanwhile (the task's main
/// process may be among it).
pub fn kill_descendants(limit: Duration) -> Vec<Reaped> {
    let me = nix::unistd::getpid();
    let deadline = Instant::now() + limit;
    let mut reaped = Vec::new();
    loop {
        reaped.extend(reap_all());
        let left = descendants(me);
        if left.is_empty() || Instant::now() >= deadline {
            return reaped;
        }
        sigkill_still_descendants(me, &left);
        std::thread::sleep(Duration::from_millis(2));
    }
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

    #[test]
    fn parses_ppid_past_odd_names() {
        assert_eq!(parse_stat_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }
}

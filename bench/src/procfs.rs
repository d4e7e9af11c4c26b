//! What /proc says about a process: memory, CPU time, liveness; and reaping.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Memory of one process from `/proc/PID/smaps_rollup`, kB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    /// Resident set.
    pub rss_kb: f64,
    /// Proportional set (shared pages divided among their users).
    pub pss_kb: f64,
    /// Unique set: Private_Clean + Private_Dirty.
    pub uss_kb: f64,
}

/// Read the footprint of `pid`.
pub fn footprint(pid: i32) -> Result<Footprint, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let mut f = Footprint::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = val.parse::<f64>() else { continue };
        match key {
            "Rss:" => f.rss_kb = v,
            "Pss:" => f.pss_kb = v,
            "Private_Clean:" | "Private_Dirty:" => f.uss_kb += v,
            _ => {}
        }
    }
    Ok(f)
}

/// user + system CPU seconds of `pid` itself (not its children).
pub fn cpu_seconds(pid: i32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let s = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let rest = s.rfind(')').map(|i| &s[i + 1..]).ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let ticks: f64 = [11usize, 12]
        .iter()
        .map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    Ok(ticks / hz as f64)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
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

/// Wait for `pid` to end, reaping it when it is (or becomes) our child: the
/// harness is a subreaper, so daemons that double-forked end up here.
pub fn reap(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        match waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            Err(Errno::ECHILD) => {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return true;
                }
            }
            Err(_) => return false,
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_micros(500));
    }
}

/// Reap every exited child without blocking (daemons of the agent's tasks).
pub fn reap_zombies() {
    while let Ok(st) = waitpid(
        Pid::from_raw(-1),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    ) {
        if st == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// Pids of processes (not this one) whose cwd, root or an open fd lies under `dir`.
pub fn pids_using(dir: &Path) -> Vec<i32> {
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
        let inside = |p: &Path| p.starts_with(dir);
        let mut hit = ["cwd", "root"]
            .iter()
            .any(|l| fs::read_link(base.join(l)).is_ok_and(|p| inside(&p) && p != Path::new("/")));
        if !hit {
            if let Ok(fds) = fs::read_dir(base.join("fd")) {
                hit = fds
                    .flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| inside(&p)));
            }
        }
        if hit && alive(pid) {
            out.push(pid);
        }
    }
    out
}

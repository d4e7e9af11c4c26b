//! Killing everything in a task's cgroup: `cgroup.kill` where the kernel has
//! it, else freeze, SIGKILL each member through a pidfd, thaw, repeat.

use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::{getpid, Pid};

use crate::fs::{read_file, write_file};
use crate::{CgroupError, Controller, Mode, Result, TaskCgroup, FREEZE_PATIENCE, KILL_PATIENCE};

impl TaskCgroup {
    /// Kill every process in the cgroup and wait until none is left.
    ///
    /// With `cgroup.kill` (v2, and hybrid through the v2 tree) the kernel does
    /// it in one write. Otherwise: freeze, so nothing forks between reading
    /// `cgroup.procs` and the kills; SIGKILL each; thaw, so the kills land;
    /// repeat until the cgroup is empty, for a bounded time.
    pub fn kill_all(&self) -> Result<()> {
        self.kill_all_with(true)
    }

    /// One round of [`TaskCgroup::kill_all`], without waiting for the processes
    /// to be gone: `cgroup.kill` where there is one (the kernel signals every
    /// member before the write returns and refuses forks meanwhile), else
    /// freeze, SIGKILL each, thaw (a freeze waits at most 1 s). Returns whether
    /// any process was in the cgroup.
    pub fn kill_once(&self) -> Result<bool> {
        let pids = self.pids()?;
        if pids.is_empty() {
            return Ok(false);
        }
        let me = getpid();
        if pids.contains(&me) {
            return Err(CgroupError::HoldsSelf {
                path: self.first_dir(),
                pid: me,
            });
        }
        match self
            .unified
            .as_ref()
            .map(|d| d.join("cgroup.kill"))
            .filter(|f| f.is_file())
        {
            Some(f) => write_file(&f, "1")?,
            None => self.freeze_kill_thaw()?,
        }
        Ok(true)
    }

    pub(crate) fn kill_all_with(&self, use_cgroup_kill: bool) -> Result<()> {
        let me = getpid();
        let kill_file = self
            .unified
            .as_ref()
            .map(|d| d.join("cgroup.kill"))
            .filter(|f| use_cgroup_kill && f.is_file());
        let deadline = Instant::now() + KILL_PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if pids.contains(&me) {
                return Err(CgroupError::HoldsSelf {
                    path: self.first_dir(),
                    pid: me,
                });
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout {
                    path: self.first_dir(),
                    pids,
                });
            }
            match &kill_file {
                Some(f) => write_file(f, "1")?,
                None => self.freeze_kill_thaw()?,
            }
            sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub(crate) fn first_dir(&self) -> PathBuf {
        self.dirs()
            .next()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    pub(crate) fn freeze_kill_thaw(&self) -> Result<()> {
        self.set_frozen(true)?;
        let killed = self.sigkill_members();
        // Thaw even when a kill failed: a frozen task must not stay behind.
        let thawed = self.set_frozen(false);
        killed.and(thawed)
    }

    /// SIGKILL each process listed in the cgroup through a pidfd, never by
    /// its bare pid: each pidfd is opened first, then the list is read again,
    /// and only a pid still listed is signalled. A pid reused since the first
    /// read by a process outside the cgroup is not listed the second time; if
    /// the process the pidfd holds died meanwhile, the signal goes nowhere.
    pub(crate) fn sigkill_members(&self) -> Result<()> {
        let held: Vec<(Pid, std::os::fd::OwnedFd)> = self
            .pids()?
            .into_iter()
            .filter_map(|pid| tend_sys::pidfd_open(pid).ok().map(|fd| (pid, fd)))
            .collect();
        let listed = self.pids()?;
        for (pid, fd) in held.iter().filter(|(p, _)| listed.contains(p)) {
            match tend_sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(fd), libc::SIGKILL) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(CgroupError::Kill {
                        pid: *pid,
                        source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    })
                }
            }
        }
        Ok(())
    }

    /// Freeze or thaw, waiting (bounded) for a freeze to complete. Without a
    /// freezer this does nothing: the kill loop still gets there, only with
    /// more rounds when the task forks.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<()> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, &str) = match self.mode {
            Mode::V2 => {
                let Some(dir) = &self.unified else {
                    return Ok(());
                };
                (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    dir.join("cgroup.events"),
                    "frozen 1",
                )
            }
            Mode::V1 | Mode::Hybrid => {
                let Some(dir) = self.dir_of(Controller::Freezer) else {
                    return Ok(());
                };
                let state = dir.join("freezer.state");
                (
                    state.clone(),
                    if frozen { "FROZEN" } else { "THAWED" },
                    state,
                    "FROZEN",
                )
            }
        };
        if !file.is_file() {
            return Ok(());
        }
        write_file(&file, value)?;
        if !frozen {
            return Ok(());
        }
        let deadline = Instant::now() + FREEZE_PATIENCE;
        loop {
            let text = read_file(&state_file)?;
            if text.lines().any(|l| l.trim() == done) || Instant::now() >= deadline {
                // Not frozen in time: kill anyway, SIGKILL lands at the thaw.
                return Ok(());
            }
            sleep(Duration::from_millis(1));
        }
    }
}

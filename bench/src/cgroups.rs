//! The cgroup hierarchies of this host, for the bare baseline and for cleanup.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

/// One mounted hierarchy that a task's cgroup lives in.
#[derive(Debug, Clone)]
pub struct Hier {
    /// Its mount point.
    pub root: PathBuf,
    /// "memory", "cpu", "pids" on v1; "" on v2.
    pub controller: &'static str,
}

/// The hierarchies a task cgroup is made in: v1 memory, cpu, pids plus the v2
/// tree of a hybrid host, or the one v2 tree.
pub fn hierarchies() -> Vec<Hier> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![Hier {
            root: base.to_path_buf(),
            controller: "",
        }];
    }
    let mut out = Vec::new();
    for c in ["memory", "cpu", "pids"] {
        let p = base.join(c);
        if p.join("cgroup.procs").exists() {
            out.push(Hier {
                root: p,
                controller: c,
            });
        }
    }
    let u = base.join("unified");
    if u.join("cgroup.procs").exists() {
        out.push(Hier {
            root: u,
            controller: "",
        });
    }
    out
}

/// Every mounted hierarchy under /sys/fs/cgroup (v1 controllers, named ones
/// like systemd, the v2 tree): tend-spawn makes cgroups in more of them than
/// the bare baseline does (freezer, cpuacct), so cleanup walks them all.
pub fn all_hierarchies() -> Vec<Hier> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return hierarchies();
    }
    let mut out: Vec<Hier> = fs::read_dir(base)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .map(|root| Hier {
                    root,
                    controller: "",
                })
                .collect()
        })
        .unwrap_or_default();
    // Co-mounted controllers may show under two names (cpu,cpuacct): the
    // second walk finds the tree gone, which remove_tree allows.
    out.sort_by(|a, b| a.root.cmp(&b.root));
    out
}

fn write(path: &Path, v: &str) -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(v.as_bytes()))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Make `rel` in every hierarchy with the limits tend's exec driver sets
/// (memory, cpu shares, pids), and open each `cgroup.procs` for the child.
pub fn make_task_cgroup(hs: &[Hier], rel: &str) -> Result<Vec<OwnedFd>, String> {
    let mut fds = Vec::new();
    for h in hs {
        let dir = h.root.join(rel);
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        match h.controller {
            "memory" => write(&dir.join("memory.limit_in_bytes"), "268435456")?,
            "cpu" => write(&dir.join("cpu.shares"), "100")?,
            "pids" => write(&dir.join("pids.max"), "1024")?,
            _ => {}
        }
        let procs = dir.join("cgroup.procs");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| format!("open {}: {e}", procs.display()))?;
        fds.push(OwnedFd::from(f));
    }
    Ok(fds)
}

/// Remove `rel` (and everything below it) from every hierarchy, killing what
/// is left inside first.
pub fn remove_tree(hs: &[Hier], rel: &str) {
    for h in hs {
        let top = h.root.join(rel);
        if top.exists() {
            remove_dir_tree(&top);
        }
    }
}

fn remove_dir_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir_tree(&e.path());
            }
        }
    }
    for _ in 0..200 {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        crate::procfs::reap_zombies();
        sleep(Duration::from_millis(10));
    }
}

//! Everything the harness started, undone at the end and on Ctrl-C: processes,
//! cgroups, runc/crun containers, temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::Duration;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// What to undo.
#[derive(Debug, Default)]
struct Registry {
    roots: Vec<PathBuf>,
    cgroup_prefix: Option<String>,
    pids: Vec<i32>,
    containers: Vec<(PathBuf, PathBuf, String)>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    roots: Vec::new(),
    cgroup_prefix: None,
    pids: Vec::new(),
    containers: Vec::new(),
});

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REG.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g)
}

/// A temp root of the harness: every process using it is killed, then it goes.
pub fn add_root(p: &Path) {
    with(|r| r.roots.push(p.to_path_buf()));
}

/// The cgroup dir (relative, in every hierarchy) the harness made.
pub fn set_cgroup_prefix(p: &str) {
    with(|r| r.cgroup_prefix = Some(p.to_string()));
}

/// A process to SIGKILL at the end if it still runs.
pub fn add_pid(pid: i32) {
    with(|r| r.pids.push(pid));
}

/// A container to `delete -f` at the end: (runtime, state root, id).
pub fn add_container(runtime: &Path, state: &Path, id: &str) {
    with(|r| {
        r.containers
            .push((runtime.to_path_buf(), state.to_path_buf(), id.to_string()))
    });
}

/// Undo everything registered. Safe to call twice.
pub fn run() {
    let (roots, prefix, pids, containers) = with(|r| {
        (
            r.roots.clone(),
            r.cgroup_prefix.clone(),
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.containers),
        )
    });
    for pid in pids {
        if crate::procfs::alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for (rt, state, id) in containers {
        let _ = Command::new(rt)
            .arg("--root")
            .arg(&state)
            .args(["delete", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for root in &roots {
        run_processes_only(root);
    }
    if let Some(prefix) = prefix {
        crate::cgroups::remove_tree(&crate::cgroups::all_hierarchies(), &prefix);
    }
    crate::procfs::reap_zombies();
    for root in roots {
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Block SIGINT, SIGTERM and SIGHUP in this (still single) thread and its
/// future threads; one thread waits for them, cleans up and exits 130.
pub fn on_signal() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    let _ = set.thread_block();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("tend-bench: {sig:?}: cleaning up");
            run();
            std::process::exit(130);
        }
    });
}

/// Kill whatever still uses `dir` (between sections), keeping the registry.
pub fn run_processes_only(dir: &Path) {
    for _ in 0..50 {
        let pids = crate::procfs::pids_using(dir);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        crate::procfs::reap_zombies();
        sleep(Duration::from_millis(20));
    }
    crate::procfs::reap_zombies();
}

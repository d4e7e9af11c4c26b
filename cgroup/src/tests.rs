use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use tend_proto::config::{CgroupOptions, CpuQuota};

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::unistd::{getpid, Pid};
use tend_proto::config::CgroupSpec;

use super::*;
use crate::hierarchy::*;
use crate::v1::*;
use crate::v2::*;

/// Imitates the kernel's side of mkdir and rmdir in a cgroup tree: a new
/// dir gets its parent's control files (membership and subtree_control
/// start empty), rmdir refuses a cgroup with processes or children.
#[derive(Debug)]
struct FakeKernel;

impl Tree for FakeKernel {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)?;
        let parent = path.parent().expect("cgroup dir has a parent");
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let content = match name.to_str() {
                Some("cgroup.procs" | "tasks" | "cgroup.subtree_control") => String::new(),
                _ => fs::read_to_string(entry.path())?,
            };
            fs::write(path.join(name), content)?;
        }
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let busy = || io::Error::from_raw_os_error(libc::EBUSY);
        let mut files = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                return Err(busy());
            }
            files.push(entry.path());
        }
        let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return Err(busy());
        }
        for f in files {
            fs::remove_file(f)?;
        }
        fs::remove_dir(path)
    }
}

const UNLIMITED_V1: &str = "9223372036854771712\n";

fn put(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// A v1 tree as this host has it: cpu and cpuacct separate, or co-mounted.
fn fake_v1(root: &Path, comounted: bool) {
    let procs = [("cgroup.procs", ""), ("tasks", "")];
    let dirs: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "memory",
            vec![
                ("memory.limit_in_bytes", UNLIMITED_V1),
                ("memory.memsw.limit_in_bytes", UNLIMITED_V1),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                ),
                ("memory.usage_in_bytes", "0\n"),
                ("memory.max_usage_in_bytes", "0\n"),
            ],
        ),
        ("pids", vec![("pids.max", "max\n"), ("pids.current", "0\n")]),
        ("freezer", vec![("freezer.state", "THAWED\n")]),
        ("systemd", vec![]),
    ];
    for (name, files) in dirs {
        put(&root.join(name), &files);
        put(&root.join(name), &procs);
    }
    let cpu = [("cpu.shares", "1024\n")];
    let cpuacct = [("cpuacct.usage", "0\n")];
    if comounted {
        put(&root.join("cpu,cpuacct"), &cpu);
        put(&root.join("cpu,cpuacct"), &cpuacct);
        put(&root.join("cpu,cpuacct"), &procs);
    } else {
        put(&root.join("cpu"), &cpu);
        put(&root.join("cpu"), &procs);
        put(&root.join("cpuacct"), &cpuacct);
        put(&root.join("cpuacct"), &procs);
    }
}

fn fake_v2(root: &Path) {
    put(
        root,
        &[
            ("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n"),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.kill", ""),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.current", "0\n"),
            ("memory.peak", "0\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            ("cpu.weight", "100\n"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
            ("pids.max", "max\n"),
            ("pids.current", "0\n"),
        ],
    );
}

/// v1 controllers plus a cgroup2 tree with no controllers, as on this host.
fn fake_hybrid(root: &Path) {
    fake_v1(root, false);
    put(
        &root.join("unified"),
        &[
            ("cgroup.controllers", "\n"),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.kill", ""),
        ],
    );
}

fn probe_fake(root: &Path) -> Hierarchies {
    Hierarchies::probe(root).unwrap().with_tree(&FakeKernel)
}

fn spec(path: &str) -> CgroupSpec {
    CgroupSpec {
        path: path.to_string(),
        daemon_path: None,
        memory_bytes: Some(64 << 20),
        cpu_mhz: Some(500),
        pids_max: Some(64),
        options: Default::default(),
    }
}

fn mountinfo_line(id: u32, mount: &Path, fstype: &str, opts: &str) -> String {
    format!(
        "{id} 31 0:{id} / {} rw,relatime - {fstype} {fstype} {opts}\n",
        mount.display().to_string().replace(' ', "\\040")
    )
}

mod hierarchy;
mod limits;
mod real;
mod task;

//! `tend doctor`: check the install for the mode the agent runs in, and say
//! what is wrong, one line each.
//!
//! As root (the common install) it checks a root agent ([`root`]): the
//! `tend-spawn` root execs and the dirs above it, the data and run dirs, the
//! cgroup parent of the exec driver, the docker engine. The setuid install is
//! checked only where it is used: for a user who is not root (their agent
//! needs it for exec tasks), or as root with `--setuid` or when `tend-spawn`
//! carries the setuid bit (see `docs/setuid.md`).
//!
//! Checked for a setuid install: `tend-spawn` is owned by root and group `tend`, mode 4750 exactly;
//! the policy file and every dir above it are root's and not group/other
//! writable, and it parses (with tend-spawn's own parser); the policy's cgroup
//! parent exists in each hierarchy (or its parent does, so tend-spawn can make
//! it); the user running the doctor is in group `tend`. For that user (not
//! root), the agent's side too: its data and run dirs lie below the policy's
//! `data_roots` / `run_roots` and are its own, and its `cgroup_parent` is the
//! policy's (tend-spawn refuses every exec task otherwise).
//!
//! The policy checked is the one tend-spawn reads: `spawn-policy.hcl` beside
//! the binary when that exists, else `/etc/tend/spawn-policy.hcl`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tend_cgroup::{Controller, Hierarchies};
use tend_policy::Policy;

mod root;
pub use root::RootAgent;

/// The group whose members may run a setuid `tend-spawn`.
pub const GROUP: &str = "tend";

/// The mode of an installed setuid `tend-spawn`: setuid, rwx for root,
/// r-x for group `tend`, nothing for others.
pub const MODE: u32 = 0o4750;

/// What the doctor expects and where it looks; [`Expect::host`] on a real host,
/// temp dirs and the test's own uid in tests.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Where the policy's ownership walk starts (`/` on a host).
    pub anchor: PathBuf,
    /// The uid that must own tend-spawn and the policy chain (0 on a host).
    pub owner: u32,
    /// The group that must own tend-spawn.
    pub group: String,
    /// The gid of that group, when the caller already knows it (tests);
    /// None looks it up by name.
    pub gid: Option<u32>,
    /// Where cgroup hierarchies are mounted, and the mountinfo listing them.
    pub cgroup_root: PathBuf,
    /// The mountinfo file read to find the hierarchies.
    pub mountinfo: PathBuf,
    /// The groups of the user running the doctor (real gid first).
    pub user_groups: Vec<u32>,
}

impl Expect {
    /// A real host: root, group `tend`, `/sys/fs/cgroup`, this process's groups.
    pub fn host() -> Expect {
        let mut user_groups = vec![nix::unistd::getgid().as_raw()];
        if let Ok(gs) = nix::unistd::getgroups() {
            user_groups.extend(gs.into_iter().map(|g| g.as_raw()));
        }
        Expect {
            anchor: PathBuf::from("/"),
            owner: 0,
            group: GROUP.to_string(),
            gid: None,
            cgroup_root: PathBuf::from(tend_cgroup::DEFAULT_ROOT),
            mountinfo: PathBuf::from(tend_cgroup::DEFAULT_MOUNTINFO),
            user_groups,
        }
    }
}

/// The agent's side of setuid mode: what the user's agent will hand tend-spawn.
#[derive(Debug, Clone)]
pub struct AgentSide {
    /// The agent's data dir (alloc dirs go below it).
    pub data_dir: PathBuf,
    /// The agent's run dir (task sockets go below it).
    pub run_dir: PathBuf,
    /// The agent's `cgroup_parent` (its tasks go to `<it>/<uid>/...`).
    pub cgroup_parent: String,
}

/// The policy tend-spawn at `spawn_bin` reads (see
/// tend-spawn's `setuid::policy_path`): the one beside it when that exists.
pub fn policy_for(spawn_bin: &Path) -> PathBuf {
    spawn_bin
        .parent()
        .map(|d| d.join(tend_policy::POLICY_BESIDE_BINARY))
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .unwrap_or_else(|| PathBuf::from(tend_policy::DEFAULT_PATH))
}

/// Check the install on this host for the mode the agent runs in: as root,
/// `root_agent`, and the setuid install only when `setuid` asks for it or
/// the binary has the bit; as another user, the setuid install and `agent`'s
/// side of it. 0 when all is fine, 1 otherwise; a last line says which.
pub fn run_doctor(
    spawn_bin: &Path,
    policy: &Path,
    agent: Option<&AgentSide>,
    root_agent: &RootAgent,
    setuid: bool,
    out: &mut dyn Write,
) -> i32 {
    let is_root = nix::unistd::geteuid().is_root();
    let has_bit = std::fs::metadata(spawn_bin).is_ok_and(|m| m.mode() & 0o4000 != 0);
    let mut code = 0;
    if is_root {
        let _ = writeln!(
            out,
            "root agent: the agent runs as root and execs {} as root",
            spawn_bin.display()
        );
        let mut report = Report { out, problems: 0 };
        root::check(&mut report, root_agent);
        code = i32::from(report.problems > 0);
    }
    if !is_root || setuid || has_bit {
        let why = if !is_root {
            "your agent runs exec tasks through it"
        } else if setuid {
            "--setuid"
        } else {
            "tend-spawn has the setuid bit"
        };
        let _ = writeln!(out, "setuid install ({why}):");
        let agent = agent.filter(|_| !is_root);
        code |= run_doctor_for(&Expect::host(), spawn_bin, policy, agent, out);
    } else {
        let _ = writeln!(
            out,
            "setuid install: not checked (tend-spawn has no setuid bit; --setuid checks it)"
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if code == 0 {
            "tend doctor: all is well"
        } else {
            "tend doctor: fix the errors above"
        }
    );
    code
}

/// [`run_doctor`] against `expect`, without the agent's side.
pub fn run_doctor_with(
    expect: &Expect,
    spawn_bin: &Path,
    policy: &Path,
    out: &mut dyn Write,
) -> i32 {
    run_doctor_for(expect, spawn_bin, policy, None, out)
}

/// [`run_doctor_with`], and `agent`'s side checked against the policy for the
/// current user.
pub fn run_doctor_for(
    expect: &Expect,
    spawn_bin: &Path,
    policy: &Path,
    agent: Option<&AgentSide>,
    out: &mut dyn Write,
) -> i32 {
    let mut report = Report { out, problems: 0 };
    let gid = expect.gid.or_else(|| {
        nix::unistd::Group::from_name(&expect.group)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    });
    match gid {
        Some(g) => report.ok(format!("group {} exists (gid {g})", expect.group)),
        None => report.problem(format!(
            "group {} does not exist: groupadd --system {}",
            expect.group, expect.group
        )),
    }
    check_binary(&mut report, expect, gid, spawn_bin);
    let loaded = match Policy::load_under(&expect.anchor, policy, expect.owner) {
        Ok(p) => {
            report.ok(format!("policy {} is root's and parses", policy.display()));
            Some(p)
        }
        Err(e) => {
            report.problem(e.to_string());
            None
        }
    };
    if let Some(p) = &loaded {
        check_cgroup_parent(&mut report, expect, &p.cgroup_parent);
        for (rule, roots) in [("data_roots", &p.data_roots), ("run_roots", &p.run_roots)] {
            if roots.is_empty() {
                report.problem(format!(
                    "policy {}: {rule} is empty: no caller can use tend-spawn until it names a dir",
                    policy.display()
                ));
            }
            for r in roots.iter() {
                if !r.is_dir() {
                    report.problem(format!(
                        "policy {}: {rule}: {} is not a dir",
                        policy.display(),
                        r.display()
                    ));
                }
            }
        }
    }
    if let (Some(p), Some(a)) = (&loaded, agent) {
        check_agent_side(&mut report, p, a);
    }
    match gid {
        Some(g) if expect.user_groups.contains(&g) => {
            report.ok(format!("you are in group {}", expect.group))
        }
        Some(_) => report.problem(format!(
            "you are not in group {}: usermod -aG {} $USER (then log in again)",
            expect.group, expect.group
        )),
        None => {}
    }
    if report.problems == 0 {
        0
    } else {
        1
    }
}

struct Report<'a> {
    out: &'a mut dyn Write,
    problems: usize,
}

impl Report<'_> {
    fn ok(&mut self, line: String) {
        let _ = writeln!(self.out, "ok: {line}");
    }
    fn problem(&mut self, line: String) {
        self.problems += 1;
        let _ = writeln!(self.out, "error: {line}");
    }
    /// Worth knowing, not a fault of the install.
    fn note(&mut self, line: String) {
        let _ = writeln!(self.out, "note: {line}");
    }
}

fn check_binary(report: &mut Report<'_>, expect: &Expect, gid: Option<u32>, bin: &Path) {
    let shown = bin.display();
    let meta = match std::fs::symlink_metadata(bin) {
        Ok(m) => m,
        Err(e) => {
            report.problem(format!("tend-spawn {shown}: {e}"));
            return;
        }
    };
    if meta.file_type().is_symlink() {
        report.problem(format!(
            "tend-spawn {shown} is a symlink: name the installed file itself"
        ));
        return;
    }
    if !meta.is_file() {
        report.problem(format!("tend-spawn {shown} is not a regular file"));
        return;
    }
    let mut fine = true;
    if meta.uid() != expect.owner {
        fine = false;
        report.problem(format!(
            "tend-spawn {shown} is owned by uid {}, not root: chown root {shown}",
            meta.uid()
        ));
    }
    if let Some(g) = gid {
        if meta.gid() != g {
            fine = false;
            report.problem(format!(
                "tend-spawn {shown} has group gid {}, not {}: chgrp {} {shown}",
                meta.gid(),
                expect.group,
                expect.group
            ));
        }
    }
    let mode = meta.mode() & 0o7777;
    if mode != MODE {
        fine = false;
        let why = if mode & 0o4000 == 0 {
            "no setuid bit"
        } else if mode & 0o007 != 0 {
            "others may run it"
        } else if mode & 0o022 != 0 {
            "writable by group or other"
        } else {
            "not the documented mode"
        };
        report.problem(format!(
            "tend-spawn {shown} has mode {mode:04o}, want {MODE:04o} ({why}): chmod {MODE:04o} {shown}"
        ));
    }
    if fine {
        report.ok(format!(
            "tend-spawn {shown}: root, group {}, mode {MODE:04o}",
            expect.group
        ));
    }
}

/// The user's agent against the policy, as tend-spawn will check each task.
fn check_agent_side(report: &mut Report<'_>, policy: &Policy, a: &AgentSide) {
    let shown = policy.path.display();
    if a.cgroup_parent == policy.cgroup_parent {
        report.ok(format!(
            "agent cgroup_parent {:?} is the policy's",
            a.cgroup_parent
        ));
    } else {
        report.problem(format!(
            "agent cgroup_parent {:?} is not the policy's {:?}: every exec task would be refused; \
             set cgroup_parent = {:?} in the agent config",
            a.cgroup_parent, policy.cgroup_parent, policy.cgroup_parent
        ));
    }
    let caller = match tend_policy::Caller::current() {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("who am I: {e}"));
            return;
        }
    };
    for (rule, roots, dir) in [
        ("data_roots", &policy.data_roots, &a.data_dir),
        ("run_roots", &policy.run_roots, &a.run_dir),
    ] {
        let Some(text) = dir.to_str() else {
            report.problem(format!("{}: not UTF-8", dir.display()));
            continue;
        };
        if !dir.exists() {
            report.problem(format!(
                "{} does not exist: as root, install -d -o {} -m 0700 {} (below one of {rule} {:?})",
                dir.display(),
                caller.uid,
                dir.display(),
                roots
            ));
            continue;
        }
        match policy.check_caller_dir(rule, roots, &caller, text) {
            Ok(()) => report.ok(format!(
                "{} is yours and below {rule} of {shown}",
                dir.display()
            )),
            Err(e) => report.problem(e.to_string()),
        }
    }
}

fn check_cgroup_parent(report: &mut Report<'_>, expect: &Expect, parent: &str) {
    let hier = match Hierarchies::detect_at(&expect.cgroup_root, &expect.mountinfo) {
        Ok(h) => h,
        Err(e) => {
            report.problem(format!("cgroups: {e}"));
            return;
        }
    };
    let mut mounts: Vec<&Path> = Controller::ALL
        .iter()
        .filter_map(|c| hier.v1_mount(*c))
        .collect();
    mounts.extend(hier.unified_mount());
    mounts.sort();
    mounts.dedup();
    if mounts.is_empty() {
        report.problem(format!(
            "cgroups: no hierarchy under {}",
            expect.cgroup_root.display()
        ));
    }
    // The check a root agent makes at start: writable, controllers
    // delegated. Only root sees what root (tend-spawn) may write.
    if nix::unistd::geteuid().is_root() {
        match hier.check_parent(parent) {
            Ok(()) => report.ok(format!(
                "cgroup parent {parent:?} can hold tasks (memory, pids, cpu)"
            )),
            Err(e) => report.problem(e.to_string()),
        }
    }
    for m in mounts {
        let dir = m.join(parent);
        if dir.is_dir() {
            report.ok(format!("cgroup parent {} exists", dir.display()));
        } else if dir.parent().is_some_and(Path::is_dir) {
            report.ok(format!(
                "cgroup parent {} will be made by tend-spawn",
                dir.display()
            ));
        } else {
            report.problem(format!(
                "cgroup parent {}: neither it nor its parent dir exists: mkdir -p {}",
                dir.display(),
                dir.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    struct Host {
        tmp: tempfile::TempDir,
        expect: Expect,
        bin: PathBuf,
        policy: PathBuf,
    }

    fn host() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let bin = tmp.path().join("tend-spawn");
        fs::write(&bin, b"#!").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o4750)).unwrap();
        let etc = tmp.path().join("etc/tend");
        fs::create_dir_all(&etc).unwrap();
        let data = tmp.path().join("data");
        let run = tmp.path().join("run");
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(&run).unwrap();
        let policy = etc.join("spawn-policy.hcl");
        fs::write(
            &policy,
            format!(
                "data_roots = [\"{}\"]\nrun_roots = [\"{}\"]\n",
                data.display(),
                run.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o644)).unwrap();
        // A v2 cgroup tree: cgroup.controllers at its root.
        let cg = tmp.path().join("cgroup");
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cgroup.controllers"), "memory pids cpu\n").unwrap();
        fs::write(cg.join("cgroup.procs"), "").unwrap();
        let expect = Expect {
            anchor: tmp.path().to_path_buf(),
            owner: me,
            group: "tend".into(),
            gid: Some(gid),
            cgroup_root: cg,
            mountinfo: tmp.path().join("no-mountinfo"),
            user_groups: vec![gid],
        };
        Host {
            tmp,
            expect,
            bin,
            policy,
        }
    }

    /// A change that breaks one thing of a good install.
    type Spoil = dyn Fn(&mut Host);

    fn doctor(h: &Host) -> (i32, String) {
        let mut out = Vec::new();
        let code = run_doctor_with(&h.expect, &h.bin, &h.policy, &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_good_install_is_all_ok() {
        let h = host();
        let (code, out) = doctor(&h);
        assert_eq!(code, 0, "{out}");
        assert!(out.lines().all(|l| l.starts_with("ok: ")), "{out}");
        assert!(out.contains("mode 4750"), "{out}");
        assert!(out.contains("will be made by tend-spawn"), "{out}");
        fs::create_dir(h.expect.cgroup_root.join("tend")).unwrap();
        let (_, out) = doctor(&h);
        assert!(out.contains("/tend exists"), "{out}");
    }

    #[test]
    fn each_problem_is_one_line() {
        let cases: &[(&Spoil, &str)] = &[
            (
                &|h| fs::set_permissions(&h.bin, fs::Permissions::from_mode(0o755)).unwrap(),
                "has mode 0755, want 4750 (no setuid bit)",
            ),
            (
                &|h| fs::set_permissions(&h.bin, fs::Permissions::from_mode(0o4755)).unwrap(),
                "(others may run it)",
            ),
            (
                &|h| fs::set_permissions(&h.bin, fs::Permissions::from_mode(0o4770)).unwrap(),
                "(writable by group or other)",
            ),
            (&|h| h.expect.owner += 1, "is owned by uid"),
            (
                &|h| h.expect.gid = Some(h.expect.gid.unwrap() + 1),
                "not tend: chgrp tend",
            ),
            (
                &|h| h.bin = h.tmp.path().join("missing"),
                "No such file or directory",
            ),
            (
                &|h| {
                    let l = h.tmp.path().join("link");
                    symlink(&h.bin, &l).unwrap();
                    h.bin = l;
                },
                "is a symlink",
            ),
            (
                &|h| fs::set_permissions(&h.policy, fs::Permissions::from_mode(0o666)).unwrap(),
                "is writable by group or other",
            ),
            (
                &|h| fs::write(&h.policy, "max_pids = 0\n").unwrap(),
                "spawn-policy.hcl:1: max_pids: must be more than 0",
            ),
            (
                &|h| fs::write(&h.policy, "\n").unwrap(),
                "data_roots is empty",
            ),
            (
                &|h| h.expect.user_groups = vec![],
                "you are not in group tend",
            ),
            (
                &|h| h.expect.cgroup_root = h.tmp.path().join("nocgroup"),
                "cgroups:",
            ),
        ];
        for (i, (spoil, want)) in cases.iter().enumerate() {
            let mut h = host();
            spoil(&mut h);
            let (code, out) = doctor(&h);
            assert_eq!(code, 1, "case {i}: {out}");
            let bad: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
            assert!(!bad.is_empty(), "case {i}: {out}");
            assert!(
                bad.iter().any(|l| l.contains(want)),
                "case {i}: no line with {want:?} in\n{out}"
            );
        }
    }

    #[test]
    fn a_missing_group_says_how_to_make_it() {
        let mut h = host();
        h.expect.gid = None;
        h.expect.group = "tend-no-such-group-here".into();
        let (code, out) = doctor(&h);
        assert_eq!(code, 1);
        assert!(
            out.contains("error: group tend-no-such-group-here does not exist: groupadd"),
            "{out}"
        );
    }
}

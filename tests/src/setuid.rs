//! The setuid test world: throwaway users and groups, an installed copy of
//! tend-spawn root:<group> 4750 with its policy beside it, and a Drop guard
//! that removes all of it (users, groups, files, cgroups, processes), even
//! after a failed assertion. Root only.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tend_proto::config::{Bind, CgroupSpec, ChrootSpec, Isolation};
use tend_proto::{frame, SpawnConfig, StartReport, Token};

use crate::{cgroup_mounts, random_u64, spawn_bin, wait_until};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Run `cmd args`; panics with its stderr unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Make `p` (and its parents) owned by `uid:gid` with `mode`.
pub fn mkdir(p: &Path, uid: u32, gid: u32, mode: u32) {
    fs::create_dir_all(p).unwrap();
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// One test's world: users, group, install, policy, dirs.
pub struct World {
    /// Its root dir, under /var/lib.
    pub base: PathBuf,
    /// The installed tend-spawn (root:group 4750).
    pub spawn: PathBuf,
    /// Its policy, beside it.
    pub policy: PathBuf,
    /// The data root the policy allows.
    pub data_root: PathBuf,
    /// The run root the policy allows.
    pub run_root: PathBuf,
    /// The allowed group.
    pub group: String,
    /// Its gid.
    pub gid: u32,
    /// A user in the group.
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub ugid: u32,
    /// A user not in the group.
    pub outsider: String,
    /// Its uid.
    pub ouid: u32,
    /// The cgroup parent the policy names.
    pub cgroup_parent: String,
}

/// `id FLAG NAME` as a number (`-u`: uid, `-g`: primary gid).
pub fn id_of(flag: &str, name: &str) -> u32 {
    let o = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

// No Default: a world makes users and installs files, nothing a default does.
#[allow(clippy::new_without_default)]
impl World {
    /// Make a world: a group, a user in it, an outsider, the install and
    /// its policy, the roots and the user's dirs in them.
    pub fn new() -> World {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id());
        let group = format!("tsg{tag}");
        let user = format!("tsu{tag}");
        let outsider = format!("tso{tag}");
        let base = PathBuf::from(format!("/var/lib/tend-setuid-test-{tag}"));
        let cgroup_parent = format!("tend-setuid-{tag}");
        // The guard exists before anything is made: a failure below cleans up too.
        let mut w = World {
            spawn: base.join("bin/tend-spawn"),
            policy: base.join("bin/spawn-policy.hcl"),
            data_root: base.join("data"),
            run_root: base.join("run"),
            base,
            group,
            gid: 0,
            user,
            uid: 0,
            ugid: 0,
            outsider,
            ouid: 0,
            cgroup_parent,
        };
        run("groupadd", &[&w.group]);
        run(
            "useradd",
            &["-M", "-U", "-s", "/bin/sh", "-G", &w.group, &w.user],
        );
        run("useradd", &["-M", "-U", "-s", "/bin/sh", &w.outsider]);
        w.gid = nix::unistd::Group::from_name(&w.group)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        w.uid = id_of("-u", &w.user);
        w.ugid = id_of("-g", &w.user);
        w.ouid = id_of("-u", &w.outsider);
        mkdir(&w.base, 0, 0, 0o755);
        mkdir(&w.base.join("bin"), 0, 0, 0o755);
        mkdir(&w.data_root, 0, 0, 0o755);
        mkdir(&w.run_root, 0, 0, 0o755);
        mkdir(&w.user_data(), w.uid, w.ugid, 0o700);
        mkdir(&w.user_run(), w.uid, w.ugid, 0o700);
        fs::copy(spawn_bin(), &w.spawn).unwrap();
        std::os::unix::fs::chown(&w.spawn, Some(0), Some(w.gid)).unwrap();
        fs::set_permissions(&w.spawn, fs::Permissions::from_mode(0o4750)).unwrap();
        w.write_policy("");
        w
    }

    /// The user's data dir.
    pub fn user_data(&self) -> PathBuf {
        self.data_root.join(&self.user)
    }

    /// The user's run dir.
    pub fn user_run(&self) -> PathBuf {
        self.run_root.join(&self.user)
    }

    /// The policy: the test's group, its roots and cgroup parent, plus `extra`.
    pub fn write_policy(&self, extra: &str) {
        let text = format!(
            "allow_groups = [\"{}\"]\ncgroup_parent = \"{}\"\ndata_roots = [\"{}\"]\nrun_roots = [\"{}\"]\n{extra}",
            self.group,
            self.cgroup_parent,
            self.data_root.display(),
            self.run_root.display()
        );
        fs::write(&self.policy, text).unwrap();
        std::os::unix::fs::chown(&self.policy, Some(0), Some(0)).unwrap();
        fs::set_permissions(&self.policy, fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// An alloc dir of the user's, with `task/local` made as the agent makes it.
    pub fn alloc(&self, task: &str) -> (String, PathBuf) {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("a{}x{n}", std::process::id());
        let dir = self.user_data().join("allocs").join(&id);
        for d in [
            self.user_data().join("allocs"),
            dir.clone(),
            dir.join("alloc"),
            dir.join("logs"),
            dir.join(task),
            dir.join(task).join("local"),
        ] {
            mkdir(&d, self.uid, self.ugid, 0o755);
        }
        (id, dir)
    }

    /// A raw_exec config of the user's.
    pub fn raw_config(&self, task: &str, script: &str) -> SpawnConfig {
        let (id, dir) = self.alloc(task);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let sock = self.user_run().join(format!("{n}.sock"));
        let mut c = tend_proto::config::example(dir.to_str().unwrap(), sock.to_str().unwrap());
        c.alloc_id = id;
        c.task = task.into();
        c.token = Token([7u8; 32]);
        c.command = "/bin/sh".into();
        c.args = vec!["-c".into(), script.into()];
        c.cwd = dir.join(task).display().to_string();
        c.linger_ms = 30_000;
        c
    }

    /// An exec config (nobody, default binds, cgroup below the policy's parent).
    pub fn exec_config(&self, task: &str, script: &str) -> SpawnConfig {
        let mut c = self.raw_config(task, script);
        c.cwd = "/".into();
        c.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        let binds = ["/bin", "/etc", "/lib", "/lib64", "/usr", "/sbin"]
            .iter()
            .filter(|p| Path::new(p).exists())
            // Canonical sources, as the policy wants (/bin is /usr/bin on
            // merged-usr hosts); the agent does the same in setuid mode.
            .map(|p| Bind {
                source: fs::canonicalize(p).unwrap().display().to_string(),
                target: p.to_string(),
            })
            .collect();
        c.isolation = Some(Isolation {
            ids: None,
            user: "nobody".into(),
            chroot: Some(ChrootSpec { binds }),
        });
        let base = format!("{}/{}/{}", self.cgroup_parent, self.uid, c.alloc_id);
        c.cgroup = Some(CgroupSpec {
            path: format!("{base}/{task}"),
            daemon_path: Some(format!("{base}/{task}.tend-spawn")),
            memory_bytes: Some(64 << 20),
            cpu_mhz: Some(100),
            pids_max: Some(64),
            options: Default::default(),
        });
        c
    }

    /// Run the installed tend-spawn as `uid` (with that user's groups), `env`
    /// in its environment, `cfg` on stdin.
    pub fn spawn_as(&self, name: &str, cfg: &SpawnConfig, env: &[(&str, &str)]) -> Spawn {
        self.spawn_on(name, cfg, env, None)
    }

    /// [`World::spawn_as`] with tend-spawn's stdin one end of a socketpair,
    /// the config written on the other, which is returned: the first
    /// connection, once the report is `StartedWithConnection`.
    pub fn spawn_handed_as(&self, name: &str, cfg: &SpawnConfig) -> (Spawn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let s = self.spawn_on(name, cfg, &[], Some((theirs, &ours)));
        (s, ours)
    }

    fn spawn_on(
        &self,
        name: &str,
        cfg: &SpawnConfig,
        env: &[(&str, &str)],
        socket: Option<(UnixStream, &UnixStream)>,
    ) -> Spawn {
        use std::io::Write;
        let bytes = cfg.to_frame().unwrap();
        let mut cmd = self.as_user(name);
        cmd.arg(&self.spawn);
        cmd.env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (stdin, writer) = match socket {
            Some((theirs, ours)) => (Stdio::from(std::os::fd::OwnedFd::from(theirs)), Some(ours)),
            None => (Stdio::piped(), None),
        };
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        match (child.stdin.take(), writer) {
            (Some(mut pipe), _) => {
                let _ = pipe.write_all(&bytes);
            }
            (None, Some(mut s)) => {
                let _ = s.write_all(&bytes);
            }
            (None, None) => {}
        }
        let o = child.wait_with_output().unwrap();
        let report = frame::read_frame(&mut &o.stdout[..], frame::MAX_FRAME_LEN)
            .ok()
            .and_then(|f| f.decode::<StartReport>().ok());
        Spawn {
            report,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            code: o.status.code(),
        }
    }

    /// A `setpriv` command that runs what follows as `name`, with its groups.
    pub fn as_user(&self, name: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", name, "--regid", name, "--init-groups", "--"]);
        cmd.current_dir("/");
        cmd
    }

    /// The task cgroup dirs still present under the test's parent.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in cgroup_mounts() {
            let p = m.join(&self.cgroup_parent);
            walk(&p, &mut out);
        }
        out
    }
}

/// Every dir below `dir`, deepest first.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
                out.push(e.path());
            }
        }
    }
}

/// Every process whose real uid is one of `uids`: ours to end, by pid.
pub fn kill_processes_of(uids: &[u32]) {
    for _ in 0..50 {
        let mut found = false;
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let ruid = field(&status, "Uid")
                .first()
                .and_then(|u| u.parse::<u32>().ok());
            if ruid.is_some_and(|u| uids.contains(&u)) {
                found = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let mut uids = vec![self.uid, self.ouid];
        uids.retain(|u| *u != 0);
        kill_processes_of(&uids);
        // The cleanup helpers remove the cgroups as their daemons leave: give
        // them a moment, then remove what is left (deepest first).
        wait_until(Duration::from_secs(3), || self.cgroups_left().is_empty());
        // Forks of the world's own tend-spawn copy a bug left behind, whoever
        // they run as (a test that found one must not leak them).
        if let Ok(exe) = fs::canonicalize(&self.spawn) {
            for (pid, _) in processes_running(&exe) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // A task the helpers missed (a test that found a bug): SIGKILL by pid
        // whatever is still in the test's cgroups, then remove them.
        for _ in 0..50 {
            let mut found = false;
            for d in self.cgroups_left() {
                for pid in fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    found = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !found {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for m in cgroup_mounts() {
            let top = m.join(&self.cgroup_parent);
            let mut dirs = Vec::new();
            walk(&top, &mut dirs);
            for d in dirs {
                let _ = fs::remove_dir(d);
            }
            let _ = fs::remove_dir(top);
        }
        let _ = fs::remove_dir_all(&self.base);
        let _ = Command::new("userdel").arg(&self.user).output();
        let _ = Command::new("userdel").arg(&self.outsider).output();
        let _ = Command::new("groupdel").arg(&self.user).output();
        let _ = Command::new("groupdel").arg(&self.outsider).output();
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// What one exec of the installed tend-spawn gave.
pub struct Spawn {
    /// Its start report, if one could be read.
    pub report: Option<StartReport>,
    /// What it wrote to stderr.
    pub stderr: String,
    /// Its exit code.
    pub code: Option<i32>,
}

impl Spawn {
    /// `(daemon_pid, task_pid)` of a Started report; panics otherwise.
    pub fn started(&self) -> (i32, i32) {
        match &self.report {
            Some(StartReport::Started {
                daemon_pid,
                task_pid,
                ..
            }) => (*daemon_pid, *task_pid),
            other => panic!("not started: {other:?}\nstderr: {}", self.stderr),
        }
    }

    /// The refusal line; asserts that it names `rule`.
    pub fn refused(&self, rule: &str) -> String {
        let msg = match &self.report {
            Some(StartReport::Failed { message, .. }) => message.clone(),
            other => panic!("not refused: {other:?}\nstderr: {}", self.stderr),
        };
        assert!(msg.contains(rule), "{rule}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(self.code, Some(1), "{}", self.stderr);
        msg
    }
}

/// The words of the line `KEY:` of a `/proc/PID/status` text.
pub fn field(status: &str, key: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// The processes whose executable is `exe`, with their real uid.
pub fn processes_running(exe: &Path) -> Vec<(i32, u32)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() != Some(exe) {
            continue;
        }
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if let Some(uid) = field(&status, "Uid").first().and_then(|u| u.parse().ok()) {
            out.push((pid, uid));
        }
    }
    out
}

/// A host user (and its own group) made for one test with `useradd`, removed
/// with `userdel` when dropped, even after a failed assertion. Stands for
/// "another local user".
#[derive(Debug)]
pub struct ThrowawayUser {
    /// Its name (`tt` and 8 hex digits).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group, of its own.
    pub gid: u32,
}

impl ThrowawayUser {
    /// Make one (root only). `useradd` takes a lock on /etc/passwd that tests
    /// running at once may hold: it is tried again for a while.
    pub fn create() -> ThrowawayUser {
        let name = format!("tt{:08x}", random_u64() & 0xffff_ffff);
        let mut last = String::new();
        let made = wait_until(Duration::from_secs(30), || {
            let out = Command::new("useradd")
                .args(["--no-create-home", "--user-group", "--shell", "/bin/false"])
                .arg(&name)
                .output()
                .expect("run useradd");
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(made, "useradd {name}: {last}");
        // Removed on drop from here on, whatever happens next.
        let mut user = ThrowawayUser {
            name,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let u = nix::unistd::User::from_name(&user.name)
            .expect("read passwd")
            .expect("the new user");
        user.uid = u.uid.as_raw();
        user.gid = u.gid.as_raw();
        user
    }

    /// Run `cmd args` as this user: its uid and gid, no supplementary group, an
    /// empty environment but PATH, from `/`. Its stdout when it succeeds; else
    /// why not (its stderr, or why it could not even start: `cmd` itself may be
    /// out of the user's reach).
    pub fn run<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Result<String, String> {
        use std::os::unix::process::CommandExt;
        let out = Command::new(cmd)
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{cmd}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        wait_until(Duration::from_secs(30), || {
            Command::new("userdel")
                .arg(&self.name)
                .output()
                .is_ok_and(|o| o.status.success() || o.status.code() == Some(6))
        });
        // userdel removes the user's own group with it; if it did not, this does.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

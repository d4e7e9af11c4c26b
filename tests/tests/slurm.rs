//! Slurm runs job steps through oci.conf: a one-node cluster from `.ci/slurm`
//! with `tests/slurm/oci-standin` as the runtime. srun's output and exit code
//! come through the runtime, Slurm records the exit code, scancel stops a
//! running step, and `.ci/slurm down` leaves nothing behind.
//!
//! Assertions marked `[runtime]` are about what any runtime sees and does;
//! they move to `tend-spawn oci` when it replaces the stand-in. Those marked
//! `[stand-in]` read the stand-in's call log and stay with it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tend_tests::{cgroup_mounts, holders_under, pid_alive, require_root, wait_until};

/// The uid and gid srun runs as for the unprivileged case: nobody/nogroup.
const NOBODY: u32 = 65534;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// One call the stand-in recorded: `NNNN-VERB` under its log dir.
#[derive(Debug)]
struct Call {
    dir: PathBuf,
    verb: String,
    argv: Vec<String>,
}

impl Call {
    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn exit(&self) -> Option<i32> {
        self.read("exit").trim().parse().ok()
    }

    /// The runtime's arguments after the stand-in's own --log/--root.
    fn runtime_args(&self) -> Vec<&str> {
        self.argv.iter().skip(5).map(String::as_str).collect()
    }
}

/// A running one-node cluster in a temp dir, with oci.conf naming the
/// stand-in; `.ci/slurm down` runs on drop, also when the test fails.
struct Cluster {
    base: PathBuf,
    dir: PathBuf,
    bundle: PathBuf,
    log: PathBuf,
    state: PathBuf,
    port: u16,
    up: bool,
}

/// The runtime oci.conf names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    /// tests/slurm/oci-standin, recording its calls.
    StandIn,
    /// `tend-spawn oci`, with a bundle whose rootfs is the host's binaries
    /// bound read-only.
    Tend,
    /// `tend-spawn oci`, with a bundle whose root is the host's `/` (what an
    /// unprivileged run can do).
    TendHostRoot,
    /// As [`Runtime::TendHostRoot`], with oci.conf's RunTimeCreate and
    /// RunTimeStart in place of RunTimeRun.
    TendCreateStart,
}

/// Whether the cluster enforces `--mem`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Memory {
    /// task/none: nothing does.
    Unenforced,
    /// task/cgroup in a memory cgroup of the cluster's own
    /// (`TEND_SLURM_MEMORY=cgroup`).
    Cgroup,
}

impl Cluster {
    fn up() -> Cluster {
        Cluster::up_with(Runtime::StandIn)
    }

    fn up_with(runtime: Runtime) -> Cluster {
        Cluster::up_with_memory(runtime, Memory::Unenforced)
    }

    fn up_with_memory(runtime: Runtime, memory: Memory) -> Cluster {
        // The daemons and slurmstepd detach from the harness; as their
        // subreaper this test reaps them, so `down` leaves not even a zombie
        // (this host's PID 1 does not reap).
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let base = tempfile::Builder::new()
            .prefix("tend-slurm-")
            .tempdir_in("/tmp")
            .expect("tempdir")
            .keep();
        // srun as nobody reads slurm.conf and the bundle, and the stand-in
        // then runs as nobody and writes its log and state.
        chmod(&base, 0o755);
        let log = base.join("log");
        let state = base.join("state");
        for d in [&log, &state] {
            fs::create_dir(d).unwrap();
            chmod(d, 0o1777);
        }
        let bundle = base.join("bundle");
        fs::create_dir_all(bundle.join("rootfs")).unwrap();
        chmod(&bundle, 0o755);
        // The least a bundle holds; slurmstepd fills in args, env and the
        // rootfs path.
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": ["true"],
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "cwd": "/"
            },
            "root": { "path": "rootfs" },
            "linux": { "namespaces": [] }
        });
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let rt = match runtime {
            Runtime::StandIn => format!(
                "{} --log {} --root {}",
                repo_root().join("tests/slurm/oci-standin").display(),
                log.display(),
                state.display()
            ),
            Runtime::Tend | Runtime::TendHostRoot | Runtime::TendCreateStart => {
                let mut config = tend_tests::oci_bundle_config(&bundle, &["true"]);
                if runtime != Runtime::Tend {
                    // slurmstepd makes root.path absolute against the bundle
                    // ("/" too): the host's root is a rootfs linking to it.
                    let rootfs = bundle.join("rootfs");
                    fs::remove_dir_all(&rootfs).unwrap();
                    std::os::unix::fs::symlink("/", &rootfs).unwrap();
                    config["root"] = serde_json::json!({ "path": "rootfs" });
                    config["mounts"] = serde_json::json!([]);
                }
                fs::write(
                    bundle.join("config.json"),
                    serde_json::to_vec_pretty(&config).unwrap(),
                )
                .unwrap();
                format!(
                    "{} oci --root {}",
                    tend_tests::spawn_bin().display(),
                    state.display()
                )
            }
        };
        let oci_conf = base.join("oci.conf");
        let launch = if runtime == Runtime::TendCreateStart {
            format!(
                "RunTimeCreate=\"{rt} create %n.%u.%j.%s.%t -b %b\"\n\
                 RunTimeStart=\"{rt} start %n.%u.%j.%s.%t\"\n"
            )
        } else {
            format!("RunTimeRun=\"{rt} run %n.%u.%j.%s.%t -b %b\"\n")
        };
        fs::write(
            &oci_conf,
            format!(
                "RunTimeQuery=\"{rt} state %n.%u.%j.%s.%t\"\n\
                 RunTimeKill=\"{rt} kill -a %n.%u.%j.%s.%t\"\n\
                 RunTimeDelete=\"{rt} delete --force %n.%u.%j.%s.%t\"\n\
                 {launch}"
            ),
        )
        .unwrap();
        // Tests run side by side: a port pair of each one's own.
        let port = 20000 + 2 * u16::try_from(std::process::id() % 10000).unwrap();
        let c = Cluster {
            dir: base.join("cluster"),
            base,
            bundle,
            log,
            state,
            port,
            up: true,
        };
        let mut up = c.harness(&[
            "up",
            &c.dir.display().to_string(),
            &oci_conf.display().to_string(),
        ]);
        if memory == Memory::Cgroup {
            up.env("TEND_SLURM_MEMORY", "cgroup");
        }
        let out = up.output().expect("run .ci/slurm up");
        print!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            c.dump_logs();
            panic!(".ci/slurm up failed: {}", out.status);
        }
        c
    }

    fn harness(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(repo_root().join(".ci/slurm"));
        cmd.args(args)
            .env("TEND_SLURM_PORT", self.port.to_string())
            .stdin(Stdio::null());
        cmd
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// A Slurm client command (srun, scontrol, ...) for this cluster.
    /// `program` of the cluster's, bounded at 120 s (exit 124): a step
    /// whose slurmstepd died leaves srun waiting for ever.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120", program])
            .env("SLURM_CONF", self.conf())
            .current_dir("/")
            .stdin(Stdio::null());
        cmd
    }

    /// `srun --container=BUNDLE ARGS...`, as root or, with `as_user`, as
    /// that uid and gid with no supplementary groups (setpriv).
    fn srun(&self, as_user: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = match as_user {
            None => self.client("srun"),
            Some(id) => {
                let mut cmd = self.client("setpriv");
                cmd.arg(format!("--reuid={id}"))
                    .arg(format!("--regid={id}"))
                    .args(["--clear-groups", "srun"]);
                cmd
            }
        };
        cmd.arg(format!("--container={}", self.bundle.display()))
            .arg("--chdir=/")
            .args(args);
        cmd
    }

    /// `srun sleep 300` as root, started, its output dropped.
    fn srun_sleeper(&self) -> Child {
        self.srun(None, &["sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn run_client(&self, program: &str, args: &[&str]) -> String {
        let out = self.client(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The stand-in's calls in order.
    fn calls(&self) -> Vec<Call> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.log)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs.into_iter()
            .map(|dir| {
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                let verb = name.split_once('-').map(|(_, v)| v.to_string()).unwrap();
                let argv = fs::read_to_string(dir.join("argv"))
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect();
                Call { dir, verb, argv }
            })
            .collect()
    }

    /// The verbs for `id` once they are `want` and every call has returned:
    /// slurmstepd's state and delete come after srun has its exit code.
    fn wait_verbs(&self, id: &str, want: &[&str]) -> Vec<String> {
        let mut got = Vec::new();
        wait_until(Duration::from_secs(10), || {
            let calls: Vec<Call> = self
                .calls()
                .into_iter()
                .filter(|c| c.runtime_args().contains(&id))
                .collect();
            got = calls.iter().map(|c| c.verb.clone()).collect();
            got == want && calls.iter().all(|c| c.exit().is_some())
        });
        got
    }

    /// The exit code `scontrol show job` reports ("7:0": code, signal).
    /// Waits out RUNNING and COMPLETING: the record is final only once
    /// slurmstepd's cleanup is done.
    fn scontrol_exit(&self, job: u32) -> (String, String) {
        let mut fields = (String::new(), String::new());
        wait_until(Duration::from_secs(15), || {
            let text = self.run_client("scontrol", &["show", "job", &job.to_string()]);
            let field = |name: &str| {
                text.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_default()
                    .to_string()
            };
            fields = (field("JobState="), field("ExitCode="));
            !matches!(fields.0.as_str(), "RUNNING" | "COMPLETING")
        });
        fields
    }

    /// `sacct -c`'s state and exit code: the jobcomp file, since no slurmdbd
    /// runs. The record is written as the job ends, so wait for it.
    fn sacct_exit(&self, job: u32) -> String {
        let mut line = String::new();
        wait_until(Duration::from_secs(10), || {
            line = self.run_client(
                "sacct",
                &[
                    "-c",
                    "-j",
                    &job.to_string(),
                    "-o",
                    "State,ExitCode",
                    "-P",
                    "-n",
                ],
            );
            !line.trim().is_empty()
        });
        line.trim().to_string()
    }

    fn dump_logs(&self) {
        for name in ["slurmctld.log", "slurmd.log", "munged.log"] {
            let p = self.dir.join("log").join(name);
            if let Ok(text) = fs::read_to_string(&p) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {}", p.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }

    /// `.ci/slurm down`, then: no daemon or step process left, the cluster
    /// dir and its munge socket gone.
    fn down(mut self) {
        let pids = self.daemon_pids();
        assert_eq!(pids.len(), 3, "munged, slurmctld and slurmd were tracked");
        self.up = false;
        let out = self
            .harness(&["down", &self.dir.display().to_string()])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), ".ci/slurm down: {}", out.status);
        reap_orphans();
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} outlived .ci/slurm down"
            );
        }
        assert!(!self.dir.exists(), "{} is left", self.dir.display());
        // proctrack/linuxproc and task/none make no cgroup; none appears.
        for m in cgroup_mounts() {
            let slurm: Vec<_> = fs::read_dir(&m)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("slurm"))
                .map(|e| e.path())
                .collect();
            assert!(slurm.is_empty(), "cgroups left: {slurm:?}");
        }
        let left = holders_under(&self.base);
        assert!(
            left.is_empty(),
            "processes still in {}: {left:?}",
            self.base.display()
        );
    }

    /// Wait for slurmstepd's state and delete to leave the runtime's state
    /// root empty, then [`Cluster::down`].
    fn down_with_no_container_left(self) {
        assert!(
            wait_until(Duration::from_secs(20), || fs::read_dir(&self.state)
                .map(|d| d.count() == 0)
                .unwrap_or(false)),
            "the container's state is left in {}",
            self.state.display()
        );
        self.down();
    }

    fn daemon_pids(&self) -> Vec<i32> {
        ["munged", "slurmctld", "slurmd"]
            .iter()
            .filter_map(|n| {
                fs::read_to_string(self.dir.join(format!("run/{n}.tracked")))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.up {
            if std::thread::panicking() {
                self.dump_logs();
            }
            let _ = self
                .harness(&["down", &self.dir.display().to_string()])
                .status();
            reap_orphans();
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Reaps every exited child, the daemons reparented to this test included.
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// The job id srun printed through the step (`job=N`).
fn job_id(out: &Output) -> u32 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("job="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no job= line in {text:?}"))
}

/// A step's command runs through RunTimeRun: its stdout and stderr reach
/// srun, its exit code is srun's and Slurm's record of the job.
#[test]
fn srun_output_and_exit_code_pass_through_the_runtime() {
    require_root!();
    let c = Cluster::up();
    let out = c
        .srun(
            None,
            &[
                "sh",
                "-c",
                "echo job=$SLURM_JOB_ID; echo to-stderr >&2; exit 7",
            ],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // [runtime] The runtime's own stdio is the step's: output reaches srun.
    let job = job_id(&out);
    assert!(stderr.contains("to-stderr"), "stderr: {stderr}");
    // [runtime] The runtime's exit code is the step's.
    assert_eq!(out.status.code(), Some(7), "srun: {stderr}");
    let (state, exit) = c.scontrol_exit(job);
    assert_eq!((state.as_str(), exit.as_str()), ("FAILED", "7:0"));
    assert_eq!(c.sacct_exit(job), "FAILED|7:0");

    // [stand-in] The call sequence: run (slurmstepd execs it as the task,
    // through /bin/sh -c), then state, then delete once state answers.
    let id = format!("localhost.root.{job}.0.0");
    assert_eq!(
        c.wait_verbs(&id, &["run", "state", "delete"]),
        ["run", "state", "delete"]
    );
    let calls = c.calls();
    let run = calls.iter().find(|k| k.verb == "run").unwrap();
    let spool = c.dir.join(format!("spool/oci-job{job:05}-00000"));
    assert_eq!(
        run.runtime_args(),
        ["run", id.as_str(), "-b", &format!("{}/", spool.display())]
    );
    assert_eq!(run.exit(), Some(7));
    // [runtime] run is called in the bundle slurmstepd wrote, whose
    // config.json carries the command, the step's env and the rootfs made
    // absolute; the bundle's own fields pass unchanged.
    assert_eq!(run.read("cwd").trim(), spool.display().to_string());
    let config: serde_json::Value =
        serde_json::from_str(&run.read("config.json")).expect("config.json copied");
    assert_eq!(
        config["process"]["args"],
        serde_json::json!([
            "sh",
            "-c",
            "echo job=$SLURM_JOB_ID; echo to-stderr >&2; exit 7"
        ])
    );
    let env: Vec<&str> = config["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        env.contains(&format!("SLURM_JOB_ID={job}").as_str()),
        "{env:?}"
    );
    assert!(env.contains(&"SLURM_STEP_ID=0"), "{env:?}");
    assert_eq!(
        config["root"]["path"],
        c.bundle.join("rootfs").display().to_string()
    );
    assert_eq!(config["process"]["cwd"], "/");
    assert_eq!(config["linux"]["namespaces"], serde_json::json!([]));
    // slurmstepd removes its bundle copy when the step is done.
    assert!(!spool.exists());
    c.down();
}

/// With `tend-spawn oci` as the runtime: the step runs under tend-spawn in
/// the bundle's root, its output reaches srun, its exit code is srun's and
/// Slurm's, and slurmstepd's state and delete leave nothing of it.
#[test]
fn srun_through_tend_spawn_oci() {
    require_root!();
    let c = Cluster::up_with(Runtime::Tend);
    let out = c
        .srun(
            None,
            &[
                "sh",
                "-c",
                "echo job=$SLURM_JOB_ID; echo to-stderr >&2; \
                 tr '\\0' ' ' </proc/1/cmdline; echo; ls /; exit 7",
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let job = job_id(&out);
    assert!(stderr.contains("to-stderr"), "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(7), "srun: {stderr}");
    // Its own pid namespace, whose first process is tend-spawn's, and the
    // bundle's root, not the host's.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[1].contains("tend-spawn"), "stdout: {stdout}");
    assert!(
        lines.contains(&"usr") && !lines.contains(&"home"),
        "stdout: {stdout}"
    );
    let (state, exit) = c.scontrol_exit(job);
    assert_eq!((state.as_str(), exit.as_str()), ("FAILED", "7:0"));
    assert_eq!(c.sacct_exit(job), "FAILED|7:0");
    // slurmstepd's state and delete remove the container once the step ends.
    c.down_with_no_container_left();
}

/// With RunTimeCreate and RunTimeStart: slurmstepd creates the container,
/// polls state until it is created, starts it, polls state until it is
/// stopped, then deletes it. The step runs under tend-spawn; its output stays
/// in the container's logs (slurmstepd hands create no stdio of the step's)
/// and srun's exit code is start's (docs/slurm.md).
#[test]
fn srun_through_tend_spawn_oci_create_and_start() {
    require_root!();
    let c = Cluster::up_with(Runtime::TendCreateStart);
    let marker = c.base.join("ran");
    let script = format!(
        "echo job=$SLURM_JOB_ID parent=$(cat /proc/$PPID/comm) > {}; exit 5",
        marker.display()
    );
    let out = c.srun(None, &["sh", "-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "srun: {stderr}");
    let ran = fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        ran.starts_with("job=") && ran.trim_end().ends_with(" parent=tend-spawn"),
        "the step wrote {ran:?}; srun: {stderr}"
    );
    c.down_with_no_container_left();
}

/// srun as a user through `tend-spawn oci`: run, called as the user, runs
/// the step as the user in the host's root; root's state and delete remove
/// the container.
#[test]
fn srun_as_a_user_through_tend_spawn_oci() {
    require_root!();
    let c = Cluster::up_with(Runtime::TendHostRoot);
    let out = c
        .srun(
            Some(NOBODY),
            &["sh", "-c", "echo job=$SLURM_JOB_ID; id -u; exit 3"],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "srun: {stderr}");
    let job = job_id(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, format!("job={job}\n{NOBODY}\n"));
    let (state, exit) = c.scontrol_exit(job);
    assert_eq!((state.as_str(), exit.as_str()), ("FAILED", "3:0"));
    c.down_with_no_container_left();
}

/// srun as a user: run (the task) is called as that user, the cleanup calls
/// as root, and config.json's process.user is left as the bundle had it.
#[test]
fn srun_as_a_user_calls_the_runtime_as_that_user() {
    require_root!();
    let c = Cluster::up();
    let out = c
        .srun(Some(NOBODY), &["sh", "-c", "echo job=$SLURM_JOB_ID; id -u"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "srun: {stderr}");
    let job = job_id(&out);
    // [runtime] The command runs as the user.
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "65534"),
        "{:?}",
        out.stdout
    );
    let id = format!("localhost.nobody.{job}.0.0");
    assert_eq!(
        c.wait_verbs(&id, &["run", "state", "delete"]),
        ["run", "state", "delete"]
    );
    for call in c.calls() {
        // [runtime] run is the task: it runs as the user, unprivileged, so a
        // runtime that needs root cannot be named in oci.conf as it is. The
        // cleanup calls (state, delete) come from slurmstepd itself, as root.
        let want = if call.verb == "run" {
            "uid=65534(nobody) gid=65534"
        } else {
            "uid=0(root) gid=0(root)"
        };
        assert!(
            call.read("ids").starts_with(want),
            "{} ran as {}",
            call.verb,
            call.read("ids")
        );
    }
    let run = c.calls().into_iter().find(|k| k.verb == "run").unwrap();
    let config: serde_json::Value = serde_json::from_str(&run.read("config.json")).unwrap();
    assert_eq!(
        config["process"]["user"],
        serde_json::json!({"uid": 0, "gid": 0})
    );
    assert_eq!(c.scontrol_exit(job), ("COMPLETED".into(), "0:0".into()));
    c.down();
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// End a client started through `timeout` (see `Cluster::client`): TERM,
/// which timeout passes on to it (and KILLs it 5 s later); a KILL would end
/// timeout alone.
fn stop_client(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

/// The step `started` (its container id and process), running under srun
/// `child`: scancel it; srun fails, the process ends, the job is CANCELLED.
/// Returns the id and Slurm's ExitCode; srun is killed if it outlives
/// scancel.
fn scancel_step(
    c: &Cluster,
    child: &mut Child,
    started: Option<(String, i32)>,
) -> (String, String) {
    let Some((id, sleeper)) = started else {
        stop_client(child);
        panic!("the step never started");
    };
    let job: u32 = id.split('.').nth(2).unwrap().parse().unwrap();
    assert!(pid_alive(sleeper));
    c.run_client("scancel", &[&job.to_string()]);
    let status = wait_child(child, Duration::from_secs(20));
    if status.is_none() {
        stop_client(child);
    }
    assert!(!status.expect("srun outlived scancel").success());
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(sleeper)),
        "the step's process {sleeper} outlived scancel"
    );
    let (state, exit) = c.scontrol_exit(job);
    assert_eq!(state, "CANCELLED");
    (id, exit)
}

/// scancel stops a sleeping step: slurmstepd signals the runtime (the task)
/// and its children, then asks state and deletes; the job is CANCELLED.
#[test]
fn scancel_stops_a_running_step() {
    require_root!();
    let c = Cluster::up();
    let mut child = c.srun_sleeper();
    // The container's process: the stand-in writes ID/pid once started.
    let state = c.base.join("state");
    let mut started = None;
    wait_until(Duration::from_secs(20), || {
        started = fs::read_dir(&state)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| {
                let pid = fs::read_to_string(e.path().join("pid")).ok()?;
                let pid: i32 = pid.trim().parse().ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), pid))
            });
        started.is_some()
    });
    // [runtime] The step ends and its process with it; CANCELLED.
    let (id, exit) = scancel_step(&c, &mut child, started);
    // SIGTERM reaches every process of the task at once: when the task's
    // /bin/sh dies of it Slurm records the signal, when it first sees the
    // runtime exit 128+15 it exits 143 itself. Both happen here.
    assert!(exit == "0:15" || exit == "143:0", "ExitCode={exit}");
    // [stand-in] With RunTimeRun, scancel never calls RunTimeKill: SIGTERM
    // goes to the runtime's process tree (proctrack/linuxproc), which ends
    // 128+15; then state (stopped) and delete as after any step.
    assert_eq!(
        c.wait_verbs(&id, &["run", "state", "delete"]),
        ["run", "state", "delete"]
    );
    let run = c.calls().into_iter().find(|k| k.verb == "run").unwrap();
    assert_eq!(run.exit(), Some(143));
    c.down();
}

/// The one container of the cluster's state root that `tend-spawn oci
/// state` says is running: its id and its process, once there is one.
fn running_container(c: &Cluster) -> Option<(String, i32)> {
    let state_of = |id: &str| -> Option<serde_json::Value> {
        let out = Command::new(tend_tests::spawn_bin())
            .args(["oci", "--root"])
            .arg(&c.state)
            .args(["state", id])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let mut started = None;
    wait_until(Duration::from_secs(20), || {
        started = fs::read_dir(&c.state)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                let s = state_of(&id)?;
                if s["status"] != "running" {
                    return None;
                }
                let pid = i32::try_from(s["pid"].as_i64()?).ok()?;
                Some((id, pid))
            });
        started.is_some()
    });
    started
}

/// scancel of a step run by `tend-spawn oci`: the task (outside the step's
/// process tree) ends through the runtime, and the container is deleted.
#[test]
fn scancel_stops_a_step_run_by_tend_spawn_oci() {
    require_root!();
    let c = Cluster::up_with(Runtime::Tend);
    let mut child = c.srun_sleeper();
    let started = running_container(&c);
    scancel_step(&c, &mut child, started);
    c.down_with_no_container_left();
}

/// The agent adopts a running step by its container id (`tend adopt`): the
/// step is one of its allocations, with the container's process and logs;
/// `tend stop` ends it through its tend-spawn, srun returns with the task's
/// end, the agent records the exit, and slurmstepd's state and delete
/// remove the container as after any step.
#[test]
fn the_agent_adopts_a_running_step_and_stops_it() {
    require_root!();
    let c = Cluster::up_with(Runtime::Tend);
    let sb = tend_tests::Sandbox::new();
    let agent = tend_tests::AgentProc::start(&sb);
    let mut child = c
        .srun(None, &["sh", "-c", "echo step-up; exec sleep 300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let Some((id, pid)) = running_container(&c) else {
        stop_client(&mut child);
        panic!("the step never started");
    };
    let out = agent.cli(&[
        "adopt",
        "--root",
        &c.state.display().to_string(),
        "--json",
        &id,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        stop_client(&mut child);
        panic!("adopt {id}: {stderr}");
    }
    let adopted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alloc = adopted["id"].as_str().unwrap().to_string();
    let task = |agent: &tend_tests::AgentProc| {
        agent.get_json(&format!("/v1/allocations/{alloc}"))["tasks"][0].clone()
    };
    let t = task(&agent);
    assert_eq!(
        (&t["state"], &t["pid"]),
        (&"running".into(), &pid.into()),
        "{t:#}"
    );
    let logs = agent.cli(&["logs", &alloc, "task"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "step-up\n");
    let out = agent.cli(&["stop", &alloc]);
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = wait_child(&mut child, Duration::from_secs(20));
    if status.is_none() {
        stop_client(&mut child);
    }
    // The step ended by the signal the agent's stop sent: run exits 143.
    assert_eq!(status.expect("srun outlived the stop").code(), Some(143));
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)));
    let t = task(&agent);
    assert_eq!(
        (&t["state"], &t["exit"]["signal"]),
        (&"dead".into(), &15.into()),
        "{t:#}"
    );
    drop(agent);
    c.down_with_no_container_left();
}

/// The cluster's own memory cgroup (`.ci/slurm`'s `tend-slurm-PORT`).
fn cluster_memcg(port: u16) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/memory/tend-slurm-{port}"))
}

/// `--mem` is enforced with task/cgroup: the step runs in the job's memory
/// cgroup, under the limit, with tend-spawn (which does not move a task of a
/// bundle without resources) and its task inside it; 200 MB under
/// `--mem=32M` is OOM-killed and Slurm records OUT_OF_MEMORY, the same under
/// `--mem=256M` runs to the end. `down` removes the cluster's cgroups.
#[test]
fn mem_is_enforced_on_a_step_through_tend_spawn_oci() {
    require_root!();
    if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").is_file() {
        return tend_tests::skip_or_fail("no cgroup v1 memory hierarchy");
    }
    let c = Cluster::up_with_memory(Runtime::Tend, Memory::Cgroup);
    let memcg = cluster_memcg(c.port);
    assert!(memcg.is_dir(), "{} was not made", memcg.display());
    // tail keeps a line without a newline whole: 200 MB of it. The eater
    // is the OOM killer's first choice, never slurmstepd in the same cgroup
    // (srun would wait for a step that is gone).
    let eat = "echo job=$SLURM_JOB_ID; grep memory /proc/self/cgroup; \
               echo 1000 > /proc/self/oom_score_adj; \
               head -c 200M /dev/zero | tail | wc -c";
    let out = c
        .srun(None, &["--mem=32M", "sh", "-c", eat])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let job = job_id(&out);
    // The task's memory cgroup is the step's, in the cluster's own.
    let step = format!(
        "memory:/tend-slurm-{}/slurm_localhost/uid_0/job_{job}/step_0/",
        c.port
    );
    assert!(stdout.contains(&step), "stdout: {stdout}");
    assert!(!stdout.contains("209715200"), "not killed: {stdout}");
    assert!(!out.status.success(), "srun: {stderr}");
    assert!(stderr.contains("Out Of Memory"), "srun: {stderr}");
    let (state, _) = c.scontrol_exit(job);
    assert_eq!(state, "OUT_OF_MEMORY");
    assert!(
        c.sacct_exit(job).starts_with("OUT_OF_MEMORY|"),
        "{}",
        c.sacct_exit(job)
    );

    let out = c
        .srun(None, &["--mem=256M", "sh", "-c", eat])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "srun: {stderr}");
    assert!(stdout.ends_with("209715200\n"), "stdout: {stdout}");
    let job = job_id(&out);
    let (state, exit) = c.scontrol_exit(job);
    assert_eq!((state.as_str(), exit.as_str()), ("COMPLETED", "0:0"));
    c.down_with_no_container_left();
    assert!(!memcg.exists(), "{} is left", memcg.display());
}

/// srun's stdin reaches the step through `tend-spawn oci run`.
#[test]
fn srun_stdin_reaches_a_step_through_tend_spawn_oci() {
    require_root!();
    let c = Cluster::up_with(Runtime::Tend);
    let mut child = c
        .srun(None, &["sh", "-c", "echo job=$SLURM_JOB_ID; cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(b"hi\nthere\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "srun: {stderr}");
    let job = job_id(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("job={job}\nhi\nthere\nend\n")
    );
    c.down_with_no_container_left();
}

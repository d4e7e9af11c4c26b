//! Figure 1: spawn latency of /bin/true, from request to recorded exit, and
//! its baselines (posix_spawn floor, bare isolated fork/exec, OCI runtimes).

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use tend_proto::config::{Bind, CgroupSpec, ChrootSpec, Isolation, TaskIds};

use crate::spawn::{self, World};
use crate::sys::{self, Argv, BarePlan, BARE_STEPS};

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The floor: posix_spawn(/bin/true) + waitpid, `n` times after a warm-up.
pub fn floor(n: usize, warm: usize) -> Result<Vec<f64>, String> {
    let argv = Argv::new(&["/bin/true"]).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        sys::posix_spawn_wait(&argv).map_err(|e| format!("posix_spawn /bin/true: {e}"))?;
        if i >= warm {
            out.push(ms(t));
        }
    }
    Ok(out)
}

/// Phases of 1(a), ms each: exec to StartReport, to the first connection
/// (handed over at the start: no connect, no Hello), to Exited.
pub type Phases = [Vec<f64>; 3];

/// 1(a): tend-spawn raw_exec /bin/true through the protocol. Returns the
/// latencies, per run how long after the daemon's `finished_at` the client
/// held the Exited (ms), and the phases.
pub fn direct(
    bin: &Path,
    world: &mut World,
    n: usize,
    warm: usize,
) -> Result<(Vec<f64>, Vec<f64>, Phases), String> {
    let mut lat = Vec::with_capacity(n);
    let mut notify = Vec::with_capacity(n);
    let mut phases: Phases = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..n + warm {
        let cfg = world.config("/bin/true", &[])?;
        let t = Instant::now();
        let mut l = spawn::start(bin, &cfg)?;
        let t1 = ms(t);
        let mut c = l.client(&cfg)?;
        let t2 = ms(t);
        let e = c.wait_exit()?;
        let d = ms(t);
        let got = SystemTime::now();
        if i >= warm {
            phases[0].push(t1);
            phases[1].push(t2 - t1);
            phases[2].push(d - t2);
        }
        c.release();
        l.reap_launcher();
        crate::procfs::reap(l.daemon_pid, std::time::Duration::from_secs(10));
        world.forget(&cfg);
        if e.exit_code != Some(0) {
            return Err(format!("/bin/true ended with {e:?}"));
        }
        if i >= warm {
            lat.push(d);
            if let Some(fin) = tend_proto::time::parse_rfc3339(&e.finished_at) {
                if let Ok(x) = got.duration_since(fin) {
                    notify.push(x.as_secs_f64() * 1000.0);
                }
            }
        }
    }
    Ok((lat, notify, phases))
}

/// The binds of the default chroot_env that exist on this host.
pub fn default_binds() -> Vec<String> {
    ["/bin", "/etc", "/lib", "/lib32", "/lib64", "/sbin", "/usr"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .collect()
}

/// 1(c): tend-spawn exec-driver style: chroot of the default binds (unless
/// `chroot` is false), cgroup with limits, user nobody.
pub fn isolated(
    bin: &Path,
    world: &mut World,
    cg_prefix: &str,
    chroot: bool,
    n: usize,
    warm: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    let ids = nobody_ids()?;
    for i in 0..n + warm {
        let mut cfg = world.config("/bin/true", &[])?;
        cfg.cwd = "/".into();
        cfg.isolation = Some(Isolation {
            ids: Some(ids),
            user: "nobody".into(),
            chroot: chroot.then(|| ChrootSpec {
                binds: default_binds()
                    .into_iter()
                    .map(|p| Bind {
                        source: p.clone(),
                        target: p,
                    })
                    .collect(),
            }),
        });
        cfg.cgroup = Some(CgroupSpec {
            path: format!("{cg_prefix}/c/{}.t", cfg.alloc_id),
            // As the agent does: one cgroup shared by every tend-spawn.
            daemon_path: Some(format!("{cg_prefix}/c/tend-spawn")),
            memory_bytes: Some(256 << 20),
            cpu_mhz: Some(100),
            pids_max: Some(1024),
            options: Default::default(),
        });
        let t = Instant::now();
        let mut l = spawn::start(bin, &cfg)?;
        let mut c = l.client(&cfg)?;
        let e = c.wait_exit()?;
        let d = ms(t);
        c.release();
        l.reap_launcher();
        crate::procfs::reap(l.daemon_pid, std::time::Duration::from_secs(10));
        world.forget(&cfg);
        if e.exit_code != Some(0) {
            return Err(format!("/bin/true under exec isolation ended with {e:?}"));
        }
        if i >= warm {
            out.push(d);
        }
    }
    Ok(out)
}

/// nobody's uid and gid, resolved here as the agent resolves a task's user
/// before launch: the config carries the numbers (tend-spawn reads no
/// passwd file, and the first connection and the detach in place ride only
/// on a config with them).
pub fn nobody_ids() -> Result<TaskIds, String> {
    let u = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .ok_or("no user nobody")?;
    Ok(TaskIds {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// How much of tend-spawn's isolation the bare sequence repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLevel {
    /// Cgroups, nobody; no mount namespace or chroot.
    NoChroot,
    /// Cgroups, mount namespace, read-only binds, chroot, nobody.
    Chroot,
    /// The same in a pid namespace of its own with its /proc (hidepid=2).
    PidProc,
    /// The same with /proc's masks, as tend-spawn gives a task that is not
    /// root (files under /dev/null, dirs under an empty tmpfs).
    PidProcMasks,
}

/// What the bare child needs, prepared once.
pub struct BareRig {
    hs: Vec<crate::cgroups::Hier>,
    cg_prefix: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
    root: PathBuf,
    binds: Vec<(CString, CString)>,
}

impl BareRig {
    /// The rig under `base`: its root dir with a mount point per default
    /// bind and /proc; cgroups under `cg_prefix`.
    pub fn new(base: &Path, cg_prefix: &str) -> Result<BareRig, String> {
        let hs = crate::cgroups::hierarchies();
        if hs.is_empty() {
            return Err("no cgroup hierarchy found under /sys/fs/cgroup".into());
        }
        let (uid, gid) = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
            .ok_or("no user nobody")?;
        let root = base.join("bare-root");
        let mut binds = Vec::new();
        for p in default_binds() {
            let target = root.join(p.trim_start_matches('/'));
            fs::create_dir_all(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
            binds.push((cstr(&p)?, cstr_path(&target)?));
        }
        let proc_ = root.join("proc");
        fs::create_dir_all(&proc_).map_err(|e| format!("mkdir {}: {e}", proc_.display()))?;
        Ok(BareRig {
            hs,
            cg_prefix: cg_prefix.to_string(),
            uid,
            gid,
            root,
            binds,
        })
    }

    /// One run at `level` (`i` names its cgroup): milliseconds from mkdir of
    /// the cgroups to their rmdir after the wait.
    pub fn run(&self, level: BareLevel, i: usize) -> Result<f64, String> {
        let chroot = level != BareLevel::NoChroot;
        let proc_ = match level {
            BareLevel::NoChroot | BareLevel::Chroot => None,
            BareLevel::PidProc => Some(self.proc_plan(false)?),
            BareLevel::PidProcMasks => Some(self.proc_plan(true)?),
        };
        let rel = format!("{}/bare{level:?}/i{i}", self.cg_prefix);
        let t = Instant::now();
        let fds = crate::cgroups::make_task_cgroup(&self.hs, &rel)?;
        let plan = BarePlan {
            cgroup_procs: fds,
            binds: if chroot {
                self.binds.clone()
            } else {
                Vec::new()
            },
            root: if chroot {
                cstr_path(&self.root)?
            } else {
                cstr("/")?
            },
            uid: self.uid,
            gid: self.gid,
            argv: Argv::new(&["/bin/true"]).map_err(|e| e.to_string())?,
            proc_,
        };
        let st = sys::bare_run(&plan).map_err(|e| format!("fork: {e}"))?;
        drop(plan);
        crate::cgroups::remove_tree(&self.hs, &rel);
        let d = ms(t);
        match st {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(d),
            nix::sys::wait::WaitStatus::Exited(_, c) if (101..=111).contains(&c) => {
                let step = usize::try_from(c - 100).unwrap_or(0);
                Err(format!("bare child failed at {}", BARE_STEPS[step]))
            }
            other => Err(format!("bare child: {other:?}")),
        }
    }

    fn proc_plan(&self, masks: bool) -> Result<sys::ProcPlan, String> {
        use tend_proto::config::{PROC_MASKED_DIRS, PROC_MASKED_FILES};
        let target = self.root.join("proc");
        let under = |names: &[&str]| -> Result<Vec<CString>, String> {
            if !masks {
                return Ok(Vec::new());
            }
            names.iter().map(|n| cstr_path(&target.join(n))).collect()
        };
        Ok(sys::ProcPlan {
            target: cstr_path(&target)?,
            masked_files: under(&PROC_MASKED_FILES)?,
            masked_dirs: under(&PROC_MASKED_DIRS)?,
        })
    }
}

/// The bare baseline of 1(c): per run, make a cgroup in every hierarchy with
/// the same limits, fork, join it, private mount namespace with the same
/// read-only binds, chroot, drop to nobody, exec /bin/true; wait; rmdir.
/// Without `chroot`: no mount namespace, binds or chroot.
pub fn bare(
    base: &Path,
    cg_prefix: &str,
    chroot: bool,
    n: usize,
    warm: usize,
) -> Result<Vec<f64>, String> {
    let rig = BareRig::new(base, cg_prefix)?;
    let level = if chroot {
        BareLevel::Chroot
    } else {
        BareLevel::NoChroot
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let d = rig.run(level, i)?;
        if i >= warm {
            out.push(d);
        }
    }
    Ok(out)
}

/// 1(e): what the pid namespace and /proc cost, round-robin in one run:
/// the bare sequence (chroot), the same in a pid namespace with its /proc,
/// the same with the /proc masks, tend-spawn's exec-style start (which
/// has all three), and, given `no_pid_ns_bin`, the same start by a
/// tend-spawn built without the pid namespace and /proc
/// (`bench-no-pid-namespace`). Returns the five series in that order (the
/// last empty without that build).
pub fn isolation_levels(
    bin: &Path,
    no_pid_ns_bin: Option<&Path>,
    world: &mut World,
    base: &Path,
    cg_prefix: &str,
    n: usize,
    warm: usize,
) -> Result<[Vec<f64>; 5], String> {
    let rig = BareRig::new(base, cg_prefix)?;
    let levels = [
        BareLevel::Chroot,
        BareLevel::PidProc,
        BareLevel::PidProcMasks,
    ];
    let mut out: [Vec<f64>; 5] = Default::default();
    for i in 0..n + warm {
        for (k, level) in levels.iter().enumerate() {
            let d = rig.run(*level, i)?;
            if i >= warm {
                out[k].push(d);
            }
        }
        let d = isolated(bin, world, cg_prefix, true, 1, 0)?;
        if i >= warm {
            out[3].extend(d);
        }
        if let Some(without) = no_pid_ns_bin {
            let d = isolated(without, world, cg_prefix, true, 1, 0)?;
            if i >= warm {
                out[4].extend(d);
            }
        }
    }
    Ok(out)
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|e| e.to_string())
}

fn cstr_path(p: &Path) -> Result<CString, String> {
    cstr(p.to_str().ok_or("non-UTF-8 path")?)
}

/// A busybox OCI bundle whose process is `args`.
pub fn oci_bundle(runtime: &Path, dir: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox is not installed")?;
    let rootfs = dir.join("rootfs");
    let bindir = rootfs.join("bin");
    fs::create_dir_all(&bindir).map_err(|e| format!("mkdir {}: {e}", bindir.display()))?;
    for d in ["proc", "dev", "sys", "tmp"] {
        let _ = fs::create_dir_all(rootfs.join(d));
    }
    fs::copy(&busybox, bindir.join("busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    for l in ["true", "sleep", "sh"] {
        let _ = std::os::unix::fs::symlink("busybox", bindir.join(l));
    }
    let st = Command::new(runtime)
        .arg("spec")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{} spec: {e}", runtime.display()))?;
    if !st.status.success() {
        return Err(format!(
            "{} spec: {}",
            runtime.display(),
            String::from_utf8_lossy(&st.stderr).trim()
        ));
    }
    let cfg_path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(
        &fs::read(&cfg_path).map_err(|e| format!("read {}: {e}", cfg_path.display()))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    v["process"]["terminal"] = serde_json::Value::Bool(false);
    v["process"]["args"] = serde_json::json!(args);
    v["root"]["readonly"] = serde_json::Value::Bool(true);
    fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("write {}: {e}", cfg_path.display()))?;
    Ok(dir.to_path_buf())
}

/// `<runtime> --root <state> run --bundle <bundle> <id>` of /bin/true, whole
/// process time.
pub fn oci_run(
    runtime: &Path,
    bundle: &Path,
    state: &Path,
    n: usize,
    warm: usize,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    let name = runtime
        .file_name()
        .map_or("oci".into(), |s| s.to_string_lossy().to_string());
    for i in 0..n + warm {
        let id = format!("tb{}-{name}-{i}", std::process::id());
        crate::cleanup::add_container(runtime, state, &id);
        let t = Instant::now();
        let o = Command::new(runtime)
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("exec {}: {e}", runtime.display()))?;
        let d = ms(t);
        if !o.status.success() {
            return Err(format!(
                "{name} run: {} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        if i >= warm {
            out.push(d);
        }
    }
    Ok(out)
}

/// The durable exit-file write on its own: temp file, write, fsync, rename,
/// fsync the dir (what tend-spawn does once per exit), in `dir`.
pub fn atomic_write(dir: &Path, n: usize, warm: usize) -> Result<Vec<f64>, String> {
    use std::io::Write;
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let body = [b'x'; 400];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        let tmp = dir.join("x.tmp");
        let mut f = fs::File::create(&tmp).map_err(|e| e.to_string())?;
        f.write_all(&body).map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        fs::rename(&tmp, dir.join("x")).map_err(|e| e.to_string())?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
        if i >= warm {
            out.push(ms(t));
        }
    }
    Ok(out)
}

/// 1(b) baseline: `std::process::Command::new("/bin/true").status()`, a plain
/// fork + exec + wait as a Rust program does it (inherited environment).
pub fn command_true(n: usize, warm: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        let st = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("exec /bin/true: {e}"))?;
        let d = ms(t);
        if !st.success() {
            return Err(format!("/bin/true: {st}"));
        }
        if i >= warm {
            out.push(d);
        }
    }
    Ok(out)
}

/// A static busybox under /usr, the only bind 1(d) can count on for one bind.
pub fn static_busybox() -> Result<PathBuf, String> {
    let p = ["/usr/bin/busybox", "/bin/busybox", "/usr/sbin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox is not installed (apt-get install busybox-static)")?;
    let real = fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !real.starts_with("/usr") {
        return Err(format!(
            "{} is not under /usr: a 1-bind root (/usr) cannot hold it",
            real.display()
        ));
    }
    let elf = fs::read(&real).map_err(|e| format!("read {}: {e}", real.display()))?;
    if has_interp(&elf)? {
        return Err(format!(
            "{} is dynamically linked: a 1-bind root (/usr) cannot hold its loader (apt-get install busybox-static)",
            real.display()
        ));
    }
    Ok(real)
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header.
fn has_interp(elf: &[u8]) -> Result<bool, String> {
    let bad = || "busybox: not a 64-bit little-endian ELF file".to_string();
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let phoff = elf
        .get(0x20..0x28)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(bad)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    for k in 0..phnum {
        const PT_INTERP: u32 = 3;
        if u32_at(phoff + k * phentsize).ok_or_else(bad)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The binds of 1(d) for `n` binds: `/usr` first (enough for a static
/// busybox), then the rest of the default chroot_env that exists, padded
/// with more read-only binds of `/usr/share` at `/extraK`.
pub fn binds_of(n: usize) -> Vec<Bind> {
    let order = ["/usr", "/bin", "/lib", "/etc", "/lib64", "/sbin", "/lib32"];
    let mut binds: Vec<Bind> = order
        .iter()
        .filter(|p| Path::new(p).exists())
        .take(n)
        .map(|p| Bind {
            source: p.to_string(),
            target: p.to_string(),
        })
        .collect();
    let mut extra = 0;
    while binds.len() < n {
        extra += 1;
        binds.push(Bind {
            source: "/usr/share".into(),
            target: format!("/extra{extra}"),
        });
    }
    binds
}

/// Per kind of run of 1(d): exec -> StartReport, and exec -> Exited (ms).
#[derive(Debug, Default, Clone)]
pub struct StartExit {
    /// exec tend-spawn -> StartReport read.
    pub start: Vec<f64>,
    /// exec tend-spawn -> Exited at the client.
    pub total: Vec<f64>,
}

/// 1(d): `busybox true` through tend-spawn, raw_exec and exec-driver style
/// (user nobody, cgroup with limits, a chroot of `binds_of(k)` for each k in
/// `sizes`), round-robin within each of the `n + warm` rounds so that load on
/// the machine falls on every kind alike. Index 0 of the result is raw_exec,
/// then one per size.
pub fn chroot_sizes(
    bin: &Path,
    world: &mut World,
    cg_prefix: &str,
    busybox: &Path,
    sizes: &[usize],
    n: usize,
    warm: usize,
) -> Result<Vec<StartExit>, String> {
    let bb = busybox.to_str().ok_or("non-UTF-8 busybox path")?;
    let mut out = vec![StartExit::default(); sizes.len() + 1];
    let ids = nobody_ids()?;
    for i in 0..n + warm {
        for (k, slot) in out.iter_mut().enumerate() {
            let mut cfg = world.config(bb, &["true"])?;
            if k > 0 {
                cfg.cwd = "/".into();
                cfg.isolation = Some(Isolation {
                    ids: Some(ids),
                    user: "nobody".into(),
                    chroot: Some(ChrootSpec {
                        binds: binds_of(sizes[k - 1]),
                    }),
                });
                cfg.cgroup = Some(CgroupSpec {
                    path: format!("{cg_prefix}/d/{}/t", cfg.alloc_id),
                    daemon_path: Some(format!("{cg_prefix}/d/{}/t.tend-spawn", cfg.alloc_id)),
                    memory_bytes: Some(256 << 20),
                    cpu_mhz: Some(100),
                    pids_max: Some(1024),
                    options: Default::default(),
                });
            }
            let t = Instant::now();
            let mut l = spawn::start(bin, &cfg)?;
            let s = ms(t);
            let mut c = l.client(&cfg)?;
            let e = c.wait_exit()?;
            let d = ms(t);
            c.release();
            l.reap_launcher();
            crate::procfs::reap(l.daemon_pid, std::time::Duration::from_secs(10));
            world.forget(&cfg);
            if e.exit_code != Some(0) {
                let kind = if k == 0 {
                    "raw_exec".to_string()
                } else {
                    format!("exec with {} binds", sizes[k - 1])
                };
                return Err(format!("busybox true under {kind} ended with {e:?}"));
            }
            if i >= warm {
                slot.start.push(s);
                slot.total.push(d);
            }
        }
    }
    Ok(out)
}

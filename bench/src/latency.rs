//! Figure 1: spawn latency of /bin/true, from request to recorded exit, and
//! its baselines (posix_spawn floor, bare isolated fork/exec, OCI runtimes).

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use tend_proto::config::{Bind, CgroupSpec, ChrootSpec, Isolation};

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

/// Phases of 1(a), ms each: exec to StartReport, to Welcome, to Exited.
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
        let mut c = spawn::Client::connect(&cfg)?;
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
    for i in 0..n + warm {
        let mut cfg = world.config("/bin/true", &[])?;
        cfg.cwd = "/".into();
        cfg.isolation = Some(Isolation {
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
            path: format!("{cg_prefix}/c/{}/t", cfg.alloc_id),
            // As the agent does: one cgroup shared by every tend-spawn.
            daemon_path: Some(format!("{cg_prefix}/c/tend-spawn")),
            memory_bytes: Some(256 << 20),
            cpu_mhz: Some(100),
            pids_max: Some(1024),
        });
        let t = Instant::now();
        let mut l = spawn::start(bin, &cfg)?;
        let mut c = spawn::Client::connect(&cfg)?;
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
    let root_c = if chroot {
        cstr_path(&root)?
    } else {
        cstr("/")?
    };
    if !chroot {
        binds.clear();
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let rel = format!("{cg_prefix}/bare{}/i{i}", u8::from(chroot));
        let t = Instant::now();
        let fds = crate::cgroups::make_task_cgroup(&hs, &rel)?;
        let plan = BarePlan {
            cgroup_procs: fds,
            binds: binds.clone(),
            root: root_c.clone(),
            uid,
            gid,
            argv: Argv::new(&["/bin/true"]).map_err(|e| e.to_string())?,
        };
        let st = sys::bare_run(&plan).map_err(|e| format!("fork: {e}"))?;
        drop(plan);
        crate::cgroups::remove_tree(&hs, &rel);
        let d = ms(t);
        match st {
            nix::sys::wait::WaitStatus::Exited(_, 0) => {}
            nix::sys::wait::WaitStatus::Exited(_, c) if (101..=109).contains(&c) => {
                let step = usize::try_from(c - 100).unwrap_or(0);
                return Err(format!("bare child failed at {}", BARE_STEPS[step]));
            }
            other => return Err(format!("bare child: {other:?}")),
        }
        if i >= warm {
            out.push(d);
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

//! Figure 2: memory of idle tend-spawn daemons (and of conmon beside them).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::procfs::{footprint, Footprint};
use crate::spawn::{self, World};

/// Footprints of the daemons of `k` concurrent `sleep 600` tasks, taken once
/// all run; the daemons are stopped after.
pub fn idle_daemons(bin: &Path, world: &mut World, k: usize) -> Result<Vec<Footprint>, String> {
    let mut pids = Vec::with_capacity(k);
    let mut cfgs = Vec::with_capacity(k);
    let res = (|| {
        for _ in 0..k {
            let cfg = world.config("/bin/sleep", &["600"])?;
            let mut l = spawn::start(bin, &cfg)?;
            l.reap_launcher();
            pids.push(l.daemon_pid);
            cfgs.push(cfg);
        }
        // Let every daemon reach its idle poll loop.
        sleep(Duration::from_millis(200));
        pids.iter()
            .map(|&p| footprint(p))
            .collect::<Result<Vec<_>, _>>()
    })();
    for &p in &pids {
        spawn::stop_daemon(p);
    }
    for c in &cfgs {
        world.forget(c);
    }
    res
}

/// conmon supervising a runc container of `sleep 600`, as podman runs it; the
/// footprint of the conmon process. Everything is torn down after.
pub fn conmon(conmon: &Path, runc: &Path, dir: &Path) -> Result<Footprint, String> {
    let bundle = crate::latency::oci_bundle(runc, &dir.join("cm-bundle"), &["/bin/sleep", "600"])?;
    let state = dir.join("cm-state");
    let exits = dir.join("cm-exits");
    let socks = dir.join("cm-sock");
    for d in [&state, &exits, &socks] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let cid = format!("tbcm{}", std::process::id());
    crate::cleanup::add_container(runc, &state, &cid);
    let pidfile = dir.join("cm.pid");
    let ctr_pid = dir.join("ctr.pid");
    let o = Command::new(conmon)
        .args(["--cid", &cid, "--cuuid", &cid, "--name", &cid])
        .arg("--runtime")
        .arg(runc)
        .arg("--bundle")
        .arg(&bundle)
        .arg("--log-path")
        .arg(dir.join("cm.log"))
        .arg("--exit-dir")
        .arg(&exits)
        .arg("--socket-dir-path")
        .arg(&socks)
        .arg("--container-pidfile")
        .arg(&ctr_pid)
        .arg("--conmon-pidfile")
        .arg(&pidfile)
        .args(["--runtime-arg", "--root", "--runtime-arg"])
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("exec conmon: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "conmon: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let end = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(p) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break p;
        }
        if Instant::now() > end {
            return Err("conmon wrote no pid file in 10 s".into());
        }
        sleep(Duration::from_millis(10));
    };
    crate::cleanup::add_pid(pid);
    // conmon's `runc create` is done when the container's pid file exists.
    let end = Instant::now() + Duration::from_secs(10);
    while !ctr_pid.exists() {
        if Instant::now() > end {
            let log = fs::read_to_string(dir.join("cm.log")).unwrap_or_default();
            return Err(format!(
                "conmon: no container pid file after 10 s {}",
                log.trim()
            ));
        }
        sleep(Duration::from_millis(10));
    }
    let st = Command::new(runc)
        .arg("--root")
        .arg(&state)
        .args(["start", &cid])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("runc start: {e}"))?;
    sleep(Duration::from_millis(300));
    let f = footprint(pid);
    let _ = Command::new(runc)
        .arg("--root")
        .arg(&state)
        .args(["delete", "-f", &cid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    crate::procfs::reap(pid, Duration::from_secs(5));
    if !st.status.success() {
        return Err(format!(
            "runc start under conmon: {}",
            String::from_utf8_lossy(&st.stderr).trim()
        ));
    }
    f
}

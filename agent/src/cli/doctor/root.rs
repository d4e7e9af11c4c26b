//! `tend doctor` for the common install: the agent runs as root and execs
//! `tend-spawn` as root. What matters then is that nobody else can change
//! what root runs or reads: the binary and every dir above it, the data and
//! run dirs; and that the drivers the config enables can work (the cgroup
//! parent for exec, the engine for docker).

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Hierarchies, Report};

/// What a root agent will use, from its config and the command line.
#[derive(Debug, Clone)]
pub struct RootAgent {
    /// The tend-spawn it execs.
    pub spawn_bin: PathBuf,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its run dir.
    pub run_dir: PathBuf,
    /// The exec driver's cgroup parent, when that driver is on.
    pub exec: Option<String>,
    /// The engine's socket, when the docker driver is on.
    pub docker: Option<PathBuf>,
}

/// Check `agent`; the problems counted in `report`.
pub(super) fn check(report: &mut Report<'_>, agent: &RootAgent) {
    check_spawn_bin(report, &agent.spawn_bin);
    for (what, dir) in [("data dir", &agent.data_dir), ("run dir", &agent.run_dir)] {
        check_dir(report, what, dir);
    }
    if let Some(parent) = &agent.exec {
        // The check the agent makes at its start.
        match Hierarchies::detect().and_then(|h| h.check_parent(parent)) {
            Ok(()) => report.ok(format!(
                "exec: cgroup parent {parent:?} can hold tasks (memory, pids, cpu)"
            )),
            Err(e) => report.problem(format!("exec: {e}")),
        }
    }
    if let Some(endpoint) = &agent.docker {
        match ping_engine(endpoint) {
            Ok(()) => report.ok(format!(
                "docker: the engine at {} answers",
                endpoint.display()
            )),
            // Not a fault of the install: docker tasks wait for an engine.
            Err(e) => report.note(format!(
                "docker: no engine answers at {}: {e}: docker tasks fail until one does \
                 (or set plugin \"docker\" {{ enabled = false }})",
                endpoint.display()
            )),
        }
    }
}

/// The binary root execs: a regular file, root's, executable, and neither it
/// nor a dir above it writable by anyone but root (a sticky dir such as /tmp
/// is fine: others cannot replace root's entries in it).
fn check_spawn_bin(report: &mut Report<'_>, bin: &Path) {
    let shown = bin.display();
    let meta =
        match std::fs::canonicalize(bin).and_then(|real| Ok((std::fs::metadata(&real)?, real))) {
            Ok(m) => m,
            Err(e) => {
                report.problem(format!("tend-spawn {shown}: {e}"));
                return;
            }
        };
    let (meta, real) = meta;
    if !meta.is_file() {
        report.problem(format!("tend-spawn {shown} is not a regular file"));
        return;
    }
    let mode = meta.mode() & 0o7777;
    let mut fine = true;
    if meta.uid() != 0 {
        fine = false;
        report.problem(format!(
            "tend-spawn {shown} is owned by uid {}: the agent runs it as root, so that user \
             could become root: chown root {shown}",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        fine = false;
        report.problem(format!(
            "tend-spawn {shown} has mode {mode:04o}: writable by group or other, who could \
             become root: chmod go-w {shown}"
        ));
    }
    if mode & 0o100 == 0 {
        fine = false;
        report.problem(format!(
            "tend-spawn {shown} has mode {mode:04o}: not executable: chmod u+x {shown}"
        ));
    }
    for dir in real.ancestors().skip(1) {
        if let Some(line) = unsafe_dir(dir) {
            fine = false;
            report.problem(format!("tend-spawn {shown}: {line}"));
        }
    }
    if fine {
        report.ok(format!(
            "tend-spawn {shown}: root's, mode {mode:04o}, only root can change it"
        ));
    }
}

/// Why `dir` lets someone other than root replace what is in it, if it does.
fn unsafe_dir(dir: &Path) -> Option<String> {
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 {
        return Some(format!(
            "{} is owned by uid {}, not root: chown root {}",
            dir.display(),
            meta.uid(),
            dir.display()
        ));
    }
    let sticky = mode & 0o1000 != 0;
    (mode & 0o022 != 0 && !sticky).then(|| {
        format!(
            "{} has mode {mode:04o}: others may replace what is in it: chmod go-w {}",
            dir.display(),
            dir.display()
        )
    })
}

/// The agent's data or run dir: root's and closed to others when it exists,
/// else its parent exists (the agent makes it, 0700).
fn check_dir(report: &mut Report<'_>, what: &str, dir: &Path) {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => report.problem(format!("{what} {shown} is not a dir")),
        Ok(m) => {
            let mode = m.mode() & 0o7777;
            if m.uid() != 0 {
                report.problem(format!(
                    "{what} {shown} is owned by uid {}: it holds what root's agent \
                     trusts: chown root {shown}",
                    m.uid()
                ));
            } else if mode & 0o022 != 0 {
                report.problem(format!(
                    "{what} {shown} has mode {mode:04o}: writable by others: chmod 0700 {shown}"
                ));
            } else {
                report.ok(format!("{what} {shown}: root's, mode {mode:04o}"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.parent().is_some_and(Path::is_dir) {
                report.ok(format!("{what} {shown} will be made by the agent (0700)"));
            } else {
                report.problem(format!(
                    "{what} {shown}: neither it nor its parent exists: install -d -m 0700 {shown}"
                ));
            }
        }
        Err(e) => report.problem(format!("{what} {shown}: {e}")),
    }
}

/// `GET /_ping` on the engine's socket: Ok when it answers 200.
fn ping_engine(endpoint: &Path) -> Result<(), String> {
    let text = |e: std::io::Error| e.to_string();
    let mut s = std::os::unix::net::UnixStream::connect(endpoint).map_err(text)?;
    let t = Some(Duration::from_secs(3));
    s.set_read_timeout(t).map_err(text)?;
    s.set_write_timeout(t).map_err(text)?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(text)?;
    let mut reply = Vec::new();
    let _ = s.take(4096).read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    let status = reply.lines().next().unwrap_or("");
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ if status.is_empty() => Err("no answer".into()),
        _ => Err(format!("it answered {status:?}")),
    }
}

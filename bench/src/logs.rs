//! Figure 4: log throughput through tend-spawn's rotating pipe, against the
//! same command writing to a file.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use tend_proto::config::LogConfig;

use crate::spawn::{self, World};

/// One run through tend-spawn: (seconds from request to Exited, daemon CPU s).
pub fn through_spawn(bin: &Path, world: &mut World, bytes: u64) -> Result<(f64, f64), String> {
    let n = bytes.to_string();
    let mut cfg = world.config("/usr/bin/head", &["-c", &n, "/dev/zero"])?;
    cfg.logs = LogConfig {
        max_files: 20,
        max_file_size: 100 * 1024 * 1024,
    };
    let t = Instant::now();
    let (e, cpu) = spawn::run_to_exit(bin, &cfg)?;
    let secs = t.elapsed().as_secs_f64();
    let kept: u64 = fs::read_dir(cfg.log_dir())
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    // The log files, not their time indexes (`t.stdout.idx`, ...).
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("t.stdout") && !name.ends_with(".idx")
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    world.forget(&cfg);
    if e.exit_code != Some(0) {
        return Err(format!("head ended with {e:?}"));
    }
    if kept != bytes {
        return Err(format!("the logs hold {kept} bytes, not {bytes}"));
    }
    Ok((secs, cpu))
}

/// The baseline: `head -c N /dev/zero > file` (head's stdout is the file).
pub fn straight(dir: &Path, bytes: u64) -> Result<f64, String> {
    let path = dir.join("straight.out");
    let f = fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let t = Instant::now();
    let st = Command::new("/usr/bin/head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::from(f))
        .status()
        .map_err(|e| format!("head: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let _ = fs::remove_file(&path);
    if !st.success() {
        return Err(format!("head: {st}"));
    }
    Ok(secs)
}

//! Exec `tend-spawn`, hand it the [`SpawnConfig`] as one frame on stdin, and read
//! the one [`StartReport`] frame it writes to stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tend_proto::frame::{FrameDecoder, FrameError};
use tend_proto::{SpawnConfig, StartReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long tend-spawn may take to report; it never should come near.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why tend-spawn gave no start report.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// There is no tend-spawn where the agent looked.
    #[error(
        "cannot execute tend-spawn: {looked}; build it with `cargo build --release` \
         (it lands beside tend in target/release), or give its path with --spawn-bin \
         or TEND_SPAWN_BIN"
    )]
    NotFound {
        /// Where the agent looked, in words.
        looked: String,
    },
    /// The binary could not be executed.
    #[error("cannot execute {bin}: {source}")]
    Exec {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config could not be encoded or sent.
    #[error("cannot send the spawn config to {bin}: {source}")]
    Send {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// The error.
        source: FrameError,
    },
    /// tend-spawn ended or closed its stdout without a report.
    #[error("{bin} gave no start report{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    NoReport {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The report did not decode.
    #[error("bad start report from {bin}: {source}")]
    BadReport {
        /// The tend-spawn binary.
        bin: PathBuf,
        /// The error.
        source: FrameError,
    },
    /// No report within the time limit.
    #[error("{bin} gave no start report within {}s", REPORT_TIMEOUT.as_secs())]
    Timeout {
        /// The tend-spawn binary.
        bin: PathBuf,
    },
}

/// Where the agent finds `tend-spawn`: `$TEND_SPAWN_BIN`, else next to its own
/// executable, else on PATH.
pub fn default_spawn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TEND_SPAWN_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let cand = dir.join("tend-spawn");
            if cand.exists() {
                return cand;
            }
        }
    }
    PathBuf::from("tend-spawn")
}

/// Where the agent looked for `bin` when it is not there, for the error: the
/// bare name [`default_spawn_bin`] falls back to means neither beside the
/// agent's executable nor on PATH.
fn where_looked(bin: &Path) -> String {
    if bin.components().count() > 1 || bin.is_absolute() {
        return format!("{} does not exist", bin.display());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(bin)))
        .map_or_else(String::new, |p| format!("{} nor ", p.display()));
    format!("no {beside}{} on PATH", bin.display())
}

/// Start one task through `bin`: exec it with an empty environment (nothing of the
/// task or the agent reaches its /proc/PID/environ), write `config` on its stdin,
/// and return its report. A `Failed` report is a normal outcome, not an error.
pub async fn launch(bin: &Path, config: &SpawnConfig) -> Result<StartReport, LaunchError> {
    let bytes = config.to_frame().map_err(|source| LaunchError::Send {
        bin: bin.to_path_buf(),
        source,
    })?;
    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LaunchError::NotFound {
                    looked: where_looked(bin),
                }
            } else {
                LaunchError::Exec {
                    bin: bin.to_path_buf(),
                    source,
                }
            }
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let bin_owned = bin.to_path_buf();
    let io = async move {
        if let Err(e) = stdin.write_all(&bytes).await {
            // A daemon that refused the config early may have closed stdin; its
            // report (or stderr) says why, so read on.
            tracing::debug!(error = %e, "writing spawn config");
        }
        drop(stdin);
        let mut dec = FrameDecoder::new();
        let mut buf = [0u8; 512];
        loop {
            if let Some(f) = dec.next_frame().map_err(|source| LaunchError::BadReport {
                bin: bin_owned.clone(),
                source,
            })? {
                return f
                    .decode::<StartReport>()
                    .map_err(|source| LaunchError::BadReport {
                        bin: bin_owned.clone(),
                        source,
                    });
            }
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let mut err = String::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut err))
                        .await;
                return Err(LaunchError::NoReport {
                    bin: bin_owned.clone(),
                    stderr: err.trim().to_string(),
                });
            }
            dec.push(&buf[..n]);
        }
    };
    let result = match tokio::time::timeout(REPORT_TIMEOUT, io).await {
        Ok(r) => r,
        Err(_) => Err(LaunchError::Timeout {
            bin: bin.to_path_buf(),
        }),
    };
    // The first process exits right after the double fork; reap it.
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    result
}

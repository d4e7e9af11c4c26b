//! What went wrong in a cgroup operation, naming the file or dir.

use std::io;
use std::path::PathBuf;

use nix::unistd::Pid;

use nix::errno::Errno;

/// What went wrong, naming the file or dir; io errors are kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup parent cannot hold tasks (see [`crate::Hierarchies::check_parent`]).
    #[error("cgroup parent {dir}: {reason}")]
    ParentUnusable {
        /// The parent's dir in the hierarchy at fault.
        dir: PathBuf,
        /// What is missing, and what to do.
        reason: String,
    },
    /// Writing a control file failed.
    #[error("cgroup: write {}: {}", .path.display(), errno_text(.source))]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading a control file failed.
    #[error("cgroup: read {}: {}", .path.display(), errno_text(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Making a cgroup dir failed.
    #[error("cgroup: mkdir {}: {}", .path.display(), errno_text(.source))]
    Mkdir {
        /// The dir.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Removing a cgroup dir failed.
    #[error("cgroup: rmdir {}: {}", .path.display(), errno_text(.source))]
    Rmdir {
        /// The dir.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A control file holds something we cannot read as expected.
    #[error("cgroup: parse {}: {reason}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No cgroup hierarchy is mounted under the root.
    #[error("cgroup: no cgroup hierarchy found under {}", .root.display())]
    NoHierarchy {
        /// The root searched.
        root: PathBuf,
    },
    /// A limit needs a controller that this host does not offer.
    #[error("cgroup: controller {controller} is not available under {}", .root.display())]
    ControllerMissing {
        /// The controller.
        controller: &'static str,
        /// The root searched.
        root: PathBuf,
    },
    /// The relative cgroup path is not a plain relative path.
    #[error("cgroup: bad path {path:?}: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The cgroup holds the calling process: killing everything would kill us.
    #[error("cgroup: {}: holds this process ({pid}); refusing to kill it", .path.display())]
    HoldsSelf {
        /// The cgroup dir.
        path: PathBuf,
        /// Our pid.
        pid: Pid,
    },
    /// Sending SIGKILL failed for another reason than the process being gone.
    #[error("cgroup: kill {pid}: {source}")]
    Kill {
        /// The process.
        pid: Pid,
        /// Why.
        source: Errno,
    },
    /// Processes were still in the cgroup after every round of killing.
    #[error("cgroup: {}: processes left after kill: {pids:?}", .path.display())]
    KillTimeout {
        /// The cgroup dir.
        path: PathBuf,
        /// Who is left.
        pids: Vec<Pid>,
    },
}

/// "Permission denied" rather than "Permission denied (os error 13)": one line a
/// person reads, with the path in front of it.
pub(crate) fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

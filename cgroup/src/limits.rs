//! The task's limits, written on create: the layout's own files (see [`crate::v1`]
//! and [`crate::v2`]), and the IO weight both share.

use std::path::{Path, PathBuf};

use tend_proto::config::CgroupSpec;

use crate::fs::write_file;
use crate::{Mode, Result, TaskCgroup};

impl TaskCgroup {
    pub(crate) fn set_limits(&self, spec: &CgroupSpec) -> Result<()> {
        match self.mode {
            Mode::V1 | Mode::Hybrid => self.set_limits_v1(spec),
            Mode::V2 => self.set_limits_v2(spec),
        }
    }

    /// Write an IO weight to the first of `files` the kernel offers; with none
    /// (no IO controller, or an IO scheduler without weights) only a warning:
    /// a weight is a preference, not a limit the task may count on.
    pub(crate) fn write_weight(&self, files: Option<&[(PathBuf, u64)]>, want: &str) -> Result<()> {
        match files.into_iter().flatten().find(|(f, _)| f.is_file()) {
            Some((file, value)) => write_file(file, &io_weight_text(file, *value)),
            None => {
                tracing::warn!(
                    cgroup = %self.rel.display(),
                    "cgroup: io_weight not set: no {want} (the IO controller or a weight-aware IO scheduler is missing)"
                );
                Ok(())
            }
        }
    }
}

/// What an IO weight file takes: `default N` for the v2 files (a bare N means
/// the same to io.weight, but io.bfq.weight wants the keyword on old kernels).
pub(crate) fn io_weight_text(file: &Path, value: u64) -> String {
    match file.file_name().and_then(|n| n.to_str()) {
        Some("io.weight" | "io.bfq.weight") => format!("default {value}"),
        _ => value.to_string(),
    }
}

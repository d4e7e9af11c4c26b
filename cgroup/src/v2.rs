//! The v2 limit files, after enabling the controllers in the ancestors'
//! `cgroup.subtree_control`.

use tend_proto::config::CgroupSpec;

use crate::fs::{read_file, write_file};
use crate::v1::cpu_shares;
use crate::{CgroupError, Result, TaskCgroup, MAX_SHARES, MIN_SHARES};

impl TaskCgroup {
    pub(crate) fn set_limits_v2(&self, spec: &CgroupSpec) -> Result<()> {
        // On v2 every controller's files are in the one dir.
        let Some(dir) = self.unified.as_deref() else {
            return Ok(());
        };
        self.enable_v2_controllers(spec)?;
        if let Some(bytes) = spec.memory_bytes {
            write_file(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.is_file() {
                write_file(&swap, "0")?;
            } else {
                tracing::debug!(path = %swap.display(), "cgroup: no swap accounting");
            }
        }
        if let Some(mhz) = spec.cpu_mhz {
            write_file(
                &dir.join("cpu.weight"),
                &cpu_weight(cpu_shares(mhz)).to_string(),
            )?;
        }
        if let Some(max) = spec.pids_max {
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        let o = &spec.options;
        if let Some(soft) = o.memory_soft_bytes {
            write_file(&dir.join("memory.low"), &soft.to_string())?;
        }
        if let Some(q) = o.cpu_quota {
            write_file(
                &dir.join("cpu.max"),
                &format!("{} {}", q.quota_us, q.period_us),
            )?;
        }
        if let Some(w) = o.io_weight {
            let w = u64::from(w);
            let files = [(dir.join("io.weight"), w), (dir.join("io.bfq.weight"), w)];
            self.write_weight(Some(&files), "io.weight")?;
        }
        if o.oom_kill_group {
            write_file(&dir.join("memory.oom.group"), "1")?;
        }
        Ok(())
    }

    /// v2 gives a cgroup a controller's files only when every ancestor enables
    /// it in `cgroup.subtree_control`. memory (OOM counter, usage) and pids
    /// (count) are wanted always, cpu only for a CPU limit; one a limit needs
    /// but the host lacks is an error, one only wanted for stats is skipped.
    pub(crate) fn enable_v2_controllers(&self, spec: &CgroupSpec) -> Result<()> {
        let Some(mount) = self.dirs.first().map(|(m, _)| m) else {
            return Ok(());
        };
        let available_path = mount.join("cgroup.controllers");
        let available = read_file(&available_path)?;
        let available: Vec<&str> = available.split_whitespace().collect();
        let wanted = [
            ("memory", spec.memory_bytes.is_some()),
            ("pids", spec.pids_max.is_some()),
            (
                "cpu",
                spec.cpu_mhz.is_some() || spec.options.cpu_quota.is_some(),
            ),
            ("io", false),
        ];
        let mut enable = Vec::new();
        for (name, needed) in wanted {
            let optional = match name {
                "cpu" => false,
                // Where the host has it: the task's io.stat (its bytes read
                // and written in stats) and io.weight need it; a missing one
                // is never a reason to refuse the task (an io_weight without
                // it is a warning, set_limits_v2).
                _ => true,
            };
            if available.contains(&name) {
                if needed || optional {
                    enable.push(name);
                }
            } else if needed {
                return Err(CgroupError::ControllerMissing {
                    controller: name,
                    root: mount.clone(),
                });
            }
        }
        // Every ancestor of the leaf, from the mount point down.
        let mut dir = mount.clone();
        for comp in self.rel.components() {
            let control = dir.join("cgroup.subtree_control");
            let on = read_file(&control)?;
            let on: Vec<&str> = on.split_whitespace().collect();
            // Only what is missing: a write to a cgroup with processes in it
            // fails (no internal processes), even when it changes nothing.
            let missing: Vec<String> = enable
                .iter()
                .filter(|c| !on.contains(c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                write_file(&control, &missing.join(" "))?;
            }
            dir.push(comp);
        }
        Ok(())
    }
}

/// v2 cpu.weight from v1 shares, runc's mapping of [2, 262144] onto [1, 10000].
pub(crate) fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    (1 + ((shares - 2) * 9999) / 262_142).clamp(1, 10_000)
}

//! The v1 limit files: memory (and memsw where swap is accounted), cpu.shares,
//! CFS quota, blkio weight, pids.

use tend_proto::config::CgroupSpec;

use crate::fs::{read_u64, write_file};
use crate::{Controller, Result, TaskCgroup, MAX_SHARES, MIN_SHARES};

impl TaskCgroup {
    pub(crate) fn set_limits_v1(&self, spec: &CgroupSpec) -> Result<()> {
        if let Some(bytes) = spec.memory_bytes {
            let dir = self.need(Controller::Memory)?;
            let limit = dir.join("memory.limit_in_bytes");
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let value = bytes.to_string();
            if memsw.is_file() {
                // The kernel keeps memsw >= limit at every moment: lower the
                // limit first, but raise memsw first.
                let current_memsw = read_u64(&memsw)?;
                if bytes > current_memsw {
                    write_file(&memsw, &value)?;
                    write_file(&limit, &value)?;
                } else {
                    write_file(&limit, &value)?;
                    write_file(&memsw, &value)?;
                }
            } else {
                // No swap accounting on this kernel: memsw cannot be capped.
                tracing::debug!(path = %memsw.display(), "cgroup: no swap accounting");
                write_file(&limit, &value)?;
            }
        }
        if let Some(mhz) = spec.cpu_mhz {
            let dir = self.need(Controller::Cpu)?;
            write_file(&dir.join("cpu.shares"), &cpu_shares(mhz).to_string())?;
        }
        if let Some(max) = spec.pids_max {
            let dir = self.need(Controller::Pids)?;
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        let o = &spec.options;
        if let Some(soft) = o.memory_soft_bytes {
            let dir = self.need(Controller::Memory)?;
            write_file(&dir.join("memory.soft_limit_in_bytes"), &soft.to_string())?;
        }
        if let Some(q) = o.cpu_quota {
            let dir = self.need(Controller::Cpu)?;
            // The period first: the quota is checked against it.
            write_file(&dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
            write_file(&dir.join("cpu.cfs_quota_us"), &q.quota_us.to_string())?;
        }
        if let Some(w) = o.io_weight {
            let files = self.dir_of(Controller::Blkio).map(|d| {
                [
                    (d.join("blkio.weight"), blkio_weight(w)),
                    (d.join("blkio.bfq.weight"), blkio_weight(w)),
                ]
            });
            self.write_weight(files.as_ref().map(|f| f.as_slice()), "blkio.weight")?;
        }
        if o.oom_kill_group {
            tracing::warn!(
                "cgroup: oom_kill_group needs cgroup v2 (memory.oom.group); this host is v1: an OOM kills one process"
            );
        }
        Ok(())
    }
}

/// v1 cpu.shares from MHz, within what the kernel accepts.
pub(crate) fn cpu_shares(mhz: u64) -> u64 {
    mhz.clamp(MIN_SHARES, MAX_SHARES)
}

/// v1 blkio.weight (10-1000) from a v2-style io_weight (1-10000), linearly.
pub(crate) fn blkio_weight(w: u16) -> u64 {
    10 + (u64::from(w).clamp(1, 10_000) - 1) * 990 / 9999
}

//! A container's figures from the engine's own stats (`GET
//! /containers/{id}/stats?stream=false&one-shot=true`), in the shape the
//! supervisor gives for exec tasks. The engine has no PSI: those stay None.

use bollard::models::{ContainerBlkioStatEntry, ContainerStatsResponse};
use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;
use tend_proto::msg::{CgroupStats, CpuStats, IoStats, MemoryStats};

use super::{DockerDriver, DockerError};

impl DockerDriver {
    /// One sample of the container's stats; None when it is gone.
    pub async fn stats(&self, id: &str) -> Result<Option<CgroupStats>, DockerError> {
        let opts = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut s = self.engine().await?.stats(id, Some(opts));
        match s.next().await {
            Some(Ok(r)) => Ok(Some(from_engine(&r))),
            Some(Err(e)) if super::status_of(&e) == Some(404) => Ok(None),
            Some(Err(e)) => Err(DockerError::engine("stats of container", id, e)),
            None => Ok(None),
        }
    }
}

/// The engine's answer as [`CgroupStats`]: ns become µs; memory.stat keys are
/// v2's (`anon`, `file`) or v1's (`total_rss`, `total_cache`), which also
/// tells the hierarchy.
pub fn from_engine(r: &ContainerStatsResponse) -> CgroupStats {
    let us = |ns: Option<u64>| ns.map(|n| n / 1000);
    let cpu = r.cpu_stats.as_ref();
    let usage = cpu.and_then(|c| c.cpu_usage.as_ref());
    let throttling = cpu.and_then(|c| c.throttling_data.as_ref());
    let mem = r.memory_stats.as_ref();
    let stat = |key: &str| {
        mem.and_then(|m| m.stats.as_ref())
            .and_then(|s| s.get(key).copied())
    };
    let cgroup_version = match (stat("anon"), stat("total_rss")) {
        (Some(_), _) => Some(2),
        (None, Some(_)) => Some(1),
        (None, None) => None,
    };
    let io = r
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_deref());
    CgroupStats {
        cgroup_version,
        cpu: CpuStats {
            usage_us: us(usage.and_then(|u| u.total_usage)),
            user_us: us(usage.and_then(|u| u.usage_in_usermode)),
            system_us: us(usage.and_then(|u| u.usage_in_kernelmode)),
            periods: throttling.and_then(|t| t.periods),
            throttled_periods: throttling.and_then(|t| t.throttled_periods),
            throttled_us: us(throttling.and_then(|t| t.throttled_time)),
        },
        memory: MemoryStats {
            current: mem.and_then(|m| m.usage),
            peak: mem.and_then(|m| m.max_usage),
            limit: mem.and_then(|m| m.limit),
            anon: stat("anon").or_else(|| stat("total_rss")),
            file: stat("file").or_else(|| stat("total_cache")),
            swap: stat("total_swap"),
        },
        pids: r.pids_stats.as_ref().and_then(|p| p.current),
        io: IoStats {
            read_bytes: io.map(|e| op_bytes(e, "read")),
            write_bytes: io.map(|e| op_bytes(e, "write")),
        },
        psi: Default::default(),
    }
}

/// The bytes of one op ("read", "write"; v1 writes "Read") over every device.
fn op_bytes(entries: &[ContainerBlkioStatEntry], op: &str) -> u64 {
    entries
        .iter()
        .filter(|e| e.op.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(op)))
        .filter_map(|e| e.value)
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_stats_of_a_v2_host() {
        let r: ContainerStatsResponse = serde_json::from_str(
            r#"{
              "cpu_stats": {"cpu_usage": {"total_usage": 2500000000, "usage_in_usermode": 2000000000, "usage_in_kernelmode": 500000000},
                            "throttling_data": {"periods": 4, "throttled_periods": 1, "throttled_time": 7000}},
              "memory_stats": {"usage": 52428800, "limit": 268435456, "stats": {"anon": 50331648, "file": 2097152}},
              "pids_stats": {"current": 3},
              "blkio_stats": {"io_service_bytes_recursive": [
                 {"major": 8, "minor": 0, "op": "read", "value": 10},
                 {"major": 8, "minor": 0, "op": "write", "value": 20},
                 {"major": 8, "minor": 16, "op": "read", "value": 5}]}
            }"#,
        )
        .unwrap();
        let s = from_engine(&r);
        assert_eq!(s.cgroup_version, Some(2));
        assert_eq!(s.cpu.usage_us, Some(2_500_000));
        assert_eq!(s.cpu.user_us, Some(2_000_000));
        assert_eq!(s.cpu.throttled_us, Some(7));
        assert_eq!(s.memory.current, Some(52_428_800));
        assert_eq!(s.memory.anon, Some(50_331_648));
        assert_eq!(s.pids, Some(3));
        assert_eq!(s.io.read_bytes, Some(15));
        assert_eq!(s.io.write_bytes, Some(20));
        assert_eq!(s.psi.cpu, None);
    }

    #[test]
    fn engine_stats_of_a_v1_host_and_of_nothing() {
        let r: ContainerStatsResponse = serde_json::from_str(
            r#"{"memory_stats": {"usage": 1, "stats": {"total_rss": 7, "total_cache": 8, "total_swap": 0}},
                "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 4}, {"op": "Total", "value": 4}]}}"#,
        )
        .unwrap();
        let s = from_engine(&r);
        assert_eq!(s.cgroup_version, Some(1));
        assert_eq!(
            (s.memory.anon, s.memory.file, s.memory.swap),
            (Some(7), Some(8), Some(0))
        );
        assert_eq!((s.io.read_bytes, s.io.write_bytes), (Some(4), Some(0)));
        let none = from_engine(&serde_json::from_str("{}").unwrap());
        assert_eq!(none, CgroupStats::default());
    }
}

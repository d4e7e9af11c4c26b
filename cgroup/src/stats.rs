//! The figures of a task's cgroup for [`tend_proto::msg::CgroupStats`]: each
//! file read once, only when a client asks, never polled. A file the host
//! does not offer leaves its figures None.

use std::path::{Path, PathBuf};

use tend_proto::msg::{CgroupStats, CpuStats, IoStats, Pressure, PressureLine, PsiStats};

use crate::fs::{keyed_u64, parse_u64, read_optional};
use crate::{CgroupError, Controller, Mode, Result, TaskCgroup};

/// v1 writes "no limit" as the largest page-aligned i64 (or near it).
const V1_NO_LIMIT: u64 = 1 << 62;

impl TaskCgroup {
    /// Every figure of the cgroup, each file read once.
    pub fn stats(&self) -> Result<CgroupStats> {
        let file = |c: Controller, name: &str| self.dir_of(c).map(|d| d.join(name));
        let mut s = CgroupStats::default();
        match self.mode {
            Mode::V2 => {
                s.cgroup_version = Some(2);
                if let Some((p, t)) = read_at(file(Controller::Cpu, "cpu.stat"))? {
                    s.cpu = CpuStats {
                        usage_us: keyed_u64(&p, &t, "usage_usec")?,
                        user_us: keyed_u64(&p, &t, "user_usec")?,
                        system_us: keyed_u64(&p, &t, "system_usec")?,
                        periods: keyed_u64(&p, &t, "nr_periods")?,
                        throttled_periods: keyed_u64(&p, &t, "nr_throttled")?,
                        throttled_us: keyed_u64(&p, &t, "throttled_usec")?,
                    };
                }
                let mem = |name: &str| file(Controller::Memory, name);
                s.memory.current = single(mem("memory.current"))?;
                s.memory.peak = single(mem("memory.peak"))?;
                s.memory.limit = match read_at(mem("memory.max"))? {
                    Some((p, t)) => parse_limit_v2(&p, &t)?,
                    None => None,
                };
                if let Some((p, t)) = read_at(mem("memory.stat"))? {
                    s.memory.anon = keyed_u64(&p, &t, "anon")?;
                    s.memory.file = keyed_u64(&p, &t, "file")?;
                }
                s.memory.swap = single(mem("memory.swap.current"))?;
                if let Some((p, t)) = read_at(self.unified.as_ref().map(|d| d.join("io.stat")))? {
                    s.io = parse_io_stat(&p, &t)?;
                }
            }
            Mode::V1 | Mode::Hybrid => {
                s.cgroup_version = Some(1);
                let acct = |name: &str| file(Controller::Cpuacct, name);
                let us = |ns: Option<u64>| ns.map(|n| n / 1000);
                s.cpu.usage_us = us(single(acct("cpuacct.usage"))?);
                s.cpu.user_us = us(single(acct("cpuacct.usage_user"))?);
                s.cpu.system_us = us(single(acct("cpuacct.usage_sys"))?);
                if let Some((p, t)) = read_at(file(Controller::Cpu, "cpu.stat"))? {
                    s.cpu.periods = keyed_u64(&p, &t, "nr_periods")?;
                    s.cpu.throttled_periods = keyed_u64(&p, &t, "nr_throttled")?;
                    s.cpu.throttled_us = us(keyed_u64(&p, &t, "throttled_time")?);
                }
                let mem = |name: &str| file(Controller::Memory, name);
                s.memory.current = single(mem("memory.usage_in_bytes"))?;
                s.memory.peak = single(mem("memory.max_usage_in_bytes"))?;
                s.memory.limit = single(mem("memory.limit_in_bytes"))?.filter(|l| *l < V1_NO_LIMIT);
                if let Some((p, t)) = read_at(mem("memory.stat"))? {
                    // The total_ keys count the cgroup's children too, as v2 does.
                    s.memory.anon = keyed_u64(&p, &t, "total_rss")?;
                    s.memory.file = keyed_u64(&p, &t, "total_cache")?;
                    s.memory.swap = keyed_u64(&p, &t, "total_swap")?;
                }
                let blkio = |name: &str| file(Controller::Blkio, name);
                let bytes = match read_at(blkio("blkio.throttle.io_service_bytes_recursive"))? {
                    Some(f) => Some(f),
                    None => read_at(blkio("blkio.throttle.io_service_bytes"))?,
                };
                if let Some((p, t)) = bytes {
                    s.io = parse_blkio_bytes(&p, &t)?;
                }
            }
        }
        s.pids = single(file(Controller::Pids, "pids.current"))?;
        // PSI is a cgroup2 file: on v2 and on a hybrid host's membership tree.
        if let Some(dir) = self.unified.as_deref() {
            s.psi = PsiStats {
                cpu: pressure(dir, "cpu.pressure")?,
                memory: pressure(dir, "memory.pressure")?,
                io: pressure(dir, "io.pressure")?,
            };
        }
        Ok(s)
    }
}

fn read_at(path: Option<PathBuf>) -> Result<Option<(PathBuf, String)>> {
    let Some(p) = path else { return Ok(None) };
    Ok(read_optional(&p)?.map(|t| (p, t)))
}

fn single(path: Option<PathBuf>) -> Result<Option<u64>> {
    match read_at(path)? {
        Some((p, t)) => parse_u64(&p, &t).map(Some),
        None => Ok(None),
    }
}

fn pressure(dir: &Path, name: &str) -> Result<Option<Pressure>> {
    let p = dir.join(name);
    match read_optional(&p) {
        Ok(Some(t)) => parse_pressure(&p, &t).map(Some),
        Ok(None) => Ok(None),
        // A kernel built with PSI but booted with psi=0 refuses the read.
        Err(CgroupError::Read { source, .. })
            if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn bad(path: &Path, reason: String) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        reason,
    }
}

/// memory.max: a number of bytes, or "max" for none.
fn parse_limit_v2(path: &Path, text: &str) -> Result<Option<u64>> {
    if text.trim() == "max" {
        return Ok(None);
    }
    parse_u64(path, text).map(Some)
}

/// io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N ..." per device, summed.
fn parse_io_stat(path: &Path, text: &str) -> Result<IoStats> {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let slot = match key {
                "rbytes" => &mut read,
                "wbytes" => &mut write,
                _ => continue,
            };
            *slot = slot.saturating_add(parse_u64(path, value)?);
        }
    }
    Ok(IoStats {
        read_bytes: Some(read),
        write_bytes: Some(write),
    })
}

/// blkio.throttle.io_service_bytes: "MAJ:MIN Read N" and "MAJ:MIN Write N"
/// per device (then Sync, Async, Discard, Total), and a last "Total N".
fn parse_blkio_bytes(path: &Path, text: &str) -> Result<IoStats> {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let slot = match f.as_slice() {
            [_, "Read", _] => &mut read,
            [_, "Write", _] => &mut write,
            _ => continue,
        };
        *slot = slot.saturating_add(parse_u64(path, f[2])?);
    }
    Ok(IoStats {
        read_bytes: Some(read),
        write_bytes: Some(write),
    })
}

/// A pressure file: "some avg10=1.25 avg60=0.50 avg300=0.10 total=987654",
/// then a "full" line on kernels that write one for this resource.
fn parse_pressure(path: &Path, text: &str) -> Result<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let slot = match parts.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let mut l = PressureLine::default();
        for field in parts {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(path, format!("{field:?} is not key=value")))?;
            match key {
                "avg10" => l.avg10 = hundredths(path, value)?,
                "avg60" => l.avg60 = hundredths(path, value)?,
                "avg300" => l.avg300 = hundredths(path, value)?,
                "total" => l.total_us = parse_u64(path, value)?,
                _ => {}
            }
        }
        *slot = Some(l);
    }
    let some = some.ok_or_else(|| bad(path, "no \"some\" line".into()))?;
    Ok(Pressure { some, full })
}

/// "12.34" as 1234: the kernel prints a percentage with two decimals.
fn hundredths(path: &Path, value: &str) -> Result<u32> {
    let err = || bad(path, format!("{value:?} is not a percentage"));
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let whole: u32 = whole.parse().map_err(|_| err())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| err())?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_proto::msg::MemoryStats;

    fn p() -> &'static Path {
        Path::new("/fake/cpu.pressure")
    }

    fn put(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
    }

    fn open(root: &Path) -> TaskCgroup {
        let hier = crate::Hierarchies::probe(root).unwrap();
        TaskCgroup::open(&hier, "tend/a/web").unwrap()
    }

    #[test]
    fn v2_tree_every_figure() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, &[("cgroup.controllers", "cpu io memory pids\n")]);
        put(
            &root.join("tend/a/web"),
            &[
                (
                    "cpu.stat",
                    "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n\
                     nr_periods 40\nnr_throttled 7\nthrottled_usec 350000\n",
                ),
                ("memory.current", "52428800\n"),
                ("memory.peak", "60000000\n"),
                ("memory.max", "268435456\n"),
                ("memory.stat", "anon 50331648\nfile 2097152\nkernel 12\nanon_thp 0\n"),
                ("memory.swap.current", "4096\n"),
                ("pids.current", "3\n"),
                ("io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n"),
                ("cpu.pressure", "some avg10=1.25 avg60=0.50 avg300=0.10 total=987654\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=12\n"),
                ("memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            ],
        );
        let s = open(root).stats().unwrap();
        assert_eq!(s.cgroup_version, Some(2));
        assert_eq!(
            s.cpu,
            CpuStats {
                usage_us: Some(2_500_000),
                user_us: Some(2_000_000),
                system_us: Some(500_000),
                periods: Some(40),
                throttled_periods: Some(7),
                throttled_us: Some(350_000),
            }
        );
        assert_eq!(
            s.memory,
            MemoryStats {
                current: Some(52_428_800),
                peak: Some(60_000_000),
                limit: Some(268_435_456),
                anon: Some(50_331_648),
                file: Some(2_097_152),
                swap: Some(4096),
            }
        );
        assert_eq!(s.pids, Some(3));
        assert_eq!(s.io.read_bytes, Some(10));
        assert_eq!(s.io.write_bytes, Some(20));
        let cpu = s.psi.cpu.unwrap();
        assert_eq!(cpu.some.avg10, 125);
        assert_eq!(cpu.full.unwrap().total_us, 12);
        assert!(s.psi.memory.is_some());
        // No io.pressure in the tree: None, not an error.
        assert_eq!(s.psi.io, None);
    }

    #[test]
    fn v1_tree_every_figure_and_no_psi() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for c in ["memory", "cpu", "cpuacct", "pids", "blkio"] {
            put(&root.join(c), &[("cgroup.procs", "")]);
        }
        let task = |c: &str| root.join(c).join("tend/a/web");
        put(
            &task("memory"),
            &[
                ("memory.usage_in_bytes", "52428800\n"),
                ("memory.max_usage_in_bytes", "60000000\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                (
                    "memory.stat",
                    "cache 1\nrss 2\ntotal_cache 2097152\ntotal_rss 50331648\ntotal_swap 0\n",
                ),
            ],
        );
        put(
            &task("cpu"),
            &[(
                "cpu.stat",
                "nr_periods 40\nnr_throttled 7\nthrottled_time 350000000\n",
            )],
        );
        put(
            &task("cpuacct"),
            &[
                ("cpuacct.usage", "2500000000\n"),
                ("cpuacct.usage_user", "2000000000\n"),
                ("cpuacct.usage_sys", "500000000\n"),
            ],
        );
        put(&task("pids"), &[("pids.current", "3\n")]);
        put(
            &task("blkio"),
            &[(
                "blkio.throttle.io_service_bytes",
                "8:0 Read 10\n8:0 Write 20\n8:0 Total 30\nTotal 30\n",
            )],
        );
        let s = open(root).stats().unwrap();
        assert_eq!(s.cgroup_version, Some(1));
        assert_eq!(s.cpu.usage_us, Some(2_500_000));
        assert_eq!(s.cpu.user_us, Some(2_000_000));
        assert_eq!(s.cpu.system_us, Some(500_000));
        assert_eq!(s.cpu.throttled_periods, Some(7));
        assert_eq!(s.cpu.throttled_us, Some(350_000));
        assert_eq!(s.memory.current, Some(52_428_800));
        assert_eq!(s.memory.peak, Some(60_000_000));
        assert_eq!(s.memory.limit, None, "v1's huge number means no limit");
        assert_eq!(s.memory.anon, Some(50_331_648));
        assert_eq!(s.memory.file, Some(2_097_152));
        assert_eq!(s.memory.swap, Some(0));
        assert_eq!(s.pids, Some(3));
        assert_eq!((s.io.read_bytes, s.io.write_bytes), (Some(10), Some(20)));
        assert_eq!(s.psi, PsiStats::default());
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        put(root, &[("cgroup.controllers", "cpu io memory pids\n")]);
        put(&root.join("tend/a/web"), &[("memory.current", "lots\n")]);
        let e = open(root).stats().unwrap_err().to_string();
        assert!(e.contains("memory.current"), "{e}");
    }

    #[test]
    fn pressure_lines_with_full() {
        let t = "some avg10=34.64 avg60=24.09 avg300=23.42 total=2281952919\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let got = parse_pressure(p(), t).unwrap();
        assert_eq!(
            got.some,
            PressureLine {
                avg10: 3464,
                avg60: 2409,
                avg300: 2342,
                total_us: 2_281_952_919
            }
        );
        assert_eq!(got.full, Some(PressureLine::default()));
    }

    #[test]
    fn pressure_without_full_line() {
        // cpu.pressure of older kernels has only "some".
        let got = parse_pressure(p(), "some avg10=100.00 avg60=5.5 avg300=0.01 total=7\n").unwrap();
        assert_eq!(got.some.avg10, 10000);
        assert_eq!(got.some.avg60, 550);
        assert_eq!(got.some.avg300, 1);
        assert_eq!(got.full, None);
    }

    #[test]
    fn bad_pressure_names_the_file() {
        for t in [
            "",
            "full avg10=0.00 total=0",
            "some avg10=x total=1",
            "some avg10=1.234",
        ] {
            let e = parse_pressure(p(), t).unwrap_err().to_string();
            assert!(e.contains("/fake/cpu.pressure"), "{t:?}: {e}");
        }
    }

    #[test]
    fn io_stat_sums_devices() {
        let t = "8:0 rbytes=4096 wbytes=1048576 rios=1 wios=2 dbytes=0 dios=0\n\
                 253:1 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n";
        let got = parse_io_stat(Path::new("/fake/io.stat"), t).unwrap();
        assert_eq!(got.read_bytes, Some(4196));
        assert_eq!(got.write_bytes, Some(1_048_576));
        let empty = parse_io_stat(Path::new("/fake/io.stat"), "").unwrap();
        assert_eq!(empty.read_bytes, Some(0));
    }

    #[test]
    fn blkio_bytes_sum_read_and_write_of_every_device() {
        let t = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n\
                 8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\n8:16 Total 3\nTotal 12291\n";
        let got = parse_blkio_bytes(Path::new("/fake/blkio"), t).unwrap();
        assert_eq!((got.read_bytes, got.write_bytes), (Some(4097), Some(8194)));
        let empty = parse_blkio_bytes(Path::new("/fake/blkio"), "Total 0\n").unwrap();
        assert_eq!((empty.read_bytes, empty.write_bytes), (Some(0), Some(0)));
        let e = parse_blkio_bytes(Path::new("/fake/blkio"), "8:0 Read lots\n").unwrap_err();
        assert!(e.to_string().contains("/fake/blkio"), "{e}");
    }

    #[test]
    fn memory_max_word() {
        let path = Path::new("/fake/memory.max");
        assert_eq!(parse_limit_v2(path, "max\n").unwrap(), None);
        assert_eq!(
            parse_limit_v2(path, "52428800\n").unwrap(),
            Some(52_428_800)
        );
        assert!(parse_limit_v2(path, "lots").is_err());
    }
}

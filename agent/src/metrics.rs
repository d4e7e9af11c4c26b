//! The agent's metrics in Prometheus' text exposition format (version 0.0.4),
//! served at `GET /v1/metrics`.
//!
//! Counters and the start-latency histogram live here, bumped where tasks
//! start; the rest is read at each scrape from what the agent already holds
//! (its records) or what the kernel says (the supervisors' memory, the log
//! files' sizes), so nothing is kept twice. Written by hand rather than with
//! a client library: the format is a few lines of text, the agent needs one
//! counter kind, one gauge kind and one histogram, and the encoder below is
//! tested against the format's rules (names, label escaping, cumulative
//! buckets, `+Inf`, `_sum`, `_count`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::state::{TaskPhase, TaskRecord};

/// The drivers, in the order of the per-driver counters.
pub const DRIVERS: [&str; 4] = ["raw_exec", "exec", "docker", "oci"];

/// Upper bounds (seconds) of the start-latency buckets: a process start is
/// milliseconds, a container's can be seconds.
const START_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram of durations with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one for above every bound.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Count one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// What the agent counts as it goes.
#[derive(Debug)]
pub struct Metrics {
    starts: [AtomicU64; DRIVERS.len()],
    start_failures: [AtomicU64; DRIVERS.len()],
    start_seconds: Histogram,
    reattach: std::sync::Mutex<Option<ReattachFigures>>,
}

/// The last reattach: how long it took and what it found.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReattachFigures {
    /// Its duration.
    pub millis: u64,
    /// Tasks waited on again.
    pub reattached: usize,
    /// Tasks that had ended meanwhile.
    pub exited: usize,
    /// Tasks lost.
    pub lost: usize,
    /// Tasks whose supervisor lives but did not answer yet.
    pub unreachable: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            starts: Default::default(),
            start_failures: Default::default(),
            start_seconds: Histogram::new(&START_BUCKETS),
            reattach: std::sync::Mutex::new(None),
        }
    }
}

fn driver_index(driver: &str) -> Option<usize> {
    DRIVERS.iter().position(|d| *d == driver)
}

impl Metrics {
    /// A run of a `driver` task started, `took` from the decision to start
    /// it until its supervisor (or the engine) reported it running.
    pub fn started(&self, driver: &str, took: Duration) {
        if let Some(i) = driver_index(driver) {
            self.starts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.start_seconds.observe(took);
    }

    /// A run of a `driver` task failed to start.
    pub fn start_failed(&self, driver: &str) {
        if let Some(i) = driver_index(driver) {
            self.start_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The reattach at the agent's start is done.
    pub fn reattached(&self, figures: ReattachFigures) {
        if let Ok(mut r) = self.reattach.lock() {
            *r = Some(figures);
        }
    }

    /// The whole exposition: the counters here, then what the agent's
    /// `allocs` and their `tasks` and `host` say.
    pub fn render(&self, allocs: usize, tasks: &[&TaskRecord], host: &HostFigures) -> String {
        let mut out = Text::default();
        out.family("tend_build_info", "gauge", "The agent's version.");
        out.sample(
            "tend_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );

        out.family("tend_allocations", "gauge", "Allocations the agent holds.");
        out.sample("tend_allocations", &[], allocs as f64);
        out.family("tend_tasks", "gauge", "Tasks by state.");
        for (name, phase) in [
            ("pending", TaskPhase::Pending),
            ("running", TaskPhase::Running),
            ("dead", TaskPhase::Dead),
        ] {
            let n = tasks.iter().filter(|t| t.phase == phase).count();
            out.sample("tend_tasks", &[("state", name)], n as f64);
        }
        out.family(
            "tend_tasks_unreachable",
            "gauge",
            "Running tasks whose tend-spawn lives but does not answer the agent.",
        );
        let unreachable = tasks.iter().filter(|t| t.unreachable.is_some()).count();
        out.sample("tend_tasks_unreachable", &[], unreachable as f64);
        out.family(
            "tend_task_restarts_total",
            "counter",
            "Restarts of the tasks the agent holds, by their restart policy.",
        );
        let restarts: u64 = tasks.iter().map(|t| u64::from(t.restarts)).sum();
        out.sample("tend_task_restarts_total", &[], restarts as f64);

        out.family(
            "tend_task_starts_total",
            "counter",
            "Runs started since the agent started, by driver.",
        );
        for (i, d) in DRIVERS.iter().enumerate() {
            let n = self.starts[i].load(Ordering::Relaxed);
            out.sample("tend_task_starts_total", &[("driver", d)], n as f64);
        }
        out.family(
            "tend_task_start_failures_total",
            "counter",
            "Runs that failed to start since the agent started, by driver.",
        );
        for (i, d) in DRIVERS.iter().enumerate() {
            let n = self.start_failures[i].load(Ordering::Relaxed);
            out.sample("tend_task_start_failures_total", &[("driver", d)], n as f64);
        }
        out.histogram(
            "tend_task_start_duration_seconds",
            "From the decision to start a run until it runs.",
            &self.start_seconds,
        );

        let reattach = self.reattach.lock().ok().and_then(|r| *r);
        if let Some(r) = reattach {
            out.family(
                "tend_reattach_duration_seconds",
                "gauge",
                "How long the reattach at the agent's start took.",
            );
            out.sample(
                "tend_reattach_duration_seconds",
                &[],
                r.millis as f64 / 1000.0,
            );
            out.family(
                "tend_reattach_tasks",
                "gauge",
                "What the reattach at the agent's start found, by outcome.",
            );
            for (outcome, n) in [
                ("reattached", r.reattached),
                ("exited", r.exited),
                ("lost", r.lost),
                ("unreachable", r.unreachable),
            ] {
                out.sample("tend_reattach_tasks", &[("outcome", outcome)], n as f64);
            }
        }

        out.family(
            "tend_supervisors",
            "gauge",
            "Live tend-spawn processes of running tasks.",
        );
        out.sample("tend_supervisors", &[], host.supervisors as f64);
        out.family(
            "tend_supervisor_memory_bytes",
            "gauge",
            "Memory of every live tend-spawn together: rss, and uss (what is theirs alone).",
        );
        out.sample(
            "tend_supervisor_memory_bytes",
            &[("kind", "rss")],
            host.supervisor_rss as f64,
        );
        out.sample(
            "tend_supervisor_memory_bytes",
            &[("kind", "uss")],
            host.supervisor_uss as f64,
        );
        out.family(
            "tend_agent_memory_bytes",
            "gauge",
            "The agent's own resident memory.",
        );
        out.sample(
            "tend_agent_memory_bytes",
            &[("kind", "rss")],
            host.agent_rss as f64,
        );
        out.family(
            "tend_log_bytes",
            "gauge",
            "Bytes of task logs kept on disk, rotated files included, by stream.",
        );
        out.sample(
            "tend_log_bytes",
            &[("stream", "stdout")],
            host.log_stdout as f64,
        );
        out.sample(
            "tend_log_bytes",
            &[("stream", "stderr")],
            host.log_stderr as f64,
        );
        out.0
    }
}

/// What a scrape reads from the host.
#[derive(Debug, Clone, Default)]
pub struct HostFigures {
    /// Live tend-spawn processes.
    pub supervisors: usize,
    /// Their RSS together, bytes.
    pub supervisor_rss: u64,
    /// Their USS together (private clean + private dirty), bytes.
    pub supervisor_uss: u64,
    /// The agent's RSS, bytes.
    pub agent_rss: u64,
    /// Bytes of stdout logs.
    pub log_stdout: u64,
    /// Bytes of stderr logs.
    pub log_stderr: u64,
}

/// RSS and USS of `pid` from `/proc/PID/smaps_rollup`, bytes.
pub fn memory_of(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(rss_uss(&text))
}

/// RSS and USS from a smaps_rollup text (kB lines), bytes.
fn rss_uss(text: &str) -> (u64, u64) {
    let kb = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("Rss:"), kb("Private_Clean:") + kb("Private_Dirty:"))
}

/// Bytes of the stdout and stderr logs under `logs_dir` (`<task>.stdout.N`,
/// `<task>.stderr.N`), their time indexes left out; a missing dir counts 0.
pub fn log_bytes(logs_dir: &std::path::Path) -> (u64, u64) {
    let mut out = (0, 0);
    let Ok(entries) = std::fs::read_dir(logs_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let size = e
            .metadata()
            .map_or(0, |m| if m.is_file() { m.len() } else { 0 });
        if name.ends_with(tend_logs::index::INDEX_SUFFIX) {
            continue;
        }
        if name.contains(".stdout") {
            out.0 += size;
        } else if name.contains(".stderr") {
            out.1 += size;
        }
    }
    out
}

/// The exposition being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i].load(Ordering::Relaxed);
            self.sample(&bucket, &[("le", &number(*bound))], cumulative as f64);
        }
        cumulative += h.counts[h.bounds.len()].load(Ordering::Relaxed);
        self.sample(&bucket, &[("le", "+Inf")], cumulative as f64);
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative as f64);
    }
}

/// A sample value as the format writes it (Rust writes 3.0 as `3`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample line of `text` as (name, labels, value); panics on a line
    /// that breaks the format.
    fn parse(text: &str) -> Vec<(String, String, f64)> {
        let mut typed = std::collections::HashSet::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "sample before its TYPE: {line}");
            out.push((name.to_string(), labels.to_string(), value.parse().unwrap()));
        }
        out
    }

    fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
            .2
    }

    fn task(phase: TaskPhase, restarts: u32, unreachable: bool) -> TaskRecord {
        let mut t = TaskRecord::new("a1", "t");
        t.phase = phase;
        t.restarts = restarts;
        t.unreachable = unreachable.then(|| "timed out".to_string());
        t
    }

    #[test]
    fn tasks_by_state_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.started("exec", Duration::from_micros(3_000));
        m.started("exec", Duration::from_millis(30));
        m.started("docker", Duration::from_secs(20));
        m.start_failed("raw_exec");
        m.reattached(ReattachFigures {
            millis: 35,
            reattached: 2,
            exited: 1,
            lost: 0,
            unreachable: 1,
        });
        let tasks = [
            task(TaskPhase::Running, 2, true),
            task(TaskPhase::Running, 0, false),
            task(TaskPhase::Dead, 3, false),
        ];
        let host = HostFigures {
            supervisors: 2,
            supervisor_rss: 3 << 20,
            supervisor_uss: 1 << 20,
            agent_rss: 20 << 20,
            log_stdout: 1234,
            log_stderr: 5,
        };
        let text = m.render(1, &tasks.iter().collect::<Vec<_>>(), &host);
        let s = parse(&text);
        assert_eq!(value(&s, "tend_tasks", "state=\"running\""), 2.0);
        assert_eq!(value(&s, "tend_tasks", "state=\"dead\""), 1.0);
        assert_eq!(value(&s, "tend_tasks", "state=\"pending\""), 0.0);
        assert_eq!(value(&s, "tend_tasks_unreachable", ""), 1.0);
        assert_eq!(value(&s, "tend_task_restarts_total", ""), 5.0);
        assert_eq!(value(&s, "tend_task_starts_total", "driver=\"exec\""), 2.0);
        assert_eq!(
            value(&s, "tend_task_starts_total", "driver=\"docker\""),
            1.0
        );
        assert_eq!(
            value(&s, "tend_task_start_failures_total", "driver=\"raw_exec\""),
            1.0
        );
        let b = "tend_task_start_duration_seconds_bucket";
        assert_eq!(value(&s, b, "le=\"0.001\""), 0.0);
        assert_eq!(value(&s, b, "le=\"0.005\""), 1.0);
        assert_eq!(value(&s, b, "le=\"0.05\""), 2.0);
        assert_eq!(value(&s, b, "le=\"10\""), 2.0);
        assert_eq!(value(&s, b, "le=\"+Inf\""), 3.0);
        assert_eq!(value(&s, "tend_task_start_duration_seconds_count", ""), 3.0);
        let sum = value(&s, "tend_task_start_duration_seconds_sum", "");
        assert!((sum - 20.033).abs() < 1e-6, "{sum}");
        assert_eq!(value(&s, "tend_reattach_duration_seconds", ""), 0.035);
        assert_eq!(
            value(&s, "tend_reattach_tasks", "outcome=\"unreachable\""),
            1.0
        );
        assert_eq!(
            value(&s, "tend_supervisor_memory_bytes", "kind=\"uss\""),
            1048576.0
        );
        assert_eq!(value(&s, "tend_log_bytes", "stream=\"stdout\""), 1234.0);
        // Buckets never go down.
        let buckets: Vec<f64> = s.iter().filter(|(n, _, _)| n == b).map(|x| x.2).collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.0025), "0.0025");
    }

    #[test]
    fn smaps_rollup_gives_rss_and_private_bytes() {
        let text = "00400000-7fff [rollup]\nRss:                1566 kB\nPss:  900 kB\n\
                    Private_Clean:        20 kB\nPrivate_Dirty:       148 kB\n";
        assert_eq!(rss_uss(text), (1566 * 1024, 168 * 1024));
        let (rss, uss) = memory_of(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(rss > 0 && uss > 0 && uss <= rss);
    }
}

//! `tend-bench`: whole-process figures of tend beside baselines measured in the
//! same run on the same machine. Figures are reported, never asserted.
//!
//! Usage: `tend-bench [--quick] [--only FIG,...] --bin-dir DIR --out DIR [--variant NAME=DIR]...`
//! (normally through `bench/run`, which builds what it needs first).
#![deny(unsafe_code)]

mod agent;
mod cgroups;
mod cleanup;
mod footprint;
mod latency;
mod logs;
mod oci;
mod peers;
mod procfs;
mod report;
mod spawn;
mod stats;
mod sys;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use report::{Report, Row};
use stats::Summary;

/// How many runs of what.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// Cheap latency series (floor, 1a, 1c, bare).
    fast: usize,
    /// Dearer series (tend run, OCI runtimes).
    slow: usize,
    /// Discarded warm-up runs before each series.
    warm: usize,
    /// Single-task footprint repeats.
    single: usize,
    /// Concurrent idle daemons for the footprint.
    many: usize,
    /// Bytes written per log run.
    log_bytes: u64,
    /// Log runs.
    log_runs: usize,
    /// Tasks on the agent for figure 3.
    scale_tasks: usize,
    /// Agent crash-restarts.
    restarts: usize,
    /// 1(a) runs per build variant.
    variant_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                fast: 25,
                slow: 21,
                warm: 3,
                single: 5,
                many: 100,
                log_bytes: 100 << 20,
                log_runs: 10,
                scale_tasks: 100,
                restarts: 3,
                variant_runs: 25,
            }
        } else {
            Plan {
                quick,
                fast: 200,
                slow: 50,
                warm: 5,
                single: 21,
                many: 100,
                log_bytes: 1 << 30,
                log_runs: 21,
                scale_tasks: 1000,
                restarts: 5,
                variant_runs: 100,
            }
        }
    }
}

#[derive(Debug)]
struct Args {
    quick: bool,
    bin_dir: PathBuf,
    out: PathBuf,
    variants: Vec<(String, PathBuf)>,
    commit: String,
    /// Figures to run (`1`, `1d`, `2`, `3`, `4`, `5`); empty: all.
    only: Vec<String>,
    /// Figure 1e's baseline: tend-spawn built with `bench-no-pid-namespace`.
    no_pid_ns_bin: Option<PathBuf>,
    /// Figure ab: another tend-spawn to compare with, round by round.
    ab_bin: Option<PathBuf>,
}

impl Args {
    /// Whether figure `f` is to run.
    fn wants(&self, f: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == f)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        bin_dir: PathBuf::from("target/release"),
        out: PathBuf::from("bench/results"),
        variants: Vec::new(),
        commit: String::from("unknown"),
        only: Vec::new(),
        no_pid_ns_bin: None,
        ab_bin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--bin-dir" => a.bin_dir = it.next().ok_or("--bin-dir DIR")?.into(),
            "--out" => a.out = it.next().ok_or("--out DIR")?.into(),
            "--commit" => a.commit = it.next().ok_or("--commit SHA")?,
            "--only" => {
                let v = it.next().ok_or("--only FIG[,FIG]...")?;
                for f in v.split(',').filter(|f| !f.is_empty()) {
                    if !["1", "1d", "1e", "2", "3", "4", "5", "6", "ab"].contains(&f) {
                        return Err(format!(
                            "--only: unknown figure {f:?} (1, 1d, 1e, 2, 3, 4, 5, 6, ab)"
                        ));
                    }
                    a.only.push(f.to_string());
                }
            }
            "--no-pid-ns-bin" => {
                a.no_pid_ns_bin = Some(it.next().ok_or("--no-pid-ns-bin FILE")?.into());
            }
            "--ab" => a.ab_bin = Some(it.next().ok_or("--ab FILE")?.into()),
            "--variant" => {
                let v = it.next().ok_or("--variant NAME=DIR")?;
                let (n, d) = v.rsplit_once('=').ok_or("--variant NAME=DIR")?;
                a.variants.push((n.to_string(), d.into()));
            }
            "-h" | "--help" => {
                return Err("usage: tend-bench [--quick] [--only FIG,...] --bin-dir DIR --out DIR [--commit SHA] [--variant NAME=DIR]... [--no-pid-ns-bin FILE] [--ab FILE]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown cpu".to_string(), |(_, v)| v.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem_kb: f64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cg = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "cgroup hybrid (v1 + v2)"
    } else {
        "cgroup v1"
    };
    format!(
        "cpu {model}, {cores} cores, kernel {kernel}, memory {:.1} GiB, {cg}",
        mem_kb / 1024.0 / 1024.0
    )
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An ELF with no program interpreter (PT_INTERP) is statically linked.
fn is_static(bin: &Path) -> bool {
    let Ok(b) = fs::read(bin) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let Ok(phoff) = usize::try_from(u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])))
    else {
        return false;
    };
    let (size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|i| {
        let o = phoff + i * size;
        // p_type 3 is PT_INTERP.
        b.get(o..o + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn sum(v: &[f64]) -> Option<Summary> {
    Summary::of(v)
}

fn one(v: f64) -> Option<Summary> {
    Summary::of(&[v])
}

fn say(msg: &str) {
    eprintln!("tend-bench: {msg}");
}

struct Bench {
    plan: Plan,
    base: PathBuf,
    cg_prefix: String,
    spawn_bin: PathBuf,
    /// tend-spawn without the pid namespace and /proc (figure 1e's baseline).
    no_pid_ns_bin: Option<PathBuf>,
    /// Figure ab's other tend-spawn.
    ab_bin: Option<PathBuf>,
    tend_bin: PathBuf,
    root: bool,
    rows: Vec<Row>,
    notes: Vec<String>,
    floor: Option<Summary>,
    direct: Option<Summary>,
    notify: Option<Summary>,
    crun: Option<Summary>,
}

impl Bench {
    fn latency(&mut self) {
        let p = self.plan;
        say("1: floor (posix_spawn /bin/true + waitpid)");
        match latency::floor(p.fast, p.warm) {
            Ok(v) => {
                self.floor = sum(&v);
                self.rows.push(
                    Row::measured(
                        "1 base",
                        "floor: libc::posix_spawn(/bin/true) + waitpid",
                        "ms",
                        self.floor,
                    )
                    .note("libc::posix_spawn, empty env"),
                );
            }
            Err(e) => self.rows.push(Row::not_measured(
                "1 base",
                "floor: posix_spawn + waitpid",
                e,
            )),
        }
        // OCI runtimes first: 1(a) and 1(c) compare with crun.
        let mut oci: Vec<(String, Option<Summary>)> = Vec::new();
        for rt in ["crun", "runc"] {
            let what = format!("{rt} run of a busybox bundle (/bin/true), whole process");
            let Some(bin) = which(rt) else {
                self.rows
                    .push(Row::not_measured("1 base", &what, "not installed"));
                continue;
            };
            if !self.root {
                self.rows
                    .push(Row::not_measured("1 base", &what, "needs root"));
                continue;
            }
            say(&format!("1: {rt} run"));
            let dir = self.base.join(format!("b-{rt}"));
            let state = self.base.join(format!("s-{rt}"));
            let r = latency::oci_bundle(&bin, &dir, &["/bin/true"])
                .and_then(|b| latency::oci_run(&bin, &b, &state, p.slow, p.warm));
            match r {
                Ok(v) => {
                    let s = sum(&v);
                    oci.push((rt.to_string(), s));
                    self.rows
                        .push(Row::measured("1 base", &what, "ms", s).vs("floor", self.floor));
                }
                Err(e) => self.rows.push(Row::not_measured("1 base", &what, e)),
            }
        }
        self.crun = oci.iter().find(|(n, _)| n == "crun").and_then(|(_, s)| *s);
        let runc = oci.iter().find(|(n, _)| n == "runc").and_then(|(_, s)| *s);
        self.rows.push(Row::not_measured(
            "1 base",
            "podman run of busybox",
            if which("podman").is_some() {
                "installed but not driven by this harness (needs an image store)"
            } else {
                "not installed"
            },
        ));

        say("1a: the exit file's durable write alone");
        nix::unistd::sync();
        let fsync = match latency::atomic_write(&self.base.join("aw"), p.fast, p.warm) {
            Ok(v) => {
                let s = sum(&v);
                self.rows.push(
                    Row::measured(
                        "1a base",
                        "durable 400-byte file write in the data dir's fs: create, write, fsync, rename, fsync dir",
                        "ms",
                        s,
                    )
                    .vs("floor", self.floor)
                    .note("what tend-spawn does once per exit"),
                );
                s
            }
            Err(e) => {
                self.rows
                    .push(Row::not_measured("1a base", "durable file write", e));
                None
            }
        };
        say("1a: tend-spawn raw_exec /bin/true through the protocol");
        nix::unistd::sync();
        match spawn::World::new(&self.base, "a")
            .and_then(|mut w| latency::direct(&self.spawn_bin, &mut w, p.fast, p.warm))
        {
            Ok((lat, notify, phases)) => {
                self.direct = sum(&lat);
                self.notify = sum(&notify);
                for (k, what) in [
                    "1a phase: exec tend-spawn -> StartReport read",
                    "1a phase: StartReport -> first connection (handed over on stdin: no connect, no Hello)",
                    "1a phase: first connection -> Wait -> Exited (includes /bin/true itself)",
                ]
                .iter()
                .enumerate()
                {
                    self.rows.push(
                        Row::measured("1a", what, "ms", sum(&phases[k])).vs("floor", self.floor),
                    );
                }
                let r = Row::measured(
                    "1a",
                    "tend-spawn raw_exec /bin/true: exec, config frame, StartReport, Wait, Exited",
                    "ms",
                    self.direct,
                )
                .vs("floor", self.floor);
                let met = r.ratio.map(|x| x <= 3.0);
                self.rows.push(r.target("<= 3x floor", met));
                let r = Row::measured("1a", "same, against crun run", "ms", self.direct)
                    .vs("crun run", self.crun);
                let met = r.ratio.map(|x| x <= 0.2);
                self.rows.push(r.target("<= 0.20x crun (5x faster)", met));
                let r = Row::measured(
                    "1a",
                    "same, against runc run (stand-in for crun)",
                    "ms",
                    self.direct,
                )
                .vs("runc run", runc);
                let met = r.ratio.map(|x| x <= 0.2);
                self.rows.push(r.target("<= 0.20x runc (5x faster)", met));
                self.rows.push(
                    Row::measured(
                        "1a",
                        "same, minus the durable exit-file write (median - median)",
                        "ms",
                        self.direct
                            .zip(fsync)
                            .and_then(|(d, f)| one(d.median - f.median)),
                    )
                    .vs("floor", self.floor)
                    .note("estimate of the daemon's own cost"),
                );
            }
            Err(e) => self
                .rows
                .push(Row::not_measured("1a", "tend-spawn raw_exec /bin/true", e)),
        }
        self.peer_latency();
        say("1a: same with data dir and exit file on tmpfs (/dev/shm)");
        nix::unistd::sync();
        let shm = PathBuf::from(format!("/dev/shm/tb{}", std::process::id()));
        match spawn::World::new(&shm, "a")
            .and_then(|mut w| latency::direct(&self.spawn_bin, &mut w, p.fast, p.warm))
        {
            Ok((lat, _, _)) => {
                let r = Row::measured(
                    "1a",
                    "same, data dir on tmpfs (fsync is free)",
                    "ms",
                    sum(&lat),
                )
                .vs("floor", self.floor);
                let met = r.ratio.map(|x| x <= 3.0);
                self.rows.push(
                    r.target("<= 3x floor", met)
                        .note("not the default layout: shows what the disk costs"),
                );
            }
            Err(e) => self.rows.push(Row::not_measured("1a", "same, on tmpfs", e)),
        }

        say("1b: std::process::Command /bin/true (fork + exec + wait)");
        let command = match latency::command_true(p.slow, p.warm) {
            Ok(v) => {
                let s = sum(&v);
                self.rows.push(
                    Row::measured(
                        "1b base",
                        "plain fork + exec of /bin/true: std::process::Command::status()",
                        "ms",
                        s,
                    )
                    .vs("floor", self.floor)
                    .note("what a Rust program pays without tend"),
                );
                s
            }
            Err(e) => {
                self.rows.push(Row::not_measured(
                    "1b base",
                    "plain fork + exec of /bin/true: std::process::Command::status()",
                    e,
                ));
                None
            }
        };
        say("1b: tend run, foreground");
        match agent::run_foreground(&self.tend_bin, &self.spawn_bin, &self.base, p.slow, p.warm) {
            Ok(v) => self.rows.push(
                Row::measured(
                    "1b",
                    "`tend run` /bin/true job, foreground (whole process)",
                    "ms",
                    sum(&v),
                )
                .vs("Command /bin/true", command),
            ),
            Err(e) => self
                .rows
                .push(Row::not_measured("1b", "`tend run` foreground", e)),
        }
        say("1b: tend run submitted to a running agent");
        let r = agent::Agent::start(
            &self.tend_bin,
            &self.spawn_bin,
            &self.base.join("ad1"),
            &spawn::run_root().join("ar1"),
        )
        .and_then(|(a, _)| {
            let r = agent::run_submitted(&a, &self.tend_bin, &self.base, p.slow, p.warm);
            a.stop();
            r
        });
        match r {
            Ok(v) => self.rows.push(
                Row::measured(
                    "1b",
                    "`tend run --json` to a running agent, until the API shows the task dead",
                    "ms",
                    sum(&v),
                )
                .vs("Command /bin/true", command)
                .note("API polled every 1 ms"),
            ),
            Err(e) => self
                .rows
                .push(Row::not_measured("1b", "`tend run` via the agent", e)),
        }

        let what_c = "tend-spawn exec-style /bin/true: default chroot_env binds, cgroup (mem, cpu, pids), user nobody";
        if !self.root {
            self.rows
                .push(Row::not_measured("1c", what_c, "needs root"));
            return;
        }
        say("1c: bare fork + cgroup + mount ns + chroot + setuid + exec");
        nix::unistd::sync();
        let bare = match latency::bare(&self.base, &self.cg_prefix, true, p.fast, p.warm) {
            Ok(v) => {
                let s = sum(&v);
                self.rows.push(
                    Row::measured(
                        "1c base",
                        "bare: mkdir cgroups + fork + join + unshare(NEWNS) + ro binds + chroot + setuid nobody + exec + wait + rmdir",
                        "ms",
                        s,
                    )
                    .vs("floor", self.floor),
                );
                s
            }
            Err(e) => {
                self.rows
                    .push(Row::not_measured("1c base", "bare isolated fork/exec", e));
                None
            }
        };
        say("1c: tend-spawn with isolation");
        nix::unistd::sync();
        match spawn::World::new(&self.base, "c").and_then(|mut w| {
            latency::isolated(
                &self.spawn_bin,
                &mut w,
                &self.cg_prefix,
                true,
                p.fast,
                p.warm,
            )
        }) {
            Ok(v) => {
                let s = sum(&v);
                let r = Row::measured("1c", what_c, "ms", s).vs("bare", bare);
                let met = r.ratio.map(|x| x <= 2.5);
                self.rows.push(r.target("<= 2.5x bare", met));
                let r = Row::measured("1c", "same, against crun run", "ms", s)
                    .vs("crun run", self.crun);
                let met = r.ratio.map(|x| x <= 0.2);
                self.rows.push(r.target("<= 0.20x crun (5x faster)", met));
                let r = Row::measured("1c", "same, against runc run (stand-in for crun)", "ms", s)
                    .vs("runc run", runc);
                let met = r.ratio.map(|x| x <= 0.2);
                self.rows.push(r.target("<= 0.20x runc (5x faster)", met));
            }
            Err(e) => {
                self.rows
                    .push(Row::not_measured("1c", what_c, e).target("<= 2.5x bare", None));
                self.isolated_without_chroot(runc);
            }
        }
    }

    /// 1(d): exec start by chroot_env size (1, 3, 7 binds) of a static
    /// busybox `true`, each beside tend-spawn raw_exec of the same command,
    /// measured round-robin in the same run.
    fn chroot_sizes(&mut self) {
        let p = self.plan;
        let sizes = [1usize, 3, 7];
        let what = "tend-spawn exec-style `busybox true` by chroot_env size";
        if !self.root {
            self.rows.push(Row::not_measured("1d", what, "needs root"));
            return;
        }
        let busybox = match latency::static_busybox() {
            Ok(b) => b,
            Err(e) => {
                self.rows.push(Row::not_measured("1d", what, e));
                return;
            }
        };
        say("1d: exec start by chroot_env size (1 / 3 / 7 binds) beside raw_exec");
        nix::unistd::sync();
        let r = spawn::World::new(&self.base, "x").and_then(|mut w| {
            latency::chroot_sizes(
                &self.spawn_bin,
                &mut w,
                &self.cg_prefix,
                &busybox,
                &sizes,
                p.fast,
                p.warm,
            )
        });
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                self.rows.push(Row::not_measured("1d", what, e));
                return;
            }
        };
        let bb = busybox.display();
        let raw_start = sum(&v[0].start);
        let raw_total = sum(&v[0].total);
        self.rows.push(
            Row::measured(
                "1d base",
                &format!("tend-spawn raw_exec `{bb} true`: exec -> StartReport"),
                "ms",
                raw_start,
            )
            .vs("floor", self.floor)
            .note("round-robin with the exec rows below"),
        );
        self.rows.push(
            Row::measured(
                "1d base",
                &format!("tend-spawn raw_exec `{bb} true`: exec -> Exited"),
                "ms",
                raw_total,
            )
            .vs("floor", self.floor),
        );
        for (k, n) in sizes.iter().enumerate() {
            let binds: Vec<String> = latency::binds_of(*n)
                .into_iter()
                .map(|b| {
                    if b.source == b.target {
                        b.source
                    } else {
                        format!("{}->{}", b.source, b.target)
                    }
                })
                .collect();
            let binds = binds.join(" ");
            self.rows.push(
                Row::measured(
                    "1d",
                    &format!(
                        "exec, {n} bind{}, cgroup, nobody: exec -> StartReport",
                        if *n == 1 { "" } else { "s" }
                    ),
                    "ms",
                    sum(&v[k + 1].start),
                )
                .vs("raw_exec start", raw_start)
                .note(format!("binds: {binds}")),
            );
            self.rows.push(
                Row::measured(
                    "1d",
                    &format!(
                        "exec, {n} bind{}, cgroup, nobody: exec -> Exited",
                        if *n == 1 { "" } else { "s" }
                    ),
                    "ms",
                    sum(&v[k + 1].total),
                )
                .vs("raw_exec start+exit", raw_total),
            );
        }
    }

    /// 1(e): what the task's pid namespace and /proc cost: the bare
    /// sequence with and without them, beside tend-spawn's exec start,
    /// round-robin in one run.
    fn isolation_levels(&mut self) {
        let p = self.plan;
        let what = "pid namespace + /proc (hidepid=2) + masks";
        if !self.root {
            self.rows.push(Row::not_measured("1e", what, "needs root"));
            return;
        }
        say("1e: bare with and without the pid namespace and /proc, beside tend-spawn exec");
        nix::unistd::sync();
        let r = spawn::World::new(&self.base, "e").and_then(|mut w| {
            latency::isolation_levels(
                &self.spawn_bin,
                self.no_pid_ns_bin.as_deref(),
                &mut w,
                &self.base,
                &self.cg_prefix,
                p.fast,
                p.warm,
            )
        });
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                self.rows.push(Row::not_measured("1e", what, e));
                return;
            }
        };
        let bare = sum(&v[0]);
        self.rows.push(
            Row::measured(
                "1e base",
                "bare (as 1c base): cgroups, mount ns, ro binds, chroot, nobody",
                "ms",
                bare,
            )
            .note("round-robin with the rows below"),
        );
        self.rows.push(
            Row::measured(
                "1e",
                "bare + pid namespace (a reaping pid 1) + its /proc",
                "ms",
                sum(&v[1]),
            )
            .vs("bare", bare),
        );
        let full = sum(&v[2]);
        self.rows.push(
            Row::measured(
                "1e",
                "bare + pid namespace + /proc + masks (as for a task that is not root)",
                "ms",
                full,
            )
            .vs("bare", bare),
        );
        if let (Some(b), Some(f)) = (bare, full) {
            self.rows.push(
                Row::measured("1e", "the kernel's cost of the pid namespace, /proc and masks (difference of medians)", "ms", one(f.median - b.median))
                    .note("what any supervisor doing the same pays"),
            );
        }
        let tend = sum(&v[3]);
        self.rows.push(
            Row::measured("1e", "tend-spawn exec-style /bin/true (as 1c)", "ms", tend)
                .vs("bare + pid ns + /proc + masks", full),
        );
        if self.no_pid_ns_bin.is_none() {
            return;
        }
        let without = sum(&v[4]);
        self.rows.push(
            Row::measured(
                "1e",
                "same, tend-spawn built without the pid namespace and /proc (bench-no-pid-namespace)",
                "ms",
                without,
            )
            .vs("tend-spawn (as 1c)", tend)
            .note("the same sequence otherwise; round-robin with the rows above"),
        );
        // Each round ran both builds back to back: the difference within a
        // round is what drifts in the machine's speed leave alone.
        let paired: Vec<f64> = v[3].iter().zip(&v[4]).map(|(t, w)| t - w).collect();
        if let (Some(t), Some(w), Some(d)) = (tend, without, sum(&paired)) {
            self.rows.push(Row::measured(
                "1e",
                "tend-spawn's cost of the pid namespace, /proc and masks (difference of medians)",
                "ms",
                one(t.median - w.median),
            ));
            self.rows.push(
                Row::measured(
                    "1e",
                    "the same cost, round by round (median and p95 of the per-round differences)",
                    "ms",
                    Some(d),
                )
                .target("<= 0.5 ms", Some(d.median <= 0.5)),
            );
        }
    }

    /// Figure ab: two builds of tend-spawn, 1a and 1c, alternating start by
    /// start, so that a change too small for the machine's drift between
    /// runs still shows: the medians, and the median of the per-round
    /// differences.
    fn ab(&mut self) {
        let p = self.plan;
        let Some(other) = self.ab_bin.clone() else {
            self.rows.push(Row::not_measured(
                "ab",
                "A/B of two tend-spawns",
                "needs --ab FILE",
            ));
            return;
        };
        say(&format!(
            "ab: {} against {}",
            self.spawn_bin.display(),
            other.display()
        ));
        nix::unistd::sync();
        let bins = [self.spawn_bin.clone(), other];
        let n = p.fast * 2;
        let run = |w: &mut spawn::World, isolated: bool| -> Result<[Vec<f64>; 2], String> {
            let mut out: [Vec<f64>; 2] = Default::default();
            for i in 0..n + p.warm {
                // Which build goes first alternates too.
                for k in [i % 2, 1 - i % 2] {
                    let d = if isolated {
                        latency::isolated(&bins[k], w, &self.cg_prefix, true, 1, 0)?
                    } else {
                        latency::direct(&bins[k], w, 1, 0)?.0
                    };
                    if i >= p.warm {
                        out[k].extend(d);
                    }
                }
            }
            Ok(out)
        };
        let mut rows = Vec::new();
        for (fig, isolated) in [("1a", false), ("1c", true)] {
            if isolated && !self.root {
                rows.push(Row::not_measured("ab", "1c", "needs root"));
                continue;
            }
            match spawn::World::new(&self.base, &format!("ab{fig}"))
                .and_then(|mut w| run(&mut w, isolated))
            {
                Ok([a, b]) => {
                    let (sa, sb) = (sum(&a), sum(&b));
                    rows.push(Row::measured(
                        "ab",
                        &format!("{fig}: B, the --ab build"),
                        "ms",
                        sb,
                    ));
                    rows.push(
                        Row::measured("ab", &format!("{fig}: A, the --bin-dir build"), "ms", sa)
                            .vs("B", sb),
                    );
                    let paired: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
                    rows.push(
                        Row::measured(
                            "ab",
                            &format!("{fig}: A - B, round by round"),
                            "ms",
                            sum(&paired),
                        )
                        .note("median and p95 of the per-round differences"),
                    );
                }
                Err(e) => rows.push(Row::not_measured("ab", fig, e)),
            }
        }
        self.rows.extend(rows);
    }

    /// What of 1(c) the tend-spawn at hand can do: cgroup + nobody, no chroot.
    fn isolated_without_chroot(&mut self, runc: Option<Summary>) {
        let p = self.plan;
        say("1c': bare and tend-spawn with cgroup + nobody, no chroot");
        nix::unistd::sync();
        let bare = match latency::bare(&self.base, &self.cg_prefix, false, p.fast, p.warm) {
            Ok(v) => {
                let s = sum(&v);
                self.rows.push(
                    Row::measured("1c' base", "bare without chroot: mkdir cgroups + fork + join + setuid nobody + exec + wait + rmdir", "ms", s)
                        .vs("floor", self.floor),
                );
                s
            }
            Err(e) => {
                self.rows
                    .push(Row::not_measured("1c' base", "bare without chroot", e));
                None
            }
        };
        nix::unistd::sync();
        match spawn::World::new(&self.base, "n").and_then(|mut w| {
            latency::isolated(
                &self.spawn_bin,
                &mut w,
                &self.cg_prefix,
                false,
                p.fast,
                p.warm,
            )
        }) {
            Ok(v) => {
                let s = sum(&v);
                let r = Row::measured(
                    "1c'",
                    "tend-spawn /bin/true with cgroup (mem, cpu, pids) and user nobody, no chroot",
                    "ms",
                    s,
                )
                .vs("bare without chroot", bare);
                let met = r.ratio.map(|x| x <= 2.5);
                self.rows.push(
                    r.target("<= 2.5x bare", met)
                        .note("partial 1c: the chroot is not available"),
                );
                let r =
                    Row::measured("1c'", "same, against runc run", "ms", s).vs("runc run", runc);
                let met = r.ratio.map(|x| x <= 0.2);
                self.rows.push(r.target("<= 0.20x runc (5x faster)", met));
            }
            Err(e) => self.rows.push(Row::not_measured(
                "1c'",
                "tend-spawn with cgroup + nobody, no chroot",
                e,
            )),
        }
    }

    /// 1(a) beside the peers: a resident runsv and s6-supervise each start
    /// /bin/true once on request, timed until their status says it ended.
    fn peer_latency(&mut self) {
        let p = self.plan;
        for peer in peers::PEERS {
            let what = format!(
                "{}: `o` (once) to a resident supervisor of /bin/true, until its status says it ended",
                peer.name()
            );
            let Some(bin) = which(peer.name()) else {
                let why = format!("not installed (Debian package {})", peer.package());
                self.rows.push(Row::not_measured("1a base", &what, why));
                continue;
            };
            // runsv rests a second between runs: fewer rounds of it.
            let n = if peer.rest().is_zero() {
                p.fast
            } else {
                p.slow
            };
            say(&format!("1a: {} once /bin/true, {n} runs", peer.name()));
            nix::unistd::sync();
            match peers::once_latency(peer, &bin, &self.base.join("peers"), n, p.warm) {
                Ok(v) => {
                    let s = sum(&v);
                    self.rows.push(
                        Row::measured("1a base", &what, "ms", s)
                            .vs("floor", self.floor)
                            .note("no supervisor exec, no fsync: the control fifo, fork + exec, the status file's rename, seen through inotify"),
                    );
                    self.rows.push(
                        Row::measured(
                            "1a",
                            &format!("tend-spawn raw_exec /bin/true, against {}", peer.name()),
                            "ms",
                            self.direct,
                        )
                        .vs(&format!("{} once", peer.name()), s)
                        .note("tend-spawn is exec'd per task and fsyncs the exit file; the peer is resident"),
                    );
                }
                Err(e) => self.rows.push(Row::not_measured("1a base", &what, e)),
            }
        }
    }

    /// Figure 2's peers: `k` idle runsv and s6-supervise, each over its own
    /// `sleep 600`; None for one not installed (said in the notes) or that
    /// failed (said in a row).
    fn peer_footprints(&mut self, k: usize) -> Vec<(peers::Peer, Vec<procfs::Footprint>)> {
        let mut out = Vec::new();
        for peer in peers::PEERS {
            let Some(bin) = which(peer.name()) else {
                self.notes.push(format!(
                    "{}: not installed (Debian package {})",
                    peer.name(),
                    peer.package()
                ));
                continue;
            };
            say(&format!("2: {k} idle {}", peer.name()));
            match peers::idle(peer, &bin, &self.base.join("peers"), k) {
                Ok(f) => out.push((peer, f)),
                Err(e) => self.rows.push(Row::not_measured(
                    "2 base",
                    &format!("{} idle footprint", peer.name()),
                    e,
                )),
            }
        }
        out
    }

    fn footprint(&mut self) {
        let p = self.plan;
        let peer_fp = self.peer_footprints(p.many);
        let mut cm: Option<procfs::Footprint> = None;
        match which("conmon") {
            None => self.notes.push("conmon: not installed".into()),
            Some(c) => match which("runc") {
                None => self
                    .notes
                    .push("conmon: not measured: runc not installed".into()),
                Some(r) => {
                    say("2: conmon");
                    match footprint::conmon(&c, &r, &self.base) {
                        Ok(f) => cm = Some(f),
                        Err(e) => self
                            .rows
                            .push(Row::not_measured("2 base", "conmon idle", e)),
                    }
                }
            },
        }
        say("2: idle tend-spawn footprint, 1 task");
        let mut w = match spawn::World::new(&self.base, "f") {
            Ok(w) => w,
            Err(e) => {
                self.rows
                    .push(Row::not_measured("2", "tend-spawn footprint", e));
                return;
            }
        };
        let mut singles = Vec::new();
        for _ in 0..p.single {
            match footprint::idle_daemons(&self.spawn_bin, &mut w, 1) {
                Ok(f) => singles.extend(f),
                Err(e) => {
                    self.rows
                        .push(Row::not_measured("2", "tend-spawn footprint, 1 task", e));
                    return;
                }
            }
        }
        say(&format!("2: idle tend-spawn footprint, {} tasks", p.many));
        let many = match footprint::idle_daemons(&self.spawn_bin, &mut w, p.many) {
            Ok(f) => f,
            Err(e) => {
                self.rows.push(Row::not_measured(
                    "2",
                    "tend-spawn footprint, many tasks",
                    e,
                ));
                Vec::new()
            }
        };
        let pick = |v: &[procfs::Footprint], k: usize| -> Option<Summary> {
            let x: Vec<f64> = v
                .iter()
                .map(|f| [f.rss_kb, f.pss_kb, f.uss_kb][k])
                .collect();
            Summary::of(&x)
        };
        let cmv = |k: usize| cm.map(|f| [f.rss_kb, f.pss_kb, f.uss_kb][k]).and_then(one);
        for (peer, f) in &peer_fp {
            for (k, name) in ["RSS", "PSS", "USS"].iter().enumerate() {
                self.rows.push(
                    Row::measured(
                        "2 base",
                        &format!(
                            "{} {name} per supervisor, {} concurrent idle services (sleep 600)",
                            peer.name(),
                            f.len()
                        ),
                        "kB",
                        pick(f, k),
                    )
                    .note("median and p95 over the supervisors"),
                );
            }
        }
        for (k, name) in ["RSS", "PSS", "USS"].iter().enumerate() {
            self.rows.push(
                Row::measured(
                    "2",
                    &format!("tend-spawn {name} per daemon, 1 idle task (sleep 600)"),
                    "kB",
                    pick(&singles, k),
                )
                .vs("conmon", cmv(k))
                .note(format!("{} separate daemons", singles.len())),
            );
        }
        if !many.is_empty() {
            for (k, name) in ["RSS", "PSS", "USS"].iter().enumerate() {
                let r = Row::measured(
                    "2",
                    &format!(
                        "tend-spawn {name} per daemon, {} concurrent idle tasks",
                        p.many
                    ),
                    "kB",
                    pick(&many, k),
                )
                .vs("conmon", cmv(k))
                .note("median and p95 over the daemons");
                let r = match k {
                    0 => {
                        let met = r.summary.map(|s| s.median <= 1024.0);
                        r.target("RSS <= 1 MB (1024 kB)", met)
                    }
                    2 => {
                        let met = r.summary.map(|s| s.median <= 100.0);
                        r.target("USS <= 100 kB (below runsv and s6)", met)
                    }
                    _ => r,
                };
                self.rows.push(r);
            }
            for (peer, f) in &peer_fp {
                for (k, name) in [(0, "RSS"), (2, "USS")] {
                    self.rows.push(
                        Row::measured(
                            "2",
                            &format!(
                                "tend-spawn {name} per daemon, {} concurrent idle tasks, against {}",
                                p.many,
                                peer.name()
                            ),
                            "kB",
                            pick(&many, k),
                        )
                        .vs(&format!("{} {name}", peer.name()), pick(f, k)),
                    );
                }
            }
        }
        if let Some(f) = cm {
            self.notes.push(format!(
                "conmon (2.x, supervising a runc busybox `sleep 600`): RSS {:.0} kB, PSS {:.0} kB, USS {:.0} kB (one instance)",
                f.rss_kb, f.pss_kb, f.uss_kb
            ));
        }
    }

    fn scale(&mut self) {
        let p = self.plan;
        let n = p.scale_tasks;
        say(&format!("3: agent with {n} tasks"));
        // Cold starts on an empty store: the baseline of the restart figure.
        let mut cold = Vec::new();
        let mut cold_health = Vec::new();
        for i in 0..p.restarts {
            match agent::Agent::start(
                &self.tend_bin,
                &self.spawn_bin,
                &self.base.join(format!("cd{i}")),
                &spawn::run_root().join(format!("cr{i}")),
            ) {
                Ok((a, ms)) => {
                    cold.push(ms);
                    let rounds = agent::HEALTH_ROUNDS / p.restarts.max(1);
                    if let Ok(t) = agent::request_times(&a.run, "/v1/health", rounds) {
                        cold_health.extend(t);
                    }
                    a.stop();
                }
                Err(e) => {
                    self.rows.push(Row::not_measured("3", "tend agent", e));
                    return;
                }
            }
        }
        let res = agent::Agent::start(
            &self.tend_bin,
            &self.spawn_bin,
            &self.base.join("sd"),
            &spawn::run_root().join("sr"),
        )
        .and_then(|(mut a, _)| {
            let r = agent::scale(&mut a, n, p.restarts);
            a.stop();
            r
        });
        procfs::reap_zombies();
        let s = match res {
            Ok(s) => s,
            Err(e) => {
                for f in ["2", "3"] {
                    self.rows.push(Row::not_measured(
                        f,
                        &format!("agent with {n} tasks"),
                        e.clone(),
                    ));
                }
                return;
            }
        };
        self.rows.push(
            Row::measured(
                "2",
                &format!("agent RSS with {n} running tasks"),
                "kB",
                one(s.agent_rss_kb),
            )
            .vs("agent idle (0 tasks)", one(s.agent_idle_rss_kb))
            .note("VmRSS from smaps_rollup, one sample")
            // The target is for 1,000 tasks; --quick runs 100.
            .target(
                "<= 30 MB at 1,000 tasks",
                (n >= 1000).then_some(s.agent_rss_kb <= 30.0 * 1024.0),
            ),
        );
        let nf = n as f64;
        self.rows.push(
            Row::measured(
                "3",
                &format!(
                    "start {n} sleep tasks (one job, count = {n}) until health shows all running"
                ),
                "ms",
                one(s.start_all_ms),
            )
            .note("single run")
            .ratio(self.direct.map(|d| s.start_all_ms / nf / d.median))
            .note("ratio: per-task share vs 1a median (sequential direct spawn)")
            .target(
                "<= 1.5 s for 1,000 on 2 cores",
                (n >= 1000).then_some(s.start_all_ms <= 1500.0),
            ),
        );
        if let Some(d) = self.direct {
            let last = self.rows.len() - 1;
            self.rows[last].baseline = Some("1a per task".into());
            self.rows[last].baseline_median = Some(d.median * nf);
        }
        self.rows.push(
            Row::measured(
                "3 base",
                &format!(
                    "the data dir's file system, just before: make what {n} tasks have (6 dirs, 7 small files each), one thread, no fsync"
                ),
                "ms",
                one(s.fs_floor_ms),
            )
            .note("the file system's share of a start at this moment; single run"),
        );
        self.rows.push(
            Row::measured(
                "3 base",
                &format!("start {n} `/bin/sleep 600` from one thread (std spawn), just before"),
                "ms",
                one(s.spawn_floor_ms),
            )
            .note("the kernel's process creation; single run"),
        );
        self.rows.push(
            Row::measured(
                "3",
                &format!("start {n} sleep tasks, against the two floors just above added"),
                "ms",
                one(s.start_all_ms),
            )
            .vs(
                "file system + spawn floors",
                one(s.fs_floor_ms + s.spawn_floor_ms),
            ),
        );
        // The same start with the data dir on tmpfs: what the disk costs
        // (the store's fsyncs, the inodes of the dirs and files) beside what
        // the agent and the kernel's process creation cost.
        let shm = agent::Agent::start(
            &self.tend_bin,
            &self.spawn_bin,
            &spawn::run_root().join("sd-tmpfs"),
            &spawn::run_root().join("sr-tmpfs"),
        )
        .and_then(|(mut a, _)| {
            let r = agent::start_only(&mut a, n);
            a.stop();
            r
        });
        procfs::reap_zombies();
        self.rows.push(match shm {
            Ok(ms) => Row::measured(
                "3",
                &format!("start {n} sleep tasks as above, data dir on tmpfs (fsync is free)"),
                "ms",
                one(ms),
            )
            .vs("the same start, data dir on disk", one(s.start_all_ms))
            .target(
                "<= 1.5 s for 1,000 on 2 cores",
                (n >= 1000).then_some(ms <= 1500.0),
            )
            .note("not the default layout: shows what the disk costs; single run"),
            Err(e) => Row::not_measured("3", "start, data dir on tmpfs", e),
        });
        self.rows.push(
            Row::measured(
                "3",
                &format!("agent kill -9 -> restart -> health answers with all {n} running"),
                "ms",
                sum(&s.restart_ms),
            )
            .vs("agent cold start, empty store", sum(&cold)),
        );
        self.rows.push(
            Row::measured(
                "3",
                "agent's own \"state taken up\" millis after restart",
                "ms",
                sum(&s.taken_up_ms),
            )
            .vs("agent cold start, empty store", sum(&cold)),
        );
        self.rows.push(
            Row::measured(
                "3",
                &format!("GET /v1/health with {n} running tasks, whole request"),
                "ms",
                sum(&s.health_ms),
            )
            .vs("GET /v1/health, empty agent", sum(&cold_health)),
        );
        self.rows.push(
            Row::measured(
                "3",
                &format!("GET /v1/health with {n} running tasks, while another client lists every allocation over and over"),
                "ms",
                sum(&s.health_while_listing_ms),
            )
            .vs("GET /v1/health, empty agent", sum(&cold_health))
            .note("a list must not hold the state lock for long"),
        );
        self.rows.push(
            Row::measured(
                "3",
                &format!("GET /v1/allocations: all {n}, whole request"),
                "ms",
                sum(&s.list_ms),
            )
            .note("the answer read and parsed as JSON by the client"),
        );
        let one = sum(&s.exit_to_recorded_one_ms);
        let met = one.as_ref().map(|o| o.median < 1.0);
        self.rows.push(
            Row::measured(
                "3",
                &format!(
                    "exit-to-recorded with {n} running: exit file finished_at -> agent's \"exited\" event time"
                ),
                "ms",
                one,
            )
            .vs(
                "1a: finished_at -> Exited at the direct client",
                self.notify,
            )
            .target("median < 1 ms", met)
            .note(format!(
                "{} tasks SIGKILLed one at a time, 20 ms apart, while the others run",
                s.exit_to_recorded_one_ms.len()
            )),
        );
        self.rows.push(
            Row::measured(
                "3",
                "exit-to-recorded, burst: the remaining tasks SIGKILLed at once",
                "ms",
                sum(&s.exit_to_recorded_ms),
            )
            .vs(
                "1a: finished_at -> Exited at the direct client",
                self.notify,
            )
            .note(format!(
                "{} exits at once: every daemon fsyncs its exit file together; per task",
                s.exit_to_recorded_ms.len()
            )),
        );
    }

    fn logs(&mut self) {
        let p = self.plan;
        let mb = p.log_bytes as f64 / 1e6;
        say(&format!("4: logs, {} runs of {mb:.0} MB", p.log_runs));
        let mut w = match spawn::World::new(&self.base, "l") {
            Ok(w) => w,
            Err(e) => {
                self.rows.push(Row::not_measured("4", "log throughput", e));
                return;
            }
        };
        let mut tp = Vec::new();
        let mut cpu = Vec::new();
        let mut base = Vec::new();
        for _ in 0..p.log_runs {
            match logs::straight(&self.base, p.log_bytes) {
                Ok(s) => base.push(mb / s),
                Err(e) => {
                    self.rows.push(Row::not_measured("4", "log throughput", e));
                    return;
                }
            }
            match logs::through_spawn(&self.spawn_bin, &mut w, p.log_bytes) {
                Ok((s, c)) => {
                    tp.push(mb / s);
                    cpu.push(c / (p.log_bytes as f64 / 1e9));
                }
                Err(e) => {
                    self.rows.push(Row::not_measured("4", "log throughput", e));
                    return;
                }
            }
        }
        let r = Row::measured(
            "4",
            &format!("`head -c {mb:.0}MB /dev/zero` through tend-spawn's rotating pipe (100 MB x 20 files)"),
            "MB/s",
            sum(&tp),
        )
        .vs("same command > file", sum(&base))
        .note("time from request to Exited, spawn included");
        let met = r.ratio.map(|x| x >= 0.8);
        self.rows.push(r.target(">= 80% of straight to file", met));
        self.rows.push(
            Row::measured(
                "4",
                "tend-spawn CPU per GB logged (utime+stime before Release)",
                "s/GB",
                sum(&cpu),
            )
            .note("no baseline: a file write costs the writer, not a supervisor"),
        );
    }

    fn variants(&mut self, variants: &[(String, PathBuf)]) {
        let p = self.plan;
        for (name, dir) in variants {
            // Absolute: tend-spawn is exec'd with cwd / (bench/run passes
            // variant dirs relative to the workspace).
            let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            let bin = dir.join("tend-spawn");
            let size = match fs::metadata(&bin) {
                Ok(m) => m.len() as f64 / 1024.0,
                Err(e) => {
                    self.rows.push(Row::not_measured(
                        "5",
                        &format!("profile {name}"),
                        format!("{}: {e}", bin.display()),
                    ));
                    continue;
                }
            };
            say(&format!("5: profile {name}"));
            nix::unistd::sync();
            self.rows.push(Row::measured(
                "5",
                &format!("profile {name}: tend-spawn binary size"),
                "KiB",
                one(size),
            ));
            let lat = spawn::World::new(&self.base, &format!("v{}", self.rows.len()))
                .and_then(|mut w| latency::direct(&bin, &mut w, p.variant_runs, p.warm));
            match lat {
                Ok((v, _, _)) => self.rows.push(
                    Row::measured("5", &format!("profile {name}: 1a latency"), "ms", sum(&v))
                        .vs("floor", self.floor),
                ),
                Err(e) => self.rows.push(Row::not_measured(
                    "5",
                    &format!("profile {name}: 1a latency"),
                    e,
                )),
            }
            let rss = spawn::World::new(&self.base, &format!("v{}", self.rows.len())).and_then(
                |mut w| {
                    let mut out = Vec::new();
                    for _ in 0..p.single {
                        out.extend(footprint::idle_daemons(&bin, &mut w, 1)?);
                    }
                    Ok(out)
                },
            );
            match rss {
                Ok(v) => {
                    let x: Vec<f64> = v.iter().map(|f| f.rss_kb).collect();
                    self.rows.push(Row::measured(
                        "5",
                        &format!("profile {name}: idle RSS, 1 task"),
                        "kB",
                        sum(&x),
                    ));
                }
                Err(e) => self.rows.push(Row::not_measured(
                    "5",
                    &format!("profile {name}: idle RSS"),
                    e,
                )),
            }
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tend-bench: {e}");
            std::process::exit(2);
        }
    };
    cleanup::on_signal();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("tend-bench: cannot become a subreaper: {e}");
    }
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tend-bench: {e}");
            1
        }
    };
    cleanup::run();
    std::process::exit(code);
}

fn run(args: Args) -> Result<(), String> {
    let plan = Plan::new(args.quick);
    let base = PathBuf::from(format!("/tmp/tb{}", std::process::id()));
    fs::create_dir_all(&base).map_err(|e| format!("mkdir {}: {e}", base.display()))?;
    cleanup::add_root(&base);
    let shm = PathBuf::from(format!("/dev/shm/tb{}", std::process::id()));
    cleanup::add_root(&shm);
    let cg_prefix = format!("tb{}", std::process::id());
    cleanup::set_cgroup_prefix(&cg_prefix);
    let bin_dir =
        fs::canonicalize(&args.bin_dir).map_err(|e| format!("{}: {e}", args.bin_dir.display()))?;
    let mut b = Bench {
        plan,
        base,
        cg_prefix,
        spawn_bin: bin_dir.join("tend-spawn"),
        no_pid_ns_bin: match &args.no_pid_ns_bin {
            Some(f) => Some(fs::canonicalize(f).map_err(|e| format!("{}: {e}", f.display()))?),
            None => None,
        },
        ab_bin: match &args.ab_bin {
            Some(f) => Some(fs::canonicalize(f).map_err(|e| format!("{}: {e}", f.display()))?),
            None => None,
        },
        tend_bin: bin_dir.join("tend"),
        root: nix::unistd::geteuid().is_root(),
        rows: Vec::new(),
        notes: Vec::new(),
        floor: None,
        direct: None,
        notify: None,
        crun: None,
    };
    let t0 = Instant::now();
    let started = tend_proto::time::now();
    let load_start = loadavg();
    if args.wants("1") {
        b.latency();
    }
    if args.wants("1d") {
        b.chroot_sizes();
    }
    if args.wants("1e") {
        b.isolation_levels();
    }
    // Only when asked for by name: it needs --ab.
    if args.only.iter().any(|f| f == "ab") {
        b.ab();
    }
    if args.wants("2") {
        b.footprint();
    }
    if args.wants("3") {
        b.scale();
    }
    if args.wants("6") {
        b.oci();
    }
    cleanup::run_processes_only(&b.base);
    let variants = if args.variants.is_empty() {
        vec![(
            "current (workspace [profile.release])".to_string(),
            bin_dir.clone(),
        )]
    } else {
        args.variants.clone()
    };
    if args.wants("5") {
        b.variants(&variants);
    }
    // Last: a GB of dirty pages makes every later fsync slow.
    if args.wants("4") {
        b.logs();
    }
    if !args.only.is_empty() {
        b.notes.push(format!(
            "--only {}: the other figures were not run, so baselines from them read (not measured)",
            args.only.join(",")
        ));
    }
    b.notes.push(format!(
        "tend-spawn measured: {} ({})",
        b.spawn_bin.display(),
        if is_static(&b.spawn_bin) {
            "static, as it ships"
        } else {
            "dynamically linked"
        }
    ));
    if plan.quick {
        b.notes.push("--quick: fewer runs, 100 tasks for figure 3, 100 MB for figure 4, only the current release profile for figure 5".into());
    }
    let report = Report {
        machine: machine(),
        run: format!(
            "{started}, commit {}, {}, {:.0} s, loadavg {load_start} at start, {} at end (other load on the machine widens p95)",
            args.commit,
            if plan.quick { "--quick" } else { "full" },
            t0.elapsed().as_secs_f64(),
            loadavg()
        ),
        rows: b.rows,
        notes: b.notes,
    };
    fs::create_dir_all(&args.out).map_err(|e| format!("mkdir {}: {e}", args.out.display()))?;
    let md = report.markdown();
    // A partial run never replaces the whole table.
    let stem = if args.only.is_empty() {
        "latest"
    } else {
        "partial"
    };
    fs::write(args.out.join(format!("{stem}.md")), &md).map_err(|e| e.to_string())?;
    fs::write(
        args.out.join(format!("{stem}.json")),
        serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    print!("{md}");
    Ok(())
}

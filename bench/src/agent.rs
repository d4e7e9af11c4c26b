//! Figures through the `tend` binary: `tend run` in the foreground and against
//! a running `tend agent`, the agent's footprint and its scale figures.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A job of `count` allocations of one raw_exec task, never restarted.
pub fn job(name: &str, count: usize, command: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "job \"{name}\" {{\n  group \"g\" {{\n    count = {count}\n    restart {{\n      attempts = 0\n      mode = \"fail\"\n    }}\n    task \"t\" {{\n      driver = \"raw_exec\"\n      kill_timeout = \"1s\"\n      config {{\n        command = {command:?}\n        args = [{}]\n      }}\n    }}\n  }}\n}}\n",
        args.join(", ")
    )
}

/// One HTTP/1.1 exchange with the agent's API socket; (status, JSON body).
pub fn api(
    run_dir: &Path,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(u16, Value), String> {
    let sock = run_dir.join("tend.sock");
    let mut s =
        UnixStream::connect(&sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: tend\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("bad status line")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let v =
        serde_json::from_slice(&body).map_err(|e| format!("{method} {target}: not JSON: {e}"))?;
    Ok((status, v))
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(nl) = b[i..].windows(2).position(|w| w == b"\r\n") {
        let len =
            usize::from_str_radix(String::from_utf8_lossy(&b[i..i + nl]).trim(), 16).unwrap_or(0);
        i += nl + 2;
        if len == 0 || i + len > b.len() {
            break;
        }
        out.extend_from_slice(&b[i..i + len]);
        i += len + 2;
    }
    out
}

/// A running `tend agent` started by the harness.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Its data dir.
    pub data: PathBuf,
    /// Its run dir (API socket, daemon sockets).
    pub run: PathBuf,
    /// Its stderr log.
    pub log: PathBuf,
    tend: PathBuf,
    spawn: PathBuf,
}

impl Agent {
    /// Start `tend agent` on `data` and `run`; wait until health answers.
    pub fn start(
        tend: &Path,
        spawn: &Path,
        data: &Path,
        run: &Path,
    ) -> Result<(Agent, f64), String> {
        for d in [data, run] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let log = data.join("agent.log");
        let mut a = Agent {
            child: spawn_agent(tend, spawn, data, run, &log)?,
            data: data.to_path_buf(),
            run: run.to_path_buf(),
            log,
            tend: tend.to_path_buf(),
            spawn: spawn.to_path_buf(),
        };
        let t = Instant::now();
        a.wait_health(0, Duration::from_secs(30))?;
        Ok((a, t.elapsed().as_secs_f64() * 1000.0))
    }

    /// The agent's pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    /// Poll health every 2 ms until it answers with `running` running tasks.
    pub fn wait_health(&mut self, running: u64, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        let mut last;
        loop {
            match api(&self.run, "GET", "/v1/health", b"") {
                Ok((200, v)) if v["running_tasks"].as_u64() == Some(running) => return Ok(()),
                Ok((_, v)) => last = v.to_string(),
                Err(e) => last = e,
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("the agent exited: {st}; log: {}", self.log_tail()));
            }
            if Instant::now() > end {
                return Err(format!(
                    "health not at {running} running tasks after {timeout:?}: {last}"
                ));
            }
            sleep(Duration::from_millis(2));
        }
    }

    /// kill -9 the agent, start it again; ms until health answers with
    /// `running` tasks, and the millis of its last "state taken up" line.
    pub fn crash_restart(&mut self, running: u64) -> Result<(f64, Option<f64>), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(self.run.join("tend.sock"));
        let t = Instant::now();
        self.child = spawn_agent(&self.tend, &self.spawn, &self.data, &self.run, &self.log)?;
        self.wait_health(running, Duration::from_secs(300))?;
        let d = t.elapsed().as_secs_f64() * 1000.0;
        Ok((d, self.taken_up_millis()))
    }

    fn taken_up_millis(&self) -> Option<f64> {
        let text = strip_ansi(&fs::read_to_string(&self.log).ok()?);
        let line = text.lines().rev().find(|l| l.contains("state taken up"))?;
        let i = line.find("millis=")?;
        line[i + 7..]
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .parse()
            .ok()
    }

    fn log_tail(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }

    /// SIGTERM the agent (tasks keep running) and reap it.
    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text without ANSI colour sequences (ESC [ ... letter).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn spawn_agent(
    tend: &Path,
    spawn: &Path,
    data: &Path,
    run: &Path,
    log: &Path,
) -> Result<Child, String> {
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let c = Command::new(tend)
        .arg("--data-dir")
        .arg(data)
        .arg("--run-dir")
        .arg(run)
        .args(["--log-level", "info", "agent", "--spawn-bin"])
        .env("NO_COLOR", "1")
        .arg(spawn)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        .spawn()
        .map_err(|e| format!("exec {} agent: {e}", tend.display()))?;
    crate::cleanup::add_pid(i32::try_from(c.id()).unwrap_or(0));
    Ok(c)
}

/// 1(b), foreground: whole-process time of `tend run job` with no agent.
pub fn run_foreground(
    tend: &Path,
    spawn: &Path,
    base: &Path,
    n: usize,
    warm: usize,
) -> Result<Vec<f64>, String> {
    let data = base.join("fgd");
    let run = crate::spawn::run_root().join("fgr");
    for d in [&data, &run] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let jobf = base.join("true.hcl");
    fs::write(&jobf, job("true", 1, "/bin/true", &[])).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        let o = Command::new(tend)
            .arg("--data-dir")
            .arg(&data)
            .arg("--run-dir")
            .arg(&run)
            .arg("run")
            .arg("--spawn-bin")
            .arg(spawn)
            .arg(&jobf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("exec tend run: {e}"))?;
        let d = t.elapsed().as_secs_f64() * 1000.0;
        if !o.status.success() {
            return Err(format!(
                "tend run (foreground): {} {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        crate::procfs::reap_zombies();
        if i >= warm {
            out.push(d);
        }
    }
    Ok(out)
}

/// 1(b), agent: `tend run --json job` submitted to the agent, then the API
/// polled every 1 ms until the allocation is complete; ms per run.
pub fn run_submitted(
    a: &Agent,
    tend: &Path,
    base: &Path,
    n: usize,
    warm: usize,
) -> Result<Vec<f64>, String> {
    let jobf = base.join("true-agent.hcl");
    fs::write(&jobf, job("true", 1, "/bin/true", &[])).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warm {
        let t = Instant::now();
        let o = Command::new(tend)
            .arg("--run-dir")
            .arg(&a.run)
            .arg("run")
            .arg("--json")
            .arg(&jobf)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("exec tend run: {e}"))?;
        let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| {
            format!(
                "tend run --json against the agent: {e}: {} {}",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )
        })?;
        let id = v["allocations"][0]
            .as_str()
            .ok_or("no allocation id")?
            .to_string();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, a2) = api(&a.run, "GET", &format!("/v1/allocations/{id}"), b"")?;
            if a2["tasks"][0]["state"] == "dead" {
                break;
            }
            if Instant::now() > end {
                return Err(format!("allocation {id} not dead after 30 s: {a2}"));
            }
            sleep(Duration::from_millis(1));
        }
        let d = t.elapsed().as_secs_f64() * 1000.0;
        crate::procfs::reap_zombies();
        if i >= warm {
            out.push(d);
        }
    }
    Ok(out)
}

/// ms of each of `n` `GET target` requests to the agent, one after another,
/// whole as a client sees them (connect, request, answer read and parsed).
pub fn request_times(run_dir: &Path, target: &str, n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (st, v) = api(run_dir, "GET", target, b"")?;
        if st != 200 {
            return Err(format!("GET {target}: {st} {v}"));
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// How many health and list requests the scale run times.
pub const HEALTH_ROUNDS: usize = 500;
const LIST_ROUNDS: usize = 20;

/// Make in `dir` what `n` tasks of one job have on the disk, as the agent
/// and tend-spawn make them but with no fsync: per task six dirs (alloc,
/// logs, shared, task, local, state) and seven small files (two records, a
/// token, four log files). The ms it took; `dir` is left for the caller to
/// remove after the start it stands beside (a removal makes the next
/// creations slower on some file systems).
pub fn fs_floor(dir: &Path, n: usize) -> Result<f64, String> {
    let e = |p: &Path, x: std::io::Error| format!("{}: {x}", p.display());
    let record = vec![b'x'; 1500];
    let t = Instant::now();
    for i in 0..n {
        let root = dir.join(i.to_string());
        for sub in ["logs", "alloc", "t/local", "state"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|x| e(&d, x))?;
        }
        for (sub, name, len) in [
            ("state", "alloc.json", 1500),
            ("state", "t.json", 1500),
            ("state", "t.token", 64),
            ("logs", "t.stdout.0", 0),
            ("logs", "t.stderr.0", 0),
            ("logs", "t.stdout.index", 0),
            ("logs", "t.stderr.index", 0),
        ] {
            let f = root.join(sub).join(name);
            fs::write(&f, &record[..len]).map_err(|x| e(&f, x))?;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// The allocations of the `sleepers` job and each one's task pid.
fn sleepers(a: &Agent) -> Result<Vec<(String, Option<i32>)>, String> {
    let (_, list) = api(&a.run, "GET", "/v1/allocations", b"")?;
    Ok(list["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["job"] == "sleepers")
        .filter_map(|x| {
            let id = x["id"].as_str()?.to_string();
            let pid = x["tasks"][0]["pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok());
            Some((id, pid))
        })
        .collect())
}

/// SIGKILL the task `pid`, if there is one.
fn kill(pid: Option<i32>) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Submit the `sleepers` job of `n` `sleep 600` tasks; the ms until health
/// shows them all running.
fn start_sleepers(a: &mut Agent, n: usize) -> Result<f64, String> {
    let body = job("sleepers", n, "/bin/sleep", &["600"]);
    let t = Instant::now();
    let (st, v) = api(&a.run, "POST", "/v1/jobs", body.as_bytes())?;
    if st >= 400 {
        return Err(format!("submit: {st} {v}"));
    }
    let want = u64::try_from(n).unwrap_or(u64::MAX);
    a.wait_health(want, Duration::from_secs(600))?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Start `n` `sleep 600` tasks on the agent as [`scale`] does and nothing
/// more: the ms from POST to all running. The tasks are killed after, and
/// the agent is left with none running.
pub fn start_only(a: &mut Agent, n: usize) -> Result<f64, String> {
    nix::unistd::sync();
    let ms = start_sleepers(a, n)?;
    for (_, pid) in sleepers(a)? {
        kill(pid);
    }
    a.wait_health(0, Duration::from_secs(300))?;
    Ok(ms)
}

/// Start `n` `/bin/sleep 600` from one thread (std's spawn), the ms until
/// the last is started; then kill and reap them all.
pub fn spawn_floor(n: usize) -> Result<f64, String> {
    let mut kids = Vec::with_capacity(n);
    let t = Instant::now();
    let mut failed = None;
    for _ in 0..n {
        match Command::new("/bin/sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => kids.push(c),
            Err(x) => {
                failed = Some(format!("spawn /bin/sleep: {x}"));
                break;
            }
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    for k in &mut kids {
        let _ = k.kill();
    }
    for mut k in kids {
        let _ = k.wait();
    }
    failed.map_or(Ok(ms), Err)
}

/// What the scale runs measured.
#[derive(Debug, Default)]
pub struct Scale {
    /// ms from POST to all `n` running.
    pub start_all_ms: f64,
    /// ms to make, in the data dir's file system just before, the dirs and
    /// files `n` tasks have (see [`fs_floor`]).
    pub fs_floor_ms: f64,
    /// ms to start `n` `sleep 600` from one thread, just before (see
    /// [`spawn_floor`]).
    pub spawn_floor_ms: f64,
    /// Agent VmRSS with the tasks running, kB, and its smaps footprint.
    pub agent_rss_kb: f64,
    /// Agent RSS idle (no tasks), kB.
    pub agent_idle_rss_kb: f64,
    /// ms of each `GET /v1/health` with the tasks running.
    pub health_ms: Vec<f64>,
    /// ms of each `GET /v1/allocations` (every allocation) with them running.
    pub list_ms: Vec<f64>,
    /// ms of each `GET /v1/health` while another client lists every
    /// allocation over and over.
    pub health_while_listing_ms: Vec<f64>,
    /// ms from exec to health answering with all running, per restart.
    pub restart_ms: Vec<f64>,
    /// "state taken up" millis of each restart.
    pub taken_up_ms: Vec<f64>,
    /// ms between each task's finished_at and the agent's "exited" event,
    /// for the tasks killed together at the end.
    pub exit_to_recorded_ms: Vec<f64>,
    /// The same for the tasks killed one at a time while the others ran.
    pub exit_to_recorded_one_ms: Vec<f64>,
}

/// How many tasks of the scale run end one at a time, before the rest end
/// together, and the pause between two of them.
const ONE_AT_A_TIME: usize = 50;
const ONE_AT_A_TIME_GAP: Duration = Duration::from_millis(20);

/// Start `n` `sleep 600` tasks on the agent, crash-restart it `restarts` times,
/// then kill every task and read how late the agent recorded each exit.
pub fn scale(a: &mut Agent, n: usize, restarts: usize) -> Result<Scale, String> {
    let mut s = Scale {
        agent_idle_rss_kb: crate::procfs::footprint(a.pid())?.rss_kb,
        ..Scale::default()
    };
    // The two floors under a start, measured just before it: the file
    // system (this machine's is slow to make inodes for a while after many
    // were removed) and the kernel's process creation.
    // First everything dirty goes to the disk, and then 61 s pass: ext4
    // without a journal (this machine's) skips, when it makes an inode,
    // every free one of the group freed in the last 60 s, looking up each
    // one's inode table block (fs/ext4/ialloc.c, recently_deleted:
    // RECENTCY_MIN is 60 since Linux 5.7; 360 while the block is dirty,
    // which the start's own new inodes make it again), and the figures
    // before this one freed tens of thousands in the same dir. Inside that
    // window a start of 1,000 tasks measured 1.5-3.8 s on this machine, a
    // third of its CPU in that scan; past 60 s the scan is smaller, not
    // gone, and the floor just below, made at the same moment, carries it.
    // The floor's own files are synced too, so the agent's syncs never
    // write them.
    let floor_dir = a.data.with_file_name("fs-floor");
    nix::unistd::sync();
    sleep(Duration::from_secs(61));
    s.fs_floor_ms = fs_floor(&floor_dir, n)?;
    nix::unistd::sync();
    s.spawn_floor_ms = spawn_floor(n)?;
    s.start_all_ms = start_sleepers(a, n)?;
    let want = u64::try_from(n).unwrap_or(u64::MAX);
    sleep(Duration::from_millis(500));
    s.agent_rss_kb = crate::procfs::footprint(a.pid())?.rss_kb;
    // What a monitor and a person asking pay with the tasks running; then
    // health while a list runs beside it (a list must not hold up the rest).
    s.health_ms = request_times(&a.run, "/v1/health", HEALTH_ROUNDS)?;
    s.list_ms = request_times(&a.run, "/v1/allocations", LIST_ROUNDS)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let run = a.run.clone();
    s.health_while_listing_ms = std::thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = api(&run, "GET", "/v1/allocations", b"");
            }
        });
        let r = request_times(&run, "/v1/health", HEALTH_ROUNDS);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })?;
    for _ in 0..restarts {
        let (d, m) = a.crash_restart(want)?;
        s.restart_ms.push(d);
        if let Some(m) = m {
            s.taken_up_ms.push(m);
        }
    }
    // Kill tasks from outside; the daemons record, the agent hears. First a
    // few one at a time while the rest run, then every other one at once.
    let tasks = sleepers(a)?;
    let ones = tasks.len().min(ONE_AT_A_TIME).min(tasks.len() / 2);
    for (_, pid) in &tasks[..ones] {
        kill(*pid);
        sleep(ONE_AT_A_TIME_GAP);
    }
    a.wait_health(
        want - u64::try_from(ones).unwrap_or(0),
        Duration::from_secs(60),
    )?;
    for (_, pid) in &tasks[ones..] {
        kill(*pid);
    }
    a.wait_health(0, Duration::from_secs(300))?;
    for (i, (id, _)) in tasks.iter().enumerate() {
        let (_, al) = api(&a.run, "GET", &format!("/v1/allocations/{id}"), b"")?;
        let ev = al["tasks"][0]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .find(|e| e["kind"] == "exited")
            .and_then(|e| e["time"].as_str().map(str::to_string));
        let exit_file = a.data.join("allocs").join(id).join("t_exit_status");
        let fin = tend_proto::ExitStatus::read(&exit_file)
            .ok()
            .map(|e| e.finished_at);
        if let (Some(ev), Some(fin)) = (ev, fin) {
            if let (Some(e), Some(f)) = (
                tend_proto::time::parse_rfc3339(&ev),
                tend_proto::time::parse_rfc3339(&fin),
            ) {
                let d = match e.duration_since(f) {
                    Ok(d) => d.as_secs_f64() * 1000.0,
                    Err(x) => -x.duration().as_secs_f64() * 1000.0,
                };
                if i < ones {
                    s.exit_to_recorded_one_ms.push(d);
                } else {
                    s.exit_to_recorded_ms.push(d);
                }
            }
        }
    }
    Ok(s)
}

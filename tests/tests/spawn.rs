//! End-to-end tests of the built `tend-spawn`, driven through tend-proto exactly
//! as the agent drives it.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tend_proto::config::{Detach, FirstConnection, TaskStdin};
use tend_proto::msg::TaskState;
use tend_proto::{frame, Hello, Request, Response, Stage, StartReport, Token, PROTOCOL_VERSION};
use tend_tests::{pid_alive, require_root, wait_until, Client, Sandbox};

const LONG: Duration = Duration::from_secs(30);

fn sh(sb: &Sandbox, script: &str) -> tend_proto::SpawnConfig {
    sb.config("t", "/bin/sh", &["-c", script])
}

#[test]
fn exit_zero_and_three_are_recorded_and_pushed() {
    for code in [0, 3] {
        let sb = Sandbox::new();
        let cfg = sh(&sb, &format!("sleep 0.2; exit {code}"));
        let spawned = sb.start(&cfg);
        assert_eq!(spawned.exit_code, Some(0));
        let (daemon_pid, task_pid, instance) = spawned.pids();
        let mut c = Client::connect(&cfg);
        let w = c.welcome.unwrap();
        assert_eq!(
            (w.daemon_pid, w.task_pid, w.instance),
            (daemon_pid, task_pid, instance)
        );
        let exit = c.wait_exit();
        assert_eq!(exit.exit_code, Some(code));
        assert_eq!(exit.signal, None);
        assert_eq!(exit.pid, Some(task_pid));
        assert_eq!(exit.wait_status, Some(code << 8));
        let file = Sandbox::wait_exit_file(&cfg, LONG);
        assert_eq!(file, exit);
        match c.request(Request::Status) {
            Response::Status(s) => {
                assert_eq!(s.state, TaskState::Exited);
                assert_eq!(s.exit, Some((&exit).into()));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The task's stdin is /dev/null, whatever follows the config frame (the
/// agent's tasks); with `TaskStdin::AfterConfig` it is the rest of
/// tend-spawn's stdin, to its end (`tend-oci run` relays its own this way).
#[test]
fn a_task_reads_what_follows_the_config_only_when_asked() {
    for (stdin, want) in [
        (TaskStdin::Null, "end\n"),
        (TaskStdin::AfterConfig, "hi\nthere\nend\n"),
    ] {
        let sb = Sandbox::new();
        let mut cfg = sh(&sb, "cat; echo end");
        cfg.stdin = stdin;
        let mut input = cfg.to_frame().unwrap();
        input.extend_from_slice(b"hi\nthere\n");
        assert_eq!(sb.start_raw(&input).exit_code, Some(0));
        let mut c = Client::connect(&cfg);
        assert_eq!(c.request(Request::Wait), Response::Ok);
        assert_eq!(c.recv_exit().exit_code, Some(0), "{stdin:?}");
        let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
        assert_eq!(out, want, "{stdin:?}");
    }
}

#[test]
fn a_task_killed_from_outside_has_signal_9() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    let (_, task_pid, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    kill(Pid::from_raw(task_pid), Signal::SIGKILL).unwrap();
    let exit = c.recv_exit();
    assert_eq!(exit.signal, Some(9));
    assert_eq!(exit.exit_code, None);
    assert_eq!(exit.wait_status, Some(9));
    let text = fs::read_to_string(cfg.exit_status_path()).unwrap();
    assert!(text.contains("\"exit_code\": null"), "{text}");
    assert_eq!(Sandbox::wait_exit_file(&cfg, LONG), exit);
}

#[test]
fn a_missing_command_fails_fast_with_a_clear_message() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/nonexistent", &[]);
    let t0 = Instant::now();
    let spawned = sb.start(&cfg);
    // Fails at once, never a hang (the bound is loose: a loaded or emulated
    // host is slow, and speed is the benchmarks' business).
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let (stage, errno, message) = spawned.failure();
    assert_eq!(stage, Stage::Exec);
    assert_eq!(errno, libc_enoent());
    assert_eq!(message, "exec /nonexistent: No such file or directory");
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    assert_eq!(exit.error.as_deref(), Some(message.as_str()));
    assert_eq!(exit.exit_code, None);
    // The daemon left and took its socket with it.
    assert!(wait_until(LONG, || !Path::new(&cfg.socket_path).exists()));
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

#[test]
fn a_bad_cwd_fails_at_chdir() {
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/true", &[]);
    cfg.cwd = "/nonexistent-dir".into();
    let (stage, _, message) = sb.start(&cfg).failure();
    assert_eq!(stage, Stage::Chdir);
    assert_eq!(message, "chdir /nonexistent-dir: No such file or directory");
}

#[test]
fn the_task_sees_only_fds_0_1_2() {
    let sb = Sandbox::new();
    let cfg = sh(&sb, "ls /proc/self/fd");
    sb.start(&cfg).pids();
    Sandbox::wait_exit_file(&cfg, LONG);
    let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    // ls itself opens one fd to read the dir: 0 1 2 and that one.
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fds.len(), 4, "{out}");
    assert_eq!(&fds[..3], ["0", "1", "2"], "{out}");
}

/// The fds a task holds, seen from outside, once it has settled: right
/// after exec the dynamic loader opens libc on fd 3 for a moment, so look
/// once it has mapped libc (and so closed that fd again), up to 5 s.
fn settled_fds(task_pid: i32) -> Vec<i32> {
    let fds = || {
        let mut v: Vec<i32> = fs::read_dir(format!("/proc/{task_pid}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort();
        v
    };
    let loaded =
        || fs::read_to_string(format!("/proc/{task_pid}/maps")).is_ok_and(|m| m.contains("libc"));
    wait_until(Duration::from_secs(5), || loaded() && fds() == [0, 1, 2]);
    fds()
}

#[test]
fn the_task_holds_exactly_fds_0_1_2_seen_from_outside() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    let (_, task_pid, _) = sb.start(&cfg).pids();
    assert_eq!(settled_fds(task_pid), [0, 1, 2]);
    let null = fs::read_link(format!("/proc/{task_pid}/fd/0")).unwrap();
    assert_eq!(null, Path::new("/dev/null"));
    for fd in [1, 2] {
        let l = fs::read_link(format!("/proc/{task_pid}/fd/{fd}")).unwrap();
        assert!(l.to_string_lossy().starts_with("pipe:"), "{l:?}");
    }
}

#[test]
fn no_task_arg_or_env_value_in_the_daemons_proc_files() {
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/sleep", &["1000", "--secret-arg-7f3a"]);
    cfg.command = "/bin/sh".into();
    cfg.args = vec!["-c".into(), "sleep 100 # secret-arg-7f3a".into()];
    cfg.env.push(("SECRET".into(), "secret-env-9c1e".into()));
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    for f in ["cmdline", "environ"] {
        let bytes = fs::read(format!("/proc/{daemon_pid}/{f}")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("secret-arg-7f3a"), "{f}: {text}");
        assert!(!text.contains("secret-env-9c1e"), "{f}: {text}");
    }
}

#[test]
fn bad_clients_are_closed_and_others_still_served() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    sb.start(&cfg).pids();
    let sock = Path::new(&cfg.socket_path);
    let mut good = Client::connect(&cfg);
    let mut idle = Client::connect_raw(sock);
    idle.send_bytes(b"TE");

    let mut garbage = Client::connect_raw(sock);
    garbage.send_bytes(b"GET / HTTP/1.1\r\n\r\n");
    assert!(matches!(garbage.recv(), Ok(Response::Error(_))));
    assert!(garbage.closed_by_daemon());

    let mut long = Client::connect_raw(sock);
    let mut head = frame::MAGIC.to_vec();
    head.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    head.extend_from_slice(&(frame::MAX_FRAME_LEN + 1).to_le_bytes());
    long.send_bytes(&head);
    match long.recv() {
        Ok(Response::Error(m)) => assert!(m.contains("over the limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(long.closed_by_daemon());

    let mut wrong = Client::connect_raw(sock);
    wrong.send(&Hello {
        version: PROTOCOL_VERSION,
        token: Token([0; 32]),
    });
    assert!(matches!(wrong.recv(), Ok(Response::Error(_))));
    assert!(wrong.closed_by_daemon());

    match good.request(Request::Status) {
        Response::Status(s) => assert_eq!(s.state, TaskState::Running),
        other => panic!("{other:?}"),
    }
    // A request before Hello is refused too.
    let mut early = Client::connect_raw(sock);
    early.send(&Request::Status);
    assert!(matches!(early.recv(), Ok(Response::Error(_))));
}

#[test]
fn many_clients_do_not_stall_the_agent() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    sb.start(&cfg).pids();
    let sock = Path::new(&cfg.socket_path);
    let mut silent = Vec::new();
    for _ in 0..1000 {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => silent.push(s),
            Err(e) => panic!("connect #{}: {e}", silent.len()),
        }
    }
    let t0 = Instant::now();
    let mut c = Client::connect(&cfg);
    assert!(matches!(c.request(Request::Status), Response::Status(_)));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn the_task_outlives_the_process_that_started_tend_spawn() {
    let sb = Sandbox::new();
    let cfg = sh(
        &sb,
        "i=0; while [ $i -lt 30 ]; do echo line $i; i=$((i+1)); sleep 0.1; done; exit 7",
    );
    let frame_path = sb.data_dir().join("cfg.frame");
    let report_path = sb.data_dir().join("report.frame");
    fs::write(&frame_path, frame::encode(&cfg).unwrap()).unwrap();
    // A throwaway parent: it starts tend-spawn, then hangs around to be killed.
    // It holds none of the test's stdio and `exec`s its sleep, so the kill
    // below ends every process it started (an orphaned `sleep` holding the
    // test's stdout and stderr was what nextest flagged as LEAK).
    let mut parent = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{} < {} > {} 2>{}; exec sleep 100",
            tend_tests::spawn_bin().display(),
            frame_path.display(),
            report_path.display(),
            sb.data_dir().join("stderr").display()
        ))
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(LONG, || fs::metadata(&report_path)
        .is_ok_and(|m| m.len() > 0)));
    let bytes = fs::read(&report_path).unwrap();
    let report: tend_proto::StartReport = frame::read_frame(&mut &bytes[..], frame::MAX_FRAME_LEN)
        .unwrap()
        .decode()
        .unwrap();
    let task_pid = match report {
        tend_proto::StartReport::Started { task_pid, .. } => task_pid,
        other => panic!("{other:?}"),
    };
    parent.kill().unwrap();
    parent.wait().unwrap();
    assert!(pid_alive(task_pid));
    let log = Sandbox::log_path(&cfg, "stdout");
    let size = || fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let before = size();
    assert!(wait_until(LONG, || size() > before));
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    assert_eq!(exit.exit_code, Some(7));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("line 0\n") && text.contains("line 29\n"),
        "{text}"
    );
}

const MB: u64 = 1_000_000;

fn rotated_files(cfg: &tend_proto::SpawnConfig, stream: &str) -> Vec<(String, u64)> {
    let prefix = format!("{}.{stream}", cfg.task);
    let mut v: Vec<_> = fs::read_dir(cfg.log_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // A file rotated away between the listing and the stat is skipped.
            let len = e.metadata().ok()?.len();
            // The log files, their time indexes (`.idx`) left out.
            let log = name == prefix
                || (name.starts_with(&format!("{prefix}."))
                    && !name.ends_with(tend_logs::index::INDEX_SUFFIX));
            log.then_some((name, len))
        })
        .collect();
    v.sort();
    v
}

fn concat_logs(cfg: &tend_proto::SpawnConfig, stream: &str) -> Vec<u8> {
    let base = Sandbox::log_path(cfg, stream);
    let mut out = Vec::new();
    for n in (1..cfg.logs.max_files).rev() {
        if let Ok(b) = fs::read(format!("{}.{n}", base.display())) {
            out.extend(b);
        }
    }
    out.extend(fs::read(&base).unwrap());
    out
}

/// A deterministic stream: lines "<n>\n" of a counter, `total` bytes in all.
fn counter_script(total: u64) -> String {
    format!("seq 1 100000000 | head -c {total}")
}

fn expected_counter(total: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(usize::try_from(total).unwrap());
    let mut n = 1u64;
    while (v.len() as u64) < total {
        v.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    v.truncate(usize::try_from(total).unwrap());
    v
}

#[test]
fn a_hundred_mb_are_rotated_and_every_byte_kept() {
    let sb = Sandbox::new();
    let total = 100 * MB;
    let mut cfg = sh(&sb, &counter_script(total));
    cfg.logs.max_file_size = 10 * MB;
    cfg.logs.max_files = 12;
    sb.start(&cfg).pids();
    let exit = Sandbox::wait_exit_file(&cfg, Duration::from_secs(120));
    assert_eq!(exit.exit_code, Some(0));
    let files = rotated_files(&cfg, "stdout");
    assert!(files.len() <= 12, "{files:?}");
    assert!(files.iter().all(|(_, s)| *s <= 10 * MB), "{files:?}");
    assert_eq!(files.iter().map(|(_, s)| s).sum::<u64>(), total);
    assert!(concat_logs(&cfg, "stdout") == expected_counter(total));
}

#[test]
fn a_hundred_mb_in_five_files_keeps_the_newest() {
    let sb = Sandbox::new();
    let total = 100 * MB;
    let mut cfg = sb.config(
        "t",
        "/bin/sh",
        &["-c", "head -c 100000000 /dev/zero; echo END"],
    );
    cfg.logs.max_file_size = 10 * MB;
    cfg.logs.max_files = 5;
    sb.start(&cfg).pids();
    let log_dir = cfg.log_dir();
    let mut max_seen = 0;
    let done = wait_until(Duration::from_secs(120), || {
        let n = rotated_files(&cfg, "stdout").len();
        max_seen = max_seen.max(n);
        cfg.exit_status_path().exists()
    });
    assert!(done);
    assert!(max_seen <= 5, "{max_seen}");
    let files = rotated_files(&cfg, "stdout");
    assert_eq!(files.len(), 5, "{files:?} in {}", log_dir.display());
    assert!(files.iter().all(|(_, s)| *s <= 10 * MB), "{files:?}");
    let all = concat_logs(&cfg, "stdout");
    assert_eq!(all.len() as u64, files.iter().map(|(_, s)| s).sum::<u64>());
    assert!(all.ends_with(b"\0\0\0END\n"));
    let _ = total;
}

#[test]
fn an_instant_task_is_started_then_exited() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/true", &[]);
    let (_, task_pid, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    let exit = c.wait_exit();
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(exit.pid, Some(task_pid));
}

#[test]
fn stop_escalates_to_sigkill_after_the_grace() {
    let sb = Sandbox::new();
    let cfg = sh(
        &sb,
        "trap '' TERM; echo ready; while true; do sleep 0.05; done",
    );
    sb.start(&cfg).pids();
    let log = Sandbox::log_path(&cfg, "stdout");
    assert!(wait_until(LONG, || fs::read_to_string(&log)
        .is_ok_and(|s| s.contains("ready"))));
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    let t0 = Instant::now();
    assert_eq!(
        c.request(Request::Stop {
            signal: 15,
            grace_ms: 500
        }),
        Response::Ok
    );
    let exit = c.recv_exit();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(exit.signal, Some(9));
}

#[test]
fn stop_with_a_signal_the_task_obeys() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    assert_eq!(
        c.request(Request::Stop {
            signal: 15,
            grace_ms: 10_000
        }),
        Response::Ok
    );
    assert_eq!(c.recv_exit().signal, Some(15));
}

#[test]
fn signal_reaches_the_task_and_is_refused_after_the_exit() {
    let sb = Sandbox::new();
    let cfg = sh(
        &sb,
        "trap 'exit 42' USR1; echo ready; while true; do sleep 0.05; done",
    );
    sb.start(&cfg).pids();
    let log = Sandbox::log_path(&cfg, "stdout");
    assert!(wait_until(LONG, || fs::read_to_string(&log)
        .is_ok_and(|s| s.contains("ready"))));
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Signal(10)), Response::Ok);
    assert_eq!(c.wait_exit().exit_code, Some(42));
    assert!(matches!(c.request(Request::Signal(10)), Response::Error(_)));
}

#[test]
fn sigterm_to_the_daemon_stops_the_task_and_leaves() {
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/sleep", &["100"]);
    cfg.kill_timeout_ms = 300;
    let (daemon_pid, task_pid, _) = sb.start(&cfg).pids();
    kill(Pid::from_raw(daemon_pid), Signal::SIGTERM).unwrap();
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    assert_eq!(exit.signal, Some(15));
    assert!(wait_until(LONG, || !pid_alive(daemon_pid)));
    assert!(!pid_alive(task_pid));
    assert!(!Path::new(&cfg.socket_path).exists());
}

#[test]
fn release_makes_the_daemon_leave_and_remove_its_socket() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["0.3"]);
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    assert!(
        matches!(c.request(Request::Release), Response::Error(m) if m.contains("still running"))
    );
    c.wait_exit();
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert!(wait_until(LONG, || !pid_alive(daemon_pid)));
    assert!(!Path::new(&cfg.socket_path).exists());
}

#[test]
fn linger_ends_the_daemon_without_release() {
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/true", &[]);
    cfg.linger_ms = 300;
    let (daemon_pid, _, _) = sb.start(&cfg).pids();
    assert!(wait_until(LONG, || !pid_alive(daemon_pid)));
    assert!(!Path::new(&cfg.socket_path).exists());
    Sandbox::wait_exit_file(&cfg, LONG);
}

#[test]
fn a_long_data_dir_works_with_a_socket_in_the_run_dir() {
    let sb = Sandbox::with_data_dir_len(200);
    assert!(sb.data_dir().as_os_str().len() >= 200);
    let cfg = sb.config("t", "/bin/sh", &["-c", "echo hello; exit 5"]);
    sb.start(&cfg).pids();
    let mut c = Client::connect(&cfg);
    assert_eq!(c.wait_exit().exit_code, Some(5));
    assert_eq!(
        fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap(),
        "hello\n"
    );
}

#[test]
fn stderr_goes_to_its_own_file_and_the_daemon_logs() {
    let sb = Sandbox::new();
    let cfg = sh(&sb, "echo out; echo err >&2");
    sb.start(&cfg).pids();
    Sandbox::wait_exit_file(&cfg, LONG);
    assert_eq!(
        fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap(),
        "out\n"
    );
    assert_eq!(
        fs::read_to_string(Sandbox::log_path(&cfg, "stderr")).unwrap(),
        "err\n"
    );
    let own = cfg.log_dir().join("t.tend-spawn.log");
    let text = fs::read_to_string(own).unwrap();
    assert!(
        text.contains(&format!("alloc_id={}", cfg.alloc_id)),
        "{text}"
    );
    assert!(text.contains("task started"), "{text}");
}

#[test]
fn a_live_socket_is_not_taken_over() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    sb.start(&cfg).pids();
    let mut cfg2 = sb.config("u", "/bin/sleep", &["100"]);
    cfg2.socket_path = cfg.socket_path.clone();
    let (stage, _, message) = sb.start(&cfg2).failure();
    assert_eq!(stage, Stage::Socket, "{message}");
}

#[test]
fn tasks_left_behind_are_killed_when_the_main_process_ends() {
    let sb = Sandbox::new();
    let cfg = sh(&sb, "(setsid sleep 100 &) ; sleep 100 & echo $! ; exit 0");
    sb.start(&cfg).pids();
    Sandbox::wait_exit_file(&cfg, LONG);
    let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    let bg: i32 = out.trim().parse().unwrap();
    assert!(wait_until(LONG, || !pid_alive(bg)));
    // Nothing but the daemon is left in the sandbox.
    let left: Vec<i32> = sb.pids_inside();
    assert!(left.len() <= 1, "{left:?}");
}

#[test]
fn isolation_drops_to_the_user_with_no_groups_caps_or_new_privs() {
    require_root!();
    let sb = Sandbox::new();
    let mut cfg = sh(
        &sb,
        "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs):' /proc/self/status",
    );
    cfg.cwd = "/".into();
    cfg.isolation = Some(tend_proto::config::Isolation {
        ids: None,
        user: "nobody".into(),
        chroot: None,
    });
    sb.start(&cfg).pids();
    assert_eq!(Sandbox::wait_exit_file(&cfg, LONG).exit_code, Some(0));
    let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    let field = |k: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(&format!("{k}:")))
            .unwrap_or_else(|| panic!("{k} missing in {out}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    assert_eq!(field("Uid"), [uid.as_str(); 4], "{out}");
    assert_eq!(field("Gid"), [gid.as_str(); 4], "{out}");
    assert!(field("Groups").is_empty(), "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(cap), ["0000000000000000"], "{cap}: {out}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"], "{out}");
}

#[test]
fn an_unknown_user_fails_at_the_user_stage() {
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/true", &[]);
    cfg.isolation = Some(tend_proto::config::Isolation {
        ids: None,
        user: "no-such-user-tend".into(),
        chroot: None,
    });
    let (stage, _, message) = sb.start(&cfg).failure();
    assert_eq!(stage, Stage::User);
    assert!(message.contains("no-such-user-tend"), "{message}");
}

#[test]
fn a_chroot_task_sees_its_own_root() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let mut cfg = sh(
        &sb,
        "echo hi > /local/f && cat /local/f; ls /; \
         if touch /usr/tend-probe 2>/dev/null; then echo RW; else echo RO; fi; \
         test -d /alloc && echo ALLOC; test -c /dev/null && echo DEVNULL; \
         test -e /proc/self/status && echo PROC; pwd",
    );
    let root = cfg.task_root();
    for d in [root.join("local"), cfg.alloc_dir().join("alloc")] {
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    cfg.cwd = "/local".into();
    let binds = ["/bin", "/lib", "/lib64", "/usr"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| tend_proto::config::Bind {
            source: p.to_string(),
            target: p.to_string(),
        })
        .collect();
    cfg.isolation = Some(tend_proto::config::Isolation {
        ids: None,
        user: "nobody".into(),
        chroot: Some(tend_proto::config::ChrootSpec { binds }),
    });
    sb.start(&cfg).pids();
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    let err = fs::read_to_string(Sandbox::log_path(&cfg, "stderr")).unwrap();
    assert_eq!(exit.exit_code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi", "{out}");
    for want in ["RO", "ALLOC", "DEVNULL", "PROC", "local", "proc"] {
        assert!(lines.contains(&want), "{want} missing: {out}");
    }
    assert_eq!(lines.last(), Some(&"/local"), "{out}");
    assert!(
        !lines.contains(&"root") && !lines.contains(&"home"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(root.join("local/f")).unwrap(), "hi\n");
    assert!(!Path::new("/usr/tend-probe").exists());
    // Nothing of the task's mounts shows on the host.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
}

#[test]
fn a_client_without_hello_is_closed_after_10_s() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["100"]);
    sb.start(&cfg).pids();
    let mut slow = Client::connect_raw(Path::new(&cfg.socket_path));
    slow.send_bytes(b"TE");
    let t0 = Instant::now();
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut slow.stream, &mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "{took:?}"
    );
    let mut good = Client::connect(&cfg);
    assert!(matches!(good.request(Request::Status), Response::Status(_)));
}

#[test]
fn the_task_starts_with_umask_022_not_the_daemons() {
    let sb = Sandbox::new();
    let cfg = sh(&sb, "umask");
    let _s = sb.start(&cfg);
    let exit = Client::connect(&cfg).wait_exit();
    assert_eq!(exit.exit_code, Some(0));
    let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    assert_eq!(out.trim(), "0022");
}

/// tend-spawn sets its own umask (022), under which every mode it asks for
/// is the mode it gets: whatever umask its starter had, the log dir is 0755,
/// the logs and their indexes 0640, and the task still starts with 022.
#[test]
fn the_log_files_are_0640_and_the_log_dir_0755_whatever_umask_tend_spawn_inherits() {
    use std::os::unix::fs::PermissionsExt;
    for inherited in ["077", "000"] {
        let sb = Sandbox::new();
        let cfg = sh(&sb, "umask; echo oops >&2");
        let wrapper = [
            "/bin/sh",
            "-c",
            &format!("umask {inherited} && exec \"$0\""),
        ];
        let (daemon_pid, _, _) = sb.start_wrapped(&cfg, &wrapper).pids();
        let status = fs::read_to_string(format!("/proc/{daemon_pid}/status")).unwrap();
        assert!(
            status.contains("\nUmask:\t0022\n"),
            "umask {inherited}: {status}"
        );
        let exit = Client::connect(&cfg).wait_exit();
        assert_eq!(exit.exit_code, Some(0));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&cfg.log_dir()), 0o755, "umask {inherited}");
        let mut names = Vec::new();
        for stream in ["stdout", "stderr"] {
            let log = Sandbox::log_path(&cfg, stream);
            names.push(log.clone());
            names.push(log.with_file_name(tend_logs::index::index_name(
                log.file_name().unwrap().to_str().unwrap(),
            )));
        }
        names.push(cfg.log_dir().join(format!("{}.tend-spawn.log", cfg.task)));
        for p in &names {
            assert_eq!(mode(p), 0o640, "umask {inherited}: {}", p.display());
        }
        let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
        assert_eq!(out.trim(), "0022", "umask {inherited}");
    }
}

/// A parent that leaves SIGCHLD and SIGTERM ignored (and USR1 blocked) when it
/// execs tend-spawn: an ignored SIGCHLD would have the kernel reap the task
/// behind the daemon's back (no exit status, its pid free for reuse), an
/// ignored SIGTERM would never reach the daemon's signalfd. tend-spawn starts
/// from a clean signal state, so the task's own code is recorded, a Signal
/// request reaches the task, and SIGTERM to the daemon stops its task.
#[test]
fn tend_spawn_started_with_sigchld_and_sigterm_ignored_records_and_signals() {
    let wrapper = [
        "/usr/bin/env",
        "--ignore-signal=CHLD",
        "--ignore-signal=TERM",
        "--block-signal=USR1",
    ];
    let sb = Sandbox::new();
    let cfg = sh(
        &sb,
        "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.05; done",
    );
    let (daemon_pid, task_pid, _) = sb.start_wrapped(&cfg, &wrapper).pids();
    let status = fs::read_to_string(format!("/proc/{daemon_pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap()
    };
    // The daemon ignores SIGHUP, SIGINT and SIGPIPE of its own choosing,
    // nothing else; it blocks SIGCHLD and SIGTERM for its signalfd.
    let ignored = u64::from_str_radix(&field("SigIgn:"), 16).unwrap();
    assert_eq!(ignored & (1 << (libc_sigchld() - 1)), 0, "{status}");
    assert_eq!(ignored & (1 << 14), 0, "SIGTERM ignored: {status}");
    assert!(wait_until(LONG, || fs::read_to_string(Sandbox::log_path(
        &cfg, "stdout"
    ))
    .is_ok_and(|t| t.contains("ready"))));
    let mut c = Client::connect(&cfg);
    assert_eq!(c.request(Request::Wait), Response::Ok);
    assert_eq!(c.request(Request::Signal(10)), Response::Ok);
    let exit = c.recv_exit();
    assert_eq!(exit.exit_code, Some(7), "{exit:?}");
    assert_eq!(exit.pid, Some(task_pid));
    assert_eq!(Sandbox::wait_exit_file(&cfg, LONG), exit);
    assert!(fs::read_to_string(Sandbox::log_path(&cfg, "stdout"))
        .unwrap()
        .contains("got-usr1"));
    // The task is reaped: a signal now is refused, never sent to its pid.
    match c.request(Request::Signal(10)) {
        Response::Error(m) => assert!(m.contains("exited"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert!(wait_until(LONG, || !pid_alive(daemon_pid)));

    // SIGTERM to the daemon stops the task with its kill signal.
    let cfg = sh(&sb, "echo ready; exec sleep 300");
    let (daemon_pid, _, _) = sb.start_wrapped(&cfg, &wrapper).pids();
    assert!(wait_until(LONG, || fs::read_to_string(Sandbox::log_path(
        &cfg, "stdout"
    ))
    .is_ok_and(|t| t.contains("ready"))));
    kill(Pid::from_raw(daemon_pid), Signal::SIGTERM).unwrap();
    let exit = Sandbox::wait_exit_file(&cfg, LONG);
    assert_eq!(exit.signal, Some(15), "{exit:?}");
    assert!(wait_until(LONG, || !pid_alive(daemon_pid)));
}

fn libc_sigchld() -> u32 {
    Signal::SIGCHLD as u32
}

/// tend-spawn lowers its own oom_score_adj (to -1000 where the kernel lets
/// it, else to 0 from above it); the task gets back the value tend-spawn
/// started with, raw_exec as much as exec, and not tend-spawn's own.
#[test]
fn a_raw_exec_task_gets_the_oom_score_adj_tend_spawn_started_with() {
    let sb = Sandbox::new();
    let cfg = sh(&sb, "cat /proc/self/oom_score_adj; sleep 0.3");
    let wrapper = [
        "/bin/sh",
        "-c",
        "echo 500 > /proc/self/oom_score_adj && exec \"$0\"",
    ];
    let (daemon_pid, _, _) = sb.start_wrapped(&cfg, &wrapper).pids();
    let own: i32 = fs::read_to_string(format!("/proc/{daemon_pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(own <= 0, "tend-spawn stayed at {own}");
    let mut c = Client::connect(&cfg);
    let exit = c.wait_exit();
    let text = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    assert_eq!(exit.exit_code, Some(0), "{text}");
    assert_eq!(text, "500\n");
}

/// A daemon nobody has talked to for longer than the Hello time still serves
/// a new client: its Hello time counts from the accept, not from the start of
/// the long poll before it. (Closed at once, this is how an agent down for
/// 15 s came back to find its tasks "lost" and killed them.)
#[test]
fn a_daemon_idle_for_31_s_serves_a_new_client() {
    let sb = Sandbox::new();
    let cfg = sh(
        &sb,
        "trap 'echo got-usr1' USR1; while true; do sleep 0.05; done",
    );
    sb.start(&cfg).pids();
    std::thread::sleep(Duration::from_secs(31));
    let mut c = Client::connect(&cfg);
    assert!(matches!(c.request(Request::Status), Response::Status(_)));
    assert_eq!(c.request(Request::Signal(10)), Response::Ok);
    let log = Sandbox::log_path(&cfg, "stdout");
    assert!(wait_until(LONG, || fs::read_to_string(&log)
        .is_ok_and(|s| s.contains("got-usr1"))));
    // A second client after the first one's requests, and a stop on it.
    let mut d = Client::connect(&cfg);
    assert_eq!(
        d.request(Request::Stop {
            signal: 15,
            grace_ms: 5000
        }),
        Response::Ok
    );
    assert_eq!(c.wait_exit().signal, Some(15));
}

// ------------------------------------------------ the first connection, handed over

fn handed(sb: &Sandbox, script: &str) -> tend_proto::SpawnConfig {
    let mut cfg = sh(sb, script);
    cfg.first_connection = FirstConnection::Stdin;
    cfg
}

/// The stream the config went out on is the first connection: the report
/// carries its welcome, and Wait -> Exited arrives over it with the socket
/// file moved away before it is used (no connect, no Hello).
#[test]
fn the_first_connection_comes_with_the_start_without_the_socket_file() {
    let sb = Sandbox::new();
    let cfg = handed(&sb, "sleep 0.3; exit 5");
    let (spawned, mut c) = sb.start_handed(&cfg);
    assert_eq!(spawned.exit_code, Some(0), "{}", spawned.stderr());
    let w = c.welcome.expect("a StartedWithConnection report");
    assert_eq!(w.version, PROTOCOL_VERSION);
    let moved = Path::new(&cfg.socket_path).with_extension("moved");
    fs::rename(&cfg.socket_path, &moved).unwrap();
    match c.request(Request::Status) {
        Response::Status(s) => {
            assert_eq!((s.daemon_pid, s.task_pid), (w.daemon_pid, w.task_pid));
        }
        other => panic!("{other:?}"),
    }
    let exit = c.wait_exit();
    assert_eq!(exit.exit_code, Some(5));
    assert_eq!(exit.pid, Some(w.task_pid));
    assert_eq!(Sandbox::wait_exit_file(&cfg, LONG), exit);
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert!(wait_until(LONG, || !pid_alive(w.daemon_pid)));
    fs::remove_file(&moved).unwrap();
}

/// Closing the handed connection is no end of the task: it runs on, and a
/// client of the socket file (the reattach of a new agent) is welcomed by
/// the same daemon and gets the exit.
#[test]
fn the_handed_connection_closing_leaves_the_task_to_a_reattach() {
    let sb = Sandbox::new();
    let cfg = handed(&sb, "sleep 0.5; exit 7");
    let (spawned, c) = sb.start_handed(&cfg);
    let w = c.welcome.expect("a StartedWithConnection report");
    assert_eq!(spawned.exit_code, Some(0));
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    assert!(pid_alive(w.task_pid));
    let mut again = Client::connect(&cfg);
    assert_eq!(again.welcome.unwrap(), w);
    assert_eq!(again.wait_exit().exit_code, Some(7));
    assert_eq!(again.request(Request::Release), Response::Ok);
    assert!(wait_until(LONG, || !pid_alive(w.daemon_pid)));
}

/// The handed socket is the daemon's alone: the task holds fds 0, 1, 2 and
/// nothing else, its stdin /dev/null; Stop over the handed connection ends it.
#[test]
fn the_handed_connection_does_not_leak_into_the_task() {
    let sb = Sandbox::new();
    let mut cfg = sb.config("t", "/bin/sleep", &["100"]);
    cfg.first_connection = FirstConnection::Stdin;
    let (_, mut c) = sb.start_handed(&cfg);
    let task_pid = c.welcome.expect("a StartedWithConnection report").task_pid;
    assert_eq!(settled_fds(task_pid), [0, 1, 2]);
    let stdin = fs::read_link(format!("/proc/{task_pid}/fd/0")).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    let stop = Request::Stop {
        signal: 15,
        grace_ms: 2000,
    };
    assert_eq!(c.request(stop), Response::Ok);
    assert_eq!(c.wait_exit().signal, Some(15));
}

/// A config without the part is started as it always was: `Started`, and
/// the first connection made to the socket file with a Hello, whatever
/// tend-spawn's stdin is.
#[test]
fn a_start_without_the_part_reports_started_and_takes_a_hello() {
    let sb = Sandbox::new();
    let cfg = sh(&sb, "exit 4");
    let (spawned, mut on_stdin) = sb.start_handed(&cfg);
    let (daemon_pid, task_pid, instance) = spawned.pids();
    assert_eq!(on_stdin.welcome, None);
    let mut c = Client::connect(&cfg);
    let w = c.welcome.unwrap();
    assert_eq!(
        (w.daemon_pid, w.task_pid, w.instance),
        (daemon_pid, task_pid, instance)
    );
    assert_eq!(c.wait_exit().exit_code, Some(4));
    // The stream on stdin is nobody's client: it ends with the daemon.
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert!(matches!(on_stdin.recv(), Err(frame::FrameError::Closed)));
}

/// `Detach::InPlace` (how the agent's launcher starts tend-spawn): the
/// process exec'd is the daemon itself, leading a session of its own, and
/// runs until its task is released; its starter reaps it then, with 0.
/// The default forks the daemon off: the process exec'd has left by the time
/// it is reaped, and the daemon is another process, in the session it
/// started but not its leader.
#[test]
fn a_daemon_in_place_is_the_process_exec_d_and_its_starter_reaps_it() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    for detach in [Detach::InPlace, Detach::Fork] {
        let sb = Sandbox::new();
        let mut cfg = handed(&sb, "sleep 0.3; exit 6");
        cfg.detach = detach;
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(LONG)).unwrap();
        let mut child = Command::new(tend_tests::spawn_bin())
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (&ours).write_all(&cfg.to_frame().unwrap()).unwrap();
        let report = frame::read_frame(child.stdout.as_mut().unwrap(), frame::MAX_FRAME_LEN)
            .and_then(|f| f.decode::<StartReport>())
            .unwrap();
        let StartReport::StartedWithConnection(w) = report else {
            panic!("{report:?}")
        };
        let exec_d = i32::try_from(child.id()).unwrap();
        if detach == Detach::Fork {
            assert_ne!(w.daemon_pid, exec_d);
            assert_eq!(child.wait().unwrap().code(), Some(0));
        } else {
            assert_eq!(w.daemon_pid, exec_d);
            assert!(
                child.try_wait().unwrap().is_none(),
                "it left before its task"
            );
        }
        // The process exec'd starts the session: in place the daemon leads
        // it; forked off, the daemon is in it but does not lead it.
        let sid = nix::unistd::getsid(Some(Pid::from_raw(w.daemon_pid))).unwrap();
        assert_eq!(sid.as_raw(), exec_d, "the daemon's session");
        let mut c = Client {
            stream: ours,
            welcome: Some(w),
        };
        assert_eq!(c.wait_exit().exit_code, Some(6));
        assert_eq!(c.request(Request::Release), Response::Ok);
        if detach == Detach::InPlace {
            assert_eq!(child.wait().unwrap().code(), Some(0));
        } else {
            assert!(wait_until(LONG, || !pid_alive(w.daemon_pid)));
        }
    }
}

/// Asked for on a stdin that is no socket, the first connection is refused
/// at the config stage, before anything starts.
#[test]
fn a_first_connection_on_a_pipe_is_refused_at_the_config_stage() {
    let sb = Sandbox::new();
    let cfg = handed(&sb, "exit 0");
    let spawned = sb.start(&cfg);
    let (stage, _, message) = spawned.failure();
    assert_eq!(stage, Stage::Config);
    assert!(message.contains("first_connection"), "{message}");
    assert!(!Path::new(&cfg.socket_path).exists());
}

/// Fields of `/proc/<pid>/stat` after the command: (ppid, pgrp, session).
fn parent_group_session(pid: i32) -> (i32, i32, i32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<i32> = after
        .split(' ')
        .skip(1)
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

/// The daemon is in a session of its own that it does not lead (no
/// terminal can become its own), and no starter is its parent: as tend-spawn
/// is started by the agent, and as a process that leads its process group
/// (`setsid` refuses it one: it forks twice instead).
#[test]
fn the_daemon_leaves_its_starter_and_leads_no_session() {
    for wrapper in [&[][..], &["/usr/bin/setsid"][..]] {
        let sb = Sandbox::new();
        let cfg = sh(&sb, "sleep 100");
        let spawned = sb.start_wrapped(&cfg, wrapper);
        assert_eq!(spawned.exit_code, Some(0), "{wrapper:?}");
        let (daemon_pid, task_pid, _) = spawned.pids();
        let (ppid, _, session) = parent_group_session(daemon_pid);
        let ours = i32::try_from(std::process::id()).unwrap();
        assert_ne!(ppid, ours, "{wrapper:?}");
        assert_ne!(
            session, daemon_pid,
            "{wrapper:?}: the daemon leads its session"
        );
        assert_ne!(
            session,
            parent_group_session(ours).2,
            "{wrapper:?}: the daemon is in its starter's session"
        );
        assert_eq!(parent_group_session(task_pid).0, daemon_pid, "{wrapper:?}");
        kill(Pid::from_raw(task_pid), Signal::SIGKILL).unwrap();
        let mut c = Client::connect(&cfg);
        assert_eq!(c.wait_exit().signal, Some(9), "{wrapper:?}");
        assert_eq!(c.request(Request::Release), Response::Ok);
        assert!(wait_until(LONG, || !pid_alive(daemon_pid)));
    }
}

/// A starter that leaves signals ignored and blocked: the task starts with
/// none ignored and none blocked, whatever the daemon ignores of its own.
#[test]
fn the_task_starts_with_no_signal_ignored_or_blocked() {
    let wrapper = [
        "/usr/bin/env",
        "--ignore-signal=HUP",
        "--ignore-signal=QUIT",
        "--ignore-signal=USR2",
        "--ignore-signal=ALRM",
        "--ignore-signal=PIPE",
        "--block-signal=USR1",
        "--block-signal=INT",
    ];
    let sb = Sandbox::new();
    let cfg = sb.config(
        "t",
        "/bin/grep",
        &["-E", "^Sig(Ign|Blk)", "/proc/self/status"],
    );
    let _s = sb.start_wrapped(&cfg, &wrapper);
    let exit = Client::connect(&cfg).wait_exit();
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    let out = fs::read_to_string(Sandbox::log_path(&cfg, "stdout")).unwrap();
    let mask = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    assert_eq!(mask("SigBlk:"), 0, "{out}");
    // Signals 1 to 31; the real-time ones libc keeps for itself refuse a
    // change, from anyone.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{out}");
}

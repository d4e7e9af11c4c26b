//! The fault suite of tend-spawn: a full disk, a supervisor killed at random
//! points of its life, and clients that misbehave. Longer loops run when
//! `TEND_FAULT_ROUNDS` asks for them.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tend_proto::{frame, ExitStatus, Hello, Request, Response, PROTOCOL_VERSION};
use tend_tests::{pid_alive, require_root, wait_until, Client, Sandbox};

const LONG: Duration = Duration::from_secs(30);

fn rounds(default: usize) -> usize {
    std::env::var("TEND_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tmpfs mounted over a dir for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tend-test",
                dir.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Temp files an atomic write would leave if it were torn.
fn temp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_full_disk_loses_log_bytes_but_never_the_exit() {
    require_root!();
    let sb = Sandbox::new();
    // The data dir's allocs live on a 1 MiB tmpfs; the task writes 4 MB.
    let allocs = sb.data_dir().join("allocs");
    let _fs = Tmpfs::mount(&allocs, "1m");
    let cfg = sb.config(
        "t",
        "/bin/sh",
        &["-c", "head -c 4000000 /dev/zero | tr '\\0' x; echo; exit 4"],
    );
    let started = sb.start(&cfg);
    let (daemon, _, _) = started.pids();
    let mut c = Client::connect(&cfg);
    let exit = c.wait_exit();
    // The exit reaches the agent over the socket, whatever the disk says.
    assert_eq!(exit.exit_code, Some(4), "{exit:?}");
    let alloc_dir = PathBuf::from(&cfg.alloc_dir);
    // Nothing half-written: no temp file of an atomic write is left, and an exit
    // file that is there parses whole.
    assert!(
        temp_leftovers(&alloc_dir).is_empty(),
        "{:?}",
        temp_leftovers(&alloc_dir)
    );
    match ExitStatus::read(&Sandbox::exit_path(&cfg)) {
        Ok(e) => assert_eq!(e.exit_code, Some(4)),
        Err(tend_proto::exit::ExitFileError::NotFound { .. }) => {}
        Err(e) => panic!("torn exit status file: {e}"),
    }
    // The log kept what fit, and the daemon said what it dropped.
    let log = std::fs::metadata(Sandbox::log_path(&cfg, "stdout"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(log < 4_000_000, "a 1 MiB disk cannot hold {log} bytes");
    assert_eq!(c.request(Request::Release), Response::Ok);
    assert!(wait_until(LONG, || !pid_alive(daemon)));
}

#[test]
fn a_supervisor_killed_at_random_points_never_leaves_a_wrong_or_torn_exit() {
    let sb = Sandbox::new();
    let n = rounds(20);
    let (mut recorded, mut unknown) = (0, 0);
    for i in 0..n {
        let code = 3 + (i % 50);
        // Tasks of different lengths; the kill lands before, around and after
        // their end, and around the exit file's write.
        let task_ms = [0u64, 5, 20, 50][i % 4];
        let cfg = sb.config(
            &format!("t{i}"),
            "/bin/sh",
            &[
                "-c",
                &format!("sleep {}; exit {code}", task_ms as f64 / 1000.0),
            ],
        );
        let started = sb.start(&cfg);
        let (daemon, task, _) = started.pids();
        let delay = Duration::from_micros(tend_tests::random_u64() % (task_ms * 1000 + 30_000));
        std::thread::sleep(delay);
        let _ = kill(Pid::from_raw(daemon), Signal::SIGKILL);
        assert!(wait_until(LONG, || !pid_alive(daemon)));
        // The task is an orphan now; wait for it so its exit cannot race the check.
        assert!(wait_until(LONG, || !pid_alive(task)));
        let alloc_dir = PathBuf::from(&cfg.alloc_dir);
        assert!(
            temp_leftovers(&alloc_dir).is_empty(),
            "round {i}: {:?}",
            temp_leftovers(&alloc_dir)
        );
        match ExitStatus::read(&Sandbox::exit_path(&cfg)) {
            Ok(e) => {
                assert_eq!(
                    e.exit_code,
                    Some(i32::try_from(code).unwrap()),
                    "round {i}: {e:?}"
                );
                recorded += 1;
            }
            Err(tend_proto::exit::ExitFileError::NotFound { .. }) => unknown += 1,
            Err(e) => panic!("round {i}: torn exit status file: {e}"),
        }
    }
    eprintln!("{n} rounds: {recorded} exits recorded, {unknown} unknown (lost), 0 wrong, 0 torn");
}

#[test]
fn a_client_that_never_reads_does_not_block_the_logs_or_others() {
    let sb = Sandbox::new();
    let cfg = sb.config(
        "t",
        "/bin/sh",
        &["-c", "sleep 0.3; head -c 20000000 /dev/zero; exit 0"],
    );
    let _s = sb.start(&cfg);
    // This one asks for the exit and then never reads a byte.
    let mut stalled = Client::connect(&cfg);
    stalled.send(&Request::Wait);
    // A flood of Status requests it never reads the answers of.
    for _ in 0..2000 {
        if stalled
            .stream
            .write_all(&frame::encode(&Request::Status).unwrap())
            .is_err()
        {
            break;
        }
    }
    let mut agent = Client::connect(&cfg);
    let exit = agent.wait_exit();
    assert_eq!(exit.exit_code, Some(0));
    // The default rotation (10 MiB files) split it; every byte is in the files.
    let current = Sandbox::log_path(&cfg, "stdout");
    let total: u64 = (0..10)
        .map(|n| {
            let p = if n == 0 {
                current.clone()
            } else {
                PathBuf::from(format!("{}.{n}", current.display()))
            };
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        })
        .sum();
    assert_eq!(total, 20_000_000, "every byte of the task is in its logs");
}

#[test]
fn a_client_sending_one_byte_at_a_time_does_not_stall_the_agent() {
    let sb = Sandbox::new();
    let cfg = sb.config("t", "/bin/sleep", &["30"]);
    let _s = sb.start(&cfg);
    let hello = frame::encode(&Hello {
        version: PROTOCOL_VERSION,
        token: cfg.token,
    })
    .unwrap();
    let mut slow = UnixStream::connect(&cfg.socket_path).unwrap();
    let mut idle = UnixStream::connect(&cfg.socket_path).unwrap();
    let _ = idle.flush();
    let t0 = Instant::now();
    for (i, b) in hello.iter().enumerate().take(hello.len() - 1) {
        slow.write_all(std::slice::from_ref(b)).unwrap();
        // Between the slow bytes, the agent is answered every time.
        if i % 4 == 0 {
            let mut agent = Client::connect(&cfg);
            match agent.request(Request::Status) {
                Response::Status(s) => assert!(s.exit.is_none()),
                other => panic!("{other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t0.elapsed() < LONG);
    let mut agent = Client::connect(&cfg);
    assert_eq!(
        agent.request(Request::Stop {
            signal: 15,
            grace_ms: 1000
        }),
        Response::Ok
    );
    assert_eq!(agent.wait_exit().signal, Some(15));
}

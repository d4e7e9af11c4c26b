//! `Type=notify` under systemd, against a notify socket of the test's own:
//! `READY=1` only once the agent has taken up its tasks and answers its API,
//! `WATCHDOG=1` with a `STATUS=` while it runs, `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use tend_tests::{spawn_bin, try_http, wait_until, AgentProc, Sandbox};

/// The next message on `sock`, or None after `timeout`.
fn next(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ready_after_the_reattach_then_watchdog_pings_then_stopping() {
    let sb = Sandbox::new();
    // A task from an earlier agent, for the new one to take up.
    let mut first = AgentProc::start(&sb);
    let id = first.submit(
        "job \"nap\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      config {\n        command = \"/bin/sleep\"\n        args    = [\"300\"]\n      }\n    }\n  }\n}\n",
    )[0]
        .clone();
    assert!(wait_until(Duration::from_secs(30), || {
        first.get_json(&format!("/v1/allocations/{id}"))["tasks"][0]["state"] == "running"
    }));
    first.kill9();

    let path = sb.scratch_dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let spawn = spawn_bin();
    let mut cmd = sb.tend_command(&["agent".as_ref(), "--spawn-bin".as_ref(), spawn.as_os_str()]);
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000");
    let agent = sb.spawn_captured(cmd);

    let first_msg = next(&sock, Duration::from_secs(30)).expect("a first message");
    assert!(
        first_msg.starts_with("STATUS=taking up the tasks of "),
        "{first_msg:?}"
    );
    let ready = next(&sock, Duration::from_secs(30)).expect("READY=1");
    assert!(
        ready.starts_with("READY=1\nSTATUS=ready: 1 reattached, 0 exited meanwhile, 0 lost"),
        "{ready:?}"
    );
    // Ready means served: the API answers now, not some time later.
    let health = try_http(sb.run_dir(), "GET", "/v1/health", b"").expect("health after READY=1");
    assert_eq!(health.status, 200);

    let t0 = Instant::now();
    for _ in 0..3 {
        let ping = next(&sock, Duration::from_secs(5)).expect("WATCHDOG=1");
        assert_eq!(
            ping,
            "WATCHDOG=1\nSTATUS=running: 1 tasks running, 0 pending, in 1 allocations"
        );
    }
    // Three pings at half of 400 ms each: about 600 ms, far less than 5 s.
    assert!(t0.elapsed() < Duration::from_secs(5));

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            match next(&sock, Duration::from_millis(200)) {
                Some(m) => {
                    last = m;
                    last.starts_with("STOPPING=1")
                }
                None => false,
            }
        }),
        "no STOPPING=1; last: {last:?}"
    );
    let out = agent.wait(Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The task outlived the agent, as always.
    assert!(!sb.pids_inside().is_empty());
}

#[test]
fn without_notify_socket_nothing_is_sent_and_a_dead_socket_is_not_fatal() {
    let sb = Sandbox::new();
    // A socket path nobody listens on: the agent warns and runs.
    let path = sb.scratch_dir().join("gone.sock");
    let spawn = spawn_bin();
    let mut cmd = sb.tend_command(&["agent".as_ref(), "--spawn-bin".as_ref(), spawn.as_os_str()]);
    cmd.env("NOTIFY_SOCKET", &path);
    let agent = sb.spawn_captured(cmd);
    assert!(
        wait_until(Duration::from_secs(30), || {
            try_http(sb.run_dir(), "GET", "/v1/health", b"").is_ok_and(|r| r.status == 200)
        }),
        "{}",
        agent.stderr()
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let out = agent.wait(Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("sd_notify"), "{}", out.stderr);
}

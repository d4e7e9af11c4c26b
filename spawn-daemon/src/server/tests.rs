//! Tests of the module above.
use super::*;
use std::io::Read;
use tend_proto::frame::MAGIC as MAGIC_FRAME;
use tend_proto::msg::{Instance, TaskState};

struct Fake {
    token: Token,
    exit: Option<ExitStatus>,
    signals: Vec<i32>,
    released: bool,
}

impl Handler for Fake {
    fn token(&self) -> &Token {
        &self.token
    }
    fn welcome(&self) -> Welcome {
        Welcome {
            version: PROTOCOL_VERSION,
            instance: Instance([1; 16]),
            daemon_pid: 10,
            task_pid: 11,
        }
    }
    fn status(&self) -> Status {
        Status {
            state: TaskState::Running,
            task_pid: 11,
            daemon_pid: 10,
            run: 1,
            started_at: "s".into(),
            exit: None,
        }
    }
    fn stats(&self) -> Stats {
        Stats {
            memory_bytes: None,
            memory_peak_bytes: None,
            cpu_usage_us: None,
            pids: None,
        }
    }
    fn cgroup_stats(&self) -> CgroupStats {
        CgroupStats {
            pids: Some(2),
            ..CgroupStats::default()
        }
    }
    fn exit(&self) -> Option<ExitStatus> {
        self.exit.clone()
    }
    fn signal(&mut self, signo: i32) -> Result<(), CommandError> {
        self.signals.push(signo);
        Ok(())
    }
    fn stop(&mut self, _signal: i32, _grace_ms: u64) -> Result<(), CommandError> {
        Ok(())
    }
    fn release(&mut self) -> Result<(), CommandError> {
        if self.exit.is_none() {
            return Err(CommandError::StillRunning);
        }
        self.released = true;
        Ok(())
    }
}

fn fake() -> Fake {
    Fake {
        token: Token([3; 32]),
        exit: None,
        signals: vec![],
        released: false,
    }
}

fn frame_of<T: serde::Serialize>(v: &T) -> Frame {
    let bytes = frame::encode(v).unwrap();
    let mut d = FrameDecoder::new();
    d.push(&bytes);
    d.next_frame().unwrap().unwrap()
}

/// Write a good Hello on a client's end of a socket.
fn say_hello(peer: &mut UnixStream) {
    let bytes = frame::encode(&Hello {
        version: PROTOCOL_VERSION,
        token: Token([3; 32]),
    })
    .unwrap();
    peer.write_all(&bytes).unwrap();
}

fn hello(token: [u8; 32], version: u16) -> Frame {
    frame_of(&Hello {
        version,
        token: Token(token),
    })
}

#[test]
fn hello_then_requests() {
    let mut h = fake();
    let mut s = Session::default();
    let out = s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    assert!(matches!(out[..], [Response::Welcome(_)]));
    let out = s.on_frame(&frame_of(&Request::Signal(10)), &mut h);
    assert_eq!(out, vec![Response::Ok]);
    assert_eq!(h.signals, vec![10]);
    let out = s.on_frame(&frame_of(&Request::Release), &mut h);
    assert_eq!(out, vec![Response::Error("task still running".into())]);
    assert!(!s.closing);
}

#[test]
fn an_exec_needs_its_three_fds_and_its_end_goes_to_its_session_once() {
    let mut h = fake();
    let mut s = Session::default();
    s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    let exec = Request::Exec(ExecRequest {
        argv: vec!["true".into()],
        tty: false,
    });
    let out = s.on_frame(&frame_of(&exec), &mut h);
    assert!(
        matches!(&out[..], [Response::Error(e)] if e.contains("3 fds")),
        "{out:?}"
    );
    // A handler without exec (as in a test, or a daemon in no state to) says so.
    for _ in 0..3 {
        s.fds.push(std::fs::File::open("/dev/null").unwrap().into());
    }
    let out = s.on_frame(&frame_of(&exec), &mut h);
    assert_eq!(
        out,
        vec![Response::Error("exec is not supported here".into())]
    );
    assert!(s.fds.is_empty(), "the fds went to the handler");
    assert!(!s.closing);
    s.exec_pid = Some(42);
    assert_eq!(s.exec_exited(41, 0), None);
    assert_eq!(s.exec_exited(42, 130), Some(Response::ExecExited(130)));
    assert_eq!(s.exec_exited(42, 130), None);
}

#[test]
fn start_of_a_task_not_held_is_refused_and_the_session_goes_on() {
    let mut h = fake();
    let mut s = Session::default();
    s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    let out = s.on_frame(&frame_of(&Request::Start), &mut h);
    assert!(
        matches!(&out[..], [Response::Error(e)] if e.starts_with("the task is not held")),
        "{out:?}"
    );
    assert!(!s.closing);
    let out = s.on_frame(&frame_of(&Request::Status), &mut h);
    assert!(matches!(out[..], [Response::Status(_)]), "{out:?}");
}

#[test]
fn a_request_from_a_newer_client_is_refused_with_an_error_not_a_crash() {
    // What a daemon older than a variant sees: an index it does not know.
    let body = [0xC8u8, 0x01];
    let mut bytes = MAGIC_FRAME.to_vec();
    bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    bytes.extend_from_slice(&body);
    let mut d = FrameDecoder::new();
    d.push(&bytes);
    let f = d.next_frame().unwrap().unwrap();
    let mut h = fake();
    let mut s = Session::default();
    s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    let out = s.on_frame(&f, &mut h);
    assert!(
        matches!(&out[..], [Response::Error(e)] if e.starts_with("bad request")),
        "{out:?}"
    );
}

#[test]
fn stats_and_stats_v2_both_answer() {
    let mut h = fake();
    let mut s = Session::default();
    s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    let old = s.on_frame(&frame_of(&Request::Stats), &mut h);
    assert!(matches!(old[..], [Response::Stats(_)]), "{old:?}");
    let new = s.on_frame(&frame_of(&Request::StatsV2), &mut h);
    assert_eq!(new, vec![Response::StatsV2(Box::new(h.cgroup_stats()))]);
    assert!(!s.closing);
}

#[test]
fn wrong_token_version_or_request_first_close() {
    for f in [
        hello([4; 32], PROTOCOL_VERSION),
        hello([3; 32], PROTOCOL_VERSION + 1),
        frame_of(&Request::Status),
    ] {
        let mut s = Session::default();
        let out = s.on_frame(&f, &mut fake());
        assert!(matches!(out[..], [Response::Error(_)]), "{out:?}");
        assert!(s.closing && !s.welcomed);
    }
}

#[test]
fn wait_answers_ok_then_exited_once() {
    let mut h = fake();
    let mut s = Session::default();
    s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    assert_eq!(
        s.on_frame(&frame_of(&Request::Wait), &mut h),
        vec![Response::Ok]
    );
    let exit = ExitStatus::from_wait("a", "t", 1, 5, 0, "s".into(), "f".into());
    assert_eq!(s.exited(&exit), Some(Response::exited(&exit)));
    assert_eq!(s.exited(&exit), None);
    // Waiting after the exit answers at once.
    let mut s = Session::default();
    h.exit = Some(exit.clone());
    s.on_frame(&hello([3; 32], PROTOCOL_VERSION), &mut h);
    assert_eq!(
        s.on_frame(&frame_of(&Request::Wait), &mut h),
        vec![Response::Ok, Response::exited(&exit)]
    );
    assert_eq!(
        s.on_frame(&frame_of(&Request::Release), &mut h),
        vec![Response::Ok]
    );
    assert!(h.released);
}

#[test]
fn socket_dir_must_be_private() {
    let d = tempfile::tempdir().unwrap();
    let euid = nix::unistd::geteuid().as_raw();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        check_socket_dir(d.path(), euid),
        Err(SocketError::UnsafeDir { .. })
    ));
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    check_socket_dir(d.path(), euid).unwrap();
    assert!(check_socket_dir(d.path(), euid + 1).is_err());
}

#[test]
fn stale_socket_is_replaced_live_one_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let euid = nix::unistd::geteuid().as_raw();
    let p = d.path().join("s.sock");
    let l = bind(&p, euid).unwrap();
    assert!(matches!(bind(&p, euid), Err(SocketError::InUse { .. })));
    drop(l);
    let _l = bind(&p, euid).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// The bug this guards against: a round's time taken before a poll that
/// slept for an hour made every client accepted after it expire at once.
#[test]
fn a_client_after_an_hour_of_idle_gets_its_whole_hello_time() {
    use crate::clock::FakeClock;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let clock = FakeClock::new();
    let round_began = clock.now();
    // The poll of this round slept for an hour, then the client came.
    clock.advance(Duration::from_secs(3600));
    let mut peer = UnixStream::connect(&path).unwrap();
    let mut clients = Vec::new();
    accept_all(&listener, &mut clients, uid, &clock);
    assert_eq!(clients.len(), 1);
    assert!(!clients[0].expired(clock.now()), "expired at its accept");
    assert!(clients[0].deadline.unwrap() >= round_began + Duration::from_secs(3600));
    // It says Hello just inside its time and is welcomed.
    clock.advance(HELLO_TIMEOUT - Duration::from_millis(1));
    assert!(!clients[0].expired(clock.now()));
    say_hello(&mut peer);
    let mut h = fake();
    let mut buf = vec![0u8; 4096];
    clients[0].on_readable(&mut buf, &mut h);
    clients[0].flush(clock.now());
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut dec = FrameDecoder::new();
    let welcome = loop {
        if let Some(f) = dec.next_frame().unwrap() {
            break f.decode::<Response>().unwrap();
        }
        let n = peer.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the welcome");
        dec.push(&buf[..n]);
    };
    assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
    // Welcomed, it has no deadline: ten idle hours later it is still served.
    clock.advance(Duration::from_secs(36_000));
    assert!(!clients[0].expired(clock.now()));
    // A client that never says Hello is closed HELLO_TIMEOUT after its
    // own accept, not before.
    let _silent = UnixStream::connect(&path).unwrap();
    accept_all(&listener, &mut clients, uid, &clock);
    assert_eq!(clients.len(), 2);
    clock.advance(HELLO_TIMEOUT - Duration::from_millis(1));
    assert!(!clients[1].expired(clock.now()));
    clock.advance(Duration::from_millis(1));
    assert!(clients[1].expired(clock.now()));
    assert!(!clients[0].expired(clock.now()));
}

/// The handed connection is welcomed from the start: its first frame is a
/// request (a Hello there is a bad request, not a second welcome), it has no
/// Hello deadline, and its peer passes the same uid check as any client's.
#[test]
fn a_handed_connection_takes_requests_at_once_and_has_no_hello_deadline() {
    let (mut peer, ours) = UnixStream::pair().unwrap();
    let mut c = Client::handed(ours).unwrap();
    assert!(c.check_peer(nix::unistd::getuid().as_raw()));
    assert!(!c.session.closing);
    assert!(!c.expired(Instant::now() + Duration::from_secs(36_000)));
    peer.write_all(&frame::encode(&Request::Signal(10)).unwrap())
        .unwrap();
    let mut h = fake();
    let mut buf = vec![0u8; 4096];
    c.on_readable(&mut buf, &mut h);
    c.flush(Instant::now());
    assert_eq!(h.signals, vec![10]);
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = frame::read_frame(&mut peer, MAX_FRAME_LEN)
        .unwrap()
        .decode::<Response>()
        .unwrap();
    assert_eq!(answer, Response::Ok);
    // A Hello is no request: it closes the connection with an error.
    say_hello(&mut peer);
    c.on_readable(&mut buf, &mut h);
    assert!(c.session.closing);
}

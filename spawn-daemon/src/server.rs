//! The control socket and its clients: non-blocking accept, SO_PEERCRED, one
//! [`FrameDecoder`] and one output queue per client, the `Hello` handshake and
//! the request state machine ([`Session`]).
//!
//! Nothing here blocks: a client that sends nothing, or a byte a second, holds
//! only its own small buffers; one whose unread output passes [`MAX_OUTPUT`] is
//! dropped.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tend_proto::frame::{
    self, Frame, FrameDecoder, MAX_FRAME_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tend_proto::msg::{CgroupStats, ExecRequest, Stats, Status, Welcome};
use tend_proto::{ExitStatus, Hello, Request, Response, Token};

use crate::clock::Clock;

/// A client whose queued output passes this is dropped.
pub const MAX_OUTPUT: usize = 1 << 20;
/// A client must say Hello within this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A client being closed gets this long to take its last message.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the socket could not be set up; names the path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket's dir is not private to the daemon's user.
    #[error("socket dir {path}: {reason}")]
    UnsafeDir {
        /// The dir.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Something already answers on the path.
    #[error("socket {path}: another process listens on it")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("socket {path}: {step}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl SocketError {
    /// The errno behind the error, 0 when there is none.
    pub fn errno(&self) -> i32 {
        match self {
            SocketError::Io { source, .. } => source.raw_os_error().unwrap_or(0),
            _ => 0,
        }
    }
}

/// Check the socket's dir: a real dir, owned by `euid`, no group or other bits.
pub fn check_socket_dir(dir: &Path, euid: u32) -> Result<(), SocketError> {
    let bad = |reason: String| SocketError::UnsafeDir {
        path: dir.to_path_buf(),
        reason,
    };
    let md = std::fs::symlink_metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !md.file_type().is_dir() {
        return Err(bad("is not a directory".into()));
    }
    if md.uid() != euid {
        return Err(bad(format!("is owned by uid {}, not {euid}", md.uid())));
    }
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!("has mode {mode:04o}; it must be 0700")));
    }
    Ok(())
}

/// Bind the control socket at `path`: mode 0600, non-blocking, close-on-exec.
/// A stale socket nobody answers on is replaced; a live one is refused.
pub fn bind(path: &Path, euid: u32) -> Result<UnixListener, SocketError> {
    let io = |step: &'static str| {
        let path = path.to_path_buf();
        move |source: io::Error| SocketError::Io { path, step, source }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    check_socket_dir(dir, euid)?;
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            if !md.file_type().is_socket() {
                return Err(io("existing path is not a socket")(
                    io::Error::from_raw_os_error(libc::EEXIST),
                ));
            }
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(SocketError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path).map_err(io("remove stale socket"))?;
                }
                Err(e) => return Err(io("probe existing socket")(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod 0600"))?;
    listener
        .set_nonblocking(true)
        .map_err(io("set non-blocking"))?;
    Ok(listener)
}

/// What the daemon offers to a session: the task's state and the actions.
pub trait Handler {
    /// The secret clients must present.
    fn token(&self) -> &Token;
    /// The answer to a good Hello.
    fn welcome(&self) -> Welcome;
    /// The answer to Status.
    fn status(&self) -> Status;
    /// The answer to Stats.
    fn stats(&self) -> Stats;
    /// The answer to StatsV2.
    fn cgroup_stats(&self) -> CgroupStats;
    /// The exit, once recorded.
    fn exit(&self) -> Option<ExitStatus>;
    /// Signal the task's main process.
    fn signal(&mut self, signo: i32) -> Result<(), String>;
    /// Stop the task: `signal`, then SIGKILL after `grace_ms`.
    fn stop(&mut self, signal: i32, grace_ms: u64) -> Result<(), String>;
    /// The agent has recorded the exit: leave if the task has exited.
    fn release(&mut self) -> Result<(), String>;
    /// Run `req` in the task's isolation on `stdio` (stdin, stdout, stderr):
    /// the pid the daemon reaps it by.
    fn exec(&mut self, req: &ExecRequest, stdio: [OwnedFd; 3]) -> Result<i32, String> {
        let _ = (req, stdio);
        Err("exec is not supported here".into())
    }
}

/// One connection's protocol state, free of I/O.
#[derive(Debug, Default)]
pub struct Session {
    /// Whether the Hello was accepted.
    pub welcomed: bool,
    /// Whether the client asked to be told of the exit.
    pub waiting: bool,
    /// Whether the Exited event was sent already.
    pub exit_sent: bool,
    /// Whether the connection is to close once its output is out.
    pub closing: bool,
    /// The fds that came with the frames so far (SCM_RIGHTS), for an Exec.
    pub fds: Vec<OwnedFd>,
    /// The pid of the exec this connection started, until it has ended.
    pub exec_pid: Option<i32>,
}

impl Session {
    /// Handle one frame; returns the responses to send, in order. A fatal error
    /// sets `closing`.
    pub fn on_frame(&mut self, frame: &Frame, h: &mut dyn Handler) -> Vec<Response> {
        if self.closing {
            return Vec::new();
        }
        if !self.welcomed {
            return match frame.decode::<Hello>() {
                Ok(hello) if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) => {
                    self.fatal(format!(
                        "protocol version {} is not supported (this daemon speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION})",
                        hello.version
                    ))
                }
                Ok(hello) if !hello.token.ct_eq(h.token()) => self.fatal("bad token".into()),
                Ok(_) => {
                    self.welcomed = true;
                    vec![Response::Welcome(h.welcome())]
                }
                Err(e) => self.fatal(format!("expected Hello: {e}")),
            };
        }
        let req = match frame.decode::<Request>() {
            Ok(r) => r,
            Err(e) => return self.fatal(format!("bad request: {e}")),
        };
        let reply = |r: Result<(), String>| match r {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error(e),
        };
        match req {
            Request::Status => vec![Response::Status(h.status())],
            Request::Stats => vec![Response::Stats(h.stats())],
            Request::StatsV2 => vec![Response::StatsV2(Box::new(h.cgroup_stats()))],
            Request::Wait => {
                self.waiting = true;
                let mut out = vec![Response::Ok];
                if let Some(exit) = h.exit() {
                    out.extend(self.exited(&exit));
                }
                out
            }
            Request::Signal(n) => vec![reply(h.signal(n))],
            Request::Stop { signal, grace_ms } => vec![reply(h.stop(signal, grace_ms))],
            Request::Release => vec![reply(h.release())],
            Request::Exec(req) => vec![self.exec(&req, h)],
        }
    }

    fn exec(&mut self, req: &ExecRequest, h: &mut dyn Handler) -> Response {
        if self.exec_pid.is_some() {
            return Response::Error("exec: this connection runs one already".into());
        }
        let fds = std::mem::take(&mut self.fds);
        let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
            return Response::Error(
                "exec: the request must carry 3 fds (stdin, stdout, stderr)".into(),
            );
        };
        match h.exec(req, stdio) {
            Ok(pid) => {
                self.exec_pid = Some(pid);
                Response::Ok
            }
            Err(e) => Response::Error(e),
        }
    }

    /// The ExecExited event for this session, if `pid` is its exec.
    pub fn exec_exited(&mut self, pid: i32, code: i32) -> Option<Response> {
        if self.exec_pid == Some(pid) {
            self.exec_pid = None;
            Some(Response::ExecExited(code))
        } else {
            None
        }
    }

    /// The Exited event for this session, if it waits and has not had it yet.
    pub fn exited(&mut self, exit: &ExitStatus) -> Option<Response> {
        if self.waiting && !self.exit_sent && !self.closing {
            self.exit_sent = true;
            Some(Response::exited(exit))
        } else {
            None
        }
    }

    /// A protocol error: say why, then close.
    pub fn fatal(&mut self, message: String) -> Vec<Response> {
        self.closing = true;
        vec![Response::Error(message)]
    }
}

/// One connected client.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    /// Protocol state.
    pub session: Session,
    /// When this client is closed if nothing changes (Hello, or the last write).
    pub deadline: Option<Instant>,
    /// Whether it is to be removed.
    pub dead: bool,
}

impl Client {
    /// A freshly accepted client.
    pub fn new(stream: UnixStream, now: Instant) -> Client {
        Client {
            stream,
            decoder: FrameDecoder::with_max(MAX_FRAME_LEN),
            out: Vec::new(),
            session: Session::default(),
            deadline: Some(now + HELLO_TIMEOUT),
            dead: false,
        }
    }

    /// Whether its deadline (Hello, or the last write) has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|t| now >= t)
    }

    /// The peer's uid from SO_PEERCRED.
    pub fn peer_uid(&self) -> io::Result<u32> {
        peer_uid(&self.stream)
    }

    /// The socket, for poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether output waits to be written.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether it should still be read from.
    pub fn wants_read(&self) -> bool {
        !self.session.closing && !self.dead
    }

    /// Queue a response; a client over [`MAX_OUTPUT`] is dropped.
    pub fn send(&mut self, resp: &Response) {
        match frame::encode(resp) {
            Ok(bytes) => {
                if self.out.len() + bytes.len() > MAX_OUTPUT {
                    tracing::warn!(
                        queued = self.out.len(),
                        "client does not read its answers; dropped"
                    );
                    self.dead = true;
                    return;
                }
                self.out.extend_from_slice(&bytes);
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a response"),
        }
    }

    /// Write what can be written without blocking.
    pub fn flush(&mut self, now: Instant) {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        if self.session.closing {
            if self.out.is_empty() {
                self.dead = true;
            } else if self.deadline.is_none() {
                self.deadline = Some(now + CLOSE_GRACE);
            }
        }
    }

    /// Read what arrived (into the shared `buf`) and handle whole frames.
    pub fn on_readable(&mut self, buf: &mut [u8], h: &mut dyn Handler) {
        // A bounded number of reads per round keeps one chatty client from
        // starving the rest.
        for _ in 0..4 {
            if !self.wants_read() {
                return;
            }
            match crate::sys::recv_with_fds(self.stream.as_fd(), buf, &mut self.session.fds) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    // An exec carries 3; more is no request's.
                    self.session.fds.truncate(crate::sys::MAX_PASSED_FDS);
                    self.decoder.push(&buf[..n]);
                    self.process(h);
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    fn process(&mut self, h: &mut dyn Handler) {
        while !self.session.closing && !self.dead {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    let out = self.session.fatal(e.to_string());
                    for r in &out {
                        self.send(r);
                    }
                    return;
                }
            };
            let was_welcomed = self.session.welcomed;
            let out = self.session.on_frame(&frame, h);
            if !was_welcomed && self.session.welcomed {
                self.deadline = None;
            }
            for r in &out {
                self.send(r);
            }
        }
        if self.session.closing {
            // Nothing more is read: free the buffer.
            self.decoder = FrameDecoder::with_max(0);
        }
    }
}

/// Accept every waiting client (up to 64 a round). Each one's Hello time is
/// counted from its own accept, read from `clock` then: the round that
/// accepts it may have begun with a poll that slept for hours.
pub fn accept_all(
    listener: &UnixListener,
    clients: &mut Vec<Client>,
    my_uid: u32,
    clock: &dyn Clock,
) {
    for _ in 0..64 {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let now = clock.now();
                let mut c = Client::new(stream, now);
                match c.peer_uid() {
                    Ok(uid) if uid == my_uid || uid == 0 => {}
                    Ok(uid) => {
                        tracing::warn!(uid, "refused a client of another user");
                        let out = c
                            .session
                            .fatal(format!("uid {uid} may not talk to this daemon"));
                        for r in &out {
                            c.send(r);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SO_PEERCRED failed; client refused");
                        continue;
                    }
                }
                c.flush(now);
                clients.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: try again on the next round.
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        }
    }
}

/// The peer's uid from SO_PEERCRED.
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    getsockopt(stream, PeerCredentials)
        .map(|c| c.uid())
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

#[cfg(test)]
mod tests {
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
        fn signal(&mut self, signo: i32) -> Result<(), String> {
            self.signals.push(signo);
            Ok(())
        }
        fn stop(&mut self, _signal: i32, _grace_ms: u64) -> Result<(), String> {
            Ok(())
        }
        fn release(&mut self) -> Result<(), String> {
            if self.exit.is_none() {
                return Err("task still running".into());
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
        peer.write_all(
            &frame::encode(&Hello {
                version: PROTOCOL_VERSION,
                token: Token([3; 32]),
            })
            .unwrap(),
        )
        .unwrap();
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
}

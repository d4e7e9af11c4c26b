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
    fn signal(&mut self, signo: i32) -> Result<(), CommandError>;
    /// Stop the task: `signal`, then SIGKILL after `grace_ms`.
    fn stop(&mut self, signal: i32, grace_ms: u64) -> Result<(), CommandError>;
    /// The agent has recorded the exit: leave if the task has exited.
    fn release(&mut self) -> Result<(), CommandError>;
    /// Let a task held before its execve run (Request::Start).
    fn start(&mut self) -> Result<(), CommandError> {
        Err(CommandError::NotHeld)
    }
    /// Run `req` in the task's isolation on `stdio` (stdin, stdout, stderr):
    /// the pid the daemon reaps it by.
    fn exec(&mut self, req: &ExecRequest, stdio: [OwnedFd; 3]) -> Result<i32, CommandError> {
        let _ = (req, stdio);
        Err(CommandError::NoExec)
    }
}

/// Why the daemon refused a command; its line is the Error response's text.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The number is no signal.
    #[error("{0} is not a signal")]
    NotASignal(i32),
    /// The task has exited: there is nothing to signal.
    #[error("task has exited")]
    Exited,
    /// The kernel refused the signal.
    #[error("signal {signo}: {source}")]
    Signal {
        /// The signal.
        signo: i32,
        /// Why.
        source: io::Error,
    },
    /// Release before the exit is recorded.
    #[error("task still running")]
    StillRunning,
    /// Start for a task that is not held (it runs already, or was never).
    #[error("the task is not held for a start: it was started already, or not created to wait")]
    NotHeld,
    /// A handler that cannot exec (a test's, or a daemon in no state to).
    #[error("exec is not supported here")]
    NoExec,
    /// The exec could not start: its step and reason.
    #[error("{0}")]
    Exec(String),
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
        let reply = |r: Result<(), CommandError>| match r {
            Ok(()) => Response::Ok,
            Err(e) => Response::Error(e.to_string()),
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
            Request::Start => vec![reply(h.start())],
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
            Err(e) => Response::Error(e.to_string()),
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

    /// The starter's first connection, handed over at spawn (tend-spawn's
    /// stdin, see [`FirstConnection::Stdin`](tend_proto::config::FirstConnection)):
    /// welcomed from the start, so no Hello and no Hello deadline. Only the
    /// process that started tend-spawn holds its other end; its peer's uid
    /// is still checked as any client's ([`Client::check_peer`]).
    pub fn handed(stream: UnixStream) -> io::Result<Client> {
        stream.set_nonblocking(true)?;
        let mut c = Client::new(stream, Instant::now());
        c.session.welcomed = true;
        c.deadline = None;
        Ok(c)
    }

    /// SO_PEERCRED: the daemon's own uid or root may talk to it. Another
    /// user's client is told so and closed (false only when the check itself
    /// failed: the client is to be dropped at once).
    pub fn check_peer(&mut self, my_uid: u32) -> bool {
        match self.peer_uid() {
            Ok(uid) if uid == my_uid || uid == 0 => true,
            Ok(uid) => {
                tracing::warn!(uid, "refused a client of another user");
                let out = self
                    .session
                    .fatal(format!("uid {uid} may not talk to this daemon"));
                for r in &out {
                    self.send(r);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "SO_PEERCRED failed; client refused");
                false
            }
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
                if !c.check_peer(my_uid) {
                    continue;
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
mod tests;

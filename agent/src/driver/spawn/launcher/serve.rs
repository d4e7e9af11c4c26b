//! The launcher process (`tend spawn-launcher`): single-threaded, its stdin
//! the agent's socket; a poll on that socket and a signalfd for SIGCHLD.
//! Every fd it opens is close-on-exec, and tend-spawn's fds 0, 1 and 2 are
//! the three it was sent: nothing of the launcher reaches tend-spawn.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags, SocketType,
};

use super::{Reply, Request, MAX_REQUEST};

/// Why the launcher stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Stdin is not the agent's socket: the verb was run by hand.
    #[error(
        "stdin is not a seqpacket socket: `tend {}` is started by the agent, not by hand",
        super::VERB
    )]
    NotLaunched,
    /// The signal setup failed.
    #[error("watching SIGCHLD: {0}")]
    Signals(#[source] Errno),
    /// The socket failed.
    #[error("the agent's socket: {0}")]
    Socket(#[source] io::Error),
}

/// Serve the agent on stdin until it closes its end.
pub fn serve() -> Result<(), ServeError> {
    let stdin = io::stdin();
    let sock = stdin.as_fd();
    match rustix::net::sockopt::socket_type(sock) {
        Ok(SocketType::SEQPACKET) => {}
        _ => return Err(ServeError::NotLaunched),
    }
    // Its comm would be "exe", after the path it was started by.
    let _ = nix::sys::prctl::set_name(c"tend-launcher");
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    // Blocked, so it reaches the signalfd; spawned processes start with an
    // empty mask (std resets it), and tend-spawn resets its own anyway.
    chld.thread_block().map_err(ServeError::Signals)?;
    let sigfd = SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(ServeError::Signals)?;
    loop {
        let mut fds = [
            PollFd::new(sock, PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(ServeError::Socket(e.into())),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (asked, reaped) = (ready(&fds[0]), ready(&fds[1]));
        if reaped {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap();
        }
        if asked {
            match recv_request(sock) {
                Ok(Some(asked)) => answer(sock, asked)?,
                Ok(None) => {
                    reap();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ServeError::Socket(e)),
            }
        }
    }
}

/// What one message asks: a spawn, or a malformed message to refuse (with
/// the id when it has one).
enum Asked {
    Spawn(Request, [OwnedFd; 3]),
    Bad(u64, &'static str),
}

/// The next request; None at the agent's end.
fn recv_request(sock: BorrowedFd<'_>) -> io::Result<Option<Asked>> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(3);
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let id = buf
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Ok(Some(Asked::Bad(id, "truncated")));
    }
    let req = match Request::decode(&buf[..msg.bytes]) {
        Ok(r) => r,
        Err(why) => return Ok(Some(Asked::Bad(id, why))),
    };
    match <[OwnedFd; 3]>::try_from(fds) {
        Ok(fds) => Ok(Some(Asked::Spawn(req, fds))),
        Err(_) => Ok(Some(Asked::Bad(id, "not three fds"))),
    }
}

/// Carry out one request and answer it.
fn answer(sock: BorrowedFd<'_>, asked: Asked) -> Result<(), ServeError> {
    let reply = match asked {
        Asked::Bad(id, why) => {
            eprintln!("tend {}: a malformed request: {why}", super::VERB);
            Reply {
                id,
                errno: Errno::EINVAL as i32,
                pid: 0,
            }
        }
        Asked::Spawn(req, [stdin, stdout, stderr]) => {
            // As the agent's direct spawn: an empty environment, at /.
            let spawned = Command::new(&req.bin)
                .env_clear()
                .current_dir("/")
                .stdin(Stdio::from(stdin))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr))
                .spawn();
            // The child is reaped on SIGCHLD; dropping its handle waits for nothing.
            match spawned {
                Ok(child) => Reply {
                    id: req.id,
                    errno: 0,
                    pid: child.id(),
                },
                Err(e) => Reply {
                    id: req.id,
                    errno: e.raw_os_error().unwrap_or(Errno::EINVAL as i32),
                    pid: 0,
                },
            }
        }
    };
    // A blocking send of 16 bytes on a socket the agent reads all the time.
    // An agent that has gone is heard as the end of its socket, next.
    match rustix::net::send(sock, &reply.encode(), SendFlags::NOSIGNAL) {
        Ok(_) | Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => Ok(()),
        Err(e) => Err(ServeError::Socket(e.into())),
    }
}

/// Reap every child that has ended (tend-spawns in place, whose tasks are
/// done; a first process, where one forked its daemon off).
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

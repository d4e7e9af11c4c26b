//! The spawn launcher: a small resident process, the agent's own executable
//! (`tend spawn-launcher`), that execs tend-spawn on the agent's behalf.
//!
//! Why: a process that forks copies its whole fd table, and its child's exec
//! then closes every close-on-exec fd again. The agent holds one connection
//! per running task, so a spawn straight from the agent costs O(tasks), and
//! a thousand starts O(tasks²). The launcher holds a handful of fds whatever
//! the agent holds.
//!
//! The conversation is on a `SOCK_SEQPACKET` socketpair, the launcher's
//! stdin: per start the agent sends a [`Request`] (an id and tend-spawn's
//! path) with tend-spawn's stdin, stdout and stderr as `SCM_RIGHTS`; the
//! launcher spawns tend-spawn on them and answers with a [`Reply`] (the id,
//! and 0 or the errno of the failed exec). The config frame and the start
//! report go over the fds the agent keeps, as for a direct spawn. The config
//! asks for [`Detach::InPlace`](tend_proto::config::Detach): the process the
//! launcher exec'd is the daemon, the launcher's child, reaped by it when it
//! ends; nothing started depends on the launcher (when it ends, its daemons
//! are reparented to init, or the nearest subreaper, which reaps them).
//!
//! The launcher ends when the agent's end closes. One that dies or does not
//! answer costs nothing already started: the start at hand is made directly
//! (its config was not sent yet, so a tend-spawn the launcher may have
//! started reads an end of file and starts nothing) and the next start
//! starts a new launcher.

pub mod serve;

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::{oneshot, Notify};

/// The verb of `tend` that runs the launcher (hidden from the help: only
/// the agent starts it).
pub const VERB: &str = "spawn-launcher";

/// The program the agent runs as its launcher: its own executable, as it
/// was when the agent started, even if the file has been replaced since.
const SELF_EXE: &str = "/proc/self/exe";

/// How long the launcher may go without answering any start while one
/// waits, before it is taken for stuck and killed. A start itself is one
/// fork and exec, but a thousand asked at once queue behind each other, and
/// on a slow machine (one vCPU, a user-mode kernel) the last waits longer
/// than this for its turn: a launcher that answers others is working, not
/// stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request: an id and a path.
const MAX_REQUEST: usize = 8 + 4096;

/// A reply's size: id, errno, pid.
const REPLY_LEN: usize = 16;

/// One start asked of the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// The tend-spawn binary.
    pub bin: PathBuf,
}

impl Request {
    /// `[id: u64 LE][path bytes]`.
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.bin.as_os_str().len());
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(self.bin.as_os_str().as_bytes());
        b
    }

    /// The request in `bytes`, or why it is none.
    fn decode(bytes: &[u8]) -> Result<Request, &'static str> {
        let (id, path) = bytes.split_at_checked(8).ok_or("shorter than its id")?;
        if path.is_empty() {
            return Err("no path");
        }
        if path.contains(&0) {
            return Err("a NUL byte in the path");
        }
        let id = u64::from_le_bytes(id.try_into().map_err(|_| "shorter than its id")?);
        let bin = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        Ok(Request { id, bin })
    }
}

/// The launcher's answer to one [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// 0: tend-spawn runs; else the errno of its failed spawn.
    pub errno: i32,
    /// The process exec'd: the daemon in place (0 when it did not start).
    pub pid: u32,
}

impl Reply {
    /// `[id: u64 LE][errno: i32 LE][pid: u32 LE]`.
    fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.errno.to_le_bytes());
        b[12..].copy_from_slice(&self.pid.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Reply> {
        let b: &[u8; REPLY_LEN] = b.try_into().ok()?;
        let (id, rest) = b.split_at(8);
        let (errno, pid) = rest.split_at(4);
        Some(Reply {
            id: u64::from_le_bytes(id.try_into().ok()?),
            errno: i32::from_le_bytes(errno.try_into().ok()?),
            pid: u32::from_le_bytes(pid.try_into().ok()?),
        })
    }
}

/// Why a start did not go through the launcher.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// The launcher ran the spawn and it failed: the answer for this start.
    #[error("spawning tend-spawn: {0}")]
    Spawn(#[source] io::Error),
    /// No launcher could be started or asked: the start is to be made
    /// directly, on fds of its own.
    #[error("the spawn launcher is unavailable: {0}")]
    Unavailable(String),
}

/// The agent's handle on its launcher, started on first use and again after
/// one died.
#[derive(Debug, Default)]
pub struct Launcher {
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    ids: AtomicU64,
}

impl Launcher {
    /// A launcher that starts on first use.
    pub fn new() -> Launcher {
        Launcher::default()
    }

    /// Spawn `bin` on `fds` (its stdin, stdout, stderr) through the
    /// launcher. `Ok` once tend-spawn runs; the fds are the caller's still
    /// (the launcher holds copies until its spawn is done).
    pub async fn spawn(&self, bin: &Path, fds: [BorrowedFd<'_>; 3]) -> Result<u32, LauncherError> {
        let conn = self.conn().await?;
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            id,
            bin: bin.to_path_buf(),
        };
        let answer = conn.expect(id)?;
        if let Err(e) = conn.send(&req.encode(), fds).await {
            conn.forget(id);
            return Err(LauncherError::Unavailable(format!(
                "sending to the launcher: {e}"
            )));
        }
        let mut answer = answer;
        loop {
            return match tokio::time::timeout(ANSWER_TIMEOUT, &mut answer).await {
                Ok(Ok(r)) if r.errno == 0 => Ok(r.pid),
                Ok(Ok(r)) => Err(LauncherError::Spawn(io::Error::from_raw_os_error(r.errno))),
                Ok(Err(_)) => Err(LauncherError::Unavailable(
                    "the launcher ended before it answered".into(),
                )),
                // Busy with the starts asked before this one.
                Err(_) if conn.answered_within(ANSWER_TIMEOUT) => continue,
                Err(_) => {
                    conn.forget(id);
                    conn.kill();
                    Err(LauncherError::Unavailable(format!(
                        "no answer to any start for {}s; the launcher is killed",
                        ANSWER_TIMEOUT.as_secs()
                    )))
                }
            };
        }
    }

    /// The live launcher, started when there is none.
    async fn conn(&self) -> Result<Arc<Conn>, LauncherError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
        {
            return Ok(c.clone());
        }
        let c = Conn::start()
            .map_err(|e| LauncherError::Unavailable(format!("starting the launcher: {e}")))?;
        *current = Some(c.clone());
        Ok(c)
    }
}

/// One launcher process and the agent's end of its socket.
#[derive(Debug)]
struct Conn {
    /// A `SOCK_SEQPACKET` socket, registered with tokio as a datagram
    /// socket (it has message boundaries too): every call on it is ours,
    /// through `async_io`.
    sock: UnixDatagram,
    /// The starts sent and not answered yet; None once the launcher ended.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
    closed: AtomicBool,
    /// Asks the task that reaps the launcher to kill it.
    kill: Notify,
    /// When it last answered a start (or was started).
    last_answer: Mutex<std::time::Instant>,
}

impl Conn {
    /// Start a launcher on one end of a new socketpair, and the task that
    /// reads its answers and reaps it.
    fn start() -> io::Result<Arc<Conn>> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        let child = tokio::process::Command::new(SELF_EXE)
            .arg0("tend")
            .arg(VERB)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .current_dir("/")
            // Out of the agent's process group: a terminal's ^C is the
            // agent's to handle, and the launcher ends with the agent.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        tracing::debug!(pid = child.id(), "spawn launcher started");
        let conn = Arc::new(Conn {
            sock: UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(ours))?,
            waiting: Mutex::new(Some(HashMap::new())),
            closed: AtomicBool::new(false),
            kill: Notify::new(),
            last_answer: Mutex::new(std::time::Instant::now()),
        });
        tokio::spawn(conn.clone().serve(child));
        Ok(conn)
    }

    /// Hand each answer to its start until the launcher ends (or is to be
    /// killed), then fail every start still waiting and reap the launcher.
    async fn serve(self: Arc<Conn>, mut child: tokio::process::Child) {
        let why = loop {
            tokio::select! {
                r = self.recv() => match r {
                    Ok(Some(reply)) => {
                        *self.last_answer.lock().expect("launcher clock") = std::time::Instant::now();
                        let to = self.waiting.lock().expect("launcher waiters").as_mut()
                            .and_then(|w| w.remove(&reply.id));
                        if let Some(to) = to {
                            let _ = to.send(reply);
                        }
                    }
                    Ok(None) => break "it closed its socket".to_string(),
                    Err(e) => break format!("reading its answers: {e}"),
                },
                () = self.kill.notified() => {
                    let _ = child.start_kill();
                    break "it was killed for not answering".to_string();
                }
            }
        };
        self.closed.store(true, Ordering::Release);
        // Every sender dropped: each waiting start hears the end.
        drop(self.waiting.lock().expect("launcher waiters").take());
        let status = child.wait().await;
        tracing::warn!(
            ?status,
            "the spawn launcher ended: {why}; the next start starts another"
        );
    }

    /// A waiter for the answer to `id`, or the launcher has ended.
    fn expect(&self, id: u64) -> Result<oneshot::Receiver<Reply>, LauncherError> {
        let (tx, rx) = oneshot::channel();
        match self.waiting.lock().expect("launcher waiters").as_mut() {
            Some(w) => {
                w.insert(id, tx);
                Ok(rx)
            }
            None => Err(LauncherError::Unavailable("the launcher ended".into())),
        }
    }

    /// Whether it answered a start within `d`.
    fn answered_within(&self, d: Duration) -> bool {
        self.last_answer.lock().expect("launcher clock").elapsed() < d
    }

    fn forget(&self, id: u64) {
        if let Some(w) = self.waiting.lock().expect("launcher waiters").as_mut() {
            w.remove(&id);
        }
    }

    fn kill(&self) {
        self.kill.notify_one();
    }

    /// One request with its three fds: a seqpacket message goes whole or not at all.
    async fn send(&self, bytes: &[u8], fds: [BorrowedFd<'_>; 3]) -> io::Result<()> {
        self.sock
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
                let mut cmsg = SendAncillaryBuffer::new(&mut space);
                if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(io::Error::other("no room for three fds"));
                }
                rustix::net::sendmsg(
                    &self.sock,
                    &[IoSlice::new(bytes)],
                    &mut cmsg,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            })
            .await
            .map(drop)
    }

    /// The next answer; None when the launcher closed its end.
    async fn recv(&self) -> io::Result<Option<Reply>> {
        let mut buf = [0u8; REPLY_LEN + 1];
        let n = self
            .sock
            .async_io(Interest::READABLE, || {
                rustix::net::recv(&self.sock, &mut buf, RecvFlags::empty())
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            return Ok(None);
        }
        Reply::decode(&buf[..n]).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an answer of {n} bytes, not {REPLY_LEN}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_a_reply_read_back_as_written() {
        let req = Request {
            id: 7,
            bin: PathBuf::from("/usr/lib/tend/tend-spawn"),
        };
        assert_eq!(Request::decode(&req.encode()), Ok(req));
        let reply = Reply {
            id: u64::MAX,
            errno: 2,
            pid: 4321,
        };
        assert_eq!(Reply::decode(&reply.encode()), Some(reply));
    }

    #[test]
    fn a_request_without_a_path_or_with_a_nul_is_refused() {
        assert_eq!(Request::decode(&[1, 2, 3]), Err("shorter than its id"));
        assert_eq!(Request::decode(&7u64.to_le_bytes()), Err("no path"));
        let mut nul = 7u64.to_le_bytes().to_vec();
        nul.extend_from_slice(b"/bin\0/x");
        assert_eq!(Request::decode(&nul), Err("a NUL byte in the path"));
        assert_eq!(Reply::decode(&[0; REPLY_LEN + 1]), None);
    }
}

//! The agent's HTTP/JSON API on its Unix socket, `<run_dir>/tend.sock` (0600;
//! the peer must be root or the agent's own user). `docs/api.md` documents every
//! route with curl examples.
//!
//! `server` serves it (hyper, with the socket's limits), `routes` answers each
//! request, `wire` holds the limits and the typed bodies both ends share, and
//! `client` is the other end, the CLI's and the tests'.

pub mod client;
pub mod exec;
pub mod routes;
pub mod server;
pub mod wire;

pub use server::serve;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The API socket of a run dir.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("tend.sock")
}

/// The client end of a connection, to tell when it is gone: a follow stream
/// with nothing to send must not outlive its reader.
#[derive(Debug, Default)]
pub struct Peer(Option<OwnedFd>);

impl Peer {
    /// Watch `conn` (a copy of its fd, so the connection stays free to use).
    pub fn of(conn: &impl AsFd) -> Peer {
        Peer(conn.as_fd().try_clone_to_owned().ok())
    }

    /// Whether the client closed its end. Only a whole close counts (the
    /// kernel says POLLHUP on a Unix socket, asked for or not); a client that
    /// only shut its write side after the request still reads the answer.
    pub fn gone(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Some(fd) = &self.0 else { return false };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    }

    /// Answer a request the server could not read, on the watching copy: the
    /// connection itself is gone with the server's state by then. Best effort,
    /// as the client may be gone too; the answer is small enough for an empty
    /// socket buffer.
    pub fn answer(&self, status: u16, body: &wire::ErrorBody) {
        let Some(fd) = &self.0 else { return };
        let body = wire::to_json(body);
        let reason = hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut raw = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let mut left = &raw[..];
        while !left.is_empty() {
            match nix::unistd::write(fd, left) {
                Ok(0) | Err(_) => return,
                Ok(n) => left = &left[n..],
            }
        }
    }
}

/// Why the API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another agent answers on the socket.
    #[error("an agent already answers on {0}")]
    InUse(PathBuf),
    /// Binding failed.
    #[error("bind {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Bind the API socket: a stale socket file (nothing answers) is replaced, a live
/// one is refused. The socket is made 0600 before anyone can connect: the run
/// dir is 0700.
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ServeError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

//! `POST /v1/allocations/:id/tasks/:task/exec`: run a command in a running
//! task's isolation on the caller's own stdin, stdout and stderr.
//!
//! The request (`{"argv": [...], "tty": false}`) asks to upgrade the
//! connection (`Connection: Upgrade`, `Upgrade: tend-exec`). Once the agent
//! has found the task's tend-spawn it answers 101; the client then sends one
//! byte carrying its three stdio fds as SCM_RIGHTS, the agent passes them on
//! to the tend-spawn with `Request::Exec` and closes its copies, and when the
//! command ends it writes one JSON line, `{"exit_code": N}` or
//! `{"error": "..."}`, and closes. The command reads and writes the caller's
//! files itself: no byte of its I/O is copied by the agent or tend-spawn.
//! Both sockets are local (the API's is 0600 and checks the peer's uid;
//! tend-spawn's checks it too), so passing fds needs no new trust.

use std::os::fd::{AsRawFd, RawFd};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, UPGRADE};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tend_proto::msg::ExecRequest;
use tend_proto::Token;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::server::{self, HoldBack, Limits, Reply};
use crate::agent::Agent;
use crate::driver::spawn::client::Client;

/// The protocol name of the upgrade.
pub const UPGRADE_PROTOCOL: &str = "tend-exec";

/// The request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecBody {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Whether the caller's stdio is a terminal.
    #[serde(default)]
    pub tty: bool,
}

/// The line the agent writes once the command has ended (or could not run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEnded {
    /// The command's exit code, 128+N for a death by signal N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether `path` is an exec route (`/v1/allocations/:id/tasks/:task/exec`).
pub fn is_exec_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segs.as_slice(),
        ["v1", "allocations", _, "tasks", _, "exec"]
    )
}

/// Answer an exec request: 101 and the exec in the background, or the error.
pub async fn answer(agent: Agent, mut req: hyper::Request<Incoming>, limits: Limits) -> Reply {
    let wants_upgrade = req.headers().get(UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes())
    });
    let on_upgrade = hyper::upgrade::on(&mut req);
    let req = match server::read(req, limits).await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if req.method != hyper::Method::POST {
        return server::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        );
    }
    if !wants_upgrade {
        return server::error(
            400,
            format!("exec needs Connection: Upgrade and Upgrade: {UPGRADE_PROTOCOL}"),
        );
    }
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let (prefix, task) = match segs.as_slice() {
        ["v1", "allocations", id, "tasks", task, "exec"] => (*id, *task),
        _ => return server::error(404, format!("no route POST {}", req.path)),
    };
    let body: ExecBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return server::error(400, format!("body: expected {{\"argv\": [...]}}: {e}")),
    };
    if body.argv.first().is_none_or(String::is_empty) {
        return server::error(400, "argv: no command given");
    }
    let target = agent
        .resolve_alloc(prefix)
        .and_then(|id| agent.exec_target(&id, task));
    let (socket, token) = match target {
        Ok(t) => t,
        Err(e) => return server::error(e.status(), e.to_string()),
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "exec: the upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<HoldBack>>() else {
            tracing::warn!("exec: the upgraded connection is not the API's socket");
            return;
        };
        let mut conn = parts.io.into_inner().into_inner();
        let ended = match run(&conn, &socket, token, body).await {
            Ok(code) => ExecEnded {
                exit_code: Some(code),
                error: None,
            },
            Err(e) => ExecEnded {
                exit_code: None,
                error: Some(e),
            },
        };
        let mut line = super::wire::to_json(&ended);
        line.push(b'\n');
        let _ = conn.write_all(&line).await;
        let _ = conn.shutdown().await;
    });
    hyper::Response::builder()
        .status(101)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, UPGRADE_PROTOCOL)
        .body(server::empty())
        .unwrap_or_default()
}

/// Take the caller's fds from `conn`, hand them to the tend-spawn at
/// `socket`, and wait for the command's end.
async fn run(
    conn: &UnixStream,
    socket: &std::path::Path,
    token: Token,
    body: ExecBody,
) -> Result<i32, String> {
    let fds = recv_stdio(conn).await?;
    let started = async {
        let mut c = Client::connect(socket, token).await?;
        c.exec(
            ExecRequest {
                argv: body.argv,
                tty: body.tty,
            },
            fds,
        )
        .await
        .map(|()| c)
    }
    .await;
    // tend-spawn has its own copies now (or none): the agent keeps none.
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
    let mut c = started.map_err(|e| exec_error(&e))?;
    tokio::select! {
        code = c.exec_exit() => code.map_err(|e| exec_error(&e)),
        () = hung_up(conn) => {
            // Dropping the connection tells tend-spawn: it kills the command.
            drop(c);
            Err("the client went away; the command was killed".into())
        }
    }
}

/// Returns once the client has closed its end (it sends nothing after the
/// fds, so anything readable is the close).
async fn hung_up(conn: &UnixStream) {
    let mut b = [0u8; 64];
    loop {
        if conn.readable().await.is_err() {
            return;
        }
        match conn.try_read(&mut b) {
            Ok(0) => return,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
    }
}

fn exec_error(e: &crate::driver::spawn::client::ClientError) -> String {
    use crate::driver::spawn::client::ClientError;
    match e {
        // An older tend-spawn cannot decode the request.
        ClientError::Refused { message, .. } if message.starts_with("bad request") => {
            format!("the task's tend-spawn predates exec ({message}): restart the task to use it")
        }
        ClientError::Refused { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Read the one byte that carries the caller's stdin, stdout and stderr.
async fn recv_stdio(conn: &UnixStream) -> Result<[RawFd; 3], String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let raw = conn.as_raw_fd();
    let got: Vec<RawFd> = tokio::time::timeout(
        super::wire::REQUEST_TIMEOUT,
        conn.async_io(tokio::io::Interest::READABLE, || {
            let mut b = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut b)];
            let mut space = nix::cmsg_space!([RawFd; 3]);
            let msg = recvmsg::<()>(
                raw,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(r) = c {
                    fds.extend(r);
                }
            }
            Ok(fds)
        }),
    )
    .await
    .map_err(|_| "the client did not send its stdio fds in time".to_string())?
    .map_err(|e| format!("receive the client's stdio fds: {e}"))?;
    <[RawFd; 3]>::try_from(got.as_slice()).map_err(|_| {
        for fd in &got {
            let _ = nix::unistd::close(*fd);
        }
        format!(
            "expected the client's 3 stdio fds (stdin, stdout, stderr), got {}",
            got.len()
        )
    })
}

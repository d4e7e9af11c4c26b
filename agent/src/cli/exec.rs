//! `tend exec ALLOC TASK -- CMD...`: run a command in a running task's
//! isolation, on this process's own stdin, stdout and stderr (see
//! `api::exec` for the exchange: an upgraded request, then the three fds as
//! SCM_RIGHTS, then the exit code). The exit code is the command's.
//!
//! With `-t`, the command gets a pty this process opens: its slave end is
//! the command's stdin, stdout and stderr (and controlling terminal), and
//! this process copies between its own stdio and the master, with its
//! terminal, if it has one, in raw mode meanwhile, as `ssh -t` does. Only
//! then is a byte copied, and by the caller alone.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};

use super::client::enc;
use crate::api::exec::{ExecBody, ExecEnded, UPGRADE_PROTOCOL};
use crate::api::wire::ErrorBody;

/// The longest answer head read before the exchange.
const MAX_HEAD: usize = 64 * 1024;

/// Run `argv` in `task` of `alloc` through the agent at `socket`: the
/// command's exit code.
pub fn run(
    socket: &Path,
    alloc: &str,
    task: &str,
    argv: &[String],
    tty: bool,
) -> anyhow::Result<i32> {
    let mut conn = UnixStream::connect(socket)
        .with_context(|| format!("connect to the agent at {}", socket.display()))?;
    let body = serde_json::to_vec(&ExecBody {
        argv: argv.to_vec(),
        tty,
    })?;
    let head = format!(
        "POST /v1/allocations/{}/tasks/{}/exec HTTP/1.1\r\nHost: tend\r\n\
         Connection: Upgrade\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        enc(alloc),
        enc(task),
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body)?;
    let (status, rest) = read_head(&mut conn)?;
    if status != 101 {
        let mut answer = rest;
        conn.read_to_end(&mut answer)?;
        let message = serde_json::from_slice::<ErrorBody>(&answer)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("the agent answered {status}"));
        bail!("{message}");
    }
    let mut line = Vec::new();
    if tty {
        let pty = nix::pty::openpty(None, None).context("open a pty")?;
        let slave = pty.slave.as_raw_fd();
        send_stdio(&conn, [slave, slave, slave]).context("pass the pty to the agent")?;
        // The command holds the slave now: once it ends, the master reads EOF.
        drop(pty.slave);
        let _raw = RawMode::enter();
        let master = std::fs::File::from(pty.master);
        let mut to_master = master.try_clone()?;
        // Not joined: it blocks on this process's stdin until the exit.
        std::thread::spawn(move || std::io::copy(&mut std::io::stdin(), &mut to_master));
        let out = std::thread::spawn(move || {
            let mut master = master;
            // EIO ends it: the last slave is closed.
            let _ = std::io::copy(&mut master, &mut std::io::stdout());
            let _ = std::io::stdout().flush();
        });
        conn.read_to_end(&mut line)?;
        let _ = out.join();
    } else {
        send_stdio(&conn, [0, 1, 2]).context("pass stdio to the agent")?;
        conn.read_to_end(&mut line)?;
    }
    let ended: ExecEnded = serde_json::from_slice(&line)
        .with_context(|| format!("the agent's answer {:?}", String::from_utf8_lossy(&line)))?;
    match (ended.exit_code, ended.error) {
        (Some(code), _) => Ok(code),
        (None, Some(e)) => bail!("{e}"),
        (None, None) => bail!("the agent did not say how the command ended"),
    }
}

/// Read the answer's head, a byte at a time: nothing after it may be taken
/// from the socket (the body of a refusal is read whole after). Its status.
fn read_head(conn: &mut UnixStream) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            bail!("the agent's answer head is over {MAX_HEAD} bytes");
        }
        match conn.read(&mut b)? {
            0 => bail!("the agent closed the connection before answering"),
            _ => head.push(b[0]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the agent's answer {:?}", text.lines().next()))?;
    Ok((status, Vec::new()))
}

/// Send one byte carrying `fds` as SCM_RIGHTS.
fn send_stdio(conn: &UnixStream, fds: [RawFd; 3]) -> anyhow::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(b"x")];
    let rights = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &iov,
        &rights,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// This process's terminal in raw mode, if stdin is one, until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

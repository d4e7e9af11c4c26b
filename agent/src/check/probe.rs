//! One run of one health check: a script through the task's tend-spawn, a
//! TCP connect, an HTTP request. Each returns the state and what it saw,
//! and never takes longer than the check's timeout.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tend_proto::msg::ExecRequest;
use tend_proto::Token;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::spawn::client::Client;
use crate::outcome::humanize;
use crate::state::CheckState;

/// The most of a check's output kept (Consul keeps 4 KiB too).
pub const OUTPUT_LIMIT: usize = 4096;

/// How long a script's output is read once it has exited: a child it left
/// in the background may hold the pipe open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// A script's exit code as a state: 0 passing, 1 warning, else critical.
pub fn script_state(code: i32) -> CheckState {
    match code {
        0 => CheckState::Passing,
        1 => CheckState::Warning,
        _ => CheckState::Critical,
    }
}

/// A script's result: its state, and its output (or, when it said nothing
/// and failed, its code).
fn script_result(code: i32, out: &[u8]) -> (CheckState, String) {
    let mut output = trim_output(out);
    if output.is_empty() && !matches!(code, 0 | 1) {
        output = format!("exited with code {code}");
    }
    (script_state(code), output)
}

/// An HTTP status as a state: 2xx passing, 429 warning, else critical.
pub fn http_state(status: u16) -> CheckState {
    match status {
        200..=299 => CheckState::Passing,
        429 => CheckState::Warning,
        _ => CheckState::Critical,
    }
}

/// Trimmed, at most [`OUTPUT_LIMIT`] bytes, cut on a character boundary.
pub fn trim_output(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(&raw[..raw.len().min(OUTPUT_LIMIT)]);
    s.trim().to_string()
}

fn timed_out(timeout: Duration) -> (CheckState, String) {
    (
        CheckState::Critical,
        format!("timed out after {}", humanize(timeout)),
    )
}

/// `command args...` in the task, through its tend-spawn at `socket`, with
/// stdin from /dev/null and stdout and stderr into one pipe read here. At
/// the timeout the connection is dropped, which makes tend-spawn kill it.
pub async fn script(
    socket: &Path,
    token: Token,
    argv: Vec<String>,
    timeout: Duration,
) -> (CheckState, String) {
    let run = async {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a pipe for the output: {e}"))?;
        let null: OwnedFd = std::fs::File::open("/dev/null")
            .map_err(|e| format!("cannot open /dev/null: {e}"))?
            .into();
        let mut c = Client::connect(socket, token)
            .await
            .map_err(|e| e.to_string())?;
        let started = c
            .exec(
                ExecRequest { argv, tty: false },
                [null.as_raw_fd(), tx.as_raw_fd(), tx.as_raw_fd()],
            )
            .await;
        // tend-spawn has its own copies now: the end of the output is the
        // command's (and its children's) closing theirs.
        drop(tx);
        drop(null);
        started.map_err(|e| e.to_string())?;
        let mut out = tokio::net::unix::pipe::Receiver::from_owned_fd(rx)
            .map_err(|e| format!("cannot read the output pipe: {e}"))?;
        let mut buf = Vec::new();
        let (code, _) = tokio::join!(c.exec_exit(), read_capped(&mut out, &mut buf));
        let code = code.map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, read_capped(&mut out, &mut buf)).await;
        Ok::<_, String>((code, buf))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok((code, buf))) => script_result(code, &buf),
        Ok(Err(why)) => (CheckState::Critical, why),
        Err(_) => timed_out(timeout),
    }
}

/// `argv` in the docker container `id` through the engine's exec API: its
/// state from its exit code as a script's. At the timeout the result is
/// critical; the engine cannot kill the exec, which ends with the container
/// if not before.
pub async fn container_script(
    engine: &crate::driver::docker::DockerDriver,
    id: &str,
    argv: Vec<String>,
    timeout: Duration,
) -> (CheckState, String) {
    match tokio::time::timeout(timeout, engine.exec_output(id, argv, OUTPUT_LIMIT)).await {
        Ok(Ok((code, buf))) => script_result(i32::try_from(code).unwrap_or(-1), &buf),
        Ok(Err(e)) => (CheckState::Critical, e.to_string()),
        Err(_) => timed_out(timeout),
    }
}

/// Read until the end or an error, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn read_capped<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// A TCP connection to `addr`: made is passing.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> (CheckState, String) {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (CheckState::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (CheckState::Critical, format!("TCP connect {addr}: {e}")),
        Err(_) => timed_out(timeout),
    }
}

/// `method path` over HTTP/1.1 to `addr`, as Consul's http check: 2xx
/// passing, 429 warning, anything else (or no answer) critical. The output
/// is the status line and the start of the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> (CheckState, String) {
    let url = format!("http://{addr}{path}");
    let run = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tend health check\r\nAccept: text/plain, text/*, */*\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        // The head and the start of the body are all a result shows.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while buf.len() < 2 * OUTPUT_LIMIT {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return (CheckState::Critical, format!("HTTP {method} {url}: {e}")),
        Err(_) => return timed_out(timeout),
    };
    match parse_head(&buf) {
        Some((status, reason, body)) => (
            http_state(status),
            format!(
                "HTTP {method} {url}: {status} {reason} Output: {}",
                trim_output(body)
            )
            .trim()
            .to_string(),
        ),
        None => (
            CheckState::Critical,
            format!("HTTP {method} {url}: no HTTP response"),
        ),
    }
}

/// The status code, the reason phrase and the body of a response.
fn parse_head(buf: &[u8]) -> Option<(u16, String, &[u8])> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").to_string();
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |i| &buf[i + 4..]);
    Some((status, reason, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_as_consul() {
        assert_eq!(script_state(0), CheckState::Passing);
        assert_eq!(script_state(1), CheckState::Warning);
        assert_eq!(script_state(2), CheckState::Critical);
        assert_eq!(script_state(127), CheckState::Critical);
        assert_eq!(http_state(200), CheckState::Passing);
        assert_eq!(http_state(204), CheckState::Passing);
        assert_eq!(http_state(429), CheckState::Warning);
        assert_eq!(http_state(301), CheckState::Critical);
        assert_eq!(http_state(404), CheckState::Critical);
        assert_eq!(http_state(503), CheckState::Critical);
    }

    #[test]
    fn heads() {
        let r = b"HTTP/1.0 404 File not found\r\nServer: x\r\n\r\nnope\n";
        let (s, reason, body) = parse_head(r).unwrap();
        assert_eq!(
            (s, reason.as_str(), body),
            (404, "File not found", &b"nope\n"[..])
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n").is_none());
        assert!(parse_head(b"").is_none());
    }

    #[test]
    fn output_is_trimmed_and_capped() {
        assert_eq!(trim_output(b"  ok \n"), "ok");
        let long = vec![b'a'; OUTPUT_LIMIT * 2];
        assert_eq!(trim_output(&long).len(), OUTPUT_LIMIT);
    }
}

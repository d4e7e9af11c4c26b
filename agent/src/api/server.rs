//! The API's HTTP/1.1 server: hyper, one request per connection, with the
//! limits a local socket still needs ([`Limits`]). The head must arrive within
//! [`REQUEST_TIMEOUT`] and fit in [`MAX_HEAD`]; the body must announce its
//! length, fit in [`MAX_BODY`] and arrive within [`REQUEST_TIMEOUT`] too. Every
//! failed answer, hyper's own included, is `{"error": "..."}`. A malformed or
//! slow client costs only its connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Channel, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use super::wire::{self, ErrorBody, MAX_BODY, MAX_HEAD, REQUEST_TIMEOUT};
use super::{routes, Peer};
use crate::agent::Agent;

/// The body of every answer: whole, or a stream fed by a task.
pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// An answer.
pub type Reply = hyper::Response<ApiBody>;

/// A request as the routes see it: read whole, path and query decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, POST, ...
    pub method: Method,
    /// The path without the query, percent-decoded.
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    /// The body.
    pub body: Bytes,
}

/// An answer of `status` with `body` as `content_type`.
pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
    hyper::Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .unwrap_or_default()
}

/// An empty body.
pub fn empty() -> ApiBody {
    Full::new(Bytes::new()).boxed_unsync()
}

/// A JSON answer.
pub fn json(status: u16, value: &impl Serialize) -> Reply {
    bytes(status, "application/json", wire::to_json(value))
}

/// A JSON error: `{"error": message}`.
pub fn error(status: u16, message: impl Into<String>) -> Reply {
    json(status, &ErrorBody::new(message))
}

/// A streamed (chunked) answer of 200, and the end that feeds it: each
/// `send_data` is a chunk, dropping the sender ends the answer. A send fails
/// once the connection is gone.
pub fn stream(content_type: &'static str) -> (http_body_util::channel::Sender<Bytes>, Reply) {
    let (tx, body) = Channel::<Bytes, Infallible>::new(16);
    let reply = hyper::Response::builder()
        .header(CONTENT_TYPE, content_type)
        .body(body.boxed_unsync())
        .unwrap_or_default();
    (tx, reply)
}

/// What a client is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head; at least 8 KiB (hyper's least buffer).
    pub head: usize,
    /// Largest request body.
    pub body: usize,
    /// Time to send the head, and again the body.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head: MAX_HEAD,
            body: MAX_BODY,
            timeout: REQUEST_TIMEOUT,
        }
    }
}

impl Limits {
    fn timed_out(&self) -> ErrorBody {
        ErrorBody::new(format!(
            "request not received within {}",
            crate::jobspec::duration::format_duration(self.timeout)
        ))
    }
}

/// Serve the API until the listener fails, with the default [`Limits`].
pub async fn serve(agent: Agent, listener: UnixListener) {
    serve_with(agent, listener, Limits::default()).await;
}

/// Serve the API until the listener fails. Each connection is its own task.
pub async fn serve_with(agent: Agent, listener: UnixListener, limits: Limits) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "api: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only root and the agent's own user may ask; the socket is 0600 too.
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == 0 || c.uid() == me);
        tokio::spawn(connection(agent.clone(), stream, allowed, limits));
    }
}

async fn connection(agent: Agent, stream: UnixStream, allowed: bool, limits: Limits) {
    let peer = Arc::new(Peer::of(&stream));
    let called = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(HoldBack {
        inner: stream,
        called: Arc::clone(&called),
    });
    let service = {
        let peer = Arc::clone(&peer);
        let called = Arc::clone(&called);
        hyper::service::service_fn(move |req| {
            called.store(true, Ordering::Release);
            let (agent, peer) = (agent.clone(), Arc::clone(&peer));
            async move { Ok::<_, Infallible>(answer(agent, req, peer, allowed, limits).await) }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_buf_size(limits.head)
        .keep_alive(false)
        // A client may shut its write side after the request: it still reads.
        .half_close(true)
        .serve_connection(io, service)
        // An exec takes the connection over (see `exec`).
        .with_upgrades()
        .await;
    if let Err(e) = served {
        if !called.load(Ordering::Acquire) {
            let (status, body) = if e.is_parse_too_large() {
                let head = limits.head;
                (
                    431,
                    ErrorBody::new(format!("request head over {head} bytes")),
                )
            } else if e.is_timeout() {
                (408, limits.timed_out())
            } else {
                (400, ErrorBody::new(format!("bad request: {e}")))
            };
            peer.answer(status, &body);
        }
    }
}

/// The answer to one request hyper has read the head of.
async fn answer(
    agent: Agent,
    req: hyper::Request<Incoming>,
    peer: Arc<Peer>,
    allowed: bool,
    limits: Limits,
) -> Reply {
    if !allowed {
        return error(403, "this socket serves root and the agent's user only");
    }
    if super::exec::is_exec_path(req.uri().path()) {
        return super::exec::answer(agent, req, limits).await;
    }
    match read(req, limits).await {
        Ok(req) => routes::handle(&agent, req, peer).await,
        Err(reply) => reply,
    }
}

/// Read a request's body within the limits.
pub(super) async fn read(req: hyper::Request<Incoming>, limits: Limits) -> Result<Request, Reply> {
    let (parts, body) = req.into_parts();
    if parts
        .headers
        .get(TRANSFER_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(error(411, "a request body needs Content-Length"));
    }
    let too_large = || {
        let max = limits.body;
        let mib = max / (1024 * 1024);
        let message = format!("request body over the API's limit of {mib} MiB ({max} bytes)");
        error(413, message)
    };
    let announced = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.body as u64) {
        // Read what was sent (up to a bound) before answering: a client still
        // writing its body would otherwise see a broken pipe, not the answer.
        let _ = tokio::time::timeout(limits.timeout, drain(body, 16 * limits.body)).await;
        return Err(too_large());
    }
    let collect = Limited::new(body, limits.body).collect();
    let body = match tokio::time::timeout(limits.timeout, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => return Err(error(400, format!("bad request: {e}"))),
        Err(_) => return Err(json(408, &limits.timed_out())),
    };
    let path = wire::percent_decode(parts.uri.path());
    if !path.starts_with('/') {
        return Err(error(400, format!("target {:?} is not a path", parts.uri)));
    }
    Ok(Request {
        method: parts.method,
        path,
        query: parts.uri.query().map(wire::parse_query).unwrap_or_default(),
        body,
    })
}

/// Read and drop up to `max` bytes of a body.
async fn drain(mut body: Incoming, max: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, Bytes::len);
        if seen > max {
            return;
        }
    }
}

/// The connection as hyper sees it, with hyper's own answers held back: to a
/// request it cannot read, hyper answers with a bare status and no body, and
/// the API's answer (JSON that says why) is written in its place once hyper
/// gives up. Once a request reaches the routes, everything passes.
pub(super) struct HoldBack {
    inner: UnixStream,
    called: Arc<AtomicBool>,
}

impl HoldBack {
    /// The connection itself (an upgraded one, for an exec).
    pub(super) fn into_inner(self) -> UnixStream {
        self.inner
    }

    fn passing(&self) -> bool {
        self.called.load(Ordering::Acquire)
    }
}

impl AsyncRead for HoldBack {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HoldBack {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.passing() {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.passing() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.passing() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::AgentConfig;
    use crate::agent::Settings;
    use crate::api::client::ApiClient;
    use crate::api::wire::Health;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent serving its API on a temp dir: the dir, the agent, and its run dir.
    async fn served() -> (tempfile::TempDir, Agent, std::path::PathBuf) {
        served_with(Limits::default()).await
    }

    async fn served_with(limits: Limits) -> (tempfile::TempDir, Agent, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let settings = Settings::resolve(
            AgentConfig::default(),
            Some(d.path().join("data")),
            Some(run.clone()),
            None,
        )
        .unwrap();
        let agent = Agent::new(settings).unwrap();
        let listener = super::super::bind(&super::super::socket_path(&run))
            .await
            .unwrap();
        tokio::spawn(serve_with(agent.clone(), listener, limits));
        (d, agent, run)
    }

    /// Send `raw`, shut the write side, read the whole answer: its status and
    /// its body as JSON.
    async fn raw(run: &std::path::Path, raw: &[u8]) -> (u16, serde_json::Value) {
        let mut s = UnixStream::connect(super::super::socket_path(run))
            .await
            .unwrap();
        // A server that refuses a request before its end answers and closes:
        // the write may break, the answer is there to read.
        if s.write_all(raw).await.is_ok() {
            s.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out).await;
        assert!(!out.is_empty(), "no answer: {read:?}");
        let text = String::from_utf8_lossy(&out);
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(body).unwrap_or_default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn typed_answers_reach_the_client() {
        let (_d, _agent, run) = served().await;
        let client = ApiClient::new(&run);
        let h: Health = client
            .call_as("GET", "/v1/health", b"", "application/json")
            .await
            .unwrap();
        assert!(h.ok);
        assert_eq!(h.run_dir, run);
        let e = client.get("/v1/no%20route?x=a%20b").await.unwrap_err();
        assert_eq!(e.to_string(), "no route GET /v1/no route");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_malformed_requests_with_the_right_status_and_a_json_error() {
        let (_d, _agent, run) = served().await;
        for (request, status) in [
            (b"GARBAGE\r\n\r\n".to_vec(), 400),
            (b"\x00\x01\x02 nonsense\n\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(), 400),
            (
                b"POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                411,
            ),
            (
                format!(
                    "POST /v1/jobs HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                    MAX_BODY + 1
                )
                .into_bytes(),
                413,
            ),
            (
                [
                    &b"GET / HTTP/1.1\r\nX: "[..],
                    &vec![b'a'; MAX_HEAD + 10],
                    b"\r\n\r\n",
                ]
                .concat(),
                431,
            ),
        ] {
            let (got, body) = raw(&run, &request).await;
            let shown = String::from_utf8_lossy(&request[..request.len().min(40)]).into_owned();
            assert_eq!(got, status, "{shown}: {body}");
            assert!(body["error"].is_string(), "{shown}: {body}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_client_gets_408_for_its_head_and_for_its_body() {
        let timeout = Duration::from_millis(300);
        let (_d, _agent, run) = served_with(Limits {
            timeout,
            ..Limits::default()
        })
        .await;
        for part in [
            &b""[..],
            b"GET /v1/hea",
            b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            // Before the connect: the server's clock starts at its accept.
            let t0 = std::time::Instant::now();
            let mut s = UnixStream::connect(super::super::socket_path(&run))
                .await
                .unwrap();
            s.write_all(part).await.unwrap();
            // The connection stays open, the request unfinished.
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            assert!(text.contains("request not received within 300ms"), "{text}");
            assert!(t0.elapsed() >= timeout, "{:?}", t0.elapsed());
        }
    }
}

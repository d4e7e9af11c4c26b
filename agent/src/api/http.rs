//! A small HTTP/1.1 for the agent's Unix socket: one request per connection
//! (`Connection: close`), bodies by Content-Length, responses whole or chunked
//! (for `follow` streams). Local and tiny on purpose: every limit is explicit,
//! and a malformed request closes its own connection, never the agent.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, POST, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a request could not be read; each maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Malformed request.
    #[error("bad request: {0}")]
    Bad(String),
    /// Head over [`MAX_HEAD`].
    #[error("request head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Body over [`MAX_BODY`].
    #[error("request body over the API's limit of 4 MiB ({MAX_BODY} bytes)")]
    BodyTooLarge,
    /// Chunked request bodies are not accepted.
    #[error("a request body needs Content-Length")]
    LengthRequired,
    /// The client was too slow.
    #[error("request not received within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Bad(_) | HttpError::Io(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::LengthRequired => 411,
            HttpError::Timeout => 408,
        }
    }
}

/// Read one request, within [`REQUEST_TIMEOUT`].
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(r: R) -> Result<Request, HttpError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, read_request_inner(r)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout),
    }
}

async fn read_request_inner<R: tokio::io::AsyncRead + Unpin>(r: R) -> Result<Request, HttpError> {
    let mut reader = BufReader::new(r);
    let mut head_len = 0usize;
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take((MAX_HEAD - head_len + 1) as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(HttpError::Bad(
                "connection closed before the request ended".into(),
            ));
        }
        head_len += n;
        if head_len > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        if !line.ends_with(b"\n") {
            return Err(HttpError::Bad("unterminated header line".into()));
        }
        let text = String::from_utf8(line)
            .map_err(|_| HttpError::Bad("request head is not UTF-8".into()))?;
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // tolerate a stray CRLF before the request line
            }
            break;
        }
        lines.push(text);
    }
    let mut it = lines.into_iter();
    let request_line = it.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => {
            return Err(HttpError::Bad(format!(
                "malformed request line {request_line:?}"
            )))
        }
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Bad(format!("unsupported version {version:?}")));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Bad(format!("malformed method {method:?}")));
    }
    let mut headers = BTreeMap::new();
    for h in it {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| HttpError::Bad(format!("malformed header {h:?}")))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(HttpError::LengthRequired);
    }
    let len = match headers.get("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| HttpError::Bad(format!("bad Content-Length {v:?}")))?,
    };
    if len > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|_| HttpError::Bad("body shorter than Content-Length".into()))?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, parse_query(q)),
        None => (target, BTreeMap::new()),
    };
    if !path.starts_with('/') {
        return Err(HttpError::Bad(format!("target {target:?} is not a path")));
    }
    Ok(Request {
        method: method.to_string(),
        path: percent_decode(path),
        query,
        headers,
        body,
    })
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Decode `%XX` and `+` (as space in queries); invalid escapes stay as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A JSON error: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Write a whole response and close.
pub async fn write_response<W: AsyncWrite + Unpin>(w: &mut W, r: &Response) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(&r.body).await?;
    w.flush().await
}

/// Start a chunked (streaming) response.
pub async fn write_stream_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    content_type: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        reason(status)
    );
    w.write_all(head.as_bytes()).await?;
    w.flush().await
}

/// Write one chunk of a streaming response (empty data is skipped).
pub async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    w.write_all(data).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

/// End a streaming response.
pub async fn write_last_chunk<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await
}

/// A response as the client sees it.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
}

/// Client side: send a request on `stream` and read the response head; the body
/// is then read with [`BodyReader`].
pub async fn client_request<S>(
    stream: S,
    method: &str,
    target: &str,
    body: &[u8],
    content_type: &str,
) -> Result<(ClientResponse, BodyReader<S>), HttpError>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: tend\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sent = async {
        reader.get_mut().write_all(head.as_bytes()).await?;
        reader.get_mut().write_all(body).await?;
        reader.get_mut().flush().await
    }
    .await;
    // A server that refuses a request before its end (a body over its limit)
    // answers and closes: the write breaks, and the answer says why.
    let unsent = match sent {
        Ok(()) => None,
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Some(e),
        Err(e) => return Err(e.into()),
    };
    let mut status_line = String::new();
    match (reader.read_line(&mut status_line).await, unsent) {
        (Ok(n), _) if n > 0 => {}
        (_, Some(unsent)) => return Err(unsent.into()),
        (Ok(_), None) => {}
        (Err(e), None) => return Err(e.into()),
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Bad(format!("bad status line {status_line:?}")))?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let remaining = headers.get("content-length").and_then(|v| v.parse().ok());
    Ok((
        ClientResponse { status, headers },
        BodyReader {
            reader,
            chunked,
            remaining,
            done: false,
        },
    ))
}

/// Reads a response body, whole or chunk by chunk.
#[derive(Debug)]
pub struct BodyReader<S> {
    reader: BufReader<S>,
    chunked: bool,
    remaining: Option<usize>,
    done: bool,
}

impl<S: tokio::io::AsyncRead + Unpin> BodyReader<S> {
    /// The next piece of the body; None at its end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line).await? == 0 {
                self.done = true;
                return Ok(None);
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| HttpError::Bad(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            let mut data = vec![0u8; size];
            self.reader.read_exact(&mut data).await?;
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).await?;
            return Ok(Some(data));
        }
        let mut data = Vec::new();
        match self.remaining {
            Some(n) => {
                data.resize(n, 0);
                self.reader.read_exact(&mut data).await?;
            }
            None => {
                self.reader.read_to_end(&mut data).await?;
            }
        }
        self.done = true;
        Ok(Some(data))
    }

    /// The whole body.
    pub async fn read_all(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut all = Vec::new();
        while let Some(part) = self.next().await? {
            all.extend_from_slice(&part);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(raw).await
    }

    #[tokio::test]
    async fn parses_a_request_with_query_and_body() {
        let r = parse(b"POST /v1/jobs?follow=true&x=a%20b HTTP/1.1\r\nContent-Length: 3\r\nHost: t\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/jobs");
        assert_eq!(r.query["follow"], "true");
        assert_eq!(r.query["x"], "a b");
        assert_eq!(r.body, b"abc");
    }

    #[tokio::test]
    async fn refuses_malformed_requests_with_the_right_status() {
        assert_eq!(parse(b"GARBAGE\r\n\r\n").await.unwrap_err().status(), 400);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .await
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .unwrap_err()
                .status(),
            411
        );
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(parse(big.as_bytes()).await.unwrap_err().status(), 413);
        let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(parse(&huge).await.unwrap_err().status(), 431);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost").await.unwrap_err().status(),
            400
        );
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[tokio::test]
    async fn client_reads_chunked_and_whole_bodies() {
        let (a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let req = read_request(&mut b).await.unwrap();
            assert_eq!(req.path, "/s");
            write_stream_head(&mut b, 200, "text/plain").await.unwrap();
            write_chunk(&mut b, b"hello ").await.unwrap();
            write_chunk(&mut b, b"world").await.unwrap();
            write_last_chunk(&mut b).await.unwrap();
        });
        let (resp, mut body) = client_request(a, "GET", "/s", b"", "text/plain")
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(body.read_all().await.unwrap(), b"hello world");
        server.await.unwrap();
    }
}

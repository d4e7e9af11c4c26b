//! A client of the agent's API socket (hyper, one connection per request): the
//! CLI's, and the tests'.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::UnixStream;

use super::wire::ErrorBody;

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No agent answers.
    #[error("no agent answers on {path}: {source}")]
    NoAgent {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("agent at {path}: {reason}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The agent said no.
    #[error("{message}")]
    Refused {
        /// The status.
        status: u16,
        /// Its message (and diagnostics, one per line).
        message: String,
        /// The whole answer.
        body: Value,
    },
}

/// An answer whose body is still to be read.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: hyper::HeaderMap,
    body: Incoming,
}

impl From<hyper::Response<Incoming>> for Answer {
    fn from(resp: hyper::Response<Incoming>) -> Answer {
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

impl Answer {
    /// The next piece of the body; None at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, hyper::Error> {
        Ok(self.body.collect().await?.to_bytes())
    }
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct ApiClient {
    path: PathBuf,
}

impl ApiClient {
    /// The agent whose run dir is `run_dir`.
    pub fn new(run_dir: &Path) -> ApiClient {
        ApiClient {
            path: super::socket_path(run_dir),
        }
    }

    /// The API socket this client asks.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Whether an agent answers.
    pub async fn alive(&self) -> bool {
        self.get("/v1/health").await.is_ok()
    }

    fn exchange_error(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::Exchange {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Send one request and read the answer's head, whatever its status.
    pub async fn send(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<Answer, ApiError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|source| ApiError::NoAgent {
                path: self.path.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.exchange_error(e))?;
        // The connection is driven apart from the request, until the body is read.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api client: connection ended");
            }
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, "tend")
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| self.exchange_error(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))?;
        Ok(resp.into())
    }

    /// A request answered by JSON; a status of 400 and above is an error.
    pub async fn call(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<Value, ApiError> {
        self.call_as(method, target, body, content_type).await
    }

    /// [`ApiClient::call`], the answer read as `T`.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<T, ApiError> {
        let answer = self.send(method, target, body, content_type).await?;
        let status = answer.status;
        let bytes = answer.bytes().await.map_err(|e| self.exchange_error(e))?;
        if status >= 400 {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            self.exchange_error(format!("answer is not JSON of the expected shape: {e}"))
        })
    }

    /// GET a JSON resource.
    pub async fn get(&self, target: &str) -> Result<Value, ApiError> {
        self.call("GET", target, b"", "application/json").await
    }

    /// A streaming GET: the body is handed over piece by piece.
    pub async fn stream(&self, target: &str) -> Result<Answer, ApiError> {
        let answer = self.send("GET", target, b"", "application/json").await?;
        if answer.status >= 400 {
            let status = answer.status;
            let bytes = answer.bytes().await.unwrap_or_default();
            return Err(refused(status, &bytes));
        }
        Ok(answer)
    }
}

/// The error of a refused request, from its answer.
fn refused(status: u16, bytes: &[u8]) -> ApiError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let message = serde_json::from_value::<ErrorBody>(body.clone())
        .map_or_else(|_| "error".to_string(), |e| e.message().to_string());
    ApiError::Refused {
        status,
        message,
        body,
    }
}

//! The CLI's client of the agent's API socket.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::net::UnixStream;

use crate::api::http::{self, BodyReader};

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

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct ApiClient {
    path: PathBuf,
}

impl ApiClient {
    /// The agent whose run dir is `run_dir`.
    pub fn new(run_dir: &Path) -> ApiClient {
        ApiClient {
            path: crate::api::socket_path(run_dir),
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

    async fn open(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<(u16, BodyReader<UnixStream>), ApiError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|source| ApiError::NoAgent {
                path: self.path.clone(),
                source,
            })?;
        let (resp, reader) = http::client_request(stream, method, target, body, content_type)
            .await
            .map_err(|e| ApiError::Exchange {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok((resp.status, reader))
    }

    /// A request answered by JSON; a status of 400 and above is an error.
    pub async fn call(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<Value, ApiError> {
        let (status, mut reader) = self.open(method, target, body, content_type).await?;
        let bytes = reader.read_all().await.map_err(|e| ApiError::Exchange {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::Exchange {
            path: self.path.clone(),
            reason: format!("answer is not JSON: {e}"),
        })?;
        if status >= 400 {
            let message = v
                .get("text")
                .and_then(Value::as_str)
                .or_else(|| v.get("error").and_then(Value::as_str))
                .unwrap_or("error")
                .to_string();
            return Err(ApiError::Refused {
                status,
                message,
                body: v,
            });
        }
        Ok(v)
    }

    /// GET a JSON resource.
    pub async fn get(&self, target: &str) -> Result<Value, ApiError> {
        self.call("GET", target, b"", "application/json").await
    }

    /// A streaming GET: the body is handed over piece by piece.
    pub async fn stream(&self, target: &str) -> Result<BodyReader<UnixStream>, ApiError> {
        let (status, mut reader) = self.open("GET", target, b"", "application/json").await?;
        if status >= 400 {
            let bytes = reader.read_all().await.unwrap_or_default();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ApiError::Refused {
                status,
                message: v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
                body: v,
            });
        }
        Ok(reader)
    }
}

/// Percent-encode a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Print rows as aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["ID".into(), "STATUS".into()],
            vec!["abc".into(), "running".into()],
        ]);
        assert_eq!(t, "ID   STATUS\nabc  running\n");
    }

    #[test]
    fn encoding_keeps_safe_bytes() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}

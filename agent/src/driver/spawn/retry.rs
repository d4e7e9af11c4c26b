//! Reaching a tend-spawn that may be slow, busy or briefly away: every
//! attempt has a deadline of its own, failures are retried with backoff, and
//! a supervisor whose process lives is never given up on because one
//! connection failed (that is how a task gets killed for nothing).

use std::path::Path;
use std::time::{Duration, Instant};

use tend_proto::{Request, Token};

use super::{Client, ClientError};
use crate::ident::ProcId;

/// The first pause between attempts; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long one attempt (connect, Hello, Welcome, one request) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff between attempts: 50 ms doubling to 5 s.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: RETRY_FIRST }
    }
}

impl Backoff {
    /// The pause before the next attempt.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        d
    }
}

/// Connect and say Hello, within [`ATTEMPT_TIMEOUT`].
pub async fn connect_once(socket: &Path, token: Token) -> Result<Client, AttemptError> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, Client::connect(socket, token)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(AttemptError::Client(e)),
        Err(_) => Err(AttemptError::timeout(socket)),
    }
}

/// One request on a fresh connection, within [`ATTEMPT_TIMEOUT`].
pub async fn request_once(socket: &Path, token: Token, req: Request) -> Result<(), RetryError> {
    let attempt = async {
        let mut c = Client::connect(socket, token).await?;
        c.command(req).await
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        // The daemon said no: asking again gets the same answer.
        Ok(Err(ClientError::Refused { message, .. })) => Err(RetryError::Refused(message)),
        Ok(Err(e)) => Err(RetryError::Unanswered(AttemptError::Client(e))),
        Err(_) => Err(RetryError::Unanswered(AttemptError::timeout(socket))),
    }
}

/// Why one attempt to reach a tend-spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The connection or the exchange failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No answer within [`ATTEMPT_TIMEOUT`].
    #[error("tend-spawn at {} did not answer within {secs} s", .socket.display())]
    Timeout {
        /// Its socket.
        socket: std::path::PathBuf,
        /// How long it had, seconds.
        secs: u64,
    },
}

impl AttemptError {
    fn timeout(socket: &Path) -> AttemptError {
        AttemptError::Timeout {
            socket: socket.to_path_buf(),
            secs: ATTEMPT_TIMEOUT.as_secs(),
        }
    }
}

/// Why a request with retries did not get through.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The daemon answered with a refusal (its own line); retrying would not
    /// change it.
    #[error("tend-spawn refused: {0}")]
    Refused(String),
    /// The daemon's process is gone; the last attempt's error.
    #[error("tend-spawn is gone: {0}")]
    Gone(#[source] AttemptError),
    /// It lives but did not take the request before the deadline; the last
    /// attempt's error.
    #[error("tend-spawn did not take the request: {0}")]
    Unanswered(#[source] AttemptError),
}

/// Send `req` on fresh connections until one takes it, `until` passes, or
/// `daemon` (when known) is seen dead. A refusal is final.
pub async fn request_until(
    socket: &Path,
    token: Token,
    req: Request,
    daemon: Option<ProcId>,
    until: Instant,
) -> Result<(), RetryError> {
    let mut backoff = Backoff::default();
    loop {
        let why = match request_once(socket, token, req.clone()).await {
            Ok(()) => return Ok(()),
            Err(RetryError::Unanswered(why) | RetryError::Gone(why)) => why,
            Err(refused) => return Err(refused),
        };
        if daemon.is_some_and(|d| !d.alive()) {
            return Err(RetryError::Gone(why));
        }
        let pause = backoff.step();
        if Instant::now() + pause > until {
            return Err(RetryError::Unanswered(why));
        }
        tracing::debug!(error = %why, "request failed; trying again");
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::default();
        let steps: Vec<Duration> = (0..10).map(|_| b.step()).collect();
        assert_eq!(steps[0], Duration::from_millis(50));
        assert_eq!(steps[1], Duration::from_millis(100));
        assert_eq!(steps[6], Duration::from_millis(3200));
        assert_eq!(steps[7], RETRY_MAX);
        assert_eq!(steps[9], RETRY_MAX);
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_retried_until_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("none.sock");
        let t0 = Instant::now();
        let r = request_until(
            &sock,
            Token([0; 32]),
            Request::Status,
            None,
            t0 + Duration::from_millis(400),
        )
        .await;
        assert!(matches!(r, Err(RetryError::Unanswered(_))), "{r:?}");
        // Several attempts were made (50 + 100 + 200 ms of pauses fit).
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn a_dead_daemon_is_not_retried() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("none.sock");
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let id = ProcId::of(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let t0 = Instant::now();
        let r = request_until(
            &sock,
            Token([0; 32]),
            Request::Status,
            Some(id),
            t0 + Duration::from_secs(30),
        )
        .await;
        assert!(matches!(r, Err(RetryError::Gone(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}

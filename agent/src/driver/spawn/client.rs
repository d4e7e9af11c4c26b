//! A client of one tend-spawn's socket.

use std::path::{Path, PathBuf};

use tend_proto::frame::{self, FrameDecoder, FrameError};
use tend_proto::msg::{ExecRequest, Welcome};
use tend_proto::{ExitStatus, Hello, Request, Response, Token, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Why talking to a tend-spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("connect {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("tend-spawn at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon closed the connection.
    #[error("tend-spawn at {path} closed the connection")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// A frame could not be decoded.
    #[error("tend-spawn at {path}: {source}")]
    Frame {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: FrameError,
    },
    /// The daemon refused.
    #[error("tend-spawn at {path} refused: {message}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Its message.
        message: String,
    },
    /// The daemon answered something else than expected.
    #[error("tend-spawn at {path}: unexpected answer {got}")]
    Unexpected {
        /// The socket.
        path: PathBuf,
        /// What came.
        got: String,
    },
}

/// One welcomed connection.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    decoder: FrameDecoder,
    welcome: Welcome,
}

impl Client {
    /// Connect and present the token.
    pub async fn connect(path: &Path, token: Token) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let mut c = Client {
            path: path.to_path_buf(),
            stream,
            decoder: FrameDecoder::new(),
            welcome: Welcome {
                version: 0,
                instance: tend_proto::Instance([0; 16]),
                daemon_pid: 0,
                task_pid: 0,
            },
        };
        c.send(&Hello {
            version: PROTOCOL_VERSION,
            token,
        })
        .await?;
        match c.next().await? {
            Response::Welcome(w) => {
                c.welcome = w;
                Ok(c)
            }
            other => Err(c.unexpected(other)),
        }
    }

    /// The first connection, handed over at the start: the stream the
    /// config went out on, welcomed by the start report with `welcome`
    /// (`path` names the daemon in errors).
    pub fn handed(path: &Path, stream: UnixStream, welcome: Welcome) -> Client {
        Client {
            path: path.to_path_buf(),
            stream,
            decoder: FrameDecoder::new(),
            welcome,
        }
    }

    /// The daemon's welcome: its instance id and pids.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    async fn send<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), ClientError> {
        let bytes = frame::encode(msg).map_err(|source| ClientError::Frame {
            path: self.path.clone(),
            source,
        })?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Read the next frame the daemon sends. An `Error` becomes [`ClientError::Refused`].
    pub async fn next(&mut self) -> Result<Response, ClientError> {
        loop {
            let frame = self
                .decoder
                .next_frame()
                .map_err(|source| ClientError::Frame {
                    path: self.path.clone(),
                    source,
                })?;
            if let Some(f) = frame {
                let r: Response = f.decode().map_err(|source| ClientError::Frame {
                    path: self.path.clone(),
                    source,
                })?;
                if let Response::Error(message) = r {
                    return Err(ClientError::Refused {
                        path: self.path.clone(),
                        message,
                    });
                }
                return Ok(r);
            }
            self.fill().await?;
        }
    }

    /// Read what the daemon has sent into the decoder. The buffer lives
    /// only between readiness and the read, never across the wait: a task
    /// waits on its run in this call for the run's whole life.
    async fn fill(&mut self) -> Result<(), ClientError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ClientError::Io { path, source }
        };
        loop {
            self.stream.readable().await.map_err(io(&self.path))?;
            let mut buf = [0u8; 4096];
            match self.stream.try_read(&mut buf) {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io(&self.path)(e)),
            }
        }
    }

    /// Send a request and read its answer.
    pub async fn request(&mut self, req: Request) -> Result<Response, ClientError> {
        self.send(&req).await?;
        self.next().await
    }

    /// Release the daemon and close the connection without waiting for its
    /// answer: once the frame is written it is in the daemon's receive queue,
    /// which outlives this end, so the daemon takes it even if the agent dies
    /// the next moment (and its answer, to a closed socket, goes nowhere).
    pub async fn release_and_close(mut self) -> Result<(), ClientError> {
        self.send(&Request::Release).await?;
        self.stream.flush().await.map_err(|source| ClientError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Send a request that is answered by `Ok`.
    pub async fn command(&mut self, req: Request) -> Result<(), ClientError> {
        match self.request(req).await? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// Ask for the exit and wait for it: it comes the moment the task ends.
    pub async fn wait(&mut self) -> Result<ExitStatus, ClientError> {
        self.command(Request::Wait).await?;
        self.next()
            .await?
            .into_exit()
            .map_err(|other| self.unexpected(*other))
    }

    /// Ask for an exec of `req` on `stdio` (stdin, stdout, stderr), which go
    /// with the request's frame as SCM_RIGHTS: the daemon's copies are the
    /// command's own, so no byte of its I/O passes through here. Returns
    /// once it runs; [`Client::exec_exit`] then waits for its end.
    pub async fn exec(
        &mut self,
        req: ExecRequest,
        stdio: [std::os::fd::RawFd; 3],
    ) -> Result<(), ClientError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ClientError::Io { path, source }
        };
        let bytes = frame::encode(&Request::Exec(req)).map_err(|source| ClientError::Frame {
            path: self.path.clone(),
            source,
        })?;
        let sock = self.stream.as_raw_fd();
        // The fds ride on the frame's first bytes; the rest follows plainly.
        let n = self
            .stream
            .async_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(&bytes)];
                let rights = [ControlMessage::ScmRights(&stdio)];
                sendmsg::<()>(sock, &iov, &rights, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            })
            .await
            .map_err(io(&self.path))?;
        self.stream
            .write_all(&bytes[n..])
            .await
            .map_err(io(&self.path))?;
        match self.next().await? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// Wait for the end of the exec this connection started: its exit code.
    pub async fn exec_exit(&mut self) -> Result<i32, ClientError> {
        match self.next().await? {
            Response::ExecExited(code) => Ok(code),
            other => Err(self.unexpected(other)),
        }
    }

    fn unexpected(&self, got: Response) -> ClientError {
        let mut s = format!("{got:?}");
        s.truncate(200);
        ClientError::Unexpected {
            path: self.path.clone(),
            got: s,
        }
    }
}

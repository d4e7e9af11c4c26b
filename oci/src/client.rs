//! A blocking client of a tend-spawn control socket.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use tend_proto::frame::{read_frame, write_frame};
use tend_proto::msg::Welcome;
use tend_proto::{FrameError, Hello, Request, Response, Token, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// What went wrong talking to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (the daemon has left).
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A frame could not be sent or read.
    #[error("talking to {path}: {source}")]
    Frame {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: FrameError,
    },
    /// The daemon said no.
    #[error("{path}: {message}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Its answer.
        message: String,
    },
}

/// One welcomed connection.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    /// The daemon's greeting (its pid and the task's).
    pub welcome: Welcome,
}

impl Client {
    /// Connect and present the token.
    pub fn connect(path: &Path, token: Token) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Client {
            path: path.to_path_buf(),
            stream,
            welcome: Welcome {
                version: 0,
                instance: tend_proto::Instance([0; 16]),
                daemon_pid: 0,
                task_pid: 0,
            },
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            token,
        };
        write_frame(&mut c.stream, &hello).map_err(|source| c.frame_err(source))?;
        match c.receive()? {
            Response::Welcome(w) => {
                c.welcome = w;
                Ok(c)
            }
            other => Err(c.refused(&other)),
        }
    }

    fn frame_err(&self, source: FrameError) -> ClientError {
        ClientError::Frame {
            path: self.path.clone(),
            source,
        }
    }

    fn refused(&self, r: &Response) -> ClientError {
        ClientError::Refused {
            path: self.path.clone(),
            message: match r {
                Response::Error(m) => m.clone(),
                other => format!("unexpected answer {other:?}"),
            },
        }
    }

    /// The socket, to poll on.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Send one request.
    pub fn send(&mut self, r: Request) -> Result<(), ClientError> {
        write_frame(&mut self.stream, &r).map_err(|source| self.frame_err(source))
    }

    /// Read the next response or pushed event.
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let frame =
            read_frame(&mut self.stream, MAX_FRAME_LEN).map_err(|source| self.frame_err(source))?;
        frame.decode().map_err(|source| self.frame_err(source))
    }

    /// Send a request and read its answer; an `Error` answer is the error.
    pub fn ask(&mut self, r: Request) -> Result<Response, ClientError> {
        self.send(r)?;
        match self.receive()? {
            Response::Error(m) => Err(ClientError::Refused {
                path: self.path.clone(),
                message: m,
            }),
            other => Ok(other),
        }
    }
}

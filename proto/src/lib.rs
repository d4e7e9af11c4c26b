//! tend-proto: everything that crosses a process boundary in tend, and nothing else.
//!
//! - [`config::SpawnConfig`]: what `tend-spawn` needs to run one task; it travels as
//!   one frame on the daemon's stdin, never on argv or in the environment.
//! - [`msg`]: the start report, the `Hello` that opens every connection (but
//!   the first one, handed over at spawn), requests, responses and events of
//!   the daemon socket.
//! - [`frame`]: the fixed frame header (magic, version, length) and the codec.
//! - [`exit`]: the exit status file, a format for programs and for people.
//! - [`atomic`]: the one helper that every persisted file goes through.
//!
//! The wire only grows: enums gain variants at the end, payloads are frozen, and a
//! change is a new variant. Golden fixtures under `proto/tests/` pin every message.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod config;
pub mod exit;
pub mod frame;
pub mod msg;
pub mod names;
pub mod time;

pub use config::SpawnConfig;
pub use exit::{ExitStatus, ExitStatusV1};
pub use frame::{Frame, FrameDecoder, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use msg::{Hello, Instance, Request, Response, Stage, StartReport, Token};

//! The agent's HTTP/JSON API on its Unix socket.

pub mod http;

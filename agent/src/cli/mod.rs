//! The CLI verbs as library functions; `main.rs` parses arguments and calls
//! these. One file per verb.

pub mod job_init;
pub mod validate;

//! Job files: HCL shaped like Nomad's jobspec (or the same document as JSON),
//! parsed and validated into a [`model::Job`], with every error located.
//!
//! # The JSON form
//!
//! A document whose first non-blank character is `{` is read as JSON in
//! HCL's own JSON syntax, which is what Nomad's HCL2 parser accepts for a
//! job file written as JSON: blocks are objects keyed by block type and then
//! by label, attributes are plain members, a repeated block is an array.
//!
//! ```json
//! { "job": { "hello": {
//!     "group": { "g": {
//!       "task": { "greet": {
//!         "driver": "raw_exec",
//!         "config": { "command": "/bin/echo", "args": ["hi"] },
//!         "env": { "GREETING": "hi" },
//!         "resources": { "memory": 64, "network": { "port": { "http": {} } } }
//!       } }
//!     } }
//! } } }
//! ```
//!
//! It is the HCL document one to one, so both forms give the same [`Job`]
//! and the same error messages. (Nomad's API JSON, `{"Job": {"TaskGroups":
//! ...}}`, is a different, server-side shape and is not accepted.)
//!
//! # Interpolation
//!
//! `${NAME}` in strings is not evaluated here: it is kept as written for the
//! task environment ([`crate::taskenv`]) to fill in at start. In HCL, `$${`
//! writes a literal `${`; function calls and `%{}` directives are refused.

pub mod capability;
mod decode;
mod diag;
pub mod duration;
mod json;
pub mod model;
pub mod signal;
mod tree;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics};
pub use model::*;

use diag::Collector;

/// Reads and validates a job file. The file name in errors is `path` as given.
pub fn parse_file(path: &Path) -> Result<Job, Diagnostics> {
    read_and_parse(path, false)
}

/// [`parse_file`], and what only this host can tell too: that the user of
/// each exec task exists here (`tend validate`).
pub fn parse_file_on_this_host(path: &Path) -> Result<Job, Diagnostics> {
    read_and_parse(path, true)
}

fn read_and_parse(path: &Path, on_this_host: bool) -> Result<Job, Diagnostics> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(src) => parse(&src, &name, on_this_host),
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let src = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
                let mut c = Collector::new(&name, &src);
                c.error(valid, "", "file is not valid UTF-8");
                Err(c.finish())
            }
        },
        Err(e) => {
            let mut c = Collector::new(&name, "");
            c.at_line_col(0, 0, "", format!("cannot read job file: {e}"));
            Err(c.finish())
        }
    }
}

/// Parses and validates a job from text: JSON when the first non-blank
/// character is `{`, HCL otherwise. `file_name` is used in the errors.
pub fn parse_str(src: &str, file_name: &str) -> Result<Job, Diagnostics> {
    parse(src, file_name, false)
}

fn parse(src: &str, file_name: &str, on_this_host: bool) -> Result<Job, Diagnostics> {
    let mut c = Collector::new(file_name, src);
    c.on_this_host = on_this_host;
    let tree = if src.trim_start().starts_with('{') {
        match json::parse(src) {
            Ok(v) => tree::from_json(v, tree::BodyKind::Root, "", &mut c),
            Err((at, msg)) => {
                c.error(at, "", format!("JSON syntax error: {msg}"));
                return Err(c.finish());
            }
        }
    } else {
        match hcl_edit::parser::parse_body(src) {
            Ok(body) => tree::from_hcl(&body, src, &mut c),
            Err(e) => {
                let loc = e.location();
                c.at_line_col(
                    loc.line(),
                    loc.column(),
                    "",
                    format!("HCL syntax error: {}", e.message()),
                );
                return Err(c.finish());
            }
        }
    };
    let job = decode::decode(&tree, &mut c);
    match job {
        Some(job) if c.errors.is_empty() => Ok(job),
        _ => Err(c.finish()),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_oci;

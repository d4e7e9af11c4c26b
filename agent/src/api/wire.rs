//! What goes over the API socket: the limits, and one typed struct per request
//! and answer body. The routes write them, the CLI and the tests read them.
//! Field names are the API's (`docs/api.md`): renaming one breaks clients.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jobspec::Diagnostics;
use crate::ports::AssignedPort;
use crate::state::{CheckStatus, Desired, TaskEvent, TaskPhase};
use tend_proto::ExitStatus;

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time a client has to send its request head, and again its body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every failed answer: `{"error": "..."}`, and for a job that does not parse,
/// each problem and the whole report as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// The job's problems, one per place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<DiagnosticView>>,
    /// The job's problems as the CLI prints them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl ErrorBody {
    /// An answer that only says what went wrong.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            diagnostics: None,
            text: None,
        }
    }

    /// The answer to a job that does not parse.
    pub fn job(d: &Diagnostics) -> ErrorBody {
        let items: Vec<DiagnosticView> = d
            .iter()
            .map(|e| DiagnosticView {
                file: e.file.clone(),
                line: e.line,
                column: e.column,
                path: e.path.clone(),
                message: e.message.clone(),
            })
            .collect();
        ErrorBody {
            error: format!("the job has {} error(s)", items.len()),
            diagnostics: Some(items),
            text: Some(d.to_string()),
        }
    }

    /// What a user reads: the whole report when there is one.
    pub fn message(&self) -> &str {
        self.text.as_deref().unwrap_or(&self.error)
    }
}

/// One problem of a submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticView {
    /// The file name the client gave (`?file=`).
    pub file: String,
    /// One-based line.
    pub line: usize,
    /// One-based column.
    pub column: usize,
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always true: an agent that answers is up.
    pub ok: bool,
    /// The agent's version.
    pub version: String,
    /// The agent-supervisor protocol it speaks.
    pub protocol_version: u16,
    /// How many allocations it holds.
    pub allocations: usize,
    /// How many of their tasks run.
    pub running_tasks: usize,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its run dir.
    pub run_dir: PathBuf,
}

/// `POST /v1/jobs` (201): the allocations the job made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// Their ids.
    pub allocations: Vec<String>,
}

/// The body of `POST /v1/adopt`: a container of tend-oci to take up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptBody {
    /// tend-oci's state root (`--root`, default `/run/tend-oci`).
    #[serde(default = "default_oci_root")]
    pub root: std::path::PathBuf,
    /// The container's id.
    pub id: String,
    /// The job it is shown under (default: the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

fn default_oci_root() -> std::path::PathBuf {
    std::path::PathBuf::from(tend_oci::DEFAULT_ROOT)
}

/// The answer to `POST /v1/adopt` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    /// The new allocation's id.
    pub id: String,
    /// The container's dir, where its logs and exit file stay.
    pub container_dir: std::path::PathBuf,
}

/// `POST /v1/allocations/{id}/stop` without `wait` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAccepted {
    /// The whole allocation id.
    pub id: String,
    /// Always `stop`.
    pub desired: String,
}

/// The body of `POST /v1/allocations/{id}/tasks/{task}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// A name (`SIGHUP`, `HUP`, `hup`) or a number.
    pub signal: SignalName,
}

/// A signal as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignalName {
    /// By number.
    Number(i64),
    /// By name.
    Name(String),
}

impl SignalName {
    /// The signal's number, if it is one.
    pub fn number(&self) -> Option<i32> {
        match self {
            SignalName::Name(s) => parse_signal(s),
            SignalName::Number(n) => i32::try_from(*n)
                .ok()
                .and_then(|n| parse_signal(&n.to_string())),
        }
    }
}

impl std::fmt::Display for SignalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalName::Number(n) => write!(f, "{n}"),
            SignalName::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// A signal by name ("SIGHUP", "HUP", "hup") or number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// The answer to a signal sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalSent {
    /// The whole allocation id.
    pub id: String,
    /// The task.
    pub task: String,
    /// The signal's number.
    pub signal: i32,
}

/// `GET /v1/allocations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocList {
    /// Every allocation, tasks without their events.
    pub allocations: Vec<AllocView>,
}

/// One allocation as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocView {
    /// Its id.
    pub id: String,
    /// Its job's name.
    pub job: String,
    /// Its group.
    pub group: String,
    /// Its index in the group.
    pub index: u32,
    /// `job.group[index]`.
    pub name: String,
    /// Run or stop.
    pub desired: Desired,
    /// running, pending, lost, failed or complete.
    pub status: String,
    /// When it was made.
    pub created_at: String,
    /// Its dir: the container's for an adopted one.
    pub dir: PathBuf,
    /// The id of the container it took up (`tend adopt`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
    /// Its ports by label.
    pub ports: BTreeMap<String, Vec<AssignedPort>>,
    /// Its tasks.
    pub tasks: Vec<TaskView>,
}

/// One task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Its name.
    pub name: String,
    /// Its driver.
    pub driver: String,
    /// Its phase.
    pub state: TaskPhase,
    /// Whether it ended failed.
    pub failed: bool,
    /// Whether it was lost.
    pub lost: bool,
    /// Whether a stop ended it.
    pub stopped: bool,
    /// Why its supervisor cannot be reached, while it cannot.
    pub unreachable: Option<String>,
    /// Its run number.
    pub run: u32,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The task's pid.
    pub pid: Option<i32>,
    /// Its supervisor's pid.
    pub daemon_pid: Option<i32>,
    /// Its container, for docker.
    pub container_id: Option<String>,
    /// When its run started.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// How its last run ended.
    pub exit: Option<ExitStatus>,
    /// Its recent events (one allocation only, not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<TaskEvent>>,
    /// Its health checks' last results (none when the job has no check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
}

/// `GET /v1/events?follow=false`: the events the allocations keep, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    /// The events.
    pub events: Vec<EventView>,
}

/// `POST /v1/gc`: the allocations removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// Their ids.
    pub collected: Vec<String>,
}

/// One kept event of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Its allocation.
    pub alloc_id: String,
    /// Its task.
    pub task: String,
    /// When.
    pub time: String,
    /// What kind.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// One line of a task's log with `stream=all`: a JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, its newline left out (bytes that are not UTF-8 become U+FFFD).
    pub line: String,
    /// When it was written (RFC 3339, UTC; exact to the log index's granularity).
    pub time: String,
}

/// A boolean query parameter that is neither true nor false.
#[derive(Debug, thiserror::Error)]
#[error("{name}: expected true or false, got {got:?}")]
pub struct FlagError {
    /// The parameter.
    pub name: String,
    /// What was given.
    pub got: String,
}

/// A boolean query parameter: `true`/`1`, `false`/`0`, else what was given.
pub fn flag(query: &BTreeMap<String, String>, name: &str) -> Result<Option<bool>, FlagError> {
    match query.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(FlagError {
            name: name.to_string(),
            got: other.to_string(),
        }),
    }
}

/// The JSON of a value: pretty, keys sorted (through [`Value`], as the API
/// has always written them), with a final newline.
pub fn to_json(value: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).unwrap_or_default();
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    body
}

/// The JSON of a value as one line of a stream, keys sorted.
pub fn to_json_line(value: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).unwrap_or_default();
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// A JSON value (for answers the API leaves open, such as stats).
pub type Json = Value;

/// The query of a request target, percent-decoded.
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
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
        let hex = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_is_true_false_absent_or_named_in_its_error() {
        let q: BTreeMap<String, String> = [("wait", "1"), ("follow", "no")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(flag(&q, "wait").unwrap(), Some(true));
        assert_eq!(flag(&q, "other").unwrap(), None);
        let e = flag(&q, "follow").unwrap_err();
        assert_eq!(e.got, "no");
        assert_eq!(e.to_string(), "follow: expected true or false, got \"no\"");
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a+b"), "a b");
    }

    #[test]
    fn queries_decode_and_encoding_keeps_safe_bytes() {
        let q = parse_query("follow=true&x=a%20b&bare");
        assert_eq!(q["follow"], "true");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bare"], "");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(percent_decode(&enc("a b/c%")), "a b/c%");
    }

    #[test]
    fn answers_are_written_with_their_keys_sorted() {
        let sent = SignalSent {
            task: "t".into(),
            id: "a".into(),
            signal: 1,
        };
        assert_eq!(
            String::from_utf8(to_json_line(&sent)).unwrap(),
            "{\"id\":\"a\",\"signal\":1,\"task\":\"t\"}\n"
        );
    }

    #[test]
    fn signals_by_name_or_number() {
        let hup =
            |json: &str| serde_json::from_str::<SignalRequest>(json).map(|r| r.signal.number());
        assert_eq!(hup(r#"{"signal": "SIGHUP"}"#).unwrap(), Some(1));
        assert_eq!(hup(r#"{"signal": "hup"}"#).unwrap(), Some(1));
        assert_eq!(hup(r#"{"signal": 1}"#).unwrap(), Some(1));
        assert_eq!(hup(r#"{"signal": "nope"}"#).unwrap(), None);
        assert_eq!(hup(r#"{"signal": 4096}"#).unwrap(), None);
        assert!(hup(r#"{"sig": 1}"#).is_err());
    }
}

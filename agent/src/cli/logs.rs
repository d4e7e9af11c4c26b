//! `tend logs [-f] [--stderr | --all] [-n N] [--since WHEN] [--json] ALLOC TASK`:
//! a task's log, from the agent.

use std::io::Write;

use super::client::{enc, ApiClient};
use crate::api::wire::LogLine;

/// What `tend logs` was asked for.
#[derive(Debug, Clone)]
pub struct LogsArgs<'a> {
    /// Allocation id or prefix.
    pub alloc: &'a str,
    /// Task name.
    pub task: &'a str,
    /// Keep following until the task ends.
    pub follow: bool,
    /// stderr instead of stdout.
    pub stderr: bool,
    /// Start this many bytes into what is kept.
    pub offset: u64,
    /// Only the last N lines (then new ones with `follow`).
    pub tail: Option<usize>,
    /// Only the lines written at or after this time (a duration back from now
    /// or an RFC 3339 UTC time; the agent reads it).
    pub since: Option<&'a str>,
    /// Both streams, in the order they were written.
    pub all: bool,
    /// One JSON object per line: `{"stream": "stdout", "line": "..."}`.
    pub json: bool,
}

/// Run `tend logs`.
pub async fn run(client: &ApiClient, a: &LogsArgs<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let stream = match (a.all, a.stderr) {
        (true, _) => "all",
        (false, true) => "stderr",
        (false, false) => "stdout",
    };
    let mut target = format!(
        "/v1/allocations/{}/tasks/{}/logs?stream={stream}&offset={}&follow={}",
        enc(a.alloc),
        enc(a.task),
        a.offset,
        a.follow
    );
    if let Some(n) = a.tail {
        target.push_str(&format!("&tail={n}"));
    }
    if let Some(s) = a.since {
        target.push_str(&format!("&since={}", enc(s)));
    }
    let mut body = client.stream(&target).await?;
    let mut pending = Vec::new();
    while let Some(part) = body.next().await? {
        if !a.json && !a.all {
            out.write_all(&part)?;
            out.flush()?;
            continue;
        }
        pending.extend_from_slice(&part);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            emit(a, stream, &line[..line.len() - 1], out)?;
        }
        out.flush()?;
    }
    if !pending.is_empty() {
        emit(a, stream, &pending, out)?;
    }
    Ok(0)
}

/// One line as asked: with `--all` the agent's JSON line (kept as JSON or
/// shown as `stream | line`), else a plain line as JSON.
fn emit(a: &LogsArgs<'_>, stream: &str, line: &[u8], out: &mut dyn Write) -> anyhow::Result<()> {
    if !a.all {
        return json_line(stream, line, out);
    }
    let l: LogLine = serde_json::from_slice(line)
        .map_err(|e| anyhow::anyhow!("the agent's log line is not JSON: {e}"))?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&l)?)?;
    } else {
        writeln!(out, "{} | {}", l.stream, l.line)?;
    }
    Ok(())
}

/// One line of the log as JSON (bytes that are not UTF-8 become U+FFFD).
fn json_line(stream: &str, line: &[u8], out: &mut dyn Write) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "stream": stream,
        "line": String::from_utf8_lossy(line),
    });
    writeln!(out, "{v}")?;
    Ok(())
}

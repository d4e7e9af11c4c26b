//! `tend logs [-f] [--stderr] [-n N] [--json] ALLOC TASK`: a task's log, from
//! the agent.

use std::io::Write;

use super::client::{enc, ApiClient};

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
    /// One JSON object per line: `{"stream": "stdout", "line": "..."}`.
    pub json: bool,
}

/// Run `tend logs`.
pub async fn run(client: &ApiClient, a: &LogsArgs<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let stream = if a.stderr { "stderr" } else { "stdout" };
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
    let mut body = client.stream(&target).await?;
    let mut pending = Vec::new();
    while let Some(part) = body.next().await? {
        if !a.json {
            out.write_all(&part)?;
            out.flush()?;
            continue;
        }
        pending.extend_from_slice(&part);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            json_line(stream, &line[..line.len() - 1], out)?;
        }
        out.flush()?;
    }
    if a.json && !pending.is_empty() {
        json_line(stream, &pending, out)?;
    }
    Ok(0)
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

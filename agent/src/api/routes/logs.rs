//! `GET /v1/allocations/ID/tasks/TASK/logs`: a task's log.
//!
//! `stream=stdout|stderr` (the default stdout) answers the bytes the task wrote,
//! from `offset`, the last `tail` lines, with `follow=true` then what it writes
//! until it is dead or the client leaves. `since=` (a duration back from now or
//! an RFC 3339 UTC time) keeps the lines written at or after that time;
//! `stream=all` answers both streams as JSON lines in the order they were
//! written, `{"stream", "line", "time"}`. Both read the time index beside the
//! log files ([`crate::loglines`] says how exact it is).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::body::Bytes;

use super::super::server::{self, Reply, Request};
use super::super::wire::LogLine;
use super::super::Peer;
use super::{agent_err, refuse, Refusal};
use crate::agent::Agent;
use crate::loglines::{self, LineSplitter, Piece, TimedLine};
use crate::logtail::{mtime_ns, read_timed, LogFollower};
use crate::state::TaskPhase;

/// How often a follower looks for new bytes.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// What was asked of the logs route.
struct Query {
    stream: &'static str,
    offset: Option<u64>,
    follow: bool,
    tail: Option<usize>,
    since: Option<i64>,
}

fn parse(req: &Request) -> Result<Query, Refusal> {
    let stream = match req.query.get("stream").map_or("stdout", String::as_str) {
        "stdout" => "stdout",
        "stderr" => "stderr",
        "all" => "all",
        other => {
            return Err(refuse(
                400,
                format!("stream: {other:?} (expected stdout, stderr or all)"),
            ))
        }
    };
    let offset = match req.query.get("offset").map(|o| o.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(refuse(400, "offset: expected a byte count")),
    };
    if stream == "all" && offset.is_some_and(|o| o > 0) {
        return Err(refuse(
            400,
            "offset: a byte offset is of one stream (stdout or stderr), not of all",
        ));
    }
    let follow = req
        .query
        .get("follow")
        .is_some_and(|f| f == "true" || f == "1");
    let tail = match req.query.get("tail").map(|t| t.parse::<usize>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(refuse(400, "tail: expected a number of lines")),
    };
    let since =
        match req.query.get("since") {
            None => None,
            Some(s) => Some(loglines::parse_since(s, SystemTime::now()).ok_or_else(|| {
                refuse(400, format!("since: {s:?} is not {}", loglines::SINCE_FORM))
            })?),
        };
    Ok(Query {
        stream,
        offset,
        follow,
        tail,
        since,
    })
}

/// A task's log (see the module's doc).
pub(super) fn logs(
    agent: &Agent,
    prefix: &str,
    task: &str,
    req: &Request,
    peer: Arc<Peer>,
) -> Result<Reply, Refusal> {
    let id = agent.resolve_alloc(prefix).map_err(agent_err)?;
    let (alloc, tasks) = agent.alloc(&id).map_err(agent_err)?;
    if !tasks.iter().any(|t| t.task == task) {
        return Err(refuse(404, format!("allocation {id} has no task {task:?}")));
    }
    let q = parse(req)?;
    let max_files = alloc
        .job
        .groups
        .iter()
        .find(|g| g.name == alloc.group)
        .and_then(|g| g.tasks.iter().find(|t| t.name == task))
        .map_or(10, |t| t.logs.max_files);
    let dir = agent.logs_dir(&alloc);
    let task_dead = {
        let (agent, id, task) = (agent.clone(), id.clone(), task.to_string());
        move || {
            agent
                .alloc(&id)
                .ok()
                .and_then(|(_, ts)| ts.into_iter().find(|t| t.task == task))
                .is_none_or(|t| t.phase == TaskPhase::Dead)
        }
    };
    if q.stream == "all" || q.since.is_some() {
        let streams = Streams::open(&dir, task, q.stream, max_files, q.since);
        return Ok(timed(streams, &q, task_dead, peer, id));
    }
    let stream = q.stream;
    let base = tend_proto::names::log_file(task, stream);
    // Everything kept so far, oldest file first.
    let mut all = Vec::new();
    for n in (1..max_files).rev() {
        if let Ok(b) = std::fs::read(dir.join(format!("{base}.{n}"))) {
            all.extend_from_slice(&b);
        }
    }
    let mut follower = LogFollower::new(&dir, task, stream, max_files);
    let _ = follower.read_available(&mut all);
    let offset = q.offset.unwrap_or(0);
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
    all.drain(..start);
    if let Some(n) = q.tail {
        let from = tail_start(&all, n);
        all.drain(..from);
    }
    if !q.follow {
        return Ok(server::bytes(200, "application/octet-stream", all));
    }
    let (mut tx, reply) = server::stream("application/octet-stream");
    let task = task.to_string();
    tokio::spawn(async move {
        let mut next = all;
        loop {
            if !next.is_empty() && tx.send_data(Bytes::from(next)).await.is_err() {
                return;
            }
            let mut buf = Vec::new();
            if follower.read_available(&mut buf).is_err() {
                return;
            }
            if buf.is_empty() {
                if task_dead() {
                    return;
                }
                if peer.gone() {
                    tracing::debug!(alloc = %id, task, "api: a log follower left");
                    return;
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
            next = buf;
        }
    });
    Ok(reply)
}

/// The streams a timed read follows: stdout, stderr or both.
struct Streams {
    /// The answer is JSON lines of both streams.
    all: bool,
    /// Per stream: its rotated files, read at the first call; its follower.
    each: Vec<(Vec<Piece>, LogFollower, LineSplitter)>,
}

impl Streams {
    /// The streams of `task`; rotated files last changed before `since` are
    /// not read (every line of them is older).
    fn open(
        dir: &std::path::Path,
        task: &str,
        stream: &'static str,
        max_files: u32,
        since: Option<i64>,
    ) -> Streams {
        let all = stream == "all";
        let names = if all {
            vec!["stdout", "stderr"]
        } else {
            vec![stream]
        };
        let each = names
            .into_iter()
            .map(|s| {
                let base = tend_proto::names::log_file(task, s);
                // Everything kept so far, oldest file first.
                let rotated = (1..max_files)
                    .rev()
                    .map(|n| dir.join(format!("{base}.{n}")))
                    .filter(|p| since.is_none_or(|t| !changed_before(p, t)))
                    .filter_map(|p| read_timed(&p).ok().flatten())
                    .collect();
                (
                    rotated,
                    LogFollower::new(dir, task, s, max_files),
                    LineSplitter::new(s == "stderr"),
                )
            })
            .collect();
        Streams { all, each }
    }

    /// The whole lines written since the last call, in order; with `finish`,
    /// the unfinished last lines too.
    fn lines(&mut self, finish: bool) -> Vec<TimedLine> {
        let mut per: Vec<Vec<TimedLine>> = Vec::new();
        for (rotated, follower, splitter) in &mut self.each {
            let mut lines = Vec::new();
            let mut pieces = std::mem::take(rotated);
            pieces.extend(follower.read_pieces().unwrap_or_default());
            for piece in pieces {
                splitter.feed(&piece, &mut lines);
            }
            if finish {
                splitter.finish(&mut lines);
            }
            per.push(lines);
        }
        let mut per = per.into_iter();
        let first = per.next().unwrap_or_default();
        match per.next() {
            Some(second) => loglines::merge(first, second),
            None => first,
        }
    }

    /// The answer's bytes for `lines`.
    fn render(&self, lines: &[TimedLine]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            if self.all {
                let text = l.bytes.strip_suffix(b"\n").unwrap_or(&l.bytes);
                let line = LogLine {
                    stream: if l.stderr { "stderr" } else { "stdout" }.to_string(),
                    line: String::from_utf8_lossy(text).into_owned(),
                    time: loglines::rfc3339_ns(l.time_ns),
                };
                out.extend(super::super::wire::to_json_line(&line));
            } else {
                out.extend_from_slice(&l.bytes);
            }
        }
        out
    }

    fn content_type(&self) -> &'static str {
        if self.all {
            "application/x-ndjson"
        } else {
            "application/octet-stream"
        }
    }
}

/// Whether the file at `path` was last changed before `t` (ns since the
/// epoch) and ends a line: then none of its lines is at or after `t`, nor the
/// start of one that goes on in the next file.
fn changed_before(path: &std::path::Path, t: i64) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(m) = f.metadata() else { return false };
    let mut last = [0u8; 1];
    mtime_ns(&m) < t
        && (m.len() == 0 || f.read_exact_at(&mut last, m.len() - 1).is_ok() && last == *b"\n")
}

/// The log as timed lines: `since`, `stream=all`.
fn timed(
    mut streams: Streams,
    q: &Query,
    task_dead: impl Fn() -> bool + Send + 'static,
    peer: Arc<Peer>,
    id: String,
) -> Reply {
    let since = q.since.unwrap_or(i64::MIN);
    let keep = move |mut lines: Vec<TimedLine>| {
        lines.retain(|l| l.time_ns >= since);
        lines
    };
    // Before the first read: a task dead now has written all it will.
    let dead = task_dead();
    let mut first = keep(streams.lines(!q.follow || dead));
    if let Some(n) = q.tail {
        first.drain(..first.len().saturating_sub(n));
    }
    let body = streams.render(&first);
    if !q.follow {
        return server::bytes(200, streams.content_type(), body);
    }
    let (mut tx, reply) = server::stream(streams.content_type());
    tokio::spawn(async move {
        let mut next = body;
        let mut done = dead;
        loop {
            if !next.is_empty() && tx.send_data(Bytes::from(next)).await.is_err() {
                return;
            }
            if done {
                return;
            }
            if peer.gone() {
                tracing::debug!(alloc = %id, "api: a log follower left");
                return;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
            // Once dead, one last read takes what is left, unfinished lines too.
            done = task_dead();
            let lines = keep(streams.lines(done));
            next = streams.render(&lines);
        }
    });
    reply
}

/// Where the last `n` lines of `bytes` begin (a last line without its
/// newline counts as a line).
fn tail_start(bytes: &[u8], n: usize) -> usize {
    if n == 0 {
        return bytes.len();
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::tail_start;

    #[test]
    fn the_tail_is_the_last_lines_a_partial_one_counting() {
        let b = b"one\ntwo\nthree\n";
        assert_eq!(&b[tail_start(b, 1)..], b"three\n");
        assert_eq!(&b[tail_start(b, 2)..], b"two\nthree\n");
        assert_eq!(&b[tail_start(b, 9)..], b);
        assert_eq!(&b[tail_start(b, 0)..], b"");
        let p = b"one\ntwo\npart";
        assert_eq!(&p[tail_start(p, 1)..], b"part");
        assert_eq!(&p[tail_start(p, 2)..], b"two\npart");
        assert_eq!(tail_start(b"", 3), 0);
    }
}

//! `tend logs --all` and `--since`: the time index beside each log file, read
//! back through the agent, with real tasks.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tend_tests::job::{job, sh_task, NO_RESTART};
use tend_tests::{wait_until, AgentProc, Sandbox};

const LONG: Duration = Duration::from_secs(30);

/// stdout and stderr by turns, 300 ms apart.
const BY_TURNS: &str =
    "for i in 1 2 3; do echo out $i; sleep 0.3; echo err $i >&2; sleep 0.3; done";

fn logs_dir(sb: &Sandbox, alloc: &str) -> PathBuf {
    sb.data_dir().join("allocs").join(alloc).join("logs")
}

/// `tend logs ARGS...`: its stdout (it must succeed).
fn logs(agent: &AgentProc, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let o = agent.cli(&all);
    assert!(
        o.status.success(),
        "tend {all:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn wait_dead(agent: &AgentProc, alloc: &str) {
    let dead = wait_until(LONG, || {
        agent.get_json(&format!("/v1/allocations/{alloc}"))["tasks"][0]["state"] == "dead"
    });
    assert!(dead, "{alloc} never ended");
}

/// `--all --json`: (stream, line, time) of each line.
fn timed_lines(agent: &AgentProc, args: &[&str]) -> Vec<(String, String, SystemTime)> {
    let mut all = vec!["--all", "--json"];
    all.extend_from_slice(args);
    logs(agent, &all)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let time = tend_proto::time::parse_rfc3339(v["time"].as_str().unwrap()).unwrap();
            (
                v["stream"].as_str().unwrap().to_string(),
                v["line"].as_str().unwrap().to_string(),
                time,
            )
        })
        .collect()
}

/// Halfway between the writes of the lines `a` and `b`, as RFC 3339.
fn between(lines: &[(String, String, SystemTime)], a: &str, b: &str) -> String {
    let at = |l: &str| lines.iter().find(|x| x.1 == l).unwrap().2;
    let (ta, tb) = (at(a), at(b));
    let gap = tb.duration_since(ta).unwrap();
    assert!(gap >= Duration::from_millis(200), "{a} then {b}: {gap:?}");
    tend_proto::time::rfc3339(ta + gap / 2)
}

#[test]
fn all_shows_both_streams_in_order_and_since_only_what_came_after() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let id = agent.submit(&job("turns", 1, NO_RESTART, &sh_task("t", BY_TURNS, "")))[0].clone();
    // Followed from the start: new lines in order as they come, until the task ends.
    let followed = logs(&agent, &["-f", "--all", &id, "t"]);
    let expected = "stdout | out 1\nstderr | err 1\nstdout | out 2\nstderr | err 2\nstdout | out 3\nstderr | err 3\n";
    assert_eq!(followed, expected);
    wait_dead(&agent, &id);
    assert_eq!(logs(&agent, &["--all", &id, "t"]), expected);
    // The plain reads are as they were.
    assert_eq!(logs(&agent, &[&id, "t"]), "out 1\nout 2\nout 3\n");
    assert_eq!(
        logs(&agent, &["--stderr", &id, "t"]),
        "err 1\nerr 2\nerr 3\n"
    );

    let lines = timed_lines(&agent, &[&id, "t"]);
    let order: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(
        order,
        ["out 1", "err 1", "out 2", "err 2", "out 3", "err 3"]
    );
    assert!(lines.windows(2).all(|w| w[0].2 < w[1].2), "{lines:?}");
    assert_eq!(lines[1].0, "stderr");

    // A time between "out 2" and "err 2".
    let t = between(&lines, "out 2", "err 2");
    assert_eq!(logs(&agent, &["--since", &t, &id, "t"]), "out 3\n");
    assert_eq!(
        logs(&agent, &["--since", &t, "--stderr", &id, "t"]),
        "err 2\nerr 3\n"
    );
    assert_eq!(
        logs(&agent, &["--since", &t, "--all", &id, "t"]),
        "stderr | err 2\nstdout | out 3\nstderr | err 3\n"
    );
    assert_eq!(
        logs(&agent, &["--since", &t, "--all", "-n", "2", &id, "t"]),
        "stdout | out 3\nstderr | err 3\n"
    );
    // A duration back from now.
    assert_eq!(
        logs(&agent, &["--since", "10m", "--all", &id, "t"]),
        expected
    );
    assert_eq!(logs(&agent, &["--since", "0s", "--all", &id, "t"]), "");

    // What --since does not take: one line that says what it does.
    let bad = agent.cli(&["logs", "--since", "yesterday", &id, "t"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("since") && err.contains("RFC 3339"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The API answers JSON lines for stream=all, and refuses a byte offset there.
    let r = agent.http(
        "GET",
        &format!("/v1/allocations/{id}/tasks/t/logs?stream=all&tail=1"),
        b"",
    );
    assert_eq!(r.status, 200);
    let last: Value = serde_json::from_str(r.text().trim()).unwrap();
    assert_eq!(
        (&last["stream"], &last["line"]),
        (&"stderr".into(), &"err 3".into())
    );
    let r = agent.http(
        "GET",
        &format!("/v1/allocations/{id}/tasks/t/logs?stream=all&offset=3"),
        b"",
    );
    assert_eq!(r.status, 400);

    // The index is on disk: an agent started again reads the same times.
    agent.kill9();
    agent.restart();
    assert_eq!(timed_lines(&agent, &[&id, "t"]), lines);
    assert_eq!(logs(&agent, &["--since", &t, &id, "t"]), "out 3\n");
}

#[test]
fn a_task_running_across_an_agent_restart_keeps_its_times() {
    let sb = Sandbox::new();
    let mut agent = AgentProc::start(&sb);
    let script = "echo before; while [ ! -e \"$TEND_TASK_DIR/go\" ]; do sleep 0.05; done; sleep 0.3; echo after-err >&2; sleep 0.3; echo after";
    let id = agent.submit(&job("restart", 1, NO_RESTART, &sh_task("t", script, "")))[0].clone();
    let dir = logs_dir(&sb, &id);
    assert!(wait_until(LONG, || std::fs::read_to_string(
        dir.join("t.stdout")
    )
    .is_ok_and(|s| s == "before\n")));
    agent.kill9();
    agent.restart();
    let go = sb.data_dir().join("allocs").join(&id).join("t/local/go");
    std::fs::write(go, b"").unwrap();
    wait_dead(&agent, &id);
    let lines = timed_lines(&agent, &[&id, "t"]);
    let order: Vec<(&str, &str)> = lines.iter().map(|l| (l.0.as_str(), l.1.as_str())).collect();
    assert_eq!(
        order,
        [
            ("stdout", "before"),
            ("stderr", "after-err"),
            ("stdout", "after")
        ]
    );
    let t = between(&lines, "before", "after-err");
    assert_eq!(logs(&agent, &["--since", &t, &id, "t"]), "after\n");
}

/// The index of `dir/name`, if it is that file's: its records' offsets.
fn index_offsets(dir: &Path, name: &str) -> Vec<u64> {
    let ino = std::fs::metadata(dir.join(name)).unwrap().ino();
    let bytes = std::fs::read(dir.join(tend_logs::index::index_name(name))).unwrap();
    tend_logs::index::parse(&bytes, ino)
        .unwrap_or_else(|| panic!("{name}.idx is not the index of {name}"))
        .iter()
        .map(|m| m.offset)
        .collect()
}

#[test]
fn rotation_keeps_each_file_with_its_index() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    // 2.5 MB of 100-byte lines in 1 MB files, then a last line 300 ms later.
    let script = "echo first; yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 25000; sleep 0.3; echo last";
    let extra = "      logs {\n        max_files     = 3\n        max_file_size = 1\n      }";
    let id = agent.submit(&job("rot", 1, NO_RESTART, &sh_task("t", script, extra)))[0].clone();
    wait_dead(&agent, &id);
    let dir = logs_dir(&sb, &id);
    // Three files with an index each (2.5 MB fit in them), and no index
    // left behind of a fourth.
    for gone in ["t.stdout.3", "t.stdout.3.idx"] {
        assert!(!dir.join(gone).exists(), "{gone}");
    }
    // Each index is its file's, starts at the file's start and stays inside it.
    for name in ["t.stdout", "t.stdout.1", "t.stdout.2"] {
        let offsets = index_offsets(&dir, name);
        let len = std::fs::metadata(dir.join(name)).unwrap().len();
        assert_eq!(offsets.first(), Some(&0), "{name}: {offsets:?}");
        assert!(
            offsets.iter().all(|o| *o < len),
            "{name}: {offsets:?} of {len}"
        );
    }
    let all = logs(&agent, &["--all", &id, "t"]);
    assert!(
        all.ends_with("stdout | last\n"),
        "{}",
        &all[all.len() - 200..]
    );
    assert_eq!(
        all.len() as u64,
        ["t.stdout", "t.stdout.1", "t.stdout.2"]
            .iter()
            .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
            .sum::<u64>()
            + 9 * all.lines().count() as u64,
        "every kept byte, each line prefixed"
    );
    let lines = timed_lines(&agent, &["-n", "2", &id, "t"]);
    let t = between(&lines, &lines[0].1, "last");
    assert_eq!(logs(&agent, &["--since", &t, &id, "t"]), "last\n");
}

#[test]
fn a_log_without_an_index_reads_whole_and_since_goes_by_the_file_time() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let id = agent.submit(&job(
        "old",
        1,
        NO_RESTART,
        &sh_task("t", "echo one; echo two >&2; echo three", ""),
    ))[0]
        .clone();
    wait_dead(&agent, &id);
    // As a tend before the index left it.
    let dir = logs_dir(&sb, &id);
    for s in ["stdout", "stderr"] {
        std::fs::remove_file(dir.join(format!("t.{s}.idx"))).unwrap();
    }
    assert_eq!(logs(&agent, &[&id, "t"]), "one\nthree\n");
    assert_eq!(logs(&agent, &["-n", "1", &id, "t"]), "three\n");
    // Written after the time asked (or maybe): the whole file.
    assert_eq!(logs(&agent, &["--since", "10m", &id, "t"]), "one\nthree\n");
    let mut all: Vec<String> = logs(&agent, &["--all", &id, "t"])
        .lines()
        .map(String::from)
        .collect();
    all.sort();
    assert_eq!(all, ["stderr | two", "stdout | one", "stdout | three"]);
    // Last modified before the time asked: none of it.
    let mtime = std::fs::metadata(dir.join("t.stdout"))
        .unwrap()
        .modified()
        .unwrap();
    let after = tend_proto::time::rfc3339(mtime + Duration::from_millis(10));
    assert_eq!(logs(&agent, &["--since", &after, &id, "t"]), "");
    assert!(!dir.join("t.stdout.idx").exists(), "a read makes no index");
}

#[test]
fn a_stream_the_task_never_writes_gets_no_index() {
    let sb = Sandbox::new();
    let agent = AgentProc::start(&sb);
    let id = agent.submit(&job("quiet", 1, NO_RESTART, &sh_task("t", "echo one", "")))[0].clone();
    wait_dead(&agent, &id);
    let dir = logs_dir(&sb, &id);
    assert_eq!(logs(&agent, &[&id, "t"]), "one\n");
    assert!(
        dir.join("t.stdout.idx").exists(),
        "stdout has a byte and an index"
    );
    assert!(
        dir.join("t.stderr").exists(),
        "the empty stderr file is there"
    );
    assert!(
        !dir.join("t.stderr.idx").exists(),
        "an index for a stream that closed without a byte"
    );
}

//! `tend validate FILE`: every error of a job file, or a short summary of
//! what would run.

use std::io::Write;
use std::path::Path;

use crate::agent::config::AgentConfig;
use crate::driver::spawn::config::check_exec_root;
use crate::jobspec::duration::format_duration;
use crate::jobspec::signal::signal_name;
use crate::jobspec::{parse_file_on_this_host, CheckKind, Job, Task};

/// Validates the job file at `path` for this host and writes the result to `out`: the
/// errors, one per line as `FILE:LINE:COLUMN: path: message` (`FILE: task
/// T: field: message` for what the agent config decides), and exit code 1;
/// or a summary of what would run and exit code 0. `agent` is the agent
/// config the job is checked against (the embedded defaults when None).
pub fn run_validate(path: &Path, agent: Option<&AgentConfig>, out: &mut dyn Write) -> i32 {
    let text = match parse_file_on_this_host(path) {
        Ok(job) => {
            // Per driver: `plugin "exec"` and `plugin "oci"` each say.
            let allow_root = |t: &Task| agent.is_some_and(|a| a.allows_root(t.driver.name()));
            let refused: Vec<String> = job
                .groups
                .iter()
                .flat_map(|g| &g.tasks)
                .filter_map(|t| check_exec_root(t, allow_root(t)).err())
                .map(|e| format!("{}: {e}\n", path.display()))
                .collect();
            if refused.is_empty() {
                return write_or_fail(out, &summary(&job), 0);
            }
            let n = refused.len();
            format!(
                "{}{n} error{} in {}\n",
                refused.concat(),
                if n == 1 { "" } else { "s" },
                path.display()
            )
        }
        Err(diags) => {
            let n = diags.len();
            format!(
                "{diags}\n{n} error{} in {}\n",
                if n == 1 { "" } else { "s" },
                path.display()
            )
        }
    };
    write_or_fail(out, &text, 1)
}

fn write_or_fail(out: &mut dyn Write, text: &str, code: i32) -> i32 {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(_) => 1,
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// A short, human summary of a valid job.
pub fn summary(job: &Job) -> String {
    let tasks: usize = job.groups.iter().map(|g| g.tasks.len()).sum();
    let mut s = format!(
        "Job \"{}\" is valid: {}, {}\n",
        job.name,
        plural(job.groups.len(), "group"),
        plural(tasks, "task")
    );
    for g in &job.groups {
        s.push_str(&format!(
            "  group \"{}\": {}, restart {} in {} ({:?}, delay {})\n",
            g.name,
            plural(usize::try_from(g.count).unwrap_or(usize::MAX), "allocation"),
            plural(
                usize::try_from(g.restart.attempts).unwrap_or(usize::MAX),
                "attempt"
            ),
            format_duration(g.restart.interval),
            g.restart.mode,
            format_duration(g.restart.delay),
        ));
        for t in &g.tasks {
            s.push_str(&task_line(t));
        }
    }
    s
}

fn task_line(t: &Task) -> String {
    let mut what = match (&t.config.image, &t.config.command) {
        (Some(image), Some(cmd)) => format!("image {image}, command {cmd:?}"),
        (Some(image), None) => format!("image {image}"),
        (None, Some(cmd)) => format!("{cmd:?}"),
        (None, None) => String::new(),
    };
    for a in &t.config.args {
        what.push_str(&format!(" {a:?}"));
    }
    let mut s = format!("    task \"{}\" ({}): {}\n", t.name, t.driver.name(), what);
    s.push_str(&format!(
        "      cpu {} MHz, memory {} MB, stop with {} then SIGKILL after {}\n",
        t.resources.cpu,
        t.resources.memory,
        signal_name(t.kill_signal).unwrap_or("?"),
        format_duration(t.kill_timeout),
    ));
    if !t.resources.ports.is_empty() {
        let ports: Vec<String> = t
            .resources
            .ports
            .iter()
            .map(|p| {
                let host = p
                    .static_port
                    .map_or("dynamic".to_string(), |n| format!("static {n}"));
                match p.to {
                    Some(to) => format!("{} ({host} -> {to})", p.label),
                    None => format!("{} ({host})", p.label),
                }
            })
            .collect();
        s.push_str(&format!("      ports: {}\n", ports.join(", ")));
    }
    for c in &t.checks {
        let what = match &c.kind {
            CheckKind::Script { command, .. } => format!("script {command:?}"),
            CheckKind::Tcp { port } => format!("tcp to {port}"),
            CheckKind::Http { port, path, method } => format!("http {method} {path} on {port}"),
        };
        let restart = c
            .check_restart
            .filter(|r| r.limit > 0)
            .map_or(String::new(), |r| {
                format!(", restart after {} unhealthy", r.limit)
            });
        s.push_str(&format!(
            "      check {:?}: {what} every {} (timeout {}){restart}\n",
            c.name,
            format_duration(c.interval),
            format_duration(c.timeout),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.hcl");
        std::fs::write(&p, src).unwrap();
        let mut out = Vec::new();
        let code = run_validate(&p, None, &mut out);
        let text = String::from_utf8(out)
            .unwrap()
            .replace(&p.display().to_string(), "job.hcl");
        (code, text)
    }

    #[test]
    fn valid_job_prints_a_summary() {
        let (code, text) = run(r#"job "hello" {
  group "g" {
    task "greet" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo hi"]
      }
      resources {
        network {
          port "http" {}
          port "db" {
            static = 8080
            to     = 80
          }
        }
      }
    }
  }
}
"#);
        assert_eq!(code, 0, "{text}");
        assert_eq!(
            text,
            "Job \"hello\" is valid: 1 group, 1 task\n  group \"g\": 1 allocation, restart 2 attempts in 30m0s (Fail, delay 15s)\n    task \"greet\" (raw_exec): \"/bin/sh\" \"-c\" \"echo hi\"\n      cpu 100 MHz, memory 300 MB, stop with SIGTERM then SIGKILL after 5s\n      ports: http (dynamic), db (static 8080 -> 80)\n"
        );
    }

    #[test]
    fn errors_are_all_printed_with_exit_1() {
        let (code, text) = run("job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"nope\"\n      kill_signal = \"SIGFOO\"\n    }\n  }\n}\n");
        assert_eq!(code, 1);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0]
            .starts_with("job.hcl:4:16: job.j.group.g.task.t.driver: unknown driver \"nope\""));
        assert!(lines[1].starts_with(
            "job.hcl:5:21: job.j.group.g.task.t.kill_signal: unknown signal \"SIGFOO\""
        ));
        assert_eq!(lines[2], "2 errors in job.hcl");
    }

    #[test]
    fn a_root_exec_task_needs_the_agent_to_allow_it() {
        let job = "job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"exec\"\n      user = \"root\"\n      config {\n        command = \"/bin/true\"\n      }\n    }\n  }\n}\n";
        let (code, text) = run(job);
        assert_eq!(code, 1, "{text}");
        assert!(
            text.starts_with("job.hcl: task t: user: \"root\" is root, which the exec driver refuses unless the agent config allows it with plugin \"exec\" { allow_root = true }\n"),
            "{text}"
        );
        assert!(text.ends_with("1 error in job.hcl\n"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.hcl");
        std::fs::write(&p, job).unwrap();
        let allows = AgentConfig::parse(
            "plugin \"exec\" {\n  allow_root = true\n}\n",
            Path::new("agent.hcl"),
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(run_validate(&p, Some(&allows), &mut out), 0);
        // raw_exec runs as the agent's user: nothing to allow.
        let (code, text) = run(&job.replace("\"exec\"", "\"raw_exec\""));
        assert_eq!(code, 0, "{text}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let mut out = Vec::new();
        assert_eq!(
            run_validate(Path::new("/nonexistent/job.hcl"), None, &mut out),
            1
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("/nonexistent/job.hcl: cannot read job file"),
            "{text}"
        );
    }
}
